//! The `cellar` binary's repo commands, run as a user runs them.

use std::path::Path;
use std::process::{Command, Output};

fn cellar(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cellar"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--repo")
        .arg(dir.join("repo"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("run cellar")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join(name), body).unwrap();
}

const ENTITY: &str = "kind: Entity\nname: user\nkeys: [{ name: user_id, type: string }]\n";

const GROUP: &str = "kind: FeatureGroup
name: user_profile
entity: user
type: attribute
features:
  - { name: country, type: string }
  - { name: age, type: int64 }
";

#[test]
fn plan_reports_every_mistake_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "entities.yaml", ENTITY);
    write(
        dir.path(),
        "groups.yaml",
        "kind: FeatureGroup
name: user_profile
entity: usr
type: attribute
features:
  - { name: country, type: strin }
  - { name: country, type: int64 }
retension: { max_age: 30d }
---
kind: FeatureGroup
name: Bad-Name
entity: user
type: timeseries
features: []
serving: { soft_ttl: 10m, hard_ttl: 1m }
",
    );
    let out = cellar(dir.path(), &["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    let groups = dir.path().join("repo").join("groups.yaml");
    let at = |line: usize| format!("{}:{line}:", groups.display());
    // Every mistake, each with its file and line.
    for (line, needle) in [
        (3, "usr"),
        (6, "strin"),
        (7, "country"),
        (8, "retension"),
        (11, "Bad-Name"),
        (14, "features"),
        (15, "soft_ttl"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.contains(&at(line)) && l.contains(needle)),
            "no error at {} mentioning {needle:?} in:\n{err}",
            at(line)
        );
    }
    assert!(err.contains("did you mean `retention`"), "{err}");
}

#[test]
fn apply_is_idempotent_and_plan_names_breaking_changes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "entities.yaml", ENTITY);
    write(dir.path(), "groups.yaml", GROUP);

    let plan = cellar(dir.path(), &["plan"]);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let shown = text(&plan.stdout);
    assert!(shown.contains("+ FeatureGroup user_profile"), "{shown}");
    assert!(shown.contains("+ Entity user"), "{shown}");

    let first = cellar(dir.path(), &["apply"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(text(&first.stdout).contains("registry is at version 1"));

    let second = cellar(dir.path(), &["apply"]);
    assert!(second.status.success(), "{}", text(&second.stderr));
    let shown = text(&second.stdout);
    assert!(shown.contains("no changes"), "{shown}");
    assert!(shown.contains("stays at version 1"), "{shown}");

    // Change a feature's type and drop another: both are breaking, and named.
    write(
        dir.path(),
        "groups.yaml",
        &GROUP
            .replace("{ name: age, type: int64 }", "{ name: age, type: string }")
            .replace("  - { name: country, type: string }\n", ""),
    );
    let plan = cellar(dir.path(), &["plan"]);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let shown = text(&plan.stdout);
    assert!(shown.contains("~ FeatureGroup user_profile"), "{shown}");
    let breaking: Vec<&str> = shown.lines().filter(|l| l.contains("BREAKING")).collect();
    assert!(
        breaking
            .iter()
            .any(|l| l.contains("age") && l.contains("int64") && l.contains("string")),
        "{shown}"
    );
    assert!(breaking.iter().any(|l| l.contains("country")), "{shown}");

    assert!(
        shown.contains("refuses them unless given --allow-breaking"),
        "{shown}"
    );

    // Apply refuses them, naming each, and changes nothing.
    let refused = cellar(dir.path(), &["apply"]);
    assert!(!refused.status.success());
    let said = text(&refused.stderr);
    assert!(
        said.contains("apply refused: 2 breaking change(s)"),
        "{said}"
    );
    assert!(said.contains("`age` type changed"), "{said}");
    assert!(said.contains("--allow-breaking"), "{said}");
    let plan = cellar(dir.path(), &["plan"]);
    assert!(text(&plan.stdout).contains("BREAKING"));

    let third = cellar(dir.path(), &["apply", "--allow-breaking"]);
    assert!(
        text(&third.stdout).contains("registry is at version 2"),
        "{}{}",
        text(&third.stdout),
        text(&third.stderr)
    );
    let after = cellar(dir.path(), &["plan"]);
    assert!(
        text(&after.stdout).contains("no changes"),
        "{}",
        text(&after.stdout)
    );

    // Reordering lines is no change at all once applied.
    write(
        dir.path(),
        "groups.yaml",
        "kind: FeatureGroup\nname: user_profile\nentity: user\ntype: attribute\nfeatures:\n  \
         - { name: city, type: string }\n  - { name: age, type: string }\n",
    );
    let fourth = cellar(dir.path(), &["apply"]);
    assert!(fourth.status.success(), "{}", text(&fourth.stderr));
    assert!(text(&fourth.stdout).contains("feature `city` (string) added at position 3"));
    write(
        dir.path(),
        "groups.yaml",
        "kind: FeatureGroup\nname: user_profile\nentity: user\ntype: attribute\nfeatures:\n  \
         - { name: age, type: string }\n  - { name: city, type: string }\n",
    );
    let reordered = cellar(dir.path(), &["plan"]);
    assert!(
        text(&reordered.stdout).contains("no changes"),
        "{}",
        text(&reordered.stdout)
    );
}

#[test]
fn plan_rejects_a_depends_on_cycle_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "entities.yaml", ENTITY);
    write(dir.path(), "groups.yaml", GROUP);
    let ingestion = |name: &str, dep: &str| {
        format!(
            "kind: Ingestion\nname: {name}\nbatch: {{ files: {{ path: x.parquet }}, depends_on: [{dep}] }}\n\
             into: user_profile\nkey: user_id\nfeatures: {{ country: country }}\n"
        )
    };
    write(
        dir.path(),
        "jobs.yaml",
        &[
            ingestion("daily_a", "daily_c"),
            ingestion("daily_b", "daily_a"),
            ingestion("daily_c", "daily_b"),
        ]
        .join("---\n"),
    );
    let out = cellar(dir.path(), &["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("dependency cycle: daily_a -> daily_c -> daily_b -> daily_a")
            || err.contains("dependency cycle: daily_a -> daily_b -> daily_c -> daily_a"),
        "{err}"
    );
    // Nothing was applied.
    let apply = cellar(dir.path(), &["apply"]);
    assert_eq!(apply.status.code(), Some(1));
}

#[test]
fn plan_refuses_a_transform_that_is_not_one_query() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "entities.yaml", ENTITY);
    write(dir.path(), "groups.yaml", GROUP);
    let ingestion = |name: &str, sql: &str| {
        format!(
            "kind: Ingestion\nname: {name}\nbatch: {{ files: {{ path: x.parquet }}, transform: \"{sql}\" }}\n\
             into: user_profile\nkey: user_id\nfeatures: {{ country: country }}\n"
        )
    };
    write(
        dir.path(),
        "jobs.yaml",
        &[
            ingestion(
                "fine",
                "SELECT user_id, upper(country) AS country FROM source",
            ),
            ingestion("broken", "SELEC user_id FROM source"),
            ingestion("dropper", "DROP TABLE source"),
        ]
        .join("---\n"),
    );
    let out = cellar(dir.path(), &["plan"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("ingestion `broken`: the SQL transform does not parse"),
        "{err}"
    );
    assert!(
        err.contains("ingestion `dropper`: the SQL transform must be a SELECT query"),
        "{err}"
    );
    assert!(!err.contains("`fine`"), "{err}");
    let apply = cellar(dir.path(), &["apply"]);
    assert_eq!(apply.status.code(), Some(1));
}
