//! The crate's error type.

use blk_dma::MapError;

use crate::nvme::DptrError;
use crate::vfio::VfioError;

/// Errors of the driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building a command's data pointer failed.
    #[error(transparent)]
    Dptr(#[from] DptrError),
    /// Mapping memory for the device failed.
    #[error(transparent)]
    Map(#[from] MapError),
    /// A VFIO operation failed.
    #[error(transparent)]
    Vfio(#[from] VfioError),
    /// No DMA memory could be allocated for a buffer.
    #[error("cannot allocate {len:#x} bytes of DMA memory")]
    OutOfDmaMemory {
        /// Bytes asked for.
        len: u64,
        /// Why, when the system said.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The IOMMU's valid IOVA ranges have no room left.
    #[error("no IOVA space left for {len:#x} bytes")]
    IovaExhausted {
        /// Bytes asked for.
        len: u64,
    },
    /// A buffer of zero bytes, or a registration of zero bytes, was asked for.
    #[error("zero-length DMA memory request")]
    ZeroLength,
}
