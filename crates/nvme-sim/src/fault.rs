//! Fault injection: rules that pick commands (by count, by opcode and
//! queue, or at random with a seed) and what happens to them instead of a
//! normal completion.
//!
//! ```
//! use std::time::Duration;
//! use nvme_sim::{FaultAction, FaultRule, Match};
//! use nvme_vfio::nvme::cmd::{io, Status};
//!
//! // The 3rd I/O command from now fails with Unrecovered Read Error, DNR.
//! let a = FaultRule::nth(Match::io(), 3, FaultAction::Status(Status::new(2, 0x81, true)));
//! // The next Write on submission queue 1 never completes.
//! let b = FaultRule::next(Match::io().opcode(io::WRITE).sqid(1), FaultAction::Drop);
//! // One I/O command in ten is delayed by 5 ms (with the controller's seed).
//! let c = FaultRule::random(Match::io(), 0.1, FaultAction::Delay(Duration::from_millis(5)));
//! # let _ = (a, b, c);
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
    /// Complete without executing, with this status (carrying DNR or not).
    Status(Status),
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
