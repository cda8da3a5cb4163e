//! Fault injection: rules that pick commands (by count, by opcode and
//! queue, or at random with a seed) and what happens to them instead of a
//! normal completion.
//!
//! ```
//! use std::time::Duration;
//! use nvme_sim::{ErrorDetail, FaultAction, FaultRule, Match};
//! use nvme_vfio::nvme::cmd::{io, Status};
//!
//! // The 3rd I/O command from now fails with Unrecovered Read Error, DNR.
//! let a = FaultRule::nth(Match::io(), 3, FaultAction::Status(Status::new(2, 0x81, true)));
//! // The next Read fails the same way, with More: the Error Information log
//! // entry names LBA 1000 as the first that failed.
//! let e = FaultRule::next(
//!     Match::io().opcode(io::READ),
//!     FaultAction::Logged { status: Status::new(2, 0x81, true), detail: ErrorDetail::at_lba(1000) },
//! );
//! // The next Write on submission queue 1 never completes.
//! let b = FaultRule::next(Match::io().opcode(io::WRITE).sqid(1), FaultAction::Drop);
//! // One I/O command in ten is delayed by 5 ms (with the controller's seed).
//! let c = FaultRule::random(Match::io(), 0.1, FaultAction::Delay(Duration::from_millis(5)));
//! // The next Read completes again 10 ms later, rewriting its buffer.
//! let d = FaultRule::next(
//!     Match::io().opcode(io::READ),
//!     FaultAction::Duplicate { after: Duration::from_millis(10), redo_data: true },
//! );
//! # let _ = (a, b, c, d, e);
//! ```

use std::time::Duration;

use nvme_vfio::nvme::cmd::{Command, Status};

/// Which commands a rule looks at.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Match {
    /// `Some(true)`: I/O queues only; `Some(false)`: the admin queue only.
    pub io: Option<bool>,
    /// Only this submission queue.
    pub sqid: Option<u16>,
    /// Only this opcode.
    pub opcode: Option<u8>,
    /// Only this namespace ID.
    pub nsid: Option<u32>,
}

impl Match {
    /// Every command.
    pub const fn any() -> Self {
        Self {
            io: None,
            sqid: None,
            opcode: None,
            nsid: None,
        }
    }

    /// Commands on I/O queues.
    pub const fn io() -> Self {
        Self {
            io: Some(true),
            ..Self::any()
        }
    }

    /// Commands on the admin queue.
    pub const fn admin() -> Self {
        Self {
            io: Some(false),
            ..Self::any()
        }
    }

    /// Narrowed to `opcode`.
    pub const fn opcode(mut self, opcode: u8) -> Self {
        self.opcode = Some(opcode);
        self
    }

    /// Narrowed to submission queue `sqid`.
    pub const fn sqid(mut self, sqid: u16) -> Self {
        self.sqid = Some(sqid);
        self
    }

    /// Narrowed to namespace `nsid`.
    pub const fn nsid(mut self, nsid: u32) -> Self {
        self.nsid = Some(nsid);
        self
    }

    /// Whether `cmd`, fetched from submission queue `sqid`, matches.
    pub fn matches(&self, sqid: u16, cmd: &Command) -> bool {
        self.io.is_none_or(|io| io == (sqid != 0))
            && self.sqid.is_none_or(|q| q == sqid)
            && self.opcode.is_none_or(|o| o == cmd.opcode())
            && self.nsid.is_none_or(|n| n == cmd.nsid)
    }
}

/// What happens to a command a rule picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Complete without executing, with this status (carrying DNR, More and
    /// CRD as given). An error status also adds an entry for the command to
    /// the Error Information log (as every failed command does), with the
    /// command's starting LBA for a Read or Write.
    Status(Status),
    /// Complete without executing, with `status` and its More bit set, and
    /// add an entry for the command to the Error Information log with
    /// `detail`: what a controller with more to say about a failure does.
    Logged {
        /// The completion's status (the More bit is set on it).
        status: Status,
        /// What the log entry says beyond the command's IDs and status.
        detail: ErrorDetail,
    },
    /// Never complete (the command is lost inside the controller; an Abort
    /// or a controller reset gets rid of it).
    Drop,
    /// Execute and complete after this long.
    Delay(Duration),
    /// Hold the command back and execute and complete it only after `after`
    /// later completions have been posted to the same completion queue (or
    /// on [`SimController::release_held`](crate::SimController::release_held)):
    /// an out-of-order completion.
    HoldBack {
        /// Completions to let pass first (at least 1).
        after: u32,
    },
    /// Raise CSTS.CFS: the controller stops processing commands until it is
    /// reset. The command does not complete.
    Fatal,
    /// Execute and complete normally, then post the same completion again
    /// `after` later: a stale duplicate with the same command ID, SQ ID,
    /// status and dword 0 (the SQ head field carries the head at that
    /// time). If `redo_data` is set, the data transfer of a Read or Write
    /// that succeeded is repeated just before the duplicate is posted: a Read writes the
    /// host buffer again (with the blocks as they are then), a Write reads
    /// it again and stores what it holds then. The command's data pointer
    /// is walked again at that time.
    ///
    /// The duplicate is lost if the controller is reset first (CC.EN 1 -> 0
    /// that the controller honours, or a function level reset), or if the
    /// submission queue is gone by then.
    Duplicate {
        /// Time from the first completion to the duplicate.
        after: Duration,
        /// Whether a Read or Write moves its data again.
        redo_data: bool,
    },
    /// A command stuck inside the controller that outlives a controller
    /// reset: it is held (neither Abort nor the deletion of its submission
    /// queue ends it) until the controller is reset (CC.EN 1 -> 0). `after`
    /// the next enable (CC.EN 0 -> 1), once the controller is ready and
    /// bus mastering is on, it executes against the controller as it is
    /// then, moving its data through whatever the IOMMU maps at that
    /// moment, and its completion (same command ID and SQ ID) is posted to
    /// the completion queue with the ID its submission queue completed to
    /// before the reset, if such a queue exists again (otherwise only the
    /// data moves). A function level reset drops it.
    SurviveReset {
        /// Time from the re-enable to the execution and completion.
        after: Duration,
    },
    /// Execute normally, but post a completion entry with a field altered
    /// (see [`CqeCorruption`]). The data transfer happens normally.
    Corrupt(CqeCorruption),
    /// For a Read or Write: post a successful completion at once and move
    /// the data `delay` later (a Read writes the host buffer after the
    /// completion, a Write reads it after the completion and stores what it
    /// holds then). The checks that could fail the command run at the late
    /// transfer and, failing, leave nothing but a log message (and, for a
    /// refused transfer, an IOMMU fault). Other commands execute normally.
    /// A controller reset drops the late transfer.
    CompleteBeforeData {
        /// Time from the completion to the data transfer.
        delay: Duration,
    },
    /// For a Read or Write: after its data transfer, and before its
    /// completion, the device also writes `len` bytes of `byte` at the
    /// command's first data address plus `offset` (e.g. the transfer length,
    /// for the bytes just past a contiguous buffer). The IOMMU refuses it
    /// (counting a fault, [`SimIommu::fault_count`](crate::SimIommu::fault_count))
    /// unless a writable mapping covers every byte, in which case it lands.
    /// The command completes normally either way. Other commands execute
    /// normally.
    WriteOutside {
        /// Offset from the first data address, in bytes (may be negative).
        offset: i64,
        /// Bytes written.
        len: u32,
        /// The value of every byte written.
        byte: u8,
    },
}

/// The fields of an Error Information log entry that a
/// [`FaultAction::Logged`] sets; the entry's error count, SQ ID, status,
/// namespace and opcode are the command's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The first LBA that failed (`None`: the command's starting LBA for a
    /// Read or Write, 0 for other commands).
    pub lba: Option<u64>,
    /// The byte (0 to 63) and bit (0 to 7) of the command that holds the
    /// field in error (`None`: not applicable).
    pub parameter: Option<(u8, u8)>,
    /// Command Specific Information.
    pub command_specific: u64,
    /// The command ID the entry names instead of the command's own: a
    /// controller that logs the wrong command.
    pub cid: Option<u16>,
}

impl ErrorDetail {
    /// An entry naming `lba` as the first LBA that failed.
    pub const fn at_lba(lba: u64) -> Self {
        Self {
            lba: Some(lba),
            parameter: None,
            command_specific: 0,
            cid: None,
        }
    }
}

/// A completion entry field a [`FaultAction::Corrupt`] alters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CqeCorruption {
    /// The command ID is replaced by this value.
    Cid(u16),
    /// The command ID is XORed with this mask.
    CidXor(u16),
    /// The SQ identifier is replaced by this value (the entry still goes to
    /// the completion queue of the submission queue it came from).
    SqId(u16),
    /// The SQ head pointer is replaced by this value (taken modulo the
    /// queue size, so it stays in range).
    SqHead(u16),
    /// The SQ head pointer reports `k` entries past the submission queue's
    /// tail (as the tail doorbell last said, modulo the queue size): a
    /// head the host never submitted up to.
    SqHeadPastTail(u16),
    /// The entry is written with the inverted phase tag, the phase of the
    /// previous pass: to the host the slot still holds an old entry. The
    /// device's tail moves on as for a good entry (the bug is in the one
    /// write, not in the device's queue state), so its next completion goes
    /// to the next slot with the correct phase. A host that consumes
    /// entries in order stops at the bad slot and sees neither this
    /// completion nor any later one on that queue; the device, whose head
    /// doorbell no longer moves, eventually finds the queue full.
    InvertPhase,
    /// Dwords 0 and 1 (the command specific result: a Zone Append's LBA)
    /// are replaced by this value.
    Result(u64),
}

/// One fault injection rule: fires on the matching commands it selects.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultRule {
    /// The commands looked at.
    pub matching: Match,
    /// Matching commands to let through before the rule first fires.
    pub skip: u64,
    /// How many times the rule fires (`None`: for ever).
    pub times: Option<u64>,
    /// Fire on each eligible command with this probability only (using the
    /// controller's seeded generator); `None` fires every time.
    pub probability: Option<f64>,
    /// What happens.
    pub action: FaultAction,
}

impl FaultRule {
    /// Fires on the `n`th matching command from now (1-based), once.
    pub const fn nth(matching: Match, n: u64, action: FaultAction) -> Self {
        Self {
            matching,
            skip: n.saturating_sub(1),
            times: Some(1),
            probability: None,
            action,
        }
    }

    /// Fires on the next matching command, once.
    pub const fn next(matching: Match, action: FaultAction) -> Self {
        Self::nth(matching, 1, action)
    }

    /// Fires on every matching command with `probability`, for ever.
    pub const fn random(matching: Match, probability: f64, action: FaultAction) -> Self {
        Self {
            matching,
            skip: 0,
            times: None,
            probability: Some(probability),
            action,
        }
    }

    /// The same rule, firing `times` times (`None`: for ever).
    pub const fn times(mut self, times: Option<u64>) -> Self {
        self.times = times;
        self
    }
}

/// SplitMix64: small, seedable, good enough to pick faults.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform value in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The active rules and the generator for random ones.
#[derive(Clone, Debug)]
pub(crate) struct FaultPlan {
    rules: Vec<FaultRule>,
    rng: Rng,
    fired: u64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self::new(0x5eed)
    }
}

impl FaultPlan {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rules: Vec::new(),
            rng: Rng(seed),
            fired: 0,
        }
    }

    pub(crate) fn add(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    pub(crate) fn clear(&mut self) {
        self.rules.clear();
    }

    pub(crate) fn reseed(&mut self, seed: u64) {
        self.rng = Rng(seed);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Faults injected so far.
    pub(crate) fn fired(&self) -> u64 {
        self.fired
    }

    /// The action for `cmd` from submission queue `sqid`, if a rule fires.
    /// Every matching rule counts the command; the first that fires wins.
    pub(crate) fn check(&mut self, sqid: u16, cmd: &Command) -> Option<FaultAction> {
        let mut hit = None;
        for r in &mut self.rules {
            if !r.matching.matches(sqid, cmd) || r.times == Some(0) {
                continue;
            }
            if r.skip > 0 {
                r.skip -= 1;
                continue;
            }
            if let Some(p) = r.probability {
                if self.rng.unit() >= p {
                    continue;
                }
            }
            if hit.is_none() {
                r.times = r.times.map(|t| t - 1);
                hit = Some(r.action);
            }
        }
        self.rules.retain(|r| r.times != Some(0));
        if hit.is_some() {
            self.fired += 1;
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvme_vfio::nvme::cmd::io;

    #[test]
    fn rules_fire_on_the_commands_they_select() {
        let mut p = FaultPlan::default();
        let st = FaultAction::Status(Status::new(0, 0x06, false));
        p.add(FaultRule::nth(Match::io(), 3, st));
        p.add(FaultRule::next(
            Match::io().opcode(io::WRITE).sqid(2),
            FaultAction::Drop,
        ));
        let read = Command::rw(false, 1, 0, 1, false);
        let write = Command::rw(true, 1, 0, 1, false);
        assert_eq!(p.check(0, &read), None, "admin queue");
        assert_eq!(p.check(1, &write), None);
        assert_eq!(p.check(2, &read), None);
        assert_eq!(p.check(2, &write), Some(st), "3rd I/O command");
        assert_eq!(
            p.check(2, &write),
            Some(FaultAction::Drop),
            "the Drop rule saw the 3rd command but lost to the earlier rule"
        );
        assert!(p.is_empty());
        assert_eq!(p.fired(), 2);
    }

    #[test]
    fn random_rules_follow_the_seed() {
        let run = |seed| {
            let mut p = FaultPlan::new(seed);
            p.add(FaultRule::random(Match::any(), 0.25, FaultAction::Drop));
            let c = Command::default();
            (0..1000)
                .map(|_| p.check(1, &c).is_some())
                .collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
        let n = a.iter().filter(|&&x| x).count();
        assert!((180..320).contains(&n), "{n} of 1000 at p = 0.25");
    }
}
