//! The driver against QEMU's NVMe controller through real VFIO: bring-up,
//! Identify, queue pairs, and data written then read back over every data
//! path. Runs inside the VM of scripts/vm (scripts/test.sh does that, with a
//! 64 MiB namespace of 512-byte blocks); elsewhere each test says it is
//! skipped.

use std::sync::Mutex;

use nvme_vfio::ctrl::{Config, Controller, QueueConfig};
use nvme_vfio::Error;

mod common;
use common::in_vm;

const NVME: &str = "0000:00:03.0";
/// Serializes the tests: they share one controller.
static DEVICE: Mutex<()> = Mutex::new(());

/// The kernel log records available now (the VM's /dev/kmsg).
fn kernel_log() -> Vec<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_o_nonblock())
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    // One record per read; EAGAIN at the end.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

/// O_NONBLOCK on Linux (x86-64 and aarch64).
const fn libc_o_nonblock() -> i32 {
    0o4000
}

/// Bytes of a test pattern that differs per use and per position.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9).wrapping_add(seed * 131) >> 7) as u8)
        .collect()
}

#[test]
fn identify_matches_qemus_controller() {
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let id = ctrl.identify();
    assert_eq!(id.model(), "QEMU NVMe Ctrl");
    assert_eq!(id.vid(), 0x1b36);
    assert_eq!(id.ver(), 0x10400);
    assert_eq!(id.mdts(), 7);
    assert!(id.sgl_supported());
    assert_eq!(ctrl.max_transfer(), 512 << 10);
    assert!(ctrl.io_queues() >= 2);
    assert_eq!(ctrl.active_namespaces().unwrap(), vec![1]);
    // CAP.CSS bit 6: enabled with every I/O command set (CC.CSS = 110b).
    assert!(ctrl.io_command_sets());
    let ns = ctrl.namespace(1).unwrap();
    assert_eq!(ns.block_size(), 512);
    assert_eq!(ns.command_set(), nvme_vfio::ctrl::CommandSet::Nvm);
    let expected: u64 = std::env::var("NVME_VM_NS_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20);
    assert_eq!(ns.bytes(), expected);
    assert!(matches!(
        ctrl.namespace(99),
        Err(Error::NoNamespace { nsid: 99 })
    ));
    assert!(matches!(
        ctrl.namespace(0),
        Err(Error::NoNamespace { nsid: 0 })
    ));
}

#[test]
fn data_written_reads_back_on_every_path_and_size() {
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    let mut lba = 4096;
    for sgl in [false, true] {
        let mut qp = ctrl
            .queue_pair(QueueConfig {
                sgl,
                ..Default::default()
            })
            .unwrap();
        for (i, len) in [512usize, 4096, 8192, 128 << 10, 1 << 20, 4 << 20]
            .into_iter()
            .enumerate()
        {
            let seed = (sgl as u64) << 8 | i as u64;
            let data = pattern(seed, len);
            // Unregistered user memory: one coalesced IOVA range per request.
            qp.write(&ns, lba, &data, false)
                .unwrap_or_else(|e| panic!("write {len} (sgl {sgl}): {e}"));
            let mut back = vec![0u8; len];
            qp.read(&ns, lba, &mut back).unwrap();
            assert!(back == data, "user memory, {len} bytes, sgl {sgl}");
            // A DMA buffer from the hugepage pool: translated, no mapping.
            let mut buf = ctrl.dma_alloc(len).unwrap();
            qp.read(&ns, lba, &mut buf.as_mut_slice()[..len]).unwrap();
            assert!(
                buf.as_slice()[..len] == data[..],
                "DMA buffer, {len} bytes, sgl {sgl}"
            );
            // Vectored: three pieces. With SGLs any byte layout works; with
            // PRPs only, interior boundaries must be page aligned, and a
            // layout that breaks that is refused with a clear error.
            if len >= 8192 {
                let mut head = ctrl.dma_alloc(4096).unwrap();
                let mid_len = len - 4096;
                let mut mid = ctrl.dma_alloc(mid_len).unwrap();
                let mut tail_mem = vec![0u8; 8192];
                let tail_at = (tail_mem.as_ptr() as usize).next_multiple_of(4096)
                    - tail_mem.as_ptr() as usize;
                {
                    let tail = &mut tail_mem[tail_at..tail_at + 3584];
                    // The head piece ends on a page boundary, the others start on one.
                    let mut bufs: [&mut [u8]; 3] = [
                        &mut head.as_mut_slice()[3584..],
                        &mut mid.as_mut_slice()[..mid_len],
                        tail,
                    ];
                    qp.read_vectored(&ns, lba, &mut bufs).unwrap();
                }
                let mut joined = head.as_slice()[3584..].to_vec();
                joined.extend_from_slice(&mid.as_slice()[..mid_len]);
                joined.extend_from_slice(&tail_mem[tail_at..tail_at + 3584]);
                assert!(joined == data, "vectored, {len} bytes, sgl {sgl}");
                // Unaligned heap pieces.
                let mut a = vec![0u8; 512];
                let mut c = vec![0u8; 3584];
                let r = {
                    let mut bufs: [&mut [u8]; 3] =
                        [&mut a, &mut mid.as_mut_slice()[..mid_len], &mut c];
                    qp.read_vectored(&ns, lba, &mut bufs)
                };
                if sgl {
                    r.unwrap();
                    let mut joined = a.clone();
                    joined.extend_from_slice(&mid.as_slice()[..mid_len]);
                    joined.extend_from_slice(&c);
                    assert!(joined == data, "unaligned vectored, {len} bytes");
                } else if let Err(e) = r {
                    assert!(matches!(e, Error::Dptr(_)), "{e}");
                }
            }
            lba += (len / 512) as u64;
        }
        qp.flush_cache(&ns).unwrap();
    }
}

#[test]
fn bad_requests_are_refused_before_submission() {
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let buf = vec![0u8; 4096];
    let e = qp.write(&ns, ns.blocks() - 4, &buf, false).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("past the end")),
        "{e}"
    );
    let e = qp.write(&ns, 0, &buf[..1000], false).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("multiple")),
        "{e}"
    );
    let e = qp.write(&ns, 0, &buf[..0], false).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ref m) if m.contains("zero")),
        "{e}"
    );
    let e = qp.write(&ns, u64::MAX, &buf, false).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    // The queue pair still works after refusals.
    qp.write(&ns, 0, &buf, false).unwrap();
}

#[test]
fn two_queue_pairs_on_two_threads() {
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let (ctrl, ns) = (&ctrl, &ns);
            s.spawn(move || {
                let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
                for i in 0..32u64 {
                    let lba = 65536 + t * 8192 + i * 64;
                    let data = pattern(t * 100 + i, 64 * 512);
                    qp.write(ns, lba, &data, false).unwrap();
                    let mut back = vec![0u8; data.len()];
                    qp.read(ns, lba, &mut back).unwrap();
                    assert!(back == data, "thread {t}, round {i}");
                }
            });
        }
    });
}

/// Writes the pattern scripts/test.sh checks in the backing image after the
/// VM powers off: 8 blocks at LBA 1000, byte i = (i * 7 + 3) mod 256.
#[test]
fn write_for_the_host_to_check() {
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    qp.write(&ns, 1000, &data, true).unwrap();
    qp.flush_cache(&ns).unwrap();
}

#[test]
fn logs_features_zeroes_and_trim() {
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let before = ctrl.smart_log().unwrap();
    let data = pattern(7, 64 << 10);
    for i in 0..4 {
        qp.write(&ns, 20_000 + i * 128, &data, false).unwrap();
    }
    let after = ctrl.smart_log().unwrap();
    assert!(
        after.host_write_commands >= before.host_write_commands + 4,
        "{before:?} -> {after:?}"
    );
    assert!(after.temperature_k > 200, "{after:?}");
    // The error log can be read (QEMU keeps none).
    ctrl.error_log(16).unwrap();
    // Volatile write cache: QEMU has one, enabled; toggle it and back.
    assert!(ctrl.write_cache().unwrap());
    ctrl.set_write_cache(false).unwrap();
    assert!(!ctrl.write_cache().unwrap());
    ctrl.set_write_cache(true).unwrap();
    assert!(ctrl.write_cache().unwrap());
    // Write Zeroes: the blocks read back as zeroes.
    qp.write_zeroes(&ns, 20_000, 128).unwrap();
    let mut back = vec![0xffu8; 64 << 10];
    qp.read(&ns, 20_000, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    qp.read(&ns, 20_128, &mut back).unwrap();
    assert!(back == data, "neighbouring blocks untouched");
    // Deallocate completes (what deallocated blocks read as is up to the
    // device); bad ranges are refused before submission.
    qp.deallocate(&ns, &[(20_256, 128), (20_384, 64)]).unwrap();
    assert!(matches!(qp.deallocate(&ns, &[]), Err(Error::Invalid(_))));
    assert!(matches!(
        qp.deallocate(&ns, &[(ns.blocks(), 1)]),
        Err(Error::Invalid(_))
    ));
    // Aborting a command that already completed: not aborted.
    assert!(!ctrl.abort(qp.qid(), 0).unwrap());
}

#[test]
fn asynchronous_io_at_queue_depth_32() {
    use nvme_vfio::ctrl::{Done, Io, IoBuf, Op};
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl
        .queue_pair(QueueConfig {
            depth: 33,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(qp.depth(), 32);
    let base = 100_000u64;
    let mut done: Vec<Done> = Vec::new();
    // 32 writes in flight at once, half from DMA buffers, half from Vecs.
    for i in 0..32u64 {
        let data = pattern(1000 + i, 8192);
        let buf: IoBuf = if i % 2 == 0 {
            let mut b = ctrl.dma_alloc(8192).unwrap();
            b.as_mut_slice().copy_from_slice(&data);
            b.into()
        } else {
            data.into()
        };
        qp.submit(Io::write(&ns, base + i * 16, buf).tag(i))
            .unwrap();
    }
    assert_eq!(qp.inflight(), 32);
    // The queue is full: the request comes back with its buffer.
    let (e, io) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, Error::QueueFull { .. }), "{e}");
    assert_eq!(io.into_buf().len(), 512);
    while done.len() < 32 {
        qp.poll(&mut done);
    }
    assert!(done.iter().all(|d| d.result.is_ok()));
    // Read them back asynchronously and verify by tag.
    done.clear();
    for i in 0..32u64 {
        qp.submit(Io::read(&ns, base + i * 16, vec![0u8; 8192]).tag(i))
            .unwrap();
    }
    while done.len() < 32 {
        qp.poll(&mut done);
    }
    for d in done.drain(..) {
        let tag = d.tag;
        let (buf, r) = d.into_parts();
        r.unwrap();
        assert!(buf.as_slice() == pattern(1000 + tag, 8192), "tag {tag}");
    }
    // A request larger than MDTS (512 KiB) is split and completes once.
    let big = pattern(77, 1536 << 10);
    qp.submit(Io::write(&ns, 40_000, big.clone()).fua().tag(7))
        .unwrap();
    while done.is_empty() {
        qp.poll(&mut done);
    }
    assert_eq!(done.len(), 1);
    done.pop().unwrap().result.unwrap();
    let mut back = vec![0u8; big.len()];
    qp.read(&ns, 40_000, &mut back).unwrap();
    assert!(back == big);
    // The raw path: caller-managed memory, completion without a buffer.
    let mut raw = vec![0u8; 4096];
    let seg = blk_dma::HostSeg::from_slice(&raw);
    // SAFETY: `raw` is not touched until the completion is polled below.
    unsafe { qp.submit_raw(Op::Read, &ns, base, &[seg], 99) }.unwrap();
    while done.is_empty() {
        qp.poll(&mut done);
    }
    let d = done.pop().unwrap();
    assert_eq!(d.tag, 99);
    assert!(matches!(d.buf, IoBuf::Raw));
    d.result.unwrap();
    raw.truncate(4096);
    assert!(raw == pattern(1000, 8192)[..4096]);
}

#[test]
fn a_read_into_read_only_memory_is_refused_by_the_iommu() {
    use nvme_vfio::mem::Access;
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    qp.write(&ns, 30_000, &pattern(5, 8192), false).unwrap();
    let mut mem = vec![0xa5u8; 3 * 4096];
    let at = (mem.as_ptr() as usize).next_multiple_of(4096) - mem.as_ptr() as usize;
    // SAFETY: `mem` outlives the registration, dropped below.
    let reg = unsafe {
        ctrl.space()
            .register_with(mem[at..].as_ptr(), 8192, Access::ReadOnly)
    }
    .unwrap();
    let r = qp.read(&ns, 30_000, &mut mem[at..at + 8192]);
    // The IOMMU refuses the device's writes: the memory is unchanged, and
    // the guest kernel logs the DMA remapping fault. QEMU 7.2's NVMe model
    // still completes the command successfully (it ignores the failed DMA);
    // a controller that reports the fault fails it with an error status.
    assert!(
        mem.iter().all(|&b| b == 0xa5),
        "read-only memory was changed"
    );
    if let Err(e) = &r {
        assert!(matches!(e, Error::Command { .. }), "{e}");
    }
    assert!(
        kernel_log()
            .iter()
            .any(|l| l.contains("DMAR") && l.contains("Write")),
        "no DMA remapping fault for the refused write in the kernel log"
    );
    // Writing from it is fine: the device may read it.
    qp.write(&ns, 30_000, &mem[at..at + 8192], false).unwrap();
    drop(reg);
    // The queue pair and controller are still usable.
    let mut back = vec![0u8; 8192];
    qp.read(&ns, 30_000, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0xa5));
}

#[test]
fn interrupt_mode_wakes_the_waiter() {
    use nvme_vfio::ctrl::{Done, Io};
    use std::time::{Duration, Instant};
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let config = Config {
        interrupts: true,
        ..Config::default()
    };
    let ctrl = Controller::open(NVME, config).expect("bring-up with MSI-X");
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut done: Vec<Done> = Vec::new();
    // Nothing in flight: wait returns at once.
    let t = Instant::now();
    assert_eq!(qp.wait(&mut done, Duration::from_secs(5)), 0);
    assert!(t.elapsed() < Duration::from_secs(1));
    for i in 0..8u64 {
        qp.submit(Io::read(&ns, i * 8, vec![0u8; 4096]).tag(i))
            .unwrap();
    }
    let t = Instant::now();
    while done.len() < 8 && t.elapsed() < Duration::from_secs(10) {
        qp.wait(&mut done, Duration::from_secs(5));
    }
    assert_eq!(done.len(), 8);
    assert!(done.iter().all(|d| d.result.is_ok()));
    assert!(qp.interrupts() > 0, "completions arrived by interrupt");
    // Blocking calls work in interrupt mode too.
    let mut buf = vec![0u8; 4096];
    qp.read(&ns, 0, &mut buf).unwrap();
}

#[test]
fn io_continues_after_a_controller_reset_in_the_middle_of_a_run() {
    use nvme_vfio::ctrl::{Done, Io};
    use std::sync::atomic::{AtomicBool, Ordering};
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        // Another thread keeps doing verified I/O across the reset.
        let other = s.spawn(|| {
            let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
            let (mut ok, mut reset) = (0u32, 0u32);
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) || ok < 20 {
                let data = pattern(5000 + i, 4096);
                let lba = 50_000 + (i % 64) * 8;
                match qp.write(&ns, lba, &data, false) {
                    Ok(()) => {
                        let mut back = vec![0u8; 4096];
                        match qp.read(&ns, lba, &mut back) {
                            Ok(()) => {
                                assert!(back == data, "other thread, round {i}");
                                ok += 1;
                            }
                            Err(Error::Reset) => reset += 1,
                            Err(e) => panic!("other thread read: {e}"),
                        }
                    }
                    Err(Error::Reset) => reset += 1,
                    Err(e) => panic!("other thread write: {e}"),
                }
                i += 1;
            }
            (ok, reset)
        });
        let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        let mut done: Vec<Done> = Vec::new();
        for i in 0..16u64 {
            qp.submit(Io::write(&ns, 60_000 + i * 8, pattern(i, 4096)).tag(i))
                .unwrap();
        }
        qp.flush();
        ctrl.reset().expect("reset");
        while done.len() < 16 {
            qp.poll(&mut done);
        }
        for d in &done {
            match &d.result {
                Ok(()) | Err(Error::Reset) => {}
                Err(e) => panic!("request {}: {e}", d.tag),
            }
            assert_eq!(d.buf.len(), 4096, "the buffer came back");
        }
        // I/O continues on this queue pair after the reset.
        let data = pattern(99, 64 << 10);
        qp.write(&ns, 61_000, &data, true).unwrap();
        let mut back = vec![0u8; data.len()];
        qp.read(&ns, 61_000, &mut back).unwrap();
        assert!(back == data);
        stop.store(true, Ordering::SeqCst);
        let (ok, _reset) = other.join().unwrap();
        assert!(ok >= 20, "the other thread kept working after the reset");
    });
    // The controller still answers admin commands.
    assert_eq!(ctrl.identify().model(), "QEMU NVMe Ctrl");
    ctrl.namespace(1).unwrap();
}

/// The way the driver stops a controller that ignores CC.EN = 0, against
/// QEMU's controller with I/O in flight and in interrupt mode: bus
/// mastering cleared and a function level reset (VFIO_DEVICE_RESET)
/// instead of CC.EN = 0. Requests in flight fail with Reset and get their
/// buffers back; afterwards the controller, its interrupts and its queues
/// work as before.
#[test]
fn a_controller_stopped_by_bus_master_and_function_reset_works_afterwards() {
    use nvme_vfio::ctrl::{Done, Io};
    use std::time::{Duration, Instant};
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let config = Config {
        interrupts: true,
        test_unacknowledged_disable: true,
        ..Config::default()
    };
    let ctrl = Controller::open(NVME, config).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    for round in 0..3u64 {
        let mut done: Vec<Done> = Vec::new();
        for i in 0..16u64 {
            let lba = 62_000 + i * 8;
            qp.submit(Io::write(&ns, lba, pattern(round * 100 + i, 4096)).tag(i))
                .unwrap();
        }
        qp.flush();
        ctrl.reset()
            .expect("reset by bus master and function level reset");
        let t = Instant::now();
        while done.len() < 16 {
            qp.wait(&mut done, Duration::from_secs(1));
            assert!(t.elapsed() < Duration::from_secs(20), "round {round}");
        }
        for d in &done {
            match &d.result {
                Ok(()) | Err(Error::Reset) => {}
                Err(e) => panic!("round {round}, request {}: {e}", d.tag),
            }
            assert_eq!(d.buf.len(), 4096, "the buffer came back");
        }
        // Interrupt-driven I/O works after the function reset.
        let data = pattern(round + 500, 128 << 10);
        qp.write(&ns, 63_000, &data, true).unwrap();
        let before = qp.interrupts();
        qp.submit(Io::read(&ns, 63_000, vec![0u8; data.len()]).tag(7))
            .unwrap();
        let mut back: Vec<Done> = Vec::new();
        let t = Instant::now();
        while back.is_empty() && t.elapsed() < Duration::from_secs(10) {
            qp.wait(&mut back, Duration::from_secs(5));
        }
        assert_eq!(back.len(), 1, "round {round}");
        assert!(
            back[0].result.is_ok(),
            "round {round}: {:?}",
            back[0].result
        );
        assert!(back[0].buf.as_slice() == &data[..], "round {round}");
        assert!(
            qp.interrupts() > before,
            "round {round}: completion by interrupt"
        );
    }
    assert_eq!(qp.device_errors(), 0);
    assert_eq!(ctrl.identify().model(), "QEMU NVMe Ctrl");
    ctrl.smart_log().unwrap();
    ctrl.namespace(1).unwrap();
}

/// QEMU's controller reports a SMART/health event (temperature threshold)
/// when the over-temperature threshold is set below its temperature; the
/// driver's outstanding event requests bring it to `poll_events`.
#[test]
fn a_temperature_threshold_event_reaches_the_application() {
    use nvme_vfio::ctrl::{AsyncEvent, AsyncEventKind};
    use nvme_vfio::nvme::cmd::feature;
    use std::time::{Duration, Instant};
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let _ = ctrl.poll_events().unwrap();
    let temperature = ctrl.smart_log().unwrap().temperature_k;
    let old = ctrl.get_features(feature::TEMPERATURE_THRESHOLD).unwrap();
    ctrl.set_features(feature::TEMPERATURE_THRESHOLD, u32::from(temperature) - 10)
        .unwrap();
    let start = Instant::now();
    let events = loop {
        let e = ctrl.poll_events().unwrap();
        if !e.is_empty() || start.elapsed() > Duration::from_secs(5) {
            break e;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    ctrl.set_features(feature::TEMPERATURE_THRESHOLD, old & 0xffff)
        .unwrap();
    assert_eq!(
        events,
        vec![AsyncEvent {
            kind: AsyncEventKind::SmartHealth,
            info: 1,
            log_page: 0x02,
            errors: Vec::new(),
        }]
    );
    // I/O and admin commands go on with event requests outstanding.
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut b = vec![0u8; 4096];
    qp.read(&ns, 0, &mut b).unwrap();
}

/// On a controller with an MDTS of 1 (8 KiB per command; the VM's
/// `small-mdts` scenario), blocking writes and reads of 1 MiB and 64 MiB
/// work (in waves) and the data reads back.
#[test]
fn any_length_on_a_controller_with_a_small_mdts() {
    if std::env::var("NVME_VM_SCENARIO").as_deref() != Ok("small-mdts") {
        eprintln!("skipped: needs the VM's small-mdts scenario (QEMU mdts=1)");
        return;
    }
    assert_eq!(
        std::env::var("VM_GUEST").as_deref(),
        Ok("1"),
        "the small-mdts scenario runs in the VM"
    );
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    assert_eq!(ctrl.max_transfer(), 8192);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    for len in [1usize << 20, 64 << 20] {
        let data = pattern(len as u64, len);
        qp.write(&ns, 8, &data, false).unwrap();
        let mut back = vec![0u8; len];
        qp.read(&ns, 8, &mut back).unwrap();
        assert!(back == data, "{len} bytes");
    }
}

/// QEMU's controller in the VM's `shapes` scenario (one I/O queue pair,
/// three namespaces of 4 KiB blocks, MDTS 5): the driver sees that shape.
/// One queue pair, and a second fails with `NoQueues`; each namespace
/// reads back what was written to it (and only that); transfers of 4 KiB
/// blocks only; over MDTS and over the queue depth times MDTS, plain and
/// vectored (pieces that do not meet at page boundaries, through PRPs,
/// which copies them through a DMA buffer, and through SGLs).
#[test]
fn the_shapes_scenario_controller() {
    if std::env::var("NVME_VM_SCENARIO").as_deref() != Ok("shapes") {
        eprintln!(
            "skipped: needs the VM's shapes scenario (QEMU max_ioqpairs=1, mdts=5, \
             three namespaces of 4 KiB blocks)"
        );
        return;
    }
    assert_eq!(
        std::env::var("VM_GUEST").as_deref(),
        Ok("1"),
        "the shapes scenario runs in the VM"
    );
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let config = Config {
        io_queues: 4,
        ..Config::default()
    };
    let ctrl = Controller::open(NVME, config).expect("bring-up");
    assert_eq!(ctrl.io_queues(), 1, "one I/O queue pair granted");
    assert_eq!(ctrl.identify().mdts(), 5);
    assert_eq!(ctrl.max_transfer(), 128 << 10);
    assert_eq!(ctrl.active_namespaces().unwrap(), vec![1, 2, 3]);
    let expected: u64 = std::env::var("NVME_VM_NS_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 << 20);
    let namespaces: Vec<_> = (1..=3).map(|id| ctrl.namespace(id).unwrap()).collect();
    for ns in &namespaces {
        assert_eq!(ns.block_size(), 4096, "namespace {}", ns.id());
        assert_eq!(ns.bytes(), expected, "namespace {}", ns.id());
    }
    assert!(matches!(
        ctrl.namespace(4),
        Err(Error::NoNamespace { nsid: 4 })
    ));
    for sgl in [false, true] {
        let mut qp = ctrl
            .queue_pair(QueueConfig {
                sgl,
                ..QueueConfig::default()
            })
            .unwrap();
        match ctrl.queue_pair(QueueConfig::default()) {
            Err(Error::NoQueues { max: 1 }) => {}
            r => panic!("a second queue pair: {:?}", r.map(|q| q.qid())),
        }
        // Each namespace holds its own data.
        let seed = |ns: u32| u64::from(ns) * 10 + sgl as u64;
        for ns in &namespaces {
            qp.write(ns, 100, &pattern(seed(ns.id()), 8192), false)
                .unwrap();
        }
        for ns in &namespaces {
            let mut back = vec![0u8; 8192];
            qp.read(ns, 100, &mut back).unwrap();
            assert!(
                back == pattern(seed(ns.id()), 8192),
                "namespace {}",
                ns.id()
            );
        }
        // Whole 4 KiB blocks only.
        let mut half = vec![0u8; 512];
        assert!(matches!(
            qp.read(&namespaces[0], 0, &mut half),
            Err(Error::Invalid(_))
        ));
        // Over MDTS (several commands) and over the depth times MDTS (in
        // waves), on the last namespace.
        let ns = &namespaces[2];
        let over = (qp.depth() as u64 + 2) * ctrl.max_transfer();
        for len in [3 * ctrl.max_transfer() + 4096, over] {
            let data = pattern(len + sgl as u64, len as usize);
            qp.write(ns, 1000, &data, false).unwrap();
            let mut back = vec![0u8; len as usize];
            qp.read(ns, 1000, &mut back).unwrap();
            assert!(back == data, "{len} bytes, sgl {sgl}");
        }
        // Vectored: pieces of 1000, 5000 and 2192 bytes at addresses that
        // are not page aligned.
        let data = pattern(77 + sgl as u64, 8192);
        let mut mem = vec![0u8; 8192 + 64];
        let (a, rest) = mem[16..].split_at_mut(1000);
        let (b, rest) = rest[16..].split_at_mut(5000);
        let c = &mut rest[16..16 + 2192];
        a.copy_from_slice(&data[..1000]);
        b.copy_from_slice(&data[1000..6000]);
        c.copy_from_slice(&data[6000..]);
        qp.write_vectored(ns, 50, &[a, b, c], false).unwrap();
        let mut back = vec![0u8; 8192];
        qp.read(ns, 50, &mut back).unwrap();
        assert!(back == data, "vectored write, sgl {sgl}");
        let mut other = vec![0u8; 8192 + 128];
        let (a, rest) = other[32..].split_at_mut(2192);
        let (b, rest) = rest[32..].split_at_mut(1000);
        let c = &mut rest[32..32 + 5000];
        qp.read_vectored(ns, 50, &mut [&mut *a, &mut *b, &mut *c])
            .unwrap();
        assert!(
            [&a[..], &b[..], &c[..]].concat() == data,
            "vectored read, sgl {sgl}"
        );
    }
    // Recovery on the single queue pair: a controller reset while I/O is
    // in flight on it; the requests end (done or `Reset`, buffers back),
    // I/O works again on the same queue pair, and what was written before
    // reads back.
    use nvme_vfio::ctrl::{Done, Io};
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let ns = &namespaces[1];
    let before = pattern(4242, 64 << 10);
    qp.write(ns, 2000, &before, false).unwrap();
    let n = 16u64;
    for i in 0..n {
        qp.submit(Io::write(ns, 3000 + i * 8, pattern(i, 32 << 10)).tag(i))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    qp.flush();
    ctrl.reset().expect("reset with I/O in flight");
    let mut done: Vec<Done> = Vec::new();
    let start = std::time::Instant::now();
    while done.len() < n as usize {
        qp.poll(&mut done);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{} of {n} requests ended after the reset",
            done.len()
        );
    }
    for d in &done {
        assert!(
            matches!(d.result, Ok(()) | Err(Error::Reset)),
            "request {}: {:?}",
            d.tag,
            d.result
        );
        assert_eq!(d.buf.len(), 32 << 10, "the buffer comes back");
    }
    let mut back = vec![0u8; before.len()];
    qp.read(ns, 2000, &mut back).unwrap();
    assert!(back == before, "data written before the reset reads back");
    let after = pattern(4343, 128 << 10);
    qp.write(ns, 2100, &after, false).unwrap();
    let mut back = vec![0u8; after.len()];
    qp.read(ns, 2100, &mut back).unwrap();
    assert!(back == after, "I/O after the reset");
}

/// Two namespaces of 64 MiB filled with 0x5a, the second zoned (the VM's
/// `zoned` scenario: QEMU's nvme-ns zoned=true with 4 MiB zones, at most 8
/// open and 14 active): the controller is enabled with every I/O command
/// set, the namespaces are found with their command sets and the zoned
/// one with its zones, reads of it work; then the zone commands on QEMU's
/// model: Report Zones, each action and its transitions, Zone Append
/// returning where the data landed (several in flight), writes at the
/// write pointer, the open and active limits, each failure by name, and a
/// reset reading back zeroes. It leaves every zone empty.
#[test]
fn a_zoned_namespace_reads_reports_appends_and_writes_at_the_pointer() {
    use nvme_vfio::ctrl::{
        CommandSet, Io, NamespaceEntry, ReportFilter, ZoneAction, ZoneState, ZoneType,
    };
    if std::env::var("NVME_VM_SCENARIO").as_deref() != Ok("zoned") {
        eprintln!(
            "skipped: needs the VM's zoned scenario (QEMU nvme-ns zoned=true as namespace 2)"
        );
        return;
    }
    assert_eq!(
        std::env::var("VM_GUEST").as_deref(),
        Ok("1"),
        "the zoned scenario runs in the VM"
    );
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    assert!(
        ctrl.io_command_sets(),
        "QEMU's CAP.CSS has bit 6: the controller is enabled with CC.CSS = 110b"
    );
    let entry = |nsid, command_set| NamespaceEntry { nsid, command_set };
    assert_eq!(
        ctrl.list_namespaces().unwrap(),
        vec![entry(1, CommandSet::Nvm), entry(2, CommandSet::Zoned)]
    );
    assert_eq!(
        ctrl.active_namespaces_of(CommandSet::Zoned).unwrap(),
        vec![2]
    );
    assert_eq!(ctrl.active_namespaces_of(CommandSet::Nvm).unwrap(), vec![1]);
    let nvm = ctrl.namespace(1).unwrap();
    assert_eq!(nvm.command_set(), CommandSet::Nvm);
    let ns = ctrl.namespace(2).unwrap();
    assert_eq!(ns.command_set(), CommandSet::Zoned);
    assert_eq!((ns.block_size(), ns.blocks()), (512, 131072));
    let z = ns.zones().expect("the zoned namespace's zones");
    assert_eq!(z.zone_blocks(), 8192, "4 MiB zones");
    assert_eq!((z.max_open(), z.max_active()), (Some(8), Some(14)));
    let info = ctrl.namespace_info(2).unwrap();
    assert_eq!(info.ids.and_then(|i| i.csi), Some(2), "the CSI descriptor");
    // QEMU 7.2 has no CNS 08h (later versions do): either way no error.
    if let Some(ind) = ctrl.identify_namespace_independent(2).unwrap() {
        assert!(ind.ready(), "namespace 2 ready");
    }

    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut back = vec![0u8; 64 << 10];
    for lba in [0, 8192 + 8, 131072 - 128] {
        qp.read(&ns, lba, &mut back).unwrap();
        assert!(
            back.iter().all(|&b| b == 0x5a),
            "read at {lba}: the prefill"
        );
    }
    let mut buf = ctrl.dma_alloc(4096).unwrap();
    buf.as_mut_slice().fill(0);
    qp.submit(Io::read(&ns, 16, buf))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut done = Vec::new();
    while done.is_empty() {
        qp.poll(&mut done);
    }
    let (buf, r) = done.pop().unwrap().into_parts();
    r.unwrap();
    assert!(buf.as_slice()[..4096].iter().all(|&b| b == 0x5a));

    let zb = 8192u64;
    let zones = 16u64;
    // Each failed command named by its zoned status.
    let named = |r: Result<(), Error>, name: &str| {
        let e = r.expect_err(name);
        assert_eq!(e.status().map(|s| s.name()), Some(name), "{e}");
        assert!(e.to_string().contains(name), "{e}");
    };
    // Zones are Empty at every boot of QEMU 7.2 (zone state is not kept),
    // whatever the image holds; a reset of every zone is a no-op then.
    qp.zone_action_all(&ns, ZoneAction::Reset).unwrap();
    let all = qp
        .report_zones(&ns, 0, ReportFilter::All, usize::MAX)
        .unwrap();
    assert_eq!(all.len() as u64, zones);
    for (i, d) in all.iter().enumerate() {
        let start = i as u64 * zb;
        assert_eq!(
            (d.start, d.write_pointer, d.capacity, d.state, d.zone_type),
            (
                start,
                start,
                zb,
                ZoneState::Empty,
                ZoneType::SequentialWriteRequired
            ),
            "zone {i}"
        );
    }
    // An Empty zone reads what the image holds (QEMU does not zero it).
    qp.read(&ns, 2 * zb, &mut back[..4096]).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0x5a));
    let zone = |qp: &mut nvme_vfio::ctrl::QueuePair, zslba: u64| {
        qp.report_zones(&ns, zslba, ReportFilter::All, 1).unwrap()[0]
    };

    // Zone Append, blocking: the LBAs the data landed at.
    assert_eq!(qp.zone_append_limit(&ns), 512 << 10, "ZASL 0: MDTS");
    let a = pattern(11, 4096);
    assert_eq!(qp.zone_append(&ns, 0, &a, false).unwrap(), 0);
    assert_eq!(qp.zone_append(&ns, 0, &a, true).unwrap(), 8);
    // Asynchronous: 16 in flight to one zone, each somewhere else.
    for i in 0..16u64 {
        let io = Io::zone_append(&ns, zb, pattern(100 + i, 4096)).tag(i);
        qp.submit(io).map_err(|(e, _)| e).unwrap();
    }
    let mut done = Vec::new();
    while done.len() < 16 {
        qp.poll(&mut done);
    }
    let mut landed = std::collections::HashSet::new();
    for d in done.drain(..) {
        d.result.as_ref().unwrap();
        let lba = d.appended_lba.expect("the append's LBA");
        assert!(
            (zb..zb + 128).contains(&lba) && lba % 8 == 0,
            "append {} at {lba}",
            d.tag
        );
        assert!(landed.insert(lba), "two appends at {lba}");
        qp.read(&ns, lba, &mut back[..4096]).unwrap();
        assert!(
            back[..4096] == pattern(100 + d.tag, 4096)[..],
            "append {} reads back at {lba}",
            d.tag
        );
    }
    let d = zone(&mut qp, zb);
    assert_eq!(
        (d.state, d.write_pointer),
        (ZoneState::ImplicitlyOpened, zb + 128)
    );

    // Writes at the write pointer; off it, Zone Invalid Write.
    let data = pattern(5, 8192);
    qp.write(&ns, 16, &data, false).unwrap();
    named(qp.write(&ns, 16, &data, false), "Zone Invalid Write");
    named(
        qp.write(&ns, 3 * zb + 8, &data, false),
        "Zone Invalid Write",
    );
    // Longer than MDTS (512 KiB): one command at a time, in order.
    let big = pattern(6, 1 << 20);
    qp.write(&ns, 32, &big, false).unwrap();
    qp.write_zeroes(&ns, 32 + 2048, 8).unwrap();
    assert_eq!(zone(&mut qp, 0).write_pointer, 32 + 2048 + 8);
    let mut got = vec![0u8; 1 << 20];
    qp.read(&ns, 32, &mut got).unwrap();
    assert!(got == big, "the long write reads back");
    qp.read(&ns, 0, &mut back[..4096]).unwrap();
    assert!(back[..4096] == a[..]);
    // Across a zone boundary: refused before submission.
    assert!(matches!(
        qp.write(&ns, zb - 8, &data, false),
        Err(Error::CrossesZone { .. })
    ));
    // Copy (which QEMU has) is refused on a zoned namespace.
    assert!(matches!(
        qp.copy(&ns, &[nvme_vfio::ctrl::CopyRange::new(0, 1)], 32),
        Err(Error::ZonedNamespace { nsid: 2 })
    ));

    // Each action and its transitions.
    let z2 = 2 * zb;
    qp.zone_action(&ns, z2, ZoneAction::Open).unwrap();
    assert_eq!(zone(&mut qp, z2).state, ZoneState::ExplicitlyOpened);
    qp.zone_action(&ns, z2, ZoneAction::Close).unwrap();
    assert_eq!(
        zone(&mut qp, z2).state,
        ZoneState::Closed,
        "closed, nothing written"
    );
    qp.zone_action(&ns, z2, ZoneAction::Finish).unwrap();
    let d = zone(&mut qp, z2);
    assert_eq!(d.state, ZoneState::Full);
    assert_eq!(
        d.write_pointer,
        u64::MAX,
        "QEMU reports a full zone's pointer as all ones"
    );
    named(
        qp.zone_append(&ns, z2, &a, false).map(|_| ()),
        "Zone Is Full",
    );
    named(
        qp.zone_action(&ns, z2, ZoneAction::Open),
        "Invalid Zone State Transition",
    );
    named(
        qp.zone_action(&ns, 3 * zb, ZoneAction::Close),
        "Invalid Zone State Transition",
    );
    named(
        qp.zone_action(&ns, 3 * zb, ZoneAction::Offline),
        "Invalid Zone State Transition",
    );
    qp.zone_action(&ns, z2, ZoneAction::Reset).unwrap();
    let d = zone(&mut qp, z2);
    assert_eq!((d.state, d.write_pointer), (ZoneState::Empty, z2));
    // A reset zone reads zeroes (QEMU zeroes it in the image).
    qp.zone_action(&ns, 0, ZoneAction::Reset).unwrap();
    qp.read(&ns, 0, &mut got).unwrap();
    assert!(
        got.iter().all(|&b| b == 0),
        "zone 0 reads zeroes after its reset"
    );
    let full = qp.report_zones(&ns, 0, ReportFilter::Full, 16).unwrap();
    assert!(full.is_empty());
    let open = qp
        .report_zones(&ns, 0, ReportFilter::ImplicitlyOpened, 16)
        .unwrap();
    assert_eq!(open.iter().map(|d| d.start).collect::<Vec<_>>(), [zb]);

    // The limits: 8 open, 14 active.
    qp.zone_action_all(&ns, ZoneAction::Reset).unwrap();
    for i in 0..8 {
        qp.zone_action(&ns, i * zb, ZoneAction::Open).unwrap();
    }
    named(
        qp.zone_action(&ns, 8 * zb, ZoneAction::Open),
        "Too Many Open Zones",
    );
    named(
        qp.zone_append(&ns, 8 * zb, &a, false).map(|_| ()),
        "Too Many Open Zones",
    );
    qp.zone_action_all(&ns, ZoneAction::Close).unwrap();
    for i in 8..14 {
        qp.zone_action(&ns, i * zb, ZoneAction::Open).unwrap();
    }
    named(
        qp.zone_action(&ns, 14 * zb, ZoneAction::Open),
        "Too Many Active Zones",
    );
    named(qp.write(&ns, 14 * zb, &a, false), "Too Many Active Zones");
    let closed = qp.report_zones(&ns, 0, ReportFilter::Closed, 16).unwrap();
    assert_eq!(closed.len(), 8);
    qp.zone_action_all(&ns, ZoneAction::Finish).unwrap();
    let full = qp.report_zones(&ns, 0, ReportFilter::Full, 16).unwrap();
    assert_eq!(full.len(), 14);
    qp.zone_action_all(&ns, ZoneAction::Reset).unwrap();
    let empty = qp.report_zones(&ns, 0, ReportFilter::Empty, 16).unwrap();
    assert_eq!(empty.len() as u64, zones, "every zone empty again");

    // The NVM namespace beside it takes writes anywhere, and no zone
    // command.
    qp.write(&nvm, 100, &data, false).unwrap();
    qp.read(&nvm, 100, &mut back[..8192]).unwrap();
    assert!(back[..8192] == data[..]);
    assert!(matches!(
        qp.zone_action(&nvm, 0, ZoneAction::Reset),
        Err(Error::NotZoned { nsid: 1 })
    ));
}

#[test]
fn controller_memory_buffer_as_data_buffer() {
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let Some(len) = ctrl.cmb_len() else {
        // scripts/test.sh boots the VM with a 16 MiB CMB.
        assert!(
            std::env::var_os("NVME_VM_CMB").is_none(),
            "the VM has a CMB but the controller did not enable it"
        );
        eprintln!("skipped: the controller has no CMB (scripts/vm/run.sh --cmb-mb 16)");
        return;
    };
    assert_eq!(len, 16 << 20);
    let ns = ctrl.namespace(1).unwrap();
    for sgl in [false, true] {
        let mut qp = ctrl
            .queue_pair(QueueConfig {
                sgl,
                ..Default::default()
            })
            .unwrap();
        let data = pattern(42 + sgl as u64, 64 << 10);
        // Write from the CMB.
        let mut cmb = ctrl.cmb_alloc(data.len()).unwrap();
        cmb.write(0, &data).unwrap();
        qp.write_cmb(&ns, 70_000, &cmb, data.len()).unwrap();
        let mut back = vec![0u8; data.len()];
        qp.read(&ns, 70_000, &mut back).unwrap();
        assert!(back == data, "written from the CMB, sgl {sgl}");
        // Read into the CMB.
        let mut into = ctrl.cmb_alloc(data.len()).unwrap();
        qp.read_cmb(&ns, 70_000, &mut into, data.len()).unwrap();
        let mut got = vec![0u8; data.len()];
        into.read(0, &mut got).unwrap();
        assert!(got == data, "read into the CMB, sgl {sgl}");
        assert_ne!(cmb.bus_addr(), into.bus_addr());
    }
    // The CMB keeps working after a controller reset.
    ctrl.reset().unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut into = ctrl.cmb_alloc(4096).unwrap();
    qp.read_cmb(&ns, 70_000, &mut into, 4096).unwrap();
    let mut got = vec![0u8; 4096];
    into.read(0, &mut got).unwrap();
    assert!(got == pattern(43, 64 << 10)[..4096]);
}

#[test]
fn shadow_doorbells_in_use_and_optional() {
    use nvme_vfio::ctrl::{Done, Io};
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    for shadow in [true, false] {
        let config = Config {
            shadow_doorbells: shadow,
            ..Config::default()
        };
        let ctrl = Controller::open(NVME, config).expect("bring-up");
        // QEMU offers Doorbell Buffer Config (OACS bit 8).
        assert_eq!(ctrl.shadow_doorbells(), shadow);
        let ns = ctrl.namespace(1).unwrap();
        let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
        let mut done: Vec<Done> = Vec::new();
        for round in 0..20u64 {
            for i in 0..8u64 {
                let lba = 80_000 + (round * 8 + i) * 8;
                qp.submit(Io::write(&ns, lba, pattern(round * 8 + i, 4096)).tag(i))
                    .unwrap();
            }
            while done.len() < 8 {
                qp.poll(&mut done);
            }
            assert!(done.drain(..).all(|d| d.result.is_ok()));
        }
        let mut back = vec![0u8; 4096];
        qp.read(&ns, 80_000 + 77 * 8, &mut back).unwrap();
        assert!(back == pattern(77, 4096), "shadow {shadow}");
        let (rings, mmio) = qp.doorbell_stats();
        eprintln!("shadow doorbells {shadow}: {rings} publications, {mmio} MMIO writes");
        assert!(rings >= 21);
        if !shadow {
            assert_eq!(mmio, rings);
        }
        // Survives a reset.
        ctrl.reset().unwrap();
        qp.read(&ns, 80_000, &mut back)
            .unwrap_or_else(|_| qp.read(&ns, 80_000, &mut back).unwrap());
        assert!(back == pattern(0, 4096));
    }
}

/// The optional commands of the NVM command set on QEMU's controller:
/// what it supports (7.2: Compare, Dataset Management, Write Zeroes and
/// Copy in ONCS; Verify only in its Commands Supported and Effects log; no
/// Write Uncorrectable, which is then refused before submission), its
/// limits, and each supported command blocking and asynchronous.
#[test]
fn optional_nvm_commands_on_qemus_controller() {
    use nvme_vfio::ctrl::{
        CopyLimits, CopyRange, Done, DsmAttributes, DsmRange, Io, IoBuf, OptionalCommand,
    };
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let ctrl = Controller::open(NVME, Config::default()).expect("bring-up");
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let oncs = ctrl.identify().oncs();
    let supported: Vec<OptionalCommand> = OptionalCommand::ALL
        .into_iter()
        .filter(|&c| ctrl.supports(c))
        .collect();
    eprintln!(
        "QEMU {}: ONCS {oncs:#x}, supported {supported:?}, limits {:?}, copy {:?}",
        ctrl.identify().firmware(),
        ctrl.nvm_limits(),
        ns.copy_limits()
    );
    for c in [
        OptionalCommand::Compare,
        OptionalCommand::DatasetManagement,
        OptionalCommand::WriteZeroes,
        OptionalCommand::Copy,
        OptionalCommand::Verify,
    ] {
        assert!(ctrl.supports(c), "{c} (ONCS {oncs:#x})");
    }
    // QEMU's Verify Size Limit (VSL 7: 512 KiB) and copy limits.
    assert_eq!(ctrl.nvm_limits().verify_bytes, Some(512 << 10));
    assert_eq!(
        ns.copy_limits(),
        CopyLimits {
            mssrl: 128,
            mcl: 128,
            msrc: 127
        }
    );
    let base = 60_000u64;

    // Compare: equal data, any memory and length; a mismatch by name.
    let data = pattern(301, 1 << 20);
    qp.write(&ns, base, &data, false).unwrap();
    qp.compare(&ns, base, &data).unwrap();
    let mut dma = ctrl.dma_alloc(8192).unwrap();
    dma.as_mut_slice()[..8192].copy_from_slice(&data[..8192]);
    qp.compare(&ns, base, &dma.as_slice()[..8192]).unwrap();
    let mut other = data[..8192].to_vec();
    other[4096 + 17] ^= 0x10;
    let e = qp.compare(&ns, base, &other).unwrap_err();
    let status = e.status().expect("a command error");
    assert_eq!((status.sct(), status.sc()), (2, 0x85), "{e}");
    assert!(
        e.to_string()
            .starts_with("Compare failed: Compare Failure (SCT 0x2, SC 0x85"),
        "{e}"
    );

    // Verify: 4096 blocks, split at the 512 KiB limit.
    qp.verify(&ns, 0, 4096).unwrap();
    qp.verify(&ns, ns.blocks() - 1, 1).unwrap();

    // Copy: two ranges, in order, read back.
    let sources = [CopyRange::new(base + 64, 16), CopyRange::new(base, 8)];
    qp.copy(&ns, &sources, base + 3000).unwrap();
    let mut back = vec![0u8; 24 * 512];
    qp.read(&ns, base + 3000, &mut back).unwrap();
    assert!(back[..16 * 512] == data[64 * 512..80 * 512]);
    assert!(back[16 * 512..] == data[..8 * 512]);
    // Over QEMU's limits: refused before submission.
    let e = qp
        .copy(&ns, &[CopyRange::new(base, 129)], base + 3000)
        .unwrap_err();
    assert!(
        matches!(e, Error::OverLimit { requested: 129, max: 128, limit, .. } if limit.contains("MSSRL")),
        "{e}"
    );
    let e = qp
        .copy(&ns, &[CopyRange::new(base, 100); 2], base + 3000)
        .unwrap_err();
    assert!(
        matches!(e, Error::OverLimit { limit, .. } if limit.contains("MCL")),
        "{e}"
    );

    // Dataset Management: hints leave the data; a deallocation of several
    // ranges with context attributes completes. Deallocation is advisory:
    // QEMU 7.2 reports DLFEAT "reads as zeroes" for blocks it deallocates,
    // but on the VM's raw image (no discard) keeps their data.
    let ranges: Vec<DsmRange> = (0..4)
        .map(|i| {
            DsmRange::new(base + 3000 + 4 * i, 2)
                .with_attributes(nvme_vfio::nvme::nvm::context::SEQUENTIAL_READ)
        })
        .collect();
    let hints = DsmAttributes {
        deallocate: false,
        integral_read: true,
        integral_write: true,
    };
    qp.dataset_management(&ns, &ranges, hints).unwrap();
    qp.read(&ns, base + 3000, &mut back).unwrap();
    assert!(back[..16 * 512] == data[64 * 512..80 * 512], "hints only");
    let dealloc = DsmAttributes {
        deallocate: true,
        ..hints
    };
    qp.dataset_management(&ns, &ranges, dealloc).unwrap();
    let many: Vec<DsmRange> = (0..300)
        .map(|i| DsmRange::new(base + 5000 + 2 * i, 1))
        .collect();
    qp.dataset_management(&ns, &many, DsmAttributes::DEALLOCATE)
        .unwrap();
    let dlfeat = ctrl.identify_namespace(1).unwrap().dlfeat();
    qp.read(&ns, base + 3000, &mut back).unwrap();
    let zeroed = (0..4).all(|i| {
        let at = (4 * i * 512) as usize;
        back[at..at + 1024].iter().all(|&b| b == 0)
    });
    eprintln!("DLFEAT {dlfeat:#x}; the deallocated blocks read as zeroes: {zeroed}");
    assert!(
        back[2 * 512..4 * 512] == data[66 * 512..68 * 512],
        "the blocks between the ranges are kept"
    );

    // Write Uncorrectable: where QEMU lacks it, refused before submission.
    if ctrl.supports(OptionalCommand::WriteUncorrectable) {
        qp.write_uncorrectable(&ns, base + 6000, 4).unwrap();
        let e = qp.verify(&ns, base + 6000, 4).unwrap_err();
        assert_eq!(
            e.status().map(|s| (s.sct(), s.sc())),
            Some((2, 0x81)),
            "{e}"
        );
        qp.write(&ns, base + 6000, &data[..4 * 512], false).unwrap();
    } else {
        let e = qp.write_uncorrectable(&ns, base + 6000, 4).unwrap_err();
        assert!(
            matches!(
                e,
                Error::UnsupportedCommand {
                    command: OptionalCommand::WriteUncorrectable
                }
            ),
            "{e}"
        );
        let (e, _) = qp
            .submit(Io::write_uncorrectable(&ns, base + 6000, 4))
            .unwrap_err();
        assert!(matches!(e, Error::UnsupportedCommand { .. }), "{e}");
    }

    // Every supported one asynchronously, in flight together.
    let requests = [
        Io::compare(&ns, base, data[..64 * 512].to_vec()).tag(1),
        Io::compare(&ns, base, other.clone()).tag(2),
        Io::verify(&ns, 0, 3000).tag(3),
        Io::copy(&ns, &[CopyRange::new(base + 128, 32)], base + 4000).tag(4),
        Io::dataset_management(&ns, &[DsmRange::new(base + 4500, 8)], dealloc).tag(5),
    ];
    for io in requests {
        qp.submit(io).map_err(|(e, _)| e).unwrap();
    }
    let mut done: Vec<Done> = Vec::new();
    while done.len() < 5 {
        qp.poll(&mut done);
    }
    done.sort_by_key(|d| d.tag);
    for d in done {
        match d.tag {
            2 => {
                let s = d.result.unwrap_err().status().unwrap();
                assert_eq!((s.sct(), s.sc()), (2, 0x85));
            }
            3 => {
                d.result.unwrap();
                assert!(matches!(d.buf, IoBuf::Raw));
            }
            t => d.result.unwrap_or_else(|e| panic!("tag {t}: {e}")),
        }
    }
    let mut copied = vec![0u8; 32 * 512];
    qp.read(&ns, base + 4000, &mut copied).unwrap();
    assert!(copied == data[128 * 512..160 * 512]);
}

/// QEMU's controller reports an error event (Error Status, Invalid
/// Doorbell Register, log page 01h) for a doorbell write to a submission
/// queue that does not exist; `poll_events` hands it over after reading
/// the Error Information log (QEMU keeps no entries: the event's are
/// empty), and that read unmasks error events: a second bad write is a
/// second event. The write goes through the BAR the driver runs on (the
/// controller is opened on that mapping with `with_backend`).
#[test]
fn an_invalid_doorbell_write_is_an_error_event() {
    use nvme_vfio::ctrl::{AsyncEvent, AsyncEventKind};
    use nvme_vfio::mem::DmaSpace;
    use nvme_vfio::nvme::regs::sq_tail_doorbell;
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    if !in_vm() {
        return;
    }
    let _g = DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let dev = nvme_vfio::vfio::Device::open(NVME).expect("open the VFIO device");
    dev.enable_memory_space().unwrap();
    dev.enable_bus_master().unwrap();
    let bar = Arc::new(dev.map_bar(0).unwrap());
    let config = Config::default();
    let space = DmaSpace::for_container(dev.container().clone(), config.space);
    // SAFETY: `space` is the container of the device behind `bar`, and
    // nothing else drives the controller: the test's own writes below go
    // to the doorbell of a queue that does not exist.
    let ctrl =
        unsafe { Controller::with_backend(bar.clone(), space, config, None) }.expect("bring-up");
    assert!(ctrl.poll_events().unwrap().is_empty());
    let stride = ctrl.cap().doorbell_stride();
    // I/O queue 1 is created with the first queue pair: none yet.
    let doorbell = sq_tail_doorbell(1, stride);
    let want = AsyncEvent {
        kind: AsyncEventKind::Error,
        info: 0,
        log_page: 0x01,
        errors: Vec::new(),
    };
    for round in 0..2 {
        bar.write32(doorbell, 1).unwrap();
        let start = Instant::now();
        let events = loop {
            let e = ctrl.poll_events().unwrap();
            if !e.is_empty() || start.elapsed() > Duration::from_secs(5) {
                break e;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(events, vec![want.clone()], "round {round}");
    }
    // The controller goes on.
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut b = vec![0u8; 4096];
    qp.read(&ns, 0, &mut b).unwrap();
    assert_eq!(qp.device_errors(), 0);
}
