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

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{
    new_null_array, ArrayRef, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use cellar_spec::{Value, ValueType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{HistoryError, Result};
use crate::frame::Header;

pub const ENTITY_KEY: &str = "entity_key";
pub const EVENT_TIME: &str = "event_time";
pub const WRITTEN_AT: &str = "written_at";
pub const APPLIED: &str = "applied";
pub const SEQUENCE: &str = "sequence";
/// The columns every history file starts with.
pub const META_COLUMNS: usize = 5;
/// Rows per row group: a training set reads a group's files whole, so large groups cost
/// nothing and compress better.
const ROW_GROUP_ROWS: usize = 256 * 1024;

/// The Arrow type a history column of feature type `t` has.
pub fn column_type(t: ValueType) -> DataType {
    cellar_expr::arrow::data_type(t).unwrap_or(DataType::Utf8)
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
        columns.push(match t {
            ValueType::Map(_) => {
                let mut builder = StringBuilder::new();
                for value in values {
                    match value {
                        Value::Null => builder.append_null(),
                        v => builder.append_value(v.to_json().to_string()),
                    }
                }
                Arc::new(builder.finish())
            }
            t => cellar_expr::arrow::column(*t, values),
        });
    }
    RecordBatch::try_new(schema, columns)
        .map_err(|e| HistoryError::Encode(format!("history batch of `{}`: {e}", header.group)))
}

/// The directory of one group's history (its storage name).
pub fn group_dir(root: &Path, storage: &str) -> PathBuf {
    root.join(storage)
}

/// The path of a file of `storage`'s history for event date `date` (days since the epoch).
pub fn file_path(root: &Path, storage: &str, date: i64, name: &str) -> PathBuf {
    group_dir(root, storage)
        .join(format!("date={}", format_date(date)))
        .join(name)
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

/// Writes `batch` to `path` whole: into a temporary file first, synced, then renamed, so a
/// reader never sees half a file and a crash leaves none.
pub fn write_file(path: &Path, batch: &RecordBatch) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| HistoryError::Io(format!("{} has no directory", path.display())))?;
    fs::create_dir_all(dir)
        .map_err(|e| HistoryError::io(format!("creating {}", dir.display()), e))?;
    let tmp = path.with_extension("parquet.tmp");
    let action = || format!("writing {}", tmp.display());
    let file = fs::File::create(&tmp).map_err(|e| HistoryError::io(action(), e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))
        .map_err(|e| HistoryError::io(action(), e))?;
    writer
        .write(batch)
        .map_err(|e| HistoryError::io(action(), e))?;
    let file = writer
        .into_inner()
        .map_err(|e| HistoryError::io(action(), e))?;
    file.sync_all().map_err(|e| HistoryError::io(action(), e))?;
    drop(file);
    fs::rename(&tmp, path)
        .map_err(|e| HistoryError::io(format!("renaming {} into place", tmp.display()), e))?;
    // The rename itself survives a crash only once the directory is synced.
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The history files of one group whose event dates fall in `days` (inclusive), with their
/// day, sorted by path.
pub fn list(root: &Path, storage: &str, days: (i64, i64)) -> Result<Vec<(i64, PathBuf)>> {
    let dir = group_dir(root, storage);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(HistoryError::io(format!("listing {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HistoryError::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(day) = name
            .to_str()
            .and_then(|n| n.strip_prefix("date="))
            .and_then(parse_date)
        else {
            continue;
        };
        if day < days.0 || day > days.1 {
            continue;
        }
        let files = fs::read_dir(entry.path())
            .map_err(|e| HistoryError::io(format!("listing {}", entry.path().display()), e))?;
        for file in files {
            let file = file.map_err(|e| HistoryError::io("listing history files", e))?;
            let path = file.path();
            if path.extension().is_some_and(|x| x == "parquet") {
                out.push((day, path));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Removes a group's date partitions before day `keep_from` (days since the epoch): what its
/// `retention.history` no longer keeps. Returns the partitions removed. A training set reading
/// one of them meanwhile lists again and finds it gone.
pub fn sweep(root: &Path, storage: &str, keep_from: i64) -> Result<usize> {
    let mut removed = 0;
    let mut days: Vec<i64> = list(root, storage, (i64::MIN, keep_from.saturating_sub(1)))?
        .into_iter()
        .map(|(day, _)| day)
        .collect();
    days.dedup();
    for day in days {
        let dir = group_dir(root, storage).join(format!("date={}", format_date(day)));
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(HistoryError::io(format!("removing {}", dir.display()), e)),
        }
    }
    Ok(removed)
}

/// Reads a history file as batches of the history schema of `features`: the meta columns,
/// then each feature by name. A feature the file lacks, or holds with another type (it was
/// written before the feature was added or retyped), reads as nulls.
pub fn read(path: &Path, features: &[(String, ValueType)]) -> Result<Vec<RecordBatch>> {
    let action = || format!("reading {}", path.display());
    let file = fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => HistoryError::Gone(path.display().to_string()),
        _ => HistoryError::io(action(), e),
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| HistoryError::io(action(), e))?;
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
                path.display(),
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
        .map_err(|e| HistoryError::io(action(), e))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| HistoryError::io(action(), e))?;
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
                .map_err(|e| HistoryError::Corrupt(format!("{}: {e}", path.display())))?,
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
        let day = 20_000;
        for d in day..day + 3 {
            let path = file_path(dir.path(), "g", d, "a.parquet");
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"").unwrap();
        }
        assert_eq!(sweep(dir.path(), "g", day + 2).unwrap(), 2);
        let left: Vec<i64> = list(dir.path(), "g", (i64::MIN, i64::MAX))
            .unwrap()
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        assert_eq!(left, [day + 2]);
        // Again, and for a group with no history: nothing to do.
        assert_eq!(sweep(dir.path(), "g", day + 2).unwrap(), 0);
        assert_eq!(sweep(dir.path(), "none", day + 2).unwrap(), 0);
    }
}
