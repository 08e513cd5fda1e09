//! Crash test of stream ingestion on the embedded log: `cellar ingest` is killed with SIGKILL
//! at random moments while it consumes 100,000 events, then restarted; at the end every
//! expected value is stored, no event is lost and none is counted twice: latest values, time
//! series and windowed aggregates (counts, a sum, a distinct count) are exact.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellar_ingest_stream::log::source::ensure_topic;
use cellar_ingest_stream::log::{EventLog, LogRecord};
use cellar_spec::{EntityKey, Value};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{RecordReader, TimeseriesQuery};
use rand::Rng;

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

/// Events of `actions` committed by the ingestion's consumer group so far.
fn committed_events(data: &Path) -> i64 {
    let log = EventLog::open(data.join("log")).unwrap();
    (0..log.partitions("actions").unwrap())
        .map(|p| {
            log.committed("cellar-ingest", "actions", p)
                .unwrap()
                .unwrap_or(0)
        })
        .sum()
}

async fn produce(data: &Path) {
    let log = EventLog::open(data.join("log")).unwrap();
    ensure_topic(&log, "actions").await.unwrap();
    let mut batch = Vec::with_capacity(10_000);
    // Users' events interleave, as they would in a real stream.
    for seq in 0..EVENTS_PER_USER {
        for u in 0..USERS {
            let event = serde_json::json!({
                "type": "article_clicked",
                "user_id": format!("u{u}"),
                "ts": BASE_TS + seq as i64,
                "seq": seq,
                "article_id": format!("a{u}-{seq}"),
                "category": format!("c{}", seq % 7),
            });
            batch.push(LogRecord {
                key: Some(Bytes::from(format!("u{u}"))),
                payload: Bytes::from(event.to_string()),
                headers: Vec::new(),
                timestamp_ms: BASE_TS,
            });
            if batch.len() == 10_000 {
                log.append("actions", &batch).await.unwrap();
                batch.clear();
            }
        }
    }
    log.append("actions", &batch).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_ingestion_loses_nothing_and_writes_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let repo_dir = dir.path().join("repo");
    std::fs::create_dir_all(&repo_dir).unwrap();
    std::fs::write(repo_dir.join("repo.yaml"), REPO).unwrap();
    let applied = cellar(&data)
        .arg("--repo")
        .arg(&repo_dir)
        .arg("apply")
        .status()
        .unwrap();
    assert!(applied.success());
    produce(&data).await;

    // Kill the consumer at random moments, at least five times, each time after it has made
    // progress and before it is done, so every kill lands mid-stream.
    let total = (USERS * EVENTS_PER_USER) as i64;
    let mut rng = rand::rng();
    let mut kills = 0;
    let mut committed_before = 0;
    while kills < 5 {
        let mut child = cellar(&data)
            .arg("ingest")
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until it consumes (opening a large log takes a while), then a random moment.
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
                if line.contains("consuming the embedded log") {
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
        let wait = rng.random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL: no destructor, no final commit
        child.wait().unwrap();
        let committed = committed_events(&data);
        eprintln!("killed after {wait} ms: {committed} of {total} events committed");
        assert!(
            committed >= committed_before,
            "a committed position moved back"
        );
        if committed >= total {
            break;
        }
        if committed > committed_before {
            kills += 1;
        }
        committed_before = committed;
    }
    assert!(
        kills >= 5,
        "the consumer finished before it was killed five times mid-stream"
    );
    // Then let it finish.
    let started = Instant::now();
    let status = cellar(&data)
        .args(["ingest", "--until-caught-up"])
        .status()
        .unwrap();
    assert!(status.success());
    eprintln!("caught up in {:?}", started.elapsed());

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
    drop(store);

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
