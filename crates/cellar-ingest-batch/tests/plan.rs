//! Planning real files: Parquet by row groups (and row ranges), CSV by byte ranges at line
//! starts, and shards that survive serialisation.

mod common;

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use cellar_ingest_batch::{plan_with, run_shard, BatchJob, Piece, PlanOptions};
use cellar_spec::Parallelism;
use common::*;

fn clicks(from: i64, rows: usize) -> RecordBatch {
    let ids: Vec<String> = (0..rows)
        .map(|i| format!("u{}", (from + i as i64) % 97))
        .collect();
    let ts: Vec<i64> = (0..rows).map(|i| CLICKS_TS + from + i as i64).collect();
    let articles: Vec<String> = (0..rows).map(|i| format!("a{}", from + i as i64)).collect();
    RecordBatch::try_from_iter(vec![
        ("user_id", Arc::new(StringArray::from(ids)) as ArrayRef),
        ("ts", Arc::new(Int64Array::from(ts))),
        ("article_id", Arc::new(StringArray::from(articles))),
        ("dwell_s", Arc::new(Int64Array::from(vec![3; rows]))),
    ])
    .unwrap()
}

/// Three files of 10 row groups of 1,000 rows each.
fn click_files(dir: &std::path::Path) {
    for f in 0..3 {
        let batch = clicks(f * 10_000, 10_000);
        write_parquet(
            &dir.join(format!("clicks/part-{f}.parquet")),
            &[batch],
            1_000,
        );
    }
    // Left out of the listing: writers' markers.
    write_text(&dir.join("clicks/_SUCCESS"), "");
}

fn small_targets() -> PlanOptions {
    PlanOptions {
        target_rows: 4_000,
        min_piece_rows: 100,
        ..PlanOptions::default()
    }
}

#[test]
fn parquet_is_planned_by_row_groups_from_the_footers() {
    let dir = tempfile::tempdir().unwrap();
    click_files(dir.path());
    let job = job(dir.path(), "click_log");
    let plan = plan_with(&job, &small_targets()).unwrap();
    assert_eq!(plan.files, 3);
    assert_eq!(plan.rows, 30_000);
    assert!(plan.rows_exact);
    // 30,000 rows at about 4,000 per shard: 8 shards of whole row groups, even to one group.
    assert_eq!(plan.shards.len(), 8);
    for shard in &plan.shards {
        assert!((3_000..=4_000).contains(&shard.rows), "{}", shard.rows);
        for piece in &shard.pieces {
            let Piece::Parquet { offset, rows, .. } = piece else {
                panic!("parquet pieces")
            };
            assert_eq!((*offset, *rows), (0, 1_000), "row groups are not split");
        }
    }
    let mut groups: Vec<(String, usize)> = plan
        .shards
        .iter()
        .flat_map(|s| &s.pieces)
        .map(|p| match p {
            Piece::Parquet {
                file, row_group, ..
            } => (file.clone(), *row_group),
            _ => unreachable!(),
        })
        .collect();
    groups.sort();
    groups.dedup();
    assert_eq!(groups.len(), 30, "every row group in exactly one shard");
    // The default target (256k rows) keeps 30k rows in one shard.
    assert_eq!(
        plan_with(&job, &PlanOptions::default())
            .unwrap()
            .shards
            .len(),
        1
    );
}

#[test]
fn a_fixed_parallelism_splits_row_groups_into_row_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let batch = clicks(0, 10_000);
    write_parquet(&dir.path().join("clicks/one.parquet"), &[batch], 10_000);
    let mut job = job(dir.path(), "click_log");
    job.parallelism = Parallelism::Fixed(4);
    let plan = plan_with(&job, &small_targets()).unwrap();
    let ranges: Vec<(u64, u64, u64)> = plan
        .shards
        .iter()
        .flat_map(|s| &s.pieces)
        .map(|p| match p {
            Piece::Parquet {
                group_first_row,
                offset,
                rows,
                ..
            } => (*group_first_row, *offset, *rows),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        ranges,
        vec![
            (0, 0, 2_500),
            (0, 2_500, 2_500),
            (0, 5_000, 2_500),
            (0, 7_500, 2_500)
        ]
    );
    // Fewer pieces than asked for: one shard per piece, never empty shards.
    job.parallelism = Parallelism::Fixed(1000);
    let plan = plan_with(&job, &small_targets()).unwrap();
    assert_eq!(
        plan.shards.len(),
        100,
        "10,000 rows in pieces of at least 100"
    );
}

#[tokio::test]
async fn row_ranges_read_exactly_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    write_parquet(
        &dir.path().join("clicks/one.parquet"),
        &[clicks(0, 10_000)],
        3_000,
    );
    let mut job = job(dir.path(), "click_log");
    job.parallelism = Parallelism::Fixed(7);
    let plan = plan_with(&job, &small_targets()).unwrap();
    assert_eq!(plan.shards.len(), 7);
    let job = Arc::new(job);
    let (store, sink) = store(dir.path());
    let (_, rejects) = memory_rejects();
    let mut read = 0;
    for shard in &plan.shards {
        read += run_shard(shard, &job, &*sink, &rejects)
            .await
            .unwrap()
            .rows_read;
    }
    assert_eq!(read, 10_000);
    // Every click is in its user's series once: 10,000 distinct event times over 97 users.
    let users: Vec<String> = (0..97).map(|u| format!("u{u}")).collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let stored: usize = series(&store, &job, &keys(&users))
        .await
        .iter()
        .map(Vec::len)
        .sum();
    assert_eq!(stored, 10_000);
}

fn csv_lines(rows: usize) -> String {
    let mut text = String::from("site,slot,ctr,views\n");
    for i in 0..rows {
        // Fixed width, so the row estimate from the first lines holds; zero-padded slots are
        // still the integers they spell.
        text.push_str(&format!("s{:02},{:06},0.{},{:06}\n", i % 13, i, i % 10, i));
    }
    text
}

#[tokio::test]
async fn csv_files_split_at_line_starts_and_every_line_is_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = csv_lines(50_000);
    write_text(&dir.path().join("placements.csv"), &text);
    let mut job = job(dir.path(), "placements");
    job.parallelism = Parallelism::Fixed(6);
    let options = PlanOptions {
        min_piece_bytes: 10_000,
        ..PlanOptions::default()
    };
    let plan = plan_with(&job, &options).unwrap();
    assert!(!plan.rows_exact);
    assert_eq!(plan.shards.len(), 6);
    let bytes = text.as_bytes();
    let mut next = 0;
    for shard in &plan.shards {
        let [Piece::Csv { start, end, .. }] = shard.pieces.as_slice() else {
            panic!("one range per shard: {:?}", shard.pieces)
        };
        assert_eq!(*start, next, "ranges are contiguous");
        assert!(
            *start == 0 || bytes[*start as usize - 1] == b'\n',
            "starts at a line"
        );
        next = *end;
    }
    assert_eq!(next, bytes.len() as u64);
    // The estimate from the first 64 KiB is close: lines here are of similar length.
    assert!((49_000..=51_000).contains(&plan.rows), "{}", plan.rows);

    let job = Arc::new(job);
    let (store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let mut read = 0;
    for shard in &plan.shards {
        let report = run_shard(shard, &job, &*sink, &rejects).await.unwrap();
        read += report.rows_read;
        assert_eq!(report.rows_written, report.rows_read);
    }
    assert!(rejected.rejects().is_empty(), "{:?}", rejected.rejects());
    assert_eq!(read, 50_000);
    let key = |i: usize| {
        job.entity
            .key_from_json(&[
                &serde_json::json!(format!("s{:02}", i % 13)),
                &serde_json::json!(i),
            ])
            .unwrap()
    };
    let entities: Vec<_> = [0, 12_345, 49_999].into_iter().map(key).collect();
    let got = attributes(&store, &job, &entities).await;
    let views: Vec<_> = got
        .iter()
        .map(|r| r.as_ref().unwrap().values[1].clone())
        .collect();
    assert_eq!(
        views,
        vec![
            cellar_spec::Value::Int64(0),
            cellar_spec::Value::Int64(12_345),
            cellar_spec::Value::Int64(49_999)
        ]
    );
    // No event_time column: every record carries the job's run time.
    assert!(got.iter().all(|r| r.as_ref().unwrap().event_time == 1_000));
}

#[test]
fn csv_files_stay_whole_when_splitting_is_off() {
    let dir = tempfile::tempdir().unwrap();
    write_text(&dir.path().join("placements.csv"), &csv_lines(50_000));
    let mut job: BatchJob = job(dir.path(), "placements");
    job.parallelism = Parallelism::Fixed(6);
    let options = PlanOptions {
        min_piece_bytes: 10_000,
        split_csv: false,
        ..PlanOptions::default()
    };
    let plan = plan_with(&job, &options).unwrap();
    assert_eq!(plan.shards.len(), 1);
}

#[test]
fn shards_survive_serialisation_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    click_files(dir.path());
    let job = job(dir.path(), "click_log");
    let plan = plan_with(&job, &small_targets()).unwrap();
    let json = serde_json::to_string(&plan.shards[0]).unwrap();
    assert!(json.contains("\"format\":\"parquet\""), "{json}");
    let back: cellar_ingest_batch::Shard = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan.shards[0]);

    let empty = tempfile::tempdir().unwrap();
    let err = cellar_ingest_batch::plan(&common::job(empty.path(), "click_log")).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("clicks: No such file or directory (os error 2)"),
        "{err}"
    );
    let err =
        cellar_ingest_batch::plan(&common::job(empty.path(), "profiles_parquet")).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("profiles/*.parquet: no files match"),
        "{err}"
    );
}
