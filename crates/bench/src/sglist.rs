//! A scatterlist-style baseline: the mapping design that blk-dma replaces.
//!
//! Like `blk_rq_map_sg` + `dma_map_sg` + a PRP/SGL setup loop over the mapped
//! list: first every segment becomes a table entry (page, offset, length,
//! merging host-contiguous ones), then a second pass maps the table (one DMA
//! address per entry for registered memory; behind an IOMMU, one IOVA
//! allocation with every entry linked into it, as `iommu_dma_map_sg` does),
//! and a third pass feeds the mapped entries to the PRP/SGL builder. The
//! table is preallocated, the baseline's best case (the kernel allocated it
//! from a mempool per request). Regions are looked up by scanning the
//! backend's table ([`FakeMapper::lookup_uncached`]), as `dma_map_sg` keeps
//! no memory of the previous request.

use blk_dma::fake::FakeMapper;
use blk_dma::{Direction, DmaRange, HostAddr, HostSeg, Iova, MapError, Mapper, Region};

/// One table entry, laid out like the kernel's 64-bit `struct scatterlist`.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct SgEntry {
    /// Page address (host).
    pub page: u64,
    /// Offset into the page.
    pub offset: u32,
    /// Length of the entry.
    pub length: u32,
    /// Device address after mapping.
    pub dma_address: u64,
    /// Device length after mapping.
    pub dma_length: u32,
    _pad: u32,
}

const _: () = assert!(size_of::<SgEntry>() == 32);

/// A scatterlist table with its mapping.
#[derive(Debug)]
pub struct SgTable {
    ents: Vec<SgEntry>,
    /// Entries with a DMA mapping (fewer than `ents` when the IOMMU merged).
    mapped: usize,
    /// IOVA allocation to free on unmap: (base, span, linked start, len).
    iova: Option<(Iova, u64, Iova, u64)>,
}

impl SgTable {
    /// A table with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            ents: Vec::with_capacity(n),
            mapped: 0,
            iova: None,
        }
    }

    /// Builds the table from `segs` and maps it.
    #[inline]
    pub fn map(&mut self, segs: &[HostSeg], mapper: &FakeMapper) -> Result<(), MapError> {
        // Pass 1: blk_rq_map_sg.
        self.ents.clear();
        for s in segs {
            let a = s.addr.raw_u64();
            if let Some(last) = self.ents.last_mut() {
                if last.page + u64::from(last.offset) + u64::from(last.length) == a {
                    last.length += s.len as u32;
                    continue;
                }
            }
            self.ents.push(SgEntry {
                page: a & !4095,
                offset: (a & 4095) as u32,
                length: s.len as u32,
                ..SgEntry::default()
            });
        }
        // Pass 2: dma_map_sg.
        let first = HostAddr::new(segs[0].addr.raw());
        let mut region: Option<Region> = mapper.lookup_uncached(first);
        if region.is_some_and(|r| r.contains(first)) {
            for e in &mut self.ents {
                let host = HostAddr::new((e.page + u64::from(e.offset)) as usize);
                let r = match region {
                    Some(r) if r.contains(host) => r,
                    _ => {
                        region = mapper.lookup_uncached(host);
                        region.expect("registered")
                    }
                };
                e.dma_address = r.translate(host, u64::from(e.length)).addr.raw();
                e.dma_length = e.length;
            }
            self.mapped = self.ents.len();
        } else {
            let g = mapper.iommu_granule().expect("IOMMU");
            let total: u64 = self.ents.iter().map(|e| u64::from(e.length)).sum();
            let off = u64::from(self.ents[0].offset) & (g - 1);
            let span = (off + total).next_multiple_of(g);
            let base = mapper.alloc_iova(span)?;
            let start = base.wrapping_add(off);
            let mut at = 0;
            for e in &self.ents {
                let seg = HostSeg::new(
                    HostAddr::new((e.page + u64::from(e.offset)) as usize),
                    u64::from(e.length),
                );
                mapper.link(start.wrapping_add(at), seg, Direction::FromDevice)?;
                at += u64::from(e.length);
            }
            mapper.sync(start, total)?;
            self.ents[0].dma_address = start.raw();
            self.ents[0].dma_length = total as u32;
            self.mapped = 1;
            self.iova = Some((base, span, start, total));
        }
        Ok(())
    }

    /// The mapped entries as device ranges (pass 3's input).
    pub fn dma_ranges(&self) -> impl Iterator<Item = Result<DmaRange, MapError>> + '_ {
        self.ents[..self.mapped].iter().map(|e| {
            Ok(DmaRange::new(
                Iova::new(e.dma_address),
                u64::from(e.dma_length),
            ))
        })
    }

    /// The single IOVA range, when the IOMMU path mapped the table as one.
    pub fn coalesced(&self) -> Option<DmaRange> {
        self.iova
            .map(|(_, _, start, len)| DmaRange::new(start, len))
    }

    /// Bytes of state the mapped table occupies.
    pub fn state_bytes(&self) -> usize {
        self.ents.len() * size_of::<SgEntry>()
    }

    /// Unmaps the table.
    pub fn unmap<M: Mapper>(&mut self, mapper: &M) {
        if let Some((base, span, start, len)) = self.iova.take() {
            mapper.unlink(start, len, Direction::FromDevice);
            mapper.free_iova(base, span);
        }
        self.mapped = 0;
    }
}
