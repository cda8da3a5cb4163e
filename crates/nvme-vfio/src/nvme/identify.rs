//! Identify Controller and Identify Namespace data (NVMe Base 2.0, 5.17.2;
//! NVM Command Set 1.0, 4.1.5). Kept as the 4096 raw bytes the controller
//! returns, with accessors for the fields the driver uses and setters for
//! device models.

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// An ASCII field, space padded, without the padding.
fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

fn set_ascii(b: &mut [u8], s: &str) {
    b.fill(b' ');
    let n = s.len().min(b.len());
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Identify Controller data.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentifyController(pub Box<[u8; IDENTIFY_LEN]>);

impl Default for IdentifyController {
    fn default() -> Self {
        Self(Box::new([0; IDENTIFY_LEN]))
    }
}

impl IdentifyController {
    /// PCI Vendor ID.
    pub fn vid(&self) -> u16 {
        le16(&self.0[..], 0)
    }
    /// Serial Number.
    pub fn serial(&self) -> String {
        ascii(&self.0[4..24])
    }
    /// Model Number.
    pub fn model(&self) -> String {
        ascii(&self.0[24..64])
    }
    /// Firmware Revision.
    pub fn firmware(&self) -> String {
        ascii(&self.0[64..72])
    }
    /// Maximum Data Transfer Size: `2^MDTS` minimum pages; 0 is no limit.
    pub fn mdts(&self) -> u8 {
        self.0[77]
    }
    /// Controller ID.
    pub fn cntlid(&self) -> u16 {
        le16(&self.0[..], 78)
    }
    /// Version.
    pub fn ver(&self) -> u32 {
        le32(&self.0[..], 80)
    }
    /// Optional Admin Command Support (bit 8: Doorbell Buffer Config).
    pub fn oacs(&self) -> u16 {
        le16(&self.0[..], 256)
    }
    /// Abort Command Limit (0-based).
    pub fn acl(&self) -> u8 {
        self.0[258]
    }
    /// Asynchronous Event Request Limit (0-based): how many requests the
    /// controller keeps outstanding at once, minus one.
    pub fn aerl(&self) -> u8 {
        self.0[259]
    }
    /// Optional Asynchronous Events Supported (bit 8: namespace attribute
    /// notices, bit 9: firmware activation notices).
    pub fn oaes(&self) -> u32 {
        u32::from_le_bytes([self.0[92], self.0[93], self.0[94], self.0[95]])
    }
    /// Submission Queue Entry Size: required (3:0) and maximum (7:4), log2.
    pub fn sqes(&self) -> u8 {
        self.0[512]
    }
    /// Completion Queue Entry Size: required (3:0) and maximum (7:4), log2.
    pub fn cqes(&self) -> u8 {
        self.0[513]
    }
    /// Number of Namespaces (the largest namespace ID).
    pub fn nn(&self) -> u32 {
        le32(&self.0[..], 516)
    }
    /// Log Page Attributes (bit 1: the Commands Supported and Effects log
    /// page is supported).
    pub fn lpa(&self) -> u8 {
        self.0[261]
    }
    /// Optional NVM Command Support: bit 0 Compare, 1 Write Uncorrectable,
    /// 2 Dataset Management, 3 Write Zeroes, 7 Verify, 8 Copy (see
    /// [`OptionalCommand`](super::nvm::OptionalCommand)).
    pub fn oncs(&self) -> u16 {
        le16(&self.0[..], 520)
    }
    /// Optional Copy Formats Supported (bit 0: source range descriptors of
    /// format 0).
    pub fn ocfs(&self) -> u16 {
        le16(&self.0[..], 534)
    }
    /// Volatile Write Cache (bit 0: present).
    pub fn vwc(&self) -> u8 {
        self.0[525]
    }
    /// SGL Support (bits 1:0 non-zero: SGLs supported for NVM commands).
    pub fn sgls(&self) -> u32 {
        le32(&self.0[..], 536)
    }
    /// Whether the controller takes SGLs for I/O commands.
    pub fn sgl_supported(&self) -> bool {
        self.sgls() & 0x3 != 0
    }
    /// Whether the controller requires dword-aligned SGL data blocks.
    pub fn sgl_dword_aligned(&self) -> bool {
        self.sgls() & 0x3 == 0x2
    }

    /// Sets the identity strings and PCI vendor ID (for device models).
    pub fn set_identity(&mut self, vid: u16, serial: &str, model: &str, firmware: &str) {
        self.0[0..2].copy_from_slice(&vid.to_le_bytes());
        set_ascii(&mut self.0[4..24], serial);
        set_ascii(&mut self.0[24..64], model);
        set_ascii(&mut self.0[64..72], firmware);
    }
    /// Sets LPA and OCFS (for device models).
    pub fn set_log_and_copy_support(&mut self, lpa: u8, ocfs: u16) {
        self.0[261] = lpa;
        self.0[534..536].copy_from_slice(&ocfs.to_le_bytes());
    }
    /// Sets MDTS, CNTLID and VER.
    pub fn set_limits(&mut self, mdts: u8, cntlid: u16, ver: u32) {
        self.0[77] = mdts;
        self.0[78..80].copy_from_slice(&cntlid.to_le_bytes());
        self.0[80..84].copy_from_slice(&ver.to_le_bytes());
    }
    /// Sets OACS, ACL, SQES, CQES, NN, ONCS, VWC and SGLS.
    #[allow(clippy::too_many_arguments)]
    pub fn set_features(
        &mut self,
        oacs: u16,
        acl: u8,
        sqes: u8,
        cqes: u8,
        nn: u32,
        oncs: u16,
        vwc: u8,
        sgls: u32,
    ) {
        self.0[256..258].copy_from_slice(&oacs.to_le_bytes());
        self.0[258] = acl;
        self.0[512] = sqes;
        self.0[513] = cqes;
        self.0[516..520].copy_from_slice(&nn.to_le_bytes());
        self.0[520..522].copy_from_slice(&oncs.to_le_bytes());
        self.0[525] = vwc;
        self.0[536..540].copy_from_slice(&sgls.to_le_bytes());
    }
}

impl core::fmt::Debug for IdentifyController {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyController")
            .field("vid", &format_args!("{:#06x}", self.vid()))
            .field("serial", &self.serial())
            .field("model", &self.model())
            .field("firmware", &self.firmware())
            .field("mdts", &self.mdts())
            .field("nn", &self.nn())
            .field("sgls", &format_args!("{:#x}", self.sgls()))
            .finish_non_exhaustive()
    }
}

/// One LBA Format descriptor.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LbaFormat {
    /// Metadata bytes per block.
    pub metadata: u16,
    /// Data bytes per block, as log2 (9 = 512 bytes).
    pub lbads: u8,
    /// Relative Performance (0 best).
    pub rp: u8,
}

impl LbaFormat {
    /// Data bytes per block.
    pub fn block_size(&self) -> u64 {
        1u64.checked_shl(self.lbads.into()).unwrap_or(0)
    }
}

/// Identify Namespace data.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentifyNamespace(pub Box<[u8; IDENTIFY_LEN]>);

impl Default for IdentifyNamespace {
    fn default() -> Self {
        Self(Box::new([0; IDENTIFY_LEN]))
    }
}

impl IdentifyNamespace {
    /// Namespace Size, in logical blocks.
    pub fn nsze(&self) -> u64 {
        le64(&self.0[..], 0)
    }
    /// Namespace Capacity, in logical blocks.
    pub fn ncap(&self) -> u64 {
        le64(&self.0[..], 8)
    }
    /// Namespace Utilization: logical blocks currently allocated.
    pub fn nuse(&self) -> u64 {
        le64(&self.0[..], 16)
    }
    /// Number of LBA formats (NLBAF is 0-based).
    pub fn lba_formats(&self) -> usize {
        self.0[25] as usize + 1
    }
    /// Index of the current LBA format (FLBAS bits 3:0, 6:5).
    pub fn current_format(&self) -> usize {
        let f = self.0[26];
        ((f & 0xf) | ((f >> 5) & 0x3) << 4) as usize
    }
    /// LBA format `i` (0 to 63).
    pub fn lba_format(&self, i: usize) -> Option<LbaFormat> {
        if i >= 64 || i >= self.lba_formats() {
            return None;
        }
        let d = le32(&self.0[..], 128 + 4 * i);
        Some(LbaFormat {
            metadata: d as u16,
            lbads: (d >> 16) as u8,
            rp: ((d >> 24) & 0x3) as u8,
        })
    }
    /// The current LBA format.
    pub fn current_lba_format(&self) -> Option<LbaFormat> {
        self.lba_format(self.current_format())
    }
    /// Whether the metadata of the current format follows each block's
    /// data in the data buffer (extended LBAs, FLBAS bit 4); else it goes
    /// in a buffer of its own (the metadata pointer).
    pub fn extended_lba(&self) -> bool {
        self.0[26] & 0x10 != 0
    }
    /// Metadata Capabilities: bit 0 extended LBAs, bit 1 a separate
    /// metadata buffer.
    pub fn mc(&self) -> u8 {
        self.0[27]
    }
    /// End-to-end Data Protection Capabilities: bits 0 to 2 types 1 to 3,
    /// bit 3 PI in the first bytes of the metadata, bit 4 in the last.
    pub fn dpc(&self) -> u8 {
        self.0[28]
    }
    /// End-to-end Data Protection Type Settings: bits 2:0 the type (0
    /// none), bit 3 PI in the first bytes of the metadata.
    pub fn dps(&self) -> u8 {
        self.0[29]
    }
    /// How the current format lays out blocks in host memory, with the
    /// protection information's guard from the NVM command set's extended
    /// LBA format `guard` (16-bit when the controller has none). `None`
    /// without a current format.
    pub fn block_format(&self, guard: super::pi::Guard) -> Option<super::pi::BlockFormat> {
        let f = self.current_lba_format()?;
        let dps = self.dps();
        Some(super::pi::BlockFormat {
            data: u32::try_from(f.block_size()).ok()?,
            metadata: f.metadata,
            extended: self.extended_lba(),
            pi: super::pi::PiType::from_dps(dps).map(|kind| super::pi::PiFormat {
                kind,
                guard,
                first: dps & 0x8 != 0,
            }),
        })
    }
    /// Sets the metadata settings: extended LBAs (FLBAS bit 4), MC, DPC
    /// and DPS (for device models).
    pub fn set_metadata(&mut self, extended: bool, mc: u8, dpc: u8, dps: u8) {
        self.0[26] = (self.0[26] & !0x10) | (extended as u8) << 4;
        self.0[27] = mc;
        self.0[28] = dpc;
        self.0[29] = dps;
    }
    /// Deallocate Logical Block Features: bits 2:0 say what deallocated
    /// blocks read as (001b zeroes, 010b all ones, 000b not reported).
    pub fn dlfeat(&self) -> u8 {
        self.0[33]
    }
    /// The copy limits: MSSRL (bytes 75:74), MCL (79:76) and MSRC (80).
    pub fn copy_limits(&self) -> super::nvm::CopyLimits {
        super::nvm::CopyLimits {
            mssrl: le16(&self.0[..], 74),
            mcl: le32(&self.0[..], 76),
            msrc: self.0[80],
        }
    }
    /// Whether the namespace is active (a size is reported).
    pub fn is_active(&self) -> bool {
        self.nsze() != 0
    }

    /// Sets size, capacity and utilization (for device models).
    pub fn set_size(&mut self, blocks: u64) {
        for at in [0, 8, 16] {
            self.0[at..at + 8].copy_from_slice(&blocks.to_le_bytes());
        }
    }
    /// Sets the utilization (NUSE) alone.
    pub fn set_utilization(&mut self, blocks: u64) {
        self.0[16..24].copy_from_slice(&blocks.to_le_bytes());
    }
    /// Sets the copy limits (MSSRL, MCL, MSRC).
    pub fn set_copy_limits(&mut self, limits: super::nvm::CopyLimits) {
        self.0[74..76].copy_from_slice(&limits.mssrl.to_le_bytes());
        self.0[76..80].copy_from_slice(&limits.mcl.to_le_bytes());
        self.0[80] = limits.msrc;
    }
    /// Sets the LBA formats and selects `current`.
    pub fn set_formats(&mut self, formats: &[LbaFormat], current: usize) {
        let n = formats.len().clamp(1, 64);
        self.0[25] = (n - 1) as u8;
        self.0[26] =
            (self.0[26] & 0x10) | (current & 0xf) as u8 | (((current >> 4) & 0x3) << 5) as u8;
        for (i, f) in formats.iter().take(64).enumerate() {
            let d = f.metadata as u32 | (f.lbads as u32) << 16 | ((f.rp as u32) & 3) << 24;
            self.0[128 + 4 * i..132 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
    }
}

impl core::fmt::Debug for IdentifyNamespace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyNamespace")
            .field("nsze", &self.nsze())
            .field("format", &self.current_lba_format())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_fields_round_trip() {
        let mut c = IdentifyController::default();
        c.set_identity(0x1b36, "vmnvme0", "QEMU NVMe Ctrl", "7.2.0");
        c.set_limits(7, 0, 0x10400);
        c.set_features(0x12a, 3, 0x66, 0x44, 256, 0x75d, 0x7, 0x80001);
        assert_eq!(c.vid(), 0x1b36);
        assert_eq!(c.serial(), "vmnvme0");
        assert_eq!(c.model(), "QEMU NVMe Ctrl");
        assert_eq!(c.firmware(), "7.2.0");
        assert_eq!((c.mdts(), c.ver(), c.nn()), (7, 0x10400, 256));
        assert!(c.sgl_supported());
        c.set_log_and_copy_support(0x07, 0x3);
        assert_eq!((c.lpa(), c.ocfs(), c.0[534]), (0x07, 0x3, 0x3));
        assert!(!c.sgl_dword_aligned());
        assert_eq!(&c.0[24..38], b"QEMU NVMe Ctrl");
        assert_eq!(c.0[38], b' ');
    }

    #[test]
    fn namespace_formats() {
        let mut n = IdentifyNamespace::default();
        let fmts = [
            LbaFormat {
                metadata: 0,
                lbads: 9,
                rp: 0,
            },
            LbaFormat {
                metadata: 8,
                lbads: 9,
                rp: 0,
            },
            LbaFormat {
                metadata: 0,
                lbads: 12,
                rp: 0,
            },
        ];
        n.set_size(1 << 20);
        n.set_formats(&fmts, 2);
        assert_eq!(n.nsze(), 1 << 20);
        assert_eq!(n.nuse(), 1 << 20);
        n.set_utilization(5);
        assert_eq!((n.nsze(), n.ncap(), n.nuse()), (1 << 20, 1 << 20, 5));
        assert_eq!(n.lba_formats(), 3);
        assert_eq!(n.current_format(), 2);
        assert_eq!(n.current_lba_format().unwrap().block_size(), 4096);
        assert_eq!(n.lba_format(1).unwrap().metadata, 8);
        assert_eq!(n.lba_format(3), None);
        let limits = crate::nvme::nvm::CopyLimits {
            mssrl: 128,
            mcl: 0x1_0000,
            msrc: 127,
        };
        n.set_copy_limits(limits);
        assert_eq!(n.copy_limits(), limits);
        assert_eq!((n.0[74], n.0[78], n.0[80]), (128, 1, 127));
        assert!(n.is_active());
        // FLBAS bits 6:5 carry format index bits 5:4.
        n.set_formats(&[fmts[0]; 20], 17);
        assert_eq!(n.0[26], 0x21);
        assert_eq!(n.current_format(), 17);
    }
}
