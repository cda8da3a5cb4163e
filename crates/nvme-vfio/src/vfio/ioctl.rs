//! Every VFIO ioctl, one thin function each (include/uapi/linux/vfio.h).
//!
//! Nothing here interprets answers beyond the ioctl's own struct; the safe
//! layer (container, group, device, bar, irq) does that. Under `cfg(test)`
//! the safe layer calls `fake.rs` instead, a twin of this module with the
//! same signatures and an in-memory kernel.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd};
use std::path::Path;

use libc::{c_int, c_ulong, Ioctl};
use vfio_bindings::bindings::vfio as b;

use super::info::InfoBuf;

// The VFIO ioctl numbers: `_IO(VFIO_TYPE, VFIO_BASE + n)` with VFIO_TYPE = ';'
// (0x3b) and VFIO_BASE = 100. VFIO encodes neither direction nor size; the
// structs carry their size in `argsz`.
const VFIO_GET_API_VERSION: Ioctl = 0x3b64;
const VFIO_CHECK_EXTENSION: Ioctl = 0x3b65;
const VFIO_SET_IOMMU: Ioctl = 0x3b66;
const VFIO_GROUP_GET_STATUS: Ioctl = 0x3b67;
const VFIO_GROUP_SET_CONTAINER: Ioctl = 0x3b68;
const VFIO_GROUP_UNSET_CONTAINER: Ioctl = 0x3b69;
const VFIO_GROUP_GET_DEVICE_FD: Ioctl = 0x3b6a;
const VFIO_DEVICE_GET_INFO: Ioctl = 0x3b6b;
const VFIO_DEVICE_GET_REGION_INFO: Ioctl = 0x3b6c;
const VFIO_DEVICE_GET_IRQ_INFO: Ioctl = 0x3b6d;
const VFIO_DEVICE_SET_IRQS: Ioctl = 0x3b6e;
const VFIO_DEVICE_RESET: Ioctl = 0x3b6f;
// Container ioctls reuse numbers of device ioctls (different files).
const VFIO_IOMMU_GET_INFO: Ioctl = 0x3b70;
const VFIO_IOMMU_MAP_DMA: Ioctl = 0x3b71;
const VFIO_IOMMU_UNMAP_DMA: Ioctl = 0x3b72;

/// `ret` as a result: negative means `errno` is set.
fn check(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `argsz` of a fixed-size VFIO struct (all are a few dozen bytes).
const fn argsz<T>() -> u32 {
    size_of::<T>() as u32
}

/// Opens the container file, `/dev/vfio/vfio` (read-write, close-on-exec).
pub(crate) fn open_container(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// Opens a group file, `/dev/vfio/N` (read-write, close-on-exec).
pub(crate) fn open_group(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// VFIO_GET_API_VERSION.
pub(crate) fn get_api_version(container: &File) -> io::Result<i32> {
    // SAFETY: this ioctl takes no argument and only returns an int; the fd is
    // open for the duration of the call because `container` is borrowed.
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_GET_API_VERSION) })
}

/// VFIO_CHECK_EXTENSION: whether the container supports `ext` (e.g.
/// VFIO_TYPE1v2_IOMMU).
pub(crate) fn check_extension(container: &File, ext: u32) -> io::Result<bool> {
    // SAFETY: the argument is passed by value as an integer, no memory is
    // shared with the kernel; the fd is open (borrowed).
    let ret = check(unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_CHECK_EXTENSION,
            c_ulong::from(ext),
        )
    })?;
    Ok(ret > 0)
}

/// VFIO_SET_IOMMU: selects the IOMMU backend; needs a group attached.
pub(crate) fn set_iommu(container: &File, iommu_type: u32) -> io::Result<()> {
    // SAFETY: the argument is passed by value as an integer; the fd is open.
    check(unsafe {
        libc::ioctl(
            container.as_raw_fd(),
            VFIO_SET_IOMMU,
            c_ulong::from(iommu_type),
        )
    })?;
    Ok(())
}

/// VFIO_GROUP_GET_STATUS: the group's `VFIO_GROUP_FLAGS_*`.
pub(crate) fn group_get_status(group: &File) -> io::Result<u32> {
    let mut status = b::vfio_group_status {
        argsz: argsz::<b::vfio_group_status>(),
        flags: 0,
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `status`, a live
    // `vfio_group_status` we own exclusively for the call.
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_STATUS, &mut status) })?;
    Ok(status.flags)
}

/// VFIO_GROUP_SET_CONTAINER: attaches the group to the container.
pub(crate) fn group_set_container(group: &File, container: &File) -> io::Result<()> {
    let fd: c_int = container.as_raw_fd();
    // SAFETY: the kernel reads one int (the container fd, kept open by the
    // borrow of `container`) from `fd`, which lives across the call.
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_SET_CONTAINER, &fd) })?;
    Ok(())
}

/// VFIO_GROUP_UNSET_CONTAINER: detaches the group from its container.
pub(crate) fn group_unset_container(group: &File) -> io::Result<()> {
    // SAFETY: no argument; the fd is open (borrowed).
    check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_UNSET_CONTAINER) })?;
    Ok(())
}

/// VFIO_GROUP_GET_DEVICE_FD: opens the device named `name` (its PCI address).
pub(crate) fn group_get_device_fd(group: &File, name: &CStr) -> io::Result<File> {
    // SAFETY: the kernel reads the NUL-terminated string `name`, alive for the call.
    let fd =
        check(unsafe { libc::ioctl(group.as_raw_fd(), VFIO_GROUP_GET_DEVICE_FD, name.as_ptr()) })?;
    // SAFETY: on success the ioctl returns a new file descriptor that nothing
    // else owns; the `File` takes ownership and closes it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// VFIO_DEVICE_GET_INFO (without capabilities).
pub(crate) fn device_get_info(device: &File) -> io::Result<b::vfio_device_info> {
    let mut info = b::vfio_device_info {
        argsz: argsz::<b::vfio_device_info>(),
        ..Default::default()
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `info`, which we own.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_GET_INFO, &mut info) })?;
    Ok(info)
}

/// VFIO_DEVICE_GET_REGION_INFO into `buf` (`vfio_region_info` with `index`
/// set, plus room for capabilities; see `info::query`).
pub(crate) fn device_get_region_info(device: &File, buf: &mut InfoBuf) -> io::Result<()> {
    // SAFETY: `buf` holds `argsz` (= its length) writable bytes, 8-aligned,
    // starting with a `vfio_region_info`; the kernel writes within `argsz`.
    check(unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            VFIO_DEVICE_GET_REGION_INFO,
            buf.as_mut_ptr(),
        )
    })?;
    Ok(())
}

/// VFIO_DEVICE_GET_IRQ_INFO for interrupt index `index` (e.g. MSI-X).
pub(crate) fn device_get_irq_info(device: &File, index: u32) -> io::Result<b::vfio_irq_info> {
    let mut info = b::vfio_irq_info {
        argsz: argsz::<b::vfio_irq_info>(),
        index,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `info`, which we own.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_GET_IRQ_INFO, &mut info) })?;
    Ok(info)
}

// `vfio_irq_set` is five u32 followed by the data array; the eventfd
// variant's data is one i32 per vector.
const _: () = assert!(size_of::<b::vfio_irq_set>() == 20);

/// VFIO_DEVICE_SET_IRQS with eventfd triggers: vector `i` of interrupt
/// `index` signals `eventfds[i]` (which also enables the vectors).
pub(crate) fn device_set_irqs_eventfd(
    device: &File,
    index: u32,
    eventfds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let count =
        u32::try_from(eventfds.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut words: Vec<u32> = Vec::with_capacity(5 + eventfds.len());
    let argsz = 4 * (5 + count);
    let flags = b::VFIO_IRQ_SET_DATA_EVENTFD | b::VFIO_IRQ_SET_ACTION_TRIGGER;
    // argsz, flags, index, start, count, then the fds (as i32 bit patterns).
    words.extend([argsz, flags, index, 0, count]);
    words.extend(eventfds.iter().map(|fd| fd.as_raw_fd() as u32));
    // SAFETY: `words` is a `vfio_irq_set` header followed by `count` fds,
    // `argsz` bytes, 4-aligned as the struct requires; the kernel only reads
    // it. The eventfds are open (borrowed) during the call.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_SET_IRQS, words.as_ptr()) })?;
    Ok(())
}

/// VFIO_DEVICE_SET_IRQS with no data and count 0: disables every vector of
/// interrupt `index`.
pub(crate) fn device_disable_irqs(device: &File, index: u32) -> io::Result<()> {
    let set = b::vfio_irq_set {
        argsz: argsz::<b::vfio_irq_set>(),
        flags: b::VFIO_IRQ_SET_DATA_NONE | b::VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        start: 0,
        count: 0,
        data: Default::default(),
    };
    // SAFETY: the kernel reads `argsz` bytes of `set` (no data follows with
    // count 0); `set` lives across the call.
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_SET_IRQS, &set) })?;
    Ok(())
}

/// VFIO_DEVICE_RESET (function-level or other reset the kernel knows).
pub(crate) fn device_reset(device: &File) -> io::Result<()> {
    // SAFETY: no argument; the fd is open (borrowed).
    check(unsafe { libc::ioctl(device.as_raw_fd(), VFIO_DEVICE_RESET) })?;
    Ok(())
}

/// VFIO_IOMMU_GET_INFO into `buf` (`vfio_iommu_type1_info` plus room for
/// capabilities; see `info::query`).
pub(crate) fn iommu_get_info(container: &File, buf: &mut InfoBuf) -> io::Result<()> {
    // SAFETY: `buf` holds `argsz` (= its length) writable bytes, 8-aligned,
    // starting with a `vfio_iommu_type1_info`; the kernel writes within `argsz`.
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_GET_INFO, buf.as_mut_ptr()) })?;
    Ok(())
}

/// VFIO_IOMMU_MAP_DMA: maps `size` bytes of this process's memory at
/// `vaddr` to `iova`, with `VFIO_DMA_MAP_FLAG_*` access `flags`.
///
/// The kernel pins the pages and checks that `vaddr` is mapped in this
/// process; it is the caller's job to keep that memory alive (and not
/// reuse it) until it is unmapped, or the device may reach freed memory.
pub(crate) fn iommu_map_dma(
    container: &File,
    iova: u64,
    vaddr: u64,
    size: u64,
    flags: u32,
) -> io::Result<()> {
    let map = b::vfio_iommu_type1_dma_map {
        argsz: argsz::<b::vfio_iommu_type1_dma_map>(),
        flags,
        vaddr,
        iova,
        size,
    };
    // SAFETY: the kernel reads `map`, alive across the call; it validates
    // `vaddr` against this process's mappings itself, so no Rust memory is
    // aliased by the call.
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_MAP_DMA, &map) })?;
    Ok(())
}

/// VFIO_IOMMU_UNMAP_DMA: unmaps `[iova, iova + size)`; returns the bytes
/// actually unmapped (0 if nothing was mapped there).
pub(crate) fn iommu_unmap_dma(container: &File, iova: u64, size: u64) -> io::Result<u64> {
    let mut unmap = b::vfio_iommu_type1_dma_unmap {
        argsz: argsz::<b::vfio_iommu_type1_dma_unmap>(),
        flags: 0,
        iova,
        size,
        data: Default::default(),
    };
    // SAFETY: the kernel reads and writes back `argsz` bytes of `unmap`, a
    // live struct we own (no dirty bitmap is requested).
    check(unsafe { libc::ioctl(container.as_raw_fd(), VFIO_IOMMU_UNMAP_DMA, &mut unmap) })?;
    Ok(unmap.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's `_IOC(dir, type, nr, size)` (asm-generic/ioctl.h).
    const fn ioc(dir: u64, ty: u8, nr: u64, size: u64) -> u64 {
        (dir << 30) | (size << 16) | ((ty as u64) << 8) | nr
    }

    /// `_IO(VFIO_TYPE, VFIO_BASE + n)`.
    const fn vfio_io(n: u64) -> u64 {
        ioc(0, b::VFIO_TYPE, b::VFIO_BASE as u64 + n, 0)
    }

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        assert_eq!(b::VFIO_TYPE, b';');
        let table: [(Ioctl, u64); 15] = [
            (VFIO_GET_API_VERSION, 0),
            (VFIO_CHECK_EXTENSION, 1),
            (VFIO_SET_IOMMU, 2),
            (VFIO_GROUP_GET_STATUS, 3),
            (VFIO_GROUP_SET_CONTAINER, 4),
            (VFIO_GROUP_UNSET_CONTAINER, 5),
            (VFIO_GROUP_GET_DEVICE_FD, 6),
            (VFIO_DEVICE_GET_INFO, 7),
            (VFIO_DEVICE_GET_REGION_INFO, 8),
            (VFIO_DEVICE_GET_IRQ_INFO, 9),
            (VFIO_DEVICE_SET_IRQS, 10),
            (VFIO_DEVICE_RESET, 11),
            (VFIO_IOMMU_GET_INFO, 12),
            (VFIO_IOMMU_MAP_DMA, 13),
            (VFIO_IOMMU_UNMAP_DMA, 14),
        ];
        for (nr, n) in table {
            // `Ioctl` is u64 on glibc, i32 on musl.
            #[allow(clippy::unnecessary_cast)]
            let nr = nr as u64;
            assert_eq!(nr, vfio_io(n), "VFIO_BASE + {n}");
        }
    }
}
