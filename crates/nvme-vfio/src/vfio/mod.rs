//! VFIO: container, group and device, for a PCI function bound to vfio-pci.
//!
//! ```no_run
//! use nvme_vfio::mem::DmaMap;
//! use nvme_vfio::vfio::Device;
//!
//! let dev = Device::open("0000:01:00.0")?;      // checks driver, group, IOMMU
//! dev.enable_bus_master()?;                     // memory space + bus master
//! let bar0 = dev.map_bar(0)?;
//! let cap = bar0.read64(0)?;                    // NVMe CAP
//! let info = dev.container().iommu_info();      // valid IOVA ranges, page sizes
//! # let _ = (cap, info);
//! # Ok::<(), nvme_vfio::vfio::VfioError>(())
//! ```
//!
//! Layers, bottom up:
//!
//! - `ioctl`: every VFIO ioctl, one thin unsafe-wrapping function each. In
//!   unit tests the layers above call `fake` instead, a twin with the same
//!   signatures and an in-memory kernel, so container, group and device
//!   logic is tested without /dev/vfio.
//! - `info`: the capability chains of VFIO_IOMMU_GET_INFO and
//!   VFIO_DEVICE_GET_REGION_INFO (IOVA ranges, DMA entries left, sparse mmap).
//! - [`pci`]: PCI addresses and sysfs (driver, IOMMU group, group members).
//! - [`Container`] (Type1v2, DMA map/unmap via [`DmaMap`](crate::mem::DmaMap)),
//!   [`Group`], [`Device`] (config space, reset), [`Bar`] (volatile MMIO),
//!   [`Msix`] (eventfd interrupts).

mod bar;
mod container;
mod device;
mod error;
mod group;
mod info;
// The real ioctls are still compiled under test (their numbers are checked
// there), but only the fake is called.
#[cfg_attr(test, allow(dead_code))]
mod ioctl;
mod irq;
pub mod pci;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

#[cfg(test)]
use fake as sys;
#[cfg(not(test))]
use ioctl as sys;

pub use bar::Bar;
pub use container::{Container, CONTAINER_PATH};
pub use device::{
    Device, PCI_CAP_ID_MSIX, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MASTER, PCI_COMMAND_MEMORY,
};
pub use error::{BarFault, GroupMembers, VfioError};
pub use group::{group_path, Group};
pub use info::RegionInfo;
pub(crate) use irq::eventfd;
pub use irq::Msix;
pub use pci::{GroupMember, PciAddress, Sysfs};
