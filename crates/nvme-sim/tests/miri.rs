//! The real driver over the software controller, small enough to run under
//! Miri (scripts/miri.sh): bring-up (reset, admin queue, Identify, queue
//! creation), then writes and reads through an I/O queue pair, on the
//! driver's thread and the controller's worker thread at once. Miri checks
//! the two sides' shared memory (queue rings, data buffers, PRP lists)
//! against the Rust memory model.

use std::time::Duration;

use nvme_sim::{Config, NamespaceConfig, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};

fn bring_up(shadow: bool) -> (SimController, Controller) {
    let config = Config::default()
        .namespaces(&[NamespaceConfig::new(64, 512)])
        .ready_delay(Duration::ZERO)
        .shutdown_delay(Duration::ZERO);
    let sim = SimController::new(config).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 1,
        shadow_doorbells: shadow,
        ..DriverConfig::default()
    };
    // SAFETY: `space` maps through the model's own IOMMU, the one its device
    // side reaches memory through, and nothing else drives the model.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, None) }.unwrap();
    (sim, ctrl)
}

/// `len` bytes of user memory starting 512 bytes into a page, so that a
/// 4 KiB transfer spans two pages (PRP1 and PRP2) and 8 KiB three (a PRP
/// list), and dword aligned as the driver requires.
fn user_buffer(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    *storage = vec![0u8; len + 4096];
    let off = (4096 + 512 - storage.as_ptr().addr() % 4096) % 4096;
    &mut storage[off..off + len]
}

/// Writes 8 blocks and 16 blocks from user memory, with PRPs and then
/// SGLs, checks what the namespace holds and reads them back.
fn write_and_read_back(shadow: bool) {
    let (sim, ctrl) = bring_up(shadow);
    assert_eq!(ctrl.identify().model(), "nvme-sim");
    assert_eq!(ctrl.shadow_doorbells(), shadow);
    let ns = ctrl.namespace(1).unwrap();
    let (mut out, mut back) = (Vec::new(), Vec::new());
    for sgl in [false, true] {
        let qc = QueueConfig {
            depth: 4,
            desc_pages: 2,
            sgl,
            sgl_threshold: 1,
        };
        let mut qp = ctrl.queue_pair(qc).unwrap();
        for (lba, blocks) in [(0u64, 8usize), (8, 16)] {
            let data = user_buffer(&mut out, blocks * 512);
            for (i, b) in data.iter_mut().enumerate() {
                *b = (i * 7 + lba as usize + sgl as usize) as u8;
            }
            qp.write(&ns, lba, data, false).unwrap();
            let mut stored = vec![0u8; data.len()];
            sim.read_blocks(1, lba, &mut stored).unwrap();
            assert!(stored == data, "the namespace holds what was written");
            let got = user_buffer(&mut back, data.len());
            qp.read(&ns, lba, got).unwrap();
            assert!(got == data, "read back what was written");
        }
    }
}

#[test]
fn the_driver_writes_and_reads_back_through_the_simulator() {
    write_and_read_back(false);
}

/// The same with shadow doorbells: the driver publishes tails and heads in
/// the shadow page with release stores and reads EventIdx atomically; the
/// controller's worker does the mirror image.
#[test]
fn the_same_with_shadow_doorbells() {
    write_and_read_back(true);
}
