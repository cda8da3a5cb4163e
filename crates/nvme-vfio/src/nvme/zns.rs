//! The Zoned Namespace Command Set's I/O commands and data (ZNS Command
//! Set 1.1, 3.4): Zone Management Send (opcode 79h) and its Zone Send
//! Actions, Zone Management Receive (7Ah) with its Report Zones data
//! structure (a 64-byte header, then 64-byte Zone Descriptors), and Zone
//! Append (7Dh), whose completion dwords 0 and 1 hold the LBA where the
//! data was written.
//!
//! A report is the device's word: [`ZoneReport::parse`] reads at most as
//! many descriptors as the buffer holds, whatever the header claims, and
//! keeps every field as reported (an unknown zone state or type stays
//! [`ZoneState::Reserved`] or [`ZoneType::Other`]); checking descriptors
//! against the namespace is the caller's job.

use core::fmt;

/// Bytes of the Report Zones header (Number of Zones, then reserved).
pub const REPORT_HEADER_LEN: usize = 64;
/// Bytes of one Zone Descriptor.
pub const ZONE_DESCRIPTOR_LEN: usize = 64;

/// A Zone Send Action (Zone Management Send CDW13 bits 7:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZoneAction {
    /// Close Zone (01h): an open zone becomes Closed, releasing its open
    /// resource (it stays active).
    Close,
    /// Finish Zone (02h): the zone becomes Full (its write pointer moves
    /// to its end), releasing its resources.
    Finish,
    /// Open Zone (03h): the zone becomes Explicitly Opened.
    Open,
    /// Reset Zone (04h): the zone becomes Empty, its write pointer back at
    /// its start; its blocks are deallocated.
    Reset,
    /// Offline Zone (05h): a Read Only zone becomes Offline.
    Offline,
}

impl ZoneAction {
    /// Every action, in the order of their values.
    pub const ALL: [ZoneAction; 5] = [
        ZoneAction::Close,
        ZoneAction::Finish,
        ZoneAction::Open,
        ZoneAction::Reset,
        ZoneAction::Offline,
    ];

    /// The Zone Send Action value.
    pub const fn zsa(self) -> u8 {
        match self {
            ZoneAction::Close => 0x01,
            ZoneAction::Finish => 0x02,
            ZoneAction::Open => 0x03,
            ZoneAction::Reset => 0x04,
            ZoneAction::Offline => 0x05,
        }
    }

    /// The action of Zone Send Action value `zsa`, if it is one of these.
    pub const fn from_zsa(zsa: u8) -> Option<Self> {
        Some(match zsa {
            0x01 => ZoneAction::Close,
            0x02 => ZoneAction::Finish,
            0x03 => ZoneAction::Open,
            0x04 => ZoneAction::Reset,
            0x05 => ZoneAction::Offline,
            _ => return None,
        })
    }

    /// The specification's name: `Close Zone`, `Open Zone`, ...
    pub const fn name(self) -> &'static str {
        match self {
            ZoneAction::Close => "Close Zone",
            ZoneAction::Finish => "Finish Zone",
            ZoneAction::Open => "Open Zone",
            ZoneAction::Reset => "Reset Zone",
            ZoneAction::Offline => "Offline Zone",
        }
    }
}

impl fmt::Display for ZoneAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A zone's state (Zone Descriptor byte 1, bits 7:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZoneState {
    /// ZSE (1h): nothing written, the write pointer at the zone's start.
    Empty,
    /// ZSIO (2h): opened by a write.
    ImplicitlyOpened,
    /// ZSEO (3h): opened by Open Zone.
    ExplicitlyOpened,
    /// ZSC (4h): written in part, not open.
    Closed,
    /// ZSRO (Dh): readable only (the zone's media wore out).
    ReadOnly,
    /// ZSF (Eh): written to its capacity, or finished.
    Full,
    /// ZSO (Fh): neither readable nor writable.
    Offline,
    /// A reserved value, as reported.
    Reserved(u8),
}

impl ZoneState {
    /// The state of Zone State value `v` (4 bits).
    pub const fn from_raw(v: u8) -> Self {
        match v & 0xf {
            0x1 => ZoneState::Empty,
            0x2 => ZoneState::ImplicitlyOpened,
            0x3 => ZoneState::ExplicitlyOpened,
            0x4 => ZoneState::Closed,
            0xd => ZoneState::ReadOnly,
            0xe => ZoneState::Full,
            0xf => ZoneState::Offline,
            r => ZoneState::Reserved(r),
        }
    }

    /// The Zone State value.
    pub const fn raw(self) -> u8 {
        match self {
            ZoneState::Empty => 0x1,
            ZoneState::ImplicitlyOpened => 0x2,
            ZoneState::ExplicitlyOpened => 0x3,
            ZoneState::Closed => 0x4,
            ZoneState::ReadOnly => 0xd,
            ZoneState::Full => 0xe,
            ZoneState::Offline => 0xf,
            ZoneState::Reserved(r) => r & 0xf,
        }
    }

    /// Whether the zone is open (implicitly or explicitly): it holds an
    /// open resource and an active one.
    pub const fn is_open(self) -> bool {
        matches!(
            self,
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened
        )
    }

    /// Whether the zone is active (open or closed): it holds an active
    /// resource.
    pub const fn is_active(self) -> bool {
        self.is_open() || matches!(self, ZoneState::Closed)
    }

    /// Whether the zone's write pointer is valid (Empty, open or Closed).
    pub const fn has_write_pointer(self) -> bool {
        matches!(self, ZoneState::Empty) || self.is_active()
    }

    /// nvme-cli's name for the state: `EMPTY`, `IMP_OPENED`, `EXP_OPENED`,
    /// `CLOSED`, `READONLY`, `FULL`, `OFFLINE`, or `Unknown State`.
    pub const fn cli_name(self) -> &'static str {
        match self {
            ZoneState::Empty => "EMPTY",
            ZoneState::ImplicitlyOpened => "IMP_OPENED",
            ZoneState::ExplicitlyOpened => "EXP_OPENED",
            ZoneState::Closed => "CLOSED",
            ZoneState::ReadOnly => "READONLY",
            ZoneState::Full => "FULL",
            ZoneState::Offline => "OFFLINE",
            ZoneState::Reserved(_) => "Unknown State",
        }
    }
}

impl fmt::Display for ZoneState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZoneState::Empty => f.write_str("Empty"),
            ZoneState::ImplicitlyOpened => f.write_str("Implicitly Opened"),
            ZoneState::ExplicitlyOpened => f.write_str("Explicitly Opened"),
            ZoneState::Closed => f.write_str("Closed"),
            ZoneState::ReadOnly => f.write_str("Read Only"),
            ZoneState::Full => f.write_str("Full"),
            ZoneState::Offline => f.write_str("Offline"),
            ZoneState::Reserved(v) => write!(f, "reserved state {v:#x}"),
        }
    }
}

/// A zone's type (Zone Descriptor byte 0, bits 3:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ZoneType {
    /// Sequential Write Required (2h), the only type ZNS 1.1 defines.
    SequentialWriteRequired,
    /// Another (reserved) value, as reported.
    Other(u8),
}

impl ZoneType {
    /// The type of Zone Type value `v` (4 bits).
    pub const fn from_raw(v: u8) -> Self {
        match v & 0xf {
            0x2 => ZoneType::SequentialWriteRequired,
            r => ZoneType::Other(r),
        }
    }

    /// The Zone Type value.
    pub const fn raw(self) -> u8 {
        match self {
            ZoneType::SequentialWriteRequired => 0x2,
            ZoneType::Other(r) => r & 0xf,
        }
    }

    /// nvme-cli's name for the type: `SEQWRITE_REQ` or `Unknown`.
    pub const fn cli_name(self) -> &'static str {
        match self {
            ZoneType::SequentialWriteRequired => "SEQWRITE_REQ",
            ZoneType::Other(_) => "Unknown",
        }
    }
}

/// Which zones a report lists (Zone Management Receive's Zone Receive
/// Action Specific Field for Report Zones).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ReportFilter {
    /// Every zone (0h).
    #[default]
    All,
    /// Empty zones (1h).
    Empty,
    /// Implicitly Opened zones (2h).
    ImplicitlyOpened,
    /// Explicitly Opened zones (3h).
    ExplicitlyOpened,
    /// Closed zones (4h).
    Closed,
    /// Full zones (5h).
    Full,
    /// Read Only zones (6h).
    ReadOnly,
    /// Offline zones (7h).
    Offline,
}

impl ReportFilter {
    /// The Zone Receive Action Specific Field value.
    pub const fn zrasf(self) -> u8 {
        match self {
            ReportFilter::All => 0x0,
            ReportFilter::Empty => 0x1,
            ReportFilter::ImplicitlyOpened => 0x2,
            ReportFilter::ExplicitlyOpened => 0x3,
            ReportFilter::Closed => 0x4,
            ReportFilter::Full => 0x5,
            ReportFilter::ReadOnly => 0x6,
            ReportFilter::Offline => 0x7,
        }
    }

    /// The filter of value `zrasf`, if it is one of these.
    pub const fn from_zrasf(zrasf: u8) -> Option<Self> {
        Some(match zrasf {
            0x0 => ReportFilter::All,
            0x1 => ReportFilter::Empty,
            0x2 => ReportFilter::ImplicitlyOpened,
            0x3 => ReportFilter::ExplicitlyOpened,
            0x4 => ReportFilter::Closed,
            0x5 => ReportFilter::Full,
            0x6 => ReportFilter::ReadOnly,
            0x7 => ReportFilter::Offline,
            _ => return None,
        })
    }

    /// Whether a zone in `state` is listed.
    pub const fn matches(self, state: ZoneState) -> bool {
        match self {
            ReportFilter::All => true,
            ReportFilter::Empty => matches!(state, ZoneState::Empty),
            ReportFilter::ImplicitlyOpened => matches!(state, ZoneState::ImplicitlyOpened),
            ReportFilter::ExplicitlyOpened => matches!(state, ZoneState::ExplicitlyOpened),
            ReportFilter::Closed => matches!(state, ZoneState::Closed),
            ReportFilter::Full => matches!(state, ZoneState::Full),
            ReportFilter::ReadOnly => matches!(state, ZoneState::ReadOnly),
            ReportFilter::Offline => matches!(state, ZoneState::Offline),
        }
    }
}

/// Zone Attributes (Zone Descriptor byte 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ZoneAttributes(pub u8);

impl ZoneAttributes {
    /// ZFC (bit 0): the controller finished the zone (Zone Finished by
    /// Controller).
    pub const fn finished_by_controller(self) -> bool {
        self.0 & 1 != 0
    }
    /// FZR (bit 1): Finish Zone Recommended.
    pub const fn finish_recommended(self) -> bool {
        self.0 & 2 != 0
    }
    /// RZR (bit 2): Reset Zone Recommended.
    pub const fn reset_recommended(self) -> bool {
        self.0 & 4 != 0
    }
    /// ZDEV (bit 7): the Zone Descriptor Extension is valid.
    pub const fn extension_valid(self) -> bool {
        self.0 & 0x80 != 0
    }
}

/// One Zone Descriptor of a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ZoneDescriptor {
    /// Zone Type.
    pub zone_type: ZoneType,
    /// Zone State.
    pub state: ZoneState,
    /// Zone Attributes.
    pub attributes: ZoneAttributes,
    /// Zone Attributes Information (byte 3).
    pub attributes_info: u8,
    /// Zone Capacity: the blocks that can be written, at most the zone
    /// size.
    pub capacity: u64,
    /// Zone Start Logical Block Address.
    pub start: u64,
    /// Write Pointer: the next block a write must start at (meaningful
    /// for Empty, open and Closed zones).
    pub write_pointer: u64,
}

fn le64(b: &[u8; ZONE_DESCRIPTOR_LEN], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

impl ZoneDescriptor {
    /// Parses a descriptor.
    pub fn from_bytes(b: &[u8; ZONE_DESCRIPTOR_LEN]) -> Self {
        ZoneDescriptor {
            zone_type: ZoneType::from_raw(b[0]),
            state: ZoneState::from_raw(b[1] >> 4),
            attributes: ZoneAttributes(b[2]),
            attributes_info: b[3],
            capacity: le64(b, 8),
            start: le64(b, 16),
            write_pointer: le64(b, 24),
        }
    }

    /// The descriptor's bytes (for device models).
    pub fn to_bytes(&self) -> [u8; ZONE_DESCRIPTOR_LEN] {
        let mut b = [0u8; ZONE_DESCRIPTOR_LEN];
        b[0] = self.zone_type.raw();
        b[1] = self.state.raw() << 4;
        b[2] = self.attributes.0;
        b[3] = self.attributes_info;
        b[8..16].copy_from_slice(&self.capacity.to_le_bytes());
        b[16..24].copy_from_slice(&self.start.to_le_bytes());
        b[24..32].copy_from_slice(&self.write_pointer.to_le_bytes());
        b
    }

    /// Blocks written so far (write pointer less start), for a zone whose
    /// write pointer is valid and not before its start.
    pub fn written(&self) -> Option<u64> {
        if !self.state.has_write_pointer() {
            return None;
        }
        self.write_pointer.checked_sub(self.start)
    }
}

/// A Report Zones data buffer, parsed: the header's Number of Zones and
/// the descriptors the buffer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneReport {
    /// Number of Zones as the header reports it: with Partial Report, the
    /// descriptors in this buffer; without, every zone that matches from
    /// the starting LBA to the end of the namespace.
    pub reported: u64,
    /// The descriptors, at most as many as the buffer holds and as the
    /// header reports.
    pub zones: Vec<ZoneDescriptor>,
}

impl ZoneReport {
    /// Most descriptors a buffer of `len` bytes holds.
    pub const fn capacity(len: usize) -> usize {
        len.saturating_sub(REPORT_HEADER_LEN) / ZONE_DESCRIPTOR_LEN
    }

    /// Parses a report of `b.len()` bytes (an empty report if it is
    /// shorter than the header).
    pub fn parse(b: &[u8]) -> Self {
        let Some(header) = b.get(..8) else {
            return ZoneReport {
                reported: 0,
                zones: Vec::new(),
            };
        };
        let mut n = [0u8; 8];
        n.copy_from_slice(header);
        let reported = u64::from_le_bytes(n);
        let fits = Self::capacity(b.len());
        let take = usize::try_from(reported).map_or(fits, |r| r.min(fits));
        let zones = b[REPORT_HEADER_LEN..]
            .chunks_exact(ZONE_DESCRIPTOR_LEN)
            .take(take)
            .filter_map(|d| <&[u8; ZONE_DESCRIPTOR_LEN]>::try_from(d).ok())
            .map(ZoneDescriptor::from_bytes)
            .collect();
        ZoneReport { reported, zones }
    }

    /// Builds a report of `len` bytes (for device models): the header
    /// with `reported`, then as many of `zones` as fit.
    pub fn build(reported: u64, zones: &[ZoneDescriptor], len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        if let Some(h) = b.get_mut(..8) {
            h.copy_from_slice(&reported.to_le_bytes());
        }
        for (slot, z) in b
            .get_mut(REPORT_HEADER_LEN..)
            .unwrap_or_default()
            .chunks_exact_mut(ZONE_DESCRIPTOR_LEN)
            .zip(zones)
        {
            slot.copy_from_slice(&z.to_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(start: u64, state: ZoneState, wp: u64) -> ZoneDescriptor {
        ZoneDescriptor {
            zone_type: ZoneType::SequentialWriteRequired,
            state,
            attributes: ZoneAttributes::default(),
            attributes_info: 0,
            capacity: 1024,
            start,
            write_pointer: wp,
        }
    }

    #[test]
    fn descriptor_layout_as_the_specification_has_it() {
        let mut z = zone(0x1_0000_0400, ZoneState::Closed, 0x1_0000_0410);
        z.attributes = ZoneAttributes(0x84);
        let b = z.to_bytes();
        assert_eq!(&b[..4], &[0x02, 0x40, 0x84, 0x00]);
        assert_eq!(&b[8..16], &1024u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x1_0000_0400u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x1_0000_0410u64.to_le_bytes());
        assert!(b[32..].iter().all(|&x| x == 0));
        let back = ZoneDescriptor::from_bytes(&b);
        assert_eq!(back, z);
        assert!(back.attributes.reset_recommended() && back.attributes.extension_valid());
        assert!(!back.attributes.finished_by_controller());
        assert_eq!(back.written(), Some(16));
    }

    #[test]
    fn states_types_actions_and_filters_round_trip() {
        for v in 0..16u8 {
            assert_eq!(ZoneState::from_raw(v).raw(), v);
            assert_eq!(ZoneType::from_raw(v).raw(), v);
        }
        assert_eq!(ZoneState::from_raw(0xe), ZoneState::Full);
        assert_eq!(ZoneState::from_raw(0x5), ZoneState::Reserved(5));
        assert_eq!(ZoneState::Reserved(5).cli_name(), "Unknown State");
        assert_eq!(ZoneState::ImplicitlyOpened.cli_name(), "IMP_OPENED");
        assert!(ZoneState::Closed.is_active() && !ZoneState::Closed.is_open());
        assert!(!ZoneState::Full.has_write_pointer());
        for a in ZoneAction::ALL {
            assert_eq!(ZoneAction::from_zsa(a.zsa()), Some(a));
        }
        assert_eq!(ZoneAction::from_zsa(0x10), None);
        assert_eq!(ZoneAction::Reset.to_string(), "Reset Zone");
        for v in 0..8 {
            assert_eq!(
                ReportFilter::from_zrasf(v).map(ReportFilter::zrasf),
                Some(v)
            );
        }
        assert_eq!(ReportFilter::from_zrasf(8), None);
        assert!(ReportFilter::Full.matches(ZoneState::Full));
        assert!(!ReportFilter::Full.matches(ZoneState::Empty));
        assert!(ReportFilter::All.matches(ZoneState::Reserved(9)));
    }

    #[test]
    fn a_report_holds_no_more_than_its_buffer_and_its_header_say() {
        let zones: Vec<_> = (0..4)
            .map(|i| zone(i * 1024, ZoneState::Empty, i * 1024))
            .collect();
        let b = ZoneReport::build(4, &zones, REPORT_HEADER_LEN + 4 * ZONE_DESCRIPTOR_LEN);
        let r = ZoneReport::parse(&b);
        assert_eq!((r.reported, r.zones.len()), (4, 4));
        assert_eq!(r.zones[3], zones[3]);
        // A header claiming more than the buffer holds: what fits.
        let b = ZoneReport::build(u64::MAX, &zones, REPORT_HEADER_LEN + 2 * 64 + 10);
        let r = ZoneReport::parse(&b);
        assert_eq!((r.reported, r.zones.len()), (u64::MAX, 2));
        // Fewer reported than the buffer holds: only those.
        let b = ZoneReport::build(1, &zones, 4096);
        assert_eq!(ZoneReport::parse(&b).zones, zones[..1]);
        // Shorter than a header, or than a descriptor.
        assert!(ZoneReport::parse(&[1, 0, 0]).zones.is_empty());
        assert!(ZoneReport::parse(&b[..70]).zones.is_empty());
        assert_eq!(ZoneReport::capacity(4096), 63);
        assert_eq!(ZoneReport::capacity(10), 0);
    }
}
