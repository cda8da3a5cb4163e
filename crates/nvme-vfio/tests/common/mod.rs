//! Test memory (host arenas the fake IOMMU maps, a device-side reader) and
//! the check of whether a test runs in the VM of scripts/vm.

#![allow(dead_code)]

use std::alloc::{self, Layout};

use blk_dma::fake::FakeMapper;
use blk_dma::{HostAddr, HostSeg, Iova};
use nvme_vfio::nvme::desc::HeapPool;
use nvme_vfio::nvme::walk::DeviceMemory;

/// Page-aligned host memory filled with a position-dependent pattern.
pub struct Arena {
    ptr: *mut u8,
    layout: Layout,
}

impl Arena {
    pub fn new(len: usize, seed: u8) -> Self {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { alloc::alloc(layout) };
        assert!(!ptr.is_null());
        for i in 0..len {
            let v = (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31)
                >> 7;
            // SAFETY: i < len.
            unsafe { ptr.add(i).write(v as u8 ^ seed) };
        }
        Self { ptr, layout }
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn host(&self) -> HostAddr {
        HostAddr::from_ptr(self.ptr)
    }

    pub fn seg(&self, off: usize, len: usize) -> HostSeg {
        assert!(off + len <= self.len());
        HostSeg::new(HostAddr::new(self.ptr as usize + off), len as u64)
    }

    /// Copies `buf.len()` bytes at host address `host`, if inside the arena.
    pub fn read(&self, host: HostAddr, buf: &mut [u8]) -> bool {
        let off = host.raw().wrapping_sub(self.ptr as usize);
        if off >= self.len() || self.len() - off < buf.len() {
            return false;
        }
        // SAFETY: in bounds (checked); buf is a distinct allocation.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), buf.as_mut_ptr(), buf.len()) };
        true
    }

    /// The bytes a segment covers.
    pub fn bytes(&self, seg: HostSeg) -> Vec<u8> {
        let mut v = vec![0; seg.len as usize];
        assert!(self.read(seg.addr, &mut v));
        v
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Device reads through the fake IOMMU into arenas and a descriptor pool.
pub struct Device<'a> {
    pub iommu: &'a FakeMapper,
    pub arenas: &'a [&'a Arena],
    pub pool: &'a HeapPool,
}

impl DeviceMemory for Device<'_> {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> bool {
        if self.pool.read(iova, buf) {
            return true;
        }
        let mut done = 0;
        while done < buf.len() {
            let at = iova.wrapping_add(done as u64);
            let Some((host, n)) = self.iommu.resolve(at, (buf.len() - done) as u64, false) else {
                return false;
            };
            let dst = &mut buf[done..done + n as usize];
            if !self.arenas.iter().any(|a| a.read(host, dst)) {
                return false;
            }
            done += n as usize;
        }
        true
    }
}

/// Whether the test runs in the VM with the controller on vfio-pci.
pub fn in_vm() -> bool {
    let vm = std::env::var("VM_GUEST").as_deref() == Ok("1");
    let scenario = std::env::var("NVME_VM_SCENARIO").unwrap_or_else(|_| "bound".into());
    if !vm {
        // scripts/test.sh sets this: there, a test that cannot find its VM
        // fails instead of passing as skipped.
        assert!(
            std::env::var_os("NVME_VM_REQUIRE").is_none(),
            "NVME_VM_REQUIRE is set but this is not the VM"
        );
        eprintln!("skipped: needs the VM (scripts/vm/run.sh)");
    } else if scenario != "bound" {
        eprintln!("skipped: scenario {scenario} (needs the controller on vfio-pci)");
    }
    vm && scenario == "bound"
}
