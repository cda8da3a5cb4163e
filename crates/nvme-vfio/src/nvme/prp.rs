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

use blk_dma::{DmaRange, Iova, MapError};

use super::desc::{DescList, DescPage, DescPool};
use super::spec::{DataPtr, PageSize};
use crate::error::Error;

/// Writes PRP entries after PRP1, switching to a list on the second entry
/// and chaining list pages as they fill.
struct PrpWriter<'a, P: DescPool + ?Sized> {
    pool: &'a mut P,
    list: &'a mut DescList,
    per_page: usize,
    /// The single entry so far, while no list page is in use.
    first: Option<u64>,
    /// The list page being filled and the next free slot in it.
    cur: Option<DescPage>,
    idx: usize,
    /// The last entry written, to move when a page fills up.
    last: u64,
    /// The first list page, which PRP2 points to.
    head: Option<DescPage>,
}

impl<P: DescPool + ?Sized> PrpWriter<'_, P> {
    /// Appends the entries for the pages `[next, end)`, `next` page aligned.
    #[inline]
    fn run(&mut self, mut next: u64, end: u64, page: u64) -> Result<(), Error> {
        while next < end {
            let cur = match self.cur {
                Some(c) if self.idx < self.per_page => c,
                Some(c) => {
                    // Page full: its last slot becomes the pointer to the
                    // next page, and the entry that was there moves over.
                    let n = self.list.alloc(self.pool)?;
                    // SAFETY: slots 0 and per_page - 1 are inside pages of at
                    // least a controller page (checked in build_prp); both
                    // pages belong to this command and are not submitted yet.
                    unsafe {
                        n.write_u64(0, self.last);
                        c.write_u64(self.per_page - 1, n.iova.raw());
                    }
                    self.cur = Some(n);
                    self.idx = 1;
                    n
                }
                None => match self.first {
                    None => {
                        self.first = Some(next);
                        self.last = next;
                        next += page;
                        continue;
                    }
                    Some(first) => {
                        let n = self.list.alloc(self.pool)?;
                        // SAFETY: as above, slot 0.
                        unsafe { n.write_u64(0, first) };
                        self.head = Some(n);
                        self.cur = Some(n);
                        self.idx = 1;
                        n
                    }
                },
            };
            let room = (self.per_page - self.idx) as u64;
            let count = (end - next).div_ceil(page).min(room);
            for k in 0..count as usize {
                // SAFETY: idx + k < per_page: inside the page, as above.
                unsafe { cur.write_u64(self.idx + k, next) };
                next += page;
            }
            self.idx += count as usize;
            self.last = next - page;
        }
        Ok(())
    }
}

/// Builds PRP1/PRP2 (and PRP list pages taken from `pool` into `list`) for
/// the ranges of one transfer, in order. `list` must be empty.
///
/// Fails with [`Error::PrpMisaligned`] or [`Error::PrpGap`] when the ranges
/// break PRP's alignment rules, with the mapping error when `ranges` yields
/// one, or when the pool runs dry. On error every page taken is back in the
/// pool; the caller still owns (and must unmap) the ranges' DMA state.
pub fn build_prp<I, P>(
    ranges: I,
    page: PageSize,
    pool: &mut P,
    list: &mut DescList,
) -> Result<DataPtr, Error>
where
    I: IntoIterator<Item = Result<DmaRange, MapError>>,
    P: DescPool + ?Sized,
{
    let r = build(ranges.into_iter(), page, pool, list);
    if r.is_err() {
        list.release(pool);
    }
    r
}

#[inline]
fn build<I, P>(
    mut ranges: I,
    page: PageSize,
    pool: &mut P,
    list: &mut DescList,
) -> Result<DataPtr, Error>
where
    I: Iterator<Item = Result<DmaRange, MapError>>,
    P: DescPool + ?Sized,
{
    let ps = page.bytes();
    let mask = ps - 1;
    let first = ranges.next().ok_or(Error::EmptyTransfer)??;
    if first.len == 0 {
        return Err(Error::EmptyTransfer);
    }
    if first.addr.raw() & 3 != 0 {
        return Err(Error::PrpMisaligned { addr: first.addr });
    }
    if pool.page_size() < ps as usize {
        return Err(Error::DescPageTooSmall {
            pool: pool.page_size(),
            page: ps as usize,
        });
    }
    let mut w = PrpWriter {
        per_page: page.prps_per_page(),
        pool,
        list,
        first: None,
        cur: None,
        idx: 0,
        last: 0,
        head: None,
    };
    let mut end = first.addr.raw() + first.len;
    w.run((first.addr.raw() & !mask) + ps, end, ps)?;
    for (index, r) in (1..).zip(ranges) {
        let r = r?;
        if end & mask != 0 || r.addr.raw() & mask != 0 {
            return Err(Error::PrpGap {
                index,
                addr: r.addr,
            });
        }
        end = r.addr.raw() + r.len;
        w.run(r.addr.raw(), end, ps)?;
    }
    let prp2 = match (w.head, w.first) {
        (Some(h), _) => h.iova.raw(),
        (None, Some(e)) => e,
        (None, None) => 0,
    };
    Ok(DataPtr::Prp {
        prp1: first.addr,
        prp2: Iova::new(prp2),
    })
}
