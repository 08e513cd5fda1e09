//! The staging log: where kept records wait, durably, until they are converted to Parquet.
//!
//! Writers hand encoded frames to one thread, which drains every frame waiting, writes them as
//! one batch under increasing sequence numbers and syncs once before acknowledging them all
//! (group commit, as the embedded event log does): a hundred concurrent writes pay for one
//! fsync. A frame acknowledged is on disk; the converter later reads the oldest frames, writes
//! them as Parquet and only then removes them, so a crash at any point loses nothing and at
//! worst converts a frame twice, into the same files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use tokio::sync::oneshot;

use crate::error::{HistoryError, Result};

/// Most frames folded into one commit, bounding how long the first of them waits.
const MAX_GROUP: usize = 1024;
/// Journal bytes kept before fjall flushes; frames live briefly, so little is worth keeping.
const MAX_JOURNAL_BYTES: u64 = 64 << 20;
/// Frames removed per batch once converted.
const REMOVE_CHUNK: usize = 10_000;
/// The key of the staging log's id in the `meta` keyspace.
const ID_KEY: &[u8] = b"id";
/// The key of the sequence after the last frame removed, in the `meta` keyspace: a log emptied
/// by conversion goes on from there, so no two frames of its life share a sequence, nor two of
/// its files a name (a file named again would replace the first).
const NEXT_KEY: &[u8] = b"next";

/// A staged frame: its sequence number, when it was committed (µs since the epoch) and its
/// bytes.
#[derive(Debug, Clone)]
pub struct Staged {
    pub sequence: u64,
    pub written_at: i64,
    pub frame: Vec<u8>,
}

struct Request {
    frame: Vec<u8>,
    reply: oneshot::Sender<Result<()>>,
}

struct Shared {
    db: Database,
    frames: Keyspace,
    meta: Keyspace,
    path: PathBuf,
    /// Bytes of the frames staged and not yet removed.
    staged: AtomicU64,
    /// Past this many staged bytes, appends are refused until conversion catches up.
    limit: AtomicU64,
}

/// The default bound on staged bytes: hours of a busy node's writes, while conversion fails.
pub const DEFAULT_MAX_STAGED_BYTES: u64 = 2 << 30;

/// The staging log of one process. Cheap to clone.
#[derive(Clone)]
pub struct Staging {
    shared: Arc<Shared>,
    queue: Arc<Mutex<Option<mpsc::Sender<Request>>>>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    /// Names this log's files apart from every other process's in a shared history.
    id: Arc<str>,
}

impl Staging {
    /// Opens the staging log in `path`, creating it if needed. Frames staged before a crash
    /// are all there, waiting to be converted.
    pub fn open(path: impl AsRef<Path>) -> Result<Staging> {
        let path = path.as_ref().to_path_buf();
        let action = || format!("opening the history staging log at {}", path.display());
        let db = Database::builder(&path)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .open()
            .map_err(|e| match e {
                fjall::Error::Locked => HistoryError::Locked(path.display().to_string()),
                e => HistoryError::io(action(), e),
            })?;
        let keyspace = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(|e| HistoryError::io(action(), e))
        };
        let frames = keyspace("frames")?;
        let meta = keyspace("meta")?;
        let id = match meta
            .get(ID_KEY)
            .map_err(|e| HistoryError::io(action(), e))?
        {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = format!("{:016x}", rand::random::<u64>());
                let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
                batch.insert(&meta, ID_KEY, id.as_bytes());
                batch.commit().map_err(|e| HistoryError::io(action(), e))?;
                id
            }
        };
        // What an earlier run left staged counts against the bound.
        let mut staged = 0u64;
        for guard in frames.iter() {
            let (_, value) = guard
                .into_inner()
                .map_err(|e| HistoryError::io(action(), e))?;
            staged += value.len() as u64;
        }
        let after_staged = match frames.last_key_value() {
            Some(guard) => {
                let (key, _) = guard
                    .into_inner()
                    .map_err(|e| HistoryError::io(action(), e))?;
                sequence_of(&key)? + 1
            }
            None => 0,
        };
        let after_removed = match meta
            .get(NEXT_KEY)
            .map_err(|e| HistoryError::io(action(), e))?
        {
            Some(next) => sequence_of(&next)?,
            None => 0,
        };
        let next = after_staged.max(after_removed);
        let shared = Arc::new(Shared {
            db,
            frames,
            meta,
            path: path.clone(),
            staged: AtomicU64::new(staged),
            limit: AtomicU64::new(DEFAULT_MAX_STAGED_BYTES),
        });
        let (tx, rx) = mpsc::channel::<Request>();
        let writer_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("history-staging".into())
            .spawn(move || run(&writer_shared, &rx, next))
            .map_err(|e| HistoryError::io("starting the history staging writer", e))?;
        tracing::info!(path = %path.display(), id, next, "opened the history staging log");
        Ok(Staging {
            shared,
            queue: Arc::new(Mutex::new(Some(tx))),
            writer: Arc::new(Mutex::new(Some(writer))),
            id: id.into(),
        })
    }

    /// This log's id, part of the name of every file converted from it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Refuses appends while more than `bytes` are staged.
    pub fn set_max_staged_bytes(&self, bytes: u64) {
        self.shared.limit.store(bytes, Ordering::Relaxed);
    }

    /// Bytes staged and not yet converted.
    pub fn staged_bytes(&self) -> u64 {
        self.shared.staged.load(Ordering::Relaxed)
    }

    /// Stages `frame`; resolves once it is on disk. Refused, and retryable, while the staged
    /// bytes are over the bound: conversion is failing or behind, and the writes that wait
    /// for it hold back instead of filling the disk.
    pub async fn append(&self, frame: Vec<u8>) -> Result<()> {
        let (staged, limit) = (
            self.shared.staged.load(Ordering::Relaxed),
            self.shared.limit.load(Ordering::Relaxed),
        );
        if staged > limit {
            return Err(HistoryError::Full { staged, limit });
        }
        let (reply, done) = oneshot::channel();
        {
            let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let Some(queue) = queue.as_ref() else {
                return Err(HistoryError::Stopped);
            };
            queue
                .send(Request { frame, reply })
                .map_err(|_| HistoryError::Stopped)?;
        }
        done.await.map_err(|_| HistoryError::Stopped)?
    }

    /// The oldest staged frames, in sequence order, up to about `max_bytes` (at least one).
    pub fn oldest(&self, max_bytes: usize) -> Result<Vec<Staged>> {
        let action = || {
            format!(
                "reading the history staging log at {}",
                self.shared.path.display()
            )
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for guard in self.shared.frames.iter() {
            let (key, value) = guard
                .into_inner()
                .map_err(|e| HistoryError::io(action(), e))?;
            let sequence = sequence_of(&key)?;
            let Some((time, frame)) = value.split_first_chunk::<8>() else {
                return Err(HistoryError::Corrupt(format!(
                    "staged frame {sequence} is {} bytes, too short for its time",
                    value.len()
                )));
            };
            bytes += frame.len();
            out.push(Staged {
                sequence,
                written_at: i64::from_be_bytes(*time),
                frame: frame.to_vec(),
            });
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Removes every frame up to and including `last`, once converted.
    pub fn remove_through(&self, last: u64) -> Result<()> {
        let action = || {
            format!(
                "removing converted frames from {}",
                self.shared.path.display()
            )
        };
        let end = (last + 1).to_be_bytes();
        loop {
            let mut keys = Vec::with_capacity(REMOVE_CHUNK);
            let mut bytes = 0u64;
            for guard in self.shared.frames.range(..end.as_slice()) {
                let (key, value) = guard
                    .into_inner()
                    .map_err(|e| HistoryError::io(action(), e))?;
                bytes += value.len() as u64;
                keys.push(key);
                if keys.len() == REMOVE_CHUNK {
                    break;
                }
            }
            if keys.is_empty() {
                return Ok(());
            }
            let full = keys.len() == REMOVE_CHUNK;
            let mut batch = self
                .shared
                .db
                .batch()
                .durability(Some(PersistMode::SyncAll));
            for key in keys {
                batch.remove(&self.shared.frames, key);
            }
            batch.insert(&self.shared.meta, NEXT_KEY, (last + 1).to_be_bytes());
            batch.commit().map_err(|e| HistoryError::io(action(), e))?;
            self.shared.staged.fetch_sub(
                bytes.min(self.shared.staged.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            if !full {
                return Ok(());
            }
        }
    }

    /// Whether any frame waits to be converted.
    pub fn is_empty(&self) -> bool {
        self.shared.frames.first_key_value().is_none()
    }

    /// Stops accepting frames and waits for the writer to finish those it holds.
    pub fn close(&self) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = writer.join();
        }
    }
}

fn sequence_of(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| HistoryError::Corrupt(format!("a staging key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn run(shared: &Shared, queue: &mpsc::Receiver<Request>, mut next: u64) {
    let mut last_time = 0i64;
    while let Ok(first) = queue.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(request) => group.push(request),
                Err(_) => break,
            }
        }
        // Commit times only move forward, so they order frames as their sequence does.
        let now = chrono::Utc::now().timestamp_micros().max(last_time + 1);
        last_time = now;
        let mut batch = shared.db.batch().durability(Some(PersistMode::SyncAll));
        let mut replies = Vec::with_capacity(group.len());
        let mut bytes = 0u64;
        for request in group {
            let mut value = Vec::with_capacity(8 + request.frame.len());
            value.extend_from_slice(&now.to_be_bytes());
            value.extend_from_slice(&request.frame);
            bytes += value.len() as u64;
            batch.insert(&shared.frames, next.to_be_bytes(), value);
            next += 1;
            replies.push(request.reply);
        }
        match batch.commit() {
            Ok(()) => {
                shared.staged.fetch_add(bytes, Ordering::Relaxed);
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(path = %shared.path.display(), error = %e, "history staging write failed");
                for reply in replies {
                    let _ = reply.send(Err(HistoryError::io("staging kept records", &e)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_past_the_bound_are_refused_until_conversion_removes_frames() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        staging.set_max_staged_bytes(100);
        staging.append(vec![0; 60]).await.unwrap();
        staging.append(vec![0; 60]).await.unwrap();
        // Each frame is staged with its 8-byte time.
        assert_eq!(staging.staged_bytes(), 136);
        let refused = staging.append(vec![0; 1]).await.unwrap_err();
        assert!(
            refused.to_string().contains("136 bytes") && refused.to_string().contains("100"),
            "{refused}"
        );
        let oldest = staging.oldest(1).unwrap();
        staging.remove_through(oldest[0].sequence).unwrap();
        assert_eq!(staging.staged_bytes(), 68);
        staging.append(vec![0; 1]).await.unwrap();
        staging.close();
        drop(staging);
        // Reopened, what is staged still counts.
        let again = Staging::open(dir.path()).unwrap();
        assert_eq!(again.staged_bytes(), 77);
    }

    #[tokio::test]
    async fn a_log_emptied_by_conversion_goes_on_numbering_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::open(dir.path()).unwrap();
        staging.append(vec![1]).await.unwrap();
        staging.append(vec![2]).await.unwrap();
        let staged = staging.oldest(usize::MAX).unwrap();
        staging.remove_through(staged[1].sequence).unwrap();
        assert!(staging.is_empty());
        staging.close();
        drop(staging);
        // Sequences name the history's files: one used again would replace a file.
        let again = Staging::open(dir.path()).unwrap();
        again.append(vec![3]).await.unwrap();
        assert_eq!(again.oldest(usize::MAX).unwrap()[0].sequence, 2);
    }
}
