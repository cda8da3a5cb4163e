//! A queue pair's recovery bookkeeping: the controller reset generation
//! its queues were created in and the one whose requests were failed and
//! rings reset, when to try creating the queues again, the device errors
//! seen (completions that belonged to no command in flight), and when to
//! look for timed-out commands next. The queue pair's completion path and
//! its recovery ([`recovery`](super::recovery)) act on it only through the
//! methods here.

/// The recovery bookkeeping of one I/O queue pair. Times are
/// [`clock::now_ms`](super::clock::now_ms) milliseconds.
#[derive(Debug)]
pub(super) struct RecoveryState {
    /// The controller reset generation the queues were created in.
    generation: u64,
    /// The reset generation whose requests in flight were failed and rings
    /// reset (ahead of `generation` while the queues are not created yet).
    cleaned: u64,
    /// When to try creating the queues again after a failed attempt.
    retry_at: u64,
    /// A device error was seen: reset the controller before trusting the
    /// queues again.
    device_error: bool,
    /// Completions that matched no command in flight, on this queue pair.
    device_errors: u64,
    /// When to look for timed-out commands next.
    next_check: u64,
}

impl RecoveryState {
    /// The bookkeeping of queues just created in reset generation
    /// `generation`.
    pub(super) fn new(generation: u64) -> Self {
        Self {
            generation,
            cleaned: generation,
            retry_at: 0,
            device_error: false,
            device_errors: 0,
            next_check: 0,
        }
    }

    /// The reset generation the queues were created in (or, for a
    /// controller dead or gone, the one recovery last caught up with).
    #[inline(always)]
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Records that recovery caught up with reset generation `generation`:
    /// the queues were created again in it (or the controller is dead or
    /// gone, and they never will be).
    pub(super) fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// Whether the requests in flight before reset generation `generation`
    /// still have to be failed and the rings reset.
    pub(super) fn needs_cleaning(&self, generation: u64) -> bool {
        self.cleaned != generation
    }

    /// Records that the requests in flight before reset generation
    /// `generation` were failed and the rings reset: the device error that
    /// led to the reset is forgotten, and creating the queues may be tried
    /// at once.
    pub(super) fn mark_cleaned(&mut self, generation: u64) {
        self.device_error = false;
        self.cleaned = generation;
        self.retry_at = 0;
    }

    /// Whether creating the queues may be tried (again) at `now`.
    pub(super) fn may_retry(&self, now: u64) -> bool {
        now >= self.retry_at
    }

    /// Records a failed attempt to create the queues: the next one comes no
    /// sooner than `at`.
    pub(super) fn retry_at(&mut self, at: u64) {
        self.retry_at = at;
    }

    /// Counts a completion that belonged to no command in flight; the
    /// controller is to be reset ([`take_device_error`](Self::take_device_error)).
    pub(super) fn note_device_error(&mut self) {
        self.device_errors += 1;
        self.device_error = true;
    }

    /// Whether a device error was seen since the last call (or since it was
    /// forgotten); clears it.
    #[inline(always)]
    pub(super) fn take_device_error(&mut self) -> bool {
        if self.device_error {
            self.device_error = false;
            return true;
        }
        false
    }

    /// Forgets a device error seen (what was in flight is failed or
    /// quarantined anyway).
    pub(super) fn clear_device_error(&mut self) {
        self.device_error = false;
    }

    /// Completions that matched no command in flight, so far.
    pub(super) fn device_errors(&self) -> u64 {
        self.device_errors
    }

    /// When to look for timed-out commands next.
    #[inline(always)]
    pub(super) fn next_check(&self) -> u64 {
        self.next_check
    }

    /// Whether timed-out commands are to be looked for at `now`.
    #[inline(always)]
    pub(super) fn check_due(&self, now: u64) -> bool {
        now >= self.next_check
    }

    /// Sets when to look for timed-out commands next.
    pub(super) fn set_next_check(&mut self, at: u64) {
        self.next_check = at;
    }

    /// Brings the next check forward to `at` if it is later.
    #[inline(always)]
    pub(super) fn check_by(&mut self, at: u64) {
        self.next_check = self.next_check.min(at);
    }
}
