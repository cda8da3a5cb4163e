//! Split requests with some children misbehaving; out-of-order
//! completions with command ID reuse.

mod common;
use common::driver::wait_all;
use std::time::{Duration, Instant};

use nvme_sim::{Config, CqeCorruption, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, Io, IoBuf, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::Error;

fn open(config: Config, function: bool) -> (SimController, Controller) {
    let sim = SimController::new(config).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 2,
        io_timeout: Duration::from_millis(500),
        ..DriverConfig::default()
    };
    let f = function.then(|| sim.pci_function());
    // SAFETY: registers, IOMMU and function all belong to `sim`.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, f) }.unwrap();
    (sim, ctrl)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 37 / 5) as u8).collect()
}

/// 64 KiB over MDTS 8 KiB: 8 children. One child's completion is
/// corrupted in each way (including a command ID naming a sibling still
/// to run): the request never comes back Ok, and comes back only after
/// the reset stopped the device; its DMA buffer is not written afterwards.
#[test]
fn split_request_with_one_corrupted_child() {
    for (k, corruption) in [
        CqeCorruption::CidXor(0x4000),
        CqeCorruption::Cid(5),
        CqeCorruption::Cid(6),
        CqeCorruption::SqId(9),
        CqeCorruption::SqHeadPastTail(2),
        CqeCorruption::InvertPhase,
    ]
    .into_iter()
    .enumerate()
    {
        for buf_kind in 0..2 {
            let (sim, ctrl) = open(Config::default().mdts(1), true);
            let ns = ctrl.namespace(1).unwrap();
            let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
            let data = pattern(64 << 10);
            sim.write_blocks(1, 0, &data).unwrap();
            // Later children slow, so a sibling named by the bad ID is
            // still inside the device.
            sim.inject(FaultRule::nth(
                Match::io(),
                3,
                FaultAction::Corrupt(corruption),
            ));
            sim.inject(FaultRule {
                matching: Match::io(),
                skip: 3,
                times: Some(5),
                probability: None,
                action: FaultAction::Delay(Duration::from_millis(200)),
            });
            let buf: IoBuf = if buf_kind == 0 {
                ctrl.dma_alloc(64 << 10).unwrap().into()
            } else {
                vec![0u8; 64 << 10].into()
            };
            qp.submit(Io::read(&ns, 0, buf).tag(1))
                .map_err(|(e, _)| e)
                .unwrap();
            let mut done = wait_all(&mut qp, 1);
            let d = done.pop().unwrap();
            assert!(
                d.result.is_err(),
                " ({k} {corruption:?}, buf {buf_kind}): a request with a corrupted child came back Ok"
            );
            let mut b = d.buf;
            b.as_mut_slice().fill(0xee);
            let late = {
                let mut v = Vec::new();
                let s = Instant::now();
                while s.elapsed() < Duration::from_millis(400) {
                    qp.poll(&mut v);
                }
                v
            };
            assert!(late.is_empty());
            assert!(
                b.as_slice().iter().all(|&x| x == 0xee),
                " ({corruption:?}, buf {buf_kind}): written after return ({:?})",
                d.result
            );
            eprintln!(
                "{corruption:?} buf {buf_kind}: {:?}, device errors {}",
                d.result,
                qp.device_errors()
            );
            let mut back = vec![0u8; 4096];
            qp.read(&ns, 0, &mut back).unwrap();
            assert_eq!(back, data[..4096]);
        }
    }
}

/// Out-of-order completions while command IDs are reused: a command held
/// back over many completions of its neighbours' reused slots, then a
/// duplicate of one of those; the held one keeps its slot and completes
/// into its own buffer.
#[test]
fn holdback_with_cid_reuse() {
    let (sim, ctrl) = open(Config::default(), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl
        .queue_pair(QueueConfig {
            depth: 4,
            ..QueueConfig::default()
        })
        .unwrap();
    for lba in 0..16u64 {
        sim.write_blocks(1, lba, &vec![lba as u8 + 1; 512]).unwrap();
    }
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::HoldBack { after: 40 },
    ));
    qp.submit(Io::read(&ns, 15, ctrl.dma_alloc(512).unwrap()).tag(15))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut oks = 0;
    for i in 0..60u64 {
        let lba = i % 8;
        qp.submit(Io::read(&ns, lba, ctrl.dma_alloc(512).unwrap()).tag(lba))
            .map_err(|(e, _)| e)
            .unwrap();
        let done = wait_all(&mut qp, 1);
        for d in done {
            if d.result.is_ok() {
                assert_eq!(
                    d.buf.as_slice(),
                    &vec![d.tag as u8 + 1; 512][..],
                    "wrong data for tag {}",
                    d.tag
                );
                oks += 1;
            }
            if d.tag == 15 {
                eprintln!("held one back after {i}: {:?}", d.result);
            }
        }
    }
    assert!(oks > 50);
    assert_eq!(qp.device_errors(), 0);
    let _ = Error::Reset;
}
