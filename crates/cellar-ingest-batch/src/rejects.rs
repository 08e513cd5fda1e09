//! Rejected rows: where each one is and why it was refused, kept so that nothing is lost
//! silently.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::error::{BatchError, Result};

/// One row that did not become a record, and why.
///
/// A row is located by `file` and, for Parquet, `row` (its 0-based index in the file, across
/// row groups); for CSV by `byte` (the offset of its first byte in the file) and, when the
/// shard read the file from its start, `line` (1-based, the header being line 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub ingestion: String,
    pub shard: u32,
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte: Option<u64>,
    /// The column at fault; `None` when the row as a whole is (a CSV line with the wrong
    /// number of fields, a record over the group's size limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// What was wrong, e.g. `feature `age`: expected int64, got the text "old"`.
    pub reason: String,
}

/// Where rejected rows go. Shards call it from their reader threads, a batch of rejects at a
/// time; an error fails the shard, since a reject that cannot be kept would be a lost row.
pub trait Rejects: Send + Sync {
    fn record(&self, rejects: &[Reject]) -> Result<()>;
}

/// Rejects appended to a file as JSON lines, one object per row (the fields of [`Reject`]).
/// Shared by every shard of a job; each batch of rejects is written and flushed under one lock
/// so lines never interleave.
#[derive(Debug)]
pub struct RejectFile {
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl RejectFile {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<RejectFile> {
        let path = path.as_ref().to_path_buf();
        let file = File::create(&path)
            .map_err(|e| BatchError::Rejects(format!("{}: {e}", path.display())))?;
        Ok(RejectFile {
            path,
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads back a reject file's rows.
    pub fn read(path: impl AsRef<Path>) -> Result<Vec<Reject>> {
        let path = path.as_ref();
        let fail =
            |e: &dyn std::fmt::Display| BatchError::Rejects(format!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| fail(&e))?;
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| fail(&e)))
            .collect()
    }
}

impl Rejects for RejectFile {
    fn record(&self, rejects: &[Reject]) -> Result<()> {
        if rejects.is_empty() {
            return Ok(());
        }
        let fail = |e: &dyn std::fmt::Display| {
            BatchError::Rejects(format!("{}: {e}", self.path.display()))
        };
        // A writer that panicked mid-line leaves at worst one broken line; later rejects are
        // still worth keeping.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        for r in rejects {
            serde_json::to_writer(&mut *out, r).map_err(|e| fail(&e))?;
            out.write_all(b"\n").map_err(|e| fail(&e))?;
        }
        out.flush().map_err(|e| fail(&e))
    }
}

/// Rejects kept in memory: for tests, and for callers that show them rather than file them.
#[derive(Debug, Default)]
pub struct MemoryRejects {
    rows: Mutex<Vec<Reject>>,
}

impl MemoryRejects {
    /// Every reject recorded so far, in arrival order.
    pub fn rejects(&self) -> Vec<Reject> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Rejects for MemoryRejects {
    fn record(&self, rejects: &[Reject]) -> Result<()> {
        self.rows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(rejects);
        Ok(())
    }
}
