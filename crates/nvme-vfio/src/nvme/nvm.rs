//! The optional commands of the NVM command set (NVM Command Set 1.0,
//! 3.2 and 3.3): which of them a controller supports (Identify Controller
//! ONCS and OCFS, and the Commands Supported and Effects log), their size
//! limits (the NVM command set's Identify Controller data, CNS 06h CSI
//! 00h, and Identify Namespace MSSRL, MCL and MSRC), and the data
//! structures their commands point at: Dataset Management ranges and
//! Copy source range descriptors of format 0.
//!
//! Everything read here is the device's word: accessors read fixed
//! offsets of fixed-size structures, and limits that make no sense (a
//! shift past 64 bits) count as no limit, which the command's own field
//! widths still bound.

use core::fmt;

use super::cmd::io;
use super::identify::IDENTIFY_LEN;

/// An optional command of the NVM command set, as Identify Controller
/// ONCS lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptionalCommand {
    /// Compare (ONCS bit 0): the controller compares the data sent with
    /// the blocks' and fails with Compare Failure when they differ.
    Compare,
    /// Write Uncorrectable (ONCS bit 1): blocks are marked so that reads
    /// fail (Unrecovered Read Error) until they are written again.
    WriteUncorrectable,
    /// Dataset Management (ONCS bit 2): attributes of ranges of blocks,
    /// and their deallocation.
    DatasetManagement,
    /// Write Zeroes (ONCS bit 3).
    WriteZeroes,
    /// Verify (ONCS bit 7): the controller reads the blocks and checks
    /// them, moving no data.
    Verify,
    /// Copy (ONCS bit 8), with source range descriptors of format 0
    /// (OCFS bit 0), the format the driver uses.
    Copy,
}

impl OptionalCommand {
    /// Every optional command the driver knows.
    pub const ALL: [OptionalCommand; 6] = [
        OptionalCommand::Compare,
        OptionalCommand::WriteUncorrectable,
        OptionalCommand::DatasetManagement,
        OptionalCommand::WriteZeroes,
        OptionalCommand::Verify,
        OptionalCommand::Copy,
    ];

    /// The command's opcode.
    pub const fn opcode(self) -> u8 {
        match self {
            OptionalCommand::Compare => io::COMPARE,
            OptionalCommand::WriteUncorrectable => io::WRITE_UNCORRECTABLE,
            OptionalCommand::DatasetManagement => io::DSM,
            OptionalCommand::WriteZeroes => io::WRITE_ZEROES,
            OptionalCommand::Verify => io::VERIFY,
            OptionalCommand::Copy => io::COPY,
        }
    }

    /// Its bit in Identify Controller ONCS.
    pub const fn oncs_bit(self) -> u16 {
        match self {
            OptionalCommand::Compare => 1 << 0,
            OptionalCommand::WriteUncorrectable => 1 << 1,
            OptionalCommand::DatasetManagement => 1 << 2,
            OptionalCommand::WriteZeroes => 1 << 3,
            OptionalCommand::Verify => 1 << 7,
            OptionalCommand::Copy => 1 << 8,
        }
    }

    /// The specification's name of the command.
    pub const fn name(self) -> &'static str {
        match self {
            OptionalCommand::Compare => "Compare",
            OptionalCommand::WriteUncorrectable => "Write Uncorrectable",
            OptionalCommand::DatasetManagement => "Dataset Management",
            OptionalCommand::WriteZeroes => "Write Zeroes",
            OptionalCommand::Verify => "Verify",
            OptionalCommand::Copy => "Copy",
        }
    }

    /// Its position in an [`OptionalCommands`] set.
    const fn index(self) -> u8 {
        match self {
            OptionalCommand::Compare => 0,
            OptionalCommand::WriteUncorrectable => 1,
            OptionalCommand::DatasetManagement => 2,
            OptionalCommand::WriteZeroes => 3,
            OptionalCommand::Verify => 4,
            OptionalCommand::Copy => 5,
        }
    }
}

impl fmt::Display for OptionalCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// OCFS bit 0: Copy source range descriptors of format 0 supported.
pub const OCFS_FORMAT_0: u16 = 1 << 0;

/// A set of optional commands: those a controller supports.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OptionalCommands(u8);

impl OptionalCommands {
    /// The commands Identify Controller lists: ONCS, and for Copy also
    /// descriptor format 0 in OCFS.
    pub fn from_identify(oncs: u16, ocfs: u16) -> Self {
        let mut set = OptionalCommands::default();
        for c in OptionalCommand::ALL {
            if oncs & c.oncs_bit() != 0 {
                set = set.with(c);
            }
        }
        if ocfs & OCFS_FORMAT_0 == 0 {
            set = set.without(OptionalCommand::Copy);
        }
        set
    }

    /// Adds the commands the Commands Supported and Effects log says are
    /// supported (CSUPP) for the NVM command set; Copy only with
    /// descriptor format 0 in `ocfs`.
    pub fn with_effects(self, log: &CommandEffects, ocfs: u16) -> Self {
        let mut set = self;
        for c in OptionalCommand::ALL {
            let format_ok = c != OptionalCommand::Copy || ocfs & OCFS_FORMAT_0 != 0;
            if format_ok && log.io_supported(c.opcode()) {
                set = set.with(c);
            }
        }
        set
    }

    /// Whether `c` is in the set.
    pub const fn contains(self, c: OptionalCommand) -> bool {
        self.0 & (1 << c.index()) != 0
    }

    /// The set with `c`.
    pub const fn with(self, c: OptionalCommand) -> Self {
        OptionalCommands(self.0 | 1 << c.index())
    }

    /// The set without `c`.
    pub const fn without(self, c: OptionalCommand) -> Self {
        OptionalCommands(self.0 & !(1 << c.index()))
    }

    /// Whether every optional command the driver knows is in the set.
    pub fn is_complete(self) -> bool {
        OptionalCommand::ALL.iter().all(|&c| self.contains(c))
    }
}

impl fmt::Debug for OptionalCommands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(OptionalCommand::ALL.iter().filter(|&&c| self.contains(c)))
            .finish()
    }
}

/// Bytes of the Commands Supported and Effects log.
pub const COMMAND_EFFECTS_LEN: usize = 4096;
/// Its log page identifier.
pub const COMMAND_EFFECTS_LOG: u8 = 0x05;

/// The Commands Supported and Effects log (log page 05h, NVMe Base 2.0,
/// 5.16.1.6): a dword per admin opcode (bytes 0 to 1023) and per I/O
/// opcode (bytes 1024 to 2047) of the command set asked for; bit 0
/// (CSUPP) says the command is supported.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandEffects(pub Box<[u8; COMMAND_EFFECTS_LEN]>);

impl Default for CommandEffects {
    fn default() -> Self {
        Self(Box::new([0; COMMAND_EFFECTS_LEN]))
    }
}

/// CSUPP: the command is supported.
pub const EFFECTS_CSUPP: u32 = 1 << 0;
/// LBCC: the command may change logical block content.
pub const EFFECTS_LBCC: u32 = 1 << 1;

impl CommandEffects {
    fn dword(&self, at: usize) -> u32 {
        let b = &self.0[at..at + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The effects dword of admin opcode `opcode`.
    pub fn admin(&self, opcode: u8) -> u32 {
        self.dword(4 * opcode as usize)
    }

    /// The effects dword of I/O opcode `opcode`.
    pub fn io(&self, opcode: u8) -> u32 {
        self.dword(1024 + 4 * opcode as usize)
    }

    /// Whether I/O opcode `opcode` is supported (CSUPP).
    pub fn io_supported(&self, opcode: u8) -> bool {
        self.io(opcode) & EFFECTS_CSUPP != 0
    }

    /// Sets the effects of admin opcode `opcode` (for device models).
    pub fn set_admin(&mut self, opcode: u8, effects: u32) {
        let at = 4 * opcode as usize;
        self.0[at..at + 4].copy_from_slice(&effects.to_le_bytes());
    }

    /// Sets the effects of I/O opcode `opcode` (for device models).
    pub fn set_io(&mut self, opcode: u8, effects: u32) {
        let at = 1024 + 4 * opcode as usize;
        self.0[at..at + 4].copy_from_slice(&effects.to_le_bytes());
    }
}

impl fmt::Debug for CommandEffects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let io: Vec<String> = (0..=255u8)
            .filter(|&op| self.io_supported(op))
            .map(|op| format!("{op:#04x}"))
            .collect();
        f.debug_struct("CommandEffects")
            .field("io_supported", &io)
            .finish_non_exhaustive()
    }
}

/// The NVM command set's Identify Controller data (CNS 06h, CSI 00h; NVM
/// Command Set 1.0, 4.1.5.3): the size limits of Verify, Write Zeroes,
/// Write Uncorrectable and Dataset Management.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentifyNvmController(pub Box<[u8; IDENTIFY_LEN]>);

impl Default for IdentifyNvmController {
    fn default() -> Self {
        Self(Box::new([0; IDENTIFY_LEN]))
    }
}

impl IdentifyNvmController {
    /// Verify Size Limit: `2^VSL` minimum memory pages per Verify (0: no
    /// limit).
    pub fn vsl(&self) -> u8 {
        self.0[0]
    }
    /// Write Zeroes Size Limit: `2^WZSL` minimum memory pages per Write
    /// Zeroes (0: no limit).
    pub fn wzsl(&self) -> u8 {
        self.0[1]
    }
    /// Write Uncorrectable Size Limit: `2^WUSL` minimum memory pages per
    /// Write Uncorrectable (0: no limit).
    pub fn wusl(&self) -> u8 {
        self.0[2]
    }
    /// Dataset Management Ranges Limit: ranges per deallocating Dataset
    /// Management (0: no limit beyond the command's 256).
    pub fn dmrl(&self) -> u8 {
        self.0[3]
    }
    /// Dataset Management Range Size Limit: blocks per range of a
    /// deallocating Dataset Management (0: no limit).
    pub fn dmrsl(&self) -> u32 {
        u32::from_le_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }
    /// Dataset Management Size Limit: blocks in all the ranges of a
    /// deallocating Dataset Management (0: no limit).
    pub fn dmsl(&self) -> u64 {
        let mut v = [0u8; 8];
        v.copy_from_slice(&self.0[8..16]);
        u64::from_le_bytes(v)
    }

    /// Sets every limit (for device models).
    pub fn set_limits(&mut self, vsl: u8, wzsl: u8, wusl: u8, dmrl: u8, dmrsl: u32, dmsl: u64) {
        self.0[0] = vsl;
        self.0[1] = wzsl;
        self.0[2] = wusl;
        self.0[3] = dmrl;
        self.0[4..8].copy_from_slice(&dmrsl.to_le_bytes());
        self.0[8..16].copy_from_slice(&dmsl.to_le_bytes());
    }
}

impl fmt::Debug for IdentifyNvmController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyNvmController")
            .field("vsl", &self.vsl())
            .field("wzsl", &self.wzsl())
            .field("wusl", &self.wusl())
            .field("dmrl", &self.dmrl())
            .field("dmrsl", &self.dmrsl())
            .field("dmsl", &self.dmsl())
            .finish()
    }
}

/// Blocks one command addresses at most: NLB is a 16-bit, 0-based field.
pub const MAX_BLOCKS_PER_COMMAND: u64 = 1 << 16;

/// The size limits of the optional commands, decoded (`None`: no limit
/// other than the command's fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmLimits {
    /// Bytes one Verify covers at most (VSL).
    pub verify_bytes: Option<u64>,
    /// Bytes one Write Zeroes covers at most (WZSL).
    pub write_zeroes_bytes: Option<u64>,
    /// Bytes one Write Uncorrectable covers at most (WUSL).
    pub write_uncorrectable_bytes: Option<u64>,
    /// Ranges in one deallocating Dataset Management (DMRL; 1 to 256).
    pub dsm_ranges: u16,
    /// Blocks per range of a deallocating Dataset Management (DMRSL).
    pub dsm_range_blocks: Option<u32>,
    /// Blocks in all the ranges of a deallocating Dataset Management
    /// (DMSL).
    pub dsm_blocks: Option<u64>,
}

impl Default for NvmLimits {
    /// No limits beyond the commands' fields (a controller without the
    /// NVM command set's Identify Controller data).
    fn default() -> Self {
        NvmLimits {
            verify_bytes: None,
            write_zeroes_bytes: None,
            write_uncorrectable_bytes: None,
            dsm_ranges: MAX_DSM_RANGES as u16,
            dsm_range_blocks: None,
            dsm_blocks: None,
        }
    }
}

impl NvmLimits {
    /// The limits `id` reports, for a controller whose minimum memory
    /// page (CAP.MPSMIN) is `min_page` bytes.
    pub fn from_identify(id: &IdentifyNvmController, min_page: u64) -> Self {
        // 2^n pages; a shift past 64 bits is no limit worth keeping.
        let pages = |n: u8| match n {
            0 => None,
            n => 1u64
                .checked_shl(u32::from(n))
                .and_then(|p| p.checked_mul(min_page)),
        };
        NvmLimits {
            verify_bytes: pages(id.vsl()),
            write_zeroes_bytes: pages(id.wzsl()),
            write_uncorrectable_bytes: pages(id.wusl()),
            dsm_ranges: match id.dmrl() {
                0 => MAX_DSM_RANGES as u16,
                n => u16::from(n),
            },
            dsm_range_blocks: (id.dmrsl() != 0).then(|| id.dmrsl()),
            dsm_blocks: (id.dmsl() != 0).then(|| id.dmsl()),
        }
    }

    /// Blocks of `block_size` bytes one command of at most `bytes` covers:
    /// 1 to 65536 (a limit smaller than a block still allows one).
    pub fn blocks_per_command(bytes: Option<u64>, block_size: u64) -> u64 {
        let by_size = bytes.map_or(u64::MAX, |b| b / block_size.max(1));
        by_size.clamp(1, MAX_BLOCKS_PER_COMMAND)
    }
}

/// Bytes of one Dataset Management range.
pub const DSM_RANGE_LEN: usize = 16;
/// Ranges one Dataset Management command takes at most (NR is 8 bits,
/// 0-based): one 4 KiB page of them.
pub const MAX_DSM_RANGES: usize = 256;

/// Context attributes of a Dataset Management range (NVM Command Set
/// 1.0, Figure 40): hints about how the blocks are used.
pub mod context {
    /// Access Frequency (bits 3:0): 0 no information, 1 typical, 2
    /// infrequent writes and reads, 3 infrequent writes and frequent
    /// reads, 4 frequent writes and infrequent reads, 5 frequent writes
    /// and reads, 6 one-time write.
    pub const fn access_frequency(f: u8) -> u32 {
        (f & 0xf) as u32
    }
    /// Access Latency (bits 5:4): 0 none, 1 idle, 2 normal, 3 low.
    pub const fn access_latency(l: u8) -> u32 {
        ((l & 0x3) as u32) << 4
    }
    /// Sequential Read Range (bit 8): the range is likely to be read
    /// sequentially, whole.
    pub const SEQUENTIAL_READ: u32 = 1 << 8;
    /// Sequential Write Range (bit 9): the range is likely to be written
    /// sequentially, whole.
    pub const SEQUENTIAL_WRITE: u32 = 1 << 9;
    /// Write Prepare (bit 10): the range is to be written soon.
    pub const WRITE_PREPARE: u32 = 1 << 10;
    /// Command Access Size (bits 31:24): blocks of the usual read or
    /// write to the range.
    pub const fn command_access_size(blocks: u8) -> u32 {
        (blocks as u32) << 24
    }
}

/// One Dataset Management range: its context attributes, length and
/// first block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DsmRange {
    /// The first block.
    pub lba: u64,
    /// Length in blocks (a count, not 0-based).
    pub blocks: u32,
    /// Context attributes (see [`context`]).
    pub attributes: u32,
}

impl DsmRange {
    /// `blocks` blocks from `lba`, without context attributes.
    pub const fn new(lba: u64, blocks: u32) -> Self {
        DsmRange {
            lba,
            blocks,
            attributes: 0,
        }
    }

    /// The same range with context attributes `attributes`.
    pub const fn with_attributes(mut self, attributes: u32) -> Self {
        self.attributes = attributes;
        self
    }

    /// The 16 bytes of the range: attributes (bytes 3:0), length (7:4),
    /// starting LBA (15:8).
    pub fn to_bytes(&self) -> [u8; DSM_RANGE_LEN] {
        let mut b = [0u8; DSM_RANGE_LEN];
        b[0..4].copy_from_slice(&self.attributes.to_le_bytes());
        b[4..8].copy_from_slice(&self.blocks.to_le_bytes());
        b[8..16].copy_from_slice(&self.lba.to_le_bytes());
        b
    }

    /// The range in `b`.
    pub fn from_bytes(b: &[u8; DSM_RANGE_LEN]) -> Self {
        let mut q = [0u8; 8];
        q.copy_from_slice(&b[8..16]);
        DsmRange {
            attributes: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            blocks: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            lba: u64::from_le_bytes(q),
        }
    }
}

/// The attributes of a Dataset Management command (dword 11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DsmAttributes {
    /// Attribute - Deallocate (AD): the ranges' blocks are deallocated
    /// (what they read as afterwards: Identify Namespace DLFEAT).
    pub deallocate: bool,
    /// Attribute - Integral Dataset for Read (IDR): the ranges are read as
    /// a whole.
    pub integral_read: bool,
    /// Attribute - Integral Dataset for Write (IDW): the ranges are
    /// written as a whole.
    pub integral_write: bool,
}

impl DsmAttributes {
    /// Deallocate only.
    pub const DEALLOCATE: DsmAttributes = DsmAttributes {
        deallocate: true,
        integral_read: false,
        integral_write: false,
    };

    /// Dword 11: IDR (bit 0), IDW (bit 1), AD (bit 2).
    pub const fn cdw11(self) -> u32 {
        self.integral_read as u32
            | (self.integral_write as u32) << 1
            | (self.deallocate as u32) << 2
    }

    /// The attributes of dword 11.
    pub const fn from_cdw11(cdw11: u32) -> Self {
        DsmAttributes {
            integral_read: cdw11 & 1 != 0,
            integral_write: cdw11 & 2 != 0,
            deallocate: cdw11 & 4 != 0,
        }
    }
}

/// Bytes of one Copy source range descriptor of format 0.
pub const COPY_RANGE_LEN: usize = 32;
/// Source ranges one Copy command takes at most (NR is 8 bits, 0-based).
pub const MAX_COPY_RANGES: usize = 256;

/// One Copy source range: `blocks` blocks from `lba` (1 to 65536; the
/// descriptor's NLB is 0-based).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CopyRange {
    /// The first source block.
    pub lba: u64,
    /// Length in blocks (a count, not 0-based).
    pub blocks: u32,
}

impl CopyRange {
    /// `blocks` blocks from `lba`.
    pub const fn new(lba: u64, blocks: u32) -> Self {
        CopyRange { lba, blocks }
    }

    /// The source range descriptor of format 0 (NVM Command Set 1.0,
    /// Figure 45): SLBA (bytes 15:8), NLB 0-based (17:16), the rest zero
    /// (no protection information). `blocks` must be 1 to 65536 (checked
    /// before the driver builds one; others are cut to 16 bits).
    pub fn to_bytes(&self) -> [u8; COPY_RANGE_LEN] {
        let mut b = [0u8; COPY_RANGE_LEN];
        b[8..16].copy_from_slice(&self.lba.to_le_bytes());
        let nlb = self.blocks.wrapping_sub(1) as u16;
        b[16..18].copy_from_slice(&nlb.to_le_bytes());
        b
    }

    /// The source range of a descriptor of format 0.
    pub fn from_bytes(b: &[u8; COPY_RANGE_LEN]) -> Self {
        let mut q = [0u8; 8];
        q.copy_from_slice(&b[8..16]);
        CopyRange {
            lba: u64::from_le_bytes(q),
            blocks: u32::from(u16::from_le_bytes([b[16], b[17]])) + 1,
        }
    }
}

/// The copy limits of a namespace (Identify Namespace, NVM Command Set
/// 1.0, Figure 97).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CopyLimits {
    /// Blocks in one source range at most (MSSRL; 0: no limit but the
    /// descriptor's 65536).
    pub mssrl: u16,
    /// Blocks in all the source ranges of one Copy at most (MCL; 0: no
    /// limit).
    pub mcl: u32,
    /// Source ranges in one Copy at most, minus one (MSRC, 0-based).
    pub msrc: u8,
}

impl CopyLimits {
    /// Blocks one source range may hold: 1 to 65536.
    pub fn max_range_blocks(&self) -> u64 {
        match self.mssrl {
            0 => MAX_BLOCKS_PER_COMMAND,
            n => u64::from(n),
        }
    }

    /// Blocks one Copy may copy, in all (`None`: no limit).
    pub fn max_blocks(&self) -> Option<u64> {
        (self.mcl != 0).then_some(u64::from(self.mcl))
    }

    /// Source ranges one Copy may have: 1 to 256.
    pub fn max_ranges(&self) -> usize {
        self.msrc as usize + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_commands_from_oncs_ocfs_and_the_effects_log() {
        // QEMU 7.2's controller: Compare, DSM, Write Zeroes, Copy (bits 0,
        // 2, 3, 8 of 0x15d), formats 0 and 1; Verify only in the log.
        let set = OptionalCommands::from_identify(0x15d, 0x3);
        assert!(set.contains(OptionalCommand::Compare));
        assert!(set.contains(OptionalCommand::Copy));
        assert!(!set.contains(OptionalCommand::Verify));
        assert!(!set.contains(OptionalCommand::WriteUncorrectable));
        assert!(!set.is_complete());
        let mut log = CommandEffects::default();
        log.set_io(io::VERIFY, EFFECTS_CSUPP);
        log.set_io(io::COPY, EFFECTS_CSUPP | EFFECTS_LBCC);
        let set = set.with_effects(&log, 0x3);
        assert!(set.contains(OptionalCommand::Verify));
        assert!(!set.contains(OptionalCommand::WriteUncorrectable));
        assert_eq!(
            format!("{set:?}"),
            "{Compare, DatasetManagement, WriteZeroes, Verify, Copy}"
        );
        // Copy needs descriptor format 0, from either source.
        let no_format_0 = OptionalCommands::from_identify(0x100, 0x2);
        assert!(!no_format_0.contains(OptionalCommand::Copy));
        assert!(!no_format_0
            .with_effects(&log, 0x2)
            .contains(OptionalCommand::Copy));
        assert!(OptionalCommands::from_identify(0x18f, 1).is_complete());
    }

    #[test]
    fn limits_from_the_nvm_identify_controller() {
        let mut id = IdentifyNvmController::default();
        assert_eq!(NvmLimits::from_identify(&id, 4096), NvmLimits::default());
        id.set_limits(7, 0, 3, 16, 0x3f_ffff, 1 << 20);
        let l = NvmLimits::from_identify(&id, 4096);
        assert_eq!(l.verify_bytes, Some(512 << 10));
        assert_eq!(l.write_zeroes_bytes, None);
        assert_eq!(l.write_uncorrectable_bytes, Some(32 << 10));
        assert_eq!(l.dsm_ranges, 16);
        assert_eq!(l.dsm_range_blocks, Some(0x3f_ffff));
        assert_eq!(l.dsm_blocks, Some(1 << 20));
        assert_eq!(NvmLimits::blocks_per_command(l.verify_bytes, 512), 1024);
        assert_eq!(NvmLimits::blocks_per_command(None, 512), 65536);
        assert_eq!(NvmLimits::blocks_per_command(Some(100), 4096), 1);
        // A device's nonsense: a shift past 64 bits is no limit.
        id.set_limits(200, 63, 0, 0, 0, 0);
        let l = NvmLimits::from_identify(&id, 4096);
        assert_eq!((l.verify_bytes, l.write_zeroes_bytes), (None, None));
        assert_eq!(l.dsm_ranges, 256);
    }

    #[test]
    fn range_layouts() {
        let r = DsmRange::new(0x1_0000_0002, 7)
            .with_attributes(context::SEQUENTIAL_READ | context::access_frequency(3));
        let b = r.to_bytes();
        assert_eq!(&b[0..4], &[3, 1, 0, 0]);
        assert_eq!(&b[4..8], &[7, 0, 0, 0]);
        assert_eq!(&b[8..16], &[2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(DsmRange::from_bytes(&b), r);
        let c = CopyRange::new(0x1234, 65536);
        let b = c.to_bytes();
        assert!(b[..8].iter().all(|&x| x == 0));
        assert_eq!(&b[8..10], &[0x34, 0x12]);
        assert_eq!(&b[16..18], &[0xff, 0xff], "NLB is 0-based");
        assert!(b[18..].iter().all(|&x| x == 0));
        assert_eq!(CopyRange::from_bytes(&b), c);
        let a = DsmAttributes {
            deallocate: true,
            integral_read: false,
            integral_write: true,
        };
        assert_eq!(a.cdw11(), 0b110);
        assert_eq!(DsmAttributes::from_cdw11(0b110), a);
        assert_eq!(DsmAttributes::DEALLOCATE.cdw11(), 4);
        let l = CopyLimits {
            mssrl: 128,
            mcl: 0,
            msrc: 127,
        };
        assert_eq!(
            (l.max_range_blocks(), l.max_blocks(), l.max_ranges()),
            (128, None, 128)
        );
        assert_eq!(CopyLimits::default().max_range_blocks(), 65536);
    }
}
