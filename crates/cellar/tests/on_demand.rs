//! On-demand groups on a serving node: features computed per request from request data, entity
//! keys and stored groups (attributes and time series), with a status per value; refused where
//! they cannot work (writes, wrong expressions at plan).

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
kind: FeatureService
name: ranker
features:
  - article_profile:category
  - feed_signals:*
"#;

struct Served {
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Served {
        Served::start_with(REPO).await
    }

    /// A node serving the repo `text`.
    async fn start_with(text: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            repo: dir.path().join("repo"),
            ..Config::default()
        };
        std::fs::create_dir_all(&config.repo).unwrap();
        std::fs::write(config.repo.join("repo.yaml"), text).unwrap();
        let registry = Registry::open(&config.registry_url()).await.unwrap();
        registry
            .apply(&repo::load_repo(&config.repo).unwrap())
            .await
            .unwrap();
        let node = Node::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(node.serve(listener, None, std::future::pending()));
        Served {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _dir: dir,
        }
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
    node.push(
        "user_clicks",
        json!([
            {"entity": {"user_id": "u1"}, "event_time": now - 1000,
             "features": {"last_click_at": now - 90_000, "clicks": 6, "views": 3}},
            {"entity": {"user_id": "u2"}, "event_time": now - 1000,
             "features": {"last_click_at": now - 5_000, "clicks": 1, "views": 0}}
        ]),
    )
    .await;
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
