//! Choosing PRP or SGL for a request, and building its data pointer.
//!
//! The rule follows the Linux NVMe PCI driver: admin commands always use
//! PRPs; an I/O command uses an SGL when the controller supports SGLs on I/O
//! queues and either its ranges break PRP's page-alignment rule (only an SGL
//! can describe them) or their average size is at least a threshold (one
//! descriptor per range beats one entry per page); PRPs otherwise.

use blk_dma::{Direction, DmaIter, DmaRange, DmaState, HostSeg, Iova, MapError, Mapper};

use super::desc::{DescList, DescPool};
use super::error::DptrError;
use super::prp::{build_prp, prp_in_region, prp_in_region_page, prp_simple, PrpBuilder};
use super::sgl::{build_sgl, data_block, SglBuilder};
use super::spec::{DataPtr, PageSize};

/// The Linux driver's default `sgl_threshold`: 32 KiB.
pub const DEFAULT_SGL_THRESHOLD: u64 = 32 * 1024;

/// Which queue a command goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum QueueKind {
    /// The admin queue: PRPs only.
    Admin,
    /// An I/O queue.
    Io,
}

/// How a transfer's data pointer is described.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    /// Physical Region Page entries.
    Prp,
    /// A Scatter Gather List.
    Sgl,
}

/// What the policy needs to know about a request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Shape {
    /// Number of ranges (segments) in the request.
    pub ranges: usize,
    /// Total bytes.
    pub len: u64,
    /// Whether PRPs can describe it: the first range starts dword aligned and
    /// every interior boundary is on a controller page boundary.
    pub prp_ok: bool,
}

impl Shape {
    /// The shape of a request that blk-dma coalesced into one range.
    pub fn coalesced(range: DmaRange) -> Self {
        Self {
            ranges: 1,
            len: range.len,
            prp_ok: range.addr.raw() & 3 == 0,
        }
    }

    /// The shape of a request from its host segments. Mappers preserve the
    /// offset within a page (blk-dma's `Mapper` contract), so host alignment
    /// is device alignment.
    pub fn of_segments(segs: &[HostSeg], page: PageSize) -> Self {
        let mask = page.bytes() - 1;
        let Some(first) = segs.first() else {
            return Self {
                ranges: 0,
                len: 0,
                prp_ok: false,
            };
        };
        // Every interior boundary: the end of one segment and the start of
        // the next, or-ed together, must be page aligned.
        let mut gaps = 0;
        let mut len = first.len;
        let mut prev_end = first.addr.raw_u64().wrapping_add(first.len);
        for s in &segs[1..] {
            let start = s.addr.raw_u64();
            gaps |= prev_end | start;
            prev_end = start.wrapping_add(s.len);
            len = len.saturating_add(s.len);
        }
        Self {
            ranges: segs.len(),
            len,
            prp_ok: first.addr.raw_u64() & 3 == 0 && gaps & mask == 0,
        }
    }
}

/// The PRP/SGL choice for one controller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Policy {
    /// Whether the controller supports SGLs for I/O commands (Identify
    /// Controller SGLS bits 1:0 non-zero).
    pub io_sgls: bool,
    /// Average range size from which SGLs are preferred; 0 disables the
    /// size rule (SGLs only when PRPs cannot describe the request).
    pub sgl_threshold: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            io_sgls: false,
            sgl_threshold: DEFAULT_SGL_THRESHOLD,
        }
    }
}

impl Policy {
    /// Chooses the format for a request of `shape` on `queue`.
    pub fn choose(&self, queue: QueueKind, shape: Shape) -> Format {
        if queue == QueueKind::Admin || !self.io_sgls {
            return Format::Prp;
        }
        if !shape.prp_ok {
            return Format::Sgl;
        }
        // avg = len / ranges >= threshold, without a division.
        let avg_reaches = shape.len >= self.sgl_threshold.saturating_mul(shape.ranges as u64);
        if self.sgl_threshold != 0 && avg_reaches {
            Format::Sgl
        } else {
            Format::Prp
        }
    }
}

/// Builds the data pointer in `format` from the ranges of one transfer.
pub fn build<I, P>(
    format: Format,
    ranges: I,
    page: PageSize,
    pool: &mut P,
    list: &mut DescList,
) -> Result<DataPtr, DptrError>
where
    I: IntoIterator<Item = Result<DmaRange, MapError>>,
    P: DescPool + ?Sized,
{
    match format {
        Format::Prp => build_prp(ranges, page, pool, list),
        Format::Sgl => build_sgl(ranges, pool, list),
    }
}

/// What [`map_data`] needs besides the request: the controller's rules and
/// the command's descriptor resources.
#[derive(Debug)]
pub struct Setup<'a, P: DescPool + ?Sized> {
    /// PRP or SGL choice.
    pub policy: Policy,
    /// The queue the command goes to.
    pub queue: QueueKind,
    /// Controller page size (CC.MPS).
    pub page: PageSize,
    /// Where PRP list and SGL segment pages come from.
    pub pool: &'a mut P,
    /// The command's descriptor pages (empty on entry).
    pub list: &'a mut DescList,
}

/// Maps a request's segments and builds its data pointer: the I/O path's
/// whole host-side setup, like the kernel's `nvme_map_data`.
///
/// A request in registered or device memory takes a short path when its
/// first segment is in the region the mapper found last
/// ([`Mapper::lookup_cached`], no search and no call): for a single segment
/// an inline SGL data block or PRP1/PRP2, and for a scattered request of
/// whole pages from that region its PRPs, translated and written in one
/// pass into one list page (no iterator, no state to undo). Everything
/// else goes out of line: a full lookup (which the next request's cache
/// check then hits), the one-pass path for chained list pages, or the
/// ranges streamed from blk-dma into the chosen builder.
///
/// On error nothing stays mapped and every descriptor page it took is back
/// in the pool. On success `state` and `setup.list` hold what the completion must
/// release ([`DmaState::unmap`], [`DescList::release`]).
#[inline]
pub fn map_data<M, P>(
    segs: &[HostSeg],
    dir: Direction,
    mapper: &M,
    state: &mut DmaState,
    setup: Setup<'_, P>,
) -> Result<DataPtr, DptrError>
where
    M: Mapper + ?Sized,
    P: DescPool + ?Sized,
{
    if let [seg] = segs {
        return map_one(*seg, dir, mapper, state, setup);
    }
    // Taken apart so that the short path does not build the struct in
    // memory; the general path gets it back.
    let Setup {
        policy,
        queue,
        page,
        pool,
        list,
    } = setup;
    map_data_general(segs, dir, mapper, state, (policy, queue, page), pool, list)
}

/// The PRP/SGL choice of a request of `ranges` ranges in a region, as
/// [`prp_in_region_page`] and [`prp_in_region`] ask it: whether PRPs are
/// chosen for `len` bytes. Those only succeed when PRPs can describe the
/// request, and host alignment is device alignment in the regions they
/// accept, so this is the shape the general path would see.
#[inline(always)]
fn prp_chosen(policy: Policy, queue: QueueKind, ranges: usize) -> impl Fn(u64) -> bool {
    move |len| {
        let shape = Shape {
            ranges,
            len,
            prp_ok: true,
        };
        policy.choose(queue, shape) == Format::Prp
    }
}

/// [`map_data`] for a request of one segment, the common case of a queue
/// pair's submission: the single-segment path inline, everything else
/// (cache miss, unregistered memory, splitting) out of line. Same contract
/// as [`map_data`].
#[inline(always)]
pub fn map_one<M, P>(
    seg: HostSeg,
    dir: Direction,
    mapper: &M,
    state: &mut DmaState,
    setup: Setup<'_, P>,
) -> Result<DataPtr, DptrError>
where
    M: Mapper + ?Sized,
    P: DescPool + ?Sized,
{
    let (policy, queue, page) = (setup.policy, setup.queue, setup.page);
    if let Some(dp) = map_cached(seg, mapper, state, policy, queue, page) {
        return Ok(dp);
    }
    map_one_uncached(seg, dir, mapper, state, setup)
}

/// [`map_one`] past [`map_cached`]: for a caller that tried [`map_cached`]
/// first and got `None`. Same contract as [`map_data`].
#[inline]
pub fn map_one_uncached<M, P>(
    seg: HostSeg,
    dir: Direction,
    mapper: &M,
    state: &mut DmaState,
    setup: Setup<'_, P>,
) -> Result<DataPtr, DptrError>
where
    M: Mapper + ?Sized,
    P: DescPool + ?Sized,
{
    let Setup {
        policy,
        queue,
        page,
        pool,
        list,
    } = setup;
    map_data_rest(
        &[seg],
        dir,
        mapper,
        state,
        (policy, queue, page),
        pool,
        list,
    )
}

/// The call-free head of [`map_one`]: the data pointer of one buffer in
/// registered or device memory that the mapper's last-region cache knows
/// ([`Mapper::lookup_cached`]), an inline SGL data block or PRP1/PRP2 when
/// it spans at most two controller pages, with nothing to release.
/// `None` when [`map_one`] has more to do (a cache miss, unregistered
/// memory, a longer buffer, an error to report, or a `state` that is not
/// empty): then call it, which decides the same way.
#[inline(always)]
pub fn map_cached<M: Mapper + ?Sized>(
    seg: HostSeg,
    mapper: &M,
    state: &DmaState,
    policy: Policy,
    queue: QueueKind,
    page: PageSize,
) -> Option<DataPtr> {
    if state.is_mapped() {
        return None;
    }
    map_single(seg, mapper, policy, queue, page)
}

/// [`map_data`] past the single-segment case: a scattered request from the
/// mapper's last region through [`prp_in_region_page`]; everything else
/// out of line ([`map_data_rest`]).
#[inline(always)]
fn map_data_general<M, P>(
    segs: &[HostSeg],
    dir: Direction,
    mapper: &M,
    state: &mut DmaState,
    (policy, queue, page): (Policy, QueueKind, PageSize),
    pool: &mut P,
    list: &mut DescList,
) -> Result<DataPtr, DptrError>
where
    M: Mapper + ?Sized,
    P: DescPool + ?Sized,
{
    if let ([first, _, ..], false) = (segs, state.is_mapped()) {
        let region = mapper.lookup_cached(first.addr);
        if region.contains(first.addr) {
            let chosen = prp_chosen(policy, queue, segs.len());
            if let Some(dp) = prp_in_region_page(segs, &region, page, pool, list, chosen) {
                return Ok(dp);
            }
        }
    }
    map_data_rest(segs, dir, mapper, state, (policy, queue, page), pool, list)
}

/// What [`map_data_general`] leaves: a scattered request in one region
/// that the mapper's cache did not know or that needs chained list pages,
/// through [`prp_in_region`]; everything else through blk-dma.
#[cold]
#[inline(never)]
fn map_data_rest<M, P>(
    segs: &[HostSeg],
    dir: Direction,
    mapper: &M,
    state: &mut DmaState,
    (policy, queue, page): (Policy, QueueKind, PageSize),
    pool: &mut P,
    list: &mut DescList,
) -> Result<DataPtr, DptrError>
where
    M: Mapper + ?Sized,
    P: DescPool + ?Sized,
{
    if let ([first, _, ..], false) = (segs, state.is_mapped()) {
        if let Some(region) = mapper.lookup(first.addr) {
            let chosen = prp_chosen(policy, queue, segs.len());
            if let Some(dp) = prp_in_region(segs, &region, page, pool, list, chosen) {
                return Ok(dp);
            }
        }
    }
    let setup = Setup {
        policy,
        queue,
        page,
        pool,
        list,
    };
    map_data_slow(segs, dir, mapper, state, setup)
}

/// One buffer in registered or device memory, found in the mapper's
/// last-region cache: an inline SGL data block, or PRP1/PRP2 when it spans
/// at most two controller pages. `None` sends it to the general path.
///
/// Decides as [`Policy::choose`] does for the shape of one range: PRPs for
/// a dword-aligned range below the SGL threshold (or when SGLs are off),
/// tested first with one comparison; an SGL data block otherwise, when
/// SGLs are on.
#[inline(always)]
fn map_single<M: Mapper + ?Sized>(
    seg: HostSeg,
    mapper: &M,
    policy: Policy,
    queue: QueueKind,
    page: PageSize,
) -> Option<DataPtr> {
    let r = mapper.lookup_cached(seg.addr).translate_whole(seg)?;
    let sgls = policy.io_sgls && queue == QueueKind::Io;
    // The longest range PRPs are chosen for: `threshold - 1` (a threshold
    // of 0 wraps: no size rule), any without SGLs.
    let prp_max = if sgls {
        policy.sgl_threshold.wrapping_sub(1)
    } else {
        u64::MAX
    };
    let a = r.addr.raw();
    if a & 3 == 0 && r.len <= prp_max {
        // PRP1 and the start of the next controller page; PRP2 addresses
        // that page if the range reaches it. Longer ranges need a list.
        // No wrap past 2^64: a region's device range does not wrap.
        let ps = page.bytes();
        let next = (a | (ps - 1)).wrapping_add(1);
        let end = a.wrapping_add(r.len);
        if end > next.wrapping_add(ps) {
            return None;
        }
        let prp2 = if end > next { next } else { 0 };
        return Some(DataPtr::Prp {
            prp1: r.addr,
            prp2: Iova::new(prp2),
        });
    }
    // Not dword aligned (only an SGL describes it) or past the threshold.
    if sgls {
        data_block(r).ok().map(DataPtr::Sgl)
    } else {
        None
    }
}

/// [`map_data`] through blk-dma's iterator and the builders.
#[inline(never)]
fn map_data_slow<M, P>(
    segs: &[HostSeg],
    dir: Direction,
    mapper: &M,
    state: &mut DmaState,
    setup: Setup<'_, P>,
) -> Result<DataPtr, DptrError>
where
    M: Mapper + ?Sized,
    P: DescPool + ?Sized,
{
    let start = setup.list.len();
    let it = DmaIter::start(segs, dir, mapper, state)?;
    let (format, single) = match it.single() {
        Some(r) => (
            setup.policy.choose(setup.queue, Shape::coalesced(r)),
            Some(r),
        ),
        None => (
            setup
                .policy
                .choose(setup.queue, Shape::of_segments(segs, setup.page)),
            None,
        ),
    };
    let Setup {
        page, pool, list, ..
    } = setup;
    let out = match (format, single) {
        (Format::Sgl, Some(r)) => data_block(r).map(DataPtr::Sgl),
        (Format::Sgl, None) => SglBuilder::new(&mut *pool, &mut *list).and_then(|mut b| {
            it.feed(&mut b)?;
            b.finish()
        }),
        (Format::Prp, single) => match single.and_then(|r| prp_simple(r, page)) {
            Some(dp) => Ok(dp),
            None => PrpBuilder::new(page, &mut *pool, &mut *list).and_then(|mut b| {
                it.feed(&mut b)?;
                b.finish()
            }),
        },
    };
    if out.is_err() {
        // SAFETY: the pages past `start` are the ones the builder took from
        // `pool`; nothing was submitted.
        unsafe { list.release_from(start, pool) };
        state.unmap(mapper);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::desc::HeapPool;
    use blk_dma::fake::FakeMapper;
    use blk_dma::{HostAddr, Iova};

    fn seg(a: usize, l: u64) -> HostSeg {
        HostSeg::new(HostAddr::new(a), l)
    }

    #[test]
    fn policy_follows_the_kernel_rule() {
        let p = Policy {
            io_sgls: true,
            sgl_threshold: DEFAULT_SGL_THRESHOLD,
        };
        let small = Shape::of_segments(
            &[seg(0x1000, 0x1000), seg(0x5000, 0x1000)],
            PageSize::DEFAULT,
        );
        assert!(small.prp_ok);
        assert_eq!(p.choose(QueueKind::Io, small), Format::Prp);
        let big = Shape::of_segments(
            &[seg(0x10000, 0x10000), seg(0x40000, 0x10000)],
            PageSize::DEFAULT,
        );
        assert_eq!(p.choose(QueueKind::Io, big), Format::Sgl);
        let gap = Shape::of_segments(&[seg(0x1000, 0x200), seg(0x5000, 0x200)], PageSize::DEFAULT);
        assert!(!gap.prp_ok);
        assert_eq!(p.choose(QueueKind::Io, gap), Format::Sgl);
        // Admin commands and controllers without SGLs: always PRP.
        assert_eq!(p.choose(QueueKind::Admin, gap), Format::Prp);
        let no = Policy {
            io_sgls: false,
            ..p
        };
        assert_eq!(no.choose(QueueKind::Io, big), Format::Prp);
        // Threshold 0 disables the size rule, not the alignment rule.
        let off = Policy {
            sgl_threshold: 0,
            ..p
        };
        assert_eq!(off.choose(QueueKind::Io, big), Format::Prp);
        assert_eq!(off.choose(QueueKind::Io, gap), Format::Sgl);
        // A coalesced request is one range: its size decides.
        let c = Shape::coalesced(DmaRange::new(Iova::new(0x1000), 0x20000));
        assert_eq!(p.choose(QueueKind::Io, c), Format::Sgl);
        let c = Shape::coalesced(DmaRange::new(Iova::new(0x1002), 0x200));
        assert!(!c.prp_ok);
        // Unaligned first segment.
        let s = Shape::of_segments(&[seg(0x1001, 0x10)], PageSize::DEFAULT);
        assert!(!s.prp_ok);
    }

    /// `map_data` for one segment, with the mapper's last-region cache
    /// cold or warm.
    fn one(
        seg: HostSeg,
        arena: HostAddr,
        warm: bool,
        policy: Policy,
        queue: QueueKind,
    ) -> Result<DataPtr, DptrError> {
        let fake = FakeMapper::with_iommu(4096);
        fake.register(arena, 1 << 21);
        let mut pool = HeapPool::new(4, 4096, |_, _| Iova::new(0xa000_0000)).unwrap();
        if warm {
            assert!(fake.lookup(seg.addr).is_some());
        }
        let (mut state, mut list) = (DmaState::new(), DescList::new());
        let setup = Setup {
            policy,
            queue,
            page: PageSize::DEFAULT,
            pool: &mut pool,
            list: &mut list,
        };
        let r = map_data(&[seg], Direction::ToDevice, &fake, &mut state, setup);
        // SAFETY: the list's pages come from `pool`; nothing was submitted.
        unsafe { list.release(&mut pool) };
        state.unmap(&fake);
        r
    }

    #[test]
    fn the_single_segment_short_path_decides_as_the_general_path() {
        let arena = HostAddr::new(0x7f00_0000_0000);
        let offs = [0, 2, 4, 0x800, 0xffc, 0x1000];
        let lens = [
            1, 0x800, 0xffc, 0x1000, 0x1004, 0x2000, 0x2001, 0x2004, 0x7fff, 0x8000, 0x8001,
            0x10_0000,
        ];
        let policies = [false, true].into_iter().flat_map(|io_sgls| {
            [0, 0x1000, DEFAULT_SGL_THRESHOLD].map(|sgl_threshold| Policy {
                io_sgls,
                sgl_threshold,
            })
        });
        for policy in policies {
            for queue in [QueueKind::Admin, QueueKind::Io] {
                for off in offs {
                    for len in lens {
                        let seg = HostSeg::new(arena.checked_add(0x1000 + off).unwrap(), len);
                        let cold = one(seg, arena, false, policy, queue);
                        let warm = one(seg, arena, true, policy, queue);
                        assert_eq!(warm, cold, "{policy:?} {queue:?} {off:#x}+{len:#x}");
                    }
                }
            }
        }
    }
}
