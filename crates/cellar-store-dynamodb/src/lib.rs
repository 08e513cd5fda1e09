//! The DynamoDB backend of Cellar's online store: [`DynamoStore`], an
//! [`OnlineStore`](cellar_store::OnlineStore) on one DynamoDB table through `aws-sdk-dynamodb`,
//! with the semantics of the embedded store (the conformance suite checks both).
//!
//! Key model: one table holds every group, one item per record.
//!
//! ```text
//! pk (S)              sk (N)                  t (N)       v (B)         ver (N)  ttl (N)
//! <group>#<entity>    -9223372036854775809    event time  codec bytes   token    expiry (s)
//! <group>#<entity>    <event time>            event time  codec bytes   token    expiry (s)
//! ```
//!
//! - An entity's time series is one partition sorted by event time, so a newest-first top-N
//!   read is one Query (`ScanIndexForward=false`, `Limit=N`), and `since` and `max_age` are its
//!   key condition `sk >= :oldest`.
//! - The attribute record sits in the same partition under a sort key one below `i64::MIN`,
//!   which no event time can take: a series query never reaches it, so a group name used for
//!   both kinds of group keeps them apart, as the embedded store's two keyspaces do.
//! - Group names may not contain `#`: the first `#` of a partition key then ends the group, and
//!   the prefix `<group>#` names exactly one group's items whatever the entity keys hold (entity
//!   `b#c` of group `a` is never group `a#b`'s entity `c`). `trim` scans by that prefix.
//! - `t` repeats the event time so that conditional writes compare it without decoding `v`.
//! - `ver` is a random token that every write replaces; an update's conditional write requires
//!   the token it read. A counter would be restarted by a delete and re-create, and could
//!   come back to the value an update read.
//! - `ttl` lets DynamoDB's TTL delete records past their group's `max_age` in the background
//!   (`trim` does the same on demand).
//!
//! Reads are strongly consistent: writers that read their own writes (updates, ingestion
//! retries) and serving right after ingestion must see the latest record.
//!
//! Writes: an attribute put is a PutItem conditioned on the stored event time being older, so
//! concurrent writers need no lock and the newest event time wins; writes of one entity within
//! a batch are judged in order. Time-series puts are BatchWriteItems, after which an entity is
//! trimmed to `max_records` now and then rather than on every put (the embedded store's
//! rule, `trim_due`); reads never return more than `max_records`, and `trim` removes the
//! rest. An update is an optimistic read-modify-write, retried on conflict (see `update.rs`).
//! DynamoDB has no atomic multi-item write short of transactions (which cost twice as much and
//! which dynalite lacks), so a backend error part-way leaves part of a batch written; every
//! write can be retried safely (a repeated attribute write is `Stale`, a repeated time-series
//! write replaces itself). Records are checked and encoded before anything is sent, so bad
//! input fails a whole batch untouched.

mod keys;
mod requests;
mod table;
mod trim;
mod update;

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use aws_sdk_dynamodb::Client;
use aws_smithy_http_client::tls;
use futures::{StreamExt, TryStreamExt};

use cellar_spec::time::now_ms;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind};
use cellar_store::{
    OnlineStore, PutOutcome, Record, RecordReader, Result, StoreError, TimeseriesQuery, Updater,
    Write,
};

use keys::{EVENT_TIME, PK, SK, VALUE};
use requests::{BATCH_GET_KEYS, CONCURRENCY};

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoConfig {
    /// The table holding every group's records.
    pub table: String,
    /// The AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// A DynamoDB-compatible endpoint to use instead of AWS's (a local server in tests), e.g.
    /// `http://127.0.0.1:8000`.
    pub endpoint: Option<String>,
}

/// The DynamoDB [`OnlineStore`]. Cloning is cheap and clones share one client.
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

impl DynamoStore {
    /// A store on `config.table`, with credentials from the usual AWS sources. With an endpoint
    /// set and no `AWS_ACCESS_KEY_ID` in the environment, requests are signed with dummy static
    /// credentials, which local servers accept. Nothing is sent yet: see
    /// [`DynamoStore::ensure_table`].
    pub async fn connect(config: DynamoConfig) -> Result<DynamoStore> {
        table::check_table_name(&config.table)?;
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region))
            .http_client(https);
        if let Some(endpoint) = config.endpoint {
            loader = loader.endpoint_url(endpoint);
            if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                loader = loader.credentials_provider(Credentials::new(
                    "cellar-local",
                    "cellar-local",
                    None,
                    None,
                    "cellar-local-endpoint",
                ));
            }
        }
        let sdk = loader.load().await;
        Ok(DynamoStore {
            client: Client::new(&sdk),
            table: config.table,
        })
    }

    /// The table the store reads and writes.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The attribute records of distinct partition keys, by key.
    async fn get_attribute_items(
        &self,
        group: &str,
        pks: Vec<String>,
    ) -> Result<HashMap<String, Record>> {
        let mut batches = Vec::with_capacity(pks.len().div_ceil(BATCH_GET_KEYS));
        let mut pks = pks.into_iter();
        loop {
            let batch: Vec<_> = pks
                .by_ref()
                .take(BATCH_GET_KEYS)
                .map(|pk| keys::attribute_key(&pk))
                .collect();
            if batch.is_empty() {
                break;
            }
            batches.push(batch);
        }
        let answers: Vec<_> = futures::stream::iter(batches)
            .map(|batch| self.batch_get(batch, &[PK, VALUE]))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut records = HashMap::new();
        for item in answers.into_iter().flatten() {
            let Some(pk) = keys::string_of(&item, PK) else {
                continue;
            };
            records.insert(pk.to_owned(), keys::decode_item(group, &item)?);
        }
        Ok(records)
    }

    /// Up to `limit` records of a series, newest first, none older than `oldest`.
    async fn query_series(
        &self,
        group: &str,
        pk: &str,
        oldest: i64,
        limit: usize,
    ) -> Result<Vec<Record>> {
        let mut records = Vec::new();
        let mut start = None;
        while records.len() < limit {
            let page_limit = i32::try_from(limit - records.len()).unwrap_or(i32::MAX);
            let answer = self
                .throttled(|| {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("#pk = :pk AND #sk >= :oldest")
                        .expression_attribute_names("#pk", PK)
                        .expression_attribute_names("#sk", SK)
                        .expression_attribute_names("#v", VALUE)
                        .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
                        .expression_attribute_values(":oldest", keys::number(oldest))
                        .projection_expression("#v")
                        .scan_index_forward(false)
                        .consistent_read(true)
                        .limit(page_limit)
                        .set_exclusive_start_key(start.clone())
                        .send()
                })
                .await
                .map_err(|e| self.backend_error("Query", e))?;
            for item in answer.items.unwrap_or_default() {
                records.push(keys::decode_item(group, &item)?);
            }
            start = answer.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        records.truncate(limit);
        Ok(records)
    }

    /// The keys of a series newest first, none older than `oldest`, skipping the newest `skip`.
    async fn series_keys(
        &self,
        pk: &str,
        oldest: i64,
        skip: usize,
    ) -> Result<Vec<HashMap<String, AttributeValue>>> {
        let mut found = Vec::new();
        let mut skipped = 0;
        let mut start = None;
        loop {
            // The first page stops at the records kept, so an entity within its retention
            // costs one short page.
            let page_limit =
                (skipped < skip).then(|| i32::try_from(skip - skipped).unwrap_or(i32::MAX));
            let answer = self
                .throttled(|| {
                    self.client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("#pk = :pk AND #sk >= :oldest")
                        .expression_attribute_names("#pk", PK)
                        .expression_attribute_names("#sk", SK)
                        .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()))
                        .expression_attribute_values(":oldest", keys::number(oldest))
                        .projection_expression("#pk, #sk")
                        .scan_index_forward(false)
                        .consistent_read(true)
                        .set_limit(page_limit)
                        .set_exclusive_start_key(start.clone())
                        .send()
                })
                .await
                .map_err(|e| self.backend_error("Query", e))?;
            for key in answer.items.unwrap_or_default() {
                if skipped < skip {
                    skipped += 1;
                } else {
                    found.push(key);
                }
            }
            start = answer.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }

    /// Writes of one entity's attribute record, judged in order. Returns each write's index in
    /// the batch with its outcome.
    async fn put_entity_attributes(
        &self,
        group: &FeatureGroup,
        pk: &str,
        writes: Vec<AttributeWrite>,
    ) -> Result<Vec<(usize, PutOutcome)>> {
        let mut outcomes = Vec::with_capacity(writes.len());
        // The event time applied earlier in this batch: a write no newer is stale without
        // asking, as it would be under the embedded store's lock.
        let mut applied: Option<i64> = None;
        for AttributeWrite {
            index,
            event_time,
            bytes,
        } in writes
        {
            if applied.is_some_and(|t| t >= event_time) {
                outcomes.push((index, PutOutcome::Stale));
                continue;
            }
            let item = keys::item(group, keys::attribute_key(pk), event_time, bytes);
            let answer = self
                .throttled(|| {
                    self.client
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(item.clone()))
                        .condition_expression("attribute_not_exists(#pk) OR #t < :t")
                        .expression_attribute_names("#pk", PK)
                        .expression_attribute_names("#t", EVENT_TIME)
                        .expression_attribute_values(":t", keys::number(event_time))
                        .send()
                })
                .await;
            match answer {
                Ok(_) => {
                    applied = Some(event_time);
                    outcomes.push((index, PutOutcome::Applied));
                }
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                {
                    outcomes.push((index, PutOutcome::Stale));
                }
                Err(e) => return Err(self.backend_error("PutItem", e)),
            }
        }
        Ok(outcomes)
    }

    async fn put_attributes(
        &self,
        group: &FeatureGroup,
        writes: &[Write],
    ) -> Result<Vec<PutOutcome>> {
        // Per entity in order of first appearance, its writes in batch order.
        let mut by_entity: Vec<(String, Vec<AttributeWrite>)> = Vec::new();
        let mut position: HashMap<String, usize> = HashMap::new();
        for (index, w) in writes.iter().enumerate() {
            let pk = keys::writable_partition_key(group, &w.entity)?;
            let bytes = keys::encode_record(group, &w.entity, &pk, &w.record)?;
            let slot = *position.entry(pk.clone()).or_insert_with(|| {
                by_entity.push((pk, Vec::new()));
                by_entity.len() - 1
            });
            by_entity[slot].1.push(AttributeWrite {
                index,
                event_time: w.record.event_time,
                bytes,
            });
        }
        let judged: Vec<Vec<(usize, PutOutcome)>> = futures::stream::iter(by_entity)
            .map(|(pk, writes)| async move { self.put_entity_attributes(group, &pk, writes).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut outcomes = vec![PutOutcome::Stale; writes.len()];
        for (index, outcome) in judged.into_iter().flatten() {
            outcomes[index] = outcome;
        }
        Ok(outcomes)
    }

    async fn put_timeseries(
        &self,
        group: &FeatureGroup,
        writes: &[Write],
    ) -> Result<Vec<PutOutcome>> {
        // By entity, then event time: a later write of the same key in the batch replaces an
        // earlier one, as it would across batches (and one BatchWriteItem may not hold both).
        let mut by_entity: BTreeMap<String, BTreeMap<i64, Vec<u8>>> = BTreeMap::new();
        for w in writes {
            let pk = keys::writable_partition_key(group, &w.entity)?;
            let bytes = keys::encode_record(group, &w.entity, &pk, &w.record)?;
            by_entity
                .entry(pk)
                .or_default()
                .insert(w.record.event_time, bytes);
        }
        let mut requests = Vec::with_capacity(writes.len());
        let mut trims = Vec::new();
        for (pk, series) in by_entity {
            if let Some(max) = group.retention.max_records {
                if trim_due(series.keys().copied(), series.len(), max) {
                    trims.push((pk.clone(), max));
                }
            }
            for (event_time, bytes) in series {
                let item = keys::item(group, keys::series_key(&pk, event_time), event_time, bytes);
                requests.push(put_request(item)?);
            }
        }
        self.batch_write(requests).await?;
        futures::stream::iter(trims)
            .map(|(pk, max)| async move { self.trim_series(&pk, i64::MIN, max as usize).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<u64>>()
            .await?;
        Ok(vec![PutOutcome::Applied; writes.len()])
    }

    /// Deletes the records of a series past the newest `keep`, none older than `oldest`.
    /// Returns how many were removed.
    async fn trim_series(&self, pk: &str, oldest: i64, keep: usize) -> Result<u64> {
        let surplus = self.series_keys(pk, oldest, keep).await?;
        let removed = surplus.len() as u64;
        self.delete_keys(surplus).await?;
        Ok(removed)
    }

    async fn delete_keys(&self, keys: Vec<HashMap<String, AttributeValue>>) -> Result<()> {
        let requests = keys
            .into_iter()
            .map(delete_request)
            .collect::<Result<Vec<_>>>()?;
        self.batch_write(requests).await
    }
}

/// One attribute write, checked and encoded.
struct AttributeWrite {
    /// Its position in the batch.
    index: usize,
    event_time: i64,
    bytes: Vec<u8>,
}

fn put_request(item: HashMap<String, AttributeValue>) -> Result<WriteRequest> {
    let put = PutRequest::builder()
        .set_item(Some(item))
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot build a PutRequest: {e}")))?;
    Ok(WriteRequest::builder().put_request(put).build())
}

fn delete_request(key: HashMap<String, AttributeValue>) -> Result<WriteRequest> {
    let delete = DeleteRequest::builder()
        .set_key(Some(key))
        .build()
        .map_err(|e| StoreError::Backend(format!("cannot build a DeleteRequest: {e}")))?;
    Ok(WriteRequest::builder().delete_request(delete).build())
}

/// Whether a put of new records at `event_times` (`count` of them) into one entity's series
/// trims it to `max` now. Trimming queries every key of the entity, so doing it on every put
/// would make appends cost O(max); instead a put trims with a probability of about
/// `count / (max / 8)`, decided by a hash of the event times, so that an entity holds about
/// `max * 9 / 8` records at most between trims (reads stop at `max`, `trim` removes the rest)
/// at an amortised cost of a few keys read per append. The embedded store uses the same rule.
fn trim_due(event_times: impl IntoIterator<Item = i64>, count: usize, max: u32) -> bool {
    let every = u64::from(max / 8).max(1);
    if count as u64 >= every {
        return true;
    }
    event_times.into_iter().any(|t| {
        // splitmix64: event times in a pattern (whole seconds, say) still trim at the rate.
        let mut z = (t as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)).is_multiple_of(every)
    })
}

/// A time-series group's read bounds at `now`: the oldest event time served and the most
/// records per entity.
fn series_bounds(group: &FeatureGroup, query: TimeseriesQuery, now: i64) -> (i64, usize) {
    let oldest = [keys::age_cutoff(group, now), query.since]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(i64::MIN);
    // Puts trim lazily (see `trim_due`): never serve past the retention.
    let limit = match group.retention.max_records {
        Some(max) => query.top_n.min(max as usize),
        None => query.top_n,
    };
    (oldest, limit)
}

/// Distinct partition keys of `entities` in order of first appearance, skipping entities too
/// long to have any record.
fn distinct_partition_keys(group: &str, entities: &[EntityKey]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    entities
        .iter()
        .filter_map(|e| keys::partition_key(group, e))
        .filter(|pk| seen.insert(pk.clone()))
        .collect()
}

#[async_trait]
impl RecordReader for DynamoStore {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        keys::check_group_name(group)?;
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let storage = group.storage_name();
        let pks = distinct_partition_keys(&storage, entities);
        let found = self.get_attribute_items(&group.name, pks).await?;
        Ok(entities
            .iter()
            .map(|e| keys::partition_key(&storage, e).and_then(|pk| found.get(&pk).cloned()))
            .collect())
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        keys::check_group_name(group)?;
        let (oldest, limit) = series_bounds(group, query, now_ms());
        // Owned keys: streams over borrowed items trip the `Send` bound of async-trait.
        let storage = group.storage_name();
        let pks: Vec<Option<String>> = entities
            .iter()
            .map(|e| keys::partition_key(&storage, e).filter(|_| limit > 0))
            .collect();
        futures::stream::iter(pks)
            .map(|pk| async move {
                match pk {
                    Some(pk) => self.query_series(&group.name, &pk, oldest, limit).await,
                    None => Ok(Vec::new()),
                }
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await
    }
}

#[async_trait]
impl OnlineStore for DynamoStore {
    async fn put(&self, group: &FeatureGroup, writes: &[Write]) -> Result<Vec<PutOutcome>> {
        keys::check_group_name(group)?;
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        match group.kind {
            GroupKind::Attribute => self.put_attributes(group, writes).await,
            GroupKind::Timeseries => self.put_timeseries(group, writes).await,
        }
    }

    async fn update(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: Updater,
    ) -> Result<Vec<Option<Record>>> {
        self.update_attributes(group, entities, updater).await
    }

    async fn delete(&self, group: &FeatureGroup, entities: &[EntityKey]) -> Result<()> {
        keys::check_group_name(group)?;
        let pks = distinct_partition_keys(&group.storage_name(), entities);
        match group.kind {
            GroupKind::Attribute => {
                self.delete_keys(pks.iter().map(|pk| keys::attribute_key(pk)).collect())
                    .await
            }
            GroupKind::Timeseries => {
                futures::stream::iter(pks)
                    .map(|pk| async move { self.trim_series(&pk, i64::MIN, 0).await })
                    .buffer_unordered(CONCURRENCY)
                    .try_collect::<Vec<u64>>()
                    .await?;
                Ok(())
            }
        }
    }

    async fn trim(&self, group: &FeatureGroup, now: i64) -> Result<u64> {
        keys::check_group_name(group)?;
        self.trim_group(group, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_due_always_for_small_limits_and_batches_as_large_as_the_interval() {
        assert!(trim_due([5], 1, 3));
        assert!(trim_due(0..6, 6, 50));
    }

    #[test]
    fn trim_due_about_once_every_max_over_8_appends() {
        let due = (0..80_000).filter(|t| trim_due([*t], 1, 80)).count();
        assert!(
            (7_000..13_000).contains(&due),
            "{due} trims in 80000 appends"
        );
    }

    #[test]
    fn series_bounds_take_the_later_of_since_and_max_age_and_cap_at_max_records() {
        let mut group = cellar_store::conformance::timeseries_group(
            "clicks",
            Some(5),
            Some(std::time::Duration::from_secs(1)),
        );
        let query = TimeseriesQuery {
            top_n: 100,
            since: Some(500),
        };
        assert_eq!(series_bounds(&group, query, 10_000), (9_000, 5));
        assert_eq!(series_bounds(&group, query, 1_000), (500, 5));
        group.retention = Default::default();
        assert_eq!(series_bounds(&group, query, 10_000), (500, 100));
        let query = TimeseriesQuery {
            top_n: 3,
            since: None,
        };
        assert_eq!(series_bounds(&group, query, 10_000), (i64::MIN, 3));
    }
}
