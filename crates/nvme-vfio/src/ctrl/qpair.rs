//! I/O queue pairs: one per thread (`Send`, not `Sync`), no locks on the I/O
//! path.
//!
//! Requests are submitted asynchronously ([`QueuePair::submit`]) and their
//! completions collected with [`QueuePair::poll`]: buffers move into the
//! request and come back with the completion, so the device never writes
//! memory its owner can touch. Commands are written into the submission ring
//! as they come and published with one tail doorbell per batch (at the next
//! poll or [`flush`](QueuePair::flush)); completions are drained by phase
//! tag with one head doorbell per poll. Requests larger than the controller's
//! maximum transfer are split into several commands and complete once.
//! The blocking calls ([`read`](QueuePair::read), [`write`](QueuePair::write),
//! ...) run on the same machinery.
//!
//! A queue pair's state comes in parts, each with its own type and
//! methods: the rings ([`Rings`]: the submission and completion queues,
//! the doorbell publishing, the interrupt vector), what is in flight
//! ([`Inflight`]: command slots, command IDs, requests) and the recovery
//! bookkeeping ([`RecoveryState`]: reset generations, retries, device
//! errors, the next timeout check). The other modules that extend
//! `QueuePair` (the commands, zones, metadata, recovery) reach its state
//! through methods; its fields are private to this module.

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::Instant;

use blk_dma::{Direction, HostAddr, HostSeg};

use super::inflight::{Inflight, Pending, Slot, Tag};
use super::io::{Done, Io, IoBuf, Op};
use super::meta::MetaPlan;
use super::pool::DmaDescPool;
use super::recovery_state::RecoveryState;
use super::rings::Rings;
use super::{Controller, Namespace, Shared};
use crate::mem::VfioMapper;
use crate::nvme::cmd::{io, Command};
use crate::nvme::dptr::{self, Policy, QueueKind, Setup};
use crate::nvme::queue::{CompletionQueue, SubmissionQueue};
use crate::nvme::spec::DataPtr;
use crate::nvme::DptrError;
use crate::Error;

/// Settings for a queue pair.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    /// Entries in each queue (capped at CAP.MQES + 1); up to `depth - 1`
    /// commands are in flight.
    pub depth: u16,
    /// Descriptor pages (PRP lists, SGL segments) for this queue pair.
    pub desc_pages: usize,
    /// Use SGLs when the controller supports them (by the PRP/SGL policy);
    /// `false` forces PRPs.
    pub sgl: bool,
    /// Average range size from which SGLs are preferred over PRPs when
    /// both can describe a request (default 32 KiB, as Linux's nvme
    /// driver); 1 chooses SGLs for every I/O command, 0 only for requests
    /// PRPs cannot describe.
    pub sgl_threshold: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            depth: 128,
            desc_pages: 64,
            sgl: true,
            sgl_threshold: dptr::DEFAULT_SGL_THRESHOLD,
        }
    }
}

/// Longest time between two timeout checks while commands are in flight,
/// in milliseconds (each check reads CSTS for a fatal status, an MMIO
/// read); a check comes sooner when a command's timeout is due sooner.
pub(super) const CHECK_PERIOD_MS: u64 = 100;

/// An I/O submission/completion queue pair.
///
/// One per thread (`Send`, not `Sync`): requests are queued with
/// [`submit`](Self::submit), published with one doorbell per batch, and
/// collected with [`poll`](Self::poll) (or [`wait`](Self::wait)); the
/// blocking calls ([`read`](Self::read), [`write`](Self::write), ...) run
/// on the same machinery.
///
/// ```
/// # use nvme_sim::{Config as SimConfig, SimController};
/// # use nvme_vfio::ctrl::{Config, Controller};
/// # use nvme_vfio::mem::{DmaSpace, SpaceConfig};
/// # let sim = SimController::new(SimConfig::default()).unwrap();
/// # let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
/// # let config = Config { space: SpaceConfig { hugepages: false }, ..Config::default() };
/// # // SAFETY: the registers, IOMMU and PCI function all belong to `sim`.
/// # let ctrl = unsafe { Controller::with_backend(sim.registers(), space, config, Some(sim.pci_function())) }?;
/// # use nvme_vfio::ctrl::{Io, QueueConfig};
/// let ns = ctrl.namespace(1)?;
/// let mut qp = ctrl.queue_pair(QueueConfig { depth: 64, ..Default::default() })?;
/// // Keep 32 reads in flight, 1000 in all.
/// let mut done = Vec::new();
/// let (mut submitted, mut completed) = (0u64, 0u64);
/// while completed < 1000 {
///     while submitted < 1000 && qp.inflight() < 32 {
///         let io = Io::read(&ns, submitted % 512 * 8, ctrl.dma_alloc(4096)?);
///         qp.submit(io.tag(submitted)).map_err(|(e, _)| e)?;
///         submitted += 1;
///     }
///     qp.poll(&mut done);
///     for d in done.drain(..) {
///         d.result?;
///         completed += 1;
///     }
/// }
/// # Ok::<(), nvme_vfio::Error>(())
/// ```
#[derive(Debug)]
pub struct QueuePair {
    shared: Arc<Shared>,
    qid: u16,
    /// The submission and completion rings, the doorbell publishing and
    /// the interrupt vector (leaked instead of freed if the controller
    /// could not be stopped: see `Drop`).
    rings: Rings,
    mapper: VfioMapper,
    /// Leaked, as the rings, if the controller could not be stopped.
    pool: ManuallyDrop<DmaDescPool>,
    policy: Policy,
    max_transfer: u64,
    /// SGL data blocks may start at any byte (SGLS = 01b).
    sgl_any_alignment: bool,
    /// Command slots, command IDs and requests in flight.
    inflight: Inflight,
    /// Reset generations, queue re-creation retries, device errors and the
    /// next timeout check.
    recovery: RecoveryState,
    /// Segments of the command being built (capacity reused).
    scratch: Vec<HostSeg>,
    /// Command IDs taken by the request being submitted, for rollback.
    taken: Vec<u16>,
    /// Completions collected while a blocking call waited.
    stash: Vec<Done>,
    /// The optional NVM commands the controller supports, and their
    /// limits.
    nvm: super::support::NvmSupport,
}

impl QueuePair {
    pub(crate) fn create(ctrl: &Controller, config: QueueConfig) -> Result<Self, Error> {
        let shared = ctrl.shared().clone();
        if shared.is_disabled() {
            return Err(shared.stopped_error());
        }
        let qid = ctrl.alloc_qid()?;
        let r = Self::build(ctrl, &shared, qid, config);
        if r.is_err() {
            shared.free_qid(qid);
        }
        r
    }

    fn build(
        ctrl: &Controller,
        shared: &Arc<Shared>,
        qid: u16,
        config: QueueConfig,
    ) -> Result<Self, Error> {
        let entries = config
            .depth
            .clamp(2, shared.cap.max_queue_entries().clamp(2, 65535) as u16);
        let (sq_db, cq_db) = shared.doorbells(qid);
        // Everything that can fail to allocate comes before the queues
        // exist on the controller.
        let pool = DmaDescPool::new(&shared.space, config.desc_pages.max(2))?;
        let mut cq = CompletionQueue::new(&shared.space, entries, cq_db)?;
        let mut sq = SubmissionQueue::new(&shared.space, entries, sq_db)?;
        if let Some(db) = shared.dbbuf.get() {
            if let (Some(s), Some(c)) = (db.slot(qid, true, false), db.slot(qid, false, false)) {
                s.clear();
                c.clear();
                sq.set_shadow(s);
                cq.set_shadow(c);
            }
        }
        // Interrupt mode: vector `qid` (vector 0 stays with the admin queue).
        let irq = match &shared.msix {
            Some(m) if (qid as usize) < m.vectors() => Some(qid),
            Some(_) => return Err(Error::NoQueues { max: qid - 1 }),
            None => None,
        };
        shared.admin(
            Command::create_cq(qid, entries, cq.iova(), irq),
            None,
            "Create I/O Completion Queue",
        )?;
        if let Err(e) = shared.admin(
            Command::create_sq(qid, entries, sq.iova(), qid),
            None,
            "Create I/O Submission Queue",
        ) {
            let generation = shared.generation();
            let deleted = shared
                .admin(
                    Command::delete_queue(false, qid),
                    None,
                    "Delete I/O Completion Queue",
                )
                .is_ok();
            if !deleted && generation == shared.generation() && !shared.is_disabled() {
                // The controller may still have the completion queue and
                // write its ring: leak it.
                log::error!("queue {qid}: the CQ could not be deleted; leaking its ring");
                core::mem::forget(cq);
            }
            return Err(e);
        }
        let id = ctrl.identify();
        let depth = entries as usize - 1;
        Ok(Self {
            shared: shared.clone(),
            qid,
            rings: Rings::new(sq, cq, irq, shared.add_publisher()),
            // SAFETY: used only through the dptr functions and each slot's
            // DmaState (unmapped once, in `finish_slot`), on memory a request
            // owns or borrows until it completes.
            mapper: unsafe { VfioMapper::new(shared.space.clone()) },
            pool: ManuallyDrop::new(pool),
            policy: Policy {
                io_sgls: config.sgl && id.sgl_supported(),
                sgl_threshold: config.sgl_threshold,
            },
            max_transfer: ctrl.max_transfer(),
            sgl_any_alignment: config.sgl && id.sgls() & 0x3 == 0x1,
            inflight: Inflight::new(depth),
            recovery: RecoveryState::new(shared.generation()),
            scratch: Vec::with_capacity(16),
            taken: Vec::with_capacity(depth),
            stash: Vec::with_capacity(depth),
            nvm: ctrl.nvm,
        })
    }

    /// The queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Commands in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.count()
    }

    /// Completions this queue pair received that belonged to no command in
    /// flight (a command ID not outstanding, another queue's SQ ID, an
    /// impossible SQ head): device errors, each
    /// of which made the driver reset the controller.
    pub fn device_errors(&self) -> u64 {
        self.recovery.device_errors()
    }

    /// Whether completions were collected (by a blocking call) that
    /// [`poll`](Self::poll) has not handed out yet.
    pub(super) fn has_uncollected(&self) -> bool {
        !self.stash.is_empty()
    }

    /// Most commands that can be in flight at once.
    pub fn depth(&self) -> usize {
        self.inflight.depth()
    }

    /// Submits `io`. Its buffer belongs to the request until it comes back
    /// in a [`Done`] from [`poll`](Self::poll); on refusal the request comes
    /// back with the error and nothing was submitted. The device sees the
    /// command at the next [`poll`](Self::poll) or [`flush`](Self::flush).
    // The refused request comes back by value: "queue full" is a normal,
    // frequent outcome for a caller that submits until full, and boxing it
    // would allocate there.
    #[allow(clippy::result_large_err)]
    pub fn submit(&mut self, io: Io) -> Result<(), (Error, Io)> {
        if let Some(seg) = io.buf.prefix(io.len) {
            if let Some((cid, dp)) = self.try_fast(&io.ns, io.lba, seg) {
                // Reads and writes only: other ops are checked (is the
                // command supported?) on the general path.
                let parts = match io.op {
                    Op::Read => READ_PARTS,
                    // A zoned namespace's writes are checked against its
                    // zones first.
                    Op::Write { fua } if !io.ns.is_zoned() => (io::WRITE, fua, "Write"),
                    _ => return self.submit_slow(io),
                };
                let Io {
                    ns, lba, buf, tag, ..
                } = io;
                self.commit_one(cid, dp, parts, &ns, lba, seg.len, buf, Tag::Caller(tag));
                return Ok(());
            }
        }
        self.submit_slow(io)
    }

    /// [`submit`](Self::submit) past the fast path: the general path, and
    /// every refusal.
    #[inline(never)]
    #[allow(clippy::result_large_err)]
    fn submit_slow(&mut self, io: Io) -> Result<(), (Error, Io)> {
        if (io.op.moves_blocks() && io.ns.has_metadata())
            || io.meta.is_some()
            || io.protection.is_some()
        {
            return self.submit_meta(io);
        }
        if let Op::ZoneAppend { .. } = io.op {
            return self.submit_zone_append(io);
        }
        if !io.op.moves_blocks() {
            return self.submit_command(io);
        }
        let Some(seg) = io.buf.prefix(io.len) else {
            let len = io.len;
            return Err((
                Error::Invalid(format!("transfer of {len} bytes from a smaller buffer")),
                io,
            ));
        };
        io.submit_with(|io, buf| {
            self.submit_request(io.op, &io.ns, io.lba, &[seg], buf, Tag::Caller(io.tag))
        })
    }

    /// Submits a read, write or compare of caller-managed memory with no
    /// buffer ownership: the zero-overhead path for embedding. Its
    /// completion comes back from [`poll`](Self::poll) with [`IoBuf::Raw`]
    /// and `tag`. Other ops are refused (use [`submit`](Self::submit)).
    ///
    /// # Safety
    ///
    /// Every segment must stay valid, and not be read or written by the
    /// caller (for a read) or not be written (for a write), until the
    /// completion with `tag` is returned by `poll`, or the queue pair is
    /// dropped. Except: if that completion's result is [`Error::Dead`], or
    /// the queue pair is dropped while the controller is dead
    /// ([`Error::Dead`]: it could not be stopped), the device may still
    /// read or write the memory, which must then never be freed, reused or
    /// read (leak it).
    pub unsafe fn submit_raw(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        segs: &[HostSeg],
        tag: u64,
    ) -> Result<(), Error> {
        if !op.moves_blocks() || matches!(op, Op::ZoneAppend { .. }) {
            return Err(Error::Invalid(format!(
                "submit_raw takes reads, writes and compares, not {op:?}"
            )));
        }
        self.submit_request(op, ns, lba, segs, IoBuf::Raw, Tag::Caller(tag))
            .map_err(|(e, _)| e)
    }

    /// Publishes every submitted command with one tail doorbell write.
    /// Nothing is published while the controller is being reset (or was
    /// reset since this queue pair's queues were created, or is stopped):
    /// the recovery fails those commands instead.
    #[inline]
    pub fn flush(&mut self) {
        if self.rings.is_unrung() {
            self.publish(super::clock::now_ms());
        }
    }

    /// [`flush`](Self::flush) with the time already read.
    #[inline(always)]
    fn publish(&mut self, now: u64) {
        // Announced before the state is read, so that a reset either is
        // seen here or waits for this doorbell write (Shared::reset).
        self.rings.begin_publish();
        if self.shared.accepts_io(self.recovery.generation()) {
            self.stamp_batch(now);
            self.rings.ring_submissions(&*self.shared.regs);
        }
        self.rings.end_publish();
    }

    /// Stamps the commands about to be published with the time (one clock
    /// read per doorbell): the slots taken since the last doorbell, in
    /// the order the free-slot FIFO handed them out.
    #[inline(always)]
    fn stamp_batch(&mut self, now: u64) {
        self.inflight.stamp_published(now);
        // A command published into an idle queue may be due before the
        // next check.
        self.recovery
            .check_by(now + self.shared.config.io_timeout.as_millis() as u64 + 1);
    }

    /// Publishes pending submissions, then collects completed requests into
    /// `out` (with one head doorbell write for the batch). Returns how many
    /// were added. Commands past the I/O timeout stop the controller, and
    /// every request in flight then completes with an error.
    ///
    /// A failed command's [`Error::Command`] comes back without its Error
    /// Information log entry (polling never waits for an admin command):
    /// when its status has the More bit set,
    /// [`Controller::attach_error_log`](super::Controller::attach_error_log)
    /// fetches it.
    pub fn poll(&mut self, out: &mut Vec<Done>) -> usize {
        let before = out.len();
        out.append(&mut self.stash);
        self.reap(out);
        out.len() - before
    }

    /// Like [`poll`](Self::poll), but when nothing has completed yet waits
    /// up to `timeout` for a completion: asleep on the queue's interrupt in
    /// interrupt mode, spinning otherwise. Returns how many requests were
    /// added to `out` (0 if the time ran out or nothing is in flight).
    pub fn wait(&mut self, out: &mut Vec<Done>, timeout: std::time::Duration) -> usize {
        // A timeout too long to add is as good as none.
        let deadline = Instant::now().checked_add(timeout);
        loop {
            let n = self.poll(out);
            if n > 0 || self.inflight() == 0 {
                return n;
            }
            let now = Instant::now();
            let left = match deadline {
                Some(d) if now >= d => return 0,
                Some(d) => d - now,
                None => std::time::Duration::MAX,
            };
            match (self.rings.irq(), self.shared.msix.as_deref()) {
                (Some(_), Some(msix)) => {
                    let Some(fd) = self.rings.interrupt_fd(Some(msix)) else {
                        return 0;
                    };
                    // Asleep no longer than until the next timeout check:
                    // a command that never completes raises no interrupt.
                    let check = self
                        .recovery
                        .next_check()
                        .saturating_sub(super::clock::now_ms());
                    let ms = left
                        .as_millis()
                        .min(u128::from(check))
                        .clamp(1, i32::MAX as u128) as i32;
                    let mut pfd = libc::pollfd {
                        fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    unsafe { libc::poll(&mut pfd, 1, ms) };
                    self.rings.take_interrupts(Some(msix));
                }
                _ => std::hint::spin_loop(),
            }
        }
    }

    /// Empties both rings and their shadow doorbells, once nothing is in
    /// flight and the controller no longer has the queues (after a reset):
    /// the queues are created again from the start of the rings, and
    /// commands written but not published are forgotten.
    pub(super) fn reset_rings(&mut self) {
        debug_assert_eq!(self.inflight(), 0);
        self.rings.reset();
        self.inflight.restart_stamps();
    }

    /// Recovers if the controller was reset since the queues were created.
    #[inline]
    fn check_generation(&mut self, out: &mut Vec<Done>) -> Result<(), Error> {
        if self.recovery.generation() == self.shared.generation() {
            return Ok(());
        }
        self.recover(out)
    }

    /// Recovers if the controller was reset since the queues were created;
    /// the failed requests wait for the next [`poll`](Self::poll).
    pub(super) fn recover_if_reset(&mut self) -> Result<(), Error> {
        if self.recovery.generation() == self.shared.generation() {
            return Ok(());
        }
        let mut stash = std::mem::take(&mut self.stash);
        let r = self.recover(&mut stash);
        self.stash = stash;
        r
    }

    /// The controller's state this queue pair shares with the others.
    #[inline(always)]
    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The command slots, command IDs and requests in flight.
    #[inline(always)]
    pub(super) fn slots(&self) -> &Inflight {
        &self.inflight
    }

    /// [`slots`](Self::slots), to change.
    #[inline(always)]
    pub(super) fn slots_mut(&mut self) -> &mut Inflight {
        &mut self.inflight
    }

    /// The recovery bookkeeping, for [`recover`](Self::recover) and the
    /// timeout checks.
    pub(super) fn recovery(&self) -> &RecoveryState {
        &self.recovery
    }

    /// [`recovery`](Self::recovery), to change.
    pub(super) fn recovery_mut(&mut self) -> &mut RecoveryState {
        &mut self.recovery
    }

    /// The Create I/O Completion Queue and Create I/O Submission Queue
    /// commands that create this queue pair's queues on its rings.
    pub(super) fn create_commands(&self) -> (Command, Command) {
        (
            self.rings.create_cq(self.qid),
            self.rings.create_sq(self.qid),
        )
    }

    /// Submission doorbell publications so far, and how many of them had to
    /// write the MMIO doorbell (fewer with shadow doorbells).
    pub fn doorbell_stats(&self) -> (u64, u64) {
        self.rings.doorbell_stats()
    }

    /// Interrupts this queue pair's completion queue has raised so far
    /// (interrupt mode; 0 in polled mode), whether or not a waiter slept.
    pub fn interrupts(&mut self) -> u64 {
        self.rings.take_interrupts(self.shared.msix.as_deref());
        self.rings.interrupts()
    }

    /// The eventfd of this queue pair's completion queue interrupt
    /// (interrupt mode; `None` when polled), for an event loop (epoll,
    /// mio, tokio's `AsyncFd`) to wait on instead of [`wait`](Self::wait).
    ///
    /// The rules: the fd becomes readable when the controller posts
    /// completions; when it is, call [`clear_interrupt`](Self::clear_interrupt)
    /// first and [`poll`](Self::poll) after, so that a completion posted
    /// in between makes the fd readable again instead of being missed.
    /// Requests submitted stay in the submission ring until the next
    /// `poll` or [`flush`](Self::flush): flush before going back to sleep.
    /// A command the device never completes raises no interrupt: call
    /// `poll` at least every so often (say each 100 ms) while requests are
    /// in flight, so that timeouts are checked.
    pub fn interrupt_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.rings.interrupt_fd(self.shared.msix.as_deref())
    }

    /// Resets the interrupt eventfd after it became readable (reading
    /// its counter, counted in [`interrupts`](Self::interrupts)); see
    /// [`interrupt_fd`](Self::interrupt_fd). Returns how many interrupts
    /// it had gathered (0 in polled mode).
    pub fn clear_interrupt(&mut self) -> u64 {
        self.rings.take_interrupts(self.shared.msix.as_deref())
    }

    fn reap(&mut self, out: &mut Vec<Done>) {
        if !self.shared.accepts_io(self.recovery.generation()) && !self.reap_stopped(out) {
            return;
        }
        if !self.rings.is_unrung() && self.inflight() == 0 {
            return;
        }
        // One clock read per poll: the doorbell's stamp and the timeout
        // check.
        let now = super::clock::now_ms();
        let entries = u32::from(self.rings.cq_entries());
        self.reap_at(out, now, entries);
    }

    /// [`poll`](Self::poll) for a poll group: the time read once for the
    /// group, and at most `budget` completions taken.
    pub(super) fn poll_at(&mut self, out: &mut Vec<Done>, now: u64, budget: u32) -> usize {
        let before = out.len();
        out.append(&mut self.stash);
        if !self.shared.accepts_io(self.recovery.generation()) && !self.reap_stopped(out) {
            return out.len() - before;
        }
        if self.rings.is_unrung() || self.inflight() != 0 {
            self.reap_at(out, now, budget.min(u32::from(self.rings.cq_entries())));
        }
        out.len() - before
    }

    /// The rest of [`reap`](Self::reap), at time `now`, taking at most
    /// `budget` completions.
    #[inline(always)]
    fn reap_at(&mut self, out: &mut Vec<Done>, now: u64, budget: u32) {
        if self.rings.is_unrung() {
            self.publish(now);
        }
        self.drain(out, budget);
        if self.recovery.take_device_error() {
            self.reset_and_recover(out);
            return;
        }
        if self.recovery.check_due(now) && self.inflight() > 0 {
            self.check_timeouts(out, now);
        }
    }

    /// [`reap`](Self::reap) when the controller is not running this queue
    /// pair's queues: a reset in progress (nothing to do yet), a reset
    /// since they were created (recover), or the controller stopped
    /// (whatever is in flight fails, or is quarantined if the controller
    /// could not be stopped). Returns whether to go on reaping.
    #[cold]
    #[inline(never)]
    fn reap_stopped(&mut self, out: &mut Vec<Done>) -> bool {
        if self.shared.is_resetting() {
            return false;
        }
        if self.check_generation(out).is_err() {
            // `recover` logged why; later calls try again.
            return false;
        }
        if !self.shared.is_disabled() {
            return true;
        }
        if self.inflight() > 0 {
            if self.shared.is_dead() {
                self.quarantine_inflight(out);
            } else {
                let e = self.shared.stopped_error();
                let (closed, lost) = (matches!(e, Error::Closed), matches!(e, Error::DeviceLost));
                self.fail_inflight(out, |_| {
                    if lost {
                        Error::DeviceLost
                    } else if closed {
                        Error::Closed
                    } else {
                        Error::Disabled
                    }
                });
            }
        }
        false
    }

    /// Takes every posted completion, with one head doorbell write; returns
    /// whether there was any.
    pub(super) fn drain_completions(&mut self, out: &mut Vec<Done>) -> bool {
        // At most one ring's worth per call: a device that keeps posting
        // entries (ignoring the head doorbell) cannot hold the caller here.
        let entries = u32::from(self.rings.cq_entries());
        self.drain(out, entries)
    }

    /// [`drain_completions`](Self::drain_completions), taking at most
    /// `budget` completions.
    #[inline(always)]
    fn drain(&mut self, out: &mut Vec<Done>, mut budget: u32) -> bool {
        let mut seen = false;
        while budget > 0 {
            let Some(c) = self.rings.pop_completion() else {
                break;
            };
            budget -= 1;
            seen = true;
            // Everything in the entry is the device's word: it completes a
            // request only if it names a command in flight on this queue,
            // with a possible SQ head.
            let head_ok = self.rings.advance_sq_head(c.sq_head);
            let found = match c.sq_id == self.qid && head_ok {
                true => self.inflight.lookup(c.cid),
                false => None,
            };
            let Some(cid) = found else {
                self.bad_completion(&c, head_ok);
                continue;
            };
            let req = self.finish_slot(cid);
            if !c.status().is_success() {
                // From the entry, which the loop keeps in memory: no value
                // stays live past the slot's release for this.
                let sqid = self.qid;
                self.inflight.fail(req, |what| Error::Command {
                    what,
                    status: c.status(),
                    sqid,
                    cid: c.cid,
                    log: None,
                });
            }
            self.inflight.finish_child(req, out, c.result64());
        }
        if seen {
            self.rings.ring_completions(&*self.shared.regs);
        }
        seen
    }

    /// Counts and logs a completion that belongs to no command in flight;
    /// the controller is reset once the batch is drained.
    #[cold]
    #[inline(never)]
    fn bad_completion(&mut self, c: &crate::nvme::cmd::Completion, head_ok: bool) {
        self.recovery.note_device_error();
        self.shared
            .device_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let why = if c.sq_id != self.qid {
            "for another submission queue"
        } else if !head_ok {
            "with an impossible SQ head"
        } else {
            "for no command in flight (unknown, or already finished)"
        };
        log::warn!(
            "queue {}: device error: completion {why} (command ID {:#06x}, SQ {}, SQ head {}); \
             resetting the controller",
            self.qid,
            c.cid,
            c.sq_id,
            c.sq_head
        );
    }

    /// Undoes a finished command's mappings and frees its slot and ID;
    /// returns its request.
    #[inline(always)]
    pub(super) fn finish_slot(&mut self, cid: usize) -> u32 {
        self.inflight.finish(cid, &mut self.pool, &self.mapper)
    }

    /// Completes every request in flight with the error `make` builds from
    /// its command name (unless it already has one), handing its buffer back.
    /// The device must no longer be processing them.
    pub(super) fn fail_inflight(
        &mut self,
        out: &mut Vec<Done>,
        make: impl Fn(&'static str) -> Error,
    ) {
        debug_assert!(!self.shared.is_dead());
        self.inflight
            .fail_all(&mut self.pool, &self.mapper, out, make);
    }

    /// Writes a request's only command into the submission ring, to be
    /// published with the next doorbell.
    #[inline(always)]
    pub(super) fn enqueue(&mut self, cmd: &Command) {
        // Room is guaranteed: in-flight commands never exceed the ring
        // size minus one.
        self.rings.push(cmd);
        self.rings.mark_unrung();
    }

    /// Starts writing the commands of a request of several
    /// ([`batch_push`](Self::batch_push)), all or nothing.
    pub(super) fn start_batch(&mut self) {
        self.taken.clear();
    }

    /// Writes the command of slot `cid` into the submission ring, as part
    /// of the request being submitted (not yet to be published).
    #[inline(always)]
    pub(super) fn batch_push(&mut self, cid: u16, cmd: &Command) {
        // Room is guaranteed: in-flight commands never exceed the ring
        // size minus one.
        self.rings.push(cmd);
        self.taken.push(cid);
    }

    /// Takes back the commands the request being submitted wrote (not yet
    /// visible to the device), freeing their slots and mappings.
    pub(super) fn unwind_batch(&mut self) {
        self.rings.unpush(self.taken.len() as u16);
        for k in 0..self.taken.len() {
            let cid = self.taken[k] as usize;
            self.finish_slot(cid);
        }
    }

    /// The request's commands are all written: they go out with the next
    /// doorbell.
    #[inline(always)]
    pub(super) fn commit_batch(&mut self) {
        self.rings.mark_unrung();
    }

    /// Takes the oldest free command slot and maps `seg` for its command;
    /// returns the slot and the data pointer. `Err(None)`: no free slot;
    /// `Err(Some(e))`: the mapping failed, and the slot stays free.
    pub(super) fn pop_mapped(
        &mut self,
        seg: HostSeg,
        dir: Direction,
    ) -> Result<(u16, DataPtr), Option<DptrError>> {
        let page = self.shared.page;
        let (cid, slot) = self.inflight.pop().ok_or(None)?;
        match map_into(
            slot,
            &[seg],
            dir,
            &self.mapper,
            &mut self.pool,
            self.policy,
            page,
        ) {
            Ok(dp) => Ok((cid, dp)),
            Err(e) => {
                self.inflight.unpop(cid);
                Err(Some(e))
            }
        }
    }

    /// The most bytes one command transfers.
    #[inline(always)]
    pub(super) fn max_transfer(&self) -> u64 {
        self.max_transfer
    }

    /// Whether SGL data blocks may start at any byte (SGLS = 01b): no
    /// dword alignment is required.
    #[inline(always)]
    pub(super) fn sgl_any_alignment(&self) -> bool {
        self.sgl_any_alignment
    }

    /// Whether I/O commands may use SGLs (by the PRP/SGL policy).
    pub(super) fn io_sgls(&self) -> bool {
        self.policy.io_sgls
    }

    /// Descriptor pages this queue pair has in all.
    pub(super) fn desc_pages(&self) -> usize {
        self.pool.total()
    }

    /// The optional NVM commands the controller supports, and their
    /// limits.
    pub(super) fn nvm(&self) -> &super::support::NvmSupport {
        &self.nvm
    }

    /// Checks a request and returns its length in blocks.
    /// `stride`: bytes per block in the data buffer (the block size, or
    /// more with extended LBAs).
    fn validate(
        &self,
        ns: &Namespace,
        lba: u64,
        segs: &[HostSeg],
        stride: u64,
    ) -> Result<u64, Error> {
        let total: u64 = segs.iter().map(|s| s.len).sum();
        if total == 0 || segs.iter().any(|s| s.len == 0) {
            return Err(Error::Invalid("zero-length transfer".into()));
        }
        if total % stride != 0 {
            return Err(Error::Invalid(format!(
                "length {total} is not a multiple of the {stride}-byte block size"
            )));
        }
        let blocks = total / stride;
        super::blocking::check_range(ns, lba, blocks)?;
        if !self.sgl_any_alignment && segs.iter().any(|s| s.addr.raw() & 3 != 0 || s.len & 3 != 0) {
            return Err(Error::Invalid(
                "buffers must be dword (4-byte) aligned".into(),
            ));
        }
        Ok(blocks)
    }

    /// Validates, splits at the maximum transfer, maps and queues the
    /// commands of one request. All or nothing: on error nothing is queued
    /// and the buffer comes back.
    #[inline(always)]
    fn submit_request(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        segs: &[HostSeg],
        buf: IoBuf,
        tag: Tag,
    ) -> Result<(), (Error, IoBuf)> {
        if ns.has_metadata() {
            return Err((metadata_refusal(ns), buf));
        }
        if op != Op::Read {
            if let Err(e) = self.check_op(op, ns) {
                return Err((e, buf));
            }
            if ns.is_zoned() && matches!(op, Op::Write { .. }) {
                let total: u64 = segs.iter().map(|s| s.len).sum();
                if let Err(e) = self.check_zoned_write(ns, lba, total) {
                    return Err((e, buf));
                }
            }
        }
        if let [seg] = segs {
            if let Some((cid, dp)) = self.try_fast(ns, lba, *seg) {
                let (opcode, fua, what, _) = op_parts(op);
                self.commit_one(cid, dp, (opcode, fua, what), ns, lba, seg.len, buf, tag);
                return Ok(());
            }
        }
        self.submit_general(op, ns, lba, segs, buf, tag, None)
            .map(|_| ())
    }

    /// The fast path's decision, with nothing changed yet: a request of
    /// one segment that [`fast_path_fits`](Self::fast_path_fits), in
    /// memory the mapper's last-region cache knows, whose data pointer
    /// needs no descriptor page ([`dptr::map_cached`]). Returns the command
    /// ID to take and the data pointer; nothing after this can fail.
    #[inline(always)]
    fn try_fast(&self, ns: &Namespace, lba: u64, seg: HostSeg) -> Option<(u16, DataPtr)> {
        if !self.fast_path_fits(ns, lba, &seg) {
            return None;
        }
        let (cid, slot) = self.inflight.peek_free()?;
        let dp = dptr::map_cached(
            seg,
            &self.mapper,
            &slot.state,
            self.policy,
            QueueKind::Io,
            self.shared.page,
        )?;
        Some((cid, dp))
    }

    /// Queues a one-command request whose data pointer `dp` is built for
    /// slot `cid`, the oldest free one: takes the slot and the
    /// request entry that goes with it, and writes the command into the
    /// ring. Nothing here fails.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn commit_one(
        &mut self,
        cid: u16,
        dp: DataPtr,
        (opcode, fua, what): (u8, bool, &'static str),
        ns: &Namespace,
        lba: u64,
        len: u64,
        buf: IoBuf,
        tag: Tag,
    ) {
        let id = self.inflight.start_one(cid, buf, tag, what);
        let blocks = len >> ns.block_size().trailing_zeros();
        let mut cmd = Command::blocks(opcode, ns.id(), lba, blocks as u32, fua);
        cmd.set_cid(id);
        cmd.set_data(dp);
        self.enqueue(&cmd);
    }

    /// Whether a one-segment request takes [`submit_one`](Self::submit_one):
    /// the controller running, one command's worth of whole blocks inside
    /// the namespace, alignment the controller takes, and a free slot.
    /// Anything else (including every error) goes the general way, which
    /// reports it.
    #[inline(always)]
    fn fast_path_fits(&self, ns: &Namespace, lba: u64, seg: &HostSeg) -> bool {
        let bs = ns.block_size();
        let aligned = self.sgl_any_alignment || (seg.addr.raw() as u64 | seg.len) & 3 == 0;
        seg.len != 0
            && seg.len <= self.max_transfer
            && seg.len & (bs - 1) == 0
            && lba
                .checked_add(seg.len >> bs.trailing_zeros())
                .is_some_and(|end| end <= ns.fast_blocks)
            && aligned
            && self.inflight.free_slots() != 0
            && self.shared.accepts_io(self.recovery.generation())
    }

    /// A one-segment request that [`fast_path_fits`](Self::fast_path_fits)
    /// but that [`try_fast`](Self::try_fast) could not map: mapped the full
    /// way (region lookup, descriptor pages, or IOVA space for unregistered
    /// memory), then queued like the fast path's.
    fn submit_one(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        seg: HostSeg,
        buf: IoBuf,
        tag: Tag,
    ) -> Result<(), (Error, IoBuf)> {
        let (.., dir) = op_parts(op);
        let Some((cid, slot)) = self.inflight.peek_free_mut() else {
            // fast_path_fits saw a free slot.
            return Err((Error::QueueFull { needed: 1, free: 0 }, buf));
        };
        let setup = Setup {
            policy: self.policy,
            queue: QueueKind::Io,
            page: self.shared.page,
            pool: &mut *self.pool,
            list: &mut slot.list,
        };
        match dptr::map_one_uncached(seg, dir, &self.mapper, &mut slot.state, setup) {
            Ok(dp) => {
                let (opcode, fua, what, _) = op_parts(op);
                self.commit_one(cid, dp, (opcode, fua, what), ns, lba, seg.len, buf, tag);
                Ok(())
            }
            Err(e) => Err((e.into(), buf)),
        }
    }

    /// [`submit_request`](Self::submit_request) for every other request:
    /// several segments, several commands (split at the maximum transfer),
    /// or something to refuse.
    ///
    /// `plan` completes each command of a request with metadata (its
    /// bytes per block in the data buffer, metadata pointer and
    /// protection fields). Returns the request's index, which nothing
    /// completes before the next doorbell.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit_general(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        segs: &[HostSeg],
        buf: IoBuf,
        tag: Tag,
        plan: Option<&MetaPlan>,
    ) -> Result<u32, (Error, IoBuf)> {
        if let [seg] = segs {
            if plan.is_none() && self.fast_path_fits(ns, lba, seg) {
                return self
                    .submit_one(op, ns, lba, *seg, buf, tag)
                    .map(|()| u32::MAX);
            }
        }
        if let Some(e) = self.shared.refusal() {
            return Err((e, buf));
        }
        if let Err(e) = self.recover_if_reset() {
            return Err((e, buf));
        }
        if self.shared.is_disabled() {
            return Err((self.shared.stopped_error(), buf));
        }
        let stride = plan.map_or(ns.block_size(), |p| p.stride);
        if let Err(e) = self.validate(ns, lba, segs, stride) {
            return Err((e, buf));
        }
        let total: u64 = segs.iter().map(|s| s.len).sum();
        let chunk = (self.max_transfer / stride).max(1) * stride;
        let children = total.div_ceil(chunk) as usize;
        // What always fits an idle queue pair: a command slot and a
        // descriptor page (at most one per command) per command.
        let max = chunk * self.inflight.depth().min(self.pool.total()) as u64;
        if children > self.inflight.depth() {
            // Waiting for completions would not help: the request needs
            // more commands than the queue pair ever has in flight.
            return Err((Error::TooLarge { len: total, max }, buf));
        }
        if children > self.inflight.free_slots() {
            return Err((
                Error::QueueFull {
                    needed: children,
                    free: self.inflight.free_slots(),
                },
                buf,
            ));
        }
        let (opcode, fua, what, dir) = op_parts(op);
        let borrowed = tag.borrowed();
        let pending = Pending::new(buf, tag, borrowed, children as u32, what);
        let req = match self.inflight.start_request(pending) {
            Ok(req) => req,
            Err(buf) => return Err((Error::QueueFull { needed: 1, free: 0 }, buf)),
        };
        self.start_batch();
        let (mut i, mut off, mut lba) = (0usize, 0u64, lba);
        let start = lba;
        let mut failure = None;
        while i < segs.len() {
            self.scratch.clear();
            let mut want = chunk;
            while want > 0 && i < segs.len() {
                let s = segs[i];
                let n = (s.len - off).min(want);
                self.scratch
                    .push(HostSeg::new(HostAddr::new(s.addr.raw() + off as usize), n));
                want -= n;
                off += n;
                if off == s.len {
                    i += 1;
                    off = 0;
                }
            }
            let blocks = (chunk - want) / stride;
            let page = self.shared.page;
            let (cid, slot) = match self.inflight.pop() {
                Some(c) => c,
                None => {
                    failure = Some(Error::QueueFull {
                        needed: children,
                        free: 0,
                    });
                    break;
                }
            };
            match map_into(
                slot,
                &self.scratch,
                dir,
                &self.mapper,
                &mut self.pool,
                self.policy,
                page,
            ) {
                Ok(dp) => {
                    let id = self.inflight.assign(cid, req);
                    let mut cmd = Command::blocks(opcode, ns.id(), lba, blocks as u32, fua);
                    cmd.set_cid(id);
                    cmd.set_data(dp);
                    if let Some(p) = plan {
                        p.apply(&mut cmd, lba - start);
                    }
                    self.batch_push(cid, &cmd);
                }
                Err(e) => {
                    self.inflight.unpop(cid);
                    failure = Some(e.into());
                    break;
                }
            }
            lba += blocks;
        }
        if let Some(e) = failure {
            self.unwind_batch();
            let buf = self.inflight.cancel(req);
            // Out of descriptor pages: waiting helps unless the request
            // needs more than the pool has.
            let e = match e {
                Error::Dptr(crate::nvme::DptrError::DescPoolEmpty)
                    if children > self.pool.total() =>
                {
                    Error::TooLarge { len: total, max }
                }
                Error::Dptr(crate::nvme::DptrError::DescPoolEmpty) => Error::QueueFull {
                    needed: children,
                    free: self.inflight.free_slots(),
                },
                e => e,
            };
            return Err((e, buf));
        }
        self.commit_batch();
        Ok(req)
    }

    /// Runs one request to completion (the blocking calls), of any length:
    /// a request longer than one wave (as many commands of the maximum
    /// transfer as the queue pair has command slots and descriptor pages)
    /// runs as consecutive waves, in order; an error names the LBA range
    /// of the wave that failed.
    pub(super) fn run_blocking(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        segs: &[HostSeg],
    ) -> Result<(), Error> {
        self.check_op(op, ns)?;
        let total: u64 = segs.iter().map(|s| s.len).sum();
        let bs = ns.block_size();
        let chunk = (self.max_transfer / bs).max(1) * bs;
        // A zoned namespace's write runs one command at a time, in order:
        // commands in flight together may be executed in any order, and
        // each must start at the write pointer the one before left.
        let zoned_write = ns.is_zoned() && matches!(op, Op::Write { .. });
        if zoned_write {
            super::zns::check_zone_span(ns, lba, total)?;
        }
        // A command needs at most one descriptor page (the maximum
        // transfer is at most 1 MiB: 256 PRP entries; unregistered memory
        // is one coalesced range). Other requests may hold slots and pages.
        let wave = |qp: &Self| {
            let commands = match zoned_write {
                true => 1,
                false => qp.inflight.free_slots().min(qp.pool.available()).max(1),
            };
            chunk * commands as u64
        };
        if total <= wave(self) || total % bs != 0 {
            // One request (or one the validation refuses as it is).
            self.submit_request(op, ns, lba, segs, IoBuf::Raw, Tag::Blocking)
                .map_err(|(e, _)| e)?;
            return self.wait_blocking();
        }
        super::blocking::check_range(ns, lba, total / bs)?;
        let mut parts: Vec<HostSeg> = Vec::new();
        let mut done = 0u64;
        while done < total {
            let n = wave(self).min(total - done);
            parts.clear();
            slice_segments(segs, done, n, &mut parts);
            let at = lba + done / bs;
            let r = self
                .submit_request(op, ns, at, &parts, IoBuf::Raw, Tag::Blocking)
                .map_err(|(e, _)| e)
                .and_then(|()| self.wait_blocking());
            if let Err(e) = r {
                return Err(Error::At {
                    lba: at,
                    blocks: n / bs,
                    source: Box::new(e),
                });
            }
            done += n;
        }
        Ok(())
    }

    /// Polls until the blocking request completes, keeping other completions
    /// for the next [`poll`](Self::poll). Never returns while the device may
    /// still access the request's memory. A failed command whose status has
    /// the More bit set gets its error log entry attached.
    pub(super) fn wait_blocking(&mut self) -> Result<(), Error> {
        let mut stash = std::mem::take(&mut self.stash);
        let mut r = loop {
            self.reap(&mut stash);
            if let Some(r) = self.inflight.take_blocking() {
                break r;
            }
            std::hint::spin_loop();
        };
        self.stash = stash;
        if let Err(e) = &mut r {
            self.shared.attach_error_log_quietly(e);
        }
        r
    }

    /// Runs a command without data to completion.
    pub(super) fn exec(&mut self, mut cmd: Command, what: &'static str) -> Result<(), Error> {
        if let Some(e) = self.shared.refusal() {
            return Err(e);
        }
        self.recover_if_reset()?;
        if self.shared.is_disabled() {
            return Err(self.shared.stopped_error());
        }
        if self.inflight.free_slots() == 0 || !self.inflight.has_free_request() {
            return Err(Error::QueueFull { needed: 1, free: 0 });
        }
        // No caller memory: a data buffer of the driver's own (the
        // Deallocate ranges) is leaked by the caller if the controller
        // dies.
        let pending = Pending::new(IoBuf::Raw, Tag::Blocking, false, 1, what);
        let Ok(req) = self.inflight.start_request(pending) else {
            return Err(Error::QueueFull { needed: 1, free: 0 });
        };
        let Some((cid, _)) = self.inflight.pop() else {
            self.inflight.cancel(req);
            return Err(Error::QueueFull { needed: 1, free: 0 });
        };
        let id = self.inflight.assign(cid, req);
        cmd.set_cid(id);
        self.enqueue(&cmd);
        self.wait_blocking()
    }
}

/// Appends to `out` the segments covering bytes `[off, off + len)` of the
/// concatenation of `segs`.
fn slice_segments(segs: &[HostSeg], off: u64, len: u64, out: &mut Vec<HostSeg>) {
    let (mut skip, mut want) = (off, len);
    for s in segs {
        if want == 0 {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = (s.len - skip).min(want);
        out.push(HostSeg::new(HostAddr::new(s.addr.raw() + skip as usize), n));
        want -= n;
        skip = 0;
    }
}

/// A read's opcode, FUA bit and name in errors.
const READ_PARTS: (u8, bool, &str) = (io::READ, false, "Read");

/// The opcode of `op`, its FUA bit, its name in errors and the direction
/// of its data.
#[inline(always)]
pub(super) fn op_parts(op: Op) -> (u8, bool, &'static str, Direction) {
    match op {
        Op::Read => (io::READ, false, "Read", Direction::FromDevice),
        Op::Write { fua } => (io::WRITE, fua, "Write", Direction::ToDevice),
        Op::Compare => (io::COMPARE, false, "Compare", Direction::ToDevice),
        Op::Verify => (io::VERIFY, false, "Verify", Direction::ToDevice),
        Op::WriteUncorrectable => (
            io::WRITE_UNCORRECTABLE,
            false,
            "Write Uncorrectable",
            Direction::ToDevice,
        ),
        Op::Copy => (io::COPY, false, "Copy", Direction::ToDevice),
        Op::DatasetManagement => (io::DSM, false, "Dataset Management", Direction::ToDevice),
        Op::ZoneAppend { fua } => (io::ZONE_APPEND, fua, "Zone Append", Direction::ToDevice),
    }
}

/// Maps `segs` for the command in `slot` (its DMA state and descriptor
/// pages) and builds its data pointer.
#[inline(always)]
fn map_into(
    slot: &mut Slot,
    segs: &[HostSeg],
    dir: Direction,
    mapper: &VfioMapper,
    pool: &mut DmaDescPool,
    policy: Policy,
    page: crate::nvme::spec::PageSize,
) -> Result<crate::nvme::spec::DataPtr, crate::nvme::DptrError> {
    let setup = Setup {
        policy,
        queue: QueueKind::Io,
        page,
        pool,
        list: &mut slot.list,
    };
    match segs {
        [seg] => dptr::map_one(*seg, dir, mapper, &mut slot.state, setup),
        _ => dptr::map_data(segs, dir, mapper, &mut slot.state, setup),
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // Requests still in flight own buffers the device may write. What
        // has completed is collected; deleting the submission queue makes
        // the controller end every command still in it (Command Aborted
        // due to SQ Deletion) before the deletion completes. Only commands
        // the controller neither completes nor gives back that way make
        // the driver stop the controller (a reset) before their memory
        // goes back. No waiting for the I/O timeout, no spinning.
        let mut sink = Vec::new();
        self.reap(&mut sink);
        let mut sq_deleted = false;
        let mut cq_deleted = false;
        if self.shared.accepts_io(self.recovery.generation()) {
            match self.shared.admin(
                Command::delete_queue(true, self.qid),
                None,
                "Delete I/O Submission Queue",
            ) {
                Ok(_) => {
                    sq_deleted = true;
                    self.drain_completions(&mut sink);
                }
                Err(e) => log::warn!("deleting SQ {}: {e}", self.qid),
            }
        }
        if self.inflight() > 0 {
            if self.shared.accepts_io(self.recovery.generation()) || self.shared.is_resetting() {
                log::warn!(
                    "queue {}: {} commands still in flight after their queue was deleted: \
                     resetting the controller before their memory goes back",
                    self.qid,
                    self.inflight()
                );
                if let Err(e) = self.shared.reset() {
                    log::error!("reset: {e}");
                }
            }
            // The controller was reset or stopped: the device no longer
            // processes these commands (or it is dead: quarantine).
            while self.inflight() > 0 {
                if self.shared.is_resetting() {
                    std::thread::sleep(std::time::Duration::from_micros(100));
                    continue;
                }
                if self.shared.is_dead() {
                    self.quarantine_inflight(&mut sink);
                } else if self.recovery.generation() != self.shared.generation()
                    || self.shared.is_disabled()
                {
                    let e = self.shared.stopped_error();
                    let closed = matches!(e, Error::Closed);
                    self.fail_inflight(&mut sink, |_| {
                        if closed {
                            Error::Closed
                        } else {
                            Error::Reset
                        }
                    });
                } else {
                    // A reset by another thread is being recovered from:
                    // asleep meanwhile, on the queue's interrupt in
                    // interrupt mode (`wait` sleeps no longer than the
                    // next timeout check), else briefly.
                    if self.rings.irq().is_some() {
                        self.wait(&mut sink, std::time::Duration::from_millis(1));
                    } else {
                        self.reap(&mut sink);
                        std::thread::sleep(std::time::Duration::from_micros(100));
                    }
                }
            }
        } else if sq_deleted && self.shared.accepts_io(self.recovery.generation()) {
            match self.shared.admin(
                Command::delete_queue(false, self.qid),
                None,
                "Delete I/O Completion Queue",
            ) {
                Ok(_) => cq_deleted = true,
                Err(e) => log::warn!("deleting CQ {}: {e}", self.qid),
            }
        }
        self.shared.remove_publisher(self.rings.publishing());
        // A reset, close or removal in progress decides whether the
        // queues are gone: wait for it (bounded by its own CAP.TO waits).
        while self.shared.is_resetting() {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        // The queues are gone from the controller if deleted, or if a reset
        // or a stop (which the device acknowledged) took them.
        let queues_gone = (sq_deleted && cq_deleted)
            || self.recovery.generation() != self.shared.generation()
            || self.shared.is_disabled();
        if !queues_gone && !self.shared.is_dead() {
            log::error!(
                "queue {}: its queues could not be deleted; leaking their rings",
                self.qid
            );
            return;
        }
        if self.inflight.quarantined() > 0 || self.shared.is_dead() {
            // The device may still fetch from the submission ring, write
            // the completion ring and read descriptor pages: leak them (and
            // keep the queue ID, which the dead controller never gives out
            // again anyway).
            log::error!(
                "queue {}: leaking its rings and descriptor pages: the controller could not be stopped",
                self.qid
            );
            return;
        }
        // SAFETY: the queues are gone from the controller (above); the
        // rings and the pool are not used after this (the queue pair is
        // being dropped), and each is dropped once.
        unsafe {
            self.rings.free();
            ManuallyDrop::drop(&mut self.pool);
        }
        self.shared.free_qid(self.qid);
    }
}

/// The refusal of a plain read or write (no metadata settings) on a
/// namespace formatted with metadata, where it cannot go as it is.
pub(super) fn metadata_refusal(ns: &Namespace) -> Error {
    Error::Invalid(format!(
        "namespace {} is formatted with {} bytes of metadata per block: use read_with_metadata, \
         write_with_metadata or a request with Io::metadata / Io::protection",
        ns.id(),
        ns.metadata_size()
    ))
}
