//! Errors of the VFIO layer.

/// Why a VFIO operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VfioError {
    /// A DMA mapping ioctl failed.
    #[error("VFIO DMA {op} of {len:#x} bytes at IOVA {iova:#x} failed")]
    Dma {
        /// `map` or `unmap`.
        op: &'static str,
        /// IOVA of the mapping.
        iova: u64,
        /// Length of the mapping.
        len: u64,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
}
