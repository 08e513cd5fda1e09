//! `cellar dead-letters`, run as a user runs it: events that do not fit their ingestions are
//! dead-lettered and listed with why; once a corrected repo is applied, a re-drive publishes
//! them again to their topic, only the ingestion that failed runs them, and they are served.
//!
//! On the embedded log through a running `cellar serve`; on Kafka directly, on the broker
//! `CELLAR_TEST_KAFKA` names (`scripts/test.sh` starts one). The Kafka test is ignored by a
//! plain `cargo test`, and run with `--include-ignored` but without the variable, it fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellar_ingest_stream::kafka::{ensure_topics, KafkaPublisher, KafkaPublisherConfig};
use cellar_ingest_stream::source::{OutgoingEvent, Publisher};
use serde_json::{json, Value};

/// The repo as first written, with two mistakes: countries are text and article ids are
/// text, but `profile.country` and `last_click.article` are declared int64. Every
/// `profile_updated` event fails `profiles`, and every click fails `last_clicks` (while
/// `click_counts` counts it).
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
  - { name: country, type: int64 }
---
kind: FeatureGroup
name: last_click
entity: user
type: attribute
features:
  - { name: article, type: int64 }
---
kind: FeatureGroup
name: activity
entity: user
type: attribute
features:
  - { name: clicks_1d, type: int64 }
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
name: last_clicks
stream: { topic: actions, event_types: [article_clicked] }
into: last_click
key: $.user_id
event_time: $.ts
features: { article: $.article_id }
---
kind: Ingestion
name: click_counts
stream: { topic: actions, event_types: [article_clicked] }
into: activity
key: $.user_id
event_time: $.ts
features:
  clicks_1d: { aggregate: count, window: 1d }
"#;

/// The same repo with both types corrected.
fn corrected(repo: &str) -> String {
    repo.replace(
        "{ name: country, type: int64 }",
        "{ name: country, type: string }",
    )
    .replace(
        "{ name: article, type: int64 }",
        "{ name: article, type: string }",
    )
}

/// Three clicks of u1 (each fails `last_clicks`) and two profile updates (each fails
/// `profiles`).
fn events() -> Vec<Value> {
    let now = chrono::Utc::now().timestamp_millis();
    vec![
        json!({"type": "article_clicked", "user_id": "u1", "ts": now - 3000, "article_id": "a1"}),
        json!({"type": "article_clicked", "user_id": "u1", "ts": now - 2000, "article_id": "a2"}),
        json!({"type": "article_clicked", "user_id": "u1", "ts": now - 1000, "article_id": "a3"}),
        json!({"type": "profile_updated", "user_id": "u1", "ts": now - 500, "country": "NZ"}),
        json!({"type": "profile_updated", "user_id": "u2", "ts": now - 500, "country": "KR"}),
    ]
}

const TIMEOUT: Duration = Duration::from_secs(120);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A feature repo and data directory, and the `cellar` commands run on them.
struct Workspace {
    dir: tempfile::TempDir,
    /// Settings every command gets, as `CELLAR_*` variables.
    env: Vec<(String, String)>,
    config: Option<PathBuf>,
}

impl Workspace {
    fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
            env: Vec::new(),
            config: None,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cellar"));
        c.arg("--data-dir")
            .arg(self.path().join("data"))
            .arg("--repo")
            .arg(self.path().join("repo"))
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(config) = &self.config {
            c.arg("--config").arg(config);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run cellar")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cellar {args:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs a command that must fail; returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "cellar {args:?} succeeded: {}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    fn apply(&self, repo: &str) {
        let dir = self.path().join("repo");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("repo.yaml"), repo).unwrap();
        // The repaired repo retypes features: a breaking change, made on purpose.
        self.ok(&["apply", "--allow-breaking"]);
    }

    fn dead_letters(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["dead-letters", "list", "--json"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        match serde_json::from_str(&out) {
            Ok(Value::Array(letters)) => letters,
            _ => panic!("`list --json` printed no JSON array: {out}"),
        }
    }

    /// Lists dead letters until `done` holds for them.
    fn wait_for_dead_letters(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let letters = self.dead_letters(&[]);
            if done(&letters) {
                return letters;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "{what}: not within {TIMEOUT:?}; the dead letters: {letters:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts `cellar serve` on free ports and waits until it answers.
    fn serve(&self) -> Server {
        let port = common::free_port();
        let base = format!("http://127.0.0.1:{port}");
        let log = self.path().join(format!("serve-{port}.log"));
        let child = self
            .command()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--grpc-listen")
            .arg(format!("127.0.0.1:{}", common::free_port()))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Server {
            child,
            base,
            log,
            http: Http::new(),
        };
        let started = Instant::now();
        while server.get("/health").is_none() {
            assert!(
                started.elapsed() < TIMEOUT,
                "the server did not answer: {}",
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }
}

/// HTTP requests from a synchronous test: one at a time, on a small runtime of its own.
struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Http {
        Http {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::new(),
        }
    }

    /// Status and JSON answer; `None` when nothing answers.
    fn send(&self, request: reqwest::RequestBuilder) -> Option<(u16, Value)> {
        self.runtime.block_on(async {
            let resp = request.send().await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.text().await.ok()?;
            Some((
                status,
                serde_json::from_str(&body).unwrap_or(Value::String(body)),
            ))
        })
    }
}

/// A running `cellar serve`, stopped when dropped.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
    http: Http,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn get(&self, path: &str) -> Option<(u16, Value)> {
        self.http
            .send(self.http.client.get(format!("{}{path}", self.base)))
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.http
            .send(
                self.http
                    .client
                    .post(format!("{}{path}", self.base))
                    .header("content-type", "application/json")
                    .body(body.to_owned()),
            )
            .expect("the server answers")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// One feature of one user's attribute record, once present.
    fn feature(&self, group: &str, user: &str) -> Option<Value> {
        let (status, body) = self.post(
            "/v1/features",
            &json!({"entities": {"user_id": [user]}, "groups": [group]}).to_string(),
        );
        let row = &body["results"][0]["rows"][0];
        (status == 200 && row["status"] == "present").then(|| row["values"][0].clone())
    }

    /// Waits until `group`'s feature of `user` is `expected`.
    fn wait_for_feature(&self, group: &str, user: &str, expected: Value) {
        let started = Instant::now();
        loop {
            let value = self.feature(group, user);
            if value.as_ref() == Some(&expected) {
                return;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "{group} of {user} is {value:?}, not {expected}; the server's log ends:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn offsets(letters: &[Value]) -> Vec<(u64, u64)> {
    let mut o: Vec<(u64, u64)> = letters
        .iter()
        .map(|d| {
            (
                d["partition"].as_u64().unwrap(),
                d["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    o.sort();
    o
}

fn of_ingestion<'a>(letters: &'a [Value], name: &str) -> Vec<&'a Value> {
    letters.iter().filter(|d| d["ingestion"] == name).collect()
}

/// Checks the listed dead letters: five, from `topic`, each with its ingestion's error.
fn check_listed(letters: &[Value], topic: &str) {
    assert_eq!(letters.len(), 5, "{letters:#?}");
    assert_eq!(of_ingestion(letters, "profiles").len(), 2, "{letters:#?}");
    assert_eq!(
        of_ingestion(letters, "last_clicks").len(),
        3,
        "{letters:#?}"
    );
    for d in letters {
        assert_eq!(d["topic"], topic, "{d}");
        assert_eq!(d["attempts"], 1, "{d}");
        let error = d["error"].as_str().unwrap_or_default();
        let feature = if d["ingestion"] == "profiles" {
            "country"
        } else {
            "article"
        };
        assert!(
            error.contains(feature) && error.contains("int"),
            "the error does not say what failed: {d}"
        );
        let first = d["first_failure"].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(first).is_ok(),
            "first failure is not RFC 3339: {d}"
        );
    }
}

#[test]
fn dead_letters_of_the_embedded_log_are_listed_and_redriven_through_the_server() {
    let mut ws = Workspace::new();
    ws.env
        .push(("CELLAR_SERVER__RELOAD_INTERVAL_SECS".into(), "1".into()));
    ws.apply(REPO);
    let server = ws.serve();
    // The CLI finds the server through the configured listen address.
    let listen = server.base.trim_start_matches("http://").to_owned();
    ws.env.push(("CELLAR_SERVER__LISTEN".into(), listen));

    let (status, body) = server.post(
        "/v1/events",
        &json!({"topic": "actions", "events": events()}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let letters = ws.wait_for_dead_letters("five dead letters", |l| l.len() == 5);
    check_listed(&letters, "actions");
    // click_counts took every click: only last_clicks failed them.
    server.wait_for_feature("activity", "u1", json!(3));

    // The table, and a filter.
    let table = ws.ok(&["dead-letters", "list"]);
    for needle in ["profiles", "last_clicks", "country", "\"KR\"", "actions"] {
        assert!(table.contains(needle), "{needle} missing: {table}");
    }
    let profiles = ws.dead_letters(&["--ingestion", "profiles"]);
    assert_eq!(profiles.len(), 2, "{profiles:#?}");
    assert_eq!(ws.dead_letters(&["--limit", "2"]).len(), 2);
    assert!(ws
        .ok(&["dead-letters", "list", "--ingestion", "nobody"])
        .contains("no dead letters of ingestion `nobody`"));

    // Bad input gets a clear error, from the CLI and from the API.
    for (args, needle) in [
        (&["dead-letters", "list", "--limit", "0"][..], "--limit"),
        (&["dead-letters", "list", "--limit", "x"], "--limit"),
        (
            &["dead-letters", "list", "--ingestion", "Bad!"],
            "ingestion name",
        ),
        (&["dead-letters", "redrive", "--limit", "0"], "--limit"),
        (
            &["dead-letters", "redrive", "--ingestion", "profiles"],
            "no --ingestion",
        ),
        (
            &["dead-letters", "list", "--server", "http://127.0.0.1:1"],
            "cannot reach",
        ),
        (
            &["dead-letters", "list", "--server", "ftp://x"],
            "not a server address",
        ),
    ] {
        let err = ws.fails(args);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    for (query, needle) in [
        ("?limit=abc", "limit"),
        ("?limit=0", "limit"),
        ("?limit=10001", "limit"),
        ("?ingestion=Bad", "ingestion"),
        ("?other=1", "other"),
    ] {
        let (status, body) = server
            .get(&format!("/v1/dead-letters{query}"))
            .expect("the server answers");
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.to_string().contains(needle), "{query}: {body}");
    }
    for body in [
        r#"{"limit": 0}"#,
        r#"{"limit": -1}"#,
        r#"{"limt": 1}"#,
        "[",
        "{",
    ] {
        let (status, answer) = server.post("/v1/dead-letters/redrive", body);
        assert_eq!(status, 400, "{body}: {answer}");
    }

    // Re-driven before the fix, a dead letter fails again and comes back as a new one.
    let before = offsets(&letters);
    let (status, body) = server.post("/v1/dead-letters/redrive", r#"{"limit": 1}"#);
    assert_eq!(
        (status, &body),
        (200, &json!({"redriven": 1, "skipped": 0}))
    );
    let again = ws.wait_for_dead_letters("the re-driven dead letter back", |l| {
        l.len() == 5 && offsets(l) != before
    });
    let kept = offsets(&again)
        .into_iter()
        .filter(|o| before.contains(o))
        .count();
    assert_eq!(kept, 4, "{again:#?}");
    check_listed(&again, "actions");

    // Corrected types; once the server serves them, a re-drive applies every dead letter.
    ws.apply(&corrected(REPO));
    let started = Instant::now();
    loop {
        let (status, _) = server.post(
            "/v1/push",
            &json!({"group": "profile", "records": [{"entity": {"user_id": "probe"}, "features": {"country": "FR"}}]})
                .to_string(),
        );
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the corrected repo was not loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The ingestions are swapped right after the catalog.
    std::thread::sleep(Duration::from_millis(500));
    let out = ws.ok(&["dead-letters", "redrive"]);
    assert!(out.contains("re-drove 5 dead letters"), "{out}");
    server.wait_for_feature("profile", "u1", json!("NZ"));
    server.wait_for_feature("profile", "u2", json!("KR"));
    server.wait_for_feature("last_click", "u1", json!("a3"));
    // Only last_clicks ran the re-driven clicks: they are not counted twice.
    assert_eq!(server.feature("activity", "u1"), Some(json!(3)));

    let out = ws.ok(&["dead-letters", "redrive"]);
    assert!(out.contains("re-drove 0 dead letters"), "{out}");
    assert!(ws.dead_letters(&[]).is_empty());
    assert!(ws
        .ok(&["dead-letters", "list", "--server", &server.base])
        .contains("no dead letters"));
    assert_eq!(server.feature("activity", "u1"), Some(json!(3)));
}

/// Sends SIGTERM, so the process leaves its consumer group and commits before it exits.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs a Kafka broker (CELLAR_TEST_KAFKA); scripts/test.sh starts one"]
fn dead_letters_on_kafka_are_listed_and_redriven_without_a_server() {
    let brokers = common::service_address("CELLAR_TEST_KAFKA", "a Kafka broker");
    // Topics and groups of this run only: the broker is shared with other tests.
    let suffix = format!("{:016x}", rand::random::<u64>());
    let topic = format!("actions-{suffix}");
    let mut ws = Workspace::new();
    let config = ws.path().join("cellar.toml");
    std::fs::write(
        &config,
        format!(
            "[ingest]\nretry_topic = \"retry-{suffix}\"\ndead_letter_topic = \"dead-{suffix}\"\n\
             [ingest.kafka]\nbrokers = \"{brokers}\"\ngroup = \"cellar-dl-{suffix}\"\npartitions = 2\n\
             properties = {{ \"session.timeout.ms\" = \"6000\" }}\n"
        ),
    )
    .unwrap();
    ws.config = Some(config);
    ws.env
        .push(("CELLAR_SERVER__RELOAD_INTERVAL_SECS".into(), "1".into()));
    let repo = REPO.replace("topic: actions", &format!("topic: {topic}"));
    ws.apply(&repo);

    // Nothing dead-lettered yet: the dead-letter topic does not even exist.
    assert!(ws.ok(&["dead-letters", "list"]).contains("no dead letters"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        ensure_topics(&brokers.as_str().into(), std::slice::from_ref(&topic), 2)
            .await
            .unwrap();
        // One event per record batch (see the crash test).
        let publisher = KafkaPublisher::new(
            &KafkaPublisherConfig::new(&brokers).property("batch.num.messages", "1"),
        )
        .unwrap();
        let events: Vec<OutgoingEvent> = events()
            .into_iter()
            .map(|e| OutgoingEvent {
                key: e["user_id"].as_str().map(|u| Bytes::from(u.to_owned())),
                payload: Bytes::from(e.to_string()),
                headers: Vec::new(),
            })
            .collect();
        publisher.publish(&topic, &events).await.unwrap();
    });

    let log = ws.path().join("ingest.log");
    let mut ingest = ws
        .command()
        .arg("ingest")
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let letters = ws.wait_for_dead_letters("five dead letters on Kafka", |l| l.len() == 5);
    check_listed(&letters, &topic);
    assert_eq!(ws.dead_letters(&["--ingestion", "profiles"]).len(), 2);

    // Re-driven before the fix, they fail again and come back as new dead letters; the
    // re-drive takes only the five that were there.
    let before = offsets(&letters);
    let out = ws.ok(&["dead-letters", "redrive"]);
    assert!(out.contains("re-drove 5 dead letters"), "{out}");
    let again = ws.wait_for_dead_letters("the re-driven dead letters back", |l| {
        l.len() == 5 && offsets(l).iter().all(|o| !before.contains(o))
    });
    check_listed(&again, &topic);
    terminate(&mut ingest);

    // Corrected, then re-driven straight to Kafka; a second re-drive finds nothing new.
    ws.apply(&corrected(&repo));
    let out = ws.ok(&["dead-letters", "redrive"]);
    assert!(out.contains("re-drove 5 dead letters"), "{out}");
    let out = ws.ok(&["dead-letters", "redrive"]);
    assert!(out.contains("re-drove 0 dead letters"), "{out}");
    assert!(ws.dead_letters(&[]).is_empty());

    // A server consuming Kafka applies the re-driven events with the corrected repo.
    let server = ws.serve();
    server.wait_for_feature("profile", "u1", json!("NZ"));
    server.wait_for_feature("profile", "u2", json!("KR"));
    server.wait_for_feature("last_click", "u1", json!("a3"));
    assert_eq!(server.feature("activity", "u1"), Some(json!(3)));
    // The server answers the dead-letter API on Kafka too.
    let (status, body) = server.get("/v1/dead-letters").expect("the server answers");
    assert_eq!((status, body), (200, json!([])));
}
