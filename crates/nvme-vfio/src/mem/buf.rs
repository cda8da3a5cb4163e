//! DMA buffers: pieces of the hugepage slabs, owned by the caller or by an
//! in-flight I/O, never both.

use core::ptr::NonNull;
use std::sync::Arc;

use blk_dma::{HostAddr, HostSeg, Iova};

use super::space::DmaSpace;

/// A buffer in DMA memory, already mapped for the device.
///
/// Whoever holds the `DmaBuf` owns its memory: an I/O takes the buffer by
/// value for as long as the device may access it and hands it back on
/// completion, so the slices this type gives out are never aliased by
/// device access. The memory returns to its slab on drop.
#[derive(Debug)]
pub struct DmaBuf {
    space: Arc<DmaSpace>,
    ptr: NonNull<u8>,
    iova: Iova,
    len: usize,
}

// SAFETY: a DmaBuf exclusively owns its piece of slab memory; moving it to
// another thread moves that ownership.
unsafe impl Send for DmaBuf {}
// SAFETY: shared access only reads through `&self` (as_slice).
unsafe impl Sync for DmaBuf {}

impl DmaBuf {
    pub(crate) fn new(space: Arc<DmaSpace>, ptr: NonNull<u8>, iova: Iova, len: usize) -> Self {
        Self {
            space,
            ptr,
            iova,
            len,
        }
    }

    /// Length in bytes (the requested length rounded up to 512).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never: buffers hold at least 512 bytes).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of the first byte.
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// Whether the buffer is memory of `space` (its IOVA means something
    /// only there).
    pub(crate) fn in_space(&self, space: &Arc<DmaSpace>) -> bool {
        Arc::ptr_eq(&self.space, space)
    }

    /// The host address of the first byte.
    pub fn host(&self) -> HostAddr {
        HostAddr::from_ptr(self.ptr.as_ptr())
    }

    /// The first `len` bytes as a request segment (the whole buffer if
    /// `len` is larger).
    pub fn seg(&self, len: usize) -> HostSeg {
        HostSeg::new(self.host(), len.min(self.len) as u64)
    }

    /// A raw pointer to the first byte, for memory the device accesses while
    /// the buffer is held (queue rings): such memory is only read and
    /// written through this pointer, with volatile accesses.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The contents. No I/O is in flight on a buffer its owner holds.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is slab memory owned by this buffer and
        // initialized (slabs are zero-filled anonymous memory); the device
        // does not access it while the caller holds the buffer.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The contents, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as for `as_slice`, and `&mut self` makes it exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for DmaBuf {
    fn drop(&mut self) {
        self.space.free_buf(self.ptr, self.len);
    }
}
