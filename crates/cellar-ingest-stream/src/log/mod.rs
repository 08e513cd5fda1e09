//! The embedded durable log: what Cellar reads events from when there is no Kafka.
//!
//! Events are appended to topics split into a fixed number of partitions; each record gets
//! the next offset of its partition (from 0, gap-free), and the parallel consumer reads a
//! partition from an offset and commits its position per consumer group, as it would with a
//! Kafka topic. Everything lives in one fjall database in a local directory:
//!
//! ```text
//! records:    <topic> 0x00 <partition u32 BE> <offset u64 BE>  -> encoded record (see codec)
//! topics:     <topic>                                          -> version, partition count
//! starts:     <topic> 0x00 <partition u32 BE>                  -> first kept offset, u64 BE
//! positions:  <group> 0x00 <topic> 0x00 <partition u32 BE>     -> committed offset, u64 BE
//! producers:  <topic> 0x00 <producer id>                       -> next sequence, u64 BE
//! ```
//!
//! Guarantees, and how they are kept:
//!
//! - **Durable when acknowledged.** `append`, `commit`, `create_topic` and `truncate_before`
//!   return only after their change is fsync'd. All of them go through one writer thread
//!   (see `writer`), which batches whatever is queued into one write and one fsync, so
//!   concurrent producers share the cost of durability.
//! - **Offsets gap-free and in order.** Only the writer hands out offsets. A partition's end
//!   offset is published after the records below it are durable, and readers never look past
//!   it, so a record that is read can never disappear in a crash.
//! - **Appending the same events twice appends them once**, for a producer that numbers
//!   them ([`Producer`]): the next sequence expected of each producer is written in the same
//!   atomic batch as the records, so a retry after a crash or a lost answer skips exactly
//!   what was appended.
//! - **Restart sees everything.** Opening the directory rebuilds each partition's end offset
//!   from its last key, its start from `starts`, and every committed position.
//!
//! Reads run on the calling thread: a range scan of a few hundred records is microseconds of
//! CPU and page cache, cheaper than a hop to a blocking pool.

mod codec;
mod error;
mod partitioner;
pub mod source;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use tokio::sync::watch;

pub use error::{LogError, Result};

use writer::{EncodedBatch, Request, Writer};

/// The largest record the log accepts, in encoded bytes (payload, key, headers and a few
/// bytes of framing): big enough for any event, small enough that one record cannot stall
/// the writer or a reader's batch.
pub const MAX_RECORD_BYTES: usize = 8 << 20;
/// The most partitions a topic may have; partitions cost memory and a seek each when the log
/// is opened, and Cellar's parallelism comes from within a partition, not from their number.
pub const MAX_PARTITIONS: u32 = 10_000;
/// The longest topic or consumer group name, in bytes (Kafka's own limit for topic names).
pub const MAX_NAME_BYTES: usize = cellar_spec::parse::MAX_TOPIC_LEN;
/// Records removed per batch when truncating, bounding the memory of one deletion.
const TRUNCATE_CHUNK: usize = 10_000;
/// Records read ahead of need are not worth allocating for when a caller asks for "all".
const READ_CAPACITY_HINT: usize = 1024;
/// Journal bytes kept before fjall flushes the keyspaces still holding the oldest journal,
/// fjall's minimum. A journal is deleted only once every keyspace has flushed what it holds,
/// and the small keyspaces (positions, starts, producers) never fill a memtable of their own,
/// so at fjall's default of 512 MiB the journals, not the records retention keeps, would
/// set the log's size on disk.
const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// One record to append: what a producer sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRecord {
    /// Chooses the partition (the same key always lands on the same partition) and orders
    /// the consumer's work per key; `None` spreads records round-robin.
    pub key: Option<Bytes>,
    /// The event itself.
    pub payload: Bytes,
    /// Metadata carried beside the payload (retry attempt counts, failure reasons, ...).
    pub headers: Vec<(String, Bytes)>,
    /// When the producer created the record, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// One record as read back, with its offset in its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its position in the partition.
    pub offset: i64,
    /// As appended.
    pub key: Option<Bytes>,
    /// As appended.
    pub payload: Bytes,
    /// As appended, in order.
    pub headers: Vec<(String, Bytes)>,
    /// As appended.
    pub timestamp_ms: i64,
}

/// A producer that numbers its records, so that appending them again (a retried request, a
/// re-run import) appends each once: records are numbered from `first_sequence` in the order
/// given, and those below the producer's next expected sequence are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// Stable across retries and restarts of the producer; at most [`MAX_NAME_BYTES`] bytes.
    pub id: String,
    /// The sequence number of the first record of the call.
    pub first_sequence: u64,
}

impl Producer {
    /// For a call of `count` records when `expected` is the producer's next sequence: how many
    /// leading records were appended before (and are skipped), and the next sequence after
    /// the call. A call starting past `expected` would leave a hole and is refused.
    pub fn window(&self, topic: &str, expected: u64, count: u64) -> Result<(u64, u64)> {
        if self.first_sequence > expected {
            return Err(LogError::SequenceGap {
                topic: topic.to_owned(),
                producer: self.id.clone(),
                expected,
                got: self.first_sequence,
            });
        }
        let skip = (expected - self.first_sequence).min(count);
        Ok((
            skip,
            expected.max(self.first_sequence.saturating_add(count)),
        ))
    }
}

/// What an append by a [`Producer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducedRecords {
    /// Where each record appended now went, in order; the skipped ones are not listed.
    pub positions: Vec<RecordPosition>,
    /// Records skipped because the producer had appended them before.
    pub duplicates: usize,
    /// The producer's next expected sequence after this call.
    pub next_sequence: u64,
}

/// Where an appended record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordPosition {
    /// Its partition.
    pub partition: u32,
    /// Its offset in that partition.
    pub offset: i64,
}

/// The embedded durable log, open on a local directory. Cloning is cheap (clones share the
/// open database and its writer); the database is released when the last clone is dropped.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    /// Read by every call; shared with the writer thread.
    shared: Arc<Shared>,
    /// The only path by which anything is written.
    writer: Writer,
}

/// A committed position's identity: consumer group, topic, partition.
type PositionKey = (String, String, u32);

/// State shared by readers and the writer thread.
pub(crate) struct Shared {
    /// Where the database lives, for log lines and errors.
    path: PathBuf,
    /// The engine; its journal fsync is what makes a write durable.
    db: Database,
    /// The records of every partition, keyed `<topic>\0<partition><offset>`.
    records: Keyspace,
    /// Each topic's partition count, keyed by name.
    topic_meta: Keyspace,
    /// Each truncated partition's first kept offset, keyed `<topic>\0<partition>`.
    starts: Keyspace,
    /// Committed positions, keyed `<group>\0<topic>\0<partition>`.
    positions: Keyspace,
    /// Each producer's next expected sequence, keyed `<topic>\0<producer id>`.
    producers: Keyspace,
    /// Every producer's next expected sequence; only the writer reads and changes it.
    sequences: std::sync::Mutex<HashMap<(String, String), u64>>,
    /// Every topic, looked up on each call; only the writer inserts.
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Every committed position, so `committed` needs no disk read; only the writer changes it,
    /// after the change is durable.
    committed: RwLock<HashMap<PositionKey, u64>>,
}

/// A topic and the live state of its partitions.
pub(crate) struct Topic {
    name: String,
    partitions: Box<[Partition]>,
    /// The partition of the next record without a key.
    next_unkeyed: AtomicU32,
}

/// The live state of one partition.
struct Partition {
    /// `<topic>\0<partition>`: the prefix of its record keys, built once.
    prefix: Vec<u8>,
    /// The next offset to be written, as published: every record below it is durable. Readers
    /// stop here, and `wait_for` watches it.
    end: watch::Sender<u64>,
    /// The first offset still held; only `truncate_before` raises it.
    start: AtomicU64,
    /// The writer's tentative end while a batch is being written, ahead of `end` until the
    /// batch is durable; only the writer thread touches it.
    next: AtomicU64,
}

impl Topic {
    fn new(name: String, partitions: u32) -> Topic {
        let partitions = (0..partitions)
            .map(|p| Partition {
                prefix: codec::partition_prefix(&name, p),
                end: watch::Sender::new(0),
                start: AtomicU64::new(0),
                next: AtomicU64::new(0),
            })
            .collect();
        Topic {
            name,
            partitions,
            next_unkeyed: AtomicU32::new(0),
        }
    }

    fn partition_count(&self) -> u32 {
        // At most MAX_PARTITIONS, checked on creation and on load.
        self.partitions.len() as u32
    }

    fn partition(&self, partition: u32) -> Result<&Partition> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| self.partition_out_of_range(partition))
    }

    fn partition_out_of_range(&self, partition: u32) -> LogError {
        LogError::PartitionOutOfRange {
            topic: self.name.clone(),
            partition,
            partitions: self.partition_count(),
        }
    }

    fn offset_out_of_range(&self, partition: u32, offset: i64, state: &Partition) -> LogError {
        LogError::OffsetOutOfRange {
            topic: self.name.clone(),
            partition,
            offset,
            start: state.start_offset(),
            end: state.end_offset(),
        }
    }

    fn corrupt(&self, partition: u32, offset: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt {
            topic: self.name.clone(),
            partition,
            offset: offset as i64,
            reason: reason.into(),
        }
    }
}

impl Partition {
    fn end_offset(&self) -> i64 {
        *self.end.borrow() as i64
    }

    fn start_offset(&self) -> i64 {
        self.start.load(Ordering::Acquire) as i64
    }
}

impl Shared {
    fn read_topics(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<Topic>>> {
        // Only the writer mutates the map, by single inserts that cannot leave it half-done,
        // so a poisoned lock still guards a consistent map.
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_topics(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<Topic>>> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }

    fn write_committed(&self) -> RwLockWriteGuard<'_, HashMap<PositionKey, u64>> {
        self.committed.write().unwrap_or_else(|p| p.into_inner())
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.read_topics().get(name).cloned()
    }

    fn committed_position(&self, key: &PositionKey) -> Option<u64> {
        self.committed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
    }

    /// Removes the records of a partition below `start`, in chunks. Not fsync'd: a deletion
    /// lost in a crash leaves records below the start offset, which nobody can read and the
    /// next open removes.
    fn delete_below(&self, topic: &Topic, partition: u32, start: u64) -> Result<u64> {
        let Some(state) = topic.partitions.get(partition as usize) else {
            return Ok(0);
        };
        let action = || format!("removing truncated records of topic `{}`", topic.name);
        let end_key = codec::record_key(&state.prefix, start);
        let mut from = state.prefix.clone();
        let mut removed = 0u64;
        loop {
            let mut keys = Vec::with_capacity(TRUNCATE_CHUNK);
            for guard in self.records.range(from.as_slice()..end_key.as_slice()) {
                let (key, _) = guard
                    .into_inner()
                    .map_err(|e| LogError::backend(action(), e))?;
                keys.push(key);
                if keys.len() == TRUNCATE_CHUNK {
                    break;
                }
            }
            let Some(last) = keys.last() else {
                return Ok(removed);
            };
            // Resume after the last removed key, so later chunks do not walk the tombstones
            // this one leaves behind.
            from = last.to_vec();
            from.push(0);
            let full = keys.len() == TRUNCATE_CHUNK;
            removed += keys.len() as u64;
            let mut batch = self.db.batch();
            for key in keys {
                batch.remove(&self.records, key);
            }
            batch.commit().map_err(|e| LogError::backend(action(), e))?;
            if !full {
                return Ok(removed);
            }
        }
    }
}

impl fmt::Debug for EventLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLog")
            .field("path", &self.inner.shared.path)
            .finish_non_exhaustive()
    }
}

impl EventLog {
    /// Opens the log in directory `path`, creating it if needed. Every record, topic,
    /// truncation and committed position acknowledged before the last close or crash is there.
    pub fn open(path: impl AsRef<Path>) -> Result<EventLog> {
        let path = path.as_ref().to_path_buf();
        let action = || format!("opening the embedded log at {}", path.display());
        let db = Database::builder(&path)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .open()
            .map_err(|e| LogError::backend(action(), e))?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| LogError::backend(action(), e))
        };
        let shared = Shared {
            records: keyspace("records")?,
            topic_meta: keyspace("topics")?,
            starts: keyspace("starts")?,
            positions: keyspace("positions")?,
            producers: keyspace("producers")?,
            sequences: std::sync::Mutex::new(HashMap::new()),
            db,
            path: path.clone(),
            topics: RwLock::new(HashMap::new()),
            committed: RwLock::new(HashMap::new()),
        };
        let topics = load_topics(&shared)?;
        let committed = load_positions(&shared)?;
        *shared.sequences.lock().unwrap_or_else(|p| p.into_inner()) = load_sequences(&shared)?;
        let partitions: usize = topics.values().map(|t| t.partitions.len()).sum();
        tracing::info!(
            path = %path.display(),
            topics = topics.len(),
            partitions,
            positions = committed.len(),
            "opened the embedded log"
        );
        *shared.write_topics() = topics;
        *shared.write_committed() = committed;
        let shared = Arc::new(shared);
        let writer = Writer::start(Arc::clone(&shared))?;
        Ok(EventLog {
            inner: Arc::new(Inner { shared, writer }),
        })
    }

    /// The directory the log lives in.
    pub fn path(&self) -> &Path {
        &self.inner.shared.path
    }

    /// Creates `topic` with `partitions` partitions, durably. Creating an existing topic with
    /// the same count does nothing; with another count it is an error, since keys are
    /// hashed onto the count and changing it would break per-key order.
    pub async fn create_topic(&self, topic: &str, partitions: u32) -> Result<()> {
        check_name("topic name", topic)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(LogError::InvalidInput {
                what: format!("partition count for topic `{topic}`"),
                reason: format!("{partitions} is not between 1 and {MAX_PARTITIONS}"),
            });
        }
        if let Some(existing) = self.inner.shared.topic(topic) {
            return if existing.partition_count() == partitions {
                Ok(())
            } else {
                Err(LogError::PartitionCountMismatch {
                    topic: topic.to_owned(),
                    partitions: existing.partition_count(),
                    requested: partitions,
                })
            };
        }
        self.inner
            .writer
            .submit(
                || format!("creating topic `{topic}`"),
                |reply| Request::CreateTopic {
                    name: topic.to_owned(),
                    partitions,
                    reply,
                },
            )
            .await
    }

    /// Every topic's name, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.shared.read_topics().keys().cloned().collect();
        names.sort();
        names
    }

    /// The number of partitions of `topic`.
    pub fn partitions(&self, topic: &str) -> Result<u32> {
        Ok(self.topic(topic)?.partition_count())
    }

    /// Appends `records` to `topic`, durably: when this returns, every record is on disk and
    /// readable. Returns where each record went, in the order given.
    ///
    /// A record with a key goes to the partition Kafka's default partitioner would choose
    /// (murmur2 of the key), so one key always lands on one partition; records without a key
    /// go round-robin over the partitions, one record at a time. The whole call is one
    /// atomic write: all records are appended or none. An empty `records` appends nothing
    /// and returns an empty list (the topic must still exist).
    pub async fn append(&self, topic: &str, records: &[LogRecord]) -> Result<Vec<RecordPosition>> {
        let topic = self.topic(topic)?;
        let batch = encode_routed(&topic, records)?;
        self.submit_append(topic, batch).await
    }

    /// [`append`](EventLog::append) for a producer that numbers its records: the records it
    /// appended before (sequence below its next expected one) are skipped, the rest appended,
    /// and the producer's next sequence moved past them, all in one atomic write. A call whose
    /// first sequence is past the next expected one (records would be missing in between) is
    /// refused with [`LogError::SequenceGap`].
    pub async fn append_produced(
        &self,
        topic: &str,
        producer: &Producer,
        records: &[LogRecord],
    ) -> Result<ProducedRecords> {
        check_name("producer id", &producer.id)?;
        let topic = self.topic(topic)?;
        let batch = encode_routed(&topic, records)?;
        let name = topic.name.clone();
        let producer = producer.clone();
        let count = records.len();
        let (positions, next_sequence) = self
            .inner
            .writer
            .submit(
                || format!("appending to topic `{name}`"),
                |reply| Request::Produce {
                    topic,
                    batch,
                    producer,
                    reply,
                },
            )
            .await?;
        Ok(ProducedRecords {
            duplicates: count - positions.len(),
            positions,
            next_sequence,
        })
    }

    /// The next sequence `producer_id` is expected to send to `topic`: 0 for one never seen.
    pub fn next_sequence(&self, topic: &str, producer_id: &str) -> u64 {
        self.inner
            .shared
            .sequences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(topic.to_owned(), producer_id.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Appends `records` to one chosen partition of `topic`, durably and atomically, whatever
    /// their keys. Returns their offsets, consecutive, in the order given.
    pub async fn append_to(
        &self,
        topic: &str,
        partition: u32,
        records: &[LogRecord],
    ) -> Result<Vec<i64>> {
        let topic = self.topic(topic)?;
        topic.partition(partition)?;
        let batch = encode(&topic, records, |_| partition)?;
        let positions = self.submit_append(topic, batch).await?;
        Ok(positions.into_iter().map(|p| p.offset).collect())
    }

    async fn submit_append(
        &self,
        topic: Arc<Topic>,
        batch: EncodedBatch,
    ) -> Result<Vec<RecordPosition>> {
        if batch.records.is_empty() {
            return Ok(Vec::new());
        }
        let name = topic.name.clone();
        self.inner
            .writer
            .submit(
                || format!("appending to topic `{name}`"),
                |reply| Request::Append {
                    topic,
                    batch,
                    reply,
                },
            )
            .await
    }

    /// Reads up to `max_records` records of a partition, in offset order, starting at
    /// `from_offset`.
    ///
    /// Reading at the end offset returns an empty list (nothing new yet; see [`wait_for`]).
    /// An offset below the partition's start (truncated away), beyond its end, or negative is
    /// an [`LogError::OffsetOutOfRange`] naming the range the partition holds, so a consumer
    /// can decide where to resume rather than silently skip records.
    ///
    /// [`wait_for`]: EventLog::wait_for
    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        from_offset: i64,
        max_records: usize,
    ) -> Result<Vec<LogEntry>> {
        let topic = self.topic(topic)?;
        let state = topic.partition(partition)?;
        let end = state.end_offset();
        if from_offset < state.start_offset() || from_offset > end {
            return Err(topic.offset_out_of_range(partition, from_offset, state));
        }
        // Both bounds are now within 0..=end.
        let from = from_offset as u64;
        let to = from.saturating_add(max_records as u64).min(end as u64);
        if to == from {
            return Ok(Vec::new());
        }
        let wanted = (to - from) as usize;
        let mut entries = Vec::with_capacity(wanted.min(READ_CAPACITY_HINT));
        let from_key = codec::record_key(&state.prefix, from);
        let to_key = codec::record_key(&state.prefix, to);
        let action = || format!("reading partition {partition} of topic `{}`", topic.name);
        for guard in self.inner.shared.records.range(from_key..to_key) {
            let expected = from + entries.len() as u64;
            let (key, value) = guard
                .into_inner()
                .map_err(|e| LogError::backend(action(), e))?;
            let offset = codec::key_offset(&key, state.prefix.len())
                .ok_or_else(|| topic.corrupt(partition, expected, "malformed record key"))?;
            if offset != expected {
                return Err(self.missing(&topic, partition, from_offset, expected));
            }
            let record = codec::decode_record(&value)
                .map_err(|reason| topic.corrupt(partition, offset, reason))?;
            entries.push(LogEntry {
                offset: offset as i64,
                key: record.key,
                payload: record.payload,
                headers: record.headers,
                timestamp_ms: record.timestamp_ms,
            });
        }
        if entries.len() < wanted {
            let expected = from + entries.len() as u64;
            return Err(self.missing(&topic, partition, from_offset, expected));
        }
        Ok(entries)
    }

    /// The error for a hole in a read: a truncation that ran since the read checked the start
    /// offset, or else damage.
    fn missing(&self, topic: &Topic, partition: u32, from: i64, expected: u64) -> LogError {
        match topic.partitions.get(partition as usize) {
            Some(state) if state.start_offset() > from => {
                topic.offset_out_of_range(partition, from, state)
            }
            _ => topic.corrupt(partition, expected, "record missing below the end offset"),
        }
    }

    /// The next offset to be written to a partition: every record below it is durable.
    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<i64> {
        Ok(self.topic(topic)?.partition(partition)?.end_offset())
    }

    /// The first offset a partition still holds: 0 until [`truncate_before`] removes records.
    ///
    /// [`truncate_before`]: EventLog::truncate_before
    pub fn start_offset(&self, topic: &str, partition: u32) -> Result<i64> {
        Ok(self.topic(topic)?.partition(partition)?.start_offset())
    }

    /// Waits until the partition holds a record at `offset` (its end offset is past it) or
    /// `timeout` passes, without polling. Returns whether the record is there; reading it is
    /// then a [`read`](EventLog::read) away.
    pub async fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        timeout: Duration,
    ) -> Result<bool> {
        let topic = self.topic(topic)?;
        let state = topic.partition(partition)?;
        if offset < 0 {
            return Err(topic.offset_out_of_range(partition, offset, state));
        }
        let mut end = state.end.subscribe();
        let arrived = tokio::time::timeout(timeout, end.wait_for(|&end| end > offset as u64))
            .await
            .map(|outcome| outcome.map(|_| ()));
        match arrived {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(_)) => Err(LogError::backend(
                format!("waiting on partition {partition} of topic `{}`", topic.name),
                "the log was closed",
            )),
            Err(_elapsed) => Ok(false),
        }
    }

    /// Records, durably, that consumer group `group` has processed a partition up to (not
    /// including) `next_offset`; returns the group's committed position afterwards.
    ///
    /// Positions never move backwards: a commit at or below the current position changes
    /// nothing and returns the current one (a consumer that lost its partition in a
    /// rebalance and commits late must not rewind its successor). Committing beyond the
    /// partition's end offset is an [`LogError::OffsetOutOfRange`].
    pub async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next_offset: i64,
    ) -> Result<i64> {
        check_name("consumer group name", group)?;
        let topic = self.topic(topic)?;
        let state = topic.partition(partition)?;
        if next_offset < 0 || next_offset > state.end_offset() {
            return Err(topic.offset_out_of_range(partition, next_offset, state));
        }
        let name = topic.name.clone();
        self.inner
            .writer
            .submit(
                || format!("committing a position of group `{group}` in topic `{name}`"),
                |reply| Request::Commit {
                    group: group.to_owned(),
                    topic,
                    partition,
                    next_offset: next_offset as u64,
                    reply,
                },
            )
            .await
    }

    /// The position consumer group `group` last committed for a partition: the next offset
    /// it will process. `None` if it never committed one.
    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Result<Option<i64>> {
        let topic = self.topic(topic)?;
        topic.partition(partition)?;
        let key = (group.to_owned(), topic.name.clone(), partition);
        Ok(self
            .inner
            .shared
            .committed_position(&key)
            .map(|offset| offset as i64))
    }

    /// Removes, from every topic but those in `keep_all`, the records that no consumer group
    /// still needs and that are older than `keep` (by their append timestamp, against
    /// `now_ms`). The groups of a topic are those in `consumers` (`(group, topic)` pairs: the
    /// groups that will read it, committed or not) and those that committed any partition of
    /// it; each needs, in each partition, what is at or past its position there (everything,
    /// where it has none yet). A topic no group reads keeps only its records younger than
    /// `keep`. Returns the number of records removed.
    pub async fn enforce_retention(
        &self,
        keep: Duration,
        now_ms: i64,
        consumers: &[(String, String)],
        keep_all: &[String],
    ) -> Result<u64> {
        let cutoff = now_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        let topics: Vec<Arc<Topic>> = self.inner.shared.read_topics().values().cloned().collect();
        let committed: HashMap<PositionKey, u64> = self
            .inner
            .shared
            .committed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut removed = 0;
        for topic in topics {
            if keep_all.contains(&topic.name) {
                continue;
            }
            let mut groups: Vec<&str> = committed
                .keys()
                .filter(|(_, t, _)| *t == topic.name)
                .map(|(g, _, _)| g.as_str())
                .chain(
                    consumers
                        .iter()
                        .filter(|(_, t)| *t == topic.name)
                        .map(|(g, _)| g.as_str()),
                )
                .collect();
            groups.sort_unstable();
            groups.dedup();
            for (partition, state) in topic.partitions.iter().enumerate() {
                let partition = partition as u32;
                let start = state.start.load(Ordering::Acquire);
                let needed = groups
                    .iter()
                    .map(|g| {
                        let key = ((*g).to_owned(), topic.name.clone(), partition);
                        committed.get(&key).copied().unwrap_or(start)
                    })
                    .min()
                    .unwrap_or(*state.end.borrow());
                let mut cut = start;
                'scan: while cut < needed {
                    let entries = self.read(&topic.name, partition, cut as i64, 1000)?;
                    if entries.is_empty() {
                        break;
                    }
                    for entry in entries {
                        if entry.offset as u64 >= needed || entry.timestamp_ms > cutoff {
                            break 'scan;
                        }
                        cut = entry.offset as u64 + 1;
                    }
                }
                if cut > start {
                    removed += self
                        .truncate_before(&topic.name, partition, cut as i64)
                        .await?;
                }
            }
        }
        Ok(removed)
    }

    /// Removes the records of a partition below `offset`, which becomes its start offset.
    /// Reads below it then fail with [`LogError::OffsetOutOfRange`]; committed positions are
    /// left as they are. Truncating at or below the current start does nothing; beyond the
    /// end offset is an error. Returns the number of records removed.
    ///
    /// The new start is durable when this returns; the records themselves are removed in
    /// chunks after that, without holding up appends.
    pub async fn truncate_before(&self, topic: &str, partition: u32, offset: i64) -> Result<u64> {
        let topic = self.topic(topic)?;
        let state = topic.partition(partition)?;
        if offset < 0 || offset > state.end_offset() {
            return Err(topic.offset_out_of_range(partition, offset, state));
        }
        let name = topic.name.clone();
        let raised = self
            .inner
            .writer
            .submit(
                || format!("truncating partition {partition} of topic `{name}`"),
                |reply| Request::Truncate {
                    topic: Arc::clone(&topic),
                    partition,
                    start: offset as u64,
                    reply,
                },
            )
            .await?;
        if !raised {
            return Ok(0);
        }
        let shared = Arc::clone(&self.inner.shared);
        let removed = tokio::task::spawn_blocking(move || {
            shared.delete_below(&topic, partition, offset as u64)
        })
        .await
        .map_err(|e| LogError::backend(format!("truncating topic `{name}`"), e))??;
        tracing::debug!(topic = %name, partition, start = offset, removed, "truncated log partition");
        Ok(removed)
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.inner
            .shared
            .topic(name)
            .ok_or_else(|| LogError::UnknownTopic {
                topic: name.to_owned(),
            })
    }
}

/// Encodes `records` into one buffer, each with the partition `route` picks, refusing any
/// record over [`MAX_RECORD_BYTES`] before anything is written.
/// [`encode`] with each record on the partition its key chooses (round-robin without one).
fn encode_routed(topic: &Topic, records: &[LogRecord]) -> Result<EncodedBatch> {
    let partitions = topic.partition_count();
    encode(topic, records, |record| match &record.key {
        Some(key) => partitioner::partition_for_key(key, partitions),
        None => topic.next_unkeyed.fetch_add(1, Ordering::Relaxed) % partitions,
    })
}

fn encode(
    topic: &Topic,
    records: &[LogRecord],
    mut route: impl FnMut(&LogRecord) -> u32,
) -> Result<EncodedBatch> {
    let mut total = 0;
    for record in records {
        let size = codec::encoded_len(record);
        if size > MAX_RECORD_BYTES {
            return Err(LogError::RecordTooLarge {
                topic: topic.name.clone(),
                size,
                limit: MAX_RECORD_BYTES,
            });
        }
        total += size;
    }
    let mut bytes = Vec::with_capacity(total);
    let mut positions = Vec::with_capacity(records.len());
    for record in records {
        let begin = bytes.len();
        codec::encode_record(&mut bytes, record);
        positions.push((route(record), begin..bytes.len()));
    }
    Ok(EncodedBatch {
        bytes,
        records: positions,
    })
}

/// Refuses names the key layout cannot hold.
fn check_name(what: &str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > MAX_NAME_BYTES {
        format!(
            "it is {} bytes, over the limit of {MAX_NAME_BYTES}",
            name.len()
        )
    } else if name.as_bytes().contains(&codec::SEPARATOR) {
        "it contains a NUL byte, which separates names in the log's keys".to_owned()
    } else {
        return Ok(());
    };
    let shown: String = name.chars().take(64).collect();
    Err(LogError::InvalidInput {
        what: format!("{what} `{}`", shown.escape_debug()),
        reason,
    })
}

/// Every topic on disk with each partition's start and end offsets, removing records a
/// crashed truncation left below a start offset.
fn load_topics(shared: &Shared) -> Result<HashMap<String, Arc<Topic>>> {
    let action = || {
        format!(
            "loading topics of the embedded log at {}",
            shared.path.display()
        )
    };
    let mut topics = HashMap::new();
    for guard in shared.topic_meta.iter() {
        let (key, value) = guard
            .into_inner()
            .map_err(|e| LogError::backend(action(), e))?;
        let name = std::str::from_utf8(&key)
            .map_err(|_| LogError::CorruptMetadata {
                what: format!("topic entry {:?}", String::from_utf8_lossy(&key)),
                reason: "the name is not UTF-8".to_owned(),
            })?
            .to_owned();
        let partitions = codec::decode_topic(&value)
            .and_then(|count| match count {
                1..=MAX_PARTITIONS => Ok(count),
                _ => Err(format!("partition count {count} is out of range")),
            })
            .map_err(|reason| LogError::CorruptMetadata {
                what: format!("topic `{name}`"),
                reason,
            })?;
        let topic = Topic::new(name.clone(), partitions);
        for (index, state) in topic.partitions.iter().enumerate() {
            let partition = index as u32;
            let start = match shared
                .starts
                .get(&state.prefix)
                .map_err(|e| LogError::backend(action(), e))?
            {
                Some(raw) => codec::decode_u64(&raw).ok_or_else(|| LogError::CorruptMetadata {
                    what: format!("start offset of partition {partition} of topic `{name}`"),
                    reason: format!("expected 8 bytes, found {}", raw.len()),
                })?,
                None => 0,
            };
            let mut scan = shared.records.prefix(&state.prefix);
            let offset_of = |guard: fjall::Guard| -> Result<u64> {
                let key = guard.key().map_err(|e| LogError::backend(action(), e))?;
                codec::key_offset(&key, state.prefix.len())
                    .ok_or_else(|| topic.corrupt(partition, 0, "malformed record key"))
            };
            let first = scan.next().map(offset_of).transpose()?;
            let last = scan.next_back().map(offset_of).transpose()?;
            let end = last.or(first).map_or(start, |last| (last + 1).max(start));
            if first.is_some_and(|first| first < start) {
                let removed = shared.delete_below(&topic, partition, start)?;
                tracing::info!(topic = %name, partition, start, removed, "removed records left by an interrupted truncation");
            }
            state.start.store(start, Ordering::Release);
            state.next.store(end, Ordering::Relaxed);
            state.end.send_replace(end);
        }
        topics.insert(name, Arc::new(topic));
    }
    Ok(topics)
}

/// Every producer's next sequence on disk.
fn load_sequences(shared: &Shared) -> Result<HashMap<(String, String), u64>> {
    let mut sequences = HashMap::new();
    for guard in shared.producers.iter() {
        let (key, value) = guard.into_inner().map_err(|e| {
            LogError::backend(
                format!("loading producer sequences at {}", shared.path.display()),
                e,
            )
        })?;
        let what = || format!("producer sequence {:?}", String::from_utf8_lossy(&key));
        let parsed = codec::parse_producer_key(&key).ok_or_else(|| LogError::CorruptMetadata {
            what: what(),
            reason: "malformed key".to_owned(),
        })?;
        let next = codec::decode_u64(&value).ok_or_else(|| LogError::CorruptMetadata {
            what: what(),
            reason: format!("expected 8 bytes, found {}", value.len()),
        })?;
        sequences.insert(parsed, next);
    }
    Ok(sequences)
}

/// Every committed position on disk.
fn load_positions(shared: &Shared) -> Result<HashMap<PositionKey, u64>> {
    let mut positions = HashMap::new();
    for guard in shared.positions.iter() {
        let (key, value) = guard.into_inner().map_err(|e| {
            LogError::backend(
                format!("loading committed positions at {}", shared.path.display()),
                e,
            )
        })?;
        let what = || format!("committed position {:?}", String::from_utf8_lossy(&key));
        let position =
            codec::parse_position_key(&key).ok_or_else(|| LogError::CorruptMetadata {
                what: what(),
                reason: "malformed key".to_owned(),
            })?;
        let offset = codec::decode_u64(&value).ok_or_else(|| LogError::CorruptMetadata {
            what: what(),
            reason: format!("expected 8 bytes, found {}", value.len()),
        })?;
        positions.insert(position, offset);
    }
    Ok(positions)
}
