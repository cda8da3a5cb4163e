//! Device removal announced by the device's owner (VFIO's device request
//! interrupt, which the kernel raises before it hot unplugs a device): the
//! driver stops the controller, fails everything with `DeviceLost` (the
//! buffers back, once no DMA is possible), and lets go of the device.

mod common;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, Released, SimController};
use nvme_vfio::ctrl::{Controller, Io, QueueConfig};
use nvme_vfio::nvme::cmd::admin;
use nvme_vfio::Error;

fn open() -> (SimController, Controller) {
    common::driver::open(Config::default(), Duration::from_secs(30), true)
}

/// What the device must look like when the driver lets go of it: stopped
/// (CSTS.RDY = 0) and unable to do DMA (bus mastering off).
const STOPPED: Released = Released {
    bus_master: false,
    ready: false,
};

/// A request in flight when the removal is asked for fails with
/// `DeviceLost` at the next poll, its buffer back; the device was stopped
/// before the driver let go of it; every later call fails the same way at
/// once, and dropping everything does not hang.
#[test]
fn a_removal_request_fails_requests_in_flight_and_lets_go_of_the_device() {
    let (sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    // A command that stays inside the controller, as on a busy disk.
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_secs(5)),
    ));
    qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()).tag(7))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(sim.released(), None);
    let start = Instant::now();
    assert!(sim.request_removal(), "the driver armed the notice");
    let done = common::driver::poll_within(&mut qp, 1, Duration::from_secs(1));
    let took = start.elapsed();
    assert!(took < Duration::from_millis(300), "failed after {took:?}");
    assert_eq!(done[0].tag, 7);
    assert!(
        matches!(done[0].result, Err(Error::DeviceLost)),
        "{:?}",
        done[0].result
    );
    assert_eq!(done[0].buf.len(), 4096, "the buffer comes back");
    assert_eq!(sim.released(), Some(STOPPED), "stopped, then let go of");

    let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, Error::DeviceLost), "{e}");
    let mut b = vec![0u8; 512];
    assert!(matches!(qp.read(&ns, 0, &mut b), Err(Error::DeviceLost)));
    assert!(matches!(ctrl.smart_log(), Err(Error::DeviceLost)));
    assert!(matches!(ctrl.reset(), Err(Error::DeviceLost)));
    assert!(matches!(
        ctrl.queue_pair(QueueConfig::default()),
        Err(Error::DeviceLost)
    ));
    let t = Instant::now();
    drop(qp);
    drop(ctrl);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

/// A busy application (32 reads kept in flight, a new one submitted for
/// each completion) sees only `DeviceLost` once the removal starts: every
/// request refused or failed while the driver stops the device and after
/// says so, never the retryable `Reset` a loop would retry.
#[test]
fn a_busy_queue_pair_sees_only_device_lost() {
    for round in 0..3 {
        let (sim, ctrl) = open();
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        let depth = 32;
        for i in 0..depth {
            let buf = ctrl.dma_alloc(4096).unwrap();
            qp.submit(Io::read(&ns, i * 8, buf))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        qp.flush();
        let (ok, errors) = std::thread::scope(|scope| {
            let remover = scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20 + 7 * round));
                sim.request_removal()
            });
            let (mut ok, mut errors, mut inflight) = (0usize, Vec::new(), depth);
            let start = Instant::now();
            let mut done = Vec::new();
            while inflight > 0 {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "{inflight} requests never ended"
                );
                qp.poll(&mut done);
                for d in done.drain(..) {
                    inflight -= 1;
                    match d.result {
                        Ok(_) => ok += 1,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                    // Resubmitted until the device goes: every refusal
                    // counts.
                    match qp.submit(Io::read(&ns, (ok as u64 % 1024) * 8, d.buf)) {
                        Ok(()) => inflight += 1,
                        Err((e, _)) => errors.push(e),
                    }
                }
                qp.flush();
            }
            assert!(remover.join().unwrap(), "the driver armed the notice");
            (ok, errors)
        });
        assert!(ok > 0, "reads completed before the removal");
        assert!(!errors.is_empty(), "the removal ended the reads");
        for e in &errors {
            assert!(matches!(e, Error::DeviceLost), "round {round}: {e}");
        }
        assert_eq!(sim.released(), Some(STOPPED));
    }
}

/// Callers blocked in the driver when the removal comes end promptly with
/// `DeviceLost`: a blocking read on one thread, an admin command that the
/// controller holds on another.
#[test]
fn blocked_callers_end_with_device_lost() {
    let (sim, ctrl) = open();
    let ctrl = Arc::new(ctrl);
    let ns = ctrl.namespace(1).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_secs(10)),
    ));
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::GET_LOG_PAGE),
        FaultAction::Delay(Duration::from_secs(10)),
    ));
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let reader = {
        let ns = ns.clone();
        std::thread::spawn(move || {
            let mut b = vec![0u8; 4096];
            let r = qp.read(&ns, 0, &mut b);
            (r, Instant::now())
        })
    };
    let admin = {
        let ctrl = ctrl.clone();
        std::thread::spawn(move || (ctrl.smart_log().map(|_| ()), Instant::now()))
    };
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    assert!(sim.request_removal());
    let (r, read_end) = reader.join().unwrap();
    let (a, admin_end) = admin.join().unwrap();
    assert!(matches!(r, Err(Error::DeviceLost)), "read: {r:?}");
    assert!(matches!(a, Err(Error::DeviceLost)), "admin: {a:?}");
    for (what, end) in [("read", read_end), ("admin", admin_end)] {
        let took = end.saturating_duration_since(start);
        assert!(
            took < Duration::from_millis(500),
            "{what} ended after {took:?}"
        );
    }
    assert_eq!(sim.released(), Some(STOPPED));
}

/// In interrupt mode a queue pair asleep in `wait` (long timeout, a
/// command the controller holds) is woken by the removal, not by its next
/// timeout check.
#[test]
fn a_waiter_asleep_on_its_interrupt_is_woken() {
    let (sim, ctrl) = common::driver::open_with_interrupts(Duration::from_secs(30));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_secs(10)),
    ));
    qp.submit(Io::read(&ns, 0, vec![0u8; 512]).tag(1))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    let remover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        assert!(sim.request_removal());
        (sim, Instant::now())
    });
    let mut done = Vec::new();
    // The first wait sleeps at most until the next timeout check (100 ms);
    // the removal must end it sooner than that after it is asked for.
    while done.is_empty() {
        qp.wait(&mut done, Duration::from_secs(30));
    }
    let woke = Instant::now();
    let (sim, asked) = remover.join().unwrap();
    let took = woke.saturating_duration_since(asked);
    assert!(took < Duration::from_millis(60), "woken after {took:?}");
    assert!(matches!(done[0].result, Err(Error::DeviceLost)));
    assert_eq!(sim.released(), Some(STOPPED));
}

/// The removal of a device whose `Controller` was dropped while a queue
/// pair still lives: the driver still lets go of it (the queue pair keeps
/// the device open), and the queue pair keeps failing.
#[test]
fn a_closed_controller_still_lets_go_of_its_device() {
    let (sim, ctrl) = open();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    drop(ctrl);
    assert!(sim.request_removal());
    let start = Instant::now();
    while sim.released().is_none() {
        assert!(start.elapsed() < Duration::from_secs(1), "not let go of");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(sim.released(), Some(STOPPED));
    let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, Error::DeviceLost | Error::Closed), "{e}");
}

/// Once everything is dropped, a late request finds nobody listening:
/// the device is not touched.
#[test]
fn nothing_acts_on_a_request_after_the_driver_is_gone() {
    let (sim, ctrl) = open();
    let qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    drop(qp);
    drop(ctrl);
    assert!(sim.request_removal());
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(sim.released(), None);
}
