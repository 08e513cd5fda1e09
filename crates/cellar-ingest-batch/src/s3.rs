//! Files in S3-compatible object storage, named `s3://BUCKET/KEY`: listed like local files and
//! read with ranged GETs, through `object_store`.
//!
//! A bucket's client is configured from the standard AWS environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` or
//! `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`), with path-style requests (`ENDPOINT/BUCKET/KEY`), which
//! every S3-compatible server answers. It is built the first time a job touches the bucket and
//! kept by the job's [`Storage`](crate::files::Storage), so the planner and the shards share its
//! connections.
//!
//! The readers are synchronous and run on blocking threads of the Tokio runtime (the planner
//! too, off the runtime): each request is driven with the runtime's [`Handle`], as the
//! PostgreSQL reader drives its connection.
//!
//! Reads are ranged GETs of bounded blocks, each read whole before it is parsed, never one GET
//! streamed for a whole range: a shard's reader pauses while its writes catch up, and a response
//! left half-read that long would run into the client's request timeout.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cellar_spec::redact::redact_url_and_user;
use cellar_spec::FileFormat;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    Certificate, ClientConfigKey, ClientOptions, GetOptions, GetRange, ListResult, ObjectMeta,
    ObjectStore, ObjectStoreExt, RetryConfig,
};
use tokio::runtime::Handle;

use crate::error::{BatchError, Result};
use crate::files::{self, FileEntry};

/// First block a CSV range is read in: a header line, or the few bytes the planner looks at.
pub(crate) const FIRST_BLOCK: u64 = 64 * 1024;
/// Largest block a sequential read grows to (each block doubles the last).
const MAX_BLOCK: u64 = 8 << 20;
/// Block read for a Parquet page: writers cut pages at about 1 MiB, so a page's header and its
/// data usually come in one GET.
pub(crate) const PAGE_BLOCK: u64 = 1 << 20;
/// The end of a Parquet file read at once: the footer, then the metadata before it.
pub(crate) const TAIL_BLOCK: u64 = 64 * 1024;

/// An `s3://BUCKET/KEY` URL, split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ObjectUrl<'a> {
    /// The whole URL, which messages name.
    pub url: &'a str,
    pub bucket: &'a str,
    /// The key, a key prefix ending in `/` (a directory), or a glob over keys; may be empty.
    pub key: &'a str,
}

impl<'a> ObjectUrl<'a> {
    pub fn parse(url: &'a str) -> Result<ObjectUrl<'a>> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BatchError::source(
                url,
                "no bucket: expected s3://BUCKET/KEY",
            ));
        }
        Ok(ObjectUrl { url, bucket, key })
    }
}

/// The clients of one job, one per bucket, built on first use.
#[derive(Default)]
pub(crate) struct Clients {
    buckets: Mutex<HashMap<String, Arc<Client>>>,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = buckets.keys().collect();
        names.sort();
        f.debug_struct("Clients").field("buckets", &names).finish()
    }
}

impl Clients {
    /// The client of `url`'s bucket.
    fn client(&self, url: &str, bucket: &str) -> Result<Arc<Client>> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = buckets.get(bucket) {
            return Ok(Arc::clone(client));
        }
        let client = Arc::new(Client::from_env(url, bucket)?);
        buckets.insert(bucket.to_owned(), Arc::clone(&client));
        Ok(client)
    }

    /// The objects `url` names (a key, a directory or a glob), pushed onto `out`.
    pub fn list(
        &self,
        ObjectUrl { url, bucket, key }: ObjectUrl<'_>,
        format: FileFormat,
        out: &mut Vec<FileEntry>,
    ) -> Result<()> {
        let client = self.client(url, bucket)?;
        let runtime = runtime(url)?;
        let fail = |e: object_store::Error| BatchError::source(url, client.describe(&e));
        let mut push = |meta: &ObjectMeta| {
            out.push(FileEntry {
                path: format!("s3://{bucket}/{}", meta.location),
                len: meta.size,
            })
        };
        if let Some(glob_at) = key.find(['*', '?', '[']) {
            let pattern = glob::Pattern::new(key).map_err(|e| BatchError::source(url, e))?;
            // Listed from the directory before the first wildcard; into its subdirectories
            // only when the pattern reaches into them.
            let dir = &key[..key[..glob_at].rfind('/').map_or(0, |i| i + 1)];
            let recursive = key[dir.len()..].contains('/') || key.contains("**");
            let objects = runtime
                .block_on(async {
                    if recursive {
                        client.list_tree(dir).await
                    } else {
                        Ok(client.list_dir(dir).await?.objects)
                    }
                })
                .map_err(fail)?;
            let options = glob::MatchOptions {
                require_literal_separator: true,
                ..glob::MatchOptions::new()
            };
            for meta in &objects {
                let name = meta.location.as_ref();
                if pattern.matches_with(name, options) && !files::is_hidden_name(file_name(name)) {
                    push(meta);
                }
            }
            return Ok(());
        }
        // A directory, named with or without its trailing slash; else one object. Listed
        // first: the answer to a HEAD of a directory's name varies between servers.
        let dir = match key {
            "" => String::new(),
            key if key.ends_with('/') => key.to_owned(),
            key => format!("{key}/"),
        };
        let listing = runtime.block_on(client.list_dir(&dir)).map_err(fail)?;
        if listing.objects.is_empty() && listing.common_prefixes.is_empty() && dir != key {
            match runtime.block_on(client.store.head(&location(key))) {
                Ok(meta) => push(&meta),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(fail(e)),
            }
            return Ok(());
        }
        let extension = files::extension(format);
        for meta in &listing.objects {
            let name = file_name(meta.location.as_ref());
            let is_data = name.rsplit_once('.').is_some_and(|(_, e)| e == extension);
            if is_data && !files::is_hidden_name(name) {
                push(meta);
            }
        }
        Ok(())
    }

    /// Opens the object at `url`, checking it still has the length it was planned with.
    pub fn open(
        &self,
        ObjectUrl { url, bucket, key }: ObjectUrl<'_>,
        planned_len: u64,
    ) -> Result<ObjectFile> {
        let client = self.client(url, bucket)?;
        let runtime = runtime(url)?;
        let location = location(key);
        let meta = runtime
            .block_on(client.store.head(&location))
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => BatchError::source(url, gone()),
                e => BatchError::source(url, client.describe(&e)),
            })?;
        if meta.size != planned_len {
            return Err(BatchError::source(
                url,
                files::changed(meta.size, planned_len),
            ));
        }
        Ok(ObjectFile {
            url: url.to_owned(),
            client,
            location,
            len: planned_len,
            runtime,
            block: Mutex::new(None),
        })
    }
}

/// The client of the bucket `url` (`s3://BUCKET/...`) names, configured from the environment
/// as batch sources' clients are, for the other parts of Cellar that keep files in a bucket
/// (the offline history); with what its errors mean to the person running Cellar.
#[allow(clippy::type_complexity)]
pub fn bucket_client(
    url: &str,
) -> Result<(
    Arc<dyn ObjectStore>,
    Arc<dyn Fn(&object_store::Error) -> String + Send + Sync>,
)> {
    let ObjectUrl { bucket, .. } = ObjectUrl::parse(url)?;
    let client = Arc::new(Client::from_env(url, bucket)?);
    let store: Arc<dyn ObjectStore> = Arc::new(client.store.clone());
    Ok((store, Arc::new(move |e| client.describe(e))))
}

fn runtime(url: &str) -> Result<Handle> {
    Handle::try_current()
        .map_err(|e| BatchError::Internal(format!("reading {url} needs a Tokio runtime: {e}")))
}

/// The key as `object_store` names it: listed keys are already in its form; others (typed in
/// a spec) are encoded where they need to be.
fn location(key: &str) -> Path {
    Path::parse(key).unwrap_or_else(|_| Path::from(key))
}

fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

fn gone() -> &'static str {
    "the object no longer exists, though it did when the job was planned: plan again"
}

/// `builder` trusting, besides the system's CAs, those of the PEM file `AWS_CA_BUNDLE` names
/// (the AWS SDKs' setting for an endpoint behind a private CA). object_store reads no such
/// variable and takes extra CAs only in a whole set of client options, so the client options
/// are built again here from the environment, as `from_env` builds them, with the CAs added.
fn with_ca_bundle(builder: AmazonS3Builder, url: &str) -> Result<AmazonS3Builder> {
    let Some(path) = std::env::var("AWS_CA_BUNDLE")
        .ok()
        .filter(|p| !p.trim().is_empty())
    else {
        return Ok(builder);
    };
    let fail = |problem: String| BatchError::source(url, format!("AWS_CA_BUNDLE: {problem}"));
    let pem = std::fs::read(path.trim()).map_err(|e| fail(format!("cannot read `{path}`: {e}")))?;
    let certificates = Certificate::from_pem_bundle(&pem)
        .map_err(|e| fail(format!("`{path}` is not a PEM certificate bundle: {e}")))?;
    let mut options = ClientOptions::new();
    for (name, value) in std::env::vars().filter(|(name, _)| name.starts_with("AWS_")) {
        if let Ok(AmazonS3ConfigKey::Client(key)) = name.to_ascii_lowercase().parse() {
            options = options.with_config(key, value);
        }
    }
    let options = certificates
        .into_iter()
        .fold(options, ClientOptions::with_root_certificate);
    Ok(builder.with_client_options(options))
}

/// One bucket's client.
struct Client {
    store: AmazonS3,
    /// Where requests go, its password hidden, for messages.
    endpoint: String,
}

impl Client {
    fn from_env(url: &str, bucket: &str) -> Result<Client> {
        let builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false)
            // A shard that fails is run again by its job: an endpoint that does not answer
            // should fail it within seconds, not after object_store's default of ten retries.
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            });
        let builder = with_ca_bundle(builder, url)?;
        let endpoint = match builder.get_config_value(&AmazonS3ConfigKey::Endpoint) {
            // The user of an endpoint URL is an access key id: not shown either.
            Some(endpoint) => redact_url_and_user(&endpoint).unwrap_or(endpoint),
            None => {
                let region = builder
                    .get_config_value(&AmazonS3ConfigKey::Region)
                    .unwrap_or_else(|| "us-east-1".to_owned());
                format!("https://s3.{region}.amazonaws.com")
            }
        };
        let allow_http = builder
            .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp))
            .is_some_and(|v| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "1" | "true" | "on" | "yes" | "y"
                )
            });
        // Else every request would fail with a bare "builder error".
        if endpoint.starts_with("http://") && !allow_http {
            return Err(BatchError::source(
                url,
                format!("the endpoint {endpoint} is plain HTTP: set AWS_ALLOW_HTTP=true to use it"),
            ));
        }
        let store = builder
            .build()
            .map_err(|e| BatchError::source(url, format!("cannot configure the S3 client: {e}")))?;
        Ok(Client { store, endpoint })
    }

    /// The objects directly in `dir` (a prefix ending in `/`, or empty for the bucket's top),
    /// and the subdirectories.
    async fn list_dir(&self, dir: &str) -> object_store::Result<ListResult> {
        let prefix = (!dir.is_empty()).then(|| location(dir));
        self.store.list_with_delimiter(prefix.as_ref()).await
    }

    /// Every object under `dir`, at any depth.
    async fn list_tree(&self, dir: &str) -> object_store::Result<Vec<ObjectMeta>> {
        let prefix = (!dir.is_empty()).then(|| location(dir));
        self.store.list(prefix.as_ref()).try_collect().await
    }

    /// What went wrong, in the terms of the person running the job: a missing bucket, access
    /// refused, an endpoint that does not answer; else `object_store`'s own message. Requests
    /// are signed in headers, which errors do not show, so none of this holds a secret.
    fn describe(&self, e: &object_store::Error) -> String {
        let text = e.to_string();
        if text.contains("NoSuchBucket") {
            return format!("the bucket does not exist at {}", self.endpoint);
        }
        let denied = [
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ];
        if matches!(
            e,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ) || denied.iter().any(|code| text.contains(code))
        {
            return "access denied: check the credentials (AWS_ACCESS_KEY_ID, \
                    AWS_SECRET_ACCESS_KEY) and what they may read"
                .to_owned();
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut unreachable = false;
        let mut last = text.clone();
        while let Some(c) = cause {
            if let Some(http) = c.downcast_ref::<HttpError>() {
                unreachable |=
                    matches!(http.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout);
            }
            last = c.to_string();
            cause = c.source();
        }
        if unreachable {
            return format!("cannot reach the object store at {}: {last}", self.endpoint);
        }
        text
    }
}

/// An object opened for reading: ranged GETs, each checked against the length the job was
/// planned with.
pub(crate) struct ObjectFile {
    url: String,
    client: Arc<Client>,
    location: Path,
    len: u64,
    runtime: Handle,
    /// The last block read, with its offset: reads close together share it (a Parquet page's
    /// header and its data, the footer and the metadata before it).
    block: Mutex<Option<(u64, Bytes)>>,
}

impl fmt::Debug for ObjectFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectFile")
            .field("url", &self.url)
            .field("len", &self.len)
            .finish()
    }
}

impl ObjectFile {
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Bytes `start..start + len`: from the last block when it holds them, else one GET.
    pub fn bytes(&self, start: u64, len: usize) -> io::Result<Bytes> {
        let end = start.saturating_add(len as u64);
        if let Some(bytes) = self.cached(start, end) {
            return Ok(bytes);
        }
        self.fetch(start..end)
    }

    /// Reads `start..end` into the kept block, unless it already holds them.
    pub fn load(&self, start: u64, end: u64) -> io::Result<()> {
        if self.cached(start, end).is_none() {
            let bytes = self.fetch(start..end)?;
            *self.block.lock().unwrap_or_else(|p| p.into_inner()) = Some((start, bytes));
        }
        Ok(())
    }

    /// A reader of `start..end`, in blocks of `first_block` bytes, doubling as it goes on.
    pub fn reader(self: &Arc<Self>, start: u64, end: u64, first_block: u64) -> ObjectRead {
        ObjectRead {
            file: Arc::clone(self),
            pos: start,
            end: end.min(self.len),
            next_block: first_block.max(1),
            buf: Bytes::new(),
        }
    }

    /// `start..end` of the kept block, when it holds all of them.
    fn cached(&self, start: u64, end: u64) -> Option<Bytes> {
        let block = self.block.lock().unwrap_or_else(|p| p.into_inner());
        let (at, bytes) = block.as_ref()?;
        let block_end = at + bytes.len() as u64;
        (start >= *at && end <= block_end)
            .then(|| bytes.slice((start - at) as usize..(end - at) as usize))
    }

    /// The kept block from `start` on, if it holds `start`.
    fn cached_from(&self, start: u64, end: u64) -> Option<Bytes> {
        let block = self.block.lock().unwrap_or_else(|p| p.into_inner());
        let (at, bytes) = block.as_ref()?;
        let block_end = (at + bytes.len() as u64).min(end);
        (start >= *at && start < block_end)
            .then(|| bytes.slice((start - at) as usize..(block_end - at) as usize))
    }

    /// One ranged GET.
    fn fetch(&self, range: Range<u64>) -> io::Result<Bytes> {
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        if range.end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: bytes {}..{} asked of an object of {} bytes",
                    self.url, range.start, range.end, self.len
                ),
            ));
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let got = self.runtime.block_on(async {
            let got = self.client.store.get_opts(&self.location, options).await?;
            let size = got.meta.size;
            Ok::<_, object_store::Error>((size, got.bytes().await?))
        });
        let fail = |reason: String| io::Error::other(format!("{}: {reason}", self.url));
        match got {
            Ok((size, _)) if size != self.len => Err(fail(files::changed(size, self.len))),
            Ok((_, bytes)) if bytes.len() as u64 != range.end - range.start => Err(fail(format!(
                "asked for bytes {}..{}, got {}",
                range.start,
                range.end,
                bytes.len()
            ))),
            Ok((_, bytes)) => Ok(bytes),
            // A range past the end of an object that shrank is refused: say why.
            Err(e) => match self
                .runtime
                .block_on(self.client.store.head(&self.location))
            {
                Ok(meta) if meta.size != self.len => Err(fail(files::changed(meta.size, self.len))),
                Err(object_store::Error::NotFound { .. }) => Err(fail(gone().to_owned())),
                _ => Err(fail(self.client.describe(&e))),
            },
        }
    }
}

/// Reads a range of an object in order, a block per GET.
pub(crate) struct ObjectRead {
    file: Arc<ObjectFile>,
    pos: u64,
    end: u64,
    next_block: u64,
    /// What is left of the last block.
    buf: Bytes,
}

impl Read for ObjectRead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() {
            if self.pos >= self.end || out.is_empty() {
                return Ok(0);
            }
            self.buf = match self.file.cached_from(self.pos, self.end) {
                Some(bytes) => bytes,
                None => {
                    let end = self.pos.saturating_add(self.next_block).min(self.end);
                    self.next_block = (self.next_block * 2).min(MAX_BLOCK);
                    let bytes = self.file.fetch(self.pos..end)?;
                    *self.file.block.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((self.pos, bytes.clone()));
                    bytes
                }
            };
            self.pos += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_key() {
        assert_eq!(
            ObjectUrl::parse("s3://b/dir/*.parquet").unwrap(),
            ObjectUrl {
                url: "s3://b/dir/*.parquet",
                bucket: "b",
                key: "dir/*.parquet"
            }
        );
        assert_eq!(ObjectUrl::parse("s3://b").unwrap().key, "");
        assert_eq!(ObjectUrl::parse("s3://b/").unwrap().key, "");
        let err = ObjectUrl::parse("s3:///a.csv").unwrap_err();
        assert_eq!(
            err.to_string(),
            "s3:///a.csv: no bucket: expected s3://BUCKET/KEY"
        );
    }
}
