//! [`KafkaPublisher`]: publishes with an idempotent producer, each publish acknowledged by
//! all in-sync replicas.

use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{broker_error, config_error, ClusterContext, KafkaConnection};
use crate::source::{BrokerError, OutgoingEvent, Publisher};

/// How to publish to Kafka.
#[derive(Debug, Clone)]
pub struct KafkaPublisherConfig {
    /// The cluster. Of its further properties (`message.timeout.ms`, `linger.ms`, ...),
    /// `acks=all` and `enable.idempotence=true` cannot be changed: a publish must be durable.
    pub connection: KafkaConnection,
    /// How long a publish waits for room in librdkafka's queue before failing.
    pub queue_timeout: Duration,
}

impl KafkaPublisherConfig {
    /// A publisher to `connection`'s cluster (or the one at a `host:port` list).
    pub fn new(connection: impl Into<KafkaConnection>) -> KafkaPublisherConfig {
        KafkaPublisherConfig {
            connection: connection.into(),
            queue_timeout: Duration::from_secs(30),
        }
    }

    /// Adds a librdkafka property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.connection.properties.push((name.into(), value.into()));
        self
    }
}

/// Publishes to Kafka with an idempotent producer; a publish returns once every event is
/// acknowledged by all in-sync replicas.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer<ClusterContext>,
    queue_timeout: Duration,
}

impl KafkaPublisher {
    /// Creates the producer. Must be called inside a tokio runtime.
    pub fn new(config: &KafkaPublisherConfig) -> Result<KafkaPublisher, BrokerError> {
        if config.connection.bootstrap_servers.trim().is_empty() {
            return Err(config_error(
                "invalid kafka publisher configuration: bootstrap servers are empty".to_owned(),
            ));
        }
        let producer = config
            .connection
            .client_config(&[("acks", "all"), ("enable.idempotence", "true")])?
            .create_with_context(config.connection.context()?)
            .map_err(|e| broker_error("creating the producer", &e))?;
        Ok(KafkaPublisher {
            producer,
            queue_timeout: config.queue_timeout,
        })
    }
}

#[async_trait]
impl Publisher for KafkaPublisher {
    async fn publish(&self, topic: &str, events: &[OutgoingEvent]) -> Result<(), BrokerError> {
        // All sends in flight at once, so librdkafka batches them; then every delivery is
        // awaited, so a failure of any one is reported.
        let deliveries = events.iter().map(|event| {
            let headers = event.headers.iter().fold(
                OwnedHeaders::new_with_capacity(event.headers.len()),
                |headers, (key, value)| {
                    headers.insert(Header {
                        key,
                        value: Some(value.as_ref()),
                    })
                },
            );
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .payload(event.payload.as_ref())
                .headers(headers);
            if let Some(key) = &event.key {
                record = record.key(key.as_ref());
            }
            self.producer.send(record, self.queue_timeout)
        });
        let results = join_all(deliveries).await;
        let mut failed = results.iter().filter_map(|r| r.as_ref().err());
        match failed.next() {
            None => Ok(()),
            Some((first, _)) => {
                let others = failed.count();
                let mut error = broker_error(&format!("publishing to `{topic}`"), first);
                if others > 0 {
                    error
                        .message
                        .push_str(&format!(" (and {others} more events failed)"));
                }
                Err(error)
            }
        }
    }
}
