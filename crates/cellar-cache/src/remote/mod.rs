//! The remote tier: a cache in Redis (standalone or cluster) shared by every serving process,
//! in front of the store or whatever tier sits below.
//!
//! Why it looks the way it does:
//!
//! - **One round trip per request and group.** The keys of a request's entities are read with
//!   one `MGET` (in a cluster the client splits it by slot and merges the answers in order);
//!   a time-series entity is one value holding its newest records, so it is one key too.
//! - **Redis never fails a read.** Every call has a timeout, errors and timeouts fall back to
//!   the tier below, and a [circuit breaker](crate::breaker) stops calling a Redis that keeps
//!   failing until a probe finds it back.
//! - **Misses are filled off the response path**, through a bounded queue drained by one
//!   background task that pipelines the writes; a full queue drops fills (counted) rather than
//!   hold a request up.
//! - **A newer event time always wins.** Every value carries the event time of what it holds,
//!   and all writes go through Lua scripts that compare it with the cached one inside Redis, so
//!   a slow back-fill that read an old record can never overwrite a fresher write-through, and
//!   an invalidation leaves a marker carrying the written event time (rather than deleting the
//!   key) so that a fill which read the store before the write cannot bring the old record back.
//! - **Soft and hard TTLs.** Redis expires a value at its hard TTL (with jitter); the soft
//!   deadline is stored in the value, and a read past it serves the value and queues a refresh.
//!   A read shortly before it may queue the refresh early (XFetch), so hot keys never go stale.
//! - **No stale copy after a blip.** A write whose update Redis may not have applied (breaker
//!   open, error, timeout) is remembered with its key and event time; until invalidation
//!   markers for those keys are written, this node reads the group from the store, and a
//!   background task writes them as soon as Redis answers. Past `skipped_keys` keys, the group
//!   is invalidated whole by moving its *generation* on: every value carries the generation it
//!   was made under (a fill, the one read before its store read), every `MGET` reads the
//!   group's generation too, and a value of an older generation is a miss. See `skipped`.
//! - **Admission.** A group with `admit_after: k` back-fills an entity on its k-th miss within
//!   the window (counted by each process), and its write-through only updates values already
//!   cached (elsewhere it leaves an invalidation marker, so the race guard above still holds).
//!
//! Key layout: `<key_prefix><group>#<entity>` (group names are identifiers, so the first `#`
//! ends the group), and `<key_prefix><group>!generation` for the group's generation (decimal;
//! none is 0). Value layout (integers big-endian; event times and deadlines are milliseconds
//! since the epoch, stored with the sign bit flipped so that byte order is numeric order,
//! which lets the scripts compare them without decoding; values of format 1, from before
//! generations, read as misses):
//!
//! ```text
//! value   = format:u8 (2)  kind:u8  event_time:8  soft_deadline:8  generation:8  payload
//! kind 1  record       payload = the record in the store's codec
//! kind 2  missing      no payload; event time = i64::MIN (negative cache)
//! kind 3  series       payload = complete:u8  entry*   (newest first)
//!                      entry   = event_time:8  len:u32  record in the store's codec
//! kind 4  invalidated  no payload; a write-around marker: reads miss, older fills lose
//! ```
//!
//! Layout:
//! - this file: [`RemoteConfig`], [`RemoteError`], the [`RemoteTier`] and the state it shares
//!   with its back-fill task;
//! - `read`: reads through the tier, stale and early refreshes, misses read from the tier below;
//! - `write`: write-through, write-around and invalidation after the store took a write;
//! - `backfill`: the bounded queue of fills and refreshes, and the task that writes them;
//! - `skipped`: writes whose update was skipped, and their invalidation once Redis answers;
//! - `generation`: the group generations learned from Redis;
//! - `value`: the value layout above, encoded and decoded;
//! - `scripts`: the Lua scripts every write goes through;
//! - `connection`: standalone or cluster connections, and script calls pipelined on them;
//! - `deadlines`: hard TTLs and soft deadlines from a group's serving policy;
//! - `stats`: the tier's counters.

mod backfill;
mod connection;
mod deadlines;
mod generation;
mod read;
mod scripts;
mod skipped;
mod stats;
mod value;
mod write;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellar_spec::{EntityKey, FeatureGroup, Tier};
use cellar_store::RecordReader;
use cellar_store_redis::RedisSettingError;
pub use cellar_store_redis::RedisTls;
use tokio::sync::mpsc;

use crate::admission::Doorkeeper;
use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::flight::Flights;
use crate::local::DEFAULT_CACHED_SERIES_LEN;
use crate::metrics::CacheMetrics;
use crate::ttl::ReadCosts;

pub use backfill::Found;
pub use stats::RemoteStatsSnapshot;

use backfill::{back_fill, Job};
use connection::Connection;
use generation::Generations;
use skipped::{keep_recovering, Skipped};
use stats::{load, RemoteStats};

/// How to reach Redis and how patient to be with it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// One URL: a standalone Redis. Several: seed nodes of a Redis Cluster. Their passwords
    /// may be secret references (`redis://:${REDIS_PASSWORD}@host`), read when connecting.
    pub urls: Vec<String>,
    /// The CA and client certificate of `rediss://` URLs.
    pub tls: RedisTls,
    /// Put before every key, so deployments (and tests) can share a Redis.
    pub key_prefix: String,
    /// Longest wait for a read; past it the read goes to the tier below.
    pub timeout: Duration,
    /// Longest wait for a batch of writes (back-fills, write-through, invalidations).
    pub write_timeout: Duration,
    /// Longest wait for a connection to be made.
    pub connect_timeout: Duration,
    /// When Redis is considered down.
    pub breaker: BreakerConfig,
    /// Back-fill jobs (one per read that missed, or per refresh) waiting to be written; more
    /// are dropped.
    pub backfill_capacity: usize,
    /// Most values written in one pipeline by the back-fill task.
    pub backfill_batch: usize,
    /// Keys of writes whose Redis update was skipped (breaker open, error, timeout) that are
    /// remembered, to invalidate once Redis answers again; past it, the group of the next
    /// skipped key is invalidated whole (its generation moves on).
    pub skipped_keys: usize,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            urls: vec!["redis://127.0.0.1:6379".to_owned()],
            tls: RedisTls::default(),
            key_prefix: "cellar:".to_owned(),
            timeout: Duration::from_millis(50),
            write_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_millis(500),
            breaker: BreakerConfig::default(),
            backfill_capacity: 4096,
            backfill_batch: 512,
            skipped_keys: 65_536,
        }
    }
}

/// Why a remote tier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("the remote cache tier needs at least one Redis URL")]
    NoUrl,
    #[error("invalid Redis configuration: {0}")]
    Redis(#[from] redis::RedisError),
    /// A secret the URLs refer to cannot be read.
    #[error("the Redis URLs: {0}")]
    Secret(#[from] cellar_spec::secret::SecretError),
    #[error(transparent)]
    Setting(#[from] RedisSettingError),
    #[error("the remote cache tier must be created inside a Tokio runtime")]
    NoRuntime,
}

/// State shared by the tier and its back-fill task.
struct Shared {
    conn: Connection,
    breaker: Breaker,
    stats: RemoteStats,
    metrics: CacheMetrics,
    next: Arc<dyn RecordReader>,
    timeout: Duration,
    write_timeout: Duration,
    batch: usize,
    /// Keys with a refresh queued, so a stale hot key is refreshed once.
    refreshing: Mutex<HashSet<Vec<u8>>>,
    /// Misses of entities not admitted yet, for groups that admit only after several.
    doorkeeper: Doorkeeper<Vec<u8>>,
    /// How long reads of the tier below take, per group: how early hot keys refresh.
    costs: ReadCosts,
    /// Misses being read from the tier below, so concurrent misses on a key make one read.
    flights: Flights<Vec<u8>, Found>,
    /// Taken by the back-fill task for each batch; holding it pauses back-fills.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Put before every key.
    key_prefix: String,
    /// Each group's generation as last read from Redis, stamped on the values written.
    generations: Generations,
    /// Writes whose Redis update was skipped, until their copies are invalidated.
    skipped: Skipped,
    /// Wakes the task that invalidates them.
    recover_soon: Arc<tokio::sync::Notify>,
}

/// The Redis tier. Implements [`RecordReader`] over the next tier (the store, usually),
/// serving each group only if its policy lists the remote tier.
pub struct RemoteTier {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Job>,
}

impl RemoteTier {
    /// A remote tier in front of `next`. Must be called inside a Tokio runtime, which runs the
    /// back-fill task; connects lazily, so it succeeds while Redis is down.
    pub fn new(
        config: RemoteConfig,
        next: Arc<dyn RecordReader>,
        metrics: CacheMetrics,
    ) -> std::result::Result<RemoteTier, RemoteError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| RemoteError::NoRuntime)?;
        let conn = Connection::open(&config)?;
        let shared = Arc::new(Shared {
            conn,
            breaker: Breaker::new(config.breaker.clone()),
            stats: RemoteStats::default(),
            metrics,
            next,
            timeout: config.timeout,
            write_timeout: config.write_timeout,
            batch: config.backfill_batch.max(1),
            refreshing: Mutex::default(),
            doorkeeper: Doorkeeper::default(),
            costs: ReadCosts::default(),
            flights: Flights::default(),
            gate: Arc::default(),
            key_prefix: config.key_prefix,
            generations: Generations::default(),
            skipped: Skipped::new(config.skipped_keys),
            recover_soon: Arc::default(),
        });
        let (queue, jobs) = mpsc::channel(config.backfill_capacity.max(1));
        handle.spawn(back_fill(shared.clone(), jobs));
        handle.spawn(keep_recovering(
            Arc::downgrade(&shared),
            shared.recover_soon.clone(),
            config.breaker.cool_down,
        ));
        Ok(RemoteTier { shared, queue })
    }

    fn serves(group: &FeatureGroup) -> bool {
        group.serving.tiers.contains(&Tier::Remote)
    }

    /// Series values hold this many records, so that most `top_n` can be answered.
    fn series_len(group: &FeatureGroup) -> usize {
        group
            .retention
            .max_records
            .map_or(DEFAULT_CACHED_SERIES_LEN, |n| n as usize)
            .max(1)
    }

    fn key(&self, group: &str, entity: &EntityKey) -> Vec<u8> {
        let prefix = &self.shared.key_prefix;
        let mut k = Vec::with_capacity(prefix.len() + group.len() + 1 + entity.0.len());
        k.extend_from_slice(prefix.as_bytes());
        k.extend_from_slice(group.as_bytes());
        k.push(b'#');
        k.extend_from_slice(entity.as_bytes());
        k
    }

    /// The tier's counters and breaker state.
    pub fn stats(&self) -> RemoteStatsSnapshot {
        let s = &self.shared.stats;
        RemoteStatsSnapshot {
            hits: load(&s.hits),
            negative_hits: load(&s.negative_hits),
            stale: load(&s.stale),
            misses: load(&s.misses),
            bypassed: load(&s.bypassed),
            fills_queued: load(&s.fills_queued),
            fills_dropped: load(&s.fills_dropped),
            backfill_queue_depth: (self.queue.max_capacity() - self.queue.capacity()) as u64,
            fills_applied: load(&s.fills_applied),
            fills_superseded: load(&s.fills_superseded),
            writes: load(&s.writes),
            writes_skipped: load(&s.writes_skipped),
            skipped_keys_held: self.shared.skipped.held() as u64,
            invalidations_owed: self.shared.skipped.owes(None),
            invalidations_applied: load(&s.invalidations_applied),
            errors: load(&s.errors),
            timeouts: load(&s.timeouts),
            corrupt: load(&s.corrupt),
            breaker: self.shared.breaker.state(),
            breaker_trips: self.shared.breaker.trips(),
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.state()
    }
}

impl Shared {
    /// Where a group's generation lives: `<key_prefix><group>!generation`, beside (never
    /// among) its entities' `<group>#` keys.
    fn generation_key(&self, group: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.key_prefix.len() + group.len() + 11);
        k.extend_from_slice(self.key_prefix.as_bytes());
        k.extend_from_slice(group.as_bytes());
        k.extend_from_slice(b"!generation");
        k
    }
}
