//! Crash tests of stream ingestion, on the embedded log and on Kafka: `cellar ingest` is killed
//! with SIGKILL at random moments while it consumes 100,000 events, then restarted; at the end
//! every expected value is stored, no event is lost and none is counted twice: latest values,
//! time series and windowed aggregates (counts, a sum, a distinct count) are exact.
//!
//! The same holds end to end, from a file through `cellar produce` to `cellar serve` (which
//! appends to the embedded log and ingests it in-process) with both killed again and again:
//! every line is appended once, and every event counted once.
//!
//! And whatever a server served, while it was killed again and again mid-stream, is in the
//! offline history afterwards: nothing acknowledged online is missing offline.
//!
//! The Kafka test needs the broker `CELLAR_TEST_KAFKA` names (`scripts/test.sh` starts one): it
//! is ignored by a plain `cargo test`, and run with `--include-ignored` but without the
//! variable, it fails.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellar_ingest_stream::kafka::{ensure_topics, KafkaPublisher, KafkaPublisherConfig};
use cellar_ingest_stream::log::source::ensure_topic;
use cellar_ingest_stream::log::{EventLog, LogRecord};
use cellar_ingest_stream::source::{OutgoingEvent, Publisher};
use cellar_spec::{EntityKey, Value};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{RecordReader, TimeseriesQuery};
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

const USERS: usize = 1000;
const EVENTS_PER_USER: usize = 100;
const BASE_TS: i64 = 1_767_225_600_000;

const REPO: &str = r#"
kind: Entity
name: user
keys: [{ name: user_id, type: string }]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - { name: last_article, type: string }
  - { name: seq, type: int64 }
---
kind: FeatureGroup
name: clicks
entity: user
type: timeseries
features:
  - { name: article_id, type: string }
retention: { max_records: 1000 }
---
kind: FeatureGroup
name: activity
entity: user
type: attribute
features:
  - { name: clicks_1h, type: int64 }
  - { name: clicks_50ms, type: int64 }
  - { name: seq_sum_1h, type: int64 }
  - { name: categories_1h, type: int64 }
---
kind: Ingestion
name: click_activity
stream: { topic: actions, event_types: [article_clicked] }
into: activity
key: $.user_id
event_time: $.ts
features:
  clicks_1h: { aggregate: count, window: 1h }
  clicks_50ms: { aggregate: count, window: 50ms, slide: 10ms }
  seq_sum_1h: { aggregate: sum, of: $.seq, window: 1h }
  categories_1h: { aggregate: distinct_count, of: $.category, window: 1h }
---
kind: Ingestion
name: latest_click
stream: { topic: actions, event_types: [article_clicked] }
into: profile
key: $.user_id
event_time: $.ts
features: { last_article: $.article_id, seq: $.seq }
---
kind: Ingestion
name: click_history
stream: { topic: actions, event_types: [article_clicked] }
into: clicks
key: $.user_id
event_time: $.ts
features: { article_id: $.article_id }
"#;

/// `cellar` on the data directory `data`, with the settings a test wrote beside it (`env`:
/// `KEY=VALUE` lines) in its environment.
fn cellar(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cellar"));
    c.arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Ok(settings) = std::fs::read_to_string(data.with_file_name("env")) {
        c.envs(settings.lines().filter_map(|line| line.split_once('=')));
    }
    c
}

/// Writes the repo (consuming `topic`) and applies it.
fn apply_repo(dir: &Path, data: &Path, topic: &str) {
    let repo_dir = dir.join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    let yaml = REPO.replace("topic: actions", &format!("topic: {topic}"));
    std::fs::write(repo_dir.join("repo.yaml"), yaml).unwrap();
    let applied = cellar(data)
        .arg("--repo")
        .arg(&repo_dir)
        .arg("apply")
        .status()
        .unwrap();
    assert!(applied.success());
}

/// The test's events, keyed by user: users' events interleave, as they would in a real
/// stream.
fn events() -> impl Iterator<Item = (String, String)> {
    (0..EVENTS_PER_USER).flat_map(|seq| {
        (0..USERS).map(move |u| {
            let event = serde_json::json!({
                "type": "article_clicked",
                "user_id": format!("u{u}"),
                "ts": BASE_TS + seq as i64,
                "seq": seq,
                "article_id": format!("a{u}-{seq}"),
                "category": format!("c{}", seq % 7),
            });
            (format!("u{u}"), event.to_string())
        })
    })
}

/// Events of `actions` committed by the ingestion's consumer group so far.
fn committed_log_events(log: &EventLog) -> i64 {
    (0..log.partitions("actions").unwrap_or(0))
        .map(|p| {
            log.committed("cellar-ingest", "actions", p)
                .unwrap()
                .unwrap_or(0)
        })
        .sum()
}

async fn produce_to_log(data: &Path) {
    let log = EventLog::open(data.join("log")).unwrap();
    ensure_topic(&log, "actions").await.unwrap();
    let records: Vec<LogRecord> = events()
        .map(|(key, payload)| LogRecord {
            key: Some(Bytes::from(key)),
            payload: Bytes::from(payload),
            headers: Vec::new(),
            timestamp_ms: BASE_TS,
        })
        .collect();
    for batch in records.chunks(10_000) {
        log.append("actions", batch).await.unwrap();
    }
}

/// When to kill a started `cellar ingest`.
struct KillAfter {
    /// The line its log shows once it consumes.
    ready: &'static str,
    /// Whether to wait, after that, for the committed count to move (only where it can be
    /// read while the process runs).
    progress: bool,
    /// Then a random wait in this range, milliseconds.
    wait_ms: std::ops::Range<u64>,
}

/// Starts `cellar ingest` and kills it with SIGKILL at a random moment (see [`KillAfter`]);
/// again and again until five kills landed mid-stream (after progress, before the end).
/// `committed` counts the events committed so far.
async fn kill_repeatedly(
    start: impl Fn() -> Command,
    when: KillAfter,
    committed: impl Fn() -> i64,
    total: i64,
) {
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut committed_before = 0;
    for _ in 0..40 {
        let mut child = start()
            .arg("ingest")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (found_tx, found_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            let mut found_tx = Some(found_tx);
            // Keep draining after the line so the child never blocks on a full pipe.
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if line.contains(when.ready) {
                    if let Some(tx) = found_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(120), found_rx)
            .await
            .expect("the consumer did not start within 2 minutes")
            .expect("the consumer exited before consuming");
        if when.progress {
            let started = Instant::now();
            while committed() <= committed_before && started.elapsed() < Duration::from_secs(60) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let wait = rng.random_range(when.wait_ms.clone());
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL: no destructor, no final commit
        child.wait().unwrap();
        let now = committed();
        eprintln!("killed after {wait} ms: {now} of {total} events committed");
        assert!(now >= committed_before, "a committed position moved back");
        if now >= total {
            break;
        }
        if now > committed_before {
            kills += 1;
            if kills == 5 {
                return;
            }
        }
        committed_before = now;
    }
    panic!("only {kills} of 5 kills landed mid-stream");
}

/// Checks every value the events should have produced, read from the store in `data`.
async fn verify_store(data: &Path) {
    let repo = cellar_spec::parse_repo(&[("repo.yaml".into(), REPO.into())]).unwrap();
    let store = EmbeddedStore::open(data.join("store")).unwrap();
    let profile = repo.group("profile").unwrap();
    let clicks = repo.group("clicks").unwrap();
    let keys: Vec<EntityKey> = (0..USERS).map(|u| EntityKey(format!("u{u}"))).collect();
    let last = (EVENTS_PER_USER - 1) as i64;
    for (u, record) in store
        .get_attributes(profile, &keys)
        .await
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let record = record.unwrap_or_else(|| panic!("u{u} has no profile"));
        assert_eq!(record.event_time, BASE_TS + last, "u{u}");
        assert_eq!(record.values[1], Value::Int64(last), "u{u}");
    }
    let expected: BTreeSet<i64> = (0..EVENTS_PER_USER as i64).map(|s| BASE_TS + s).collect();
    let series = store
        .scan_timeseries(
            clicks,
            &keys,
            TimeseriesQuery {
                top_n: 10_000,
                since: None,
            },
        )
        .await
        .unwrap();
    for (u, records) in series.iter().enumerate() {
        assert_eq!(
            records.len(),
            EVENTS_PER_USER,
            "u{u}: lost or doubled records"
        );
        let times: BTreeSet<i64> = records.iter().map(|r| r.event_time).collect();
        assert_eq!(times, expected, "u{u}");
        for r in records {
            let seq = r.event_time - BASE_TS;
            assert_eq!(r.values[0], Value::String(format!("a{u}-{seq}")), "u{u}");
        }
    }
    // Windowed aggregates: BASE_TS starts an hour, and events are 1 ms apart, so the hour
    // holds all 100 events of a user and the 50 ms window (ending with the newest event's
    // 10 ms slide) the last 50.
    let activity = repo.group("activity").unwrap();
    let n = EVENTS_PER_USER as i64;
    let expected = vec![
        Value::Int64(n),
        Value::Int64(50),
        Value::Int64(n * (n - 1) / 2),
        Value::Int64(7),
    ];
    for (u, record) in store
        .get_attributes(activity, &keys)
        .await
        .unwrap()
        .into_iter()
        .enumerate()
    {
        let record = record.unwrap_or_else(|| panic!("u{u} has no activity"));
        assert_eq!(
            record.values, expected,
            "u{u}: lost or double-counted events"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ingestion_loses_nothing_and_writes_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    apply_repo(dir.path(), &data, "actions");
    produce_to_log(&data).await;
    let total = (USERS * EVENTS_PER_USER) as i64;
    kill_repeatedly(
        || cellar(&data),
        KillAfter {
            ready: "consuming the embedded log",
            progress: false,
            wait_ms: 300..1500,
        },
        || committed_log_events(&EventLog::open(data.join("log")).unwrap()),
        total,
    )
    .await;
    // Then let it finish.
    let started = Instant::now();
    let status = cellar(&data)
        .args(["ingest", "--until-caught-up"])
        .status()
        .unwrap();
    assert!(status.success());
    eprintln!("caught up in {:?}", started.elapsed());
    verify_store(&data).await;

    // Every event is committed, and none was dead-lettered.
    let log = EventLog::open(data.join("log")).unwrap();
    for p in 0..log.partitions("actions").unwrap() {
        let end = log.end_offset("actions", p).unwrap();
        assert_eq!(
            log.committed("cellar-ingest", "actions", p).unwrap(),
            Some(end)
        );
    }
    let dead = log.partitions("cellar-dead-letter").unwrap_or(0);
    for p in 0..dead {
        assert_eq!(log.end_offset("cellar-dead-letter", p).unwrap(), 0);
    }
}

/// A running `cellar serve` on the test's data directory, which ingests the embedded log
/// in-process.
struct Server {
    child: Child,
    base: String,
    http: reqwest::Client,
}

/// What a running server's `/metrics` says of its stream ingestion.
struct Ingesting {
    /// Events the main pipeline processed since this process started.
    processed: u64,
    /// Events of `actions` appended but not yet committed.
    lag: i64,
}

impl Server {
    /// Starts `cellar serve` on free ports (stderr appended to `log`) and waits until it
    /// answers.
    async fn start(data: &Path, log: &Path) -> Server {
        let port = common::free_port();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = cellar(data)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{}", common::free_port()))
            .stderr(stderr)
            .spawn()
            .unwrap();
        let server_url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let health = http.get(format!("{server_url}/health")).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("`cellar serve` exited ({status}): {}", log_tail(log));
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "`cellar serve` did not answer within 2 minutes: {}",
                log_tail(log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Server {
            child,
            base: server_url,
            http,
        }
    }

    async fn ingesting(&self) -> Ingesting {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut now = Ingesting {
            processed: 0,
            lag: 0,
        };
        let has = |s: &cellar::stats::Sample, k: &str, v: &str| {
            s.labels.iter().any(|(key, value)| key == k && value == v)
        };
        for s in cellar::stats::parse_samples(&text) {
            if s.name == "cellar_ingest_events_total" && has(&s, "pipeline", "main") {
                now.processed = s.value as u64;
            } else if s.name == "cellar_ingest_consumer_lag" && has(&s, "topic", "actions") {
                now.lag += s.value as i64;
            }
        }
        now
    }

    /// SIGKILL; returns once the process is gone, so its data directory is free again.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Starts `cellar produce` of `file` against `server`.
fn start_producing(data: &Path, file: &Path, server: &Server) -> Child {
    cellar(data)
        .args(["produce", "-t", "actions"])
        .arg(file)
        .args(["--server", &server.base])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The embedded log of a stopped server, as the test's producer and the ingestion left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LogState {
    /// Events in `actions`: the sum of its end offsets (offsets are gap-free, and the test's
    /// producer is the topic's only writer).
    appended: i64,
    /// Events of `actions` the ingestion committed.
    committed: i64,
    /// The sequence the log expects next of the test's producer.
    next_sequence: u64,
}

fn log_state(data: &Path, producer: &str) -> LogState {
    let log = EventLog::open(data.join("log")).unwrap();
    // The topic is created by the first append, or by the ingestion when it starts.
    let partitions = log.partitions("actions").unwrap_or(0);
    LogState {
        appended: (0..partitions)
            .map(|p| log.end_offset("actions", p).unwrap())
            .sum(),
        committed: committed_log_events(&log),
        next_sequence: log.next_sequence("actions", producer),
    }
}

/// Waits until `actions` holds more than `at_least` events, as the running server shows.
/// Both its figures bound the end offsets from below: the lag is the end offsets minus
/// committed positions that only grew from `committed_before`, and the events it processed
/// are distinct offsets from there. Returns false if `producer` exits first.
async fn wait_until_appended(
    server: &Server,
    producer: &mut Child,
    at_least: i64,
    committed_before: i64,
) -> bool {
    let started = Instant::now();
    loop {
        let now = server.ingesting().await;
        if committed_before + now.lag.max(now.processed as i64) > at_least {
            return true;
        }
        if producer.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "`cellar produce` appended nothing for a minute"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The three figures `cellar produce` prints: appended, appended before and skipped, and
/// consumed by no ingestion.
fn produced_counts(stdout: &str) -> [u64; 3] {
    let numbers: Vec<u64> = stdout
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    numbers
        .try_into()
        .unwrap_or_else(|_| panic!("unexpected output of `cellar produce`: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_producer_and_server_append_and_count_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let serve_log = dir.path().join("serve.log");
    apply_repo(dir.path(), &data, "actions");
    let file = dir.path().join("actions.jsonl");
    let mut lines = String::new();
    for (_, payload) in events() {
        lines.push_str(&payload);
        lines.push('\n');
    }
    std::fs::write(&file, lines).unwrap();
    let total = (USERS * EVENTS_PER_USER) as i64;
    let producer_id = cellar::client::producer_id_for(&file);

    // Rounds of: serve, produce, then either kill the producer and, while the server still
    // ingests what it appended, the server; or kill the server under the producer (whose
    // request may then be appended without an answer reaching it). Each kill waits for
    // progress, and the log, read once the server is gone, shows where it landed.
    let mut rng = rand::rng();
    let (mut producer_kills, mut server_kills, mut under_producer) = (0, 0, 0);
    let mut before = log_state(&data, &producer_id);
    for round in 0..30 {
        if producer_kills >= 3 && server_kills >= 3 && under_producer >= 1 {
            break;
        }
        let server = Server::start(&data, &serve_log).await;
        let mut producer = start_producing(&data, &file, &server);
        // Small steps, so the file outlasts the kills it needs.
        let step = rng.random_range(500..(total / 12));
        let appended = wait_until_appended(
            &server,
            &mut producer,
            before.appended + step,
            before.committed,
        )
        .await;
        assert!(
            appended,
            "`cellar produce` exited before appending past {}: {:?}",
            before.appended + step,
            producer.wait_with_output().unwrap()
        );
        let kill_producer_first = round % 2 == 0;
        let processed = if kill_producer_first {
            producer.kill().unwrap();
            producer.wait().unwrap();
            // Let the server ingest part of what is behind, then kill it.
            let lag = server.ingesting().await.lag;
            let target = rng.random_range(1..(lag * 3 / 4).max(2)) as u64;
            let started = Instant::now();
            let processed = loop {
                let now = server.ingesting().await;
                if now.processed >= target || now.lag == 0 {
                    break now.processed;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the server ingested nothing for a minute: {}",
                    log_tail(&serve_log)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            server.kill();
            processed
        } else {
            let processed = server.ingesting().await.processed;
            server.kill();
            // Its server gone, the producer fails on its own.
            let output = producer.wait_with_output().unwrap();
            assert!(!output.status.success(), "{output:?}");
            processed
        };

        let after = log_state(&data, &producer_id);
        eprintln!(
            "round {round}: {} first; {before:?} -> {after:?}; the server processed {processed}",
            if kill_producer_first {
                "producer killed"
            } else {
                "server killed under the producer"
            }
        );
        // Every sequence the producer sent is in the log once: re-runs appended only the rest.
        assert_eq!(after.appended as u64, after.next_sequence, "{after:?}");
        assert!(after.appended >= before.appended && after.committed >= before.committed);
        assert!(after.committed <= after.appended);
        let mid_file = after.appended > before.appended && after.appended < total;
        if kill_producer_first && mid_file {
            producer_kills += 1;
        }
        if !kill_producer_first && mid_file {
            under_producer += 1;
        }
        if processed > 0 && after.committed < after.appended {
            server_kills += 1;
        }
        before = after;
    }
    eprintln!(
        "kills landed mid-way: {producer_kills} of the producer, {server_kills} of the server \
         ({under_producer} under the producer)"
    );
    assert!(
        producer_kills >= 3 && server_kills >= 3 && under_producer >= 1,
        "too few kills landed mid-way: {producer_kills} of the producer, {server_kills} of the \
         server ({under_producer} under the producer)"
    );

    // Then the producer runs to the end: it appends exactly what is missing.
    let server = Server::start(&data, &serve_log).await;
    let output = start_producing(&data, &file, &server)
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let [appended, skipped, unrouted] = produced_counts(&stdout);
    assert_eq!(appended as i64, total - before.appended, "{stdout}");
    assert_eq!(skipped as i64, before.appended, "{stdout}");
    assert_eq!(unrouted, 0, "{stdout}");
    // And the server ingests the rest.
    let started = Instant::now();
    while server.ingesting().await.lag > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the server did not catch up within 2 minutes: {}",
            log_tail(&serve_log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("caught up in {:?}", started.elapsed());
    server.kill();
    let status = cellar(&data)
        .args(["ingest", "--until-caught-up"])
        .status()
        .unwrap();
    assert!(status.success());

    // Every line of the file is in the log exactly once, and every event was counted once.
    let log = EventLog::open(data.join("log")).unwrap();
    assert_eq!(log.next_sequence("actions", &producer_id), total as u64);
    let mut seen = BTreeSet::new();
    for p in 0..log.partitions("actions").unwrap() {
        let end = log.end_offset("actions", p).unwrap();
        assert_eq!(
            log.committed("cellar-ingest", "actions", p).unwrap(),
            Some(end)
        );
        for entry in log.read("actions", p, 0, end as usize).unwrap() {
            let event: serde_json::Value = serde_json::from_slice(&entry.payload).unwrap();
            let id = (event["user_id"].to_string(), event["seq"].as_i64().unwrap());
            assert!(seen.insert(id.clone()), "{id:?} is in the log twice");
        }
    }
    assert_eq!(seen.len() as i64, total, "events missing from the log");
    let dead = log.partitions("cellar-dead-letter").unwrap_or(0);
    for p in 0..dead {
        assert_eq!(log.end_offset("cellar-dead-letter", p).unwrap(), 0);
    }
    drop(log);
    verify_store(&data).await;
}

/// A record a server answered with: (group, user, event time, values as JSON).
type Served = (String, String, i64, Vec<serde_json::Value>);

/// Reads random users' features from `server` until `stop`, keeping every record served.
async fn read_served(server: String, stop: tokio::sync::watch::Receiver<bool>) -> Vec<Served> {
    let http = reqwest::Client::new();
    let mut served = Vec::new();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    while !*stop.borrow() {
        let users: Vec<String> = (0..20)
            .map(|_| format!("u{}", rng.random_range(0..USERS)))
            .collect();
        let body = serde_json::json!({
            "entities": {"user_id": users},
            "groups": ["profile", "activity", {"name": "clicks", "top_n": 5}],
        });
        let Ok(answer) = http
            .post(format!("{server}/v1/features"))
            .json(&body)
            .send()
            .await
        else {
            break;
        };
        let Ok(answer) = answer.json::<serde_json::Value>().await else {
            break;
        };
        // A read the loaded server could not finish in time is no record served; a refused
        // request is the test's own mistake.
        if let Some(error) = answer.get("error") {
            assert!(error["code"].as_u64().unwrap_or(500) >= 500, "{answer}");
            continue;
        }
        for result in answer["results"].as_array().into_iter().flatten() {
            let group = result["group"].as_str().unwrap_or_default().to_owned();
            for (row, user) in result["rows"].as_array().into_iter().flatten().zip(&users) {
                let records = match row["records"].as_array() {
                    Some(records) => records.clone(),
                    None if row["status"] == "present" => vec![row.clone()],
                    None => Vec::new(),
                };
                for record in records {
                    let time = record["event_time"].as_str().unwrap_or_default();
                    let time = cellar_spec::value::parse_rfc3339(time)
                        .unwrap_or_else(|| panic!("served event time `{time}`"));
                    let values = record["values"].as_array().cloned().unwrap_or_default();
                    served.push((group.clone(), user.clone(), time, values));
                }
            }
        }
    }
    served
}

/// Every record the history in `storage` holds, in the served form, after converting what the
/// killed processes of `data` left staged.
fn history_records(
    data: &Path,
    storage: &cellar_history::Storage,
) -> BTreeSet<(String, String, i64, String)> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, TimestampMillisecondType};
    use arrow_array::Array;
    let config = cellar::config::Config {
        data_dir: data.to_path_buf(),
        ..Default::default()
    };
    let converted = cellar::training::convert_leftovers_into(&config, storage).unwrap();
    eprintln!("converted {converted} records left staged");
    let repo = cellar_spec::parse_repo(&[("repo.yaml".into(), REPO.into())]).unwrap();
    let mut out = BTreeSet::new();
    for group in &repo.groups {
        let features: Vec<(String, cellar_spec::ValueType)> = group
            .live_features()
            .map(|f| (f.name.clone(), f.value_type))
            .collect();
        let files =
            cellar_history::files::list(storage, &group.name, (i64::MIN, i64::MAX)).unwrap();
        for (_, key) in files {
            for batch in cellar_history::files::read(storage, &key, &features).unwrap() {
                let keys = batch.column(0).as_string::<i32>();
                let times = batch.column(1).as_primitive::<TimestampMillisecondType>();
                for row in 0..batch.num_rows() {
                    let values: Vec<serde_json::Value> = (0..features.len())
                        .map(|f| {
                            let column = batch.column(cellar_history::files::META_COLUMNS + f);
                            if column.is_null(row) {
                                serde_json::Value::Null
                            } else if let Some(ints) = column.as_primitive_opt::<Int64Type>() {
                                ints.value(row).into()
                            } else {
                                column.as_string::<i32>().value(row).into()
                            }
                        })
                        .collect();
                    out.insert((
                        group.name.clone(),
                        keys.value(row).to_owned(),
                        times.value(row),
                        serde_json::Value::from(values).to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_every_record_it_served_in_the_offline_history() {
    let dir = tempfile::tempdir().unwrap();
    let history = cellar_history::Storage::Local(dir.path().join("data/history"));
    killed_server_keeps_what_it_served(dir.path(), &history).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3-compatible server (CELLAR_TEST_S3); scripts/test.sh starts it"]
async fn a_killed_server_leaves_every_record_it_served_in_a_history_in_s3() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = common::TestBucket::create().await;
    let mut settings = format!("CELLAR_HISTORY__PATH=s3://{}/history\n", bucket.name);
    for (key, value) in bucket.env() {
        settings.push_str(&format!("{key}={value}\n"));
    }
    std::fs::write(dir.path().join("env"), settings).unwrap();
    let history = bucket.history("history");
    killed_server_keeps_what_it_served(dir.path(), &history).await;
    // Nothing of the history was kept on the machine but what waited to be converted.
    assert!(!dir.path().join("data/history").exists());
}

/// Kills the server of `dir` again and again while it ingests and serves, then checks every
/// record it served is in the `history`.
async fn killed_server_keeps_what_it_served(dir: &Path, history: &cellar_history::Storage) {
    let data = dir.join("data");
    let serve_log = dir.join("serve.log");
    apply_repo(dir, &data, "actions");
    produce_to_log(&data).await;
    let total = (USERS * EVENTS_PER_USER) as i64;
    let mut rng = rand::rng();
    let mut served: Vec<Served> = Vec::new();
    let mut kills = 0;
    for round in 0..20 {
        let committed_before = committed_log_events(&EventLog::open(data.join("log")).unwrap());
        if committed_before >= total {
            break;
        }
        let server = Server::start(&data, &serve_log).await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let reader = tokio::spawn(read_served(server.base.clone(), stop_rx));
        let wait = rng.random_range(200..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let processed = server.ingesting().await.processed;
        server.kill();
        let _ = stop_tx.send(true);
        served.extend(reader.await.unwrap());
        let committed = committed_log_events(&EventLog::open(data.join("log")).unwrap());
        eprintln!("round {round}: killed after {wait} ms, {processed} processed, {committed} of {total} committed");
        if processed > 0 && committed < total {
            kills += 1;
        }
    }
    assert!(kills >= 3, "only {kills} kills landed mid-stream");
    // The rest ingested by a process that ends normally.
    let status = cellar(&data)
        .args(["ingest", "--until-caught-up"])
        .status()
        .unwrap();
    assert!(status.success());
    verify_store(&data).await;

    let history = history_records(&data, history);
    let distinct: BTreeSet<(String, String, i64, String)> = served
        .iter()
        .map(|(g, u, t, v)| {
            (
                g.clone(),
                u.clone(),
                *t,
                serde_json::Value::from(v.clone()).to_string(),
            )
        })
        .collect();
    eprintln!(
        "{} records served ({} distinct), {} records in the history",
        served.len(),
        distinct.len(),
        history.len()
    );
    assert!(
        distinct.len() > 1000,
        "too few records were served to check"
    );
    let missing: Vec<_> = distinct.difference(&history).take(5).collect();
    assert!(
        missing.is_empty(),
        "served but not in the history: {missing:?}"
    );
    // Every click is in the history, and each user's final records.
    for u in 0..USERS {
        for seq in 0..EVENTS_PER_USER as i64 {
            let click = (
                "clicks".to_owned(),
                format!("u{u}"),
                BASE_TS + seq,
                serde_json::json!([format!("a{u}-{seq}")]).to_string(),
            );
            assert!(history.contains(&click), "{click:?} is not in the history");
        }
        let last = EVENTS_PER_USER as i64 - 1;
        let profile = (
            "profile".to_owned(),
            format!("u{u}"),
            BASE_TS + last,
            serde_json::json!([format!("a{u}-{last}"), last]).to_string(),
        );
        assert!(
            history.contains(&profile),
            "{profile:?} is not in the history"
        );
    }
}

const KAFKA_PARTITIONS: i32 = 4;

/// Events of `topic` committed by `group` on the broker.
fn committed_kafka_events(brokers: &str, group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..KAFKA_PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kafka broker (CELLAR_TEST_KAFKA); scripts/test.sh starts one"]
async fn killed_kafka_ingestion_loses_nothing_and_counts_nothing_twice() {
    let brokers = common::service_address("CELLAR_TEST_KAFKA", "a Kafka broker");
    let suffix = format!("{:016x}", rand::random::<u64>());
    let topic = format!("actions-{suffix}");
    let group = format!("cellar-crash-{suffix}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(
        dir.path().join("cellar.toml"),
        format!(
            "[ingest.kafka]\nbrokers = \"{brokers}\"\ngroup = \"{group}\"\npartitions = {KAFKA_PARTITIONS}\n\
             properties = {{ \"session.timeout.ms\" = \"6000\" }}\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("cellar.toml");
    let with_kafka = || {
        let mut c = cellar(&data);
        c.arg("--config").arg(&config);
        c
    };
    apply_repo(dir.path(), &data, &topic);
    ensure_topics(
        &brokers.as_str().into(),
        std::slice::from_ref(&topic),
        KAFKA_PARTITIONS,
    )
    .await
    .unwrap();
    // One event per record batch: tansu answers a fetch from an offset inside a batch with
    // nothing, or with the next batch, where Kafka returns the batch holding the offset.
    let publisher = KafkaPublisher::new(
        &KafkaPublisherConfig::new(&brokers).property("batch.num.messages", "1"),
    )
    .unwrap();
    let all: Vec<OutgoingEvent> = events()
        .map(|(key, payload)| OutgoingEvent {
            key: Some(Bytes::from(key)),
            payload: Bytes::from(payload),
            headers: Vec::new(),
        })
        .collect();
    for batch in all.chunks(10_000) {
        publisher.publish(&topic, batch).await.unwrap();
    }
    let total = all.len() as i64;

    // A killed member leaves the group only when its session times out, so the next one may
    // wait that long before it is assigned partitions: kill once it made progress.
    kill_repeatedly(
        with_kafka,
        KillAfter {
            ready: "consuming Kafka",
            progress: true,
            wait_ms: 0..1_000,
        },
        || committed_kafka_events(&brokers, &group, &topic),
        total,
    )
    .await;

    // Then let it finish: every event committed (tansu's end offsets are not reliable, but
    // offsets are dense, so the committed positions sum to the events produced).
    let log_path = dir.path().join("ingest.log");
    let mut child = with_kafka()
        .arg("ingest")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while committed_kafka_events(&brokers, &group, &topic) < total {
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "not every event was committed within 5 minutes; the ingest log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("caught up in {:?}", started.elapsed());
    child.kill().unwrap();
    child.wait().unwrap();
    verify_store(&data).await;
}
