//! The real driver (nvme-vfio's `Controller` and `QueuePair`) over the
//! software controller, for the tests that play a misbehaving device or
//! an application's timing against it.

use std::time::{Duration, Instant};

use nvme_sim::{Config, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, Done, QueuePair};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};

/// The driver over `config`'s controller (two I/O queues, 4 KiB pages),
/// with the simulated PCI function (bus mastering, function level reset)
/// if `function`.
pub fn open(config: Config, io_timeout: Duration, function: bool) -> (SimController, Controller) {
    let sim = SimController::new(config).unwrap();
    let (space, driver) = space_and_config(&sim, io_timeout);
    let f = function.then(|| sim.pci_function());
    // SAFETY: the registers, the IOMMU under the DMA space and the PCI
    // function all belong to `sim`, which nothing else drives.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, f) }.unwrap();
    (sim, ctrl)
}

/// A DMA space over `sim`'s IOMMU, and the driver settings of these tests
/// (two I/O queues, no hugepages).
fn space_and_config(
    sim: &SimController,
    io_timeout: Duration,
) -> (std::sync::Arc<DmaSpace>, DriverConfig) {
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 2,
        io_timeout,
        ..DriverConfig::default()
    };
    (space, driver)
}

/// The driver over the model in interrupt mode (the model's eventfd
/// vectors), two I/O queues.
pub fn open_with_interrupts(io_timeout: Duration) -> (SimController, Controller) {
    let sim = SimController::new(Config::default()).unwrap();
    let (space, driver) = space_and_config(&sim, io_timeout);
    let irqs = sim.interrupts(3).unwrap();
    // SAFETY: the registers, the IOMMU under the DMA space, the PCI
    // function and the interrupt vectors all belong to `sim`.
    let ctrl = unsafe {
        Controller::with_interrupts(
            sim.registers(),
            space,
            driver,
            Some(sim.pci_function()),
            Box::new(irqs),
        )
    }
    .unwrap();
    (sim, ctrl)
}

/// Polls until `n` requests have completed (at most 30 s).
pub fn wait_all(qp: &mut QueuePair, n: usize) -> Vec<Done> {
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

/// Polls for `d`, a millisecond apart, and returns what completed.
pub fn poll_for(qp: &mut QueuePair, d: Duration) -> Vec<Done> {
    let mut done = Vec::new();
    let start = Instant::now();
    while start.elapsed() < d {
        qp.poll(&mut done);
        std::thread::sleep(Duration::from_millis(1));
    }
    done
}

/// Polls (a fraction of a millisecond apart) until `n` requests have
/// completed; fails the test if that takes longer than `within`.
pub fn poll_within(qp: &mut QueuePair, n: usize, within: Duration) -> Vec<Done> {
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < n {
        qp.poll(&mut done);
        assert!(start.elapsed() < within, "not completed within {within:?}");
        std::thread::sleep(Duration::from_micros(200));
    }
    done
}
