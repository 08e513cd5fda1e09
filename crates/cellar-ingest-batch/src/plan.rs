//! The planner: a job split into shards from the data's real size.
//!
//! The rule, in three steps:
//!
//! 1. **Units.** Each Parquet row group is a unit, with its row count and compressed size from
//!    the file's footer (no data page is read). Each CSV file is a unit, its size as listed
//!    and its row count estimated from the average line length of its first 64 KiB.
//! 2. **Shard count.** `parallelism: N` asks for N shards. `auto` asks for as many as the data
//!    needs for each to hold about [`TARGET_SHARD_ROWS`] rows or [`TARGET_SHARD_BYTES`] bytes,
//!    whichever gives more shards.
//! 3. **Split and deal.** A unit larger than one shard's share of the rows is split: a row
//!    group into row ranges (read with a row selection), a CSV file into byte ranges that start
//!    at line starts (found by reading a few bytes at each split point), never into pieces
//!    smaller than [`MIN_PIECE_ROWS`] rows or [`MIN_PIECE_BYTES`] bytes. Pieces are then dealt
//!    largest first to the shard with the fewest rows so far, so shards differ by at most one
//!    piece. A job with fewer pieces than the shards asked for gets one shard per piece.
//!
//! CSV files are split at line starts on the assumption that no quoted field holds a line
//! break (true of most machine-written CSV). [`PlanOptions::split_csv`] off reads each CSV
//! file whole in one shard, which is always safe.
//!
//! A job whose SQL transform needs its whole input at once (an aggregate, a sort, a join: see
//! [`crate::transform`]) is one shard whatever its size, holding every piece unsplit.
//!
//! A PostgreSQL job is one shard of one [`Piece::Postgres`]: a query cannot be split in
//! general (see there), and planning does not run it, so its row count is unknown (0, not
//! exact).
//!
//! A [`Shard`] is plain serialisable data naming exactly what to read (file, its length when
//! planned, row group and rows, or byte range; or a query), so a shard can be sent to another
//! process.

use std::io::Read;

use cellar_spec::{FileFormat, Parallelism};
use parquet::file::metadata::ParquetMetaDataReader;
use serde::{Deserialize, Serialize};

use crate::error::{BatchError, Result};
use crate::files::{FileEntry, Source, Storage};
use crate::job::{BatchJob, JobInput};
use crate::transform::Scope;

/// Rows a shard holds, about, when parallelism is `auto`.
pub const TARGET_SHARD_ROWS: u64 = 256 * 1024;
/// Bytes a shard holds, about, when parallelism is `auto` (compressed bytes for Parquet).
pub const TARGET_SHARD_BYTES: u64 = 64 << 20;
/// Smallest row range a Parquet row group is split into.
pub const MIN_PIECE_ROWS: u64 = 16 * 1024;
/// Smallest byte range a CSV file is split into.
pub const MIN_PIECE_BYTES: u64 = 1 << 20;
/// Bytes of a CSV file read to estimate its row count.
const CSV_SAMPLE_BYTES: usize = 64 * 1024;

/// How the planner splits jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    pub target_rows: u64,
    pub target_bytes: u64,
    pub min_piece_rows: u64,
    pub min_piece_bytes: u64,
    /// Whether CSV files are split into byte ranges at line starts (see the module docs).
    pub split_csv: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            target_rows: TARGET_SHARD_ROWS,
            target_bytes: TARGET_SHARD_BYTES,
            min_piece_rows: MIN_PIECE_ROWS,
            min_piece_bytes: MIN_PIECE_BYTES,
            split_csv: true,
        }
    }
}

/// A job split into shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub ingestion: String,
    pub shards: Vec<Shard>,
    /// Files listed.
    pub files: usize,
    /// Rows in all shards: exact for Parquet, estimated for CSV (see `rows_exact`), unknown
    /// (0) for PostgreSQL.
    pub rows: u64,
    pub rows_exact: bool,
    /// Bytes in all shards (compressed bytes for Parquet).
    pub bytes: u64,
}

/// One unit of work: the pieces of files one worker reads, in file order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub ingestion: String,
    /// Position in the plan, from 0; names the shard in reports and rejects.
    pub index: u32,
    pub pieces: Vec<Piece>,
    /// Rows in the pieces: exact for Parquet, estimated for CSV, 0 for PostgreSQL.
    pub rows: u64,
    pub bytes: u64,
}

/// Exactly what to read of one file, or the query to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum Piece {
    /// Rows `offset..offset + rows` of one row group.
    Parquet {
        file: String,
        /// The file's length when planned; a reader refuses a file that changed since.
        file_len: u64,
        row_group: usize,
        /// Index in the file of the row group's first row (rejects name rows by it).
        group_first_row: u64,
        offset: u64,
        rows: u64,
        /// The row group's compressed bytes, prorated to the rows read.
        bytes: u64,
    },
    /// Bytes `start..end` of a CSV file, both at line starts (`start` 0 is the header's). The
    /// header line is read from the file's start whatever the range.
    Csv {
        file: String,
        file_len: u64,
        start: u64,
        end: u64,
        /// Rows in the range, estimated from the file's average line length.
        rows_estimate: u64,
    },
    /// Every row of the job's PostgreSQL query, read by one worker. A query is not split:
    /// splitting it would need a key to range over, and running it once per range would give
    /// each range its own snapshot (and cost as many scans, for a query that aggregates or
    /// sorts). The connection URL is the job's, not the piece's, so a shard sent elsewhere or
    /// recorded carries no password.
    Postgres { query: String },
}

impl Piece {
    /// The file read, or the query run.
    pub fn file(&self) -> &str {
        match self {
            Piece::Parquet { file, .. } | Piece::Csv { file, .. } => file,
            Piece::Postgres { query } => query,
        }
    }

    /// Rows in the piece (estimated for CSV, unknown (0) for PostgreSQL).
    pub fn rows(&self) -> u64 {
        match self {
            Piece::Parquet { rows, .. } => *rows,
            Piece::Csv { rows_estimate, .. } => *rows_estimate,
            Piece::Postgres { .. } => 0,
        }
    }

    pub fn bytes(&self) -> u64 {
        match self {
            Piece::Parquet { bytes, .. } => *bytes,
            Piece::Csv { start, end, .. } => end - start,
            Piece::Postgres { .. } => 0,
        }
    }

    /// Sort key: file, then position in it.
    fn position(&self) -> (&str, u64, u64) {
        match self {
            Piece::Parquet {
                file,
                row_group,
                offset,
                ..
            } => (file, *row_group as u64, *offset),
            Piece::Csv { file, start, .. } => (file, *start, 0),
            Piece::Postgres { query } => (query, 0, 0),
        }
    }
}

/// Plans `job` with the default options.
pub fn plan(job: &BatchJob) -> Result<Plan> {
    plan_with(job, &PlanOptions::default())
}

/// Plans `job`: lists its files, reads their footers (Parquet) or a sample (CSV), and splits
/// the work as the module docs say. Does blocking IO: call it off the async runtime; files in
/// object storage are read through the runtime, so it must run on one of its blocking threads
/// (`tokio::task::spawn_blocking`). A PostgreSQL job is one shard, planned without connecting.
pub fn plan_with(job: &BatchJob, options: &PlanOptions) -> Result<Plan> {
    let (path, format) = match &job.input {
        JobInput::Files { path, format } => (path, *format),
        JobInput::Postgres { query, .. } => return Ok(postgres_plan(job, query)),
    };
    let storage = &job.storage;
    let listed = storage.list(path, format)?;
    let mut units = Vec::new();
    for file in &listed {
        match format {
            FileFormat::Parquet => parquet_units(storage, file, &mut units)?,
            FileFormat::Csv => units.extend(csv_unit(storage, file)?),
        }
    }
    let rows: u64 = units.iter().map(|u| u.piece.rows()).sum();
    let bytes: u64 = units.iter().map(|u| u.piece.bytes()).sum();
    // A transform that needs the whole input at once makes the job one shard.
    let whole = match (&job.transform, units.first()) {
        (Some(transform), Some(first)) => {
            crate::transform::scope(job, transform, &first.piece)? == Scope::Whole
        }
        _ => false,
    };
    let wanted = match job.parallelism {
        _ if whole => 1,
        Parallelism::Fixed(n) => u64::from(n.max(1)),
        Parallelism::Auto => rows
            .div_ceil(options.target_rows.max(1))
            .max(bytes.div_ceil(options.target_bytes.max(1)))
            .max(1),
    };
    let share = rows.div_ceil(wanted).max(1);
    let mut pieces = Vec::new();
    for unit in units {
        unit.split(share, options, storage, &mut pieces)?;
    }
    let shards = deal(&job.ingestion, pieces, wanted);
    Ok(Plan {
        ingestion: job.ingestion.clone(),
        files: listed.len(),
        rows: shards.iter().map(|s| s.rows).sum(),
        rows_exact: format == FileFormat::Parquet,
        bytes: shards.iter().map(|s| s.bytes).sum(),
        shards,
    })
}

fn postgres_plan(job: &BatchJob, query: &str) -> Plan {
    Plan {
        ingestion: job.ingestion.clone(),
        shards: vec![Shard {
            ingestion: job.ingestion.clone(),
            index: 0,
            pieces: vec![Piece::Postgres {
                query: query.to_owned(),
            }],
            rows: 0,
            bytes: 0,
        }],
        files: 0,
        rows: 0,
        rows_exact: false,
        bytes: 0,
    }
}

/// A unit of planning before splitting: a whole row group or a whole CSV file.
struct Unit {
    piece: Piece,
    /// CSV only: where the first data line starts (after the header).
    data_start: u64,
}

fn parquet_units(storage: &Storage, file: &FileEntry, out: &mut Vec<Unit>) -> Result<()> {
    let f = storage.open(&file.path, file.len)?;
    let metadata = ParquetMetaDataReader::new()
        .parse_and_finish(&f)
        .map_err(|e| BatchError::source(&file.path, e))?;
    let mut first_row = 0u64;
    for (index, group) in metadata.row_groups().iter().enumerate() {
        let rows = u64::try_from(group.num_rows()).unwrap_or(0);
        if rows > 0 {
            out.push(Unit {
                piece: Piece::Parquet {
                    file: file.path.clone(),
                    file_len: file.len,
                    row_group: index,
                    group_first_row: first_row,
                    offset: 0,
                    rows,
                    bytes: u64::try_from(group.compressed_size()).unwrap_or(0),
                },
                data_start: 0,
            });
        }
        first_row += rows;
    }
    Ok(())
}

fn csv_unit(storage: &Storage, file: &FileEntry) -> Result<Option<Unit>> {
    let f = storage.open(&file.path, file.len)?;
    let mut sample = vec![0u8; CSV_SAMPLE_BYTES.min(file.len as usize)];
    f.range(0, sample.len() as u64)
        .and_then(|mut r| r.read_exact(&mut sample))
        .map_err(|e| BatchError::source(&file.path, e))?;
    let Some(header_end) = sample
        .iter()
        .position(|b| *b == b'\n')
        .map(|i| i as u64 + 1)
    else {
        // One line (or none): a header at most, no data; or a header longer than the sample,
        // read whole by one shard.
        if file.len as usize > sample.len() {
            return Ok(Some(csv_whole(file, 0, 1)));
        }
        return Ok(None);
    };
    if header_end >= file.len {
        return Ok(None);
    }
    let data = &sample[header_end as usize..];
    let lines = data.iter().filter(|b| **b == b'\n').count() as u64;
    let data_len = file.len - header_end;
    let rows_estimate = if lines == 0 || data.len() as u64 >= data_len {
        // The sample holds the whole file (or not one whole line): count, do not estimate.
        lines + u64::from(data.last().is_some_and(|b| *b != b'\n'))
    } else {
        let average = data.len() as u64 / lines;
        data_len.div_ceil(average.max(1))
    };
    Ok(Some(csv_whole(file, header_end, rows_estimate)))
}

fn csv_whole(file: &FileEntry, data_start: u64, rows_estimate: u64) -> Unit {
    Unit {
        piece: Piece::Csv {
            file: file.path.clone(),
            file_len: file.len,
            start: 0,
            end: file.len,
            rows_estimate,
        },
        data_start,
    }
}

impl Unit {
    /// Pushes this unit's pieces onto `out`: itself, or equal parts of at most about `share`
    /// rows each.
    fn split(
        self,
        share: u64,
        options: &PlanOptions,
        storage: &Storage,
        out: &mut Vec<Piece>,
    ) -> Result<()> {
        let rows = self.piece.rows();
        let parts = rows.div_ceil(share);
        match self.piece {
            Piece::Parquet {
                file,
                file_len,
                row_group,
                group_first_row,
                rows,
                bytes,
                ..
            } => {
                let parts = parts.min(rows / options.min_piece_rows.max(1)).max(1);
                let mut offset = 0;
                for k in 0..parts {
                    let end = rows * (k + 1) / parts;
                    out.push(Piece::Parquet {
                        file: file.clone(),
                        file_len,
                        row_group,
                        group_first_row,
                        offset,
                        rows: end - offset,
                        bytes: prorate(bytes, end - offset, rows),
                    });
                    offset = end;
                }
            }
            Piece::Csv {
                file,
                file_len,
                rows_estimate,
                ..
            } => {
                let data_len = file_len - self.data_start;
                let parts = if options.split_csv {
                    parts.min(data_len / options.min_piece_bytes.max(1)).max(1)
                } else {
                    1
                };
                let mut bounds = vec![0];
                if parts > 1 {
                    let f = storage.open(&file, file_len)?;
                    for k in 1..parts {
                        let target = self.data_start + data_len * k / parts;
                        let at = next_line_start(&f, target, file_len)
                            .map_err(|e| BatchError::source(&file, e))?;
                        if at > *bounds.last().unwrap_or(&0) && at < file_len {
                            bounds.push(at);
                        }
                    }
                }
                bounds.push(file_len);
                for pair in bounds.windows(2) {
                    let (start, end) = (pair[0], pair[1]);
                    out.push(Piece::Csv {
                        file: file.clone(),
                        file_len,
                        start,
                        end,
                        rows_estimate: prorate(rows_estimate, end - start, file_len),
                    });
                }
            }
            piece @ Piece::Postgres { .. } => out.push(piece),
        }
        Ok(())
    }
}

/// `value * part / whole`, without overflow.
fn prorate(value: u64, part: u64, whole: u64) -> u64 {
    (u128::from(value) * u128::from(part) / u128::from(whole.max(1))) as u64
}

/// The first line start at or after `at`: just after the first `\n` at or after `at - 1`
/// (`file_len` when there is none).
fn next_line_start(f: &Source, at: u64, file_len: u64) -> std::io::Result<u64> {
    let mut pos = at.saturating_sub(1);
    let mut range = f.range(pos, file_len)?;
    let mut buf = [0u8; 8192];
    loop {
        let n = range.read(&mut buf)?;
        if n == 0 {
            return Ok(file_len);
        }
        if let Some(i) = buf[..n].iter().position(|b| *b == b'\n') {
            return Ok(pos + i as u64 + 1);
        }
        pos += n as u64;
    }
}

/// Deals pieces to at most `wanted` shards: largest first, each to the shard with the fewest
/// rows so far (LPT scheduling), then each shard's pieces in file order.
fn deal(ingestion: &str, mut pieces: Vec<Piece>, wanted: u64) -> Vec<Shard> {
    let count = (wanted as usize).min(pieces.len());
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    // Stable: equal pieces keep file order, so plans are deterministic.
    order.sort_by_key(|i| std::cmp::Reverse(pieces[*i].rows().max(1)));
    let mut bins: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); count];
    for i in order {
        // Fewest rows, then lowest index: deterministic.
        let Some(bin) = bins
            .iter_mut()
            .min_by_key(|(rows, held)| (*rows, held.len()))
        else {
            break;
        };
        bin.0 += pieces[i].rows().max(1);
        bin.1.push(i);
    }
    let mut slots: Vec<Option<Piece>> = pieces.drain(..).map(Some).collect();
    let mut shards: Vec<Shard> = bins
        .into_iter()
        .map(|(_, held)| {
            let mut pieces: Vec<Piece> = held.into_iter().filter_map(|i| slots[i].take()).collect();
            pieces.sort_by(|a, b| a.position().cmp(&b.position()));
            Shard {
                ingestion: ingestion.to_owned(),
                index: 0,
                rows: pieces.iter().map(Piece::rows).sum(),
                bytes: pieces.iter().map(Piece::bytes).sum(),
                pieces,
            }
        })
        .collect();
    // Shards in the order of their first piece, so shard 0 starts at the first file.
    shards.sort_by(|a, b| {
        let first = |s: &Shard| {
            s.pieces
                .first()
                .map(|p| (p.file().to_owned(), p.position().1, p.position().2))
        };
        first(a).cmp(&first(b))
    });
    for (i, shard) in shards.iter_mut().enumerate() {
        shard.index = i as u32;
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(file: &str, row_group: usize, rows: u64) -> Piece {
        Piece::Parquet {
            file: file.into(),
            file_len: 1,
            row_group,
            group_first_row: 0,
            offset: 0,
            rows,
            bytes: rows,
        }
    }

    #[test]
    fn pieces_are_dealt_evenly_largest_first() {
        let pieces = vec![
            group("a", 0, 100),
            group("a", 1, 60),
            group("b", 0, 50),
            group("b", 1, 40),
            group("c", 0, 10),
        ];
        let shards = deal("j", pieces, 2);
        let rows: Vec<u64> = shards.iter().map(|s| s.rows).collect();
        assert_eq!(rows, vec![140, 120]);
        assert_eq!(shards[0].index, 0);
        assert_eq!(
            shards[0].pieces,
            vec![group("a", 0, 100), group("b", 1, 40)]
        );
        assert_eq!(
            shards[1].pieces,
            vec![group("a", 1, 60), group("b", 0, 50), group("c", 0, 10)]
        );
    }

    #[test]
    fn never_more_shards_than_pieces() {
        let shards = deal("j", vec![group("a", 0, 5), group("a", 1, 5)], 8);
        assert_eq!(shards.len(), 2);
    }

    #[test]
    fn large_row_groups_split_into_row_ranges_but_not_below_the_minimum() {
        let options = PlanOptions::default();
        let unit = Unit {
            piece: group("a", 3, 100_000),
            data_start: 0,
        };
        let mut out = Vec::new();
        unit.split(30_000, &options, &Storage::default(), &mut out)
            .unwrap();
        let ranges: Vec<(u64, u64)> = out
            .iter()
            .map(|p| match p {
                Piece::Parquet { offset, rows, .. } => (*offset, *rows),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            ranges,
            vec![
                (0, 25_000),
                (25_000, 25_000),
                (50_000, 25_000),
                (75_000, 25_000)
            ]
        );
        let mut out = Vec::new();
        Unit {
            piece: group("a", 0, 20_000),
            data_start: 0,
        }
        .split(1_000, &options, &Storage::default(), &mut out)
        .unwrap();
        assert_eq!(out.len(), 1, "20k rows hold one 16k-row piece at most");
    }
}
