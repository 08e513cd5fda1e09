//! [`KafkaSource`]: the consumer-group member the driver polls, commits through and releases
//! revoked partitions to.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::commit::commit_within;
use super::fetch::fetch;
use super::{
    broker_error, config_error, lock, rebalancing_code, ConsumerLag, Fetched, GroupMembership,
    KafkaConnection, BROKER,
};
use crate::source::{BrokerError, Polled, Source, SourceEvent, TopicPartition};

/// How to join a consumer group and fetch its topics.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// The cluster. Of its further properties (`session.timeout.ms`, ...), those the source
    /// depends on (`enable.auto.commit=false`, `enable.auto.offset.store=false`,
    /// `auto.offset.reset=earliest`) cannot be changed.
    pub connection: KafkaConnection,
    /// The consumer group every `cellar ingest` worker of one deployment shares.
    pub group_id: String,
    pub topics: Vec<String>,
    /// How long a revoke waits for the driver to commit and release the partitions before the
    /// rebalance goes ahead anyway (the next owner then replays from the last commit). Keep it
    /// below `max.poll.interval.ms`, or the group evicts this member first.
    pub release_timeout: Duration,
    /// Most events the fetch thread gathers into one hand-over to the driver.
    pub fetch_batch: usize,
    /// Hand-overs that may wait for the driver before the fetch thread stops fetching: the
    /// prefetch bound, on top of librdkafka's own queue.
    pub prefetch_batches: usize,
    /// How long a commit waits for the group coordinator, its retries included. A periodic
    /// commit that gets no answer fails (the next one covers its positions); the commit of
    /// revoked partitions is then given up, and their next owner replays from the last commit.
    /// Keep it well below `release_timeout`.
    pub commit_timeout: Duration,
}

impl KafkaSourceConfig {
    /// A member of `group_id` reading `topics` from `connection`'s cluster (or the one at a
    /// `host:port` list).
    pub fn new(
        connection: impl Into<KafkaConnection>,
        group_id: impl Into<String>,
        topics: Vec<String>,
    ) -> KafkaSourceConfig {
        KafkaSourceConfig {
            connection: connection.into(),
            group_id: group_id.into(),
            topics,
            release_timeout: Duration::from_secs(60),
            fetch_batch: 500,
            prefetch_batches: 4,
            commit_timeout: Duration::from_secs(10),
        }
    }

    /// Adds a librdkafka property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.connection.properties.push((name.into(), value.into()));
        self
    }

    /// Every problem with the configuration, not just the first.
    fn validate(&self) -> Result<(), BrokerError> {
        let mut problems = Vec::new();
        if self.connection.bootstrap_servers.trim().is_empty() {
            problems.push("bootstrap servers are empty".to_owned());
        }
        if self.group_id.trim().is_empty() {
            problems.push("the group id is empty".to_owned());
        }
        if self.topics.is_empty() {
            problems.push("no topics to consume".to_owned());
        }
        if self.fetch_batch == 0 || self.prefetch_batches == 0 {
            problems.push("the fetch batch and prefetch bound must be at least 1".to_owned());
        }
        if self.commit_timeout.is_zero() {
            problems.push("the commit timeout must be above zero".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(config_error(format!(
                "invalid kafka source configuration: {}",
                problems.join("; ")
            )))
        }
    }
}

/// A consumer-group member reading Kafka topics; see the module documentation for how
/// rebalances reach the driver.
pub struct KafkaSource {
    /// Shared with the fetch thread; the driver uses it to commit, pause and resume.
    consumer: Option<Arc<BaseConsumer<GroupMembership>>>,
    membership: Arc<GroupMembership>,
    /// What the fetch thread hands over; `None` once closed.
    fetched: Option<mpsc::Receiver<Fetched>>,
    /// Where releases of revoked partitions go back to the waiting rebalance callback.
    releases: Option<std_mpsc::Sender<(u64, Vec<TopicPartition>)>>,
    fetcher: Option<JoinHandle<()>>,
    /// Events received but beyond the `max` of the poll that received them.
    carried: VecDeque<SourceEvent>,
    /// The next offset expected per partition the driver owns. Events of other partitions, or
    /// below it, are stale (fetched before a revoke) and dropped: the pipeline rejects them.
    positions: HashMap<TopicPartition, i64>,
    /// The revoke round of each partition being revoked, named by its release.
    revoking: HashMap<TopicPartition, u64>,
    commit_timeout: Duration,
}

impl KafkaSource {
    /// The lag of the partitions this member owns, for metrics.
    pub fn lag(&self) -> ConsumerLag {
        self.membership.lag.clone()
    }

    /// Joins the consumer group and starts fetching. Must be called inside a tokio runtime.
    pub fn new(config: &KafkaSourceConfig) -> Result<KafkaSource, BrokerError> {
        config.validate()?;
        let (outbox, fetched) = mpsc::channel(config.prefetch_batches);
        let (release_tx, release_rx) = std_mpsc::channel();
        let membership = GroupMembership {
            outbox,
            pending: Mutex::new(Vec::with_capacity(config.fetch_batch)),
            releases: Mutex::new(release_rx),
            round: AtomicU64::new(0),
            reported: Mutex::new(HashSet::new()),
            unresolved: Mutex::new(HashSet::new()),
            lost: Mutex::new(HashSet::new()),
            closing: AtomicBool::new(false),
            release_timeout: config.release_timeout,
            topic_names: Mutex::new(HashSet::new()),
            lag: ConsumerLag::default(),
            iam: config.connection.iam_signer()?,
        };
        let mut client = config.connection.client_config(&[
            ("group.id", config.group_id.as_str()),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
        ])?;
        if !config
            .connection
            .properties
            .iter()
            .any(|(name, _)| name == "statistics.interval.ms")
        {
            client.set("statistics.interval.ms", "5000");
        }
        let consumer: BaseConsumer<GroupMembership> = client
            .create_with_context(membership)
            .map_err(|e| broker_error("creating the consumer", &e))?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| broker_error("subscribing", &e))?;
        let consumer = Arc::new(consumer);
        let membership = consumer.context().clone();
        let fetcher = {
            let consumer = consumer.clone();
            let batch = config.fetch_batch;
            std::thread::Builder::new()
                .name(format!("kafka-fetch-{}", config.group_id))
                .spawn(move || fetch(consumer, batch))
                .map_err(|e| config_error(format!("starting the fetch thread: {e}")))?
        };
        Ok(KafkaSource {
            consumer: Some(consumer),
            membership,
            fetched: Some(fetched),
            releases: Some(release_tx),
            fetcher: Some(fetcher),
            carried: VecDeque::new(),
            positions: HashMap::new(),
            revoking: HashMap::new(),
            commit_timeout: config.commit_timeout,
        })
    }

    fn consumer(&self) -> Result<Arc<BaseConsumer<GroupMembership>>, BrokerError> {
        self.consumer
            .clone()
            .ok_or_else(|| config_error("the kafka source is closed".to_owned()))
    }

    /// Leaves the group and stops the fetch thread, without blocking the runtime. Commit
    /// first: partitions still owned are given up without a further commit.
    pub async fn close(mut self) {
        if let Some(join) = self.shut_down() {
            let _ = tokio::task::spawn_blocking(join).await;
        }
    }

    /// Stops fetching and returns what waits for the fetch thread to leave the group.
    fn shut_down(&mut self) -> Option<impl FnOnce() + Send + 'static> {
        self.membership.closing.store(true, Ordering::Release);
        // Unblocks a fetch thread waiting for room in the channel or for a release.
        self.fetched = None;
        self.releases = None;
        self.consumer = None;
        self.fetcher.take().map(|fetcher| {
            move || {
                if fetcher.join().is_err() {
                    tracing::error!("the kafka fetch thread panicked");
                }
            }
        })
    }

    /// Takes up to `max` events from those carried over, dropping stale ones.
    fn take_events(&mut self, max: usize) -> Vec<SourceEvent> {
        let mut events = Vec::with_capacity(max.min(self.carried.len()));
        while events.len() < max {
            let Some(event) = self.carried.pop_front() else {
                break;
            };
            match self.positions.get_mut(&event.partition) {
                Some(next) if event.offset >= *next => {
                    *next = event.offset + 1;
                    events.push(event);
                }
                _ => tracing::debug!(
                    partition = %event.partition,
                    offset = event.offset,
                    "dropping an event of a partition no longer owned"
                ),
            }
        }
        events
    }

    /// The outcome of a commit that could not be made in time for a passing reason. For
    /// partitions being revoked it is given up, so that they can be released: their next owner
    /// replays from the last commit, and the store skips what it has applied. Otherwise it
    /// failed, and the next commit covers its positions.
    fn commit_not_made(
        &self,
        positions: &[(TopicPartition, i64)],
        error: BrokerError,
    ) -> Result<(), BrokerError> {
        if positions
            .iter()
            .all(|(tp, _)| self.revoking.contains_key(tp))
        {
            tracing::warn!(%error, partitions = positions.len(), "revoked partitions released without a commit; their next owner replays from the last commit");
            return Ok(());
        }
        Err(error)
    }

    fn tpl(partitions: &[TopicPartition]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::with_capacity(partitions.len());
        for tp in partitions {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        tpl
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // Prefer `close`; this blocks until the member has left the group.
        if let Some(join) = self.shut_down() {
            join();
        }
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Polled, BrokerError> {
        let max = max.max(1);
        if !self.carried.is_empty() {
            let events = self.take_events(max);
            if !events.is_empty() {
                return Ok(Polled::Events(events));
            }
        }
        let Some(fetched) = self.fetched.as_mut() else {
            return Err(config_error("the kafka source is closed".to_owned()));
        };
        let received = match tokio::time::timeout(timeout, fetched.recv()).await {
            Err(_) => return Ok(Polled::Events(Vec::new())),
            Ok(received) => received,
        };
        match received {
            None => Err(BrokerError {
                broker: BROKER,
                message: "the fetch thread stopped".to_owned(),
                retryable: false,
            }),
            Some(Fetched::Events(events)) => {
                self.carried.extend(events);
                Ok(Polled::Events(self.take_events(max)))
            }
            Some(Fetched::Assigned(partitions)) => {
                for (tp, start) in &partitions {
                    self.positions.insert(tp.clone(), *start);
                }
                Ok(Polled::Assigned(partitions))
            }
            Some(Fetched::Revoked(round, partitions)) => {
                for tp in &partitions {
                    self.revoking.insert(tp.clone(), round);
                }
                Ok(Polled::Revoked(partitions))
            }
            Some(Fetched::Failed(e)) => Err(e),
        }
    }

    async fn commit(&mut self, positions: &[(TopicPartition, i64)]) -> Result<(), BrokerError> {
        let consumer = self.consumer()?;
        let mut tpl = TopicPartitionList::with_capacity(positions.len());
        {
            let lost = lock(&self.membership.lost);
            for (tp, next) in positions {
                if lost.contains(tp) {
                    // The broker would refuse it (another member owns the partition now).
                    tracing::warn!(partition = %tp, next, "not committing a lost partition");
                    continue;
                }
                tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next))
                    .map_err(|e| broker_error("building the commit", &e))?;
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        // A commit that fails for a passing reason (coordinator moving, broker restarting) is
        // tried again here, within the commit timeout: the pipeline stops on an error, and a
        // commit is cheap to repeat.
        let deadline = Instant::now() + self.commit_timeout;
        let mut wait = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (consumer, offsets) = (consumer.clone(), tpl.clone());
            let committed =
                tokio::task::spawn_blocking(move || commit_within(&consumer, &offsets, left))
                    .await
                    .map_err(|e| config_error(format!("the commit task failed: {e}")))?;
            let Some(committed) = committed else {
                return self.commit_not_made(
                    positions,
                    BrokerError {
                        broker: BROKER,
                        message: format!(
                            "committing offsets: no answer from the group coordinator within {} ms",
                            self.commit_timeout.as_millis()
                        ),
                        retryable: true,
                    },
                );
            };
            match committed {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let error = broker_error("committing offsets", &e);
                    let rebalancing = e.rdkafka_error_code().is_some_and(rebalancing_code);
                    if rebalancing && (attempt >= 3 || Instant::now() + wait >= deadline) {
                        // The group moved on (or, like librdkafka's mock cluster, refuses
                        // commits while members rejoin; or the member was evicted while the
                        // commit waited for the coordinator). Nothing is lost: the next commit
                        // after the rebalance covers these positions, or the partitions'
                        // next owner replays from the last commit, and the store skips what
                        // it has applied. Stopping the pipeline would help nobody.
                        tracing::warn!(error = %e, partitions = tpl.count(), "commit refused during a rebalance; skipped");
                        return Ok(());
                    }
                    if !(error.retryable || rebalancing) {
                        return Err(error);
                    }
                    if attempt >= 6 || Instant::now() + wait >= deadline {
                        return self.commit_not_made(positions, error);
                    }
                    tracing::warn!(error = %e, attempt, "commit failed, trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                    attempt += 1;
                }
            }
        }
    }

    fn pause(&mut self, partitions: &[TopicPartition]) -> Result<(), BrokerError> {
        self.consumer()?
            .pause(&Self::tpl(partitions))
            .map_err(|e| broker_error("pausing partitions", &e))
    }

    fn resume(&mut self, partitions: &[TopicPartition]) -> Result<(), BrokerError> {
        self.consumer()?
            .resume(&Self::tpl(partitions))
            .map_err(|e| broker_error("resuming partitions", &e))
    }

    async fn release(&mut self, partitions: &[TopicPartition]) -> Result<(), BrokerError> {
        let mut rounds: HashMap<u64, Vec<TopicPartition>> = HashMap::new();
        for tp in partitions {
            self.positions.remove(tp);
            if let Some(round) = self.revoking.remove(tp) {
                rounds.entry(round).or_default().push(tp.clone());
            }
        }
        lock(&self.membership.lost).retain(|tp| !partitions.contains(tp));
        if let Some(releases) = &self.releases {
            for release in rounds {
                // The fetch thread may have stopped waiting (timeout, close): nothing to do then.
                let _ = releases.send(release);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_reports_every_problem() {
        let mut config = KafkaSourceConfig::new("", " ", Vec::new());
        config.fetch_batch = 0;
        config.commit_timeout = Duration::ZERO;
        let message = config
            .validate()
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        for problem in [
            "bootstrap",
            "group id",
            "no topics",
            "fetch batch",
            "commit timeout",
        ] {
            assert!(message.contains(problem), "{message}");
        }
    }
}
