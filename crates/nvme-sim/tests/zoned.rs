//! Zoned namespaces through the driver, against the model's zones (states,
//! write pointers, open and active limits): Report Zones over several
//! commands and with each filter, every zone action and the transitions
//! it makes, Zone Append returning where the data landed (blocking, and
//! many in flight at once landing in distinct places), writes at and off
//! the write pointer, the resource limits, a reset making reads return
//! zeroes, the refusals the driver makes before anything is submitted, and
//! each zoned status reported by name.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use nvme_sim::{
    Config, CqeCorruption, FaultAction, FaultRule, Match, NamespaceConfig, SimController,
};
use nvme_vfio::ctrl::{
    Controller, Io, IoBuf, Namespace, QueueConfig, QueuePair, ReportFilter, ZoneAction,
    ZoneDescriptor, ZoneState, ZoneType,
};
use nvme_vfio::nvme::cmd::io;
use nvme_vfio::Error;

use common::pattern;

/// Zone size of the zoned namespace, in 512-byte blocks (32 KiB).
const ZONE: u64 = 64;
/// Its zones.
const ZONES: u64 = 300;

/// Namespace 1: NVM. Namespace 2: zoned, 300 zones of 64 blocks, at most
/// 3 open and 4 active. MDTS 1 (8 KiB per command): a report of every
/// zone takes several commands.
fn config() -> Config {
    Config::default().mdts(1).namespaces(&[
        NamespaceConfig::new(8 << 10, 512),
        NamespaceConfig::new(ZONES * ZONE, 512)
            .zoned(ZONE)
            .zone_limits(3, 4),
    ])
}

/// The driver over the model (fields dropped in order: the queue pair,
/// then the controller, then the model).
struct Zoned {
    qp: QueuePair,
    ns: Namespace,
    ctrl: Controller,
    sim: SimController,
}

fn open(config: Config) -> Zoned {
    let (sim, ctrl) = common::driver::open(config, Duration::from_secs(30), true);
    let ns = ctrl.namespace(2).unwrap();
    let qp = ctrl
        .queue_pair(QueueConfig {
            depth: 64,
            ..QueueConfig::default()
        })
        .unwrap();
    Zoned { qp, ns, ctrl, sim }
}

impl Zoned {
    fn zone(&mut self, zslba: u64) -> ZoneDescriptor {
        let z = self
            .qp
            .report_zones(&self.ns, zslba, ReportFilter::All, 1)
            .unwrap();
        assert_eq!(z.len(), 1);
        z[0]
    }

    fn state(&mut self, zslba: u64) -> ZoneState {
        self.zone(zslba).state
    }

    fn io_commands(&self) -> u64 {
        self.sim.stats().io_commands
    }
}

/// The status name and code of a failed command's error.
fn status(e: &Error) -> (String, u8) {
    let s = e
        .status()
        .unwrap_or_else(|| panic!("not a command error: {e}"));
    assert_eq!(s.sct(), 1, "{e}");
    (s.name().to_string(), s.sc())
}

/// Asserts that `r` failed with the zoned status named `name`, and that
/// the error's message names it.
#[track_caller]
fn fails_with<T: std::fmt::Debug>(r: Result<T, Error>, name: &str, sc: u8) {
    let e = r.expect_err(name);
    assert_eq!(status(&e), (name.to_string(), sc), "{e}");
    assert!(e.to_string().contains(name), "{e}");
}

#[test]
fn a_report_lists_every_zone_over_several_commands_and_filters_them() {
    let mut z = open(config());
    let ns = z.ns.clone();
    let info = *ns.zones().unwrap();
    assert_eq!(
        (info.zone_blocks(), info.max_open(), info.max_active()),
        (ZONE, Some(3), Some(4))
    );
    assert_eq!(z.qp.zone_append_limit(&ns), 8192, "ZASL 0: MDTS");

    let before = z.io_commands();
    let all =
        z.qp.report_zones(&ns, 0, ReportFilter::All, usize::MAX)
            .unwrap();
    // 8 KiB per command: 127 descriptors each.
    assert_eq!(z.io_commands() - before, 3);
    assert_eq!(all.len() as u64, ZONES);
    for (i, d) in all.iter().enumerate() {
        let start = i as u64 * ZONE;
        assert_eq!(
            (d.start, d.write_pointer, d.capacity, d.state, d.zone_type),
            (
                start,
                start,
                ZONE,
                ZoneState::Empty,
                ZoneType::SequentialWriteRequired
            )
        );
    }
    // From the middle of a zone: that zone on; at most `max`.
    let some =
        z.qp.report_zones(&ns, 10 * ZONE + 5, ReportFilter::All, 4)
            .unwrap();
    assert_eq!(
        some.iter().map(|d| d.start).collect::<Vec<_>>(),
        [10, 11, 12, 13].map(|i| i * ZONE)
    );

    // One zone of each state a command makes.
    z.qp.write(&ns, 0, &[1u8; 512], false).unwrap();
    z.qp.zone_action(&ns, ZONE, ZoneAction::Open).unwrap();
    z.qp.write(&ns, 2 * ZONE, &[1u8; 512], false).unwrap();
    z.qp.zone_action(&ns, 2 * ZONE, ZoneAction::Close).unwrap();
    z.qp.zone_action(&ns, 200 * ZONE, ZoneAction::Finish)
        .unwrap();
    z.sim
        .set_zone_state(2, 250 * ZONE, ZoneState::ReadOnly)
        .unwrap();
    z.sim
        .set_zone_state(2, 299 * ZONE, ZoneState::Offline)
        .unwrap();
    let listed = |z: &mut Zoned, f| -> Vec<u64> {
        (z.qp.report_zones(&ns, 0, f, usize::MAX).unwrap())
            .iter()
            .map(|d| d.start / ZONE)
            .collect()
    };
    assert_eq!(listed(&mut z, ReportFilter::ImplicitlyOpened), [0]);
    assert_eq!(listed(&mut z, ReportFilter::ExplicitlyOpened), [1]);
    assert_eq!(listed(&mut z, ReportFilter::Closed), [2]);
    assert_eq!(listed(&mut z, ReportFilter::Full), [200]);
    assert_eq!(listed(&mut z, ReportFilter::ReadOnly), [250]);
    assert_eq!(listed(&mut z, ReportFilter::Offline), [299]);
    assert_eq!(listed(&mut z, ReportFilter::Empty).len() as u64, ZONES - 6);
    let d = z.zone(2 * ZONE);
    assert_eq!(
        (d.state, d.write_pointer, d.written()),
        (ZoneState::Closed, 2 * ZONE + 1, Some(1))
    );
    assert_eq!(
        z.zone(200 * ZONE).written(),
        None,
        "a full zone has no write pointer"
    );

    // The NVM namespace has no zones; LBAs past the end are refused.
    let nvm = z.ctrl.namespace(1).unwrap();
    let before = z.io_commands();
    assert!(matches!(
        z.qp.report_zones(&nvm, 0, ReportFilter::All, 10),
        Err(Error::NotZoned { nsid: 1 })
    ));
    assert!(matches!(
        z.qp.report_zones(&ns, ZONES * ZONE, ReportFilter::All, 10),
        Err(Error::Invalid(_))
    ));
    assert_eq!(z.io_commands(), before);
}

#[test]
fn every_action_makes_its_transitions() {
    let mut z = open(config());
    let ns = z.ns.clone();
    let data = pattern(1024, 3);
    use ZoneAction::*;
    // Open, close, open again, finish, reset.
    z.qp.zone_action(&ns, 0, Open).unwrap();
    assert_eq!(z.state(0), ZoneState::ExplicitlyOpened);
    z.qp.zone_action(&ns, 0, Close).unwrap();
    assert_eq!(
        z.state(0),
        ZoneState::Closed,
        "closed with nothing written, as QEMU has it"
    );
    z.qp.zone_action(&ns, 0, Open).unwrap();
    z.qp.write(&ns, 0, &data, false).unwrap();
    assert_eq!(
        z.state(0),
        ZoneState::ExplicitlyOpened,
        "written, still explicitly opened"
    );
    z.qp.zone_action(&ns, 0, Finish).unwrap();
    assert_eq!(z.state(0), ZoneState::Full);
    z.qp.zone_action(&ns, 0, Finish).unwrap();
    z.qp.zone_action(&ns, 0, Reset).unwrap();
    let d = z.zone(0);
    assert_eq!((d.state, d.write_pointer), (ZoneState::Empty, 0));
    z.qp.zone_action(&ns, 0, Reset).unwrap();

    // A write opens a zone implicitly; Open makes it explicit.
    z.qp.write(&ns, ZONE, &data, false).unwrap();
    assert_eq!(z.state(ZONE), ZoneState::ImplicitlyOpened);
    z.qp.zone_action(&ns, ZONE, Open).unwrap();
    assert_eq!(z.state(ZONE), ZoneState::ExplicitlyOpened);

    // Transitions the state machine has not: named, and nothing changes.
    let named = "Invalid Zone State Transition";
    fails_with(z.qp.zone_action(&ns, 3 * ZONE, Close), named, 0xbf);
    fails_with(z.qp.zone_action(&ns, 3 * ZONE, Offline), named, 0xbf);
    z.qp.zone_action(&ns, 4 * ZONE, Finish).unwrap();
    fails_with(z.qp.zone_action(&ns, 4 * ZONE, Open), named, 0xbf);
    fails_with(z.qp.zone_action(&ns, 4 * ZONE, Close), named, 0xbf);
    assert_eq!(z.state(4 * ZONE), ZoneState::Full);

    // Read Only and Offline zones: only Offline takes a Read Only one.
    z.sim
        .set_zone_state(2, 5 * ZONE, ZoneState::ReadOnly)
        .unwrap();
    for a in [Open, Close, Finish, Reset] {
        fails_with(z.qp.zone_action(&ns, 5 * ZONE, a), named, 0xbf);
    }
    z.qp.zone_action(&ns, 5 * ZONE, Offline).unwrap();
    assert_eq!(z.state(5 * ZONE), ZoneState::Offline);
    z.qp.zone_action(&ns, 5 * ZONE, Offline).unwrap();
    fails_with(z.qp.zone_action(&ns, 5 * ZONE, Reset), named, 0xbf);

    // Select All: each action on the zones it applies to.
    z.qp.write(&ns, 6 * ZONE, &data, false).unwrap();
    z.qp.zone_action_all(&ns, Close).unwrap();
    let closed =
        z.qp.report_zones(&ns, 0, ReportFilter::Closed, 100)
            .unwrap();
    assert_eq!(
        closed.iter().map(|d| d.start).collect::<Vec<_>>(),
        [ZONE, 6 * ZONE]
    );
    z.qp.zone_action_all(&ns, Open).unwrap();
    assert_eq!(z.state(6 * ZONE), ZoneState::ExplicitlyOpened);
    z.qp.zone_action_all(&ns, Finish).unwrap();
    let full = z.qp.report_zones(&ns, 0, ReportFilter::Full, 100).unwrap();
    assert_eq!(
        full.iter().map(|d| d.start / ZONE).collect::<Vec<_>>(),
        [1, 4, 6]
    );
    z.sim
        .set_zone_state(2, 7 * ZONE, ZoneState::ReadOnly)
        .unwrap();
    z.qp.zone_action_all(&ns, Offline).unwrap();
    assert_eq!(z.state(7 * ZONE), ZoneState::Offline);
    z.qp.zone_action_all(&ns, Reset).unwrap();
    let left: Vec<_> = (z
        .qp
        .report_zones(&ns, 0, ReportFilter::All, usize::MAX)
        .unwrap())
    .into_iter()
    .filter(|d| d.state != ZoneState::Empty)
    .map(|d| (d.start / ZONE, d.state))
    .collect();
    assert_eq!(left, [(5, ZoneState::Offline), (7, ZoneState::Offline)]);
    assert_eq!(z.sim.zone_resources(2), Some((0, 0)));
}

#[test]
fn appends_return_the_lbas_where_their_data_landed() {
    let mut z = open(config());
    let ns = z.ns.clone();
    // Blocking: one after the other, at the write pointer.
    let a = pattern(1024, 1);
    let b = pattern(3072, 2);
    assert_eq!(
        z.qp.zone_append(&ns, 3 * ZONE, &a, false).unwrap(),
        3 * ZONE
    );
    assert_eq!(
        z.qp.zone_append(&ns, 3 * ZONE, &b, true).unwrap(),
        3 * ZONE + 2
    );
    assert_eq!(z.zone(3 * ZONE).write_pointer, 3 * ZONE + 8);
    let mut back = vec![0u8; 4096];
    z.qp.read(&ns, 3 * ZONE, &mut back).unwrap();
    assert!(back[..1024] == a[..] && back[1024..] == b[..]);
    // Memory the controller cannot be pointed at goes through a bounce
    // buffer.
    let odd = vec![7u8; 513];
    assert_eq!(
        z.qp.zone_append(&ns, 3 * ZONE, &odd[1..], false).unwrap(),
        3 * ZONE + 8
    );

    // Asynchronous: 32 appends of 2 blocks in flight to one zone fill it;
    // each lands somewhere else, and holds its own data.
    let zone = 9 * ZONE;
    let n = (ZONE / 2) as usize;
    for i in 0..n {
        let io = Io::zone_append(&ns, zone, vec![i as u8 + 1; 1024]).tag(i as u64);
        let io = if i % 2 == 0 { io.fua() } else { io };
        z.qp.submit(io).map_err(|(e, _)| e).unwrap();
    }
    let done = common::driver::wait_all(&mut z.qp, n);
    let mut landed = HashSet::new();
    let mut at = vec![0u64; n];
    for d in done {
        d.result.as_ref().unwrap();
        let lba = d.appended_lba.expect("an append's LBA");
        assert!(
            (zone..zone + ZONE).contains(&lba) && (lba - zone) % 2 == 0,
            "{lba}"
        );
        assert!(landed.insert(lba), "two appends landed at {lba}");
        assert!(matches!(d.buf, IoBuf::Vec(ref v) if v.len() == 1024));
        at[d.tag as usize] = lba;
    }
    assert_eq!(z.state(zone), ZoneState::Full, "filled by the appends");
    for (i, &lba) in at.iter().enumerate() {
        let mut back = vec![0u8; 1024];
        z.qp.read(&ns, lba, &mut back).unwrap();
        assert!(
            back.iter().all(|&x| x == i as u8 + 1),
            "append {i} at {lba}"
        );
    }
    // Into a DMA buffer, with_len; reads and writes carry no LBA back.
    let mut buf = z.ctrl.dma_alloc(4096).unwrap();
    buf.as_mut_slice().fill(0x3c);
    z.qp.submit(Io::zone_append(&ns, 10 * ZONE, buf).with_len(512).tag(9))
        .map_err(|(e, _)| e)
        .unwrap();
    z.qp.submit(Io::read(&ns, 0, vec![0u8; 512]).tag(10))
        .map_err(|(e, _)| e)
        .unwrap();
    for d in common::driver::wait_all(&mut z.qp, 2) {
        d.result.as_ref().unwrap();
        let want = if d.tag == 9 { Some(10 * ZONE) } else { None };
        assert_eq!(d.appended_lba, want);
    }
    assert_eq!(z.zone(10 * ZONE).write_pointer, 10 * ZONE + 1);
}

#[test]
fn an_append_lba_outside_its_zone_is_a_device_error() {
    let mut z = open(config());
    let ns = z.ns.clone();
    z.sim.inject(FaultRule::next(
        Match::io().opcode(io::ZONE_APPEND),
        FaultAction::Corrupt(CqeCorruption::Result(2 * ZONE)),
    ));
    let e = z.qp.zone_append(&ns, 0, &[0u8; 512], false).unwrap_err();
    assert!(
        matches!(
            e,
            Error::DeviceData {
                what: "Zone Append",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("LBA 0x80"), "{e}");
    z.sim.inject(FaultRule::next(
        Match::io().opcode(io::ZONE_APPEND),
        FaultAction::Corrupt(CqeCorruption::Result(u64::MAX)),
    ));
    z.qp.submit(Io::zone_append(&ns, 0, vec![0u8; 512]))
        .map_err(|(e, _)| e)
        .unwrap();
    let d = common::driver::wait_all(&mut z.qp, 1).pop().unwrap();
    assert!(matches!(d.result, Err(Error::DeviceData { .. })));
    assert_eq!(d.appended_lba, None);
    // The queue pair goes on.
    assert_eq!(z.qp.zone_append(&ns, 0, &[0u8; 512], false).unwrap(), 2);
}

#[test]
fn writes_go_at_the_write_pointer_only() {
    let mut z = open(config());
    let ns = z.ns.clone();
    let data = pattern(4096, 9);
    z.qp.write(&ns, 0, &data, false).unwrap();
    // Off the pointer (before, after it, another zone's middle): named.
    for lba in [0, 9, ZONE + 1] {
        fails_with(
            z.qp.write(&ns, lba, &data[..512], false),
            "Zone Invalid Write",
            0xbc,
        );
    }
    z.qp.write(&ns, 8, &data[..512], true).unwrap();
    // Longer than a command: one command at a time, in order.
    let big = pattern(24 << 10, 4);
    z.qp.write(&ns, ZONE, &big, false).unwrap();
    assert_eq!(z.zone(ZONE).write_pointer, ZONE + 48);
    let mut back = vec![0u8; big.len()];
    z.qp.read(&ns, ZONE, &mut back).unwrap();
    assert!(back == big);
    // Write Zeroes too.
    z.qp.write_zeroes(&ns, ZONE + 48, 8).unwrap();
    fails_with(
        z.qp.write_zeroes(&ns, ZONE + 48, 8),
        "Zone Invalid Write",
        0xbc,
    );
    z.qp.write(&ns, 2 * ZONE, &data, false).unwrap();

    // Asynchronous writes at the pointer, one command each.
    z.qp.submit(Io::write(&ns, 2 * ZONE + 8, vec![5u8; 4096]))
        .map_err(|(e, _)| e)
        .unwrap();
    let d = common::driver::wait_all(&mut z.qp, 1).pop().unwrap();
    d.result.unwrap();
    z.qp.submit(Io::write(&ns, 2 * ZONE, vec![5u8; 512]))
        .map_err(|(e, _)| e)
        .unwrap();
    let d = common::driver::wait_all(&mut z.qp, 1).pop().unwrap();
    assert_eq!(status(&d.result.unwrap_err()).0, "Zone Invalid Write");

    // Refused before submission: across a zone boundary, and an
    // asynchronous write of more than one command.
    let before = z.io_commands();
    let e = z.qp.write(&ns, 3 * ZONE - 4, &data, false).unwrap_err();
    assert!(
        matches!(e, Error::CrossesZone { lba, blocks: 8, zone_blocks: ZONE } if lba == 3 * ZONE - 4),
        "{e}"
    );
    assert!(matches!(
        z.qp.write_zeroes(&ns, ZONE - 1, 2),
        Err(Error::CrossesZone { .. })
    ));
    let (e, io) =
        z.qp.submit(Io::write(&ns, 4 * ZONE, vec![0u8; 16 << 10]))
            .unwrap_err();
    assert!(
        matches!(
            e,
            Error::TooLarge {
                len: 16384,
                max: 8192
            }
        ),
        "{e}"
    );
    assert_eq!(io.into_buf().len(), 16 << 10);
    let (e, _) =
        z.qp.submit(Io::write(&ns, 3 * ZONE - 4, vec![0u8; 4096]))
            .unwrap_err();
    assert!(matches!(e, Error::CrossesZone { .. }), "{e}");
    let seg = blk_dma::HostSeg::from_slice(&data);
    // SAFETY: `data` outlives the call, and the request is refused before
    // anything is submitted.
    let e = unsafe {
        z.qp.submit_raw(
            nvme_vfio::ctrl::Op::Write { fua: false },
            &ns,
            3 * ZONE - 4,
            &[seg],
            1,
        )
    };
    assert!(matches!(e, Err(Error::CrossesZone { .. })));
    assert_eq!(z.io_commands(), before);
    assert_eq!(z.qp.inflight(), 0);
}

#[test]
fn the_open_and_active_limits_hold() {
    let mut z = open(config());
    let ns = z.ns.clone();
    use ZoneAction::*;
    // 3 open at most: three explicitly opened, a fourth refused.
    for i in 0..3 {
        z.qp.zone_action(&ns, i * ZONE, Open).unwrap();
    }
    fails_with(
        z.qp.zone_action(&ns, 3 * ZONE, Open),
        "Too Many Open Zones",
        0xbe,
    );
    fails_with(
        z.qp.write(&ns, 3 * ZONE, &[0u8; 512], false),
        "Too Many Open Zones",
        0xbe,
    );
    fails_with(
        z.qp.zone_append(&ns, 3 * ZONE, &[0u8; 512], false),
        "Too Many Open Zones",
        0xbe,
    );
    // Closed, a zone stays active: 4 active at most.
    z.qp.zone_action(&ns, 0, Close).unwrap();
    z.qp.zone_action(&ns, 3 * ZONE, Open).unwrap();
    z.qp.zone_action(&ns, ZONE, Close).unwrap();
    assert_eq!(z.sim.zone_resources(2), Some((2, 4)));
    fails_with(
        z.qp.zone_action(&ns, 4 * ZONE, Open),
        "Too Many Active Zones",
        0xbd,
    );
    fails_with(
        z.qp.write(&ns, 4 * ZONE, &[0u8; 512], false),
        "Too Many Active Zones",
        0xbd,
    );
    // Finishing one frees both resources.
    z.qp.zone_action(&ns, 0, Finish).unwrap();
    z.qp.zone_append(&ns, 4 * ZONE, &[0u8; 512], false).unwrap();
    assert_eq!(z.state(4 * ZONE), ZoneState::ImplicitlyOpened);
    // With the open resources all taken, writing a closed zone closes the
    // zone implicitly opened first to make room.
    assert_eq!(z.sim.zone_resources(2), Some((3, 4)));
    z.qp.write(&ns, ZONE, &[0u8; 512], false).unwrap();
    assert_eq!(z.state(4 * ZONE), ZoneState::Closed);
    assert_eq!(z.state(ZONE), ZoneState::ImplicitlyOpened);
    z.qp.zone_action_all(&ns, Reset).unwrap();
    assert_eq!(z.sim.zone_resources(2), Some((0, 0)));
}

#[test]
fn a_reset_makes_the_zone_read_zeroes() {
    let mut z = open(config());
    let ns = z.ns.clone();
    let data = pattern(8192, 5);
    for zone in [0, ZONE] {
        z.qp.write(&ns, zone, &data, false).unwrap();
    }
    let mut back = vec![0u8; 8192];
    z.qp.read(&ns, 0, &mut back).unwrap();
    assert!(back == data);
    z.qp.zone_action(&ns, 0, ZoneAction::Reset).unwrap();
    z.qp.read(&ns, 0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0), "reset zone 0 reads zeroes");
    z.qp.read(&ns, ZONE, &mut back).unwrap();
    assert!(back == data, "zone 1 untouched");
    // Written again from its start, like new.
    assert_eq!(z.qp.zone_append(&ns, 0, &data[..512], false).unwrap(), 0);
    z.qp.zone_action_all(&ns, ZoneAction::Reset).unwrap();
    for zone in [0, ZONE] {
        z.qp.read(&ns, zone, &mut back).unwrap();
        assert!(
            back.iter().all(|&b| b == 0),
            "zone at {zone} after resetting all"
        );
    }
}

#[test]
fn full_read_only_and_offline_zones_fail_by_name() {
    let mut z = open(config());
    let ns = z.ns.clone();
    let block = [1u8; 512];
    for _ in 0..7 {
        z.qp.zone_append(&ns, 0, &vec![0u8; 4096], false).unwrap();
    }
    // 8 blocks left: 9 do not fit.
    fails_with(
        z.qp.zone_append(&ns, 0, &vec![0u8; 9 * 512], false),
        "Zone Boundary Error",
        0xb8,
    );
    z.qp.zone_append(&ns, 0, &vec![0u8; 4096], false).unwrap();
    assert_eq!(z.state(0), ZoneState::Full);
    fails_with(
        z.qp.zone_append(&ns, 0, &block, false),
        "Zone Is Full",
        0xb9,
    );
    fails_with(z.qp.write(&ns, 0, &block, false), "Zone Is Full", 0xb9);

    z.sim.set_zone_state(2, ZONE, ZoneState::ReadOnly).unwrap();
    fails_with(
        z.qp.zone_append(&ns, ZONE, &block, false),
        "Zone Is Read Only",
        0xba,
    );
    fails_with(
        z.qp.write(&ns, ZONE, &block, false),
        "Zone Is Read Only",
        0xba,
    );
    let mut back = vec![0u8; 512];
    z.qp.read(&ns, ZONE, &mut back).unwrap();

    z.qp.zone_action(&ns, ZONE, ZoneAction::Offline).unwrap();
    fails_with(z.qp.read(&ns, ZONE, &mut back), "Zone Is Offline", 0xbb);
    fails_with(
        z.qp.zone_append(&ns, ZONE, &block, false),
        "Zone Is Offline",
        0xbb,
    );
    // Asynchronously the same, named in the Done's error.
    z.qp.submit(Io::zone_append(&ns, ZONE, vec![0u8; 512]))
        .map_err(|(e, _)| e)
        .unwrap();
    let d = common::driver::wait_all(&mut z.qp, 1).pop().unwrap();
    let e = d.result.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("Zone Append failed: Zone Is Offline"),
        "{e}"
    );
}

#[test]
fn the_driver_refuses_what_it_knows_is_wrong() {
    // ZASL 1: 8 KiB per append with 4 KiB pages; MDTS 16 KiB.
    let mut z = open(config().mdts(2).zasl(1));
    let ns = z.ns.clone();
    let nvm = z.ctrl.namespace(1).unwrap();
    assert!(!nvm.is_zoned() && ns.is_zoned());
    assert_eq!(z.qp.zone_append_limit(&ns), 8192);
    assert_eq!(z.qp.zone_append_limit(&nvm), 0);
    let before = z.io_commands();
    let e =
        z.qp.zone_append(&ns, 0, &vec![0u8; 8704], false)
            .unwrap_err();
    assert!(
        matches!(
            e,
            Error::OverLimit {
                what: "Zone Append bytes",
                requested: 8704,
                max: 8192,
                limit: "ZASL"
            }
        ),
        "{e}"
    );
    let e = z.qp.zone_append(&ns, 5, &[0u8; 512], false).unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("not the start of a zone")),
        "{e}"
    );
    assert!(matches!(
        z.qp.zone_append(&ns, ZONES * ZONE, &[0u8; 512], false),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        z.qp.zone_append(&ns, 0, &[0u8; 100], false),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        z.qp.zone_append(&ns, 0, &[], false),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        z.qp.zone_append(&nvm, 0, &[0u8; 512], false),
        Err(Error::NotZoned { nsid: 1 })
    ));
    assert!(matches!(
        z.qp.zone_action(&nvm, 0, ZoneAction::Reset),
        Err(Error::NotZoned { nsid: 1 })
    ));
    assert!(matches!(
        z.qp.zone_action_all(&nvm, ZoneAction::Reset),
        Err(Error::NotZoned { nsid: 1 })
    ));
    let e =
        z.qp.zone_action(&ns, ZONE + 1, ZoneAction::Open)
            .unwrap_err();
    assert!(
        matches!(&e, Error::Invalid(m) if m.contains("not the start of a zone")),
        "{e}"
    );
    assert!(matches!(
        z.qp.zone_action(&ns, ZONES * ZONE, ZoneAction::Open),
        Err(Error::Invalid(_))
    ));
    // Asynchronously: the request comes back whole.
    for (io, what) in [
        (Io::zone_append(&ns, 0, vec![0u8; 16 << 10]), "over ZASL"),
        (Io::zone_append(&ns, 1, vec![0u8; 512]), "not a zone start"),
        (Io::zone_append(&nvm, 0, vec![0u8; 512]), "not zoned"),
        (
            Io::zone_append(&ns, 0, vec![0u8; 512]).with_len(1024),
            "past the buffer",
        ),
    ] {
        let (e, io) = z.qp.submit(io).unwrap_err();
        assert!(!matches!(e, Error::Command { .. }), "{what}: {e}");
        assert!(io.into_buf().len() >= 512, "{what}");
    }
    let seg = blk_dma::HostSeg::from_slice(&[0u8; 512]);
    // SAFETY: refused before anything is submitted (checked below).
    let e = unsafe {
        z.qp.submit_raw(
            nvme_vfio::ctrl::Op::ZoneAppend { fua: false },
            &ns,
            0,
            &[seg],
            1,
        )
    };
    assert!(matches!(e, Err(Error::Invalid(_))));
    // A zone smaller than the append: longer than a zone.
    assert_eq!(z.io_commands(), before);
    assert_eq!(z.qp.inflight(), 0);

    // The controller's own check of ZASL, through passthrough.
    let cmd = nvme_vfio::nvme::cmd::Command::zone_append(2, 0, 32, false);
    let buf = z.ctrl.dma_alloc(16 << 10).unwrap();
    let e =
        z.qp.io_passthru(&ns, cmd, Some((buf, 16 << 10)))
            .unwrap_err();
    assert_eq!(
        e.status().map(|s| (s.sct(), s.sc())),
        Some((0, 0x02)),
        "{e}"
    );
}

#[test]
fn an_append_longer_than_a_zone_and_a_smaller_capacity() {
    // Zones of 64 blocks, 40 of them writable.
    let config = Config::default().namespaces(&[NamespaceConfig::new(16 * ZONE, 512)
        .zoned(ZONE)
        .zone_capacity(40)]);
    let (_sim, ctrl) = common::driver::open(config, Duration::from_secs(30), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let e = qp
        .zone_append(&ns, 0, &vec![0u8; 65 * 512], false)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::CrossesZone {
                lba: 0,
                blocks: 65,
                zone_blocks: ZONE
            }
        ),
        "{e}"
    );
    let d = qp.report_zones(&ns, 0, ReportFilter::All, 1).unwrap()[0];
    assert_eq!(d.capacity, 40);
    assert_eq!(
        qp.zone_append(&ns, 0, &vec![0u8; 32 * 512], false).unwrap(),
        0
    );
    fails_with(
        qp.zone_append(&ns, 0, &vec![0u8; 9 * 512], false),
        "Zone Boundary Error",
        0xb8,
    );
    assert_eq!(
        qp.zone_append(&ns, 0, &vec![0u8; 8 * 512], false).unwrap(),
        32
    );
    let d = qp.report_zones(&ns, 0, ReportFilter::All, 1).unwrap()[0];
    assert_eq!(d.state, ZoneState::Full, "written to its capacity");
}

#[test]
fn appends_as_futures_resolve_to_their_lbas() {
    use nvme_vfio::ctrl::AsyncQueuePair;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let z = open(config());
    let ns = z.ns.clone();
    let aq = AsyncQueuePair::new(z.qp).map_err(|(e, _)| e).unwrap();
    let futures: Vec<_> = (0..8u8)
        .map(|i| {
            aq.zone_append(&ns, 5 * ZONE, vec![i; 1024])
                .map_err(|(e, _)| e)
                .unwrap()
        })
        .collect();
    let mut cx = Context::from_waker(Waker::noop());
    let mut landed = HashSet::new();
    for f in futures {
        let mut f = std::pin::pin!(f);
        let (buf, lba) = loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                break v;
            }
            aq.poll();
        };
        let lba = lba.unwrap();
        assert!(
            (5 * ZONE..5 * ZONE + 16).contains(&lba) && landed.insert(lba),
            "{lba}"
        );
        assert_eq!(buf.len(), 1024);
    }
    // A failed append resolves to its error, named.
    let f = aq.zone_append(&ns, 5 * ZONE + 1, vec![0u8; 512]);
    assert!(matches!(f, Err((Error::Invalid(_), _))));
    z.sim
        .set_zone_state(2, 6 * ZONE, ZoneState::ReadOnly)
        .unwrap();
    let mut f = std::pin::pin!(aq
        .zone_append(&ns, 6 * ZONE, vec![0u8; 512])
        .map_err(|(e, _)| e)
        .unwrap());
    let (_, r) = loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            break v;
        }
        aq.poll();
    };
    assert_eq!(status(&r.unwrap_err()).0, "Zone Is Read Only");
    drop(aq);
}

#[test]
fn a_shutdown_closes_the_open_zones() {
    let z = open(config());
    let ns = z.ns.clone();
    let mut qp = z.qp;
    qp.write(&ns, 0, &[1u8; 512], false).unwrap();
    qp.zone_action(&ns, ZONE, ZoneAction::Open).unwrap();
    qp.zone_append(&ns, 2 * ZONE, &[1u8; 512], false).unwrap();
    qp.zone_action(&ns, 2 * ZONE, ZoneAction::Open).unwrap();
    assert_eq!(z.sim.zone_resources(2), Some((3, 3)));
    // The driver shuts the controller down when it is dropped.
    drop(qp);
    drop(z.ctrl);
    let (ctrl, sim) = (
        {
            let space = nvme_vfio::mem::DmaSpace::new(
                z.sim.iommu().clone(),
                nvme_vfio::mem::SpaceConfig { hugepages: false },
            );
            let config = nvme_vfio::ctrl::Config {
                space: nvme_vfio::mem::SpaceConfig { hugepages: false },
                io_queues: 2,
                ..Default::default()
            };
            // SAFETY: the registers, IOMMU and PCI function all belong to
            // `z.sim`, which nothing else drives now.
            unsafe {
                Controller::with_backend(
                    z.sim.registers(),
                    space,
                    config,
                    Some(z.sim.pci_function()),
                )
            }
            .unwrap()
        },
        z.sim,
    );
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let states: Vec<_> = (qp.report_zones(&ns, 0, ReportFilter::All, 3).unwrap())
        .iter()
        .map(|d| (d.state, d.write_pointer))
        .collect();
    assert_eq!(
        states,
        [
            (ZoneState::Closed, 1),
            (ZoneState::Empty, ZONE),
            (ZoneState::Closed, 2 * ZONE + 1)
        ],
        "written open zones closed, the unwritten one empty"
    );
    assert_eq!(sim.zone_resources(2), Some((0, 2)));
    drop(qp);
    drop(ctrl);
}
