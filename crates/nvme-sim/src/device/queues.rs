//! Queue processing: fetching submission entries, posting completion
//! entries with the phase tag, honouring a full completion queue, and the
//! shadow doorbells of Doorbell Buffer Config.

use std::collections::VecDeque;
use std::sync::atomic::{fence, Ordering};

use blk_dma::Iova;
use nvme_vfio::nvme::cmd::{Command, Completion, Status};

use super::{Device, Wait, BURST};
use crate::fault::CqeCorruption;
use crate::iommu::SimIommu;

/// Bytes of a submission queue entry (CC.IOSQES = 6).
pub(crate) const SQE: u64 = 64;
/// Bytes of a completion queue entry (CC.IOCQES = 4).
pub(crate) const CQE: u64 = 16;

/// A submission queue, as the device tracks it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sq {
    pub(crate) base: Iova,
    pub(crate) size: u32,
    /// Next entry to fetch.
    pub(crate) head: u32,
    pub(crate) cqid: u16,
    /// The last valid tail read from the doorbell register.
    pub(crate) tail: u32,
}

impl Sq {
    pub(crate) fn new(base: Iova, size: u32, cqid: u16) -> Self {
        Self {
            base,
            size,
            head: 0,
            cqid,
            tail: 0,
        }
    }
}

/// A completion queue, as the device tracks it.
#[derive(Clone, Debug)]
pub(crate) struct Cq {
    pub(crate) base: Iova,
    pub(crate) size: u32,
    /// Next slot to write.
    pub(crate) tail: u32,
    /// The host's head, from its doorbell.
    pub(crate) head: u32,
    /// Phase tag of the current pass (starts at 1).
    pub(crate) phase: bool,
    /// Completions waiting for room, oldest first (with whether a fault
    /// inverts the entry's phase tag).
    pub(crate) backlog: VecDeque<(Completion, bool)>,
    /// Submission queues completing here.
    pub(crate) sqs: u32,
    /// The interrupt vector signalled for new entries, if enabled.
    pub(crate) vector: Option<u16>,
}

impl Cq {
    pub(crate) fn new(base: Iova, size: u32) -> Self {
        Self {
            base,
            size,
            tail: 0,
            head: 0,
            phase: true,
            backlog: VecDeque::new(),
            sqs: 0,
            vector: None,
        }
    }

    /// One slot always stays empty: full when the tail is just behind the
    /// head.
    fn full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }
}

/// A submission queue entry from its 64 little-endian bytes.
fn command_from_bytes(b: &[u8; 64]) -> Command {
    let d = |i: usize| u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
    let q = |i: usize| d(i) as u64 | (d(i + 1) as u64) << 32;
    Command {
        cdw0: d(0),
        nsid: d(1),
        cdw2: d(2),
        cdw3: d(3),
        mptr: q(4),
        dptr: [q(6), q(8)],
        cdw10: d(10),
        cdw11: d(11),
        cdw12: d(12),
        cdw13: d(13),
        cdw14: d(14),
        cdw15: d(15),
    }
}

/// Writes `c` into `cq`'s next slot as two quadword atomic stores: the
/// first (result) relaxed, then the second (SQ head and ID, CID, status with
/// the phase tag) with release, so a host whose acquire load sees the new
/// phase sees the whole entry, and the data the command moved. The second
/// quadword is stored whole, not dword 3 alone: the driver loads it as one
/// quadword, and atomic accesses of different sizes to the same bytes must
/// not race. `false` if the IOMMU refused.
fn write_cqe(iommu: &SimIommu, cq: &mut Cq, c: &Completion) -> bool {
    let at = cq.base.wrapping_add(cq.tail as u64 * CQE);
    let lo = c.result as u64 | (c.rsvd as u64) << 32;
    let status = c.status | cq.phase as u16;
    let hi =
        c.sq_head as u64 | (c.sq_id as u64) << 16 | (c.cid as u64) << 32 | (status as u64) << 48;
    // Little-endian in memory, as the entry's layout says.
    if !iommu.store_u64(at, lo.to_le(), Ordering::Relaxed) {
        return false;
    }
    // The phase tag last.
    if !iommu.store_u64(at.wrapping_add(8), hi.to_le(), Ordering::Release) {
        return false;
    }
    cq.tail += 1;
    if cq.tail == cq.size {
        cq.tail = 0;
        cq.phase = !cq.phase;
    }
    true
}

/// Writes `c` into `cq`'s next slot like [`write_cqe`], with the phase
/// tag inverted if `flip` (a fault): the tail and the queue's own phase
/// move on as for a good entry.
fn write_entry(iommu: &SimIommu, cq: &mut Cq, c: &Completion, flip: bool) -> bool {
    if !flip {
        return write_cqe(iommu, cq, c);
    }
    cq.phase = !cq.phase;
    let ok = write_cqe(iommu, cq, c);
    cq.phase = !cq.phase;
    ok
}

impl Device {
    /// Offset of doorbell `index` in the shadow and EventIdx buffers (they
    /// mirror the doorbell registers' layout).
    fn shadow_offset(&self, index: u64) -> u64 {
        index * self.sh.config.stride()
    }

    /// Reads a shadow doorbell; `None` without shadow doorbells (the admin
    /// queue never uses them) or if the IOMMU refuses.
    fn shadow_value(&self, qid: u16, cq: bool) -> Option<u32> {
        let (db, _) = self.shadow.filter(|_| qid != 0)?;
        let at = db.wrapping_add(self.shadow_offset(2 * qid as u64 + cq as u64));
        // Acquire: pairs with the host's release store of the slot, so the
        // commands it publishes are visible before they are fetched.
        self.sh.iommu.load_u32(at, Ordering::Acquire)
    }

    /// Writes an EventIdx entry; the full fence orders it before the next
    /// read of the shadow doorbell (the host does the mirror image).
    fn publish_event_idx(&self, qid: u16, cq: bool, value: u32) {
        if let Some((_, ei)) = self.shadow.filter(|_| qid != 0) {
            let at = ei.wrapping_add(self.shadow_offset(2 * qid as u64 + cq as u64));
            if !self.sh.iommu.store_u32(at, value, Ordering::Relaxed) {
                log::warn!("EventIdx write for queue {qid} refused by the IOMMU");
            }
            fence(Ordering::SeqCst);
        }
    }

    /// SQ `qid`'s tail from its doorbell (shadow or register); `None` if the
    /// value is invalid. A register write beyond the queue is an invalid
    /// doorbell write, as QEMU handles it (shadow doorbells or not):
    /// ignored (the register keeps its last valid value), logged in the
    /// Error Information log and reported as an error event.
    fn sq_tail(&mut self, qid: u16, size: u32) -> Option<u32> {
        let reg = self.sh.regs.sq_tail(qid);
        let sq = self.sqs[qid as usize].as_mut()?;
        let last = sq.tail;
        if reg < size {
            sq.tail = reg;
        } else {
            log::warn!("SQ {qid} tail doorbell {reg} beyond {size} entries ignored");
            self.sh.regs.undo_sq_tail(qid, reg, last);
            self.invalid_doorbell_write(qid, reg);
        }
        let v = match self.shadow_value(qid, false) {
            Some(v) => v,
            None => self.sqs[qid as usize].as_ref()?.tail,
        };
        if v >= size {
            log::warn!("SQ {qid} shadow tail {v} beyond {size} entries ignored");
            return None;
        }
        Some(v)
    }

    /// Refreshes CQ `cqid`'s head from its doorbell.
    fn refresh_cq_head(&mut self, cqid: u16) {
        let Some(size) = self.cqs[cqid as usize].as_ref().map(|c| c.size) else {
            return;
        };
        let v = match self.shadow_value(cqid, true) {
            Some(seen) => {
                // Ask for a register write once the head moves past what
                // we saw, then look again: the host may have moved it
                // before it could see the request.
                self.publish_event_idx(cqid, true, seen);
                self.shadow_value(cqid, true).unwrap_or(seen)
            }
            None => self.sh.regs.cq_head(cqid),
        };
        if v >= size {
            log::warn!("CQ {cqid} head doorbell {v} beyond {size} entries ignored");
            return;
        }
        if let Some(cq) = self.cqs[cqid as usize].as_mut() {
            cq.head = v;
        }
    }

    /// Whether CQ `cqid` has no room: entries wait in its backlog, or it is
    /// full even after re-reading the head doorbell.
    fn cq_blocked(&mut self, cqid: u16) -> bool {
        match self.cqs[cqid as usize].as_ref() {
            None => true,
            Some(cq) if !cq.backlog.is_empty() => true,
            Some(cq) if cq.full() => {
                self.refresh_cq_head(cqid);
                self.cqs[cqid as usize].as_ref().is_none_or(Cq::full)
            }
            Some(_) => false,
        }
    }

    /// Posts what waits in CQ `cqid`'s backlog, as far as there is room.
    fn flush_backlog(&mut self, cqid: u16) -> bool {
        if self.cqs[cqid as usize]
            .as_ref()
            .is_none_or(|c| c.backlog.is_empty())
        {
            return false;
        }
        self.refresh_cq_head(cqid);
        let Some(cq) = self.cqs[cqid as usize].as_mut() else {
            return false;
        };
        let mut moved = false;
        while !cq.full() {
            let Some((c, flip)) = cq.backlog.pop_front() else {
                break;
            };
            if !write_entry(&self.sh.iommu, cq, &c, flip) {
                log::warn!("CQE write to CQ {cqid} refused by the IOMMU; raising CSTS.CFS");
                self.sh.regs.update_csts(crate::regs::csts::CFS, 0);
                return true;
            }
            moved = true;
        }
        if moved {
            self.interrupt(cqid);
        }
        moved
    }

    /// Signals CQ `cqid`'s interrupt vector, if it has one enabled and the
    /// driver asked for interrupts.
    fn interrupt(&self, cqid: u16) {
        let vector = self.cqs.get(cqid as usize).and_then(|c| c.as_ref()?.vector);
        if let (Some(v), Some(irqs)) = (vector, self.sh.irqs.get()) {
            irqs.signal(v);
        }
    }

    /// Posts a completion for command `cid` of SQ `sqid`, carrying the SQ's
    /// current head.
    pub(crate) fn post(&mut self, sqid: u16, cid: u16, status: Status, result: u64) {
        self.post_entry(sqid, cid, status, result, None);
    }

    /// Posts a completion for command `cid` of SQ `sqid`, to the SQ's CQ,
    /// with a field altered if a fault says so.
    pub(crate) fn post_entry(
        &mut self,
        sqid: u16,
        cid: u16,
        status: Status,
        result: u64,
        corrupt: Option<CqeCorruption>,
    ) {
        let Some(sq) = self.sqs.get(sqid as usize).copied().flatten() else {
            log::debug!("completion of cid {cid} for deleted SQ {sqid} dropped");
            return;
        };
        let mut cqe = Completion {
            result: result as u32,
            rsvd: (result >> 32) as u32,
            sq_head: sq.head as u16,
            sq_id: sqid,
            cid,
            status: status.0 << 1,
        };
        let mut flip = false;
        match corrupt {
            None => {}
            Some(CqeCorruption::Cid(v)) => cqe.cid = v,
            Some(CqeCorruption::CidXor(m)) => cqe.cid ^= m,
            Some(CqeCorruption::SqId(v)) => cqe.sq_id = v,
            Some(CqeCorruption::SqHead(v)) => cqe.sq_head = (v as u32 % sq.size) as u16,
            Some(CqeCorruption::SqHeadPastTail(k)) => {
                let tail = self.sq_tail(sqid, sq.size).unwrap_or(sq.head);
                cqe.sq_head = ((tail as u64 + k as u64) % sq.size as u64) as u16;
            }
            Some(CqeCorruption::InvertPhase) => flip = true,
            Some(CqeCorruption::Result(v)) => {
                cqe.result = v as u32;
                cqe.rsvd = (v >> 32) as u32;
            }
        }
        self.push_cqe(sq.cqid, cqe, flip);
    }

    /// Writes `cqe` to CQ `cqid` (or its backlog when there is no room),
    /// its phase tag inverted if `flip`, and counts it for the commands
    /// held back on that CQ.
    pub(crate) fn push_cqe(&mut self, cqid: u16, cqe: Completion, flip: bool) {
        if self.cq_blocked(cqid) {
            if let Some(cq) = self.cqs[cqid as usize].as_mut() {
                cq.backlog.push_back((cqe, flip));
            }
        } else if let Some(cq) = self.cqs[cqid as usize].as_mut() {
            if !write_entry(&self.sh.iommu, cq, &cqe, flip) {
                log::warn!("CQE write to CQ {cqid} refused by the IOMMU; raising CSTS.CFS");
                self.fatal();
            } else {
                self.interrupt(cqid);
            }
        }
        // Commands held back on this CQ count every completion posted.
        let sqs = &self.sqs;
        for d in &mut self.deferred {
            if let Wait::After(n) = &mut d.wait {
                if sqs[d.sqid as usize].is_some_and(|s| s.cqid == cqid) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    /// One pass over the submission queues, round robin, up to [`BURST`]
    /// commands each. Returns whether anything was done.
    pub(super) fn process_queues(&mut self) -> bool {
        let mut busy = false;
        let mut i = 0;
        while i < self.sq_ids.len() && self.running() {
            busy |= self.process_sq(self.sq_ids[i]);
            i += 1;
        }
        busy
    }

    fn process_sq(&mut self, qid: u16) -> bool {
        let Some(cqid) = self.sqs[qid as usize].map(|s| s.cqid) else {
            return false;
        };
        let mut busy = self.flush_backlog(cqid);
        let mut published = false;
        for _ in 0..BURST {
            let Some(sq) = self.sqs[qid as usize] else {
                return busy;
            };
            let Some(tail) = self.sq_tail(qid, sq.size) else {
                return busy;
            };
            if sq.head == tail {
                if self.shadow.is_some() && qid != 0 && !published {
                    // Ask for a doorbell write past this tail, then look
                    // once more: the host may have moved it meanwhile.
                    self.publish_event_idx(qid, false, tail);
                    published = true;
                    continue;
                }
                return busy;
            }
            // Checked after reading the tail: a fatal status or a disable
            // that happened before the doorbell write is seen here.
            if !self.running() {
                return busy;
            }
            if self.cq_blocked(sq.cqid) {
                return busy;
            }
            let mut raw = [0u8; 64];
            let at = sq.base.wrapping_add(sq.head as u64 * SQE);
            if !self.sh.iommu.read(at, &mut raw) {
                log::warn!("SQ {qid} entry at {at} unreadable; raising CSTS.CFS");
                self.fatal();
                return true;
            }
            if let Some(s) = self.sqs[qid as usize].as_mut() {
                s.head = (s.head + 1) % s.size;
            }
            self.execute(qid, command_from_bytes(&raw));
            busy = true;
        }
        busy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_decode_from_little_endian_bytes() {
        let mut c = Command::rw(true, 3, 0x1_0000_0002, 8, true);
        c.set_cid(0x1234);
        c.dptr = [0x1122_3344_5566_7788, 0x99];
        c.mptr = 0xabcd;
        let mut b = [0u8; 64];
        let dw = [
            c.cdw0,
            c.nsid,
            c.cdw2,
            c.cdw3,
            c.mptr as u32,
            0,
            c.dptr[0] as u32,
            (c.dptr[0] >> 32) as u32,
            c.dptr[1] as u32,
            0,
            c.cdw10,
            c.cdw11,
            c.cdw12,
            c.cdw13,
            c.cdw14,
            c.cdw15,
        ];
        for (i, d) in dw.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
        assert_eq!(command_from_bytes(&b), c);
    }

    #[test]
    fn a_cq_is_full_one_slot_early() {
        let mut cq = Cq::new(Iova::new(0x1000), 4);
        assert!(!cq.full());
        cq.tail = 3;
        assert!(cq.full());
        cq.head = 1;
        assert!(!cq.full());
    }
}
