//! Training sets against a deliberately naive reference: random histories (ties, late events,
//! records past `max_age` and `max_records`, several days and files) kept through the real
//! staging log and Parquet files, random spines over them, and for every spine row each
//! feature recomputed by scanning every record ever kept.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use cellar_cache::{History, Kept};
use cellar_history::{training_set, OfflineHistory, Progress, Selection, Storage, TrainingPlan};
use cellar_spec::{
    Entity, EntityKey, EntityKeyField, Feature, FeatureGroup, GroupKind, KeyType, Retention,
    ScalarType, Value, ValueType,
};
use cellar_store::Record;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const DAY: i64 = 86_400_000;
/// Event times fall on a few days (several files and date partitions) in a few distinct
/// instants each, so equal event times are common.
const START: i64 = 1_700_000_000_000 - 1_700_000_000_000 % DAY;

fn user() -> Entity {
    Entity {
        name: "user".into(),
        keys: vec![EntityKeyField {
            name: "user_id".into(),
            key_type: KeyType::String,
        }],
        description: None,
    }
}

fn group(name: &str, kind: GroupKind, retention: Retention) -> FeatureGroup {
    FeatureGroup {
        name: name.into(),
        entity: "user".into(),
        kind,
        features: vec![
            Feature::new("n", ValueType::Scalar(ScalarType::Int64)),
            Feature::new("s", ValueType::Scalar(ScalarType::String)),
        ],
        retention,
        serving: Default::default(),
        max_record_bytes: 1 << 20,
        freshness: None,
        push_sources: Vec::new(),
        description: None,
        generation: 0,
        previous: None,
    }
}

/// One record as kept, in the order it was kept.
#[derive(Debug, Clone)]
struct KeptRecord {
    entity: String,
    record: Record,
    applied: bool,
}

fn random_time(rng: &mut ChaCha8Rng) -> i64 {
    // Four days, ten instants an hour apart per day, and now and then any millisecond.
    let day = rng.random_range(0..4);
    if rng.random_bool(0.1) {
        return START + day * DAY + rng.random_range(0..DAY);
    }
    START + day * DAY + rng.random_range(0..10) * 3_600_000
}

/// Writes like the online store decides them: an attribute put is applied only when newer
/// than the stored record, an update (a read-modify-write) always; series records always.
fn random_history(rng: &mut ChaCha8Rng, kind: GroupKind, entities: usize) -> Vec<KeptRecord> {
    let mut stored: std::collections::HashMap<String, i64> = Default::default();
    let mut kept = Vec::new();
    for i in 0..rng.random_range(0..120) {
        let entity = format!("u{}", rng.random_range(0..entities));
        let record = Record::new(
            random_time(rng),
            vec![
                if rng.random_bool(0.1) {
                    Value::Null
                } else {
                    Value::Int64(i)
                },
                Value::String(format!("v{i}")),
            ],
        );
        let applied = match kind {
            GroupKind::Timeseries => true,
            GroupKind::Attribute if rng.random_bool(0.2) => true,
            GroupKind::Attribute => stored.get(&entity).is_none_or(|&t| record.event_time > t),
        };
        if applied {
            let t = stored.entry(entity.clone()).or_insert(i64::MIN);
            *t = (*t).max(record.event_time);
        }
        kept.push(KeptRecord {
            entity,
            record,
            applied,
        });
    }
    kept
}

/// The reference: every kept record of the row's entity scanned, the rules applied literally.
fn reference(
    kept: &[KeptRecord],
    group: &FeatureGroup,
    top_n: usize,
    entity: Option<&str>,
    at: i64,
) -> Vec<Value> {
    let features = group.features.len();
    let Some(entity) = entity else {
        return vec![Value::Null; features];
    };
    let age = group.retention.max_age.map(|d| d.as_millis() as i64);
    let candidates: Vec<(usize, &KeptRecord)> = kept
        .iter()
        .enumerate()
        .filter(|(_, k)| k.entity == entity && k.record.event_time <= at)
        .collect();
    match group.kind {
        GroupKind::Attribute => {
            let best = candidates
                .iter()
                .max_by_key(|(i, k)| (k.record.event_time, k.applied, *i));
            match best {
                Some((_, k)) if age.is_none_or(|a| k.record.event_time >= at - a) => {
                    k.record.values.clone()
                }
                _ => vec![Value::Null; features],
            }
        }
        GroupKind::Timeseries => {
            let mut times: Vec<i64> = candidates
                .iter()
                .map(|(_, k)| k.record.event_time)
                .filter(|&t| age.is_none_or(|a| t >= at - a))
                .collect();
            times.sort_unstable();
            times.dedup();
            times.reverse();
            let limit = group
                .retention
                .max_records
                .map_or(top_n, |m| top_n.min(m as usize));
            times.truncate(limit);
            if times.is_empty() {
                return vec![Value::Null; features];
            }
            let records: Vec<&Record> = times
                .iter()
                .map(|&t| {
                    // The last kept of one event time replaced the others.
                    &candidates
                        .iter()
                        .filter(|(_, k)| k.record.event_time == t)
                        .max_by_key(|(i, _)| *i)
                        .expect("a candidate has this time")
                        .1
                        .record
                })
                .collect();
            (0..features)
                .map(|f| Value::List(records.iter().map(|r| r.values[f].clone()).collect()))
                .collect()
        }
    }
}

fn spine(rng: &mut ChaCha8Rng, entities: usize) -> (RecordBatch, Vec<Option<String>>, Vec<i64>) {
    let rows = rng.random_range(0..40);
    let keys: Vec<Option<String>> = (0..rows)
        .map(|_| match rng.random_range(0..20) {
            0 => None,
            // Entities the history never saw.
            1 => Some(format!("x{}", rng.random_range(0..3))),
            _ => Some(format!("u{}", rng.random_range(0..entities))),
        })
        .collect();
    let times: Vec<i64> = (0..rows)
        .map(|_| match rng.random_range(0..10) {
            // Before anything, and exactly at a record's time.
            0 => START - rng.random_range(1..DAY),
            1..=4 => random_time(rng),
            _ => random_time(rng) + rng.random_range(-2_000_000..2_000_000),
        })
        .collect();
    let labels: Vec<i64> = (0..rows as i64).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, true),
        Field::new(
            "event_timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("label", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(keys.clone())) as ArrayRef,
            Arc::new(TimestampMillisecondArray::from(times.clone())),
            Arc::new(Int64Array::from(labels)),
        ],
    )
    .unwrap();
    (batch, keys, times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_sets_equal_a_naive_reference_over_random_histories_and_spines() {
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let mut spines = 0;
    let mut values_checked = 0usize;
    let mut non_null = 0usize;
    let mut merged_files = 0usize;
    let mut chunked_checks = 0usize;
    for case in 0..150 {
        let dir = tempfile::tempdir().unwrap();
        // Every other case keeps its history in a bucket (in memory): the same answers.
        let storage = if case % 2 == 0 {
            Storage::Local(dir.path().join("history"))
        } else {
            Storage::bucket(
                Arc::new(object_store::memory::InMemory::new()),
                "s3://bucket/history",
                Arc::new(|e| e.to_string()),
            )
        };
        // The converter only runs when asked: files are cut where the test flushes.
        let history = OfflineHistory::open(
            storage.clone(),
            dir.path().join("staging"),
            Duration::from_secs(3600),
        )
        .unwrap();
        let max_age = |rng: &mut ChaCha8Rng| match rng.random_range(0..3) {
            0 => None,
            1 => Some(Duration::from_secs(rng.random_range(1..8) * 3600)),
            _ => Some(Duration::from_secs(2 * 86_400)),
        };
        let attributes = group(
            "profile",
            GroupKind::Attribute,
            Retention {
                max_records: None,
                max_age: max_age(&mut rng),
                history: None,
            },
        );
        let series = group(
            "clicks",
            GroupKind::Timeseries,
            Retention {
                max_records: [None, Some(1), Some(3)][rng.random_range(0..3)],
                max_age: max_age(&mut rng),
                history: None,
            },
        );
        let entities = rng.random_range(1..6);
        // A third of the cases convert after every small write: many files per partition,
        // which compaction merges as they accumulate.
        let small_files = case % 3 == 0;
        let mut histories = Vec::new();
        for group in [&attributes, &series] {
            let kept = random_history(&mut rng, group.kind, entities);
            // Kept in a few writes, converted in a few runs.
            let mut at = 0;
            while at < kept.len() {
                let most = if small_files { 6 } else { 40 };
                let end = (at + rng.random_range(1..most)).min(kept.len());
                let keys: Vec<EntityKey> = kept[at..end]
                    .iter()
                    .map(|k| EntityKey(k.entity.clone()))
                    .collect();
                let rows: Vec<Kept> = kept[at..end]
                    .iter()
                    .zip(&keys)
                    .map(|(k, entity)| Kept {
                        entity,
                        record: &k.record,
                        applied: k.applied,
                    })
                    .collect();
                history.keep(group, &rows).await.unwrap();
                if small_files || rng.random_bool(0.3) {
                    history.flush().unwrap();
                }
                at = end;
            }
            histories.push(kept);
        }
        history.close().unwrap();
        merged_files += storage
            .list("")
            .unwrap()
            .iter()
            .filter(|key| key.rsplit('/').next().unwrap_or_default().contains("-m"))
            .count();
        for _ in 0..14 {
            let (batch, keys, times) = spine(&mut rng, entities);
            let top_n = rng.random_range(1..5);
            let selections: Vec<Selection> = [&attributes, &series]
                .into_iter()
                .map(|g| Selection {
                    group: g.clone(),
                    entity: user(),
                    features: vec!["n".into(), "s".into()],
                    top_n,
                })
                .collect();
            let plan = TrainingPlan::stored(selections);
            let out = training_set(
                &storage,
                &batch,
                "event_timestamp",
                &plan,
                &Progress::default(),
            )
            .unwrap();
            assert_eq!(out.num_rows(), batch.num_rows());
            // The same spine from a file, joined a few rows at a time, gives the same rows.
            if chunked_checks < 150 {
                chunked_checks += 1;
                let (spine_file, out_file) = (
                    dir.path().join("spine.parquet"),
                    dir.path().join("out.parquet"),
                );
                cellar_history::table::write_table(&spine_file, &batch).unwrap();
                let built = cellar_history::training_set_file(
                    &storage,
                    &spine_file,
                    &out_file,
                    "event_timestamp",
                    &plan,
                    &Progress::default(),
                    rng.random_range(1..40),
                )
                .unwrap();
                assert_eq!(built.rows, batch.num_rows());
                let chunked = cellar_history::table::read_table(&out_file).unwrap();
                assert_eq!(chunked.num_columns(), out.num_columns());
                for (a, b) in chunked.columns().iter().zip(out.columns()) {
                    assert_eq!(a.as_ref(), b.as_ref(), "joined in chunks");
                }
            }
            assert_eq!(
                out.column(2).as_ref(),
                batch.column(2).as_ref(),
                "labels pass through"
            );
            for (g, (group, kept)) in [&attributes, &series]
                .into_iter()
                .zip(&histories)
                .enumerate()
            {
                let expected: Vec<Vec<Value>> = keys
                    .iter()
                    .zip(&times)
                    .map(|(k, &t)| reference(kept, group, top_n, k.as_deref(), t))
                    .collect();
                for (f, feature) in group.features.iter().enumerate() {
                    let t = match group.kind {
                        GroupKind::Attribute => feature.value_type,
                        GroupKind::Timeseries => match feature.value_type {
                            ValueType::Scalar(s) => ValueType::List(s),
                            other => other,
                        },
                    };
                    let want = cellar_expr::arrow::column(t, expected.iter().map(|row| &row[f]));
                    let got = out
                        .column_by_name(&format!("{}__{}", group.name, feature.name))
                        .unwrap();
                    assert_eq!(
                        got.as_ref(),
                        want.as_ref(),
                        "case {case}, group {g} `{}`, feature `{}`\nspine keys {keys:?}\ntimes {times:?}\nhistory {kept:#?}",
                        group.name,
                        feature.name
                    );
                    values_checked += expected.len();
                    non_null += got.len() - got.null_count();
                }
            }
            spines += 1;
        }
    }
    assert_eq!(spines, 2100);
    assert!(merged_files > 0, "compaction never ran");
    // The comparison means something only if many answers are values, not nulls.
    assert!(
        non_null * 3 > values_checked,
        "{non_null} of {values_checked} values were non-null"
    );
}
