//! Mapping one request: [`DmaIter`] (the kernel's `blk_rq_dma_map_iter_start`
//! / `_next`) and [`DmaState`] (its `dma_iova_state`, undone by
//! [`DmaState::unmap`], the kernel's `blk_rq_dma_unmap`).
//!
//! The path taken is decided once, in [`DmaIter::start`], from the first
//! segment and the backend:
//!
//! 1. The first segment lies in a registered or device [`Region`]: **direct**.
//!    Each segment is translated by region (no syscall, nothing to unmap);
//!    a segment outside every region is mapped on its own and recorded.
//! 2. The first segment is plain host memory, the backend has an IOMMU and
//!    every interior segment boundary is granule aligned (segment 0 may start
//!    anywhere, the last segment may end anywhere): **coalesced**. One IOVA
//!    range is allocated and every segment linked into it at consecutive
//!    offsets; the request becomes a single [`DmaRange`].
//! 3. Otherwise **direct**, every segment mapped on its own and recorded.

use crate::addr::{Direction, DmaRange, HostAddr, HostSeg, Iova};
use crate::error::{MapError, Memory};
use crate::mapper::{Mapper, Region, RegionKind};

/// What the unmap path must undo for one request: the analog of the kernel's
/// `struct dma_iova_state` plus the per-segment `[dma_addr, len]` list of the
/// direct path.
///
/// Keep one per in-flight command and reuse it: the segment list keeps its
/// capacity, so a request that maps segments one by one allocates only
/// while that capacity grows.
///
/// Dropping a state that still holds a mapping leaks the mapping (the backend
/// cannot be reached from here); call [`unmap`](Self::unmap) first.
#[derive(Debug)]
pub struct DmaState {
    mapping: Mapping,
    dir: Direction,
    segs: Vec<DmaRange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mapping {
    /// Nothing to undo (registered or device memory, or not mapped yet).
    None,
    /// One coalesced IOVA range, linked in IOVA space of its own, and the
    /// log2 of the IOMMU granule it was allocated with.
    Coalesced(DmaRange, u8),
    /// Segments mapped one by one, listed in `segs`.
    Segments,
}

impl Default for DmaState {
    fn default() -> Self {
        Self::new()
    }
}

impl DmaState {
    /// An empty state.
    pub const fn new() -> Self {
        Self {
            mapping: Mapping::None,
            dir: Direction::ToDevice,
            segs: Vec::new(),
        }
    }

    /// An empty state with room for `n` individually mapped segments.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            segs: Vec::with_capacity(n),
            ..Self::new()
        }
    }

    /// Whether anything is mapped that [`unmap`](Self::unmap) must undo.
    #[inline]
    pub fn is_mapped(&self) -> bool {
        self.mapping != Mapping::None
    }

    /// The request's single IOVA range, when it was coalesced.
    #[inline]
    pub fn coalesced(&self) -> Option<DmaRange> {
        match self.mapping {
            Mapping::Coalesced(r, _) => Some(r),
            _ => None,
        }
    }

    /// The ranges mapped one by one (empty unless the direct path had to map
    /// unregistered memory).
    pub fn mapped_segments(&self) -> &[DmaRange] {
        &self.segs
    }

    /// Undoes every mapping this state holds, leaving it empty and ready for
    /// the next request. Does nothing for registered or device memory.
    #[inline]
    pub fn unmap<M: Mapper + ?Sized>(&mut self, mapper: &M) {
        if self.mapping != Mapping::None {
            self.unmap_slow(mapper);
        }
    }

    #[inline(never)]
    fn unmap_slow<M: Mapper + ?Sized>(&mut self, mapper: &M) {
        match self.mapping {
            Mapping::None => {}
            Mapping::Coalesced(r, shift) => {
                mapper.unlink(r.addr, r.len, self.dir);
                let g = 1u64 << shift;
                let base = r.addr.align_down(g);
                mapper.free_iova(base, span(r.addr.offset_in(g), r.len, g));
            }
            Mapping::Segments => {
                for r in self.segs.drain(..) {
                    mapper.unmap_segment(r, self.dir);
                }
            }
        }
        self.mapping = Mapping::None;
    }

    #[inline]
    fn record(&mut self, r: DmaRange) {
        self.mapping = Mapping::Segments;
        self.segs.push(r);
    }
}

/// Bytes of IOVA space covering `len` bytes that start `off` bytes into a
/// granule `g`. Callers have bounded `off + len` (no overflow).
#[inline]
fn span(off: u64, len: u64, g: u64) -> u64 {
    (off + len).next_multiple_of(g)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// One range, held in `pending` until yielded: a coalesced request, or a
    /// single segment inside one region.
    One,
    /// Segments translated or mapped one by one.
    Direct,
    /// Exhausted, or failed (and rolled back).
    Done,
}

/// The last region looked up, reduced to what translation needs:
/// consecutive segments usually share one. `end == 0` when empty.
#[derive(Clone, Copy, Debug)]
struct RegionCache {
    host: u64,
    end: u64,
    addr: u64,
    memory: Memory,
}

impl RegionCache {
    const EMPTY: Self = Self {
        host: 0,
        end: 0,
        addr: 0,
        memory: Memory::Host,
    };

    #[inline]
    fn of(r: &Region) -> Self {
        Self {
            host: r.host.raw_u64(),
            end: r.host.raw_u64().wrapping_add(r.len),
            addr: r.addr.raw(),
            memory: memory_of(r.kind),
        }
    }

    #[inline]
    fn contains(&self, a: u64) -> bool {
        a >= self.host && a < self.end
    }

    /// The longest prefix of `len` bytes at `a` inside the region.
    #[inline]
    fn translate(&self, a: u64, len: u64) -> DmaRange {
        DmaRange::new(
            Iova::new(self.addr.wrapping_add(a - self.host)),
            len.min(self.end - a),
        )
    }
}

#[inline]
fn memory_of(kind: RegionKind) -> Memory {
    match kind {
        RegionKind::Registered => Memory::Host,
        RegionKind::Device => Memory::Device,
    }
}

/// The ranges of one request, produced as the consumer (a PRP or SGL builder)
/// asks for them.
///
/// Yields `Ok(range)` for each device range, in request order, adjacent
/// ranges merged up to the backend's maximum segment size. On `Err`, whatever
/// this iterator had mapped has been undone and the iterator is finished.
/// After a successful walk, the [`DmaState`] holds what must be unmapped when
/// the I/O completes. If the consumer stops early, it must still call
/// [`DmaState::unmap`].
#[derive(Debug)]
pub struct DmaIter<'a, M: Mapper + ?Sized> {
    mapper: &'a M,
    segs: &'a [HostSeg],
    state: &'a mut DmaState,
    /// Next segment to consume and the offset into it.
    idx: usize,
    off: u64,
    /// The range being merged (or the single range in `Mode::One`);
    /// `len == 0` when there is none.
    pending: DmaRange,
    region: RegionCache,
    max_seg: u64,
    mode: Mode,
    /// The memory kind of the request, fixed by its first segment.
    memory: Memory,
}

impl<'a, M: Mapper + ?Sized> DmaIter<'a, M> {
    /// Starts mapping a request of `segs` for a transfer in direction `dir`.
    ///
    /// On the coalesced path the whole request is linked here, so every
    /// error of that path is returned here, with nothing left mapped. On the
    /// direct path the work happens as ranges are pulled.
    ///
    /// `state` must be empty ([`MapError::StateInUse`] otherwise).
    #[inline]
    pub fn start(
        segs: &'a [HostSeg],
        dir: Direction,
        mapper: &'a M,
        state: &'a mut DmaState,
    ) -> Result<Self, MapError> {
        if state.is_mapped() {
            return Err(MapError::StateInUse);
        }
        let first = *segs.first().ok_or(MapError::EmptyRequest)?;
        state.dir = dir;
        let a = first.addr.raw_u64();
        let region = match mapper.lookup(first.addr) {
            Some(r) if r.contains(first.addr) => RegionCache::of(&r),
            _ => RegionCache::EMPTY,
        };
        let max_seg = mapper.max_segment_size().max(1);
        let mut it = DmaIter {
            mapper,
            segs,
            state,
            idx: 0,
            off: 0,
            pending: DmaRange::new(Iova::new(0), 0),
            region,
            max_seg,
            mode: Mode::Direct,
            memory: region.memory,
        };
        if region.end != 0 {
            // Fast path: one segment inside one region is one range.
            if segs.len() == 1 && first.len <= region.end - a && first.len <= max_seg {
                if first.len == 0 {
                    return Err(MapError::EmptySegment { index: 0 });
                }
                it.pending = region.translate(a, first.len);
                it.mode = Mode::One;
            }
        } else {
            it.try_coalesce(dir)?;
        }
        Ok(it)
    }

    /// The coalesced path, for a request starting in unregistered host
    /// memory: taken when the backend has an IOMMU and the segments qualify.
    #[inline(never)]
    fn try_coalesce(&mut self, dir: Direction) -> Result<(), MapError> {
        let Some(g) = self.mapper.iommu_granule() else {
            return Ok(());
        };
        if let Some(total) = coalescible(self.segs, g)? {
            if total <= self.max_seg {
                let range = link_all(self.segs, total, g, dir, self.mapper)?;
                self.state.mapping = Mapping::Coalesced(range, g.trailing_zeros() as u8);
                self.pending = range;
                self.mode = Mode::One;
            }
        }
        Ok(())
    }

    /// Whether the request was coalesced into one IOVA range (it then yields
    /// exactly one range).
    pub fn is_coalesced(&self) -> bool {
        self.state.coalesced().is_some()
    }

    /// The request's single IOVA range, when it was coalesced.
    pub fn coalesced(&self) -> Option<DmaRange> {
        self.state.coalesced()
    }

    /// The request's only range, when [`start`](Self::start) already knows
    /// there is exactly one: a coalesced request, or a single segment inside
    /// one registered or device region. Consumers can then skip iterating.
    #[inline]
    pub fn single(&self) -> Option<DmaRange> {
        match self.mode {
            Mode::One => Some(self.pending),
            _ => None,
        }
    }

    /// Undoes what this iterator mapped and finishes it.
    #[cold]
    fn fail(&mut self, e: MapError) -> Option<Result<DmaRange, MapError>> {
        self.state.unmap(self.mapper);
        self.mode = Mode::Done;
        Some(Err(e))
    }

    /// The next unmerged range of the direct path: a translation by region,
    /// or one segment (prefix) mapped on its own.
    #[inline]
    fn next_raw(&mut self) -> Option<Result<DmaRange, MapError>> {
        let seg = *self.segs.get(self.idx)?;
        if self.off == 0 {
            if seg.len == 0 {
                return Some(Err(MapError::EmptySegment { index: self.idx }));
            }
            if seg.end().is_none() {
                return Some(Err(MapError::Overflow { index: self.idx }));
            }
        }
        // No overflow: seg.addr + seg.len was checked above.
        let a = seg.addr.raw_u64() + self.off;
        let remaining = seg.len - self.off;
        if !self.region.contains(a) {
            let addr = HostAddr::new(a as usize);
            match self.mapper.lookup(addr) {
                Some(r) if r.contains(addr) => {
                    // Never cache a region of the other memory kind: the
                    // fast path in `next_in_region` relies on it.
                    let cache = RegionCache::of(&r);
                    if cache.memory != self.memory {
                        return Some(Err(self.mixed(cache.memory)));
                    }
                    self.region = cache;
                }
                _ => {
                    return self
                        .map_one(addr, remaining)
                        .map(|r| r.map(|r| self.advance(seg, r)))
                }
            }
        }
        let r = self.region.translate(a, remaining);
        Some(Ok(self.advance(seg, r)))
    }

    /// Maps `remaining` bytes at `addr` (outside every region) on their own.
    fn map_one(&mut self, addr: HostAddr, remaining: u64) -> Option<Result<DmaRange, MapError>> {
        if self.memory == Memory::Device {
            return Some(Err(self.mixed(Memory::Host)));
        }
        match self
            .mapper
            .map_segment(HostSeg::new(addr, remaining), self.state.dir)
        {
            Ok(r) if r.len > 0 && r.len <= remaining => {
                self.state.record(r);
                Some(Ok(r))
            }
            Ok(r) => {
                // A backend bug; undo it and fail rather than loop or overrun
                // the segment.
                self.mapper.unmap_segment(r, self.state.dir);
                Some(Err(MapError::MapFailed {
                    host: addr,
                    len: remaining,
                    source: crate::error::Errno(libc_einval()),
                }))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Moves past `r.len` bytes of `seg` and returns `r`.
    #[inline]
    fn advance(&mut self, seg: HostSeg, r: DmaRange) -> DmaRange {
        self.off += r.len;
        if self.off == seg.len {
            self.idx += 1;
            self.off = 0;
        }
        r
    }

    fn mixed(&self, found: Memory) -> MapError {
        MapError::MixedMemory {
            index: self.idx,
            expected: self.memory,
            found,
        }
    }

    /// Emits up to `max_seg` bytes of the pending range.
    #[inline]
    fn emit(&mut self) -> DmaRange {
        let len = self.pending.len.min(self.max_seg);
        let out = DmaRange::new(self.pending.addr, len);
        self.pending = DmaRange::new(self.pending.addr.wrapping_add(len), self.pending.len - len);
        out
    }
}

impl<M: Mapper + ?Sized> Iterator for DmaIter<'_, M> {
    type Item = Result<DmaRange, MapError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self.mode {
            Mode::Direct => {}
            Mode::One => {
                self.mode = Mode::Done;
                return Some(Ok(self.pending));
            }
            Mode::Done => return None,
        }
        loop {
            if self.pending.len >= self.max_seg {
                return Some(Ok(self.emit()));
            }
            match self.next_raw() {
                None => {
                    if self.pending.len == 0 {
                        self.mode = Mode::Done;
                        return None;
                    }
                    return Some(Ok(self.emit()));
                }
                Some(Err(e)) => return self.fail(e),
                Some(Ok(r)) => {
                    if let Some(out) = self.absorb(r) {
                        return Some(Ok(out));
                    }
                }
            }
        }
    }
}

/// A consumer of device ranges, such as a PRP or SGL builder, fed by
/// [`DmaIter::feed`].
pub trait RangeSink {
    /// The consumer's error; mapping errors convert into it.
    type Error: From<MapError>;

    /// Takes the next range of the request.
    fn push(&mut self, range: DmaRange) -> Result<(), Self::Error>;
}

impl<M: Mapper + ?Sized> DmaIter<'_, M> {
    /// Merges `r` into the pending range, or returns the pending range to
    /// emit (then `r` is pending). The pending range is shorter than the
    /// maximum segment size on entry.
    #[inline(always)]
    fn absorb(&mut self, r: DmaRange) -> Option<DmaRange> {
        if self.pending.len == 0 {
            self.pending = r;
            None
        } else if self.pending.end() == r.addr && self.pending.len + r.len <= self.max_seg {
            self.pending.len += r.len;
            None
        } else {
            Some(core::mem::replace(&mut self.pending, r))
        }
    }

    /// The next segment, when it lies wholly inside the cached region and
    /// needs no splitting: the common case, translated without a call.
    #[inline(always)]
    fn next_in_region(&mut self) -> Option<DmaRange> {
        if self.off != 0 {
            return None;
        }
        let seg = self.segs.get(self.idx)?;
        let a = seg.addr.raw_u64();
        // 0 < len <= min(room in the region, max_seg), in one comparison.
        // The cache never holds a region of the other memory kind.
        let fits = self.region.contains(a)
            && seg.len.wrapping_sub(1) < (self.region.end - a).min(self.max_seg);
        if !fits {
            return None;
        }
        self.idx += 1;
        Some(DmaRange::new(
            Iova::new(self.region.addr.wrapping_add(a - self.region.host)),
            seg.len,
        ))
    }

    /// Feeds every range of the request to `sink`, in order: the same ranges
    /// as iterating, produced in a tight loop with the sink inlined (the
    /// I/O path's way to consume a request).
    ///
    /// Stops at the first error, from mapping (after undoing what this
    /// iterator mapped) or from the sink (the [`DmaState`] then holds what
    /// was mapped so far, for [`DmaState::unmap`]).
    #[inline]
    pub fn feed<S: RangeSink>(mut self, sink: &mut S) -> Result<(), S::Error> {
        match self.mode {
            Mode::Direct => {}
            Mode::One => {
                self.mode = Mode::Done;
                return sink.push(self.pending);
            }
            Mode::Done => return Ok(()),
        }
        loop {
            while let Some(r) = self.next_in_region() {
                if let Some(out) = self.absorb(r) {
                    sink.push(out)?;
                }
            }
            match self.next_raw() {
                None => break,
                Some(Err(e)) => {
                    self.state.unmap(self.mapper);
                    self.mode = Mode::Done;
                    return Err(e.into());
                }
                Some(Ok(r)) => {
                    if let Some(out) = self.absorb(r) {
                        sink.push(out)?;
                    }
                    while self.pending.len >= self.max_seg {
                        let out = self.emit();
                        sink.push(out)?;
                    }
                }
            }
        }
        self.mode = Mode::Done;
        while self.pending.len != 0 {
            let out = self.emit();
            sink.push(out)?;
        }
        Ok(())
    }
}

/// `EINVAL`, without a libc dependency.
const fn libc_einval() -> i32 {
    22
}

/// Whether `segs` can share one IOVA range with granule `g`: every segment but
/// the first starts on a granule boundary and every segment but the last ends
/// on one. Returns the total length if so. Checks every segment for zero
/// length and overflow on the way.
fn coalescible(segs: &[HostSeg], g: u64) -> Result<Option<u64>, MapError> {
    let mask = g - 1;
    let last = segs.len() - 1;
    let mut total: u64 = 0;
    let mut aligned = true;
    for (index, s) in segs.iter().enumerate() {
        if s.len == 0 {
            return Err(MapError::EmptySegment { index });
        }
        let end = s.end().ok_or(MapError::Overflow { index })?;
        aligned &= (index == 0 || s.addr.raw_u64() & mask == 0)
            && (index == last || end.raw_u64() & mask == 0);
        total = total
            .checked_add(s.len)
            .ok_or(MapError::Overflow { index })?;
    }
    if !aligned {
        return Ok(None);
    }
    // The IOVA span (first offset + total, rounded up) must not overflow.
    let off = segs[0].addr.offset_in(g);
    match off
        .checked_add(total)
        .and_then(|v| v.checked_next_multiple_of(g))
    {
        Some(_) => Ok(Some(total)),
        None => Err(MapError::Overflow { index: 0 }),
    }
}

/// Allocates one IOVA range for the request and links every segment into it.
/// On any failure, destroys the partial mapping and frees the IOVA space
/// before returning the error (the kernel once leaked both here; see Linux
/// commit 81e7223b1a2d).
fn link_all<M: Mapper + ?Sized>(
    segs: &[HostSeg],
    total: u64,
    g: u64,
    dir: Direction,
    mapper: &M,
) -> Result<DmaRange, MapError> {
    let off = segs[0].addr.offset_in(g);
    let span = span(off, total, g);
    let base = mapper.alloc_iova(span)?;
    let start = base.wrapping_add(off);
    let mut linked: u64 = 0;
    let mut result = Ok(());
    for (index, s) in segs.iter().enumerate() {
        if index > 0 {
            if let Some(r) = mapper.lookup(s.addr) {
                if r.kind == RegionKind::Device && r.contains(s.addr) {
                    result = Err(MapError::MixedMemory {
                        index,
                        expected: Memory::Host,
                        found: Memory::Device,
                    });
                    break;
                }
            }
        }
        if let Err(e) = mapper.link(start.wrapping_add(linked), *s, dir) {
            result = Err(e);
            break;
        }
        linked += s.len;
    }
    if result.is_ok() {
        result = mapper.sync(start, total);
    }
    match result {
        Ok(()) => Ok(DmaRange::new(start, total)),
        Err(e) => {
            if linked > 0 {
                mapper.unlink(start, linked, dir);
            }
            mapper.free_iova(base, span);
            Err(e)
        }
    }
}
