//! The clock nvme-bench stamps its I/Os with.
//!
//! nvme-bench reads the clock once per completion batch (every I/O at
//! queue depth 1): for the latency of each request and for the run's time
//! limit. `clock_gettime(CLOCK_MONOTONIC)` costs some 20 ns where the
//! kernel's clock source is the TSC (read in the vDSO), but microseconds
//! where it is the HPET or the ACPI PM timer, device registers read through
//! the kernel (one to three µs per call in a QEMU TCG guest, which can show in
//! the figures at QD 1). fio and SPDK read the CPU's time stamp counter
//! directly, and so does nvme-bench where the TSC can be trusted.
//!
//! # Which clock
//!
//! [`ClockMode::Auto`] (the default) reads the TSC when either
//!
//! - the CPU says it is invariant: CPUID leaf `0x8000_0007`, EDX bit 8 (it
//!   ticks at one rate in every P-, C- and T-state). This is fio's test,
//!   and the bit Linux sets `nonstop_tsc` (and on AMD `constant_tsc`)
//!   from, so `/proc/cpuinfo`'s flags say nothing more; or
//! - the kernel's current clock source is `tsc`
//!   (`/sys/devices/system/clocksource/clocksource0/current_clocksource`):
//!   the kernel then serves `CLOCK_MONOTONIC` from the TSC itself, having
//!   checked that it is synchronized across CPUs and watched it against
//!   another clock, or having been told to trust it (`tsc=reliable`).
//!
//! Otherwise it falls back to `CLOCK_MONOTONIC` (`std::time::Instant`).
//!
//! The second rule is for virtual machines whose CPU model hides the
//! invariant bit. QEMU's TCG CPUs (`-cpu max`) do: a Linux guest with
//! more than one CPU then marks the TSC unstable ("TSCs unsynchronized")
//! and runs on the HPET, and `Auto` falls back with it; booted with
//! `tsc=reliable` (`scripts/vm/run.sh --tsc-reliable`) the guest runs on
//! the TSC, and so does nvme-bench. A TCG guest's TSC is the host's,
//! read by QEMU, so where the host's is invariant [`ClockMode::Tsc`] can
//! force it in a guest that was not told so.
//!
//! A CPU that says its TSC is invariant is trusted even where the kernel
//! has found the TSCs of its sockets out of step and chose another clock
//! source, as fio does; `--clock monotonic` is the way out there.
//! Latencies are differences of readings on one thread; a reading that
//! would go back (a thread moved to a CPU whose TSC lags) gives a latency
//! of zero, never a wrapped one.
//!
//! # Calibration
//!
//! Once per process, on first use: the TSC and `CLOCK_MONOTONIC` are read
//! together 20 ms apart (each pair bracketed by two `CLOCK_MONOTONIC`
//! readings, the tightest of five kept, so that even a 3 µs clock leaves
//! the rate within 0.05 %), and readings become nanoseconds by one
//! multiplication with a 32.32 fixed-point factor. A rate outside 1 MHz to
//! 100 GHz, or a TSC user space may not read (`PR_GET_TSC`), leaves the
//! TSC unused.
//!
//! ```
//! use nvme_bench::perf::{Clock, ClockMode};
//!
//! let clock = Clock::new(ClockMode::Auto)?;
//! let t0 = clock.now();
//! std::thread::sleep(std::time::Duration::from_millis(2));
//! assert!(clock.now() - t0 >= std::time::Duration::from_millis(1));
//! # Ok::<(), String>(())
//! ```

use std::ops::Sub;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Which clock to read, as asked for (`nvme-bench --clock`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    /// The TSC where it can be trusted ([`tsc_trust`]), else
    /// `CLOCK_MONOTONIC`.
    #[default]
    Auto,
    /// The TSC, trusted or not (an error where there is none to read).
    Tsc,
    /// `CLOCK_MONOTONIC` (`clock_gettime`, through `std::time::Instant`).
    Monotonic,
}

/// The clock a [`Clock`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockSource {
    /// The CPU's time stamp counter, calibrated against `CLOCK_MONOTONIC`.
    Tsc,
    /// `CLOCK_MONOTONIC`.
    Monotonic,
}

/// Why the TSC is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscTrust {
    /// The CPU says it is invariant (CPUID `0x8000_0007` EDX bit 8).
    Invariant,
    /// The kernel's current clock source is `tsc`.
    Kernel,
}

/// A reading: nanoseconds since the clock's origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp(u64);

impl Stamp {
    /// Nanoseconds since the clock's origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }
}

impl Sub for Stamp {
    type Output = Duration;

    /// The time from `earlier` to `self`; zero if `earlier` is later.
    #[inline]
    fn sub(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// A clock, chosen and calibrated once; cheap to copy and to read.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Tsc(Calibration),
    Monotonic(Instant),
}

/// The TSC's origin and its nanoseconds per tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Calibration {
    /// The TSC at the clock's origin.
    origin: u64,
    /// Nanoseconds per tick, times 2^32.
    mult: u64,
}

impl Calibration {
    /// Nanoseconds from the origin to the TSC reading `tsc` (zero before
    /// it).
    #[inline]
    fn nanos(self, tsc: u64) -> u64 {
        let ns = (u128::from(tsc.saturating_sub(self.origin)) * u128::from(self.mult)) >> 32;
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    /// Ticks per second.
    fn hz(self) -> f64 {
        1e9 * (1u64 << 32) as f64 / self.mult as f64
    }
}

impl Clock {
    /// The clock `mode` asks for. [`ClockMode::Tsc`] fails where the TSC
    /// cannot be read or calibrated (not x86-64, `rdtsc` disabled, an
    /// implausible rate); [`ClockMode::Auto`] then falls back.
    pub fn new(mode: ClockMode) -> Result<Self, String> {
        match mode {
            ClockMode::Monotonic => Ok(Self::monotonic()),
            ClockMode::Tsc => Self::tsc().ok_or_else(|| {
                "--clock tsc: no time stamp counter to read here (not x86-64, \
                 rdtsc disabled for this process, or its rate implausible)"
                    .to_string()
            }),
            ClockMode::Auto => Ok(tsc_trust()
                .and_then(|_| Self::tsc())
                .unwrap_or_else(Self::monotonic)),
        }
    }

    /// `CLOCK_MONOTONIC`, with its origin now.
    pub fn monotonic() -> Self {
        Self {
            kind: Kind::Monotonic(Instant::now()),
        }
    }

    /// The TSC, calibrated (once per process, taking about 20 ms), whether
    /// or not it is trusted; `None` where it cannot be read or calibrated.
    pub fn tsc() -> Option<Self> {
        static CALIBRATION: OnceLock<Option<Calibration>> = OnceLock::new();
        let c = (*CALIBRATION.get_or_init(calibrate))?;
        Some(Self { kind: Kind::Tsc(c) })
    }

    /// What the clock reads.
    pub fn source(&self) -> ClockSource {
        match self.kind {
            Kind::Tsc(_) => ClockSource::Tsc,
            Kind::Monotonic(_) => ClockSource::Monotonic,
        }
    }

    /// The TSC's rate in ticks per second, as calibrated (`None` for
    /// `CLOCK_MONOTONIC`).
    pub fn tsc_hz(&self) -> Option<f64> {
        match self.kind {
            Kind::Tsc(c) => Some(c.hz()),
            Kind::Monotonic(_) => None,
        }
    }

    /// The time now: one `rdtsc` and a multiplication, or one
    /// `clock_gettime`.
    #[inline]
    pub fn now(&self) -> Stamp {
        match self.kind {
            Kind::Tsc(c) => Stamp(c.nanos(rdtsc())),
            Kind::Monotonic(origin) => Stamp(origin.elapsed().as_nanos() as u64),
        }
    }
}

/// Whether, and why, the TSC can be trusted as a clock here (see the
/// module's documentation). Looked at once per process.
pub fn tsc_trust() -> Option<TscTrust> {
    static TRUST: OnceLock<Option<TscTrust>> = OnceLock::new();
    *TRUST.get_or_init(|| {
        if cpuid_invariant_tsc() {
            Some(TscTrust::Invariant)
        } else if kernel_clocksource().as_deref() == Some("tsc") {
            Some(TscTrust::Kernel)
        } else {
            None
        }
    })
}

/// The kernel's current clock source (`tsc`, `hpet`, `acpi_pm`,
/// `kvm-clock`, ...), where sysfs says.
pub fn kernel_clocksource() -> Option<String> {
    let path = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
    let s = std::fs::read_to_string(path).ok()?;
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

/// CPUID `0x8000_0007` EDX bit 8: the TSC is invariant.
#[cfg(target_arch = "x86_64")]
fn cpuid_invariant_tsc() -> bool {
    use core::arch::x86_64::__cpuid;
    // SAFETY: every x86-64 CPU has CPUID; leaf 0x8000_0000 gives the
    // highest extended leaf. (`unsafe` for toolchains where `__cpuid` is
    // still an unsafe function.)
    #[allow(unused_unsafe)]
    let max = unsafe { __cpuid(0x8000_0000) }.eax;
    if max < 0x8000_0007 {
        return false;
    }
    // SAFETY: as above; the leaf exists (checked against the highest).
    #[allow(unused_unsafe)]
    let edx = unsafe { __cpuid(0x8000_0007) }.edx;
    edx & (1 << 8) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_invariant_tsc() -> bool {
    false
}

/// Reads the TSC. Only called on a [`Calibration`], made only where
/// [`tsc_readable`] said yes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC exists on every x86-64 CPU and has no memory effects;
    // user space may execute it (checked by `tsc_readable` before any
    // calibration, hence before any call).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn rdtsc() -> u64 {
    0
}

/// Whether this process may execute `rdtsc` (Linux can make it fault:
/// `PR_SET_TSC`).
fn tsc_readable() -> bool {
    if !cfg!(target_arch = "x86_64") {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        let mut mode: libc::c_int = 0;
        // SAFETY: PR_GET_TSC writes one int through the pointer, which
        // points at `mode`.
        let r = unsafe { libc::prctl(libc::PR_GET_TSC, &mut mode as *mut libc::c_int) };
        // Kernels without the call (not x86) would fail it: nothing to
        // fear from rdtsc then.
        if r == 0 && mode != libc::PR_TSC_ENABLE {
            return false;
        }
    }
    true
}

/// Calibrates the TSC against `CLOCK_MONOTONIC`.
fn calibrate() -> Option<Calibration> {
    if !tsc_readable() {
        return None;
    }
    let origin = Instant::now();
    // A TSC reading and the CLOCK_MONOTONIC time it was taken at (the
    // midpoint of the tightest of five brackets), in ns since `origin`.
    let pair = || {
        (0..5)
            .map(|_| {
                let a = origin.elapsed().as_nanos() as u64;
                let t = rdtsc();
                let b = origin.elapsed().as_nanos() as u64;
                (b - a, t, a + (b - a) / 2)
            })
            .min()
            .map(|(_, t, ns)| (t, ns))
    };
    let (t0, n0) = pair()?;
    std::thread::sleep(Duration::from_millis(20));
    let (t1, n1) = pair()?;
    let mult = mult_from(t1.wrapping_sub(t0), n1.saturating_sub(n0))?;
    Some(Calibration { origin: t1, mult })
}

/// Nanoseconds per tick times 2^32, from `ticks` counted over `ns`
/// nanoseconds; `None` for a rate outside 1 MHz to 100 GHz (a TSC that
/// stood still or went back, or a clock that did).
fn mult_from(ticks: u64, ns: u64) -> Option<u64> {
    if ns == 0 || ticks == 0 {
        return None;
    }
    let hz = ticks as f64 * 1e9 / ns as f64;
    if !(1e6..=1e11).contains(&hz) {
        return None;
    }
    u64::try_from((u128::from(ns) << 32) / u128::from(ticks)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `clock` measures a 50 ms sleep as `Instant` does,
    /// within 3 %: each clock's reading is bracketed by two of the other's,
    /// so preemption widens the allowed range instead of failing the test.
    fn agrees_with_instant(clock: Clock) {
        let i0 = Instant::now();
        let a = clock.now();
        let i1 = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        let j0 = Instant::now();
        let b = clock.now();
        let j1 = Instant::now();
        let measured = (b - a).as_secs_f64();
        let (shortest, longest) = ((j0 - i1).as_secs_f64(), (j1 - i0).as_secs_f64());
        assert!(
            measured >= shortest * 0.97 && measured <= longest * 1.03,
            "{:?} measured {measured:.6} s, Instant between {shortest:.6} and {longest:.6} s",
            clock.source()
        );
    }

    #[test]
    fn the_tsc_agrees_with_clock_monotonic() {
        if !cfg!(target_arch = "x86_64") {
            assert!(Clock::tsc().is_none());
            assert!(Clock::new(ClockMode::Tsc).is_err());
            return;
        }
        let clock = Clock::new(ClockMode::Tsc).expect("an x86-64 TSC calibrates");
        assert_eq!(clock.source(), ClockSource::Tsc);
        let hz = clock.tsc_hz().unwrap_or(0.0);
        assert!((1e6..=1e11).contains(&hz), "{hz} Hz");
        agrees_with_instant(clock);
    }

    #[test]
    fn the_fallback_reads_clock_monotonic() {
        let clock = Clock::new(ClockMode::Monotonic).unwrap();
        assert_eq!(clock.source(), ClockSource::Monotonic);
        assert_eq!(clock.tsc_hz(), None);
        agrees_with_instant(clock);
    }

    #[test]
    fn auto_reads_the_tsc_only_where_it_is_trusted() {
        let clock = Clock::new(ClockMode::Auto).unwrap();
        let want = if tsc_trust().is_some() && Clock::tsc().is_some() {
            ClockSource::Tsc
        } else {
            ClockSource::Monotonic
        };
        assert_eq!(clock.source(), want);
        if kernel_clocksource().as_deref() == Some("tsc") {
            assert!(tsc_trust().is_some());
        }
        agrees_with_instant(clock);
    }

    #[test]
    fn readings_never_go_back_on_one_thread() {
        for mode in [ClockMode::Auto, ClockMode::Tsc, ClockMode::Monotonic] {
            let Ok(clock) = Clock::new(mode) else {
                continue;
            };
            let mut last = clock.now();
            for _ in 0..100_000 {
                let t = clock.now();
                assert!(t >= last, "{mode:?}: {t:?} after {last:?}");
                last = t;
            }
        }
    }

    #[test]
    fn ticks_become_nanoseconds() {
        // 2.6 GHz: 2.6e9 ticks in a second.
        let mult = mult_from(2_600_000_000, 1_000_000_000).unwrap();
        let c = Calibration { origin: 1000, mult };
        assert!(c.nanos(1000 + 2_600_000_000).abs_diff(1_000_000_000) <= 1);
        assert!(c.nanos(1000 + 26).abs_diff(10) <= 1);
        assert!((c.hz() - 2.6e9).abs() < 1.0);
        // Before the origin: zero, not a wrapped value.
        assert_eq!(c.nanos(999), 0);
        // A day at 1 MHz does not overflow.
        let slow = Calibration {
            origin: 0,
            mult: mult_from(1_000_000, 1_000_000_000).unwrap(),
        };
        assert_eq!(slow.nanos(86_400_000_000), 86_400_000_000_000);
    }

    #[test]
    fn implausible_rates_are_refused() {
        assert_eq!(mult_from(0, 20_000_000), None);
        assert_eq!(mult_from(1_000, 0), None);
        // 1 kHz and 1 THz.
        assert_eq!(mult_from(20, 20_000_000), None);
        assert_eq!(mult_from(20_000_000_000_000, 20_000_000), None);
    }

    #[test]
    fn stamps_subtract_to_durations_never_below_zero() {
        let (a, b) = (Stamp(1_000), Stamp(251_000));
        assert_eq!(b - a, Duration::from_micros(250));
        assert_eq!(a - b, Duration::ZERO);
        assert_eq!(b.as_nanos(), 251_000);
    }
}
