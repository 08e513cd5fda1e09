//! A serving node whose Redis tier dies under load: every request keeps succeeding from the
//! store while Redis is down, and once Redis is back the node reads from it again. The test
//! runs a `redis-server` of its own (so killing it disturbs nothing else). `CELLAR_TEST_REDIS`
//! being set says Redis is installed (scripts/test.sh installs it before setting it): the test is
//! ignored by a plain `cargo test`, and run with `--include-ignored` but without the variable, it
//! fails.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellar::config::Config;
use cellar::node::Node;
use cellar::stats::{parse_samples, summarize, Stats};
use cellar::{quickstart, repo};
use serde_json::{json, Value};

const USERS: usize = 200;
const LOAD_TASKS: usize = 8;

/// A `redis-server` on a port of the test's own; killed with SIGKILL when stopped or dropped.
struct OwnRedis {
    child: Child,
}

impl OwnRedis {
    fn start(port: u16, dir: &Path) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn stats(client: &reqwest::Client, base: &str) -> Stats {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    summarize(&parse_samples(&text))
}

fn remote_hits(stats: &Stats) -> f64 {
    stats
        .lookups
        .get("user_profile")
        .and_then(|tiers| tiers.get("remote"))
        .map_or(0.0, |c| c.hits)
}

fn breaker(stats: &Stats) -> f64 {
    stats.remote.as_ref().expect("a Redis tier").breaker
}

/// Reads random users in a loop until told to stop, checking every answer.
async fn load(
    client: reqwest::Client,
    base: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    while !stop.load(Ordering::Relaxed) {
        let users: Vec<usize> = (0..10).map(|_| rand::random_range(0..USERS)).collect();
        let ids: Vec<String> = users.iter().map(|u| format!("u{u}")).collect();
        let answer = client
            .post(format!("{base}/v1/features"))
            .json(&json!({"entities": {"user_id": ids}, "groups": ["user_profile"]}))
            .send()
            .await;
        let good = match answer {
            Ok(resp) if resp.status().is_success() => match resp.json::<Value>().await {
                Ok(body) => users.iter().enumerate().all(|(i, u)| {
                    body["results"][0]["rows"][i]["values"] == json!([format!("C{u}"), *u, null])
                }),
                Err(_) => false,
            },
            _ => false,
        };
        if good {
            ok.fetch_add(1, Ordering::Relaxed);
        } else {
            failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis installed (CELLAR_TEST_REDIS); scripts/test.sh installs it"]
async fn requests_survive_redis_dying_under_load_and_use_it_again_once_back() {
    // Only the variable's presence counts: the Redis here is a redis-server of the test's own.
    common::service_address("CELLAR_TEST_REDIS", "Redis");
    let dir = tempfile::tempdir().unwrap();
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let port = common::free_port();
    let mut redis = OwnRedis::start(port, &redis_dir);

    let mut config = Config {
        data_dir: dir.path().join("data"),
        repo: dir.path().join("repo"),
        ..Config::default()
    };
    config.cache.remote_urls = vec![format!("redis://127.0.0.1:{port}")];
    config.cache.remote_timeout_ms = 50;
    quickstart::write_example_repo(&config.repo).unwrap();
    // Every group in the Redis tier only, so every read asks Redis first.
    for entry in std::fs::read_dir(&config.repo).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("tiers: [local]", "tiers: [remote]")).unwrap();
    }
    let registry = cellar_registry::Registry::open(&config.registry_url())
        .await
        .unwrap();
    registry
        .apply(&repo::load_repo(&config.repo).unwrap())
        .await
        .unwrap();
    let node = Node::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(node.serve(listener, None, std::future::pending()));
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    let records: Vec<Value> = (0..USERS)
        .map(|u| {
            json!({"entity": {"user_id": format!("u{u}")}, "event_time": "2026-01-02T00:00:00Z",
                   "features": {"country": format!("C{u}"), "age": u}})
        })
        .collect();
    let pushed = client
        .post(format!("{base}/v1/push"))
        .json(&json!({"group": "user_profile", "records": records}))
        .send()
        .await
        .unwrap();
    assert!(pushed.status().is_success());

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..LOAD_TASKS)
        .map(|_| {
            tokio::spawn(load(
                client.clone(),
                base.clone(),
                stop.clone(),
                ok.clone(),
                failed.clone(),
            ))
        })
        .collect();

    // Redis up: reads hit it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = stats(&client, &base).await;
    assert!(remote_hits(&before) > 0.0, "{before:?}");
    assert_eq!(breaker(&before), 0.0);

    // Redis killed under load: the breaker opens and requests still succeed, from the store.
    redis.kill();
    let killed_at = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let down = stats(&client, &base).await;
    assert_eq!(
        breaker(&down),
        1.0,
        "breaker open while Redis is down: {down:?}"
    );
    let during_outage = ok.load(Ordering::Relaxed) - killed_at;
    assert!(
        during_outage > 50,
        "{during_outage} requests served while Redis was down"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a request failed during the outage"
    );
    let store_reads_down = down.store["user_profile"];

    // Redis back (empty): a half-open probe closes the breaker, misses fill it again, and
    // reads hit it once more.
    let _redis = OwnRedis::start(port, &redis_dir);
    let hits_down = remote_hits(&down);
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        let now = stats(&client, &base).await;
        if breaker(&now) == 0.0 && remote_hits(&now) > hits_down + 100.0 {
            break now;
        }
        assert!(Instant::now() < deadline, "Redis not used again: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "a request failed");
    assert!(back.store["user_profile"].0 >= store_reads_down.0);
    println!(
        "{} requests, {} while Redis was down; remote hits {} before, {} after",
        ok.load(Ordering::Relaxed),
        during_outage,
        remote_hits(&before),
        remote_hits(&back)
    );
}
