//! Asynchronous events: the controller keeps Asynchronous Event Requests
//! outstanding on the admin queue and completes one when something happens
//! (a SMART/health warning, a namespace attribute change, an error log
//! entry); the driver collects the events for the application, which
//! drains them with [`Controller::poll_events`](super::Controller::poll_events),
//! and sends a new request for each one that completed.
//!
//! An error event (type Error Status) comes with the Error Information
//! log entries that are new since the previous one: the driver reads the
//! log (which is also what lets the controller report the next error
//! event) and hands the entries over in [`AsyncEvent::errors`].
//!
//! The requests carry command IDs of their own ([`AER_CIDS`]), which no
//! other admin command uses, so a completion is known for an event by its
//! ID alone.

use std::collections::VecDeque;

use super::shared::{Admin, Shared};
use crate::nvme::cmd::{admin, feature, Command, Completion};
use crate::nvme::log::ErrorLogEntry;
use crate::nvme::regs::Registers;
use crate::Error;

/// The first of the command IDs reserved for Asynchronous Event Requests.
pub(super) const AER_CID_BASE: u16 = 0xfff0;
/// How many command IDs are reserved for them (and so the most requests
/// kept outstanding).
pub(super) const AER_CIDS: u16 = 16;
/// The most requests kept outstanding (fewer if the controller's AERL says
/// so).
const AER_MAX: u16 = 4;
/// Events kept for the application at most; older ones are dropped (and
/// logged).
const EVENTS_KEPT: usize = 256;
/// Log page: Firmware Slot Information (512 bytes), where a firmware
/// activation notice points.
const LOG_FIRMWARE_SLOT: u8 = 0x03;
/// Log page: Changed Namespace List (4 KiB), where a namespace attribute
/// notice points.
const LOG_CHANGED_NAMESPACES: u8 = 0x04;

/// What kind of event the controller reported (Asynchronous Event Type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsyncEventKind {
    /// An error status (the Error Information log has the entry).
    Error,
    /// A SMART / Health status warning (critical warning bits, such as a
    /// temperature threshold crossed or spare capacity low).
    SmartHealth,
    /// A notice (namespace attributes changed, firmware activation, ...).
    Notice,
    /// A status specific to an I/O command set.
    IoCommandSet,
    /// Vendor specific.
    Vendor,
    /// A type this driver does not know.
    Other(u8),
}

/// One asynchronous event, as the controller reported it, with the Error
/// Information log entries of an error event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// The kind of event.
    pub kind: AsyncEventKind,
    /// Asynchronous Event Information: which event of the kind (for
    /// errors: 0 invalid doorbell register, 1 invalid doorbell value, 2
    /// diagnostic failure, 3 persistent internal error, 4 transient
    /// internal error, 5 firmware image load error; for SMART/Health: 0
    /// reliability, 1 temperature threshold, 2 spare below threshold; for
    /// notices: 0 namespace attribute changed, 1 firmware activation
    /// starting, ...).
    pub info: u8,
    /// The log page that has the details (reading it, without Retain
    /// Asynchronous Event, lets the controller report the event again).
    pub log_page: u8,
    /// For an error event ([`AsyncEventKind::Error`]): the Error
    /// Information log entries (log page 01h) logged since the previous
    /// error event's, oldest first (by error count; at most the 64 newest,
    /// and for the first error event every entry the controller holds).
    /// The driver reads the log when it hands the event over (which lets
    /// the controller report the next error event); when several error
    /// events come in one [`poll_events`](super::Controller::poll_events),
    /// the first carries the entries and the others none. Empty for other
    /// kinds, when the controller logged nothing (QEMU's emulated
    /// controller keeps no entries) or when the log could not be read
    /// (logged).
    pub errors: Vec<ErrorLogEntry>,
}

impl AsyncEvent {
    /// The event in an Asynchronous Event Request's completion dword 0.
    pub fn from_dword0(dw0: u32) -> Self {
        let kind = match dw0 & 7 {
            0 => AsyncEventKind::Error,
            1 => AsyncEventKind::SmartHealth,
            2 => AsyncEventKind::Notice,
            6 => AsyncEventKind::IoCommandSet,
            7 => AsyncEventKind::Vendor,
            t => AsyncEventKind::Other(t as u8),
        };
        Self {
            kind,
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
            errors: Vec::new(),
        }
    }
}

/// The event state of the admin queue (under its lock).
#[derive(Debug, Default)]
pub(super) struct Events {
    /// How many requests to keep outstanding (0: events off).
    pub(super) limit: u16,
    /// Reserved command IDs in flight, one bit each.
    pub(super) outstanding: u16,
    /// Events not taken by the application yet.
    pub(super) queue: VecDeque<AsyncEvent>,
    /// The highest error count handed to the application with an error
    /// event (entries up to it are not handed over again).
    pub(super) errors_seen: u64,
}

/// Whether `cid` is one of the reserved Asynchronous Event Request IDs.
#[inline]
pub(super) fn is_aer(cid: u16) -> bool {
    cid >= AER_CID_BASE
}

impl Admin {
    /// Handles the completion of an Asynchronous Event Request: its event
    /// is queued for the application (a failed request, such as one the
    /// controller aborted, is not an event), and a new request takes its
    /// place.
    pub(super) fn on_event(&mut self, c: &Completion, regs: &dyn Registers) {
        let bit = 1u16 << (c.cid - AER_CID_BASE);
        if self.events.outstanding & bit == 0 {
            log::warn!(
                "admin queue: completion for event request {:#x}, not outstanding",
                c.cid
            );
            return;
        }
        self.events.outstanding &= !bit;
        if c.status().is_success() {
            let e = AsyncEvent::from_dword0(c.result);
            log::info!("controller event: {e:?}");
            if self.events.queue.len() >= EVENTS_KEPT {
                let old = self.events.queue.pop_front();
                log::warn!("asynchronous event dropped (the application did not take it): {old:?}");
            }
            self.events.queue.push_back(e);
        } else {
            log::debug!("event request ended with {}", c.status());
        }
        self.refill_events(regs);
    }

    /// Sends Asynchronous Event Requests until `limit` are outstanding.
    pub(super) fn refill_events(&mut self, regs: &dyn Registers) {
        let mut sent = false;
        while (self.events.outstanding.count_ones() as u16) < self.events.limit {
            let free = (!self.events.outstanding).trailing_zeros() as u16;
            if free >= AER_CIDS {
                break;
            }
            self.events.outstanding |= 1 << free;
            let mut cmd = Command::new(admin::ASYNC_EVENT, 0);
            cmd.set_cid(AER_CID_BASE + free);
            // Room: at most AER_MAX requests and one command are
            // outstanding on a queue of more entries.
            self.sq.push(&cmd);
            sent = true;
        }
        if sent {
            self.sq.ring(regs);
        }
    }

    /// Takes every completion posted on the admin queue while no admin
    /// command is outstanding (the caller holds the admin lock): events, or
    /// stray completions, which are device errors.
    pub(super) fn drain_events(&mut self, shared: &Shared) {
        let mut seen = false;
        let mut budget = self.cq.entries();
        while budget > 0 {
            let Some(c) = self.cq.pop() else { break };
            budget -= 1;
            seen = true;
            let head_ok = self.sq.advance_head(c.sq_head);
            if is_aer(c.cid) && c.sq_id == 0 && head_ok {
                self.on_event(&c, &*shared.regs);
            } else {
                shared.count_device_error();
                log::warn!(
                    "admin queue: completion for command {:#x} (SQ {}, SQ head {}) \\
                     with no command outstanding: ignored",
                    c.cid,
                    c.sq_id,
                    c.sq_head
                );
            }
        }
        if seen {
            self.cq.ring(&*shared.regs);
        }
    }
}

impl Shared {
    /// Turns asynchronous events on (after bring-up and after every reset):
    /// enables the SMART/health warnings and the notices the controller
    /// supports (Asynchronous Event Configuration) and sends the requests.
    /// Events are optional: a controller that refuses the configuration
    /// still gets its requests.
    pub(super) fn start_events(&self, aerl: u8, oaes: u32, by_reset: bool) {
        if !self.config.async_events {
            return;
        }
        let aec = 0xff | (oaes & (1 << 8 | 1 << 9));
        if let Err(e) = self.admin_raw(
            Command::set_features(feature::ASYNC_EVENT_CONFIG, aec),
            None,
            "Set Features (Asynchronous Event Configuration)",
            by_reset,
        ) {
            log::warn!("asynchronous event configuration: {e}");
        }
        let mut a = super::shared::lock(&self.admin);
        // Room for one admin command besides (a ring holds one entry
        // less than its size).
        let room = a.sq.entries().saturating_sub(2);
        a.events.limit = (u16::from(aerl) + 1).min(AER_MAX).min(room);
        a.refill_events(&*self.regs);
    }

    /// The events reported since the last call, oldest first. The log
    /// page of each notice is read (the controller masks further notices
    /// of its kind until it is, NVMe Base 2.0, 5.2): the controller then
    /// reports the next change. So is the Error Information log for error
    /// events, whose new entries go to the first of them.
    pub(super) fn poll_events(&self) -> Result<Vec<AsyncEvent>, Error> {
        let mut events: Vec<AsyncEvent> = {
            let mut a = super::shared::lock(&self.admin);
            if self.is_disabled() {
                return Err(self.stopped_error());
            }
            if !self.is_resetting() {
                a.drain_events(self);
            }
            a.events.queue.drain(..).collect()
        };
        let mut read: Vec<u8> = Vec::new();
        for e in events.iter().filter(|e| e.kind == AsyncEventKind::Notice) {
            if !read.contains(&e.log_page) {
                read.push(e.log_page);
                self.clear_notice(e.log_page);
            }
        }
        if let Some(e) = events.iter_mut().find(|e| e.kind == AsyncEventKind::Error) {
            e.errors = self.new_error_entries();
        }
        Ok(events)
    }

    /// Reads the Error Information log (Retain Asynchronous Event clear,
    /// which unmasks error events) and returns the entries no earlier
    /// error event carried, oldest first. A failure is logged: the event
    /// goes to the application anyway, without entries.
    fn new_error_entries(&self) -> Vec<ErrorLogEntry> {
        let mut entries = match self.read_error_log(64) {
            Ok(entries) => entries,
            Err(e) => {
                log::warn!("Get Log Page (Error Information) after an error event: {e}");
                return Vec::new();
            }
        };
        let mut a = super::shared::lock(&self.admin);
        let seen = a.events.errors_seen;
        entries.retain(|e| e.error_count > seen);
        entries.sort_by_key(|e| e.error_count);
        if let Some(last) = entries.last() {
            a.events.errors_seen = last.error_count;
        }
        entries
    }

    /// Reads the log page a notice named (Retain Asynchronous Event
    /// clear), which unmasks that notice. A failure is logged: the events
    /// go to the application anyway.
    fn clear_notice(&self, log_page: u8) {
        let (len, what) = match log_page {
            LOG_CHANGED_NAMESPACES => (4096, "Get Log Page (Changed Namespace List)"),
            LOG_FIRMWARE_SLOT => (512, "Get Log Page (Firmware Slot Information)"),
            _ => return,
        };
        let cmd = Command::get_log_page(log_page, 0xffff_ffff, len as u32);
        match self.admin_read(cmd, len, what) {
            Ok(buf) if log_page == LOG_CHANGED_NAMESPACES => {
                let ids: Vec<u32> = (buf.as_slice()[..len].chunks_exact(4))
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .take_while(|&id| id != 0)
                    .collect();
                log::info!("namespaces changed: {ids:?}");
            }
            Ok(_) => {}
            Err(e) => log::warn!("{what} after a notice: {e}"),
        }
    }
}
