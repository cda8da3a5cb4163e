//! The real driver (nvme-vfio's `Controller`) over the software controller:
//! a smoke test that the two agree on the hardware boundary (registers,
//! queues, PRPs/SGLs, shadow doorbells, IOMMU programming).

use std::time::Duration;

use nvme_sim::{Config, FaultAction, FaultRule, Match, NamespaceConfig, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, Io, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::nvme::cmd::{io, Status};

fn bring_up(config: Config, shadow: bool) -> (SimController, Controller) {
    let sim = SimController::new(config).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 4,
        io_timeout: Duration::from_secs(5),
        shadow_doorbells: shadow,
        ..DriverConfig::default()
    };
    // SAFETY: `space` maps through the model's own IOMMU, the one its device side
    // reaches memory through, and nothing else drives the model.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, None) }.unwrap();
    (sim, ctrl)
}

#[test]
fn the_driver_reads_and_writes_through_the_simulator() {
    let config = Config::default().namespaces(&[
        NamespaceConfig::new(8192, 512),
        NamespaceConfig::new(2048, 4096),
    ]);
    for (shadow, sgl) in [(false, false), (true, true)] {
        let (sim, ctrl) = bring_up(config.clone(), shadow);
        assert_eq!(ctrl.identify().model(), "nvme-sim");
        assert_eq!(ctrl.io_queues(), 4);
        assert_eq!(ctrl.shadow_doorbells(), shadow);
        assert_eq!(ctrl.active_namespaces().unwrap(), [1, 2]);
        let qc = QueueConfig {
            sgl,
            ..QueueConfig::default()
        };
        let mut qp = ctrl.queue_pair(qc).unwrap();
        for nsid in [1, 2] {
            let ns = ctrl.namespace(nsid).unwrap();
            // Unregistered user memory: mapped through the software IOMMU
            // for the command and unmapped after.
            let data: Vec<u8> = (0..64 << 10)
                .map(|i| (i * 7 + nsid as usize) as u8)
                .collect();
            qp.write(&ns, 3, &data, false).unwrap();
            let mut stored = vec![0u8; data.len()];
            sim.read_blocks(nsid, 3, &mut stored).unwrap();
            assert!(stored == data, "namespace {nsid} holds what was written");
            let mut back = vec![0u8; data.len()];
            qp.read(&ns, 3, &mut back).unwrap();
            assert!(back == data);
            // Data put there by the test is what the driver reads.
            sim.write_blocks(nsid, 0, &vec![0x5a; ns.block_size() as usize])
                .unwrap();
            let mut one = vec![0u8; ns.block_size() as usize];
            qp.read(&ns, 0, &mut one).unwrap();
            assert!(one.iter().all(|&b| b == 0x5a));
        }
        let ns = ctrl.namespace(1).unwrap();
        qp.write_zeroes(&ns, 3, 8).unwrap();
        qp.deallocate(&ns, &[(11, 8)]).unwrap();
        qp.flush_cache(&ns).unwrap();
        let mut z = vec![1u8; 16 * 512];
        sim.read_blocks(1, 3, &mut z).unwrap();
        assert!(z.iter().all(|&b| b == 0));
        let smart = ctrl.smart_log().unwrap();
        assert_eq!(smart.host_write_commands, 2);
        assert!(ctrl.write_cache().unwrap());
        drop(qp);
        // Only the driver's slabs remain mapped: every per-command mapping
        // of user memory was undone.
        let live = sim.iommu().mappings().len();
        assert!(live <= 4, "{live} mappings left");
    }
}

#[test]
fn the_driver_sees_injected_errors_and_recovers_from_a_fatal_controller() {
    let (sim, ctrl) = bring_up(Config::default(), true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let media = Status::new(2, 0x81, true);
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Status(media),
    ));
    let mut buf = vec![0u8; 4096];
    let err = qp.read(&ns, 0, &mut buf).unwrap_err();
    assert!(
        matches!(err, nvme_vfio::Error::Command { status, .. } if status == media),
        "{err}"
    );
    qp.read(&ns, 0, &mut buf).unwrap();
    let log = ctrl.error_log(1).unwrap();
    assert_eq!(log.first().map(|e| e.status >> 1), Some(media.0));
    // A fatal controller: the driver's reset brings it back.
    sim.raise_fatal();
    assert!(qp.read(&ns, 0, &mut buf).is_err());
    ctrl.reset().unwrap();
    drop(qp);
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    qp.read(&ns, 0, &mut buf).unwrap();
}

#[test]
fn queue_pairs_on_several_threads_run_concurrently() {
    let (sim, ctrl) = bring_up(Config::default(), true);
    let ns = ctrl.namespace(1).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (ctrl, ns) = (&ctrl, &ns);
            s.spawn(move || {
                let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
                for i in 0..50u64 {
                    let lba = t * 1000 + i * 8;
                    let data = vec![(t * 50 + i) as u8; 4096];
                    qp.write(ns, lba, &data, i % 2 == 0).unwrap();
                    let mut back = vec![0u8; 4096];
                    qp.read(ns, lba, &mut back).unwrap();
                    assert!(back == data, "thread {t}, write {i}");
                }
            });
        }
    });
    let mut b = vec![0u8; 4096];
    sim.read_blocks(1, 3000 + 49 * 8, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 3 * 50 + 49));
    assert_eq!(sim.stats().write_commands, 200);
}

#[test]
fn inline_mode_completes_commands_during_the_doorbell_write() {
    let config = Config::default().inline(true);
    let (sim, ctrl) = bring_up(config, true);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut done = Vec::new();
    for round in 0..50u64 {
        let mut buf = ctrl.dma_alloc(4096).unwrap();
        buf.as_mut_slice().fill(round as u8);
        qp.submit(Io::write(&ns, round * 8, buf).tag(round))
            .map_err(|(e, _)| e)
            .unwrap();
        qp.submit(Io::read(&ns, round * 8, ctrl.dma_alloc(4096).unwrap()).tag(1000 + round))
            .map_err(|(e, _)| e)
            .unwrap();
        // The doorbell write ran the device: the first poll after it finds
        // both completions, with no other thread involved.
        qp.flush();
        done.clear();
        assert_eq!(qp.poll(&mut done), 2, "round {round}");
        for d in done.drain(..) {
            let (buf, r) = d.into_parts();
            r.unwrap();
            assert!(buf.as_slice().iter().all(|&b| b == round as u8));
        }
    }
    assert_eq!(sim.stats().write_commands, 50);
    assert_eq!(sim.stats().read_commands, 50);
}
