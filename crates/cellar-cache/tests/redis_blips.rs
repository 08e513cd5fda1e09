//! The Redis tier after a blip, under write load: a write whose Redis update was skipped (the
//! breaker open, a timeout, an error) must not leave an older copy served once Redis answers
//! again. Each test runs a `redis-server` of its own on a free port (killed with SIGKILL and
//! restarted, or stopped with SIGSTOP and continued), two serving nodes in front of one store
//! (node A writes and reads, node B only reads) and checks every read against the last write
//! acknowledged before the read began:
//!
//! - on node A, the one whose writes were skipped, at every moment;
//! - on node B, from the stated bound on: once both breakers are closed again, plus one retry
//!   interval of A's invalidations (the breaker cool-down) and one write timeout.
//!
//! `CELLAR_TEST_REDIS` being set says Redis is installed (scripts/test.sh installs it before
//! setting it): the tests are ignored by a plain `cargo test`, and run with
//! `--include-ignored` but without the variable, they fail.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellar_cache::{
    BreakerConfig, BreakerState, CacheMetrics, RemoteConfig, RemoteStatsSnapshot, RemoteTier,
    WritePath,
};
use cellar_spec::{EntityKey, FeatureGroup, ServingPolicy, Tier, Value, WriteStrategy};
use cellar_store::conformance::{attribute_group, timeseries_group};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{OnlineStore, Record, RecordReader, TimeseriesQuery, Write};

#[path = "../../../test-support/free_port.rs"]
mod port;
use port::free_port;

const ENTITIES: usize = 40;
const COOL_DOWN: Duration = Duration::from_millis(300);
const WRITE_TIMEOUT: Duration = Duration::from_millis(400);

fn require_redis_server() {
    match std::env::var("CELLAR_TEST_REDIS") {
        Ok(url) if !url.is_empty() => {}
        _ => panic!(
            "CELLAR_TEST_REDIS is not set: this test needs Redis installed; scripts/test.sh \
             installs it"
        ),
    }
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

/// A `redis-server` of this test's own; killed with SIGKILL when dropped.
struct OwnRedis {
    child: Child,
}

impl OwnRedis {
    fn start(port: u16, dir: &Path, extra: &[&str]) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { child }
    }

    fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -{signal} redis-server");
    }

    /// SIGKILL: no chance to answer, flush or close anything.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        // A stopped process dies of SIGKILL too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policy(write: WriteStrategy) -> ServingPolicy {
    ServingPolicy {
        tiers: vec![Tier::Remote],
        // Far longer than the test: a stale copy cannot expire out of sight.
        soft_ttl: Duration::from_secs(120),
        hard_ttl: Duration::from_secs(240),
        jitter: 0.0,
        negative_ttl: Duration::from_secs(120),
        write,
        early_refresh: 0.0,
        ..ServingPolicy::default()
    }
}

/// A write-through attribute group, a write-around one and a write-through time series.
fn groups() -> Vec<FeatureGroup> {
    let mut through = attribute_group("profile");
    through.serving = policy(WriteStrategy::Through);
    let mut around = attribute_group("status");
    around.serving = policy(WriteStrategy::Around);
    let mut series = timeseries_group("clicks", Some(20), None);
    series.serving = policy(WriteStrategy::Through);
    vec![through, around, series]
}

fn entity(i: usize) -> EntityKey {
    EntityKey(format!("u{i}"))
}

fn record(at: i64) -> Record {
    Record::new(at, vec![Value::String(format!("v{at}")), Value::Int64(at)])
}

fn tier_config(url: &str, key_prefix: &str) -> RemoteConfig {
    RemoteConfig {
        urls: vec![url.to_owned()],
        key_prefix: key_prefix.to_owned(),
        timeout: Duration::from_millis(150),
        write_timeout: WRITE_TIMEOUT,
        connect_timeout: Duration::from_millis(300),
        breaker: BreakerConfig {
            consecutive_failures: 3,
            cool_down: COOL_DOWN,
            ..BreakerConfig::default()
        },
        ..RemoteConfig::default()
    }
}

/// The newest event time a node serves for each of `entities`.
async fn newest(
    tier: &RemoteTier,
    group: &FeatureGroup,
    entities: &[EntityKey],
) -> Vec<Option<i64>> {
    if group.kind == cellar_spec::GroupKind::Timeseries {
        let query = TimeseriesQuery {
            top_n: 1,
            since: None,
        };
        tier.scan_timeseries(group, entities, query)
            .await
            .unwrap()
            .into_iter()
            .map(|records| records.first().map(|r| r.event_time))
            .collect()
    } else {
        tier.get_attributes(group, entities)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.map(|r| r.event_time))
            .collect()
    }
}

/// What the load saw.
#[derive(Default)]
struct Checks {
    /// Reads checked, and those older than a write acknowledged before they began.
    checked: AtomicU64,
    stale: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Checks {
    fn stale(&self) -> u64 {
        self.stale.load(Ordering::SeqCst)
    }

    fn report(&self, node: &str) -> String {
        format!(
            "node {node}: {} of {} reads older than an acknowledged write, e.g. {:?}",
            self.stale(),
            self.checked.load(Ordering::SeqCst),
            self.examples.lock().unwrap()
        )
    }
}

struct Load {
    groups: Vec<FeatureGroup>,
    /// Per group and entity: the newest event time of an acknowledged write.
    acked: Vec<Vec<AtomicI64>>,
    next_time: AtomicI64,
    stop: AtomicBool,
}

impl Load {
    fn new() -> Load {
        let groups = groups();
        let acked = groups
            .iter()
            .map(|_| (0..ENTITIES).map(|_| AtomicI64::new(i64::MIN)).collect())
            .collect();
        Load {
            groups,
            acked,
            next_time: AtomicI64::new(1_000),
            stop: AtomicBool::new(false),
        }
    }

    /// Writes random entities of every group through `writer` until stopped.
    async fn write(self: Arc<Self>, writer: WritePath) {
        while !self.stop.load(Ordering::SeqCst) {
            let g = rand::random_range(0..self.groups.len());
            let e = rand::random_range(0..ENTITIES);
            let at = self.next_time.fetch_add(1, Ordering::SeqCst);
            let write = Write {
                entity: entity(e),
                record: record(at),
            };
            writer.write(&self.groups[g], &[write]).await.unwrap();
            // Acknowledged: every read that begins from now on must see it, or newer.
            self.acked[g][e].fetch_max(at, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Reads random entities through `tier` until stopped, checking each read begun while
    /// `checking` holds against the writes acknowledged before it began.
    async fn read(
        self: Arc<Self>,
        tier: Arc<RemoteTier>,
        checking: Arc<AtomicBool>,
        checks: Arc<Checks>,
    ) {
        while !self.stop.load(Ordering::SeqCst) {
            let g = rand::random_range(0..self.groups.len());
            let picked: Vec<usize> = (0..4).map(|_| rand::random_range(0..ENTITIES)).collect();
            let check = checking.load(Ordering::SeqCst);
            let floors: Vec<i64> = picked
                .iter()
                .map(|&e| self.acked[g][e].load(Ordering::SeqCst))
                .collect();
            let entities: Vec<EntityKey> = picked.iter().map(|&e| entity(e)).collect();
            let served = newest(&tier, &self.groups[g], &entities).await;
            if check {
                for ((e, floor), served) in picked.iter().zip(floors).zip(served) {
                    checks.checked.fetch_add(1, Ordering::SeqCst);
                    if served.unwrap_or(i64::MIN) < floor {
                        checks.stale.fetch_add(1, Ordering::SeqCst);
                        let mut examples = checks.examples.lock().unwrap();
                        if examples.len() < 5 {
                            examples.push(format!(
                                "{} u{e}: served {served:?}, acknowledged {floor}",
                                self.groups[g].name
                            ));
                        }
                    }
                }
            }
            tokio::task::yield_now().await;
        }
    }
}

/// How the writing node came through a blip.
struct Outcome {
    /// Node A's counters at the end.
    stats: RemoteStatsSnapshot,
    /// Which groups were moved to a new generation (invalidated whole).
    moved_on: Vec<String>,
}

/// Two nodes on one store and one Redis, under load, through a blip that `blip` makes and
/// ends (returning the Redis that runs afterwards).
async fn run_through_a_blip(
    extra: &[&str],
    tune: impl Fn(RemoteConfig) -> RemoteConfig,
    blip: impl FnOnce(OwnRedis, u16, &Path) -> OwnRedis + Send + 'static,
) -> Outcome {
    require_redis_server();
    let dir = tempfile::tempdir().unwrap();
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let port = free_port();
    let redis = OwnRedis::start(port, &redis_dir, extra);
    let url = format!("redis://127.0.0.1:{port}");
    let prefix = format!("cellar-blip:{:016x}:", rand::random::<u64>());

    let store: Arc<dyn OnlineStore> =
        Arc::new(EmbeddedStore::open(dir.path().join("store")).unwrap());
    let below: Arc<dyn RecordReader> = store.clone();
    let node = || {
        Arc::new(
            RemoteTier::new(
                tune(tier_config(&url, &prefix)),
                below.clone(),
                CacheMetrics::default(),
            )
            .unwrap(),
        )
    };
    let (a, b) = (node(), node());
    let writer = WritePath::new(store.clone(), None).with_remote(a.clone());

    let load = Arc::new(Load::new());
    // Every entity has a record before the load starts, so reads fill Redis with copies.
    for (g, group) in load.groups.iter().enumerate() {
        let writes: Vec<Write> = (0..ENTITIES)
            .map(|e| Write {
                entity: entity(e),
                record: record(load.next_time.fetch_add(1, Ordering::SeqCst)),
            })
            .collect();
        writer.write(group, &writes).await.unwrap();
        for (e, w) in writes.iter().enumerate() {
            load.acked[g][e].store(w.record.event_time, Ordering::SeqCst);
        }
    }
    let (checks_a, checks_b) = (Arc::new(Checks::default()), Arc::new(Checks::default()));
    let always = Arc::new(AtomicBool::new(true));
    let checking_b = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        tasks.push(tokio::spawn(load.clone().write(writer.clone())));
        tasks.push(tokio::spawn(load.clone().read(
            a.clone(),
            always.clone(),
            checks_a.clone(),
        )));
        tasks.push(tokio::spawn(load.clone().read(
            b.clone(),
            checking_b.clone(),
            checks_b.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        a.stats().hits > 0 && b.stats().hits > 0,
        "copies in Redis before the blip"
    );

    let _redis = tokio::task::spawn_blocking({
        let redis_dir = redis_dir.clone();
        move || blip(redis, port, &redis_dir)
    })
    .await
    .unwrap();
    let skipped = a.stats().writes_skipped;
    assert!(skipped > 0, "the blip skipped writes: {:?}", a.stats());

    // Redis answers again once both breakers have closed; then the bound for node B: one
    // retry interval of A's invalidations and one write timeout.
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.breaker_state() != BreakerState::Closed || b.breaker_state() != BreakerState::Closed {
        assert!(
            Instant::now() < deadline,
            "Redis never answered again: {:?} {:?}",
            a.stats(),
            b.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(COOL_DOWN + WRITE_TIMEOUT).await;
    checking_b.store(true, Ordering::SeqCst);
    let hits = (a.stats().hits, b.stats().hits);
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }

    assert_eq!(checks_a.stale(), 0, "{}", checks_a.report("A"));
    assert_eq!(checks_b.stale(), 0, "{}", checks_b.report("B"));
    // Not a pass by never asking Redis: after the blip both nodes serve from it again.
    assert!(a.stats().hits > hits.0, "{:?}", a.stats());
    assert!(b.stats().hits > hits.1, "{:?}", b.stats());
    assert!(checks_b.checked.load(Ordering::SeqCst) > 0);
    // A write skipped in the last moments (a timeout on a busy machine) is invalidated soon.
    while a.stats().invalidations_owed {
        assert!(Instant::now() < deadline, "{:?}", a.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{}\n{}\nnode A: {:?}",
        checks_a.report("A"),
        checks_b.report("B"),
        a.stats()
    );

    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let moved_on = load
        .groups
        .iter()
        .filter(|g| {
            let generation: Option<u64> = redis::cmd("GET")
                .arg(format!("{prefix}{}!generation", g.name))
                .query(&mut conn)
                .unwrap();
            generation.is_some()
        })
        .map(|g| g.name.clone())
        .collect();
    Outcome {
        stats: a.stats(),
        moved_on,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis installed (CELLAR_TEST_REDIS); scripts/test.sh installs it"]
async fn a_redis_killed_and_restarted_with_its_data_serves_no_copy_older_than_a_write() {
    // An append-only file synced on every write: the restarted Redis holds what it held.
    let outcome = run_through_a_blip(
        &["--appendonly", "yes", "--appendfsync", "always"],
        |c| c,
        |redis, port, dir| {
            redis.kill();
            std::thread::sleep(Duration::from_secs(2));
            OwnRedis::start(
                port,
                dir,
                &["--appendonly", "yes", "--appendfsync", "always"],
            )
        },
    )
    .await;
    // Each skipped key of the attribute groups was invalidated on its own.
    assert!(
        outcome.stats.invalidations_applied > 1,
        "{:?}",
        outcome.stats
    );
    // The series group moved on whole (a late record cannot be fenced by its event time).
    assert_eq!(outcome.moved_on, ["clicks"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis installed (CELLAR_TEST_REDIS); scripts/test.sh installs it"]
async fn a_redis_stopped_and_continued_serves_no_copy_older_than_a_write() {
    // Writes in flight when Redis stops time out, and Redis applies them when it continues.
    let outcome = run_through_a_blip(&["--appendonly", "no"], |c| c, stop_and_continue).await;
    assert!(
        outcome.stats.invalidations_applied > 1,
        "{:?}",
        outcome.stats
    );
    // The series group moved on whole (a late record cannot be fenced by its event time).
    assert_eq!(outcome.moved_on, ["clicks"]);
}

fn stop_and_continue(redis: OwnRedis, _: u16, _: &Path) -> OwnRedis {
    redis.signal("STOP");
    std::thread::sleep(Duration::from_secs(2));
    redis.signal("CONT");
    redis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis installed (CELLAR_TEST_REDIS); scripts/test.sh installs it"]
async fn more_skipped_writes_than_remembered_invalidate_their_groups_whole() {
    // Room for 4 keys: the blip skips writes to far more, so groups move to a new generation.
    let outcome = run_through_a_blip(
        &["--appendonly", "no"],
        |c| RemoteConfig {
            skipped_keys: 4,
            ..c
        },
        stop_and_continue,
    )
    .await;
    assert_eq!(
        outcome.moved_on,
        ["profile", "status", "clicks"],
        "{:?}",
        outcome.stats
    );
}
