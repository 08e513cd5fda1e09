//! The local runner: a job's shards on a bounded pool of workers in this process.
//!
//! Each worker is a Tokio task that takes the next shard not yet started, runs it, and takes
//! another, so at most `workers` shards run at once and a slow shard never holds up the others.
//! A failed shard does not stop the job: the others run to the end, and the report names each
//! failure so that only those shards are run again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::BatchError;
use crate::job::BatchJob;
use crate::plan::Plan;
use crate::rejects::Rejects;
use crate::shard::{run_shard_observed, BatchDone, ShardReport};
use crate::sink::RecordSink;

/// A job's progress, reported after every batch written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Rows read so far, rejected ones included.
    pub rows_done: u64,
    /// Rows in the plan: exact for Parquet, estimated for CSV, 0 for PostgreSQL (see
    /// `rows_total_exact`), so `rows_done` may end above or below it.
    pub rows_total: u64,
    pub rows_total_exact: bool,
    pub rows_rejected: u64,
    /// Shards finished, failed ones included.
    pub shards_done: u32,
    pub shards_total: u32,
}

/// How one shard ended.
#[derive(Debug)]
pub struct ShardOutcome {
    pub shard: u32,
    pub result: Result<ShardReport, BatchError>,
}

/// What a job did: each shard's outcome, in shard order, and the totals of those that
/// finished.
#[derive(Debug)]
pub struct JobReport {
    pub ingestion: String,
    pub shards: Vec<ShardOutcome>,
    pub rows_read: u64,
    pub rows_written: u64,
    pub rows_stale: u64,
    pub rows_rejected: u64,
    pub rows_skipped: u64,
    pub elapsed: Duration,
}

impl JobReport {
    /// Whether every shard succeeded.
    pub fn succeeded(&self) -> bool {
        self.shards.iter().all(|s| s.result.is_ok())
    }

    /// The shards that failed, with why.
    pub fn failures(&self) -> impl Iterator<Item = (u32, &BatchError)> {
        self.shards
            .iter()
            .filter_map(|s| s.result.as_ref().err().map(|e| (s.shard, e)))
    }
}

/// Runs shards on a bounded pool of Tokio tasks.
#[derive(Debug, Clone, Copy)]
pub struct LocalRunner {
    workers: usize,
}

impl Default for LocalRunner {
    /// One worker per core: a shard keeps about one core busy reading and mapping while its
    /// writes wait on the store.
    fn default() -> Self {
        LocalRunner::new(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        )
    }
}

impl LocalRunner {
    /// A runner with at most `workers` shards running at once (at least one).
    pub fn new(workers: usize) -> LocalRunner {
        LocalRunner {
            workers: workers.max(1),
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Runs every shard of `plan` and waits for all of them. `progress` is called after each
    /// batch written and each shard finished, from the worker tasks.
    pub async fn run(
        &self,
        job: Arc<BatchJob>,
        plan: &Plan,
        sink: Arc<dyn RecordSink>,
        rejects: Arc<dyn Rejects>,
        progress: Arc<dyn Fn(Progress) + Send + Sync>,
    ) -> JobReport {
        let started = Instant::now();
        let shards = Arc::new(plan.shards.clone());
        let state = Arc::new(Tally {
            next: AtomicUsize::new(0),
            rows_done: AtomicU64::new(0),
            rows_rejected: AtomicU64::new(0),
            shards_done: AtomicUsize::new(0),
            outcomes: Mutex::new(Vec::with_capacity(shards.len())),
            rows_total: plan.rows,
            rows_total_exact: plan.rows_exact,
            shards_total: shards.len() as u32,
        });
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.workers.min(shards.len()) {
            let (job, shards, sink, rejects, progress, state) = (
                Arc::clone(&job),
                Arc::clone(&shards),
                Arc::clone(&sink),
                Arc::clone(&rejects),
                Arc::clone(&progress),
                Arc::clone(&state),
            );
            workers.spawn(async move {
                loop {
                    let i = state.next.fetch_add(1, Ordering::Relaxed);
                    let Some(shard) = shards.get(i) else {
                        break;
                    };
                    let on_batch = |done: BatchDone| {
                        state.rows_done.fetch_add(done.rows, Ordering::Relaxed);
                        state.rows_rejected.fetch_add(done.rejected, Ordering::Relaxed);
                        progress(state.progress());
                    };
                    let result = run_shard_observed(shard, &job, &*sink, &rejects, &on_batch).await;
                    if let Err(e) = &result {
                        tracing::warn!(ingestion = %job.ingestion, shard = shard.index, error = %e, "batch shard failed");
                    }
                    state.shards_done.fetch_add(1, Ordering::Relaxed);
                    state
                        .outcomes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(ShardOutcome {
                            shard: shard.index,
                            result,
                        });
                    progress(state.progress());
                }
            });
        }
        while let Some(joined) = workers.join_next().await {
            if let Err(e) = joined {
                // A worker that panicked leaves its shard without an outcome: it is reported
                // below as failed.
                tracing::error!(ingestion = %job.ingestion, error = %e, "batch worker died");
            }
        }
        let mut outcomes =
            std::mem::take(&mut *state.outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        for shard in shards.iter() {
            if !outcomes.iter().any(|o| o.shard == shard.index) {
                outcomes.push(ShardOutcome {
                    shard: shard.index,
                    result: Err(BatchError::Internal(
                        "the worker running the shard died".into(),
                    )),
                });
            }
        }
        outcomes.sort_by_key(|o| o.shard);
        let mut report = JobReport {
            ingestion: job.ingestion.clone(),
            shards: Vec::new(),
            rows_read: 0,
            rows_written: 0,
            rows_stale: 0,
            rows_rejected: 0,
            rows_skipped: 0,
            elapsed: Duration::ZERO,
        };
        for o in &outcomes {
            if let Ok(r) = &o.result {
                report.rows_read += r.rows_read;
                report.rows_written += r.rows_written;
                report.rows_stale += r.rows_stale;
                report.rows_rejected += r.rows_rejected;
                report.rows_skipped += r.rows_skipped;
            }
        }
        report.shards = outcomes;
        report.elapsed = started.elapsed();
        report
    }
}

/// Shared state of one run.
struct Tally {
    /// Index of the next shard to start.
    next: AtomicUsize,
    rows_done: AtomicU64,
    rows_rejected: AtomicU64,
    shards_done: AtomicUsize,
    outcomes: Mutex<Vec<ShardOutcome>>,
    rows_total: u64,
    rows_total_exact: bool,
    shards_total: u32,
}

impl Tally {
    fn progress(&self) -> Progress {
        Progress {
            rows_done: self.rows_done.load(Ordering::Relaxed),
            rows_total: self.rows_total,
            rows_total_exact: self.rows_total_exact,
            rows_rejected: self.rows_rejected.load(Ordering::Relaxed),
            shards_done: self.shards_done.load(Ordering::Relaxed) as u32,
            shards_total: self.shards_total,
        }
    }
}
