//! Helpers shared by the integration tests: a feature repo, Parquet and CSV files written into
//! temporary directories (click logs among them, checked back row by row), an embedded store
//! behind the write path, and the address of a service a test needs.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, RecordBatchReader, StringArray,
};
use cellar_cache::WritePath;
use cellar_ingest_batch::{BatchError, BatchJob, MemoryRejects, Plan, Rejects};
use cellar_spec::{EntityKey, FeatureRepo, Value};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{OnlineStore, Record, RecordReader, TimeseriesQuery};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// A repo whose batch ingestions read from `dir`.
pub fn repo(dir: &Path) -> FeatureRepo {
    let d = dir.display();
    let text = format!(
        r#"
kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: Entity
name: placement
keys: [{{ name: site, type: string }}, {{ name: slot, type: int64 }}]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - {{ name: country, type: string }}
  - {{ name: age, type: int64 }}
  - {{ name: score, type: float64 }}
  - {{ name: active, type: bool }}
  - {{ name: signup, type: timestamp }}
  - {{ name: tags, type: "list<string>" }}
  - {{ name: topics, type: "set<int64>" }}
  - {{ name: embedding, type: "vector<float32, 2>" }}
  - {{ name: avatar, type: bytes }}
---
kind: FeatureGroup
name: clicks
entity: user
type: timeseries
features:
  - {{ name: article, type: string }}
  - {{ name: dwell, type: float64 }}
---
kind: FeatureGroup
name: engagement
entity: user
type: attribute
features:
  - {{ name: clicks, type: int64 }}
  - {{ name: mean_dwell, type: float64 }}
  - {{ name: last_article, type: string }}
---
kind: FeatureGroup
name: placement_stats
entity: placement
type: attribute
features:
  - {{ name: ctr, type: float64 }}
  - {{ name: views, type: int64 }}
---
kind: Ingestion
name: profiles_parquet
batch: {{ files: {{ path: "{d}/profiles/*.parquet" }} }}
into: profile
key: user_id
event_time: ts
features:
  country: country
  age: age
  score: score
  active: active
  signup: signup
  tags: tags
  topics: topics
  embedding: embedding
  avatar: avatar
---
kind: Ingestion
name: profiles_csv
batch: {{ files: {{ path: "{d}/profiles/*.csv" }} }}
into: profile
key: user_id
event_time: ts
features:
  country: country
  age: age
  score: score
  active: active
  signup: signup
  tags: tags
  topics: topics
  embedding: embedding
  avatar: avatar
---
kind: Ingestion
name: countries
batch: {{ files: {{ path: "{d}/countries/*.csv" }} }}
into: profile
key: user_id
event_time: ts
features: {{ country: country }}
---
kind: Ingestion
name: click_log
batch: {{ files: {{ path: "{d}/clicks", format: parquet }} }}
into: clicks
key: user_id
event_time: ts
features: {{ article: article_id, dwell: dwell_s }}
---
kind: Ingestion
name: long_clicks
batch:
  files: {{ path: "{d}/clicks", format: parquet }}
  transform: >
    SELECT user_id, ts, upper(article_id) AS article, dwell_s * 2 AS dwell
    FROM source WHERE dwell_s >= 1
into: clicks
key: user_id
event_time: ts
features: {{ article: article, dwell: dwell }}
---
kind: Ingestion
name: engagement_daily
batch:
  files: {{ path: "{d}/clicks/*.csv" }}
  transform: >
    SELECT user_id, max(CAST(ts AS BIGINT)) AS ts, count(*) AS clicks,
           avg(CAST(dwell_s AS DOUBLE)) AS mean_dwell,
           last_value(article_id ORDER BY CAST(ts AS BIGINT)) AS last_article
    FROM source GROUP BY user_id
into: engagement
key: user_id
event_time: ts
features: {{ clicks: clicks, mean_dwell: mean_dwell, last_article: last_article }}
---
kind: Ingestion
name: placements
batch: {{ files: {{ path: "{d}/placements.csv" }} }}
into: placement_stats
key: [site, slot]
features: {{ ctr: ctr, views: views }}
"#
    );
    cellar_spec::parse_repo(&[("repo.yaml".into(), text)]).unwrap_or_else(|e| panic!("{e}"))
}

pub fn job(dir: &Path, ingestion: &str) -> BatchJob {
    BatchJob::from_repo(&repo(dir), ingestion, 1_000).unwrap()
}

/// Plans `job` on a blocking thread, as a runtime's caller must.
pub async fn plan_blocking(job: &Arc<BatchJob>) -> Result<Plan, BatchError> {
    let job = Arc::clone(job);
    tokio::task::spawn_blocking(move || cellar_ingest_batch::plan(&job))
        .await
        .unwrap()
}

/// Writes `batches` as one Parquet file, a row group every `rows_per_group` rows.
pub fn write_parquet(path: &Path, batches: &[RecordBatch], rows_per_group: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(rows_per_group))
        .build();
    let mut writer = ArrowWriter::try_new(file, batches[0].schema(), Some(props)).unwrap();
    for b in batches {
        writer.write(b).unwrap();
    }
    writer.close().unwrap();
}

pub fn write_text(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Event time of the first click of [`click_files`] and [`click_csv`].
pub const CLICKS_TS: i64 = 1_700_000_000_000;

/// Click `i` of a log of `users` users: user, event time, article and dwell time.
pub fn click(i: usize, users: usize) -> (String, i64, String, f64) {
    (
        format!("u{}", i % users),
        CLICKS_TS + i as i64,
        format!("a{i}"),
        i as f64 / 10.0,
    )
}

/// `rows` clicks of `users` users, in `files` Parquet files `clicks/part-N.parquet` under
/// `dir` with row groups of `group` rows.
pub fn click_files(dir: &Path, rows: usize, users: usize, files: usize, group: usize) {
    let per_file = rows / files;
    for f in 0..files {
        let clicks: Vec<_> = (f * per_file..(f + 1) * per_file)
            .map(|i| click(i, users))
            .collect();
        let batch = RecordBatch::try_from_iter(vec![
            (
                "user_id",
                Arc::new(StringArray::from_iter_values(clicks.iter().map(|c| &c.0))) as ArrayRef,
            ),
            (
                "ts",
                Arc::new(Int64Array::from_iter_values(clicks.iter().map(|c| c.1))),
            ),
            (
                "article_id",
                Arc::new(StringArray::from_iter_values(clicks.iter().map(|c| &c.2))),
            ),
            (
                "dwell_s",
                Arc::new(Float64Array::from_iter_values(clicks.iter().map(|c| c.3))),
            ),
        ])
        .unwrap();
        write_parquet(
            &dir.join(format!("clicks/part-{f}.parquet")),
            &[batch],
            group,
        );
    }
}

/// The clicks of [`click_files`] as one CSV text, header first.
pub fn click_csv(rows: usize, users: usize) -> String {
    let mut text = String::from("user_id,ts,article_id,dwell_s\n");
    for i in 0..rows {
        let (user, ts, article, dwell) = click(i, users);
        text.push_str(&format!("{user},{ts},{article},{dwell}\n"));
    }
    text
}

/// Checks that every one of `rows` clicks is in `store`, each once: each user's series holds
/// its clicks, newest first.
pub async fn assert_clicks(store: &EmbeddedStore, job: &BatchJob, rows: usize, users: usize) {
    let names: Vec<String> = (0..users).map(|u| format!("u{u}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let stored = series(store, job, &keys(&names)).await;
    for (u, records) in stored.iter().enumerate() {
        assert_eq!(records.len(), rows / users, "user u{u}");
        for (k, record) in records.iter().enumerate() {
            let (_, ts, article, dwell) = click(u + users * (rows / users - 1 - k), users);
            assert_eq!(
                record,
                &Record::new(ts, vec![Value::String(article), Value::Float64(dwell)])
            );
        }
    }
}

/// Row count of every Parquet file given.
pub fn parquet_rows(path: &Path) -> usize {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let _ = reader.schema();
    reader.map(|b| b.unwrap().num_rows()).sum()
}

/// An embedded store in `dir` and the write path over it (no cache tier).
pub fn store(dir: &Path) -> (Arc<EmbeddedStore>, Arc<WritePath>) {
    let store = Arc::new(EmbeddedStore::open(dir.join("store")).unwrap());
    let path = Arc::new(WritePath::new(
        Arc::clone(&store) as Arc<dyn OnlineStore>,
        None,
    ));
    (store, path)
}

pub fn memory_rejects() -> (Arc<MemoryRejects>, Arc<dyn Rejects>) {
    let m = Arc::new(MemoryRejects::default());
    let r: Arc<dyn Rejects> = m.clone();
    (m, r)
}

pub fn keys(names: &[&str]) -> Vec<EntityKey> {
    names.iter().map(|n| EntityKey((*n).to_owned())).collect()
}

/// The attribute records of `entities` in `group`.
pub async fn attributes(
    store: &EmbeddedStore,
    job: &BatchJob,
    entities: &[EntityKey],
) -> Vec<Option<Record>> {
    store.get_attributes(&job.group, entities).await.unwrap()
}

/// Every record of each entity's series, newest first.
pub async fn series(
    store: &EmbeddedStore,
    job: &BatchJob,
    entities: &[EntityKey],
) -> Vec<Vec<Record>> {
    let query = TimeseriesQuery {
        top_n: usize::MAX,
        since: None,
    };
    store
        .scan_timeseries(&job.group, entities, query)
        .await
        .unwrap()
}

/// The address of a service a test needs, from `var`. Such tests are ignored by a plain
/// `cargo test`; asked for (`--include-ignored`) without their service, they fail: passing would
/// claim a test that never ran.
pub fn service_address(var: &str, service: &str) -> String {
    match std::env::var(var) {
        Ok(address) if !address.is_empty() => address,
        _ => panic!("{var} is not set: this test needs {service}; scripts/test.sh starts it"),
    }
}
