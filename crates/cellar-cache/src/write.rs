//! The write path: records go to the store, then to the cache tiers as each group's write
//! strategy says (write-through puts the newer record in, write-around drops cached copies).

use std::sync::Arc;

use cellar_spec::{EntityKey, FeatureGroup};
use cellar_store::{OnlineStore, PutOutcome, Record, Result, Updater, Write};

use crate::local::LocalTier;
use crate::remote::RemoteTier;

/// Writes records to the store and keeps the cache tiers consistent with it. Serving's push
/// and the ingestion writers share it, so every write takes the same path.
#[derive(Clone)]
pub struct WritePath {
    store: Arc<dyn OnlineStore>,
    /// The in-process tier of this process, if it has one.
    local: Option<Arc<LocalTier>>,
    /// The shared remote tier (Redis), if the deployment has one.
    remote: Option<Arc<RemoteTier>>,
}

impl WritePath {
    pub fn new(store: Arc<dyn OnlineStore>, local: Option<Arc<LocalTier>>) -> WritePath {
        WritePath {
            store,
            local,
            remote: None,
        }
    }

    /// Also keeps `remote` consistent with every write.
    pub fn with_remote(mut self, remote: Arc<RemoteTier>) -> WritePath {
        self.remote = Some(remote);
        self
    }

    /// Writes one group's records; a record older than the stored one changes nothing in any
    /// tier.
    pub async fn write(&self, group: &FeatureGroup, writes: &[Write]) -> Result<Vec<PutOutcome>> {
        let outcomes = self.store.put(group, writes).await?;
        if let Some(remote) = &self.remote {
            let applied = writes
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| **o == PutOutcome::Applied)
                .map(|(w, _)| (&w.entity, &w.record));
            remote.records_written(group, applied).await;
        }
        if let Some(local) = &self.local {
            for (w, outcome) in writes.iter().zip(&outcomes) {
                if *outcome == PutOutcome::Applied {
                    local.record_written(group, &w.entity, &w.record);
                }
            }
        }
        Ok(outcomes)
    }

    /// Read-modify-writes attribute records in the store (see [`OnlineStore::update`]), then
    /// brings the cache tiers in line with what was stored.
    pub async fn update(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: Updater,
    ) -> Result<Vec<Option<Record>>> {
        let stored = self.store.update(group, entities, updater).await?;
        if let Some(remote) = &self.remote {
            let replaced = entities
                .iter()
                .zip(&stored)
                .filter_map(|(e, r)| r.as_ref().map(|r| (e, r)));
            remote.records_replaced(group, replaced).await;
        }
        if let Some(local) = &self.local {
            for (entity, record) in entities.iter().zip(&stored) {
                if let Some(record) = record {
                    local.record_replaced(group, entity, record);
                }
            }
        }
        Ok(stored)
    }
}
