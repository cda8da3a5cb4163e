//! Command IDs come back late: a stale duplicate completion of an earlier
//! command arriving while a new command is in flight in the same slot is a
//! device error, not that command's completion, whatever the queue depth
//! and however many commands are stuck in the device (IDs are handed out
//! from the whole 16-bit space, skipping those in flight).

mod common;
use common::driver::{open, poll_for};
use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Done, Io, IoBuf, QueueConfig, QueuePair};

fn wait_until(
    qp: &mut QueuePair,
    out: &mut Vec<Done>,
    d: Duration,
    mut f: impl FnMut(&[Done]) -> bool,
) {
    let start = Instant::now();
    while !f(out) {
        qp.poll(out);
        assert!(start.elapsed() < d, "timed out");
    }
}

/// Holds `n` commands inside the device (HoldBack until `release_held`).
fn hold(sim: &SimController, n: u64) {
    sim.inject(FaultRule {
        matching: Match::io(),
        skip: 0,
        times: Some(n),
        probability: None,
        action: FaultAction::HoldBack { after: u32::MAX },
    });
}

/// Runs the scenario on a queue pair of `entries` entries: all slots but
/// one held inside the device; request A completes and its duplicate is
/// posted `dup_after` later; `fillers` more one-command requests go through
/// the one free slot; then request B (same slot) is delayed 1.5 s inside
/// the device. Returns `None` if the duplicate was a device error (the
/// promise), or what happened to B.
fn stale_duplicate_scenario(entries: u16, fillers: u32, dup_after: Duration) -> Option<String> {
    let (sim, ctrl) = open(
        Config::default().max_queue_entries(65536).inline(false),
        Duration::from_secs(120),
        true,
    );
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl
        .queue_pair(QueueConfig {
            depth: entries,
            ..QueueConfig::default()
        })
        .unwrap();
    let held = qp.depth() as u64 - 1;
    hold(&sim, held);
    for i in 0..held {
        qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(512).unwrap()).tag(1_000_000 + i))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    qp.flush();
    let start = Instant::now();
    while sim.stats().commands < held {
        assert!(start.elapsed() < Duration::from_secs(30), "fetch");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(qp.inflight(), held as usize);

    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    sim.write_blocks(1, 64, &data).unwrap();

    // A: completes, and again `dup_after` later (stale duplicate).
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Duplicate {
            after: dup_after,
            redo_data: false,
        },
    ));
    let a_done = Instant::now();
    qp.submit(Io::read(&ns, 0, ctrl.dma_alloc(512).unwrap()).tag(1))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut out = Vec::new();
    wait_until(&mut qp, &mut out, Duration::from_secs(5), |o| !o.is_empty());
    assert_eq!(out[0].tag, 1);
    assert!(out[0].result.is_ok());
    // Fillers through the same slot.
    let mut buf = ctrl.dma_alloc(512).unwrap();
    for i in 0..fillers {
        qp.submit(Io::read(&ns, 0, buf).tag(10 + i as u64))
            .map_err(|(e, _)| e)
            .unwrap();
        let mut o = Vec::new();
        wait_until(&mut qp, &mut o, Duration::from_secs(5), |o| !o.is_empty());
        assert!(o[0].result.is_ok());
        let IoBuf::Dma(b) = o.pop().unwrap().buf else {
            panic!()
        };
        buf = b;
    }
    assert!(
        a_done.elapsed() < dup_after,
        "fillers took {:?}, longer than the duplicate's delay",
        a_done.elapsed()
    );

    // B: takes the same slot (the only free one); delayed 1.5 s inside the
    // device.
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Delay(dup_after + Duration::from_millis(1500)),
    ));
    let b_submitted = Instant::now();
    qp.submit(Io::read(&ns, 64, ctrl.dma_alloc(4096).unwrap()).tag(2))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut done = Vec::new();
    let mut b = None;
    while b_submitted.elapsed() < dup_after + Duration::from_millis(400) {
        qp.poll(&mut done);
        if let Some(i) = done.iter().position(|d| d.tag == 2) {
            b = Some(done.swap_remove(i));
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let when = b_submitted.elapsed();
    let errors = qp.device_errors();
    let Some(b) = b else {
        assert!(
            errors >= 1,
            "neither completed B nor counted a device error"
        );
        sim.release_held();
        let _ = poll_for(&mut qp, Duration::from_millis(300));
        return None;
    };
    let ok = b.result.is_ok();
    let IoBuf::Dma(mut mine) = b.buf else {
        panic!("DMA buffer back")
    };
    let had_data = mine.as_slice() == &data[..];
    mine.as_mut_slice().fill(0xee);
    // Let B's real command run (it is still in the device).
    let _ = poll_for(
        &mut qp,
        dup_after + Duration::from_millis(1600) - when.min(dup_after),
    );
    let overwritten = mine.as_slice().iter().any(|&x| x != 0xee);
    sim.release_held();
    let _ = poll_for(&mut qp, Duration::from_millis(300));
    if !ok && errors >= 1 && !overwritten {
        // Caught: a device error, the reset failed B after stopping the
        // device.
        return None;
    }
    Some(format!(
        "request B came back {:?} after submission with ok={ok}, its data present={had_data}, \
         device errors={errors}; the device wrote the returned buffer afterwards: {overwritten}",
        when
    ))
}

/// A deep queue (32769 slots), all but one held inside the device: the
/// one free slot is reused by the very next request, with another
/// command ID, so the duplicate of the previous one completes nothing.
#[test]
fn a_stale_duplicate_completes_nothing_in_a_deep_full_queue() {
    if let Some(bug) = stale_duplicate_scenario(32770, 0, Duration::from_millis(300)) {
        panic!("depth 32770: {bug}");
    }
}

/// Default depth (127 slots), 126 commands held: after 511 more requests
/// through the free slot, a duplicate of the first still completes
/// nothing (its ID is not back yet).
#[test]
fn a_stale_duplicate_after_hundreds_of_requests_completes_nothing() {
    if let Some(bug) = stale_duplicate_scenario(128, 511, Duration::from_millis(1500)) {
        panic!("depth 128, 511 requests between: {bug}");
    }
}

/// One slot: a duplicate after 32768 requests through it completes
/// nothing either (an ID comes back only after 65536).
#[test]
fn a_stale_duplicate_after_32768_requests_through_one_slot_completes_nothing() {
    if let Some(bug) = stale_duplicate_scenario(2, 32767, Duration::from_secs(5)) {
        panic!("depth 2, 32767 requests between: {bug}");
    }
}
