//! Cellar's registry: the durable record of what was applied. It keeps every applied feature
//! repo with its version, the history of each spec (added, changed, removed), and the
//! ingestion watermarks that `apply` must never reset. It also keeps the state of batch jobs
//! and their shards, which `apply` never touches either.
//!
//! One SQLite file is the embedded default; PostgreSQL is the shared one for many processes.
//! Both run the same statements through `sqlx`.
//!
//! Layout:
//! - [`Registry`]: open a registry by URL, apply a repo, read repos, histories and watermarks,
//!   and record batch jobs from submission through their shards' attempts;
//! - [`RegistryError`]: the one error type, saying what failed;
//! - `jobs`: the job and shard types ([`Job`], [`ShardRun`], ...) and how their rows decode;
//! - `snapshot`: how a repo is serialized and which history rows an apply writes (no IO);
//! - `backend`: the SQL, instantiated for each driver;
//! - [`postgres`]: PostgreSQL connection options from a URL (TLS included), shared with the
//!   batch sources;
//! - `migrations/sqlite`, `migrations/postgres`: the schema, embedded and run by
//!   [`Registry::open`].
//!
//! Of Cellar's crates this one depends only on `cellar-spec`: the CLI, serving and ingestion
//! depend on it, never the other way.

mod backend;
mod error;
mod jobs;
pub mod postgres;
mod snapshot;

use std::path::Path;
use std::str::FromStr;

use cellar_spec::redact::show_url;
use cellar_spec::secret;
use cellar_spec::{FeatureRepo, SpecKind};
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool};
use sqlx::Connection;

pub use error::RegistryError;
pub use jobs::{Job, JobFilter, JobKind, JobState, NewJob, PlannedShard, ShardResult, ShardRun};

use backend::{SpecRow, WatermarkRow};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// How many times `apply` starts over after losing a race for a version number. Applies
/// serialize on a lock, so a lost race means a writer that bypassed it; a few tries suffice.
const APPLY_ATTEMPTS: u32 = 3;

/// A registry database, SQLite or PostgreSQL. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub struct Registry {
    backend: Backend,
    /// The URL it was opened with, password hidden, for logs.
    url: String,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Calls the function of the same name in the backend module matching the registry's pool.
macro_rules! dispatch {
    ($registry:expr, $function:ident($($arg:expr),*)) => {
        match &$registry.backend {
            Backend::Sqlite(pool) => backend::sqlite::$function(pool, $($arg),*).await,
            Backend::Postgres(pool) => backend::postgres::$function(pool, $($arg),*).await,
        }
    };
}

/// A feature repo as applied.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedRepo {
    /// 1 for the first apply, then one more for each apply that changed something.
    pub version: i64,
    pub applied_at: DateTime<Utc>,
    /// The repo; its `origins` are empty, as they are not stored.
    pub repo: FeatureRepo,
}

/// Whether an apply may make breaking changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breaking {
    /// Refuse the apply if its plan has any.
    Refuse,
    /// Apply them: removed and retyped features are retired, re-laid-out groups move to a new
    /// storage generation.
    Allow,
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The repo version now current.
    pub version: i64,
    /// False when the repo equalled the current one and nothing was written.
    pub changed: bool,
}

/// One entry of a spec's history.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecVersion {
    pub kind: SpecKind,
    pub name: String,
    /// 1 when the spec first appeared, then one more at each change or removal.
    pub version: i64,
    /// The repo version whose apply wrote this entry.
    pub repo_version: i64,
    pub applied_at: DateTime<Utc>,
    /// True when this apply removed the spec.
    pub removed: bool,
    /// The spec as JSON (the `cellar-spec` type of its kind); `None` when removed.
    pub spec: Option<serde_json::Value>,
}

/// One spec written by an apply: what [`Registry::changes`] lists.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecChange {
    pub kind: SpecKind,
    pub name: String,
    /// The spec's own version.
    pub version: i64,
    /// The repo version whose apply wrote it.
    pub repo_version: i64,
    pub applied_at: DateTime<Utc>,
    /// True when the apply removed the spec.
    pub removed: bool,
}

/// How far an ingestion has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatermarkValue {
    /// An event time, in milliseconds since the Unix epoch, UTC.
    Millis(i64),
    /// An opaque position, such as the last file read or a query cursor.
    Text(String),
}

/// An ingestion's watermark and when it was last set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub value: WatermarkValue,
    pub updated_at: DateTime<Utc>,
}

/// What the write paths wrote to one feature group, merged over every process that writes it
/// (times in ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupWrites {
    pub group: String,
    /// The newest event time written.
    pub newest_event_ms: i64,
    /// When the group was last written.
    pub last_write_ms: i64,
    /// From event time to written, for the newest record of that last write.
    pub last_delay_ms: i64,
}

impl Registry {
    /// Opens the registry at `url`, creating and migrating it as needed.
    ///
    /// `url` is `sqlite://PATH` (or `sqlite:PATH`, or a plain file path): the file and its
    /// directory are created if missing and the database runs in WAL mode, so readers do not
    /// block an apply. `postgres://...` (or `postgresql://...`) opens PostgreSQL; the database
    /// must exist. In-memory SQLite is refused, as its data would vanish with idle
    /// connections. Secret references in `url` (`${NAME}`, `${file:PATH}`:
    /// [`cellar_spec::secret`]) are read here; messages show the URL without its password.
    pub async fn open(url: &str) -> Result<Registry, RegistryError> {
        // What is not a URL is a file path (or references only), safe to show.
        let shown = show_url(url, url);
        let url = secret::resolve(url).map_err(|e| RegistryError::InvalidUrl {
            url: shown.clone(),
            reason: e.to_string(),
        })?;
        let url = url.expose();
        let connect_error = |source| RegistryError::Connect {
            url: shown.clone(),
            source,
        };
        let migrate_error = |source| RegistryError::Migrate {
            url: shown.clone(),
            source,
        };
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options =
                postgres::connect_options(url).map_err(|reason| RegistryError::InvalidUrl {
                    url: shown.clone(),
                    reason,
                })?;
            // Connect and migrate over one connection first: a pool retries a refused
            // connection until its timeout and then reports only that it timed out, while a
            // single connection reports the cause at once.
            let mut conn = PgConnection::connect_with(&options)
                .await
                .map_err(connect_error)?;
            POSTGRES_MIGRATIONS
                .run_direct(&mut conn)
                .await
                .map_err(migrate_error)?;
            let _ = conn.close().await;
            Backend::Postgres(PgPool::connect_with(options).await.map_err(connect_error)?)
        } else {
            let options = sqlite_options(url, &shown)?;
            if let Some(dir) = options
                .get_filename()
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|e| connect_error(sqlx::Error::Io(e)))?;
            }
            // A missing file is created and a bad path fails at once: SQLite has no refused
            // connection for the pool to retry, so the pool can migrate directly.
            let pool = SqlitePool::connect_with(options)
                .await
                .map_err(connect_error)?;
            SQLITE_MIGRATIONS.run(&pool).await.map_err(migrate_error)?;
            Backend::Sqlite(pool)
        };
        tracing::info!(url = %shown, "opened registry");
        Ok(Registry {
            backend,
            url: shown,
        })
    }

    /// The latest applied repo, or `None` before the first apply.
    pub async fn current(&self) -> Result<Option<AppliedRepo>, RegistryError> {
        dispatch!(self, current())
    }

    /// The repo as applied at `version`, or `None` if there is no such version.
    pub async fn repo_at(&self, version: i64) -> Result<Option<AppliedRepo>, RegistryError> {
        dispatch!(self, repo_at(version))
    }

    /// Makes `repo` the current repo, refusing breaking changes ([`Registry::apply_with`]).
    pub async fn apply(&self, repo: &FeatureRepo) -> Result<ApplyOutcome, RegistryError> {
        self.apply_with(repo, Breaking::Refuse).await
    }

    /// Makes `repo`, evolved over the current one ([`cellar_spec::evolve`]: features keep
    /// their stored positions, removed ones are retired, re-laid-out groups get a new
    /// generation), the current repo.
    ///
    /// With [`Breaking::Refuse`], an apply whose plan has breaking changes writes nothing and
    /// fails with [`RegistryError::Breaking`] naming them. If the evolved repo equals the
    /// current one (ignoring `origins`), nothing is written and the outcome says
    /// `changed: false`. Otherwise one transaction writes the next repo version and a history
    /// entry for every spec added, changed or removed. Concurrent applies, from this process
    /// or others, run one after the other. Watermarks and jobs are never touched.
    pub async fn apply_with(
        &self,
        repo: &FeatureRepo,
        breaking: Breaking,
    ) -> Result<ApplyOutcome, RegistryError> {
        let mut attempt = 1;
        loop {
            match dispatch!(self, apply(repo, breaking)) {
                Err(RegistryError::ConcurrentApply { version }) if attempt < APPLY_ATTEMPTS => {
                    tracing::warn!(version, attempt, url = %self.url, "apply lost a race for its version, retrying");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// The current repo (empty before the first apply) and `repo` as applying it now would
    /// make it: evolved over the current one. What `plan` compares.
    pub async fn preview(
        &self,
        repo: &FeatureRepo,
    ) -> Result<(FeatureRepo, FeatureRepo), RegistryError> {
        let current = self.current().await?;
        let version = current.as_ref().map_or(1, |c| c.version + 1);
        let current = current.map(|c| c.repo).unwrap_or_default();
        let latest = dispatch!(self, latest_specs())?;
        let evolved = snapshot::evolved(&current, &latest, repo, version);
        Ok((current, evolved))
    }

    /// Every version of one spec, oldest first; empty if it was never applied.
    pub async fn history(
        &self,
        kind: SpecKind,
        name: &str,
    ) -> Result<Vec<SpecVersion>, RegistryError> {
        dispatch!(self, history(kind, name))
    }

    /// The specs the latest applies wrote, newest apply first: at most `limit`.
    pub async fn changes(&self, limit: i64) -> Result<Vec<SpecChange>, RegistryError> {
        dispatch!(self, changes(limit))
    }

    /// The watermark of an ingestion, or `None` if it was never set.
    pub async fn watermark(&self, ingestion: &str) -> Result<Option<Watermark>, RegistryError> {
        dispatch!(self, watermark(ingestion))
    }

    /// Sets the watermark of an ingestion, replacing any previous value (a backfill may move
    /// it back on purpose).
    pub async fn set_watermark(
        &self,
        ingestion: &str,
        value: &WatermarkValue,
    ) -> Result<(), RegistryError> {
        dispatch!(self, set_watermark(ingestion, value))
    }

    /// Merges what this process wrote into every group's figures, in one transaction: the
    /// newest event time and the last write only move forward, whichever process is first.
    pub async fn record_group_writes(&self, writes: &[GroupWrites]) -> Result<(), RegistryError> {
        if writes.is_empty() {
            return Ok(());
        }
        // Rows locked in one order by every process: concurrent merges cannot deadlock. One
        // statement may name a group once only: figures given twice are merged first, the way
        // the table merges them.
        let mut writes = writes.to_vec();
        writes.sort_by(|a, b| a.group.cmp(&b.group));
        writes.dedup_by(|later, kept| {
            if later.group != kept.group {
                return false;
            }
            kept.newest_event_ms = kept.newest_event_ms.max(later.newest_event_ms);
            if later.last_write_ms >= kept.last_write_ms {
                kept.last_write_ms = later.last_write_ms;
                kept.last_delay_ms = later.last_delay_ms;
            }
            true
        });
        dispatch!(self, record_group_writes(&writes))
    }

    /// Every group's figures as the processes writing it recorded them, by group name.
    pub async fn group_writes(&self) -> Result<Vec<GroupWrites>, RegistryError> {
        dispatch!(self, group_writes())
    }

    /// Records a new job, `submitted`, to be planned.
    pub async fn submit_job(&self, new: &NewJob) -> Result<Job, RegistryError> {
        dispatch!(self, submit_job(new))
    }

    /// Records the plan of a `submitted` job in one transaction: its shards, `runnable` and
    /// never attempted, and its planned rows; the job becomes `runnable`.
    pub async fn plan_job(
        &self,
        id: i64,
        rows_planned: i64,
        shards: &[PlannedShard],
    ) -> Result<Job, RegistryError> {
        dispatch!(self, plan_job(id, rows_planned, shards))
    }

    /// Starts an attempt at a shard on `worker`, and starts its job if it was `runnable`.
    ///
    /// `None` when the shard or its job is finished, so a redelivered task is skipped, and
    /// when the shard is `running` with progress written at or after `stale_before`: its
    /// worker is alive. A `running` shard silent since before then (`None`: any running
    /// shard) is claimed again: its worker died, and shard runs are idempotent, so another
    /// one redoes it. The counters restart at zero. A silent shard on its job's last allowed
    /// attempt is failed instead (`None`), naming why: a shard that brings down every worker
    /// that runs it is not retried forever.
    pub async fn claim_shard(
        &self,
        job_id: i64,
        index: i64,
        worker: &str,
        stale_before: Option<DateTime<Utc>>,
    ) -> Result<Option<ShardRun>, RegistryError> {
        let stale_before_ms = stale_before.map_or(i64::MAX, |t| t.timestamp_millis());
        dispatch!(self, claim_shard(job_id, index, worker, stale_before_ms))
    }

    /// Records how far the current attempt at a running shard got (cumulative counts); does
    /// nothing if the shard is not running.
    pub async fn shard_progress(
        &self,
        job_id: i64,
        index: i64,
        rows_read: i64,
        rows_written: i64,
        rows_rejected: i64,
    ) -> Result<(), RegistryError> {
        dispatch!(
            self,
            shard_progress(job_id, index, rows_read, rows_written, rows_rejected)
        )
    }

    /// Ends the current attempt at a shard: `succeeded` with its counts, or, on an error,
    /// back to `runnable` for another attempt while the job's `max_attempts` allow and the
    /// error is `retryable`, else `failed`. A finished or cancelled shard is returned
    /// unchanged. Deciding whether the job is done is left to the caller
    /// ([`Registry::finish_job`]).
    pub async fn finish_shard(
        &self,
        job_id: i64,
        index: i64,
        result: Result<ShardResult, String>,
        retryable: bool,
    ) -> Result<ShardRun, RegistryError> {
        dispatch!(self, finish_shard(job_id, index, result, retryable))
    }

    /// Ends a job as `succeeded` or `failed` (with why); a finished job is returned unchanged.
    pub async fn finish_job(
        &self,
        id: i64,
        state: JobState,
        error: Option<&str>,
    ) -> Result<Job, RegistryError> {
        dispatch!(self, finish_job(id, state, error))
    }

    /// Cancels an unfinished job and its unfinished shards, so no more attempts start.
    pub async fn cancel_job(&self, id: i64) -> Result<Job, RegistryError> {
        dispatch!(self, cancel_job(id))
    }

    /// Runs a `failed` or `cancelled` job again: its failed and cancelled shards get fresh
    /// attempts, succeeded ones are kept. A job that never got planned goes back to
    /// `submitted`.
    pub async fn retry_job(&self, id: i64) -> Result<Job, RegistryError> {
        dispatch!(self, retry_job(id))
    }

    /// The job with this id, or `None`.
    pub async fn job(&self, id: i64) -> Result<Option<Job>, RegistryError> {
        dispatch!(self, job(id))
    }

    /// The shards of a job by index; empty before planning or for an unknown job.
    pub async fn shards(&self, job_id: i64) -> Result<Vec<ShardRun>, RegistryError> {
        dispatch!(self, shards(job_id))
    }

    /// The jobs that pass `filter`, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, RegistryError> {
        dispatch!(self, list_jobs(filter))
    }

    /// The newest job of `ingestion` over exactly this period (an unbounded side matches only
    /// an unbounded side), so a schedule can tell whether a period was already run.
    pub async fn last_job_for_period(
        &self,
        ingestion: &str,
        period_from_ms: Option<i64>,
        period_to_ms: Option<i64>,
    ) -> Result<Option<Job>, RegistryError> {
        dispatch!(
            self,
            last_job_for_period(ingestion, period_from_ms, period_to_ms)
        )
    }

    /// Records that an alert about the job was sent now. It does not count as a change of
    /// the job: `updated_at` keeps marking its last progress.
    pub async fn mark_alerted(&self, id: i64) -> Result<(), RegistryError> {
        dispatch!(self, mark_alerted(id))
    }

    /// Closes every connection, waiting for them to finish. Dropping the registry closes them
    /// too, without waiting.
    pub async fn close(self) {
        match self.backend {
            Backend::Sqlite(pool) => pool.close().await,
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").field("url", &self.url).finish()
    }
}

/// SQLite options for `sqlite:...` URLs and plain paths.
fn sqlite_options(url: &str, shown: &str) -> Result<SqliteConnectOptions, RegistryError> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        // An in-memory database lives only as long as one of the pool's connections, and the
        // pool closes idle ones: the registry would silently lose everything.
        return Err(RegistryError::InvalidUrl {
            url: shown.to_owned(),
            reason: "an in-memory SQLite registry would lose its data; use a file (a temp \
                     dir for tests)"
                .to_owned(),
        });
    }
    let options = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url).map_err(|e| RegistryError::InvalidUrl {
            url: shown.to_owned(),
            reason: e.to_string(),
        })?
    } else if url.contains("://") || url.is_empty() {
        return Err(RegistryError::InvalidUrl {
            url: shown.to_owned(),
            reason: "expected sqlite://PATH, a file path, or postgres://...".to_owned(),
        });
    } else {
        SqliteConnectOptions::new().filename(Path::new(url))
    };
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal))
}

fn decode_time(ms: i64, what: impl FnOnce() -> String) -> Result<DateTime<Utc>, RegistryError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| RegistryError::Corrupt {
        what: what(),
        reason: format!("timestamp {ms} ms is out of range"),
    })
}

fn decode_applied_repo(
    (version, applied_at_ms, json): (i64, i64, String),
) -> Result<AppliedRepo, RegistryError> {
    let what = || format!("repo version {version}");
    let repo = serde_json::from_str(&json).map_err(|e| RegistryError::Corrupt {
        what: what(),
        reason: e.to_string(),
    })?;
    Ok(AppliedRepo {
        version,
        applied_at: decode_time(applied_at_ms, what)?,
        repo,
    })
}

fn decode_spec_version(
    kind: SpecKind,
    name: &str,
    (version, repo_version, applied_at_ms, removed, spec): SpecRow,
) -> Result<SpecVersion, RegistryError> {
    let what = || format!("{kind} `{name}` version {version}");
    let spec = spec
        .map(|json| serde_json::from_str(&json))
        .transpose()
        .map_err(|e| RegistryError::Corrupt {
            what: what(),
            reason: e.to_string(),
        })?;
    Ok(SpecVersion {
        kind,
        name: name.to_owned(),
        version,
        repo_version,
        applied_at: decode_time(applied_at_ms, what)?,
        removed,
        spec,
    })
}

fn decode_change(
    (kind, name, version, repo_version, applied_at_ms, removed): (
        String,
        String,
        i64,
        i64,
        i64,
        bool,
    ),
) -> Result<SpecChange, RegistryError> {
    let what = || format!("history of `{name}`");
    let kind = snapshot::parse_kind(&kind).ok_or_else(|| RegistryError::Corrupt {
        what: what(),
        reason: format!("unknown spec kind `{kind}`"),
    })?;
    Ok(SpecChange {
        applied_at: decode_time(applied_at_ms, what)?,
        kind,
        name,
        version,
        repo_version,
        removed,
    })
}

fn decode_watermark(
    ingestion: &str,
    (value_ms, value_text, updated_at_ms): WatermarkRow,
) -> Result<Watermark, RegistryError> {
    let what = || format!("watermark of `{ingestion}`");
    let value = match (value_ms, value_text) {
        (Some(ms), None) => WatermarkValue::Millis(ms),
        (None, Some(text)) => WatermarkValue::Text(text),
        _ => {
            return Err(RegistryError::Corrupt {
                what: what(),
                reason: "it must hold exactly one of a time and a text".to_owned(),
            })
        }
    };
    Ok(Watermark {
        value,
        updated_at: decode_time(updated_at_ms, what)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_schemes_are_refused_with_what_is_accepted() {
        let err = sqlite_options("mysql://root:pw@db/cellar", "mysql://root:***@db/cellar")
            .expect_err("mysql is not a registry backend");
        assert_eq!(
            err.to_string(),
            "invalid registry url `mysql://root:***@db/cellar`: expected sqlite://PATH, a file \
             path, or postgres://..."
        );
    }

    #[test]
    fn in_memory_sqlite_is_refused() {
        for url in ["sqlite::memory:", "sqlite://registry.db?mode=memory"] {
            let err = sqlite_options(url, url).expect_err("in memory");
            assert!(err.to_string().contains("would lose its data"), "{err}");
        }
    }

    #[test]
    fn plain_paths_and_sqlite_urls_name_the_same_file() {
        let plain = sqlite_options("data/registry.db", "").expect("a path");
        let url = sqlite_options("sqlite://data/registry.db", "").expect("a url");
        assert_eq!(plain.get_filename(), url.get_filename());
    }

    #[test]
    fn a_watermark_with_both_values_is_corrupt() {
        let err =
            decode_watermark("clicks", (Some(1), Some("x".to_owned()), 0)).expect_err("both set");
        assert!(err.to_string().contains("watermark of `clicks`"), "{err}");
    }
}
