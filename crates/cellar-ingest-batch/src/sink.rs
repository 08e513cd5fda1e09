//! Where a shard's records go: the [`RecordSink`] trait, implemented by the write path of
//! `cellar-cache` (store first, then each cache tier as the group's write strategy says).

use async_trait::async_trait;
use cellar_cache::WritePath;
use cellar_spec::{EntityKey, FeatureGroup};
use cellar_store::{PutOutcome, Record, Updater, Write};

/// The two writes batch ingestion makes, each one call per batch of rows.
#[async_trait]
pub trait RecordSink: Send + Sync {
    /// Writes whole records (see [`cellar_store::OnlineStore::put`]): an attribute record is
    /// stored unless one with the same or a newer event time is ([`PutOutcome::Stale`]); a
    /// time-series record is inserted at its event time, replacing one with the same.
    async fn put(
        &self,
        group: &FeatureGroup,
        writes: &[Write],
    ) -> cellar_store::Result<Vec<PutOutcome>>;

    /// Read-modify-writes attribute records (see [`cellar_store::OnlineStore::update`]).
    async fn update(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: Updater,
    ) -> cellar_store::Result<Vec<Option<Record>>>;
}

#[async_trait]
impl RecordSink for WritePath {
    async fn put(
        &self,
        group: &FeatureGroup,
        writes: &[Write],
    ) -> cellar_store::Result<Vec<PutOutcome>> {
        self.write(group, writes).await
    }

    async fn update(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: Updater,
    ) -> cellar_store::Result<Vec<Option<Record>>> {
        WritePath::update(self, group, entities, updater).await
    }
}
