//! Building Physical Region Page (PRP) entries for a command.
//!
//! Spec facts this code depends on (NVMe Base 2.0, 4.1.1):
//! - PRP1 is the only entry that may have a non-zero offset in its page; the
//!   offset must be dword aligned.
//! - Every later entry addresses a whole controller page (offset zero), so
//!   every range boundary inside the transfer must fall on a page boundary.
//! - If the data after PRP1's page fits in one more page, PRP2 addresses that
//!   page; otherwise PRP2 points to a PRP list.
//! - A PRP list fills one controller page; when more entries are needed, the
//!   last entry of the page points to the next list page instead.

mod interior;

use blk_dma::{DmaRange, HostSeg, Iova, MapError, RangeSink, Region};

use super::desc::{DescList, DescPage, DescPool};
use super::error::DptrError;
use super::spec::{DataPtr, PageSize};
use interior::{fill_interior, interior_inside};

/// PRP1/PRP2 for a single range spanning at most two controller pages (no
/// list needed), or `None` when it needs the general builder (more pages,
/// or a PRP1 that is not dword aligned, which the builder reports).
#[inline]
pub fn prp_simple(r: DmaRange, page: PageSize) -> Option<DataPtr> {
    let ps = page.bytes();
    let a = r.addr.raw();
    let second = (a & !(ps - 1)) + ps;
    let end = a.checked_add(r.len)?;
    if a & 3 != 0 || r.len == 0 || end > second + ps {
        return None;
    }
    let prp2 = if end > second { second } else { 0 };
    Some(DataPtr::Prp {
        prp1: r.addr,
        prp2: Iova::new(prp2),
    })
}

/// A PRP builder fed one range at a time ([`RangeSink`]); entries after
/// PRP1 go to PRP2 while there is one, then to list pages chained as they
/// fill.
#[derive(Debug)]
pub struct PrpBuilder<'a, P: DescPool + ?Sized> {
    pool: &'a mut P,
    list: &'a mut DescList,
    ps: u64,
    per_page: usize,
    /// Ranges pushed so far.
    ranges: usize,
    prp1: Iova,
    /// End of the last range pushed.
    end: u64,
    /// The single entry after PRP1, while no list page is in use.
    first: Option<u64>,
    /// The list page being filled and the next free slot in it.
    cur: Option<DescPage>,
    idx: usize,
    /// The last entry written, to move when a page fills up.
    last: u64,
    /// The first list page, which PRP2 points to.
    head: Option<DescPage>,
}

impl<'a, P: DescPool + ?Sized> PrpBuilder<'a, P> {
    /// A builder for controller page size `page`, taking list pages from
    /// `pool` into `list` (which must be empty).
    #[inline]
    pub fn new(page: PageSize, pool: &'a mut P, list: &'a mut DescList) -> Result<Self, DptrError> {
        let ps = page.bytes();
        if pool.page_size() < ps as usize {
            return Err(DptrError::DescPageTooSmall {
                pool: pool.page_size(),
                page: ps as usize,
            });
        }
        Ok(Self {
            pool,
            list,
            ps,
            per_page: page.prps_per_page(),
            ranges: 0,
            prp1: Iova::new(0),
            end: 0,
            first: None,
            cur: None,
            idx: 0,
            last: 0,
            head: None,
        })
    }

    /// Appends the entries for the pages `[next, end)`, `next` page aligned.
    #[inline(always)]
    fn run(&mut self, mut next: u64, end: u64) -> Result<(), DptrError> {
        while next < end {
            match self.cur {
                Some(cur) if self.idx < self.per_page => {
                    // SAFETY: idx < per_page, inside a list page of at least
                    // a controller page (checked in `new`); the page belongs
                    // to this command and is not submitted yet.
                    unsafe { cur.write_u64(self.idx, next) };
                    self.idx += 1;
                }
                _ => {
                    if let Some(cur) = self.next_page(next)? {
                        // SAFETY: as above; next_page leaves idx < per_page.
                        unsafe { cur.write_u64(self.idx, next) };
                        self.idx += 1;
                    }
                }
            }
            self.last = next;
            next += self.ps;
        }
        Ok(())
    }

    /// Where entry `next` goes when the current page (if any) is full:
    /// `Ok(None)` when it becomes the single entry after PRP1; otherwise a
    /// list page with a free slot: a fresh page takes the single entry
    /// along (the first page) or the full page's last entry, whose slot
    /// becomes the chain pointer.
    #[cold]
    fn next_page(&mut self, next: u64) -> Result<Option<DescPage>, DptrError> {
        let moved = match (self.cur, self.first) {
            (None, None) => {
                self.first = Some(next);
                return Ok(None);
            }
            (None, Some(first)) => first,
            (Some(_), _) => self.last,
        };
        let n = self.list.alloc(self.pool)?;
        // SAFETY: slot 0 of a fresh page, and the last slot of the full one;
        // both pages belong to this command and are not submitted yet.
        unsafe {
            n.write_u64(0, moved);
            if let Some(c) = self.cur {
                c.write_u64(self.per_page - 1, n.iova().raw());
            }
        }
        if self.head.is_none() {
            self.head = Some(n);
        }
        self.cur = Some(n);
        self.idx = 1;
        Ok(Some(n))
    }

    /// The data pointer, once every range is pushed.
    pub fn finish(self) -> Result<DataPtr, DptrError> {
        if self.ranges == 0 {
            return Err(DptrError::EmptyTransfer);
        }
        let prp2 = match (self.head, self.first) {
            (Some(h), _) => h.iova().raw(),
            (None, Some(e)) => e,
            (None, None) => 0,
        };
        Ok(DataPtr::Prp {
            prp1: self.prp1,
            prp2: Iova::new(prp2),
        })
    }
}

impl<P: DescPool + ?Sized> RangeSink for PrpBuilder<'_, P> {
    type Error = DptrError;

    #[inline(always)]
    fn push(&mut self, r: DmaRange) -> Result<(), DptrError> {
        let mask = self.ps - 1;
        let a = r.addr.raw();
        if self.ranges == 0 {
            if r.len == 0 {
                return Err(DptrError::EmptyTransfer);
            }
            if a & 3 != 0 {
                return Err(DptrError::PrpMisaligned { addr: r.addr });
            }
            self.prp1 = r.addr;
            self.end = a + r.len;
            self.ranges = 1;
            return self.run((a & !mask) + self.ps, self.end);
        }
        if (self.end | a) & mask != 0 {
            return Err(DptrError::PrpGap {
                index: self.ranges,
                addr: r.addr,
            });
        }
        self.ranges += 1;
        self.end = a + r.len;
        self.run(a, self.end)
    }
}

/// Builds PRP1/PRP2 (and PRP list pages taken from `pool` into `list`) for
/// the ranges of one transfer, in order. `list` must be empty.
///
/// Fails with [`DptrError::PrpMisaligned`] or [`DptrError::PrpGap`] when the ranges
/// break PRP's alignment rules, with the mapping error when `ranges` yields
/// one, or when the pool runs dry. On error every page taken is back in the
/// pool; the caller still owns (and must unmap) the ranges' DMA state.
pub fn build_prp<I, P>(
    ranges: I,
    page: PageSize,
    pool: &mut P,
    list: &mut DescList,
) -> Result<DataPtr, DptrError>
where
    I: IntoIterator<Item = Result<DmaRange, MapError>>,
    P: DescPool + ?Sized,
{
    let start = list.len();
    let r = PrpBuilder::new(page, pool, list).and_then(|mut b| {
        for r in ranges {
            b.push(r?)?;
        }
        b.finish()
    });
    if r.is_err() {
        // SAFETY: the pages past `start` are the ones the builder took from
        // `pool`; nothing was submitted.
        unsafe { list.release_from(start, pool) };
    }
    r
}

/// Where a request's segments sit in one region, for building its PRPs in a
/// single pass: segment 0 (PRP1 and the rest of its pages), the interior
/// segments, and the last segment.
#[derive(Clone, Copy, Debug)]
struct RegionPrps {
    ps: u64,
    /// Device address of the first byte (PRP1).
    prp1: u64,
    /// Entries for the pages of segment 0 after PRP1's page.
    head: usize,
    /// Interior segments, one entry each.
    mid: usize,
    /// Device address of the last segment (page aligned).
    tail_addr: u64,
    /// Entries for the last segment.
    tail: usize,
    /// Host address of the first whole controller page of the region.
    host: u64,
    /// Its device address.
    dev: u64,
    /// Offset from `dev` of the last whole controller page of the region.
    lim: u64,
}

/// The device address of `seg` when it lies wholly inside `r` (and is not
/// empty).
#[inline(always)]
fn translate_in(r: &Region, seg: HostSeg) -> Option<u64> {
    r.translate_whole(seg).map(|d| d.addr.raw())
}

impl RegionPrps {
    /// The layout of `segs` (two or more) in `r`, or `None` when its first
    /// or last segment breaks a PRP rule or lies outside `r`, or when host
    /// and device addresses of `r` differ in their offset within a
    /// controller page (host alignment then says nothing about PRPs).
    /// Interior segments are assumed to be one controller page each, to be
    /// checked as they are translated ([`interior`]).
    #[inline(always)]
    fn new(segs: &[HostSeg], r: &Region, page: PageSize) -> Option<Self> {
        let ps = page.bytes();
        let mask = ps - 1;
        let (first, last) = (segs[0], segs[segs.len() - 1]);
        let delta = r.addr.raw().wrapping_sub(r.host.raw_u64());
        let prp1 = translate_in(r, first)?;
        let tail_addr = translate_in(r, last)?;
        // PRP1 dword aligned, every interior boundary on a page boundary.
        let end0 = prp1 + first.len;
        if delta & mask != 0 || prp1 & 3 != 0 || (end0 | tail_addr) & mask != 0 {
            return None;
        }
        // The region's whole controller pages: [dev, dev + lim + ps).
        let dev = r.addr.raw().checked_add(mask)? & !mask;
        let last_page = (r.addr.raw().checked_add(r.len)? & !mask).checked_sub(ps)?;
        let lim = last_page.checked_sub(dev).filter(|&l| l < 1 << 63)?;
        Some(Self {
            ps,
            prp1,
            head: ((end0 - (prp1 & !mask)) / ps - 1) as usize,
            mid: segs.len() - 2,
            tail_addr,
            tail: last.len.div_ceil(ps) as usize,
            host: dev.wrapping_sub(delta),
            dev,
            lim,
        })
    }

    /// PRP entries after PRP1.
    #[inline(always)]
    fn entries(&self) -> usize {
        self.head + self.mid + self.tail
    }

    /// Bytes of the request, if its interior segments are one page each.
    #[inline(always)]
    fn len(&self, segs: &[HostSeg]) -> Option<u64> {
        let mid = (self.mid as u64).checked_mul(self.ps)?;
        segs[0]
            .len
            .checked_add(segs[segs.len() - 1].len)?
            .checked_add(mid)
    }

    /// Writes all the request's entries into `out` (exactly
    /// [`entries`](Self::entries) long): segment 0's later pages, one per
    /// interior segment, the last segment's pages. Returns whether every
    /// interior segment qualified.
    #[inline(always)]
    fn write(&self, segs: &[HostSeg], out: &mut [u64]) -> bool {
        let (head, rest) = out.split_at_mut(self.head);
        let (mid, tail) = rest.split_at_mut(self.mid);
        let first_page = self.prp1 & !(self.ps - 1);
        let mut a = first_page;
        for o in head {
            a += self.ps;
            *o = a.to_le();
        }
        let mut acc = Checks::default();
        self.interior(&segs[1..segs.len() - 1], mid, &mut acc);
        let mut a = self.tail_addr;
        for o in tail {
            *o = a.to_le();
            a += self.ps;
        }
        acc.ok(self.ps)
    }

    /// Writes entries `[at, at + out.len())` of the request's entry stream
    /// (segment 0's later pages, one per interior segment, the last
    /// segment's pages) into `out`; interior segments are checked into
    /// `acc`.
    #[inline(always)]
    fn fill(&self, segs: &[HostSeg], at: usize, out: &mut [u64], acc: &mut Checks) {
        let end = at + out.len();
        let (mid_at, tail_at) = (self.head, self.head + self.mid);
        let first_page = self.prp1 & !(self.ps - 1);
        let (head, rest) = out.split_at_mut(end.min(mid_at).saturating_sub(at));
        for (i, o) in (at..).zip(head) {
            *o = (first_page + (i as u64 + 1) * self.ps).to_le();
        }
        let lo = at.max(mid_at);
        let (mid, tail) = rest.split_at_mut(end.min(tail_at).saturating_sub(lo));
        if !mid.is_empty() {
            let from = 1 + lo - mid_at;
            self.interior(&segs[from..from + mid.len()], mid, acc);
        }
        let lo = at.max(tail_at);
        for (i, o) in (lo - tail_at..).zip(tail) {
            *o = (self.tail_addr + i as u64 * self.ps).to_le();
        }
    }

    /// Translates interior segments into one entry each, with no branch:
    /// whether each one was a whole controller page inside the region is
    /// folded into `acc`, for [`Checks::ok`] once all are written.
    #[inline(always)]
    fn interior(&self, segs: &[HostSeg], out: &mut [u64], acc: &mut Checks) {
        for (s, o) in segs.iter().zip(out) {
            // Offset from the region's first whole page; valid offsets are
            // page multiples in [0, lim], so both `y` and `lim - y` stay
            // below 2^63 with their low bits clear.
            let y = s.addr.raw_u64().wrapping_sub(self.host);
            *o = y.wrapping_add(self.dev).to_le();
            acc.pos |= y | self.lim.wrapping_sub(y);
            acc.len |= s.len ^ self.ps;
        }
    }
}

/// What [`RegionPrps::interior`] folds its checks into.
#[derive(Clone, Copy, Default, Debug)]
struct Checks {
    pos: u64,
    len: u64,
}

impl Checks {
    /// Whether every interior segment was exactly one controller page,
    /// page aligned, inside the region.
    #[inline(always)]
    fn ok(&self, ps: u64) -> bool {
        self.len == 0 && self.pos & (1 << 63 | (ps - 1)) == 0
    }
}

/// PRPs for a request of two or more segments in registered or device
/// memory, translated and written in one pass: the I/O path's common case
/// of a scattered request from one DMA slab or registered buffer.
///
/// Applies when every segment lies in `region` (the region of segment 0),
/// host and device addresses of the region agree modulo the controller
/// page, PRP1 is dword aligned, every interior boundary is on a controller
/// page boundary, every interior segment is exactly one controller page,
/// and `prp_chosen` accepts the request's byte count (the caller's policy).
/// Then it returns the same data pointer and list pages as [`PrpBuilder`]
/// fed the translated ranges. Otherwise, or if the pool cannot supply the
/// list pages, it returns `None` with `list` as it was (empty) and the
/// caller takes the general path, which reports any error.
#[inline(always)]
pub(crate) fn prp_in_region<P: DescPool + ?Sized>(
    segs: &[HostSeg],
    region: &Region,
    page: PageSize,
    pool: &mut P,
    list: &mut DescList,
    prp_chosen: impl FnOnce(u64) -> bool,
) -> Option<DataPtr> {
    let l = RegionPrps::new(segs, region, page)?;
    if !prp_chosen(l.len(segs)?) {
        return None;
    }
    let n = l.entries();
    if n == 1 {
        // Two segments, one page after PRP1's: PRP2 addresses it.
        return Some(DataPtr::Prp {
            prp1: Iova::new(l.prp1),
            prp2: Iova::new(l.tail_addr),
        });
    }
    let per_page = page.prps_per_page();
    if pool.page_size() < l.ps as usize {
        return None;
    }
    let start = list.len();
    let first = list.alloc(pool).ok()?;
    let ok = if n <= per_page {
        // SAFETY: the page is this command's, not submitted yet, at least a
        // controller page (`per_page` entries) long and 8-byte aligned; no
        // other reference to it exists.
        let out = unsafe { core::slice::from_raw_parts_mut(first.ptr().as_ptr().cast::<u64>(), n) };
        l.write(segs, out)
    } else {
        fill_chained(&l, segs, first, per_page, pool, list)
    };
    if ok {
        Some(DataPtr::Prp {
            prp1: Iova::new(l.prp1),
            prp2: first.iova(),
        })
    } else {
        // SAFETY: the pages past `start` are the ones taken above from
        // `pool`; nothing was submitted.
        unsafe { list.release_from(start, pool) };
        None
    }
}

/// [`prp_in_region`] for the I/O path's common case, with its one-off work
/// cut down: a page-aligned region, every segment after the first exactly
/// one controller page, and entries that fit in one list page (up to 2 MiB
/// in 4 KiB pages). The first segment is checked once; the others are
/// translated by adding the region's host-to-device delta, and their
/// containment check is an OR of their offsets compared with the region's
/// bound once (checked segment by segment only when that OR exceeds the
/// bound, and their lengths one by one only when one is not a page: the
/// last one may be shorter); the list page is taken without
/// [`DescList::alloc`]'s checks. Returns what [`prp_in_region`] returns, or
/// `None` also for the requests it leaves to [`prp_in_region`] (a last
/// segment of more than a page, an unaligned region, more than one list
/// page).
#[inline(always)]
pub(crate) fn prp_in_region_page<P: DescPool + ?Sized>(
    segs: &[HostSeg],
    r: &Region,
    page: PageSize,
    pool: &mut P,
    list: &mut DescList,
    prp_chosen: impl FnOnce(u64) -> bool,
) -> Option<DataPtr> {
    let [first, rest @ ..] = segs else {
        return None;
    };
    let (ps, shift) = (page.bytes(), page.shift());
    let mask = ps - 1;
    let (host, dev) = (r.host.raw_u64(), r.addr.raw());
    let a0 = first.addr.raw_u64();
    // The first segment wholly inside the region, not empty.
    let o0 = a0.wrapping_sub(host);
    if o0 >= r.len || first.len.wrapping_sub(1) >= r.len - o0 {
        return None;
    }
    // Region and device base page aligned (so offsets in the region are
    // page offsets on both sides), PRP1 dword aligned, the first segment
    // ending on a page boundary.
    let end0 = a0 + first.len;
    if (host | dev | end0) & mask != 0 || a0 & 3 != 0 {
        return None;
    }
    // The region's whole pages are at offsets [0, lim]; there is one: the
    // first segment ends on a page boundary past `host`, inside.
    let lim = r.len - ps;
    // Entries after PRP1: the first segment's later pages, then one per
    // segment; at most one list page of them.
    let head = ((end0 >> shift) - (a0 >> shift) - 1) as usize;
    let n = head + rest.len();
    if n > page.prps_per_page() || rest.is_empty() {
        return None;
    }
    // No overflow: at most 512 pages of at most 2^27 bytes after the first.
    if !prp_chosen(((rest.len() as u64) << shift) + first.len) {
        return None;
    }
    let delta = dev.wrapping_sub(host);
    let prp1 = Iova::new(a0.wrapping_add(delta));
    if n == 1 {
        // Two segments, one page after PRP1's: PRP2 addresses it.
        let s = rest[0];
        let o = s.addr.raw_u64().wrapping_sub(host);
        let fits = o <= lim && o & mask == 0 && s.len.wrapping_sub(1) < ps;
        return fits.then(|| DataPtr::Prp {
            prp1,
            prp2: Iova::new(s.addr.raw_u64().wrapping_add(delta)),
        });
    }
    if pool.page_size() < ps as usize {
        return None;
    }
    let lp = list.alloc_first(pool)?;
    let out = lp.ptr().as_ptr().cast::<u64>();
    // SAFETY: the page is this command's, not submitted yet, at least a
    // controller page (`prps_per_page() >= n` entries) long and 8-byte
    // aligned, and nothing else refers to it; the two runs write entries
    // [0, head) and [head, n).
    let (pos, lens) = unsafe {
        fill_pages(out, head, (prp1.raw() & !mask) + ps, ps);
        fill_interior(rest, out.add(head), host, dev, ps)
    };
    // Every offset is at most the OR of all of them: within the bound, all
    // are. Past it, check each one.
    let inside = pos <= lim || interior_inside(rest, host, lim);
    if pos & mask == 0 && (lens == 0 || last_short(rest, ps)) && inside {
        Some(DataPtr::Prp {
            prp1,
            prp2: lp.iova(),
        })
    } else {
        // SAFETY: `alloc_first` took the list's only page from `pool` (it
        // refuses a list that holds any); nothing was submitted.
        unsafe { list.release(pool) };
        None
    }
}

/// Whether every segment is one page of `ps` bytes but the last, which is
/// not empty and at most a page (the slow half of [`prp_in_region_page`]'s
/// length check).
#[cold]
#[inline(never)]
fn last_short(segs: &[HostSeg], ps: u64) -> bool {
    match segs {
        [most @ .., last] => most.iter().all(|s| s.len == ps) && last.len.wrapping_sub(1) < ps,
        [] => false,
    }
}

/// Writes the entries of `count` consecutive pages from `first` at `out`.
///
/// # Safety
///
/// `out` is valid for writes of `count` u64s.
#[inline(always)]
unsafe fn fill_pages(out: *mut u64, count: usize, first: u64, ps: u64) {
    let mut a = first;
    for i in 0..count {
        // SAFETY: i < count, per the contract.
        unsafe { out.add(i).write(a.to_le()) };
        a = a.wrapping_add(ps);
    }
}

/// Writes the `l.entries()` entries into list pages starting with `cur`,
/// each full page's last slot pointing to the next page from `pool`.
/// Returns whether every interior segment qualified and the pool had the
/// pages.
#[inline(never)]
fn fill_chained<P: DescPool + ?Sized>(
    l: &RegionPrps,
    segs: &[HostSeg],
    mut cur: DescPage,
    per_page: usize,
    pool: &mut P,
    list: &mut DescList,
) -> bool {
    let n = l.entries();
    let mut acc = Checks::default();
    let mut at = 0;
    loop {
        // A page takes every remaining entry if they fit, else all but its
        // last slot, which points to the next page.
        let k = if n - at <= per_page {
            n - at
        } else {
            per_page - 1
        };
        // SAFETY: as in `prp_in_region`; `k <= per_page` entries fit.
        let out = unsafe { core::slice::from_raw_parts_mut(cur.ptr().as_ptr().cast::<u64>(), k) };
        l.fill(segs, at, out, &mut acc);
        at += k;
        if at == n {
            return acc.ok(l.ps);
        }
        let Ok(next) = list.alloc(pool) else {
            return false;
        };
        // SAFETY: the last slot of the full page, this command's.
        unsafe { cur.write_u64(per_page - 1, next.iova().raw()) };
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use blk_dma::{HostAddr, RegionKind};

    use super::*;
    use crate::nvme::desc::HeapPool;
    use crate::nvme::walk::{walk_prp, DeviceMemory};

    const HOST: usize = 0x7f00_0000_0000;
    const DEV: u64 = 0x10_0000_0000;
    const POOL_IOVA: u64 = 0xa000_0000;

    struct Mem<'a>(&'a HeapPool);

    impl DeviceMemory for Mem<'_> {
        fn read(&self, iova: Iova, buf: &mut [u8]) -> bool {
            self.0.read(iova, buf)
        }
    }

    /// A region of `len` bytes at `HOST + off`, device address `DEV + dev_off`.
    fn region(off: usize, len: u64, dev_off: u64) -> Region {
        Region {
            host: HostAddr::new(HOST + off),
            len,
            addr: Iova::new(DEV + dev_off),
            kind: RegionKind::Registered,
        }
    }

    fn seg(off: usize, len: u64) -> HostSeg {
        HostSeg::new(HostAddr::new(HOST + off), len)
    }

    /// What the general path builds: `PrpBuilder` fed each segment's
    /// translation, walked back; and the list pages it took.
    fn general(segs: &[HostSeg], r: &Region, page: PageSize) -> (DataPtr, Vec<DmaRange>, usize) {
        let mut pool =
            HeapPool::new(8, page.bytes() as usize, |_, _| Iova::new(POOL_IOVA)).unwrap();
        let mut list = DescList::new();
        let ranges = segs.iter().map(|&s| {
            assert!(r.contains(s.addr));
            Ok(r.translate(s.addr, s.len))
        });
        let dp = build_prp(ranges, page, &mut pool, &mut list).unwrap();
        let total = segs.iter().map(|s| s.len).sum();
        let DataPtr::Prp { prp1, prp2 } = dp else {
            unreachable!()
        };
        let walked = walk_prp(prp1, prp2, total, page, &Mem(&pool)).unwrap();
        (dp, walked, list.len())
    }

    /// The one-pass path, walked back the same way; `None` if it declined
    /// (then it must have left the pool and list as they were).
    fn fast(
        segs: &[HostSeg],
        r: &Region,
        page: PageSize,
    ) -> Option<(DataPtr, Vec<DmaRange>, usize)> {
        let mut pool =
            HeapPool::new(8, page.bytes() as usize, |_, _| Iova::new(POOL_IOVA)).unwrap();
        let mut list = DescList::new();
        let Some(dp) = prp_in_region(segs, r, page, &mut pool, &mut list, |_| true) else {
            assert!(list.is_empty());
            assert_eq!(pool.available(), 8);
            return None;
        };
        let total = segs.iter().map(|s| s.len).sum();
        let DataPtr::Prp { prp1, prp2 } = dp else {
            unreachable!()
        };
        let walked = walk_prp(prp1, prp2, total, page, &Mem(&pool)).unwrap();
        Some((dp, walked, list.len()))
    }

    /// The one-list-page path, walked back; `None` if it declined (then it
    /// must have left the pool and list as they were).
    fn fast_page(
        segs: &[HostSeg],
        r: &Region,
        page: PageSize,
    ) -> Option<(DataPtr, Vec<DmaRange>, usize)> {
        let mut pool =
            HeapPool::new(8, page.bytes() as usize, |_, _| Iova::new(POOL_IOVA)).unwrap();
        let mut list = DescList::new();
        let Some(dp) = prp_in_region_page(segs, r, page, &mut pool, &mut list, |_| true) else {
            assert!(list.is_empty());
            assert_eq!(pool.available(), 8);
            return None;
        };
        let total = segs.iter().map(|s| s.len).sum();
        let DataPtr::Prp { prp1, prp2 } = dp else {
            unreachable!()
        };
        let walked = walk_prp(prp1, prp2, total, page, &Mem(&pool)).unwrap();
        Some((dp, walked, list.len()))
    }

    /// Both one-pass paths agree with the general builder; the one-page
    /// path declines exactly the requests past one list page.
    /// What `prp_in_region_page` takes when the entries fit one list page:
    /// a page-aligned region, every segment after the first one page but
    /// the last, which is at most one.
    fn page_path_shape(segs: &[HostSeg], r: &Region, page: PageSize) -> bool {
        let ps = page.bytes();
        let aligned = (r.host.raw_u64() | r.addr.raw()) % ps == 0;
        let [_, most @ .., last] = segs else {
            return false;
        };
        aligned && most.iter().all(|s| s.len == ps) && last.len <= ps
    }

    fn same(segs: &[HostSeg], r: &Region, page: PageSize) -> usize {
        let got = fast(segs, r, page).expect("the one-pass path applies");
        let want = general(segs, r, page);
        assert_eq!(got, want);
        match fast_page(segs, r, page) {
            Some(p) => assert_eq!(p, want),
            None => assert!(
                want.2 > 1 || !page_path_shape(segs, r, page),
                "declined a request of its shape"
            ),
        }
        got.2
    }

    /// Every third page from `first`, `n` of them.
    fn pages(first: usize, n: usize, ps: usize) -> impl Iterator<Item = HostSeg> {
        (0..n).map(move |i| seg(first + 3 * i * ps, ps as u64))
    }

    #[test]
    fn scattered_pages_match_the_general_builder() {
        let p = PageSize::DEFAULT;
        let r = region(0, 64 << 20, 0);
        // Aligned first segment, interior pages, aligned last page: a list.
        let segs: Vec<_> = pages(0x1000, 32, 4096).collect();
        assert_eq!(same(&segs, &r, p), 1);
        // Unaligned (dword) first segment over two pages, last segment
        // ending mid-page.
        let mut segs = vec![seg(0x200, 0x1e00)];
        segs.extend(pages(0x10000, 5, 4096));
        segs.push(seg(0x40000, 0x1804));
        assert_eq!(same(&segs, &r, p), 1);
        // Whole pages and a short last segment: the one-page path takes it.
        let mut segs: Vec<_> = pages(0x1000, 8, 4096).collect();
        segs.push(seg(0x80000, 0x804));
        assert_eq!(same(&segs, &r, p), 1);
        assert!(fast_page(&segs, &r, p).is_some());
        // Two segments: PRP2 is data, no list page.
        assert_eq!(same(&[seg(0x800, 0x800), seg(0x9000, 0x10)], &r, p), 0);
        // Two segments needing a list (the first spans three pages).
        assert_eq!(same(&[seg(0x0, 0x3000), seg(0x9000, 0x10)], &r, p), 1);
    }

    #[test]
    fn long_requests_chain_list_pages_as_the_general_builder() {
        let p = PageSize::DEFAULT;
        let r = region(0, 64 << 20, 0);
        // 511, 512 and 513 entries after PRP1, then 1100 (three pages).
        for n in [512, 513, 514, 1101] {
            let segs: Vec<_> = pages(0, n, 4096).collect();
            let used = same(&segs, &r, p);
            assert_eq!(
                used,
                if n - 1 <= 512 {
                    1
                } else {
                    (n - 1 - 1).div_ceil(511)
                }
            );
        }
        // The first and last segments' pages straddle page boundaries too.
        let mut segs = vec![seg(0x100, 0x2000 - 0x100 + 0x1000 * 509)];
        segs.extend(pages(0x400_0000 / 2, 3, 4096));
        segs.push(seg(0x300_0000, 0x3123));
        same(&segs, &r, p);
    }

    #[test]
    fn larger_controller_pages() {
        let p = PageSize::new(16384).unwrap();
        let r = region(0, 64 << 20, 0x4000);
        let mut segs = vec![seg(0x3000, 0x1000)];
        segs.extend(pages(0x10_0000, 40, 16384));
        segs.push(seg(0x80_0000, 0x5000));
        same(&segs, &r, p);
        // Host and device offsets within a 16 KiB page differ: PRPs follow
        // device alignment, the policy host alignment; left to the general
        // path.
        let r = region(0, 64 << 20, 0x1000);
        assert!(fast(&segs, &r, p).is_none());
    }

    #[test]
    fn requests_it_declines() {
        let p = PageSize::DEFAULT;
        // Ends half way into a page.
        let r = region(0x1000, (1 << 20) - 0x800, 0);
        let base: Vec<_> = pages(0x1000, 8, 4096).collect();
        assert!(fast(&base, &r, p).is_some());
        let with = |i: usize, s: HostSeg| {
            let mut v = base.clone();
            v[i] = s;
            v
        };
        // An interior segment of two pages: the one-entry-per-segment loop
        // does not apply.
        assert!(fast(&with(3, seg(0x40000, 0x2000)), &r, p).is_none());
        // An interior segment that is not page aligned, or short.
        assert!(fast(&with(3, seg(0x40200, 0x1000)), &r, p).is_none());
        assert!(fast(&with(3, seg(0x40000, 0x800)), &r, p).is_none());
        // Empty segments.
        assert!(fast(&with(3, seg(0x40000, 0)), &r, p).is_none());
        assert!(fast(&with(7, seg(0x40000, 0)), &r, p).is_none());
        // A segment before the region, straddling its end, or past it.
        assert!(fast(&with(3, seg(0, 0x1000)), &r, p).is_none());
        assert!(fast(&with(3, seg(0x10_0000, 0x1000)), &r, p).is_none());
        assert!(fast(&with(3, seg(0x10_1000, 0x1000)), &r, p).is_none());
        assert!(fast(&with(3, seg(0x7fff_0000, 0x1000)), &r, p).is_none());
        assert!(fast(&with(0, seg(0x10_0800, 0x1000)), &r, p).is_none());
        assert!(fast(&with(7, seg(0x10_0000, 0x1001)), &r, p).is_none());
        // The first segment not ending on a page boundary; the last one not
        // starting on one; PRP1 not dword aligned.
        assert!(fast(&with(0, seg(0x1000, 0x800)), &r, p).is_none());
        assert!(fast(&with(7, seg(0x80800, 0x800)), &r, p).is_none());
        assert!(fast(&with(0, seg(0x1002, 0xffe)), &r, p).is_none());
    }

    #[test]
    fn one_page_path_declines_what_the_one_pass_path_declines() {
        let p = PageSize::DEFAULT;
        let r = region(0x1000, (1 << 20) - 0x800, 0);
        let base: Vec<_> = pages(0x1000, 8, 4096).collect();
        assert_eq!(fast_page(&base, &r, p), fast(&base, &r, p));
        let twisted = [
            (3, seg(0x40000, 0x2000)),
            (3, seg(0x40200, 0x1000)),
            (3, seg(0x40000, 0x800)),
            (3, seg(0x40000, 0)),
            (7, seg(0x40000, 0)),
            (3, seg(0, 0x1000)),
            (3, seg(0x10_0000, 0x1000)),
            (3, seg(0x10_1000, 0x1000)),
            (3, seg(0x7fff_0000, 0x1000)),
            (0, seg(0x10_0800, 0x1000)),
            (7, seg(0x10_0000, 0x1001)),
            (0, seg(0x1000, 0x800)),
            (7, seg(0x80800, 0x800)),
            (0, seg(0x1002, 0xffe)),
        ];
        for (i, s) in twisted {
            let mut v = base.clone();
            v[i] = s;
            assert!(fast_page(&v, &r, p).is_none(), "{i}: {s:?}");
        }
        // Host and device offsets within a 16 KiB page differ.
        let p16 = PageSize::new(16384).unwrap();
        let r16 = region(0, 64 << 20, 0x1000);
        let segs: Vec<_> = pages(0x10_0000, 4, 16384).collect();
        assert!(fast_page(&segs, &r16, p16).is_none());
    }

    #[test]
    fn offsets_past_the_or_bound_are_checked_one_by_one() {
        let p = PageSize::DEFAULT;
        // 12 MiB and a page: the OR of two offsets inside (8 MiB + 4 KiB
        // and 4 MiB) exceeds the last page's offset although both are
        // inside.
        let r = region(0, (12 << 20) + 0x1000, 0);
        let segs = [
            seg(0, 0x1000),
            seg((8 << 20) + 0x1000, 0x1000),
            seg(4 << 20, 0x1000),
            seg(12 << 20, 0x1000),
        ];
        assert_eq!(same(&segs, &r, p), 1);
        assert!(fast_page(&segs, &r, p).is_some());
        // One page past the end, and one before the start, are refused.
        let mut past = segs;
        past[2] = seg((12 << 20) + 0x1000, 0x1000);
        assert!(fast_page(&past, &r, p).is_none());
        let r = region(0x10_0000, (12 << 20) + 0x1000, 0);
        let mut before = segs.map(|s| seg(s.addr.raw() - HOST + 0x10_0000, s.len));
        before[1] = seg(0xf_f000, 0x1000);
        assert!(fast_page(&before, &r, p).is_none());
        before[1] = seg(0x10_0000 + (8 << 20), 0x1000);
        assert!(fast_page(&before, &r, p).is_some());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn pool_trouble_declines_and_returns_every_page() {
        let p = PageSize::DEFAULT;
        let r = region(0, 64 << 20, 0);
        let segs: Vec<_> = pages(0, 1101, 4096).collect();
        // Two pages where three are needed.
        let mut pool = HeapPool::new(2, 4096, |_, _| Iova::new(POOL_IOVA)).unwrap();
        let mut list = DescList::new();
        assert!(prp_in_region(&segs, &r, p, &mut pool, &mut list, |_| true).is_none());
        assert!(list.is_empty());
        assert_eq!(pool.available(), 2);
        // Pages smaller than a controller page.
        let mut small = HeapPool::new(4, 2048, |_, _| Iova::new(POOL_IOVA)).unwrap();
        assert!(prp_in_region(&segs[..4], &r, p, &mut small, &mut list, |_| true).is_none());
        // The policy declines: nothing taken.
        let mut pool = HeapPool::new(4, 4096, |_, _| Iova::new(POOL_IOVA)).unwrap();
        let mut seen = 0;
        let r2 = prp_in_region(&segs[..32], &r, p, &mut pool, &mut list, |len| {
            seen = len;
            false
        });
        assert!(r2.is_none());
        assert_eq!(seen, 32 * 4096);
        assert_eq!(pool.available(), 4);
    }
}
