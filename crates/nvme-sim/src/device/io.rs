//! NVM command set I/O commands on RAM-backed namespaces, and the data
//! pointer (PRP or SGL) handling shared with admin commands.

use std::sync::atomic::Ordering;

use blk_dma::{DmaRange, Iova};
use nvme_vfio::nvme::cmd::{io, Command, Status};
use nvme_vfio::nvme::pi::{Checks, PiType};
use nvme_vfio::nvme::spec::SglDescriptor;
use nvme_vfio::nvme::walk::{walk_prp, walk_sgl, walk_sgl_bit_bucket, SglPiece, WalkError};

use nvme_vfio::nvme::nvm::{
    CopyRange, DsmAttributes, DsmRange, OptionalCommand, COPY_RANGE_LEN, DSM_RANGE_LEN,
};

use super::protection::{Protection, INVALID_PROTECTION_INFORMATION};
use super::zoned::zone_status;
use super::{csc, fail, invalid, ok, sc, specific, Device, Outcome, DATA_TRANSFER_ERROR};
use crate::storage::Namespace;

/// Unrecovered Read Error (media and data integrity), not worth retrying.
const UNRECOVERED_READ_ERROR: Status = Status::new(2, 0x81, true);
/// Compare Failure (media and data integrity).
const COMPARE_FAILURE: Status = Status::new(2, 0x85, true);
/// The most a Copy moves, whatever the copy limits say.
const MAX_COPY_BYTES: u64 = 256 << 20;

/// The status a controller reports for a malformed or unreachable data
/// pointer: malformed ones are not worth retrying, failed transfers may be.
fn walk_status(e: WalkError) -> Status {
    let code = e.status_code();
    Status::new(0, code, code != sc::DATA_TRANSFER)
}

/// Whether the command is part of a fused operation (none are supported).
fn fused(cmd: &Command) -> bool {
    (cmd.cdw0 >> 8) & 0x3 != 0
}

impl Device {
    /// Namespace `nsid`, if it is attached.
    pub(super) fn namespace(&self, nsid: u32) -> Option<&Namespace> {
        (self.sh.namespaces.iter()).find(|n| n.id == nsid && n.attached())
    }

    /// Whether the I/O command sets beyond NVM are enabled: the controller
    /// has them and was enabled with CC.CSS = 110b.
    pub(super) fn command_sets_enabled(&self) -> bool {
        self.sh.config.io_command_sets && self.cc.css() == 0b110
    }

    /// Namespace `nsid`, if it exists and its command set is enabled (a
    /// zoned namespace is active only with CC.CSS = 110b).
    pub(super) fn active_namespace(&self, nsid: u32) -> Option<&Namespace> {
        self.namespace(nsid)
            .filter(|ns| ns.zoned.is_none() || self.command_sets_enabled())
    }

    /// The host memory ranges `cmd`'s data pointer describes for `len`
    /// bytes. SGLs are accepted for I/O commands (`io`) when configured;
    /// admin commands use PRPs, as on PCIe.
    pub(super) fn ranges(
        &self,
        cmd: &Command,
        len: u64,
        io: bool,
    ) -> Result<Vec<DmaRange>, Status> {
        let mem = &*self.sh.iommu;
        let [d0, d1] = cmd.dptr;
        match cmd.psdt() {
            0 => walk_prp(Iova::new(d0), Iova::new(d1), len, self.page, mem),
            1 | 2 if io && self.sh.config.sgl => {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&d0.to_le_bytes());
                b[8..].copy_from_slice(&d1.to_le_bytes());
                walk_sgl(SglDescriptor::from_bytes(b), len, mem)
            }
            _ => return Err(invalid(sc::INVALID_FIELD)),
        }
        .map_err(walk_status)
    }

    /// What a Read's data pointer describes for `len` bytes: host memory
    /// ranges and, with Bit Bucket support, bytes to discard. (Only reads
    /// may discard: elsewhere a Bit Bucket is an invalid descriptor type,
    /// as [`ranges`](Self::ranges) has it.)
    fn read_pieces(&self, cmd: &Command, len: u64) -> Result<Vec<SglPiece>, Status> {
        let c = &self.sh.config;
        if !(matches!(cmd.psdt(), 1 | 2) && c.sgl && c.sgl_bit_bucket) {
            let ranges = self.ranges(cmd, len, true)?;
            return Ok(ranges.into_iter().map(SglPiece::Data).collect());
        }
        let [d0, d1] = cmd.dptr;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&d0.to_le_bytes());
        b[8..].copy_from_slice(&d1.to_le_bytes());
        walk_sgl_bit_bucket(SglDescriptor::from_bytes(b), len, &*self.sh.iommu).map_err(walk_status)
    }

    /// Transfers `data` to the host through `cmd`'s data pointer.
    pub(super) fn send(&self, cmd: &Command, data: &[u8], io: bool) -> Outcome {
        let ranges = match self.ranges(cmd, data.len() as u64, io) {
            Ok(r) => r,
            Err(s) => return fail(s),
        };
        if !self.sh.iommu.write_ranges(&ranges, data) {
            return fail(DATA_TRANSFER_ERROR);
        }
        ok(0)
    }

    /// Transfers `len` bytes from the host through `cmd`'s data pointer.
    pub(super) fn receive(&self, cmd: &Command, len: u64, io: bool) -> Result<Vec<u8>, Status> {
        let ranges = self.ranges(cmd, len, io)?;
        let mut buf = vec![0u8; len as usize];
        if !self.sh.iommu.read_ranges(&ranges, &mut buf) {
            return Err(DATA_TRANSFER_ERROR);
        }
        Ok(buf)
    }

    /// Executes an I/O command.
    pub(super) fn io(&self, cmd: &Command) -> Outcome {
        self.sh.stats.io_commands.fetch_add(1, Ordering::Relaxed);
        self.media_lba.set(None);
        let op = cmd.opcode();
        let supported = match op {
            // The zoned command set's, on zoned namespaces only (checked
            // with the namespace).
            io::READ | io::WRITE | io::FLUSH => true,
            io::ZONE_APPEND | io::ZONE_MGMT_SEND | io::ZONE_MGMT_RECV => true,
            _ => OptionalCommand::ALL
                .iter()
                .any(|&c| c.opcode() == op && self.executes(c)),
        };
        if !supported {
            return fail(invalid(sc::INVALID_OPCODE));
        }
        if fused(cmd) {
            return fail(invalid(sc::INVALID_FIELD));
        }
        // Flush of every namespace (Identify VWC bits 2:1 say it is
        // supported).
        if op == io::FLUSH && cmd.nsid == u32::MAX {
            return ok(0);
        }
        let Some(ns) = self.active_namespace(cmd.nsid) else {
            return fail(invalid(sc::INVALID_NAMESPACE));
        };
        let done = match op {
            io::READ => return self.read_write(cmd, ns, false),
            io::WRITE => return self.read_write(cmd, ns, true),
            io::WRITE_ZEROES => return self.write_zeroes(cmd, ns),
            io::DSM => return self.dataset_management(cmd, ns),
            io::ZONE_APPEND => return self.zone_append(cmd, ns),
            io::ZONE_MGMT_SEND => return self.zone_mgmt_send(cmd, ns),
            io::ZONE_MGMT_RECV => return self.zone_mgmt_recv(cmd, ns),
            io::COMPARE => self.compare(cmd, ns),
            io::VERIFY => self.verify(cmd, ns),
            io::WRITE_UNCORRECTABLE => self.write_uncorrectable(cmd, ns),
            io::COPY => self.copy(cmd, ns),
            // Flush: the store is the medium.
            _ => Ok(()),
        };
        match done {
            Ok(()) => ok(0),
            Err(s) => fail(s),
        }
    }

    /// Unrecovered Read Error if a block of `[lba, lba + n)` is marked
    /// uncorrectable (the first one is the error's LBA).
    fn readable(&self, ns: &Namespace, lba: u64, n: u64) -> Result<(), Status> {
        match ns.first_uncorrectable(lba, n) {
            Some(bad) => {
                self.media_lba.set(Some(bad));
                Err(UNRECOVERED_READ_ERROR)
            }
            None => Ok(()),
        }
    }

    /// The byte range of `n` blocks at `lba`, or LBA Out of Range.
    fn blocks(ns: &Namespace, lba: u64, n: u64) -> Result<(u64, u64), Status> {
        ns.byte_range(lba, n).ok_or(invalid(sc::LBA_OUT_OF_RANGE))
    }

    /// Compare: the data sent against the blocks', and the metadata sent
    /// against theirs (without the PI tuple, which is checked as PRCHK
    /// says instead); Compare Failure at the first block that differs.
    /// PRACT on a namespace with protection information is Invalid
    /// Protection Information, as on QEMU's controller.
    fn compare(&self, cmd: &Command, ns: &Namespace) -> Result<(), Status> {
        let (lba, n) = (cmd.slba(), u64::from(cmd.nlb()));
        Self::blocks(ns, lba, n)?;
        let p = Protection::of(cmd, ns, lba)?;
        if p.pract {
            return Err(INVALID_PROTECTION_INFORMATION);
        }
        let len = p.data_len(n);
        if self.sh.config.max_transfer().is_some_and(|max| len > max) {
            return Err(invalid(sc::INVALID_FIELD));
        }
        if let Some(z) = &ns.zoned {
            if !z.within_one_zone(lba, n) {
                return Err(specific(csc::ZONE_BOUNDARY_ERROR));
            }
        }
        if self.sh.config.null {
            return Ok(());
        }
        let (sent, sent_meta) = self.take_blocks(cmd, &p, n)?;
        self.readable(ns, lba, n)?;
        let (stored, stored_meta) = ns.load(lba, n);
        self.check_tuples(&p, lba, &stored, &stored_meta)?;
        let bs = ns.block_size as usize;
        let ms = usize::from(ns.metadata);
        // The PI tuple's bytes in each block's metadata are left out.
        let tuple = p.format.pi.map_or(0..0, |pi| {
            let at = p.format.pi_offset();
            at..at + pi.guard.tuple_len()
        });
        let differs = |i: usize| {
            if sent[i * bs..(i + 1) * bs] != stored[i * bs..(i + 1) * bs] {
                return true;
            }
            let (a, b) = (
                &sent_meta[i * ms..(i + 1) * ms],
                &stored_meta[i * ms..(i + 1) * ms],
            );
            (0..ms).any(|j| !tuple.contains(&j) && a[j] != b[j])
        };
        match (0..n as usize).position(differs) {
            Some(i) => {
                self.media_lba.set(Some(lba + i as u64));
                Err(COMPARE_FAILURE)
            }
            None => Ok(()),
        }
    }

    /// Verify: the blocks can be read (none is uncorrectable), within the
    /// Verify size limit, and their PI tuples pass the PRCHK checks.
    fn verify(&self, cmd: &Command, ns: &Namespace) -> Result<(), Status> {
        let (lba, n) = (cmd.slba(), u64::from(cmd.nlb()));
        let (_, len) = Self::blocks(ns, lba, n)?;
        let c = &self.sh.config;
        if c.size_limit(c.nvm_limits.vsl).is_some_and(|max| len > max) {
            return Err(invalid(sc::INVALID_FIELD));
        }
        let p = Protection::of(cmd, ns, lba)?;
        self.readable(ns, lba, n)?;
        if p.format.pi.is_some() && p.checks != Checks::NONE && !c.null {
            let (data, meta) = ns.load(lba, n);
            self.check_tuples(&p, lba, &data, &meta)?;
        }
        Ok(())
    }

    /// Write Uncorrectable: marks the blocks, within the Write
    /// Uncorrectable size limit (and a zone's write pointer).
    fn write_uncorrectable(&self, cmd: &Command, ns: &Namespace) -> Result<(), Status> {
        let (lba, n) = (cmd.slba(), u64::from(cmd.nlb()));
        let (_, len) = Self::blocks(ns, lba, n)?;
        let c = &self.sh.config;
        if c.size_limit(c.nvm_limits.wusl).is_some_and(|max| len > max) {
            return Err(invalid(sc::INVALID_FIELD));
        }
        if let Some(z) = &ns.zoned {
            z.write(lba, n).map_err(zone_status)?;
        }
        ns.mark_uncorrectable(lba, n);
        Ok(())
    }

    /// Copy: source range descriptors of format 0, within the namespace's
    /// copy limits (Command Size Limit Exceeded past them, and past 256 MiB
    /// in all); every source is read before the destination is written, so
    /// overlapping ranges copy what the sources held. Blocks' metadata is
    /// copied with their data as it is: no protection information is
    /// checked or generated (this model ignores Copy's PRINFO fields).
    fn copy(&self, cmd: &Command, ns: &Namespace) -> Result<(), Status> {
        let nr = (cmd.cdw12 & 0xff) as usize + 1;
        let format = (cmd.cdw12 >> 8) & 0xf;
        if format != 0 {
            return Err(invalid(sc::INVALID_FIELD));
        }
        let limits = self.sh.config.copy_limits;
        if nr > limits.max_ranges() {
            return Err(specific(csc::COMMAND_SIZE_LIMIT_EXCEEDED));
        }
        let list = self.receive(cmd, (nr * COPY_RANGE_LEN) as u64, true)?;
        let mut sources = Vec::with_capacity(nr);
        let mut total = 0u64;
        for d in list.chunks_exact(COPY_RANGE_LEN) {
            let Ok(d) = <&[u8; COPY_RANGE_LEN]>::try_from(d) else {
                return Err(invalid(sc::INVALID_FIELD));
            };
            let r = CopyRange::from_bytes(d);
            let n = u64::from(r.blocks);
            if n > limits.max_range_blocks() {
                return Err(specific(csc::COMMAND_SIZE_LIMIT_EXCEEDED));
            }
            Self::blocks(ns, r.lba, n)?;
            total += n;
            sources.push(r);
        }
        if limits.max_blocks().is_some_and(|max| total > max) {
            return Err(specific(csc::COMMAND_SIZE_LIMIT_EXCEEDED));
        }
        let dest = cmd.slba();
        let (_, len) = Self::blocks(ns, dest, total)?;
        // What one command may move at most here (the copy is held in
        // memory whole), as a Read or Write of 65536 4 KiB blocks.
        if len > MAX_COPY_BYTES {
            return Err(specific(csc::COMMAND_SIZE_LIMIT_EXCEEDED));
        }
        if self.sh.config.null {
            return Ok(());
        }
        let mut data = Vec::with_capacity(len as usize);
        let mut meta = Vec::new();
        for r in &sources {
            let n = u64::from(r.blocks);
            self.readable(ns, r.lba, n)?;
            let (d, m) = ns.load(r.lba, n);
            data.extend_from_slice(&d);
            meta.extend_from_slice(&m);
        }
        if let Some(z) = &ns.zoned {
            z.write(dest, total).map_err(zone_status)?;
        }
        ns.store(dest, &data, &meta);
        Ok(())
    }

    /// Read or Write (FUA accepted: every write is durable here).
    fn read_write(&self, cmd: &Command, ns: &Namespace, write: bool) -> Outcome {
        let len = match self.transfer(cmd, ns, write) {
            Ok(len) => len,
            Err(s) => return fail(s),
        };
        let stats = &self.sh.stats;
        let (cmds, bytes) = if write {
            (&stats.write_commands, &stats.bytes_written)
        } else {
            (&stats.read_commands, &stats.bytes_read)
        };
        cmds.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(len, Ordering::Relaxed);
        ok(0)
    }

    /// The checks of a Read or Write and its data transfer, without the
    /// statistics: the bytes moved through the data pointer, or why the
    /// command fails. Metadata moves too, and protection information is
    /// generated, checked or stripped (see the `protection` module).
    fn transfer(&self, cmd: &Command, ns: &Namespace, write: bool) -> Result<u64, Status> {
        let (lba, n) = (cmd.slba(), u64::from(cmd.nlb()));
        if !ns.contains(lba, n) {
            return Err(invalid(sc::LBA_OUT_OF_RANGE));
        }
        let p = Protection::of(cmd, ns, lba)?;
        // MDTS counts the metadata when it is interleaved, as QEMU does.
        let len = p.data_len(n);
        if self.sh.config.max_transfer().is_some_and(|max| len > max) {
            return Err(invalid(sc::INVALID_FIELD));
        }
        if let Some(z) = ns.zoned.as_ref().filter(|_| !write) {
            // Within one zone (no reads across zone boundaries: OZCS bit 0
            // clear, as on QEMU's controller by default), not an Offline
            // one.
            z.read(lba, n).map_err(zone_status)?;
        }
        if !self.sh.config.null {
            // The data and metadata pointers are checked whole before any
            // data moves.
            let iommu = &self.sh.iommu;
            if write {
                let (mut data, mut meta) = self.take_blocks(cmd, &p, n)?;
                self.protect_write(&p, lba, &mut data, &mut meta)?;
                if let Some(z) = &ns.zoned {
                    z.write(lba, n).map_err(zone_status)?;
                }
                ns.store(lba, &data, &meta);
            } else {
                let pieces = self.read_pieces(cmd, len)?;
                let meta_ranges = self.meta_ranges(cmd, &p, p.meta_len(n))?;
                self.readable(ns, lba, n)?;
                let (data, meta) = ns.load(lba, n);
                self.check_tuples(&p, lba, &data, &meta)?;
                let (data, meta) = p.to_host(data, meta);
                // What Bit Buckets discard is left out.
                let mut ranges = Vec::with_capacity(pieces.len());
                let mut kept = Vec::with_capacity(data.len());
                let mut at = 0usize;
                for piece in pieces {
                    let n = match piece {
                        SglPiece::Data(r) => {
                            ranges.push(r);
                            kept.extend_from_slice(&data[at..at + r.len as usize]);
                            r.len as usize
                        }
                        SglPiece::Discard(n) => n as usize,
                    };
                    at += n;
                }
                if !iommu.write_ranges(&ranges, &kept) || !iommu.write_ranges(&meta_ranges, &meta) {
                    return Err(DATA_TRANSFER_ERROR);
                }
            }
        } else if let Some(z) = ns.zoned.as_ref().filter(|_| write) {
            z.write(lba, n).map_err(zone_status)?;
        }
        Ok(len)
    }

    /// Moves the data of Read or Write `cmd` (from an I/O queue) again,
    /// without counting it: the repeated transfer of a duplicate
    /// completion. Failures are only logged (the IOMMU counts refusals).
    pub(super) fn transfer_again(&self, cmd: &Command) {
        let Some(ns) = self.namespace(cmd.nsid) else {
            return;
        };
        if let Err(s) = self.transfer(cmd, ns, cmd.opcode() == io::WRITE) {
            log::debug!("repeated transfer of cid {} failed: {s}", cmd.cid());
        }
    }

    /// The data transfer of Read or Write `cmd` (from an I/O queue) whose
    /// completion was posted before: executes it now, counted as the
    /// command's own. Failures are only logged.
    pub(super) fn late_transfer(&self, cmd: &Command) {
        if let Some((s, _)) = self.io(cmd).filter(|(s, _)| !s.is_success()) {
            log::debug!("late transfer of cid {} failed: {s}", cmd.cid());
        }
    }

    /// The first host address of Read or Write `cmd`'s data (PRP1 if the
    /// data pointer cannot be walked).
    pub(super) fn first_data_address(&self, cmd: &Command) -> Iova {
        let len = self
            .namespace(cmd.nsid)
            .filter(|ns| ns.contains(cmd.slba(), cmd.nlb() as u64))
            .and_then(|ns| Protection::of(cmd, ns, cmd.slba()).ok())
            .map(|p| p.data_len(cmd.nlb() as u64));
        len.and_then(|len| self.ranges(cmd, len, true).ok())
            .and_then(|r| r.first().map(|r| r.addr))
            .unwrap_or(Iova::new(cmd.dptr[0]))
    }

    /// Write Zeroes (with or without Deallocate: both read back as zeroes,
    /// with all-FFh metadata). On a namespace with protection information
    /// PRCHK bits are Invalid Protection Information (as on QEMU's
    /// controller), and PRACT writes generated tuples for the zeroes (the
    /// rest of the metadata zeroes too).
    fn write_zeroes(&self, cmd: &Command, ns: &Namespace) -> Outcome {
        match self.zeroes(cmd, ns) {
            Ok(()) => ok(0),
            Err(s) => fail(s),
        }
    }

    fn zeroes(&self, cmd: &Command, ns: &Namespace) -> Result<(), Status> {
        let (lba, n) = (cmd.slba(), u64::from(cmd.nlb()));
        let (_, len) = Self::blocks(ns, lba, n)?;
        let p = Protection::of(cmd, ns, lba)?;
        if p.format.pi.is_some() && p.checks != Checks::NONE {
            return Err(INVALID_PROTECTION_INFORMATION);
        }
        if let Some(z) = &ns.zoned {
            z.write(lba, n).map_err(zone_status)?;
        }
        let c = &self.sh.config;
        if c.size_limit(c.nvm_limits.wzsl).is_some_and(|max| len > max) {
            return Err(invalid(sc::INVALID_FIELD));
        }
        if c.null {
            return Ok(());
        }
        if p.format.pi.is_none() || !p.pract {
            ns.erase(lba, n);
            return Ok(());
        }
        // Generated tuples, a bounded number of blocks at a time.
        const STEP: u64 = 256;
        let (bs, ms) = (ns.block_size as usize, usize::from(ns.metadata));
        let mut done = 0;
        while done < n {
            let k = (n - done).min(STEP);
            let mut data = vec![0u8; k as usize * bs];
            let mut meta = vec![0u8; k as usize * ms];
            let mut step = p;
            if p.format.pi.is_some_and(|pi| pi.kind != PiType::Type3) {
                step.tags.reference = p.tags.reference.wrapping_add(done);
            }
            self.protect_write(&step, lba + done, &mut data, &mut meta)?;
            ns.store(lba + done, &data, &meta);
            done += k;
        }
        Ok(())
    }

    /// Dataset Management: the Deallocate attribute zeroes the ranges
    /// (Identify Namespace DLFEAT says deallocated blocks read as zeroes)
    /// and clears their uncorrectable marks, within the deallocation
    /// limits (DMRL, DMRSL, DMSL: Command Size Limit Exceeded past them);
    /// the other attributes and the ranges' context attributes are hints
    /// and change nothing. A range outside the namespace is LBA Out of
    /// Range, and nothing is deallocated.
    fn dataset_management(&self, cmd: &Command, ns: &Namespace) -> Outcome {
        let nr = (cmd.cdw10 & 0xff) as u64 + 1;
        let attributes = DsmAttributes::from_cdw11(cmd.cdw11);
        let limits = self.sh.config.nvm_limits;
        let too_many = attributes.deallocate && limits.dmrl != 0 && nr > u64::from(limits.dmrl);
        if too_many {
            return fail(specific(csc::COMMAND_SIZE_LIMIT_EXCEEDED));
        }
        if self.sh.config.null {
            return ok(0);
        }
        let list = match self.receive(cmd, nr * DSM_RANGE_LEN as u64, true) {
            Ok(l) => l,
            Err(s) => return fail(s),
        };
        let mut extents = Vec::with_capacity(nr as usize);
        let mut total = 0u64;
        for r in list.chunks_exact(DSM_RANGE_LEN) {
            let Ok(r) = <&[u8; DSM_RANGE_LEN]>::try_from(r) else {
                return fail(invalid(sc::INVALID_FIELD));
            };
            let r = DsmRange::from_bytes(r);
            let blocks = u64::from(r.blocks);
            if attributes.deallocate && limits.dmrsl != 0 && r.blocks > limits.dmrsl {
                return fail(specific(csc::COMMAND_SIZE_LIMIT_EXCEEDED));
            }
            total += blocks;
            match ns.byte_range(r.lba, blocks) {
                Some(e) => extents.push((r.lba, blocks, e)),
                None => return fail(invalid(sc::LBA_OUT_OF_RANGE)),
            }
        }
        if attributes.deallocate && limits.dmsl != 0 && total > limits.dmsl {
            return fail(specific(csc::COMMAND_SIZE_LIMIT_EXCEEDED));
        }
        if !attributes.deallocate {
            return ok(0);
        }
        for (lba, blocks, _) in extents {
            ns.erase(lba, blocks);
        }
        ok(0)
    }
}
