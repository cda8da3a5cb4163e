//! The backend interface: what a DMA backend (VFIO, a software IOMMU, a fake)
//! must provide for blk-dma to map requests.

use crate::addr::{Direction, DmaRange, HostAddr, HostSeg, Iova};
use crate::error::MapError;

/// What kind of memory a [`Region`] describes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RegionKind {
    /// Host memory mapped for the device in advance (hugepage slabs,
    /// registered user buffers): translated without a syscall and never
    /// unmapped per request.
    Registered,
    /// Device memory (a controller memory buffer, a peer device's BAR): the
    /// device reaches it by bus address; it is never mapped or unmapped (the
    /// kernel's `PCI_P2PDMA_MAP_BUS_ADDR` case).
    Device,
}

/// A range of host virtual addresses with a fixed device-visible translation.
///
/// Neither range wraps past the top of its address space: `host + len` and
/// `addr + len` do not overflow (submission paths rely on it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Region {
    /// First host address of the region.
    pub host: HostAddr,
    /// Length in bytes.
    pub len: u64,
    /// Device address of `host`.
    pub addr: Iova,
    /// Registered host memory or device memory.
    pub kind: RegionKind,
}

impl Region {
    /// A region that contains no address: what a lookup cache holds before
    /// its first hit, so that checking it needs no separate "empty" test.
    pub const EMPTY: Region = Region {
        host: HostAddr::new(0),
        len: 0,
        addr: Iova::new(0),
        kind: RegionKind::Registered,
    };

    /// Whether `addr` lies inside the region.
    #[inline]
    pub fn contains(&self, addr: HostAddr) -> bool {
        addr.raw_u64().wrapping_sub(self.host.raw_u64()) < self.len
    }

    /// The device range of `seg` when it lies wholly inside the region (and
    /// is not empty).
    #[inline]
    pub fn translate_whole(&self, seg: HostSeg) -> Option<DmaRange> {
        let off = seg.addr.raw_u64().wrapping_sub(self.host.raw_u64());
        if off < self.len && seg.len <= self.len - off && seg.len != 0 {
            Some(DmaRange::new(self.addr.wrapping_add(off), seg.len))
        } else {
            None
        }
    }

    /// Translates the longest prefix of `len` bytes at `addr` that lies in the
    /// region. The caller has checked [`contains`](Self::contains).
    #[inline]
    pub fn translate(&self, addr: HostAddr, len: u64) -> DmaRange {
        let off = addr.raw_u64().wrapping_sub(self.host.raw_u64());
        let avail = self.len - off;
        DmaRange::new(self.addr.wrapping_add(off), len.min(avail))
    }
}

/// A DMA backend: the equivalent of the kernel's DMA API for one device.
///
/// Methods take `&self`: a backend is shared by every request of a device
/// and keeps whatever bookkeeping it needs behind interior mutability (the
/// kernel's DMA API is likewise called on a shared `struct device`).
///
/// # Contract
///
/// - Addresses returned for host memory preserve the offset within the IOMMU
///   granule and within the host page (`iova % 4096 == host % 4096`), as
///   IOMMUs and physical pages do; PRP building relies on it.
/// - [`link`](Self::link) and [`map_segment`](Self::map_segment) for
///   [`Direction::ToDevice`] should map read-only for the device where the
///   hardware allows it.
/// - A backend must keep host memory pinned from `link`/`map_segment` until
///   the matching `unlink`/`unmap_segment`.
pub trait Mapper {
    /// The IOMMU granule in bytes (a power of two), or `None` when device
    /// addresses are not translated by an IOMMU that can link arbitrary host
    /// pages at a chosen IOVA. Coalescing is only possible with a granule.
    fn iommu_granule(&self) -> Option<u64>;

    /// The largest range the consumer accepts in one piece (an NVMe SGL data
    /// block holds at most `u32::MAX` bytes). Adjacent ranges merge up to it
    /// and longer ones are split.
    fn max_segment_size(&self) -> u64 {
        u64::from(u32::MAX)
    }

    /// The registered or device region containing `addr`, if any. Called on
    /// the hot path; should be a short lookup without a syscall.
    fn lookup(&self, addr: HostAddr) -> Option<Region>;

    /// The region containing `addr` when the backend can tell without a
    /// search (it is the region found last), or else [`Region::EMPTY`],
    /// which contains nothing: then [`lookup`](Self::lookup) decides. For
    /// the head of a submission path that must stay free of calls (a plain
    /// region, not an `Option`, so that checking it is one range test); a
    /// backend without a cache answers with a full lookup.
    #[inline]
    fn lookup_cached(&self, addr: HostAddr) -> Region {
        self.lookup(addr).unwrap_or(Region::EMPTY)
    }

    /// Allocates `len` bytes of IOVA space (a multiple of the granule), aligned
    /// to the granule. The space holds no mapping until linked.
    fn alloc_iova(&self, len: u64) -> Result<Iova, MapError>;

    /// Frees IOVA space from [`alloc_iova`](Self::alloc_iova). Every link in it
    /// has been removed with [`unlink`](Self::unlink) before.
    fn free_iova(&self, iova: Iova, len: u64);

    /// Maps the host memory of `seg` at `iova`, covering whole granules: the
    /// granules of `[iova, iova + seg.len)` map the granules of
    /// `[seg.addr, seg.addr + seg.len)`. `iova` and `seg.addr` have the same
    /// offset within the granule. On error nothing of `seg` stays mapped.
    fn link(&self, iova: Iova, seg: HostSeg, dir: Direction) -> Result<(), MapError>;

    /// Makes the links of `[iova, iova + len)` visible to the device (an
    /// IOTLB flush where the hardware needs one).
    fn sync(&self, iova: Iova, len: u64) -> Result<(), MapError>;

    /// Removes every link in the granules covering `[iova, iova + len)`.
    fn unlink(&self, iova: Iova, len: u64, dir: Direction);

    /// Maps a prefix of `seg` on its own and returns its device range; the
    /// prefix may be shorter than `seg` (for example up to a physical
    /// discontinuity without an IOMMU) but not empty. Undone by
    /// [`unmap_segment`](Self::unmap_segment) with the returned range.
    fn map_segment(&self, seg: HostSeg, dir: Direction) -> Result<DmaRange, MapError>;

    /// Undoes one [`map_segment`](Self::map_segment).
    fn unmap_segment(&self, range: DmaRange, dir: Direction);
}

impl<M: Mapper + ?Sized> Mapper for &M {
    #[inline]
    fn iommu_granule(&self) -> Option<u64> {
        (**self).iommu_granule()
    }
    #[inline]
    fn max_segment_size(&self) -> u64 {
        (**self).max_segment_size()
    }
    #[inline]
    fn lookup(&self, addr: HostAddr) -> Option<Region> {
        (**self).lookup(addr)
    }
    #[inline]
    fn lookup_cached(&self, addr: HostAddr) -> Region {
        (**self).lookup_cached(addr)
    }
    fn alloc_iova(&self, len: u64) -> Result<Iova, MapError> {
        (**self).alloc_iova(len)
    }
    fn free_iova(&self, iova: Iova, len: u64) {
        (**self).free_iova(iova, len)
    }
    fn link(&self, iova: Iova, seg: HostSeg, dir: Direction) -> Result<(), MapError> {
        (**self).link(iova, seg, dir)
    }
    fn sync(&self, iova: Iova, len: u64) -> Result<(), MapError> {
        (**self).sync(iova, len)
    }
    fn unlink(&self, iova: Iova, len: u64, dir: Direction) {
        (**self).unlink(iova, len, dir)
    }
    fn map_segment(&self, seg: HostSeg, dir: Direction) -> Result<DmaRange, MapError> {
        (**self).map_segment(seg, dir)
    }
    fn unmap_segment(&self, range: DmaRange, dir: Direction) {
        (**self).unmap_segment(range, dir)
    }
}
