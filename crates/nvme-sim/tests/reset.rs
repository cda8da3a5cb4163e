//! A controller reset while another thread writes a submission doorbell:
//! the reset waits for that write to finish before it disables the
//! controller, so the controller never sees a doorbell for queues its reset
//! is tearing down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvme_sim::{Config, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, Done, Io, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::nvme::regs::{self, offset, Cap, Registers};
use nvme_vfio::Error;

/// How long the watched doorbell write takes: far longer than the reset's
/// own grace period, so a reset that did not wait would disable the
/// controller in the middle of it.
const SLOW_WRITE: Duration = Duration::from_millis(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    DoorbellStart,
    DoorbellEnd,
    Cc(u32),
}

/// The simulator's registers, recording CC writes and making the next
/// write of one doorbell slow.
struct Recorder {
    inner: Arc<dyn Registers>,
    doorbell: u64,
    slow: AtomicBool,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

impl Registers for Recorder {
    fn read32(&self, off: u64) -> u32 {
        self.inner.read32(off)
    }

    fn write32(&self, off: u64, value: u32) {
        if off == self.doorbell && self.slow.swap(false, Ordering::SeqCst) {
            self.push(Event::DoorbellStart);
            std::thread::sleep(SLOW_WRITE);
            self.inner.write32(off, value);
            self.push(Event::DoorbellEnd);
            return;
        }
        if off == offset::CC {
            self.push(Event::Cc(value));
        }
        self.inner.write32(off, value);
    }

    fn read64(&self, off: u64) -> u64 {
        self.inner.read64(off)
    }

    fn write64(&self, off: u64, value: u64) {
        self.inner.write64(off, value);
    }
}

#[test]
fn a_reset_waits_for_a_doorbell_write_in_progress() {
    let sim = SimController::new(Config::default()).unwrap();
    let inner = sim.registers();
    let stride = Cap(inner.read64(offset::CAP)).doorbell_stride();
    let recorder = Arc::new(Recorder {
        inner,
        // The first I/O queue pair gets queue 1.
        doorbell: regs::sq_tail_doorbell(1, stride),
        slow: AtomicBool::new(false),
        events: Mutex::new(Vec::new()),
    });
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 2,
        io_timeout: Duration::from_secs(5),
        // Every publication writes the MMIO doorbell.
        shadow_doorbells: false,
        ..DriverConfig::default()
    };
    // SAFETY: `regs` forwards to the model's registers; `space` maps through the
    // model's own IOMMU, and nothing else drives the model.
    let ctrl = unsafe { Controller::with_backend(recorder.clone(), space, driver, None) }.unwrap();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    assert_eq!(qp.qid(), 1);
    let buf = ctrl.dma_alloc(4096).unwrap();
    std::thread::scope(|s| {
        let io = s.spawn(|| {
            qp.submit(Io::read(&ns, 0, buf).tag(7))
                .map_err(|(e, _)| e)
                .unwrap();
            recorder.slow.store(true, Ordering::SeqCst);
            qp.flush();
            // The read completes, or fails with Reset if the reset came
            // first; either way its buffer comes back.
            let mut done: Vec<Done> = Vec::new();
            let start = Instant::now();
            while done.is_empty() && start.elapsed() < Duration::from_secs(10) {
                qp.poll(&mut done);
            }
            let d = done.pop().expect("the read completed");
            assert_eq!(d.tag, 7);
            assert_eq!(d.buf.len(), 4096, "the buffer came back");
            match d.result {
                Ok(()) | Err(Error::Reset) => {}
                Err(e) => panic!("read: {e}"),
            }
        });
        let start = Instant::now();
        while !recorder.events().contains(&Event::DoorbellStart) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no doorbell write"
            );
            std::thread::yield_now();
        }
        ctrl.reset().unwrap();
        io.join().unwrap();
    });
    let ev = recorder.events();
    let started = ev.iter().position(|e| *e == Event::DoorbellStart).unwrap();
    let ended = ev.iter().position(|e| *e == Event::DoorbellEnd).unwrap();
    let disabled = ev[started..]
        .iter()
        .position(|e| matches!(e, Event::Cc(v) if v & 1 == 0))
        .map(|i| started + i)
        .expect("the reset disabled the controller");
    assert!(
        ended < disabled,
        "the reset disabled the controller during the doorbell write: {ev:?}"
    );
    // I/O goes on after the reset.
    let mut back = vec![0u8; 4096];
    qp.read(&ns, 0, &mut back).unwrap();
}
