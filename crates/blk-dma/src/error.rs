//! Errors of the mapping path.

use core::fmt;

use crate::addr::{HostAddr, Iova};

/// An OS error number, kept as the source of a backend failure.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Errno({})", self.0)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = std::io::Error::from_raw_os_error(self.0);
        write!(f, "{e}")
    }
}

impl std::error::Error for Errno {}

/// Where a request's memory lives, as far as DMA is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Memory {
    /// Host memory (registered or not).
    Host,
    /// Device memory reached by bus address (a CMB, a peer BAR).
    Device,
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Memory::Host => "host",
            Memory::Device => "device",
        })
    }
}

/// Why a request could not be mapped. After any of these, nothing of the
/// request is left mapped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// The request has no segments.
    #[error("request has no segments")]
    EmptyRequest,
    /// A segment has length zero.
    #[error("segment {index} has zero length")]
    EmptySegment {
        /// Position of the segment in the request.
        index: usize,
    },
    /// A segment wraps around the address space, or the request's total
    /// length overflows.
    #[error("segment {index} overflows the address space")]
    Overflow {
        /// Position of the segment in the request.
        index: usize,
    },
    /// The request mixes device memory (CMB, peer BAR) with host memory.
    #[error("segment {index} is {found} memory but the request started in {expected} memory")]
    MixedMemory {
        /// Position of the offending segment.
        index: usize,
        /// The kind of memory of segment 0.
        expected: Memory,
        /// The kind of memory of segment `index`.
        found: Memory,
    },
    /// The [`DmaState`](crate::DmaState) passed in still holds a mapping.
    #[error("DMA state still holds a mapping; unmap it before reuse")]
    StateInUse,
    /// The backend has no IOVA space left for `len` bytes.
    #[error("no IOVA space left for {len:#x} bytes")]
    IovaExhausted {
        /// Bytes asked for.
        len: u64,
    },
    /// The backend has no DMA mapping entries left (VFIO's `dma_entry_limit`).
    #[error("DMA mapping limit reached ({limit} mappings)")]
    MappingLimit {
        /// The backend's limit.
        limit: u64,
    },
    /// Mapping host memory for the device failed.
    #[error("mapping {len:#x} bytes of host memory at {host:?} for the device failed")]
    MapFailed {
        /// Host address of the memory.
        host: HostAddr,
        /// Length in bytes.
        len: u64,
        /// The backend's error number.
        #[source]
        source: Errno,
    },
    /// Making new links visible to the device failed.
    #[error("IOTLB sync of {len:#x} bytes at {iova} failed")]
    SyncFailed {
        /// Start of the synced range.
        iova: Iova,
        /// Length in bytes.
        len: u64,
        /// The backend's error number.
        #[source]
        source: Errno,
    },
}
