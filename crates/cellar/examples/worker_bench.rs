//! Batch worker scaling: one backfill of Parquet files run by 1, then 2 `cellar worker`
//! processes through Kafka, into a Redis store they share, against the local runner into the
//! same Redis in the same run (one process, no Kafka).
//!
//! ```sh
//! cargo build --release -p cellar --bin cellar --example worker_bench
//! target/release/examples/worker_bench --cellar target/release/cellar \
//!     --kafka 127.0.0.1:9092 --redis redis://127.0.0.1:6379 [--rows 1000000] [--shards 8]
//! ```
//!
//! Each case gets its own data dir, registry, Redis key prefix, topic and consumer group, and
//! is timed by the backfill's own report (first claim to job end); the workers are started and
//! joined to the group before the backfill is submitted. The Redis prefix is deleted after
//! each case.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

struct Args {
    cellar: PathBuf,
    kafka: String,
    redis: String,
    rows: usize,
    shards: usize,
}

fn args() -> Args {
    let mut a = Args {
        cellar: PathBuf::from("target/release/cellar"),
        kafka: "127.0.0.1:9092".into(),
        redis: "redis://127.0.0.1:6379".into(),
        rows: 1_000_000,
        shards: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--cellar" => a.cellar = PathBuf::from(value),
            "--kafka" => a.kafka = value,
            "--redis" => a.redis = value,
            "--rows" => a.rows = value.parse().expect("--rows: a number"),
            "--shards" => a.shards = value.parse().expect("--shards: a number"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// `rows` users over `files` snappy Parquet files: a key, an event time, three features.
fn write_input(dir: &Path, rows: usize, files: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("age", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let per_file = rows.div_ceil(files);
    for f in 0..files {
        let ids: Vec<usize> = (f * per_file..((f + 1) * per_file).min(rows)).collect();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| format!("u{i}")),
                )),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| ["KR", "JP", "US", "DE"][i % 4]),
                )),
                Arc::new(Int64Array::from_iter_values(
                    ids.iter().map(|&i| (i % 90) as i64),
                )),
                Arc::new(Float64Array::from_iter_values(
                    ids.iter().map(|&i| i as f64 * 0.5),
                )),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    ids.iter().map(|&i| 1_700_000_000_000 + i as i64),
                )),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(64 * 1024))
            .build();
        let file = std::fs::File::create(dir.join(format!("part-{f}.parquet"))).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }
}

struct Case<'a> {
    args: &'a Args,
    root: PathBuf,
    name: String,
}

impl Case<'_> {
    fn config(&self, input: &Path, runner: &str) -> PathBuf {
        let repo = self.root.join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(
            repo.join("profiles.yaml"),
            format!(
                r#"kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - {{ name: country, type: string }}
  - {{ name: age, type: int64 }}
  - {{ name: score, type: float64 }}
---
kind: Ingestion
name: profiles
batch: {{ files: {{ path: "{}/*.parquet" }}, parallelism: {} }}
into: profile
key: user_id
event_time: ts
features: {{ country: country, age: age, score: score }}
"#,
                input.display(),
                self.args.shards
            ),
        )
        .unwrap();
        let config = self.root.join("cellar.toml");
        std::fs::write(
            &config,
            format!(
                r#"data_dir = "{data}"
repo = "{repo}"
[server]
listen = "127.0.0.1:1"
[store]
backend = "redis"
[store.redis]
url = "{redis}"
key_prefix = "cellar-bench-{name}:"
[ingest.kafka]
brokers = "{kafka}"
[ingest.kafka.properties]
"session.timeout.ms" = "6000"
[jobs]
runner = "{runner}"
kafka_topic = "cellar-bench-shards-{name}"
kafka_group = "cellar-bench-workers-{name}"
kafka_partitions = 8
shard_workers = 1
"#,
                data = self.root.join("data").display(),
                repo = repo.display(),
                redis = self.args.redis,
                kafka = self.args.kafka,
                name = self.name,
            ),
        )
        .unwrap();
        config
    }

    fn cellar(&self, config: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(&self.args.cellar);
        c.arg("--config")
            .arg(config)
            .args(args)
            .env("RUST_LOG", "warn");
        c
    }
}

/// Runs the backfill; returns its summary line.
fn backfill(case: &Case<'_>, config: &Path) -> String {
    let out = case
        .cellar(config, &["backfill", "profiles"])
        .output()
        .expect("run cellar backfill");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.lines().next().unwrap_or_default().to_owned()
}

/// The rows/s figure of a summary line: `... (123456 rows/s)`.
fn rate(summary: &str) -> f64 {
    summary
        .rsplit_once('(')
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0)
}

fn drop_prefix(redis: &str, name: &str) {
    let url = redis.trim_start_matches("redis://");
    let (host, port) = url.split_once(':').unwrap_or((url, "6379"));
    let _ = Command::new("redis-cli")
        .args([
            "-h",
            host,
            "-p",
            port.trim_end_matches('/'),
            "--scan",
            "--pattern",
        ])
        .arg(format!("cellar-bench-{name}:*"))
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|scan| {
            Command::new("xargs")
                .args([
                    "-r",
                    "-n",
                    "1000",
                    "redis-cli",
                    "-h",
                    host,
                    "-p",
                    port,
                    "del",
                ])
                .stdin(scan.stdout.unwrap())
                .stdout(Stdio::null())
                .status()
        });
}

fn main() {
    let args = args();
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    write_input(&input, args.rows, 4);
    println!(
        "{} rows in 4 Parquet files, {} shards, into Redis at {}; load average {}",
        args.rows,
        args.shards,
        args.redis,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let run = std::process::id();
    let mut results = Vec::new();
    for (label, workers) in [
        ("local runner, 1 process", 0),
        ("1 cellar worker", 1),
        ("2 cellar workers", 2),
    ] {
        let case = Case {
            args: &args,
            root: tmp.path().join(format!("case-{workers}")),
            name: format!("{run}-{workers}"),
        };
        let runner = if workers == 0 { "local" } else { "kafka" };
        let config = case.config(&input, runner);
        let applied = case.cellar(&config, &["apply"]).output().unwrap();
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
        let mut children: Vec<Child> = (0..workers)
            .map(|_| {
                case.cellar(&config, &["worker"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start cellar worker")
            })
            .collect();
        // Let the workers join the group before tasks arrive.
        std::thread::sleep(Duration::from_secs(if workers > 0 { 8 } else { 0 }));
        let summary = backfill(&case, &config);
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop_prefix(&args.redis, &case.name);
        println!("{label:<26} {summary}");
        results.push((label, rate(&summary)));
    }
    let base = results[1].1.max(1.0);
    println!(
        "scaling: 2 workers / 1 worker = {:.2}x; local runner / 1 worker = {:.2}x",
        results[2].1 / base,
        results[0].1 / base
    );
    println!(
        "load average after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}
