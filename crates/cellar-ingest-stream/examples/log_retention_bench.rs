//! Disk usage of the embedded durable log while events flow through it, with and without
//! retention.
//!
//! ```text
//! cargo run --release -p cellar-ingest-stream --example log_retention_bench [events] [keep_secs] [dir] [runs]
//! ```
//!
//! Two runs of the same flow, each on a fresh directory (under `dir`, or a temp dir): a
//! producer appends `events` (default 3,000,000) keyed JSON events of about 200 bytes to a
//! topic of 8 partitions in batches of 1,000, while a consumer reads every partition behind
//! it and commits after each read, as the pipeline does; the producer waits while the
//! consumer is more than 100,000 events behind. The first run also enforces
//! retention the way `cellar serve` does for `ingest.log_retention_secs = keep_secs`
//! (default 1): every `keep_secs` (at least 1 s, at most 60 s), remove what the consumer
//! committed and is older than `keep_secs`. The second run keeps everything: the baseline.
//! `runs` picks them: `both` (the default), `retained` or `kept`.
//!
//! Every 250,000 events each run prints the events appended so far, the records the log
//! holds (end minus start offset, over the partitions) and the bytes of its directory.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cellar_ingest_stream::log::{EventLog, LogError, LogRecord};

const TOPIC: &str = "events";
const GROUP: &str = "cellar";
const PARTITIONS: u32 = 8;
const BATCH: usize = 1_000;
const REPORT_EVERY: usize = 250_000;
/// Events appended but not yet committed past which the producer waits for the consumer, as
/// a source paced by its consumers would: the log then holds what retention keeps, not a
/// backlog that grows with the run.
const MAX_LAG: i64 = 100_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A click event as a feature pipeline receives it: about 200 bytes of JSON.
fn events(first: usize, count: usize) -> Vec<LogRecord> {
    let timestamp_ms = now_ms();
    (first..first + count)
        .map(|i| {
            let user = format!("user-{:06}", i % 100_000);
            LogRecord {
                payload: Bytes::from(format!(
                    "{{\"event_id\":\"ev-{i:010}\",\"user_id\":\"{user}\",\"article_id\":\"article-{:05}\",\
                     \"kind\":\"click\",\"ts\":{timestamp_ms},\"dwell_ms\":{},\"device\":\"mobile\",\
                     \"country\":\"DE\",\"referrer\":\"https://news.example.com/front\"}}",
                    i % 50_000,
                    i % 9_973
                )),
                key: Some(Bytes::from(user)),
                headers: Vec::new(),
                timestamp_ms,
            }
        })
        .collect()
}

/// The bytes of the files under `dir`: all of them, and the journals' (`*.jnl`).
fn disk_bytes(dir: &Path) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => disk_bytes(&entry.path()),
            Ok(meta) if entry.path().extension().is_some_and(|e| e == "jnl") => {
                (meta.len(), meta.len())
            }
            Ok(meta) => (meta.len(), 0),
            Err(_) => (0, 0),
        })
        .fold((0, 0), |(all, journals), (a, j)| (all + a, journals + j))
}

fn held(log: &EventLog) -> Result<i64, LogError> {
    (0..PARTITIONS).try_fold(0, |sum, p| {
        Ok(sum + log.end_offset(TOPIC, p)? - log.start_offset(TOPIC, p)?)
    })
}

/// Events appended and not yet committed by the consumer.
fn lag(log: &EventLog) -> Result<i64, LogError> {
    (0..PARTITIONS).try_fold(0, |sum, p| {
        let committed = log.committed(GROUP, TOPIC, p)?.unwrap_or(0);
        Ok(sum + log.end_offset(TOPIC, p)? - committed)
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Reads every partition from the group's position and commits what it read, until `done`
/// is set and it has caught up. The partitions' commits go together, so the writer folds
/// them into one fsync and the consumer keeps pace with the producer.
async fn consume(log: EventLog, done: Arc<AtomicBool>) -> Result<u64, LogError> {
    let mut consumed = 0;
    loop {
        let finished = done.load(Ordering::Acquire);
        let mut commits = Vec::new();
        for p in 0..PARTITIONS {
            let from = log.committed(GROUP, TOPIC, p)?.unwrap_or(0);
            let entries = log.read(TOPIC, p, from, BATCH)?;
            let Some(last) = entries.last() else { continue };
            consumed += entries.len() as u64;
            let next = last.offset + 1;
            let log = log.clone();
            commits.push(async move { log.commit(GROUP, TOPIC, p, next).await });
        }
        if commits.is_empty() {
            if finished {
                return Ok(consumed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        } else {
            futures::future::try_join_all(commits).await?;
        }
    }
}

/// What `cellar serve` runs for `ingest.log_retention_secs`.
async fn enforce_retention(log: EventLog, keep: Duration) {
    let every = keep.clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let consumers = [(GROUP.to_owned(), TOPIC.to_owned())];
    loop {
        tick.tick().await;
        if let Err(e) = log.enforce_retention(keep, now_ms(), &consumers, &[]).await {
            eprintln!("retention failed: {e}");
        }
    }
}

async fn run(
    dir: &Path,
    total: usize,
    retention: Option<Duration>,
) -> Result<(), Box<dyn std::error::Error>> {
    let log = EventLog::open(dir)?;
    log.create_topic(TOPIC, PARTITIONS).await?;
    match retention {
        Some(keep) => println!("\nwith retention of {} s:", keep.as_secs()),
        None => println!("\nwithout retention:"),
    }
    println!(
        "{:>10} {:>10} {:>10} {:>12} {:>8}",
        "events", "held", "disk MiB", "journal MiB", "seconds"
    );
    let done = Arc::new(AtomicBool::new(false));
    let consumer = tokio::spawn(consume(log.clone(), Arc::clone(&done)));
    let retainer = retention.map(|keep| tokio::spawn(enforce_retention(log.clone(), keep)));
    let started = Instant::now();
    let mut peak = 0;
    let mut report = |label: String| -> Result<(), LogError> {
        let (bytes, journals) = disk_bytes(dir);
        peak = peak.max(bytes);
        println!(
            "{label:>10} {:>10} {:>10.1} {:>12.1} {:>8.1}",
            held(&log)?,
            mib(bytes),
            mib(journals),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    };
    let mut appended = 0;
    while appended < total {
        while lag(&log)? > MAX_LAG {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let count = BATCH.min(total - appended);
        log.append(TOPIC, &events(appended, count)).await?;
        appended += count;
        if appended % REPORT_EVERY == 0 || appended == total {
            report(appended.to_string())?;
        }
    }
    done.store(true, Ordering::Release);
    let consumed = consumer.await??;
    // One retention pass at a time, as in `cellar serve`.
    if let Some(task) = retainer {
        task.abort();
        let _ = task.await;
    }
    if let Some(keep) = retention {
        // One more pass once the last events are old enough, as the next tick would do.
        tokio::time::sleep(keep.max(Duration::from_secs(1))).await;
        log.enforce_retention(keep, now_ms(), &[(GROUP.to_owned(), TOPIC.to_owned())], &[])
            .await?;
        report("drained".to_owned())?;
    }
    println!(
        "consumed {consumed}, peak {:.1} MiB",
        mib(peak.max(disk_bytes(dir).0))
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(3_000_000);
    let keep = Duration::from_secs(args.next().map(|a| a.parse()).transpose()?.unwrap_or(1));
    let temp = tempfile::tempdir()?;
    let root = args
        .next()
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    let sample = events(0, 1);
    println!(
        "{total} events of {} bytes, {PARTITIONS} partitions, under {}",
        sample[0].payload.len(),
        root.display()
    );
    let runs = args.next().unwrap_or_else(|| "both".to_owned());
    if runs != "kept" {
        run(&root.join("retained"), total, Some(keep)).await?;
    }
    if runs != "retained" {
        run(&root.join("kept"), total, None).await?;
    }
    Ok(())
}
