//! Kafka as a [`Source`] and a [`Publisher`], through rdkafka (librdkafka).
//!
//! [`KafkaSource`] is one member of a consumer group. librdkafka runs its rebalance callbacks
//! on whichever thread polls the consumer, and a revoke must not complete before the pipeline
//! has finished (or dropped) the partition's work and committed its position. The pipeline's
//! driver is async and must never be blocked by a rebalance, so the consumer is polled by a
//! dedicated *fetch thread* that feeds the driver through a bounded channel:
//!
//! - events, assignments and revocations travel through that one channel, in the order the
//!   fetch thread saw them, so the driver never sees a partition's events after its revocation
//!   or before its assignment;
//! - on revoke, the fetch thread (inside the rebalance callback) hands the partitions to the
//!   driver as [`Polled::Revoked`] and blocks until [`Source::release`] names them, or until
//!   [`KafkaSourceConfig::release_timeout`] passes; only then does librdkafka give them back to
//!   the group. The driver commits from its own thread in between, which librdkafka allows:
//!   the member's generation stays valid until the callback returns;
//! - on assign, the fetch thread looks up each partition's committed offset, assigns the
//!   partitions at exactly those offsets and reports them as [`Polled::Assigned`], so the offset
//!   the consumer tracks from is the offset fetching starts at.
//!
//! Offsets are committed only by the driver ([`Source::commit`]): automatic commits and the
//! automatic offset store are off, because only the pipeline knows which events are applied.
//! A commit waits for the coordinator's answer at most [`KafkaSourceConfig::commit_timeout`]:
//! librdkafka's own synchronous commit waits without bound, and an OffsetCommit that fails on
//! the coordinator's connection while the coordinator is being looked up again can be retried
//! forever (each lookup reconnects to the coordinator, which fails the queued retry again), so
//! a driver waiting for it would stop consuming for good.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message};
use tokio::sync::mpsc;

use crate::source::{
    BrokerError, OutgoingEvent, Polled, Publisher, Source, SourceEvent, TopicPartition,
};

const BROKER: &str = "kafka";

/// How long one poll of librdkafka waits on the fetch thread; bounds how late the thread
/// notices that its source was closed.
const FETCH_WAIT: Duration = Duration::from_millis(100);

/// How long an assignment waits for the group's committed offsets, per attempt.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);
const COMMITTED_ATTEMPTS: u32 = 3;

/// How long an assignment waits for a partition's low watermark when nothing is committed.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether another attempt at what failed with `code` may succeed: broker, network and
/// coordinator trouble passes; configuration, authorization and protocol errors do not.
fn retryable_code(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        BrokerTransportFailure
            | Resolve
            | MessageTimedOut
            | AllBrokersDown
            | OperationTimedOut
            | QueueFull
            | ISRInsufficient
            | WaitingForCoordinator
            | InProgress
            | PreviousInProgress
            | TimedOutQueue
            | WaitCache
            | Interrupted
            | Retry
            | UnknownPartition
            | UnknownTopic
            | UnknownTopicOrPartition
            | LeaderNotAvailable
            | NotLeaderForPartition
            | RequestTimedOut
            | BrokerNotAvailable
            | ReplicaNotAvailable
            | NetworkException
            | CoordinatorLoadInProgress
            | CoordinatorNotAvailable
            | NotCoordinator
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend
            | RebalanceInProgress
            | KafkaStorageError
            | FencedLeaderEpoch
            | UnknownLeaderEpoch
            | OffsetNotAvailable
            | PreferredLeaderNotAvailable
            | UnstableOffsetCommit
            | ThrottlingQuotaExceeded
    )
}

/// Whether `code` says the group is rebalancing or has moved to a new generation: a commit
/// refused for this is superseded rather than failed.
fn rebalancing_code(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RebalanceInProgress
            | RDKafkaErrorCode::IllegalGeneration
            | RDKafkaErrorCode::UnknownMemberId
    )
}

fn broker_error(context: &str, e: &KafkaError) -> BrokerError {
    BrokerError {
        broker: BROKER,
        message: format!("{context}: {e}"),
        retryable: e.rdkafka_error_code().is_some_and(retryable_code),
    }
}

fn config_error(message: String) -> BrokerError {
    BrokerError {
        broker: BROKER,
        message,
        retryable: false,
    }
}

/// Properties the source and publisher rely on; extra properties cannot override them.
fn apply_properties(
    config: &mut ClientConfig,
    extra: &[(String, String)],
    required: &[(&str, &str)],
) -> Result<(), BrokerError> {
    for (name, value) in extra {
        if let Some((_, needed)) = required.iter().find(|(r, _)| r == name) {
            if value != needed {
                return Err(config_error(format!(
                    "kafka property `{name}` must be `{needed}` here, not `{value}`: the pipeline depends on it"
                )));
            }
        }
        config.set(name, value);
    }
    for (name, value) in required {
        config.set(*name, *value);
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned one still holds consistent data.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How to join a consumer group and fetch its topics.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// The consumer group every `cellar ingest` worker of one deployment shares.
    pub group_id: String,
    pub topics: Vec<String>,
    /// Further librdkafka properties (`session.timeout.ms`, security, ...). Those the source
    /// depends on (`enable.auto.commit=false`, `enable.auto.offset.store=false`,
    /// `auto.offset.reset=earliest`) cannot be changed.
    pub properties: Vec<(String, String)>,
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
    /// A member of `group_id` reading `topics` from the cluster at `bootstrap_servers`.
    pub fn new(
        bootstrap_servers: impl Into<String>,
        group_id: impl Into<String>,
        topics: Vec<String>,
    ) -> KafkaSourceConfig {
        KafkaSourceConfig {
            bootstrap_servers: bootstrap_servers.into(),
            group_id: group_id.into(),
            topics,
            properties: Vec::new(),
            release_timeout: Duration::from_secs(60),
            fetch_batch: 500,
            prefetch_batches: 4,
            commit_timeout: Duration::from_secs(10),
        }
    }

    /// Adds a librdkafka property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// Every problem with the configuration, not just the first.
    fn validate(&self) -> Result<(), BrokerError> {
        let mut problems = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
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

/// What the fetch thread hands to the driver, in the order it happened.
#[derive(Debug)]
enum Fetched {
    Events(Vec<SourceEvent>),
    Assigned(Vec<(TopicPartition, i64)>),
    /// Partitions being revoked, and the round the release must name.
    Revoked(u64, Vec<TopicPartition>),
    /// The consumer cannot go on.
    Failed(BrokerError),
}

/// The consumer's context: what the fetch thread and librdkafka's rebalance callback share.
struct GroupMembership {
    /// Where the fetch thread hands events and assignment changes to the driver.
    outbox: mpsc::Sender<Fetched>,
    /// Events fetched but not handed over yet: a rebalance flushes them before reporting, so
    /// the driver sees every event of a partition before the partition's revocation.
    pending: Mutex<Vec<SourceEvent>>,
    /// The driver's releases of revoked partitions, tagged with the revoke round.
    releases: Mutex<std_mpsc::Receiver<(u64, Vec<TopicPartition>)>>,
    /// The last revoke round, so a late release of an earlier round is not mistaken for this one.
    round: AtomicU64,
    /// Partitions the driver was told it owns: only these are reported as revoked (the
    /// pipeline rejects the revocation of a partition it never had).
    reported: Mutex<HashSet<TopicPartition>>,
    /// Partitions assigned whose resume offset could not be looked up: reported to the driver
    /// at their first event, whose offset is where fetching started.
    unresolved: Mutex<HashSet<TopicPartition>>,
    /// Partitions taken away without a revoke the group waited for (the member was evicted):
    /// commits for them would be refused, and their next owner replays from the last commit.
    lost: Mutex<HashSet<TopicPartition>>,
    /// Set when the source is closing: the callbacks then stop reporting and stop waiting,
    /// because no driver is listening any more.
    closing: AtomicBool,
    release_timeout: Duration,
    /// Topic names as shared strings, so an event does not allocate its topic name.
    topic_names: Mutex<HashSet<Arc<str>>>,
    /// Lag per owned partition, from librdkafka's statistics.
    lag: ConsumerLag,
}

/// Consumer lag per partition this member owns, as librdkafka last reported it (the broker's
/// high watermark minus the group's committed offset), refreshed every
/// `statistics.interval.ms` (5 s unless set).
#[derive(Debug, Clone, Default)]
pub struct ConsumerLag(Arc<Mutex<Vec<(String, i32, i64)>>>);

impl ConsumerLag {
    /// (topic, partition, lag) of every owned partition with a known lag.
    pub fn snapshot(&self) -> Vec<(String, i32, i64)> {
        lock(&self.0).clone()
    }
}

impl ClientContext for GroupMembership {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = Vec::new();
        for (name, topic) in &statistics.topics {
            for (id, p) in &topic.partitions {
                // Partition -1 is librdkafka's internal one; a lag of -1 means not known yet.
                if *id >= 0 && p.desired && p.consumer_lag >= 0 {
                    lag.push((name.clone(), *id, p.consumer_lag));
                }
            }
        }
        lag.sort();
        *lock(&self.lag.0) = lag;
    }
}

impl GroupMembership {
    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    fn topic_partition(&self, topic: &str, partition: i32) -> TopicPartition {
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
    fn hand_over(&self, fetched: Fetched) -> bool {
        if self.closing() {
            return false;
        }
        // Runs on the fetch thread (never inside the async runtime), so blocking is allowed.
        self.outbox.blocking_send(fetched).is_ok()
    }

    /// Hands over the events gathered so far.
    fn flush(&self) -> bool {
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

    /// The offset each assigned partition resumes from: the group's committed offset, or the
    /// low watermark when nothing is committed. `None` when the lookup failed.
    fn resume_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        assigned: &TopicPartitionList,
    ) -> Vec<(TopicPartition, Option<i64>)> {
        let mut committed = None;
        for attempt in 1..=COMMITTED_ATTEMPTS {
            match consumer.committed_offsets(assigned.clone(), COMMITTED_TIMEOUT) {
                Ok(offsets) => {
                    committed = Some(offsets);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, attempt, "looking up committed offsets failed")
                }
            }
        }
        assigned
            .elements()
            .iter()
            .map(|element| {
                let partition = self.topic_partition(element.topic(), element.partition());
                let offset = committed.as_ref().and_then(|c| {
                    match c
                        .find_partition(element.topic(), element.partition())
                        .map(|e| e.offset())
                    {
                        Some(Offset::Offset(offset)) if offset >= 0 => Some(offset),
                        // Nothing committed: fetching starts at the beginning (auto.offset.reset
                        // is earliest). Reporting an offset below the first kept one is safe,
                        // since the consumer accepts gaps, so fall back to 0.
                        Some(_) => Some(
                            consumer
                                .fetch_watermarks(
                                    element.topic(),
                                    element.partition(),
                                    WATERMARK_TIMEOUT,
                                )
                                .map_or(0, |(low, _)| low),
                        ),
                        None => None,
                    }
                });
                (partition, offset)
            })
            .collect()
    }

    fn on_assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let resumes = self.resume_offsets(consumer, tpl);
        let mut report = Vec::new();
        for (partition, offset) in resumes {
            match offset {
                Some(offset) => {
                    // Fetch from exactly the offset reported, whatever the group's state says
                    // by the time the fetcher starts.
                    if let Err(e) = tpl.set_partition_offset(
                        &partition.topic,
                        partition.partition,
                        Offset::Offset(offset),
                    ) {
                        tracing::warn!(%partition, error = %e, "could not set the start offset");
                    }
                    report.push((partition, offset));
                }
                None => {
                    tracing::warn!(%partition, "resume offset unknown; reported at the first event");
                    lock(&self.unresolved).insert(partition);
                }
            }
        }
        let assigned = if matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        ) {
            consumer.incremental_assign(tpl)
        } else {
            consumer.assign(tpl)
        };
        if let Err(e) = assigned {
            tracing::error!(error = %e, "assigning partitions failed");
            self.hand_over(Fetched::Failed(broker_error("assigning partitions", &e)));
            return;
        }
        tracing::info!(partitions = tpl.count(), "partitions assigned");
        if report.is_empty() {
            return;
        }
        lock(&self.reported).extend(report.iter().map(|(tp, _)| tp.clone()));
        self.flush();
        self.hand_over(Fetched::Assigned(report));
    }

    /// Reports `revoked` to the driver and waits until it has committed and released them.
    fn hand_back(&self, consumer: &BaseConsumer<Self>, revoked: Vec<TopicPartition>) {
        {
            let mut unresolved = lock(&self.unresolved);
            for tp in &revoked {
                unresolved.remove(tp);
            }
        }
        let revoked: Vec<TopicPartition> = {
            let mut reported = lock(&self.reported);
            revoked
                .into_iter()
                .filter(|tp| reported.remove(tp))
                .collect()
        };
        if consumer.assignment_lost() {
            lock(&self.lost).extend(revoked.iter().cloned());
        }
        if revoked.is_empty() || self.closing() {
            return;
        }
        let round = self.round.fetch_add(1, Ordering::AcqRel) + 1;
        let mut outstanding: HashSet<TopicPartition> = revoked.iter().cloned().collect();
        if !self.flush() || !self.hand_over(Fetched::Revoked(round, revoked)) {
            return;
        }
        let started = Instant::now();
        let deadline = started + self.release_timeout;
        let releases = lock(&self.releases);
        while !outstanding.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match releases.recv_timeout(left) {
                Ok((r, released)) if r == round => {
                    for tp in &released {
                        outstanding.remove(tp);
                    }
                }
                // A late release of an earlier round: its rebalance already went ahead.
                Ok(_) => {}
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        partitions = outstanding.len(),
                        waited_ms = started.elapsed().as_millis() as u64,
                        "revoked partitions were not released in time; their next owner replays from the last commit"
                    );
                    return;
                }
                // The source is gone: nobody will release them.
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        tracing::debug!(
            waited_ms = started.elapsed().as_millis() as u64,
            "revoked partitions released"
        );
    }

    fn on_revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked = tpl
            .elements()
            .iter()
            .map(|e| self.topic_partition(e.topic(), e.partition()))
            .collect();
        self.hand_back(consumer, revoked);
        let unassigned = if matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        ) {
            consumer.incremental_unassign(tpl)
        } else {
            consumer.unassign()
        };
        if let Err(e) = unassigned {
            tracing::error!(error = %e, "unassigning partitions failed");
        }
        tracing::info!(partitions = tpl.count(), "partitions revoked");
    }
}

impl ConsumerContext for GroupMembership {
    // Overridden rather than using pre/post hooks: the assignment must carry the offsets
    // reported to the driver, and the revoke must wait for the driver's release.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.on_assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.on_revoke(consumer, tpl),
            other => {
                // librdkafka's advice for a failed rebalance: drop the whole assignment. The
                // driver hands back what it owns first, as for a revoke.
                let code: RDKafkaErrorCode = other.into();
                tracing::error!(error = %code, "rebalance failed; dropping the assignment");
                let owned: Vec<TopicPartition> = lock(&self.reported).iter().cloned().collect();
                self.hand_back(consumer, owned);
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassigning partitions failed");
                }
            }
        }
    }
}

/// Polls the consumer until the source closes, handing events over in batches.
fn fetch(consumer: Arc<BaseConsumer<GroupMembership>>, batch: usize) {
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

/// Commits `offsets` for the group and waits at most `timeout` for the coordinator's answer:
/// `None` when none came. librdkafka goes on with an unanswered commit in the background, and
/// drops its answer with the queue it was meant for.
fn commit_within(
    consumer: &BaseConsumer<GroupMembership>,
    offsets: &TopicPartitionList,
    timeout: Duration,
) -> Option<KafkaResult<()>> {
    use rdkafka::bindings as rd;
    let failed = |code: RDKafkaRespErr| Err(KafkaError::ConsumerCommit(code.into()));
    let deadline = Instant::now() + timeout;
    let client = consumer.client().native_ptr();
    // SAFETY: `client` and `offsets` stay valid for the whole call (the consumer and the list
    // are borrowed), and librdkafka copies the offsets before `rd_kafka_commit_queue` returns.
    // The queue is this call's own: created here, destroyed once here, and every event taken
    // from it is destroyed once, right after being read.
    unsafe {
        let queue = rd::rd_kafka_queue_new(client);
        let started =
            rd::rd_kafka_commit_queue(client, offsets.ptr(), queue, None, std::ptr::null_mut());
        let mut answer =
            (started != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| failed(started));
        while answer.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let event =
                rd::rd_kafka_queue_poll(queue, left.as_millis().clamp(1, i32::MAX as u128) as i32);
            if event.is_null() {
                continue;
            }
            if rd::rd_kafka_event_type(event) == rd::RD_KAFKA_EVENT_OFFSET_COMMIT {
                answer = Some(match rd::rd_kafka_event_error(event) {
                    RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
                    code => failed(code),
                });
            }
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        answer
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
        };
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.bootstrap_servers)
            .set("group.id", &config.group_id)
            .set("statistics.interval.ms", "5000");
        apply_properties(
            &mut client,
            &config.properties,
            &[
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
            ],
        )?;
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

/// Creates the topics that do not exist yet, with `partitions` partitions each (Kafka-protocol
/// brokers such as tansu do not create topics on first use). Topics that exist are left as
/// they are.
pub async fn ensure_topics(
    bootstrap_servers: &str,
    properties: &[(String, String)],
    topics: &[String],
    partitions: i32,
) -> Result<(), BrokerError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", bootstrap_servers);
    apply_properties(&mut client, properties, &[])?;
    let admin: AdminClient<DefaultClientContext> = client
        .create()
        .map_err(|e| broker_error("creating the admin client", &e))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|e| broker_error("creating topics", &e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BrokerError {
                    broker: BROKER,
                    message: format!("creating topic `{topic}`: {code}"),
                    retryable: retryable_code(code),
                })
            }
        }
    }
    Ok(())
}

/// How to publish to Kafka.
#[derive(Debug, Clone)]
pub struct KafkaPublisherConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Further librdkafka properties (`message.timeout.ms`, `linger.ms`, security, ...).
    /// `acks=all` and `enable.idempotence=true` cannot be changed: a publish must be durable.
    pub properties: Vec<(String, String)>,
    /// How long a publish waits for room in librdkafka's queue before failing.
    pub queue_timeout: Duration,
}

impl KafkaPublisherConfig {
    /// A publisher to the cluster at `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> KafkaPublisherConfig {
        KafkaPublisherConfig {
            bootstrap_servers: bootstrap_servers.into(),
            properties: Vec::new(),
            queue_timeout: Duration::from_secs(30),
        }
    }

    /// Adds a librdkafka property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }
}

/// Publishes to Kafka with an idempotent producer; a publish returns once every event is
/// acknowledged by all in-sync replicas.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    queue_timeout: Duration,
}

impl KafkaPublisher {
    /// Creates the producer. Must be called inside a tokio runtime.
    pub fn new(config: &KafkaPublisherConfig) -> Result<KafkaPublisher, BrokerError> {
        if config.bootstrap_servers.trim().is_empty() {
            return Err(config_error(
                "invalid kafka publisher configuration: bootstrap servers are empty".to_owned(),
            ));
        }
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &config.bootstrap_servers);
        apply_properties(
            &mut client,
            &config.properties,
            &[("acks", "all"), ("enable.idempotence", "true")],
        )?;
        let producer = client
            .create()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passing_broker_trouble_is_retryable_and_misconfiguration_is_not() {
        assert!(retryable_code(RDKafkaErrorCode::BrokerTransportFailure));
        assert!(retryable_code(RDKafkaErrorCode::CoordinatorNotAvailable));
        assert!(retryable_code(RDKafkaErrorCode::MessageTimedOut));
        assert!(!retryable_code(RDKafkaErrorCode::TopicAuthorizationFailed));
        assert!(!retryable_code(RDKafkaErrorCode::InvalidConfig));
        assert!(!retryable_code(RDKafkaErrorCode::MessageSizeTooLarge));
    }

    #[test]
    fn properties_the_pipeline_depends_on_cannot_be_overridden() {
        let mut config = ClientConfig::new();
        let err = apply_properties(
            &mut config,
            &[("enable.auto.commit".into(), "true".into())],
            &[("enable.auto.commit", "false")],
        )
        .err();
        assert!(
            err.as_ref()
                .is_some_and(|e| e.message.contains("enable.auto.commit") && !e.retryable),
            "{err:?}"
        );
        apply_properties(
            &mut config,
            &[("session.timeout.ms".into(), "6000".into())],
            &[("enable.auto.commit", "false")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.get("session.timeout.ms"), Some("6000"));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
    }

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
