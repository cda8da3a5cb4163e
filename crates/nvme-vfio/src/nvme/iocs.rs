//! I/O command sets (NVMe Base 2.0, 5.17.2; Zoned Namespace Command Set
//! 1.1, 4.1.5): the Command Set Identifier of a namespace, the Namespace
//! Identification Descriptor list (CNS 03h), the I/O Command Set
//! Independent Identify Namespace data (CNS 08h), and the Zoned Namespace
//! Command Set's Identify Namespace (CNS 05h) and Identify Controller
//! (CNS 06h) data.
//!
//! All of it is the device's word: every parser reads a fixed 4096-byte
//! structure with bounds-checked accessors, and malformed contents (a
//! descriptor running past the end, a length that does not fit its type)
//! are skipped, never trusted.

use super::identify::IDENTIFY_LEN;

/// An I/O Command Set, by its Command Set Identifier (CSI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CommandSet {
    /// The NVM Command Set (CSI 00h): block reads and writes.
    #[default]
    Nvm,
    /// The Key Value Command Set (CSI 01h).
    KeyValue,
    /// The Zoned Namespace Command Set (CSI 02h): blocks in zones that are
    /// written sequentially.
    Zoned,
    /// Another (reserved or vendor specific) CSI.
    Other(u8),
}

impl CommandSet {
    /// The command set of Command Set Identifier `csi`.
    pub const fn from_csi(csi: u8) -> Self {
        match csi {
            0 => CommandSet::Nvm,
            1 => CommandSet::KeyValue,
            2 => CommandSet::Zoned,
            v => CommandSet::Other(v),
        }
    }

    /// The Command Set Identifier.
    pub const fn csi(self) -> u8 {
        match self {
            CommandSet::Nvm => 0,
            CommandSet::KeyValue => 1,
            CommandSet::Zoned => 2,
            CommandSet::Other(v) => v,
        }
    }

    /// A short lowercase name: `nvm`, `key-value`, `zoned`, or `csi-N`.
    pub fn short_name(self) -> String {
        match self {
            CommandSet::Nvm => "nvm".into(),
            CommandSet::KeyValue => "key-value".into(),
            CommandSet::Zoned => "zoned".into(),
            CommandSet::Other(v) => format!("csi-{v}"),
        }
    }
}

impl core::fmt::Display for CommandSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CommandSet::Nvm => f.write_str("NVM"),
            CommandSet::KeyValue => f.write_str("Key Value"),
            CommandSet::Zoned => f.write_str("Zoned Namespace"),
            CommandSet::Other(v) => write!(f, "CSI {v:#04x}"),
        }
    }
}

/// Namespace Identifier Types (NIDT) of the descriptor list.
pub mod nidt {
    /// IEEE Extended Unique Identifier, 8 bytes.
    pub const EUI64: u8 = 0x01;
    /// Namespace Globally Unique Identifier, 16 bytes.
    pub const NGUID: u8 = 0x02;
    /// Namespace UUID, 16 bytes.
    pub const UUID: u8 = 0x03;
    /// Command Set Identifier, 1 byte.
    pub const CSI: u8 = 0x04;
}

/// The Namespace Identification Descriptor list (CNS 03h), parsed: the
/// identifiers the controller reported, each at most once (the first of a
/// type counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceIds {
    /// IEEE Extended Unique Identifier.
    pub eui64: Option<[u8; 8]>,
    /// Namespace Globally Unique Identifier.
    pub nguid: Option<[u8; 16]>,
    /// Namespace UUID.
    pub uuid: Option<[u8; 16]>,
    /// Command Set Identifier.
    pub csi: Option<u8>,
    /// Descriptors that were skipped: an unknown type, a length that does
    /// not fit the type, or one running past the end of the list.
    pub skipped: u32,
}

/// Length of a descriptor's header (NIDT, NIDL, two reserved bytes).
const NID_HEADER: usize = 4;

impl NamespaceIds {
    /// Parses a descriptor list. The list ends at a descriptor of type 0 or
    /// at the end of the data; a descriptor whose identifier would run past
    /// the end stops the walk (and is counted as skipped).
    pub fn parse(b: &[u8]) -> Self {
        let mut ids = NamespaceIds::default();
        let mut at = 0usize;
        while let Some(header) = b.get(at..at + NID_HEADER) {
            let (t, len) = (header[0], header[1] as usize);
            if t == 0 {
                break;
            }
            let start = at + NID_HEADER;
            let Some(id) = b.get(start..start + len) else {
                ids.skipped += 1;
                break;
            };
            let taken = match (t, len) {
                (nidt::EUI64, 8) => set_once(&mut ids.eui64, id),
                (nidt::NGUID, 16) => set_once(&mut ids.nguid, id),
                (nidt::UUID, 16) => set_once(&mut ids.uuid, id),
                (nidt::CSI, 1) => {
                    ids.csi.get_or_insert(id[0]);
                    true
                }
                _ => false,
            };
            if !taken {
                ids.skipped += 1;
            }
            at = start + len;
        }
        ids
    }

    /// The namespace's command set, if the list says (a CSI descriptor).
    pub fn command_set(&self) -> Option<CommandSet> {
        self.csi.map(CommandSet::from_csi)
    }
}

/// Stores `id` into `slot` if it is still empty; whether the length fit.
fn set_once<const N: usize>(slot: &mut Option<[u8; N]>, id: &[u8]) -> bool {
    match <[u8; N]>::try_from(id) {
        Ok(v) => {
            slot.get_or_insert(v);
            true
        }
        Err(_) => false,
    }
}

/// Builds a descriptor list (for device models): each `(NIDT, identifier)`
/// in order, then the terminating zeroes. Descriptors that do not fit are
/// left out.
pub fn build_descriptors(descriptors: &[(u8, &[u8])]) -> Box<[u8; IDENTIFY_LEN]> {
    let mut b = Box::new([0u8; IDENTIFY_LEN]);
    let mut at = 0usize;
    for &(t, id) in descriptors {
        let Ok(len) = u8::try_from(id.len()) else {
            continue;
        };
        let end = at + NID_HEADER + id.len();
        // Room for this one and for a terminating header.
        if end + NID_HEADER > IDENTIFY_LEN {
            break;
        }
        b[at] = t;
        b[at + 1] = len;
        b[at + NID_HEADER..end].copy_from_slice(id);
        at = end;
    }
    b
}

fn le16(b: &[u8; IDENTIFY_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8; IDENTIFY_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8; IDENTIFY_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The I/O Command Set Independent Identify Namespace data (CNS 08h).
#[derive(Clone, PartialEq, Eq)]
pub struct IdentifyNamespaceIndependent(pub Box<[u8; IDENTIFY_LEN]>);

impl Default for IdentifyNamespaceIndependent {
    fn default() -> Self {
        Self(Box::new([0; IDENTIFY_LEN]))
    }
}

impl IdentifyNamespaceIndependent {
    /// Namespace Features.
    pub fn nsfeat(&self) -> u8 {
        self.0[0]
    }
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities (bit 0:
    /// may be attached to two or more controllers).
    pub fn nmic(&self) -> u8 {
        self.0[1]
    }
    /// Namespace Attributes (bit 0: write protected).
    pub fn nsattr(&self) -> u8 {
        self.0[8]
    }
    /// Endurance Group Identifier.
    pub fn endgid(&self) -> u16 {
        le16(&self.0, 12)
    }
    /// Namespace Status (bit 0: ready).
    pub fn nstat(&self) -> u8 {
        self.0[14]
    }
    /// Whether the namespace is ready (NSTAT bit 0).
    pub fn ready(&self) -> bool {
        self.nstat() & 1 != 0
    }
    /// Whether the namespace is write protected (NSATTR bit 0).
    pub fn write_protected(&self) -> bool {
        self.nsattr() & 1 != 0
    }
    /// Whether the data is all zeroes: what a controller returns for an
    /// inactive namespace ID.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&b| b == 0)
    }

    /// Sets NMIC, NSATTR and NSTAT (for device models).
    pub fn set(&mut self, nmic: u8, nsattr: u8, nstat: u8) {
        self.0[1] = nmic;
        self.0[8] = nsattr;
        self.0[14] = nstat;
    }
}

impl core::fmt::Debug for IdentifyNamespaceIndependent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyNamespaceIndependent")
            .field("nmic", &self.nmic())
            .field("nsattr", &self.nsattr())
            .field("nstat", &self.nstat())
            .finish_non_exhaustive()
    }
}

/// Offset of LBA Format Extension 0 in the zoned Identify Namespace data.
const LBAFE: usize = 2816;
/// Size of one LBA Format Extension.
const LBAFE_LEN: usize = 16;
/// LBA Format Extensions in the structure (one per LBA format).
const LBAFE_COUNT: usize = 64;

/// The Zoned Namespace Command Set's Identify Namespace data (CNS 05h,
/// CSI 02h).
#[derive(Clone, PartialEq, Eq)]
pub struct IdentifyZonedNamespace(pub Box<[u8; IDENTIFY_LEN]>);

impl Default for IdentifyZonedNamespace {
    fn default() -> Self {
        Self(Box::new([0; IDENTIFY_LEN]))
    }
}

/// A 0-based resource count where FFFFFFFFh means "no limit".
fn resource_limit(raw: u32) -> Option<u32> {
    // raw + 1 cannot overflow: u32::MAX is "no limit".
    (raw != u32::MAX).then(|| raw + 1)
}

impl IdentifyZonedNamespace {
    /// Zone Operation Characteristics (bit 0: variable zone capacity, bit
    /// 1: zone active excursions).
    pub fn zoc(&self) -> u16 {
        le16(&self.0, 0)
    }
    /// Optional Zoned Command Support (bit 0: reads across zone
    /// boundaries).
    pub fn ozcs(&self) -> u16 {
        le16(&self.0, 2)
    }
    /// Maximum Active Resources, as reported (0-based, FFFFFFFFh: no
    /// limit).
    pub fn mar(&self) -> u32 {
        le32(&self.0, 4)
    }
    /// Maximum Open Resources, as reported (0-based, FFFFFFFFh: no limit).
    pub fn mor(&self) -> u32 {
        le32(&self.0, 8)
    }
    /// Most zones that can be active at once (`None`: no limit).
    pub fn max_active(&self) -> Option<u32> {
        resource_limit(self.mar())
    }
    /// Most zones that can be open at once (`None`: no limit).
    pub fn max_open(&self) -> Option<u32> {
        resource_limit(self.mor())
    }
    /// Whether reads may cross zone boundaries (OZCS bit 0).
    pub fn reads_cross_zones(&self) -> bool {
        self.ozcs() & 1 != 0
    }
    /// Zone Size of LBA format `format` (its LBA Format Extension's ZSZE),
    /// in logical blocks; `None` for an index past the 64 extensions.
    pub fn zone_size(&self, format: usize) -> Option<u64> {
        (format < LBAFE_COUNT).then(|| le64(&self.0, LBAFE + LBAFE_LEN * format))
    }
    /// Zone Descriptor Extension Size of LBA format `format`, in bytes.
    pub fn zone_descriptor_extension(&self, format: usize) -> Option<u32> {
        (format < LBAFE_COUNT).then(|| u32::from(self.0[LBAFE + LBAFE_LEN * format + 8]) * 64)
    }

    /// Sets MAR and MOR as reported (0-based; FFFFFFFFh: no limit), for
    /// device models.
    pub fn set_resources(&mut self, mar: u32, mor: u32) {
        self.0[4..8].copy_from_slice(&mar.to_le_bytes());
        self.0[8..12].copy_from_slice(&mor.to_le_bytes());
    }
    /// Sets the zone size of LBA format `format` (ignored past 64), for
    /// device models.
    pub fn set_zone_size(&mut self, format: usize, blocks: u64) {
        if format < LBAFE_COUNT {
            let at = LBAFE + LBAFE_LEN * format;
            self.0[at..at + 8].copy_from_slice(&blocks.to_le_bytes());
        }
    }
}

impl core::fmt::Debug for IdentifyZonedNamespace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyZonedNamespace")
            .field("mar", &format_args!("{:#x}", self.mar()))
            .field("mor", &format_args!("{:#x}", self.mor()))
            .field("zone_size_0", &self.zone_size(0))
            .finish_non_exhaustive()
    }
}

/// The Zoned Namespace Command Set's Identify Controller data (CNS 06h,
/// CSI 02h).
#[derive(Clone, PartialEq, Eq)]
pub struct IdentifyZonedController(pub Box<[u8; IDENTIFY_LEN]>);

impl Default for IdentifyZonedController {
    fn default() -> Self {
        Self(Box::new([0; IDENTIFY_LEN]))
    }
}

impl IdentifyZonedController {
    /// Zone Append Size Limit: `2^ZASL` minimum memory pages per Zone
    /// Append; 0 means MDTS applies.
    pub fn zasl(&self) -> u8 {
        self.0[0]
    }
}

impl core::fmt::Debug for IdentifyZonedController {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyZonedController")
            .field("zasl", &self.zasl())
            .finish_non_exhaustive()
    }
}

/// The NVM Command Set's Identify Namespace data (CNS 05h, CSI 00h): the
/// storage tag mask, protection information capabilities and the extended
/// LBA formats (storage tag size and protection information format of
/// each LBA format).
#[derive(Clone, PartialEq, Eq)]
pub struct IdentifyNvmNamespace(pub Box<[u8; IDENTIFY_LEN]>);

impl Default for IdentifyNvmNamespace {
    fn default() -> Self {
        Self(Box::new([0; IDENTIFY_LEN]))
    }
}

/// Offset of the first Extended LBA Format.
const ELBAF: usize = 12;

impl IdentifyNvmNamespace {
    /// Protection Information Capabilities (byte 8).
    pub fn pic(&self) -> u8 {
        self.0[8]
    }
    /// Extended LBA format `i` (0 to 63): its storage tag size in bits
    /// (STS) and protection information format (PIF: 0 16-bit guard, 1
    /// 32-bit, 2 64-bit).
    pub fn elbaf(&self, i: usize) -> Option<(u8, u8)> {
        if i >= 64 {
            return None;
        }
        let d = le32(&self.0, ELBAF + 4 * i);
        Some(((d & 0x7f) as u8, ((d >> 7) & 0x3) as u8))
    }
    /// Sets extended LBA format `i` (for device models).
    pub fn set_elbaf(&mut self, i: usize, sts: u8, pif: u8) {
        if i < 64 {
            let d = (sts as u32 & 0x7f) | (pif as u32 & 0x3) << 7;
            self.0[ELBAF + 4 * i..ELBAF + 4 * i + 4].copy_from_slice(&d.to_le_bytes());
        }
    }
}

impl core::fmt::Debug for IdentifyNvmNamespace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdentifyNvmNamespace")
            .field("pic", &self.pic())
            .field("elbaf0", &self.elbaf(0))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_set_identifiers_round_trip() {
        for csi in 0..=255u8 {
            assert_eq!(CommandSet::from_csi(csi).csi(), csi);
        }
        assert_eq!(CommandSet::from_csi(2), CommandSet::Zoned);
        assert_eq!(CommandSet::from_csi(9), CommandSet::Other(9));
        assert_eq!(CommandSet::Zoned.to_string(), "Zoned Namespace");
        assert_eq!(CommandSet::Other(9).short_name(), "csi-9");
    }

    #[test]
    fn descriptor_list_as_qemu_reports_it() {
        let uuid = [0x11u8; 16];
        let b = build_descriptors(&[(nidt::UUID, &uuid), (nidt::CSI, &[2])]);
        // UUID header and 16 bytes, then the CSI descriptor.
        assert_eq!(&b[..4], &[3, 16, 0, 0]);
        assert_eq!(&b[20..25], &[4, 1, 0, 0, 2]);
        let ids = NamespaceIds::parse(&b[..]);
        assert_eq!(ids.uuid, Some(uuid));
        assert_eq!(ids.command_set(), Some(CommandSet::Zoned));
        assert_eq!((ids.eui64, ids.nguid, ids.skipped), (None, None, 0));
    }

    #[test]
    fn malformed_descriptors_are_skipped_not_trusted() {
        // A CSI descriptor with a length of 2, an unknown type, an EUI64
        // that is too short, then a good CSI descriptor.
        let mut b = [0u8; IDENTIFY_LEN];
        b[..6].copy_from_slice(&[4, 2, 0, 0, 1, 1]);
        b[6..11].copy_from_slice(&[0x7f, 1, 0, 0, 9]);
        b[11..19].copy_from_slice(&[1, 4, 0, 0, 1, 2, 3, 4]);
        b[19..24].copy_from_slice(&[4, 1, 0, 0, 2]);
        let ids = NamespaceIds::parse(&b);
        assert_eq!(ids.command_set(), Some(CommandSet::Zoned));
        assert_eq!(ids.eui64, None);
        assert_eq!(ids.skipped, 3);

        // A descriptor that runs past the end stops the walk.
        let mut b = [0u8; IDENTIFY_LEN];
        b[..4].copy_from_slice(&[4, 1, 0, 0]);
        b[4] = 2;
        b[IDENTIFY_LEN - 8..IDENTIFY_LEN - 4].copy_from_slice(&[3, 16, 0, 0]);
        // Filler descriptors of an unknown type up to the cut-off UUID.
        let mut at = 5;
        while at < IDENTIFY_LEN - 8 {
            let len = (IDENTIFY_LEN - 8 - at - 4).min(255);
            b[at..at + 2].copy_from_slice(&[0x80, len as u8]);
            at += 4 + len;
        }
        assert_eq!(at, IDENTIFY_LEN - 8);
        let ids = NamespaceIds::parse(&b);
        assert_eq!((ids.csi, ids.uuid), (Some(2), None));
        assert_eq!(ids.skipped as usize, (IDENTIFY_LEN - 13).div_ceil(259) + 1);

        // A header cut off by the end of the data, and a list with no
        // terminator at all, end without a panic.
        let b = [4u8, 1, 0];
        assert_eq!(NamespaceIds::parse(&b), NamespaceIds::default());
        let b = [4u8, 1, 0, 0, 2, 4, 1, 0, 0];
        let ids = NamespaceIds::parse(&b);
        assert_eq!((ids.csi, ids.skipped), (Some(2), 1));
        let full = [0xffu8; IDENTIFY_LEN];
        let ids = NamespaceIds::parse(&full);
        assert_eq!(ids.csi, None);
        assert_eq!(ids.skipped, 16);
    }

    #[test]
    fn only_the_first_of_a_type_counts() {
        let b = build_descriptors(&[(nidt::CSI, &[2]), (nidt::CSI, &[0])]);
        assert_eq!(NamespaceIds::parse(&b[..]).csi, Some(2));
    }

    #[test]
    fn zoned_namespace_fields() {
        let mut z = IdentifyZonedNamespace::default();
        z.set_resources(13, 7);
        z.set_zone_size(0, 8192);
        z.set_zone_size(63, 1);
        z.set_zone_size(64, 5);
        assert_eq!(z.max_active(), Some(14));
        assert_eq!(z.max_open(), Some(8));
        assert_eq!(z.zone_size(0), Some(8192));
        assert_eq!(z.zone_size(63), Some(1));
        assert_eq!(z.zone_size(64), None);
        assert_eq!(z.zone_descriptor_extension(0), Some(0));
        // MAR/MOR of FFFFFFFFh are "no limit", 0 is one zone.
        z.set_resources(u32::MAX, 0);
        assert_eq!((z.max_active(), z.max_open()), (None, Some(1)));
        assert_eq!(&z.0[2816..2824], &8192u64.to_le_bytes());
    }

    #[test]
    fn independent_namespace_fields() {
        let mut n = IdentifyNamespaceIndependent::default();
        assert!(n.is_empty());
        n.set(1, 1, 1);
        assert!(n.ready() && n.write_protected());
        assert_eq!(n.nmic(), 1);
        assert!(!n.is_empty());
    }
}
