//! The ingestion pipeline: a driver loop that polls a source, hands each partition's events to
//! the parallel consumer, pauses partitions whose buffers are full, and commits the positions
//! below which every event is applied or durably re-published.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cellar_spec::time::now_ms;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::consumer::{
    BufferState, ConsumerConfig, ConsumerError, Event, EventProcessor as ProcessEvents,
    FailureHandler, ParallelConsumer, ProcessError,
};
use crate::process::{next_attempt_at, EventProcessor, Failure};
use crate::source::{BrokerError, Polled, Source, SourceEvent, TopicPartition};

/// How the driver polls and commits.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub consumer: ConsumerConfig,
    /// Most events taken from the source per poll.
    pub max_poll: usize,
    /// How long one poll waits for events.
    pub poll_timeout: Duration,
    /// How often positions are committed.
    pub commit_interval: Duration,
    /// How long a revoked partition's running events may take to finish.
    pub revoke_timeout: Duration,
    /// Whether events wait for their retry time (the retry topic's pipeline) before running.
    pub honour_retry_time: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            consumer: ConsumerConfig::default(),
            max_poll: 1000,
            poll_timeout: Duration::from_millis(100),
            commit_interval: Duration::from_millis(200),
            revoke_timeout: Duration::from_secs(10),
            honour_retry_time: false,
        }
    }
}

/// Counters of one pipeline, read by metrics and tests.
#[derive(Debug)]
pub struct PipelineStats {
    pub events: AtomicU64,
    pub records: AtomicU64,
    pub stale: AtomicU64,
    /// Records left unchanged because the event had been applied to them before.
    pub duplicates: AtomicU64,
    /// Aggregates events came too late for.
    pub late: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub commits: AtomicU64,
    /// How long position commits take, seconds.
    pub commit_seconds: Histogram,
    /// From an event's event time to its records being servable (durable and in the cache
    /// tiers), seconds.
    pub freshness_seconds: Histogram,
}

impl Default for PipelineStats {
    fn default() -> Self {
        PipelineStats {
            events: AtomicU64::default(),
            records: AtomicU64::default(),
            stale: AtomicU64::default(),
            duplicates: AtomicU64::default(),
            late: AtomicU64::default(),
            retried: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            commits: AtomicU64::default(),
            // 0.1 ms to about 13 s.
            commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
            // 1 ms to about 36 h: replays of old events land in the top buckets.
            freshness_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 27)),
        }
    }
}

/// The failures of one event, carried from the processor to the failure handler.
#[derive(Debug)]
struct FailedIngestions(Vec<(String, Failure)>);

impl std::fmt::Display for FailedIngestions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (ingestion, failure)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match failure {
                Failure::Poison(r) | Failure::Transient(r) => write!(f, "{ingestion}: {r}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for FailedIngestions {}

struct Apply {
    processor: Arc<EventProcessor>,
    stats: Arc<PipelineStats>,
    honour_retry_time: bool,
}

#[async_trait]
impl ProcessEvents<SourceEvent> for Apply {
    async fn process(
        &self,
        _partition: &TopicPartition,
        event: &Event<SourceEvent>,
    ) -> Result<(), ProcessError> {
        if self.honour_retry_time {
            if let Some(at) = next_attempt_at(&event.payload) {
                let wait = at.saturating_sub(now_ms());
                if wait > 0 {
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
        }
        let applied = self.processor.apply(&event.payload).await;
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records
            .fetch_add(applied.records as u64, Ordering::Relaxed);
        self.stats
            .stale
            .fetch_add(applied.stale as u64, Ordering::Relaxed);
        self.stats
            .duplicates
            .fetch_add(applied.duplicates as u64, Ordering::Relaxed);
        self.stats
            .late
            .fetch_add(applied.late as u64, Ordering::Relaxed);
        if let Some(t) = applied.newest_event_time {
            let age_ms = now_ms().saturating_sub(t).max(0);
            self.stats.freshness_seconds.observe(age_ms as f64 / 1000.0);
        }
        if applied.failures.is_empty() {
            Ok(())
        } else {
            Err(Box::new(FailedIngestions(applied.failures)))
        }
    }
}

struct Reroute {
    processor: Arc<EventProcessor>,
    stats: Arc<PipelineStats>,
}

#[async_trait]
impl FailureHandler<SourceEvent> for Reroute {
    async fn on_failure(
        &self,
        _partition: &TopicPartition,
        event: &Event<SourceEvent>,
        error: &ProcessError,
    ) -> Result<(), ProcessError> {
        let failures = match error.downcast_ref::<FailedIngestions>() {
            Some(f) => f.0.clone(),
            // A panic or another unexpected error: retry the whole event.
            None => vec![(String::new(), Failure::Transient(error.to_string()))],
        };
        // The producer may fail transiently too; the offset completes only once the event is
        // durably re-published, so keep trying with a short backoff.
        let mut wait = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .processor
                .route_failures(&event.payload, &failures)
                .await
            {
                Ok(outcome) => {
                    self.stats
                        .retried
                        .fetch_add(outcome.retried as u64, Ordering::Relaxed);
                    self.stats
                        .dead_lettered
                        .fetch_add(outcome.dead_lettered as u64, Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) if e.retryable && attempt < 10 => {
                    tracing::warn!(error = %e, attempt, "re-publishing a failed event failed, trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(Box::new(e)),
            }
        }
    }
}

/// Why a pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
}

/// One source consumed by the parallel consumer.
pub struct Pipeline {
    consumer: ParallelConsumer<SourceEvent>,
    config: PipelineConfig,
    stats: Arc<PipelineStats>,
}

impl Pipeline {
    /// A pipeline applying events with `processor`. Must be called inside a tokio runtime.
    pub fn new(
        processor: Arc<EventProcessor>,
        config: PipelineConfig,
    ) -> Result<Pipeline, ConsumerError> {
        let stats = Arc::new(PipelineStats::default());
        let consumer = ParallelConsumer::new(
            config.consumer.clone(),
            Apply {
                processor: processor.clone(),
                stats: stats.clone(),
                honour_retry_time: config.honour_retry_time,
            },
            Reroute {
                processor,
                stats: stats.clone(),
            },
        )?;
        Ok(Pipeline {
            consumer,
            config,
            stats,
        })
    }

    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    /// The parallel consumer, for its metrics (limit, in-flight, stalls).
    pub fn consumer(&self) -> &ParallelConsumer<SourceEvent> {
        &self.consumer
    }

    async fn commit(&self, source: &mut dyn Source) -> Result<(), BrokerError> {
        let positions = self.consumer.commit_positions();
        if positions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        source.commit(&positions).await?;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::trace!(
            partitions = positions.len(),
            micros = started.elapsed().as_micros() as u64,
            "committed"
        );
        Ok(())
    }

    /// Runs until `shutdown` resolves, then lets running events finish (up to the revoke
    /// timeout) and commits once more.
    pub async fn run(
        &self,
        source: &mut dyn Source,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), PipelineError> {
        tokio::pin!(shutdown);
        let mut paused: HashSet<TopicPartition> = HashSet::new();
        let mut last_commit = Instant::now();
        let mut last_stall_report = Instant::now();
        let mut broker_failures: u32 = 0;
        loop {
            let polled = tokio::select! {
                _ = &mut shutdown => break,
                polled = source.poll(self.config.max_poll, self.config.poll_timeout) => polled,
            };
            // A broker that is briefly unavailable must not stop ingestion: wait and poll
            // again. Work already handed over keeps running meanwhile.
            let polled = match polled {
                Ok(p) => {
                    broker_failures = 0;
                    p
                }
                Err(e) if e.retryable => {
                    broker_failures += 1;
                    let wait = Duration::from_millis(100 * (1 << broker_failures.min(6)));
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "poll failed");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match polled {
                Polled::Assigned(partitions) => {
                    for (tp, start) in partitions {
                        tracing::debug!(partition = %tp, start, "partition assigned");
                        self.consumer.assign(tp, start)?;
                    }
                }
                Polled::Revoked(partitions) => {
                    let mut positions = Vec::new();
                    for tp in &partitions {
                        let revoked = self.consumer.revoke(tp, self.config.revoke_timeout).await?;
                        tracing::info!(partition = %tp, committed = revoked.committable, dropped = revoked.dropped, abandoned = revoked.abandoned, "partition revoked");
                        positions.push((tp.clone(), revoked.committable));
                        paused.remove(tp);
                    }
                    source.commit(&positions).await?;
                    source.release(&partitions).await?;
                }
                Polled::Events(events) => {
                    // A poll returns each partition's events together, so the partition is
                    // looked for from the last one found, not by a map lookup per event.
                    let mut by_partition: Vec<(TopicPartition, Vec<Event<SourceEvent>>)> =
                        Vec::new();
                    for e in events {
                        let at = match by_partition.iter().rposition(|(tp, _)| *tp == e.partition) {
                            Some(at) => at,
                            None => {
                                by_partition.push((e.partition.clone(), Vec::new()));
                                by_partition.len() - 1
                            }
                        };
                        by_partition[at]
                            .1
                            .push(Event::new(e.offset, e.key.clone(), e));
                    }
                    for (tp, batch) in by_partition {
                        if self.consumer.submit(&tp, batch)? == BufferState::Full
                            && paused.insert(tp.clone())
                        {
                            source.pause(std::slice::from_ref(&tp))?;
                        }
                    }
                }
            }
            let resumable: Vec<TopicPartition> = paused
                .iter()
                .filter(|tp| matches!(self.consumer.buffer_state(tp), Ok(BufferState::HasRoom)))
                .cloned()
                .collect();
            if !resumable.is_empty() {
                source.resume(&resumable)?;
                for tp in &resumable {
                    paused.remove(tp);
                }
            }
            if last_commit.elapsed() >= self.config.commit_interval {
                match self.commit(source).await {
                    Ok(()) => {}
                    // The next commit covers the same positions, and more.
                    Err(e) if e.retryable => tracing::warn!(error = %e, "commit failed"),
                    Err(e) => return Err(e.into()),
                }
                last_commit = Instant::now();
            }
            if last_stall_report.elapsed() >= Duration::from_secs(10) {
                for stall in self.consumer.stalled() {
                    tracing::warn!(partition = %stall.partition, offset = stall.offset, stuck_secs = stall.stuck_for.as_secs(), reason = ?stall.reason, "partition is not progressing");
                }
                last_stall_report = Instant::now();
            }
        }
        // Let running work finish so its offsets can be committed.
        for tp in self.consumer.partitions() {
            let _ =
                tokio::time::timeout(self.config.revoke_timeout, self.consumer.wait_drained(&tp))
                    .await;
        }
        self.commit(source).await?;
        Ok(())
    }
}
