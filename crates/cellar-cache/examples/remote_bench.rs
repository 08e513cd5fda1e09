//! Lookups per second through the remote tier, every lookup a Redis hit.
//!
//! ```sh
//! cargo run --release -p cellar-cache --example remote_bench -- [redis-url] [seconds] [tasks]
//! ```
//!
//! Loads 10,000 attribute records and 10,000 series of 100 records into an in-memory tier
//! below, warms Redis with them, then runs each case for the given seconds with many
//! concurrent tasks: 100 entities per request, 1 entity per request, and one series' top 50
//! per request. Prints requests/s, entity lookups/s and request latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cellar_cache::{CacheMetrics, RemoteConfig, RemoteTier};
use cellar_spec::{EntityKey, FeatureGroup, ServingPolicy, Tier, Value, WriteStrategy};
use cellar_store::conformance::{attribute_group, timeseries_group};
use cellar_store::{Record, RecordReader, Result, TimeseriesQuery};
use rand::Rng;

const ENTITIES: usize = 10_000;
const SERIES_LEN: usize = 100;

/// The tier below: records made up on demand, so only the warm-up reads it.
struct Generated;

fn profile(entity: &EntityKey) -> Record {
    Record::new(
        1_700_000_000_000,
        vec![
            Value::String(format!("country-{}", entity.0.len())),
            Value::Int64(31),
            Value::List(vec![
                Value::String("bike".into()),
                Value::String("kayak".into()),
            ]),
        ],
    )
}

#[async_trait]
impl RecordReader for Generated {
    async fn get_attributes(
        &self,
        _: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        Ok(entities.iter().map(|e| Some(profile(e))).collect())
    }

    async fn scan_timeseries(
        &self,
        _: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        Ok(entities
            .iter()
            .map(|_| {
                (0..SERIES_LEN.min(query.top_n))
                    .map(|i| {
                        Record::new(
                            1_700_000_000_000 - i as i64 * 1000,
                            vec![Value::String(format!("a{i}")), Value::String("s1".into())],
                        )
                    })
                    .collect()
            })
            .collect())
    }
}

fn policy() -> ServingPolicy {
    ServingPolicy {
        tiers: vec![Tier::Remote],
        soft_ttl: Duration::from_secs(240),
        hard_ttl: Duration::from_secs(300),
        jitter: 0.1,
        negative_ttl: Duration::from_secs(60),
        write: WriteStrategy::Through,
    }
}

fn entity(i: usize) -> EntityKey {
    EntityKey(format!("u{i}"))
}

#[derive(Clone, Copy)]
enum Case {
    Attributes { per_request: usize },
    Series { top_n: usize },
}

struct Outcome {
    requests: u64,
    lookups: u64,
    latencies_us: Vec<u64>,
}

async fn run(
    tier: Arc<RemoteTier>,
    group: Arc<FeatureGroup>,
    case: Case,
    tasks: usize,
    duration: Duration,
) -> Outcome {
    let deadline = Instant::now() + duration;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let tier = tier.clone();
            let group = group.clone();
            tokio::spawn(async move {
                let mut out = Outcome {
                    requests: 0,
                    lookups: 0,
                    latencies_us: Vec::new(),
                };
                while Instant::now() < deadline {
                    let started = Instant::now();
                    match case {
                        Case::Attributes { per_request } => {
                            let keys: Vec<EntityKey> = {
                                let mut rng = rand::rng();
                                (0..per_request)
                                    .map(|_| entity(rng.random_range(0..ENTITIES)))
                                    .collect()
                            };
                            let got = tier.get_attributes(&group, &keys).await.unwrap();
                            out.lookups += got.len() as u64;
                        }
                        Case::Series { top_n } => {
                            let e = entity(rand::rng().random_range(0..ENTITIES));
                            let query = TimeseriesQuery { top_n, since: None };
                            tier.scan_timeseries(&group, &[e], query).await.unwrap();
                            out.lookups += 1;
                        }
                    }
                    out.requests += 1;
                    out.latencies_us
                        .push(started.elapsed().as_micros().min(u64::MAX as u128) as u64);
                }
                out
            })
        })
        .collect();
    let mut total = Outcome {
        requests: 0,
        lookups: 0,
        latencies_us: Vec::new(),
    };
    for h in handles {
        let o = h.await.unwrap();
        total.requests += o.requests;
        total.lookups += o.lookups;
        total.latencies_us.extend(o.latencies_us);
    }
    total.latencies_us.sort_unstable();
    total
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    let seconds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let tasks: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(64);

    let config = RemoteConfig {
        urls: vec![url.clone()],
        key_prefix: format!("cellar-bench:{:08x}:", rand::random::<u32>()),
        timeout: Duration::from_millis(500),
        write_timeout: Duration::from_secs(2),
        ..RemoteConfig::default()
    };
    let tier =
        Arc::new(RemoteTier::new(config, Arc::new(Generated), CacheMetrics::default()).unwrap());
    let mut profiles = attribute_group("bench_profile");
    profiles.serving = policy();
    let profiles = Arc::new(profiles);
    let mut clicks = timeseries_group("bench_clicks", Some(SERIES_LEN as u32), None);
    clicks.serving = policy();
    let clicks = Arc::new(clicks);

    // Warm-up: every entity once, so every measured lookup is a hit.
    let all: Vec<EntityKey> = (0..ENTITIES).map(entity).collect();
    for chunk in all.chunks(500) {
        tier.get_attributes(&profiles, chunk).await.unwrap();
        let query = TimeseriesQuery {
            top_n: SERIES_LEN,
            since: None,
        };
        tier.scan_timeseries(&clicks, chunk, query).await.unwrap();
        tier.drain().await;
    }
    let warm = tier.stats();
    println!(
        "redis {url}: {ENTITIES} entities warmed ({} values written), {tasks} concurrent tasks, {seconds} s per case",
        warm.fills_applied
    );
    println!(
        "{:<32} {:>12} {:>16} {:>9} {:>9}",
        "case", "requests/s", "lookups/s", "p50 ms", "p99 ms"
    );
    let cases = [
        (
            "100 entities x 1 attribute group",
            profiles.clone(),
            Case::Attributes { per_request: 100 },
        ),
        (
            "1 entity x 1 attribute group",
            profiles.clone(),
            Case::Attributes { per_request: 1 },
        ),
        (
            "1 entity x series top 50 of 100",
            clicks.clone(),
            Case::Series { top_n: 50 },
        ),
    ];
    for (name, group, case) in cases {
        let before = tier.stats();
        let o = run(
            tier.clone(),
            group,
            case,
            tasks,
            Duration::from_secs(seconds),
        )
        .await;
        let after = tier.stats();
        let secs = seconds as f64;
        println!(
            "{:<32} {:>12.0} {:>16.0} {:>9.3} {:>9.3}   (hits {}, misses {}, bypassed {})",
            name,
            o.requests as f64 / secs,
            o.lookups as f64 / secs,
            percentile(&o.latencies_us, 0.50),
            percentile(&o.latencies_us, 0.99),
            after.hits - before.hits,
            after.misses - before.misses,
            after.bypassed - before.bypassed,
        );
    }
}
