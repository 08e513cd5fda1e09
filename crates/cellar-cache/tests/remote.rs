//! The remote tier against a real Redis, named by `CELLAR_TEST_REDIS` (e.g.
//! `redis://127.0.0.1:6379`; `scripts/test.sh` starts one and sets it). The tests that need it
//! are ignored by a plain `cargo test`; run with `--include-ignored` and without the variable,
//! they fail. Each test uses its own key prefix, so tests can share the server and run in
//! parallel. The tests that stop a Redis, or build a cluster, start their own `redis-server`
//! processes on free ports.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cellar_cache::remote::Found;
use cellar_cache::{BreakerConfig, BreakerState, CacheMetrics, RemoteConfig, RemoteTier};
use cellar_spec::{EntityKey, FeatureGroup, ServingPolicy, Tier, Value, WriteStrategy};
use cellar_store::conformance::{attribute_group, timeseries_group};
use cellar_store::{Record, RecordReader, Result, TimeseriesQuery};

#[path = "../../../test-support/free_port.rs"]
mod port;
use port::free_port;

/// The test Redis's URL. A test asked for without one fails: passing would claim a test that
/// never ran.
fn redis_url() -> String {
    match std::env::var("CELLAR_TEST_REDIS") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            panic!("CELLAR_TEST_REDIS is not set: this test needs Redis; scripts/test.sh starts it")
        }
    }
}

/// The tier below, in memory, counting the reads that reach it.
#[derive(Default)]
struct CountingReader {
    attributes: Mutex<HashMap<(String, EntityKey), Record>>,
    /// Each entity's records, newest first.
    series: Mutex<HashMap<(String, EntityKey), Vec<Record>>>,
    reads: AtomicUsize,
    /// Milliseconds each attribute read takes.
    delay_ms: AtomicUsize,
}

impl CountingReader {
    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    fn put(&self, group: &FeatureGroup, entity: &str, record: Record) {
        self.attributes
            .lock()
            .unwrap()
            .insert((group.name.clone(), key(entity)), record);
    }

    fn push(&self, group: &FeatureGroup, entity: &str, record: Record) {
        let mut series = self.series.lock().unwrap();
        let records = series.entry((group.name.clone(), key(entity))).or_default();
        records.push(record);
        records.sort_by_key(|r| std::cmp::Reverse(r.event_time));
        if let Some(max) = group.retention.max_records {
            records.truncate(max as usize);
        }
    }
}

#[async_trait]
impl RecordReader for CountingReader {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let delay = self.delay_ms.load(Ordering::SeqCst) as u64;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let attributes = self.attributes.lock().unwrap();
        Ok(entities
            .iter()
            .map(|e| attributes.get(&(group.name.clone(), e.clone())).cloned())
            .collect())
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let series = self.series.lock().unwrap();
        Ok(entities
            .iter()
            .map(|e| {
                series
                    .get(&(group.name.clone(), e.clone()))
                    .map(|records| {
                        records
                            .iter()
                            .take_while(|r| query.since.is_none_or(|s| r.event_time >= s))
                            .take(query.top_n)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect())
    }
}

fn key(s: &str) -> EntityKey {
    EntityKey(s.to_owned())
}

fn record(at: i64, label: &str) -> Record {
    Record::new(at, vec![Value::String(label.to_owned())])
}

fn label(r: &Option<Record>) -> Option<&str> {
    match r.as_ref()?.value(0) {
        Value::String(s) => Some(s),
        _ => None,
    }
}

fn policy() -> ServingPolicy {
    ServingPolicy {
        tiers: vec![Tier::Remote],
        soft_ttl: Duration::from_secs(30),
        hard_ttl: Duration::from_secs(60),
        jitter: 0.0,
        negative_ttl: Duration::from_secs(30),
        write: WriteStrategy::Through,
        ..ServingPolicy::default()
    }
}

fn profile_group(policy: ServingPolicy) -> FeatureGroup {
    let mut g = attribute_group("profile");
    g.serving = policy;
    g
}

fn config(url: &str) -> RemoteConfig {
    RemoteConfig {
        urls: vec![url.to_owned()],
        key_prefix: format!("cellar-test:{:016x}:", rand::random::<u64>()),
        // Generous, so that a loaded test machine does not open the breaker by accident.
        timeout: Duration::from_millis(500),
        write_timeout: Duration::from_millis(1000),
        ..RemoteConfig::default()
    }
}

struct Fixture {
    next: Arc<CountingReader>,
    tier: RemoteTier,
    metrics: CacheMetrics,
}

impl Fixture {
    fn new(config: RemoteConfig) -> Fixture {
        let next = Arc::new(CountingReader::default());
        let metrics = CacheMetrics::default();
        let tier = RemoteTier::new(config, next.clone(), metrics.clone()).unwrap();
        Fixture {
            next,
            tier,
            metrics,
        }
    }

    async fn get(&self, group: &FeatureGroup, entity: &str) -> Option<Record> {
        self.tier
            .get_attributes(group, &[key(entity)])
            .await
            .unwrap()
            .pop()
            .flatten()
    }

    async fn times(
        &self,
        group: &FeatureGroup,
        entity: &str,
        top_n: usize,
        since: Option<i64>,
    ) -> Vec<i64> {
        self.tier
            .scan_timeseries(group, &[key(entity)], TimeseriesQuery { top_n, since })
            .await
            .unwrap()
            .pop()
            .unwrap()
            .iter()
            .map(|r| r.event_time)
            .collect()
    }
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn a_miss_reads_the_next_tier_once_then_hits_redis() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    let g = profile_group(policy());
    let stored = Record {
        event_time: 1_700_000_000_123,
        values: vec![
            Value::String("KR".into()),
            Value::List(vec![Value::String("bike".into())]),
            Value::Float64(0.25),
        ],
        applied: vec![cellar_store::AppliedOffset {
            source: 3,
            offset: 99,
        }],
        state: vec![],
    };
    f.next.put(&g, "u1", stored.clone());
    f.next.put(&g, "u2", record(5, "two"));

    let first = f
        .tier
        .get_attributes(&g, &[key("u1"), key("nobody"), key("u2")])
        .await
        .unwrap();
    assert_eq!(f.next.reads(), 1);
    f.tier.drain().await;
    let second = f
        .tier
        .get_attributes(&g, &[key("u1"), key("nobody"), key("u2")])
        .await
        .unwrap();
    assert_eq!(f.next.reads(), 1, "the second read is answered by Redis");
    assert_eq!(first, second);
    assert_eq!(second[0].as_ref(), Some(&stored));
    assert_eq!(label(&second[2]), Some("two"));

    let stats = f.tier.stats();
    assert_eq!((stats.misses, stats.hits, stats.negative_hits), (3, 2, 1));
    assert_eq!(stats.fills_applied, 3);
    assert_eq!(stats.breaker, BreakerState::Closed);
    assert_eq!(
        f.metrics
            .count(Tier::Remote, "profile", cellar_cache::Outcome::Hit),
        2
    );
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn missing_entities_are_cached_until_the_negative_ttl() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    let g = profile_group(ServingPolicy {
        negative_ttl: Duration::from_millis(300),
        ..policy()
    });
    assert!(f.get(&g, "ghost").await.is_none());
    f.tier.drain().await;
    assert!(f.get(&g, "ghost").await.is_none());
    assert_eq!(f.next.reads(), 1);
    assert_eq!(f.tier.stats().negative_hits, 1);
    // The entity appears below; the negative entry answers until it expires.
    f.next.put(&g, "ghost", record(10, "here"));
    assert!(f.get(&g, "ghost").await.is_none());
    assert_eq!(f.next.reads(), 1);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(label(&f.get(&g, "ghost").await), Some("here"));
    assert_eq!(f.next.reads(), 2);
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn a_slow_back_fill_never_overwrites_a_fresher_write() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    let g = profile_group(policy());
    // A read found the old record below and its fill is on the way, when a newer record is
    // written through; the fill arrives last.
    f.tier
        .record_written(&g, &key("u1"), &record(20, "new"))
        .await;
    let applied = f
        .tier
        .apply_fill(&g, &key("u1"), Found::Record(record(10, "old")))
        .await;
    assert!(!applied, "the older fill is refused");
    assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
    // A negative fill loses to a record as well.
    assert!(!f.tier.apply_fill(&g, &key("u1"), Found::Missing).await);
    assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
    // Write-through keeps the first of two equal event times, as the store does; a late,
    // older write changes nothing.
    f.tier
        .record_written(&g, &key("u1"), &record(20, "same time"))
        .await;
    f.tier
        .record_written(&g, &key("u1"), &record(15, "late"))
        .await;
    assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
    // A read-modify-write result replaces an equal event time, not a newer one.
    f.tier
        .record_replaced(&g, &key("u1"), &record(20, "recounted"))
        .await;
    assert_eq!(label(&f.get(&g, "u1").await), Some("recounted"));
    f.tier
        .record_replaced(&g, &key("u1"), &record(19, "older"))
        .await;
    assert_eq!(label(&f.get(&g, "u1").await), Some("recounted"));
    // A fill of the same record (a refresh) is taken.
    assert!(
        f.tier
            .apply_fill(&g, &key("u1"), Found::Record(record(20, "recounted")))
            .await
    );
    assert_eq!(f.next.reads(), 0, "every answer came from Redis");
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn write_around_leaves_a_marker_that_older_fills_cannot_replace() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    let g = profile_group(ServingPolicy {
        write: WriteStrategy::Around,
        ..policy()
    });
    f.next.put(&g, "u1", record(10, "old"));
    assert_eq!(label(&f.get(&g, "u1").await), Some("old"));
    f.tier.drain().await;
    assert_eq!(label(&f.get(&g, "u1").await), Some("old"));
    assert_eq!(f.next.reads(), 1);
    // The store takes a newer record; the cached copy is invalidated.
    f.next.put(&g, "u1", record(20, "new"));
    f.tier
        .record_written(&g, &key("u1"), &record(20, "new"))
        .await;
    // A fill that read the store before the write arrives late, and loses.
    assert!(
        !f.tier
            .apply_fill(&g, &key("u1"), Found::Record(record(10, "old")))
            .await
    );
    assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
    assert_eq!(f.next.reads(), 2);
    f.tier.drain().await;
    assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
    assert_eq!(f.next.reads(), 2, "the fill after the write is taken");
    // Deleting invalidates too.
    f.tier.invalidate(&g, &[key("u1")]).await;
    assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
    assert_eq!(f.next.reads(), 3);
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn past_the_soft_ttl_a_value_is_served_and_refreshed() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    let g = profile_group(ServingPolicy {
        soft_ttl: Duration::from_millis(100),
        ..policy()
    });
    f.next.put(&g, "u1", record(10, "old"));
    assert_eq!(label(&f.get(&g, "u1").await), Some("old"));
    f.tier.drain().await;
    f.next.put(&g, "u1", record(20, "new"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Stale: served at once, refreshed in the background.
    assert_eq!(label(&f.get(&g, "u1").await), Some("old"));
    f.tier.drain().await;
    assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
    assert_eq!(f.next.reads(), 2);
    assert_eq!(f.tier.stats().stale, 1);
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn an_entity_is_back_filled_only_from_its_admit_after_th_miss() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    let g = profile_group(ServingPolicy {
        admit_after: 2,
        ..policy()
    });
    f.next.put(&g, "u1", record(10, "v"));
    assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
    f.tier.drain().await;
    assert_eq!(f.tier.stats().fills_queued, 0, "one read admits nothing");
    assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
    f.tier.drain().await;
    assert_eq!(
        f.tier.stats().fills_applied,
        1,
        "the second miss is back-filled"
    );
    assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
    assert_eq!(f.next.reads(), 2);
    assert_eq!(f.tier.stats().hits, 1);
    assert_eq!(
        f.metrics
            .count(Tier::Remote, "profile", cellar_cache::Outcome::NotAdmitted),
        1
    );
    // Writes do not admit: a write of an entity not cached leaves a marker (read as a miss),
    // while the cached entity takes its write.
    f.next.put(&g, "u2", record(10, "w"));
    f.tier
        .record_written(&g, &key("u2"), &record(10, "w"))
        .await;
    f.tier
        .record_written(&g, &key("u1"), &record(20, "v2"))
        .await;
    assert_eq!(label(&f.get(&g, "u2").await), Some("w"));
    assert_eq!(f.next.reads(), 3);
    assert_eq!(label(&f.get(&g, "u1").await), Some("v2"));
    assert_eq!(f.next.reads(), 3);
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn a_hot_key_is_refreshed_before_its_soft_ttl() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    // Reads below take 20 ms; with beta 25 a refresh is likely within the 600 ms soft TTL.
    f.next.delay_ms.store(20, Ordering::SeqCst);
    let g = profile_group(ServingPolicy {
        soft_ttl: Duration::from_millis(600),
        early_refresh: 25.0,
        ..policy()
    });
    f.next.put(&g, "u1", record(10, "v"));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.tier.drain().await;
    let early = f
        .metrics
        .count(Tier::Remote, "profile", cellar_cache::Outcome::EarlyRefresh);
    assert!(early >= 2, "{early} early refreshes");
    assert_eq!(f.tier.stats().stale, 0, "no read found the key stale");
    assert!(f.next.reads() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn a_thousand_concurrent_misses_on_one_key_make_one_read_below() {
    let url = redis_url();
    let f = Arc::new(Fixture::new(RemoteConfig {
        backfill_capacity: 10_000,
        ..config(&url)
    }));
    f.next.delay_ms.store(200, Ordering::SeqCst);
    let g = Arc::new(profile_group(policy()));
    f.next.put(&g, "hot", record(10, "v"));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (f, g) = (f.clone(), g.clone());
            tokio::spawn(async move { f.get(&g, "hot").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(label(&t.await.unwrap()), Some("v"));
    }
    assert_eq!(f.next.reads(), 1, "one read of the tier below");
    f.tier.drain().await;
    assert_eq!(f.tier.stats().fills_queued, 1, "and one back-fill");
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn groups_without_the_remote_tier_pass_through() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    let g = profile_group(ServingPolicy {
        tiers: vec![Tier::Local],
        ..policy()
    });
    f.next.put(&g, "u1", record(10, "v"));
    f.get(&g, "u1").await;
    f.tier.drain().await;
    f.get(&g, "u1").await;
    assert_eq!(f.next.reads(), 2);
    let stats = f.tier.stats();
    assert_eq!(stats.misses + stats.hits + stats.fills_queued, 0);
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn a_full_back_fill_queue_drops_fills_and_reads_still_succeed() {
    let url = redis_url();
    let f = Fixture::new(RemoteConfig {
        backfill_capacity: 2,
        ..config(&url)
    });
    let g = profile_group(policy());
    for i in 0..20 {
        f.next
            .put(&g, &format!("u{i}"), record(i, &format!("v{i}")));
    }
    let paused = f.tier.hold_back_fills().await;
    for i in 0..20 {
        let got = f.get(&g, &format!("u{i}")).await;
        assert_eq!(label(&got), Some(format!("v{i}").as_str()));
    }
    let stats = f.tier.stats();
    // The back-fill task holds at most one job while paused, and the queue two more.
    assert!(stats.fills_dropped >= 17, "{stats:?}");
    assert_eq!(stats.fills_queued + stats.fills_dropped, 20);
    drop(paused);
    f.tier.drain().await;
    let stats = f.tier.stats();
    assert_eq!(stats.fills_applied, stats.fills_queued);
    // The queued fills reached Redis; the dropped ones are read from below again.
    let reads = f.next.reads();
    for i in 0..20 {
        f.get(&g, &format!("u{i}")).await;
    }
    assert_eq!(f.next.reads() - reads, stats.fills_dropped as usize);
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn cached_series_answer_top_n_and_since_and_take_writes() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    let mut g = timeseries_group("clicks", Some(10), None);
    g.serving = policy();
    for t in 1..=5 {
        f.next.push(&g, "u1", record(t * 100, &format!("c{t}")));
    }
    assert_eq!(f.times(&g, "u1", 3, None).await, vec![500, 400, 300]);
    f.tier.drain().await;
    assert_eq!(f.times(&g, "u1", 10, Some(250)).await, vec![500, 400, 300]);
    assert_eq!(f.times(&g, "u1", 2, Some(450)).await, vec![500]);
    assert_eq!(
        f.times(&g, "u1", 10, None).await,
        vec![500, 400, 300, 200, 100]
    );
    assert_eq!(
        f.next.reads(),
        1,
        "the whole series is cached by the first read"
    );
    // Written-through records are merged in event-time order, late ones included.
    f.tier
        .record_written(&g, &key("u1"), &record(450, "c45"))
        .await;
    f.tier
        .record_written(&g, &key("u1"), &record(50, "c05"))
        .await;
    assert_eq!(f.times(&g, "u1", 3, None).await, vec![500, 450, 400]);
    assert_eq!(
        f.times(&g, "u1", 10, None).await,
        vec![500, 450, 400, 300, 200, 100, 50]
    );
    // A record of an event time already cached replaces it.
    f.tier
        .record_written(&g, &key("u1"), &record(450, "c45 again"))
        .await;
    let top = f
        .tier
        .scan_timeseries(
            &g,
            &[key("u1")],
            TimeseriesQuery {
                top_n: 2,
                since: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(top[0].len(), 2);
    assert_eq!(label(&Some(top[0][1].clone())), Some("c45 again"));
    assert_eq!(f.next.reads(), 1);
    // An entity without records is cached negatively; more than the series holds goes below.
    assert!(f.times(&g, "nobody", 5, None).await.is_empty());
    f.tier.drain().await;
    assert!(f.times(&g, "nobody", 5, None).await.is_empty());
    assert_eq!(f.next.reads(), 2);
    f.times(&g, "u1", 11, None).await;
    assert_eq!(f.next.reads(), 3);
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn an_incomplete_series_answers_only_what_it_holds() {
    let url = redis_url();
    let f = Fixture::new(config(&url));
    // The series holds 3 records; the store below has 5 (it trims on its own schedule).
    let mut g = timeseries_group("views", Some(3), None);
    g.serving = policy();
    let mut wide = g.clone();
    wide.retention.max_records = None;
    for t in 1..=5 {
        f.next.push(&wide, "u1", record(t * 10, "v"));
    }
    assert_eq!(f.times(&g, "u1", 2, None).await, vec![50, 40]);
    f.tier.drain().await;
    assert_eq!(f.times(&g, "u1", 3, Some(35)).await, vec![50, 40]);
    assert_eq!(f.times(&g, "u1", 3, None).await, vec![50, 40, 30]);
    assert_eq!(f.next.reads(), 1);
    f.tier
        .record_written(&g, &key("u1"), &record(60, "v"))
        .await;
    assert_eq!(f.times(&g, "u1", 3, None).await, vec![60, 50, 40]);
    assert_eq!(f.next.reads(), 1);
    // Write-through into an entity with no cached series only invalidates; an in-flight fill
    // that read before the write loses.
    f.tier
        .record_written(&g, &key("u2"), &record(70, "v"))
        .await;
    assert!(
        !f.tier
            .apply_fill(&g, &key("u2"), Found::Series(vec![record(65, "v")]))
            .await
    );
    assert!(
        f.tier
            .apply_fill(&g, &key("u2"), Found::Series(vec![record(70, "v")]))
            .await
    );
    assert_eq!(f.times(&g, "u2", 3, None).await, vec![70]);
    assert_eq!(f.next.reads(), 1);
}

#[tokio::test]
async fn an_unreachable_redis_opens_the_breaker_and_reads_still_succeed() {
    let f = Fixture::new(RemoteConfig {
        urls: vec!["redis://127.0.0.1:1".to_owned()],
        timeout: Duration::from_millis(50),
        write_timeout: Duration::from_millis(50),
        breaker: BreakerConfig {
            consecutive_failures: 3,
            cool_down: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
        ..config("redis://127.0.0.1:1")
    });
    let g = profile_group(policy());
    f.next.put(&g, "u1", record(10, "v"));
    for _ in 0..3 {
        assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
    }
    assert_eq!(f.tier.breaker_state(), BreakerState::Open);
    let failures = {
        let s = f.tier.stats();
        s.errors + s.timeouts
    };
    // While open, Redis is not asked at all: reads go below at once.
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    f.tier
        .record_written(&g, &key("u1"), &record(20, "w"))
        .await;
    let s = f.tier.stats();
    assert_eq!(s.errors + s.timeouts, failures);
    assert_eq!(s.bypassed, 103);
    assert_eq!(s.writes_skipped, 1);
    assert_eq!(s.breaker_trips, 1);
    assert_eq!(f.next.reads(), 103);
}

/// A `redis-server` of this test's own, on a free port; killed when dropped.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16, dir: &Path, extra: &[&str]) -> Option<OwnRedis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = OwnRedis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// For the tests that run `redis-server`s of their own: fails unless Redis is installed, which
/// `CELLAR_TEST_REDIS` being set says (scripts/test.sh installs Redis before setting it).
fn require_redis_server() {
    redis_url();
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        installed,
        "redis-server is not on PATH: this test runs its own; scripts/test.sh installs Redis"
    );
}

#[tokio::test]
#[ignore = "needs Redis installed (CELLAR_TEST_REDIS); scripts/test.sh installs it"]
async fn a_redis_that_dies_and_comes_back_is_used_again() {
    require_redis_server();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let redis = OwnRedis::start(port, dir.path(), &[]).expect("redis-server starts");
    let f = Fixture::new(RemoteConfig {
        timeout: Duration::from_millis(200),
        write_timeout: Duration::from_millis(200),
        breaker: BreakerConfig {
            consecutive_failures: 3,
            cool_down: Duration::from_millis(300),
            ..BreakerConfig::default()
        },
        ..config(&redis.url())
    });
    let g = profile_group(policy());
    f.next.put(&g, "u1", record(10, "v"));
    f.get(&g, "u1").await;
    f.tier.drain().await;
    assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
    assert_eq!(f.tier.stats().hits, 1);

    redis.stop();
    for _ in 0..20 {
        assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
    }
    assert_eq!(f.tier.breaker_state(), BreakerState::Open);
    assert_eq!(f.tier.stats().hits, 1);

    let _redis = OwnRedis::start(port, dir.path(), &[]).expect("redis-server restarts");
    // After the cool-down a probe finds Redis back and closes the breaker.
    let deadline = Instant::now() + Duration::from_secs(20);
    while f.tier.breaker_state() != BreakerState::Closed {
        assert!(Instant::now() < deadline, "{:?}", f.tier.stats());
        assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The restarted Redis is empty: one miss fills it, then reads hit again.
    f.get(&g, "u1").await;
    f.tier.drain().await;
    let hits = f.tier.stats().hits;
    assert_eq!(label(&f.get(&g, "u1").await), Some("v"));
    assert_eq!(f.tier.stats().hits, hits + 1);
}

/// Three `redis-server`s in cluster mode, made one cluster by `redis-cli --cluster create`.
fn start_cluster(dir: &Path) -> Option<Vec<OwnRedis>> {
    let mut nodes = Vec::new();
    for i in 0..3 {
        let node_dir = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&node_dir).ok()?;
        let port = free_port();
        nodes.push(OwnRedis::start(
            port,
            &node_dir,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ],
        )?);
    }
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !created.success() {
        return None;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = nodes.iter().all(|n| {
            Command::new("redis-cli")
                .args(["-p", &n.port.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
        if ok {
            return Some(nodes);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
#[ignore = "needs Redis installed (CELLAR_TEST_REDIS); scripts/test.sh installs it"]
async fn a_redis_cluster_serves_reads_across_slots() {
    require_redis_server();
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path()).expect("three redis-servers make one cluster");
    let f = Fixture::new(RemoteConfig {
        urls: nodes.iter().map(OwnRedis::url).collect(),
        ..config("unused")
    });
    let g = profile_group(policy());
    let entities: Vec<EntityKey> = (0..100).map(|i| key(&format!("u{i}"))).collect();
    for i in 0..100 {
        if i % 10 != 0 {
            f.next
                .put(&g, &format!("u{i}"), record(i, &format!("v{i}")));
        }
    }
    let first = f.tier.get_attributes(&g, &entities).await.unwrap();
    f.tier.drain().await;
    let second = f.tier.get_attributes(&g, &entities).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(f.next.reads(), 1, "{:?}", f.tier.stats());
    let stats = f.tier.stats();
    assert_eq!((stats.hits, stats.negative_hits), (90, 10));
    assert_eq!(stats.fills_applied, 100);

    // Newer wins across slots too.
    let written: Vec<(EntityKey, Record)> = entities
        .iter()
        .map(|e| (e.clone(), record(1000, "new")))
        .collect();
    f.tier
        .records_written(&g, written.iter().map(|(e, r)| (e, r)))
        .await;
    assert!(
        !f.tier
            .apply_fill(&g, &key("u7"), Found::Record(record(7, "v7")))
            .await
    );
    let third = f.tier.get_attributes(&g, &entities).await.unwrap();
    assert!(third.iter().all(|r| label(r) == Some("new")));
    assert_eq!(f.next.reads(), 1);
    assert_eq!(f.tier.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn garbage_in_redis_reads_as_a_miss_and_is_replaced() {
    let url = redis_url();
    let config = config(&url);
    let prefix = config.key_prefix.clone();
    let f = Fixture::new(config);
    let g = profile_group(policy());
    let mut clicks = timeseries_group("clicks", Some(10), None);
    clicks.serving = policy();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let set = |key: String, value: Vec<u8>| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value).arg("PX").arg(60_000);
        cmd
    };
    // Not a value of this tier; a record kind whose record is cut short; a series whose
    // entries are cut short.
    let mut header = vec![2u8, 1];
    // Event time 5 and soft deadline 0, sign bits flipped; generation 0.
    header.extend_from_slice(&((1u64 << 63) | 5).to_be_bytes());
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&0u64.to_be_bytes());
    let mut short_record = header.clone();
    short_record.extend_from_slice(&[2, 10, 1]);
    let mut short_series = header.clone();
    short_series[1] = 3;
    short_series.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 200, 2]);
    for (key, value) in [
        (format!("{prefix}profile#u1"), b"junk".to_vec()),
        (format!("{prefix}profile#u2"), short_record),
        (format!("{prefix}clicks#u1"), short_series.clone()),
        (format!("{prefix}clicks#u2"), short_series),
    ] {
        let _: () = set(key, value).query_async(&mut conn).await.unwrap();
    }
    f.next.put(&g, "u1", record(10, "one"));
    f.next.put(&g, "u2", record(10, "two"));
    f.next.push(&clicks, "u1", record(10, "c"));
    f.next.push(&clicks, "u2", record(10, "c"));

    let got = f
        .tier
        .get_attributes(&g, &[key("u1"), key("u2")])
        .await
        .unwrap();
    assert_eq!(label(&got[0]), Some("one"));
    assert_eq!(label(&got[1]), Some("two"));
    assert_eq!(f.times(&clicks, "u1", 5, None).await, vec![10]);
    assert_eq!(f.tier.stats().corrupt, 3);
    // A write-through into a broken series invalidates it rather than failing.
    f.tier
        .record_written(&clicks, &key("u2"), &record(20, "d"))
        .await;
    assert_eq!(f.tier.stats().writes, 1);
    f.next.push(&clicks, "u2", record(20, "d"));
    assert_eq!(f.times(&clicks, "u2", 5, None).await, vec![20, 10]);
    // The fills replace what was there.
    f.tier.drain().await;
    let reads = f.next.reads();
    f.tier
        .get_attributes(&g, &[key("u1"), key("u2")])
        .await
        .unwrap();
    assert_eq!(f.times(&clicks, "u1", 5, None).await, vec![10]);
    assert_eq!(f.times(&clicks, "u2", 5, None).await, vec![20, 10]);
    assert_eq!(f.next.reads(), reads);
    assert_eq!(f.tier.breaker_state(), BreakerState::Closed);
}
