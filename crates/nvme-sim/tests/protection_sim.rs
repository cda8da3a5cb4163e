//! Block metadata and end-to-end protection information in the model,
//! command by command through the driver's raw I/O passthrough: Identify
//! fields, PRACT generation and stripping, tuples the host generates and
//! checks, extended and separate layouts, the three check errors after
//! damage to the stored blocks, type 1's reference tag rule, the escape of
//! blocks never written, the 64-bit guard, Verify, Write Zeroes, Compare
//! and Format NVM with protection settings.

mod common;
use std::time::Duration;

use nvme_sim::{Config, Guard, NamespaceConfig, PiType, SimController};
use nvme_vfio::ctrl::{Controller, QueueConfig, QueuePair};
use nvme_vfio::nvme::cmd::{admin, io, Command};
use nvme_vfio::nvme::iocs::{CommandSet, IdentifyNvmNamespace};
use nvme_vfio::nvme::nvm::CopyRange;
use nvme_vfio::nvme::pi::{guard_of, read_tuple, BlockFormat, Checks, Tags};

/// Namespace IDs of [`open`]'s controller.
const PI1: u32 = 1; // type 1, 8 bytes, separate
const PI1_MS16: u32 = 2; // type 1, 16 bytes, the tuple last
const PI2_EXT: u32 = 3; // type 2, 8 bytes, extended
const PI1_CRC64: u32 = 4; // type 1, 64-bit guard, 16 bytes
const META8: u32 = 5; // 8 bytes of metadata, no PI
const PI3_FIRST: u32 = 6; // type 3, the tuple first
const PI1_MS16_EXT: u32 = 7; // type 1, 16 bytes, extended
const PLAIN: u32 = 8; // no metadata

const KINDS: [&str; 8] = [
    "pi1",
    "pi1-ms16",
    "pi2-ext",
    "pi1-crc64",
    "meta8",
    "pi3-first",
    "pi1-ms16-ext",
    "nvm",
];

const BS: usize = 512;
const ALL: u8 = 0x7;
const GUARD: u8 = 0x4;

/// Every check namespace `nsid` takes: type 3 has no reference tag to
/// check (the controller refuses the check, as QEMU's does).
fn all_for(nsid: u32) -> u8 {
    if nsid == PI3_FIRST {
        ALL & !1
    } else {
        ALL
    }
}

fn open() -> (SimController, Controller, QueuePair) {
    let ns: Vec<NamespaceConfig> = KINDS
        .iter()
        .map(|k| NamespaceConfig::from_kind(k, 4096, 512).unwrap())
        .collect();
    let (sim, ctrl) = common::driver::open(
        Config::default().namespaces(&ns),
        Duration::from_secs(30),
        false,
    );
    let qp = ctrl.queue_pair(QueueConfig::default()).unwrap();
    (sim, ctrl, qp)
}

/// The namespace's format as Identify reports it (the guard from the NVM
/// command set's extended LBA format).
fn format_of(ctrl: &Controller, nsid: u32) -> BlockFormat {
    let id = ctrl.identify_namespace(nsid).unwrap();
    let nvm = IdentifyNvmNamespace(ctrl.identify_namespace_csi(nsid, CommandSet::Nvm).unwrap());
    let (_, pif) = nvm.elbaf(0).unwrap();
    id.block_format(Guard::from_pif(pif).unwrap()).unwrap()
}

/// Runs `cmd` with `data` through the data pointer and `meta` through
/// MPTR (when not empty): what the buffers hold afterwards, or the
/// failure's status type and code.
fn exec(
    ctrl: &Controller,
    qp: &mut QueuePair,
    mut cmd: Command,
    data: &[u8],
    meta: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), (u8, u8)> {
    let mbuf = (!meta.is_empty()).then(|| {
        let mut b = ctrl.dma_alloc(meta.len()).unwrap();
        b.as_mut_slice()[..meta.len()].copy_from_slice(meta);
        cmd.mptr = b.iova().raw();
        b
    });
    let dbuf = (!data.is_empty()).then(|| {
        let mut b = ctrl.dma_alloc(data.len()).unwrap();
        b.as_mut_slice()[..data.len()].copy_from_slice(data);
        (b, data.len())
    });
    // SAFETY: the command moves at most `data.len()` bytes through the
    // data pointer the driver builds for that buffer, and at most
    // `meta.len()` through MPTR, which points at `mbuf`, alive until the
    // command has completed.
    let r = unsafe { qp.io_passthru_unchecked(cmd, dbuf) };
    match r {
        Ok(buf) => Ok((
            buf.map(|b| b.as_slice()[..data.len()].to_vec())
                .unwrap_or_default(),
            mbuf.map(|b| b.as_slice()[..meta.len()].to_vec())
                .unwrap_or_default(),
        )),
        Err(e) => {
            let s = e.status().unwrap_or_else(|| panic!("no status: {e}"));
            Err((s.sct(), s.sc()))
        }
    }
}

/// A command on `n` blocks at `lba` with PRINFO and tags.
fn cmd(op: u8, nsid: u32, lba: u64, n: u32, pract: bool, prchk: u8, tags: Tags) -> Command {
    let mut c = Command::blocks(op, nsid, lba, n, false);
    c.set_protection(pract, prchk, tags.reference, tags.app, tags.app_mask);
    c
}

fn tags(reference: u64, app: u16) -> Tags {
    Tags {
        reference,
        app,
        app_mask: 0xffff,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Kinds parse into the namespaces they name, and Identify reports them:
/// metadata size, FLBAS extended, MC, DPC, DPS, and the guard in the NVM
/// command set's extended LBA format.
#[test]
fn identify_reports_metadata_and_protection() {
    let (_sim, ctrl, _qp) = open();
    let expect: [(u32, u16, bool, u8, u8); 8] = [
        (PI1, 8, false, 1, 0),
        (PI1_MS16, 16, false, 1, 0),
        (PI2_EXT, 8, true, 2, 0),
        (PI1_CRC64, 16, false, 1, 2),
        (META8, 8, false, 0, 0),
        (PI3_FIRST, 8, false, 3 | 8, 0),
        (PI1_MS16_EXT, 16, true, 1, 0),
        (PLAIN, 0, false, 0, 0),
    ];
    for (nsid, ms, ext, dps, pif) in expect {
        let id = ctrl.identify_namespace(nsid).unwrap();
        let f = id.current_lba_format().unwrap();
        assert_eq!(f.metadata, ms, "{nsid}");
        assert_eq!(id.extended_lba(), ext, "{nsid}");
        assert_eq!(id.mc(), if ms > 0 { 3 } else { 0 }, "{nsid}");
        assert_eq!(id.dpc(), if ms >= 8 { 0x1f } else { 0 }, "{nsid}");
        assert_eq!(id.dps(), dps, "{nsid}");
        let nvm = IdentifyNvmNamespace(ctrl.identify_namespace_csi(nsid, CommandSet::Nvm).unwrap());
        assert_eq!(nvm.elbaf(0), Some((0, pif)), "{nsid}");
        assert_eq!(nvm.elbaf(1), Some((0, 0)), "{nsid}");
    }
    let f = format_of(&ctrl, PI1_CRC64);
    let pi = f.pi.unwrap();
    assert_eq!(
        (pi.kind, pi.guard, pi.first),
        (PiType::Type1, Guard::Crc64, false)
    );
    let f = format_of(&ctrl, PI1_MS16);
    assert_eq!(f.pi_offset(), 8);
}

/// Kinds that make no sense are refused, and so is protection
/// information whose tuple the metadata cannot hold.
#[test]
fn kinds_and_configurations_are_checked() {
    for bad in [
        "pi4",
        "pi0",
        "meta0",
        "meta",
        "pi1-ms4",
        "meta8-first",
        "pi1-frob",
        "frob",
    ] {
        assert!(NamespaceConfig::from_kind(bad, 4096, 512).is_err(), "{bad}");
    }
    let ns = NamespaceConfig::from_kind("pi2-crc64-ms32-first-ext", 4096, 512).unwrap();
    assert_eq!((ns.metadata, ns.extended), (32, true));
    let pi = ns.pi.unwrap();
    assert_eq!(
        (pi.kind, pi.guard, pi.first),
        (PiType::Type2, Guard::Crc64, true)
    );
    let short = NamespaceConfig::new(4096, 512).with_metadata(8).protection(
        PiType::Type1,
        Guard::Crc64,
        false,
    );
    assert!(SimController::new(Config::default().namespaces(&[short])).is_err());
    let ext = NamespaceConfig::new(4096, 512).extended(true);
    assert!(SimController::new(Config::default().namespaces(&[ext])).is_err());
}

/// PRACT with 8 bytes of PI: no metadata moves either way, the
/// controller generates and strips the tuples; read back without PRACT
/// they are what the host would have generated. Separate and extended.
#[test]
fn pract_round_trip_with_the_tuple_alone() {
    let (sim, ctrl, mut qp) = open();
    for nsid in [PI1, PI2_EXT] {
        let f = format_of(&ctrl, nsid);
        let (lba, n) = (40u64, 4u32);
        let t = tags(lba, 0x1234);
        let data = pattern(n as usize * BS, nsid as u8);
        let w = cmd(io::WRITE, nsid, lba, n, true, ALL, t);
        exec(&ctrl, &mut qp, w, &data, &[]).unwrap();
        let r = cmd(io::READ, nsid, lba, n, true, ALL, t);
        let (back, _) = exec(&ctrl, &mut qp, r, &vec![0; data.len()], &[]).unwrap();
        assert_eq!(back, data, "{nsid}");
        // Without PRACT the tuples come to the host.
        let r = cmd(io::READ, nsid, lba, n, false, ALL, t);
        let dlen = f.data_stride(false) as usize * n as usize;
        let mlen = f.metadata_stride(false) as usize * n as usize;
        let (d, m) = exec(&ctrl, &mut qp, r, &vec![0; dlen], &vec![0; mlen]).unwrap();
        assert_eq!(f.verify(&d, &m, Checks::ALL, t), Ok(None), "{nsid}");
        let mut stored = vec![0u8; 8 * n as usize];
        sim.read_metadata(nsid, lba, &mut stored).unwrap();
        let (_, app, reference) = read_tuple(Guard::Crc16, &stored[8..]);
        assert_eq!((app, reference), (0x1234, lba + 1));
    }
}

/// PRACT with 16 bytes of metadata and the tuple last: the 8 bytes before
/// it move (separate and extended), are stored as sent and are covered by
/// the generated guard.
#[test]
fn pract_with_sixteen_bytes_moves_the_bytes_before_the_tuple() {
    let (sim, ctrl, mut qp) = open();
    for nsid in [PI1_MS16, PI1_MS16_EXT] {
        let f = format_of(&ctrl, nsid);
        let (lba, n) = (8u64, 3usize);
        let t = tags(lba, 0x0bad);
        let stride = f.data_stride(true) as usize;
        let mstride = f.metadata_stride(true) as usize;
        assert_eq!(
            (stride + mstride, f.metadata_stride(false)),
            (528, mstride as u64)
        );
        let mut host = pattern(n * stride, 3);
        let mut meta = pattern(n * mstride, 9);
        let w = cmd(io::WRITE, nsid, lba, n as u32, true, 0, t);
        exec(&ctrl, &mut qp, w, &host, &meta).unwrap();
        // Read back without PRACT: the first 8 bytes as sent, a tuple
        // that covers them.
        let r = cmd(io::READ, nsid, lba, n as u32, false, ALL, t);
        let (d, m) = exec(
            &ctrl,
            &mut qp,
            r,
            &vec![0; host.len()],
            &vec![0; meta.len()],
        )
        .unwrap();
        assert_eq!(f.verify(&d, &m, Checks::ALL, t), Ok(None), "{nsid}");
        let mut stored = vec![0u8; 16 * n];
        sim.read_metadata(nsid, lba, &mut stored).unwrap();
        for i in 0..n {
            let sent = if f.extended {
                &host[i * 528 + 512..i * 528 + 520]
            } else {
                &meta[i * 16..i * 16 + 8]
            };
            assert_eq!(&stored[i * 16..i * 16 + 8], sent, "{nsid} block {i}");
        }
        // PRACT reads move the same 8 bytes back.
        let r = cmd(io::READ, nsid, lba, n as u32, true, ALL, t);
        let (d, m) = exec(
            &ctrl,
            &mut qp,
            r,
            &vec![0; host.len()],
            &vec![0; meta.len()],
        )
        .unwrap();
        if f.extended {
            for i in 0..n {
                host[i * 528 + 520..(i + 1) * 528]
                    .copy_from_slice(&d[i * 528 + 520..(i + 1) * 528]);
            }
        } else {
            for i in 0..n {
                meta[i * 16 + 8..(i + 1) * 16].copy_from_slice(&m[i * 16 + 8..(i + 1) * 16]);
            }
        }
        assert_eq!((d, m), (host, meta), "{nsid}");
        // A byte before the tuple damaged: the guard finds it.
        sim.corrupt(nsid, lba + 1, BS + 3).unwrap();
        let r = cmd(io::READ, nsid, lba, n as u32, true, GUARD, t);
        let e = exec(
            &ctrl,
            &mut qp,
            r,
            &vec![0; stride * n],
            &vec![0; mstride * n],
        );
        assert_eq!(e.unwrap_err(), (2, 0x82), "{nsid}");
    }
}

/// Tuples the host generates, written without PRACT and checked by the
/// controller, read back with every check and verified by the host:
/// separate, extended, the tuple first, type 3, the 64-bit guard.
#[test]
fn host_generated_tuples_round_trip() {
    let (_sim, ctrl, mut qp) = open();
    for nsid in [PI1, PI1_MS16, PI2_EXT, PI1_CRC64, PI3_FIRST, PI1_MS16_EXT] {
        let f = format_of(&ctrl, nsid);
        let (lba, n) = (100u64, 5usize);
        let reference = if nsid == PI2_EXT { 0x7777 } else { lba };
        let t = tags(reference, 0x4242);
        let mut data = pattern(n * f.data_stride(false) as usize, nsid as u8);
        let mut meta = pattern(n * f.metadata_stride(false) as usize, 1);
        assert_eq!(f.generate(&mut data, &mut meta, t), Ok(n as u64));
        let w = cmd(io::WRITE, nsid, lba, n as u32, false, all_for(nsid), t);
        exec(&ctrl, &mut qp, w, &data, &meta).unwrap();
        let r = cmd(io::READ, nsid, lba, n as u32, false, all_for(nsid), t);
        let (d, m) = exec(
            &ctrl,
            &mut qp,
            r,
            &vec![0; data.len()],
            &vec![0; meta.len()],
        )
        .unwrap();
        assert_eq!((&d, &m), (&data, &meta), "{nsid}");
        assert_eq!(f.verify(&d, &m, Checks::ALL, t), Ok(None), "{nsid}");
    }
}

/// A write without PRACT checks the tuples sent for the PRCHK fields and
/// writes nothing when one fails.
#[test]
fn writes_without_pract_check_the_tuples_sent() {
    let (sim, ctrl, mut qp) = open();
    let f = format_of(&ctrl, PI1);
    let (lba, n) = (200u64, 2usize);
    let t = tags(lba, 0x1111);
    let mut data = pattern(n * BS, 5);
    let mut meta = vec![0u8; n * 8];
    f.generate(&mut data, &mut meta, t).unwrap();
    let mut bad = data.clone();
    bad[BS + 10] ^= 1;
    let w = cmd(io::WRITE, PI1, lba, n as u32, false, ALL, t);
    assert_eq!(exec(&ctrl, &mut qp, w, &bad, &meta).unwrap_err(), (2, 0x82));
    let w = cmd(io::WRITE, PI1, lba, n as u32, false, ALL, tags(lba, 0x2222));
    assert_eq!(
        exec(&ctrl, &mut qp, w, &data, &meta).unwrap_err(),
        (2, 0x83)
    );
    // Masked off, the application tag passes.
    let masked = Tags {
        app: 0x1122,
        app_mask: 0xff00,
        ..t
    };
    let w = cmd(io::WRITE, PI1, lba, n as u32, false, ALL, masked);
    exec(&ctrl, &mut qp, w, &data, &meta).unwrap();
    // Tuples made for other LBAs.
    let mut shifted = meta.clone();
    let mut d2 = data.clone();
    f.generate(&mut d2, &mut shifted, tags(lba + 1, 0x1111))
        .unwrap();
    let w = cmd(
        io::WRITE,
        PI1,
        lba + 10,
        n as u32,
        false,
        ALL,
        tags(lba + 10, 0x1111),
    );
    assert_eq!(
        exec(&ctrl, &mut qp, w, &d2, &shifted).unwrap_err(),
        (2, 0x84)
    );
    // Nothing of the failed writes was stored.
    let mut stored = vec![0u8; n * BS];
    sim.read_blocks(PI1, lba + 10, &mut stored).unwrap();
    assert!(stored.iter().all(|&b| b == 0));
    let mut m = vec![0u8; n * 8];
    sim.read_metadata(PI1, lba + 10, &mut m).unwrap();
    assert!(m.iter().all(|&b| b == 0xff));
    // Without the guard check the damaged block is taken as sent.
    let w = cmd(io::WRITE, PI1, lba, n as u32, false, ALL & !GUARD, t);
    exec(&ctrl, &mut qp, w, &bad, &meta).unwrap();
}

/// Damage to stored blocks: a data byte is a guard error, the
/// application tag's bytes an application tag error, the reference
/// tag's a reference tag error, each only when its check is asked for.
#[test]
fn reads_find_corruption_by_each_check() {
    let (sim, ctrl, mut qp) = open();
    let (lba, n) = (300u64, 4u32);
    let t = tags(lba, 0x5a5a);
    let data = pattern(n as usize * BS, 7);
    let w = cmd(io::WRITE, PI1, lba, n, true, 0, t);
    exec(&ctrl, &mut qp, w, &data, &[]).unwrap();
    let read = |qp: &mut QueuePair, prchk: u8| {
        let r = cmd(io::READ, PI1, lba, n, true, prchk, t);
        exec(&ctrl, qp, r, &vec![0; data.len()], &[]).map(|_| ())
    };
    read(&mut qp, ALL).unwrap();
    sim.corrupt(PI1, lba + 1, 100).unwrap();
    assert_eq!(read(&mut qp, ALL), Err((2, 0x82)));
    read(&mut qp, ALL & !GUARD).unwrap();
    // Application tag (bytes 2 and 3 of the tuple).
    sim.corrupt(PI1, lba + 1, 100).unwrap();
    sim.corrupt(PI1, lba + 2, BS + 3).unwrap();
    assert_eq!(read(&mut qp, ALL), Err((2, 0x83)));
    read(&mut qp, GUARD | 1).unwrap();
    // Reference tag (bytes 4 to 7).
    sim.corrupt(PI1, lba + 2, BS + 3).unwrap();
    sim.corrupt(PI1, lba + 3, BS + 7).unwrap();
    assert_eq!(read(&mut qp, ALL), Err((2, 0x84)));
    read(&mut qp, GUARD | 2).unwrap();
    // Out of the block.
    assert!(sim.corrupt(PI1, lba, BS + 8).is_err());
    assert!(sim.corrupt(PI1, 4096, 0).is_err());
}

/// Type 1 with the reference tag check: the command's reference tag must
/// be its SLBA, 32 bits of it with the 16-bit guard and 48 with the
/// 64-bit guard; other types and commands without the check take any.
#[test]
fn type1_reference_tag_is_the_slba() {
    let (_sim, ctrl, mut qp) = open();
    let data = pattern(BS, 1);
    let lba = 17u64;
    let w = |nsid, reference, prchk| cmd(io::WRITE, nsid, lba, 1, true, prchk, tags(reference, 0));
    assert_eq!(
        exec(&ctrl, &mut qp, w(PI1, lba + 1, 1), &data, &[]).unwrap_err(),
        (1, 0x81)
    );
    exec(&ctrl, &mut qp, w(PI1, lba + 1, GUARD), &data, &[]).unwrap();
    exec(&ctrl, &mut qp, w(PI1, lba, ALL), &data, &[]).unwrap();
    // Bits 47:32 (dword 3) do not count with 32-bit reference tags.
    exec(&ctrl, &mut qp, w(PI1, lba | 1 << 32, ALL), &data, &[]).unwrap();
    let w64 = |reference| cmd(io::WRITE, PI1_CRC64, lba, 1, true, ALL, tags(reference, 0));
    let e = exec(&ctrl, &mut qp, w64(lba | 1 << 32), &data, &[]);
    assert_eq!(e.unwrap_err(), (1, 0x81));
    exec(&ctrl, &mut qp, w64(lba), &data, &[]).unwrap();
    // Type 2: any initial reference tag.
    let ext = pattern(BS, 2);
    let w2 = cmd(io::WRITE, PI2_EXT, lba, 1, true, ALL, tags(999, 0));
    exec(&ctrl, &mut qp, w2, &ext, &[]).unwrap();
    // Reads follow the same rule.
    let r = cmd(io::READ, PI1, lba, 1, true, ALL, tags(lba + 5, 0));
    assert_eq!(exec(&ctrl, &mut qp, r, &data, &[]).unwrap_err(), (1, 0x81));
}

/// Blocks never written have all-FFh metadata: their tuples escape every
/// check (type 3 too, whose escape needs the reference tag all ones), and
/// so do blocks zeroed without PRACT or deallocated.
#[test]
fn unwritten_blocks_escape_the_checks() {
    let (_sim, ctrl, mut qp) = open();
    for nsid in [PI1, PI3_FIRST, PI1_CRC64, PI2_EXT] {
        let f = format_of(&ctrl, nsid);
        let (lba, n) = (1000u64, 3usize);
        let t = tags(lba, 0x1234);
        let dlen = n * f.data_stride(false) as usize;
        let mlen = n * f.metadata_stride(false) as usize;
        let r = cmd(io::READ, nsid, lba, n as u32, false, all_for(nsid), t);
        let (d, m) = exec(&ctrl, &mut qp, r, &vec![1; dlen], &vec![1; mlen]).unwrap();
        if f.extended {
            assert!(d.chunks(520).all(|b| b[..512].iter().all(|&x| x == 0)));
            assert!(d.chunks(520).all(|b| b[512..].iter().all(|&x| x == 0xff)));
        } else {
            assert!(d.iter().all(|&b| b == 0) && m.iter().all(|&b| b == 0xff));
        }
        // Written, then zeroed without PRACT: escaped again.
        let w = cmd(io::WRITE, nsid, lba, n as u32, true, 0, t);
        exec(&ctrl, &mut qp, w, &pattern(n * BS, 3), &[]).unwrap();
        let z = cmd(io::WRITE_ZEROES, nsid, lba, n as u32, false, 0, t);
        exec(&ctrl, &mut qp, z, &[], &[]).unwrap();
        let r = cmd(
            io::READ,
            nsid,
            lba,
            n as u32,
            true,
            all_for(nsid),
            tags(lba, 0x9999),
        );
        exec(&ctrl, &mut qp, r, &vec![0; n * BS], &[]).unwrap();
    }
}

/// The 64-bit guard: the tuple holds CRC-64 NVMe of the data and a 48-bit
/// reference tag; damage is a guard error.
#[test]
fn sixty_four_bit_guard() {
    let (sim, ctrl, mut qp) = open();
    let (lba, n) = (64u64, 2usize);
    let t = tags(lba, 0xabcd);
    let data = pattern(n * BS, 11);
    let w = cmd(io::WRITE, PI1_CRC64, lba, n as u32, true, ALL, t);
    exec(&ctrl, &mut qp, w, &data, &[]).unwrap();
    let r = cmd(io::READ, PI1_CRC64, lba, n as u32, false, ALL, t);
    let (d, m) = exec(&ctrl, &mut qp, r, &vec![0; n * BS], &vec![0; n * 16]).unwrap();
    assert_eq!(d, data);
    for i in 0..n {
        let (guard, app, reference) = read_tuple(Guard::Crc64, &m[i * 16..]);
        assert_eq!(
            guard,
            guard_of(Guard::Crc64, &data[i * BS..(i + 1) * BS], &[])
        );
        assert_eq!((app, reference), (0xabcd, lba + i as u64));
    }
    sim.corrupt(PI1_CRC64, lba, 0).unwrap();
    let r = cmd(io::READ, PI1_CRC64, lba, n as u32, true, ALL, t);
    let e = exec(&ctrl, &mut qp, r, &vec![0; n * BS], &[]);
    assert_eq!(e.unwrap_err(), (2, 0x82));
}

/// Verify checks the stored tuples for the PRCHK fields and moves
/// nothing.
#[test]
fn verify_checks_the_stored_tuples() {
    let (sim, ctrl, mut qp) = open();
    let (lba, n) = (500u64, 8u32);
    let t = tags(lba, 0x77);
    let w = cmd(io::WRITE, PI1, lba, n, true, 0, t);
    exec(&ctrl, &mut qp, w, &pattern(n as usize * BS, 4), &[]).unwrap();
    let v = |prchk, t| cmd(io::VERIFY, PI1, lba, n, false, prchk, t);
    exec(&ctrl, &mut qp, v(ALL, t), &[], &[]).unwrap();
    assert_eq!(
        exec(&ctrl, &mut qp, v(ALL, tags(lba, 0x78)), &[], &[]).unwrap_err(),
        (2, 0x83)
    );
    sim.corrupt(PI1, lba + 5, 0).unwrap();
    assert_eq!(
        exec(&ctrl, &mut qp, v(ALL, t), &[], &[]).unwrap_err(),
        (2, 0x82)
    );
    exec(&ctrl, &mut qp, v(0, t), &[], &[]).unwrap();
}

/// Write Zeroes with PRACT stores zeroes with generated tuples; with
/// PRCHK bits it is Invalid Protection Information.
#[test]
fn write_zeroes_with_pract_generates_tuples() {
    let (_sim, ctrl, mut qp) = open();
    let (lba, n) = (600u64, 300usize);
    let t = tags(lba, 0x3c3c);
    let w = cmd(io::WRITE, PI1_MS16, lba, 4, true, 0, t);
    exec(&ctrl, &mut qp, w, &pattern(4 * BS, 1), &[5; 64]).unwrap();
    let z = cmd(io::WRITE_ZEROES, PI1_MS16, lba, n as u32, true, 0, t);
    exec(&ctrl, &mut qp, z, &[], &[]).unwrap();
    // Read in two parts (MDTS), across the model's steps of 256 blocks.
    let f = format_of(&ctrl, PI1_MS16);
    let mut last = Vec::new();
    for (at, k) in [(0usize, 200usize), (200, n - 200)] {
        let t = tags(lba + at as u64, 0x3c3c);
        let r = cmd(io::READ, PI1_MS16, lba + at as u64, k as u32, false, ALL, t);
        let (d, m) = exec(&ctrl, &mut qp, r, &vec![1; k * BS], &vec![1; k * 16]).unwrap();
        assert!(d.iter().all(|&b| b == 0));
        assert!(m.chunks(16).all(|b| b[..8] == [0; 8]));
        assert_eq!(f.verify(&d, &m, Checks::ALL, t), Ok(None));
        last = m;
    }
    let (guard, app, reference) = read_tuple(Guard::Crc16, &last[99 * 16 + 8..]);
    assert_eq!(guard, guard_of(Guard::Crc16, &[0; BS], &[0; 8]));
    assert_eq!((app, reference), (0x3c3c, lba + 299));
    let z = cmd(io::WRITE_ZEROES, PI1_MS16, lba, 1, true, GUARD, t);
    assert_eq!(exec(&ctrl, &mut qp, z, &[], &[]).unwrap_err(), (1, 0x81));
}

/// A namespace with metadata and no protection information ignores
/// PRINFO: its metadata is stored and moved as it is, and Compare covers
/// it. Compare with PRACT on a protected namespace is refused. The
/// metadata pointer must be dword aligned and mapped.
#[test]
fn plain_metadata_compare_and_the_metadata_pointer() {
    let (_sim, ctrl, mut qp) = open();
    let (lba, n) = (10u64, 3usize);
    let data = pattern(n * BS, 2);
    let meta = pattern(n * 8, 200);
    let w = cmd(io::WRITE, META8, lba, n as u32, true, ALL, tags(0, 0));
    exec(&ctrl, &mut qp, w, &data, &meta).unwrap();
    let r = cmd(io::READ, META8, lba, n as u32, true, ALL, tags(0, 0));
    let (d, m) = exec(
        &ctrl,
        &mut qp,
        r,
        &vec![0; data.len()],
        &vec![0; meta.len()],
    )
    .unwrap();
    assert_eq!((d, m), (data.clone(), meta.clone()));
    let c = cmd(io::COMPARE, META8, lba, n as u32, false, 0, tags(0, 0));
    exec(&ctrl, &mut qp, c, &data, &meta).unwrap();
    let mut other = meta.clone();
    other[13] ^= 1;
    let c = cmd(io::COMPARE, META8, lba, n as u32, false, 0, tags(0, 0));
    assert_eq!(
        exec(&ctrl, &mut qp, c, &data, &other).unwrap_err(),
        (2, 0x85)
    );
    let c = cmd(io::COMPARE, PI1, lba, 1, true, 0, tags(lba, 0));
    assert_eq!(
        exec(&ctrl, &mut qp, c, &data[..BS], &[]).unwrap_err(),
        (1, 0x81)
    );
    // An unaligned and an unmapped metadata pointer.
    let mut w = cmd(io::WRITE, META8, lba, 1, false, 0, tags(0, 0));
    let buf = ctrl.dma_alloc(BS).unwrap();
    let mbuf = ctrl.dma_alloc(64).unwrap();
    w.mptr = mbuf.iova().raw() + 2;
    // SAFETY: the write reads one block from `buf` and 8 bytes at MPTR,
    // inside `mbuf`, which outlives the command.
    let e = unsafe { qp.io_passthru_unchecked(w, Some((buf, BS))) }.unwrap_err();
    assert_eq!(e.status().map(|s| (s.sct(), s.sc())), Some((0, 0x02)));
    w.mptr = 0x7000_0000_0000;
    let buf = ctrl.dma_alloc(BS).unwrap();
    // SAFETY: MPTR points at no mapping: the IOMMU refuses the access.
    let e = unsafe { qp.io_passthru_unchecked(w, Some((buf, BS))) }.unwrap_err();
    assert_eq!(e.status().map(|s| (s.sct(), s.sc())), Some((0, 0x04)));
    drop(mbuf);
}

/// MDTS counts interleaved metadata, except what PRACT leaves to the
/// controller.
#[test]
fn mdts_counts_extended_metadata() {
    let (_sim, ctrl, mut qp) = open();
    // MDTS 5: 128 KiB, 256 blocks of 512 bytes.
    let n = 256u32;
    let w = cmd(io::WRITE, PI2_EXT, 0, n, false, 0, tags(0, 0));
    let e = exec(&ctrl, &mut qp, w, &vec![0; 256 * 520], &[]);
    assert_eq!(e.unwrap_err(), (0, 0x02));
    let w = cmd(io::WRITE, PI2_EXT, 0, n, true, 0, tags(0, 0));
    exec(&ctrl, &mut qp, w, &vec![0; 256 * 512], &[]).unwrap();
}

/// Format NVM with protection settings: PI on, first, extended, and off
/// again, each reported by Identify and applied to the commands; the
/// blocks are erased; formats the metadata cannot hold are refused.
#[test]
fn format_nvm_changes_protection() {
    let (_sim, ctrl, mut qp) = open();
    let format = |nsid, cdw10| {
        let mut c = Command::new(admin::FORMAT_NVM, nsid);
        c.cdw10 = cdw10;
        ctrl.admin_passthru(c, None)
            .map(|_| ())
            .map_err(|e| e.status().map(|s| (s.sct(), s.sc())))
    };
    // meta8 becomes type 1.
    format(META8, 1 << 5).unwrap();
    let id = ctrl.identify_namespace(META8).unwrap();
    assert_eq!((id.dps(), id.extended_lba()), (1, false));
    let (lba, t) = (3u64, tags(3, 1));
    let w = cmd(io::WRITE, META8, lba, 1, true, ALL, t);
    exec(&ctrl, &mut qp, w, &pattern(BS, 1), &[]).unwrap();
    let bad = cmd(io::READ, META8, lba, 1, true, ALL, tags(4, 1));
    assert_eq!(
        exec(&ctrl, &mut qp, bad, &[0; BS], &[]).unwrap_err(),
        (1, 0x81)
    );
    // Type 3, first, extended.
    format(META8, 3 << 5 | 1 << 8 | 1 << 4).unwrap();
    let id = ctrl.identify_namespace(META8).unwrap();
    assert_eq!((id.dps(), id.extended_lba()), (3 | 8, true));
    // Erased: the block reads as zeroes with escaped tuples.
    let r = cmd(io::READ, META8, lba, 1, false, ALL & !1, t);
    let (d, _) = exec(&ctrl, &mut qp, r, &[1; 520], &[]).unwrap();
    assert!(d[..BS].iter().all(|&b| b == 0) && d[BS..].iter().all(|&b| b == 0xff));
    // Off again: PRINFO ignored, separate metadata.
    format(META8, 0).unwrap();
    let id = ctrl.identify_namespace(META8).unwrap();
    assert_eq!((id.dps(), id.extended_lba()), (0, false));
    let r = cmd(io::READ, META8, lba, 1, true, ALL, tags(99, 1));
    exec(&ctrl, &mut qp, r, &[0; BS], &[0; 8]).unwrap();
    // No metadata for a tuple; a reserved type; another format.
    assert_eq!(format(PLAIN, 1 << 5), Err(Some((1, 0x0a))));
    assert_eq!(format(PI1_CRC64, 5 << 5), Err(Some((0, 0x02))));
    assert_eq!(format(PI1, 1), Err(Some((1, 0x0a))));
    // The 64-bit guard stays with its format: 16 bytes hold its tuple.
    format(PI1_CRC64, 2 << 5).unwrap();
    let f = format_of(&ctrl, PI1_CRC64);
    assert_eq!(
        f.pi.map(|p| (p.kind, p.guard)),
        Some((PiType::Type2, Guard::Crc64))
    );
}

/// Copy moves metadata with the data, unchecked: the copied tuples keep
/// their source's reference tags, so a type 1 read of the copy with the
/// reference tag check fails.
#[test]
fn copy_moves_metadata_as_it_is() {
    let (sim, ctrl, mut qp) = open();
    let t = tags(20, 0x10);
    let w = cmd(io::WRITE, PI1, 20, 2, true, 0, t);
    exec(&ctrl, &mut qp, w, &pattern(2 * BS, 8), &[]).unwrap();
    let c = Command::copy(PI1, 40, 1);
    exec(&ctrl, &mut qp, c, &CopyRange::new(20, 2).to_bytes(), &[]).unwrap();
    let (mut a, mut b) = (vec![0u8; 16], vec![0u8; 16]);
    sim.read_metadata(PI1, 20, &mut a).unwrap();
    sim.read_metadata(PI1, 40, &mut b).unwrap();
    assert_eq!(a, b);
    let r = cmd(io::READ, PI1, 40, 2, true, GUARD | 2, tags(40, 0x10));
    exec(&ctrl, &mut qp, r, &[0; 2 * BS], &[]).unwrap();
    let r = cmd(io::READ, PI1, 40, 2, true, ALL, tags(40, 0x10));
    assert_eq!(
        exec(&ctrl, &mut qp, r, &[0; 2 * BS], &[]).unwrap_err(),
        (2, 0x84)
    );
}
