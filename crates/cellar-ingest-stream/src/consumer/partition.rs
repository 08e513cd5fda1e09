//! One partition's state: accepted events, which of them may run, what finished, and the
//! commit position. Pure logic with no tasks or locks, so every rule is unit-testable; the
//! [`ParallelConsumer`](super::ParallelConsumer) drives it under its lock.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::offsets::OffsetTracker;
use super::ordering::KeyQueue;
use super::{BufferState, ConsumerError, Event, StallReason, TopicPartition};

/// How a dispatched event ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Processed successfully.
    Processed,
    /// Processing failed, and the failure handler took it over.
    HandedOver,
    /// Processing failed, and so did the failure handler: the offset stays unfinished.
    Parked {
        /// The failure handler's error.
        error: String,
    },
}

/// A snapshot of one partition, for metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionStats {
    /// The commit position.
    pub committable: i64,
    /// Events accepted and not finished (waiting, running or parked).
    pub buffered: usize,
    /// Events running now.
    pub in_flight: usize,
    /// Events parked after their failure handler failed.
    pub parked: usize,
    /// Offsets held by the tracker (unfinished ones and finished ones above the commit
    /// position).
    pub tracked: usize,
    /// Whether the partition reports a full buffer.
    pub full: bool,
}

/// The state of one assigned partition.
#[derive(Debug)]
pub struct PartitionWorker<P> {
    tracker: OffsetTracker,
    /// Events waiting behind a busy key. Boxed here and in `ready`, so that queueing and
    /// ordering them moves a pointer rather than the whole event.
    keys: KeyQueue<Box<Event<P>>>,
    /// Events free to run, waiting for a concurrency slot; the lowest offset first, so the
    /// commit position moves as early as possible.
    ready: BinaryHeap<Ready<P>>,
    in_flight: usize,
    /// Events whose failure handler failed, by offset, with the error: kept for reports, and
    /// counted as unfinished.
    parked: BTreeMap<i64, (Option<Bytes>, String)>,
    /// Accepted and not finished: ready + queued + in flight + parked; what the buffer bound
    /// applies to.
    buffered: usize,
    capacity: usize,
    resume_at: usize,
    /// Reported as full from reaching `capacity` until falling to `resume_at`.
    full: bool,
    /// Set by `begin_revoke`: nothing more is accepted or released.
    revoking: bool,
    /// When the commit position last moved, or unfinished work last appeared on an idle
    /// partition; what stall detection measures from.
    progress_at: Instant,
}

impl<P> PartitionWorker<P> {
    /// A partition assigned at commit position `start`, reporting full at `capacity` unfinished
    /// events and having room again at `resume_at`.
    pub fn new(start: i64, capacity: usize, resume_at: usize, now: Instant) -> Self {
        Self {
            tracker: OffsetTracker::new(start),
            keys: KeyQueue::new(),
            ready: BinaryHeap::new(),
            in_flight: 0,
            parked: BTreeMap::new(),
            buffered: 0,
            capacity,
            resume_at,
            full: false,
            revoking: false,
            progress_at: now,
        }
    }

    /// Accepts a batch, all or nothing: every offset must be above the previous one.
    pub fn accept(
        &mut self,
        partition: &TopicPartition,
        events: Vec<Event<P>>,
        now: Instant,
    ) -> Result<BufferState, ConsumerError> {
        if self.revoking {
            return Err(ConsumerError::Revoking(partition.clone()));
        }
        let mut expected = self.tracker.next_offset();
        for event in &events {
            if event.offset < expected {
                return Err(ConsumerError::BatchRejected {
                    partition: partition.clone(),
                    source: Box::new(ConsumerError::OffsetNotIncreasing {
                        offset: event.offset,
                        expected_at_least: expected,
                    }),
                });
            }
            expected = event.offset.saturating_add(1);
        }
        if self.tracker.pending() == 0 && !events.is_empty() {
            // An idle partition was not stalled; its clock starts with the new work.
            self.progress_at = now;
        }
        for event in events {
            self.tracker.dispatch(event.offset)?;
            self.buffered += 1;
            let key = event.key.clone();
            if let Some(event) = self.keys.admit(key.as_ref(), Box::new(event)) {
                self.ready.push(Ready(event));
            }
        }
        if self.buffered >= self.capacity {
            self.full = true;
        }
        Ok(self.buffer_state())
    }

    /// Takes the lowest-offset event free to run, counting it in flight.
    pub fn next_ready(&mut self) -> Option<Event<P>> {
        if self.revoking {
            return None;
        }
        let Ready(event) = self.ready.pop()?;
        self.in_flight += 1;
        Some(*event)
    }

    /// Whether an event is free to run.
    pub fn has_ready(&self) -> bool {
        !self.revoking && !self.ready.is_empty()
    }

    /// Records how the in-flight event at `offset` with `key` ended, releasing the key's next
    /// event unless it was parked. Returns true when the commit position moved.
    pub fn finish(
        &mut self,
        offset: i64,
        key: Option<&Bytes>,
        outcome: Outcome,
        now: Instant,
    ) -> Result<bool, ConsumerError> {
        self.in_flight = self.in_flight.saturating_sub(1);
        let moved = match outcome {
            Outcome::Processed | Outcome::HandedOver => {
                let moved = self.tracker.complete(offset)?;
                self.buffered = self.buffered.saturating_sub(1);
                if !self.revoking {
                    if let Some(next) = self.keys.complete(key) {
                        self.ready.push(Ready(next));
                    }
                }
                moved
            }
            Outcome::Parked { error } => {
                // The key stays busy: its later events must not overtake this one, or a replay
                // would find them applied and skip it.
                self.parked.insert(offset, (key.cloned(), error));
                false
            }
        };
        if moved {
            self.progress_at = now;
        }
        self.update_full();
        Ok(moved)
    }

    /// Stops the partition: nothing more is accepted or released, and every event not yet
    /// running is dropped. Returns how many were dropped; their offsets stay unfinished, so
    /// the commit position stays below them.
    pub fn begin_revoke(&mut self) -> usize {
        self.revoking = true;
        let dropped = self.ready.len() + self.keys.clear();
        self.ready.clear();
        self.buffered = self.buffered.saturating_sub(dropped);
        self.update_full();
        dropped
    }

    /// Whether the partition is being revoked.
    pub fn is_revoking(&self) -> bool {
        self.revoking
    }

    /// The commit position.
    pub fn committable(&self) -> i64 {
        self.tracker.committable()
    }

    /// Events running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Events accepted and not finished.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Whether the driver should pause the partition.
    pub fn buffer_state(&self) -> BufferState {
        if self.full {
            BufferState::Full
        } else {
            BufferState::HasRoom
        }
    }

    /// Parked events: offset, key and the failure handler's error.
    pub fn parked(&self) -> impl Iterator<Item = (i64, Option<&Bytes>, &str)> + '_ {
        self.parked
            .iter()
            .map(|(offset, (key, error))| (*offset, key.as_ref(), error.as_str()))
    }

    /// The blocking offset and why it blocks, when the commit position has not moved for
    /// `after` while work is unfinished.
    pub fn stall(&self, now: Instant, after: Duration) -> Option<(i64, Duration, StallReason)> {
        let offset = self.tracker.blocking_offset()?;
        let stuck_for = now.saturating_duration_since(self.progress_at);
        if stuck_for < after {
            return None;
        }
        let reason = if let Some((_, error)) = self.parked.get(&offset) {
            StallReason::FailureHandlerFailed {
                error: error.clone(),
            }
        } else if self.ready.iter().any(|Ready(event)| event.offset == offset) {
            StallReason::Waiting
        } else {
            StallReason::InFlight
        };
        Some((offset, stuck_for, reason))
    }

    /// A snapshot for metrics.
    pub fn stats(&self) -> PartitionStats {
        PartitionStats {
            committable: self.committable(),
            buffered: self.buffered,
            in_flight: self.in_flight,
            parked: self.parked.len(),
            tracked: self.tracker.tracked(),
            full: self.full,
        }
    }

    fn update_full(&mut self) {
        if self.buffered >= self.capacity {
            self.full = true;
        } else if self.buffered <= self.resume_at {
            self.full = false;
        }
    }
}

/// An event free to run, ordered so that the lowest offset comes first out of the heap
/// (offsets are unique within a partition).
#[derive(Debug)]
struct Ready<P>(Box<Event<P>>);

impl<P> Ord for Ready<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.offset.cmp(&self.0.offset)
    }
}

impl<P> PartialOrd for Ready<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<P> PartialEq for Ready<P> {
    fn eq(&self, other: &Self) -> bool {
        self.0.offset == other.0.offset
    }
}

impl<P> Eq for Ready<P> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_ready<P>(worker: &mut PartitionWorker<P>) -> Vec<Event<P>> {
        std::iter::from_fn(|| worker.next_ready()).collect()
    }

    fn tp() -> TopicPartition {
        TopicPartition::new("events", 0)
    }

    fn keyed(offset: i64, key: &'static str) -> Event<()> {
        Event::new(offset, Some(Bytes::from_static(key.as_bytes())), ())
    }

    #[test]
    fn releases_one_event_per_key_lowest_offset_first() {
        let now = Instant::now();
        let mut worker = PartitionWorker::new(0, 100, 50, now);
        let batch = vec![keyed(0, "a"), keyed(1, "b"), keyed(2, "a"), keyed(3, "c")];
        worker.accept(&tp(), batch, now).expect("valid batch");
        let released: Vec<i64> = drain_ready(&mut worker).iter().map(|e| e.offset).collect();
        assert_eq!(released, vec![0, 1, 3]);
        let a = Bytes::from_static(b"a");
        worker
            .finish(0, Some(&a), Outcome::Processed, now)
            .expect("in flight");
        let released: Vec<i64> = drain_ready(&mut worker).iter().map(|e| e.offset).collect();
        assert_eq!(released, vec![2]);
        assert_eq!(worker.committable(), 1);
    }

    #[test]
    fn rejects_a_batch_with_decreasing_offsets_whole() {
        let now = Instant::now();
        let mut worker = PartitionWorker::new(0, 100, 50, now);
        let error = worker
            .accept(
                &tp(),
                vec![keyed(0, "a"), keyed(5, "a"), keyed(4, "b")],
                now,
            )
            .expect_err("offset 4 after 5");
        assert!(error.to_string().contains("offset 4"), "{error}");
        assert_eq!(worker.buffered(), 0);
        assert!(drain_ready(&mut worker).is_empty());
    }

    #[test]
    fn parked_event_blocks_its_key_and_the_commit() {
        let now = Instant::now();
        let mut worker = PartitionWorker::new(0, 100, 50, now);
        worker
            .accept(
                &tp(),
                vec![keyed(0, "a"), keyed(1, "b"), keyed(2, "a")],
                now,
            )
            .expect("valid batch");
        drain_ready(&mut worker);
        let a = Bytes::from_static(b"a");
        let b = Bytes::from_static(b"b");
        let parked = Outcome::Parked {
            error: "retry topic unreachable".into(),
        };
        worker.finish(0, Some(&a), parked, now).expect("in flight");
        worker
            .finish(1, Some(&b), Outcome::Processed, now)
            .expect("in flight");
        assert!(
            drain_ready(&mut worker).is_empty(),
            "offset 2 waits behind 0"
        );
        assert_eq!(worker.committable(), 0);
        let later = now + Duration::from_secs(10);
        let (offset, _, reason) = worker
            .stall(later, Duration::from_secs(5))
            .expect("stalled");
        assert_eq!(offset, 0);
        assert!(matches!(reason, StallReason::FailureHandlerFailed { .. }));
    }

    #[test]
    fn full_until_the_resume_mark() {
        let now = Instant::now();
        let mut worker = PartitionWorker::new(0, 4, 2, now);
        let batch: Vec<_> = (0..4).map(|i| Event::new(i, None, ())).collect();
        assert_eq!(
            worker.accept(&tp(), batch, now).expect("valid"),
            BufferState::Full
        );
        drain_ready(&mut worker);
        worker.finish(0, None, Outcome::Processed, now).expect("ok");
        assert_eq!(worker.buffer_state(), BufferState::Full, "3 is above 2");
        worker.finish(1, None, Outcome::Processed, now).expect("ok");
        assert_eq!(worker.buffer_state(), BufferState::HasRoom);
    }

    #[test]
    fn revoke_drops_waiting_events_and_keeps_the_commit_below_them() {
        let now = Instant::now();
        let mut worker = PartitionWorker::new(0, 100, 50, now);
        let batch = vec![keyed(0, "a"), keyed(1, "a"), keyed(2, "b"), keyed(3, "c")];
        worker.accept(&tp(), batch, now).expect("valid");
        assert!(worker.next_ready().is_some(), "offset 0 runs");
        assert_eq!(worker.begin_revoke(), 3);
        assert!(worker.next_ready().is_none());
        let a = Bytes::from_static(b"a");
        worker
            .finish(0, Some(&a), Outcome::Processed, now)
            .expect("in flight");
        assert!(!worker.has_ready(), "offset 1 is not released");
        assert_eq!(worker.committable(), 1);
        assert!(worker.accept(&tp(), vec![keyed(4, "d")], now).is_err());
    }
}
