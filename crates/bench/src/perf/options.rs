//! What to run: the workload, as given on nvme-bench's command line.

use std::time::Duration;

use serde::Serialize;

use super::clock::ClockMode;

/// The access pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random reads and writes, `mix` percent reads.
    Randrw,
    /// A zoned namespace written sequentially zone by zone with Zone
    /// Append (each queue pair on its own zones, `qd` appends in flight),
    /// each zone reset before it is written again as the run wraps.
    #[serde(rename = "zoned-write")]
    ZonedWrite,
}

impl Rw {
    /// Whether the offsets are random.
    pub fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }

    /// Whether the workload writes.
    pub fn writes(self) -> bool {
        !matches!(self, Rw::Read | Rw::Randread)
    }

    /// Whether the workload writes a zoned namespace zone by zone.
    pub fn zoned(self) -> bool {
        matches!(self, Rw::ZonedWrite)
    }
}

/// Where the data buffers live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Buffers {
    /// DMA buffers from the driver's pool (mapped once, translated per I/O).
    Pool,
    /// User memory registered once with the IOMMU (translated per I/O).
    Registered,
    /// Plain user memory, mapped per I/O as one coalesced IOVA range and
    /// unmapped at completion: what unregistered memory costs.
    User,
}

/// End-to-end protection of the I/Os, on a namespace formatted with
/// protection information.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PiMode {
    /// No protection settings: for namespaces without metadata.
    #[default]
    None,
    /// The controller inserts the tuples on writes, checks them and strips
    /// them on reads (PRACT=1).
    Controller,
    /// The driver computes the tuples before each write and checks them
    /// after each read; the controller checks them too.
    Driver,
}

/// Data pointer format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SglMode {
    /// The driver's policy: SGLs for large average segments or where PRPs
    /// cannot describe the request, when the controller supports them.
    Auto,
    /// SGLs for every I/O command (the controller must support them).
    On,
    /// PRPs only.
    Off,
}

/// When the measured phase ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this long.
    Time(Duration),
    /// After this many I/Os in total (split between the queues).
    Ios(u64),
}

/// A workload.
#[derive(Clone, Debug)]
pub struct Options {
    /// Access pattern.
    pub rw: Rw,
    /// Percentage of reads for [`Rw::Randrw`].
    pub mix: u8,
    /// Bytes per I/O, a multiple of the namespace's block size.
    pub bs: u64,
    /// Requests kept in flight per queue.
    pub qd: u16,
    /// Queue pairs.
    pub queues: u16,
    /// Threads running the queue pairs: 0 (or `queues`) for one thread per
    /// queue pair; fewer share the queue pairs out, each thread polling
    /// its own as one poll group.
    pub threads: u16,
    /// End of the measured phase.
    pub stop: Stop,
    /// Namespace ID.
    pub nsid: u32,
    /// First byte of the range used, a multiple of `bs`.
    pub offset: u64,
    /// Bytes of the range used (default: to the end of the namespace).
    pub size: Option<u64>,
    /// Buffer kind.
    pub buffers: Buffers,
    /// PRP/SGL choice.
    pub sgl: SglMode,
    /// Sleep on the completion queue's interrupt instead of spinning
    /// (VFIO devices only).
    pub interrupts: bool,
    /// Seed of the offset and read/write choices.
    pub seed: u64,
    /// Write blocks that carry their LBA and a sequence tag, check them on
    /// every read and read everything written back at the end.
    pub verify: bool,
    /// The clock requests are stamped with.
    pub clock: ClockMode,
    /// End-to-end protection, on a namespace formatted with protection
    /// information.
    pub pi: PiMode,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rw: Rw::Randread,
            mix: 50,
            bs: 4096,
            qd: 32,
            queues: 1,
            threads: 0,
            stop: Stop::Time(Duration::from_secs(10)),
            nsid: 1,
            offset: 0,
            size: None,
            buffers: Buffers::Pool,
            sgl: SglMode::Auto,
            interrupts: false,
            seed: 1,
            verify: false,
            clock: ClockMode::Auto,
            pi: PiMode::None,
        }
    }
}

/// Parses a byte count: `4096`, `4k`, `128K`, `1m`, `2G`, `1MiB` (binary
/// units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("'{s}': unknown unit (use k, m, g or t)")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{s}' is not a size (like 4096, 4k or 1m)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses a duration: `10` (seconds), `10s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim().to_ascii_lowercase();
    let bad = || format!("'{s}' is not a duration (like 10, 10s, 500ms or 2m)");
    let (num, scale_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        (t.as_str(), 1000.0)
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    if !v.is_finite() || v <= 0.0 || v * scale_ms > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_micros((v * scale_ms * 1000.0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("128K"), Ok(128 << 10));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("4x").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("99999999999t").is_err());
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
