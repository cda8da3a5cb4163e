//! Property tests of the whole host-side data path: random requests mapped by
//! blk-dma through the fake IOMMU, turned into PRPs or SGLs by the policy,
//! walked back as a controller would, and read through the IOMMU: the device
//! must see exactly the request's bytes, in order, and nothing may stay
//! mapped afterwards.

mod common;

use blk_dma::fake::FakeMapper;
use blk_dma::{Direction, DmaIter, DmaRange, DmaState, HostSeg, MapError};
use common::{Arena, Device};
use nvme_vfio::nvme::desc::{DescList, HeapPool};
use nvme_vfio::nvme::dptr::{self, Format, Policy, QueueKind, Setup, Shape};
use nvme_vfio::nvme::spec::{DataPtr, PageSize};
use nvme_vfio::nvme::walk::{walk_prp, walk_sgl, DeviceMemory};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const ARENA: usize = 4 << 20;
const POOL_PAGES: usize = 64;
const PAGE: usize = 4096;

/// One segment as generated: which arena, where, how long.
#[derive(Clone, Debug)]
struct Seg {
    registered: bool,
    off: usize,
    len: usize,
}

/// Segments whose interior boundaries are page aligned (coalescible).
fn aligned_request() -> impl Strategy<Value = Vec<Seg>> {
    (1usize..=128)
        .prop_flat_map(|n| {
            (
                proptest::collection::vec((any::<bool>(), 0usize..900, 1usize..=4), n),
                0usize..PAGE / 4,
                1usize..=PAGE,
            )
        })
        .prop_map(|(v, first_off, last_len)| {
            let n = v.len();
            v.into_iter()
                .enumerate()
                .map(|(i, (registered, page, pages))| {
                    let start = if i == 0 { first_off * 4 } else { 0 };
                    let len = if i + 1 == n && n > 1 {
                        last_len
                    } else {
                        pages * PAGE - start
                    };
                    Seg {
                        registered,
                        off: page * PAGE + start,
                        len,
                    }
                })
                .collect()
        })
}

/// Segments with arbitrary offsets and lengths.
fn random_request() -> impl Strategy<Value = Vec<Seg>> {
    proptest::collection::vec(
        (any::<bool>(), 0usize..(ARENA - 20_000), 1usize..=12_000).prop_map(
            |(registered, off, len)| Seg {
                registered,
                off,
                len,
            },
        ),
        1..=128,
    )
}

#[derive(Clone, Copy, Debug)]
enum Reg {
    All,
    None,
    Mixed,
}

fn reg() -> impl Strategy<Value = Reg> {
    prop_oneof![Just(Reg::All), Just(Reg::None), Just(Reg::Mixed)]
}

struct World {
    registered: Arena,
    plain: Arena,
    /// A second registered region.
    second: Arena,
}

impl World {
    fn new() -> Self {
        Self {
            registered: Arena::new(ARENA, 0x5a),
            plain: Arena::new(ARENA, 0xc3),
            second: Arena::new(ARENA, 0x96),
        }
    }

    fn segs(&self, req: &[Seg], reg: Reg) -> Vec<HostSeg> {
        req.iter()
            .map(|s| {
                let r = match reg {
                    Reg::All => true,
                    Reg::None => false,
                    Reg::Mixed => s.registered,
                };
                if r { &self.registered } else { &self.plain }.seg(s.off, s.len)
            })
            .collect()
    }

    fn expected(&self, segs: &[HostSeg]) -> Vec<u8> {
        segs.iter()
            .flat_map(|&s| {
                let a = [&self.registered, &self.second]
                    .into_iter()
                    .find(|a| a.read(s.addr, &mut [0]))
                    .unwrap_or(&self.plain);
                a.bytes(s)
            })
            .collect()
    }
}

fn read_all(dev: &impl DeviceMemory, ranges: &[DmaRange]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in ranges {
        let mut b = vec![0; r.len as usize];
        assert!(dev.read(r.addr, &mut b), "device cannot read {r:?}");
        out.extend_from_slice(&b);
    }
    out
}

/// Maps, builds, walks and checks one request; then unmaps and checks that
/// nothing is left.
fn check(
    world: &World,
    segs: &[HostSeg],
    iommu: bool,
    dir: Direction,
    via_map_data: bool,
) -> Result<(), TestCaseError> {
    let fake = if iommu {
        FakeMapper::with_iommu(4096)
    } else {
        FakeMapper::without_iommu()
    };
    fake.register(world.registered.host(), world.registered.len() as u64);
    fake.register(world.second.host(), world.second.len() as u64);
    let mut pool = HeapPool::new(POOL_PAGES, PAGE, |h, l| fake.register(h, l).addr).unwrap();
    let policy = Policy {
        io_sgls: true,
        ..Policy::default()
    };
    let page = PageSize::DEFAULT;
    let mut state = DmaState::new();
    let mut list = DescList::new();
    let total: u64 = segs.iter().map(|s| s.len).sum();

    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    let (dp, format) = if via_map_data {
        // The I/O path: map_data, ranges fed through RangeSink.
        let setup = Setup {
            policy,
            queue: QueueKind::Io,
            page,
            pool: &mut pool,
            list: &mut list,
        };
        let dp = dptr::map_data(segs, dir, &fake, &mut state, setup).map_err(|e| fail(&e))?;
        let format = match dp {
            DataPtr::Prp { .. } => Format::Prp,
            DataPtr::Sgl(_) => Format::Sgl,
        };
        (dp, format)
    } else {
        // The pull iterator into the generic builders.
        let it = DmaIter::start(segs, dir, &fake, &mut state).map_err(|e| fail(&e))?;
        let shape = match it.coalesced() {
            Some(r) => Shape::coalesced(r),
            None => Shape::of_segments(segs, page),
        };
        let format = policy.choose(QueueKind::Io, shape);
        let dp = dptr::build(format, it, page, &mut pool, &mut list).map_err(|e| fail(&e))?;
        (dp, format)
    };
    let coalesced = state.coalesced().is_some();

    let dev = Device {
        iommu: &fake,
        arenas: &[&world.registered, &world.plain, &world.second],
        pool: &pool,
    };
    let ranges = match dp {
        DataPtr::Prp { prp1, prp2 } => {
            prop_assert_eq!(format, Format::Prp);
            walk_prp(prp1, prp2, total, page, &dev)
        }
        DataPtr::Sgl(d) => {
            prop_assert_eq!(format, Format::Sgl);
            walk_sgl(d, total, &dev)
        }
    }
    .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(read_all(&dev, &ranges), world.expected(segs));
    if coalesced {
        prop_assert_eq!(ranges.len(), 1, "a coalesced request is one range");
        prop_assert!(state.coalesced().is_some());
    }
    let all_registered = segs
        .iter()
        .all(|s| world.registered.read(s.addr, &mut [0]) || world.second.read(s.addr, &mut [0]));
    if all_registered {
        prop_assert!(!state.is_mapped(), "registered memory needs no unmap");
        prop_assert_eq!(fake.calls().syscalls(), 0);
    }

    // SAFETY: the list's pages come from `pool`; nothing was submitted to a device.
    unsafe { list.release(&mut pool) };
    state.unmap(&fake);
    prop_assert_eq!(fake.live_links(), 0);
    prop_assert_eq!(fake.live_iovas(), 0);
    prop_assert_eq!(pool.available(), POOL_PAGES);
    Ok(())
}

/// `map_data` with the mapper's last-region cache cold (a fresh mapper) and
/// warm (holding the first segment's region, as after an earlier request
/// from the same buffer, which is when the short paths apply): both must
/// build the same data pointer over the same bytes and leave nothing
/// behind.
fn check_warm(
    world: &World,
    segs: &[HostSeg],
    iommu: bool,
    dir: Direction,
) -> Result<(), TestCaseError> {
    let run = |warm: bool| -> Result<(DataPtr, Vec<DmaRange>), TestCaseError> {
        let fake = if iommu {
            FakeMapper::with_iommu(4096)
        } else {
            FakeMapper::without_iommu()
        };
        fake.register(world.registered.host(), world.registered.len() as u64);
        fake.register(world.second.host(), world.second.len() as u64);
        let mut pool = HeapPool::new(POOL_PAGES, PAGE, |h, l| fake.register(h, l).addr).unwrap();
        if warm {
            use blk_dma::Mapper;
            let _ = fake.lookup(segs[0].addr);
        }
        let (mut state, mut list) = (DmaState::new(), DescList::new());
        let setup = Setup {
            policy: Policy {
                io_sgls: true,
                ..Policy::default()
            },
            queue: QueueKind::Io,
            page: PageSize::DEFAULT,
            pool: &mut pool,
            list: &mut list,
        };
        let dp = dptr::map_data(segs, dir, &fake, &mut state, setup)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let total: u64 = segs.iter().map(|s| s.len).sum();
        let dev = Device {
            iommu: &fake,
            arenas: &[&world.registered, &world.plain, &world.second],
            pool: &pool,
        };
        let ranges = match dp {
            DataPtr::Prp { prp1, prp2 } => walk_prp(prp1, prp2, total, PageSize::DEFAULT, &dev),
            DataPtr::Sgl(d) => walk_sgl(d, total, &dev),
        }
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read_all(&dev, &ranges), world.expected(segs));
        // SAFETY: the list's pages come from `pool`; nothing was submitted to a device.
        unsafe { list.release(&mut pool) };
        state.unmap(&fake);
        prop_assert_eq!(fake.live_links(), 0);
        prop_assert_eq!(pool.available(), POOL_PAGES);
        Ok((dp, ranges))
    };
    prop_assert_eq!(run(false)?, run(true)?);
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn dir() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::ToDevice), Just(Direction::FromDevice)]
}

#[test]
fn device_sees_exactly_the_request_bytes_aligned_requests() {
    let world = World::new();
    runner(300)
        .run(
            &(
                aligned_request(),
                reg(),
                any::<bool>(),
                dir(),
                any::<bool>(),
            ),
            |(req, reg, iommu, dir, via_map_data)| {
                let segs = world.segs(&req, reg);
                check(&world, &segs, iommu, dir, via_map_data)?;
                check_warm(&world, &segs, iommu, dir)
            },
        )
        .unwrap();
}

#[test]
fn device_sees_exactly_the_request_bytes_random_requests() {
    let world = World::new();
    runner(300)
        .run(
            &(random_request(), reg(), any::<bool>(), dir(), any::<bool>()),
            |(req, reg, iommu, dir, via_map_data)| {
                let segs = world.segs(&req, reg);
                check(&world, &segs, iommu, dir, via_map_data)?;
                check_warm(&world, &segs, iommu, dir)
            },
        )
        .unwrap();
}

#[test]
fn unregistered_aligned_requests_behind_an_iommu_are_one_range() {
    let world = World::new();
    runner(200)
        .run(&(aligned_request(), dir()), |(req, dir)| {
            let segs = world.segs(&req, Reg::None);
            let fake = FakeMapper::with_iommu(4096);
            let mut state = DmaState::new();
            let ranges: Vec<DmaRange> = DmaIter::start(&segs, dir, &fake, &mut state)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            prop_assert_eq!(ranges.len(), 1);
            prop_assert_eq!(ranges[0].len, segs.iter().map(|s| s.len).sum::<u64>());
            prop_assert_eq!(fake.calls().alloc, 1);
            state.unmap(&fake);
            prop_assert_eq!((fake.live_links(), fake.live_iovas()), (0, 0));
            Ok(())
        })
        .unwrap();
}

#[test]
fn failure_at_every_link_or_map_position_leaves_nothing_mapped() {
    let world = World::new();
    let req = prop_oneof![aligned_request(), random_request()];
    runner(60)
        .run(&(req, any::<bool>(), dir()), |(req, iommu, dir)| {
            let segs = world.segs(&req, Reg::None);
            // How many link/map calls a clean run makes.
            let probe = if iommu {
                FakeMapper::with_iommu(4096)
            } else {
                FakeMapper::without_iommu()
            };
            let mut state = DmaState::new();
            let n: Result<Vec<_>, MapError> = DmaIter::start(&segs, dir, &probe, &mut state)
                .unwrap()
                .collect();
            n.unwrap();
            let calls = probe.calls();
            state.unmap(&probe);
            let positions = calls.link.max(calls.map);
            prop_assert!(positions >= 1);
            for pos in 0..positions {
                let fake = if iommu {
                    FakeMapper::with_iommu(4096)
                } else {
                    FakeMapper::without_iommu()
                };
                if calls.link > 0 {
                    fake.fail_link_at(pos);
                } else {
                    fake.fail_map_at(pos);
                }
                let mut state = DmaState::new();
                let res: Result<Vec<_>, MapError> =
                    DmaIter::start(&segs, dir, &fake, &mut state).and_then(|it| it.collect());
                prop_assert!(
                    matches!(res, Err(MapError::MapFailed { .. })),
                    "position {}: {:?}",
                    pos,
                    res
                );
                prop_assert!(!state.is_mapped());
                prop_assert_eq!(
                    (fake.live_links(), fake.live_iovas()),
                    (0, 0),
                    "position {}",
                    pos
                );
            }
            Ok(())
        })
        .unwrap();
}

/// How a scattered-page request is changed at one segment.
#[derive(Clone, Copy, Debug)]
enum Twist {
    /// Two pages instead of one.
    TwoPages,
    /// Half a page.
    Short,
    /// Starting 512 bytes into a page (PRPs cannot describe it).
    Unaligned,
    /// In unregistered memory (mapped through the IOMMU or one by one).
    Unregistered,
    /// In another registered region.
    OtherRegion,
}

/// Scattered whole pages of registered memory, as a request built from
/// page-sized buffers (the one-pass PRP path's shape): a first segment
/// starting anywhere dword aligned and ending on a page boundary, up to 700
/// interior pages (past one list page), a last segment ending anywhere; and
/// at most one segment changed to break the shape.
#[allow(clippy::type_complexity)]
fn page_request() -> impl Strategy<
    Value = (
        (usize, usize, usize),
        Vec<usize>,
        (usize, usize),
        Option<(proptest::sample::Index, Twist, usize)>,
    ),
> {
    let twist = prop_oneof![
        Just(Twist::TwoPages),
        Just(Twist::Short),
        Just(Twist::Unaligned),
        Just(Twist::Unregistered),
        Just(Twist::OtherRegion),
    ];
    (
        (0usize..1000, 0usize..PAGE / 4, 1usize..=3),
        prop_oneof![
            proptest::collection::vec(0usize..1000, 0..=40),
            proptest::collection::vec(0usize..1000, 500..=700),
        ],
        (0usize..1000, 1usize..=2 * PAGE),
        proptest::option::of((any::<proptest::sample::Index>(), twist, 0usize..1000)),
    )
}

#[test]
fn scattered_pages_in_registered_memory_one_pass_and_every_way_out_of_it() {
    let world = World::new();
    runner(150)
        .run(
            &(page_request(), any::<bool>(), dir()),
            |(((fp, off, fpages), mids, (lp, last_len), twist), iommu, dir)| {
                let r = &world.registered;
                let off = off * 4;
                let mut segs = vec![r.seg(fp * PAGE + off, fpages * PAGE - off)];
                segs.extend(mids.iter().map(|&p| r.seg(p * PAGE, PAGE)));
                segs.push(r.seg(lp * PAGE, last_len));
                if let Some((i, twist, p)) = twist {
                    let i = i.index(segs.len());
                    segs[i] = match twist {
                        Twist::TwoPages => r.seg(p * PAGE, 2 * PAGE),
                        Twist::Short => r.seg(p * PAGE, PAGE / 2),
                        Twist::Unaligned => r.seg(p * PAGE + 512, PAGE),
                        Twist::Unregistered => world.plain.seg(p * PAGE, PAGE),
                        Twist::OtherRegion => world.second.seg(p * PAGE, PAGE),
                    };
                }
                check(&world, &segs, iommu, dir, true)?;
                check(&world, &segs, iommu, dir, false)?;
                check_warm(&world, &segs, iommu, dir)
            },
        )
        .unwrap();
}
