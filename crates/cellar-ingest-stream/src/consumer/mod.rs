//! The parallel in-partition consumer: the engine between a source (Kafka, the embedded log)
//! and the writer. It knows nothing of either: a driver feeds it batches of [`Event`]s per
//! partition, an [`EventProcessor`] applies each one, a [`FailureHandler`] takes the ones that
//! fail (re-publishing them to the retry topic), and the driver reads back the offsets it may
//! commit.
//!
//! What it guarantees:
//! - **in order per key**: events with the same key are processed one at a time in offset
//!   order; different keys, and events without a key, run concurrently ([`ordering`]);
//! - **nothing skipped**: a partition's commit position is the lowest offset not yet finished,
//!   where finished means processed, or handed to the failure handler and acknowledged by it;
//!   if the failure handler fails too, the offset stays unfinished and its key stops
//!   ([`offsets`]);
//! - **bounded work**: a per-partition buffer that reports [`BufferState::Full`] so the driver
//!   pauses the partition, and an overall in-flight limit that adapts to the processor's
//!   latency and error rate ([`concurrency`]);
//! - **clean rebalances**: [`ParallelConsumer::revoke`] stops a partition, waits (bounded) for
//!   its in-flight events, drops its queued ones and returns the final commit position;
//! - **visible stalls**: [`ParallelConsumer::stalled`] names the partitions whose commit
//!   position has not moved for a while, and the offset blocking each.
//!
//! Layout: [`offsets`] (the commit position under out-of-order completion), [`ordering`] (per-key
//! queues), [`concurrency`] (the adaptive limit), [`partition`] (one partition's state, pure
//! logic) and [`parallel`] (the tokio engine tying them together).

pub mod concurrency;
pub mod offsets;
pub mod ordering;
pub mod parallel;
pub mod partition;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use concurrency::{ConcurrencyConfig, ConcurrencyLimit};
pub use offsets::OffsetTracker;
pub use ordering::KeyQueue;
pub use parallel::ParallelConsumer;
pub use partition::{Outcome, PartitionStats, PartitionWorker};

/// Errors of the consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// An event's offset is not above the previous one of its partition: the driver re-sent or
    /// re-ordered events, which would break the commit position's meaning.
    #[error("offset {offset} is below the next expected offset {expected_at_least}: offsets of a partition must increase")]
    OffsetNotIncreasing {
        /// The offending offset.
        offset: i64,
        /// The lowest offset acceptable at that point.
        expected_at_least: i64,
    },
    /// A batch for a partition was rejected as a whole because of one offset.
    #[error("batch for {partition} rejected: {source}")]
    BatchRejected {
        /// The partition the batch was for.
        partition: TopicPartition,
        /// Why.
        #[source]
        source: Box<ConsumerError>,
    },
    /// A completion for an offset the partition never dispatched, or already committed past.
    #[error("offset {offset} was never dispatched or is already committed")]
    UnknownOffset {
        /// The offset.
        offset: i64,
    },
    /// A second completion for the same offset.
    #[error("offset {offset} was already completed")]
    AlreadyCompleted {
        /// The offset.
        offset: i64,
    },
    /// The partition is not assigned to this consumer (never assigned, or revoked).
    #[error("partition {0} is not assigned")]
    NotAssigned(TopicPartition),
    /// The partition is already assigned; revoke it first.
    #[error("partition {0} is already assigned")]
    AlreadyAssigned(TopicPartition),
    /// The partition is being revoked and takes no more events.
    #[error("partition {0} is being revoked")]
    Revoking(TopicPartition),
    /// A configuration value is out of range.
    #[error("invalid consumer configuration: {0}")]
    InvalidConfig(String),
    /// The consumer was built outside a tokio runtime, which it needs to run events.
    #[error("the parallel consumer must be created inside a tokio runtime")]
    NoRuntime,
}

/// A partition of a topic, the unit of ordering, commit and assignment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic name; shared because every in-flight event carries its partition.
    pub topic: Arc<str>,
    /// The partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// The partition `partition` of `topic`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One event of a partition, as the source delivered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<P> {
    /// Its offset in the partition; offsets increase but may have holes.
    pub offset: i64,
    /// The ordering key (the entity key): events with equal keys are processed in offset order;
    /// events without one are unordered.
    pub key: Option<Bytes>,
    /// Whatever the processor needs: the raw record, or a decoded event.
    pub payload: P,
}

impl<P> Event<P> {
    /// An event at `offset` with an optional key.
    pub fn new(offset: i64, key: Option<Bytes>, payload: P) -> Self {
        Self {
            offset,
            key,
            payload,
        }
    }
}

/// The error a processor or failure handler returns; it is logged and handed on, never
/// inspected by the consumer.
pub type ProcessError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Applies one event (decode, aggregate, write). Called concurrently for different keys,
/// never concurrently for one key.
#[async_trait]
pub trait EventProcessor<P>: Send + Sync + 'static {
    /// Processes `event` of `partition`; an error sends it to the [`FailureHandler`].
    async fn process(
        &self,
        partition: &TopicPartition,
        event: &Event<P>,
    ) -> Result<(), ProcessError>;
}

/// Takes an event whose processing failed, typically re-publishing it to the retry topic (or
/// the dead-letter topic). Returning `Ok` means the event is durably handed over, so its offset
/// may be committed.
///
/// Returning an error leaves the offset unfinished and stops the event's key (its later events
/// would otherwise overtake it), so the handler should retry transient producer errors itself
/// for a while before giving up.
#[async_trait]
pub trait FailureHandler<P>: Send + Sync + 'static {
    /// Hands over `event` of `partition`, which failed with `error`.
    async fn on_failure(
        &self,
        partition: &TopicPartition,
        event: &Event<P>,
        error: &ProcessError,
    ) -> Result<(), ProcessError>;
}

/// Whether a partition can take more events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferState {
    /// Keep fetching.
    HasRoom,
    /// Pause the partition until [`ParallelConsumer::wait_for_room`] returns.
    Full,
}

/// Settings of the parallel consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerConfig {
    /// The adaptive limit on events processed at once, across all partitions.
    pub concurrency: ConcurrencyConfig,
    /// Events accepted but not finished per partition at which it reports [`BufferState::Full`].
    /// A batch is always accepted whole, so a partition may hold up to this plus one batch.
    pub partition_buffer: usize,
    /// Once full, a partition has room again when its unfinished events fall to this; the gap
    /// keeps a driver from pausing and resuming on every event.
    pub resume_buffer: usize,
    /// A partition with unfinished work whose commit position has not moved for this long is
    /// reported by [`ParallelConsumer::stalled`].
    pub stall_after: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            concurrency: ConcurrencyConfig::default(),
            partition_buffer: 4_096,
            resume_buffer: 2_048,
            stall_after: Duration::from_secs(60),
        }
    }
}

impl ConsumerConfig {
    /// Checks every value, naming every mistake at once.
    pub fn validate(&self) -> Result<(), ConsumerError> {
        let mut problems = Vec::new();
        if let Err(ConsumerError::InvalidConfig(problem)) = self.concurrency.validate() {
            problems.push(problem);
        }
        if self.partition_buffer == 0 {
            problems.push("partition_buffer must be at least 1".to_owned());
        }
        if self.resume_buffer >= self.partition_buffer {
            problems.push(format!(
                "resume_buffer {} must be below partition_buffer {}",
                self.resume_buffer, self.partition_buffer
            ));
        }
        if self.stall_after.is_zero() {
            problems.push("stall_after must be positive".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConsumerError::InvalidConfig(problems.join("; ")))
        }
    }
}

/// A partition whose commit position is stuck.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// The partition.
    pub partition: TopicPartition,
    /// The offset that blocks the commit position.
    pub offset: i64,
    /// How long the commit position has not moved.
    pub stuck_for: Duration,
    /// What the blocking event is doing.
    pub reason: StallReason,
}

/// Why the blocking event of a stalled partition has not finished.
#[derive(Debug, Clone, PartialEq)]
pub enum StallReason {
    /// Its processing (or failure handling) is still running: a slow or hung store call.
    InFlight,
    /// It waits for a concurrency slot: the limit is saturated by other work.
    Waiting,
    /// Its processing failed and so did the failure handler; it stays until the partition is
    /// revoked and replayed.
    FailureHandlerFailed {
        /// The failure handler's error.
        error: String,
    },
}

/// An event whose processing and failure handling both failed; its offset blocks its
/// partition's commit position and its key's later events.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedEvent {
    /// The partition.
    pub partition: TopicPartition,
    /// The event's offset.
    pub offset: i64,
    /// The event's key.
    pub key: Option<Bytes>,
    /// The failure handler's error.
    pub error: String,
}

/// The result of revoking a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct Revoked {
    /// The final commit position: commit it before giving the partition up.
    pub committable: i64,
    /// Events dropped from the queues without running; the next owner replays them.
    pub dropped: usize,
    /// Events still in flight when the timeout ran out; their results are ignored and the next
    /// owner replays them.
    pub abandoned: usize,
}
