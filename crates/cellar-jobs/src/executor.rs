//! The executor: submits, plans and runs batch jobs, keeping their state in the registry.
//!
//! **Shards are leased by heartbeat.** A shard being run has its progress written every
//! [`ExecutorSettings::heartbeat`]; a `running` shard whose last write is older than
//! [`ExecutorSettings::lease`] belongs to a process that died, and any executor may claim it
//! again. Redoing a shard is safe (see `cellar_ingest_batch::shard`), so a shard run twice,
//! even at once, leaves the store as one run does.
//!
//! **Retries.** A shard that fails with an error a retry may cure (a file or store error)
//! goes back to `runnable` until it has used the job's attempts, and is run again after a
//! backoff; one that cannot succeed unchanged (a missing column, too many rejected rows)
//! fails at once. The job fails when any shard does, naming the shard and its last error.
//!
//! **Rejects** go to one JSON-lines file per shard under the rejects directory, rewritten by
//! each attempt, so a redone shard lists each rejected row once.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellar_ingest_batch::{
    plan, run_shard_observed, BatchDone, BatchError, BatchJob, Period, RecordSink, RejectFile,
    Rejects, Shard,
};
use cellar_registry::{
    Job, JobFilter, JobKind, JobState, NewJob, PlannedShard, Registry, ShardResult, ShardRun,
};
use cellar_spec::{FeatureRepo, IngestionSource};
use chrono::Utc;
use futures::StreamExt as _;

use crate::alert::Alerter;
use crate::error::{JobError, Result};

/// Attempts a shard gets when the request does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// What to run: an ingestion over a period of event time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRequest {
    pub ingestion: String,
    pub kind: JobKind,
    pub period: Period,
    pub max_attempts: u32,
}

impl JobRequest {
    /// A one-time load of `period` of `ingestion`.
    pub fn backfill(ingestion: &str, period: Period) -> JobRequest {
        JobRequest {
            ingestion: ingestion.to_owned(),
            kind: JobKind::Backfill,
            period,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// How an executor runs shards.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// Shards run at once in this process.
    pub shard_workers: usize,
    /// How often a running shard writes its progress (its heartbeat).
    pub heartbeat: Duration,
    /// A running shard silent for this long is taken over.
    pub lease: Duration,
    /// Wait before a failed shard's next attempt, doubled per attempt.
    pub retry_backoff: Duration,
    /// Where reject files go: `<dir>/<ingestion>/job-<id>/shard-<n>.jsonl`.
    pub rejects_dir: PathBuf,
    /// This process's name in the shards it runs.
    pub worker: String,
}

impl ExecutorSettings {
    pub fn new(rejects_dir: impl Into<PathBuf>) -> ExecutorSettings {
        ExecutorSettings {
            shard_workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            heartbeat: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            retry_backoff: Duration::from_secs(1),
            rejects_dir: rejects_dir.into(),
            worker: default_worker_name(),
        }
    }
}

/// `host-pid`: tells apart the processes that ran a job's shards.
pub fn default_worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Submits, plans and runs jobs with a local pool of shard workers.
#[derive(Clone)]
pub struct Executor {
    registry: Registry,
    sink: Arc<dyn RecordSink>,
    settings: Arc<ExecutorSettings>,
    alerter: Option<Alerter>,
    /// Jobs this process is running now, so a job is never run twice by one process.
    running: Arc<Mutex<HashSet<i64>>>,
}

impl Executor {
    pub fn new(
        registry: Registry,
        sink: Arc<dyn RecordSink>,
        settings: ExecutorSettings,
        alerter: Option<Alerter>,
    ) -> Executor {
        Executor {
            registry,
            sink,
            settings: Arc::new(settings),
            alerter,
            running: Arc::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Where reject files go.
    pub fn rejects_dir(&self) -> &Path {
        &self.settings.rejects_dir
    }

    /// Records a job for `request`, after checking against the current repo that it names a
    /// batch ingestion.
    pub async fn submit(&self, request: &JobRequest) -> Result<Job> {
        let repo = self.current_repo().await?;
        batch_ingestion(&repo, &request.ingestion)?;
        if let (Some(from), Some(to)) = (request.period.from_ms, request.period.to_ms) {
            if from >= to {
                return Err(JobError::Invalid(format!(
                    "the period's start ({from} ms) is not before its end ({to} ms)"
                )));
            }
        }
        if request.max_attempts == 0 {
            return Err(JobError::Invalid(
                "max_attempts must be at least 1".to_owned(),
            ));
        }
        let job = self
            .registry
            .submit_job(&NewJob {
                ingestion: request.ingestion.clone(),
                kind: request.kind,
                period_from_ms: request.period.from_ms,
                period_to_ms: request.period.to_ms,
                runner: "local".to_owned(),
                max_attempts: request.max_attempts,
            })
            .await?;
        tracing::info!(job = job.id, ingestion = %job.ingestion, "submitted batch job");
        Ok(job)
    }

    /// Runs job `id` to its end here: plans it if it is new, runs its shards, retries failed
    /// ones, and records the outcome. Returns the finished job (or the job as it is, if
    /// this process is running it already). A registry error stops the run; the job is then
    /// taken over by whichever executor looks at it next.
    pub async fn run(&self, id: i64) -> Result<Job> {
        let Some(_guard) = RunGuard::take(&self.running, id) else {
            return self.job(id).await;
        };
        let mut job = self.job(id).await?;
        if job.state == JobState::Submitted {
            job = match self.plan(&job).await {
                Ok(job) => job,
                Err(failure) => return self.fail(&job, &failure.to_string()).await,
            };
        }
        if job.state.is_finished() {
            return Ok(job);
        }
        let batch = match self.batch_job(&job).await {
            Ok(batch) => Arc::new(batch),
            Err(failure) => return self.fail(&job, &failure.to_string()).await,
        };
        loop {
            let job = self.job(id).await?;
            if job.state.is_finished() {
                return Ok(job);
            }
            let shards = self.registry.shards(id).await?;
            let stale_before = Utc::now()
                - chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX);
            let takeable: Vec<ShardRun> = shards
                .iter()
                .filter(|s| {
                    s.state == JobState::Runnable
                        || (s.state == JobState::Running && s.updated_at < stale_before)
                })
                .cloned()
                .collect();
            if takeable.is_empty() {
                if shards.iter().all(|s| s.state == JobState::Succeeded) {
                    let done = self
                        .registry
                        .finish_job(id, JobState::Succeeded, None)
                        .await?;
                    tracing::info!(job = id, ingestion = %done.ingestion, rows = done.rows_written, "batch job succeeded");
                    if let (JobKind::Scheduled, Some(to)) = (done.kind, done.period_to_ms) {
                        crate::schedule::advance_watermark(&self.registry, &done.ingestion, to)
                            .await?;
                    }
                    return Ok(done);
                }
                // Every shard that could run has: the job fails on its first failed shard.
                if !shards.iter().any(|s| s.state == JobState::Running) {
                    if let Some(failed) = shards.iter().find(|s| s.state == JobState::Failed) {
                        let reason = format!(
                            "shard {} failed after {} attempt(s): {}",
                            failed.index,
                            failed.attempts,
                            failed.error.as_deref().unwrap_or("no error recorded")
                        );
                        return self.fail(&job, &reason).await;
                    }
                }
                // Shards run elsewhere (another process holds their lease): wait for them.
                tokio::time::sleep(self.settings.heartbeat).await;
                continue;
            }
            // A retry round waits its backoff, doubled per attempt already made.
            let attempts = takeable.iter().map(|s| s.attempts).max().unwrap_or(0);
            if attempts > 0 {
                let backoff = self
                    .settings
                    .retry_backoff
                    .saturating_mul(1 << (attempts - 1).clamp(0, 10) as u32);
                tokio::time::sleep(backoff).await;
            }
            let workers = self.settings.shard_workers.max(1);
            let results: Vec<Result<()>> = futures::stream::iter(takeable)
                .map(|shard| {
                    let batch = Arc::clone(&batch);
                    let this = self.clone();
                    async move { this.run_shard(&batch, shard.job_id, shard.index).await }
                })
                .buffer_unordered(workers)
                .collect()
                .await;
            for r in results {
                r?;
            }
        }
    }

    /// Claims and runs one shard, writing its heartbeat, and records how it ended.
    async fn run_shard(&self, batch: &Arc<BatchJob>, job_id: i64, index: i64) -> Result<()> {
        let stale_before = Utc::now()
            - chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX);
        let Some(claimed) = self
            .registry
            .claim_shard(job_id, index, &self.settings.worker, Some(stale_before))
            .await?
        else {
            return Ok(());
        };
        let shard: Shard = match serde_json::from_str(&claimed.description) {
            Ok(shard) => shard,
            Err(e) => {
                let reason = format!("the shard's description is unreadable: {e}");
                self.registry
                    .finish_shard(job_id, index, Err(reason), false)
                    .await?;
                return Ok(());
            }
        };
        tracing::info!(job = job_id, shard = index, attempt = claimed.attempts, worker = %self.settings.worker, "running shard");
        let outcome = execute_shard(
            &self.registry,
            &self.sink,
            &self.settings,
            batch,
            job_id,
            &shard,
        )
        .await?;
        let (result, retryable) = match outcome {
            Ok(report) => (
                Ok(ShardResult {
                    rows_read: report.rows_read as i64,
                    rows_written: report.rows_written as i64,
                    rows_rejected: report.rows_rejected as i64,
                }),
                false,
            ),
            Err(e) => {
                tracing::warn!(job = job_id, shard = index, attempt = claimed.attempts, error = %e, "shard failed");
                (Err(e.to_string()), e.is_retryable())
            }
        };
        self.registry
            .finish_shard(job_id, index, result, retryable)
            .await?;
        Ok(())
    }

    /// Plans a submitted job and records its shards.
    async fn plan(&self, job: &Job) -> Result<Job> {
        let batch = self.batch_job(job).await?;
        let planned = tokio::task::spawn_blocking(move || plan(&batch))
            .await
            .map_err(|e| JobError::Internal(format!("planning: {e}")))??;
        let shards: Vec<PlannedShard> = planned
            .shards
            .iter()
            .map(|s| {
                Ok(PlannedShard {
                    index: i64::from(s.index),
                    description: serde_json::to_string(s)
                        .map_err(|e| JobError::Internal(format!("describing a shard: {e}")))?,
                    rows_planned: s.rows as i64,
                })
            })
            .collect::<Result<_>>()?;
        let job = self
            .registry
            .plan_job(job.id, planned.rows as i64, &shards)
            .await?;
        tracing::info!(
            job = job.id,
            shards = shards.len(),
            rows = planned.rows,
            files = planned.files,
            "planned batch job"
        );
        Ok(job)
    }

    /// The job's ingestion resolved against the current repo, with the job's period, and
    /// rows without an event time stamped with the job's submission time (the same on every
    /// attempt, so a redone shard writes what the first did).
    async fn batch_job(&self, job: &Job) -> Result<BatchJob> {
        let repo = self.current_repo().await?;
        let batch =
            BatchJob::from_repo(&repo, &job.ingestion, job.submitted_at.timestamp_millis())?
                .with_period(Period {
                    from_ms: job.period_from_ms,
                    to_ms: job.period_to_ms,
                });
        Ok(batch)
    }

    async fn fail(&self, job: &Job, reason: &str) -> Result<Job> {
        tracing::warn!(job = job.id, ingestion = %job.ingestion, reason, "batch job failed");
        let failed = self
            .registry
            .finish_job(job.id, JobState::Failed, Some(reason))
            .await?;
        // Only the executor that moved the job to failed alerts, once per failure.
        if let Some(alerter) = &self.alerter {
            if !job.state.is_finished() && failed.state == JobState::Failed {
                alerter.job_failed(&failed).await;
                self.registry.mark_alerted(failed.id).await?;
            }
        }
        Ok(failed)
    }

    async fn job(&self, id: i64) -> Result<Job> {
        self.registry
            .job(id)
            .await?
            .ok_or_else(|| JobError::Invalid(format!("there is no job {id}")))
    }

    async fn current_repo(&self) -> Result<FeatureRepo> {
        Ok(self
            .registry
            .current()
            .await?
            .ok_or_else(|| {
                JobError::Invalid("the registry is empty: run `cellar apply` first".to_owned())
            })?
            .repo)
    }

    /// Runs, one after the other, every local job not finished, until `stop` is set: jobs
    /// submitted to this process's registry by `cellar backfill`, the scheduler or the HTTP
    /// API, and jobs whose process died (once their shards' leases lapse).
    pub async fn serve(&self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        let filter = JobFilter {
            ingestion: None,
            states: vec![JobState::Submitted, JobState::Runnable, JobState::Running],
            limit: 1000,
        };
        loop {
            match self.registry.list_jobs(&filter).await {
                Ok(mut jobs) => {
                    jobs.retain(|j| j.runner == "local");
                    // Oldest first.
                    jobs.sort_by_key(|j| j.id);
                    for job in jobs {
                        if *stop.borrow() {
                            return;
                        }
                        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                        if running.contains(&job.id) {
                            continue;
                        }
                        drop(running);
                        let this = self.clone();
                        tokio::spawn(async move {
                            if let Err(e) = this.run(job.id).await {
                                tracing::warn!(job = job.id, error = %e, "batch job run stopped");
                            }
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing batch jobs failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Runs a shard with a heartbeat: its progress is written every `heartbeat`, and the run is
/// dropped (its reader stops) when the job is cancelled meanwhile. The outer result is the
/// registry's; the inner one the shard's.
async fn execute_shard(
    registry: &Registry,
    sink: &Arc<dyn RecordSink>,
    settings: &ExecutorSettings,
    batch: &Arc<BatchJob>,
    job_id: i64,
    shard: &Shard,
) -> Result<std::result::Result<cellar_ingest_batch::ShardReport, BatchError>> {
    let index = i64::from(shard.index);
    let path = reject_path(&settings.rejects_dir, &batch.ingestion, job_id, shard.index);
    let rejects: Arc<dyn Rejects> = match create_reject_file(&path) {
        Ok(file) => Arc::new(file),
        Err(e) => return Ok(Err(e)),
    };
    let rows_read = Arc::new(AtomicU64::new(0));
    let rows_rejected = Arc::new(AtomicU64::new(0));
    let on_batch = {
        let (rows_read, rows_rejected) = (Arc::clone(&rows_read), Arc::clone(&rows_rejected));
        move |done: BatchDone| {
            rows_read.fetch_add(done.rows, Ordering::Relaxed);
            rows_rejected.fetch_add(done.rejected, Ordering::Relaxed);
        }
    };
    let run = run_shard_observed(shard, batch, &**sink, &rejects, &on_batch);
    tokio::pin!(run);
    let mut beat = tokio::time::interval(settings.heartbeat);
    beat.tick().await;
    loop {
        tokio::select! {
            outcome = &mut run => return Ok(outcome),
            _ = beat.tick() => {
                registry
                    .shard_progress(
                        job_id,
                        index,
                        rows_read.load(Ordering::Relaxed) as i64,
                        0,
                        rows_rejected.load(Ordering::Relaxed) as i64,
                    )
                    .await?;
                let cancelled = registry
                    .job(job_id)
                    .await?
                    .is_none_or(|j| j.state == JobState::Cancelled);
                if cancelled {
                    tracing::info!(job = job_id, shard = index, "job cancelled: shard stopped");
                    return Ok(Err(BatchError::Internal("the job was cancelled".to_owned())));
                }
            }
        }
    }
}

/// Where a shard's rejected rows are written.
pub fn reject_path(dir: &Path, ingestion: &str, job_id: i64, shard: u32) -> PathBuf {
    dir.join(ingestion)
        .join(format!("job-{job_id}"))
        .join(format!("shard-{shard}.jsonl"))
}

fn create_reject_file(path: &Path) -> std::result::Result<RejectFile, BatchError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| BatchError::Rejects(format!("{}: {e}", dir.display())))?;
    }
    RejectFile::create(path)
}

/// Checks that `name` is a batch ingestion of `repo`.
fn batch_ingestion(repo: &FeatureRepo, name: &str) -> Result<()> {
    match repo.ingestion(name) {
        None => Err(JobError::Invalid(format!(
            "there is no ingestion `{name}` in the applied repo"
        ))),
        Some(i) if !matches!(i.source, IngestionSource::Batch(_)) => Err(JobError::Invalid(
            format!("`{name}` is a stream ingestion: only batch ingestions run as jobs"),
        )),
        Some(_) => Ok(()),
    }
}

/// Marks a job as run by this process for as long as it lives.
struct RunGuard {
    running: Arc<Mutex<HashSet<i64>>>,
    id: i64,
}

impl RunGuard {
    fn take(running: &Arc<Mutex<HashSet<i64>>>, id: i64) -> Option<RunGuard> {
        let mut set = running.lock().unwrap_or_else(|p| p.into_inner());
        set.insert(id).then(|| RunGuard {
            running: Arc::clone(running),
            id,
        })
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}
