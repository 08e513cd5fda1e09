//! Errors of the offline history and of training sets.

/// What went wrong keeping or reading the history, or building a training set.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The staging log or a history file could not be read or written; retrying may help.
    #[error("offline history I/O: {0}")]
    Io(String),
    /// Another process holds this staging log.
    #[error("the history staging log at {0} is in use by another process")]
    Locked(String),
    /// A history file listed a moment ago is gone: compaction merged it into another.
    #[error("history file {0} is gone")]
    Gone(String),
    /// A staged frame or a history file is not what Cellar wrote.
    #[error("offline history is corrupt: {0}")]
    Corrupt(String),
    /// A record could not be encoded for staging.
    #[error("offline history could not encode a record: {0}")]
    Encode(String),
    /// Too much waits to be converted: conversion is failing or behind.
    #[error(
        "the offline history's staging log holds {staged} bytes, over its limit of {limit} \
         (history.max_staged_bytes): converting to Parquet is failing or behind; writes wait \
         until it catches up"
    )]
    Full { staged: u64, limit: u64 },
    /// The history has stopped (the process is shutting down).
    #[error("the offline history has stopped")]
    Stopped,
    /// A training-set request the history cannot answer as given: the message names what.
    #[error("{0}")]
    Invalid(String),
}

impl HistoryError {
    pub(crate) fn io(action: impl std::fmt::Display, e: impl std::fmt::Display) -> HistoryError {
        HistoryError::Io(format!("{action}: {e}"))
    }
}

pub type Result<T, E = HistoryError> = std::result::Result<T, E>;
