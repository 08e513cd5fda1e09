//! Sources of events and publishers of events: the boundary between the consumer and a
//! broker (Kafka, or the embedded log of the default mode).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

pub use crate::consumer::TopicPartition;

/// One event as a source delivers it.
#[derive(Debug, Clone)]
pub struct SourceEvent {
    pub partition: TopicPartition,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// When the broker received it, in milliseconds since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl SourceEvent {
    /// The value of a header, if present.
    pub fn header(&self, name: &str) -> Option<&Bytes> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// What a poll of a source returns.
#[derive(Debug)]
pub enum Polled {
    Events(Vec<SourceEvent>),
    /// The consumer group gave this consumer these partitions, each with the offset it
    /// resumes from (the group's committed position).
    Assigned(Vec<(TopicPartition, i64)>),
    /// These partitions are being taken away: the caller finishes or drops their work,
    /// commits, then calls [`Source::release`].
    Revoked(Vec<TopicPartition>),
}

/// Why a source or publisher failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{broker}: {message}")]
pub struct BrokerError {
    /// Which broker: "kafka" or "embedded log".
    pub broker: &'static str,
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
}

/// A consumer of events, as one member of a consumer group.
#[async_trait]
pub trait Source: Send {
    /// The next batch of at most `max` events, or an assignment change; waits up to
    /// `timeout` and returns an empty batch when nothing came.
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Polled, BrokerError>;

    /// Commits, per partition, the offset of the next event to read: every event before it
    /// is applied or durably re-published.
    async fn commit(&mut self, positions: &[(TopicPartition, i64)]) -> Result<(), BrokerError>;

    /// Stops fetching these partitions (their buffers are full) until resumed.
    fn pause(&mut self, partitions: &[TopicPartition]) -> Result<(), BrokerError>;

    /// Fetches these partitions again.
    fn resume(&mut self, partitions: &[TopicPartition]) -> Result<(), BrokerError>;

    /// Hands revoked partitions back to the group once their work is committed.
    async fn release(&mut self, partitions: &[TopicPartition]) -> Result<(), BrokerError>;
}

/// One event to publish.
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    pub key: Option<Bytes>,
    pub payload: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

/// Publishes events (retries, dead letters, re-published derived events).
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes to `topic` and returns once the broker has acknowledged the events durably.
    async fn publish(&self, topic: &str, events: &[OutgoingEvent]) -> Result<(), BrokerError>;
}
