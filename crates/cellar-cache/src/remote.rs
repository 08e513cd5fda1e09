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
//! - **Admission.** A group with `admit_after: k` back-fills an entity on its k-th miss within
//!   the window (counted by each process), and its write-through only updates values already
//!   cached (elsewhere it leaves an invalidation marker, so the race guard above still holds).
//!
//! Key layout: `<key_prefix><group>#<entity>` (group names are identifiers, so the first `#`
//! ends the group). Value layout (integers big-endian; event times and deadlines are
//! milliseconds since the epoch, stored with the sign bit flipped so that byte order is
//! numeric order, which lets the scripts compare them without decoding):
//!
//! ```text
//! value   = format:u8 (1)  kind:u8  event_time:8  soft_deadline:8  payload
//! kind 1  record       payload = the record in the store's codec
//! kind 2  missing      no payload; event time = i64::MIN (negative cache)
//! kind 3  series       payload = complete:u8  entry*   (newest first)
//!                      entry   = event_time:8  len:u32  record in the store's codec
//! kind 4  invalidated  no payload; a write-around marker: reads miss, older fills lose
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cellar_spec::time::now_ms;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind, ServingPolicy, Tier, WriteStrategy};
use cellar_store::{codec, Record, RecordReader, Result, TimeseriesQuery};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, RedisResult, Script, Value};
use tokio::sync::{mpsc, oneshot};

use crate::admission::Doorkeeper;
use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::flight::Flights;
use crate::local::DEFAULT_CACHED_SERIES_LEN;
use crate::metrics::{CacheMetrics, Outcome, Stage};
use crate::ttl::{jittered, refresh_early, ReadCosts};

/// How to reach Redis and how patient to be with it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// One URL: a standalone Redis. Several: seed nodes of a Redis Cluster.
    pub urls: Vec<String>,
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
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            urls: vec!["redis://127.0.0.1:6379".to_owned()],
            key_prefix: "cellar:".to_owned(),
            timeout: Duration::from_millis(50),
            write_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_millis(500),
            breaker: BreakerConfig::default(),
            backfill_capacity: 4096,
            backfill_batch: 512,
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
    #[error("the remote cache tier must be created inside a Tokio runtime")]
    NoRuntime,
}

/// Counters of the remote tier, for all groups together. Lookups per group and outcome also go
/// to the shared [`CacheMetrics`] under the `remote` tier.
#[derive(Debug, Default)]
struct RemoteStats {
    hits: AtomicU64,
    negative_hits: AtomicU64,
    stale: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
    fills_queued: AtomicU64,
    fills_dropped: AtomicU64,
    fills_applied: AtomicU64,
    fills_superseded: AtomicU64,
    writes: AtomicU64,
    writes_skipped: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    corrupt: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteStatsSnapshot {
    /// Keys found holding records.
    pub hits: u64,
    /// Keys found holding a cached "no record".
    pub negative_hits: u64,
    /// Hits past their soft deadline: served, and a refresh queued.
    pub stale: u64,
    /// Keys not found (or invalidated), read from the tier below.
    pub misses: u64,
    /// Keys read from the tier below without asking Redis: the breaker was open, or the call
    /// to Redis failed.
    pub bypassed: u64,
    /// Values queued for back-fill.
    pub fills_queued: u64,
    /// Values not back-filled: the queue was full, or the breaker open when they were due.
    pub fills_dropped: u64,
    /// Back-fill and refresh jobs waiting in the queue now.
    pub backfill_queue_depth: u64,
    /// Back-filled values written to Redis.
    pub fills_applied: u64,
    /// Back-filled values Redis kept out because it held a newer event time.
    pub fills_superseded: u64,
    /// Write-through and invalidation values written.
    pub writes: u64,
    /// Write-through and invalidation values not written: the breaker was open or the call
    /// failed. The cached copy may then be stale until its hard TTL.
    pub writes_skipped: u64,
    /// Redis calls that failed.
    pub errors: u64,
    /// Redis calls that timed out.
    pub timeouts: u64,
    /// Cached values that could not be decoded (read as misses).
    pub corrupt: u64,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// How many times the breaker has opened.
    pub breaker_trips: u64,
}

fn bump(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------------
// Values

const FORMAT: u8 = 1;
const KIND_RECORD: u8 = 1;
const KIND_MISSING: u8 = 2;
const KIND_SERIES: u8 = 3;
const KIND_INVALIDATED: u8 = 4;
const HEADER_LEN: usize = 18;
const ENTRY_HEADER_LEN: usize = 12;

/// An event time or deadline as bytes whose lexicographic order is numeric order.
fn ordered(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ordered(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

fn put_header(buf: &mut Vec<u8>, kind: u8, event_time: i64, soft_deadline: i64) {
    buf.push(FORMAT);
    buf.push(kind);
    buf.extend_from_slice(&ordered(event_time));
    buf.extend_from_slice(&ordered(soft_deadline));
}

fn encode_record(record: &Record, soft_deadline: i64) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(HEADER_LEN + codec::encoded_len(record));
    put_header(&mut buf, KIND_RECORD, record.event_time, soft_deadline);
    codec::encode_into(record, &mut buf)?;
    Ok(buf)
}

fn encode_missing(soft_deadline: i64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN);
    put_header(&mut buf, KIND_MISSING, i64::MIN, soft_deadline);
    buf
}

fn encode_invalidated(event_time: i64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN);
    put_header(&mut buf, KIND_INVALIDATED, event_time, i64::MIN);
    buf
}

/// One record of a cached series: what the merge script reads without decoding the record.
fn encode_series_entry(buf: &mut Vec<u8>, record: &Record) -> Result<()> {
    let len = codec::encoded_len(record);
    let len = u32::try_from(len)
        .map_err(|_| cellar_store::StoreError::Codec(format!("record of {len} bytes")))?;
    buf.extend_from_slice(&ordered(record.event_time));
    buf.extend_from_slice(&len.to_be_bytes());
    codec::encode_into(record, buf)
}

fn encode_series(records: &[Record], complete: bool, soft_deadline: i64) -> Result<Vec<u8>> {
    let newest = records.first().map_or(i64::MIN, |r| r.event_time);
    let payload: usize = records
        .iter()
        .map(|r| ENTRY_HEADER_LEN + codec::encoded_len(r))
        .sum();
    let mut buf = Vec::with_capacity(HEADER_LEN + 1 + payload);
    put_header(&mut buf, KIND_SERIES, newest, soft_deadline);
    buf.push(u8::from(complete));
    for r in records {
        encode_series_entry(&mut buf, r)?;
    }
    Ok(buf)
}

/// What a cached value holds.
#[derive(Debug, Clone, PartialEq)]
enum Cached {
    Record(Record),
    Missing,
    Series {
        /// The records decoded: all of them, or those a query picked.
        records: Vec<Record>,
        /// How many records the value holds.
        held: usize,
        /// All the records the tier below had (fewer than the series length), so any `top_n`
        /// can be answered.
        complete: bool,
    },
    Invalidated,
}

#[derive(Debug)]
struct Decoded {
    cached: Cached,
    soft_deadline: i64,
}

fn read8(bytes: &[u8], at: usize) -> Option<[u8; 8]> {
    bytes.get(at..at + 8)?.try_into().ok()
}

/// Decodes a cached value; any malformed input is an error, never a panic. For a series, only
/// the records `pick` selects are decoded (all of them without a query): each entry's event
/// time sits before its record, so the others are skipped undecoded.
fn decode_value(
    bytes: &[u8],
    pick: Option<TimeseriesQuery>,
) -> std::result::Result<Decoded, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("value of {} bytes", bytes.len()));
    }
    if bytes[0] != FORMAT {
        return Err(format!("unknown value format {}", bytes[0]));
    }
    let soft_deadline = read8(bytes, 10).map(from_ordered).ok_or("short header")?;
    let payload = &bytes[HEADER_LEN..];
    let cached = match bytes[1] {
        KIND_RECORD => Cached::Record(codec::decode(payload).map_err(|e| e.to_string())?),
        KIND_MISSING => Cached::Missing,
        KIND_INVALIDATED => Cached::Invalidated,
        KIND_SERIES => {
            let (&complete, mut rest) = payload.split_first().ok_or("series without flags")?;
            let mut records = Vec::new();
            let mut held = 0;
            while !rest.is_empty() {
                let event_time = read8(rest, 0)
                    .map(from_ordered)
                    .ok_or("truncated series entry")?;
                let len = rest
                    .get(8..ENTRY_HEADER_LEN)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(u32::from_be_bytes)
                    .ok_or("truncated series entry")?;
                let end = ENTRY_HEADER_LEN
                    .checked_add(len as usize)
                    .filter(|&end| end <= rest.len())
                    .ok_or("truncated series entry")?;
                let wanted = pick.is_none_or(|q| {
                    records.len() < q.top_n && q.since.is_none_or(|since| event_time >= since)
                });
                if wanted {
                    records.push(
                        codec::decode(&rest[ENTRY_HEADER_LEN..end]).map_err(|e| e.to_string())?,
                    );
                }
                held += 1;
                rest = &rest[end..];
            }
            Cached::Series {
                records,
                held,
                complete: complete == 1,
            }
        }
        other => return Err(format!("unknown value kind {other}")),
    };
    Ok(Decoded {
        cached,
        soft_deadline,
    })
}

/// Writes a value unless Redis holds one with a newer event time.
///
/// KEYS[1]: the entry. ARGV[1]: the value; ARGV[2]: its TTL in milliseconds; ARGV[3]: `strict`
/// keeps a cached value of equal event time, `tie` replaces it, `max` always writes but keeps
/// the newer of the two event times (invalidation markers). Optional ARGV[4] and ARGV[5]: an
/// invalidation marker and its TTL, written instead of the value when nothing is cached.
/// Returns 1 if written, 0 if not, 2 if the marker was written.
///
/// The Redis store's `PUT_ATTRIBUTE` (cellar-store-redis) also keeps the newer event time, but
/// on another value: the store's header has no kind byte, its expiry is absolute and may be
/// none, and an equal event time is always stale there; ties and markers are the cache's
/// alone. One script for both would take its layout and rules as arguments on every write.
const PUT_IF_NEWER: &str = r"
local new = ARGV[1]
local cur = redis.call('GET', KEYS[1])
if not cur and ARGV[4] then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  return 2
end
if cur and string.len(cur) >= 18 and string.byte(cur, 1) == 1 then
  local order = 0
  for i = 3, 10 do
    local a, b = string.byte(cur, i), string.byte(new, i)
    if a ~= b then
      if a > b then order = 1 else order = -1 end
      break
    end
  end
  if ARGV[3] == 'max' then
    if order > 0 then
      new = string.sub(new, 1, 2) .. string.sub(cur, 3, 10) .. string.sub(new, 11)
    end
  elseif order > 0 or (order == 0 and ARGV[3] == 'strict') then
    return 0
  end
end
redis.call('SET', KEYS[1], new, 'PX', ARGV[2])
return 1
";

/// Puts one written record into a cached series, in event-time order (replacing a record of
/// the same event time), keeping the newest ARGV[2]; without a cached series it writes an
/// invalidation marker instead, so a fill that read the store before this write loses.
///
/// KEYS[1]: the entry. ARGV[1]: the record as a series entry; ARGV[2]: most records kept;
/// ARGV[3]: TTL in milliseconds; ARGV[4]: the new soft deadline (8 bytes); ARGV[5]: the
/// invalidation marker at the record's event time. Returns 1 if merged, 2 if invalidated.
const MERGE_SERIES: &str = r"
local function cmp(a, ai, b, bi)
  for i = 0, 7 do
    local x, y = string.byte(a, ai + i), string.byte(b, bi + i)
    if x ~= y then
      if x > y then return 1 end
      return -1
    end
  end
  return 0
end
local cur = redis.call('GET', KEYS[1])
local entry = ARGV[1]
local function invalidate()
  local marker = ARGV[5]
  if cur and string.len(cur) >= 18 and string.byte(cur, 1) == 1 and cmp(cur, 3, marker, 3) > 0 then
    marker = string.sub(marker, 1, 2) .. string.sub(cur, 3, 10) .. string.sub(marker, 11)
  end
  redis.call('SET', KEYS[1], marker, 'PX', ARGV[3])
  return 2
end
if not cur or string.len(cur) < 19 or string.byte(cur, 1) ~= 1 or string.byte(cur, 2) ~= 3 then
  return invalidate()
end
local max = tonumber(ARGV[2]) or 1
if max < 1 then max = 1 end
local parts, n, placed = {}, 0, false
local pos, len = 20, string.len(cur)
while pos <= len do
  if pos + 11 > len then return invalidate() end
  local b1, b2, b3, b4 = string.byte(cur, pos + 8, pos + 11)
  local stop = pos + 11 + ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if stop > len then return invalidate() end
  local keep = true
  if not placed then
    local order = cmp(cur, pos, entry, 1)
    if order <= 0 then
      n = n + 1
      parts[n] = entry
      placed = true
      keep = order < 0
    end
  end
  if keep then
    n = n + 1
    parts[n] = string.sub(cur, pos, stop)
  end
  pos = stop + 1
end
if not placed then
  n = n + 1
  parts[n] = entry
end
local complete = string.byte(cur, 19) == 1 and n <= max
while n > max do
  parts[n] = nil
  n = n - 1
end
local flag = 0
if complete then flag = 1 end
local value = string.char(1, 3) .. string.sub(parts[1], 1, 8) .. ARGV[4] .. string.char(flag) .. table.concat(parts)
redis.call('SET', KEYS[1], value, 'PX', ARGV[3])
return 1
";

/// How a [`PUT_IF_NEWER`] write treats a cached value of the same event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tie {
    /// Keep it (write-through of attributes: the store kept the first of equal records too).
    Keep,
    /// Replace it (fills and refreshes: the same record, read again, resets the deadlines).
    Replace,
    /// Always write, keeping the newer event time (invalidation markers).
    Max,
}

impl Tie {
    fn arg(self) -> &'static str {
        match self {
            Tie::Keep => "strict",
            Tie::Replace => "tie",
            Tie::Max => "max",
        }
    }
}

/// One script call of a batch of writes.
struct ScriptCall {
    key: Vec<u8>,
    script: &'static Script,
    args: Vec<Vec<u8>>,
}

impl ScriptCall {
    fn put(key: Vec<u8>, value: Vec<u8>, ttl_ms: u64, tie: Tie) -> ScriptCall {
        ScriptCall {
            key,
            script: &SCRIPTS.put_if_newer,
            args: vec![
                value,
                ttl_ms.to_string().into_bytes(),
                tie.arg().as_bytes().to_vec(),
            ],
        }
    }

    fn cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(1).arg(&self.key[..]);
        for a in &self.args {
            cmd.arg(&a[..]);
        }
        cmd
    }
}

struct Scripts {
    put_if_newer: Script,
    merge_series: Script,
}

static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(|| Scripts {
    put_if_newer: Script::new(PUT_IF_NEWER),
    merge_series: Script::new(MERGE_SERIES),
});

// ---------------------------------------------------------------------------------------------
// Deadlines

/// Longest TTL given to Redis (about 34 years), far below what overflows its clock.
const MAX_TTL_MS: u64 = 1 << 40;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(MAX_TTL_MS)
        .min(MAX_TTL_MS)
}

/// A value's hard TTL (for Redis) and soft deadline (stored in the value). Soft deadlines are
/// wall-clock milliseconds: they are shared between processes, so they cannot be monotonic
/// instants.
#[derive(Debug, Clone, Copy)]
struct Ttls {
    hard_ms: u64,
    soft_deadline: i64,
}

impl Ttls {
    /// For values holding records; `None` when the policy caches nothing.
    fn positive(policy: &ServingPolicy) -> Option<Ttls> {
        let hard = jittered(policy.hard_ttl, policy.jitter);
        if hard.is_zero() {
            return None;
        }
        let soft = jittered(policy.soft_ttl, policy.jitter).min(hard);
        Some(Ttls {
            hard_ms: ms(hard).max(1),
            soft_deadline: now_ms().saturating_add(ms(soft) as i64),
        })
    }

    /// For "no record" values: never stale, gone at the negative TTL.
    fn negative(policy: &ServingPolicy) -> Option<Ttls> {
        let hard = jittered(policy.negative_ttl, policy.jitter);
        if hard.is_zero() {
            return None;
        }
        Some(Ttls {
            hard_ms: ms(hard).max(1),
            soft_deadline: now_ms().saturating_add(ms(hard) as i64),
        })
    }

    /// For invalidation markers: they outlive any fill still in flight.
    fn marker(policy: &ServingPolicy) -> u64 {
        ms(policy.hard_ttl.max(policy.negative_ttl))
            .max(ms(Duration::from_secs(1)))
            .max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

/// A standalone Redis through a reconnecting multiplexed connection, or a Redis Cluster.
#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Connection {
    /// Connects lazily: nothing is dialled until the first command, so a Redis that is down
    /// when the server starts only opens the breaker.
    fn open(config: &RemoteConfig) -> std::result::Result<Connection, RemoteError> {
        match config.urls.as_slice() {
            [] => Err(RemoteError::NoUrl),
            [url] => {
                let client = redis::Client::open(url.as_str())?;
                let manager_config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(config.write_timeout.max(config.timeout)))
                    .set_number_of_retries(2)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_millis(500));
                Ok(Connection::Standalone(
                    ConnectionManager::new_lazy_with_config(client, manager_config)?,
                ))
            }
            urls => {
                let client =
                    redis::cluster::ClusterClient::builder(urls.iter().map(String::as_str))
                        .retries(2)
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(config.write_timeout.max(config.timeout))
                        .build()?;
                let cluster_config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(config.connect_timeout)
                    .set_response_timeout(config.write_timeout.max(config.timeout));
                Ok(Connection::Cluster(
                    client.get_pending_async_connection_with_config(cluster_config),
                ))
            }
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Connection::Standalone(c) => cmd.query_async(c).await,
            Connection::Cluster(c) => cmd.query_async(c).await,
        }
    }

    async fn query_pipeline(&mut self, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>> {
        match self {
            Connection::Standalone(c) => pipe.query_async(c).await,
            Connection::Cluster(c) => pipe.query_async(c).await,
        }
    }

    async fn mget(&mut self, keys: &[Vec<u8>]) -> RedisResult<Vec<Option<Vec<u8>>>> {
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(&k[..]);
        }
        self.query(&cmd).await
    }

    async fn del(&mut self, keys: &[Vec<u8>]) -> RedisResult<()> {
        let mut cmd = redis::cmd("DEL");
        for k in keys {
            cmd.arg(&k[..]);
        }
        self.query::<Value>(&cmd).await.map(|_| ())
    }

    /// Runs script calls pipelined: one pipeline on a standalone Redis, one per slot on a
    /// cluster (a cluster pipeline must stay within one slot), all at once. Returns each call's
    /// reply, a server error as `Value::ServerError`.
    async fn run_calls(&mut self, calls: &[&ScriptCall]) -> RedisResult<Vec<Value>> {
        let groups: Vec<Vec<usize>> = match self {
            Connection::Standalone(_) => vec![(0..calls.len()).collect()],
            Connection::Cluster(_) => {
                let mut by_slot: HashMap<redis::cluster_routing::Slot, Vec<usize>> = HashMap::new();
                for (i, c) in calls.iter().enumerate() {
                    by_slot
                        .entry(redis::cluster_routing::Slot::for_key(&c.key))
                        .or_default()
                        .push(i);
                }
                by_slot.into_values().collect()
            }
        };
        let runs = groups.into_iter().map(|indices| {
            let mut conn = self.clone();
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &indices {
                pipe.add_command(calls[i].cmd());
            }
            async move {
                let replies = conn.query_pipeline(&pipe).await?;
                Ok::<_, redis::RedisError>((indices, replies))
            }
        });
        let mut out = vec![Value::Nil; calls.len()];
        for run in futures::future::join_all(runs).await {
            let (indices, replies) = run?;
            for (i, reply) in indices.into_iter().zip(replies) {
                out[i] = reply;
            }
        }
        Ok(out)
    }

    /// Runs script calls, loading the scripts when Redis does not know them (the first time,
    /// and after a restart emptied its script cache) and running those calls again.
    async fn run_scripts(&mut self, calls: &[ScriptCall]) -> RedisResult<Vec<Value>> {
        let all: Vec<&ScriptCall> = calls.iter().collect();
        let mut replies = self.run_calls(&all).await?;
        let unknown: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                matches!(r, Value::ServerError(e)
                    if e.kind() == Some(redis::ServerErrorKind::NoScript))
            })
            .map(|(i, _)| i)
            .collect();
        if unknown.is_empty() {
            return Ok(replies);
        }
        self.load_scripts().await?;
        let again: Vec<&ScriptCall> = unknown.iter().map(|&i| &calls[i]).collect();
        let retried = self.run_calls(&again).await?;
        for (i, reply) in unknown.into_iter().zip(retried) {
            replies[i] = reply;
        }
        Ok(replies)
    }

    async fn load_scripts(&mut self) -> RedisResult<()> {
        for source in [PUT_IF_NEWER, MERGE_SERIES] {
            let mut cmd = redis::cmd("SCRIPT");
            cmd.arg("LOAD").arg(source);
            self.query::<Value>(&cmd).await?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The tier

/// A value to write to Redis in the background, unless Redis holds a newer event time.
struct Fill {
    key: Vec<u8>,
    value: Vec<u8>,
    ttl_ms: u64,
}

enum Job {
    Fill(Vec<Fill>),
    /// Stale entries to read again from the tier below.
    Refresh {
        group: Box<FeatureGroup>,
        entities: Vec<EntityKey>,
        keys: Vec<Vec<u8>>,
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
}

/// The Redis tier. Implements [`RecordReader`] over the next tier (the store, usually),
/// serving each group only if its policy lists the remote tier.
pub struct RemoteTier {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Job>,
    key_prefix: String,
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
        });
        let (queue, jobs) = mpsc::channel(config.backfill_capacity.max(1));
        handle.spawn(back_fill(shared.clone(), jobs));
        Ok(RemoteTier {
            shared,
            queue,
            key_prefix: config.key_prefix,
        })
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
        let mut k = Vec::with_capacity(self.key_prefix.len() + group.len() + 1 + entity.0.len());
        k.extend_from_slice(self.key_prefix.as_bytes());
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

    /// Reads the values of `keys`; `None` when Redis was not asked (breaker open) or failed.
    async fn lookup(&self, keys: &[Vec<u8>]) -> Option<Vec<Option<Vec<u8>>>> {
        let shared = &self.shared;
        let Some(permit) = shared.breaker.try_acquire() else {
            bump(&shared.stats.bypassed, keys.len());
            return None;
        };
        let mut conn = shared.conn.clone();
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(shared.timeout, conn.mget(keys)).await;
        match outcome {
            Ok(Ok(values)) if values.len() == keys.len() => {
                permit.succeeded();
                shared
                    .metrics
                    .observe_latency(Stage::Remote, started.elapsed());
                Some(values)
            }
            Ok(Ok(values)) => {
                permit.failed();
                bump(&shared.stats.errors, 1);
                tracing::debug!(
                    asked = keys.len(),
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

    fn decode(&self, bytes: Option<Vec<u8>>, pick: Option<TimeseriesQuery>) -> Option<Decoded> {
        match decode_value(&bytes?, pick) {
            Ok(d) => Some(d),
            Err(e) => {
                bump(&self.shared.stats.corrupt, 1);
                tracing::debug!(error = %e, "undecodable value in the remote cache");
                None
            }
        }
    }

    /// Queues fills; a full queue drops them.
    fn enqueue(&self, fills: Vec<Fill>) {
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
    fn refresh(&self, group: &FeatureGroup, entities: Vec<EntityKey>, keys: Vec<Vec<u8>>) {
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
        self.refresh(group, entities, keys);
    }

    /// Reads the missed entities (at positions `missed`) from the tier below, once per key
    /// however many requests missed it at the same time, learning how long such reads take;
    /// whoever reads a key queues its back-fill, if the key is admitted.
    async fn read_below(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        keys: &[Vec<u8>],
        missed: &[usize],
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
                    .filter_map(|(&j, f)| fill_for(group, keys[missed[j]].clone(), f.clone()))
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
        let Some(fill) = fill_for(group, self.key(&group.name, entity), found) else {
            return false;
        };
        self.shared.apply_fills(vec![fill]).await == 1
    }

    /// Applies writes to the cached copies as the group's write strategy says: write-through
    /// puts each record in unless a newer (or equal) event time is cached, merging time-series
    /// records into the cached series; write-around leaves an invalidation marker at the
    /// record's event time. Call it with the records the store applied.
    pub async fn records_written<'a>(
        &self,
        group: &FeatureGroup,
        written: impl IntoIterator<Item = (&'a EntityKey, &'a Record)>,
    ) {
        if !Self::serves(group) {
            return;
        }
        let calls: Vec<ScriptCall> = written
            .into_iter()
            .map(|(entity, record)| self.write_call(group, entity, record, Tie::Keep))
            .collect();
        self.shared.write(calls).await;
    }

    /// [`records_written`](Self::records_written) for one record.
    pub async fn record_written(&self, group: &FeatureGroup, entity: &EntityKey, record: &Record) {
        self.records_written(group, [(entity, record)]).await
    }

    /// Follows read-modify-writes of attribute records: the store now holds each `record`,
    /// even where its event time equals the cached one's. Write-through caches it unless a
    /// strictly newer record is cached; otherwise the cached copy is invalidated.
    pub async fn records_replaced<'a>(
        &self,
        group: &FeatureGroup,
        replaced: impl IntoIterator<Item = (&'a EntityKey, &'a Record)>,
    ) {
        if !Self::serves(group) {
            return;
        }
        let calls: Vec<ScriptCall> = replaced
            .into_iter()
            .map(|(entity, record)| match (group.serving.write, group.kind) {
                (WriteStrategy::Through, GroupKind::Attribute) => {
                    self.write_call(group, entity, record, Tie::Replace)
                }
                _ => self.marker_call(group, entity, record.event_time),
            })
            .collect();
        self.shared.write(calls).await;
    }

    /// [`records_replaced`](Self::records_replaced) for one record.
    pub async fn record_replaced(&self, group: &FeatureGroup, entity: &EntityKey, record: &Record) {
        self.records_replaced(group, [(entity, record)]).await
    }

    /// Drops the cached copies of the given entities (after their records were deleted).
    pub async fn invalidate(&self, group: &FeatureGroup, entities: &[EntityKey]) {
        if !Self::serves(group) || entities.is_empty() {
            return;
        }
        let keys: Vec<Vec<u8>> = entities.iter().map(|e| self.key(&group.name, e)).collect();
        let shared = &self.shared;
        let Some(permit) = shared.breaker.try_acquire() else {
            bump(&shared.stats.writes_skipped, keys.len());
            return;
        };
        let mut conn = shared.conn.clone();
        match tokio::time::timeout(shared.write_timeout, conn.del(&keys)).await {
            Ok(Ok(())) => {
                permit.succeeded();
                bump(&shared.stats.writes, keys.len());
            }
            Ok(Err(e)) => {
                permit.failed();
                bump(&shared.stats.errors, 1);
                bump(&shared.stats.writes_skipped, keys.len());
                tracing::warn!(error = %e, group = %group.name, "remote cache invalidation failed");
            }
            Err(_) => {
                permit.failed();
                bump(&shared.stats.timeouts, 1);
                bump(&shared.stats.writes_skipped, keys.len());
            }
        }
    }

    /// The script call that applies one written record to its cached copy.
    fn write_call(
        &self,
        group: &FeatureGroup,
        entity: &EntityKey,
        record: &Record,
        tie: Tie,
    ) -> ScriptCall {
        let key = self.key(&group.name, entity);
        let ttls = Ttls::positive(&group.serving);
        let call = match (group.serving.write, group.kind, ttls) {
            (WriteStrategy::Through, GroupKind::Attribute, Some(ttls)) => {
                encode_record(record, ttls.soft_deadline).ok().map(|value| {
                    let mut call = ScriptCall::put(key.clone(), value, ttls.hard_ms, tie);
                    if group.serving.admit_after > 1 {
                        // Writes do not admit: update a cached copy, else leave a marker.
                        call.args.push(encode_invalidated(record.event_time));
                        call.args
                            .push(Ttls::marker(&group.serving).to_string().into_bytes());
                    }
                    call
                })
            }
            (WriteStrategy::Through, GroupKind::Timeseries, Some(ttls)) => {
                let mut entry = Vec::with_capacity(ENTRY_HEADER_LEN + codec::encoded_len(record));
                encode_series_entry(&mut entry, record)
                    .ok()
                    .map(|()| ScriptCall {
                        key: key.clone(),
                        script: &SCRIPTS.merge_series,
                        args: vec![
                            entry,
                            Self::series_len(group).to_string().into_bytes(),
                            ttls.hard_ms.to_string().into_bytes(),
                            ordered(ttls.soft_deadline).to_vec(),
                            encode_invalidated(record.event_time),
                        ],
                    })
            }
            _ => None,
        };
        // Write-around, a policy that caches nothing, or a record that cannot be encoded: the
        // cached copy must go.
        call.unwrap_or_else(|| self.marker_call(group, entity, record.event_time))
    }

    fn marker_call(&self, group: &FeatureGroup, entity: &EntityKey, event_time: i64) -> ScriptCall {
        ScriptCall::put(
            self.key(&group.name, entity),
            encode_invalidated(event_time),
            Ttls::marker(&group.serving),
            Tie::Max,
        )
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

    /// Runs write-path script calls now, through the breaker.
    async fn write(&self, calls: Vec<ScriptCall>) {
        if calls.is_empty() {
            return;
        }
        let n = calls.len();
        let Some(permit) = self.breaker.try_acquire() else {
            bump(&self.stats.writes_skipped, n);
            return;
        };
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.write_timeout, conn.run_scripts(&calls)).await {
            Ok(Ok(replies)) => {
                permit.succeeded();
                let failed = replies
                    .iter()
                    .filter(|r| matches!(r, Value::ServerError(_) | Value::Nil))
                    .count();
                bump(&self.stats.writes, n - failed);
                bump(&self.stats.writes_skipped, failed);
                bump(&self.stats.errors, failed);
            }
            Ok(Err(e)) => {
                permit.failed();
                bump(&self.stats.errors, 1);
                bump(&self.stats.writes_skipped, n);
                tracing::warn!(error = %e, "remote cache write failed");
            }
            Err(_) => {
                permit.failed();
                bump(&self.stats.timeouts, 1);
                bump(&self.stats.writes_skipped, n);
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
    ) -> Vec<Fill> {
        let started = std::time::Instant::now();
        let found = read_next(&*self.next, group, entities).await;
        self.costs.observe(&group.name, started.elapsed());
        self.done_refreshing(&keys);
        match found {
            Ok(found) => keys
                .into_iter()
                .zip(found)
                .filter_map(|(key, found)| fill_for(group, key, found))
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
async fn back_fill(shared: Arc<Shared>, mut jobs: mpsc::Receiver<Job>) {
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
                } => fills.extend(shared.refreshed(&group, &entities, keys).await),
                Job::Flush(done) => flushed.push(done),
            }
        }
        shared.apply_fills(fills).await;
        for done in flushed {
            let _ = done.send(());
        }
    }
}

/// The back-fill of what the tier below answered for one entity; `None` when the group's
/// policy caches nothing of that kind, or the record cannot be encoded.
fn fill_for(group: &FeatureGroup, key: Vec<u8>, found: Found) -> Option<Fill> {
    match found {
        Found::Missing => record_fill(group, key, None),
        Found::Record(r) => record_fill(group, key, Some(&r)),
        Found::Series(records) => series_fill(group, key, &records),
    }
}

/// The back-fill of an attribute record, or of "no record".
fn record_fill(group: &FeatureGroup, key: Vec<u8>, record: Option<&Record>) -> Option<Fill> {
    let (value, ttls) = match record {
        None => {
            let ttls = Ttls::negative(&group.serving)?;
            (encode_missing(ttls.soft_deadline), ttls)
        }
        Some(r) => {
            let ttls = Ttls::positive(&group.serving)?;
            (encode_record(r, ttls.soft_deadline).ok()?, ttls)
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
fn series_fill(group: &FeatureGroup, key: Vec<u8>, records: &[Record]) -> Option<Fill> {
    if records.is_empty() {
        return record_fill(group, key, None);
    }
    let ttls = Ttls::positive(&group.serving)?;
    let complete = records.len() < RemoteTier::series_len(group);
    Some(Fill {
        key,
        value: encode_series(records, complete, ttls.soft_deadline).ok()?,
        ttl_ms: ttls.hard_ms,
    })
}

/// Reads entities from the next tier in the cache's shape: attribute records, or each
/// entity's newest records up to the group's series length.
async fn read_next(
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
        let keys: Vec<Vec<u8>> = entities.iter().map(|e| self.key(&group.name, e)).collect();
        let Some(values) = self.lookup(&keys).await else {
            return self.shared.next.get_attributes(group, entities).await;
        };
        let now = now_ms();
        let mut out: Vec<Option<Record>> = vec![None; entities.len()];
        let mut missed: Vec<usize> = Vec::new();
        let (mut stale, mut early) = (Vec::new(), Vec::new());
        let (mut hits, mut negative) = (0, 0);
        for (i, value) in values.into_iter().enumerate() {
            match self.decode(value, None) {
                Some(Decoded {
                    cached: Cached::Record(r),
                    soft_deadline,
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
        self.refresh_hits(group, entities, &keys, stale, early);
        if missed.is_empty() {
            return Ok(out);
        }
        let found = self.read_below(group, entities, &keys, &missed).await?;
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
        let keys: Vec<Vec<u8>> = entities.iter().map(|e| self.key(&group.name, e)).collect();
        let Some(values) = self.lookup(&keys).await else {
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
            match self.decode(value, Some(query)) {
                Some(Decoded {
                    cached:
                        Cached::Series {
                            records,
                            held,
                            complete,
                        },
                    soft_deadline,
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
        self.refresh_hits(group, entities, &keys, stale, early);
        if missed.is_empty() {
            return Ok(out);
        }
        let found = self.read_below(group, entities, &keys, &missed).await?;
        for (i, found) in missed.into_iter().zip(found) {
            if let Found::Series(records) = found {
                out[i] = select(&records, query);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use cellar_spec::Value;

    use super::*;

    fn record(at: i64, label: &str) -> Record {
        Record::new(at, vec![Value::String(label.to_owned())])
    }

    #[test]
    fn ordered_event_times_sort_as_bytes() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(ordered(pair[0]) < ordered(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(from_ordered(ordered(t)), t);
        }
    }

    #[test]
    fn values_round_trip() {
        let r = record(42, "a");
        let d = decode_value(&encode_record(&r, 99).unwrap(), None).unwrap();
        assert_eq!(d.cached, Cached::Record(r.clone()));
        assert_eq!(d.soft_deadline, 99);

        let d = decode_value(&encode_missing(7), None).unwrap();
        assert_eq!(d.cached, Cached::Missing);

        let d = decode_value(&encode_invalidated(5), None).unwrap();
        assert_eq!(d.cached, Cached::Invalidated);

        let series = vec![record(30, "c"), record(20, "b"), record(10, "a")];
        let bytes = encode_series(&series, true, 11).unwrap();
        assert_eq!(&bytes[2..10], &ordered(30));
        let d = decode_value(&bytes, None).unwrap();
        assert_eq!(
            d.cached,
            Cached::Series {
                records: series.clone(),
                held: 3,
                complete: true
            }
        );
        // A query decodes only what it picks.
        let pick = |top_n, since| Some(TimeseriesQuery { top_n, since });
        let d = decode_value(&bytes, pick(2, None)).unwrap();
        assert_eq!(
            d.cached,
            Cached::Series {
                records: series[..2].to_vec(),
                held: 3,
                complete: true
            }
        );
        let d = decode_value(&bytes, pick(5, Some(20))).unwrap();
        assert_eq!(
            d.cached,
            Cached::Series {
                records: series[..2].to_vec(),
                held: 3,
                complete: true
            }
        );
    }

    #[test]
    fn garbage_values_are_errors_not_panics() {
        let good = encode_series(&[record(2, "x"), record(1, "y")], false, 0).unwrap();
        for end in 0..good.len() {
            let _ = decode_value(&good[..end], None);
        }
        for i in 0..good.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let _ = decode_value(&bad, None);
            }
        }
        assert!(decode_value(&[], None).is_err());
        assert!(decode_value(&[9; 40], None).is_err());
    }
}
