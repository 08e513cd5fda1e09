//! Helpers shared by the integration tests: a feature repo, Parquet and CSV files written into
//! temporary directories, and an embedded store behind the write path.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchReader};
use cellar_cache::WritePath;
use cellar_ingest_batch::{BatchJob, MemoryRejects, Rejects};
use cellar_spec::{EntityKey, FeatureRepo};
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
