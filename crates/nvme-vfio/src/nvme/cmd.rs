//! Submission and completion queue entries (NVMe Base 2.0, 4.2 and 4.6);
//! the completion status is decoded in [`status`](super::status).

use core::fmt;

use blk_dma::Iova;

use super::spec::{DataPtr, Psdt};

pub use super::status::{CommandKind, Status};

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O Submission Queue.
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue.
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue.
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue.
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0a;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0c;
    /// Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7c;
    /// Format NVM.
    pub const FORMAT_NVM: u8 = 0x80;
}

/// NVM command set I/O opcodes.
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
    /// Verify.
    pub const VERIFY: u8 = 0x0c;
    /// Copy.
    pub const COPY: u8 = 0x19;
    /// Zone Management Send (Zoned Namespace command set).
    pub const ZONE_MGMT_SEND: u8 = 0x79;
    /// Zone Management Receive (Zoned Namespace command set).
    pub const ZONE_MGMT_RECV: u8 = 0x7a;
    /// Zone Append (Zoned Namespace command set).
    pub const ZONE_APPEND: u8 = 0x7d;
}

/// Identify CNS values.
pub mod cns {
    /// Identify Namespace.
    pub const NAMESPACE: u8 = 0x00;
    /// Identify Controller.
    pub const CONTROLLER: u8 = 0x01;
    /// Active Namespace ID list.
    pub const ACTIVE_NAMESPACES: u8 = 0x02;
    /// Namespace Identification Descriptor list.
    pub const NAMESPACE_DESCRIPTORS: u8 = 0x03;
    /// I/O Command Set specific Identify Namespace (CSI in CDW11).
    pub const CSI_NAMESPACE: u8 = 0x05;
    /// I/O Command Set specific Identify Controller (CSI in CDW11).
    pub const CSI_CONTROLLER: u8 = 0x06;
    /// I/O Command Set specific Active Namespace ID list (CSI in CDW11).
    pub const CSI_ACTIVE_NAMESPACES: u8 = 0x07;
    /// I/O Command Set Independent Identify Namespace.
    pub const INDEPENDENT_NAMESPACE: u8 = 0x08;
}

/// Feature identifiers.
pub mod feature {
    /// Temperature Threshold.
    pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: u8 = 0x0b;
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: u8 = 0x07;
}

/// Log page identifiers.
pub mod log_page {
    /// Error Information.
    pub const ERROR: u8 = 0x01;
    /// SMART / Health Information.
    pub const SMART: u8 = 0x02;
    /// Firmware Slot Information.
    pub const FIRMWARE_SLOT: u8 = 0x03;
    /// Commands Supported and Effects.
    pub const COMMAND_EFFECTS: u8 = 0x05;
}

/// A 64-byte submission queue entry.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Command {
    /// Dword 0: opcode (7:0), fused (9:8), PSDT (15:14), command ID (31:16).
    pub cdw0: u32,
    /// Namespace ID.
    pub nsid: u32,
    /// Dwords 2 and 3.
    pub cdw2: u32,
    /// Dword 3.
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer: PRP1/PRP2 or SGL1.
    pub dptr: [u64; 2],
    /// Dwords 10 to 15.
    pub cdw10: u32,
    /// Dword 11.
    pub cdw11: u32,
    /// Dword 12.
    pub cdw12: u32,
    /// Dword 13.
    pub cdw13: u32,
    /// Dword 14.
    pub cdw14: u32,
    /// Dword 15.
    pub cdw15: u32,
}

const _: () = assert!(core::mem::size_of::<Command>() == 64);
const _: () = assert!(core::mem::offset_of!(Command, dptr) == 24);
const _: () = assert!(core::mem::offset_of!(Command, cdw10) == 40);

impl Command {
    /// A command with `opcode` for namespace `nsid`; the command ID is set at
    /// submission.
    pub const fn new(opcode: u8, nsid: u32) -> Self {
        Command {
            cdw0: opcode as u32,
            nsid,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            dptr: [0; 2],
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        }
    }

    /// The opcode.
    pub const fn opcode(&self) -> u8 {
        self.cdw0 as u8
    }

    /// The command identifier.
    pub const fn cid(&self) -> u16 {
        (self.cdw0 >> 16) as u16
    }

    /// Sets the command identifier.
    pub fn set_cid(&mut self, cid: u16) {
        self.cdw0 = (self.cdw0 & 0xffff) | (cid as u32) << 16;
    }

    /// The PSDT field: PRP or SGL.
    pub const fn psdt(&self) -> u8 {
        ((self.cdw0 >> 14) & 0x3) as u8
    }

    /// Sets the data pointer and the PSDT that goes with it.
    pub fn set_data(&mut self, dp: DataPtr) {
        let psdt = match dp.psdt() {
            Psdt::Prp => 0,
            Psdt::SglMptrContiguous => 1,
            Psdt::SglMptrSgl => 2,
        };
        self.cdw0 = (self.cdw0 & !(0x3 << 14)) | psdt << 14;
        self.dptr = dp.to_qwords();
    }

    /// Identify with `cns` (and controller ID 0) into a 4 KiB buffer.
    pub fn identify(cns: u8, nsid: u32) -> Self {
        let mut c = Self::new(admin::IDENTIFY, nsid);
        c.cdw10 = cns as u32;
        c
    }

    /// Identify with `cns` for the I/O Command Set `csi` (CDW11 bits 31:24).
    pub fn identify_csi(cns: u8, nsid: u32, csi: u8) -> Self {
        let mut c = Self::identify(cns, nsid);
        c.cdw11 = (csi as u32) << 24;
        c
    }

    /// The Command Set Identifier of an Identify command (CDW11 bits
    /// 31:24).
    pub const fn identify_csi_field(&self) -> u8 {
        (self.cdw11 >> 24) as u8
    }

    /// Create I/O Completion Queue `qid` of `entries` at `addr` (physically
    /// contiguous), with interrupts on vector `vector` if `Some`.
    pub fn create_cq(qid: u16, entries: u16, addr: Iova, vector: Option<u16>) -> Self {
        let mut c = Self::new(admin::CREATE_CQ, 0);
        c.dptr = [addr.raw(), 0];
        c.cdw10 = (entries as u32 - 1) << 16 | qid as u32;
        // PC (bit 0) = 1: contiguous; IEN (bit 1); IV (31:16).
        c.cdw11 = 1 | match vector {
            Some(v) => 2 | (v as u32) << 16,
            None => 0,
        };
        c
    }

    /// Create I/O Submission Queue `qid` of `entries` at `addr`, completing
    /// into completion queue `cqid`.
    pub fn create_sq(qid: u16, entries: u16, addr: Iova, cqid: u16) -> Self {
        let mut c = Self::new(admin::CREATE_SQ, 0);
        c.dptr = [addr.raw(), 0];
        c.cdw10 = (entries as u32 - 1) << 16 | qid as u32;
        // PC (bit 0) = 1: contiguous; QPRIO 0; CQID (31:16).
        c.cdw11 = 1 | (cqid as u32) << 16;
        c
    }

    /// Delete I/O Submission (`sq`) or Completion Queue `qid`.
    pub fn delete_queue(sq: bool, qid: u16) -> Self {
        let mut c = Self::new(
            if sq {
                admin::DELETE_SQ
            } else {
                admin::DELETE_CQ
            },
            0,
        );
        c.cdw10 = qid as u32;
        c
    }

    /// Set Features `fid` with dword 11 `value`.
    pub fn set_features(fid: u8, value: u32) -> Self {
        let mut c = Self::new(admin::SET_FEATURES, 0);
        c.cdw10 = fid as u32;
        c.cdw11 = value;
        c
    }

    /// Get Features `fid` (current value).
    pub fn get_features(fid: u8) -> Self {
        let mut c = Self::new(admin::GET_FEATURES, 0);
        c.cdw10 = fid as u32;
        c
    }

    /// Get Log Page `lid` of `bytes` (a multiple of 4) for namespace `nsid`.
    pub fn get_log_page(lid: u8, nsid: u32, bytes: u32) -> Self {
        let mut c = Self::new(admin::GET_LOG_PAGE, nsid);
        let numd = bytes / 4 - 1;
        c.cdw10 = lid as u32 | (numd & 0xffff) << 16;
        c.cdw11 = numd >> 16;
        c
    }

    /// Abort command `cid` on submission queue `sqid`.
    pub fn abort(sqid: u16, cid: u16) -> Self {
        let mut c = Self::new(admin::ABORT, 0);
        c.cdw10 = sqid as u32 | (cid as u32) << 16;
        c
    }

    /// Read or Write of `blocks` (1 to 65536) logical blocks at `lba`.
    pub fn rw(write: bool, nsid: u32, lba: u64, blocks: u32, fua: bool) -> Self {
        Self::blocks(
            if write { io::WRITE } else { io::READ },
            nsid,
            lba,
            blocks,
            fua,
        )
    }

    /// A command of `opcode` on `blocks` (1 to 65536) logical blocks at
    /// `lba`: SLBA in dwords 10 and 11, NLB (0-based) and FUA in dword 12.
    /// The layout of Read, Write, Compare, Verify and Write Uncorrectable.
    #[inline(always)]
    pub fn blocks(opcode: u8, nsid: u32, lba: u64, blocks: u32, fua: bool) -> Self {
        let mut c = Self::new(opcode, nsid);
        c.cdw10 = lba as u32;
        c.cdw11 = (lba >> 32) as u32;
        c.cdw12 = blocks.wrapping_sub(1) & 0xffff | (fua as u32) << 30;
        c
    }

    /// Sets the end-to-end protection fields of a Read, Write, Compare,
    /// Verify, Write Zeroes or Zone Append: PRINFO (dword 12 bits 29:26:
    /// PRACT and the PRCHK bits), the initial reference tag (dword 14, and
    /// for 48-bit reference tags bits 47:32 in dword 3 bits 15:0), and
    /// the expected application tag and its mask (dword 15).
    pub fn set_protection(&mut self, pract: bool, prchk: u8, reference: u64, app: u16, mask: u16) {
        let prinfo = (pract as u32) << 3 | (prchk as u32 & 0x7);
        self.cdw12 = (self.cdw12 & !(0xf << 26)) | prinfo << 26;
        self.cdw14 = reference as u32;
        self.cdw3 = (self.cdw3 & !0xffff) | ((reference >> 32) as u32 & 0xffff);
        self.cdw15 = (mask as u32) << 16 | app as u32;
    }

    /// PRINFO: PRACT (bit 3) and PRCHK (bits 2:0).
    pub const fn prinfo(&self) -> u8 {
        ((self.cdw12 >> 26) & 0xf) as u8
    }

    /// The initial reference tag: dword 14, with dword 3 bits 15:0 as
    /// bits 47:32 (which only 48-bit reference tags use).
    pub const fn reference_tag(&self) -> u64 {
        self.cdw14 as u64 | ((self.cdw3 & 0xffff) as u64) << 32
    }

    /// The expected application tag and its mask.
    pub const fn app_tag(&self) -> (u16, u16) {
        (self.cdw15 as u16, (self.cdw15 >> 16) as u16)
    }

    /// Compare of `blocks` (1 to 65536) logical blocks at `lba` with the
    /// data the caller points DPTR at.
    pub fn compare(nsid: u32, lba: u64, blocks: u32) -> Self {
        Self::blocks(io::COMPARE, nsid, lba, blocks, false)
    }

    /// Verify of `blocks` (1 to 65536) logical blocks at `lba` (no data).
    pub fn verify(nsid: u32, lba: u64, blocks: u32) -> Self {
        Self::blocks(io::VERIFY, nsid, lba, blocks, false)
    }

    /// Write Uncorrectable of `blocks` (1 to 65536) logical blocks at
    /// `lba` (no data).
    pub fn write_uncorrectable(nsid: u32, lba: u64, blocks: u32) -> Self {
        Self::blocks(io::WRITE_UNCORRECTABLE, nsid, lba, blocks, false)
    }

    /// Copy to `dest` from `ranges` (1 to 256) source range descriptors of
    /// format 0 in a buffer the caller points DPTR at.
    pub fn copy(nsid: u32, dest: u64, ranges: u32) -> Self {
        let mut c = Self::new(io::COPY, nsid);
        c.cdw10 = dest as u32;
        c.cdw11 = (dest >> 32) as u32;
        // NR (7:0, 0-based); descriptor format 0 (11:8); no protection
        // information, no FUA, no limited retry.
        c.cdw12 = ranges.wrapping_sub(1) & 0xff;
        c
    }

    /// Dataset Management of `ranges` (1 to 256) range entries in a buffer
    /// the caller points DPTR at, with `attributes`.
    pub fn dataset_management(
        nsid: u32,
        ranges: u32,
        attributes: super::nvm::DsmAttributes,
    ) -> Self {
        let mut c = Self::new(io::DSM, nsid);
        c.cdw10 = ranges.wrapping_sub(1) & 0xff;
        c.cdw11 = attributes.cdw11();
        c
    }

    /// Write Zeroes of `blocks` (1 to 65536) logical blocks at `lba`; with
    /// `deallocate` the controller may deallocate them instead.
    pub fn write_zeroes(nsid: u32, lba: u64, blocks: u32, deallocate: bool) -> Self {
        let mut c = Self::new(io::WRITE_ZEROES, nsid);
        c.cdw10 = lba as u32;
        c.cdw11 = (lba >> 32) as u32;
        c.cdw12 = (blocks - 1) & 0xffff | (deallocate as u32) << 25;
        c
    }

    /// Dataset Management with the Deallocate attribute over `ranges`
    /// (1 to 256) range entries in a buffer the caller points DPTR at.
    pub fn deallocate(nsid: u32, ranges: u32) -> Self {
        Self::dataset_management(nsid, ranges, super::nvm::DsmAttributes::DEALLOCATE)
    }

    /// Zone Management Send of `action` to the zone starting at `zslba`,
    /// or with `select_all` to every zone the action applies to (SLBA
    /// ignored). No data.
    pub fn zone_mgmt_send(
        nsid: u32,
        zslba: u64,
        action: super::zns::ZoneAction,
        select_all: bool,
    ) -> Self {
        let mut c = Self::new(io::ZONE_MGMT_SEND, nsid);
        c.cdw10 = zslba as u32;
        c.cdw11 = (zslba >> 32) as u32;
        // ZSA (7:0), Select All (8).
        c.cdw13 = u32::from(action.zsa()) | (select_all as u32) << 8;
        c
    }

    /// Zone Management Receive, Report Zones (ZRA 0h), of the zones that
    /// `filter` lists from the one holding `slba`, into a buffer of
    /// `bytes` (a multiple of 4) the caller points DPTR at; with
    /// `partial` the header counts the descriptors in the buffer only.
    pub fn report_zones(
        nsid: u32,
        slba: u64,
        bytes: u32,
        filter: super::zns::ReportFilter,
        partial: bool,
    ) -> Self {
        let mut c = Self::new(io::ZONE_MGMT_RECV, nsid);
        c.cdw10 = slba as u32;
        c.cdw11 = (slba >> 32) as u32;
        // NUMD: dwords, 0-based.
        c.cdw12 = (bytes / 4).wrapping_sub(1);
        // ZRA (7:0) 0: Report Zones; ZRASF (15:8); Partial Report (16).
        c.cdw13 = u32::from(filter.zrasf()) << 8 | (partial as u32) << 16;
        c
    }

    /// Zone Append of `blocks` (1 to 65536) logical blocks to the zone
    /// starting at `zslba`, from data the caller points DPTR at; the
    /// completion's dwords 0 and 1 hold the LBA of the first block
    /// written.
    pub fn zone_append(nsid: u32, zslba: u64, blocks: u32, fua: bool) -> Self {
        Self::blocks(io::ZONE_APPEND, nsid, zslba, blocks, fua)
    }

    /// The starting LBA of a Read, Write, Write Zeroes, Compare, Verify or
    /// Write Uncorrectable (the destination of a Copy, the zone of a Zone
    /// Append or Zone Management command).
    pub const fn slba(&self) -> u64 {
        self.cdw10 as u64 | (self.cdw11 as u64) << 32
    }

    /// The number of logical blocks of a Read, Write, Write Zeroes,
    /// Compare, Verify or Write Uncorrectable.
    pub const fn nlb(&self) -> u32 {
        (self.cdw12 & 0xffff) + 1
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("opcode", &format_args!("{:#04x}", self.opcode()))
            .field("cid", &self.cid())
            .field("nsid", &self.nsid)
            .field("psdt", &self.psdt())
            .field(
                "dptr",
                &format_args!("[{:#x}, {:#x}]", self.dptr[0], self.dptr[1]),
            )
            .field(
                "cdw10_15",
                &[
                    self.cdw10, self.cdw11, self.cdw12, self.cdw13, self.cdw14, self.cdw15,
                ],
            )
            .finish()
    }
}

/// A 16-byte completion queue entry.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
#[repr(C)]
pub struct Completion {
    /// Command-specific result (dword 0).
    pub result: u32,
    /// Dword 1: command specific for some commands (the high half of a
    /// Zone Append's LBA), reserved for most.
    pub rsvd: u32,
    /// Submission queue head pointer.
    pub sq_head: u16,
    /// Submission queue identifier.
    pub sq_id: u16,
    /// Command identifier.
    pub cid: u16,
    /// Phase tag (bit 0) and status field (15:1).
    pub status: u16,
}

const _: () = assert!(core::mem::size_of::<Completion>() == 16);

impl Completion {
    /// The phase tag.
    pub const fn phase(&self) -> bool {
        self.status & 1 != 0
    }

    /// The status, without the phase tag.
    pub const fn status(&self) -> Status {
        Status(self.status >> 1)
    }

    /// Dwords 0 and 1 as one quadword (dword 0 low): a Zone Append's LBA.
    pub const fn result64(&self) -> u64 {
        self.result as u64 | (self.rsvd as u64) << 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_and_fields() {
        let mut c = Command::rw(true, 1, 0x1_2345_6789, 8, true);
        c.set_cid(0xbeef);
        assert_eq!(c.opcode(), io::WRITE);
        assert_eq!(c.cid(), 0xbeef);
        assert_eq!(c.slba(), 0x1_2345_6789);
        assert_eq!(c.nlb(), 8);
        assert_eq!(c.cdw12 >> 30 & 1, 1, "FUA");
        c.set_data(DataPtr::Sgl(crate::nvme::spec::SglDescriptor::data(
            Iova::new(0x1000),
            4096,
        )));
        assert_eq!(c.psdt(), 1);
        let q = Command::create_cq(3, 1024, Iova::new(0x20_0000), Some(2));
        assert_eq!(q.cdw10, (1023 << 16) | 3);
        assert_eq!(q.cdw11, 1 | 2 | (2 << 16));
        let l = Command::get_log_page(log_page::SMART, 0xffff_ffff, 512);
        assert_eq!(l.cdw10, 2 | (127 << 16));
    }

    #[test]
    fn status_decoding() {
        let cqe = Completion {
            status: (Status::new(0, 0x80, true).0 << 1) | 1,
            ..Default::default()
        };
        assert!(cqe.phase());
        let s = cqe.status();
        assert_eq!((s.sct(), s.sc(), s.dnr()), (0, 0x80, true));
        assert_eq!(s.name(), "LBA Out of Range");
        assert_eq!(
            s.to_string(),
            "LBA Out of Range (SCT 0x0, SC 0x80, do not retry)"
        );
        assert!(Status::SUCCESS.is_success());
        assert!(!Status::new(2, 0x81, false).is_success());
    }
}
