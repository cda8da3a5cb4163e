//! One request from host buffers to an NVMe data pointer.
//!
//! Three buffers of a write are mapped through a (fake) IOMMU: because their
//! interior boundaries are page aligned, blk-dma links them into one IOVA
//! range, and the command needs a single SGL data block or a short PRP list.
//!
//! Run with `cargo run --example map-request`.

use std::alloc::{alloc_zeroed, dealloc, Layout};

use blk_dma::fake::FakeMapper;
use blk_dma::{Direction, DmaIter, DmaState, HostSeg};
use nvme_vfio::nvme::desc::{DescList, HeapPool};
use nvme_vfio::nvme::dptr::{self, Format, Policy, QueueKind, Shape};
use nvme_vfio::nvme::spec::{DataPtr, PageSize};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let layout = Layout::from_size_align(64 << 10, 4096)?;
    // SAFETY: non-zero size; freed at the end.
    let mem = unsafe { alloc_zeroed(layout) };
    if mem.is_null() {
        return Err("out of memory".into());
    }
    let base = mem as usize;
    let buf = |off: usize, len: u64| HostSeg::new(blk_dma::HostAddr::new(base + off), len);
    // A header ending on a page boundary, a page-aligned body, a short tail.
    let segs = [buf(0x0e00, 0x200), buf(0x4000, 0x3000), buf(0xa000, 0x400)];

    let iommu = FakeMapper::with_iommu(4096);
    let mut pool = HeapPool::new(4, 4096, |h, l| iommu.register(h, l).addr).ok_or("pool")?;
    let mut state = DmaState::new();
    let mut list = DescList::new();

    let it = DmaIter::start(&segs, Direction::ToDevice, &iommu, &mut state)?;
    let range = it.coalesced().ok_or("expected a coalesced request")?;
    println!("request: {} segments, {} bytes", segs.len(), range.len);
    println!("coalesced into one IOVA range: {range:?}");
    let policy = Policy {
        io_sgls: true,
        ..Policy::default()
    };
    let format = policy.choose(QueueKind::Io, Shape::coalesced(range));
    let dp = dptr::build(format, it, PageSize::DEFAULT, &mut pool, &mut list)?;
    println!(
        "policy (SGL threshold {} bytes) picks {format:?}",
        policy.sgl_threshold
    );
    print(format, dp, list.len());

    // The same range in the other format.
    // SAFETY: the list's pages come from `pool`; nothing was submitted to a device.
    unsafe { list.release(&mut pool) };
    let other = match format {
        Format::Prp => Format::Sgl,
        Format::Sgl => Format::Prp,
    };
    let dp = dptr::build(other, [Ok(range)], PageSize::DEFAULT, &mut pool, &mut list)?;
    print(other, dp, list.len());

    // SAFETY: the list's pages come from `pool`; nothing was submitted to a device.
    unsafe { list.release(&mut pool) };
    state.unmap(&iommu);
    println!(
        "after unmap: {} links, {} IOVA ranges live",
        iommu.live_links(),
        iommu.live_iovas()
    );
    // SAFETY: allocated above with this layout; nothing maps it any more.
    unsafe { dealloc(mem, layout) };
    Ok(())
}

fn print(format: Format, dp: DataPtr, pages: usize) {
    match dp {
        DataPtr::Prp { prp1, prp2 } => {
            println!("{format:?}: PRP1 {prp1}, PRP2 {prp2}, {pages} list page(s)")
        }
        DataPtr::Sgl(d) => println!("{format:?}: SGL1 {d:?}, {pages} segment page(s)"),
    }
}
