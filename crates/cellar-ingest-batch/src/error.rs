//! The crate's one error type.

use cellar_store::StoreError;

/// Why planning or running a batch job failed.
///
/// Each kind says whose fault it is, so a scheduler knows whether to retry: [`BatchError::Job`],
/// [`BatchError::Column`] and [`BatchError::Transform`] are the spec's or the data's (retrying changes nothing until
/// someone fixes them), [`BatchError::TooManyRejects`] is the data's, [`BatchError::Source`]
/// and [`BatchError::Store`] are the outside systems' (a retry may help).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The ingestion cannot run as a batch job (not a batch source, an aggregate, a source or
    /// transform this version does not read, a group or entity missing).
    #[error("ingestion `{ingestion}` cannot run: {reason}")]
    Job { ingestion: String, reason: String },
    /// A file does not hold what the ingestion reads: a column is missing, or its type can
    /// never become the feature's type.
    #[error("{file}: {reason}")]
    Column { file: String, reason: String },
    /// A file could not be listed, opened or decoded.
    #[error("{file}: {reason}")]
    Source { file: String, reason: String },
    /// The ingestion's SQL transform does not fit its input (a column it names is missing) or
    /// failed on the data (a cast that cannot be done, a division by zero).
    #[error("ingestion `{ingestion}`: the SQL transform failed: {reason}")]
    Transform { ingestion: String, reason: String },
    /// A shard rejected more of its rows than the job allows.
    #[error(
        "shard {shard} rejected {rejected} of {read} rows, over the limit of {limit_percent}%: \
         see the reject file for each row's reason"
    )]
    TooManyRejects {
        shard: u32,
        rejected: u64,
        read: u64,
        limit_percent: f64,
    },
    /// Rejected rows could not be recorded (so they would be lost).
    #[error("cannot record rejected rows: {0}")]
    Rejects(String),
    /// The store (or cache tier) refused or failed a write.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A worker task died (a bug): the shard's state is unknown, running it again is safe.
    #[error("batch worker failed: {0}")]
    Internal(String),
}

impl BatchError {
    /// Whether running the same shard again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            BatchError::Source { .. } | BatchError::Rejects(_) | BatchError::Internal(_) => true,
            BatchError::Store(e) => e.is_retryable(),
            BatchError::Job { .. }
            | BatchError::Column { .. }
            | BatchError::Transform { .. }
            | BatchError::TooManyRejects { .. } => false,
        }
    }

    pub(crate) fn source(file: &str, reason: impl std::fmt::Display) -> BatchError {
        BatchError::Source {
            file: file.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// The result of batch operations.
pub type Result<T, E = BatchError> = std::result::Result<T, E>;
