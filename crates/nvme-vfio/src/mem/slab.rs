//! Anonymous memory for DMA: 2 MiB hugepages when the system has them,
//! ordinary 4 KiB pages otherwise.

use core::ptr::NonNull;
use std::io;

/// Size of a hugepage slab.
pub const HUGEPAGE: usize = 2 << 20;

/// An anonymous mapping, unmapped on drop.
///
/// Invariant: `ptr` is the start of a private anonymous mapping of `len`
/// bytes, page aligned, owned by this value.
#[derive(Debug)]
pub struct Slab {
    ptr: NonNull<u8>,
    len: usize,
    huge: bool,
}

// SAFETY: the mapping is plain memory owned by this value; access to its
// contents is coordinated by the allocator that hands out pieces of it.
unsafe impl Send for Slab {}
// SAFETY: as above; `Slab` itself exposes only its address and length.
unsafe impl Sync for Slab {}

impl Slab {
    /// Maps `len` bytes (a multiple of [`HUGEPAGE`]), from 2 MiB hugepages
    /// if `huge` and the system has enough free, else from 4 KiB pages.
    /// The memory is populated (faulted in) up front.
    pub fn new(len: usize, huge: bool) -> io::Result<Self> {
        if len == 0 || len % HUGEPAGE != 0 {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // Miri has no hugepages (its mmap takes no flags beyond
        // MAP_PRIVATE | MAP_ANONYMOUS): 4 KiB pages there.
        if huge && !cfg!(miri) {
            match Self::mmap(len, libc::MAP_HUGETLB | libc::MAP_HUGE_2MB) {
                Ok(ptr) => {
                    return Ok(Self {
                        ptr,
                        len,
                        huge: true,
                    })
                }
                Err(e) => log::warn!(
                    "no 2 MiB hugepages available ({e}); falling back to 4 KiB pages, \
                     which cost more IOMMU entries and TLB misses \
                     (scripts/setup-vfio.sh sets HUGEMEM)"
                ),
            }
        }
        let ptr = Self::mmap(len, 0)?;
        Ok(Self {
            ptr,
            len,
            huge: false,
        })
    }

    fn mmap(len: usize, extra: libc::c_int) -> io::Result<NonNull<u8>> {
        // Populated up front, except under Miri, whose mmap supports no
        // MAP_POPULATE (nor needs it: nothing there faults pages in).
        let populate = if cfg!(miri) { 0 } else { libc::MAP_POPULATE };
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | populate | extra;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable))
    }

    /// Start of the memory.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the slab is empty (never: slabs have at least one hugepage).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the memory comes from hugepages.
    pub fn is_huge(&self) -> bool {
        self.huge
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        // SAFETY: the mapping is owned by this value (type invariant) and no
        // longer used: every buffer and IOMMU mapping of it is gone first.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
