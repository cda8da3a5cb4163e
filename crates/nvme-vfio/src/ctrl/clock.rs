//! The cheap clock the I/O path reads for timeouts.
//!
//! `CLOCK_MONOTONIC_COARSE` is read from the vDSO without a system call
//! (a few loads, no TSC read); it advances once per kernel tick (1 to 10 ms,
//! 4 ms on most distributions), which is fine for I/O timeouts of tens of
//! milliseconds and more.

/// Milliseconds on a monotonic clock with tick resolution.
#[inline]
pub(crate) fn now_ms() -> u64 {
    #[cfg(miri)]
    {
        // Miri has no coarse clock: the precise one, from a fixed origin.
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        ORIGIN
            .get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
    }
    #[cfg(not(miri))]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC_COARSE
        // exists on every Linux this driver runs on (2.6.32 and later), so
        // the call cannot fail.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
    }
}

/// The coarse clock's resolution in milliseconds (rounded up, at least 1;
/// 10 if it cannot be read, the longest kernel tick).
pub(crate) fn tick_ms() -> u64 {
    static TICK: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICK.get_or_init(|| {
        #[cfg(miri)]
        {
            1
        }
        #[cfg(not(miri))]
        {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid timespec to write.
            let r = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
            if r != 0 {
                return 10;
            }
            let ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
            ns.div_ceil(1_000_000).clamp(1, 1000)
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tick_is_a_few_milliseconds() {
        let t = super::tick_ms();
        assert!((1..=10).contains(&t), "{t} ms");
    }

    #[test]
    fn the_coarse_clock_follows_the_precise_one() {
        let (a, t) = (super::now_ms(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(60));
        let (b, el) = (super::now_ms(), t.elapsed().as_millis() as u64);
        // Within a kernel tick (at most 10 ms) at each end.
        assert!(
            b - a + 20 >= el && b - a <= el + 20,
            "{} ms vs {el} ms",
            b - a
        );
    }
}
