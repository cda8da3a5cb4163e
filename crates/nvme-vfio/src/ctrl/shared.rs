//! State a controller shares with its queue pairs: registers, DMA space,
//! the admin queue (commands serialized through its mutex), enable/disable
//! bounded by CAP.TO, reset with its generation counter, and the shadow
//! doorbell pages.

use std::mem::ManuallyDrop;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{cmb, Config};
use crate::mem::DmaSpace;
use crate::nvme::cmd::{admin, feature, Command, Completion};
use crate::nvme::queue::{CompletionQueue, Shadow, SubmissionQueue};
use crate::nvme::regs::{self, offset, Aqa, Cap, Cc, Csts, Registers};
use crate::nvme::spec::{DataPtr, PageSize};
use crate::Error;

/// The admin queue pair; commands are serialized through its mutex.
#[derive(Debug)]
pub(super) struct Admin {
    pub(super) sq: SubmissionQueue,
    pub(super) cq: CompletionQueue,
    pub(super) next_cid: u16,
    /// Asynchronous Event Requests outstanding and events collected.
    pub(super) events: super::events::Events,
}

/// State shared by the controller and its queue pairs.
pub(crate) struct Shared {
    pub(super) regs: Arc<dyn Registers>,
    pub(super) space: Arc<DmaSpace>,
    pub(super) cap: Cap,
    pub(super) page: PageSize,
    /// Leaked instead of freed if the controller could not be stopped
    /// (see `Drop`), like the shadow doorbell pages.
    pub(super) admin: ManuallyDrop<Mutex<Admin>>,
    /// I/O queue IDs in use (index = qid - 1).
    pub(super) qids: Mutex<Vec<bool>>,
    /// The reset generation and two flags in one word, so that a
    /// submission checks all three with one load: bits 63:2 count the
    /// controller resets (queue pairs compare them with their own to notice
    /// that their queues are gone), [`RESETTING`] says that a reset is in
    /// progress (new requests fail with the retryable [`Error::Reset`]),
    /// [`DISABLED`] that the controller is stopped.
    pub(super) state: std::sync::atomic::AtomicU64,
    pub(super) config: Config,
    /// MSI-X vectors in interrupt mode: vector `qid` serves I/O queue `qid`.
    pub(crate) msix: Option<Box<dyn super::Interrupts>>,
    /// The PCI function, to stop DMA when the controller does not stop
    /// (and, for VFIO, what keeps the device and its BAR mapping open).
    pub(super) function: Option<Arc<dyn super::PciFunction>>,
    /// One flag per queue pair, set while it publishes commands: a reset
    /// waits for publications in progress (see [`Shared::reset`]).
    pub(super) publishers: Mutex<Vec<Arc<Publishing>>>,
    /// CMBMSC to program at every enable (0: no CMB in use).
    pub(super) cmbmsc: std::sync::atomic::AtomicU64,
    /// Completions that belonged to no outstanding command (wrong command
    /// ID or generation, wrong SQ ID, impossible SQ head), on any queue.
    pub(super) device_errors: std::sync::atomic::AtomicU64,
    /// The controller's AERL and OAES (Identify), once known.
    pub(super) aer_caps: std::sync::OnceLock<(u8, u32)>,
    /// Error Information log entries the controller keeps (ELPE + 1),
    /// once known.
    pub(super) error_log_entries: std::sync::OnceLock<usize>,
    /// How many times the device was stopped ([`Shared::quiesce`]).
    pub(super) stops: std::sync::atomic::AtomicU64,
    /// Shadow doorbell and EventIdx pages, once configured.
    pub(crate) dbbuf: ManuallyDrop<std::sync::OnceLock<DbBuf>>,
    /// The thread waiting for the device's owner to ask for it back.
    pub(super) watcher: Mutex<Option<super::unplug::Watcher>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Stopped first: it may only ever act on a live controller.
        drop(self.watcher.get_mut().map(Option::take).unwrap_or(None));
        if self.is_dead() {
            log::error!(
                "leaking the admin rings and shadow doorbell pages: the controller could not be stopped"
            );
            return;
        }
        // SAFETY: the fields are not used after this (the state is being
        // dropped), and each is dropped once.
        unsafe {
            ManuallyDrop::drop(&mut self.admin);
            ManuallyDrop::drop(&mut self.dbbuf);
        }
    }
}

/// Set while a queue pair writes its submission doorbell
/// ([`QueuePair::flush`](super::QueuePair::flush)), on a cache line of its
/// own.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Publishing(pub(crate) std::sync::atomic::AtomicBool);

/// Longest a reset waits for a queue pair to finish publishing (a thread
/// descheduled in the middle of it).
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// How long a reset waits, once queue pairs have stopped publishing
/// commands, before it disables the controller.
const RESET_GRACE: Duration = Duration::from_millis(10);

/// [`Shared::state`]: a reset is in progress.
const RESETTING: u64 = 1;
/// [`Shared::state`]: the controller is stopped.
const DISABLED: u64 = 2;
/// [`Shared::state`]: the controller could not be stopped; memory it may
/// reach is quarantined and nothing revives it.
const DEAD: u64 = 4;
/// [`Shared::state`]: the controller was closed (its `Controller` dropped):
/// shut down, stopped, and never enabled again.
const CLOSED: u64 = 8;
/// [`Shared::state`]: the device is gone (registers and configuration
/// space do not answer): no DMA is possible, nothing is tried any more.
const LOST: u64 = 16;
/// [`Shared::state`]: one reset generation.
const GENERATION: u64 = 32;

/// The two pages of Doorbell Buffer Config.
#[derive(Debug)]
pub(crate) struct DbBuf {
    pub(super) shadow: crate::mem::DmaBuf,
    pub(super) eventidx: crate::mem::DmaBuf,
    pub(super) stride: u64,
}

impl DbBuf {
    /// The shadow slots of queue `qid`'s SQ tail (`sq`) or CQ head doorbell.
    pub(crate) fn slot(&self, qid: u16, sq: bool, always_mmio: bool) -> Option<Shadow> {
        let at = (2 * qid as u64 + u64::from(!sq)) * self.stride;
        if at + 4 > self.shadow.len() as u64 {
            return None;
        }
        let at = at as usize;
        // SAFETY: `at + 4` is inside each 4 KiB page (checked).
        let db = unsafe { core::ptr::NonNull::new_unchecked(self.shadow.as_ptr().add(at)) };
        // SAFETY: as above.
        let ei = unsafe { core::ptr::NonNull::new_unchecked(self.eventidx.as_ptr().add(at)) };
        Some(Shadow {
            db: db.cast(),
            ei: ei.cast(),
            always_mmio,
        })
    }

    /// Zeroes both pages (the controller is disabled).
    pub(super) fn clear(&self) {
        for p in [&self.shadow, &self.eventidx] {
            for i in 0..p.len() / 4 {
                // SAFETY: an aligned dword inside the page (page aligned);
                // the pages are only ever accessed atomically (queue pairs'
                // shadow slots may be written concurrently).
                let cell = unsafe {
                    core::sync::atomic::AtomicU32::from_ptr(p.as_ptr().cast::<u32>().add(i))
                };
                cell.store(0, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shared")
            .field("cap", &self.cap)
            .field("page", &self.page)
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(super) fn csts(&self) -> Result<Csts, Error> {
        let v = self.regs.read32(offset::CSTS);
        // A register access that failed (Registers::failed) is as good as
        // registers reading all ones.
        if v == u32::MAX || self.regs.failed() {
            return Err(Error::DeviceLost);
        }
        Ok(Csts(v))
    }

    /// Waits until CSTS.RDY is `ready`, bounded by CAP.TO.
    pub(super) fn wait_ready(&self, ready: bool, during: &'static str) -> Result<(), Error> {
        let limit = Duration::from_millis(self.cap.timeout_ms().max(500));
        let start = Instant::now();
        loop {
            let csts = self.csts()?;
            if csts.ready() == ready {
                return Ok(());
            }
            if csts.fatal() && ready {
                return Err(Error::ControllerFatal { during });
            }
            if start.elapsed() > limit {
                return Err(Error::Timeout {
                    what: if ready {
                        "CSTS.RDY = 1"
                    } else {
                        "CSTS.RDY = 0"
                    },
                    ms: limit.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Clears CC.EN and waits for the controller to stop: after this the
    /// device does no more DMA.
    pub(crate) fn disable(&self) -> Result<(), Error> {
        let cc = Cc(self.regs.read32(offset::CC));
        if cc.enabled() {
            self.regs.write32(offset::CC, cc.with_enable(false).0);
        }
        self.wait_ready(false, "disabling")
    }

    /// Makes sure the device does no more DMA, before memory it could
    /// reach goes back to its owners. Clears CC.EN and waits for CSTS.RDY =
    /// 0 (CAP.TO); then, with access to the PCI function, clears Bus
    /// Master Enable (as Linux's nvme_dev_disable does through
    /// pci_disable_device) and resets the function, so that nothing the
    /// controller kept across CC.EN = 0 survives. The device is known quiet
    /// if the controller acknowledged CC.EN = 0, or if bus mastering reads
    /// back clear and the function reset took (CSTS.RDY = 0 after it).
    /// Otherwise the controller is marked dead and [`Error::Dead`]
    /// returned. Bus mastering stays off: [`enable`](Self::enable) turns it
    /// back on.
    ///
    /// When a register access has failed ([`Registers::failed`]), the
    /// device is lost even if it could be stopped: nothing can drive it
    /// again through registers that do not answer.
    pub(super) fn quiesce(&self) -> Result<(), Error> {
        let mut r = self.quiesce_inner();
        if r.is_ok() && self.regs.failed() && !self.is_lost() {
            log::error!("a register access failed: the device is taken as lost");
            r = Err(self.mark_lost());
        }
        // Admin waiters that gave the queue to a reset wait for this.
        self.stops.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        r
    }

    fn quiesce_inner(&self) -> Result<(), Error> {
        let disabled = if self.config.test_unacknowledged_disable {
            Err(Error::Timeout {
                what: "CSTS.RDY = 0 (CC.EN = 0 skipped by the test hook)",
                ms: 0,
            })
        } else {
            self.disable()
        };
        if let Err(e) = &disabled {
            log::error!("controller did not stop after CC.EN = 0: {e}");
        }
        let Some(f) = &self.function else {
            return disabled.map_err(|_| self.mark_dead("no access to its PCI function"));
        };
        let registers_gone = matches!(disabled, Err(Error::DeviceLost));
        let bme_off = match f.set_bus_master(false).and_then(|()| f.bus_master()) {
            Ok(on) => !on,
            Err(e) => {
                if registers_gone {
                    // Neither its registers nor its configuration space
                    // answer: the device has left the bus.
                    return Err(self.mark_lost());
                }
                log::error!("clearing bus mastering: {e}");
                false
            }
        };
        let reset = match f.function_reset() {
            // Registers that failed cannot show CSTS.RDY = 0: the reset
            // is taken as done (bus mastering, read back clear, is what
            // stops the DMA).
            Ok(true) => self.regs.failed() || self.wait_ready(false, "function reset").is_ok(),
            Ok(false) => false,
            Err(e) => {
                if disabled.is_ok() {
                    // Not needed: the controller acknowledged CC.EN = 0
                    // (the kernel refuses it while it removes the device).
                    log::info!("function level reset: {e}");
                } else {
                    log::error!("function level reset: {e}");
                }
                false
            }
        };
        if disabled.is_ok() {
            return Ok(());
        }
        if bme_off && reset {
            log::warn!("controller stopped by clearing bus mastering and a function level reset");
            return Ok(());
        }
        Err(self.mark_dead(if bme_off {
            "bus mastering cleared but the function level reset did not take"
        } else {
            "bus mastering could not be cleared"
        }))
    }

    /// Marks the device lost (see [`Error::DeviceLost`]); returns that
    /// error.
    #[cold]
    pub(super) fn mark_lost(&self) -> Error {
        use std::sync::atomic::Ordering::SeqCst;
        log::error!(
            "the device is gone (registers and configuration space do not answer): \
             requests in flight fail, and it takes no more commands"
        );
        self.state.fetch_or(LOST | DISABLED, SeqCst);
        Error::DeviceLost
    }

    /// The device's owner asked for it back (hot unplug): stops the
    /// controller as a reset does (queue pairs publish nothing; then
    /// [`quiesce`](Self::quiesce)), marks it lost, so that requests in
    /// flight fail with [`Error::DeviceLost`] (with their buffers, the
    /// device being stopped) and nothing is tried any more, wakes queue
    /// pairs asleep on interrupts, and lets go of the device. Run by the
    /// [`unplug`](super::unplug) watcher.
    pub(super) fn release_device(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        log::error!(
            "the device is being removed (its owner asked for it back): stopping it; \
             requests fail with DeviceLost"
        );
        // Lost from now on, before anything else: queue pairs publish
        // nothing more, nothing enables the controller again, and every
        // request refused or failed from here on says DeviceLost (never
        // Reset, even while the stop below is under way). DISABLED only
        // once the device is stopped: that is what lets queue pairs hand
        // buffers back.
        self.state.fetch_or(LOST, SeqCst);
        // A reset in progress on another thread finishes first (it finds
        // the controller lost and leaves it disabled).
        while self.state.fetch_or(RESETTING, SeqCst) & RESETTING != 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
        let stopped = self.state.load(SeqCst) & (DISABLED | CLOSED) == DISABLED | CLOSED;
        self.wait_publishers();
        if !self.is_dead() && !stopped {
            if let Err(e) = self.quiesce() {
                log::error!("stopping the controller for its removal: {e}");
            }
        }
        self.set_disabled(true);
        if let Some(f) = &self.function {
            f.release();
        }
        self.state.fetch_and(!RESETTING, SeqCst);
        if let Some(irqs) = &self.msix {
            for v in 0..irqs.vectors() {
                if let Some(fd) = irqs.eventfd(v) {
                    super::unplug::signal(fd);
                }
            }
        }
        log::warn!("the device was let go of");
    }

    /// Whether the device is lost (see [`Error::DeviceLost`]).
    pub(crate) fn is_lost(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::SeqCst) & LOST != 0
    }

    /// Marks the controller dead (see [`Error::Dead`]); returns that error.
    #[cold]
    pub(super) fn mark_dead(&self, why: &str) -> Error {
        use std::sync::atomic::Ordering::SeqCst;
        log::error!(
            "controller cannot be stopped ({why}): memory it may still reach is \
             quarantined, and it takes no more commands"
        );
        self.state.fetch_or(DEAD | DISABLED, SeqCst);
        Error::Dead
    }

    /// Stops the controller from within a reset whose own admin command
    /// failed (no reset within a reset): the reset holds RESETTING, so
    /// queue pairs wait; the controller stays disabled, or is dead.
    pub(crate) fn stop_within_reset(&self) {
        if let Err(e) = self.quiesce() {
            log::error!("stopping the controller during a reset: {e}");
        }
        self.set_disabled(true);
    }

    /// Counts a completion that belonged to no command outstanding.
    pub(super) fn count_device_error(&self) {
        self.device_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the controller is dead (see [`Error::Dead`]).
    #[inline]
    pub(crate) fn is_dead(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::SeqCst) & DEAD != 0
    }

    /// The error for a stopped controller: [`Error::Dead`],
    /// [`Error::Closed`] or [`Error::Disabled`].
    pub(crate) fn stopped_error(&self) -> Error {
        let state = self.state.load(std::sync::atomic::Ordering::SeqCst);
        if state & DEAD != 0 {
            Error::Dead
        } else if state & LOST != 0 {
            Error::DeviceLost
        } else if state & CLOSED != 0 {
            Error::Closed
        } else {
            Error::Disabled
        }
    }

    /// Whether the controller was closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::SeqCst) & CLOSED != 0
    }

    /// Closes the controller for good (its `Controller` is being dropped):
    /// queue pairs stop publishing, the controller is shut down with
    /// `shutdown` (bounded) and stopped ([`quiesce`](Self::quiesce)), and
    /// no path enables it again. Queue pairs that outlive it fail what
    /// they have in flight with [`Error::Closed`] (or quarantine it, if
    /// the controller could not be stopped).
    pub(super) fn close(&self, shutdown: impl FnOnce()) {
        use std::sync::atomic::Ordering::SeqCst;
        // A reset in progress on another thread finishes first.
        while self.state.fetch_or(RESETTING, SeqCst) & RESETTING != 0 {
            std::thread::sleep(Duration::from_micros(100));
        }
        self.state.fetch_or(CLOSED, SeqCst);
        self.wait_publishers();
        if !self.is_dead() && !self.is_lost() {
            if !self.is_disabled() {
                shutdown();
            }
            if let Err(e) = self.quiesce() {
                log::error!("stopping the controller at close: {e}");
            }
        }
        self.set_disabled(true);
        self.state.fetch_and(!RESETTING, SeqCst);
    }

    /// Whether the controller is stopped.
    #[inline]
    pub(crate) fn is_disabled(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::SeqCst) & DISABLED != 0
    }

    /// Marks the controller stopped (or running again).
    pub(super) fn set_disabled(&self, disabled: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        if disabled {
            self.state.fetch_or(DISABLED, SeqCst);
        } else {
            self.state.fetch_and(!DISABLED, SeqCst);
        }
    }

    /// Whether a queue pair of reset generation `generation` may submit:
    /// no reset since, none in progress, and the controller running. One
    /// load, for the I/O path.
    #[inline(always)]
    pub(crate) fn accepts_io(&self, generation: u64) -> bool {
        self.state.load(std::sync::atomic::Ordering::SeqCst) == generation.wrapping_mul(GENERATION)
    }

    /// Runs one admin command to completion, with `data` (a 4 KiB-aligned
    /// DMA buffer) as its PRP1 if given. A failure whose status has the
    /// More bit set comes back with its error log entry attached.
    pub(crate) fn admin(
        &self,
        cmd: Command,
        data: Option<blk_dma::Iova>,
        what: &'static str,
    ) -> Result<Completion, Error> {
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        let mut r = self.admin_raw(cmd, data, what, false);
        if let Err(e) = &mut r {
            if !super::errlog::reads_error_log(&cmd) {
                self.attach_error_log_quietly(e);
            }
        }
        r
    }

    /// Runs an admin command that returns data into a new `len`-byte DMA
    /// buffer, and returns the buffer. If the controller could not be
    /// stopped after the command failed, the buffer is leaked instead of
    /// going back to the pool: the device may still write it.
    pub(crate) fn admin_read(
        &self,
        cmd: Command,
        len: usize,
        what: &'static str,
    ) -> Result<crate::mem::DmaBuf, Error> {
        let buf = self.space.alloc(len)?;
        match self.admin(cmd, Some(buf.iova()), what) {
            Ok(_) => Ok(buf),
            Err(e) => {
                if self.is_dead() {
                    core::mem::forget(buf);
                }
                Err(e)
            }
        }
    }

    /// [`admin`](Self::admin) without the reset check; `by_reset` for the
    /// reset's own commands.
    ///
    /// The reset owns the admin queue: a command of anyone else that is
    /// waiting when a reset starts gives the queue up and ends with
    /// [`Error::Reset`] as soon as the reset has stopped the device (its
    /// data buffer is safe to free then), instead of holding the queue
    /// until its timeout. A timeout or fatal status during the reset's
    /// own commands stops the controller (no reset within a reset); any
    /// other resets it.
    pub(super) fn admin_raw(
        &self,
        mut cmd: Command,
        data: Option<blk_dma::Iova>,
        what: &'static str,
        by_reset: bool,
    ) -> Result<Completion, Error> {
        if self.is_disabled() {
            return Err(self.stopped_error());
        }
        let mut a = lock(&self.admin);
        let cid = a.next_cid;
        // The IDs from AER_CID_BASE up are the event requests'.
        a.next_cid = a.next_cid.wrapping_add(1) % super::events::AER_CID_BASE;
        cmd.set_cid(cid);
        if let Some(iova) = data {
            cmd.set_data(DataPtr::Prp {
                prp1: iova,
                prp2: blk_dma::Iova::new(0),
            });
        }
        // One admin command at a time (the lock), and the queue is emptied
        // by every reset: there is always room.
        let stops = self.stops.load(std::sync::atomic::Ordering::SeqCst);
        a.sq.push(&cmd);
        a.sq.ring(&*self.regs);
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(c) = a.cq.pop() {
                let head_ok = a.sq.advance_head(c.sq_head);
                a.cq.ring(&*self.regs);
                if super::events::is_aer(c.cid) && c.sq_id == 0 && head_ok {
                    a.on_event(&c, &*self.regs);
                } else if c.cid != cid || c.sq_id != 0 || !head_ok {
                    // Not this command's: a device error. Nothing else is
                    // outstanding on the admin queue, so nothing is
                    // completed by it; the command keeps waiting (and is
                    // recovered by the admin timeout if it never comes).
                    self.count_device_error();
                    log::warn!(
                        "admin queue: completion for command {} (SQ {}, SQ head {}) \
                         while command {cid} is outstanding: ignored",
                        c.cid,
                        c.sq_id,
                        c.sq_head
                    );
                    // A device that floods the queue with such entries
                    // still meets the timeout check below.
                } else {
                    let status = c.status();
                    if !status.is_success() {
                        return Err(Error::Command {
                            what,
                            status,
                            sqid: 0,
                            cid,
                            log: None,
                        });
                    }
                    return Ok(c);
                }
            }
            spins += 1;
            if spins % 64 == 0 {
                if !by_reset && self.is_resetting() {
                    // Another thread is resetting: give it the queue, and
                    // return once the device is stopped.
                    drop(a);
                    self.wait_stopped_since(stops);
                    return Err(if self.is_dead() {
                        Error::Dead
                    } else if self.is_lost() {
                        Error::DeviceLost
                    } else {
                        Error::Reset
                    });
                }
                let fatal = match self.csts() {
                    Ok(c) => c.fatal(),
                    Err(_) => true,
                };
                let limit = self.config.admin_timeout;
                let late = start.elapsed() > limit;
                if fatal || late {
                    drop(a);
                    // An admin command cannot be aborted from its own queue
                    // reliably: reset the controller (queue pairs recover
                    // by the generation), which stops the device before the
                    // command's buffer goes back. During the reset's own
                    // commands, stop the controller instead of resetting
                    // recursively.
                    if by_reset {
                        self.stop_within_reset();
                    } else if let Err(e) = self.reset() {
                        log::error!("reset after an admin command failed: {e}");
                    }
                    if self.is_dead() {
                        // The command's data buffer may still be written:
                        // the caller must not get it back.
                        return Err(Error::Dead);
                    }
                    if self.is_lost() {
                        return Err(Error::DeviceLost);
                    }
                    return Err(if fatal {
                        Error::ControllerFatal { during: what }
                    } else {
                        Error::Timeout {
                            what,
                            ms: limit.as_millis() as u64,
                        }
                    });
                }
                if start.elapsed() > Duration::from_millis(1) {
                    // A slow command: no need to burn a core for it.
                    std::thread::sleep(Duration::from_micros(50));
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }

    /// Waits until the device was stopped ([`quiesce`](Self::quiesce)) at
    /// least once since `stops` was read, or no reset or stop is in
    /// progress any more.
    fn wait_stopped_since(&self, stops: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        while self.stops.load(SeqCst) == stops && self.is_resetting() {
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Disables, programs the admin queues and CC, turns bus mastering
    /// on, enables.
    pub(super) fn enable(&self) -> Result<(), Error> {
        if self.is_dead() || self.is_closed() || self.is_lost() {
            return Err(self.stopped_error());
        }
        self.disable()?;
        if let Some(f) = &self.function {
            f.set_bus_master(true)?;
        }
        {
            let mut a = lock(&self.admin);
            a.sq.reset();
            a.cq.reset();
            // The controller dropped its event requests with the queues.
            a.events.outstanding = 0;
            let r = &self.regs;
            r.write32(offset::AQA, Aqa::new(a.sq.entries(), a.cq.entries()).0);
            r.write64(offset::ASQ, a.sq.iova().raw());
            r.write64(offset::ACQ, a.cq.iova().raw());
        }
        if self.cap.cmb_supported() {
            // Always written: a CMB base address left enabled by an earlier
            // user would make the controller take our DMA addresses in that
            // range for its own memory.
            let cmbmsc = self.cmbmsc.load(std::sync::atomic::Ordering::SeqCst);
            self.regs.write64(cmb::CMBMSC, cmbmsc);
        }
        // Every I/O command set the controller has, when it can select
        // them (a zoned namespace is usable only so), else NVM.
        let cc = Cc::default()
            .with_css(self.cap.css_to_select())
            .with_mps(self.page.mps())
            .with_entry_sizes(6, 4)
            .with_enable(true);
        self.regs.write32(offset::CC, cc.0);
        self.wait_ready(true, "enabling")?;
        self.set_disabled(false);
        Ok(())
    }

    /// Resets the controller: stop it ([`quiesce`](Self::quiesce): every
    /// queue and command in flight is dropped by the device, which then
    /// touches no memory; or the controller is dead), enable,
    /// ask for the I/O queues again. Queue pairs notice by the generation
    /// and recreate their queues, failing what they had in flight.
    pub(crate) fn reset(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering::SeqCst;
        if self.is_dead() || self.is_closed() || self.is_lost() {
            // A close or a removal in progress stops the device first:
            // only once it is done may the caller's buffers go back.
            while self.is_resetting() {
                std::thread::sleep(Duration::from_micros(100));
            }
            return Err(self.stopped_error());
        }
        if self.state.fetch_or(RESETTING, SeqCst) & RESETTING != 0 {
            // Another thread is resetting: wait for it (bounded by its own
            // CAP.TO waits) instead of resetting twice.
            while self.is_resetting() {
                std::thread::sleep(Duration::from_micros(100));
            }
            return if self.is_disabled() {
                Err(self.stopped_error())
            } else {
                Ok(())
            };
        }
        // Queue pairs publish nothing from now on (see QueuePair::flush);
        // wait for a publication in progress to finish, then give a doorbell
        // written just before a moment to be seen: QEMU's
        // emulated controller (7.2 to 10.0) starts the commands it fetches
        // while its reset drains the disk, after that reset has freed their
        // queues, and then completes them into freed memory. A controller
        // fetches within microseconds of a doorbell.
        self.wait_publishers();
        std::thread::sleep(RESET_GRACE);
        let r = self.quiesce().and_then(|()| {
            if let Some(db) = self.dbbuf.get() {
                db.clear();
            }
            self.enable()?;
            let want = self.config.io_queues.clamp(1, 0xfffe) as u32 - 1;
            self.admin_raw(
                Command::set_features(feature::NUMBER_OF_QUEUES, want | want << 16),
                None,
                "Set Features (Number of Queues)",
                true,
            )?;
            self.configure_dbbuf()?;
            if let Some(&(aerl, oaes)) = self.aer_caps.get() {
                self.start_events(aerl, oaes, true);
            }
            Ok(())
        });
        self.state.fetch_add(GENERATION, SeqCst);
        if r.is_err() {
            self.set_disabled(true);
        }
        self.state.fetch_and(!RESETTING, SeqCst);
        r
    }

    /// Issues Doorbell Buffer Config with the shadow pages (after bring-up
    /// and after every reset); the controller seeds the slots of existing
    /// queues with their current values. The admin queue keeps writing MMIO
    /// doorbells too.
    pub(super) fn configure_dbbuf(&self) -> Result<(), Error> {
        let Some(db) = self.dbbuf.get() else {
            return Ok(());
        };
        let mut cmd = Command::new(admin::DOORBELL_BUFFER_CONFIG, 0);
        cmd.set_data(DataPtr::Prp {
            prp1: db.shadow.iova(),
            prp2: db.eventidx.iova(),
        });
        self.admin_raw(cmd, None, "Doorbell Buffer Config", true)?;
        let mut a = lock(&self.admin);
        if let (Some(sq), Some(cq)) = (db.slot(0, true, true), db.slot(0, false, true)) {
            a.sq.set_shadow(sq);
            a.cq.set_shadow(cq);
        }
        Ok(())
    }

    /// Why a new command is refused at once, if it is: the device is lost
    /// ([`Error::DeviceLost`], also while its removal is stopping it), or a
    /// reset is in progress (the retryable [`Error::Reset`]).
    #[inline]
    pub(crate) fn refusal(&self) -> Option<Error> {
        let state = self.state.load(std::sync::atomic::Ordering::SeqCst);
        if state & LOST != 0 {
            Some(Error::DeviceLost)
        } else if state & RESETTING != 0 {
            Some(Error::Reset)
        } else {
            None
        }
    }

    /// Whether a reset is in progress.
    #[inline]
    pub(crate) fn is_resetting(&self) -> bool {
        self.state.load(std::sync::atomic::Ordering::SeqCst) & RESETTING != 0
    }

    /// The current reset generation.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.state.load(std::sync::atomic::Ordering::SeqCst) / GENERATION
    }

    pub(crate) fn doorbells(&self, qid: u16) -> (u64, u64) {
        let s = self.cap.doorbell_stride();
        (
            regs::sq_tail_doorbell(qid, s),
            regs::cq_head_doorbell(qid, s),
        )
    }
}

impl Shared {
    /// A flag for a new queue pair to announce its publications with.
    pub(crate) fn add_publisher(&self) -> Arc<Publishing> {
        let p = Arc::new(Publishing::default());
        lock(&self.publishers).push(p.clone());
        p
    }

    /// Forgets a queue pair's flag.
    pub(crate) fn remove_publisher(&self, p: &Arc<Publishing>) {
        lock(&self.publishers).retain(|q| !Arc::ptr_eq(q, p));
    }

    /// Waits until no queue pair is publishing commands (bounded by
    /// [`PUBLISH_WAIT`]). The caller has set [`RESETTING`] first: a queue
    /// pair announces a publication before it reads the state and the
    /// reset sets the state before it reads the flags (both sequentially
    /// consistent), so either the queue pair sees the reset and publishes
    /// nothing, or the reset sees the flag and waits for the doorbell write
    /// to be done.
    fn wait_publishers(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        let start = Instant::now();
        for p in lock(&self.publishers).iter() {
            while p.0.load(SeqCst) {
                if start.elapsed() > PUBLISH_WAIT {
                    log::warn!("reset: a queue pair is still publishing after {PUBLISH_WAIT:?}");
                    return;
                }
                std::thread::yield_now();
            }
        }
    }

    pub(crate) fn free_qid(&self, qid: u16) {
        if let Some(slot) = lock(&self.qids).get_mut(qid as usize - 1) {
            *slot = false;
        }
    }
}
