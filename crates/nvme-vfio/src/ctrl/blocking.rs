//! The blocking calls of a queue pair: one request (or command) run to
//! completion on the asynchronous machinery of [`QueuePair`], on any memory
//! the caller lends for the duration of the call.

use blk_dma::HostSeg;

use super::io::Op;
use super::{CmbBuf, Namespace, QueuePair};
use crate::nvme::cmd::{io, Command};
use crate::Error;

impl QueuePair {
    /// Reads blocks starting at `lba` into `buf` (its length is a multiple
    /// of the block size) and waits. `buf` may be any memory: a
    /// [`DmaBuf`](crate::mem::DmaBuf)'s slice or registered memory is
    /// translated, other memory is mapped for the duration of the command
    /// (one coalesced IOVA range).
    pub fn read(&mut self, ns: &Namespace, lba: u64, buf: &mut [u8]) -> Result<(), Error> {
        // From the mutable borrow: the device writes through this address.
        let seg = HostSeg::from_mut_slice(buf);
        self.run_blocking(Op::Read, ns, lba, &[seg])
    }

    /// Writes `buf` to blocks starting at `lba` and waits; `fua` forces it
    /// to media before completion.
    pub fn write(&mut self, ns: &Namespace, lba: u64, buf: &[u8], fua: bool) -> Result<(), Error> {
        let seg = HostSeg::from_slice(buf);
        self.run_blocking(Op::Write { fua }, ns, lba, &[seg])
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

    /// Reads into several buffers, filled in order (one request).
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
        self.run_blocking(Op::Read, ns, lba, &segs)
    }

    /// Writes several buffers, in order (one request).
    pub fn write_vectored(
        &mut self,
        ns: &Namespace,
        lba: u64,
        bufs: &[&[u8]],
        fua: bool,
    ) -> Result<(), Error> {
        let segs: Vec<HostSeg> = bufs.iter().map(|b| HostSeg::from_slice(b)).collect();
        self.run_blocking(Op::Write { fua }, ns, lba, &segs)
    }

    /// Flushes the volatile write cache of `ns`.
    pub fn flush_cache(&mut self, ns: &Namespace) -> Result<(), Error> {
        self.exec(Command::new(io::FLUSH, ns.id()), "Flush")
    }

    /// Writes zeroes to `blocks` blocks at `lba` (split at 65536 blocks per
    /// command).
    pub fn write_zeroes(&mut self, ns: &Namespace, lba: u64, blocks: u64) -> Result<(), Error> {
        check_range(ns, lba, blocks)?;
        let mut done = 0;
        while done < blocks {
            let n = (blocks - done).min(1 << 16);
            self.exec(
                Command::write_zeroes(ns.id(), lba + done, n as u32, false),
                "Write Zeroes",
            )?;
            done += n;
        }
        Ok(())
    }

    /// Deallocates (trims) the given `(lba, blocks)` ranges: one Dataset
    /// Management command per 256 ranges. Each range holds at most
    /// `u32::MAX` blocks.
    pub fn deallocate(&mut self, ns: &Namespace, ranges: &[(u64, u64)]) -> Result<(), Error> {
        if ranges.is_empty() {
            return Err(Error::Invalid("no ranges to deallocate".into()));
        }
        for &(lba, blocks) in ranges {
            check_range(ns, lba, blocks)?;
            if blocks > u32::MAX as u64 {
                return Err(Error::Invalid(format!(
                    "range of {blocks} blocks is longer than a DSM range"
                )));
            }
        }
        let mut buf = self.shared.space.alloc(4096)?;
        for group in ranges.chunks(256) {
            let b = buf.as_mut_slice();
            for (i, &(lba, blocks)) in group.iter().enumerate() {
                let e = &mut b[16 * i..16 * i + 16];
                e[0..4].fill(0);
                e[4..8].copy_from_slice(&(blocks as u32).to_le_bytes());
                e[8..16].copy_from_slice(&lba.to_le_bytes());
            }
            let mut cmd = Command::deallocate(ns.id(), group.len() as u32);
            cmd.set_data(crate::nvme::spec::DataPtr::Prp {
                prp1: buf.iova(),
                prp2: blk_dma::Iova::new(0),
            });
            // `buf` outlives the command: exec returns only when it is done
            // or the controller is stopped; if the controller could not be
            // stopped, the device may still read it: leak it.
            if let Err(e) = self.exec(cmd, "Dataset Management (Deallocate)") {
                if matches!(e, Error::Dead) {
                    core::mem::forget(buf);
                }
                return Err(e);
            }
        }
        Ok(())
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
