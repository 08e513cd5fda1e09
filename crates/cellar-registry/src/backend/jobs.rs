//! The SQL of batch jobs and their shards, written once and compiled for each driver like the
//! rest of the backend.
//!
//! Every transaction that writes shards first writes their job's row (at least its
//! `updated_at_ms`). That row lock orders concurrent writers of one job on PostgreSQL, so a
//! claim racing a cancel waits instead of deadlocking, and it keeps `updated_at_ms` the time
//! of the last change to the job or any of its shards.

use cellar_spec::time::now_ms;

use crate::jobs::{
    decode_job, decode_shard, states_pattern, Job, JobFilter, JobRow, JobState, NewJob,
    PlannedShard, ShardResult, ShardRow, ShardRun,
};
use crate::RegistryError;

/// `SELECT` of jobs with the sums over their shards, followed by the given literals (which
/// must end in `GROUP BY j.id`, as the sums are per job).
macro_rules! select_jobs {
    ($($tail:literal),+) => {
        concat!(
            "SELECT j.id, j.ingestion, j.kind, j.state, j.period_from_ms, j.period_to_ms, \
             j.runner, j.max_attempts, j.submitted_at_ms, j.started_at_ms, j.finished_at_ms, \
             j.updated_at_ms, j.rows_planned, \
             CAST(COALESCE(SUM(s.rows_read), 0) AS BIGINT) AS rows_read, \
             CAST(COALESCE(SUM(s.rows_written), 0) AS BIGINT) AS rows_written, \
             CAST(COALESCE(SUM(s.rows_rejected), 0) AS BIGINT) AS rows_rejected, \
             COUNT(s.job_id) AS shards_total, \
             COUNT(CASE WHEN s.state = 'succeeded' THEN 1 END) AS shards_succeeded, \
             COUNT(CASE WHEN s.state = 'failed' THEN 1 END) AS shards_failed, \
             j.error, j.alerted_at_ms \
             FROM jobs j LEFT JOIN job_shards s ON s.job_id = j.id",
            $($tail),+
        )
    };
}

/// The columns of a [`ShardRow`], in order.
macro_rules! shard_columns {
    () => {
        "job_id, shard_index, state, attempts, description, rows_planned, rows_read, \
         rows_written, rows_rejected, worker, error, started_at_ms, finished_at_ms, updated_at_ms"
    };
}

const JOB: &str = select_jobs!(" WHERE j.id = $1 GROUP BY j.id");
// `$2` is `,state,state,` or NULL for any state (see `states_pattern`); `$3` the limit.
const LIST_JOBS: &str = select_jobs!(
    " WHERE ($1 IS NULL OR j.ingestion = $1) \
     AND ($2 IS NULL OR $2 LIKE ('%,' || j.state || ',%')) \
     GROUP BY j.id ORDER BY j.id DESC LIMIT $3"
);
// A NULL bound matches only a NULL bound.
const LAST_JOB_FOR_PERIOD: &str = select_jobs!(
    " WHERE j.ingestion = $1 \
     AND (j.period_from_ms = $2 OR (j.period_from_ms IS NULL AND $2 IS NULL)) \
     AND (j.period_to_ms = $3 OR (j.period_to_ms IS NULL AND $3 IS NULL)) \
     GROUP BY j.id ORDER BY j.id DESC LIMIT 1"
);
const INSERT_JOB: &str = "INSERT INTO jobs \
     (ingestion, kind, state, period_from_ms, period_to_ms, runner, max_attempts, \
      submitted_at_ms, updated_at_ms) \
     VALUES ($1, $2, 'submitted', $3, $4, $5, $6, $7, $7) RETURNING id";
const PLAN_JOB: &str = "UPDATE jobs SET state = 'runnable', rows_planned = $2, updated_at_ms = $3 \
     WHERE id = $1 AND state = 'submitted'";
const INSERT_SHARD: &str = "INSERT INTO job_shards \
     (job_id, shard_index, state, attempts, description, rows_planned, rows_read, rows_written, \
      rows_rejected, updated_at_ms) \
     VALUES ($1, $2, 'runnable', 0, $3, $4, 0, 0, 0, $5)";
const SHARDS: &str = concat!(
    "SELECT ",
    shard_columns!(),
    " FROM job_shards WHERE job_id = $1 ORDER BY shard_index"
);
const SHARD: &str = concat!(
    "SELECT ",
    shard_columns!(),
    " FROM job_shards WHERE job_id = $1 AND shard_index = $2"
);
/// Locks the job's row for the rest of the transaction (see the module comment).
const TOUCH_JOB: &str =
    "UPDATE jobs SET updated_at_ms = $2 WHERE id = $1 RETURNING state, max_attempts";
const START_JOB: &str = "UPDATE jobs SET state = 'running', \
     started_at_ms = COALESCE(started_at_ms, $2) WHERE id = $1";
// Counters restart with each attempt, as a shard run starts over.
const CLAIM_SHARD: &str = concat!(
    "UPDATE job_shards SET state = 'running', attempts = attempts + 1, worker = $3, \
     started_at_ms = $4, finished_at_ms = NULL, rows_read = 0, rows_written = 0, \
     rows_rejected = 0, updated_at_ms = $4 \
     WHERE job_id = $1 AND shard_index = $2 \
     AND (state = 'runnable' OR (state = 'running' AND updated_at_ms < $5)) RETURNING ",
    shard_columns!()
);
// A running shard silent since before `$5` on its last allowed attempt (`$6`) fails instead
// of being claimed again: a shard that brings its worker down must not be retried forever.
const SHARD_LOST: &str = "UPDATE job_shards SET state = 'failed', error = $3, \
     finished_at_ms = $4, updated_at_ms = $4 \
     WHERE job_id = $1 AND shard_index = $2 AND state = 'running' AND updated_at_ms < $5 \
     AND attempts >= $6";
/// The error of a shard failed by [`SHARD_LOST`].
pub(crate) const SHARD_LOST_ERROR: &str = "its worker stopped sending heartbeats on the last \
     allowed attempt: the shard may be what stops its workers (memory, a crash); see their logs";
const SHARD_PROGRESS: &str = "UPDATE job_shards \
     SET rows_read = $3, rows_written = $4, rows_rejected = $5, updated_at_ms = $6 \
     WHERE job_id = $1 AND shard_index = $2 AND state = 'running'";
const SHARD_SUCCEEDED: &str = concat!(
    "UPDATE job_shards SET state = 'succeeded', rows_read = $3, rows_written = $4, \
     rows_rejected = $5, error = NULL, finished_at_ms = $6, updated_at_ms = $6 \
     WHERE job_id = $1 AND shard_index = $2 AND state IN ('runnable', 'running') RETURNING ",
    shard_columns!()
);
// `$3` is the job's max attempts: below it the shard waits for another claim.
const SHARD_FAILED: &str = concat!(
    "UPDATE job_shards SET state = CASE WHEN attempts < $3 THEN 'runnable' ELSE 'failed' END, \
     error = $4, finished_at_ms = $5, updated_at_ms = $5 \
     WHERE job_id = $1 AND shard_index = $2 AND state IN ('runnable', 'running') RETURNING ",
    shard_columns!()
);
const FINISH_JOB: &str = "UPDATE jobs SET state = $2, error = $3, finished_at_ms = $4, \
     updated_at_ms = $4 \
     WHERE id = $1 AND state NOT IN ('succeeded', 'failed', 'cancelled')";
const CANCEL_JOB: &str = "UPDATE jobs SET state = 'cancelled', error = 'cancelled', \
     finished_at_ms = $2, updated_at_ms = $2 \
     WHERE id = $1 AND state NOT IN ('succeeded', 'failed', 'cancelled')";
const CANCEL_SHARDS: &str = "UPDATE job_shards SET state = 'cancelled', finished_at_ms = $2, \
     updated_at_ms = $2 WHERE job_id = $1 AND state IN ('runnable', 'running')";
// A job cancelled or failed before it was planned has no shards: it goes back to planning.
const RETRY_JOB: &str = "UPDATE jobs \
     SET state = CASE WHEN rows_planned IS NULL THEN 'submitted' ELSE 'runnable' END, \
     error = NULL, finished_at_ms = NULL, alerted_at_ms = NULL, updated_at_ms = $2 \
     WHERE id = $1 AND state IN ('failed', 'cancelled')";
const RETRY_SHARDS: &str = "UPDATE job_shards SET state = 'runnable', attempts = 0, error = NULL, \
     finished_at_ms = NULL, rows_read = 0, rows_written = 0, rows_rejected = 0, \
     updated_at_ms = $2 WHERE job_id = $1 AND state IN ('failed', 'cancelled')";
// Not a change of the job: `updated_at_ms` stays, so a watcher of stalled jobs is not fooled
// by its own alert.
const MARK_ALERTED: &str = "UPDATE jobs SET alerted_at_ms = $2 WHERE id = $1";

macro_rules! jobs {
    ($module:ident, $db:ty, begin: $begin:expr) => {
        pub(crate) mod $module {
            use super::*;

            type Pool = sqlx::Pool<$db>;
            type Transaction = sqlx::Transaction<'static, $db>;

            async fn begin(
                pool: &Pool,
                action: &'static str,
            ) -> Result<Transaction, RegistryError> {
                pool.begin_with($begin)
                    .await
                    .map_err(RegistryError::query(action))
            }

            async fn commit(tx: Transaction, action: &'static str) -> Result<(), RegistryError> {
                tx.commit().await.map_err(RegistryError::query(action))
            }

            async fn find_job<'e>(
                executor: impl sqlx::Executor<'e, Database = $db>,
                id: i64,
            ) -> Result<Option<Job>, RegistryError> {
                sqlx::query_as::<_, JobRow>(JOB)
                    .bind(id)
                    .fetch_optional(executor)
                    .await
                    .map_err(RegistryError::query("reading a job"))?
                    .map(decode_job)
                    .transpose()
            }

            async fn load_job<'e>(
                executor: impl sqlx::Executor<'e, Database = $db>,
                id: i64,
            ) -> Result<Job, RegistryError> {
                find_job(executor, id)
                    .await?
                    .ok_or(RegistryError::NoSuchJob { id })
            }

            /// The error for an action the job's state refused (or for a missing job).
            async fn refused<'e>(
                executor: impl sqlx::Executor<'e, Database = $db>,
                id: i64,
                action: &'static str,
            ) -> RegistryError {
                match load_job(executor, id).await {
                    Ok(job) => RegistryError::JobState {
                        id,
                        state: job.state,
                        action,
                    },
                    Err(e) => e,
                }
            }

            async fn load_shard<'e>(
                executor: impl sqlx::Executor<'e, Database = $db>,
                job_id: i64,
                index: i64,
            ) -> Result<ShardRun, RegistryError> {
                sqlx::query_as::<_, ShardRow>(SHARD)
                    .bind(job_id)
                    .bind(index)
                    .fetch_optional(executor)
                    .await
                    .map_err(RegistryError::query("reading a shard"))?
                    .map(decode_shard)
                    .transpose()?
                    .ok_or(RegistryError::NoSuchShard { job_id, index })
            }

            /// Sets the job's `updated_at_ms`, locking its row; its state and max attempts.
            async fn touch_job(
                tx: &mut Transaction,
                id: i64,
                now: i64,
            ) -> Result<(JobState, i64), RegistryError> {
                let (state, max_attempts) = sqlx::query_as::<_, (String, i64)>(TOUCH_JOB)
                    .bind(id)
                    .bind(now)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(RegistryError::query("updating a job"))?
                    .ok_or(RegistryError::NoSuchJob { id })?;
                let state = JobState::parse(&state).ok_or_else(|| RegistryError::Corrupt {
                    what: format!("job {id}"),
                    reason: format!("unknown state `{state}`"),
                })?;
                Ok((state, max_attempts))
            }

            pub(crate) async fn submit_job(
                pool: &Pool,
                new: &NewJob,
            ) -> Result<Job, RegistryError> {
                let (id,) = sqlx::query_as::<_, (i64,)>(INSERT_JOB)
                    .bind(&new.ingestion)
                    .bind(new.kind.as_str())
                    .bind(new.period_from_ms)
                    .bind(new.period_to_ms)
                    .bind(&new.runner)
                    .bind(i64::from(new.max_attempts))
                    .bind(now_ms())
                    .fetch_one(pool)
                    .await
                    .map_err(RegistryError::query("submitting a job"))?;
                tracing::info!(
                    job = id,
                    ingestion = %new.ingestion,
                    kind = %new.kind,
                    "submitted job"
                );
                load_job(pool, id).await
            }

            pub(crate) async fn plan_job(
                pool: &Pool,
                id: i64,
                rows_planned: i64,
                shards: &[PlannedShard],
            ) -> Result<Job, RegistryError> {
                let mut tx = begin(pool, "starting to plan a job").await?;
                let now = now_ms();
                let planned = sqlx::query(PLAN_JOB)
                    .bind(id)
                    .bind(rows_planned)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(RegistryError::query("planning a job"))?;
                if planned.rows_affected() == 0 {
                    return Err(refused(&mut *tx, id, "plan").await);
                }
                for shard in shards {
                    sqlx::query(INSERT_SHARD)
                        .bind(id)
                        .bind(shard.index)
                        .bind(&shard.description)
                        .bind(shard.rows_planned)
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(RegistryError::query("writing the shards of a job"))?;
                }
                let job = load_job(&mut *tx, id).await?;
                commit(tx, "committing a job's plan").await?;
                tracing::info!(job = id, shards = shards.len(), rows_planned, "planned job");
                Ok(job)
            }

            pub(crate) async fn claim_shard(
                pool: &Pool,
                job_id: i64,
                index: i64,
                worker: &str,
                stale_before_ms: i64,
            ) -> Result<Option<ShardRun>, RegistryError> {
                let mut tx = begin(pool, "starting to claim a shard").await?;
                let now = now_ms();
                let (state, max_attempts) = touch_job(&mut tx, job_id, now).await?;
                if !matches!(state, JobState::Runnable | JobState::Running) {
                    // The job is finished, or has no shards yet (an error then).
                    load_shard(&mut *tx, job_id, index).await?;
                    return Ok(None);
                }
                let lost = sqlx::query(SHARD_LOST)
                    .bind(job_id)
                    .bind(index)
                    .bind(SHARD_LOST_ERROR)
                    .bind(now)
                    .bind(stale_before_ms)
                    .bind(max_attempts)
                    .execute(&mut *tx)
                    .await
                    .map_err(RegistryError::query("failing a shard whose workers died"))?
                    .rows_affected()
                    > 0;
                let claimed = sqlx::query_as::<_, ShardRow>(CLAIM_SHARD)
                    .bind(job_id)
                    .bind(index)
                    .bind(worker)
                    .bind(now)
                    .bind(stale_before_ms)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(RegistryError::query("claiming a shard"))?;
                let Some(claimed) = claimed else {
                    // Finished already (a redelivered task), failed just now, or never planned.
                    load_shard(&mut *tx, job_id, index).await?;
                    if lost {
                        commit(tx, "committing a shard whose workers died").await?;
                        tracing::warn!(job = job_id, shard = index, "{SHARD_LOST_ERROR}");
                    }
                    return Ok(None);
                };
                sqlx::query(START_JOB)
                    .bind(job_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(RegistryError::query("starting a job"))?;
                let shard = decode_shard(claimed)?;
                commit(tx, "committing a shard claim").await?;
                tracing::debug!(
                    job = job_id,
                    shard = index,
                    worker,
                    attempt = shard.attempts,
                    "claimed shard"
                );
                Ok(Some(shard))
            }

            pub(crate) async fn shard_progress(
                pool: &Pool,
                job_id: i64,
                index: i64,
                rows_read: i64,
                rows_written: i64,
                rows_rejected: i64,
            ) -> Result<(), RegistryError> {
                let mut tx = begin(pool, "starting to record shard progress").await?;
                let now = now_ms();
                touch_job(&mut tx, job_id, now).await?;
                let updated = sqlx::query(SHARD_PROGRESS)
                    .bind(job_id)
                    .bind(index)
                    .bind(rows_read)
                    .bind(rows_written)
                    .bind(rows_rejected)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(RegistryError::query("recording shard progress"))?;
                if updated.rows_affected() == 0 {
                    // Not running: nothing changed, so the job keeps its `updated_at`.
                    load_shard(&mut *tx, job_id, index).await?;
                    return Ok(());
                }
                commit(tx, "committing shard progress").await
            }

            pub(crate) async fn finish_shard(
                pool: &Pool,
                job_id: i64,
                index: i64,
                result: Result<ShardResult, String>,
                retryable: bool,
            ) -> Result<ShardRun, RegistryError> {
                let mut tx = begin(pool, "starting to finish a shard").await?;
                let now = now_ms();
                let (_, max_attempts) = touch_job(&mut tx, job_id, now).await?;
                let query = match &result {
                    Ok(counts) => sqlx::query_as::<_, ShardRow>(SHARD_SUCCEEDED)
                        .bind(job_id)
                        .bind(index)
                        .bind(counts.rows_read)
                        .bind(counts.rows_written)
                        .bind(counts.rows_rejected)
                        .bind(now),
                    Err(reason) => sqlx::query_as::<_, ShardRow>(SHARD_FAILED)
                        .bind(job_id)
                        .bind(index)
                        // An error a retry cannot cure fails the shard at once.
                        .bind(if retryable { max_attempts } else { 0 })
                        .bind(reason.as_str())
                        .bind(now),
                };
                let finished = query
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(RegistryError::query("finishing a shard"))?;
                let Some(finished) = finished else {
                    // Finished or cancelled already: leave it as it is.
                    return load_shard(&mut *tx, job_id, index).await;
                };
                let shard = decode_shard(finished)?;
                commit(tx, "committing a finished shard").await?;
                match &result {
                    Ok(_) => tracing::debug!(job = job_id, shard = index, "shard succeeded"),
                    Err(reason) => tracing::warn!(
                        job = job_id,
                        shard = index,
                        attempt = shard.attempts,
                        state = %shard.state,
                        reason = %reason,
                        "shard attempt failed"
                    ),
                }
                Ok(shard)
            }

            pub(crate) async fn finish_job(
                pool: &Pool,
                id: i64,
                state: JobState,
                error: Option<&str>,
            ) -> Result<Job, RegistryError> {
                if !matches!(state, JobState::Succeeded | JobState::Failed) {
                    return Err(RegistryError::NotAFinalState { id, state });
                }
                let finished = sqlx::query(FINISH_JOB)
                    .bind(id)
                    .bind(state.as_str())
                    .bind(error)
                    .bind(now_ms())
                    .execute(pool)
                    .await
                    .map_err(RegistryError::query("finishing a job"))?;
                if finished.rows_affected() > 0 {
                    tracing::info!(job = id, %state, error, "finished job");
                }
                load_job(pool, id).await
            }

            pub(crate) async fn cancel_job(pool: &Pool, id: i64) -> Result<Job, RegistryError> {
                let mut tx = begin(pool, "starting to cancel a job").await?;
                let now = now_ms();
                let cancelled = sqlx::query(CANCEL_JOB)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(RegistryError::query("cancelling a job"))?;
                if cancelled.rows_affected() == 0 {
                    return Err(refused(&mut *tx, id, "cancel").await);
                }
                sqlx::query(CANCEL_SHARDS)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(RegistryError::query("cancelling the shards of a job"))?;
                let job = load_job(&mut *tx, id).await?;
                commit(tx, "committing a cancel").await?;
                tracing::info!(job = id, "cancelled job");
                Ok(job)
            }

            pub(crate) async fn retry_job(pool: &Pool, id: i64) -> Result<Job, RegistryError> {
                let mut tx = begin(pool, "starting to retry a job").await?;
                let now = now_ms();
                let retried = sqlx::query(RETRY_JOB)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(RegistryError::query("retrying a job"))?;
                if retried.rows_affected() == 0 {
                    return Err(refused(&mut *tx, id, "retry").await);
                }
                sqlx::query(RETRY_SHARDS)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(RegistryError::query("retrying the shards of a job"))?;
                let job = load_job(&mut *tx, id).await?;
                commit(tx, "committing a retry").await?;
                tracing::info!(job = id, "retrying job");
                Ok(job)
            }

            pub(crate) async fn job(pool: &Pool, id: i64) -> Result<Option<Job>, RegistryError> {
                find_job(pool, id).await
            }

            pub(crate) async fn shards(
                pool: &Pool,
                job_id: i64,
            ) -> Result<Vec<ShardRun>, RegistryError> {
                sqlx::query_as::<_, ShardRow>(SHARDS)
                    .bind(job_id)
                    .fetch_all(pool)
                    .await
                    .map_err(RegistryError::query("reading the shards of a job"))?
                    .into_iter()
                    .map(decode_shard)
                    .collect()
            }

            pub(crate) async fn list_jobs(
                pool: &Pool,
                filter: &JobFilter,
            ) -> Result<Vec<Job>, RegistryError> {
                let limit = if filter.limit > 0 { filter.limit } else { i64::MAX };
                sqlx::query_as::<_, JobRow>(LIST_JOBS)
                    .bind(filter.ingestion.as_deref())
                    .bind(states_pattern(&filter.states))
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(RegistryError::query("listing jobs"))?
                    .into_iter()
                    .map(decode_job)
                    .collect()
            }

            pub(crate) async fn last_job_for_period(
                pool: &Pool,
                ingestion: &str,
                period_from_ms: Option<i64>,
                period_to_ms: Option<i64>,
            ) -> Result<Option<Job>, RegistryError> {
                sqlx::query_as::<_, JobRow>(LAST_JOB_FOR_PERIOD)
                    .bind(ingestion)
                    .bind(period_from_ms)
                    .bind(period_to_ms)
                    .fetch_optional(pool)
                    .await
                    .map_err(RegistryError::query("reading the last job of a period"))?
                    .map(decode_job)
                    .transpose()
            }

            pub(crate) async fn mark_alerted(pool: &Pool, id: i64) -> Result<(), RegistryError> {
                let marked = sqlx::query(MARK_ALERTED)
                    .bind(id)
                    .bind(now_ms())
                    .execute(pool)
                    .await
                    .map_err(RegistryError::query("marking a job alerted"))?;
                if marked.rows_affected() == 0 {
                    return Err(RegistryError::NoSuchJob { id });
                }
                Ok(())
            }
        }
    };
}

// Transactions begin as the apply's do (see `backend`): IMMEDIATE takes SQLite's write lock
// up front, so a writer waits for another instead of failing at its first write.
jobs!(sqlite, sqlx::Sqlite, begin: "BEGIN IMMEDIATE");
jobs!(postgres, sqlx::Postgres, begin: "BEGIN");
