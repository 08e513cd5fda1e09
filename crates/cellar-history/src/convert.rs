//! Conversion: staged frames become Parquet files, then leave the staging log.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{HistoryError, Result};
use crate::files::{self, FileRow};
use crate::frame::{self, Frame, Header};
use crate::staging::{Staged, Staging};
use crate::storage::Storage;

/// Staged bytes converted at once: the frames read, decoded and laid out in columns together.
pub const CONVERT_BYTES: usize = 64 << 20;
/// Rows one frame may hold: a row's sequence is its frame's shifted left by this many bits.
pub const FRAME_ROW_BITS: u32 = 20;

/// What one conversion wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Converted {
    pub frames: usize,
    pub records: usize,
    pub files: usize,
    /// The partitions written to (their keys): where compaction may have work.
    pub partitions: BTreeSet<String>,
}

/// Converts the oldest staged frames (up to [`CONVERT_BYTES`]) into files in `storage`, then
/// removes them from `staging`. Returns what it did; nothing when nothing is staged.
pub fn convert_once(staging: &Staging, storage: &Storage) -> Result<Converted> {
    let staged = staging.oldest(CONVERT_BYTES)?;
    let (Some(first), Some(last)) = (staged.first(), staged.last()) else {
        return Ok(Converted::default());
    };
    let (first, last, count) = (first.sequence, last.sequence, staged.len());
    let mut frames: Vec<(Staged, Frame)> = Vec::with_capacity(staged.len());
    for s in staged {
        match frame::decode(&s.frame) {
            Ok(f) => frames.push((s, f)),
            // A frame Cellar cannot read would stop every later one from converting: it is
            // set aside, whole, for a person to look at.
            Err(e) => quarantine(storage, staging.id(), &s, &e)?,
        }
    }
    // Rows by (group storage and columns, event date): one file each. The frames' schemas
    // are told apart once per frame, so a row costs no copy of them.
    let mut schemas: Vec<(String, &Header)> = Vec::new();
    let mut files: BTreeMap<(usize, i64), Vec<FileRow>> = BTreeMap::new();
    let mut records = 0;
    for (staged, frame) in &frames {
        let columns = serde_json::to_string(&frame.header.features).unwrap_or_default();
        let schema = match schemas
            .iter()
            .position(|(c, h)| *c == columns && h.storage == frame.header.storage)
        {
            Some(at) => at,
            None => {
                schemas.push((columns, &frame.header));
                schemas.len() - 1
            }
        };
        for (i, row) in frame.rows.iter().enumerate() {
            records += 1;
            let day = files::day_of(row.record.event_time);
            files.entry((schema, day)).or_default().push(FileRow {
                entity: &row.entity,
                event_time: row.record.event_time,
                written_at: staged.written_at,
                applied: row.applied,
                sequence: (staged.sequence << FRAME_ROW_BITS) | i as u64,
                values: &row.record.values,
            });
        }
    }
    let written = files.len();
    let mut partitions = BTreeSet::new();
    for ((schema, day), rows) in &files {
        let (columns, header) = &schemas[*schema];
        let name = format!(
            "{}-{first:020}-{:016x}.parquet",
            staging.id(),
            xxhash_rust::xxh3::xxh3_64(columns.as_bytes())
        );
        let batch = files::batch(header, rows)?;
        storage.write_parquet(&files::file_key(&header.storage, *day, &name), &batch)?;
        partitions.insert(files::partition_key(&header.storage, *day));
    }
    staging.remove_through(last)?;
    tracing::debug!(
        frames = frames.len(),
        records,
        files = written,
        first,
        last,
        "converted staged history"
    );
    Ok(Converted {
        frames: count,
        records,
        files: written,
        partitions,
    })
}

/// Writes an unreadable staged frame to `_unreadable/` in the history, and says so.
fn quarantine(
    storage: &Storage,
    staging: &str,
    frame: &Staged,
    error: &HistoryError,
) -> Result<()> {
    let key = format!("_unreadable/{staging}-{:020}.frame", frame.sequence);
    storage.put(&key, frame.frame.clone())?;
    tracing::error!(path = %storage.name(&key), %error, "a staged history frame is unreadable: set aside");
    Ok(())
}

/// Converts until nothing is staged.
pub fn convert_all(staging: &Staging, storage: &Storage) -> Result<Converted> {
    let mut total = Converted::default();
    loop {
        let done = convert_once(staging, storage)?;
        if done.frames == 0 {
            return Ok(total);
        }
        total.frames += done.frames;
        total.records += done.records;
        total.files += done.files;
        total.partitions.extend(done.partitions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreadable_frame_is_set_aside_and_the_rest_convert() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path().join("staging")).unwrap();
        let group = cellar_store::conformance::attribute_group("g");
        let record = cellar_store::Record::new(1_000, vec![cellar_spec::Value::Int64(1)]);
        let good = frame::encode(&Header::of(&group), [("u1", &record, true)].into_iter()).unwrap();
        staging.append(b"not a frame".to_vec()).await.unwrap();
        staging.append(good).await.unwrap();
        let storage = Storage::Local(dir.path().join("history"));
        let done = convert_all(&staging, &storage).unwrap();
        assert_eq!((done.frames, done.records, done.files), (2, 1, 1));
        assert!(staging.is_empty());
        let aside = storage.list("_unreadable").unwrap();
        assert_eq!(aside.len(), 1);
        assert_eq!(&storage.read(&aside[0]).unwrap()[..], b"not a frame");
        let files = files::list(&storage, &group.storage_name(), (i64::MIN, i64::MAX)).unwrap();
        assert_eq!(files.len(), 1);
    }
}
