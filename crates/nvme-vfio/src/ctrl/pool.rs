//! Descriptor pages (PRP lists, SGL segments) in DMA memory, one pool per
//! queue pair: no lock on the I/O path.

use core::ptr::NonNull;
use std::sync::Arc;

use crate::mem::{DmaBuf, DmaSpace};
use crate::nvme::desc::{DescPage, DescPool};
use crate::Error;

/// Descriptor page size: one 4 KiB controller page.
pub const DESC_PAGE: usize = 4096;

/// A fixed set of descriptor pages carved from one DMA buffer.
#[derive(Debug)]
pub struct DmaDescPool {
    /// Owns the memory; only reached through raw pointers in `free`
    /// (the device reads the pages while commands are in flight).
    _mem: DmaBuf,
    free: Vec<DescPage>,
    total: usize,
}

impl DmaDescPool {
    /// A pool of `pages` pages from `space`.
    pub fn new(space: &Arc<DmaSpace>, pages: usize) -> Result<Self, Error> {
        let len = pages
            .checked_mul(DESC_PAGE)
            .ok_or_else(|| Error::Invalid(format!("{pages} descriptor pages")))?;
        let mem = space.alloc(len)?;
        let base = mem.as_ptr();
        let free = (0..pages)
            .map(|i| {
                // SAFETY: i * DESC_PAGE is inside the buffer of at least
                // pages * DESC_PAGE bytes, which is 4 KiB aligned (DMA
                // buffers of 4 KiB and more are), so the page meets
                // `DescPool`'s contract (see the impl below).
                unsafe {
                    DescPage::new(
                        mem.iova().wrapping_add((i * DESC_PAGE) as u64),
                        NonNull::new_unchecked(base.add(i * DESC_PAGE)),
                    )
                }
            })
            .collect();
        Ok(Self {
            _mem: mem,
            free,
            total: pages,
        })
    }

    /// Pages currently free.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Pages in the pool.
    pub fn total(&self) -> usize {
        self.total
    }
}

// SAFETY: the page size is the constant DESC_PAGE, a power of two. The free
// list starts with the disjoint, DESC_PAGE-aligned pages of `_mem`, which
// the pool owns (no slice of it is ever made) and which lives as long as
// the pool; a page leaves the list when taken and comes back only through
// `free`, whose contract says it was taken from this pool.
unsafe impl DescPool for DmaDescPool {
    fn page_size(&self) -> usize {
        DESC_PAGE
    }

    #[inline]
    fn alloc(&mut self) -> Option<DescPage> {
        self.free.pop()
    }

    #[inline]
    unsafe fn free(&mut self, page: DescPage) {
        self.free.push(page);
    }
}
