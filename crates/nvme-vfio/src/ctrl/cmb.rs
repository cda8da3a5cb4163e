//! The Controller Memory Buffer (NVMe Base 2.0, 8.2.1): memory inside the
//! controller that I/O can use as a data buffer. The device reaches it by
//! the controller base address the driver programs (CMBMSC.CBA), never
//! through the IOMMU; the CPU reaches it through the BAR mapping, with
//! volatile accesses only (it is MMIO, not RAM).

use core::ptr::NonNull;
use std::sync::{Arc, Mutex};

use blk_dma::{HostAddr, HostSeg, Iova};

use super::mmio_copy::{copy_from_device, copy_to_device, Volatile};
use crate::mem::{DmaSpace, RangeAllocator, Registration};
use crate::nvme::regs::{offset, Registers};
use crate::vfio::{Bar, Device};
use crate::Error;

/// CMBMSC: Capabilities Registers Enabled.
const CMBMSC_CRE: u64 = 1 << 0;
/// CMBMSC: Controller Memory Space Enable.
const CMBMSC_CMSE: u64 = 1 << 1;
/// CMBMSC register offset.
pub(crate) const CMBMSC: u64 = 0x50;
/// CMBSTS register offset; bit 0: CBA invalid.
const CMBSTS: u64 = 0x58;

/// The controller's memory buffer, mapped and enabled.
pub(crate) struct Cmb {
    /// The device-memory region in the DMA space; dropped before the BAR
    /// mapping it describes (fields drop in order).
    _region: Registration,
    /// Keeps the BAR mapping alive as long as any buffer (shared with the
    /// PCI function, which releases it when the device is taken away).
    bar: Arc<Bar>,
    space: Arc<DmaSpace>,
    host: NonNull<u8>,
    bus: Iova,
    len: u64,
    free: Mutex<RangeAllocator>,
    /// The CMBMSC value that enables it (written again after resets).
    pub(crate) cmbmsc: u64,
}

// SAFETY: `host` points into the BAR mapping `bar` owns; accesses through
// it are volatile and to disjoint buffers handed out by `free`.
unsafe impl Send for Cmb {}
// SAFETY: as above.
unsafe impl Sync for Cmb {}

impl Cmb {
    /// The BAR mapping the buffer lies in.
    pub(crate) fn bar(&self) -> &Arc<Bar> {
        &self.bar
    }
}

impl core::fmt::Debug for Cmb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Cmb")
            .field("bus", &self.bus)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Cmb {
    /// Enables the CMB of a controller that reports one (CAP.CMBS): reads
    /// its location and size, maps its BAR, reserves an IOVA range as its
    /// controller base address (so no host memory is ever mapped there),
    /// and registers it with `space` as device memory.
    pub(crate) fn enable(
        dev: &Device,
        regs: &dyn Registers,
        space: &Arc<DmaSpace>,
    ) -> Result<Option<Cmb>, Error> {
        regs.write64(CMBMSC, CMBMSC_CRE);
        let loc = regs.read32(offset::CMBLOC);
        let sz = regs.read32(offset::CMBSZ);
        // SZU: 4 KiB << (4 * SZU); SZ and OFST count those units.
        let unit = 4096u64.checked_shl(4 * ((sz >> 8) & 0xf)).unwrap_or(0);
        let len = u64::from(sz >> 12) * unit;
        let off = u64::from(loc >> 12) * unit;
        let bir = loc & 0x7;
        // Read and write data support (RDS, WDS) is what buffers need.
        if len == 0 || unit == 0 || sz & (1 << 3) == 0 || sz & (1 << 4) == 0 {
            regs.write64(CMBMSC, 0);
            return Ok(None);
        }
        let bar = dev.map_bar(bir)?;
        let host = bar
            .area_ptr(off, len)
            .ok_or(Error::Unsupported("the CMB is not mappable"))?;
        let bus = space.alloc_iova(len)?;
        regs.write64(CMBMSC, bus.raw() | CMBMSC_CMSE | CMBMSC_CRE);
        if regs.read32(CMBSTS) & 1 != 0 {
            space.free_iova(bus, len);
            regs.write64(CMBMSC, 0);
            return Err(Error::Unsupported(
                "the controller refused the CMB base address",
            ));
        }
        // SAFETY: host..host+len is the CMB's mapping in `bar`, kept alive by
        // the returned Cmb, which also drops the registration before it.
        let region = unsafe { space.add_device_memory(host.as_ptr(), len as usize, bus) };
        let mut free = RangeAllocator::new();
        free.add(0, len);
        Ok(Some(Cmb {
            _region: region,
            bar: Arc::new(bar),
            space: space.clone(),
            host,
            bus,
            len,
            free: Mutex::new(free),
            cmbmsc: bus.raw() | CMBMSC_CMSE | CMBMSC_CRE,
        }))
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for Cmb {
    fn drop(&mut self) {
        self.space.free_iova(self.bus, self.len);
    }
}

/// A buffer in the controller memory buffer. I/O on it moves no data over
/// the bus to host memory: the controller reads and writes its own memory.
/// The CPU fills and reads it with [`write`](Self::write) and
/// [`read`](Self::read) (volatile copies; it is MMIO).
#[derive(Debug)]
pub struct CmbBuf {
    cmb: Arc<Cmb>,
    offset: u64,
    len: usize,
}

impl CmbBuf {
    pub(crate) fn alloc(cmb: &Arc<Cmb>, len: usize) -> Result<CmbBuf, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let size = (len as u64).next_multiple_of(4096);
        let offset = cmb
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .alloc(size, 4096)
            .ok_or(Error::OutOfDmaMemory {
                len: size,
                source: None,
            })?;
        Ok(CmbBuf {
            cmb: cmb.clone(),
            offset,
            len: size as usize,
        })
    }

    /// Length in bytes (rounded up to 4 KiB).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device (bus) address of the first byte.
    pub fn bus_addr(&self) -> Iova {
        self.cmb.bus.wrapping_add(self.offset)
    }

    fn ptr(&self) -> *mut u8 {
        // SAFETY: offset < cmb.len: inside the CMB mapping.
        unsafe { self.cmb.host.as_ptr().add(self.offset as usize) }
    }

    /// The first `len` bytes as a request segment.
    pub(crate) fn seg(&self, len: usize) -> HostSeg {
        HostSeg::new(HostAddr::from_ptr(self.ptr()), len.min(self.len) as u64)
    }

    /// Copies `src` into the buffer at `at`.
    pub fn write(&mut self, at: usize, src: &[u8]) -> Result<(), Error> {
        if at.checked_add(src.len()).is_none_or(|e| e > self.len) {
            return Err(Error::Invalid("copy past the end of the CMB buffer".into()));
        }
        // SAFETY: `at + src.len() <= len` (checked): inside this buffer's
        // part of the CMB mapping, which lives as long as `self`, and not
        // overlapping `src` (a Rust slice, never device memory: device
        // memory is only ever accessed volatile or by address). Aligned
        // words, not a byte per MMIO transaction.
        unsafe { copy_to_device::<Volatile>(self.ptr().add(at), src) };
        Ok(())
    }

    /// Copies bytes at `at` out of the buffer into `dst`.
    pub fn read(&self, at: usize, dst: &mut [u8]) -> Result<(), Error> {
        if at.checked_add(dst.len()).is_none_or(|e| e > self.len) {
            return Err(Error::Invalid("copy past the end of the CMB buffer".into()));
        }
        // SAFETY: as in `write`, reading.
        unsafe { copy_from_device::<Volatile>(self.ptr().add(at), dst) };
        Ok(())
    }
}

impl Drop for CmbBuf {
    fn drop(&mut self) {
        self.cmb
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .release(self.offset, self.len as u64);
    }
}
