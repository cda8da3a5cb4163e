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

use blk_dma::{DmaRange, MapError};

use super::desc::{DescList, DescPage, DescPool};
use super::spec::{DataPtr, SglDescriptor, SglType};
use crate::error::Error;

/// A Data Block descriptor for a range, if its length fits.
#[inline]
fn data_block(r: DmaRange) -> Result<SglDescriptor, Error> {
    let len = u32::try_from(r.len).map_err(|_| Error::SglRangeTooLong { len: r.len })?;
    Ok(SglDescriptor::data(r.addr, len))
}

/// Builds SGL Entry 1 (and SGL segments taken from `pool` into `list`) for
/// the ranges of one transfer, in order. `list` must be empty.
///
/// One range gives an inline Data Block descriptor and takes no page. On
/// error every page taken is back in the pool; the caller still owns (and
/// must unmap) the ranges' DMA state.
pub fn build_sgl<I, P>(ranges: I, pool: &mut P, list: &mut DescList) -> Result<DataPtr, Error>
where
    I: IntoIterator<Item = Result<DmaRange, MapError>>,
    P: DescPool + ?Sized,
{
    let r = build(ranges.into_iter(), pool, list);
    if r.is_err() {
        list.release(pool);
    }
    r
}

#[inline]
fn build<I, P>(mut ranges: I, pool: &mut P, list: &mut DescList) -> Result<DataPtr, Error>
where
    I: Iterator<Item = Result<DmaRange, MapError>>,
    P: DescPool + ?Sized,
{
    let first = ranges.next().ok_or(Error::EmptyTransfer)??;
    let first = data_block(first)?;
    let Some(second) = ranges.next() else {
        return Ok(DataPtr::Sgl(first));
    };
    let second = data_block(second?)?;
    let per_page = pool.page_size() / 16;
    if per_page < 2 {
        return Err(Error::DescPageTooSmall {
            pool: pool.page_size(),
            page: 32,
        });
    }
    let mut cur = list.alloc(pool)?;
    // Every write below stays in slots < per_page, inside the page; the
    // pages belong to this command and are not submitted yet.
    // SAFETY: as just said.
    unsafe {
        cur.write_16(0, first.to_bytes());
        cur.write_16(1, second.to_bytes());
    }
    let mut idx = 2;
    let mut last = second;
    // Where the descriptor pointing at `cur` lives: SGL1 (None) or a slot in
    // the previous segment.
    let mut pointer: Option<DescPage> = None;
    let mut sgl1 = SglDescriptor::default();
    for r in ranges {
        let d = data_block(r?)?;
        if idx == per_page {
            // Segment full: its last slot becomes the pointer to a new
            // segment, and the data descriptor there moves to the new one.
            let next = list.alloc(pool)?;
            let full = SglDescriptor::new(SglType::Segment, cur.iova, (per_page * 16) as u32);
            match pointer {
                None => sgl1 = full,
                // SAFETY: as above.
                Some(p) => unsafe { p.write_16(per_page - 1, full.to_bytes()) },
            }
            // SAFETY: as above.
            unsafe { next.write_16(0, last.to_bytes()) };
            pointer = Some(cur);
            cur = next;
            idx = 1;
        }
        // SAFETY: as above.
        unsafe { cur.write_16(idx, d.to_bytes()) };
        idx += 1;
        last = d;
    }
    let tail = SglDescriptor::new(SglType::LastSegment, cur.iova, (idx * 16) as u32);
    match pointer {
        None => sgl1 = tail,
        // SAFETY: as above.
        Some(p) => unsafe { p.write_16(per_page - 1, tail.to_bytes()) },
    }
    Ok(DataPtr::Sgl(sgl1))
}
