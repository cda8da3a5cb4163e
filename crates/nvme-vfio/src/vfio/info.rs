//! Answers of the VFIO `GET_INFO`-style ioctls that carry a capability chain
//! (VFIO_IOMMU_GET_INFO, VFIO_DEVICE_GET_REGION_INFO), and their parsing.
//!
//! The protocol (include/uapi/linux/vfio.h): the caller passes a buffer
//! whose first `u32` is `argsz`, its size. If the capabilities do not fit,
//! the kernel sets `VFIO_*_INFO_FLAG_CAPS`, raises `argsz` to the size
//! needed and leaves `cap_offset` 0; the caller asks again with a buffer that
//! large. Capabilities are chained by `vfio_info_cap_header.next`, an offset
//! from the start of the buffer, 0 ending the chain. Capabilities are only
//! 4-byte aligned on older kernels (6.1 puts the IOVA-range capability,
//! with its `u64` ranges, after a 12-byte DMA-avail one), so `u64` fields
//! are read at any 4-aligned offset.

use std::io;
use std::mem::{offset_of, size_of};
use std::ops::RangeInclusive;

use vfio_bindings::bindings::vfio as b;

use crate::mem::IommuInfo;

/// An ioctl argument buffer, 8-byte aligned, whose first `u32` is `argsz`.
pub(crate) struct InfoBuf {
    words: Vec<u64>,
    len: usize,
}

impl InfoBuf {
    /// A zeroed buffer of `len` bytes with `argsz = len`.
    pub(crate) fn new(len: usize) -> Self {
        let mut buf = InfoBuf {
            words: vec![0; len.div_ceil(8)],
            len,
        };
        // `len` comes from struct sizes or a kernel `argsz`, both u32.
        buf.set_u32(0, u32::try_from(len).unwrap_or(u32::MAX));
        buf
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The buffer for the kernel to read and write `len()` bytes of.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }

    /// `argsz`: the size the kernel asks for after the call.
    pub(crate) fn argsz(&self) -> u32 {
        self.u32_at(0).unwrap_or(0)
    }

    /// The `N` bytes at byte `off`, `None` if `off` is not 4-aligned or the
    /// bytes are out of bounds.
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off % 4 != 0 || off.checked_add(N)? > self.len {
            return None;
        }
        let mut out = [0; N];
        for (j, byte) in out.iter_mut().enumerate() {
            let i = off + j;
            *byte = self.words.get(i / 8)?.to_ne_bytes()[i % 8];
        }
        Some(out)
    }

    /// Stores `N` bytes at byte `off` (4-aligned, in bounds; else ignored).
    fn set_bytes<const N: usize>(&mut self, off: usize, v: [u8; N]) {
        if off % 4 != 0 || off.checked_add(N).is_none_or(|end| end > self.len) {
            return;
        }
        for (j, byte) in v.into_iter().enumerate() {
            let i = off + j;
            if let Some(w) = self.words.get_mut(i / 8) {
                let mut bytes = w.to_ne_bytes();
                bytes[i % 8] = byte;
                *w = u64::from_ne_bytes(bytes);
            }
        }
    }

    /// The `u32` at byte `off`, `None` if misaligned or out of bounds.
    pub(crate) fn u32_at(&self, off: usize) -> Option<u32> {
        self.bytes(off).map(u32::from_ne_bytes)
    }

    /// The `u64` at byte `off` (only 4-aligned: in a capability chain it
    /// may be), `None` if misaligned or out of bounds.
    pub(crate) fn u64_at(&self, off: usize) -> Option<u64> {
        self.bytes(off).map(u64::from_ne_bytes)
    }

    /// Stores a `u32` at byte `off` (4-aligned, in bounds; else ignored).
    pub(crate) fn set_u32(&mut self, off: usize, v: u32) {
        self.set_bytes(off, v.to_ne_bytes());
    }

    /// Stores a `u64` at byte `off` (4-aligned, in bounds; else ignored).
    #[cfg(test)]
    pub(crate) fn set_u64(&mut self, off: usize, v: u64) {
        self.set_bytes(off, v.to_ne_bytes());
    }
}

/// Largest answer we accept: a capability chain is a few hundred bytes.
const MAX_INFO: usize = 1 << 20;

/// Runs `ioctl` on a buffer of `min` bytes prepared by `init`, and again
/// with a larger one while the kernel asks for more room (`argsz`).
pub(crate) fn query(
    min: usize,
    init: impl Fn(&mut InfoBuf),
    mut ioctl: impl FnMut(&mut InfoBuf) -> io::Result<()>,
) -> io::Result<InfoBuf> {
    let mut len = min;
    // The chain can change between calls only if the kernel's state does;
    // three rounds are plenty.
    for _ in 0..3 {
        let mut buf = InfoBuf::new(len);
        init(&mut buf);
        ioctl(&mut buf)?;
        let want = buf.argsz() as usize;
        if want <= len {
            return Ok(buf);
        }
        if want > MAX_INFO {
            break;
        }
        len = want;
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "VFIO info argsz keeps growing",
    ))
}

/// One capability: its id and byte offset in the buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Cap {
    pub(crate) id: u16,
    pub(crate) offset: usize,
}

const CAP_HEADER: usize = size_of::<b::vfio_info_cap_header>();
const CAP_NEXT: usize = offset_of!(b::vfio_info_cap_header, next);

/// The capability chain starting at `first` (0: none). Each `next` must lie
/// past the current header, so a malformed chain cannot loop.
pub(crate) fn caps(buf: &InfoBuf, first: u32) -> Result<Vec<Cap>, &'static str> {
    let mut out = Vec::new();
    let mut off = first as usize;
    let mut min = 0;
    while off != 0 {
        if off < min || off % 4 != 0 || off + CAP_HEADER > buf.len() {
            return Err("capability chain points outside the buffer or backwards");
        }
        let id_ver = buf.u32_at(off).ok_or("truncated capability header")?;
        // `id` is the first u16 of the header, `version` the second.
        let id = u16::from_ne_bytes([id_ver.to_ne_bytes()[0], id_ver.to_ne_bytes()[1]]);
        out.push(Cap { id, offset: off });
        min = off + CAP_HEADER;
        off = buf
            .u32_at(off + CAP_NEXT)
            .ok_or("truncated capability header")? as usize;
    }
    Ok(out)
}

/// Reads `count` (start, second) `u64` pairs at `off`, 16 bytes apart.
fn pairs(buf: &InfoBuf, off: usize, count: u32) -> Result<Vec<(u64, u64)>, &'static str> {
    (0..count as usize)
        .map(|i| {
            let at = off + 16 * i;
            buf.u64_at(at)
                .zip(buf.u64_at(at + 8))
                .ok_or("capability array truncated")
        })
        .collect()
}

/// Parses a VFIO_IOMMU_GET_INFO answer (`vfio_iommu_type1_info` + caps).
///
/// Without the IOVA-range capability (kernels before 5.4) every 64-bit
/// IOVA is reported valid.
pub(crate) fn parse_iommu_info(buf: &InfoBuf) -> Result<IommuInfo, &'static str> {
    let flags = buf
        .u32_at(offset_of!(b::vfio_iommu_type1_info, flags))
        .ok_or("truncated")?;
    let page_sizes = if flags & b::VFIO_IOMMU_INFO_PGSIZES != 0 {
        buf.u64_at(offset_of!(b::vfio_iommu_type1_info, iova_pgsizes))
            .ok_or("truncated")?
    } else {
        0
    };
    let first = if flags & b::VFIO_IOMMU_INFO_CAPS != 0 {
        buf.u32_at(offset_of!(b::vfio_iommu_type1_info, cap_offset))
            .ok_or("truncated")?
    } else {
        0
    };
    let mut info = IommuInfo {
        page_sizes,
        iova_ranges: vec![0..=u64::MAX],
        dma_mappings_available: None,
    };
    for cap in caps(buf, first)? {
        match u32::from(cap.id) {
            b::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE => {
                let nr = buf
                    .u32_at(
                        cap.offset + offset_of!(b::vfio_iommu_type1_info_cap_iova_range, nr_iovas),
                    )
                    .ok_or("IOVA range capability truncated")?;
                let at =
                    cap.offset + offset_of!(b::vfio_iommu_type1_info_cap_iova_range, iova_ranges);
                let mut ranges: Vec<RangeInclusive<u64>> = pairs(buf, at, nr)?
                    .into_iter()
                    .map(|(s, e)| s..=e)
                    .collect();
                if ranges.iter().any(|r| r.start() > r.end()) {
                    return Err("IOVA range with start after end");
                }
                ranges.sort_by_key(|r| *r.start());
                info.iova_ranges = ranges;
            }
            b::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL => {
                let avail = buf
                    .u32_at(cap.offset + offset_of!(b::vfio_iommu_type1_info_dma_avail, avail))
                    .ok_or("DMA avail capability truncated")?;
                info.dma_mappings_available = Some(avail);
            }
            _ => {}
        }
    }
    Ok(info)
}

/// What VFIO_DEVICE_GET_REGION_INFO says about one region of a device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RegionInfo {
    /// The region index (BAR n is index n; config space is 7).
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes (0: the region does not exist).
    pub size: u64,
    /// Offset of the region in the device file (for pread/pwrite/mmap).
    pub offset: u64,
    /// The areas that may be mmapped, as (offset in region, size), when the
    /// kernel restricts them (sparse-mmap capability); `None`: all of it.
    pub sparse: Option<Vec<(u64, u64)>>,
}

impl RegionInfo {
    /// Whether the region may be mmapped at all.
    pub fn mappable(&self) -> bool {
        self.flags & b::VFIO_REGION_INFO_FLAG_MMAP != 0
    }

    /// The areas to mmap: the sparse areas, or the whole region.
    pub fn mmap_areas(&self) -> Vec<(u64, u64)> {
        match &self.sparse {
            Some(areas) => areas.clone(),
            None => vec![(0, self.size)],
        }
    }
}

/// Parses a VFIO_DEVICE_GET_REGION_INFO answer (`vfio_region_info` + caps).
pub(crate) fn parse_region_info(buf: &InfoBuf) -> Result<RegionInfo, &'static str> {
    let get32 = |off| buf.u32_at(off).ok_or("truncated");
    let get64 = |off| buf.u64_at(off).ok_or("truncated");
    let flags = get32(offset_of!(b::vfio_region_info, flags))?;
    let mut info = RegionInfo {
        index: get32(offset_of!(b::vfio_region_info, index))?,
        flags,
        size: get64(offset_of!(b::vfio_region_info, size))?,
        offset: get64(offset_of!(b::vfio_region_info, offset))?,
        sparse: None,
    };
    let first = if flags & b::VFIO_REGION_INFO_FLAG_CAPS != 0 {
        get32(offset_of!(b::vfio_region_info, cap_offset))?
    } else {
        0
    };
    for cap in caps(buf, first)? {
        if u32::from(cap.id) == b::VFIO_REGION_INFO_CAP_SPARSE_MMAP {
            let nr = get32(cap.offset + offset_of!(b::vfio_region_info_cap_sparse_mmap, nr_areas))?;
            let at = cap.offset + offset_of!(b::vfio_region_info_cap_sparse_mmap, areas);
            info.sparse = Some(pairs(buf, at, nr)?);
        }
    }
    Ok(info)
}

/// Builders of kernel-style answers, shared by the unit tests and the fake
/// kernel.
#[cfg(test)]
pub(crate) mod build {
    use super::*;

    /// Writes a capability chain into `buf` at `start` (4-aligned): each
    /// `(id, body)` with the body's `u32` words after the 8-byte header,
    /// unpadded, as Linux 6.1 does. Returns the total size the chain needs,
    /// whether or not it fit.
    pub(crate) fn chain(buf: &mut InfoBuf, start: usize, caps: &[(u16, Vec<u32>)]) -> usize {
        let mut off = start;
        for (i, (id, body)) in caps.iter().enumerate() {
            let size = CAP_HEADER + 4 * body.len();
            let next = if i + 1 == caps.len() { 0 } else { off + size };
            if off + size <= buf.len() {
                buf.set_u32(off, u32::from(*id) | 1 << 16);
                buf.set_u32(off + CAP_NEXT, next as u32);
                for (j, w) in body.iter().enumerate() {
                    buf.set_u32(off + CAP_HEADER + 4 * j, *w);
                }
            }
            off += size;
        }
        off - start
    }

    /// Appends `v` as two `u32` words in memory order.
    fn push_u64(body: &mut Vec<u32>, v: u64) {
        let b = v.to_ne_bytes();
        body.push(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        body.push(u32::from_ne_bytes([b[4], b[5], b[6], b[7]]));
    }

    /// An array capability body: count, reserved, then `(u64, u64)` pairs.
    fn pair_body(pairs: &[(u64, u64)]) -> Vec<u32> {
        let mut body = vec![pairs.len() as u32, 0];
        for &(x, y) in pairs {
            push_u64(&mut body, x);
            push_u64(&mut body, y);
        }
        body
    }

    /// An IOVA-range capability.
    pub(crate) fn iova_range_cap(ranges: &[(u64, u64)]) -> (u16, Vec<u32>) {
        (
            b::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE as u16,
            pair_body(ranges),
        )
    }

    /// A DMA-avail capability (12 bytes: it misaligns what follows).
    pub(crate) fn dma_avail_cap(avail: u32) -> (u16, Vec<u32>) {
        (b::VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL as u16, vec![avail])
    }

    /// A sparse-mmap capability.
    pub(crate) fn sparse_cap(areas: &[(u64, u64)]) -> (u16, Vec<u32>) {
        (b::VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16, pair_body(areas))
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    const INFO: usize = size_of::<b::vfio_iommu_type1_info>();

    /// Answers like vfio_iommu_type1_get_info.
    fn kernel_iommu_info(buf: &mut InfoBuf) -> io::Result<()> {
        let caps = [
            iova_range_cap(&[(0, 0xfedf_ffff), (0xfef0_0000, 0x7f_ffff_ffff)]),
            dma_avail_cap(65535),
        ];
        let flags = b::VFIO_IOMMU_INFO_PGSIZES | b::VFIO_IOMMU_INFO_CAPS;
        let need = INFO + chain(buf, INFO, &caps);
        if buf.len() < need {
            buf.set_u32(0, need as u32);
            buf.set_u32(16, 0);
        } else {
            buf.set_u32(16, INFO as u32);
        }
        buf.set_u32(4, flags);
        buf.set_u64(8, 0x4020_1000);
        Ok(())
    }

    #[test]
    fn iommu_info_is_requeried_with_room_for_caps() {
        let mut calls = Vec::new();
        let buf = query(
            INFO,
            |_| {},
            |buf| {
                calls.push(buf.len());
                kernel_iommu_info(buf)
            },
        )
        .unwrap();
        assert_eq!(calls, vec![24, 24 + 12 + 48]);
        let info = parse_iommu_info(&buf).unwrap();
        assert_eq!(info.page_sizes, 0x4020_1000);
        assert_eq!(
            info.iova_ranges,
            vec![0..=0xfedf_ffff, 0xfef0_0000..=0x7f_ffff_ffff]
        );
        assert_eq!(info.dma_mappings_available, Some(65535));
    }

    #[test]
    fn iommu_info_without_caps_allows_everything() {
        let mut buf = InfoBuf::new(INFO);
        buf.set_u32(4, b::VFIO_IOMMU_INFO_PGSIZES);
        buf.set_u64(8, 0x1000);
        let info = parse_iommu_info(&buf).unwrap();
        assert_eq!(info.iova_ranges, vec![0..=u64::MAX]);
        assert_eq!(info.dma_mappings_available, None);
    }

    #[test]
    fn malformed_chains_are_errors() {
        let mut buf = InfoBuf::new(64);
        // A cap whose `next` points back at itself.
        buf.set_u32(24, 1);
        buf.set_u32(28, 24);
        assert!(caps(&buf, 24).is_err());
        // Misaligned and out-of-bounds starts.
        assert!(caps(&buf, 14).is_err());
        assert!(caps(&buf, 64).is_err());
        // An IOVA-range cap claiming more ranges than fit.
        buf.set_u32(4, b::VFIO_IOMMU_INFO_CAPS);
        buf.set_u32(16, 24);
        buf.set_u32(24, b::VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE);
        buf.set_u32(28, 0);
        buf.set_u32(32, 9);
        assert_eq!(parse_iommu_info(&buf), Err("capability array truncated"));
    }

    #[test]
    fn region_info_with_sparse_areas() {
        let size = size_of::<b::vfio_region_info>();
        let mut buf = InfoBuf::new(128);
        let used = chain(
            &mut buf,
            size,
            &[sparse_cap(&[(0, 0x2000), (0x3000, 0x1000)])],
        );
        assert_eq!(used, 8 + 8 + 32);
        assert_eq!(buf.u64_at(size + 16 + 16), Some(0x3000));
        buf.set_u32(
            4,
            b::VFIO_REGION_INFO_FLAG_MMAP | b::VFIO_REGION_INFO_FLAG_CAPS,
        );
        buf.set_u32(8, 0);
        buf.set_u32(12, size as u32);
        buf.set_u64(16, 0x4000);
        buf.set_u64(24, 0x1000_0000);
        let r = parse_region_info(&buf).unwrap();
        assert_eq!((r.index, r.size, r.offset), (0, 0x4000, 0x1000_0000));
        assert!(r.mappable());
        assert_eq!(r.mmap_areas(), vec![(0, 0x2000), (0x3000, 0x1000)]);
    }

    #[test]
    fn buffer_accessors_check_bounds_and_alignment() {
        let mut buf = InfoBuf::new(12);
        assert_eq!(buf.argsz(), 12);
        buf.set_u32(8, 7);
        assert_eq!(buf.u32_at(8), Some(7));
        assert_eq!(buf.u32_at(10), None);
        assert_eq!(buf.u32_at(12), None);
        assert_eq!(buf.u64_at(8), None);
        assert_eq!(buf.u64_at(2), None);
        let mut buf = InfoBuf::new(16);
        buf.set_u64(4, 0x1122_3344_5566_7788);
        assert_eq!(buf.u64_at(4), Some(0x1122_3344_5566_7788));
        let low_first = cfg!(target_endian = "little");
        assert_eq!(
            buf.u32_at(4),
            Some(if low_first { 0x5566_7788 } else { 0x1122_3344 })
        );
        assert_eq!(buf.u64_at(0).map(|w| w != 0), Some(true));
    }
}
