//! Append and read throughput of the embedded durable log, every append fsync'd.
//!
//! ```text
//! cargo run --release -p cellar-ingest-stream --example log_bench [records] [dir]
//! ```
//!
//! Three runs on a fresh directory (a temp dir unless `dir` is given; put it on the disk the
//! log will use in production):
//! 1. one producer appending `records` small keyed records (about 100 bytes of payload) in
//!    batches of 1,000, one fsync per batch;
//! 2. 64 concurrent producers appending batches of 10, where the writer's group commit folds
//!    whatever is queued into one fsync;
//! 3. one consumer reading every partition back in batches of 1,000.

use std::time::Instant;

use bytes::Bytes;
use cellar_ingest_stream::log::{EventLog, LogRecord};

const PARTITIONS: u32 = 8;
const BATCH: usize = 1_000;
const PRODUCERS: usize = 64;
const SMALL_BATCH: usize = 10;

fn records(first: usize, count: usize) -> Vec<LogRecord> {
    (first..first + count)
        .map(|i| LogRecord {
            key: Some(Bytes::from(format!("user-{}", i % 10_000))),
            payload: Bytes::from(format!(
                "{{\"user_id\":\"user-{}\",\"article_id\":\"a-{i}\",\"ts\":1700000000000,\"kind\":\"click\"}}",
                i % 10_000
            )),
            headers: Vec::new(),
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

fn report(what: &str, records: usize, bytes: usize, seconds: f64) {
    println!(
        "{what:<44} {records:>9} records in {seconds:>6.2} s: {:>9.0} records/s, {:>6.1} MB/s",
        records as f64 / seconds,
        bytes as f64 / seconds / 1e6
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let temp = tempfile::tempdir()?;
    let dir = args
        .next()
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    let log = EventLog::open(&dir)?;
    println!("embedded log at {}, {PARTITIONS} partitions", dir.display());

    log.create_topic("sequential", PARTITIONS).await?;
    let payload_bytes: usize = records(0, BATCH).iter().map(|r| r.payload.len()).sum();
    let started = Instant::now();
    let mut written = 0;
    while written < total {
        let count = BATCH.min(total - written);
        log.append("sequential", &records(written, count)).await?;
        written += count;
    }
    report(
        &format!("1 producer, batches of {BATCH}"),
        total,
        payload_bytes / BATCH * total,
        started.elapsed().as_secs_f64(),
    );

    log.create_topic("concurrent", PARTITIONS).await?;
    let per_producer = (total / 10 / PRODUCERS).max(SMALL_BATCH);
    let started = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut sent = 0;
                while sent < per_producer {
                    log.append("concurrent", &records(p * per_producer + sent, SMALL_BATCH))
                        .await?;
                    sent += SMALL_BATCH;
                }
                Ok::<usize, cellar_ingest_stream::log::LogError>(sent)
            })
        })
        .collect();
    let mut concurrent = 0;
    for producer in producers {
        concurrent += producer.await??;
    }
    report(
        &format!("{PRODUCERS} producers, batches of {SMALL_BATCH}"),
        concurrent,
        payload_bytes / BATCH * concurrent,
        started.elapsed().as_secs_f64(),
    );

    let started = Instant::now();
    let mut read = 0;
    let mut bytes = 0;
    for partition in 0..PARTITIONS {
        let mut offset = log.start_offset("sequential", partition)?;
        loop {
            let entries = log.read("sequential", partition, offset, BATCH)?;
            let Some(last) = entries.last() else { break };
            offset = last.offset + 1;
            read += entries.len();
            bytes += entries.iter().map(|e| e.payload.len()).sum::<usize>();
        }
    }
    report(
        &format!("1 consumer, batches of {BATCH}"),
        read,
        bytes,
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}
