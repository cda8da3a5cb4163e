//! I/O queue pairs: one per thread (`Send`, not `Sync`), no locks on the I/O
//! path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_dma::{Direction, DmaState, HostAddr, HostSeg};

use super::pool::DmaDescPool;
use super::{Controller, Namespace, Shared};
use crate::mem::VfioMapper;
use crate::nvme::cmd::{io, Command, Completion};
use crate::nvme::desc::DescList;
use crate::nvme::dptr::{self, Policy, QueueKind, Setup};
use crate::nvme::queue::{CompletionQueue, SubmissionQueue};
use crate::Error;

/// Settings for a queue pair.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    /// Entries in each queue (capped at CAP.MQES + 1).
    pub depth: u16,
    /// Descriptor pages (PRP lists, SGL segments) for this queue pair.
    pub desc_pages: usize,
    /// Use SGLs when the controller supports them (by the PRP/SGL policy);
    /// `false` forces PRPs.
    pub sgl: bool,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            depth: 128,
            desc_pages: 64,
            sgl: true,
        }
    }
}

/// An I/O submission/completion queue pair.
#[derive(Debug)]
pub struct QueuePair {
    shared: Arc<Shared>,
    qid: u16,
    sq: SubmissionQueue,
    cq: CompletionQueue,
    mapper: VfioMapper,
    pool: DmaDescPool,
    policy: Policy,
    max_transfer: u64,
    /// SGL data blocks may start at any byte (SGLS = 01b).
    sgl_any_alignment: bool,
    state: DmaState,
    list: DescList,
    next_cid: u16,
}

impl QueuePair {
    pub(crate) fn create(ctrl: &Controller, config: QueueConfig) -> Result<Self, Error> {
        let shared = ctrl.shared().clone();
        if shared.is_disabled() {
            return Err(Error::Disabled);
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
            .clamp(2, shared.cap.max_queue_entries().min(65535) as u16);
        let (sq_db, cq_db) = shared.doorbells(qid);
        let cq = CompletionQueue::new(&shared.space, entries, cq_db)?;
        let sq = SubmissionQueue::new(&shared.space, entries, sq_db)?;
        shared.admin(
            Command::create_cq(qid, entries, cq.iova(), None),
            None,
            "Create I/O Completion Queue",
        )?;
        if let Err(e) = shared.admin(
            Command::create_sq(qid, entries, sq.iova(), qid),
            None,
            "Create I/O Submission Queue",
        ) {
            let _ = shared.admin(
                Command::delete_queue(false, qid),
                None,
                "Delete I/O Completion Queue",
            );
            return Err(e);
        }
        let id = ctrl.identify();
        Ok(Self {
            shared: shared.clone(),
            qid,
            sq,
            cq,
            mapper: VfioMapper::new(shared.space.clone()),
            pool: DmaDescPool::new(&shared.space, config.desc_pages.max(2))?,
            policy: Policy {
                io_sgls: config.sgl && id.sgl_supported(),
                ..Policy::default()
            },
            max_transfer: ctrl.max_transfer(),
            sgl_any_alignment: config.sgl && id.sgls() & 0x3 == 0x1,
            state: DmaState::with_capacity(16),
            list: DescList::new(),
            next_cid: 0,
        })
    }

    /// The queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// Reads blocks starting at `lba` into `buf` (its length is a multiple
    /// of the block size). `buf` may be any memory: a [`DmaBuf`](crate::mem::DmaBuf)'s
    /// slice or registered memory is translated, other memory is mapped for
    /// the duration of the command (one coalesced IOVA range).
    pub fn read(&mut self, ns: &Namespace, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        let seg = HostSeg::from_slice(buf);
        self.rw(false, ns, lba, &[seg], false)
    }

    /// Writes `buf` to blocks starting at `lba`; `fua` forces it to media
    /// before completion.
    pub fn write(&mut self, ns: &Namespace, lba: u64, buf: &[u8], fua: bool) -> Result<(), Error> {
        let seg = HostSeg::from_slice(buf);
        self.rw(true, ns, lba, &[seg], fua)
    }

    /// Reads into several buffers, filled in order (one request).
    pub fn read_vectored(
        &mut self,
        ns: &Namespace,
        lba: u64,
        bufs: &mut [&mut [u8]],
    ) -> Result<(), Error> {
        let segs: Vec<HostSeg> = bufs.iter().map(|b| HostSeg::from_slice(b)).collect();
        self.rw(false, ns, lba, &segs, false)
    }

    /// Writes several buffers, in order (one request).
    pub fn write_vectored(
        &mut self,
        ns: &Namespace,
        lba: u64,
        bufs: &[&[u8]],
        fua: bool,
    ) -> Result<(), Error> {
        let segs: Vec<HostSeg> = bufs.iter().map(|b| HostSeg::from_slice(b)).collect();
        self.rw(true, ns, lba, &segs, fua)
    }

    /// Flushes the volatile write cache of `ns`.
    pub fn flush(&mut self, ns: &Namespace) -> Result<(), Error> {
        self.exec(Command::new(io::FLUSH, ns.id()), "Flush")
            .map(drop)
    }

    /// Writes zeroes to `blocks` blocks at `lba` (split at 65536 blocks per
    /// command).
    pub fn write_zeroes(&mut self, ns: &Namespace, lba: u64, blocks: u64) -> Result<(), Error> {
        self.check_range(ns, lba, blocks)?;
        let mut done = 0;
        while done < blocks {
            let n = (blocks - done).min(1 << 16);
            self.exec(
                Command::write_zeroes(ns.id(), lba + done, n as u32, false),
                "Write Zeroes",
            )?;
            done += n;
        }
        Ok(())
    }

    /// Deallocates (trims) the given `(lba, blocks)` ranges: one Dataset
    /// Management command per 256 ranges. Each range holds at most
    /// `u32::MAX` blocks.
    pub fn deallocate(&mut self, ns: &Namespace, ranges: &[(u64, u64)]) -> Result<(), Error> {
        if ranges.is_empty() {
            return Err(Error::Invalid("no ranges to deallocate".into()));
        }
        for &(lba, blocks) in ranges {
            self.check_range(ns, lba, blocks)?;
            if blocks > u32::MAX as u64 {
                return Err(Error::Invalid(format!(
                    "range of {blocks} blocks is longer than a DSM range"
                )));
            }
        }
        let mut buf = self.shared.space.alloc(4096)?;
        for group in ranges.chunks(256) {
            let b = buf.as_mut_slice();
            for (i, &(lba, blocks)) in group.iter().enumerate() {
                let e = &mut b[16 * i..16 * i + 16];
                e[0..4].fill(0);
                e[4..8].copy_from_slice(&(blocks as u32).to_le_bytes());
                e[8..16].copy_from_slice(&lba.to_le_bytes());
            }
            let mut cmd = Command::deallocate(ns.id(), group.len() as u32);
            cmd.set_data(crate::nvme::spec::DataPtr::Prp {
                prp1: buf.iova(),
                prp2: blk_dma::Iova::new(0),
            });
            self.exec(cmd, "Dataset Management (Deallocate)")?;
        }
        Ok(())
    }

    fn check_range(&self, ns: &Namespace, lba: u64, blocks: u64) -> Result<(), Error> {
        if blocks == 0 {
            return Err(Error::Invalid("zero-length range".into()));
        }
        if lba.checked_add(blocks).is_none_or(|end| end > ns.blocks()) {
            return Err(Error::Invalid(format!(
                "LBA range {lba}+{blocks} past the end of namespace {} ({} blocks)",
                ns.id(),
                ns.blocks()
            )));
        }
        Ok(())
    }

    /// Checks a request and returns its length in blocks.
    fn validate(&self, ns: &Namespace, lba: u64, segs: &[HostSeg]) -> Result<u64, Error> {
        let total: u64 = segs.iter().map(|s| s.len).sum();
        if total == 0 || segs.iter().any(|s| s.len == 0) {
            return Err(Error::Invalid("zero-length transfer".into()));
        }
        if total % ns.block_size() != 0 {
            return Err(Error::Invalid(format!(
                "length {total} is not a multiple of the {}-byte block size",
                ns.block_size()
            )));
        }
        let blocks = total / ns.block_size();
        self.check_range(ns, lba, blocks)?;
        if !self.sgl_any_alignment && segs.iter().any(|s| s.addr.raw() & 3 != 0 || s.len & 3 != 0) {
            return Err(Error::Invalid(
                "buffers must be dword (4-byte) aligned".into(),
            ));
        }
        Ok(blocks)
    }

    fn rw(
        &mut self,
        write: bool,
        ns: &Namespace,
        lba: u64,
        segs: &[HostSeg],
        fua: bool,
    ) -> Result<(), Error> {
        self.validate(ns, lba, segs)?;
        let dir = if write {
            Direction::ToDevice
        } else {
            Direction::FromDevice
        };
        // Split at the controller's maximum transfer (MDTS), in whole blocks.
        let chunk = (self.max_transfer / ns.block_size()).max(1) * ns.block_size();
        let mut lba = lba;
        let mut pieces: Vec<HostSeg> = Vec::with_capacity(segs.len());
        let (mut i, mut off) = (0usize, 0u64);
        while i < segs.len() {
            pieces.clear();
            let mut want = chunk;
            while want > 0 && i < segs.len() {
                let s = segs[i];
                let n = (s.len - off).min(want);
                pieces.push(HostSeg::new(HostAddr::new(s.addr.raw() + off as usize), n));
                want -= n;
                off += n;
                if off == s.len {
                    i += 1;
                    off = 0;
                }
            }
            let bytes = chunk - want;
            let blocks = bytes / ns.block_size();
            let mut cmd = Command::rw(write, ns.id(), lba, blocks as u32, fua);
            let setup = Setup {
                policy: self.policy,
                queue: QueueKind::Io,
                page: self.shared.page,
                pool: &mut self.pool,
                list: &mut self.list,
            };
            let dp = dptr::map_data(&pieces, dir, &self.mapper, &mut self.state, setup)?;
            cmd.set_data(dp);
            let r = self.exec(cmd, if write { "Write" } else { "Read" });
            // The command is complete (or the controller is stopped): the
            // device no longer touches the memory.
            self.list.release(&mut self.pool);
            self.state.unmap(&self.mapper);
            r?;
            lba += blocks;
        }
        Ok(())
    }

    /// Submits `cmd` and polls for its completion, bounded by the I/O
    /// timeout; on timeout the controller is stopped before returning.
    fn exec(&mut self, mut cmd: Command, what: &'static str) -> Result<Completion, Error> {
        if self.shared.is_disabled() {
            return Err(Error::Disabled);
        }
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        cmd.set_cid(cid);
        if !self.sq.push(&cmd) {
            return Err(Error::Invalid("submission queue full".into()));
        }
        self.sq.ring(&*self.shared.regs);
        let timeout: Duration = self.shared.config.io_timeout;
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(c) = self.cq.pop() {
                self.sq.set_head(c.sq_head);
                self.cq.ring(&*self.shared.regs);
                if c.cid != cid {
                    log::warn!("queue {}: stale completion for cid {}", self.qid, c.cid);
                    continue;
                }
                let status = c.status();
                if !status.is_success() {
                    return Err(Error::Command { what, status });
                }
                return Ok(c);
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 {
                if self.shared.csts()?.fatal() {
                    self.shared.stop_after_timeout();
                    return Err(Error::ControllerFatal { during: what });
                }
                if start.elapsed() > timeout {
                    self.shared.stop_after_timeout();
                    return Err(Error::Timeout {
                        what,
                        ms: timeout.as_millis() as u64,
                    });
                }
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        if !self.shared.is_disabled() {
            let s = &self.shared;
            if let Err(e) = s.admin(
                Command::delete_queue(true, self.qid),
                None,
                "Delete I/O Submission Queue",
            ) {
                log::warn!("deleting SQ {}: {e}", self.qid);
            }
            if let Err(e) = s.admin(
                Command::delete_queue(false, self.qid),
                None,
                "Delete I/O Completion Queue",
            ) {
                log::warn!("deleting CQ {}: {e}", self.qid);
            }
        }
        self.shared.free_qid(self.qid);
    }
}
