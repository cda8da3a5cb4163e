//! Checks of a namespace formatted with metadata, through the driver: the
//! same checks run against nvme-sim (crates/nvme-sim/tests/protection.rs)
//! and against QEMU's controller in the VM (vm_protection.rs).

use nvme_vfio::ctrl::{
    BlockFormat, Checks, Controller, Guard, Io, IoBuf, Namespace, PiField, PiType, Protection,
    QueuePair,
};
use nvme_vfio::nvme::pi::Tags;
use nvme_vfio::Error;

/// What a namespace is expected to be formatted with.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// The namespace ID.
    pub nsid: u32,
    /// Metadata bytes per block.
    pub metadata: u16,
    /// Extended LBAs.
    pub extended: bool,
    /// Protection information: type, guard, in the first bytes.
    pub pi: Option<(PiType, Guard, bool)>,
}

/// Bytes `len` of a pattern seeded by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9).wrapping_add(seed * 131) >> 7) as u8)
        .collect()
}

/// Data and metadata buffers of `blocks` blocks as `f` lays them out
/// without PRACT, filled from `seed`.
fn buffers(f: &BlockFormat, blocks: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let d = pattern(seed, blocks * f.data_stride(false) as usize);
    let m = pattern(seed + 7, blocks * f.metadata_stride(false) as usize);
    (d, m)
}

/// The same buffers with the tuples as the driver computes them.
fn with_tuples(f: &BlockFormat, d: &[u8], m: &[u8], tags: Tags) -> (Vec<u8>, Vec<u8>) {
    let (mut d, mut m) = (d.to_vec(), m.to_vec());
    if f.pi.is_some() {
        f.generate(&mut d, &mut m, tags).expect("whole blocks");
    }
    (d, m)
}

/// Reads `blocks` blocks at `lba` as they are (PRACT=0, nothing checked).
fn read_raw(
    qp: &mut QueuePair,
    ns: &Namespace,
    lba: u64,
    blocks: usize,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let f = ns.format();
    let mut d = vec![0u8; blocks * f.data_stride(false) as usize];
    let mut m = vec![0u8; blocks * f.metadata_stride(false) as usize];
    let p = f.pi.map(|_| Protection::as_is(Checks::NONE));
    qp.read_with_metadata(ns, lba, &mut d, &mut m, p)?;
    Ok((d, m))
}

/// Writes as they are (PRACT=0, nothing checked).
fn write_raw(qp: &mut QueuePair, ns: &Namespace, lba: u64, d: &[u8], m: &[u8]) {
    let p = ns.format().pi.map(|_| Protection::as_is(Checks::NONE));
    qp.write_with_metadata(ns, lba, d, m, p, false)
        .expect("write as it is");
}

/// The status type and code of an error.
fn status(e: &Error) -> Option<(u8, u8)> {
    e.status().map(|s| (s.sct(), s.sc()))
}

/// A namespace's layout: nsid, metadata bytes, extended LBAs, protection.
pub type Layout = (u32, u16, bool, Option<(PiType, Guard, bool)>);

/// Runs every check on each namespace of `layouts`.
pub fn check_namespaces(ctrl: &Controller, layouts: &[Layout]) {
    for &(nsid, metadata, extended, pi) in layouts {
        eprintln!("namespace {nsid}: {metadata} bytes of metadata, extended {extended}, {pi:?}");
        check_namespace(
            ctrl,
            Expect {
                nsid,
                metadata,
                extended,
                pi,
            },
        );
    }
}

/// Runs every check on namespace `e.nsid` of `ctrl`.
pub fn check_namespace(ctrl: &Controller, e: Expect) {
    let ns = ctrl
        .namespace(e.nsid)
        .expect("a namespace with metadata opens");
    let f = ns.format();
    let nsid = e.nsid;
    assert_eq!(
        (f.metadata, f.extended),
        (e.metadata, e.extended),
        "namespace {nsid}: {f:?}"
    );
    assert_eq!(
        f.pi.map(|p| (p.kind, p.guard, p.first)),
        e.pi,
        "namespace {nsid}: {f:?}"
    );
    assert!(ns.has_metadata());
    let mut qp = ctrl.queue_pair(Default::default()).expect("queue pair");
    let lba = 16u64;
    let blocks = 24usize;
    let tags = Tags {
        reference: lba,
        app: 0x1234,
        app_mask: 0xffff,
    };
    let (d, m) = buffers(&f, blocks, nsid as u64);
    let (dt, mt) = with_tuples(&f, &d, &m, tags);

    // 1. A round trip with the tuples computed and checked by the driver
    // (and checked by the controller), or as it is without PI.
    let driver =
        f.pi.map(|_| Protection::driver().with_app_tag(0x1234, 0xffff));
    qp.write_with_metadata(&ns, lba, &d, &m, driver, false)
        .expect("write with metadata");
    let mut d2 = vec![0u8; d.len()];
    let mut m2 = vec![0u8; m.len()];
    qp.read_with_metadata(&ns, lba, &mut d2, &mut m2, driver)
        .expect("read with metadata, checked");
    assert!(
        d2 == dt,
        "namespace {nsid}: data (and interleaved metadata) read back"
    );
    assert!(m2 == mt, "namespace {nsid}: metadata read back");

    // The whole metadata is required unless the controller inserts it.
    if f.metadata_stride(false) != 0 {
        let r = qp.write_with_metadata(&ns, lba, &d, &m[..m.len() - 1], driver, false);
        assert!(matches!(r, Err(Error::Invalid(_))), "short metadata: {r:?}");
        let r = qp.write(&ns, lba, &d, false);
        if !f.metadata_is_pi() {
            assert!(
                matches!(r, Err(Error::Invalid(_))),
                "plain write needs metadata: {r:?}"
            );
        }
    }

    let Some(pi) = f.pi else {
        let r = qp.read_with_metadata(&ns, lba, &mut d2, &mut m2, Some(Protection::controller()));
        assert!(
            matches!(r, Err(Error::Invalid(_))),
            "PI settings without PI: {r:?}"
        );
        check_async(ctrl, &mut qp, &ns, None);
        return;
    };

    // 2. Tuples the controller inserts (PRACT=1) are what the driver
    // computes: the guard's CRC, the tags.
    let ctl = Protection::controller().with_app_tag(0x77, 0xffff);
    let dp = pattern(nsid as u64 + 50, blocks * f.data_stride(true) as usize);
    let mp = pattern(nsid as u64 + 51, blocks * f.metadata_stride(true) as usize);
    qp.write_with_metadata(&ns, lba, &dp, &mp, Some(ctl), false)
        .expect("write, the controller inserting PI");
    let (rd, rm) = read_raw(&mut qp, &ns, lba, blocks).expect("read as it is");
    let t77 = Tags { app: 0x77, ..tags };
    assert_eq!(
        f.verify(&rd, &rm, Checks::ALL, t77),
        Ok(None),
        "namespace {nsid}: the controller's tuples check out"
    );
    // Read back with PRACT: the data (stripped of PI that is the whole
    // metadata), every field checked by the controller.
    let mut d3 = vec![0u8; dp.len()];
    let mut m3 = vec![0u8; mp.len()];
    qp.read_with_metadata(&ns, lba, &mut d3, &mut m3, Some(ctl))
        .expect("read, the controller checking and stripping");
    if f.metadata_is_pi() {
        assert!(d3 == dp, "namespace {nsid}: data read back with PRACT");
        assert!(m3.is_empty());
        // Plain reads and writes take PRACT on such a namespace.
        let mut d4 = vec![0u8; dp.len()];
        qp.read(&ns, lba, &mut d4).expect("plain read");
        assert!(d4 == dp);
        qp.write(&ns, lba, &dp, false).expect("plain write");
    } else {
        // The metadata moves as stored: the caller's bytes but for the
        // tuples the controller wrote.
        assert!(
            d3 == rd && m3 == rm,
            "namespace {nsid}: read back with PRACT"
        );
        let (at, t) = (f.pi_offset(), pi.guard.tuple_len());
        let (bs, ms) = (f.data as usize, f.metadata as usize);
        for b in 0..blocks {
            let (got, want) = match f.extended {
                true => {
                    let r = b * (bs + ms)..(b + 1) * (bs + ms);
                    (&d3[r.clone()], &dp[r])
                }
                false => {
                    let r = b * bs..(b + 1) * bs;
                    assert_eq!(&d3[r.clone()], &dp[r], "namespace {nsid}: data");
                    let r = b * ms..(b + 1) * ms;
                    (&m3[r.clone()], &mp[r])
                }
            };
            let pi_at = if f.extended { bs + at } else { at };
            assert_eq!(
                &got[..pi_at],
                &want[..pi_at],
                "namespace {nsid}: before the tuple"
            );
            assert_eq!(
                &got[pi_at + t..],
                &want[pi_at + t..],
                "namespace {nsid}: after it"
            );
        }
    }

    // 3. A block stored with a bad guard: the controller's check fails
    // the read; with the controller not checking, the driver's does.
    let mut bad = dt.clone();
    let stride = f.data_stride(false) as usize;
    bad[3 * stride + 5] ^= 0x40;
    write_raw(&mut qp, &ns, lba, &bad, &mt);
    let mut d5 = vec![0u8; d.len()];
    let mut m5 = vec![0u8; m.len()];
    let app = Protection::as_is(Checks::ALL).with_app_tag(0x1234, 0xffff);
    let r = qp.read_with_metadata(&ns, lba, &mut d5, &mut m5, Some(app));
    let err = r.expect_err("a guard error");
    assert_eq!(status(&err), Some((2, 0x82)), "namespace {nsid}: {err}");
    assert_eq!(err.protection_field(), Some(PiField::Guard));
    let driver_only = Protection::driver()
        .with_app_tag(0x1234, 0xffff)
        .with_checks(Checks::NONE);
    let r = qp.read_with_metadata(&ns, lba, &mut d5, &mut m5, Some(driver_only));
    match r {
        Err(Error::ProtectionCheck {
            lba: at,
            field: PiField::Guard,
            ..
        }) => assert_eq!(at, lba + 3),
        r => panic!("namespace {nsid}: the driver's guard check: {r:?}"),
    }

    // 4. The application tag, under its mask.
    write_raw(&mut qp, &ns, lba, &dt, &mt);
    let other = Protection::as_is(Checks::ALL).with_app_tag(0x4321, 0xffff);
    let err = qp
        .read_with_metadata(&ns, lba, &mut d5, &mut m5, Some(other))
        .expect_err("an application tag error");
    assert_eq!(status(&err), Some((2, 0x83)), "namespace {nsid}: {err}");
    let masked = Protection::as_is(Checks::ALL).with_app_tag(0x1299, 0xff00);
    qp.read_with_metadata(&ns, lba, &mut d5, &mut m5, Some(masked))
        .expect("the tag under the mask matches");

    // 5. Reference tags written off by 5 fail the check of types 1 and 2;
    // type 3 has none (the driver leaves the check out).
    let (ds, ms) = with_tuples(
        &f,
        &d,
        &m,
        Tags {
            reference: lba + 5,
            ..tags
        },
    );
    write_raw(&mut qp, &ns, lba, &ds, &ms);
    let refcheck = Protection::as_is(Checks {
        guard: true,
        app: false,
        reference: true,
    });
    let r = qp.read_with_metadata(&ns, lba, &mut d5, &mut m5, Some(refcheck));
    if pi.kind == PiType::Type3 {
        r.expect("type 3 has no reference tag to check");
    } else {
        let err = r.expect_err("a reference tag error");
        assert_eq!(status(&err), Some((2, 0x84)), "namespace {nsid}: {err}");
        assert_eq!(err.protection_field(), Some(PiField::RefTag));
    }
    if pi.kind == PiType::Type2 {
        qp.read_with_metadata(
            &ns,
            lba,
            &mut d5,
            &mut m5,
            Some(refcheck.with_reference(lba + 5)),
        )
        .expect("the reference tags they were written with");
    }
    // Type 1: the command's reference tag must be the LBA's.
    if pi.kind == PiType::Type1 {
        let off = refcheck.with_reference(lba + 1);
        let err = qp
            .read_with_metadata(&ns, lba, &mut d5, &mut m5, Some(off))
            .expect_err("type 1 takes no other reference tag");
        assert_eq!(status(&err), Some((1, 0x81)), "namespace {nsid}: {err}");
    }
    // Type 2: any initial reference tag, counted from.
    if pi.kind == PiType::Type2 {
        let t = Tags {
            reference: 0xabc0,
            ..tags
        };
        let (d6, m6) = with_tuples(&f, &d, &m, t);
        write_raw(&mut qp, &ns, lba, &d6, &m6);
        let p = refcheck.with_reference(0xabc0);
        qp.read_with_metadata(&ns, lba, &mut d5, &mut m5, Some(p))
            .expect("type 2 with its own reference tags");
    }

    // 6. A transfer split into several commands: each command's reference
    // tag and metadata pointer follow its place in the request.
    // Over two maximum transfers, and over the 1 MiB the blocking calls
    // copy through at a time.
    let big = (ctrl.max_transfer() as usize * 2 + 4096).max((1 << 20) + 4096) / f.data as usize;
    let (bd, bm) = buffers(&f, big, nsid as u64 + 9);
    let at = 256u64;
    qp.write_with_metadata(&ns, at, &bd, &bm, driver, false)
        .expect("a long write with metadata");
    let mut bd2 = vec![0u8; bd.len()];
    let mut bm2 = vec![0u8; bm.len()];
    qp.read_with_metadata(&ns, at, &mut bd2, &mut bm2, driver)
        .expect("a long read, checked by the driver and the controller");
    let (bdt, bmt) = with_tuples(
        &f,
        &bd,
        &bm,
        Tags {
            reference: at,
            ..tags
        },
    );
    assert!(
        bd2 == bdt && bm2 == bmt,
        "namespace {nsid}: {big} blocks read back"
    );

    check_async(ctrl, &mut qp, &ns, driver);
}

/// Asynchronous requests with metadata: the metadata buffer goes in with
/// the request and comes back in `Done::meta`.
fn check_async(ctrl: &Controller, qp: &mut QueuePair, ns: &Namespace, p: Option<Protection>) {
    let f = ns.format();
    let blocks = 8usize;
    let lba = 64u64;
    let (d, m) = buffers(&f, blocks, 99);
    let mut data = ctrl.dma_alloc(d.len()).expect("DMA buffer");
    data.as_mut_slice()[..d.len()].copy_from_slice(&d);
    let meta = match m.len() {
        0 => None,
        n => {
            let mut b = ctrl.dma_alloc(n).expect("DMA buffer");
            b.as_mut_slice()[..n].copy_from_slice(&m);
            Some(b)
        }
    };
    let with = |io: Io, meta: Option<_>| {
        let io = match meta {
            Some(b) => io.metadata(b),
            None => io,
        };
        match p {
            Some(p) => io.protection(p),
            None => io,
        }
    };
    let run = |qp: &mut QueuePair, io: Io| {
        qp.submit(io).map_err(|(e, _)| e).expect("submit");
        let mut done = Vec::new();
        let start = std::time::Instant::now();
        while done.is_empty() {
            qp.poll(&mut done);
            assert!(start.elapsed().as_secs() < 10, "no completion");
        }
        done.pop().expect("one completion")
    };
    let w = run(qp, with(Io::write(ns, lba, data).with_len(d.len()), meta));
    w.result.expect("asynchronous write with metadata");
    assert_eq!(
        w.meta.is_some(),
        !m.is_empty(),
        "the metadata buffer comes back"
    );
    let data = match w.buf {
        IoBuf::Dma(b) => b,
        b => panic!("{b:?}"),
    };
    let r = run(qp, with(Io::read(ns, lba, data).with_len(d.len()), w.meta));
    r.result.expect("asynchronous read with metadata");
    let tags = Tags {
        reference: lba,
        app: 0x1234,
        app_mask: 0xffff,
    };
    let (dt, mt) = match p {
        Some(_) => with_tuples(&f, &d, &m, tags),
        None => (d, m),
    };
    let first = (0..dt.len()).find(|&i| r.buf.as_slice()[i] != dt[i]);
    assert!(
        first.is_none(),
        "asynchronous read's data differs from byte {first:?}"
    );
    let back = match &r.meta {
        Some(b) => b.as_slice()[..mt.len()].to_vec(),
        None => Vec::new(),
    };
    let first = (0..mt.len()).find(|&i| back[i] != mt[i]);
    assert!(
        first.is_none(),
        "asynchronous read's metadata differs from byte {first:?} of {}",
        mt.len()
    );
    // A request without the metadata buffer its namespace needs is
    // refused, and its buffer comes back.
    if !mt.is_empty() {
        let buf = ctrl.dma_alloc(dt.len()).expect("DMA buffer");
        let (e, io) = qp
            .submit(with(Io::read(ns, lba, buf).with_len(dt.len()), None))
            .expect_err("no metadata buffer");
        assert!(matches!(e, Error::Invalid(_)), "{e}");
        assert!(matches!(io.into_buf(), IoBuf::Dma(_)));
    }
}
