//! The batching writer: records from many concurrently processed events are gathered into one
//! store write per group (one durable commit), and each event learns its own outcome.
//!
//! Ingestion applies events in parallel, and a durable commit per event would cap throughput
//! at the disk's sync rate; gathering the changes of all in-flight events into one batch pays
//! that cost once per batch. Time-series records are appended with one put. Attribute records
//! are read, changed and written back in one atomic store update: every change of one entity in
//! the batch is applied to the stored record in arrival order, which keeps windowed aggregates
//! exact, lets an ingestion set only some of a group's features, and records the offsets
//! applied, so a redelivered event changes nothing.
//!
//! One bad record never fails its neighbours: a batch the store refuses for its input is split
//! and written again until the record at fault fails alone (see [`put_isolating`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellar_cache::{Kept, WritePath};
use cellar_spec::{EntityKey, FeatureGroup};
use cellar_store::{PutOutcome, Record, Updater, Write};
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use crate::aggregate::{self, Effect, Update};

/// Why a write failed: the store's error, shared by every record of the failed (part of the)
/// batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store write failed: {message}")]
pub struct WriteError {
    pub message: String,
    /// Whether trying again later may succeed (a backend failure) or not (a record the store
    /// refuses, such as an oversized one).
    pub retryable: bool,
}

/// What one event does to one entity's record of one group.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Insert a record into a time series (at its event time).
    Put(Record),
    /// Change an attribute record.
    Update(Update),
}

/// What a change did, and, when asked for, the entity's record as stored after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub effect: Effect,
    pub record: Option<Record>,
}

type Answer = oneshot::Sender<Result<Written, WriteError>>;

/// Each change's result, filled in by the store's updater.
type Results = Arc<Mutex<Vec<Option<Result<Written, WriteError>>>>>;

/// Records the store held for entities a redelivered change reached, as the updater found
/// them: the first delivery stored them, and a crash may have kept them from the history.
type Recovered = Arc<Mutex<Vec<(EntityKey, Record)>>>;

struct Pending {
    group: Arc<FeatureGroup>,
    entity: EntityKey,
    change: Change,
    /// Whether the caller wants the record as stored (to re-publish it).
    want_record: bool,
    done: Answer,
}

/// Gathers writes into batches. Cheap to clone; the batching task ends when every clone is
/// dropped.
#[derive(Clone)]
pub struct BatchingWriter {
    tx: mpsc::Sender<Pending>,
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most records in one batch.
    pub max_records: usize,
    /// How long the first record of a batch may wait for others.
    pub linger: Duration,
    /// Batches being written at once. While one waits for its durable commit the next one
    /// gathers and starts; one key is never in two of them, because the consumer runs one
    /// event per key at a time.
    pub max_in_flight: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_records: 2048,
            linger: Duration::from_millis(2),
            max_in_flight: 4,
        }
    }
}

impl BatchingWriter {
    /// Starts the batching task on the current runtime.
    pub fn start(path: WritePath, policy: BatchPolicy) -> BatchingWriter {
        let (tx, rx) = mpsc::channel(policy.max_records.max(1) * 2);
        tokio::spawn(run(path, policy, rx));
        BatchingWriter { tx }
    }

    /// Applies one change and waits until its batch is durable.
    pub async fn write(
        &self,
        group: Arc<FeatureGroup>,
        entity: EntityKey,
        change: Change,
    ) -> Result<Effect, WriteError> {
        self.write_returning(group, entity, change, false)
            .await
            .map(|w| w.effect)
    }

    /// Like [`BatchingWriter::write`], also returning the record as stored after the change
    /// when `want_record` is set (for a redelivered change, the record as it stands).
    pub async fn write_returning(
        &self,
        group: Arc<FeatureGroup>,
        entity: EntityKey,
        change: Change,
        want_record: bool,
    ) -> Result<Written, WriteError> {
        // An oversized record is refused alone, before it can fail a whole batch (updated
        // records are checked as they are built).
        if let Change::Put(record) = &change {
            cellar_store::check_size(&group, &entity, record).map_err(refused)?;
        }
        let (done, wait) = oneshot::channel();
        let stopped = || WriteError {
            message: "the writer has stopped".into(),
            retryable: true,
        };
        // A slot is reserved before the change moves into the channel, so the waiting future
        // does not hold the change twice.
        let slot = self.tx.reserve().await.map_err(|_| stopped())?;
        slot.send(Pending {
            group,
            entity,
            change,
            want_record,
            done,
        });
        wait.await.map_err(|_| stopped())?
    }
}

fn refused(e: cellar_store::StoreError) -> WriteError {
    WriteError {
        message: e.to_string(),
        retryable: false,
    }
}

fn failed(e: cellar_store::StoreError) -> WriteError {
    WriteError {
        message: e.to_string(),
        retryable: e.is_retryable(),
    }
}

async fn run(path: WritePath, policy: BatchPolicy, mut rx: mpsc::Receiver<Pending>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(policy.max_in_flight.max(1)));
    let max_records = policy.max_records.max(1);
    loop {
        // Whatever is queued is taken at once, not one change at a time.
        let mut batch: Vec<Pending> = Vec::with_capacity(max_records);
        if rx.recv_many(&mut batch, max_records).await == 0 {
            break;
        }
        let deadline = tokio::time::Instant::now() + policy.linger;
        while batch.len() < max_records {
            let room = max_records - batch.len();
            match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        // While earlier batches wait for their commits, the next ones gather; the semaphore
        // is never closed, so acquiring only waits.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let path = path.clone();
        tokio::spawn(async move {
            flush(&path, &mut batch).await;
            drop(slot);
        });
    }
}

/// Writes a batch, one store call per group and kind of change, and answers every change.
async fn flush(path: &WritePath, batch: &mut Vec<Pending>) {
    // Groups by identity (the Arc's address): every change of one ingestion shares its
    // group's Arc, so no name is copied per change. A batch holds few groups, so a list
    // searched from the last group found costs less than hashing every change.
    let mut by_group: Vec<(usize, Vec<Pending>, Vec<Pending>)> = Vec::new();
    for p in batch.drain(..) {
        let id = Arc::as_ptr(&p.group) as usize;
        let at = match by_group.iter().rposition(|(group, _, _)| *group == id) {
            Some(at) => at,
            None => {
                by_group.push((id, Vec::new(), Vec::new()));
                by_group.len() - 1
            }
        };
        let (_, puts, updates) = &mut by_group[at];
        match p.change {
            Change::Put(_) => puts.push(p),
            Change::Update(_) => updates.push(p),
        }
    }
    // Each group's writes are independent: their durable commits overlap.
    let mut writes = Vec::with_capacity(by_group.len() * 2);
    for (_, puts, updates) in by_group {
        if !puts.is_empty() {
            writes.push(futures::future::Either::Left(flush_puts(path, puts)));
        }
        if !updates.is_empty() {
            writes.push(futures::future::Either::Right(flush_updates(path, updates)));
        }
    }
    futures::future::join_all(writes).await;
}

async fn flush_puts(path: &WritePath, pending: Vec<Pending>) {
    let group = pending[0].group.clone();
    let mut writes = Vec::with_capacity(pending.len());
    let mut answers = Vec::with_capacity(pending.len());
    for p in pending {
        if let Change::Put(record) = p.change {
            writes.push(Write {
                entity: p.entity,
                record,
            });
            answers.push((p.done, p.want_record));
        }
    }
    let outcomes = put_isolating(path, &group, &writes).await;
    for (((done, want), outcome), w) in answers.into_iter().zip(outcomes).zip(&writes) {
        let _ = done.send(outcome.map(|outcome| Written {
            effect: Effect {
                stale: outcome == PutOutcome::Stale,
                ..Effect::default()
            },
            record: want.then(|| w.record.clone()),
        }));
    }
}

/// Writes `writes` in one store call, and returns each one's outcome. When the store refuses
/// the batch for something in its input (which validation upstream should have caught), each
/// half is written again, so the record at fault fails alone with its reason and the events it
/// shared the batch with are applied: a few more calls for one bad record, instead of failing
/// thousands of good ones. Failures a retry may cure (the backend is down) fail the batch.
fn put_isolating<'a>(
    path: &'a WritePath,
    group: &'a FeatureGroup,
    writes: &'a [Write],
) -> BoxFuture<'a, Vec<Result<PutOutcome, WriteError>>> {
    Box::pin(async move {
        match path.write(group, writes).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) if !e.is_retryable() && writes.len() > 1 => {
                let (first, second) = writes.split_at(writes.len() / 2);
                let mut outcomes = put_isolating(path, group, first).await;
                outcomes.extend(put_isolating(path, group, second).await);
                outcomes
            }
            Err(e) => {
                let error = failed(e);
                tracing::warn!(group = %group.name, records = writes.len(), error = %error.message, "store write failed");
                vec![Err(error); writes.len()]
            }
        }
    })
}

/// Each entity's changes in arrival order: (index of the change's answer, the change, whether
/// the record as stored is wanted).
type Work = Arc<Vec<Vec<(usize, Update, bool)>>>;

async fn flush_updates(path: &WritePath, pending: Vec<Pending>) {
    let group = pending[0].group.clone();
    // Changes by entity, in arrival order (the consumer keeps one key's events in order).
    // Each key moves into the index and back out, so none is copied.
    let mut work: Vec<Vec<(usize, Update, bool)>> = Vec::new();
    let mut slot: HashMap<EntityKey, usize> = HashMap::with_capacity(pending.len());
    let mut answers = Vec::with_capacity(pending.len());
    for p in pending {
        let Change::Update(update) = p.change else {
            continue;
        };
        let at = *slot.entry(p.entity).or_insert_with(|| {
            work.push(Vec::new());
            work.len() - 1
        });
        work[at].push((answers.len(), update, p.want_record));
        answers.push(p.done);
    }
    let mut entities = vec![EntityKey(String::new()); work.len()];
    for (entity, at) in slot {
        entities[at] = entity;
    }
    let results: Results = Arc::new(Mutex::new(vec![None; answers.len()]));
    let recovered: Recovered = Arc::default();
    update_isolating(
        path,
        &group,
        &entities,
        0,
        &Arc::new(work),
        &results,
        &recovered,
    )
    .await;
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    let recovered = std::mem::take(&mut *recovered.lock().unwrap_or_else(|p| p.into_inner()));
    if !recovered.is_empty() {
        // Unapplied: at an equal event time, what the history already holds wins.
        let rows: Vec<Kept> = recovered
            .iter()
            .map(|(entity, record)| Kept {
                entity,
                record,
                applied: false,
            })
            .collect();
        if let Err(e) = path.keep(&group, &rows).await {
            // Until the history has them, no change of the batch is acknowledged: each is
            // redelivered, and finds the records again.
            let error = failed(e);
            tracing::warn!(group = %group.name, error = %error.message, "keeping recovered records in the history failed");
            for result in results.iter_mut().flatten() {
                if result.is_ok() {
                    *result = Err(error.clone());
                }
            }
        }
    }
    for (done, result) in answers.into_iter().zip(results.iter_mut()) {
        let result = result.take().unwrap_or_else(|| {
            Err(WriteError {
                message: "the store did not apply this change".into(),
                retryable: true,
            })
        });
        let _ = done.send(result);
    }
}

/// Updates `entities` (those of `work[offset..]`) in one store call, filling in the result of
/// each of their changes. Like [`put_isolating`], a batch the store refuses for its input is
/// split until the entity at fault fails alone.
fn update_isolating<'a>(
    path: &'a WritePath,
    group: &'a Arc<FeatureGroup>,
    entities: &'a [EntityKey],
    offset: usize,
    work: &'a Work,
    results: &'a Results,
    recovered: &'a Recovered,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let updater = updater(
            group.clone(),
            work.clone(),
            offset,
            results.clone(),
            recovered.clone(),
        );
        match path.update(group, entities, updater).await {
            Ok(_) => {}
            Err(e) if !e.is_retryable() && entities.len() > 1 => {
                let mid = entities.len() / 2;
                let (first, second) = entities.split_at(mid);
                update_isolating(path, group, first, offset, work, results, recovered).await;
                update_isolating(path, group, second, offset + mid, work, results, recovered).await;
            }
            Err(e) => {
                let error = failed(e);
                let changes = &work[offset..offset + entities.len()];
                tracing::warn!(group = %group.name, changes = changes.iter().map(Vec::len).sum::<usize>(), error = %error.message, "store update failed");
                // The updater may have run before the store failed: nothing it decided holds.
                let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
                for (answer, _, _) in changes.iter().flatten() {
                    results[*answer] = Some(Err(error.clone()));
                }
            }
        }
    })
}

/// The store updater applying the changes of `work[offset + index]` to the entity at `index`
/// of the call, and recording each change's result.
fn updater(
    group: Arc<FeatureGroup>,
    work: Work,
    offset: usize,
    results: Results,
    recovered: Recovered,
) -> Updater {
    let width = group.features.len();
    Box::new(move |index, entity: &EntityKey, stored: Option<Record>| {
        let changes = work
            .get(offset + index)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if let Some(record) = &stored {
            let redelivered = changes
                .iter()
                .any(|(_, update, _)| aggregate::redelivered(record, update));
            if redelivered {
                recovered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((entity.clone(), record.clone()));
            }
        }
        let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
        // Kept only when a refused change must be undone by replaying the others:
        // the usual single change needs no copy.
        let original = (changes.len() > 1).then(|| stored.clone());
        let mut record = stored;
        let mut changed = false;
        let mut accepted: Vec<&Update> = Vec::new();
        for (answer, update, want_record) in changes {
            let effect = aggregate::apply(&mut record, width, update);
            let too_large = record
                .as_ref()
                .and_then(|r| cellar_store::check_size(&group, entity, r).err());
            results[*answer] = Some(match too_large {
                // This change alone is refused; the entity keeps the others.
                Some(e) => {
                    record = original.clone().flatten();
                    for earlier in &accepted {
                        aggregate::apply(&mut record, width, earlier);
                    }
                    Err(refused(e))
                }
                None => {
                    changed |= !effect.duplicate;
                    accepted.push(update);
                    Ok(Written {
                        effect,
                        record: if *want_record { record.clone() } else { None },
                    })
                }
            });
        }
        if changed {
            record
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Fold, WindowSpec};
    use cellar_spec::{AggregateFunction, Value};
    use cellar_store::conformance::{attribute_group, timeseries_group};
    use cellar_store::embedded::EmbeddedStore;
    use cellar_store::{OnlineStore, RecordReader, TimeseriesQuery};

    fn record(at: i64, v: i64) -> Record {
        Record::new(at, vec![Value::Int64(v)])
    }

    fn set(at: i64, v: Value, origin: u64) -> Change {
        Change::Update(Update {
            event_time: at,
            origin: Some((1, origin)),
            fields: vec![(0, v)],
            folds: Vec::new(),
        })
    }

    fn writer_on(store: Arc<EmbeddedStore>) -> BatchingWriter {
        BatchingWriter::start(
            WritePath::new(store as Arc<dyn OnlineStore>, None),
            BatchPolicy::default(),
        )
    }

    #[tokio::test]
    async fn concurrent_writes_are_batched_and_answered_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let writer = writer_on(store.clone());
        let attrs = Arc::new(attribute_group("profile"));
        let series = Arc::new(timeseries_group("clicks", Some(100), None));
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let writer = writer.clone();
            let (attrs, series) = (attrs.clone(), series.clone());
            tasks.push(tokio::spawn(async move {
                let key = EntityKey(format!("u{}", i % 10));
                let a = writer
                    .write(attrs, key, set(i, Value::Int64(i), i as u64))
                    .await;
                let s = writer
                    .write(series, EntityKey("u0".into()), Change::Put(record(i, i)))
                    .await;
                (a, s)
            }));
        }
        for t in tasks {
            let (a, s) = t.await.unwrap();
            assert!(!s.unwrap().stale);
            assert!(!a.unwrap().duplicate);
        }
        // Every entity ends with its newest record, whatever the batching.
        let keys: Vec<EntityKey> = (0..10).map(|i| EntityKey(format!("u{i}"))).collect();
        let got = store.get_attributes(&attrs, &keys).await.unwrap();
        for (i, r) in got.into_iter().enumerate() {
            let r = r.unwrap();
            assert_eq!(r.event_time, 190 + i as i64);
            assert_eq!(r.value(0), &Value::Int64(190 + i as i64));
        }
        let all = store
            .scan_timeseries(
                &series,
                &keys[..1],
                TimeseriesQuery {
                    top_n: 500,
                    since: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(all[0].len(), 100, "trimmed to the group's retention");
    }

    #[tokio::test]
    async fn counts_are_exact_under_concurrency_and_redelivery_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let writer = writer_on(store.clone());
        let group = Arc::new(attribute_group("activity"));
        let count = WindowSpec {
            function: AggregateFunction::Count,
            size_ms: 3_600_000,
            slide_ms: 3_600_000,
            float: false,
        };
        let click = move |origin: u64, key: u64| Update {
            event_time: 1_000 + key as i64,
            origin: Some((key, origin)),
            fields: Vec::new(),
            folds: vec![Fold {
                position: 0,
                window: count,
                input: Value::Null,
            }],
        };
        // Every key gets 50 events from its own source, offsets in order; each event is
        // delivered twice.
        let mut tasks = Vec::new();
        for key in 0..8u64 {
            let (writer, group) = (writer.clone(), group.clone());
            tasks.push(tokio::spawn(async move {
                let mut duplicates = 0;
                for offset in 0..50 {
                    for _ in 0..2 {
                        let effect = writer
                            .write(
                                group.clone(),
                                EntityKey(format!("k{key}")),
                                Change::Update(click(offset, key)),
                            )
                            .await
                            .unwrap();
                        duplicates += usize::from(effect.duplicate);
                    }
                }
                duplicates
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 50, "every second delivery is a duplicate");
        }
        let keys: Vec<EntityKey> = (0..8).map(|k| EntityKey(format!("k{k}"))).collect();
        for r in store.get_attributes(&group, &keys).await.unwrap() {
            assert_eq!(r.unwrap().value(0), &Value::Int64(50));
        }
    }

    #[tokio::test]
    async fn an_oversized_record_is_refused_alone_with_size_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let writer = writer_on(store.clone());
        let mut series = timeseries_group("clicks", Some(10), None);
        series.max_record_bytes = 16;
        let big = Record::new(1, vec![Value::String("x".repeat(100))]);
        let err = writer
            .write(Arc::new(series), EntityKey("u1".into()), Change::Put(big))
            .await
            .unwrap_err();
        assert!(err.message.contains("limit of 16 bytes"), "{err}");
        assert!(!err.retryable);

        // In one batch, the oversized update of an entity fails and its other update stays.
        let mut attrs = attribute_group("profile");
        attrs.max_record_bytes = 32;
        let attrs = Arc::new(attrs);
        let key = EntityKey("u1".into());
        let (small, large) = tokio::join!(
            writer.write(attrs.clone(), key.clone(), set(1, Value::Int64(5), 1)),
            writer.write(
                attrs.clone(),
                key.clone(),
                set(2, Value::String("y".repeat(64)), 2)
            ),
        );
        assert!(small.is_ok());
        let err = large.unwrap_err();
        assert!(err.message.contains("limit of 32 bytes"), "{err}");
        let got = store.get_attributes(&attrs, &[key]).await.unwrap();
        assert_eq!(got[0].as_ref().unwrap().value(0), &Value::Int64(5));
    }

    #[tokio::test]
    async fn a_key_the_store_refuses_fails_alone_among_thousands_of_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let writer = writer_on(store.clone());
        let attrs = Arc::new(attribute_group("profile"));
        let series = Arc::new(timeseries_group("clicks", Some(10), None));
        // Keys built by hand: ingestion refuses them before they get here, the store is the
        // last line.
        let bad = |i: usize| match i {
            1000 => Some(EntityKey("bad\0key".into())),
            2000 => Some(EntityKey("k".repeat(70_000))),
            _ => None,
        };
        let writes = (0..3000usize).map(|i| {
            let writer = writer.clone();
            let (attrs, series) = (attrs.clone(), series.clone());
            let key = bad(i).unwrap_or_else(|| EntityKey(format!("u{i}")));
            async move {
                let change = set(i as i64 + 1, Value::Int64(i as i64), 1);
                let updated = writer.write(attrs, key.clone(), change).await;
                let put = writer
                    .write(series, key, Change::Put(record(i as i64 + 1, 1)))
                    .await;
                (updated, put)
            }
        });
        let results = futures::future::join_all(writes).await;
        for (i, (updated, put)) in results.into_iter().enumerate() {
            match bad(i) {
                None => {
                    assert!(updated.is_ok(), "update {i}: {updated:?}");
                    assert!(put.is_ok(), "put {i}: {put:?}");
                }
                Some(_) => {
                    for err in [updated.unwrap_err(), put.unwrap_err()] {
                        assert!(!err.retryable, "{err}");
                        assert!(
                            err.message.contains("NUL")
                                || err.message.contains("limit of 65535 bytes"),
                            "{err}"
                        );
                    }
                }
            }
        }
        let keys: Vec<EntityKey> = (0..3000).map(|i| EntityKey(format!("u{i}"))).collect();
        let got = store.get_attributes(&attrs, &keys).await.unwrap();
        let stored = got.iter().flatten().count();
        assert_eq!(stored, 2998);
        let got = store
            .scan_timeseries(
                &series,
                &keys,
                TimeseriesQuery {
                    top_n: 10,
                    since: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(got.iter().filter(|s| s.len() == 1).count(), 2998);
    }
}
