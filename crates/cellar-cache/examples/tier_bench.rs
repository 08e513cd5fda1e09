//! The cache tiers under a Zipf-distributed key workload, for each tier configuration a group's
//! serving policy can name, with `redis-benchmark` measured in the same run as the baseline.
//!
//! ```sh
//! scripts/bench-cache.sh      # builds in release mode and runs this with its defaults
//! cargo run --release -p cellar-cache --example tier_bench -- [--redis redis://127.0.0.1:6379]
//!     [--seconds 5] [--warmup 2] [--connections 16] [--entities 100000] [--zipf 0.99]
//!     [--local-mib 32] [--redis-benchmark redis-benchmark] [--only local,remote,store,all]
//!     [--prefill true]
//! ```
//!
//! Setup: an embedded store in a temp dir holds `--entities` user profiles (about 450 bytes in
//! the store's codec, every one the same size; the exact sizes are printed) in four groups that
//! differ only in their serving policy: local only, remote only, store only (no cache tier),
//! and all three (local, then remote). The read stack is the server's: the local tier
//! (`--local-mib`), over the remote tier (one multiplexed Redis connection), over the store,
//! each tier passing through the groups whose policy does not name it.
//!
//! Cases: for each configuration, 100 entities per request and then 1, from `--connections`
//! concurrent tasks for `--seconds`. Before them, every entity is read once through the
//! configuration (a server that has run for a while has seen them all), and each case starts
//! with `--warmup` seconds of its own load, so the tiers are in their steady state. Entities are
//! drawn from a Zipf distribution of exponent `--zipf` over a scattered ranking of the
//! entities; the 100 of a request are distinct, as a ranker's candidates are. Requests/s,
//! entity lookups/s, latency per request (p50, p99) and each tier's hit ratio (from the tiers'
//! counters, diffed around the measured seconds) are printed; `store reads` is the share of
//! lookups the store answered. `--only` runs some of the configurations; `--prefill false`
//! skips the read of every entity, so that the tiers start cold.
//!
//! Baseline: `redis-benchmark` GETs on the same Redis, of values of the same size as the remote
//! tier's (copies of a real cached value, under this run's key prefix), with as many
//! connections as the tiers have concurrent tasks, unpipelined and `-P 16`, before and after
//! the tier cases; the better of the two runs is the baseline. The GETs name their keys
//! (`GET <prefix>rb:__rand_int__` with `-r`) rather than use `-t get`, whose keys carry no
//! prefix and could belong to someone else's data. The run ends with the remote tier's ratios
//! against the pipelined GETs/s (100-entity lookups/s, held to at least 50%, and 1-entity
//! requests/s), the tier sending its tasks' reads over one multiplexed connection as a
//! pipelining client does; the 1-entity ratio against unpipelined GETs follows.
//!
//! Every Redis key of the run sits under a random prefix and is deleted at the end (and expires
//! within two hours if the run dies).

use std::collections::HashSet;
use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cellar_cache::{CacheMetrics, LocalTier, Outcome, RemoteConfig, RemoteTier};
use cellar_spec::{
    EntityKey, Feature, FeatureGroup, ScalarType, ServingPolicy, Tier, Value, ValueType,
};
use cellar_store::conformance::attribute_group;
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{codec, OnlineStore, Record, RecordReader, TimeseriesQuery, Write};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};

// The allocator of the `cellar` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BenchResult<T> = Result<T, Box<dyn Error>>;

/// Entities per request of the batch shape.
const BATCH: usize = 100;
/// Zipf draws generated per request shape; tasks walk them in a cycle from spread-out offsets,
/// so the load generator samples nothing while measuring.
const DRAWS: usize = 1_000_000;
/// `redis-benchmark`'s pipeline depth for the batch baseline.
const PIPELINE: usize = 16;
/// Records per durable store batch while loading.
const LOAD_BATCH: usize = 2_000;
/// Long enough that nothing cached turns stale or expires during a run.
const SOFT_TTL: Duration = Duration::from_secs(3600);
const HARD_TTL: Duration = Duration::from_secs(7200);
const EVENT_TIME: i64 = 1_700_000_000_000;
const EMBEDDING_DIM: usize = 64;
const RECENT_ITEMS: usize = 10;

struct Options {
    redis: String,
    seconds: f64,
    warmup: f64,
    connections: usize,
    entities: usize,
    zipf: f64,
    local_bytes: u64,
    redis_benchmark: String,
    /// Whether every entity is read once before a configuration's cases.
    prefill: bool,
    /// Runs only the configurations whose group names end with one of these.
    only: Vec<String>,
}

fn parse_options() -> BenchResult<Options> {
    let mut o = Options {
        redis: "redis://127.0.0.1:6379".to_owned(),
        seconds: 5.0,
        warmup: 2.0,
        connections: 16,
        entities: 100_000,
        zipf: 0.99,
        local_bytes: 32 << 20,
        redis_benchmark: "redis-benchmark".to_owned(),
        prefill: true,
        only: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--redis" => o.redis = value,
            "--seconds" => o.seconds = value.parse()?,
            "--warmup" => o.warmup = value.parse()?,
            "--connections" => o.connections = value.parse()?,
            "--entities" => o.entities = value.parse()?,
            "--zipf" => o.zipf = value.parse()?,
            "--local-mib" => o.local_bytes = value.parse::<u64>()? << 20,
            "--redis-benchmark" => o.redis_benchmark = value,
            "--prefill" => o.prefill = value.parse()?,
            "--only" => o.only = value.split(',').map(str::to_owned).collect(),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if o.seconds <= 0.0 || o.warmup < 0.0 || o.connections == 0 || o.entities < BATCH {
        return Err(format!(
            "--seconds and --connections must be positive, --warmup not negative, and \
             --entities at least {BATCH}"
        )
        .into());
    }
    if o.zipf <= 0.0 {
        return Err("--zipf must be positive".into());
    }
    Ok(o)
}

// ---------------------------------------------------------------------------------------------
// Data

/// A user profile as a ranking model reads it: a few scalars, two short lists and an embedding.
/// Strings have fixed widths so that every record encodes to the same size.
fn profile_group(name: &str, tiers: &[Tier]) -> FeatureGroup {
    let feature = |name: &str, value_type| Feature {
        name: name.to_owned(),
        value_type,
        description: None,
        retired: false,
    };
    let mut g = attribute_group(name);
    g.features = vec![
        feature("country", ValueType::Scalar(ScalarType::String)),
        feature("language", ValueType::Scalar(ScalarType::String)),
        feature("age", ValueType::Scalar(ScalarType::Int64)),
        feature("lifetime_value", ValueType::Scalar(ScalarType::Float64)),
        feature("signed_up_at", ValueType::Scalar(ScalarType::Timestamp)),
        feature("premium", ValueType::Scalar(ScalarType::Bool)),
        feature("segment", ValueType::Scalar(ScalarType::String)),
        feature("top_categories", ValueType::List(ScalarType::String)),
        feature("recent_items", ValueType::List(ScalarType::String)),
        feature("orders_30d", ValueType::Scalar(ScalarType::Int64)),
        feature("embedding", ValueType::Vector(EMBEDDING_DIM as u32)),
    ];
    g.serving = ServingPolicy {
        tiers: tiers.to_vec(),
        soft_ttl: SOFT_TTL,
        hard_ttl: HARD_TTL,
        ..ServingPolicy::default()
    };
    g
}

fn profile(i: usize) -> Record {
    const COUNTRIES: [&str; 4] = ["DE", "US", "FR", "BR"];
    const LANGUAGES: [&str; 4] = ["de-DE", "en-US", "fr-FR", "pt-BR"];
    let mut rng = StdRng::seed_from_u64(i as u64);
    Record::new(
        EVENT_TIME,
        vec![
            Value::String(COUNTRIES[i % 4].to_owned()),
            Value::String(LANGUAGES[i % 4].to_owned()),
            Value::Int64(18 + (i % 40) as i64),
            Value::Float64(rng.random_range(0.0..5_000.0)),
            Value::Timestamp(EVENT_TIME - rng.random_range(0..100_000_000_000)),
            Value::Bool(i % 7 == 3),
            Value::String(format!("segment-{:04}", i % 1000)),
            Value::List(
                (0..3)
                    .map(|_| Value::String(format!("cat-{:04}", rng.random_range(0..1000))))
                    .collect(),
            ),
            Value::List(
                (0..RECENT_ITEMS)
                    .map(|_| Value::String(format!("i{:07}", rng.random_range(0..10_000_000))))
                    .collect(),
            ),
            Value::Int64(rng.random_range(0..60)),
            Value::Vector(
                (0..EMBEDDING_DIM)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect(),
            ),
        ],
    )
}

fn entity(i: usize) -> EntityKey {
    EntityKey(format!("u{i:07}"))
}

/// The tiers' configurations, each a group of its own (its name is in the cache keys).
const CONFIGURATIONS: [(&str, &str, &[Tier]); 4] = [
    ("local only", "bench_local", &[Tier::Local]),
    ("remote only", "bench_remote", &[Tier::Remote]),
    ("store only", "bench_store", &[]),
    ("all three", "bench_all", &[Tier::Local, Tier::Remote]),
];

// ---------------------------------------------------------------------------------------------
// The store, counted

/// The store under the tiers, counting the entities asked of it: the reads no tier answered.
struct CountedStore {
    store: EmbeddedStore,
    reads: AtomicU64,
}

#[async_trait]
impl RecordReader for CountedStore {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> cellar_store::Result<Vec<Option<Record>>> {
        self.reads
            .fetch_add(entities.len() as u64, Ordering::Relaxed);
        self.store.get_attributes(group, entities).await
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> cellar_store::Result<Vec<Vec<Record>>> {
        self.reads
            .fetch_add(entities.len() as u64, Ordering::Relaxed);
        self.store.scan_timeseries(group, entities, query).await
    }
}

// ---------------------------------------------------------------------------------------------
// Workload

/// Requests of one shape: `per_request` consecutive entity keys each.
struct Workload {
    keys: Vec<EntityKey>,
    per_request: usize,
}

impl Workload {
    /// Zipf draws over `ranked` (rank 1 first); with `per_request > 1` the entities of one
    /// request are distinct.
    fn zipf(
        ranked: &[EntityKey],
        exponent: f64,
        per_request: usize,
        seed: u64,
    ) -> BenchResult<Workload> {
        let mut rng = StdRng::seed_from_u64(seed);
        let zipf = Zipf::new(ranked.len() as f64, exponent)
            .map_err(|e| format!("Zipf of exponent {exponent}: {e}"))?;
        let draw = |rng: &mut StdRng| (zipf.sample(rng) as usize).clamp(1, ranked.len()) - 1;
        let requests = DRAWS / per_request;
        let mut keys = Vec::with_capacity(requests * per_request);
        let mut seen = HashSet::with_capacity(per_request);
        for _ in 0..requests {
            seen.clear();
            while seen.len() < per_request {
                let rank = draw(&mut rng);
                if per_request == 1 || seen.insert(rank) {
                    keys.push(ranked[rank].clone());
                    if per_request == 1 {
                        break;
                    }
                }
            }
        }
        Ok(Workload { keys, per_request })
    }

    fn requests(&self) -> usize {
        self.keys.len() / self.per_request
    }

    fn request(&self, i: usize) -> &[EntityKey] {
        let at = (i % self.requests()) * self.per_request;
        &self.keys[at..at + self.per_request]
    }
}

/// What the tasks of one run saw.
struct Measured {
    requests: u64,
    lookups: u64,
    found: u64,
    errors: u64,
    elapsed: Duration,
    /// Request latencies in nanoseconds.
    latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // 1 ns to 60 s at 3 significant digits: constant bounds that are valid.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs `tasks` concurrent readers of `group` through `top` for `duration`.
async fn drive(
    top: Arc<dyn RecordReader>,
    group: Arc<FeatureGroup>,
    workload: Arc<Workload>,
    tasks: usize,
    duration: Duration,
) -> Measured {
    let started = Instant::now();
    let deadline = started + duration;
    let spacing = workload.requests() / tasks;
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (top, group, workload) = (top.clone(), group.clone(), workload.clone());
            tokio::spawn(async move {
                let mut m = Measured {
                    requests: 0,
                    lookups: 0,
                    found: 0,
                    errors: 0,
                    elapsed: Duration::ZERO,
                    latency: histogram(),
                };
                // Tasks start spread over the sequence, so they do not ask for the same keys
                // in lockstep.
                let mut next = t * spacing;
                while Instant::now() < deadline {
                    let keys = workload.request(next);
                    next += 1;
                    let at = Instant::now();
                    let got = top.get_attributes(&group, keys).await;
                    m.latency
                        .saturating_record(at.elapsed().as_nanos().min(u64::MAX as u128) as u64);
                    m.requests += 1;
                    match got {
                        Ok(records) => {
                            m.lookups += records.len() as u64;
                            m.found += records.iter().filter(|r| r.is_some()).count() as u64;
                        }
                        Err(_) => m.errors += 1,
                    }
                    // A request answered from the local tier never waits: without this, a
                    // task would hold its worker until the deadline and starve the others
                    // (and the tiers' background tasks), as a server's connections never do.
                    tokio::task::yield_now().await;
                }
                m
            })
        })
        .collect();
    let mut total = Measured {
        requests: 0,
        lookups: 0,
        found: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for h in handles {
        match h.await {
            Ok(m) => {
                total.requests += m.requests;
                total.lookups += m.lookups;
                total.found += m.found;
                total.errors += m.errors;
                let _ = total.latency.add(&m.latency);
            }
            Err(e) => panic!("a load task failed: {e}"),
        }
    }
    total.elapsed = started.elapsed();
    total
}

// ---------------------------------------------------------------------------------------------
// Counters

/// The tiers' counters at one moment, for one group.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// Local tier: hits, negative hits, misses.
    local: [u64; 3],
    /// Remote tier: hits, negative hits, misses.
    remote: [u64; 3],
    /// Remote lookups sent to the store without asking Redis (breaker open, error, timeout).
    bypassed: u64,
    timeouts: u64,
    errors: u64,
    fills_dropped: u64,
    store_reads: u64,
}

impl Counters {
    fn read(
        metrics: &CacheMetrics,
        remote: &RemoteTier,
        store: &CountedStore,
        group: &str,
    ) -> Self {
        let tier = |t| {
            [Outcome::Hit, Outcome::NegativeHit, Outcome::Miss].map(|o| metrics.count(t, group, o))
        };
        let stats = remote.stats();
        Counters {
            local: tier(Tier::Local),
            remote: tier(Tier::Remote),
            bypassed: stats.bypassed,
            timeouts: stats.timeouts,
            errors: stats.errors,
            fills_dropped: stats.fills_dropped,
            store_reads: store.reads.load(Ordering::Relaxed),
        }
    }

    fn since(&self, before: &Counters) -> Counters {
        let d = |a: [u64; 3], b: [u64; 3]| [0, 1, 2].map(|i| a[i].saturating_sub(b[i]));
        Counters {
            local: d(self.local, before.local),
            remote: d(self.remote, before.remote),
            bypassed: self.bypassed.saturating_sub(before.bypassed),
            timeouts: self.timeouts.saturating_sub(before.timeouts),
            errors: self.errors.saturating_sub(before.errors),
            fills_dropped: self.fills_dropped.saturating_sub(before.fills_dropped),
            store_reads: self.store_reads.saturating_sub(before.store_reads),
        }
    }
}

/// Hits over the lookups that reached a tier; `None` when none did (the tier is not in the
/// configuration).
fn hit_ratio(outcomes: [u64; 3], bypassed: u64) -> Option<f64> {
    let asked = outcomes.iter().sum::<u64>() + bypassed;
    (asked > 0).then(|| outcomes[0] as f64 / asked as f64)
}

fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", 100.0 * r))
}

// ---------------------------------------------------------------------------------------------
// redis-benchmark

#[derive(Debug, Clone, Copy)]
struct Baseline {
    gets_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Runs `redis-benchmark` GETs of `key` (with `__rand_int__` over the entities) and parses its
/// CSV line.
async fn redis_benchmark(
    o: &Options,
    key: &str,
    pipeline: usize,
    requests: u64,
) -> BenchResult<Baseline> {
    let out = tokio::process::Command::new(&o.redis_benchmark)
        .arg("-u")
        .arg(&o.redis)
        .args(["-c", &o.connections.to_string()])
        .args(["-n", &requests.to_string()])
        .args(["-r", &o.entities.to_string()])
        .args(["-P", &pipeline.to_string()])
        .arg("--csv")
        .args(["GET", key])
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", o.redis_benchmark))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    parse_csv(&stdout).ok_or_else(|| format!("unexpected redis-benchmark output: {stdout}").into())
}

/// Reads `"test","rps",...,"p50_latency_ms",...,"p99_latency_ms",...` and the row below it.
fn parse_csv(out: &str) -> Option<Baseline> {
    let fields = |line: &str| -> Vec<String> {
        line.split(',')
            .map(|f| f.trim().trim_matches('"').to_owned())
            .collect()
    };
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let header = fields(lines.find(|l| l.starts_with("\"test\""))?);
    let row = fields(lines.next()?);
    let column = |name: &str| -> Option<f64> {
        let i = header.iter().position(|h| h == name)?;
        row.get(i)?.parse().ok()
    };
    Some(Baseline {
        gets_per_s: column("rps")?,
        p50_us: column("p50_latency_ms").unwrap_or(f64::NAN) * 1000.0,
        p99_us: column("p99_latency_ms").unwrap_or(f64::NAN) * 1000.0,
    })
}

/// Unpipelined and pipelined GETs, each run for about `--seconds`: a short probe sizes `-n`.
async fn baselines(o: &Options, key: &str) -> BenchResult<[Baseline; 2]> {
    let mut out = [Baseline {
        gets_per_s: 0.0,
        p50_us: 0.0,
        p99_us: 0.0,
    }; 2];
    for (slot, pipeline) in [1, PIPELINE].into_iter().enumerate() {
        let probe_n = 20_000 * pipeline as u64;
        let probe = redis_benchmark(o, key, pipeline, probe_n).await?;
        let n = ((probe.gets_per_s * o.seconds) as u64).max(probe_n);
        out[slot] = redis_benchmark(o, key, pipeline, n).await?;
    }
    Ok(out)
}

fn better(a: Baseline, b: Baseline) -> Baseline {
    if b.gets_per_s > a.gets_per_s {
        b
    } else {
        a
    }
}

// ---------------------------------------------------------------------------------------------
// Redis housekeeping

async fn redis_connection(url: &str) -> BenchResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// Copies of `value` at the keys `redis-benchmark` will ask for.
async fn seed_baseline_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    key_prefix: &str,
    entities: usize,
    value: &[u8],
) -> BenchResult<()> {
    for chunk in (0..entities).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET")
                .arg(format!("{key_prefix}{i:012}"))
                .arg(value)
                .arg("PX")
                .arg(HARD_TTL.as_millis() as u64)
                .ignore();
        }
        let () = pipe.query_async(conn).await?;
    }
    Ok(())
}

/// Deletes every key under `prefix`; returns how many.
async fn delete_prefix(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> BenchResult<u64> {
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct Case {
    configuration: &'static str,
    per_request: usize,
    measured: Measured,
    counters: Counters,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

async fn run(o: &Options, key_prefix: &str) -> BenchResult<()> {
    println!(
        "machine: {}; load average {} at start",
        machine(),
        load_average()
    );

    // The store, loaded.
    let dir = tempfile::tempdir()?;
    let embedded = EmbeddedStore::open(dir.path())?;
    let groups: Vec<Arc<FeatureGroup>> = CONFIGURATIONS
        .iter()
        .map(|(_, name, tiers)| Arc::new(profile_group(name, tiers)))
        .collect();
    let loading = Instant::now();
    for chunk in (0..o.entities).collect::<Vec<_>>().chunks(LOAD_BATCH) {
        let writes: Vec<Write> = chunk
            .iter()
            .map(|&i| Write {
                entity: entity(i),
                record: profile(i),
            })
            .collect();
        for g in &groups {
            embedded.put(g, &writes).await?;
        }
    }
    println!(
        "store: {} entities x {} groups loaded in {:.1} s",
        o.entities,
        groups.len(),
        loading.elapsed().as_secs_f64()
    );

    // The stack, as the server builds it: local over remote over the store.
    let store = Arc::new(CountedStore {
        store: embedded,
        reads: AtomicU64::new(0),
    });
    let metrics = CacheMetrics::default();
    let config = RemoteConfig {
        urls: vec![o.redis.clone()],
        key_prefix: key_prefix.to_owned(),
        ..RemoteConfig::default()
    };
    let remote = Arc::new(RemoteTier::new(config, store.clone(), metrics.clone())?);
    let local = Arc::new(LocalTier::new(
        o.local_bytes,
        remote.clone(),
        metrics.clone(),
    ));
    let top: Arc<dyn RecordReader> = local.clone();

    // The value size, as the remote tier actually stores it.
    let mut conn = redis_connection(&o.redis).await?;
    let remote_group = &groups[1];
    top.get_attributes(remote_group, &[entity(0)]).await?;
    remote.drain().await;
    let cached: Option<Vec<u8>> = redis::cmd("GET")
        .arg(format!("{key_prefix}{}#{}", remote_group.name, entity(0)))
        .query_async(&mut conn)
        .await?;
    let value = cached.ok_or("the remote tier did not cache the first read")?;
    println!(
        "value: {} bytes in the store's codec, {} bytes as a Redis value (the remote tier's \
         header included)",
        codec::encoded_len(&profile(0)),
        value.len()
    );
    let baseline_key = format!("{key_prefix}rb:");
    seed_baseline_keys(&mut conn, &baseline_key, o.entities, &value).await?;
    let rb_key = format!("{baseline_key}__rand_int__");
    println!(
        "redis-benchmark: GET {rb_key} -r {} -c {}, unpipelined and -P {PIPELINE}, \
         {:.0} s each, before and after the tier cases",
        o.entities, o.connections, o.seconds
    );
    let before = baselines(o, &rb_key).await?;

    // The workload: Zipf over the entities in a scattered order, so that hot keys are not
    // neighbours in the store's key order.
    let mut ranked: Vec<EntityKey> = (0..o.entities).map(entity).collect();
    ranked.shuffle(&mut StdRng::seed_from_u64(7));
    let batch = Arc::new(Workload::zipf(&ranked, o.zipf, BATCH, 1)?);
    let single = Arc::new(Workload::zipf(&ranked, o.zipf, 1, 2)?);
    let distinct_hot = {
        let seen: HashSet<&EntityKey> = single.keys.iter().collect();
        seen.len()
    };
    println!(
        "workload: Zipf s={} over {} entities ({} distinct in {} single draws); {} concurrent \
         tasks; local tier {} MiB; remote tier: one multiplexed Redis connection; {:.0} s \
         warm-up + {:.0} s per case",
        o.zipf,
        o.entities,
        distinct_hot,
        single.keys.len(),
        o.connections,
        o.local_bytes >> 20,
        o.warmup,
        o.seconds
    );
    println!();
    println!(
        "{:<12} {:>9} {:>11} {:>11} {:>8} {:>8} {:>10} {:>10} {:>11}",
        "tiers",
        "entities",
        "requests/s",
        "lookups/s",
        "p50 µs",
        "p99 µs",
        "local hit",
        "remote hit",
        "store reads"
    );

    let mut cases = Vec::new();
    let all: Vec<EntityKey> = (0..o.entities).map(entity).collect();
    for (config, group) in CONFIGURATIONS.iter().zip(&groups) {
        if !o.only.is_empty() && !o.only.iter().any(|s| config.1.ends_with(s.as_str())) {
            continue;
        }
        // Every entity read once, as a server that has run for a while has seen them all:
        // the tiers then hold what their budgets allow, and the Zipf warm-up below settles
        // which entities those are.
        if o.prefill {
            for chunk in all.chunks(BATCH) {
                top.get_attributes(group, chunk).await?;
            }
        }
        remote.drain().await;
        for workload in [&batch, &single] {
            let warmup = Duration::from_secs_f64(o.warmup);
            if !warmup.is_zero() {
                drive(
                    top.clone(),
                    group.clone(),
                    workload.clone(),
                    o.connections,
                    warmup,
                )
                .await;
            }
            remote.drain().await;
            let start = Counters::read(&metrics, &remote, &store, &group.name);
            let measured = drive(
                top.clone(),
                group.clone(),
                workload.clone(),
                o.connections,
                Duration::from_secs_f64(o.seconds),
            )
            .await;
            let counters = Counters::read(&metrics, &remote, &store, &group.name).since(&start);
            let case = Case {
                configuration: config.0,
                per_request: workload.per_request,
                measured,
                counters,
            };
            print_case(&case);
            cases.push(case);
        }
    }
    println!();
    println!(
        "local tier holds {:.1} MiB of its {} MiB (entries of every group that names it)",
        local.weighted_size() as f64 / (1 << 20) as f64,
        o.local_bytes >> 20
    );

    let after = baselines(o, &rb_key).await?;
    let unpipelined = better(before[0], after[0]);
    let pipelined = better(before[1], after[1]);
    println!();
    println!(
        "redis-benchmark GET, {}-byte values, -c {}, -r {} (better of before / after):",
        value.len(),
        o.connections,
        o.entities
    );
    println!(
        "{:<14} {:>11} {:>8} {:>8}   {:>11} / {:>11}",
        "", "GETs/s", "p50 µs", "p99 µs", "before", "after"
    );
    for (name, best, b, a) in [
        ("unpipelined", unpipelined, before[0], after[0]),
        ("-P 16", pipelined, before[1], after[1]),
    ] {
        println!(
            "{:<14} {:>11.0} {:>8.0} {:>8.0}   {:>11.0} / {:>11.0}",
            name, best.gets_per_s, best.p50_us, best.p99_us, b.gets_per_s, a.gets_per_s
        );
    }

    let remote_case = |per_request| {
        cases
            .iter()
            .find(|c| c.configuration == "remote only" && c.per_request == per_request)
    };
    println!();
    if let Some(c) = remote_case(BATCH) {
        let lookups = c.measured.lookups as f64 / c.measured.elapsed.as_secs_f64();
        let ratio = lookups / pipelined.gets_per_s;
        println!(
            "remote only, {BATCH} entities: {lookups:.0} lookups/s = {:.0}% of redis-benchmark \
             -P {PIPELINE} GETs/s (target >= 50%: {})",
            100.0 * ratio,
            if ratio >= 0.5 { "met" } else { "NOT met" }
        );
    }
    if let Some(c) = remote_case(1) {
        // The tier multiplexes its tasks' reads on one connection, so Redis takes several per
        // system call, as from a pipelining client: the pipelined GETs are the like-for-like
        // baseline, the unpipelined ones (one GET in flight per connection) only a floor.
        let requests = c.measured.requests as f64 / c.measured.elapsed.as_secs_f64();
        println!(
            "remote only, 1 entity: {requests:.0} requests/s = {:.0}% of redis-benchmark \
             -P {PIPELINE} GETs/s ({:.0}% of its unpipelined GETs/s at {} connections)",
            100.0 * requests / pipelined.gets_per_s,
            100.0 * requests / unpipelined.gets_per_s,
            o.connections,
        );
    }
    println!("load average {} at the end", load_average());
    Ok(())
}

fn print_case(c: &Case) {
    let m = &c.measured;
    let secs = m.elapsed.as_secs_f64();
    let k = &c.counters;
    let store_reads = (m.lookups > 0).then(|| k.store_reads as f64 / m.lookups as f64);
    println!(
        "{:<12} {:>9} {:>11.0} {:>11.0} {:>8.1} {:>8.1} {:>10} {:>10} {:>11}",
        c.configuration,
        c.per_request,
        m.requests as f64 / secs,
        m.lookups as f64 / secs,
        m.latency.value_at_quantile(0.50) as f64 / 1000.0,
        m.latency.value_at_quantile(0.99) as f64 / 1000.0,
        percent(hit_ratio(k.local, 0)),
        percent(hit_ratio(k.remote, k.bypassed)),
        percent(store_reads),
    );
    let missing = m.lookups - m.found;
    if m.errors + missing + k.bypassed + k.timeouts + k.errors + k.fills_dropped > 0 {
        println!(
            "{:<12} !! request errors {}, records missing {}, redis bypassed {} (timeouts {}, \
             errors {}), back-fills dropped {}",
            "", m.errors, missing, k.bypassed, k.timeouts, k.errors, k.fills_dropped
        );
    }
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let o = parse_options()?;
    let key_prefix = format!("cellar-bench:{:08x}:", rand::random::<u32>());
    let outcome = run(&o, &key_prefix).await;
    match redis_connection(&o.redis).await {
        Ok(mut conn) => match delete_prefix(&mut conn, &key_prefix).await {
            Ok(n) => println!("deleted {n} Redis keys under {key_prefix}"),
            Err(e) => eprintln!("could not delete the Redis keys under {key_prefix}: {e}"),
        },
        Err(e) => eprintln!("could not delete the Redis keys under {key_prefix}: {e}"),
    }
    outcome
}
