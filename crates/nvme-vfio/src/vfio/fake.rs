//! Test twin of `ioctl.rs`: the same functions, answered by an in-memory
//! kernel (one per test thread) instead of /dev/vfio.
//!
//! Files handed out are real memfds, so closing, `pread`/`pwrite` on the
//! config region and `mmap` of BARs work on them unchanged. The kernel
//! recognizes its files by fd number and memfd name, so a closed and reused
//! fd number is not mistaken for the old file. The rules follow
//! drivers/vfio/vfio_main.c and vfio_iommu_type1.c (6.1).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use vfio_bindings::bindings::vfio as b;

use super::info::{build, InfoBuf};

/// One region of a fake device.
#[derive(Clone, Debug)]
pub(crate) struct Region {
    pub(crate) flags: u32,
    pub(crate) size: u64,
    pub(crate) sparse: Option<Vec<(u64, u64)>>,
}

/// A fake PCI device.
#[derive(Clone, Debug)]
pub(crate) struct Device {
    pub(crate) flags: u32,
    pub(crate) regions: Vec<Region>,
    pub(crate) msix_vectors: u32,
    pub(crate) msix_enabled: u32,
    pub(crate) resets: u32,
    /// Whether the device request interrupt has an eventfd.
    pub(crate) req_armed: bool,
}

/// A fake IOMMU group.
#[derive(Clone, Debug, Default)]
pub(crate) struct Group {
    pub(crate) viable: bool,
    /// Opening the group file fails with EACCES.
    pub(crate) eacces: bool,
    pub(crate) devices: Vec<String>,
    open: Option<RawFd>,
    container: Option<RawFd>,
}

impl Group {
    /// A viable group of `devices`, not open.
    pub(crate) fn viable(devices: &[&str]) -> Self {
        Group {
            viable: true,
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
            ..Group::default()
        }
    }
}

/// The fake type1 IOMMU (one for all containers of the thread's kernel).
#[derive(Clone, Debug)]
pub(crate) struct Iommu {
    pub(crate) page_sizes: u64,
    pub(crate) ranges: Vec<(u64, u64)>,
    /// vfio_iommu_type1's `dma_entry_limit`.
    pub(crate) dma_limit: u32,
    /// Bytes that may be pinned before ENOMEM (RLIMIT_MEMLOCK).
    pub(crate) lock_limit: Option<u64>,
    /// iova -> (size, flags).
    pub(crate) mappings: BTreeMap<u64, (u64, u32)>,
    set: bool,
}

#[derive(Clone, Debug)]
enum Handle {
    Container,
    Group(u32),
    Device(String),
}

/// The thread's fake kernel.
#[derive(Debug)]
pub(crate) struct Kernel {
    pub(crate) api_version: i32,
    pub(crate) type1v2: bool,
    pub(crate) groups: BTreeMap<u32, Group>,
    pub(crate) devices: BTreeMap<String, Device>,
    pub(crate) iommu: Iommu,
    fds: HashMap<RawFd, (Handle, String)>,
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            api_version: b::VFIO_API_VERSION as i32,
            type1v2: true,
            groups: BTreeMap::new(),
            devices: BTreeMap::new(),
            iommu: Iommu {
                page_sizes: 0x4020_1000,
                ranges: vec![(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)],
                dma_limit: 65535,
                lock_limit: None,
                mappings: BTreeMap::new(),
                set: false,
            },
            fds: HashMap::new(),
        }
    }
}

thread_local! {
    static KERNEL: RefCell<Kernel> = RefCell::new(Kernel::default());
}

/// Runs `f` on this thread's fake kernel.
pub(crate) fn with<R>(f: impl FnOnce(&mut Kernel) -> R) -> R {
    KERNEL.with(|k| f(&mut k.borrow_mut()))
}

/// Resets the kernel to one NVMe-like device, `name`, alone in `group`:
/// BAR0 of 16 KiB (mmap-able), 256 bytes of config space, 16 MSI-X vectors,
/// reset supported.
pub(crate) fn install_nvme(name: &str, group: u32) {
    let rw = b::VFIO_REGION_INFO_FLAG_READ | b::VFIO_REGION_INFO_FLAG_WRITE;
    let mut regions = vec![
        Region {
            flags: 0,
            size: 0,
            sparse: None
        };
        b::VFIO_PCI_NUM_REGIONS as usize
    ];
    regions[0] = Region {
        flags: rw | b::VFIO_REGION_INFO_FLAG_MMAP,
        size: 0x4000,
        sparse: None,
    };
    regions[b::VFIO_PCI_CONFIG_REGION_INDEX as usize] = Region {
        flags: rw,
        size: 256,
        sparse: None,
    };
    with(|k| {
        *k = Kernel::default();
        k.groups.insert(group, Group::viable(&[name]));
        k.devices.insert(
            name.to_owned(),
            Device {
                flags: b::VFIO_DEVICE_FLAGS_PCI | b::VFIO_DEVICE_FLAGS_RESET,
                regions,
                msix_vectors: 16,
                msix_enabled: 0,
                resets: 0,
                req_armed: false,
            },
        );
    });
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// A new memfd named uniquely, `size` bytes long.
fn memfd(kind: &str, size: u64) -> io::Result<(File, String)> {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "fake-vfio-{kind}-{}",
        SERIAL.fetch_add(1, Ordering::Relaxed)
    );
    let cname = CString::new(name.clone()).map_err(|_| errno(libc::EINVAL))?;
    // SAFETY: `cname` is a valid NUL-terminated string for the call.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok((file, name))
}

/// Whether `fd` is still the memfd called `name` (not closed or reused).
fn alive(fd: RawFd, name: &str) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|t| t.to_string_lossy().starts_with(&format!("/memfd:{name} ")))
        .unwrap_or(false)
}

impl Kernel {
    fn register(&mut self, file: &File, name: String, handle: Handle) {
        self.fds.insert(file.as_raw_fd(), (handle, name));
    }

    fn handle(&self, fd: RawFd) -> io::Result<Handle> {
        match self.fds.get(&fd) {
            Some((h, name)) if alive(fd, name) => Ok(h.clone()),
            _ => Err(errno(libc::EBADF)),
        }
    }

    fn is_open(&self, fd: Option<RawFd>) -> bool {
        fd.is_some_and(|fd| self.handle(fd).is_ok())
    }

    fn container(&self, f: &File) -> io::Result<()> {
        match self.handle(f.as_raw_fd())? {
            Handle::Container => Ok(()),
            _ => Err(errno(libc::ENOTTY)),
        }
    }

    fn group(&mut self, f: &File) -> io::Result<&mut Group> {
        match self.handle(f.as_raw_fd())? {
            Handle::Group(n) => self.groups.get_mut(&n).ok_or_else(|| errno(libc::ENODEV)),
            _ => Err(errno(libc::ENOTTY)),
        }
    }

    fn device(&mut self, f: &File) -> io::Result<&mut Device> {
        match self.handle(f.as_raw_fd())? {
            Handle::Device(n) => self.devices.get_mut(&n).ok_or_else(|| errno(libc::ENODEV)),
            _ => Err(errno(libc::ENOTTY)),
        }
    }

    /// Groups attached to a live container.
    fn attached(&self) -> usize {
        self.groups
            .values()
            .filter(|g| self.is_open(g.container))
            .count()
    }
}

/// Where region `index` starts in the device file: regions laid out in
/// order, page-aligned.
pub(crate) fn region_offset(dev: &Device, index: usize) -> u64 {
    dev.regions[..index]
        .iter()
        .map(|r| r.size.next_multiple_of(4096))
        .sum()
}

pub(crate) fn open_container(path: &Path) -> io::Result<File> {
    if path != Path::new("/dev/vfio/vfio") {
        return Err(errno(libc::ENOENT));
    }
    let (file, name) = memfd("container", 0)?;
    with(|k| k.register(&file, name, Handle::Container));
    Ok(file)
}

pub(crate) fn open_group(path: &Path) -> io::Result<File> {
    let n: u32 = path
        .strip_prefix("/dev/vfio")
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .ok_or_else(|| errno(libc::ENOENT))?;
    with(|k| {
        let g = k.groups.get(&n).ok_or_else(|| errno(libc::ENOENT))?;
        if g.eacces {
            return Err(errno(libc::EACCES));
        }
        if k.is_open(g.open) {
            return Err(errno(libc::EBUSY));
        }
        let (file, name) = memfd("group", 0)?;
        k.register(&file, name, Handle::Group(n));
        if let Some(g) = k.groups.get_mut(&n) {
            // A closed group file releases its container.
            *g = Group {
                open: Some(file.as_raw_fd()),
                container: None,
                ..g.clone()
            };
        }
        Ok(file)
    })
}

pub(crate) fn get_api_version(container: &File) -> io::Result<i32> {
    with(|k| k.container(container).map(|()| k.api_version))
}

pub(crate) fn check_extension(container: &File, ext: u32) -> io::Result<bool> {
    with(|k| {
        k.container(container)?;
        Ok(k.type1v2 && (ext == b::VFIO_TYPE1v2_IOMMU || ext == b::VFIO_TYPE1_IOMMU))
    })
}

pub(crate) fn set_iommu(container: &File, iommu_type: u32) -> io::Result<()> {
    with(|k| {
        k.container(container)?;
        if k.attached() == 0 {
            return Err(errno(libc::EINVAL));
        }
        if !k.type1v2 || iommu_type != b::VFIO_TYPE1v2_IOMMU {
            return Err(errno(libc::ENODEV));
        }
        if k.iommu.set {
            return Err(errno(libc::EBUSY));
        }
        k.iommu.set = true;
        k.iommu.mappings.clear();
        Ok(())
    })
}

pub(crate) fn group_get_status(group: &File) -> io::Result<u32> {
    with(|k| {
        let g = k.group(group)?.clone();
        let mut flags = 0;
        if g.viable {
            flags |= b::VFIO_GROUP_FLAGS_VIABLE;
        }
        if k.is_open(g.container) {
            flags |= b::VFIO_GROUP_FLAGS_CONTAINER_SET;
        }
        Ok(flags)
    })
}

pub(crate) fn group_set_container(group: &File, container: &File) -> io::Result<()> {
    with(|k| {
        k.container(container)?;
        let g = k.group(group)?.clone();
        if k.is_open(g.container) {
            return Err(errno(libc::EINVAL));
        }
        if !g.viable {
            return Err(errno(libc::EPERM));
        }
        k.group(group)?.container = Some(container.as_raw_fd());
        Ok(())
    })
}

pub(crate) fn group_unset_container(group: &File) -> io::Result<()> {
    with(|k| {
        let g = k.group(group)?;
        if g.container.take().is_none() {
            return Err(errno(libc::EINVAL));
        }
        if k.attached() == 0 {
            // The last group leaves: the kernel tears the IOMMU down.
            k.iommu.set = false;
            k.iommu.mappings.clear();
        }
        Ok(())
    })
}

pub(crate) fn group_get_device_fd(group: &File, name: &CStr) -> io::Result<File> {
    let name = name.to_str().map_err(|_| errno(libc::EINVAL))?.to_owned();
    with(|k| {
        let g = k.group(group)?.clone();
        if !k.is_open(g.container) || !k.iommu.set {
            return Err(errno(libc::EINVAL));
        }
        if !g.devices.contains(&name) {
            return Err(errno(libc::ENODEV));
        }
        let dev = k.devices.get(&name).ok_or_else(|| errno(libc::ENODEV))?;
        let size = region_offset(dev, dev.regions.len());
        let (file, fname) = memfd("device", size)?;
        k.register(&file, fname, Handle::Device(name));
        Ok(file)
    })
}

pub(crate) fn device_get_info(device: &File) -> io::Result<b::vfio_device_info> {
    with(|k| {
        let d = k.device(device)?;
        Ok(b::vfio_device_info {
            argsz: std::mem::size_of::<b::vfio_device_info>() as u32,
            flags: d.flags,
            num_regions: d.regions.len() as u32,
            num_irqs: b::VFIO_PCI_NUM_IRQS,
            ..Default::default()
        })
    })
}

pub(crate) fn device_get_region_info(device: &File, buf: &mut InfoBuf) -> io::Result<()> {
    with(|k| {
        let d = k.device(device)?.clone();
        let index = buf.u32_at(8).ok_or_else(|| errno(libc::EINVAL))? as usize;
        let r = d.regions.get(index).ok_or_else(|| errno(libc::EINVAL))?;
        let base = std::mem::size_of::<b::vfio_region_info>();
        let mut flags = r.flags;
        buf.set_u32(12, 0);
        if let Some(areas) = &r.sparse {
            flags |= b::VFIO_REGION_INFO_FLAG_CAPS;
            let need = base + build::chain(buf, base, &[build::sparse_cap(areas)]);
            if buf.len() < need {
                buf.set_u32(0, need as u32);
            } else {
                buf.set_u32(12, base as u32);
            }
        }
        buf.set_u32(4, flags);
        buf.set_u64(16, r.size);
        buf.set_u64(24, region_offset(&d, index));
        Ok(())
    })
}

pub(crate) fn device_get_irq_info(device: &File, index: u32) -> io::Result<b::vfio_irq_info> {
    with(|k| {
        let d = k.device(device)?;
        let count = match index {
            b::VFIO_PCI_INTX_IRQ_INDEX => 1,
            b::VFIO_PCI_MSIX_IRQ_INDEX => d.msix_vectors,
            b::VFIO_PCI_REQ_IRQ_INDEX => 1,
            i if i < b::VFIO_PCI_NUM_IRQS => 0,
            _ => return Err(errno(libc::EINVAL)),
        };
        Ok(b::vfio_irq_info {
            argsz: std::mem::size_of::<b::vfio_irq_info>() as u32,
            flags: b::VFIO_IRQ_INFO_EVENTFD | b::VFIO_IRQ_INFO_NORESIZE,
            index,
            count,
        })
    })
}

pub(crate) fn device_set_irqs_eventfd(
    device: &File,
    index: u32,
    eventfds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    with(|k| {
        let d = k.device(device)?;
        if index == b::VFIO_PCI_REQ_IRQ_INDEX && eventfds.len() == 1 {
            d.req_armed = true;
            return Ok(());
        }
        if index != b::VFIO_PCI_MSIX_IRQ_INDEX || eventfds.len() > d.msix_vectors as usize {
            return Err(errno(libc::EINVAL));
        }
        d.msix_enabled = eventfds.len() as u32;
        Ok(())
    })
}

pub(crate) fn device_disable_irqs(device: &File, index: u32) -> io::Result<()> {
    with(|k| {
        let d = k.device(device)?;
        if index == b::VFIO_PCI_MSIX_IRQ_INDEX {
            d.msix_enabled = 0;
        }
        Ok(())
    })
}

pub(crate) fn device_reset(device: &File) -> io::Result<()> {
    with(|k| {
        let d = k.device(device)?;
        if d.flags & b::VFIO_DEVICE_FLAGS_RESET == 0 {
            return Err(errno(libc::EINVAL));
        }
        d.resets += 1;
        Ok(())
    })
}

pub(crate) fn iommu_get_info(container: &File, buf: &mut InfoBuf) -> io::Result<()> {
    with(|k| {
        k.container(container)?;
        if !k.iommu.set {
            return Err(errno(libc::EINVAL));
        }
        let base = std::mem::size_of::<b::vfio_iommu_type1_info>();
        let avail = k
            .iommu
            .dma_limit
            .saturating_sub(k.iommu.mappings.len() as u32);
        // Linux 6.1's order: the ranges end up only 4-aligned.
        let caps = [
            build::dma_avail_cap(avail),
            build::iova_range_cap(&k.iommu.ranges),
        ];
        let need = base + build::chain(buf, base, &caps);
        buf.set_u32(4, b::VFIO_IOMMU_INFO_PGSIZES | b::VFIO_IOMMU_INFO_CAPS);
        buf.set_u64(8, k.iommu.page_sizes);
        if buf.len() < need {
            buf.set_u32(0, need as u32);
            buf.set_u32(16, 0);
        } else {
            buf.set_u32(16, base as u32);
        }
        Ok(())
    })
}

pub(crate) fn iommu_map_dma(
    container: &File,
    iova: u64,
    _vaddr: u64,
    size: u64,
    flags: u32,
) -> io::Result<()> {
    with(|k| {
        k.container(container)?;
        let m = &mut k.iommu;
        let mask = (1u64 << m.page_sizes.trailing_zeros()) - 1;
        let prot = flags & (b::VFIO_DMA_MAP_FLAG_READ | b::VFIO_DMA_MAP_FLAG_WRITE);
        let last = iova.checked_add(size.wrapping_sub(1));
        if !m.set || prot == 0 || size == 0 || (size | iova) & mask != 0 || last.is_none() {
            return Err(errno(libc::EINVAL));
        }
        let last = last.unwrap_or(u64::MAX);
        if m.mappings
            .iter()
            .any(|(&s, &(len, _))| s <= last && iova <= s + (len - 1))
        {
            return Err(errno(libc::EEXIST));
        }
        if m.mappings.len() >= m.dma_limit as usize {
            return Err(errno(libc::ENOSPC));
        }
        if !m.ranges.iter().any(|&(s, e)| s <= iova && last <= e) {
            return Err(errno(libc::EINVAL));
        }
        let pinned: u64 = m.mappings.values().map(|&(len, _)| len).sum();
        if m.lock_limit.is_some_and(|l| pinned + size > l) {
            return Err(errno(libc::ENOMEM));
        }
        m.mappings.insert(iova, (size, flags));
        Ok(())
    })
}

pub(crate) fn iommu_unmap_dma(container: &File, iova: u64, size: u64) -> io::Result<u64> {
    with(|k| {
        k.container(container)?;
        let m = &mut k.iommu;
        let mask = (1u64 << m.page_sizes.trailing_zeros()) - 1;
        let end = iova.checked_add(size).ok_or_else(|| errno(libc::EINVAL))?;
        if !m.set || size == 0 || (size | iova) & mask != 0 {
            return Err(errno(libc::EINVAL));
        }
        // Type1v2 refuses to split a mapping.
        let bisects = m.mappings.iter().any(|(&s, &(len, _))| {
            let e = s + len;
            (s < iova && e > iova) || (s < end && e > end)
        });
        if bisects {
            return Err(errno(libc::EINVAL));
        }
        let inside: Vec<u64> = m.mappings.range(iova..end).map(|(&s, _)| s).collect();
        Ok(inside
            .iter()
            .filter_map(|s| m.mappings.remove(s))
            .map(|(len, _)| len)
            .sum())
    })
}
