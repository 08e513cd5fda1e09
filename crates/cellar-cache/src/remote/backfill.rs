//! Back-fills: values read from the tier below after a miss or for a refresh, queued (a full
//! queue drops them) and written by one background task in pipelines.

use std::sync::Arc;

use cellar_spec::{EntityKey, FeatureGroup};
use cellar_store::Record;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::deadlines::Ttls;
use super::read::read_next;
use super::scripts::{ScriptCall, Tie};
use super::stats::bump;
use super::value::{encode_missing, encode_record, encode_series};
use super::{RemoteTier, Shared};

/// A value to write to Redis in the background, unless Redis holds a newer event time.
pub(super) struct Fill {
    key: Vec<u8>,
    value: Vec<u8>,
    ttl_ms: u64,
}

pub(super) enum Job {
    Fill(Vec<Fill>),
    /// Stale entries to read again from the tier below.
    Refresh {
        group: Box<FeatureGroup>,
        entities: Vec<EntityKey>,
        keys: Vec<Vec<u8>>,
        /// The group's generation read before the refresh was asked for.
        generation: u64,
    },
    /// Answered once every job queued before it is done.
    Flush(oneshot::Sender<()>),
}

/// What a read found in the tier below, as a back-fill writes it (see
/// [`RemoteTier::apply_fill`]).
#[doc(hidden)]
#[derive(Debug, Clone)]
pub enum Found {
    Missing,
    Record(Record),
    /// Newest first, as the tier below returned them for the group's series length.
    Series(Vec<Record>),
}

impl RemoteTier {
    /// Queues fills; a full queue drops them.
    pub(super) fn enqueue(&self, fills: Vec<Fill>) {
        if fills.is_empty() {
            return;
        }
        let n = fills.len();
        match self.queue.try_send(Job::Fill(fills)) {
            Ok(()) => bump(&self.shared.stats.fills_queued, n),
            Err(_) => bump(&self.shared.stats.fills_dropped, n),
        }
    }

    /// Queues a refresh of stale entries, once per key at a time.
    pub(super) fn refresh(
        &self,
        group: &FeatureGroup,
        entities: Vec<EntityKey>,
        keys: Vec<Vec<u8>>,
        generation: u64,
    ) {
        let (entities, keys): (Vec<EntityKey>, Vec<Vec<u8>>) = {
            let Ok(mut refreshing) = self.shared.refreshing.lock() else {
                return;
            };
            entities
                .into_iter()
                .zip(keys)
                .filter(|(_, k)| refreshing.insert(k.clone()))
                .unzip()
        };
        if keys.is_empty() {
            return;
        }
        let n = keys.len();
        let job = Job::Refresh {
            group: Box::new(group.clone()),
            entities,
            keys,
            generation,
        };
        match self.queue.try_send(job) {
            Ok(()) => bump(&self.shared.stats.fills_queued, n),
            Err(mpsc::error::TrySendError::Full(Job::Refresh { keys, .. }))
            | Err(mpsc::error::TrySendError::Closed(Job::Refresh { keys, .. })) => {
                bump(&self.shared.stats.fills_dropped, n);
                self.shared.done_refreshing(&keys);
            }
            Err(_) => bump(&self.shared.stats.fills_dropped, n),
        }
    }

    /// Waits until every back-fill queued so far has been written (or dropped): for an orderly
    /// shutdown, and for tests.
    pub async fn drain(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Pauses the back-fill task until the guard is dropped (the queue then fills up and
    /// drops fills).
    #[doc(hidden)]
    pub async fn hold_back_fills(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.shared.gate.clone().lock_owned().await
    }

    /// Writes one back-fill at once, as the back-fill task would; returns whether Redis took
    /// it (false: it held a newer event time, or the write failed).
    #[doc(hidden)]
    pub async fn apply_fill(&self, group: &FeatureGroup, entity: &EntityKey, found: Found) -> bool {
        let generation = self.shared.generations.get(&group.name);
        let Some(fill) = fill_for(
            group,
            self.key(&group.storage_name(), entity),
            found,
            generation,
        ) else {
            return false;
        };
        self.shared.apply_fills(vec![fill]).await == 1
    }
}

impl Shared {
    fn done_refreshing(&self, keys: &[Vec<u8>]) {
        if let Ok(mut r) = self.refreshing.lock() {
            for k in keys {
                r.remove(k);
            }
        }
    }

    /// Writes back-fills in pipelines of at most `batch`; returns how many Redis took.
    async fn apply_fills(&self, fills: Vec<Fill>) -> usize {
        let mut applied = 0;
        let mut fills = fills.into_iter().peekable();
        while fills.peek().is_some() {
            let calls: Vec<ScriptCall> = fills
                .by_ref()
                .take(self.batch)
                .map(|f| ScriptCall::put(f.key, f.value, f.ttl_ms, Tie::Replace))
                .collect();
            let n = calls.len();
            let Some(permit) = self.breaker.try_acquire() else {
                bump(&self.stats.fills_dropped, n);
                continue;
            };
            let mut conn = self.conn.clone();
            match tokio::time::timeout(self.write_timeout, conn.run_scripts(&calls)).await {
                Ok(Ok(replies)) => {
                    permit.succeeded();
                    for reply in replies {
                        match reply {
                            Value::Int(1) => {
                                applied += 1;
                                bump(&self.stats.fills_applied, 1);
                            }
                            Value::Int(_) => bump(&self.stats.fills_superseded, 1),
                            other => {
                                bump(&self.stats.errors, 1);
                                bump(&self.stats.fills_dropped, 1);
                                tracing::debug!(reply = ?other, "remote cache back-fill refused");
                            }
                        }
                    }
                }
                Ok(Err(e)) => {
                    permit.failed();
                    bump(&self.stats.errors, 1);
                    bump(&self.stats.fills_dropped, n);
                    tracing::debug!(error = %e, "remote cache back-fill failed");
                }
                Err(_) => {
                    permit.failed();
                    bump(&self.stats.timeouts, 1);
                    bump(&self.stats.fills_dropped, n);
                }
            }
        }
        applied
    }

    /// Reads stale entries again from the tier below and turns them into fills.
    async fn refreshed(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        keys: Vec<Vec<u8>>,
        generation: u64,
    ) -> Vec<Fill> {
        let started = std::time::Instant::now();
        let found = read_next(&*self.next, group, entities).await;
        self.costs.observe(&group.name, started.elapsed());
        self.done_refreshing(&keys);
        match found {
            Ok(found) => keys
                .into_iter()
                .zip(found)
                .filter_map(|(key, found)| fill_for(group, key, found, generation))
                .collect(),
            Err(e) => {
                tracing::warn!(group = %group.name, error = %e, "remote tier refresh failed");
                Vec::new()
            }
        }
    }
}

/// The back-fill task: takes the jobs waiting, turns refreshes into fills, writes them all
/// in pipelines. Ends when the tier is dropped.
pub(super) async fn back_fill(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
    const JOBS_PER_ROUND: usize = 256;
    while let Some(first) = jobs.recv().await {
        let mut round = vec![first];
        while round.len() < JOBS_PER_ROUND {
            match jobs.try_recv() {
                Ok(job) => round.push(job),
                Err(_) => break,
            }
        }
        let _gate = shared.gate.lock().await;
        let mut fills = Vec::new();
        let mut flushed = Vec::new();
        for job in round {
            match job {
                Job::Fill(f) => fills.extend(f),
                Job::Refresh {
                    group,
                    entities,
                    keys,
                    generation,
                } => fills.extend(shared.refreshed(&group, &entities, keys, generation).await),
                Job::Flush(done) => flushed.push(done),
            }
        }
        shared.apply_fills(fills).await;
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// The back-fill of what the tier below answered for one entity, stamped with the group's
/// `generation` read before the tier below was (so a fill that read the store before the group
/// moved on is a miss); `None` when the group's policy caches nothing of that kind, or the
/// record cannot be encoded.
pub(super) fn fill_for(
    group: &FeatureGroup,
    key: Vec<u8>,
    found: Found,
    generation: u64,
) -> Option<Fill> {
    match found {
        Found::Missing => record_fill(group, key, None, generation),
        Found::Record(r) => record_fill(group, key, Some(&r), generation),
        Found::Series(records) => series_fill(group, key, &records, generation),
    }
}

/// The back-fill of an attribute record, or of "no record".
fn record_fill(
    group: &FeatureGroup,
    key: Vec<u8>,
    record: Option<&Record>,
    generation: u64,
) -> Option<Fill> {
    let (value, ttls) = match record {
        None => {
            let ttls = Ttls::negative(&group.serving)?;
            (encode_missing(ttls.soft_deadline, generation), ttls)
        }
        Some(r) => {
            let ttls = Ttls::positive(&group.serving)?;
            (encode_record(r, ttls.soft_deadline, generation).ok()?, ttls)
        }
    };
    Some(Fill {
        key,
        value,
        ttl_ms: ttls.hard_ms,
    })
}

/// The back-fill of an entity's newest records, read up to the group's series length; no
/// records at all is cached as "no record".
fn series_fill(
    group: &FeatureGroup,
    key: Vec<u8>,
    records: &[Record],
    generation: u64,
) -> Option<Fill> {
    if records.is_empty() {
        return record_fill(group, key, None, generation);
    }
    let ttls = Ttls::positive(&group.serving)?;
    let complete = records.len() < RemoteTier::series_len(group);
    Some(Fill {
        key,
        value: encode_series(records, complete, ttls.soft_deadline, generation).ok()?,
        ttl_ms: ttls.hard_ms,
    })
}
