//! The history's Parquet files: where they lie and what they hold.
//!
//! ```text
//! <root>/<group storage name>/date=YYYY-MM-DD/<staging id>-<first sequence>-<schema>.parquet
//! ```
//!
//! Files are partitioned by group (and generation: `name@2` after a layout change) and by the
//! UTC date of their records' event times, so a training set reads only the dates its spine
//! can reach. A file's name is decided by what it holds (the staging log it came from, the
//! first frame converted and a hash of the group's columns), so converting the same frames
//! again after a crash replaces a file rather than adding a second copy.
//!
//! Columns: `entity_key` (the canonical key, fields joined by U+001F), `event_time`
//! (timestamp, ms, UTC), `written_at` (timestamp, µs, UTC: when the record was committed),
//! `applied` (whether the online store took it), `sequence` (its order among what one
//! staging log committed), then each live feature under its name, as the Arrow type
//! expressions see it (maps as JSON text).

use std::sync::Arc;

use arrow_array::{
    new_null_array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use cellar_spec::{Value, ValueType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{HistoryError, Result};
use crate::frame::Header;
use crate::storage::Storage;

pub const ENTITY_KEY: &str = "entity_key";
pub const EVENT_TIME: &str = "event_time";
pub const WRITTEN_AT: &str = "written_at";
pub const APPLIED: &str = "applied";
pub const SEQUENCE: &str = "sequence";
/// The columns every history file starts with.
pub const META_COLUMNS: usize = 5;

/// The Arrow type a history column of feature type `t` has.
pub fn column_type(t: ValueType) -> DataType {
    cellar_expr::arrow::stored_type(t)
}

/// The schema of a history file of a group whose live features are `features`.
pub fn schema(features: &[(String, ValueType)]) -> SchemaRef {
    let mut fields = vec![
        Field::new(ENTITY_KEY, DataType::Utf8, false),
        Field::new(
            EVENT_TIME,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new(
            WRITTEN_AT,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new(APPLIED, DataType::Boolean, false),
        Field::new(SEQUENCE, DataType::UInt64, false),
    ];
    for (name, t) in features {
        fields.push(Field::new(name, column_type(*t), true));
    }
    Arc::new(Schema::new(fields))
}

/// One record bound for a file, borrowed from its frame.
pub struct FileRow<'a> {
    pub entity: &'a str,
    pub event_time: i64,
    pub written_at: i64,
    pub applied: bool,
    pub sequence: u64,
    pub values: &'a [Value],
}

/// The columns of `rows`, of a group with the frame header `header`.
pub fn batch(header: &Header, rows: &[FileRow<'_>]) -> Result<RecordBatch> {
    let features: Vec<(String, ValueType)> = header
        .features
        .iter()
        .map(|(_, name, t)| (name.clone(), *t))
        .collect();
    let schema = schema(&features);
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(META_COLUMNS + features.len());
    columns.push(Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.entity),
    )));
    columns.push(Arc::new(
        TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.event_time))
            .with_timezone("UTC"),
    ));
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.written_at))
            .with_timezone("UTC"),
    ));
    columns.push(Arc::new(BooleanArray::from_iter(
        rows.iter().map(|r| Some(r.applied)),
    )));
    columns.push(Arc::new(UInt64Array::from_iter_values(
        rows.iter().map(|r| r.sequence),
    )));
    for (position, _, t) in &header.features {
        let values = rows
            .iter()
            .map(|r| r.values.get(*position).unwrap_or(&Value::Null));
        columns.push(cellar_expr::arrow::stored_column(*t, values));
    }
    RecordBatch::try_new(schema, columns)
        .map_err(|e| HistoryError::Encode(format!("history batch of `{}`: {e}", header.group)))
}

/// The key of a file of `storage`'s history for event date `date` (days since the epoch).
pub fn file_key(storage: &str, date: i64, name: &str) -> String {
    format!("{}/{name}", partition_key(storage, date))
}

/// The key of the partition (directory) of `storage`'s history for event date `date`.
pub fn partition_key(storage: &str, date: i64) -> String {
    format!("{storage}/date={}", format_date(date))
}

/// `YYYY-MM-DD` of a day number.
pub fn format_date(day: i64) -> String {
    chrono::DateTime::from_timestamp(day * 86_400, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day{day}"))
}

fn parse_date(s: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((date - epoch).num_days())
}

/// The UTC day of an epoch-millisecond time.
pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// The history files of one group whose event dates fall in `days` (inclusive), with their
/// day, sorted by key.
pub fn list(storage: &Storage, group: &str, days: (i64, i64)) -> Result<Vec<(i64, String)>> {
    let mut out = Vec::new();
    for key in storage.list(group)? {
        let mut parts = key
            .strip_prefix(group)
            .unwrap_or(&key)
            .trim_start_matches('/')
            .split('/');
        let (Some(partition), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(day) = partition.strip_prefix("date=").and_then(parse_date) else {
            continue;
        };
        if day >= days.0 && day <= days.1 && name.ends_with(".parquet") {
            out.push((day, key));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a group's date partitions before day `keep_from` (days since the epoch): what its
/// `retention.history` no longer keeps. Returns the partitions removed. A training set reading
/// one of them meanwhile lists again and finds it gone.
pub fn sweep(storage: &Storage, group: &str, keep_from: i64) -> Result<usize> {
    let mut days: Vec<i64> = list(storage, group, (i64::MIN, keep_from.saturating_sub(1)))?
        .into_iter()
        .map(|(day, _)| day)
        .collect();
    days.dedup();
    for &day in &days {
        storage.remove_dir(&partition_key(group, day))?;
    }
    Ok(days.len())
}

/// Reads the Parquet file `key` whole into batches of up to 64k rows.
pub fn read_batches(storage: &Storage, key: &str) -> Result<Vec<RecordBatch>> {
    let bytes = storage.read(key)?;
    let action = || format!("reading {}", storage.name(key));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| HistoryError::Corrupt(format!("{}: {e}", action())))?;
    reader
        .map(|batch| batch.map_err(|e| HistoryError::Corrupt(format!("{}: {e}", action()))))
        .collect()
}

/// Reads a history file as batches of the history schema of `features`: the meta columns,
/// then each feature by name. A feature the file lacks, or holds with another type (it was
/// written before the feature was added or retyped), reads as nulls.
pub fn read(
    storage: &Storage,
    key: &str,
    features: &[(String, ValueType)],
) -> Result<Vec<RecordBatch>> {
    let bytes = storage.read(key)?;
    let action = || format!("reading {}", storage.name(key));
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| HistoryError::Corrupt(format!("{}: {e}", action())))?;
    let file_schema = builder.schema().clone();
    let wanted = schema(features);
    // Which file column answers each wanted column.
    let mut sources: Vec<Option<usize>> = Vec::with_capacity(wanted.fields().len());
    for field in wanted.fields() {
        let source = file_schema
            .index_of(field.name())
            .ok()
            .filter(|&i| file_schema.field(i).data_type() == field.data_type());
        sources.push(source);
    }
    for (i, source) in sources.iter().enumerate().take(META_COLUMNS) {
        if source.is_none() {
            return Err(HistoryError::Corrupt(format!(
                "{} has no column `{}` of type {}",
                storage.name(key),
                wanted.field(i).name(),
                wanted.field(i).data_type()
            )));
        }
    }
    let mut read: Vec<usize> = sources.iter().flatten().copied().collect();
    read.sort_unstable();
    read.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), read.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| HistoryError::Corrupt(format!("{}: {e}", action())))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| HistoryError::Corrupt(format!("{}: {e}", action())))?;
        let columns = sources
            .iter()
            .zip(wanted.fields())
            .map(|(source, field)| match source {
                // Projected columns keep the file's order.
                Some(i) => {
                    let at = read.binary_search(i).unwrap_or_default();
                    batch.column(at).clone()
                }
                None => new_null_array(field.data_type(), batch.num_rows()),
            })
            .collect();
        out.push(
            RecordBatch::try_new(wanted.clone(), columns)
                .map_err(|e| HistoryError::Corrupt(format!("{}: {e}", action())))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_removes_the_partitions_before_the_day_kept_from() {
        let dir = tempfile::tempdir().unwrap();
        let describe: crate::storage::Describe = Arc::new(|e| e.to_string());
        let bucket = Storage::bucket(
            Arc::new(object_store::memory::InMemory::new()),
            "s3://b/history",
            describe,
        );
        for storage in [Storage::Local(dir.path().to_path_buf()), bucket] {
            let day = 20_000;
            for d in day..day + 3 {
                storage
                    .put(&file_key("g", d, "a.parquet"), Vec::new())
                    .unwrap();
            }
            // Not history files: skipped by listings.
            storage.put("g/notes.txt", Vec::new()).unwrap();
            storage.put("g/date=oops/a.parquet", Vec::new()).unwrap();
            assert_eq!(sweep(&storage, "g", day + 2).unwrap(), 2);
            let left: Vec<i64> = list(&storage, "g", (i64::MIN, i64::MAX))
                .unwrap()
                .into_iter()
                .map(|(d, _)| d)
                .collect();
            assert_eq!(left, [day + 2], "{storage}");
            // Again, and for a group with no history: nothing to do.
            assert_eq!(sweep(&storage, "g", day + 2).unwrap(), 0);
            assert_eq!(sweep(&storage, "none", day + 2).unwrap(), 0);
        }
    }
}
