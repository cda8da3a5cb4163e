//! A first-fit allocator of address ranges: IOVA space inside the IOMMU's
//! valid ranges, and buffer space inside DMA slabs.
//!
//! Free space is a sorted list of disjoint `[start, end)` ranges; freeing
//! merges neighbours. The list stays short in practice (a handful of holes),
//! so a linear scan beats a tree here.

/// Free address space, allocated first fit.
#[derive(Clone, Debug, Default)]
pub struct RangeAllocator {
    free: Vec<(u64, u64)>,
    /// Bytes currently free.
    avail: u64,
    /// Where [`alloc_next_fit`](Self::alloc_next_fit) looks first: the
    /// end of its last allocation.
    cursor: u64,
}

impl RangeAllocator {
    /// An allocator with nothing free.
    pub const fn new() -> Self {
        Self {
            free: Vec::new(),
            avail: 0,
            cursor: 0,
        }
    }

    /// Adds `[start, end)` to the free space. It must not overlap free or
    /// allocated space.
    pub fn add(&mut self, start: u64, end: u64) {
        if start < end {
            self.release(start, end - start);
        }
    }

    /// Bytes free.
    pub fn available(&self) -> u64 {
        self.avail
    }

    /// The free ranges, sorted.
    pub fn free_ranges(&self) -> &[(u64, u64)] {
        &self.free
    }

    /// Takes `len` bytes aligned to `align` (a power of two), first fit.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        self.alloc_from(len, align, 0)
    }

    /// Takes `len` bytes aligned to `align` (a power of two), next fit:
    /// from where the previous such allocation ended, wrapping around at
    /// the end. Space freed now is handed out again only after the rest
    /// of the free space was, so an address comes back as late as
    /// possible: a device's late access through a stale IOVA then finds
    /// nothing mapped there instead of someone else's memory.
    pub fn alloc_next_fit(&mut self, len: u64, align: u64) -> Option<u64> {
        let a = self
            .alloc_from(len, align, self.cursor)
            .or_else(|| self.alloc_from(len, align, 0))?;
        self.cursor = a + len;
        Some(a)
    }

    /// First fit at or above `from`.
    fn alloc_from(&mut self, len: u64, align: u64, from: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let mask = align - 1;
        let first = self.free.partition_point(|&(_, e)| e <= from);
        for i in first..self.free.len() {
            let (s, e) = self.free[i];
            let Some(a) = s.max(from).checked_add(mask).map(|v| v & !mask) else {
                continue;
            };
            let Some(end) = a.checked_add(len) else {
                continue;
            };
            if end > e {
                continue;
            }
            // Split [s, e) into [s, a) free, [a, end) taken, [end, e) free.
            match (a > s, end < e) {
                (false, false) => {
                    self.free.remove(i);
                }
                (false, true) => self.free[i].0 = end,
                (true, false) => self.free[i].1 = a,
                (true, true) => {
                    self.free[i].1 = a;
                    self.free.insert(i + 1, (end, e));
                }
            }
            self.avail -= len;
            return Some(a);
        }
        None
    }

    /// Returns `[start, start + len)`, taken earlier, to the free space.
    pub fn release(&mut self, start: u64, len: u64) {
        let end = start + len;
        let i = self.free.partition_point(|&(s, _)| s < start);
        let merge_prev = i > 0 && self.free[i - 1].1 == start;
        let merge_next = i < self.free.len() && self.free[i].0 == end;
        match (merge_prev, merge_next) {
            (true, true) => {
                self.free[i - 1].1 = self.free[i].1;
                self.free.remove(i);
            }
            (true, false) => self.free[i - 1].1 = end,
            (false, true) => self.free[i].0 = start,
            (false, false) => self.free.insert(i, (start, end)),
        }
        self.avail += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_with_alignment_and_merging() {
        let mut a = RangeAllocator::new();
        a.add(0x1000, 0x10000);
        assert_eq!(a.available(), 0xf000);
        let x = a.alloc(0x200, 0x200).unwrap();
        assert_eq!(x, 0x1000);
        let y = a.alloc(0x1000, 0x1000).unwrap();
        assert_eq!(y, 0x2000, "aligned past the hole at 0x1200");
        assert_eq!(a.free_ranges(), &[(0x1200, 0x2000), (0x3000, 0x10000)]);
        let z = a.alloc(0x100, 0x100).unwrap();
        assert_eq!(z, 0x1200, "first fit reuses the hole");
        a.release(x, 0x200);
        a.release(z, 0x100);
        a.release(y, 0x1000);
        assert_eq!(a.free_ranges(), &[(0x1000, 0x10000)]);
        assert_eq!(a.available(), 0xf000);
    }

    #[test]
    fn next_fit_hands_freed_space_out_last() {
        let mut a = RangeAllocator::new();
        a.add(0x1000, 0x6000);
        let x = a.alloc_next_fit(0x1000, 0x1000).unwrap();
        assert_eq!(x, 0x1000);
        a.release(x, 0x1000);
        // Freed, but the cursor moves on.
        assert_eq!(a.alloc_next_fit(0x1000, 0x1000), Some(0x2000));
        assert_eq!(a.alloc_next_fit(0x2000, 0x1000), Some(0x3000));
        // 0x5000..0x6000 is next; then it wraps to the start.
        assert_eq!(a.alloc_next_fit(0x1000, 0x1000), Some(0x5000));
        assert_eq!(a.alloc_next_fit(0x1000, 0x1000), Some(0x1000));
        assert_eq!(a.alloc_next_fit(0x1000, 0x1000), None);
        assert_eq!(a.available(), 0);
        a.release(0x2000, 0x1000);
        a.release(0x3000, 0x2000);
        assert_eq!(a.alloc_next_fit(0x3000, 0x1000), Some(0x2000));
        assert_eq!(a.free_ranges(), &[]);
    }

    #[test]
    fn exhaustion_and_bad_requests() {
        let mut a = RangeAllocator::new();
        a.add(0, 0x2000);
        assert_eq!(a.alloc(0x3000, 0x1000), None);
        assert_eq!(a.alloc(0, 0x1000), None);
        assert_eq!(a.alloc(0x1000, 3), None);
        assert_eq!(a.alloc(0x2000, 0x1000), Some(0));
        assert_eq!(a.alloc(1, 1), None);
        // Near the top of the address space: no overflow.
        let mut b = RangeAllocator::new();
        b.add(u64::MAX - 0x1000, u64::MAX);
        assert_eq!(b.alloc(0x1000, 0x2000), None);
        assert_eq!(b.alloc(0x800, 0x800), Some(0xffff_ffff_ffff_f000));
    }
}
