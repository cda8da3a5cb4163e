//! Passthrough: admin and I/O commands built by the application, with a
//! data buffer of the driver's ([`DmaBuf`], moved in and handed back), and
//! the admin commands operators use (any log page, Format NVM, the
//! firmware slot log).

use std::sync::Arc;

use blk_dma::Iova;

use super::{Controller, QueuePair};
use crate::mem::{DmaBuf, DmaSpace};
use crate::nvme::cmd::{admin, Command};
use crate::nvme::log::FirmwareSlotLog;
use crate::nvme::spec::DataPtr;
use crate::Error;

/// Bytes of a memory page as the driver programs it (CC.MPS).
const PAGE: u64 = 4096;
/// PRP entries in one list page.
const PRPS_PER_PAGE: u64 = PAGE / 8;

/// The data pointer of the first `len` bytes of `buf`: PRP1, and PRP2 or a
/// PRP list (a page from `space`, returned: it must outlive the command).
/// At most one list page: up to 2 MiB.
pub(super) fn prps(
    space: &Arc<DmaSpace>,
    buf: &DmaBuf,
    len: usize,
) -> Result<(DataPtr, Option<DmaBuf>), Error> {
    if len == 0 || len > buf.len() {
        return Err(Error::Invalid(format!(
            "a transfer of {len} bytes from a buffer of {}",
            buf.len()
        )));
    }
    let start = buf.iova().raw();
    let first = PAGE - start % PAGE;
    let len = len as u64;
    if len <= first {
        return Ok((prp(start, 0), None));
    }
    let pages = (len - first).div_ceil(PAGE);
    if pages == 1 {
        return Ok((prp(start, start + first), None));
    }
    if pages > PRPS_PER_PAGE {
        return Err(Error::TooLarge {
            len,
            max: first + PRPS_PER_PAGE * PAGE,
        });
    }
    let mut list = space.alloc(PAGE as usize)?;
    for (k, e) in list
        .as_mut_slice()
        .chunks_exact_mut(8)
        .take(pages as usize)
        .enumerate()
    {
        e.copy_from_slice(&(start + first + k as u64 * PAGE).to_le_bytes());
    }
    let list_iova = list.iova().raw();
    Ok((prp(start, list_iova), Some(list)))
}

fn prp(prp1: u64, prp2: u64) -> DataPtr {
    DataPtr::Prp {
        prp1: Iova::new(prp1),
        prp2: Iova::new(prp2),
    }
}

/// Leaks `bufs` if the controller could not be stopped (the device may
/// still access them), else drops them.
fn keep_out_of_reach(dead: bool, bufs: impl IntoIterator<Item = DmaBuf>) {
    for b in bufs {
        if dead {
            core::mem::forget(b);
        } else {
            drop(b);
        }
    }
}

impl Controller {
    /// Runs an admin command the application built (opcode, namespace and
    /// command dwords as given; the command ID and data pointer are the
    /// driver's). With `data`, the first `len` bytes of it are the
    /// command's data, in the direction the opcode says; the buffer comes
    /// back with the completion's dword 0. A command that fails gives the
    /// buffer up (it is dropped, or kept out of reach if the controller
    /// could not be stopped).
    pub fn admin_passthru(
        &self,
        mut cmd: Command,
        data: Option<(DmaBuf, usize)>,
    ) -> Result<(u32, Option<DmaBuf>), Error> {
        let s = &self.shared;
        let (buf, list) = match data {
            Some((buf, len)) => {
                let (dp, list) = prps(&s.space, &buf, len)?;
                cmd.set_data(dp);
                (Some(buf), list)
            }
            None => (None, None),
        };
        match s.admin(cmd, None, "admin passthrough") {
            Ok(c) => {
                keep_out_of_reach(false, list);
                Ok((c.result, buf))
            }
            Err(e) => {
                keep_out_of_reach(s.is_dead(), buf.into_iter().chain(list));
                Err(e)
            }
        }
    }

    /// Get Log Page: `len` bytes (a multiple of 4, at most 2 MiB) of log
    /// `lid` from byte `offset` (a multiple of 4), with log specific field
    /// `lsp`, for namespace `nsid` (`0xffff_ffff`: the controller's).
    pub fn get_log_page(
        &self,
        lid: u8,
        nsid: u32,
        lsp: u8,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, Error> {
        if len == 0 || len % 4 != 0 || offset % 4 != 0 {
            return Err(Error::Invalid(format!(
                "log page length {len} and offset {offset} must be non-zero multiples of 4"
            )));
        }
        let numd = (len / 4 - 1) as u32;
        let mut cmd = Command::new(admin::GET_LOG_PAGE, nsid);
        cmd.cdw10 = u32::from(lid) | u32::from(lsp & 0x7f) << 8 | (numd & 0xffff) << 16;
        cmd.cdw11 = numd >> 16;
        cmd.cdw12 = offset as u32;
        cmd.cdw13 = (offset >> 32) as u32;
        let buf = self.shared.space.alloc(len)?;
        let (_, buf) = self.admin_passthru(cmd, Some((buf, len)))?;
        Ok(buf
            .map(|b| b.as_slice()[..len].to_vec())
            .unwrap_or_default())
    }

    /// The Firmware Slot Information log.
    pub fn firmware_log(&self) -> Result<FirmwareSlotLog, Error> {
        let b = self.get_log_page(
            crate::nvme::cmd::log_page::FIRMWARE_SLOT,
            0xffff_ffff,
            0,
            0,
            512,
        )?;
        Ok(FirmwareSlotLog::parse(&b))
    }

    /// Format NVM: namespace `nsid` (`0xffff_ffff`: all) to LBA format
    /// `lbaf` with secure erase setting `ses` (0 none, 1 user data erase,
    /// 2 cryptographic erase). Every block's data is lost. Namespaces
    /// opened before (their [`Namespace`](super::Namespace) values) must
    /// be opened again: the block size may have changed. Bounded by
    /// `Config::admin_timeout`, which a real disk's format may need raised.
    pub fn format_nvm(&self, nsid: u32, lbaf: u8, ses: u8) -> Result<(), Error> {
        if lbaf > 63 || ses > 7 {
            return Err(Error::Invalid(format!(
                "LBA format {lbaf} (0 to 63) or secure erase setting {ses} (0 to 7)"
            )));
        }
        let mut cmd = Command::new(admin::FORMAT_NVM, nsid);
        cmd.cdw10 = u32::from(lbaf & 0xf) | u32::from(ses) << 9 | u32::from(lbaf >> 4) << 12;
        self.admin_passthru(cmd, None).map(|_| ())
    }
}

impl QueuePair {
    /// Runs an I/O command the application built (opcode, namespace and
    /// command dwords as given; the command ID and data pointer are the
    /// driver's) to completion. With `data`, the first `len` bytes of it
    /// are the command's data, in the direction the opcode says, and the
    /// buffer comes back; a command that fails gives it up (it is dropped,
    /// or kept out of reach if the controller could not be stopped).
    pub fn io_passthru(
        &mut self,
        mut cmd: Command,
        data: Option<(DmaBuf, usize)>,
    ) -> Result<Option<DmaBuf>, Error> {
        let (buf, list) = match data {
            Some((buf, len)) => {
                let (dp, list) = prps(&self.shared.space, &buf, len)?;
                cmd.set_data(dp);
                (Some(buf), list)
            }
            None => (None, None),
        };
        match self.exec(cmd, "I/O passthrough") {
            Ok(()) => {
                keep_out_of_reach(false, list);
                Ok(buf)
            }
            Err(e) => {
                keep_out_of_reach(
                    matches!(e, Error::Dead) || self.shared.is_dead(),
                    buf.into_iter().chain(list),
                );
                Err(e)
            }
        }
    }
}
