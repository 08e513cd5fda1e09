//! Shard readers: the pieces of a shard read as a stream of Arrow record batches, a batch of
//! [`JobOptions::batch_rows`](crate::JobOptions) rows at a time, so memory holds a batch per
//! column read (and, for Parquet, a page per column), never a whole file.
//!
//! Parquet is read with only the job's columns projected, one row group (or row range of one)
//! per piece. CSV is parsed with the `csv` crate (the parser `arrow-csv` itself is built on)
//! into Arrow string columns: `arrow-csv` fails a whole batch on one malformed line, where here
//! a line with the wrong number of fields or bytes that are not UTF-8 is rejected alone, by its
//! position. Every CSV column is text; mapping parses it to the feature's type, row by row. An
//! empty CSV field is null.
//!
//! A PostgreSQL piece is read by [`crate::postgres`]: the query's rows streamed into typed
//! Arrow columns.

use std::io::{BufReader, Read};
use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::{ArrayRef, RecordBatch, RecordBatchReader};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
    RowSelector,
};
use parquet::arrow::ProjectionMask;

use crate::error::{BatchError, Result};
use crate::files::Source;
use crate::job::{BatchJob, JobInput};
use crate::map::{Locator, Mapper, Place};
use crate::plan::{Piece, Shard};
use crate::rejects::Reject;

/// What a reader hands on for each record batch: the file's mapper, the batch, where its rows
/// are, and the rows the reader itself rejected (malformed CSV lines). Returns whether to go on.
pub(crate) type OnBatch<'a> =
    dyn FnMut(&Mapper<'_>, &RecordBatch, Locator<'_>, Vec<Reject>) -> Result<bool> + 'a;

/// Reads every piece of `shard` in order (through the job's transform, when it has one);
/// stops early when `each` says so.
pub(crate) fn read_shard(shard: &Shard, job: &BatchJob, each: &mut OnBatch<'_>) -> Result<()> {
    if let Some(transform) = &job.transform {
        return crate::transform::read(shard, job, transform, each).map(drop);
    }
    // Consecutive pieces of one file share its open handle and decoded footer.
    let mut open: Option<(String, Source, ArrowReaderMetadata)> = None;
    for piece in &shard.pieces {
        let go_on = match piece {
            Piece::Parquet {
                file,
                file_len,
                row_group,
                group_first_row,
                offset,
                rows,
                ..
            } => {
                if open.as_ref().is_none_or(|(path, _, _)| path != file) {
                    let f = job.storage.open(file, *file_len)?;
                    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
                    let metadata = ArrowReaderMetadata::load(&f, options)
                        .map_err(|e| BatchError::source(file, e))?;
                    open = Some((file.clone(), f, metadata));
                }
                let Some((_, f, metadata)) = &open else {
                    continue;
                };
                let range = ParquetRange {
                    row_group: *row_group,
                    first_row: group_first_row + offset,
                    offset: *offset,
                    rows: *rows,
                };
                read_parquet(shard, job, file, f, metadata, range, each)?
            }
            Piece::Csv {
                file,
                file_len,
                start,
                end,
                ..
            } => read_csv(shard, job, file, *file_len, *start, *end, each)?,
            Piece::Postgres { query } => {
                let JobInput::Postgres { url, .. } = &job.input else {
                    return Err(BatchError::Job {
                        ingestion: job.ingestion.clone(),
                        reason: "a shard holds a PostgreSQL query but the job reads files".into(),
                    });
                };
                crate::postgres::read(shard, job, url, query, each)?
            }
        };
        if !go_on {
            break;
        }
    }
    Ok(())
}

/// The columns of a Parquet file, from its footer.
pub(crate) fn parquet_schema(job: &BatchJob, file: &str, file_len: u64) -> Result<Schema> {
    let f = job.storage.open(file, file_len)?;
    let options = ArrowReaderOptions::new().with_skip_arrow_metadata(true);
    let metadata =
        ArrowReaderMetadata::load(&f, options).map_err(|e| BatchError::source(file, e))?;
    Ok(metadata.schema().as_ref().clone())
}

/// The columns of a CSV file, from its header: every one text.
pub(crate) fn csv_schema(job: &BatchJob, file: &str, file_len: u64) -> Result<Schema> {
    let f = job.storage.open(file, file_len)?;
    let mut header = csv::ByteRecord::new();
    f.range(0, file_len)
        .map(|r| csv_reader(BufReader::with_capacity(1 << 16, r)))
        .and_then(|mut reader| reader.read_byte_record(&mut header).map_err(Into::into))
        .map_err(|e| BatchError::source(file, e))?;
    Ok(text_schema(&header_names(&header)))
}

fn text_schema(names: &[String]) -> Schema {
    Schema::new(
        names
            .iter()
            .map(|n| Field::new(n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    )
}

struct ParquetRange {
    row_group: usize,
    /// Index in the file of the first row read.
    first_row: u64,
    /// Rows of the row group skipped before the range.
    offset: u64,
    rows: u64,
}

fn read_parquet(
    shard: &Shard,
    job: &BatchJob,
    file: &str,
    f: &Source,
    metadata: &ArrowReaderMetadata,
    range: ParquetRange,
    each: &mut OnBatch<'_>,
) -> Result<bool> {
    let fail = |e: &dyn std::fmt::Display| BatchError::source(file, e);
    let schema = metadata.schema();
    // Checks every column against the whole file's schema, so a missing one is named with the
    // columns the file does have.
    Mapper::new(job, shard.index, file, schema)?;
    let mut roots: Vec<usize> = job
        .columns()
        .iter()
        .filter_map(|c| schema.index_of(c).ok())
        .collect();
    roots.sort_unstable();
    roots.dedup();
    let parquet = metadata.metadata();
    let Some(group) = parquet.row_groups().get(range.row_group) else {
        return Err(fail(&format!(
            "the file has no row group {}: it changed since the job was planned",
            range.row_group
        )));
    };
    let group_rows = u64::try_from(group.num_rows()).unwrap_or(0);
    if range.offset + range.rows > group_rows {
        return Err(fail(&format!(
            "row group {} has {group_rows} rows, not {}: the file changed since the job was planned",
            range.row_group,
            range.offset + range.rows
        )));
    }
    let mask = ProjectionMask::roots(parquet.file_metadata().schema_descr(), roots);
    let handle = f.try_clone().map_err(|e| fail(&e))?;
    let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(handle, metadata.clone())
        .with_row_groups(vec![range.row_group])
        .with_projection(mask)
        .with_batch_size(job.options.batch_rows.max(1));
    if range.rows < group_rows {
        let mut selectors = Vec::with_capacity(3);
        if range.offset > 0 {
            selectors.push(RowSelector::skip(range.offset as usize));
        }
        selectors.push(RowSelector::select(range.rows as usize));
        let after = group_rows - range.offset - range.rows;
        if after > 0 {
            selectors.push(RowSelector::skip(after as usize));
        }
        builder = builder.with_row_selection(RowSelection::from(selectors));
    }
    let reader = builder.build().map_err(|e| fail(&e))?;
    let mapper = Mapper::new(job, shard.index, file, &RecordBatchReader::schema(&reader))?;
    let mut first = range.first_row;
    for batch in reader {
        let batch = batch.map_err(|e| fail(&e))?;
        let rows = batch.num_rows() as u64;
        if !each(&mapper, &batch, Locator::Rows { first }, Vec::new())? {
            return Ok(false);
        }
        first += rows;
    }
    Ok(true)
}

/// The header's field names; a leading UTF-8 byte order mark is not part of the first.
fn header_names(header: &csv::ByteRecord) -> Vec<String> {
    header
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let name = if i == 0 {
                name.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(name)
            } else {
                name
            };
            String::from_utf8_lossy(name).into_owned()
        })
        .collect()
}

fn csv_reader<R: Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        // Lines with the wrong number of fields are rejected one by one, not fatal.
        .flexible(true)
        .from_reader(input)
}

#[allow(clippy::too_many_arguments)]
fn read_csv(
    shard: &Shard,
    job: &BatchJob,
    file: &str,
    file_len: u64,
    start: u64,
    end: u64,
    each: &mut OnBatch<'_>,
) -> Result<bool> {
    let fail = |e: &dyn std::fmt::Display| BatchError::source(file, e);
    let f = job.storage.open(file, file_len)?;
    let range = |from: u64, to: u64| {
        f.range(from, to)
            .map(|r| csv_reader(BufReader::with_capacity(1 << 16, r)))
            .map_err(|e| fail(&e))
    };
    let mut header = csv::ByteRecord::new();
    let mut reader;
    if start == 0 {
        reader = range(0, end)?;
        reader.read_byte_record(&mut header).map_err(|e| fail(&e))?;
    } else {
        range(0, file_len)?
            .read_byte_record(&mut header)
            .map_err(|e| fail(&e))?;
        reader = range(start, end)?;
    }
    let names = header_names(&header);
    let all = text_schema(&names);
    // Checks the columns against the whole header, so a missing one is named with the others.
    Mapper::new(job, shard.index, file, &all)?;
    let columns: Vec<usize> = job
        .columns()
        .iter()
        .filter_map(|c| names.iter().position(|n| n == c))
        .collect();
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|i| Field::new(&names[*i], DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let mapper = Mapper::new(job, shard.index, file, &schema)?;
    let batch_rows = job.options.batch_rows.max(1);
    let mut builders: Vec<StringBuilder> = columns
        .iter()
        .map(|_| StringBuilder::with_capacity(batch_rows, batch_rows * 16))
        .collect();
    let mut bytes: Vec<u64> = Vec::with_capacity(batch_rows);
    let mut lines: Vec<u64> = Vec::with_capacity(batch_rows);
    let mut rejected: Vec<Reject> = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        let more = reader.read_byte_record(&mut record).map_err(|e| fail(&e))?;
        if more {
            let (byte, line) = record
                .position()
                .map_or((start, 0), |p| (start + p.byte(), p.line()));
            let place = Place {
                row: None,
                line: (start == 0).then_some(line),
                byte: Some(byte),
            };
            if record.len() != names.len() {
                rejected.push(mapper.reject(
                    place,
                    None,
                    format!(
                        "the line has {} fields, the header {}",
                        record.len(),
                        names.len()
                    ),
                ));
            } else if let Some(&i) = columns
                .iter()
                .find(|&&i| std::str::from_utf8(&record[i]).is_err())
            {
                rejected.push(mapper.reject(
                    place,
                    Some(&names[i]),
                    format!("column `{}` is not UTF-8 text", names[i]),
                ));
            } else {
                for (builder, &i) in builders.iter_mut().zip(&columns) {
                    match std::str::from_utf8(&record[i]) {
                        Ok("") | Err(_) => builder.append_null(),
                        Ok(s) => builder.append_value(s),
                    }
                }
                bytes.push(byte);
                lines.push(line);
            }
        }
        // Rejected lines count towards a batch too, so a file of bad lines is handed on (and
        // judged against the reject ratio) as steadily as a good one.
        let full = bytes.len() + rejected.len() >= batch_rows;
        if full || (!more && (!bytes.is_empty() || !rejected.is_empty())) {
            let arrays: Vec<ArrayRef> = builders
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef)
                .collect();
            let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| fail(&e))?;
            let locator = Locator::Csv {
                bytes: &bytes,
                lines: (start == 0).then_some(lines.as_slice()),
            };
            if !each(&mapper, &batch, locator, std::mem::take(&mut rejected))? {
                return Ok(false);
            }
            bytes.clear();
            lines.clear();
        }
        if !more {
            return Ok(true);
        }
    }
}
