//! On-demand groups on a serving node: features computed per request from request data, entity
//! keys and stored groups (attributes and time series), with a status per value; refused where
//! they cannot work (writes, wrong expressions at plan).

mod common;

use std::net::SocketAddr;

use cellar::config::Config;
use cellar::node::Node;
use cellar::repo;
use cellar_registry::Registry;
use serde_json::{json, Value};

const REPO: &str = r#"
kind: Entity
name: user
keys: [{ name: user_id, type: string }]
---
kind: Entity
name: article
keys: [{ name: article_id, type: string }]
---
kind: FeatureGroup
name: user_clicks
entity: user
type: attribute
features:
  - { name: last_click_at, type: timestamp }
  - { name: clicks, type: int64 }
  - { name: views, type: int64 }
---
kind: FeatureGroup
name: recent_clicks
entity: user
type: timeseries
retention: { max_records: 10 }
features:
  - { name: clicked_article, type: string }
---
kind: FeatureGroup
name: article_profile
entity: article
type: attribute
features:
  - { name: category, type: string }
  - { name: lat, type: float64 }
  - { name: lon, type: float64 }
---
kind: FeatureGroup
name: feed_signals
type: on_demand
request:
  - { name: user_lat, type: float64 }
  - { name: user_lon, type: float64 }
features:
  - name: seconds_since_last_click
    type: int64
    expr: to_unixtime(now()) - to_unixtime(user_clicks.last_click_at)
  - name: clicked_before
    type: bool
    expr: array_has(recent_clicks.clicked_article, article_id)
  - name: clicks_per_view
    type: int64
    expr: user_clicks.clicks / user_clicks.views
  - name: distance_km
    type: float64
    expr: haversine_km(user_lat, user_lon, article_profile.lat, article_profile.lon)
---
kind: FeatureGroup
name: basket
type: on_demand
request:
  - { name: price, type: float64 }
  - { name: quantity, type: int64 }
features:
  - { name: total, type: float64, expr: price * quantity }
---
kind: FeatureService
name: ranker
features:
  - article_profile:category
  - feed_signals:*
"#;

struct Served {
    base: String,
    client: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Served {
        Served::start_with(REPO).await
    }

    /// A node serving the repo `text`.
    async fn start_with(text: &str) -> Served {
        Served::start_configured(text, |_| {}).await.0
    }

    /// A node serving the repo `text`, its config changed by `configure`, and its local tier.
    async fn start_configured(
        text: &str,
        configure: impl FnOnce(&mut Config),
    ) -> (Served, std::sync::Arc<cellar_cache::LocalTier>) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            repo: dir.path().join("repo"),
            ..Config::default()
        };
        configure(&mut config);
        std::fs::create_dir_all(&config.repo).unwrap();
        std::fs::write(config.repo.join("repo.yaml"), text).unwrap();
        let registry = Registry::open(&config.registry_url()).await.unwrap();
        registry
            .apply(&repo::load_repo(&config.repo).unwrap())
            .await
            .unwrap();
        let node = Node::open(config).await.unwrap();
        let local = node.local.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(node.serve(listener, None, std::future::pending()));
        let served = Served {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            dir,
        };
        (served, local)
    }

    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// u1 clicked 6 of 3 views 90 s ago; u2 1 of 0 views (a division by zero) 5 s ago.
    async fn push_user_clicks(&self, now: i64) {
        self.push(
            "user_clicks",
            json!([
                {"entity": {"user_id": "u1"}, "event_time": now - 1000,
                 "features": {"last_click_at": now - 90_000, "clicks": 6, "views": 3}},
                {"entity": {"user_id": "u2"}, "event_time": now - 1000,
                 "features": {"last_click_at": now - 5_000, "clicks": 1, "views": 0}}
            ]),
        )
        .await;
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    async fn push(&self, group: &str, records: Value) {
        let (status, body) = self
            .post("/v1/push", json!({"group": group, "records": records}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn on_demand_features_are_computed_per_row_with_a_status_per_value() {
    let node = Served::start().await;
    let now = now_ms();
    node.push_user_clicks(now).await;
    node.push(
        "recent_clicks",
        json!([
            {"entity": {"user_id": "u1"}, "event_time": now - 3000, "features": {"clicked_article": "a1"}},
            {"entity": {"user_id": "u1"}, "event_time": now - 2000, "features": {"clicked_article": "a2"}}
        ]),
    )
    .await;
    node.push(
        "article_profile",
        json!([
            {"entity": {"article_id": "a1"}, "event_time": now - 1000,
             "features": {"category": "food", "lat": 48.8566, "lon": 2.3522}}
        ]),
    )
    .await;

    let (status, body) = node
        .post(
            "/v1/features",
            json!({
                "entities": {"user_id": ["u1", "u2", "nobody"], "article_id": ["a1", "a2", "a1"]},
                "request_data": {"user_lat": [52.52, 52.52, 52.52], "user_lon": [13.405, 13.405, 13.405]},
                "groups": ["feed_signals"]
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let result = &body["results"][0];
    assert_eq!(result["group"], "feed_signals");
    assert_eq!(result["kind"], "on_demand");
    assert_eq!(
        result["features"],
        json!([
            "seconds_since_last_click",
            "clicked_before",
            "clicks_per_view",
            "distance_km"
        ])
    );
    let rows = result["rows"].as_array().unwrap();

    // u1 reading a1: every value computed.
    let u1 = &rows[0];
    assert_eq!(u1["status"], "present", "{u1}");
    let seconds = u1["values"][0].as_i64().unwrap();
    assert!((89..=92).contains(&seconds), "{u1}");
    assert_eq!(u1["values"][1], true);
    assert_eq!(u1["values"][2], 2);
    let km = u1["values"][3].as_f64().unwrap();
    assert!((km - 877.5).abs() < 1.0, "{u1}");
    assert_eq!(
        u1["statuses"],
        json!(["present", "present", "present", "present"])
    );
    assert!(u1.get("errors").is_none(), "{u1}");

    // u2 reading a2: a division by zero is that value's error alone; a2 has no profile and u2
    // no recent clicks, so those values are null.
    let u2 = &rows[1];
    assert_eq!(u2["status"], "error", "{u2}");
    assert_eq!(
        u2["statuses"],
        json!(["present", "not_found", "error", "not_found"]),
        "{u2}"
    );
    assert!(
        u2["errors"][2].as_str().unwrap().contains("Divide by zero"),
        "{u2}"
    );
    assert_eq!(u2["errors"][0], Value::Null);

    // A user nothing is stored for: only the distance to a1 can be computed.
    let nobody = &rows[2];
    assert_eq!(
        nobody["statuses"],
        json!(["not_found", "not_found", "not_found", "present"]),
        "{nobody}"
    );
    assert_eq!(nobody["values"][0], Value::Null);
    assert_eq!(nobody["status"], "present", "{nobody}");

    // A feature service mixing a stored group and the on-demand group, read the Feast way:
    // request fields among the entities.
    let (status, body) = node
        .post(
            "/get-online-features",
            json!({
                "feature_service": "ranker",
                "entities": {"user_id": ["u1"], "article_id": ["a1"], "user_lat": [52.52], "user_lon": [13.405]}
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["metadata"]["feature_names"],
        json!([
            "article_id",
            "user_id",
            "category",
            "seconds_since_last_click",
            "clicked_before",
            "clicks_per_view",
            "distance_km"
        ])
    );
    assert_eq!(body["results"][2]["values"], json!(["food"]));
    assert_eq!(body["results"][4]["values"], json!([true]));
    assert_eq!(body["results"][4]["statuses"], json!(["PRESENT"]));

    // Two evaluations: of the first request's 12 values one failed and five were null; the
    // second request's four all computed.
    let metrics = node
        .client
        .get(format!("{}/metrics", node.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"cellar_on_demand_evaluation_seconds_count{group="feed_signals"} 2"#,
        r#"cellar_on_demand_values_total{group="feed_signals",status="present"} 10"#,
        r#"cellar_on_demand_values_total{group="feed_signals",status="not_found"} 5"#,
        r#"cellar_on_demand_values_total{group="feed_signals",status="error"} 1"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
}

/// Rows that repeat an entity (one user and many articles, as a ranker asks) read that
/// entity's stored inputs once; each row still gets what it gets when asked alone, whether
/// its batch is walked a row at a time (a few rows) or run by DataFusion (many).
#[tokio::test]
async fn rows_repeating_an_entity_are_computed_as_when_asked_alone() {
    let node = Served::start().await;
    let now = now_ms();
    node.push_user_clicks(now).await;
    node.push(
        "recent_clicks",
        json!([
            {"entity": {"user_id": "u1"}, "event_time": now - 3000, "features": {"clicked_article": "a1"}},
            {"entity": {"user_id": "u1"}, "event_time": now - 2000, "features": {"clicked_article": "a2"}},
            {"entity": {"user_id": "u2"}, "event_time": now - 2000, "features": {"clicked_article": "a3"}}
        ]),
    )
    .await;
    node.push(
        "article_profile",
        json!([
            {"entity": {"article_id": "a1"}, "event_time": now - 1000,
             "features": {"category": "food", "lat": 48.8566, "lon": 2.3522}},
            {"entity": {"article_id": "a2"}, "event_time": now - 1000,
             "features": {"category": "news", "lat": 40.4168, "lon": -3.7038}}
        ]),
    )
    .await;
    let pairs = [
        ("u1", "a1"),
        ("u2", "a3"),
        ("u1", "a2"),
        ("nobody", "a1"),
        ("u2", "a1"),
        ("u1", "a3"),
    ];
    let read = |users: Vec<&str>, articles: Vec<&str>| {
        let rows = users.len();
        node.post(
            "/v1/features",
            json!({
                "entities": {"user_id": users, "article_id": articles},
                "request_data": {"user_lat": vec![52.52; rows], "user_lon": vec![13.405; rows]},
                "groups": ["feed_signals"]
            }),
        )
    };
    let mut alone = Vec::new();
    for (user, article) in pairs {
        let (status, body) = read(vec![user], vec![article]).await;
        assert_eq!(status, 200, "{body}");
        alone.push(body["results"][0]["rows"][0].clone());
    }
    // The time since the last click is in whole seconds: it may tick between two reads.
    let same = |row: &Value, expected: &Value| {
        let (mut row, mut expected) = (row.clone(), expected.clone());
        let seconds = |v: &mut Value| v["values"][0].take().as_i64();
        match (seconds(&mut row), seconds(&mut expected)) {
            (Some(a), Some(b)) => assert!((a - b).abs() <= 1, "{a} and {b} seconds"),
            (a, b) => assert_eq!(a, b),
        }
        assert_eq!(row, expected);
    };
    for rows in [pairs.len(), 70] {
        let at: Vec<usize> = (0..rows).map(|i| i % pairs.len()).collect();
        let (status, body) = read(
            at.iter().map(|&i| pairs[i].0).collect(),
            at.iter().map(|&i| pairs[i].1).collect(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let answered = body["results"][0]["rows"].as_array().unwrap();
        assert_eq!(answered.len(), rows);
        for (row, &i) in answered.iter().zip(&at) {
            same(row, &alone[i]);
        }
    }
    // The user's inputs are real values, not nulls repeated: u1 clicked a2, not a3.
    assert_eq!(alone[2]["values"][1], true, "{}", alone[2]);
    assert_eq!(alone[5]["values"][1], false, "{}", alone[5]);
    assert_eq!(alone[1]["values"][1], true, "{}", alone[1]);
}

#[tokio::test]
async fn missing_request_data_and_writes_to_on_demand_groups_are_refused() {
    let node = Served::start().await;
    let (status, body) = node
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1"], "article_id": ["a1"]}, "groups": ["feed_signals"]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("on-demand group `feed_signals` needs `user_lat` (float64)"),
        "{message}"
    );

    let (status, body) = node
        .post(
            "/v1/features",
            json!({
                "entities": {"user_id": ["u1"], "article_id": ["a1"]},
                "request_data": {"user_lat": ["north"], "user_lon": [13.4]},
                "groups": ["feed_signals"]
            }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("request_data.user_lat[0]: expected"),
        "{body}"
    );

    let (status, body) = node
        .post(
            "/v1/push",
            json!({"group": "feed_signals", "records": [{"entity": {"user_id": "u1"}, "features": {"clicks_per_view": 1}}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is an on-demand group"),
        "{body}"
    );
}

#[test]
fn wrong_expressions_are_refused_at_plan_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = REPO
        .replace(
            "expr: user_clicks.clicks / user_clicks.views",
            "expr: user_clicks.clicks / user_clicks.viewz",
        )
        .replace(
            "expr: array_has(recent_clicks.clicked_article, article_id)",
            "expr: user_clicks.clicks",
        );
    std::fs::write(dir.path().join("repo.yaml"), broken).unwrap();
    let err = repo::load_repo(dir.path()).unwrap_err().to_string();
    let line_of = |needle: &str| {
        REPO.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap()
    };
    assert!(
        err.contains(&format!(
            "repo.yaml:{}: features[2].expr:",
            line_of("user_clicks.clicks / user_clicks.views")
        )) && err.contains("viewz"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "repo.yaml:{}: features[1].expr: gives an integer, which does not fit the feature's type bool",
            line_of("array_has(recent_clicks")
        )),
        "{err}"
    );
}

/// A credit-score service the test runs: it answers, answers slowly, fails, or answers a
/// value of the wrong type, as `mode` says; it counts its calls and wants its token.
struct CreditSource {
    url: String,
    mode: std::sync::Arc<std::sync::atomic::AtomicU8>,
    calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// How many keys the last call asked for.
    last_keys: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

const ANSWER: u8 = 0;
const SLOW: u8 = 1;
const FAIL: u8 = 2;
const WRONG_TYPE: u8 = 3;

async fn credit_source() -> CreditSource {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(ANSWER));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let last_keys = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (m, c, k) = (mode.clone(), calls.clone(), last_keys.clone());
    let app = axum::Router::new().route(
        "/score",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                let (m, c, k) = (m.clone(), c.clone(), k.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    let asked = body.0["keys"]["user_id"].as_array().map_or(0, Vec::len);
                    k.store(asked, Ordering::SeqCst);
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some("Bearer t0ken-from-env")
                    {
                        return (axum::http::StatusCode::UNAUTHORIZED, axum::Json(json!({})));
                    }
                    let mode = m.load(Ordering::SeqCst);
                    if mode == SLOW {
                        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
                    }
                    if mode == FAIL {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            axum::Json(json!({})),
                        );
                    }
                    let rows: Vec<Value> = body.0["keys"]["user_id"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|k| match (k.as_str(), mode) {
                            (Some("u1"), WRONG_TYPE) => json!({"score": "high", "tier": "gold"}),
                            (Some("u1"), _) => json!({"score": 0.25, "tier": "gold"}),
                            _ => Value::Null,
                        })
                        .collect();
                    (
                        axum::http::StatusCode::OK,
                        axum::Json(json!({ "rows": rows })),
                    )
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    CreditSource {
        url: format!("http://{addr}/score"),
        mode,
        calls,
        last_keys,
    }
}

fn source_repo(url: &str) -> String {
    format!(
        r#"{REPO}---
kind: FeatureGroup
name: credit_signals
type: on_demand
sources:
  - name: credit
    url: "{url}"
    headers: {{ Authorization: "Bearer ${{CELLAR_TEST_CREDIT_TOKEN}}" }}
    keys: [user_id]
    timeout: 100ms
    breaker: {{ failures: 3, open_for: 1s }}
    fields:
      - {{ name: score, type: float64 }}
      - {{ name: tier, type: string, fallback: unknown }}
features:
  - {{ name: doubled_score, type: float64, expr: credit.score * 2 }}
  - {{ name: tier, type: string, expr: credit.tier }}
  - {{ name: clicks, type: int64, expr: user_clicks.clicks }}
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn external_sources_degrade_their_features_never_the_request() {
    use std::sync::atomic::Ordering;
    // The token reaches the source from the environment; the spec only names it.
    std::env::set_var("CELLAR_TEST_CREDIT_TOKEN", "t0ken-from-env");
    let source = credit_source().await;
    let deadline_ms = Config::default().server.deadline_ms;
    let node = Served::start_with(&source_repo(&source.url)).await;
    node.push(
        "user_clicks",
        json!([{"entity": {"user_id": "u1"}, "features": {"clicks": 7, "views": 9}}]),
    )
    .await;
    let read = || async {
        let started = std::time::Instant::now();
        let (status, body) = node
            .post(
                "/v1/features",
                json!({"entities": {"user_id": ["u1", "u2"]}, "groups": ["credit_signals"]}),
            )
            .await;
        let elapsed = started.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(
            elapsed < std::time::Duration::from_millis(deadline_ms),
            "the read took {elapsed:?}, past its deadline"
        );
        body["results"][0]["rows"].clone()
    };

    // Answers: u1's values, u2 unknown to the source.
    let rows = read().await;
    assert_eq!(rows[0]["values"], json!([0.5, "gold", 7]), "{rows}");
    assert_eq!(
        rows[1]["statuses"],
        json!(["not_found", "not_found", "not_found"])
    );
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    // No cache TTL: every read calls the source again.
    read().await;
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);

    // A value of the wrong type is that field's error; the fallback field and the stored
    // feature are unaffected.
    source.mode.store(WRONG_TYPE, Ordering::SeqCst);
    let rows = read().await;
    assert_eq!(
        rows[0]["statuses"],
        json!(["error", "present", "present"]),
        "{rows}"
    );
    let error = rows[0]["errors"][0].as_str().unwrap();
    assert!(
        error.contains("source `credit` field `score`: expected float64"),
        "{error}"
    );

    // Fails, then answers too slowly: the score is an error, the tier its fallback.
    for (mode, says) in [(FAIL, "answered 500"), (SLOW, "no answer within")] {
        source.mode.store(mode, Ordering::SeqCst);
        let rows = read().await;
        assert_eq!(
            rows[0]["statuses"],
            json!(["error", "present", "present"]),
            "{rows}"
        );
        assert_eq!(rows[0]["values"][1], "unknown");
        let error = rows[0]["errors"][0].as_str().unwrap();
        assert!(error.contains(says), "{error}");
    }

    // A third failure opens the breaker: the source is no longer called.
    source.mode.store(FAIL, Ordering::SeqCst);
    read().await;
    let calls = source.calls.load(Ordering::SeqCst);
    let rows = read().await;
    assert_eq!(
        source.calls.load(Ordering::SeqCst),
        calls,
        "called with the breaker open"
    );
    let error = rows[0]["errors"][0].as_str().unwrap();
    assert!(error.contains("circuit open"), "{error}");

    // Once `open_for` has passed, one call goes through; it succeeds and closes the breaker.
    source.mode.store(ANSWER, Ordering::SeqCst);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rows = read().await;
    assert_eq!(rows[0]["values"], json!([0.5, "gold", 7]), "{rows}");
    assert_eq!(source.calls.load(Ordering::SeqCst), calls + 1);
    read().await;
    assert_eq!(source.calls.load(Ordering::SeqCst), calls + 2);

    let metrics = node
        .client
        .get(format!("{}/metrics", node.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"cellar_on_demand_source_calls_total{source="credit",outcome="ok"} 5"#,
        r#"cellar_on_demand_source_calls_total{source="credit",outcome="breaker_open"} 1"#,
        r#"cellar_on_demand_source_breaker_open{source="credit"} 0"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
}

#[test]
fn a_source_credential_written_out_is_refused_at_plan() {
    let dir = tempfile::tempdir().unwrap();
    let written_out =
        source_repo("http://127.0.0.1:1/score").replace("${CELLAR_TEST_CREDIT_TOKEN}", "s3cret");
    std::fs::write(dir.path().join("repo.yaml"), written_out).unwrap();
    let err = repo::load_repo(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("sources[0].headers.Authorization: `Authorization` carries a credential"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");

    let unknown_key =
        source_repo("http://127.0.0.1:1/score").replace("keys: [user_id]", "keys: [user_idd]");
    std::fs::write(dir.path().join("repo.yaml"), unknown_key).unwrap();
    let err = repo::load_repo(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("sources[0].keys[0]: `user_idd` is not an entity key field"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_answer_is_kept_in_process_for_its_cache_ttl_only() {
    use std::sync::atomic::Ordering;
    std::env::set_var("CELLAR_TEST_CREDIT_TOKEN", "t0ken-from-env");
    let source = credit_source().await;
    let repo = source_repo(&source.url).replace(
        "    timeout: 100ms\n",
        "    timeout: 100ms\n    cache_ttl: 1s\n",
    );
    assert!(repo.contains("cache_ttl: 1s"));
    let node = Served::start_with(&repo).await;
    let read = |users: Value| {
        let node = &node;
        async move {
            let (status, body) = node
                .post(
                    "/v1/features",
                    json!({"entities": {"user_id": users}, "groups": [{"name": "credit_signals", "features": ["doubled_score"]}]}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            body["results"][0]["rows"].clone()
        }
    };
    let rows = read(json!(["u1"])).await;
    assert_eq!(rows[0]["values"], json!([0.5]));
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    // Within the TTL u1 is answered from the cache; only u2 is asked for.
    let rows = read(json!(["u1", "u2"])).await;
    assert_eq!(rows[0]["values"], json!([0.5]));
    assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    read(json!(["u1", "u2"])).await;
    assert_eq!(source.calls.load(Ordering::SeqCst), 2, "both cached");
    // Past it, the source is asked again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    read(json!(["u1"])).await;
    assert_eq!(source.calls.load(Ordering::SeqCst), 3);
    // Rows repeating a key (one user, many articles) ask for it once.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let rows = read(json!(["u1", "u2", "u1", "u1"])).await;
    assert_eq!(source.calls.load(Ordering::SeqCst), 4);
    assert_eq!(source.last_keys.load(Ordering::SeqCst), 2);
    assert_eq!(rows[2]["values"], json!([0.5]));
    assert_eq!(rows[3]["values"], json!([0.5]));
    assert_eq!(rows[1]["statuses"], json!(["not_found"]));
}

/// Expressions written identically at write time (into `item_stats`, by a batch ingestion and
/// by a stream ingestion) and at read time (the on-demand group `item_recomputed`).
const PARITY_EXPRESSIONS: [(&str, &str, &str); 9] = [
    ("sum3", "int64", "item_stats.a + item_stats.b * 3"),
    (
        "ratio",
        "int64",
        "CASE WHEN item_stats.b <> 0 THEN item_stats.a / item_stats.b ELSE -1 END",
    ),
    (
        "mixed",
        "float64",
        "item_stats.x * 1.5 - sqrt(abs(item_stats.y))",
    ),
    (
        "km",
        "float64",
        "haversine_km(item_stats.x, item_stats.y, 52.52, 13.405)",
    ),
    (
        "label",
        "string",
        "upper(coalesce(item_stats.s, 'none')) || '-' || CAST(item_stats.a AS VARCHAR)",
    ),
    (
        "above",
        "bool",
        "item_stats.a > item_stats.b AND item_stats.x < 0",
    ),
    (
        "age_at_write_s",
        "int64",
        "CAST(to_unixtime(item_stats.event_time) - to_unixtime(item_stats.t) AS BIGINT)",
    ),
    ("hour", "float64", "date_part('hour', item_stats.t) + 0.5"),
    // Generated `b`s are above -6: only the stream test's poison event divides by zero.
    ("quotient", "int64", "item_stats.a / (item_stats.b + 6)"),
];

fn parity_repo(input: &std::path::Path) -> String {
    let stored: String = PARITY_EXPRESSIONS
        .iter()
        .map(|(name, ty, _)| format!("  - {{ name: {name}, type: {ty} }}\n"))
        .collect();
    let written: String = PARITY_EXPRESSIONS
        .iter()
        .map(|(name, _, expr)| format!("  {name}: {{ expr: \"{expr}\" }}\n"))
        .collect();
    let stream_written: String = PARITY_EXPRESSIONS
        .iter()
        .map(|(name, _, expr)| format!("  {name}: {{ expr: \"{expr}\" }}\n"))
        .collect();
    let recomputed: String = PARITY_EXPRESSIONS
        .iter()
        .map(|(name, ty, expr)| format!("  - {{ name: {name}, type: {ty}, expr: \"{expr}\" }}\n"))
        .collect();
    format!(
        r#"kind: Entity
name: item
keys: [{{ name: item_id, type: string }}]
---
kind: FeatureGroup
name: item_stats
entity: item
type: attribute
features:
  - {{ name: a, type: int64 }}
  - {{ name: b, type: int64 }}
  - {{ name: x, type: float64 }}
  - {{ name: y, type: float64 }}
  - {{ name: s, type: string }}
  - {{ name: t, type: timestamp }}
{stored}---
kind: Ingestion
name: item_files
batch: {{ files: {{ path: "{input}/*.parquet" }} }}
into: item_stats
key: item_id
event_time: ts
features:
  a: a
  b: b
  x: x
  y: y
  s: s
  t: t
{written}---
kind: Ingestion
name: item_events
stream: {{ topic: items, format: json }}
into: item_stats
key: $.item_id
event_time: $.ts
features:
  a: $.a
  b: $.b
  x: $.x
  y: $.y
  s: $.s
  t: $.t
{stream_written}---
kind: FeatureGroup
name: item_recomputed
type: on_demand
features:
{recomputed}"#,
        input = input.display()
    )
}

/// A deterministic stream of numbers for generated rows.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// `None` about one time in eight, so every column has nulls.
    fn maybe<T>(&mut self, value: T) -> Option<T> {
        (!self.next().is_multiple_of(8)).then_some(value)
    }
}

const PARITY_ROWS: usize = 3000;

/// Writes `rows` generated rows as Parquet under `dir`, ids `{prefix}0...`.
fn write_items(dir: &std::path::Path, prefix: &str, rows: usize, seed: u64) -> i64 {
    use arrow_array::{
        ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
    };
    use std::sync::Arc;
    let mut r = Lcg(seed);
    let now = now_ms();
    let ids: Vec<String> = (0..rows).map(|i| format!("{prefix}{i}")).collect();
    let ts: Vec<i64> = (0..rows)
        .map(|_| now - 86_400_000 + (r.next() % 80_000_000) as i64)
        .collect();
    let a: Vec<Option<i64>> = (0..rows)
        .map(|_| {
            let v = (r.next() % 2001) as i64 - 1000;
            r.maybe(v)
        })
        .collect();
    let b: Vec<Option<i64>> = (0..rows)
        .map(|_| {
            let v = (r.next() % 11) as i64 - 5;
            r.maybe(v)
        })
        .collect();
    let x: Vec<Option<f64>> = (0..rows)
        .map(|_| {
            let v = (r.next() % 18_000) as f64 / 100.0 - 90.0;
            r.maybe(v)
        })
        .collect();
    let y: Vec<Option<f64>> = (0..rows)
        .map(|_| {
            let v = (r.next() % 36_000) as f64 / 100.0 - 180.0;
            r.maybe(v)
        })
        .collect();
    let words = ["red", "Green", "blue ", "", "ünïcode"];
    let s: Vec<Option<&str>> = (0..rows)
        .map(|_| {
            let v = words[(r.next() % 5) as usize];
            r.maybe(v)
        })
        .collect();
    let t: Vec<Option<i64>> = ts
        .iter()
        .map(|ts| {
            let v = ts - (r.next() % 10_000_000) as i64;
            r.maybe(v)
        })
        .collect();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("item_id", Arc::new(StringArray::from(ids))),
        (
            "ts",
            Arc::new(TimestampMillisecondArray::from(ts).with_timezone("UTC")),
        ),
        ("a", Arc::new(Int64Array::from(a))),
        ("b", Arc::new(Int64Array::from(b))),
        ("x", Arc::new(Float64Array::from(x))),
        ("y", Arc::new(Float64Array::from(y))),
        ("s", Arc::new(StringArray::from(s))),
        (
            "t",
            Arc::new(TimestampMillisecondArray::from(t).with_timezone("UTC")),
        ),
    ];
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let file = std::fs::File::create(dir.join(format!("{prefix}.parquet"))).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    now
}

impl Served {
    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// Runs a batch job of `ingestion` to its end and returns it.
    async fn run_job(&self, ingestion: &str) -> Value {
        let (status, submitted) = self
            .post("/v1/jobs", json!({ "ingestion": ingestion }))
            .await;
        assert_eq!(status, 202, "{submitted}");
        let id = submitted["id"]
            .as_u64()
            .or(submitted["job"]["id"].as_u64())
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let (_, shown) = self.get(&format!("/v1/jobs/{id}")).await;
            let state = shown["job"]["state"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if state == "succeeded" || state == "failed" {
                return shown;
            }
            assert!(std::time::Instant::now() < deadline, "job {id}: {shown}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The values of `groups` for the items `ids`, one JSON array of rows per group.
    async fn item_rows(&self, ids: &[String], groups: &[&str]) -> Vec<Vec<Value>> {
        let mut out = vec![Vec::new(); groups.len()];
        for chunk in ids.chunks(500) {
            let (status, body) = self
                .post(
                    "/v1/features",
                    json!({"entities": {"item_id": chunk}, "groups": groups}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            for (g, rows) in out.iter_mut().enumerate() {
                rows.extend(
                    body["results"][g]["rows"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .cloned(),
                );
            }
        }
        out
    }
}

/// The stored (written) values of the parity features from a row of `item_stats`.
fn written_values(row: &Value) -> Vec<Value> {
    let values = row["values"].as_array().unwrap();
    values[6..].to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn expressions_give_the_same_values_written_by_the_batch_path_and_computed_when_served() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("items");
    write_items(&input, "i", PARITY_ROWS, 7);
    let node = Served::start_with(&parity_repo(&input)).await;
    let job = node.run_job("item_files").await;
    assert_eq!(job["job"]["state"], "succeeded", "{job}");
    assert_eq!(job["job"]["rows_written"], PARITY_ROWS as u64, "{job}");

    let ids: Vec<String> = (0..PARITY_ROWS).map(|i| format!("i{i}")).collect();
    let rows = node
        .item_rows(&ids, &["item_stats", "item_recomputed"])
        .await;
    let (mut nulls, mut values) = (0, 0);
    for (i, (stored, served)) in rows[0].iter().zip(&rows[1]).enumerate() {
        assert_eq!(stored["status"], "present", "row {i}: {stored}");
        let written = written_values(stored);
        let computed = served["values"].as_array().unwrap();
        assert_eq!(
            &written, computed,
            "row {i}: written {stored}, served {served}"
        );
        nulls += written.iter().filter(|v| v.is_null()).count();
        values += written.iter().filter(|v| !v.is_null()).count();
    }
    // The generated rows reach every kind of value, nulls included.
    assert!(
        nulls > PARITY_ROWS / 4 && values > PARITY_ROWS * 5,
        "{nulls} nulls, {values} values"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_events_are_written_with_their_computed_features_and_a_failing_one_is_dead_lettered()
{
    let dir = tempfile::tempdir().unwrap();
    let node = Served::start_with(&parity_repo(&dir.path().join("unused"))).await;
    let now = now_ms();
    let event = |id: &str, a: i64, b: i64| {
        json!({"item_id": id, "ts": now - 60_000, "a": a, "b": b, "x": -10.5, "y": 20.25,
               "s": "red", "t": now - 3_660_000})
    };
    // e3 divides by zero: it alone is dead-lettered, with the feature and the reason.
    let events = [event("e1", 7, 2), event("e3", 1, -6), event("e2", 1, 5)];
    let (status, body) = node
        .post("/v1/events", json!({"topic": "items", "events": events}))
        .await;
    assert_eq!(status, 200, "{body}");
    let ids = vec!["e1".to_owned(), "e2".to_owned(), "e3".to_owned()];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let rows = loop {
        let rows = node
            .item_rows(&ids, &["item_stats", "item_recomputed"])
            .await;
        if rows[0][..2].iter().all(|r| r["status"] == "present") {
            break rows;
        }
        assert!(std::time::Instant::now() < deadline, "{rows:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let e1 = written_values(&rows[0][0]);
    assert_eq!(e1[0], 13, "{e1:?}");
    assert_eq!(e1[1], 3, "{e1:?}");
    assert_eq!(e1[4], "RED-7", "{e1:?}");
    assert_eq!(e1[5], true, "{e1:?}");
    assert_eq!(e1[6], 3_600, "{e1:?}");
    assert_eq!(e1[8], 0, "{e1:?}");
    for (stored, served) in rows[0][..2].iter().zip(&rows[1]) {
        assert_eq!(
            &written_values(stored),
            served["values"].as_array().unwrap()
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let letters = loop {
        let (status, letters) = node.get("/v1/dead-letters?ingestion=item_events").await;
        assert_eq!(status, 200, "{letters}");
        if !letters.as_array().unwrap().is_empty() {
            break letters;
        }
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let error = letters[0]["error"].as_str().unwrap();
    assert!(
        error.contains("feature `quotient`") && error.contains("Divide by zero"),
        "{error}"
    );
    let (_, body) = node
        .post(
            "/v1/features",
            json!({"entities": {"item_id": ["e3"]}, "groups": ["item_stats"]}),
        )
        .await;
    assert_eq!(
        body["results"][0]["rows"][0]["status"], "not_found",
        "{body}"
    );
}

#[test]
fn a_write_time_expression_that_does_not_fit_is_refused_at_plan_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = parity_repo(&dir.path().join("items")).replace(
        "sum3: { expr: \"item_stats.a + item_stats.b * 3\" }",
        "sum3: { expr: \"item_stats.x + item_stats.nope\" }",
    );
    std::fs::write(dir.path().join("repo.yaml"), &text).unwrap();
    let err = repo::load_repo(dir.path()).unwrap_err().to_string();
    let line = text
        .lines()
        .position(|l| l.contains("item_stats.nope"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("repo.yaml:{line}")), "{err}");
    assert!(err.contains("nope"), "{err}");
}

/// A source answering, for every user asked, a report no other part of the test writes.
async fn report_source(report: String) -> String {
    let app = axum::Router::new().route(
        "/report",
        axum::routing::post(move |body: axum::Json<Value>| {
            let report = report.clone();
            async move {
                let rows: Vec<Value> = body.0["keys"]["user_id"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|user| json!({"report": format!("{report}-{}", user.as_str().unwrap())}))
                    .collect();
                axum::Json(json!({ "rows": rows }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/report")
}

/// Whether `haystack` holds `needle`.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| holds(&bytes, needle)) {
                found.push(path);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn values_of_an_uncached_source_are_kept_by_no_tier_and_no_store() {
    let redis_url = common::service_address("CELLAR_TEST_REDIS", "Redis");
    let tag = format!("{:016x}", rand::random::<u64>());
    let secret = format!("source-report-{tag}");
    let stored = format!("stored-nickname-{tag}");
    let url = report_source(secret.clone()).await;
    let repo = format!(
        r#"kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
serving: {{ tiers: [local, remote], write: through }}
features:
  - {{ name: nickname, type: string }}
---
kind: FeatureGroup
name: risk
type: on_demand
sources:
  - name: credit
    url: "{url}"
    keys: [user_id]
    timeout: 2s
    cache_ttl: 0s
    fields:
      - {{ name: report, type: string }}
features:
  - {{ name: report, type: string, expr: credit.report }}
  - {{ name: headline, type: string, expr: "profile.nickname || ': ' || credit.report" }}
---
kind: FeatureService
name: underwriting
features: [profile:nickname, risk:headline]
"#
    );
    let (node, local) = Served::start_configured(&repo, |config| {
        config.cache.remote_urls = vec![redis_url.clone()];
        config.cache.remote_key_prefix = format!("cellar-compliance:{tag}:");
    })
    .await;
    let data_dir = node.data_dir();

    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let records: Vec<Value> = users
        .iter()
        .map(|u| {
            json!({"entity": {"user_id": u}, "event_time": now_ms() - 1000,
                        "features": {"nickname": format!("{stored}-{u}")}})
        })
        .collect();
    node.push("profile", json!(records)).await;
    // Every way of reading the source, twice, so that anything a first read would keep is
    // there for the second.
    for _ in 0..2 {
        let (status, body) = node
            .post(
                "/v1/features",
                json!({"entities": {"user_id": users}, "groups": ["profile", "risk"]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let row = &body["results"][1]["rows"][3];
        assert_eq!(row["values"][0], format!("{secret}-u3"), "{body}");
        assert_eq!(
            row["values"][1],
            format!("{stored}-u3: {secret}-u3"),
            "{body}"
        );
        let (status, body) = node
            .post(
                "/v1/features",
                json!({"entities": {"user_id": users}, "feature_service": "underwriting"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.to_string().contains(&secret), "{body}");
        let (status, body) = node
            .post(
                "/get-online-features",
                json!({"features": ["risk:report"], "entities": {"user_id": users}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert!(body.to_string().contains(&secret), "{body}");
    }

    // The local tier: the stored group's values are there, the source's are not.
    let (mut stored_seen, mut secret_seen) = (0, 0);
    local.for_each_record(|_, record| {
        for value in &record.values {
            let text = format!("{value:?}");
            stored_seen += usize::from(text.contains(&stored));
            secret_seen += usize::from(text.contains(&secret));
        }
    });
    assert!(
        stored_seen >= users.len(),
        "the local tier holds {stored_seen} stored values"
    );
    assert_eq!(secret_seen, 0, "the local tier holds source values");

    // The Redis tier: every key under this node's prefix, read whole.
    let client = redis::Client::open(redis_url).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("cellar-compliance:{tag}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let (mut stored_seen, mut secret_seen) = (0, 0);
    for key in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let bytes: Vec<u8> = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap(),
            _ => redis::cmd("DUMP")
                .arg(key)
                .query_async(&mut redis)
                .await
                .unwrap(),
        };
        stored_seen +=
            usize::from(holds(&bytes, stored.as_bytes()) || holds(key, stored.as_bytes()));
        secret_seen +=
            usize::from(holds(&bytes, secret.as_bytes()) || holds(key, secret.as_bytes()));
    }
    assert!(
        stored_seen >= users.len(),
        "Redis holds {stored_seen} stored values in {} keys",
        keys.len()
    );
    assert_eq!(secret_seen, 0, "Redis holds source values");

    // The store and everything else the node keeps on disk (registry, log, audit).
    assert!(
        !files_holding(&data_dir, stored.as_bytes()).is_empty(),
        "the store's files hold no stored value"
    );
    let leaked = files_holding(&data_dir, secret.as_bytes());
    assert!(leaked.is_empty(), "source values on disk: {leaked:?}");
}

#[tokio::test]
async fn an_on_demand_group_reads_another_computed_first_for_the_same_rows() {
    let repo = format!(
        r#"{REPO}---
kind: FeatureGroup
name: feed_rank
type: on_demand
features:
  - name: score
    type: float64
    expr: "CASE WHEN feed_signals.clicked_before THEN 0.0 ELSE 100.0 / (1.0 + feed_signals.distance_km) END"
  - name: busy
    type: bool
    expr: feed_signals.clicks_per_view > 1
"#
    );
    let node = Served::start_with(&repo).await;
    let now = now_ms();
    node.push_user_clicks(now).await;
    node.push(
        "article_profile",
        json!([
            {"entity": {"article_id": "a1"}, "event_time": now - 1000,
             "features": {"category": "food", "lat": 52.52, "lon": 13.405}}
        ]),
    )
    .await;
    let request = |groups: Value| {
        json!({
            "entities": {"user_id": ["u1", "u2"], "article_id": ["a1", "a1"]},
            "request_data": {"user_lat": [52.52, 52.52], "user_lon": [13.405, 13.405]},
            "groups": groups
        })
    };
    // Only the reading group asked for: the one it reads is computed, not answered.
    let (status, body) = node
        .post("/v1/features", request(json!(["feed_rank"])))
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{body}");
    let rows = &results[0]["rows"];
    // u1 at a1: not clicked before, 0 km away.
    assert_eq!(rows[0]["values"], json!([100.0, true]), "{body}");
    // u2: a division by zero in the group read is the error of the feature reading it.
    assert_eq!(rows[1]["statuses"], json!(["present", "error"]), "{body}");
    assert!(
        rows[1]["errors"][1]
            .as_str()
            .unwrap()
            .contains("Divide by zero"),
        "{body}"
    );

    // Both asked for, the read one with one feature: answered as asked.
    let (status, body) = node
        .post(
            "/v1/features",
            request(json!([{"name": "feed_signals", "features": ["distance_km"]}, "feed_rank"])),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"][0]["features"],
        json!(["distance_km"]),
        "{body}"
    );
    assert_eq!(
        body["results"][0]["rows"][0]["values"],
        json!([0.0]),
        "{body}"
    );
    assert_eq!(
        body["results"][1]["rows"][0]["values"],
        json!([100.0, true]),
        "{body}"
    );
}

#[tokio::test]
async fn a_group_of_request_data_alone_is_read_without_entity_keys() {
    let node = Served::start().await;
    let (status, body) = node
        .post(
            "/v1/features",
            json!({
                "request_data": {"price": [2.5, 4.0, 1.0], "quantity": [2, 0, null]},
                "groups": ["basket"]
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rows = &body["results"][0]["rows"];
    let totals: Vec<&Value> = (0..3).map(|i| &rows[i]["values"][0]).collect();
    assert_eq!(totals, [&json!(5.0), &json!(0.0), &Value::Null], "{body}");
    assert_eq!(rows[0]["statuses"], json!(["present"]));
    assert_eq!(rows[2]["statuses"], json!(["not_found"]));

    // Columns of different lengths, no rows at all, and a stored group beside it that needs
    // keys the request does not give: each refused, named.
    for (request, wanted) in [
        (
            json!({"request_data": {"price": [1.0, 2.0], "quantity": [1]}, "groups": ["basket"]}),
            "`quantity` has 1 values for 2",
        ),
        (
            json!({"request_data": {"price": [], "quantity": []}, "groups": ["basket"]}),
            "request_data: the columns are empty",
        ),
        (
            json!({"request_data": {"price": [1.0], "quantity": [1]},
                   "groups": ["basket", "article_profile"]}),
            "needs entity key `article_id`",
        ),
        (json!({"groups": ["basket"]}), "no entity keys given"),
    ] {
        let (status, body) = node.post("/v1/features", request.clone()).await;
        assert_eq!(status, 400, "{request}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(wanted), "{request}: {message}");
    }
}
