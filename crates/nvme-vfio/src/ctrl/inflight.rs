//! What a queue pair has in flight: its command slots (each with the DMA
//! state and descriptor pages of its command, and the command ID it went
//! out with), the requests they belong to, which slots and requests are
//! free, and when each command was published. The queue pair's submission
//! and completion paths, and its recovery, act on them only through the
//! methods here.

use blk_dma::DmaState;

use super::cids::CommandIds;
use super::free::FreeSlots;
use super::io::{Done, IoBuf};
use super::meta::MetaReq;
use super::pool::DmaDescPool;
use crate::mem::VfioMapper;
use crate::nvme::desc::DescList;
use crate::Error;

/// One command in flight: its request and what to undo at completion.
#[derive(Debug)]
pub(super) struct Slot {
    /// The command ID of the command in flight in this slot, or
    /// [`FREE`](Self::FREE) (no 16-bit ID): a completion matches with one
    /// comparison.
    live: u32,
    req: u32,
    /// When the command was published to the device (its doorbell
    /// batch), in [`clock::now_ms`](super::clock::now_ms) milliseconds.
    stamp: u64,
    /// The command's mappings.
    pub(super) state: DmaState,
    /// The command's descriptor pages.
    pub(super) list: DescList,
}

impl Slot {
    /// [`live`](Self::live) of a slot with no command in flight.
    const FREE: u32 = 1 << 16;

    /// Whether a command is in flight in this slot.
    #[inline(always)]
    fn busy(&self) -> bool {
        self.live != Self::FREE
    }
}

/// One request in flight: it completes when its last command does.
#[derive(Debug)]
pub(super) struct Pending {
    buf: IoBuf,
    tag: u64,
    /// How the request completes ([`Pending::BLOCKING`],
    /// [`Pending::APPEND`]); 0 for a caller's request whose completion
    /// carries nothing but its status, the common case.
    flags: u8,
    /// The request's memory is the caller's borrow (a blocking read or
    /// write): it goes back when the call returns, whatever happens.
    borrowed: bool,
    remaining: u32,
    /// The request's error (boxed: errors are rare, and the request moves
    /// on every completion).
    error: Option<Box<Error>>,
    what: &'static str,
}

impl Pending {
    /// The blocking call's request: its result goes to the queue pair's
    /// blocking result, not into a `Done`.
    const BLOCKING: u8 = 1 << 0;
    /// A Zone Append: its completion's dwords 0 and 1 are the LBA where
    /// the data landed, checked against the range
    /// [`Inflight::set_append_range`] gave it.
    const APPEND: u8 = 1 << 1;
    /// A request with metadata or protection settings: its metadata buffer
    /// and the driver's checks are kept apart, in
    /// [`Inflight::set_meta`]'s table.
    const META: u8 = 1 << 2;

    /// A free entry.
    const FREE: Pending = Pending {
        buf: IoBuf::Raw,
        tag: 0,
        flags: 0,
        borrowed: false,
        remaining: 0,
        error: None,
        what: "",
    };

    /// A request of `commands` commands on `buf`, named `what` in errors.
    /// `borrowed`: its memory is lent by the caller for a blocking call.
    pub(super) fn new(
        buf: IoBuf,
        tag: Tag,
        borrowed: bool,
        commands: u32,
        what: &'static str,
    ) -> Self {
        let (tag, blocking) = tag.parts();
        Pending {
            buf,
            tag,
            flags: blocking as u8,
            borrowed,
            remaining: commands,
            error: None,
            what,
        }
    }

    /// The same request, a Zone Append (of one command): the LBA its
    /// completion reports is checked against the range
    /// [`Inflight::set_append_range`] gives it, and handed back.
    pub(super) fn append(mut self) -> Self {
        self.flags |= Self::APPEND;
        self
    }

    /// Frees the entry; returns its tag, buffer and error.
    #[inline]
    fn take(&mut self) -> (u64, IoBuf, Option<Box<Error>>) {
        self.remaining = 0;
        self.flags = 0;
        self.borrowed = false;
        (
            self.tag,
            core::mem::replace(&mut self.buf, IoBuf::Raw),
            self.error.take(),
        )
    }
}

/// Whose a request is: a caller's, with its tag, or the blocking call's
/// (tracked apart from every tag a caller can choose).
#[derive(Clone, Copy, Debug)]
pub(super) enum Tag {
    /// Completes into [`Done::tag`].
    Caller(u64),
    /// Completes into the queue pair's blocking result; its memory is
    /// the caller's, lent for the call.
    Blocking,
    /// Completes into the queue pair's blocking result; its memory is
    /// the driver's own (DMA buffers a blocking call copies through),
    /// which the call leaks rather than frees if the controller could not
    /// be stopped.
    BlockingOwned,
}

impl Tag {
    /// The tag to store and whether the request is the blocking call's.
    #[inline(always)]
    fn parts(self) -> (u64, bool) {
        match self {
            Tag::Caller(t) => (t, false),
            Tag::Blocking | Tag::BlockingOwned => (0, true),
        }
    }

    /// Whether the request's memory is lent by the caller for a blocking
    /// call: it goes back when the call returns, whatever happens.
    #[inline(always)]
    pub(super) fn borrowed(self) -> bool {
        matches!(self, Tag::Blocking)
    }
}

/// Command slots, command IDs and requests of one queue pair.
///
/// Requests `0..depth` are handed out for requests of several commands
/// (and commands without data); request `depth + s` belongs to the
/// one-command request in slot `s` (the fast path needs no allocation of
/// its own).
#[derive(Debug)]
pub(super) struct Inflight {
    slots: Vec<Slot>,
    /// Free slots, in the order they are handed out (doorbell batches
    /// find the slots to stamp by position).
    free: FreeSlots,
    /// Command IDs in flight, by the slot they are in.
    cids: CommandIds,
    /// Requests by index; a free entry has `remaining == 0`.
    reqs: Vec<Pending>,
    free_reqs: Vec<u32>,
    /// Slots whose commands were quarantined: the controller could not be
    /// stopped, so they are never reused.
    quarantined: usize,
    /// The free-slot position up to which taken slots were stamped by a
    /// doorbell ([`FreeSlots::take_position`]).
    stamped: u32,
    /// The blocking call's result, once its request completed.
    blocking_done: Option<Result<(), Error>>,
    /// The LBA the blocking call's Zone Append landed at.
    blocking_lba: Option<u64>,
    /// The LBAs each Zone Append's data may land at, first and last (its
    /// zone's start, and its end less the append's length), by request
    /// (appends take requests `0..depth`). Apart from [`Pending`], which
    /// every completion touches.
    append_ranges: Vec<(u64, u64)>,
    /// The metadata buffer and the driver's checks of each request with
    /// metadata (those take requests `0..depth`), apart from [`Pending`]
    /// as [`append_ranges`](Self::append_ranges) are.
    metas: Vec<Option<MetaReq>>,
}

impl Inflight {
    /// `depth` free slots.
    pub(super) fn new(depth: usize) -> Self {
        Inflight {
            slots: (0..depth)
                .map(|_| Slot {
                    live: Slot::FREE,
                    req: 0,
                    stamp: 0,
                    state: DmaState::with_capacity(8),
                    list: DescList::new(),
                })
                .collect(),
            free: FreeSlots::new(depth),
            cids: CommandIds::new(),
            reqs: (0..2 * depth).map(|_| Pending::FREE).collect(),
            free_reqs: (0..depth as u32).rev().collect(),
            quarantined: 0,
            stamped: 0,
            blocking_done: None,
            blocking_lba: None,
            append_ranges: vec![(0, 0); depth],
            metas: (0..depth).map(|_| None).collect(),
        }
    }

    /// Most commands in flight at once.
    #[inline(always)]
    pub(super) fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Commands in flight (quarantined ones not counted).
    #[inline(always)]
    pub(super) fn count(&self) -> usize {
        self.slots.len() - self.free.len() - self.quarantined
    }

    /// Free slots.
    #[inline(always)]
    pub(super) fn free_slots(&self) -> usize {
        self.free.len()
    }

    /// Whether a request entry is free for a request of several commands.
    pub(super) fn has_free_request(&self) -> bool {
        !self.free_reqs.is_empty()
    }

    /// Slots quarantined (never reused).
    pub(super) fn quarantined(&self) -> usize {
        self.quarantined
    }

    /// The slot a one-command request takes next (the oldest free one),
    /// for its data pointer to be built there.
    #[inline(always)]
    pub(super) fn peek_free(&self) -> Option<(u16, &Slot)> {
        let cid = self.free.peek()?;
        Some((cid, self.slots.get(cid as usize)?))
    }

    /// [`peek_free`](Self::peek_free), to map into the slot.
    pub(super) fn peek_free_mut(&mut self) -> Option<(u16, &mut Slot)> {
        let cid = self.free.peek()?;
        Some((cid, self.slots.get_mut(cid as usize)?))
    }

    /// Starts the one-command request on slot `cid`, the one
    /// [`peek_free`](Self::peek_free) returned, with `buf`; returns the
    /// command ID to send it with. Nothing here fails.
    #[inline(always)]
    pub(super) fn start_one(&mut self, cid: u16, buf: IoBuf, tag: Tag, what: &'static str) -> u16 {
        debug_assert_eq!(self.free.peek(), Some(cid));
        self.free.take_peeked();
        let req = self.slots.len() + cid as usize;
        debug_assert!((cid as usize) < self.slots.len() && req < self.reqs.len());
        let id = self.cids.take(cid);
        // SAFETY: `cid` came from `peek_free`, so it is in `slots`, and
        // `reqs` holds two entries per slot (see `new`), so `req` is in it
        // too. Unchecked, so that no panic path has to keep the buffer to
        // drop.
        let (slot, p) = unsafe {
            (
                self.slots.get_unchecked_mut(cid as usize),
                self.reqs.get_unchecked_mut(req),
            )
        };
        slot.live = u32::from(id);
        slot.req = req as u32;
        // The entry is free, so it holds IoBuf::Raw, which needs no drop.
        debug_assert!(p.remaining == 0 && matches!(p.buf, IoBuf::Raw));
        // SAFETY: overwrites IoBuf::Raw (nothing to drop) with the buffer.
        unsafe { core::ptr::write(&mut p.buf, buf) };
        let (t, blocking) = tag.parts();
        p.tag = t;
        p.flags = blocking as u8;
        p.borrowed = tag.borrowed();
        p.remaining = 1;
        p.what = what;
        id
    }

    /// Takes a request entry for `pending` (a request of several commands,
    /// or one without data); if none is free, its buffer comes back.
    pub(super) fn start_request(&mut self, mut pending: Pending) -> Result<u32, IoBuf> {
        let Some(req) = self.free_reqs.pop() else {
            return Err(pending.take().1);
        };
        self.reqs[req as usize] = pending;
        Ok(req)
    }

    /// Sets the LBAs the data of Zone Append request `req` (started with
    /// [`start_request`](Self::start_request)) may land at, `first..=last`.
    pub(super) fn set_append_range(&mut self, req: u32, first: u64, last: u64) {
        if let Some(r) = self.append_ranges.get_mut(req as usize) {
            *r = (first, last);
        }
    }

    /// Gives request `req` (started with [`start_request`](Self::start_request)
    /// and not yet published) its metadata buffer and checks: they come
    /// back with its completion.
    pub(super) fn set_meta(&mut self, req: u32, meta: MetaReq) {
        if let (Some(m), Some(p)) = (
            self.metas.get_mut(req as usize),
            self.reqs.get_mut(req as usize),
        ) {
            *m = Some(meta);
            p.flags |= Pending::META;
        }
    }

    /// Takes back the metadata of request `req`, being cancelled before
    /// publication.
    pub(super) fn take_meta(&mut self, req: u32) -> Option<MetaReq> {
        self.metas.get_mut(req as usize).and_then(Option::take)
    }

    /// Takes the oldest free slot, for a command of a request being
    /// started; [`assign`](Self::assign) it once its data pointer is
    /// built, or [`unpop`](Self::unpop) it.
    pub(super) fn pop(&mut self) -> Option<(u16, &mut Slot)> {
        let cid = self.free.pop()?;
        Some((cid, &mut self.slots[cid as usize]))
    }

    /// Gives back the slot [`pop`](Self::pop) took last, unused.
    pub(super) fn unpop(&mut self, cid: u16) {
        self.free.unpop(cid);
    }

    /// Puts a command of request `req` in slot `cid` (taken with
    /// [`pop`](Self::pop)); returns the command ID to send it with.
    pub(super) fn assign(&mut self, cid: u16, req: u32) -> u16 {
        let id = self.cids.take(cid);
        let slot = &mut self.slots[cid as usize];
        slot.live = u32::from(id);
        slot.req = req;
        id
    }

    /// Ends request `req` that was started but never published (its
    /// commands were finished with [`finish`](Self::finish)); returns its
    /// buffer.
    pub(super) fn cancel(&mut self, req: u32) -> IoBuf {
        let (_, buf, _) = self.reqs[req as usize].take();
        self.free_reqs.push(req);
        buf
    }

    /// The slot of command ID `id` if a command is in flight with it.
    #[inline(always)]
    pub(super) fn lookup(&self, id: u16) -> Option<usize> {
        // Not in flight: an index past every slot.
        let cid = self.cids.slot_or_none(id);
        match self.slots.get(cid) {
            Some(s) if s.live == u32::from(id) => Some(cid),
            _ => None,
        }
    }

    /// The command ID the command in slot `cid` went out with, if one is in
    /// flight there.
    pub(super) fn live_id(&self, cid: usize) -> Option<u16> {
        self.slots
            .get(cid)
            .filter(|s| s.busy())
            .map(|s| s.live as u16)
    }

    /// Undoes a finished command's mappings and frees its slot and ID;
    /// returns its request.
    #[inline(always)]
    pub(super) fn finish(
        &mut self,
        cid: usize,
        pool: &mut DmaDescPool,
        mapper: &VfioMapper,
    ) -> u32 {
        let s = &mut self.slots[cid];
        // SAFETY: a slot's pages come from this queue pair's pool; its
        // command completed, was never published, or the device stopped.
        unsafe { s.list.release(pool) };
        s.state.unmap(mapper);
        // Every caller finishes a slot with a command in flight.
        debug_assert!(s.busy());
        self.cids.release(s.live as u16);
        s.live = Slot::FREE;
        self.free.push(cid as u16);
        s.req
    }

    /// The blocking call's result, once its request has completed.
    pub(super) fn take_blocking(&mut self) -> Option<Result<(), Error>> {
        self.blocking_done.take()
    }

    /// The LBA the blocking call's Zone Append landed at, once it
    /// completed successfully.
    pub(super) fn take_blocking_lba(&mut self) -> Option<u64> {
        self.blocking_lba.take()
    }

    /// Sets request `req`'s error to what `make` builds from its command
    /// name, unless it has one already (the first error of a request
    /// wins) or has completed.
    #[cold]
    pub(super) fn fail(&mut self, req: u32, make: impl FnOnce(&'static str) -> Error) {
        if let Some(p) = self.reqs.get_mut(req as usize) {
            if p.remaining > 0 && p.error.is_none() {
                p.error = Some(Box::new(make(p.what)));
            }
        }
    }

    /// Counts one command of request `req` done; completes the request when
    /// it was the last: into `out`, or, for the blocking call's, into the
    /// result [`take_blocking`](Self::take_blocking) returns. `result` is
    /// the command's completion dwords 0 and 1 (only a Zone Append's are
    /// looked at).
    #[inline(always)]
    pub(super) fn finish_child(&mut self, req: u32, out: &mut Vec<Done>, result: u64) {
        let Some(p) = self.reqs.get_mut(req as usize) else {
            return;
        };
        match p.remaining {
            0 => return,
            1 => {}
            _ => {
                p.remaining -= 1;
                return;
            }
        }
        if p.error.is_some() || p.flags != 0 {
            return self.finish_request_rare(req, out, result);
        }
        if out.len() == out.capacity() {
            grow(out);
        }
        p.remaining = 0;
        let len = out.len();
        // Built in place, field by field, so that only the buffer and the
        // tag are copied (the result's error payload is not).
        let dst = out.spare_capacity_mut().as_mut_ptr().cast::<Done>();
        // SAFETY: `len < capacity` (checked above), so `dst` is the
        // allocated, unused element past the length, which no reference
        // covers; every field is written before the length covers it. The
        // buffer is moved: copied out of the entry, which then gets
        // `IoBuf::Raw` without dropping the moved value.
        unsafe {
            core::ptr::addr_of_mut!((*dst).tag).write(p.tag);
            core::ptr::copy_nonoverlapping(&p.buf, core::ptr::addr_of_mut!((*dst).buf), 1);
            core::ptr::write(&mut p.buf, IoBuf::Raw);
            core::ptr::addr_of_mut!((*dst).result).write(Ok(()));
            core::ptr::addr_of_mut!((*dst).appended_lba).write(None);
            core::ptr::addr_of_mut!((*dst).meta).write(None);
            out.set_len(len + 1);
        }
        if (req as usize) < self.slots.len() {
            self.free_reqs.push(req);
        }
    }

    /// [`finish_child`](Self::finish_child) for a request that failed, is
    /// the blocking call's, or is a Zone Append (whose `result` is the LBA
    /// its data landed at: believed only inside the append's zone).
    #[inline(never)]
    fn finish_request_rare(&mut self, req: u32, out: &mut Vec<Done>, result: u64) {
        let p = &self.reqs[req as usize];
        let (flags, what) = (p.flags, p.what);
        // An append's request is one of `0..depth`: (1, 0) for any other
        // makes every LBA outside its range.
        let (first, last) = self
            .append_ranges
            .get(req as usize)
            .copied()
            .unwrap_or((1, 0));
        let (tag, buf, error) = self.reqs[req as usize].take();
        if (req as usize) < self.slots.len() {
            self.free_reqs.push(req);
        }
        let mut appended_lba = None;
        let result = match error {
            Some(e) => Err(*e),
            None if flags & Pending::APPEND != 0 => {
                if (first..=last).contains(&result) {
                    appended_lba = Some(result);
                    Ok(())
                } else {
                    log::warn!(
                        "{what}: the controller reported LBA {result:#x}, outside the zone \
                         ({first:#x} to {last:#x})"
                    );
                    Err(Error::DeviceData {
                        what,
                        detail: format!(
                            "its completion reports LBA {result:#x}, but the data can only \
                             have landed at {first:#x} to {last:#x}"
                        ),
                    })
                }
            }
            None => Ok(()),
        };
        let (mut result, mut meta) = (result, None);
        if flags & Pending::META != 0 {
            if let Some(m) = self.take_meta(req) {
                if result.is_ok() {
                    result = m.check(what, &buf);
                }
                meta = m.buf;
            }
        }
        if flags & Pending::BLOCKING != 0 {
            self.blocking_done = Some(result);
            self.blocking_lba = appended_lba;
            // A blocking call's metadata is in its own buffers.
            drop(meta);
        } else {
            out.push(Done {
                tag,
                buf,
                result,
                appended_lba,
                meta,
            });
        }
    }

    /// Stamps the commands about to be published with the time `now`: the
    /// slots taken since the last doorbell, in the order the free-slot
    /// FIFO handed them out.
    #[inline(always)]
    pub(super) fn stamp_published(&mut self, now: u64) {
        let end = self.free.take_position();
        let mut p = self.stamped;
        while p != end {
            let cid = self.free.taken_at(p) as usize;
            debug_assert!(cid < self.slots.len());
            // SAFETY: the free-slot FIFO holds slot indices only (below
            // `slots.len()`, see `new` and `finish`).
            unsafe { self.slots.get_unchecked_mut(cid).stamp = now };
            p = p.wrapping_add(1);
        }
        self.stamped = end;
    }

    /// Forgets the commands taken but not published (the rings were reset
    /// with nothing in flight): the next doorbell stamps from here.
    pub(super) fn restart_stamps(&mut self) {
        self.stamped = self.free.take_position();
    }

    /// Timeouts at `now` for commands allowed `limit_ms`: whether any is
    /// late, and the earliest time one that is not will be (at most
    /// `next`).
    pub(super) fn due(&self, now: u64, limit_ms: u64, mut next: u64) -> (bool, u64) {
        let mut any_late = false;
        for s in self.slots.iter().filter(|s| s.busy()) {
            let due = s.stamp + limit_ms;
            if now > due {
                any_late = true;
            } else {
                next = next.min(due + 1);
            }
        }
        (any_late, next)
    }

    /// The slots whose commands are in flight and were published more
    /// than `limit_ms` before `now`.
    pub(super) fn late(&self, now: u64, limit_ms: u64) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(move |(_, s)| s.busy() && now > s.stamp + limit_ms)
            .map(|(cid, _)| cid)
    }

    /// Fails the requests of the late commands (see [`late`](Self::late)),
    /// or of every command in flight if `all`, with what `make` builds.
    #[cold]
    pub(super) fn fail_late(
        &mut self,
        now: u64,
        limit_ms: u64,
        all: bool,
        make: impl Fn(&'static str) -> Error,
    ) {
        for cid in 0..self.slots.len() {
            let s = &self.slots[cid];
            if s.busy() && (all || now > s.stamp + limit_ms) {
                let req = s.req;
                self.fail(req, &make);
            }
        }
    }

    /// Completes every request in flight with the error `make` builds from
    /// its command name (unless it already has one), handing its buffer
    /// back. The device must no longer be processing them.
    #[cold]
    pub(super) fn fail_all(
        &mut self,
        pool: &mut DmaDescPool,
        mapper: &VfioMapper,
        out: &mut Vec<Done>,
        make: impl Fn(&'static str) -> Error,
    ) {
        for cid in 0..self.slots.len() {
            if !self.slots[cid].busy() {
                continue;
            }
            let req = self.finish(cid, pool, mapper);
            self.fail(req, &make);
            self.finish_child(req, out, 0);
        }
    }

    /// The controller could not be stopped: every request in flight
    /// completes with [`Error::Dead`] and without its buffer, which is
    /// leaked with its command's mappings and descriptor pages (the device
    /// may still read or write all of them). Their slots are never reused.
    ///
    /// A blocking call's request holds memory the caller lent for the
    /// call, which goes back to the caller when the call returns: that
    /// cannot be made safe, so the process is aborted.
    #[cold]
    pub(super) fn quarantine_all(&mut self, qid: u16, out: &mut Vec<Done>) {
        for cid in 0..self.slots.len() {
            let s = &mut self.slots[cid];
            if !s.busy() {
                continue;
            }
            s.live = Slot::FREE;
            // Kept mapped, and the IOVA space kept allocated: nothing else
            // may ever be mapped where the device may still write.
            core::mem::forget(core::mem::take(&mut s.state));
            // The descriptor pages are dropped from the list without going
            // back to the pool (which is leaked with the rings).
            s.list = Default::default();
            self.quarantined += 1;
            let req = s.req;
            let Some(p) = self.reqs.get_mut(req as usize) else {
                continue;
            };
            if p.remaining == 0 {
                continue;
            }
            if p.borrowed {
                log::error!(
                    "queue {qid}: the controller cannot be stopped while a blocking call's \
                     command is in flight on memory the caller lent; aborting the process \
                     rather than handing that memory back"
                );
                std::process::abort();
            }
            core::mem::forget(core::mem::replace(&mut p.buf, IoBuf::Raw));
            // The metadata buffer too: the device may still write it.
            if let Some(m) = self.metas.get_mut(req as usize).and_then(Option::take) {
                core::mem::forget(m);
            }
            p.error = Some(Box::new(Error::Dead));
            self.finish_child(req, out, 0);
        }
    }
}

/// Makes room for more completions in `out` (out of line: `out` is
/// normally reused with room to spare).
#[cold]
#[inline(never)]
fn grow(out: &mut Vec<Done>) {
    out.reserve(out.capacity().max(16));
}
