//! RAM-backed namespaces, stored sparsely: 64 KiB chunks allocated on
//! first write, so a namespace may be far larger than the memory it uses.
//! Unwritten and deallocated blocks read as zeroes, and their metadata
//! (kept in a store of its own, `metadata` bytes per block) as all FFh
//! bytes, so protection information tuples there escape every check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use nvme_vfio::nvme::pi::{BlockFormat, Guard};

use crate::config::NamespaceConfig;
use crate::zones::Zones;

/// Chunk size of the sparse store.
const CHUNK: u64 = 64 << 10;

/// One namespace's blocks.
#[derive(Debug)]
pub(crate) struct Namespace {
    /// The namespace ID.
    pub(crate) id: u32,
    /// Attached (an active namespace ID); changes at run time.
    attached: AtomicBool,
    pub(crate) blocks: u64,
    pub(crate) block_size: u32,
    pub(crate) metadata: u16,
    /// The guard of the LBA format's protection information (Identify's
    /// extended LBA format), whether it is formatted with it or not.
    pub(crate) guard: Guard,
    /// The layout and protection information now (Format NVM changes
    /// them).
    format: Mutex<BlockFormat>,
    /// A zoned namespace's zones.
    pub(crate) zoned: Option<Zones>,
    chunks: Sparse,
    /// The blocks' metadata, `metadata` bytes per block.
    meta: Sparse,
    /// Blocks marked by Write Uncorrectable.
    uncorrectable: Mutex<Extents>,
}

/// A set of blocks, as sorted, disjoint, non-adjacent `[start, end)`
/// extents: a Write Uncorrectable of many blocks is one entry.
#[derive(Debug, Default)]
pub(crate) struct Extents(Vec<(u64, u64)>);

impl Extents {
    /// Adds blocks `[lba, lba + n)`.
    pub(crate) fn insert(&mut self, lba: u64, n: u64) {
        let (mut start, mut end) = (lba, lba.saturating_add(n));
        if start >= end {
            return;
        }
        // Every extent that overlaps or touches the new one merges into it.
        let first = self.0.partition_point(|&(_, e)| e < start);
        let mut last = first;
        while last < self.0.len() && self.0[last].0 <= end {
            start = start.min(self.0[last].0);
            end = end.max(self.0[last].1);
            last += 1;
        }
        self.0.splice(first..last, [(start, end)]);
    }

    /// Removes blocks `[lba, lba + n)`.
    pub(crate) fn remove(&mut self, lba: u64, n: u64) {
        let (start, end) = (lba, lba.saturating_add(n));
        if start >= end {
            return;
        }
        let first = self.0.partition_point(|&(_, e)| e <= start);
        let mut last = first;
        let mut keep = Vec::with_capacity(2);
        while last < self.0.len() && self.0[last].0 < end {
            let (s, e) = self.0[last];
            if s < start {
                keep.push((s, start));
            }
            if e > end {
                keep.push((end, e));
            }
            last += 1;
        }
        self.0.splice(first..last, keep);
    }

    /// The first block of `[lba, lba + n)` in the set.
    pub(crate) fn first_in(&self, lba: u64, n: u64) -> Option<u64> {
        let end = lba.saturating_add(n);
        let i = self.0.partition_point(|&(_, e)| e <= lba);
        self.0
            .get(i)
            .filter(|&&(s, _)| s < end)
            .map(|&(s, _)| s.max(lba))
    }
}

impl Namespace {
    /// Namespace `id` as `c` describes it.
    pub(crate) fn new(id: u32, c: NamespaceConfig) -> Self {
        Self {
            id,
            attached: AtomicBool::new(c.attached),
            blocks: c.blocks,
            block_size: c.block_size,
            metadata: c.metadata,
            guard: c.pi.map_or(Guard::Crc16, |p| p.guard),
            format: Mutex::new(c.block_format()),
            zoned: c.zoned.map(|z| Zones::new(z, c.blocks)),
            chunks: Sparse::new(0),
            meta: Sparse::new(0xff),
            uncorrectable: Mutex::new(Extents::default()),
        }
    }

    fn uncorrectable(&self) -> MutexGuard<'_, Extents> {
        // Updates are plain vector edits: a panicking holder leaves a
        // valid set behind.
        self.uncorrectable.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks blocks `[lba, lba + n)` uncorrectable (Write Uncorrectable).
    pub(crate) fn mark_uncorrectable(&self, lba: u64, n: u64) {
        self.uncorrectable().insert(lba, n);
    }

    /// Clears the uncorrectable mark of blocks `[lba, lba + n)` (they were
    /// written or deallocated).
    pub(crate) fn clear_uncorrectable(&self, lba: u64, n: u64) {
        self.uncorrectable().remove(lba, n);
    }

    /// The first uncorrectable block of `[lba, lba + n)`, if any.
    pub(crate) fn first_uncorrectable(&self, lba: u64, n: u64) -> Option<u64> {
        self.uncorrectable().first_in(lba, n)
    }

    /// Whether the namespace is attached.
    pub(crate) fn attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    /// Attaches or detaches it; returns whether it was attached.
    pub(crate) fn set_attached(&self, on: bool) -> bool {
        self.attached.swap(on, Ordering::AcqRel)
    }

    /// The layout and protection information the namespace is formatted
    /// with now.
    pub(crate) fn format(&self) -> BlockFormat {
        *self.format.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Formats the namespace with `format` (same block and metadata
    /// sizes).
    pub(crate) fn set_format(&self, format: BlockFormat) {
        *self.format.lock().unwrap_or_else(|e| e.into_inner()) = format;
    }

    /// Whether blocks `[lba, lba + n)` exist.
    pub(crate) fn contains(&self, lba: u64, n: u64) -> bool {
        lba.checked_add(n).is_some_and(|end| end <= self.blocks)
    }

    /// Byte offset and length of blocks `[lba, lba + n)`, if they exist.
    pub(crate) fn byte_range(&self, lba: u64, n: u64) -> Option<(u64, u64)> {
        let bs = self.block_size as u64;
        self.contains(lba, n).then(|| (lba * bs, n * bs))
    }

    /// Size in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }

    /// Copies bytes at `off` into `buf`. The caller checked the range.
    pub(crate) fn read(&self, off: u64, buf: &mut [u8]) {
        self.chunks.read(off, buf)
    }

    /// Copies `data` to bytes at `off`. The caller checked the range.
    pub(crate) fn write(&self, off: u64, data: &[u8]) {
        self.chunks.write(off, data)
    }

    /// Copies the metadata of the blocks from `lba` into `buf` (a whole
    /// number of blocks' worth). The caller checked the range.
    pub(crate) fn read_meta(&self, lba: u64, buf: &mut [u8]) {
        self.meta.read(lba * u64::from(self.metadata), buf)
    }

    /// Stores `meta` as the metadata of the blocks from `lba`. The caller
    /// checked the range.
    pub(crate) fn write_meta(&self, lba: u64, meta: &[u8]) {
        self.meta.write(lba * u64::from(self.metadata), meta)
    }

    /// The data and metadata of blocks `[lba, lba + n)`. The caller
    /// checked the range.
    pub(crate) fn load(&self, lba: u64, n: u64) -> (Vec<u8>, Vec<u8>) {
        let (bs, ms) = (u64::from(self.block_size), u64::from(self.metadata));
        let mut data = vec![0u8; (n * bs) as usize];
        let mut meta = vec![0u8; (n * ms) as usize];
        self.read(lba * bs, &mut data);
        self.read_meta(lba, &mut meta);
        (data, meta)
    }

    /// Stores the data and metadata of blocks from `lba` (written: no
    /// longer uncorrectable). The caller checked the range.
    pub(crate) fn store(&self, lba: u64, data: &[u8], meta: &[u8]) {
        let bs = u64::from(self.block_size);
        self.write(lba * bs, data);
        self.write_meta(lba, meta);
        self.clear_uncorrectable(lba, data.len() as u64 / bs);
    }

    /// Erases blocks `[lba, lba + n)` (deallocated, zeroed without
    /// protection information, formatted, a zone reset): data zeroes,
    /// metadata all FFh, no uncorrectable mark. The caller checked the
    /// range.
    pub(crate) fn erase(&self, lba: u64, n: u64) {
        let (bs, ms) = (u64::from(self.block_size), u64::from(self.metadata));
        self.chunks.reset(lba * bs, n * bs);
        self.meta.reset(lba * ms, n * ms);
        self.clear_uncorrectable(lba, n);
    }

    /// Blocks that hold data (whole chunks count as used), at most the
    /// namespace's size: the Namespace Utilization Identify reports.
    pub(crate) fn used_blocks(&self) -> u64 {
        (self.resident() / self.block_size as u64).min(self.blocks)
    }

    /// Bytes of memory the namespace holds.
    pub(crate) fn resident(&self) -> u64 {
        self.chunks.resident()
    }
}

/// A sparse byte store: 64 KiB chunks allocated on first write; bytes
/// never written read as `fill`.
#[derive(Debug)]
struct Sparse {
    fill: u8,
    chunks: Mutex<HashMap<u64, Box<[u8]>>>,
}

impl Sparse {
    fn new(fill: u8) -> Self {
        Self {
            fill,
            chunks: Mutex::new(HashMap::new()),
        }
    }

    fn chunks(&self) -> MutexGuard<'_, HashMap<u64, Box<[u8]>>> {
        // Chunk updates are plain copies: a panicking holder leaves valid
        // (if partly written) data behind.
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies bytes at `off` into `buf`.
    fn read(&self, off: u64, buf: &mut [u8]) {
        let chunks = self.chunks();
        let mut done = 0usize;
        while done < buf.len() {
            let at = off + done as u64;
            let (idx, within) = (at / CHUNK, (at % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(buf.len() - done);
            let dst = &mut buf[done..done + n];
            match chunks.get(&idx) {
                Some(c) => dst.copy_from_slice(&c[within..within + n]),
                None => dst.fill(self.fill),
            }
            done += n;
        }
    }

    /// Copies `data` to bytes at `off`.
    fn write(&self, off: u64, data: &[u8]) {
        let mut chunks = self.chunks();
        let mut done = 0usize;
        while done < data.len() {
            let at = off + done as u64;
            let (idx, within) = (at / CHUNK, (at % CHUNK) as usize);
            let n = (CHUNK as usize - within).min(data.len() - done);
            let c = chunks
                .entry(idx)
                .or_insert_with(|| vec![self.fill; CHUNK as usize].into_boxed_slice());
            c[within..within + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }

    /// Sets `len` bytes at `off` back to `fill`, freeing the chunks it
    /// covers whole.
    fn reset(&self, off: u64, len: u64) {
        let mut chunks = self.chunks();
        let end = off + len;
        let mut at = off;
        while at < end {
            let (idx, within) = (at / CHUNK, at % CHUNK);
            let n = (CHUNK - within).min(end - at);
            if n == CHUNK {
                chunks.remove(&idx);
            } else if let Some(c) = chunks.get_mut(&idx) {
                c[within as usize..(within + n) as usize].fill(self.fill);
            }
            at += n;
        }
    }

    /// Bytes of memory held.
    fn resident(&self) -> u64 {
        self.chunks().len() as u64 * CHUNK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Not under Miri: safe code only, and its megabytes of copies and
    // compares take about a minute there.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn sparse_reads_writes_and_zeroing() {
        let ns = Namespace::new(1, NamespaceConfig::new(1 << 30, 4096));
        assert_eq!(ns.bytes(), 1 << 42);
        assert!(ns.contains((1 << 30) - 2, 2));
        assert!(!ns.contains((1 << 30) - 2, 3));
        assert!(!ns.contains(u64::MAX, 2));
        let data: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 251) as u8).collect();
        let off = (1 << 41) + CHUNK - 100;
        ns.write(off, &data);
        assert_eq!(ns.resident(), 4 * CHUNK);
        let mut back = vec![0xffu8; data.len() + 200];
        ns.read(off - 100, &mut back);
        assert!(back[..100].iter().all(|&b| b == 0));
        assert_eq!(&back[100..100 + data.len()], &data[..]);
        ns.chunks.reset(off + 10, 2 * CHUNK);
        assert_eq!(ns.resident(), 3 * CHUNK, "one whole chunk freed");
        ns.read(off, &mut back[..data.len()]);
        assert_eq!(&back[..10], &data[..10]);
        assert!(back[10..10 + 2 * CHUNK as usize].iter().all(|&b| b == 0));
        assert_eq!(
            &back[10 + 2 * CHUNK as usize..data.len()],
            &data[10 + 2 * CHUNK as usize..]
        );
    }

    #[test]
    fn metadata_reads_all_ones_until_written_and_after_erase() {
        let c = NamespaceConfig::new(1 << 16, 512).with_metadata(16);
        let ns = Namespace::new(1, c);
        let (data, meta) = ns.load(100, 3);
        assert!(data.iter().all(|&b| b == 0));
        assert_eq!(meta, vec![0xff; 48]);
        ns.store(101, &[7u8; 512], &[5u8; 16]);
        let (data, meta) = ns.load(100, 3);
        assert_eq!(&data[512..1024], &[7u8; 512][..]);
        assert_eq!(&meta[..16], &[0xff; 16]);
        assert_eq!(&meta[16..32], &[5; 16]);
        assert_eq!(&meta[32..], &[0xff; 16]);
        ns.mark_uncorrectable(101, 1);
        ns.erase(101, 1);
        assert_eq!(ns.load(101, 1), (vec![0; 512], vec![0xff; 16]));
        assert_eq!(ns.first_uncorrectable(0, 1 << 16), None);
    }

    #[test]
    fn uncorrectable_extents_merge_split_and_find() {
        let mut x = Extents::default();
        x.insert(10, 5);
        x.insert(20, 5);
        x.insert(15, 5);
        assert_eq!(x.0, [(10, 25)], "touching extents merge");
        x.insert(0, 0);
        x.insert(30, 10);
        x.insert(5, 2);
        assert_eq!(x.0, [(5, 7), (10, 25), (30, 40)]);
        x.insert(6, 30);
        assert_eq!(x.0, [(5, 40)]);
        x.remove(10, 5);
        x.remove(38, 100);
        assert_eq!(x.0, [(5, 10), (15, 38)]);
        assert_eq!(x.first_in(0, 5), None);
        assert_eq!(x.first_in(0, 6), Some(5));
        assert_eq!(x.first_in(10, 5), None);
        assert_eq!(x.first_in(12, 10), Some(15));
        assert_eq!(x.first_in(20, 1), Some(20));
        assert_eq!(x.first_in(38, u64::MAX), None);
        x.remove(0, u64::MAX);
        assert!(x.0.is_empty());
        x.insert(u64::MAX - 1, 5);
        assert_eq!(x.first_in(u64::MAX - 1, 1), Some(u64::MAX - 1));
    }
}
