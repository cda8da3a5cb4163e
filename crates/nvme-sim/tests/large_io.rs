//! Requests of any size on a controller with a small maximum transfer:
//! the blocking calls run what does not fit in the queue pair at once in
//! waves, in order; the asynchronous `submit` refuses a request that can
//! never fit with `TooLarge` (and the largest size it takes), and says
//! `QueueFull` only when waiting for completions helps.

mod common;

use std::time::Duration;

use common::driver::{open, wait_all};
use nvme_sim::{Config, FaultAction, FaultRule, Match, NamespaceConfig};
use nvme_vfio::ctrl::{Io, QueueConfig};
use nvme_vfio::nvme::cmd::{io, Status};
use nvme_vfio::Error;

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 7) as u8)
        .collect()
}

/// MDTS 1: 8 KiB per command. 1 MiB and 64 MiB through the blocking calls
/// (plain, vectored, and into DMA memory), on the default queue depth and
/// on a 2-entry queue (one command at a time), with the data checked.
#[test]
fn any_length_on_an_mdts_1_controller() {
    let config = Config::default()
        .mdts(1)
        .namespaces(&[NamespaceConfig::new((80 << 20) / 512, 512)]);
    let (sim, ctrl) = open(config, Duration::from_secs(10), true);
    assert_eq!(ctrl.max_transfer(), 8192);
    let ns = ctrl.namespace(1).unwrap();
    for depth in [128u16, 2] {
        let mut qp = ctrl
            .queue_pair(QueueConfig {
                depth,
                ..QueueConfig::default()
            })
            .unwrap();
        let sizes: &[usize] = if depth == 2 {
            &[1 << 20]
        } else {
            &[1 << 20, 64 << 20]
        };
        for &len in sizes {
            let data = pattern(len as u64 + depth as u64, len);
            qp.write(&ns, 8, &data, false).unwrap();
            let mut stored = vec![0u8; len];
            sim.read_blocks(1, 8, &mut stored).unwrap();
            assert!(stored == data, "depth {depth}, {len} bytes written");
            let mut back = vec![0u8; len];
            qp.read(&ns, 8, &mut back).unwrap();
            assert!(back == data, "depth {depth}, {len} bytes read");
        }
        // Vectored, with uneven pieces, and into DMA memory.
        let data = pattern(7, 1 << 20);
        let (a, b) = data.split_at(3 * 4096 + 512);
        qp.write_vectored(&ns, 100, &[a, b], false).unwrap();
        let mut dma = ctrl.dma_alloc(1 << 20).unwrap();
        qp.read(&ns, 100, dma.as_mut_slice()).unwrap();
        assert!(dma.as_slice() == &data[..], "depth {depth}, vectored");
    }
}

/// A wave that fails ends the call with the LBA range of that wave.
#[test]
fn a_failed_wave_names_its_lba_range() {
    let config = Config::default().mdts(1);
    let (sim, ctrl) = open(config, Duration::from_secs(10), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl
        .queue_pair(QueueConfig {
            depth: 5,
            ..QueueConfig::default()
        })
        .unwrap();
    // Waves of 4 commands of 8 KiB (16 blocks each): the 10th read is in
    // the third wave, which starts at block 1000 + 128.
    sim.inject(FaultRule::nth(
        Match::io().opcode(io::READ),
        10,
        FaultAction::Status(Status::new(2, 0x81, true)),
    ));
    let mut b = vec![0u8; 256 << 10];
    match qp.read(&ns, 1000, &mut b) {
        Err(Error::At {
            lba,
            blocks,
            source,
        }) => {
            assert_eq!((lba, blocks), (1000 + 128, 64));
            assert!(matches!(*source, Error::Command { .. }), "{source}");
        }
        r => panic!("{r:?}"),
    }
    qp.read(&ns, 1000, &mut b).unwrap();
}

/// `submit` of a request that can never fit the queue pair is `TooLarge`
/// with the largest length it takes, which then works; `QueueFull` means
/// waiting helps.
#[test]
fn submit_says_too_large_or_queue_full() {
    let (_sim, ctrl) = open(Config::default().mdts(1), Duration::from_secs(10), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let (e, io) = qp.submit(Io::read(&ns, 0, vec![0u8; 2 << 20])).unwrap_err();
    let Error::TooLarge { len, max } = e else {
        panic!("{e}")
    };
    // 127 command slots, 64 descriptor pages (one per command at most).
    assert_eq!((len, max), (2 << 20, 64 * 8192));
    assert_eq!(io.into_buf().len(), 2 << 20, "the buffer comes back");
    qp.submit(Io::read(&ns, 0, vec![0u8; max as usize]).tag(1))
        .map_err(|(e, _)| e)
        .unwrap();
    let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 16384])).unwrap_err();
    assert!(matches!(e, Error::QueueFull { .. }), "{e}");
    let done = wait_all(&mut qp, 1);
    assert!(done[0].result.is_ok());
    qp.submit(Io::read(&ns, 0, vec![0u8; 16384]))
        .map_err(|(e, _)| e)
        .unwrap();
    assert!(wait_all(&mut qp, 1)[0].result.is_ok());
}
