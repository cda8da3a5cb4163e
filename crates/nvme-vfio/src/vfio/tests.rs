//! Container, group and device logic against the fake kernel (`fake.rs`)
//! and a fake sysfs tree.

use std::sync::Arc;

use blk_dma::{HostAddr, Iova};
use vfio_bindings::bindings::vfio as b;

use super::fake;
use super::pci::tests::FakeSysfs;
use super::*;
use crate::mem::{Access, DmaMap};

const NVME: &str = "0000:00:03.0";
const MIB2: u64 = 2 << 20;

fn addr(s: &str) -> PciAddress {
    s.parse().unwrap()
}

/// Sysfs and kernel with the NVMe function alone in group 3, on vfio-pci.
fn system() -> FakeSysfs {
    let t = FakeSysfs::new();
    t.add(NVME, Some(3), Some("vfio-pci"));
    fake::install_nvme(NVME, 3);
    t
}

fn open(t: &FakeSysfs, a: &str) -> Result<Device, VfioError> {
    Device::open_with_sysfs(addr(a), t.sysfs.clone())
}

fn host() -> HostAddr {
    HostAddr::new(0x7f00_0000_0000)
}

/// `map_dma` on the fake kernel.
fn map(c: &Container, iova: u64, len: u64, access: Access) -> Result<(), VfioError> {
    // SAFETY: the fake kernel only records the mapping: no device reaches
    // any memory.
    unsafe { c.map_dma(Iova::new(iova), host(), len, access) }
}

/// `unmap_dma` on the fake kernel.
fn unmap(c: &Container, iova: u64, len: u64) -> Result<u64, VfioError> {
    // SAFETY: as in `map`.
    unsafe { c.unmap_dma(Iova::new(iova), len) }
}

#[test]
fn opens_by_full_and_short_address() {
    let t = system();
    let dev = open(&t, NVME).unwrap();
    assert_eq!(dev.address().to_string(), NVME);
    assert_eq!(dev.group_number(), 3);
    assert_eq!(dev.num_regions(), b::VFIO_PCI_NUM_REGIONS);
    let info = dev.container().iommu_info();
    assert_eq!(info.page_sizes, 0x4020_1000);
    assert_eq!(
        info.iova_ranges,
        vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff]
    );
    assert_eq!(info.dma_mappings_available, Some(65535));
    // The group is exclusive: a second container cannot have it.
    assert!(matches!(open(&t, NVME), Err(VfioError::GroupBusy { .. })));
    drop(dev);
    let dev = open(&t, "00:03.0").unwrap();
    assert_eq!(dev.address().to_string(), NVME);
}

#[test]
fn sysfs_errors_come_first() {
    let t = system();
    t.add("0000:00:04.0", Some(4), Some("nvme"));
    assert!(matches!(
        open(&t, "0000:00:1f.7"),
        Err(VfioError::DeviceMissing { .. })
    ));
    let err = open(&t, "00:04.0").unwrap_err();
    assert!(
        matches!(&err, VfioError::NotBoundToVfio { driver: Some(d), .. } if d == "nvme"),
        "{err:?}"
    );
}

#[test]
fn non_viable_group_lists_its_devices() {
    let t = system();
    t.add("0000:00:03.1", Some(3), Some("snd_hda_intel"));
    fake::with(|k| k.groups.get_mut(&3).unwrap().viable = false);
    let err = open(&t, NVME).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, VfioError::GroupNotViable { group: 3, .. }),
        "{err:?}"
    );
    assert!(
        msg.contains("0000:00:03.0 (vfio-pci), 0000:00:03.1 (snd_hda_intel)"),
        "{msg}"
    );
}

#[test]
fn missing_type1v2_means_no_iommu() {
    let t = system();
    fake::with(|k| k.type1v2 = false);
    let err = open(&t, NVME).unwrap_err();
    assert!(matches!(err, VfioError::IommuAbsent), "{err:?}");
    assert!(err.to_string().contains("intel_iommu=on"));
}

#[test]
fn permission_error_names_the_file() {
    let t = system();
    fake::with(|k| k.groups.get_mut(&3).unwrap().eacces = true);
    let err = open(&t, NVME).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VfioError::Permission { .. }), "{err:?}");
    assert!(
        msg.contains("/dev/vfio/3") && msg.contains("TARGET_USER"),
        "{msg}"
    );
}

#[test]
fn map_unmap_bookkeeping() {
    let t = system();
    let dev = open(&t, NVME).unwrap();
    let c = dev.container();
    map(c, 0x10_0000, MIB2, Access::ReadWrite).unwrap();
    map(c, 0x40_0000, MIB2, Access::ReadOnly).unwrap();
    let flags = fake::with(|k| k.iommu.mappings.clone());
    let (r, w) = (b::VFIO_DMA_MAP_FLAG_READ, b::VFIO_DMA_MAP_FLAG_WRITE);
    assert_eq!(
        flags.into_iter().collect::<Vec<_>>(),
        vec![(0x10_0000, (MIB2, r | w)), (0x40_0000, (MIB2, r))]
    );
    assert_eq!(c.mapped_bytes(), 2 * MIB2);

    // Overlap (EEXIST) and a range splitting a mapping (EINVAL) are DMA errors.
    let err = map(c, 0x20_0000, MIB2, Access::ReadWrite).unwrap_err();
    assert!(
        matches!(&err, VfioError::Dma { op: "map", source, .. } if source.raw_os_error() == Some(libc::EEXIST))
    );
    let err = unmap(c, 0x10_0000, 0x1000).unwrap_err();
    assert!(matches!(err, VfioError::Dma { op: "unmap", .. }), "{err:?}");

    assert_eq!(unmap(c, 0x10_0000, MIB2).unwrap(), MIB2);
    assert_eq!(unmap(c, 0x10_0000, MIB2).unwrap(), 0);
    assert_eq!(unmap(c, 0, 0x100_0000).unwrap(), MIB2);
    assert_eq!(c.mapped_bytes(), 0);
    assert!(fake::with(|k| k.iommu.mappings.is_empty()));
}

#[test]
fn iovas_outside_the_valid_ranges_are_refused() {
    let t = system();
    let dev = open(&t, NVME).unwrap();
    let c = dev.container();
    for (iova, len) in [
        (0xfee0_0000, 0x1000),
        (0xfed0_0000, MIB2),
        (1 << 39, 0x1000),
        (u64::MAX - 0xfff, 0x2000),
        (0, 0),
    ] {
        let err = map(c, iova, len, Access::ReadWrite).unwrap_err();
        assert!(
            matches!(err, VfioError::IovaOutOfRange { .. }),
            "{iova:#x}: {err:?}"
        );
    }
    assert!(fake::with(|k| k.iommu.mappings.is_empty()));
}

#[test]
fn dma_entry_limit_is_reported() {
    let t = system();
    fake::with(|k| k.iommu.dma_limit = 1);
    let dev = open(&t, NVME).unwrap();
    let c = dev.container();
    assert_eq!(c.iommu_info().dma_mappings_available, Some(1));
    map(c, 0x10_0000, 0x1000, Access::ReadWrite).unwrap();
    let err = map(c, 0x20_0000, 0x1000, Access::ReadWrite).unwrap_err();
    assert!(
        matches!(
            err,
            VfioError::DmaLimit {
                iova: 0x20_0000,
                len: 0x1000,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    let errno = std::io::Error::from_raw_os_error(libc::ENOSPC).to_string();
    assert!(msg.contains(&errno), "the errno: {msg}");
    assert!(
        msg.contains("dma_entry_limit"),
        "the module parameter: {msg}"
    );
    // As the driver's error shows it too.
    let msg = nvme_vfio_error(err);
    assert!(
        msg.contains(&errno) && msg.contains("dma_entry_limit"),
        "{msg}"
    );
}

fn nvme_vfio_error(e: VfioError) -> String {
    crate::Error::from(e).to_string()
}

#[test]
fn pinning_failure_reports_the_memlock_limit() {
    let t = system();
    fake::with(|k| k.iommu.lock_limit = Some(MIB2));
    let dev = open(&t, NVME).unwrap();
    let c = dev.container();
    map(c, 0x10_0000, 0x1000, Access::ReadWrite).unwrap();
    let err = map(c, 0x40_0000, MIB2, Access::ReadWrite).unwrap_err();
    // The message can only name the limit if there is one.
    match err {
        VfioError::MemlockTooLow {
            current,
            needed,
            len,
            ..
        } => {
            assert_eq!((needed, len), (MIB2 + 0x1000, MIB2));
            assert!(current > 0);
        }
        VfioError::Dma { ref source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOMEM)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn devices_share_a_container() {
    let t = system();
    t.add("0000:00:03.1", Some(3), Some("vfio-pci"));
    t.add("0000:00:04.0", Some(4), Some("vfio-pci"));
    fake::with(|k| {
        let nvme = k.devices[NVME].clone();
        k.groups
            .get_mut(&3)
            .unwrap()
            .devices
            .push("0000:00:03.1".into());
        k.devices.insert("0000:00:03.1".into(), nvme.clone());
        k.groups.insert(4, fake::Group::viable(&["0000:00:04.0"]));
        k.devices.insert("0000:00:04.0".into(), nvme);
    });
    let a = open(&t, NVME).unwrap();
    let b = Device::open_in(a.container(), addr("0000:00:03.1")).unwrap();
    let c = Device::open_in(a.container(), addr("0000:00:04.0")).unwrap();
    assert!(Arc::ptr_eq(a.container(), b.container()) && Arc::ptr_eq(a.container(), c.container()));
    assert_eq!((b.group_number(), c.group_number()), (3, 4));
    map(a.container(), 0x10_0000, 0x1000, Access::ReadWrite).unwrap();
    // The last group leaving the container tears the IOMMU down.
    drop((a, b, c));
    assert!(fake::with(|k| k.iommu.mappings.is_empty()));
}

/// Once the container's last group has left (the device was unplugged),
/// the kernel has torn the IOMMU and its mappings down: an unmap, which
/// the kernel refuses with EINVAL, counts as done, so the memory may go
/// back instead of being leaked. With the IOMMU still there, a bad unmap
/// is still an error.
#[test]
fn unmapping_after_the_iommu_is_gone_succeeds() {
    let t = system();
    let dev = open(&t, NVME).unwrap();
    let container = dev.container().clone();
    map(&container, 0x20_0000, MIB2, Access::ReadWrite).unwrap();
    assert!(
        unmap(&container, 0x20_1000, 0x1000).is_err(),
        "bisecting a mapping is refused while the IOMMU is there"
    );
    drop(dev);
    assert!(fake::with(|k| k.iommu.mappings.is_empty()));
    assert_eq!(unmap(&container, 0x20_0000, MIB2).unwrap(), MIB2);
}

/// A group whose IOMMU narrows the container's valid IOVA ranges (other
/// reserved regions) cannot join it: the IOVA space was laid out by the
/// ranges the container had. The group is detached again.
#[test]
fn a_group_that_narrows_the_iova_ranges_does_not_join() {
    let t = system();
    t.add("0000:00:04.0", Some(4), Some("vfio-pci"));
    fake::with(|k| {
        let nvme = k.devices[NVME].clone();
        k.groups.insert(4, fake::Group::viable(&["0000:00:04.0"]));
        k.devices.insert("0000:00:04.0".into(), nvme);
    });
    let a = open(&t, NVME).unwrap();
    // The second group's reserved regions take a window out.
    fake::with(|k| k.iommu.ranges = vec![(0, 0xfedf_ffff), (0xff00_0000, 0x7f_ffff_ffff)]);
    match Device::open_in(a.container(), addr("0000:00:04.0")) {
        Err(VfioError::IncompatibleGroup { group: 4 }) => {}
        other => panic!("{other:?}"),
    }
    // Same ranges (or wider): it joins.
    fake::with(|k| k.iommu.ranges = vec![(0, 0x7f_ffff_ffff)]);
    let b = Device::open_in(a.container(), addr("0000:00:04.0")).unwrap();
    assert!(Arc::ptr_eq(a.container(), b.container()));
}

#[test]
fn config_space_and_bus_master() {
    let t = system();
    let dev = open(&t, NVME).unwrap();
    let cmd = dev.enable_bus_master().unwrap();
    assert_eq!(
        cmd,
        PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE
    );
    dev.write_config(0x40, &[1, 2, 3, 4]).unwrap();
    assert_eq!(dev.config_u32(0x40).unwrap(), 0x0403_0201);
    assert!(matches!(
        dev.config_u16(255),
        Err(VfioError::Config { op: "read", .. })
    ));
    assert!(matches!(
        dev.write_config(u64::MAX, &[0]),
        Err(VfioError::Config { op: "write", .. })
    ));
    // A capability list: status bit 4, pointer at 0x34, MSI-X at 0x50.
    dev.set_config_u16(0x06, 1 << 4).unwrap();
    dev.set_config_u16(0x34, 0x48).unwrap();
    dev.write_config(0x48, &[0x05, 0x50]).unwrap();
    dev.write_config(0x50, &[0x11, 0x00]).unwrap();
    assert_eq!(dev.find_capability(PCI_CAP_ID_MSIX).unwrap(), Some(0x50));
    assert_eq!(dev.find_capability(0x10).unwrap(), None);
    // A looping list ends.
    dev.write_config(0x50, &[0x11, 0x48]).unwrap();
    assert_eq!(dev.find_capability(0x10).unwrap(), None);
}

#[test]
fn bar_mapping_honours_sparse_areas() {
    let t = system();
    let dev = open(&t, NVME).unwrap();
    let bar = dev.map_bar(0).unwrap();
    assert_eq!((bar.index(), bar.size()), (0, 0x4000));
    bar.write32(0x3ffc, 7).unwrap();
    assert_eq!(bar.read32(0x3ffc).unwrap(), 7);
    assert!(matches!(
        dev.map_bar(1),
        Err(VfioError::RegionNotMappable { index: 1, .. })
    ));
    assert!(matches!(
        dev.map_bar(7),
        Err(VfioError::RegionNotMappable { index: 7, .. })
    ));
    drop(bar);

    fake::with(|k| {
        k.devices.get_mut(NVME).unwrap().regions[0].sparse =
            Some(vec![(0, 0x1000), (0x3000, 0x1000)])
    });
    let info = dev.region_info(0).unwrap();
    assert_eq!(info.sparse, Some(vec![(0, 0x1000), (0x3000, 0x1000)]));
    let bar = dev.map_bar(0).unwrap();
    // The same file offsets as the full mapping: the value written is there.
    assert_eq!(bar.read32(0x3ffc).unwrap(), 7);
    assert!(matches!(
        bar.read32(0x2000),
        Err(VfioError::BarAccess {
            fault: BarFault::NotMapped,
            ..
        })
    ));
}

#[test]
fn msix_and_reset() {
    let t = system();
    let dev = open(&t, NVME).unwrap();
    assert_eq!(dev.msix_vectors().unwrap(), 16);
    let msix = dev.enable_msix(2).unwrap();
    assert_eq!(msix.len(), 2);
    assert!(msix.eventfd(1).is_some() && msix.eventfd(2).is_none());
    assert_eq!(fake::with(|k| k.devices[NVME].msix_enabled), 2);
    drop(msix);
    assert_eq!(fake::with(|k| k.devices[NVME].msix_enabled), 0);
    dev.enable_msix(1).unwrap().disable().unwrap();
    let err = dev.enable_msix(17).unwrap_err();
    assert!(
        matches!(
            err,
            VfioError::TooManyVectors {
                requested: 17,
                available: 16
            }
        ),
        "{err:?}"
    );
    assert!(dev.enable_msix(0).is_err());

    assert!(dev.can_reset());
    assert!(dev.reset().unwrap());
    assert_eq!(fake::with(|k| k.devices[NVME].resets), 1);
    fake::with(|k| k.devices.get_mut(NVME).unwrap().flags &= !b::VFIO_DEVICE_FLAGS_RESET);
    // The flags were read at open: reopen to see the change.
    drop(dev);
    let dev = open(&t, NVME).unwrap();
    assert!(!dev.reset().unwrap());
}

/// The device request interrupt gets an eventfd; releasing the device
/// replaces its file in place: the `Device` stays usable as a value, but
/// nothing reaches the device any more (config space, resets, interrupts).
#[test]
fn request_notifier_and_release() {
    let t = system();
    let dev = open(&t, NVME).unwrap();
    let msix = dev.enable_msix(2).unwrap();
    let fd = dev
        .request_notifier()
        .unwrap()
        .expect("vfio-pci has the interrupt");
    assert!(fake::with(|k| k.devices[NVME].req_armed));
    assert!(dev.config_u16(0).is_ok());
    dev.release().unwrap();
    assert!(dev.config_u16(0).is_err(), "config space no longer reached");
    assert!(dev.reset().is_err());
    assert!(dev.enable_msix(1).is_err());
    assert!(dev.request_notifier().is_err());
    // Dropping what was obtained from the device still works.
    drop(msix);
    drop(fd);
    drop(dev);
}

#[test]
fn container_and_bar_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Container>();
    check::<Bar>();
    check::<Device>();
}
