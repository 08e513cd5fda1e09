//! Where the history's files are kept: a local directory (the default, under the data
//! directory), or a prefix in an S3-compatible bucket, which every node of a deployment and
//! every training-set job reads alike.
//!
//! Files are named by keys relative to the history's root, `/`-separated
//! (`<group>/date=YYYY-MM-DD/<file>`), the same in both. A file is written whole or not at
//! all: locally into a temporary file, synced and renamed; in a bucket by one PUT (a multipart
//! upload past [`MULTIPART_AT`]), which S3 makes visible only once complete.
//!
//! The history's code is synchronous (the converter's thread, training sets on blocking
//! threads). A bucket's requests run on a small runtime of their own, the caller waiting for
//! each, so no caller needs a Tokio context and none can be stalled by one.

use std::fmt;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{HistoryError, Result};

/// Rows per row group: a training set reads a group's files whole, so large groups cost
/// nothing and compress better.
const ROW_GROUP_ROWS: usize = 256 * 1024;
/// Files larger than this go to a bucket as a multipart upload (a single PUT stops at 5 GiB).
pub const MULTIPART_AT: usize = 64 << 20;
/// The part size of a multipart upload.
const PART_BYTES: usize = 16 << 20;

/// How an object store's errors read to the person running Cellar (a missing bucket, access
/// refused, an endpoint that does not answer), without secrets.
pub type Describe = Arc<dyn Fn(&object_store::Error) -> String + Send + Sync>;

/// Where the history's files are kept.
#[derive(Clone)]
pub enum Storage {
    /// A directory on this machine.
    Local(PathBuf),
    /// A prefix in an S3-compatible bucket.
    Bucket(Arc<Bucket>),
}

/// A prefix in a bucket, and the client reaching it.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    /// The history's prefix, without a `/` at either end; empty for the bucket's top.
    prefix: String,
    /// `s3://BUCKET/PREFIX`, which messages name.
    url: String,
    describe: Describe,
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string())
    }
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Local(root) => write!(f, "{}", root.display()),
            Storage::Bucket(bucket) => f.write_str(&bucket.url),
        }
    }
}

impl Storage {
    /// A bucket's prefix: `url` (`s3://BUCKET/PREFIX`) names it in messages, `store` is the
    /// bucket's client.
    pub fn bucket(store: Arc<dyn ObjectStore>, url: &str, describe: Describe) -> Storage {
        let prefix = url
            .strip_prefix("s3://")
            .and_then(|rest| rest.split_once('/'))
            .map_or("", |(_, prefix)| prefix)
            .trim_matches('/')
            .to_owned();
        Storage::Bucket(Arc::new(Bucket {
            store,
            prefix,
            url: url.trim_end_matches('/').to_owned(),
            describe,
        }))
    }

    /// Makes sure the history can be kept here: the directory is created; the bucket is
    /// listed, so that a missing bucket or refused credentials stop a process at its start
    /// rather than at its first conversion.
    pub fn prepare(&self) -> Result<()> {
        match self {
            Storage::Local(root) => fs::create_dir_all(root)
                .map_err(|e| HistoryError::io(format!("creating {}", root.display()), e)),
            Storage::Bucket(bucket) => {
                let store = bucket.store.clone();
                let prefix = bucket.location("");
                block(async move { store.list_with_delimiter(Some(&prefix)).await.map(|_| ()) })?
                    .map_err(|e| bucket.fail(format!("listing {}", bucket.url), &e))
            }
        }
    }

    /// The full name of the file `key`, for messages.
    pub fn name(&self, key: &str) -> String {
        match self {
            Storage::Local(root) => root.join(key).display().to_string(),
            Storage::Bucket(bucket) => format!("{}/{key}", bucket.url),
        }
    }

    /// Writes `batch` as the Parquet file `key`, whole, replacing any file of that name.
    pub fn write_parquet(&self, key: &str, batch: &RecordBatch) -> Result<()> {
        let action = || format!("writing {}", self.name(key));
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        match self {
            Storage::Local(root) => {
                let path = root.join(key);
                let dir = path.parent().ok_or_else(|| {
                    HistoryError::Io(format!("{} has no directory", path.display()))
                })?;
                fs::create_dir_all(dir)
                    .map_err(|e| HistoryError::io(format!("creating {}", dir.display()), e))?;
                let tmp = path.with_extension("parquet.tmp");
                let file = fs::File::create(&tmp).map_err(|e| HistoryError::io(action(), e))?;
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
                rename_into_place(&tmp, &path)
            }
            Storage::Bucket(_) => {
                let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))
                    .map_err(|e| HistoryError::io(action(), e))?;
                writer
                    .write(batch)
                    .map_err(|e| HistoryError::io(action(), e))?;
                let bytes = writer
                    .into_inner()
                    .map_err(|e| HistoryError::io(action(), e))?;
                self.put(key, bytes)
            }
        }
    }

    /// Writes `bytes` as the file `key`, whole, replacing any file of that name.
    pub fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Storage::Local(root) => {
                let path = root.join(key);
                let dir = path.parent().ok_or_else(|| {
                    HistoryError::Io(format!("{} has no directory", path.display()))
                })?;
                fs::create_dir_all(dir)
                    .map_err(|e| HistoryError::io(format!("creating {}", dir.display()), e))?;
                let tmp = path.with_extension("tmp");
                let write = || -> std::io::Result<()> {
                    use std::io::Write;
                    let mut file = fs::File::create(&tmp)?;
                    file.write_all(&bytes)?;
                    file.sync_all()
                };
                write().map_err(|e| HistoryError::io(format!("writing {}", tmp.display()), e))?;
                rename_into_place(&tmp, &path)
            }
            Storage::Bucket(bucket) => {
                let (store, location) = (bucket.store.clone(), bucket.location(key));
                block(async move {
                    if bytes.len() <= MULTIPART_AT {
                        return store
                            .put(&location, PutPayload::from(bytes))
                            .await
                            .map(|_| ());
                    }
                    let upload = store.put_multipart(&location).await?;
                    let mut write = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                    for part in bytes.chunks(PART_BYTES) {
                        write.wait_for_capacity(4).await?;
                        write.write(part);
                    }
                    write.finish().await.map(|_| ())
                })?
                .map_err(|e| bucket.fail(format!("writing {}", self.name(key)), &e))
            }
        }
    }

    /// The bytes of the file `key`; [`HistoryError::Gone`] when it no longer exists.
    pub fn read(&self, key: &str) -> Result<Bytes> {
        match self {
            Storage::Local(root) => {
                let path = root.join(key);
                fs::read(&path)
                    .map(Bytes::from)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => {
                            HistoryError::Gone(path.display().to_string())
                        }
                        _ => HistoryError::io(format!("reading {}", path.display()), e),
                    })
            }
            Storage::Bucket(bucket) => {
                let (store, location) = (bucket.store.clone(), bucket.location(key));
                block(async move { store.get(&location).await?.bytes().await })?.map_err(
                    |e| match e {
                        object_store::Error::NotFound { .. } => HistoryError::Gone(self.name(key)),
                        e => bucket.fail(format!("reading {}", self.name(key)), &e),
                    },
                )
            }
        }
    }

    /// The keys of every file under the directory `dir` (a key prefix without a trailing
    /// `/`), at any depth, sorted. None when there is no such directory.
    pub fn list(&self, dir: &str) -> Result<Vec<String>> {
        let mut keys = match self {
            Storage::Local(root) => {
                let mut keys = Vec::new();
                walk(&root.join(dir), dir, &mut keys)?;
                keys
            }
            Storage::Bucket(bucket) => {
                let (store, location) = (bucket.store.clone(), bucket.location(dir));
                let listed = block(async move {
                    store
                        .list(Some(&location))
                        .map_ok(|meta| meta.location)
                        .try_collect::<Vec<ObjectPath>>()
                        .await
                })?
                .map_err(|e| bucket.fail(format!("listing {}", self.name(dir)), &e))?;
                listed
                    .iter()
                    .filter_map(|location| bucket.key_of(location))
                    .collect()
            }
        };
        keys.sort();
        Ok(keys)
    }

    /// Removes the file `key`; one already gone is no error.
    pub fn remove(&self, key: &str) -> Result<()> {
        match self {
            Storage::Local(root) => {
                let path = root.join(key);
                match fs::remove_file(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(HistoryError::io(format!("removing {}", path.display()), e)),
                }
            }
            Storage::Bucket(bucket) => {
                let (store, location) = (bucket.store.clone(), bucket.location(key));
                match block(async move { store.delete(&location).await })? {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(bucket.fail(format!("removing {}", self.name(key)), &e)),
                }
            }
        }
    }

    /// Removes the directory `dir` and everything under it.
    pub fn remove_dir(&self, dir: &str) -> Result<()> {
        match self {
            Storage::Local(root) => {
                let path = root.join(dir);
                match fs::remove_dir_all(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(HistoryError::io(format!("removing {}", path.display()), e)),
                }
            }
            Storage::Bucket(_) => {
                for key in self.list(dir)? {
                    self.remove(&key)?;
                }
                Ok(())
            }
        }
    }
}

impl Bucket {
    /// The object of `key`.
    fn location(&self, key: &str) -> ObjectPath {
        let full = match (self.prefix.is_empty(), key.is_empty()) {
            (true, _) => key.to_owned(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{key}", self.prefix),
        };
        ObjectPath::parse(&full).unwrap_or_else(|_| ObjectPath::from(full.as_str()))
    }

    /// The key of a listed object, if it lies under the prefix.
    fn key_of(&self, location: &ObjectPath) -> Option<String> {
        let full = location.as_ref();
        if self.prefix.is_empty() {
            return Some(full.to_owned());
        }
        full.strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')
            .map(str::to_owned)
    }

    fn fail(&self, action: String, e: &object_store::Error) -> HistoryError {
        HistoryError::Io(format!("{action}: {}", (self.describe)(e)))
    }
}

/// Renames a written temporary file into place, then syncs its directory, without which the
/// rename may not survive a crash.
fn rename_into_place(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path)
        .map_err(|e| HistoryError::io(format!("renaming {} into place", tmp.display()), e))?;
    if let Some(dir) = path.parent() {
        if let Ok(dir) = fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

/// Pushes the keys of the files under `path` (whose key is `key`) onto `keys`. Temporary
/// files of writes in progress are not files of the history yet.
fn walk(path: &Path, key: &str, keys: &mut Vec<String>) -> Result<()> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(()),
        Err(e) => return Err(HistoryError::io(format!("listing {}", path.display()), e)),
    };
    for entry in entries {
        let entry =
            entry.map_err(|e| HistoryError::io(format!("listing {}", path.display()), e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let child = if key.is_empty() {
            name.clone()
        } else {
            format!("{key}/{name}")
        };
        let kind = entry
            .file_type()
            .map_err(|e| HistoryError::io(format!("listing {}", path.display()), e))?;
        if kind.is_dir() {
            walk(&entry.path(), &child, keys)?;
        } else if !name.ends_with(".tmp") {
            keys.push(child);
        }
    }
    Ok(())
}

/// Runs `request` on the history's I/O runtime and waits for it.
fn block<F>(request: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    let runtime = RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("history-io")
                .enable_all()
                .build()
        })
        .as_ref()
        .map_err(|e| HistoryError::io("starting the history's object store client", e))?;
    let (done, answer) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = done.send(request.await);
    });
    answer
        .recv()
        .map_err(|_| HistoryError::Io("an object store request of the history failed".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn storages(dir: &Path) -> Vec<Storage> {
        let describe: Describe = Arc::new(|e| e.to_string());
        vec![
            Storage::Local(dir.join("history")),
            Storage::bucket(
                Arc::new(InMemory::new()),
                "s3://bucket/some/history/",
                describe.clone(),
            ),
            Storage::bucket(Arc::new(InMemory::new()), "s3://bucket", describe),
        ]
    }

    #[test]
    fn files_are_written_listed_read_and_removed_alike_in_a_directory_and_a_bucket() {
        let dir = tempfile::tempdir().unwrap();
        for storage in storages(dir.path()) {
            storage.prepare().unwrap();
            assert_eq!(
                storage.list("g").unwrap(),
                Vec::<String>::new(),
                "{storage}"
            );
            storage
                .put("g/date=2026-01-01/a.parquet", b"a".to_vec())
                .unwrap();
            storage
                .put("g/date=2026-01-02/b.parquet", b"b".to_vec())
                .unwrap();
            storage
                .put("g@2/date=2026-01-01/c.parquet", b"c".to_vec())
                .unwrap();
            // Past the multipart threshold: in parts, read back whole.
            let large: Vec<u8> = (0..MULTIPART_AT + 5).map(|i| (i % 251) as u8).collect();
            storage.put("h/large", large.clone()).unwrap();
            assert_eq!(storage.read("h/large").unwrap(), Bytes::from(large));
            // The same name again replaces the file.
            storage
                .put("g/date=2026-01-01/a.parquet", b"A".to_vec())
                .unwrap();
            assert_eq!(
                storage.list("g").unwrap(),
                ["g/date=2026-01-01/a.parquet", "g/date=2026-01-02/b.parquet"],
                "{storage}: another group's files, though its name starts alike, are not listed"
            );
            assert_eq!(
                &storage.read("g/date=2026-01-01/a.parquet").unwrap()[..],
                b"A"
            );
            assert!(matches!(
                storage.read("g/date=2026-01-01/none.parquet"),
                Err(HistoryError::Gone(_))
            ));
            storage.remove("g/date=2026-01-01/a.parquet").unwrap();
            storage.remove("g/date=2026-01-01/a.parquet").unwrap();
            storage.remove_dir("g/date=2026-01-02").unwrap();
            storage.remove_dir("g/date=2026-01-09").unwrap();
            assert_eq!(
                storage.list("g").unwrap(),
                Vec::<String>::new(),
                "{storage}"
            );
            assert_eq!(storage.list("g@2").unwrap().len(), 1);
        }
    }

    #[test]
    fn a_missing_bucket_is_named_when_the_history_is_prepared() {
        let describe: Describe = Arc::new(|_| "the bucket does not exist".to_owned());
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint("http://127.0.0.1:9")
            .with_allow_http(true)
            .with_bucket_name("nowhere")
            .with_region("us-east-1")
            .with_access_key_id("AK")
            .with_secret_access_key("SECRET")
            .with_retry(object_store::RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .build()
            .unwrap();
        let storage = Storage::bucket(Arc::new(store), "s3://nowhere/h", describe);
        let e = storage.prepare().unwrap_err().to_string();
        assert!(
            e.contains("listing s3://nowhere/h: the bucket does not exist"),
            "{e}"
        );
    }
}
