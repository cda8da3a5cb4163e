//! Thread-per-core busy polling with many requests in flight: each thread
//! owns a queue pair (polled mode, no interrupts, no system calls on the
//! I/O path) and runs its own tiny executor over the futures of an
//! `AsyncQueuePair`: it polls every future, then the queue pair, in a
//! loop, keeping QD requests in flight. Every block is written with a
//! pattern and read back. Runs against nvme-sim, or a controller on
//! vfio-pci:
//!
//!   cargo run --release --example busy-poll [-- DEVICE [THREADS [QD]]]
//!   (DEVICE "sim" for nvme-sim, the default; THREADS 2; QD 128)

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use nvme_vfio::ctrl::{AsyncQueuePair, Config, Controller, Io, IoBuf, IoFuture, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};

/// Requests per thread.
const IOS: u64 = 20_000;

fn open(
    device: &str,
    threads: u16,
) -> Result<(Controller, Option<nvme_sim::SimController>), String> {
    let config = Config {
        io_queues: threads,
        ..Config::default()
    };
    if device != "sim" {
        let ctrl = Controller::open(device, config).map_err(|e| e.to_string())?;
        return Ok((ctrl, None));
    }
    let sim =
        nvme_sim::SimController::new(nvme_sim::Config::default()).map_err(|e| e.to_string())?;
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let config = Config {
        space: SpaceConfig { hugepages: false },
        ..config
    };
    // SAFETY: the registers, the IOMMU under the DMA space and the PCI
    // function belong to `sim`, which nothing else drives.
    let ctrl = unsafe {
        Controller::with_backend(sim.registers(), space, config, Some(sim.pci_function()))
    }
    .map_err(|e| e.to_string())?;
    Ok((ctrl, Some(sim)))
}

fn fill(buf: &mut [u8], lba: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u64 ^ lba.wrapping_mul(0x9e37_79b9)) as u8;
    }
}

/// One request's state in the executor: writing, then reading back.
enum Step {
    Write(u64, IoFuture),
    Read(u64, IoFuture),
}

/// One thread: `qd` requests in flight over its own range of blocks.
fn worker(ctrl: &Controller, thread: u64, qd: usize) -> Result<u64, String> {
    let ns = ctrl.namespace(1).map_err(|e| e.to_string())?;
    let qp = ctrl
        .queue_pair(QueueConfig {
            depth: (qd + 1) as u16,
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
    let aq = AsyncQueuePair::new(qp).map_err(|(e, _)| e.to_string())?;
    let bufs: Vec<_> = (0..qd)
        .map(|_| ctrl.dma_alloc(4096).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let bs = ns.block_size();
    let blocks_per_io = 4096 / bs;
    let range = ns.blocks() / blocks_per_io / 4;
    let base = thread * range;
    let lba_of = |k: u64| (base + k % range) * blocks_per_io;
    let mut cx = Context::from_waker(Waker::noop());
    let mut steps: Vec<Option<Step>> = Vec::with_capacity(qd);
    let mut next = 0u64;
    for mut b in bufs {
        let lba = lba_of(next);
        fill(b.as_mut_slice(), lba);
        let f = aq
            .submit(Io::write(&ns, lba, b))
            .map_err(|(e, _)| e.to_string())?;
        steps.push(Some(Step::Write(lba, f)));
        next += 1;
    }
    let mut done = 0u64;
    while steps.iter().any(Option::is_some) {
        for s in steps.iter_mut() {
            let Some(step) = s.take() else { continue };
            *s = match step {
                Step::Write(lba, mut f) => match Pin::new(&mut f).poll(&mut cx) {
                    Poll::Pending => Some(Step::Write(lba, f)),
                    Poll::Ready((buf, r)) => {
                        r.map_err(|e| format!("write at LBA {lba}: {e}"))?;
                        let f = aq
                            .submit(Io::read(&ns, lba, buf))
                            .map_err(|(e, _)| e.to_string())?;
                        Some(Step::Read(lba, f))
                    }
                },
                Step::Read(lba, mut f) => match Pin::new(&mut f).poll(&mut cx) {
                    Poll::Pending => Some(Step::Read(lba, f)),
                    Poll::Ready((buf, r)) => {
                        r.map_err(|e| format!("read at LBA {lba}: {e}"))?;
                        let IoBuf::Dma(mut b) = buf else {
                            return Err("the buffer did not come back".into());
                        };
                        let mut want = vec![0u8; 4096];
                        fill(&mut want, lba);
                        if b.as_slice() != want.as_slice() {
                            return Err(format!("LBA {lba}: read back differs"));
                        }
                        done += 2;
                        if next < IOS / 2 {
                            let lba = lba_of(next);
                            next += 1;
                            fill(b.as_mut_slice(), lba);
                            let f = aq
                                .submit(Io::write(&ns, lba, b))
                                .map_err(|(e, _)| e.to_string())?;
                            Some(Step::Write(lba, f))
                        } else {
                            None
                        }
                    }
                },
            };
        }
        aq.poll();
    }
    Ok(done)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let device = args.get(1).map(String::as_str).unwrap_or("sim");
    let threads: u16 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let qd: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);
    let (ctrl, _sim) = match open(device, threads) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("busy-poll: {e}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ctrl = &ctrl;
                s.spawn(move || worker(ctrl, u64::from(t), qd))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a worker panicked".into())))
            .collect()
    });
    let mut ios = 0;
    for r in results {
        match r {
            Ok(n) => ios += n,
            Err(e) => {
                eprintln!("busy-poll: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let t = start.elapsed();
    println!(
        "{ios} I/Os verified on {threads} threads at QD {qd} in {t:?} ({:.0} IOPS)",
        ios as f64 / t.as_secs_f64()
    );
    ExitCode::SUCCESS
}
