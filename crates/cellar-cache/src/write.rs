//! The write path: records go to the store, then to the offline history, then to the cache
//! tiers as each group's write strategy says (write-through puts the newer record in,
//! write-around drops cached copies).

use std::sync::Arc;

use async_trait::async_trait;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind};
use cellar_store::{layout, OnlineStore, PutOutcome, Record, Result, Updater, Write};

use crate::freshness::Freshness;
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
    /// Where every written record is also kept for training sets, if the deployment keeps a
    /// history.
    history: Option<Arc<dyn History>>,
    /// The newest event time written to each group, and when.
    freshness: Freshness,
}

/// One record as the history keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Kept<'a> {
    pub entity: &'a EntityKey,
    pub record: &'a Record,
    /// Whether the record is known to be what the store holds at its event time. At equal
    /// event times an applied record wins over an unapplied one. Unapplied are: an attribute
    /// record older than (or as old as) the stored one, which is still the entity's value at
    /// its own event time (and a redelivery whose first write reached the store but not the
    /// history is refused as stale); and a stored record recovered after a crash
    /// ([`WritePath::keep`]).
    pub applied: bool,
}

/// The offline history: every record written online, kept by event time, from which training
/// sets are built point-in-time correct.
#[async_trait]
pub trait History: Send + Sync {
    /// Keeps `rows` of `group`; returns once they would survive a crash of the process. A
    /// write is acknowledged only after this, so nothing acknowledged is missing from the
    /// history.
    async fn keep(&self, group: &FeatureGroup, rows: &[Kept<'_>]) -> Result<()>;
}

impl WritePath {
    pub fn new(store: Arc<dyn OnlineStore>, local: Option<Arc<LocalTier>>) -> WritePath {
        WritePath {
            store,
            local,
            remote: None,
            history: None,
            freshness: Freshness::default(),
        }
    }

    /// What this write path (and every clone of it) has written to each group, and when.
    pub fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    /// Also keeps every written record in `history`.
    pub fn with_history(mut self, history: Arc<dyn History>) -> WritePath {
        self.history = Some(history);
        self
    }

    /// Also keeps `remote` consistent with every write.
    pub fn with_remote(mut self, remote: Arc<RemoteTier>) -> WritePath {
        self.remote = Some(remote);
        self
    }

    /// Writes one group's records; a record older than the stored one changes nothing in any
    /// tier. The history is written last: should it fail, the write fails (and is retried)
    /// with the store and the tiers already agreeing.
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
        if let Some(history) = &self.history {
            let rows: Vec<Kept> = writes
                .iter()
                .zip(&outcomes)
                .map(|(w, o)| Kept {
                    entity: &w.entity,
                    record: &w.record,
                    applied: *o == PutOutcome::Applied,
                })
                .collect();
            history.keep(group, &rows).await?;
        }
        // Stale records (redeliveries, late events) change nothing served: not fresher data.
        let newest = writes
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| **o == PutOutcome::Applied)
            .map(|(w, _)| w.record.event_time)
            .max();
        if let Some(newest) = newest {
            self.freshness.written(&group.name, newest);
        }
        Ok(outcomes)
    }

    /// Keeps records in the history without writing them online: records found in the store
    /// that a crash may have kept from the history (a redelivered event finds the record its
    /// first delivery stored, and which may have been served since).
    pub async fn keep(&self, group: &FeatureGroup, rows: &[Kept<'_>]) -> Result<()> {
        match &self.history {
            Some(history) => history.keep(group, rows).await,
            None => Ok(()),
        }
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
        if let Some(history) = &self.history {
            // Each entity's record as stored now; a redelivered change leaves it as it was,
            // and keeping it again costs a duplicate, never a gap.
            let rows: Vec<Kept> = entities
                .iter()
                .zip(&stored)
                .filter_map(|(entity, record)| {
                    record.as_ref().map(|record| Kept {
                        entity,
                        record,
                        applied: true,
                    })
                })
                .collect();
            history.keep(group, &rows).await?;
        }
        if let Some(newest) = stored.iter().flatten().map(|r| r.event_time).max() {
            self.freshness.written(&group.name, newest);
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
