//! Recovery of a queue pair: commands past the I/O timeout are aborted,
//! then the controller is reset if they still do not complete (or CSTS.CFS
//! is set); after any reset, requests in flight fail with their buffers
//! handed back and the queues are created again on the same rings.
//!
//! The queue pair's bookkeeping for this (reset generations, retries,
//! device errors, the next timeout check) is a
//! [`RecoveryState`](super::recovery_state::RecoveryState), reached through
//! [`QueuePair::recovery_mut`]; the rings, slots and pages through the
//! queue pair's methods.

use std::time::Instant;

use super::io::Done;
use super::qpair::{QueuePair, CHECK_PERIOD_MS};
use crate::nvme::cmd::Command;
use crate::Error;

/// Least time between two attempts to create a queue pair's queues again
/// after a reset, in milliseconds.
pub(super) const RECREATE_RETRY_MS: u64 = 100;

impl QueuePair {
    /// After a controller reset: the device dropped every command, so each
    /// request in flight completes with an error (the ones that had timed
    /// out with `Timeout`, the others with `Reset`) and gets its buffer back;
    /// then the queues are created again on the same rings.
    ///
    /// The queue pair counts as recovered only once both queues exist
    /// again. If creating them fails (an orphaned completion queue is
    /// deleted), every later call fails with [`Error::QueueUnavailable`]
    /// and tries again, at most every [`RECREATE_RETRY_MS`].
    pub(super) fn recover(&mut self, out: &mut Vec<Done>) -> Result<(), Error> {
        let generation = self.shared().generation();
        if self.shared().is_dead() {
            // The reset could not stop the device: nothing in flight may
            // go back, and the queues are not created again.
            self.quarantine_inflight(out);
            self.recovery_mut().set_generation(generation);
            return Err(Error::Dead);
        }
        if self.shared().is_lost() {
            // The device left the bus: no DMA is possible, and there are no
            // queues to create.
            self.fail_inflight(out, |_| Error::DeviceLost);
            self.recovery_mut().set_generation(generation);
            return Err(Error::DeviceLost);
        }
        if self.recovery().needs_cleaning(generation) {
            self.fail_inflight(out, |_| Error::Reset);
            self.reset_rings();
            // Also forgets the device error that led to the reset.
            self.recovery_mut().mark_cleaned(generation);
        }
        let now = super::clock::now_ms();
        if !self.recovery().may_retry(now) {
            return Err(Error::QueueUnavailable { qid: self.qid() });
        }
        match self.create_queues() {
            Ok(()) => {
                self.recovery_mut().set_generation(generation);
                Ok(())
            }
            Err(e) => {
                log::error!(
                    "queue {}: creating its queues again after a reset failed: {e}; \
                     retrying in {RECREATE_RETRY_MS} ms",
                    self.qid()
                );
                self.recovery_mut().retry_at(now + RECREATE_RETRY_MS);
                Err(match e {
                    Error::Dead | Error::Closed | Error::Reset | Error::DeviceLost => e,
                    _ => Error::QueueUnavailable { qid: self.qid() },
                })
            }
        }
    }

    /// Creates the completion and submission queues on the rings; if the
    /// submission queue cannot be created, deletes the completion queue
    /// again.
    fn create_queues(&mut self) -> Result<(), Error> {
        let (create_cq, create_sq) = self.create_commands();
        let (s, qid) = (self.shared(), self.qid());
        s.admin(create_cq, None, "Create I/O Completion Queue")?;
        if let Err(e) = s.admin(create_sq, None, "Create I/O Submission Queue") {
            if let Err(d) = s.admin(
                Command::delete_queue(false, qid),
                None,
                "Delete I/O Completion Queue",
            ) {
                log::warn!("queue {qid}: deleting the orphaned CQ: {d}");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Recovery for commands past the I/O timeout, and for a controller that
    /// reports a fatal status: abort the late commands; if they still do not
    /// complete, reset the controller (and if even that fails, stop it).
    pub(super) fn check_timeouts(&mut self, out: &mut Vec<Done>, now: u64) {
        let limit = self.shared().config.io_timeout;
        // One tick more than the timeout: a stamp and a reading of the
        // coarse clock are each up to a tick behind the time, so a command
        // is never failed before its timeout has passed.
        let timeout_ms = limit.as_millis() as u64;
        let limit_ms = timeout_ms + super::clock::tick_ms();
        // Commands were stamped when their doorbell was written; the next
        // check comes when the oldest is due, or after the check period.
        let (any_late, next) =
            self.slots()
                .due(now, limit_ms, now + CHECK_PERIOD_MS.min(limit_ms.max(1)));
        self.recovery_mut().set_next_check(next);
        let csts = self.shared().csts();
        if matches!(csts, Err(Error::DeviceLost)) {
            // Registers read all ones: the reset finds out whether the
            // device is gone (then every request fails with DeviceLost).
            log::error!("queue {}: CSTS reads all ones", self.qid());
            self.reset_and_recover(out);
            return;
        }
        let fatal = csts.map(|c| c.fatal()).unwrap_or(true);
        if !fatal && !any_late {
            return;
        }
        if !fatal {
            let late: Vec<(usize, u16)> = self
                .slots()
                .late(now, limit_ms)
                .filter_map(|cid| Some((cid, self.slots().live_id(cid)?)))
                .collect();
            for (slot, id) in late {
                let q = self.qid();
                match self.shared().admin(Command::abort(q, id), None, "Abort") {
                    Ok(_) => log::warn!(
                        "queue {q}: aborting command {id:#06x} (slot {slot}) after {limit:?}"
                    ),
                    Err(e) => log::warn!("queue {q}: abort of command {id:#06x} failed: {e}"),
                }
            }
            // Give the aborts a moment to complete the commands.
            let grace = Instant::now();
            let any_late = |qp: &Self| qp.slots().late(now, limit_ms).next().is_some();
            while any_late(self) && grace.elapsed() < std::time::Duration::from_secs(1) {
                self.drain_completions(out);
                std::hint::spin_loop();
            }
            if !any_late(self) {
                return;
            }
        }
        // Mark the late requests (all of them, after a fatal status) so
        // they complete with Timeout, then reset.
        self.slots_mut().fail_late(now, limit_ms, fatal, |what| {
            if fatal {
                Error::ControllerFatal { during: what }
            } else {
                Error::Timeout {
                    what,
                    ms: timeout_ms,
                }
            }
        });
        self.reset_and_recover(out);
    }

    /// Resets the controller and recreates this queue pair's queues; what
    /// was in flight completes with an error (or is quarantined, if the
    /// controller could not be stopped).
    pub(super) fn reset_and_recover(&mut self, out: &mut Vec<Done>) {
        log::warn!("queue {}: resetting the controller to recover", self.qid());
        match self.shared().reset() {
            // What was in flight failed in `recover`, which logs (and
            // retries later) if the queues cannot be created again.
            Ok(()) => {
                let _ = self.recover(out);
            }
            Err(e) => {
                log::error!("controller reset failed: {e}");
                self.fail_all(out);
            }
        }
    }

    /// After a reset that failed: the reset left the device stopped
    /// (disabled, closed) or dead, or a close or stop on another thread is
    /// stopping it. Once that is done, every request in flight completes
    /// with an error (or is quarantined if the controller is dead).
    pub(super) fn fail_all(&mut self, out: &mut Vec<Done>) {
        while self.shared().is_resetting() {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        if self.shared().is_dead() {
            self.quarantine_inflight(out);
            return;
        }
        let ms = self.shared().config.io_timeout.as_millis() as u64;
        let (closed, lost) = (self.shared().is_closed(), self.shared().is_lost());
        self.fail_inflight(out, |what| {
            if lost {
                Error::DeviceLost
            } else if closed {
                Error::Closed
            } else {
                Error::Timeout { what, ms }
            }
        });
    }

    /// The controller could not be stopped: what is in flight is
    /// quarantined (see [`Inflight::quarantine_all`]), after the commands
    /// whose own completion is already posted complete as usual.
    ///
    /// [`Inflight::quarantine_all`]: super::inflight::Inflight::quarantine_all
    #[cold]
    pub(super) fn quarantine_inflight(&mut self, out: &mut Vec<Done>) {
        self.drain_completions(out);
        self.recovery_mut().clear_device_error();
        let qid = self.qid();
        self.slots_mut().quarantine_all(qid, out);
    }
}
