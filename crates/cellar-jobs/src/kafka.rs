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

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cellar_ingest_stream::kafka::{
    ensure_topics, ClusterContext, KafkaConnection, KafkaPublisher, KafkaPublisherConfig,
};
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
    /// The cluster: brokers, security and further librdkafka properties.
    pub connection: KafkaConnection,
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
            &config.connection,
            std::slice::from_ref(&config.topic),
            config.partitions,
        )
        .await
        .map_err(|e| JobError::Runner(e.to_string()))?;
        let publisher_config = KafkaPublisherConfig::new(config.connection.clone());
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
/// Per partition, the fetched tasks still running, so that the worker commits only below the
/// lowest of them (tasks run concurrently and finish in any order).
#[derive(Default)]
struct CommitPoints {
    partitions: HashMap<(String, i32), PartitionPoints>,
}

#[derive(Default)]
struct PartitionPoints {
    running: BTreeSet<i64>,
    /// One past the highest finished offset.
    finished_end: i64,
    /// The last offset committed.
    committed: i64,
}

impl CommitPoints {
    fn started(&mut self, topic: &str, partition: i32, offset: i64) {
        self.partitions
            .entry((topic.to_owned(), partition))
            .or_default()
            .running
            .insert(offset);
    }

    /// Marks a task finished; returns the position to commit when it moved.
    fn finished(&mut self, topic: &str, partition: i32, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&(topic.to_owned(), partition))?;
        p.running.remove(&offset);
        p.finished_end = p.finished_end.max(offset + 1);
        let point = p.running.first().copied().unwrap_or(p.finished_end);
        (point > p.committed).then(|| {
            p.committed = point;
            point
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The worker consumer's configuration: offsets are committed by the worker alone, below the
/// lowest unfinished task, so `enable.auto.commit` and the group cannot be overridden.
fn worker_client_config(config: &KafkaRunnerConfig) -> Result<ClientConfig> {
    let mut client = config
        .connection
        .client_config(&[
            ("group.id", config.group.as_str()),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
        ])
        .map_err(|e| JobError::Runner(e.to_string()))?;
    // A shard may run for long while this worker fetches nothing more (every slot busy): that
    // must not make the group drop it. An operator may choose otherwise.
    let interval = "max.poll.interval.ms";
    if !config
        .connection
        .properties
        .iter()
        .any(|(p, _)| p == interval)
    {
        client.set(interval, "3600000");
    }
    Ok(client)
}

pub async fn run_worker(
    executor: Executor,
    config: &KafkaRunnerConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let client = worker_client_config(config)?;
    ensure_topics(
        &config.connection,
        std::slice::from_ref(&config.topic),
        config.partitions,
    )
    .await
    .map_err(|e| JobError::Runner(e.to_string()))?;
    let context = config
        .connection
        .context()
        .map_err(|e| JobError::Runner(e.to_string()))?;
    let consumer: Arc<StreamConsumer<ClusterContext>> = Arc::new(
        client
            .create_with_context(context)
            .map_err(|e| JobError::Runner(format!("creating the worker's consumer: {e}")))?,
    );
    consumer
        .subscribe(&[config.topic.as_str()])
        .map_err(|e| JobError::Runner(format!("subscribing to `{}`: {e}", config.topic)))?;
    tracing::info!(topic = %config.topic, group = %config.group, worker = %executor.worker(), "worker waiting for shard tasks");
    let slots = Arc::new(Semaphore::new(executor.shard_workers()));
    let commit_points = Arc::new(Mutex::new(CommitPoints::default()));
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
        let topic = message.topic().to_owned();
        lock(&commit_points).started(&topic, message.partition(), message.offset());
        let commit_points = Arc::clone(&commit_points);
        tokio::spawn(async move {
            let _permit = permit;
            match task {
                Some(task) => {
                    if let Err(e) = executor.run_task(task.job_id, task.index).await {
                        // The coordinator republishes the shard once its lease lapses; the
                        // task no longer holds back the commits of the tasks after it.
                        tracing::warn!(job = task.job_id, shard = task.index, error = %e, "shard task failed");
                    }
                }
                None => tracing::warn!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "a shard task that is not one: skipped"
                ),
            }
            // Committed only below the lowest task of the partition still running, so a
            // restart never skips a task that had not finished.
            let mut points = lock(&commit_points);
            let Some(next) = points.finished(&topic, message.partition(), message.offset()) else {
                return;
            };
            let mut positions = rdkafka::TopicPartitionList::new();
            if positions
                .add_partition_offset(&topic, message.partition(), rdkafka::Offset::Offset(next))
                .is_ok()
            {
                // Under the lock: commits of one partition leave in increasing order.
                if let Err(e) = consumer.commit(&positions, CommitMode::Async) {
                    tracing::warn!(error = %e, "committing shard tasks failed");
                }
            }
        });
    }
    // Let running shards finish: their tasks are committed as they end.
    let _ = slots.acquire_many(executor.shard_workers() as u32).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(properties: &[(&str, &str)]) -> KafkaRunnerConfig {
        KafkaRunnerConfig {
            connection: KafkaConnection {
                properties: properties
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..KafkaConnection::new("127.0.0.1:9")
            },
            topic: "cellar-batch-shards".into(),
            partitions: 1,
            group: "cellar-workers".into(),
        }
    }

    #[test]
    fn commits_stay_below_the_lowest_task_still_running() {
        let mut points = CommitPoints::default();
        for offset in 10..13 {
            points.started("t", 0, offset);
        }
        // 11 and 12 finish first: 10 still runs, nothing is committed past it.
        assert_eq!(points.finished("t", 0, 11), Some(10));
        assert_eq!(points.finished("t", 0, 12), None);
        // 10 finishes: everything up to 13 is done.
        assert_eq!(points.finished("t", 0, 10), Some(13));
        // Other partitions count on their own.
        points.started("t", 1, 5);
        assert_eq!(points.finished("t", 1, 5), Some(6));
        assert_eq!(points.finished("t", 2, 1), None);
    }

    #[test]
    fn the_worker_refuses_properties_that_would_commit_behind_its_back() {
        let err = worker_client_config(&runner(&[("enable.auto.commit", "true")]))
            .expect_err("auto commit is refused");
        assert!(
            err.to_string()
                .contains("`enable.auto.commit` must be `false`"),
            "{err}"
        );
        assert!(worker_client_config(&runner(&[("group.id", "other")])).is_err());

        let client = worker_client_config(&runner(&[("max.poll.interval.ms", "600000")]))
            .expect("a default may be overridden");
        assert_eq!(client.get("max.poll.interval.ms"), Some("600000"));
        assert_eq!(client.get("enable.auto.commit"), Some("false"));
        assert_eq!(client.get("group.id"), Some("cellar-workers"));
    }
}
