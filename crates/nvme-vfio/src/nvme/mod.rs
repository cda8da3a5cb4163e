//! The NVMe side: specification types, data pointer builders and walkers.

pub mod barrier;
pub mod cmd;
pub mod desc;
pub mod dptr;
mod error;
pub mod identify;
pub mod iocs;
pub mod log;
pub mod nvm;
pub mod pi;
pub mod prp;
pub mod queue;
pub mod regs;
pub mod sgl;
pub mod spec;
pub mod status;
pub mod walk;
pub mod zns;

pub use error::DptrError;
