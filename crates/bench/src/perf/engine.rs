//! The engine: one thread per queue pair (or fewer threads, each polling
//! its queue pairs as one poll group), each queue pair keeping `qd`
//! requests in flight and recording their latencies; the results merged
//! into a [`Report`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::Duration;

use blk_dma::{HostAddr, HostSeg};
use hdrhistogram::Histogram;
use nvme_vfio::ctrl::{
    Controller, Done, Io, IoBuf, Namespace, Op, PollGroup, Protection, QueueConfig, QueuePair,
    ReportFilter, ZoneAction, ZoneState,
};
use nvme_vfio::mem::{DmaBuf, Registration};
use nvme_vfio::nvme::dptr::DEFAULT_SGL_THRESHOLD;

use super::clock::{Clock, Stamp};
use super::options::{Buffers, Options, PiMode, SglMode, Stop};
use super::report::{Latency, QueueSummary, Report, Summary, VerifySummary, WorkloadInfo, SCHEMA};
use super::target::Target;
use super::{verify, Error};

/// Largest latency recorded without saturating: one minute.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Verify mode keeps 5 bytes per I/O-sized unit of each queue's share.
const MAX_VERIFY_UNITS: u64 = 1 << 26;
/// Verify state of a unit whose last write failed: its contents are
/// unknown, so it is not checked.
const UNKNOWN: u32 = u32::MAX;
/// Empty polls between two looks at the clock.
const CLOCK_EVERY: u32 = 256;

/// Live counters of a run, for a progress display on another thread.
#[derive(Debug, Default)]
pub struct Progress {
    ios: AtomicU64,
    bytes: AtomicU64,
}

impl Progress {
    /// I/Os completed so far in the measured phase.
    pub fn ios(&self) -> u64 {
        self.ios.load(Ordering::Relaxed)
    }

    /// Bytes transferred so far in the measured phase.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The geometry every queue works on.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    first_lba: u64,
    blocks: u64,
    /// Blocks per I/O.
    bpi: u64,
    /// I/O-sized units in the range.
    units: u64,
    block: u64,
    /// Bytes per block in a data buffer: the block, and its metadata on an
    /// extended-LBA namespace (unless the controller inserts and strips
    /// it).
    stride: u64,
    /// Bytes per block in a separate metadata buffer (0: none).
    meta_stride: u64,
}

impl Geometry {
    /// Bytes of an I/O's data buffer.
    fn io_len(&self) -> usize {
        (self.bpi * self.stride) as usize
    }
}

/// The zones a zoned-write run works on: each queue pair writes zones
/// `q, q + queues, ...` of the range, one after the other.
#[derive(Clone, Copy, Debug)]
struct ZoneGeometry {
    /// Blocks per zone (the zone size).
    zone_blocks: u64,
    /// I/Os of `--bs` per zone: its capacity over `--bs`.
    per_zone: u64,
    /// Zones in the range.
    zones: u64,
}

/// What the queue threads share.
struct Ctx<'a> {
    target: &'a Target,
    o: &'a Options,
    ns: Namespace,
    g: Geometry,
    /// The zones, for zoned-write.
    zoned: Option<ZoneGeometry>,
    qcfg: QueueConfig,
    run_id: u32,
    progress: &'a Progress,
    /// Threads running the queue pairs.
    threads: usize,
    /// Set when a queue fails: the others stop.
    abort: AtomicBool,
    start: Barrier,
    end: Barrier,
    inline_nanos: [AtomicU64; 2],
    /// What requests are stamped with.
    clock: Clock,
    /// The end-to-end protection of every read and write (`--pi`).
    protection: Option<Protection>,
}

/// One queue's results.
struct QueueResult {
    qid: u16,
    hist: Histogram<u64>,
    reads: u64,
    writes: u64,
    bytes: u64,
    errors: u64,
    error: Option<String>,
    mismatch: Option<String>,
    checked: u64,
    written: u64,
    zone_resets: u64,
    elapsed: Duration,
    cpu: Duration,
    doorbells: (u64, u64),
}

/// Runs the workload `o` on `target` and reports. Completion errors and
/// verify mismatches end the run and are in the report
/// ([`Summary::error`], [`VerifySummary::mismatch`]); an `Err` means the
/// run could not be set up or a submission failed.
pub fn run(target: &Target, o: &Options, progress: &Progress) -> Result<Report, Error> {
    let ctrl = target.controller();
    let input = |m: String| Err(Error::Input(m));
    if o.qd == 0 {
        return input("--qd must be at least 1".into());
    }
    if o.queues == 0 || o.queues > ctrl.io_queues() {
        return input(format!(
            "--queues {} (the controller granted {} I/O queues)",
            o.queues,
            ctrl.io_queues()
        ));
    }
    if o.mix > 100 {
        return input(format!("--mix {} is not a percentage", o.mix));
    }
    if o.stop == Stop::Ios(0) {
        return input("--ios must be at least 1".into());
    }
    let threads = if o.threads == 0 { o.queues } else { o.threads };
    if threads > o.queues {
        return input(format!(
            "--threads {threads} is more than --queues {} (one queue pair per thread at most)",
            o.queues
        ));
    }
    if threads < o.queues && o.interrupts {
        return input(
            "--interrupts needs a thread per queue pair (--threads below --queues polls)".into(),
        );
    }
    if o.interrupts && target.sim_controller().is_some() {
        return input("--interrupts needs a VFIO device (nvme-sim raises no interrupts)".into());
    }
    if o.sgl == SglMode::On && !ctrl.identify().sgl_supported() {
        return input("--sgl on: the controller does not support SGLs".into());
    }
    let ns = ctrl
        .namespace(o.nsid)
        .map_err(|e| Error::Input(format!("namespace {}: {e}", o.nsid)))?;
    let block = ns.block_size();
    if o.bs == 0 || o.bs % block != 0 {
        return input(format!(
            "--bs {} is not a multiple of the {block}-byte block size",
            o.bs
        ));
    }
    if o.offset % o.bs != 0 || o.offset >= ns.bytes() {
        return input(format!(
            "--offset {} must be a multiple of --bs below the namespace's {} bytes",
            o.offset,
            ns.bytes()
        ));
    }
    let size = o.size.unwrap_or(ns.bytes() - o.offset);
    if size < o.bs || o.offset.checked_add(size).is_none_or(|e| e > ns.bytes()) {
        return input(format!(
            "range of {size} bytes at {} does not fit the namespace's {} bytes (or is smaller than --bs)",
            o.offset,
            ns.bytes()
        ));
    }
    let protection = protection_of(&ns, o)?;
    let format = ns.format();
    let pract = protection.is_some_and(|p| p.pract());
    if ns.is_zoned() && !o.rw.zoned() && (o.rw.writes() || o.verify) {
        return input(format!(
            "namespace {} is zoned: write it with --rw zoned-write",
            o.nsid
        ));
    }
    let mut g = Geometry {
        first_lba: o.offset / block,
        blocks: size / block,
        bpi: o.bs / block,
        units: size / o.bs,
        block,
        stride: format.data_stride(pract),
        meta_stride: format.metadata_stride(pract),
    };
    let zoned = match o.rw.zoned() {
        true => {
            let z = zoned_setup(ctrl, &ns, o, g.first_lba, g.blocks)?;
            g.blocks = z.zones * z.zone_blocks;
            g.units = z.zones * z.per_zone;
            Some(z)
        }
        false => None,
    };
    if g.units < o.queues as u64 {
        return input(format!(
            "the range holds {} I/Os of --bs, fewer than --queues",
            g.units
        ));
    }
    if o.verify {
        if block < 16 {
            return input("--verify needs blocks of at least 16 bytes".into());
        }
        if g.units.div_ceil(o.queues as u64) > MAX_VERIFY_UNITS {
            return input(format!(
                "--verify tracks each --bs unit of the range: at most {} per queue; give a smaller --size",
                MAX_VERIFY_UNITS
            ));
        }
    }
    let io_len = g.io_len() as u64;
    let commands = io_len.div_ceil(ctrl.max_transfer().max(g.stride)) as usize;
    let depth = o.qd as usize * commands + 1;
    let max_depth = ctrl.cap().max_queue_entries().min(65535) as usize;
    if depth > max_depth {
        return input(format!(
            "--qd {} needs {depth} queue entries ({commands} commands per I/O); the controller allows {max_depth}",
            o.qd
        ));
    }
    let qcfg = QueueConfig {
        depth: depth as u16,
        desc_pages: o.qd as usize * commands * (1 + (io_len as usize >> 21)) + 2,
        sgl: o.sgl != SglMode::Off,
        sgl_threshold: if o.sgl == SglMode::On {
            1
        } else {
            DEFAULT_SGL_THRESHOLD
        },
    };
    let clock = Clock::new(o.clock).map_err(Error::Input)?;
    let ctx = Ctx {
        target,
        o,
        ns: ns.clone(),
        g,
        zoned,
        qcfg,
        run_id: run_id(o.seed),
        progress,
        threads: threads as usize,
        abort: AtomicBool::new(false),
        start: Barrier::new(threads as usize),
        end: Barrier::new(threads as usize),
        inline_nanos: [AtomicU64::new(0), AtomicU64::new(0)],
        clock,
        protection,
    };
    let results: Vec<Result<Vec<QueueResult>, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as usize)
            .map(|t| {
                let ctx = &ctx;
                std::thread::Builder::new()
                    .name(format!("nvme-bench-t{t}"))
                    .spawn_scoped(s, move || {
                        if ctx.threads == ctx.o.queues as usize {
                            queue_main(ctx, t).map(|r| r.into_iter().collect())
                        } else {
                            group_main(ctx, t)
                        }
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(Error::Memory(std::io::Error::other(
                        "a queue thread panicked",
                    )))
                }),
                Err(e) => Err(Error::Memory(e)),
            })
            .collect()
    });
    let mut queues = Vec::new();
    for r in results {
        queues.extend(r?);
    }
    Ok(merge(&ctx, queues))
}

/// The protection of every I/O of workload `o` on namespace `ns`; refuses
/// `--pi` on a namespace without protection information, and a namespace
/// with metadata without `--pi`.
fn protection_of(ns: &Namespace, o: &Options) -> Result<Option<Protection>, Error> {
    let nsid = ns.id();
    let ms = ns.metadata_size();
    let pi = ns.protection_info();
    let mode = match o.pi {
        PiMode::None => "none",
        PiMode::Controller => "controller",
        PiMode::Driver => "driver",
    };
    match (o.pi, pi) {
        (PiMode::None, _) if !ns.has_metadata() => return Ok(None),
        (PiMode::None, Some(p)) => {
            return Err(Error::Input(format!(
                "namespace {nsid} is formatted with {ms} bytes of metadata per block holding \
                 protection information (type {}): run it with --pi controller (the controller \
                 inserts, checks and strips the tuples) or --pi driver (the driver computes and \
                 checks them)",
                p.kind.dps()
            )))
        }
        (PiMode::None, None) => {
            return Err(Error::Input(format!(
                "namespace {nsid} is formatted with {ms} bytes of metadata per block without \
                 protection information: nvme-bench moves metadata only as protection \
                 information (--pi); format the namespace without metadata or with protection \
                 information"
            )))
        }
        (_, None) => {
            return Err(Error::Input(format!(
                "--pi {mode}: namespace {nsid} is formatted without protection information{}",
                match ms {
                    0 => String::new(),
                    n => format!(" ({n} bytes of metadata per block)"),
                }
            )))
        }
        (_, Some(_)) => {}
    }
    if o.buffers == Buffers::Registered {
        return Err(Error::Input(format!(
            "--pi {mode} needs --buffers pool or user (registered buffers carry no metadata)"
        )));
    }
    if ns.is_zoned() {
        return Err(Error::Input(format!(
            "--pi {mode}: namespace {nsid} is zoned; protection is run on NVM namespaces only"
        )));
    }
    Ok(Some(match o.pi {
        PiMode::Driver => Protection::driver(),
        _ => Protection::controller(),
    }))
}

/// Fills the blocks of an I/O's data buffer `b` for verify mode: their
/// data, each block's metadata (extended LBAs) left as it is.
fn fill_blocks(g: &Geometry, b: &mut [u8], lba: u64, tag: u64) {
    let (block, stride) = (g.block as usize, g.stride as usize);
    if block == stride {
        verify::fill(b, lba, block, tag);
        return;
    }
    for (i, s) in b.chunks_exact_mut(stride).enumerate() {
        verify::fill(&mut s[..block], lba + i as u64, block, tag);
    }
}

/// Checks the blocks of an I/O's data buffer `b` (as [`fill_blocks`] lays
/// them out); returns the blocks checked.
fn check_blocks(g: &Geometry, b: &[u8], lba: u64, tag: u64) -> Result<u64, String> {
    let (block, stride) = (g.block as usize, g.stride as usize);
    if block == stride {
        return verify::check(b, lba, block, tag);
    }
    let mut n = 0;
    for (i, s) in b.chunks_exact(stride).enumerate() {
        n += verify::check(&s[..block], lba + i as u64, block, tag)?;
    }
    Ok(n)
}

/// Checks a zoned-write workload against zoned namespace `ns` (the range
/// of `blocks` from `first_lba` in whole zones, each of the same capacity
/// and writable, `--bs` dividing it and within the Zone Append limit, two
/// open and active zones per queue pair within the limits) and resets the
/// range's zones that are not empty, so the run starts on empty zones.
fn zoned_setup(
    ctrl: &Controller,
    ns: &Namespace,
    o: &Options,
    first_lba: u64,
    blocks: u64,
) -> Result<ZoneGeometry, Error> {
    let input = |m: String| Err(Error::Input(m));
    let Some(info) = ns.zones().filter(|_| ns.is_zoned()) else {
        return input(format!(
            "--rw zoned-write needs a zoned namespace (namespace {} is {})",
            ns.id(),
            ns.command_set()
        ));
    };
    if o.buffers == Buffers::Registered {
        return input("--rw zoned-write takes --buffers pool or user".into());
    }
    let block = ns.block_size();
    let zone_blocks = info.zone_blocks();
    let zone_bytes = zone_blocks * block;
    if first_lba % zone_blocks != 0 {
        return input(format!(
            "--rw zoned-write: --offset must be a multiple of the zone size ({zone_bytes} bytes)"
        ));
    }
    let zones = blocks / zone_blocks;
    if zones < o.queues as u64 {
        return input(format!(
            "--rw zoned-write: the range holds {zones} whole zones of {zone_bytes} bytes, \
             fewer than --queues"
        ));
    }
    let per_queue = 2 * o.queues as u32;
    for (limit, what) in [(info.max_open(), "open"), (info.max_active(), "active")] {
        if limit.is_some_and(|max| per_queue > max) {
            return input(format!(
                "--rw zoned-write keeps up to 2 zones {what} per queue pair: --queues {} \
                 needs {per_queue}, the namespace allows {}",
                o.queues,
                limit.unwrap_or(0)
            ));
        }
    }
    let mut qp = ctrl.queue_pair(QueueConfig::default())?;
    let limit = qp.zone_append_limit(ns);
    if o.bs > limit {
        return input(format!(
            "--bs {} is over the Zone Append size limit of {limit} bytes",
            o.bs
        ));
    }
    let report = qp.report_zones(ns, first_lba, ReportFilter::All, zones as usize)?;
    let capacity = report.first().map_or(0, |z| z.capacity);
    if report.len() as u64 != zones {
        return input(format!(
            "the controller reports {} zones in the range, not {zones}",
            report.len()
        ));
    }
    for z in &report {
        if z.capacity != capacity {
            return input(format!(
                "zone {:#x} has a capacity of {} blocks, zone {:#x} {capacity}: \
                 --rw zoned-write needs zones of one capacity",
                z.start, z.capacity, first_lba
            ));
        }
        if matches!(z.state, ZoneState::ReadOnly | ZoneState::Offline) {
            return input(format!(
                "zone {:#x} is {}: leave it out of the range (--offset, --size)",
                z.start, z.state
            ));
        }
    }
    let capacity_bytes = capacity * block;
    if capacity_bytes < o.bs || capacity_bytes % o.bs != 0 {
        return input(format!(
            "--bs {} must divide the zone capacity of {capacity_bytes} bytes",
            o.bs
        ));
    }
    for z in report.iter().filter(|z| z.state != ZoneState::Empty) {
        qp.zone_action(ns, z.start, ZoneAction::Reset)?;
    }
    Ok(ZoneGeometry {
        zone_blocks,
        per_zone: capacity_bytes / o.bs,
        zones,
    })
}

/// A run ID for verify tags: differs between runs, so a block left by an
/// earlier run never passes for this one's.
fn run_id(seed: u64) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = Rng::new(t ^ seed ^ (std::process::id() as u64) << 32);
    (x.next() as u32).max(1)
}

/// The sim's inline-mode device time so far, if the target is one.
fn inline_nanos(t: &Target) -> u64 {
    t.sim_controller().map_or(0, |s| s.stats().inline_nanos)
}

fn queue_main(ctx: &Ctx<'_>, q: usize) -> Result<Option<QueueResult>, Error> {
    let setup = Worker::new(ctx, q).and_then(|mut w| {
        if ctx.o.verify && !ctx.o.rw.writes() {
            w.phase(Mode::Fill)?;
        }
        Ok(w)
    });
    if setup.is_err() {
        ctx.abort.store(true, Ordering::Relaxed);
    }
    ctx.start.wait();
    let mut w = match setup {
        Ok(w) => w,
        Err(e) => {
            ctx.end.wait();
            return Err(e);
        }
    };
    if q == 0 {
        ctx.inline_nanos[0].store(inline_nanos(ctx.target), Ordering::Relaxed);
    }
    let db0 = w.doorbell_stats();
    let cpu0 = thread_cpu();
    let t0 = ctx.clock.now();
    let r = if ctx.abort.load(Ordering::Relaxed) {
        Ok(())
    } else {
        w.phase(Mode::Work)
    };
    let elapsed = ctx.clock.now() - t0;
    let cpu = thread_cpu().saturating_sub(cpu0);
    let db1 = w.doorbell_stats();
    if r.is_err() {
        ctx.abort.store(true, Ordering::Relaxed);
    }
    ctx.end.wait();
    if q == 0 {
        ctx.inline_nanos[1].store(inline_nanos(ctx.target), Ordering::Relaxed);
    }
    r?;
    if ctx.o.verify && w.error.is_none() && w.mismatch.is_none() {
        w.phase(Mode::Check)?;
    }
    let qid = w.qid();
    Ok(Some(w.result(
        qid,
        elapsed,
        cpu,
        (db1.0 - db0.0, db1.1 - db0.1),
    )))
}

/// A thread running the queue pairs `t, t + threads, ...` as one poll
/// group.
fn group_main(ctx: &Ctx<'_>, t: usize) -> Result<Vec<QueueResult>, Error> {
    // Declared before the group: dropped after it (the queue pairs wait
    // for what is in flight before the buffers go).
    let mut workers = Vec::new();
    let mut group = PollGroup::new();
    let setup = (t..ctx.o.queues as usize)
        .step_by(ctx.threads)
        .try_for_each(|q| {
            let mut w = Worker::new(ctx, q)?;
            if let Some(qp) = w.qp.take() {
                group.add(qp);
            }
            workers.push(w);
            Ok::<(), Error>(())
        })
        .and_then(|()| {
            if ctx.o.verify && !ctx.o.rw.writes() {
                group_phase(&mut workers, &mut group, Mode::Fill)?;
            }
            Ok(())
        });
    if setup.is_err() {
        ctx.abort.store(true, Ordering::Relaxed);
    }
    ctx.start.wait();
    if let Err(e) = setup {
        ctx.end.wait();
        return Err(e);
    }
    if t == 0 {
        ctx.inline_nanos[0].store(inline_nanos(ctx.target), Ordering::Relaxed);
    }
    let stats = |g: &mut PollGroup| -> Vec<(u64, u64)> {
        g.iter_mut().map(|(_, qp)| qp.doorbell_stats()).collect()
    };
    let db0 = stats(&mut group);
    let cpu0 = thread_cpu();
    let t0 = ctx.clock.now();
    let r = if ctx.abort.load(Ordering::Relaxed) {
        Ok(())
    } else {
        group_phase(&mut workers, &mut group, Mode::Work)
    };
    let elapsed = ctx.clock.now() - t0;
    let cpu = thread_cpu().saturating_sub(cpu0);
    let db1 = stats(&mut group);
    if r.is_err() {
        ctx.abort.store(true, Ordering::Relaxed);
    }
    ctx.end.wait();
    if t == 0 {
        ctx.inline_nanos[1].store(inline_nanos(ctx.target), Ordering::Relaxed);
    }
    r?;
    if ctx.o.verify
        && workers
            .iter()
            .all(|w| w.error.is_none() && w.mismatch.is_none())
    {
        group_phase(&mut workers, &mut group, Mode::Check)?;
    }
    // The thread's CPU time, shared out between its queue pairs by I/Os.
    let ios: u64 = workers
        .iter()
        .map(|w| w.reads + w.writes)
        .sum::<u64>()
        .max(1);
    let qids: Vec<u16> = group.iter_mut().map(|(_, qp)| qp.qid()).collect();
    Ok(workers
        .iter_mut()
        .enumerate()
        .map(|(i, w)| {
            let share = (w.reads + w.writes) as f64 / ios as f64;
            let (a, b) = (db0.get(i).copied(), db1.get(i).copied());
            let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
            let qid = qids.get(i).copied().unwrap_or(0);
            w.result(qid, elapsed, cpu.mul_f64(share), (b.0 - a.0, b.1 - a.1))
        })
        .collect())
}

/// [`Worker::phase`] for the queue pairs of one poll group (member `i` is
/// worker `i`'s): each keeps its requests in flight; the group is polled
/// once per round.
fn group_phase(workers: &mut [Worker<'_>], group: &mut PollGroup, mode: Mode) -> Result<(), Error> {
    let first = workers.first().map(|w| (w.ctx.o, w.ctx.clock));
    let Some((o, clock)) = first else {
        return Ok(());
    };
    let limit = match (mode, o.stop) {
        (Mode::Work, Stop::Time(d)) => Some(d),
        _ => None,
    };
    for w in workers.iter_mut() {
        w.begin(mode);
    }
    let budget = workers.len() * o.qd as usize;
    let t0 = clock.now();
    let mut now = t0;
    let mut idle = 0u32;
    loop {
        for (i, w) in workers.iter_mut().enumerate() {
            if !w.stopping {
                let Some(qp) = group.get_mut(i) else { continue };
                w.refill(qp, now)?;
            }
        }
        if workers
            .iter()
            .all(|w| w.inflight() == 0 && (w.stopping || !w.more()))
        {
            return Ok(());
        }
        let at = clock.now();
        let (mut n, mut bytes) = (0u64, 0u64);
        group.poll(budget, |i, _, d| {
            if let Some(w) = workers.get_mut(i) {
                n += 1;
                bytes += w.complete(d, at);
            }
        });
        if n > 0 {
            now = at;
            idle = 0;
            if mode == Mode::Work {
                let p = workers[0].ctx.progress;
                p.ios.fetch_add(n, Ordering::Relaxed);
                p.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        } else {
            idle += 1;
            if idle < CLOCK_EVERY {
                continue;
            }
            idle = 0;
            now = clock.now();
        }
        let all =
            limit.is_some_and(|d| now - t0 >= d) || workers[0].ctx.abort.load(Ordering::Relaxed);
        for w in workers.iter_mut() {
            if all || w.error.is_some() || w.mismatch.is_some() {
                w.stopping = true;
            }
        }
    }
}

fn merge(ctx: &Ctx<'_>, queues: Vec<QueueResult>) -> Report {
    let o = ctx.o;
    let mut hist = new_histogram();
    let mut s = Summary::default();
    let mut v = VerifySummary::default();
    let (mut cpu, mut db, mut mmio) = (Duration::ZERO, 0, 0);
    let mut per_queue = Vec::new();
    for r in &queues {
        let _ = hist.add(&r.hist);
        s.seconds = s.seconds.max(r.elapsed.as_secs_f64());
        s.reads += r.reads;
        s.writes += r.writes;
        s.bytes += r.bytes;
        s.errors += r.errors;
        if s.error.is_none() {
            s.error.clone_from(&r.error);
        }
        if v.mismatch.is_none() {
            v.mismatch.clone_from(&r.mismatch);
        }
        v.blocks_checked += r.checked;
        v.blocks_written += r.written;
        s.zone_resets += r.zone_resets;
        cpu += r.cpu;
        db += r.doorbells.0;
        mmio += r.doorbells.1;
        let ios = r.reads + r.writes;
        per_queue.push(QueueSummary {
            qid: r.qid,
            ios,
            iops: per_second(ios, r.elapsed.as_secs_f64()),
            p50_ns: if r.hist.is_empty() {
                0
            } else {
                r.hist.value_at_quantile(0.5)
            },
            cpu_ns_per_io: per(r.cpu.as_nanos() as f64, ios),
        });
    }
    s.ios = s.reads + s.writes;
    s.iops = per_second(s.ios, s.seconds);
    s.mib_per_s = per_second(s.bytes, s.seconds) / (1 << 20) as f64;
    s.cpu_ns_per_io = per(cpu.as_nanos() as f64, s.ios);
    s.sq_doorbells_per_io = per(db as f64, s.ios);
    s.sq_mmio_per_io = per(mmio as f64, s.ios);
    if ctx.target.info().inline {
        let dev = ctx.inline_nanos[1]
            .load(Ordering::Relaxed)
            .saturating_sub(ctx.inline_nanos[0].load(Ordering::Relaxed));
        let d = per(dev as f64, s.ios);
        s.device_ns_per_io = Some(d);
        s.driver_ns_per_io = Some((s.cpu_ns_per_io - d).max(0.0));
    }
    s.latency_ns = Latency::of(&hist);
    let (time_s, ios) = match o.stop {
        Stop::Time(d) => (Some(d.as_secs_f64()), None),
        Stop::Ios(n) => (None, Some(n)),
    };
    Report {
        schema: SCHEMA,
        target: ctx.target.info().clone(),
        workload: WorkloadInfo {
            rw: o.rw,
            mix: o.mix,
            bs: o.bs,
            qd: o.qd,
            queues: o.queues,
            threads: ctx.threads as u16,
            time_s,
            ios,
            nsid: o.nsid,
            block_size: ctx.g.block,
            first_lba: ctx.g.first_lba,
            blocks: ctx.g.blocks,
            buffers: o.buffers,
            sgl: o.sgl,
            interrupts: o.interrupts,
            seed: o.seed,
            verify: o.verify,
            pi: o.pi,
            metadata_size: ctx.ns.metadata_size(),
            clock: ctx.clock.source(),
            tsc_hz: ctx.clock.tsc_hz(),
        },
        result: s,
        queues: per_queue,
        verify: o.verify.then_some(v),
        histogram: hist,
    }
}

fn per(x: f64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        x / n as f64
    }
}

fn per_second(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures are valid"))
    })
}

/// What is left where a queue's histogram was taken out: the smallest
/// there is. (A full one is some 220 KiB, allocated and freed for nothing
/// at the end of every run; with it glibc trimmed its heap every other
/// run, a system call the steady-state test saw.)
fn empty_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 2, 1)
        .unwrap_or_else(|_| unreachable!("1..2 at 1 significant figure is valid"))
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// xorshift64*: fast, and good enough to pick offsets.
#[derive(Clone, Copy, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed: any seed (even 0) gives a good state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)) | 1)
    }

    #[inline]
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n > 0`).
    #[inline]
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// The phases of a queue's run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Verify mode before a read-only workload: write every unit once.
    Fill,
    /// The measured workload.
    Work,
    /// Verify mode after the workload: read back every unit written.
    Check,
}

/// A request slot: one buffer, at most one request in flight.
#[derive(Clone, Copy, Debug)]
struct Slot {
    start: Stamp,
    /// The unit's index in this queue's share.
    k: u64,
    write: bool,
    seq: u32,
}

/// Registered user memory: mapped once, translated per I/O.
#[derive(Debug)]
struct RegisteredMem {
    ptr: *mut u8,
    len: usize,
    reg: Option<Registration>,
}

impl Drop for RegisteredMem {
    fn drop(&mut self) {
        // Unregister before the memory goes; no I/O is in flight (the
        // queue pair, dropped first, waited for everything).
        drop(self.reg.take());
        // SAFETY: `ptr..ptr + len` is the mapping made in `Worker::new`,
        // no longer registered or referenced.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The buffers, one per slot.
#[derive(Debug)]
enum Bufs {
    Pool(Vec<Option<DmaBuf>>),
    User(Vec<Option<Vec<u8>>>),
    Registered(RegisteredMem),
}

/// Submits a read, write or Zone Append (`op`; `lba` is an append's zone
/// start) that takes its buffer from `home`; a refused request's buffer
/// goes back there (`back` unwraps it).
/// With `meta` (its metadata buffer, if it has one) and `protection`
/// (then the I/O is `len` bytes of the buffer).
#[allow(clippy::too_many_arguments)]
fn submit_owned<B: Into<IoBuf>>(
    qp: &mut QueuePair,
    ns: &Namespace,
    (op, lba, len): (Op, u64, usize),
    tag: u64,
    home: &mut Option<B>,
    meta: Option<&mut Option<DmaBuf>>,
    protection: Option<Protection>,
    back: fn(IoBuf) -> Option<B>,
) -> Result<(), nvme_vfio::Error> {
    let Some(b) = home.take() else {
        return Err(nvme_vfio::Error::Invalid("buffer missing".into()));
    };
    let mut io = match op {
        Op::Write { .. } => Io::write(ns, lba, b),
        Op::ZoneAppend { .. } => Io::zone_append(ns, lba, b),
        _ => Io::read(ns, lba, b),
    };
    if let Some(p) = protection {
        // Exactly the I/O's blocks: a pool buffer may be larger.
        io = io.protection(p).with_len(len);
    }
    let mut meta = meta;
    if let Some(m) = meta.as_mut().and_then(|m| m.take()) {
        io = io.metadata(m);
    }
    qp.submit(io.tag(tag)).map_err(|(e, io)| {
        let (b, m) = io.into_bufs();
        *home = back(b);
        if let Some(home) = meta {
            *home = m;
        }
        e
    })
}

/// One queue pair's engine.
struct Worker<'a> {
    // Declared first: dropped (waiting for what is in flight) before the
    // buffers. Out while its thread polls it in a poll group.
    qp: Option<QueuePair>,
    bufs: Bufs,
    /// Separate metadata buffers, one per slot (none when the namespace
    /// moves no separate metadata).
    metas: Vec<Option<DmaBuf>>,
    ctx: &'a Ctx<'a>,
    ns: Namespace,
    q: u64,
    /// Units in this queue's share: `q, q + queues, q + 2 * queues, ...`.
    share: u64,
    rng: Rng,
    mode: Mode,
    cursor: u64,
    issued: u64,
    /// The measured phase's quota, in `Stop::Ios` runs.
    quota: u64,
    stopping: bool,
    slots: Vec<Slot>,
    free: Vec<usize>,
    done: Vec<Done>,
    hist: Histogram<u64>,
    reads: u64,
    writes: u64,
    bytes: u64,
    errors: u64,
    error: Option<String>,
    /// Verify mode: the sequence number of each unit's last write (0: not
    /// written in this run), and which units have a request in flight.
    seqs: Vec<u32>,
    busy: Vec<bool>,
    next_seq: u32,
    mismatch: Option<String>,
    checked: u64,
    written: u64,
    /// zoned-write: where the appends go.
    zone: Option<ZoneCursor>,
    /// zoned-write in verify mode: for each unit its data landed at, the
    /// unit (in its zone) the data was filled for, which it carries as its
    /// LBA field (appends land where the controller says).
    keys: Vec<u32>,
    zone_resets: u64,
}

/// A queue pair's progress through its zones in a zoned-write run.
#[derive(Debug)]
struct ZoneCursor {
    /// The zone (of this queue's) being appended to.
    cur: u64,
    /// Appends issued to it.
    issued: u64,
    /// Appends in flight, per zone.
    inflight: Vec<u32>,
    /// Whether each zone was written since the run began (it is reset
    /// before it is written again).
    used: Vec<bool>,
    /// The current zone waits for its reset.
    reset_due: bool,
}

impl<'a> Worker<'a> {
    fn new(ctx: &'a Ctx<'a>, q: usize) -> Result<Self, Error> {
        let o = ctx.o;
        let ctrl = ctx.target.controller();
        let qp = ctrl.queue_pair(ctx.qcfg)?;
        let qd = o.qd as usize;
        // The data buffer of an I/O: with extended LBAs, blocks and their
        // metadata.
        let bs = ctx.g.io_len();
        let mut rng = Rng::new(o.seed ^ (q as u64).wrapping_mul(0x5851_f42d_4c95_7f2d));
        // Written data is random-looking (not zeros a device could
        // compress), unless verify mode writes its own.
        let mut pattern = |b: &mut [u8]| {
            for w in b.chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                w.copy_from_slice(&v[..w.len()]);
            }
        };
        let bufs = match o.buffers {
            Buffers::Pool => {
                let mut v = Vec::with_capacity(qd);
                for _ in 0..qd {
                    let mut b = ctrl.dma_alloc(bs)?;
                    pattern(b.as_mut_slice());
                    v.push(Some(b));
                }
                Bufs::Pool(v)
            }
            Buffers::User => Bufs::User(
                (0..qd)
                    .map(|_| {
                        let mut b = vec![0u8; bs];
                        pattern(&mut b);
                        Some(b)
                    })
                    .collect(),
            ),
            Buffers::Registered => {
                let len = (qd * bs).next_multiple_of(1 << 21);
                // SAFETY: a fresh private anonymous mapping; no address
                // hint, so nothing existing is replaced.
                let ptr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                        -1,
                        0,
                    )
                };
                if ptr == libc::MAP_FAILED {
                    return Err(Error::Memory(std::io::Error::last_os_error()));
                }
                let mut m = RegisteredMem {
                    ptr: ptr.cast(),
                    len,
                    reg: None,
                };
                // SAFETY: the mapping is ours, `len` bytes, and outlives
                // the registration (RegisteredMem's drop unregisters
                // first); no I/O is in flight on it yet.
                pattern(unsafe { std::slice::from_raw_parts_mut(m.ptr, len) });
                // SAFETY: as above; the registration is dropped before the
                // memory is unmapped, after the queue pair has waited for
                // every request.
                m.reg = Some(unsafe { ctrl.space().register(m.ptr, len)? });
                Bufs::Registered(m)
            }
        };
        let metas = match ctx.g.meta_stride {
            0 => Vec::new(),
            n => (0..qd)
                .map(|_| ctrl.dma_alloc((ctx.g.bpi * n) as usize).map(Some))
                .collect::<Result<_, _>>()?,
        };
        let nq = o.queues as u64;
        let (share, zone) = match ctx.zoned {
            Some(z) => {
                let owned = (z.zones - q as u64).div_ceil(nq);
                let cursor = ZoneCursor {
                    cur: 0,
                    issued: 0,
                    inflight: vec![0; owned as usize],
                    used: vec![false; owned as usize],
                    reset_due: false,
                };
                (owned * z.per_zone, Some(cursor))
            }
            None => ((ctx.g.units - q as u64).div_ceil(nq), None),
        };
        let quota = match o.stop {
            Stop::Ios(n) => n / nq + u64::from((q as u64) < n % nq),
            Stop::Time(_) => u64::MAX,
        };
        let verify_len = if o.verify { share as usize } else { 0 };
        let now = ctx.clock.now();
        Ok(Self {
            qp: Some(qp),
            bufs,
            metas,
            ctx,
            ns: ctx.ns.clone(),
            q: q as u64,
            share,
            rng,
            mode: Mode::Work,
            cursor: 0,
            issued: 0,
            quota,
            stopping: false,
            slots: vec![
                Slot {
                    start: now,
                    k: 0,
                    write: false,
                    seq: 0
                };
                qd
            ],
            free: (0..qd).rev().collect(),
            done: Vec::with_capacity(qd),
            hist: new_histogram(),
            reads: 0,
            writes: 0,
            bytes: 0,
            errors: 0,
            error: None,
            seqs: vec![0; verify_len],
            busy: vec![false; verify_len],
            next_seq: 0,
            mismatch: None,
            checked: 0,
            written: 0,
            keys: if zone.is_some() && o.verify {
                vec![0; verify_len]
            } else {
                Vec::new()
            },
            zone,
            zone_resets: 0,
        })
    }

    fn inflight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The queue pair's doorbell statistics (zeros while it is in a poll
    /// group).
    fn doorbell_stats(&self) -> (u64, u64) {
        self.qp.as_ref().map_or((0, 0), QueuePair::doorbell_stats)
    }

    /// The queue pair's ID (0 while it is in a poll group).
    fn qid(&self) -> u16 {
        self.qp.as_ref().map_or(0, QueuePair::qid)
    }

    /// The queue's results (its histogram and errors taken out).
    fn result(
        &mut self,
        qid: u16,
        elapsed: Duration,
        cpu: Duration,
        doorbells: (u64, u64),
    ) -> QueueResult {
        QueueResult {
            qid,
            hist: std::mem::replace(&mut self.hist, empty_histogram()),
            reads: self.reads,
            writes: self.writes,
            bytes: self.bytes,
            errors: self.errors,
            error: self.error.take(),
            mismatch: self.mismatch.take(),
            checked: self.checked,
            written: self.written,
            zone_resets: self.zone_resets,
            elapsed,
            cpu,
            doorbells,
        }
    }

    /// Starts phase `mode`.
    fn begin(&mut self, mode: Mode) {
        self.mode = mode;
        self.cursor = 0;
        self.issued = 0;
        self.stopping = false;
    }

    /// Whether the phase has more requests to issue.
    fn more(&self) -> bool {
        match self.mode {
            Mode::Fill | Mode::Check => self.cursor < self.share,
            Mode::Work => self.issued < self.quota,
        }
    }

    /// Runs one phase until its requests are issued (or time is up, or a
    /// request failed) and everything in flight has completed.
    fn phase(&mut self, mode: Mode) -> Result<(), Error> {
        let Some(mut qp) = self.qp.take() else {
            return Err(Error::Input("the queue pair is in a poll group".into()));
        };
        let r = self.phase_on(&mut qp, mode);
        self.qp = Some(qp);
        r
    }

    /// [`phase`](Self::phase) on `qp`, this worker's queue pair.
    fn phase_on(&mut self, qp: &mut QueuePair, mode: Mode) -> Result<(), Error> {
        self.begin(mode);
        let limit = match (mode, self.ctx.o.stop) {
            (Mode::Work, Stop::Time(d)) => Some(d),
            _ => None,
        };
        let interrupts = self.ctx.o.interrupts;
        let clock = self.ctx.clock;
        let t0 = clock.now();
        let mut now = t0;
        let mut idle = 0u32;
        let mut done = std::mem::take(&mut self.done);
        let r = loop {
            if !self.stopping {
                if let Err(e) = self.refill(qp, now) {
                    break Err(e);
                }
            }
            if self.inflight() == 0 && (self.stopping || !self.more()) {
                break Ok(());
            }
            let n = if interrupts {
                qp.wait(&mut done, Duration::from_millis(100))
            } else {
                qp.poll(&mut done)
            };
            if n > 0 || interrupts {
                now = clock.now();
                idle = 0;
                let mut bytes = 0;
                for d in done.drain(..) {
                    bytes += self.complete(d, now);
                }
                if mode == Mode::Work {
                    let p = self.ctx.progress;
                    p.ios.fetch_add(n as u64, Ordering::Relaxed);
                    p.bytes.fetch_add(bytes, Ordering::Relaxed);
                }
            } else {
                idle += 1;
                if idle < CLOCK_EVERY {
                    continue;
                }
                idle = 0;
                now = clock.now();
            }
            if limit.is_some_and(|d| now - t0 >= d)
                || self.error.is_some()
                || self.mismatch.is_some()
                || self.ctx.abort.load(Ordering::Relaxed)
            {
                self.stopping = true;
            }
        };
        self.done = done;
        r
    }

    /// Submits requests into the free slots.
    fn refill(&mut self, qp: &mut QueuePair, now: Stamp) -> Result<(), Error> {
        while self.more() {
            if !self.reset_zone_if_due(qp) {
                return Ok(());
            }
            let Some(slot) = self.free.pop() else {
                return Ok(());
            };
            let Some((k, write)) = self.next_request() else {
                self.free.push(slot);
                return Ok(());
            };
            self.submit(qp, slot, k, write, now)?;
        }
        Ok(())
    }

    /// The next unit (index in this queue's share) and whether to write
    /// it; `None` when verify mode finds the unit busy (try again after
    /// completions) or a check phase has nothing left.
    fn next_request(&mut self) -> Option<(u64, bool)> {
        let o = self.ctx.o;
        match self.mode {
            Mode::Fill => {
                let k = self.cursor;
                self.cursor += 1;
                Some((k, true))
            }
            Mode::Check => {
                while self.cursor < self.share {
                    let k = self.cursor;
                    self.cursor += 1;
                    let s = self.seqs[k as usize];
                    if s != 0 && s != UNKNOWN {
                        return Some((k, false));
                    }
                }
                None
            }
            Mode::Work if self.zone.is_some() => self.next_append(),
            Mode::Work => {
                let write = match o.rw {
                    super::Rw::Read | super::Rw::Randread => false,
                    super::Rw::Write | super::Rw::Randwrite | super::Rw::ZonedWrite => true,
                    super::Rw::Randrw => self.rng.below(100) >= o.mix as u64,
                };
                let k = if o.rw.random() {
                    let mut k = self.rng.below(self.share);
                    // Verify mode: one request per unit at a time.
                    for _ in 0..3 {
                        if !o.verify || !self.busy[k as usize] {
                            break;
                        }
                        k = self.rng.below(self.share);
                    }
                    k
                } else {
                    self.cursor
                };
                if o.verify && self.busy[k as usize] {
                    return None;
                }
                if !o.rw.random() {
                    self.cursor = if self.cursor + 1 == self.share {
                        0
                    } else {
                        self.cursor + 1
                    };
                }
                Some((k, write))
            }
        }
    }

    fn lba(&self, k: u64) -> u64 {
        let g = &self.ctx.g;
        match &self.ctx.zoned {
            Some(z) => self.zone_start(k / z.per_zone) + k % z.per_zone * g.bpi,
            None => g.first_lba + (self.q + k * self.ctx.o.queues as u64) * g.bpi,
        }
    }

    /// zoned-write: the first LBA of this queue's zone `j`.
    fn zone_start(&self, j: u64) -> u64 {
        let (g, nq) = (&self.ctx.g, self.ctx.o.queues as u64);
        let zb = self.ctx.zoned.map_or(0, |z| z.zone_blocks);
        g.first_lba + (self.q + j * nq) * zb
    }

    /// The LBA unit `k`'s blocks carry in verify mode: its own, or for an
    /// append the one of the unit it was filled for.
    fn verify_key(&self, k: u64) -> u64 {
        match (&self.ctx.zoned, self.keys.get(k as usize)) {
            (Some(z), Some(&i)) => self.lba(k / z.per_zone * z.per_zone + u64::from(i)),
            _ => self.lba(k),
        }
    }

    /// zoned-write: the next append (the unit it is filled for), moving to
    /// the next zone when this one has all its appends; `None` while a
    /// zone written before waits for its reset.
    fn next_append(&mut self) -> Option<(u64, bool)> {
        let per_zone = self.ctx.zoned?.per_zone;
        let c = self.zone.as_mut()?;
        if c.reset_due {
            return None;
        }
        if c.issued == per_zone {
            c.cur = (c.cur + 1) % c.used.len() as u64;
            c.issued = 0;
            if c.used[c.cur as usize] {
                c.reset_due = true;
                return None;
            }
        }
        c.used[c.cur as usize] = true;
        let k = c.cur * per_zone + c.issued;
        c.issued += 1;
        Some((k, true))
    }

    /// zoned-write: resets the zone about to be written again, once no
    /// append to it is in flight. Whether appends may go on (not while the
    /// zone waits, nor after a failed reset, which ends the run).
    fn reset_zone_if_due(&mut self, qp: &mut QueuePair) -> bool {
        let Some(c) = &self.zone else { return true };
        if !c.reset_due || self.mode != Mode::Work {
            return true;
        }
        let cur = c.cur;
        if c.inflight[cur as usize] > 0 {
            return false;
        }
        let zslba = self.zone_start(cur);
        if let Err(e) = qp.zone_action(&self.ns, zslba, ZoneAction::Reset) {
            self.errors += 1;
            self.error
                .get_or_insert_with(|| format!("Reset Zone at LBA {zslba}: {e}"));
            self.stopping = true;
            return false;
        }
        self.zone_resets += 1;
        if let (Some(c), Some(z)) = (self.zone.as_mut(), self.ctx.zoned) {
            c.reset_due = false;
            // Its blocks read as zeroes now: nothing to check there.
            let units = cur * z.per_zone..(cur + 1) * z.per_zone;
            for s in self
                .seqs
                .get_mut(units.start as usize..units.end as usize)
                .into_iter()
                .flatten()
            {
                *s = 0;
            }
        }
        true
    }

    /// Slot `slot`'s buffer; only while no request on it is in flight.
    fn slot_buf(&mut self, slot: usize) -> Option<&mut [u8]> {
        let bs = self.ctx.o.bs as usize;
        match &mut self.bufs {
            Bufs::Pool(v) => v[slot].as_mut().map(|b| b.as_mut_slice()),
            Bufs::User(v) => v[slot].as_deref_mut(),
            Bufs::Registered(m) => {
                // SAFETY: the slot's `bs` bytes lie inside the mapping, and
                // no request on them is in flight (the caller's promise),
                // so the device does not access them meanwhile.
                let b = unsafe { std::slice::from_raw_parts_mut(m.ptr.add(slot * bs), bs) };
                Some(b)
            }
        }
    }

    fn submit(
        &mut self,
        qp: &mut QueuePair,
        slot: usize,
        k: u64,
        write: bool,
        now: Stamp,
    ) -> Result<(), Error> {
        let o = self.ctx.o;
        let lba = self.lba(k);
        let mut seq = 0;
        if o.verify {
            self.next_seq = self.next_seq.wrapping_add(1).max(1);
            if self.next_seq == UNKNOWN {
                self.next_seq = 1;
            }
            seq = self.next_seq;
            if write {
                let (g, tag) = (self.ctx.g, verify::tag(self.ctx.run_id, seq));
                if let Some(b) = self.slot_buf(slot) {
                    fill_blocks(&g, b, lba, tag);
                }
            }
            self.busy[k as usize] = true;
        }
        let append = self.appends(k, write);
        let (op, at) = match (append, write) {
            (Some(j), _) => (Op::ZoneAppend { fua: false }, self.zone_start(j)),
            (None, true) => (Op::Write { fua: false }, lba),
            (None, false) => (Op::Read, lba),
        };
        let tag = slot as u64;
        let (meta, pi) = (self.metas.get_mut(slot), self.ctx.protection);
        let len = self.ctx.g.io_len();
        let r = match &mut self.bufs {
            Bufs::Pool(v) => submit_owned(
                qp,
                &self.ns,
                (op, at, len),
                tag,
                &mut v[slot],
                meta,
                pi,
                |b| match b {
                    IoBuf::Dma(b) => Some(b),
                    _ => None,
                },
            ),
            Bufs::User(v) => submit_owned(
                qp,
                &self.ns,
                (op, at, len),
                tag,
                &mut v[slot],
                meta,
                pi,
                |b| match b {
                    IoBuf::Vec(b) => Some(b),
                    _ => None,
                },
            ),
            Bufs::Registered(m) => {
                let bs = o.bs as usize;
                let seg = HostSeg::new(HostAddr::new(m.ptr as usize + slot * bs), o.bs);
                // SAFETY: the slot's bytes stay mapped (RegisteredMem
                // outlives the queue pair, which waits for every request
                // before it goes) and are not touched until the
                // completion tagged `slot` comes back from `poll`.
                unsafe { qp.submit_raw(op, &self.ns, lba, &[seg], tag) }
            }
        };
        if let Err(e) = r {
            self.free.push(slot);
            if o.verify {
                self.busy[k as usize] = false;
            }
            return Err(e.into());
        }
        if let (Some(j), Some(c)) = (append, self.zone.as_mut()) {
            c.inflight[j as usize] += 1;
        }
        self.slots[slot] = Slot {
            start: now,
            k,
            write,
            seq,
        };
        self.issued += 1;
        Ok(())
    }

    /// zoned-write: the zone (of this queue's) that a write of unit `k`
    /// in the measured phase appends to; `None` for other requests.
    fn appends(&self, k: u64, write: bool) -> Option<u64> {
        let z = self.ctx.zoned?;
        (write && self.mode == Mode::Work).then_some(k / z.per_zone)
    }

    /// zoned-write in verify mode: records where the append filled for
    /// unit `s.k` (to this queue's zone `j`) landed, `at`: a unit of that
    /// zone no other append of this pass took, or a mismatch.
    fn record_append(&mut self, j: u64, s: Slot, at: Option<u64>) {
        let Some(z) = self.ctx.zoned else { return };
        let (start, bpi) = (self.zone_start(j), self.ctx.g.bpi);
        let unit = at
            .and_then(|l| l.checked_sub(start))
            .filter(|off| off % bpi == 0 && off / bpi < z.per_zone)
            .map(|off| j * z.per_zone + off / bpi);
        let Some(u) = unit else {
            self.mismatch.get_or_insert_with(|| {
                format!("an append to the zone at LBA {start} landed at {at:?}, not at an I/O unit of the zone")
            });
            return;
        };
        let seq = self.seqs[u as usize];
        if seq != 0 && seq != UNKNOWN {
            let lba = self.lba(u);
            self.mismatch
                .get_or_insert_with(|| format!("LBA {lba}: two appends landed there"));
            return;
        }
        self.seqs[u as usize] = s.seq;
        self.keys[u as usize] = (s.k % z.per_zone) as u32;
        self.written += bpi;
    }

    /// Takes a completion back; returns the bytes it moved.
    fn complete(&mut self, mut d: Done, now: Stamp) -> u64 {
        let slot = d.tag as usize;
        let Some(&s) = self.slots.get(slot) else {
            return 0;
        };
        if let (Some(m), Some(home)) = (d.meta.take(), self.metas.get_mut(slot)) {
            *home = Some(m);
        }
        let appended = d.appended_lba;
        let (buf, result) = d.into_parts();
        match (buf, &mut self.bufs) {
            (IoBuf::Dma(b), Bufs::Pool(v)) => v[slot] = Some(b),
            (IoBuf::Vec(b), Bufs::User(v)) => v[slot] = Some(b),
            _ => {}
        }
        let o = self.ctx.o;
        let lba = self.lba(s.k);
        let k = s.k as usize;
        let append = self.appends(s.k, s.write);
        if let (Some(j), Some(c)) = (append, self.zone.as_mut()) {
            c.inflight[j as usize] = c.inflight[j as usize].saturating_sub(1);
        }
        let mut moved = 0;
        match result {
            Ok(()) => {
                if o.verify {
                    self.busy[k] = false;
                    if let Some(j) = append {
                        self.record_append(j, s, appended);
                    } else if s.write {
                        self.seqs[k] = s.seq;
                        self.written += self.ctx.g.bpi;
                    } else {
                        let want = self.seqs[k];
                        if want != 0 && want != UNKNOWN {
                            let (g, tag) = (self.ctx.g, verify::tag(self.ctx.run_id, want));
                            let key = self.verify_key(s.k);
                            let r = match self.slot_buf(slot) {
                                Some(b) => check_blocks(&g, b, key, tag),
                                None => Err(format!("LBA {lba}: read buffer missing")),
                            };
                            match r {
                                Ok(n) => self.checked += n,
                                Err(m) => {
                                    self.mismatch.get_or_insert(m);
                                }
                            }
                        }
                    }
                }
                if self.mode == Mode::Work {
                    let ns = now.as_nanos().saturating_sub(s.start.as_nanos());
                    self.hist.saturating_record(ns.max(1));
                    if s.write {
                        self.writes += 1;
                    } else {
                        self.reads += 1;
                    }
                    self.bytes += o.bs;
                    moved = o.bs;
                }
            }
            Err(e) => {
                if o.verify {
                    self.busy[k] = false;
                    if s.write && append.is_none() {
                        self.seqs[k] = UNKNOWN;
                    }
                }
                self.errors += 1;
                let at = match append {
                    Some(j) => format!(
                        "append of {} bytes to the zone at LBA {}",
                        o.bs,
                        self.zone_start(j)
                    ),
                    None if s.write => format!("write of {} bytes at LBA {lba}", o.bs),
                    None => format!("read of {} bytes at LBA {lba}", o.bs),
                };
                self.error.get_or_insert_with(|| format!("{at}: {e}"));
            }
        }
        self.free.push(slot);
        moved
    }
}
