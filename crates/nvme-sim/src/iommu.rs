//! A software IOMMU: the mapping side behaves like VFIO's type1v2 IOMMU
//! driver (the checks of `vfio_dma_do_map` / `vfio_dma_do_unmap`), the
//! device side reads and writes host memory only through live mappings.
//!
//! # The host memory contract
//!
//! [`DmaMap::map_dma`] takes a host address as a number, exactly as
//! `VFIO_IOMMU_MAP_DMA` does. On hardware the kernel pins the pages; here the
//! software device copies to and from them with raw pointers. Whoever maps
//! memory therefore promises what it promises to a real IOMMU: the host
//! range stays allocated (and is not otherwise reclaimed) until it is
//! unmapped. The driver's `DmaSpace` keeps its slabs and registrations alive
//! for as long as they are mapped. Device accesses hold the mapping table's
//! read lock for the whole copy, so once [`DmaMap::unmap_dma`] returns the
//! device no longer touches the unmapped memory.
//!
//! Device accesses use volatile loads and stores, since the host may touch
//! the same memory concurrently (as with a real device).

use core::ops::RangeInclusive;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use blk_dma::{DmaRange, HostAddr, Iova};
use nvme_vfio::mem::{Access, DmaMap, IommuInfo};
use nvme_vfio::nvme::walk::DeviceMemory;
use nvme_vfio::vfio::VfioError;

/// What the software IOMMU allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IommuConfig {
    /// Supported page sizes (bit n set: 2^n bytes); the smallest is the
    /// granule every map and unmap must be aligned to.
    pub page_sizes: u64,
    /// Valid IOVA ranges, inclusive.
    pub iova_ranges: Vec<RangeInclusive<u64>>,
    /// The most mappings that may exist at once (type1's
    /// `dma_entry_limit`).
    pub dma_entry_limit: u32,
}

impl Default for IommuConfig {
    /// What QEMU's emulated Intel VT-d reports to VFIO: 4 KiB, 2 MiB and
    /// 1 GiB pages, 39-bit IOVAs with the MSI window reserved, and type1's
    /// default limit of 65535 mappings.
    fn default() -> Self {
        Self {
            page_sizes: (1 << 12) | (1 << 21) | (1 << 30),
            iova_ranges: vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff],
            dma_entry_limit: 65535,
        }
    }
}

/// One live mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First IOVA.
    pub iova: Iova,
    /// Host address of the first byte.
    pub host: HostAddr,
    /// Length in bytes.
    pub len: u64,
    /// What the device may do.
    pub access: Access,
}

impl Mapping {
    fn end(&self) -> u64 {
        self.iova.raw() + self.len
    }
}

/// The software IOMMU. Share it (`Arc`) between the driver's DMA memory,
/// which maps through [`DmaMap`], and the software controller, which
/// accesses memory through [`read`](Self::read) and [`write`](Self::write).
#[derive(Debug)]
pub struct SimIommu {
    info: IommuInfo,
    granule: u64,
    limit: u32,
    /// Mappings by first IOVA; they never overlap.
    maps: RwLock<BTreeMap<u64, Mapping>>,
    faults: AtomicU64,
}

fn dma_err(op: &'static str, iova: Iova, len: u64, errno: i32) -> VfioError {
    VfioError::Dma {
        op,
        iova: iova.raw(),
        len,
        source: io::Error::from_raw_os_error(errno),
    }
}

impl Default for SimIommu {
    fn default() -> Self {
        Self::new(IommuConfig::default())
    }
}

impl SimIommu {
    /// An IOMMU with nothing mapped.
    pub fn new(config: IommuConfig) -> Self {
        let info = IommuInfo {
            page_sizes: config.page_sizes,
            iova_ranges: config.iova_ranges,
            dma_mappings_available: Some(config.dma_entry_limit),
        };
        Self {
            granule: info.min_page_size(),
            info,
            limit: config.dma_entry_limit,
            maps: RwLock::new(BTreeMap::new()),
            faults: AtomicU64::new(0),
        }
    }

    fn maps(&self) -> RwLockReadGuard<'_, BTreeMap<u64, Mapping>> {
        // Every update of the table is a single insert or removal: a
        // panicking holder cannot leave it inconsistent.
        self.maps.read().unwrap_or_else(|e| e.into_inner())
    }

    fn maps_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, Mapping>> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The live mappings, by IOVA.
    pub fn mappings(&self) -> Vec<Mapping> {
        self.maps().values().copied().collect()
    }

    /// Device accesses refused so far (the analog of IOMMU fault reports).
    pub fn fault_count(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    /// The pieces of `[iova, iova + len)` as host addresses, or `None` if a
    /// byte is unmapped, or (for `write`) mapped read-only.
    fn resolve(
        maps: &BTreeMap<u64, Mapping>,
        iova: Iova,
        len: u64,
        write: bool,
        out: &mut Pieces,
    ) -> Option<()> {
        let mut cur = iova.raw();
        let end = cur.checked_add(len)?;
        while cur < end {
            let (_, m) = maps.range(..=cur).next_back()?;
            if cur >= m.end() || (write && m.access == Access::ReadOnly) {
                return None;
            }
            let n = (end.min(m.end()) - cur) as usize;
            let host = m.host.raw() + (cur - m.iova.raw()) as usize;
            out.push((host, n));
            cur += n as u64;
        }
        Some(())
    }

    fn fault(&self, what: &str, iova: Iova, len: u64) -> bool {
        self.faults.fetch_add(1, Ordering::Relaxed);
        log::debug!("IOMMU fault: device {what} of {len:#x} bytes at {iova}");
        false
    }

    /// Device read of `buf.len()` bytes at `iova`; `false` (and a fault
    /// counted) if any byte is not mapped.
    pub fn read(&self, iova: Iova, buf: &mut [u8]) -> bool {
        self.read_ranges(&[DmaRange::new(iova, buf.len() as u64)], buf)
    }

    /// Device write of `data` at `iova`; `false` (a fault, nothing written)
    /// if any byte is not mapped or is mapped read-only.
    pub fn write(&self, iova: Iova, data: &[u8]) -> bool {
        self.write_ranges(&[DmaRange::new(iova, data.len() as u64)], data)
    }

    /// Device read of the concatenation of `ranges` into `buf` (as long as
    /// the ranges together); `false` if any byte is not mapped.
    pub fn read_ranges(&self, ranges: &[DmaRange], buf: &mut [u8]) -> bool {
        let maps = self.maps();
        let mut pieces = Pieces::new();
        for r in ranges {
            if Self::resolve(&maps, r.addr, r.len, false, &mut pieces).is_none() {
                return self.fault("read", r.addr, r.len);
            }
        }
        if pieces.iter().map(|p| p.1).sum::<usize>() != buf.len() {
            return false;
        }
        let mut at = 0;
        for &(host, n) in pieces.iter() {
            // SAFETY: `host..host + n` lies inside a live mapping (resolved
            // above under the read lock, which is held until the copy is
            // done, so no unmap can intervene); by the mapping contract
            // (module docs) that host memory stays allocated while mapped.
            // `buf[at..at + n]` is in bounds: the pieces add up to its length.
            unsafe { copy_from_device_memory(host as *const u8, &mut buf[at..at + n]) };
            at += n;
        }
        true
    }

    /// Device write of `data` over the concatenation of `ranges`; every
    /// range is checked before the first byte is written, so on `false`
    /// nothing was written.
    pub fn write_ranges(&self, ranges: &[DmaRange], data: &[u8]) -> bool {
        let maps = self.maps();
        let mut pieces = Pieces::new();
        for r in ranges {
            if Self::resolve(&maps, r.addr, r.len, true, &mut pieces).is_none() {
                return self.fault("write", r.addr, r.len);
            }
        }
        if pieces.iter().map(|p| p.1).sum::<usize>() != data.len() {
            return false;
        }
        let mut at = 0;
        for &(host, n) in pieces.iter() {
            // SAFETY: as in `read_ranges`; the mapping is writable by the
            // device (checked in `resolve`), which is the mapper's promise
            // that the host memory may be written.
            unsafe { copy_to_device_memory(&data[at..at + n], host as *mut u8) };
            at += n;
        }
        true
    }

    /// Device write of one naturally aligned 64-bit value as a single
    /// atomic store with `order` (the quadwords of a completion queue
    /// entry: the driver reads them with atomic loads, and the release
    /// store of the one with the phase tag publishes the entry). `false` (a
    /// fault, nothing written) if the 8 bytes are not mapped writable.
    ///
    /// A misaligned `iova` (which no valid queue has) is written with
    /// byte stores instead, like [`write`](Self::write).
    /// Device atomic load of the aligned dword at `iova` (a shadow doorbell
    /// slot the host writes atomically); `None` (a fault) if not mapped.
    pub(crate) fn load_u32(&self, iova: Iova, order: Ordering) -> Option<u32> {
        let maps = self.maps();
        let mut pieces = Pieces::new();
        if Self::resolve(&maps, iova, 4, false, &mut pieces).is_none() {
            self.fault("read", iova, 4);
            return None;
        }
        match pieces.iter().as_slice() {
            [(host, 4)] if host % 4 == 0 => {
                // SAFETY: a live mapping covers the 4 aligned bytes at
                // `host` (read lock held, contract as in `read_ranges`);
                // the host accesses such memory (doorbell slots) only
                // atomically and holds no Rust reference to it.
                let cell = unsafe { AtomicU32::from_ptr(*host as *mut u32) };
                Some(cell.load(order))
            }
            _ => {
                drop(maps);
                let mut b = [0u8; 4];
                self.read(iova, &mut b).then(|| u32::from_ne_bytes(b))
            }
        }
    }

    /// Device atomic store of the aligned dword at `iova` (an EventIdx
    /// slot the host reads atomically); `false` (a fault) if not writable.
    pub(crate) fn store_u32(&self, iova: Iova, value: u32, order: Ordering) -> bool {
        let maps = self.maps();
        let mut pieces = Pieces::new();
        if Self::resolve(&maps, iova, 4, true, &mut pieces).is_none() {
            return self.fault("write", iova, 4);
        }
        match pieces.iter().as_slice() {
            [(host, 4)] if host % 4 == 0 => {
                // SAFETY: as in `load_u32`, for a device-writable mapping.
                let cell = unsafe { AtomicU32::from_ptr(*host as *mut u32) };
                cell.store(value, order);
                true
            }
            _ => {
                drop(maps);
                self.write(iova, &value.to_ne_bytes())
            }
        }
    }

    pub(crate) fn store_u64(&self, iova: Iova, value: u64, order: Ordering) -> bool {
        let maps = self.maps();
        let mut pieces = Pieces::new();
        if Self::resolve(&maps, iova, 8, true, &mut pieces).is_none() {
            return self.fault("write", iova, 8);
        }
        match pieces.iter().as_slice() {
            [(host, 8)] if host % 8 == 0 => {
                // SAFETY: a live, device-writable mapping covers the 8
                // aligned bytes at `host` (read lock held, contract as in
                // `read_ranges`). The host accesses such memory (queue
                // rings) only atomically or volatile and holds no Rust
                // reference to it, so an atomic view of it aliases nothing.
                let cell = unsafe { AtomicU64::from_ptr(*host as *mut u64) };
                cell.store(value, order);
                true
            }
            _ => {
                drop(maps);
                self.write(iova, &value.to_ne_bytes())
            }
        }
    }
}

/// Host pieces of a device access: up to 8 inline (every queue entry,
/// doorbell slot and most data transfers), more on the heap, so the
/// device's common path does not allocate.
struct Pieces {
    inline: [(usize, usize); 8],
    n: usize,
    spill: Vec<(usize, usize)>,
}

impl Pieces {
    fn new() -> Self {
        Self {
            inline: [(0, 0); 8],
            n: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, p: (usize, usize)) {
        if !self.spill.is_empty() {
            self.spill.push(p);
        } else if self.n < self.inline.len() {
            self.inline[self.n] = p;
            self.n += 1;
        } else {
            self.spill.extend_from_slice(&self.inline);
            self.spill.push(p);
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, (usize, usize)> {
        if self.spill.is_empty() {
            self.inline[..self.n].iter()
        } else {
            self.spill.iter()
        }
    }
}

/// Copies `dst.len()` bytes from host memory at `src` with volatile loads,
/// 8 bytes at a time where `src` is aligned.
///
/// # Safety
///
/// `src..src + dst.len()` must be valid for reads.
unsafe fn copy_from_device_memory(src: *const u8, dst: &mut [u8]) {
    let mut i = 0;
    let n = dst.len();
    while i < n {
        let p = src.wrapping_add(i);
        if p as usize % 8 == 0 && n - i >= 8 {
            // SAFETY: p..p + 8 lies inside the range the caller vouches for
            // (i + 8 <= n) and is 8-byte aligned.
            let v = unsafe { p.cast::<u64>().read_volatile() };
            dst[i..i + 8].copy_from_slice(&v.to_ne_bytes());
            i += 8;
        } else {
            // SAFETY: p is inside the range the caller vouches for (i < n).
            dst[i] = unsafe { p.read_volatile() };
            i += 1;
        }
    }
}

/// Copies `src` to host memory at `dst` with volatile stores, 8 bytes at a
/// time where `dst` is aligned.
///
/// # Safety
///
/// `dst..dst + src.len()` must be valid for writes.
unsafe fn copy_to_device_memory(src: &[u8], dst: *mut u8) {
    let mut i = 0;
    let n = src.len();
    while i < n {
        let p = dst.wrapping_add(i);
        if p as usize % 8 == 0 && n - i >= 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&src[i..i + 8]);
            // SAFETY: p..p + 8 lies inside the range the caller vouches for
            // (i + 8 <= n) and is 8-byte aligned.
            unsafe { p.cast::<u64>().write_volatile(u64::from_ne_bytes(b)) };
            i += 8;
        } else {
            // SAFETY: p is inside the range the caller vouches for (i < n).
            unsafe { p.write_volatile(src[i]) };
            i += 1;
        }
    }
}

impl DeviceMemory for SimIommu {
    fn read(&self, iova: Iova, buf: &mut [u8]) -> bool {
        SimIommu::read(self, iova, buf)
    }
}

// SAFETY: the software device reaches host memory only through `read*`,
// `write*` and `write_u32`, which resolve every byte through a live mapping
// (with its access) under the table's read lock and copy while holding it;
// `map_dma` inserts a mapping only once every check passed; `unmap_dma`
// removes, under the write lock, every mapping inside a range that covers
// whole mappings, so no device access is in progress or follows. Neither
// touches host memory.
unsafe impl DmaMap for SimIommu {
    fn iommu_info(&self) -> &IommuInfo {
        &self.info
    }

    /// Maps like `VFIO_IOMMU_MAP_DMA`: `EINVAL` for a zero, unaligned,
    /// wrapping or out-of-range request, `EEXIST` for an overlap, `ENOSPC`
    /// ([`VfioError::DmaLimit`]) past the mapping limit, `EFAULT` for a null
    /// host address.
    unsafe fn map_dma(
        &self,
        iova: Iova,
        host: HostAddr,
        len: u64,
        access: Access,
    ) -> Result<(), VfioError> {
        let g = self.granule;
        let (i, h) = (iova.raw(), host.raw_u64());
        if len == 0 || i % g != 0 || h % g != 0 || len % g != 0 {
            return Err(dma_err("map", iova, len, libc::EINVAL));
        }
        // The end of the mapping must be representable (it is on every
        // real IOMMU: IOVA spaces stop well short of 2^64).
        let (Some(last), Some(_), Some(_)) = (
            i.checked_add(len - 1),
            h.checked_add(len - 1),
            i.checked_add(len),
        ) else {
            return Err(dma_err("map", iova, len, libc::EINVAL));
        };
        if host.raw() == 0 {
            return Err(dma_err("map", iova, len, libc::EFAULT));
        }
        if !self
            .info
            .iova_ranges
            .iter()
            .any(|r| *r.start() <= i && last <= *r.end())
        {
            return Err(dma_err("map", iova, len, libc::EINVAL));
        }
        let mut maps = self.maps_mut();
        let before = maps.range(..=last).next_back();
        if before.is_some_and(|(_, m)| m.end() > i) {
            return Err(dma_err("map", iova, len, libc::EEXIST));
        }
        if maps.len() >= self.limit as usize {
            return Err(VfioError::DmaLimit {
                iova: i,
                len,
                source: io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        maps.insert(
            i,
            Mapping {
                iova,
                host,
                len,
                access,
            },
        );
        Ok(())
    }

    /// Unmaps like `VFIO_IOMMU_UNMAP_DMA` on a type1v2 container: `EINVAL`
    /// for a zero, unaligned or wrapping range or one that bisects a
    /// mapping; otherwise every mapping inside the range goes, and the
    /// bytes unmapped are returned (0 if none).
    unsafe fn unmap_dma(&self, iova: Iova, len: u64) -> Result<u64, VfioError> {
        let g = self.granule;
        let s = iova.raw();
        if len == 0 || s % g != 0 || len % g != 0 {
            return Err(dma_err("unmap", iova, len, libc::EINVAL));
        }
        let Some(e) = s.checked_add(len - 1).map(|l| l as u128 + 1) else {
            return Err(dma_err("unmap", iova, len, libc::EINVAL));
        };
        let mut maps = self.maps_mut();
        let bisects = |m: &Mapping| {
            let (ms, me) = (m.iova.raw() as u128, m.end() as u128);
            ms < e && (s as u128) < me && (ms < s as u128 || me > e)
        };
        // Only the mappings holding the first and the last byte can
        // straddle an edge.
        let first = maps.range(..=s).next_back().map(|(_, m)| *m);
        let last = maps.range(..=(e - 1) as u64).next_back().map(|(_, m)| *m);
        if first.iter().chain(last.iter()).any(bisects) {
            return Err(dma_err("unmap", iova, len, libc::EINVAL));
        }
        let inside: Vec<u64> = maps.range(s..=(e - 1) as u64).map(|(k, _)| *k).collect();
        let mut bytes = 0;
        for k in inside {
            if let Some(m) = maps.remove(&k) {
                bytes += m.len;
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page-aligned host memory for tests.
    struct Pages(Vec<u64>);

    impl Pages {
        fn new(pages: usize) -> Self {
            // 4 KiB alignment: over-allocate and use the aligned part.
            Pages(vec![0u64; (pages + 1) * 512])
        }
        fn addr(&self) -> HostAddr {
            HostAddr::new((self.0.as_ptr() as usize).next_multiple_of(4096))
        }
    }

    fn errno(e: VfioError) -> i32 {
        match e {
            VfioError::Dma { source, .. } | VfioError::DmaLimit { source, .. } => {
                source.raw_os_error().unwrap_or(0)
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn map_checks_follow_type1v2() {
        let m = SimIommu::new(IommuConfig {
            dma_entry_limit: 3,
            ..Default::default()
        });
        let p = Pages::new(8);
        let h = p.addr();
        let rw = Access::ReadWrite;
        let at = |x: u64| Iova::new(x);
        // SAFETY: `p`'s pages stay allocated while mapped, and are used
        // for nothing else; there is no device access. The IOVAs are this
        // test's.
        unsafe {
            assert_eq!(m.iommu_info().min_page_size(), 4096);
            assert_eq!(
                errno(m.map_dma(at(0x1000), h, 0, rw).unwrap_err()),
                libc::EINVAL
            );
            assert_eq!(
                errno(m.map_dma(at(0x1800), h, 4096, rw).unwrap_err()),
                libc::EINVAL
            );
            assert_eq!(
                errno(
                    m.map_dma(at(0x1000), HostAddr::new(h.raw() + 8), 4096, rw)
                        .unwrap_err()
                ),
                libc::EINVAL
            );
            // The MSI window and beyond 39 bits are not valid IOVAs.
            assert_eq!(
                errno(m.map_dma(at(0xfee0_0000), h, 4096, rw).unwrap_err()),
                libc::EINVAL
            );
            assert_eq!(
                errno(m.map_dma(at(0xfedf_f000), h, 8192, rw).unwrap_err()),
                libc::EINVAL
            );
            assert_eq!(
                errno(m.map_dma(at(1 << 39), h, 4096, rw).unwrap_err()),
                libc::EINVAL
            );
            m.map_dma(at(0x10000), h, 0x4000, rw).unwrap();
            assert_eq!(
                errno(m.map_dma(at(0xf000), h, 0x2000, rw).unwrap_err()),
                libc::EEXIST
            );
            assert_eq!(
                errno(m.map_dma(at(0x13000), h, 0x1000, rw).unwrap_err()),
                libc::EEXIST
            );
            m.map_dma(at(0x14000), h, 0x1000, rw).unwrap();
            m.map_dma(at(0xf000), h, 0x1000, rw).unwrap();
            assert_eq!(
                errno(m.map_dma(at(0x20000), h, 0x1000, rw).unwrap_err()),
                libc::ENOSPC
            );
            // Unmap must not bisect a mapping; it returns the bytes unmapped.
            assert_eq!(
                errno(m.unmap_dma(at(0x11000), 0x1000).unwrap_err()),
                libc::EINVAL
            );
            assert_eq!(
                errno(m.unmap_dma(at(0x10000), 0x2000).unwrap_err()),
                libc::EINVAL
            );
            assert_eq!(m.unmap_dma(at(0x30000), 0x1000).unwrap(), 0);
            assert_eq!(m.unmap_dma(at(0x10000), 0x5000).unwrap(), 0x5000);
            assert_eq!(m.mappings().len(), 1);
            assert_eq!(m.unmap_dma(at(0), 1 << 39).unwrap(), 0x1000);
        }
    }

    #[test]
    fn device_access_goes_through_live_mappings_only() {
        let m = SimIommu::default();
        let p = Pages::new(4);
        let h = p.addr();
        let h2 = HostAddr::new(h.raw() + 0x1000);
        // SAFETY: `p`'s pages outlive every device access of this test and
        // serve nothing else; the IOVAs are this test's.
        unsafe {
            m.map_dma(Iova::new(0x10000), h, 0x1000, Access::ReadWrite)
                .unwrap();
            m.map_dma(Iova::new(0x11000), h2, 0x1000, Access::ReadOnly)
                .unwrap();
        }
        // Across both mappings.
        let data: Vec<u8> = (0..0x100u32).map(|x| x as u8).collect();
        assert!(m.write(Iova::new(0x10f80), &data[..0x80]));
        let mut back = vec![0u8; 0x100];
        assert!(m.read(Iova::new(0x10f80), &mut back[..0x80]));
        assert_eq!(back[..0x80], data[..0x80]);
        // A write touching the read-only mapping writes nothing.
        let before = m.fault_count();
        assert!(!m.write(Iova::new(0x10f80), &[0xaa; 0x100]));
        assert_eq!(m.fault_count(), before + 1);
        assert!(m.read(Iova::new(0x10f80), &mut back));
        assert_eq!(back[..0x80], data[..0x80]);
        // Unmapped IOVAs fail.
        assert!(!m.read(Iova::new(0x12000), &mut back[..1]));
        assert!(!m.read(Iova::new(u64::MAX - 2), &mut back[..8]));
        // SAFETY: this test's own mapping.
        unsafe { m.unmap_dma(Iova::new(0x10000), 0x1000) }.unwrap();
        assert!(!m.read(Iova::new(0x10f80), &mut back[..1]));
        assert!(
            !m.store_u64(Iova::new(0x11000), 1, Ordering::Release),
            "read-only"
        );
    }
}
