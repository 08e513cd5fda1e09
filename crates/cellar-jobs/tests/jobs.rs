//! Batch jobs end to end on an embedded store and a SQLite registry: a job's life in the
//! registry, shards retried and the job failed with an alert whose link opens the job's page,
//! a three-job DAG run by the scheduler in dependency order, and watermarks that `apply`
//! leaves alone.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use cellar_cache::WritePath;
use cellar_ingest_batch::{Period, RecordSink};
use cellar_jobs::http::jobs_router;
use cellar_jobs::schedule::schedule_pass;
use cellar_jobs::{Alerter, Executor, ExecutorSettings, JobRequest};
use cellar_registry::{JobFilter, JobKind, JobState, Registry, WatermarkValue};
use cellar_spec::limits::{EventTimeBounds, DEFAULT_MAX_FUTURE};
use cellar_spec::{EntityKey, FeatureRepo, Value};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{OnlineStore, RecordReader as _};
use chrono::{DateTime, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// Three groups of one entity, filled by three ingestions `a -> b -> c` (c depends on b, b on
/// a), each scheduled hourly, and a backfill-only ingestion.
fn repo_text(dir: &std::path::Path, extra_feature: bool) -> String {
    let d = dir.display();
    let extra = if extra_feature {
        "\n  - { name: note, type: string }"
    } else {
        ""
    };
    let mut text = format!(
        r#"
kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - {{ name: country, type: string }}
  - {{ name: age, type: int64 }}{extra}
"#
    );
    for (name, deps) in [("a", ""), ("b", "a"), ("c", "b")] {
        let deps = if deps.is_empty() {
            String::new()
        } else {
            format!(", depends_on: [{deps}]")
        };
        text.push_str(&format!(
            r#"---
kind: FeatureGroup
name: group_{name}
entity: user
type: attribute
features: [{{ name: age, type: int64 }}]
---
kind: Ingestion
name: {name}
batch: {{ files: {{ path: "{d}/{name}/*.parquet" }}, schedule: "0 0 * * * *"{deps} }}
into: group_{name}
key: user_id
event_time: ts
features: {{ age: age }}
"#
        ));
    }
    text.push_str(&format!(
        r#"---
kind: Ingestion
name: profiles
batch: {{ files: {{ path: "{d}/profiles/*.parquet" }} }}
into: profile
key: user_id
event_time: ts
features: {{ country: country, age: age }}
"#
    ));
    text
}

fn repo(dir: &std::path::Path, extra_feature: bool) -> FeatureRepo {
    cellar_spec::parse_repo(&[("repo.yaml".into(), repo_text(dir, extra_feature))])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `rows` users `u<i>` with country, age `i` and event time `ts(i)`, in one Parquet file
/// (zstd, a row group every `group_rows`).
fn write_users(path: &std::path::Path, rows: usize, group_rows: usize, ts: impl Fn(usize) -> i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("age", DataType::Int64, false),
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
                (0..rows).map(|i| format!("u{i}")),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..rows).map(|i| ["de", "fr", "kr"][i % 3].to_owned()),
            )),
            Arc::new(Int64Array::from_iter_values((0..rows).map(|i| i as i64))),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                (0..rows).map(&ts),
            )),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group_rows))
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    registry: Registry,
    store: Arc<EmbeddedStore>,
    executor: Executor,
}

async fn setup(alerter: Option<Alerter>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(&format!(
        "sqlite://{}",
        dir.path().join("registry.db").display()
    ))
    .await
    .unwrap();
    registry.apply(&repo(dir.path(), false)).await.unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path().join("store")).unwrap());
    let sink: Arc<dyn RecordSink> = Arc::new(WritePath::new(
        Arc::clone(&store) as Arc<dyn OnlineStore>,
        None,
    ));
    let mut settings = ExecutorSettings::new(dir.path().join("rejects"));
    settings.shard_workers = 2;
    settings.heartbeat = Duration::from_millis(100);
    settings.retry_backoff = Duration::from_millis(50);
    // Rows of these tests are stamped near the epoch.
    settings.event_times = EventTimeBounds::new(0, DEFAULT_MAX_FUTURE).unwrap();
    let executor = Executor::new(registry.clone(), sink, settings, alerter);
    Setup {
        dir,
        registry,
        store,
        executor,
    }
}

async fn ages(
    store: &EmbeddedStore,
    repo: &FeatureRepo,
    group: &str,
    users: &[usize],
) -> Vec<Option<i64>> {
    let group = repo.group(group).unwrap();
    let keys: Vec<EntityKey> = users.iter().map(|i| EntityKey(format!("u{i}"))).collect();
    let position = group.feature_index("age").unwrap();
    store
        .get_attributes(group, &keys)
        .await
        .unwrap()
        .into_iter()
        .map(|r| match r.map(|r| r.value(position).clone()) {
            Some(Value::Int64(n)) => Some(n),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_runs_its_shards_and_records_them() {
    let s = setup(None).await;
    for f in 0..3 {
        write_users(
            &s.dir.path().join(format!("profiles/part-{f}.parquet")),
            10_000,
            2_500,
            |i| 1_000 + i as i64,
        );
    }
    let job = s
        .executor
        .submit(&JobRequest::backfill("profiles", Period::ALL))
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Submitted);
    assert_eq!(job.kind, JobKind::Backfill);
    let done = s.executor.run(job.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    // Each file holds the same 10,000 users, at the same event times: written once each.
    assert_eq!(done.rows_planned, Some(30_000));
    assert_eq!(done.rows_read, 30_000);
    assert_eq!(done.rows_written, 10_000);
    assert_eq!(done.shards_total, done.shards_succeeded);
    let shards = s.registry.shards(job.id).await.unwrap();
    assert!(shards
        .iter()
        .all(|sh| sh.attempts == 1 && sh.state == JobState::Succeeded));
    let repo = repo(s.dir.path(), false);
    assert_eq!(
        ages(&s.store, &repo, "profile", &[0, 9_999]).await,
        [Some(0), Some(9_999)]
    );
    // A job that ended is not run again.
    let again = s.executor.run(job.id).await.unwrap();
    assert_eq!(again.finished_at, done.finished_at);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_loads_only_its_period_and_names_what_cannot_run() {
    let s = setup(None).await;
    write_users(
        &s.dir.path().join("profiles/p.parquet"),
        1_000,
        1_000,
        |i| i as i64 * 10,
    );
    let period = Period {
        from_ms: Some(2_000),
        to_ms: Some(4_000),
    };
    let job = s
        .executor
        .submit(&JobRequest::backfill("profiles", period))
        .await
        .unwrap();
    let done = s.executor.run(job.id).await.unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.rows_read, 1_000);
    assert_eq!(done.rows_written, 200);
    let repo = repo(s.dir.path(), false);
    assert_eq!(
        ages(&s.store, &repo, "profile", &[199, 200, 399, 400]).await,
        [None, Some(200), Some(399), None]
    );

    let err = s
        .executor
        .submit(&JobRequest::backfill("nope", Period::ALL))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "there is no ingestion `nope` in the applied repo"
    );
    // Files that do not exist fail the job at planning, with the reason.
    let job = s
        .executor
        .submit(&JobRequest::backfill("a", Period::ALL))
        .await
        .unwrap();
    let failed = s.executor.run(job.id).await.unwrap();
    assert_eq!(failed.state, JobState::Failed);
    let error = failed.error.unwrap();
    assert!(error.contains("/a/*.parquet"), "{error}");
}

/// A webhook receiver on loopback: the bodies it was sent.
async fn webhook() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let got = Arc::clone(&got);
            move |axum::Json(body): axum::Json<serde_json::Value>| {
                let got = Arc::clone(&got);
                async move {
                    got.lock().unwrap().push(body);
                    "ok"
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shard_is_retried_then_the_job_fails_with_an_alert_linking_its_page() {
    let (hook, alerts) = webhook().await;
    // The jobs API, whose page the alert links to.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let s = setup(Some(Alerter::new(&hook, &base).unwrap())).await;
    tokio::spawn({
        let app = jobs_router(s.executor.clone(), cellar_auth::Audit::tracing_only());
        async move { axum::serve(listener, app).await }
    });

    let good = s.dir.path().join("profiles/good.parquet");
    let bad = s.dir.path().join("profiles/bad.parquet");
    write_users(&good, 2_000, 1_000, |i| i as i64);
    write_users(&bad, 2_000, 1_000, |i| i as i64);
    // The bad file's first page is overwritten: its footer still plans, its rows never read.
    let mut bytes = std::fs::read(&bad).unwrap();
    for b in &mut bytes[4..200] {
        *b = 0xff;
    }
    std::fs::write(&bad, bytes).unwrap();

    let job = s
        .executor
        .submit(&JobRequest::backfill("profiles", Period::ALL))
        .await
        .unwrap();
    let failed = s.executor.run(job.id).await.unwrap();
    assert_eq!(failed.state, JobState::Failed);
    let shards = s.registry.shards(job.id).await.unwrap();
    let broken: Vec<_> = shards
        .iter()
        .filter(|sh| sh.state == JobState::Failed)
        .collect();
    assert_eq!(broken.len(), 1, "{shards:?}");
    assert_eq!(broken[0].attempts, 3, "retried until its attempts ran out");
    assert!(broken[0].error.as_deref().unwrap().contains("bad.parquet"));
    let reason = failed.error.clone().unwrap();
    assert!(reason.contains("failed after 3 attempt(s)"), "{reason}");

    let sent = alerts.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "one alert per failure: {sent:?}");
    let alert = &sent[0];
    assert_eq!(alert["alert"], "failed");
    assert_eq!(alert["job_id"], job.id);
    let text = alert["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("job {}", job.id)) && text.contains("`profiles`"),
        "{text}"
    );
    // The link is the job's page in the web console (its tests load it in a browser).
    let link = alert["link"].as_str().unwrap();
    assert_eq!(link, format!("{base}/jobs/{}", job.id));

    // The same job over the API; a retry runs the failed shard again (and fails again).
    let shown: serde_json::Value = reqwest::get(format!("{base}/v1/jobs/{}", job.id))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["job"]["state"], "failed");
    assert_eq!(shown["shards"].as_array().unwrap().len(), shards.len());
    let missing = reqwest::get(format!("{base}/v1/jobs/999")).await.unwrap();
    assert_eq!(missing.status(), 404);
    let retried = s.registry.retry_job(job.id).await.unwrap();
    assert_eq!(retried.state, JobState::Runnable);
    let again = s.executor.run(job.id).await.unwrap();
    assert_eq!(again.state, JobState::Failed);
    assert_eq!(alerts.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_runs_a_dag_in_order_and_apply_keeps_its_watermarks() {
    let s = setup(None).await;
    let now: DateTime<Utc> = Utc::now();
    let hour = 3_600_000;
    let tick = now.timestamp_millis() / hour * hour;
    for name in ["a", "b", "c"] {
        // Rows an hour before the tick load; rows after it wait for the next period.
        write_users(
            &s.dir.path().join(format!("{name}/x.parquet")),
            100,
            100,
            |i| {
                if i < 50 {
                    tick - hour + i as i64
                } else {
                    tick + i as i64
                }
            },
        );
    }
    // The first pass submits `a` only: `b` waits for `a`, `c` for `b`.
    let first = schedule_pass(&s.executor, now).await.unwrap();
    assert_eq!(first.len(), 1);
    let mut order = Vec::new();
    for _ in 0..200 {
        let jobs = s
            .registry
            .list_jobs(&JobFilter {
                ingestion: None,
                states: vec![],
                limit: 100,
            })
            .await
            .unwrap();
        if jobs.len() == 3 && jobs.iter().all(|j| j.state == JobState::Succeeded) {
            order = jobs;
            break;
        }
        schedule_pass(&s.executor, now).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(order.len(), 3, "the DAG did not finish");
    order.sort_by_key(|j| j.id);
    let names: Vec<&str> = order.iter().map(|j| j.ingestion.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    for pair in order.windows(2) {
        assert!(
            pair[0].finished_at.unwrap() <= pair[1].submitted_at,
            "{} was submitted before {} finished",
            pair[1].ingestion,
            pair[0].ingestion
        );
    }
    for job in &order {
        assert_eq!(job.kind, JobKind::Scheduled);
        assert_eq!((job.period_from_ms, job.period_to_ms), (None, Some(tick)));
        assert_eq!(job.rows_written, 50, "only the period's rows");
    }
    let repo_now = repo(s.dir.path(), false);
    assert_eq!(
        ages(&s.store, &repo_now, "group_c", &[49, 50]).await,
        [Some(49), None]
    );

    // Watermarks are the period's end; `apply` of a changed repo leaves them, and nothing
    // is due again until the next tick.
    let marks = |registry: Registry| async move {
        let mut out = Vec::new();
        for name in ["a", "b", "c"] {
            out.push(registry.watermark(name).await.unwrap().map(|w| w.value));
        }
        out
    };
    let before = marks(s.registry.clone()).await;
    assert_eq!(before, vec![Some(WatermarkValue::Millis(tick)); 3]);
    let outcome = s.registry.apply(&repo(s.dir.path(), true)).await.unwrap();
    assert!(outcome.changed);
    assert_eq!(marks(s.registry.clone()).await, before);
    assert!(schedule_pass(&s.executor, now).await.unwrap().is_empty());
    // Two hours later, one period catches up both missed ticks.
    let later = now + chrono::Duration::hours(2);
    let caught_up = schedule_pass(&s.executor, later).await.unwrap();
    assert_eq!(caught_up.len(), 1);
    let job = s.registry.job(caught_up[0]).await.unwrap().unwrap();
    assert_eq!(job.ingestion, "a");
    assert_eq!(
        (job.period_from_ms, job.period_to_ms),
        (Some(tick), Some(tick + 2 * hour))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_nobody_runs_is_reported_stuck_once() {
    let (hook, alerts) = webhook().await;
    let alerter = Alerter::new(&hook, "http://cellar.example:6566/").unwrap();
    let s = setup(Some(alerter.clone())).await;
    write_users(&s.dir.path().join("profiles/p.parquet"), 10, 10, |i| {
        i as i64
    });
    // Submitted, and no executor takes it.
    let job = s
        .executor
        .submit(&JobRequest::backfill("profiles", Period::ALL))
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watcher = tokio::spawn({
        let registry = s.registry.clone();
        async move {
            alerter
                .watch_stuck(registry, Duration::ZERO, Duration::from_millis(20), stop_rx)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    watcher.await.unwrap();
    let sent = alerts.lock().unwrap().clone();
    assert_eq!(sent.len(), 1, "once, however many passes: {sent:?}");
    assert_eq!(sent[0]["alert"], "stuck");
    assert_eq!(sent[0]["state"], "submitted");
    assert_eq!(
        sent[0]["link"],
        format!("http://cellar.example:6566/jobs/{}", job.id)
    );
    assert!(s
        .registry
        .job(job.id)
        .await
        .unwrap()
        .unwrap()
        .alerted_at
        .is_some());
}
