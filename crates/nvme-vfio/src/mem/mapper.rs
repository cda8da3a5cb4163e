//! blk-dma's [`Mapper`] over a [`DmaSpace`]: what the I/O path maps requests
//! with.
//!
//! - Slabs, registered memory and device memory are translated from a
//!   per-thread copy of the region table, refreshed only when the table's
//!   generation changes: no lock and no syscall on the registered path. The
//!   region found last is tried first (consecutive requests usually come
//!   from the same slab or registered buffer).
//! - Unregistered memory behind the IOMMU is linked into one IOVA range per
//!   request with one VFIO_IOMMU_MAP_DMA per segment and undone with a
//!   single VFIO_IOMMU_UNMAP_DMA for the whole range.
//! - To-device transfers are mapped read-only, so the device cannot write
//!   into a buffer it should only read.

use core::cell::{Cell, RefCell};
use std::sync::Arc;

use blk_dma::{Direction, DmaRange, Errno, HostAddr, HostSeg, Iova, MapError, Mapper, Region};

use super::dma_map::Access;
use super::space::DmaSpace;
use crate::vfio::VfioError;

/// A per-thread handle for mapping requests in a [`DmaSpace`]: `Send`, not
/// `Sync`, one per queue pair.
#[derive(Debug)]
pub struct VfioMapper {
    space: Arc<DmaSpace>,
    /// Region table copy and its generation.
    regions: RefCell<(u64, Vec<Region>)>,
    /// The region found last and the table generation it was found in
    /// ([`Region::EMPTY`] before the first hit: it contains nothing).
    last: Cell<(u64, Region)>,
}

impl VfioMapper {
    /// A mapper for `space`.
    ///
    /// # Safety
    ///
    /// The mapper's [`Mapper`] methods map host memory for the device, and
    /// unmap it and free device addresses, with no check of their own: they
    /// are for blk-dma's [`DmaIter`](blk_dma::DmaIter) and
    /// [`DmaState`](blk_dma::DmaState) (and this crate's
    /// [`dptr`](crate::nvme::dptr) functions) to call, and a
    /// [`HostSeg`] is a plain number. The caller uses the mapper only so:
    ///
    /// - it never calls [`alloc_iova`](Mapper::alloc_iova),
    ///   [`free_iova`](Mapper::free_iova), [`link`](Mapper::link),
    ///   [`unlink`](Mapper::unlink), [`map_segment`](Mapper::map_segment)
    ///   or [`unmap_segment`](Mapper::unmap_segment) itself (lookups are
    ///   fine): they would map any memory, or unmap and free device
    ///   addresses that are another's, such as a slab's;
    /// - it unmaps with the mapper ([`DmaState::unmap`](blk_dma::DmaState::unmap))
    ///   only states the mapper mapped, each once;
    /// - the memory of every request it maps stays allocated, and lent to
    ///   the device as the transfer's direction allows, until the request's
    ///   state is unmapped.
    pub unsafe fn new(space: Arc<DmaSpace>) -> Self {
        let regions = space.regions();
        Self {
            space,
            regions: RefCell::new(regions),
            last: Cell::new((0, Region::EMPTY)),
        }
    }

    /// The space this mapper maps in.
    pub fn space(&self) -> &Arc<DmaSpace> {
        &self.space
    }
}

impl VfioMapper {
    /// The region containing `addr` in the table of generation `gen`
    /// (refreshing the copy if it is older), remembered for the next lookup.
    fn lookup_table(&self, addr: HostAddr, gen: u64) -> Option<Region> {
        let mut table = self.regions.borrow_mut();
        if table.0 != gen {
            *table = self.space.regions();
        }
        // Sorted by host address: the last region starting at or below addr.
        let i = table.1.partition_point(|r| r.host <= addr);
        let r = *table.1.get(i.checked_sub(1)?)?;
        if !r.contains(addr) {
            return None;
        }
        // The copy's own generation: `gen` may be older if the table
        // changed while it was being copied.
        self.last.set((table.0, r));
        Some(r)
    }
}

fn access(dir: Direction) -> Access {
    match dir {
        Direction::ToDevice => Access::ReadOnly,
        Direction::FromDevice => Access::ReadWrite,
    }
}

/// The errno behind a VFIO error, for blk-dma's error values.
fn errno_of(e: &VfioError) -> i32 {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error().unwrap_or(libc::EIO);
        }
        cur = err.source();
    }
    libc::EIO
}

impl Mapper for VfioMapper {
    fn iommu_granule(&self) -> Option<u64> {
        Some(self.space.granule())
    }

    #[inline]
    fn lookup(&self, addr: HostAddr) -> Option<Region> {
        let gen = self.space.generation();
        let (g, r) = self.last.get();
        // Still in the table: no registration came or went since.
        if g == gen && r.contains(addr) {
            Some(r)
        } else {
            self.lookup_table(addr, gen)
        }
    }

    #[inline]
    fn lookup_cached(&self, addr: HostAddr) -> Region {
        let (g, r) = self.last.get();
        if g == self.space.generation() && r.contains(addr) {
            r
        } else {
            Region::EMPTY
        }
    }

    fn alloc_iova(&self, len: u64) -> Result<Iova, MapError> {
        self.space
            .alloc_iova(len)
            .map_err(|_| MapError::IovaExhausted { len })
    }

    fn free_iova(&self, iova: Iova, len: u64) {
        self.space.free_iova(iova, len);
    }

    fn link(&self, iova: Iova, seg: HostSeg, dir: Direction) -> Result<(), MapError> {
        let g = self.space.granule();
        let off = seg.addr.offset_in(g);
        let host = HostAddr::new(seg.addr.raw() - off as usize);
        let span = (off + seg.len).next_multiple_of(g);
        // SAFETY: blk-dma links a request's segment into IOVA space this
        // mapper allocated for it, and the request's memory stays lent to
        // the device until its state is unlinked (the contract of `new`).
        // The rest of the first and last IOMMU page only widens the mapping:
        // the device is given addresses of the segment only, and the kernel
        // pins the pages.
        let mapped = unsafe {
            self.space
                .iommu()
                .map_dma(iova.align_down(g), host, span, access(dir))
        };
        mapped.map_err(|e| MapError::MapFailed {
            host: seg.addr,
            len: seg.len,
            source: Errno(errno_of(&e)),
        })
    }

    fn sync(&self, _iova: Iova, _len: u64) -> Result<(), MapError> {
        // VFIO_IOMMU_MAP_DMA returns with the mapping in place.
        Ok(())
    }

    fn unlink(&self, iova: Iova, len: u64, _dir: Direction) {
        let g = self.space.granule();
        let start = iova.align_down(g);
        let span = (iova.offset_in(g) + len).next_multiple_of(g);
        // SAFETY: blk-dma unlinks only what this mapper linked for a request
        // whose state it unmaps (the contract of `new`).
        let unmapped = unsafe { self.space.iommu().unmap_dma(start, span) };
        if let Err(e) = unmapped {
            log::error!("unmapping IOVA {start} (+{span:#x}): {e}");
        }
    }

    fn map_segment(&self, seg: HostSeg, dir: Direction) -> Result<DmaRange, MapError> {
        let g = self.space.granule();
        let off = seg.addr.offset_in(g);
        let span = (off + seg.len).next_multiple_of(g);
        let base = self.alloc_iova(span)?;
        let iova = base.wrapping_add(off);
        if let Err(e) = self.link(iova, seg, dir) {
            self.free_iova(base, span);
            return Err(e);
        }
        Ok(DmaRange::new(iova, seg.len))
    }

    fn unmap_segment(&self, range: DmaRange, dir: Direction) {
        let g = self.space.granule();
        self.unlink(range.addr, range.len, dir);
        let span = (range.addr.offset_in(g) + range.len).next_multiple_of(g);
        self.free_iova(range.addr.align_down(g), span);
    }
}
