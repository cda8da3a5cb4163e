//! Log pages: SMART / Health Information and Error Information (NVMe Base
//! 2.0, 5.16.1.2 and 5.16.1.3).

use core::fmt;

use super::status::Status;

/// Bytes of the SMART / Health Information log page.
pub const SMART_LEN: usize = 512;
/// Bytes of one Error Information log entry.
pub const ERROR_ENTRY_LEN: usize = 64;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The low 64 bits of a 128-bit counter (enough for any real device).
fn le128_low(b: &[u8], at: usize) -> u64 {
    le64(b, at)
}

/// SMART / Health Information.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SmartLog {
    /// Critical Warning bits (spare, temperature, reliability, read-only,
    /// volatile backup).
    pub critical_warning: u8,
    /// Composite Temperature in kelvin.
    pub temperature_k: u16,
    /// Available Spare, percent.
    pub available_spare: u8,
    /// Available Spare Threshold, percent.
    pub spare_threshold: u8,
    /// Percentage Used of the rated endurance.
    pub percentage_used: u8,
    /// Data Units Read (thousands of 512-byte units).
    pub data_units_read: u64,
    /// Data Units Written (thousands of 512-byte units).
    pub data_units_written: u64,
    /// Host Read Commands.
    pub host_read_commands: u64,
    /// Host Write Commands.
    pub host_write_commands: u64,
    /// Power Cycles.
    pub power_cycles: u64,
    /// Power On Hours.
    pub power_on_hours: u64,
    /// Unsafe Shutdowns.
    pub unsafe_shutdowns: u64,
    /// Media and Data Integrity Errors.
    pub media_errors: u64,
    /// Number of Error Information Log Entries.
    pub error_log_entries: u64,
}

impl SmartLog {
    /// Decodes the log page.
    pub fn parse(b: &[u8; SMART_LEN]) -> Self {
        SmartLog {
            critical_warning: b[0],
            temperature_k: le16(b, 1),
            available_spare: b[3],
            spare_threshold: b[4],
            percentage_used: b[5],
            data_units_read: le128_low(b, 32),
            data_units_written: le128_low(b, 48),
            host_read_commands: le128_low(b, 64),
            host_write_commands: le128_low(b, 80),
            power_cycles: le128_low(b, 112),
            power_on_hours: le128_low(b, 128),
            unsafe_shutdowns: le128_low(b, 144),
            media_errors: le128_low(b, 160),
            error_log_entries: le128_low(b, 176),
        }
    }

    /// Encodes the log page (for device models).
    pub fn to_bytes(&self) -> [u8; SMART_LEN] {
        let mut b = [0u8; SMART_LEN];
        b[0] = self.critical_warning;
        b[1..3].copy_from_slice(&self.temperature_k.to_le_bytes());
        b[3] = self.available_spare;
        b[4] = self.spare_threshold;
        b[5] = self.percentage_used;
        for (at, v) in [
            (32, self.data_units_read),
            (48, self.data_units_written),
            (64, self.host_read_commands),
            (80, self.host_write_commands),
            (112, self.power_cycles),
            (128, self.power_on_hours),
            (144, self.unsafe_shutdowns),
            (160, self.media_errors),
            (176, self.error_log_entries),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
}

/// One Error Information log entry (NVMe Base 2.1, Figure 208).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ErrorLogEntry {
    /// Error Count: unique, increasing; 0 marks an unused entry.
    pub error_count: u64,
    /// Submission Queue ID of the failed command (FFFFh: none).
    pub sqid: u16,
    /// Command ID of the failed command (FFFFh: none).
    pub cid: u16,
    /// Status field of its completion (phase tag in bit 0).
    pub status: u16,
    /// Parameter Error Location: the byte (7:0) and bit (10:8) of the
    /// command that holds the field in error (FFFFh: not applicable).
    pub parameter_location: u16,
    /// First LBA that failed, if applicable.
    pub lba: u64,
    /// Namespace of the failed command (0 or FFFFFFFFh: none).
    pub nsid: u32,
    /// Vendor Specific Information Available: the log page with vendor
    /// specific details (0: none).
    pub vendor_log_page: u8,
    /// Transport Type of a transport error (0: not transport related).
    pub trtype: u8,
    /// Command Set Indicator of the failed command (log page version 1).
    pub csi: u8,
    /// Opcode of the failed command (log page version 1).
    pub opcode: u8,
    /// Command Specific Information.
    pub command_specific: u64,
    /// Transport Type Specific Information.
    pub transport_specific: u16,
    /// Log Page Version: 1 when `csi` and `opcode` are valid.
    pub version: u8,
}

/// [`ErrorLogEntry::parameter_location`] when no field is in error.
pub const NO_PARAMETER: u16 = 0xffff;

impl ErrorLogEntry {
    /// Decodes one entry.
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < ERROR_ENTRY_LEN {
            return None;
        }
        Some(ErrorLogEntry {
            error_count: le64(b, 0),
            sqid: le16(b, 8),
            cid: le16(b, 10),
            status: le16(b, 12),
            parameter_location: le16(b, 14),
            lba: le64(b, 16),
            nsid: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
            vendor_log_page: b[28],
            trtype: b[29],
            csi: b[30],
            opcode: b[31],
            command_specific: le64(b, 32),
            transport_specific: le16(b, 40),
            version: b[63],
        })
    }

    /// Encodes the entry (for device models).
    pub fn to_bytes(&self) -> [u8; ERROR_ENTRY_LEN] {
        let mut b = [0u8; ERROR_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.error_count.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqid.to_le_bytes());
        b[10..12].copy_from_slice(&self.cid.to_le_bytes());
        b[12..14].copy_from_slice(&self.status.to_le_bytes());
        b[14..16].copy_from_slice(&self.parameter_location.to_le_bytes());
        b[16..24].copy_from_slice(&self.lba.to_le_bytes());
        b[24..28].copy_from_slice(&self.nsid.to_le_bytes());
        b[28] = self.vendor_log_page;
        b[29] = self.trtype;
        b[30] = self.csi;
        b[31] = self.opcode;
        b[32..40].copy_from_slice(&self.command_specific.to_le_bytes());
        b[40..42].copy_from_slice(&self.transport_specific.to_le_bytes());
        b[63] = self.version;
        b
    }

    /// The completion status the entry records (without the phase tag).
    pub const fn status(&self) -> Status {
        Status(self.status >> 1)
    }

    /// Whether the entry is about command `cid` of submission queue `sqid`.
    pub const fn is_for(&self, sqid: u16, cid: u16) -> bool {
        self.error_count != 0 && self.sqid == sqid && self.cid == cid
    }

    /// The namespace, if the entry names one.
    pub const fn namespace(&self) -> Option<u32> {
        match self.nsid {
            0 | u32::MAX => None,
            n => Some(n),
        }
    }

    /// The byte (0 to 63) and bit (0 to 7) of the command that holds the
    /// field in error, if the entry names one.
    pub const fn parameter(&self) -> Option<(u8, u8)> {
        let p = self.parameter_location;
        if p == NO_PARAMETER || p & 0xff > 63 {
            return None;
        }
        Some((p as u8, ((p >> 8) & 0x7) as u8))
    }

    /// The parameter error location for byte `byte` and bit `bit` of a
    /// command (for device models).
    pub const fn parameter_at(byte: u8, bit: u8) -> u16 {
        byte as u16 | ((bit as u16 & 0x7) << 8)
    }
}

/// `entry 7 (SQ 1, command 0x0012, opcode 0x02): Unrecovered Read Error
/// (SCT 0x2, SC 0x81, ...), namespace 1, LBA 4099 (0x1003)`: the fields
/// that apply.
impl fmt::Display for ErrorLogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, None)
    }
}

impl ErrorLogEntry {
    /// The entry as displayed after the error of the command it is about,
    /// whose status was `failed`: without its status if it is the same.
    pub(crate) fn display_after(&self, failed: Status) -> impl fmt::Display + '_ {
        struct After<'a>(&'a ErrorLogEntry, Status);
        impl fmt::Display for After<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write(f, Some(self.1))
            }
        }
        After(self, failed)
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, failed: Option<Status>) -> fmt::Result {
        write!(f, "entry {}", self.error_count)?;
        if self.sqid != 0xffff {
            write!(f, " (SQ {}, command {:#06x}", self.sqid, self.cid)?;
            if self.version >= 1 {
                write!(f, ", opcode {:#04x}", self.opcode)?;
            }
            f.write_str(")")?;
        }
        // ": " before the first field, ", " before the others.
        let mut sep = ": ";
        if failed != Some(self.status()) {
            let kind = super::status::CommandKind::of_queue(self.sqid);
            write!(f, "{sep}{}", self.status().display_for(kind))?;
            sep = ", ";
        }
        if let Some(ns) = self.namespace() {
            write!(f, "{sep}namespace {ns}, LBA {} ({:#x})", self.lba, self.lba)?;
            sep = ", ";
        } else if self.lba != 0 {
            write!(f, "{sep}LBA {} ({:#x})", self.lba, self.lba)?;
            sep = ", ";
        }
        if let Some((byte, bit)) = self.parameter() {
            write!(
                f,
                "{sep}field in error at byte {byte} bit {bit} of the command"
            )?;
            sep = ", ";
        }
        if self.command_specific != 0 {
            write!(
                f,
                "{sep}command specific information {:#x}",
                self.command_specific
            )?;
            sep = ", ";
        }
        if self.trtype != 0 {
            write!(f, "{sep}transport type {}", self.trtype)?;
            sep = ", ";
        }
        if self.vendor_log_page != 0 {
            write!(
                f,
                "{sep}vendor details in log page {:#04x}",
                self.vendor_log_page
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let s = SmartLog {
            temperature_k: 310,
            available_spare: 100,
            data_units_written: 12345,
            host_write_commands: 99,
            power_cycles: 7,
            ..Default::default()
        };
        assert_eq!(SmartLog::parse(&s.to_bytes()), s);
        let e = ErrorLogEntry {
            error_count: 3,
            sqid: 1,
            cid: 42,
            status: Status::new(2, 0x81, true).with_more(true).0 << 1 | 1,
            parameter_location: NO_PARAMETER,
            nsid: 1,
            lba: 1 << 40,
            vendor_log_page: 0xc0,
            trtype: 0,
            csi: 0,
            opcode: 0x02,
            command_specific: 0x1234,
            transport_specific: 7,
            version: 1,
        };
        assert_eq!(ErrorLogEntry::parse(&e.to_bytes()), Some(e));
        assert_eq!(ErrorLogEntry::parse(&[0u8; 10]), None);
        assert_eq!(e.status(), Status::new(2, 0x81, true).with_more(true));
        assert!(e.is_for(1, 42) && !e.is_for(1, 43) && !e.is_for(2, 42));
        assert_eq!(e.parameter(), None);
        assert_eq!(
            e.to_string(),
            "entry 3 (SQ 1, command 0x002a, opcode 0x02): Unrecovered Read Error \
             (SCT 0x2, SC 0x81, do not retry, more info in the error log), namespace 1, \
             LBA 1099511627776 (0x10000000000), command specific information 0x1234, \
             vendor details in log page 0xc0"
        );
    }

    #[test]
    fn the_fields_of_an_entry_that_apply() {
        // Byte 40 (CDW10), bit 3; an admin command; no namespace.
        let e = ErrorLogEntry {
            error_count: 9,
            sqid: 0,
            cid: 5,
            status: Status::new(1, 0x82, true).0 << 1,
            parameter_location: ErrorLogEntry::parameter_at(40, 3),
            nsid: u32::MAX,
            ..Default::default()
        };
        assert_eq!(e.parameter(), Some((40, 3)));
        assert_eq!(e.namespace(), None);
        assert_eq!(
            e.to_string(),
            "entry 9 (SQ 0, command 0x0005): I/O Command Set Specific (SCT 0x1, SC 0x82, \
             do not retry), field in error at byte 40 bit 3 of the command"
        );
        // Not about one command.
        let g = ErrorLogEntry {
            error_count: 1,
            sqid: 0xffff,
            cid: 0xffff,
            status: Status::new(0, 0x06, false).0 << 1,
            parameter_location: NO_PARAMETER,
            ..Default::default()
        };
        assert_eq!(g.to_string(), "entry 1: Internal Error (SCT 0x0, SC 0x06)");
        // After the command's own error: its status is not repeated.
        assert_eq!(
            e.display_after(Status::new(1, 0x82, true)).to_string(),
            "entry 9 (SQ 0, command 0x0005): field in error at byte 40 bit 3 of the command"
        );
        assert_eq!(
            e.display_after(Status::new(1, 0x82, false)).to_string(),
            e.to_string(),
            "another status is shown"
        );
        assert!(!ErrorLogEntry::default().is_for(0, 0), "an unused entry");
    }
}

/// The Firmware Slot Information log page (LID 03h).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FirmwareSlotLog {
    /// The slot (1 to 7) the running firmware came from (AFI bits 2:0).
    pub active_slot: u8,
    /// The slot activated at the next controller reset, if one is set (AFI
    /// bits 6:4).
    pub next_slot: Option<u8>,
    /// The firmware revision in each of slots 1 to 7 (`None`: empty).
    pub revisions: [Option<String>; 7],
}

impl FirmwareSlotLog {
    /// Parses the log; bytes missing at the end read as zero.
    pub fn parse(b: &[u8]) -> Self {
        let afi = b.first().copied().unwrap_or(0);
        let next = (afi >> 4) & 0x7;
        let mut revisions: [Option<String>; 7] = Default::default();
        for (i, r) in revisions.iter_mut().enumerate() {
            let at = 8 + 8 * i;
            let Some(raw) = b.get(at..at + 8) else { break };
            if raw.iter().any(|&c| c != 0) {
                let text: String = raw
                    .iter()
                    .map(|&c| {
                        if c.is_ascii_graphic() || c == b' ' {
                            c as char
                        } else {
                            '.'
                        }
                    })
                    .collect();
                *r = Some(text.trim_end().to_string());
            }
        }
        FirmwareSlotLog {
            active_slot: afi & 0x7,
            next_slot: (next != 0).then_some(next),
            revisions,
        }
    }
}

#[cfg(test)]
mod firmware_tests {
    use super::FirmwareSlotLog;

    #[test]
    fn firmware_slot_log_parses() {
        let mut b = vec![0u8; 512];
        b[0] = 0x21;
        b[8..16].copy_from_slice(b"1.0     ");
        b[16..24].copy_from_slice(b"2.0-rc\x01 ");
        let l = FirmwareSlotLog::parse(&b);
        assert_eq!(l.active_slot, 1);
        assert_eq!(l.next_slot, Some(2));
        assert_eq!(l.revisions[0].as_deref(), Some("1.0"));
        assert_eq!(l.revisions[1].as_deref(), Some("2.0-rc."));
        assert!(l.revisions[2..].iter().all(Option::is_none));
        assert_eq!(FirmwareSlotLog::parse(&[]), FirmwareSlotLog::default());
    }
}
