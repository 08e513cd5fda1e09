//! The fetch thread: polls the consumer, gathers events into batches and hands them, and the
//! rebalances it runs, to the driver through one bounded channel, in the order they happened.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;

use super::{lock, Fetched, GroupMembership, BROKER};
use crate::source::{BrokerError, SourceEvent, TopicPartition};

/// How long one poll of librdkafka waits on the fetch thread; bounds how late the thread
/// notices that its source was closed.
const FETCH_WAIT: Duration = Duration::from_millis(100);

impl GroupMembership {
    pub(super) fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    pub(super) fn topic_partition(&self, topic: &str, partition: i32) -> TopicPartition {
        let mut names = lock(&self.topic_names);
        let name = match names.get(topic) {
            Some(name) => name.clone(),
            None => {
                let name: Arc<str> = Arc::from(topic);
                names.insert(name.clone());
                name
            }
        };
        TopicPartition {
            topic: name,
            partition,
        }
    }

    /// Hands `fetched` to the driver, waiting while the driver is behind. Returns false when
    /// nobody listens any more.
    pub(super) fn hand_over(&self, fetched: Fetched) -> bool {
        if self.closing() {
            return false;
        }
        // Runs on the fetch thread (never inside the async runtime), so blocking is allowed.
        self.outbox.blocking_send(fetched).is_ok()
    }

    /// Hands over the events gathered so far.
    pub(super) fn flush(&self) -> bool {
        let events = std::mem::take(&mut *lock(&self.pending));
        events.is_empty() || self.hand_over(Fetched::Events(events))
    }

    /// Adds one fetched message to the pending batch; returns the batch's length.
    fn gather(&self, message: &BorrowedMessage<'_>) -> usize {
        let partition = self.topic_partition(message.topic(), message.partition());
        let first_of_unresolved = lock(&self.unresolved).remove(&partition);
        if first_of_unresolved {
            // Everything gathered before belongs to other partitions and goes first.
            self.flush();
            lock(&self.reported).insert(partition.clone());
            self.hand_over(Fetched::Assigned(vec![(
                partition.clone(),
                message.offset(),
            )]));
        }
        let headers = message.headers().map_or_else(Vec::new, |headers| {
            headers
                .iter()
                .map(|h| {
                    (
                        h.key.to_owned(),
                        h.value.map_or_else(Bytes::new, Bytes::copy_from_slice),
                    )
                })
                .collect()
        });
        let event = SourceEvent {
            partition,
            offset: message.offset(),
            key: message.key().map(Bytes::copy_from_slice),
            // A tombstone has no payload; the dispatcher dead-letters it as malformed.
            payload: message
                .payload()
                .map_or_else(Bytes::new, Bytes::copy_from_slice),
            headers,
            timestamp_ms: message.timestamp().to_millis(),
        };
        let mut pending = lock(&self.pending);
        pending.push(event);
        pending.len()
    }
}

/// Polls the consumer until the source closes, handing events over in batches.
pub(super) fn fetch(consumer: Arc<BaseConsumer<GroupMembership>>, batch: usize) {
    let membership = consumer.context().clone();
    while !membership.closing() {
        // Gathering: take what is already there without waiting, then hand it over.
        let wait = if lock(&membership.pending).is_empty() {
            FETCH_WAIT
        } else {
            Duration::ZERO
        };
        match consumer.poll(wait) {
            None => {
                if !membership.flush() {
                    break;
                }
            }
            Some(Ok(message)) => {
                if membership.gather(&message) >= batch && !membership.flush() {
                    break;
                }
            }
            Some(Err(e)) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    membership.flush();
                    membership.hand_over(Fetched::Failed(BrokerError {
                        broker: BROKER,
                        message: format!("the consumer failed: {code}: {reason}"),
                        retryable: false,
                    }));
                    break;
                }
                // librdkafka recovers from the rest itself (reconnects, refreshes metadata).
                tracing::warn!(error = %e, "kafka fetch error");
            }
        }
    }
    membership.closing.store(true, Ordering::Release);
    // Leave the group here, so the final revoke runs on this thread and the last reference
    // to the consumer (and its close) is dropped here rather than on the driver's thread.
    consumer.unsubscribe();
}
