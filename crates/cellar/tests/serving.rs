//! End-to-end tests of a serving node over HTTP: the example repo applied, records pushed and
//! read back through the local tier and the embedded store. The tests of a node on DynamoDB or
//! Redis need the server `CELLAR_TEST_DYNAMODB` or `CELLAR_TEST_REDIS` names (`scripts/test.sh`
//! starts both): they are ignored by a plain `cargo test`, and run with `--include-ignored` but
//! without their variable, they fail.

mod common;

use std::net::SocketAddr;

use cellar::config::Config;
use cellar::node::Node;
use cellar::{quickstart, repo};
use serde_json::{json, Value};
use tempfile::TempDir;

struct Server {
    base: String,
    client: reqwest::Client,
    _dir: TempDir,
}

impl Server {
    async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    /// A node on the example repo, `configure` changing its config first.
    async fn start_with(configure: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            repo: dir.path().join("repo"),
            ..Config::default()
        };
        config.server.max_entities_per_request = 100;
        configure(&mut config);
        quickstart::write_example_repo(&config.repo).unwrap();
        if !config.cache.remote_urls.is_empty() {
            // Every group also cached in the remote tier.
            for entry in std::fs::read_dir(&config.repo).unwrap() {
                let path = entry.unwrap().path();
                let text = std::fs::read_to_string(&path).unwrap();
                std::fs::write(
                    &path,
                    text.replace("tiers: [local]", "tiers: [local, remote]"),
                )
                .unwrap();
            }
        }
        let registry = cellar_registry::Registry::open(&config.registry_url())
            .await
            .unwrap();
        let desired = repo::load_repo(&config.repo).unwrap();
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

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.post_raw(path, body.to_string()).await
    }

    async fn push(&self, group: &str, records: Value) -> Value {
        let (status, body) = self
            .post("/v1/push", json!({"group": group, "records": records}))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

#[tokio::test]
async fn pushed_attributes_are_served_and_newer_event_time_wins() {
    let s = Server::start().await;
    let answer = s
        .push(
            "user_profile",
            json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-02T00:00:00Z",
                    "features": {"country": "KR", "age": 31, "keywords": ["bike", "tent"]}}]),
        )
        .await;
    assert_eq!(answer, json!({"applied": 1, "stale": 0}));
    // An older record arrives late: it must not replace the newer one.
    let answer = s
        .push(
            "user_profile",
            json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-01T00:00:00Z",
                    "features": {"country": "JP", "age": 30}}]),
        )
        .await;
    assert_eq!(answer, json!({"applied": 0, "stale": 1}));

    let (status, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1", "nobody"]}, "groups": ["user_profile"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let result = &body["results"][0];
    assert_eq!(result["features"], json!(["country", "age", "keywords"]));
    assert_eq!(result["rows"][0]["status"], "present");
    assert_eq!(
        result["rows"][0]["values"],
        json!(["KR", 31, ["bike", "tent"]])
    );
    assert_eq!(result["rows"][0]["event_time"], "2026-01-02T00:00:00Z");
    assert_eq!(result["rows"][1], json!({"status": "not_found"}));

    // A newer record replaces it, and the cached copy follows (write-through).
    s.push(
        "user_profile",
        json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-03T00:00:00Z",
                "features": {"country": "NZ", "age": 32}}]),
    )
    .await;
    let (_, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1"]},
                   "groups": [{"name": "user_profile", "features": ["age", "country"]}]}),
        )
        .await;
    assert_eq!(body["results"][0]["rows"][0]["values"], json!([32, "NZ"]));
}

/// u1's and u2's rows of `user_profile`.
async fn profile_rows(s: &Server) -> Value {
    let (status, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1", "u2"]}, "groups": ["user_profile"]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["results"][0]["rows"].clone()
}

#[tokio::test]
async fn a_push_naming_some_features_merges_them_and_erases_nothing() {
    let s = Server::start().await;
    s.push(
        "user_profile",
        json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-02T00:00:00Z",
                "features": {"country": "KR", "age": 31, "keywords": ["bike"]}}]),
    )
    .await;

    // Newer, naming only `age`: merged, the other features kept.
    let answer = s
        .push(
            "user_profile",
            json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-03T00:00:00Z",
                    "features": {"age": 32}}]),
        )
        .await;
    assert_eq!(answer, json!({"applied": 1, "stale": 0}));
    let rows = profile_rows(&s).await;
    assert_eq!(rows[0]["values"], json!(["KR", 32, ["bike"]]));
    assert_eq!(rows[0]["event_time"], "2026-01-03T00:00:00Z");

    // Older, naming only `country`: stale, nothing changes.
    let answer = s
        .push(
            "user_profile",
            json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-01T00:00:00Z",
                    "features": {"country": "JP"}}]),
        )
        .await;
    assert_eq!(answer, json!({"applied": 0, "stale": 1}));

    // Feast's write-to-online-store with a frame lacking columns merges the same way, and a
    // new entity gets nulls for what it did not name.
    let (status, body) = s
        .post(
            "/write-to-online-store",
            json!({"feature_view_name": "user_profile",
                   "df": {"user_id": ["u1", "u2"], "country": ["NZ", "FR"],
                          "event_timestamp": ["2026-01-04T00:00:00Z", "2026-01-04T00:00:00Z"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let rows = profile_rows(&s).await;
    assert_eq!(rows[0]["values"], json!(["NZ", 32, ["bike"]]));
    assert_eq!(rows[1]["values"], json!(["FR", null, null]));
}

#[tokio::test]
async fn time_series_answer_newest_first_within_top_n_and_window() {
    let s = Server::start().await;
    let now = chrono::Utc::now().timestamp_millis();
    let hour = 3_600_000;
    // Ten clicks, one an hour, pushed out of order.
    let records: Vec<Value> = [3, 0, 7, 1, 9, 2, 8, 4, 6, 5]
        .iter()
        .map(|h| {
            json!({"entity": {"user_id": "u5"}, "event_time": now - h * hour,
                   "features": {"article_id": format!("a{h}"), "session_id": "s1"}})
        })
        .collect();
    s.push("recent_clicked_articles", json!(records)).await;

    let (status, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u5"]},
                   "groups": [{"name": "recent_clicked_articles", "top_n": 4}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let records = body["results"][0]["rows"][0]["records"].as_array().unwrap();
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r["values"][0].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a0", "a1", "a2", "a3"]);

    // A window of 5h30m keeps the six newest (0h..5h), top_n permitting.
    let (_, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u5"]},
                   "groups": [{"name": "recent_clicked_articles", "top_n": 50, "window": "330m"}]}),
        )
        .await;
    let records = body["results"][0]["rows"][0]["records"].as_array().unwrap();
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r["values"][0].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a0", "a1", "a2", "a3", "a4", "a5"]);
    let times: Vec<&str> = records
        .iter()
        .map(|r| r["event_time"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted, "records must be newest first");
}

#[tokio::test]
async fn feast_clients_get_feast_shaped_answers() {
    let s = Server::start().await;
    s.push(
        "user_profile",
        json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-02T00:00:00Z",
                "features": {"country": "KR", "age": 31, "keywords": []}}]),
    )
    .await;
    s.push(
        "article_stats",
        json!([{"entity": {"article_id": "a9"}, "event_time": "2026-01-02T03:00:00Z",
                "features": {"clicks_1h": 12, "ctr_7d": 0.25}}]),
    )
    .await;
    let (status, body) = s
        .post(
            "/get-online-features",
            json!({
                "features": ["user_profile:age", "article_stats:ctr_7d", "user_profile:country"],
                "entities": {"user_id": ["u1", "u2"], "article_id": ["a9", "a9"]},
                "full_feature_names": true
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["metadata"]["feature_names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // Entity key columns first (in the request's order, sorted by name here), then features
    // in the order asked.
    assert_eq!(
        names,
        [
            "article_id",
            "user_id",
            "user_profile__age",
            "article_stats__ctr_7d",
            "user_profile__country"
        ]
    );
    let results = body["results"].as_array().unwrap();
    assert_eq!(results[1]["values"], json!(["u1", "u2"]));
    assert_eq!(results[1]["statuses"], json!(["PRESENT", "PRESENT"]));
    assert_eq!(results[2]["values"], json!([31, null]));
    assert_eq!(results[2]["statuses"], json!(["PRESENT", "NOT_FOUND"]));
    assert_eq!(
        results[2]["event_timestamps"],
        json!(["2026-01-02T00:00:00Z", "1970-01-01T00:00:00Z"])
    );
    assert_eq!(results[3]["values"], json!([0.25, 0.25]));
    assert_eq!(results[4]["values"], json!(["KR", null]));

    // Feast's push: a column-shaped data frame into a push source (here, a group).
    let (status, body) = s
        .post(
            "/push",
            json!({"push_source_name": "article_stats", "to": "online",
                   "df": {"article_id": ["a1", "a2"], "clicks_1h": [5, 6], "ctr_7d": [0.1, 0.2],
                          "event_timestamp": ["2026-01-05T00:00:00Z", "2026-01-05T00:00:00Z"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = s
        .post(
            "/get-online-features",
            json!({"features": ["article_stats:clicks_1h"],
                   "entities": {"article_id": ["a1", "a2"]}}),
        )
        .await;
    assert_eq!(
        body["metadata"]["feature_names"],
        json!(["article_id", "clicks_1h"])
    );
    assert_eq!(body["results"][1]["values"], json!([5, 6]));

    // A feature service answers all of its features.
    let (status, body) = s
        .post(
            "/get-online-features",
            json!({"feature_service": "home_feed_ranker",
                   "entities": {"user_id": ["u1"], "article_id": ["a1"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["metadata"]["feature_names"],
        json!([
            "article_id",
            "user_id",
            "country",
            "age",
            "keywords",
            "article_id",
            "ctr_7d"
        ])
    );
    // A time series with no records is null, as Feast answers a missing value: its client
    // cannot give an empty list a type.
    let (status, body) = s
        .post(
            "/get-online-features",
            json!({"features": ["recent_clicked_articles:article_id"],
                   "entities": {"user_id": ["nobody"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][1]["values"], json!([null]), "{body}");
    assert_eq!(
        body["results"][1]["statuses"],
        json!(["NOT_FOUND"]),
        "{body}"
    );
}

/// Sends a request and checks its status and that the message mentions `needle`.
async fn expect_error(s: &Server, path: &str, body: &str, status: u16, needle: &str) {
    let (got, answer) = s.post_raw(path, body.to_owned()).await;
    assert_eq!(got, status, "{path} {body} -> {answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{path} {body}: message {message:?} should mention {needle:?}"
    );
}

#[tokio::test]
async fn bad_requests_get_4xx_answers_that_name_the_problem() {
    let s = Server::start().await;
    let f = "/v1/features";
    expect_error(&s, f, "{", 400, "malformed JSON").await;
    expect_error(
        &s,
        f,
        r#"{"entities": {"user_id": ["u1"]}, "groups": ["nope"]}"#,
        404,
        "unknown feature group `nope`",
    )
    .await;
    expect_error(&s, f, r#"{"entities": {"user_id": ["u1"]}, "groups": [{"name": "user_profile", "features": ["agee"]}]}"#, 404, "no feature `agee`").await;
    expect_error(
        &s,
        f,
        r#"{"entities": {"user_id": ["u1"]}, "feature_service": "nope"}"#,
        404,
        "unknown feature service `nope`",
    )
    .await;
    expect_error(
        &s,
        f,
        r#"{"entities": {"usr_id": ["u1"]}, "groups": ["user_profile"]}"#,
        400,
        "`usr_id`",
    )
    .await;
    expect_error(
        &s,
        f,
        r#"{"entities": {"user_id": [17]}, "groups": ["user_profile"]}"#,
        400,
        "`user_id`",
    )
    .await;
    expect_error(&s, f, r#"{"entities": {"user_id": ["u1"]}, "groups": [{"name": "recent_clicked_articles", "window": "7 days"}]}"#, 400, "window").await;
    expect_error(&s, f, r#"{"entities": {"user_id": ["u1"]}, "groups": [{"name": "recent_clicked_articles", "top_n": 0}]}"#, 400, "top_n").await;
    expect_error(
        &s,
        f,
        r#"{"entities": {"user_id": ["u1"]}, "grups": ["user_profile"]}"#,
        400,
        "grups",
    )
    .await;
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let body = json!({"entities": {"user_id": many}, "groups": ["user_profile"]}).to_string();
    expect_error(&s, f, &body, 413, "101, the limit is 100").await;

    let p = "/v1/push";
    expect_error(&s, p, r#"{"group": "user_profile", "records": [{"entity": {"user_id": "u1"}, "features": {"age": "old"}}]}"#, 400, "records[0].features.age").await;
    expect_error(
        &s,
        p,
        r#"{"group": "user_profile", "records": [{"entity": {}, "features": {}}]}"#,
        400,
        "missing entity key `user_id`",
    )
    .await;
    let big = "x".repeat(9000);
    let body = json!({"group": "user_profile", "records": [{"entity": {"user_id": "u1"}, "features": {"country": big}}]}).to_string();
    expect_error(&s, p, &body, 413, "limit of 8192 bytes").await;
    expect_error(
        &s,
        "/get-online-features",
        r#"{"features": ["user_profile"], "entities": {"user_id": ["u1"]}}"#,
        400,
        "group:feature",
    )
    .await;
}

#[tokio::test]
async fn hostile_bodies_never_break_the_server() {
    let s = Server::start().await;
    let deep = "[".repeat(100_000);
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"entities\"".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
        deep.into_bytes(),
        br#"{"entities": {"user_id": "u1"}, "groups": [{"name": "recent_clicked_articles", "top_n": 18446744073709551616}]}"#.to_vec(),
        br#"{"entities": {"user_id": [[], {}, null]}, "groups": ["user_profile"]}"#.to_vec(),
        br#"{"entities": {"user_id": ["u1\u001fu2"]}, "groups": ["user_profile"]}"#.to_vec(),
        br#"{"entities": {"user_id": ["u1"], "article_id": []}, "groups": ["user_profile"]}"#.to_vec(),
        br#"{"group": "user_profile", "records": [{"entity": {"user_id": "u1"}, "event_time": "yesterday"}]}"#.to_vec(),
        vec![b'{'; 3_000_000],
    ];
    for path in ["/v1/features", "/v1/push", "/get-online-features", "/push"] {
        for body in &bodies {
            let (status, _) = s.post_raw(path, body.clone()).await;
            assert!(
                (400..500).contains(&status),
                "{path} answered {status} to a hostile body of {} bytes",
                body.len()
            );
        }
    }
    // Still serving.
    let health = s
        .client
        .get(format!("{}/health", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
}

#[tokio::test]
async fn metrics_count_requests_and_cache_lookups() {
    let s = Server::start().await;
    s.push(
        "user_profile",
        json!([{"entity": {"user_id": "u3"}, "features": {"country": "KR"}}]),
    )
    .await;
    for _ in 0..3 {
        s.post(
            "/v1/features",
            json!({"entities": {"user_id": ["u3", "u4"]}, "groups": ["user_profile"]}),
        )
        .await;
    }
    let text = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"cellar_requests_total{endpoint="/v1/features",code="200"} 3"#),
        "{text}"
    );
    assert!(
        text.contains("cellar_request_duration_seconds_bucket"),
        "{text}"
    );
    // u3 was written through, so every read is a local hit; u4 misses once, then the
    // negative entry answers.
    assert!(
        text.contains(
            r#"cellar_cache_lookups_total{tier="local",group="user_profile",outcome="hit"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"cellar_cache_lookups_total{tier="local",group="user_profile",outcome="negative_hit"} 2"#),
        "{text}"
    );
}

#[tokio::test]
async fn events_posted_to_the_embedded_log_are_ingested_and_served() {
    let s = Server::start().await;
    let now = chrono::Utc::now().timestamp_millis();
    let events: Vec<Value> = (0..30)
        .map(|i| {
            json!({"type": "article_clicked", "user_id": format!("u{}", i % 3), "ts": now - 1000 * (30 - i),
                   "article_id": format!("a{i}"), "session_id": "s1"})
        })
        .chain([
            json!({"type": "article_clicked", "ts": now}),
            json!({"type": "page_viewed", "user_id": "u1"}),
        ])
        .collect();
    let (status, body) = s
        .post(
            "/v1/events",
            json!({"topic": "user-actions", "events": events}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"appended": 32, "unrouted": 1}));

    // The consumer applies them in the background; poll until u2's ten clicks are served.
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..300 {
        let (_, body) = s
            .post(
                "/v1/features",
                json!({"entities": {"user_id": ["u2"]},
                       "groups": [{"name": "recent_clicked_articles", "top_n": 50}]}),
            )
            .await;
        ids = body["results"][0]["rows"][0]["records"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|r| r["values"][0].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        if ids.len() == 10 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let expected: Vec<String> = (0..30)
        .rev()
        .filter(|i| i % 3 == 2)
        .map(|i| format!("a{i}"))
        .collect();
    assert_eq!(ids, expected);

    // The event without a key went to the dead-letter topic, counted on /metrics.
    let mut text = String::new();
    for _ in 0..300 {
        text = s
            .client
            .get(format!("{}/metrics", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(r#"cellar_ingest_dead_letters_total{pipeline="main"} 1"#) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        text.contains(r#"cellar_ingest_dead_letters_total{pipeline="main"} 1"#),
        "{text}"
    );
    assert!(text.contains("cellar_ingest_concurrency_limit"), "{text}");

    let (status, body) = s
        .post("/v1/events", json!({"topic": "bad topic!", "events": [{}]}))
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn a_numbering_producer_appends_each_event_once_however_often_it_resends() {
    let s = Server::start().await;
    let events: Vec<Value> = (0..5)
        .map(|i| json!({"type": "page_viewed", "user_id": format!("u{i}")}))
        .collect();
    let body =
        json!({"topic": "imports", "events": events, "producer": {"id": "p1", "sequence": 0}});
    let (status, first) = s.post("/v1/events", body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["appended"], 5);
    let (status, retried) = s.post("/v1/events", body).await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(
        (
            &retried["appended"],
            &retried["duplicates"],
            &retried["next_sequence"]
        ),
        (&json!(0), &json!(5), &json!(5))
    );
    let (status, gap) = s
        .post(
            "/v1/events",
            json!({"topic": "imports", "events": [{}], "producer": {"id": "p1", "sequence": 9}}),
        )
        .await;
    assert_eq!(status, 400, "{gap}");
    assert!(gap.to_string().contains("resend from 5"), "{gap}");

    // `cellar produce`: a run cut short, then the whole file again, appends each line once.
    let lines: String = (0..2500)
        .map(|i| format!("{{\"type\": \"page_viewed\", \"user_id\": \"u{i}\"}}\n"))
        .collect();
    let cut: String = lines.lines().take(1200).map(|l| format!("{l}\n")).collect();
    let partial = cellar::client::produce(&s.base, "imports", &cut, Some("file-a"))
        .await
        .unwrap();
    assert_eq!((partial.appended, partial.duplicates), (1200, 0));
    let whole = cellar::client::produce(&s.base, "imports", &lines, Some("file-a"))
        .await
        .unwrap();
    assert_eq!((whole.appended, whole.duplicates), (1300, 1200));
    let again = cellar::client::produce(&s.base, "imports", &lines, Some("file-a"))
        .await
        .unwrap();
    assert_eq!((again.appended, again.duplicates), (0, 2500));

    // A bad line anywhere: nothing is sent, and the error names it.
    let bad = format!("{cut}not json\n");
    let err = cellar::client::produce(&s.base, "imports", &bad, Some("file-b"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1201") && err.contains("nothing was sent"),
        "{err}"
    );
    let fresh = cellar::client::produce(&s.base, "imports", &cut, Some("file-b"))
        .await
        .unwrap();
    assert_eq!(fresh.appended, 1200, "the refused run appended nothing");
}

#[tokio::test]
#[ignore = "needs a DynamoDB-compatible server (CELLAR_TEST_DYNAMODB); scripts/test.sh starts dynalite"]
async fn a_node_on_dynamodb_serves_pushed_and_ingested_records() {
    let endpoint = common::service_address("CELLAR_TEST_DYNAMODB", "a DynamoDB-compatible server");
    let table = format!("cellar-serving-{:016x}", rand::random::<u64>());
    let s = Server::start_with(|c| {
        c.store.backend = cellar::config::StoreBackend::Dynamodb;
        c.store.dynamodb.table = table.clone();
        c.store.dynamodb.endpoint = endpoint.clone();
    })
    .await;
    s.push(
        "user_profile",
        json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-02T00:00:00Z",
                "features": {"country": "KR", "age": 31}}]),
    )
    .await;
    let stale = s
        .push(
            "user_profile",
            json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-01T00:00:00Z",
                    "features": {"country": "JP", "age": 30}}]),
        )
        .await;
    assert_eq!(stale, json!({"applied": 0, "stale": 1}));
    let (_, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1", "nobody"]}, "groups": ["user_profile"]}),
        )
        .await;
    let rows = &body["results"][0]["rows"];
    assert_eq!(rows[0]["values"], json!(["KR", 31, null]), "{body}");
    assert_eq!(rows[1], json!({"status": "not_found"}));

    // Events through the embedded log land in the DynamoDB table and are served.
    let now = chrono::Utc::now().timestamp_millis();
    let events: Vec<Value> = (0..6)
        .map(|i| {
            json!({"type": "article_clicked", "user_id": "u9", "ts": now - 1000 * (6 - i),
                        "article_id": format!("a{i}"), "session_id": "s1"})
        })
        .collect();
    let (status, body) = s
        .post(
            "/v1/events",
            json!({"topic": "user-actions", "events": events}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut served = 0;
    for _ in 0..300 {
        let (_, body) = s
            .post(
                "/v1/features",
                json!({"entities": {"user_id": ["u9"]},
                       "groups": [{"name": "recent_clicked_articles", "top_n": 50}]}),
            )
            .await;
        served = body["results"][0]["rows"][0]["records"]
            .as_array()
            .map_or(0, |r| r.len());
        if served == 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(served, 6);
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn a_node_on_the_redis_store_serves_pushed_records() {
    let url = common::service_address("CELLAR_TEST_REDIS", "Redis");
    let prefix = format!("cellar-serving-{:016x}:", rand::random::<u64>());
    let s = Server::start_with(|c| {
        c.store.backend = cellar::config::StoreBackend::Redis;
        c.store.redis.url = url.clone();
        c.store.redis.key_prefix = prefix.clone();
    })
    .await;
    s.push(
        "user_profile",
        json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-02T00:00:00Z",
                "features": {"country": "KR", "age": 31}}]),
    )
    .await;
    let stale = s
        .push(
            "user_profile",
            json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-01T00:00:00Z",
                    "features": {"country": "JP", "age": 30}}]),
        )
        .await;
    assert_eq!(stale, json!({"applied": 0, "stale": 1}));
    let now = chrono::Utc::now().timestamp_millis();
    let clicks: Vec<Value> = (0..3)
        .map(|i| {
            json!({"entity": {"user_id": "u9"}, "event_time": now - 1000 * (3 - i),
                   "features": {"article_id": format!("a{i}"), "session_id": "s1"}})
        })
        .collect();
    s.push("recent_clicked_articles", json!(clicks)).await;

    // The records are in Redis under the prefix, not in the embedded store.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("{prefix}a:user_profile#u1"),
            format!("{prefix}s:recent_clicked_articles#u9"),
        ]
    );

    let (_, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1", "nobody"]}, "groups": ["user_profile"]}),
        )
        .await;
    let rows = &body["results"][0]["rows"];
    assert_eq!(rows[0]["values"], json!(["KR", 31, null]), "{body}");
    assert_eq!(rows[0]["event_time"], "2026-01-02T00:00:00Z", "{body}");
    assert_eq!(rows[1], json!({"status": "not_found"}));
    let (_, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u9"]},
                   "groups": [{"name": "recent_clicked_articles", "top_n": 2}]}),
        )
        .await;
    let records = &body["results"][0]["rows"][0]["records"];
    let articles: Vec<&Value> = records
        .as_array()
        .map(|r| r.iter().map(|r| &r["values"][0]).collect())
        .unwrap_or_default();
    assert_eq!(articles, vec!["a2", "a1"], "{body}");

    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn a_node_with_a_redis_tier_writes_through_and_reads_it() {
    let url = common::service_address("CELLAR_TEST_REDIS", "Redis");
    let prefix = format!("cellar-test-{:016x}:", rand::random::<u64>());
    let s = Server::start_with(|c| {
        c.cache.remote_urls = vec![url.clone()];
        c.cache.remote_key_prefix = prefix.clone();
    })
    .await;
    s.push(
        "user_profile",
        json!([{"entity": {"user_id": "u1"}, "event_time": "2026-01-02T00:00:00Z",
                "features": {"country": "KR", "age": 31}}]),
    )
    .await;
    // Written through to Redis: the key is there before any read.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys, vec![format!("{prefix}user_profile#u1")]);
    let (_, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1", "nobody"]}, "groups": ["user_profile"]}),
        )
        .await;
    assert_eq!(
        body["results"][0]["rows"][0]["values"],
        json!(["KR", 31, null])
    );
    let metrics = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("cellar_remote_cache_breaker_state 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cellar_remote_cache_writes_total 1"),
        "{metrics}"
    );
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// The cache lookups `/metrics` shows for one group: none means nothing was read for it.
async fn lookups_of(s: &Server, group: &str) -> Vec<String> {
    let text = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("cellar_cache_lookups_total") && l.contains(group))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn an_amplifying_read_is_refused_with_413_naming_the_ceiling_before_any_read() {
    let s = Server::start_with(|c| c.server.max_entities_per_request = 1000).await;
    let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let group = json!({"name": "recent_clicked_articles", "top_n": 1000});
    let body = json!({"entities": {"user_id": users}, "groups": vec![group; 300]});
    let (status, answer) = s.post("/v1/features", body).await;
    assert_eq!(status, 413, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("server.max_request_cost") && message.contains("1000000"),
        "{message}"
    );
    assert_eq!(
        lookups_of(&s, "recent_clicked_articles").await,
        Vec::<String>::new(),
        "a refused read must not read anything"
    );

    // Named once, the group costs as much: 1000 rows x top_n 1000 x 2 features.
    let body = json!({"entities": {"user_id": users},
                      "groups": [{"name": "recent_clicked_articles", "top_n": 1000}]});
    let (status, answer) = s.post("/v1/features", body).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("= 2000000 feature values"),
        "{answer}"
    );
    // Within the ceiling, it is served.
    let body = json!({"entities": {"user_id": users},
                      "groups": [{"name": "recent_clicked_articles", "top_n": 500}]});
    let (status, answer) = s.post("/v1/features", body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn feast_reads_obey_the_same_ceiling() {
    let s = Server::start_with(|c| {
        c.server.max_entities_per_request = 1000;
        c.server.max_request_cost = 10_000;
    })
    .await;
    let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    // 1000 rows x the default top_n of 50 records x 1 feature = 50000.
    let refs = vec!["recent_clicked_articles:article_id"; 300];
    let (status, answer) = s
        .post(
            "/get-online-features",
            json!({"features": refs, "entities": {"user_id": users}}),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("server.max_request_cost") && message.contains("10000"),
        "{message}"
    );
    assert_eq!(
        lookups_of(&s, "recent_clicked_articles").await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn a_group_named_twice_is_answered_and_costed_once() {
    // The ceiling fits one read of user_profile for two rows (2 x 1 x 3 features), no more.
    let s = Server::start_with(|c| c.server.max_request_cost = 6).await;
    s.push(
        "user_profile",
        json!([{"entity": {"user_id": "u1"}, "features": {"country": "KR", "age": 31}}]),
    )
    .await;
    let groups = vec![json!("user_profile"); 300];
    let (status, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1", "u2"]}, "groups": groups}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{body}");
    assert_eq!(results[0]["rows"][0]["values"], json!(["KR", 31, null]));

    // Named twice with feature subsets: one result with the features of both, in order.
    let (status, body) = s
        .post(
            "/v1/features",
            json!({"entities": {"user_id": ["u1"]},
                   "groups": [{"name": "user_profile", "features": ["age"]},
                              {"name": "user_profile", "features": ["country", "age"]}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["results"][0]["features"], json!(["age", "country"]));
    assert_eq!(body["results"][0]["rows"][0]["values"], json!([31, "KR"]));

    // Asked twice with different bounds, the request is ambiguous.
    expect_error(
        &s,
        "/v1/features",
        r#"{"entities": {"user_id": ["u1"]}, "groups": [{"name": "recent_clicked_articles", "top_n": 5}, {"name": "recent_clicked_articles", "top_n": 6}]}"#,
        400,
        "groups[1]",
    )
    .await;

    // Feast: a feature referenced twice is one column.
    let (status, body) = s
        .post(
            "/get-online-features",
            json!({"features": ["user_profile:age", "user_profile:age", "user_profile:country"],
                   "entities": {"user_id": ["u1"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["metadata"]["feature_names"],
        json!(["user_id", "age", "country"])
    );
}

/// Two groups answering to one Feast push source, and one answering alone.
const PUSH_GROUPS: &str = r#"
kind: FeatureGroup
name: session_state
entity: user
type: attribute
features:
  - { name: last_page, type: string }
push_sources: [web_push, state_push]
---
kind: FeatureGroup
name: session_counts
entity: user
type: attribute
features:
  - { name: pages, type: int64 }
push_sources: [web_push]
"#;

#[tokio::test]
async fn a_feast_push_source_writes_every_group_that_declares_it() {
    let s = Server::start_with(|config| {
        std::fs::create_dir_all(&config.repo).unwrap();
        std::fs::write(config.repo.join("sessions.yaml"), PUSH_GROUPS).unwrap();
    })
    .await;
    let read = |users: Value| json!({"entities": {"user_id": users}, "groups": ["session_state", "session_counts"]});
    // A column no group of the push source has: refused by name, nothing written.
    let (status, body) = s
        .post(
            "/push",
            json!({"push_source_name": "web_push",
                   "df": {"user_id": ["u1"], "last_page": ["/a"], "pagez": [3]}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("df.pagez") && message.contains("(session_counts, session_state)"),
        "{message}"
    );
    let (_, answer) = s.post("/v1/features", read(json!(["u1"]))).await;
    assert_eq!(answer["results"][0]["rows"][0]["status"], "not_found");

    // Each group takes its own columns (and the zone-less Feast time, as UTC).
    let (status, body) = s
        .post(
            "/push",
            json!({"push_source_name": "web_push",
                   "df": {"user_id": ["u1", "u2"], "last_page": ["/a", "/b"], "pages": [3, 4],
                          "event_timestamp": ["2026-01-05T00:00:00", "2026-01-05T00:00:00"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, answer) = s.post("/v1/features", read(json!(["u1", "u2"]))).await;
    let values = |group: usize, row: usize| answer["results"][group]["rows"][row]["values"].clone();
    assert_eq!(values(0, 0), json!(["/a"]), "{answer}");
    assert_eq!(values(0, 1), json!(["/b"]));
    assert_eq!(values(1, 0), json!([3]));
    assert_eq!(values(1, 1), json!([4]));
    assert_eq!(
        answer["results"][1]["rows"][0]["event_time"],
        "2026-01-05T00:00:00Z"
    );

    // A push source of one group is that group; a group's own name still names it.
    let (status, body) = s
        .post(
            "/push",
            json!({"push_source_name": "state_push",
                   "df": {"user_id": ["u3"], "last_page": ["/c"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = s
        .post(
            "/push",
            json!({"push_source_name": "session_counts", "df": {"user_id": ["u3"], "pages": [9]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, answer) = s.post("/v1/features", read(json!(["u3"]))).await;
    assert_eq!(answer["results"][0]["rows"][0]["values"], json!(["/c"]));
    assert_eq!(answer["results"][1]["rows"][0]["values"], json!([9]));
    // A name that is neither: the unknown group's error.
    let (status, _) = s
        .post(
            "/push",
            json!({"push_source_name": "nobody_push", "df": {"user_id": ["u3"]}}),
        )
        .await;
    assert_eq!(status, 404);
}
