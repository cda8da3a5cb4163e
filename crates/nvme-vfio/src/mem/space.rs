//! The DMA address space of one IOMMU domain: IOVA allocation inside the
//! IOMMU's valid ranges, hugepage slabs mapped once, registered user memory,
//! and the region table that [`VfioMapper`](super::VfioMapper) translates
//! with.
//!
//! IOVAs come from our own allocator, never from host virtual addresses:
//! user addresses sit above 2^46 while IOMMUs often cover only 39 bits, and
//! the valid ranges have holes (the MSI window at 0xfee00000).

use core::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use blk_dma::{HostAddr, Iova, Region, RegionKind};

use super::buf::DmaBuf;
use super::dma_map::{Access, DmaMap};
use super::range::RangeAllocator;
use super::slab::{Slab, HUGEPAGE};
use crate::error::Error;

/// Smallest buffer granule: buffers are multiples of 512 bytes (the smallest
/// LBA) and at least 512-byte aligned; 4 KiB aligned from 4 KiB up.
const BUF_GRANULE: u64 = 512;

/// How a [`DmaSpace`] gets its memory.
#[derive(Clone, Copy, Debug)]
pub struct SpaceConfig {
    /// Try 2 MiB hugepages for slabs (falling back to 4 KiB pages with a
    /// logged warning).
    pub hugepages: bool,
}

impl Default for SpaceConfig {
    fn default() -> Self {
        Self { hugepages: true }
    }
}

/// One slab: its memory, where it is mapped, and its free space (offsets).
#[derive(Debug)]
struct SlabEntry {
    slab: Slab,
    iova: Iova,
    free: RangeAllocator,
}

/// The DMA address space of one IOMMU domain. Shared (`Arc`) by every
/// queue pair; each takes a [`VfioMapper`](super::VfioMapper) handle for its
/// I/O path.
///
/// ```
/// # use nvme_sim::{Config as SimConfig, SimController};
/// # use nvme_vfio::ctrl::{Config, Controller};
/// # use nvme_vfio::mem::{DmaSpace, SpaceConfig};
/// # let sim = SimController::new(SimConfig::default()).unwrap();
/// # let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
/// # let config = Config { space: SpaceConfig { hugepages: false }, ..Config::default() };
/// # // SAFETY: the registers, IOMMU and PCI function all belong to `sim`.
/// # let ctrl = unsafe { Controller::with_backend(sim.registers(), space, config, Some(sim.pci_function())) }?;
/// # use nvme_vfio::ctrl::QueueConfig;
/// let space = ctrl.space();
/// // A DMA buffer: memory mapped for the device once, from a slab.
/// let mut buf = space.alloc(8192)?;
/// buf.as_mut_slice().fill(1);
/// // The application's own memory, registered once: requests on it are
/// // translated, never mapped per I/O.
/// let mut mine = vec![0u8; 1 << 20];
/// // SAFETY: `mine` stays allocated, and is not freed or moved, until
/// // the registration is dropped (before it, below).
/// let reg = unsafe { space.register(mine.as_mut_ptr(), mine.len()) }?;
/// let ns = ctrl.namespace(1)?;
/// let mut qp = ctrl.queue_pair(QueueConfig::default())?;
/// qp.read(&ns, 0, &mut mine[..65536])?;
/// drop(qp);
/// drop(reg);
/// # Ok::<(), nvme_vfio::Error>(())
/// ```
pub struct DmaSpace {
    iommu: Arc<dyn DmaMap + Send + Sync>,
    /// The VFIO container behind `iommu`, when it is one: more devices
    /// can be opened into it ([`Controller::open_in`](crate::ctrl::Controller::open_in)).
    container: Option<Arc<crate::vfio::Container>>,
    granule: u64,
    config: SpaceConfig,
    iova: Mutex<RangeAllocator>,
    /// Registered and device regions, sorted by host address.
    regions: Mutex<Vec<Region>>,
    /// Bumped on every change of `regions`, so per-thread copies refresh.
    generation: AtomicU64,
    slabs: Mutex<Vec<SlabEntry>>,
}

impl core::fmt::Debug for DmaSpace {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaSpace")
            .field("granule", &self.granule)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it
/// (the bookkeeping stays consistent: every update is a single step).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DmaSpace {
    /// A DMA space over `iommu`, allocating IOVAs inside its valid ranges.
    /// The first granule of IOVA space is never handed out, so a zero PRP
    /// or SGL address can never be valid data.
    pub fn new(iommu: Arc<dyn DmaMap + Send + Sync>, config: SpaceConfig) -> Arc<Self> {
        Self::build(iommu, None, config)
    }

    /// A DMA space over a VFIO container's IOMMU. Several devices can
    /// share it: their groups attached to the same container, memory
    /// allocated or registered once is reachable by all of them at the
    /// same IOVAs (see
    /// [`Controller::open_in`](crate::ctrl::Controller::open_in)).
    pub fn for_container(container: Arc<crate::vfio::Container>, config: SpaceConfig) -> Arc<Self> {
        Self::build(container.clone(), Some(container), config)
    }

    /// The VFIO container behind the space, if it is one.
    pub fn container(&self) -> Option<&Arc<crate::vfio::Container>> {
        self.container.as_ref()
    }

    fn build(
        iommu: Arc<dyn DmaMap + Send + Sync>,
        container: Option<Arc<crate::vfio::Container>>,
        config: SpaceConfig,
    ) -> Arc<Self> {
        let info = iommu.iommu_info();
        let g = info.min_page_size();
        let mut iova = RangeAllocator::new();
        for r in &info.iova_ranges {
            let start = (*r.start()).max(g).next_multiple_of(g);
            let end = r.end().saturating_add(1) & !(g - 1);
            iova.add(start, end);
        }
        Arc::new(Self {
            granule: g,
            iommu,
            container,
            config,
            iova: Mutex::new(iova),
            regions: Mutex::new(Vec::new()),
            generation: AtomicU64::new(0),
            slabs: Mutex::new(Vec::new()),
        })
    }

    /// The IOMMU granule (its smallest page size).
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// The IOMMU this space programs.
    pub(crate) fn iommu(&self) -> &(dyn DmaMap + Send + Sync) {
        &*self.iommu
    }

    /// IOVA space still free, in bytes.
    pub fn iova_available(&self) -> u64 {
        lock(&self.iova).available()
    }

    /// Allocates `len` bytes of IOVA space, granule aligned, next fit: an
    /// IOVA unmapped at an I/O's completion is not mapped again until the
    /// rest of the IOVA space was used, so a device's stale access to it
    /// (a duplicate completion's transfer, data moved after the
    /// completion) faults instead of reaching another buffer.
    pub(crate) fn alloc_iova(&self, len: u64) -> Result<Iova, Error> {
        let len = len.next_multiple_of(self.granule);
        lock(&self.iova)
            .alloc_next_fit(len, self.granule)
            .map(Iova::new)
            .ok_or(Error::IovaExhausted { len })
    }

    /// Returns IOVA space from [`alloc_iova`](Self::alloc_iova).
    pub(crate) fn free_iova(&self, iova: Iova, len: u64) {
        lock(&self.iova).release(iova.raw(), len.next_multiple_of(self.granule));
    }

    /// The generation of the region table.
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A copy of the region table and its generation.
    pub(crate) fn regions(&self) -> (u64, Vec<Region>) {
        let r = lock(&self.regions);
        // Read under the lock: a writer bumps the generation while holding it.
        (self.generation.load(Ordering::Acquire), r.clone())
    }

    fn add_region(&self, region: Region) {
        let mut r = lock(&self.regions);
        let i = r.partition_point(|x| x.host < region.host);
        r.insert(i, region);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn remove_region(&self, host: HostAddr) {
        let mut r = lock(&self.regions);
        r.retain(|x| x.host != host);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Allocates a DMA buffer of at least `len` bytes (rounded up to 512)
    /// from the slabs, adding a slab when none has room. Buffers of 4 KiB
    /// and more are page aligned.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<DmaBuf, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let size = (len as u64).next_multiple_of(BUF_GRANULE);
        let align = if size >= 4096 { 4096 } else { BUF_GRANULE };
        let mut slabs = lock(&self.slabs);
        let mut found = None;
        for (i, s) in slabs.iter_mut().enumerate() {
            if let Some(off) = s.free.alloc(size, align) {
                found = Some((i, off));
                break;
            }
        }
        let (i, off) = match found {
            Some(x) => x,
            None => {
                let mut entry = self.new_slab(size)?;
                let off = entry.free.alloc(size, align).ok_or(Error::OutOfDmaMemory {
                    len: size,
                    source: None,
                })?;
                slabs.push(entry);
                (slabs.len() - 1, off)
            }
        };
        let entry = &slabs[i];
        // SAFETY: off + size is inside the slab (the allocator's range).
        let ptr = unsafe { entry.slab.ptr().add(off as usize) };
        let iova = entry.iova.wrapping_add(off);
        Ok(DmaBuf::new(self.clone(), ptr, iova, size as usize))
    }

    /// Gives a buffer's space back to its slab.
    pub(crate) fn free_buf(&self, ptr: NonNull<u8>, len: usize) {
        let a = ptr.as_ptr() as usize;
        for s in lock(&self.slabs).iter_mut() {
            let base = s.slab.ptr().as_ptr() as usize;
            if a >= base && a < base + s.slab.len() {
                s.free.release(
                    (a - base) as u64,
                    (len as u64).next_multiple_of(BUF_GRANULE),
                );
                return;
            }
        }
    }

    /// A new slab of at least `min` bytes, mapped for the device.
    fn new_slab(&self, min: u64) -> Result<SlabEntry, Error> {
        let len = min.next_multiple_of(HUGEPAGE as u64);
        let slab =
            Slab::new(len as usize, self.config.hugepages).map_err(|e| Error::OutOfDmaMemory {
                len,
                source: Some(e),
            })?;
        // One lock for both tries: the allocator's mutex is not reentrant.
        // Next fit, like per-I/O mappings: a slab must not land on IOVAs a
        // device may still use from an I/O that just completed.
        let iova = {
            let mut a = lock(&self.iova);
            a.alloc_next_fit(len, (HUGEPAGE as u64).max(self.granule))
                .or_else(|| a.alloc_next_fit(len, self.granule))
        }
        .map(Iova::new)
        .ok_or(Error::IovaExhausted { len })?;
        let host = HostAddr::from_ptr(slab.ptr().as_ptr());
        // SAFETY: the slab is fresh memory that this space owns and keeps
        // until it unmaps it (Drop), used only for its DMA buffers; the IOVA
        // range was just allocated from this space's allocator.
        let mapped = unsafe { self.iommu.map_dma(iova, host, len, Access::ReadWrite) };
        if let Err(e) = mapped {
            self.free_iova(iova, len);
            return Err(e.into());
        }
        self.add_region(Region {
            host,
            len,
            addr: iova,
            kind: RegionKind::Registered,
        });
        let mut free = RangeAllocator::new();
        free.add(0, len);
        Ok(SlabEntry { slab, iova, free })
    }

    /// Number of slabs and how many of them are hugepage backed.
    pub fn slab_count(&self) -> (usize, usize) {
        let s = lock(&self.slabs);
        (s.len(), s.iter().filter(|e| e.slab.is_huge()).count())
    }

    /// Registers `len` bytes of user memory at `addr` for DMA: mapped once
    /// (read-write), translated with no syscall on the I/O path, unmapped
    /// when the returned [`Registration`] drops. The region is widened to
    /// whole IOMMU pages.
    ///
    /// # Safety
    ///
    /// The memory must stay allocated, and not be handed to anything else,
    /// until the `Registration` is dropped; and no I/O on it may be in
    /// flight when it is dropped. (The kernel pins the pages, so freeing
    /// them early would let the device write into memory reused elsewhere.)
    pub unsafe fn register(
        self: &Arc<Self>,
        addr: *const u8,
        len: usize,
    ) -> Result<Registration, Error> {
        // SAFETY: the caller upholds `register`'s contract, which is this one's.
        unsafe { self.register_with(addr, len, Access::ReadWrite) }
    }

    /// [`register`](Self::register) with the device's access limited to
    /// `access`: with [`Access::ReadOnly`] the device can only read the
    /// memory (a data source for writes), and a read command into it fails
    /// at the IOMMU instead of changing it.
    ///
    /// # Safety
    ///
    /// As for [`register`](Self::register).
    pub unsafe fn register_with(
        self: &Arc<Self>,
        addr: *const u8,
        len: usize,
        access: Access,
    ) -> Result<Registration, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let g = self.granule;
        let host = HostAddr::from_ptr(addr);
        let off = host.offset_in(g);
        let start = HostAddr::new(host.raw() - off as usize);
        let span = (off + len as u64).next_multiple_of(g);
        let iova = self.alloc_iova(span)?;
        // SAFETY: the caller of `register` keeps the memory allocated, and
        // handed to nothing else, until the Registration drops, which unmaps
        // it first (the rest of its first and last IOMMU page only widens
        // the mapping: the device is given addresses of registered bytes
        // only, and the kernel pins the pages). The IOVA range was just
        // allocated from this space's allocator.
        let mapped = unsafe { self.iommu.map_dma(iova, start, span, access) };
        if let Err(e) = mapped {
            self.free_iova(iova, span);
            return Err(e.into());
        }
        let region = Region {
            host: start,
            len: span,
            addr: iova,
            kind: RegionKind::Registered,
        };
        self.add_region(region);
        Ok(Registration {
            space: self.clone(),
            region,
        })
    }

    /// Declares `len` bytes of device memory (a controller memory buffer or
    /// a peer BAR) mapped at `host` in this process and reached by the device
    /// at bus address `bus`: requests in it are never mapped through the
    /// IOMMU. Removed when the returned [`Registration`] drops.
    ///
    /// # Safety
    ///
    /// `host..host + len` must be such a mapping for as long as the
    /// `Registration` lives, with no I/O on it in flight when it drops.
    pub unsafe fn add_device_memory(
        self: &Arc<Self>,
        host: *const u8,
        len: usize,
        bus: Iova,
    ) -> Registration {
        let region = Region {
            host: HostAddr::from_ptr(host),
            len: len as u64,
            addr: bus,
            kind: RegionKind::Device,
        };
        self.add_region(region);
        Registration {
            space: self.clone(),
            region,
        }
    }
}

impl Drop for DmaSpace {
    fn drop(&mut self) {
        let slabs = core::mem::take(&mut *lock(&self.slabs));
        for s in slabs {
            // SAFETY: exactly the slab's mapping, made by `new_slab`; no
            // buffer of it is left (each holds the space alive).
            let unmapped = unsafe { self.iommu.unmap_dma(s.iova, s.slab.len() as u64) };
            if let Err(e) = unmapped {
                log::error!("unmapping a DMA slab at IOVA {}: {e}; leaking it", s.iova);
                // The device may still reach it: never give it back.
                core::mem::forget(s);
            }
        }
    }
}

/// Registered user memory or device memory; undone on drop.
#[derive(Debug)]
pub struct Registration {
    space: Arc<DmaSpace>,
    region: Region,
}

impl Registration {
    /// The region as blk-dma sees it: host range, device address, kind.
    pub fn region(&self) -> Region {
        self.region
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.space.remove_region(self.region.host);
        if self.region.kind == RegionKind::Registered {
            let r = self.region;
            // SAFETY: exactly this registration's mapping (`register_with`);
            // no I/O on it is in flight (the contract of `register`).
            let unmapped = unsafe { self.space.iommu.unmap_dma(r.addr, r.len) };
            if let Err(e) = unmapped {
                log::error!("unmapping registered memory at IOVA {}: {e}", r.addr);
            }
            self.space.free_iova(r.addr, r.len);
        }
    }
}
