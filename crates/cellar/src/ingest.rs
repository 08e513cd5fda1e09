//! Stream ingestion of a Cellar process: events come from the embedded log (appended by
//! `POST /v1/events` or `cellar produce`) or from Kafka, and are consumed by a main and a retry
//! pipeline, which write through the process's write path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use cellar_auth::{Access, Action, Audit, ResourceKind};
use cellar_cache::WritePath;
use cellar_ingest_stream::consumer::ParallelConsumer;
use cellar_ingest_stream::dispatch::Dispatcher;
use cellar_ingest_stream::kafka::{
    ensure_topics, ConsumerLag, KafkaConnection, KafkaPublisher, KafkaPublisherConfig, KafkaSource,
    KafkaSourceConfig,
};
use cellar_ingest_stream::log::source::{ensure_topic, LogPublisher, LogSource};
use cellar_ingest_stream::log::{EventLog, LogRecord, Producer};
use cellar_ingest_stream::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use cellar_ingest_stream::process::{EventProcessor, RetryPolicy};
use cellar_ingest_stream::source::{OutgoingEvent, Publisher, SourceEvent};
use cellar_ingest_stream::writer::{BatchPolicy, BatchingWriter};
use cellar_spec::FeatureRepo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;

use crate::config::Config;
use crate::deadletter::DeadLetters;

/// Consumer group of the embedded log's main pipeline; the retry pipeline's is this with
/// `-retry`, and the positions of re-driven dead letters are this with `-redrive`.
pub const CONSUMER_GROUP: &str = "cellar-ingest";

/// The group whose committed positions say which dead letters were re-driven, for the main
/// pipeline's group `group`.
pub fn redrive_group(group: &str) -> String {
    format!("{group}-redrive")
}

/// The dead letters of the Kafka cluster `config` names, for the CLI (no server needed).
pub fn kafka_dead_letters(config: &Config) -> anyhow::Result<DeadLetters> {
    let kafka = &config.ingest.kafka;
    anyhow::ensure!(kafka.enabled(), "ingest.kafka.brokers is not set");
    let (_, dead_letter_topic) = config
        .ingest
        .failure_topics()
        .map_err(|e| anyhow::anyhow!(e))?;
    let connection = kafka.connection().map_err(|e| anyhow::anyhow!(e))?;
    let publisher = KafkaPublisher::new(&KafkaPublisherConfig::new(connection.clone()))
        .context("connecting to Kafka")?;
    Ok(DeadLetters::kafka(
        connection,
        Arc::new(publisher),
        dead_letter_topic,
        redrive_group(&kafka.group),
    ))
}

/// Where events come from and failures go.
enum Transport {
    /// The embedded durable log in the data directory.
    Log(EventLog),
    // Boxed: the connection settings make it much larger than the log's handle.
    Kafka(Box<KafkaTransport>),
}

struct KafkaTransport {
    connection: KafkaConnection,
    group: String,
    /// Partitions of the topics Cellar creates.
    partitions: i32,
    publisher: KafkaPublisher,
}

/// The source of events and the pipelines that consume it.
pub struct StreamIngestion {
    transport: Transport,
    pub processor: Arc<EventProcessor>,
    pub policy: RetryPolicy,
    main: Arc<PipelineStats>,
    retry: Arc<PipelineStats>,
    pipelines: std::sync::Mutex<Option<(Pipeline, Pipeline)>>,
    /// Concurrency gauges read at scrape time.
    consumers: std::sync::Mutex<Vec<ParallelConsumer<SourceEvent>>>,
    dead_letters: DeadLetters,
    /// Lag reported by the Kafka members this process runs (main and retry).
    kafka_lag: std::sync::Mutex<Vec<ConsumerLag>>,
    /// Producers' next sequences on Kafka, kept by this process only (the embedded log keeps
    /// them durably with its records); held across a publish so one producer's calls run in
    /// order.
    kafka_sequences: tokio::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
    /// How long processed records stay in the embedded log; `None` keeps everything.
    log_retention: Option<Duration>,
}

/// Deletes processed records of the embedded log past `keep`, checking every minute (or
/// every `keep`, if shorter).
async fn enforce_log_retention(
    log: EventLog,
    keep: Duration,
    consumers: Vec<(String, String)>,
    keep_all: Vec<String>,
) {
    let every = keep.clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match log
            .enforce_retention(keep, cellar_spec::time::now_ms(), &consumers, &keep_all)
            .await
        {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "deleted processed log records past retention"),
            Err(e) => tracing::warn!(error = %e, "log retention failed; retrying"),
        }
    }
}

/// Aborts a background task when the scope that started it ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// What one `append_events` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub appended: usize,
    /// Events no ingestion consumes (kept in the log all the same).
    pub unrouted: usize,
    /// Events of a numbering producer skipped because they were appended before.
    pub duplicates: usize,
    /// The producer's next expected sequence, when the call named a producer.
    pub next_sequence: Option<u64>,
}

impl StreamIngestion {
    /// Prepares pipelines for `repo`'s stream ingestions on the transport `config` names: Kafka
    /// when brokers are set, else the log in `data_dir/log`. Must be called inside a tokio
    /// runtime.
    pub fn open(
        config: &Config,
        writer: WritePath,
        repo: &FeatureRepo,
    ) -> anyhow::Result<StreamIngestion> {
        let kafka = &config.ingest.kafka;
        let (retry_topic, dead_letter_topic) = config
            .ingest
            .failure_topics()
            .map_err(|e| anyhow::anyhow!(e))?;
        let (transport, publisher): (Transport, Arc<dyn Publisher>) = if kafka.enabled() {
            let connection = kafka.connection().map_err(|e| anyhow::anyhow!(e))?;
            let publisher = KafkaPublisher::new(&KafkaPublisherConfig::new(connection.clone()))
                .context("connecting to Kafka")?;
            (
                Transport::Kafka(Box::new(KafkaTransport {
                    connection,
                    group: kafka.group.clone(),
                    partitions: kafka.partitions,
                    publisher: publisher.clone(),
                })),
                Arc::new(publisher),
            )
        } else {
            let log =
                EventLog::open(config.data_dir.join("log")).context("opening the event log")?;
            (
                Transport::Log(log.clone()),
                Arc::new(LogPublisher::new(log)),
            )
        };
        let (dispatcher, errors) = Dispatcher::new(repo);
        for e in errors {
            tracing::warn!(error = %e, "ingestion skipped");
        }
        let dead_letters = match &transport {
            Transport::Log(log) => DeadLetters::log(
                log.clone(),
                dead_letter_topic.clone(),
                redrive_group(CONSUMER_GROUP),
            ),
            Transport::Kafka(kafka) => DeadLetters::kafka(
                kafka.connection.clone(),
                publisher.clone(),
                dead_letter_topic.clone(),
                redrive_group(&kafka.group),
            ),
        };
        let policy = RetryPolicy {
            retry_topic,
            dead_letter_topic,
            max_attempts: config.ingest.max_attempts.max(1),
            backoff: Duration::from_millis(config.ingest.retry_backoff_ms),
            ..RetryPolicy::default()
        };
        let event_times = config.event_time.bounds().map_err(|e| anyhow::anyhow!(e))?;
        let processor = Arc::new(
            EventProcessor::new(
                Arc::new(dispatcher),
                BatchingWriter::start(writer, BatchPolicy::default()),
                publisher,
                policy.clone(),
            )
            .with_event_times(event_times),
        );
        let main = Pipeline::new(processor.clone(), PipelineConfig::default())?;
        let retry = Pipeline::new(
            processor.clone(),
            PipelineConfig {
                honour_retry_time: true,
                ..PipelineConfig::default()
            },
        )?;
        Ok(StreamIngestion {
            transport,
            processor,
            policy,
            main: main.stats(),
            retry: retry.stats(),
            consumers: std::sync::Mutex::new(vec![
                main.consumer().clone(),
                retry.consumer().clone(),
            ]),
            pipelines: std::sync::Mutex::new(Some((main, retry))),
            dead_letters,
            kafka_lag: std::sync::Mutex::default(),
            kafka_sequences: tokio::sync::Mutex::default(),
            log_retention: (config.ingest.log_retention_secs > 0)
                .then(|| Duration::from_secs(config.ingest.log_retention_secs)),
        })
    }

    /// The dead-letter topic of this transport, to list and re-drive.
    pub fn dead_letters(&self) -> &DeadLetters {
        &self.dead_letters
    }

    /// Whether events come from the embedded log (rather than Kafka).
    pub fn is_embedded(&self) -> bool {
        matches!(self.transport, Transport::Log(_))
    }

    /// Swaps in the ingestions of a newly applied repo.
    pub fn reload(&self, repo: &FeatureRepo) {
        let (dispatcher, errors) = Dispatcher::new(repo);
        for e in errors {
            tracing::warn!(error = %e, "ingestion skipped");
        }
        let before = self.processor.dispatcher().topics();
        if dispatcher.topics() != before {
            tracing::warn!("the applied repo consumes other topics: restart to consume them");
        }
        self.processor.set_dispatcher(Arc::new(dispatcher));
    }

    /// Runs the main and retry pipelines until `stop` turns true. Runs once per ingestion.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some((main, retry)) = self.pipelines.lock().ok().and_then(|mut p| p.take()) else {
            anyhow::bail!("the ingestion pipelines are already running");
        };
        let topics = self.processor.dispatcher().topics();
        let mut all_topics = topics.clone();
        all_topics.extend(self.processor.dispatcher().republish_topics());
        all_topics.push(self.policy.retry_topic.clone());
        all_topics.push(self.policy.dead_letter_topic.clone());
        let retry_topics = vec![self.policy.retry_topic.clone()];
        let retry_group = format!("{CONSUMER_GROUP}-retry");
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        match &self.transport {
            Transport::Log(log) => {
                for t in &all_topics {
                    ensure_topic(log, t).await?;
                }
                tracing::info!(topics = ?topics, "consuming the embedded log");
                let retention = self.log_retention.map(|keep| {
                    // The groups that will read each topic, before they commit anything.
                    let consumers: Vec<(String, String)> = topics
                        .iter()
                        .map(|t| (CONSUMER_GROUP.to_owned(), t.clone()))
                        .chain(
                            retry_topics
                                .iter()
                                .map(|t| (retry_group.clone(), t.clone())),
                        )
                        .collect();
                    tokio::spawn(enforce_log_retention(
                        log.clone(),
                        keep,
                        consumers,
                        vec![self.policy.dead_letter_topic.clone()],
                    ))
                });
                let _stop_retention = AbortOnDrop(retention);
                let mut main_source = LogSource::new(log.clone(), CONSUMER_GROUP, topics);
                let mut retry_source = LogSource::new(log.clone(), retry_group, retry_topics);
                let (a, b) = tokio::join!(
                    main.run(&mut main_source, stopped(stop.clone())),
                    retry.run(&mut retry_source, stopped(stop)),
                );
                a?;
                b?;
            }
            Transport::Kafka(kafka) => {
                ensure_topics(&kafka.connection, &all_topics, kafka.partitions)
                    .await
                    .context("creating the consumed, retry and dead-letter topics")?;
                let source = |group: String, topics: Vec<String>| {
                    KafkaSource::new(&KafkaSourceConfig::new(
                        kafka.connection.clone(),
                        group,
                        topics,
                    ))
                };
                let mut main_source = source(kafka.group.clone(), topics.clone())?;
                let mut retry_source = source(format!("{}-retry", kafka.group), retry_topics)?;
                if let Ok(mut lag) = self.kafka_lag.lock() {
                    *lag = vec![main_source.lag(), retry_source.lag()];
                }
                tracing::info!(topics = ?topics, group = %kafka.group, brokers = %kafka.connection.bootstrap_servers, "consuming Kafka");
                let (a, b) = tokio::join!(
                    main.run(&mut main_source, stopped(stop.clone())),
                    retry.run(&mut retry_source, stopped(stop)),
                );
                // Leave the group cleanly, so the partitions move on without a session timeout.
                main_source.close().await;
                retry_source.close().await;
                a?;
                b?;
            }
        }
        Ok(())
    }

    /// Appends events to a topic, each keyed by the entity it is about (so its events are
    /// applied in order), and returns once they are durable (in the log, or acknowledged by
    /// Kafka).
    pub async fn append_events(
        &self,
        topic: &str,
        events: &[serde_json::Value],
        producer: Option<&Producer>,
    ) -> anyhow::Result<Appended> {
        let dispatcher = self.processor.dispatcher();
        let now = cellar_spec::time::now_ms();
        let mut unrouted = 0;
        let keyed: Vec<(Option<Bytes>, Bytes)> = events
            .iter()
            .map(|e| {
                let routes = dispatcher.route(topic, e);
                if routes.is_empty() {
                    unrouted += 1;
                }
                let key = routes
                    .first()
                    .and_then(|m| m.entity_key(e).ok())
                    .map(|entity| Bytes::from(entity.0));
                (key, Bytes::from(e.to_string()))
            })
            .collect();
        match &self.transport {
            Transport::Log(log) => {
                ensure_topic(log, topic).await?;
                let records: Vec<LogRecord> = keyed
                    .into_iter()
                    .map(|(key, payload)| LogRecord {
                        key,
                        payload,
                        headers: Vec::new(),
                        timestamp_ms: now,
                    })
                    .collect();
                match producer {
                    None => {
                        log.append(topic, &records).await?;
                    }
                    Some(producer) => {
                        let done = log.append_produced(topic, producer, &records).await?;
                        return Ok(Appended {
                            appended: done.positions.len(),
                            unrouted,
                            duplicates: done.duplicates,
                            next_sequence: Some(done.next_sequence),
                        });
                    }
                }
            }
            Transport::Kafka(kafka) => {
                let mut outgoing: Vec<OutgoingEvent> = keyed
                    .into_iter()
                    .map(|(key, payload)| OutgoingEvent {
                        key,
                        payload,
                        headers: Vec::new(),
                    })
                    .collect();
                let Some(producer) = producer else {
                    kafka.publisher.publish(topic, &outgoing).await?;
                    return Ok(Appended {
                        appended: events.len(),
                        unrouted,
                        duplicates: 0,
                        next_sequence: None,
                    });
                };
                let mut sequences = self.kafka_sequences.lock().await;
                let key = (topic.to_owned(), producer.id.clone());
                let expected = sequences.get(&key).copied().unwrap_or(0);
                let (skip, next) = producer.window(topic, expected, outgoing.len() as u64)?;
                let fresh = outgoing.split_off(skip as usize);
                kafka.publisher.publish(topic, &fresh).await?;
                sequences.insert(key, next);
                return Ok(Appended {
                    appended: fresh.len(),
                    unrouted,
                    duplicates: skip as usize,
                    next_sequence: Some(next),
                });
            }
        }
        Ok(Appended {
            appended: events.len(),
            unrouted,
            duplicates: 0,
            next_sequence: None,
        })
    }

    /// Per pipeline (main, retry): the events its consumer may run at once, as adapted to the
    /// store, and how many run now.
    pub fn concurrency(&self) -> Vec<(usize, usize)> {
        self.consumers
            .lock()
            .map(|c| {
                c.iter()
                    .map(|c| (c.concurrency_limit(), c.in_flight()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The main pipeline's counters.
    pub fn stats(&self) -> (&PipelineStats, &PipelineStats) {
        (&self.main, &self.retry)
    }

    /// Whether every event of the consumed topics and of the retry topic is committed. Known
    /// only for the embedded log: Kafka-protocol brokers do not all report end offsets
    /// reliably, so on Kafka this is always false.
    pub fn caught_up(&self) -> bool {
        let Transport::Log(log) = &self.transport else {
            return false;
        };
        let retry_group = format!("{CONSUMER_GROUP}-retry");
        let retry_lag = match log.partitions(&self.policy.retry_topic) {
            Ok(partitions) => (0..partitions).any(|p| {
                let end = log.end_offset(&self.policy.retry_topic, p).unwrap_or(0);
                let committed = log
                    .committed(&retry_group, &self.policy.retry_topic, p)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                end > committed
            }),
            Err(_) => false,
        };
        !retry_lag && self.lag().iter().all(|(_, _, lag)| *lag == 0)
    }

    /// Lag per partition: on the embedded log, end offset minus the group's committed position
    /// for every partition of the consumed topics; on Kafka, librdkafka's figure for the
    /// partitions this process owns.
    pub fn lag(&self) -> Vec<(String, u32, i64)> {
        let Transport::Log(log) = &self.transport else {
            let members = self.kafka_lag.lock().map(|l| l.clone()).unwrap_or_default();
            return members
                .iter()
                .flat_map(ConsumerLag::snapshot)
                .map(|(topic, partition, lag)| (topic, partition.max(0) as u32, lag))
                .collect();
        };
        let mut out = Vec::new();
        for topic in self.processor.dispatcher().topics() {
            let Ok(partitions) = log.partitions(&topic) else {
                continue;
            };
            for p in 0..partitions {
                let end = log.end_offset(&topic, p).unwrap_or(0);
                let committed = log
                    .committed(CONSUMER_GROUP, &topic, p)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                out.push((topic.clone(), p, end - committed));
            }
        }
        out
    }
}

/// Reads one counter of a pipeline.
type StatReader = fn(&PipelineStats) -> u64;
type HistogramReader = fn(&PipelineStats) -> &Histogram;

/// Prometheus view of the ingestion: counters per pipeline, the consumer's adaptive
/// concurrency and in-flight work, and lag per partition.
#[derive(Clone)]
pub struct IngestMetrics(pub Arc<StreamIngestion>);

impl std::fmt::Debug for IngestMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngestMetrics")
    }
}

impl Collector for IngestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ingestion = &self.0;
        let (main, retry) = ingestion.stats();
        let counters: [(&str, &str, StatReader); 7] = [
            ("ingest_events", "Events processed", |s| {
                s.events.load(Ordering::Relaxed)
            }),
            (
                "ingest_records",
                "Records written (stale ones included)",
                |s| s.records.load(Ordering::Relaxed),
            ),
            (
                "ingest_duplicates",
                "Records an event had already been applied to (redeliveries, left unchanged)",
                |s| s.duplicates.load(Ordering::Relaxed),
            ),
            (
                "ingest_late_events",
                "Windowed aggregates an event came too late for (older than the window)",
                |s| s.late.load(Ordering::Relaxed),
            ),
            ("ingest_retries", "Failures sent to the retry topic", |s| {
                s.retried.load(Ordering::Relaxed)
            }),
            (
                "ingest_dead_letters",
                "Events sent to the dead-letter topic",
                |s| s.dead_lettered.load(Ordering::Relaxed),
            ),
            ("ingest_commits", "Position commits", |s| {
                s.commits.load(Ordering::Relaxed)
            }),
        ];
        for (name, help, read) in counters {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (pipeline, stats) in [("main", main), ("retry", retry)] {
                ConstCounter::new(read(stats))
                    .encode(m.encode_family(&[("pipeline", pipeline)])?)?;
            }
        }
        let histograms: [(&str, &str, HistogramReader); 2] = [
            (
                "ingest_commit_latency_seconds",
                "Time to commit consumed positions to the source",
                |s| &s.commit_seconds,
            ),
            (
                "ingest_freshness_seconds",
                "From an event's event time to its records being servable",
                |s| &s.freshness_seconds,
            ),
        ];
        for (name, help, read) in histograms {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (pipeline, stats) in [("main", main), ("retry", retry)] {
                read(stats).encode(m.encode_family(&[("pipeline", pipeline)])?)?;
            }
        }
        let consumers = ingestion
            .consumers
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default();
        let mut limit = encoder.encode_descriptor(
            "ingest_concurrency_limit",
            "Events the consumer may run at once, as adapted to the store",
            None,
            MetricType::Gauge,
        )?;
        for (pipeline, c) in ["main", "retry"].iter().zip(&consumers) {
            ConstGauge::new(c.concurrency_limit() as i64)
                .encode(limit.encode_family(&[("pipeline", *pipeline)])?)?;
        }
        let mut in_flight = encoder.encode_descriptor(
            "ingest_in_flight",
            "Events running now",
            None,
            MetricType::Gauge,
        )?;
        for (pipeline, c) in ["main", "retry"].iter().zip(&consumers) {
            ConstGauge::new(c.in_flight() as i64)
                .encode(in_flight.encode_family(&[("pipeline", *pipeline)])?)?;
        }
        let mut lag = encoder.encode_descriptor(
            "ingest_consumer_lag",
            "Events in a partition not yet committed by the consumer group",
            None,
            MetricType::Gauge,
        )?;
        for (topic, partition, value) in ingestion.lag() {
            let partition = partition.to_string();
            ConstGauge::new(value).encode(lag.encode_family(&[
                ("topic", topic.as_str()),
                ("partition", partition.as_str()),
            ])?)?;
        }
        Ok(())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsBody {
    topic: String,
    events: Vec<serde_json::Value>,
    /// A producer numbering its events, so a retried request appends them once.
    #[serde(default)]
    producer: Option<ProducerBody>,
}

/// `{"id": "...", "sequence": N}`: the producer and the sequence of the request's first event.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProducerBody {
    id: String,
    sequence: u64,
}

/// The query of `GET /v1/dead-letters`; the limit is text, so a bad one gets its own message.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterQuery {
    limit: Option<String>,
    ingestion: Option<String>,
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RedriveBody {
    limit: Option<u64>,
}

/// `POST /v1/events`: `{"topic": "...", "events": [{...}, ...]}` appended to the embedded log;
/// answers `{"appended": N, "unrouted": M}` once they are durable.
///
/// `GET /v1/dead-letters?limit=N&ingestion=X`: the dead letters not yet re-driven, as a JSON
/// array (see [`crate::deadletter::DeadLetter`]); `POST /v1/dead-letters/redrive` with an
/// optional body `{"limit": N}`: re-drives them (all, or the first N) and answers
/// `{"redriven": N, "skipped": M}`.
///
/// Appending needs `publish_events` on the topic; listing dead letters (their payloads are
/// the events' data) and re-driving them need `operate_dead_letters` on the ingestion asked
/// for, or on every ingestion. Appends and re-drives are written to the audit log.
///
/// Two routers: the events API, for producers, and the dead letters, an operator's, which
/// `server.admin_listen` may serve on a listener of their own.
pub fn stream_routers(
    ingestion: Arc<StreamIngestion>,
    max_events: usize,
    max_body_bytes: usize,
    audit: Audit,
) -> StreamRouters {
    use crate::deadletter::{check_ingestion_name, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
    use axum::extract::rejection::QueryRejection;
    use axum::extract::{DefaultBodyLimit, Query, State};
    use axum::http::StatusCode;
    use axum::response::Response;
    use cellar_serving::http::{error_response, json_response};
    use cellar_serving::json::error_body;
    use cellar_serving::ErrorKind;

    type Shared = State<(Arc<StreamIngestion>, usize, Audit)>;

    fn bad(kind: ErrorKind, message: String) -> Response {
        error_response(kind, error_body(kind, &message))
    }

    fn denied(e: cellar_auth::Denied) -> Response {
        bad(ErrorKind::PermissionDenied, e.to_string())
    }

    /// Whether trying again may help: a broker or log failure that says so (or says nothing).
    fn retryable(e: &anyhow::Error) -> bool {
        match (
            e.downcast_ref::<cellar_ingest_stream::source::BrokerError>(),
            e.downcast_ref::<cellar_ingest_stream::log::LogError>(),
        ) {
            (Some(b), _) => b.retryable,
            (_, Some(l)) => l.is_retryable(),
            _ => true,
        }
    }

    async fn append(
        State((ingestion, max_events, audit)): Shared,
        access: Access,
        body: axum::body::Bytes,
    ) -> Response {
        let body: EventsBody = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return bad(ErrorKind::InvalidArgument, format!("invalid request: {e}")),
        };
        let resource = format!("topic:{}", body.topic);
        if let Err(e) = access.check(Action::PublishEvents, ResourceKind::Topic, &body.topic) {
            audit.record(&access, Action::PublishEvents, &resource, 0, "denied");
            return denied(e);
        }
        if body.events.is_empty() {
            return bad(
                ErrorKind::InvalidArgument,
                "events: no events to append".into(),
            );
        }
        if body.events.len() > max_events {
            return bad(
                ErrorKind::TooLarge,
                format!(
                    "events: {} events in one request, the limit is {max_events}",
                    body.events.len()
                ),
            );
        }
        let producer = body.producer.map(|p| Producer {
            id: p.id,
            first_sequence: p.sequence,
        });
        match ingestion
            .append_events(&body.topic, &body.events, producer.as_ref())
            .await
        {
            Ok(a) => {
                audit.record(
                    &access,
                    Action::PublishEvents,
                    &resource,
                    a.appended as u64,
                    "ok",
                );
                let mut answer =
                    serde_json::json!({"appended": a.appended, "unrouted": a.unrouted});
                if let Some(next) = a.next_sequence {
                    answer["duplicates"] = a.duplicates.into();
                    answer["next_sequence"] = next.into();
                }
                json_response(StatusCode::OK, answer.to_string().into_bytes())
            }

            Err(e) => {
                let kind = if retryable(&e) {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::InvalidArgument
                };
                audit.record(&access, Action::PublishEvents, &resource, 0, "error");
                bad(kind, format!("topic `{}`: {e:#}", body.topic))
            }
        }
    }

    /// A dead-letter failure: the request was valid, so it is the transport's.
    fn dead_letter_failure(e: anyhow::Error) -> Response {
        let kind = if retryable(&e) {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Internal
        };
        bad(kind, format!("dead letters: {e:#}"))
    }

    async fn list_dead_letters(
        State((ingestion, _, _)): Shared,
        access: Access,
        query: Result<Query<DeadLetterQuery>, QueryRejection>,
    ) -> Response {
        let query = match query {
            Ok(Query(q)) => q,
            Err(e) => {
                return bad(
                    ErrorKind::InvalidArgument,
                    format!("invalid query: {}", e.body_text()),
                )
            }
        };
        let limit = match query.limit.as_deref() {
            None => DEFAULT_LIST_LIMIT,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIST_LIMIT).contains(&n) => n,
                _ => {
                    return bad(
                        ErrorKind::InvalidArgument,
                        format!("limit: `{text}` is not a number from 1 to {MAX_LIST_LIMIT}"),
                    )
                }
            },
        };
        if let Some(Err(e)) = query.ingestion.as_deref().map(check_ingestion_name) {
            return bad(ErrorKind::InvalidArgument, format!("ingestion: {e}"));
        }
        let allowed = match query.ingestion.as_deref() {
            Some(name) => access.check(Action::OperateDeadLetters, ResourceKind::Ingestion, name),
            None => access.check_every(Action::OperateDeadLetters, ResourceKind::Ingestion),
        };
        if let Err(e) = allowed {
            return denied(e);
        }
        match ingestion
            .dead_letters()
            .list(limit, query.ingestion.as_deref())
            .await
        {
            Ok(found) => json_response(
                StatusCode::OK,
                serde_json::to_vec(&found).unwrap_or_default(),
            ),
            Err(e) => dead_letter_failure(e),
        }
    }

    async fn redrive_dead_letters(
        State((ingestion, _, audit)): Shared,
        access: Access,
        body: axum::body::Bytes,
    ) -> Response {
        // A re-drive takes the dead letters of every ingestion.
        if let Err(e) = access.check_every(Action::OperateDeadLetters, ResourceKind::Ingestion) {
            audit.record(
                &access,
                Action::OperateDeadLetters,
                "ingestion:*",
                0,
                "denied: redrive",
            );
            return denied(e);
        }
        let body: RedriveBody = if body.trim_ascii().is_empty() {
            RedriveBody::default()
        } else {
            match serde_json::from_slice(&body) {
                Ok(b) => b,
                Err(e) => return bad(ErrorKind::InvalidArgument, format!("invalid request: {e}")),
            }
        };
        let limit = match body.limit {
            Some(0) => {
                return bad(
                    ErrorKind::InvalidArgument,
                    "limit: must be at least 1 (leave it out to re-drive every dead letter)".into(),
                )
            }
            limit => limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        };
        match ingestion.dead_letters().redrive(limit).await {
            Ok(done) => {
                audit.record(
                    &access,
                    Action::OperateDeadLetters,
                    "ingestion:*",
                    done.redriven,
                    "ok: redrive",
                );
                json_response(
                    StatusCode::OK,
                    serde_json::to_vec(&done).unwrap_or_default(),
                )
            }
            Err(e) => {
                audit.record(
                    &access,
                    Action::OperateDeadLetters,
                    "ingestion:*",
                    0,
                    "error: redrive",
                );
                dead_letter_failure(e)
            }
        }
    }

    let state = (ingestion, max_events, audit);
    StreamRouters {
        events: axum::Router::new()
            .route("/v1/events", axum::routing::post(append))
            .layer(DefaultBodyLimit::max(max_body_bytes))
            .with_state(state.clone()),
        dead_letters: axum::Router::new()
            .route("/v1/dead-letters", axum::routing::get(list_dead_letters))
            .route(
                "/v1/dead-letters/redrive",
                axum::routing::post(redrive_dead_letters),
            )
            .layer(DefaultBodyLimit::max(max_body_bytes))
            .with_state(state),
    }
}

/// The routes of a serving process's stream ingestion.
pub struct StreamRouters {
    /// `POST /v1/events`.
    pub events: axum::Router,
    /// `GET /v1/dead-letters`, `POST /v1/dead-letters/redrive`.
    pub dead_letters: axum::Router,
}
