//! Errors of the VFIO layer.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::pci::{GroupMember, PciAddress};

/// Why a VFIO operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VfioError {
    /// A DMA mapping ioctl failed.
    #[error("VFIO DMA {op} of {len:#x} bytes at IOVA {iova:#x} failed: {source}")]
    Dma {
        /// `map` or `unmap`.
        op: &'static str,
        /// IOVA of the mapping.
        iova: u64,
        /// Length of the mapping.
        len: u64,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The kernel refused to pin the pages of a DMA mapping (ENOMEM): the
    /// process's locked-memory limit is too low.
    #[error(
        "VFIO DMA map of {len:#x} bytes at IOVA {iova:#x} failed ({source}): RLIMIT_MEMLOCK is \
         {current} bytes, this container needs {needed} bytes of locked memory with this \
         mapping; raise the limit (`ulimit -l`, limits.conf, systemd LimitMEMLOCK) or grant \
         CAP_IPC_LOCK"
    )]
    MemlockTooLow {
        /// IOVA of the mapping.
        iova: u64,
        /// Length of the mapping.
        len: u64,
        /// The soft RLIMIT_MEMLOCK, in bytes.
        current: u64,
        /// Bytes this container would have mapped (pinned) with this mapping.
        needed: u64,
        /// The errno (ENOMEM).
        #[source]
        source: io::Error,
    },
    /// The IOMMU driver's limit on the number of DMA mappings is reached
    /// (ENOSPC; vfio_iommu_type1's `dma_entry_limit`, 65535 by default).
    #[error(
        "VFIO DMA map of {len:#x} bytes at IOVA {iova:#x} failed ({source}): the container's \
         DMA entry limit is reached (vfio_iommu_type1's `dma_entry_limit` module parameter, \
         65535 by default); use fewer, larger mappings or raise it (modprobe \
         vfio_iommu_type1 dma_entry_limit=N, or /sys/module/vfio_iommu_type1/parameters/dma_entry_limit)"
    )]
    DmaLimit {
        /// IOVA of the mapping.
        iova: u64,
        /// Length of the mapping.
        len: u64,
        /// The errno (ENOSPC).
        #[source]
        source: io::Error,
    },
    /// A DMA mapping lies outside every IOVA range the IOMMU allows.
    #[error("IOVA range {iova:#x}+{len:#x} is outside the IOMMU's valid IOVA ranges")]
    IovaOutOfRange {
        /// IOVA of the mapping.
        iova: u64,
        /// Length of the mapping.
        len: u64,
    },
    /// A PCI address could not be parsed.
    #[error("invalid PCI address {input:?}: {reason} (expected DDDD:BB:DD.F or BB:DD.F, hex)")]
    PciAddress {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No PCI device has this address.
    #[error("no PCI device {addr}: {} does not exist (list devices with `lspci -D`)", .path.display())]
    DeviceMissing {
        /// The address asked for.
        addr: PciAddress,
        /// The sysfs directory that is missing.
        path: PathBuf,
    },
    /// The device is not bound to vfio-pci.
    #[error(
        "{addr} is bound to {}, not vfio-pci: run `scripts/setup-vfio.sh bind {addr}`",
        .driver.as_deref().unwrap_or("no driver")
    )]
    NotBoundToVfio {
        /// The device.
        addr: PciAddress,
        /// The driver it is bound to, if any.
        driver: Option<String>,
    },
    /// The device has no IOMMU group: the IOMMU is off.
    #[error(
        "{addr} has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the \
         kernel command line, VT-d/AMD-Vi in the firmware)"
    )]
    NoIommuGroup {
        /// The device.
        addr: PciAddress,
    },
    /// Reading sysfs failed.
    #[error("cannot read {}", .path.display())]
    Sysfs {
        /// The file or link.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The VFIO container device is missing or unusable.
    #[error("cannot open {}: is the vfio-pci module loaded (`modprobe vfio-pci`)?", .path.display())]
    VfioUnavailable {
        /// `/dev/vfio/vfio`.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Opening a VFIO file was refused.
    #[error(
        "permission denied opening {}: give your user the file (`chown $USER {}`, or run \
         scripts/setup-vfio.sh with TARGET_USER=$USER) or run as root",
        .path.display(), .path.display()
    )]
    Permission {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The group is already open, in this or another process.
    #[error("{} is busy: another process (or another container here) has the group open", .path.display())]
    GroupBusy {
        /// The group file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Opening a VFIO file failed for another reason.
    #[error("cannot open {}", .path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Some device in the group is bound to a driver other than vfio-pci,
    /// so the kernel will not hand the group to userspace.
    #[error(
        "IOMMU group {group} is not viable: every device in it must be bound to vfio-pci \
         (or to no driver); members: {members}"
    )]
    GroupNotViable {
        /// The group number.
        group: u32,
        /// The group's devices and their drivers.
        members: GroupMembers,
    },
    /// The kernel speaks another VFIO API version.
    #[error("VFIO API version {found}, expected {expected}")]
    ApiVersion {
        /// What the kernel reports.
        found: i32,
        /// What this driver speaks.
        expected: i32,
    },
    /// VFIO has no Type1v2 IOMMU backend.
    #[error(
        "VFIO has no Type1v2 IOMMU: no IOMMU is enabled (intel_iommu=on / amd_iommu=on) or the \
         vfio_iommu_type1 module is not loaded"
    )]
    IommuAbsent,
    /// An ioctl failed.
    #[error("{op} failed")]
    Ioctl {
        /// The ioctl's name.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// An ioctl's answer (a capability chain) could not be parsed.
    #[error("malformed {what} from the kernel: {reason}")]
    Malformed {
        /// Which answer.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A device region cannot be mapped.
    #[error("region {index} cannot be memory-mapped: {reason}")]
    RegionNotMappable {
        /// The region index (BAR number for BARs 0-5).
        index: u32,
        /// Why.
        reason: &'static str,
    },
    /// `mmap` of a region failed.
    #[error("mmap of region {index} ({len:#x} bytes at {offset:#x}) failed")]
    Mmap {
        /// The region index.
        index: u32,
        /// Offset into the region.
        offset: u64,
        /// Length of the mapping.
        len: u64,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A BAR access was refused before touching the device.
    #[error("BAR {index}: {width}-byte access at {offset:#x}: {fault}")]
    BarAccess {
        /// The BAR.
        index: u32,
        /// Offset of the access.
        offset: u64,
        /// Width in bytes.
        width: u8,
        /// What is wrong.
        fault: BarFault,
    },
    /// Config space access failed.
    #[error("config space {op} of {len} bytes at {offset:#x} failed")]
    Config {
        /// `read` or `write`.
        op: &'static str,
        /// Offset into config space.
        offset: u64,
        /// Length of the access.
        len: usize,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// More interrupt vectors were asked for than the device has.
    #[error("{requested} MSI-X vectors requested, the device has {available}")]
    TooManyVectors {
        /// Requested.
        requested: u32,
        /// Available.
        available: u32,
    },
    /// Creating an eventfd failed.
    #[error("eventfd creation failed")]
    Eventfd(#[source] io::Error),
    /// A group attached to a container that other devices use narrows the
    /// container's valid IOVA ranges or page sizes (its IOMMU or reserved
    /// regions differ), which the memory already laid out in it relies on.
    #[error(
        "IOMMU group {group} would narrow the shared container's IOVA ranges; open its device in a DMA space of its own"
    )]
    IncompatibleGroup {
        /// The group.
        group: u32,
    },
    /// Letting go of the device (replacing its file descriptor, or its
    /// BAR mappings) failed.
    #[error("releasing the device failed")]
    Release(#[source] io::Error),
}

impl VfioError {
    /// An [`VfioError::Ioctl`] for `op`.
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(io::Error) -> VfioError {
        move |source| VfioError::Ioctl { op, source }
    }
}

/// Why a BAR access was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BarFault {
    /// The access extends past the end of the BAR.
    OutOfBounds {
        /// The BAR's size.
        size: u64,
    },
    /// The offset is not a multiple of the access width.
    Misaligned,
    /// The access is inside the BAR but outside every area the kernel let
    /// us map (sparse mmap).
    NotMapped,
}

impl fmt::Display for BarFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BarFault::OutOfBounds { size } => write!(f, "out of bounds (BAR size {size:#x})"),
            BarFault::Misaligned => f.write_str("misaligned"),
            BarFault::NotMapped => f.write_str("outside the mmap-able areas"),
        }
    }
}

/// The devices of an IOMMU group, for error messages.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct GroupMembers(pub Vec<GroupMember>);

impl fmt::Display for GroupMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(could not list them)");
        }
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "{} ({})",
                m.name,
                m.driver.as_deref().unwrap_or("no driver")
            )?;
        }
        Ok(())
    }
}
