//! Cellar's offline history: every record written online, kept by group and event date in
//! Parquet, and the point-in-time-correct training sets built from it.
//!
//! - [`OfflineHistory`]: the write path's [`cellar_cache::History`]. A write's records are
//!   staged durably before the write is acknowledged ([`staging`]), and a background thread
//!   converts what is staged into Parquet files ([`convert`], [`files`]), merging a
//!   partition's small files as they accumulate ([`compact`]), in a directory or an
//!   S3-compatible bucket ([`storage`]).
//! - [`plan`]: what a training set holds, resolved against the applied repo;
//! - [`training`]: the as-of join of a spine onto the history, and the on-demand features
//!   computed over it (`on_demand`).
//! - [`consistency`]: logged answers recomputed from the history and compared;
//! - [`logged`]: the answers feature services logged, read back and joined to labels;
//! - [`table`]: spines and training sets as Parquet or CSV files.
//!
//! The guarantee: a write acknowledged online (a push answered, an event's offset committed,
//! a batch shard finished) has its records in the staging log, and so, once converted, in the
//! history, whatever crashes in between. A crash can make a record appear twice, never not at
//! all; duplicates change no as-of answer.

pub mod compact;
pub mod consistency;
pub mod convert;
pub mod error;
pub mod files;
pub mod frame;
pub mod logged;
mod on_demand;
pub mod plan;
pub mod staging;
pub mod storage;
pub mod table;
pub mod training;

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use cellar_cache::{History, Kept};
use cellar_spec::FeatureGroup;
use cellar_store::StoreError;

pub use convert::Converted;
pub use error::{HistoryError, Result};
pub use plan::{OnDemandSelection, TrainingPlan};
pub use staging::Staging;
pub use storage::Storage;
pub use training::{training_set, training_set_file, Built, Progress, Selection};

/// The offline history of one process: its staging log, and the thread converting it into
/// the history's files in `storage`.
pub struct OfflineHistory {
    staging: Staging,
    storage: Storage,
    /// One conversion at a time: the background thread's and [`OfflineHistory::flush`]'s.
    converting: Arc<Mutex<()>>,
    converter: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl OfflineHistory {
    /// Opens the staging log in `staging_dir` and starts converting it into `storage` every
    /// `interval`, beginning with whatever an earlier run left staged.
    pub fn open(
        storage: Storage,
        staging_dir: impl AsRef<Path>,
        interval: Duration,
    ) -> Result<OfflineHistory> {
        storage.prepare()?;
        let staging = Staging::open(staging_dir)?;
        let converting = Arc::new(Mutex::new(()));
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = {
            let (staging, storage, converting) =
                (staging.clone(), storage.clone(), converting.clone());
            std::thread::Builder::new()
                .name("history-convert".into())
                .spawn(move || loop {
                    {
                        let _one = converting.lock().unwrap_or_else(|p| p.into_inner());
                        if let Err(e) = convert_and_compact(&staging, &storage) {
                            tracing::error!(error = %e, "converting the offline history failed; retrying");
                        }
                    }
                    match stopped.recv_timeout(interval) {
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => break,
                    }
                })
                .map_err(|e| HistoryError::io("starting the history converter", e))?
        };
        Ok(OfflineHistory {
            staging,
            storage,
            converting,
            converter: Mutex::new(Some((stop, thread))),
        })
    }

    /// Refuses writes while more than `bytes` wait to be converted.
    pub fn set_max_staged_bytes(&self, bytes: u64) {
        self.staging.set_max_staged_bytes(bytes);
    }

    /// Where the history's files are.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Converts everything staged now, so a training set built next sees every record
    /// acknowledged so far.
    pub fn flush(&self) -> Result<Converted> {
        let _one = self.converting.lock().unwrap_or_else(|p| p.into_inner());
        convert_and_compact(&self.staging, &self.storage)
    }

    /// Stops the converter, then stages nothing more and converts what is left.
    pub fn close(&self) -> Result<Converted> {
        if let Some((stop, thread)) = self
            .converter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            drop(stop);
            let _ = thread.join();
        }
        self.staging.close();
        self.flush()
    }
}

/// Converts everything the staging log in `staging_dir` holds into `storage`, for a process
/// that stopped without converting its own; [`HistoryError::Locked`] while a process holds it.
pub fn convert_staged(staging_dir: &Path, storage: &Storage) -> Result<Converted> {
    storage.prepare()?;
    let staging = Staging::open(staging_dir)?;
    let converted = convert_and_compact(&staging, storage);
    staging.close();
    converted
}

/// Converts everything staged, then merges the small files of the partitions written. A
/// failed merge costs only small files: it is logged, and the next conversion there retries it.
fn convert_and_compact(staging: &Staging, storage: &Storage) -> Result<Converted> {
    let converted = convert::convert_all(staging, storage)?;
    if let Err(e) = compact::compact(storage, &converted.partitions, staging.id()) {
        tracing::error!(error = %e, "compacting the offline history failed");
    }
    Ok(converted)
}

/// A process that ends converts what it staged, so that the history is complete without it.
impl Drop for OfflineHistory {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "converting the offline history failed; the next process of this role converts it");
        }
    }
}

/// Rows staged in one frame at most; a larger write is staged as several.
const MAX_FRAME_ROWS: usize = 1 << convert::FRAME_ROW_BITS;

#[async_trait]
impl History for OfflineHistory {
    async fn keep(&self, group: &FeatureGroup, rows: &[Kept<'_>]) -> cellar_store::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let header = frame::Header::of(group);
        for chunk in rows.chunks(MAX_FRAME_ROWS) {
            let frame = frame::encode(
                &header,
                chunk
                    .iter()
                    .map(|k| (k.entity.as_str(), k.record, k.applied)),
            )
            .map_err(|e| StoreError::Backend(e.to_string()))?;
            self.staging
                .append(frame)
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))?;
        }
        Ok(())
    }
}
