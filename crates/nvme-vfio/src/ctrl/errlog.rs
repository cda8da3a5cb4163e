//! The Error Information log entry of a failed command: read from the
//! controller (Get Log Page, log identifier 01h) and attached to the
//! command's [`Error::Command`] when its status has the More bit set.
//!
//! Admin commands and the blocking I/O calls attach it before they
//! return. [`QueuePair::poll`](super::QueuePair::poll) does not: a
//! completion never waits for an admin command. The error of a
//! [`Done`](super::Done) carries the failed command's SQ ID and command ID,
//! and [`Controller::attach_error_log`] fetches its entry afterwards.
//!
//! Command IDs are reused (after some 65,000 commands on a queue): the
//! entry is the newest (by error count) naming the command's SQ ID and
//! command ID, so an entry is best fetched soon after the failure.

use super::{Controller, Shared};
use crate::nvme::cmd::{admin, log_page, Command};
use crate::nvme::log::{ErrorLogEntry, ERROR_ENTRY_LEN};
use crate::Error;

/// Entries read at most: one 4 KiB page (the admin path's one PRP).
const MAX_ENTRIES: usize = 4096 / ERROR_ENTRY_LEN;

/// What the log read is called in errors.
const WHAT: &str = "Get Log Page (Error Information)";

/// Whether `cmd` reads the Error Information log (whose own failure is not
/// looked up in the log).
pub(super) fn reads_error_log(cmd: &Command) -> bool {
    cmd.opcode() == admin::GET_LOG_PAGE && cmd.cdw10 as u8 == log_page::ERROR
}

/// The newest entry (by error count, whatever the order of the log) for
/// command `cid` of submission queue `sqid`.
fn newest_for(
    entries: impl IntoIterator<Item = ErrorLogEntry>,
    sqid: u16,
    cid: u16,
) -> Option<ErrorLogEntry> {
    entries
        .into_iter()
        .filter(|e| e.is_for(sqid, cid))
        .max_by_key(|e| e.error_count)
}

impl Shared {
    /// The newest entries of the Error Information log that are in use, at
    /// most as many as the controller keeps (Identify ELPE + 1) and 64.
    pub(super) fn read_error_log(&self, entries: usize) -> Result<Vec<ErrorLogEntry>, Error> {
        let kept = self.error_log_entries.get().copied().unwrap_or(MAX_ENTRIES);
        let n = entries.min(kept).clamp(1, MAX_ENTRIES);
        let len = n * ERROR_ENTRY_LEN;
        let cmd = Command::get_log_page(log_page::ERROR, 0xffff_ffff, len as u32);
        let buf = self.admin_read(cmd, 4096, WHAT)?;
        Ok(buf.as_slice()[..len]
            .chunks_exact(ERROR_ENTRY_LEN)
            .filter_map(ErrorLogEntry::parse)
            .filter(|e| e.error_count != 0)
            .collect())
    }

    /// The newest entry (by error count) for command `cid` of submission
    /// queue `sqid`, if the controller's log holds one.
    pub(super) fn error_log_for(
        &self,
        sqid: u16,
        cid: u16,
    ) -> Result<Option<ErrorLogEntry>, Error> {
        Ok(newest_for(self.read_error_log(MAX_ENTRIES)?, sqid, cid))
    }

    /// Attaches to `e`, a failed command's error whose status has the More
    /// bit set and that has no entry yet, the command's entry. Returns
    /// whether one was attached; an error if the log could not be read.
    pub(super) fn attach_error_log(&self, e: &mut Error) -> Result<bool, Error> {
        let Some(Error::Command {
            status,
            sqid,
            cid,
            log,
            ..
        }) = e.command_mut()
        else {
            return Ok(false);
        };
        if !status.more() || log.is_some() {
            return Ok(false);
        }
        match self.error_log_for(*sqid, *cid)? {
            Some(entry) => {
                *log = Some(Box::new(entry));
                Ok(true)
            }
            None => {
                log::debug!("no error log entry for command {cid:#06x} of SQ {sqid} ({status})");
                Ok(false)
            }
        }
    }

    /// [`attach_error_log`](Self::attach_error_log) for a call that
    /// returns `e` anyway: a failure to read the log is logged.
    pub(super) fn attach_error_log_quietly(&self, e: &mut Error) {
        if let Err(why) = self.attach_error_log(e) {
            log::warn!("cannot read the error log entry of a failed command ({e}): {why}");
        }
    }
}

impl Controller {
    /// The newest Error Information log entry (by error count) for command
    /// `cid` of submission queue `sqid` (0: the admin queue), if the
    /// controller's log holds one. A failed command's
    /// [`Error::Command`] carries both IDs.
    pub fn error_log_for(&self, sqid: u16, cid: u16) -> Result<Option<ErrorLogEntry>, Error> {
        self.shared.error_log_for(sqid, cid)
    }

    /// Fetches and attaches the Error Information log entry of a failed
    /// command, for errors that come back without it: those of requests
    /// completed by [`QueuePair::poll`](super::QueuePair::poll) or
    /// [`wait`](super::QueuePair::wait), which never wait for an admin
    /// command. Does nothing (and returns `Ok(false)`) unless `e` is an
    /// [`Error::Command`] (or an [`Error::At`] around one) whose status has
    /// the More bit set and that has no entry yet. Returns whether an entry
    /// was attached (the controller may have none for the command); an
    /// error if the log could not be read.
    ///
    /// ```no_run
    /// # fn f(ctrl: &nvme_vfio::ctrl::Controller, qp: &mut nvme_vfio::ctrl::QueuePair) {
    /// let mut done = Vec::new();
    /// qp.poll(&mut done);
    /// for d in done {
    ///     if let Err(mut e) = d.result {
    ///         let _ = ctrl.attach_error_log(&mut e);
    ///         eprintln!("request {} failed: {e}", d.tag);
    ///     }
    /// }
    /// # }
    /// ```
    pub fn attach_error_log(&self, e: &mut Error) -> Result<bool, Error> {
        self.shared.attach_error_log(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_entry_of_the_command_is_chosen() {
        let e = |error_count, sqid, cid| ErrorLogEntry {
            error_count,
            sqid,
            cid,
            ..Default::default()
        };
        // An older entry of the same IDs (the ID was reused) after the
        // newer one, entries of other commands, an unused entry.
        let log = [
            e(7, 1, 5),
            e(9, 1, 5),
            e(8, 1, 6),
            e(10, 2, 5),
            e(0, 1, 5),
            e(3, 1, 5),
        ];
        assert_eq!(newest_for(log, 1, 5).map(|x| x.error_count), Some(9));
        assert_eq!(newest_for(log, 2, 5).map(|x| x.error_count), Some(10));
        assert_eq!(newest_for(log, 0, 5), None);
        assert_eq!(newest_for(log, 1, 7), None);
    }

    #[test]
    fn only_reads_of_the_error_log_are_recognised() {
        assert!(reads_error_log(&Command::get_log_page(
            log_page::ERROR,
            u32::MAX,
            64
        )));
        assert!(!reads_error_log(&Command::get_log_page(
            log_page::SMART,
            u32::MAX,
            512
        )));
        assert!(!reads_error_log(&Command::get_features(log_page::ERROR)));
    }
}
