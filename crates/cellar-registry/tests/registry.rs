//! The registry's behaviour, run against every backend: SQLite always (in a temp dir), and
//! PostgreSQL when `CELLAR_TEST_POSTGRES` holds an admin URL such as
//! `postgres://postgres@127.0.0.1:5432/postgres`. Each PostgreSQL run gets a fresh database
//! with a unique name, dropped afterwards, so parallel tests and runs never share state.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cellar_registry::{Registry, RegistryError, WatermarkValue};
use cellar_spec::{
    Entity, EntityKeyField, EventFormat, Feature, FeatureExpr, FeatureGroup, FeatureMapping,
    FeatureRepo, FeatureSelection, FeatureService, GroupKind, Ingestion, IngestionSource, KeyType,
    Origin, Retention, ScalarType, ServingPolicy, SpecKind, StreamSource, ValueType,
};
use sqlx::Connection;

const POSTGRES_ENV: &str = "CELLAR_TEST_POSTGRES";

/// Runs `body` with the URL of an empty registry database on each backend in turn.
async fn on_every_backend<F, Fut>(test: &str, body: F)
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("create a temp dir");
    let sqlite_url = format!("sqlite://{}", dir.path().join("registry.db").display());
    body(sqlite_url).await;

    let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
        println!(
            "{test}: postgres run skipped: {POSTGRES_ENV} is unset \
             (set it to an admin url, e.g. postgres://postgres@127.0.0.1:5432/postgres)"
        );
        return;
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
        },
        serving: ServingPolicy::default(),
        max_record_bytes: 8192,
        description: None,
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
            },
        ],
        retention: Retention::default(),
        serving: ServingPolicy {
            jitter: 0.15,
            ..ServingPolicy::default()
        },
        max_record_bytes: 8192,
        description: Some("slowly changing".to_owned()),
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
    };
    let mut repo = FeatureRepo {
        entities: vec![user],
        groups: vec![recent_clicks, profile],
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

#[tokio::test]
async fn an_empty_registry_has_no_current_repo() {
    on_every_backend("an_empty_registry_has_no_current_repo", |url| async move {
        let registry = open(&url).await;
        assert_eq!(registry.current().await.expect("current"), None);
        assert_eq!(registry.repo_at(1).await.expect("repo_at"), None);
        let history = registry.history(SpecKind::Entity, "user").await;
        assert_eq!(history.expect("history"), vec![]);
        assert_eq!(registry.watermark("clicks").await.expect("watermark"), None);
        registry.close().await;
    })
    .await;
}

#[tokio::test]
async fn apply_then_current_returns_the_same_repo() {
    on_every_backend(
        "apply_then_current_returns_the_same_repo",
        |url| async move {
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
        },
    )
    .await;
}

#[tokio::test]
async fn applying_the_same_repo_twice_writes_nothing() {
    on_every_backend(
        "applying_the_same_repo_twice_writes_nothing",
        |url| async move {
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
        },
    )
    .await;
}

#[tokio::test]
async fn a_changed_group_gets_a_new_version_and_the_rest_keep_theirs() {
    on_every_backend("a_changed_group_gets_a_new_version", |url| async move {
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
    })
    .await;
}

#[tokio::test]
async fn a_removed_spec_appears_in_history_as_removed() {
    on_every_backend(
        "a_removed_spec_appears_in_history_as_removed",
        |url| async move {
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
            let versions: Vec<(i64, bool)> =
                history.iter().map(|v| (v.version, v.removed)).collect();
            assert_eq!(versions, vec![(1, false), (2, true), (3, false)]);
            registry.close().await;
        },
    )
    .await;
}

#[tokio::test]
async fn watermarks_survive_apply() {
    on_every_backend("watermarks_survive_apply", |url| async move {
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
    })
    .await;
}

#[tokio::test]
async fn reopening_keeps_everything() {
    on_every_backend("reopening_keeps_everything", |url| async move {
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
    })
    .await;
}

#[tokio::test]
async fn concurrent_applies_leave_consistent_versions() {
    on_every_backend(
        "concurrent_applies_leave_consistent_versions",
        |url| async move {
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
        },
    )
    .await;
}

#[tokio::test]
async fn a_corrupt_stored_repo_is_reported_with_its_version() {
    on_every_backend(
        "a_corrupt_stored_repo_is_reported_with_its_version",
        |url| async move {
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
        },
    )
    .await;
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
