//! Each kind of injected fault, as the test driver observes it.

mod common;

use std::time::{Duration, Instant};

use common::{pattern, st, Driver, PAGE};
use nvme_sim::{Config, FaultAction, FaultRule, Match};
use nvme_vfio::nvme::cmd::{admin, cns, io, Command, Status};

fn flush() -> Command {
    Command::new(io::FLUSH, 1)
}

#[test]
fn the_nth_io_command_completes_with_the_injected_status() {
    let mut d = Driver::with_io_queue(Config::default());
    let media = Status::new(2, 0x81, true);
    let retry = Status::new(0, 0x06, false);
    d.sim
        .inject(FaultRule::nth(Match::io(), 3, FaultAction::Status(media)));
    d.sim
        .inject(FaultRule::nth(Match::io(), 5, FaultAction::Status(retry)));
    // Admin commands do not count.
    assert!(d
        .admin(Command::identify(cns::CONTROLLER, 0), Some(common::SCRATCH))
        .status()
        .is_success());
    let got: Vec<_> = (0..6).map(|_| st(d.run(1, flush()).status())).collect();
    assert_eq!(
        got,
        [
            (0, 0, false),
            (0, 0, false),
            (2, 0x81, true),
            (0, 0, false),
            (0, 0x06, false),
            (0, 0, false)
        ]
    );
    assert_eq!(d.sim.stats().faults_injected, 2);
}

#[test]
fn the_next_command_with_an_opcode_on_a_queue_is_picked() {
    let mut d = Driver::with_io_queue(Config::default());
    d.create_io_queue(2, 16);
    let fail = Status::new(0, 0x06, true);
    d.sim.inject(FaultRule::next(
        Match::io().opcode(io::WRITE).sqid(2),
        FaultAction::Status(fail),
    ));
    let buf = d.alloc(PAGE);
    let mut w = Command::rw(true, 1, 0, 1, false);
    w.dptr = [d.mem.iova(buf).raw(), 0];
    assert!(d.run(1, w).status().is_success(), "wrong queue");
    assert!(d.run(2, flush()).status().is_success(), "wrong opcode");
    assert_eq!(d.run(2, w).status(), fail);
    assert!(d.run(2, w).status().is_success(), "fires once");
    // The failed command executed nothing; it is in the error log.
    assert_eq!(d.sim.stats().write_commands, 2);
}

#[test]
fn a_dropped_completion_never_arrives_until_aborted() {
    let mut d = Driver::with_io_queue(Config::default());
    d.sim
        .inject(FaultRule::next(Match::io(), FaultAction::Drop));
    let lost = d.submit(1, flush());
    assert!(d.quiet_for(1, Duration::from_millis(50)));
    // Later commands still complete.
    assert!(d.run(1, flush()).status().is_success());
    // Abort finds it: it completes with Command Abort Requested.
    let c = d.admin(Command::abort(1, lost), None);
    assert!(c.status().is_success());
    assert_eq!(c.result & 1, 0, "aborted");
    let c = d.wait(1);
    assert_eq!((c.cid, st(c.status())), (lost, (0, 0x07, false)));
    // A second Abort finds nothing.
    assert_eq!(d.admin(Command::abort(1, lost), None).result & 1, 1);
}

#[test]
fn a_delayed_completion_arrives_after_the_delay_and_executes_then() {
    let mut d = Driver::with_io_queue(Config::default());
    let delay = Duration::from_millis(60);
    d.sim.inject(FaultRule::next(
        Match::io().opcode(io::WRITE),
        FaultAction::Delay(delay),
    ));
    let buf = d.alloc(PAGE);
    d.mem.write(buf, &pattern(512, 2));
    let mut w = Command::rw(true, 1, 9, 1, false);
    w.dptr = [d.mem.iova(buf).raw(), 0];
    let start = Instant::now();
    let cid = d.submit(1, w);
    // Meanwhile other commands complete.
    assert!(d.run(1, flush()).status().is_success());
    let mut stored = [0u8; 512];
    d.sim.read_blocks(1, 9, &mut stored).unwrap();
    // (Only meaningful if this thread was not descheduled for the delay.)
    if start.elapsed() < delay {
        assert_eq!(stored, [0u8; 512], "the write ran before its delay");
    }
    let c = d.wait(1);
    assert!(start.elapsed() >= delay);
    assert_eq!(c.cid, cid);
    assert!(c.status().is_success());
    d.sim.read_blocks(1, 9, &mut stored).unwrap();
    assert!(stored[..] == pattern(512, 2)[..]);
}

#[test]
fn held_back_commands_complete_out_of_order() {
    let mut d = Driver::with_io_queue(Config::default());
    d.sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::HoldBack { after: 2 },
    ));
    let a = d.push(1, flush());
    let b = d.push(1, flush());
    let c = d.push(1, flush());
    d.ring_sq(1);
    let order: Vec<u16> = (0..3).map(|_| d.wait(1).cid).collect();
    assert_eq!(order, [b, c, a]);
    // Held until released by hand when nothing else completes.
    d.sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::HoldBack { after: 100 },
    ));
    let held = d.submit(1, flush());
    assert!(d.quiet_for(1, Duration::from_millis(30)));
    d.sim.release_held();
    let done = d.wait(1);
    assert_eq!(done.cid, held);
    assert!(done.status().is_success());
}

#[test]
fn a_command_can_raise_controller_fatal_status() {
    let mut d = Driver::with_io_queue(Config::default());
    d.sim
        .inject(FaultRule::nth(Match::io(), 2, FaultAction::Fatal));
    assert!(d.run(1, flush()).status().is_success());
    d.submit(1, flush());
    common::wait_for("CSTS.CFS", || d.csts().fatal());
    assert!(d.quiet_for(1, Duration::from_millis(30)));
    // A reset brings the controller back, without the lost command.
    d.disable();
    assert!(!d.csts().fatal());
    d.enable(8);
    d.create_io_queue(1, 16);
    assert!(d.run(1, flush()).status().is_success());
    assert!(d.quiet_for(1, Duration::from_millis(10)));
}

#[test]
fn random_faults_are_reproducible_with_a_seed() {
    let run = |seed: u64| {
        let mut d = Driver::with_io_queue(Config::default());
        d.sim.seed_faults(seed);
        d.sim.inject(FaultRule::random(
            Match::io(),
            0.3,
            FaultAction::Status(Status::new(0, 0x06, false)),
        ));
        (0..60)
            .map(|_| d.run(1, flush()).status().is_success())
            .collect::<Vec<_>>()
    };
    let a = run(42);
    assert_eq!(a, run(42));
    assert_ne!(a, run(43));
    let failed = a.iter().filter(|ok| !**ok).count();
    assert!(
        (5..35).contains(&failed),
        "{failed} of 60 failed at p = 0.3"
    );
}

#[test]
fn deleting_a_queue_aborts_what_the_controller_still_holds() {
    let mut d = Driver::with_io_queue(Config::default());
    d.sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_secs(60)),
    ));
    d.sim
        .inject(FaultRule::nth(Match::io(), 2, FaultAction::Drop));
    let slow = d.submit(1, flush());
    let lost = d.submit(1, flush());
    assert!(d.quiet_for(1, Duration::from_millis(20)));
    let c = d.admin(Command::delete_queue(true, 1), None);
    assert!(c.status().is_success());
    let mut got: Vec<_> = (0..2)
        .map(|_| d.wait(1))
        .map(|c| (c.cid, st(c.status())))
        .collect();
    got.sort();
    assert_eq!(got, [(slow, (0, 0x08, false)), (lost, (0, 0x08, false))]);
}

#[test]
fn faults_also_hit_admin_commands() {
    let mut d = Driver::new(Config::default());
    d.sim.inject(FaultRule::next(
        Match::admin().opcode(admin::IDENTIFY),
        FaultAction::Status(Status::new(0, 0x06, true)),
    ));
    let c = d.admin(Command::identify(cns::CONTROLLER, 0), Some(common::SCRATCH));
    assert_eq!(st(c.status()), (0, 0x06, true));
    let c = d.admin(Command::identify(cns::CONTROLLER, 0), Some(common::SCRATCH));
    assert!(c.status().is_success());
    d.sim
        .inject(FaultRule::next(Match::admin(), FaultAction::Drop).times(Some(2)));
    d.sim.clear_faults();
    let c = d.admin(Command::identify(cns::CONTROLLER, 0), Some(common::SCRATCH));
    assert!(c.status().is_success(), "cleared rules do not fire");
}
