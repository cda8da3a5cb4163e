//! Completion statuses: their names and messages against the
//! specifications' values, the Command Retry Delay, More and Do Not Retry
//! bits, and the Error Information log entry the driver attaches to a
//! failed command whose status has the More bit set (blocking I/O, admin
//! commands, and afterwards for requests completed by `poll`).

mod common;

use std::time::Duration;

use common::driver::{open, wait_all};
use nvme_sim::{Config, ErrorDetail, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Controller, Io, QueueConfig};
use nvme_vfio::nvme::cmd::{admin, io, CommandKind, Status};
use nvme_vfio::Error;

fn bring_up() -> (SimController, Controller) {
    open(Config::default(), Duration::from_secs(5), false)
}

/// The SQ ID, command ID and attached entry of a failed command's error.
fn parts(
    e: &Error,
) -> (
    Status,
    u16,
    u16,
    Option<nvme_vfio::nvme::log::ErrorLogEntry>,
) {
    match e {
        Error::Command {
            status,
            sqid,
            cid,
            log,
            ..
        } => (*status, *sqid, *cid, log.as_deref().copied()),
        e => panic!("not a command error: {e}"),
    }
}

#[test]
fn a_read_failing_with_more_carries_the_entry_naming_the_failed_lba() {
    let (sim, ctrl) = bring_up();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut buf = vec![0u8; 8 * 512];
    let mut counts = Vec::new();
    for (lba, bad) in [(100, 103), (200, 207)] {
        sim.inject(FaultRule::next(
            Match::io().opcode(io::READ),
            FaultAction::Logged {
                status: Status::new(2, 0x81, true),
                detail: ErrorDetail::at_lba(bad),
            },
        ));
        let admin_before = sim.stats().admin_commands;
        let e = qp.read(&ns, lba, &mut buf).unwrap_err();
        let (status, sqid, cid, log) = parts(&e);
        assert_eq!((status.sct(), status.sc()), (2, 0x81));
        assert!(status.more() && status.dnr(), "{status:?}");
        assert_eq!(sqid, qp.qid());
        let entry = log.expect("the entry is attached");
        assert_eq!((entry.sqid, entry.cid), (sqid, cid));
        assert_eq!(
            entry.lba, bad,
            "the first LBA that failed, not the command's"
        );
        assert_eq!(entry.nsid, 1);
        assert_eq!(entry.opcode, io::READ);
        assert_eq!(entry.status(), status);
        assert_eq!(e.error_log(), Some(&entry));
        assert_eq!(
            sim.stats().admin_commands - admin_before,
            1,
            "one Get Log Page fetched it"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "Read failed: Unrecovered Read Error (SCT 0x2, SC 0x81, do not retry, more info \
                 in the error log): the read data could not be recovered from the media; error \
                 log entry {} (SQ {sqid}, command {cid:#06x}, opcode 0x02): namespace 1, LBA \
                 {bad} ({bad:#x})",
                entry.error_count
            )
        );
        counts.push(entry.error_count);
    }
    assert!(counts[1] > counts[0], "error counts increase: {counts:?}");
    // I/O goes on.
    qp.read(&ns, 100, &mut buf).unwrap();
}

#[test]
fn every_blocking_call_attaches_the_entry() {
    let (sim, ctrl) = bring_up();
    let ns = ctrl.namespace(1).unwrap();
    // Four slots: a 1 MiB read runs in waves of three 128 KiB commands.
    let mut qp = ctrl
        .queue_pair(QueueConfig {
            depth: 4,
            ..QueueConfig::default()
        })
        .unwrap();
    let mut big = vec![0u8; 1 << 20];
    sim.inject(FaultRule::nth(
        Match::io().opcode(io::READ),
        4,
        FaultAction::Logged {
            status: Status::new(2, 0x81, false),
            detail: ErrorDetail::at_lba(800),
        },
    ));
    let e = qp.read(&ns, 0, &mut big).unwrap_err();
    assert!(matches!(e, Error::At { lba: 768, .. }), "{e}");
    assert_eq!(e.error_log().map(|l| l.lba), Some(800), "{e}");
    assert!(e.status().unwrap().more());
    assert!(
        e.to_string().starts_with(
            "transfer failed at LBA 768 (+768 blocks): Read failed: Unrecovered Read Error"
        ),
        "{e}"
    );
    // A command without data (Write Zeroes).
    sim.inject(FaultRule::next(
        Match::io().opcode(io::WRITE_ZEROES),
        FaultAction::Logged {
            status: Status::new(1, 0x82, true),
            detail: ErrorDetail::at_lba(70),
        },
    ));
    let e = qp.write_zeroes(&ns, 64, 16).unwrap_err();
    let (status, sqid, cid, log) = parts(&e);
    assert_eq!(status.name(), "Attempted Write to Read Only Range");
    let entry = log.expect("the entry is attached");
    assert_eq!((entry.sqid, entry.cid, entry.lba), (sqid, cid, 70));
    assert_eq!(entry.opcode, io::WRITE_ZEROES);
}

#[test]
fn an_admin_command_failing_with_more_carries_its_entry() {
    let (sim, ctrl) = bring_up();
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::GET_FEATURES),
        FaultAction::Logged {
            status: Status::new(0, 0x02, true),
            detail: ErrorDetail {
                parameter: Some((40, 0)),
                ..ErrorDetail::default()
            },
        },
    ));
    let e = ctrl.write_cache().unwrap_err();
    let (status, sqid, cid, log) = parts(&e);
    assert_eq!(sqid, 0, "the admin queue");
    assert!(status.more());
    let entry = log.expect("the entry is attached");
    assert_eq!((entry.sqid, entry.cid), (0, cid));
    assert_eq!(entry.opcode, admin::GET_FEATURES);
    assert_eq!(entry.parameter(), Some((40, 0)), "CDW10: the feature ID");
    let text = e.to_string();
    assert!(
        text.starts_with(
            "Get Features (Volatile Write Cache) failed: Invalid Field in Command (SCT 0x0, SC \
             0x02, do not retry, more info in the error log): a field of the command holds a \
             reserved or unsupported value; error log entry"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("field in error at byte 40 bit 0 of the command"),
        "{text}"
    );
    // A command specific status of an admin command is named for one.
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::GET_FEATURES),
        FaultAction::Status(Status::new(1, 0x82, true)),
    ));
    let e = ctrl.write_cache().unwrap_err();
    assert!(
        e.to_string()
            .contains("failed: I/O Command Set Specific (SCT 0x1, SC 0x82, do not retry)"),
        "{e}"
    );
    assert!(ctrl.write_cache().unwrap());
}

#[test]
fn an_entry_for_another_command_is_not_attached() {
    let (sim, ctrl) = bring_up();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut buf = vec![0u8; 512];
    // The controller logs the failure under another command ID.
    let wrong = 0xbeef;
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Logged {
            status: Status::new(2, 0x81, true),
            detail: ErrorDetail {
                cid: Some(wrong),
                ..ErrorDetail::at_lba(5)
            },
        },
    ));
    let e = qp.read(&ns, 5, &mut buf).unwrap_err();
    let (status, sqid, cid, log) = parts(&e);
    assert_ne!(cid, wrong, "the test needs the command to have another ID");
    assert!(status.more());
    assert_eq!(log, None, "{e}");
    let newest = ctrl.error_log(1).unwrap();
    assert_eq!(
        (newest[0].sqid, newest[0].cid, newest[0].lba),
        (sqid, wrong, 5),
        "the log has the entry, under the other ID"
    );
    assert_eq!(ctrl.error_log_for(sqid, cid).unwrap(), None);
    // Also on the admin queue.
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::GET_FEATURES),
        FaultAction::Logged {
            status: Status::new(0, 0x06, false),
            detail: ErrorDetail {
                cid: Some(wrong),
                ..ErrorDetail::default()
            },
        },
    ));
    let e = ctrl.write_cache().unwrap_err();
    assert_eq!(parts(&e).3, None, "{e}");
    // Without the More bit, nothing is fetched, although the controller
    // logged the failure.
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Status(Status::new(2, 0x81, true)),
    ));
    let admin_before = sim.stats().admin_commands;
    let e = qp.read(&ns, 9, &mut buf).unwrap_err();
    let (status, sqid, cid, log) = parts(&e);
    assert!(!status.more());
    assert_eq!(log, None);
    assert_eq!(sim.stats().admin_commands, admin_before, "no Get Log Page");
    let entry = ctrl.error_log_for(sqid, cid).unwrap().unwrap();
    assert_eq!(entry.lba, 9);
}

#[test]
fn the_newest_entry_of_a_reused_command_id_is_attached() {
    let (sim, ctrl) = bring_up();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut buf = vec![0u8; 512];
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Status(Status::new(0, 0x06, false)),
    ));
    let first = parts(&qp.read(&ns, 1, &mut buf).unwrap_err()).2;
    // IDs come from a rotating counter: the next two reads get first + 1
    // and first + 2. The first of them leaves a stale entry under the ID
    // of the second.
    let next = first.wrapping_add(2);
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Logged {
            status: Status::new(2, 0x81, false),
            detail: ErrorDetail {
                cid: Some(next),
                ..ErrorDetail::at_lba(2)
            },
        },
    ));
    assert_eq!(
        parts(&qp.read(&ns, 2, &mut buf).unwrap_err()).2,
        first.wrapping_add(1)
    );
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Logged {
            status: Status::new(2, 0x81, false),
            detail: ErrorDetail::at_lba(3),
        },
    ));
    let e = qp.read(&ns, 3, &mut buf).unwrap_err();
    let (_, _, cid, log) = parts(&e);
    assert_eq!(cid, next);
    assert_eq!(log.map(|l| l.lba), Some(3), "not the stale entry: {e}");
}

#[test]
fn a_polled_completion_does_not_wait_for_the_log_which_is_fetched_afterwards() {
    let (sim, ctrl) = bring_up();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Logged {
            status: Status::new(2, 0x81, true),
            detail: ErrorDetail::at_lba(44),
        },
    ));
    let admin_before = sim.stats().admin_commands;
    qp.submit(Io::read(&ns, 40, ctrl.dma_alloc(4096).unwrap()).tag(7))
        .map_err(|(e, _)| e)
        .unwrap();
    let done = wait_all(&mut qp, 1);
    assert_eq!(
        sim.stats().admin_commands,
        admin_before,
        "poll sent no admin command"
    );
    let d = done.into_iter().next().unwrap();
    assert_eq!(d.tag, 7);
    let mut e = d.result.unwrap_err();
    let (status, sqid, cid, log) = parts(&e);
    assert!(status.more());
    assert_eq!(log, None);
    // Other commands run (and reuse slots) before the application asks:
    // the error kept the failed command's ID.
    let mut buf = vec![0u8; 4096];
    for i in 0..qp.depth() as u64 + 5 {
        qp.read(&ns, i, &mut buf).unwrap();
    }
    assert!(ctrl.attach_error_log(&mut e).unwrap());
    let entry = *e.error_log().unwrap();
    assert_eq!((entry.sqid, entry.cid, entry.lba), (sqid, cid, 44));
    assert!(e.to_string().ends_with("namespace 1, LBA 44 (0x2c)"), "{e}");
    assert!(!ctrl.attach_error_log(&mut e).unwrap(), "attached already");
    assert_eq!(ctrl.error_log_for(sqid, cid).unwrap(), Some(entry));
    // Nothing to do for other errors.
    assert!(!ctrl.attach_error_log(&mut Error::Reset).unwrap());
}

/// Names against the specifications' tables: NVMe Base 2.1 (Figures 102 to
/// 105), NVM Command Set 1.1, Zoned Namespace Command Set 1.2.
#[test]
fn names_and_messages_follow_the_specifications() {
    let name = |sct, sc| Status::new(sct, sc, false).name();
    let generic = [
        (0x00, "Successful Completion"),
        (0x01, "Invalid Command Opcode"),
        (0x02, "Invalid Field in Command"),
        (0x04, "Data Transfer Error"),
        (0x06, "Internal Error"),
        (0x08, "Command Aborted due to SQ Deletion"),
        (0x0a, "Command Aborted due to Missing Fused Command"),
        (0x0b, "Invalid Namespace or Format"),
        (0x10, "Metadata SGL Length Invalid"),
        (0x13, "PRP Offset Invalid"),
        (0x1d, "Sanitize In Progress"),
        (0x1f, "Command Not Supported for Queue in CMB"),
        (0x22, "Transient Transport Error"),
        (0x24, "Admin Command Media Not Ready"),
        (0x80, "LBA Out of Range"),
        (0x81, "Capacity Exceeded"),
        (0x82, "Namespace Not Ready"),
        (0x83, "Reservation Conflict"),
        (0x84, "Format In Progress"),
    ];
    let specific = [
        (0x00, "Completion Queue Invalid"),
        (0x02, "Invalid Queue Size"),
        (0x05, "Asynchronous Event Request Limit Exceeded"),
        (0x06, "Invalid Firmware Slot"),
        (0x0b, "Firmware Activation Requires Conventional Reset"),
        (0x0d, "Feature Identifier Not Saveable"),
        (0x13, "Firmware Activation Prohibited"),
        (0x1e, "Boot Partition Write Prohibited"),
        (0x2d, "Identifier Unavailable"),
        (0x80, "Conflicting Attributes"),
        (0x81, "Invalid Protection Information"),
        (0x82, "Attempted Write to Read Only Range"),
        (0x83, "Command Size Limit Exceeded"),
        (0xb8, "Zone Boundary Error"),
        (0xb9, "Zone Is Full"),
        (0xba, "Zone Is Read Only"),
        (0xbb, "Zone Is Offline"),
        (0xbc, "Zone Invalid Write"),
        (0xbd, "Too Many Active Zones"),
        (0xbe, "Too Many Open Zones"),
        (0xbf, "Invalid Zone State Transition"),
    ];
    let media = [
        (0x80, "Write Fault"),
        (0x81, "Unrecovered Read Error"),
        (0x82, "End-to-end Guard Check Error"),
        (0x83, "End-to-end Application Tag Check Error"),
        (0x84, "End-to-end Reference Tag Check Error"),
        (0x85, "Compare Failure"),
        (0x86, "Access Denied"),
        (0x87, "Deallocated or Unwritten Logical Block"),
        (0x88, "End-to-End Storage Tag Check Error"),
    ];
    let path = [
        (0x00, "Internal Path Error"),
        (0x01, "Asymmetric Access Persistent Loss"),
        (0x02, "Asymmetric Access Inaccessible"),
        (0x03, "Asymmetric Access Transition"),
        (0x60, "Controller Pathing Error"),
        (0x70, "Host Pathing Error"),
        (0x71, "Command Aborted By Host"),
    ];
    for (sct, table) in [
        (0, &generic[..]),
        (1, &specific[..]),
        (2, &media[..]),
        (3, &path[..]),
    ] {
        for &(sc, want) in table {
            assert_eq!(name(sct, sc), want, "SCT {sct}, SC {sc:#04x}");
            let m = Status::new(sct, sc, false).message();
            assert!(!m.is_empty() && !m.contains('\n'), "{want}: {m:?}");
            assert_ne!(m, want);
        }
    }
    // Vendor specific, reserved.
    assert_eq!(name(7, 0x12), "Vendor Specific");
    assert_eq!(name(2, 0xc1), "Vendor Specific");
    assert_eq!(name(0, 0x17), "Reserved");
    assert_eq!(name(1, 0x04), "Reserved");
    assert_eq!(name(4, 0x00), "Reserved Status Code Type");
    // Messages say what the code means.
    for (sct, sc, words) in [
        (2, 0x81, "could not be recovered from the media"),
        (1, 0xbc, "write pointer"),
        (1, 0xb8, "more than one zone"),
        (2, 0x82, "guard"),
        (2, 0x87, "deallocated or unwritten"),
        (0, 0x80, "past the end of the namespace"),
        (3, 0x03, "ANA state"),
        (7, 0x01, "vendor specific"),
    ] {
        let m = Status::new(sct, sc, false).message();
        assert!(m.contains(words), "SCT {sct}, SC {sc:#04x}: {m}");
    }
    // Command specific codes from 80h belong to the I/O command set: not
    // the names of an admin command's status.
    let s = Status::new(1, 0x81, true);
    assert_eq!(
        s.name_for(CommandKind::Io),
        "Invalid Protection Information"
    );
    assert_ne!(
        s.name_for(CommandKind::Admin),
        "Invalid Protection Information"
    );
    assert_eq!(
        Status::new(1, 0x06, true).name_for(CommandKind::Admin),
        "Invalid Firmware Slot"
    );
}

#[test]
fn retry_delay_more_and_do_not_retry_are_reported() {
    // Status field bits: SC 7:0, SCT 10:8, CRD 12:11, M 13, DNR 14.
    let raw = 0x01bc | 2 << 11 | 1 << 13 | 1 << 14;
    let s = Status(raw);
    assert_eq!(
        (s.sct(), s.sc(), s.crd(), s.more(), s.dnr()),
        (1, 0xbc, 2, true, true)
    );
    assert_eq!(Status::new(1, 0xbc, true).with_more(true).with_crd(2), s);
    assert_eq!(
        s.to_string(),
        "Zone Invalid Write (SCT 0x1, SC 0xbc, do not retry, retry after CRDT2, more info in the \
         error log)"
    );
    let plain = Status::new(2, 0x80, false);
    assert_eq!((plain.crd(), plain.more(), plain.dnr()), (0, false, false));
    assert_eq!(plain.to_string(), "Write Fault (SCT 0x2, SC 0x80)");
    // Through the driver: a retryable status with a retry delay.
    let (sim, ctrl) = bring_up();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io().opcode(io::WRITE),
        FaultAction::Status(Status::new(0, 0x21, false).with_crd(1)),
    ));
    let e = qp.write(&ns, 0, &[0u8; 512], false).unwrap_err();
    let status = e.status().unwrap();
    assert_eq!(
        (status.crd(), status.dnr(), status.more()),
        (1, false, false)
    );
    assert_eq!(
        e.to_string(),
        "Write failed: Command Interrupted (SCT 0x0, SC 0x21, retry after CRDT1): the controller \
         interrupted the command's processing; it may be retried"
    );
}
