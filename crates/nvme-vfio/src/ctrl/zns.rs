//! Zoned namespaces on a queue pair (Zoned Namespace Command Set 1.1):
//! Report Zones, the zone actions of Zone Management Send (open, close,
//! finish, reset, offline; one zone or all of them), and Zone Append,
//! blocking and asynchronous ([`Io::zone_append`](super::Io::zone_append)),
//! whose completion hands back the LBA where the data landed.
//!
//! How a zoned namespace is written, in this driver:
//!
//! - Zone Append: the controller writes the data at the zone's write
//!   pointer and says where ([`Done::appended_lba`](super::Done::appended_lba),
//!   or the blocking call's result), so any number of appends to one zone
//!   may be in flight at once. Refused before submission if the LBA is not
//!   a zone's start, or the data is longer than a zone or than the Zone
//!   Append Size Limit (ZASL).
//! - Write and Write Zeroes, as Linux lets them through to a raw zoned
//!   device: the driver does not track write pointers (other queue pairs
//!   and processes write too); a write must start at its zone's write
//!   pointer, and the controller fails one that does not with Zone
//!   Invalid Write. The driver refuses before submission what it can know
//!   is wrong: a range that crosses a zone boundary, and an asynchronous
//!   write longer than one command (its commands could be executed in any
//!   order); the blocking calls run a long write one command at a time.
//!
//! Every value the controller returns is checked: an append's LBA must lie
//! inside its zone (else [`Error::DeviceData`]), and a report's descriptors
//! must be zones of the namespace, in increasing order, of the state the
//! report asked for, with a capacity and write pointer inside the zone.

use blk_dma::{Direction, HostSeg};

use super::blocking::check_range;
use super::inflight::{Pending, Tag};
use super::io::{Io, IoBuf, Op};
use super::{Namespace, QueuePair};
use crate::nvme::cmd::Command;
use crate::nvme::zns::{
    ReportFilter, ZoneAction, ZoneDescriptor, ZoneReport, REPORT_HEADER_LEN, ZONE_DESCRIPTOR_LEN,
};
use crate::Error;

/// Refuses a write of `bytes` at `lba` to a zoned namespace that would
/// cross a zone boundary (when the zone size is known); anything else is
/// left to the other checks.
pub(super) fn check_zone_span(ns: &Namespace, lba: u64, bytes: u64) -> Result<(), Error> {
    let Some(zones) = ns.zones().filter(|_| ns.is_zoned()) else {
        return Ok(());
    };
    let zb = zones.zone_blocks();
    let blocks = bytes / ns.block_size();
    if blocks == 0 {
        return Ok(());
    }
    let last = lba.saturating_add(blocks - 1);
    if lba / zb != last / zb {
        return Err(Error::CrossesZone {
            lba,
            blocks,
            zone_blocks: zb,
        });
    }
    Ok(())
}

/// Most blocks (at least one) one report command asks for.
const REPORT_BUF_MAX: u64 = 64 << 10;

impl QueuePair {
    /// The largest Zone Append this queue pair submits to `ns`, in bytes:
    /// the controller's Zone Append Size Limit (ZASL: `2^ZASL` minimum
    /// memory pages, 0 for the maximum transfer), at most the maximum
    /// transfer, in whole blocks. 0 for a namespace that is not zoned.
    pub fn zone_append_limit(&self, ns: &Namespace) -> u64 {
        let Some(zones) = ns.zones().filter(|_| ns.is_zoned()) else {
            return 0;
        };
        let max = match zones.zasl() {
            0 => self.max_transfer(),
            zasl => self
                .shared()
                .cap
                .mps_min()
                .checked_shl(u32::from(zasl))
                .unwrap_or(u64::MAX)
                .min(self.max_transfer()),
        };
        max / ns.block_size() * ns.block_size()
    }

    /// A write to zoned `ns` as one command: inside one zone, and at most
    /// the maximum transfer.
    pub(super) fn check_zoned_write(
        &self,
        ns: &Namespace,
        lba: u64,
        total: u64,
    ) -> Result<(), Error> {
        check_zone_span(ns, lba, total)?;
        let chunk = (self.max_transfer() / ns.block_size()).max(1) * ns.block_size();
        if total > chunk {
            return Err(Error::TooLarge {
                len: total,
                max: chunk,
            });
        }
        Ok(())
    }

    /// Checks a Zone Append of `len` bytes to the zone starting at
    /// `zslba`; returns its length in blocks and the LBAs its data may
    /// land at, first and last.
    fn check_append(&self, ns: &Namespace, zslba: u64, len: u64) -> Result<(u64, u64, u64), Error> {
        if ns.has_metadata() {
            return Err(Error::Unsupported(
                "Zone Append on a namespace formatted with metadata",
            ));
        }
        let bs = ns.block_size();
        if len == 0 || len % bs != 0 {
            return Err(Error::Invalid(format!(
                "a Zone Append of {len} bytes: not a non-zero multiple of the {bs}-byte block size"
            )));
        }
        let blocks = len / bs;
        check_range(ns, zslba, blocks)?;
        let limit = self.zone_append_limit(ns);
        if len > limit {
            let zasl = ns.zones().map_or(0, |z| z.zasl());
            return Err(Error::OverLimit {
                what: "Zone Append bytes",
                requested: len,
                max: limit,
                limit: if zasl == 0 { "MDTS" } else { "ZASL" },
            });
        }
        let zone_end = match ns.zones() {
            Some(z) => {
                let zb = z.zone_blocks();
                if zslba % zb != 0 {
                    return Err(Error::Invalid(format!(
                        "LBA {zslba} is not the start of a zone (zones of {zb} blocks)"
                    )));
                }
                if blocks > zb {
                    return Err(Error::CrossesZone {
                        lba: zslba,
                        blocks,
                        zone_blocks: zb,
                    });
                }
                zslba.saturating_add(zb).min(ns.blocks())
            }
            // No zone size known: the namespace bounds the append.
            None => ns.blocks(),
        };
        Ok((blocks, zslba, zone_end - blocks))
    }

    /// Appends `buf` (whole blocks, at most
    /// [`zone_append_limit`](Self::zone_append_limit)) to the zone of
    /// zoned `ns` that starts at `zslba`, and waits; returns the LBA where
    /// the controller wrote it (the zone's write pointer, which moves on
    /// past it). `fua` forces the data to media before completion. Any
    /// memory: copied through a DMA buffer where the controller cannot be
    /// pointed at it. Refused before submission on a namespace that is
    /// not zoned ([`Error::NotZoned`]), for an LBA that is not a zone's
    /// start, data longer than the zone ([`Error::CrossesZone`]) or than
    /// the limit ([`Error::OverLimit`]). The controller fails it with Zone
    /// Is Full, Zone Boundary Error (no room left in the zone), Too Many
    /// Active or Open Zones, Zone Is Read Only or Zone Is Offline.
    pub fn zone_append(
        &mut self,
        ns: &Namespace,
        zslba: u64,
        buf: &[u8],
        fua: bool,
    ) -> Result<u64, Error> {
        self.check_op(Op::ZoneAppend { fua }, ns)?;
        self.check_append(ns, zslba, buf.len() as u64)?;
        let seg = HostSeg::from_slice(buf);
        if self.describable(&[seg]) {
            return self.run_append(fua, ns, zslba, seg);
        }
        let mut bounce = self.shared().space.alloc(buf.len())?;
        bounce.as_mut_slice()[..buf.len()].copy_from_slice(buf);
        let seg = HostSeg::from_slice(&bounce.as_slice()[..buf.len()]);
        let r = self.run_append(fua, ns, zslba, seg);
        if matches!(r, Err(Error::Dead)) {
            // The device may still read it.
            core::mem::forget(bounce);
        }
        r
    }

    /// Runs a Zone Append of `seg` (memory lent by the caller for the
    /// call) to completion; returns where the data landed.
    fn run_append(
        &mut self,
        fua: bool,
        ns: &Namespace,
        zslba: u64,
        seg: HostSeg,
    ) -> Result<u64, Error> {
        self.submit_append(fua, ns, zslba, seg, IoBuf::Raw, Tag::Blocking)
            .map_err(|(e, _)| e)?;
        self.wait_blocking()?;
        self.slots_mut()
            .take_blocking_lba()
            .ok_or_else(|| Error::DeviceData {
                what: "Zone Append",
                detail: "no LBA came back".into(),
            })
    }

    /// [`submit`](Self::submit) of a Zone Append.
    #[allow(clippy::result_large_err)]
    pub(super) fn submit_zone_append(&mut self, io: Io) -> Result<(), (Error, Io)> {
        let fua = matches!(io.op, Op::ZoneAppend { fua: true });
        io.submit_with(|io, buf| match buf.prefix(io.len) {
            Some(seg) => self.submit_append(fua, &io.ns, io.lba, seg, buf, Tag::Caller(io.tag)),
            None => Err((
                Error::Invalid(format!(
                    "transfer of {} bytes from a smaller buffer",
                    io.len
                )),
                buf,
            )),
        })
    }

    /// Checks and queues a Zone Append of `seg` (one command). All or
    /// nothing: on error nothing is queued and the buffer comes back.
    fn submit_append(
        &mut self,
        fua: bool,
        ns: &Namespace,
        zslba: u64,
        seg: HostSeg,
        buf: IoBuf,
        tag: Tag,
    ) -> Result<(), (Error, IoBuf)> {
        let op = Op::ZoneAppend { fua };
        let checked = self
            .admit(op, ns)
            .and_then(|()| self.check_append(ns, zslba, seg.len));
        let (blocks, first, last) = match checked {
            Ok(v) => v,
            Err(e) => return Err((e, buf)),
        };
        if !self.sgl_any_alignment() && (seg.addr.raw_u64() | seg.len) & 3 != 0 {
            return Err((
                Error::Invalid("buffers must be dword (4-byte) aligned".into()),
                buf,
            ));
        }
        let borrowed = tag.borrowed();
        let pending = Pending::new(buf, tag, borrowed, 1, "Zone Append").append();
        // blocks <= the append limit in blocks, at most 1 MiB of 512-byte
        // blocks.
        let cmd = Command::zone_append(ns.id(), zslba, blocks as u32, fua);
        self.queue_command(
            cmd,
            Some((seg, Direction::ToDevice)),
            pending,
            Some((first, last)),
        )
    }

    /// Queues one command of request `pending`, with `data` mapped for it
    /// (and for a Zone Append, the LBAs its data may land at). On error
    /// nothing is queued and the request's buffer comes back.
    fn queue_command(
        &mut self,
        mut cmd: Command,
        data: Option<(HostSeg, Direction)>,
        pending: Pending,
        append_range: Option<(u64, u64)>,
    ) -> Result<(), (Error, IoBuf)> {
        let req = match self.slots_mut().start_request(pending) {
            Ok(req) => req,
            Err(buf) => return Err((Error::QueueFull { needed: 1, free: 0 }, buf)),
        };
        if let Some((first, last)) = append_range {
            self.slots_mut().set_append_range(req, first, last);
        }
        let popped = match data {
            Some((seg, dir)) => self.pop_mapped(seg, dir).map(|(cid, dp)| {
                cmd.set_data(dp);
                cid
            }),
            None => self.slots_mut().pop().map(|(cid, _)| cid).ok_or(None),
        };
        let cid = match popped {
            Ok(cid) => cid,
            Err(None) => {
                let buf = self.slots_mut().cancel(req);
                return Err((Error::QueueFull { needed: 1, free: 0 }, buf));
            }
            Err(Some(e)) => {
                let buf = self.slots_mut().cancel(req);
                let e = match e {
                    crate::nvme::DptrError::DescPoolEmpty => Error::QueueFull {
                        needed: 1,
                        free: self.slots().free_slots(),
                    },
                    e => e.into(),
                };
                return Err((e, buf));
            }
        };
        let id = self.slots_mut().assign(cid, req);
        cmd.set_cid(id);
        self.enqueue(&cmd);
        Ok(())
    }

    /// Refuses a zone command on `ns` if it is not zoned.
    fn check_zoned(ns: &Namespace) -> Result<(), Error> {
        if !ns.is_zoned() {
            return Err(Error::NotZoned { nsid: ns.id() });
        }
        Ok(())
    }

    /// Zone Management Send of `action` to the zone of zoned `ns` that
    /// starts at `zslba`, and waits. The controller fails an action the
    /// zone's state does not allow with Invalid Zone State Transition
    /// (Zone Is Read Only, Zone Is Offline where the specification says
    /// so), and one that needs resources it has no more of with Too Many
    /// Active Zones or Too Many Open Zones. Refused before submission on a
    /// namespace that is not zoned ([`Error::NotZoned`]) and for an LBA
    /// that is not a zone's start.
    pub fn zone_action(
        &mut self,
        ns: &Namespace,
        zslba: u64,
        action: ZoneAction,
    ) -> Result<(), Error> {
        Self::check_zoned(ns)?;
        check_range(ns, zslba, 1)?;
        if let Some(zb) = ns.zones().map(|z| z.zone_blocks()) {
            if zslba % zb != 0 {
                return Err(Error::Invalid(format!(
                    "LBA {zslba} is not the start of a zone (zones of {zb} blocks)"
                )));
            }
        }
        self.exec(
            Command::zone_mgmt_send(ns.id(), zslba, action, false),
            action.name(),
        )
    }

    /// Zone Management Send of `action` with Select All, and waits: every
    /// zone of zoned `ns` the action applies to (close: the open zones;
    /// finish: the open and closed ones; open: the closed ones; reset: the
    /// open, closed and full ones; offline: the read only ones).
    pub fn zone_action_all(&mut self, ns: &Namespace, action: ZoneAction) -> Result<(), Error> {
        Self::check_zoned(ns)?;
        let what = match action {
            ZoneAction::Close => "Close Zone (all zones)",
            ZoneAction::Finish => "Finish Zone (all zones)",
            ZoneAction::Open => "Open Zone (all zones)",
            ZoneAction::Reset => "Reset Zone (all zones)",
            ZoneAction::Offline => "Offline Zone (all zones)",
        };
        self.exec(Command::zone_mgmt_send(ns.id(), 0, action, true), what)
    }

    /// Reports the zones of zoned `ns` that `filter` lists, from the zone
    /// holding `slba` on, at most `max` of them (`usize::MAX`: to the end
    /// of the namespace), and waits: Zone Management Receive with Partial
    /// Report, as many commands as the zones take (each at most 64 KiB
    /// and the maximum transfer). Every descriptor is checked
    /// ([`Error::DeviceData`] if one is not a zone of the namespace, out
    /// of order, of a state the filter excludes, or with a capacity or
    /// write pointer outside its zone).
    pub fn report_zones(
        &mut self,
        ns: &Namespace,
        slba: u64,
        filter: ReportFilter,
        max: usize,
    ) -> Result<Vec<ZoneDescriptor>, Error> {
        Self::check_zoned(ns)?;
        check_range(ns, slba, 1)?;
        let zb = ns.zones().map(|z| z.zone_blocks());
        let per_command = (self.max_transfer().min(REPORT_BUF_MAX) as usize)
            .max(REPORT_HEADER_LEN + ZONE_DESCRIPTOR_LEN);
        let mut buf = self.shared().space.alloc(per_command)?;
        let mut zones: Vec<ZoneDescriptor> = Vec::new();
        let mut from = slba;
        // Descriptors may only start at or after the zone holding `slba`.
        let mut floor = zb.map_or(slba, |zb| slba / zb * zb);
        while zones.len() < max {
            let want = (max - zones.len()).min(ZoneReport::capacity(per_command));
            let len = REPORT_HEADER_LEN + want * ZONE_DESCRIPTOR_LEN;
            let cmd = Command::report_zones(ns.id(), from, len as u32, filter, true);
            let seg = HostSeg::from_mut_slice(&mut buf.as_mut_slice()[..len]);
            let pending = Pending::new(IoBuf::Raw, Tag::Blocking, true, 1, "Report Zones");
            let r = self
                .queue_command(cmd, Some((seg, Direction::FromDevice)), pending, None)
                .map_err(|(e, _)| e)
                .and_then(|()| self.wait_blocking());
            if let Err(e) = r {
                if matches!(e, Error::Dead) {
                    // The device may still write it.
                    core::mem::forget(buf);
                }
                return Err(e);
            }
            let report = ZoneReport::parse(&buf.as_slice()[..len]);
            let got = report.zones.len();
            for z in report.zones {
                check_descriptor(ns, &z, floor, filter)?;
                floor = z.start.saturating_add(zb.unwrap_or(1));
                zones.push(z);
            }
            // Fewer than asked for: the report has ended. Without a zone
            // size, where the next zone starts is unknown: one command.
            let Some(zb) = zb.filter(|_| got == want) else {
                break;
            };
            match zones.last().and_then(|z| z.start.checked_add(zb)) {
                Some(next) if next < ns.blocks() => from = next,
                _ => break,
            }
        }
        Ok(zones)
    }
}

/// Checks descriptor `z` of a report on `ns`: a zone of the namespace
/// starting at or after `floor`, of a state `filter` lists, with its
/// capacity and write pointer inside the zone.
fn check_descriptor(
    ns: &Namespace,
    z: &ZoneDescriptor,
    floor: u64,
    filter: ReportFilter,
) -> Result<(), Error> {
    let zb = ns.zones().map(|z| z.zone_blocks());
    let bad = |detail: String| {
        log::warn!("Report Zones on namespace {}: {detail}", ns.id());
        Err(Error::DeviceData {
            what: "Report Zones",
            detail,
        })
    };
    if z.start < floor || z.start >= ns.blocks() {
        return bad(format!(
            "a zone starting at LBA {:#x}, out of order or outside the namespace (expected \
             {floor:#x} or later, below {:#x})",
            z.start,
            ns.blocks()
        ));
    }
    if let Some(zb) = zb {
        if z.start % zb != 0 {
            return bad(format!(
                "a zone starting at LBA {:#x}, not a multiple of the zone size {zb:#x}",
                z.start
            ));
        }
        if z.capacity > zb {
            return bad(format!(
                "zone {:#x}: capacity {:#x} larger than the zone size {zb:#x}",
                z.start, z.capacity
            ));
        }
        let end = z.start.saturating_add(zb);
        if z.state.has_write_pointer() && !(z.start..=end).contains(&z.write_pointer) {
            return bad(format!(
                "zone {:#x} ({}): write pointer {:#x} outside the zone",
                z.start, z.state, z.write_pointer
            ));
        }
    }
    if !filter.matches(z.state) {
        return bad(format!(
            "zone {:#x} is {}, which the report ({filter:?}) does not list",
            z.start, z.state
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctrl::{CommandSet, ZoneInfo};
    use crate::nvme::iocs::IdentifyZonedNamespace;
    use crate::nvme::zns::{ZoneAttributes, ZoneState, ZoneType};

    /// A zoned namespace of 16 zones of 64 blocks.
    fn namespace() -> Namespace {
        let mut id = IdentifyZonedNamespace::default();
        id.set_zone_size(0, 64);
        Namespace {
            id: 2,
            block_size: 512,
            blocks: 1024,
            command_set: CommandSet::Zoned,
            zones: ZoneInfo::new(&id, 0, 0),
            copy: Default::default(),
            format: crate::nvme::pi::BlockFormat::plain(512),
            fast_blocks: 1024,
        }
    }

    fn zone(start: u64, state: ZoneState, wp: u64, capacity: u64) -> ZoneDescriptor {
        ZoneDescriptor {
            zone_type: ZoneType::SequentialWriteRequired,
            state,
            attributes: ZoneAttributes::default(),
            attributes_info: 0,
            capacity,
            start,
            write_pointer: wp,
        }
    }

    #[test]
    fn report_descriptors_are_checked_against_the_namespace() {
        let ns = namespace();
        let all = ReportFilter::All;
        let ok = |z: ZoneDescriptor, floor, f| check_descriptor(&ns, &z, floor, f).is_ok();
        assert!(ok(zone(128, ZoneState::Closed, 130, 64), 128, all));
        assert!(
            ok(zone(128, ZoneState::Closed, 192, 64), 0, all),
            "write pointer at the end"
        );
        assert!(
            ok(zone(128, ZoneState::Full, u64::MAX, 64), 0, all),
            "no write pointer"
        );
        assert!(ok(
            zone(960, ZoneState::Empty, 960, 32),
            0,
            ReportFilter::Empty
        ));
        let bad = [
            (zone(64, ZoneState::Empty, 64, 64), 128, all, "out of order"),
            (
                zone(1024, ZoneState::Empty, 1024, 64),
                0,
                all,
                "outside the namespace",
            ),
            (
                zone(u64::MAX, ZoneState::Empty, 0, 64),
                0,
                all,
                "outside the namespace",
            ),
            (
                zone(100, ZoneState::Empty, 100, 64),
                0,
                all,
                "not a multiple",
            ),
            (zone(128, ZoneState::Empty, 128, 65), 0, all, "capacity"),
            (
                zone(128, ZoneState::ImplicitlyOpened, 193, 64),
                0,
                all,
                "write pointer",
            ),
            (
                zone(128, ZoneState::Closed, 127, 64),
                0,
                all,
                "write pointer",
            ),
            (
                zone(128, ZoneState::Full, 0, 64),
                0,
                ReportFilter::Empty,
                "does not list",
            ),
        ];
        for (z, floor, f, why) in bad {
            match check_descriptor(&ns, &z, floor, f) {
                Err(Error::DeviceData {
                    what: "Report Zones",
                    detail,
                }) => {
                    assert!(detail.contains(why), "{why}: {detail}")
                }
                r => panic!("{why}: {r:?}"),
            }
        }
    }

    #[test]
    fn a_write_may_not_cross_a_zone_boundary() {
        let ns = namespace();
        assert!(check_zone_span(&ns, 0, 64 * 512).is_ok());
        assert!(check_zone_span(&ns, 63, 512).is_ok());
        assert!(
            check_zone_span(&ns, 60, 0).is_ok(),
            "left to the other checks"
        );
        assert!(matches!(
            check_zone_span(&ns, 63, 1024),
            Err(Error::CrossesZone {
                lba: 63,
                blocks: 2,
                zone_blocks: 64
            })
        ));
        // Past the namespace: the range check's to refuse.
        assert!(check_zone_span(&ns, u64::MAX, 1024).is_ok());
        let nvm = Namespace {
            command_set: CommandSet::Nvm,
            zones: None,
            ..namespace()
        };
        assert!(check_zone_span(&nvm, 63, 1024).is_ok());
    }
}
