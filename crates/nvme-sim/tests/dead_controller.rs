//! when does a dead controller abort the process? The promise:
//! only when a blocking call's command is in flight on memory the caller
//! lent. Each scenario runs in a child process (an abort kills it).

use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::nvme::cmd::io;

fn open(config: Config, function: bool) -> (SimController, Controller) {
    let sim = SimController::new(config).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 2,
        io_timeout: Duration::from_secs(30),
        ..DriverConfig::default()
    };
    let f = function.then(|| sim.pci_function());
    // SAFETY: registers, IOMMU and function all belong to `sim`.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, f) }.unwrap();
    (sim, ctrl)
}

/// Runs `name` in a child process; returns (aborted, stderr).
fn in_child(name: &str) -> (bool, String) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("NVME_TEST_CHILD", name)
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    let aborted = out.status.signal() == Some(libc::SIGABRT);
    (aborted, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn is_child(name: &str) -> bool {
    std::env::var("NVME_TEST_CHILD").as_deref() == Ok(name)
}

/// Runs `call` on a queue pair of `ctrl` in another thread, with the
/// commands of `opcode` dropped by `sim`, and makes the controller dead
/// meanwhile (a reset it ignores); everything is leaked afterwards, as a
/// dead controller's memory must be.
fn die_during(
    sim: SimController,
    ctrl: Controller,
    opcode: u8,
    call: impl FnOnce(&mut nvme_vfio::ctrl::QueuePair) + Send + 'static,
) {
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io().opcode(opcode),
        FaultAction::Drop,
    ));
    let t = std::thread::spawn(move || {
        call(&mut qp);
        qp
    });
    std::thread::sleep(Duration::from_millis(100));
    sim.set_ignore_disable(true);
    let r = ctrl.reset();
    eprintln!("CHILD: reset returned {r:?}");
    let qp = t.join().unwrap();
    std::mem::forget(qp);
    std::mem::forget(ctrl);
    std::mem::forget(sim);
}

/// Flush has no data and no memory at all; Write Zeroes neither. A dead
/// controller while one is in flight needs no abort: the call can fail
/// with `Dead`.
#[test]
fn a_dead_controller_during_a_flush_fails_the_call() {
    const NAME: &str = "a_dead_controller_during_a_flush_fails_the_call";
    if is_child(NAME) {
        let (sim, ctrl) = open(Config::default().timeout_500ms(1), false);
        let ns = ctrl.namespace(1).unwrap();
        die_during(sim, ctrl, io::FLUSH, move |qp| {
            let r = qp.flush_cache(&ns);
            eprintln!("CHILD: flush_cache returned {r:?}");
        });
        return;
    }
    let (aborted, err) = in_child(NAME);
    assert!(
        !aborted,
        "the process was aborted for a Flush (no memory involved):\n{err}"
    );
}

/// A blocking read whose completion the (unstoppable) device posted
/// during the reset, before the driver declared it dead: the command is
/// done, so the call returns (the driver reads the completion queue before
/// it quarantines what is still in flight) instead of aborting the
/// process.
#[test]
fn a_blocking_read_completed_before_the_controller_died_returns() {
    const NAME: &str = "a_blocking_read_completed_before_the_controller_died_returns";
    if is_child(NAME) {
        let (sim, ctrl) = open(Config::default().timeout_500ms(1), false);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        sim.inject(FaultRule::next(
            Match::io(),
            FaultAction::Delay(Duration::from_millis(250)),
        ));
        let before = sim.stats().read_commands;
        let t = std::thread::spawn(move || {
            let mut b = vec![0u8; 4096];
            let r = qp.read(&ns, 0, &mut b);
            eprintln!("CHILD: read returned {r:?}");
            qp
        });
        std::thread::sleep(Duration::from_millis(50));
        sim.set_ignore_disable(true);
        let start = Instant::now();
        let w = {
            let stats = move || sim.stats().read_commands;
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                eprintln!(
                    "CHILD: reads completed by the device during the reset: {}",
                    stats() - before
                );
                std::thread::sleep(Duration::from_secs(5));
            })
        };
        let r = ctrl.reset();
        eprintln!("CHILD: reset returned {r:?} after {:?}", start.elapsed());
        let qp = t.join().unwrap();
        std::mem::forget(qp);
        std::mem::forget(ctrl);
        drop(w);
        return;
    }
    let (aborted, err) = in_child(NAME);
    assert!(
        !aborted,
        "aborted although the blocking read's completion was posted:\n{err}"
    );
}

/// A blocking write with metadata copies through DMA buffers of the
/// driver's own: if the controller dies with it in flight, the call fails
/// with `Dead` and leaks them, without aborting the process.
#[test]
fn a_dead_controller_during_a_write_with_metadata_fails_the_call() {
    const NAME: &str = "a_dead_controller_during_a_write_with_metadata_fails_the_call";
    if is_child(NAME) {
        let ns = [nvme_sim::NamespaceConfig::from_kind("pi1", 1024, 512).unwrap()];
        let config = Config::default().timeout_500ms(1).namespaces(&ns);
        let (sim, ctrl) = open(config, false);
        let ns = ctrl.namespace(1).unwrap();
        die_during(sim, ctrl, io::WRITE, move |qp| {
            let p = nvme_vfio::ctrl::Protection::driver();
            let r = qp.write_with_metadata(&ns, 0, &[7u8; 4096], &[0u8; 64], Some(p), false);
            eprintln!("CHILD: write_with_metadata returned {r:?}");
        });
        return;
    }
    let (aborted, err) = in_child(NAME);
    assert!(
        !aborted,
        "the process was aborted for driver-owned memory:\n{err}"
    );
    assert!(
        err.contains("write_with_metadata returned Err(Dead)"),
        "{err}"
    );
}
