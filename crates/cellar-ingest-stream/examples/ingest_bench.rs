//! Stream ingestion benchmark, end to end on the embedded log and the embedded store:
//!
//! 1. events/s through the whole pipeline (decode, dispatch, map, batched durable writes,
//!    commits) into the embedded store; then the same keeping the offline history, as a
//!    server does by default;
//! 2. with a simulated 5 ms latency per store write: the parallel consumer against two
//!    sequential baselines measured in the same run:
//!    - batched: polls as many events as the pipeline does, writes each group's records of the
//!      batch with one store call and commits once per batch. This is the fair baseline: it
//!      batches as the pipeline does, so the ratio shows what in-partition parallelism adds;
//!    - per event: one store write and one commit per event (the consume-process-commit loop
//!      of a plain manual-commit consumer), on a twentieth of the events because it is slow.
//!
//! `cargo run --release -p cellar-ingest-stream --example ingest_bench -- [events] [slow events]`

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cellar_cache::{History, WritePath};
use cellar_history::OfflineHistory;
use cellar_ingest_stream::aggregate;
use cellar_ingest_stream::dispatch::Dispatcher;
use cellar_ingest_stream::log::source::{ensure_topic, LogPublisher, LogSource};
use cellar_ingest_stream::log::{EventLog, LogRecord};
use cellar_ingest_stream::pipeline::{Pipeline, PipelineConfig};
use cellar_ingest_stream::process::{EventProcessor, RetryPolicy};
use cellar_ingest_stream::writer::{BatchPolicy, BatchingWriter, Change};
use cellar_spec::{EntityKey, FeatureGroup};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::faults::FaultyStore;
use cellar_store::{OnlineStore, Updater, Write};

// The allocator of the `cellar` binary, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
  - { name: session_id, type: string }
retention: { max_records: 100 }
---
kind: Ingestion
name: profiles
stream: { topic: actions, event_types: [profile_updated] }
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
features: { article_id: $.article_id, session_id: $.session_id }
"#;

fn events(n: usize) -> Vec<LogRecord> {
    (0..n)
        .map(|i| {
            let user = format!("u{}", (i * 7919) % 10_000);
            let e = if i % 2 == 0 {
                serde_json::json!({"type": "profile_updated", "user_id": user, "ts": 1_700_000_000_000i64 + i as i64,
                                   "country": "KR", "visits": i})
            } else {
                serde_json::json!({"type": "article_clicked", "user_id": user, "ts": 1_700_000_000_000i64 + i as i64,
                                   "article_id": format!("a{}", i % 100_000), "session_id": "s1"})
            };
            LogRecord {
                key: Some(Bytes::from(user)),
                payload: Bytes::from(e.to_string()),
                headers: Vec::new(),
                timestamp_ms: 0,
            }
        })
        .collect()
}

/// Runs the pipeline over `n` events already in the log; returns events/s.
async fn run_pipeline(
    log: &EventLog,
    store: Arc<dyn OnlineStore>,
    history: Option<Arc<dyn History>>,
    n: usize,
    group: &str,
) -> f64 {
    let repo = cellar_spec::parse_repo(&[("repo.yaml".into(), REPO.into())]).expect("repo");
    let (dispatcher, _) = Dispatcher::new(&repo);
    let mut path = WritePath::new(store, None);
    if let Some(history) = history {
        path = path.with_history(history);
    }
    let processor = Arc::new(EventProcessor::new(
        Arc::new(dispatcher),
        BatchingWriter::start(path, BatchPolicy::default()),
        Arc::new(LogPublisher::new(log.clone())),
        RetryPolicy::default(),
    ));
    let pipeline = Pipeline::new(processor, PipelineConfig::default()).expect("pipeline");
    let stats = pipeline.stats();
    let mut source = LogSource::new(log.clone(), group, vec!["actions".into()]);
    let started = Instant::now();
    let done = async {
        while stats.events.load(Ordering::Relaxed) < n as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    pipeline.run(&mut source, done).await.expect("pipeline run");
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "  ({group}: concurrency limit at the end {}, commits {})",
        pipeline.consumer().concurrency_limit(),
        stats.commits.load(Ordering::Relaxed)
    );
    rate
}

/// Reads, maps, writes and commits one event at a time; returns events/s.
async fn run_sequential(log: &EventLog, store: &dyn OnlineStore, n: usize) -> f64 {
    let repo = cellar_spec::parse_repo(&[("repo.yaml".into(), REPO.into())]).expect("repo");
    let (dispatcher, _) = Dispatcher::new(&repo);
    let started = Instant::now();
    let mut done = 0;
    'outer: for p in 0..log.partitions("actions").expect("topic") {
        let mut next = 0;
        loop {
            let batch = log.read("actions", p, next, 1).expect("read");
            let Some(entry) = batch.first() else { break };
            let event: serde_json::Value = serde_json::from_slice(&entry.payload).expect("json");
            for m in dispatcher.route("actions", &event) {
                match m.map(&event, 0, None).expect("map") {
                    (entity, Change::Put(record)) => {
                        store
                            .put(&m.group, &[Write { entity, record }])
                            .await
                            .expect("put");
                    }
                    (entity, Change::Update(update)) => {
                        let width = m.group.features.len();
                        let updater: Updater = Box::new(move |_, _, mut stored| {
                            aggregate::apply(&mut stored, width, &update);
                            stored
                        });
                        store
                            .update(&m.group, &[entity], updater)
                            .await
                            .expect("update");
                    }
                }
            }
            next = entry.offset + 1;
            log.commit("sequential", "actions", p, next)
                .await
                .expect("commit");
            done += 1;
            if done == n {
                break 'outer;
            }
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// Polls `max_poll` events at a time, maps them in offset order, writes each group's records
/// of the batch with one store call (one put, one read-modify-write for aggregates) and
/// commits once per batch; returns events/s.
async fn run_batched_sequential(
    log: &EventLog,
    store: &dyn OnlineStore,
    n: usize,
    max_poll: usize,
) -> f64 {
    let repo = cellar_spec::parse_repo(&[("repo.yaml".into(), REPO.into())]).expect("repo");
    let (dispatcher, _) = Dispatcher::new(&repo);
    let started = Instant::now();
    let mut done = 0;
    'outer: for p in 0..log.partitions("actions").expect("topic") {
        let mut next = 0;
        loop {
            let batch = log
                .read("actions", p, next, max_poll.min(n - done))
                .expect("read");
            let Some(last) = batch.last() else { break };
            next = last.offset + 1;
            // Per group, in offset order: the records to put and the aggregate updates.
            type GroupWrites = (
                Arc<FeatureGroup>,
                Vec<Write>,
                Vec<(EntityKey, aggregate::Update)>,
            );
            let mut groups: Vec<GroupWrites> = Vec::new();
            for entry in &batch {
                let event: serde_json::Value =
                    serde_json::from_slice(&entry.payload).expect("json");
                for m in dispatcher.route("actions", &event) {
                    let i = match groups.iter().position(|(g, ..)| g.name == m.group.name) {
                        Some(i) => i,
                        None => {
                            groups.push((m.group.clone(), Vec::new(), Vec::new()));
                            groups.len() - 1
                        }
                    };
                    match m.map(&event, 0, None).expect("map") {
                        (entity, Change::Put(record)) => groups[i].1.push(Write { entity, record }),
                        (entity, Change::Update(update)) => groups[i].2.push((entity, update)),
                    }
                }
            }
            for (group, puts, updates) in groups {
                if !puts.is_empty() {
                    store.put(&group, &puts).await.expect("put");
                }
                if !updates.is_empty() {
                    let width = group.features.len();
                    let (entities, updates): (Vec<_>, Vec<_>) = updates.into_iter().unzip();
                    let updater: Updater = Box::new(move |i, _, mut stored| {
                        aggregate::apply(&mut stored, width, &updates[i]);
                        stored
                    });
                    store
                        .update(&group, &entities, updater)
                        .await
                        .expect("update");
                }
            }
            log.commit("batched", "actions", p, next)
                .await
                .expect("commit");
            done += batch.len();
            if done >= n {
                break 'outer;
            }
        }
    }
    done as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(200_000);
    let slow_n = args.get(1).copied().unwrap_or(20_000);

    let dir = tempfile::tempdir().expect("temp dir");
    let log = EventLog::open(dir.path().join("log")).expect("log");
    ensure_topic(&log, "actions").await.expect("topic");
    for chunk in events(n).chunks(10_000) {
        log.append("actions", chunk).await.expect("append");
    }
    let store = Arc::new(EmbeddedStore::open(dir.path().join("store")).expect("store"));
    let rate = run_pipeline(&log, store, None, n, "bench").await;
    println!("pipeline into the embedded store: {n} events, {rate:.0} events/s");
    let store = Arc::new(EmbeddedStore::open(dir.path().join("store-kept")).expect("store"));
    let history = Arc::new(
        OfflineHistory::open(
            cellar_history::Storage::Local(dir.path().join("history")),
            dir.path().join("staging"),
            Duration::from_secs(60),
        )
        .expect("history"),
    );
    let kept = run_pipeline(&log, store, Some(history.clone()), n, "kept").await;
    history.close().expect("convert");
    println!(
        "pipeline into the embedded store and the offline history: {kept:.0} events/s ({:.0}% \
         of the store alone)",
        100.0 * kept / rate
    );

    let slow_dir = tempfile::tempdir().expect("temp dir");
    let slow_log = EventLog::open(slow_dir.path().join("log")).expect("log");
    ensure_topic(&slow_log, "actions").await.expect("topic");
    slow_log
        .append("actions", &events(slow_n))
        .await
        .expect("append");
    // The embedded store with 5 ms more per write, as a remote store would have.
    let slow = |path: &str| {
        Arc::new(FaultyStore::new(
            EmbeddedStore::open(slow_dir.path().join(path)).expect("store"),
            0,
            Duration::from_millis(5),
        ))
    };
    let parallel = run_pipeline(&slow_log, slow("parallel"), None, slow_n, "parallel").await;
    let max_poll = PipelineConfig::default().max_poll;
    let batched = run_batched_sequential(&slow_log, &*slow("batched"), slow_n, max_poll).await;
    let sequential_n = (slow_n / 20).max(100);
    let sequential = run_sequential(&slow_log, &*slow("sequential"), sequential_n).await;
    println!("5 ms per store write: parallel consumer {parallel:.0} events/s ({slow_n} events)");
    println!(
        "5 ms per store write: batched sequential (poll {max_poll}, one write per group and one \
         commit per batch) {batched:.0} events/s ({slow_n} events)"
    );
    println!(
        "5 ms per store write: sequential consume-process-commit, one write and one commit per \
         event, {sequential:.0} events/s ({sequential_n} events)"
    );
    println!(
        "ratio against batched sequential: {:.1}x; against per-event sequential: {:.1}x",
        parallel / batched,
        parallel / sequential
    );
}
