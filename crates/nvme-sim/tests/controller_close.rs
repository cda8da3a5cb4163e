//! Dropping the Controller while queue pairs still have commands in
//! flight: the controller is shut down and stopped (CC.EN = 0, bus
//! mastering off, function reset) before queue pairs fail their requests
//! with `Closed` and hand the buffers back, and nothing revives it.

mod common;
use common::driver::{open, wait_all};
use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match};
use nvme_vfio::ctrl::{Io, IoBuf, QueueConfig};
use nvme_vfio::nvme::regs::{offset, Cc, Csts};
use nvme_vfio::Error;

/// A read delayed inside the device; the Controller is dropped: the
/// queue pair's request comes back with `Closed` and its DMA buffer only
/// after the controller was stopped (CC.EN = 0, bus mastering off, the
/// function reset), and the command the device held never writes it.
#[test]
fn controller_drop_stops_the_device_before_buffers_go_back() {
    let (sim, ctrl) = open(Config::default(), Duration::from_secs(30), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 1) as u8).collect();
    sim.write_blocks(1, 32, &data).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_millis(800)),
    ));
    qp.submit(Io::read(&ns, 32, ctrl.dma_alloc(4096).unwrap()).tag(7))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    std::thread::sleep(Duration::from_millis(20));
    let resets = sim.stats().function_resets;
    drop(ctrl);
    let mut done = wait_all(&mut qp, 1);
    let d = done.pop().unwrap();
    let regs = sim.registers();
    let cc = Cc(regs.read32(offset::CC));
    let csts = Csts(regs.read32(offset::CSTS));
    let state = format!(
        "result {:?}; CC.EN={} CSTS.RDY={} bus master={} function resets since={}",
        d.result,
        cc.enabled(),
        csts.ready(),
        sim.bus_master(),
        sim.stats().function_resets - resets
    );
    assert!(matches!(d.result, Err(Error::Closed)), "{state}");
    assert!(
        !cc.enabled() && !csts.ready() && !sim.bus_master(),
        "{state}"
    );
    assert_eq!(sim.stats().function_resets, resets + 1, "{state}");
    let IoBuf::Dma(mut mine) = d.buf else {
        panic!("the buffer comes back: the device is stopped ({state})")
    };
    mine.as_mut_slice().fill(0xee);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        mine.as_slice().iter().all(|&b| b == 0xee),
        "written after it came back"
    );
}

/// The same with a blocking read on another thread: it returns (handing
/// the borrowed slice back) only once the device is stopped.
#[test]
fn controller_drop_during_a_blocking_read_returns_the_borrow() {
    let (sim, ctrl) = open(Config::default(), Duration::from_secs(30), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut pool = ctrl.dma_alloc(4096).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_millis(800)),
    ));
    let t = std::thread::spawn(move || {
        let r = qp.read(&ns, 0, pool.as_mut_slice());
        (r, pool, qp)
    });
    std::thread::sleep(Duration::from_millis(100));
    drop(ctrl);
    let (r, _pool, _qp) = t.join().unwrap();
    let regs = sim.registers();
    assert!(
        r.is_ok() || !(Cc(regs.read32(offset::CC)).enabled() && sim.bus_master()),
        "blocking read returned {r:?} while CC.EN=1 and bus mastering on \
         (device not proven stopped)"
    );
}

/// `Controller::drop` racing with resets that a queue pair starts (device
/// errors): no I/O succeeds after the drop returned (a closed controller is
/// never revived), and the drop does not wait for its shutdown timeout.
#[test]
fn controller_drop_racing_a_queue_pair_reset() {
    use nvme_sim::CqeCorruption;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let mut revived = 0;
    let mut slow_drops = Vec::new();
    for round in 0..20u64 {
        let (sim, ctrl) = open(Config::default(), Duration::from_millis(300), true);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        sim.inject(FaultRule::random(
            Match::io(),
            0.3,
            FaultAction::Corrupt(CqeCorruption::CidXor(0x4000)),
        ));
        let dropped = Arc::new(AtomicBool::new(false));
        let ok_after = Arc::new(AtomicU64::new(0));
        let t = {
            let (dropped, ok_after, ns) = (dropped.clone(), ok_after.clone(), ns.clone());
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut buf = vec![0u8; 512];
                while start.elapsed() < Duration::from_millis(1500) {
                    let after = dropped.load(Ordering::SeqCst);
                    if qp.read(&ns, 0, &mut buf).is_ok() && after {
                        ok_after.fetch_add(1, Ordering::Relaxed);
                    }
                }
                qp
            })
        };
        std::thread::sleep(Duration::from_millis(100 + round * 7));
        let d = Instant::now();
        drop(ctrl);
        let took = d.elapsed();
        dropped.store(true, Ordering::SeqCst);
        let qp = t.join().unwrap();
        if took > Duration::from_secs(1) {
            slow_drops.push(took);
        }
        if ok_after.load(Ordering::Relaxed) > 0 {
            revived += 1;
        }
        drop(qp);
        if took > Duration::from_secs(1) || revived > 0 {
            break;
        }
    }
    assert!(
        revived == 0 && slow_drops.is_empty(),
        "I/O succeeded after Controller::drop returned in {revived} round(s); \
         slow drops: {slow_drops:?}"
    );
}

/// Dropping a queue pair with a stuck command on a controller that
/// ignores CC.EN = 0 (and Abort), with and without the PCI function:
/// bounded, and the buffer is quarantined or the device stopped.
#[test]
fn drop_queue_pair_with_a_stuck_command() {
    for function in [false, true] {
        let (sim, ctrl) = open(
            Config::default().timeout_500ms(1),
            Duration::from_millis(300),
            function,
        );
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        sim.inject(FaultRule::next(
            Match::io(),
            FaultAction::SurviveReset {
                after: Duration::from_millis(10),
            },
        ));
        qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()))
            .map_err(|(e, _)| e)
            .unwrap();
        qp.flush();
        sim.set_ignore_disable(true);
        let t = Instant::now();
        drop(qp);
        let took = t.elapsed();
        eprintln!(
            "function {function}: drop took {took:?}, dead = {:?}",
            ctrl.smart_log().err()
        );
        assert!(took < Duration::from_secs(5), "drop took {took:?}");
        let t = Instant::now();
        drop(ctrl);
        assert!(
            t.elapsed() < Duration::from_secs(12),
            "controller drop {:?}",
            t.elapsed()
        );
    }
}

/// A queue pair whose completion queue the controller refuses to delete
/// leaks its rings (the controller may still write that queue) instead of
/// handing the memory back to the pool.
#[test]
fn rings_of_queues_that_could_not_be_deleted_are_not_reused() {
    use nvme_vfio::nvme::cmd::{admin, Status};
    let (sim, ctrl) = open(Config::default(), Duration::from_secs(5), true);
    // Where the queue pair's memory will start (first fit).
    let probe = ctrl.dma_alloc(4096).unwrap();
    let probe_iova = probe.iova();
    drop(probe);
    let qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::DELETE_CQ),
        FaultAction::Status(Status::new(0, 0x02, true)),
    ));
    drop(qp);
    let again = ctrl.dma_alloc(4096).unwrap();
    assert_ne!(
        again.iova(),
        probe_iova,
        "the queue pair's memory went back to the pool"
    );
    // A queue pair whose queues were deleted gives its memory back.
    drop(again);
    let probe = ctrl.dma_alloc(4096).unwrap();
    let probe_iova = probe.iova();
    drop(probe);
    drop(ctrl.queue_pair(QueueConfig::default()).unwrap());
    assert_eq!(ctrl.dma_alloc(4096).unwrap().iova(), probe_iova);
}
