//! The driver's safety boundary against the software controller: a
//! caller never gets a buffer back while the device may still write it,
//! and a completion completes only the request it belongs to.

use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, Done, Io, Op, QueueConfig, QueuePair};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::Error;

fn bring_up(config: Config) -> (SimController, Controller) {
    let sim = SimController::new(config).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 2,
        io_timeout: Duration::from_secs(5),
        ..DriverConfig::default()
    };
    let ctrl = Controller::with_backend(sim.registers(), space, driver, None).unwrap();
    (sim, ctrl)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(131).wrapping_add(seed * 17) >> 2) as u8)
        .collect()
}

fn wait_all(qp: &mut QueuePair, n: usize) -> Vec<Done> {
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < n {
        qp.poll(&mut done);
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "completions did not arrive"
        );
    }
    done
}

/// A request that fails while its commands are being written takes them
/// back from the submission ring exactly, at every position of a ring of
/// 65535 entries (the index arithmetic overflowed 16 bits there): the
/// device then runs only the commands submitted after it.
#[test]
fn a_65535_entry_queue_takes_back_a_failed_request_exactly() {
    // 16 KiB per command; 48 KiB is three commands, each with a PRP list
    // page, and the queue pair has two pages: the third command fails.
    let (sim, ctrl) = bring_up(
        Config::default()
            .max_queue_entries(65536)
            .mdts(2)
            .inline(true),
    );
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl
        .queue_pair(QueueConfig {
            depth: 65535,
            desc_pages: 2,
            sgl: false,
            ..QueueConfig::default()
        })
        .unwrap();
    assert_eq!(qp.depth(), 65534);
    let data = pattern(3, 4096);
    sim.write_blocks(1, 100, &data).unwrap();
    let mut position = 0u64;
    // The tail at the start, in the middle, and on each of the last slots
    // before and after the wrap.
    for target in [0u64, 30000, 65531, 65532, 65533, 65534, 65535 + 2] {
        // Move the tail to `target` with one-command reads, many at a time.
        while position < target {
            let n = (target - position).min(4096);
            for _ in 0..n {
                qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(512).unwrap()).with_len(512))
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
            let done = wait_all(&mut qp, n as usize);
            assert!(done.iter().all(|d| d.result.is_ok()));
            position += n;
        }
        let before = sim.stats().io_commands;
        let big = ctrl.dma_alloc(48 << 10).unwrap();
        let (e, _) = qp.submit(Io::read(&ns, 0, big)).unwrap_err();
        assert!(
            matches!(e, Error::Dptr(_)),
            "at tail {target}: the third command has no PRP list page: {e}"
        );
        let mut buf = vec![0u8; 4096];
        qp.read(&ns, 100, &mut buf).unwrap();
        assert_eq!(buf, data, "at tail {target}");
        assert_eq!(
            sim.stats().io_commands,
            before + 1,
            "at tail {target}: the device ran exactly the one read submitted after the failure"
        );
        position += 1;
    }
}

/// The blocking calls do not identify their request by a tag: a raw
/// request with any tag (u64::MAX included) that completes first does not
/// end a blocking read whose own command is still in flight.
#[test]
fn a_raw_request_never_completes_a_blocking_call() {
    let (sim, ctrl) = bring_up(Config::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let data = pattern(5, 4096);
    sim.write_blocks(1, 8, &data).unwrap();
    // The second I/O command from now (the blocking read) is delayed.
    let delay = Duration::from_millis(300);
    sim.inject(FaultRule::nth(Match::io(), 2, FaultAction::Delay(delay)));
    let raw = vec![0u8; 4096];
    let seg = blk_dma::HostSeg::from_slice(&raw);
    // SAFETY: `raw` is kept, untouched, until its completion is polled.
    unsafe { qp.submit_raw(Op::Read, &ns, 0, &[seg], u64::MAX) }.unwrap();
    qp.flush();
    // Let the raw read complete before the blocking read is submitted.
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    qp.read(&ns, 8, &mut buf).unwrap();
    assert!(
        start.elapsed() >= delay - Duration::from_millis(20),
        "the blocking read returned after {:?}, before its own completion",
        start.elapsed()
    );
    assert_eq!(buf, data);
    let done = wait_all(&mut qp, 1);
    assert_eq!(done[0].tag, u64::MAX);
    assert!(done[0].result.is_ok());
    drop(raw);
}
