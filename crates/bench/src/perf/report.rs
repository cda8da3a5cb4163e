//! What a run reports; serialized as nvme-bench's `--json` output.
//!
//! The schema is versioned by [`SCHEMA`]: fields are only ever added
//! within a version. Times are in nanoseconds unless a name says
//! otherwise; per-I/O figures are over the measured phase only (not the
//! verify fill and read-back).

use hdrhistogram::Histogram;
use serde::Serialize;

use super::clock::ClockSource;
use super::options::{Buffers, PiMode, Rw, SglMode};
use super::target::TargetInfo;

/// The schema identifier in every report.
pub const SCHEMA: &str = "nvme-bench/1";

/// One run's report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: &'static str,
    /// What ran.
    pub target: TargetInfo,
    /// The workload.
    pub workload: WorkloadInfo,
    /// Totals over all queues.
    pub result: Summary,
    /// Per queue.
    pub queues: Vec<QueueSummary>,
    /// Verify mode's findings.
    pub verify: Option<VerifySummary>,
    /// The merged latency histogram (nanoseconds), for plots.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// The workload as run.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadInfo {
    /// Access pattern.
    pub rw: Rw,
    /// Read percentage (random mixed workloads).
    pub mix: u8,
    /// Bytes per I/O.
    pub bs: u64,
    /// Requests in flight per queue.
    pub qd: u16,
    /// Queue pairs.
    pub queues: u16,
    /// Threads running them (each polling its queue pairs as one poll
    /// group when fewer than the queue pairs).
    pub threads: u16,
    /// Requested run time in seconds, if time-bound.
    pub time_s: Option<f64>,
    /// Requested I/O count, if count-bound.
    pub ios: Option<u64>,
    /// Namespace.
    pub nsid: u32,
    /// Namespace block size in bytes.
    pub block_size: u64,
    /// First LBA of the range used.
    pub first_lba: u64,
    /// Blocks in the range used.
    pub blocks: u64,
    /// Buffer kind.
    pub buffers: Buffers,
    /// PRP/SGL choice.
    pub sgl: SglMode,
    /// Interrupt mode.
    pub interrupts: bool,
    /// Seed.
    pub seed: u64,
    /// Verify mode.
    pub verify: bool,
    /// End-to-end protection mode (`"none"`, `"controller"`, `"driver"`).
    pub pi: PiMode,
    /// Metadata bytes per block of the namespace (0: none).
    pub metadata_size: u16,
    /// The clock requests were stamped with (`--clock auto` resolved).
    pub clock: ClockSource,
    /// The TSC's calibrated rate in Hz, when it was the clock.
    pub tsc_hz: Option<f64>,
}

/// Latency percentiles, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Smallest.
    pub min: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p99_9: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p99_9: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// Totals of the measured phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Wall time of the measured phase, in seconds.
    pub seconds: f64,
    /// I/Os completed.
    pub ios: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Bytes transferred.
    pub bytes: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Mebibytes per second.
    pub mib_per_s: f64,
    /// CPU time of the queue threads per I/O.
    pub cpu_ns_per_io: f64,
    /// nvme-sim inline mode: the device's share of `cpu_ns_per_io`.
    pub device_ns_per_io: Option<f64>,
    /// nvme-sim inline mode: `cpu_ns_per_io` less the device's share, the
    /// driver's (and the benchmark loop's) own time.
    pub driver_ns_per_io: Option<f64>,
    /// Submission doorbell publications per I/O.
    pub sq_doorbells_per_io: f64,
    /// Of those, MMIO doorbell writes per I/O (fewer with shadow
    /// doorbells).
    pub sq_mmio_per_io: f64,
    /// Latency of the measured I/Os.
    pub latency_ns: Latency,
    /// I/Os that completed with an error.
    pub errors: u64,
    /// The first error, if any (the run stops at it).
    pub error: Option<String>,
    /// Zones reset during the measured phase (zoned-write: each zone
    /// before it is written again).
    pub zone_resets: u64,
}

/// One queue's share.
#[derive(Clone, Debug, Serialize)]
pub struct QueueSummary {
    /// Queue ID.
    pub qid: u16,
    /// I/Os completed.
    pub ios: u64,
    /// I/Os per second.
    pub iops: f64,
    /// Median latency.
    pub p50_ns: u64,
    /// CPU time per I/O.
    pub cpu_ns_per_io: f64,
}

/// Verify mode's findings.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifySummary {
    /// Blocks whose LBA, tag and contents were checked (reads during the
    /// run and the final read-back).
    pub blocks_checked: u64,
    /// Blocks written with a tag (fill and run).
    pub blocks_written: u64,
    /// The first mismatch, with its LBA.
    pub mismatch: Option<String>,
}
