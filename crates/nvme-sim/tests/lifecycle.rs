//! The driver's lifecycle under an application's timing: timeouts fire by
//! time however often the caller polls.

mod common;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, Done, Io, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::nvme::cmd::io;
use nvme_vfio::nvme::regs::Registers;
use nvme_vfio::Error;

fn open(config: Config, io_timeout: Duration) -> (SimController, Controller) {
    common::driver::open(config, io_timeout, true)
}

/// A command the device never completes is detected by time: with the
/// caller polling continuously, every 2 ms or every 50 ms, the request
/// comes back (aborted) no earlier than its timeout and no later than its
/// timeout plus the polling interval plus 20 ms. Commands are stamped when
/// their doorbell is written, so a command submitted between two polls is
/// timed from its publication, not from a later check.
#[test]
fn a_stuck_command_times_out_by_time_whatever_the_polling_interval() {
    let timeout = Duration::from_millis(200);
    let (sim, ctrl) = open(Config::default(), timeout);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    for interval in [
        Duration::ZERO,
        Duration::from_millis(2),
        Duration::from_millis(50),
    ] {
        // Other I/O keeps completing meanwhile; one read is lost.
        sim.inject(FaultRule::nth(
            Match::io().opcode(io::READ),
            3,
            FaultAction::Drop,
        ));
        let start = Instant::now();
        for i in 0..5u64 {
            qp.submit(Io::read(&ns, i, vec![0u8; 512]).tag(i))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        qp.flush();
        let mut done: Vec<Done> = Vec::new();
        let mut stuck = None;
        while stuck.is_none() {
            qp.poll(&mut done);
            if let Some(d) = done.iter().find(|d| d.result.is_err()) {
                stuck = Some((d.tag, start.elapsed()));
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{interval:?}: no timeout"
            );
            if !interval.is_zero() {
                std::thread::sleep(interval);
            }
        }
        let (tag, after) = stuck.unwrap();
        assert_eq!(tag, 2, "{interval:?}");
        assert!(
            after >= timeout,
            "{interval:?}: fired early, after {after:?}"
        );
        assert!(
            after <= timeout + interval + Duration::from_millis(20),
            "{interval:?}: detected after {after:?}"
        );
        let done_err = done.iter().find(|d| d.tag == 2).unwrap();
        assert!(
            matches!(&done_err.result, Err(Error::Command { status, .. }) if status.sc() == 0x07),
            "aborted: {:?}",
            done_err.result
        );
        while done.len() < 5 {
            qp.poll(&mut done);
        }
        assert_eq!(done.iter().filter(|d| d.result.is_ok()).count(), 4);
    }
}

/// A queue pair that outlives its controller cannot bring it back: the
/// dropped `Controller` shut the controller down and stopped it; what the
/// queue pair had in flight fails at once with `Closed` (the device is
/// stopped), its timeout never resets the controller, and every later
/// call fails the same way.
#[test]
fn a_queue_pair_cannot_revive_a_dropped_controller() {
    let timeout = Duration::from_millis(200);
    let (sim, ctrl) = open(Config::default(), timeout);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_secs(2)),
    ));
    qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()).tag(1))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    std::thread::sleep(Duration::from_millis(20));
    let resets = sim.stats().function_resets;
    drop(ctrl);
    let start = Instant::now();
    let mut done = Vec::new();
    while done.is_empty() {
        qp.poll(&mut done);
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "fails at once"
        );
    }
    assert!(
        matches!(done[0].result, Err(Error::Closed)),
        "{:?}",
        done[0].result
    );
    assert_eq!(
        done[0].buf.len(),
        4096,
        "the buffer comes back: the device is stopped"
    );
    // Well past the I/O timeout: nothing re-enables the controller.
    while start.elapsed() < timeout * 3 {
        qp.poll(&mut done);
        std::thread::sleep(Duration::from_millis(5));
    }
    let csts = sim.read32(nvme_vfio::nvme::regs::offset::CSTS);
    assert_eq!(csts & 1, 0, "CSTS.RDY stays 0");
    assert_eq!(
        sim.stats().function_resets,
        resets + 1,
        "stopped once, at close"
    );
    let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, Error::Closed), "{e}");
    let mut b = vec![0u8; 512];
    assert!(matches!(qp.read(&ns, 0, &mut b), Err(Error::Closed)));
    let start = Instant::now();
    drop(qp);
    assert!(start.elapsed() < Duration::from_millis(100));
    assert_eq!(sim.read32(nvme_vfio::nvme::regs::offset::CSTS) & 1, 0);
}

/// Dropping a queue pair with a command the device holds does not wait
/// for the I/O timeout: deleting the submission queue makes the
/// controller end it, and nothing is reset.
#[test]
fn dropping_a_queue_pair_with_a_stuck_command_is_quick_and_resets_nothing() {
    let (sim, ctrl) = open(Config::default(), Duration::from_secs(30));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(Match::io(), FaultAction::Drop));
    qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    std::thread::sleep(Duration::from_millis(20));
    let resets = sim.stats().function_resets;
    let start = Instant::now();
    drop(qp);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(sim.stats().function_resets, resets, "no reset");
    // The controller and a new queue pair on the same queue ID work.
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut b = vec![0u8; 4096];
    qp.read(&ns, 0, &mut b).unwrap();
}

/// The reset owns the admin queue: an admin command in flight when a reset
/// starts ends promptly with `Reset` (once the device is stopped), and the
/// reset does not wait for it; afterwards admin commands work.
#[test]
fn a_reset_with_a_slow_admin_command_in_flight_is_quick() {
    let (sim, ctrl) = open(Config::default(), Duration::from_secs(5));
    sim.inject(FaultRule::next(
        Match::admin().opcode(nvme_vfio::nvme::cmd::admin::GET_FEATURES),
        FaultAction::Delay(Duration::from_secs(5)),
    ));
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let t = Instant::now();
            let r = ctrl.write_cache();
            (r, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        ctrl.reset().unwrap();
        let reset_took = t.elapsed();
        let (r, waited) = waiter.join().unwrap();
        assert!(
            reset_took < Duration::from_millis(500),
            "reset took {reset_took:?}"
        );
        assert!(matches!(r, Err(Error::Reset)), "{r:?}");
        assert!(
            waited < Duration::from_millis(700),
            "the admin call took {waited:?}"
        );
    });
    ctrl.write_cache().unwrap();
    ctrl.smart_log().unwrap();
}

/// When a queue pair's queues cannot be created again after a reset, every
/// call reports it (no request goes to a queue the controller does not
/// have, and no second reset follows); the orphaned completion queue is
/// deleted, so a later attempt creates both queues and I/O continues.
#[test]
fn a_failed_queue_recreation_is_reported_and_retried() {
    use nvme_vfio::nvme::cmd::{admin, Status};
    let (sim, ctrl) = open(Config::default(), Duration::from_secs(5));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut b = vec![0u8; 4096];
    qp.read(&ns, 0, &mut b).unwrap();
    // The next Create I/O Submission Queue fails (Invalid Field, DNR).
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::CREATE_SQ),
        FaultAction::Status(Status::new(0, 0x02, true)),
    ));
    ctrl.reset().unwrap();
    let resets = sim.stats().function_resets;
    let e = qp.read(&ns, 0, &mut b).unwrap_err();
    assert!(matches!(e, Error::QueueUnavailable { .. }), "{e}");
    let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, Error::QueueUnavailable { .. }), "{e}");
    std::thread::sleep(Duration::from_millis(150));
    qp.read(&ns, 0, &mut b).unwrap();
    assert_eq!(sim.stats().function_resets, resets, "no second reset");
}

/// BAR0 of the model, recording for every CC write with EN = 0 how many
/// IOMMU mappings existed and whether bus mastering was on.
struct CcRecorder {
    sim: Arc<SimController>,
    disables: std::sync::Mutex<Vec<(usize, bool)>>,
}

impl Registers for CcRecorder {
    fn read32(&self, off: u64) -> u32 {
        self.sim.read32(off)
    }
    fn write32(&self, off: u64, value: u32) {
        if off == nvme_vfio::nvme::regs::offset::CC && value & 1 == 0 {
            let maps = self.sim.iommu().mappings().len();
            self.disables
                .lock()
                .unwrap()
                .push((maps, self.sim.bus_master()));
        }
        self.sim.write32(off, value)
    }
    fn read64(&self, off: u64) -> u64 {
        self.sim.read64(off)
    }
    fn write64(&self, off: u64, value: u64) {
        self.sim.write64(off, value)
    }
}

/// Bring-up finds a controller an earlier user left enabled (here, a
/// driver whose process "died": its Controller was forgotten, not
/// dropped): it turns bus mastering off and disables the controller before
/// it maps anything, and falls back to a function level reset when the
/// controller ignores CC.EN = 0. Then the controller works.
#[test]
fn bring_up_stops_a_controller_left_running_before_mapping_anything() {
    for ignore in [false, true] {
        let sim = Arc::new(SimController::new(Config::default()).unwrap());
        let driver = DriverConfig {
            space: SpaceConfig { hugepages: false },
            io_queues: 2,
            ..DriverConfig::default()
        };
        let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
        // SAFETY: the registers, the IOMMU under the DMA space and the PCI
        // function all belong to `sim`; the first driver is forgotten
        // before the second one starts.
        let first =
            unsafe { Controller::with_backend(sim.registers(), space, driver.clone(), None) }
                .unwrap();
        std::mem::forget(first);
        // The process "died": the kernel unmaps its DMA memory.
        for m in sim.iommu().mappings() {
            // SAFETY: the forgotten driver's memory is leaked, never freed
            // or reused; the device only loses access to it.
            unsafe { nvme_vfio::mem::DmaMap::unmap_dma(&**sim.iommu(), m.iova, m.len) }.unwrap();
        }
        assert_eq!(sim.read32(nvme_vfio::nvme::regs::offset::CSTS) & 1, 1);
        sim.set_ignore_disable(ignore);
        let rec = Arc::new(CcRecorder {
            sim: sim.clone(),
            disables: std::sync::Mutex::new(Vec::new()),
        });
        let maps_before = sim.iommu().mappings().len();
        let flrs = sim.stats().function_resets;
        let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
        // SAFETY: as above.
        let ctrl = unsafe {
            Controller::with_backend(rec.clone(), space, driver, Some(sim.pci_function()))
        }
        .unwrap();
        let first_disable = rec.disables.lock().unwrap()[0];
        assert_eq!(
            first_disable,
            (maps_before, false),
            "ignore CC.EN = 0: {ignore}: disabled before anything was mapped, bus mastering off"
        );
        assert_eq!(sim.stats().function_resets, flrs + u64::from(ignore));
        sim.set_ignore_disable(false);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        let mut b = vec![0u8; 4096];
        qp.read(&ns, 0, &mut b).unwrap();
    }
}

/// Asynchronous events reach the application: the driver keeps event
/// requests outstanding; setting the temperature threshold below the
/// controller's temperature makes it report a SMART/health event
/// (temperature threshold, log page 02h), which `poll_events` returns; the
/// requests are sent again after a reset, and I/O is unaffected.
#[test]
fn a_smart_temperature_event_reaches_the_application() {
    use nvme_vfio::ctrl::{AsyncEvent, AsyncEventKind};
    use nvme_vfio::nvme::cmd::feature;
    let (_sim, ctrl) = open(Config::default(), Duration::from_secs(5));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    assert!(ctrl.poll_events().unwrap().is_empty());
    let temperature = ctrl.smart_log().unwrap().temperature_k;
    let wait_event = || {
        let start = Instant::now();
        loop {
            let e = ctrl.poll_events().unwrap();
            if !e.is_empty() {
                return e;
            }
            assert!(start.elapsed() < Duration::from_secs(2), "no event");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let smart_temperature = AsyncEvent {
        kind: AsyncEventKind::SmartHealth,
        info: 1,
        log_page: 0x02,
        errors: Vec::new(),
    };
    for round in 0..2 {
        // Over-temperature threshold below the current temperature.
        ctrl.set_features(feature::TEMPERATURE_THRESHOLD, u32::from(temperature) - 10)
            .unwrap();
        assert_eq!(
            wait_event(),
            vec![smart_temperature.clone()],
            "round {round}"
        );
        assert_ne!(ctrl.smart_log().unwrap().critical_warning & 2, 0);
        let mut b = vec![0u8; 4096];
        qp.read(&ns, 0, &mut b).unwrap();
        // Back above: the warning clears; the controller resets its
        // features with a reset, and the driver sends its requests again.
        ctrl.set_features(feature::TEMPERATURE_THRESHOLD, u32::from(temperature) + 10)
            .unwrap();
        ctrl.reset().unwrap();
        qp.read(&ns, 0, &mut b).unwrap();
    }
    assert!(ctrl.poll_events().unwrap().is_empty());
}

/// Interrupt mode: a caller asleep in `wait` on the queue's interrupt
/// (nvme-sim's eventfd vectors) is woken by completions, and a command the
/// device never completes (it raises no interrupt) is still detected by
/// time: `wait` sleeps no longer than the next timeout check, and the
/// request comes back within its timeout plus 20 ms.
#[test]
fn in_interrupt_mode_a_stuck_command_times_out_by_time() {
    let timeout = Duration::from_millis(200);
    let (sim, ctrl) = open_with_interrupts(timeout);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    // Woken by the interrupt of an ordinary completion.
    qp.submit(Io::read(&ns, 0, vec![0u8; 512]))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut done = Vec::new();
    let t = Instant::now();
    while done.is_empty() {
        qp.wait(&mut done, Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(5));
    }
    assert!(done[0].result.is_ok());
    assert!(qp.interrupts() > 0, "woken by the queue's interrupt");
    // A lost command: no interrupt ever comes for it.
    sim.inject(FaultRule::next(Match::io(), FaultAction::Drop));
    qp.submit(Io::read(&ns, 0, vec![0u8; 512]).tag(5))
        .map_err(|(e, _)| e)
        .unwrap();
    let start = Instant::now();
    let mut done = Vec::new();
    while done.is_empty() {
        // One long sleep, as an event loop would.
        qp.wait(&mut done, Duration::from_secs(30));
        assert!(start.elapsed() < Duration::from_secs(5), "no timeout");
    }
    let after = start.elapsed();
    assert_eq!(done[0].tag, 5);
    assert!(done[0].result.is_err(), "{:?}", done[0].result);
    assert!(after >= timeout, "fired early, after {after:?}");
    assert!(
        after <= timeout + Duration::from_millis(20),
        "detected after {after:?}"
    );
}

/// Surprise removal: the device leaves the bus (registers read all ones,
/// configuration space does not answer, no more DMA). Within the timeout
/// check period every request in flight fails with `DeviceLost` and its
/// buffer comes back (the device cannot reach it any more), every later
/// call fails the same way at once, and dropping everything does not hang.
#[test]
fn a_device_that_leaves_the_bus_fails_everything_with_device_lost() {
    let (sim, ctrl) = open(Config::default(), Duration::from_secs(30));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_secs(2)),
    ));
    qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()).tag(3))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    std::thread::sleep(Duration::from_millis(20));
    let start = Instant::now();
    sim.surprise_remove();
    let done = common::driver::poll_within(&mut qp, 1, Duration::from_millis(500));
    assert!(
        start.elapsed() < Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    assert_lost(&done, 3);
    let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, Error::DeviceLost), "{e}");
    let mut b = vec![0u8; 512];
    assert!(matches!(qp.read(&ns, 0, &mut b), Err(Error::DeviceLost)));
    assert!(matches!(ctrl.smart_log(), Err(Error::DeviceLost)));
    assert!(matches!(ctrl.reset(), Err(Error::DeviceLost)));
    let t = Instant::now();
    drop(qp);
    drop(ctrl);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

/// An event loop waits on the queue pair's interrupt eventfd: it becomes
/// readable when completions are posted; clearing it, then polling,
/// collects them; with nothing in flight it stays quiet.
#[test]
fn an_event_loop_waits_on_the_interrupt_fd() {
    let (_sim, ctrl) = open_with_interrupts(Duration::from_secs(30));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let readable = |qp: &nvme_vfio::ctrl::QueuePair, ms: i32| {
        let fd = qp.interrupt_fd().expect("interrupt mode");
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&fd),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) == 1 }
    };
    assert!(!readable(&qp, 50), "quiet with nothing in flight");
    for round in 0..3u64 {
        for i in 0..4 {
            qp.submit(Io::read(&ns, i, vec![0u8; 512]).tag(round * 10 + i))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        qp.flush();
        let mut done = Vec::new();
        while done.len() < 4 {
            assert!(readable(&qp, 2000), "round {round}: woken");
            assert!(qp.clear_interrupt() > 0);
            qp.poll(&mut done);
        }
        assert!(done.iter().all(|d| d.result.is_ok()));
        // A completion posted between the last clear and the last poll
        // left it readable; once cleared with nothing in flight it is
        // quiet.
        qp.clear_interrupt();
        assert!(!readable(&qp, 20), "round {round}: cleared");
    }
}

fn open_with_interrupts(io_timeout: Duration) -> (SimController, Controller) {
    common::driver::open_with_interrupts(io_timeout)
}

/// An invalid doorbell write (a submission queue tail beyond the queue,
/// as a buggy or hostile writer of the BAR could make) is ignored by the
/// controller, logged in its Error Information log and reported as an
/// error event (Error Status, Invalid Doorbell Write Value, log page
/// 01h). `poll_events` hands the event over with the new log entry, and
/// the log read lets the controller report the next one: a second bad
/// write is a second event, with only its own entry. I/O goes on.
#[test]
fn an_invalid_doorbell_write_is_an_error_event_with_its_log_entry() {
    use nvme_vfio::ctrl::{AsyncEvent, AsyncEventKind};
    use nvme_vfio::nvme::regs::sq_tail_doorbell;
    let (sim, ctrl) = open(Config::default(), Duration::from_secs(5));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    assert!(ctrl.poll_events().unwrap().is_empty());
    let regs = sim.registers();
    let doorbell = sq_tail_doorbell(qp.qid(), sim.doorbell_stride());
    let wait_event = || {
        let start = Instant::now();
        loop {
            let e = ctrl.poll_events().unwrap();
            if !e.is_empty() {
                return e;
            }
            assert!(start.elapsed() < Duration::from_secs(2), "no event");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let mut counts = Vec::new();
    for round in 0..2 {
        // No queue has 65,537 entries: the tail is beyond any queue.
        regs.write32(doorbell, 0x1_0000 + round);
        let events = wait_event();
        assert_eq!(events.len(), 1, "round {round}: {events:?}");
        let AsyncEvent {
            kind,
            info,
            log_page,
            errors,
        } = &events[0];
        assert_eq!(
            (*kind, *info, *log_page),
            (AsyncEventKind::Error, 1, 0x01),
            "round {round}"
        );
        assert_eq!(errors.len(), 1, "round {round}: only the new entry");
        let e = errors[0];
        assert_eq!((e.sqid, e.cid), (qp.qid(), 0xffff), "round {round}");
        assert_eq!(e.command_specific, 0x1_0000 + u64::from(round));
        counts.push(e.error_count);
        // The write was ignored: the queue goes on.
        let mut b = vec![0u8; 4096];
        qp.write(&ns, 8, &b, false).unwrap();
        qp.read(&ns, 8, &mut b).unwrap();
    }
    assert!(counts[1] > counts[0], "{counts:?}");
    assert!(ctrl.poll_events().unwrap().is_empty());
    assert_eq!(qp.device_errors(), 0);
}

/// Interrupt mode: dropping a queue pair whose command the device holds,
/// when the device has left the bus, is bounded and sleeps while it
/// waits for the driver to notice (on the queue's interrupt or a short
/// sleep): the dropping thread's CPU time stays far below the time the
/// drop takes.
#[test]
fn dropping_a_queue_pair_with_a_stuck_command_in_interrupt_mode_sleeps() {
    let (sim, ctrl) = common::driver::open_with_interrupts(Duration::from_secs(30));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(Match::io(), FaultAction::Drop));
    qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    std::thread::sleep(Duration::from_millis(20));
    sim.surprise_remove();
    let (cpu, wall) = (thread_cpu(), Instant::now());
    drop(qp);
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    assert!(wall < Duration::from_secs(2), "took {wall:?}");
    assert!(
        cpu < wall / 4 + Duration::from_millis(5),
        "spun: {cpu:?} of CPU in {wall:?}"
    );
    drop(ctrl);
}

/// Dropping a queue pair whose command is stuck, in interrupt mode, when
/// the controller takes its time to delete the submission queue (which
/// aborts the command): the drop waits for it without burning the CPU,
/// and resets nothing.
#[test]
fn dropping_a_queue_pair_waits_for_a_slow_queue_deletion_asleep() {
    let (sim, ctrl) = common::driver::open_with_interrupts(Duration::from_secs(30));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(Match::io(), FaultAction::Drop));
    qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    std::thread::sleep(Duration::from_millis(20));
    sim.inject(FaultRule::next(
        Match::admin().opcode(nvme_vfio::nvme::cmd::admin::DELETE_SQ),
        FaultAction::Delay(Duration::from_millis(300)),
    ));
    let resets = sim.stats().function_resets;
    let (cpu, wall) = (thread_cpu(), Instant::now());
    drop(qp);
    let (cpu, wall) = (thread_cpu() - cpu, wall.elapsed());
    assert!(
        wall >= Duration::from_millis(250) && wall < Duration::from_secs(2),
        "took {wall:?}"
    );
    assert!(cpu < wall / 4, "spun: {cpu:?} of CPU in {wall:?}");
    assert_eq!(
        sim.stats().function_resets,
        resets,
        "the drop reset the controller"
    );
    drop(ctrl);
}

/// The one completion in `done` is request `tag`'s, failed with
/// `DeviceLost`, its 4 KiB buffer back.
fn assert_lost(done: &[Done], tag: u64) {
    assert_eq!(done[0].tag, tag);
    assert!(
        matches!(done[0].result, Err(Error::DeviceLost)),
        "{:?}",
        done[0].result
    );
    assert_eq!(done[0].buf.len(), 4096, "the buffer comes back");
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill, for the calling thread's clock.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Registers whose accesses start failing (as a VFIO BAR access the kernel
/// refuses): writes are dropped and `failed` says so; reads still answer.
struct FailingRegisters {
    inner: Arc<dyn Registers>,
    failing: std::sync::atomic::AtomicBool,
}

impl Registers for FailingRegisters {
    fn read32(&self, offset: u64) -> u32 {
        self.inner.read32(offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        if !self.failed() {
            self.inner.write32(offset, value);
        }
    }
    fn read64(&self, offset: u64) -> u64 {
        self.inner.read64(offset)
    }
    fn write64(&self, offset: u64, value: u64) {
        if !self.failed() {
            self.inner.write64(offset, value);
        }
    }
    fn failed(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A register access that fails (here a doorbell write dropped) is a lost
/// device, as registers reading all ones are: within the timeout check
/// period the request fails with `DeviceLost` (not after its 30 s
/// timeout), its buffer back once the controller is stopped through its
/// PCI function, and later calls fail the same way.
#[test]
fn a_failed_register_access_is_device_lost() {
    let sim = SimController::new(Config::default()).unwrap();
    let regs = Arc::new(FailingRegisters {
        inner: sim.registers(),
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 2,
        io_timeout: Duration::from_secs(30),
        // Doorbells through the registers only, so the write fails.
        shadow_doorbells: false,
        ..DriverConfig::default()
    };
    // SAFETY: the registers (through the wrapper), the IOMMU under the DMA
    // space and the PCI function all belong to `sim`.
    let ctrl =
        unsafe { Controller::with_backend(regs.clone(), space, driver, Some(sim.pci_function())) }
            .unwrap();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut b = vec![0u8; 4096];
    qp.read(&ns, 0, &mut b).unwrap();
    regs.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let start = Instant::now();
    qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()).tag(5))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    let done = common::driver::poll_within(&mut qp, 1, Duration::from_secs(2));
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_lost(&done, 5);
    assert!(!sim.bus_master(), "stopped through the PCI function");
    let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, Error::DeviceLost), "{e}");
    assert!(matches!(ctrl.smart_log(), Err(Error::DeviceLost)));
}
