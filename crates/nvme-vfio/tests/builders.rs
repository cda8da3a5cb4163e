//! Table-driven PRP and SGL builder tests with made-up device addresses,
//! each checked by walking the result back as a controller would.

use blk_dma::{DmaRange, Iova, MapError};
use nvme_vfio::nvme::desc::{DescList, DescPool, HeapPool, MAX_DESC_PAGES};
use nvme_vfio::nvme::prp::build_prp;
use nvme_vfio::nvme::sgl::build_sgl;
use nvme_vfio::nvme::spec::{DataPtr, PageSize, SglDescriptor, SglType};
use nvme_vfio::nvme::walk::{walk_prp, walk_sgl, DeviceMemory, WalkError};
use nvme_vfio::nvme::DptrError;

const POOL_IOVA: u64 = 0xa000_0000;

struct Mem<'a>(&'a HeapPool);

impl DeviceMemory for Mem<'_> {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> bool {
        self.0.read(iova, buf)
    }
}

fn pool(pages: usize, page_size: usize) -> HeapPool {
    HeapPool::new(pages, page_size, |_, _| Iova::new(POOL_IOVA)).unwrap()
}

fn r(addr: u64, len: u64) -> DmaRange {
    DmaRange::new(Iova::new(addr), len)
}

fn ok(ranges: &[DmaRange]) -> impl Iterator<Item = Result<DmaRange, MapError>> + '_ {
    ranges.iter().copied().map(Ok)
}

fn merged(ranges: &[DmaRange]) -> Vec<DmaRange> {
    let mut out: Vec<DmaRange> = Vec::new();
    for &x in ranges {
        match out.last_mut() {
            Some(l) if l.end() == x.addr => l.len += x.len,
            _ => out.push(x),
        }
    }
    out
}

fn total(ranges: &[DmaRange]) -> u64 {
    ranges.iter().map(|r| r.len).sum()
}

/// Consecutive page-sized ranges spread apart, `n` of them.
fn pages(n: u64, page: u64) -> Vec<DmaRange> {
    (0..n)
        .map(|i| r(0x1_0000_0000 + i * 2 * page, page))
        .collect()
}

struct PrpCase {
    name: &'static str,
    page: u64,
    ranges: Vec<DmaRange>,
    prp2: Prp2,
    list_pages: usize,
}

#[derive(Debug, PartialEq)]
enum Prp2 {
    Zero,
    Data(u64),
    List,
}

#[test]
fn prp_table() {
    let k4 = 4096;
    let cases = vec![
        PrpCase {
            name: "512 B",
            page: k4,
            ranges: vec![r(0x1000_0200, 512)],
            prp2: Prp2::Zero,
            list_pages: 0,
        },
        PrpCase {
            name: "one aligned page",
            page: k4,
            ranges: vec![r(0x2000, k4)],
            prp2: Prp2::Zero,
            list_pages: 0,
        },
        PrpCase {
            name: "unaligned start crossing a page",
            page: k4,
            ranges: vec![r(0x1000_0e00, 0x400)],
            prp2: Prp2::Data(0x1000_1000),
            list_pages: 0,
        },
        PrpCase {
            name: "unaligned start ending at a page end",
            page: k4,
            ranges: vec![r(0x1000_0e00, 0x200)],
            prp2: Prp2::Zero,
            list_pages: 0,
        },
        PrpCase {
            name: "PRP2 as data",
            page: k4,
            ranges: vec![r(0x4000, 2 * k4)],
            prp2: Prp2::Data(0x5000),
            list_pages: 0,
        },
        PrpCase {
            name: "PRP2 as data across two ranges",
            page: k4,
            ranges: vec![r(0x4800, 0x800), r(0x9000, 0x1000)],
            prp2: Prp2::Data(0x9000),
            list_pages: 0,
        },
        PrpCase {
            name: "one list",
            page: k4,
            ranges: vec![r(0x10_0000, 3 * k4)],
            prp2: Prp2::List,
            list_pages: 1,
        },
        PrpCase {
            name: "several ranges, one list",
            page: k4,
            ranges: vec![
                r(0x10_0e00, 0x200),
                r(0x20_0000, 0x2000),
                r(0x30_0000, 0x100),
            ],
            prp2: Prp2::List,
            list_pages: 1,
        },
        PrpCase {
            name: "list page exactly full (512 entries after PRP1)",
            page: k4,
            ranges: vec![r(0x100_0000, 513 * k4)],
            prp2: Prp2::List,
            list_pages: 1,
        },
        PrpCase {
            name: "chained lists (513 entries after PRP1)",
            page: k4,
            ranges: vec![r(0x100_0000, 514 * k4)],
            prp2: Prp2::List,
            list_pages: 2,
        },
        PrpCase {
            name: "chained lists, scattered pages",
            page: k4,
            ranges: pages(1500, k4),
            prp2: Prp2::List,
            list_pages: 3,
        },
        PrpCase {
            name: "max transfer (8 list pages)",
            page: k4,
            ranges: vec![r(0x1000_0000, (8 * 511 + 2) * k4)],
            prp2: Prp2::List,
            list_pages: MAX_DESC_PAGES,
        },
        PrpCase {
            name: "16 KiB controller pages, one list",
            page: 16384,
            ranges: vec![r(0x40_0000, 4 * 16384)],
            prp2: Prp2::List,
            list_pages: 1,
        },
        PrpCase {
            name: "64 KiB controller pages, PRP2 as data",
            page: 65536,
            ranges: vec![r(0x40_f000, 0x1000), r(0x80_0000, 0x8000)],
            prp2: Prp2::Data(0x80_0000),
            list_pages: 0,
        },
    ];
    for c in cases {
        let page = PageSize::new(c.page as u32).unwrap();
        let mut pool = pool(16, c.page as usize);
        let mut list = DescList::new();
        let dp = build_prp(ok(&c.ranges), page, &mut pool, &mut list)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let DataPtr::Prp { prp1, prp2 } = dp else {
            panic!("{}: not a PRP", c.name)
        };
        assert_eq!(prp1, c.ranges[0].addr, "{}", c.name);
        let kind = if list.is_empty() {
            if prp2.raw() == 0 {
                Prp2::Zero
            } else {
                Prp2::Data(prp2.raw())
            }
        } else {
            assert_eq!(prp2, list.pages().next().unwrap().iova(), "{}", c.name);
            Prp2::List
        };
        assert_eq!(kind, c.prp2, "{}", c.name);
        assert_eq!(list.len(), c.list_pages, "{}", c.name);
        let walked = walk_prp(prp1, prp2, total(&c.ranges), page, &Mem(&pool)).unwrap();
        assert_eq!(walked, merged(&c.ranges), "{}", c.name);
        // SAFETY: the list's pages come from `pool`; nothing was submitted to a device.
        unsafe { list.release(&mut pool) };
        assert_eq!(pool.available(), 16, "{}", c.name);
    }
}

#[test]
fn prp_chain_layout() {
    // 513 entries after PRP1: slot 511 of page 0 points to page 1, which
    // holds the last two entries.
    let base = 0x100_0000u64;
    let mut pool = pool(4, 4096);
    let mut list = DescList::new();
    build_prp(
        ok(&[r(base, 514 * 4096)]),
        PageSize::DEFAULT,
        &mut pool,
        &mut list,
    )
    .unwrap();
    let p: Vec<_> = list.pages().collect();
    let q = |iova: Iova, i: u64| {
        let mut b = [0u8; 8];
        assert!(pool.read(iova.wrapping_add(8 * i), &mut b));
        u64::from_le_bytes(b)
    };
    assert_eq!(q(p[0].iova(), 0), base + 4096);
    assert_eq!(q(p[0].iova(), 510), base + 511 * 4096);
    assert_eq!(q(p[0].iova(), 511), p[1].iova().raw());
    assert_eq!(q(p[1].iova(), 0), base + 512 * 4096);
    assert_eq!(q(p[1].iova(), 1), base + 513 * 4096);
}

#[test]
fn prp_rejects_what_it_cannot_describe_and_returns_pages() {
    let mut pool = pool(2, 4096);
    let mut list = DescList::new();
    let page = PageSize::DEFAULT;
    // PRP1 not dword aligned.
    assert_eq!(
        build_prp(ok(&[r(0x1002, 0x200)]), page, &mut pool, &mut list),
        Err(DptrError::PrpMisaligned {
            addr: Iova::new(0x1002)
        })
    );
    // A range that starts inside a page.
    let e = build_prp(
        ok(&[r(0x1000, 0x3000), r(0x9000, 0x1000), r(0x2_0200, 0x200)]),
        page,
        &mut pool,
        &mut list,
    );
    assert_eq!(
        e,
        Err(DptrError::PrpGap {
            index: 2,
            addr: Iova::new(0x2_0200)
        })
    );
    // A range that ends inside a page, followed by another.
    let e = build_prp(
        ok(&[r(0x1000, 0x800), r(0x9000, 0x1000)]),
        page,
        &mut pool,
        &mut list,
    );
    assert_eq!(
        e,
        Err(DptrError::PrpGap {
            index: 1,
            addr: Iova::new(0x9000)
        })
    );
    // The pool runs dry mid-way.
    let e = build_prp(ok(&pages(1100, 4096)), page, &mut pool, &mut list);
    assert_eq!(e, Err(DptrError::DescPoolEmpty));
    // More list pages than a command holds.
    let mut big = self::pool(16, 4096);
    let e = build_prp(
        ok(&[r(0x1000_0000, (8 * 511 + 3) * 4096)]),
        page,
        &mut big,
        &mut list,
    );
    assert_eq!(
        e,
        Err(DptrError::TooManyDescPages {
            max: MAX_DESC_PAGES
        })
    );
    assert_eq!(big.available(), 16);
    // Empty, and a mapping error passed through.
    assert_eq!(
        build_prp(ok(&[]), page, &mut pool, &mut list),
        Err(DptrError::EmptyTransfer)
    );
    let failing = [
        Ok(r(0x1000, 0x1000)),
        Ok(r(0x3000, 0x1000)),
        Err(MapError::EmptyRequest),
    ];
    assert_eq!(
        build_prp(failing, page, &mut pool, &mut list),
        Err(DptrError::Map(MapError::EmptyRequest))
    );
    // Pool pages smaller than the controller page.
    let mut small = self::pool(2, 4096);
    assert_eq!(
        build_prp(
            ok(&[r(0x10000, 0x30000)]),
            PageSize::new(16384).unwrap(),
            &mut small,
            &mut list
        ),
        Err(DptrError::DescPageTooSmall {
            pool: 4096,
            page: 16384
        })
    );
    assert!(list.is_empty());
    assert_eq!(pool.available(), 2);
}

#[test]
fn sgl_table() {
    struct Case {
        name: &'static str,
        n: usize,
        pages: usize,
        sgl1: SglType,
    }
    let cases = [
        Case {
            name: "one range inline",
            n: 1,
            pages: 0,
            sgl1: SglType::DataBlock,
        },
        Case {
            name: "two ranges",
            n: 2,
            pages: 1,
            sgl1: SglType::LastSegment,
        },
        Case {
            name: "one full segment",
            n: 256,
            pages: 1,
            sgl1: SglType::LastSegment,
        },
        Case {
            name: "chained once",
            n: 257,
            pages: 2,
            sgl1: SglType::Segment,
        },
        Case {
            name: "chained twice",
            n: 600,
            pages: 3,
            sgl1: SglType::Segment,
        },
    ];
    for c in cases {
        // Odd sizes and offsets: SGLs have no alignment rule.
        let ranges: Vec<DmaRange> = (0..c.n as u64)
            .map(|i| r(0x1_0000_0003 + i * 0x1_0000, 1 + i % 700))
            .collect();
        let mut pool = pool(8, 4096);
        let mut list = DescList::new();
        let DataPtr::Sgl(d) = build_sgl(ok(&ranges), &mut pool, &mut list).unwrap() else {
            panic!("{}: not an SGL", c.name)
        };
        assert_eq!(d.ty(), Some(c.sgl1), "{}", c.name);
        assert_eq!(list.len(), c.pages, "{}", c.name);
        let walked = walk_sgl(d, total(&ranges), &Mem(&pool)).unwrap();
        assert_eq!(walked, merged(&ranges), "{}", c.name);
        // SAFETY: the list's pages come from `pool`; nothing was submitted to a device.
        unsafe { list.release(&mut pool) };
    }
}

#[test]
fn sgl_chain_layout() {
    let ranges: Vec<DmaRange> = (0..257u64)
        .map(|i| r(0x100_0000 + i * 0x2000, 0x1000))
        .collect();
    let mut pool = pool(4, 4096);
    let mut list = DescList::new();
    let DataPtr::Sgl(d) = build_sgl(ok(&ranges), &mut pool, &mut list).unwrap() else {
        panic!()
    };
    let p: Vec<_> = list.pages().collect();
    assert_eq!(d, SglDescriptor::new(SglType::Segment, p[0].iova(), 4096));
    let desc = |iova: Iova, i: u64| {
        let mut b = [0u8; 16];
        assert!(pool.read(iova.wrapping_add(16 * i), &mut b));
        SglDescriptor::from_bytes(b)
    };
    assert_eq!(
        desc(p[0].iova(), 254),
        SglDescriptor::data(ranges[254].addr, 0x1000)
    );
    assert_eq!(
        desc(p[0].iova(), 255),
        SglDescriptor::new(SglType::LastSegment, p[1].iova(), 32)
    );
    assert_eq!(
        desc(p[1].iova(), 0),
        SglDescriptor::data(ranges[255].addr, 0x1000)
    );
    assert_eq!(
        desc(p[1].iova(), 1),
        SglDescriptor::data(ranges[256].addr, 0x1000)
    );
}

#[test]
fn sgl_rejects_ranges_too_long_for_a_data_block() {
    let mut pool = pool(2, 4096);
    let mut list = DescList::new();
    let big = 1u64 << 32;
    assert_eq!(
        build_sgl(
            ok(&[r(0x1000, 0x1000), r(0x10_0000_0000, big)]),
            &mut pool,
            &mut list
        ),
        Err(DptrError::SglRangeTooLong { len: big })
    );
    assert_eq!(pool.available(), 2);
}

/// Writes raw bytes into a pool page for the walker tests.
fn put(pool: &mut HeapPool, page: usize, bytes: &[(usize, [u8; 16])]) -> Iova {
    let mut taken = Vec::new();
    for _ in 0..=page {
        taken.push(pool.alloc().unwrap());
    }
    let p = taken[page];
    for (slot, b) in bytes {
        // SAFETY: test-owned page of 4096 bytes; slot < 256.
        unsafe { p.ptr().add(16 * slot).cast::<[u8; 16]>().write(*b) };
    }
    p.iova()
}

#[test]
fn walkers_reject_malformed_pointers_with_the_spec_status() {
    let mut pool = pool(4, 4096);
    let page = PageSize::DEFAULT;
    let mem = |p: &HeapPool| walk_prp(Iova::new(0x1000), Iova::new(0x2200), 0x2000, page, &Mem(p));
    // PRP2 as data with an offset.
    let e = mem(&pool).unwrap_err();
    assert_eq!(
        e,
        WalkError::InvalidPrpOffset {
            addr: Iova::new(0x2200)
        }
    );
    assert_eq!(e.status_code(), 0x13);
    // PRP1 not dword aligned.
    let e = walk_prp(Iova::new(0x1001), Iova::new(0), 0x10, page, &Mem(&pool)).unwrap_err();
    assert_eq!(e.status_code(), 0x13);
    // A list entry with an offset.
    let mut entry = [0u8; 16];
    entry[0..8].copy_from_slice(&0x5000u64.to_le_bytes());
    entry[8..16].copy_from_slice(&0x6010u64.to_le_bytes());
    let list = put(&mut pool, 0, &[(0, entry)]);
    let e = walk_prp(Iova::new(0x1000), list, 0x3000, page, &Mem(&pool)).unwrap_err();
    assert_eq!(
        e,
        WalkError::InvalidPrpOffset {
            addr: Iova::new(0x6010)
        }
    );
    // A list pointer the device cannot read: a data transfer error.
    let e = walk_prp(
        Iova::new(0x1000),
        Iova::new(0xdead_0000),
        0x3000,
        page,
        &Mem(&pool),
    )
    .unwrap_err();
    assert_eq!(e.status_code(), 0x04);

    // SGL: wrong types and lengths.
    let dd = |a: u64, l: u32| SglDescriptor::data(Iova::new(a), l).to_bytes();
    let bucket = SglDescriptor::new(SglType::BitBucket, Iova::new(0), 0x100);
    let e = walk_sgl(bucket, 0x100, &Mem(&pool)).unwrap_err();
    assert_eq!(e.status_code(), 0x11);
    let e = walk_sgl(
        SglDescriptor::data(Iova::new(0x1000), 0x100),
        0x200,
        &Mem(&pool),
    )
    .unwrap_err();
    assert_eq!(
        e,
        WalkError::SglLengthMismatch {
            sgl: 0x100,
            xfer: 0x200
        }
    );
    assert_eq!(e.status_code(), 0x0f);
    let mut pool = self::pool(4, 4096);
    let seg = put(
        &mut pool,
        0,
        &[(0, dd(0x1000, 0x100)), (1, bucket.to_bytes())],
    );
    let e = walk_sgl(
        SglDescriptor::new(SglType::LastSegment, seg, 32),
        0x200,
        &Mem(&pool),
    )
    .unwrap_err();
    assert_eq!(e.status_code(), 0x11);
    // Segment length not a multiple of 16.
    let e = walk_sgl(
        SglDescriptor::new(SglType::LastSegment, seg, 24),
        0x100,
        &Mem(&pool),
    )
    .unwrap_err();
    assert_eq!(e.status_code(), 0x0d);
    // A segment pointer in the middle of a segment.
    let mut pool = self::pool(4, 4096);
    let ptr = SglDescriptor::new(SglType::LastSegment, Iova::new(POOL_IOVA), 16).to_bytes();
    let seg = put(&mut pool, 0, &[(0, ptr), (1, dd(0x1000, 0x100))]);
    let e = walk_sgl(
        SglDescriptor::new(SglType::Segment, seg, 32),
        0x100,
        &Mem(&pool),
    )
    .unwrap_err();
    assert_eq!(e.status_code(), 0x0d);
    // A Segment (non-last) that does not end in a pointer.
    let mut pool = self::pool(4, 4096);
    let seg = put(&mut pool, 0, &[(0, dd(0x1000, 0x100))]);
    let e = walk_sgl(
        SglDescriptor::new(SglType::Segment, seg, 16),
        0x100,
        &Mem(&pool),
    )
    .unwrap_err();
    assert_eq!(e.status_code(), 0x0d);
    // A segment that points at itself: bounded, not a hang.
    let mut pool = self::pool(4, 4096);
    let me = Iova::new(POOL_IOVA);
    let seg = put(
        &mut pool,
        0,
        &[
            (0, dd(0x1000, 0)),
            (1, SglDescriptor::new(SglType::Segment, me, 32).to_bytes()),
        ],
    );
    let e = walk_sgl(
        SglDescriptor::new(SglType::Segment, seg, 32),
        0x100,
        &Mem(&pool),
    )
    .unwrap_err();
    assert_eq!(e, WalkError::TooLong);
}
