//! The blocking calls of a queue pair: one request (or command) run to
//! completion on the asynchronous machinery of [`QueuePair`], on any memory
//! the caller lends for the duration of the call.
//!
//! Memory the controller cannot be pointed at is copied through a DMA
//! buffer: without SGLs, PRPs need every piece of a request to start and
//! end on a page boundary inside the request, and dword alignment (as do
//! dword-aligned SGLs). Most client SSDs take no SGLs.

use blk_dma::HostSeg;

use super::io::Op;
use super::{CmbBuf, Namespace, QueuePair};
use crate::nvme::cmd::{io, Command};
use crate::nvme::dptr::Shape;
use crate::Error;

/// The largest DMA buffer a blocking call copies through at a time.
const BOUNCE_MAX: u64 = 1 << 20;

impl QueuePair {
    /// Reads blocks starting at `lba` into `buf` (its length is a multiple
    /// of the block size) and waits. `buf` may be any memory: a
    /// [`DmaBuf`](crate::mem::DmaBuf)'s slice or registered memory is
    /// translated, other memory is mapped for the duration of the command
    /// (one coalesced IOVA range); memory the controller cannot be pointed
    /// at (not dword aligned, without byte-aligned SGLs) is copied through
    /// a DMA buffer.
    ///
    /// On a namespace formatted with metadata: as
    /// [`read_with_metadata`](Self::read_with_metadata) without a
    /// metadata buffer, so for extended LBAs (`buf` holds each block's
    /// data and metadata) or metadata that is the protection information
    /// alone (inserted and stripped by the controller); other formats
    /// need a metadata buffer.
    pub fn read(&mut self, ns: &Namespace, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        if ns.has_metadata() {
            return self.read_with_metadata(ns, lba, buf, &mut [], None);
        }
        // From the mutable borrow: the device writes through this address.
        let seg = HostSeg::from_mut_slice(buf);
        if !self.describable(&[seg]) {
            return self.read_bounced(ns, lba, &mut [buf]);
        }
        self.run_blocking(Op::Read, ns, lba, &[seg])
    }

    /// Writes `buf` to blocks starting at `lba` and waits; `fua` forces it
    /// to media before completion. On a zoned namespace the write must
    /// start at its zone's write pointer (else the controller fails it
    /// with Zone Invalid Write) and stay inside the zone (else it is
    /// refused before anything is submitted: [`Error::CrossesZone`]); it
    /// runs one command at a time, in order. On a namespace formatted with
    /// metadata, as [`read`](Self::read) says.
    pub fn write(&mut self, ns: &Namespace, lba: u64, buf: &[u8], fua: bool) -> Result<(), Error> {
        if ns.has_metadata() {
            return self.write_with_metadata(ns, lba, buf, &[], None, fua);
        }
        super::zns::check_zone_span(ns, lba, buf.len() as u64)?;
        let seg = HostSeg::from_slice(buf);
        if !self.describable(&[seg]) {
            return self.write_bounced(Op::Write { fua }, ns, lba, &[buf]);
        }
        self.run_blocking(Op::Write { fua }, ns, lba, &[seg])
    }

    /// Compares `buf` with the blocks starting at `lba` and waits: `Ok` if
    /// they hold the same bytes, else the controller's error, Compare
    /// Failure ([`Error::Command`] with status type 2h, code 85h; inside
    /// [`Error::At`] when a long compare ran in waves). Any memory and
    /// length (whole blocks), as for [`write`](Self::write): split at the
    /// maximum transfer. Refused before submission if the controller does
    /// not support Compare ([`Error::UnsupportedCommand`]).
    pub fn compare(&mut self, ns: &Namespace, lba: u64, buf: &[u8]) -> Result<(), Error> {
        self.check_op(Op::Compare, ns)?;
        if ns.has_metadata() {
            return self.compare_with_metadata(ns, lba, buf, &[], None);
        }
        let seg = HostSeg::from_slice(buf);
        if !self.describable(&[seg]) {
            return self.write_bounced(Op::Compare, ns, lba, &[buf]);
        }
        self.run_blocking(Op::Compare, ns, lba, &[seg])
    }

    /// Reads `len` bytes at `lba` into a controller memory buffer and waits:
    /// the controller moves the data within itself.
    pub fn read_cmb(
        &mut self,
        ns: &Namespace,
        lba: u64,
        buf: &mut CmbBuf,
        len: usize,
    ) -> Result<(), Error> {
        let seg = buf.seg(len);
        self.run_blocking(Op::Read, ns, lba, &[seg])
    }

    /// Writes `len` bytes of a controller memory buffer at `lba` and waits.
    pub fn write_cmb(
        &mut self,
        ns: &Namespace,
        lba: u64,
        buf: &CmbBuf,
        len: usize,
    ) -> Result<(), Error> {
        let seg = buf.seg(len);
        self.run_blocking(Op::Write { fua: false }, ns, lba, &[seg])
    }

    /// Reads into several buffers, filled in order (one request). Buffers
    /// of any alignment and length (whole blocks in all): where the
    /// controller cannot be pointed at them (no SGLs, and a buffer that
    /// does not end, or the next one start, on a page boundary; or not
    /// dword aligned), the data is copied through a DMA buffer.
    pub fn read_vectored(
        &mut self,
        ns: &Namespace,
        lba: u64,
        bufs: &mut [&mut [u8]],
    ) -> Result<(), Error> {
        // From the mutable borrows: the device writes through them.
        let segs: Vec<HostSeg> = bufs
            .iter_mut()
            .map(|b| HostSeg::from_mut_slice(b))
            .collect();
        if !self.describable(&segs) {
            return self.read_bounced(ns, lba, bufs);
        }
        self.run_blocking(Op::Read, ns, lba, &segs)
    }

    /// Writes several buffers, in order (one request); any alignment, as
    /// for [`read_vectored`](Self::read_vectored).
    pub fn write_vectored(
        &mut self,
        ns: &Namespace,
        lba: u64,
        bufs: &[&[u8]],
        fua: bool,
    ) -> Result<(), Error> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        super::zns::check_zone_span(ns, lba, total)?;
        let segs: Vec<HostSeg> = bufs.iter().map(|b| HostSeg::from_slice(b)).collect();
        if !self.describable(&segs) {
            return self.write_bounced(Op::Write { fua }, ns, lba, bufs);
        }
        self.run_blocking(Op::Write { fua }, ns, lba, &segs)
    }

    /// Whether this queue pair's data pointers can describe `segs` as
    /// they are: SGLs (dword aligned where the controller needs it), or
    /// PRPs, whose pieces meet at page boundaries. Device addresses keep
    /// the host's offsets within a page, so the host's layout decides.
    pub(super) fn describable(&self, segs: &[HostSeg]) -> bool {
        let dwords = || (segs.iter()).all(|s| (s.addr.raw_u64() | s.len) & 3 == 0);
        (self.sgl_any_alignment() || dwords())
            && (self.io_sgls() || Shape::of_segments(segs, self.shared().page).prp_ok)
    }

    /// Checks a copied request's length and range; returns the size of
    /// the DMA buffer to copy through (whole blocks).
    fn bounce_len(&self, ns: &Namespace, lba: u64, total: u64) -> Result<u64, Error> {
        let bs = ns.block_size();
        if total == 0 || total % bs != 0 {
            return Err(Error::Invalid(format!(
                "length {total} is not a non-zero multiple of the {bs}-byte block size"
            )));
        }
        check_range(ns, lba, total / bs)?;
        Ok(total.min((BOUNCE_MAX / bs).max(1) * bs))
    }

    /// [`write_vectored`](Self::write_vectored) (or a compare, `op`)
    /// through a DMA buffer.
    fn write_bounced(
        &mut self,
        op: Op,
        ns: &Namespace,
        lba: u64,
        bufs: &[&[u8]],
    ) -> Result<(), Error> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let step = self.bounce_len(ns, lba, total)?;
        let mut bounce = self.shared().space.alloc(step as usize)?;
        let mut src = Pieces::new(bufs.iter().map(|b| &b[..]));
        let mut done = 0u64;
        while done < total {
            let n = step.min(total - done);
            let b = &mut bounce.as_mut_slice()[..n as usize];
            src.copy_to(b);
            let at = lba + done / ns.block_size();
            let r = self.run_blocking(op, ns, at, &[HostSeg::from_slice(b)]);
            if let Err(e) = r {
                return Err(bounced_error(
                    e,
                    bounce,
                    at,
                    n / ns.block_size(),
                    step < total,
                ));
            }
            done += n;
        }
        Ok(())
    }

    /// [`read_vectored`](Self::read_vectored) through a DMA buffer.
    fn read_bounced(
        &mut self,
        ns: &Namespace,
        lba: u64,
        bufs: &mut [&mut [u8]],
    ) -> Result<(), Error> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        let step = self.bounce_len(ns, lba, total)?;
        let mut bounce = self.shared().space.alloc(step as usize)?;
        let mut dst = Pieces::new(bufs.iter_mut().map(|b| &mut b[..]));
        let mut done = 0u64;
        while done < total {
            let n = step.min(total - done);
            let b = &mut bounce.as_mut_slice()[..n as usize];
            let at = lba + done / ns.block_size();
            let r = self.run_blocking(Op::Read, ns, at, &[HostSeg::from_mut_slice(b)]);
            if let Err(e) = r {
                return Err(bounced_error(
                    e,
                    bounce,
                    at,
                    n / ns.block_size(),
                    step < total,
                ));
            }
            dst.copy_from(b);
            done += n;
        }
        Ok(())
    }

    /// Flushes the volatile write cache of `ns`.
    pub fn flush_cache(&mut self, ns: &Namespace) -> Result<(), Error> {
        self.exec(Command::new(io::FLUSH, ns.id()), "Flush")
    }

    /// Writes zeroes to `blocks` blocks at `lba` (split at 65536 blocks per
    /// command, or the controller's Write Zeroes size limit, one command
    /// at a time). Refused on a controller without Write Zeroes
    /// ([`Error::UnsupportedCommand`]). On a zoned namespace, as a write:
    /// at the zone's write pointer, inside one zone ([`Error::CrossesZone`]).
    pub fn write_zeroes(&mut self, ns: &Namespace, lba: u64, blocks: u64) -> Result<(), Error> {
        use crate::nvme::nvm::{NvmLimits, OptionalCommand};
        if !self.nvm().commands.contains(OptionalCommand::WriteZeroes) {
            return Err(Error::UnsupportedCommand {
                command: OptionalCommand::WriteZeroes,
            });
        }
        check_range(ns, lba, blocks)?;
        super::zns::check_zone_span(ns, lba, blocks.saturating_mul(ns.block_size()))?;
        let per =
            NvmLimits::blocks_per_command(self.nvm().limits.write_zeroes_bytes, ns.block_size());
        let mut done = 0;
        while done < blocks {
            let n = (blocks - done).min(per);
            self.exec(
                Command::write_zeroes(ns.id(), lba + done, n as u32, false),
                "Write Zeroes",
            )?;
            done += n;
        }
        Ok(())
    }
}

/// The error of a copied request's part at `lba` (`blocks` long), named
/// by its range if the request had several parts. The DMA buffer is
/// leaked if the controller could not be stopped (the device may still
/// reach it).
fn bounced_error(
    e: Error,
    bounce: crate::mem::DmaBuf,
    lba: u64,
    blocks: u64,
    parts: bool,
) -> Error {
    if matches!(e, Error::Dead) {
        core::mem::forget(bounce);
    }
    if parts {
        Error::At {
            lba,
            blocks,
            source: Box::new(e),
        }
    } else {
        e
    }
}

/// Buffers taken in order, byte ranges at a time.
struct Pieces<I, B> {
    bufs: I,
    cur: Option<B>,
    at: usize,
}

impl<I, B> Pieces<I, B> {
    fn new(bufs: I) -> Self {
        Self {
            bufs,
            cur: None,
            at: 0,
        }
    }
}

impl<'a, I: Iterator<Item = &'a [u8]>> Pieces<I, &'a [u8]> {
    /// Fills `out` with the next bytes (the buffers hold enough).
    fn copy_to(&mut self, out: &mut [u8]) {
        let mut o = 0;
        while o < out.len() {
            let Some(cur) = self.cur.filter(|c| self.at < c.len()) else {
                self.cur = self.bufs.next();
                self.at = 0;
                if self.cur.is_none() {
                    return;
                }
                continue;
            };
            let n = (cur.len() - self.at).min(out.len() - o);
            out[o..o + n].copy_from_slice(&cur[self.at..self.at + n]);
            self.at += n;
            o += n;
        }
    }
}

impl<'a, I: Iterator<Item = &'a mut [u8]>> Pieces<I, &'a mut [u8]> {
    /// Copies `src` into the next bytes (the buffers have room).
    fn copy_from(&mut self, src: &[u8]) {
        let mut s = 0;
        while s < src.len() {
            let cur = match &mut self.cur {
                Some(c) if self.at < c.len() => c,
                _ => {
                    self.cur = self.bufs.next();
                    self.at = 0;
                    if self.cur.is_none() {
                        return;
                    }
                    continue;
                }
            };
            let n = (cur.len() - self.at).min(src.len() - s);
            cur[self.at..self.at + n].copy_from_slice(&src[s..s + n]);
            self.at += n;
            s += n;
        }
    }
}

pub(super) fn check_range(ns: &Namespace, lba: u64, blocks: u64) -> Result<(), Error> {
    if blocks == 0 {
        return Err(Error::Invalid("zero-length range".into()));
    }
    if lba.checked_add(blocks).is_none_or(|end| end > ns.blocks()) {
        return Err(Error::Invalid(format!(
            "LBA range {lba}+{blocks} past the end of namespace {} ({} blocks)",
            ns.id(),
            ns.blocks()
        )));
    }
    Ok(())
}
