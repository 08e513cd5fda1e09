//! Bad input at every door of a serving node: keys the stores cannot hold (a NUL byte, a key
//! over the length limit), event times far from now, windows past any sane length. Each is
//! refused where it enters with a message naming the field and the limit; in a batch of
//! events, exactly the bad ones are dead-lettered and every other event is served.

use std::net::SocketAddr;
use std::time::Duration;

use cellar::config::Config;
use cellar::node::Node;
use serde_json::{json, Value};
use tempfile::TempDir;

const REPO: &str = r#"
kind: Entity
name: user
keys: [{ name: user_id, type: string }]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - { name: country, type: string }
  - { name: clicks_1h, type: int64 }
---
kind: FeatureGroup
name: clicks
entity: user
type: timeseries
features:
  - { name: article_id, type: string }
retention: { max_records: 100 }
---
kind: Ingestion
name: profiles
stream: { topic: actions, event_types: [profile_updated] }
into: profile
key: $.user_id
event_time: $.ts
features: { country: $.country }
---
kind: Ingestion
name: click_counts
stream: { topic: actions, event_types: [article_clicked] }
into: profile
key: $.user_id
event_time: $.ts
features:
  clicks_1h: { aggregate: count, window: 1h }
---
kind: Ingestion
name: click_series
stream: { topic: actions, event_types: [article_clicked] }
into: clicks
key: $.user_id
event_time: $.ts
features: { article_id: $.article_id }
"#;

/// The longest entity key every store backend can hold, in bytes.
const KEY_LIMIT: usize = 1024;

/// A key one byte over that limit.
fn long_key() -> String {
    "k".repeat(KEY_LIMIT + 1)
}

/// A key longer than the embedded engine's own limit on keys (64 KiB).
fn huge_key() -> String {
    "k".repeat(70_000)
}

struct Server {
    base: String,
    client: reqwest::Client,
    _dir: TempDir,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let repo_dir = dir.path().join("repo");
        std::fs::create_dir_all(&repo_dir).unwrap();
        std::fs::write(repo_dir.join("repo.yaml"), REPO).unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            repo: repo_dir,
            ..Config::default()
        };
        config.server.max_entities_per_request = 5000;
        // Failures that are retried come back at once and give up after one retry, so a
        // batch failed by a bad neighbour shows up here as dead letters, not as a wait.
        config.ingest.retry_backoff_ms = 10;
        config.ingest.max_attempts = 2;
        let registry = cellar_registry::Registry::open(&config.registry_url())
            .await
            .unwrap();
        let desired = cellar::repo::load_repo(&config.repo).unwrap();
        registry.apply(&desired).await.unwrap();
        let node = Node::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(node.serve(listener, None, std::future::pending()));
        Server {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// The status and body of a POST; a connection closed without an answer is status 0.
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = match self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
        {
            Ok(resp) => resp,
            Err(e) => return (0, Value::String(format!("no answer: {e}"))),
        };
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn dead_letters(&self) -> Vec<Value> {
        let resp = self
            .client
            .get(format!("{}/v1/dead-letters?limit=1000", self.base))
            .send()
            .await
            .unwrap();
        let body: Value = resp.json().await.unwrap();
        body.as_array().cloned().unwrap_or_default()
    }

    /// How many of `users` have a click served.
    async fn users_with_clicks(&self, users: &[String]) -> usize {
        let (status, body) = self
            .post(
                "/v1/features",
                json!({"entities": {"user_id": users}, "groups": [{"name": "clicks", "top_n": 1}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["results"][0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["status"] == "present")
            .count()
    }
}

fn error_message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string())
}

#[tokio::test]
async fn one_bad_key_among_thousands_of_events_is_dead_lettered_alone() {
    let s = Server::start().await;
    let now = chrono::Utc::now().timestamp_millis();
    let users: Vec<String> = (0..3000).map(|i| format!("u{i}")).collect();
    let mut events: Vec<Value> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            json!({"type": "article_clicked", "user_id": u, "ts": now - 1000, "article_id": format!("a{i}")})
        })
        .collect();
    // Among them: a key holding a NUL byte, a key over the limit, a key over the engine's.
    events.insert(
        1500,
        json!({"type": "article_clicked", "user_id": "bad\u{0}key", "ts": now, "article_id": "x"}),
    );
    events.insert(
        700,
        json!({"type": "article_clicked", "user_id": long_key(), "ts": now, "article_id": "y"}),
    );
    events.insert(
        2200,
        json!({"type": "article_clicked", "user_id": huge_key(), "ts": now, "article_id": "z"}),
    );
    let (status, body) = s
        .post("/v1/events", json!({"topic": "actions", "events": events}))
        .await;
    assert_eq!(status, 200, "{body}");

    let mut served = 0;
    let mut dead = Vec::new();
    for _ in 0..600 {
        served = s.users_with_clicks(&users).await;
        dead = s.dead_letters().await;
        if served == users.len() && dead.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, users.len(), "every good event is served");
    // Each bad event fails both ingestions of clicks, alone, for its own reason.
    let mut reasons: Vec<(String, String, String)> = dead
        .iter()
        .map(|d| {
            let payload: Value = serde_json::from_str(d["payload"].as_str().unwrap()).unwrap();
            let article = payload["article_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (
                article,
                d["ingestion"].as_str().unwrap_or_default().to_owned(),
                d["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    reasons.sort();
    let summary: Vec<(&str, &str)> = reasons
        .iter()
        .map(|(a, i, _)| (a.as_str(), i.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("x", "click_counts"),
            ("x", "click_series"),
            ("y", "click_counts"),
            ("y", "click_series"),
            ("z", "click_counts"),
            ("z", "click_series"),
        ],
        "{reasons:?}"
    );
    for (article, _, error) in &reasons {
        match article.as_str() {
            "x" => assert!(
                error.contains("may not contain a control character: it holds U+0000"),
                "{error}"
            ),
            _ => assert!(error.contains("over the limit of 1024 bytes"), "{error}"),
        }
        assert!(
            !error.contains("store"),
            "refused before the store: {error}"
        );
    }
}

#[tokio::test]
async fn keys_the_stores_cannot_hold_get_a_400_naming_the_limit() {
    let s = Server::start().await;
    let too_long = |message: &str| {
        assert!(
            message.contains("over the limit of 1024 bytes"),
            "{message}"
        )
    };
    for key in [long_key(), huge_key()] {
        let (status, body) = s
            .post(
                "/v1/features",
                json!({"entities": {"user_id": [key]}, "groups": ["profile"]}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        too_long(&error_message(&body));

        let (status, body) = s
            .post(
                "/v1/push",
                json!({"group": "profile", "records": [
                    {"entity": {"user_id": "u1"}, "features": {"country": "KR"}},
                    {"entity": {"user_id": key}, "features": {"country": "KR"}}]}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let message = error_message(&body);
        too_long(&message);
        assert!(message.starts_with("records[1]"), "{message}");

        let (status, body) = s
            .post(
                "/get-online-features",
                json!({"features": ["profile:country"], "entities": {"user_id": [key]}}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        too_long(&error_message(&body));

        let (status, body) = s
            .post(
                "/push",
                json!({"push_source_name": "profile",
                       "df": {"user_id": [key], "country": ["KR"]}}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        too_long(&error_message(&body));
    }
    let (status, body) = s
        .post(
            "/v1/push",
            json!({"group": "clicks", "records": [
                {"entity": {"user_id": "nul\u{0}"}, "features": {"article_id": "a"}}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_message(&body).contains("may not contain a control character: it holds U+0000"),
        "{body}"
    );
    // Nothing of a refused push was written.
    let (_, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1"]}, "groups": ["profile"]}),
        )
        .await;
    assert_eq!(
        body["results"][0]["rows"][0]["status"], "not_found",
        "{body}"
    );
}

#[tokio::test]
async fn event_times_far_from_now_are_refused_with_the_range() {
    let s = Server::start().await;
    let now = chrono::Utc::now().timestamp_millis();
    for (i, t) in [
        json!(i64::MAX),
        json!(i64::MIN),
        json!(now + 10 * 86_400_000),
        json!("1969-07-20T20:17:00Z"),
    ]
    .into_iter()
    .enumerate()
    {
        let (status, body) = s
            .post(
                "/v1/push",
                json!({"group": "profile", "records": [
                    {"entity": {"user_id": format!("u{i}")}, "event_time": t, "features": {"country": "KR"}}]}),
            )
            .await;
        assert_eq!(status, 400, "{t}: {body}");
        let message = error_message(&body);
        assert!(
            message.contains("records[0].event_time")
                && message.contains("outside the accepted event times")
                && message.contains("2000-01-01T00:00:00Z"),
            "{message}"
        );
    }
    // An entity pushed at the far end of time is not frozen: nothing was stored.
    let (status, body) = s
        .post(
            "/v1/push",
            json!({"group": "profile", "records": [
                {"entity": {"user_id": "u0"}, "event_time": now, "features": {"country": "JP"}}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"applied": 1, "stale": 0}));

    // From a stream, the event is dead-lettered alone and the others are applied.
    let events = vec![
        json!({"type": "profile_updated", "user_id": "s1", "ts": now, "country": "KR"}),
        json!({"type": "profile_updated", "user_id": "s2", "ts": i64::MAX, "country": "KR"}),
        json!({"type": "profile_updated", "user_id": "s3", "ts": now, "country": "KR"}),
    ];
    let (status, body) = s
        .post("/v1/events", json!({"topic": "actions", "events": events}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut dead = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..600 {
        dead = s.dead_letters().await;
        let (_, body) = s
            .post(
                "/v1/features",
                json!({"entities": {"user_id": ["s1", "s2", "s3"]}, "groups": ["profile"]}),
            )
            .await;
        statuses = body["results"][0]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap().to_owned())
            .collect();
        if !dead.is_empty() && statuses == ["present", "not_found", "present"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(statuses, ["present", "not_found", "present"]);
    assert_eq!(dead.len(), 1, "{dead:?}");
    let error = dead[0]["error"].as_str().unwrap();
    assert!(
        error.contains("event_time") && error.contains("outside the accepted event times"),
        "{error}"
    );
}

#[tokio::test]
async fn windows_past_any_sane_length_get_a_400() {
    let s = Server::start().await;
    for window in ["200000000000d", "36501d"] {
        let (status, body) = s
            .post(
                "/v1/features",
                json!({"entities": {"user_id": ["u1"]},
                       "groups": [{"name": "clicks", "window": window}]}),
            )
            .await;
        assert_eq!(status, 400, "{window}: {body}");
        let message = error_message(&body);
        assert!(
            message.contains("groups[0].window") && message.contains("36500d"),
            "{message}"
        );
    }
    let (status, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1"]},
                   "groups": [{"name": "clicks", "window": "36500d"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}
