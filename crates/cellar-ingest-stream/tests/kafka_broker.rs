//! The stream pipeline against a real Kafka-protocol broker: poison events dead-lettered with
//! their reason while failed writes go through the retry topic; one key's events applied in
//! order under full concurrency; members of one consumer group sharing the partitions and
//! taking over from a stopped one, every event applied once.
//!
//! Needs the broker `CELLAR_TEST_KAFKA` names (`scripts/test.sh` starts tansu and sets it): the
//! tests are ignored by a plain `cargo test`, and run with `--include-ignored` but without the
//! variable, they fail. Each test creates its own topics and groups. tansu's end offsets are not reliable, so the tests count
//! what they consume instead; and tansu answers a fetch from an offset inside a record batch
//! with nothing or with the next batch, so a test that moves partitions between members
//! mid-stream produces one event per batch.
#![cfg(feature = "kafka")]

use cellar_spec::limits::{EventTimeBounds, DEFAULT_MAX_FUTURE};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cellar_cache::WritePath;
use cellar_ingest_stream::dispatch::Dispatcher;
use cellar_ingest_stream::kafka::{
    ensure_topics, KafkaPublisher, KafkaPublisherConfig, KafkaSource, KafkaSourceConfig,
};
use cellar_ingest_stream::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use cellar_ingest_stream::process::{headers, EventProcessor, RetryPolicy};
use cellar_ingest_stream::source::{OutgoingEvent, Publisher};
use cellar_ingest_stream::writer::{BatchPolicy, BatchingWriter};
use cellar_spec::{EntityKey, FeatureGroup, FeatureRepo, Value};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::faults::FaultyStore;
use cellar_store::{
    OnlineStore, PutOutcome, Record, RecordReader, Result as StoreResult, TimeseriesQuery, Updater,
    Write,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use serde_json::json;

const PARTITIONS: i32 = 4;

/// The broker to test against. A test asked for without one fails: passing would claim a test
/// that never ran.
fn broker() -> String {
    match std::env::var("CELLAR_TEST_KAFKA") {
        Ok(brokers) if !brokers.is_empty() => brokers,
        _ => panic!(
            "CELLAR_TEST_KAFKA is not set: this test needs a Kafka broker; scripts/test.sh starts one"
        ),
    }
}

fn random_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

fn parse_repo(yaml: &str) -> FeatureRepo {
    cellar_spec::parse_repo(&[("repo.yaml".into(), yaml.to_owned())])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Profiles, latest value wins.
fn profiles_repo(topic: &str) -> FeatureRepo {
    parse_repo(&format!(
        r#"
kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - {{ name: country, type: string }}
  - {{ name: visits, type: int64 }}
---
kind: Ingestion
name: profiles
stream: {{ topic: {topic}, event_types: [profile_updated] }}
into: profile
key: $.user_id
event_time: $.ts
features: {{ country: $.country, visits: $.visits }}
"#
    ))
}

/// Clicks feeding a windowed count with the last click's sequence number (read-modify-write),
/// and a time series of the clicks (plain puts).
fn clicks_repo(topic: &str) -> FeatureRepo {
    parse_repo(&format!(
        r#"
kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: activity
entity: user
type: attribute
features:
  - {{ name: clicks_1d, type: int64 }}
  - {{ name: last_seq, type: int64 }}
---
kind: FeatureGroup
name: history
entity: user
type: timeseries
features:
  - {{ name: seq, type: int64 }}
retention: {{ max_records: 1000 }}
---
kind: Ingestion
name: click_activity
stream: {{ topic: {topic}, event_types: [clicked] }}
into: activity
key: $.user_id
event_time: $.ts
features:
  clicks_1d: {{ aggregate: count, window: 1d }}
  last_seq: $.seq
---
kind: Ingestion
name: click_history
stream: {{ topic: {topic}, event_types: [clicked] }}
into: history
key: $.user_id
event_time: $.ts
features: {{ seq: $.seq }}
"#
    ))
}

/// Where the clicks' event times start: one hour into a day, so a key's clicks (one a second)
/// all fall in one epoch-aligned 1d window.
const CLICKS_FROM_MS: i64 = 19_675 * 86_400_000 + 3_600_000;

/// Click `seq` of `user`.
fn click(user: &str, seq: i64) -> OutgoingEvent {
    let payload =
        json!({"type": "clicked", "user_id": user, "ts": CLICKS_FROM_MS + seq * 1000, "seq": seq});
    OutgoingEvent {
        key: Some(Bytes::from(user.to_owned())),
        payload: Bytes::from(payload.to_string()),
        headers: Vec::new(),
    }
}

/// Every user's clicks `0..per_user`, users interleaved.
fn clicks(users: usize, per_user: i64) -> Vec<OutgoingEvent> {
    (0..per_user)
        .flat_map(|seq| (0..users).map(move |u| click(&format!("u{u}"), seq)))
        .collect()
}

/// Test topics: the consumed one, the retry and the dead-letter ones, all created.
struct Topics {
    topic: String,
    group: String,
    policy: RetryPolicy,
}

impl Topics {
    async fn create(brokers: &str) -> Topics {
        let topics = Topics {
            topic: random_name("events"),
            group: random_name("ingest"),
            policy: RetryPolicy {
                retry_topic: random_name("retry"),
                dead_letter_topic: random_name("dead-letter"),
                backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
                max_attempts: 6,
            },
        };
        let names = [
            topics.topic.clone(),
            topics.policy.retry_topic.clone(),
            topics.policy.dead_letter_topic.clone(),
        ];
        ensure_topics(&brokers.into(), &names, PARTITIONS)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        topics
    }
}

/// A publisher; with `one_per_batch`, every event is a record batch of its own, so a member
/// can resume from any committed offset.
fn publisher(brokers: &str, one_per_batch: bool) -> Arc<KafkaPublisher> {
    let mut config = KafkaPublisherConfig::new(brokers).property("message.timeout.ms", "30000");
    if one_per_batch {
        config = config.property("batch.num.messages", "1");
    }
    Arc::new(KafkaPublisher::new(&config).unwrap_or_else(|e| panic!("{e}")))
}

fn source(brokers: &str, group: &str, topic: &str) -> KafkaSource {
    let config = KafkaSourceConfig::new(brokers, group, vec![topic.to_owned()])
        .property("session.timeout.ms", "6000")
        .property("heartbeat.interval.ms", "500");
    KafkaSource::new(&config).unwrap_or_else(|e| panic!("{e}"))
}

fn processor(
    repo: &FeatureRepo,
    store: Arc<dyn OnlineStore>,
    publisher: Arc<KafkaPublisher>,
    policy: &RetryPolicy,
) -> Arc<EventProcessor> {
    let (dispatcher, errors) = Dispatcher::new(repo);
    assert!(errors.is_empty(), "{errors:?}");
    let writer = BatchingWriter::start(WritePath::new(store, None), BatchPolicy::default());
    Arc::new(
        EventProcessor::new(
            Arc::new(dispatcher),
            writer,
            publisher as Arc<dyn Publisher>,
            policy.clone(),
        )
        // Events of these tests are stamped near the epoch.
        .with_event_times(EventTimeBounds::new(0, DEFAULT_MAX_FUTURE).unwrap()),
    )
}

fn embedded(dir: &tempfile::TempDir) -> EmbeddedStore {
    EmbeddedStore::open(dir.path().join("store")).unwrap_or_else(|e| panic!("{e}"))
}

fn seen(s: &PipelineStats) -> u64 {
    s.events.load(Ordering::SeqCst)
}

fn applied(s: &PipelineStats) -> u64 {
    s.records.load(Ordering::SeqCst)
}

/// Waits until `done` holds, polling, or panics after `bound`.
async fn wait_for(what: &str, bound: Duration, done: impl Fn() -> bool) {
    let started = tokio::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < bound, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Stop = tokio::sync::watch::Receiver<bool>;

async fn stopped(mut rx: Stop) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn attribute(store: &dyn OnlineStore, group: &FeatureGroup, user: &str) -> Option<Record> {
    store
        .get_attributes(group, &[EntityKey(user.into())])
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .pop()
        .flatten()
}

/// One event as read back from a topic: its payload and headers, as text.
struct ReadBack {
    payload: String,
    headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning, with no consumer group, until `expected` events came and
/// no more came for a while (or until a bound passes).
async fn read_topic(brokers: &str, topic: &str, expected: usize) -> Vec<ReadBack> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", random_name("read-back"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        consumer.assign(&tpl).unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        let mut last_event = started;
        let mut events = Vec::new();
        while started.elapsed() < Duration::from_secs(30)
            && (events.len() < expected || last_event.elapsed() < Duration::from_secs(2))
        {
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.unwrap_or_else(|e| panic!("reading `{topic}`: {e}"));
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            events.push(ReadBack {
                payload: message.payload().map(text).unwrap_or_default(),
                headers: message
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| (h.key.to_owned(), h.value.map(text).unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
            last_event = std::time::Instant::now();
        }
        events
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kafka broker (CELLAR_TEST_KAFKA); scripts/test.sh starts one"]
async fn poison_events_are_dead_lettered_with_their_reason_and_failed_writes_retried() {
    let brokers = broker();
    let t = Topics::create(&brokers).await;
    let repo = profiles_repo(&t.topic);
    let dir = tempfile::tempdir().unwrap();
    // The first store writes fail: their events go through the retry topic.
    let store = Arc::new(FaultyStore::new(embedded(&dir), 3, Duration::ZERO));
    let publisher = publisher(&brokers, false);
    let processor = processor(
        &repo,
        store.clone() as Arc<dyn OnlineStore>,
        publisher.clone(),
        &t.policy,
    );

    // Good profile updates of 20 users, with poison events among them, each poison event
    // marked so that it can be told apart in the dead-letter topic, with the reason expected.
    let good = 600;
    let mut events = Vec::new();
    let mut poison: HashMap<String, &str> = HashMap::new();
    for i in 0..good {
        let user = format!("u{}", i % 20);
        let payload = json!({"type": "profile_updated", "user_id": user, "ts": 1000 + i, "country": format!("c{i}"), "visits": i});
        events.push(OutgoingEvent {
            key: Some(Bytes::from(user)),
            payload: Bytes::from(payload.to_string()),
            headers: Vec::new(),
        });
        if i % 40 == 7 {
            let n = poison.len();
            let (marker, payload, reason) = match n % 3 {
                0 => {
                    let marker = format!("poison-{n}-malformed");
                    let payload = format!(
                        r#"{{"type": "profile_updated", "user_id": "u1", "note": "{marker}""#
                    );
                    (marker, payload, "malformed JSON")
                }
                1 => {
                    let marker = format!("poison-{n}-keyless");
                    let payload =
                        json!({"type": "profile_updated", "ts": 5, "visits": 1, "note": marker})
                            .to_string();
                    (marker, payload, "key `$.user_id` is missing")
                }
                _ => {
                    let marker = format!("poison-{n}-mistyped");
                    let payload = json!({"type": "profile_updated", "user_id": "u3", "ts": 5, "visits": "many", "note": marker}).to_string();
                    (marker, payload, "feature `visits`")
                }
            };
            poison.insert(marker, reason);
            events.push(OutgoingEvent {
                key: Some(Bytes::from_static(b"u1")),
                payload: Bytes::from(payload),
                headers: Vec::new(),
            });
        }
    }
    publisher
        .publish(&t.topic, &events)
        .await
        .unwrap_or_else(|e| panic!("{e}"));

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
    let mut main_source = source(&brokers, &t.group, &t.topic);
    let mut retry_source = source(
        &brokers,
        &format!("{}-retry", t.group),
        &t.policy.retry_topic,
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let runs = async {
        tokio::join!(
            main.run(&mut main_source, stopped(rx.clone())),
            retry.run(&mut retry_source, stopped(rx))
        )
    };
    let poison_count = poison.len() as u64;
    let scenario = async {
        wait_for(
            "every good event applied and every poison event dead-lettered",
            Duration::from_secs(60),
            || {
                applied(&main_stats) + applied(&retry_stats) >= good as u64
                    && main_stats.dead_lettered.load(Ordering::SeqCst) >= poison_count
            },
        )
        .await;
        let _ = stop.send(true);
    };
    let ((main_result, retry_result), ()) = tokio::join!(runs, scenario);
    main_source.close().await;
    retry_source.close().await;
    main_result.unwrap_or_else(|e| panic!("the main pipeline stopped: {e}"));
    retry_result.unwrap_or_else(|e| panic!("the retry pipeline stopped: {e}"));

    assert!(
        main_stats.retried.load(Ordering::SeqCst) > 0,
        "the failed store writes went through the retry topic"
    );
    assert!(
        applied(&retry_stats) > 0,
        "the retry pipeline applied the retried events"
    );
    assert_eq!(
        main_stats.dead_lettered.load(Ordering::SeqCst),
        poison_count
    );
    assert_eq!(retry_stats.dead_lettered.load(Ordering::SeqCst), 0);

    // Every user's newest good profile update is served.
    let profile = repo.group("profile").unwrap();
    for u in 0..20i64 {
        let last = good - 20 + u;
        let record = attribute(store.as_ref(), profile, &format!("u{u}")).await;
        assert_eq!(
            record.map(|r| (r.event_time, r.values)),
            Some((
                1000 + last,
                vec![Value::String(format!("c{last}")), Value::Int64(last)]
            )),
            "u{u}"
        );
    }

    // The dead-letter topic holds exactly the poison events, each with what was wrong.
    let dead = read_topic(&brokers, &t.policy.dead_letter_topic, poison.len()).await;
    let mut found = BTreeSet::new();
    for event in &dead {
        let marker = poison
            .keys()
            .find(|m| event.payload.contains(m.as_str()))
            .unwrap_or_else(|| panic!("not a poison event: {}", event.payload));
        let error = event.headers.get(headers::ERROR).map_or("", String::as_str);
        assert!(
            error.contains(poison[marker]),
            "{marker}: the error header says `{error}`, expected it to name `{}`",
            poison[marker]
        );
        assert!(found.insert(marker.clone()), "{marker} dead-lettered twice");
    }
    assert_eq!(
        found,
        poison.keys().cloned().collect::<BTreeSet<_>>(),
        "every poison event is dead-lettered"
    );
}

/// A store that records, per entity of one time-series group, the event times written, in the
/// order the writes came: an entity's events applied out of order show as a step back. It also
/// records the most entities one attribute update held (events of that many keys applied at
/// once).
struct Recording<S> {
    inner: S,
    group: String,
    written: Mutex<HashMap<String, Vec<i64>>>,
    widest_update: AtomicUsize,
}

impl<S> Recording<S> {
    fn new(inner: S, group: &str) -> Recording<S> {
        Recording {
            inner,
            group: group.to_owned(),
            written: Mutex::default(),
            widest_update: AtomicUsize::new(0),
        }
    }

    fn written(&self) -> HashMap<String, Vec<i64>> {
        self.written.lock().unwrap().clone()
    }
}

#[async_trait]
impl<S: OnlineStore> RecordReader for Recording<S> {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> StoreResult<Vec<Option<Record>>> {
        self.inner.get_attributes(group, entities).await
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> StoreResult<Vec<Vec<Record>>> {
        self.inner.scan_timeseries(group, entities, query).await
    }
}

#[async_trait]
impl<S: OnlineStore> OnlineStore for Recording<S> {
    async fn put(&self, group: &FeatureGroup, writes: &[Write]) -> StoreResult<Vec<PutOutcome>> {
        let outcomes = self.inner.put(group, writes).await?;
        if group.name == self.group {
            let mut written = self.written.lock().unwrap();
            for w in writes {
                written
                    .entry(w.entity.as_str().to_owned())
                    .or_default()
                    .push(w.record.event_time);
            }
        }
        Ok(outcomes)
    }

    async fn update(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: Updater,
    ) -> StoreResult<Vec<Option<Record>>> {
        self.widest_update
            .fetch_max(entities.len(), Ordering::SeqCst);
        self.inner.update(group, entities, updater).await
    }

    async fn delete(&self, group: &FeatureGroup, entities: &[EntityKey]) -> StoreResult<()> {
        self.inner.delete(group, entities).await
    }

    async fn trim(&self, group: &FeatureGroup, now: i64) -> StoreResult<u64> {
        self.inner.trim(group, now).await
    }
}

/// A user's click activity: the clicks counted in the window and the last sequence number.
async fn click_activity(
    store: &dyn OnlineStore,
    repo: &FeatureRepo,
    user: &str,
) -> Option<(Value, Value)> {
    let record = attribute(store, repo.group("activity").unwrap(), user).await;
    record.map(|r| (r.value(0).clone(), r.value(1).clone()))
}

/// The activity of a user whose clicks `0..n` were all applied once.
fn every_click(n: i64) -> Option<(Value, Value)> {
    Some((Value::Int64(n), Value::Int64(n - 1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kafka broker (CELLAR_TEST_KAFKA); scripts/test.sh starts one"]
async fn one_keys_events_apply_in_order_under_full_concurrency() {
    let brokers = broker();
    let t = Topics::create(&brokers).await;
    let repo = clicks_repo(&t.topic);
    let dir = tempfile::tempdir().unwrap();
    // Every write takes a while, so many events (of different keys) are running at once.
    let store = Arc::new(Recording::new(
        FaultyStore::new(embedded(&dir), 0, Duration::from_millis(1)),
        "history",
    ));
    let publisher = publisher(&brokers, false);
    let (users, per_user) = (50, 200);
    publisher
        .publish(&t.topic, &clicks(users, per_user))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let processor = processor(
        &repo,
        store.clone() as Arc<dyn OnlineStore>,
        publisher,
        &t.policy,
    );
    let pipeline = Pipeline::new(processor, PipelineConfig::default()).unwrap();
    let stats = pipeline.stats();
    let mut main_source = source(&brokers, &t.group, &t.topic);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let total = (users as u64) * (per_user as u64);
    let scenario = async {
        // Two records per click: the activity and the history.
        wait_for("every click applied", Duration::from_secs(60), || {
            applied(&stats) >= 2 * total
        })
        .await;
        let _ = stop.send(true);
    };
    let (result, ()) = tokio::join!(pipeline.run(&mut main_source, stopped(rx)), scenario);
    main_source.close().await;
    result.unwrap_or_else(|e| panic!("the pipeline stopped: {e}"));

    assert_eq!(seen(&stats), total, "each click is applied once");
    assert_eq!(stats.retried.load(Ordering::SeqCst), 0);
    let widest = store.widest_update.load(Ordering::SeqCst);
    assert!(
        widest > 1,
        "clicks of several users were applied at once (at most {widest})"
    );
    let written = store.written();
    let history = repo.group("history").unwrap();
    for u in 0..users {
        let user = format!("u{u}");
        assert_eq!(
            click_activity(store.as_ref(), &repo, &user).await,
            every_click(per_user),
            "{user}: every click counted once, the last one's sequence number kept"
        );
        let times = &written[&user];
        assert_eq!(
            times.len(),
            per_user as usize,
            "{user}: one history write per click"
        );
        for pair in times.windows(2) {
            assert!(
                pair[0] <= pair[1],
                "{user}: a click at {} was written after one at {}",
                pair[1],
                pair[0]
            );
        }
        let series = store
            .scan_timeseries(
                history,
                &[EntityKey(user.clone())],
                TimeseriesQuery {
                    top_n: 1000,
                    since: None,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .pop()
            .unwrap_or_default();
        assert_eq!(series.len(), per_user as usize, "{user}: the history");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kafka broker (CELLAR_TEST_KAFKA); scripts/test.sh starts one"]
async fn group_members_share_partitions_and_take_over_from_a_stopped_one() {
    let brokers = broker();
    let t = Topics::create(&brokers).await;
    let repo = clicks_repo(&t.topic);
    let dir = tempfile::tempdir().unwrap();
    // Slow writes, so that the first member is stopped with events still running.
    let store: Arc<dyn OnlineStore> = Arc::new(FaultyStore::new(
        embedded(&dir),
        0,
        Duration::from_millis(20),
    ));
    // One event per batch: the members resume partitions from any committed offset.
    let publisher = publisher(&brokers, true);
    let processor = processor(&repo, store.clone(), publisher.clone(), &t.policy);
    // The first member's shutdown does not wait for its running events: they finish after its
    // last commit, so the second member receives them again.
    let first = Pipeline::new(
        processor.clone(),
        PipelineConfig {
            revoke_timeout: Duration::from_millis(1),
            ..PipelineConfig::default()
        },
    )
    .unwrap();
    let second = Pipeline::new(processor, PipelineConfig::default()).unwrap();
    let (first_stats, second_stats) = (first.stats(), second.stats());
    let mut first_source = source(&brokers, &t.group, &t.topic);
    let mut second_source = source(&brokers, &t.group, &t.topic);
    let (stop_first, first_rx) = tokio::sync::watch::channel(false);
    let (stop_second, second_rx) = tokio::sync::watch::channel(false);
    let (users, per_user) = (20, 100);
    let events = clicks(users, per_user);
    let first_run = async {
        let result = first.run(&mut first_source, stopped(first_rx)).await;
        // Leaves the group, so its partitions move to the second member at once.
        first_source.close().await;
        result
    };
    let second_run = second.run(&mut second_source, stopped(second_rx));
    let scenario = async {
        wait_for(
            "both members to own partitions",
            Duration::from_secs(30),
            || {
                !first.consumer().partitions().is_empty()
                    && !second.consumer().partitions().is_empty()
            },
        )
        .await;
        let (half, rest) = events.split_at(events.len() / 2);
        publisher
            .publish(&t.topic, half)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        wait_for(
            "the first member to apply events",
            Duration::from_secs(30),
            || seen(&first_stats) >= 100,
        )
        .await;
        let _ = stop_first.send(true);
        wait_for(
            "the second member to take every partition",
            Duration::from_secs(30),
            || second.consumer().partitions().len() == PARTITIONS as usize,
        )
        .await;
        publisher
            .publish(&t.topic, rest)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // Done when every user's last click is counted; anything applied twice shows after.
        let started = tokio::time::Instant::now();
        loop {
            let mut done = true;
            for u in 0..users {
                let activity = click_activity(store.as_ref(), &repo, &format!("u{u}")).await;
                done &= activity.is_some_and(|(_, last)| last == Value::Int64(per_user - 1));
            }
            if done {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "timed out waiting for every click"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = stop_second.send(true);
    };
    let (first_result, second_result, ()) = tokio::join!(first_run, second_run, scenario);
    second_source.close().await;
    first_result.unwrap_or_else(|e| panic!("the first member stopped: {e}"));
    second_result.unwrap_or_else(|e| panic!("the second member stopped: {e}"));

    assert!(seen(&first_stats) > 0 && seen(&second_stats) > 0);
    assert!(
        second_stats.duplicates.load(Ordering::SeqCst) > 0,
        "the second member received again events the first one had applied"
    );
    for u in 0..users {
        let user = format!("u{u}");
        assert_eq!(
            click_activity(store.as_ref(), &repo, &user).await,
            every_click(per_user),
            "{user}: every click counted exactly once"
        );
    }
}
