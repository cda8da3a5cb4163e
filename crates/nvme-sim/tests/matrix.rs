//! The controller matrix: the driver over nvme-sim in the shapes real
//! disks come in (doorbell strides, queue sizes, slow ready, memory page
//! sizes, SGL support, transfer limits, block sizes, one I/O queue,
//! namespace IDs with gaps and namespaces attached later, optional
//! features absent), each running the same data-path and recovery checks.
//!
//! The checks are written once (`check_*`) and run over a table of shapes,
//! one test per shape so that a failure names it. What a check expects is
//! derived from the shape's configuration.

mod common;

use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, NamespaceConfig, SimController};
use nvme_vfio::ctrl::{
    AsyncEventKind, Config as DriverConfig, Controller, Done, Io, Namespace, QueueConfig, QueuePair,
};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::nvme::cmd::{feature, io};
use nvme_vfio::Error;

/// The driver's I/O timeout in the matrix: short, since every shape waits
/// for one command that never completes.
const IO_TIMEOUT: Duration = Duration::from_millis(400);

/// One controller shape and how the driver is run on it.
struct Shape {
    /// The software controller.
    sim: Config,
    /// I/O queues the driver asks for.
    io_queues: u16,
    /// Depth of the queue pair the checks use.
    depth: u16,
    /// The driver's I/O timeout.
    io_timeout: Duration,
}

impl Shape {
    fn new(sim: Config) -> Self {
        Self {
            sim,
            io_queues: 4,
            depth: 32,
            io_timeout: IO_TIMEOUT,
        }
    }

    fn depth(mut self, depth: u16) -> Self {
        self.depth = depth;
        self
    }
}

/// The driver opened on a shape.
struct Ctx {
    // Dropped in this order: the driver shuts the controller down before
    // the model stops.
    ctrl: Controller,
    sim: SimController,
    shape: Shape,
}

impl Ctx {
    fn open(shape: Shape) -> Self {
        let sim = SimController::new(shape.sim.clone()).unwrap();
        let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
        let driver = DriverConfig {
            space: SpaceConfig { hugepages: false },
            io_queues: shape.io_queues,
            io_timeout: shape.io_timeout,
            ..DriverConfig::default()
        };
        let start = Instant::now();
        // SAFETY: the registers, the IOMMU under the DMA space and the PCI
        // function all belong to `sim`, which nothing else drives.
        let ctrl = unsafe {
            Controller::with_backend(sim.registers(), space, driver, Some(sim.pci_function()))
        }
        .unwrap();
        // Bring-up waited for the slow CSTS.RDY instead of failing.
        assert!(
            start.elapsed() >= shape.sim.ready_delay,
            "bring-up did not wait for CSTS.RDY"
        );
        Self { ctrl, sim, shape }
    }

    /// A queue pair of the shape's depth.
    fn queue_pair(&self) -> QueuePair {
        self.queue_pair_of(self.shape.depth)
    }

    fn queue_pair_of(&self, depth: u16) -> QueuePair {
        self.ctrl
            .queue_pair(QueueConfig {
                depth,
                ..QueueConfig::default()
            })
            .unwrap()
    }

    /// The attached namespaces (IDs, in order).
    fn attached(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = (self.shape.sim.namespace_ids().into_iter())
            .zip(&self.shape.sim.namespaces)
            .filter(|(_, n)| n.attached)
            .map(|(id, _)| id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The driver's largest transfer for this shape.
    fn expected_max_transfer(&self) -> u64 {
        match self.shape.sim.mdts {
            0 => 1 << 20,
            m => (4096u64 << self.shape.sim.mps_min << m).min(1 << 20),
        }
    }
}

/// A test pattern, different for every `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        // xorshift64: a pattern that differs at every offset.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Polls until `n` requests completed, within `limit`.
fn wait_done(qp: &mut QueuePair, n: usize, limit: Duration, what: &str) -> Vec<Done> {
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < n {
        qp.poll(&mut done);
        assert!(
            start.elapsed() < limit,
            "{what}: {} of {n} completed in {limit:?}",
            done.len()
        );
    }
    done
}

/// Writes `data` at `lba` with a blocking call, checks what the
/// controller stored, reads it back into fresh memory and compares.
fn write_read_compare(ctx: &Ctx, qp: &mut QueuePair, ns: &Namespace, lba: u64, data: &[u8]) {
    let what = format!("ns {} lba {lba}, {} bytes", ns.id(), data.len());
    qp.write(ns, lba, data, false)
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    let mut stored = vec![0u8; data.len()];
    ctx.sim.read_blocks(ns.id(), lba, &mut stored).unwrap();
    assert!(stored == data, "{what}: the controller holds other bytes");
    let mut back = vec![0u8; data.len()];
    qp.read(ns, lba, &mut back)
        .unwrap_or_else(|e| panic!("{what}: read: {e}"));
    assert!(back == data, "{what}: read back other bytes");
}

/// What the driver sees of the controller: capabilities, queues, the
/// transfer limit, optional features, namespaces.
fn check_identity(ctx: &Ctx) {
    let (c, ctrl) = (&ctx.shape.sim, &ctx.ctrl);
    let cap = ctrl.cap();
    assert_eq!(cap.doorbell_stride(), 4 << c.doorbell_stride, "CAP.DSTRD");
    assert_eq!(cap.max_queue_entries(), c.max_queue_entries, "CAP.MQES");
    assert_eq!(cap.timeout_ms(), u64::from(c.timeout_500ms) * 500, "CAP.TO");
    assert_eq!(
        ctrl.io_queues(),
        ctx.shape.io_queues.min(c.max_io_queues),
        "I/O queues granted"
    );
    assert_eq!(ctrl.max_transfer(), ctx.expected_max_transfer(), "MDTS");
    assert_eq!(
        ctrl.shadow_doorbells(),
        c.doorbell_buffer_config,
        "shadow doorbells"
    );
    assert_eq!(ctrl.cmb_len(), None, "no CMB");
    assert_eq!(ctrl.identify().sgl_supported(), c.sgl, "SGLS");
    assert_eq!(ctrl.identify().nn(), c.nn(), "NN");
    let active = ctx.attached();
    assert_eq!(
        ctrl.active_namespaces().unwrap(),
        active,
        "active namespaces"
    );
    for (id, n) in c.namespace_ids().into_iter().zip(&c.namespaces) {
        if n.attached {
            let ns = ctrl.namespace(id).unwrap();
            assert_eq!(
                (ns.block_size(), ns.blocks()),
                (n.block_size as u64, n.blocks),
                "namespace {id}"
            );
        }
    }
    // Inactive IDs up to NN, and past it, are no namespaces.
    for id in (1..=c.nn() + 1).filter(|id| !active.contains(id)) {
        assert!(
            matches!(ctrl.namespace(id), Err(Error::NoNamespace { nsid }) if nsid == id),
            "namespace {id} is not active: {:?}",
            ctrl.namespace(id)
        );
    }
}

/// As many queue pairs as the controller granted, and not one more.
fn check_queue_count(ctx: &Ctx) {
    let n = ctx.ctrl.io_queues();
    let qps: Vec<QueuePair> = (0..n).map(|_| ctx.queue_pair_of(2)).collect();
    match ctx.ctrl.queue_pair(QueueConfig::default()) {
        Err(Error::NoQueues { max }) => assert_eq!(max, n),
        r => panic!("queue pair {} of {n}: {:?}", n + 1, r.map(|q| q.qid())),
    }
    drop(qps);
}

/// Blocking writes and reads, compared: one block; a vectored request of
/// pieces that are not page aligned nor page multiples; one larger than
/// the maximum transfer.
fn check_blocking(ctx: &Ctx, qp: &mut QueuePair, ns: &Namespace) {
    let bs = ns.block_size() as usize;
    write_read_compare(ctx, qp, ns, 1, &pattern(1, bs));
    write_read_compare(ctx, qp, ns, ns.blocks() - 1, &pattern(2, bs));
    // Vectored: pieces at addresses and of lengths that are not page
    // aligned (byte aligned with SGLs; dword aligned, which PRPs need,
    // without), whole blocks in all.
    let gap = if ctx.shape.sim.sgl { 17 } else { 16 };
    let total = 3 * 4096 + 2 * bs;
    let data = pattern(3, total);
    let cuts = [0, 1000, 1000 + 5000, total];
    let mut backing = vec![0u8; total + 3 * 64];
    let lba = 16;
    {
        let mut pieces: Vec<&[u8]> = Vec::new();
        let mut rest: &mut [u8] = &mut backing;
        for w in cuts.windows(2) {
            let (_, tail) = rest.split_at_mut(gap);
            let (piece, tail) = tail.split_at_mut(w[1] - w[0]);
            piece.copy_from_slice(&data[w[0]..w[1]]);
            pieces.push(piece);
            rest = tail;
        }
        qp.write_vectored(ns, lba, &pieces, false)
            .unwrap_or_else(|e| panic!("vectored write: {e}"));
    }
    let mut stored = vec![0u8; total];
    ctx.sim.read_blocks(ns.id(), lba, &mut stored).unwrap();
    assert!(stored == data, "vectored write stored other bytes");
    let mut backing = vec![0u8; total + 3 * 64];
    {
        let mut pieces: Vec<&mut [u8]> = Vec::new();
        let mut rest: &mut [u8] = &mut backing;
        for w in cuts.windows(2) {
            let (_, tail) = rest.split_at_mut(2 * gap);
            let (piece, tail) = tail.split_at_mut(w[1] - w[0]);
            pieces.push(piece);
            rest = tail;
        }
        qp.read_vectored(ns, lba, &mut pieces)
            .unwrap_or_else(|e| panic!("vectored read: {e}"));
        let back: Vec<u8> = pieces.concat();
        assert!(back == data, "vectored read returned other bytes");
    }
    // Over the maximum transfer: split into several commands.
    let mt = ctx.ctrl.max_transfer() as usize;
    let len = 2 * mt + 3 * bs;
    let lba = 64;
    assert!((lba as usize * bs + len) as u64 <= ns.bytes());
    let reads = ctx.sim.stats().read_commands;
    write_read_compare(ctx, qp, ns, lba, &pattern(4, len));
    assert!(
        ctx.sim.stats().read_commands - reads >= 3,
        "a read over MDTS was split"
    );
}

/// A blocking transfer larger than the queue pair's depth times the
/// maximum transfer: the call runs in waves.
fn check_beyond_depth(ctx: &Ctx, qp: &mut QueuePair, ns: &Namespace) {
    let mt = ctx.ctrl.max_transfer() as usize;
    let bs = ns.block_size() as usize;
    let len = (qp.depth() + 1) * mt + bs;
    assert!(
        len as u64 <= ns.bytes(),
        "namespace too small for the check"
    );
    write_read_compare(ctx, qp, ns, 0, &pattern(5, len));
}

/// Bytes a transfer over the depth times the maximum transfer may take
/// (the deepest queue pairs get a shallower one for the check).
const BEYOND_DEPTH_MAX: u64 = 32 << 20;

/// Asynchronous writes then reads, one block each in pool memory, with
/// the queue pair full: one more is refused with `QueueFull`; everything
/// completes once and the data is what was written.
fn check_async_full_depth(ctx: &Ctx, qp: &mut QueuePair, ns: &Namespace) {
    let depth = qp.depth();
    let bs = ns.block_size() as usize;
    assert!(
        depth as u64 <= ns.blocks(),
        "namespace too small for the check"
    );
    let limit = Duration::from_secs(20);
    for write in [true, false] {
        for i in 0..depth as u64 {
            let mut buf = ctx.ctrl.dma_alloc(bs).unwrap();
            let io = if write {
                buf.as_mut_slice()[..bs].copy_from_slice(&pattern(1000 + i, bs));
                Io::write(ns, i, buf)
            } else {
                Io::read(ns, i, buf)
            };
            qp.submit(io.with_len(bs).tag(i))
                .map_err(|(e, _)| e)
                .unwrap_or_else(|e| panic!("request {i} of {depth}: {e}"));
        }
        let extra = Io::read(ns, 0, vec![0u8; bs]);
        let (e, io) = qp.submit(extra).expect_err("a request past the depth");
        assert!(matches!(e, Error::QueueFull { .. }), "{e}");
        assert_eq!(io.into_buf().len(), bs);
        let done = wait_done(qp, depth, limit, "full depth");
        let mut seen = vec![false; depth];
        for d in done {
            let i = d.tag as usize;
            assert!(!seen[i], "request {i} completed twice");
            seen[i] = true;
            d.result
                .unwrap_or_else(|e| panic!("request {i} of {depth}: {e}"));
            let want = pattern(1000 + i as u64, bs);
            if write {
                let mut stored = vec![0u8; bs];
                ctx.sim.read_blocks(ns.id(), i as u64, &mut stored).unwrap();
                assert!(stored == want, "write {i}");
            } else {
                assert!(d.buf.as_slice()[..bs] == want, "read {i}");
            }
        }
    }
}

/// Flush, and the write cache as the shape has it.
fn check_flush(ctx: &Ctx, qp: &mut QueuePair, ns: &Namespace) {
    qp.flush_cache(ns).unwrap();
    let ctrl = &ctx.ctrl;
    if ctx.shape.sim.volatile_write_cache {
        assert!(ctrl.write_cache().unwrap(), "write cache on by default");
        ctrl.set_write_cache(false).unwrap();
        assert!(!ctrl.write_cache().unwrap());
        qp.flush_cache(ns).unwrap();
        ctrl.set_write_cache(true).unwrap();
        assert!(ctrl.write_cache().unwrap());
    } else {
        assert_eq!(ctrl.identify().vwc() & 1, 0);
        assert!(!ctrl.write_cache().unwrap(), "no write cache: not enabled");
        assert!(
            matches!(ctrl.set_write_cache(true), Err(Error::Unsupported(_))),
            "no write cache to enable"
        );
    }
}

/// Write Zeroes and deallocation where the controller has them (the
/// blocks read back as zeroes); where it does not, the driver refuses them
/// before submission and I/O goes on.
fn check_zeroes_and_deallocate(ctx: &Ctx, qp: &mut QueuePair, ns: &Namespace) {
    let bs = ns.block_size() as usize;
    let lba = 200;
    let c = &ctx.shape.sim;
    for (supported, what) in [
        (c.write_zeroes, "write zeroes"),
        (c.dataset_management, "deallocate"),
    ] {
        write_read_compare(ctx, qp, ns, lba, &pattern(6, 8 * bs));
        let r = if what == "write zeroes" {
            qp.write_zeroes(ns, lba + 2, 4)
        } else {
            qp.deallocate(ns, &[(lba + 2, 4)])
        };
        let mut back = vec![0xa5u8; 8 * bs];
        qp.read(ns, lba, &mut back).unwrap();
        let want = pattern(6, 8 * bs);
        if supported {
            r.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(back[..2 * bs] == want[..2 * bs], "{what}: before the range");
            assert!(
                back[2 * bs..6 * bs].iter().all(|&b| b == 0),
                "{what}: the range reads as zeroes"
            );
            assert!(back[6 * bs..] == want[6 * bs..], "{what}: after the range");
        } else {
            match r {
                Err(Error::UnsupportedCommand { command }) => {
                    assert!(!ctx.ctrl.supports(command), "{what}: {command}")
                }
                r => panic!("{what} on a controller without it: {r:?}"),
            }
            assert!(back == want, "{what} unsupported: the blocks are unchanged");
        }
    }
}

/// A reset from another thread while this one has requests in flight:
/// each request completes exactly once (successfully, or with `Reset`),
/// its buffer back; I/O then works.
fn check_reset_under_io(ctx: &Ctx, qp: &mut QueuePair, ns: &Namespace) {
    let bs = ns.block_size() as usize;
    let inflight = qp.depth().min(16);
    let mut submitted = 0u64;
    let mut completed = 0u64;
    let mut done = Vec::new();
    let limit = Duration::from_secs(10) + 2 * ctx.shape.sim.ready_delay;
    std::thread::scope(|s| {
        let resetter = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(5));
            ctx.ctrl.reset()
        });
        let start = Instant::now();
        // Keep requests in flight until the reset is over, and a little
        // after.
        let mut after = 0;
        while after < 50 {
            if resetter.is_finished() {
                after += 1;
            }
            while qp.inflight() < inflight {
                let i = submitted;
                let io = if i % 2 == 0 {
                    Io::write(ns, i % 64, pattern(i, bs))
                } else {
                    Io::read(ns, i % 64, vec![0u8; bs])
                };
                match qp.submit(io.tag(i)) {
                    Ok(()) => submitted += 1,
                    Err((Error::QueueFull { .. }, _)) => break,
                    // While the reset runs or the queues come back.
                    Err((Error::Reset | Error::QueueUnavailable { .. }, _)) => break,
                    Err((e, _)) => panic!("submit during a reset: {e}"),
                }
            }
            done.clear();
            qp.poll(&mut done);
            for d in done.drain(..) {
                completed += 1;
                assert_eq!(d.buf.len(), bs, "request {}: its buffer is back", d.tag);
                match d.result {
                    Ok(()) => {}
                    Err(Error::Reset) => {}
                    Err(e) => panic!("request {} during a reset: {e}", d.tag),
                }
            }
            assert!(start.elapsed() < limit, "the reset did not end");
            std::thread::sleep(Duration::from_micros(200));
        }
        resetter.join().unwrap().expect("the reset");
    });
    let rest = wait_done(qp, qp.inflight(), limit, "after the reset");
    completed += rest.len() as u64;
    for d in rest {
        assert!(
            matches!(d.result, Ok(()) | Err(Error::Reset)),
            "request {}: {:?}",
            d.tag,
            d.result
        );
    }
    assert_eq!(completed, submitted, "every request completed once");
    assert!(submitted > 0);
    write_read_compare(ctx, qp, ns, 300, &pattern(7, 4 * bs));
}

/// A command the controller never completes: after the I/O timeout it is
/// aborted (or the controller reset) and reported as an error, the other
/// requests complete, and later I/O works.
fn check_timeout(ctx: &Ctx, qp: &mut QueuePair, ns: &Namespace) {
    let bs = ns.block_size() as usize;
    let n = qp.depth().min(4) as u64;
    ctx.sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Drop,
    ));
    let start = Instant::now();
    for i in 0..n {
        qp.submit(Io::read(ns, i, vec![0u8; bs]).tag(i))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let limit = 2 * ctx.shape.io_timeout + Duration::from_secs(5) + 2 * ctx.shape.sim.ready_delay;
    let done = wait_done(qp, n as usize, limit, "timed out command");
    let took = start.elapsed();
    let failed: Vec<&Done> = done.iter().filter(|d| d.result.is_err()).collect();
    assert_eq!(failed.len(), 1, "one request failed: {done:?}");
    assert_eq!(failed[0].tag, 0, "the dropped one");
    assert!(
        matches!(
            &failed[0].result,
            Err(Error::Command { status, .. }) if status.sc() == 0x07
        ) || matches!(failed[0].result, Err(Error::Reset | Error::Timeout { .. })),
        "aborted or reset: {:?}",
        failed[0].result
    );
    assert!(
        took >= ctx.shape.io_timeout,
        "failed before its timeout: after {took:?}"
    );
    assert_eq!(failed[0].buf.len(), bs, "its buffer is back");
    write_read_compare(ctx, qp, ns, 400, &pattern(8, 2 * bs));
}

/// Asynchronous events arrive: a SMART temperature warning (threshold set
/// below the controller's temperature, then back), reported once.
fn check_events(ctx: &Ctx) {
    let ctrl = &ctx.ctrl;
    let t = u32::from(ctrl.smart_log().unwrap().temperature_k);
    ctrl.set_features(feature::TEMPERATURE_THRESHOLD, t - 10)
        .unwrap();
    let start = Instant::now();
    let mut events = Vec::new();
    while events.is_empty() {
        events = ctrl.poll_events().unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no temperature event"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].kind, events[0].info, events[0].log_page),
        (AsyncEventKind::SmartHealth, 1, 0x02)
    );
    ctrl.set_features(feature::TEMPERATURE_THRESHOLD, t + 10)
        .unwrap();
    assert!(ctrl.poll_events().unwrap().is_empty());
}

/// Waits (bounded) for a Namespace Attribute Changed notice.
fn wait_namespace_notice(ctrl: &Controller) {
    let start = Instant::now();
    loop {
        let events = ctrl.poll_events().unwrap();
        if events
            .iter()
            .any(|e| e.kind == AsyncEventKind::Notice && e.info == 0 && e.log_page == 0x04)
        {
            return;
        }
        assert!(
            events.is_empty(),
            "other events than a namespace change: {events:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no Namespace Attribute Changed notice"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Namespaces attached after bring-up: each attach (and a detach) is
/// reported by an event, after which the driver's namespace list and
/// lookups show the change; a new namespace takes I/O.
fn check_attach(ctx: &Ctx, qp: &mut QueuePair) {
    let c = &ctx.shape.sim;
    let detached: Vec<u32> = (c.namespace_ids().into_iter())
        .zip(&c.namespaces)
        .filter(|(_, n)| !n.attached)
        .map(|(id, _)| id)
        .collect();
    let mut active = ctx.attached();
    for &id in &detached {
        assert!(matches!(
            ctx.ctrl.namespace(id),
            Err(Error::NoNamespace { .. })
        ));
        ctx.sim.attach_namespace(id).unwrap();
        wait_namespace_notice(&ctx.ctrl);
        active.push(id);
        active.sort_unstable();
        assert_eq!(ctx.ctrl.active_namespaces().unwrap(), active);
        let ns = ctx.ctrl.namespace(id).unwrap();
        let bs = ns.block_size() as usize;
        write_read_compare(ctx, qp, &ns, 0, &pattern(id as u64, 4 * bs));
    }
    // A detach is reported too, and I/O to the namespace fails.
    if let Some(&id) = detached.first() {
        let ns = ctx.ctrl.namespace(id).unwrap();
        ctx.sim.detach_namespace(id).unwrap();
        wait_namespace_notice(&ctx.ctrl);
        active.retain(|&a| a != id);
        assert_eq!(ctx.ctrl.active_namespaces().unwrap(), active);
        assert!(matches!(
            ctx.ctrl.namespace(id),
            Err(Error::NoNamespace { .. })
        ));
        let mut b = vec![0u8; ns.block_size() as usize];
        match qp.read(&ns, 0, &mut b) {
            Err(Error::Command { status, .. }) => assert_eq!(status.sc(), 0x0b),
            r => panic!("read of a detached namespace: {r:?}"),
        }
        // And attached again: the data is still there.
        ctx.sim.attach_namespace(id).unwrap();
        wait_namespace_notice(&ctx.ctrl);
        qp.read(&ns, 0, &mut b).unwrap();
        assert!(b[..] == pattern(id as u64, 4 * b.len())[..b.len()]);
    }
}

/// Every check, on the driver opened on `shape`.
fn run(shape: Shape) {
    // RUST_LOG=debug shows what the driver and the model did.
    let _ = env_logger::builder().is_test(true).try_init();
    let ctx = Ctx::open(shape);
    check_identity(&ctx);
    check_queue_count(&ctx);
    check_events(&ctx);
    let namespaces: Vec<Namespace> = (ctx.attached().into_iter())
        .map(|id| ctx.ctrl.namespace(id).unwrap())
        .collect();
    {
        let mut qp = ctx.queue_pair();
        for ns in &namespaces {
            check_blocking(&ctx, &mut qp, ns);
        }
        let ns = &namespaces[0];
        if (qp.depth() as u64 + 1) * ctx.ctrl.max_transfer() <= BEYOND_DEPTH_MAX {
            check_beyond_depth(&ctx, &mut qp, ns);
        }
        check_async_full_depth(&ctx, &mut qp, ns);
        check_flush(&ctx, &mut qp, ns);
        check_zeroes_and_deallocate(&ctx, &mut qp, ns);
        check_reset_under_io(&ctx, &mut qp, ns);
        check_timeout(&ctx, &mut qp, ns);
        check_attach(&ctx, &mut qp);
    }
    // A queue pair of 4 entries too (the only one on a controller of one
    // I/O queue, now that the other is gone).
    check_beyond_depth(&ctx, &mut ctx.queue_pair_of(4), &namespaces[0]);
    assert_eq!(
        ctx.sim.iommu().fault_count(),
        0,
        "no DMA outside the mappings"
    );
}

/// Like QEMU's emulated controller: stride 0, 1024-entry queues, MDTS 5,
/// SGLs without Bit Buckets, 512-byte blocks, 64 I/O queues, shadow
/// doorbells, a volatile write cache.
#[test]
fn baseline() {
    run(Shape::new(Config::default()));
}

/// Doorbells 16 bytes apart (CAP.DSTRD 2), with shadow doorbells (their
/// slots follow the stride too), 4 KiB blocks.
#[test]
fn doorbell_stride_2() {
    let sim = Config::default()
        .doorbell_stride(2)
        .namespaces(&[NamespaceConfig::new(16 << 10, 4096)]);
    run(Shape::new(sim));
}

/// 2-entry queues (CAP.MQES 1: one command in flight per queue), MDTS 1,
/// and a namespace attached later (events need room on the admin queue,
/// which CAP.MQES does not bound).
#[test]
fn two_entry_queues() {
    let sim = Config::default().max_queue_entries(2).mdts(1).namespaces(&[
        NamespaceConfig::new(128 << 10, 512),
        NamespaceConfig::new(1 << 10, 4096).detached(),
    ]);
    run(Shape::new(sim).depth(2));
}

/// 65536-entry queues (CAP.MQES 65535), the queue pair at its deepest
/// (65535 entries, 65534 commands in flight).
#[test]
fn deepest_queues() {
    let sim = Config::default().max_queue_entries(65536).mdts(1);
    let mut shape = Shape::new(sim).depth(u16::MAX);
    shape.io_timeout = Duration::from_secs(5);
    run(shape);
}

/// CAP.TO 1 (500 ms) and a controller that takes 300 ms to become ready.
#[test]
fn slow_ready_short_timeout() {
    let sim = Config::default()
        .timeout_500ms(1)
        .ready_delay(Duration::from_millis(300));
    run(Shape::new(sim));
}

/// CAP.TO 255 (127.5 s) and a controller that takes over a second to
/// become ready.
#[test]
fn slow_ready_long_timeout() {
    let sim = Config::default()
        .timeout_500ms(255)
        .ready_delay(Duration::from_millis(1200));
    run(Shape::new(sim));
}

/// CAP.MPSMIN 4 KiB with CAP.MPSMAX 128 MiB.
#[test]
fn large_page_sizes_allowed() {
    let sim = Config::default().page_sizes(0, 15);
    run(Shape::new(sim));
}

/// No SGLs (SGLS 0, as most client SSDs), no transfer limit (MDTS 0),
/// 4 KiB blocks.
#[test]
fn no_sgl_no_transfer_limit() {
    let sim = Config::default()
        .sgl(false)
        .mdts(0)
        .namespaces(&[NamespaceConfig::new(16 << 10, 4096)]);
    run(Shape::new(sim).depth(8));
}

/// Full SGL support: Bit Bucket descriptors too.
#[test]
fn full_sgl() {
    let sim = Config::default().sgl(true).sgl_bit_bucket(true);
    run(Shape::new(sim));
}

/// The controller grants one I/O queue pair, however many are asked for.
#[test]
fn one_io_queue() {
    let sim = Config::default().max_io_queues(1);
    let mut shape = Shape::new(sim);
    shape.io_queues = 16;
    run(shape);
}

/// Active namespaces 1, 3 and 7 of NN 8 (512-byte and 4 KiB blocks), and
/// namespaces 5 and 8 attached after bring-up.
#[test]
fn namespace_id_gaps_and_attach() {
    let sim = Config::default()
        .namespaces(&[
            NamespaceConfig::new(64 << 10, 512).with_id(1),
            NamespaceConfig::new(4 << 10, 4096).with_id(3),
            NamespaceConfig::new(8 << 10, 512).with_id(7),
            NamespaceConfig::new(2 << 10, 4096).with_id(5).detached(),
            NamespaceConfig::new(4 << 10, 512).with_id(8).detached(),
        ])
        .max_nsid(8);
    run(Shape::new(sim));
}

/// Nothing optional: no SGLs, no shadow doorbells, no volatile write
/// cache, no Write Zeroes, no Dataset Management, no CMB.
#[test]
fn bare_controller() {
    let sim = Config::default()
        .sgl(false)
        .doorbell_buffer_config(false)
        .volatile_write_cache(false)
        .write_zeroes(false)
        .dataset_management(false);
    run(Shape::new(sim));
}
