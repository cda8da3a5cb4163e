//! The VFIO layer against real vfio-pci, a real (emulated Intel VT-d) IOMMU
//! and QEMU's NVMe controller, inside `scripts/vm/run.sh`.
//!
//! Outside the VM every test says `skipped: needs the VM` and passes. One
//! binary serves several VM runs, picked by `NVME_VM_SCENARIO`:
//!
//! ```sh
//! BIN=$(cargo test -p nvme-vfio --test vm_vfio --no-run 2>&1 | sed -n 's/.*(\(.*vm_vfio-[^)]*\)).*/\1/p')
//! scripts/vm/run.sh -- "$BIN" --test-threads=1                        # bound (default)
//! scripts/vm/run.sh --no-bind --env NVME_VM_SCENARIO=nvme-driver -- "$BIN" --test-threads=1
//! scripts/vm/run.sh --memlock 64 --env NVME_VM_SCENARIO=low-memlock -- "$BIN" --test-threads=1
//! ```
//!
//! `NVME_VM_ADDR` overrides the device address (default `0000:00:03.0`).

use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

use blk_dma::{HostAddr, Iova};
use nvme_vfio::mem::{Access, DmaMap};
use nvme_vfio::vfio::{
    Device, VfioError, PCI_CAP_ID_MSIX, PCI_COMMAND_INTX_DISABLE, PCI_COMMAND_MASTER,
    PCI_COMMAND_MEMORY,
};

const MIB2: u64 = 2 << 20;
/// The x86 MSI window, which the IOMMU must never let a DMA mapping cover.
const MSI_WINDOW: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// The tests share one device (its group can be open only once): one at a time.
static DEVICE: Mutex<()> = Mutex::new(());

/// Whether this test runs here: inside the VM, in scenario `want`. Says why
/// not on stderr. Holds the device lock while the test runs.
fn run_in(want: &str) -> Option<MutexGuard<'static, ()>> {
    if std::env::var_os("VM_GUEST").is_none() {
        // scripts/test.sh sets this: there, a test that cannot find its VM
        // fails instead of passing as skipped.
        assert!(
            std::env::var_os("NVME_VM_REQUIRE").is_none(),
            "NVME_VM_REQUIRE is set but this is not the VM"
        );
        eprintln!("skipped: needs the VM (scripts/vm/run.sh)");
        return None;
    }
    let scenario = std::env::var("NVME_VM_SCENARIO").unwrap_or_else(|_| "bound".to_owned());
    if scenario != want {
        eprintln!("skipped: scenario {want} (this VM runs {scenario})");
        return None;
    }
    Some(DEVICE.lock().unwrap_or_else(PoisonError::into_inner))
}

fn nvme_addr() -> String {
    std::env::var("NVME_VM_ADDR").unwrap_or_else(|_| "0000:00:03.0".to_owned())
}

fn open() -> Device {
    let addr = nvme_addr();
    Device::open(&addr).unwrap_or_else(|e| panic!("open {addr}: {e} ({e:?})"))
}

/// Anonymous, page-aligned, touched memory, unmapped on drop.
struct Anon {
    ptr: NonNull<u8>,
    len: usize,
}

impl Anon {
    fn new(len: usize) -> Anon {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping aliases nothing.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap returned null");
        // SAFETY: `ptr` is a fresh private mapping of `len` bytes; touching
        // it makes the pages real (a read-only DMA map of untouched memory
        // would pin the shared zero page instead).
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0x5a, len) };
        Anon { ptr, len }
    }

    fn host(&self) -> HostAddr {
        HostAddr::from_ptr(self.ptr.as_ptr())
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours and no reference into it remains.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[test]
fn opens_by_full_and_short_address() {
    let Some(_lock) = run_in("bound") else { return };
    let dev = open();
    assert_eq!(dev.address().to_string(), "0000:00:03.0");
    eprintln!(
        "group {}, {} regions, reset: {}",
        dev.group_number(),
        dev.num_regions(),
        dev.can_reset()
    );
    drop(dev);
    let dev = Device::open("00:03.0").unwrap_or_else(|e| panic!("open 00:03.0: {e}"));
    assert_eq!(dev.address().to_string(), "0000:00:03.0");
}

#[test]
fn reads_cap_and_vs_from_bar0() {
    let Some(_lock) = run_in("bound") else { return };
    let dev = open();
    let cmd = dev.enable_bus_master().unwrap();
    let want = PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER | PCI_COMMAND_INTX_DISABLE;
    assert_eq!(cmd & want, want, "command register {cmd:#06x}");
    let bar = dev.map_bar(0).unwrap();
    let cap = bar.read64(0).unwrap();
    let vs = bar.read32(8).unwrap();
    eprintln!("BAR0 {:#x} bytes, CAP {cap:#x}, VS {vs:#x}", bar.size());
    // NVMe 1.4, 3.1.1: MQES 15:0, CQR 16, TO 31:24, CSS 44:37 (bit 37: NVM),
    // MPSMIN 51:48. QEMU 7.2 reports 0x4018200f0107ff.
    assert_eq!(cap & 0xffff, 0x7ff, "MQES");
    assert_eq!(cap >> 16 & 1, 1, "CQR");
    assert_eq!(cap >> 24 & 0xff, 0x0f, "TO");
    assert_eq!(cap >> 37 & 1, 1, "CSS: NVM command set");
    assert_eq!(cap >> 48 & 0xf, 0, "MPSMIN");
    assert_eq!(vs, 0x10400, "VS 1.4.0");
    // Refused before reaching the device.
    assert!(matches!(
        bar.read32(bar.size()),
        Err(VfioError::BarAccess { .. })
    ));
    assert!(matches!(bar.read32(2), Err(VfioError::BarAccess { .. })));
}

#[test]
fn iommu_info_excludes_the_msi_window() {
    let Some(_lock) = run_in("bound") else { return };
    let dev = open();
    let info = dev.container().iommu_info();
    eprintln!(
        "page sizes {:#x}, IOVA ranges {:x?}, DMA mappings available {:?}",
        info.page_sizes, info.iova_ranges, info.dma_mappings_available
    );
    assert_ne!(info.page_sizes & 0x1000, 0, "4 KiB pages");
    assert!(!info.iova_ranges.is_empty());
    for r in &info.iova_ranges {
        assert!(
            *r.end() < MSI_WINDOW.0 || *r.start() > MSI_WINDOW.1,
            "{r:x?} overlaps the MSI window"
        );
    }
    assert!(info.iova_ranges.iter().any(|r| r.contains(&0x1000_0000)));
    assert!(info.dma_mappings_available.is_some_and(|n| n > 0));
}

#[test]
fn maps_and_unmaps_dma() {
    let Some(_lock) = run_in("bound") else { return };
    let dev = open();
    let c = dev.container();
    let buf = Anon::new(MIB2 as usize);
    let (rw, ro) = (Iova::new(0x1000_0000), Iova::new(0x2000_0000));
    // SAFETY: `buf` outlives every mapping of this test (all are unmapped
    // below); the IOVAs are the test's own (no DMA space uses the
    // container), and the device, never started, is given none of them.
    unsafe {
        c.map_dma(rw, buf.host(), MIB2, Access::ReadWrite).unwrap();
        c.map_dma(ro, buf.host(), MIB2, Access::ReadOnly).unwrap();
        assert_eq!(c.mapped_bytes(), 2 * MIB2);
        // The kernel refuses a second mapping over the same IOVAs.
        let err = c
            .map_dma(rw, buf.host(), MIB2, Access::ReadWrite)
            .unwrap_err();
        assert!(
            matches!(&err, VfioError::Dma { source, .. } if source.raw_os_error() == Some(libc::EEXIST)),
            "{err:?}"
        );
        // The MSI window is refused before the kernel is asked.
        let err = c
            .map_dma(
                Iova::new(MSI_WINDOW.0),
                buf.host(),
                0x1000,
                Access::ReadWrite,
            )
            .unwrap_err();
        assert!(matches!(err, VfioError::IovaOutOfRange { .. }), "{err:?}");

        assert_eq!(c.unmap_dma(rw, MIB2).unwrap(), MIB2);
        assert_eq!(
            c.unmap_dma(rw, MIB2).unwrap(),
            0,
            "nothing left at the RW IOVA"
        );
        assert_eq!(c.unmap_dma(ro, MIB2).unwrap(), MIB2);
        assert_eq!(
            c.unmap_dma(ro, MIB2).unwrap(),
            0,
            "nothing left at the RO IOVA"
        );
        assert_eq!(
            c.unmap_dma(Iova::new(0), 1 << 32).unwrap(),
            0,
            "nothing mapped below 4 GiB"
        );
    }
    assert_eq!(c.mapped_bytes(), 0);
}

#[test]
fn wrong_address_is_device_missing() {
    let Some(_lock) = run_in("bound") else { return };
    let err = Device::open("0000:00:1f.7").unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, VfioError::DeviceMissing { .. }), "{err:?}");
}

#[test]
fn msix_enable_and_disable() {
    let Some(_lock) = run_in("bound") else { return };
    let dev = open();
    let available = dev.msix_vectors().unwrap();
    assert!(available >= 2, "{available} MSI-X vectors");
    let cap = dev
        .find_capability(PCI_CAP_ID_MSIX)
        .unwrap()
        .expect("NVMe has MSI-X");
    // Message Control, bit 15: MSI-X Enable.
    let enabled = || dev.config_u16(cap + 2).unwrap() & 0x8000 != 0;
    assert!(!enabled());
    let msix = dev.enable_msix(2).unwrap();
    assert_eq!(msix.len(), 2);
    assert!(enabled(), "MSI-X Enable set with vectors on");
    assert_eq!(
        msix.take_count(0).unwrap(),
        0,
        "no interrupt without a command"
    );
    msix.disable().unwrap();
    assert!(!enabled(), "MSI-X Enable cleared after disable");
    // Dropping disables too.
    drop(dev.enable_msix(1).unwrap());
    assert!(!enabled());
    eprintln!("{available} MSI-X vectors, capability at {cap:#x}");
}

#[test]
fn resets_the_device() {
    let Some(_lock) = run_in("bound") else { return };
    let dev = open();
    let bar = dev.map_bar(0).unwrap();
    let did = dev.reset().unwrap();
    assert_eq!(did, dev.can_reset());
    eprintln!("reset: {did}");
    // The controller answers after the reset.
    dev.enable_bus_master().unwrap();
    assert_eq!(bar.read32(8).unwrap(), 0x10400);
}

#[test]
fn nvme_driver_bound_is_refused() {
    let Some(_lock) = run_in("nvme-driver") else {
        return;
    };
    let addr = nvme_addr();
    let err = Device::open(&addr).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(&err, VfioError::NotBoundToVfio { driver: Some(d), .. } if d == "nvme"),
        "{err:?}"
    );
    assert!(
        msg.contains(&format!("scripts/setup-vfio.sh bind {addr}")),
        "{msg}"
    );
}

#[test]
fn low_memlock_is_reported() {
    let Some(_lock) = run_in("low-memlock") else {
        return;
    };
    let dev = open();
    let buf = Anon::new(MIB2 as usize);
    // SAFETY: `buf` outlives the mapping, were it made; the IOVAs are the
    // test's own and the device is never started.
    let err = unsafe {
        dev.container()
            .map_dma(Iova::new(0x1000_0000), buf.host(), MIB2, Access::ReadWrite)
    }
    .unwrap_err();
    eprintln!("{err}");
    match err {
        VfioError::MemlockTooLow {
            current, needed, ..
        } => {
            assert_eq!(current, 64 << 10, "the limit run.sh set");
            assert_eq!(needed, MIB2);
        }
        other => panic!("expected MemlockTooLow, got {other:?}"),
    }
}
