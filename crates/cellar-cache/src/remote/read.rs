//! Reads through the tier: one `MGET` per request and group; hits served, the stale ones and
//! hot ones near their deadline refreshed in the background; misses read from the tier below
//! once per key and queued for back-fill.

use std::time::Duration;

use async_trait::async_trait;
use cellar_spec::time::now_ms;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind, Tier};
use cellar_store::{Record, RecordReader, Result, TimeseriesQuery};

use super::backfill::{fill_for, Found};
use super::generation;
use super::stats::bump;
use super::value::{decode_value, Cached, Decoded};
use super::RemoteTier;
use crate::metrics::{Outcome, Stage};
use crate::ttl::refresh_early;

/// What one `MGET` found: the group's generation, and the value of each key.
struct Looked {
    generation: u64,
    values: Vec<Option<Vec<u8>>>,
}

impl RemoteTier {
    /// Reads the group's generation and the values of `keys` in one `MGET`; `None` when Redis
    /// was not asked (breaker open, or writes of the group skipped and not yet invalidated) or
    /// failed.
    async fn lookup(&self, group: &FeatureGroup, keys: &[Vec<u8>]) -> Option<Looked> {
        let shared = &self.shared;
        // A copy older than a write this node acknowledged may be in Redis: not served.
        if shared.skipped.owes(Some(&group.name)) {
            bump(&shared.stats.bypassed, keys.len());
            return None;
        }
        let Some(permit) = shared.breaker.try_acquire() else {
            bump(&shared.stats.bypassed, keys.len());
            return None;
        };
        let mut conn = shared.conn.clone();
        let started = std::time::Instant::now();
        let mut asked = Vec::with_capacity(keys.len() + 1);
        asked.push(shared.generation_key(&group.name));
        asked.extend_from_slice(keys);
        let outcome = tokio::time::timeout(shared.timeout, conn.mget(&asked)).await;
        match outcome {
            Ok(Ok(mut values)) if values.len() == asked.len() => {
                permit.succeeded();
                shared
                    .metrics
                    .observe_latency(Stage::Remote, started.elapsed());
                let Some(generation) = generation::parse(values[0].as_deref()) else {
                    bump(&shared.stats.corrupt, 1);
                    bump(&shared.stats.bypassed, keys.len());
                    tracing::debug!(group = %group.name, "undecodable group generation in the remote cache");
                    return None;
                };
                shared.generations.learn(&group.name, generation);
                values.remove(0);
                Some(Looked { generation, values })
            }
            Ok(Ok(values)) => {
                permit.failed();
                bump(&shared.stats.errors, 1);
                tracing::debug!(
                    asked = asked.len(),
                    answered = values.len(),
                    "remote cache answered the wrong number of values"
                );
                bump(&shared.stats.bypassed, keys.len());
                None
            }
            Ok(Err(e)) => {
                permit.failed();
                bump(&shared.stats.errors, 1);
                tracing::debug!(error = %e, "remote cache read failed");
                bump(&shared.stats.bypassed, keys.len());
                None
            }
            Err(_) => {
                permit.failed();
                bump(&shared.stats.timeouts, 1);
                bump(&shared.stats.bypassed, keys.len());
                None
            }
        }
    }

    /// Decodes a value; `None` (a miss) also for one made under an older generation than the
    /// group's.
    fn decode(
        &self,
        bytes: Option<Vec<u8>>,
        pick: Option<TimeseriesQuery>,
        generation: u64,
    ) -> Option<Decoded> {
        match decode_value(&bytes?, pick) {
            Ok(d) if d.generation < generation => None,
            Ok(d) => Some(d),
            Err(e) => {
                bump(&self.shared.stats.corrupt, 1);
                tracing::debug!(error = %e, "undecodable value in the remote cache");
                None
            }
        }
    }

    /// XFetch on a fresh hit: whether to refresh it now, `soft_deadline` being still ahead.
    fn refresh_early(&self, group: &FeatureGroup, now: i64, soft_deadline: i64) -> bool {
        let beta = group.serving.early_refresh;
        beta > 0.0
            && refresh_early(
                Duration::from_millis(soft_deadline.saturating_sub(now).max(0) as u64),
                self.shared.costs.get(&group.name),
                beta,
            )
    }

    /// Queues a refresh of the stale and early-refreshed hits, and counts the early ones.
    fn refresh_hits(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        keys: &[Vec<u8>],
        stale: Vec<usize>,
        early: Vec<usize>,
        generation: u64,
    ) {
        if !early.is_empty() {
            self.shared.metrics.record_n(
                Tier::Remote,
                &group.name,
                Outcome::EarlyRefresh,
                early.len() as u64,
            );
        }
        if stale.is_empty() && early.is_empty() {
            return;
        }
        let due = stale.into_iter().chain(early);
        let (entities, keys) = due.map(|i| (entities[i].clone(), keys[i].clone())).unzip();
        self.refresh(group, entities, keys, generation);
    }

    /// Reads the missed entities (at positions `missed`) from the tier below, once per key
    /// however many requests missed it at the same time, learning how long such reads take;
    /// whoever reads a key queues its back-fill, if the key is admitted, stamped with the
    /// `generation` read before the tier below was.
    async fn read_below(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        keys: &[Vec<u8>],
        missed: &[usize],
        generation: u64,
    ) -> Result<Vec<Found>> {
        let admitted = self.admitted(group, keys, missed);
        let missed_keys: Vec<Vec<u8>> = missed.iter().map(|&i| keys[i].clone()).collect();
        let admitted = &admitted;
        let answers = self
            .shared
            .flights
            .read(&missed_keys, |asked: Vec<usize>| async move {
                let wanted: Vec<EntityKey> =
                    asked.iter().map(|&j| entities[missed[j]].clone()).collect();
                let started = std::time::Instant::now();
                let found = read_next(&*self.shared.next, group, &wanted).await?;
                self.shared.costs.observe(&group.name, started.elapsed());
                let fills = asked
                    .iter()
                    .zip(&found)
                    .filter(|(&j, _)| admitted[j])
                    .filter_map(|(&j, f)| {
                        fill_for(group, keys[missed[j]].clone(), f.clone(), generation)
                    })
                    .collect();
                self.enqueue(fills);
                Ok(found)
            })
            .await?;
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Found::Missing))
            .collect())
    }

    /// Counts the misses with the doorkeeper: which of them may be back-filled.
    fn admitted(&self, group: &FeatureGroup, keys: &[Vec<u8>], missed: &[usize]) -> Vec<bool> {
        let admitted: Vec<bool> = missed
            .iter()
            .map(|&i| self.shared.doorkeeper.admit(&group.serving, &keys[i]))
            .collect();
        let refused = admitted.iter().filter(|a| !**a).count() as u64;
        if refused > 0 {
            self.shared
                .metrics
                .record_n(Tier::Remote, &group.name, Outcome::NotAdmitted, refused);
        }
        admitted
    }

    fn count(&self, group: &str, hits: usize, negative: usize, stale: usize, misses: usize) {
        let s = &self.shared.stats;
        bump(&s.hits, hits);
        bump(&s.negative_hits, negative);
        bump(&s.stale, stale);
        bump(&s.misses, misses);
        let m = &self.shared.metrics;
        for (outcome, n) in [
            (Outcome::Hit, hits),
            (Outcome::NegativeHit, negative),
            (Outcome::Stale, stale),
            (Outcome::Miss, misses),
        ] {
            if n > 0 {
                m.record_n(Tier::Remote, group, outcome, n as u64);
            }
        }
    }
}

/// Reads entities from the next tier in the cache's shape: attribute records, or each
/// entity's newest records up to the group's series length.
pub(super) async fn read_next(
    next: &dyn RecordReader,
    group: &FeatureGroup,
    entities: &[EntityKey],
) -> Result<Vec<Found>> {
    match group.kind {
        GroupKind::Attribute => Ok(next
            .get_attributes(group, entities)
            .await?
            .into_iter()
            .map(|r| r.map_or(Found::Missing, Found::Record))
            .collect()),
        GroupKind::Timeseries => {
            let query = TimeseriesQuery {
                top_n: RemoteTier::series_len(group),
                since: None,
            };
            Ok(next
                .scan_timeseries(group, entities, query)
                .await?
                .into_iter()
                .map(Found::Series)
                .collect())
        }
    }
}

/// The records of a cached series that a query asks for.
fn select(records: &[Record], query: TimeseriesQuery) -> Vec<Record> {
    records
        .iter()
        .take_while(|r| query.since.is_none_or(|since| r.event_time >= since))
        .take(query.top_n)
        .cloned()
        .collect()
}

#[async_trait]
impl RecordReader for RemoteTier {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        if !Self::serves(group) || entities.is_empty() {
            return self.shared.next.get_attributes(group, entities).await;
        }
        let storage = group.storage_name();
        let keys: Vec<Vec<u8>> = entities.iter().map(|e| self.key(&storage, e)).collect();
        let Some(Looked { generation, values }) = self.lookup(group, &keys).await else {
            return self.shared.next.get_attributes(group, entities).await;
        };
        let now = now_ms();
        let mut out: Vec<Option<Record>> = vec![None; entities.len()];
        let mut missed: Vec<usize> = Vec::new();
        let (mut stale, mut early) = (Vec::new(), Vec::new());
        let (mut hits, mut negative) = (0, 0);
        for (i, value) in values.into_iter().enumerate() {
            match self.decode(value, None, generation) {
                Some(Decoded {
                    cached: Cached::Record(r),
                    soft_deadline,
                    ..
                }) => {
                    hits += 1;
                    if now >= soft_deadline {
                        stale.push(i);
                    } else if self.refresh_early(group, now, soft_deadline) {
                        early.push(i);
                    }
                    out[i] = Some(r);
                }
                Some(Decoded {
                    cached: Cached::Missing,
                    ..
                }) => negative += 1,
                _ => missed.push(i),
            }
        }
        self.count(&group.name, hits, negative, stale.len(), missed.len());
        self.refresh_hits(group, entities, &keys, stale, early, generation);
        if missed.is_empty() {
            return Ok(out);
        }
        let found = self
            .read_below(group, entities, &keys, &missed, generation)
            .await?;
        for (i, found) in missed.into_iter().zip(found) {
            if let Found::Record(r) = found {
                out[i] = Some(r);
            }
        }
        Ok(out)
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        let len = Self::series_len(group);
        if !Self::serves(group) || entities.is_empty() || query.top_n > len {
            return self
                .shared
                .next
                .scan_timeseries(group, entities, query)
                .await;
        }
        let storage = group.storage_name();
        let keys: Vec<Vec<u8>> = entities.iter().map(|e| self.key(&storage, e)).collect();
        let Some(Looked { generation, values }) = self.lookup(group, &keys).await else {
            return self
                .shared
                .next
                .scan_timeseries(group, entities, query)
                .await;
        };
        let now = now_ms();
        let mut out: Vec<Vec<Record>> = vec![Vec::new(); entities.len()];
        let mut missed: Vec<usize> = Vec::new();
        let (mut stale, mut early) = (Vec::new(), Vec::new());
        let (mut hits, mut negative) = (0, 0);
        for (i, value) in values.into_iter().enumerate() {
            match self.decode(value, Some(query), generation) {
                Some(Decoded {
                    cached:
                        Cached::Series {
                            records,
                            held,
                            complete,
                        },
                    soft_deadline,
                    ..
                }) if complete || held >= query.top_n => {
                    hits += 1;
                    if now >= soft_deadline {
                        stale.push(i);
                    } else if self.refresh_early(group, now, soft_deadline) {
                        early.push(i);
                    }
                    out[i] = records;
                }
                Some(Decoded {
                    cached: Cached::Missing,
                    ..
                }) => negative += 1,
                _ => missed.push(i),
            }
        }
        self.count(&group.name, hits, negative, stale.len(), missed.len());
        self.refresh_hits(group, entities, &keys, stale, early, generation);
        if missed.is_empty() {
            return Ok(out);
        }
        let found = self
            .read_below(group, entities, &keys, &missed, generation)
            .await?;
        for (i, found) in missed.into_iter().zip(found) {
            if let Found::Series(records) = found {
                out[i] = select(&records, query);
            }
        }
        Ok(out)
    }
}
