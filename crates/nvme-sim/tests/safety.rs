//! The driver's safety boundary against the software controller: a
//! caller never gets a buffer back while the device may still write it,
//! and a completion completes only the request it belongs to.

mod common;
use common::driver::{open, poll_for, wait_all};
use std::time::{Duration, Instant};

use nvme_sim::{Config, CqeCorruption, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Controller, Io, IoBuf, Op, QueueConfig, QueuePair};
use nvme_vfio::Error;

fn bring_up(config: Config) -> (SimController, Controller) {
    open(config, Duration::from_secs(5), false)
}

/// A queue pair with one command slot: every request reuses its command
/// ID's index, so only the generation tells them apart.
fn one_slot(ctrl: &Controller) -> QueuePair {
    let qp = ctrl
        .queue_pair(QueueConfig {
            depth: 2,
            ..QueueConfig::default()
        })
        .unwrap();
    assert_eq!(qp.depth(), 1);
    qp
}

/// The buffer of a completion, as bytes.
fn bytes(buf: &IoBuf) -> &[u8] {
    buf.as_slice()
}

/// I/O works after recovery: a write and a read back.
fn io_works(ctrl: &Controller, qp: &mut QueuePair) {
    let ns = ctrl.namespace(1).unwrap();
    let data = pattern(77, 4096);
    qp.write(&ns, 500, &data, false).unwrap();
    let mut back = vec![0u8; 4096];
    qp.read(&ns, 500, &mut back).unwrap();
    assert_eq!(back, data);
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(131).wrapping_add(seed * 17) >> 2) as u8)
        .collect()
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
        // Written two commands, then found no list page for the third:
        // more pages than the queue pair has, so never (TooLarge).
        assert!(
            matches!(e, Error::TooLarge { .. }),
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

/// A duplicate completion that arrives after the command ID's slot was
/// reused neither completes the request now in the slot (its generation
/// differs) nor reaches the earlier request's memory, which was mapped for
/// that I/O only: the device's second transfer is refused by the IOMMU.
/// The driver counts a device error, resets the controller, and the
/// request in flight fails (after the device was stopped) and is retried.
#[test]
fn a_duplicate_completion_after_the_slot_is_reused_completes_nothing() {
    let (sim, ctrl) = open(Config::default(), Duration::from_secs(5), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = one_slot(&ctrl);
    let data = pattern(1, 4096);
    sim.write_blocks(1, 16, &data).unwrap();
    let after = Duration::from_millis(300);
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Duplicate {
            after,
            redo_data: true,
        },
    ));
    let start = Instant::now();
    qp.submit(Io::read(&ns, 16, vec![0u8; 4096]).tag(1))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut done = wait_all(&mut qp, 1);
    let first = done.pop().unwrap();
    assert!(first.result.is_ok());
    assert_eq!(bytes(&first.buf), &data[..]);
    // The caller owns the buffer again and fills it.
    let IoBuf::Vec(mut mine) = first.buf else {
        panic!("a Vec comes back")
    };
    mine.fill(0xee);
    // The next request takes the same slot and waits inside the device
    // until well after the duplicate.
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_secs(2)),
    ));
    let faults = sim.iommu().fault_count();
    qp.submit(Io::read(&ns, 16, vec![0u8; 4096]).tag(2))
        .map_err(|(e, _)| e)
        .unwrap();
    let done = poll_for(
        &mut qp,
        after + Duration::from_millis(400) - start.elapsed().min(after),
    );
    assert_eq!(qp.device_errors(), 1, "the duplicate is a device error");
    assert!(
        sim.iommu().fault_count() > faults,
        "the duplicate's transfer into the unmapped buffer is refused"
    );
    assert!(
        mine.iter().all(|&b| b == 0xee),
        "the returned buffer is untouched"
    );
    assert_eq!(done.len(), 1, "the reset fails the request in flight");
    assert_eq!(done[0].tag, 2);
    assert!(
        matches!(done[0].result, Err(Error::Reset)),
        "{:?}",
        done[0].result
    );
    assert!(
        sim.stats().function_resets >= 1,
        "the reset reset the function"
    );
    io_works(&ctrl, &mut qp);
}

/// A command the controller kept across CC.EN = 0 and that would run after
/// the controller is enabled again is dropped by the function level reset
/// every reset does: the buffer that came back with the failed request
/// stays the caller's.
#[test]
fn a_command_that_survives_a_controller_reset_is_stopped_by_the_function_reset() {
    let (sim, ctrl) = open(Config::default(), Duration::from_millis(300), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.write_blocks(1, 40, &pattern(2, 4096)).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::SurviveReset {
            after: Duration::from_millis(50),
        },
    ));
    let buf = ctrl.dma_alloc(4096).unwrap();
    qp.submit(Io::read(&ns, 40, buf))
        .map_err(|(e, _)| e)
        .unwrap();
    // Not completed and not abortable: the timeout resets the controller.
    let mut done = wait_all(&mut qp, 1);
    let d = done.pop().unwrap();
    assert!(
        matches!(d.result, Err(Error::Timeout { .. })),
        "{:?}",
        d.result
    );
    let IoBuf::Dma(mut mine) = d.buf else {
        panic!("the DMA buffer comes back")
    };
    mine.as_mut_slice().fill(0xee);
    let late = poll_for(&mut qp, Duration::from_millis(400));
    assert!(late.is_empty());
    assert!(
        mine.as_slice().iter().all(|&b| b == 0xee),
        "the surviving command did not write the returned buffer"
    );
    assert_eq!(qp.device_errors(), 0);
    io_works(&ctrl, &mut qp);
}

/// Completions with an altered command ID, SQ ID or SQ head complete
/// nothing: each is a device error, the controller is reset, and the
/// request fails with `Reset` only after the device was stopped.
#[test]
fn altered_completion_fields_are_device_errors() {
    for corruption in [
        CqeCorruption::CidXor(0x8000),
        CqeCorruption::Cid(100),
        CqeCorruption::SqId(2),
        CqeCorruption::SqHeadPastTail(3),
    ] {
        let (sim, ctrl) = open(Config::default(), Duration::from_secs(5), true);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        // Another request in flight, held inside the device: it must not
        // complete early either.
        sim.inject(FaultRule::next(
            Match::io(),
            FaultAction::Delay(Duration::from_millis(600)),
        ));
        qp.submit(Io::read(&ns, 0, vec![0u8; 512]).tag(1))
            .map_err(|(e, _)| e)
            .unwrap();
        qp.flush();
        sim.inject(FaultRule::next(
            Match::io(),
            FaultAction::Corrupt(corruption),
        ));
        qp.submit(Io::read(&ns, 8, vec![0u8; 512]).tag(2))
            .map_err(|(e, _)| e)
            .unwrap();
        let done = wait_all(&mut qp, 2);
        assert_eq!(qp.device_errors(), 1, "{corruption:?}");
        for d in &done {
            assert!(
                matches!(d.result, Err(Error::Reset)),
                "{corruption:?}: request {} ended with {:?}",
                d.tag,
                d.result
            );
        }
        io_works(&ctrl, &mut qp);
    }
}

/// An entry written with the wrong phase tag is not seen at all: the
/// request times out, the controller is reset, and it fails with Timeout.
#[test]
fn a_completion_with_the_wrong_phase_is_never_taken() {
    let (sim, ctrl) = open(Config::default(), Duration::from_millis(200), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Corrupt(CqeCorruption::InvertPhase),
    ));
    qp.submit(Io::read(&ns, 0, vec![0u8; 512]))
        .map_err(|(e, _)| e)
        .unwrap();
    let done = wait_all(&mut qp, 1);
    assert!(
        matches!(done[0].result, Err(Error::Timeout { .. })),
        "{:?}",
        done[0].result
    );
    io_works(&ctrl, &mut qp);
}

/// A controller that ignores CC.EN = 0 is stopped by clearing bus
/// mastering and a function level reset before any buffer goes back; a
/// command it was delaying never writes the returned buffer, and the
/// controller works afterwards.
#[test]
fn a_controller_that_ignores_cc_en_0_is_stopped_by_bus_master_and_flr() {
    let (sim, ctrl) = open(
        Config::default().timeout_500ms(1),
        Duration::from_secs(5),
        true,
    );
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.write_blocks(1, 64, &pattern(4, 4096)).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(Duration::from_millis(1500)),
    ));
    qp.submit(Io::read(&ns, 64, ctrl.dma_alloc(4096).unwrap()))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    std::thread::sleep(Duration::from_millis(50));
    sim.set_ignore_disable(true);
    let resets = sim.stats().function_resets;
    ctrl.reset().unwrap();
    assert_eq!(sim.stats().function_resets, resets + 1);
    let mut done = wait_all(&mut qp, 1);
    let d = done.pop().unwrap();
    assert!(matches!(d.result, Err(Error::Reset)), "{:?}", d.result);
    let IoBuf::Dma(mut mine) = d.buf else {
        panic!("the DMA buffer comes back")
    };
    mine.as_mut_slice().fill(0xee);
    sim.set_ignore_disable(false);
    assert!(poll_for(&mut qp, Duration::from_millis(1800)).is_empty());
    assert!(mine.as_slice().iter().all(|&b| b == 0xee));
    io_works(&ctrl, &mut qp);
}

/// When nothing stops the controller (it ignores CC.EN = 0 and the driver
/// has no PCI function, or the function reset does not take), requests in
/// flight end with `Dead` and without their buffers, which stay
/// quarantined; every later call fails at once, and dropping everything
/// neither hangs nor frees what the device may reach.
#[test]
fn a_controller_that_cannot_be_stopped_is_dead_and_its_memory_quarantined() {
    for function in [false, true] {
        let (sim, ctrl) = open(
            Config::default().timeout_500ms(1),
            Duration::from_secs(5),
            function,
        );
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        sim.inject(FaultRule::next(
            Match::io(),
            FaultAction::Delay(Duration::from_millis(1500)),
        ));
        qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(4096).unwrap()).tag(9))
            .map_err(|(e, _)| e)
            .unwrap();
        qp.flush();
        std::thread::sleep(Duration::from_millis(50));
        sim.set_ignore_disable(true);
        sim.set_ignore_flr(true);
        let (_, in_use) = ctrl.space().slab_count();
        assert!(
            matches!(ctrl.reset(), Err(Error::Dead)),
            "function: {function}"
        );
        let start = Instant::now();
        let done = wait_all(&mut qp, 1);
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "fails at once"
        );
        assert_eq!(done[0].tag, 9);
        assert!(
            matches!(done[0].result, Err(Error::Dead)),
            "{:?}",
            done[0].result
        );
        assert!(
            matches!(done[0].buf, IoBuf::Raw),
            "the buffer is quarantined"
        );
        let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
        assert!(matches!(e, Error::Dead), "{e}");
        let mut b = vec![0u8; 512];
        assert!(matches!(qp.read(&ns, 0, &mut b), Err(Error::Dead)));
        assert!(matches!(ctrl.smart_log(), Err(Error::Dead)));
        assert!(matches!(
            ctrl.queue_pair(QueueConfig::default()),
            Err(Error::Dead)
        ));
        let start = Instant::now();
        drop(qp);
        let space = ctrl.space().clone();
        drop(ctrl);
        assert!(start.elapsed() < Duration::from_secs(1), "no hang");
        let (_, still) = space.slab_count();
        assert!(still >= in_use, "quarantined memory stays allocated");
    }
}

/// A completion posted before the device moved the data is a device bug
/// no driver can see; for memory mapped for the I/O only, the IOMMU
/// refuses the late transfer, so the returned buffer is not written.
#[test]
fn a_transfer_after_the_completion_is_refused_for_memory_mapped_per_io() {
    let (sim, ctrl) = bring_up(Config::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::CompleteBeforeData {
            delay: Duration::from_millis(200),
        },
    ));
    let faults = sim.iommu().fault_count();
    qp.submit(Io::read(&ns, 0, vec![0u8; 4096]))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut done = wait_all(&mut qp, 1);
    let IoBuf::Vec(mut mine) = done.pop().unwrap().buf else {
        panic!("a Vec comes back")
    };
    mine.fill(0xee);
    poll_for(&mut qp, Duration::from_millis(400));
    assert!(
        sim.iommu().fault_count() > faults,
        "the late transfer is refused"
    );
    assert!(mine.iter().all(|&b| b == 0xee));
}

/// A device write outside the command's buffer is refused by the IOMMU
/// when nothing is mapped there (memory mapped per I/O is mapped at page
/// granularity: the page past a page-sized buffer is not).
#[test]
fn a_write_outside_the_buffer_is_refused_for_memory_mapped_per_io() {
    let (sim, ctrl) = bring_up(Config::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::WriteOutside {
            offset: 2 * 4096,
            len: 16,
            byte: 0x5a,
        },
    ));
    let faults = sim.iommu().fault_count();
    let buf = vec![0u8; 4096];
    qp.submit(Io::read(&ns, 0, buf))
        .map_err(|(e, _)| e)
        .unwrap();
    let done = wait_all(&mut qp, 1);
    assert!(done[0].result.is_ok());
    assert_eq!(
        sim.iommu().fault_count(),
        faults + 1,
        "the stray write is refused"
    );
}
