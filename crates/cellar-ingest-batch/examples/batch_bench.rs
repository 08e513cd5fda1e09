//! Batch ingestion benchmark: Parquet files into the embedded store, end to end.
//!
//! ```sh
//! cargo run --release -p cellar-ingest-batch --example batch_bench -- \
//!     [--rows 1000000] [--files 4] [--row-group 65536] [--users ROWS] \
//!     [--kind attribute|timeseries] [--workers CORES] [--write-rows 65536] [--transform SQL]
//! ```
//!
//! `--transform` puts a SQL transform (DataFusion) over table `source` in the ingestion, e.g.
//! `"SELECT user_id, ts, lower(country) AS country, visits * 2 AS visits, ctr, subscribed,
//! last_seen FROM source WHERE ctr < 0.9"`; the features are still mapped by column name.
//!
//! Setup (not timed): `--rows` rows written as `--files` snappy-compressed Parquet files with
//! row groups of `--row-group` rows, into a temp dir: a `user_id` string key (`--users`
//! distinct users, by default one per row, so every attribute put is a new entity), an event
//! time (timestamp, ms) and five features of mixed types (string, int64, float64, bool,
//! timestamp). The group is an attribute group by default (one record per user; each put reads
//! the stored event time first), or a time series with `--kind timeseries`.
//!
//! Cases, each over the same files and plan, each timed from planning to the last shard done:
//!
//! 1. `read+map`: the job into a sink that drops the records: what reading Parquet and
//!    mapping rows costs, the ceiling of the pipeline;
//! 2. `store`: the job into a fresh `EmbeddedStore` through `WritePath` (no cache tier): the
//!    figure the target (>= 500k rows/s on 2 cores) is about;
//! 3. `store, again`: the same job once more into that store: every put is stale (a redone
//!    job), so this is the cost of idempotence.
//!
//! For each: rows/s, shard count, plan time, and the shards' summed reader-thread time (read +
//! map) and write wait. The machine's load average is printed before and after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use async_trait::async_trait;
use cellar_cache::WritePath;
use cellar_ingest_batch::{
    plan, BatchJob, JobOptions, JobReport, LocalRunner, MemoryRejects, RecordSink, Rejects,
};
use cellar_spec::{EntityKey, FeatureGroup, FeatureRepo};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{OnlineStore, PutOutcome, Record, Updater, Write};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

// The allocator of the `cellar` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TS: i64 = 1_700_000_000_000;
const COUNTRIES: [&str; 8] = ["KR", "JP", "US", "DE", "FR", "BR", "IN", "NZ"];

struct Args {
    rows: usize,
    files: usize,
    row_group: usize,
    users: usize,
    kind: String,
    workers: usize,
    /// Users in key order through the files (an export sorted by user) instead of scattered.
    sorted: bool,
    batch_rows: usize,
    write_rows: usize,
    /// A SQL transform for the ingestion.
    transform: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        rows: 1_000_000,
        files: 4,
        row_group: 65_536,
        users: 0,
        kind: "attribute".into(),
        workers: LocalRunner::default().workers(),
        sorted: false,
        batch_rows: cellar_ingest_batch::job::DEFAULT_BATCH_ROWS,
        write_rows: JobOptions::default().write_rows,
        transform: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let value = pair.get(1).map(String::as_str).unwrap_or("");
        let number = || {
            value
                .replace('_', "")
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{}: expected a whole number, got `{value}`", pair[0]))
        };
        match pair[0].as_str() {
            "--rows" => a.rows = number(),
            "--files" => a.files = number().max(1),
            "--row-group" => a.row_group = number().max(1),
            "--users" => a.users = number(),
            "--kind" => a.kind = value.to_owned(),
            "--workers" => a.workers = number().max(1),
            "--sorted" => a.sorted = value == "true",
            "--batch-rows" => a.batch_rows = number().max(1),
            "--write-rows" => a.write_rows = number().max(1),
            "--transform" => a.transform = Some(value.to_owned()),
            other => panic!("unknown argument `{other}`"),
        }
    }
    if a.users == 0 {
        a.users = a.rows;
    }
    a
}

fn repo(dir: &str, kind: &str, transform: Option<&str>) -> FeatureRepo {
    let transform = transform.map_or_else(String::new, |sql| {
        format!(
            ", transform: {}",
            serde_json::to_string(sql).expect("json string")
        )
    });
    let text = format!(
        r#"
kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: user_daily
entity: user
type: {kind}
features:
  - {{ name: country, type: string }}
  - {{ name: visits, type: int64 }}
  - {{ name: ctr, type: float64 }}
  - {{ name: subscribed, type: bool }}
  - {{ name: last_seen, type: timestamp }}
---
kind: Ingestion
name: user_daily_load
batch: {{ files: {{ path: "{dir}/*.parquet" }}{transform} }}
into: user_daily
key: user_id
event_time: ts
features: {{ country: country, visits: visits, ctr: ctr, subscribed: subscribed, last_seen: last_seen }}
"#
    );
    cellar_spec::parse_repo(&[("bench.yaml".into(), text)]).unwrap_or_else(|e| panic!("{e}"))
}

fn write_files(dir: &std::path::Path, a: &Args) {
    let per_file = a.rows.div_ceil(a.files);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(a.row_group))
        .build();
    for f in 0..a.files {
        let start = f * per_file;
        let end = (start + per_file).min(a.rows);
        let path = dir.join(format!("part-{f:03}.parquet"));
        let file = std::fs::File::create(path).unwrap();
        let mut writer: Option<ArrowWriter<std::fs::File>> = None;
        let mut from = start;
        while from < end {
            let to = (from + 65_536).min(end);
            let range = from..to;
            // Users scattered over the files, as an export sorted by something else would be.
            let user = |i: usize| {
                let u = if a.sorted {
                    i * a.users / a.rows
                } else {
                    (i * 7_919) % a.users
                };
                format!("user-{u:08}")
            };
            let batch = RecordBatch::try_from_iter(vec![
                (
                    "user_id",
                    Arc::new(StringArray::from_iter_values(range.clone().map(user))) as ArrayRef,
                ),
                (
                    "ts",
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        range.clone().map(|i| TS + i as i64),
                    )),
                ),
                (
                    "country",
                    Arc::new(StringArray::from_iter_values(
                        range.clone().map(|i| COUNTRIES[i % COUNTRIES.len()]),
                    )),
                ),
                (
                    "visits",
                    Arc::new(Int64Array::from_iter_values(
                        range.clone().map(|i| (i % 1000) as i64),
                    )),
                ),
                (
                    "ctr",
                    Arc::new(Float64Array::from_iter_values(
                        range.clone().map(|i| (i % 997) as f64 / 997.0),
                    )),
                ),
                (
                    "subscribed",
                    Arc::new(BooleanArray::from_iter(
                        range.clone().map(|i| Some(i % 3 == 0)),
                    )),
                ),
                (
                    "last_seen",
                    Arc::new(TimestampMillisecondArray::from_iter_values(
                        range.clone().map(|i| TS - (i % 86_400_000) as i64),
                    )),
                ),
            ])
            .unwrap();
            let w = writer.get_or_insert_with(|| {
                ArrowWriter::try_new(
                    file.try_clone().unwrap(),
                    batch.schema(),
                    Some(props.clone()),
                )
                .unwrap()
            });
            w.write(&batch).unwrap();
            from = to;
        }
        if let Some(w) = writer {
            w.close().unwrap();
        }
    }
}

/// Drops every record: the read+map ceiling.
struct NullSink;

#[async_trait]
impl RecordSink for NullSink {
    async fn put(
        &self,
        _: &FeatureGroup,
        writes: &[Write],
    ) -> cellar_store::Result<Vec<PutOutcome>> {
        Ok(vec![PutOutcome::Applied; writes.len()])
    }

    async fn update(
        &self,
        _: &FeatureGroup,
        entities: &[EntityKey],
        _: Updater,
    ) -> cellar_store::Result<Vec<Option<Record>>> {
        Ok(vec![None; entities.len()])
    }
}

/// CPU time this process has used (user + system), from `/proc/self/stat`, in clock ticks of
/// 10 ms (Linux's USER_HZ): on a shared machine wall time includes waiting for the cores,
/// CPU time does not.
fn cpu_time() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The command name may hold spaces: fields count from after its closing paren.
            let rest = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn case(
    name: &str,
    job: &Arc<BatchJob>,
    workers: usize,
    sink: Arc<dyn RecordSink>,
) -> JobReport {
    let started = Instant::now();
    let cpu_before = cpu_time();
    let planned = {
        let job = Arc::clone(job);
        tokio::task::spawn_blocking(move || plan(&job))
            .await
            .unwrap()
            .unwrap()
    };
    let plan_time = started.elapsed();
    let rejects: Arc<dyn Rejects> = Arc::new(MemoryRejects::default());
    let report = LocalRunner::new(workers)
        .run(Arc::clone(job), &planned, sink, rejects, Arc::new(|_| {}))
        .await;
    let total = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);
    assert!(
        report.succeeded(),
        "{:?}",
        report.failures().collect::<Vec<_>>()
    );
    let shards: Vec<_> = report
        .shards
        .iter()
        .filter_map(|s| s.result.as_ref().ok())
        .collect();
    let sum = |f: fn(&cellar_ingest_batch::ShardReport) -> Duration| {
        shards.iter().map(|s| f(s)).sum::<Duration>()
    };
    println!(
        "{name:<14} {:>9.0} rows/s  {:>8} rows in {:>6.2} s, cpu {:>5.2} s  ({} shards, {} workers; \
         plan {:.1} ms, run {:.2} s; summed over shards: read+map {:.2} s, write wait {:.2} s; \
         written {}, stale {})",
        report.rows_read as f64 / total.as_secs_f64(),
        report.rows_read,
        total.as_secs_f64(),
        cpu.as_secs_f64(),
        planned.shards.len(),
        workers,
        plan_time.as_secs_f64() * 1000.0,
        report.elapsed.as_secs_f64(),
        sum(|s| s.read_time).as_secs_f64(),
        sum(|s| s.write_time).as_secs_f64(),
        report.rows_written,
        report.rows_stale,
    );
    report
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let generating = Instant::now();
    write_files(&data, &a);
    let bytes: u64 = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "data: {} rows, {} users, {} files of row groups of {} rows, {:.1} MiB of Parquet \
         (snappy), written in {:.1} s; group kind {}",
        a.rows,
        a.users,
        a.files,
        a.row_group,
        bytes as f64 / (1 << 20) as f64,
        generating.elapsed().as_secs_f64(),
        a.kind
    );
    let repo = repo(&data.display().to_string(), &a.kind, a.transform.as_deref());
    let job = BatchJob::from_repo(&repo, "user_daily_load", TS)
        .unwrap()
        .with_options(JobOptions {
            batch_rows: a.batch_rows,
            write_rows: a.write_rows,
            ..JobOptions::default()
        });
    let job = Arc::new(job);
    println!("load average before: {}", load());

    case("read+map", &job, a.workers, Arc::new(NullSink)).await;

    let store = Arc::new(EmbeddedStore::open(dir.path().join("store")).unwrap());
    let path: Arc<dyn RecordSink> = Arc::new(WritePath::new(store as Arc<dyn OnlineStore>, None));
    let first = case("store", &job, a.workers, Arc::clone(&path)).await;
    let again = case("store, again", &job, a.workers, path).await;
    assert_eq!(first.rows_read, again.rows_read);
    println!("load average after: {}", load());
}
