//! A PCI BAR mapped into this process: volatile, bounds-checked register
//! access.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::{self, NonNull};

use vfio_bindings::bindings::vfio as b;

use super::error::BarFault;
use super::info::RegionInfo;
use super::VfioError;

/// One mmapped area of a BAR.
#[derive(Debug)]
struct Area {
    /// Offset of the area in the BAR.
    offset: u64,
    /// Length in bytes.
    len: usize,
    /// Start of the mapping.
    ptr: NonNull<u8>,
}

/// A memory BAR of a device, mmapped.
///
/// # Invariant
///
/// Every area's `ptr` is the start of a live, readable and writable mapping
/// of `len` bytes that this `Bar` created and alone unmaps (on drop): of
/// the device, or, once [`released`](Bar::release), of anonymous memory
/// that reads all ones; the areas lie within `[0, size)` of the BAR and do
/// not overlap. Device
/// registers are only touched through volatile accesses, never as Rust
/// references.
#[derive(Debug)]
pub struct Bar {
    index: u32,
    size: u64,
    areas: Vec<Area>,
    /// An access through [`Registers`](crate::nvme::regs::Registers)
    /// failed (see [`Registers::failed`](crate::nvme::regs::Registers::failed)).
    pub(crate) failed: std::sync::atomic::AtomicBool,
}

// SAFETY: a `Bar` is plain MMIO addresses; volatile register accesses from
// several threads are what the hardware serializes. Nothing in `Bar` is
// tied to the thread that created it.
unsafe impl Send for Bar {}
// SAFETY: every access goes through `&self` methods doing single volatile
// reads/writes, with no interior state changed in Rust.
unsafe impl Sync for Bar {}

impl Bar {
    /// Maps region `region` of `device` (a BAR): the sparse-mmap areas if
    /// the kernel restricts them, else all of it.
    pub(crate) fn map(device: &File, region: &RegionInfo) -> Result<Bar, VfioError> {
        let index = region.index;
        let rw = b::VFIO_REGION_INFO_FLAG_READ | b::VFIO_REGION_INFO_FLAG_WRITE;
        if region.size == 0 {
            return Err(VfioError::RegionNotMappable {
                index,
                reason: "the BAR is not implemented (size 0)",
            });
        }
        if !region.mappable() || region.flags & rw != rw {
            return Err(VfioError::RegionNotMappable {
                index,
                reason: "the kernel does not allow mmap",
            });
        }
        let mut bar = Bar {
            index,
            size: region.size,
            areas: Vec::new(),
            failed: std::sync::atomic::AtomicBool::new(false),
        };
        for (offset, len) in region.mmap_areas() {
            if len == 0 {
                continue;
            }
            let in_region = offset
                .checked_add(len)
                .is_some_and(|end| end <= region.size);
            let file_off = region
                .offset
                .checked_add(offset)
                .and_then(|o| libc::off_t::try_from(o).ok());
            let (Some(file_off), Ok(ulen), true) = (file_off, usize::try_from(len), in_region)
            else {
                return Err(VfioError::RegionNotMappable {
                    index,
                    reason: "sparse area outside the region",
                });
            };
            let ptr = mmap(Some(device), ulen, file_off).map_err(|source| VfioError::Mmap {
                index,
                offset,
                len,
                source,
            })?;
            // `bar` unmaps what it holds if a later area fails.
            bar.areas.push(Area {
                offset,
                len: ulen,
                ptr,
            });
        }
        if bar.areas.is_empty() {
            return Err(VfioError::RegionNotMappable {
                index,
                reason: "no mmap-able area",
            });
        }
        Ok(bar)
    }

    /// A "BAR" of `size` bytes backed by anonymous memory, mapped only at
    /// `areas` (offset, len), for tests.
    #[cfg(test)]
    pub(crate) fn anonymous(size: u64, areas: &[(u64, u64)]) -> io::Result<Bar> {
        let mut bar = Bar {
            index: 0,
            size,
            areas: Vec::new(),
            failed: std::sync::atomic::AtomicBool::new(false),
        };
        for &(offset, len) in areas {
            let ulen =
                usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            bar.areas.push(Area {
                offset,
                len: ulen,
                ptr: mmap(None, ulen, 0)?,
            });
        }
        Ok(bar)
    }

    /// The BAR number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The BAR's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The address of the `width`-byte register at `offset`, checked: in
    /// bounds, naturally aligned, inside one mapped area.
    fn reg(&self, offset: u64, width: u8) -> Result<*mut u8, VfioError> {
        let fault = |fault| VfioError::BarAccess {
            index: self.index,
            offset,
            width,
            fault,
        };
        let w = u64::from(width);
        if offset.checked_add(w).is_none_or(|end| end > self.size) {
            return Err(fault(BarFault::OutOfBounds { size: self.size }));
        }
        if offset % w != 0 {
            return Err(fault(BarFault::Misaligned));
        }
        let area = self
            .areas
            .iter()
            .find(|a| offset >= a.offset && offset + w <= a.offset + a.len as u64)
            .ok_or(fault(BarFault::NotMapped))?;
        // `offset - a.offset + width <= a.len`, which is a usize.
        let within = (offset - area.offset) as usize;
        // SAFETY: `within + width <= area.len`, so the result stays inside
        // the area's mapping (invariant).
        let ptr = unsafe { area.ptr.as_ptr().add(within) };
        if ptr as usize % usize::from(width) != 0 {
            return Err(fault(BarFault::Misaligned));
        }
        Ok(ptr)
    }

    /// Whether a `width`-byte access at `offset` is possible: in bounds,
    /// naturally aligned, inside one mapped area.
    pub fn reaches(&self, offset: u64, width: u8) -> bool {
        matches!(width, 4 | 8) && self.reg(offset, width).is_ok()
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read32(&self, offset: u64) -> Result<u32, VfioError> {
        let ptr = self.reg(offset, 4)?.cast::<u32>();
        // SAFETY: `reg` checked that the 4 bytes are inside a live mapping
        // (invariant) and aligned; MMIO is read volatile, never referenced.
        Ok(unsafe { ptr::read_volatile(ptr) })
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write32(&self, offset: u64, value: u32) -> Result<(), VfioError> {
        let ptr = self.reg(offset, 4)?.cast::<u32>();
        // SAFETY: as in `read32`; the mapping is writable (invariant).
        unsafe { ptr::write_volatile(ptr, value) };
        Ok(())
    }

    /// Reads the 64-bit register at `offset` as two 32-bit reads, low half
    /// first (NVMe allows 64-bit registers to be read so, and not every
    /// platform does 64-bit MMIO).
    pub fn read64(&self, offset: u64) -> Result<u64, VfioError> {
        self.reg(offset, 8)?;
        let lo = self.read32(offset)?;
        let hi = self.read32(offset + 4)?;
        Ok(u64::from(hi) << 32 | u64::from(lo))
    }

    /// Writes the 64-bit register at `offset` as two 32-bit writes, low
    /// half first.
    pub fn write64(&self, offset: u64, value: u64) -> Result<(), VfioError> {
        self.reg(offset, 8)?;
        self.write32(offset, value as u32)?;
        self.write32(offset + 4, (value >> 32) as u32)
    }
}

impl Bar {
    /// The host address of `len` bytes at `offset`, when they lie inside one
    /// mapped area: for device memory (a controller memory buffer) that the
    /// driver registers with its DMA space. Only ever used as an address or
    /// through volatile accesses.
    pub(crate) fn area_ptr(&self, offset: u64, len: u64) -> Option<NonNull<u8>> {
        let end = offset.checked_add(len)?;
        let area = self
            .areas
            .iter()
            .find(|a| offset >= a.offset && end <= a.offset + a.len as u64)?;
        // SAFETY: `offset - area.offset + len <= area.len`: inside the
        // area's live mapping (invariant).
        Some(unsafe { area.ptr.add((offset - area.offset) as usize) })
    }
}

impl Bar {
    /// Lets go of the device's memory while the `Bar` may still be in use
    /// (by other threads too): each area is replaced, in place and at
    /// once, by anonymous memory filled with ones. Reads then return all
    /// ones (what a device that left the bus returns), writes go nowhere,
    /// and the mapping no longer keeps the device open. For a device the
    /// kernel asks back (see
    /// [`Device::request_notifier`](super::Device::request_notifier)).
    pub fn release(&self) -> Result<(), VfioError> {
        for area in &self.areas {
            let fresh = mmap(None, area.len, 0).map_err(VfioError::Release)?;
            // SAFETY: `fresh` is a new private mapping of `area.len`
            // bytes, not yet visible to anyone else.
            unsafe { ptr::write_bytes(fresh.as_ptr(), 0xff, area.len) };
            // SAFETY: moves the new mapping onto the area's addresses,
            // which the kernel unmaps and replaces in one step (under the
            // address space's lock: a concurrent access sees the old or
            // the new memory, never a hole). The area stays a live
            // read-write mapping of `len` bytes owned by this `Bar`
            // (invariant); no Rust reference points into it.
            let moved = unsafe {
                libc::mremap(
                    fresh.as_ptr().cast(),
                    area.len,
                    area.len,
                    libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                    area.ptr.as_ptr().cast::<libc::c_void>(),
                )
            };
            if moved == libc::MAP_FAILED {
                let e = io::Error::last_os_error();
                // SAFETY: `fresh` is still ours and unused.
                unsafe { libc::munmap(fresh.as_ptr().cast(), area.len) };
                return Err(VfioError::Release(e));
            }
        }
        Ok(())
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        for area in &self.areas {
            // SAFETY: the area is a mapping this `Bar` created and nothing
            // else unmaps (invariant); no reference into it exists.
            unsafe { libc::munmap(area.ptr.as_ptr().cast(), area.len) };
        }
    }
}

/// `mmap(len)` of `file` at `offset` (shared, read-write), or of anonymous
/// memory if `file` is `None`.
fn mmap(file: Option<&File>, len: usize, offset: libc::off_t) -> io::Result<NonNull<u8>> {
    let (fd, flags) = match file {
        Some(f) => (f.as_raw_fd(), libc::MAP_SHARED),
        None => (-1, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
    };
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a new mapping at an address of the kernel's choosing aliases
    // no existing Rust memory; the fd is open (borrowed) for the call.
    let ptr = unsafe { libc::mmap(ptr::null_mut(), len, prot, flags, fd, offset) };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(r: Result<impl std::fmt::Debug, VfioError>) -> BarFault {
        match r {
            Err(VfioError::BarAccess { fault, .. }) => fault,
            other => panic!("expected a BAR access error, got {other:?}"),
        }
    }

    #[test]
    fn accesses_are_bounds_checked_and_volatile() {
        let bar = Bar::anonymous(0x2000, &[(0, 0x2000)]).unwrap();
        bar.write32(0x10, 0xdead_beef).unwrap();
        assert_eq!(bar.read32(0x10).unwrap(), 0xdead_beef);
        bar.write64(0x1ff8, 0x0123_4567_89ab_cdef).unwrap();
        assert_eq!(bar.read64(0x1ff8).unwrap(), 0x0123_4567_89ab_cdef);
        assert_eq!(
            bar.read32(0x1ff8).unwrap(),
            0x89ab_cdef,
            "low half first, at the lower address"
        );
        assert_eq!(
            fault(bar.read32(0x2000)),
            BarFault::OutOfBounds { size: 0x2000 }
        );
        assert_eq!(
            fault(bar.read64(0x1ffc)),
            BarFault::OutOfBounds { size: 0x2000 }
        );
        assert_eq!(
            fault(bar.read32(u64::MAX - 1)),
            BarFault::OutOfBounds { size: 0x2000 }
        );
        assert_eq!(fault(bar.write32(2, 0)), BarFault::Misaligned);
        assert_eq!(fault(bar.read64(4)), BarFault::Misaligned);
        let msg = bar.read32(0x2000).unwrap_err().to_string();
        assert!(msg.contains("BAR 0") && msg.contains("0x2000"), "{msg}");
    }

    #[test]
    fn a_released_bar_reads_all_ones_and_stays_mapped() {
        let bar = Bar::anonymous(0x4000, &[(0, 0x1000), (0x3000, 0x1000)]).unwrap();
        bar.write32(0x10, 7).unwrap();
        bar.write32(0x3004, 9).unwrap();
        let before: Vec<_> = bar.areas.iter().map(|a| a.ptr).collect();
        bar.release().unwrap();
        assert_eq!(bar.read32(0x10).unwrap(), u32::MAX);
        assert_eq!(bar.read32(0x3004).unwrap(), u32::MAX);
        assert_eq!(bar.read64(0x3ff8).unwrap(), u64::MAX);
        // Writes go to the replacement memory, at the same addresses.
        bar.write32(0x10, 1).unwrap();
        assert_eq!(bar.read32(0x10).unwrap(), 1);
        let after: Vec<_> = bar.areas.iter().map(|a| a.ptr).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn sparse_areas_refuse_the_holes() {
        let bar = Bar::anonymous(0x4000, &[(0, 0x1000), (0x3000, 0x1000)]).unwrap();
        bar.write32(0xffc, 1).unwrap();
        bar.write32(0x3000, 2).unwrap();
        assert_eq!(
            (bar.read32(0xffc).unwrap(), bar.read32(0x3000).unwrap()),
            (1, 2)
        );
        assert_eq!(fault(bar.read32(0x1000)), BarFault::NotMapped);
        assert_eq!(fault(bar.read32(0x2ffc)), BarFault::NotMapped);
        assert!(bar.reaches(0xffc, 4) && bar.reaches(0x3000, 8));
        assert!(!bar.reaches(0x1000, 4) && !bar.reaches(0xffc, 8) && !bar.reaches(0x4000, 4));
        assert!(!bar.reaches(0x3001, 4), "misaligned");
        // An 8-byte access straddling the end of an area is refused too.
        let bar = Bar::anonymous(0x4000, &[(0, 0x1004)]).unwrap();
        assert_eq!(fault(bar.read64(0x1000)), BarFault::NotMapped);
    }

    #[test]
    fn regions_that_cannot_be_mapped() {
        let f = File::open("/dev/null").unwrap();
        let region = |flags, size, sparse| RegionInfo {
            index: 2,
            flags,
            size,
            offset: 0,
            sparse,
        };
        let rw = b::VFIO_REGION_INFO_FLAG_READ | b::VFIO_REGION_INFO_FLAG_WRITE;
        let mm = rw | b::VFIO_REGION_INFO_FLAG_MMAP;
        for (r, why) in [
            (region(mm, 0, None), "size 0"),
            (region(rw, 0x1000, None), "does not allow mmap"),
            (
                region(mm, 0x1000, Some(vec![(0x1000, 0x1000)])),
                "outside the region",
            ),
            (region(mm, 0x1000, Some(vec![])), "no mmap-able area"),
        ] {
            match Bar::map(&f, &r) {
                Err(VfioError::RegionNotMappable { index: 2, reason }) => {
                    assert!(reason.contains(why), "{reason}")
                }
                other => panic!("{why}: {other:?}"),
            }
        }
    }
}
