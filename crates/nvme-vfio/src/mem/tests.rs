//! DMA memory against an in-memory IOMMU that checks every map and unmap the
//! way VFIO type1 does.

use std::sync::{Arc, Mutex};

use blk_dma::{Direction, DmaIter, DmaState, HostAddr, HostSeg, Iova, Mapper, Region, RegionKind};

use super::*;
use crate::vfio::VfioError;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Mapping {
    iova: u64,
    host: usize,
    len: u64,
    access: Access,
}

/// A type1-like IOMMU: page-aligned mappings inside the valid ranges, no
/// overlap, unmaps covering whole mappings.
struct FakeIommu {
    info: IommuInfo,
    maps: Mutex<Vec<Mapping>>,
    calls: Mutex<(u32, u32)>,
    fail_map_at: Mutex<Option<u32>>,
}

impl FakeIommu {
    fn new() -> Arc<Self> {
        Self::with_ranges(vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff])
    }
    fn with_ranges(iova_ranges: Vec<core::ops::RangeInclusive<u64>>) -> Arc<Self> {
        Arc::new(Self {
            info: IommuInfo {
                page_sizes: 0x4020_1000,
                iova_ranges,
                dma_mappings_available: Some(65535),
            },
            maps: Mutex::new(Vec::new()),
            calls: Mutex::new((0, 0)),
            fail_map_at: Mutex::new(None),
        })
    }
    fn live(&self) -> Vec<Mapping> {
        self.maps.lock().unwrap().clone()
    }
}

fn einval(op: &'static str, iova: Iova, len: u64) -> VfioError {
    VfioError::Dma {
        op,
        iova: iova.raw(),
        len,
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    }
}

// SAFETY: there is no device: the fake only records mappings and never
// touches host memory.
unsafe impl DmaMap for FakeIommu {
    fn iommu_info(&self) -> &IommuInfo {
        &self.info
    }
    unsafe fn map_dma(
        &self,
        iova: Iova,
        host: HostAddr,
        len: u64,
        access: Access,
    ) -> Result<(), VfioError> {
        let mut calls = self.calls.lock().unwrap();
        calls.0 += 1;
        if *self.fail_map_at.lock().unwrap() == Some(calls.0) {
            return Err(VfioError::Dma {
                op: "map",
                iova: iova.raw(),
                len,
                source: std::io::Error::from_raw_os_error(libc::ENOMEM),
            });
        }
        let (i, h) = (iova.raw(), host.raw());
        assert!(
            i % 4096 == 0 && h % 4096 == 0 && len % 4096 == 0 && len > 0,
            "unaligned map"
        );
        assert!(
            self.info
                .iova_ranges
                .iter()
                .any(|r| *r.start() <= i && i + len - 1 <= *r.end()),
            "map of {i:#x}+{len:#x} outside the valid ranges"
        );
        let mut maps = self.maps.lock().unwrap();
        if maps.iter().any(|m| m.iova < i + len && i < m.iova + m.len) {
            return Err(einval("map", iova, len));
        }
        maps.push(Mapping {
            iova: i,
            host: h,
            len,
            access,
        });
        Ok(())
    }
    unsafe fn unmap_dma(&self, iova: Iova, len: u64) -> Result<u64, VfioError> {
        self.calls.lock().unwrap().1 += 1;
        let (s, e) = (iova.raw(), iova.raw() + len);
        let mut maps = self.maps.lock().unwrap();
        // type1v2: a range that bisects a mapping is an error.
        if maps
            .iter()
            .any(|m| m.iova < e && s < m.iova + m.len && (m.iova < s || m.iova + m.len > e))
        {
            return Err(einval("unmap", iova, len));
        }
        let before: u64 = maps.iter().map(|m| m.len).sum();
        maps.retain(|m| !(s <= m.iova && m.iova + m.len <= e));
        Ok(before - maps.iter().map(|m| m.len).sum::<u64>())
    }
}

fn space(iommu: &Arc<FakeIommu>) -> Arc<DmaSpace> {
    // 4 KiB pages: tests must not depend on the machine's hugepages.
    DmaSpace::new(iommu.clone(), SpaceConfig { hugepages: false })
}

/// A mapper over a space of the fake IOMMU.
fn mapper(s: &Arc<DmaSpace>) -> VfioMapper {
    // SAFETY: the fake IOMMU has no device: nothing ever reaches the memory
    // mapped through it, whatever the tests map or unmap.
    unsafe { VfioMapper::new(s.clone()) }
}

#[test]
fn buffers_come_from_slabs_mapped_once() {
    let iommu = FakeIommu::new();
    let s = space(&iommu);
    let mut a = s.alloc(100).unwrap();
    let b = s.alloc(4096).unwrap();
    let c = s.alloc(128 << 10).unwrap();
    assert_eq!(a.len(), 512);
    assert_eq!(b.iova().raw() % 4096, 0);
    assert_eq!(c.host().raw() % 4096, 0);
    assert_eq!(iommu.live().len(), 1, "one slab, one mapping");
    assert_eq!(s.slab_count().0, 1);
    // A buffer larger than a slab gets a slab of its own.
    let d = s.alloc(3 << 20).unwrap();
    assert_eq!(iommu.live().len(), 2);
    // The mapper translates every buffer to its IOVA without a syscall.
    let m = mapper(&s);
    for buf in [&a, &b, &c, &d] {
        let r = m.lookup(buf.host()).unwrap();
        assert_eq!(r.kind, RegionKind::Registered);
        assert_eq!(r.translate(buf.host(), buf.len() as u64).addr, buf.iova());
    }
    // Owned buffers are plain memory to their owner.
    a.as_mut_slice().fill(0xab);
    assert!(a.as_slice().iter().all(|&x| x == 0xab));
    // Freed space is reused.
    let iova = b.iova();
    drop(b);
    assert_eq!(s.alloc(4096).unwrap().iova(), iova);
    assert!(matches!(s.alloc(0), Err(crate::Error::ZeroLength)));
}

#[test]
fn iovas_stay_inside_the_valid_ranges() {
    let iommu = FakeIommu::new();
    let s = space(&iommu);
    let mut got = Vec::new();
    // Walk through the first 4 GiB: across the MSI window hole.
    for _ in 0..64 {
        got.push(s.alloc_iova(64 << 20).unwrap());
    }
    for i in &got {
        let (a, e) = (i.raw(), i.raw() + (64 << 20) - 1);
        assert!(a != 0, "IOVA 0 is never handed out");
        assert!(
            e < 0xfee0_0000 || a > 0xfeef_ffff,
            "{a:#x} overlaps the MSI window"
        );
        assert!(e <= 0x7f_ffff_ffff);
    }
    assert!(
        got.iter().any(|i| i.raw() >= 0xfef0_0000),
        "allocation went past the hole"
    );
    let before = s.iova_available();
    s.free_iova(got[3], 64 << 20);
    assert_eq!(s.iova_available(), before + (64 << 20));
}

#[test]
fn registered_user_memory_is_mapped_once_and_unmapped_on_drop() {
    let iommu = FakeIommu::new();
    let s = space(&iommu);
    let m = mapper(&s);
    let mem = vec![7u8; 3 * 4096 + 100];
    let addr = HostAddr::from_ptr(mem[10..].as_ptr());
    assert!(m.lookup(addr).is_none());
    // SAFETY: `mem` outlives the registration and no I/O uses it.
    let reg = unsafe { s.register(mem[10..].as_ptr(), mem.len() - 10) }.unwrap();
    let r = m.lookup(addr).expect("the mapper sees new regions");
    assert_eq!(r, reg.region());
    assert_eq!(
        r.translate(addr, 1).addr.offset_in(4096),
        addr.offset_in(4096)
    );
    assert_eq!(iommu.live().len(), 1);
    drop(reg);
    assert!(m.lookup(addr).is_none());
    assert!(iommu.live().is_empty());
}

#[test]
fn unregistered_memory_is_coalesced_into_one_read_only_range() {
    let iommu = FakeIommu::new();
    let s = space(&iommu);
    let m = mapper(&s);
    let avail = s.iova_available();
    let a = vec![1u8; 8192];
    let b = vec![2u8; 3 * 4096];
    let a_seg = {
        // The part of `a` from some offset to its last page boundary.
        let start = a.as_ptr() as usize;
        let end = (start + a.len()) & !4095;
        HostSeg::new(HostAddr::new(end - 100), 100)
    };
    let b_seg = {
        let start = (b.as_ptr() as usize).next_multiple_of(4096);
        HostSeg::new(HostAddr::new(start), 4096 + 10)
    };
    let segs = [a_seg, b_seg];
    let mut st = DmaState::new();
    let ranges: Vec<_> = DmaIter::start(&segs, Direction::ToDevice, &m, &mut st)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0].len, 4096 + 110);
    assert_eq!(ranges[0].addr.offset_in(4096), 4096 - 100);
    let live = iommu.live();
    assert_eq!(live.len(), 2, "one VFIO_IOMMU_MAP_DMA per segment");
    assert!(live.iter().all(|x| x.access == Access::ReadOnly));
    assert_eq!(
        live[0].iova + live[0].len,
        live[1].iova,
        "consecutive IOVAs"
    );
    let unmaps = iommu.calls.lock().unwrap().1;
    st.unmap(&m);
    assert_eq!(
        iommu.calls.lock().unwrap().1,
        unmaps + 1,
        "one unmap for the request"
    );
    assert!(iommu.live().is_empty());
    assert_eq!(s.iova_available(), avail);
}

#[test]
fn a_failed_link_leaves_nothing_mapped_and_no_iova_taken() {
    let iommu = FakeIommu::new();
    let s = space(&iommu);
    let m = mapper(&s);
    let avail = s.iova_available();
    let mem = vec![0u8; 16 * 4096];
    let base = (mem.as_ptr() as usize).next_multiple_of(4096);
    let segs: Vec<_> = (0..4)
        .map(|i| HostSeg::new(HostAddr::new(base + i * 8192), 4096))
        .collect();
    *iommu.fail_map_at.lock().unwrap() = Some(3);
    let mut st = DmaState::new();
    let err = DmaIter::start(&segs, Direction::FromDevice, &m, &mut st).unwrap_err();
    assert!(
        matches!(
            err,
            blk_dma::MapError::MapFailed {
                source: blk_dma::Errno(libc::ENOMEM),
                ..
            }
        ),
        "{err}"
    );
    assert!(iommu.live().is_empty());
    assert_eq!(s.iova_available(), avail);
    assert!(!st.is_mapped());
}

#[test]
fn slabs_are_unmapped_when_the_space_goes() {
    let iommu = FakeIommu::new();
    let s = space(&iommu);
    let buf = s.alloc(4096).unwrap();
    drop(buf);
    drop(s);
    assert!(iommu.live().is_empty());
}

// Not under Miri: it reads /proc (and Miri has no hugepages to fall back
// from).
#[test]
#[cfg_attr(miri, ignore)]
fn slabs_fall_back_to_4k_pages_without_hugepages() {
    let reserved = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if reserved != Some(0) {
        eprintln!(
            "skipped: this machine has hugepages reserved ({reserved:?}); the fallback needs none"
        );
        return;
    }
    let iommu = FakeIommu::new();
    let s = DmaSpace::new(iommu.clone(), SpaceConfig { hugepages: true });
    let mut b = s.alloc(8192).unwrap();
    b.as_mut_slice().fill(1);
    assert_eq!(s.slab_count(), (1, 0), "one slab, on 4 KiB pages");
    assert_eq!(iommu.live().len(), 1, "still mapped once");
}

#[test]
fn the_last_region_found_is_forgotten_when_the_table_changes() {
    let iommu = FakeIommu::new();
    let s = space(&iommu);
    let m = mapper(&s);
    // Two page-aligned buffers pages apart (registration widens to pages).
    let mem = vec![1u8; 16 * 4096];
    let skip = mem.as_ptr().align_offset(4096);
    let (a, b) = (
        &mem[skip..skip + 4096],
        &mem[skip + 8 * 4096..skip + 9 * 4096],
    );
    // SAFETY: `mem` outlives both registrations; no I/O uses it.
    let ra = unsafe { s.register(a.as_ptr(), a.len()) }.unwrap();
    // SAFETY: as above.
    let rb = unsafe { s.register(b.as_ptr(), b.len()) }.unwrap();
    let (ha, hb) = (
        HostAddr::from_ptr(a.as_ptr()),
        HostAddr::from_ptr(b.as_ptr()),
    );
    // Nothing remembered yet: the cache-only lookup knows nothing.
    assert_eq!(m.lookup_cached(ha), Region::EMPTY);
    // Alternating between regions, and again from the remembered one; the
    // cache-only lookup answers for the remembered region only.
    for _ in 0..2 {
        assert_eq!(m.lookup(ha), Some(ra.region()));
        assert_eq!(m.lookup(ha), Some(ra.region()));
        assert_eq!(m.lookup_cached(ha), ra.region());
        assert_eq!(m.lookup_cached(hb), Region::EMPTY);
        assert_eq!(m.lookup(hb), Some(rb.region()));
        assert_eq!(m.lookup_cached(hb), rb.region());
        assert_eq!(m.lookup_cached(ha), Region::EMPTY);
    }
    // The remembered region goes away: never translated again, by either.
    drop(rb);
    assert_eq!(m.lookup_cached(hb), Region::EMPTY);
    assert_eq!(m.lookup(hb), None);
    assert_eq!(m.lookup(ha), Some(ra.region()));
    drop(ra);
    assert_eq!(m.lookup_cached(ha), Region::EMPTY);
    assert_eq!(m.lookup(ha), None);
}

/// When IOVA space is too fragmented for a slab at a 2 MiB boundary, the
/// slab takes any granule-aligned place (and the allocator's lock is taken
/// once: this used to deadlock), and then IOVA exhaustion is an error.
#[test]
fn a_slab_fits_where_only_granule_alignment_is_left_and_exhaustion_is_an_error() {
    // 2 MiB + 4 KiB of IOVA space starting at 4 KiB: no 2 MiB-aligned
    // 2 MiB range fits, a 4 KiB-aligned one does; then nothing is left.
    let iommu = FakeIommu::with_ranges(vec![0x1000..=0x20_1fff]);
    let s = space(&iommu);
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    std::thread::spawn(move || {
        let first = s2.alloc(4096).map(|b| b.iova().raw());
        // A second slab finds no IOVA space.
        let big = s2.alloc(3 << 20).map(|b| b.iova().raw());
        let _ = tx.send((first, big));
    });
    let (first, big) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the allocation returned (no deadlock)");
    assert_eq!(first.unwrap(), 0x1000);
    assert!(
        matches!(big, Err(crate::Error::IovaExhausted { .. })),
        "{big:?}"
    );
    assert_eq!(iommu.live().len(), 1);
}
