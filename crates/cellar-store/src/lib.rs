//! Cellar's online store: the [`OnlineStore`] trait that every backend implements, the compact
//! positional encoding of records, the embedded backend (the default, on local disk), and a
//! conformance suite that every backend runs.
//!
//! Layout:
//! - this file: the [`RecordReader`] and [`OnlineStore`] traits, [`Write`], [`PutOutcome`],
//!   [`TimeseriesQuery`] and the crate's one error type, [`StoreError`];
//! - [`Record`] and [`AppliedOffset`]: a record as stored, values by feature position;
//! - [`codec`]: the compact, versioned byte encoding of records, and the size the record-size
//!   limit is checked against;
//! - [`layout`]: records stored under an earlier layout of their group (a retyped feature, a
//!   previous storage generation), laid out and converted for the current one;
//! - [`varint`]: the LEB128 and zigzag integers of that encoding, shared with the stream log's;
//! - [`embedded`]: the embedded backend (fjall on local disk), durable on every `put`;
//! - [`conformance`]: the checks every backend must pass, and the
//!   [`online_store_conformance!`] macro that runs them all as tests;
//! - `examples/engine_bench.rs`: the fjall-vs-redb measurement behind the embedded engine
//!   (`docs/store-engine.md`).
//!
//! Depends on `cellar-spec` only; caches and serving build on top of it. It must not depend on
//! any other Cellar crate.

pub mod codec;
pub mod conformance;
pub mod embedded;
pub mod faults;
pub mod layout;
mod record;
pub mod varint;

pub use record::{AppliedOffset, Record};

use async_trait::async_trait;
use cellar_spec::{EntityKey, FeatureGroup};

/// Errors of the online store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record's encoded size is over its group's limit.
    #[error("record for entity `{entity}` of group `{group}` is {size} bytes, over the limit of {limit} bytes")]
    RecordTooLarge {
        /// The group written.
        group: String,
        /// The entity whose record is too large.
        entity: String,
        /// The record's encoded size ([`codec::encoded_len`]).
        size: usize,
        /// The group's `max_record_bytes`.
        limit: usize,
    },
    /// A stored record could not be decoded.
    #[error("corrupt record in group `{group}`: {reason}")]
    Corrupt {
        /// The group read.
        group: String,
        /// Which record, and what is wrong with it.
        reason: String,
    },
    /// A key or record the store cannot accept as given (a group name or entity key holding a
    /// NUL byte, which the key layout reserves; values nested too deep to encode). The caller's
    /// input is at fault and retrying will not help.
    #[error("invalid input for entity `{entity}` of group `{group}`: {reason}")]
    InvalidInput {
        /// The group written or read.
        group: String,
        /// The entity concerned, empty when the group name itself is refused.
        entity: String,
        /// What is wrong.
        reason: String,
    },
    /// Bytes that are not a record in the [`codec`] format, or a record the format cannot
    /// hold. Backends report undecodable stored records as [`StoreError::Corrupt`].
    #[error("record encoding error: {0}")]
    Codec(String),
    /// The backend failed; retrying may help.
    #[error("store backend error: {0}")]
    Backend(String),
    /// The backend panicked on this call: a defect that the same input would hit again, so it
    /// is not retried (a batching caller splits the call to find the record at fault).
    #[error("store defect: {0}")]
    Defect(String),
}

impl StoreError {
    /// Whether retrying the same call may succeed: only backend failures are transient; bad
    /// input and corrupt data stay bad.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Backend(_))
    }
}

/// The result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a time-series read returns: at most `top_n` records, newest first, none with an event
/// time before `since` (milliseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeseriesQuery {
    /// Most records returned per entity.
    pub top_n: usize,
    /// Oldest event time returned (inclusive), milliseconds since the epoch.
    pub since: Option<i64>,
}

/// One record to write.
#[derive(Debug, Clone)]
pub struct Write {
    /// The entity the record belongs to.
    pub entity: EntityKey,
    /// The record, its values in the group's feature order.
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

/// Checks a record against its group's size limit before it is written, so a caller can
/// refuse one oversized record without failing the batch it would have joined.
pub fn check_size(group: &FeatureGroup, entity: &EntityKey, record: &Record) -> Result<()> {
    check_encoded_size(group, entity, codec::encoded_len(record))
}

/// [`check_size`] for a record already encoded in `size` bytes.
pub fn check_encoded_size(group: &FeatureGroup, entity: &EntityKey, size: usize) -> Result<()> {
    if size > group.max_record_bytes {
        return Err(StoreError::RecordTooLarge {
            group: group.name.clone(),
            entity: entity.to_string(),
            size,
            limit: group.max_record_bytes,
        });
    }
    Ok(())
}

/// The read side of the online store, also implemented by the cache tiers that wrap it.
#[async_trait]
pub trait RecordReader: Send + Sync {
    /// The current record of each entity of an attribute group, in the order asked. A record
    /// past the group's `max_age` is still returned until `trim` removes it, so that readers
    /// can answer "expired" rather than "not found".
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

/// How [`OnlineStore::update`] changes one entity's record: it is given the entity's index in
/// the call, the entity and its stored record (`None` when there is none), and returns the
/// record to store, or `None` to leave the entity as it is. A backend with optimistic
/// concurrency may call it again for the same entity after a concurrent write: the last call's
/// answer is what is stored.
pub type Updater = Box<dyn FnMut(usize, &EntityKey, Option<Record>) -> Option<Record> + Send>;

/// A persistent online store backend.
#[async_trait]
pub trait OnlineStore: RecordReader {
    /// Writes records of one group in one batch. For attribute groups a record replaces the
    /// stored one only if its event time is newer; for time-series groups it is inserted at its
    /// event time (replacing a record with the same event time) and the entity's records are
    /// trimmed to the group's retention.
    async fn put(&self, group: &FeatureGroup, writes: &[Write]) -> Result<Vec<PutOutcome>>;

    /// Read-modify-write of attribute records, for writers whose new record depends on the
    /// stored one (windowed aggregates, partial updates, effectively-once offsets). For each
    /// entity in turn, `updater` gets the stored record and returns its replacement, which is
    /// stored whatever its event time: the updater decides. No other write of the store changes
    /// these entities between the read and the write. Entities should be distinct; a repeated
    /// entity sees the record returned for its earlier occurrence. Returns, per entity, the
    /// record stored (`None` where the updater left it).
    async fn update(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: Updater,
    ) -> Result<Vec<Option<Record>>>;

    /// Removes every record of the given entities from a group.
    async fn delete(&self, group: &FeatureGroup, entities: &[EntityKey]) -> Result<()>;

    /// Removes records past the group's retention (count and age, relative to `now`, in
    /// milliseconds since the epoch). Returns how many records were removed.
    async fn trim(&self, group: &FeatureGroup, now: i64) -> Result<u64>;
}
