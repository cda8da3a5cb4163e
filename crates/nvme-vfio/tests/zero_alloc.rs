//! Mapping a request and building its data pointer allocates nothing on the
//! heap on the registered and coalesced paths: per-request state is the
//! reusable `DmaState`, descriptor pages come from the pool.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use blk_dma::fake::FakeMapper;
use blk_dma::{Direction, DmaIter, DmaState, HostSeg};
use common::Arena;
use nvme_vfio::nvme::desc::{DescList, HeapPool};
use nvme_vfio::nvme::dptr::{self, Format, Policy, QueueKind, Setup, Shape};
use nvme_vfio::nvme::spec::PageSize;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Maps, builds and unmaps `segs` `n` times; returns heap allocations made.
fn run(
    fake: &FakeMapper,
    pool: &mut HeapPool,
    segs: &[HostSeg],
    format: Option<Format>,
    n: usize,
) -> u64 {
    let policy = Policy {
        io_sgls: true,
        ..Policy::default()
    };
    let mut state = DmaState::new();
    let mut list = DescList::new();
    let before = allocs();
    for _ in 0..n {
        if format.is_none() {
            // The I/O path.
            let setup = Setup {
                policy,
                queue: QueueKind::Io,
                page: PageSize::DEFAULT,
                pool,
                list: &mut list,
            };
            let dp = dptr::map_data(segs, Direction::FromDevice, fake, &mut state, setup).unwrap();
            std::hint::black_box(dp);
            // SAFETY: the list's pages come from `pool`; the request was never submitted.
            unsafe { list.release(pool) };
            state.unmap(fake);
            continue;
        }
        let it = DmaIter::start(segs, Direction::FromDevice, fake, &mut state).unwrap();
        let shape = match it.coalesced() {
            Some(r) => Shape::coalesced(r),
            None => Shape::of_segments(segs, PageSize::DEFAULT),
        };
        let f = format.unwrap_or_else(|| policy.choose(QueueKind::Io, shape));
        let dp = dptr::build(f, it, PageSize::DEFAULT, pool, &mut list).unwrap();
        std::hint::black_box(dp);
        // SAFETY: the list's pages come from `pool`; the request was never submitted.
        unsafe { list.release(pool) };
        state.unmap(fake);
    }
    allocs() - before
}

#[test]
fn registered_and_coalesced_paths_allocate_nothing_per_request() {
    let arena = Arena::new(8 << 20, 1);
    let fake = FakeMapper::with_iommu(4096);
    let mut pool = HeapPool::new(16, 4096, |h, l| fake.register(h, l).addr).unwrap();
    let scattered = |n: usize, len: usize| -> Vec<HostSeg> {
        (0..n)
            .map(|i| arena.seg(i * 3 * 4096 + 8192, len))
            .collect()
    };
    let cases: Vec<(&str, Vec<HostSeg>)> = vec![
        ("4 KiB", vec![arena.seg(0, 4096)]),
        ("8 KiB", vec![arena.seg(4096, 8192)]),
        ("128 KiB in 32 segments", scattered(32, 4096)),
        ("1 MiB", vec![arena.seg(0, 1 << 20)]),
        ("1 MiB in 256 segments", scattered(256, 4096)),
        (
            "2.4 MiB in 600 segments (chained PRP lists)",
            scattered(600, 4096),
        ),
    ];
    for registered in [true, false] {
        fake.clear_regions();
        if registered {
            fake.register(arena.host(), arena.len() as u64);
        }
        // The pool is always registered.
        fake.register(pool.host(), pool.len());
        for (name, segs) in &cases {
            for format in [None, Some(Format::Prp), Some(Format::Sgl)] {
                // Warm up (first use may size lazily-grown structures).
                run(&fake, &mut pool, segs, format, 2);
                let n = run(&fake, &mut pool, segs, format, 200);
                assert_eq!(
                    n, 0,
                    "{name}, registered {registered}, {format:?}: {n} allocations"
                );
                assert_eq!((fake.live_links(), fake.live_iovas()), (0, 0));
            }
        }
        if !registered {
            // The unregistered cases did take the coalesced path.
            assert!(fake.calls().link > 0 && fake.calls().map == 0);
        }
    }
}

#[test]
fn the_counter_sees_allocations() {
    let before = allocs();
    std::hint::black_box(vec![1u8; 100]);
    assert_eq!(allocs() - before, 1);
}
