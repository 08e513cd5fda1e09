//! The `kafka` runner: shard tasks published to a topic and taken by a group of `cellar worker`
//! processes, the way Kafka Connect hands tasks to its workers.
//!
//! The coordinator (the executor running the job: a server, or `cellar backfill`) publishes
//! one task per shard, keyed by job and shard so the tasks spread over the topic's partitions,
//! and then watches the shards in the registry. Workers in one consumer group each take the
//! tasks of their partitions, claim the shard, run it with a heartbeat and record how it ended.
//!
//! **Nothing is lost when a worker dies.** The registry, not the topic, says what is done: a
//! task whose shard is finished, or running under a live heartbeat, is skipped. The
//! coordinator publishes a task again when its shard is back to `runnable` (a retryable
//! failure) or its heartbeat stopped for a lease (its worker died mid-shard), and the next
//! worker to take it redoes the shard, which writes nothing twice. So a worker commits a task's
//! offset once it has handled it, in any order: an offset committed past a task that was then
//! lost only means the coordinator republishes that task.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellar_ingest_stream::kafka::{ensure_topics, KafkaPublisher, KafkaPublisherConfig};
use cellar_ingest_stream::source::{OutgoingEvent, Publisher};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::error::{JobError, Result};
use crate::executor::Executor;

/// Where shard tasks go, and the group that takes them.
#[derive(Debug, Clone)]
pub struct KafkaRunnerConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Further librdkafka properties (security, `session.timeout.ms`, ...).
    pub properties: Vec<(String, String)>,
    pub topic: String,
    /// Partitions of the topic when Cellar creates it: at most this many workers share a job.
    pub partitions: i32,
    /// The consumer group of `cellar worker` processes.
    pub group: String,
}

/// One shard to run: the whole task message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTask {
    pub job_id: i64,
    pub index: i64,
}

/// Publishes shard tasks.
#[derive(Clone)]
pub struct TaskPublisher {
    publisher: KafkaPublisher,
    topic: String,
}

impl TaskPublisher {
    /// Creates the topic if missing, and the producer.
    pub async fn connect(config: &KafkaRunnerConfig) -> Result<TaskPublisher> {
        ensure_topics(
            &config.bootstrap_servers,
            &config.properties,
            std::slice::from_ref(&config.topic),
            config.partitions,
        )
        .await
        .map_err(|e| JobError::Runner(e.to_string()))?;
        let mut publisher_config = KafkaPublisherConfig::new(&config.bootstrap_servers);
        publisher_config.properties = config.properties.clone();
        let publisher =
            KafkaPublisher::new(&publisher_config).map_err(|e| JobError::Runner(e.to_string()))?;
        Ok(TaskPublisher {
            publisher,
            topic: config.topic.clone(),
        })
    }

    /// Publishes `tasks`, returning once the broker has them.
    pub async fn publish(&self, tasks: &[ShardTask]) -> Result<()> {
        let events: Vec<OutgoingEvent> = tasks
            .iter()
            .map(|t| OutgoingEvent {
                key: Some(Bytes::from(format!("{}/{}", t.job_id, t.index))),
                payload: Bytes::from(serde_json::to_vec(t).unwrap_or_default()),
                headers: Vec::new(),
            })
            .collect();
        self.publisher
            .publish(&self.topic, &events)
            .await
            .map_err(|e| JobError::Runner(e.to_string()))
    }
}

/// Runs shard tasks from the topic on `executor` until `stop` is set: the `cellar worker`
/// loop. At most the executor's `shard_workers` shards run at once.
pub async fn run_worker(
    executor: Executor,
    config: &KafkaRunnerConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    ensure_topics(
        &config.bootstrap_servers,
        &config.properties,
        std::slice::from_ref(&config.topic),
        config.partitions,
    )
    .await
    .map_err(|e| JobError::Runner(e.to_string()))?;
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // A shard may run for long while this worker fetches nothing more (every slot busy):
        // that must not make the group drop it.
        .set("max.poll.interval.ms", "3600000");
    for (name, value) in &config.properties {
        client.set(name, value);
    }
    let consumer: Arc<StreamConsumer> = Arc::new(
        client
            .create()
            .map_err(|e| JobError::Runner(format!("creating the worker's consumer: {e}")))?,
    );
    consumer
        .subscribe(&[config.topic.as_str()])
        .map_err(|e| JobError::Runner(format!("subscribing to `{}`: {e}", config.topic)))?;
    tracing::info!(topic = %config.topic, group = %config.group, worker = %executor.worker(), "worker waiting for shard tasks");
    let slots = Arc::new(Semaphore::new(executor.shard_workers()));
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit
                .map_err(|e| JobError::Internal(e.to_string()))?,
            _ = stop.wait_for(|s| *s) => break,
        };
        let message = tokio::select! {
            m = consumer.recv() => m,
            _ = stop.wait_for(|s| *s) => break,
        };
        let message = match message {
            Ok(m) => m.detach(),
            Err(e) => {
                tracing::warn!(error = %e, "fetching shard tasks failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let task: Option<ShardTask> = message
            .payload()
            .and_then(|p| serde_json::from_slice(p).ok());
        let (executor, consumer) = (executor.clone(), Arc::clone(&consumer));
        tokio::spawn(async move {
            let _permit = permit;
            match task {
                Some(task) => {
                    if let Err(e) = executor.run_task(task.job_id, task.index).await {
                        // Not committed: the task comes back to this group on a restart,
                        // and the coordinator republishes it once its lease lapses.
                        tracing::warn!(job = task.job_id, shard = task.index, error = %e, "shard task failed");
                        return;
                    }
                }
                None => tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "a shard task that is not one: skipped"
                ),
            }
            let mut positions = rdkafka::TopicPartitionList::new();
            if positions
                .add_partition_offset(
                    message.topic(),
                    message.partition(),
                    rdkafka::Offset::Offset(message.offset() + 1),
                )
                .is_ok()
            {
                if let Err(e) = consumer.commit(&positions, CommitMode::Async) {
                    tracing::warn!(error = %e, "committing a shard task failed");
                }
            }
        });
    }
    // Let running shards finish: their tasks are committed as they end.
    let _ = slots.acquire_many(executor.shard_workers() as u32).await;
    Ok(())
}
