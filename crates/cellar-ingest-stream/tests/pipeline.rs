//! The whole stream pipeline on the embedded log and the embedded store: events in, records
//! served, failures retried or dead-lettered, positions committed.

use cellar_spec::limits::{EventTimeBounds, DEFAULT_MAX_FUTURE};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cellar_cache::WritePath;
use cellar_ingest_stream::dispatch::Dispatcher;
use cellar_ingest_stream::log::source::{LogPublisher, LogSource};
use cellar_ingest_stream::log::{EventLog, LogRecord};
use cellar_ingest_stream::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use cellar_ingest_stream::process::{headers, EventProcessor, RetryPolicy};
use cellar_ingest_stream::writer::{BatchPolicy, BatchingWriter};
use cellar_spec::{EntityKey, FeatureRepo, Value};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::faults::FaultyStore;
use cellar_store::{OnlineStore, Record, RecordReader, TimeseriesQuery};
use serde_json::json;

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
  - { name: visits, type: int64 }
---
kind: FeatureGroup
name: clicks
entity: user
type: timeseries
features:
  - { name: article_id, type: string }
retention: { max_records: 1000 }
---
kind: Ingestion
name: profiles
stream: { topic: users, event_types: [profile_updated] }
into: profile
key: $.user_id
event_time: $.ts
features: { country: $.country, visits: $.visits }
---
kind: Ingestion
name: article_clicks
stream: { topic: actions, event_types: [article_clicked] }
into: clicks
key: $.user_id
event_time: $.ts
features: { article_id: $.article_id }
---
kind: FeatureGroup
name: likes
entity: user
type: attribute
features:
  - { name: likes_1h, type: int64 }
---
kind: Ingestion
name: like_counts
stream: { topic: actions, event_types: [article_liked], republish_to: like_counts_derived }
into: likes
key: $.user_id
event_time: $.ts
features: { likes_1h: { aggregate: count, window: 1h } }
---
kind: FeatureGroup
name: likes_mirror
entity: user
type: attribute
features:
  - { name: likes_1h, type: int64 }
---
kind: Ingestion
name: like_counts_mirror
stream: { topic: like_counts_derived, event_types: [like_counts] }
into: likes_mirror
key: $.user_id
event_time: $.ts
features: { likes_1h: $.features.likes_1h }
"#;

fn repo() -> FeatureRepo {
    cellar_spec::parse_repo(&[("repo.yaml".into(), REPO.into())]).unwrap_or_else(|e| panic!("{e}"))
}

struct Fixture {
    log: EventLog,
    store: Arc<FaultyStore<EmbeddedStore>>,
    repo: FeatureRepo,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(fail_first: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path().join("log")).unwrap();
        let store = Arc::new(FaultyStore::new(
            EmbeddedStore::open(dir.path().join("store")).unwrap(),
            fail_first,
            Duration::ZERO,
        ));
        Fixture {
            log,
            store,
            repo: repo(),
            _dir: dir,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            max_attempts: 4,
            ..RetryPolicy::default()
        }
    }

    fn processor(&self) -> Arc<EventProcessor> {
        let (dispatcher, errors) = Dispatcher::new(&self.repo);
        assert!(errors.is_empty(), "{errors:?}");
        let writer = BatchingWriter::start(
            WritePath::new(self.store.clone() as Arc<dyn OnlineStore>, None),
            BatchPolicy::default(),
        );
        Arc::new(
            EventProcessor::new(
                Arc::new(dispatcher),
                writer,
                Arc::new(LogPublisher::new(self.log.clone())),
                Self::policy(),
            )
            // Events of these tests are stamped near the epoch.
            .with_event_times(EventTimeBounds::new(0, DEFAULT_MAX_FUTURE).unwrap()),
        )
    }

    async fn produce(&self, topic: &str, events: &[serde_json::Value]) {
        cellar_ingest_stream::log::source::ensure_topic(&self.log, topic)
            .await
            .unwrap();
        let records: Vec<LogRecord> = events
            .iter()
            .map(|e| LogRecord {
                key: e["user_id"].as_str().map(|k| Bytes::from(k.to_owned())),
                payload: Bytes::from(e.to_string()),
                headers: Vec::new(),
                timestamp_ms: 0,
            })
            .collect();
        self.log.append(topic, &records).await.unwrap();
    }

    /// Runs the main and retry pipelines until `done` holds for their stats, or fails after
    /// a generous bound.
    async fn run_until(&self, done: impl Fn(&PipelineStats, &PipelineStats) -> bool) {
        let processor = self.processor();
        let main = Pipeline::new(processor.clone(), PipelineConfig::default()).unwrap();
        let retry = Pipeline::new(
            processor,
            PipelineConfig {
                honour_retry_time: true,
                ..PipelineConfig::default()
            },
        )
        .unwrap();
        let (main_stats, retry_stats) = (main.stats(), retry.stats());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        for topic in ["users", "actions", "like_counts_derived"] {
            cellar_ingest_stream::log::source::ensure_topic(&self.log, topic)
                .await
                .unwrap();
        }
        let mut main_source = LogSource::new(
            self.log.clone(),
            "ingest",
            vec![
                "users".into(),
                "actions".into(),
                "like_counts_derived".into(),
            ],
        );
        let mut retry_source = LogSource::new(
            self.log.clone(),
            "ingest-retry",
            vec![Self::policy().retry_topic],
        );
        let (a, b) = (stopped(stop_rx.clone()), stopped(stop_rx));
        let runs = async {
            let (x, y) = tokio::join!(
                main.run(&mut main_source, a),
                retry.run(&mut retry_source, b)
            );
            x.unwrap();
            y.unwrap();
        };
        let watch = async {
            for _ in 0..3000 {
                if done(&main_stats, &retry_stats) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = stop_tx.send(true);
        };
        tokio::join!(runs, watch);
        assert!(
            done(&main_stats, &retry_stats),
            "the pipeline did not finish in time"
        );
    }

    async fn profile(&self, user: &str) -> Option<Record> {
        let g = self.repo.group("profile").unwrap();
        self.store
            .get_attributes(g, &[EntityKey(user.into())])
            .await
            .unwrap()
            .pop()
            .flatten()
    }

    async fn clicks(&self, user: &str) -> Vec<Record> {
        let g = self.repo.group("clicks").unwrap();
        self.store
            .scan_timeseries(
                g,
                &[EntityKey(user.into())],
                TimeseriesQuery {
                    top_n: 10_000,
                    since: None,
                },
            )
            .await
            .unwrap()
            .pop()
            .unwrap()
    }
}

fn events_seen(s: &PipelineStats) -> u64 {
    s.events.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_served_records_and_positions_are_committed() {
    let f = Fixture::new(0);
    let mut profiles = Vec::new();
    let mut clicks = Vec::new();
    for i in 0..2000i64 {
        let user = format!("u{}", i % 50);
        profiles.push(json!({"type": "profile_updated", "user_id": user, "ts": 1000 + i, "country": format!("c{i}"), "visits": i}));
        clicks.push(json!({"type": "article_clicked", "user_id": user, "ts": 1000 + i, "article_id": format!("a{i}")}));
    }
    f.produce("users", &profiles).await;
    f.produce("actions", &clicks).await;
    f.run_until(|m, _| events_seen(m) >= 4000).await;

    // Each user's newest profile wins; every click is in its series, newest first.
    for u in 0..50i64 {
        let last = 1950 + u;
        let p = f.profile(&format!("u{u}")).await.unwrap();
        assert_eq!(p.event_time, 1000 + last);
        assert_eq!(p.values[1], Value::Int64(last));
        let series = f.clicks(&format!("u{u}")).await;
        assert_eq!(series.len(), 40);
        assert!(series.windows(2).all(|w| w[0].event_time > w[1].event_time));
    }
    // The committed positions cover every event.
    for topic in ["users", "actions"] {
        for p in 0..f.log.partitions(topic).unwrap() {
            let end = f.log.end_offset(topic, p).unwrap();
            assert_eq!(
                f.log.committed("ingest", topic, p).unwrap().unwrap_or(0),
                end,
                "{topic}[{p}]"
            );
        }
    }
}

fn dead_letters(log: &EventLog) -> Vec<(String, String)> {
    let topic = RetryPolicy::default().dead_letter_topic;
    let mut out = Vec::new();
    let Ok(partitions) = log.partitions(&topic) else {
        return out;
    };
    for p in 0..partitions {
        for e in log.read(&topic, p, 0, 10_000).unwrap() {
            let reason = e
                .headers
                .iter()
                .find(|(n, _)| n == headers::ERROR)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            out.push((String::from_utf8_lossy(&e.payload).into_owned(), reason));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_with_a_reason_and_the_rest_flows() {
    let f = Fixture::new(0);
    cellar_ingest_stream::log::source::ensure_topic(&f.log, "users")
        .await
        .unwrap();
    f.log
        .append(
            "users",
            &[LogRecord {
                key: None,
                payload: Bytes::from_static(b"{not json"),
                headers: Vec::new(),
                timestamp_ms: 0,
            }],
        )
        .await
        .unwrap();
    f.produce(
        "users",
        &[
            json!({"type": "profile_updated", "ts": 5, "country": "KR"}),
            json!({"type": "profile_updated", "user_id": "u1", "ts": 5, "visits": "many"}),
            json!({"type": "profile_updated", "user_id": "u2", "ts": 5, "country": "JP", "visits": 2}),
        ],
    )
    .await;
    f.run_until(|m, _| m.dead_lettered.load(Ordering::Relaxed) >= 3 && events_seen(m) >= 4)
        .await;
    let dead = dead_letters(&f.log);
    assert_eq!(dead.len(), 3, "{dead:?}");
    let reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("malformed JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("key `$.user_id` is missing")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("feature `visits`")),
        "{reasons:?}"
    );
    assert_eq!(
        f.profile("u2").await.unwrap().values[0],
        Value::String("JP".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_transiently_gets_events_through_the_retry_topic() {
    // The first three store writes fail; their events go to the retry topic and succeed later.
    let f = Fixture::new(3);
    let events: Vec<serde_json::Value> = (0..20)
        .map(|i| json!({"type": "profile_updated", "user_id": format!("u{i}"), "ts": 10, "country": "KR", "visits": i}))
        .collect();
    f.produce("users", &events).await;
    f.run_until(|m, r| {
        let retried = m.retried.load(Ordering::Relaxed) + r.retried.load(Ordering::Relaxed);
        let applied = m.records.load(Ordering::Relaxed) + r.records.load(Ordering::Relaxed);
        retried >= 1 && applied >= 20
    })
    .await;
    for i in 0..20 {
        let p = f.profile(&format!("u{i}")).await;
        assert_eq!(
            p.map(|r| r.values[1].clone()),
            Some(Value::Int64(i)),
            "u{i}"
        );
    }
    assert!(dead_letters(&f.log).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_events_are_republished_and_consumed_again() {
    let f = Fixture::new(0);
    let likes: Vec<serde_json::Value> = (0..300i64)
        .map(
            |i| json!({"type": "article_liked", "user_id": format!("u{}", i % 10), "ts": 1000 + i}),
        )
        .collect();
    f.produce("actions", &likes).await;
    // 300 likes, then one derived event for each.
    f.run_until(|m, _| events_seen(m) >= 600).await;
    let keys: Vec<EntityKey> = (0..10).map(|u| EntityKey(format!("u{u}"))).collect();
    for group in ["likes", "likes_mirror"] {
        let got = f
            .store
            .get_attributes(f.repo.group(group).unwrap(), &keys)
            .await
            .unwrap();
        for (u, record) in got.into_iter().enumerate() {
            let record = record.unwrap_or_else(|| panic!("{group}: u{u} missing"));
            assert_eq!(record.values, vec![Value::Int64(30)], "{group}: u{u}");
            assert_eq!(record.event_time, 1000 + 290 + u as i64, "{group}: u{u}");
        }
    }
    // The derived events name their ingestion, key, time, group and features.
    let derived = f.log.read("like_counts_derived", 0, 0, 1).unwrap();
    let event: serde_json::Value = serde_json::from_slice(&derived[0].payload).unwrap();
    assert_eq!(event["type"], "like_counts");
    assert_eq!(event["group"], "likes");
    assert!(
        event["user_id"].is_string() && event["ts"].is_i64(),
        "{event}"
    );
    assert!(event["features"]["likes_1h"].is_i64(), "{event}");
}
