//! The C API driven as a C program would, against the software
//! controller: data round trips through each kind of memory, completions
//! and their tags, the statuses of refusals and failures with their
//! messages, interrupt mode, and handles closed in any order.

use std::ffi::{c_void, CStr, CString};
use std::ptr::null_mut;
use std::time::Duration;

use nvme_sim::{Config as SimConfig, FaultAction, FaultRule, Match, SimController};
use nvme_vfio::ctrl::{Config, Controller};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::nvme::cmd::Status;
use nvmevfio::*;

fn last_error() -> String {
    // SAFETY: a NUL-terminated string valid until the next call.
    unsafe { CStr::from_ptr(nvmev_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn open(addr: &str, opts: Option<NvmevCtrlOpts>) -> Result<*mut NvmevCtrl, i32> {
    let a = CString::new(addr).unwrap();
    let mut c = null_mut();
    let o = opts.as_ref().map_or(std::ptr::null(), |o| o as *const _);
    // SAFETY: a C string, NULL or valid options, a valid out pointer.
    let rc = unsafe { nvmev_ctrl_open(a.as_ptr(), o, &mut c) };
    if rc == 0 {
        Ok(c)
    } else {
        Err(rc)
    }
}

fn qpair(c: *mut NvmevCtrl, depth: u16) -> *mut NvmevQpair {
    let mut q = null_mut();
    let opts = NvmevQpairOpts { depth };
    // SAFETY: a live controller, valid options and out pointer.
    let rc = unsafe { nvmev_qpair_create(c, &opts, &mut q) };
    assert_eq!(rc, 0, "{}", last_error());
    q
}

/// Polls until `n` completions arrived (at most 10 s).
fn reap(q: *mut NvmevQpair, n: usize) -> Vec<NvmevCompletion> {
    let mut all = Vec::new();
    let mut buf = [NvmevCompletion::default(); 4];
    let start = std::time::Instant::now();
    while all.len() < n {
        // SAFETY: a live queue pair; `buf` holds 4 entries.
        let k = unsafe { nvmev_qpair_wait(q, buf.as_mut_ptr(), buf.len(), 100) };
        assert!(k >= 0, "{k}: {}", last_error());
        all.extend_from_slice(&buf[..k as usize]);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "completions missing"
        );
    }
    all
}

#[test]
fn data_round_trips_through_dma_registered_and_plain_memory() {
    let c = open("sim", None).unwrap();
    let mut info = NvmevNsInfo::default();
    // SAFETY: live controller, valid out pointer.
    assert_eq!(unsafe { nvmev_ns_info(c, 1, &mut info) }, 0);
    assert_eq!((info.blocks, info.block_size, info.zoned), (131072, 512, 0));
    assert_eq!(info.max_transfer, 128 << 10);
    let mut ids = [0u32; 4];
    // SAFETY: `ids` holds 4.
    assert_eq!(unsafe { nvmev_ctrl_namespaces(c, ids.as_mut_ptr(), 4) }, 1);
    assert_eq!(ids[0], 1);

    let q = qpair(c, 32);
    // SAFETY: a live controller.
    let dma = unsafe { nvmev_dma_alloc(c, 8192) }.cast::<u8>();
    assert!(!dma.is_null());
    // SAFETY: 8192 bytes of DMA memory, no I/O on it yet.
    let d = unsafe { std::slice::from_raw_parts_mut(dma, 8192) };
    assert!(d.iter().all(|&b| b == 0), "zeroed");
    d.iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = i as u8 ^ 0x5a);
    let want = d.to_vec();
    // SAFETY: the memory stays valid and unwritten until its completion.
    assert_eq!(unsafe { nvmev_write(q, 1, 64, dma.cast(), 8192, 7) }, 0);
    // SAFETY: a live queue pair.
    assert_eq!(unsafe { nvmev_qpair_inflight(q) }, 1);
    let done = reap(q, 1);
    assert_eq!(
        done[0],
        NvmevCompletion {
            tag: 7,
            ..Default::default()
        }
    );

    // Registered memory of the caller's own, then plain heap memory
    // (mapped per I/O).
    let mut mine = vec![0u8; 16384];
    let reg = mine.as_mut_ptr().cast::<c_void>();
    // SAFETY: `mine` outlives the registration.
    assert_eq!(unsafe { nvmev_register(c, reg, mine.len()) }, 0);
    // SAFETY: as above; registering twice is refused.
    assert_eq!(unsafe { nvmev_register(c, reg, mine.len()) }, -libc::EINVAL);
    let mut plain = vec![0u8; 8192];
    // SAFETY: both buffers stay valid and untouched until their
    // completions.
    unsafe {
        assert_eq!(nvmev_read(q, 1, 64, reg, 8192, 8), 0);
        assert_eq!(nvmev_read(q, 1, 64, plain.as_mut_ptr().cast(), 8192, 9), 0);
    }
    let mut tags: Vec<u64> = reap(q, 2).iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, [8, 9]);
    assert_eq!(&mine[..8192], &want[..]);
    assert_eq!(plain, want);
    // SAFETY: no I/O in flight on it.
    assert_eq!(unsafe { nvmev_unregister(c, reg) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { nvmev_unregister(c, reg) }, -libc::EINVAL);

    // Flush, write zeroes and deallocate return their outcome and deliver
    // a completion.
    // SAFETY: a live queue pair.
    unsafe {
        assert_eq!(nvmev_flush(q, 1, 20), 0);
        assert_eq!(nvmev_write_zeroes(q, 1, 64, 8, 21), 0);
        assert_eq!(nvmev_deallocate(q, 1, 72, 8, 22), 0);
    }
    let mut tags: Vec<u64> = reap(q, 3).iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, [20, 21, 22]);
    // SAFETY: as before.
    let rc = unsafe { nvmev_read(q, 1, 64, plain.as_mut_ptr().cast(), 8192, 23) };
    assert_eq!(rc, 0);
    reap(q, 1);
    assert!(plain.iter().all(|&b| b == 0));

    // SAFETY: no I/O in flight; handles destroyed once.
    unsafe {
        nvmev_dma_free(c, dma.cast());
        nvmev_qpair_destroy(q);
        nvmev_ctrl_close(c);
    }
}

#[test]
fn refusals_return_their_errno_and_say_why() {
    assert_eq!(open("0000:ff:1f.7", None), Err(-libc::ENODEV));
    assert!(last_error().contains("0000:ff:1f.7"), "{}", last_error());
    assert_eq!(open("not-an-address", None), Err(-libc::EINVAL));
    assert!(!last_error().is_empty());
    let mut c = null_mut();
    // SAFETY: NULL address: refused before use.
    let rc = unsafe { nvmev_ctrl_open(std::ptr::null(), std::ptr::null(), &mut c) };
    assert_eq!(rc, -libc::EINVAL);

    let c = open("sim", None).unwrap();
    let mut info = NvmevNsInfo::default();
    // SAFETY: a live controller.
    assert_eq!(unsafe { nvmev_ns_info(c, 9, &mut info) }, -libc::ENOENT);
    let q = qpair(c, 4);
    let mut b = vec![0u8; 1 << 20];
    let p = b.as_mut_ptr().cast::<c_void>();
    // SAFETY: `b` outlives every request (all refused, or reaped below).
    unsafe {
        // Not whole blocks; past the end; no such namespace; NULL.
        assert_eq!(nvmev_read(q, 1, 0, p, 100, 1), -libc::EINVAL);
        assert_eq!(nvmev_read(q, 1, 131072, p, 512, 1), -libc::EINVAL);
        assert!(last_error().contains("past the end"), "{}", last_error());
        assert_eq!(nvmev_read(q, 2, 0, p, 512, 1), -libc::ENOENT);
        assert_eq!(nvmev_read(q, 1, 0, null_mut(), 512, 1), -libc::EINVAL);
        assert_eq!(nvmev_read(null_mut(), 1, 0, p, 512, 1), -libc::EINVAL);
        // 1 MiB is 8 commands of 128 KiB: never fits 3 slots.
        assert_eq!(nvmev_read(q, 1, 0, p, 1 << 20, 1), -libc::E2BIG);
        // Three requests fill the queue (4 entries); the fourth waits.
        for t in 0..3 {
            assert_eq!(
                nvmev_read(q, 1, t * 8, p.add(t as usize * 4096), 4096, t),
                0
            );
        }
        assert_eq!(nvmev_read(q, 1, 0, p, 4096, 3), -libc::EAGAIN);
    }
    assert_eq!(reap(q, 3).len(), 3);
    // A dead controller has its own status: its requests' memory must be
    // leaked, unlike that of a controller merely disabled or closed.
    assert_eq!(status_of(&nvme_vfio::Error::Dead), -libc::ENOTRECOVERABLE);
    assert_eq!(status_of(&nvme_vfio::Error::Closed), -libc::ESHUTDOWN);
    // SAFETY: static strings.
    let s = unsafe { CStr::from_ptr(nvmev_strerror(-libc::EAGAIN)) };
    assert!(s.to_str().unwrap().contains("try again"));
    // SAFETY: handles destroyed once.
    unsafe {
        nvmev_qpair_destroy(q);
        nvmev_ctrl_close(c);
    }
}

/// A command the controller fails completes with -EIO, its NVMe status,
/// and the driver's message naming it.
#[test]
fn a_failed_command_carries_its_nvme_status() {
    let sim = SimController::new(SimConfig::default()).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let config = Config {
        space: SpaceConfig { hugepages: false },
        io_queues: 2,
        ..Config::default()
    };
    // SAFETY: the registers, IOMMU and PCI function belong to `sim`.
    let ctrl = unsafe {
        Controller::with_backend(sim.registers(), space, config, Some(sim.pci_function()))
    }
    .unwrap();
    // SAFETY: `sim` outlives the handle and its queue pair (dropped last).
    let c = unsafe { handle_for(ctrl) };
    let q = qpair(c, 16);
    sim.inject(FaultRule::next(
        Match::io(),
        FaultAction::Status(Status::new(2, 0x81, true)),
    ));
    let mut b = vec![0u8; 4096];
    // SAFETY: `b` outlives the request.
    let rc = unsafe { nvmev_read(q, 1, 0, b.as_mut_ptr().cast(), 4096, 77) };
    assert_eq!(rc, 0);
    let done = reap(q, 1);
    assert_eq!(done[0].tag, 77);
    assert_eq!(done[0].status, -libc::EIO);
    assert_eq!(done[0].nvme_status & 0x7ff, 0x281, "SCT 2, SC 0x81");
    assert_ne!(done[0].nvme_status & 1 << 14, 0, "Do Not Retry");
    assert!(
        last_error().contains("Unrecovered Read Error"),
        "{}",
        last_error()
    );
    // SAFETY: handles destroyed once, before `sim` goes.
    unsafe {
        nvmev_qpair_destroy(q);
        nvmev_ctrl_close(c);
    }
}

/// In interrupt mode the queue pair has an eventfd that becomes readable
/// when a completion is posted.
#[test]
fn interrupt_mode_gives_an_eventfd_to_wait_on() {
    let c = open(
        "sim",
        Some(NvmevCtrlOpts {
            interrupts: 1,
            io_queues: 2,
            ..Default::default()
        }),
    )
    .unwrap();
    let q = qpair(c, 16);
    // SAFETY: a live queue pair.
    let fd = unsafe { nvmev_qpair_fd(q) };
    assert!(fd >= 0);
    let mut b = vec![0u8; 4096];
    // SAFETY: `b` outlives the request.
    let rc = unsafe { nvmev_read(q, 1, 0, b.as_mut_ptr().cast(), 4096, 5) };
    assert_eq!(rc, 0);
    // SAFETY: a live queue pair.
    unsafe { nvmev_qpair_ring(q) };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    assert_eq!(n, 1, "the eventfd became readable");
    // SAFETY: a live queue pair.
    assert!(unsafe { nvmev_qpair_clear_interrupt(q) } >= 1);
    let mut out = [NvmevCompletion::default(); 2];
    // SAFETY: `out` holds 2.
    assert_eq!(unsafe { nvmev_qpair_poll(q, out.as_mut_ptr(), 2) }, 1);
    assert_eq!(out[0].tag, 5);

    // A polled controller has none.
    let p = open("sim", None).unwrap();
    let pq = qpair(p, 16);
    // SAFETY: live handles, destroyed once.
    unsafe {
        assert_eq!(nvmev_qpair_fd(pq), -1);
        nvmev_qpair_destroy(pq);
        nvmev_ctrl_close(p);
        nvmev_qpair_destroy(q);
        nvmev_ctrl_close(c);
    }
}

/// Closing the controller before its queue pairs is safe: the queue pair
/// still works, and the controller shuts down when it goes.
#[test]
fn a_controller_closed_before_its_queue_pair_lives_on_until_it_goes() {
    let c = open("sim", None).unwrap();
    let q = qpair(c, 16);
    // SAFETY: closed once; the queue pair holds its own reference.
    unsafe { nvmev_ctrl_close(c) };
    let mut b = vec![0u8; 4096];
    // SAFETY: `b` outlives the request.
    let rc = unsafe { nvmev_read(q, 1, 0, b.as_mut_ptr().cast(), 4096, 1) };
    assert_eq!(rc, 0);
    assert_eq!(reap(q, 1)[0].status, 0);
    // SAFETY: destroyed once.
    unsafe { nvmev_qpair_destroy(q) };
    // NULL handles are ignored.
    // SAFETY: NULL.
    unsafe {
        nvmev_qpair_destroy(null_mut());
        nvmev_ctrl_close(null_mut());
    }
}
