//! Admin and I/O commands through the in-test driver: Identify, queue
//! creation and its errors, Read/Write with PRPs and SGLs, Write Zeroes,
//! Dataset Management, features, log pages, Abort, CQ-full handling,
//! shadow doorbells and null mode.

mod common;

use std::time::Duration;

use common::{pattern, st, Driver, PAGE};
use nvme_sim::{Config, NamespaceConfig};
use nvme_vfio::nvme::cmd::{admin, cns, feature, io, log_page, Command};
use nvme_vfio::nvme::identify::{IdentifyController, IdentifyNamespace};
use nvme_vfio::nvme::log::{ErrorLogEntry, SmartLog};
use nvme_vfio::nvme::regs::Registers;
use nvme_vfio::nvme::spec::{SglDescriptor, SglType};

fn two_namespaces() -> Config {
    Config::default().namespaces(&[
        NamespaceConfig::new(4096, 512),
        NamespaceConfig::new(1024, 4096),
    ])
}

#[test]
fn identify_controller_namespaces_and_list() {
    let mut d = Driver::new(two_namespaces().mdts(4));
    let buf = d.alloc(4096);
    let c = d.admin(Command::identify(cns::CONTROLLER, 0), Some(buf));
    assert!(c.status().is_success());
    let mut id = IdentifyController::default();
    id.0.copy_from_slice(&d.mem.bytes(buf, 4096));
    assert_eq!(id.model(), "nvme-sim");
    assert_eq!(id.serial(), "SIM0001");
    assert_eq!(id.mdts(), 4);
    assert_eq!(id.nn(), 2);
    assert_eq!((id.sqes(), id.cqes()), (0x66, 0x44));
    assert_ne!(id.oacs() & (1 << 8), 0, "Doorbell Buffer Config");
    assert_eq!(id.oncs() & 0xc, 0xc, "DSM and Write Zeroes");
    assert_eq!(id.vwc() & 1, 1);
    assert!(id.sgl_supported());
    assert_eq!(id.ver(), 0x10400);

    for (nsid, blocks, bs) in [(1, 4096, 512), (2, 1024, 4096)] {
        let c = d.admin(Command::identify(cns::NAMESPACE, nsid), Some(buf));
        assert!(c.status().is_success());
        let mut ns = IdentifyNamespace::default();
        ns.0.copy_from_slice(&d.mem.bytes(buf, 4096));
        assert_eq!(ns.nsze(), blocks);
        assert_eq!(ns.current_lba_format().unwrap().block_size(), bs);
    }
    let c = d.admin(Command::identify(cns::NAMESPACE, 3), Some(buf));
    assert_eq!(
        st(c.status()),
        (0, 0x0b, true),
        "Invalid Namespace or Format"
    );

    let c = d.admin(Command::identify(cns::ACTIVE_NAMESPACES, 0), Some(buf));
    assert!(c.status().is_success());
    let list = d.mem.bytes(buf, 12);
    assert_eq!(list, [1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
    let c = d.admin(Command::identify(cns::ACTIVE_NAMESPACES, 1), Some(buf));
    assert!(c.status().is_success());
    assert_eq!(d.mem.bytes(buf, 8), [2, 0, 0, 0, 0, 0, 0, 0]);
    // Unknown CNS, and SGLs on an admin command.
    let c = d.admin(Command::identify(0x55, 0), Some(buf));
    assert_eq!(st(c.status()), (0, 0x02, true));
    let mut cmd = Command::identify(cns::CONTROLLER, 0);
    cmd.cdw0 |= 1 << 14;
    let c = d.admin(cmd, Some(buf));
    assert_eq!(st(c.status()), (0, 0x02, true));
    let c = d.admin(Command::new(0x7f, 0), None);
    assert_eq!(st(c.status()), (0, 0x01, true), "Invalid Command Opcode");
}

#[test]
fn queue_creation_and_deletion_statuses() {
    let mut d = Driver::new(Config::default().max_io_queues(4).max_queue_entries(64));
    let mem = d.alloc(64 * 64);
    let iova = d.mem.iova(mem);
    let run = |d: &mut Driver, c: Command| st(d.admin(c, None).status());
    // Number of Queues: 4 at most; granted counts are 0-based.
    let c = d.admin(
        Command::set_features(feature::NUMBER_OF_QUEUES, 9 | 9 << 16),
        None,
    );
    assert!(c.status().is_success());
    assert_eq!(c.result, 3 | 3 << 16);
    let c = d.admin(
        Command::set_features(feature::NUMBER_OF_QUEUES, 1 | 2 << 16),
        None,
    );
    assert_eq!(c.result, 1 | 2 << 16);
    let c = d.admin(Command::get_features(feature::NUMBER_OF_QUEUES), None);
    assert_eq!(c.result, 1 | 2 << 16);

    let ok = (0, 0, false);
    let invalid_qid = (1, 0x01, true);
    assert_eq!(
        run(&mut d, Command::create_cq(0, 16, iova, None)),
        invalid_qid
    );
    assert_eq!(
        run(&mut d, Command::create_cq(4, 16, iova, None)),
        invalid_qid,
        "beyond NCQA"
    );
    assert_eq!(
        run(&mut d, Command::create_cq(1, 65, iova, None)),
        (1, 0x02, true),
        "too large"
    );
    let mut one = Command::create_cq(1, 16, iova, None);
    one.cdw10 &= 0xffff;
    assert_eq!(run(&mut d, one), (1, 0x02, true), "one entry");
    let mut not_contiguous = Command::create_cq(1, 16, iova, None);
    not_contiguous.cdw11 &= !1;
    assert_eq!(run(&mut d, not_contiguous), (0, 0x02, true));
    let unaligned = Command::create_cq(1, 16, iova.wrapping_add(64), None);
    assert_eq!(run(&mut d, unaligned), (0, 0x13, true));
    assert_eq!(
        run(&mut d, Command::create_cq(1, 16, iova, Some(9))),
        (1, 0x08, true),
        "vector"
    );
    assert_eq!(run(&mut d, Command::create_cq(1, 16, iova, Some(1))), ok);
    assert_eq!(
        run(&mut d, Command::create_cq(1, 16, iova, None)),
        invalid_qid,
        "exists"
    );

    let sq = d.alloc(64 * 64);
    let sq = d.mem.iova(sq);
    assert_eq!(
        run(&mut d, Command::create_sq(1, 16, sq, 2)),
        (1, 0x00, true),
        "no CQ 2"
    );
    assert_eq!(
        run(&mut d, Command::create_sq(1, 16, sq, 0)),
        (1, 0x00, true),
        "admin CQ"
    );
    assert_eq!(
        run(&mut d, Command::create_sq(3, 16, sq, 1)),
        invalid_qid,
        "beyond NSQA"
    );
    assert_eq!(run(&mut d, Command::create_sq(1, 16, sq, 1)), ok);
    assert_eq!(
        run(&mut d, Command::create_sq(1, 16, sq, 1)),
        invalid_qid,
        "exists"
    );
    // Number of Queues cannot change while I/O queues exist.
    let c = d.admin(Command::set_features(feature::NUMBER_OF_QUEUES, 0), None);
    assert_eq!(st(c.status()), (0, 0x0c, true));

    assert_eq!(
        run(&mut d, Command::delete_queue(false, 1)),
        (1, 0x0c, true),
        "CQ in use"
    );
    assert_eq!(run(&mut d, Command::delete_queue(true, 2)), invalid_qid);
    assert_eq!(run(&mut d, Command::delete_queue(true, 0)), invalid_qid);
    assert_eq!(run(&mut d, Command::delete_queue(true, 1)), ok);
    assert_eq!(run(&mut d, Command::delete_queue(false, 1)), ok);
    assert_eq!(run(&mut d, Command::delete_queue(false, 1)), invalid_qid);
}

#[test]
fn read_and_write_with_prps() {
    let mut d = Driver::with_io_queue(two_namespaces());
    let buf = d.alloc(128 << 10);
    // One sector at an unaligned (dword) offset, two pages, and a PRP list.
    for (nsid, lba, blocks, off, bs) in [
        (1u32, 7u64, 1u32, 0x204u64, 512u64),
        (1, 100, 8, 0x800, 512),
        (1, 200, 64, 0, 512),
        (2, 3, 8, 0, 4096),
        (2, 1000, 24, 0x1000, 4096),
    ] {
        let len = blocks as u64 * bs;
        let data = pattern(len as usize, lba as u8);
        d.mem.write(buf + off, &data);
        let s = d.prp_rw(true, nsid, lba, blocks, buf + off, len);
        assert!(s.is_success(), "write {nsid}/{lba}: {s}");
        // The data is in the namespace...
        let mut stored = vec![0u8; len as usize];
        d.sim.read_blocks(nsid, lba, &mut stored).unwrap();
        assert!(stored == data, "stored data of {nsid}/{lba}");
        // ...and reads back through the queues.
        d.mem.write(buf + off, &vec![0u8; len as usize]);
        let s = d.prp_rw(false, nsid, lba, blocks, buf + off, len);
        assert!(s.is_success(), "read {nsid}/{lba}: {s}");
        assert!(
            d.mem.bytes(buf + off, len as usize) == data,
            "read data of {nsid}/{lba}"
        );
    }
    // Data put there by the test helper is what a Read returns.
    d.sim.write_blocks(2, 5, &pattern(4096, 9)).unwrap();
    assert!(d.prp_rw(false, 2, 5, 1, buf, 4096).is_success());
    assert_eq!(d.mem.bytes(buf, 4096), pattern(4096, 9));
    let s = d.sim.stats();
    assert_eq!((s.read_commands, s.write_commands), (6, 5));
}

#[test]
fn read_and_write_with_sgls() {
    let mut d = Driver::with_io_queue(Config::default());
    let a = d.alloc(PAGE);
    let b = d.alloc(2 * PAGE);
    let seg = d.alloc(PAGE);
    let data = pattern(3 * 512, 3);
    // One inline Data Block.
    d.mem.write(a, &data[..512]);
    let mut w = Command::rw(true, 1, 10, 1, true);
    w.set_data(nvme_vfio::nvme::spec::DataPtr::Sgl(SglDescriptor::data(
        d.mem.iova(a),
        512,
    )));
    assert!(d.run(1, w).status().is_success());
    // A Last Segment of two Data Blocks in separate buffers.
    d.mem.write(a + 0x100, &data[..1000]);
    d.mem.write(b + 0x10, &data[1000..]);
    d.mem.write(
        seg,
        &SglDescriptor::data(d.mem.iova(a + 0x100), 1000).to_bytes(),
    );
    d.mem.write(
        seg + 16,
        &SglDescriptor::data(d.mem.iova(b + 0x10), 536).to_bytes(),
    );
    let last = SglDescriptor::new(SglType::LastSegment, d.mem.iova(seg), 32);
    let mut w = Command::rw(true, 1, 20, 3, false);
    w.set_data(nvme_vfio::nvme::spec::DataPtr::Sgl(last));
    assert!(d.run(1, w).status().is_success());
    let mut stored = vec![0u8; 3 * 512];
    d.sim.read_blocks(1, 20, &mut stored).unwrap();
    assert_eq!(stored, data);
    d.sim.read_blocks(1, 10, &mut stored[..512]).unwrap();
    assert_eq!(stored[..512], data[..512]);
    // Read back through the same scattered SGL.
    d.mem.write(a, &[0; 4096]);
    d.mem.write(b, &[0; 4096]);
    let mut r = Command::rw(false, 1, 20, 3, false);
    r.set_data(nvme_vfio::nvme::spec::DataPtr::Sgl(last));
    assert!(d.run(1, r).status().is_success());
    assert_eq!(d.mem.bytes(a + 0x100, 1000), data[..1000]);
    assert_eq!(d.mem.bytes(b + 0x10, 536), data[1000..]);
}

#[test]
fn sgls_are_refused_when_not_supported() {
    let mut d = Driver::with_io_queue(Config::default().sgl(false));
    let a = d.alloc(PAGE);
    let mut w = Command::rw(true, 1, 0, 1, false);
    w.set_data(nvme_vfio::nvme::spec::DataPtr::Sgl(SglDescriptor::data(
        d.mem.iova(a),
        512,
    )));
    assert_eq!(st(d.run(1, w).status()), (0, 0x02, true));
    // PSDT 11b is reserved.
    let mut w = Command::rw(true, 1, 0, 1, false);
    w.cdw0 |= 3 << 14;
    assert_eq!(st(d.run(1, w).status()), (0, 0x02, true));
}

#[test]
fn lba_range_mdts_namespace_and_opcode_checks() {
    let mut d = Driver::with_io_queue(Config::default().mdts(1));
    let buf = d.alloc(16 * PAGE);
    let blocks = d.sim.namespace(1).unwrap().0;
    let s = d.prp_rw(false, 1, blocks - 1, 2, buf, 1024);
    assert_eq!(st(s), (0, 0x80, true), "LBA Out of Range");
    let s = d.prp_rw(false, 1, u64::MAX, 1, buf, 512);
    assert_eq!(st(s), (0, 0x80, true));
    // MDTS 1: 8 KiB at most.
    assert!(d.prp_rw(false, 1, 0, 16, buf, 8192).is_success());
    let s = d.prp_rw(false, 1, 0, 17, buf, 8704);
    assert_eq!(st(s), (0, 0x02, true), "beyond MDTS");
    let s = d.prp_rw(false, 2, 0, 1, buf, 512);
    assert_eq!(st(s), (0, 0x0b, true), "no namespace 2");
    assert_eq!(
        st(d.run(1, Command::new(0x99, 1)).status()),
        (0, 0x01, true)
    );
    // Admin opcodes are not I/O opcodes.
    assert_eq!(
        st(d.run(1, Command::new(admin::IDENTIFY, 1)).status()),
        (0, 0x01, true)
    );
    // Fused operations are not supported.
    let mut f = Command::new(io::FLUSH, 1);
    f.cdw0 |= 1 << 8;
    assert_eq!(st(d.run(1, f).status()), (0, 0x02, true));
    assert!(d
        .run(1, Command::new(io::FLUSH, u32::MAX))
        .status()
        .is_success());
}

#[test]
fn write_zeroes_and_deallocate_read_back_as_zeroes() {
    let mut d = Driver::with_io_queue(Config::default());
    d.sim.write_blocks(1, 0, &pattern(64 * 512, 1)).unwrap();
    let c = d.run(1, Command::write_zeroes(1, 4, 4, false));
    assert!(c.status().is_success());
    let list = d.alloc(PAGE);
    // Two ranges: 8 blocks at 16, 2 blocks at 40.
    for (i, (lba, n)) in [(16u64, 8u32), (40, 2)].into_iter().enumerate() {
        let at = list + 16 * i as u64;
        d.mem.write_u32(at + 4, n);
        d.mem.write_u64(at + 8, lba);
    }
    let mut dsm = Command::deallocate(1, 2);
    dsm.dptr = [d.mem.iova(list).raw(), 0];
    assert!(d.run(1, dsm).status().is_success());
    let mut now = vec![0u8; 64 * 512];
    d.sim.read_blocks(1, 0, &mut now).unwrap();
    let mut want = pattern(64 * 512, 1);
    for (lba, n) in [(4usize, 4usize), (16, 8), (40, 2)] {
        want[lba * 512..(lba + n) * 512].fill(0);
    }
    assert_eq!(now, want);
    // A range past the end: nothing is deallocated.
    d.mem.write_u64(list + 8, d.sim.namespace(1).unwrap().0);
    d.mem.write_u64(list + 24, 0);
    let mut dsm = Command::deallocate(1, 2);
    dsm.dptr = [d.mem.iova(list).raw(), 0];
    assert_eq!(st(d.run(1, dsm).status()), (0, 0x80, true));
    let c = d.run(1, Command::write_zeroes(1, u64::MAX - 1, 1, true));
    assert_eq!(st(c.status()), (0, 0x80, true));
}

#[test]
fn features_and_log_pages() {
    let mut d = Driver::with_io_queue(Config::default());
    let c = d.admin(Command::get_features(feature::VOLATILE_WRITE_CACHE), None);
    assert_eq!(c.result, 1);
    assert!(d
        .admin(
            Command::set_features(feature::VOLATILE_WRITE_CACHE, 0),
            None
        )
        .status()
        .is_success());
    assert_eq!(
        d.admin(Command::get_features(feature::VOLATILE_WRITE_CACHE), None)
            .result,
        0
    );
    let mut save = Command::set_features(feature::VOLATILE_WRITE_CACHE, 1);
    save.cdw10 |= 1 << 31;
    assert_eq!(
        st(d.admin(save, None).status()),
        (1, 0x0d, true),
        "not saveable"
    );
    assert_eq!(
        st(d.admin(Command::get_features(0x7e), None).status()),
        (0, 0x02, true)
    );
    // Interrupt Coalescing is stored.
    assert!(d
        .admin(Command::set_features(0x08, 0x0a05), None)
        .status()
        .is_success());
    assert_eq!(d.admin(Command::get_features(0x08), None).result, 0x0a05);

    // SMART counts the data moved.
    let buf = d.alloc(128 << 10);
    assert!(d.prp_rw(true, 1, 0, 256, buf, 128 << 10).is_success());
    assert!(d.prp_rw(false, 1, 0, 8, buf, 4096).is_success());
    assert_eq!(
        st(d.prp_rw(false, 1, 1 << 40, 1, buf, 512)),
        (0, 0x80, true)
    );
    let page = d.alloc(PAGE);
    let c = d.admin(
        Command::get_log_page(log_page::SMART, u32::MAX, 512),
        Some(page),
    );
    assert!(c.status().is_success());
    let mut b = [0u8; 512];
    d.mem.read(page, &mut b);
    let smart = SmartLog::parse(&b);
    assert_eq!(
        smart.data_units_written, 1,
        "256 units of 512 bytes, rounded up"
    );
    assert_eq!(smart.data_units_read, 1);
    assert_eq!(
        (smart.host_write_commands, smart.host_read_commands),
        (1, 1)
    );
    assert_eq!(smart.temperature_k, 310);
    assert!(smart.error_log_entries >= 1);
    // The error log has the failed read, newest first.
    let c = d.admin(Command::get_log_page(log_page::ERROR, 0, 128), Some(page));
    assert!(c.status().is_success());
    let e = ErrorLogEntry::parse(&d.mem.bytes(page, 64)).unwrap();
    assert_eq!((e.sqid, e.nsid, e.lba), (1, 1, 1 << 40));
    assert_eq!(e.status >> 1 & 0xff, 0x80);
    let c = d.admin(Command::get_log_page(0x70, 0, 512), Some(page));
    assert_eq!(st(c.status()), (1, 0x09, true), "Invalid Log Page");
    let mut off = Command::get_log_page(log_page::SMART, 0, 16);
    off.cdw12 = 4096;
    assert_eq!(
        st(d.admin(off, Some(page)).status()),
        (0, 0x02, true),
        "offset past the log"
    );
}

#[test]
fn a_full_completion_queue_is_never_overwritten() {
    let mut d = Driver::new(Config::default());
    d.create_io_queue(1, 4);
    // Submit 3 (all the SQ holds), consume none: the CQ (4 entries) takes
    // 3. Then 3 more after the SQ head moved: they must wait.
    for _ in 0..3 {
        d.push(1, Command::new(io::FLUSH, 1));
    }
    d.ring_sq(1);
    common::wait_for("3 completions", || {
        let r = d.rings[1].as_ref().unwrap();
        let last = r.cq_off + 2 * 16;
        common::completion_from_bytes(&d.mem.bytes(last, 16)).phase()
    });
    for _ in 0..3 {
        d.push(1, Command::new(io::FLUSH, 1));
    }
    d.ring_sq(1);
    std::thread::sleep(Duration::from_millis(20));
    // Slot 3 is still empty (phase 0), slot 0 still holds cid 0.
    let r = d.rings[1].as_ref().unwrap();
    let slot3 = common::completion_from_bytes(&d.mem.bytes(r.cq_off + 48, 16));
    assert!(!slot3.phase(), "the controller filled the last free slot");
    let mut cids = Vec::new();
    for _ in 0..6 {
        let c = d.wait(1);
        assert!(c.status().is_success());
        cids.push(c.cid);
    }
    assert_eq!(cids, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn abort_and_async_events() {
    let mut d = Driver::with_io_queue(Config::default());
    // Nothing to abort.
    let c = d.admin(Command::abort(1, 77), None);
    assert!(c.status().is_success());
    assert_eq!(c.result & 1, 1, "not aborted");
    // Event requests are held; the fifth exceeds the limit.
    let aers: Vec<u16> = (0..4)
        .map(|_| d.submit(0, Command::new(admin::ASYNC_EVENT, 0)))
        .collect();
    let c = d.admin(Command::new(admin::ASYNC_EVENT, 0), None);
    assert_eq!(st(c.status()), (1, 0x05, true));
    // An outstanding event request can be aborted.
    let c = d.submit(0, Command::abort(0, aers[1]));
    let first = d.wait(0);
    assert_eq!((first.cid, st(first.status())), (aers[1], (0, 0x07, false)));
    let abort = d.wait(0);
    assert_eq!(abort.cid, c);
    assert_eq!(abort.result & 1, 0, "aborted");
}

#[test]
fn shadow_doorbells_replace_register_writes() {
    let mut d = Driver::with_io_queue(Config::default());
    let (db, ei) = (d.alloc(PAGE), d.alloc(PAGE));
    let mut cfg = Command::new(admin::DOORBELL_BUFFER_CONFIG, 0);
    cfg.dptr = [d.mem.iova(db).raw(), d.mem.iova(ei).raw()];
    assert!(d.admin(cfg, None).status().is_success());
    let mut bad = Command::new(admin::DOORBELL_BUFFER_CONFIG, 0);
    bad.dptr = [d.mem.iova(db).raw() + 8, d.mem.iova(ei).raw()];
    assert_eq!(st(d.admin(bad, None).status()), (0, 0x02, true));
    // SQ 1 tail at shadow offset 8, CQ 1 head at 12 (stride 4).
    let buf = d.alloc(PAGE);
    d.sim.write_blocks(1, 3, &pattern(512, 4)).unwrap();
    for round in 0..3u32 {
        let mut cmd = Command::rw(false, 1, 3, 1, false);
        cmd.dptr = [d.mem.iova(buf).raw(), 0];
        d.push(1, cmd);
        let tail = d.rings[1].as_ref().unwrap().sq_tail as u32;
        d.mem.write_u32(db + 8, tail);
        // Ring the register only when the EventIdx asks for it (the
        // device wants a write past EventIdx).
        let event = d.mem.read_u32(ei + 8);
        if event.wrapping_sub(tail - 1) as u16 == 0 || round == 0 {
            d.ring_sq(1);
        }
        let c = d.wait(1);
        assert!(c.status().is_success());
        // The device published the tail it consumed.
        common::wait_for("EventIdx", || d.mem.read_u32(ei + 8) == tail);
    }
    assert_eq!(d.mem.bytes(buf, 512), pattern(512, 4));
    // With the register stale, the shadow value alone drives the device:
    // the worker reads it on any wake-up (here, a rewrite of the CQ head
    // doorbell with the value it already has).
    let mut cmd = Command::rw(false, 1, 3, 1, false);
    cmd.dptr = [d.mem.iova(buf).raw(), 0];
    d.push(1, cmd);
    d.mem
        .write_u32(db + 8, d.rings[1].as_ref().unwrap().sq_tail as u32);
    d.sim
        .write32(nvme_vfio::nvme::regs::cq_head_doorbell(1, 4), 3);
    assert!(d.wait(1).status().is_success());
}

#[test]
fn null_mode_completes_without_touching_data() {
    let mut d = Driver::with_io_queue(Config::default().null(true));
    let buf = d.alloc(PAGE);
    d.mem.write(buf, &pattern(512, 1));
    // Even a data pointer to nowhere completes: nothing is walked.
    let mut w = Command::rw(true, 1, 0, 8, false);
    w.dptr = [common::UNMAPPED, 0];
    assert!(d.run(1, w).status().is_success());
    assert!(d.prp_rw(true, 1, 0, 1, buf, 512).is_success());
    let mut stored = [0xffu8; 512];
    d.sim.read_blocks(1, 0, &mut stored).unwrap();
    assert_eq!(stored, [0u8; 512], "null mode stored nothing");
    // Range checks still apply.
    assert_eq!(
        st(d.prp_rw(false, 1, u64::MAX, 1, buf, 512)),
        (0, 0x80, true)
    );
    assert_eq!(d.sim.stats().write_commands, 2);
}
