//! Copies to and from device memory (the controller memory buffer) in
//! aligned 8-byte accesses: one MMIO transaction per word, not per byte.
//!
//! A `memcpy` does not promise its access width: glibc's copies of a few
//! KiB use `rep movsb`, which on uncached memory (a BAR mapping) moves one
//! byte per bus transaction, 4,096 of them for 4 KiB. Here the width is
//! explicit: bytes only up to the first 8-byte boundary of device memory
//! and after the last one, aligned `u64` volatile accesses in between.
//! The host side (a Rust slice) is read and written unaligned.

/// How the copy touches device memory: volatile accesses for the real
/// thing; tests count them.
pub(crate) trait Access {
    /// Writes one byte of device memory.
    ///
    /// # Safety
    ///
    /// `p` is valid for a volatile write of one byte.
    unsafe fn write8(p: *mut u8, v: u8);
    /// Writes one aligned word of device memory.
    ///
    /// # Safety
    ///
    /// `p` is 8-byte aligned and valid for a volatile write of 8 bytes.
    unsafe fn write64(p: *mut u64, v: u64);
    /// Reads one byte of device memory.
    ///
    /// # Safety
    ///
    /// `p` is valid for a volatile read of one byte.
    unsafe fn read8(p: *const u8) -> u8;
    /// Reads one aligned word of device memory.
    ///
    /// # Safety
    ///
    /// `p` is 8-byte aligned and valid for a volatile read of 8 bytes.
    unsafe fn read64(p: *const u64) -> u64;
}

/// Volatile accesses, each a single load or store of its width.
pub(crate) struct Volatile;

impl Access for Volatile {
    #[inline(always)]
    unsafe fn write8(p: *mut u8, v: u8) {
        // SAFETY: the caller's promise.
        unsafe { p.write_volatile(v) }
    }
    #[inline(always)]
    unsafe fn write64(p: *mut u64, v: u64) {
        // SAFETY: the caller's promise.
        unsafe { p.write_volatile(v) }
    }
    #[inline(always)]
    unsafe fn read8(p: *const u8) -> u8 {
        // SAFETY: the caller's promise.
        unsafe { p.read_volatile() }
    }
    #[inline(always)]
    unsafe fn read64(p: *const u64) -> u64 {
        // SAFETY: the caller's promise.
        unsafe { p.read_volatile() }
    }
}

/// How a copy of `len` bytes at device address `addr` splits: bytes up
/// to the first 8-byte boundary, whole words, bytes after the last one.
fn split(addr: usize, len: usize) -> (usize, usize, usize) {
    let head = addr.wrapping_neg() % 8;
    if head >= len {
        return (len, 0, 0);
    }
    let words = (len - head) / 8;
    (head, words, len - head - words * 8)
}

/// Copies `src` to device memory at `dst`.
///
/// # Safety
///
/// `dst` is valid for volatile writes of `src.len()` bytes and does not
/// overlap `src`.
pub(crate) unsafe fn copy_to_device<A: Access>(dst: *mut u8, src: &[u8]) {
    let (head, words, tail) = split(dst as usize, src.len());
    for (i, &b) in src[..head].iter().enumerate() {
        // SAFETY: i < src.len(): inside the caller's range.
        unsafe { A::write8(dst.add(i), b) };
    }
    for (w, chunk) in src[head..head + words * 8].chunks_exact(8).enumerate() {
        let v = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
        // SAFETY: dst + head is 8-byte aligned (`split`), and the word
        // lies inside the caller's range.
        unsafe { A::write64(dst.add(head + w * 8).cast::<u64>(), v) };
    }
    let at = head + words * 8;
    for i in 0..tail {
        // SAFETY: at + i < src.len(): inside the caller's range.
        unsafe { A::write8(dst.add(at + i), src[at + i]) };
    }
}

/// Copies device memory at `src` into `dst`.
///
/// # Safety
///
/// `src` is valid for volatile reads of `dst.len()` bytes and does not
/// overlap `dst`.
pub(crate) unsafe fn copy_from_device<A: Access>(src: *const u8, dst: &mut [u8]) {
    let (head, words, tail) = split(src as usize, dst.len());
    for (i, b) in dst[..head].iter_mut().enumerate() {
        // SAFETY: i < dst.len(): inside the caller's range.
        *b = unsafe { A::read8(src.add(i)) };
    }
    for (w, chunk) in dst[head..head + words * 8].chunks_exact_mut(8).enumerate() {
        // SAFETY: src + head is 8-byte aligned (`split`), and the word
        // lies inside the caller's range.
        let v = unsafe { A::read64(src.add(head + w * 8).cast::<u64>()) };
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    let at = head + words * 8;
    for i in 0..tail {
        // SAFETY: at + i < dst.len(): inside the caller's range.
        dst[at + i] = unsafe { A::read8(src.add(at + i)) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// Every device access of the current test: (offset from the
        /// window's start, width in bytes, write).
        static SEEN: RefCell<Vec<(usize, usize, bool)>> = const { RefCell::new(Vec::new()) };
        static BASE: RefCell<usize> = const { RefCell::new(0) };
    }

    /// Volatile accesses that are also recorded.
    struct Counting;

    fn record(p: usize, width: usize, write: bool) {
        let base = BASE.with(|b| *b.borrow());
        SEEN.with(|s| s.borrow_mut().push((p - base, width, write)));
    }

    impl Access for Counting {
        unsafe fn write8(p: *mut u8, v: u8) {
            record(p as usize, 1, true);
            // SAFETY: the caller's promise.
            unsafe { Volatile::write8(p, v) }
        }
        unsafe fn write64(p: *mut u64, v: u64) {
            assert_eq!(p as usize % 8, 0, "a misaligned word");
            record(p as usize, 8, true);
            // SAFETY: the caller's promise.
            unsafe { Volatile::write64(p, v) }
        }
        unsafe fn read8(p: *const u8) -> u8 {
            record(p as usize, 1, false);
            // SAFETY: the caller's promise.
            unsafe { Volatile::read8(p) }
        }
        unsafe fn read64(p: *const u64) -> u64 {
            assert_eq!(p as usize % 8, 0, "a misaligned word");
            record(p as usize, 8, false);
            // SAFETY: the caller's promise.
            unsafe { Volatile::read64(p) }
        }
    }

    /// A window of "device memory" of at least `len` bytes and 16 more
    /// (8-byte aligned: `u64`s).
    fn window(len: usize) -> Vec<u64> {
        vec![0u64; len / 8 + 3]
    }

    fn take_seen() -> Vec<(usize, usize, bool)> {
        SEEN.with(|s| std::mem::take(&mut *s.borrow_mut()))
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A 4 KiB copy into and out of an aligned buffer is 512 word
    /// accesses and no byte access, each word once, in order.
    #[test]
    fn an_aligned_4k_copy_is_512_words() {
        let mut dev = window(4096);
        let base = dev.as_mut_ptr().cast::<u8>();
        BASE.with(|b| *b.borrow_mut() = base as usize);
        let src = pattern(4096, 1);
        // SAFETY: `dev` holds 4096 + 16 bytes; `src` is another allocation.
        unsafe { copy_to_device::<Counting>(base, &src) };
        let seen = take_seen();
        assert_eq!(seen.len(), 512, "one access per word");
        for (i, &(off, width, write)) in seen.iter().enumerate() {
            assert_eq!((off, width, write), (i * 8, 8, true));
        }
        let mut back = vec![0u8; 4096];
        // SAFETY: as above, reading.
        unsafe { copy_from_device::<Counting>(base, &mut back) };
        let seen = take_seen();
        assert_eq!(seen.len(), 512);
        assert!(seen.iter().all(|&(_, w, write)| w == 8 && !write));
        assert_eq!(back, src);
    }

    /// Any offset and length: bytes only before the first and after the
    /// last 8-byte boundary (at most 7 each), every byte touched exactly
    /// once, and the data right, with the bytes around left alone.
    #[test]
    fn any_offset_and_length_copies_exactly_with_at_most_14_byte_accesses() {
        // Fewer lengths under Miri, which interprets every access.
        let lens: &[usize] = if cfg!(miri) {
            &[0, 1, 7, 8, 9, 17, 100]
        } else {
            &[0, 1, 5, 7, 8, 9, 15, 16, 17, 63, 100, 511, 4000]
        };
        for at in 0..17 {
            for &len in lens {
                let mut dev = window(at + len);
                let size = dev.len() * 8;
                let base = dev.as_mut_ptr().cast::<u8>();
                BASE.with(|b| *b.borrow_mut() = base as usize);
                let src = pattern(len, at as u8);
                // SAFETY: at + len < the window's size.
                unsafe { copy_to_device::<Counting>(base.add(at), &src) };
                let seen = take_seen();
                let bytes = seen.iter().filter(|a| a.1 == 1).count();
                assert!(bytes <= 14, "at {at} len {len}: {bytes} byte accesses");
                let mut touched = vec![0u8; at + len];
                for &(off, width, _) in &seen {
                    if width == 8 {
                        assert_eq!(off % 8, 0);
                    }
                    for t in &mut touched[off..off + width] {
                        *t += 1;
                    }
                }
                assert!(touched[..at].iter().all(|&t| t == 0), "at {at} len {len}");
                assert!(touched[at..].iter().all(|&t| t == 1), "at {at} len {len}");
                // SAFETY: `dev` is not borrowed elsewhere; plain bytes.
                let raw = unsafe { std::slice::from_raw_parts(base, size) };
                assert!(raw[..at].iter().all(|&b| b == 0));
                assert_eq!(&raw[at..at + len], &src[..]);
                assert!(raw[at + len..].iter().all(|&b| b == 0));

                let mut back = vec![0xeeu8; len];
                // SAFETY: as above, reading.
                unsafe { copy_from_device::<Counting>(base.add(at), &mut back) };
                let seen = take_seen();
                assert!(seen.iter().filter(|a| a.1 == 1).count() <= 14);
                assert_eq!(back, src, "at {at} len {len}");
            }
        }
    }
}
