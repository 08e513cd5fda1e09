//! The embedded log as a [`Source`] and a [`Publisher`], so the consumer reads it exactly as it
//! reads Kafka.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cellar_spec::parse::topic_problem;
use cellar_spec::time::now_ms;
use futures::future::select_all;

use super::{EventLog, LogError, LogRecord};
use crate::source::{
    BrokerError, OutgoingEvent, Polled, Publisher, Source, SourceEvent, TopicPartition,
};

/// Partitions of topics the embedded mode creates on first use.
pub const DEFAULT_PARTITIONS: u32 = 4;

fn broker(e: LogError) -> BrokerError {
    BrokerError {
        broker: "embedded log",
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

/// Creates a topic if it does not exist yet. Names follow Kafka's rules, so a deployment can
/// move from the embedded log to Kafka with the same topics.
pub async fn ensure_topic(log: &EventLog, topic: &str) -> Result<(), BrokerError> {
    if let Some(message) = topic_problem(topic) {
        return Err(BrokerError {
            broker: "embedded log",
            message,
            retryable: false,
        });
    }
    if log.partitions(topic).is_ok() {
        return Ok(());
    }
    match log.create_topic(topic, DEFAULT_PARTITIONS).await {
        Ok(()) | Err(LogError::PartitionCountMismatch { .. }) => Ok(()),
        Err(e) => Err(broker(e)),
    }
}

/// A consumer-group member reading topics of the embedded log. In the embedded mode one
/// process owns the log, so the member is given every partition.
pub struct LogSource {
    log: EventLog,
    group: String,
    topics: Vec<String>,
    /// Next offset to read, per assigned partition.
    positions: BTreeMap<TopicPartition, i64>,
    paused: HashSet<TopicPartition>,
    assigned: bool,
}

impl LogSource {
    /// A member of consumer group `group` reading `topics` (created if missing).
    pub fn new(log: EventLog, group: impl Into<String>, topics: Vec<String>) -> LogSource {
        LogSource {
            log,
            group: group.into(),
            topics,
            positions: BTreeMap::new(),
            paused: HashSet::new(),
            assigned: false,
        }
    }

    async fn assign(&mut self) -> Result<Vec<(TopicPartition, i64)>, BrokerError> {
        let mut assigned = Vec::new();
        for topic in self.topics.clone() {
            ensure_topic(&self.log, &topic).await?;
            let partitions = self.log.partitions(&topic).map_err(broker)?;
            let name: Arc<str> = Arc::from(topic.as_str());
            for p in 0..partitions {
                let start = self.log.start_offset(&topic, p).map_err(broker)?;
                let committed = self
                    .log
                    .committed(&self.group, &topic, p)
                    .map_err(broker)?
                    .unwrap_or(start);
                let tp = TopicPartition {
                    topic: name.clone(),
                    partition: p as i32,
                };
                // Records below the start were truncated away; resume at the first kept one.
                let resume = committed.max(start);
                self.positions.insert(tp.clone(), resume);
                assigned.push((tp, resume));
            }
        }
        self.assigned = true;
        Ok(assigned)
    }

    fn read_ready(&mut self, max: usize) -> Result<Vec<SourceEvent>, BrokerError> {
        let mut events = Vec::new();
        for (tp, next) in self.positions.iter_mut() {
            if events.len() >= max {
                break;
            }
            if self.paused.contains(tp) {
                continue;
            }
            let entries = self
                .log
                .read(&tp.topic, tp.partition as u32, *next, max - events.len())
                .map_err(broker)?;
            if let Some(last) = entries.last() {
                *next = last.offset + 1;
            }
            events.extend(entries.into_iter().map(|e| SourceEvent {
                partition: tp.clone(),
                offset: e.offset,
                key: e.key,
                payload: e.payload,
                headers: e.headers,
                timestamp_ms: Some(e.timestamp_ms),
            }));
        }
        Ok(events)
    }
}

#[async_trait]
impl Source for LogSource {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Polled, BrokerError> {
        if !self.assigned {
            return Ok(Polled::Assigned(self.assign().await?));
        }
        let events = self.read_ready(max)?;
        if !events.is_empty() {
            return Ok(Polled::Events(events));
        }
        // Nothing to read: wait for an append to any readable partition.
        let waits: Vec<_> = self
            .positions
            .iter()
            .filter(|(tp, _)| !self.paused.contains(*tp))
            .map(|(tp, next)| {
                let log = self.log.clone();
                let (topic, partition, next) = (tp.topic.clone(), tp.partition as u32, *next);
                Box::pin(async move { log.wait_for(&topic, partition, next, timeout).await })
            })
            .collect();
        if waits.is_empty() {
            tokio::time::sleep(timeout).await;
            return Ok(Polled::Events(Vec::new()));
        }
        let (woke, _, _) = select_all(waits).await;
        woke.map_err(broker)?;
        Ok(Polled::Events(self.read_ready(max)?))
    }

    async fn commit(&mut self, positions: &[(TopicPartition, i64)]) -> Result<(), BrokerError> {
        for (tp, next) in positions {
            self.log
                .commit(&self.group, &tp.topic, tp.partition as u32, *next)
                .await
                .map_err(broker)?;
        }
        Ok(())
    }

    fn pause(&mut self, partitions: &[TopicPartition]) -> Result<(), BrokerError> {
        self.paused.extend(partitions.iter().cloned());
        Ok(())
    }

    fn resume(&mut self, partitions: &[TopicPartition]) -> Result<(), BrokerError> {
        for tp in partitions {
            self.paused.remove(tp);
        }
        Ok(())
    }

    async fn release(&mut self, partitions: &[TopicPartition]) -> Result<(), BrokerError> {
        for tp in partitions {
            self.positions.remove(tp);
            self.paused.remove(tp);
        }
        Ok(())
    }
}

/// Publishes to the embedded log; returns once the records are durable.
#[derive(Clone)]
pub struct LogPublisher {
    log: EventLog,
}

impl LogPublisher {
    pub fn new(log: EventLog) -> LogPublisher {
        LogPublisher { log }
    }
}

#[async_trait]
impl Publisher for LogPublisher {
    async fn publish(&self, topic: &str, events: &[OutgoingEvent]) -> Result<(), BrokerError> {
        ensure_topic(&self.log, topic).await?;
        let now = now_ms();
        let records: Vec<LogRecord> = events
            .iter()
            .map(|e| LogRecord {
                key: e.key.clone(),
                payload: e.payload.clone(),
                headers: e.headers.clone(),
                timestamp_ms: now,
            })
            .collect();
        self.log.append(topic, &records).await.map_err(broker)?;
        Ok(())
    }
}
