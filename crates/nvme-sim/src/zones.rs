//! A zoned namespace's zones (Zoned Namespace Command Set 1.1, 2.1): each
//! zone's state and write pointer, and the open and active resources, as
//! QEMU's controller manages them (hw/nvme, which the VM tests run on):
//!
//! - a write (or Write Zeroes) must start at its zone's write pointer
//!   (Zone Invalid Write) and end inside its capacity (Zone Boundary
//!   Error); a Zone Append lands at the write pointer of the zone whose
//!   start it names. Full, Read Only and Offline zones refuse both (Zone
//!   Is Full, Zone Is Read Only, Zone Is Offline);
//! - writing an Empty or Closed zone opens it implicitly; an Empty zone
//!   needs an active resource (Too Many Active Zones) and both an open one
//!   (Too Many Open Zones). When the open resources are all taken, the
//!   zone implicitly opened first is closed to make room (QEMU's
//!   auto-transition); explicitly opened zones are never closed so;
//! - a zone written to its capacity becomes Full, releasing its
//!   resources;
//! - Zone Management Send: Open (Empty, Closed, Implicitly Opened to
//!   Explicitly Opened, with the same resource checks), Close (open to
//!   Closed), Finish (Empty, open, Closed to Full), Reset (open, Closed,
//!   Full to Empty, the blocks zeroed), Offline (Read Only to Offline);
//!   the action on a zone already in its target state succeeds, any other
//!   is Invalid Zone State Transition. With Select All: Open the Closed
//!   zones, Close the open ones, Finish the open and Closed ones, Reset the
//!   open, Closed and Full ones, Offline the Read Only ones;
//! - Report Zones lists the zones a filter selects from the one holding
//!   the starting LBA, with the write pointer of Full, Read Only and
//!   Offline zones reported as all ones, as QEMU does.
//!
//! A controller shutdown closes every open zone: Closed if written, Empty
//! if not (QEMU's `nvme_zoned_ns_shutdown`).
//!
//! Read Only and Offline states come only from the device's side
//! ([`SimController::set_zone_state`](crate::SimController::set_zone_state)).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use nvme_vfio::nvme::zns::{
    ReportFilter, ZoneAction, ZoneAttributes, ZoneDescriptor, ZoneState, ZoneType,
};

use crate::config::ZoneConfig;

/// Why a zoned command fails (each is one status).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ZoneError {
    /// Zone Invalid Write: not at the write pointer.
    InvalidWrite,
    /// Zone Boundary Error: past the zone's capacity (or, for a read,
    /// across zones).
    Boundary,
    /// Zone Is Full.
    Full,
    /// Zone Is Read Only.
    ReadOnly,
    /// Zone Is Offline.
    Offline,
    /// Too Many Active Zones.
    TooManyActive,
    /// Too Many Open Zones.
    TooManyOpen,
    /// Invalid Zone State Transition.
    InvalidTransition,
    /// Invalid Field in Command: an LBA that is not a zone's start.
    NotZoneStart,
}

#[derive(Clone, Copy, Debug)]
struct Zone {
    state: ZoneState,
    wp: u64,
}

#[derive(Debug)]
struct Table {
    zones: Vec<Zone>,
    /// Implicitly opened zones, oldest first (the one closed to make room).
    implicit: VecDeque<usize>,
    open: u32,
    active: u32,
}

/// The zones of a zoned namespace.
#[derive(Debug)]
pub(crate) struct Zones {
    pub(crate) config: ZoneConfig,
    table: Mutex<Table>,
}

impl Zones {
    pub(crate) fn new(config: ZoneConfig, blocks: u64) -> Self {
        let zb = config.zone_blocks.max(1);
        let n = blocks / zb;
        Self {
            config,
            table: Mutex::new(Table {
                zones: (0..n)
                    .map(|z| Zone {
                        state: ZoneState::Empty,
                        wp: z * zb,
                    })
                    .collect(),
                implicit: VecDeque::new(),
                open: 0,
                active: 0,
            }),
        }
    }

    fn zb(&self) -> u64 {
        self.config.zone_blocks.max(1)
    }

    /// Blocks of each zone that can be written.
    pub(crate) fn capacity(&self) -> u64 {
        match self.config.capacity {
            0 => self.zb(),
            c => c.min(self.zb()),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Every update leaves a consistent table before it can panic.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The zone holding `lba`, if any.
    fn index(&self, t: &Table, lba: u64) -> Option<usize> {
        usize::try_from(lba / self.zb())
            .ok()
            .filter(|&i| i < t.zones.len())
    }

    /// The zone starting at `zslba`.
    fn start_index(&self, t: &Table, zslba: u64) -> Result<usize, ZoneError> {
        match self.index(t, zslba) {
            Some(i) if zslba % self.zb() == 0 => Ok(i),
            _ => Err(ZoneError::NotZoneStart),
        }
    }

    /// Checks a write of `n` blocks at `lba` (inside the namespace)
    /// against its zone, opens the zone if need be and advances its write
    /// pointer.
    pub(crate) fn write(&self, lba: u64, n: u64) -> Result<(), ZoneError> {
        let mut t = self.table();
        let i = self.index(&t, lba).ok_or(ZoneError::InvalidWrite)?;
        self.write_at(&mut t, i, Some(lba), n).map(|_| ())
    }

    /// A Zone Append of `n` blocks to the zone starting at `zslba`: where
    /// the data goes (the write pointer, which moves past it).
    pub(crate) fn append(&self, zslba: u64, n: u64) -> Result<u64, ZoneError> {
        let mut t = self.table();
        let i = self.start_index(&t, zslba)?;
        self.write_at(&mut t, i, None, n)
    }

    /// A write of zone `i` at `lba` (`None`: at the write pointer).
    fn write_at(
        &self,
        t: &mut Table,
        i: usize,
        lba: Option<u64>,
        n: u64,
    ) -> Result<u64, ZoneError> {
        let Zone { state, wp } = t.zones[i];
        match state {
            ZoneState::Full => return Err(ZoneError::Full),
            ZoneState::ReadOnly => return Err(ZoneError::ReadOnly),
            ZoneState::Offline => return Err(ZoneError::Offline),
            _ => {}
        }
        let at = lba.unwrap_or(wp);
        if at != wp {
            return Err(ZoneError::InvalidWrite);
        }
        let end = i as u64 * self.zb() + self.capacity();
        if at.checked_add(n).is_none_or(|e| e > end) {
            return Err(ZoneError::Boundary);
        }
        self.open(t, i, true)?;
        let wp = at + n;
        t.zones[i].wp = wp;
        if wp == end {
            self.assign(t, i, ZoneState::Full);
        }
        Ok(at)
    }

    /// Opens zone `i` (implicitly: by a write), taking the resources it
    /// needs; an Implicitly Opened zone opened explicitly becomes
    /// Explicitly Opened.
    fn open(&self, t: &mut Table, i: usize, implicit: bool) -> Result<(), ZoneError> {
        let state = t.zones[i].state;
        match state {
            ZoneState::Empty | ZoneState::Closed => {
                let act = u32::from(state == ZoneState::Empty);
                let (max_open, max_active) = (self.config.max_open, self.config.max_active);
                if max_open != 0 && t.open >= max_open {
                    // Room made by closing the zone implicitly opened first.
                    if let Some(j) = t.implicit.front().copied() {
                        self.assign(t, j, ZoneState::Closed);
                    }
                }
                if max_active != 0 && t.active + act > max_active {
                    return Err(ZoneError::TooManyActive);
                }
                if max_open != 0 && t.open + 1 > max_open {
                    return Err(ZoneError::TooManyOpen);
                }
                let to = match implicit {
                    true => ZoneState::ImplicitlyOpened,
                    false => ZoneState::ExplicitlyOpened,
                };
                self.assign(t, i, to);
                Ok(())
            }
            ZoneState::ImplicitlyOpened if !implicit => {
                self.assign(t, i, ZoneState::ExplicitlyOpened);
                Ok(())
            }
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened => Ok(()),
            _ => Err(ZoneError::InvalidTransition),
        }
    }

    /// Puts zone `i` in state `to`, keeping the resource counts and the
    /// implicitly opened list right.
    fn assign(&self, t: &mut Table, i: usize, to: ZoneState) {
        let from = t.zones[i].state;
        if from == ZoneState::ImplicitlyOpened {
            t.implicit.retain(|&j| j != i);
        }
        if to == ZoneState::ImplicitlyOpened {
            t.implicit.push_back(i);
        }
        t.open = t.open + u32::from(to.is_open()) - u32::from(from.is_open());
        t.active = t.active + u32::from(to.is_active()) - u32::from(from.is_active());
        let start = i as u64 * self.zb();
        match to {
            ZoneState::Empty => t.zones[i].wp = start,
            ZoneState::Full => t.zones[i].wp = start + self.capacity(),
            _ => {}
        }
        t.zones[i].state = to;
    }

    /// Zone Management Send: `action` on the zone starting at `zslba`, or
    /// with `None` on every zone it applies to. Returns the zones reset
    /// (their start LBAs), whose blocks the caller zeroes.
    pub(crate) fn action(
        &self,
        zslba: Option<u64>,
        action: ZoneAction,
    ) -> Result<Vec<u64>, ZoneError> {
        let mut t = self.table();
        let mut reset = Vec::new();
        let Some(zslba) = zslba else {
            let applies = |s: ZoneState| match action {
                ZoneAction::Open => s == ZoneState::Closed,
                ZoneAction::Close => s.is_open(),
                ZoneAction::Finish => s.is_active(),
                ZoneAction::Reset => s.is_active() || s == ZoneState::Full,
                ZoneAction::Offline => s == ZoneState::ReadOnly,
            };
            for i in 0..t.zones.len() {
                if applies(t.zones[i].state) {
                    self.act(&mut t, i, action, &mut reset)?;
                }
            }
            return Ok(reset);
        };
        let i = self.start_index(&t, zslba)?;
        self.act(&mut t, i, action, &mut reset)?;
        Ok(reset)
    }

    /// `action` on zone `i`.
    fn act(
        &self,
        t: &mut Table,
        i: usize,
        action: ZoneAction,
        reset: &mut Vec<u64>,
    ) -> Result<(), ZoneError> {
        use ZoneState::*;
        let state = t.zones[i].state;
        match (action, state) {
            (ZoneAction::Open, _) => return self.open(t, i, false),
            (ZoneAction::Close, ImplicitlyOpened | ExplicitlyOpened) => self.assign(t, i, Closed),
            (ZoneAction::Close, Closed) => {}
            (ZoneAction::Finish, Empty | ImplicitlyOpened | ExplicitlyOpened | Closed) => {
                self.assign(t, i, Full)
            }
            (ZoneAction::Finish, Full) => {}
            (ZoneAction::Reset, ImplicitlyOpened | ExplicitlyOpened | Closed | Full) => {
                self.assign(t, i, Empty);
                reset.push(i as u64 * self.zb());
            }
            (ZoneAction::Reset, Empty) => {}
            (ZoneAction::Offline, ReadOnly) => self.assign(t, i, Offline),
            (ZoneAction::Offline, Offline) => {}
            _ => return Err(ZoneError::InvalidTransition),
        }
        Ok(())
    }

    /// Report Zones from the zone holding `slba` (inside the namespace):
    /// the Number of Zones (with `partial`, at most `max`) and the first
    /// `max` descriptors `filter` selects.
    pub(crate) fn report(
        &self,
        slba: u64,
        filter: ReportFilter,
        partial: bool,
        max: usize,
    ) -> (u64, Vec<ZoneDescriptor>) {
        let t = self.table();
        let first = self.index(&t, slba).unwrap_or(t.zones.len());
        let selected = t.zones[first..]
            .iter()
            .enumerate()
            .filter(|(_, z)| filter.matches(z.state));
        let mut count = 0u64;
        let mut zones = Vec::new();
        for (k, z) in selected {
            if partial && count as usize >= max {
                break;
            }
            count += 1;
            if zones.len() < max {
                let start = (first + k) as u64 * self.zb();
                zones.push(ZoneDescriptor {
                    zone_type: ZoneType::SequentialWriteRequired,
                    state: z.state,
                    attributes: ZoneAttributes::default(),
                    attributes_info: 0,
                    capacity: self.capacity(),
                    start,
                    write_pointer: if z.state.has_write_pointer() {
                        z.wp
                    } else {
                        u64::MAX
                    },
                });
            }
        }
        (count, zones)
    }

    /// Checks a read of `n` blocks at `lba`: inside one zone (reads across
    /// zone boundaries are not supported: OZCS bit 0 clear, as on QEMU's
    /// controller by default), not of an Offline zone.
    pub(crate) fn read(&self, lba: u64, n: u64) -> Result<(), ZoneError> {
        if !self.within_one_zone(lba, n) {
            return Err(ZoneError::Boundary);
        }
        let t = self.table();
        match self.index(&t, lba).map(|i| t.zones[i].state) {
            Some(ZoneState::Offline) => Err(ZoneError::Offline),
            _ => Ok(()),
        }
    }

    /// Whether blocks `[lba, lba + n)` lie in one zone.
    pub(crate) fn within_one_zone(&self, lba: u64, n: u64) -> bool {
        let zb = self.zb();
        n == 0 || lba / zb == lba.saturating_add(n - 1) / zb
    }

    /// Puts the zone starting at `zslba` in `state` as the device's own
    /// doing (Read Only or Offline: media worn out; or any other state,
    /// its resources taken or released without limits). Whether there is
    /// such a zone.
    pub(crate) fn set_state(&self, zslba: u64, state: ZoneState) -> bool {
        let mut t = self.table();
        match self.start_index(&t, zslba) {
            Ok(i) => {
                self.assign(&mut t, i, state);
                true
            }
            Err(_) => false,
        }
    }

    /// At a controller shutdown: every open zone becomes Closed, or
    /// Empty if nothing was written in it.
    pub(crate) fn shutdown(&self) {
        let mut t = self.table();
        for i in 0..t.zones.len() {
            let Zone { state, wp } = t.zones[i];
            if state.is_open() {
                let to = match wp == i as u64 * self.zb() {
                    true => ZoneState::Empty,
                    false => ZoneState::Closed,
                };
                self.assign(&mut t, i, to);
            }
        }
    }

    /// The open and active zones now.
    pub(crate) fn resources(&self) -> (u32, u32) {
        let t = self.table();
        (t.open, t.active)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zones(max_open: u32, max_active: u32) -> Zones {
        let config = ZoneConfig {
            zone_blocks: 1024,
            max_open,
            max_active,
            capacity: 1000,
        };
        Zones::new(config, 16 * 1024)
    }

    fn state(z: &Zones, zslba: u64) -> ZoneState {
        z.report(zslba, ReportFilter::All, true, 1).1[0].state
    }

    #[test]
    fn writes_at_the_pointer_open_fill_and_finish_zones() {
        let z = zones(0, 0);
        assert_eq!(z.write(5, 1), Err(ZoneError::InvalidWrite));
        assert_eq!(
            z.write(0, 1001),
            Err(ZoneError::Boundary),
            "past the capacity"
        );
        assert_eq!(z.write(0, 900), Ok(()));
        assert_eq!(state(&z, 0), ZoneState::ImplicitlyOpened);
        assert_eq!(z.resources(), (1, 1));
        assert_eq!(z.append(0, 100), Ok(900));
        assert_eq!(state(&z, 0), ZoneState::Full, "written to its capacity");
        assert_eq!(z.resources(), (0, 0));
        assert_eq!(z.write(1000, 1), Err(ZoneError::Full));
        assert_eq!(z.append(0, 1), Err(ZoneError::Full));
        assert_eq!(z.append(5, 1), Err(ZoneError::NotZoneStart));
        assert_eq!(z.append(1024, 8), Ok(1024));
        assert_eq!(z.append(1024, 8), Ok(1032));
        let (n, d) = z.report(0, ReportFilter::All, true, 3);
        assert_eq!(n, 3);
        assert_eq!(
            d[0].write_pointer,
            u64::MAX,
            "a full zone's, as QEMU has it"
        );
        assert_eq!((d[1].write_pointer, d[1].capacity), (1040, 1000));
        assert_eq!((d[2].state, d[2].write_pointer), (ZoneState::Empty, 2048));
        assert!(z.within_one_zone(1020, 4));
        assert!(!z.within_one_zone(1020, 5));
    }

    #[test]
    fn resources_run_out_and_implicit_zones_make_room() {
        let z = zones(2, 3);
        z.write(0, 1).unwrap();
        z.action(Some(1024), ZoneAction::Open).unwrap();
        // Two open: the implicitly opened one is closed to make room.
        z.write(2048, 1).unwrap();
        assert_eq!(state(&z, 0), ZoneState::Closed);
        assert_eq!(z.resources(), (2, 3));
        // No active resource left for an empty zone.
        assert_eq!(z.write(3072, 1), Err(ZoneError::TooManyActive));
        assert_eq!(
            z.action(Some(3072), ZoneAction::Open),
            Err(ZoneError::TooManyActive)
        );
        // Both open zones explicitly opened: nothing to close.
        z.action(Some(2048), ZoneAction::Open).unwrap();
        assert_eq!(z.write(1, 1), Err(ZoneError::TooManyOpen));
        z.action(Some(1024), ZoneAction::Close).unwrap();
        z.write(1, 1).unwrap();
        assert_eq!(state(&z, 0), ZoneState::ImplicitlyOpened);
        // Finishing releases both resources; resetting all empties.
        z.action(Some(0), ZoneAction::Finish).unwrap();
        assert_eq!(z.resources(), (1, 2));
        assert_eq!(
            z.action(None, ZoneAction::Reset).unwrap(),
            vec![0, 1024, 2048]
        );
        assert_eq!(z.resources(), (0, 0));
        assert_eq!(z.report(0, ReportFilter::Empty, false, 100).0, 16);
    }

    #[test]
    fn transitions_the_state_machine_refuses() {
        let z = zones(0, 0);
        use ZoneAction::*;
        assert_eq!(z.action(Some(0), Close), Err(ZoneError::InvalidTransition));
        assert_eq!(
            z.action(Some(0), Offline),
            Err(ZoneError::InvalidTransition)
        );
        z.action(Some(0), Finish).unwrap();
        assert_eq!(z.action(Some(0), Open), Err(ZoneError::InvalidTransition));
        z.action(Some(0), Finish).unwrap();
        assert!(z.set_state(1024, ZoneState::ReadOnly));
        assert_eq!(z.write(1024, 1), Err(ZoneError::ReadOnly));
        assert_eq!(
            z.action(Some(1024), Reset),
            Err(ZoneError::InvalidTransition)
        );
        assert_eq!(z.read(1024, 1), Ok(()));
        z.action(None, Offline).unwrap();
        assert_eq!(state(&z, 1024), ZoneState::Offline);
        assert_eq!(z.read(1024, 1), Err(ZoneError::Offline));
        assert_eq!(z.append(1024, 1), Err(ZoneError::Offline));
        assert_eq!(z.read(1020, 8), Err(ZoneError::Boundary));
        assert_eq!(z.action(Some(7), Reset), Err(ZoneError::NotZoneStart));
        assert!(!z.set_state(1 << 40, ZoneState::Offline));
        // Select All reaches only the zones an action applies to.
        z.write(2048, 1).unwrap();
        z.write(3072, 1).unwrap();
        z.action(None, Close).unwrap();
        assert_eq!(z.report(0, ReportFilter::Closed, false, 100).0, 2);
        z.action(None, Open).unwrap();
        assert_eq!(z.report(0, ReportFilter::ExplicitlyOpened, false, 100).0, 2);
        z.action(None, Finish).unwrap();
        assert_eq!(z.report(0, ReportFilter::Full, false, 100).0, 3);
    }
}
