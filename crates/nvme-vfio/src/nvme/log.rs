//! Log pages: SMART / Health Information and Error Information (NVMe Base
//! 2.0, 5.16.1.2 and 5.16.1.3).

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

/// One Error Information log entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ErrorLogEntry {
    /// Error Count: unique, increasing; 0 marks an unused entry.
    pub error_count: u64,
    /// Submission Queue ID of the failed command.
    pub sqid: u16,
    /// Command ID of the failed command.
    pub cid: u16,
    /// Status field of its completion (phase tag in bit 0).
    pub status: u16,
    /// Namespace of the failed command.
    pub nsid: u32,
    /// First LBA that failed.
    pub lba: u64,
}

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
            lba: le64(b, 16),
            nsid: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
        })
    }

    /// Encodes the entry (for device models).
    pub fn to_bytes(&self) -> [u8; ERROR_ENTRY_LEN] {
        let mut b = [0u8; ERROR_ENTRY_LEN];
        b[0..8].copy_from_slice(&self.error_count.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqid.to_le_bytes());
        b[10..12].copy_from_slice(&self.cid.to_le_bytes());
        b[12..14].copy_from_slice(&self.status.to_le_bytes());
        b[16..24].copy_from_slice(&self.lba.to_le_bytes());
        b[24..28].copy_from_slice(&self.nsid.to_le_bytes());
        b
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
            status: 0x4281,
            nsid: 1,
            lba: 1 << 40,
        };
        assert_eq!(ErrorLogEntry::parse(&e.to_bytes()), Some(e));
        assert_eq!(ErrorLogEntry::parse(&[0u8; 10]), None);
    }
}
