//! Poll groups: many queue pairs polled from one thread (see
//! [`PollGroup`]).

use super::io::Done;
use super::QueuePair;

/// A poll group: one object that polls many queue pairs (of one
/// controller or several) from one thread, as SPDK's
/// `spdk_nvme_poll_group` does.
///
/// A [`PollGroup`] owns its queue pairs. Each [`poll`](PollGroup::poll)
/// reads the clock once for all of them (the doorbell stamps and the
/// timeout checks of every member use it), takes at most a budget of
/// completions, and starts where the previous call stopped, so a busy
/// queue pair cannot starve the others.
///
/// ```
/// # use nvme_sim::{Config, SimController};
/// # use nvme_vfio::ctrl::{Controller, Io, PollGroup, QueueConfig};
/// # use nvme_vfio::mem::{DmaSpace, SpaceConfig};
/// # let sim = SimController::new(Config::default()).unwrap();
/// # let space = DmaSpace::new(sim.iommu().clone(), SpaceConfig { hugepages: false });
/// # let config = nvme_vfio::ctrl::Config { space: SpaceConfig { hugepages: false }, ..Default::default() };
/// # // SAFETY: the registers, IOMMU and PCI function all belong to `sim`.
/// # let ctrl = unsafe { Controller::with_backend(sim.registers(), space, config, Some(sim.pci_function())) }?;
/// let ns = ctrl.namespace(1)?;
/// let mut group = PollGroup::new();
/// for _ in 0..2 {
///     let mut qp = ctrl.queue_pair(QueueConfig::default())?;
///     qp.submit(Io::read(&ns, 0, vec![0u8; 4096]).tag(1)).map_err(|(e, _)| e)?;
///     group.add(qp);
/// }
/// let mut done = 0;
/// while done < 2 {
///     done += group.poll(64, |member, _qp, d| {
///         assert!(member < 2 && d.result.is_ok());
///     });
/// }
/// # Ok::<(), nvme_vfio::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct PollGroup {
    members: Vec<Option<QueuePair>>,
    /// The member the next poll starts with.
    next: usize,
    /// Completions of one member (capacity reused).
    scratch: Vec<Done>,
}

impl PollGroup {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `qp`; returns its member number (what [`poll`](Self::poll)
    /// reports its completions with).
    pub fn add(&mut self, qp: QueuePair) -> usize {
        let depth = qp.depth();
        if self.scratch.capacity() < depth {
            self.scratch.reserve(depth - self.scratch.len());
        }
        match self.members.iter().position(Option::is_none) {
            Some(i) => {
                self.members[i] = Some(qp);
                i
            }
            None => {
                self.members.push(Some(qp));
                self.members.len() - 1
            }
        }
    }

    /// Takes member `member` out of the group.
    pub fn remove(&mut self, member: usize) -> Option<QueuePair> {
        self.members.get_mut(member)?.take()
    }

    /// Member `member`, to submit to.
    pub fn get_mut(&mut self, member: usize) -> Option<&mut QueuePair> {
        self.members.get_mut(member)?.as_mut()
    }

    /// How many queue pairs are in the group.
    pub fn len(&self) -> usize {
        self.members.iter().flatten().count()
    }

    /// Whether the group has no queue pair.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Commands in flight on all members.
    pub fn inflight(&self) -> usize {
        self.members.iter().flatten().map(QueuePair::inflight).sum()
    }

    /// Publishes what each member has queued and collects at most `budget`
    /// completions (at least one member is always polled), handing each to
    /// `on_done` with its member number and the member itself (to submit
    /// the next request right there); returns how many there were.
    /// Timeouts of every member are checked against one clock reading.
    ///
    /// When the budget runs out, completions may be left in the queues;
    /// in interrupt mode they raise no new interrupt: poll again (until a
    /// call returns less than its budget) before going back to sleep.
    pub fn poll(
        &mut self,
        budget: usize,
        mut on_done: impl FnMut(usize, &mut QueuePair, Done),
    ) -> usize {
        let n = self.members.len();
        if n == 0 {
            return 0;
        }
        let now = super::clock::now_ms();
        let mut left = budget.max(1);
        let mut total = 0;
        let start = self.next % n;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(qp) = self.members[i].as_mut() else {
                continue;
            };
            let got = qp.poll_at(&mut self.scratch, now, left.min(u32::MAX as usize) as u32);
            for d in self.scratch.drain(..) {
                on_done(i, qp, d);
            }
            total += got;
            left = left.saturating_sub(got);
            if left == 0 {
                // The next call starts after the member polled last.
                self.next = i + 1;
                return total;
            }
        }
        self.next = start + 1;
        total
    }

    /// The members, with their numbers.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut QueuePair)> {
        self.members
            .iter_mut()
            .enumerate()
            .filter_map(|(i, m)| Some((i, m.as_mut()?)))
    }
}
