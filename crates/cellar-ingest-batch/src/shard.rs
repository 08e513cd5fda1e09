//! Running one shard: its pieces read and mapped on a blocking thread, the records written by
//! the calling task one batch at a time, the two overlapping.
//!
//! The reader thread runs up to [`READ_AHEAD`] batches ahead of the writes, so reading and
//! mapping the next batch overlaps with the store's durable commit of the current one, and
//! memory stays bounded. Rejected rows are recorded by the reader thread as it finds them.
//!
//! **Redoing a shard is safe.** Every record carries its row's event time (or the job's fixed
//! run time), and the store keeps the newer one: a row written again finds its own record
//! already stored, so an attribute put is [`PutOutcome::Stale`], a time-series put replaces the
//! record at that event time with itself, and a merge whose values are already there is
//! skipped. A shard run twice leaves the store as one run does (the second run counts its
//! rows as `rows_stale`). Two rows of one entity with the same event time are the one case
//! where order decides: the first written wins for attribute puts, the last for time-series
//! puts and merges.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cellar_ingest_stream::aggregate;
use cellar_spec::EntityKey;
use cellar_store::{codec, PutOutcome, Record};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{BatchError, Result};
use crate::job::{BatchJob, REJECT_RATIO_MIN_ROWS};
use crate::map::{Place, Writes};
use crate::plan::Shard;
use crate::read::read_shard;
use crate::rejects::{Reject, Rejects};
use crate::sink::RecordSink;

/// Batches a shard's reader may run ahead of its writes.
pub const READ_AHEAD: usize = 2;

/// What one shard did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ShardReport {
    pub shard: u32,
    /// Rows read from the files, rejected ones included.
    pub rows_read: u64,
    /// Rows whose record was stored.
    pub rows_written: u64,
    /// Rows that changed nothing: the store already held the same or a newer record (every
    /// row of a shard run a second time).
    pub rows_stale: u64,
    /// Rows refused, each recorded with its reason.
    pub rows_rejected: u64,
    /// Rows skipped for an event time outside the job's period.
    pub rows_skipped: u64,
    /// Store writes made (one per batch of rows).
    pub batches: u64,
    pub elapsed: Duration,
    /// Time the reader thread spent reading and mapping (not waiting for the writer).
    pub read_time: Duration,
    /// Time spent waiting for the sink's writes.
    pub write_time: Duration,
}

/// Progress of a shard after one batch, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchDone {
    pub shard: u32,
    /// Rows of this batch read (rejected ones included).
    pub rows: u64,
    pub rejected: u64,
}

/// One batch of a shard's rows, mapped.
struct Mapped {
    /// Rows read, rejected and skipped ones included.
    rows: u64,
    rejected: u64,
    skipped: u64,
    writes: Writes,
    file: Arc<str>,
}

/// Runs `shard` of `job`: reads its rows, writes their records to `sink` in batches, records
/// rejected rows in `rejects`. Fails when the store fails, a file cannot be read, or more than
/// the job's `max_reject_ratio` of the rows are rejected; running it again is safe.
pub async fn run_shard(
    shard: &Shard,
    job: &Arc<BatchJob>,
    sink: &dyn RecordSink,
    rejects: &Arc<dyn Rejects>,
) -> Result<ShardReport> {
    run_shard_observed(shard, job, sink, rejects, &|_| {}).await
}

/// [`run_shard`], calling `on_batch` after each batch is written.
pub async fn run_shard_observed(
    shard: &Shard,
    job: &Arc<BatchJob>,
    sink: &dyn RecordSink,
    rejects: &Arc<dyn Rejects>,
    on_batch: &(dyn Fn(BatchDone) + Send + Sync),
) -> Result<ShardReport> {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Mapped>(READ_AHEAD);
    let reader = {
        let (shard, job, rejects) = (shard.clone(), Arc::clone(job), Arc::clone(rejects));
        tokio::task::spawn_blocking(move || read_and_map(&shard, &job, &*rejects, &tx))
    };
    let mut report = ShardReport {
        shard: shard.index,
        ..ShardReport::default()
    };
    let outcome = async {
        while let Some(mapped) = rx.recv().await {
            report.rows_read += mapped.rows;
            report.rows_rejected += mapped.rejected;
            report.rows_skipped += mapped.skipped;
            let written = Instant::now();
            let late_rejects = write(job, sink, mapped.writes, &mut report).await?;
            report.write_time += written.elapsed();
            report.batches += 1;
            let late = late_rejects.len() as u64;
            if !late_rejects.is_empty() {
                let found: Vec<Reject> = late_rejects
                    .into_iter()
                    .map(|(place, reason)| Reject {
                        ingestion: job.ingestion.clone(),
                        shard: shard.index,
                        file: mapped.file.to_string(),
                        row: place.row,
                        line: place.line,
                        byte: place.byte,
                        column: None,
                        reason,
                    })
                    .collect();
                rejects.record(&found)?;
                report.rows_rejected += late;
            }
            on_batch(BatchDone {
                shard: shard.index,
                rows: mapped.rows,
                rejected: mapped.rejected + late,
            });
            if report.rows_read >= REJECT_RATIO_MIN_ROWS {
                check_rejects(job, &report)?;
            }
        }
        Ok::<(), BatchError>(())
    }
    .await;
    // Dropping the receiver stops a reader still running (after a failed write).
    drop(rx);
    let read_time = reader
        .await
        .map_err(|e| BatchError::Internal(format!("shard {} reader: {e}", shard.index)))?;
    outcome?;
    report.read_time = read_time?;
    check_rejects(job, &report)?;
    report.elapsed = started.elapsed();
    Ok(report)
}

fn check_rejects(job: &BatchJob, report: &ShardReport) -> Result<()> {
    let limit = job.options.max_reject_ratio;
    if report.rows_rejected as f64 > limit * report.rows_read as f64 {
        return Err(BatchError::TooManyRejects {
            shard: report.shard,
            rejected: report.rows_rejected,
            read: report.rows_read,
            limit_percent: limit * 100.0,
        });
    }
    Ok(())
}

/// The reader thread: reads and maps the shard's batches, records their rejects, and hands
/// the writes on, gathered up to `write_rows` rows of one file and sorted by entity key.
/// Returns the time spent working (not blocked on a full channel).
fn read_and_map(
    shard: &Shard,
    job: &BatchJob,
    rejects: &dyn Rejects,
    tx: &mpsc::Sender<Mapped>,
) -> Result<Duration> {
    let started = Instant::now();
    let mut blocked = Duration::ZERO;
    let mut pending = Mapped {
        rows: 0,
        rejected: 0,
        skipped: 0,
        writes: Writes::new(job.mode),
        file: Arc::from(""),
    };
    // Hands `pending` on; false when the writer has stopped (failed), so reading stops.
    let mut send = |pending: &mut Mapped| {
        if pending.rows == 0 {
            return true;
        }
        let mut next = Mapped {
            rows: 0,
            rejected: 0,
            skipped: 0,
            writes: Writes::new(job.mode),
            file: Arc::clone(&pending.file),
        };
        std::mem::swap(pending, &mut next);
        next.writes.sort_by_entity();
        let wait = Instant::now();
        let sent = tx.blocking_send(next).is_ok();
        blocked += wait.elapsed();
        sent
    };
    let mut stopped = false;
    read_shard(shard, job, &mut |mapper, batch, locator, mut rejected| {
        if *pending.file != *mapper.file() {
            if !send(&mut pending) {
                stopped = true;
                return Ok(false);
            }
            pending.file = Arc::from(mapper.file());
        }
        let read_rejects = rejected.len() as u64;
        pending.skipped += mapper.map(batch, locator, &mut pending.writes, &mut rejected);
        rejects.record(&rejected)?;
        pending.rows += batch.num_rows() as u64 + read_rejects;
        pending.rejected += rejected.len() as u64;
        if pending.writes.len() + pending.rejected as usize >= job.options.write_rows.max(1)
            && !send(&mut pending)
        {
            stopped = true;
            return Ok(false);
        }
        Ok(true)
    })?;
    if !stopped {
        send(&mut pending);
    }
    Ok(started.elapsed().saturating_sub(blocked))
}

/// Writes one batch; returns the rows refused at write time (merged records over the size
/// limit) with their reasons.
async fn write(
    job: &BatchJob,
    sink: &dyn RecordSink,
    writes: Writes,
    report: &mut ShardReport,
) -> Result<Vec<(Place, String)>> {
    match writes {
        Writes::Puts(writes) => {
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            for outcome in sink.put(&job.group, &writes).await? {
                match outcome {
                    PutOutcome::Applied => report.rows_written += 1,
                    PutOutcome::Stale => report.rows_stale += 1,
                }
            }
            Ok(Vec::new())
        }
        Writes::Merges {
            entities,
            updates,
            places,
        } => {
            if entities.is_empty() {
                return Ok(Vec::new());
            }
            let width = job.group.features.len();
            let limit = job.group.max_record_bytes;
            let too_large: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
            let updater = {
                let too_large = Arc::clone(&too_large);
                Box::new(move |i: usize, _: &EntityKey, stored: Option<Record>| {
                    let update = &updates[i];
                    if let Some(r) = &stored {
                        // Nothing to write: a newer record, or this row's values already
                        // there (a redone shard).
                        let same = r.event_time == update.event_time
                            && update.fields.iter().all(|(p, v)| r.value(*p) == v);
                        if r.event_time > update.event_time || same {
                            return None;
                        }
                    }
                    let mut record = stored;
                    aggregate::apply(&mut record, width, update);
                    let record = record?;
                    let size = codec::encoded_len(&record);
                    if size > limit {
                        too_large
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((i, size));
                        return None;
                    }
                    Some(record)
                })
            };
            let stored = sink.update(&job.group, &entities, updater).await?;
            let mut too_large =
                std::mem::take(&mut *too_large.lock().unwrap_or_else(|p| p.into_inner()));
            // A backend that retries an entity calls the updater for it again.
            too_large.sort_unstable();
            too_large.dedup_by_key(|(i, _)| *i);
            let written = stored.iter().filter(|r| r.is_some()).count();
            report.rows_written += written as u64;
            report.rows_stale += (entities.len() - written - too_large.len()) as u64;
            Ok(too_large
                .into_iter()
                .map(|(i, size)| {
                    (
                        places[i],
                        format!(
                            "record for entity `{}` of group `{}` would be {size} bytes once \
                             merged, over the limit of {limit} bytes",
                            entities[i], job.group.name
                        ),
                    )
                })
                .collect())
        }
    }
}
