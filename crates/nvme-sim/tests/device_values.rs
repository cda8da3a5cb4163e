//! Values from the device (and from the safe API) that could overflow are
//! handled without a panic.

mod common;
use std::time::Duration;

use nvme_sim::{Config, SimController};
use nvme_vfio::ctrl::{Controller, QueueConfig};

fn open(config: Config) -> (SimController, Controller) {
    common::driver::open(config, Duration::from_secs(30), true)
}

/// Identify Controller MDTS is the device's byte: 64 and up must not
/// overflow the shift in `Controller::max_transfer` (nor panic in
/// `queue_pair`, after the I/O queues were created on the device).
#[test]
fn an_mdts_of_64_is_no_limit_and_no_panic() {
    let (_sim, ctrl) = open(Config::default().mdts(64));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctrl.max_transfer()));
    assert!(
        r.is_ok(),
        "Controller::max_transfer panicked on MDTS = 64 from the device"
    );
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ctrl.queue_pair(QueueConfig::default()).map(|_| ())
    }));
    assert!(r.is_ok(), "queue_pair panicked on MDTS = 64");
}

/// MDTS 52..=63 would shift every bit of `4096 << mdts` out: the limit
/// is the 1 MiB cap, never 0.
#[test]
fn an_mdts_of_52_is_no_limit() {
    let (_sim, ctrl) = open(Config::default().mdts(52));
    assert_ne!(ctrl.max_transfer(), 0, "max_transfer() is 0 for MDTS 52");
}

/// `QueuePair::wait` with a timeout too long to add to now.
#[test]
fn wait_takes_any_timeout() {
    let (_sim, ctrl) = open(Config::default());
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let ns = ctrl.namespace(1).unwrap();
    qp.submit(nvme_vfio::ctrl::Io::read(&ns, 0, vec![0u8; 512]))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut out = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        qp.wait(&mut out, Duration::MAX)
    }));
    assert!(r.is_ok(), "QueuePair::wait(Duration::MAX) panicked");
}

/// BAR 0 as a real device's mapping: accesses reach only its first
/// `size` bytes (nvme-sim's registers reach any offset).
struct SizedBar {
    inner: std::sync::Arc<dyn nvme_vfio::nvme::regs::Registers>,
    size: u64,
}

impl nvme_vfio::nvme::regs::Registers for SizedBar {
    fn read32(&self, offset: u64) -> u32 {
        assert!(self.reaches(offset, 4), "read of {offset:#x} past the BAR");
        self.inner.read32(offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        assert!(self.reaches(offset, 4), "write of {offset:#x} past the BAR");
        self.inner.write32(offset, value)
    }
    fn read64(&self, offset: u64) -> u64 {
        assert!(self.reaches(offset, 8), "read of {offset:#x} past the BAR");
        self.inner.read64(offset)
    }
    fn write64(&self, offset: u64, value: u64) {
        assert!(self.reaches(offset, 8), "write of {offset:#x} past the BAR");
        self.inner.write64(offset, value)
    }
    fn reaches(&self, offset: u64, width: u8) -> bool {
        offset
            .checked_add(u64::from(width))
            .is_some_and(|end| end <= self.size)
    }
}

fn open_sized(config: Config, size: u64, io_queues: u16) -> Result<Controller, nvme_vfio::Error> {
    let sim = SimController::new(config).unwrap();
    let space = nvme_vfio::mem::DmaSpace::new(
        sim.iommu().clone(),
        nvme_vfio::mem::SpaceConfig { hugepages: false },
    );
    let regs = std::sync::Arc::new(SizedBar {
        inner: sim.registers(),
        size,
    });
    let driver = nvme_vfio::ctrl::Config {
        space: nvme_vfio::mem::SpaceConfig { hugepages: false },
        io_queues,
        ..Default::default()
    };
    // SAFETY: the registers (behind the wrapper) and the IOMMU under the
    // DMA space belong to `sim`, which nothing else drives; `sim` is
    // leaked so that it outlives the controller.
    let ctrl = unsafe { Controller::with_backend(regs, space, driver, Some(sim.pci_function())) };
    std::mem::forget(sim);
    ctrl
}

/// The doorbell stride (CAP.DSTRD) is the device's: with a large one, the
/// doorbells of some queues lie past BAR 0. The driver never accesses
/// outside the BAR (the wrapper panics if it does): it uses only the
/// queues whose doorbells BAR 0 reaches, and refuses a controller whose
/// admin doorbells it does not reach.
#[test]
fn doorbells_past_the_bar_are_never_used() {
    // DSTRD 7: doorbells 512 bytes apart, queue q's at 0x1000 + 2q * 512.
    let config = Config::default().doorbell_stride(7).max_io_queues(8);
    // 0x1000 + 6 * 512 + 512 + 4: up to queue 3's CQ doorbell.
    let ctrl = open_sized(config.clone(), 0x1000 + 7 * 512 + 4, 8).unwrap();
    assert_eq!(ctrl.io_queues(), 3);
    let ns = ctrl.namespace(1).unwrap();
    let mut qps: Vec<_> = (0..3)
        .map(|_| ctrl.queue_pair(QueueConfig::default()).unwrap())
        .collect();
    assert!(ctrl.queue_pair(QueueConfig::default()).is_err());
    for qp in &mut qps {
        let mut b = vec![0u8; 512];
        qp.read(&ns, 0, &mut b).unwrap();
    }
    drop(qps);
    drop(ctrl);
    // Admin doorbells out of reach: refused at bring-up, untouched.
    match open_sized(config, 0x1000 + 512, 8) {
        Err(nvme_vfio::Error::Unsupported(m)) => assert!(m.contains("doorbells"), "{m}"),
        other => panic!("{other:?}"),
    }
}
