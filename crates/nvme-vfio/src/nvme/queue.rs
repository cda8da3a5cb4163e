//! Submission and completion queue rings in DMA memory.
//!
//! The device reads the submission ring and writes the completion ring at
//! any time, so ring memory is never turned into a Rust reference: commands
//! are written through raw pointers, with a fence between the entries and
//! the doorbell that publishes them; completions are read with atomic loads,
//! the phase tag's with acquire and a DMA read barrier before the rest.
//!
//! The rings and their shadow doorbell slots are the crate's own: they
//! write device-shared memory through raw pointers, trusting their callers
//! for sizes and slots. Only the EventIdx rule ([`need_event`]) is public.

use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use blk_dma::Iova;

use super::barrier::dma_rmb;
use super::cmd::{Command, Completion};
use super::regs::Registers;
use crate::mem::{DmaBuf, DmaSpace};
use crate::Error;

/// A queue's slots in the shadow doorbell and EventIdx pages (Doorbell
/// Buffer Config): the driver writes new doorbell values into `db` and
/// writes the MMIO doorbell only when the controller's `ei` says it needs
/// telling.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shadow {
    /// This doorbell's slot in the shadow doorbell page.
    pub(crate) db: NonNull<u32>,
    /// This doorbell's slot in the EventIdx page.
    pub(crate) ei: NonNull<u32>,
    /// Write the MMIO doorbell every time anyway (the admin queue).
    pub(crate) always_mmio: bool,
}

// SAFETY: the pages belong to the controller's shared state, which outlives
// every queue; each slot is written by the one queue it belongs to.
unsafe impl Send for Shadow {}

impl Shadow {
    /// Zeroes both slots, for a queue about to be created (no controller
    /// queue uses them: a previous queue with this ID left its values).
    pub(crate) fn clear(&self) {
        self.db().store(0, Ordering::Relaxed);
        self.ei().store(0, Ordering::Relaxed);
    }

    /// The shadow doorbell slot, as an atomic.
    #[inline(always)]
    fn db(&self) -> &AtomicU32 {
        // SAFETY: an aligned slot inside the shadow page (see the type),
        // which the controller's shared state keeps allocated while any
        // queue exists; device-shared memory is only ever accessed
        // atomically here, and the device (or its model) does the same.
        unsafe { AtomicU32::from_ptr(self.db.as_ptr()) }
    }

    /// The EventIdx slot, as an atomic.
    #[inline(always)]
    fn ei(&self) -> &AtomicU32 {
        // SAFETY: as for `db`, in the EventIdx page.
        unsafe { AtomicU32::from_ptr(self.ei.as_ptr()) }
    }

    /// Publishes `new` (after `old`) into the shadow slot; returns whether
    /// the MMIO doorbell must be written too (the controller asked to be
    /// told, by its EventIdx).
    #[inline]
    fn publish(&self, old: u16, new: u16) -> bool {
        // Release: the commands (or consumed entries) before it are visible
        // to a device that sees the new value.
        self.db().store(new as u32, Ordering::Release);
        // The shadow value must be visible before EventIdx is read, or the
        // controller could miss the update (the virtio event-index rule).
        fence(Ordering::SeqCst);
        let ei = self.ei().load(Ordering::Relaxed) as u16;
        self.always_mmio || need_event(ei, new, old)
    }
}

/// Whether moving a doorbell from `old` to `new` passes the controller's
/// event index `ei` (NVMe Base 2.0, 5.8; the same rule as virtio's).
#[inline]
pub const fn need_event(ei: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(ei).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A submission queue: a ring of 64-byte commands and its tail doorbell.
#[derive(Debug)]
pub(crate) struct SubmissionQueue {
    ring: DmaBuf,
    entries: u16,
    /// Next free slot (the tail the device has not seen yet, until rung).
    tail: u16,
    /// The device's head, from the latest completion's SQ head field.
    head: u16,
    doorbell: u64,
    /// The tail last published.
    rung: u16,
    shadow: Option<Shadow>,
    /// Doorbell publications, and how many of them wrote MMIO.
    rings: u64,
    mmio_rings: u64,
}

impl SubmissionQueue {
    /// A ring of `entries` commands (2 to 65536) in `space`, with its tail
    /// doorbell at BAR0 offset `doorbell`.
    pub fn new(space: &Arc<DmaSpace>, entries: u16, doorbell: u64) -> Result<Self, Error> {
        // Queue base addresses must be page aligned: buffers of 4 KiB and
        // more are.
        let ring = space.alloc((entries as usize * size_of::<Command>()).max(4096))?;
        Ok(Self {
            ring,
            entries,
            tail: 0,
            head: 0,
            doorbell,
            rung: 0,
            shadow: None,
            rings: 0,
            mmio_rings: 0,
        })
    }

    /// Uses shadow doorbells from now on.
    pub(crate) fn set_shadow(&mut self, shadow: Shadow) {
        self.shadow = Some(shadow);
    }

    /// The shadow slots in use, if any.
    pub(crate) fn shadow(&self) -> Option<Shadow> {
        self.shadow
    }

    /// Doorbell publications and MMIO doorbell writes so far.
    pub fn doorbell_stats(&self) -> (u64, u64) {
        (self.rings, self.mmio_rings)
    }

    /// Device address of the ring.
    pub fn iova(&self) -> Iova {
        self.ring.iova()
    }

    /// Ring size in entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Slots from `from` forward to `to`, around the ring. In u32: the
    /// sums of two indices overflow u16 for rings over 32768 entries.
    #[inline]
    fn distance(&self, from: u16, to: u16) -> u32 {
        let (from, to) = (u32::from(from), u32::from(to));
        if to >= from {
            to - from
        } else {
            to + u32::from(self.entries) - from
        }
    }

    fn next(&self, i: u16) -> u16 {
        if u32::from(i) + 1 >= u32::from(self.entries) {
            0
        } else {
            i + 1
        }
    }

    /// Copies `cmd` into the next slot; the device sees it once
    /// [`ring`](Self::ring) writes the doorbell.
    ///
    /// Flow control is the caller's, by its own count of commands in
    /// flight: at most `entries - 1` commands may be outstanding (written
    /// and not completed), which guarantees the slot is free whatever the
    /// device reported as its head (a command that completed was fetched).
    /// The head from completions is only checked
    /// ([`advance_head`](Self::advance_head)), never trusted for room.
    #[inline]
    pub fn push(&mut self, cmd: &Command) {
        let slot = self.ring.as_ptr().cast::<Command>();
        // SAFETY: tail < entries, so the slot is inside the ring buffer,
        // which this queue owns; the caller keeps at most entries - 1
        // commands in flight, so the device has fetched every command
        // before this slot's previous use and does not read slots past
        // the last doorbell value: writing this one races with nothing. A
        // plain write is enough: `ring` fences before the doorbell makes
        // the slot the device's to read.
        unsafe { slot.add(self.tail as usize).write(*cmd) };
        self.tail = self.next(self.tail);
    }

    /// Publishes every pushed command with one tail doorbell write (or a
    /// shadow doorbell update).
    #[inline]
    pub fn ring<R: Registers + ?Sized>(&mut self, regs: &R) {
        // The commands must be in memory before the device sees the doorbell.
        fence(Ordering::SeqCst);
        self.rings += 1;
        if self.shadow.is_none_or(|s| s.publish(self.rung, self.tail)) {
            regs.write32(self.doorbell, self.tail as u32);
            self.mmio_rings += 1;
        }
        self.rung = self.tail;
    }

    /// Takes back the last `n` pushed commands, which no doorbell has
    /// published yet (`n` is at most the commands pushed since the last
    /// [`ring`](Self::ring)).
    pub fn unpush(&mut self, n: u16) {
        let unrung = self.distance(self.rung, self.tail);
        debug_assert!(u32::from(n) <= unrung);
        let n = u32::from(n).min(unrung);
        let entries = u32::from(self.entries);
        self.tail = ((u32::from(self.tail) + entries - n) % entries) as u16;
    }

    /// Records the device's head from a completion, if it is one the
    /// device can report: at or after the last head it reported and not
    /// past the last tail published to it. Returns `false` (and keeps the
    /// old head) for any other value: the device is misbehaving.
    #[inline]
    pub fn advance_head(&mut self, head: u16) -> bool {
        // In the circular interval [self.head, self.rung] of the ring.
        let ok = if self.head <= self.rung {
            self.head <= head && head <= self.rung
        } else {
            (self.head <= head && head < self.entries) || head <= self.rung
        };
        if ok {
            self.head = head;
        }
        ok
    }

    /// Forgets every slot (after the controller was reset).
    pub fn reset(&mut self) {
        self.tail = 0;
        self.head = 0;
        self.rung = 0;
    }
}

/// A completion queue: a ring of 16-byte completions and its head doorbell.
#[derive(Debug)]
pub(crate) struct CompletionQueue {
    ring: DmaBuf,
    entries: u16,
    head: u16,
    /// The phase tag that marks a new entry in the current pass.
    phase: bool,
    doorbell: u64,
    /// The head last published.
    rung: u16,
    shadow: Option<Shadow>,
}

impl CompletionQueue {
    /// A ring of `entries` completions in `space`, zeroed, with its head
    /// doorbell at BAR0 offset `doorbell`.
    pub fn new(space: &Arc<DmaSpace>, entries: u16, doorbell: u64) -> Result<Self, Error> {
        let mut ring = space.alloc((entries as usize * size_of::<Completion>()).max(4096))?;
        // Not yet known to the device: plain access is fine.
        ring.as_mut_slice().fill(0);
        Ok(Self {
            ring,
            entries,
            head: 0,
            phase: true,
            doorbell,
            rung: 0,
            shadow: None,
        })
    }

    /// Uses shadow doorbells from now on.
    pub(crate) fn set_shadow(&mut self, shadow: Shadow) {
        self.shadow = Some(shadow);
    }

    /// The shadow slots in use, if any.
    pub(crate) fn shadow(&self) -> Option<Shadow> {
        self.shadow
    }

    /// Device address of the ring.
    pub fn iova(&self) -> Iova {
        self.ring.iova()
    }

    /// Ring size in entries.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// The next completion, if the device has posted one; consumes it.
    #[inline]
    pub fn pop(&mut self) -> Option<Completion> {
        let head = self.head;
        // SAFETY: head < entries, inside the ring this queue owns.
        let entry = unsafe { self.ring.as_ptr().cast::<Completion>().add(head as usize) };
        // The entry as two quadwords: the second holds SQ head, SQ ID, CID
        // and status with the phase tag (bit 48), the little-endian layout.
        let words = entry.cast::<u64>();
        // SAFETY: both quadwords are inside the ring (the entry is) and
        // 8-byte aligned (the ring is page aligned, entries are 16 bytes).
        // The device writes the ring at any time, so its memory is only
        // ever accessed atomically (or volatile while the device is
        // disabled), and no Rust reference to ring memory is held anywhere
        // else: these atomic views alias nothing non-atomic.
        let (lo, hi) = unsafe {
            (
                AtomicU64::from_ptr(words),
                AtomicU64::from_ptr(words.add(1)),
            )
        };
        // Acquire: a device that posts the entry with a release store of
        // its last quadword (nvme-sim) has its whole entry, and the data of
        // the command, visible after this load once the phase tag matches.
        let hi = hi.load(Ordering::Acquire);
        if ((hi >> 48) & 1 != 0) != self.phase {
            return None;
        }
        // A real device writes by DMA, not as a Rust thread: its entry's
        // body is read only after the phase tag (Linux's dma_rmb()).
        dma_rmb();
        // Relaxed: ordered by the load and the barrier above; one quadword
        // load, taken apart in registers like the second.
        let lo = lo.load(Ordering::Relaxed);
        let cqe = Completion {
            result: lo as u32,
            rsvd: (lo >> 32) as u32,
            sq_head: hi as u16,
            sq_id: (hi >> 16) as u16,
            cid: (hi >> 32) as u16,
            status: (hi >> 48) as u16,
        };
        if head + 1 == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        } else {
            self.head = head + 1;
        }
        Some(cqe)
    }

    /// Tells the device which entries are consumed (one write per batch).
    #[inline]
    pub fn ring<R: Registers + ?Sized>(&mut self, regs: &R) {
        if self.shadow.is_none_or(|s| s.publish(self.rung, self.head)) {
            regs.write32(self.doorbell, self.head as u32);
        }
        self.rung = self.head;
    }

    /// Zeroes the ring and starts over (after the controller was reset).
    pub fn reset(&mut self) {
        let p = self.ring.as_ptr();
        for i in 0..self.ring.len() {
            // SAFETY: inside the ring; the controller is disabled, so the
            // device does not write it.
            unsafe { p.add(i).write_volatile(0) };
        }
        self.head = 0;
        self.phase = true;
        self.rung = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn event_index_rule() {
        // The controller wants to hear once the value passes ei.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 8, 4));
        assert!(!need_event(9, 8, 4));
        assert!(!need_event(5, 5, 4));
        // Across the 16-bit wrap.
        assert!(need_event(0xffff, 2, 0xfffe));
        assert!(!need_event(3, 2, 0xfffe));
    }
}
