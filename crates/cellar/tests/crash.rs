//! Crash tests of stream ingestion, on the embedded log and on Kafka: `cellar ingest` is killed
//! with SIGKILL at random moments while it consumes 100,000 events, then restarted; at the end
//! every expected value is stored, no event is lost and none is counted twice: latest values,
//! time series and windowed aggregates (counts, a sum, a distinct count) are exact.
//!
//! The Kafka test needs the broker `CELLAR_TEST_KAFKA` names (`scripts/test.sh` starts one): it
//! is ignored by a plain `cargo test`, and run with `--include-ignored` but without the
//! variable, it fails.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellar_ingest_stream::kafka::{ensure_topics, KafkaPublisher, KafkaPublisherConfig};
use cellar_ingest_stream::log::source::ensure_topic;
use cellar_ingest_stream::log::{EventLog, LogRecord};
use cellar_ingest_stream::source::{OutgoingEvent, Publisher};
use cellar_spec::{EntityKey, Value};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{RecordReader, TimeseriesQuery};
use rand::Rng;
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

fn cellar(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cellar"));
    c.arg("--data-dir")
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
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
fn committed_log_events(data: &Path) -> i64 {
    let log = EventLog::open(data.join("log")).unwrap();
    (0..log.partitions("actions").unwrap())
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
        || committed_log_events(&data),
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
        &brokers,
        &[],
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
