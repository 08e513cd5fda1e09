//! The registry's SQL, written once and compiled for each driver.
//!
//! The statements are portable between SQLite and PostgreSQL (`$n` parameters, `ON CONFLICT`,
//! integer timestamps). A macro instantiates them per driver, which keeps every query typed
//! against a concrete database without sqlx's long generic bounds; only how an apply takes its
//! lock differs, and that is a parameter. The SQL of batch jobs is in `jobs`, re-exported
//! into each driver's module.

mod jobs;

use cellar_spec::time::now_ms;
use cellar_spec::SpecKind;

use cellar_spec::FeatureRepo;

use crate::snapshot::{kind_name, parse_kind, prepare, LatestSpec};
use crate::{
    decode_applied_repo, decode_change, decode_spec_version, decode_watermark, AppliedRepo,
    ApplyOutcome, Breaking, GroupWrites, RegistryError, SpecChange, SpecVersion, Watermark,
    WatermarkValue,
};

/// A `repo_versions` row: version, applied_at_ms, repo JSON.
pub(crate) type RepoRow = (i64, i64, String);
/// A `spec_versions` row for one spec: version, repo_version, applied_at_ms, removed, spec JSON.
pub(crate) type SpecRow = (i64, i64, i64, bool, Option<String>);
/// A `watermarks` row: value_ms, value_text, updated_at_ms.
pub(crate) type WatermarkRow = (Option<i64>, Option<String>, i64);

const HEAD: &str =
    "SELECT version, applied_at_ms, repo FROM repo_versions ORDER BY version DESC LIMIT 1";
const REPO_AT: &str = "SELECT version, applied_at_ms, repo FROM repo_versions WHERE version = $1";
const LATEST_SPECS: &str = "SELECT s.kind, s.name, s.version, s.spec FROM spec_versions s \
     WHERE s.version = (SELECT MAX(m.version) FROM spec_versions m \
                        WHERE m.kind = s.kind AND m.name = s.name)";
const INSERT_REPO: &str =
    "INSERT INTO repo_versions (version, applied_at_ms, repo) VALUES ($1, $2, $3)";
const INSERT_SPEC: &str = "INSERT INTO spec_versions \
     (kind, name, version, repo_version, applied_at_ms, removed, spec) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";
const HISTORY: &str = "SELECT version, repo_version, applied_at_ms, removed, spec \
     FROM spec_versions WHERE kind = $1 AND name = $2 ORDER BY version";
const CHANGES: &str = "SELECT kind, name, version, repo_version, applied_at_ms, removed \
     FROM spec_versions ORDER BY repo_version DESC, kind, name LIMIT $1";
const WATERMARK: &str =
    "SELECT value_ms, value_text, updated_at_ms FROM watermarks WHERE ingestion = $1";
const SET_WATERMARK: &str =
    "INSERT INTO watermarks (ingestion, value_ms, value_text, updated_at_ms) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (ingestion) DO UPDATE SET value_ms = excluded.value_ms, \
     value_text = excluded.value_text, updated_at_ms = excluded.updated_at_ms";

// Each figure only moves forward, whichever process writes last: the newest event time is
// the larger, the last write the later one (with its delay).
const RECORD_GROUP_WRITES: &str =
    "INSERT INTO group_writes (group_name, newest_event_ms, last_write_ms, last_delay_ms) ";
const MERGE_GROUP_WRITES: &str = " ON CONFLICT (group_name) DO UPDATE SET \
     newest_event_ms = CASE WHEN excluded.newest_event_ms > group_writes.newest_event_ms \
         THEN excluded.newest_event_ms ELSE group_writes.newest_event_ms END, \
     last_delay_ms = CASE WHEN excluded.last_write_ms >= group_writes.last_write_ms \
         THEN excluded.last_delay_ms ELSE group_writes.last_delay_ms END, \
     last_write_ms = CASE WHEN excluded.last_write_ms > group_writes.last_write_ms \
         THEN excluded.last_write_ms ELSE group_writes.last_write_ms END";
/// Groups per statement: 4 parameters each, far below SQLite's and PostgreSQL's limits.
const GROUP_WRITES_PER_STATEMENT: usize = 1000;
const GROUP_WRITES: &str = "SELECT group_name, newest_event_ms, last_write_ms, last_delay_ms \
     FROM group_writes ORDER BY group_name";

/// Maps a unique-key failure on write to a lost race, everything else to a query error.
fn write_error(action: &'static str, version: i64) -> impl Fn(sqlx::Error) -> RegistryError {
    move |source| match &source {
        sqlx::Error::Database(e) if e.is_unique_violation() => {
            RegistryError::ConcurrentApply { version }
        }
        _ => RegistryError::Query { action, source },
    }
}

pub(crate) fn decode_latest(
    rows: Vec<(String, String, i64, Option<String>)>,
) -> Result<Vec<LatestSpec>, RegistryError> {
    rows.into_iter()
        .map(|(kind, name, version, spec)| {
            let kind = parse_kind(&kind).ok_or_else(|| RegistryError::Corrupt {
                what: format!("history of `{name}`"),
                reason: format!("unknown spec kind `{kind}`"),
            })?;
            Ok(LatestSpec {
                kind,
                name,
                version,
                spec,
            })
        })
        .collect()
}

macro_rules! backend {
    ($module:ident, $db:ty, begin: $begin:expr, lock: $lock:expr) => {
        pub(crate) mod $module {
            use super::*;

            pub(crate) use super::jobs::$module::*;

            type Pool = sqlx::Pool<$db>;

            async fn head<'e>(
                executor: impl sqlx::Executor<'e, Database = $db>,
            ) -> Result<Option<RepoRow>, RegistryError> {
                sqlx::query_as::<_, RepoRow>(HEAD)
                    .fetch_optional(executor)
                    .await
                    .map_err(RegistryError::query("reading the current repo"))
            }

            pub(crate) async fn current(pool: &Pool) -> Result<Option<AppliedRepo>, RegistryError> {
                head(pool).await?.map(decode_applied_repo).transpose()
            }

            pub(crate) async fn repo_at(
                pool: &Pool,
                version: i64,
            ) -> Result<Option<AppliedRepo>, RegistryError> {
                sqlx::query_as::<_, RepoRow>(REPO_AT)
                    .bind(version)
                    .fetch_optional(pool)
                    .await
                    .map_err(RegistryError::query("reading an applied repo"))?
                    .map(decode_applied_repo)
                    .transpose()
            }

            /// One attempt at an apply; the caller retries a lost race.
            pub(crate) async fn apply(
                pool: &Pool,
                desired: &FeatureRepo,
                breaking: Breaking,
            ) -> Result<ApplyOutcome, RegistryError> {
                // Most applies change nothing: answer those without taking the write lock.
                if let Some(head) = head(pool).await? {
                    let version = head.0;
                    let (_, snapshot) = prepare(Some(head.clone()), &[], desired, Breaking::Allow)?;
                    if snapshot.json == head.2 {
                        return Ok(ApplyOutcome {
                            version,
                            changed: false,
                        });
                    }
                }

                let mut tx = pool
                    .begin_with($begin)
                    .await
                    .map_err(RegistryError::query("starting the apply transaction"))?;
                let lock: Option<&'static str> = $lock;
                if let Some(lock) = lock {
                    sqlx::query(lock)
                        .execute(&mut *tx)
                        .await
                        .map_err(RegistryError::query("locking the repo versions"))?;
                }

                // Read again under the lock: another apply may have committed meanwhile, and
                // the layout is evolved from what is current now.
                let current = head(&mut *tx).await?;
                let latest =
                    sqlx::query_as::<_, (String, String, i64, Option<String>)>(LATEST_SPECS)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(RegistryError::query("reading the spec history"))?;
                let latest = decode_latest(latest)?;
                let (version, desired) = prepare(current.clone(), &latest, desired, breaking)?;
                if let Some((current_version, _, json)) = &current {
                    if *json == desired.json {
                        return Ok(ApplyOutcome {
                            version: *current_version,
                            changed: false,
                        });
                    }
                }
                let writes = desired.spec_writes(&latest);

                let applied_at_ms = now_ms();
                sqlx::query(INSERT_REPO)
                    .bind(version)
                    .bind(applied_at_ms)
                    .bind(&desired.json)
                    .execute(&mut *tx)
                    .await
                    .map_err(write_error("writing the repo version", version))?;
                for write in &writes {
                    sqlx::query(INSERT_SPEC)
                        .bind(kind_name(write.kind))
                        .bind(&write.name)
                        .bind(write.version)
                        .bind(version)
                        .bind(applied_at_ms)
                        .bind(write.spec.is_none())
                        .bind(write.spec.as_deref())
                        .execute(&mut *tx)
                        .await
                        .map_err(write_error("writing the spec history", version))?;
                }
                tx.commit()
                    .await
                    .map_err(write_error("committing the apply", version))?;
                tracing::info!(
                    version,
                    specs_changed = writes.len(),
                    "applied feature repo"
                );
                Ok(ApplyOutcome {
                    version,
                    changed: true,
                })
            }

            pub(crate) async fn latest_specs(
                pool: &Pool,
            ) -> Result<Vec<LatestSpec>, RegistryError> {
                let rows = sqlx::query_as::<_, (String, String, i64, Option<String>)>(LATEST_SPECS)
                    .fetch_all(pool)
                    .await
                    .map_err(RegistryError::query("reading the spec history"))?;
                decode_latest(rows)
            }

            pub(crate) async fn history(
                pool: &Pool,
                kind: SpecKind,
                name: &str,
            ) -> Result<Vec<SpecVersion>, RegistryError> {
                sqlx::query_as::<_, SpecRow>(HISTORY)
                    .bind(kind_name(kind))
                    .bind(name)
                    .fetch_all(pool)
                    .await
                    .map_err(RegistryError::query("reading the spec history"))?
                    .into_iter()
                    .map(|row| decode_spec_version(kind, name, row))
                    .collect()
            }

            pub(crate) async fn changes(
                pool: &Pool,
                limit: i64,
            ) -> Result<Vec<SpecChange>, RegistryError> {
                sqlx::query_as::<_, (String, String, i64, i64, i64, bool)>(CHANGES)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
                    .map_err(RegistryError::query("reading the spec history"))?
                    .into_iter()
                    .map(decode_change)
                    .collect()
            }

            pub(crate) async fn watermark(
                pool: &Pool,
                ingestion: &str,
            ) -> Result<Option<Watermark>, RegistryError> {
                sqlx::query_as::<_, WatermarkRow>(WATERMARK)
                    .bind(ingestion)
                    .fetch_optional(pool)
                    .await
                    .map_err(RegistryError::query("reading a watermark"))?
                    .map(|row| decode_watermark(ingestion, row))
                    .transpose()
            }

            pub(crate) async fn set_watermark(
                pool: &Pool,
                ingestion: &str,
                value: &WatermarkValue,
            ) -> Result<(), RegistryError> {
                let (value_ms, value_text) = match value {
                    WatermarkValue::Millis(ms) => (Some(*ms), None),
                    WatermarkValue::Text(text) => (None, Some(text.as_str())),
                };
                sqlx::query(SET_WATERMARK)
                    .bind(ingestion)
                    .bind(value_ms)
                    .bind(value_text)
                    .bind(now_ms())
                    .execute(pool)
                    .await
                    .map_err(RegistryError::query("writing a watermark"))?;
                Ok(())
            }

            pub(crate) async fn record_group_writes(
                pool: &Pool,
                writes: &[GroupWrites],
            ) -> Result<(), RegistryError> {
                let action = "recording group writes";
                let mut tx = pool.begin().await.map_err(RegistryError::query(action))?;
                // One statement per many groups, not a round trip per group.
                for chunk in writes.chunks(GROUP_WRITES_PER_STATEMENT) {
                    let mut statement = sqlx::QueryBuilder::<$db>::new(RECORD_GROUP_WRITES);
                    statement.push_values(chunk, |mut row, w| {
                        row.push_bind(&w.group)
                            .push_bind(w.newest_event_ms)
                            .push_bind(w.last_write_ms)
                            .push_bind(w.last_delay_ms);
                    });
                    statement.push(MERGE_GROUP_WRITES);
                    statement
                        .build()
                        .execute(&mut *tx)
                        .await
                        .map_err(RegistryError::query(action))?;
                }
                tx.commit().await.map_err(RegistryError::query(action))
            }

            pub(crate) async fn group_writes(
                pool: &Pool,
            ) -> Result<Vec<GroupWrites>, RegistryError> {
                let rows = sqlx::query_as::<_, (String, i64, i64, i64)>(GROUP_WRITES)
                    .fetch_all(pool)
                    .await
                    .map_err(RegistryError::query("reading group writes"))?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(group, newest_event_ms, last_write_ms, last_delay_ms)| GroupWrites {
                            group,
                            newest_event_ms,
                            last_write_ms,
                            last_delay_ms,
                        },
                    )
                    .collect())
            }
        }
    };
}

// IMMEDIATE takes SQLite's write lock when the transaction starts, so a concurrent apply
// waits for it (up to the busy timeout) instead of failing when it first writes.
backend!(sqlite, sqlx::Sqlite, begin: "BEGIN IMMEDIATE", lock: None);

// This lock mode conflicts with itself and with inserts but not with reads: applies run one
// after the other while `current` and `history` keep answering.
backend!(
    postgres,
    sqlx::Postgres,
    begin: "BEGIN",
    lock: Some("LOCK TABLE repo_versions IN SHARE ROW EXCLUSIVE MODE")
);
