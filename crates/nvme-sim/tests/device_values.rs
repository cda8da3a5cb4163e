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
