//! DMA memory through a real IOMMU: QEMU's emulated Intel IOMMU programmed
//! with VFIO_IOMMU_MAP_DMA for the emulated NVMe controller. Runs inside the
//! VM of scripts/vm (scripts/test.sh does that); elsewhere each test says it
//! is skipped.

use std::sync::Arc;

use blk_dma::{Direction, DmaIter, DmaState, HostAddr, HostSeg, Iova, Mapper, RegionKind};
use nvme_vfio::mem::{DmaMap, DmaSpace, SpaceConfig, VfioMapper};
use nvme_vfio::vfio::{Container, Device};

mod common;
use common::in_vm;

/// The emulated controller's address in the VM (scripts/vm).
const NVME: &str = "0000:00:03.0";
/// QEMU's interrupt (MSI) window, which IOVAs must avoid.
const MSI_WINDOW: std::ops::RangeInclusive<u64> = 0xfee0_0000..=0xfeef_ffff;

fn container() -> (Device, Arc<Container>) {
    let dev = Device::open(NVME).expect("open the emulated NVMe controller");
    let c = dev.container().clone();
    (dev, c)
}

/// Nothing is mapped in the whole IOVA space: an unmap of all of it finds
/// nothing (type1v2 reports the bytes it removed).
fn assert_nothing_mapped(c: &Container) {
    assert_eq!(c.mapped_bytes(), 0);
    for r in &c.iommu_info().iova_ranges {
        let len = r.end() - r.start() + 1;
        let start = r.start().next_multiple_of(4096);
        let len = (len - (start - r.start())) & !4095;
        // SAFETY: the test's DMA spaces are gone, so nothing mapped here is
        // anyone's any more; the device was never started.
        let unmapped = unsafe { c.unmap_dma(Iova::new(start), len) };
        assert_eq!(unmapped.expect("unmap"), 0, "left mapped in {r:x?}");
    }
}

fn assert_valid_iova(c: &Container, iova: Iova, len: u64) {
    let (a, e) = (iova.raw(), iova.raw() + len - 1);
    assert!(
        c.iommu_info()
            .iova_ranges
            .iter()
            .any(|r| *r.start() <= a && e <= *r.end()),
        "{a:#x}+{len:#x} outside the valid ranges"
    );
    assert!(
        e < *MSI_WINDOW.start() || a > *MSI_WINDOW.end(),
        "{a:#x} in the MSI window"
    );
}

#[test]
fn slab_buffers_are_mapped_once_at_valid_iovas_and_unmapped_at_the_end() {
    if !in_vm() {
        return;
    }
    let (_dev, c) = container();
    // Reserve a few hugepages in the guest so the hugepage path is taken.
    let _ = std::fs::write("/proc/sys/vm/nr_hugepages", "16");
    let space = DmaSpace::new(c.clone(), SpaceConfig { hugepages: true });
    let mut bufs = Vec::new();
    for len in [512, 4096, 128 << 10, 1 << 20, 3 << 20] {
        let mut b = space.alloc(len).expect("DMA buffer");
        assert_valid_iova(&c, b.iova(), b.len() as u64);
        b.as_mut_slice().fill(len as u8);
        bufs.push(b);
    }
    let (slabs, huge) = space.slab_count();
    assert!(slabs >= 2, "a 3 MiB buffer takes a slab of its own");
    assert!(huge >= 1, "hugepages were reserved, so slabs use them");
    assert!(c.mapped_bytes() >= 4 << 20);
    // SAFETY: used for lookups only.
    let m = unsafe { VfioMapper::new(space.clone()) };
    for b in &bufs {
        let r = m.lookup(b.host()).expect("slab memory is registered");
        assert_eq!(r.kind, RegionKind::Registered);
        assert_eq!(r.translate(b.host(), 1).addr, b.iova());
    }
    drop((bufs, m, space));
    assert_nothing_mapped(&c);
}

#[test]
fn user_memory_registered_or_coalesced_through_the_real_iommu() {
    if !in_vm() {
        return;
    }
    let (_dev, c) = container();
    let space = DmaSpace::new(c.clone(), SpaceConfig { hugepages: false });
    // SAFETY: used only through DmaIter and DmaState, unmapping its own
    // state, on `user`, which outlives the mapper; the device is never
    // started.
    let m = unsafe { VfioMapper::new(space.clone()) };
    let user = vec![0x5au8; 64 << 10];
    let base = (user.as_ptr() as usize).next_multiple_of(4096);

    // Registered: mapped once, translated by region.
    // SAFETY: `user` outlives the registration; no I/O uses it.
    let reg = unsafe { space.register(user.as_ptr(), user.len()) }.expect("register");
    assert_valid_iova(&c, reg.region().addr, reg.region().len);
    let seg = HostSeg::new(HostAddr::new(base + 100), 8000);
    let mut st = DmaState::new();
    let ranges: Vec<_> = DmaIter::start(&[seg], Direction::FromDevice, &m, &mut st)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ranges.len(), 1);
    assert!(!st.is_mapped(), "registered memory needs no unmap");
    drop(reg);
    assert_eq!(c.mapped_bytes(), 0);

    // Unregistered: three segments coalesced into one IOVA range, one
    // VFIO_IOMMU_MAP_DMA each (read-only: a to-device transfer), then one
    // VFIO_IOMMU_UNMAP_DMA.
    let segs = [
        HostSeg::new(HostAddr::new(base + 4096 - 512), 512),
        HostSeg::new(HostAddr::new(base + 5 * 4096), 2 * 4096),
        HostSeg::new(HostAddr::new(base + 9 * 4096), 1000),
    ];
    let ranges: Vec<_> = DmaIter::start(&segs, Direction::ToDevice, &m, &mut st)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(ranges.len(), 1);
    assert_eq!(ranges[0].len, 512 + 2 * 4096 + 1000);
    assert_valid_iova(&c, ranges[0].addr, ranges[0].len);
    assert_eq!(c.mapped_bytes(), 4 * 4096, "each segment's pages, linked");
    st.unmap(&m);
    assert_eq!(c.mapped_bytes(), 0);
    drop((m, space));
    assert_nothing_mapped(&c);
}
