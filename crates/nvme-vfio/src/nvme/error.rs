//! Errors of building a command's data pointer (pure: no hardware).

use blk_dma::{Iova, MapError};

/// Why a data pointer (PRPs or SGL) could not be built for a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DptrError {
    /// Mapping the request's memory for the device failed.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The transfer has no data.
    #[error("empty data transfer")]
    EmptyTransfer,
    /// The first range does not start on a dword boundary, as PRP1 must.
    #[error("data starts at {addr}, not dword aligned as PRP1 requires")]
    PrpMisaligned {
        /// Device address of the first byte.
        addr: Iova,
    },
    /// A range boundary inside the transfer is not on a controller page
    /// boundary, which PRPs cannot describe (use an SGL).
    #[error("range {index} at {addr} leaves a gap that PRPs cannot describe")]
    PrpGap {
        /// Position of the range that starts after the gap.
        index: usize,
        /// Its device address.
        addr: Iova,
    },
    /// A range is longer than an SGL data block can describe.
    #[error("range of {len:#x} bytes exceeds an SGL data block's 32-bit length")]
    SglRangeTooLong {
        /// Length of the range.
        len: u64,
    },
    /// The descriptor pool has no page left.
    #[error("descriptor pool exhausted")]
    DescPoolEmpty,
    /// The transfer needs more descriptor pages than one command may hold.
    #[error("transfer needs more than {max} descriptor pages")]
    TooManyDescPages {
        /// Pages one command may hold.
        max: usize,
    },
    /// The descriptor pool's pages are smaller than the controller page size.
    #[error(
        "descriptor pages of {pool} bytes are smaller than the controller page ({page} bytes)"
    )]
    DescPageTooSmall {
        /// The pool's page size.
        pool: usize,
        /// The controller page size.
        page: usize,
    },
}
