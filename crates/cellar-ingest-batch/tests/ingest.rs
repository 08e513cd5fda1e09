//! Batch jobs end to end into the embedded store: every feature type from Parquet and CSV,
//! rejected rows with their reasons, the reject ratio, redone shards, partial ingestions, and
//! a 100k-row job read back row by row.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow_array::builder::{
    FixedSizeListBuilder, Float32Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use cellar_ingest_batch::{
    plan, run_shard, BatchError, JobOptions, LocalRunner, Progress, RejectFile, Rejects,
};
use cellar_spec::{Parallelism, Value};
use cellar_store::Record;
use common::*;

const TS: i64 = 1_700_000_000_000;

fn profile_batch() -> RecordBatch {
    let mut tags = ListBuilder::new(StringBuilder::new());
    tags.values().append_value("b");
    tags.values().append_value("a");
    tags.append(true);
    tags.append(false);
    let mut topics = ListBuilder::new(Int64Builder::new());
    topics.values().append_value(3);
    topics.values().append_value(1);
    topics.values().append_value(3);
    topics.append(true);
    topics.append(true);
    let mut embedding = FixedSizeListBuilder::new(Float32Builder::new(), 2);
    embedding.values().append_value(0.5);
    embedding.values().append_value(-1.0);
    embedding.append(true);
    embedding.values().append_null();
    embedding.values().append_null();
    embedding.append(false);
    RecordBatch::try_from_iter(vec![
        (
            "user_id",
            Arc::new(StringArray::from(vec!["u1", "u2"])) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(
                TimestampMicrosecondArray::from(vec![TS * 1000, TS * 1000 + 1_000])
                    .with_timezone("UTC"),
            ),
        ),
        (
            "country",
            Arc::new(StringArray::from(vec![Some("KR"), None])),
        ),
        ("age", Arc::new(Int32Array::from(vec![31, 40]))),
        ("score", Arc::new(Float64Array::from(vec![0.25, 1.0]))),
        ("active", Arc::new(BooleanArray::from(vec![true, false]))),
        ("signup", Arc::new(Int64Array::from(vec![TS - 5, TS - 6]))),
        ("tags", Arc::new(tags.finish())),
        ("topics", Arc::new(topics.finish())),
        ("embedding", Arc::new(embedding.finish())),
        (
            "avatar",
            Arc::new(BinaryArray::from(vec![&b"\x00\x01"[..], &b""[..]])),
        ),
        ("unused", Arc::new(Int64Array::from(vec![0, 0]))),
    ])
    .unwrap()
}

fn u1_profile() -> Record {
    Record::new(
        TS,
        vec![
            Value::String("KR".into()),
            Value::Int64(31),
            Value::Float64(0.25),
            Value::Bool(true),
            Value::Timestamp(TS - 5),
            Value::List(vec![Value::String("b".into()), Value::String("a".into())]),
            Value::Set(vec![Value::Int64(1), Value::Int64(3)]),
            Value::Vector(vec![0.5, -1.0]),
            Value::Bytes(vec![0, 1]),
        ],
    )
}

#[tokio::test]
async fn every_feature_type_maps_from_parquet_columns() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(
        &dir.path().join("profiles/a.parquet"),
        &[profile_batch()],
        10,
    );
    let job = Arc::new(job(dir.path(), "profiles_parquet"));
    let (store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let plan = plan(&job).unwrap();
    let report = run_shard(&plan.shards[0], &job, &*sink, &rejects)
        .await
        .unwrap();
    assert!(rejected.rejects().is_empty(), "{:?}", rejected.rejects());
    assert_eq!((report.rows_read, report.rows_written), (2, 2));
    let got = attributes(&store, &job, &keys(&["u1", "u2"])).await;
    assert_eq!(got[0], Some(u1_profile()));
    let u2 = got[1].as_ref().unwrap();
    assert_eq!(u2.event_time, TS + 1);
    assert_eq!(u2.values[0], Value::Null);
    assert_eq!(u2.values[5], Value::Null);
    assert_eq!(u2.values[6], Value::Set(Vec::new()));
    assert_eq!(u2.values[7], Value::Null);
    assert_eq!(u2.values[8], Value::Bytes(Vec::new()));
}

#[tokio::test]
async fn every_feature_type_maps_from_csv_text() {
    let dir = tempfile::tempdir().unwrap();
    write_text(
        &dir.path().join("profiles/a.csv"),
        "user_id,ts,country,age,score,active,signup,tags,topics,embedding,avatar\n\
         u1,2023-11-14T22:13:20Z,KR,31,0.25,true,1699999999995,\"[\"\"b\"\",\"\"a\"\"]\",\"[3,1,3]\",\"[0.5,-1]\",AAE=\n\
         u2,1700000000001,,40,1,FALSE,2023-11-14T22:13:19.994Z,,[],,\n",
    );
    let job = Arc::new(job(dir.path(), "profiles_csv"));
    let (store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let plan = plan(&job).unwrap();
    let report = run_shard(&plan.shards[0], &job, &*sink, &rejects)
        .await
        .unwrap();
    assert!(rejected.rejects().is_empty(), "{:?}", rejected.rejects());
    assert_eq!(report.rows_written, 2);
    let got = attributes(&store, &job, &keys(&["u1", "u2"])).await;
    assert_eq!(got[0], Some(u1_profile()));
    let u2 = got[1].as_ref().unwrap();
    assert_eq!(u2.event_time, TS + 1);
    assert_eq!(
        u2.values,
        vec![
            Value::Null,
            Value::Int64(40),
            Value::Float64(1.0),
            Value::Bool(false),
            Value::Timestamp(TS - 6),
            Value::Null,
            Value::Set(Vec::new()),
            Value::Null,
            Value::Null,
        ]
    );
}

const BAD_CSV: &str = "\
user_id,ts,country,age,score,active,signup,tags,topics,embedding,avatar
u1,1700000000005,KR,31,0.5,true,,,,,
,1700000000005,KR,31,0.5,true,,,,,
u3,yesterday,KR,31,0.5,true,,,,,
u4,1700000000005,KR,old,0.5,true,,,,,
u5,1700000000005,KR,31
u6,1700000000005,KR,31,0.5,maybe,,,,,
u7,1700000000005,KR,31,0.5,true,,,,\"[1,2,3]\",
u8,1700000000005,KR,31,0.5,true,,,,,
";

#[tokio::test]
async fn rows_that_do_not_fit_are_rejected_with_where_and_why() {
    let dir = tempfile::tempdir().unwrap();
    write_text(&dir.path().join("profiles/bad.csv"), BAD_CSV);
    let job = job(dir.path(), "profiles_csv").with_options(JobOptions {
        max_reject_ratio: 1.0,
        ..JobOptions::default()
    });
    let job = Arc::new(job);
    let (store, sink) = store(dir.path());
    let reject_path = dir.path().join("rejects.jsonl");
    let rejects: Arc<dyn Rejects> = Arc::new(RejectFile::create(&reject_path).unwrap());
    let plan = plan(&job).unwrap();
    let report = run_shard(&plan.shards[0], &job, &*sink, &rejects)
        .await
        .unwrap();
    assert_eq!(
        (report.rows_read, report.rows_written, report.rows_rejected),
        (8, 2, 6)
    );
    let got = attributes(&store, &job, &keys(&["u1", "u8", "u4"])).await;
    assert!(got[0].is_some() && got[1].is_some() && got[2].is_none());

    let file = dir.path().join("profiles/bad.csv").display().to_string();
    let rejects = RejectFile::read(&reject_path).unwrap();
    let found: Vec<(Option<u64>, Option<&str>, &str)> = rejects
        .iter()
        .map(|r| (r.line, r.column.as_deref(), r.reason.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (Some(6), None, "the line has 4 fields, the header 11"),
            (Some(3), Some("user_id"), "key `user_id` is null"),
            (
                Some(4),
                Some("ts"),
                "event_time `ts`: expected a timestamp, epoch milliseconds or RFC 3339 text, \
                 got the text \"yesterday\""
            ),
            (
                Some(5),
                Some("age"),
                "feature `age` (`age`): expected int64, got the text \"old\""
            ),
            (
                Some(7),
                Some("active"),
                "feature `active` (`active`): expected bool, got the text \"maybe\""
            ),
            (
                Some(8),
                Some("embedding"),
                "feature `embedding` (`embedding`): expected 2 numbers, got 3 elements"
            ),
        ]
    );
    let byte_of = |line: usize| {
        BAD_CSV
            .lines()
            .take(line - 1)
            .map(|l| l.len() as u64 + 1)
            .sum()
    };
    for r in &rejects {
        assert_eq!(r.file, file);
        assert_eq!(r.ingestion, "profiles_csv");
        assert_eq!(r.byte, Some(byte_of(r.line.unwrap() as usize)), "{r:?}");
    }
}

#[tokio::test]
async fn rows_with_keys_or_event_times_no_store_can_hold_are_rejected_alone() {
    let dir = tempfile::tempdir().unwrap();
    let long = "k".repeat(2000);
    write_text(
        &dir.path().join("profiles/odd.csv"),
        &format!(
            "user_id,ts,country,age,score,active,signup,tags,topics,embedding,avatar\n\
             u1,{TS},KR,31,0.5,true,,,,,\n\
             u2,9223372036854775807,KR,31,0.5,true,,,,,\n\
             {long},{TS},KR,31,0.5,true,,,,,\n\
             u4,1700000000,KR,31,0.5,true,,,,,\n\
             u5,{TS},KR,31,0.5,true,,,,,\n"
        ),
    );
    let job = Arc::new(job(dir.path(), "profiles_csv").with_options(JobOptions {
        max_reject_ratio: 1.0,
        ..JobOptions::default()
    }));
    let (store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let report = run_shard(&plan(&job).unwrap().shards[0], &job, &*sink, &rejects)
        .await
        .unwrap();
    assert_eq!((report.rows_written, report.rows_rejected), (2, 3));
    let got = attributes(&store, &job, &keys(&["u1", "u2", "u4", "u5"])).await;
    let stored: Vec<bool> = got.iter().map(Option::is_some).collect();
    assert_eq!(stored, [true, false, false, true]);
    let rejects = rejected.rejects();
    let found: Vec<(Option<u64>, Option<&str>, &str)> = rejects
        .iter()
        .map(|r| (r.line, r.column.as_deref(), r.reason.as_str()))
        .collect();
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!((found[0].0, found[0].1), (Some(3), Some("ts")));
    assert!(
        found[0].2.starts_with(
            "event_time `ts`: 9223372036854775807 is outside the accepted event times, \
             from 2000-01-01T00:00:00Z to 1d after now"
        ),
        "{}",
        found[0].2
    );
    assert_eq!(
        found[1],
        (
            Some(4),
            Some("user_id"),
            "key: the key of entity `user` is 2000 bytes, over the limit of 1024 bytes"
        )
    );
    // Seconds sent as milliseconds: early in 1970.
    assert_eq!((found[2].0, found[2].1), (Some(5), Some("ts")));
    assert!(
        found[2]
            .2
            .starts_with("event_time `ts`: 1970-01-20T16:13:20Z is outside"),
        "{}",
        found[2].2
    );
}

#[tokio::test]
async fn a_shard_past_the_reject_ratio_fails_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    write_text(&dir.path().join("profiles/bad.csv"), BAD_CSV);
    let job = Arc::new(job(dir.path(), "profiles_csv").with_options(JobOptions {
        max_reject_ratio: 0.5,
        ..JobOptions::default()
    }));
    let (_store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let plan = plan(&job).unwrap();
    let err = run_shard(&plan.shards[0], &job, &*sink, &rejects)
        .await
        .unwrap_err();
    assert!(matches!(err, BatchError::TooManyRejects { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "shard 0 rejected 6 of 8 rows, over the limit of 50%: see the reject file for each \
         row's reason"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        rejected.rejects().len(),
        6,
        "the rejects are kept all the same"
    );
}

#[tokio::test]
async fn a_shard_run_twice_leaves_the_store_as_one_run_does() {
    let dir = tempfile::tempdir().unwrap();
    click_files(dir.path(), 5_000, 50, 1, 1_000);
    let mut profiles =
        String::from("user_id,ts,country,age,score,active,signup,tags,topics,embedding,avatar\n");
    for u in 0..50 {
        profiles.push_str(&format!("u{u},{},C{u},{u},0.5,true,,,,,\n", TS + u));
    }
    write_text(&dir.path().join("profiles/p.csv"), &profiles);
    let (store, sink) = store(dir.path());
    let (_, rejects) = memory_rejects();
    let users: Vec<String> = (0..50).map(|u| format!("u{u}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();

    // A time series: the second run replaces each record with itself.
    let clicks = Arc::new(job(dir.path(), "click_log"));
    let shard = &plan(&clicks).unwrap().shards[0];
    let first = run_shard(shard, &clicks, &*sink, &rejects).await.unwrap();
    let after_one = series(&store, &clicks, &keys(&users)).await;
    let second = run_shard(shard, &clicks, &*sink, &rejects).await.unwrap();
    assert_eq!(series(&store, &clicks, &keys(&users)).await, after_one);
    assert_eq!((first.rows_written, second.rows_read), (5_000, 5_000));
    assert_eq!(after_one.iter().map(Vec::len).sum::<usize>(), 5_000);

    // Attributes: every put of the second run is stale.
    let profile = Arc::new(job(dir.path(), "profiles_csv"));
    let shard = &plan(&profile).unwrap().shards[0];
    let first = run_shard(shard, &profile, &*sink, &rejects).await.unwrap();
    let after_one = attributes(&store, &profile, &keys(&users)).await;
    let second = run_shard(shard, &profile, &*sink, &rejects).await.unwrap();
    assert_eq!(attributes(&store, &profile, &keys(&users)).await, after_one);
    assert_eq!((first.rows_written, first.rows_stale), (50, 0));
    assert_eq!((second.rows_written, second.rows_stale), (0, 50));
}

#[tokio::test]
async fn a_partial_ingestion_sets_its_features_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(
        &dir.path().join("profiles/a.parquet"),
        &[profile_batch()],
        10,
    );
    write_text(
        &dir.path().join("countries/c.csv"),
        &format!(
            "user_id,ts,country\nu1,{},NZ\nu2,{},JP\nu3,{},FR\n",
            TS + 10,
            TS - 10,
            TS
        ),
    );
    let (store, sink) = store(dir.path());
    let (_, rejects) = memory_rejects();
    let profiles = Arc::new(job(dir.path(), "profiles_parquet"));
    run_shard(
        &plan(&profiles).unwrap().shards[0],
        &profiles,
        &*sink,
        &rejects,
    )
    .await
    .unwrap();
    let countries = Arc::new(job(dir.path(), "countries"));
    assert_eq!(countries.mode, cellar_ingest_batch::WriteMode::Merge);
    let shard = &plan(&countries).unwrap().shards[0];
    let first = run_shard(shard, &countries, &*sink, &rejects)
        .await
        .unwrap();
    assert_eq!(
        (first.rows_written, first.rows_stale),
        (2, 1),
        "u2's row is older"
    );
    let got = attributes(&store, &countries, &keys(&["u1", "u2", "u3"])).await;
    let mut u1 = u1_profile();
    u1.values[0] = Value::String("NZ".into());
    u1.event_time = TS + 10;
    assert_eq!(got[0], Some(u1));
    assert_eq!(
        got[1].as_ref().unwrap().values[0],
        Value::Null,
        "older row not applied"
    );
    assert_eq!(
        got[2].as_ref().unwrap().values[0],
        Value::String("FR".into())
    );
    let again = run_shard(shard, &countries, &*sink, &rejects)
        .await
        .unwrap();
    assert_eq!((again.rows_written, again.rows_stale), (0, 3));
    assert_eq!(
        attributes(&store, &countries, &keys(&["u1", "u2", "u3"])).await,
        got
    );
}

#[tokio::test]
async fn a_100k_row_job_is_written_whole_and_reported_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    const ROWS: usize = 100_000;
    const USERS: usize = 1_000;
    click_files(dir.path(), ROWS, USERS, 4, 7_000);
    let mut job = job(dir.path(), "click_log");
    job.parallelism = Parallelism::Fixed(6);
    let job = Arc::new(job);
    let plan = plan_blocking(&job).await.unwrap();
    assert_eq!(plan.shards.len(), 6);
    assert_eq!(plan.rows, ROWS as u64);
    let (store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let calls = Arc::new(AtomicU64::new(0));
    let progress = {
        let (seen, calls) = (Arc::clone(&seen), Arc::clone(&calls));
        Arc::new(move |p: Progress| {
            calls.fetch_add(1, Ordering::Relaxed);
            seen.lock().unwrap().push(p);
        })
    };
    let report = LocalRunner::new(2)
        .run(Arc::clone(&job), &plan, sink, rejects, progress)
        .await;
    assert!(
        report.succeeded(),
        "{:?}",
        report.failures().collect::<Vec<_>>()
    );
    assert!(rejected.rejects().is_empty());
    assert_eq!(
        (report.rows_read, report.rows_written),
        (ROWS as u64, ROWS as u64)
    );

    // Workers report concurrently, so reports may arrive a little out of order; the furthest
    // one is the whole job.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let done = seen.iter().map(|p| p.rows_done).max().unwrap();
    let shards_done = seen.iter().map(|p| p.shards_done).max().unwrap();
    assert_eq!((done, seen[0].rows_total), (ROWS as u64, ROWS as u64));
    assert_eq!((shards_done, seen[0].shards_total), (6, 6));
    assert!(seen[0].rows_total_exact);
    // One report per store write (of at most `write_rows` rows, from one file) and one per
    // shard.
    let write_rows = JobOptions::default().write_rows;
    assert!(calls.load(Ordering::Relaxed) >= (ROWS / write_rows + 6) as u64);

    // Every row is in the store: each user's series holds its clicks, newest first.
    assert_clicks(&store, &job, ROWS, USERS).await;
}

#[tokio::test]
async fn a_merge_that_would_outgrow_the_record_limit_is_rejected_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let text = format!(
        r#"
kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: notes
entity: user
type: attribute
features:
  - {{ name: short, type: string }}
  - {{ name: long, type: string }}
max_record_bytes: 64
---
kind: Ingestion
name: longs
batch: {{ files: {{ path: "{d}/longs.csv" }} }}
into: notes
key: user_id
event_time: ts
features: {{ long: long }}
---
kind: Ingestion
name: shorts
batch: {{ files: {{ path: "{d}/shorts.csv" }} }}
into: notes
key: user_id
event_time: ts
features: {{ short: short }}
"#
    );
    let repo =
        cellar_spec::parse_repo(&[("r.yaml".into(), text)]).unwrap_or_else(|e| panic!("{e}"));
    let long = "x".repeat(40);
    write_text(
        &dir.path().join("longs.csv"),
        &format!("user_id,ts,long\nu1,{TS},{long}\nu2,{TS},x\n"),
    );
    write_text(
        &dir.path().join("shorts.csv"),
        &format!("user_id,ts,short\nu1,{},{long}\nu2,{},y\n", TS + 1, TS + 1),
    );
    let (store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    for name in ["longs", "shorts"] {
        let job = Arc::new(
            cellar_ingest_batch::BatchJob::from_repo(&repo, name, 0)
                .unwrap()
                .with_options(JobOptions {
                    max_reject_ratio: 1.0,
                    ..JobOptions::default()
                }),
        );
        let report = run_shard(&plan(&job).unwrap().shards[0], &job, &*sink, &rejects)
            .await
            .unwrap();
        if name == "shorts" {
            assert_eq!((report.rows_written, report.rows_rejected), (1, 1));
            let got = attributes(&store, &job, &keys(&["u1", "u2"])).await;
            assert_eq!(
                got[0].as_ref().unwrap().values[0],
                Value::Null,
                "u1 kept as it was"
            );
            assert_eq!(
                got[1].as_ref().unwrap().values[0],
                Value::String("y".into())
            );
        }
    }
    let rejects = rejected.rejects();
    assert_eq!(rejects.len(), 1);
    assert_eq!(rejects[0].line, Some(2));
    assert_eq!(
        rejects[0].reason,
        "record for entity `u1` of group `notes` would be 94 bytes once merged, over the limit \
         of 64 bytes"
    );
}
