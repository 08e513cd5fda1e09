//! The batching writer: records from many concurrently processed events are gathered into one
//! store write per group (one durable commit), and each event learns its own outcome.
//!
//! Ingestion applies events in parallel, and a durable commit per event would cap throughput
//! at the disk's sync rate; gathering the records of all in-flight events into one batch pays
//! that cost once per batch. Records of one attribute entity in one batch are coalesced into
//! one write: the newest event time wins, as it would in the store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cellar_cache::WritePath;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind};
use cellar_store::{PutOutcome, Record, Write};
use tokio::sync::{mpsc, oneshot};

/// Why a write failed: the store's error, shared by every record of the failed batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store write failed: {message}")]
pub struct WriteError {
    pub message: String,
    /// Whether trying again later may succeed (a backend failure) or not (a record the store
    /// refuses, such as an oversized one).
    pub retryable: bool,
}

struct Pending {
    group: Arc<FeatureGroup>,
    entity: EntityKey,
    record: Record,
    done: oneshot::Sender<Result<PutOutcome, WriteError>>,
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
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_records: 2048,
            linger: Duration::from_millis(2),
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

    /// Writes one record and waits until its batch is durable.
    pub async fn write(
        &self,
        group: Arc<FeatureGroup>,
        entity: EntityKey,
        record: Record,
    ) -> Result<PutOutcome, WriteError> {
        // An oversized record is refused alone, before it can fail a whole batch.
        cellar_store::check_size(&group, &entity, &record).map_err(|e| WriteError {
            message: e.to_string(),
            retryable: false,
        })?;
        let (done, wait) = oneshot::channel();
        let stopped = || WriteError {
            message: "the writer has stopped".into(),
            retryable: true,
        };
        self.tx
            .send(Pending {
                group,
                entity,
                record,
                done,
            })
            .await
            .map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }
}

async fn run(path: WritePath, policy: BatchPolicy, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(policy.max_records);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + policy.linger;
        while batch.len() < policy.max_records {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => batch.push(p),
                Ok(None) | Err(_) => break,
            }
        }
        flush(&path, &mut batch).await;
    }
}

/// Writes a batch, one store call per group, and answers every record.
async fn flush(path: &WritePath, batch: &mut Vec<Pending>) {
    let mut by_group: HashMap<String, Vec<Pending>> = HashMap::new();
    for p in batch.drain(..) {
        by_group.entry(p.group.name.clone()).or_default().push(p);
    }
    for (_, pending) in by_group {
        let group = pending[0].group.clone();
        // For attribute groups, only the newest record of each entity is written; the others
        // are answered as stale, which is what the store would have said.
        let mut writes: Vec<Write> = Vec::with_capacity(pending.len());
        let mut slot_of: Vec<usize> = Vec::with_capacity(pending.len());
        let mut newest: HashMap<&EntityKey, usize> = HashMap::new();
        for p in &pending {
            let slot = match group.kind {
                GroupKind::Attribute => match newest.get(&p.entity) {
                    Some(&s) => {
                        if p.record.event_time > writes[s].record.event_time {
                            writes[s].record = p.record.clone();
                        }
                        s
                    }
                    None => {
                        newest.insert(&p.entity, writes.len());
                        writes.push(Write {
                            entity: p.entity.clone(),
                            record: p.record.clone(),
                        });
                        writes.len() - 1
                    }
                },
                GroupKind::Timeseries => {
                    writes.push(Write {
                        entity: p.entity.clone(),
                        record: p.record.clone(),
                    });
                    writes.len() - 1
                }
            };
            slot_of.push(slot);
        }
        let result = path.write(&group, &writes).await;
        match result {
            Ok(outcomes) => {
                for (p, slot) in pending.into_iter().zip(slot_of) {
                    let outcome = match outcomes.get(slot) {
                        Some(PutOutcome::Applied)
                            if writes[slot].record.event_time == p.record.event_time =>
                        {
                            PutOutcome::Applied
                        }
                        _ => PutOutcome::Stale,
                    };
                    let _ = p.done.send(Ok(outcome));
                }
            }
            Err(e) => {
                let error = WriteError {
                    message: e.to_string(),
                    retryable: e.is_retryable(),
                };
                tracing::warn!(group = %group.name, records = pending.len(), error = %error.message, "store write failed");
                for p in pending {
                    let _ = p.done.send(Err(error.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_spec::Value;
    use cellar_store::conformance::{attribute_group, timeseries_group};
    use cellar_store::embedded::EmbeddedStore;
    use cellar_store::{OnlineStore, RecordReader, TimeseriesQuery};

    fn record(at: i64, v: i64) -> Record {
        Record::new(at, vec![Value::Int64(v)])
    }

    #[tokio::test]
    async fn concurrent_writes_are_batched_and_answered_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let writer = BatchingWriter::start(
            WritePath::new(store.clone() as Arc<dyn OnlineStore>, None),
            BatchPolicy::default(),
        );
        let attrs = Arc::new(attribute_group("profile"));
        let series = Arc::new(timeseries_group("clicks", Some(100), None));
        let mut tasks = Vec::new();
        for i in 0..200i64 {
            let writer = writer.clone();
            let (attrs, series) = (attrs.clone(), series.clone());
            tasks.push(tokio::spawn(async move {
                let a = writer
                    .write(attrs, EntityKey(format!("u{}", i % 10)), record(i, i))
                    .await;
                let s = writer
                    .write(series, EntityKey("u0".into()), record(i, i))
                    .await;
                (i, a, s)
            }));
        }
        let mut applied_newest = 0;
        for t in tasks {
            let (i, a, s) = t.await.unwrap();
            assert_eq!(s.unwrap(), PutOutcome::Applied);
            if a.unwrap() == PutOutcome::Applied && i >= 190 {
                applied_newest += 1;
            }
        }
        // Every entity ends with its newest record, whatever the batching.
        let keys: Vec<EntityKey> = (0..10).map(|i| EntityKey(format!("u{i}"))).collect();
        let got = store.get_attributes(&attrs, &keys).await.unwrap();
        for (i, r) in got.into_iter().enumerate() {
            assert_eq!(r.unwrap().event_time, 190 + i as i64);
        }
        assert_eq!(applied_newest, 10);
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
    async fn an_oversized_record_is_refused_alone_with_size_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let writer = BatchingWriter::start(
            WritePath::new(store as Arc<dyn OnlineStore>, None),
            BatchPolicy::default(),
        );
        let mut group = attribute_group("profile");
        group.max_record_bytes = 16;
        let big = Record::new(1, vec![Value::String("x".repeat(100))]);
        let err = writer
            .write(Arc::new(group), EntityKey("u1".into()), big)
            .await
            .unwrap_err();
        assert!(err.message.contains("limit of 16 bytes"), "{err}");
        assert!(!err.retryable);
    }
}
