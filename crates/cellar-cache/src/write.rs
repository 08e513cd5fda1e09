//! The write path: records go to the store, then to the cache tiers as each group's write
//! strategy says (write-through puts the newer record in, write-around drops cached copies).

use std::sync::Arc;

use cellar_spec::{EntityKey, FeatureGroup, GroupKind};
use cellar_store::{layout, OnlineStore, PutOutcome, Record, Result, Updater, Write};

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
        let updater = match group.previous.as_deref() {
            Some(previous) if group.kind == GroupKind::Attribute => {
                self.seeded(previous, group, entities, updater).await?
            }
            _ => updater,
        };
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

    /// `updater`, given for an entity the group's generation holds nothing for the record of
    /// its previous generation, laid out anew: a write that sets some features of such an
    /// entity keeps the others (and the offsets the old record applied), as it would have
    /// before the layout changed. The previous generation is no longer written, so what is
    /// read here cannot change before the update.
    async fn seeded(
        &self,
        previous: &FeatureGroup,
        group: &FeatureGroup,
        entities: &[EntityKey],
        mut updater: Updater,
    ) -> Result<Updater> {
        let seeds =
            layout::previous_records(self.store.as_ref(), previous, group, entities).await?;
        Ok(Box::new(move |i, entity, stored: Option<Record>| {
            let stored = stored.or_else(|| seeds.get(i).cloned().flatten());
            updater(i, entity, stored)
        }))
    }
}
