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

use blk_dma::{DmaRange, Iova, MapError, RangeSink};

use super::desc::{DescList, DescPage, DescPool};
use super::error::DptrError;
use super::spec::{DataPtr, PageSize};

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
                c.write_u64(self.per_page - 1, n.iova.raw());
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
            (Some(h), _) => h.iova.raw(),
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
    let r = PrpBuilder::new(page, pool, list).and_then(|mut b| {
        for r in ranges {
            b.push(r?)?;
        }
        b.finish()
    });
    if r.is_err() {
        list.release(pool);
    }
    r
}
