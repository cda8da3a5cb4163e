//! Building a Scatter Gather List (SGL) for a command.
//!
//! Spec facts this code depends on (NVMe Base 2.0, 4.1.2):
//! - SGL Entry 1 in the command is either a Data Block descriptor (the whole
//!   transfer is one range: the coalesced case costs no descriptor page) or
//!   a Segment / Last Segment descriptor pointing to an SGL segment in memory.
//! - A segment is an array of 16-byte descriptors. In a Last Segment every
//!   descriptor describes data; in a (non-last) Segment the final descriptor
//!   instead points to the next segment, with type Last Segment if that one
//!   is the last.
//! - A segment descriptor's length is the byte length of the segment it
//!   points to.

use blk_dma::{DmaRange, MapError, RangeSink};

use super::desc::{DescList, DescPage, DescPool};
use super::error::DptrError;
use super::spec::{DataPtr, SglDescriptor, SglType};

/// A Data Block descriptor for a range, if its length fits.
#[inline]
pub(crate) fn data_block(r: DmaRange) -> Result<SglDescriptor, DptrError> {
    let len = u32::try_from(r.len).map_err(|_| DptrError::SglRangeTooLong { len: r.len })?;
    Ok(SglDescriptor::data(r.addr, len))
}

/// An SGL builder fed one range at a time ([`RangeSink`]).
#[derive(Debug)]
pub struct SglBuilder<'a, P: DescPool + ?Sized> {
    pool: &'a mut P,
    list: &'a mut DescList,
    per_page: usize,
    /// Descriptors pushed so far.
    count: usize,
    /// The first data descriptor, kept inline until a second one arrives.
    first: SglDescriptor,
    /// The segment being filled and its next free slot.
    cur: Option<DescPage>,
    idx: usize,
    /// The last data descriptor written, to move when a segment fills up.
    last: SglDescriptor,
    /// Where the descriptor pointing at `cur` lives: SGL1 (`None`) or the
    /// last slot of the previous segment.
    pointer: Option<DescPage>,
    sgl1: SglDescriptor,
}

impl<'a, P: DescPool + ?Sized> SglBuilder<'a, P> {
    /// A builder taking segment pages from `pool` into `list` (which must be
    /// empty).
    #[inline]
    pub fn new(pool: &'a mut P, list: &'a mut DescList) -> Result<Self, DptrError> {
        let per_page = pool.page_size() / 16;
        if per_page < 2 {
            return Err(DptrError::DescPageTooSmall {
                pool: pool.page_size(),
                page: 32,
            });
        }
        Ok(Self {
            pool,
            list,
            per_page,
            count: 0,
            first: SglDescriptor::default(),
            cur: None,
            idx: 0,
            last: SglDescriptor::default(),
            pointer: None,
            sgl1: SglDescriptor::default(),
        })
    }

    /// Starts a new segment page for descriptor `d` when the current one is
    /// full (or for the second descriptor, when there is none yet).
    #[cold]
    fn next_segment(&mut self, d: SglDescriptor) -> Result<(), DptrError> {
        let next = self.list.alloc(self.pool)?;
        match self.cur {
            None => {
                // SAFETY: slots 0 and 1 of a fresh page of this command, not
                // submitted yet.
                unsafe {
                    next.write_16(0, self.first.to_bytes());
                    next.write_16(1, d.to_bytes());
                }
                self.idx = 2;
            }
            Some(full) => {
                // The full segment's last slot becomes the pointer to the new
                // one, and the data descriptor there moves over.
                let seg =
                    SglDescriptor::new(SglType::Segment, full.iova(), (self.per_page * 16) as u32);
                match self.pointer {
                    None => self.sgl1 = seg,
                    // SAFETY: the last slot of this command's previous page.
                    Some(p) => unsafe { p.write_16(self.per_page - 1, seg.to_bytes()) },
                }
                // SAFETY: slots 0 and 1 of a fresh page of this command.
                unsafe {
                    next.write_16(0, self.last.to_bytes());
                    next.write_16(1, d.to_bytes());
                }
                self.pointer = Some(full);
                self.idx = 2;
            }
        }
        self.cur = Some(next);
        Ok(())
    }

    /// SGL Entry 1, once every range is pushed.
    pub fn finish(mut self) -> Result<DataPtr, DptrError> {
        match (self.count, self.cur) {
            (0, _) => Err(DptrError::EmptyTransfer),
            (1, _) | (_, None) => Ok(DataPtr::Sgl(self.first)),
            (_, Some(cur)) => {
                let tail =
                    SglDescriptor::new(SglType::LastSegment, cur.iova(), (self.idx * 16) as u32);
                match self.pointer {
                    None => self.sgl1 = tail,
                    // SAFETY: the last slot of this command's previous page.
                    Some(p) => unsafe { p.write_16(self.per_page - 1, tail.to_bytes()) },
                }
                Ok(DataPtr::Sgl(self.sgl1))
            }
        }
    }
}

impl<P: DescPool + ?Sized> RangeSink for SglBuilder<'_, P> {
    type Error = DptrError;

    #[inline(always)]
    fn push(&mut self, r: DmaRange) -> Result<(), DptrError> {
        let d = data_block(r)?;
        self.count += 1;
        if self.count == 1 {
            self.first = d;
            return Ok(());
        }
        match self.cur {
            Some(cur) if self.idx < self.per_page => {
                // SAFETY: idx < per_page, inside this command's page, not
                // submitted yet.
                unsafe { cur.write_16(self.idx, d.to_bytes()) };
                self.idx += 1;
            }
            _ => self.next_segment(d)?,
        }
        self.last = d;
        Ok(())
    }
}

/// Builds SGL Entry 1 (and SGL segments taken from `pool` into `list`) for
/// the ranges of one transfer, in order. `list` must be empty.
///
/// One range gives an inline Data Block descriptor and takes no page. On
/// error every page taken is back in the pool; the caller still owns (and
/// must unmap) the ranges' DMA state.
pub fn build_sgl<I, P>(ranges: I, pool: &mut P, list: &mut DescList) -> Result<DataPtr, DptrError>
where
    I: IntoIterator<Item = Result<DmaRange, MapError>>,
    P: DescPool + ?Sized,
{
    let start = list.len();
    let r = SglBuilder::new(pool, list).and_then(|mut b| {
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
