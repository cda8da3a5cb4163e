//! A userspace NVMe driver on VFIO.
//!
//! This crate holds the NVMe side of the driver. So far:
//!
//! - [`nvme::spec`]: wire types from the NVMe base specification (SGL
//!   descriptors, controller page size), with their sizes checked at compile
//!   time;
//! - [`nvme::prp`] and [`nvme::sgl`]: builders that turn the device ranges
//!   produced by [`blk_dma`] into a command's data pointer, with list pages
//!   from a caller-provided [`nvme::desc::DescPool`];
//! - [`nvme::dptr`]: the policy choosing PRP or SGL for a request;
//! - [`nvme::walk`]: a device-side walker that reads PRPs and SGLs back into
//!   ranges as strictly as a controller, for tests and the software
//!   controller.

pub mod ctrl;
pub mod error;
pub mod mem;
pub mod nvme;
pub mod vfio;

pub use error::Error;

/// The README's code examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
