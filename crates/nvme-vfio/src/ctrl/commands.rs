//! The optional commands of the NVM command set on a queue pair: Verify,
//! Write Uncorrectable, Copy and Dataset Management, blocking and
//! asynchronous ([`Io::verify`](super::Io::verify), ...); Compare runs on
//! the data path of reads and writes ([`QueuePair::compare`]).
//!
//! Every one is refused before anything is submitted if the controller
//! does not support it ([`Error::UnsupportedCommand`]), if a block it
//! names is outside the namespace, if it is over a limit the controller or
//! the namespace reports ([`Error::OverLimit`]: Copy's source ranges and
//! lengths, Dataset Management's ranges), or if it is Write Uncorrectable
//! or Copy on a zoned namespace ([`Error::ZonedNamespace`]).
//! Verify and Write Uncorrectable are split at the controller's size limit
//! (VSL, WUSL) and at 65536 blocks into commands that complete as one
//! request; Copy and Dataset Management are one command each, whose range
//! list is the request's buffer: a DMA buffer of the driver's for the
//! blocking calls, the [`Io`]'s own memory for asynchronous requests.

use blk_dma::Direction;

use super::blocking::check_range;
use super::inflight::{Pending, Tag};
use super::io::{Io, IoBuf, Op};
use super::qpair::op_parts;
use super::{Namespace, QueuePair};
use crate::nvme::cmd::Command;
use crate::nvme::nvm::{
    CopyRange, DsmAttributes, DsmRange, NvmLimits, COPY_RANGE_LEN, DSM_RANGE_LEN,
    MAX_BLOCKS_PER_COMMAND, MAX_COPY_RANGES, MAX_DSM_RANGES,
};
use crate::Error;

impl QueuePair {
    /// Verifies `blocks` blocks at `lba` and waits: the controller reads
    /// them and checks them (their protection information, if any)
    /// without moving data. Fails with the controller's status, such as
    /// Unrecovered Read Error, if a block cannot be read. Split at the
    /// controller's Verify size limit and at 65536 blocks; a request longer
    /// than the queue pair's free command slots runs in waves, and an error
    /// then names the wave's range ([`Error::At`]).
    pub fn verify(&mut self, ns: &Namespace, lba: u64, blocks: u64) -> Result<(), Error> {
        self.run_without_data(Op::Verify, ns, lba, blocks)
    }

    /// Marks `blocks` blocks at `lba` uncorrectable and waits: reads of
    /// them fail with Unrecovered Read Error until they are written again.
    /// Refused on a zoned namespace. Split as [`verify`](Self::verify) is,
    /// at the Write Uncorrectable size limit.
    pub fn write_uncorrectable(
        &mut self,
        ns: &Namespace,
        lba: u64,
        blocks: u64,
    ) -> Result<(), Error> {
        self.run_without_data(Op::WriteUncorrectable, ns, lba, blocks)
    }

    /// Copies the blocks of `sources`, in order, to consecutive blocks
    /// from `dest`, in one Copy command (source range descriptors of
    /// format 0), and waits. Refused before submission on a zoned
    /// namespace, and when the ranges break the namespace's limits: at
    /// most MSRC + 1 source ranges (and 256), each at most MSSRL blocks
    /// (and 65536), at most MCL blocks in all ([`Error::OverLimit`]), or
    /// when a source or the destination is outside the namespace.
    ///
    /// ```
    /// # use nvme_sim::{Config as SimConfig, SimController};
    /// # use nvme_vfio::ctrl::{Config, Controller};
    /// # use nvme_vfio::mem::{DmaSpace, SpaceConfig};
    /// # let sim = SimController::new(SimConfig::default()).unwrap();
    /// # let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
    /// # let config = Config { space: SpaceConfig { hugepages: false }, ..Config::default() };
    /// # // SAFETY: the registers, IOMMU and PCI function all belong to `sim`.
    /// # let ctrl = unsafe { Controller::with_backend(sim.registers(), space, config, Some(sim.pci_function())) }?;
    /// use nvme_vfio::ctrl::{CopyRange, DsmAttributes, DsmRange, OptionalCommand, QueueConfig};
    /// let ns = ctrl.namespace(1)?;
    /// let mut qp = ctrl.queue_pair(QueueConfig::default())?;
    /// qp.write(&ns, 0, &[7u8; 4096], false)?;
    /// if ctrl.supports(OptionalCommand::Copy) {
    ///     // Blocks 4 to 7, then 0 to 3, to blocks 100 to 107.
    ///     qp.copy(&ns, &[CopyRange::new(4, 4), CopyRange::new(0, 4)], 100)?;
    ///     qp.compare(&ns, 100, &[7u8; 4096])?;
    /// }
    /// // Deallocate two ranges, the first one read sequentially before.
    /// let ranges = [DsmRange::new(0, 8).with_attributes(nvme_vfio::nvme::nvm::context::SEQUENTIAL_READ),
    ///     DsmRange::new(100, 8)];
    /// qp.dataset_management(&ns, &ranges, DsmAttributes::DEALLOCATE)?;
    /// # Ok::<(), nvme_vfio::Error>(())
    /// ```
    pub fn copy(&mut self, ns: &Namespace, sources: &[CopyRange], dest: u64) -> Result<(), Error> {
        let op = Op::Copy;
        self.check_op(op, ns)?;
        check_copy(ns, sources, dest)?;
        let len = sources.len() * COPY_RANGE_LEN;
        let mut list = self.shared().space.alloc(len)?;
        for (e, r) in (list.as_mut_slice().chunks_exact_mut(COPY_RANGE_LEN)).zip(sources) {
            e.copy_from_slice(&r.to_bytes());
        }
        self.run_list(op, ns, dest, DsmAttributes::default(), list, len)
    }

    /// Dataset Management of `ranges` with `attributes` (deallocate,
    /// integral dataset for read and for write; each range with its own
    /// context attributes), and waits. Any number of ranges: one command
    /// per 256 (fewer if the controller limits the ranges, or the blocks,
    /// of a deallocating command: DMRL, DMSL). Every range is checked
    /// before the first command goes: inside the namespace, not empty,
    /// and for a deallocation at most DMRSL blocks ([`Error::OverLimit`]).
    /// What deallocated blocks read as is the controller's business
    /// (Identify Namespace DLFEAT).
    pub fn dataset_management(
        &mut self,
        ns: &Namespace,
        ranges: &[DsmRange],
        attributes: DsmAttributes,
    ) -> Result<(), Error> {
        let op = Op::DatasetManagement;
        self.check_op(op, ns)?;
        if ranges.is_empty() {
            return Err(Error::Invalid("no Dataset Management ranges".into()));
        }
        let limits = self.nvm().limits;
        for r in ranges {
            check_dsm_range(ns, r, attributes, &limits)?;
        }
        let mut start = 0;
        while start < ranges.len() {
            let n = dsm_group(&ranges[start..], attributes, &limits);
            let group = &ranges[start..start + n];
            let len = n * DSM_RANGE_LEN;
            let mut list = self.shared().space.alloc(len)?;
            for (e, r) in (list.as_mut_slice().chunks_exact_mut(DSM_RANGE_LEN)).zip(group) {
                e.copy_from_slice(&r.to_bytes());
            }
            self.run_list(op, ns, 0, attributes, list, len)?;
            start += n;
        }
        Ok(())
    }

    /// Deallocates (trims) the given `(lba, blocks)` ranges and waits:
    /// Dataset Management with the Deallocate attribute, ranges longer
    /// than one DSM range may be (`u32::MAX` blocks, or the controller's
    /// DMRSL or DMSL) split into several. See
    /// [`dataset_management`](Self::dataset_management).
    pub fn deallocate(&mut self, ns: &Namespace, ranges: &[(u64, u64)]) -> Result<(), Error> {
        self.check_op(Op::DatasetManagement, ns)?;
        if ranges.is_empty() {
            return Err(Error::Invalid("no ranges to deallocate".into()));
        }
        let limits = &self.nvm().limits;
        let max = u64::from(limits.dsm_range_blocks.unwrap_or(u32::MAX))
            .min(limits.dsm_blocks.unwrap_or(u64::MAX))
            .max(1);
        let mut pieces = Vec::with_capacity(ranges.len());
        for &(lba, blocks) in ranges {
            check_range(ns, lba, blocks)?;
            let mut at = 0;
            while at < blocks {
                let n = (blocks - at).min(max);
                // n <= max <= u32::MAX.
                pieces.push(DsmRange::new(lba + at, n as u32));
                at += n;
            }
        }
        self.dataset_management(ns, &pieces, DsmAttributes::DEALLOCATE)
    }

    /// Refuses `op` on `ns` if the controller does not support it, if the
    /// driver refuses it on a zoned namespace (Write Uncorrectable, Copy),
    /// or if it is a Zone Append and `ns` is not zoned.
    pub(super) fn check_op(&self, op: Op, ns: &Namespace) -> Result<(), Error> {
        if let Some(command) = op.optional_command() {
            if !self.nvm().commands.contains(command) {
                return Err(Error::UnsupportedCommand { command });
            }
        }
        if op.refused_on_zoned() && ns.is_zoned() {
            return Err(Error::ZonedNamespace { nsid: ns.id() });
        }
        if matches!(op, Op::ZoneAppend { .. }) && !ns.is_zoned() {
            return Err(Error::NotZoned { nsid: ns.id() });
        }
        Ok(())
    }

    /// Whether the queue pair may submit `op` on `ns` now: the controller
    /// running (after recovering from a reset), and the op allowed.
    pub(super) fn admit(&mut self, op: Op, ns: &Namespace) -> Result<(), Error> {
        if let Some(e) = self.shared().refusal() {
            return Err(e);
        }
        self.recover_if_reset()?;
        if self.shared().is_disabled() {
            return Err(self.shared().stopped_error());
        }
        self.check_op(op, ns)
    }

    /// Blocks one command of `op` (without data) covers at most.
    fn blocks_per_command(&self, op: Op, ns: &Namespace) -> u64 {
        let l = &self.nvm().limits;
        let bytes = match op {
            Op::Verify => l.verify_bytes,
            Op::WriteUncorrectable => l.write_uncorrectable_bytes,
            _ => None,
        };
        NvmLimits::blocks_per_command(bytes, ns.block_size())
    }

    /// Runs a command without data over `blocks` blocks to completion, in
    /// waves of as many commands as the queue pair has free slots.
    fn run_without_data(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        blocks: u64,
    ) -> Result<(), Error> {
        self.check_op(op, ns)?;
        check_range(ns, lba, blocks)?;
        let per = self.blocks_per_command(op, ns);
        let mut done = 0;
        while done < blocks {
            let slots = self.slots().free_slots().max(1) as u64;
            let n = (blocks - done).min(per.saturating_mul(slots));
            let at = lba + done;
            let r = self
                .submit_without_data(op, ns, at, n, IoBuf::Raw, Tag::Blocking)
                .map_err(|(e, _)| e)
                .and_then(|()| self.wait_blocking());
            if let Err(e) = r {
                if n == blocks {
                    return Err(e);
                }
                return Err(Error::At {
                    lba: at,
                    blocks: n,
                    source: Box::new(e),
                });
            }
            done += n;
        }
        Ok(())
    }

    /// Runs a Copy or Dataset Management whose first `len` bytes of `list`
    /// are its range list to completion. The list is the request's own
    /// buffer: freed when it completes, kept out of reach if the
    /// controller could not be stopped.
    fn run_list(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        attributes: DsmAttributes,
        list: crate::mem::DmaBuf,
        len: usize,
    ) -> Result<(), Error> {
        self.submit_list(
            op,
            ns,
            lba,
            attributes,
            IoBuf::Dma(list),
            len,
            Tag::Blocking,
        )
        .map_err(|(e, _)| e)?;
        self.wait_blocking()
    }

    /// [`submit`](Self::submit) of a request that moves no block data:
    /// Verify, Write Uncorrectable, Copy, Dataset Management.
    #[allow(clippy::result_large_err)]
    pub(super) fn submit_command(&mut self, io: Io) -> Result<(), (Error, Io)> {
        io.submit_with(|io, buf| {
            let tagged = Tag::Caller(io.tag);
            match io.op {
                Op::Verify | Op::WriteUncorrectable => {
                    let blocks = io.len as u64 / io.ns.block_size();
                    self.submit_without_data(io.op, &io.ns, io.lba, blocks, buf, tagged)
                }
                _ => {
                    let n = buf.len();
                    self.submit_list(io.op, &io.ns, io.lba, io.attributes, buf, n, tagged)
                }
            }
        })
    }

    /// Queues the commands of a request without data over `blocks` blocks
    /// at `lba`, split at the command's limit; the request completes when
    /// all have. All or nothing: on error nothing is queued.
    fn submit_without_data(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        blocks: u64,
        buf: IoBuf,
        tag: Tag,
    ) -> Result<(), (Error, IoBuf)> {
        if let Err(e) = self
            .admit(op, ns)
            .and_then(|()| check_range(ns, lba, blocks))
        {
            return Err((e, buf));
        }
        let per = self.blocks_per_command(op, ns);
        let children = blocks.div_ceil(per);
        let depth = self.slots().depth() as u64;
        if children > depth {
            let bs = ns.block_size();
            return Err((
                Error::TooLarge {
                    len: blocks.saturating_mul(bs),
                    max: per.saturating_mul(depth).saturating_mul(bs),
                },
                buf,
            ));
        }
        // children <= depth, a usize.
        let children = children as usize;
        let free = self.slots().free_slots();
        if children > free {
            return Err((
                Error::QueueFull {
                    needed: children,
                    free,
                },
                buf,
            ));
        }
        let (opcode, _, what, _) = op_parts(op);
        let pending = Pending::new(buf, tag, false, children as u32, what);
        let req = match self.slots_mut().start_request(pending) {
            Ok(req) => req,
            Err(buf) => return Err((Error::QueueFull { needed: 1, free: 0 }, buf)),
        };
        self.start_batch();
        let (mut at, end) = (lba, lba + blocks);
        while at < end {
            let Some((cid, _)) = self.slots_mut().pop() else {
                // Not reached: the free slots were counted above.
                self.unwind_batch();
                let buf = self.slots_mut().cancel(req);
                return Err((
                    Error::QueueFull {
                        needed: children,
                        free: 0,
                    },
                    buf,
                ));
            };
            // n <= 65536 blocks.
            let n = (end - at).min(per);
            let id = self.slots_mut().assign(cid, req);
            let mut cmd = Command::blocks(opcode, ns.id(), at, n as u32, false);
            cmd.set_cid(id);
            self.batch_push(cid, &cmd);
            at += n;
        }
        self.commit_batch();
        Ok(())
    }

    /// Queues a Copy (to `lba`) or Dataset Management whose range list is
    /// the first `len` bytes of `buf`, after checking the ranges against
    /// the namespace and the limits. One command; on error nothing is
    /// queued.
    #[allow(clippy::too_many_arguments)]
    fn submit_list(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        attributes: DsmAttributes,
        buf: IoBuf,
        len: usize,
        tag: Tag,
    ) -> Result<(), (Error, IoBuf)> {
        if let Err(e) = self.admit(op, ns) {
            return Err((e, buf));
        }
        let checked = match op {
            Op::Copy => decode::<COPY_RANGE_LEN, _>(&buf, len, CopyRange::from_bytes)
                .and_then(|ranges| check_copy(ns, &ranges, lba).map(|()| ranges.len())),
            Op::DatasetManagement => decode::<DSM_RANGE_LEN, _>(&buf, len, DsmRange::from_bytes)
                .and_then(|ranges| {
                    check_dsm_list(ns, &ranges, attributes, &self.nvm().limits)
                        .map(|()| ranges.len())
                }),
            _ => Err(Error::Invalid(format!("{op:?} has no range list"))),
        };
        let count = match checked {
            Ok(n) => n,
            Err(e) => return Err((e, buf)),
        };
        let Some(seg) = buf.prefix(len) else {
            return Err((
                Error::Invalid("range list longer than its buffer".into()),
                buf,
            ));
        };
        if !self.sgl_any_alignment() && seg.addr.raw() & 3 != 0 {
            return Err((
                Error::Invalid("the range list must be dword (4-byte) aligned".into()),
                buf,
            ));
        }
        let free = self.slots().free_slots();
        if free == 0 {
            return Err((Error::QueueFull { needed: 1, free }, buf));
        }
        let (_, _, what, _) = op_parts(op);
        let pending = Pending::new(buf, tag, false, 1, what);
        let req = match self.slots_mut().start_request(pending) {
            Ok(req) => req,
            Err(buf) => return Err((Error::QueueFull { needed: 1, free: 0 }, buf)),
        };
        let (cid, dp) = match self.pop_mapped(seg, Direction::ToDevice) {
            Ok(c) => c,
            Err(None) => {
                let buf = self.slots_mut().cancel(req);
                return Err((Error::QueueFull { needed: 1, free: 0 }, buf));
            }
            Err(Some(e)) => {
                let buf = self.slots_mut().cancel(req);
                return Err((e.into(), buf));
            }
        };
        let id = self.slots_mut().assign(cid, req);
        // count is 1 to 256 (checked).
        let mut cmd = match op {
            Op::DatasetManagement => Command::dataset_management(ns.id(), count as u32, attributes),
            _ => Command::copy(ns.id(), lba, count as u32),
        };
        cmd.set_cid(id);
        cmd.set_data(dp);
        self.enqueue(&cmd);
        Ok(())
    }
}

/// The ranges of the first `len` bytes of `buf`, `N` bytes each.
fn decode<const N: usize, T>(
    buf: &IoBuf,
    len: usize,
    parse: fn(&[u8; N]) -> T,
) -> Result<Vec<T>, Error> {
    let bytes = buf.as_slice();
    if len == 0 || len % N != 0 || len > bytes.len() {
        return Err(Error::Invalid(format!(
            "a range list of {len} bytes (a buffer of {}): not a non-zero number of {N}-byte ranges",
            bytes.len()
        )));
    }
    Ok(bytes[..len]
        .chunks_exact(N)
        .filter_map(|c| <&[u8; N]>::try_from(c).ok().map(parse))
        .collect())
}

/// Checks a Copy of `sources` to `dest` against the command's fields, the
/// namespace's size and its copy limits.
fn check_copy(ns: &Namespace, sources: &[CopyRange], dest: u64) -> Result<(), Error> {
    let limits = ns.copy_limits();
    let count = sources.len();
    if count == 0 {
        return Err(Error::Invalid("no Copy source ranges".into()));
    }
    over(
        "Copy source ranges",
        count as u64,
        MAX_COPY_RANGES as u64,
        "the command's 8-bit NR field",
    )?;
    over(
        "Copy source ranges",
        count as u64,
        limits.max_ranges() as u64,
        "Identify Namespace MSRC",
    )?;
    let mut total = 0u64;
    for r in sources {
        let blocks = u64::from(r.blocks);
        over(
            "Copy source range length in blocks",
            blocks,
            MAX_BLOCKS_PER_COMMAND,
            "the descriptor's 16-bit NLB field",
        )?;
        over(
            "Copy source range length in blocks",
            blocks,
            limits.max_range_blocks(),
            "Identify Namespace MSSRL",
        )?;
        check_range(ns, r.lba, blocks)?;
        total += blocks;
    }
    if let Some(max) = limits.max_blocks() {
        over(
            "Copy length in blocks",
            total,
            max,
            "Identify Namespace MCL",
        )?;
    }
    check_range(ns, dest, total)
}

/// Checks one Dataset Management range: inside the namespace, and for a
/// deallocation at most DMRSL blocks.
fn check_dsm_range(
    ns: &Namespace,
    r: &DsmRange,
    attributes: DsmAttributes,
    limits: &NvmLimits,
) -> Result<(), Error> {
    check_range(ns, r.lba, u64::from(r.blocks))?;
    if !attributes.deallocate {
        return Ok(());
    }
    if let Some(max) = limits.dsm_range_blocks {
        over(
            "Dataset Management range length in blocks",
            u64::from(r.blocks),
            u64::from(max),
            "Identify Controller (NVM) DMRSL",
        )?;
    }
    if let Some(max) = limits.dsm_blocks {
        over(
            "Dataset Management length in blocks",
            u64::from(r.blocks),
            max,
            "Identify Controller (NVM) DMSL",
        )?;
    }
    Ok(())
}

/// Checks the ranges of one Dataset Management command.
fn check_dsm_list(
    ns: &Namespace,
    ranges: &[DsmRange],
    attributes: DsmAttributes,
    limits: &NvmLimits,
) -> Result<(), Error> {
    if ranges.is_empty() {
        return Err(Error::Invalid("no Dataset Management ranges".into()));
    }
    let count = ranges.len() as u64;
    over(
        "Dataset Management ranges",
        count,
        MAX_DSM_RANGES as u64,
        "the command's 8-bit NR field",
    )?;
    for r in ranges {
        check_dsm_range(ns, r, attributes, limits)?;
    }
    if attributes.deallocate {
        over(
            "Dataset Management ranges",
            count,
            u64::from(limits.dsm_ranges),
            "Identify Controller (NVM) DMRL",
        )?;
        if let Some(max) = limits.dsm_blocks {
            let total = ranges.iter().map(|r| u64::from(r.blocks)).sum();
            over(
                "Dataset Management length in blocks",
                total,
                max,
                "Identify Controller (NVM) DMSL",
            )?;
        }
    }
    Ok(())
}

/// How many of `ranges` (each checked with [`check_dsm_range`]) the next
/// Dataset Management command takes: at most 256, and for a deallocation
/// at most DMRL ranges and DMSL blocks (at least one range, which is no
/// longer than DMSL).
fn dsm_group(ranges: &[DsmRange], attributes: DsmAttributes, limits: &NvmLimits) -> usize {
    if !attributes.deallocate {
        return ranges.len().min(MAX_DSM_RANGES);
    }
    let max_ranges = usize::from(limits.dsm_ranges).clamp(1, MAX_DSM_RANGES);
    let max_blocks = limits.dsm_blocks.unwrap_or(u64::MAX);
    let mut total = 0u64;
    let mut n = 0;
    for r in ranges.iter().take(max_ranges) {
        total = total.saturating_add(u64::from(r.blocks));
        if n > 0 && total > max_blocks {
            break;
        }
        n += 1;
    }
    n.max(1)
}

/// `Err(OverLimit)` if `requested` is over `max`.
fn over(what: &'static str, requested: u64, max: u64, limit: &'static str) -> Result<(), Error> {
    if requested > max {
        return Err(Error::OverLimit {
            what,
            requested,
            max,
            limit,
        });
    }
    Ok(())
}
