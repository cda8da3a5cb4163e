//! The driver's lifecycle under an application's timing: timeouts fire by
//! time however often the caller polls.

use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, Done, Io, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::nvme::cmd::io;
use nvme_vfio::Error;

fn open(config: Config, io_timeout: Duration) -> (SimController, Controller) {
    let sim = SimController::new(config).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 2,
        io_timeout,
        ..DriverConfig::default()
    };
    let f = Some(sim.pci_function());
    // SAFETY: the registers, the IOMMU under the DMA space and the PCI
    // function all belong to `sim`, which nothing else drives.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, f) }.unwrap();
    (sim, ctrl)
}

/// A command the device never completes is detected by time: with the
/// caller polling continuously, every 2 ms or every 50 ms, the request
/// comes back (aborted) no earlier than its timeout and no later than its
/// timeout plus the polling interval plus 20 ms. Commands are stamped when
/// their doorbell is written, so a command submitted between two polls is
/// timed from its publication, not from a later check.
#[test]
fn a_stuck_command_times_out_by_time_whatever_the_polling_interval() {
    let timeout = Duration::from_millis(200);
    let (sim, ctrl) = open(Config::default(), timeout);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    for interval in [
        Duration::ZERO,
        Duration::from_millis(2),
        Duration::from_millis(50),
    ] {
        // Other I/O keeps completing meanwhile; one read is lost.
        sim.inject(FaultRule::nth(
            Match::io().opcode(io::READ),
            3,
            FaultAction::Drop,
        ));
        let start = Instant::now();
        for i in 0..5u64 {
            qp.submit(Io::read(&ns, i, vec![0u8; 512]).tag(i))
                .map_err(|(e, _)| e)
                .unwrap();
        }
        qp.flush();
        let mut done: Vec<Done> = Vec::new();
        let mut stuck = None;
        while stuck.is_none() {
            qp.poll(&mut done);
            if let Some(d) = done.iter().find(|d| d.result.is_err()) {
                stuck = Some((d.tag, start.elapsed()));
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{interval:?}: no timeout"
            );
            if !interval.is_zero() {
                std::thread::sleep(interval);
            }
        }
        let (tag, after) = stuck.unwrap();
        assert_eq!(tag, 2, "{interval:?}");
        assert!(
            after >= timeout,
            "{interval:?}: fired early, after {after:?}"
        );
        assert!(
            after <= timeout + interval + Duration::from_millis(20),
            "{interval:?}: detected after {after:?}"
        );
        let done_err = done.iter().find(|d| d.tag == 2).unwrap();
        assert!(
            matches!(&done_err.result, Err(Error::Command { status, .. }) if status.sc() == 0x07),
            "aborted: {:?}",
            done_err.result
        );
        while done.len() < 5 {
            qp.poll(&mut done);
        }
        assert_eq!(done.iter().filter(|d| d.result.is_ok()).count(), 4);
    }
}
