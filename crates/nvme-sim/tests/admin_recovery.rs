//! The admin path's failures: a fatal status or a timeout while an admin
//! command is outstanding stops the device (a reset) before the command's
//! data buffer goes back, and the controller works afterwards; an admin
//! command waiting when another thread resets gives the queue up.

use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, Io, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::nvme::cmd::admin;
use nvme_vfio::nvme::regs::{offset, Cc};
use nvme_vfio::Error;

fn open(config: Config, function: bool, admin_timeout: Duration) -> (SimController, Controller) {
    let sim = SimController::new(config).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 2,
        io_timeout: Duration::from_secs(5),
        admin_timeout,
        ..DriverConfig::default()
    };
    let f = function.then(|| sim.pci_function());
    // SAFETY: registers, IOMMU and function all belong to `sim`.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, f) }.unwrap();
    (sim, ctrl)
}

#[test]
fn a_fatal_status_stops_the_device_before_the_admin_buffer_goes_back() {
    let (sim, ctrl) = open(Config::default(), true, Duration::from_secs(5));
    // Where the next 4 KiB pool buffer goes (first fit).
    let probe = ctrl.dma_alloc(4096).unwrap();
    let probe_iova = probe.iova();
    drop(probe);
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::IDENTIFY),
        FaultAction::Delay(Duration::from_secs(2)),
    ));
    let resets = sim.stats().function_resets;
    let bm_changes = sim.stats().bus_master_changes;
    // Raise CFS from the side while the Identify is outstanding.
    let fatal_at = Instant::now();
    let sim_ref = &sim;
    let r = std::thread::scope(|s| {
        s.spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            sim_ref.raise_fatal();
        });
        ctrl.identify_namespace(1)
    });
    let e = r.unwrap_err();
    let again = ctrl.dma_alloc(4096).unwrap();
    let regs = sim.registers();
    let state = format!(
        "{e:?} after {:?}; CC.EN={} bus master={} function resets since={} BME changes since={}; \
         next 4 KiB pool buffer at the Identify buffer's IOVA: {}",
        fatal_at.elapsed(),
        Cc(regs.read32(offset::CC)).enabled(),
        sim.bus_master(),
        sim.stats().function_resets - resets,
        sim.stats().bus_master_changes - bm_changes,
        again.iova() == probe_iova
    );
    // The data buffer went back to the pool only after the device was
    // stopped (the reset that recovers from the fatal status resets the
    // function).
    assert!(matches!(e, Error::ControllerFatal { .. }), "{state}");
    assert!(
        again.iova() != probe_iova || sim.stats().function_resets > resets,
        "the admin data buffer is back in the pool but the device was not stopped: {state}"
    );
}

/// After a fatal status the admin path recovers (the reset) by itself.
#[test]
fn admin_calls_recover_from_a_fatal_status() {
    let (sim, ctrl) = open(Config::default(), true, Duration::from_secs(5));
    sim.raise_fatal();
    let a = ctrl.smart_log().map(|_| ());
    let b = ctrl.smart_log().map(|_| ());
    assert!(
        b.is_ok(),
        "?: admin path does not recover from CSTS.CFS: {a:?} then {b:?}"
    );
}

/// An admin command that never completes, with I/O in flight on another
/// queue pair, with and without the PCI function, with a controller that
/// honours or ignores CC.EN = 0. The I/O request's DMA buffer comes back
/// only if the device was stopped.
#[test]
fn admin_timeout_with_io_in_flight() {
    for function in [false, true] {
        for ignore in [false, true] {
            let (sim, ctrl) = open(
                Config::default().timeout_500ms(1),
                function,
                Duration::from_millis(300),
            );
            let ns = ctrl.namespace(1).unwrap();
            let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
            sim.inject(FaultRule::next(
                Match::io(),
                FaultAction::Delay(Duration::from_millis(1500)),
            ));
            qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()).tag(3))
                .map_err(|(e, _)| e)
                .unwrap();
            qp.flush();
            std::thread::sleep(Duration::from_millis(30));
            sim.inject(FaultRule::next(
                Match::admin().opcode(admin::GET_LOG_PAGE),
                FaultAction::Drop,
            ));
            sim.set_ignore_disable(ignore);
            let e = ctrl.smart_log().unwrap_err();
            let mut done = Vec::new();
            let start = Instant::now();
            while done.is_empty() && start.elapsed() < Duration::from_secs(5) {
                qp.poll(&mut done);
            }
            assert_eq!(done.len(), 1, "function {function} ignore {ignore}: {e:?}");
            let d = done.pop().unwrap();
            let stopped = !ignore || function;
            eprintln!(
                "function {function} ignore {ignore}: admin {e:?}, io {:?} buf {:?}",
                d.result, d.buf
            );
            match d.buf {
                nvme_vfio::ctrl::IoBuf::Dma(mut b) => {
                    assert!(
                        stopped,
                        "buffer back from a controller that was not stopped"
                    );
                    b.as_mut_slice().fill(0xee);
                    sim.set_ignore_disable(false);
                    std::thread::sleep(Duration::from_millis(1700));
                    assert!(
                        b.as_slice().iter().all(|&x| x == 0xee),
                        "written after return"
                    );
                }
                nvme_vfio::ctrl::IoBuf::Raw => assert!(!stopped, "quarantined although stopped"),
                _ => unreachable!(),
            }
        }
    }
}

/// A slow admin command (300 ms, a legitimate device) on one thread while
/// another thread resets the controller: the waiter gives the admin queue
/// to the reset (no wait for the admin timeout), and the controller works
/// afterwards.
#[test]
fn slow_admin_command_during_a_reset() {
    let (sim, ctrl) = open(Config::default(), true, Duration::from_secs(2));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::GET_LOG_PAGE),
        FaultAction::Delay(Duration::from_millis(300)),
    ));
    let (admin_r, reset_r, reset_took) = std::thread::scope(|s| {
        let a = s.spawn(|| ctrl.smart_log().map(|_| ()));
        std::thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        let r = ctrl.reset();
        (a.join().unwrap(), r, t.elapsed())
    });
    let mut b = vec![0u8; 512];
    let io = qp.read(&ns, 0, &mut b);
    let io2 = qp.read(&ns, 0, &mut b);
    let adm = ctrl.smart_log().map(|_| ());
    eprintln!("admin {admin_r:?}; reset {reset_r:?} in {reset_took:?}; then io {io:?}/{io2:?}, admin {adm:?}");
    assert!(
        reset_took < Duration::from_secs(1) && reset_r.is_ok() && io2.is_ok() && adm.is_ok(),
        "admin {admin_r:?}; reset {reset_r:?} took {reset_took:?}; then io {io:?}/{io2:?}, admin {adm:?}"
    );
}

/// An admin command whose controller then cannot be stopped (it ignores
/// CC.EN = 0 and the driver has no PCI function): the call fails with
/// `Dead`, and its data buffer is quarantined, never back in the pool (the
/// next buffer of its size lands elsewhere).
#[test]
fn an_admin_data_buffer_is_quarantined_when_the_controller_dies() {
    let (sim, ctrl) = open(
        Config::default().timeout_500ms(1),
        false,
        Duration::from_millis(300),
    );
    // Where the next 4 KiB pool buffer goes (first fit): the Identify
    // data buffer's place.
    let probe = ctrl.dma_alloc(4096).unwrap();
    let probe_iova = probe.iova();
    drop(probe);
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::IDENTIFY),
        FaultAction::Drop,
    ));
    sim.set_ignore_disable(true);
    let e = ctrl.identify_namespace(1).unwrap_err();
    assert!(matches!(e, Error::Dead), "{e}");
    let again = ctrl.dma_alloc(4096).unwrap();
    assert_ne!(
        again.iova(),
        probe_iova,
        "the admin buffer went back to the pool"
    );
    assert!(matches!(ctrl.smart_log(), Err(Error::Dead)));
}

/// An admin command times out while another thread's reset is bringing
/// the controller up (the controller is slow to become ready): the
/// timeout path must not stop the controller the reset is enabling. After
/// the reset the controller is enabled and ready, and serves I/O and
/// admin commands; nothing was stopped again.
#[test]
fn an_admin_timeout_during_a_reset_does_not_disable_the_controller() {
    let config = Config {
        ready_delay: Duration::from_millis(400),
        ..Config::default()
    };
    let (sim, ctrl) = open(config, true, Duration::from_millis(150));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::GET_LOG_PAGE),
        FaultAction::Delay(Duration::from_secs(3)),
    ));
    let (admin_r, reset_r) = std::thread::scope(|s| {
        let a = s.spawn(|| ctrl.smart_log().map(|_| ()));
        // The reset starts before the admin command's 150 ms run out, and
        // its enable waits 400 ms for the controller: the timeout falls
        // inside the bring-up.
        std::thread::sleep(Duration::from_millis(100));
        let r = ctrl.reset();
        (a.join().unwrap(), r)
    });
    reset_r.expect("the reset");
    assert!(admin_r.is_err(), "the slow admin command: {admin_r:?}");
    let cc = Cc(sim.registers().read32(offset::CC));
    let csts = sim.registers().read32(offset::CSTS);
    assert!(
        cc.enabled(),
        "CC.EN cleared after the reset: CC {:#x}",
        cc.0
    );
    assert_eq!(csts & 1, 1, "CSTS.RDY clear after the reset: {csts:#x}");
    let mut b = vec![0u8; 4096];
    qp.write(&ns, 0, &b, false).expect("I/O after the reset");
    qp.read(&ns, 0, &mut b).expect("I/O after the reset");
    ctrl.smart_log().expect("admin after the reset");
}
