//! Spines in and training sets out: Parquet or CSV files, told apart by their extension. A
//! spine is read in chunks of rows and a training set written chunk after chunk, so neither
//! has to fit in memory whole.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{HistoryError, Result};

fn is_csv(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("csv"))
}

/// Rows read from a file at once.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// Reads a whole table: CSV (with a header row; column types inferred) or Parquet.
pub fn read_table(path: &Path) -> Result<RecordBatch> {
    let mut chunks = read_chunks(path, usize::MAX)?;
    let schema = chunks.schema();
    let batches = chunks.by_ref().collect::<Result<Vec<_>>>()?;
    arrow_select::concat::concat_batches(&schema, &batches)
        .map_err(|e| HistoryError::Invalid(format!("reading {}: {e}", path.display())))
}

/// A table read in chunks of up to `rows` rows: CSV (with a header row; column types inferred
/// from its first 10,000 rows) or Parquet.
pub fn read_chunks(path: &Path, rows: usize) -> Result<Chunks> {
    let action = || format!("reading {}", path.display());
    let invalid = |e: &dyn std::fmt::Display| HistoryError::Invalid(format!("{}: {e}", action()));
    let (schema, reader): (
        SchemaRef,
        Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
    ) = if is_csv(path) {
        let mut file = File::open(path).map_err(|e| HistoryError::io(action(), e))?;
        let format = arrow_csv::reader::Format::default().with_header(true);
        let (inferred, _) = format
            .infer_schema(&mut file, Some(10_000))
            .map_err(|e| invalid(&e))?;
        let file = File::open(path).map_err(|e| HistoryError::io(action(), e))?;
        let schema = Arc::new(inferred);
        let reader = arrow_csv::ReaderBuilder::new(schema.clone())
            .with_header(true)
            .with_batch_size(READ_BATCH_ROWS)
            .build(file)
            .map_err(|e| invalid(&e))?;
        let path = path.display().to_string();
        (
            schema,
            Box::new(reader.map(move |b| {
                b.map_err(|e| HistoryError::Invalid(format!("reading {path}: {e}")))
            })),
        )
    } else {
        let file = File::open(path).map_err(|e| HistoryError::io(action(), e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| invalid(&e))?;
        let schema = builder.schema().clone();
        let reader = builder
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(|e| invalid(&e))?;
        let path = path.display().to_string();
        (
            schema,
            Box::new(reader.map(move |b| {
                b.map_err(|e| HistoryError::Invalid(format!("reading {path}: {e}")))
            })),
        )
    };
    Ok(Chunks {
        schema,
        reader,
        rows: rows.max(1),
        done: false,
        yielded: false,
        pending: None,
    })
}

/// The chunks of [`read_chunks`]; an empty table gives one empty chunk.
pub struct Chunks {
    schema: SchemaRef,
    reader: Box<dyn Iterator<Item = Result<RecordBatch>> + Send>,
    rows: usize,
    done: bool,
    yielded: bool,
    /// The rest of a batch split at the end of the last chunk.
    pending: Option<RecordBatch>,
}

impl Chunks {
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl Iterator for Chunks {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        if self.done {
            return None;
        }
        let mut batches = Vec::new();
        let mut rows = 0;
        while rows < self.rows {
            let batch = match self.pending.take() {
                Some(batch) => batch,
                None => match self.reader.next() {
                    None => {
                        self.done = true;
                        break;
                    }
                    Some(Err(e)) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                    Some(Ok(batch)) => batch,
                },
            };
            // A batch past the chunk's end is split: its rest starts the next chunk.
            let wanted = self.rows - rows;
            if batch.num_rows() > wanted {
                self.pending = Some(batch.slice(wanted, batch.num_rows() - wanted));
                batches.push(batch.slice(0, wanted));
                rows += wanted;
            } else {
                rows += batch.num_rows();
                batches.push(batch);
            }
        }
        if self.pending.is_some() {
            self.done = false;
        }
        // Past the first chunk, the end of the table is no chunk at all.
        if rows == 0 && self.yielded {
            return None;
        }
        self.yielded = true;
        Some(
            arrow_select::concat::concat_batches(&self.schema, &batches)
                .map_err(|e| HistoryError::Invalid(format!("joining a chunk of rows: {e}"))),
        )
    }
}

/// Writes `batch` as CSV (lists as their JSON-like text) or Parquet (zstd).
pub fn write_table(path: &Path, batch: &RecordBatch) -> Result<()> {
    let mut writer = TableWriter::create(path, batch.schema())?;
    writer.write(batch)?;
    writer.close()
}

/// A table written chunk after chunk: CSV or Parquet (zstd) by the path's extension.
pub struct TableWriter {
    path: String,
    sink: Sink,
}

enum Sink {
    Csv(arrow_csv::Writer<File>),
    Parquet(ArrowWriter<File>),
}

impl TableWriter {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<TableWriter> {
        let action = || format!("writing {}", path.display());
        let file = File::create(path).map_err(|e| HistoryError::io(action(), e))?;
        let sink = if is_csv(path) {
            Sink::Csv(
                arrow_csv::WriterBuilder::new()
                    .with_header(true)
                    .build(file),
            )
        } else {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::default()))
                .build();
            Sink::Parquet(
                ArrowWriter::try_new(file, schema, Some(props))
                    .map_err(|e| HistoryError::io(action(), e))?,
            )
        };
        Ok(TableWriter {
            path: path.display().to_string(),
            sink,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let action = || format!("writing {}", self.path);
        match &mut self.sink {
            Sink::Csv(w) => w.write(batch).map_err(|e| HistoryError::io(action(), e)),
            Sink::Parquet(w) => w.write(batch).map_err(|e| HistoryError::io(action(), e)),
        }
    }

    pub fn close(self) -> Result<()> {
        let action = || format!("writing {}", self.path);
        match self.sink {
            Sink::Csv(w) => {
                w.into_inner()
                    .sync_all()
                    .map_err(|e| HistoryError::io(action(), e))?;
            }
            Sink::Parquet(w) => {
                w.close().map_err(|e| HistoryError::io(action(), e))?;
            }
        }
        Ok(())
    }
}
