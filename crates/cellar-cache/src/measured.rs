//! The bottom of the read path, measured: how long store reads take and how many entities
//! the store had no record for (the store miss ratio).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use cellar_spec::{EntityKey, FeatureGroup};
use cellar_store::{Record, RecordReader, Result, TimeseriesQuery};

use crate::metrics::{CacheMetrics, Stage};

/// Wraps the store (or any reader) that the cache tiers read through.
pub struct MeasuredStore {
    store: Arc<dyn RecordReader>,
    metrics: CacheMetrics,
}

impl MeasuredStore {
    pub fn new(store: Arc<dyn RecordReader>, metrics: CacheMetrics) -> MeasuredStore {
        MeasuredStore { store, metrics }
    }
}

#[async_trait]
impl RecordReader for MeasuredStore {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        let started = Instant::now();
        let records = self.store.get_attributes(group, entities).await?;
        self.metrics
            .observe_latency(Stage::Store, started.elapsed());
        let found = records.iter().filter(|r| r.is_some()).count() as u64;
        self.metrics
            .record_store_read(&group.name, entities.len() as u64, found);
        Ok(records)
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        let started = Instant::now();
        let series = self.store.scan_timeseries(group, entities, query).await?;
        self.metrics
            .observe_latency(Stage::Store, started.elapsed());
        let found = series.iter().filter(|s| !s.is_empty()).count() as u64;
        self.metrics
            .record_store_read(&group.name, entities.len() as u64, found);
        Ok(series)
    }
}
