//! The IOMMU operations DMA memory needs: implemented by the VFIO container
//! (VFIO_IOMMU_MAP_DMA / UNMAP_DMA) and by test doubles.

use core::ops::RangeInclusive;

use blk_dma::{HostAddr, Iova};

use crate::vfio::VfioError;

/// Device access granted by a DMA mapping.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Access {
    /// The device may only read (host-to-device transfers).
    ReadOnly,
    /// The device may read and write.
    ReadWrite,
}

/// What the IOMMU allows: the analog of VFIO_IOMMU_GET_INFO's answer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct IommuInfo {
    /// Page sizes the IOMMU supports (bit n set: 2^n bytes).
    pub page_sizes: u64,
    /// IOVA ranges the device may use, inclusive, sorted, non-overlapping.
    pub iova_ranges: Vec<RangeInclusive<u64>>,
    /// How many more DMA mappings may be created, when the kernel says.
    pub dma_mappings_available: Option<u32>,
}

impl IommuInfo {
    /// The smallest page size (the IOMMU granule), or 4 KiB if none is set.
    pub fn min_page_size(&self) -> u64 {
        if self.page_sizes == 0 {
            4096
        } else {
            1 << self.page_sizes.trailing_zeros()
        }
    }
}

/// Programs an IOMMU for one device (or group of devices).
///
/// A mapping lets the device write host memory with no further check, so
/// both sides of this trait carry a contract: implementations promise how
/// the device reaches memory ([`DmaSpace`](super::DmaSpace) hands out
/// buffers relying on it), and callers of [`map_dma`](Self::map_dma) and
/// [`unmap_dma`](Self::unmap_dma) promise which memory and which device
/// addresses are theirs to map.
///
/// # Safety
///
/// An implementation promises:
///
/// - the device reaches host memory only through mappings made with
///   [`map_dma`](Self::map_dma): at most the `len` bytes at `host` of each,
///   with at most the [`Access`] given, and only while the mapping exists;
///   a `map_dma` that fails maps nothing;
/// - once [`unmap_dma`](Self::unmap_dma) of a range that covers whole
///   earlier mappings returns, those mappings are gone: the device no
///   longer reaches their host memory (no access in progress either);
/// - neither method, nor [`iommu_info`](Self::iommu_info), reads or writes
///   the host memory itself.
pub unsafe trait DmaMap {
    /// What the IOMMU allows.
    fn iommu_info(&self) -> &IommuInfo;

    /// Maps `len` bytes of host memory at `host` to `iova`. All three are
    /// multiples of the IOMMU page size. The kernel pins the pages.
    ///
    /// # Safety
    ///
    /// - `[host, host + len)` is memory of this process that stays
    ///   allocated, and is not handed to anything but the caller's own DMA
    ///   use, until the mapping is unmapped: the device may read it, and
    ///   write it with [`Access::ReadWrite`], whenever it is given an
    ///   address in the range meanwhile.
    /// - `[iova, iova + len)` is the caller's: not a range that a
    ///   [`DmaSpace`](super::DmaSpace) (or anyone else) allocated and may map
    ///   itself.
    unsafe fn map_dma(
        &self,
        iova: Iova,
        host: HostAddr,
        len: u64,
        access: Access,
    ) -> Result<(), VfioError>;

    /// Unmaps `[iova, iova + len)`, which must cover whole earlier mappings.
    /// Returns the number of bytes unmapped.
    ///
    /// # Safety
    ///
    /// Every mapping in `[iova, iova + len)` is the caller's, made with its
    /// own [`map_dma`](Self::map_dma) calls: not a slab or registration of a
    /// [`DmaSpace`](super::DmaSpace), nor the mapping of a request in
    /// flight. (Once unmapped, the range is free for the next `map_dma`; a
    /// DMA space whose range was taken away would have its buffers' device
    /// addresses lead to whatever is mapped there next.)
    unsafe fn unmap_dma(&self, iova: Iova, len: u64) -> Result<u64, VfioError>;
}
