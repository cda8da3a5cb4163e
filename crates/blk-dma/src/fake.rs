//! A recording, failure-injecting [`Mapper`] for tests and benchmarks.
//!
//! It plays an IOMMU (or, without one, a physically addressed machine) in
//! plain bookkeeping: every IOVA allocation and every link is recorded, so
//! tests can check that nothing is left mapped, resolve device addresses
//! back to host memory the way a device would, and make any call fail on
//! demand.
//!
//! As a test instrument it panics on violations of the [`Mapper`] contract
//! by its caller (linking outside an allocation, unlinking what was never
//! linked): those are bugs in the code under test.

use core::cell::{Cell, RefCell};

use crate::addr::{Direction, DmaRange, HostAddr, HostSeg, Iova};
use crate::error::{Errno, MapError};
use crate::mapper::{Mapper, Region, RegionKind};

/// First IOVA the fake IOMMU hands out.
const IOVA_BASE: u64 = 0x10_0000_0000;
/// Without an IOMMU, "physical" addresses are host addresses plus this.
const PHYS_OFFSET: u64 = 1 << 52;
/// Room reserved up front so that recording does not allocate on hot paths.
const RESERVE: usize = 4096;

/// One live mapping of host memory at a device address.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Link {
    /// Device address of the first byte.
    pub iova: Iova,
    /// Host address of the first byte.
    pub host: HostAddr,
    /// Length in bytes.
    pub len: u64,
    /// Direction: `ToDevice` links are read-only for the device.
    pub dir: Direction,
}

/// Calls made so far, for tests and benchmarks.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct Calls {
    /// `lookup` calls (full lookups: answers of `lookup_cached` are not
    /// counted, hit or miss).
    pub lookup: u64,
    /// `alloc_iova` calls.
    pub alloc: u64,
    /// `free_iova` calls.
    pub free: u64,
    /// `link` calls.
    pub link: u64,
    /// `unlink` calls.
    pub unlink: u64,
    /// `sync` calls.
    pub sync: u64,
    /// `map_segment` calls.
    pub map: u64,
    /// `unmap_segment` calls.
    pub unmap: u64,
}

impl Calls {
    /// Calls that would be a syscall on a VFIO backend.
    pub fn syscalls(&self) -> u64 {
        self.link + self.unlink + self.map + self.unmap
    }
}

/// Which call fails next.
#[derive(Clone, Copy, Default, Debug)]
struct Faults {
    /// Fail the link call with this index (counted from when it was set).
    link_at: Option<u64>,
    links_seen: u64,
    map_at: Option<u64>,
    maps_seen: u64,
    alloc: bool,
    sync: bool,
}

#[derive(Debug)]
struct Inner {
    granule: Option<u64>,
    max_seg: u64,
    regions: Vec<Region>,
    links: Vec<Link>,
    iovas: Vec<(Iova, u64)>,
    next_iova: u64,
    iova_limit: u64,
    faults: Faults,
    strict: bool,
}

/// A fake DMA backend. See the [module docs](self).
#[derive(Debug)]
pub struct FakeMapper {
    inner: RefCell<Inner>,
    calls: Cell<Calls>,
    /// The region [`Mapper::lookup`] found last: consecutive requests
    /// usually hit the same one. Reset to [`Region::EMPTY`] (which contains
    /// nothing) whenever the region table changes.
    last: Cell<Region>,
}

impl FakeMapper {
    fn build(granule: Option<u64>) -> Self {
        if let Some(g) = granule {
            assert!(g.is_power_of_two(), "granule must be a power of two");
        }
        Self {
            inner: RefCell::new(Inner {
                granule,
                max_seg: u64::from(u32::MAX),
                regions: Vec::with_capacity(64),
                links: Vec::with_capacity(RESERVE),
                iovas: Vec::with_capacity(RESERVE),
                next_iova: IOVA_BASE,
                iova_limit: 1 << 48,
                faults: Faults::default(),
                strict: true,
            }),
            calls: Cell::new(Calls::default()),
            last: Cell::new(Region::EMPTY),
        }
    }

    /// A backend behind an IOMMU with the given granule.
    pub fn with_iommu(granule: u64) -> Self {
        Self::build(Some(granule))
    }

    /// A backend without an IOMMU: segments are mapped one by one at
    /// "physical" addresses (host address plus a fixed offset).
    pub fn without_iommu() -> Self {
        Self::build(None)
    }

    /// Sets the maximum segment size reported to blk-dma.
    pub fn set_max_segment_size(&self, max: u64) {
        self.inner.borrow_mut().max_seg = max;
    }

    /// Turns the contract checks on links (inside an allocation, no overlap)
    /// off or on. They cost a scan of every live link per call; benchmarks
    /// turn them off to measure the code under test rather than the fake.
    pub fn set_strict(&self, on: bool) {
        self.inner.borrow_mut().strict = on;
    }

    /// Limits IOVA space to `bytes` from the first IOVA handed out.
    pub fn set_iova_space(&self, bytes: u64) {
        self.inner.borrow_mut().iova_limit = IOVA_BASE + bytes;
    }

    /// Registers `len` bytes of host memory at `host`, as a hugepage slab or a
    /// registered user buffer, at a fresh granule-aligned IOVA (keeping the
    /// 4 KiB page offset). Returns its region.
    pub fn register(&self, host: HostAddr, len: u64) -> Region {
        let mut inner = self.inner.borrow_mut();
        let off = host.offset_in(4096);
        let span = (off + len).next_multiple_of(1 << 21);
        let base = inner.next_iova;
        inner.next_iova += span;
        let r = Region {
            host,
            len,
            addr: Iova::new(base + off),
            kind: RegionKind::Registered,
        };
        inner.regions.push(r);
        self.last.set(Region::EMPTY);
        r
    }

    /// Declares `len` bytes at `host` to be device memory the device reaches
    /// at bus address `bus`.
    pub fn add_device_memory(&self, host: HostAddr, len: u64, bus: Iova) -> Region {
        let r = Region {
            host,
            len,
            addr: bus,
            kind: RegionKind::Device,
        };
        self.inner.borrow_mut().regions.push(r);
        self.last.set(Region::EMPTY);
        r
    }

    /// Removes every region (registered or device).
    pub fn clear_regions(&self) {
        self.inner.borrow_mut().regions.clear();
        self.last.set(Region::EMPTY);
    }

    /// The region containing `addr`, found by scanning the region table
    /// (counted as a lookup), without the last-region cache of
    /// [`Mapper::lookup`]: a backend with no memory of the previous lookup,
    /// as the kernel's `dma_map_sg` sees one.
    #[inline]
    pub fn lookup_uncached(&self, addr: HostAddr) -> Option<Region> {
        self.count(|c| c.lookup += 1);
        self.scan(addr)
    }

    #[inline]
    fn scan(&self, addr: HostAddr) -> Option<Region> {
        self.inner
            .borrow()
            .regions
            .iter()
            .copied()
            .find(|r| r.contains(addr))
    }

    /// Makes the `n`-th `link` call from now fail (0 = the next one).
    pub fn fail_link_at(&self, n: u64) {
        let mut inner = self.inner.borrow_mut();
        inner.faults.link_at = Some(n);
        inner.faults.links_seen = 0;
    }

    /// Makes the `n`-th `map_segment` call from now fail (0 = the next one).
    pub fn fail_map_at(&self, n: u64) {
        let mut inner = self.inner.borrow_mut();
        inner.faults.map_at = Some(n);
        inner.faults.maps_seen = 0;
    }

    /// Makes every `alloc_iova` fail while `on`.
    pub fn fail_alloc(&self, on: bool) {
        self.inner.borrow_mut().faults.alloc = on;
    }

    /// Makes every `sync` fail while `on`.
    pub fn fail_sync(&self, on: bool) {
        self.inner.borrow_mut().faults.sync = on;
    }

    /// Clears every pending fault.
    pub fn clear_faults(&self) {
        self.inner.borrow_mut().faults = Faults::default();
    }

    /// Live links (including segments mapped one by one).
    pub fn live_links(&self) -> usize {
        self.inner.borrow().links.len()
    }

    /// Live IOVA allocations.
    pub fn live_iovas(&self) -> usize {
        self.inner.borrow().iovas.len()
    }

    /// A copy of the live links.
    pub fn links(&self) -> Vec<Link> {
        self.inner.borrow().links.clone()
    }

    /// Calls made so far.
    pub fn calls(&self) -> Calls {
        self.calls.get()
    }

    #[inline]
    fn count(&self, f: impl FnOnce(&mut Calls)) {
        let mut c = self.calls.get();
        f(&mut c);
        self.calls.set(c);
    }

    /// Resolves a device access of up to `len` bytes at `iova`, as the IOMMU
    /// would: returns the host address and how many bytes from there are
    /// contiguous in the same mapping, or `None` if `iova` is not mapped or
    /// the access is a write to a read-only mapping.
    pub fn resolve(&self, iova: Iova, len: u64, write: bool) -> Option<(HostAddr, u64)> {
        let inner = self.inner.borrow();
        for r in &inner.regions {
            let off = iova.raw().wrapping_sub(r.addr.raw());
            if off < r.len {
                let host = HostAddr::new(r.host.raw() + off as usize);
                return Some((host, len.min(r.len - off)));
            }
        }
        for l in &inner.links {
            let off = iova.raw().wrapping_sub(l.iova.raw());
            if off < l.len {
                if write && l.dir == Direction::ToDevice {
                    return None;
                }
                let host = HostAddr::new(l.host.raw() + off as usize);
                return Some((host, len.min(l.len - off)));
            }
        }
        None
    }

    fn check_alloc(inner: &Inner, start: u64, end: u64) {
        if !inner.strict {
            return;
        }
        let inside = inner
            .iovas
            .iter()
            .any(|&(a, l)| a.raw() <= start && end <= a.raw() + l);
        assert!(
            inside,
            "link of [{start:#x}, {end:#x}) outside any IOVA allocation"
        );
        let overlaps = inner
            .links
            .iter()
            .any(|l| l.iova.raw() < end && start < l.iova.raw() + l.len);
        assert!(!overlaps, "link of [{start:#x}, {end:#x}) overlaps a link");
    }

    fn do_alloc(inner: &mut Inner, len: u64) -> Result<Iova, MapError> {
        if inner.faults.alloc {
            return Err(MapError::IovaExhausted { len });
        }
        if inner.iovas.is_empty() {
            // Deterministic addresses for benchmarks and tests.
            inner.next_iova = inner.next_iova.max(Self::first_free(inner));
        }
        let g = inner.granule.unwrap_or(4096);
        let base = inner.next_iova.next_multiple_of(g);
        let end = base
            .checked_add(len)
            .filter(|&e| e <= inner.iova_limit)
            .ok_or(MapError::IovaExhausted { len })?;
        inner.next_iova = end;
        inner.iovas.push((Iova::new(base), len));
        Ok(Iova::new(base))
    }

    /// The first IOVA above every region.
    fn first_free(inner: &Inner) -> u64 {
        inner
            .regions
            .iter()
            .filter(|r| r.kind == RegionKind::Registered)
            .map(|r| (r.addr.raw() + r.len).next_multiple_of(1 << 21))
            .fold(IOVA_BASE, u64::max)
    }

    fn do_free(inner: &mut Inner, iova: Iova, len: u64) {
        let pos = inner
            .iovas
            .iter()
            .position(|&e| e == (iova, len))
            .unwrap_or_else(|| panic!("free of unknown IOVA range {iova} len {len:#x}"));
        inner.iovas.swap_remove(pos);
        if inner.iovas.is_empty() {
            inner.next_iova = Self::first_free(inner);
        }
    }

    fn do_link(
        inner: &mut Inner,
        iova: Iova,
        seg: HostSeg,
        dir: Direction,
    ) -> Result<(), MapError> {
        let g = inner.granule.expect("link without an IOMMU");
        assert_eq!(
            iova.offset_in(g),
            seg.addr.offset_in(g),
            "link: IOVA and host offsets within the granule differ"
        );
        let start = iova.align_down(g).raw();
        let host = seg.addr.raw() - seg.addr.offset_in(g) as usize;
        let len = (seg.addr.offset_in(g) + seg.len).next_multiple_of(g);
        Self::check_alloc(inner, start, start + len);
        inner.links.push(Link {
            iova: Iova::new(start),
            host: HostAddr::new(host),
            len,
            dir,
        });
        Ok(())
    }

    fn do_unlink(inner: &mut Inner, iova: Iova, len: u64) {
        let g = inner.granule.unwrap_or(1);
        let start = iova.align_down(g).raw();
        let end = (iova.raw() + len).next_multiple_of(g);
        let before = inner.links.len();
        inner
            .links
            .retain(|l| !(start <= l.iova.raw() && l.iova.raw() + l.len <= end));
        assert!(
            inner.links.len() < before,
            "unlink of [{start:#x}, {end:#x}) removed nothing"
        );
    }
}

impl FakeMapper {
    #[inline]
    fn lookup_miss(&self, addr: HostAddr) -> Option<Region> {
        let r = self.scan(addr)?;
        self.last.set(r);
        Some(r)
    }
}

fn injected(host: HostAddr, len: u64) -> MapError {
    MapError::MapFailed {
        host,
        len,
        source: Errno(5), // EIO
    }
}

impl Mapper for FakeMapper {
    fn iommu_granule(&self) -> Option<u64> {
        self.inner.borrow().granule
    }

    #[inline]
    fn max_segment_size(&self) -> u64 {
        self.inner.borrow().max_seg
    }

    #[inline]
    fn lookup(&self, addr: HostAddr) -> Option<Region> {
        self.count(|c| c.lookup += 1);
        let r = self.last.get();
        if r.contains(addr) {
            Some(r)
        } else {
            self.lookup_miss(addr)
        }
    }

    /// The last region found, if it contains `addr` (counted as a lookup
    /// only then: on a miss the caller's [`lookup`](Mapper::lookup) counts).
    #[inline]
    fn lookup_cached(&self, addr: HostAddr) -> Region {
        let r = self.last.get();
        if r.contains(addr) {
            r
        } else {
            Region::EMPTY
        }
    }

    fn alloc_iova(&self, len: u64) -> Result<Iova, MapError> {
        self.count(|c| c.alloc += 1);
        let mut inner = self.inner.borrow_mut();
        Self::do_alloc(&mut inner, len)
    }

    fn free_iova(&self, iova: Iova, len: u64) {
        self.count(|c| c.free += 1);
        let mut inner = self.inner.borrow_mut();
        Self::do_free(&mut inner, iova, len);
    }

    fn link(&self, iova: Iova, seg: HostSeg, dir: Direction) -> Result<(), MapError> {
        self.count(|c| c.link += 1);
        let mut inner = self.inner.borrow_mut();
        let f = &mut inner.faults;
        let n = f.links_seen;
        f.links_seen += 1;
        if f.link_at == Some(n) {
            return Err(injected(seg.addr, seg.len));
        }
        Self::do_link(&mut inner, iova, seg, dir)
    }

    fn sync(&self, iova: Iova, len: u64) -> Result<(), MapError> {
        self.count(|c| c.sync += 1);
        let inner = self.inner.borrow_mut();
        if inner.faults.sync {
            return Err(MapError::SyncFailed {
                iova,
                len,
                source: Errno(5),
            });
        }
        Ok(())
    }

    fn unlink(&self, iova: Iova, len: u64, _dir: Direction) {
        self.count(|c| c.unlink += 1);
        let mut inner = self.inner.borrow_mut();
        Self::do_unlink(&mut inner, iova, len);
    }

    fn map_segment(&self, seg: HostSeg, dir: Direction) -> Result<DmaRange, MapError> {
        self.count(|c| c.map += 1);
        let mut inner = self.inner.borrow_mut();
        let f = &mut inner.faults;
        let n = f.maps_seen;
        f.maps_seen += 1;
        if f.map_at == Some(n) {
            return Err(injected(seg.addr, seg.len));
        }
        match inner.granule {
            Some(g) => {
                let off = seg.addr.offset_in(g);
                let span = (off + seg.len).next_multiple_of(g);
                let base = Self::do_alloc(&mut inner, span)?;
                let iova = base.wrapping_add(off);
                Self::do_link(&mut inner, iova, seg, dir)?;
                Ok(DmaRange::new(iova, seg.len))
            }
            None => {
                // Physically contiguous up to the next 4 KiB page only, and
                // pages scattered: "physical" page = host page * 2.
                let page = 4096;
                let len = seg.len.min(page - seg.addr.offset_in(page));
                let host = seg.addr.raw_u64();
                let phys = ((host & !(page - 1)) << 1) + PHYS_OFFSET + (host & (page - 1));
                inner.links.push(Link {
                    iova: Iova::new(phys),
                    host: seg.addr,
                    len,
                    dir,
                });
                Ok(DmaRange::new(Iova::new(phys), len))
            }
        }
    }

    fn unmap_segment(&self, range: DmaRange, _dir: Direction) {
        self.count(|c| c.unmap += 1);
        let mut inner = self.inner.borrow_mut();
        match inner.granule {
            Some(g) => {
                Self::do_unlink(&mut inner, range.addr, range.len);
                let off = range.addr.offset_in(g);
                let span = (off + range.len).next_multiple_of(g);
                Self::do_free(&mut inner, range.addr.align_down(g), span);
            }
            None => {
                let pos = inner
                    .links
                    .iter()
                    .position(|l| l.iova == range.addr && l.len == range.len)
                    .unwrap_or_else(|| panic!("unmap of unknown segment {range:?}"));
                inner.links.swap_remove(pos);
            }
        }
    }
}
