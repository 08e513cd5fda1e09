//! Cellar's online store: the [`OnlineStore`] trait that every backend implements, the compact
//! positional encoding of records, the embedded backend (the default, on local disk), and a
//! conformance suite that every backend runs.
//!
//! Depends on `cellar-spec` only; caches and serving build on top of it.

pub mod codec;
pub mod conformance;
pub mod embedded;
mod record;

pub use record::{AppliedOffset, Record};

use async_trait::async_trait;
use cellar_spec::{EntityKey, FeatureGroup};

/// Errors of the online store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record's encoded size is over its group's limit.
    #[error("record for entity `{entity}` of group `{group}` is {size} bytes, over the limit of {limit} bytes")]
    RecordTooLarge {
        group: String,
        entity: String,
        size: usize,
        limit: usize,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in group `{group}`: {reason}")]
    Corrupt { group: String, reason: String },
    /// The backend failed; retrying may help.
    #[error("store backend error: {0}")]
    Backend(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a time-series read returns: at most `top_n` records, newest first, none with an event
/// time before `since` (milliseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeseriesQuery {
    pub top_n: usize,
    pub since: Option<i64>,
}

/// One record to write.
#[derive(Debug, Clone)]
pub struct Write {
    pub entity: EntityKey,
    pub record: Record,
}

/// What happened to one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The record is stored.
    Applied,
    /// An attribute record with a newer (or equal) event time was already stored; nothing
    /// changed.
    Stale,
}

/// The read side of the online store, also implemented by the cache tiers that wrap it.
#[async_trait]
pub trait RecordReader: Send + Sync {
    /// The current record of each entity of an attribute group, in the order asked.
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>>;

    /// Records of each entity of a time-series group, newest first, as `query` bounds them.
    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>>;
}

/// A persistent online store backend.
#[async_trait]
pub trait OnlineStore: RecordReader {
    /// Writes records of one group in one batch. For attribute groups a record replaces the
    /// stored one only if its event time is newer; for time-series groups it is inserted at its
    /// event time (replacing a record with the same event time) and the entity's records are
    /// trimmed to the group's retention.
    async fn put(&self, group: &FeatureGroup, writes: &[Write]) -> Result<Vec<PutOutcome>>;

    /// Removes every record of the given entities from a group.
    async fn delete(&self, group: &FeatureGroup, entities: &[EntityKey]) -> Result<()>;

    /// Removes records past the group's retention (count and age, relative to `now`, in
    /// milliseconds since the epoch). Returns how many records were removed.
    async fn trim(&self, group: &FeatureGroup, now: i64) -> Result<u64>;
}
