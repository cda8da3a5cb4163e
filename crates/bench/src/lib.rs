//! Benchmark support: the request shapes measured, our map + build path, and
//! a scatterlist-style baseline doing the same job the way block drivers did
//! before the scatterlist-less DMA API.
//!
//! Both paths run over the same [`Fixture`]: one host arena, the same fake
//! IOMMU (contract checks off), the same descriptor pool and the same PRP/SGL
//! builders, so the difference measured is the mapping design alone.

pub mod perf;
pub mod sglist;

use std::alloc::{self, Layout};

use blk_dma::fake::FakeMapper;
use blk_dma::{Direction, DmaIter, DmaState, HostAddr, HostSeg};
use nvme_vfio::nvme::desc::{DescList, HeapPool};
use nvme_vfio::nvme::dptr::{self, Format, Policy, QueueKind, Setup, Shape};
use nvme_vfio::nvme::spec::{DataPtr, PageSize};
use nvme_vfio::nvme::DptrError;

pub use sglist::SgTable;

/// Size of the host arena requests are carved from.
pub const ARENA: usize = 16 << 20;

/// A request shape measured by the benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    /// Short name, as printed.
    pub name: &'static str,
    /// Number of segments.
    pub segments: usize,
    /// Bytes per segment.
    pub seg_len: usize,
    /// Whether the arena is registered (translated) or plain (coalesced
    /// through the IOMMU).
    pub registered: bool,
}

impl Case {
    /// Total bytes.
    pub const fn len(&self) -> usize {
        self.segments * self.seg_len
    }

    /// Whether the request is empty (never, for the cases below).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The request shapes: 4 KiB, 8 KiB, 128 KiB in 32 scattered 4 KiB
/// segments, 1 MiB in one segment; each from registered memory and from
/// unregistered memory behind an IOMMU.
pub const CASES: [Case; 8] = [
    Case {
        name: "4k-reg",
        segments: 1,
        seg_len: 4096,
        registered: true,
    },
    Case {
        name: "8k-reg",
        segments: 1,
        seg_len: 8192,
        registered: true,
    },
    Case {
        name: "128k-32seg-reg",
        segments: 32,
        seg_len: 4096,
        registered: true,
    },
    Case {
        name: "1m-reg",
        segments: 1,
        seg_len: 1 << 20,
        registered: true,
    },
    Case {
        name: "4k-iommu",
        segments: 1,
        seg_len: 4096,
        registered: false,
    },
    Case {
        name: "8k-iommu",
        segments: 1,
        seg_len: 8192,
        registered: false,
    },
    Case {
        name: "128k-32seg-iommu",
        segments: 32,
        seg_len: 4096,
        registered: false,
    },
    Case {
        name: "1m-iommu",
        segments: 1,
        seg_len: 1 << 20,
        registered: false,
    },
];

/// Looks a case up by name.
pub fn case(name: &str) -> Option<Case> {
    CASES.iter().copied().find(|c| c.name == name)
}

/// Everything one benchmark thread needs, built once.
#[derive(Debug)]
pub struct Fixture {
    arena: *mut u8,
    layout: Layout,
    /// The fake IOMMU both paths map through.
    pub mapper: FakeMapper,
    pool: HeapPool,
    state: DmaState,
    list: DescList,
    sg: SgTable,
    policy: Policy,
    /// The request's segments.
    pub segs: Vec<HostSeg>,
}

impl Fixture {
    /// A fixture for `case`. Segments of multi-segment cases are scattered
    /// (every third page), so nothing merges.
    pub fn new(case: Case) -> Self {
        let layout = Layout::from_size_align(ARENA, 4096).expect("arena layout");
        // SAFETY: non-zero size.
        let arena = unsafe { alloc::alloc_zeroed(layout) };
        assert!(!arena.is_null(), "out of memory");
        let mapper = FakeMapper::with_iommu(4096);
        mapper.set_strict(false);
        if case.registered {
            mapper.register(HostAddr::from_ptr(arena), ARENA as u64);
        }
        let pool = HeapPool::new(16, 4096, |h, l| mapper.register(h, l).addr).expect("pool");
        let stride = if case.segments > 1 {
            3 * case.seg_len
        } else {
            case.seg_len
        };
        let segs = (0..case.segments)
            .map(|i| {
                HostSeg::new(
                    HostAddr::new(arena as usize + i * stride),
                    case.seg_len as u64,
                )
            })
            .collect();
        Self {
            arena,
            layout,
            mapper,
            pool,
            state: DmaState::with_capacity(256),
            list: DescList::new(),
            sg: SgTable::with_capacity(256),
            policy: Policy {
                io_sgls: true,
                ..Policy::default()
            },
            segs,
        }
    }

    /// Ours: map through blk-dma, choose PRP or SGL, build; then release the
    /// descriptor pages and unmap, ready for the next request. Returns the
    /// data pointer built.
    #[inline(never)]
    pub fn ours(&mut self) -> DataPtr {
        let dp = self.ours_map_build().expect("map");
        // SAFETY: the list's pages come from `self.pool`; nothing was submitted to a device.
        unsafe { self.list.release(&mut self.pool) };
        self.state.unmap(&self.mapper);
        dp
    }

    /// Ours, the submission side only: map and build, as a driver calls it
    /// for the request's shape ([`ours_map_build_one`](Self::ours_map_build_one)
    /// or [`ours_map_build_many`](Self::ours_map_build_many)). Always
    /// inline: those two are what the instruction counts toggle on.
    #[inline(always)]
    pub fn ours_map_build(&mut self) -> Result<DataPtr, DptrError> {
        if self.segs.len() == 1 {
            let mut out = Err(DptrError::EmptyTransfer);
            self.ours_map_build_one(&mut out);
            out
        } else {
            self.ours_map_build_many()
        }
    }

    /// A one-segment request as the queue pair maps it ([`dptr::map_one`]):
    /// first [`dptr::map_cached`] (the call-free head), then
    /// [`dptr::map_one_uncached`] out of line; the result is stored in
    /// `out`, as a driver writes it into its command.
    #[inline(never)]
    pub fn ours_map_build_one(&mut self, out: &mut Result<DataPtr, DptrError>) {
        if let [seg] = self.segs[..] {
            let page = PageSize::DEFAULT;
            let (mapper, state) = (&self.mapper, &self.state);
            if let Some(dp) = dptr::map_cached(seg, mapper, state, self.policy, QueueKind::Io, page)
            {
                *out = Ok(dp);
                return;
            }
        }
        self.map_one_uncached_into(out)
    }

    /// [`dptr::map_one_uncached`] for the fixture's one segment, into `out`.
    #[inline(never)]
    fn map_one_uncached_into(&mut self, out: &mut Result<DataPtr, DptrError>) {
        let (segs, mapper, state, setup) = self.parts();
        *out = match segs {
            [seg] => dptr::map_one_uncached(*seg, Direction::FromDevice, mapper, state, setup),
            _ => Err(DptrError::EmptyTransfer),
        };
    }

    /// A request of several segments: [`dptr::map_data`].
    #[inline(never)]
    pub fn ours_map_build_many(&mut self) -> Result<DataPtr, DptrError> {
        self.map_data()
    }

    /// [`dptr::map_data`] for the fixture's request.
    #[inline(always)]
    fn map_data(&mut self) -> Result<DataPtr, DptrError> {
        let (segs, mapper, state, setup) = self.parts();
        dptr::map_data(segs, Direction::FromDevice, mapper, state, setup)
    }

    /// What the mapping calls take: the segments, the mapper, the state and
    /// the setup of an I/O queue with 4 KiB controller pages.
    #[inline(always)]
    fn parts(&mut self) -> (&[HostSeg], &FakeMapper, &mut DmaState, Setup<'_, HeapPool>) {
        let setup = Setup {
            policy: self.policy,
            queue: QueueKind::Io,
            page: PageSize::DEFAULT,
            pool: &mut self.pool,
            list: &mut self.list,
        };
        (&self.segs, &self.mapper, &mut self.state, setup)
    }

    /// The baseline: build a scatterlist table, map it entry by entry, then
    /// build PRPs or SGLs from the table; release and unmap likewise.
    #[inline(never)]
    pub fn baseline(&mut self) -> DataPtr {
        let dp = self.baseline_map_build();
        // SAFETY: the list's pages come from `self.pool`; nothing was submitted to a device.
        unsafe { self.list.release(&mut self.pool) };
        self.sg.unmap(&self.mapper);
        dp
    }

    /// The baseline, the submission side only: map and build.
    #[inline(never)]
    pub fn baseline_map_build(&mut self) -> DataPtr {
        self.sg.map(&self.segs, &self.mapper).expect("map sg");
        // Decided after mapping, like ours, so both build the same pointer.
        let shape = match self.sg.coalesced() {
            Some(r) => Shape::coalesced(r),
            None => Shape::of_segments(&self.segs, PageSize::DEFAULT),
        };
        let format = self.policy.choose(QueueKind::Io, shape);
        dptr::build(
            format,
            self.sg.dma_ranges(),
            PageSize::DEFAULT,
            &mut self.pool,
            &mut self.list,
        )
        .expect("build")
    }

    /// Which format our path picks for this case.
    pub fn format(&mut self) -> Format {
        match self.ours() {
            DataPtr::Prp { .. } => Format::Prp,
            DataPtr::Sgl(_) => Format::Sgl,
        }
    }

    /// Bytes of per-request mapping state ours keeps while the I/O is in
    /// flight: the `DmaState` plus any heap it uses for this request.
    pub fn ours_state_bytes(&mut self) -> usize {
        let it = DmaIter::start(
            &self.segs,
            Direction::FromDevice,
            &self.mapper,
            &mut self.state,
        )
        .expect("map");
        it.for_each(drop);
        let heap = size_of_val(self.state.mapped_segments());
        self.state.unmap(&self.mapper);
        size_of::<DmaState>() + heap
    }

    /// Bytes of per-request state the baseline keeps: its scatterlist.
    pub fn baseline_state_bytes(&mut self) -> usize {
        self.sg.map(&self.segs, &self.mapper).expect("map sg");
        let n = self.sg.state_bytes();
        self.sg.unmap(&self.mapper);
        n
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; nothing is mapped.
        unsafe { alloc::dealloc(self.arena, self.layout) }
    }
}
