//! Descriptor pages: the DMA memory that holds PRP lists and SGL segments.
//!
//! A command's builder takes pages from a [`DescPool`] and records them in
//! the command's [`DescList`]; they go back to the pool when the command
//! completes. Pages are written through raw pointers only, before the command
//! is submitted; the device reads them afterwards and never writes them.

use core::ptr::NonNull;
use std::alloc::{self, Layout};

use blk_dma::{HostAddr, Iova};

use super::error::DptrError;

/// Descriptor pages one command may use: with 4 KiB pages, 8 PRP list pages
/// describe up to 16 MiB and 8 SGL segments up to 2,040 ranges.
pub const MAX_DESC_PAGES: usize = 8;

/// One page of descriptor memory: its device address and a host pointer to
/// write it through.
///
/// A `DescPage` is a handle: copying it copies no ownership. Only the
/// builders write through it, and only into pages they took from a pool
/// themselves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DescPage {
    iova: Iova,
    ptr: NonNull<u8>,
}

// SAFETY: a DescPage is a handle to pool memory that only its current owner
// (one command) writes; moving it to another thread moves that ownership.
unsafe impl Send for DescPage {}

impl DescPage {
    /// A page at host address `ptr`, which the device reads at `iova`.
    ///
    /// # Safety
    ///
    /// The page is for a [`DescPool`] to hand out: `ptr` must meet that
    /// trait's contract for the pool that hands the page out (valid for
    /// writes of the pool's page size, aligned to it, owned by whoever took
    /// the page until it is freed). `iova` must be where the device reads
    /// the same memory, or the device reads wrong descriptors.
    #[inline]
    pub const unsafe fn new(iova: Iova, ptr: NonNull<u8>) -> Self {
        Self { iova, ptr }
    }

    /// Device address of the page.
    #[inline]
    pub const fn iova(&self) -> Iova {
        self.iova
    }

    /// Host address of the page; valid for writes of the pool's page size
    /// while the page is taken, by its taker only.
    #[inline]
    pub const fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Writes a little-endian quadword at quadword index `i`.
    ///
    /// # Safety
    ///
    /// `(i + 1) * 8` must not exceed the pool's page size, the page must be
    /// allocated to the caller, and the device must not be reading it yet.
    #[inline]
    pub(crate) unsafe fn write_u64(&self, i: usize, v: u64) {
        // SAFETY: in bounds and exclusively owned per the caller's contract;
        // the page is 8-byte aligned (pool pages are aligned to their size,
        // a power of two of at least 8: `DescPool`'s contract).
        unsafe { self.ptr.cast::<u64>().add(i).write(v.to_le()) }
    }

    /// Writes 16 bytes at 16-byte slot `i`.
    ///
    /// # Safety
    ///
    /// As for [`write_u64`](Self::write_u64), with `(i + 1) * 16` bytes.
    #[inline]
    pub(crate) unsafe fn write_16(&self, i: usize, v: [u8; 16]) {
        // SAFETY: in bounds and exclusively owned per the caller's contract.
        unsafe { self.ptr.cast::<[u8; 16]>().add(i).write(v) }
    }
}

/// A source of descriptor pages.
///
/// The PRP and SGL builders write PRP entries and SGL descriptors into the
/// pages they take through raw pointers, trusting the pool's word on their
/// size: a pool is memory the builders write with no further check.
///
/// # Safety
///
/// An implementation promises, for as long as the pool lives:
///
/// - [`page_size`](Self::page_size) returns the same value at every call, a
///   power of two of at least 8 bytes. (The builders compare it once with
///   what they need, refusing smaller pages: a controller page for a PRP
///   list, 32 bytes for an SGL segment; they then write up to that many
///   bytes into every page they take, as 8-byte little-endian entries
///   through aligned writes and 16-byte descriptors.)
/// - Every page [`alloc`](Self::alloc) returns has a [`ptr`](DescPage::ptr)
///   valid for reads and writes of `page_size()` bytes and aligned to
///   `page_size()`, and that memory stays allocated while the page is
///   taken and the pool lives.
/// - A page [`alloc`](Self::alloc) returns belongs to the caller alone until
///   it comes back through [`free`](Self::free): the pool neither hands it
///   out again nor writes it before then, and no two pages overlap.
///
/// Not a safety matter, but what the device needs: a page's
/// [`iova`](DescPage::iova) is where the device reads the same memory, and
/// is aligned like the page (a PRP list must not cross a controller page).
pub unsafe trait DescPool {
    /// Size of each page in bytes.
    fn page_size(&self) -> usize;

    /// Takes a page, or `None` when the pool is empty.
    fn alloc(&mut self) -> Option<DescPage>;

    /// Returns a page taken from this pool.
    ///
    /// # Safety
    ///
    /// `page` was returned by this pool's [`alloc`](Self::alloc) and has not
    /// been freed since; its taker no longer writes it (and the device no
    /// longer needs it: the command completed or was never submitted).
    unsafe fn free(&mut self, page: DescPage);
}

/// The descriptor pages held by one command, without heap allocation.
#[derive(Debug, Default)]
pub struct DescList {
    pages: [Option<DescPage>; MAX_DESC_PAGES],
    len: usize,
}

impl DescList {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            pages: [None; MAX_DESC_PAGES],
            len: 0,
        }
    }

    /// Pages held, in chain order.
    pub fn pages(&self) -> impl Iterator<Item = DescPage> + '_ {
        self.pages[..self.len].iter().flatten().copied()
    }

    /// Number of pages held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no page is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes a page from `pool` and holds it.
    #[inline]
    pub(crate) fn alloc<P: DescPool + ?Sized>(
        &mut self,
        pool: &mut P,
    ) -> Result<DescPage, DptrError> {
        if self.len == MAX_DESC_PAGES {
            return Err(DptrError::TooManyDescPages {
                max: MAX_DESC_PAGES,
            });
        }
        let page = pool.alloc().ok_or(DptrError::DescPoolEmpty)?;
        self.pages[self.len] = Some(page);
        self.len += 1;
        Ok(page)
    }

    /// Takes a page from `pool` as the first page of an empty list: the
    /// one-page case of the I/O path, without the checks of
    /// [`alloc`](Self::alloc). `None` when the list is not empty or the
    /// pool is.
    #[inline]
    pub(crate) fn alloc_first<P: DescPool + ?Sized>(&mut self, pool: &mut P) -> Option<DescPage> {
        if self.len != 0 {
            return None;
        }
        let page = pool.alloc()?;
        self.pages[0] = Some(page);
        self.len = 1;
        Some(page)
    }

    /// Returns every page to `pool`. Call when the command has completed (or
    /// was never submitted).
    ///
    /// # Safety
    ///
    /// Every page the list holds was taken from `pool` (by a builder or
    /// [`map_data`](super::dptr::map_data) given this `pool` and this list),
    /// and the device no longer reads them: the command completed or was
    /// never submitted. Returning a page to another pool would let that
    /// pool hand out memory it does not own.
    #[inline]
    pub unsafe fn release<P: DescPool + ?Sized>(&mut self, pool: &mut P) {
        // Most commands hold none: one test, the loop out of line.
        if self.len != 0 {
            // SAFETY: the caller's contract.
            unsafe { self.release_pages(pool) };
        }
    }

    /// [`release`](Self::release) of a list that holds pages.
    ///
    /// # Safety
    ///
    /// As for [`release`](Self::release).
    #[inline(never)]
    unsafe fn release_pages<P: DescPool + ?Sized>(&mut self, pool: &mut P) {
        for slot in self.pages.iter_mut().take(self.len) {
            if let Some(p) = slot.take() {
                // SAFETY: taken from `pool` and done with (the caller's
                // contract); the list forgets it here, so it is freed once.
                unsafe { pool.free(p) };
            }
        }
        self.len = 0;
    }

    /// Returns the pages from position `start` on to `pool` and keeps the
    /// ones before: what a builder that fails gives back (the pages it took
    /// itself, whatever the list held on entry).
    ///
    /// # Safety
    ///
    /// Every page from position `start` on was taken from `pool`, and none
    /// of them was handed to the device.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn release_from<P: DescPool + ?Sized>(&mut self, start: usize, pool: &mut P) {
        for slot in self.pages.iter_mut().take(self.len).skip(start) {
            if let Some(p) = slot.take() {
                // SAFETY: taken from `pool` and never submitted (the
                // caller's contract); the list forgets it here.
                unsafe { pool.free(p) };
            }
        }
        self.len = self.len.min(start);
    }
}

/// A descriptor pool on ordinary heap memory, for tests, benchmarks and the
/// software controller. Its device addresses are whatever the creator says
/// the memory is mapped at (for example a region registered with a mapper).
#[derive(Debug)]
pub struct HeapPool {
    mem: NonNull<u8>,
    layout: Layout,
    page_size: usize,
    iova: Iova,
    free: Vec<DescPage>,
}

impl HeapPool {
    /// A pool of `pages` pages of `page_size` bytes (a power of two, at least
    /// 64). `iova_of` receives the host address and length of the memory and
    /// returns the device address it is mapped at.
    ///
    /// Returns `None` if the sizes are invalid or memory cannot be allocated.
    pub fn new(
        pages: usize,
        page_size: usize,
        iova_of: impl FnOnce(HostAddr, u64) -> Iova,
    ) -> Option<Self> {
        if !page_size.is_power_of_two() || page_size < 64 || pages == 0 {
            return None;
        }
        let layout = Layout::from_size_align(pages.checked_mul(page_size)?, page_size).ok()?;
        // SAFETY: the layout has a non-zero size.
        let mem = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })?;
        let iova = iova_of(HostAddr::from_ptr(mem.as_ptr()), layout.size() as u64);
        let free = (0..pages)
            .rev()
            .map(|i| {
                // SAFETY: i * page_size is inside the allocation, which is
                // aligned to page_size; the page meets `DescPool`'s
                // contract for this pool (see its impl).
                unsafe {
                    DescPage::new(
                        iova.wrapping_add((i * page_size) as u64),
                        mem.add(i * page_size),
                    )
                }
            })
            .collect();
        Some(Self {
            mem,
            layout,
            page_size,
            iova,
            free,
        })
    }

    /// Host address of the pool's memory.
    pub fn host(&self) -> HostAddr {
        HostAddr::from_ptr(self.mem.as_ptr())
    }

    /// Length of the pool's memory in bytes.
    pub fn len(&self) -> u64 {
        self.layout.size() as u64
    }

    /// Whether the pool has no memory (never: pools have at least one page).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Pages currently free.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Copies bytes out of the pool at device address `iova`, as the device
    /// would read them. Returns `false` if the range is outside the pool.
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> bool {
        let off = iova.raw().wrapping_sub(self.iova.raw());
        let fits = off
            .checked_add(buf.len() as u64)
            .is_some_and(|end| end <= self.len());
        if fits {
            // SAFETY: [off, off + len) is inside the allocation (checked), and
            // `buf` is a distinct Rust allocation.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    self.mem.as_ptr().add(off as usize),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
        }
        fits
    }
}

// SAFETY: `page_size` is fixed at creation, a power of two of at least 64
// (checked in `new`). The free list starts with the disjoint pages of the
// pool's own allocation, which is aligned to `page_size` and lives until the
// pool drops; a page leaves the list when taken and comes back only through
// `free`, whose contract says it was taken from this pool. The pool never
// writes its memory after `new` (`read` only reads, through `&self`, while
// no builder holds the pool).
unsafe impl DescPool for HeapPool {
    fn page_size(&self) -> usize {
        self.page_size
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

impl Drop for HeapPool {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.mem.as_ptr(), self.layout) }
    }
}

// SAFETY: the pool owns its memory; the raw pointers in it are not shared
// with anything that outlives a move.
unsafe impl Send for HeapPool {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_page_of_an_empty_list_only() {
        let mut pool = HeapPool::new(2, 4096, |_, _| Iova::new(0xa000_0000)).unwrap();
        let mut list = DescList::new();
        let p = list.alloc_first(&mut pool).expect("a free page");
        assert_eq!(list.pages().collect::<Vec<_>>(), vec![p]);
        // Not empty any more: no second "first" page, nothing taken.
        assert_eq!(list.alloc_first(&mut pool), None);
        assert_eq!(pool.available(), 1);
        // SAFETY: the list's pages come from `pool`; nothing was submitted.
        unsafe { list.release(&mut pool) };
        assert_eq!(pool.available(), 2);
        // An empty pool.
        let a = list.alloc(&mut pool).unwrap();
        let mut other = DescList::new();
        let b = other.alloc_first(&mut pool).unwrap();
        assert_ne!(a, b);
        let mut third = DescList::new();
        assert_eq!(third.alloc_first(&mut pool), None);
        assert!(third.is_empty());
        // SAFETY: as above.
        unsafe {
            list.release(&mut pool);
            other.release(&mut pool);
        }
        assert_eq!(pool.available(), 2);
    }

    #[test]
    fn a_failing_builder_gives_back_only_the_pages_it_took() {
        use crate::nvme::prp::build_prp;
        use crate::nvme::spec::PageSize;
        use blk_dma::DmaRange;
        let mut a = HeapPool::new(2, 4096, |_, _| Iova::new(0xa000_0000)).unwrap();
        let mut b = HeapPool::new(2, 4096, |_, _| Iova::new(0xb000_0000)).unwrap();
        let mut list = DescList::new();
        // Three pages: PRP1 and a list page from `a`.
        let three = DmaRange::new(Iova::new(0x1000), 0x3000);
        build_prp([Ok(three)], PageSize::DEFAULT, &mut a, &mut list).unwrap();
        let held: Vec<_> = list.pages().collect();
        assert_eq!((held.len(), a.available()), (1, 1));
        // Into the same (non-empty) list from `b`: a list page is taken,
        // then a range that is not page aligned fails the build.
        let gap = DmaRange::new(Iova::new(0x9008), 0x10);
        let r = build_prp([Ok(three), Ok(gap)], PageSize::DEFAULT, &mut b, &mut list);
        assert!(r.is_err());
        assert_eq!(b.available(), 2);
        assert_eq!(list.pages().collect::<Vec<_>>(), held);
        // SAFETY: the list's one page comes from `a`; nothing was submitted.
        unsafe { list.release(&mut a) };
        assert_eq!(a.available(), 2);
    }
}
