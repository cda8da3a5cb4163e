//! Recovery of a queue pair: commands past the I/O timeout are aborted,
//! then the controller is reset if they still do not complete (or CSTS.CFS
//! is set); after any reset, requests in flight fail with their buffers
//! handed back and the queues are created again on the same rings.

use std::time::Instant;

use super::io::Done;
use super::qpair::{QueuePair, Slot, CHECK_PERIOD_MS};

/// Least time between two attempts to create a queue pair's queues again
/// after a reset, in milliseconds.
pub(super) const RECREATE_RETRY_MS: u64 = 100;
use crate::nvme::cmd::Command;
use crate::Error;

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
        let generation = self.shared.generation();
        if self.shared.is_dead() {
            // The reset could not stop the device: nothing in flight may
            // go back, and the queues are not created again.
            self.quarantine_inflight(out);
            self.generation = generation;
            return Err(Error::Dead);
        }
        if self.shared.is_lost() {
            // The device left the bus: no DMA is possible, and there are no
            // queues to create.
            self.fail_inflight(out, |_| Error::DeviceLost);
            self.generation = generation;
            return Err(Error::DeviceLost);
        }
        if self.cleaned != generation {
            self.device_error = false;
            self.fail_inflight(out, |_| Error::Reset);
            self.sq.reset();
            self.cq.reset();
            for shadow in [self.sq.shadow(), self.cq.shadow()].into_iter().flatten() {
                shadow.clear();
            }
            self.unrung = false;
            self.stamped = self.free_cids.take_position();
            self.cleaned = generation;
            self.retry_at = 0;
        }
        let now = super::clock::now_ms();
        if now < self.retry_at {
            return Err(Error::QueueUnavailable { qid: self.qid });
        }
        match self.create_queues() {
            Ok(()) => {
                self.generation = generation;
                Ok(())
            }
            Err(e) => {
                log::error!(
                    "queue {}: creating its queues again after a reset failed: {e}; \
                     retrying in {RECREATE_RETRY_MS} ms",
                    self.qid
                );
                self.retry_at = now + RECREATE_RETRY_MS;
                Err(match e {
                    Error::Dead | Error::Closed | Error::Reset | Error::DeviceLost => e,
                    _ => Error::QueueUnavailable { qid: self.qid },
                })
            }
        }
    }

    /// Creates the completion and submission queues on the rings; if the
    /// submission queue cannot be created, deletes the completion queue
    /// again.
    fn create_queues(&mut self) -> Result<(), Error> {
        let entries = self.sq.entries();
        let s = &self.shared;
        s.admin(
            Command::create_cq(self.qid, entries, self.cq.iova(), self.irq),
            None,
            "Create I/O Completion Queue",
        )?;
        if let Err(e) = s.admin(
            Command::create_sq(self.qid, entries, self.sq.iova(), self.qid),
            None,
            "Create I/O Submission Queue",
        ) {
            if let Err(d) = s.admin(
                Command::delete_queue(false, self.qid),
                None,
                "Delete I/O Completion Queue",
            ) {
                log::warn!("queue {}: deleting the orphaned CQ: {d}", self.qid);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Recovery for commands past the I/O timeout, and for a controller that
    /// reports a fatal status: abort the late commands; if they still do not
    /// complete, reset the controller (and if even that fails, stop it).
    pub(super) fn check_timeouts(&mut self, out: &mut Vec<Done>, now: u64) {
        let limit = self.shared.config.io_timeout;
        let limit_ms = limit.as_millis() as u64;
        // Commands were stamped when their doorbell was written; the next
        // check comes when the oldest is due, or after the check period.
        let mut next = now + CHECK_PERIOD_MS.min(limit_ms.max(1));
        let mut any_late = false;
        for s in self.slots.iter().filter(|s| s.busy()) {
            let due = s.stamp + limit_ms;
            if now > due {
                any_late = true;
            } else {
                next = next.min(due + 1);
            }
        }
        self.next_check = next;
        let csts = self.shared.csts();
        if matches!(csts, Err(Error::DeviceLost)) {
            // Registers read all ones: the reset finds out whether the
            // device is gone (then every request fails with DeviceLost).
            log::error!("queue {}: CSTS reads all ones", self.qid);
            self.reset_and_recover(out);
            return;
        }
        let fatal = csts.map(|c| c.fatal()).unwrap_or(true);
        if !fatal && !any_late {
            return;
        }
        let late = |s: &Slot| s.busy() && now > s.stamp + limit_ms;
        if !fatal {
            for cid in 0..self.slots.len() {
                if late(&self.slots[cid]) {
                    // The command ID the command went out with (index and
                    // generation).
                    let id = self.slots[cid].live as u16;
                    match self
                        .shared
                        .admin(Command::abort(self.qid, id), None, "Abort")
                    {
                        Ok(_) => {
                            log::warn!("queue {}: aborting command {cid} after {limit:?}", self.qid)
                        }
                        Err(e) => {
                            log::warn!("queue {}: abort of command {cid} failed: {e}", self.qid)
                        }
                    }
                }
            }
            // Give the aborts a moment to complete the commands.
            let grace = Instant::now();
            while self.slots.iter().any(late) && grace.elapsed() < std::time::Duration::from_secs(1)
            {
                self.drain_completions(out);
                std::hint::spin_loop();
            }
            if !self.slots.iter().any(late) {
                return;
            }
        }
        // Mark the late requests so they complete with Timeout, then reset.
        let ms = limit.as_millis() as u64;
        for cid in 0..self.slots.len() {
            if fatal || late(&self.slots[cid]) {
                let req = self.slots[cid].req as usize;
                if let Some(p) = self.reqs.get_mut(req) {
                    if p.remaining > 0 && p.error.is_none() && self.slots[cid].busy() {
                        p.error = Some(Box::new(if fatal {
                            Error::ControllerFatal { during: p.what }
                        } else {
                            Error::Timeout { what: p.what, ms }
                        }));
                    }
                }
            }
        }
        self.reset_and_recover(out);
    }

    /// Resets the controller and recreates this queue pair's queues; what
    /// was in flight completes with an error (or is quarantined, if the
    /// controller could not be stopped).
    pub(super) fn reset_and_recover(&mut self, out: &mut Vec<Done>) {
        log::warn!("queue {}: resetting the controller to recover", self.qid);
        match self.shared.reset() {
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
        while self.shared.is_resetting() {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        if self.shared.is_dead() {
            self.quarantine_inflight(out);
            return;
        }
        let ms = self.shared.config.io_timeout.as_millis() as u64;
        let (closed, lost) = (self.shared.is_closed(), self.shared.is_lost());
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

    /// The controller could not be stopped: every request in flight
    /// completes with [`Error::Dead`] and without its buffer, which is
    /// leaked with its command's mappings and descriptor pages (the device
    /// may still read or write all of them). Their slots are never reused.
    ///
    /// A blocking call's request holds memory the caller lent for the
    /// call, which goes back to the caller when the call returns: that
    /// cannot be made safe, so the process is aborted.
    #[cold]
    pub(super) fn quarantine_inflight(&mut self, out: &mut Vec<Done>) {
        // Commands whose own completion is already posted are done: they
        // complete as usual.
        self.drain_completions(out);
        self.device_error = false;
        for cid in 0..self.slots.len() {
            let s = &mut self.slots[cid];
            if !s.busy() {
                continue;
            }
            s.live = Slot::FREE;
            // Kept mapped, and the IOVA space kept allocated: nothing else
            // may ever be mapped where the device may still write.
            core::mem::forget(core::mem::take(&mut s.state));
            // The descriptor pages are dropped from the list without going
            // back to the pool (which is leaked with the rings).
            s.list = Default::default();
            self.quarantined += 1;
            let req = s.req;
            let Some(p) = self.reqs.get_mut(req as usize) else {
                continue;
            };
            if p.remaining == 0 {
                continue;
            }
            if p.borrowed {
                log::error!(
                    "queue {}: the controller cannot be stopped while a blocking call's \
                     command is in flight on memory the caller lent; aborting the process \
                     rather than handing that memory back",
                    self.qid
                );
                std::process::abort();
            }
            core::mem::forget(core::mem::replace(&mut p.buf, super::io::IoBuf::Raw));
            p.error = Some(Box::new(Error::Dead));
            self.finish_child(req, out);
        }
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
        for cid in 0..self.slots.len() {
            if !self.slots[cid].busy() {
                continue;
            }
            let req = self.finish_slot(cid);
            if let Some(p) = self.reqs.get_mut(req as usize) {
                if p.remaining > 0 && p.error.is_none() {
                    p.error = Some(Box::new(make(p.what)));
                }
            }
            self.finish_child(req, out);
        }
    }

    /// Recovers if the controller was reset since the queues were created;
    /// the failed requests wait for the next [`poll`](Self::poll).
    pub(super) fn recover_if_reset(&mut self) -> Result<(), Error> {
        if self.generation == self.shared.generation() {
            return Ok(());
        }
        let mut stash = std::mem::take(&mut self.stash);
        let r = self.recover(&mut stash);
        self.stash = stash;
        r
    }
}
