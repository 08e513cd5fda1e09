//! The Redis backend of Cellar's online store, for small deployments that already run a
//! Redis: [`RedisStore`], an [`OnlineStore`](cellar_store::OnlineStore) on a standalone Redis
//! (or a primary with replicas; not Redis Cluster) through `redis`'s reconnecting multiplexed
//! [`ConnectionManager`], with the semantics of the embedded store (the conformance suite
//! checks both).
//!
//! Layout:
//! - this file: [`RedisConfig`], [`RedisStore`], reads, puts and deletes;
//! - `keys.rs`: the key model and value layout below, expiry times;
//! - `scripts.rs`: the Lua scripts behind every write, run pipelined with `EVALSHA`;
//! - `update.rs`: read-modify-write with optimistic concurrency;
//! - `trim.rs`: `trim`, a `SCAN` of one group's keys;
//! - `tls.rs`: [`client`] and [`cluster_client`], the Redis clients of the store and of the
//!   cache's remote tier, with TLS settings.
//!
//! Depends on `cellar-store` and `cellar-spec` only.
//!
//! Key model (`<prefix>` is [`RedisConfig::key_prefix`], so deployments and tests can share a
//! Redis):
//!
//! ```text
//! <prefix>a:<group>#<entity>   string      format:u8 (1)  event_time:8  token:8  record
//! <prefix>s:<group>#<entity>   sorted set  member = event_time:8  record, score = event time
//! ```
//!
//! - `record` is the record in `cellar_store::codec`'s bytes. `event_time:8` is the event
//!   time big-endian with the sign bit flipped, so byte order is numeric order: the scripts
//!   compare event times without decoding records, and members of equal scores (scores are
//!   doubles, exact up to 2^53 ms) still sort by event time.
//! - Attributes and series of one group name have different keys, as the embedded store's two
//!   keyspaces keep them apart. Group names may not contain `#` (spec names are identifiers):
//!   the first `#` after the kind ends the group, so entity `b#c` of group `a` is never
//!   another group's, and `<prefix>a:<group>#*` matches exactly one group's keys for `trim`.
//! - A newest-first top-N read of a series with `since` and `max_age` is one
//!   `ZREVRANGEBYSCORE key +inf <oldest> LIMIT 0 N`; the series of every entity of a call go
//!   in one pipeline, and attribute records in one `MGET`: one round trip per call.
//! - `token` is random per write: an update's compare-and-set requires the token it read,
//!   which a delete and re-create cannot bring back as a counter could.
//!
//! Writes are Lua scripts, each on one key, so each is atomic and concurrent writers need no
//! lock: an attribute put writes only over an older event time (ties are stale), judged write
//! by write within a batch; a series put replaces the record of an equal event time and trims
//! the series to `max_records` with `ZREMRANGEBYRANK` in the same script (cheap in a sorted set,
//! so on every put rather than now and then as the embedded store does). An update reads,
//! lets the updater answer in Rust, then writes by a compare-and-set script, reading and
//! answering again on a conflict (see `update.rs`). A batch's scripts go in one pipeline.
//!
//! Retention: reads skip series records past `max_age` and never return more than
//! `max_records`; `trim` removes records past either. Attribute records past `max_age` are
//! still read (serving answers "expired") until `trim` removes them. Beyond that, Redis
//! expires keys by itself an hour past `max_age` (attribute keys by their record's event
//! time, series keys by their newest record's), so entities that stop being written leave
//! memory even where no process trims; a group without `max_age` has keys without expiry.
//!
//! Durability is Redis's: a write is acknowledged once Redis has applied it in memory, and
//! ingestion commits source offsets then. Run Redis with `appendonly yes` (and `appendfsync
//! always` where losing the last second of writes on a crash is not acceptable); without
//! persistence a Redis restart loses the store. Records are checked and encoded before
//! anything is sent, so bad input fails a whole batch untouched; a connection lost part-way
//! through a pipeline can leave part of a batch written, and every write can be retried
//! safely (a repeated attribute write is stale, a repeated series write replaces itself).
//!
//! Uses only commands of Redis 2.8 and later; tested against Redis 7.

mod keys;
mod scripts;
mod tls;
mod trim;
mod update;

pub use tls::{client, cluster_client, RedisSettingError, RedisTls};

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{RedisError, Value};

use cellar_spec::secret;
use cellar_spec::time::now_ms;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind};
use cellar_store::{
    OnlineStore, PutOutcome, Record, RecordReader, Result, StoreError, TimeseriesQuery, Updater,
    Write,
};

use keys::Keys;
use scripts::SCRIPTS;

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// A standalone Redis, `redis://[:password@]host:port[/db]` (`rediss://` for TLS); the
    /// password may be a secret reference (`redis://:${REDIS_PASSWORD}@host`), read when
    /// connecting.
    pub url: String,
    /// The CA and client certificate of a `rediss://` URL.
    pub tls: RedisTls,
    /// Put before every key, so deployments (and tests) can share a Redis.
    pub key_prefix: String,
    /// Longest wait for a connection to be made.
    pub connect_timeout: Duration,
    /// Longest wait for an answer; past it the call fails with a retryable error.
    pub response_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_owned(),
            tls: RedisTls::default(),
            key_prefix: "cellar:store:".to_owned(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(10),
        }
    }
}

/// The Redis [`OnlineStore`]. Cloning is cheap and clones share one connection.
#[derive(Clone)]
pub struct RedisStore {
    /// One multiplexed connection, reconnected by the manager when it breaks; every call
    /// pipelines its commands on it.
    conn: ConnectionManager,
    /// The key layout under the configured prefix.
    keys: Keys,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisStore")
            .field("key_prefix", &String::from_utf8_lossy(self.keys.prefix()))
            .finish_non_exhaustive()
    }
}

/// A failed Redis call as a store error: a key of the store's layout holding another type
/// (something else wrote under the prefix) is corrupt data, everything else a retryable
/// backend failure.
pub(crate) fn redis_error(group: &str, operation: &str, e: &RedisError) -> StoreError {
    // A pipeline's error carries the server errors of its failed commands.
    let wrong_type = e
        .clone()
        .into_server_errors()
        .is_some_and(|errors| errors.iter().any(|(_, e)| e.code() == "WRONGTYPE"));
    if wrong_type {
        return StoreError::Corrupt {
            group: group.to_owned(),
            reason: format!("Redis {operation}: a key of the group holds another type: {e}"),
        };
    }
    StoreError::Backend(format!("Redis {operation} failed: {e}"))
}

/// The integer a script answered, or the error it raised.
pub(crate) fn int_reply(group: &str, operation: &str, reply: Value) -> Result<i64> {
    match reply {
        Value::Int(n) => Ok(n),
        Value::ServerError(e) => Err(redis_error(group, operation, &RedisError::from(e))),
        other => Err(StoreError::Backend(format!(
            "Redis {operation} answered {other:?} where an integer was expected"
        ))),
    }
}

/// The expiry argument of the attribute scripts: ms since the epoch, `""` for none.
fn expiry_arg(expiry: Option<i64>) -> String {
    expiry.map(|t| t.to_string()).unwrap_or_default()
}

impl RedisStore {
    /// Connects to the Redis at `config.url` and loads the store's scripts. Fails when the URL
    /// is invalid or Redis does not answer; once connected, a lost connection is made again
    /// by the next call.
    pub async fn connect(config: RedisConfig) -> Result<RedisStore> {
        let url = secret::resolve(&config.url)
            .map_err(|e| StoreError::Backend(format!("the Redis URL: {e}")))?;
        let client = client(url.expose(), &config.tls, "store.redis", "")
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout));
        let mut conn = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot connect to Redis: {e}")))?;
        scripts::load(&mut conn)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot load the store's scripts: {e}")))?;
        Ok(RedisStore {
            conn,
            keys: Keys::new(&config.key_prefix),
        })
    }

    /// The prefix of every key of the store.
    pub fn key_prefix(&self) -> String {
        String::from_utf8_lossy(self.keys.prefix()).into_owned()
    }

    /// Deletes every key under the store's prefix (every group's records) and returns how
    /// many there were. With an empty prefix that is every key of the Redis database.
    pub async fn clear(&self) -> Result<u64> {
        let pattern = self.keys.all_pattern();
        let mut removed = 0;
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan_page(cursor, &pattern, "").await?;
            if !keys.is_empty() {
                let mut del = redis::cmd("DEL");
                del.arg(keys);
                removed += del
                    .query_async::<u64>(&mut self.conn.clone())
                    .await
                    .map_err(|e| redis_error("", "DEL", &e))?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// The stored values of attribute keys, in order, `None` for missing keys.
    async fn mget(&self, group: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for key in keys {
            mget.arg(&key[..]);
        }
        let values: Vec<Option<Vec<u8>>> = mget
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error(group, "MGET", &e))?;
        if values.len() != keys.len() {
            return Err(StoreError::Backend(format!(
                "Redis MGET of {} keys answered {} values",
                keys.len(),
                values.len()
            )));
        }
        Ok(values)
    }

    async fn put_attributes(
        &self,
        group: &FeatureGroup,
        writes: &[Write],
    ) -> Result<Vec<PutOutcome>> {
        let now = now_ms();
        let mut outcomes = vec![PutOutcome::Stale; writes.len()];
        // The newest event time sent per key in this batch: a later write no newer is stale
        // whatever Redis answers for the earlier one, so it is not sent.
        let mut sent: HashMap<Vec<u8>, i64> = HashMap::new();
        let mut calls = Vec::with_capacity(writes.len());
        let mut sent_indices = Vec::with_capacity(writes.len());
        let storage = group.storage_name();
        for (index, w) in writes.iter().enumerate() {
            let value = keys::attribute_value(group, &w.entity, &w.record)?;
            let key = self.keys.attribute(&storage, &w.entity);
            let event_time = w.record.event_time;
            if sent.get(&key).is_some_and(|t| *t >= event_time) {
                continue;
            }
            let mut call = scripts::call(&SCRIPTS.put_attribute, &key);
            call.arg(value)
                .arg(expiry_arg(keys::attribute_expiry(group, event_time, now)));
            sent.insert(key, event_time);
            calls.push(call);
            sent_indices.push(index);
        }
        let replies = scripts::run(&mut self.conn.clone(), calls)
            .await
            .map_err(|e| redis_error(&group.name, "put", &e))?;
        for (index, reply) in sent_indices.into_iter().zip(replies) {
            if int_reply(&group.name, "put", reply)? == 1 {
                outcomes[index] = PutOutcome::Applied;
            }
        }
        Ok(outcomes)
    }

    async fn put_timeseries(
        &self,
        group: &FeatureGroup,
        writes: &[Write],
    ) -> Result<Vec<PutOutcome>> {
        let now = now_ms().to_string();
        let grace = (keys::EXPIRED_GRACE.as_millis() as u64).to_string();
        let max_ttl = keys::MAX_TTL_MS.to_string();
        let (max_records, max_age) = (keys::max_records_arg(group), keys::max_age_arg(group));
        // One script call per entity, in order of first appearance, its records in batch order.
        let mut calls = Vec::new();
        let mut slots: HashMap<Vec<u8>, usize> = HashMap::new();
        let storage = group.storage_name();
        for w in writes {
            let member = keys::series_member(group, &w.entity, &w.record)?;
            let key = self.keys.series(&storage, &w.entity);
            let slot = *slots.entry(key).or_insert_with_key(|key| {
                let mut call = scripts::call(&SCRIPTS.put_series, key);
                call.arg(&max_records)
                    .arg(&max_age)
                    .arg(&now)
                    .arg(&grace)
                    .arg(&max_ttl);
                calls.push(call);
                calls.len() - 1
            });
            calls[slot]
                .arg(keys::score(w.record.event_time))
                .arg(member);
        }
        let replies = scripts::run(&mut self.conn.clone(), calls)
            .await
            .map_err(|e| redis_error(&group.name, "put", &e))?;
        for reply in replies {
            int_reply(&group.name, "put", reply)?;
        }
        Ok(vec![PutOutcome::Applied; writes.len()])
    }
}

/// A time-series read's bounds at `now`: the oldest event time served and the most records
/// per entity.
fn series_bounds(group: &FeatureGroup, query: TimeseriesQuery, now: i64) -> (i64, usize) {
    let oldest = [keys::age_cutoff(group, now), query.since]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(i64::MIN);
    // A `max_records` lowered since the last writes holds until `trim`: never serve past it.
    let limit = match group.retention.max_records {
        Some(max) => query.top_n.min(max as usize),
        None => query.top_n,
    };
    (oldest, limit)
}

#[async_trait]
impl RecordReader for RedisStore {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        keys::check_group_name(group)?;
        let storage = group.storage_name();
        let keys: Vec<Vec<u8>> = entities
            .iter()
            .map(|e| self.keys.attribute(&storage, e))
            .collect();
        let values = self.mget(&group.name, &keys).await?;
        keys.iter()
            .zip(values)
            .map(|(key, value)| {
                value
                    .map(|v| keys::decode_attribute(&group.name, key, &v))
                    .transpose()
            })
            .collect()
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        keys::check_group_name(group)?;
        let (oldest, limit) = series_bounds(group, query, now_ms());
        if limit == 0 || entities.is_empty() {
            return Ok(vec![Vec::new(); entities.len()]);
        }
        let min = keys::score(oldest);
        // Redis reads the count as a signed 64-bit integer.
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let storage = group.storage_name();
        let keys: Vec<Vec<u8>> = entities
            .iter()
            .map(|e| self.keys.series(&storage, e))
            .collect();
        let mut pipe = redis::Pipeline::with_capacity(keys.len());
        for key in &keys {
            pipe.cmd("ZREVRANGEBYSCORE")
                .arg(&key[..])
                .arg("+inf")
                .arg(&min)
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        let answers: Vec<Vec<Vec<u8>>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error(&group.name, "ZREVRANGEBYSCORE", &e))?;
        keys.iter()
            .zip(answers)
            .map(|(key, members)| {
                let mut series = Vec::with_capacity(members.len());
                for member in members {
                    if let Some(record) = keys::decode_member(&group.name, key, &member, oldest)? {
                        series.push(record);
                    }
                }
                Ok(series)
            })
            .collect()
    }
}

#[async_trait]
impl OnlineStore for RedisStore {
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
        if entities.is_empty() {
            return Ok(());
        }
        let mut del = redis::cmd("DEL");
        let storage = group.storage_name();
        for entity in entities {
            match group.kind {
                GroupKind::Attribute => del.arg(self.keys.attribute(&storage, entity)),
                GroupKind::Timeseries => del.arg(self.keys.series(&storage, entity)),
            };
        }
        del.query_async::<Value>(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error(&group.name, "DEL", &e))?;
        Ok(())
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
    fn series_bounds_take_the_later_of_since_and_max_age_and_cap_at_max_records() {
        let mut group = cellar_store::conformance::timeseries_group(
            "clicks",
            Some(5),
            Some(Duration::from_secs(1)),
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
