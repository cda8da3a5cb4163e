//! The Zoned Namespace command set's I/O commands: Zone Append, Zone
//! Management Send and Zone Management Receive (Report Zones), on the
//! zone model of [`crate::zones`]. Each is Invalid Command Opcode on a
//! namespace that is not zoned, as on QEMU's controller.

use std::sync::atomic::Ordering;

use nvme_vfio::nvme::cmd::{Command, Status};
use nvme_vfio::nvme::zns::{
    ReportFilter, ZoneAction, ZoneReport, REPORT_HEADER_LEN, ZONE_DESCRIPTOR_LEN,
};

use nvme_vfio::nvme::pi::PiType;

use super::protection::{Protection, INVALID_PROTECTION_INFORMATION};
use super::{fail, invalid, ok, ok64, sc, specific, Device, Outcome};
use crate::storage::Namespace;
use crate::zones::ZoneError;

/// Zoned Namespace command set statuses (command specific).
mod zsc {
    pub const ZONE_BOUNDARY_ERROR: u8 = 0xb8;
    pub const ZONE_FULL: u8 = 0xb9;
    pub const ZONE_READ_ONLY: u8 = 0xba;
    pub const ZONE_OFFLINE: u8 = 0xbb;
    pub const ZONE_INVALID_WRITE: u8 = 0xbc;
    pub const TOO_MANY_ACTIVE: u8 = 0xbd;
    pub const TOO_MANY_OPEN: u8 = 0xbe;
    pub const INVALID_TRANSITION: u8 = 0xbf;
}

/// Zone Append CDW12 bit 25: Protection Information Remap.
const PIREMAP: u32 = 1 << 25;

/// The largest Report Zones buffer taken when MDTS sets no limit.
const REPORT_MAX: u64 = 16 << 20;

/// The status of a zoned command's failure.
pub(super) fn zone_status(e: ZoneError) -> Status {
    specific(match e {
        ZoneError::InvalidWrite => zsc::ZONE_INVALID_WRITE,
        ZoneError::Boundary => zsc::ZONE_BOUNDARY_ERROR,
        ZoneError::Full => zsc::ZONE_FULL,
        ZoneError::ReadOnly => zsc::ZONE_READ_ONLY,
        ZoneError::Offline => zsc::ZONE_OFFLINE,
        ZoneError::TooManyActive => zsc::TOO_MANY_ACTIVE,
        ZoneError::TooManyOpen => zsc::TOO_MANY_OPEN,
        ZoneError::InvalidTransition => zsc::INVALID_TRANSITION,
        ZoneError::NotZoneStart => return invalid(sc::INVALID_FIELD),
    })
}

impl Device {
    /// Zone Append: the data lands at the write pointer of the zone that
    /// starts at SLBA; the completion's dwords 0 and 1 say where. Within
    /// MDTS and ZASL (Invalid Field in Command past them). Metadata moves
    /// and protection information is generated or checked as for a Write;
    /// type 1's reference tag is checked against the zone start, and as
    /// on QEMU's controller type 1 needs PIREMAP (CDW12 bit 25: the
    /// reference tags move by the blocks' offset from the zone start) and
    /// type 3 refuses it (Invalid Protection Information).
    pub(super) fn zone_append(&self, cmd: &Command, ns: &Namespace) -> Outcome {
        match self.append(cmd, ns) {
            Ok(at) => ok64(at),
            Err(s) => fail(s),
        }
    }

    fn append(&self, cmd: &Command, ns: &Namespace) -> Result<u64, Status> {
        let Some(z) = &ns.zoned else {
            return Err(invalid(sc::INVALID_OPCODE));
        };
        let (zslba, n) = (cmd.slba(), u64::from(cmd.nlb()));
        if !ns.contains(zslba, n) {
            return Err(invalid(sc::LBA_OUT_OF_RANGE));
        }
        // Type 1's reference tag is checked against the zone start.
        let mut p = Protection::of(cmd, ns, zslba)?;
        let remap = cmd.cdw12 & PIREMAP != 0;
        match p.format.pi.map(|pi| pi.kind) {
            // As QEMU: type 1 needs its reference tags remapped to where
            // the blocks land, type 3 has none to remap.
            Some(PiType::Type1) if !remap => return Err(INVALID_PROTECTION_INFORMATION),
            Some(PiType::Type3) if remap => return Err(INVALID_PROTECTION_INFORMATION),
            _ => {}
        }
        let len = p.data_len(n);
        let c = &self.sh.config;
        let over = |limit: Option<u64>| limit.is_some_and(|max| len > max);
        if over(c.max_transfer()) || over(c.size_limit(c.zasl)) {
            return Err(invalid(sc::INVALID_FIELD));
        }
        let blocks = if c.null {
            None
        } else {
            Some(self.take_blocks(cmd, &p, n)?)
        };
        let at = z.append(zslba, n).map_err(zone_status)?;
        if let Some((mut data, mut meta)) = blocks {
            if remap && p.format.pi.is_some() {
                p.tags.reference = p.tags.reference.wrapping_add(at - zslba);
            }
            // A failed check leaves the write pointer moved, as on QEMU's
            // controller.
            self.protect_write(&p, at, &mut data, &mut meta)?;
            ns.store(at, &data, &meta);
        }
        let stats = &self.sh.stats;
        stats.write_commands.fetch_add(1, Ordering::Relaxed);
        stats.bytes_written.fetch_add(len, Ordering::Relaxed);
        Ok(at)
    }

    /// Zone Management Send: a Zone Send Action on the zone starting at
    /// SLBA, or on every zone it applies to (Select All); reset zones read
    /// back as zeroes. No data (Set Zone Descriptor Extension and the
    /// random write area actions are not supported: Invalid Field in
    /// Command).
    pub(super) fn zone_mgmt_send(&self, cmd: &Command, ns: &Namespace) -> Outcome {
        let Some(z) = &ns.zoned else {
            return fail(invalid(sc::INVALID_OPCODE));
        };
        let Some(action) = ZoneAction::from_zsa(cmd.cdw13 as u8) else {
            return fail(invalid(sc::INVALID_FIELD));
        };
        let all = cmd.cdw13 & 1 << 8 != 0;
        let zslba = cmd.slba();
        if !all && zslba >= ns.blocks {
            return fail(invalid(sc::LBA_OUT_OF_RANGE));
        }
        match z.action((!all).then_some(zslba), action) {
            Ok(reset) => {
                let zb = z.config.zone_blocks;
                for start in reset {
                    if !self.sh.config.null {
                        ns.erase(start, zb);
                    }
                    ns.clear_uncorrectable(start, zb);
                }
                ok(0)
            }
            Err(e) => fail(zone_status(e)),
        }
    }

    /// Zone Management Receive: Report Zones (ZRA 0h; the extended report
    /// needs descriptor extensions, which are not supported) of the zones
    /// the filter selects from the one holding SLBA, into NUMD + 1 dwords.
    pub(super) fn zone_mgmt_recv(&self, cmd: &Command, ns: &Namespace) -> Outcome {
        let Some(z) = &ns.zoned else {
            return fail(invalid(sc::INVALID_OPCODE));
        };
        let slba = cmd.slba();
        if slba >= ns.blocks {
            return fail(invalid(sc::LBA_OUT_OF_RANGE));
        }
        let zra = cmd.cdw13 & 0xff;
        let filter = ReportFilter::from_zrasf((cmd.cdw13 >> 8) as u8);
        let len = (u64::from(cmd.cdw12) + 1) * 4;
        let max = self.sh.config.max_transfer().unwrap_or(REPORT_MAX);
        let (Some(filter), 0) = (filter, zra) else {
            return fail(invalid(sc::INVALID_FIELD));
        };
        if len < REPORT_HEADER_LEN as u64 || len > max {
            return fail(invalid(sc::INVALID_FIELD));
        }
        let partial = cmd.cdw13 & 1 << 16 != 0;
        let fits = (len as usize - REPORT_HEADER_LEN) / ZONE_DESCRIPTOR_LEN;
        let (count, zones) = z.report(slba, filter, partial, fits);
        self.send(cmd, &ZoneReport::build(count, &zones, len as usize), true)
    }
}
