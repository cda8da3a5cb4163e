//! The controller shapes nvme-sim takes, at the command level through the
//! in-test driver: namespace IDs with gaps and namespaces attached or
//! detached at run time (with their notice and log page), optional
//! features absent, and Bit Bucket SGL descriptors. The driver over these
//! shapes is in `matrix.rs`.

mod common;

use std::time::Duration;

use common::{pattern, st, Driver, PAGE};
use nvme_sim::{Config, NamespaceConfig};
use nvme_vfio::nvme::cmd::{admin, cns, feature, io, Command};
use nvme_vfio::nvme::identify::{IdentifyController, IdentifyNamespace};
use nvme_vfio::nvme::spec::{DataPtr, SglDescriptor, SglType};

/// Log page: Changed Namespace List.
const CHANGED_NAMESPACES: u8 = 0x04;
/// A Namespace Attribute Changed notice, as an event request's dword 0.
const NAMESPACE_NOTICE: u32 = 2 | 0x04 << 16;

fn identify_controller(d: &mut Driver) -> IdentifyController {
    let buf = d.alloc(PAGE);
    let c = d.admin(Command::identify(cns::CONTROLLER, 0), Some(buf));
    assert!(c.status().is_success());
    let mut id = IdentifyController::default();
    id.0.copy_from_slice(&d.mem.bytes(buf, 4096));
    id
}

/// The active namespace list from `after` on.
fn active(d: &mut Driver, after: u32) -> Vec<u32> {
    let buf = d.alloc(PAGE);
    let c = d.admin(Command::identify(cns::ACTIVE_NAMESPACES, after), Some(buf));
    assert!(c.status().is_success());
    d.mem
        .bytes(buf, 4096)
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&id| id != 0)
        .collect()
}

/// The Changed Namespace List, read with Retain Asynchronous Event or
/// not.
fn changed(d: &mut Driver, retain: bool) -> Vec<u32> {
    let buf = d.alloc(PAGE);
    let mut cmd = Command::get_log_page(CHANGED_NAMESPACES, u32::MAX, 4096);
    cmd.cdw10 |= u32::from(retain) << 15;
    let c = d.admin(cmd, Some(buf));
    assert!(c.status().is_success(), "{}", c.status());
    d.mem
        .bytes(buf, 4096)
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .take_while(|&id| id != 0)
        .collect()
}

#[test]
fn namespace_ids_with_gaps() {
    let config = Config::default()
        .namespaces(&[
            NamespaceConfig::new(1024, 512).with_id(7),
            NamespaceConfig::new(2048, 4096).with_id(1),
            NamespaceConfig::new(512, 512).with_id(3),
        ])
        .max_nsid(8);
    let mut d = Driver::with_io_queue(config);
    assert_eq!(identify_controller(&mut d).nn(), 8);
    assert_eq!(active(&mut d, 0), [1, 3, 7], "ascending");
    assert_eq!(active(&mut d, 3), [7]);
    assert_eq!(d.sim.namespace(7), Some((1024, 512)));
    let buf = d.alloc(PAGE);
    for (nsid, blocks) in [(1, 2048), (3, 512), (7, 1024)] {
        let c = d.admin(Command::identify(cns::NAMESPACE, nsid), Some(buf));
        assert!(c.status().is_success());
        let mut ns = IdentifyNamespace::default();
        ns.0.copy_from_slice(&d.mem.bytes(buf, 4096));
        assert_eq!(ns.nsze(), blocks, "namespace {nsid}");
    }
    // An inactive ID up to NN: a zeroed structure; past NN: invalid.
    d.mem.write(buf, &[0xff; 4096]);
    let c = d.admin(Command::identify(cns::NAMESPACE, 5), Some(buf));
    assert!(c.status().is_success());
    assert!(d.mem.bytes(buf, 4096).iter().all(|&b| b == 0));
    let c = d.admin(Command::identify(cns::NAMESPACE, 9), Some(buf));
    assert_eq!(st(c.status()), (0, 0x0b, true));
    // I/O goes to the namespace by its ID.
    let data = d.alloc(PAGE);
    d.mem.write(data, &pattern(512, 7));
    assert!(d.prp_rw(true, 7, 3, 1, data, 512).is_success());
    let mut stored = vec![0u8; 512];
    d.sim.read_blocks(7, 3, &mut stored).unwrap();
    assert_eq!(stored, pattern(512, 7));
    assert_eq!(st(d.prp_rw(true, 5, 0, 1, data, 512)), (0, 0x0b, true));
    // Configurations the model refuses.
    let dup = Config::default().namespaces(&[
        NamespaceConfig::new(8, 512).with_id(2),
        NamespaceConfig::new(8, 512),
        NamespaceConfig::new(8, 512),
    ]);
    assert!(nvme_sim::SimController::new(dup).is_err(), "ID 2 twice");
    let above = Config::default()
        .namespaces(&[NamespaceConfig::new(8, 512).with_id(9)])
        .max_nsid(8);
    assert!(nvme_sim::SimController::new(above).is_err(), "ID above NN");
}

#[test]
fn attached_and_detached_namespaces_are_notices_masked_until_the_log_is_read() {
    let config = Config::default().namespaces(&[
        NamespaceConfig::new(1024, 512),
        NamespaceConfig::new(64, 4096).detached(),
        NamespaceConfig::new(64, 512).detached(),
    ]);
    let mut d = Driver::with_io_queue(config);
    assert_ne!(identify_controller(&mut d).oaes() & (1 << 8), 0, "OAES");
    assert_eq!(identify_controller(&mut d).nn(), 3);
    assert_eq!(active(&mut d, 0), [1]);
    let data = d.alloc(PAGE);
    assert_eq!(st(d.prp_rw(false, 2, 0, 1, data, 4096)), (0, 0x0b, true));
    // Notices not enabled: a change is logged, not reported.
    let aer = d.submit(0, Command::new(admin::ASYNC_EVENT, 0));
    d.sim.attach_namespace(2).unwrap();
    assert!(d.quiet_for(0, Duration::from_millis(20)), "not enabled");
    assert_eq!(active(&mut d, 0), [1, 2]);
    assert!(d.prp_rw(false, 2, 0, 1, data, 4096).is_success());
    assert_eq!(changed(&mut d, false), [2]);
    assert_eq!(
        changed(&mut d, false),
        [] as [u32; 0],
        "cleared by the read"
    );
    // Enabled: the next change completes the outstanding request.
    let c = d.admin(
        Command::set_features(feature::ASYNC_EVENT_CONFIG, 1 << 8),
        None,
    );
    assert!(c.status().is_success());
    d.sim.attach_namespace(3).unwrap();
    let e = d.wait(0);
    assert_eq!((e.cid, e.result), (aer, NAMESPACE_NOTICE));
    // Masked until the log page is read; the changes gather in it.
    let aer = d.submit(0, Command::new(admin::ASYNC_EVENT, 0));
    d.sim.detach_namespace(2).unwrap();
    d.sim.attach_namespace(3).unwrap(); // attached already: no change
    assert!(d.quiet_for(0, Duration::from_millis(20)), "masked");
    assert_eq!(active(&mut d, 0), [1, 3]);
    assert_eq!(st(d.prp_rw(false, 2, 0, 1, data, 4096)), (0, 0x0b, true));
    // Read with Retain Asynchronous Event: still masked, list kept.
    assert_eq!(changed(&mut d, true), [3, 2]);
    d.sim.attach_namespace(2).unwrap();
    assert!(d.quiet_for(0, Duration::from_millis(20)), "still masked");
    assert_eq!(changed(&mut d, false), [3, 2]);
    // Unmasked: the next change is reported.
    d.sim.detach_namespace(3).unwrap();
    let e = d.wait(0);
    assert_eq!((e.cid, e.result), (aer, NAMESPACE_NOTICE));
    assert_eq!(changed(&mut d, false), [3]);
    assert!(d.sim.attach_namespace(4).is_err(), "no namespace 4");
}

#[test]
fn optional_features_can_be_absent() {
    let config = Config::default()
        .doorbell_buffer_config(false)
        .volatile_write_cache(false)
        .write_zeroes(false)
        .dataset_management(false);
    let mut d = Driver::with_io_queue(config);
    let id = identify_controller(&mut d);
    assert_eq!(id.oacs() & (1 << 8), 0, "no Doorbell Buffer Config");
    assert_eq!(id.oncs() & 0xc, 0, "no DSM, no Write Zeroes");
    assert_eq!(id.vwc(), 0, "no volatile write cache");
    let pages = d.alloc(2 * PAGE);
    let mut dbbc = Command::new(admin::DOORBELL_BUFFER_CONFIG, 0);
    dbbc.dptr = [d.mem.iova(pages).raw(), d.mem.iova(pages + PAGE).raw()];
    assert_eq!(st(d.admin(dbbc, None).status()), (0, 0x01, true));
    let c = d.admin(Command::get_features(feature::VOLATILE_WRITE_CACHE), None);
    assert_eq!(st(c.status()), (0, 0x02, true));
    let c = d.run(1, Command::write_zeroes(1, 0, 1, false));
    assert_eq!(st(c.status()), (0, 0x01, true));
    let mut dsm = Command::deallocate(1, 1);
    dsm.dptr = [d.mem.iova(pages).raw(), 0];
    assert_eq!(st(d.run(1, dsm).status()), (0, 0x01, true));
    // Flush succeeds (and does nothing) without a write cache.
    assert!(d.run(1, Command::new(io::FLUSH, 1)).status().is_success());
}

/// A Last Segment of a Data Block, a Bit Bucket and another Data Block,
/// for 3 blocks of 512 bytes: 1000 bytes to `a`, 512 discarded, 24 to `b`.
fn bit_bucket_sgl(d: &mut Driver, a: u64, b: u64) -> DataPtr {
    let seg = d.alloc(PAGE);
    let bucket = SglDescriptor::new(SglType::BitBucket, blk_dma::Iova::new(0), 512);
    for (i, desc) in [
        SglDescriptor::data(d.mem.iova(a), 1000),
        bucket,
        SglDescriptor::data(d.mem.iova(b), 24),
    ]
    .into_iter()
    .enumerate()
    {
        d.mem.write(seg + 16 * i as u64, &desc.to_bytes());
    }
    DataPtr::Sgl(SglDescriptor::new(
        SglType::LastSegment,
        d.mem.iova(seg),
        48,
    ))
}

#[test]
fn bit_bucket_descriptors_discard_read_data() {
    let data = pattern(3 * 512, 5);
    for bit_bucket in [false, true] {
        let mut d = Driver::with_io_queue(Config::default().sgl_bit_bucket(bit_bucket));
        let sgls = identify_controller(&mut d).sgls();
        assert_eq!(sgls & (1 << 16) != 0, bit_bucket, "SGLS {sgls:#x}");
        d.sim.write_blocks(1, 40, &data).unwrap();
        let (a, b) = (d.alloc(PAGE), d.alloc(PAGE));
        d.mem.write(a, &[0xee; 4096]);
        d.mem.write(b, &[0xee; 4096]);
        let dp = bit_bucket_sgl(&mut d, a, b);
        let mut r = Command::rw(false, 1, 40, 3, false);
        r.set_data(dp);
        let s = d.run(1, r).status();
        if !bit_bucket {
            assert_eq!(st(s), (0, 0x11, true), "SGL Descriptor Type Invalid");
            continue;
        }
        assert!(s.is_success(), "{s}");
        assert_eq!(d.mem.bytes(a, 1000), data[..1000]);
        assert!(d.mem.bytes(a + 1000, 3096).iter().all(|&x| x == 0xee));
        assert_eq!(d.mem.bytes(b, 24), data[1512..]);
        assert!(d.mem.bytes(b + 24, 4072).iter().all(|&x| x == 0xee));
        // Writes take no Bit Bucket.
        let mut w = Command::rw(true, 1, 40, 3, false);
        w.set_data(dp);
        assert_eq!(st(d.run(1, w).status()), (0, 0x11, true));
        let mut stored = vec![0u8; 3 * 512];
        d.sim.read_blocks(1, 40, &mut stored).unwrap();
        assert_eq!(stored, data, "nothing written");
    }
}
