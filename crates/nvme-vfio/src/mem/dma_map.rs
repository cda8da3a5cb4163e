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
pub trait DmaMap {
    /// What the IOMMU allows.
    fn iommu_info(&self) -> &IommuInfo;

    /// Maps `len` bytes of host memory at `host` to `iova`. All three are
    /// multiples of the IOMMU page size. The kernel pins the pages.
    fn map_dma(
        &self,
        iova: Iova,
        host: HostAddr,
        len: u64,
        access: Access,
    ) -> Result<(), VfioError>;

    /// Unmaps `[iova, iova + len)`, which must cover whole earlier mappings.
    /// Returns the number of bytes unmapped.
    fn unmap_dma(&self, iova: Iova, len: u64) -> Result<u64, VfioError>;
}
