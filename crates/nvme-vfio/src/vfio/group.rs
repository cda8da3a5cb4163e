//! A VFIO group, `/dev/vfio/N`: the unit of isolation the IOMMU gives, and
//! what hands out device files once attached to a container.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use vfio_bindings::bindings::vfio as b;

use super::container::Container;
use super::error::GroupMembers;
use super::pci::{PciAddress, Sysfs};
use super::sys;
use super::VfioError;

/// An open IOMMU group attached to a [`Container`].
///
/// Devices hold their group alive; the group holds its container alive.
/// When the last device of the group is dropped the group is detached from
/// the container and closed.
#[derive(Debug)]
pub struct Group {
    file: File,
    number: u32,
    container: Arc<Container>,
}

/// `/dev/vfio/N`.
pub fn group_path(number: u32) -> PathBuf {
    PathBuf::from(format!("/dev/vfio/{number}"))
}

impl Group {
    /// Opens `/dev/vfio/N` and checks that the group is viable (every
    /// device in it bound to vfio-pci or to no driver).
    pub(crate) fn open_viable(sysfs: &Sysfs, number: u32) -> Result<File, VfioError> {
        let path = group_path(number);
        let file = sys::open_group(&path).map_err(|source| match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => VfioError::Permission {
                path: path.clone(),
                source,
            },
            Some(libc::EBUSY) => VfioError::GroupBusy {
                path: path.clone(),
                source,
            },
            _ => VfioError::Open {
                path: path.clone(),
                source,
            },
        })?;
        let flags =
            sys::group_get_status(&file).map_err(VfioError::ioctl("VFIO_GROUP_GET_STATUS"))?;
        if flags & b::VFIO_GROUP_FLAGS_VIABLE == 0 {
            // The error is about viability; an unreadable member list only
            // makes it less detailed.
            let members = sysfs.group_members(number).unwrap_or_default();
            return Err(VfioError::GroupNotViable {
                group: number,
                members: GroupMembers(members),
            });
        }
        Ok(file)
    }

    /// Wraps a viable group file already attached to `container`.
    pub(crate) fn new(file: File, number: u32, container: Arc<Container>) -> Self {
        Group {
            file,
            number,
            container,
        }
    }

    /// The group number (`N` of `/dev/vfio/N`).
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The container the group is attached to.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// Opens the device `addr` of this group.
    pub(crate) fn device_file(&self, addr: PciAddress) -> Result<File, VfioError> {
        let name = CString::new(addr.to_string()).map_err(|e| VfioError::Ioctl {
            op: "VFIO_GROUP_GET_DEVICE_FD",
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        sys::group_get_device_fd(&self.file, &name)
            .map_err(VfioError::ioctl("VFIO_GROUP_GET_DEVICE_FD"))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Fails with EBUSY while a device file of the group is still open
        // (a BAR mapping or MSI-X vectors outliving the device); closing the
        // group file then detaches it when the last device file goes.
        let _ = sys::group_unset_container(&self.file);
        self.container.forget_group(self.number);
    }
}
