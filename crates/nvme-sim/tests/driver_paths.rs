//! The driver (nvme-vfio's Controller and QueuePair) against the software
//! controller: every data path, bad inputs refused before submission, and
//! recovery from each injected fault.

use std::time::{Duration, Instant};

use nvme_sim::{Config, FaultAction, FaultRule, Match, NamespaceConfig, SimController};
use nvme_vfio::ctrl::{Config as DriverConfig, Controller, Done, Io, IoBuf, Op, QueueConfig};
use nvme_vfio::mem::{DmaSpace, SpaceConfig};
use nvme_vfio::nvme::cmd::{admin, io, Status};
use nvme_vfio::Error;

fn bring_up(config: Config, io_timeout: Duration) -> (SimController, Controller) {
    let sim = SimController::new(config).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        io_queues: 4,
        io_timeout,
        ..DriverConfig::default()
    };
    // SAFETY: `space` maps through the model's own IOMMU, the one its device side
    // reaches memory through, and nothing else drives the model.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, None) }.unwrap();
    (sim, ctrl)
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed * 7) >> 3) as u8)
        .collect()
}

fn wait_all(qp: &mut nvme_vfio::ctrl::QueuePair, n: usize) -> Vec<Done> {
    let mut done = Vec::new();
    let start = Instant::now();
    while done.len() < n {
        qp.poll(&mut done);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "completions did not arrive"
        );
    }
    done
}

#[test]
fn every_data_path_with_mdts_splitting() {
    // MDTS 2: at most 16 KiB per command, so larger requests are split.
    let config = Config::default().mdts(2).namespaces(&[
        NamespaceConfig::new(1 << 16, 512),
        NamespaceConfig::new(1 << 14, 4096),
    ]);
    let (sim, ctrl) = bring_up(config, Duration::from_secs(5));
    assert_eq!(ctrl.max_transfer(), 16 << 10);
    for (nsid, sgl) in [(1u32, false), (2, true)] {
        let ns = ctrl.namespace(nsid).unwrap();
        let bs = ns.block_size() as usize;
        let mut qp = ctrl
            .queue_pair(QueueConfig {
                sgl,
                ..QueueConfig::default()
            })
            .unwrap();
        // A DMA buffer from the pool.
        let data = pattern(1, 64 << 10);
        let mut buf = ctrl.dma_alloc(data.len()).unwrap();
        buf.as_mut_slice()[..data.len()].copy_from_slice(&data);
        let writes = sim.stats().write_commands;
        qp.write(&ns, 0, &buf.as_slice()[..data.len()], false)
            .unwrap();
        assert_eq!(
            sim.stats().write_commands - writes,
            4,
            "64 KiB split into 16 KiB commands"
        );
        let mut stored = vec![0u8; data.len()];
        sim.read_blocks(nsid, 0, &mut stored).unwrap();
        assert!(stored == data);
        // Registered user memory.
        let mut user = vec![0u8; 32 << 10];
        // SAFETY: `user` outlives the registration, dropped below.
        let reg = unsafe { ctrl.space().register(user.as_ptr(), user.len()) }.unwrap();
        qp.read(&ns, 0, &mut user).unwrap();
        assert!(user[..] == data[..32 << 10]);
        drop(reg);
        // Unregistered memory, vectored: three heap pieces in one request.
        // SGLs describe any layout; PRPs cannot describe unaligned interior
        // boundaries, which is a clear error rather than a wrong transfer.
        let (mut a, mut b, mut c) = (vec![0u8; bs], vec![0u8; 4 * bs], vec![0u8; bs]);
        let r = {
            let mut bufs: [&mut [u8]; 3] = [&mut a, &mut b, &mut c];
            qp.read_vectored(&ns, 0, &mut bufs)
        };
        if sgl {
            r.unwrap();
            let joined: Vec<u8> = [a, b, c].concat();
            assert!(joined[..] == data[..6 * bs]);
        } else if let Err(e) = r {
            assert!(matches!(e, Error::Dptr(_)), "{e}");
        }
        // Asynchronous, larger than MDTS, completes once with its buffer.
        let big = pattern(2, 48 << 10);
        qp.submit(Io::write(&ns, 64, big.clone()).tag(5))
            .map_err(|(e, _)| e)
            .unwrap();
        let mut done = wait_all(&mut qp, 1);
        let d = done.pop().unwrap();
        assert_eq!(d.tag, 5);
        d.result.unwrap();
        assert_eq!(d.buf.as_slice(), &big[..]);
        let mut stored = vec![0u8; big.len()];
        sim.read_blocks(nsid, 64, &mut stored).unwrap();
        assert!(stored == big);
    }
    // Per-command mappings of user memory were all undone.
    drop(ctrl);
    assert!(sim.iommu().mappings().len() <= 4);
}

#[test]
fn bad_requests_are_refused_before_submission() {
    let config = Config::default()
        .sgl(false)
        .namespaces(&[NamespaceConfig::new(1024, 512)]);
    let (sim, ctrl) = bring_up(config, Duration::from_secs(5));
    assert!(matches!(
        ctrl.namespace(9),
        Err(Error::NoNamespace { nsid: 9 })
    ));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let before = sim.stats();
    let buf = vec![0u8; 8192];
    let invalid = |e: Error| matches!(e, Error::Invalid(_));
    assert!(
        invalid(qp.write(&ns, 1020, &buf, false).unwrap_err()),
        "past the end"
    );
    assert!(
        invalid(qp.write(&ns, u64::MAX - 1, &buf, false).unwrap_err()),
        "overflow"
    );
    assert!(
        invalid(qp.write(&ns, 0, &buf[..700], false).unwrap_err()),
        "not whole blocks"
    );
    assert!(
        invalid(qp.write(&ns, 0, &buf[..0], false).unwrap_err()),
        "zero length"
    );
    // SAFETY: the request is refused (asserted), so nothing reads the
    // memory after the call.
    let r = unsafe {
        qp.submit_raw(
            Op::Write { fua: false },
            &ns,
            0,
            &[blk_dma::HostSeg::from_slice(&buf[1..513])],
            0,
        )
    };
    assert!(invalid(r.unwrap_err()), "not dword aligned");
    assert!(invalid(qp.write_zeroes(&ns, 1000, 100).unwrap_err()));
    // The refused buffer comes back with an async refusal.
    let (e, io) = qp.submit(Io::read(&ns, 5000, vec![0u8; 512])).unwrap_err();
    assert!(invalid(e));
    assert_eq!(io.into_buf().len(), 512);
    assert_eq!(
        sim.stats().write_commands,
        before.write_commands,
        "nothing was submitted"
    );
    assert_eq!(sim.stats().read_commands, before.read_commands);
    // A blocking call copies memory PRPs cannot point at through a DMA
    // buffer instead.
    let odd: Vec<u8> = (0..513).map(|i| i as u8).collect();
    qp.write(&ns, 0, &odd[1..], false).unwrap();
    let mut stored = vec![0u8; 512];
    sim.read_blocks(1, 0, &mut stored).unwrap();
    assert!(stored[..] == odd[1..]);
}

#[test]
fn an_error_status_comes_back_typed() {
    let (sim, ctrl) = bring_up(Config::default(), Duration::from_secs(5));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    for status in [Status::new(2, 0x81, true), Status::new(0, 0x06, false)] {
        sim.inject(FaultRule::next(
            Match::io().opcode(io::WRITE),
            FaultAction::Status(status),
        ));
        let e = qp.write(&ns, 0, &[1u8; 512], false).unwrap_err();
        match e {
            Error::Command {
                what, status: s, ..
            } => {
                assert_eq!(what, "Write");
                assert_eq!(
                    (s.sct(), s.sc(), s.dnr()),
                    (status.sct(), status.sc(), status.dnr())
                );
            }
            e => panic!("{e}"),
        }
    }
    assert_eq!(
        Status::new(2, 0x81, true).to_string(),
        "Unrecovered Read Error (SCT 0x2, SC 0x81, do not retry)"
    );
    qp.write(&ns, 0, &[1u8; 512], false).unwrap();
}

#[test]
fn a_dropped_completion_is_aborted() {
    let (sim, ctrl) = bring_up(Config::default(), Duration::from_millis(300));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut buf = vec![0u8; 4096];
    // Past the first round of command slots: command IDs now carry a
    // generation, which the Abort must name too.
    for _ in 0..qp.depth() + 3 {
        qp.read(&ns, 0, &mut buf).unwrap();
    }
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Drop,
    ));
    let t = Instant::now();
    let e = qp.read(&ns, 0, &mut buf).unwrap_err();
    // The Abort found the command: it completed with Command Abort Requested.
    assert!(
        matches!(e, Error::Command { status, .. } if status.sct() == 0 && status.sc() == 0x07),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // No reset was needed; I/O continues.
    qp.read(&ns, 0, &mut buf).unwrap();
}

#[test]
fn a_dropped_completion_that_cannot_be_aborted_resets_the_controller() {
    let (sim, ctrl) = bring_up(Config::default(), Duration::from_millis(300));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut other = ctrl.queue_pair(QueueConfig::default()).unwrap();
    // The read never completes and the Abort itself fails.
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::Drop,
    ));
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::ABORT),
        FaultAction::Status(Status::new(1, 0x03, true)),
    ));
    // A second request on another queue pair is in flight at the reset.
    other
        .submit(Io::write(&ns, 100, vec![7u8; 4096]).tag(1))
        .map_err(|(e, _)| e)
        .unwrap();
    sim.inject(FaultRule::next(
        Match::io().opcode(io::WRITE),
        FaultAction::Delay(Duration::from_secs(3)),
    ));
    other
        .submit(Io::write(&ns, 200, vec![8u8; 4096]).tag(2))
        .map_err(|(e, _)| e)
        .unwrap();
    other.flush();
    let mut buf = vec![0u8; 4096];
    let e = qp.read(&ns, 0, &mut buf).unwrap_err();
    assert!(matches!(e, Error::Timeout { what: "Read", .. }), "{e}");
    // The other queue pair sees the reset: its delayed request fails with
    // Reset (or completed before), every buffer comes back, I/O continues.
    let done = wait_all(&mut other, 2);
    for d in &done {
        assert!(
            matches!(d.result, Ok(()) | Err(Error::Reset)),
            "{:?}",
            d.result
        );
        assert_eq!(d.buf.len(), 4096);
    }
    other.write(&ns, 300, &[9u8; 512], false).unwrap();
    qp.read(&ns, 300, &mut buf[..512]).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 9));
}

#[test]
fn completions_out_of_order_reach_the_right_requests() {
    let (sim, ctrl) = bring_up(Config::default(), Duration::from_secs(5));
    let ns = ctrl.namespace(1).unwrap();
    for i in 0..8u64 {
        sim.write_blocks(1, i * 8, &pattern(i, 4096)).unwrap();
    }
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    // The first read completes after the five that follow it; the third is
    // delayed.
    sim.inject(FaultRule::next(
        Match::io().opcode(io::READ),
        FaultAction::HoldBack { after: 5 },
    ));
    sim.inject(FaultRule::nth(
        Match::io().opcode(io::READ),
        2,
        FaultAction::Delay(Duration::from_millis(100)),
    ));
    for i in 0..8u64 {
        qp.submit(Io::read(&ns, i * 8, vec![0u8; 4096]).tag(i))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let done = wait_all(&mut qp, 8);
    let order: Vec<u64> = done.iter().map(|d| d.tag).collect();
    assert_ne!(
        order,
        (0..8).collect::<Vec<_>>(),
        "completions came out of order"
    );
    assert_ne!(order[0], 0);
    for d in done {
        let tag = d.tag;
        let (buf, r) = d.into_parts();
        r.unwrap();
        assert_eq!(
            buf.as_slice(),
            &pattern(tag, 4096)[..],
            "request {tag} got its own data"
        );
    }
}

#[test]
fn a_fatal_status_during_io_resets_the_controller_automatically() {
    let (sim, ctrl) = bring_up(Config::default(), Duration::from_millis(500));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    sim.inject(FaultRule::next(
        Match::io().opcode(io::WRITE),
        FaultAction::Fatal,
    ));
    qp.submit(Io::write(&ns, 0, vec![3u8; 4096]))
        .map_err(|(e, _)| e)
        .unwrap();
    let done = wait_all(&mut qp, 1);
    assert!(
        matches!(
            done[0].result,
            Err(Error::ControllerFatal { .. }) | Err(Error::Reset)
        ),
        "{:?}",
        done[0].result
    );
    // No manual reset: the queue pair recovered by itself.
    qp.write(&ns, 8, &[4u8; 4096], false).unwrap();
    let mut b = vec![0u8; 4096];
    sim.read_blocks(1, 8, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 4));
}

#[test]
fn a_controller_that_never_becomes_ready_is_a_timeout_not_a_hang() {
    let sim = SimController::new(Config::default().timeout_500ms(1)).unwrap();
    sim.set_never_ready(true);
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let t = Instant::now();
    // SAFETY: `space` maps through the model's own IOMMU, the one its device side
    // reaches memory through, and nothing else drives the model.
    let e =
        unsafe { Controller::with_backend(sim.registers(), space, DriverConfig::default(), None) }
            .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Timeout {
                what: "CSTS.RDY = 1",
                ..
            }
        ),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "bounded by CAP.TO");
}

#[test]
fn raw_submissions_and_interrupt_less_waits() {
    let (_sim, ctrl) = bring_up(Config::default(), Duration::from_secs(5));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let data = pattern(9, 8192);
    qp.write(&ns, 0, &data, false).unwrap();
    let mut raw = vec![0u8; 8192];
    let seg = blk_dma::HostSeg::from_slice(&raw);
    // SAFETY: `raw` is not touched until its completion is polled below.
    unsafe { qp.submit_raw(Op::Read, &ns, 0, &[seg], 42) }.unwrap();
    let mut done = Vec::new();
    while done.is_empty() {
        qp.wait(&mut done, Duration::from_secs(1));
    }
    assert_eq!(done[0].tag, 42);
    assert!(matches!(done[0].buf, IoBuf::Raw));
    raw.truncate(8192);
    assert!(raw == data);
}

#[test]
fn a_namespace_formatted_with_metadata_opens_with_its_format() {
    let config = Config::default().namespaces(&[
        NamespaceConfig::new(1024, 512),
        NamespaceConfig::new(1024, 512).with_metadata(8),
    ]);
    let (_sim, ctrl) = bring_up(config, Duration::from_secs(5));
    assert!(!ctrl.namespace(1).unwrap().has_metadata());
    let ns = ctrl.namespace(2).unwrap();
    let f = ns.format();
    assert_eq!(
        (f.data, f.metadata, f.extended, f.pi),
        (512, 8, false, None)
    );
    // Its metadata goes in a buffer of its own: a plain read says what to
    // use instead.
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let e = qp.read(&ns, 0, &mut [0u8; 512]).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(e.to_string().contains("read_with_metadata"), "{e}");
}

#[test]
fn a_read_into_read_only_memory_fails_with_an_error_and_changes_nothing() {
    use nvme_vfio::mem::Access;
    let (sim, ctrl) = bring_up(Config::default(), Duration::from_secs(5));
    let ns = ctrl.namespace(1).unwrap();
    sim.write_blocks(1, 0, &pattern(3, 8192)).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let mut mem = vec![0xa5u8; 3 * 4096];
    let at = (mem.as_ptr() as usize).next_multiple_of(4096) - mem.as_ptr() as usize;
    // SAFETY: `mem` outlives the registration, dropped below.
    let reg = unsafe {
        ctrl.space()
            .register_with(mem[at..].as_ptr(), 8192, Access::ReadOnly)
    }
    .unwrap();
    let e = qp.read(&ns, 0, &mut mem[at..at + 8192]).unwrap_err();
    // Data Transfer Error: the device could not write the buffer.
    assert!(
        matches!(e, Error::Command { status, .. } if status.sct() == 0 && status.sc() == 0x04),
        "{e}"
    );
    assert!(mem.iter().all(|&b| b == 0xa5), "read-only memory unchanged");
    // Writing from it works: the device may read it.
    qp.write(&ns, 16, &mem[at..at + 8192], false).unwrap();
    drop(reg);
}

#[test]
fn dropping_the_controller_shuts_it_down_and_unmaps_everything() {
    use nvme_vfio::nvme::regs::{offset, Csts, ShutdownStatus};
    let (sim, ctrl) = bring_up(Config::default(), Duration::from_secs(5));
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    qp.write(&ns, 0, &[1u8; 4096], false).unwrap();
    let regs = sim.registers();
    assert!(!sim.iommu().mappings().is_empty());
    drop(qp);
    drop(ctrl);
    let csts = Csts(regs.read32(offset::CSTS));
    assert_eq!(
        csts.shutdown_status(),
        ShutdownStatus::Complete,
        "CC.SHN and SHST"
    );
    assert!(
        sim.iommu().mappings().is_empty(),
        "every DMA mapping undone"
    );
}

#[test]
fn an_admin_command_that_never_completes_resets_the_controller() {
    let sim = SimController::new(Config::default()).unwrap();
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        admin_timeout: Duration::from_millis(300),
        ..DriverConfig::default()
    };
    // SAFETY: `space` maps through the model's own IOMMU, the one its device side
    // reaches memory through, and nothing else drives the model.
    let ctrl = unsafe { Controller::with_backend(sim.registers(), space, driver, None) }.unwrap();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    qp.write(&ns, 0, &[5u8; 512], false).unwrap();
    sim.inject(FaultRule::next(
        Match::admin().opcode(admin::GET_LOG_PAGE),
        FaultAction::Drop,
    ));
    let t = Instant::now();
    let e = ctrl.smart_log().unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3));
    // The controller was reset, not stopped: admin and I/O work again.
    ctrl.smart_log().unwrap();
    let mut b = vec![0u8; 512];
    qp.read(&ns, 0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 5));
}

/// The simulator's registers, counting writes per offset.
struct Counting {
    inner: std::sync::Arc<dyn nvme_vfio::nvme::regs::Registers>,
    writes: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
}

impl Counting {
    fn writes(&self, offset: u64) -> u64 {
        self.writes
            .lock()
            .unwrap()
            .get(&offset)
            .copied()
            .unwrap_or(0)
    }
}

impl nvme_vfio::nvme::regs::Registers for Counting {
    fn read32(&self, offset: u64) -> u32 {
        self.inner.read32(offset)
    }
    fn write32(&self, offset: u64, value: u32) {
        *self.writes.lock().unwrap().entry(offset).or_default() += 1;
        self.inner.write32(offset, value)
    }
    fn read64(&self, offset: u64) -> u64 {
        self.inner.read64(offset)
    }
    fn write64(&self, offset: u64, value: u64) {
        self.inner.write64(offset, value)
    }
}

#[test]
fn one_sq_doorbell_per_batch_and_one_cq_doorbell_per_poll() {
    use nvme_vfio::nvme::regs::{cq_head_doorbell, sq_tail_doorbell};
    let sim = SimController::new(Config::default()).unwrap();
    let regs = std::sync::Arc::new(Counting {
        inner: sim.registers(),
        writes: Default::default(),
    });
    let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    let driver = DriverConfig {
        space: SpaceConfig { hugepages: false },
        shadow_doorbells: false,
        ..DriverConfig::default()
    };
    // SAFETY: `regs` forwards to the model's registers; `space` maps through the
    // model's own IOMMU, and nothing else drives the model.
    let ctrl = unsafe { Controller::with_backend(regs.clone(), space, driver, None) }.unwrap();
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let stride = sim.doorbell_stride();
    let (sq, cq) = (
        sq_tail_doorbell(qp.qid(), stride),
        cq_head_doorbell(qp.qid(), stride),
    );
    for i in 0..16u64 {
        qp.submit(Io::write(&ns, i * 8, vec![i as u8; 4096]).tag(i))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    assert_eq!(
        regs.writes(sq),
        0,
        "nothing published before the batch ends"
    );
    qp.flush();
    assert_eq!(regs.writes(sq), 1, "16 commands, one tail doorbell write");
    // Let the device finish them all, then one poll drains every completion
    // with a single head doorbell write.
    let start = Instant::now();
    while sim.stats().write_commands < 16 {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    let mut done = Vec::new();
    assert_eq!(qp.poll(&mut done), 16);
    assert_eq!(
        regs.writes(cq),
        1,
        "16 completions, one head doorbell write"
    );
    assert_eq!(
        regs.writes(sq),
        1,
        "a poll with nothing new to publish rings nothing"
    );
    assert_eq!(qp.doorbell_stats(), (1, 1));
}

#[test]
fn queue_depth_up_to_mqes_plus_one() {
    // MQES + 1 = 64 entries: up to 63 commands in flight (one slot stays
    // empty); a larger requested depth is capped there.
    let (_sim, ctrl) = bring_up(
        Config::default().max_queue_entries(64),
        Duration::from_secs(5),
    );
    assert_eq!(ctrl.cap().max_queue_entries(), 64);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl
        .queue_pair(QueueConfig {
            depth: 1000,
            ..QueueConfig::default()
        })
        .unwrap();
    assert_eq!(qp.depth(), 63);
    for i in 0..63u64 {
        qp.submit(Io::read(&ns, i, vec![0u8; 512]).tag(i))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    assert_eq!(qp.inflight(), 63);
    let (e, _) = qp.submit(Io::read(&ns, 0, vec![0u8; 512])).unwrap_err();
    assert!(matches!(e, Error::QueueFull { .. }), "{e}");
    let done = wait_all(&mut qp, 63);
    assert!(done.iter().all(|d| d.result.is_ok()));
}
