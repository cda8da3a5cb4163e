//! Passthrough: admin and I/O commands built by the application, with a
//! data buffer of the driver's ([`DmaBuf`], moved in and handed back), and
//! the admin commands operators use (any log page, Format NVM, the
//! firmware slot log).
//!
//! The safe calls know how many bytes each command they take moves (from
//! its opcode and dwords), check that the buffer holds them, and build the
//! data pointer themselves: the application's data pointer, metadata
//! pointer, PSDT and fused bits are never sent. Commands that would give
//! the controller other memory or take the driver's own state (queue
//! creation and deletion, Doorbell Buffer Config, Asynchronous Event
//! Requests, the Host Memory Buffer, the number of queues and the event
//! configuration) are refused, and so are data transfers of commands whose
//! length the driver does not know. The `unsafe` variants send any
//! command, on the caller's word.

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
    if !buf.in_space(space) {
        return Err(Error::Invalid(
            "a DMA buffer of another DMA space: its IOVA means nothing to this controller".into(),
        ));
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

/// Which queue a passthrough command is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Queue {
    Admin,
    /// An I/O queue, for a namespace of this block size.
    Io(u64),
}

/// Bytes of feature data at most (the largest Get/Set Features data
/// structure is 4 KiB).
const FEATURE_DATA: usize = 4096;

/// What a command moves.
#[derive(Clone, Copy, Debug)]
enum Moves {
    /// No data the driver knows of.
    Nothing,
    /// Exactly this many bytes.
    Bytes(usize),
    /// Up to this many bytes, or nothing (Get/Set Features: data only for
    /// some features; without a buffer the data pointer is zero, an IOVA
    /// the driver never maps).
    Optional(usize),
}

/// What `cmd` moves, or why the safe passthrough refuses it.
fn transfer_len(q: Queue, cmd: &Command) -> Result<Moves, Error> {
    use crate::nvme::cmd::io;
    let refuse = |why: &str| {
        Err(Error::Invalid(format!(
            "passthrough of opcode {:#04x} refused: {why}",
            cmd.opcode()
        )))
    };
    let dwords = |n: u64| Ok(Moves::Bytes(((n + 1) * 4) as usize));
    match q {
        Queue::Admin => match cmd.opcode() {
            admin::DELETE_SQ | admin::CREATE_SQ | admin::DELETE_CQ | admin::CREATE_CQ => {
                refuse("the driver owns the queues")
            }
            admin::ASYNC_EVENT => refuse("the driver keeps the event requests"),
            admin::DOORBELL_BUFFER_CONFIG => refuse("the driver owns the shadow doorbells"),
            admin::IDENTIFY => Ok(Moves::Bytes(4096)),
            admin::GET_LOG_PAGE => {
                dwords(u64::from(cmd.cdw10 >> 16) | u64::from(cmd.cdw11 & 0xffff) << 16)
            }
            admin::SET_FEATURES | admin::GET_FEATURES => match cmd.cdw10 as u8 {
                // Number of Queues, Asynchronous Event Configuration, Host
                // Memory Buffer: the driver's, or memory for the device.
                0x07 | 0x0b if cmd.opcode() == admin::SET_FEATURES => {
                    refuse("the driver sets this feature")
                }
                0x0d if cmd.opcode() == admin::SET_FEATURES => {
                    refuse("a host memory buffer gives the controller memory")
                }
                _ => Ok(Moves::Optional(FEATURE_DATA)),
            },
            // Firmware Image Download: NUMD + 1 dwords.
            0x11 => dwords(u64::from(cmd.cdw10)),
            // Namespace Management, Namespace Attachment: one 4 KiB structure.
            0x0d | 0x15 => Ok(Moves::Bytes(4096)),
            // Security Send / Receive: AL bytes.
            0x81 | 0x82 if cmd.cdw11 > 0 => Ok(Moves::Bytes(cmd.cdw11 as usize)),
            // Abort, Firmware Commit, Device Self-test, Keep Alive, Format
            // NVM, Sanitize, and anything else: no data.
            _ => Ok(Moves::Nothing),
        },
        Queue::Io(block) => match cmd.opcode() {
            io::READ | io::WRITE | io::COMPARE | io::ZONE_APPEND => Ok(Moves::Bytes(
                ((u64::from(cmd.cdw12 & 0xffff) + 1) * block) as usize,
            )),
            // Dataset Management: NR + 1 ranges of 16 bytes.
            io::DSM => Ok(Moves::Bytes(((cmd.cdw10 & 0xff) as usize + 1) * 16)),
            // Copy: NR + 1 source range descriptors, 32 bytes each in
            // format 0.
            io::COPY => match (cmd.cdw12 >> 8) & 0xf {
                0 => Ok(Moves::Bytes(((cmd.cdw12 & 0xff) as usize + 1) * 32)),
                _ => refuse(
                    "a Copy descriptor format other than 0, whose length the driver does not know",
                ),
            },
            // Zone Management Receive: NUMD + 1 dwords.
            io::ZONE_MGMT_RECV => dwords(u64::from(cmd.cdw12)),
            // Zone Management Send: no data but for Set Zone Descriptor
            // Extension (10h), whose size is the namespace's.
            io::ZONE_MGMT_SEND if cmd.cdw13 & 0xff == 0x10 => {
                refuse("Set Zone Descriptor Extension, whose length the driver does not know")
            }
            _ => Ok(Moves::Nothing),
        },
    }
}

/// The command as the safe passthrough sends it: no data or metadata
/// pointer, no PSDT, not fused.
fn sanitized(mut cmd: Command) -> Command {
    cmd.cdw0 &= !(0x3 << 8 | 0x3 << 14);
    cmd.dptr = [0; 2];
    cmd.mptr = 0;
    cmd
}

/// Checks `data` against what `cmd` moves; returns the length to map.
fn checked(
    q: Queue,
    cmd: &Command,
    data: &Option<(DmaBuf, usize)>,
) -> Result<Option<usize>, Error> {
    let op = cmd.opcode();
    let want = transfer_len(q, cmd)?;
    match (want, data) {
        (Moves::Nothing | Moves::Optional(_), None) => Ok(None),
        (Moves::Nothing, Some(_)) => Err(Error::Invalid(format!(
            "opcode {op:#04x} moves no data the driver knows of: no buffer may go with it"
        ))),
        (Moves::Bytes(n), None) => Err(Error::Invalid(format!(
            "opcode {op:#04x} moves {n} bytes: give a buffer of at least that"
        ))),
        (Moves::Bytes(n) | Moves::Optional(n), Some((buf, _))) if n > buf.len() => {
            let up_to = if matches!(want, Moves::Optional(_)) {
                "up to "
            } else {
                ""
            };
            Err(Error::Invalid(format!(
                "opcode {op:#04x} moves {up_to}{n} bytes, the buffer holds {}",
                buf.len()
            )))
        }
        (Moves::Bytes(n) | Moves::Optional(n), Some(_)) => Ok(Some(n)),
    }
}

impl Controller {
    /// Runs an admin command the application built. The driver knows
    /// how many bytes each command it takes moves and builds its data
    /// pointer (the caller's data and metadata pointers, PSDT and fused
    /// bits are never sent); it refuses queue creation and deletion,
    /// Asynchronous Event Requests, Doorbell Buffer Config, Set Features of
    /// the number of queues, the event configuration and a host memory
    /// buffer, and a buffer with a command whose transfer it does not know
    /// (use [`admin_passthru_unchecked`](Self::admin_passthru_unchecked)). With `data`, the buffer is the
    /// command's data, in the direction its opcode says: it must hold what
    /// the command moves (the length given with it is not used: the
    /// driver knows it from the command); the buffer comes back with the
    /// completion's dword 0. A command that fails gives the buffer up (it
    /// is dropped, or kept out of reach if the controller could not be
    /// stopped).
    pub fn admin_passthru(
        &self,
        cmd: Command,
        data: Option<(DmaBuf, usize)>,
    ) -> Result<(u32, Option<DmaBuf>), Error> {
        let cmd = sanitized(cmd);
        let len = checked(Queue::Admin, &cmd, &data)?;
        let data = data.zip(len).map(|((buf, _), n)| (buf, n));
        // SAFETY: the command is one the driver knows, with its length
        // checked against the buffer, and no data pointer of the caller's.
        unsafe { self.admin_passthru_unchecked(cmd, data) }
    }

    /// [`admin_passthru`](Self::admin_passthru) of any command, with the
    /// data pointer built for the first `len` bytes of `data`.
    ///
    /// # Safety
    ///
    /// The command moves at most `len` bytes (and none without `data`), and
    /// gives the controller no other memory and none of the driver's state:
    /// no queue creation or deletion, no Doorbell Buffer Config, no host
    /// memory buffer, no metadata pointer; any data pointer in `cmd` is
    /// replaced (without `data` it is sent as given).
    pub unsafe fn admin_passthru_unchecked(
        &self,
        mut cmd: Command,
        data: Option<(DmaBuf, usize)>,
    ) -> Result<(u32, Option<DmaBuf>), Error> {
        let s = self.shared();
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
        let buf = self.shared().space.alloc(len)?;
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
    /// be opened again and the old values dropped: a `Namespace` is a
    /// snapshot of the format, and requests built on one that no longer
    /// matches (another block size, metadata size or layout) would
    /// describe transfers of the wrong size to the controller. Bounded by
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
    /// Runs an I/O command the application built for namespace `ns` (its
    /// NSID is set from `ns`) to completion. As with
    /// [`Controller::admin_passthru`], the driver builds the data pointer
    /// from what the command moves; it takes data only with Read, Write,
    /// Compare, Dataset Management, Copy (descriptor format 0), Zone
    /// Append and Zone Management Receive. With `data`, the buffer is the command's data,
    /// in the direction its opcode says, and must hold what the command
    /// moves; it comes back. A command that fails gives it up (it is
    /// dropped, or kept out of reach if the controller could not be
    /// stopped).
    pub fn io_passthru(
        &mut self,
        ns: &super::Namespace,
        cmd: Command,
        data: Option<(DmaBuf, usize)>,
    ) -> Result<Option<DmaBuf>, Error> {
        let mut cmd = sanitized(cmd);
        cmd.nsid = ns.id();
        // The safe passthrough moves data only: on a namespace formatted
        // with metadata, block commands move it too (interleaved, or
        // through a metadata pointer it never sends).
        let moves_blocks = matches!(
            cmd.opcode(),
            crate::nvme::cmd::io::READ
                | crate::nvme::cmd::io::WRITE
                | crate::nvme::cmd::io::COMPARE
                | crate::nvme::cmd::io::ZONE_APPEND
        );
        if ns.has_metadata() && moves_blocks {
            return Err(Error::Invalid(format!(
                "namespace {} is formatted with metadata: its reads, writes, compares and \
                 appends go through read_with_metadata, write_with_metadata, Io::metadata \
                 and Io::protection (or io_passthru_unchecked)",
                ns.id()
            )));
        }
        let len = checked(Queue::Io(ns.block_size()), &cmd, &data)?;
        let data = data.zip(len).map(|((buf, _), n)| (buf, n));
        // SAFETY: as in `Controller::admin_passthru`.
        unsafe { self.io_passthru_unchecked(cmd, data) }
    }

    /// [`io_passthru`](Self::io_passthru) of any command, with the data
    /// pointer built for the first `len` bytes of `data`.
    ///
    /// # Safety
    ///
    /// As for [`Controller::admin_passthru_unchecked`]: the command moves
    /// at most `len` bytes (none without `data`) and gives the controller
    /// no other memory.
    pub unsafe fn io_passthru_unchecked(
        &mut self,
        mut cmd: Command,
        data: Option<(DmaBuf, usize)>,
    ) -> Result<Option<DmaBuf>, Error> {
        let (buf, list) = match data {
            Some((buf, len)) => {
                let (dp, list) = prps(&self.shared().space, &buf, len)?;
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
                    matches!(e, Error::Dead) || self.shared().is_dead(),
                    buf.into_iter().chain(list),
                );
                Err(e)
            }
        }
    }
}
