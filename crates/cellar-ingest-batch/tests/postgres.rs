//! A PostgreSQL query as a batch source, end to end into the embedded store. Tests that need a
//! server take it from `CELLAR_TEST_POSTGRES`, an admin URL such as
//! `postgres://postgres@127.0.0.1:5432/postgres` (`scripts/test.sh` starts a server and sets
//! it); each makes its own uniquely named table and drops it afterwards. They are ignored by a
//! plain `cargo test`; run with `--include-ignored` and without the variable, they fail.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cellar_ingest_batch::{
    plan, run_shard, BatchError, BatchJob, JobInput, JobOptions, Piece, ShardReport,
};
use cellar_spec::{EntityKey, FeatureRepo, Value};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::Record;
use common::*;
use sqlx::{Connection, Executor};

const POSTGRES_ENV: &str = "CELLAR_TEST_POSTGRES";
const ROWS: i64 = 3000;
const NULL_KEY_ROW: i64 = 1234;
const NULL_TIME_ROW: i64 = 2000;
/// 2024-01-01T00:00:00Z.
const TS: i64 = 1_704_067_200_000;
/// 2023-06-01T12:00:00Z.
const SEEN: i64 = 1_685_620_800_000;
/// 2020-01-01 in days since the Unix epoch.
const BORN_DAYS: i64 = 18_262;

/// A repo whose ingestions run queries on `url` over `table`.
fn repo(url: &str, table: &str) -> FeatureRepo {
    let text = format!(
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
  - {{ name: code, type: string }}
  - {{ name: tag, type: string }}
  - {{ name: age, type: int64 }}
  - {{ name: small, type: int64 }}
  - {{ name: big, type: int64 }}
  - {{ name: score, type: float64 }}
  - {{ name: ratio, type: float64 }}
  - {{ name: weight, type: float64 }}
  - {{ name: active, type: bool }}
  - {{ name: born, type: timestamp }}
  - {{ name: seen, type: timestamp }}
  - {{ name: avatar, type: bytes }}
---
kind: Ingestion
name: profiles
batch: {{ postgres: {{ url: "{url}", query: "SELECT * FROM {table} ORDER BY id" }} }}
into: profile
key: user_id
event_time: ts
features:
  country: country
  code: code
  tag: tag
  age: age
  small: small
  big: big
  score: score
  ratio: ratio
  weight: weight
  active: active
  born: born
  seen: seen
  avatar: avatar
---
kind: Ingestion
name: payloads
batch: {{ postgres: {{ url: "{url}", query: "SELECT user_id, ts, payload FROM {table}" }} }}
into: profile
key: user_id
event_time: ts
features: {{ country: payload }}
---
kind: Ingestion
name: missing
batch: {{ postgres: {{ url: "{url}", query: "SELECT user_id, ts FROM {table}" }} }}
into: profile
key: user_id
event_time: ts
features: {{ country: nope }}
---
kind: Ingestion
name: shouted
batch:
  postgres: {{ url: "{url}", query: "SELECT id, user_id, ts, country, age FROM {table}" }}
  transform: >
    SELECT user_id, ts, upper(country) AS country, age * 2 AS age FROM source
    WHERE user_id IS NOT NULL AND ts IS NOT NULL AND id % 2 = 0
into: profile
key: user_id
event_time: ts
features: {{ country: country, age: age }}
---
kind: Ingestion
name: no_table
batch: {{ postgres: {{ url: "{url}", query: "SELECT * FROM {table}_absent" }} }}
into: profile
key: user_id
features: {{ country: country }}
"#
    );
    cellar_spec::parse_repo(&[("repo.yaml".into(), text)]).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `body` with the admin URL and the name of a filled table, then drops the table.
async fn with_table<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = service_address(
        POSTGRES_ENV,
        "PostgreSQL (an admin url such as postgres://postgres@127.0.0.1:5432/postgres)",
    );
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let table = format!(
        "cellar_batch_test_{}_{}_{}",
        std::process::id(),
        nanos,
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={url} does not answer: {e}"));
    admin
        .execute(fill(&table).as_str())
        .await
        .expect("create and fill the test table");
    // On a task, so a failing assertion still lets the table be dropped.
    let outcome = tokio::spawn(body(url, table.clone())).await;
    if let Err(e) = admin
        .execute(format!("DROP TABLE IF EXISTS {table}").as_str())
        .await
    {
        eprintln!("could not drop test table {table}: {e}");
    }
    let _ = admin.close().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("{test}: did not finish: {e}"),
        }
    }
}

/// `ROWS` rows of every type read (and a `jsonb` one that is not), NULLs in several columns, a
/// null key at `NULL_KEY_ROW` and a null event time at `NULL_TIME_ROW`.
fn fill(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (
            id int8 PRIMARY KEY, user_id text, ts timestamptz, country varchar(8),
            code bpchar(3), tag name, age int4, small int2, big int8, score numeric(12, 3),
            ratio float4, weight float8, active bool, born date, seen timestamp, avatar bytea,
            payload jsonb);
        INSERT INTO {table}
        SELECT i,
            CASE WHEN i = {NULL_KEY_ROW} THEN NULL ELSE 'u' || i END,
            CASE WHEN i = {NULL_TIME_ROW} THEN NULL
                 ELSE timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second' END,
            CASE WHEN i % 10 = 0 THEN NULL ELSE 'c' || (i % 7) END,
            'k' || lpad((i % 3)::text, 2, '0'),
            ('t' || (i % 4))::name,
            i % 100,
            (i % 5 - 2)::int2,
            i::int8 * 10000000000,
            (i * 1.5 - 100.25)::numeric(12, 3),
            ((i % 4) * 0.25)::float4,
            i / 8.0::float8,
            CASE WHEN i % 10 = 5 THEN NULL ELSE i % 2 = 0 END,
            date '2020-01-01' + i,
            timestamp '2023-06-01 12:00:00' + i * interval '1 millisecond',
            CASE WHEN i % 3 = 0 THEN NULL ELSE int4send(i::int4) END,
            jsonb_build_object('i', i)
        FROM generate_series(0, {}) AS i;",
        ROWS - 1
    )
}

/// The record row `i` becomes.
fn expected(i: i64) -> Record {
    let null_or = |null: bool, v: Value| if null { Value::Null } else { v };
    Record::new(
        TS + i * 1000,
        vec![
            null_or(i % 10 == 0, Value::String(format!("c{}", i % 7))),
            Value::String(format!("k{:02}", i % 3)),
            Value::String(format!("t{}", i % 4)),
            Value::Int64(i % 100),
            Value::Int64(i % 5 - 2),
            Value::Int64(i * 10_000_000_000),
            Value::Float64(i as f64 * 1.5 - 100.25),
            Value::Float64((i % 4) as f64 * 0.25),
            Value::Float64(i as f64 / 8.0),
            null_or(i % 10 == 5, Value::Bool(i % 2 == 0)),
            Value::Timestamp((BORN_DAYS + i) * 86_400_000),
            Value::Timestamp(SEEN + i),
            null_or(i % 3 == 0, Value::Bytes((i as i32).to_be_bytes().to_vec())),
        ],
    )
}

/// A query job's one shard run into a fresh embedded store.
struct Run {
    outcome: Result<ShardReport, BatchError>,
    rejects: Vec<cellar_ingest_batch::Reject>,
    store: Arc<EmbeddedStore>,
    _dir: tempfile::TempDir,
}

async fn run(job: &Arc<BatchJob>) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let plan = plan(job).unwrap();
    let outcome = run_shard(&plan.shards[0], job, &*sink, &rejects).await;
    Run {
        outcome,
        rejects: rejected.rejects(),
        store,
        _dir: dir,
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CELLAR_TEST_POSTGRES); scripts/test.sh starts it"]
async fn query_rows_of_every_type_load_with_nulls_and_rejects() {
    with_table("query_rows_of_every_type_load", |url, table| async move {
        let job = BatchJob::from_repo(&repo(&url, &table), "profiles", 1_000)
            .unwrap()
            .with_options(JobOptions {
                batch_rows: 500,
                ..JobOptions::default()
            });
        let job = Arc::new(job);
        let ran = run(&job).await;
        let report = ran.outcome.unwrap();
        assert_eq!(report.rows_read, ROWS as u64);
        assert_eq!(report.rows_written, ROWS as u64 - 2);
        assert_eq!(report.rows_rejected, 2);

        let found: Vec<(Option<u64>, Option<String>, String)> = ran
            .rejects
            .into_iter()
            .map(|r| (r.row, r.column, r.reason))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    Some(NULL_KEY_ROW as u64),
                    Some("user_id".to_owned()),
                    "key `user_id` is null".to_owned()
                ),
                (
                    Some(NULL_TIME_ROW as u64),
                    Some("ts".to_owned()),
                    "event_time `ts` is null".to_owned()
                ),
            ]
        );

        let entities: Vec<EntityKey> = (0..ROWS).map(|i| EntityKey(format!("u{i}"))).collect();
        let got = attributes(&ran.store, &job, &entities).await;
        for (i, record) in (0..ROWS).zip(got) {
            if i == NULL_KEY_ROW || i == NULL_TIME_ROW {
                assert_eq!(record, None, "row {i}");
            } else {
                assert_eq!(record, Some(expected(i)), "row {i}");
            }
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CELLAR_TEST_POSTGRES); scripts/test.sh starts it"]
async fn a_transform_reshapes_query_rows_typed_as_the_reader_types_them() {
    with_table("a_transform_reshapes_query_rows", |url, table| async move {
        let job = Arc::new(BatchJob::from_repo(&repo(&url, &table), "shouted", 1_000).unwrap());
        let ran = run(&job).await;
        let report = ran.outcome.unwrap();
        // Even ids, but for the rows of the null key (1234) and null event time (2000).
        assert_eq!(report.rows_written, ROWS as u64 / 2 - 2);
        assert!(ran.rejects.is_empty());

        let entities: Vec<EntityKey> = (0..ROWS).map(|i| EntityKey(format!("u{i}"))).collect();
        let got = attributes(&ran.store, &job, &entities).await;
        for (i, record) in (0..ROWS).zip(got) {
            if i % 2 == 1 || i == NULL_KEY_ROW || i == NULL_TIME_ROW {
                assert_eq!(record, None, "row {i}");
                continue;
            }
            let record = record.unwrap_or_else(|| panic!("row {i}"));
            assert_eq!(record.event_time, TS + i * 1000, "row {i}");
            let country = if i % 10 == 0 {
                Value::Null
            } else {
                Value::String(format!("C{}", i % 7))
            };
            assert_eq!(record.value(0), &country, "row {i}");
            assert_eq!(record.value(3), &Value::Int64(i % 100 * 2), "row {i}");
            assert_eq!(record.value(1), &Value::Null, "row {i}: not mapped");
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CELLAR_TEST_POSTGRES); scripts/test.sh starts it"]
async fn query_columns_not_read_or_missing_fail_the_shard_by_name() {
    with_table(
        "query_columns_not_read_or_missing",
        |url, table| async move {
            let repo = repo(&url, &table);
            let job = Arc::new(BatchJob::from_repo(&repo, "payloads", 1_000).unwrap());
            let outcome = run(&job).await.outcome;
            let err = outcome.unwrap_err();
            let BatchError::Column { reason, .. } = &err else {
                panic!("{err:?}");
            };
            assert!(
                reason.starts_with("column `payload` is of PostgreSQL type jsonb"),
                "{reason}"
            );
            assert!(!err.is_retryable());

            let job = Arc::new(BatchJob::from_repo(&repo, "missing", 1_000).unwrap());
            let err = run(&job).await.outcome.unwrap_err();
            assert!(
                matches!(&err, BatchError::Column { reason, .. }
                if reason == "no column `nope` (feature `country`); its columns are: user_id, ts"),
                "{err:?}"
            );
        },
    )
    .await;
}

/// A file holding `password`, as a secret file is mounted, and the reference to it a spec
/// gives (`${file:PATH}`); the file lives as long as the directory returned.
fn password_file(password: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg-password");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    let reference = format!("${{file:{}}}", path.display());
    (dir, reference)
}

/// `admin` with `password` (a reference to it) as its password and a database that does not
/// exist.
fn wrong_login(admin: &str, password: &str) -> String {
    let rest = admin.split_once("://").map_or(admin, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let (user, host) = match authority.rsplit_once('@') {
        Some((user_info, host)) => (user_info.split(':').next().unwrap_or("postgres"), host),
        None => ("postgres", authority),
    };
    format!("postgres://{user}:{password}@{host}/cellar_batch_test_no_such_db")
}

#[tokio::test]
async fn an_unreachable_server_is_a_retryable_failure_that_never_shows_the_password() {
    let password = "s3cret-pw";
    let (_dir, reference) = password_file(password);
    let unreachable = format!("postgres://cellar:{reference}@127.0.0.1:1/postgres");
    let job = Arc::new(BatchJob::from_repo(&repo(&unreachable, "t"), "profiles", 1_000).unwrap());
    let err = run(&job).await.outcome.unwrap_err();
    let shown = err.to_string();
    assert!(
        matches!(err, BatchError::Source { .. }) && err.is_retryable(),
        "{err:?}"
    );
    assert!(!shown.contains(password), "{shown}");
    assert!(
        shown.starts_with("postgres://cellar:***@127.0.0.1:1/postgres: cannot connect"),
        "{shown}"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL (CELLAR_TEST_POSTGRES); scripts/test.sh starts it"]
async fn a_refused_login_or_a_failed_query_is_a_source_failure_that_never_shows_the_password() {
    let password = "s3cret-pw";
    let (_dir, reference) = password_file(password);
    with_table(
        "refused_login_or_failed_query",
        move |url, table| async move {
            let wrong = wrong_login(&url, &reference);
            let job =
                Arc::new(BatchJob::from_repo(&repo(&wrong, &table), "profiles", 1_000).unwrap());
            let err = run(&job).await.outcome.unwrap_err();
            assert!(
                matches!(err, BatchError::Source { .. }) && err.is_retryable(),
                "{err:?}"
            );
            assert!(!err.to_string().contains(password), "{err}");

            let job =
                Arc::new(BatchJob::from_repo(&repo(&url, &table), "no_table", 1_000).unwrap());
            let err = run(&job).await.outcome.unwrap_err();
            assert!(
                matches!(&err, BatchError::Source { reason, .. }
                if reason.starts_with("the query failed") && reason.contains("_absent")),
                "{err:?}"
            );
        },
    )
    .await;
}

#[test]
fn a_query_plans_as_one_shard_that_holds_no_password() {
    let url = "postgres://cellar:${PG_PASSWORD}@db.internal/app";
    let job = BatchJob::from_repo(&repo(url, "profiles_src"), "profiles", 1_000).unwrap();
    let query = "SELECT * FROM profiles_src ORDER BY id";
    assert_eq!(
        job.input,
        JobInput::Postgres {
            url: url.into(),
            query: query.into()
        }
    );
    let plan = plan(&job).unwrap();
    assert_eq!(plan.shards.len(), 1);
    assert_eq!(
        plan.shards[0].pieces,
        vec![Piece::Postgres {
            query: query.into()
        }]
    );
    assert_eq!((plan.rows, plan.rows_exact, plan.files), (0, false, 0));
    let json = serde_json::to_string(&plan).unwrap();
    assert!(!json.contains("db.internal"), "{json}");
    assert!(json.contains(r#""format":"postgres""#), "{json}");
}
