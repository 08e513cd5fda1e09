//! Where batch files come from: the one seam between the planner and readers and the place the
//! files live, local disk or S3-compatible object storage ([`crate::s3`]). Both answer the same
//! two calls of a job's [`Storage`]: [`Storage::list`] names the files with their lengths, and
//! [`Storage::open`] gives a [`Source`], which the Parquet reader reads as a `ChunkReader` and
//! the CSV reader by byte ranges.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use cellar_spec::FileFormat;
use parquet::file::reader::{ChunkReader, Length};

use crate::error::{BatchError, Result};
use crate::s3::{self, ObjectFile, ObjectRead, ObjectUrl};

/// A file to read, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileEntry {
    /// A local path, or an `s3://BUCKET/KEY` URL.
    pub path: String,
    /// Its length when listed; readers check it did not change since the job was planned.
    pub len: u64,
}

/// Where a `batch.files.path` points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Location<'a> {
    Local(&'a str),
    S3(ObjectUrl<'a>),
}

impl<'a> Location<'a> {
    /// A path is local unless it starts with a URL scheme; `s3://` is the one other place
    /// files can be.
    pub fn parse(path: &'a str) -> Result<Location<'a>> {
        let Some((scheme, _)) = path.split_once("://") else {
            return Ok(Location::Local(path));
        };
        let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        match scheme {
            "s3" => Ok(Location::S3(ObjectUrl::parse(path)?)),
            _ if is_scheme => Err(BatchError::source(
                path,
                format!(
                    "unsupported scheme `{scheme}://`: batch files are local paths or \
                     s3://BUCKET/KEY URLs"
                ),
            )),
            _ => Ok(Location::Local(path)),
        }
    }
}

/// Where one job's files are read from: local disk, and the object store clients it has built
/// (one per bucket, on first use). Clones share the clients, so a job's planner and shards
/// share their connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct Storage {
    s3: Arc<s3::Clients>,
}

impl Storage {
    /// The files a `batch.files.path` names, sorted by path: a glob (`data/*.parquet`,
    /// `data/**/part-*.csv`), a directory (its files with the format's extension, not
    /// recursing), or one file; local or `s3://BUCKET/...` alike. Names starting with `.` or
    /// `_` are left out of globs and directories: writers such as Spark leave `_SUCCESS`
    /// markers and `.crc` files beside their data.
    pub fn list(&self, pattern: &str, format: FileFormat) -> Result<Vec<FileEntry>> {
        let mut out = Vec::new();
        match Location::parse(pattern)? {
            Location::Local(path) => list_local(path, format, &mut out)?,
            Location::S3(url) => self.s3.list(url, format, &mut out)?,
        }
        if out.is_empty() {
            return Err(BatchError::source(pattern, "no files match"));
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Opens a listed file for reading, checking it still has the length it was planned
    /// with: a file rewritten since would make row groups and byte ranges point at other data.
    pub fn open(&self, path: &str, planned_len: u64) -> Result<Source> {
        match Location::parse(path)? {
            Location::Local(path) => open_local(path, planned_len),
            Location::S3(url) => Ok(Source::Object(Arc::new(self.s3.open(url, planned_len)?))),
        }
    }
}

/// The extension a directory's files of `format` have.
pub(crate) fn extension(format: FileFormat) -> &'static str {
    match format {
        FileFormat::Parquet => "parquet",
        FileFormat::Csv => "csv",
    }
}

/// Whether a file name is left out of globs and directories.
pub(crate) fn is_hidden_name(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// Why a file whose length changed since planning is refused.
pub(crate) fn changed(len: u64, planned_len: u64) -> String {
    format!("the file is {len} bytes, {planned_len} when the job was planned: plan again")
}

fn list_local(pattern: &str, format: FileFormat, out: &mut Vec<FileEntry>) -> Result<()> {
    let is_glob = pattern.contains(['*', '?', '[']);
    if is_glob {
        let paths = glob::glob(pattern).map_err(|e| BatchError::source(pattern, e))?;
        for path in paths {
            let path = path.map_err(|e| BatchError::source(pattern, e))?;
            if !is_hidden(&path) {
                push_file(out, &path)?;
            }
        }
    } else if Path::new(pattern).is_dir() {
        let extension = extension(format);
        let entries = std::fs::read_dir(pattern).map_err(|e| BatchError::source(pattern, e))?;
        for entry in entries {
            let path = entry.map_err(|e| BatchError::source(pattern, e))?.path();
            if !is_hidden(&path) && path.extension().is_some_and(|e| e == extension) {
                push_file(out, &path)?;
            }
        }
    } else {
        let meta = std::fs::metadata(pattern).map_err(|e| BatchError::source(pattern, e))?;
        out.push(FileEntry {
            path: pattern.to_owned(),
            len: meta.len(),
        });
    }
    Ok(())
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_hidden_name)
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

fn open_local(path: &str, planned_len: u64) -> Result<Source> {
    let file = File::open(path).map_err(|e| BatchError::source(path, e))?;
    let len = file
        .metadata()
        .map_err(|e| BatchError::source(path, e))?
        .len();
    if len != planned_len {
        return Err(BatchError::source(path, changed(len, planned_len)));
    }
    Ok(Source::Local(file))
}

/// An opened file: the planner and readers read it the same way wherever it lives.
#[derive(Debug)]
pub(crate) enum Source {
    Local(File),
    Object(Arc<ObjectFile>),
}

impl Source {
    /// Another handle on the same file.
    pub fn try_clone(&self) -> io::Result<Source> {
        Ok(match self {
            Source::Local(file) => Source::Local(file.try_clone()?),
            Source::Object(object) => Source::Object(Arc::clone(object)),
        })
    }

    /// Bytes `start..end`, read in order. Handles share a local file's position, as
    /// [`File::try_clone`] does: read one range at a time.
    pub fn range(&self, start: u64, end: u64) -> io::Result<SourceRead> {
        self.read_from(start, end, s3::FIRST_BLOCK)
    }

    fn read_from(&self, start: u64, end: u64, first_block: u64) -> io::Result<SourceRead> {
        Ok(match self {
            Source::Local(file) => {
                let mut file = file.try_clone()?;
                file.seek(SeekFrom::Start(start))?;
                SourceRead::Local(file.take(end.saturating_sub(start)))
            }
            Source::Object(object) => SourceRead::Object(object.reader(start, end, first_block)),
        })
    }
}

/// A range of a [`Source`], read in order.
pub(crate) enum SourceRead {
    Local(io::Take<File>),
    Object(ObjectRead),
}

impl Read for SourceRead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            SourceRead::Local(r) => r.read(out),
            SourceRead::Object(r) => r.read(out),
        }
    }
}

impl Length for Source {
    fn len(&self) -> u64 {
        match self {
            Source::Local(file) => Length::len(file),
            Source::Object(object) => object.len(),
        }
    }
}

impl ChunkReader for Source {
    type T = BufReader<SourceRead>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        if let Source::Object(object) = self {
            // The footer is read from its end: its last 8 bytes, then the metadata before
            // them, usually within one GET of the file's tail.
            let len = object.len();
            if len - start.min(len) <= s3::TAIL_BLOCK {
                object.load(len.saturating_sub(s3::TAIL_BLOCK), len)?;
            }
        }
        Ok(BufReader::new(self.read_from(
            start,
            self.len(),
            s3::PAGE_BLOCK,
        )?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        match self {
            Source::Local(file) => file.get_bytes(start, length),
            Source::Object(object) => Ok(object.bytes(start, length)?),
        }
    }
}
