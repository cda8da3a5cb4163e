//! A minimal in-test NVMe driver: queue rings and buffers in page-aligned
//! host memory mapped through the software IOMMU, commands submitted and
//! completions polled by hand. Deliberately small and explicit, so each
//! test can also do what a real driver never would.
#![allow(dead_code)]

pub mod driver;

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blk_dma::{HostAddr, Iova};
use nvme_sim::{Config, SimController, SimIommu};
use nvme_vfio::mem::{Access, DmaMap};
use nvme_vfio::nvme::cmd::{Command, Completion, Status};
use nvme_vfio::nvme::regs::{self, offset, Aqa, Cc, Csts, Registers};

/// How long any wait in a test may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Page size.
pub const PAGE: u64 = 4096;
/// Where the driver's memory sits in IOVA space.
pub const MEM_IOVA: u64 = 0x10_0000;
/// Its size.
pub const MEM_LEN: usize = 8 << 20;
/// A page at the end of the test memory that `alloc` never hands out, for
/// data nobody looks at.
pub const SCRATCH: u64 = MEM_LEN as u64 - PAGE;
/// An IOVA nothing is mapped at.
pub const UNMAPPED: u64 = 0x4000_0000;

/// Page-aligned, zeroed host memory, mapped into an IOMMU at `iova`.
/// Accessed only with volatile copies, since the device writes it
/// concurrently.
pub struct HostMem {
    ptr: *mut u8,
    len: usize,
    pub iova: Iova,
    iommu: Arc<SimIommu>,
}

// SAFETY: HostMem owns its allocation; the raw pointer is only used for
// volatile copies within it.
unsafe impl Send for HostMem {}

impl HostMem {
    pub fn new(iommu: &Arc<SimIommu>, iova: u64, len: usize, access: Access) -> Self {
        let layout = Layout::from_size_align(len, PAGE as usize).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        // SAFETY: a fresh allocation that this HostMem owns and unmaps
        // (in Drop) before freeing it; the IOVAs are the test's, chosen
        // apart from every other mapping of its IOMMU.
        unsafe {
            iommu.map_dma(
                Iova::new(iova),
                HostAddr::new(ptr as usize),
                len as u64,
                access,
            )
        }
        .unwrap();
        Self {
            ptr,
            len,
            iova: Iova::new(iova),
            iommu: Arc::clone(iommu),
        }
    }

    pub fn iova(&self, off: u64) -> Iova {
        self.iova.wrapping_add(off)
    }

    pub fn write(&self, off: u64, data: &[u8]) {
        assert!(off as usize + data.len() <= self.len);
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds (asserted), memory owned by self.
            unsafe { self.ptr.add(off as usize + i).write_volatile(*b) };
        }
    }

    pub fn read(&self, off: u64, buf: &mut [u8]) {
        assert!(off as usize + buf.len() <= self.len);
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: in bounds (asserted), memory owned by self.
            *b = unsafe { self.ptr.add(off as usize + i).read_volatile() };
        }
    }

    pub fn bytes(&self, off: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(off, &mut v);
        v
    }

    pub fn write_u64(&self, off: u64, v: u64) {
        self.write(off, &v.to_le_bytes());
    }

    pub fn write_u32(&self, off: u64, v: u32) {
        self.write(off, &v.to_le_bytes());
    }

    /// One aligned 64-bit atomic load with `order` (as the driver reads a
    /// CQE's quadwords, which the controller stores atomically).
    pub fn load_u64(&self, off: u64, order: std::sync::atomic::Ordering) -> u64 {
        assert!(off % 8 == 0 && off as usize + 8 <= self.len);
        // SAFETY: in bounds and aligned (asserted; the base is page
        // aligned), memory owned by self; completion queue memory is only
        // accessed atomically while the controller may write it.
        let cell =
            unsafe { std::sync::atomic::AtomicU64::from_ptr(self.ptr.add(off as usize).cast()) };
        u64::from_le(cell.load(order))
    }

    /// One aligned 32-bit load.
    pub fn read_u32(&self, off: u64) -> u32 {
        assert!(off % 4 == 0 && off as usize + 4 <= self.len);
        // SAFETY: in bounds and aligned (asserted; the base is page
        // aligned), memory owned by self.
        u32::from_le(unsafe { self.ptr.add(off as usize).cast::<u32>().read_volatile() })
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        // Unmapping waits for any device access in progress; after it the
        // device cannot reach the memory.
        // SAFETY: exactly the mapping made in `new`.
        let _ = unsafe { self.iommu.unmap_dma(self.iova, self.len as u64) };
        let layout = Layout::from_size_align(self.len, PAGE as usize).unwrap();
        // SAFETY: allocated in `new` with this layout, and no longer mapped.
        unsafe { dealloc(self.ptr, layout) };
    }
}

/// One queue pair, as the test driver tracks it.
pub struct Ring {
    pub qid: u16,
    pub entries: u16,
    pub sq_off: u64,
    pub cq_off: u64,
    pub sq_tail: u16,
    pub cq_head: u16,
    pub phase: bool,
    pub next_cid: u16,
}

/// The test driver: a controller, its memory, and queue rings.
pub struct Driver {
    pub sim: SimController,
    pub mem: HostMem,
    next_free: u64,
    pub rings: Vec<Option<Ring>>,
    pub stride: u64,
}

/// Waits for `cond` to hold, up to `TIMEOUT`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

impl Driver {
    /// A controller with `config`, not enabled yet.
    pub fn new_disabled(config: Config) -> Self {
        let sim = SimController::new(config).unwrap();
        let mem = HostMem::new(sim.iommu(), MEM_IOVA, MEM_LEN, Access::ReadWrite);
        let stride = sim.doorbell_stride();
        Self {
            sim,
            mem,
            next_free: 0,
            rings: (0..8).map(|_| None).collect(),
            stride,
        }
    }

    /// A controller with `config`, enabled with a 32-entry admin queue.
    pub fn new(config: Config) -> Self {
        let mut d = Self::new_disabled(config);
        d.enable(32);
        d
    }

    /// Page-aligned memory of `len` bytes: its offset in `mem`.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let off = self.next_free;
        self.next_free += len.next_multiple_of(PAGE);
        assert!(self.next_free <= SCRATCH, "test memory exhausted");
        off
    }

    pub fn csts(&self) -> Csts {
        Csts(self.sim.read32(offset::CSTS))
    }

    /// Programs the admin queues and sets CC.EN, then waits for RDY.
    pub fn enable(&mut self, entries: u16) {
        self.program_admin(entries);
        self.sim.write32(offset::CC, Self::cc().0);
        wait_for("CSTS.RDY = 1", || self.csts().ready());
    }

    pub fn cc() -> Cc {
        Cc::default()
            .with_css(0)
            .with_mps(0)
            .with_entry_sizes(6, 4)
            .with_enable(true)
    }

    /// Sets up admin queue memory and AQA/ASQ/ACQ.
    pub fn program_admin(&mut self, entries: u16) {
        let sq = self.alloc(entries as u64 * 64);
        let cq = self.alloc(entries as u64 * 16);
        self.rings[0] = Some(Ring {
            qid: 0,
            entries,
            sq_off: sq,
            cq_off: cq,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            next_cid: 0,
        });
        self.sim.write32(offset::AQA, Aqa::new(entries, entries).0);
        self.sim.write64(offset::ASQ, self.mem.iova(sq).raw());
        self.sim.write64(offset::ACQ, self.mem.iova(cq).raw());
    }

    /// Clears CC.EN and waits for RDY = 0; forgets every queue.
    pub fn disable(&mut self) {
        let cc = Cc(self.sim.read32(offset::CC));
        self.sim.write32(offset::CC, cc.with_enable(false).0);
        wait_for("CSTS.RDY = 0", || !self.csts().ready());
        for r in &mut self.rings {
            *r = None;
        }
    }

    fn ring(&mut self, qid: u16) -> &mut Ring {
        self.rings[qid as usize].as_mut().expect("no such queue")
    }

    /// Writes `cmd` into queue `qid`'s next slot without ringing the
    /// doorbell; returns the command ID it was given.
    pub fn push(&mut self, qid: u16, mut cmd: Command) -> u16 {
        let (at, cid) = {
            let r = self.ring(qid);
            let cid = r.next_cid;
            r.next_cid = r.next_cid.wrapping_add(1);
            let at = r.sq_off + r.sq_tail as u64 * 64;
            r.sq_tail = (r.sq_tail + 1) % r.entries;
            (at, cid)
        };
        cmd.set_cid(cid);
        self.mem.write(at, &command_bytes(&cmd));
        cid
    }

    /// Rings queue `qid`'s SQ tail doorbell.
    pub fn ring_sq(&mut self, qid: u16) {
        let tail = self.ring(qid).sq_tail;
        self.sim
            .write32(regs::sq_tail_doorbell(qid, self.stride), tail as u32);
    }

    /// Submits `cmd` on queue `qid` and rings the doorbell.
    pub fn submit(&mut self, qid: u16, cmd: Command) -> u16 {
        let cid = self.push(qid, cmd);
        self.ring_sq(qid);
        cid
    }

    /// The next completion on queue `qid`, if one is posted (head doorbell
    /// not written).
    pub fn peek(&mut self, qid: u16) -> Option<Completion> {
        let (off, phase) = {
            let r = self.ring(qid);
            (r.cq_off + r.cq_head as u64 * 16, r.phase)
        };
        // The quadword with the phase tag first, as one acquire load (the
        // controller stores it last, with release); the rest of the entry
        // only once the phase says it is new.
        use std::sync::atomic::Ordering::{Acquire, Relaxed};
        let hi = self.mem.load_u64(off + 8, Acquire);
        if (hi >> 48) & 1 != phase as u64 {
            return None;
        }
        let lo = self.mem.load_u64(off, Relaxed);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&lo.to_le_bytes());
        b[8..].copy_from_slice(&hi.to_le_bytes());
        Some(completion_from_bytes(&b))
    }

    /// Consumes the next completion on queue `qid` if posted, and writes
    /// the CQ head doorbell.
    pub fn pop(&mut self, qid: u16) -> Option<Completion> {
        let c = self.peek(qid)?;
        let stride = self.stride;
        let r = self.ring(qid);
        r.cq_head = (r.cq_head + 1) % r.entries;
        if r.cq_head == 0 {
            r.phase = !r.phase;
        }
        let head = r.cq_head;
        self.sim
            .write32(regs::cq_head_doorbell(qid, stride), head as u32);
        Some(c)
    }

    /// Waits for the next completion on queue `qid`.
    pub fn wait(&mut self, qid: u16) -> Completion {
        let start = Instant::now();
        loop {
            if let Some(c) = self.pop(qid) {
                return c;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "no completion on queue {qid} (CSTS {:?})",
                self.csts()
            );
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Whether no completion arrives on queue `qid` within `d`.
    pub fn quiet_for(&mut self, qid: u16, d: Duration) -> bool {
        std::thread::sleep(d);
        self.peek(qid).is_none()
    }

    /// Submits `cmd` on queue `qid` and waits for its completion.
    pub fn run(&mut self, qid: u16, cmd: Command) -> Completion {
        let cid = self.submit(qid, cmd);
        let c = self.wait(qid);
        assert_eq!(c.cid, cid, "completion for another command");
        assert_eq!(c.sq_id, qid);
        c
    }

    /// Runs an admin command with PRP1 at `data` (if any).
    pub fn admin(&mut self, mut cmd: Command, data: Option<u64>) -> Completion {
        if let Some(off) = data {
            cmd.dptr = [self.mem.iova(off).raw(), 0];
        }
        self.run(0, cmd)
    }

    /// Creates I/O queue pair `qid` (CQ and SQ) of `entries`.
    pub fn create_io_queue(&mut self, qid: u16, entries: u16) {
        let cq = self.alloc(entries as u64 * 16);
        let sq = self.alloc(entries as u64 * 64);
        let c = self.admin(
            Command::create_cq(qid, entries, self.mem.iova(cq), None),
            None,
        );
        assert!(c.status().is_success(), "Create CQ: {}", c.status());
        let c = self.admin(
            Command::create_sq(qid, entries, self.mem.iova(sq), qid),
            None,
        );
        assert!(c.status().is_success(), "Create SQ: {}", c.status());
        self.rings[qid as usize] = Some(Ring {
            qid,
            entries,
            sq_off: sq,
            cq_off: cq,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            next_cid: 0,
        });
    }

    /// A controller enabled with I/O queue 1 of 64 entries.
    pub fn with_io_queue(config: Config) -> Self {
        let mut d = Self::new(config);
        d.create_io_queue(1, 64);
        d
    }

    /// Reads `blocks` blocks at `lba` of `nsid` into test memory at `buf`,
    /// with PRPs built from `buf` (which must be page aligned when the
    /// transfer needs a PRP list: `prp_list` is where the list goes).
    pub fn prp_rw(
        &mut self,
        write: bool,
        nsid: u32,
        lba: u64,
        blocks: u32,
        buf: u64,
        len: u64,
    ) -> Status {
        let mut cmd = Command::rw(write, nsid, lba, blocks, false);
        cmd.dptr = self.prps(buf, len);
        self.run(1, cmd).status()
    }

    /// PRP1/PRP2 for `len` bytes of test memory at `buf` (contiguous), with
    /// a PRP list page allocated when needed.
    pub fn prps(&mut self, buf: u64, len: u64) -> [u64; 2] {
        let first = PAGE - buf % PAGE;
        let prp1 = self.mem.iova(buf).raw();
        if len <= first {
            return [prp1, 0];
        }
        let second = buf + first;
        if len <= first + PAGE {
            return [prp1, self.mem.iova(second).raw()];
        }
        let pages = (len - first).div_ceil(PAGE);
        let list = self.alloc(pages * 8);
        for i in 0..pages {
            self.mem
                .write_u64(list + 8 * i, self.mem.iova(second + i * PAGE).raw());
        }
        [prp1, self.mem.iova(list).raw()]
    }
}

/// A command's 64 bytes, little-endian.
pub fn command_bytes(c: &Command) -> [u8; 64] {
    let dw = [
        c.cdw0,
        c.nsid,
        c.cdw2,
        c.cdw3,
        c.mptr as u32,
        (c.mptr >> 32) as u32,
        c.dptr[0] as u32,
        (c.dptr[0] >> 32) as u32,
        c.dptr[1] as u32,
        (c.dptr[1] >> 32) as u32,
        c.cdw10,
        c.cdw11,
        c.cdw12,
        c.cdw13,
        c.cdw14,
        c.cdw15,
    ];
    let mut b = [0u8; 64];
    for (i, d) in dw.iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&d.to_le_bytes());
    }
    b
}

/// A completion from its 16 little-endian bytes.
pub fn completion_from_bytes(b: &[u8]) -> Completion {
    let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    Completion {
        result: u32_at(0),
        rsvd: u32_at(4),
        sq_head: u16_at(8),
        sq_id: u16_at(10),
        cid: u16_at(12),
        status: u16_at(14),
    }
}

/// A status as (SCT, SC, DNR), for compact assertions.
pub fn st(s: Status) -> (u8, u8, bool) {
    (s.sct(), s.sc(), s.dnr())
}

/// A deterministic test pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}
