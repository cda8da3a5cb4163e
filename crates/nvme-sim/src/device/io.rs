//! NVM command set I/O commands on RAM-backed namespaces, and the data
//! pointer (PRP or SGL) handling shared with admin commands.

use std::sync::atomic::Ordering;

use blk_dma::{DmaRange, Iova};
use nvme_vfio::nvme::cmd::{io, Command, Status};
use nvme_vfio::nvme::spec::SglDescriptor;
use nvme_vfio::nvme::walk::{walk_prp, walk_sgl, walk_sgl_bit_bucket, SglPiece, WalkError};

use super::{csc, fail, invalid, ok, sc, specific, Device, Outcome, DATA_TRANSFER_ERROR};
use crate::storage::{Namespace, ZoneError};

/// The status of a write a zone refuses.
fn zone_status(e: ZoneError) -> Status {
    specific(match e {
        ZoneError::InvalidWrite => csc::ZONE_INVALID_WRITE,
        ZoneError::Boundary => csc::ZONE_BOUNDARY_ERROR,
    })
}

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
        let op = cmd.opcode();
        let c = &self.sh.config;
        let supported = match op {
            io::READ | io::WRITE | io::FLUSH => true,
            io::WRITE_ZEROES => c.write_zeroes,
            io::DSM => c.dataset_management,
            _ => false,
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
        match op {
            io::READ => self.read_write(cmd, ns, false),
            io::WRITE => self.read_write(cmd, ns, true),
            io::WRITE_ZEROES => self.write_zeroes(cmd, ns),
            io::DSM => self.dataset_management(cmd, ns),
            // Flush: the store is the medium.
            _ => ok(0),
        }
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
    /// statistics: the bytes moved, or why the command fails.
    fn transfer(&self, cmd: &Command, ns: &Namespace, write: bool) -> Result<u64, Status> {
        let Some((off, len)) = ns.byte_range(cmd.slba(), cmd.nlb() as u64) else {
            return Err(invalid(sc::LBA_OUT_OF_RANGE));
        };
        if self.sh.config.max_transfer().is_some_and(|max| len > max) {
            return Err(invalid(sc::INVALID_FIELD));
        }
        if let Some(z) = &ns.zoned {
            // No reads across zone boundaries (OZCS bit 0 clear), as on
            // QEMU's controller by default.
            if !write && !z.within_one_zone(cmd.slba(), cmd.nlb() as u64) {
                return Err(specific(csc::ZONE_BOUNDARY_ERROR));
            }
        }
        if !self.sh.config.null {
            // The data pointer is checked whole before any data moves.
            let mut data = vec![0u8; len as usize];
            let iommu = &self.sh.iommu;
            if write {
                let ranges = self.ranges(cmd, len, true)?;
                if !iommu.read_ranges(&ranges, &mut data) {
                    return Err(DATA_TRANSFER_ERROR);
                }
                if let Some(z) = &ns.zoned {
                    z.write(cmd.slba(), cmd.nlb() as u64).map_err(zone_status)?;
                }
                ns.write(off, &data);
            } else {
                let pieces = self.read_pieces(cmd, len)?;
                ns.read(off, &mut data);
                // What Bit Buckets discard is left out.
                let mut ranges = Vec::with_capacity(pieces.len());
                let mut kept = Vec::with_capacity(data.len());
                let mut at = 0usize;
                for p in pieces {
                    let n = match p {
                        SglPiece::Data(r) => {
                            ranges.push(r);
                            kept.extend_from_slice(&data[at..at + r.len as usize]);
                            r.len as usize
                        }
                        SglPiece::Discard(n) => n as usize,
                    };
                    at += n;
                }
                if !iommu.write_ranges(&ranges, &kept) {
                    return Err(DATA_TRANSFER_ERROR);
                }
            }
        } else if let Some(z) = ns.zoned.as_ref().filter(|_| write) {
            z.write(cmd.slba(), cmd.nlb() as u64).map_err(zone_status)?;
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
            .and_then(|ns| ns.byte_range(cmd.slba(), cmd.nlb() as u64))
            .map(|(_, len)| len);
        len.and_then(|len| self.ranges(cmd, len, true).ok())
            .and_then(|r| r.first().map(|r| r.addr))
            .unwrap_or(Iova::new(cmd.dptr[0]))
    }

    /// Write Zeroes (with or without Deallocate: both read back as zeroes).
    fn write_zeroes(&self, cmd: &Command, ns: &Namespace) -> Outcome {
        let Some((off, len)) = ns.byte_range(cmd.slba(), cmd.nlb() as u64) else {
            return fail(invalid(sc::LBA_OUT_OF_RANGE));
        };
        if let Some(z) = &ns.zoned {
            if let Err(e) = z.write(cmd.slba(), cmd.nlb() as u64) {
                return fail(zone_status(e));
            }
        }
        if !self.sh.config.null {
            ns.zero(off, len);
        }
        ok(0)
    }

    /// Dataset Management: the Deallocate attribute zeroes the ranges
    /// (Identify Namespace DLFEAT says deallocated blocks read as zeroes);
    /// the other attributes are hints and change nothing.
    fn dataset_management(&self, cmd: &Command, ns: &Namespace) -> Outcome {
        let nr = (cmd.cdw10 & 0xff) as u64 + 1;
        let deallocate = cmd.cdw11 & (1 << 2) != 0;
        if self.sh.config.null {
            return ok(0);
        }
        let list = match self.receive(cmd, nr * 16, true) {
            Ok(l) => l,
            Err(s) => return fail(s),
        };
        if !deallocate {
            return ok(0);
        }
        let mut extents = Vec::with_capacity(nr as usize);
        for r in list.chunks_exact(16) {
            let mut w = [0u8; 4];
            w.copy_from_slice(&r[4..8]);
            let blocks = u32::from_le_bytes(w) as u64;
            let mut q = [0u8; 8];
            q.copy_from_slice(&r[8..16]);
            let slba = u64::from_le_bytes(q);
            match ns.byte_range(slba, blocks) {
                Some(e) => extents.push(e),
                None => return fail(invalid(sc::LBA_OUT_OF_RANGE)),
            }
        }
        for (off, len) in extents {
            ns.zero(off, len);
        }
        ok(0)
    }
}
