//! The device side: one worker thread owns every queue and runs the
//! controller's state machine (enable, reset, shutdown), fetches commands
//! through the IOMMU, executes them and posts completions.
//!
//! Nothing here trusts the driver: queue memory, data pointers and command
//! fields are checked, a malformed command gets an NVMe error status, and
//! memory the device cannot reach is a failed transfer (or, for queue
//! memory, CSTS.CFS as on QEMU's controller), never a panic.

mod admin;
mod info;
mod io;
mod protection;
mod queues;
mod zoned;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nvme_vfio::nvme::cmd::{io as io_op, Command, Status};
use nvme_vfio::nvme::log::ErrorLogEntry;
use nvme_vfio::nvme::regs::{Cc, Csts, ShutdownStatus};
use nvme_vfio::nvme::spec::PageSize;

use crate::controller::Shared;
use crate::fault::FaultAction;
use crate::regs::csts;

pub(crate) use queues::{Cq, Sq};

/// Commands fetched from one submission queue before the next gets a turn.
const BURST: usize = 64;
/// Error Information log entries kept (Identify ELPE + 1).
pub(crate) const ERROR_LOG_ENTRIES: usize = 64;
/// Asynchronous Event Requests outstanding at most (Identify AERL + 1).
pub(crate) const AER_LIMIT: usize = 4;

/// Generic command status codes (status code type 0).
pub(crate) mod sc {
    pub const INVALID_OPCODE: u8 = 0x01;
    pub const INVALID_FIELD: u8 = 0x02;
    pub const DATA_TRANSFER: u8 = 0x04;
    pub const ABORT_REQUESTED: u8 = 0x07;
    pub const ABORTED_SQ_DELETION: u8 = 0x08;
    pub const INVALID_NAMESPACE: u8 = 0x0b;
    pub const SEQUENCE_ERROR: u8 = 0x0c;
    pub const LBA_OUT_OF_RANGE: u8 = 0x80;
}

/// Command specific status codes (status code type 1).
pub(crate) mod csc {
    pub const CQ_INVALID: u8 = 0x00;
    pub const INVALID_QID: u8 = 0x01;
    pub const INVALID_QSIZE: u8 = 0x02;
    pub const AER_LIMIT: u8 = 0x05;
    pub const INVALID_VECTOR: u8 = 0x08;
    pub const INVALID_LOG_PAGE: u8 = 0x09;
    pub const INVALID_QUEUE_DELETION: u8 = 0x0c;
    pub const NOT_SAVEABLE: u8 = 0x0d;
    pub const INVALID_FORMAT: u8 = 0x0a;
    pub const COMMAND_SIZE_LIMIT_EXCEEDED: u8 = 0x83;
    pub const ZONE_BOUNDARY_ERROR: u8 = 0xb8;
}

/// A generic status with Do Not Retry: the command is malformed.
pub(crate) const fn invalid(code: u8) -> Status {
    Status::new(0, code, true)
}

/// A command specific status with Do Not Retry.
pub(crate) const fn specific(code: u8) -> Status {
    Status::new(1, code, true)
}

/// A transfer the IOMMU refused: retryable, as the mapping may be fixed.
pub(crate) const DATA_TRANSFER_ERROR: Status = Status::new(0, sc::DATA_TRANSFER, false);

/// What a command's execution produced: its status and completion
/// dwords 0 and 1 (dword 0 low).
pub(crate) type Outcome = Option<(Status, u64)>;

/// Completed successfully with `result` in dword 0.
pub(crate) const fn ok(result: u32) -> Outcome {
    Some((Status::SUCCESS, result as u64))
}

/// Completed successfully with `result` in dwords 0 and 1 (a Zone
/// Append's LBA).
pub(crate) const fn ok64(result: u64) -> Outcome {
    Some((Status::SUCCESS, result))
}

/// Failed with `status`.
pub(crate) const fn fail(status: Status) -> Outcome {
    Some((status, 0))
}

/// Why a fetched command has not completed yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Lost (a Drop fault): only an Abort or a reset ends it.
    Forever,
    /// An Asynchronous Event Request: no events are ever reported.
    Event,
    /// Delayed: executes at this time.
    Until(Instant),
    /// Held back: executes after this many more completions on its CQ.
    After(u32),
    /// Stuck until a controller reset, then executes `after` the next
    /// enable (`at`, set by the enable) and completes to CQ `cqid`.
    Survive {
        after: Duration,
        cqid: u16,
        at: Option<Instant>,
    },
}

impl Wait {
    /// Whether the command outlives controller resets (and ignores Abort
    /// and the deletion of its queue).
    fn survives(&self) -> bool {
        matches!(self, Wait::Survive { .. })
    }
}

/// What the device still does for a command it has completed.
#[derive(Clone, Copy, Debug)]
enum Afterwards {
    /// Post the completion again (moving the data again first if
    /// `redo_data`).
    Duplicate {
        status: Status,
        result: u64,
        redo_data: bool,
    },
    /// Move the data (the completion went first).
    Data,
}

/// Work scheduled for a completed command.
#[derive(Clone, Copy, Debug)]
struct Later {
    at: Instant,
    sqid: u16,
    cmd: Command,
    what: Afterwards,
}

/// A fetched command whose completion is not posted yet.
#[derive(Clone, Copy, Debug)]
struct Deferred {
    sqid: u16,
    cmd: Command,
    wait: Wait,
}

/// The controller's enable state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Power {
    /// CC.EN = 0.
    Disabled,
    /// CC.EN = 1, CSTS.RDY not yet: ready at this time (`None`: never).
    Enabling(Option<Instant>),
    /// CSTS.RDY = 1.
    Ready,
}

/// Whether `cmd`, from submission queue `sqid`, is a Read or a Write.
fn is_read_or_write(sqid: u16, cmd: &Command) -> bool {
    sqid != 0 && matches!(cmd.opcode(), io_op::READ | io_op::WRITE)
}

/// Locks the device; a panic in a pass leaves it usable (its state moves
/// in single steps).
pub(crate) fn lock(dev: &Mutex<Device>) -> MutexGuard<'_, Device> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

/// The worker's loop, until the controller is dropped.
pub(crate) fn run(dev: &Mutex<Device>, sh: &Shared) {
    let spin = sh.config.idle_spin;
    loop {
        let seen = sh.regs.kicks();
        if sh.stop.load(Ordering::Acquire) {
            return;
        }
        let (busy, deadline) = {
            let mut d = lock(dev);
            let busy = d.step();
            (busy, d.next_deadline())
        };
        if busy {
            continue;
        }
        let idle = Instant::now();
        while !spin.is_zero() && sh.regs.kicks() == seen && idle.elapsed() < spin {
            std::hint::spin_loop();
        }
        if sh.regs.kicks() != seen {
            continue;
        }
        // A kick after the check above unparks at once (park's token).
        match deadline {
            Some(t) => std::thread::park_timeout(t.saturating_duration_since(Instant::now())),
            None => std::thread::park(),
        }
    }
}

/// Inline mode: runs the device on the calling thread until it has nothing
/// left to do. Returns whether a timer is pending (the worker must be told).
#[inline(never)] // a function of its own: profilers can leave the device out
pub(crate) fn run_inline(dev: &Mutex<Device>) -> bool {
    let start = Instant::now();
    let mut d = lock(dev);
    while d.step() {}
    let nanos = start.elapsed().as_nanos() as u64;
    d.sh.stats.inline_nanos.fetch_add(nanos, Ordering::Relaxed);
    d.next_deadline().is_some()
}

/// The device state: the worker thread runs it (and, in inline mode, the
/// thread writing a doorbell).
pub(crate) struct Device {
    sh: Arc<Shared>,
    power: Power,
    cc: Cc,
    /// CC.SHN seen: shutdown completes at this time.
    shutdown_at: Option<Instant>,
    /// CSTS.SHST = complete: commands are no longer processed.
    shut_down: bool,
    page: PageSize,
    /// Queues by ID (0 is the admin queue).
    sqs: Vec<Option<Sq>>,
    cqs: Vec<Option<Cq>>,
    /// IDs of existing submission queues, in creation order.
    sq_ids: Vec<u16>,
    /// I/O queues granted by Set Features (Number of Queues): SQs, CQs.
    granted: (u16, u16),
    vwc: bool,
    /// Other features, stored as set.
    features: HashMap<u8, u32>,
    /// SMART critical warning bits raised.
    critical_warning: u8,
    /// Asynchronous events waiting for a request to complete.
    pending_events: Vec<u32>,
    deferred: Vec<Deferred>,
    /// Work scheduled for completed commands (faults).
    later: Vec<Later>,
    /// Doorbell Buffer Config: shadow doorbell and EventIdx buffers.
    shadow: Option<(blk_dma::Iova, blk_dma::Iova)>,
    errors: std::collections::VecDeque<ErrorLogEntry>,
    error_count: u64,
    /// Changed Namespace List log page: IDs attached or detached since the
    /// host last read it (kept across resets, like the error log).
    changed_namespaces: Vec<u32>,
    /// A Namespace Attribute Changed event was reported and the host has
    /// not read the log page since: further ones are masked.
    namespace_notice_masked: bool,
    /// The block a media error of the command being executed names
    /// (Unrecovered Read Error, Compare Failure): its error log entry gets
    /// it, and its status the More bit.
    media_lba: std::cell::Cell<Option<u64>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("power", &self.power)
            .field("shut_down", &self.shut_down)
            .finish_non_exhaustive()
    }
}

impl Device {
    pub(crate) fn new(sh: Arc<Shared>) -> Self {
        let n = sh.config.max_io_queues as usize + 1;
        let max = sh.config.max_io_queues;
        let vwc = sh.config.volatile_write_cache;
        Self {
            sh,
            power: Power::Disabled,
            cc: Cc(0),
            shutdown_at: None,
            shut_down: false,
            page: PageSize::DEFAULT,
            sqs: vec![None; n],
            cqs: (0..n).map(|_| None).collect(),
            sq_ids: Vec::new(),
            granted: (max, max),
            vwc,
            features: HashMap::new(),
            critical_warning: 0,
            pending_events: Vec::new(),
            deferred: Vec::new(),
            later: Vec::new(),
            shadow: None,
            errors: std::collections::VecDeque::new(),
            error_count: 0,
            changed_namespaces: Vec::new(),
            namespace_notice_masked: false,
            media_lba: std::cell::Cell::new(None),
        }
    }

    /// One pass: register events, timers, queues. Returns whether anything
    /// happened that may have made more work.
    fn step(&mut self) -> bool {
        let mut busy = false;
        while let Some(cc) = self.sh.regs.next_cc_event() {
            self.cc_written(Cc(cc));
            busy = true;
        }
        busy |= self.timers(Instant::now());
        if self.sh.release_held.swap(false, Ordering::AcqRel) {
            for d in &mut self.deferred {
                if let Wait::After(n) = &mut d.wait {
                    *n = 0;
                }
            }
            busy = true;
        }
        if self.active() {
            busy |= self.run_deferred();
            busy |= self.run_later();
            busy |= self.process_queues();
        }
        busy
    }

    /// Whether commands are processed now (bus mastering aside).
    fn running(&self) -> bool {
        self.power == Power::Ready
            && !self.shut_down
            && self.sh.regs.csts() & csts::CFS == 0
            && (self.sh.regs.cc_enabled() || self.sh.ignore_disable.load(Ordering::Acquire))
    }

    /// Whether the device does anything with host memory now: commands are
    /// processed and bus mastering is on (without it the function issues
    /// no memory requests: no fetches, no data, no completions).
    fn active(&self) -> bool {
        self.running() && self.sh.bus_master.load(Ordering::Acquire)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let ready = match self.power {
            Power::Enabling(t) => t,
            _ => None,
        };
        // Command timers only matter while the device can act on them
        // (whatever makes it active again wakes the worker).
        let active = self.active();
        let delayed = self
            .deferred
            .iter()
            .filter_map(|d| match d.wait {
                Wait::Until(t) | Wait::Survive { at: Some(t), .. } => Some(t),
                _ => None,
            })
            .chain(self.later.iter().map(|l| l.at))
            .filter(|_| active);
        ready
            .into_iter()
            .chain(self.shutdown_at)
            .chain(delayed)
            .min()
    }

    /// Ready and shutdown transitions that are due.
    fn timers(&mut self, now: Instant) -> bool {
        let mut busy = false;
        if let Power::Enabling(Some(t)) = self.power {
            if t <= now {
                self.power = Power::Ready;
                self.sh.regs.update_csts(csts::RDY, 0);
                log::debug!("controller ready");
                busy = true;
            }
        }
        if self.shutdown_at.is_some_and(|t| t <= now) {
            self.shutdown_at = None;
            self.shut_down = true;
            // Open zones are closed (or emptied, if nothing was written),
            // as QEMU's controller does.
            for z in self.sh.namespaces.iter().filter_map(|n| n.zoned.as_ref()) {
                z.shutdown();
            }
            self.set_shst(ShutdownStatus::Complete);
            busy = true;
        }
        busy
    }

    fn set_shst(&self, s: ShutdownStatus) {
        let v = Csts(0).with_shutdown_status(s).0;
        self.sh.regs.update_csts(v, csts::SHST_MASK & !v);
    }

    /// A CC write, in order.
    fn cc_written(&mut self, mut cc: Cc) {
        let old = self.cc;
        if old.enabled() && !cc.enabled() && self.sh.ignore_disable.load(Ordering::Acquire) {
            // The controller does not see the transition: it stays enabled
            // (and a later CC.EN = 1 is no transition either).
            log::debug!("ignore-disable fault: CC.EN = 0 not acted on");
            cc = cc.with_enable(true);
        }
        match (old.enabled(), cc.enabled()) {
            (false, true) => self.enable(cc),
            (true, false) => self.reset(),
            _ => {}
        }
        self.cc = cc;
        match (old.shutdown(), cc.shutdown()) {
            (0, s) if s != 0 => {
                self.set_shst(ShutdownStatus::Occurring);
                self.shutdown_at = Instant::now().checked_add(self.sh.config.shutdown_delay);
            }
            (s, 0) if s != 0 => {
                self.set_shst(ShutdownStatus::Normal);
                self.shutdown_at = None;
                self.shut_down = false;
            }
            _ => {}
        }
    }

    /// CC.EN 0 -> 1: checks the configuration and sets up the admin queues;
    /// CSTS.RDY follows after the ready delay. A configuration the
    /// controller cannot run is reported with CSTS.CFS.
    fn enable(&mut self, cc: Cc) {
        let c = &self.sh.config;
        let regs = &self.sh.regs;
        let aqa = regs.aqa();
        let (asqs, acqs) = ((aqa & 0xfff) + 1, ((aqa >> 16) & 0xfff) + 1);
        let (asq, acq) = (regs.asq(), regs.acq());
        let css = (cc.0 >> 4) & 0x7;
        let why = if cc.mps() < c.mps_min || cc.mps() > c.mps_max {
            Some("CC.MPS outside CAP.MPSMIN..MPSMAX")
        } else if css != 0 && !(css == 0b110 && c.io_command_sets) {
            Some("CC.CSS is neither NVM nor (with CAP.CSS bit 6) all I/O command sets")
        } else if asqs < 2 || acqs < 2 {
            Some("admin queues need at least 2 entries (AQA)")
        } else if asq & 0xfff != 0 || acq & 0xfff != 0 || asq == 0 || acq == 0 {
            Some("ASQ and ACQ must be non-zero and 4 KiB aligned")
        } else {
            None
        };
        if let Some(why) = why {
            log::warn!("enable refused: {why}; raising CSTS.CFS");
            self.fatal();
            self.power = Power::Enabling(None);
            return;
        }
        self.page = PageSize::from_mps(cc.mps()).unwrap_or(PageSize::DEFAULT);
        // Doorbell writes while the controller was disabled went nowhere.
        self.sh.regs.clear_doorbell(0, false);
        self.sh.regs.clear_doorbell(0, true);
        self.sqs[0] = Some(Sq::new(blk_dma::Iova::new(asq), asqs, 0));
        self.cqs[0] = Some(Cq::new(blk_dma::Iova::new(acq), acqs));
        if let Some(cq) = self.cqs[0].as_mut() {
            cq.sqs = 1;
            // The admin queue's interrupts are always on, on vector 0.
            cq.vector = Some(0);
        }
        self.sq_ids = vec![0];
        // Commands that survived the reset run `after` this enable.
        let now = Instant::now();
        for d in &mut self.deferred {
            if let Wait::Survive { after, at, .. } = &mut d.wait {
                *at = Some(now.checked_add(*after).unwrap_or(now));
            }
        }
        let ready_at = if self.sh.never_ready.load(Ordering::Acquire) {
            log::debug!("never-ready fault: CSTS.RDY stays 0");
            None
        } else {
            Instant::now().checked_add(self.sh.config.ready_delay)
        };
        self.power = Power::Enabling(ready_at);
    }

    /// CC.EN 1 -> 0: every queue and every command in the controller is
    /// dropped (except those a fault makes survive the reset); CSTS.RDY and
    /// CSTS.CFS clear.
    fn reset(&mut self) {
        let fresh = Device::new(Arc::clone(&self.sh));
        let old = std::mem::replace(self, fresh);
        // The error log survives resets, as on real controllers, and so
        // does the shutdown state (CC.SHN is separate from CC.EN).
        self.errors = old.errors;
        self.error_count = old.error_count;
        self.changed_namespaces = old.changed_namespaces;
        self.shutdown_at = old.shutdown_at;
        self.shut_down = old.shut_down;
        self.deferred = old
            .deferred
            .into_iter()
            .filter(|d| d.wait.survives())
            .map(|mut d| {
                if let Wait::Survive { at, .. } = &mut d.wait {
                    *at = None;
                }
                d
            })
            .collect();
        if !self.deferred.is_empty() {
            log::debug!("{} command(s) survive the reset", self.deferred.len());
        }
        self.sh.regs.reset_doorbells();
        self.sh.regs.update_csts(0, csts::RDY | csts::CFS);
    }

    /// Function level reset: the whole controller goes back to its
    /// power-on state, every command it holds is dropped (survivors too)
    /// and every register is reset (CC, CSTS, AQA, ASQ, ACQ, doorbells;
    /// CC writes not yet acted on are discarded). The error log is kept.
    /// Bus mastering is the caller's business.
    pub(crate) fn function_reset(&mut self) {
        let fresh = Device::new(Arc::clone(&self.sh));
        let old = std::mem::replace(self, fresh);
        self.errors = old.errors;
        self.error_count = old.error_count;
        self.changed_namespaces = old.changed_namespaces;
        self.sh.regs.function_reset();
        self.sh.release_held.store(false, Ordering::Release);
    }

    /// Raises CSTS.CFS: nothing more is processed until a reset.
    pub(crate) fn fatal(&self) {
        self.sh.regs.update_csts(csts::CFS, 0);
    }

    /// Runs (or defers, when a fault says so) one fetched command.
    fn execute(&mut self, sqid: u16, cmd: Command) {
        self.sh.stats.commands.fetch_add(1, Ordering::Relaxed);
        let action = if self.sh.faults_armed.load(Ordering::Acquire) {
            self.sh.fault_check(sqid, &cmd)
        } else {
            None
        };
        let Some(action) = action else {
            self.run_and_post(sqid, cmd);
            return;
        };
        let rw = is_read_or_write(sqid, &cmd);
        let cid = cmd.cid();
        let wait = match action {
            FaultAction::Status(s) => {
                log::debug!("fault: cid {cid} on SQ {sqid} completes with {s}");
                if !s.is_success() {
                    self.log_error(sqid, &cmd, s);
                }
                return self.post(sqid, cid, s, 0);
            }
            FaultAction::Logged { status, detail } => {
                let s = status.with_more(true);
                log::debug!("fault: cid {cid} on SQ {sqid} completes with {s}, logged");
                self.log_error_detail(sqid, &cmd, s, &detail);
                return self.post(sqid, cid, s, 0);
            }
            FaultAction::Fatal => {
                log::debug!("fault: CSTS.CFS at cid {cid} on SQ {sqid}");
                return self.fatal();
            }
            FaultAction::Duplicate { after, redo_data } => {
                if let Some((status, result)) = self.run_and_post(sqid, cmd) {
                    log::debug!("fault: cid {cid} on SQ {sqid} completes again in {after:?}");
                    let at = Instant::now().checked_add(after);
                    self.later.extend(at.map(|at| Later {
                        at,
                        sqid,
                        cmd,
                        what: Afterwards::Duplicate {
                            status,
                            result,
                            redo_data,
                        },
                    }));
                }
                return;
            }
            FaultAction::Corrupt(how) => {
                log::debug!("fault: cid {cid} on SQ {sqid} completes with {how:?}");
                if let Some((status, result)) = self.run(sqid, &cmd) {
                    self.post_entry(sqid, cid, status, result, Some(how));
                }
                return;
            }
            FaultAction::CompleteBeforeData { delay } if rw => {
                log::debug!("fault: cid {cid} on SQ {sqid} completes, data in {delay:?}");
                self.post(sqid, cid, Status::SUCCESS, 0);
                let at = Instant::now().checked_add(delay);
                self.later.extend(at.map(|at| Later {
                    at,
                    sqid,
                    cmd,
                    what: Afterwards::Data,
                }));
                return;
            }
            FaultAction::WriteOutside { offset, len, byte } if rw => {
                let out = self.run(sqid, &cmd);
                let at = self.first_data_address(&cmd).wrapping_add(offset as u64);
                log::debug!("fault: cid {cid} on SQ {sqid} also writes {len:#x} bytes at {at}");
                let ok = self.sh.iommu.write(at, &vec![byte; len as usize]);
                log::debug!("stray write {}", if ok { "landed" } else { "refused" });
                if let Some((status, result)) = out {
                    self.post(sqid, cid, status, result);
                }
                return;
            }
            FaultAction::CompleteBeforeData { .. } | FaultAction::WriteOutside { .. } => {
                self.run_and_post(sqid, cmd);
                return;
            }
            FaultAction::SurviveReset { after } => {
                let cqid = self.sqs[sqid as usize].map_or(0, |s| s.cqid);
                Wait::Survive {
                    after,
                    cqid,
                    at: None,
                }
            }
            FaultAction::Drop => Wait::Forever,
            FaultAction::Delay(d) => match Instant::now().checked_add(d) {
                Some(t) => Wait::Until(t),
                None => Wait::Forever,
            },
            FaultAction::HoldBack { after } => Wait::After(after.max(1)),
        };
        log::debug!("fault: cid {cid} on SQ {sqid} deferred ({wait:?})");
        self.deferred.push(Deferred { sqid, cmd, wait });
    }

    /// Executes `cmd` (recording a failure in the error log); `None` if it
    /// completes later.
    fn run(&mut self, sqid: u16, cmd: &Command) -> Outcome {
        let mut out = if sqid == 0 {
            self.admin(cmd)
        } else {
            self.io(cmd)
        };
        let media_lba = self.media_lba.take();
        if let Some((status, _)) = &mut out {
            if let Some(lba) = media_lba.filter(|_| !status.is_success()) {
                // A media error: logged with the block it names.
                *status = status.with_more(true);
                let detail = crate::fault::ErrorDetail::at_lba(lba);
                self.log_error_detail(sqid, cmd, *status, &detail);
            } else if !status.is_success() {
                self.log_error(sqid, cmd, *status);
            }
        }
        out
    }

    /// Executes `cmd` and posts its completion (unless it completes later).
    fn run_and_post(&mut self, sqid: u16, cmd: Command) -> Outcome {
        let out = self.run(sqid, &cmd);
        if let Some((status, result)) = out {
            self.post(sqid, cmd.cid(), status, result);
        }
        out
    }

    /// Executes deferred commands whose time has come. Returns whether any
    /// did.
    fn run_deferred(&mut self) -> bool {
        let mut any = false;
        loop {
            let now = Instant::now();
            let Some(i) = self.deferred.iter().position(|d| match d.wait {
                Wait::Until(t) | Wait::Survive { at: Some(t), .. } => t <= now,
                Wait::After(n) => n == 0,
                Wait::Forever | Wait::Event | Wait::Survive { at: None, .. } => false,
            }) else {
                return any;
            };
            let d = self.deferred.remove(i);
            match d.wait {
                Wait::Survive { cqid, .. } => self.run_survivor(d.sqid, cqid, &d.cmd),
                _ => {
                    self.run_and_post(d.sqid, d.cmd);
                }
            }
            any = true;
        }
    }

    /// A command that survived a reset executes now and completes to CQ
    /// `cqid` if it exists (otherwise only its data moves).
    fn run_survivor(&mut self, sqid: u16, cqid: u16, cmd: &Command) {
        log::debug!("cid {} of SQ {sqid} from before the reset runs", cmd.cid());
        let Some((status, result)) = self.run(sqid, cmd) else {
            return;
        };
        let sq_head = self
            .sqs
            .get(sqid as usize)
            .copied()
            .flatten()
            .map_or(0, |s| s.head as u16);
        let cqe = nvme_vfio::nvme::cmd::Completion {
            result: result as u32,
            rsvd: (result >> 32) as u32,
            sq_head,
            sq_id: sqid,
            cid: cmd.cid(),
            status: status.0 << 1,
        };
        if self.cqs.get(cqid as usize).is_some_and(Option::is_some) {
            self.push_cqe(cqid, cqe, false);
        } else {
            log::debug!("its completion is dropped: no CQ {cqid}");
        }
    }

    /// Runs the work scheduled for completed commands whose time has come.
    /// Returns whether any ran.
    fn run_later(&mut self) -> bool {
        let mut any = false;
        loop {
            let now = Instant::now();
            let Some(i) = self.later.iter().position(|l| l.at <= now) else {
                return any;
            };
            let l = self.later.remove(i);
            match l.what {
                Afterwards::Duplicate {
                    status,
                    result,
                    redo_data,
                } => {
                    if redo_data && is_read_or_write(l.sqid, &l.cmd) && status.is_success() {
                        self.transfer_again(&l.cmd);
                    }
                    log::debug!(
                        "duplicate completion of cid {} on SQ {}",
                        l.cmd.cid(),
                        l.sqid
                    );
                    self.post(l.sqid, l.cmd.cid(), status, result);
                }
                Afterwards::Data => self.late_transfer(&l.cmd),
            }
            any = true;
        }
    }

    /// Records a failed command in the Error Information log.
    fn log_error(&mut self, sqid: u16, cmd: &Command, status: Status) {
        self.log_error_detail(sqid, cmd, status, &crate::fault::ErrorDetail::default());
    }

    /// Records a failed command in the Error Information log, newest first,
    /// with `detail`.
    fn log_error_detail(
        &mut self,
        sqid: u16,
        cmd: &Command,
        status: Status,
        detail: &crate::fault::ErrorDetail,
    ) {
        self.error_count += 1;
        // Commands with a starting LBA (SLBA) in dwords 10 and 11.
        let rw = matches!(
            cmd.opcode(),
            io_op::READ
                | io_op::WRITE
                | io_op::COMPARE
                | io_op::VERIFY
                | io_op::WRITE_UNCORRECTABLE
                | io_op::WRITE_ZEROES
        );
        let e = ErrorLogEntry {
            error_count: self.error_count,
            sqid,
            cid: detail.cid.unwrap_or(cmd.cid()),
            status: status.0 << 1,
            parameter_location: match detail.parameter {
                Some((byte, bit)) => ErrorLogEntry::parameter_at(byte, bit),
                None => nvme_vfio::nvme::log::NO_PARAMETER,
            },
            nsid: cmd.nsid,
            lba: detail
                .lba
                .unwrap_or(if sqid != 0 && rw { cmd.slba() } else { 0 }),
            command_specific: detail.command_specific,
            // The NVM command set; log page version 1: CSI and opcode valid.
            csi: 0,
            opcode: cmd.opcode(),
            version: 1,
            ..Default::default()
        };
        self.errors.push_front(e);
        self.errors.truncate(ERROR_LOG_ENTRIES);
    }

    /// How long until the next timer, for tests.
    #[cfg(test)]
    fn until_next(&self) -> Option<std::time::Duration> {
        self.next_deadline()
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn enable_is_refused_with_cfs_for_a_bad_configuration() {
        let sh = Shared::new(Config::default(), None).unwrap();
        let mut d = Device::new(sh.clone());
        // No admin queues programmed.
        d.cc_written(Cc(0).with_enable(true));
        assert_ne!(sh.regs.csts() & csts::CFS, 0);
        d.cc_written(Cc(0));
        assert_eq!(sh.regs.csts() & csts::CFS, 0, "reset clears CFS");
        use nvme_vfio::nvme::regs::{offset, Registers};
        sh.regs.write32(offset::AQA, 0x001f_001f);
        sh.regs.write64(offset::ASQ, 0x10000);
        sh.regs.write64(offset::ACQ, 0x20000);
        d.cc_written(Cc(0).with_enable(true));
        assert_eq!(sh.regs.csts() & csts::CFS, 0);
        let ms = std::time::Duration::from_millis;
        assert!(d.until_next().is_some_and(|t| t <= ms(1)));
        d.timers(Instant::now() + ms(2));
        assert_eq!(sh.regs.csts() & csts::RDY, csts::RDY);
        assert!(d.running() || !sh.regs.cc_enabled());
    }
}
