//! The parallel in-partition consumer against a sequential consume-process-commit loop, on
//! one partition with a simulated store latency per event, measured in the same run.
//!
//! ```text
//! cargo run --release -p cellar-ingest-stream --example consumer_bench -- \
//!     [--events 20000] [--keys 2000] [--latency-ms 5] [--sequential-events 1000]
//! ```
//!
//! The sequential loop runs at a fixed rate (one latency per event), so it is measured on
//! `--sequential-events` events (20,000 would take nearly two minutes) and compared by rate.
//! Its commit costs nothing here, which flatters it: a real synchronous commit adds a broker
//! round trip per event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cellar_ingest_stream::consumer::{
    BufferState, ConcurrencyConfig, ConsumerConfig, Event, EventProcessor, FailureHandler,
    ParallelConsumer, ProcessError, TopicPartition,
};

/// A store write that takes `latency`.
struct SimulatedStore {
    latency: Duration,
    writes: Arc<AtomicU64>,
}

#[async_trait]
impl EventProcessor<u64> for SimulatedStore {
    async fn process(
        &self,
        _partition: &TopicPartition,
        _event: &Event<u64>,
    ) -> Result<(), ProcessError> {
        tokio::time::sleep(self.latency).await;
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Nothing fails in this benchmark; a failure would be a bug in it.
struct NoRetries;

#[async_trait]
impl FailureHandler<u64> for NoRetries {
    async fn on_failure(
        &self,
        _partition: &TopicPartition,
        _event: &Event<u64>,
        error: &ProcessError,
    ) -> Result<(), ProcessError> {
        Err(format!("unexpected failure: {error}").into())
    }
}

struct Options {
    events: u64,
    keys: u64,
    latency: Duration,
    sequential_events: u64,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        events: 20_000,
        keys: 2_000,
        latency: Duration::from_millis(5),
        sequential_events: 1_000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag}: `{value}` is not a whole number"))?;
        match flag.as_str() {
            "--events" => options.events = number,
            "--keys" => options.keys = number.max(1),
            "--latency-ms" => options.latency = Duration::from_millis(number),
            "--sequential-events" => options.sequential_events = number.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

/// The source: `count` events of one partition, keys spread by a fixed hash.
fn events(count: u64, keys: u64) -> Vec<Event<u64>> {
    (0..count)
        .map(|offset| {
            let key = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) % keys;
            Event::new(
                offset as i64,
                Some(Bytes::from(format!("user-{key}"))),
                offset,
            )
        })
        .collect()
}

/// Consume, process, commit, one event at a time.
async fn sequential(options: &Options) -> Duration {
    let store = SimulatedStore {
        latency: options.latency,
        writes: Arc::new(AtomicU64::new(0)),
    };
    let partition = TopicPartition::new("bench", 0);
    let mut committed = 0i64;
    let started = Instant::now();
    for event in events(options.sequential_events, options.keys) {
        if let Err(error) = store.process(&partition, &event).await {
            eprintln!("sequential: {error}");
        }
        committed = event.offset + 1;
    }
    let elapsed = started.elapsed();
    if committed as u64 != options.sequential_events {
        eprintln!(
            "sequential: committed {committed} of {}",
            options.sequential_events
        );
    }
    elapsed
}

struct ParallelRun {
    elapsed: Duration,
    final_limit: usize,
    peak_in_flight: usize,
    commits: u64,
}

async fn parallel(options: &Options) -> Result<ParallelRun, String> {
    let writes = Arc::new(AtomicU64::new(0));
    let config = ConsumerConfig {
        concurrency: ConcurrencyConfig {
            min: 1,
            max: 1_024,
            initial: 16,
            ..ConcurrencyConfig::default()
        },
        ..ConsumerConfig::default()
    };
    let store = SimulatedStore {
        latency: options.latency,
        writes: Arc::clone(&writes),
    };
    let consumer =
        ParallelConsumer::new(config, store, NoRetries).map_err(|error| error.to_string())?;
    let partition = TopicPartition::new("bench", 0);
    consumer
        .assign(partition.clone(), 0)
        .map_err(|error| error.to_string())?;
    let source = events(options.events, options.keys);
    let total = options.events as i64;

    let started = Instant::now();
    // The driver commits periodically, as a Kafka driver would, and samples in-flight work.
    let committer = {
        let consumer = consumer.clone();
        let partition = partition.clone();
        tokio::spawn(async move {
            let mut commits = 0u64;
            let mut peak = 0usize;
            let mut last = 0i64;
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while last < total {
                tick.tick().await;
                peak = peak.max(consumer.in_flight());
                if let Some(position) = consumer.committable(&partition) {
                    if position > last {
                        last = position;
                        commits += 1;
                    }
                }
            }
            (commits, peak)
        })
    };
    let mut source = source.into_iter().peekable();
    while source.peek().is_some() {
        // One fetch worth of records per submit, as a Kafka poll returns them.
        let batch: Vec<_> = source.by_ref().take(500).collect();
        let state = consumer
            .submit(&partition, batch)
            .map_err(|error| error.to_string())?;
        if state == BufferState::Full {
            consumer
                .wait_for_room(&partition)
                .await
                .map_err(|error| error.to_string())?;
        }
    }
    let committed = consumer
        .wait_drained(&partition)
        .await
        .map_err(|error| error.to_string())?;
    let elapsed = started.elapsed();
    let (commits, peak_in_flight) = committer.await.map_err(|error| error.to_string())?;
    if committed != total || writes.load(Ordering::Relaxed) != options.events {
        return Err(format!(
            "parallel run incomplete: committed {committed}, wrote {}",
            writes.load(Ordering::Relaxed)
        ));
    }
    Ok(ParallelRun {
        elapsed,
        final_limit: consumer.concurrency_limit(),
        peak_in_flight,
        commits,
    })
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}

#[tokio::main]
async fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("consumer_bench: {message}");
            std::process::exit(2);
        }
    };
    println!(
        "consumer_bench: 1 partition, {} keys, {} ms simulated latency per event",
        options.keys,
        options.latency.as_millis()
    );
    let sequential_elapsed = sequential(&options).await;
    let sequential_rate = rate(options.sequential_events, sequential_elapsed);
    println!(
        "sequential consume-process-commit: {:>6} events in {:>7.2} s = {:>9.0} events/s",
        options.sequential_events,
        sequential_elapsed.as_secs_f64(),
        sequential_rate
    );
    let run = match parallel(&options).await {
        Ok(run) => run,
        Err(message) => {
            eprintln!("consumer_bench: {message}");
            std::process::exit(1);
        }
    };
    let parallel_rate = rate(options.events, run.elapsed);
    println!(
        "parallel consumer:                 {:>6} events in {:>7.2} s = {:>9.0} events/s \
         (final concurrency limit {}, peak in flight {}, {} commits)",
        options.events,
        run.elapsed.as_secs_f64(),
        parallel_rate,
        run.final_limit,
        run.peak_in_flight,
        run.commits
    );
    println!(
        "ratio: {:.1}x (target >= 20x)",
        parallel_rate / sequential_rate
    );
}
