//! The registry's error type.

use cellar_spec::SpecKind;

use crate::JobState;

/// What went wrong in the registry, and with what.
///
/// URLs in messages have their password replaced by `***`.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The URL names neither SQLite nor PostgreSQL, or does not parse.
    #[error("invalid registry url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The database could not be reached or opened.
    #[error("cannot connect to the registry at `{url}`: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    /// The schema could not be brought up to date.
    #[error("cannot migrate the registry schema at `{url}`: {source}")]
    Migrate {
        url: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },

    /// A statement failed; `action` says what the registry was doing.
    #[error("registry error while {action}: {source}")]
    Query {
        action: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// Another apply wrote the same repo version first, and retrying did not get through.
    #[error("another apply wrote repo version {version} at the same time; apply again")]
    ConcurrentApply { version: i64 },

    /// The apply would break stored data or readers, and breaking changes were not allowed.
    #[error(
        "apply refused: {} breaking change(s):\n{}\nthese change what stored records mean or \
         who can read them; apply with breaking changes allowed (`cellar apply \
         --allow-breaking`) to retire removed and retyped features and move re-laid-out \
         groups to a new, empty storage generation",
        changes.len(),
        changes.iter().map(|c| format!("  - {c}")).collect::<Vec<_>>().join("\n")
    )]
    Breaking { changes: Vec<String> },

    /// The repo declares the same spec twice, so its history would be ambiguous.
    #[error("the repo declares {kind} `{name}` more than once")]
    DuplicateSpec { kind: SpecKind, name: String },

    /// A spec or repo could not be serialized to JSON.
    #[error("cannot encode {what} as JSON: {source}")]
    Encode {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    /// Something read back from the database does not decode: the database was edited by hand,
    /// or written by an incompatible version of Cellar.
    #[error("corrupt registry data: {what}: {reason}")]
    Corrupt { what: String, reason: String },

    /// No job has this id.
    #[error("no job {id} in the registry")]
    NoSuchJob { id: i64 },

    /// The job exists but was not planned with a shard of this index.
    #[error("job {job_id} has no shard {index}")]
    NoSuchShard { job_id: i64, index: i64 },

    /// The job's state does not allow the action, such as retrying a job that succeeded.
    #[error("cannot {action} job {id}: it is {state}")]
    JobState {
        id: i64,
        state: JobState,
        action: &'static str,
    },

    /// A job can only be finished as succeeded or failed; cancelling has its own call.
    #[error("cannot finish job {id} as {state}: a job finishes as succeeded or failed")]
    NotAFinalState { id: i64, state: JobState },
}

impl RegistryError {
    /// Whether trying the same call again may succeed (a lost race or an unreachable
    /// database), as opposed to a fault in the input or in the stored data.
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::ConcurrentApply { .. } | RegistryError::Connect { .. } => true,
            RegistryError::Query { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
                // Lock contention only: SQLite busy/locked (5, 6, 517 busy snapshot) and
                // PostgreSQL serialization failure, deadlock and lock not available. A
                // constraint violation would fail the same way again.
                sqlx::Error::Database(e) => matches!(
                    e.code().as_deref(),
                    Some("5" | "6" | "517" | "40001" | "40P01" | "55P03")
                ),
                _ => false,
            },
            _ => false,
        }
    }

    /// Wraps a failed statement with what the registry was doing.
    pub(crate) fn query(action: &'static str) -> impl FnOnce(sqlx::Error) -> RegistryError {
        move |source| RegistryError::Query { action, source }
    }
}
