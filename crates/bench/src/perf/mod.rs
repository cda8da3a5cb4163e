//! nvme-bench: a fio-like benchmark of the driver, against a disk through
//! VFIO or against nvme-sim (whose null mode isolates the driver's own
//! cost).
//!
//! One thread per queue pair, polled (or interrupt driven), each keeping
//! `qd` requests in flight on its share of the LBA range. Latencies go into
//! one HDR histogram per queue, merged at the end; the steady-state loop
//! allocates nothing and makes no system call. Requests are stamped with
//! the TSC where it can be trusted, as fio and SPDK do, else with
//! `CLOCK_MONOTONIC` ([`clock`]).
//!
//! ```
//! use nvme_bench::perf::{run, Options, Progress, Rw, SimOptions, Stop, Target};
//!
//! let target = Target::sim(&SimOptions { null: true, ..SimOptions::default() }, 1)?;
//! let opts = Options { rw: Rw::Randread, qd: 8, stop: Stop::Ios(1000), ..Options::default() };
//! let report = run(&target, &opts, &Progress::default())?;
//! assert_eq!(report.result.ios, 1000);
//! assert!(report.result.latency_ns.p50 <= report.result.latency_ns.max);
//! # Ok::<(), nvme_bench::perf::Error>(())
//! ```

pub mod clock;
mod engine;
mod options;
mod plot;
mod report;
mod target;
mod verify;

pub use clock::{Clock, ClockMode, ClockSource, Stamp};
pub use engine::{run, Progress};
pub use options::{parse_duration, parse_size, Buffers, Options, PiMode, Rw, SglMode, Stop};
pub use plot::svg;
pub use report::{Latency, QueueSummary, Report, Summary, VerifySummary, WorkloadInfo, SCHEMA};
pub use target::{SimOptions, Target, TargetInfo};

/// Why a benchmark could not run or did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The options do not fit the target (exit status 2).
    #[error("{0}")]
    Input(String),
    /// The driver failed to bring the controller or a queue up, or a
    /// submission failed (exit status 1).
    #[error(transparent)]
    Driver(#[from] nvme_vfio::Error),
    /// nvme-sim refused its configuration (exit status 2).
    #[error(transparent)]
    Sim(#[from] nvme_sim::Error),
    /// Memory for the buffers could not be had (exit status 1).
    #[error("buffer memory: {0}")]
    Memory(#[source] std::io::Error),
}
