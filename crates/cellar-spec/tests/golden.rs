//! Golden tests: one case per entry of `tests/cases/`.
//!
//! - `NAME.yaml`, or a directory `NAME/` of `.yaml` files (read in name order), is a feature
//!   repo; `NAME.expected` holds either its errors, one `file:line: field: message` per line,
//!   or `ok` followed by a summary of the parsed repo.
//! - A directory `NAME/` holding `current.yaml` and `desired.yaml` is a plan case;
//!   `NAME.expected` holds the plan, one change per line and its details indented below it.
//!
//! Run with `UPDATE_GOLDEN=1` to rewrite the `.expected` files from the current output, then
//! review the diff.

use std::fs;
use std::path::{Path, PathBuf};

use cellar_spec::{parse_repo, plan, ChangeAction, FeatureExpr, FeatureRepo, IngestionSource};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases")
}

fn read_repo_files(paths: &[PathBuf], root: &Path) -> Vec<(String, String)> {
    paths
        .iter()
        .map(|p| {
            let name = p
                .strip_prefix(root)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned();
            let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, text)
        })
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// A readable summary of a valid repo: every spec and its main fields.
fn summarize(repo: &FeatureRepo) -> String {
    let mut out = String::from("ok\n");
    for e in &repo.entities {
        let keys: Vec<String> = e
            .keys
            .iter()
            .map(|k| format!("{}:{:?}", k.name, k.key_type))
            .collect();
        out += &format!("entity {} keys=[{}]\n", e.name, keys.join(", "));
    }
    for g in &repo.groups {
        let features: Vec<String> = g
            .features
            .iter()
            .map(|f| format!("{}:{}", f.name, f.value_type))
            .collect();
        out += &format!(
            "group {} entity={} kind={:?} features=[{}] retention={:?} serving={:?} max_record_bytes={}\n",
            g.name,
            g.entity,
            g.kind,
            features.join(", "),
            g.retention,
            g.serving,
            g.max_record_bytes
        );
    }
    for i in &repo.ingestions {
        let source = match &i.source {
            IngestionSource::Stream(s) => format!("stream {s:?}"),
            IngestionSource::Batch(b) => format!("batch {b:?}"),
        };
        let features: Vec<String> = i
            .features
            .iter()
            .map(|m| match &m.expr {
                FeatureExpr::Field(f) => format!("{}={f}", m.feature),
                FeatureExpr::Aggregate(a) => format!("{}={a:?}", m.feature),
                FeatureExpr::Expression(e) => format!("{}=expr({e})", m.feature),
            })
            .collect();
        out += &format!(
            "ingestion {} into={} key={:?} event_time={:?} source={source} features=[{}]\n",
            i.name,
            i.into,
            i.key,
            i.event_time,
            features.join(", ")
        );
    }
    for s in &repo.services {
        out += &format!("service {} features={:?}\n", s.name, s.features);
    }
    for ((kind, name), origin) in &repo.origins {
        out += &format!("origin {kind} {name} {}:{}\n", origin.file, origin.line);
    }
    out
}

fn parse_ok(files: &[(String, String)], what: &str) -> FeatureRepo {
    parse_repo(files).unwrap_or_else(|e| panic!("{what} must parse:\n{e}"))
}

fn plan_output(dir: &Path) -> String {
    let current = read_repo_files(&[dir.join("current.yaml")], dir);
    let desired = read_repo_files(&[dir.join("desired.yaml")], dir);
    let current = parse_ok(&current, "current.yaml");
    let desired = parse_ok(&desired, "desired.yaml");
    // As `cellar plan` shows it: the desired repo laid over the applied one.
    let desired = cellar_spec::evolve(&current, desired, |_| false, 2);
    let mut out = String::new();
    for change in plan(&current, &desired).changes {
        match change.action {
            ChangeAction::Add => out += &format!("add {} {}\n", change.kind, change.name),
            ChangeAction::Remove => out += &format!("remove {} {}\n", change.kind, change.name),
            ChangeAction::Modify { details, breaking } => {
                out += &format!("modify {} {}\n", change.kind, change.name);
                for d in details {
                    let tag = if breaking.contains(&d) {
                        "BREAKING"
                    } else {
                        "detail"
                    };
                    out += &format!("  {tag}: {d}\n");
                }
            }
        }
    }
    if out.is_empty() {
        out = "no changes\n".into();
    }
    out
}

fn case_output(path: &Path) -> String {
    if path.is_dir() && path.join("current.yaml").exists() {
        return plan_output(path);
    }
    let (files, root) = if path.is_dir() {
        (yaml_files(path), path.to_path_buf())
    } else {
        (vec![path.to_path_buf()], cases_dir())
    };
    match parse_repo(&read_repo_files(&files, &root)) {
        Ok(repo) => summarize(&repo),
        Err(errors) => errors.0.iter().map(|e| format!("{e}\n")).collect(),
    }
}

#[test]
fn golden_cases() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<PathBuf> = fs::read_dir(cases_dir())
        .expect("tests/cases")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir() || p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "golden cases missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let expected_path = case.with_extension("expected");
        let actual = case_output(case);
        if update {
            fs::write(&expected_path, &actual).expect("write expected");
            continue;
        }
        let expected = fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        if expected != actual {
            failures.push(format!(
                "== {}\n-- expected\n{expected}-- actual\n{actual}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
