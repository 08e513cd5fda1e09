//! `cellar backfill` and `cellar jobs`, run as a user runs them: a million rows of Parquet
//! loaded into a group, every row then served by `cellar serve`; and a backfill submitted to a
//! running server.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::{json, Value};

const FILES: usize = 4;
const ROWS_PER_FILE: usize = 250_000;

struct Env {
    dir: tempfile::TempDir,
    listen: String,
    grpc: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(
            repo.join("profiles.yaml"),
            format!(
                r#"kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - {{ name: country, type: string }}
  - {{ name: age, type: int64 }}
  - {{ name: score, type: float64 }}
---
kind: Ingestion
name: profiles
batch: {{ files: {{ path: "{}/input/*.parquet" }} }}
into: profile
key: user_id
event_time: ts
features: {{ country: country, age: age, score: score }}
"#,
                dir.path().display()
            ),
        )
        .unwrap();
        Env {
            dir,
            listen: format!("127.0.0.1:{}", common::free_port()),
            grpc: format!("127.0.0.1:{}", common::free_port()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cellar"));
        c.args(args)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--repo")
            .arg(self.dir.path().join("repo"))
            .env("RUST_LOG", "warn")
            .env("CELLAR_SERVER__LISTEN", &self.listen)
            .env("CELLAR_SERVER__GRPC_LISTEN", &self.grpc);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run cellar")
    }

    fn serve(&self) -> Server {
        Server(
            self.command(&["serve"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start cellar serve"),
        )
    }

    fn base(&self) -> String {
        format!("http://{}", self.listen)
    }
}

/// A `cellar serve` process, killed when dropped (also when a test fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn country(i: usize) -> &'static str {
    ["de", "fr", "kr", "jp", "br"][i % 5]
}

/// Users `first..first + rows`, each with values derived from its number.
fn write_users(path: &Path, first: usize, rows: usize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("country", DataType::Utf8, false),
        Field::new("age", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(64 * 1024))
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        schema.clone(),
        Some(props),
    )
    .unwrap();
    let chunk = 50_000;
    for start in (first..first + rows).step_by(chunk) {
        let ids = start..(start + chunk).min(first + rows);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    ids.clone().map(|i| format!("u{i}")),
                )),
                Arc::new(StringArray::from_iter_values(ids.clone().map(country))),
                Arc::new(Int64Array::from_iter_values(
                    ids.clone().map(|i| (i % 90) as i64),
                )),
                Arc::new(Float64Array::from_iter_values(
                    ids.clone().map(|i| i as f64 / 4.0),
                )),
                Arc::new(TimestampMillisecondArray::from_iter_values(
                    ids.map(|i| 1_700_000_000_000 + i as i64),
                )),
            ],
        )
        .unwrap();
        writer.write(&batch).unwrap();
    }
    writer.close().unwrap();
}

async fn wait_healthy(base: &str) {
    for _ in 0..300 {
        if reqwest::get(format!("{base}/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cellar serve did not answer at {base}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_parquet_rows_are_backfilled_and_every_row_is_served() {
    let env = Env::new();
    for f in 0..FILES {
        write_users(
            &env.dir.path().join(format!("input/part-{f}.parquet")),
            f * ROWS_PER_FILE,
            ROWS_PER_FILE,
        );
    }
    let out = env.run(&["apply"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = env.run(&["backfill", "profiles"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let total = FILES * ROWS_PER_FILE;
    assert!(
        stdout.contains(&format!(
            "job 1 succeeded: {total} rows read, {total} written, 0 rejected"
        )),
        "{stdout}"
    );

    let out = env.run(&["jobs", "show", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["job"]["state"], "succeeded");
    assert_eq!(shown["job"]["rows_written"], total);
    let shards = shown["shards"].as_array().unwrap();
    assert!(
        shards.len() >= FILES,
        "automatic parallelism split the files: {shards:?}"
    );
    assert!(shards
        .iter()
        .all(|s| s["state"] == "succeeded" && s["attempts"] == 1));
    let out = env.run(&["jobs", "list"]);
    assert!(
        text(&out.stdout).contains("profiles"),
        "{}",
        text(&out.stdout)
    );

    // Every row, served.
    let server = env.serve();
    let base = env.base();
    wait_healthy(&base).await;
    let client = reqwest::Client::new();
    let per_request = 1000;
    for start in (0..total).step_by(per_request) {
        let ids: Vec<String> = (start..start + per_request)
            .map(|i| format!("u{i}"))
            .collect();
        let answer: Value = client
            .post(format!("{base}/v1/features"))
            .json(&json!({"entities": {"user_id": ids}, "groups": ["profile"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let rows = answer["results"][0]["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(rows.len(), per_request);
        for (k, row) in rows.iter().enumerate() {
            let i = start + k;
            assert_eq!(row["status"], "present", "u{i}: {row}");
            assert_eq!(
                row["values"],
                json!([country(i), (i % 90) as i64, i as f64 / 4.0]),
                "u{i}"
            );
        }
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_started_beside_a_server_runs_on_it() {
    let env = Env::new();
    write_users(&env.dir.path().join("input/a.parquet"), 0, 20_000);
    assert!(env.run(&["apply"]).status.success());
    let server = env.serve();
    let base = env.base();
    wait_healthy(&base).await;

    // The server holds the embedded store: the backfill is submitted to it and followed.
    let out = env.run(&[
        "backfill",
        "profiles",
        "--from",
        "2023-01-01",
        "--to",
        "2030-01-01",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("submitted to {base}")), "{stderr}");
    assert!(
        stdout.contains("succeeded: 20000 rows read, 20000 written"),
        "{stdout}"
    );
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/v1/features"))
        .json(&json!({"entities": {"user_id": ["u19999"]}, "groups": ["profile"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["results"][0]["rows"][0]["values"],
        json!(["br", 19999 % 90, 19999.0 / 4.0])
    );

    // The jobs API and the job's page.
    let jobs: Value = reqwest::get(format!("{base}/v1/jobs?state=succeeded"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jobs["jobs"][0]["ingestion"], "profiles");
    let page = reqwest::get(format!("{base}/jobs/1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("succeeded") && page.contains("profiles"),
        "{page}"
    );
    // Bad requests are named.
    let bad = reqwest::Client::new()
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"ingestion": "profiles", "from": "soon"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad
        .text()
        .await
        .unwrap()
        .contains("from: `soon` is not a time"));
    drop(server);
}
