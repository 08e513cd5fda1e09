//! The crate's one error type.

use cellar_ingest_batch::BatchError;
use cellar_registry::RegistryError;

/// Why a job could not be submitted, planned, run or changed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The request names something that cannot run as a batch job.
    #[error("{0}")]
    Invalid(String),
    /// The request names an ingestion the applied repo does not have.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The `kafka` runner's broker failed.
    #[error("shard tasks: {0}")]
    Runner(String),
    /// A worker task died: a bug, reported rather than hidden.
    #[error("job worker failed: {0}")]
    Internal(String),
}

pub type Result<T, E = JobError> = std::result::Result<T, E>;
