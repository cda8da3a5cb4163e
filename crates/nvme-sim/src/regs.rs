//! The controller's BAR0 as ordinary memory: registers in atomics, written
//! by the driver through [`Registers`] and read by the worker thread.
//!
//! Doorbell and CC writes wake the worker (in inline mode a doorbell write
//! runs the device on the writing thread instead). CC writes are also queued as
//! events, so a quick disable/enable pair is seen as two transitions even if
//! the worker was asleep for both.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, Weak};
use std::thread::Thread;

use nvme_vfio::nvme::regs::{offset, Registers};

use crate::device::Device;

/// NVMe version 1.4.0.
pub(crate) const VERSION_1_4: u32 = 0x0001_0400;

/// CSTS bits the worker owns.
pub(crate) mod csts {
    /// Ready.
    pub const RDY: u32 = 1 << 0;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown Status field.
    pub const SHST_MASK: u32 = 0x3 << 2;
}

/// The register file of one controller.
#[derive(Debug)]
pub(crate) struct RegisterFile {
    cap: u64,
    stride: u64,
    intms: AtomicU32,
    cc: AtomicU32,
    csts: AtomicU32,
    aqa: AtomicU32,
    asq: AtomicU64,
    acq: AtomicU64,
    /// Doorbell `2 * qid` is SQ `qid`'s tail, `2 * qid + 1` CQ `qid`'s head.
    doorbells: Box<[AtomicU32]>,
    /// CC values in the order they were written, for the worker.
    cc_events: Mutex<VecDeque<u32>>,
    /// The device was removed: reads return all ones, writes go nowhere.
    pub(crate) removed: std::sync::atomic::AtomicBool,
    /// Bumped by every write that gives the worker something to do.
    kicks: AtomicU64,
    /// The worker, to unpark.
    worker: OnceLock<Thread>,
    /// The device, in inline mode: doorbell writes run it directly.
    inline: OnceLock<Weak<Mutex<Device>>>,
}

impl RegisterFile {
    /// Registers for a controller with `cap`, doorbells `stride` bytes apart
    /// for queues 0 to `max_qid`.
    pub(crate) fn new(cap: u64, stride: u64, max_qid: u16) -> Self {
        let n = 2 * (max_qid as usize + 1);
        Self {
            cap,
            stride,
            intms: AtomicU32::new(0),
            cc: AtomicU32::new(0),
            csts: AtomicU32::new(0),
            aqa: AtomicU32::new(0),
            asq: AtomicU64::new(0),
            acq: AtomicU64::new(0),
            doorbells: (0..n).map(|_| AtomicU32::new(0)).collect(),
            cc_events: Mutex::new(VecDeque::new()),
            removed: std::sync::atomic::AtomicBool::new(false),
            kicks: AtomicU64::new(0),
            worker: OnceLock::new(),
            inline: OnceLock::new(),
        }
    }

    /// Size of BAR0 in bytes: registers and doorbells.
    pub(crate) fn bar_len(&self) -> u64 {
        offset::DOORBELLS + self.doorbells.len() as u64 * self.stride
    }

    /// Records the worker thread, to wake it on writes.
    pub(crate) fn set_worker(&self, t: Thread) {
        let _ = self.worker.set(t);
    }

    /// Inline mode: doorbell writes run `dev` on the writing thread.
    pub(crate) fn set_inline(&self, dev: Weak<Mutex<Device>>) {
        let _ = self.inline.set(dev);
    }

    /// Tells the worker there is something new.
    pub(crate) fn kick(&self) {
        self.kicks.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = self.worker.get() {
            t.unpark();
        }
    }

    /// The kick counter, for the worker's "anything new?" check.
    pub(crate) fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::SeqCst)
    }

    /// The next queued CC write, oldest first.
    pub(crate) fn next_cc_event(&self) -> Option<u32> {
        self.cc_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }

    /// CC as last written.
    pub(crate) fn cc(&self) -> u32 {
        self.cc.load(Ordering::Acquire)
    }

    /// Whether CC.EN is set now (the worker stops between commands when
    /// the driver clears it).
    pub(crate) fn cc_enabled(&self) -> bool {
        self.cc() & 1 != 0
    }

    pub(crate) fn aqa(&self) -> u32 {
        self.aqa.load(Ordering::Acquire)
    }

    pub(crate) fn asq(&self) -> u64 {
        self.asq.load(Ordering::Acquire)
    }

    pub(crate) fn acq(&self) -> u64 {
        self.acq.load(Ordering::Acquire)
    }

    pub(crate) fn csts(&self) -> u32 {
        self.csts.load(Ordering::Acquire)
    }

    /// Sets the CSTS bits in `set` and clears those in `clear`.
    pub(crate) fn update_csts(&self, set: u32, clear: u32) {
        let _ = self
            .csts
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some((v & !clear) | set)
            });
    }

    /// SQ `qid`'s tail doorbell, as last written (acquire: the entries it
    /// publishes are visible after this load).
    pub(crate) fn sq_tail(&self, qid: u16) -> u32 {
        self.doorbells
            .get(2 * qid as usize)
            .map_or(0, |d| d.load(Ordering::Acquire))
    }

    /// Puts SQ `qid`'s tail doorbell back to `to` if it still holds `bad`
    /// (an invalid write is ignored, as QEMU does; a write made since
    /// stands).
    pub(crate) fn undo_sq_tail(&self, qid: u16, bad: u32, to: u32) {
        if let Some(d) = self.doorbells.get(2 * qid as usize) {
            let _ = d.compare_exchange(bad, to, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// CQ `qid`'s head doorbell, as last written.
    pub(crate) fn cq_head(&self, qid: u16) -> u32 {
        self.doorbells
            .get(2 * qid as usize + 1)
            .map_or(0, |d| d.load(Ordering::Acquire))
    }

    /// Zeroes SQ `qid`'s tail doorbell (`cq` = false) or CQ `qid`'s head
    /// doorbell: the queue is being created, and what was written while it
    /// did not exist went nowhere.
    pub(crate) fn clear_doorbell(&self, qid: u16, cq: bool) {
        if let Some(d) = self.doorbells.get(2 * qid as usize + cq as usize) {
            d.store(0, Ordering::Release);
        }
    }

    /// Zeroes every doorbell (controller reset).
    pub(crate) fn reset_doorbells(&self) {
        for d in self.doorbells.iter() {
            d.store(0, Ordering::Release);
        }
    }

    /// Queues CC's current value as if written again, for the worker to
    /// act on what it did not act on before (an ignored disable), and
    /// wakes it.
    pub(crate) fn replay_cc(&self) {
        let mut events = self.cc_events.lock().unwrap_or_else(|e| e.into_inner());
        events.push_back(self.cc());
        drop(events);
        self.kick();
    }

    /// Function level reset: every register the host writes and CSTS go
    /// back to zero, and CC writes not yet acted on are discarded.
    pub(crate) fn function_reset(&self) {
        let mut events = self.cc_events.lock().unwrap_or_else(|e| e.into_inner());
        events.clear();
        self.cc.store(0, Ordering::Release);
        drop(events);
        self.intms.store(0, Ordering::Relaxed);
        self.aqa.store(0, Ordering::Release);
        self.asq.store(0, Ordering::Release);
        self.acq.store(0, Ordering::Release);
        self.csts.store(0, Ordering::Release);
        self.reset_doorbells();
    }

    /// Whether `len` bytes at `off` are an aligned access inside BAR0.
    fn in_bar(&self, off: u64, len: u64) -> bool {
        // A removed device answers nothing (reads all ones, drops writes).
        !self.removed.load(Ordering::Acquire)
            && off % 4 == 0
            && off
                .checked_add(len)
                .is_some_and(|end| end <= self.bar_len())
    }

    /// The doorbell index for BAR offset `off`, if it is one.
    fn doorbell_index(&self, off: u64) -> Option<usize> {
        let rel = off.checked_sub(offset::DOORBELLS)?;
        if rel % self.stride != 0 {
            return None;
        }
        let i = usize::try_from(rel / self.stride).ok()?;
        (i < self.doorbells.len()).then_some(i)
    }
}

/// Replaces the low (`high` = false) or high half of a 64-bit register.
fn set_half(reg: &AtomicU64, high: bool, value: u32) {
    let _ = reg.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(if high {
            (v & 0xffff_ffff) | (value as u64) << 32
        } else {
            (v & !0xffff_ffff) | value as u64
        })
    });
}

impl Registers for RegisterFile {
    fn read32(&self, off: u64) -> u32 {
        if !self.in_bar(off, 4) {
            return u32::MAX;
        }
        match off {
            offset::CAP => self.cap as u32,
            0x04 => (self.cap >> 32) as u32,
            offset::VS => VERSION_1_4,
            offset::INTMS | offset::INTMC => self.intms.load(Ordering::Relaxed),
            offset::CC => self.cc.load(Ordering::Acquire),
            offset::CSTS => self.csts(),
            offset::AQA => self.aqa(),
            offset::ASQ => self.asq() as u32,
            0x2c => (self.asq() >> 32) as u32,
            offset::ACQ => self.acq() as u32,
            0x34 => (self.acq() >> 32) as u32,
            // Doorbells are write-only; reserved registers read as zero.
            _ => 0,
        }
    }

    fn write32(&self, off: u64, value: u32) {
        if !self.in_bar(off, 4) {
            log::warn!("register write at {off:#x} outside BAR0 dropped");
            return;
        }
        match off {
            offset::INTMS => {
                self.intms.fetch_or(value, Ordering::Relaxed);
            }
            offset::INTMC => {
                self.intms.fetch_and(!value, Ordering::Relaxed);
            }
            offset::CC => {
                self.cc.store(value, Ordering::Release);
                self.cc_events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(value);
                self.kick();
            }
            offset::AQA => self.aqa.store(value, Ordering::Release),
            offset::ASQ => set_half(&self.asq, false, value),
            0x2c => set_half(&self.asq, true, value),
            offset::ACQ => set_half(&self.acq, false, value),
            0x34 => set_half(&self.acq, true, value),
            _ => match self.doorbell_index(off) {
                Some(i) => {
                    // Release: the queue entries written before the doorbell
                    // are visible to the worker's acquire load.
                    self.doorbells[i].store(value, Ordering::Release);
                    match self.inline.get().and_then(Weak::upgrade) {
                        Some(dev) => {
                            if crate::device::run_inline(&dev) {
                                self.kick();
                            }
                        }
                        None => self.kick(),
                    }
                }
                None if off >= offset::DOORBELLS => {
                    log::warn!("write to {off:#x} between doorbells dropped");
                }
                // Read-only and reserved registers ignore writes.
                None => {}
            },
        }
    }

    fn read64(&self, off: u64) -> u64 {
        if self.removed.load(Ordering::Acquire) {
            return u64::MAX;
        }
        match off {
            offset::CAP => self.cap,
            offset::ASQ => self.asq(),
            offset::ACQ => self.acq(),
            _ if !self.in_bar(off, 8) => u64::MAX,
            _ => self.read32(off) as u64 | (self.read32(off + 4) as u64) << 32,
        }
    }

    fn write64(&self, off: u64, value: u64) {
        if self.removed.load(Ordering::Acquire) {
            return;
        }
        match off {
            offset::ASQ => self.asq.store(value, Ordering::Release),
            offset::ACQ => self.acq.store(value, Ordering::Release),
            _ if !self.in_bar(off, 8) => {
                log::warn!("register write at {off:#x} outside BAR0 dropped");
            }
            _ => {
                self.write32(off, value as u32);
                self.write32(off + 4, (value >> 32) as u32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_decode_and_doorbells_follow_the_stride() {
        let r = RegisterFile::new(0x0123_4567_89ab_cdef | 2 << 32, 16, 3);
        assert_eq!(r.read64(offset::CAP), 0x0123_4567_89ab_cdef | 2 << 32);
        assert_eq!(r.read32(offset::VS), VERSION_1_4);
        r.write64(offset::ASQ, 0x1_0000_2000);
        r.write32(offset::ACQ, 0x3000);
        r.write32(offset::ACQ + 4, 0x2);
        assert_eq!(r.read64(offset::ASQ), 0x1_0000_2000);
        assert_eq!(r.read32(0x2c), 1);
        assert_eq!(r.acq(), 0x2_0000_3000);
        r.write32(offset::INTMS, 0b101);
        r.write32(offset::INTMC, 0b001);
        assert_eq!(r.read32(offset::INTMS), 0b100);
        // Stride 16: SQ 2 tail at 0x1040, CQ 2 head at 0x1050.
        r.write32(0x1040, 7);
        r.write32(0x1050, 5);
        r.write32(0x1044, 9);
        assert_eq!((r.sq_tail(2), r.cq_head(2)), (7, 5));
        assert_eq!(r.bar_len(), 0x1000 + 8 * 16);
        assert_eq!(r.read32(0x1080), u32::MAX, "past the BAR");
        assert_eq!(r.read32(u64::MAX - 3), u32::MAX);
        assert_eq!(r.read64(u64::MAX - 7), u64::MAX);
        r.write64(u64::MAX - 3, 1);
        assert_eq!(r.read32(0x1040), 0, "doorbells are write-only");
        r.write32(offset::CC, 1);
        r.write32(offset::CC, 0);
        assert_eq!(r.next_cc_event(), Some(1));
        assert_eq!(r.next_cc_event(), Some(0));
        assert_eq!(r.next_cc_event(), None);
        assert_eq!(r.kicks(), 4);
    }
}
