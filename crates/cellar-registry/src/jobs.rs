//! Batch jobs and their shards as the registry keeps them: what was submitted, how it was
//! planned, which attempts ran where, and how far they got. Kept here so that a job survives
//! the process that runs it and can be resumed, retried or watched from another one.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::{decode_time, RegistryError};

/// States of a job and of each of its shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Recorded, not planned yet (a job only).
    Submitted,
    /// Planned and waiting for a worker (for a shard: also waiting for a retry).
    Runnable,
    /// A worker claimed it.
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 6] = [
        JobState::Submitted,
        JobState::Runnable,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    /// The name stored in the registry and shown to users.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Submitted => "submitted",
            JobState::Runnable => "runnable",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state named `s` (as by [`JobState::as_str`]), if any.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|state| state.as_str() == s)
    }

    /// Whether nothing more happens to it unless it is retried.
    pub fn is_finished(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job was submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Asked for by a user, over a chosen period.
    Backfill,
    /// Started by a schedule.
    Scheduled,
}

impl JobKind {
    /// The name stored in the registry and shown to users.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Backfill => "backfill",
            JobKind::Scheduled => "scheduled",
        }
    }

    /// The kind named `s` (as by [`JobKind::as_str`]), if any.
    pub fn parse(s: &str) -> Option<JobKind> {
        [JobKind::Backfill, JobKind::Scheduled]
            .into_iter()
            .find(|kind| kind.as_str() == s)
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub ingestion: String,
    pub kind: JobKind,
    /// The period of event time the job covers, [from, to) in epoch ms; None = unbounded.
    pub period_from_ms: Option<i64>,
    pub period_to_ms: Option<i64>,
    /// "local" or "kafka".
    pub runner: String,
    /// Attempts each shard gets before the job fails.
    pub max_attempts: u32,
}

/// A job as recorded, with figures summed over its shards.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Job {
    pub id: i64,
    pub ingestion: String,
    pub kind: JobKind,
    pub state: JobState,
    pub period_from_ms: Option<i64>,
    pub period_to_ms: Option<i64>,
    pub runner: String,
    pub max_attempts: u32,
    pub submitted_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Last change of the job or any of its shards.
    pub updated_at: DateTime<Utc>,
    /// Rows in the plan (exact for Parquet, an estimate for CSV); None before planning.
    pub rows_planned: Option<i64>,
    /// Sums over the shards.
    pub rows_read: i64,
    pub rows_written: i64,
    pub rows_rejected: i64,
    pub shards_total: i64,
    pub shards_succeeded: i64,
    pub shards_failed: i64,
    /// Why the job failed or was cancelled.
    pub error: Option<String>,
    /// When an alert about the job was last sent (so it is sent once per cause).
    pub alerted_at: Option<DateTime<Utc>>,
}

/// A shard of a job and its last attempt.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ShardRun {
    pub job_id: i64,
    pub index: i64,
    /// Runnable, running, succeeded, failed or cancelled; never submitted.
    pub state: JobState,
    pub attempts: i64,
    /// The serialised shard description (opaque JSON text to the registry).
    pub description: String,
    pub rows_planned: i64,
    /// Counters of the current (or last) attempt.
    pub rows_read: i64,
    pub rows_written: i64,
    pub rows_rejected: i64,
    /// The worker that ran (or runs) its last attempt.
    pub worker: Option<String>,
    /// Error of the last failed attempt.
    pub error: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A shard as the planner made it, for [`crate::Registry::plan_job`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedShard {
    pub index: i64,
    pub description: String,
    pub rows_planned: i64,
}

/// The final counters of a shard attempt that succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardResult {
    pub rows_read: i64,
    pub rows_written: i64,
    pub rows_rejected: i64,
}

/// Which jobs [`crate::Registry::list_jobs`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JobFilter {
    /// Only the jobs of this ingestion.
    pub ingestion: Option<String>,
    /// Only jobs in one of these states; empty = any.
    pub states: Vec<JobState>,
    /// At most this many jobs; 0 or less = no limit.
    pub limit: i64,
}

/// A `jobs` row joined with the sums over its shards.
#[derive(sqlx::FromRow)]
pub(crate) struct JobRow {
    id: i64,
    ingestion: String,
    kind: String,
    state: String,
    period_from_ms: Option<i64>,
    period_to_ms: Option<i64>,
    runner: String,
    max_attempts: i64,
    submitted_at_ms: i64,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    updated_at_ms: i64,
    rows_planned: Option<i64>,
    rows_read: i64,
    rows_written: i64,
    rows_rejected: i64,
    shards_total: i64,
    shards_succeeded: i64,
    shards_failed: i64,
    error: Option<String>,
    alerted_at_ms: Option<i64>,
}

/// A `job_shards` row.
#[derive(sqlx::FromRow)]
pub(crate) struct ShardRow {
    job_id: i64,
    shard_index: i64,
    state: String,
    attempts: i64,
    description: String,
    rows_planned: i64,
    rows_read: i64,
    rows_written: i64,
    rows_rejected: i64,
    worker: Option<String>,
    error: Option<String>,
    started_at_ms: Option<i64>,
    finished_at_ms: Option<i64>,
    updated_at_ms: i64,
}

fn corrupt(what: &dyn Fn() -> String, reason: String) -> RegistryError {
    RegistryError::Corrupt {
        what: what(),
        reason,
    }
}

fn decode_state(state: &str, what: &dyn Fn() -> String) -> Result<JobState, RegistryError> {
    JobState::parse(state).ok_or_else(|| corrupt(what, format!("unknown state `{state}`")))
}

fn decode_optional_time(
    ms: Option<i64>,
    what: &dyn Fn() -> String,
) -> Result<Option<DateTime<Utc>>, RegistryError> {
    ms.map(|ms| decode_time(ms, what)).transpose()
}

pub(crate) fn decode_job(row: JobRow) -> Result<Job, RegistryError> {
    let id = row.id;
    let what = &|| format!("job {id}");
    let kind = JobKind::parse(&row.kind)
        .ok_or_else(|| corrupt(what, format!("unknown kind `{}`", row.kind)))?;
    let max_attempts = u32::try_from(row.max_attempts).map_err(|_| {
        corrupt(
            what,
            format!("max attempts {} out of range", row.max_attempts),
        )
    })?;
    Ok(Job {
        id,
        ingestion: row.ingestion,
        kind,
        state: decode_state(&row.state, what)?,
        period_from_ms: row.period_from_ms,
        period_to_ms: row.period_to_ms,
        runner: row.runner,
        max_attempts,
        submitted_at: decode_time(row.submitted_at_ms, what)?,
        started_at: decode_optional_time(row.started_at_ms, what)?,
        finished_at: decode_optional_time(row.finished_at_ms, what)?,
        updated_at: decode_time(row.updated_at_ms, what)?,
        rows_planned: row.rows_planned,
        rows_read: row.rows_read,
        rows_written: row.rows_written,
        rows_rejected: row.rows_rejected,
        shards_total: row.shards_total,
        shards_succeeded: row.shards_succeeded,
        shards_failed: row.shards_failed,
        error: row.error,
        alerted_at: decode_optional_time(row.alerted_at_ms, what)?,
    })
}

pub(crate) fn decode_shard(row: ShardRow) -> Result<ShardRun, RegistryError> {
    let (job_id, index) = (row.job_id, row.shard_index);
    let what = &|| format!("shard {index} of job {job_id}");
    let state = decode_state(&row.state, what)?;
    if state == JobState::Submitted {
        return Err(corrupt(what, "a shard is never `submitted`".to_owned()));
    }
    Ok(ShardRun {
        job_id,
        index,
        state,
        attempts: row.attempts,
        description: row.description,
        rows_planned: row.rows_planned,
        rows_read: row.rows_read,
        rows_written: row.rows_written,
        rows_rejected: row.rows_rejected,
        worker: row.worker,
        error: row.error,
        started_at: decode_optional_time(row.started_at_ms, what)?,
        finished_at: decode_optional_time(row.finished_at_ms, what)?,
        updated_at: decode_time(row.updated_at_ms, what)?,
    })
}

/// The `states` filter of [`JobFilter`] as one bindable text, `,a,b,` (NULL for any state):
/// SQLite has no array parameters, and this keeps the list query a single fixed statement.
pub(crate) fn states_pattern(states: &[JobState]) -> Option<String> {
    if states.is_empty() {
        return None;
    }
    let mut pattern = String::from(",");
    for state in states {
        pattern.push_str(state.as_str());
        pattern.push(',');
    }
    Some(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_kinds_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
            assert_eq!(state.to_string(), state.as_str());
            let json = serde_json::to_string(&state).expect("serialize");
            assert_eq!(json, format!("\"{state}\""));
        }
        for kind in [JobKind::Backfill, JobKind::Scheduled] {
            assert_eq!(JobKind::parse(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(JobState::parse("Running"), None);
        assert_eq!(JobKind::parse("adhoc"), None);
    }

    #[test]
    fn only_succeeded_failed_and_cancelled_are_finished() {
        let finished: Vec<JobState> = JobState::ALL
            .into_iter()
            .filter(JobState::is_finished)
            .collect();
        assert_eq!(
            finished,
            vec![JobState::Succeeded, JobState::Failed, JobState::Cancelled]
        );
    }

    #[test]
    fn the_states_pattern_delimits_every_state() {
        assert_eq!(states_pattern(&[]), None);
        assert_eq!(
            states_pattern(&[JobState::Running, JobState::Failed]).as_deref(),
            Some(",running,failed,")
        );
    }

    #[test]
    fn a_shard_with_an_unknown_state_is_corrupt() {
        let row = ShardRow {
            job_id: 3,
            shard_index: 1,
            state: "paused".to_owned(),
            attempts: 0,
            description: "{}".to_owned(),
            rows_planned: 0,
            rows_read: 0,
            rows_written: 0,
            rows_rejected: 0,
            worker: None,
            error: None,
            started_at_ms: None,
            finished_at_ms: None,
            updated_at_ms: 0,
        };
        let err = decode_shard(row).expect_err("unknown state");
        assert_eq!(
            err.to_string(),
            "corrupt registry data: shard 1 of job 3: unknown state `paused`"
        );
    }
}
