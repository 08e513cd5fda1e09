//! Spines in and training sets out: Parquet or CSV files, told apart by their extension.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{HistoryError, Result};

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("csv"))
}

/// Reads a whole table: CSV (with a header row; column types inferred) or Parquet.
pub fn read_table(path: &Path) -> Result<RecordBatch> {
    let action = || format!("reading {}", path.display());
    let batches: Vec<RecordBatch>;
    let schema;
    if is_csv(path) {
        let mut file = File::open(path).map_err(|e| HistoryError::io(action(), e))?;
        let format = arrow_csv::reader::Format::default().with_header(true);
        let (inferred, _) = format
            .infer_schema(&mut file, Some(10_000))
            .map_err(|e| HistoryError::Invalid(format!("{}: {e}", action())))?;
        let file = File::open(path).map_err(|e| HistoryError::io(action(), e))?;
        schema = Arc::new(inferred);
        let reader = arrow_csv::ReaderBuilder::new(schema.clone())
            .with_header(true)
            .with_batch_size(64 * 1024)
            .build(file)
            .map_err(|e| HistoryError::Invalid(format!("{}: {e}", action())))?;
        batches = reader
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| HistoryError::Invalid(format!("{}: {e}", action())))?;
    } else {
        let file = File::open(path).map_err(|e| HistoryError::io(action(), e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| HistoryError::Invalid(format!("{}: {e}", action())))?;
        schema = builder.schema().clone();
        let reader = builder
            .with_batch_size(64 * 1024)
            .build()
            .map_err(|e| HistoryError::Invalid(format!("{}: {e}", action())))?;
        batches = reader
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| HistoryError::Invalid(format!("{}: {e}", action())))?;
    }
    arrow_select::concat::concat_batches(&schema, &batches)
        .map_err(|e| HistoryError::Invalid(format!("{}: {e}", action())))
}

/// Writes `batch` as CSV (lists as their JSON-like text) or Parquet (zstd).
pub fn write_table(path: &Path, batch: &RecordBatch) -> Result<()> {
    let action = || format!("writing {}", path.display());
    let file = File::create(path).map_err(|e| HistoryError::io(action(), e))?;
    if is_csv(path) {
        let mut writer = arrow_csv::WriterBuilder::new()
            .with_header(true)
            .build(file);
        writer
            .write(batch)
            .map_err(|e| HistoryError::io(action(), e))?;
        return Ok(());
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props))
        .map_err(|e| HistoryError::io(action(), e))?;
    writer
        .write(batch)
        .map_err(|e| HistoryError::io(action(), e))?;
    writer.close().map_err(|e| HistoryError::io(action(), e))?;
    Ok(())
}
