//! A queue pair's rings: its submission and completion queues, whether
//! commands were written since the last tail doorbell, the flag a reset
//! waits on while a doorbell is being published, and the completion
//! queue's interrupt vector with the interrupts counted on it. The queue
//! pair's submission and completion paths, and its recovery, act on them
//! only through the methods here.

use std::mem::ManuallyDrop;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering::{Release, SeqCst};
use std::sync::Arc;

use super::function::Interrupts;
use super::shared::Publishing;
use crate::nvme::cmd::{Command, Completion};
use crate::nvme::queue::{CompletionQueue, SubmissionQueue};
use crate::nvme::regs::Registers;

/// The rings of one I/O queue pair.
#[derive(Debug)]
pub(super) struct Rings {
    /// The rings are leaked instead of freed if the controller could not
    /// be stopped (see [`free`](Self::free)).
    sq: ManuallyDrop<SubmissionQueue>,
    cq: ManuallyDrop<CompletionQueue>,
    /// Commands written since the last tail doorbell.
    unrung: bool,
    /// Set while a doorbell is being published, for a reset to wait on.
    publishing: Arc<Publishing>,
    /// The MSI-X vector of the completion queue, in interrupt mode.
    irq: Option<u16>,
    /// Interrupts seen so far.
    interrupts: u64,
}

impl Rings {
    pub(super) fn new(
        sq: SubmissionQueue,
        cq: CompletionQueue,
        irq: Option<u16>,
        publishing: Arc<Publishing>,
    ) -> Self {
        Self {
            sq: ManuallyDrop::new(sq),
            cq: ManuallyDrop::new(cq),
            unrung: false,
            publishing,
            irq,
            interrupts: 0,
        }
    }

    /// The Create I/O Completion Queue command for these rings, as queue
    /// `qid`.
    pub(super) fn create_cq(&self, qid: u16) -> Command {
        Command::create_cq(qid, self.sq.entries(), self.cq.iova(), self.irq)
    }

    /// The Create I/O Submission Queue command for these rings, as queue
    /// `qid` (completing on completion queue `qid`).
    pub(super) fn create_sq(&self, qid: u16) -> Command {
        Command::create_sq(qid, self.sq.entries(), self.sq.iova(), qid)
    }

    /// Writes `cmd` into the submission ring, not yet published.
    /// Room is the caller's to guarantee: in-flight commands never exceed
    /// the ring size minus one.
    #[inline(always)]
    pub(super) fn push(&mut self, cmd: &Command) {
        self.sq.push(cmd);
    }

    /// Takes back the last `n` commands written (not yet published).
    pub(super) fn unpush(&mut self, n: u16) {
        self.sq.unpush(n);
    }

    /// Records that commands were written since the last tail doorbell.
    #[inline(always)]
    pub(super) fn mark_unrung(&mut self) {
        self.unrung = true;
    }

    /// Whether commands were written since the last tail doorbell.
    #[inline(always)]
    pub(super) fn is_unrung(&self) -> bool {
        self.unrung
    }

    /// Announces a doorbell publication, before the controller's state is
    /// read, so that a reset either is seen by the publisher or waits for
    /// its doorbell write (`Shared::reset`).
    #[inline(always)]
    pub(super) fn begin_publish(&self) {
        self.publishing.0.store(true, SeqCst);
    }

    /// Ends what [`begin_publish`](Self::begin_publish) announced.
    #[inline(always)]
    pub(super) fn end_publish(&self) {
        self.publishing.0.store(false, Release);
    }

    /// The flag [`begin_publish`](Self::begin_publish) sets, as registered
    /// with the controller.
    pub(super) fn publishing(&self) -> &Arc<Publishing> {
        &self.publishing
    }

    /// Publishes the commands written with one tail doorbell write.
    #[inline(always)]
    pub(super) fn ring_submissions<R: Registers + ?Sized>(&mut self, regs: &R) {
        self.sq.ring(regs);
        self.unrung = false;
    }

    /// Takes the next posted completion, if any (by phase tag).
    #[inline(always)]
    pub(super) fn pop_completion(&mut self) -> Option<Completion> {
        self.cq.pop()
    }

    /// Moves the submission ring's head to the one a completion reports;
    /// `false` if that head is impossible.
    #[inline(always)]
    pub(super) fn advance_sq_head(&mut self, head: u16) -> bool {
        self.sq.advance_head(head)
    }

    /// Releases the completions taken with one head doorbell write.
    #[inline(always)]
    pub(super) fn ring_completions<R: Registers + ?Sized>(&mut self, regs: &R) {
        self.cq.ring(regs);
    }

    /// Entries in the completion ring.
    #[inline(always)]
    pub(super) fn cq_entries(&self) -> u16 {
        self.cq.entries()
    }

    /// Empties both rings and their shadow doorbells (the controller no
    /// longer has the queues): commands written but not published are
    /// forgotten.
    pub(super) fn reset(&mut self) {
        self.sq.reset();
        self.cq.reset();
        for shadow in [self.sq.shadow(), self.cq.shadow()].into_iter().flatten() {
            shadow.clear();
        }
        self.unrung = false;
    }

    /// Submission doorbell publications so far, and how many of them had to
    /// write the MMIO doorbell (fewer with shadow doorbells).
    pub(super) fn doorbell_stats(&self) -> (u64, u64) {
        self.sq.doorbell_stats()
    }

    /// The MSI-X vector of the completion queue (interrupt mode).
    pub(super) fn irq(&self) -> Option<u16> {
        self.irq
    }

    /// Takes the interrupts gathered on the completion queue's vector from
    /// `msix` (none in polled mode), counts them and returns how many.
    pub(super) fn take_interrupts(&mut self, msix: Option<&dyn Interrupts>) -> u64 {
        let n = match (self.irq, msix) {
            (Some(v), Some(msix)) => msix.take_count(v as usize).unwrap_or(0),
            _ => 0,
        };
        self.interrupts += n;
        n
    }

    /// Interrupts counted so far.
    pub(super) fn interrupts(&self) -> u64 {
        self.interrupts
    }

    /// The eventfd of the completion queue's vector in `msix` (interrupt
    /// mode).
    pub(super) fn interrupt_fd<'a>(
        &self,
        msix: Option<&'a dyn Interrupts>,
    ) -> Option<BorrowedFd<'a>> {
        msix?.eventfd(self.irq? as usize)
    }

    /// Frees both rings.
    ///
    /// # Safety
    ///
    /// The controller must no longer have the queues, and the rings must not
    /// be used after this (the queue pair is being dropped); called once.
    pub(super) unsafe fn free(&mut self) {
        // SAFETY: the caller guarantees the rings are not used after this
        // and that this runs once: each is dropped once.
        unsafe {
            ManuallyDrop::drop(&mut self.sq);
            ManuallyDrop::drop(&mut self.cq);
        }
    }
}
