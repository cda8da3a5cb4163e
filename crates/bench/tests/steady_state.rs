//! The benchmark loop and the driver in steady state (polled, nvme-sim in
//! inline null mode, so the device runs on the I/O thread and nothing else
//! is at work) make no heap allocation and no system call per I/O, and
//! publish one submission doorbell per batch; so does asynchronous I/O
//! (a future per request, `AsyncQueuePair`) driven by a minimal executor.
//!
//! Shown differentially: runs of N1 and N2 I/Os on the same controller make
//! exactly as many allocations and system calls (setup and teardown are the
//! same in both), counted by a counting global allocator and by a seccomp
//! filter that reports every system call of the run's threads to a
//! supervisor thread, which counts it and lets it proceed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use nvme_bench::perf::{run, Options, Progress, Rw, SimOptions, Stop, Target};
use nvme_vfio::ctrl::{AsyncQueuePair, Io, IoBuf, IoFuture, Namespace, QueueConfig};
use std::future::Future;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counter is a relaxed atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's valid layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's valid layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// System calls seen, by number.
static SYSCALLS: [AtomicU64; 512] = [const { AtomicU64::new(0) }; 512];

fn syscalls_total() -> u64 {
    SYSCALLS.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

/// A copy of the counters, on the stack: taking it allocates nothing.
fn syscalls_snapshot() -> [u64; 512] {
    std::array::from_fn(|i| SYSCALLS[i].load(Ordering::Relaxed))
}

/// Installs a filter on the calling thread (and the threads it starts)
/// that sends every system call to a user-space listener; returns the
/// listener's descriptor.
fn install_notify_filter() -> Result<RawFd, std::io::Error> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut filter = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: libc::SECCOMP_RET_USER_NOTIF,
    }];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points to a valid one-instruction program for the
    // duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd as RawFd)
}

/// The supervisor: counts each notified system call and lets it run.
fn supervise(listener: &AtomicI32, stop: &AtomicBool) {
    let fd = loop {
        let fd = listener.load(Ordering::Acquire);
        if fd >= 0 {
            break fd;
        }
        if fd == -2 || stop.load(Ordering::Acquire) {
            return;
        }
        std::hint::spin_loop();
    };
    while !stop.load(Ordering::Acquire) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 20) } <= 0 || pfd.revents & libc::POLLIN == 0 {
            continue;
        }
        // SAFETY: seccomp_notif is plain data; the kernel wants it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: `req` is a valid seccomp_notif for the kernel to fill.
        if unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_RECV, &mut req) } != 0 {
            continue;
        }
        let nr = req.data.nr as usize;
        if let Some(c) = SYSCALLS.get(nr) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: `resp` is a valid response for the notification just
        // received; if the caller went away the ioctl fails harmlessly.
        unsafe { libc::ioctl(fd, libc::SECCOMP_IOCTL_NOTIF_SEND, &mut resp) };
    }
    // SAFETY: the listener is ours; nothing uses it after the loop.
    unsafe { libc::close(fd) };
}

fn options(qd: u16, ios: u64) -> Options {
    Options {
        rw: Rw::Randread,
        qd,
        stop: Stop::Ios(ios),
        ..Options::default()
    }
}

struct Counts {
    qd: u16,
    ios: u64,
    sq_doorbells_per_io: f64,
    allocations: u64,
    syscalls: u64,
    by_number: [u64; 512],
}

/// The tests count process-wide: one at a time, setup included.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `workload(state, n)` for N1 and N2 I/Os at queue depths 32, 128
/// and 1 on a thread whose system calls are counted, with a state made by
/// `setup(qd)` on that thread before (and a first run of 1,000 I/Os), and
/// checks that the two runs of each depth made as many heap allocations
/// and system calls, and `max_doorbells(qd)` SQ doorbells per I/O at most.
/// `workload` returns the I/Os done and the SQ doorbells per I/O.
fn check_steady_state<S>(
    what: &str,
    setup: impl Fn(u16) -> Result<S, String> + Sync,
    workload: impl Fn(&mut S, u64) -> Result<(u64, f64), String> + Sync,
    max_doorbells: impl Fn(u16) -> f64,
) {
    let listener = AtomicI32::new(-1);
    let stop = AtomicBool::new(false);
    let (n1, n2) = (5_000u64, 55_000u64);
    let counts: Result<Vec<Counts>, String> = std::thread::scope(|s| {
        let sup = s.spawn(|| supervise(&listener, &stop));
        let runner = s.spawn(|| {
            match install_notify_filter() {
                Ok(fd) => listener.store(fd, Ordering::Release),
                Err(e) => {
                    listener.store(-2, Ordering::Release);
                    return Err(format!("seccomp user notification unavailable: {e}"));
                }
            }
            // Nothing the measured windows keep may grow the heap between
            // them: room for every result is made first.
            // The counters work: they see one allocation and one system
            // call made on purpose.
            let (a0, s0) = (ALLOCATIONS.load(Ordering::Relaxed), syscalls_total());
            drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
            // SAFETY: getppid takes no arguments and cannot fail.
            std::hint::black_box(unsafe { libc::getppid() });
            if ALLOCATIONS.load(Ordering::Relaxed) == a0 || syscalls_total() == s0 {
                return Err("the allocation and system call counters see nothing".into());
            }
            let mut out = Vec::with_capacity(6);
            let mut state = None;
            for (qd, n) in [(32, n1), (32, n2), (128, n1), (128, n2), (1, n1), (1, n2)] {
                if n == n1 {
                    // A first run of each depth inside the filter: the
                    // first run on a new thread, or with larger buffers,
                    // makes first-use system calls (heap growth) of its own.
                    state = None;
                    let s = state.insert(setup(qd)?);
                    // Twice: the allocator's own thresholds (glibc's mmap
                    // and trim thresholds move when large blocks are
                    // freed) settle after a run or two.
                    workload(s, 1000)?;
                    workload(s, 1000)?;
                }
                let Some(st) = state.as_mut() else {
                    return Err("no state".into());
                };
                let (a0, s0) = (ALLOCATIONS.load(Ordering::Relaxed), syscalls_total());
                let before = syscalls_snapshot();
                // Everything the run allocates is dropped inside the
                // window: every run leaves the heap as it found it.
                let (ios, sq_doorbells_per_io) = workload(st, n)?;
                let after = syscalls_snapshot();
                out.push(Counts {
                    qd,
                    ios,
                    sq_doorbells_per_io,
                    allocations: ALLOCATIONS.load(Ordering::Relaxed) - a0,
                    syscalls: syscalls_total() - s0,
                    by_number: std::array::from_fn(|i| after[i] - before[i]),
                });
            }
            Ok(out)
        });
        let r = runner
            .join()
            .unwrap_or_else(|_| Err("runner panicked".into()));
        stop.store(true, Ordering::Release);
        sup.join().unwrap();
        r
    });
    let counts = counts.unwrap();
    for pair in counts.chunks(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let qd = a.qd;
        assert_eq!(a.ios, n1, "{what}");
        assert_eq!(b.ios, n2, "{what}");
        assert_eq!(
            a.allocations,
            b.allocations,
            "{what}, qd {qd}: {} more I/Os made {} more heap allocations",
            n2 - n1,
            b.allocations as i64 - a.allocations as i64
        );
        let extra: Vec<(usize, i64)> = b
            .by_number
            .iter()
            .zip(&a.by_number)
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(nr, (x, y))| (nr, *x as i64 - *y as i64))
            .collect();
        assert_eq!(
            a.syscalls,
            b.syscalls,
            "{what}, qd {qd}: {} more I/Os made more system calls (number, extra): {extra:?}",
            n2 - n1
        );
        let per_io = b.sq_doorbells_per_io;
        assert!(
            per_io <= max_doorbells(qd),
            "{what}, qd {qd}: {per_io} SQ doorbells per I/O"
        );
    }
}

fn inline_null_sim() -> Target {
    let sim = SimOptions {
        null: true,
        inline: true,
        spin: Duration::ZERO,
        ..SimOptions::default()
    };
    Target::sim(&sim, 1).unwrap()
}

#[test]
fn steady_state_allocates_nothing_and_makes_no_system_call_per_io() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let target = inline_null_sim();
    // Warm up once: first-use allocations (thread-locals, the stdout lock,
    // lazily sized vectors) are not the steady state.
    run(&target, &options(32, 1000), &Progress::default()).unwrap();
    check_steady_state(
        "nvme-bench's loop",
        Ok,
        |&mut qd, n| {
            let report =
                run(&target, &options(qd, n), &Progress::default()).map_err(|e| e.to_string())?;
            Ok((report.result.ios, report.result.sq_doorbells_per_io))
        },
        // One submission doorbell per batch: with the device inline every
        // batch is the whole queue depth.
        |qd| 1.0 / qd as f64 + 0.001,
    );
}

/// `qd` reads kept in flight as futures (`AsyncQueuePair`) by a minimal
/// executor, until `n` have completed; returns `n` and the SQ doorbells
/// per I/O. The queue pair, its buffers and the table of futures are
/// made before the window and dropped after it.
fn async_reads(
    aq: &AsyncQueuePair,
    ns: &Namespace,
    futs: &mut Vec<Option<IoFuture>>,
    bufs: &mut Vec<IoBuf>,
    qd: usize,
    n: u64,
) -> Result<u64, String> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut submitted = 0u64;
    let mut done = 0u64;
    futs.clear();
    for k in 0..qd {
        let buf = bufs.pop().ok_or("no buffer")?;
        let f = aq
            .submit(Io::read(ns, k as u64 * 8, buf))
            .map_err(|(e, _)| e.to_string())?;
        futs.push(Some(f));
        submitted += 1;
    }
    while done < n {
        for (k, slot) in futs.iter_mut().enumerate() {
            let Some(f) = slot.as_mut() else { continue };
            if let Poll::Ready((buf, r)) = Pin::new(f).poll(&mut cx) {
                r.map_err(|e| e.to_string())?;
                done += 1;
                *slot = if submitted < n {
                    submitted += 1;
                    let io = Io::read(ns, k as u64 * 8, buf);
                    Some(aq.submit(io).map_err(|(e, _)| e.to_string())?)
                } else {
                    bufs.push(buf);
                    None
                };
            }
        }
        aq.poll();
    }
    Ok(done)
}

#[test]
fn async_io_allocates_nothing_and_makes_no_system_call_per_io() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let target = inline_null_sim();
    let ctrl = target.controller();
    let ns = ctrl.namespace(1).unwrap();
    check_steady_state(
        "async I/O",
        |qd| {
            let qp = ctrl
                .queue_pair(QueueConfig {
                    depth: qd + 1,
                    ..Default::default()
                })
                .map_err(|e| e.to_string())?;
            let qd = usize::from(qd);
            let bufs: Vec<IoBuf> = (0..qd)
                .map(|_| ctrl.dma_alloc(4096).map(IoBuf::from))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
            let aq = AsyncQueuePair::new(qp).map_err(|(e, _)| e.to_string())?;
            Ok((aq, Vec::with_capacity(qd), bufs, qd))
        },
        |(aq, futs, bufs, qd), n| {
            let (d0, _) = aq.doorbell_stats();
            let ios = async_reads(aq, &ns, futs, bufs, *qd, n)?;
            let (d1, _) = aq.doorbell_stats();
            Ok((ios, (d1 - d0) as f64 / ios as f64))
        },
        // A doorbell per poll round at most (the futures polled in a round
        // publish once).
        |_| 1.0 + 0.001,
    );
}
