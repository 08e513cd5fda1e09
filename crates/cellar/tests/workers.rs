//! The `kafka` batch runner with real processes: two `cellar worker`s share a backfill's shard
//! tasks through Kafka; one is killed with SIGKILL in the middle of a shard; the job still
//! completes, every row is in the store, and nothing is written twice.
//!
//! Needs the broker `CELLAR_TEST_KAFKA` names and the Redis `CELLAR_TEST_REDIS` names (the store
//! the workers share); `scripts/test.sh` starts both. The test is ignored by a plain
//! `cargo test`, and run with `--include-ignored` but without the variables, it fails.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use cellar_registry::{JobState, Registry};
use cellar_spec::{EntityKey, Value};
use cellar_store::{RecordReader as _, TimeseriesQuery};
use cellar_store_redis::{RedisConfig, RedisStore};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

const FILES: usize = 8;
const USERS: usize = 80_000;
/// Clicks per user, one in each file pair: every user's records come from several shards.
const CLICKS: usize = 4;

/// Click `c` of user `u`: its event time and values.
fn click(u: usize, c: usize) -> (i64, String, f64) {
    (
        1_700_000_000_000 + (u * CLICKS + c) as i64,
        format!("article-{}", (u * 7 + c) % 1000),
        (u + c) as f64 / 8.0,
    )
}

/// File `f` holds click `f % CLICKS` of half the users (`f / CLICKS` picks which half).
fn write_file(path: &Path, f: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let c = f % CLICKS;
    let users: Vec<usize> = (0..USERS).filter(|u| u % 2 == f / CLICKS).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("article_id", DataType::Utf8, false),
        Field::new("dwell_s", DataType::Float64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                users.iter().map(|u| format!("u{u}")),
            )),
            Arc::new(StringArray::from_iter_values(
                users.iter().map(|&u| click(u, c).1),
            )),
            Arc::new(Float64Array::from_iter_values(
                users.iter().map(|&u| click(u, c).2),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                users.iter().map(|&u| click(u, c).0),
            )),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(5_000))
        .build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// A child process killed when dropped, so a failing test leaves none behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(command: &mut Command, log: &Path) -> Process {
    let out = std::fs::File::create(log).unwrap();
    Process(
        command
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("start cellar"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kafka broker (CELLAR_TEST_KAFKA) and Redis (CELLAR_TEST_REDIS); scripts/test.sh starts both"]
async fn a_worker_killed_mid_shard_loses_no_row_and_writes_nothing_twice() {
    let brokers = common::service_address("CELLAR_TEST_KAFKA", "a Kafka broker");
    let redis = common::service_address("CELLAR_TEST_REDIS", "Redis");
    let dir = tempfile::tempdir().unwrap();
    let run = format!("{}-{}", std::process::id(), common::free_port());
    let prefix = format!("cellar-test-workers-{run}:");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("clicks.yaml"),
        format!(
            r#"kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: clicks
entity: user
type: timeseries
features:
  - {{ name: article, type: string }}
  - {{ name: dwell, type: float64 }}
retention: {{ max_records: 100 }}
---
kind: Ingestion
name: click_log
batch: {{ files: {{ path: "{}/input/*.parquet" }}, parallelism: {FILES} }}
into: clicks
key: user_id
event_time: ts
features: {{ article: article_id, dwell: dwell_s }}
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    for f in 0..FILES {
        write_file(&dir.path().join(format!("input/part-{f}.parquet")), f);
    }
    let config = dir.path().join("cellar.toml");
    std::fs::write(
        &config,
        format!(
            r#"data_dir = "{data}"
repo = "{repo}"
[server]
listen = "127.0.0.1:{port}"
[store]
backend = "redis"
[store.redis]
url = "{redis}"
key_prefix = "{prefix}"
[ingest.kafka]
brokers = "{brokers}"
[ingest.kafka.properties]
"session.timeout.ms" = "6000"
[jobs]
runner = "kafka"
kafka_topic = "cellar-test-shards-{run}"
kafka_group = "cellar-test-workers-{run}"
kafka_partitions = 4
shard_workers = 1
lease_secs = 3
retry_backoff_ms = 200
"#,
            data = dir.path().join("data").display(),
            repo = repo.display(),
            port = common::free_port(),
        ),
    )
    .unwrap();
    let cellar = |args: &[&str], host: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cellar"));
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "info")
            .env("HOSTNAME", host);
        c
    };
    let applied = cellar(&["apply"], "cli").output().unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let logs = dir.path();
    // The doomed worker starts alone, so the shard tasks go to it.
    let mut doomed = spawn(&mut cellar(&["worker"], "doomed"), &logs.join("doomed.log"));
    let mut backfill = spawn(
        &mut cellar(&["backfill", "click_log"], "coordinator"),
        &logs.join("backfill.log"),
    );

    // Kill the doomed worker once it is in the middle of a shard.
    let registry = Registry::open(&format!(
        "sqlite://{}",
        dir.path().join("data/registry.db").display()
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let victim = loop {
        assert!(
            Instant::now() < deadline,
            "the doomed worker never ran a shard:\n{}",
            std::fs::read_to_string(logs.join("doomed.log")).unwrap_or_default()
        );
        if let Ok(shards) = registry.shards(1).await {
            if let Some(s) = shards.iter().find(|s| {
                s.state == JobState::Running
                    && s.worker
                        .as_deref()
                        .is_some_and(|w| w.starts_with("doomed-"))
            }) {
                break s.index;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    doomed.0.kill().unwrap(); // SIGKILL
    doomed.0.wait().unwrap();
    // Another worker joins the group: it gets the dead worker's tasks, and the coordinator
    // publishes the killed shard again once its lease lapses.
    let survivor = spawn(
        &mut cellar(&["worker"], "survivor"),
        &logs.join("survivor.log"),
    );

    let (status, backfill) = tokio::task::spawn_blocking(move || {
        let status = backfill.0.wait().unwrap();
        (status, backfill)
    })
    .await
    .unwrap();
    drop((backfill, survivor));
    let log = std::fs::read_to_string(logs.join("backfill.log")).unwrap();
    let survivor_log = std::fs::read_to_string(logs.join("survivor.log")).unwrap();
    assert!(status.success(), "{log}\n--- survivor:\n{survivor_log}");
    let rows = USERS * CLICKS;
    assert!(
        log.contains(&format!("succeeded: {rows} rows read, {rows} written")),
        "{log}"
    );
    let shards = registry.shards(1).await.unwrap();
    assert_eq!(shards.len(), FILES);
    let redone = shards.iter().find(|s| s.index == victim).unwrap();
    assert!(redone.attempts >= 2, "{redone:?}");
    assert!(
        redone.worker.as_deref().unwrap().starts_with("survivor-"),
        "{redone:?}"
    );
    assert!(shards.iter().all(|s| s.state == JobState::Succeeded));

    // Every click of every user, each once.
    let store = RedisStore::connect(RedisConfig {
        url: redis,
        key_prefix: prefix,
        ..RedisConfig::default()
    })
    .await
    .unwrap();
    let repo = cellar_registry::Registry::open(&format!(
        "sqlite://{}",
        dir.path().join("data/registry.db").display()
    ))
    .await
    .unwrap()
    .current()
    .await
    .unwrap()
    .unwrap()
    .repo;
    let group = repo.group("clicks").unwrap();
    for first in (0..USERS).step_by(1000) {
        let users: Vec<usize> = (first..first + 1000).collect();
        let keys: Vec<EntityKey> = users.iter().map(|u| EntityKey(format!("u{u}"))).collect();
        let found = store
            .scan_timeseries(
                group,
                &keys,
                TimeseriesQuery {
                    top_n: 100,
                    since: None,
                },
            )
            .await
            .unwrap();
        for (u, records) in users.iter().zip(found) {
            // Newest first; user u has the clicks of the two files of its half: clicks 0..4
            // of f with f / CLICKS == u % 2, so all four.
            assert_eq!(records.len(), CLICKS, "u{u}: {records:?}");
            for (r, c) in records.iter().zip((0..CLICKS).rev()) {
                let (ts, article, dwell) = click(*u, c);
                assert_eq!(r.event_time, ts, "u{u}");
                assert_eq!(r.value(0), &Value::String(article), "u{u}");
                assert_eq!(r.value(1), &Value::Float64(dwell), "u{u}");
            }
        }
    }
}
