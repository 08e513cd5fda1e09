//! Tests of the engine with simulated stores: random latencies on tokio's paused clock, so
//! they are fast and deterministic.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::*;

type Latency = Box<dyn Fn(i64) -> Duration + Send + Sync>;
type Predicate = Box<dyn Fn(i64) -> bool + Send + Sync>;

/// A simulated store call: sleeps a per-offset latency, fails some offsets, and records what
/// ran, in what order, and whether two events of one key ever overlapped.
struct Store {
    latency: Latency,
    fails: Predicate,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// Offsets in the order their processing started, per partition and key.
    order: HashMap<(TopicPartition, Option<Bytes>), Vec<i64>>,
    /// Keys with an event being processed.
    active: HashSet<(TopicPartition, Bytes)>,
    /// Offsets that started while another event of their key was being processed.
    overlaps: Vec<i64>,
    /// Offsets processed successfully, per partition.
    processed: HashMap<TopicPartition, BTreeSet<i64>>,
    running: usize,
    max_running: usize,
}

impl Store {
    fn new(latency: impl Fn(i64) -> Duration + Send + Sync + 'static) -> Arc<Self> {
        Self::failing(latency, |_| false)
    }

    fn failing(
        latency: impl Fn(i64) -> Duration + Send + Sync + 'static,
        fails: impl Fn(i64) -> bool + Send + Sync + 'static,
    ) -> Arc<Self> {
        Arc::new(Self {
            latency: Box::new(latency),
            fails: Box::new(fails),
            log: Mutex::new(Log::default()),
        })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().expect("test log lock")
    }
}

struct StoreProcessor(Arc<Store>);

#[async_trait]
impl EventProcessor<u32> for StoreProcessor {
    async fn process(
        &self,
        partition: &TopicPartition,
        event: &Event<u32>,
    ) -> Result<(), ProcessError> {
        {
            let mut log = self.0.log();
            log.order
                .entry((partition.clone(), event.key.clone()))
                .or_default()
                .push(event.offset);
            if let Some(key) = &event.key {
                if !log.active.insert((partition.clone(), key.clone())) {
                    log.overlaps.push(event.offset);
                }
            }
            log.running += 1;
            log.max_running = log.max_running.max(log.running);
        }
        tokio::time::sleep((self.0.latency)(event.offset)).await;
        let mut log = self.0.log();
        log.running -= 1;
        if let Some(key) = &event.key {
            log.active.remove(&(partition.clone(), key.clone()));
        }
        if (self.0.fails)(event.offset) {
            return Err(format!("store rejected offset {}", event.offset).into());
        }
        // Recorded before the engine hears of it, so the set is never behind the engine.
        log.processed
            .entry(partition.clone())
            .or_default()
            .insert(event.offset);
        Ok(())
    }
}

/// A simulated retry topic producer: records what it was handed, and fails some offsets.
struct RetryTopic {
    fails: Predicate,
    handed: Mutex<Vec<i64>>,
}

impl RetryTopic {
    fn accepting() -> Arc<Self> {
        Self::failing(|_| false)
    }

    fn failing(fails: impl Fn(i64) -> bool + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            fails: Box::new(fails),
            handed: Mutex::new(Vec::new()),
        })
    }

    fn handed(&self) -> Vec<i64> {
        let mut handed = self.handed.lock().expect("test lock").clone();
        handed.sort_unstable();
        handed
    }
}

struct RetryHandler(Arc<RetryTopic>);

#[async_trait]
impl FailureHandler<u32> for RetryHandler {
    async fn on_failure(
        &self,
        _partition: &TopicPartition,
        event: &Event<u32>,
        _error: &ProcessError,
    ) -> Result<(), ProcessError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        if (self.0.fails)(event.offset) {
            return Err("retry topic unreachable".into());
        }
        self.0.handed.lock().expect("test lock").push(event.offset);
        Ok(())
    }
}

fn consumer(
    config: ConsumerConfig,
    store: &Arc<Store>,
    retry: &Arc<RetryTopic>,
) -> ParallelConsumer<u32> {
    ParallelConsumer::new(
        config,
        StoreProcessor(Arc::clone(store)),
        RetryHandler(Arc::clone(retry)),
    )
    .expect("valid config inside a runtime")
}

fn config(min: usize, max: usize, initial: usize) -> ConsumerConfig {
    ConsumerConfig {
        concurrency: ConcurrencyConfig {
            min,
            max,
            initial,
            ..ConcurrencyConfig::default()
        },
        partition_buffer: 512,
        resume_buffer: 256,
        stall_after: Duration::from_secs(30),
    }
}

/// A deterministic pseudo-random number per (seed, value): splitmix64.
fn mix(seed: u64, value: i64) -> u64 {
    let mut z = seed ^ (value as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn random_latency(seed: u64, max_ms: u64) -> impl Fn(i64) -> Duration + Send + Sync {
    move |offset| Duration::from_micros(100 + mix(seed, offset) % (max_ms * 1_000))
}

fn key_of(seed: u64, offset: i64, keys: u64) -> Bytes {
    Bytes::from(format!("user-{}", mix(seed ^ 0xABCD, offset) % keys))
}

/// Feeds `events` to `partition` in batches, pausing while the buffer is full, the way a
/// source driver does.
async fn feed(
    consumer: &ParallelConsumer<u32>,
    partition: &TopicPartition,
    events: Vec<Event<u32>>,
    batch: usize,
) {
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let chunk: Vec<_> = events.by_ref().take(batch).collect();
        if consumer.submit(partition, chunk).expect("accepted") == BufferState::Full {
            consumer.wait_for_room(partition).await.expect("assigned");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn same_key_events_run_one_at_a_time_in_offset_order_under_full_concurrency() {
    let store = Store::new(random_latency(7, 20));
    let retry = RetryTopic::accepting();
    let consumer = consumer(config(256, 256, 256), &store, &retry);
    let partitions: Vec<_> = (0..3).map(|p| TopicPartition::new("clicks", p)).collect();
    let mut expected: HashMap<(TopicPartition, Option<Bytes>), Vec<i64>> = HashMap::new();
    let mut feeders = Vec::new();
    for (index, partition) in partitions.iter().enumerate() {
        consumer
            .assign(partition.clone(), 0)
            .expect("new partition");
        let seed = index as u64;
        let events: Vec<_> = (0..3_000i64)
            .map(|offset| Event::new(offset, Some(key_of(seed, offset, 40)), 0))
            .collect();
        for event in &events {
            expected
                .entry((partition.clone(), event.key.clone()))
                .or_default()
                .push(event.offset);
        }
        let consumer = consumer.clone();
        let partition = partition.clone();
        feeders.push(tokio::spawn(async move {
            feed(&consumer, &partition, events, 100).await;
            consumer.wait_drained(&partition).await.expect("assigned")
        }));
    }
    for feeder in feeders {
        assert_eq!(feeder.await.expect("feeder"), 3_000);
    }
    let log = store.log();
    assert!(
        log.overlaps.is_empty(),
        "{} same-key overlaps, first at offsets {:?}",
        log.overlaps.len(),
        &log.overlaps[..log.overlaps.len().min(5)]
    );
    assert_eq!(log.order.len(), expected.len());
    for (key, offsets) in &expected {
        assert_eq!(log.order.get(key), Some(offsets), "order of {key:?}");
    }
    assert!(
        log.max_running >= 60,
        "different keys ran concurrently: {}",
        log.max_running
    );
}

#[tokio::test(start_paused = true)]
async fn keyless_events_run_concurrently() {
    let store = Store::new(|_| Duration::from_millis(10));
    let retry = RetryTopic::accepting();
    let consumer = consumer(config(64, 64, 64), &store, &retry);
    let partition = TopicPartition::new("clicks", 0);
    consumer
        .assign(partition.clone(), 0)
        .expect("new partition");
    let events: Vec<_> = (0..64).map(|offset| Event::new(offset, None, 0)).collect();
    consumer.submit(&partition, events).expect("accepted");
    assert_eq!(
        consumer.wait_drained(&partition).await.expect("assigned"),
        64
    );
    assert_eq!(store.log().max_running, 64);
}

#[tokio::test(start_paused = true)]
async fn commit_position_never_passes_an_unfinished_offset() {
    for seed in 0..5u64 {
        let store = Store::new(random_latency(seed, 30));
        let retry = RetryTopic::accepting();
        let consumer = consumer(config(32, 128, 64), &store, &retry);
        let partition = TopicPartition::new("clicks", 0);
        consumer
            .assign(partition.clone(), 10)
            .expect("new partition");
        // Offsets with holes, as a compacted topic has them.
        let mut offset = 10;
        let mut events = Vec::new();
        for _ in 0..2_000 {
            offset += 1 + (mix(seed, offset) % 3) as i64;
            events.push(Event::new(offset, Some(key_of(seed, offset, 100)), 0));
        }
        let last = offset;
        let all: BTreeSet<i64> = events.iter().map(|event| event.offset).collect();
        let feeder = {
            let consumer = consumer.clone();
            let partition = partition.clone();
            tokio::spawn(async move { feed(&consumer, &partition, events, 64).await })
        };
        let mut checks = 0;
        loop {
            let committable = consumer.committable(&partition).expect("assigned");
            {
                let log = store.log();
                let processed = log.processed.get(&partition).cloned().unwrap_or_default();
                let unfinished_below = all
                    .range(..committable)
                    .find(|offset| !processed.contains(offset));
                assert_eq!(
                    unfinished_below, None,
                    "seed {seed}: committable {committable} passes an unfinished offset"
                );
            }
            checks += 1;
            if committable == last + 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        feeder.await.expect("feeder");
        assert!(checks > 50, "the check ran while work was in progress");
        assert_eq!(
            consumer.commit_positions(),
            vec![(partition.clone(), last + 1)]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn failed_events_go_through_the_failure_handler_and_still_complete() {
    let store = Store::failing(random_latency(3, 10), |offset| offset % 7 == 0);
    let retry = RetryTopic::accepting();
    let consumer = consumer(config(16, 16, 16), &store, &retry);
    let partition = TopicPartition::new("clicks", 0);
    consumer
        .assign(partition.clone(), 0)
        .expect("new partition");
    let events: Vec<_> = (0..500)
        .map(|offset| Event::new(offset, Some(key_of(3, offset, 20)), 0))
        .collect();
    feed(&consumer, &partition, events, 50).await;
    assert_eq!(
        consumer.wait_drained(&partition).await.expect("assigned"),
        500
    );
    let expected: Vec<i64> = (0..500).filter(|offset| offset % 7 == 0).collect();
    assert_eq!(retry.handed(), expected);
    assert!(consumer.failures().is_empty());
}

struct PanickingProcessor;

#[async_trait]
impl EventProcessor<u32> for PanickingProcessor {
    async fn process(
        &self,
        _partition: &TopicPartition,
        event: &Event<u32>,
    ) -> Result<(), ProcessError> {
        if event.offset == 3 {
            panic!("decoder bug");
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_processor_is_a_failure_not_a_lost_offset() {
    let retry = RetryTopic::accepting();
    let consumer = ParallelConsumer::new(
        config(4, 4, 4),
        PanickingProcessor,
        RetryHandler(Arc::clone(&retry)),
    )
    .expect("valid");
    let partition = TopicPartition::new("clicks", 0);
    consumer
        .assign(partition.clone(), 0)
        .expect("new partition");
    let events: Vec<_> = (0..10).map(|offset| Event::new(offset, None, 0)).collect();
    consumer.submit(&partition, events).expect("accepted");
    assert_eq!(
        consumer.wait_drained(&partition).await.expect("assigned"),
        10
    );
    assert_eq!(retry.handed(), vec![3]);
    assert_eq!(consumer.in_flight(), 0, "the concurrency slot came back");
}

#[tokio::test(start_paused = true)]
async fn a_failing_failure_handler_blocks_the_commit_and_its_key_only() {
    let store = Store::failing(|_| Duration::from_millis(2), |offset| offset == 10);
    let retry = RetryTopic::failing(|offset| offset == 10);
    let mut settings = config(8, 8, 8);
    settings.stall_after = Duration::from_secs(5);
    let consumer = consumer(settings, &store, &retry);
    let partition = TopicPartition::new("clicks", 0);
    consumer
        .assign(partition.clone(), 0)
        .expect("new partition");
    let blocked = Bytes::from_static(b"blocked");
    let events: Vec<_> = (0..40)
        .map(|offset| {
            let key = if offset % 10 == 0 {
                blocked.clone()
            } else {
                Bytes::from(format!("other-{offset}"))
            };
            Event::new(offset, Some(key), 0)
        })
        .collect();
    consumer.submit(&partition, events).expect("accepted");
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(consumer.committable(&partition), Some(10));
    let failures = consumer.failures();
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].offset, 10);
    assert_eq!(failures[0].error, "retry topic unreachable");
    {
        let log = store.log();
        let blocked_order = log.order.get(&(partition.clone(), Some(blocked.clone())));
        assert_eq!(
            blocked_order,
            Some(&vec![0, 10]),
            "20 and 30 wait behind the parked 10"
        );
        let processed = log.processed.get(&partition).cloned().unwrap_or_default();
        assert!(
            (11..40)
                .filter(|offset| offset % 10 != 0)
                .all(|offset| processed.contains(&offset)),
            "other keys went on"
        );
    }
    let stats = consumer.partition_stats(&partition).expect("assigned");
    assert_eq!((stats.parked, stats.buffered), (1, 3));

    tokio::time::sleep(Duration::from_secs(5)).await;
    let stalls = consumer.stalled();
    assert_eq!(stalls.len(), 1);
    assert_eq!(stalls[0].offset, 10);
    assert_eq!(
        stalls[0].reason,
        StallReason::FailureHandlerFailed {
            error: "retry topic unreachable".into()
        }
    );
}

/// A store whose calls wait until the test lets them through.
struct GatedStore {
    gate: Arc<tokio::sync::Semaphore>,
}

#[async_trait]
impl EventProcessor<u32> for GatedStore {
    async fn process(
        &self,
        _partition: &TopicPartition,
        _event: &Event<u32>,
    ) -> Result<(), ProcessError> {
        let permit = self.gate.acquire().await?;
        permit.forget();
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_buffer_is_reported_until_work_drains_to_the_resume_mark() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut settings = config(4, 4, 4);
    settings.partition_buffer = 10;
    settings.resume_buffer = 5;
    let consumer = ParallelConsumer::new(
        settings,
        GatedStore {
            gate: Arc::clone(&gate),
        },
        RetryHandler(RetryTopic::accepting()),
    )
    .expect("valid");
    let partition = TopicPartition::new("clicks", 0);
    consumer
        .assign(partition.clone(), 0)
        .expect("new partition");
    let batch = |range: std::ops::Range<i64>| -> Vec<Event<u32>> {
        range.map(|offset| Event::new(offset, None, 0)).collect()
    };
    assert_eq!(
        consumer.submit(&partition, batch(0..6)).expect("accepted"),
        BufferState::HasRoom
    );
    assert_eq!(
        consumer.submit(&partition, batch(6..10)).expect("accepted"),
        BufferState::Full
    );
    assert_eq!(consumer.in_flight(), 4, "the limit bounds what runs");
    let waiting =
        tokio::time::timeout(Duration::from_secs(1), consumer.wait_for_room(&partition)).await;
    assert!(waiting.is_err(), "no room while the store is stuck");

    gate.add_permits(4);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        consumer.buffer_state(&partition).expect("assigned"),
        BufferState::Full,
        "6 unfinished is above the resume mark"
    );
    gate.add_permits(1);
    tokio::time::timeout(Duration::from_secs(1), consumer.wait_for_room(&partition))
        .await
        .expect("room once 5 are unfinished")
        .expect("assigned");
    assert_eq!(consumer.committable(&partition), Some(5));
}

#[tokio::test(start_paused = true)]
async fn revoke_waits_for_in_flight_events_and_drops_queued_ones() {
    let store = Store::new(|_| Duration::from_millis(100));
    let retry = RetryTopic::accepting();
    let consumer = consumer(config(4, 4, 4), &store, &retry);
    let partition = TopicPartition::new("clicks", 0);
    consumer
        .assign(partition.clone(), 0)
        .expect("new partition");
    let events: Vec<_> = (0..20).map(|offset| Event::new(offset, None, 0)).collect();
    consumer.submit(&partition, events).expect("accepted");
    tokio::time::sleep(Duration::from_millis(10)).await;

    let revoked = consumer
        .revoke(&partition, Duration::from_secs(1))
        .await
        .expect("assigned");
    assert_eq!(
        revoked,
        Revoked {
            committable: 4,
            dropped: 16,
            abandoned: 0
        }
    );
    assert!(matches!(
        consumer.submit(&partition, vec![Event::new(20, None, 0)]),
        Err(ConsumerError::NotAssigned(_))
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let processed = store
        .log()
        .processed
        .get(&partition)
        .cloned()
        .unwrap_or_default();
    assert_eq!(processed, (0..4).collect(), "dropped events never ran");
}

#[tokio::test(start_paused = true)]
async fn revoke_times_out_on_a_hung_event_and_its_late_result_is_ignored() {
    let store = Store::new(|offset| {
        if offset == 1 {
            Duration::from_secs(60)
        } else {
            Duration::from_millis(5)
        }
    });
    let retry = RetryTopic::accepting();
    let consumer = consumer(config(4, 4, 4), &store, &retry);
    let partition = TopicPartition::new("clicks", 0);
    consumer
        .assign(partition.clone(), 0)
        .expect("new partition");
    let events: Vec<_> = (0..3).map(|offset| Event::new(offset, None, 0)).collect();
    consumer.submit(&partition, events).expect("accepted");
    tokio::time::sleep(Duration::from_millis(10)).await;

    let revoked = consumer
        .revoke(&partition, Duration::from_secs(2))
        .await
        .expect("assigned");
    assert_eq!(
        revoked,
        Revoked {
            committable: 1,
            dropped: 0,
            abandoned: 1
        }
    );
    // The partition comes back, from the revoked position; the hung event of the old
    // assignment must not complete offset 1 of the new one.
    consumer.assign(partition.clone(), 1).expect("free again");
    consumer
        .submit(&partition, vec![Event::new(1, None, 0)])
        .expect("accepted");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        consumer.committable(&partition),
        Some(1),
        "replay in flight"
    );
    assert_eq!(
        consumer.wait_drained(&partition).await.expect("assigned"),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_partition_stuck_on_one_offset_is_reported_with_that_offset() {
    let store = Store::new(|offset| {
        if offset == 5 {
            Duration::from_secs(3_600)
        } else {
            Duration::from_millis(5)
        }
    });
    let retry = RetryTopic::accepting();
    let mut settings = config(8, 8, 8);
    settings.stall_after = Duration::from_secs(10);
    let consumer = consumer(settings, &store, &retry);
    let stuck = TopicPartition::new("clicks", 0);
    let healthy = TopicPartition::new("clicks", 1);
    let idle = TopicPartition::new("clicks", 2);
    for partition in [&stuck, &idle] {
        consumer
            .assign(partition.clone(), 0)
            .expect("new partition");
    }
    // Offset 5 of the stuck partition hangs; the healthy partition has no offset 5.
    let events = |start: i64| {
        (start..start + 20)
            .map(|offset| Event::new(offset, None, 0))
            .collect::<Vec<_>>()
    };
    consumer
        .assign(healthy.clone(), 100)
        .expect("new partition");
    consumer.submit(&stuck, events(0)).expect("accepted");
    consumer.submit(&healthy, events(100)).expect("accepted");

    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(consumer.stalled().is_empty(), "not yet");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalls = consumer.stalled();
    assert_eq!(stalls.len(), 1, "{stalls:?}");
    assert_eq!(stalls[0].partition, stuck);
    assert_eq!(stalls[0].offset, 5);
    assert_eq!(stalls[0].reason, StallReason::InFlight);
    assert!(stalls[0].stuck_for >= Duration::from_secs(10));

    // Work arriving at a partition idle for long is not a stall.
    consumer
        .submit(&idle, vec![Event::new(0, None, 0)])
        .expect("accepted");
    assert!(consumer
        .stalled()
        .iter()
        .all(|stall| stall.partition != idle));
}

/// A store whose latency the test changes while it runs.
struct ShiftingStore {
    latency_ms: Arc<AtomicU64>,
}

#[async_trait]
impl EventProcessor<u32> for ShiftingStore {
    async fn process(
        &self,
        _partition: &TopicPartition,
        _event: &Event<u32>,
    ) -> Result<(), ProcessError> {
        let latency = self.latency_ms.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(latency)).await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_limit_grows_while_latency_is_flat_and_shrinks_when_it_jumps() {
    let latency_ms = Arc::new(AtomicU64::new(5));
    let settings = ConsumerConfig {
        concurrency: ConcurrencyConfig {
            min: 2,
            max: 500,
            initial: 8,
            increase: 2.0,
            ..ConcurrencyConfig::default()
        },
        partition_buffer: 2_000,
        resume_buffer: 1_000,
        stall_after: Duration::from_secs(30),
    };
    let consumer = ParallelConsumer::new(
        settings,
        ShiftingStore {
            latency_ms: Arc::clone(&latency_ms),
        },
        RetryHandler(RetryTopic::accepting()),
    )
    .expect("valid");
    let partition = TopicPartition::new("clicks", 0);
    consumer
        .assign(partition.clone(), 0)
        .expect("new partition");
    let mut next = 0i64;
    let mut run = |count: i64| {
        let events: Vec<_> = (next..next + count)
            .map(|offset| Event::new(offset, None, 0))
            .collect();
        next += count;
        events
    };
    feed(&consumer, &partition, run(10_000), 500).await;
    consumer.wait_drained(&partition).await.expect("assigned");
    let grown = consumer.concurrency_limit();
    assert!(grown >= 40, "grew from 8 under flat latency: {grown}");

    latency_ms.store(50, Ordering::Relaxed);
    feed(&consumer, &partition, run(8 * grown as i64), 500).await;
    consumer.wait_drained(&partition).await.expect("assigned");
    let shrunk = consumer.concurrency_limit();
    assert!(
        shrunk * 2 <= grown,
        "shrank after latency jumped tenfold: {grown} -> {shrunk}"
    );
}

#[tokio::test]
async fn rejects_bad_config_and_unknown_partitions() {
    let bad = ConsumerConfig {
        partition_buffer: 10,
        resume_buffer: 10,
        ..ConsumerConfig::default()
    };
    let error = ParallelConsumer::new(
        bad,
        ShiftingStore {
            latency_ms: Arc::new(AtomicU64::new(0)),
        },
        RetryHandler(RetryTopic::accepting()),
    )
    .err()
    .expect("invalid");
    assert!(error.to_string().contains("resume_buffer 10"), "{error}");

    let store = Store::new(|_| Duration::ZERO);
    let consumer = consumer(ConsumerConfig::default(), &store, &RetryTopic::accepting());
    let partition = TopicPartition::new("clicks", 0);
    assert!(matches!(
        consumer.submit(&partition, vec![Event::new(0, None, 0)]),
        Err(ConsumerError::NotAssigned(_))
    ));
    consumer
        .assign(partition.clone(), 0)
        .expect("new partition");
    assert!(matches!(
        consumer.assign(partition.clone(), 0),
        Err(ConsumerError::AlreadyAssigned(_))
    ));
    consumer
        .submit(&partition, vec![Event::new(5, None, 0)])
        .expect("accepted");
    assert!(matches!(
        consumer.submit(&partition, vec![Event::new(5, None, 0)]),
        Err(ConsumerError::BatchRejected { .. })
    ));
}

#[test]
fn needs_a_runtime() {
    let result = ParallelConsumer::new(
        ConsumerConfig::default(),
        StoreProcessor(Store::new(|_| Duration::ZERO)),
        RetryHandler(RetryTopic::accepting()),
    );
    assert!(matches!(result, Err(ConsumerError::NoRuntime)));
}
