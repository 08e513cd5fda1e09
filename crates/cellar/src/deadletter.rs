//! Dead letters: the events stream ingestion gave up on, listed with why they failed, and
//! re-driven to the topics they were first published to once the cause is fixed (a corrected
//! repo applied, a store back up).
//!
//! What has been re-driven is a committed position per dead-letter partition, kept for a
//! consumer group of its own (`<main group>-redrive`): a re-drive publishes the records from
//! that position on, then commits past them, so the next re-drive does not send them again and
//! `list` shows only what is left. Positions move past records in offset order, so a re-drive
//! takes every record (or the first `limit`), never a filtered subset: a filter would leave
//! skipped records below a position that has moved past them. A re-drive stops at the records
//! that were there when it started: re-driven events that fail again come back as new dead
//! letters, for the next re-drive, rather than round and round. A failure between publishing
//! a chunk and committing it sends that chunk again on the next re-drive (at least once, like
//! the rest of the pipeline).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use cellar_ingest_stream::kafka::{ClusterContext, KafkaConnection};
use cellar_ingest_stream::log::source::LogPublisher;
use cellar_ingest_stream::log::{EventLog, LogError};
use cellar_ingest_stream::process::headers;
use cellar_ingest_stream::source::{OutgoingEvent, Publisher};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// Dead letters `list` shows when not told how many.
pub const DEFAULT_LIST_LIMIT: usize = 100;
/// The most dead letters one `list` returns: an answer stays a readable size.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Records read, re-published and committed at a time.
const CHUNK: usize = 500;
/// How long Kafka calls that must answer (metadata, committed offsets, commits) may take.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first Kafka poll waits for a record: connecting and finding the partitions'
/// leaders come first.
const KAFKA_FIRST_WAIT: Duration = Duration::from_secs(5);
/// A Kafka partition is read to its end when a poll returns nothing for this long (end
/// offsets are not reliable on every Kafka-protocol broker).
const KAFKA_IDLE: Duration = Duration::from_secs(2);

/// One dead letter, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its partition of the dead-letter topic.
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: i64,
    /// The topic the event was first published to: where a re-drive sends it.
    pub topic: Option<String>,
    /// The ingestion that failed; none when every ingestion of the event failed (malformed
    /// JSON).
    pub ingestion: Option<String>,
    /// Attempts made before it was given up on.
    pub attempts: Option<u32>,
    /// When it first failed, RFC 3339.
    pub first_failure: Option<String>,
    /// Why it failed, the last time.
    pub error: Option<String>,
    /// Where it was first read, `topic/partition@offset`.
    pub origin: Option<String>,
    /// Its key, as text.
    pub key: Option<String>,
    /// The event, as text.
    pub payload: String,
}

/// What a re-drive did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    /// Records published again to their original topics.
    pub redriven: u64,
    /// Records that name no original topic (not written by Cellar): passed over.
    pub skipped: u64,
}

/// One record of the dead-letter topic, as read.
struct RawDeadLetter {
    partition: u32,
    offset: i64,
    key: Option<Bytes>,
    payload: Bytes,
    headers: Vec<(String, Bytes)>,
}

impl RawDeadLetter {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The topic a re-drive publishes to: the first one, else the one of the origin.
    fn original_topic(&self) -> Option<String> {
        self.header(headers::TOPIC)
            .filter(|t| !t.is_empty())
            .or_else(|| self.header(headers::ORIGIN).and_then(|o| origin_topic(&o)))
    }

    fn ingestion(&self) -> Option<String> {
        self.header(headers::INGESTION).filter(|i| !i.is_empty())
    }

    fn describe(&self) -> DeadLetter {
        let first_failure = self.header(headers::FIRST_FAILURE).map(|ms| {
            ms.parse::<i64>()
                .ok()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or(ms)
        });
        DeadLetter {
            partition: self.partition,
            offset: self.offset,
            topic: self.original_topic(),
            ingestion: self.ingestion(),
            attempts: self.header(headers::ATTEMPT).and_then(|a| a.parse().ok()),
            first_failure,
            error: self.header(headers::ERROR),
            origin: self.header(headers::ORIGIN),
            key: self
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            payload: String::from_utf8_lossy(&self.payload).into_owned(),
        }
    }

    /// The event as published again: its key, payload and own headers, and of Cellar's only
    /// the failed ingestion, so that only that one runs it again (the others applied it).
    fn redriven(&self) -> OutgoingEvent {
        let headers = self
            .headers
            .iter()
            .filter(|(n, _)| !n.starts_with("cellar-") || n == headers::INGESTION)
            .cloned()
            .collect();
        OutgoingEvent {
            key: self.key.clone(),
            payload: self.payload.clone(),
            headers,
        }
    }
}

/// The topic of an origin, `topic/partition@offset` (or `topic[partition]@offset`).
fn origin_topic(origin: &str) -> Option<String> {
    let (place, _) = origin.rsplit_once('@')?;
    let topic = match place.strip_suffix(']') {
        Some(rest) => rest.rsplit_once('[')?.0,
        None => place.rsplit_once('/')?.0,
    };
    (!topic.is_empty()).then(|| topic.to_owned())
}

/// Whether `name` is written as an ingestion name (`[a-z][a-z0-9_]*`, at most 64
/// characters), so a mistyped filter is an error rather than an empty list.
pub fn check_ingestion_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        anyhow::bail!(
            "`{name}` is not an ingestion name: names are a-z, then a-z, 0-9 or `_`, at most 64 characters"
        );
    }
    Ok(())
}

enum Backend {
    Log(EventLog),
    // Boxed: the connection settings make it much larger than the log's handle.
    Kafka(Box<KafkaConnection>),
}

/// The dead-letter topic of one transport, and what has been re-driven from it.
pub struct DeadLetters {
    backend: Backend,
    publisher: Arc<dyn Publisher>,
    topic: String,
    group: String,
    /// One re-drive at a time in this process: two would read the same records from the
    /// same position and publish them twice.
    redriving: tokio::sync::Mutex<()>,
}

impl DeadLetters {
    /// Dead letters of the embedded log; re-driven records are appended to it.
    pub fn log(log: EventLog, topic: impl Into<String>, group: impl Into<String>) -> DeadLetters {
        DeadLetters {
            publisher: Arc::new(LogPublisher::new(log.clone())),
            backend: Backend::Log(log),
            topic: topic.into(),
            group: group.into(),
            redriving: tokio::sync::Mutex::new(()),
        }
    }

    /// Dead letters of a Kafka topic; re-driven records go through `publisher`.
    pub fn kafka(
        settings: KafkaConnection,
        publisher: Arc<dyn Publisher>,
        topic: impl Into<String>,
        group: impl Into<String>,
    ) -> DeadLetters {
        DeadLetters {
            backend: Backend::Kafka(Box::new(settings)),
            publisher,
            topic: topic.into(),
            group: group.into(),
            redriving: tokio::sync::Mutex::new(()),
        }
    }

    /// Up to `limit` dead letters not yet re-driven (of one ingestion, if given), oldest first
    /// per partition, ordered by partition and offset.
    pub async fn list(
        &self,
        limit: usize,
        ingestion: Option<&str>,
    ) -> anyhow::Result<Vec<DeadLetter>> {
        if limit == 0 || limit > MAX_LIST_LIMIT {
            anyhow::bail!("limit: {limit} is not between 1 and {MAX_LIST_LIMIT}");
        }
        if let Some(name) = ingestion {
            check_ingestion_name(name)?;
        }
        let mut reader = self.reader(false).await?;
        let mut found = Vec::new();
        while found.len() < limit {
            let want = match ingestion {
                Some(_) => CHUNK,
                None => CHUNK.min(limit - found.len()),
            };
            let chunk = reader.next_chunk(want).await?;
            if chunk.is_empty() {
                break;
            }
            found.extend(
                chunk
                    .iter()
                    .filter(|r| ingestion.is_none() || r.ingestion().as_deref() == ingestion)
                    .map(RawDeadLetter::describe),
            );
        }
        // Records arrive in offset order per partition, so what is kept stays the oldest of
        // each partition.
        found.truncate(limit);
        found.sort_by_key(|d| (d.partition, d.offset));
        Ok(found)
    }

    /// Publishes every dead letter not yet re-driven (or the first `limit`, oldest first per
    /// partition) to its original topic and commits past it.
    pub async fn redrive(&self, limit: Option<usize>) -> anyhow::Result<Redriven> {
        if limit == Some(0) {
            anyhow::bail!("limit: must be at least 1");
        }
        let _one_at_a_time = self.redriving.lock().await;
        let mut done = Redriven::default();
        match self.redrive_into(limit, &mut done).await {
            Err(e) if done.redriven > 0 => Err(e.context(format!(
                "stopped after re-driving {} dead letters",
                done.redriven
            ))),
            Err(e) => Err(e),
            Ok(()) => {
                if done.redriven + done.skipped > 0 {
                    tracing::info!(
                        redriven = done.redriven,
                        skipped = done.skipped,
                        topic = %self.topic,
                        "re-drove dead letters"
                    );
                }
                Ok(done)
            }
        }
    }

    /// Re-drives, counting into `done` as it goes, so a failure can say how far it got.
    async fn redrive_into(&self, limit: Option<usize>, done: &mut Redriven) -> anyhow::Result<()> {
        let mut reader = self.reader(true).await?;
        loop {
            let examined = (done.redriven + done.skipped) as usize;
            let want = limit.map_or(CHUNK, |l| CHUNK.min(l.saturating_sub(examined)));
            if want == 0 {
                break;
            }
            let chunk = reader.next_chunk(want).await?;
            if chunk.is_empty() {
                break;
            }
            let mut next: BTreeMap<u32, i64> = BTreeMap::new();
            let mut chunk_done = Redriven::default();
            // Consecutive records of one topic go in one publish, in order.
            let mut batch: Option<(String, Vec<OutgoingEvent>)> = None;
            for record in &chunk {
                let position = next.entry(record.partition).or_insert(0);
                *position = (*position).max(record.offset + 1);
                let Some(topic) = record.original_topic() else {
                    tracing::warn!(
                        partition = record.partition,
                        offset = record.offset,
                        "dead letter names no original topic: not re-driven"
                    );
                    chunk_done.skipped += 1;
                    continue;
                };
                match &mut batch {
                    Some((t, events)) if *t == topic => events.push(record.redriven()),
                    _ => {
                        if let Some((t, events)) = batch.take() {
                            self.publish(&t, &events).await?;
                        }
                        batch = Some((topic, vec![record.redriven()]));
                    }
                }
                chunk_done.redriven += 1;
            }
            if let Some((t, events)) = batch.take() {
                self.publish(&t, &events).await?;
            }
            reader.commit(&next).await.with_context(|| {
                format!(
                    "recording the re-driven position of group `{}` (the last {} records \
                     re-driven will be sent again by the next re-drive)",
                    self.group, chunk_done.redriven
                )
            })?;
            done.redriven += chunk_done.redriven;
            done.skipped += chunk_done.skipped;
        }
        Ok(())
    }

    async fn publish(&self, topic: &str, events: &[OutgoingEvent]) -> anyhow::Result<()> {
        self.publisher
            .publish(topic, events)
            .await
            .with_context(|| format!("re-publishing dead letters to `{topic}`"))
    }

    /// A reader from the re-drive group's positions on. A `bounded` one stops at the records
    /// that were there when it was opened: a re-drive must not chase the dead letters its own
    /// re-driven events become when they fail again.
    async fn reader(&self, bounded: bool) -> anyhow::Result<Reader> {
        match &self.backend {
            Backend::Log(log) => {
                let partitions = match log.partitions(&self.topic) {
                    Ok(n) => n,
                    Err(LogError::UnknownTopic { .. }) => 0,
                    Err(e) => return Err(e.into()),
                };
                let mut positions = Vec::new();
                for p in 0..partitions {
                    let start = log.start_offset(&self.topic, p)?;
                    let committed = log.committed(&self.group, &self.topic, p)?.unwrap_or(0);
                    let end = if bounded {
                        log.end_offset(&self.topic, p)?
                    } else {
                        i64::MAX
                    };
                    positions.push(LogPartition {
                        partition: p,
                        next: committed.max(start),
                        end,
                    });
                }
                Ok(Reader::Log(LogReader {
                    log: log.clone(),
                    topic: self.topic.clone(),
                    group: self.group.clone(),
                    positions,
                    current: 0,
                }))
            }
            Backend::Kafka(settings) => {
                // Kafka-protocol brokers do not all report end offsets reliably; the records
                // there at the start are the ones stamped before it.
                let cutoff_ms = bounded.then(|| chrono::Utc::now().timestamp_millis());
                let (settings, topic, group) =
                    (settings.clone(), self.topic.clone(), self.group.clone());
                let reader = tokio::task::spawn_blocking(move || {
                    KafkaReader::open(&settings, &topic, &group, cutoff_ms)
                })
                .await
                .context("reading the dead-letter topic")??;
                Ok(reader.map_or(Reader::Empty, |r| Reader::Kafka(Box::new(r))))
            }
        }
    }
}

/// Reads the dead-letter topic from the re-drive group's positions on.
enum Reader {
    /// The topic does not exist yet: nothing was ever dead-lettered.
    Empty,
    Log(LogReader),
    Kafka(Box<KafkaReader>),
}

impl Reader {
    /// Up to `max` further records, in offset order per partition; empty at the end.
    async fn next_chunk(&mut self, max: usize) -> anyhow::Result<Vec<RawDeadLetter>> {
        match self {
            Reader::Empty => Ok(Vec::new()),
            Reader::Log(r) => r.next_chunk(max),
            Reader::Kafka(_) => {
                let Reader::Kafka(mut r) = std::mem::replace(self, Reader::Empty) else {
                    return Ok(Vec::new());
                };
                let (r, polled) = tokio::task::spawn_blocking(move || {
                    let polled = r.poll(max);
                    (r, polled)
                })
                .await
                .context("reading the dead-letter topic")?;
                *self = Reader::Kafka(r);
                polled
            }
        }
    }

    /// Commits, per partition, the offset after the last record handled.
    async fn commit(&mut self, next: &BTreeMap<u32, i64>) -> anyhow::Result<()> {
        match self {
            Reader::Empty => Ok(()),
            Reader::Log(r) => {
                for (&partition, &offset) in next {
                    r.log.commit(&r.group, &r.topic, partition, offset).await?;
                }
                Ok(())
            }
            Reader::Kafka(r) => {
                let mut tpl = TopicPartitionList::new();
                for (&partition, &offset) in next {
                    tpl.add_partition_offset(&r.topic, partition as i32, Offset::Offset(offset))
                        .context("building the offsets to commit")?;
                }
                let consumer = r.consumer.clone();
                tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                    .await
                    .context("committing to Kafka")?
                    .context("committing to Kafka")
            }
        }
    }
}

struct LogPartition {
    partition: u32,
    /// Next offset to read.
    next: i64,
    /// Where reading stops.
    end: i64,
}

struct LogReader {
    log: EventLog,
    topic: String,
    group: String,
    positions: Vec<LogPartition>,
    /// Index of the partition being read.
    current: usize,
}

impl LogReader {
    fn next_chunk(&mut self, max: usize) -> anyhow::Result<Vec<RawDeadLetter>> {
        while let Some(p) = self.positions.get_mut(self.current) {
            let room = usize::try_from(p.end.saturating_sub(p.next)).unwrap_or(0);
            let entries = if room == 0 {
                Vec::new()
            } else {
                self.log
                    .read(&self.topic, p.partition, p.next, max.min(room))?
            };
            let Some(last) = entries.last() else {
                self.current += 1;
                continue;
            };
            p.next = last.offset + 1;
            let partition = p.partition;
            return Ok(entries
                .into_iter()
                .map(|e| RawDeadLetter {
                    partition,
                    offset: e.offset,
                    key: e.key,
                    payload: e.payload,
                    headers: e.headers,
                })
                .collect());
        }
        Ok(Vec::new())
    }
}

/// A consumer assigned every partition of the dead-letter topic at the re-drive group's
/// positions, without joining the group (nothing else consumes it).
struct KafkaReader {
    consumer: Arc<BaseConsumer<ClusterContext>>,
    topic: String,
    /// Records stamped at or after this are not read (see [`DeadLetters::reader`]).
    cutoff_ms: Option<i64>,
    /// Partitions read up to the cutoff, paused.
    finished: HashSet<i32>,
    partitions: usize,
    /// Whether a poll ran already (the first one waits longer).
    polled: bool,
}

impl KafkaReader {
    /// `None` when the topic does not exist. Blocks.
    fn open(
        settings: &KafkaConnection,
        topic: &str,
        group: &str,
        cutoff_ms: Option<i64>,
    ) -> anyhow::Result<Option<KafkaReader>> {
        let config = settings.client_config(&[
            ("group.id", group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
        ])?;
        let consumer: BaseConsumer<ClusterContext> = config
            .create_with_context(settings.context()?)
            .context("creating a Kafka consumer for the dead-letter topic")?;
        let metadata = consumer
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .with_context(|| {
                format!(
                    "kafka: reading the partitions of `{topic}` from {}",
                    settings.bootstrap_servers
                )
            })?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Ok(None);
        }
        let mut wanted = TopicPartitionList::new();
        for &p in &partitions {
            wanted.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(wanted, KAFKA_TIMEOUT)
            .with_context(|| format!("kafka: reading the positions of group `{group}`"))?;
        let mut assignment = TopicPartitionList::new();
        for e in committed.elements() {
            let from = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            assignment
                .add_partition_offset(topic, e.partition(), from)
                .context("building the assignment")?;
        }
        consumer
            .assign(&assignment)
            .with_context(|| format!("kafka: assigning the partitions of `{topic}`"))?;
        Ok(Some(KafkaReader {
            consumer: Arc::new(consumer),
            topic: topic.to_owned(),
            cutoff_ms,
            finished: HashSet::new(),
            partitions: partitions.len(),
            polled: false,
        }))
    }

    /// Polls up to `max` records, until one poll waited for nothing (the first one
    /// [`KAFKA_FIRST_WAIT`], then [`KAFKA_IDLE`]) or every partition reached the cutoff.
    /// Blocks.
    fn poll(&mut self, max: usize) -> anyhow::Result<Vec<RawDeadLetter>> {
        let mut wait = if self.polled {
            KAFKA_IDLE
        } else {
            KAFKA_FIRST_WAIT
        };
        self.polled = true;
        let mut records = Vec::new();
        while records.len() < max && self.finished.len() < self.partitions {
            let Some(polled) = self.consumer.poll(wait) else {
                break;
            };
            wait = KAFKA_IDLE;
            let message = polled.context("kafka: reading the dead-letter topic")?;
            if self.finished.contains(&message.partition()) {
                continue;
            }
            let stamped = message.timestamp().to_millis();
            if let (Some(cutoff), Some(stamped)) = (self.cutoff_ms, stamped) {
                if stamped >= cutoff {
                    self.finished.insert(message.partition());
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&self.topic, message.partition());
                    self.consumer
                        .pause(&tpl)
                        .context("kafka: pausing a partition read to its end")?;
                    continue;
                }
            }
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                Bytes::copy_from_slice(h.value.unwrap_or_default()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            records.push(RawDeadLetter {
                partition: message.partition().max(0) as u32,
                offset: message.offset(),
                key: message.key().map(Bytes::copy_from_slice),
                payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
                headers,
            });
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(headers: &[(&str, &str)]) -> RawDeadLetter {
        RawDeadLetter {
            partition: 1,
            offset: 7,
            key: Some(Bytes::from("u1")),
            payload: Bytes::from(r#"{"user_id":"u1"}"#),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), Bytes::from(v.to_string())))
                .collect(),
        }
    }

    #[test]
    fn the_original_topic_comes_from_the_topic_header_else_the_origin() {
        let both = raw(&[
            (headers::TOPIC, "actions"),
            (headers::ORIGIN, "cellar-retry/2@9"),
        ]);
        assert_eq!(both.original_topic().as_deref(), Some("actions"));
        let origin = raw(&[(headers::ORIGIN, "user-actions/3@12")]);
        assert_eq!(origin.original_topic().as_deref(), Some("user-actions"));
        let bracketed = raw(&[(headers::ORIGIN, "user.actions[0]@1")]);
        assert_eq!(bracketed.original_topic().as_deref(), Some("user.actions"));
        assert_eq!(raw(&[(headers::ORIGIN, "garbage")]).original_topic(), None);
        assert_eq!(raw(&[]).original_topic(), None);
    }

    #[test]
    fn a_redriven_event_keeps_only_the_failed_ingestion_of_cellars_headers() {
        let r = raw(&[
            (headers::ATTEMPT, "5"),
            (headers::ERROR, "boom"),
            (headers::INGESTION, "clicks"),
            (headers::TOPIC, "actions"),
            ("trace-id", "abc"),
        ]);
        let out = r.redriven();
        let names: Vec<&str> = out.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [headers::INGESTION, "trace-id"]);
        assert_eq!(out.key, r.key);
        assert_eq!(out.payload, r.payload);
    }

    #[test]
    fn a_dead_letter_is_described_from_its_headers() {
        let d = raw(&[
            (headers::ATTEMPT, "1"),
            (headers::FIRST_FAILURE, "1767225600000"),
            (headers::ERROR, "feature `age`: expected int64"),
            (headers::INGESTION, "profiles"),
            (headers::TOPIC, "actions"),
        ])
        .describe();
        assert_eq!(d.first_failure.as_deref(), Some("2026-01-01T00:00:00.000Z"));
        assert_eq!(d.attempts, Some(1));
        assert_eq!(d.ingestion.as_deref(), Some("profiles"));
        assert_eq!(d.key.as_deref(), Some("u1"));
        assert_eq!((d.partition, d.offset), (1, 7));
    }

    #[test]
    fn ingestion_names_are_checked() {
        assert!(check_ingestion_name("click_history").is_ok());
        assert!(check_ingestion_name("Clicks").is_err());
        assert!(check_ingestion_name("").is_err());
    }

    #[tokio::test]
    async fn redrive_publishes_once_and_listing_follows_the_position() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.create_topic("dead", 2).await.unwrap();
        log.create_topic("actions", 1).await.unwrap();
        let record = |ingestion: &str, n: i64| cellar_ingest_stream::log::LogRecord {
            key: None,
            payload: Bytes::from(format!("{{\"n\":{n}}}")),
            headers: vec![
                (headers::TOPIC.into(), Bytes::from("actions")),
                (headers::INGESTION.into(), Bytes::from(ingestion.to_owned())),
            ],
            timestamp_ms: 0,
        };
        let records: Vec<_> = (0..6)
            .map(|n| record(if n % 2 == 0 { "a" } else { "b" }, n))
            .collect();
        log.append("dead", &records).await.unwrap();
        let dead = DeadLetters::log(log.clone(), "dead", "g-redrive");

        assert_eq!(dead.list(100, None).await.unwrap().len(), 6);
        let only_a = dead.list(100, Some("a")).await.unwrap();
        assert_eq!(only_a.len(), 3);
        assert!(only_a.iter().all(|d| d.ingestion.as_deref() == Some("a")));
        assert_eq!(dead.list(2, None).await.unwrap().len(), 2);

        let first = dead.redrive(Some(4)).await.unwrap();
        assert_eq!(first.redriven, 4);
        assert_eq!(dead.list(100, None).await.unwrap().len(), 2);
        let rest = dead.redrive(None).await.unwrap();
        assert_eq!(rest.redriven, 2);
        assert_eq!(dead.redrive(None).await.unwrap().redriven, 0);
        assert!(dead.list(100, None).await.unwrap().is_empty());

        let republished = log.read("actions", 0, 0, 100).unwrap();
        assert_eq!(republished.len(), 6);
        for e in &republished {
            let names: Vec<&str> = e.headers.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, [headers::INGESTION]);
        }

        assert!(dead.list(0, None).await.is_err());
        assert!(dead.redrive(Some(0)).await.is_err());
        let missing = DeadLetters::log(log, "no-such-topic", "g-redrive");
        assert!(missing.list(10, None).await.unwrap().is_empty());
        assert_eq!(missing.redrive(None).await.unwrap(), Redriven::default());
    }

    /// Publishes every event back to the dead-letter topic, as an ingestion that fails again
    /// at once would.
    struct FailsAgain(EventLog);

    #[async_trait::async_trait]
    impl Publisher for FailsAgain {
        async fn publish(
            &self,
            _topic: &str,
            events: &[OutgoingEvent],
        ) -> Result<(), cellar_ingest_stream::source::BrokerError> {
            let records: Vec<_> = events
                .iter()
                .map(|e| cellar_ingest_stream::log::LogRecord {
                    key: e.key.clone(),
                    payload: e.payload.clone(),
                    headers: vec![(headers::TOPIC.into(), Bytes::from("actions"))],
                    timestamp_ms: 0,
                })
                .collect();
            self.0.append("dead", &records).await.unwrap();
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_redrive_does_not_chase_the_dead_letters_it_causes() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        log.create_topic("dead", 1).await.unwrap();
        let record = cellar_ingest_stream::log::LogRecord {
            key: None,
            payload: Bytes::from("{}"),
            headers: vec![(headers::TOPIC.into(), Bytes::from("actions"))],
            timestamp_ms: 0,
        };
        log.append("dead", &[record.clone(), record]).await.unwrap();
        let dead = DeadLetters {
            backend: Backend::Log(log.clone()),
            publisher: Arc::new(FailsAgain(log.clone())),
            topic: "dead".into(),
            group: "g-redrive".into(),
            redriving: tokio::sync::Mutex::new(()),
        };
        assert_eq!(dead.redrive(None).await.unwrap().redriven, 2);
        assert_eq!(log.end_offset("dead", 0).unwrap(), 4);
        let listed = dead.list(100, None).await.unwrap();
        assert_eq!(listed.iter().map(|d| d.offset).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(dead.redrive(None).await.unwrap().redriven, 2);
    }
}
