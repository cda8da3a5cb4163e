//! Each mapping path of `DmaIter`, with made-up addresses.

use blk_dma::fake::FakeMapper;
use blk_dma::{
    Direction, DmaIter, DmaRange, DmaState, HostAddr, HostSeg, Iova, MapError, Mapper, Memory,
};

fn seg(addr: usize, len: u64) -> HostSeg {
    HostSeg::new(HostAddr::new(addr), len)
}

fn map_all<M: Mapper>(
    segs: &[HostSeg],
    dir: Direction,
    m: &M,
    state: &mut DmaState,
) -> Result<Vec<DmaRange>, MapError> {
    DmaIter::start(segs, dir, m, state)?.collect()
}

#[test]
fn registered_memory_is_translated_without_syscalls_and_merged() {
    let m = FakeMapper::with_iommu(4096);
    let r = m.register(HostAddr::new(0x7f00_0000_0000), 1 << 21);
    let mut st = DmaState::new();
    // Three adjacent pieces and one elsewhere in the same slab.
    let segs = [
        seg(0x7f00_0000_0200, 0xe00),
        seg(0x7f00_0000_1000, 0x1000),
        seg(0x7f00_0000_2000, 0x800),
        seg(0x7f00_0001_0000, 0x1000),
    ];
    let got = map_all(&segs, Direction::FromDevice, &m, &mut st).unwrap();
    assert_eq!(
        got,
        vec![
            DmaRange::new(r.addr.wrapping_add(0x200), 0x2600),
            DmaRange::new(r.addr.wrapping_add(0x10000), 0x1000),
        ]
    );
    assert!(!st.is_mapped());
    assert_eq!(m.calls().syscalls(), 0);
    assert_eq!(m.calls().lookup, 1, "consecutive segments reuse the region");
}

#[test]
fn aligned_unregistered_request_is_coalesced_into_one_range() {
    let m = FakeMapper::with_iommu(4096);
    let mut st = DmaState::new();
    let segs = [
        seg(0x1000_0c00, 0x400),  // may start unaligned, must end aligned
        seg(0x5000_0000, 0x3000), // interior: both ends aligned
        seg(0x2000_0000, 0x10),   // may end unaligned
    ];
    let got = map_all(&segs, Direction::ToDevice, &m, &mut st).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len, 0x3410);
    assert_eq!(got[0].addr.offset_in(4096), 0xc00);
    assert_eq!(st.coalesced(), Some(got[0]));
    assert_eq!(m.calls().alloc, 1);
    assert_eq!(m.calls().link, 3);
    assert_eq!(m.calls().sync, 1);
    // Each segment is reachable at its offset in the range, read-only.
    let mut off = 0;
    for s in &segs {
        let (host, n) = m
            .resolve(got[0].addr.wrapping_add(off), s.len, false)
            .unwrap();
        assert_eq!((host, n), (s.addr, s.len));
        assert!(m.resolve(got[0].addr.wrapping_add(off), 1, true).is_none());
        off += s.len;
    }
    st.unmap(&m);
    assert_eq!((m.live_links(), m.live_iovas()), (0, 0));
    assert!(!st.is_mapped());
}

#[test]
fn misaligned_interior_boundary_maps_segment_by_segment() {
    let m = FakeMapper::with_iommu(4096);
    let mut st = DmaState::new();
    let segs = [seg(0x1000_0000, 0x200), seg(0x2000_0200, 0x200)];
    let got = map_all(&segs, Direction::FromDevice, &m, &mut st).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(st.coalesced(), None);
    assert_eq!(st.mapped_segments().len(), 2);
    assert_eq!(m.calls().map, 2);
    st.unmap(&m);
    assert_eq!((m.live_links(), m.live_iovas()), (0, 0));
}

#[test]
fn without_iommu_segments_split_at_physical_discontinuities() {
    let m = FakeMapper::without_iommu();
    let mut st = DmaState::new();
    let segs = [seg(0x1000_0800, 0x2000)];
    let got = map_all(&segs, Direction::FromDevice, &m, &mut st).unwrap();
    // 0x800 to the page end, a full page, 0x800 of the next: three pieces
    // that are not adjacent in the fake's scattered "physical" layout.
    assert_eq!(
        got.iter().map(|r| r.len).collect::<Vec<_>>(),
        [0x800, 0x1000, 0x800]
    );
    assert_eq!(st.mapped_segments().len(), 3);
    st.unmap(&m);
    assert_eq!(m.live_links(), 0);
}

#[test]
fn device_memory_yields_bus_addresses_and_is_never_unmapped() {
    let m = FakeMapper::with_iommu(4096);
    let bus = Iova::new(0xfe00_0000);
    m.add_device_memory(HostAddr::new(0x7000_0000), 1 << 20, bus);
    let mut st = DmaState::new();
    let segs = [seg(0x7000_1000, 0x1000), seg(0x7000_2000, 0x1000)];
    let got = map_all(&segs, Direction::ToDevice, &m, &mut st).unwrap();
    assert_eq!(got, vec![DmaRange::new(Iova::new(0xfe00_1000), 0x2000)]);
    assert!(!st.is_mapped());
    assert_eq!(m.calls().syscalls() + m.calls().alloc, 0);
}

#[test]
fn mixing_device_and_host_memory_is_an_error_either_way() {
    let m = FakeMapper::with_iommu(4096);
    m.add_device_memory(HostAddr::new(0x7000_0000), 1 << 20, Iova::new(0xfe00_0000));
    let mut st = DmaState::new();
    // Device first, then host.
    let segs = [seg(0x7000_0000, 0x1000), seg(0x1000_0000, 0x1000)];
    let err = map_all(&segs, Direction::ToDevice, &m, &mut st).unwrap_err();
    assert_eq!(
        err,
        MapError::MixedMemory {
            index: 1,
            expected: Memory::Device,
            found: Memory::Host
        }
    );
    // Host first (coalescible), then device.
    let segs = [seg(0x1000_0000, 0x1000), seg(0x7000_0000, 0x1000)];
    let err = map_all(&segs, Direction::ToDevice, &m, &mut st).unwrap_err();
    assert_eq!(
        err,
        MapError::MixedMemory {
            index: 1,
            expected: Memory::Host,
            found: Memory::Device
        }
    );
    // Host first (not coalescible), then device.
    let segs = [seg(0x1000_0000, 0x100), seg(0x7000_0000, 0x1000)];
    let err = map_all(&segs, Direction::ToDevice, &m, &mut st).unwrap_err();
    assert!(matches!(err, MapError::MixedMemory { index: 1, .. }));
    assert_eq!((m.live_links(), m.live_iovas()), (0, 0));
    assert!(!st.is_mapped());
}

#[test]
fn registered_request_with_an_unregistered_segment_maps_only_that_one() {
    let m = FakeMapper::with_iommu(4096);
    m.register(HostAddr::new(0x7f00_0000_0000), 1 << 21);
    let mut st = DmaState::new();
    let segs = [seg(0x7f00_0000_0000, 0x1000), seg(0x1000_0000, 0x1000)];
    let got = map_all(&segs, Direction::FromDevice, &m, &mut st).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(st.mapped_segments(), &got[1..]);
    st.unmap(&m);
    assert_eq!((m.live_links(), m.live_iovas()), (0, 0));
}

#[test]
fn segment_spanning_two_registered_regions_is_translated_piecewise() {
    let m = FakeMapper::with_iommu(4096);
    let a = m.register(HostAddr::new(0x7f00_0000_0000), 0x1000);
    let b = m.register(HostAddr::new(0x7f00_0000_1000), 0x1000);
    let mut st = DmaState::new();
    let got = map_all(
        &[seg(0x7f00_0000_0800, 0x1000)],
        Direction::FromDevice,
        &m,
        &mut st,
    )
    .unwrap();
    assert_eq!(
        got,
        vec![
            DmaRange::new(a.addr.wrapping_add(0x800), 0x800),
            DmaRange::new(b.addr, 0x800)
        ]
    );
    assert!(!st.is_mapped());
}

#[test]
fn ranges_merge_up_to_and_split_at_the_max_segment_size() {
    let m = FakeMapper::with_iommu(4096);
    let r = m.register(HostAddr::new(0x7f00_0000_0000), 1 << 21);
    m.set_max_segment_size(0x3000);
    let mut st = DmaState::new();
    let segs = [
        seg(0x7f00_0000_0000, 0x2000),
        seg(0x7f00_0000_2000, 0x2000), // would merge to 0x4000 > max
        seg(0x7f00_0000_4000, 0x7000), // longer than max on its own
    ];
    let got = map_all(&segs, Direction::FromDevice, &m, &mut st).unwrap();
    let lens: Vec<u64> = got.iter().map(|r| r.len).collect();
    assert_eq!(lens, [0x2000, 0x2000, 0x3000, 0x3000, 0x1000]);
    assert!(got.iter().all(|g| g.len <= 0x3000));
    assert_eq!(got[0].addr, r.addr);
    // Contiguous overall.
    for w in got.windows(2) {
        assert_eq!(w[0].end(), w[1].addr);
    }
    // A coalescible request longer than the max falls back to segments.
    let segs = [seg(0x1000_0000, 0x2000), seg(0x2000_0000, 0x2000)];
    let coalesced = DmaIter::start(&segs, Direction::FromDevice, &m, &mut st)
        .unwrap()
        .is_coalesced();
    assert!(!coalesced);
    st.unmap(&m);
}

#[test]
fn bad_requests_are_errors_with_nothing_mapped() {
    let m = FakeMapper::with_iommu(4096);
    let mut st = DmaState::new();
    assert_eq!(
        map_all(&[], Direction::ToDevice, &m, &mut st),
        Err(MapError::EmptyRequest)
    );
    let segs = [seg(0x1000, 0x1000), seg(0x3000, 0)];
    assert_eq!(
        map_all(&segs, Direction::ToDevice, &m, &mut st),
        Err(MapError::EmptySegment { index: 1 })
    );
    let segs = [seg(0x1000, 0x100), seg(usize::MAX - 10, 0x100)];
    assert_eq!(
        map_all(&segs, Direction::ToDevice, &m, &mut st),
        Err(MapError::Overflow { index: 1 })
    );
    // Direct path without an IOMMU finds an empty segment lazily, after
    // mapping the first: that mapping is undone.
    let m2 = FakeMapper::without_iommu();
    let segs = [seg(0x1000, 0x100), seg(0x3000, 0)];
    assert_eq!(
        map_all(&segs, Direction::ToDevice, &m2, &mut st),
        Err(MapError::EmptySegment { index: 1 })
    );
    assert_eq!(m2.live_links(), 0);
    assert_eq!((m.live_links(), m.live_iovas()), (0, 0));
}

#[test]
fn a_state_still_mapped_is_refused() {
    let m = FakeMapper::with_iommu(4096);
    let mut st = DmaState::new();
    let segs = [seg(0x1000_0000, 0x1000)];
    map_all(&segs, Direction::ToDevice, &m, &mut st).unwrap();
    assert_eq!(
        map_all(&segs, Direction::ToDevice, &m, &mut st),
        Err(MapError::StateInUse)
    );
    st.unmap(&m);
    map_all(&segs, Direction::ToDevice, &m, &mut st).unwrap();
    st.unmap(&m);
    assert_eq!((m.live_links(), m.live_iovas()), (0, 0));
}

#[test]
fn link_failure_at_every_position_destroys_the_partial_mapping() {
    let segs: Vec<HostSeg> = (0..8)
        .map(|i| seg(0x1000_0000 + i * 0x10_0000, 0x1000))
        .collect();
    for pos in 0..segs.len() as u64 {
        let m = FakeMapper::with_iommu(4096);
        m.fail_link_at(pos);
        let mut st = DmaState::new();
        let err = map_all(&segs, Direction::FromDevice, &m, &mut st).unwrap_err();
        assert!(matches!(err, MapError::MapFailed { .. }), "{err}");
        assert_eq!((m.live_links(), m.live_iovas()), (0, 0), "position {pos}");
        assert!(!st.is_mapped());
        assert_eq!(m.calls().link, pos + 1);
    }
}

#[test]
fn sync_and_alloc_failures_leave_nothing_mapped() {
    let segs = [seg(0x1000_0000, 0x1000), seg(0x2000_0000, 0x1000)];
    let m = FakeMapper::with_iommu(4096);
    m.fail_sync(true);
    let mut st = DmaState::new();
    assert!(matches!(
        map_all(&segs, Direction::FromDevice, &m, &mut st),
        Err(MapError::SyncFailed { .. })
    ));
    assert_eq!((m.live_links(), m.live_iovas()), (0, 0));
    m.fail_sync(false);
    m.fail_alloc(true);
    assert!(matches!(
        map_all(&segs, Direction::FromDevice, &m, &mut st),
        Err(MapError::IovaExhausted { .. })
    ));
    assert_eq!((m.live_links(), m.live_iovas()), (0, 0));
}

#[test]
fn map_failure_on_the_direct_path_undoes_earlier_segments() {
    // Interior boundary misaligned: direct path, one map per segment.
    let segs: Vec<HostSeg> = (0..6)
        .map(|i| seg(0x1000_0100 + i * 0x10_0000, 0x200))
        .collect();
    for pos in 0..segs.len() as u64 {
        let m = FakeMapper::with_iommu(4096);
        m.fail_map_at(pos);
        let mut st = DmaState::new();
        let err = map_all(&segs, Direction::FromDevice, &m, &mut st).unwrap_err();
        assert!(matches!(err, MapError::MapFailed { .. }));
        assert_eq!((m.live_links(), m.live_iovas()), (0, 0), "position {pos}");
        assert!(!st.is_mapped());
    }
}

#[test]
fn iova_exhaustion_is_reported() {
    let m = FakeMapper::with_iommu(4096);
    m.set_iova_space(0x2000);
    let mut st = DmaState::new();
    let segs = [seg(0x1000_0000, 0x1000), seg(0x2000_0000, 0x2000)];
    assert_eq!(
        map_all(&segs, Direction::FromDevice, &m, &mut st),
        Err(MapError::IovaExhausted { len: 0x3000 })
    );
}

#[test]
fn the_cache_only_lookup_knows_the_last_region_found_until_the_table_changes() {
    use blk_dma::Region;
    let m = FakeMapper::with_iommu(4096);
    let a = m.register(HostAddr::new(0x7f00_0000_0000), 1 << 21);
    let b = m.register(HostAddr::new(0x7f10_0000_0000), 1 << 21);
    let (ha, hb) = (
        HostAddr::new(0x7f00_0000_1000),
        HostAddr::new(0x7f10_0000_1000),
    );
    // Nothing found yet; the cache is not counted as a lookup, hit or miss
    // (only full lookups are).
    assert_eq!(m.lookup_cached(ha), Region::EMPTY);
    assert_eq!(m.calls().lookup, 0);
    assert_eq!(m.lookup(ha), Some(a));
    assert_eq!(m.lookup_cached(ha), a);
    assert_eq!(m.lookup_cached(hb), Region::EMPTY);
    assert_eq!(m.calls().lookup, 1);
    assert_eq!(m.lookup(hb), Some(b));
    assert_eq!(m.lookup_cached(hb), b);
    assert_eq!(m.lookup_cached(ha), Region::EMPTY);
    // Any change to the table forgets it.
    m.add_device_memory(
        HostAddr::new(0x7f20_0000_0000),
        4096,
        Iova::new(0xf000_0000),
    );
    assert_eq!(m.lookup_cached(hb), Region::EMPTY);
    assert_eq!(m.lookup(hb), Some(b));
    m.clear_regions();
    assert_eq!(m.lookup_cached(hb), Region::EMPTY);
    assert_eq!(m.lookup(hb), None);
    // The empty region contains nothing, not even address 0.
    assert!(!Region::EMPTY.contains(HostAddr::new(0)));
    assert_eq!(Region::EMPTY.translate_whole(seg(0, 1)), None);
}

#[test]
fn a_segment_is_two_words_address_then_length() {
    // The one-pass PRP path loads a segment as one 16-byte vector.
    let s = seg(0x1234_5678, 0x9abc);
    assert_eq!(size_of::<HostSeg>(), 16);
    // SAFETY: HostSeg is `repr(C)` of two 8-byte fields, no padding.
    let words: [u64; 2] = unsafe { core::mem::transmute(s) };
    assert_eq!(words, [0x1234_5678, 0x9abc]);
}
