//! Namespaces formatted with metadata and end-to-end protection, through
//! the driver: the checks of nvme-vfio's tests/pi (also run against QEMU's
//! controller in the VM) over the model's namespaces of every layout (no
//! PI; types 1 to 3; 16- and 64-bit guards; the tuple first or last in 8,
//! 16 or 32 bytes of metadata; extended LBAs or a separate buffer), on a
//! controller whose small MDTS splits requests into many commands. Then
//! what only the model shows: a block corrupted where it is stored, and
//! refusals of requests that do not fit the namespace's format.

mod common;

use std::time::Duration;

use nvme_sim::{Config, NamespaceConfig, SimController};
use nvme_vfio::ctrl::{Checks, Controller, Guard, Io, PiField, PiType, Protection, QueueConfig};
use nvme_vfio::Error;

#[path = "../../nvme-vfio/tests/pi/mod.rs"]
mod pi;

/// Protection information: type, guard, the tuple first.
type Pi = Option<(PiType, Guard, bool)>;

/// The namespaces: metadata bytes, extended LBAs, protection.
const LAYOUTS: &[(u16, bool, Pi)] = &[
    (8, false, None),
    (8, true, None),
    (8, true, Some((PiType::Type1, Guard::Crc16, false))),
    (8, false, Some((PiType::Type2, Guard::Crc16, false))),
    (16, false, Some((PiType::Type3, Guard::Crc16, true))),
    (16, false, Some((PiType::Type1, Guard::Crc64, false))),
    (16, true, Some((PiType::Type1, Guard::Crc16, false))),
    (32, false, Some((PiType::Type2, Guard::Crc64, true))),
    (32, true, Some((PiType::Type3, Guard::Crc64, false))),
    (16, true, Some((PiType::Type2, Guard::Crc64, true))),
];

fn open(mdts: u8, block_size: u32) -> (SimController, Controller) {
    let namespaces: Vec<NamespaceConfig> = LAYOUTS
        .iter()
        .enumerate()
        .map(|(i, &(ms, ext, pi))| {
            let ns = NamespaceConfig::new(4096, block_size)
                .with_id(i as u32 + 1)
                .with_metadata(ms)
                .extended(ext);
            match pi {
                Some((kind, guard, first)) => ns.protection(kind, guard, first),
                None => ns,
            }
        })
        .collect();
    let config = Config::default().namespaces(&namespaces).mdts(mdts);
    common::driver::open(config, Duration::from_secs(30), true)
}

#[test]
fn every_layout_round_trips_and_reports_each_check_error() {
    // MDTS 2 (16 KiB per command): the long transfers split into many
    // commands, each with its own metadata pointer and reference tag.
    let (_sim, ctrl) = open(2, 512);
    pi::check_namespaces(&ctrl, &layouts(1..=LAYOUTS.len() as u32));
}

#[test]
fn four_kib_blocks_with_protection() {
    let (_sim, ctrl) = open(5, 4096);
    pi::check_namespaces(&ctrl, &layouts([3, 6, 9]));
}

/// The layouts of namespaces `nsids`, as the checks take them.
fn layouts(nsids: impl IntoIterator<Item = u32>) -> Vec<pi::Layout> {
    nsids
        .into_iter()
        .map(|n| {
            let (metadata, extended, pi) = LAYOUTS[n as usize - 1];
            (n, metadata, extended, pi)
        })
        .collect()
}

/// A block corrupted where the controller stores it: the controller's
/// check finds the guard (a data byte), the application tag or the
/// reference tag wrong, by status; the driver's own check, with the
/// controller not checking, finds it too.
#[test]
fn stored_corruption_is_found_by_the_controller_and_by_the_driver() {
    let (sim, ctrl) = open(5, 512);
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    // Namespace 4: separate metadata of 8 bytes, type 2, the tuple last
    // (guard at metadata bytes 0..2, application tag 2..4, reference tag
    // 4..8).
    let ns = ctrl.namespace(4).unwrap();
    let data = pi::pattern(3, 8 * 512);
    let meta = vec![0u8; 8 * 8];
    let driver = Protection::driver().with_app_tag(0x0bad, 0xffff);
    for (offset, field, sc) in [
        (100usize, PiField::Guard, 0x82u8),
        (512 + 2, PiField::AppTag, 0x83),
        (512 + 7, PiField::RefTag, 0x84),
    ] {
        qp.write_with_metadata(&ns, 40, &data, &meta, Some(driver), false)
            .unwrap();
        sim.corrupt(4, 45, offset).unwrap();
        let mut d = vec![0u8; data.len()];
        let mut m = vec![0u8; meta.len()];
        let err = qp
            .read_with_metadata(&ns, 40, &mut d, &mut m, Some(driver))
            .expect_err("the controller's check");
        let s = err.status().expect("a status");
        assert_eq!((s.sct(), s.sc()), (2, sc), "{err}");
        assert_eq!(err.protection_field(), Some(field));
        let quiet = driver.with_checks(Checks::NONE);
        match qp.read_with_metadata(&ns, 40, &mut d, &mut m, Some(quiet)) {
            Err(Error::ProtectionCheck { lba, field: f, .. }) => {
                assert_eq!((lba, f), (45, field));
            }
            r => panic!("the driver's check: {r:?}"),
        }
    }
    // Asynchronously: the read's Done carries the driver's finding and
    // both buffers.
    qp.write_with_metadata(&ns, 40, &data, &meta, Some(driver), false)
        .unwrap();
    sim.corrupt(4, 41, 9).unwrap();
    let buf = ctrl.dma_alloc(data.len()).unwrap();
    let mbuf = ctrl.dma_alloc(meta.len()).unwrap();
    let io = Io::read(&ns, 40, buf)
        .with_len(data.len())
        .metadata(mbuf)
        .protection(driver.with_checks(Checks::NONE));
    qp.submit(io).map_err(|(e, _)| e).unwrap();
    let done = common::driver::wait_all(&mut qp, 1);
    let d = &done[0];
    match &d.result {
        Err(Error::ProtectionCheck {
            lba: 41,
            field: PiField::Guard,
            ..
        }) => {}
        r => panic!("{r:?}"),
    }
    assert!(d.buf.len() >= data.len());
    assert!(d.meta.as_ref().is_some_and(|m| m.len() >= meta.len()));
}

/// Requests that do not fit the namespace's format are refused before
/// submission, with their buffers back.
#[test]
fn requests_that_do_not_fit_the_format_are_refused() {
    let (_sim, ctrl) = open(5, 512);
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    // Extended LBAs of 520 bytes: 512 bytes is not a whole block.
    let ext = ctrl.namespace(3).unwrap();
    let mut b = vec![0u8; 512];
    let r = qp.read_with_metadata(&ext, 0, &mut b, &mut [], Some(Protection::driver()));
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    // A metadata buffer where the metadata is interleaved.
    let mut d = vec![0u8; 520];
    let mut m = vec![0u8; 8];
    let r = qp.read_with_metadata(&ext, 0, &mut d, &mut m, None);
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    // Zone Append, Copy and the like move no metadata through the
    // driver.
    let sep = ctrl.namespace(1).unwrap();
    let buf = ctrl.dma_alloc(512).unwrap();
    let (e, io) = qp
        .submit(Io::zone_append(&sep, 0, buf))
        .expect_err("no Zone Append with metadata");
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert_eq!(io.into_buf().len(), 512);
    // The separate metadata of namespace 1 is needed by plain calls.
    let r = qp.read(&sep, 0, &mut vec![0u8; 512]);
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    // Unsafe raw submission is refused on a namespace with metadata.
    let mut raw = vec![0u8; 512];
    let seg = blk_dma::HostSeg::from_mut_slice(&mut raw);
    // SAFETY: refused before anything is submitted (asserted).
    let r = unsafe { qp.submit_raw(nvme_vfio::ctrl::Op::Read, &sep, 0, &[seg], 1) };
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
}

/// A hostile caller's requests that would point the device past the
/// memory it was given: each refused before submission.
#[test]
fn requests_that_would_reach_other_memory_are_refused() {
    use nvme_vfio::ctrl::IoBuf;
    use nvme_vfio::nvme::cmd::{io, Command};
    let open = |ns: &[NamespaceConfig]| {
        common::driver::open(
            Config::default().namespaces(ns),
            Duration::from_secs(10),
            false,
        )
    };
    // The safe passthrough sends no metadata pointer and sizes data by
    // the block size: block commands on a namespace with metadata would
    // move more than the buffer (a PRP list taken from the caller's data).
    let (_sim, ctrl) = open(&[NamespaceConfig::from_kind("meta8-ext", 4096, 512).unwrap()]);
    let ns = ctrl.namespace(1).unwrap();
    let mut qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    let buf = ctrl.dma_alloc(8192).unwrap();
    let r = qp.io_passthru(
        &ns,
        Command::blocks(io::READ, 1, 0, 16, false),
        Some((buf, 8192)),
    );
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    // A metadata buffer of another DMA space: its IOVA is not this
    // controller's.
    let (_sim_a, a) = open(&[NamespaceConfig::from_kind("meta8", 4096, 512).unwrap()]);
    let (_sim_b, b) = open(&[NamespaceConfig::new(64, 512)]);
    let ns_a = a.namespace(1).unwrap();
    let mut qp = a.queue_pair(QueueConfig::default()).unwrap();
    let io = Io::read(&ns_a, 0, a.dma_alloc(4096).unwrap())
        .with_len(4096)
        .metadata(b.dma_alloc(512).unwrap());
    let (e, io) = qp.submit(io).expect_err("a foreign metadata buffer");
    assert!(matches!(e, Error::Invalid(_)), "{e}");
    assert!(matches!(io.into_bufs(), (IoBuf::Dma(_), Some(_))));
    // A DMA buffer of another space in the passthrough too.
    let r = qp.io_passthru(
        &ns_a,
        Command::new(io::DSM, 1),
        Some((b.dma_alloc(4096).unwrap(), 16)),
    );
    assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    // Metadata settings on a namespace without metadata: refused, also
    // once the fast path's mapping cache is warm.
    let ns_b = b.namespace(1).unwrap();
    let mut qp = b.queue_pair(QueueConfig::default()).unwrap();
    qp.read(&ns_b, 0, &mut [0u8; 4096]).unwrap();
    for _ in 0..2 {
        let io = Io::read(&ns_b, 0, b.dma_alloc(4096).unwrap())
            .metadata(b.dma_alloc(512).unwrap())
            .protection(Protection::driver());
        let (e, io) = qp.submit(io).expect_err("no metadata on this namespace");
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert!(io.into_bufs().1.is_some(), "the metadata buffer comes back");
        let io = Io::read(&ns_b, 0, b.dma_alloc(4096).unwrap()).protection(Protection::driver());
        assert!(qp.submit(io).is_err());
    }
    // Zone Append moves no metadata: refused on a zoned namespace with
    // extended LBAs (the device would read past the slice).
    let zoned = NamespaceConfig::new(4096, 512)
        .zoned(256)
        .zone_limits(8, 14)
        .with_metadata(8)
        .extended(true);
    let (_sim_z, z) = open(&[zoned]);
    let ns_z = z.namespace(1).unwrap();
    let mut qp = z.queue_pair(QueueConfig::default()).unwrap();
    let r = qp.zone_append(&ns_z, 0, &[0u8; 4096], false);
    assert!(matches!(r, Err(Error::Unsupported(_))), "{r:?}");
    // Lengths that overflow the metadata's size: an error, not a panic.
    let (_sim_h, h) = open(&[NamespaceConfig::new(1 << 54, 512).with_metadata(0xffff)]);
    let ns_h = h.namespace(1).unwrap();
    let mut qp = h.queue_pair(QueueConfig::default()).unwrap();
    let io = Io::read(&ns_h, 0, h.dma_alloc(4096).unwrap())
        .with_len(1usize << 63)
        .metadata(h.dma_alloc(512).unwrap());
    assert!(qp.submit(io).is_err());
    let mut d = vec![0u8; 1 << 20];
    let r = qp.read_with_metadata(&ns_h, (1 << 54) - 1, &mut d, &mut [], None);
    assert!(r.is_err());
}
