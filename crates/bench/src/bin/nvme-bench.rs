//! nvme-bench: a fio-like benchmark of the userspace driver, on a disk
//! bound to vfio-pci (`--device BDF`) or on nvme-sim (`--sim`).
//!
//! Exit status: 0 done; 1 the device, an I/O or a verify check failed;
//! 2 bad input.

use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use nvme_bench::perf::{
    self, parse_duration, parse_size, Buffers, ClockMode, ClockSource, Options, PiMode, Progress,
    Report, Rw, SglMode, SimOptions, Stop, Target,
};

/// A fio-like NVMe benchmark for the userspace driver.
#[derive(Parser, Debug)]
#[command(name = "nvme-bench", version)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["device", "sim"])))]
struct Cli {
    /// PCI address of a controller bound to vfio-pci (e.g. 0000:01:00.0).
    /// Repeat for several controllers: they share one DMA space (VFIO
    /// container) and run the workload at once, each reported, then the
    /// total.
    #[arg(long)]
    device: Vec<String>,
    /// Run against nvme-sim, the in-process software controller.
    #[arg(long)]
    sim: bool,
    /// nvme-sim: null mode (no data moved; measures the driver).
    #[arg(long, requires = "sim")]
    sim_null: bool,
    /// nvme-sim: run the device on the driver's thread during doorbell
    /// writes (no thread hand-off; for instruction counts).
    #[arg(long, requires = "sim")]
    sim_inline: bool,
    /// nvme-sim: namespace size.
    #[arg(long, default_value = "1g", value_parser = parse_size, requires = "sim")]
    sim_size: u64,
    /// nvme-sim: block size (512 or 4096).
    #[arg(long, default_value_t = 4096, requires = "sim")]
    sim_block_size: u32,
    /// nvme-sim: a zoned namespace with zones of this size (at most 8
    /// open and 14 active), for --rw zoned-write.
    #[arg(long, value_parser = parse_size, requires = "sim")]
    sim_zone_size: Option<u64>,
    /// nvme-sim: the namespace's kind, as nvme-sim names them: nvm,
    /// zoned, metaN (N bytes of metadata), piT (protection information of
    /// type T) with options -ext (extended LBAs), -first (the tuple
    /// first), -crc64 (64-bit guard), -msN (N bytes of metadata); e.g.
    /// pi1, pi2-ext, pi3-first, pi1-crc64, pi1-ms16.
    #[arg(
        long,
        value_name = "KIND",
        requires = "sim",
        conflicts_with = "sim_zone_size"
    )]
    sim_ns: Option<String>,
    /// End-to-end protection on a namespace formatted with protection
    /// information: none, controller (PRACT: the controller inserts,
    /// checks and strips the tuples), driver (the driver computes them
    /// before writes and checks them after reads).
    #[arg(long, value_enum, default_value = "none")]
    pi: PiMode,
    /// Access pattern.
    #[arg(long, value_enum, default_value = "randread")]
    rw: Rw,
    /// Percentage of reads in randrw.
    #[arg(long, default_value_t = 50)]
    mix: u8,
    /// Bytes per I/O (4k, 128k, 1m, ...).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    bs: u64,
    /// Requests in flight per queue.
    #[arg(long, default_value_t = 32)]
    qd: u16,
    /// Queue pairs (one thread each, unless --threads says fewer).
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Threads running the queue pairs (default: one per queue pair); with
    /// fewer, each thread polls its queue pairs as one poll group.
    #[arg(long)]
    threads: Option<u16>,
    /// Run time (10, 10s, 500ms, 2m).
    #[arg(long, value_parser = parse_duration, conflicts_with = "ios")]
    time: Option<Duration>,
    /// Run this many I/Os instead of for a time.
    #[arg(long)]
    ios: Option<u64>,
    /// Namespace ID.
    #[arg(long, default_value_t = 1)]
    ns: u32,
    /// Start of the range used, in bytes (a multiple of --bs).
    #[arg(long, default_value = "0", value_parser = parse_size)]
    offset: u64,
    /// Size of the range used, in bytes (default: to the namespace's end).
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Buffers: pool (driver DMA memory), registered (user memory mapped
    /// once), user (plain memory mapped per I/O).
    #[arg(long, value_enum, default_value = "pool")]
    buffers: Buffers,
    /// Data pointers: auto (the driver's policy), on (SGL), off (PRP).
    #[arg(long, value_enum, default_value = "auto")]
    sgl: SglMode,
    /// Sleep on MSI-X interrupts instead of polling.
    #[arg(long)]
    interrupts: bool,
    /// Seed of offsets and read/write choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Tag written blocks with their LBA and a sequence number and check
    /// every read; read everything written back at the end.
    #[arg(long)]
    verify: bool,
    /// Clock for latencies and the run time: auto (the TSC where the CPU
    /// says it is invariant or the kernel's clock source is tsc, else
    /// CLOCK_MONOTONIC), tsc (calibrated against CLOCK_MONOTONIC), or
    /// monotonic (clock_gettime).
    #[arg(long, value_enum, default_value = "auto")]
    clock: ClockMode,
    /// Print the report as JSON (schema "nvme-bench/1").
    #[arg(long)]
    json: bool,
    /// Write the latency distribution as an SVG plot.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
    /// Live progress line on stderr (default: when stderr is a terminal).
    #[arg(long, overrides_with = "no_progress")]
    progress: bool,
    /// No progress line.
    #[arg(long)]
    no_progress: bool,
}

fn options(cli: &Cli) -> Options {
    Options {
        rw: cli.rw,
        mix: cli.mix,
        bs: cli.bs,
        qd: cli.qd,
        queues: cli.queues,
        threads: cli.threads.unwrap_or(0),
        stop: match (cli.ios, cli.time) {
            (Some(n), _) => Stop::Ios(n),
            (None, Some(t)) => Stop::Time(t),
            (None, None) => Stop::Time(Duration::from_secs(10)),
        },
        nsid: cli.ns,
        offset: cli.offset,
        size: cli.size,
        buffers: cli.buffers,
        sgl: cli.sgl,
        interrupts: cli.interrupts,
        seed: cli.seed,
        verify: cli.verify,
        pi: cli.pi,
        clock: cli.clock,
    }
}

fn exit_status(e: &perf::Error) -> u8 {
    match e {
        perf::Error::Input(_) | perf::Error::Sim(_) => 2,
        perf::Error::Driver(nvme_vfio::Error::Vfio(_)) => 2,
        _ => 1,
    }
}

fn main() -> ExitCode {
    // The driver's log on stderr: warnings and errors unless RUST_LOG says
    // otherwise (e.g. RUST_LOG=nvme_vfio=debug).
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let opts = options(&cli);
    if cli.clock == ClockMode::Tsc && perf::clock::tsc_trust().is_none() {
        eprintln!(
            "nvme-bench: --clock tsc: the CPU does not say its TSC is invariant and the \
             kernel's clock source is {}: reading it anyway",
            perf::clock::kernel_clocksource().unwrap_or_else(|| "unknown".into())
        );
    }
    let targets = match open_targets(&cli) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("nvme-bench: {e}");
            return ExitCode::from(exit_status(&e));
        }
    };
    if targets.len() > 1 && cli.plot.is_some() {
        eprintln!("nvme-bench: --plot takes one device");
        return ExitCode::from(2);
    }
    let show = !cli.no_progress && (cli.progress || std::io::stderr().is_terminal());
    // One progress for all devices: the line shows the total.
    let progress = Progress::default();
    let finished = std::sync::atomic::AtomicBool::new(false);
    let results: Vec<Result<Report, perf::Error>> = std::thread::scope(|s| {
        if show {
            s.spawn(|| show_progress(&progress, &finished));
        }
        let runs: Vec<_> = targets
            .iter()
            .map(|t| {
                let (opts, progress) = (&opts, &progress);
                s.spawn(move || perf::run(t, opts, progress))
            })
            .collect();
        let r = runs
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(perf::Error::Memory(std::io::Error::other("a run panicked")))
                })
            })
            .collect();
        finished.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    let mut reports = Vec::new();
    for r in results {
        match r {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("nvme-bench: {e}");
                return ExitCode::from(exit_status(&e));
            }
        }
    }
    if cli.json {
        let j = match reports.as_slice() {
            [one] => serde_json::to_string_pretty(one),
            all => serde_json::to_string_pretty(all),
        };
        match j {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("nvme-bench: JSON: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        for r in &reports {
            print_text(r);
        }
        if reports.len() > 1 {
            let iops: f64 = reports.iter().map(|r| r.result.iops).sum();
            let mib: f64 = reports.iter().map(|r| r.result.mib_per_s).sum();
            println!(
                "total over {} devices: IOPS {}  bandwidth {mib:.1} MiB/s",
                reports.len(),
                group(iops)
            );
        }
    }
    if let (Some(path), [report]) = (&cli.plot, reports.as_slice()) {
        if let Err(e) = std::fs::write(path, perf::svg(report)) {
            eprintln!("nvme-bench: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    let mut failed = false;
    for report in &reports {
        let name = &report.target.name;
        if let Some(e) = &report.result.error {
            eprintln!("nvme-bench: {name}: I/O error: {e}");
            failed = true;
        }
        if let Some(m) = report.verify.as_ref().and_then(|v| v.mismatch.as_ref()) {
            eprintln!("nvme-bench: {name}: verify failed: {m}");
            failed = true;
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The targets: nvme-sim, or each --device (the first opened with a DMA
/// space of its own, the others into it).
fn open_targets(cli: &Cli) -> Result<Vec<Target>, perf::Error> {
    let Some((first, rest)) = cli.device.split_first() else {
        let sim = SimOptions {
            size: cli.sim_size,
            block_size: cli.sim_block_size,
            null: cli.sim_null,
            inline: cli.sim_inline,
            zone_size: cli.sim_zone_size,
            ns_kind: cli.sim_ns.clone(),
            ..SimOptions::default()
        };
        return Ok(vec![Target::sim(&sim, cli.queues)?]);
    };
    let first = Target::device(first, cli.queues, cli.interrupts)?;
    let space = first.controller().space().clone();
    let mut targets = vec![first];
    for dev in rest {
        targets.push(Target::device_in(dev, cli.queues, cli.interrupts, &space)?);
    }
    Ok(targets)
}

fn show_progress(p: &Progress, finished: &std::sync::atomic::AtomicBool) {
    let start = Instant::now();
    let (mut last_ios, mut last_bytes, mut last_t) = (0, 0, start);
    let mut err = std::io::stderr();
    while !finished.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if now - last_t < Duration::from_secs(1) {
            continue;
        }
        let (ios, bytes) = (p.ios(), p.bytes());
        let dt = (now - last_t).as_secs_f64();
        let _ = write!(
            err,
            "\r[{:5.1} s] {:>12} IOPS {:>10.1} MiB/s {:>14} I/Os ",
            (now - start).as_secs_f64(),
            group((ios - last_ios) as f64 / dt),
            (bytes - last_bytes) as f64 / dt / (1 << 20) as f64,
            group(ios as f64)
        );
        let _ = err.flush();
        (last_ios, last_bytes, last_t) = (ios, bytes, now);
    }
    let _ = writeln!(err);
}

/// A count with thousands separators.
fn group(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn us(ns: f64) -> String {
    format!("{:.2}", ns / 1000.0)
}

fn print_text(r: &Report) {
    let w = &r.workload;
    let t = &r.target;
    let s = &r.result;
    let mode = if w.interrupts { "interrupts" } else { "polled" };
    let mut what = format!("{} ({}", t.name, t.model.trim());
    if t.null {
        what.push_str(", null");
    }
    if t.inline {
        what.push_str(", inline");
    }
    what.push(')');
    println!(
        "nvme-bench: {what}, namespace {}: {} blocks of {} bytes from LBA {}",
        w.nsid, w.blocks, w.block_size, w.first_lba
    );
    let rw = match w.rw {
        Rw::Randrw => format!("randrw {}% reads", w.mix),
        Rw::ZonedWrite => "zoned-write (Zone Append)".into(),
        other => format!("{other:?}").to_lowercase(),
    };
    let threads = if w.threads < w.queues {
        format!(" on {} thread(s) (poll groups)", w.threads)
    } else {
        String::new()
    };
    println!(
        "  {rw}, bs {}, qd {} x {} queue(s){threads}, {} buffers, SGL {}, {mode}{}",
        w.bs,
        w.qd,
        w.queues,
        format!("{:?}", w.buffers).to_lowercase(),
        format!("{:?}", w.sgl).to_lowercase(),
        if w.verify { ", verify" } else { "" }
    );
    match w.pi {
        PiMode::None => {}
        PiMode::Controller => println!(
            "  protection information: controller (PRACT), {} bytes of metadata per block",
            w.metadata_size
        ),
        PiMode::Driver => println!(
            "  protection information: driver (computed before writes, checked after reads), {} bytes of metadata per block",
            w.metadata_size
        ),
    }
    println!(
        "  IOPS {}  bandwidth {:.1} MiB/s  ({} I/Os in {:.2} s: {} reads, {} writes, {} errors)",
        group(s.iops),
        s.mib_per_s,
        group(s.ios as f64),
        s.seconds,
        group(s.reads as f64),
        group(s.writes as f64),
        s.errors
    );
    let l = &s.latency_ns;
    println!(
        "  latency (µs): min {}  mean {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        us(l.min as f64),
        us(l.mean),
        us(l.p50 as f64),
        us(l.p90 as f64),
        us(l.p99 as f64),
        us(l.p99_9 as f64),
        us(l.max as f64)
    );
    match (w.clock, w.tsc_hz) {
        (ClockSource::Tsc, Some(hz)) => println!("  clock: TSC at {:.1} MHz", hz / 1e6),
        _ => println!("  clock: CLOCK_MONOTONIC"),
    }
    match (s.driver_ns_per_io, s.device_ns_per_io) {
        (Some(drv), Some(dev)) => println!(
            "  CPU per I/O: {:.0} ns (driver {:.0} ns + inline device {:.0} ns)",
            s.cpu_ns_per_io, drv, dev
        ),
        _ => println!("  CPU per I/O: {:.0} ns", s.cpu_ns_per_io),
    }
    println!(
        "  SQ doorbells per I/O: {:.3} ({:.3} MMIO writes, shadow doorbells {})",
        s.sq_doorbells_per_io,
        s.sq_mmio_per_io,
        if t.shadow_doorbells { "on" } else { "off" }
    );
    if w.rw == Rw::ZonedWrite {
        println!("  zones reset as the run wrapped: {}", s.zone_resets);
    }
    if let Some(v) = &r.verify {
        println!(
            "  verify: {} blocks written, {} checked, {}",
            group(v.blocks_written as f64),
            group(v.blocks_checked as f64),
            if v.mismatch.is_some() {
                "MISMATCH"
            } else {
                "no mismatch"
            }
        );
    }
}
