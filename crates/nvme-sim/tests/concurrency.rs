//! Device errors, timeouts and resets on several threads at once.
//! Every request that comes back `Ok` must hold its own data; the
//! controller must work again once the device behaves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nvme_sim::{Config, CqeCorruption, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{
    Config as DriverConfig, Controller, Done, Io, IoBuf, Namespace, QueueConfig, QueuePair,
};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::Error;

fn open(config: Config, io_timeout: Duration, function: bool) -> (SimController, Arc<Controller>) {
    let sim = SimController::new(config).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 4,
        io_timeout,
        admin_timeout: Duration::from_millis(500),
        ..DriverConfig::default()
    };
    let f = function.then(|| sim.pci_function());
    // SAFETY: registers, IOMMU and function all belong to `sim`.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, f) }.unwrap();
    (sim, Arc::new(ctrl))
}

const BLOCKS: u64 = 256;

fn block(lba: u64) -> Vec<u8> {
    (0..512u64)
        .map(|i| (lba * 31 + i * 7 + (i >> 8)) as u8)
        .collect()
}

fn fill(sim: &SimController) {
    for lba in 0..BLOCKS {
        sim.write_blocks(1, lba, &block(lba)).unwrap();
    }
}

#[derive(Default, Debug)]
struct Tally {
    ok: AtomicU64,
    err: AtomicU64,
    wrong: AtomicU64,
}

/// Keeps up to 16 reads in flight on `qp` until `stop`; checks the data
/// of every successful one.
fn io_loop(
    ctrl: &Controller,
    qp: &mut QueuePair,
    ns: &Namespace,
    stop: &AtomicBool,
    tally: &Tally,
    seed: u64,
) {
    let mut out: Vec<Done> = Vec::new();
    let mut inflight = 0usize;
    let mut n = seed;
    let mut bufs: Vec<nvme_vfio::mem::DmaBuf> =
        (0..16).map(|_| ctrl.dma_alloc(512).unwrap()).collect();
    while !stop.load(Ordering::Relaxed) || inflight > 0 {
        while !stop.load(Ordering::Relaxed) && inflight < 16 {
            let Some(mut b) = bufs.pop() else { break };
            b.as_mut_slice().fill(0xee);
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let lba = (n >> 33) % BLOCKS;
            match qp.submit(Io::read(ns, lba, b).tag(lba)) {
                Ok(()) => inflight += 1,
                Err((_, io)) => {
                    let IoBuf::Dma(b) = io.into_buf() else {
                        unreachable!()
                    };
                    bufs.push(b);
                    break;
                }
            }
        }
        qp.poll(&mut out);
        for d in out.drain(..) {
            inflight -= 1;
            match (&d.result, d.buf) {
                (Ok(()), IoBuf::Dma(b)) => {
                    if b.as_slice() != &block(d.tag)[..] {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    bufs.push(b);
                }
                (Err(_), IoBuf::Dma(b)) => {
                    tally.err.fetch_add(1, Ordering::Relaxed);
                    bufs.push(b);
                }
                (r, other) => panic!("unexpected completion {r:?} {other:?}"),
            }
            if bufs.is_empty() {
                bufs.push(ctrl.dma_alloc(512).unwrap());
            }
        }
    }
}

/// After the faults stop, a read works within `within`.
fn works_again(qp: &mut QueuePair, ns: &Namespace, within: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < within {
        let mut b = vec![0u8; 512];
        match qp.read(ns, 5, &mut b) {
            Ok(()) if b == block(5) => return Ok(()),
            Ok(()) => return Err("wrong data".into()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("still failing after {within:?}: {last:?}"))
}

/// Thread A resets the controller in a loop; thread B does I/O with
/// device errors (altered command IDs) now and then. No wrong data, and
/// I/O works once both stop.
#[test]
fn reset_loop_with_device_errors() {
    let (sim, ctrl) = open(Config::default(), Duration::from_millis(300), true);
    fill(&sim);
    let ns = ctrl.namespace(1).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let qid = qp.qid();
    sim.inject(FaultRule::random(
        Match::io().sqid(qid),
        std::env::var("REVIEW_P")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.01),
        FaultAction::Corrupt(CqeCorruption::CidXor(0x4000)),
    ));
    let b = {
        let (ctrl, ns, stop, tally) = (ctrl.clone(), ns.clone(), stop.clone(), tally.clone());
        std::thread::spawn(move || {
            io_loop(&ctrl, &mut qp, &ns, &stop, &tally, 1);
            qp
        })
    };
    let resets = {
        let (ctrl, stop) = (ctrl.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut errs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = ctrl.reset() {
                    errs.push(e.to_string());
                }
                let us: u64 = std::env::var("REVIEW_RESET_SLEEP_US")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(5000);
                std::thread::sleep(Duration::from_micros(us));
            }
            errs
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let reset_errors = resets.join().unwrap();
    let mut qp = b.join().unwrap();
    sim.clear_faults();
    eprintln!(
        "tally {tally:?}, device errors {}, reset errors {reset_errors:?}",
        qp.device_errors()
    );
    assert_eq!(
        tally.wrong.load(Ordering::Relaxed),
        0,
        "a request came back Ok with wrong data"
    );
    let r = works_again(&mut qp, &ns, Duration::from_secs(3));
    assert!(
        r.is_ok(),
        "controller unusable after the faults stopped: {r:?}; reset errors {reset_errors:?}"
    );
}

/// Two queue pairs on two threads, each with device errors and commands
/// that need an abort or a reset, at the same time.
#[test]
fn two_queue_pairs_with_errors_and_timeouts_at_once() {
    for round in 0..3 {
        let (sim, ctrl) = open(Config::default(), Duration::from_millis(200), true);
        fill(&sim);
        let ns = ctrl.namespace(1).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut handles = Vec::new();
        let qps: Vec<QueuePair> = (0..2)
            .map(|_| ctrl.queue_pair(QueueConfig::default()).unwrap())
            .collect();
        for (t, mut qp) in qps.into_iter().enumerate() {
            let t = t as u64;
            let qid = qp.qid();
            sim.inject(FaultRule::random(
                Match::io().sqid(qid),
                0.005,
                FaultAction::Corrupt(CqeCorruption::CidXor(0x2000)),
            ));
            sim.inject(FaultRule::random(
                Match::io().sqid(qid),
                0.003,
                FaultAction::Drop,
            ));
            sim.inject(FaultRule::random(
                Match::io().sqid(qid),
                0.002,
                FaultAction::SurviveReset {
                    after: Duration::from_millis(5),
                },
            ));
            let (ctrl, ns, stop, tally) = (ctrl.clone(), ns.clone(), stop.clone(), tally.clone());
            handles.push(std::thread::spawn(move || {
                io_loop(&ctrl, &mut qp, &ns, &stop, &tally, 7 + t + round);
                qp
            }));
        }
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
        let mut qps: Vec<QueuePair> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        sim.clear_faults();
        let errs: Vec<u64> = qps.iter().map(|q| q.device_errors()).collect();
        eprintln!("round {round}: tally {tally:?}, device errors {errs:?}");
        assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "wrong data with Ok");
        for qp in &mut qps {
            let r = works_again(qp, &ns, Duration::from_secs(3));
            assert!(
                r.is_ok(),
                " (round {round}): queue {} unusable after the faults stopped: {r:?}",
                qp.qid()
            );
        }
    }
}

/// `Controller::reset` from two threads at once while a third does I/O.
#[test]
fn concurrent_resets_with_io_in_flight() {
    let (sim, ctrl) = open(Config::default(), Duration::from_millis(300), true);
    fill(&sim);
    let ns = ctrl.namespace(1).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::random(
        Match::io(),
        0.05,
        FaultAction::Corrupt(CqeCorruption::CidXor(0x4000)),
    ));
    let b = {
        let (ctrl, ns, stop, tally) = (ctrl.clone(), ns.clone(), stop.clone(), tally.clone());
        std::thread::spawn(move || {
            io_loop(&ctrl, &mut qp, &ns, &stop, &tally, 3);
            qp
        })
    };
    let mut resetters = Vec::new();
    for _ in 0..2 {
        let (ctrl, stop) = (ctrl.clone(), stop.clone());
        resetters.push(std::thread::spawn(move || {
            let mut errs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = ctrl.reset() {
                    errs.push(e.to_string());
                }
            }
            errs
        }));
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let errs: Vec<Vec<String>> = resetters.into_iter().map(|h| h.join().unwrap()).collect();
    let mut qp = b.join().unwrap();
    sim.clear_faults();
    eprintln!(
        "tally {tally:?}, reset errors {errs:?}, device errors {}",
        qp.device_errors()
    );
    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "wrong data with Ok");
    let r = works_again(&mut qp, &ns, Duration::from_secs(3));
    assert!(
        r.is_ok(),
        "unusable after concurrent resets: {r:?}; errors {errs:?}"
    );
    let _ = Error::Reset;
}
