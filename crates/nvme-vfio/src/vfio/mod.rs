//! VFIO: container, group and device (work in progress).

mod error;

pub use error::VfioError;
