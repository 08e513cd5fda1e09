//! Where batch files come from: the one seam between the planner and readers and the place the
//! files live. Only local disk for now; object storage (`object_store`) will answer the same
//! two calls, [`list`] and [`open`], so nothing else changes when it comes.

use std::fs::File;
use std::path::Path;

use cellar_spec::FileFormat;

use crate::error::{BatchError, Result};

/// A file to read, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileEntry {
    pub path: String,
    /// Its length when listed; readers check it did not change since the job was planned.
    pub len: u64,
}

/// The files a `batch.files.path` names, sorted by path: a glob (`data/*.parquet`,
/// `data/**/part-*.csv`), a directory (its files with the format's extension, not recursing),
/// or one file. Names starting with `.` or `_` are left out of globs and directories: writers
/// such as Spark leave `_SUCCESS` markers and `.crc` files beside their data.
pub(crate) fn list(pattern: &str, format: FileFormat) -> Result<Vec<FileEntry>> {
    let mut out = Vec::new();
    let is_glob = pattern.contains(['*', '?', '[']);
    if is_glob {
        let paths = glob::glob(pattern).map_err(|e| BatchError::source(pattern, e))?;
        for path in paths {
            let path = path.map_err(|e| BatchError::source(pattern, e))?;
            if !is_hidden(&path) {
                push_file(&mut out, &path)?;
            }
        }
    } else if Path::new(pattern).is_dir() {
        let extension = match format {
            FileFormat::Parquet => "parquet",
            FileFormat::Csv => "csv",
        };
        let entries = std::fs::read_dir(pattern).map_err(|e| BatchError::source(pattern, e))?;
        for entry in entries {
            let path = entry.map_err(|e| BatchError::source(pattern, e))?.path();
            if !is_hidden(&path) && path.extension().is_some_and(|e| e == extension) {
                push_file(&mut out, &path)?;
            }
        }
    } else {
        let meta = std::fs::metadata(pattern).map_err(|e| BatchError::source(pattern, e))?;
        out.push(FileEntry {
            path: pattern.to_owned(),
            len: meta.len(),
        });
    }
    if out.is_empty() {
        return Err(BatchError::source(pattern, "no files match"));
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.') || n.starts_with('_'))
}

fn push_file(out: &mut Vec<FileEntry>, path: &Path) -> Result<()> {
    let display = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| BatchError::source(&display, e))?;
    if meta.is_file() {
        out.push(FileEntry {
            path: display,
            len: meta.len(),
        });
    }
    Ok(())
}

/// Opens a listed file for reading, checking it still has the length it was planned with: a
/// file rewritten since would make row groups and byte ranges point at other data.
pub(crate) fn open(path: &str, planned_len: u64) -> Result<File> {
    let file = File::open(path).map_err(|e| BatchError::source(path, e))?;
    let len = file
        .metadata()
        .map_err(|e| BatchError::source(path, e))?
        .len();
    if len != planned_len {
        return Err(BatchError::source(
            path,
            format!("the file is {len} bytes, {planned_len} when the job was planned: plan again"),
        ));
    }
    Ok(file)
}
