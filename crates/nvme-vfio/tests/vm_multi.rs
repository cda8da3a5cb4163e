//! Two controllers in one DMA space (one VFIO container for both IOMMU
//! groups), through real VFIO: memory registered or allocated once is
//! used by both, and nvme-bench runs on both at once.
//!
//! Runs in the VM's `two-controllers` scenario (scripts/test.sh:
//! `scripts/vm/run.sh --controllers 2`, nvme-bench's path in
//! `NVME_BENCH`); elsewhere it says it is skipped.

use std::process::Command;

use nvme_vfio::ctrl::{Config, Controller, Io, QueueConfig};

/// The NVMe functions on vfio-pci, sorted.
fn nvme_on_vfio() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/bus/pci/drivers/vfio-pci") else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(':') && n.contains('.'))
        .filter(|n| {
            std::fs::read_to_string(format!("/sys/bus/pci/devices/{n}/class"))
                .is_ok_and(|c| c.trim() == "0x010802")
        })
        .collect();
    v.sort();
    v
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9) ^ seed.wrapping_mul(0x85eb_ca6b)) as u8)
        .collect()
}

fn scenario() -> bool {
    if std::env::var("NVME_VM_SCENARIO").as_deref() != Ok("two-controllers") {
        eprintln!(
            "skipped: needs the VM's two-controllers scenario (scripts/vm/run.sh --controllers 2)"
        );
        return false;
    }
    true
}

/// One registered buffer: controller A writes it (a read from A's disk),
/// controller B reads it (a write to B's disk); B's disk then holds what A's
/// did. A DMA buffer allocated through A is written through B.
#[test]
fn one_registered_buffer_used_by_two_controllers() {
    if !scenario() {
        return;
    }
    let fns = nvme_on_vfio();
    assert_eq!(fns.len(), 2, "two NVMe functions on vfio-pci: {fns:?}");
    let a = Controller::open(&fns[0], Config::default()).expect("controller A");
    let b = Controller::open_in(&fns[1], a.space(), Config::default()).expect("controller B");
    assert!(
        std::sync::Arc::ptr_eq(a.space(), b.space()),
        "one DMA space"
    );
    let (ns_a, ns_b) = (a.namespace(1).unwrap(), b.namespace(1).unwrap());
    let mut qa = a.queue_pair(QueueConfig::default()).unwrap();
    let mut qb = b.queue_pair(QueueConfig::default()).unwrap();

    let len = 64 << 10;
    let data = pattern(1, len);
    qa.write(&ns_a, 100, &data, false).unwrap();

    // Registered user memory, shared by both controllers.
    let map = 2 << 20;
    // SAFETY: a fresh private anonymous mapping at an address of the
    // kernel's choosing.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    assert_ne!(ptr, libc::MAP_FAILED);
    let ptr = ptr.cast::<u8>();
    // SAFETY: the mapping is ours and outlives the registration (dropped
    // below, before the munmap); only the blocking calls below lend it to
    // the devices, and they return before it is touched again.
    let reg = unsafe { a.space().register(ptr, map) }.expect("register");
    {
        // SAFETY: inside the mapping; no request is in flight on it now.
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        buf.fill(0);
        // Controller A writes the registered memory...
        qa.read(&ns_a, 100, buf).unwrap();
        assert!(buf == data.as_slice(), "A read into the registered buffer");
        // ...and controller B reads it.
        qb.write(&ns_b, 300, buf, false).unwrap();
    }
    let mut back = vec![0u8; len];
    qb.read(&ns_b, 300, &mut back).unwrap();
    assert!(back == data, "B wrote from the registered buffer");
    drop(reg);
    // SAFETY: unregistered, no request in flight: the mapping goes.
    unsafe { libc::munmap(ptr.cast(), map) };

    // A DMA buffer allocated through A, written to B's disk.
    let mut dma = a.dma_alloc(4096).unwrap();
    dma.as_mut_slice().copy_from_slice(&pattern(2, 4096));
    qb.submit(Io::write(&ns_b, 500, dma).tag(1))
        .map_err(|(e, _)| e)
        .unwrap();
    let mut done = Vec::new();
    while done.is_empty() {
        qb.poll(&mut done);
    }
    assert!(done[0].result.is_ok(), "{:?}", done[0].result);
    let mut back = vec![0u8; 4096];
    qb.read(&ns_b, 500, &mut back).unwrap();
    assert!(back == pattern(2, 4096));
}

/// nvme-bench with both controllers: one DMA space, both run at once with
/// verify on, and the total is reported.
#[test]
fn nvme_bench_runs_two_controllers_at_once() {
    if !scenario() {
        return;
    }
    let fns = nvme_on_vfio();
    assert_eq!(fns.len(), 2, "{fns:?}");
    let bench = std::env::var("NVME_BENCH").expect("NVME_BENCH: path of nvme-bench");
    let out = Command::new(&bench)
        .args(["--device", &fns[0], "--device", &fns[1]])
        .args(["--rw", "randrw", "--qd", "16", "--ios", "4000", "--verify"])
        .args(["--size", "16m", "--no-progress"])
        .output()
        .expect("run nvme-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("total over 2 devices"), "{stdout}");
    for f in &fns {
        assert!(stdout.contains(f.as_str()), "{f} reported: {stdout}");
    }
    assert_eq!(stdout.matches("no mismatch").count(), 2, "{stdout}");
}
