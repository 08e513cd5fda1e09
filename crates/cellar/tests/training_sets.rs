//! `cellar training-set` end to end: batch data loaded by `cellar backfill` (kept in the
//! offline history on its way to the store), then a spine joined onto that history by the
//! CLI, each value checked by hand: as-of the spine's time, `max_age` and `max_records`
//! applied, nothing from the future.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

mod common;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const HOUR: i64 = 3_600_000;

struct Env {
    dir: tempfile::TempDir,
    listen: String,
    /// Settings every `cellar` process of the test gets in its environment.
    settings: Vec<(String, String)>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).unwrap();
        std::fs::write(
            repo.join("repo.yaml"),
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
retention: {{ max_age: 2h }}
---
kind: FeatureGroup
name: clicks
entity: user
type: timeseries
features:
  - {{ name: article_id, type: string }}
retention: {{ max_records: 2 }}
---
kind: Ingestion
name: profiles
batch: {{ files: {{ path: "{dir}/input/profiles.parquet" }} }}
into: profile
key: user_id
event_time: ts
features: {{ country: country, age: age }}
---
kind: Ingestion
name: click_log
batch: {{ files: {{ path: "{dir}/input/clicks.parquet" }} }}
into: clicks
key: user_id
event_time: ts
features: {{ article_id: article_id }}
---
kind: FeatureGroup
name: signals
type: on_demand
request:
  - {{ name: bonus, type: int64 }}
features:
  - {{ name: age_plus_bonus, type: int64, expr: profile.age + bonus }}
  - {{ name: clicks_seen, type: int64, expr: array_length(clicks.article_id) }}
  - name: hours_since_profile
    type: int64
    expr: (to_unixtime(now()) - to_unixtime(profile.event_time)) / 3600
  - {{ name: is_u1, type: bool, expr: user_id = 'u1' }}
---
kind: FeatureGroup
name: derived
type: on_demand
features:
  - {{ name: twice, type: int64, expr: signals.age_plus_bonus * 2 }}
---
kind: FeatureGroup
name: credit_signals
type: on_demand
sources:
  - name: credit
    url: "http://127.0.0.1:9/score"
    keys: [user_id]
    timeout: 100ms
    fields:
      - {{ name: score, type: float64 }}
features:
  - {{ name: doubled_score, type: float64, expr: credit.score * 2 }}
---
kind: FeatureService
name: ranker
features:
  - profile:*
  - clicks:article_id
---
kind: FeatureService
name: ranker_logged
features:
  - profile:*
  - clicks:article_id
  - signals:*
logging: {{ sample_rate: 1 }}
---
kind: FeatureService
name: ranker_live
features:
  - derived:twice
  - signals:*
  - profile:country
"#,
                dir = dir.path().display()
            ),
        )
        .unwrap();
        Env {
            dir,
            listen: format!("127.0.0.1:{}", common::free_port()),
            settings: Vec::new(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cellar"))
            .args(args)
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--repo")
            .arg(self.dir.path().join("repo"))
            .env("RUST_LOG", "warn")
            // Nothing answers there: backfills run in the CLI's own process.
            .env("CELLAR_SERVER__LISTEN", &self.listen)
            .envs(self.settings.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run cellar")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cellar {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

fn times(ms: &[i64]) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(ms.to_vec()).with_timezone("UTC"))
}

fn strings(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

fn read_parquet(path: &str) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn string_at(column: &ArrayRef, row: usize) -> Option<String> {
    (!column.is_null(row)).then(|| column.as_string::<i32>().value(row).to_owned())
}

fn list_at(column: &ArrayRef, row: usize) -> Option<Vec<String>> {
    let list = column.as_list::<i32>();
    (!list.is_null(row)).then(|| {
        let items = list.value(row);
        let items = items.as_string::<i32>();
        (0..items.len())
            .map(|i| items.value(i).to_owned())
            .collect()
    })
}

/// Applies the repo and loads, through `cellar backfill`: u1's profile at T0+1h (KR, 30) and
/// T0+3h (JP, 31), u2's at T0+2h (US, 40); u1's clicks a1, a2, a3 at T0+1h, +2h, +4h.
fn load_sample(env: &Env) {
    env.ok(&["apply"]);
    write_inputs(env);
    env.ok(&["backfill", "profiles"]);
    env.ok(&["backfill", "click_log"]);
}

/// The sample's input files.
fn write_inputs(env: &Env) {
    write_parquet(
        &env.dir.path().join("input/profiles.parquet"),
        vec![
            ("user_id", strings(&["u1", "u1", "u2"])),
            ("ts", times(&[T0 + HOUR, T0 + 3 * HOUR, T0 + 2 * HOUR])),
            ("country", strings(&["KR", "JP", "US"])),
            ("age", Arc::new(Int64Array::from(vec![30, 31, 40]))),
        ],
    );
    write_parquet(
        &env.dir.path().join("input/clicks.parquet"),
        vec![
            ("user_id", strings(&["u1", "u1", "u1"])),
            ("ts", times(&[T0 + HOUR, T0 + 2 * HOUR, T0 + 4 * HOUR])),
            ("article_id", strings(&["a1", "a2", "a3"])),
        ],
    );
}

#[test]
fn a_training_set_gives_each_spine_row_the_features_as_they_were_at_its_time() {
    let env = Env::new();
    load_sample(&env);
    check_ranker_set(&env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3-compatible server (CELLAR_TEST_S3); scripts/test.sh starts it"]
async fn the_history_can_be_kept_in_an_s3_bucket() {
    let bucket = common::TestBucket::create().await;
    let mut env = Env::new();
    env.settings = bucket.env();
    // A bucket that does not exist stops the first command, naming it.
    env.settings.push((
        "CELLAR_HISTORY__PATH".into(),
        format!("s3://{}-missing/history", bucket.name),
    ));
    env.ok(&["apply"]);
    write_inputs(&env);
    let out = env.run(&["backfill", "profiles"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the bucket does not exist"), "{stderr}");
    env.settings.pop();

    env.settings.push((
        "CELLAR_HISTORY__PATH".into(),
        format!("s3://{}/some/history/", bucket.name),
    ));
    let env = tokio::task::spawn_blocking(move || {
        load_sample(&env);
        check_ranker_set(&env);
        env
    })
    .await
    .unwrap();
    // The files are in the bucket, by group and date, and none on the machine.
    let storage = bucket.history("some/history");
    let day = T0 / 86_400_000;
    for group in ["profile", "clicks"] {
        let files = tokio::task::spawn_blocking({
            let storage = storage.clone();
            move || cellar_history::files::list(&storage, group, (day, day)).unwrap()
        })
        .await
        .unwrap();
        assert!(!files.is_empty(), "no {group} history in the bucket");
        assert!(files
            .iter()
            .all(|(_, key)| key.starts_with(&format!("{group}/date=2026-01-01/"))));
    }
    assert!(!env.dir.path().join("data/history").exists());
}

/// The training set of `ranker` over a spine of eight rows of the sample, checked row by row.
fn check_ranker_set(env: &Env) {
    // (user, time, label): the expected features follow each row below.
    let rfc = |ms: i64| cellar_spec::value::format_timestamp(ms);
    let spine = [
        ("u1", T0 + HOUR / 2, 0),
        ("u1", T0 + HOUR, 1),
        ("u1", T0 + 5 * HOUR / 2, 2),
        ("u1", T0 + 3 * HOUR, 3),
        ("u1", T0 + 6 * HOUR, 4),
        ("u2", T0 + 3 * HOUR, 5),
        ("u3", T0 + 3 * HOUR, 6),
        ("u2", T0 + HOUR, 7),
    ];
    let mut csv = String::from("user_id,event_timestamp,label\n");
    for (user, at, label) in spine {
        csv.push_str(&format!("{user},{},{label}\n", rfc(at)));
    }
    std::fs::write(env.path("spine.csv"), csv).unwrap();
    let out = env.path("set.parquet");
    let report = env.ok(&[
        "training-set",
        "--spine",
        &env.path("spine.csv"),
        "--service",
        "ranker",
        "--out",
        &out,
    ]);
    assert!(report.contains("8 rows x 3 features"), "{report}");

    let set = read_parquet(&out);
    let names: Vec<String> = set
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "user_id",
            "event_timestamp",
            "label",
            "profile__country",
            "profile__age",
            "clicks__article_id"
        ]
    );
    let country = set.column_by_name("profile__country").unwrap();
    let age = set.column_by_name("profile__age").unwrap();
    let clicks = set.column_by_name("clicks__article_id").unwrap();
    let labels = set
        .column_by_name("label")
        .unwrap()
        .as_primitive::<Int64Type>();
    let s = |v: &str| Some(v.to_owned());
    let l = |v: &[&str]| Some(v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    #[allow(clippy::type_complexity)]
    let expected: [(Option<String>, Option<i64>, Option<Vec<String>>); 8] = [
        // Before anything was recorded.
        (None, None, None),
        // At a record's own time: it counts.
        (s("KR"), Some(30), l(&["a1"])),
        // 1.5 h after the profile, within its 2 h max_age; clicks newest first.
        (s("KR"), Some(30), l(&["a2", "a1"])),
        (s("JP"), Some(31), l(&["a2", "a1"])),
        // 3 h after the newest profile: past max_age. Only max_records clicks.
        (None, None, l(&["a3", "a2"])),
        (s("US"), Some(40), None),
        // An entity never recorded.
        (None, None, None),
        // Before u2's only profile: never a value from the future.
        (None, None, None),
    ];
    for (row, (country_want, age_want, clicks_want)) in expected.into_iter().enumerate() {
        assert_eq!(labels.value(row), row as i64, "labels stay with their rows");
        assert_eq!(string_at(country, row), country_want, "row {row} country");
        let age_got = (!age.is_null(row)).then(|| age.as_primitive::<Int64Type>().value(row));
        assert_eq!(age_got, age_want, "row {row} age");
        assert_eq!(list_at(clicks, row), clicks_want, "row {row} clicks");
    }

    // Features by name, into CSV.
    let csv_out = env.path("set.csv");
    env.ok(&[
        "training-set",
        "--spine",
        &env.path("spine.csv"),
        "-f",
        "profile:age",
        "--out",
        &csv_out,
    ]);
    let text = std::fs::read_to_string(&csv_out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "user_id,event_timestamp,label,profile__age");
    assert!(lines[2].ends_with(",1,30"), "{text}");
    assert!(lines[1].ends_with(",0,"), "{text}");
}

fn int_at(column: &ArrayRef, row: usize) -> Option<i64> {
    (!column.is_null(row)).then(|| column.as_primitive::<Int64Type>().value(row))
}

#[test]
fn on_demand_features_are_computed_from_the_inputs_as_they_were_at_each_row() {
    let env = Env::new();
    load_sample(&env);
    let rfc = |ms: i64| cellar_spec::value::format_timestamp(ms);
    // (user, time, the request's `bonus`).
    let spine = [
        ("u1", T0 + HOUR / 2, 0),
        ("u1", T0 + HOUR, 10),
        ("u1", T0 + 5 * HOUR / 2, 20),
        ("u1", T0 + 3 * HOUR, 30),
        ("u1", T0 + 6 * HOUR, 40),
        ("u2", T0 + 3 * HOUR, 50),
        ("u3", T0 + 3 * HOUR, 60),
        ("u2", T0 + HOUR, 70),
    ];
    let mut csv = String::from("user_id,event_timestamp,bonus\n");
    for (user, at, bonus) in spine {
        csv.push_str(&format!("{user},{},{bonus}\n", rfc(at)));
    }
    std::fs::write(env.path("spine.csv"), csv).unwrap();
    let out = env.path("set.parquet");
    let report = env.ok(&[
        "training-set",
        "--spine",
        &env.path("spine.csv"),
        "--service",
        "ranker_live",
        "--out",
        &out,
    ]);
    assert!(report.contains("8 rows x 6 features"), "{report}");
    let set = read_parquet(&out);
    let names: Vec<String> = set
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    // In the service's order, though `derived` reads `signals`; `profile.age` and the clicks
    // are read, not output.
    assert_eq!(
        names,
        [
            "user_id",
            "event_timestamp",
            "bonus",
            "derived__twice",
            "signals__age_plus_bonus",
            "signals__clicks_seen",
            "signals__hours_since_profile",
            "signals__is_u1",
            "profile__country",
        ]
    );
    let column = |name: &str| set.column_by_name(name).unwrap().clone();
    let (twice, plus, seen, hours) = (
        column("derived__twice"),
        column("signals__age_plus_bonus"),
        column("signals__clicks_seen"),
        column("signals__hours_since_profile"),
    );
    let is_u1 = column("signals__is_u1");
    // (age + bonus, clicks seen, whole hours since the profile's event time).
    let expected: [(Option<i64>, Option<i64>, Option<i64>); 8] = [
        // Nothing recorded yet.
        (None, None, None),
        // At the records' own time: `now()` is the row's time, so 0 hours.
        (Some(40), Some(1), Some(0)),
        (Some(50), Some(2), Some(1)),
        (Some(61), Some(2), Some(0)),
        // The profile is past its max_age; the clicks hold at most max_records.
        (None, Some(2), None),
        (Some(90), None, Some(1)),
        (None, None, None),
        // Never a value from the future.
        (None, None, None),
    ];
    for (row, (plus_want, seen_want, hours_want)) in expected.into_iter().enumerate() {
        assert_eq!(int_at(&plus, row), plus_want, "row {row} age_plus_bonus");
        assert_eq!(
            int_at(&twice, row),
            plus_want.map(|v| v * 2),
            "row {row} twice"
        );
        assert_eq!(int_at(&seen, row), seen_want, "row {row} clicks_seen");
        assert_eq!(int_at(&hours, row), hours_want, "row {row} hours");
        assert_eq!(
            is_u1.as_boolean().value(row),
            spine[row].0 == "u1",
            "row {row} is_u1"
        );
    }

    // A request field the spine lacks is named.
    std::fs::write(
        env.path("nobonus.csv"),
        "user_id,event_timestamp\nu1,2026-01-01T01:00:00Z\n",
    )
    .unwrap();
    let refused = env.run(&[
        "training-set",
        "--spine",
        &env.path("nobonus.csv"),
        "-f",
        "signals:age_plus_bonus",
        "--out",
        &out,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("reads the request data field `bonus`"),
        "{stderr}"
    );
    // A feature that reads nothing the spine lacks is computed without it.
    env.ok(&[
        "training-set",
        "--spine",
        &env.path("nobonus.csv"),
        "-f",
        "signals:clicks_seen",
        "--out",
        &out,
    ]);
    assert_eq!(int_at(&read_parquet(&out).column(2).clone(), 0), Some(1));
}

#[test]
fn a_bad_training_set_request_is_refused_naming_what_is_wrong() {
    let env = Env::new();
    env.ok(&["apply"]);
    std::fs::write(
        env.path("spine.csv"),
        "user_id,ts\nu1,2026-01-01T00:00:00Z\n",
    )
    .unwrap();
    let refused = |args: &[&str], needle: &str| {
        let out = env.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    };
    let spine = env.path("spine.csv");
    let out = env.path("out.parquet");
    refused(
        &[
            "training-set",
            "--spine",
            &spine,
            "--service",
            "ranker",
            "--out",
            &out,
        ],
        "no timestamp column `event_timestamp`",
    );
    refused(
        &[
            "training-set",
            "--spine",
            &spine,
            "--timestamp-column",
            "ts",
            "--service",
            "nope",
            "--out",
            &out,
        ],
        "no feature service `nope`",
    );
    refused(
        &[
            "training-set",
            "--spine",
            &spine,
            "--timestamp-column",
            "ts",
            "-f",
            "profile:agee",
            "--out",
            &out,
        ],
        "group `profile` has no feature `agee`",
    );
    refused(
        &[
            "training-set",
            "--spine",
            &spine,
            "--timestamp-column",
            "ts",
            "--out",
            &out,
        ],
        "name a feature service",
    );
    refused(
        &[
            "training-set",
            "--spine",
            &spine,
            "--timestamp-column",
            "ts",
            "-f",
            "profile:age",
            "--top-n",
            "0",
            "--out",
            &out,
        ],
        "--top-n: 0 is out of range",
    );
    std::fs::write(env.path("nokey.csv"), "ts\n2026-01-01T00:00:00Z\n").unwrap();
    refused(
        &[
            "training-set",
            "--spine",
            &env.path("nokey.csv"),
            "--timestamp-column",
            "ts",
            "-f",
            "profile:age",
            "--out",
            &out,
        ],
        "the spine has no column `user_id`",
    );
    refused(
        &[
            "training-set",
            "--spine",
            &spine,
            "--timestamp-column",
            "ts",
            "-f",
            "credit_signals:doubled_score",
            "--out",
            &out,
        ],
        "reads the external source `credit`, whose past answers Cellar does not keep",
    );
}

#[test]
fn processes_of_one_role_stage_apart_and_a_later_one_takes_over_a_free_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = cellar::config::Config {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let staging = |name: &str| dir.path().join("history-staging").join(name).exists();
    let first = cellar::node::open_history(&config, "worker")
        .unwrap()
        .unwrap();
    let second = cellar::node::open_history(&config, "worker")
        .unwrap()
        .unwrap();
    assert!(staging("worker") && staging("worker-1"));
    drop(first);
    // The first one's log is free again: the next process takes it, not a third one.
    let _third = cellar::node::open_history(&config, "worker")
        .unwrap()
        .unwrap();
    assert!(!staging("worker-2"));
    drop(second);
}

/// A node serving `env`'s repo from its data directory, configured by `configure`.
async fn serve(env: &Env, configure: impl FnOnce(&mut cellar::config::Config)) -> String {
    let mut config = cellar::config::Config {
        data_dir: env.dir.path().join("data"),
        repo: env.dir.path().join("repo"),
        ..Default::default()
    };
    configure(&mut config);
    let registry = cellar_registry::Registry::open(&config.registry_url())
        .await
        .unwrap();
    registry
        .apply(&cellar::repo::load_repo(&config.repo).unwrap())
        .await
        .unwrap();
    let node = cellar::node::Node::open(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(node.serve(listener, None, std::future::pending()));
    format!("http://{addr}")
}

/// Polls training set `id` until it has finished, and returns it.
async fn finished(client: &reqwest::Client, base: &str, id: u64) -> serde_json::Value {
    for _ in 0..600 {
        let job: serde_json::Value = client
            .get(format!("{base}/v1/training-sets/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ["succeeded", "failed", "cancelled"].contains(&job["state"].as_str().unwrap()) {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("training set {id} did not finish in 60 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_training_set_job_joins_an_uploaded_spine_onto_what_the_server_wrote() {
    let env = Env::new();
    let base = serve(&env, |c| c.history.max_spine_bytes = 4096).await;
    let client = reqwest::Client::new();
    let push = |group: &str, records: serde_json::Value| {
        let request = client
            .post(format!("{base}/v1/push"))
            .json(&serde_json::json!({ "group": group, "records": records }));
        async move {
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        }
    };
    push(
        "profile",
        serde_json::json!([
            {"entity": {"user_id": "u1"}, "event_time": T0 + HOUR, "features": {"country": "KR", "age": 30}},
            {"entity": {"user_id": "u1"}, "event_time": T0 + 3 * HOUR, "features": {"country": "JP", "age": 31}},
        ]),
    )
    .await;
    push(
        "clicks",
        serde_json::json!([
            {"entity": {"user_id": "u1"}, "event_time": T0 + HOUR, "features": {"article_id": "a1"}},
            {"entity": {"user_id": "u1"}, "event_time": T0 + 2 * HOUR, "features": {"article_id": "a2"}},
        ]),
    )
    .await;
    let rfc = |ms: i64| cellar_spec::value::format_timestamp(ms);
    let spine = format!(
        "user_id,event_timestamp,bonus\nu1,{},1\nu1,{},2\nu2,{},3\n",
        rfc(T0 + HOUR / 2),
        rfc(T0 + 5 * HOUR / 2),
        rfc(T0 + 3 * HOUR)
    );
    let submit = |query: &str, content_type: &str, body: String| {
        client
            .post(format!("{base}/v1/training-sets?{query}"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    // Written a moment ago, not converted yet: the job converts what is staged first.
    let resp = submit("service=ranker_live", "text/csv", spine.clone())
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let job: serde_json::Value = resp.json().await.unwrap();
    let id = job["id"].as_u64().unwrap();
    let job = finished(&client, &base, id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["rows"], 3);
    assert_eq!(job["columns"], 6);
    let output = client
        .get(format!("{base}{}", job["output"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(output.status(), 200);
    let bytes = output.bytes().await.unwrap();
    let set: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let set = arrow_select::concat::concat_batches(&set[0].schema(), &set).unwrap();
    let plus = set.column_by_name("signals__age_plus_bonus").unwrap();
    let country = set.column_by_name("profile__country").unwrap();
    let seen = set.column_by_name("signals__clicks_seen").unwrap();
    assert_eq!(
        (0..3).map(|r| int_at(plus, r)).collect::<Vec<_>>(),
        [None, Some(32), None]
    );
    assert_eq!(
        (0..3).map(|r| string_at(country, r)).collect::<Vec<_>>(),
        [None, Some("KR".to_owned()), None]
    );
    assert_eq!(
        (0..3).map(|r| int_at(seen, r)).collect::<Vec<_>>(),
        [None, Some(2), None]
    );
    let listed: serde_json::Value = client
        .get(format!("{base}/v1/training-sets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["training_sets"][0]["id"], id);

    // Refusals, each naming what is wrong.
    let refused = |status: u16, needle: &'static str| {
        move |resp: reqwest::Response| async move {
            assert_eq!(resp.status().as_u16(), status);
            let text = resp.text().await.unwrap();
            assert!(text.contains(needle), "{text}");
        }
    };
    refused(415, "Content-Type")(
        submit("service=ranker", "application/json", spine.clone())
            .await
            .unwrap(),
    )
    .await;
    refused(400, "group `profile` has no feature `agee`")(
        submit("features=profile:agee", "text/csv", spine.clone())
            .await
            .unwrap(),
    )
    .await;
    refused(400, "top_n: 0 is out of range")(
        submit("service=ranker&top_n=0", "text/csv", spine.clone())
            .await
            .unwrap(),
    )
    .await;
    refused(400, "the spine is empty")(
        submit("service=ranker", "text/csv", String::new())
            .await
            .unwrap(),
    )
    .await;
    refused(413, "")(
        submit("service=ranker", "text/csv", spine.repeat(100))
            .await
            .unwrap(),
    )
    .await;
    // A spine the join refuses fails the job with the reason.
    let resp = submit(
        "features=signals:age_plus_bonus",
        "text/csv",
        "user_id,event_timestamp\nu1,2026-01-01T00:00:00Z\n".into(),
    )
    .await
    .unwrap();
    let failed = resp.json::<serde_json::Value>().await.unwrap()["id"]
        .as_u64()
        .unwrap();
    let job = finished(&client, &base, failed).await;
    assert_eq!(job["state"], "failed");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("reads the request data field `bonus`"),
        "{job}"
    );
    refused(409, "only a succeeded one has an output")(
        client
            .get(format!("{base}/v1/training-sets/{failed}/output"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    refused(409, "only a waiting or running one can be cancelled")(
        client
            .post(format!("{base}/v1/training-sets/{id}/cancel"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let deleted = client
        .delete(format!("{base}/v1/training-sets/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    refused(404, "no training set")(
        client
            .get(format!("{base}/v1/training-sets/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(!env
        .dir
        .path()
        .join(format!("data/training-sets/{id}"))
        .exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_server_fails_the_job_it_was_running_and_runs_the_waiting_ones() {
    let env = Env::new();
    let jobs = env.dir.path().join("data/training-sets");
    let record = |id: u64, state: &str| {
        serde_json::json!({
            "id": id, "state": state, "service": null, "features": ["profile:age"],
            "timestamp_column": "ts", "top_n": 10, "spine_format": "csv", "spine_bytes": 30,
            "submitted_by": "anonymous", "submitted_at": "2026-01-01T00:00:00Z",
            "started_at": null, "finished_at": null, "rows": null, "columns": null,
            "output_bytes": null, "error": null
        })
    };
    for (id, state) in [(1, "running"), (2, "submitted")] {
        std::fs::create_dir_all(jobs.join(id.to_string())).unwrap();
        std::fs::write(
            jobs.join(format!("{id}/job.json")),
            record(id, state).to_string(),
        )
        .unwrap();
        std::fs::write(
            jobs.join(format!("{id}/spine.csv")),
            "user_id,ts\nu1,2026-01-01T00:00:00Z\n",
        )
        .unwrap();
    }
    let base = serve(&env, |_| {}).await;
    let client = reqwest::Client::new();
    let interrupted = finished(&client, &base, 1).await;
    assert_eq!(interrupted["state"], "failed");
    assert!(interrupted["error"]
        .as_str()
        .unwrap()
        .contains("the server stopped while it ran"));
    let waiting = finished(&client, &base, 2).await;
    assert_eq!(waiting["state"], "succeeded", "{waiting}");
    assert_eq!(waiting["rows"], 1);
    // Ids go on from the highest recorded.
    let resp = client
        .post(format!(
            "{base}/v1/training-sets?features=profile:age&timestamp_column=ts"
        ))
        .header("content-type", "text/csv")
        .body("user_id,ts\nu1,2026-01-01T00:00:00Z\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap()["id"], 3);
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn logged_answers_give_labels_what_was_served_and_show_online_offline_skew() {
    let env = Env::new();
    let base = serve(&env, |c| c.history.convert_interval_secs = 1).await;
    let client = reqwest::Client::new();
    let push = |group: &str, records: serde_json::Value| {
        let request = client
            .post(format!("{base}/v1/push"))
            .json(&serde_json::json!({ "group": group, "records": records }));
        async move {
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
        }
    };
    let early = now_ms() - 60_000;
    push(
        "profile",
        serde_json::json!([{"entity": {"user_id": "u1"}, "event_time": early,
                            "features": {"country": "KR", "age": 30}}]),
    )
    .await;
    push(
        "clicks",
        serde_json::json!([{"entity": {"user_id": "u1"}, "event_time": early,
                            "features": {"article_id": "a1"}}]),
    )
    .await;
    let read = |body: serde_json::Value, request_id: Option<&str>| {
        let mut request = client.post(format!("{base}/v1/features")).json(&body);
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        async move {
            let resp = request.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<serde_json::Value>().await.unwrap()
        }
    };
    let before = now_ms();
    let answer = read(
        serde_json::json!({"feature_service": "ranker_logged",
                           "entities": {"user_id": ["u1", "u2"]},
                           "request_data": {"bonus": [5, 6]}}),
        Some("req-1"),
    )
    .await;
    assert_eq!(answer["request_id"], "req-1", "{answer}");
    let answer = read(
        serde_json::json!({"feature_service": "ranker_logged",
                           "entities": {"user_id": ["u3"]},
                           "request_data": {"bonus": [7]}}),
        None,
    )
    .await;
    let generated = answer["request_id"].as_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32, "{answer}");
    // A service that does not log answers without a request id.
    let unlogged = read(
        serde_json::json!({"feature_service": "ranker", "entities": {"user_id": ["u1"]}}),
        None,
    )
    .await;
    assert!(unlogged.get("request_id").is_none(), "{unlogged}");
    // Late records, with event times before the first answer was served: online served what
    // it had, offline knows better.
    push(
        "profile",
        serde_json::json!([
            {"entity": {"user_id": "u1"}, "event_time": before - 1, "features": {"country": "JP", "age": 99}},
            {"entity": {"user_id": "u2"}, "event_time": before - 1, "features": {"country": "US", "age": 40}},
        ]),
    )
    .await;

    // The consistency check, once the history has converted what was logged and pushed.
    let mut report = serde_json::Value::Null;
    for _ in 0..60 {
        let out = env.run(&["consistency", "--service", "ranker_logged", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        report = serde_json::from_slice(&out.stdout).unwrap();
        let age = report["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["column"] == "profile__age")
            .cloned();
        if report["rows"] == 3 && age.is_some_and(|a| a["mismatched"] == 1 && a["missing"] == 1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let feature = |column: &str| {
        report["features"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["column"] == column)
            .cloned()
            .unwrap_or_else(|| panic!("no {column} in {report}"))
    };
    assert_eq!(report["rows"], 3, "{report}");
    // (matched, mismatched, missing, extra) of the 3 logged rows: u1, u2, u3.
    for (column, want) in [
        ("profile__age", (1, 1, 1, 0)),
        ("profile__country", (1, 1, 1, 0)),
        ("clicks__article_id", (3, 0, 0, 0)),
        ("signals__age_plus_bonus", (1, 1, 1, 0)),
        ("signals__hours_since_profile", (2, 0, 1, 0)),
        ("signals__is_u1", (3, 0, 0, 0)),
        ("signals__clicks_seen", (3, 0, 0, 0)),
    ] {
        let f = feature(column);
        let got = (
            f["matched"].as_u64().unwrap(),
            f["mismatched"].as_u64().unwrap(),
            f["missing"].as_u64().unwrap(),
            f["extra"].as_u64().unwrap(),
        );
        assert_eq!(got, want, "{column}: {f}");
        assert_eq!(f["checked"], 3);
    }
    let age = feature("profile__age");
    let mismatch = age["examples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "mismatched")
        .unwrap()
        .clone();
    assert_eq!(
        (
            mismatch["request_id"].as_str(),
            mismatch["online"].as_str(),
            mismatch["offline"].as_str()
        ),
        (Some("req-1"), Some("30"), Some("99")),
        "{age}"
    );

    // Labels joined by request id (and key), and by key and time.
    std::fs::write(
        env.path("labels.csv"),
        format!(
            "request_id,user_id,clicked\nreq-1,u1,1\nreq-1,u2,0\n{generated},u3,1\nnope,u1,0\n"
        ),
    )
    .unwrap();
    let out = env.path("logged.parquet");
    let report = env.ok(&[
        "training-set",
        "--logged",
        "ranker_logged",
        "--labels",
        &env.path("labels.csv"),
        "--out",
        &out,
    ]);
    assert!(report.contains("3 found what was served"), "{report}");
    let set = read_parquet(&out);
    let age = set.column_by_name("profile__age").unwrap();
    let plus = set.column_by_name("signals__age_plus_bonus").unwrap();
    let status = set.column_by_name("profile__status").unwrap();
    assert_eq!(
        (0..4).map(|r| int_at(age, r)).collect::<Vec<_>>(),
        [Some(30), None, None, None],
        "what was served, not what the history says now"
    );
    assert_eq!(int_at(plus, 0), Some(35));
    assert_eq!(
        (0..4).map(|r| string_at(status, r)).collect::<Vec<_>>(),
        [s("present"), s("not_found"), s("not_found"), None]
    );
    let rfc = |ms: i64| cellar_spec::value::format_timestamp(ms);
    std::fs::write(
        env.path("by_time.csv"),
        format!(
            "user_id,event_timestamp,clicked\nu1,{},1\nu1,{},0\n",
            rfc(now_ms() + 3_600_000),
            rfc(before - 1000)
        ),
    )
    .unwrap();
    env.ok(&[
        "training-set",
        "--logged",
        "ranker_logged",
        "--labels",
        &env.path("by_time.csv"),
        "--out",
        &out,
    ]);
    let set = read_parquet(&out);
    let age = set.column_by_name("profile__age").unwrap();
    assert_eq!(
        (0..2).map(|r| int_at(age, r)).collect::<Vec<_>>(),
        [Some(30), None],
        "the newest answer served at or before each label, never a later one"
    );
    // Labels a request logged several rows for need the key to tell them apart.
    std::fs::write(env.path("ambiguous.csv"), "request_id,clicked\nreq-1,1\n").unwrap();
    let refused = env.run(&[
        "training-set",
        "--logged",
        "ranker_logged",
        "--labels",
        &env.path("ambiguous.csv"),
        "--out",
        &out,
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("logged 2 rows"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (CELLAR_TEST_POSTGRES); scripts/test.sh starts it"]
async fn a_spine_can_be_a_query_on_postgresql() {
    use sqlx::{Connection as _, Executor as _};
    let admin = common::service_address("CELLAR_TEST_POSTGRES", "PostgreSQL");
    let table = format!("spine_{:08x}", rand::random::<u32>());
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    conn.execute(
        format!(
            "CREATE TABLE {table} (user_id text, event_timestamp timestamptz, label int4, \
             payload jsonb)"
        )
        .as_str(),
    )
    .await
    .unwrap();
    conn.execute(
        format!(
            "INSERT INTO {table} VALUES ('u1', '2026-01-01T01:00:00Z', 1, '{{}}'), \
             ('u1', '2026-01-01T03:00:00Z', 0, '{{}}'), ('u2', '2026-01-01T00:30:00Z', 1, '{{}}')"
        )
        .as_str(),
    )
    .await
    .unwrap();
    let env = Env::new();
    load_sample(&env);
    let out = env.path("set.parquet");
    let query = format!("SELECT user_id, event_timestamp, label FROM {table} ORDER BY label, user_id, event_timestamp");
    // The password, were there one, would be a reference read from the environment.
    let result = std::panic::AssertUnwindSafe(async {
        let report = env.ok(&[
            "training-set",
            "--spine-sql",
            &query,
            "--spine-db",
            &admin,
            "-f",
            "profile:age",
            "--out",
            &out,
        ]);
        assert!(report.contains("spine: 3 rows from the query"), "{report}");
        let set = read_parquet(&out);
        let age = set.column_by_name("profile__age").unwrap();
        // Ordered by label, user: (u1 at 3h, label 0), (u1 at 1h, 1), (u2 at 0.5h, 1).
        assert_eq!(
            (0..3).map(|r| int_at(age, r)).collect::<Vec<_>>(),
            [Some(31), Some(30), None]
        );
        // A column of a type Cellar does not read is named.
        let refused = env.run(&[
            "training-set",
            "--spine-sql",
            &format!("SELECT * FROM {table}"),
            "--spine-db",
            &admin,
            "-f",
            "profile:age",
            "--out",
            &out,
        ]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("column `payload` is of PostgreSQL type jsonb"),
            "{stderr}"
        );
        assert!(
            !env.dir
                .path()
                .join("data/tmp")
                .read_dir()
                .unwrap()
                .any(|_| true),
            "the query's spine file is removed"
        );
    });
    let outcome = futures::FutureExt::catch_unwind(result).await;
    conn.execute(format!("DROP TABLE {table}").as_str())
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}
