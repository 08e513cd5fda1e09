//! The registry and a PostgreSQL batch source over TLS, against a server with `ssl=on` and
//! certificates the test setup generates (`scripts/tls.sh`): `CELLAR_TEST_POSTGRES_TLS`, an
//! admin URL without TLS parameters, of a server that refuses TCP connections without TLS and
//! logs the role `cellar` in by its client certificate alone; `CELLAR_TEST_TLS_DIR`, the CA,
//! the client certificate (CN `cellar`) and a second, unrelated CA. Ignored by a plain `cargo
//! test`; run with `--include-ignored` without the variables, they fail.

mod common;

use std::sync::Arc;

use cellar_ingest_batch::{run_shard, BatchJob};
use cellar_registry::Registry;
use cellar_spec::{FeatureRepo, Value};
use common::*;
use sqlx::{Connection, Executor};

const ROWS: i64 = 10;

fn tls_file(name: &str) -> String {
    let dir = service_address("CELLAR_TEST_TLS_DIR", "the test certificates");
    format!("{dir}/{name}")
}

/// The admin URL, with `user` and the database `db`, and `params`.
fn url(user: &str, db: &str, params: &str) -> String {
    let admin = service_address(
        "CELLAR_TEST_POSTGRES_TLS",
        "PostgreSQL with ssl=on (an admin URL such as postgres://postgres@127.0.0.1:5434/postgres)",
    );
    let (_, rest) = admin
        .split_once('@')
        .unwrap_or_else(|| panic!("CELLAR_TEST_POSTGRES_TLS={admin} names no user"));
    let host = rest.split('/').next().unwrap_or(rest);
    format!("postgres://{user}@{host}/{db}?{params}")
}

fn verify_full() -> String {
    format!("sslmode=verify-full&sslrootcert={}", tls_file("ca.crt"))
}

/// A repo whose one ingestion reads `table` at `source`.
fn repo(source: &str, table: &str) -> FeatureRepo {
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
---
kind: Ingestion
name: profiles
batch: {{ postgres: {{ url: "{source}", query: "SELECT * FROM {table}" }} }}
into: profile
key: user_id
event_time: ts
features: {{ country: country }}
"#
    );
    cellar_spec::parse_repo(&[("repo.yaml".into(), text)]).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh database over TLS, its name and an admin connection to the server.
async fn fresh_database() -> (String, sqlx::PgConnection) {
    let options =
        cellar_registry::postgres::connect_options(&url("postgres", "postgres", &verify_full()))
            .unwrap();
    let mut admin = sqlx::PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("the TLS server does not answer: {e}"));
    let db = format!("cellar_tls_{:016x}", rand_suffix());
    admin
        .execute(format!("CREATE DATABASE {db}").as_str())
        .await
        .unwrap();
    (db, admin)
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()) << 32
}

/// Runs `body` with a fresh database holding a table of `ROWS` profiles, then drops it.
async fn with_database<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (db, mut admin) = fresh_database().await;
    {
        let options =
            cellar_registry::postgres::connect_options(&url("postgres", &db, &verify_full()))
                .unwrap();
        let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
        conn.execute(
            format!(
                "CREATE TABLE profiles (user_id text, ts timestamptz, country text);
                 INSERT INTO profiles SELECT 'u' || i, timestamptz '2024-01-01 00:00:00+00', 'c' || i
                 FROM generate_series(1, {ROWS}) AS i;"
            )
            .as_str(),
        )
        .await
        .unwrap();
        let _ = conn.close().await;
    }
    let outcome = tokio::spawn(body(db.clone())).await;
    if let Err(e) = admin
        .execute(format!("DROP DATABASE {db} WITH (FORCE)").as_str())
        .await
    {
        eprintln!("could not drop test database {db}: {e}");
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Runs the ingestion reading from `source` into a fresh store, and checks every row landed.
async fn ingest(source: &str) {
    let job = Arc::new(BatchJob::from_repo(&repo(source, "profiles"), "profiles", 0).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = store(dir.path());
    let (_, rejects) = memory_rejects();
    let plan = plan_blocking(&job)
        .await
        .unwrap_or_else(|e| panic!("planning with {source}: {e}"));
    let report = run_shard(&plan.shards[0], &job, &*sink, &rejects)
        .await
        .unwrap_or_else(|e| panic!("reading with {source}: {e}"));
    assert_eq!(report.rows_written, ROWS as u64, "{source}");
    let found = attributes(&store, &job, &keys(&["u1", "u10"])).await;
    let countries: Vec<Option<Value>> = found
        .iter()
        .map(|r| r.as_ref().map(|r| r.values[0].clone()))
        .collect();
    assert_eq!(
        countries,
        vec![
            Some(Value::String("c1".into())),
            Some(Value::String("c10".into()))
        ]
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL with ssl=on (CELLAR_TEST_POSTGRES_TLS); scripts/test.sh starts it"]
async fn the_registry_and_a_batch_source_connect_with_each_verifying_sslmode() {
    with_database(|db| async move {
        let ca = tls_file("ca.crt");
        let client = format!(
            "sslcert={}&sslkey={}",
            tls_file("client.crt"),
            tls_file("client.key")
        );
        for (user, params) in [
            ("postgres", verify_full()),
            ("postgres", format!("sslmode=verify-ca&sslrootcert={ca}")),
            ("postgres", "sslmode=require".to_owned()),
            ("postgres", "sslmode=prefer".to_owned()),
            ("postgres", "sslmode=allow".to_owned()),
            // Logged in by the client certificate alone: no password, no trust.
            ("cellar", format!("{}&{client}", verify_full())),
        ] {
            let url = url(user, &db, &params);
            let registry = Registry::open(&url)
                .await
                .unwrap_or_else(|e| panic!("opening the registry with {params}: {e}"));
            let repo = repo(&url, "profiles");
            registry.apply(&repo).await.unwrap();
            assert!(registry.current().await.unwrap().is_some(), "{params}");
            ingest(&url).await;
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL with ssl=on (CELLAR_TEST_POSTGRES_TLS); scripts/test.sh starts it"]
async fn a_wrong_ca_no_tls_or_no_client_certificate_is_refused() {
    with_database(|db| async move {
        let cases = [
            (
                "postgres",
                format!(
                    "sslmode=verify-full&sslrootcert={}",
                    tls_file("other-ca.crt")
                ),
                "UnknownIssuer",
            ),
            // The server takes TCP connections with TLS only.
            ("postgres", "sslmode=disable".to_owned(), "no encryption"),
            // `cellar` logs in by certificate, and sends none here.
            ("cellar", verify_full(), "certificate"),
            (
                "postgres",
                "sslmode=verify-full&sslrootcert=/nonexistent/ca.crt".to_owned(),
                "`sslrootcert`: cannot read `/nonexistent/ca.crt`",
            ),
        ];
        for (user, params, says) in cases {
            let url = url(user, &db, &params);
            let err = Registry::open(&url)
                .await
                .err()
                .unwrap_or_else(|| panic!("the registry opened with {params}"))
                .to_string();
            assert!(err.contains(says), "{params}: {err}");
            let job =
                Arc::new(BatchJob::from_repo(&repo(&url, "profiles"), "profiles", 0).unwrap());
            let plan = plan_blocking(&job).await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (_, sink) = store(dir.path());
            let (_, rejects) = memory_rejects();
            let err = run_shard(&plan.shards[0], &job, &*sink, &rejects)
                .await
                .err()
                .unwrap_or_else(|| panic!("the source was read with {params}"))
                .to_string();
            assert!(err.contains(says), "{params}: {err}");
        }
    })
    .await;
}
