//! The NVMe side: specification types, data pointer builders and walkers.

pub mod desc;
pub mod dptr;
mod error;
pub mod prp;
pub mod sgl;
pub mod spec;
pub mod walk;

pub use error::DptrError;
