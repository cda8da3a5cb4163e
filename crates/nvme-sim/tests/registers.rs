//! Register behaviour: CAP and VS, enable with the ready delay, disable,
//! shutdown status transitions, fatal status and never-ready injection.

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, Driver, TIMEOUT};
use nvme_sim::Config;
use nvme_vfio::nvme::cmd::{cns, Command};
use nvme_vfio::nvme::regs::{offset, Cap, Cc, Registers, Shutdown, ShutdownStatus, Version};

#[test]
fn cap_and_version_describe_the_configuration() {
    let config = Config::default()
        .doorbell_stride(2)
        .max_queue_entries(256)
        .timeout_500ms(3);
    let d = Driver::new_disabled(config);
    let cap = Cap(d.sim.read64(offset::CAP));
    assert_eq!(cap.max_queue_entries(), 256);
    assert!(cap.contiguous_queues_required());
    assert_eq!(cap.timeout_ms(), 1500);
    assert_eq!(cap.doorbell_stride(), 16);
    assert_eq!(cap.css() & 1, 1, "NVM command set");
    assert_eq!((cap.mps_min(), cap.mps_max()), (4096, 65536));
    // The two halves read as dwords too.
    assert_eq!(d.sim.read32(offset::CAP) as u64, cap.0 & 0xffff_ffff);
    assert_eq!(d.sim.read32(offset::CAP + 4) as u64, cap.0 >> 32);
    let vs = Version(d.sim.read32(offset::VS));
    assert_eq!((vs.major(), vs.minor()), (1, 4));
    assert_eq!(d.csts().0, 0);
}

#[test]
fn ready_follows_enable_after_the_delay_and_clears_on_disable() {
    let delay = Duration::from_millis(30);
    let mut d = Driver::new_disabled(Config::default().ready_delay(delay));
    d.program_admin(8);
    let start = Instant::now();
    d.sim.write32(offset::CC, Driver::cc().0);
    wait_for("CSTS.RDY = 1", || d.csts().ready());
    assert!(start.elapsed() >= delay, "RDY before the ready delay");
    assert!(!d.csts().fatal());
    // The admin queue works.
    let c = d.admin(Command::identify(cns::CONTROLLER, 0), Some(common::SCRATCH));
    assert!(c.status().is_success());
    d.disable();
    assert_eq!(d.csts().0, 0);
    // Enable again: the admin queue starts over from slot 0.
    d.enable(8);
    let c = d.admin(Command::identify(cns::CONTROLLER, 0), Some(common::SCRATCH));
    assert!(c.status().is_success());
    assert_eq!(c.sq_head, 1);
}

#[test]
fn a_quick_disable_enable_pair_is_seen_as_a_reset() {
    let mut d = Driver::new(Config::default().ready_delay(Duration::from_millis(20)));
    d.create_io_queue(1, 16);
    // EN 1 -> 0 -> 1 without waiting in between: the controller must still
    // reset (the I/O queue is gone afterwards).
    d.program_admin(8);
    let cc = Driver::cc();
    let start = Instant::now();
    d.sim.write32(offset::CC, cc.with_enable(false).0);
    d.sim.write32(offset::CC, cc.0);
    std::thread::sleep(Duration::from_millis(5));
    let ready = d.csts().ready();
    // (Only meaningful if this thread was not descheduled for the delay.)
    if start.elapsed() < Duration::from_millis(20) {
        assert!(!ready, "RDY before the ready delay of the new enable");
    }
    wait_for("CSTS.RDY = 1", || d.csts().ready());
    let c = d.admin(Command::delete_queue(true, 1), None);
    assert_eq!(common::st(c.status()), (1, 0x01, true), "SQ 1 is gone");
}

#[test]
fn shutdown_status_goes_occurring_then_complete_then_normal() {
    // Long enough for the polling below to see "occurring" on a busy
    // machine.
    let delay = Duration::from_millis(100);
    let mut d = Driver::new(Config::default().shutdown_delay(delay));
    let cc = Cc(d.sim.read32(offset::CC));
    d.sim
        .write32(offset::CC, cc.with_shutdown(Shutdown::Normal).0);
    // Occurring must be observable before the delay runs out.
    let start = Instant::now();
    let mut saw_occurring = false;
    loop {
        match d.csts().shutdown_status() {
            ShutdownStatus::Occurring => saw_occurring = true,
            ShutdownStatus::Complete => break,
            _ => {}
        }
        assert!(start.elapsed() < TIMEOUT, "shutdown never completed");
        std::thread::sleep(Duration::from_micros(200));
    }
    assert!(saw_occurring);
    assert!(start.elapsed() >= delay);
    // After shutdown the controller processes no commands.
    d.submit(0, Command::identify(cns::CONTROLLER, 0));
    assert!(d.quiet_for(0, Duration::from_millis(30)));
    // Clearing SHN brings SHST back to normal, and the queued command runs.
    d.sim.write32(offset::CC, cc.0);
    wait_for("SHST = normal", || {
        d.csts().shutdown_status() == ShutdownStatus::Normal
    });
    let c = d.wait(0);
    // PRP1 = 0 is not mapped: the Identify fails, but it ran.
    assert_eq!(common::st(c.status()), (0, 0x04, false));
}

#[test]
fn fatal_status_stops_processing_until_reset() {
    let mut d = Driver::new(Config::default());
    d.sim.raise_fatal();
    assert!(d.csts().fatal());
    d.submit(0, Command::identify(cns::CONTROLLER, 0));
    assert!(
        d.quiet_for(0, Duration::from_millis(30)),
        "a dead controller completed a command"
    );
    // Reset clears CFS; the controller works again.
    d.disable();
    assert!(!d.csts().fatal());
    d.enable(8);
    let c = d.admin(Command::identify(cns::CONTROLLER, 0), Some(common::SCRATCH));
    assert!(c.status().is_success());
}

#[test]
fn never_ready_injection_keeps_rdy_clear() {
    let mut d = Driver::new_disabled(Config::default());
    d.sim.set_never_ready(true);
    d.program_admin(8);
    d.sim.write32(offset::CC, Driver::cc().0);
    std::thread::sleep(Duration::from_millis(50));
    assert!(!d.csts().ready());
    assert!(!d.csts().fatal());
    // Once the fault is lifted, a new enable works.
    d.sim.set_never_ready(false);
    d.sim.write32(offset::CC, 0);
    d.enable(8);
    assert!(d.csts().ready());
}

#[test]
fn an_enable_the_controller_cannot_run_raises_cfs() {
    let d = Driver::new_disabled(Config::default());
    // AQA/ASQ/ACQ never programmed.
    d.sim.write32(offset::CC, Driver::cc().0);
    wait_for("CSTS.CFS", || d.csts().fatal());
    assert!(!d.csts().ready());
    // A page size outside CAP.MPSMIN..MPSMAX.
    let mut d = Driver::new_disabled(Config::default());
    d.program_admin(8);
    d.sim.write32(offset::CC, Driver::cc().with_mps(5).0);
    wait_for("CSTS.CFS", || d.csts().fatal());
}

#[test]
fn doorbells_follow_the_configured_stride() {
    let mut d = Driver::new(Config::default().doorbell_stride(3));
    assert_eq!(d.stride, 32);
    d.create_io_queue(1, 8);
    d.create_io_queue(2, 8);
    for qid in [1, 2, 1] {
        let c = d.run(qid, Command::new(nvme_vfio::nvme::cmd::io::FLUSH, 1));
        assert!(c.status().is_success());
    }
    // Out of the BAR and between doorbells: reads are all ones or zero,
    // writes are dropped without effect.
    let bar_end = 0x1000 + 2 * (Config::default().max_io_queues as u64 + 1) * 32;
    assert_eq!(d.sim.read32(bar_end), u32::MAX);
    d.sim.write32(0x1000 + 4, 5);
    let c = d.run(1, Command::new(nvme_vfio::nvme::cmd::io::FLUSH, 1));
    assert!(c.status().is_success());
}
