//! The API's statuses: each driver error as a negative errno value.

use nvme_vfio::vfio::VfioError;
use nvme_vfio::Error;

/// The negative errno value that stands for `e` in the C API.
///
/// | errno | errors |
/// | --- | --- |
/// | `EINVAL` | a bad argument or request (`Invalid`, `ZeroLength`, descriptor and mapping refusals, a limit of the controller or namespace, a write across a zone boundary), a bad PCI address |
/// | `ENOMEM` | no DMA memory or IOVA space; the locked-memory limit or VFIO's DMA entry limit |
/// | `ETIMEDOUT` | a command or the controller timed out |
/// | `EIO` | the command failed (the NVMe status is in the completion), the controller's fatal status, data the controller returned that cannot be right, an ioctl failure |
/// | `ENODEV` | the device is gone, missing, not bound to vfio-pci, or VFIO or the IOMMU is unavailable |
/// | `EACCES` | no permission on the VFIO files |
/// | `EBUSY` | the IOMMU group is in use, every I/O queue is taken |
/// | `ENOTSUP` | the controller, namespace format, command set or optional command is not supported; Write Uncorrectable or Copy on a zoned namespace, a zone command on one that is not zoned |
/// | `ENOENT` | no such namespace |
/// | `EAGAIN` | the queue is full for now, or its queues are being created again |
/// | `E2BIG` | the request can never fit the queue pair |
/// | `ECANCELED` | a controller reset ended the request (retryable) |
/// | `ESHUTDOWN` | the controller is disabled or closed |
/// | `ENOTRECOVERABLE` | the controller is dead: it could not be stopped, so the memory of the request (and of every request in flight on it) may still be written by the device: leak it |
pub fn status_of(e: &Error) -> i32 {
    -(match e {
        Error::Invalid(_)
        | Error::ZeroLength
        | Error::Dptr(_)
        | Error::Map(_)
        | Error::OverLimit { .. }
        | Error::CrossesZone { .. } => libc::EINVAL,
        Error::OutOfDmaMemory { .. } | Error::IovaExhausted { .. } => libc::ENOMEM,
        Error::Timeout { .. } => libc::ETIMEDOUT,
        Error::ControllerFatal { .. } | Error::Command { .. } => libc::EIO,
        Error::DeviceLost => libc::ENODEV,
        Error::Unsupported(_)
        | Error::MetadataFormat { .. }
        | Error::ZonedNamespace { .. }
        | Error::NotZoned { .. }
        | Error::UnsupportedCommandSet { .. }
        | Error::UnsupportedCommand { .. } => libc::ENOTSUP,
        Error::NoNamespace { .. } => libc::ENOENT,
        Error::NoQueues { .. } => libc::EBUSY,
        Error::QueueFull { .. } | Error::QueueUnavailable { .. } => libc::EAGAIN,
        Error::TooLarge { .. } => libc::E2BIG,
        Error::At { source, .. } => return status_of(source),
        Error::Reset => libc::ECANCELED,
        Error::Disabled | Error::Closed => libc::ESHUTDOWN,
        // Its own status: the memory of such a request may still be
        // written by the device, and must never be freed or reused.
        Error::Dead => libc::ENOTRECOVERABLE,
        Error::Vfio(v) => vfio_errno(v),
        _ => libc::EIO,
    })
}

fn vfio_errno(v: &VfioError) -> i32 {
    match v {
        VfioError::MemlockTooLow { .. } | VfioError::DmaLimit { .. } => libc::ENOMEM,
        VfioError::PciAddress { .. } | VfioError::IovaOutOfRange { .. } => libc::EINVAL,
        VfioError::DeviceMissing { .. }
        | VfioError::NotBoundToVfio { .. }
        | VfioError::NoIommuGroup { .. }
        | VfioError::VfioUnavailable { .. }
        | VfioError::GroupNotViable { .. }
        | VfioError::IommuAbsent => libc::ENODEV,
        VfioError::Permission { .. } => libc::EACCES,
        VfioError::GroupBusy { .. } => libc::EBUSY,
        _ => libc::EIO,
    }
}

/// A short description of a status (NUL-terminated).
pub(crate) fn describe(status: i32) -> &'static str {
    match -status {
        0 => "success\0",
        libc::EINVAL => "invalid argument or request\0",
        libc::ENOMEM => "out of DMA memory, IOVA space or locked memory\0",
        libc::ETIMEDOUT => "timed out\0",
        libc::EIO => "the command failed (see its NVMe status)\0",
        libc::ENODEV => "no such device, or the device is gone\0",
        libc::EACCES => "permission denied\0",
        libc::EBUSY => "busy\0",
        libc::ENOTSUP => "not supported\0",
        libc::ENOENT => "no such namespace\0",
        libc::EAGAIN => "queue full, try again after polling\0",
        libc::E2BIG => "request too large for this queue pair\0",
        libc::ECANCELED => "ended by a controller reset (retryable)\0",
        libc::ESHUTDOWN => "controller disabled or closed\0",
        libc::ENOTRECOVERABLE => {
            "controller dead (could not be stopped): never free or reuse the memory of its requests\0"
        }
        _ => "unknown status\0",
    }
}
