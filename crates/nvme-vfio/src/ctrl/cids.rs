//! Command IDs of a queue pair.
//!
//! A completion names its command only by the 16-bit command ID, and the
//! device may post one late (after a reset, or twice). So an ID must not
//! come back soon after its command completed: IDs are handed out from the
//! whole 16-bit space by a rotating counter that skips the ones in flight,
//! and a table maps each ID in flight to its command slot. An ID is reused
//! only after the counter went all the way round: at least 65536 minus the
//! commands in flight other commands later, whatever the queue depth and
//! however long some commands take (Linux's nvme driver keeps a 4-bit
//! generation per tag instead: 16 uses of the same tag).

/// The table entry of an ID not in flight.
const NONE: u16 = u16::MAX;

/// Command IDs in flight and the counter that hands out the next.
pub(super) struct CommandIds {
    /// The slot each ID is in flight in, or [`NONE`]. Indexed by the ID
    /// itself (every u16 is in bounds: no check).
    slot_of: Box<[u16; 1 << 16]>,
    /// Where the search for the next free ID starts.
    next: u16,
}

impl core::fmt::Debug for CommandIds {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CommandIds")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl CommandIds {
    /// No ID in flight. Slots are numbered below `u16::MAX`.
    pub(super) fn new() -> Self {
        let table: Box<[u16]> = vec![NONE; 1 << 16].into_boxed_slice();
        // A slice of exactly 65536 entries converts.
        let Ok(slot_of) = table.try_into() else {
            unreachable!("the table has 65536 entries")
        };
        Self { slot_of, next: 0 }
    }

    /// Takes the next ID not in flight, for a command in `slot`. There is
    /// always one: a queue pair has fewer than 65535 slots.
    #[inline(always)]
    pub(super) fn take(&mut self, slot: u16) -> u16 {
        debug_assert_ne!(slot, NONE);
        let mut id = self.next;
        while self.slot_of[id as usize] != NONE {
            id = id.wrapping_add(1);
        }
        self.slot_of[id as usize] = slot;
        self.next = id.wrapping_add(1);
        id
    }

    /// The slot ID `id` is in flight in, or `None`.
    #[inline(always)]
    #[cfg(test)]
    pub(super) fn slot(&self, id: u16) -> Option<usize> {
        let s = self.slot_of[id as usize];
        (s != NONE).then_some(s as usize)
    }

    /// The slot ID `id` is in flight in, or `u16::MAX` (above every slot
    /// index) if it is not in flight.
    #[inline(always)]
    pub(super) fn slot_or_none(&self, id: u16) -> usize {
        self.slot_of[id as usize] as usize
    }

    /// ID `id`'s command is done: it may be handed out again (once the
    /// counter comes round).
    #[inline(always)]
    pub(super) fn release(&mut self, id: u16) {
        self.slot_of[id as usize] = NONE;
    }
}

#[cfg(test)]
mod tests {
    use super::CommandIds;

    #[test]
    fn an_id_comes_back_only_after_the_counter_went_round() {
        let mut ids = CommandIds::new();
        // 100 commands stuck in slots 1..=100, one slot reused for
        // everything else.
        let stuck: Vec<u16> = (1..=100).map(|s| ids.take(s)).collect();
        let first = ids.take(0);
        ids.release(first);
        let mut seen = std::collections::HashSet::new();
        seen.insert(first);
        for _ in 0..(65536 - 100 - 1) {
            let id = ids.take(0);
            assert!(
                seen.insert(id),
                "ID {id} came back before the counter went round"
            );
            assert!(!stuck.contains(&id));
            assert_eq!(ids.slot(id), Some(0));
            ids.release(id);
            assert_eq!(ids.slot(id), None);
        }
        // Round: the first ID again, the stuck ones skipped.
        assert_eq!(ids.take(0), first);
        assert_eq!(ids.slot(stuck[0]), Some(1));
    }
}
