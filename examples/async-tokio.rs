//! Asynchronous I/O on tokio, in interrupt mode: a driver task waits on the
//! queue pair's interrupt eventfd (tokio's `AsyncFd`) and polls the queue
//! pair when it fires; worker tasks write blocks and read them back with
//! `.await`. Runs against the in-process software controller (nvme-sim)
//! with its interrupt vectors, or against a controller on vfio-pci:
//!
//!   cargo run --example async-tokio            # nvme-sim
//!   cargo run --example async-tokio 0000:01:00.0
//!
//! Exits 0 once every block read back matches what was written.

use std::cell::Cell;
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nvme_vfio::ctrl::{AsyncQueuePair, Config, Controller, Io, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Worker tasks, and blocks each writes then reads back.
const TASKS: u64 = 16;
const ROUNDS: u64 = 64;

/// The queue pair's eventfd, for `AsyncFd` (the queue pair keeps it open).
struct Eventfd(RawFd);

impl AsRawFd for Eventfd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

fn pattern(task: u64, round: u64) -> Vec<u8> {
    (0..4096u64)
        .map(|i| (i ^ task.wrapping_mul(31) ^ round.wrapping_mul(131)) as u8)
        .collect()
}

fn open(device: Option<&str>) -> Result<(Controller, Option<nvme_sim::SimController>), String> {
    let config = Config {
        interrupts: true,
        io_queues: 1,
        ..Config::default()
    };
    if let Some(dev) = device {
        let ctrl = Controller::open(dev, config).map_err(|e| e.to_string())?;
        return Ok((ctrl, None));
    }
    let sim =
        nvme_sim::SimController::new(nvme_sim::Config::default()).map_err(|e| e.to_string())?;
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let irqs = sim.interrupts(2).map_err(|e| e.to_string())?;
    let config = Config {
        space: SpaceConfig { hugepages: false },
        ..config
    };
    // SAFETY: the registers, the IOMMU under the DMA space, the PCI
    // function and the interrupt vectors all belong to `sim`, which
    // nothing else drives.
    let ctrl = unsafe {
        Controller::with_interrupts(
            sim.registers(),
            space,
            config,
            Some(sim.pci_function()),
            Box::new(irqs),
        )
    }
    .map_err(|e| e.to_string())?;
    Ok((ctrl, Some(sim)))
}

async fn run(ctrl: &Controller) -> Result<u64, String> {
    let ns = ctrl.namespace(1).map_err(|e| e.to_string())?;
    let qp = ctrl
        .queue_pair(QueueConfig::default())
        .map_err(|e| e.to_string())?;
    let aq = Rc::new(AsyncQueuePair::new(qp).map_err(|(e, _)| e.to_string())?);
    let fd = aq.interrupt_fd().ok_or("no interrupt eventfd")?;
    // SAFETY: the eventfd belongs to the controller's interrupt vectors,
    // which stay open until `ctrl` is dropped, after this function (and
    // the driver task holding the `AsyncFd`) has ended.
    let fd = unsafe { AsyncFd::register_with_interest(Eventfd(fd), Interest::READABLE) }
        .map_err(|e| e.to_string())?;
    let stop = Rc::new(Cell::new(false));
    let wakeups = Rc::new(Cell::new(0u64));

    // The driver task: sleeps until the controller interrupts (or 100 ms
    // pass, for the timeout checks), then clears the eventfd and polls.
    let driver = {
        let (aq, stop, wakeups) = (aq.clone(), stop.clone(), wakeups.clone());
        tokio::task::spawn_local(async move {
            while !stop.get() {
                if let Ok(Ok(mut guard)) =
                    tokio::time::timeout(Duration::from_millis(100), fd.readable()).await
                {
                    guard.clear_ready();
                    wakeups.set(wakeups.get() + 1);
                }
                // Cleared first, then polled: a completion posted in
                // between makes the eventfd readable again.
                aq.clear_interrupt();
                aq.poll();
            }
        })
    };

    let workers: Vec<_> = (0..TASKS)
        .map(|t| {
            let (aq, ns) = (aq.clone(), ns.clone());
            tokio::task::spawn_local(async move {
                for r in 0..ROUNDS {
                    let lba = (t * ROUNDS + r) * 8;
                    let data = pattern(t, r);
                    let f = aq
                        .submit(Io::write(&ns, lba, data.clone()))
                        .map_err(|(e, _)| e.to_string())?;
                    f.await.1.map_err(|e| format!("write at LBA {lba}: {e}"))?;
                    let f = aq
                        .submit(Io::read(&ns, lba, vec![0u8; 4096]))
                        .map_err(|(e, _)| e.to_string())?;
                    let (buf, r) = f.await;
                    r.map_err(|e| format!("read at LBA {lba}: {e}"))?;
                    if buf.as_slice() != data.as_slice() {
                        return Err(format!("LBA {lba}: read back differs"));
                    }
                }
                Ok::<u64, String>(ROUNDS * 2)
            })
        })
        .collect();
    let mut ios = 0;
    for w in workers {
        ios += w.await.map_err(|e| e.to_string())??;
    }
    stop.set(true);
    driver.await.map_err(|e| e.to_string())?;
    if wakeups.get() == 0 {
        return Err("the interrupt eventfd never woke the driver task".into());
    }
    println!(
        "{ios} I/Os by {TASKS} tasks; the driver task was woken by {} interrupts",
        wakeups.get()
    );
    Ok(ios)
}

fn main() -> ExitCode {
    let device = std::env::args().nth(1);
    let (ctrl, _sim) = match open(device.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("async-tokio: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("async-tokio: tokio: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let local = tokio::task::LocalSet::new();
    match rt.block_on(local.run_until(run(&ctrl))) {
        Ok(ios) => {
            println!("verified in {:?} ({ios} I/Os)", start.elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("async-tokio: {e}");
            ExitCode::from(1)
        }
    }
}
