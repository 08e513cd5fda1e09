//! Out-of-order completion tracking and the Kafka-style commit position of one partition.
//!
//! Events of a partition are dispatched in offset order but finish in any order. The commit
//! position is the lowest offset that was seen and has not finished yet: everything below it is
//! done, so a restart from it replays work but never skips any.
//!
//! Offsets need not be contiguous: compacted topics and transaction markers leave holes, and
//! only offsets actually seen count. The tracker keeps one slot per seen offset between the
//! commit position and the newest dispatched offset, in a ring that is popped from the front as
//! the low end finishes (amortised O(1) advance, O(log n) completion by binary search). Nothing
//! about it is capped: unlike an offset map squeezed into commit metadata, a long run of
//! completions behind one slow event costs 16 bytes each in memory and never stalls
//! consumption; a blocking event is reported by stall detection instead.

use std::collections::VecDeque;

use super::ConsumerError;

/// One seen offset and whether its event has finished.
#[derive(Debug, Clone, Copy)]
struct Slot {
    offset: i64,
    done: bool,
}

/// Tracks the dispatched offsets of one partition as they complete out of order, and answers
/// the commit position.
#[derive(Debug, Clone)]
pub struct OffsetTracker {
    /// Seen offsets from the commit position upwards, ascending; the front is always unfinished
    /// (finished fronts are popped at once), so the commit position is the front's offset.
    slots: VecDeque<Slot>,
    /// The offset after the newest one seen: the commit position once every slot is done, and
    /// the lower bound for the next offset (offsets arrive in increasing order).
    next: i64,
    /// Unfinished slots, so `pending()` does not scan.
    pending: usize,
}

impl OffsetTracker {
    /// A tracker for a partition whose consumption starts at `start` (the committed position
    /// the partition was assigned at, or the log start).
    pub fn new(start: i64) -> Self {
        Self {
            slots: VecDeque::new(),
            next: start,
            pending: 0,
        }
    }

    /// Records that the event at `offset` has been accepted for processing. Offsets must be
    /// strictly increasing and not below the start position; holes are allowed.
    pub fn dispatch(&mut self, offset: i64) -> Result<(), ConsumerError> {
        if offset < self.next {
            return Err(ConsumerError::OffsetNotIncreasing {
                offset,
                expected_at_least: self.next,
            });
        }
        self.slots.push_back(Slot {
            offset,
            done: false,
        });
        self.pending += 1;
        self.next = offset.saturating_add(1);
        Ok(())
    }

    /// Records that the event at `offset` has finished (applied, or durably handed to the
    /// retry topic). Returns true when the commit position moved.
    pub fn complete(&mut self, offset: i64) -> Result<bool, ConsumerError> {
        // Without holes, an offset's slot is its distance from the front; with holes it is
        // earlier, and searched for.
        let front = self.slots.front().map_or(offset, |slot| slot.offset);
        let guess = usize::try_from(offset.wrapping_sub(front)).ok();
        let index = match guess {
            Some(at) if self.slots.get(at).is_some_and(|slot| slot.offset == offset) => at,
            _ => self
                .slots
                .binary_search_by(|slot| slot.offset.cmp(&offset))
                .map_err(|_| ConsumerError::UnknownOffset { offset })?,
        };
        let slot = &mut self.slots[index];
        if slot.done {
            return Err(ConsumerError::AlreadyCompleted { offset });
        }
        slot.done = true;
        self.pending -= 1;
        if index != 0 {
            return Ok(false);
        }
        while self.slots.front().is_some_and(|slot| slot.done) {
            self.slots.pop_front();
        }
        Ok(true)
    }

    /// The position to commit: the lowest seen offset not yet finished, or the offset after
    /// the newest seen one when all are finished.
    pub fn committable(&self) -> i64 {
        self.slots.front().map_or(self.next, |slot| slot.offset)
    }

    /// The offset that blocks the commit position, if any event is unfinished.
    pub fn blocking_offset(&self) -> Option<i64> {
        self.slots.front().map(|slot| slot.offset)
    }

    /// Seen offsets not yet finished.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Slots held in memory: the unfinished offsets plus the finished ones above the commit
    /// position.
    pub fn tracked(&self) -> usize {
        self.slots.len()
    }

    /// The lowest offset the next dispatched event may have.
    pub fn next_offset(&self) -> i64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    #[test]
    fn starts_at_the_assigned_position() {
        let tracker = OffsetTracker::new(42);
        assert_eq!(tracker.committable(), 42);
        assert_eq!(tracker.blocking_offset(), None);
    }

    #[test]
    fn out_of_order_completion_waits_for_the_lowest() {
        let mut tracker = OffsetTracker::new(0);
        for offset in 0..5 {
            tracker.dispatch(offset).expect("increasing offsets");
        }
        assert!(!tracker.complete(3).expect("seen"));
        assert!(!tracker.complete(1).expect("seen"));
        assert_eq!(tracker.committable(), 0);
        assert!(tracker.complete(0).expect("seen"));
        assert_eq!(tracker.committable(), 2);
        assert!(tracker.complete(2).expect("seen"));
        assert_eq!(tracker.committable(), 4);
        assert!(tracker.complete(4).expect("seen"));
        assert_eq!(tracker.committable(), 5);
        assert_eq!(tracker.tracked(), 0);
    }

    #[test]
    fn gaps_are_not_waited_for() {
        // A compacted topic: offsets 10, 11, 15, 100 exist, nothing between them.
        let mut tracker = OffsetTracker::new(3);
        for offset in [10, 11, 15, 100] {
            tracker.dispatch(offset).expect("increasing offsets");
        }
        assert_eq!(tracker.committable(), 10);
        tracker.complete(10).expect("seen");
        tracker.complete(11).expect("seen");
        assert_eq!(tracker.committable(), 15);
        tracker.complete(100).expect("seen");
        assert_eq!(tracker.committable(), 15);
        tracker.complete(15).expect("seen");
        assert_eq!(tracker.committable(), 101);
    }

    #[test]
    fn rejects_offsets_that_do_not_increase() {
        let mut tracker = OffsetTracker::new(5);
        assert!(matches!(
            tracker.dispatch(4),
            Err(ConsumerError::OffsetNotIncreasing { offset: 4, .. })
        ));
        tracker.dispatch(5).expect("at the start");
        assert!(tracker.dispatch(5).is_err());
    }

    #[test]
    fn rejects_unknown_and_repeated_completions() {
        let mut tracker = OffsetTracker::new(0);
        tracker.dispatch(0).expect("first");
        tracker.dispatch(2).expect("gap");
        assert!(matches!(
            tracker.complete(1),
            Err(ConsumerError::UnknownOffset { offset: 1 })
        ));
        tracker.complete(2).expect("seen");
        assert!(matches!(
            tracker.complete(2),
            Err(ConsumerError::AlreadyCompleted { offset: 2 })
        ));
        // Once committed past, an offset is no longer known.
        tracker.complete(0).expect("seen");
        assert!(tracker.complete(0).is_err());
    }

    /// Random dispatch and completion against a model that recomputes the commit position from
    /// scratch: the lowest unfinished offset, else one past the newest seen.
    #[test]
    fn matches_a_simple_model_under_random_operations() {
        for seed in 0..50u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let start = rng.random_range(0..1_000i64);
            let mut tracker = OffsetTracker::new(start);
            let mut unfinished: BTreeSet<i64> = BTreeSet::new();
            let mut next = start;
            for _ in 0..2_000 {
                if unfinished.is_empty() || rng.random_bool(0.55) {
                    let offset = next + rng.random_range(0..4i64);
                    tracker.dispatch(offset).expect("increasing offsets");
                    unfinished.insert(offset);
                    next = offset + 1;
                } else {
                    let pick = rng.random_range(0..unfinished.len());
                    let offset = *unfinished.iter().nth(pick).expect("non-empty set");
                    unfinished.remove(&offset);
                    tracker.complete(offset).expect("unfinished offset");
                }
                let expected = unfinished.first().copied().unwrap_or(next);
                assert_eq!(tracker.committable(), expected, "seed {seed}");
                assert_eq!(tracker.pending(), unfinished.len(), "seed {seed}");
            }
        }
    }
}
