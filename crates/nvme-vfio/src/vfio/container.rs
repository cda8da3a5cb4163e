//! The VFIO container: one IOMMU address space (Type1v2) shared by the
//! groups attached to it, and the DMA map/unmap calls on it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::mem::size_of;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use blk_dma::{HostAddr, Iova};
use vfio_bindings::bindings::vfio as b;

use super::group::Group;
use super::info;
use super::pci::Sysfs;
use super::sys;
use super::VfioError;
use crate::mem::{Access, DmaMap, IommuInfo};

/// The container device.
pub const CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// A VFIO container with the Type1v2 IOMMU set and at least one group
/// attached (the kernel needs a group before it accepts SET_IOMMU).
///
/// Obtained from [`Device::container`](super::Device::container); more
/// devices join it with [`Device::open_in`](super::Device::open_in). It is
/// `Send + Sync`: the kernel serializes the ioctls.
#[derive(Debug)]
pub struct Container {
    file: File,
    sysfs: Sysfs,
    info: IommuInfo,
    /// Groups attached to this container, by number. Weak: a group lives as
    /// long as a device of it does, and holds the container alive.
    groups: Mutex<HashMap<u32, Weak<Group>>>,
    /// Bytes currently mapped through this container (for error messages).
    mapped: AtomicU64,
}

impl Container {
    /// Opens `/dev/vfio/N` (checked viable), then a container, attaches the
    /// group and sets the Type1v2 IOMMU. Returns both.
    pub(crate) fn create(
        sysfs: Sysfs,
        group: u32,
    ) -> Result<(Arc<Container>, Arc<Group>), VfioError> {
        let group_file = Group::open_viable(&sysfs, group)?;
        let path = Path::new(CONTAINER_PATH);
        let file = sys::open_container(path).map_err(|source| match source.kind() {
            io::ErrorKind::PermissionDenied => VfioError::Permission {
                path: path.into(),
                source,
            },
            _ => VfioError::VfioUnavailable {
                path: path.into(),
                source,
            },
        })?;
        let version =
            sys::get_api_version(&file).map_err(VfioError::ioctl("VFIO_GET_API_VERSION"))?;
        if version != b::VFIO_API_VERSION as i32 {
            return Err(VfioError::ApiVersion {
                found: version,
                expected: b::VFIO_API_VERSION as i32,
            });
        }
        let type1v2 = sys::check_extension(&file, b::VFIO_TYPE1v2_IOMMU)
            .map_err(VfioError::ioctl("VFIO_CHECK_EXTENSION"))?;
        if !type1v2 {
            return Err(VfioError::IommuAbsent);
        }
        sys::group_set_container(&group_file, &file)
            .map_err(VfioError::ioctl("VFIO_GROUP_SET_CONTAINER"))?;
        sys::set_iommu(&file, b::VFIO_TYPE1v2_IOMMU).map_err(VfioError::ioctl("VFIO_SET_IOMMU"))?;
        let info = query_info(&file)?;
        let container = Arc::new(Container {
            file,
            sysfs,
            info,
            groups: Mutex::new(HashMap::new()),
            mapped: AtomicU64::new(0),
        });
        let group = Arc::new(Group::new(group_file, group, Arc::clone(&container)));
        container
            .lock_groups()
            .insert(group.number(), Arc::downgrade(&group));
        Ok((container, group))
    }

    /// Group `number` of this container: the one already attached, or a
    /// newly opened (viable) one attached now.
    pub(crate) fn group(self: &Arc<Self>, number: u32) -> Result<Arc<Group>, VfioError> {
        let mut groups = self.lock_groups();
        if let Some(group) = groups.get(&number).and_then(Weak::upgrade) {
            return Ok(group);
        }
        let file = Group::open_viable(&self.sysfs, number)?;
        sys::group_set_container(&file, &self.file)
            .map_err(VfioError::ioctl("VFIO_GROUP_SET_CONTAINER"))?;
        let group = Arc::new(Group::new(file, number, Arc::clone(self)));
        // The IOVA space was laid out by the ranges the container had: a
        // group whose IOMMU or reserved regions narrow them (or change
        // the page sizes) cannot share it. Dropping `group` detaches it.
        let fits = query_info(&self.file).map(|now| {
            let covered = self.info.iova_ranges.iter().all(|r| {
                now.iova_ranges
                    .iter()
                    .any(|n| n.start() <= r.start() && r.end() <= n.end())
            });
            covered && now.page_sizes & self.info.page_sizes == self.info.page_sizes
        });
        if !matches!(fits, Ok(true)) {
            // Unlocked first: the group's drop forgets it in the map.
            drop(groups);
            drop(group);
            return Err(match fits {
                Err(e) => e,
                _ => VfioError::IncompatibleGroup { group: number },
            });
        }
        groups.insert(number, Arc::downgrade(&group));
        Ok(group)
    }

    /// Forgets group `number` if it is gone (called as it drops).
    pub(crate) fn forget_group(&self, number: u32) {
        let mut groups = self.lock_groups();
        if groups.get(&number).is_some_and(|g| g.strong_count() == 0) {
            groups.remove(&number);
        }
    }

    fn lock_groups(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Weak<Group>>> {
        // The map stays consistent even if a holder panicked.
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The sysfs the container's devices were looked up in.
    pub fn sysfs(&self) -> &Sysfs {
        &self.sysfs
    }

    /// Bytes currently mapped through this container.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped.load(Ordering::Relaxed)
    }

    /// Whether `[iova, iova + len)` lies inside one valid IOVA range.
    fn iova_valid(&self, iova: u64, len: u64) -> bool {
        let Some(last) = len.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
            return false;
        };
        self.info
            .iova_ranges
            .iter()
            .any(|r| *r.start() <= iova && last <= *r.end())
    }

    /// The error for a failed VFIO_IOMMU_MAP_DMA.
    fn map_error(&self, iova: u64, len: u64, source: io::Error) -> VfioError {
        match source.raw_os_error() {
            Some(libc::ENOMEM) => match memlock_limit() {
                Some(current) => VfioError::MemlockTooLow {
                    iova,
                    len,
                    current,
                    needed: self.mapped_bytes().saturating_add(len),
                    source,
                },
                None => VfioError::Dma {
                    op: "map",
                    iova,
                    len,
                    source,
                },
            },
            Some(libc::ENOSPC) => VfioError::DmaLimit { iova, len, source },
            _ => VfioError::Dma {
                op: "map",
                iova,
                len,
                source,
            },
        }
    }
}

/// The soft RLIMIT_MEMLOCK in bytes; `None` if unlimited or unknown.
fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into `limit`, which we own.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (ret == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

// SAFETY: the kernel's type1v2 IOMMU driver does what the contract asks:
// the devices of the container reach host memory only through the IOMMU
// page tables that VFIO_IOMMU_MAP_DMA fills (pinning the pages, with the
// permissions of the flags) and a failed map leaves nothing behind; a
// VFIO_IOMMU_UNMAP_DMA that returns has removed the mappings and flushed the
// IOTLB (type1v2 refuses to bisect a mapping, so a range covering whole
// mappings removes them all). The host addresses are passed to the kernel
// as numbers; this process never dereferences them.
unsafe impl DmaMap for Container {
    fn iommu_info(&self) -> &IommuInfo {
        &self.info
    }

    /// VFIO_IOMMU_MAP_DMA. [`Access::ReadOnly`] grants the device read
    /// access only (`VFIO_DMA_MAP_FLAG_READ`).
    unsafe fn map_dma(
        &self,
        iova: Iova,
        host: HostAddr,
        len: u64,
        access: Access,
    ) -> Result<(), VfioError> {
        let (iova, host) = (iova.raw(), host.raw_u64());
        if !self.iova_valid(iova, len) {
            return Err(VfioError::IovaOutOfRange { iova, len });
        }
        let flags = match access {
            Access::ReadOnly => b::VFIO_DMA_MAP_FLAG_READ,
            Access::ReadWrite => b::VFIO_DMA_MAP_FLAG_READ | b::VFIO_DMA_MAP_FLAG_WRITE,
        };
        sys::iommu_map_dma(&self.file, iova, host, len, flags)
            .map_err(|e| self.map_error(iova, len, e))?;
        self.mapped.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// VFIO_IOMMU_UNMAP_DMA. When the container has no IOMMU any more
    /// (its last group left: the device was unplugged, or released), the
    /// kernel removed every mapping with it and the unmap's EINVAL means
    /// just that: the range counts as unmapped, and its memory may go back.
    unsafe fn unmap_dma(&self, iova: Iova, len: u64) -> Result<u64, VfioError> {
        let iova = iova.raw();
        let unmapped = match sys::iommu_unmap_dma(&self.file, iova, len) {
            Ok(n) => n,
            Err(source) if source.raw_os_error() == Some(libc::EINVAL) && !self.has_iommu() => {
                log::debug!(
                    "unmapping {len:#x} bytes at IOVA {iova:#x}: the container's IOMMU is gone \
                     (its mappings with it)"
                );
                len
            }
            Err(source) => {
                return Err(VfioError::Dma {
                    op: "unmap",
                    iova,
                    len,
                    source,
                })
            }
        };
        // Saturating: mappings made before a failed update are not lost.
        let _ = self
            .mapped
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some(m.saturating_sub(unmapped))
            });
        Ok(unmapped)
    }
}

impl Container {
    /// Whether the container may still have an IOMMU: false only when
    /// VFIO_IOMMU_GET_INFO fails with EINVAL, the answer of a container
    /// with no IOMMU driver, which is what it becomes once its last group
    /// has left (the driver's release unmaps and unpins everything). Any
    /// other failure counts as "still there", so memory is never given
    /// back on a doubt.
    fn has_iommu(&self) -> bool {
        let mut buf = info::InfoBuf::new(size_of::<b::vfio_iommu_type1_info>());
        match sys::iommu_get_info(&self.file, &mut buf) {
            Ok(()) => true,
            Err(e) => e.raw_os_error() != Some(libc::EINVAL),
        }
    }
}

/// VFIO_IOMMU_GET_INFO of a container whose IOMMU is set.
fn query_info(file: &File) -> Result<IommuInfo, VfioError> {
    let buf = info::query(
        size_of::<b::vfio_iommu_type1_info>(),
        |_| {},
        |buf| sys::iommu_get_info(file, buf),
    )
    .map_err(VfioError::ioctl("VFIO_IOMMU_GET_INFO"))?;
    info::parse_iommu_info(&buf).map_err(|reason| VfioError::Malformed {
        what: "VFIO_IOMMU_GET_INFO answer",
        reason,
    })
}
