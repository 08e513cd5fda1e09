//! The registry's behaviour, run against every backend: each check is a test on SQLite (in a
//! temp dir) and one on PostgreSQL, at the admin URL `CELLAR_TEST_POSTGRES` holds, such as
//! `postgres://postgres@127.0.0.1:5432/postgres` (`scripts/test.sh` starts a server and sets
//! it). The PostgreSQL tests are ignored by a plain `cargo test`; run with `--include-ignored`
//! and without the variable, they fail. Each PostgreSQL run gets a fresh database with a unique
//! name, dropped afterwards, so parallel tests and runs never share state.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cellar_registry::{
    GroupWrites, Job, JobFilter, JobKind, JobState, NewJob, PlannedShard, Registry, RegistryError,
    ShardResult, WatermarkValue,
};
use cellar_spec::{
    Entity, EntityKeyField, EventFormat, Feature, FeatureExpr, FeatureGroup, FeatureMapping,
    FeatureRepo, FeatureSelection, FeatureService, GroupKind, Ingestion, IngestionSource, KeyType,
    OnDemandFeature, OnDemandGroup, Origin, RequestField, Retention, ScalarType, ServingPolicy,
    SpecKind, StreamSource, ValueType,
};
use sqlx::Connection;

const POSTGRES_ENV: &str = "CELLAR_TEST_POSTGRES";

/// Generates the tests of `$check`, an `async fn(url: String)` that checks an empty registry
/// database at `url`: `$check::sqlite`, a plain test, and `$check::postgres`, ignored by a plain
/// `cargo test` (there is no server to give it) and failing, when asked for, without one.
macro_rules! on_every_backend {
    ($check:ident) => {
        mod $check {
            #[tokio::test]
            async fn sqlite() {
                super::on_sqlite(super::$check).await;
            }

            #[tokio::test]
            #[ignore = "needs PostgreSQL (CELLAR_TEST_POSTGRES); scripts/test.sh starts it"]
            async fn postgres() {
                super::on_postgres(stringify!($check), super::$check).await;
            }
        }
    };
}

/// Runs `body` with the URL of an empty SQLite registry database in a temp dir.
async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("create a temp dir");
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    body(url).await;
}

/// Runs `body` with the URL of a fresh PostgreSQL database, dropped afterwards.
async fn on_postgres<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let admin_url = match std::env::var(POSTGRES_ENV) {
        Ok(url) if !url.is_empty() => url,
        // Passing would claim a check that never ran.
        _ => panic!(
            "{POSTGRES_ENV} is not set: this test needs PostgreSQL (an admin url such as \
             postgres://postgres@127.0.0.1:5432/postgres); scripts/test.sh starts it"
        ),
    };
    let database = TestDatabase::create(&admin_url).await;
    // Run on a task so that a failing assertion still lets us drop the database.
    let outcome = tokio::spawn(body(database.url.clone())).await;
    database.drop().await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("{test}: postgres run did not finish: {e}"),
        }
    }
}

/// A PostgreSQL database made for one test.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    async fn create(admin_url: &str) -> TestDatabase {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "cellar_registry_test_{}_{}_{}",
            std::process::id(),
            nanos,
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={admin_url} does not answer: {e}"));
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        let _ = admin.close().await;
        TestDatabase {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name),
            name,
        }
    }

    async fn drop(self) {
        let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await else {
            eprintln!("could not drop test database {}", self.name);
            return;
        };
        // FORCE: pools of the test may not have closed their connections yet.
        let dropped = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await;
        if let Err(e) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
        let _ = admin.close().await;
    }
}

/// `url` with its database name replaced by `name`, keeping any query string.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(slash) => &base[..host_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

fn string_feature(name: &str) -> Feature {
    Feature {
        name: name.to_owned(),
        value_type: ValueType::Scalar(ScalarType::String),
        description: None,
        retired: false,
    }
}

/// A small repo: a user entity, two groups, a stream ingestion and a service.
fn sample_repo() -> FeatureRepo {
    let user = Entity {
        name: "user".to_owned(),
        keys: vec![EntityKeyField {
            name: "user_id".to_owned(),
            key_type: KeyType::String,
        }],
        description: Some("a reader".to_owned()),
    };
    let recent_clicks = FeatureGroup {
        name: "recent_clicked_articles".to_owned(),
        entity: "user".to_owned(),
        kind: GroupKind::Timeseries,
        features: vec![string_feature("article_id"), string_feature("session_id")],
        retention: Retention {
            max_records: Some(200),
            max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            history: None,
        },
        serving: ServingPolicy::default(),
        max_record_bytes: 8192,
        freshness: None,
        push_sources: Vec::new(),
        description: None,
        generation: 0,
        previous: None,
    };
    let profile = FeatureGroup {
        name: "user_profile".to_owned(),
        entity: "user".to_owned(),
        kind: GroupKind::Attribute,
        features: vec![
            string_feature("country"),
            Feature {
                name: "embedding".to_owned(),
                value_type: ValueType::Vector(16),
                description: None,
                retired: false,
            },
        ],
        retention: Retention::default(),
        serving: ServingPolicy {
            jitter: 0.15,
            ..ServingPolicy::default()
        },
        max_record_bytes: 8192,
        freshness: None,
        push_sources: Vec::new(),
        description: Some("slowly changing".to_owned()),
        generation: 0,
        previous: None,
    };
    let clicks = Ingestion {
        name: "clicks".to_owned(),
        into: "recent_clicked_articles".to_owned(),
        source: IngestionSource::Stream(StreamSource {
            topic: "user-actions".to_owned(),
            event_types: vec!["article_clicked".to_owned()],
            format: EventFormat::Json,
            event_type_field: "$.type".to_owned(),
            republish_to: None,
        }),
        key: vec!["$.user_id".to_owned()],
        event_time: Some("$.ts".to_owned()),
        features: vec![
            FeatureMapping {
                feature: "article_id".to_owned(),
                expr: FeatureExpr::Field("$.article_id".to_owned()),
            },
            FeatureMapping {
                feature: "session_id".to_owned(),
                expr: FeatureExpr::Field("$.session_id".to_owned()),
            },
        ],
    };
    let ranker = FeatureService {
        name: "ranker_v3".to_owned(),
        features: vec![
            FeatureSelection {
                group: "recent_clicked_articles".to_owned(),
                features: None,
            },
            FeatureSelection {
                group: "user_profile".to_owned(),
                features: Some(vec!["country".to_owned()]),
            },
        ],
        description: None,
        logging: Default::default(),
    };
    // Stored like every other spec, never compiled here.
    let signals = OnDemandGroup {
        name: "profile_signals".to_owned(),
        request: vec![RequestField {
            name: "boost".to_owned(),
            value_type: ValueType::Scalar(ScalarType::Int64),
        }],
        features: vec![OnDemandFeature {
            name: "boosted".to_owned(),
            value_type: ValueType::Scalar(ScalarType::Int64),
            expr: "length(user_profile.country) + boost".to_owned(),
            description: None,
        }],
        sources: Vec::new(),
        description: None,
    };
    let mut repo = FeatureRepo {
        entities: vec![user],
        groups: vec![recent_clicks, profile],
        on_demand: vec![signals],
        ingestions: vec![clicks],
        services: vec![ranker],
        origins: Default::default(),
    };
    repo.origins.insert(
        (SpecKind::FeatureGroup, "user_profile".to_owned()),
        Origin {
            file: "groups/user_profile.yaml".to_owned(),
            line: 1,
        },
    );
    repo
}

/// `repo` as the registry gives it back: without origins.
fn without_origins(repo: &FeatureRepo) -> FeatureRepo {
    FeatureRepo {
        origins: Default::default(),
        ..repo.clone()
    }
}

/// `sample_repo` with the profile group's soft TTL changed.
fn repo_with_profile_ttl(seconds: u64) -> FeatureRepo {
    let mut repo = sample_repo();
    let profile = repo
        .groups
        .iter_mut()
        .find(|g| g.name == "user_profile")
        .expect("sample has user_profile");
    profile.serving.soft_ttl = Duration::from_secs(seconds);
    repo
}

async fn open(url: &str) -> Registry {
    Registry::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

on_every_backend!(an_empty_registry_has_no_current_repo);
async fn an_empty_registry_has_no_current_repo(url: String) {
    let registry = open(&url).await;
    assert_eq!(registry.current().await.expect("current"), None);
    assert_eq!(registry.repo_at(1).await.expect("repo_at"), None);
    let history = registry.history(SpecKind::Entity, "user").await;
    assert_eq!(history.expect("history"), vec![]);
    assert_eq!(registry.watermark("clicks").await.expect("watermark"), None);
    registry.close().await;
}

on_every_backend!(apply_then_current_returns_the_same_repo);
async fn apply_then_current_returns_the_same_repo(url: String) {
    let registry = open(&url).await;
    let repo = sample_repo();
    let outcome = registry.apply(&repo).await.expect("apply");
    assert_eq!((outcome.version, outcome.changed), (1, true));

    let current = registry.current().await.expect("current").expect("applied");
    assert_eq!(current.version, 1);
    assert_eq!(current.repo, without_origins(&repo));

    let history = registry
        .history(SpecKind::FeatureGroup, "user_profile")
        .await
        .expect("history");
    assert_eq!(history.len(), 1);
    assert_eq!((history[0].version, history[0].repo_version), (1, 1));
    assert!(!history[0].removed);
    assert_eq!(history[0].applied_at, current.applied_at);
    let expected = serde_json::to_value(repo.group("user_profile")).expect("to json");
    assert_eq!(history[0].spec.as_ref(), Some(&expected));
    registry.close().await;
}

on_every_backend!(applying_the_same_repo_twice_writes_nothing);
async fn applying_the_same_repo_twice_writes_nothing(url: String) {
    let registry = open(&url).await;
    let repo = sample_repo();
    registry.apply(&repo).await.expect("first apply");

    // The same specs read from other files and lines are the same repo.
    let mut moved = repo.clone();
    moved.origins.clear();
    moved.origins.insert(
        (SpecKind::Entity, "user".to_owned()),
        Origin {
            file: "elsewhere.yaml".to_owned(),
            line: 40,
        },
    );
    for again in [&repo, &moved] {
        let outcome = registry.apply(again).await.expect("apply again");
        assert_eq!((outcome.version, outcome.changed), (1, false));
    }
    assert_eq!(registry.repo_at(2).await.expect("repo_at"), None);
    let history = registry.history(SpecKind::Entity, "user").await;
    assert_eq!(history.expect("history").len(), 1);
    registry.close().await;
}

on_every_backend!(a_changed_group_gets_a_new_version_and_the_rest_keep_theirs);
async fn a_changed_group_gets_a_new_version_and_the_rest_keep_theirs(url: String) {
    let registry = open(&url).await;
    let first = sample_repo();
    let second = repo_with_profile_ttl(90);
    registry.apply(&first).await.expect("apply first");
    let outcome = registry.apply(&second).await.expect("apply second");
    assert_eq!((outcome.version, outcome.changed), (2, true));

    let profile = registry
        .history(SpecKind::FeatureGroup, "user_profile")
        .await
        .expect("history");
    let versions: Vec<(i64, i64, bool)> = profile
        .iter()
        .map(|v| (v.version, v.repo_version, v.removed))
        .collect();
    assert_eq!(versions, vec![(1, 1, false), (2, 2, false)]);
    let soft_ttl = &profile[1].spec.as_ref().expect("live spec")["serving"]["soft_ttl"];
    assert_eq!(soft_ttl["secs"], 90);

    for (kind, name) in [
        (SpecKind::Entity, "user"),
        (SpecKind::FeatureGroup, "recent_clicked_articles"),
        (SpecKind::Ingestion, "clicks"),
        (SpecKind::FeatureService, "ranker_v3"),
    ] {
        let history = registry.history(kind, name).await.expect("history");
        assert_eq!(history.len(), 1, "{kind} {name} did not change");
    }

    let old = registry
        .repo_at(1)
        .await
        .expect("repo_at")
        .expect("version 1");
    assert_eq!(old.repo, without_origins(&first));
    let current = registry.current().await.expect("current").expect("applied");
    assert_eq!(
        (current.version, current.repo),
        (2, without_origins(&second))
    );
    registry.close().await;
}

on_every_backend!(a_removed_spec_appears_in_history_as_removed);
async fn a_removed_spec_appears_in_history_as_removed(url: String) {
    let registry = open(&url).await;
    let full = sample_repo();
    let mut without_service = full.clone();
    without_service.services.clear();

    registry.apply(&full).await.expect("apply full");
    let outcome = registry.apply(&without_service).await.expect("remove");
    assert_eq!((outcome.version, outcome.changed), (2, true));
    // Still absent: no second removal entry.
    let mut reordered_origins = without_service.clone();
    reordered_origins.origins.clear();
    registry.apply(&reordered_origins).await.expect("no-op");

    let history = registry
        .history(SpecKind::FeatureService, "ranker_v3")
        .await
        .expect("history");
    assert_eq!(history.len(), 2);
    assert!(!history[0].removed && history[0].spec.is_some());
    assert!(history[1].removed, "second entry records the removal");
    assert_eq!((history[1].version, history[1].repo_version), (2, 2));
    assert_eq!(history[1].spec, None);

    let current = registry.current().await.expect("current").expect("applied");
    assert!(current.repo.service("ranker_v3").is_none());

    // Declaring it again starts a new live version.
    let outcome = registry.apply(&full).await.expect("re-add");
    assert_eq!(outcome.version, 3);
    let history = registry
        .history(SpecKind::FeatureService, "ranker_v3")
        .await
        .expect("history");
    let versions: Vec<(i64, bool)> = history.iter().map(|v| (v.version, v.removed)).collect();
    assert_eq!(versions, vec![(1, false), (2, true), (3, false)]);
    registry.close().await;
}

on_every_backend!(watermarks_survive_apply);
async fn watermarks_survive_apply(url: String) {
    let registry = open(&url).await;
    registry.apply(&sample_repo()).await.expect("apply");
    let clicks = WatermarkValue::Millis(1_717_000_000_123);
    let orders = WatermarkValue::Text("orders/2024-06-01.parquet".to_owned());
    registry
        .set_watermark("clicks", &clicks)
        .await
        .expect("set");
    registry
        .set_watermark("orders", &orders)
        .await
        .expect("set");

    // A change, a removal of the ingestion that owns the watermark, and a re-add.
    let mut without_clicks = repo_with_profile_ttl(45);
    without_clicks.ingestions.clear();
    registry.apply(&without_clicks).await.expect("apply change");
    registry.apply(&sample_repo()).await.expect("apply again");

    let read = |name: &'static str| {
        let registry = registry.clone();
        async move {
            registry
                .watermark(name)
                .await
                .expect("watermark")
                .map(|w| w.value)
        }
    };
    assert_eq!(read("clicks").await, Some(clicks));
    assert_eq!(read("orders").await, Some(orders));

    // Setting replaces the value, including its kind.
    let moved = WatermarkValue::Text("offset-42".to_owned());
    registry.set_watermark("clicks", &moved).await.expect("set");
    assert_eq!(read("clicks").await, Some(moved));
    registry.close().await;
}

on_every_backend!(group_writes_only_move_forward_whichever_process_is_first);
async fn group_writes_only_move_forward_whichever_process_is_first(url: String) {
    let registry = open(&url).await;
    let writes = |group: &str, newest_event_ms, last_write_ms, last_delay_ms| GroupWrites {
        group: group.to_owned(),
        newest_event_ms,
        last_write_ms,
        last_delay_ms,
    };
    assert_eq!(registry.group_writes().await.expect("read"), vec![]);
    registry.record_group_writes(&[]).await.expect("nothing");
    // A server that wrote an old backfill late, then one that wrote fresh events earlier.
    registry
        .record_group_writes(&[
            writes("profile", 1_000, 9_000, 8_000),
            writes("clicks", 5, 6, 1),
        ])
        .await
        .expect("record");
    registry
        .record_group_writes(&[writes("profile", 8_500, 8_600, 100)])
        .await
        .expect("record");
    // The newest event is the larger; the last write is the later one, with its own delay.
    assert_eq!(
        registry.group_writes().await.expect("read"),
        vec![
            writes("clicks", 5, 6, 1),
            writes("profile", 8_500, 9_000, 8_000)
        ]
    );
    // A group given twice in one call is merged the same way.
    registry
        .record_group_writes(&[writes("clicks", 7, 4, 2), writes("clicks", 3, 6, 1)])
        .await
        .expect("record");
    assert_eq!(
        registry.group_writes().await.expect("read")[0],
        writes("clicks", 7, 6, 1)
    );
    // Recording the same figures twice changes nothing; an apply does not touch them.
    registry
        .record_group_writes(&[writes("profile", 8_500, 9_000, 8_000)])
        .await
        .expect("record");
    registry.apply(&sample_repo()).await.expect("apply");
    let url_again = url.clone();
    registry.close().await;
    let reopened = open(&url_again).await;
    assert_eq!(
        reopened.group_writes().await.expect("read"),
        vec![
            writes("clicks", 7, 6, 1),
            writes("profile", 8_500, 9_000, 8_000)
        ]
    );
    // More groups than one statement takes: all recorded.
    let many: Vec<GroupWrites> = (0..2_500)
        .map(|i| writes(&format!("g{i:04}"), i, i + 1, 1))
        .collect();
    reopened
        .record_group_writes(&many)
        .await
        .expect("record many");
    let read = reopened.group_writes().await.expect("read");
    assert_eq!(read.len(), 2_502);
    assert_eq!(read[2_500], writes("g2499", 2_499, 2_500, 1));
    reopened.close().await;
}

on_every_backend!(reopening_keeps_everything);
async fn reopening_keeps_everything(url: String) {
    let registry = open(&url).await;
    registry.apply(&sample_repo()).await.expect("apply 1");
    registry
        .apply(&repo_with_profile_ttl(120))
        .await
        .expect("apply 2");
    registry
        .set_watermark("clicks", &WatermarkValue::Millis(99))
        .await
        .expect("set");
    registry.close().await;

    // Opening again also re-runs the migrations, which must be a no-op.
    let registry = open(&url).await;
    let current = registry.current().await.expect("current").expect("kept");
    assert_eq!(current.version, 2);
    assert_eq!(current.repo, without_origins(&repo_with_profile_ttl(120)));
    let old = registry.repo_at(1).await.expect("repo_at").expect("kept");
    assert_eq!(old.repo, without_origins(&sample_repo()));
    let history = registry
        .history(SpecKind::FeatureGroup, "user_profile")
        .await
        .expect("history");
    assert_eq!(history.len(), 2);
    let watermark = registry.watermark("clicks").await.expect("watermark");
    assert_eq!(watermark.map(|w| w.value), Some(WatermarkValue::Millis(99)));
    let outcome = registry
        .apply(&repo_with_profile_ttl(120))
        .await
        .expect("apply");
    assert_eq!((outcome.version, outcome.changed), (2, false));
    registry.close().await;
}

on_every_backend!(concurrent_applies_leave_consistent_versions);
async fn concurrent_applies_leave_consistent_versions(url: String) {
    const PER_TASK: u64 = 6;
    // Two registries with their own pools stand for two `cellar apply` processes.
    let a = open(&url).await;
    let b = open(&url).await;

    // Every repo differs from every other, so every apply must write a version.
    let run = |registry: Registry, first_ttl: u64| {
        tokio::spawn(async move {
            let mut applied = Vec::new();
            for i in 0..PER_TASK {
                let ttl = first_ttl + i;
                let outcome = registry
                    .apply(&repo_with_profile_ttl(ttl))
                    .await
                    .unwrap_or_else(|e| panic!("apply ttl {ttl}: {e}"));
                assert!(outcome.changed, "ttl {ttl} differs from every other repo");
                applied.push((outcome.version, ttl));
            }
            applied
        })
    };
    let task_a = run(a.clone(), 1000);
    let task_b = run(b.clone(), 2000);
    let mut applied = task_a.await.expect("task a");
    applied.extend(task_b.await.expect("task b"));
    applied.sort();

    let total = 2 * PER_TASK as i64;
    let versions: Vec<i64> = applied.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions,
        (1..=total).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );

    // Each version holds the repo its apply wrote, and the group's history matches.
    let history = a
        .history(SpecKind::FeatureGroup, "user_profile")
        .await
        .expect("history");
    assert_eq!(history.len(), total as usize);
    for ((version, ttl), entry) in applied.iter().zip(&history) {
        let stored = b.repo_at(*version).await.expect("repo_at").expect("exists");
        assert_eq!(stored.repo, without_origins(&repo_with_profile_ttl(*ttl)));
        assert_eq!((entry.version, entry.repo_version), (*version, *version));
        let spec = entry.spec.as_ref().expect("live spec");
        assert_eq!(spec["serving"]["soft_ttl"]["secs"], *ttl);
    }
    let user = a.history(SpecKind::Entity, "user").await.expect("history");
    assert_eq!(user.len(), 1, "the entity never changed");
    let current = a.current().await.expect("current").expect("applied");
    assert_eq!(current.version, total);

    // The same repo from both at once: one writes, the other finds it applied.
    let same = repo_with_profile_ttl(5);
    let (x, y) = tokio::join!(a.apply(&same), b.apply(&same));
    let (x, y) = (x.expect("apply a"), y.expect("apply b"));
    assert_eq!((x.version, y.version), (total + 1, total + 1));
    assert_eq!(
        u8::from(x.changed) + u8::from(y.changed),
        1,
        "exactly one apply writes"
    );
    a.close().await;
    b.close().await;
}

on_every_backend!(a_corrupt_stored_repo_is_reported_with_its_version);
async fn a_corrupt_stored_repo_is_reported_with_its_version(url: String) {
    let registry = open(&url).await;
    registry.apply(&sample_repo()).await.expect("apply");
    let vandalize = "UPDATE repo_versions SET repo = '{\"entities\": 7}' WHERE version = 1";
    if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("connect");
        sqlx::query(vandalize)
            .execute(&mut conn)
            .await
            .expect("update");
    } else {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        sqlx::query(vandalize)
            .execute(&mut conn)
            .await
            .expect("update");
    }
    let err = registry.current().await.expect_err("corrupt");
    assert!(matches!(err, RegistryError::Corrupt { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("corrupt registry data: repo version 1: "),
        "{message}"
    );
    assert!(!err.is_retryable());
    registry.close().await;
}

#[tokio::test]
async fn open_says_what_failed() {
    let err = Registry::open("mysql://root:hunter2@db/cellar")
        .await
        .expect_err("not a registry backend");
    assert_eq!(
        err.to_string(),
        "invalid registry url `mysql://root:***@db/cellar`: expected sqlite://PATH, a file \
         path, or postgres://..."
    );

    // Nothing listens on port 1; the password must not leak into the message.
    let err = Registry::open("postgres://cellar:hunter2@127.0.0.1:1/cellar")
        .await
        .expect_err("nothing listens there");
    let message = err.to_string();
    assert!(
        message.starts_with(
            "cannot connect to the registry at `postgres://cellar:***@127.0.0.1:1/cellar`"
        ),
        "{message}"
    );
    assert!(err.is_retryable());

    // A secret reference that cannot be read is named, never guessed at.
    let err = Registry::open("postgres://cellar:${CELLAR_REGISTRY_TEST_UNSET}@127.0.0.1:1/cellar")
        .await
        .expect_err("the variable is not set");
    assert_eq!(
        err.to_string(),
        "invalid registry url `postgres://cellar:***@127.0.0.1:1/cellar`: environment variable \
         `CELLAR_REGISTRY_TEST_UNSET` is not set (referred to as `${CELLAR_REGISTRY_TEST_UNSET}`)"
    );
    assert!(!err.is_retryable());

    // One that can is read when connecting.
    let dir = tempfile::tempdir().unwrap();
    let secret_path = dir.path().join("registry-path");
    std::fs::write(
        &secret_path,
        dir.path().join("reg.db").display().to_string(),
    )
    .unwrap();
    let registry = Registry::open(&format!("sqlite://${{file:{}}}", secret_path.display()))
        .await
        .unwrap();
    registry.close().await;
    assert!(dir.path().join("reg.db").exists());
}

#[tokio::test]
async fn a_plain_path_creates_the_file_and_its_directory() {
    let dir = tempfile::tempdir().expect("create a temp dir");
    let path = dir.path().join("state").join("registry.db");
    let path_text = path.to_str().expect("utf-8 temp path");
    let registry = open(path_text).await;
    registry.apply(&sample_repo()).await.expect("apply");
    registry.close().await;
    assert!(path.is_file(), "{} exists", path.display());

    // The same file through a sqlite:// URL.
    let registry = open(&format!("sqlite://{path_text}")).await;
    let current = registry.current().await.expect("current").expect("applied");
    assert_eq!(current.version, 1);
    registry.close().await;
}

fn backfill(ingestion: &str, from_ms: Option<i64>, to_ms: Option<i64>) -> NewJob {
    NewJob {
        ingestion: ingestion.to_owned(),
        kind: JobKind::Backfill,
        period_from_ms: from_ms,
        period_to_ms: to_ms,
        runner: "local".to_owned(),
        max_attempts: 3,
    }
}

/// `count` shards of 100 planned rows each, indexed from 0.
fn shards_of_100(count: i64) -> Vec<PlannedShard> {
    (0..count)
        .map(|index| PlannedShard {
            index,
            description: format!("{{\"file\":\"part-{index}.parquet\"}}"),
            rows_planned: 100,
        })
        .collect()
}

fn counts(rows_read: i64, rows_written: i64, rows_rejected: i64) -> ShardResult {
    ShardResult {
        rows_read,
        rows_written,
        rows_rejected,
    }
}

/// Submits a backfill of `clicks` and plans it into `shards` shards.
async fn planned_job(registry: &Registry, shards: i64) -> Job {
    let job = registry
        .submit_job(&backfill("clicks", Some(0), Some(1000)))
        .await
        .expect("submit");
    registry
        .plan_job(job.id, 100 * shards, &shards_of_100(shards))
        .await
        .expect("plan")
}

on_every_backend!(a_job_runs_from_submission_to_success);
async fn a_job_runs_from_submission_to_success(url: String) {
    let registry = open(&url).await;
    let submitted = registry
        .submit_job(&backfill("clicks", Some(0), Some(86_400_000)))
        .await
        .expect("submit");
    assert_eq!(submitted.state, JobState::Submitted);
    assert_eq!(submitted.kind, JobKind::Backfill);
    assert_eq!(
        (submitted.period_from_ms, submitted.period_to_ms),
        (Some(0), Some(86_400_000))
    );
    assert_eq!(
        (submitted.runner.as_str(), submitted.max_attempts),
        ("local", 3)
    );
    assert_eq!(submitted.rows_planned, None);
    assert_eq!((submitted.started_at, submitted.finished_at), (None, None));
    assert_eq!(submitted.shards_total, 0);
    assert_eq!(registry.shards(submitted.id).await.expect("shards"), vec![]);

    let planned = registry
        .plan_job(submitted.id, 250, &shards_of_100(3))
        .await
        .expect("plan");
    assert_eq!(planned.state, JobState::Runnable);
    assert_eq!(planned.rows_planned, Some(250));
    assert_eq!((planned.shards_total, planned.shards_succeeded), (3, 0));
    let shards = registry.shards(planned.id).await.expect("shards");
    let indexes: Vec<i64> = shards.iter().map(|s| s.index).collect();
    assert_eq!(indexes, vec![0, 1, 2]);
    for shard in &shards {
        assert_eq!((shard.state, shard.attempts), (JobState::Runnable, 0));
        assert_eq!(shard.worker, None);
    }
    assert_eq!(shards[1].description, "{\"file\":\"part-1.parquet\"}");

    let claimed = registry
        .claim_shard(planned.id, 0, "worker-a", None)
        .await
        .expect("claim")
        .expect("claimable");
    assert_eq!((claimed.state, claimed.attempts), (JobState::Running, 1));
    assert_eq!(claimed.worker.as_deref(), Some("worker-a"));
    assert!(claimed.started_at.is_some() && claimed.finished_at.is_none());
    let running = registry
        .job(planned.id)
        .await
        .expect("job")
        .expect("exists");
    assert_eq!(running.state, JobState::Running);
    let started_at = running.started_at.expect("started");

    registry
        .shard_progress(planned.id, 0, 40, 38, 2)
        .await
        .expect("progress");
    let job = registry
        .job(planned.id)
        .await
        .expect("job")
        .expect("exists");
    assert_eq!(
        (job.rows_read, job.rows_written, job.rows_rejected),
        (40, 38, 2)
    );
    assert!(job.updated_at >= running.updated_at);
    // Progress of a shard that is not running changes nothing.
    registry
        .shard_progress(planned.id, 1, 7, 7, 0)
        .await
        .expect("progress of a runnable shard");
    assert_eq!(registry.job(planned.id).await.expect("job"), Some(job));

    let done = registry
        .finish_shard(planned.id, 0, Ok(counts(100, 97, 3)), true)
        .await
        .expect("finish");
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(
        (done.rows_read, done.rows_written, done.rows_rejected),
        (100, 97, 3)
    );
    assert!(done.finished_at.is_some());
    for index in [1, 2] {
        let worker = format!("worker-{index}");
        registry
            .claim_shard(planned.id, index, &worker, None)
            .await
            .expect("claim")
            .expect("claimable");
        registry
            .finish_shard(planned.id, index, Ok(counts(75, 75, 0)), true)
            .await
            .expect("finish");
    }

    let job = registry
        .job(planned.id)
        .await
        .expect("job")
        .expect("exists");
    assert_eq!(
        job.state,
        JobState::Running,
        "finishing shards leaves the job"
    );
    assert_eq!(job.started_at, Some(started_at), "started once");
    assert_eq!(
        (job.rows_read, job.rows_written, job.rows_rejected),
        (250, 247, 3)
    );
    assert_eq!(
        (job.shards_total, job.shards_succeeded, job.shards_failed),
        (3, 3, 0)
    );

    let finished = registry
        .finish_job(planned.id, JobState::Succeeded, None)
        .await
        .expect("finish job");
    assert_eq!(finished.state, JobState::Succeeded);
    assert_eq!(finished.error, None);
    let finished_at = finished.finished_at.expect("finished");
    assert!(finished_at >= started_at);
    assert_eq!(finished.rows_written, 247);
    // Finishing again changes nothing.
    let again = registry
        .finish_job(planned.id, JobState::Failed, Some("late"))
        .await
        .expect("finish again");
    assert_eq!(again, finished);
    registry.close().await;
}

on_every_backend!(a_failing_shard_is_retried_until_its_attempts_run_out);
async fn a_failing_shard_is_retried_until_its_attempts_run_out(url: String) {
    let registry = open(&url).await;
    let job = planned_job(&registry, 2).await;
    for attempt in 1..=3 {
        let claimed = registry
            .claim_shard(job.id, 1, "worker-a", None)
            .await
            .expect("claim")
            .expect("claimable while attempts remain");
        assert_eq!(claimed.attempts, attempt);
        let reason = format!("s3 timeout {attempt}");
        let failed = registry
            .finish_shard(job.id, 1, Err(reason.clone()), true)
            .await
            .expect("finish");
        let expected = if attempt < 3 {
            JobState::Runnable
        } else {
            JobState::Failed
        };
        assert_eq!(failed.state, expected, "after attempt {attempt}");
        assert_eq!(failed.error, Some(reason));
        assert!(failed.finished_at.is_some());
    }
    assert_eq!(
        registry
            .claim_shard(job.id, 1, "worker-b", None)
            .await
            .expect("claim"),
        None,
        "a failed shard is not claimed again"
    );
    // An error a retry cannot cure fails the shard on its first attempt.
    registry
        .claim_shard(job.id, 0, "worker-a", None)
        .await
        .expect("claim")
        .expect("claimable");
    let failed = registry
        .finish_shard(job.id, 0, Err("column `age` is missing".to_owned()), false)
        .await
        .expect("finish");
    assert_eq!((failed.state, failed.attempts), (JobState::Failed, 1));
    let job = registry.job(job.id).await.expect("job").expect("exists");
    assert_eq!((job.shards_failed, job.shards_succeeded), (2, 0));
    let failed = registry
        .finish_job(job.id, JobState::Failed, Some("shard 1 failed 3 times"))
        .await
        .expect("fail job");
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.error.as_deref(), Some("shard 1 failed 3 times"));
    assert!(failed.finished_at.is_some());
    registry.close().await;
}

on_every_backend!(a_redelivered_claim_after_success_is_skipped);
async fn a_redelivered_claim_after_success_is_skipped(url: String) {
    let registry = open(&url).await;
    let job = planned_job(&registry, 1).await;
    registry
        .claim_shard(job.id, 0, "worker-a", None)
        .await
        .expect("claim")
        .expect("claimable");
    let done = registry
        .finish_shard(job.id, 0, Ok(counts(100, 100, 0)), true)
        .await
        .expect("finish");
    assert_eq!(
        registry
            .claim_shard(job.id, 0, "worker-b", None)
            .await
            .expect("claim"),
        None
    );
    // A late failure report of the same attempt does not undo the success.
    let late = registry
        .finish_shard(job.id, 0, Err("late".to_owned()), true)
        .await
        .expect("finish again");
    assert_eq!(late, done);
    assert_eq!(registry.shards(job.id).await.expect("shards"), vec![done]);
    registry.close().await;
}

on_every_backend!(a_running_shard_can_be_claimed_again);
async fn a_running_shard_can_be_claimed_again(url: String) {
    let registry = open(&url).await;
    let job = planned_job(&registry, 1).await;
    registry
        .claim_shard(job.id, 0, "worker-a", None)
        .await
        .expect("claim")
        .expect("claimable");
    registry
        .shard_progress(job.id, 0, 60, 60, 0)
        .await
        .expect("progress");
    // While worker-a's progress is recent, its lease holds.
    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let held = registry
        .claim_shard(job.id, 0, "worker-b", Some(an_hour_ago))
        .await
        .expect("claim");
    assert_eq!(held, None, "a live worker's shard is not taken");
    // worker-a dies; once its lease lapses, worker-b takes the shard and starts over.
    let in_a_second = chrono::Utc::now() + chrono::Duration::seconds(1);
    let again = registry
        .claim_shard(job.id, 0, "worker-b", Some(in_a_second))
        .await
        .expect("claim")
        .expect("a running shard is claimable");
    assert_eq!((again.state, again.attempts), (JobState::Running, 2));
    assert_eq!(again.worker.as_deref(), Some("worker-b"));
    assert_eq!((again.rows_read, again.rows_written), (0, 0));
    let job = registry.job(job.id).await.expect("job").expect("exists");
    assert_eq!((job.state, job.rows_read), (JobState::Running, 0));
    registry.close().await;
}

on_every_backend!(a_shard_whose_workers_keep_dying_fails_on_its_last_attempt);
async fn a_shard_whose_workers_keep_dying_fails_on_its_last_attempt(url: String) {
    let registry = open(&url).await;
    // Three attempts allowed; every worker dies silently mid-shard.
    let job = planned_job(&registry, 1).await;
    for (attempt, worker) in ["worker-a", "worker-b", "worker-c"].iter().enumerate() {
        let in_a_second = chrono::Utc::now() + chrono::Duration::seconds(1);
        let claimed = registry
            .claim_shard(job.id, 0, worker, Some(in_a_second))
            .await
            .expect("claim")
            .expect("claimable while attempts remain");
        assert_eq!(claimed.attempts, attempt as i64 + 1);
    }
    let in_a_second = chrono::Utc::now() + chrono::Duration::seconds(1);
    let fourth = registry
        .claim_shard(job.id, 0, "worker-d", Some(in_a_second))
        .await
        .expect("claim");
    assert_eq!(fourth, None, "no fourth attempt");
    let shards = registry.shards(job.id).await.expect("shards");
    assert_eq!((shards[0].state, shards[0].attempts), (JobState::Failed, 3));
    let error = shards[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("stopped sending heartbeats"), "{error}");
    registry.close().await;
}

on_every_backend!(cancel_stops_a_job_and_retry_runs_what_did_not_succeed);
async fn cancel_stops_a_job_and_retry_runs_what_did_not_succeed(url: String) {
    let registry = open(&url).await;
    let job = planned_job(&registry, 3).await;
    registry
        .claim_shard(job.id, 0, "worker-a", None)
        .await
        .expect("claim")
        .expect("claimable");
    registry
        .finish_shard(job.id, 0, Ok(counts(100, 100, 0)), true)
        .await
        .expect("finish");
    registry
        .claim_shard(job.id, 1, "worker-a", None)
        .await
        .expect("claim")
        .expect("claimable");
    registry
        .finish_shard(job.id, 1, Err("bad row group".to_owned()), true)
        .await
        .expect("fail once");
    registry
        .claim_shard(job.id, 1, "worker-b", None)
        .await
        .expect("claim")
        .expect("retry attempt");
    registry.mark_alerted(job.id).await.expect("mark alerted");

    let cancelled = registry.cancel_job(job.id).await.expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.error.as_deref(), Some("cancelled"));
    assert!(cancelled.finished_at.is_some());
    let states: Vec<JobState> = registry
        .shards(job.id)
        .await
        .expect("shards")
        .iter()
        .map(|s| s.state)
        .collect();
    assert_eq!(
        states,
        vec![
            JobState::Succeeded,
            JobState::Cancelled,
            JobState::Cancelled
        ]
    );
    for index in [1, 2] {
        let claim = registry.claim_shard(job.id, index, "worker-c", None).await;
        assert_eq!(
            claim.expect("claim"),
            None,
            "shard {index} of a cancelled job"
        );
    }
    // The worker that was running shard 1 reports back: it stays cancelled.
    let late = registry
        .finish_shard(job.id, 1, Ok(counts(100, 100, 0)), true)
        .await
        .expect("late finish");
    assert_eq!(late.state, JobState::Cancelled);

    let retried = registry.retry_job(job.id).await.expect("retry");
    assert_eq!(retried.state, JobState::Runnable);
    assert_eq!((retried.error, retried.finished_at), (None, None));
    assert_eq!(retried.alerted_at, None);
    assert_eq!(retried.shards_succeeded, 1);
    let shards = registry.shards(job.id).await.expect("shards");
    assert_eq!(
        (shards[0].state, shards[0].attempts, shards[0].rows_written),
        (JobState::Succeeded, 1, 100),
        "a succeeded shard is kept"
    );
    for shard in &shards[1..] {
        assert_eq!((shard.state, shard.attempts), (JobState::Runnable, 0));
        assert_eq!((shard.error.as_deref(), shard.finished_at), (None, None));
    }
    let claimed = registry
        .claim_shard(job.id, 1, "worker-d", None)
        .await
        .expect("claim")
        .expect("claimable after retry");
    assert_eq!(claimed.attempts, 1);

    // A job cancelled before planning goes back to planning.
    let unplanned = registry
        .submit_job(&backfill("clicks", None, None))
        .await
        .expect("submit");
    registry.cancel_job(unplanned.id).await.expect("cancel");
    let again = registry.retry_job(unplanned.id).await.expect("retry");
    assert_eq!(again.state, JobState::Submitted);
    registry.close().await;
}

on_every_backend!(list_jobs_filters_and_puts_the_newest_first);
async fn list_jobs_filters_and_puts_the_newest_first(url: String) {
    let registry = open(&url).await;
    let mut ids = Vec::new();
    for ingestion in ["clicks", "orders", "clicks", "clicks"] {
        let job = registry
            .submit_job(&backfill(ingestion, None, None))
            .await
            .expect("submit");
        ids.push(job.id);
    }
    let failed = registry
        .finish_job(ids[2], JobState::Failed, Some("no such bucket"))
        .await
        .expect("fail");
    assert_eq!(failed.state, JobState::Failed);
    registry.plan_job(ids[3], 0, &[]).await.expect("plan");

    let list = |filter: JobFilter| {
        let registry = registry.clone();
        async move {
            let jobs = registry.list_jobs(&filter).await.expect("list");
            jobs.iter().map(|j| j.id).collect::<Vec<i64>>()
        }
    };
    assert_eq!(
        list(JobFilter::default()).await,
        vec![ids[3], ids[2], ids[1], ids[0]]
    );
    let clicks = JobFilter {
        ingestion: Some("clicks".to_owned()),
        ..JobFilter::default()
    };
    assert_eq!(list(clicks.clone()).await, vec![ids[3], ids[2], ids[0]]);
    assert_eq!(
        list(JobFilter {
            limit: 2,
            ..clicks.clone()
        })
        .await,
        vec![ids[3], ids[2]]
    );
    assert_eq!(
        list(JobFilter {
            states: vec![JobState::Submitted, JobState::Failed],
            ..clicks.clone()
        })
        .await,
        vec![ids[2], ids[0]]
    );
    assert_eq!(
        list(JobFilter {
            states: vec![JobState::Runnable],
            ..JobFilter::default()
        })
        .await,
        vec![ids[3]]
    );
    assert_eq!(
        list(JobFilter {
            states: vec![JobState::Running],
            ..JobFilter::default()
        })
        .await,
        Vec::<i64>::new()
    );
    assert_eq!(
        list(JobFilter {
            ingestion: Some("views".to_owned()),
            ..JobFilter::default()
        })
        .await,
        Vec::<i64>::new()
    );
    registry.close().await;
}

on_every_backend!(last_job_for_period_matches_bounds_exactly);
async fn last_job_for_period_matches_bounds_exactly(url: String) {
    let registry = open(&url).await;
    let submit = |ingestion: &'static str, from: Option<i64>, to: Option<i64>| {
        let registry = registry.clone();
        async move {
            registry
                .submit_job(&backfill(ingestion, from, to))
                .await
                .expect("submit")
                .id
        }
    };
    let day_1 = submit("clicks", Some(0), Some(100)).await;
    let day_1_again = submit("clicks", Some(0), Some(100)).await;
    let open_ended = submit("clicks", Some(0), None).await;
    let everything = submit("clicks", None, None).await;
    let until_100 = submit("clicks", None, Some(100)).await;
    submit("orders", Some(0), Some(100)).await;

    let last = |from: Option<i64>, to: Option<i64>| {
        let registry = registry.clone();
        async move {
            registry
                .last_job_for_period("clicks", from, to)
                .await
                .expect("last job")
                .map(|job| job.id)
        }
    };
    assert_eq!(last(Some(0), Some(100)).await, Some(day_1_again));
    assert_ne!(day_1, day_1_again);
    assert_eq!(last(Some(0), None).await, Some(open_ended));
    assert_eq!(last(None, None).await, Some(everything));
    assert_eq!(last(None, Some(100)).await, Some(until_100));
    assert_eq!(last(Some(100), Some(200)).await, None);
    assert_eq!(last(Some(1), None).await, None);
    let other = registry
        .last_job_for_period("views", Some(0), Some(100))
        .await
        .expect("last job");
    assert_eq!(other, None);
    registry.close().await;
}

on_every_backend!(job_errors_say_which_job_and_why);
async fn job_errors_say_which_job_and_why(url: String) {
    let registry = open(&url).await;
    let missing = 4242;
    assert_eq!(registry.job(missing).await.expect("job"), None);
    assert_eq!(registry.shards(missing).await.expect("shards"), vec![]);
    let message = |result: Result<_, RegistryError>| match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            assert!(!e.is_retryable(), "{e}");
            e.to_string()
        }
    };
    let no_job = "no job 4242 in the registry";
    assert_eq!(
        message(registry.plan_job(missing, 0, &[]).await.map(|_| ())),
        no_job
    );
    assert_eq!(
        message(
            registry
                .claim_shard(missing, 0, "w", None)
                .await
                .map(|_| ())
        ),
        no_job
    );
    assert_eq!(
        message(registry.shard_progress(missing, 0, 1, 1, 0).await),
        no_job
    );
    let finish_shard = registry
        .finish_shard(missing, 0, Err("x".to_owned()), true)
        .await;
    assert_eq!(message(finish_shard.map(|_| ())), no_job);
    let finish_job = registry
        .finish_job(missing, JobState::Succeeded, None)
        .await;
    assert_eq!(message(finish_job.map(|_| ())), no_job);
    assert_eq!(
        message(registry.cancel_job(missing).await.map(|_| ())),
        no_job
    );
    assert_eq!(
        message(registry.retry_job(missing).await.map(|_| ())),
        no_job
    );
    assert_eq!(message(registry.mark_alerted(missing).await), no_job);
    let err = registry.cancel_job(missing).await.expect_err("unknown job");
    assert!(
        matches!(err, RegistryError::NoSuchJob { id: 4242 }),
        "{err:?}"
    );

    let job = planned_job(&registry, 2).await;
    let id = job.id;
    assert_eq!(
        message(registry.plan_job(id, 0, &[]).await.map(|_| ())),
        format!("cannot plan job {id}: it is runnable")
    );
    assert_eq!(
        message(registry.retry_job(id).await.map(|_| ())),
        format!("cannot retry job {id}: it is runnable")
    );
    assert_eq!(
        message(registry.claim_shard(id, 7, "w", None).await.map(|_| ())),
        format!("job {id} has no shard 7")
    );
    assert_eq!(
        message(registry.shard_progress(id, 7, 1, 1, 0).await),
        format!("job {id} has no shard 7")
    );
    assert_eq!(
        message(
            registry
                .finish_job(id, JobState::Running, None)
                .await
                .map(|_| ())
        ),
        format!("cannot finish job {id} as running: a job finishes as succeeded or failed")
    );
    registry
        .finish_job(id, JobState::Succeeded, None)
        .await
        .expect("finish");
    let err = registry.cancel_job(id).await.expect_err("finished");
    assert!(
        matches!(
            err,
            RegistryError::JobState {
                state: JobState::Succeeded,
                action: "cancel",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("cannot cancel job {id}: it is succeeded")
    );
    assert_eq!(
        message(registry.retry_job(id).await.map(|_| ())),
        format!("cannot retry job {id}: it is succeeded")
    );

    // Two shards with one index make the plan fail as a whole.
    let unplanned = registry
        .submit_job(&backfill("clicks", None, None))
        .await
        .expect("submit");
    let mut twice = shards_of_100(2);
    twice[1].index = 0;
    let err = registry
        .plan_job(unplanned.id, 200, &twice)
        .await
        .expect_err("duplicate");
    assert!(matches!(err, RegistryError::Query { .. }), "{err:?}");
    let still = registry
        .job(unplanned.id)
        .await
        .expect("job")
        .expect("exists");
    assert_eq!((still.state, still.shards_total), (JobState::Submitted, 0));
    registry.close().await;
}

on_every_backend!(apply_leaves_jobs_and_watermarks_alone);
async fn apply_leaves_jobs_and_watermarks_alone(url: String) {
    let registry = open(&url).await;
    registry.apply(&sample_repo()).await.expect("apply");
    let watermark = WatermarkValue::Millis(1_717_000_000_000);
    registry
        .set_watermark("clicks", &watermark)
        .await
        .expect("set");
    let job = planned_job(&registry, 1).await;
    registry
        .claim_shard(job.id, 0, "worker-a", None)
        .await
        .expect("claim")
        .expect("claimable");
    registry
        .finish_shard(job.id, 0, Ok(counts(100, 99, 1)), true)
        .await
        .expect("finish shard");
    let finished = registry
        .finish_job(job.id, JobState::Succeeded, None)
        .await
        .expect("finish job");
    let shards = registry.shards(job.id).await.expect("shards");
    let before = registry.watermark("clicks").await.expect("watermark");

    // A changed repo without the ingestion that owns them, then with it again.
    let mut without_clicks = repo_with_profile_ttl(30);
    without_clicks.ingestions.clear();
    let outcome = registry.apply(&without_clicks).await.expect("apply change");
    assert!(outcome.changed);
    registry.apply(&sample_repo()).await.expect("apply again");

    assert_eq!(registry.job(job.id).await.expect("job"), Some(finished));
    assert_eq!(registry.shards(job.id).await.expect("shards"), shards);
    let after = registry.watermark("clicks").await.expect("watermark");
    assert_eq!(after, before);
    assert_eq!(after.map(|w| w.value), Some(watermark));
    registry.close().await;
}

on_every_backend!(claims_racing_a_cancel_leave_every_shard_cancelled);
async fn claims_racing_a_cancel_leave_every_shard_cancelled(url: String) {
    // Separate pools stand for a worker process and the CLI.
    let worker = open(&url).await;
    let cli = open(&url).await;
    for _ in 0..5 {
        let job = planned_job(&cli, 4).await;
        let claims = (0..4).map(|index| {
            let worker = worker.clone();
            tokio::spawn(async move {
                worker
                    .claim_shard(job.id, index, "worker-a", None)
                    .await
                    .expect("a claim never fails")
            })
        });
        let claims: Vec<_> = claims.collect();
        let cancelled = cli.cancel_job(job.id).await.expect("cancel");
        for claim in claims {
            claim.await.expect("claim task");
        }
        assert_eq!(cancelled.state, JobState::Cancelled);
        for shard in cli.shards(job.id).await.expect("shards") {
            assert_eq!(shard.state, JobState::Cancelled, "shard {}", shard.index);
        }
    }
    worker.close().await;
    cli.close().await;
}

#[test]
fn with_database_replaces_only_the_name() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        with_database("postgres://u:p@db/admin?sslmode=disable", "t2"),
        "postgres://u:p@db/t2?sslmode=disable"
    );
    assert_eq!(with_database("postgres://db", "t3"), "postgres://db/t3");
}
