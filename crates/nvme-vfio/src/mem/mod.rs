//! DMA memory: hugepage slabs mapped once into the IOMMU, buffers on them,
//! registered user memory, and the VFIO implementation of blk-dma's
//! [`Mapper`](blk_dma::Mapper).

mod buf;
mod dma_map;
mod mapper;
mod range;
mod slab;
mod space;

pub use buf::DmaBuf;
pub use dma_map::{Access, DmaMap, IommuInfo};
pub use mapper::VfioMapper;
pub use range::RangeAllocator;
pub use slab::{Slab, HUGEPAGE};
pub use space::{DmaSpace, Registration, SpaceConfig};

#[cfg(test)]
mod tests;
