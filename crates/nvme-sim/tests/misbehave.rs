//! A misbehaving device, as the test driver observes it: duplicate
//! completions that move their data again, commands that outlive a reset,
//! altered completion entries, completions posted before their data moves,
//! writes outside a command's buffer, a controller that ignores CC.EN = 0,
//! and the PCI function's bus mastering and function level reset.

mod common;

use std::time::{Duration, Instant};

use common::{pattern, wait_for, Driver, PAGE, SCRATCH};
use nvme_sim::{Config, CqeCorruption, FaultAction, FaultRule, Match};
use nvme_vfio::nvme::cmd::{io, Command, Completion};
use nvme_vfio::nvme::regs::{offset, Cc, Registers};

/// The worker-thread and inline configurations.
fn modes() -> [Config; 2] {
    [Config::default(), Config::default().inline(true)]
}

fn flush() -> Command {
    Command::new(io::FLUSH, 1)
}

/// A Read or Write of `blocks` 512-byte blocks at `lba` with PRPs at `buf`
/// (at most two pages, page aligned).
fn rw(d: &Driver, write: bool, lba: u64, blocks: u32, buf: u64) -> Command {
    let mut c = Command::rw(write, 1, lba, blocks, false);
    let len = blocks as u64 * 512;
    let prp2 = if len > PAGE {
        d.mem.iova(buf + PAGE).raw()
    } else {
        0
    };
    c.dptr = [d.mem.iova(buf).raw(), prp2];
    c
}

/// The raw completion entry in slot `slot` of queue `qid`'s CQ.
fn raw_cqe(d: &Driver, qid: u16, slot: u16) -> Completion {
    let r = d.rings[qid as usize].as_ref().unwrap();
    common::completion_from_bytes(&d.mem.bytes(r.cq_off + slot as u64 * 16, 16))
}

/// Submits `cmd` on queue `qid` and waits until the controller has fetched
/// it.
fn submit_fetched(d: &mut Driver, qid: u16, cmd: Command) -> u16 {
    let fetched = d.sim.stats().commands;
    let cid = d.submit(qid, cmd);
    wait_for("the command's fetch", || d.sim.stats().commands > fetched);
    cid
}

/// Sets the command ID queue `qid` gives its next command.
fn reuse_cid(d: &mut Driver, qid: u16, cid: u16) {
    d.rings[qid as usize].as_mut().unwrap().next_cid = cid;
}

#[test]
fn a_duplicate_completion_comes_after_the_cid_is_reused_and_rewrites_the_buffer() {
    for config in modes() {
        let mut d = Driver::with_io_queue(config);
        let data = pattern(1024, 7);
        d.sim.write_blocks(1, 40, &data).unwrap();
        let after = Duration::from_millis(80);
        d.sim.inject(FaultRule::next(
            Match::io().opcode(io::READ),
            FaultAction::Duplicate {
                after,
                redo_data: true,
            },
        ));
        let buf = d.alloc(PAGE);
        let start = Instant::now();
        let cmd = rw(&d, false, 40, 2, buf);
        let c = d.run(1, cmd);
        assert!(c.status().is_success());
        assert_eq!(d.mem.bytes(buf, 1024), data);
        // The driver hands the buffer back (here: fills it) and reuses the
        // command ID for another command, which completes normally.
        d.mem.write(buf, &[0xaa; 1024]);
        reuse_cid(&mut d, 1, c.cid);
        let again = d.run(1, flush());
        assert_eq!(again.cid, c.cid);
        if start.elapsed() < after {
            assert_eq!(d.mem.bytes(buf, 1024), [0xaa; 1024], "rewritten early");
        }
        // The stale duplicate: same CID, same SQ, and the buffer written
        // again before it.
        let dup = d.wait(1);
        assert!(start.elapsed() >= after);
        assert_eq!((dup.cid, dup.sq_id), (c.cid, 1));
        assert_eq!(dup.status(), c.status());
        assert_eq!(d.mem.bytes(buf, 1024), data, "the data moved again");
        assert!(d.quiet_for(1, Duration::from_millis(20)), "one duplicate");
        // Counted once as a Read.
        assert_eq!(d.sim.stats().read_commands, 1);
    }
}

#[test]
fn a_duplicate_can_leave_the_data_alone_and_a_write_repeated_stores_the_buffer_again() {
    let mut d = Driver::with_io_queue(Config::default());
    d.sim.write_blocks(1, 3, &pattern(512, 1)).unwrap();
    let after = Duration::from_millis(30);
    d.sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Duplicate {
            after,
            redo_data: false,
        },
    ));
    let buf = d.alloc(PAGE);
    let c = d.run(1, rw(&d, false, 3, 1, buf));
    d.mem.write(buf, &[0x55; 512]);
    let dup = d.wait(1);
    assert_eq!((dup.cid, dup.sq_id), (c.cid, 1));
    assert_eq!(d.mem.bytes(buf, 512), [0x55; 512], "no data moved");

    // A Write whose transfer repeats stores what the buffer holds then.
    d.sim.inject(FaultRule::next(
        Match::io().opcode(io::WRITE),
        FaultAction::Duplicate {
            after,
            redo_data: true,
        },
    ));
    d.mem.write(buf, &pattern(512, 2));
    let c = d.run(1, rw(&d, true, 9, 1, buf));
    assert!(c.status().is_success());
    d.mem.write(buf, &pattern(512, 3));
    let dup = d.wait(1);
    assert_eq!(dup.cid, c.cid);
    let mut stored = [0u8; 512];
    d.sim.read_blocks(1, 9, &mut stored).unwrap();
    assert!(stored[..] == pattern(512, 3)[..]);
}

#[test]
fn a_reset_drops_a_pending_duplicate() {
    let mut d = Driver::with_io_queue(Config::default());
    d.sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Duplicate {
            after: Duration::from_millis(40),
            redo_data: true,
        },
    ));
    assert!(d.run(1, flush()).status().is_success());
    d.disable();
    d.enable(8);
    d.create_io_queue(1, 16);
    assert!(d.quiet_for(1, Duration::from_millis(80)));
}

#[test]
fn a_command_fetched_before_a_reset_completes_after_it() {
    for config in modes() {
        let mut d = Driver::with_io_queue(config);
        let data = pattern(512, 9);
        d.sim.write_blocks(1, 5, &data).unwrap();
        let after = Duration::from_millis(250);
        d.sim.inject(FaultRule::next(
            Match::io().opcode(io::READ),
            FaultAction::SurviveReset { after },
        ));
        let buf = d.alloc(PAGE);
        let cmd = rw(&d, false, 5, 1, buf);
        let cid = submit_fetched(&mut d, 1, cmd);
        assert!(d.quiet_for(1, Duration::from_millis(20)));
        // Stuck: Abort does not find it.
        assert_eq!(d.admin(Command::abort(1, cid), None).result & 1, 1);
        d.disable();
        assert_eq!(d.mem.bytes(buf, 512), [0u8; 512]);
        let enabled = Instant::now();
        d.enable(8);
        d.create_io_queue(1, 16);
        // `after` the re-enable: the data lands and the completion goes to
        // the new CQ 1 with the old command's ID.
        let c = d.wait(1);
        assert!(enabled.elapsed() >= after);
        assert_eq!((c.cid, c.sq_id), (cid, 1));
        assert!(c.status().is_success());
        assert_eq!(d.mem.bytes(buf, 512), data);
    }
}

#[test]
fn a_command_surviving_a_reset_moves_its_data_even_without_its_queue() {
    let mut d = Driver::with_io_queue(Config::default());
    let data = pattern(512, 4);
    d.sim.write_blocks(1, 6, &data).unwrap();
    d.sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::SurviveReset {
            after: Duration::from_millis(10),
        },
    ));
    let buf = d.alloc(PAGE);
    let cmd = rw(&d, false, 6, 1, buf);
    submit_fetched(&mut d, 1, cmd);
    // Deleting its queue does not end it either.
    assert!(d
        .admin(Command::delete_queue(true, 1), None)
        .status()
        .is_success());
    assert!(d
        .admin(Command::delete_queue(false, 1), None)
        .status()
        .is_success());
    d.disable();
    d.enable(8);
    wait_for("the surviving read's data", || {
        d.mem.bytes(buf, 512) == data
    });
    // CQ 1 did not exist: no completion anywhere.
    d.create_io_queue(1, 16);
    assert!(d.quiet_for(1, Duration::from_millis(20)));
    assert!(d.quiet_for(0, Duration::ZERO));

    // A function level reset drops such a command.
    d.sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::SurviveReset {
            after: Duration::from_millis(10),
        },
    ));
    let buf2 = d.alloc(PAGE);
    let cmd = rw(&d, false, 6, 1, buf2);
    submit_fetched(&mut d, 1, cmd);
    let f = d.sim.pci_function();
    assert!(f.function_reset().unwrap());
    f.set_bus_master(true).unwrap();
    for r in &mut d.rings {
        *r = None;
    }
    d.enable(8);
    d.create_io_queue(1, 16);
    assert!(d.quiet_for(1, Duration::from_millis(60)));
    assert_eq!(d.mem.bytes(buf2, 512), [0u8; 512]);
}

#[test]
fn completion_fields_can_be_altered() {
    for config in modes() {
        let mut d = Driver::with_io_queue(config);
        let data = pattern(512, 5);
        d.sim.write_blocks(1, 2, &data).unwrap();
        let buf = d.alloc(PAGE);
        let corrupt = |d: &Driver, how| {
            d.sim
                .inject(FaultRule::next(Match::io(), FaultAction::Corrupt(how)));
        };

        corrupt(&d, CqeCorruption::Cid(0x777));
        let cid = d.submit(1, rw(&d, false, 2, 1, buf));
        let c = d.wait(1);
        assert_ne!(cid, 0x777);
        assert_eq!((c.cid, c.sq_id), (0x777, 1));
        assert!(c.status().is_success());
        assert_eq!(d.mem.bytes(buf, 512), data, "the data moved normally");

        corrupt(&d, CqeCorruption::CidXor(0x8001));
        let cid = d.submit(1, flush());
        assert_eq!(d.wait(1).cid, cid ^ 0x8001);

        corrupt(&d, CqeCorruption::SqId(5));
        let cid = d.submit(1, flush());
        let c = d.wait(1);
        assert_eq!((c.cid, c.sq_id), (cid, 5));

        corrupt(&d, CqeCorruption::SqHead(60));
        d.submit(1, flush());
        assert_eq!(d.wait(1).sq_head, 60);
        corrupt(&d, CqeCorruption::SqHead(64 + 3));
        d.submit(1, flush());
        assert_eq!(d.wait(1).sq_head, 3, "kept in range");

        corrupt(&d, CqeCorruption::SqHeadPastTail(4));
        d.submit(1, flush());
        let tail = d.rings[1].as_ref().unwrap().sq_tail;
        let c = d.wait(1);
        assert_eq!(c.sq_head, (tail + 4) % 64, "beyond anything submitted");
        // Uncorrupted, the head is the tail.
        d.submit(1, flush());
        assert_eq!(d.wait(1).sq_head, d.rings[1].as_ref().unwrap().sq_tail);
    }
}

#[test]
fn an_entry_with_the_wrong_phase_hides_it_and_every_later_one() {
    for config in modes() {
        let mut d = Driver::with_io_queue(config);
        d.sim.inject(FaultRule::next(
            Match::io(),
            FaultAction::Corrupt(CqeCorruption::InvertPhase),
        ));
        let slot = d.rings[1].as_ref().unwrap().cq_head;
        let bad = d.submit(1, flush());
        wait_for("the bad entry", || raw_cqe(&d, 1, slot).sq_id == 1);
        // Written, but with the previous pass's phase: nothing new.
        let e = raw_cqe(&d, 1, slot);
        assert!(!e.phase());
        assert_eq!(e.cid, bad);
        assert!(d.peek(1).is_none());
        // The device moved on: the next completion goes to the next slot,
        // with the right phase, behind the bad one.
        let next = d.submit(1, flush());
        wait_for("the next entry", || raw_cqe(&d, 1, slot + 1).phase());
        assert_eq!(raw_cqe(&d, 1, slot + 1).cid, next);
        assert!(d.quiet_for(1, Duration::from_millis(10)));
    }
}

#[test]
fn a_completion_can_come_before_its_data() {
    for config in modes() {
        let mut d = Driver::with_io_queue(config);
        let data = pattern(1024, 8);
        d.sim.write_blocks(1, 20, &data).unwrap();
        let delay = Duration::from_millis(80);
        d.sim.inject(FaultRule::next(
            Match::io().opcode(io::READ),
            FaultAction::CompleteBeforeData { delay },
        ));
        let buf = d.alloc(PAGE);
        let start = Instant::now();
        let c = d.run(1, rw(&d, false, 20, 2, buf));
        assert!(c.status().is_success());
        if start.elapsed() < delay {
            assert_eq!(d.mem.bytes(buf, 1024), [0u8; 1024], "data before delay");
            assert_eq!(d.sim.stats().read_commands, 0);
        }
        wait_for("the late data", || d.mem.bytes(buf, 1024) == data);
        assert!(start.elapsed() >= delay);
        assert_eq!(d.sim.stats().read_commands, 1);
        assert!(d.quiet_for(1, Duration::from_millis(10)));

        // A Write completes before the device reads the buffer: it stores
        // what the buffer holds when it does.
        d.sim.inject(FaultRule::next(
            Match::io().opcode(io::WRITE),
            FaultAction::CompleteBeforeData { delay },
        ));
        d.mem.write(buf, &pattern(512, 1));
        assert!(d.run(1, rw(&d, true, 30, 1, buf)).status().is_success());
        d.mem.write(buf, &pattern(512, 2));
        wait_for("the late write", || {
            let mut b = [0u8; 512];
            d.sim.read_blocks(1, 30, &mut b).unwrap();
            b[..] == pattern(512, 2)[..]
        });
    }
}

#[test]
fn a_write_outside_the_buffer_is_refused_if_unmapped_and_lands_if_mapped() {
    for config in modes() {
        let mut d = Driver::with_io_queue(config);
        let data = pattern(PAGE as usize, 6);
        d.sim.write_blocks(1, 0, &data).unwrap();
        // The last mapped page: the bytes past it are not mapped.
        d.sim.inject(FaultRule::next(
            Match::io().opcode(io::READ),
            FaultAction::WriteOutside {
                offset: PAGE as i64,
                len: 64,
                byte: 0xee,
            },
        ));
        let faults = d.sim.iommu().fault_count();
        let c = d.run(1, rw(&d, false, 0, 8, SCRATCH));
        assert!(c.status().is_success());
        assert_eq!(d.mem.bytes(SCRATCH, PAGE as usize), data);
        assert_eq!(d.sim.iommu().fault_count(), faults + 1, "refused");

        // Where a mapping exists (the next page of the same memory), it
        // lands; so it does before the buffer.
        let buf = d.alloc(3 * PAGE) + PAGE;
        for (offset, at) in [(512, buf + 512), (-64, buf - 64)] {
            d.sim.inject(FaultRule::next(
                Match::io().opcode(io::READ),
                FaultAction::WriteOutside {
                    offset,
                    len: 64,
                    byte: 0xee,
                },
            ));
            let c = d.run(1, rw(&d, false, 0, 1, buf));
            assert!(c.status().is_success());
            assert_eq!(d.mem.bytes(buf, 512), data[..512]);
            assert_eq!(d.mem.bytes(at, 64), [0xee; 64], "offset {offset}");
        }
        assert_eq!(d.sim.iommu().fault_count(), faults + 1);
    }
}

#[test]
fn a_controller_ignoring_disable_goes_on_until_bus_mastering_stops_and_a_function_reset() {
    for config in modes() {
        let mut d = Driver::with_io_queue(config);
        let f = d.sim.pci_function();
        assert!(f.bus_master().unwrap());
        d.sim.write_blocks(1, 0, &pattern(512, 3)).unwrap();
        d.sim.set_ignore_disable(true);
        // A delayed read is in the controller when the driver disables it.
        let delay = Duration::from_millis(60);
        d.sim.inject(FaultRule::next(
            Match::io().opcode(io::READ),
            FaultAction::Delay(delay),
        ));
        let slow = d.alloc(PAGE);
        let cmd = rw(&d, false, 0, 1, slow);
        let slow_cid = submit_fetched(&mut d, 1, cmd);
        let cc = Cc(d.sim.read32(offset::CC));
        d.sim.write32(offset::CC, cc.with_enable(false).0);
        std::thread::sleep(Duration::from_millis(10));
        assert!(d.csts().ready(), "CSTS.RDY stays 1");
        assert_eq!(d.sim.read32(offset::CC) & 1, 0, "CC reads back as written");
        // It still fetches, executes and completes.
        assert!(d.run(1, flush()).status().is_success());
        let c = d.wait(1);
        assert_eq!(c.cid, slow_cid);
        assert_eq!(d.mem.bytes(slow, 512), pattern(512, 3));

        // Bus mastering off: no DMA at all, not even for commands the
        // controller already holds.
        let delay = Duration::from_millis(50);
        d.sim.inject(FaultRule::next(
            Match::io().opcode(io::READ),
            FaultAction::Delay(delay),
        ));
        let held = d.alloc(PAGE);
        let cmd = rw(&d, false, 0, 1, held);
        let held_cid = submit_fetched(&mut d, 1, cmd);
        let since = Instant::now();
        f.set_bus_master(false).unwrap();
        let off_in_time = since.elapsed() < delay / 2;
        assert!(!f.bus_master().unwrap());
        let buf = d.alloc(PAGE);
        let before = d.sim.stats();
        let cid = d.submit(1, rw(&d, false, 0, 1, buf));
        assert!(d.quiet_for(1, 2 * delay));
        assert_eq!(d.mem.bytes(buf, 512), [0u8; 512]);
        if off_in_time {
            assert_eq!(d.mem.bytes(held, 512), [0u8; 512], "held read ran");
        }
        assert_eq!(d.sim.stats().commands, before.commands, "nothing fetched");
        // Back on: both complete.
        f.set_bus_master(true).unwrap();
        let mut got = [d.wait(1).cid, d.wait(1).cid];
        got.sort();
        let mut want = [held_cid, cid];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(d.mem.bytes(buf, 512), pattern(512, 3));
        assert_eq!(d.mem.bytes(held, 512), pattern(512, 3));

        // A function level reset stops it for good.
        d.sim.inject(FaultRule::next(
            Match::io(),
            FaultAction::Delay(Duration::from_millis(200)),
        ));
        let late = d.alloc(PAGE);
        let cmd = rw(&d, false, 0, 1, late);
        submit_fetched(&mut d, 1, cmd);
        assert!(f.function_reset().unwrap());
        assert!(!d.csts().ready());
        assert_eq!(d.sim.read32(offset::CC), 0);
        assert!(!f.bus_master().unwrap());
        assert!(!d.sim.bus_master());
        f.set_bus_master(true).unwrap();
        d.submit(1, flush());
        assert!(d.quiet_for(1, Duration::from_millis(250)));
        assert_eq!(d.mem.bytes(late, 512), [0u8; 512], "dropped by the reset");
        let s = d.sim.stats();
        assert_eq!((s.function_resets, s.bus_master_changes), (1, 3));

        // The controller comes back as new (ignore-disable still on).
        for r in &mut d.rings {
            *r = None;
        }
        d.enable(8);
        d.create_io_queue(1, 16);
        let c = d.run(1, flush());
        assert!(c.status().is_success(), "{}", c.status());
        // Clearing the switch acts on CC as it is: enabled, nothing happens.
        d.sim.set_ignore_disable(false);
        let c = d.run(1, flush());
        assert!(c.status().is_success(), "{}", c.status());
    }
}

#[test]
fn clearing_ignore_disable_acts_on_a_disable_written_meanwhile() {
    let d = Driver::with_io_queue(Config::default());
    d.sim.set_ignore_disable(true);
    let cc = Cc(d.sim.read32(offset::CC));
    d.sim.write32(offset::CC, cc.with_enable(false).0);
    std::thread::sleep(Duration::from_millis(10));
    assert!(d.csts().ready());
    d.sim.set_ignore_disable(false);
    wait_for("CSTS.RDY = 0", || !d.csts().ready());
}

#[test]
fn bus_mastering_off_stops_even_the_admin_queue_and_inline_doorbells() {
    for config in modes() {
        let mut d = Driver::with_io_queue(config);
        let f = d.sim.pci_function();
        f.set_bus_master(false).unwrap();
        f.set_bus_master(false).unwrap();
        let buf = d.alloc(PAGE);
        let mut identify = Command::identify(nvme_vfio::nvme::cmd::cns::CONTROLLER, 0);
        identify.dptr = [d.mem.iova(buf).raw(), 0];
        let cid = d.submit(0, identify);
        assert!(d.quiet_for(0, Duration::from_millis(30)));
        assert_eq!(d.mem.bytes(buf, 64), [0u8; 64], "no data moved");
        f.set_bus_master(true).unwrap();
        assert_eq!(d.wait(0).cid, cid);
        assert_ne!(d.mem.bytes(buf, 64), [0u8; 64]);
        assert_eq!(d.sim.stats().bus_master_changes, 2);
    }
}

#[test]
fn a_function_reset_can_be_ignored() {
    let mut d = Driver::with_io_queue(Config::default());
    let f = d.sim.pci_function();
    d.sim.set_ignore_flr(true);
    assert!(f.function_reset().unwrap(), "reports success");
    assert!(d.csts().ready());
    assert!(f.bus_master().unwrap());
    assert!(d.run(1, flush()).status().is_success());
    assert_eq!(d.sim.stats().function_resets, 1);
    d.sim.set_ignore_flr(false);
    assert!(f.function_reset().unwrap());
    assert!(!d.csts().ready());
    assert_eq!(d.sim.stats().function_resets, 2);
}

#[test]
fn the_pci_function_outlives_the_controller() {
    let d = Driver::with_io_queue(Config::default());
    let f = d.sim.pci_function();
    let regs = d.sim.registers();
    drop(d);
    assert!(f.bus_master().unwrap());
    f.set_bus_master(false).unwrap();
    assert!(f.function_reset().unwrap());
    assert!(!f.bus_master().unwrap());
    assert_eq!(regs.read32(offset::CSTS), 0);
    assert_eq!(regs.read32(offset::CC), 0);
}
