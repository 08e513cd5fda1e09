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
kind: FeatureService
name: ranker
features:
  - profile:*
  - clicks:article_id
"#,
                dir = dir.path().display()
            ),
        )
        .unwrap();
        Env {
            dir,
            listen: format!("127.0.0.1:{}", common::free_port()),
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

#[test]
fn a_training_set_gives_each_spine_row_the_features_as_they_were_at_its_time() {
    let env = Env::new();
    env.ok(&["apply"]);
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
    env.ok(&["backfill", "profiles"]);
    env.ok(&["backfill", "click_log"]);

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
