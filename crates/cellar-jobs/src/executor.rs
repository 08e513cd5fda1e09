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
use cellar_spec::limits::EventTimeBounds;
use cellar_spec::{FeatureRepo, IngestionSource};
use chrono::Utc;
use futures::StreamExt as _;

use crate::alert::Alerter;
use crate::error::{JobError, Result};
use crate::kafka::{ShardTask, TaskPublisher};

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
    /// Rows with an event time outside are rejected.
    pub event_times: EventTimeBounds,
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
            event_times: EventTimeBounds::default(),
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
    /// Who runs the shards of the jobs this executor submits.
    runner: Runner,
    /// Jobs this process is running now, so a job is never run twice by one process.
    running: Arc<Mutex<HashSet<i64>>>,
}

/// Where a job's shards run.
#[derive(Clone)]
enum Runner {
    /// On this process's pool.
    Local,
    /// On `cellar worker`s, fed through a Kafka topic.
    Kafka(TaskPublisher),
}

const LOCAL: &str = "local";
const KAFKA: &str = "kafka";

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
            runner: Runner::Local,
            running: Arc::default(),
        }
    }

    /// The same executor, running the shards of the jobs it submits on `cellar worker`s.
    pub fn with_kafka_runner(mut self, tasks: TaskPublisher) -> Executor {
        self.runner = Runner::Kafka(tasks);
        self
    }

    /// The runner of the jobs this executor submits: `local` or `kafka`.
    pub fn runner(&self) -> &'static str {
        match self.runner {
            Runner::Local => LOCAL,
            Runner::Kafka(_) => KAFKA,
        }
    }

    /// This process's name in the shards it runs.
    pub fn worker(&self) -> &str {
        &self.settings.worker
    }

    /// Shards this process runs at once.
    pub fn shard_workers(&self) -> usize {
        self.settings.shard_workers.max(1)
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
                runner: self.runner().to_owned(),
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
        match &self.runner {
            Runner::Kafka(tasks) if job.runner == KAFKA => self.coordinate(id, tasks).await,
            _ => self.run_here(job).await,
        }
    }

    /// Runs a planned job's shards in this process.
    async fn run_here(&self, job: Job) -> Result<Job> {
        let id = job.id;
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
            let stale_before = self.stale_before();
            let takeable: Vec<ShardRun> = shards
                .iter()
                .filter(|s| {
                    s.state == JobState::Runnable
                        || (s.state == JobState::Running && s.updated_at < stale_before)
                })
                .cloned()
                .collect();
            if takeable.is_empty() {
                if let Some(done) = self.conclude(&job, &shards).await? {
                    return Ok(done);
                }
                // Shards run elsewhere (another process holds their lease): wait for them.
                tokio::time::sleep(self.settings.heartbeat).await;
                continue;
            }
            // A retry round waits its backoff, doubled per attempt already made.
            let attempts = takeable.iter().map(|s| s.attempts).max().unwrap_or(0);
            if attempts > 0 {
                tokio::time::sleep(self.backoff(attempts)).await;
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

    /// Coordinates a job run by `cellar worker`s: publishes a task per shard, and again for
    /// each shard back to `runnable` (after its backoff) or whose worker stopped beating
    /// (after the lease), until the job ends. A task published twice is harmless: the claim
    /// skips a shard that is finished or alive elsewhere.
    async fn coordinate(&self, id: i64, tasks: &TaskPublisher) -> Result<Job> {
        // (shard, attempts) already published: a shard is published once per attempt.
        let mut published: HashSet<(i64, i64)> = HashSet::new();
        loop {
            let job = self.job(id).await?;
            if job.state.is_finished() {
                return Ok(job);
            }
            let shards = self.registry.shards(id).await?;
            if let Some(done) = self.conclude(&job, &shards).await? {
                return Ok(done);
            }
            let now = Utc::now();
            let stale_before = self.stale_before();
            let due: Vec<ShardTask> = shards
                .iter()
                .filter(|s| !published.contains(&(s.index, s.attempts)))
                .filter(|s| match s.state {
                    JobState::Runnable => {
                        s.attempts == 0
                            || s.updated_at
                                + chrono::Duration::from_std(self.backoff(s.attempts))
                                    .unwrap_or_default()
                                <= now
                    }
                    JobState::Running => s.updated_at < stale_before,
                    _ => false,
                })
                .map(|s| ShardTask {
                    job_id: id,
                    index: s.index,
                })
                .collect();
            if !due.is_empty() {
                tasks.publish(&due).await?;
                tracing::info!(job = id, tasks = due.len(), "published shard tasks");
                for s in &shards {
                    if due.iter().any(|t| t.index == s.index) {
                        published.insert((s.index, s.attempts));
                    }
                }
            }
            tokio::time::sleep(self.settings.heartbeat).await;
        }
    }

    /// Ends the job if its shards are all done: succeeded when every one is (moving a
    /// scheduled job's watermark), failed when one failed and none can still run. `None`
    /// while shards are runnable or running.
    async fn conclude(&self, job: &Job, shards: &[ShardRun]) -> Result<Option<Job>> {
        if shards.iter().all(|s| s.state == JobState::Succeeded) {
            let done = self
                .registry
                .finish_job(job.id, JobState::Succeeded, None)
                .await?;
            tracing::info!(job = job.id, ingestion = %done.ingestion, rows = done.rows_written, "batch job succeeded");
            if let (JobKind::Scheduled, Some(to)) = (done.kind, done.period_to_ms) {
                crate::schedule::advance_watermark(&self.registry, &done.ingestion, to).await?;
            }
            return Ok(Some(done));
        }
        let pending = shards
            .iter()
            .any(|s| matches!(s.state, JobState::Runnable | JobState::Running));
        if pending {
            return Ok(None);
        }
        match shards.iter().find(|s| s.state == JobState::Failed) {
            Some(failed) => {
                let reason = format!(
                    "shard {} failed after {} attempt(s): {}",
                    failed.index,
                    failed.attempts,
                    failed.error.as_deref().unwrap_or("no error recorded")
                );
                self.fail(job, &reason).await.map(Some)
            }
            // Cancelled shards: the job is being cancelled.
            None => Ok(None),
        }
    }

    /// Runs one shard task taken from the topic: the `cellar worker` side of the `kafka`
    /// runner. A task of a finished job, or of a shard finished or alive elsewhere, is
    /// skipped.
    pub async fn run_task(&self, job_id: i64, index: i64) -> Result<()> {
        let Some(job) = self.registry.job(job_id).await? else {
            tracing::warn!(job = job_id, "a task of a job not in the registry: skipped");
            return Ok(());
        };
        if job.state.is_finished() {
            return Ok(());
        }
        match self.batch_job(&job).await {
            Ok(batch) => self.run_shard(&Arc::new(batch), job_id, index).await,
            Err(e) => {
                // The ingestion cannot run any more (changed or removed since planning).
                self.registry
                    .finish_shard(job_id, index, Err(e.to_string()), false)
                    .await?;
                Ok(())
            }
        }
    }

    fn stale_before(&self) -> chrono::DateTime<Utc> {
        Utc::now()
            - chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX)
    }

    /// Wait before the attempt after `attempts` failed ones.
    fn backoff(&self, attempts: i64) -> Duration {
        self.settings
            .retry_backoff
            .saturating_mul(1 << (attempts - 1).clamp(0, 10) as u32)
    }

    /// Claims and runs one shard, writing its heartbeat, and records how it ended.
    async fn run_shard(&self, batch: &Arc<BatchJob>, job_id: i64, index: i64) -> Result<()> {
        let stale_before = self.stale_before();
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
        let mut batch =
            BatchJob::from_repo(&repo, &job.ingestion, job.submitted_at.timestamp_millis())?
                .with_period(Period {
                    from_ms: job.period_from_ms,
                    to_ms: job.period_to_ms,
                });
        batch.options.event_times = self.settings.event_times;
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

    /// Runs job `id` here in the background (a submitted or retried job); a run that stops
    /// is logged, and the job is taken over by whichever executor looks at it next.
    pub fn spawn_run(&self, id: i64) {
        let executor = self.clone();
        tokio::spawn(async move {
            if let Err(e) = executor.run(id).await {
                tracing::warn!(job = id, error = %e, "batch job run stopped");
            }
        });
    }

    /// Makes failed or cancelled job `id` runnable again (its failed and cancelled shards get
    /// new attempts) and runs it here.
    pub async fn retry(&self, id: i64) -> Result<Job, cellar_registry::RegistryError> {
        let job = self.registry.retry_job(id).await?;
        self.spawn_run(id);
        Ok(job)
    }

    /// The repo the registry holds now.
    pub async fn current_repo(&self) -> Result<FeatureRepo> {
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
                    // A job of the other runner is left to a process that has it.
                    let runner = self.runner();
                    jobs.retain(|j| j.runner == runner);
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
        None => Err(JobError::NotFound(format!(
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
