//! Scatterlist-less DMA mapping of block I/O requests.
//!
//! A request's host buffer segments become either **one coalesced IOVA
//! range** (an IOMMU is present and the interior segment boundaries are
//! granule aligned) or **a stream of per-segment device ranges** (registered
//! memory, device memory, or host memory mapped segment by segment), with no
//! scatterlist in between. This follows the Linux block layer's
//! `blk_rq_dma_map_iter_start` / `blk_rq_dma_map_iter_next` /
//! `blk_rq_dma_unmap` (block/blk-mq-dma.c).
//!
//! Per-request state is small: one `(iova, len)` pair when coalesced, nothing
//! for registered or device memory, and one range per segment only when
//! segments had to be mapped one by one.
//!
//! ```
//! use blk_dma::fake::FakeMapper;
//! use blk_dma::{Direction, DmaIter, DmaState, HostAddr, HostSeg};
//!
//! // An IOMMU with 4 KiB granules; nothing registered.
//! let mapper = FakeMapper::with_iommu(4096);
//! // Two 4 KiB-aligned pieces of host memory, anywhere in the address space.
//! let segs = [
//!     HostSeg::new(HostAddr::new(0x7f00_0000_0800), 0x800),
//!     HostSeg::new(HostAddr::new(0x7f00_1234_0000), 0x2000),
//! ];
//! let mut state = DmaState::new();
//! let ranges: Vec<_> = DmaIter::start(&segs, Direction::ToDevice, &mapper, &mut state)?
//!     .collect::<Result<_, _>>()?;
//! // One IOVA range for the whole request, starting at the same page offset.
//! assert_eq!(ranges.len(), 1);
//! assert_eq!(ranges[0].len, 0x2800);
//! assert_eq!(ranges[0].addr.offset_in(4096), 0x800);
//! // ... the device does its transfer ...
//! state.unmap(&mapper);
//! assert_eq!(mapper.live_links(), 0);
//! # Ok::<(), blk_dma::MapError>(())
//! ```

mod addr;
mod error;
mod iter;
mod mapper;

#[cfg(feature = "fake")]
pub mod fake;

pub use addr::{Direction, DmaRange, HostAddr, HostSeg, Iova};
pub use error::{Errno, MapError, Memory};
pub use iter::{DmaIter, DmaState, RangeSink};
pub use mapper::{Mapper, Region, RegionKind};
