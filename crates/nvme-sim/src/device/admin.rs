//! Admin commands: queue management, features, Abort, Asynchronous Event
//! Request and Doorbell Buffer Config. Identify and log pages are in
//! [`info`](super::info).

use std::sync::atomic::Ordering;

use blk_dma::Iova;
use nvme_vfio::nvme::cmd::{admin, feature, Command, Status};
use nvme_vfio::nvme::pi::{BlockFormat, PiFormat, PiType};

use super::queues::{Cq, Sq};
use super::{csc, fail, invalid, ok, sc, specific, Deferred, Device, Outcome, Wait, AER_LIMIT};

/// Features stored as set, beyond those the controller acts on:
/// Arbitration, Power Management, Temperature Threshold, Error Recovery,
/// Interrupt Coalescing, Interrupt Vector Configuration, Asynchronous
/// Event Configuration.
const PLAIN_FEATURES: [u8; 7] = [0x01, 0x02, 0x04, 0x05, 0x08, 0x09, 0x0b];

/// Feature: Temperature Threshold.
const TEMPERATURE_THRESHOLD: u8 = 0x04;
/// Feature: Asynchronous Event Configuration.
const ASYNC_EVENT_CONFIG: u8 = 0x0b;
/// The controller's composite temperature, in kelvin.
pub(crate) const TEMPERATURE_K: u16 = 310;
/// SMART critical warning and AEC bit: temperature.
const WARN_TEMPERATURE: u8 = 1 << 1;
/// AEC bit: Namespace Attribute Notices.
const AEC_NAMESPACE_NOTICES: u32 = 1 << 8;
/// Changed Namespace List entries (the log page's 4 KiB).
const CHANGED_NAMESPACES_MAX: usize = 1024;

/// Default of a plain feature (Temperature Threshold: 343 K).
fn plain_default(fid: u8) -> u32 {
    if fid == 0x04 {
        0x157
    } else {
        0
    }
}

impl Device {
    /// Executes an admin command; `None` if it completes later.
    pub(super) fn admin(&mut self, cmd: &Command) -> Outcome {
        self.sh.stats.admin_commands.fetch_add(1, Ordering::Relaxed);
        // PSDT must be 0 (PRPs) for admin commands on PCIe; no fused
        // operations are supported.
        if cmd.psdt() != 0 || (cmd.cdw0 >> 8) & 0x3 != 0 {
            return fail(invalid(sc::INVALID_FIELD));
        }
        match cmd.opcode() {
            admin::IDENTIFY => self.identify(cmd),
            admin::GET_LOG_PAGE => self.get_log_page(cmd),
            admin::SET_FEATURES => self.set_features(cmd),
            admin::GET_FEATURES => self.get_features(cmd),
            admin::CREATE_CQ => self.create_cq(cmd),
            admin::CREATE_SQ => self.create_sq(cmd),
            admin::DELETE_SQ => self.delete_sq(cmd),
            admin::DELETE_CQ => self.delete_cq(cmd),
            admin::ABORT => self.abort(cmd),
            admin::FORMAT_NVM => self.format_nvm(cmd),
            admin::ASYNC_EVENT => self.async_event(cmd),
            admin::DOORBELL_BUFFER_CONFIG if self.sh.config.doorbell_buffer_config => {
                self.doorbell_buffer_config(cmd)
            }
            _ => fail(invalid(sc::INVALID_OPCODE)),
        }
    }

    /// Checks a Create I/O queue command's common fields: queue ID (against
    /// `granted` and existing queues), size, contiguity, entry size, base.
    fn check_new_queue(
        &self,
        cmd: &Command,
        granted: u16,
        exists: bool,
        es: u8,
        want_es: u8,
    ) -> Result<(u16, u32, Iova), Status> {
        let qid = cmd.cdw10 as u16;
        let size = (cmd.cdw10 >> 16) + 1;
        if qid == 0 || qid > granted || exists {
            return Err(specific(csc::INVALID_QID));
        }
        if size < 2 || size > self.sh.config.max_queue_entries {
            return Err(specific(csc::INVALID_QSIZE));
        }
        // PC = 0 with CAP.CQR = 1.
        if cmd.cdw11 & 1 == 0 {
            return Err(invalid(sc::INVALID_FIELD));
        }
        if es != want_es {
            log::warn!("queue entry size 2^{es} in CC, this controller needs 2^{want_es}");
            return Err(invalid(sc::INVALID_FIELD));
        }
        // PRP1 holds the (page aligned) queue base when PC = 1.
        let base = Iova::new(cmd.dptr[0]);
        if base.raw() == 0 || base.offset_in(self.page.bytes()) != 0 {
            return Err(invalid(0x13));
        }
        Ok((qid, size, base))
    }

    /// Format NVM: to the namespace's own LBA format only (the model's
    /// block and metadata sizes are fixed; any other format is an Invalid
    /// Format), erasing its data, with the metadata settings the command
    /// carries: MSET (CDW10 bit 4, extended LBAs), PI (bits 7:5, the
    /// protection information type, 0 for none; over 3 Invalid Field, and
    /// Invalid Format if the metadata cannot hold the tuple) and PIL (bit
    /// 8, the tuple in the first bytes of the metadata). The guard is the
    /// format's (the namespace's configured one, else 16-bit).
    fn format_nvm(&mut self, cmd: &Command) -> Outcome {
        let lbaf = (cmd.cdw10 & 0xf) | ((cmd.cdw10 >> 12) & 0x3) << 4;
        let mset = cmd.cdw10 & 1 << 4 != 0;
        let pi = ((cmd.cdw10 >> 5) & 0x7) as u8;
        let pil = cmd.cdw10 & 1 << 8 != 0;
        let targets: Vec<&crate::storage::Namespace> = self
            .sh
            .namespaces
            .iter()
            .filter(|n| n.attached() && (cmd.nsid == u32::MAX || n.id == cmd.nsid))
            .collect();
        if targets.is_empty() {
            return fail(invalid(sc::INVALID_NAMESPACE));
        }
        // Format 0 is 512-byte blocks, format 1 4 KiB (see Identify).
        if targets
            .iter()
            .any(|n| lbaf != u32::from(n.block_size == 4096))
        {
            return fail(specific(csc::INVALID_FORMAT));
        }
        if pi > 3 {
            return fail(invalid(sc::INVALID_FIELD));
        }
        if pi != 0
            && targets
                .iter()
                .any(|n| usize::from(n.metadata) < n.guard.tuple_len())
        {
            return fail(specific(csc::INVALID_FORMAT));
        }
        for n in targets {
            n.set_format(BlockFormat {
                data: n.block_size,
                metadata: n.metadata,
                extended: mset && n.metadata > 0,
                pi: PiType::from_dps(pi).map(|kind| PiFormat {
                    kind,
                    guard: n.guard,
                    first: pil,
                }),
            });
            n.erase(0, n.blocks);
        }
        ok(0)
    }

    fn create_cq(&mut self, cmd: &Command) -> Outcome {
        let qid = cmd.cdw10 as u16;
        let exists = self.cqs.get(qid as usize).is_some_and(Option::is_some);
        let (qid, size, base) =
            match self.check_new_queue(cmd, self.granted.1, exists, self.cc.iocqes(), 4) {
                Ok(q) => q,
                Err(s) => return fail(s),
            };
        // IEN with a vector beyond the (notional) MSI-X table: one vector
        // per queue.
        let iv = cmd.cdw11 >> 16;
        if cmd.cdw11 & 2 != 0 && iv > self.sh.config.max_io_queues as u32 {
            return fail(specific(csc::INVALID_VECTOR));
        }
        // Head doorbell writes before the queue existed went nowhere.
        self.sh.regs.clear_doorbell(qid, true);
        let mut cq = Cq::new(base, size);
        cq.vector = (cmd.cdw11 & 2 != 0).then_some(iv as u16);
        self.cqs[qid as usize] = Some(cq);
        log::debug!("created CQ {qid}: {size} entries at {base}");
        ok(0)
    }

    fn create_sq(&mut self, cmd: &Command) -> Outcome {
        let qid = cmd.cdw10 as u16;
        let exists = self.sqs.get(qid as usize).is_some_and(Option::is_some);
        let cqid = (cmd.cdw11 >> 16) as u16;
        if cqid == 0 || !self.cqs.get(cqid as usize).is_some_and(Option::is_some) {
            return fail(specific(csc::CQ_INVALID));
        }
        let (qid, size, base) =
            match self.check_new_queue(cmd, self.granted.0, exists, self.cc.iosqes(), 6) {
                Ok(q) => q,
                Err(s) => return fail(s),
            };
        // Tail doorbell writes before the queue existed went nowhere.
        self.sh.regs.clear_doorbell(qid, false);
        self.sqs[qid as usize] = Some(Sq::new(base, size, cqid));
        if let Some(cq) = self.cqs[cqid as usize].as_mut() {
            cq.sqs += 1;
        }
        self.sq_ids.push(qid);
        log::debug!("created SQ {qid}: {size} entries at {base}, CQ {cqid}");
        ok(0)
    }

    fn delete_sq(&mut self, cmd: &Command) -> Outcome {
        let qid = cmd.cdw10 as u16;
        let Some(sq) = self
            .sqs
            .get(qid as usize)
            .copied()
            .flatten()
            .filter(|_| qid != 0)
        else {
            return fail(specific(csc::INVALID_QID));
        };
        // Commands the controller still holds are aborted, each with a
        // completion, before the queue goes (except those stuck until a
        // reset).
        let (mine, rest): (Vec<Deferred>, Vec<Deferred>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|d| d.sqid == qid && !d.wait.survives());
        self.deferred = rest;
        for d in mine {
            self.post(
                qid,
                d.cmd.cid(),
                Status::new(0, sc::ABORTED_SQ_DELETION, false),
                0,
            );
        }
        self.sqs[qid as usize] = None;
        self.sq_ids.retain(|&q| q != qid);
        if let Some(cq) = self.cqs[sq.cqid as usize].as_mut() {
            cq.sqs = cq.sqs.saturating_sub(1);
        }
        ok(0)
    }

    fn delete_cq(&mut self, cmd: &Command) -> Outcome {
        let qid = cmd.cdw10 as u16;
        let Some(cq) = self
            .cqs
            .get(qid as usize)
            .and_then(Option::as_ref)
            .filter(|_| qid != 0)
        else {
            return fail(specific(csc::INVALID_QID));
        };
        if cq.sqs != 0 {
            return fail(specific(csc::INVALID_QUEUE_DELETION));
        }
        self.cqs[qid as usize] = None;
        ok(0)
    }

    fn has_io_queues(&self) -> bool {
        self.sq_ids.iter().any(|&q| q != 0) || self.cqs.iter().skip(1).any(Option::is_some)
    }

    fn set_features(&mut self, cmd: &Command) -> Outcome {
        let fid = cmd.cdw10 as u8;
        if cmd.cdw10 >> 31 != 0 {
            return fail(specific(csc::NOT_SAVEABLE));
        }
        let v = cmd.cdw11;
        match fid {
            feature::NUMBER_OF_QUEUES => {
                let (nsqr, ncqr) = (v & 0xffff, v >> 16);
                if nsqr == 0xffff || ncqr == 0xffff {
                    return fail(invalid(sc::INVALID_FIELD));
                }
                if self.has_io_queues() {
                    return fail(invalid(sc::SEQUENCE_ERROR));
                }
                let max = self.sh.config.max_io_queues as u32;
                self.granted = ((nsqr + 1).min(max) as u16, (ncqr + 1).min(max) as u16);
                ok(self.queues_result())
            }
            feature::VOLATILE_WRITE_CACHE => {
                if !self.sh.config.volatile_write_cache {
                    return fail(invalid(sc::INVALID_FIELD));
                }
                self.vwc = v & 1 != 0;
                ok(0)
            }
            f if PLAIN_FEATURES.contains(&f) => {
                self.features.insert(f, v);
                if f == TEMPERATURE_THRESHOLD || f == ASYNC_EVENT_CONFIG {
                    self.check_temperature();
                }
                ok(0)
            }
            _ => fail(invalid(sc::INVALID_FIELD)),
        }
    }

    /// Number of Queues as dword 0 reports it: NSQA (15:0), NCQA (31:16),
    /// both 0-based.
    fn queues_result(&self) -> u32 {
        (self.granted.0 as u32 - 1) | (self.granted.1 as u32 - 1) << 16
    }

    fn get_features(&mut self, cmd: &Command) -> Outcome {
        let fid = cmd.cdw10 as u8;
        let sel = (cmd.cdw10 >> 8) & 0x7;
        let known = matches!(
            fid,
            feature::NUMBER_OF_QUEUES | feature::VOLATILE_WRITE_CACHE
        ) || PLAIN_FEATURES.contains(&fid);
        if !known || (fid == feature::VOLATILE_WRITE_CACHE && !self.sh.config.volatile_write_cache)
        {
            return fail(invalid(sc::INVALID_FIELD));
        }
        let max = self.sh.config.max_io_queues as u32 - 1;
        match sel {
            // Current.
            0 => ok(match fid {
                feature::NUMBER_OF_QUEUES => self.queues_result(),
                feature::VOLATILE_WRITE_CACHE => self.vwc as u32,
                f => self
                    .features
                    .get(&f)
                    .copied()
                    .unwrap_or_else(|| plain_default(f)),
            }),
            // Default, and saved (nothing is saveable: saved = default).
            1 | 2 => ok(match fid {
                feature::NUMBER_OF_QUEUES => max | max << 16,
                feature::VOLATILE_WRITE_CACHE => 1,
                f => plain_default(f),
            }),
            // Supported capabilities: changeable, not saveable.
            3 => ok(0b100),
            _ => fail(invalid(sc::INVALID_FIELD)),
        }
    }

    /// Abort: a command the controller still holds (dropped, delayed or
    /// held back by a fault, or an outstanding event request) completes
    /// with Command Abort Requested and the Abort reports dword 0 bit 0 =
    /// 0; otherwise (already completed, never seen, or stuck until a reset)
    /// bit 0 = 1.
    fn abort(&mut self, cmd: &Command) -> Outcome {
        let (sqid, cid) = (cmd.cdw10 as u16, (cmd.cdw10 >> 16) as u16);
        let Some(i) = self
            .deferred
            .iter()
            .position(|d| d.sqid == sqid && d.cmd.cid() == cid && !d.wait.survives())
        else {
            log::debug!("abort of cid {cid} on SQ {sqid}: not found");
            return ok(1);
        };
        let d = self.deferred.remove(i);
        self.post(
            sqid,
            d.cmd.cid(),
            Status::new(0, sc::ABORT_REQUESTED, false),
            0,
        );
        ok(0)
    }

    /// Asynchronous Event Request: held until a reset (this controller
    /// reports no events).
    /// The temperature against the over-temperature threshold (composite
    /// sensor): crossing it sets the SMART critical warning and, if
    /// enabled in the Asynchronous Event Configuration, reports a
    /// SMART/Health event (once, until the temperature is back under).
    pub(super) fn check_temperature(&mut self) {
        let th = *self.features.get(&TEMPERATURE_THRESHOLD).unwrap_or(&0x157);
        // THSEL 0 (over), TMPSEL 0 (composite) only.
        let over = th >> 20 & 3 == 0 && th >> 16 & 0xf == 0 && TEMPERATURE_K > (th & 0xffff) as u16;
        if !over {
            self.critical_warning &= !WARN_TEMPERATURE;
            return;
        }
        if self.critical_warning & WARN_TEMPERATURE != 0 {
            return;
        }
        self.critical_warning |= WARN_TEMPERATURE;
        let aec = *self.features.get(&ASYNC_EVENT_CONFIG).unwrap_or(&0);
        if aec as u8 & WARN_TEMPERATURE != 0 {
            // SMART/Health status, temperature threshold, log page 02h.
            self.report_event(1 | 1 << 8 | 0x02 << 16);
        }
    }

    /// Completes the oldest outstanding Asynchronous Event Request with
    /// `result` (dword 0), or keeps the event until one comes.
    pub(super) fn report_event(&mut self, result: u32) {
        match self.deferred.iter().position(|d| d.wait == Wait::Event) {
            Some(i) => {
                let d = self.deferred.remove(i);
                self.post(0, d.cmd.cid(), Status::SUCCESS, u64::from(result));
            }
            None => self.pending_events.push(result),
        }
    }

    /// Namespace `nsid` was attached or detached: it goes into the Changed
    /// Namespace List, and a Namespace Attribute Changed notice is
    /// reported if the host enabled those and none is reported and not yet
    /// cleared (by reading the log page).
    pub(crate) fn namespace_changed(&mut self, nsid: u32) {
        let list = &mut self.changed_namespaces;
        if !list.contains(&nsid) && list.first() != Some(&u32::MAX) {
            if list.len() == CHANGED_NAMESPACES_MAX {
                // More changes than the log holds: FFFFFFFFh alone.
                *list = vec![u32::MAX];
            } else {
                list.push(nsid);
            }
        }
        let aec = self.features.get(&ASYNC_EVENT_CONFIG).copied().unwrap_or(0);
        if aec & AEC_NAMESPACE_NOTICES == 0 || self.namespace_notice_masked {
            return;
        }
        self.namespace_notice_masked = true;
        // Notice, Namespace Attribute Changed, log page 04h.
        let event = 2 | super::info::CHANGED_NAMESPACE_LOG << 16;
        if self.active() {
            self.report_event(event);
        } else {
            // No completion can be posted now: the next request takes it.
            self.pending_events.push(event);
        }
    }

    /// The Changed Namespace List log page was read (without Retain
    /// Asynchronous Event): it starts empty, and the notice is unmasked.
    pub(super) fn changed_namespaces_read(&mut self) {
        self.changed_namespaces.clear();
        self.namespace_notice_masked = false;
    }

    fn async_event(&mut self, cmd: &Command) -> Outcome {
        if !self.pending_events.is_empty() {
            return ok(self.pending_events.remove(0));
        }
        let n = self
            .deferred
            .iter()
            .filter(|d| d.wait == Wait::Event)
            .count();
        if n >= AER_LIMIT {
            return fail(specific(csc::AER_LIMIT));
        }
        self.deferred.push(Deferred {
            sqid: 0,
            cmd: *cmd,
            wait: Wait::Event,
        });
        None
    }

    /// Doorbell Buffer Config: PRP1 is the shadow doorbell buffer, PRP2 the
    /// EventIdx buffer, both page aligned. From now on I/O queues (not the
    /// admin queue) take their doorbell values from the shadow buffer, and
    /// the controller writes EventIdx entries to ask for register writes.
    fn doorbell_buffer_config(&mut self, cmd: &Command) -> Outcome {
        let (db, ei) = (Iova::new(cmd.dptr[0]), Iova::new(cmd.dptr[1]));
        let ps = self.page.bytes();
        if db.raw() == 0 || ei.raw() == 0 || db.offset_in(ps) != 0 || ei.offset_in(ps) != 0 {
            return fail(invalid(sc::INVALID_FIELD));
        }
        self.shadow = Some((db, ei));
        // Start both buffers from the current register values, so queues
        // created before this command carry on where they were.
        let stride = self.sh.config.stride();
        for qid in 1..self.sqs.len() as u16 {
            let pairs = [
                (
                    false,
                    self.sqs[qid as usize].is_some(),
                    self.sh.regs.sq_tail(qid),
                ),
                (
                    true,
                    self.cqs[qid as usize].is_some(),
                    self.sh.regs.cq_head(qid),
                ),
            ];
            for (cq, exists, v) in pairs {
                if exists {
                    let off = (2 * qid as u64 + cq as u64) * stride;
                    // Atomic, like every access to these slots (the host's
                    // queue pairs may be using them).
                    let order = std::sync::atomic::Ordering::Release;
                    if !self.sh.iommu.store_u32(db.wrapping_add(off), v, order)
                        || !self.sh.iommu.store_u32(ei.wrapping_add(off), v, order)
                    {
                        self.shadow = None;
                        return fail(super::DATA_TRANSFER_ERROR);
                    }
                }
            }
        }
        log::debug!("shadow doorbells at {db}, EventIdx at {ei}");
        ok(0)
    }
}
