//! The NVMe side: specification types, data pointer builders and walkers.

pub mod desc;
pub mod dptr;
pub mod prp;
pub mod sgl;
pub mod spec;
pub mod walk;
