//! IOVA reuse: per-I/O mappings and new DMA slabs both take IOVA space
//! next fit, so a slab does not land on IOVAs a per-I/O mapping just gave
//! back, and a late transfer through a stale IOVA faults instead of
//! landing in pool memory.

mod common;
use common::driver::wait_all;
use std::time::Duration;

use nvme_sim::{Config, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Controller, Io, QueueConfig};

fn open(config: Config) -> (SimController, Controller) {
    common::driver::open(config, Duration::from_secs(30), true)
}

#[test]
fn a_new_slab_does_not_land_on_a_stale_per_io_iova() {
    let (sim, ctrl) = open(Config::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
    sim.write_blocks(1, 0, &data).unwrap();
    // Move the next-fit cursor past the first slab with ordinary I/O
    // (2 MiB of per-I/O mappings, each unmapped at completion).
    for _ in 0..40 {
        let mut b = vec![0u8; 65536];
        qp.read(&ns, 0, &mut b).unwrap();
    }
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::CompleteBeforeData {
            delay: Duration::from_millis(300),
        },
    ));
    let faults = sim.iommu().fault_count();
    let before: Vec<_> = sim.iommu().mappings();
    // A 64 KiB read into ordinary memory: mapped for this I/O only.
    qp.submit(Io::read(&ns, 0, vec![0u8; 65536]))
        .map_err(|(e, _)| e)
        .unwrap();
    qp.flush();
    let d = wait_all(&mut qp, 1).pop().unwrap();
    assert!(d.result.is_ok());
    let per_io: Vec<_> = sim
        .iommu()
        .mappings()
        .into_iter()
        .filter(|m| !before.iter().any(|b| b.iova == m.iova))
        .collect();
    assert!(per_io.is_empty(), "unmapped at completion");
    // The pool needs a new slab now (bigger than what is left).
    let mut big = ctrl.dma_alloc(3 << 20).unwrap();
    big.as_mut_slice().fill(0xee);
    let new_slab: Vec<_> = sim
        .iommu()
        .mappings()
        .into_iter()
        .filter(|m| !before.iter().any(|b| b.iova == m.iova))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let mut out = Vec::new();
    qp.poll(&mut out);
    let changed = big.as_slice().iter().filter(|&&b| b != 0xee).count();
    let refused = sim.iommu().fault_count() - faults;
    eprintln!(
        "new slab mappings {new_slab:?}; big buffer at {}",
        big.iova()
    );
    assert!(
        changed == 0,
        "the late transfer through the stale per-I/O IOVA wrote {changed} bytes of a \
         DmaBuf in a new slab (IOMMU faults: {refused}); new mappings {new_slab:?}"
    );
    assert!(refused > 0, "the late transfer is refused");
}
