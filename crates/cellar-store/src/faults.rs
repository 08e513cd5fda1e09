//! A store wrapper that injects the faults of a remote backend (failed writes, slow writes)
//! around a real store, for failure and latency tests and benchmarks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cellar_spec::{EntityKey, FeatureGroup};

use crate::{
    OnlineStore, PutOutcome, Record, RecordReader, Result, StoreError, TimeseriesQuery, Updater,
    Write,
};

/// Wraps a store: its first `fail_first` writes (puts and updates) fail with a retryable
/// backend error, and every write waits `put_latency` first. Reads, deletes and trims pass
/// straight through.
pub struct FaultyStore<S> {
    pub inner: S,
    fail_first: AtomicUsize,
    put_latency: Duration,
}

impl<S> FaultyStore<S> {
    pub fn new(inner: S, fail_first: usize, put_latency: Duration) -> FaultyStore<S> {
        FaultyStore {
            inner,
            fail_first: AtomicUsize::new(fail_first),
            put_latency,
        }
    }

    /// Waits the write latency, then fails while injected failures remain.
    async fn before_write(&self) -> Result<()> {
        if !self.put_latency.is_zero() {
            tokio::time::sleep(self.put_latency).await;
        }
        let failed = self
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failed {
            return Err(StoreError::Backend("store unavailable (injected)".into()));
        }
        Ok(())
    }
}

#[async_trait]
impl<S: OnlineStore> RecordReader for FaultyStore<S> {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        self.inner.get_attributes(group, entities).await
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        self.inner.scan_timeseries(group, entities, query).await
    }
}

#[async_trait]
impl<S: OnlineStore> OnlineStore for FaultyStore<S> {
    async fn put(&self, group: &FeatureGroup, writes: &[Write]) -> Result<Vec<PutOutcome>> {
        self.before_write().await?;
        self.inner.put(group, writes).await
    }

    async fn update(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: Updater,
    ) -> Result<Vec<Option<Record>>> {
        self.before_write().await?;
        self.inner.update(group, entities, updater).await
    }

    async fn delete(&self, group: &FeatureGroup, entities: &[EntityKey]) -> Result<()> {
        self.inner.delete(group, entities).await
    }

    async fn trim(&self, group: &FeatureGroup, now: i64) -> Result<u64> {
        self.inner.trim(group, now).await
    }
}
