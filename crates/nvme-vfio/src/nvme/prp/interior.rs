//! Translating the interior segments of a request in one region: one PRP
//! entry per segment, with the checks that every segment is one whole
//! controller page inside the region folded into two OR-accumulated words.
//! A scalar loop, SSE2 (part of every x86-64) and AVX2 (when the CPU has
//! it) variants.

use blk_dma::HostSeg;

/// Writes one entry per interior segment at `out`, its host address minus
/// `base` plus `dev_base`, with no branch. Returns the OR of the offsets
/// from `base` (page aligned and at most the region's bound when every
/// segment starts on a whole page of the region) and the OR of each length
/// minus `ps` (zero when every segment is one page).
///
/// # Safety
///
/// `out` is valid for writes of `mid.len()` u64s and does not overlap
/// `mid`.
#[inline(always)]
pub(super) unsafe fn fill_interior(
    mid: &[HostSeg],
    out: *mut u64,
    base: u64,
    dev_base: u64,
    ps: u64,
) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        // Worth a call from about eight segments on.
        if mid.len() >= 8 && has_avx2() {
            // SAFETY: the CPU has AVX2 and there are eight segments or more
            // (checked); the caller's contract.
            return unsafe { fill_interior_avx2(mid, out, base, dev_base, ps) };
        }
        // SAFETY: the caller's contract.
        unsafe { fill_interior_sse2(mid, out, base, dev_base, ps) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's contract.
    unsafe {
        fill_interior_scalar(mid, out, base, dev_base, ps)
    }
}

/// Whether the CPU has AVX2: 0 not known yet, 1 no, 2 yes. Read with one
/// comparison on the hot path (the standard library's cache takes two
/// tests).
#[cfg(target_arch = "x86_64")]
static AVX2: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Whether the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx2() -> bool {
    match AVX2.load(std::sync::atomic::Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => detect_avx2(),
    }
}

/// Asks the CPU whether it has AVX2 and remembers the answer.
#[cfg(target_arch = "x86_64")]
#[cold]
#[inline(never)]
fn detect_avx2() -> bool {
    let yes = std::arch::is_x86_feature_detected!("avx2");
    AVX2.store(1 + u8::from(yes), std::sync::atomic::Ordering::Relaxed);
    yes
}

/// [`fill_interior`] one segment at a time.
///
/// # Safety
///
/// As for [`fill_interior`].
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
pub(super) unsafe fn fill_interior_scalar(
    mid: &[HostSeg],
    out: *mut u64,
    base: u64,
    dev_base: u64,
    ps: u64,
) -> (u64, u64) {
    let (mut pos, mut lens) = (0u64, 0u64);
    for (i, s) in mid.iter().enumerate() {
        let y = s.addr.raw_u64().wrapping_sub(base);
        // SAFETY: i < mid.len(), per the contract.
        unsafe { out.add(i).write(y.wrapping_add(dev_base).to_le()) };
        pos |= y;
        lens |= s.len.wrapping_sub(ps);
    }
    (pos, lens)
}

/// [`fill_interior`] with SSE2 (part of every x86-64): a segment is one
/// 16-byte vector, address and length, so one subtraction of `[base, ps]`
/// gives both words to check, folded into one OR, and adding `dev_base` to
/// the low word gives the entry: about five instructions a segment.
///
/// # Safety
///
/// As for [`fill_interior`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn fill_interior_sse2(
    mid: &[HostSeg],
    out: *mut u64,
    base: u64,
    dev_base: u64,
    ps: u64,
) -> (u64, u64) {
    use core::arch::x86_64::{
        __m128i, _mm_add_epi64, _mm_cvtsi128_si64, _mm_loadu_si128, _mm_or_si128, _mm_set_epi64x,
        _mm_setzero_si128, _mm_storel_epi64, _mm_sub_epi64, _mm_unpackhi_epi64,
    };
    const _: () = assert!(size_of::<HostSeg>() == 16);
    let n = mid.len();
    let src = mid.as_ptr().cast::<__m128i>();
    // In every block below: SSE2 is part of the x86-64 baseline, so its
    // intrinsics are available. Loads read segments `i < n` (HostSeg is
    // `repr(C)`: two u64 words, 16 bytes) and stores write the low 8 bytes
    // to `out[i]`, `i < n`, per the contract; both may be unaligned.
    //
    // SAFETY: as above.
    let (sub, add) = unsafe {
        (
            _mm_set_epi64x(ps as i64, base as i64),
            _mm_set_epi64x(0, dev_base as i64),
        )
    };
    // SAFETY: as above.
    let (mut acc0, mut acc1) = unsafe { (_mm_setzero_si128(), _mm_setzero_si128()) };
    // Four segments a round, two accumulators; then two, then one.
    let (mut i, whole) = (0, n & !3);
    while i != whole {
        // SAFETY: as above, for segments i to i + 3.
        unsafe {
            let v = [0, 1, 2, 3].map(|k| _mm_sub_epi64(_mm_loadu_si128(src.add(i + k)), sub));
            acc0 = _mm_or_si128(acc0, _mm_or_si128(v[0], v[2]));
            acc1 = _mm_or_si128(acc1, _mm_or_si128(v[1], v[3]));
            for (k, w) in v.into_iter().enumerate() {
                _mm_storel_epi64(out.add(i + k).cast(), _mm_add_epi64(w, add));
            }
        }
        i += 4;
    }
    if n & 2 != 0 {
        // SAFETY: as above, for segments i and i + 1 (i + 2 <= n).
        unsafe {
            let v = [0, 1].map(|k| _mm_sub_epi64(_mm_loadu_si128(src.add(i + k)), sub));
            acc0 = _mm_or_si128(acc0, v[0]);
            acc1 = _mm_or_si128(acc1, v[1]);
            for (k, w) in v.into_iter().enumerate() {
                _mm_storel_epi64(out.add(i + k).cast(), _mm_add_epi64(w, add));
            }
        }
        i += 2;
    }
    if n & 1 != 0 {
        // SAFETY: as above, for segment i = n - 1.
        unsafe {
            let w = _mm_sub_epi64(_mm_loadu_si128(src.add(i)), sub);
            acc0 = _mm_or_si128(acc0, w);
            _mm_storel_epi64(out.add(i).cast(), _mm_add_epi64(w, add));
        }
    }
    // SAFETY: as above.
    unsafe {
        let acc = _mm_or_si128(acc0, acc1);
        (
            _mm_cvtsi128_si64(acc) as u64,
            _mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc)) as u64,
        )
    }
}

/// [`fill_interior`] with AVX2: two segments to a 32-byte vector, eight a
/// round, two rounds a loop. A segment's offset and length check come from
/// one addition of `[-base, -ps]` (an addition, so the load folds into
/// it); the four offsets of two vectors are gathered into one (an unpack
/// and a lane permutation) for one add and one store. The last rounds
/// overlap the ones before when the count is not a multiple of sixteen:
/// they write some entries twice, with the same values, instead of a tail
/// of single segments.
///
/// # Safety
///
/// As for [`fill_interior`], the CPU supports AVX2, and `mid` holds at
/// least eight segments.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline(never)]
pub(super) unsafe fn fill_interior_avx2(
    mid: &[HostSeg],
    out: *mut u64,
    base: u64,
    dev_base: u64,
    ps: u64,
) -> (u64, u64) {
    use core::arch::x86_64::{
        __m256i, _mm256_add_epi64, _mm256_castsi256_si128, _mm256_extracti128_si256,
        _mm256_loadu_si256, _mm256_or_si256, _mm256_permute4x64_epi64, _mm256_set1_epi64x,
        _mm256_set_epi64x, _mm256_setzero_si256, _mm256_storeu_si256, _mm256_unpacklo_epi64,
        _mm_cvtsi128_si64, _mm_or_si128, _mm_unpackhi_epi64,
    };
    let n = mid.len();
    debug_assert!(n >= 8);
    let src = mid.as_ptr();
    let neg = _mm256_set_epi64x(
        ps.wrapping_neg() as i64,
        base.wrapping_neg() as i64,
        ps.wrapping_neg() as i64,
        base.wrapping_neg() as i64,
    );
    let add = _mm256_set1_epi64x(dev_base as i64);
    let (mut acc0, mut acc1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    // Segments i to i + 7 into entries i to i + 7.
    let mut round = |i: usize| {
        debug_assert!(i + 8 <= n);
        // SAFETY: called below with i + 8 <= n only, so segments i to
        // i + 7 are four 32-byte vectors of `mid` (HostSeg is `repr(C)`,
        // 16 bytes) and entries i to i + 7 are in `out`, per the contract;
        // unaligned accesses are allowed; the CPU has AVX2.
        unsafe {
            let v = [0, 1, 2, 3].map(|k| {
                _mm256_add_epi64(
                    _mm256_loadu_si256(src.add(i + 2 * k).cast::<__m256i>()),
                    neg,
                )
            });
            acc0 = _mm256_or_si256(acc0, _mm256_or_si256(v[0], v[1]));
            acc1 = _mm256_or_si256(acc1, _mm256_or_si256(v[2], v[3]));
            for h in 0..2 {
                // [y0, y2, y1, y3], then in order.
                let y = _mm256_unpacklo_epi64(v[2 * h], v[2 * h + 1]);
                let y = _mm256_permute4x64_epi64::<0b11_01_10_00>(y);
                _mm256_storeu_si256(out.add(i + 4 * h).cast(), _mm256_add_epi64(y, add));
            }
        }
    };
    // Sixteen a loop while more than sixteen are left, then the last
    // sixteen, some of them again when n is not a multiple of sixteen;
    // from 8 to 15 segments, the first eight and the last eight.
    if n >= 16 {
        let (mut i, last) = (0, n - 16);
        while i < last {
            round(i);
            round(i + 8);
            i += 16;
        }
        round(last);
        round(last + 8);
    } else {
        round(0);
        round(n - 8);
    }
    // Lanes 0 and 2 hold offsets, 1 and 3 lengths.
    let acc = _mm256_or_si256(acc0, acc1);
    let acc = _mm_or_si128(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    (
        _mm_cvtsi128_si64(acc) as u64,
        _mm_cvtsi128_si64(_mm_unpackhi_epi64(acc, acc)) as u64,
    )
}

/// Whether every interior segment starts at most `lim` bytes past `base`
/// (the slow half of [`prp_in_region_page`]'s containment check).
#[cold]
#[inline(never)]
pub(super) fn interior_inside(mid: &[HostSeg], base: u64, lim: u64) -> bool {
    mid.iter()
        .all(|s| s.addr.raw_u64().wrapping_sub(base) <= lim)
}

#[cfg(test)]
mod tests {
    use blk_dma::HostAddr;

    use super::*;

    #[test]
    fn vector_and_scalar_interiors_agree() {
        // A small LCG: addresses around `base`, some out of line, lengths
        // mostly one page.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 16
        };
        let (base, dev, ps) = (0x7f00_0000_0000u64, 0x10_0000_0000u64, 4096u64);
        let mut avx2_checked = 0;
        for n in 0..40 {
            let mid: Vec<_> = (0..n)
                .map(|_| {
                    let off = (next() % 4096) * ps + if next() % 8 == 0 { next() % ps } else { 0 };
                    let a = if next() % 16 == 0 {
                        base - ps
                    } else {
                        base + off
                    };
                    let len = if next() % 8 == 0 {
                        next() % (2 * ps)
                    } else {
                        ps
                    };
                    HostSeg::new(HostAddr::new(a as usize), len)
                })
                .collect();
            let (mut a, mut b) = (vec![0u64; n], vec![0u64; n]);
            // SAFETY: both outputs hold `n` entries and are distinct from
            // `mid`.
            let (va, vb) = unsafe {
                (
                    fill_interior_sse2(&mid, a.as_mut_ptr(), base, dev, ps),
                    fill_interior_scalar(&mid, b.as_mut_ptr(), base, dev, ps),
                )
            };
            assert_eq!((va, &a), (vb, &b), "{n} segments");
            if n >= 8 && std::arch::is_x86_feature_detected!("avx2") {
                let mut c = vec![0u64; n];
                // SAFETY: as above; the CPU has AVX2; eight segments or more.
                let vc = unsafe { fill_interior_avx2(&mid, c.as_mut_ptr(), base, dev, ps) };
                assert_eq!((vc, &c), (vb, &b), "{n} segments, AVX2");
                avx2_checked += 1;
            }
            // What the one-pass path calls, whichever it picks.
            let mut d = vec![0u64; n];
            // SAFETY: as above.
            let vd = unsafe { fill_interior(&mid, d.as_mut_ptr(), base, dev, ps) };
            assert_eq!((vd, &d), (vb, &b), "{n} segments, dispatched");
        }
        // Built for AVX2 (`-C target-feature=+avx2`, as scripts/miri.sh
        // does for its second pass), the AVX2 variant must have been
        // checked, and the dispatch must pick it.
        if cfg!(target_feature = "avx2") {
            assert_eq!(
                avx2_checked, 32,
                "AVX2 variant checked for 8 to 39 segments"
            );
            assert!(has_avx2(), "dispatch picks the AVX2 variant");
        }
    }
}
