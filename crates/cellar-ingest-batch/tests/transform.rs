//! SQL transforms end to end into the embedded store: a row-by-row query sharded like any job,
//! an aggregate over the whole input in one shard read in parallel partitions (with a
//! malformed CSV line still rejected by its place), and the errors a transform can meet.

mod common;

use std::sync::Arc;

use cellar_ingest_batch::{run_shard, BatchError, BatchJob, JobOptions, LocalRunner};
use cellar_spec::{IngestionSource, Parallelism, Value};
use cellar_store::Record;
use common::*;

/// The job of ingestion `name` with its transform replaced by `sql`.
fn with_sql(dir: &std::path::Path, name: &str, sql: &str) -> Result<BatchJob, BatchError> {
    let repo = repo(dir);
    let mut ingestion = repo.ingestion(name).unwrap().clone();
    let IngestionSource::Batch(batch) = &mut ingestion.source else {
        panic!("{name} is a batch ingestion");
    };
    batch.transform = Some(sql.to_owned());
    let group = repo.group(&ingestion.into).unwrap();
    BatchJob::new(
        &ingestion,
        group,
        repo.entity(&group.entity).unwrap(),
        1_000,
    )
}

#[tokio::test]
async fn a_row_by_row_transform_is_sharded_and_its_rows_mapped() {
    let dir = tempfile::tempdir().unwrap();
    const ROWS: usize = 20_000;
    const USERS: usize = 100;
    click_files(dir.path(), ROWS, USERS, 2, 2_000);
    let mut job = job(dir.path(), "long_clicks");
    job.parallelism = Parallelism::Fixed(4);
    let job = Arc::new(job);
    let plan = plan_blocking(&job).await.unwrap();
    assert_eq!(
        plan.shards.len(),
        4,
        "a filter and projections run per shard"
    );

    let (store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let report = LocalRunner::new(2)
        .run(Arc::clone(&job), &plan, sink, rejects, Arc::new(|_| {}))
        .await;
    assert!(
        report.succeeded(),
        "{:?}",
        report.failures().collect::<Vec<_>>()
    );
    assert!(rejected.rejects().is_empty());
    // Clicks 0..10 dwell under a second and are filtered out.
    let kept = (ROWS - 10) as u64;
    assert_eq!((report.rows_read, report.rows_written), (kept, kept));

    let names: Vec<String> = (0..USERS).map(|u| format!("u{u}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let stored = series(&store, &job, &keys(&names)).await;
    for (u, records) in stored.iter().enumerate() {
        let expected: Vec<Record> = (u..ROWS)
            .step_by(USERS)
            .rev()
            .filter(|i| *i >= 10)
            .map(|i| {
                let (_, ts, article, dwell) = click(i, USERS);
                Record::new(
                    ts,
                    vec![
                        Value::String(article.to_uppercase()),
                        Value::Float64(dwell * 2.0),
                    ],
                )
            })
            .collect();
        assert_eq!(records, &expected, "user u{u}");
    }
}

#[tokio::test]
async fn an_aggregate_runs_over_the_whole_input_in_one_shard() {
    let dir = tempfile::tempdir().unwrap();
    const ROWS: usize = 5_000;
    const USERS: usize = 50;
    // The log in two files (read by two partitions in parallel), with one malformed line.
    let text = click_csv(ROWS, USERS);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let (first, second) = rows.split_at(ROWS / 2);
    write_text(
        &dir.path().join("clicks/a.csv"),
        &format!("{header}\n{}\nu1,oops\n", first.join("\n")),
    );
    write_text(
        &dir.path().join("clicks/b.csv"),
        &format!("{header}\n{}\n", second.join("\n")),
    );
    let sql = "SELECT user_id, max(CAST(ts AS BIGINT)) AS ts, count(*) AS clicks, \
               avg(CAST(dwell_s AS DOUBLE)) AS mean_dwell, \
               last_value(article_id ORDER BY CAST(ts AS BIGINT)) AS last_article \
               FROM source GROUP BY user_id";
    let mut job = with_sql(dir.path(), "engagement_daily", sql).unwrap();
    job.parallelism = Parallelism::Fixed(4);
    job = job.with_options(JobOptions {
        max_reject_ratio: 0.05,
        ..JobOptions::default()
    });
    let job = Arc::new(job);
    let plan = plan_blocking(&job).await.unwrap();
    assert_eq!(plan.shards.len(), 1, "an aggregate needs every row at once");
    assert_eq!(plan.shards[0].pieces.len(), 2);

    let (store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let report = run_shard(&plan.shards[0], &job, &*sink, &rejects)
        .await
        .unwrap();
    // The query's rows are what is mapped; the malformed line counts as read and rejected.
    assert_eq!(report.rows_written, USERS as u64);
    assert_eq!(
        (report.rows_read, report.rows_rejected),
        (USERS as u64 + 1, 1)
    );
    let found = rejected.rejects();
    assert_eq!(found.len(), 1);
    assert!(found[0].file.ends_with("clicks/a.csv"), "{:?}", found[0]);
    assert_eq!(found[0].line, Some(ROWS as u64 / 2 + 2));
    assert_eq!(found[0].reason, "the line has 2 fields, the header 4");

    let names: Vec<String> = (0..USERS).map(|u| format!("u{u}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let stored = attributes(&store, &job, &keys(&names)).await;
    let per_user = ROWS / USERS;
    for (u, record) in stored.iter().enumerate() {
        let record = record.as_ref().unwrap_or_else(|| panic!("user u{u}"));
        let clicks: Vec<_> = (0..per_user).map(|k| click(u + USERS * k, USERS)).collect();
        let (_, last_ts, last_article, _) = clicks.last().unwrap().clone();
        assert_eq!(record.event_time, last_ts, "user u{u}");
        assert_eq!(record.value(0), &Value::Int64(per_user as i64), "user u{u}");
        assert_eq!(record.value(2), &Value::String(last_article), "user u{u}");
        let mean = clicks.iter().map(|c| c.3).sum::<f64>() / per_user as f64;
        let Value::Float64(stored_mean) = record.value(1) else {
            panic!("user u{u}: {record:?}");
        };
        assert!(
            (stored_mean - mean).abs() < 1e-9,
            "user u{u}: {stored_mean} {mean}"
        );
    }
}

#[tokio::test]
async fn transform_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    click_files(dir.path(), 1_000, 10, 1, 1_000);

    // Not a query: refused when the job is built.
    let err = with_sql(dir.path(), "long_clicks", "DELETE FROM source").unwrap_err();
    assert!(matches!(err, BatchError::Job { .. }), "{err}");
    assert!(err.to_string().contains("must be a SELECT query"), "{err}");

    // A column the input does not have: refused when the job is planned.
    let job = with_sql(
        dir.path(),
        "long_clicks",
        "SELECT user_id, ts, nope AS article, dwell_s AS dwell FROM source",
    )
    .unwrap();
    let err = plan_blocking(&Arc::new(job)).await.unwrap_err();
    assert!(matches!(err, BatchError::Transform { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    assert!(!err.is_retryable());

    // A result without a mapped column: refused before any row is written.
    let job = Arc::new(
        with_sql(
            dir.path(),
            "long_clicks",
            "SELECT user_id, ts, article_id AS article FROM source",
        )
        .unwrap(),
    );
    let plan = plan_blocking(&job).await.unwrap();
    let (_, sink) = store(dir.path());
    let (_, rejects) = memory_rejects();
    let err = run_shard(&plan.shards[0], &job, &*sink, &rejects)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "transform: no column `dwell` (feature `dwell`); its columns are: user_id, ts, article"
    );

    // A value the query cannot convert fails the shard with DataFusion's reason.
    let job = Arc::new(
        with_sql(
            dir.path(),
            "long_clicks",
            "SELECT user_id, ts, article_id AS article, CAST(article_id AS DOUBLE) AS dwell \
             FROM source",
        )
        .unwrap(),
    );
    let plan = plan_blocking(&job).await.unwrap();
    let err = run_shard(&plan.shards[0], &job, &*sink, &rejects)
        .await
        .unwrap_err();
    assert!(matches!(err, BatchError::Transform { .. }), "{err}");
    assert!(err.to_string().contains("a0"), "{err}");
}
