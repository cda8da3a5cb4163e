//! The free command slots of a queue pair, oldest first.

/// A FIFO of free slot indices with room for every slot. Slots are handed
/// out in order, so the slots taken since a position are the entries from
/// it to the head ([`taken_at`](Self::taken_at)): how a doorbell batch
/// finds the commands to stamp. (Command IDs are not slot indices: see
/// `CommandIds`.) No allocation after creation; indices wrap with a
/// power-of-two mask.
#[derive(Debug)]
pub(super) struct FreeSlots {
    ring: Box<[u16]>,
    mask: u32,
    /// Next index to take.
    head: u32,
    /// Next index to put at.
    tail: u32,
}

impl FreeSlots {
    /// Every slot of `0..n` free, in order.
    pub(super) fn new(n: usize) -> Self {
        let cap = n.max(1).next_power_of_two();
        let mut ring = vec![0u16; cap].into_boxed_slice();
        for (i, r) in ring.iter_mut().enumerate().take(n) {
            *r = i as u16;
        }
        Self {
            ring,
            mask: cap as u32 - 1,
            head: 0,
            tail: n as u32,
        }
    }

    /// The position of the next slot to take; with
    /// [`taken_at`](Self::taken_at), which slots were taken since an
    /// earlier position.
    #[inline(always)]
    pub(super) fn take_position(&self) -> u32 {
        self.head
    }

    /// The slot taken at position `p`, one of the last `ring length -
    /// free` positions before [`take_position`](Self::take_position)
    /// (later frees have not written over it: at most `ring length`
    /// positions are ever ahead of a taken one).
    #[inline(always)]
    pub(super) fn taken_at(&self, p: u32) -> u16 {
        let i = (p & self.mask) as usize;
        debug_assert!(i < self.ring.len());
        // SAFETY: as in `at`.
        unsafe { *self.ring.get_unchecked(i) }
    }

    /// Free slots.
    #[inline(always)]
    pub(super) fn len(&self) -> usize {
        self.tail.wrapping_sub(self.head) as usize
    }

    /// Whether no slot is free.
    #[inline(always)]
    pub(super) fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// The entry at position `i` (any u32: masked into the ring).
    #[inline(always)]
    fn at(&mut self, i: u32) -> &mut u16 {
        let i = (i & self.mask) as usize;
        debug_assert!(i < self.ring.len());
        // SAFETY: the ring's length is `mask + 1` (a power of two, see
        // `new`), so a masked position is inside it.
        unsafe { self.ring.get_unchecked_mut(i) }
    }

    /// The slot [`pop`](Self::pop) would take.
    #[inline(always)]
    pub(super) fn peek(&self) -> Option<u16> {
        if self.is_empty() {
            return None;
        }
        let i = (self.head & self.mask) as usize;
        debug_assert!(i < self.ring.len());
        // SAFETY: as in `at`.
        Some(unsafe { *self.ring.get_unchecked(i) })
    }

    /// Takes the oldest free slot.
    #[inline(always)]
    pub(super) fn pop(&mut self) -> Option<u16> {
        let s = self.peek()?;
        self.head = self.head.wrapping_add(1);
        Some(s)
    }

    /// Takes the oldest free slot, which [`peek`](Self::peek) just
    /// returned.
    #[inline(always)]
    pub(super) fn take_peeked(&mut self) {
        debug_assert!(!self.is_empty());
        self.head = self.head.wrapping_add(1);
    }

    /// Puts back the slot just taken by [`pop`](Self::pop), as the next
    /// one to take (a submission that failed before using it).
    pub(super) fn unpop(&mut self, slot: u16) {
        self.head = self.head.wrapping_sub(1);
        *self.at(self.head) = slot;
    }

    /// Frees `slot`, as the newest. The caller frees each slot it took
    /// once, so there is always room.
    #[inline(always)]
    pub(super) fn push(&mut self, slot: u16) {
        debug_assert!(self.len() < self.ring.len());
        *self.at(self.tail) = slot;
        self.tail = self.tail.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::FreeSlots;

    #[test]
    fn slots_come_back_oldest_first() {
        let mut f = FreeSlots::new(3);
        assert_eq!(f.len(), 3);
        assert_eq!(f.pop(), Some(0));
        assert_eq!(f.pop(), Some(1));
        f.push(0);
        assert_eq!(f.pop(), Some(2));
        assert_eq!(f.pop(), Some(0));
        assert_eq!(f.pop(), None);
        f.push(1);
        f.push(2);
        f.push(0);
        let t = f.pop().unwrap();
        f.unpop(t);
        assert_eq!(f.pop(), Some(1));
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn the_largest_queue_cycles_through_every_slot() {
        let n = 65534;
        let mut f = FreeSlots::new(n);
        for round in 0..3u32 {
            for i in 0..n {
                let s = f.pop().unwrap();
                assert_eq!(s as usize, i, "round {round}");
                f.push(s);
            }
        }
        assert_eq!(f.len(), n);
    }
}
