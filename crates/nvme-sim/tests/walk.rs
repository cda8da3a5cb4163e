//! Malformed data pointers and IOMMU faults: each gets the status a strict
//! controller reports, and nothing is transferred.

mod common;

use blk_dma::Iova;
use common::{pattern, st, Driver, HostMem, PAGE, UNMAPPED};
use nvme_sim::Config;
use nvme_vfio::mem::Access;
use nvme_vfio::nvme::cmd::{Command, Status};
use nvme_vfio::nvme::regs::Registers;
use nvme_vfio::nvme::spec::{DataPtr, SglDescriptor, SglType};

const INVALID_PRP_OFFSET: (u8, u8, bool) = (0, 0x13, true);
const SGL_TYPE_INVALID: (u8, u8, bool) = (0, 0x11, true);
const SGL_LENGTH_INVALID: (u8, u8, bool) = (0, 0x0f, true);
const SGL_SEGMENT_INVALID: (u8, u8, bool) = (0, 0x0d, true);
const DATA_TRANSFER_ERROR: (u8, u8, bool) = (0, 0x04, false);

/// The IOVA of offset `off` in the test driver's memory.
fn at(off: u64) -> u64 {
    common::MEM_IOVA + off
}

fn rw_prp(d: &mut Driver, write: bool, blocks: u32, prp1: u64, prp2: u64) -> Status {
    let mut c = Command::rw(write, 1, 0, blocks, false);
    c.dptr = [prp1, prp2];
    d.run(1, c).status()
}

fn rw_sgl(d: &mut Driver, write: bool, blocks: u32, sgl: SglDescriptor) -> Status {
    let mut c = Command::rw(write, 1, 0, blocks, false);
    c.set_data(DataPtr::Sgl(sgl));
    d.run(1, c).status()
}

#[test]
fn malformed_prps_are_rejected() {
    let mut d = Driver::with_io_queue(Config::default());
    let buf = d.alloc(4 * PAGE);
    let list = d.alloc(PAGE);
    // PRP1 not dword aligned.
    let s = rw_prp(&mut d, false, 1, at(buf) + 2, 0);
    assert_eq!(st(s), INVALID_PRP_OFFSET);
    // PRP2 as a data pointer must be page aligned.
    let s = rw_prp(&mut d, false, 16, at(buf), at(buf + PAGE) + 512);
    assert_eq!(st(s), INVALID_PRP_OFFSET);
    // A PRP list pointer must be quadword aligned.
    let s = rw_prp(&mut d, false, 24, at(buf), at(list) + 4);
    assert_eq!(st(s), INVALID_PRP_OFFSET);
    // A list entry with an offset.
    d.mem.write_u64(list, at(buf + PAGE));
    d.mem.write_u64(list + 8, at(buf + 2 * PAGE) + 0x200);
    let s = rw_prp(&mut d, false, 24, at(buf), at(list));
    assert_eq!(st(s), INVALID_PRP_OFFSET);
    // The well-formed list works.
    d.mem.write_u64(list + 8, at(buf + 2 * PAGE));
    let s = rw_prp(&mut d, false, 24, at(buf), at(list));
    assert!(s.is_success(), "{s}");
    // A list page that is not mapped: the walk cannot read it.
    let s = rw_prp(&mut d, false, 24, at(buf), UNMAPPED);
    assert_eq!(st(s), DATA_TRANSFER_ERROR);
}

#[test]
fn a_chained_prp_list_is_followed_and_its_pointer_checked() {
    let mut d = Driver::with_io_queue(Config::default().mdts(0));
    // 514 pages: PRP1, then a list of 511 entries + a chain pointer, then
    // 2 more entries.
    let pages = 514u64;
    let buf = d.alloc(pages * PAGE);
    let (l1, l2) = (d.alloc(PAGE), d.alloc(PAGE));
    for i in 0..511 {
        d.mem.write_u64(l1 + 8 * i, at(buf + (i + 1) * PAGE));
    }
    d.mem.write_u64(l1 + 511 * 8, at(l2));
    d.mem.write_u64(l2, at(buf + 512 * PAGE));
    d.mem.write_u64(l2 + 8, at(buf + 513 * PAGE));
    let data = pattern((pages * PAGE) as usize, 5);
    d.mem.write(buf, &data);
    let blocks = (pages * PAGE / 512) as u32;
    let s = rw_prp(&mut d, true, blocks, at(buf), at(l1));
    assert!(s.is_success(), "{s}");
    let mut stored = vec![0u8; data.len()];
    d.sim.read_blocks(1, 0, &mut stored).unwrap();
    assert!(stored == data);
    // A chain pointer with an offset.
    d.mem.write_u64(l1 + 511 * 8, at(l2) + 8);
    let s = rw_prp(&mut d, true, blocks, at(buf), at(l1));
    assert_eq!(st(s), INVALID_PRP_OFFSET);
}

#[test]
fn malformed_sgls_are_rejected() {
    let mut d = Driver::with_io_queue(Config::default());
    let buf = d.alloc(PAGE);
    let seg = d.alloc(PAGE);
    let a = d.mem.iova(buf);
    // Bit Bucket, keyed and reserved types as SGL Entry 1.
    for ty in [
        SglType::BitBucket,
        SglType::KeyedDataBlock,
        SglType::TransportDataBlock,
    ] {
        let s = rw_sgl(&mut d, false, 1, SglDescriptor::new(ty, a, 512));
        assert_eq!(st(s), SGL_TYPE_INVALID, "{ty:?}");
    }
    let mut raw = SglDescriptor::data(a, 512).to_bytes();
    raw[15] = 0xf0;
    let s = rw_sgl(&mut d, false, 1, SglDescriptor::from_bytes(raw));
    assert_eq!(st(s), SGL_TYPE_INVALID, "reserved type");
    raw[15] = 0x01;
    let s = rw_sgl(&mut d, false, 1, SglDescriptor::from_bytes(raw));
    assert_eq!(st(s), SGL_TYPE_INVALID, "subtype other than Address");
    // Length mismatch, both ways.
    let s = rw_sgl(&mut d, false, 1, SglDescriptor::data(a, 256));
    assert_eq!(st(s), SGL_LENGTH_INVALID);
    let s = rw_sgl(&mut d, false, 1, SglDescriptor::data(a, 1024));
    assert_eq!(st(s), SGL_LENGTH_INVALID);
    // A segment whose length is not a multiple of 16.
    d.mem.write(seg, &SglDescriptor::data(a, 512).to_bytes());
    let bad = SglDescriptor::new(SglType::LastSegment, d.mem.iova(seg), 24);
    assert_eq!(st(rw_sgl(&mut d, false, 1, bad)), SGL_SEGMENT_INVALID);
    // A Bit Bucket inside a segment.
    d.mem.write(
        seg,
        &SglDescriptor::new(SglType::BitBucket, a, 512).to_bytes(),
    );
    let last = SglDescriptor::new(SglType::LastSegment, d.mem.iova(seg), 16);
    assert_eq!(st(rw_sgl(&mut d, false, 1, last)), SGL_TYPE_INVALID);
    // A segment the device cannot read.
    let gone = SglDescriptor::new(SglType::LastSegment, Iova::new(UNMAPPED), 16);
    assert_eq!(st(rw_sgl(&mut d, false, 1, gone)), DATA_TRANSFER_ERROR);
    // Fixed up, it works.
    d.mem.write(seg, &SglDescriptor::data(a, 512).to_bytes());
    assert!(rw_sgl(&mut d, false, 1, last).is_success());
}

#[test]
fn iommu_faults_during_the_transfer_are_data_transfer_errors() {
    let mut d = Driver::with_io_queue(Config::default());
    d.sim.write_blocks(1, 0, &pattern(8192, 7)).unwrap();
    let buf = d.alloc(PAGE);
    d.mem.write(buf, &[0xee; 4096]);
    let faults = d.sim.iommu().fault_count();
    // A Read whose second page is unmapped: nothing is written, not even
    // the first page.
    let s = rw_prp(&mut d, false, 16, at(buf), UNMAPPED);
    assert_eq!(st(s), DATA_TRANSFER_ERROR);
    assert!(d.mem.bytes(buf, 4096).iter().all(|&b| b == 0xee));
    // A Write from unmapped memory leaves the namespace alone.
    let s = rw_prp(&mut d, true, 1, UNMAPPED, 0);
    assert_eq!(st(s), DATA_TRANSFER_ERROR);
    let mut stored = vec![0u8; 512];
    d.sim.read_blocks(1, 0, &mut stored).unwrap();
    assert!(stored == pattern(8192, 7)[..512]);
    assert!(d.sim.iommu().fault_count() >= faults + 2);
}

#[test]
fn the_device_cannot_write_into_a_read_only_mapping() {
    let mut d = Driver::with_io_queue(Config::default());
    let ro = HostMem::new(
        d.sim.iommu(),
        0x2000_0000,
        2 * PAGE as usize,
        Access::ReadOnly,
    );
    ro.write(0, &pattern(8192, 3));
    // Writes (device reads) from read-only memory are fine.
    let s = rw_prp(&mut d, true, 16, ro.iova(0).raw(), ro.iova(PAGE).raw());
    assert!(s.is_success(), "{s}");
    let mut stored = vec![0u8; 8192];
    d.sim.read_blocks(1, 0, &mut stored).unwrap();
    assert!(stored == pattern(8192, 3));
    // A Read into it fails and writes nothing; likewise when only its
    // second page is read-only.
    d.sim.write_blocks(1, 0, &[0x11; 8192]).unwrap();
    let s = rw_prp(&mut d, false, 16, ro.iova(0).raw(), ro.iova(PAGE).raw());
    assert_eq!(st(s), DATA_TRANSFER_ERROR);
    let rw = d.alloc(PAGE);
    d.mem.write(rw, &[0; 4096]);
    let s = rw_prp(&mut d, false, 16, at(rw), ro.iova(PAGE).raw());
    assert_eq!(st(s), DATA_TRANSFER_ERROR);
    assert!(ro.bytes(0, 8192) == pattern(8192, 3));
    assert!(d.mem.bytes(rw, 4096).iter().all(|&b| b == 0));
    // An admin command's data into read-only memory fails the same way.
    let mut id = Command::identify(nvme_vfio::nvme::cmd::cns::CONTROLLER, 0);
    id.dptr = [ro.iova(0).raw(), 0];
    assert_eq!(st(d.run(0, id).status()), DATA_TRANSFER_ERROR);
}

#[test]
fn queues_the_device_cannot_reach_raise_cfs() {
    // A submission queue whose memory is unmapped after creation: the
    // controller cannot fetch, and reports a fatal status (as QEMU's does).
    let mut d = Driver::new(Config::default());
    let cq = d.alloc(PAGE);
    let c = d.admin(Command::create_cq(1, 16, Iova::new(at(cq)), None), None);
    assert!(c.status().is_success());
    let c = d.admin(Command::create_sq(1, 16, Iova::new(UNMAPPED), 1), None);
    assert!(
        c.status().is_success(),
        "the queue base is not checked at creation"
    );
    d.sim
        .write32(nvme_vfio::nvme::regs::sq_tail_doorbell(1, 4), 1);
    common::wait_for("CSTS.CFS", || d.csts().fatal());
}
