//! The log's single writer thread and its group commit.
//!
//! Every change to the log (appends, topic creation, committed positions, retention) goes
//! through one thread. That gives offsets their order for free: the writer is the only one to
//! hand them out, so they are gap-free and strictly increasing without a lock around the
//! fsync. And it makes durability cheap under concurrency: the writer drains every request
//! waiting in its queue, writes them as one atomic batch and fsyncs once, so a hundred
//! concurrent producers of one record each pay for one fsync, not a hundred.
//!
//! A request is acknowledged only after its batch is on disk; the partitions' end offsets are
//! published (and waiters woken) just before the acknowledgements, so a caller that sees its
//! append return can read it back at once, and a reader never sees a record that could still
//! be lost.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use fjall::PersistMode;
use tokio::sync::oneshot;

use super::codec;
use super::error::{LogError, Result};
use super::{PositionKey, Producer, RecordPosition, Shared, Topic};

/// What the writer waits for before acknowledging: the journal fsync'd, file metadata included.
const DURABLE: PersistMode = PersistMode::SyncAll;
/// Most requests folded into one batch, bounding how long the first of them waits.
const MAX_GROUP: usize = 1024;

/// Records of one append call, encoded by the caller (off the writer thread, so encoding runs
/// in parallel across producers) into one buffer.
pub(crate) struct EncodedBatch {
    /// Every record's encoding, back to back.
    pub(crate) bytes: Vec<u8>,
    /// Per record, in the caller's order: its partition and where its encoding lies in `bytes`.
    pub(crate) records: Vec<(u32, Range<usize>)>,
}

/// A change for the writer to make durable, with where to send the outcome.
pub(crate) enum Request {
    Append {
        topic: Arc<Topic>,
        batch: EncodedBatch,
        reply: oneshot::Sender<Result<Vec<RecordPosition>>>,
    },
    /// An append by a numbering producer: records it appended before are skipped.
    Produce {
        topic: Arc<Topic>,
        batch: EncodedBatch,
        producer: Producer,
        reply: oneshot::Sender<Result<(Vec<RecordPosition>, u64)>>,
    },
    CreateTopic {
        name: String,
        partitions: u32,
        reply: oneshot::Sender<Result<()>>,
    },
    Commit {
        group: String,
        topic: Arc<Topic>,
        partition: u32,
        next_offset: u64,
        reply: oneshot::Sender<Result<i64>>,
    },
    Truncate {
        topic: Arc<Topic>,
        partition: u32,
        start: u64,
        reply: oneshot::Sender<Result<bool>>,
    },
}

/// A request validated and written into the group's batch, answered once the batch is durable.
enum Pending {
    Append(
        oneshot::Sender<Result<Vec<RecordPosition>>>,
        Vec<RecordPosition>,
        Arc<Topic>,
    ),
    Produce(
        oneshot::Sender<Result<(Vec<RecordPosition>, u64)>>,
        Vec<RecordPosition>,
        u64,
        Arc<Topic>,
    ),
    CreateTopic(oneshot::Sender<Result<()>>, String),
    Commit(oneshot::Sender<Result<i64>>, i64, Arc<Topic>),
    Truncate(oneshot::Sender<Result<bool>>, bool, Arc<Topic>),
}

impl Pending {
    fn succeed(self) {
        // A caller that stopped waiting (its task was cancelled) needs no answer; the change
        // is durable either way.
        match self {
            Pending::Append(reply, positions, _) => drop(reply.send(Ok(positions))),
            Pending::Produce(reply, positions, next, _) => drop(reply.send(Ok((positions, next)))),
            Pending::CreateTopic(reply, _) => drop(reply.send(Ok(()))),
            Pending::Commit(reply, offset, _) => drop(reply.send(Ok(offset))),
            Pending::Truncate(reply, raised, _) => drop(reply.send(Ok(raised))),
        }
    }

    /// Answers with the batch's failure, saying which change it was.
    fn fail(self, reason: &str) {
        let error = |action: String| LogError::backend(action, reason);
        match self {
            Pending::Append(reply, _, topic) => {
                drop(reply.send(Err(error(format!("appending to topic `{}`", topic.name)))))
            }
            Pending::Produce(reply, _, _, topic) => {
                drop(reply.send(Err(error(format!("appending to topic `{}`", topic.name)))))
            }
            Pending::CreateTopic(reply, name) => {
                drop(reply.send(Err(error(format!("creating topic `{name}`")))))
            }
            Pending::Commit(reply, _, topic) => drop(reply.send(Err(error(format!(
                "committing a position in topic `{}`",
                topic.name
            ))))),
            Pending::Truncate(reply, _, topic) => {
                drop(reply.send(Err(error(format!("truncating topic `{}`", topic.name)))))
            }
        }
    }
}

/// The running writer thread; dropping it closes the queue and waits for the thread, so the
/// database is released (and can be reopened) when the last [`EventLog`](super::EventLog)
/// clone is gone.
pub(crate) struct Writer {
    /// The writer's queue; `None` only while dropping.
    requests: Option<mpsc::Sender<Request>>,
    /// Joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub(crate) fn start(shared: Arc<Shared>) -> Result<Writer> {
        let (requests, queue) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("cellar-log-writer".to_owned())
            .spawn(move || run(&shared, &queue))
            .map_err(|e| LogError::backend("starting the log writer thread", e))?;
        Ok(Writer {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Hands `request` to the writer and waits for its outcome.
    pub(crate) async fn submit<T>(
        &self,
        action: impl Fn() -> String,
        request: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, outcome) = oneshot::channel();
        let stopped = |action: String| LogError::backend(action, "the log writer has stopped");
        self.requests
            .as_ref()
            .ok_or_else(|| stopped(action()))?
            .send(request(reply))
            .map_err(|_| stopped(action()))?;
        outcome.await.map_err(|_| stopped(action()))?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the embedded log writer thread panicked");
            }
        }
    }
}

fn run(shared: &Shared, queue: &mpsc::Receiver<Request>) {
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        write_group(shared, group);
    }
    tracing::debug!(path = %shared.path.display(), "embedded log writer stopped");
}

/// Validates each request, writes the valid ones as one durable batch, then publishes and
/// acknowledges them; a request that fails validation is answered alone and does not hold
/// back the others.
fn write_group(shared: &Shared, group: Vec<Request>) {
    let mut batch = shared.db.batch().durability(Some(DURABLE));
    let mut pending = Vec::with_capacity(group.len());
    // Topics appended to in this group, whose partitions' tentative `next` may have moved:
    // published once the batch is durable, rolled back if it fails.
    let mut appended: Vec<Arc<Topic>> = Vec::new();
    let mut created: Vec<Arc<Topic>> = Vec::new();
    let mut commits: HashMap<PositionKey, u64> = HashMap::new();
    let mut starts: HashMap<(String, u32), (Arc<Topic>, u64)> = HashMap::new();
    // Producers' next sequences as this batch moves them, published once it is durable.
    let mut sequences: HashMap<(String, String), u64> = HashMap::new();

    for request in group {
        match request {
            Request::Append {
                topic,
                batch: encoded,
                reply,
            } => {
                let partitions = topic.partition_count();
                if let Some((bad, _)) = encoded.records.iter().find(|(p, _)| *p >= partitions) {
                    let _ = reply.send(Err(topic.partition_out_of_range(*bad)));
                    continue;
                }
                let positions =
                    append_records(shared, &mut batch, &mut appended, &topic, &encoded, 0);
                pending.push(Pending::Append(reply, positions, topic));
            }
            Request::Produce {
                topic,
                batch: encoded,
                producer,
                reply,
            } => {
                let partitions = topic.partition_count();
                if let Some((bad, _)) = encoded.records.iter().find(|(p, _)| *p >= partitions) {
                    let _ = reply.send(Err(topic.partition_out_of_range(*bad)));
                    continue;
                }
                let key = (topic.name.clone(), producer.id.clone());
                let expected = sequences.get(&key).copied().unwrap_or_else(|| {
                    shared
                        .sequences
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&key)
                        .copied()
                        .unwrap_or(0)
                });
                let (skip, next) =
                    match producer.window(&key.0, expected, encoded.records.len() as u64) {
                        Ok(window) => window,
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            continue;
                        }
                    };
                let positions = append_records(
                    shared,
                    &mut batch,
                    &mut appended,
                    &topic,
                    &encoded,
                    skip as usize,
                );
                if next != expected {
                    batch.insert(
                        &shared.producers,
                        codec::producer_key(&key.0, &key.1),
                        &next.to_be_bytes()[..],
                    );
                    sequences.insert(key, next);
                }
                pending.push(Pending::Produce(reply, positions, next, topic));
            }
            Request::CreateTopic {
                name,
                partitions,
                reply,
            } => {
                let existing = shared
                    .topic(&name)
                    .or_else(|| created.iter().find(|t| t.name == name).cloned());
                match existing {
                    Some(topic) if topic.partition_count() == partitions => {
                        pending.push(Pending::CreateTopic(reply, name));
                    }
                    Some(topic) => {
                        let _ = reply.send(Err(LogError::PartitionCountMismatch {
                            topic: name,
                            partitions: topic.partition_count(),
                            requested: partitions,
                        }));
                    }
                    None => {
                        batch.insert(
                            &shared.topic_meta,
                            name.as_bytes(),
                            &codec::encode_topic(partitions)[..],
                        );
                        created.push(Arc::new(Topic::new(name.clone(), partitions)));
                        pending.push(Pending::CreateTopic(reply, name));
                    }
                }
            }
            Request::Commit {
                group,
                topic,
                partition,
                next_offset,
                reply,
            } => {
                let Some(state) = topic.partitions.get(partition as usize) else {
                    let _ = reply.send(Err(topic.partition_out_of_range(partition)));
                    continue;
                };
                let end = state.next.load(Ordering::Relaxed);
                if next_offset > end {
                    let _ = reply.send(Err(topic.offset_out_of_range(
                        partition,
                        next_offset as i64,
                        state,
                    )));
                    continue;
                }
                let key: PositionKey = (group, topic.name.clone(), partition);
                let current = commits
                    .get(&key)
                    .copied()
                    .or_else(|| shared.committed_position(&key));
                match current {
                    // Never backwards: a consumer that lost its partition and commits late must
                    // not rewind the group past what its successor has already committed.
                    Some(current) if current >= next_offset => {
                        pending.push(Pending::Commit(reply, current as i64, topic));
                    }
                    _ => {
                        batch.insert(
                            &shared.positions,
                            codec::position_key(&key.0, &key.1, key.2),
                            &next_offset.to_be_bytes()[..],
                        );
                        commits.insert(key, next_offset);
                        pending.push(Pending::Commit(reply, next_offset as i64, topic));
                    }
                }
            }
            Request::Truncate {
                topic,
                partition,
                start,
                reply,
            } => {
                let Some(state) = topic.partitions.get(partition as usize) else {
                    let _ = reply.send(Err(topic.partition_out_of_range(partition)));
                    continue;
                };
                let end = state.next.load(Ordering::Relaxed);
                if start > end {
                    let _ = reply.send(Err(topic.offset_out_of_range(
                        partition,
                        start as i64,
                        state,
                    )));
                    continue;
                }
                let slot = (topic.name.clone(), partition);
                let current = starts
                    .get(&slot)
                    .map(|(_, s)| *s)
                    .unwrap_or_else(|| state.start.load(Ordering::Acquire));
                if start <= current {
                    pending.push(Pending::Truncate(reply, false, topic));
                    continue;
                }
                batch.insert(
                    &shared.starts,
                    state.prefix.as_slice(),
                    &start.to_be_bytes()[..],
                );
                starts.insert(slot, (Arc::clone(&topic), start));
                pending.push(Pending::Truncate(reply, true, topic));
            }
        }
    }

    let outcome = if batch.is_empty() {
        Ok(())
    } else {
        batch.commit()
    };
    match outcome {
        Ok(()) => {
            if !created.is_empty() {
                let mut topics = shared.write_topics();
                for topic in created {
                    tracing::debug!(topic = %topic.name, partitions = topic.partition_count(), "created log topic");
                    topics.insert(topic.name.clone(), topic);
                }
            }
            if !commits.is_empty() {
                shared.write_committed().extend(commits);
            }
            if !sequences.is_empty() {
                shared
                    .sequences
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(sequences);
            }
            for ((_, partition), (topic, start)) in starts {
                if let Some(state) = topic.partitions.get(partition as usize) {
                    state.start.store(start, Ordering::Release);
                }
            }
            for topic in &appended {
                for state in topic.partitions.iter() {
                    let next = state.next.load(Ordering::Relaxed);
                    // Only partitions that moved wake their waiters.
                    state.end.send_if_modified(|end| {
                        let moved = *end != next;
                        *end = next;
                        moved
                    });
                }
            }
            for done in pending {
                done.succeed();
            }
        }
        Err(e) => {
            tracing::error!(path = %shared.path.display(), error = %e, "embedded log write failed");
            for topic in &appended {
                for state in topic.partitions.iter() {
                    state.next.store(*state.end.borrow(), Ordering::Relaxed);
                }
            }
            let reason = e.to_string();
            for done in pending {
                done.fail(&reason);
            }
        }
    }
}

/// Writes the records of `encoded` after the first `skip` into `batch`, at the tentative ends
/// of their partitions, and returns where each went. The caller checked the partitions.
fn append_records(
    shared: &Shared,
    batch: &mut fjall::OwnedWriteBatch,
    appended: &mut Vec<Arc<Topic>>,
    topic: &Arc<Topic>,
    encoded: &EncodedBatch,
    skip: usize,
) -> Vec<RecordPosition> {
    if !appended.iter().any(|t| Arc::ptr_eq(t, topic)) {
        appended.push(Arc::clone(topic));
    }
    let mut positions = Vec::with_capacity(encoded.records.len().saturating_sub(skip));
    let mut key = Vec::new();
    for (partition, range) in encoded.records.iter().skip(skip) {
        let Some(state) = topic.partitions.get(*partition as usize) else {
            continue;
        };
        let offset = state.next.load(Ordering::Relaxed);
        state.next.store(offset + 1, Ordering::Relaxed);
        codec::write_record_key(&mut key, &state.prefix, offset);
        let value = encoded.bytes.get(range.clone()).unwrap_or_default();
        batch.insert(&shared.records, key.as_slice(), value);
        positions.push(RecordPosition {
            partition: *partition,
            offset: offset as i64,
        });
    }
    positions
}
