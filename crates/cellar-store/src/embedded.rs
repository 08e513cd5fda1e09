//! The embedded backend: records in an embedded KV engine on local disk.
//!
//! The engine is fjall (an LSM tree), chosen over redb by `examples/engine_bench.rs`; the figures
//! and reasons are in `docs/store-engine.md`.
//!
//! Key layout (one keyspace per group kind):
//!
//! ```text
//! attributes:  <group> 0x00 <entity>                           -> current record
//! timeseries:  <group> 0x00 <entity> 0x00 <!event_time, u64 BE> -> record at that event time
//! ```
//!
//! Inverting the event time makes a forward scan of an entity's prefix newest-first, so a top-N
//! read stops after N records. The trailing NUL of the time-series prefix keeps entity `u1` from
//! matching `u10`'s keys; NUL is refused in group names and entity keys so it can only ever be a
//! separator. Values are records in the [`codec`](crate::codec) format.
//!
//! Each `put`, `update`, `delete` or trim chunk is one atomic batch, durable before the call
//! returns: ingestion commits source offsets once `put` returns, so an acknowledged write must
//! survive a crash. Writers of one group are serialised (see [`Inner::writers`]); writers of
//! different groups run in parallel.
//!
//! An attribute put reads the stored event times of its keys before taking its group's lock,
//! so two writers of one group (two shards of a batch job) read in parallel and hold the lock
//! only to decide and append. Under the lock it catches up with the puts committed since its
//! reads: each put leaves the newest event time it carried per key in its stripe's
//! [`RecentCommits`], and the writer takes the maximum of what it read and what they wrote. When
//! a commit in between left no such record (an update, delete or trim), or is no longer kept, it
//! reads its keys again under the lock.
//!
//! Durability is a group commit: a writer appends its batch to the engine's journal, releases
//! its group's lock, then waits for an fsync that covers the batch. One fsync covers every
//! batch appended before it starts, so writers arriving during an fsync share the next one
//! instead of each paying for their own; at the disk's sync rate this is what lets throughput
//! grow with the number of concurrent writers. A batch is visible to readers from the moment
//! it is appended, slightly before it is durable: a crash in that gap loses only writes whose
//! callers were never answered, which ingestion replays from the source.
//!
//! Reads go to the engine directly from the calling task (a read is a few microseconds of CPU
//! and page-cache access, cheaper than a hop to a blocking thread); writes, which wait on
//! fsync, run on Tokio's blocking pool.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use cellar_spec::time::now_ms;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::{
    codec, OnlineStore, PutOutcome, Record, RecordReader, Result, StoreError, TimeseriesQuery,
    Write,
};

/// Separates the group, entity and event time in keys; refused inside names and keys.
const SEPARATOR: u8 = 0;

/// The engine's limit on a key: fjall panics past it, so longer keys are refused (writes) or
/// missed (reads) before they reach it. Ingestion and serving refuse entity keys long before
/// this (`cellar_spec::limits::MAX_ENTITY_KEY_BYTES`); this guards other callers.
const MAX_KEY_BYTES: usize = u16::MAX as usize;

/// Whether `entity` can be part of a key of `group`: no NUL, and the longest key it makes (a
/// time-series key) within the engine's limit.
fn storable(group: &str, entity: &EntityKey) -> bool {
    !entity.as_bytes().contains(&SEPARATOR)
        && group.len() + entity.0.len() + 2 + TIME_LEN <= MAX_KEY_BYTES
}

/// An entity key as errors show it: a key too long to store is cut, not repeated whole.
fn shown(entity: &EntityKey) -> String {
    const SHOWN: usize = 64;
    let key = entity.as_str();
    if key.len() <= SHOWN {
        return key.escape_debug().to_string();
    }
    let mut end = SHOWN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", key[..end].escape_debug(), key.len())
}

/// Why `entity` is not [`storable`].
fn unstorable_reason(group: &str, entity: &EntityKey) -> String {
    if entity.as_bytes().contains(&SEPARATOR) {
        "entity keys may not contain a NUL byte".to_owned()
    } else {
        format!(
            "the key is {} bytes with its group and event time, over the embedded store's limit of {MAX_KEY_BYTES} bytes",
            group.len() + entity.0.len() + 2 + TIME_LEN
        )
    }
}
/// Bytes of the inverted event time at the end of a time-series key.
const TIME_LEN: usize = 8;
/// Records removed per durable batch by `trim`, bounding how long writers wait on it.
const TRIM_CHUNK: usize = 10_000;
/// Most records a read decodes on the calling task. Larger reads go to the blocking pool a
/// chunk of this many at a time: they do not hold a runtime thread, and a caller that gives
/// up (a request past its deadline) stops them after the chunk in progress.
const INLINE_READ_RECORDS: usize = 1024;
/// What `put`, `delete` and `trim` wait for before returning: the journal's data fsync'd to
/// disk (`fdatasync`, which also writes the file length an append changes).
const DURABLE: PersistMode = PersistMode::SyncData;
/// Writer locks; groups hash onto them, so writers of different groups rarely wait on each
/// other.
const WRITER_LOCKS: usize = 16;
/// Commits a stripe remembers for the writers that read before them (see [`RecentCommits`]);
/// a writer that read before older ones reads its keys again under the lock.
const RECENT_COMMITS: usize = 8;
/// Keys a stripe's recent commits may hold in all (about 50 bytes each); older commits fall
/// out first, the newest stays whatever its size. Two writers of a group need only the commits
/// since their own reads, one or two batch writes of up to 64 Ki keys.
const RECENT_KEYS: usize = 256 * 1024;

/// Tuning for [`EmbeddedStore::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Bytes of the engine's block cache, shared by both keyspaces.
    pub cache_bytes: u64,
    /// Bytes a keyspace's memtable holds before it is flushed to a table; set when a store is
    /// created. Every write first reads its key, and a smaller memtable keeps that lookup
    /// within the CPU caches, at the cost of more (cheaply filtered) tables.
    pub memtable_bytes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            cache_bytes: 64 << 20,
            memtable_bytes: 16 << 20,
        }
    }
}

/// The embedded [`OnlineStore`]: a directory on local disk. Cloning is cheap and clones share
/// the same open database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the database lives, for error messages.
    path: PathBuf,
    /// The engine; its journal is what `put` waits on.
    db: Database,
    /// Attribute records, keyed `<group>\0<entity>`.
    attributes: Keyspace,
    /// Time-series records, keyed `<group>\0<entity>\0<inverted event time>`.
    timeseries: Keyspace,
    /// Serialise the writers of a group (indexed by a hash of its name): an attribute put
    /// compares the stored event time before writing, and a time-series put counts an entity's
    /// records before trimming them; an interleaved writer could otherwise replace a newer
    /// record with an older one or trim the wrong records. Keys never span groups, so writers
    /// of different groups need not wait for each other.
    writers: [Stripe; WRITER_LOCKS],
    commits: GroupCommit,
}

/// One writer lock and what was committed under it.
#[derive(Default)]
struct Stripe {
    /// Commits made under `recent`'s lock so far; written only with it held.
    commits: AtomicU64,
    recent: Mutex<RecentCommits>,
}

/// What the last few commits of a stripe wrote to attribute keys, newest last, numbered as
/// [`Stripe::commits`] counts them.
#[derive(Default)]
struct RecentCommits {
    commits: VecDeque<(u64, Written)>,
    /// Keys held by the puts among `commits`.
    keys: usize,
}

/// What one commit wrote to attribute keys, as far as a writer that read before it needs to
/// know.
#[derive(Clone)]
enum Written {
    /// No attribute record (time-series writes).
    NoAttributes,
    /// An attribute put: the newest event time it carried per key.
    Puts(Arc<PutTimes>),
    /// Attribute records changed in a way not kept here (an update, delete or trim).
    Unrecorded,
}

/// The newest event time a put carried for each of its keys, whether or not it was applied: a
/// stale write's event time is no newer than the stored one, so taking the maximum with it
/// never changes a decision.
struct PutTimes {
    /// The keys, end to end.
    keys: Vec<u8>,
    /// (start, end) of a key in `keys`, and its event time.
    index: hashbrown::HashTable<(usize, usize, i64)>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Written {
    /// Keys recorded.
    fn keys(&self) -> usize {
        match self {
            Written::Puts(times) => times.index.len(),
            Written::NoAttributes | Written::Unrecorded => 0,
        }
    }
}

impl PutTimes {
    fn of(prepared: &[Prepared]) -> PutTimes {
        let mut times = PutTimes {
            keys: Vec::with_capacity(prepared.iter().map(|p| p.key.len()).sum()),
            index: hashbrown::HashTable::with_capacity(prepared.len()),
            hasher: hashbrown::DefaultHashBuilder::default(),
        };
        for p in prepared {
            let hash = times.hasher.hash_one(p.key.as_slice());
            let keys = &times.keys;
            match times.index.entry(
                hash,
                |(start, end, _)| keys[*start..*end] == p.key[..],
                |(start, end, _)| times.hasher.hash_one(&keys[*start..*end]),
            ) {
                hashbrown::hash_table::Entry::Occupied(mut e) => {
                    let newest = &mut e.get_mut().2;
                    *newest = (*newest).max(p.event_time);
                }
                hashbrown::hash_table::Entry::Vacant(e) => {
                    let start = times.keys.len();
                    e.insert((start, start + p.key.len(), p.event_time));
                    times.keys.extend_from_slice(&p.key);
                }
            }
        }
        times
    }

    fn get(&self, key: &[u8]) -> Option<i64> {
        self.index
            .find(self.hasher.hash_one(key), |(start, end, _)| {
                self.keys[*start..*end] == *key
            })
            .map(|(_, _, t)| *t)
    }
}

impl RecentCommits {
    /// What every commit after `seen` up to `now` wrote, or `None` when one of them is not
    /// recorded or no longer kept.
    fn since(&self, seen: u64, now: u64) -> Option<Vec<Arc<PutTimes>>> {
        let mut puts = Vec::new();
        let mut next = seen + 1;
        for (number, written) in &self.commits {
            if *number < next {
                continue;
            }
            if next > now {
                break;
            }
            if *number > next {
                return None;
            }
            match written {
                Written::NoAttributes => {}
                Written::Puts(times) => puts.push(Arc::clone(times)),
                Written::Unrecorded => return None,
            }
            next += 1;
        }
        (next > now).then_some(puts)
    }

    fn push(&mut self, number: u64, written: Written) {
        self.keys += written.keys();
        self.commits.push_back((number, written));
        while self.commits.len() > RECENT_COMMITS
            || (self.keys > RECENT_KEYS && self.commits.len() > 1)
        {
            if let Some((_, gone)) = self.commits.pop_front() {
                self.keys -= gone.keys();
            }
        }
    }
}

/// A held writer lock.
struct Writer<'a> {
    stripe: &'a Stripe,
    recent: MutexGuard<'a, RecentCommits>,
}

/// Sequence numbers for group commit (see the module documentation).
#[derive(Default)]
struct GroupCommit {
    /// Batches appended to the journal so far; each append takes the next number as its
    /// ticket.
    appended: AtomicU64,
    /// The highest ticket known durable. Held while an fsync runs, so writers arriving
    /// meanwhile queue here and are covered together by the next one.
    synced: Mutex<u64>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens the store in directory `path`, creating it if needed, with default options.
    /// Everything acknowledged before the last close or crash is there.
    pub fn open(path: impl AsRef<Path>) -> Result<EmbeddedStore> {
        EmbeddedStore::open_with(path, EmbeddedOptions::default())
    }

    /// Opens the store in directory `path` with the given options.
    pub fn open_with(path: impl AsRef<Path>, options: EmbeddedOptions) -> Result<EmbeddedStore> {
        let path = path.as_ref().to_path_buf();
        let open_error = |e: fjall::Error| match e {
            // The usual cause: a second Cellar process on the same data directory.
            fjall::Error::Locked => StoreError::Backend(format!(
                "cannot open the embedded store at {}: it is in use by another process (a \
                 running `cellar serve` or `cellar ingest`?); stop it, or give this one its own \
                 --data-dir",
                path.display()
            )),
            e => StoreError::Backend(format!(
                "cannot open the embedded store at {}: {e}",
                path.display()
            )),
        };
        let db = Database::builder(&path)
            .cache_size(options.cache_bytes)
            .open()
            .map_err(open_error)?;
        let keyspace_options =
            || KeyspaceCreateOptions::default().max_memtable_size(options.memtable_bytes);
        let attributes = db
            .keyspace("attributes", keyspace_options)
            .map_err(open_error)?;
        let timeseries = db
            .keyspace("timeseries", keyspace_options)
            .map_err(open_error)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                path,
                db,
                attributes,
                timeseries,
                writers: std::array::from_fn(|_| Stripe::default()),
                commits: GroupCommit::default(),
            }),
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|e| {
                if e.is_panic() {
                    StoreError::Defect(format!("embedded store task failed: {e}"))
                } else {
                    StoreError::Backend(format!("embedded store task failed: {e}"))
                }
            })?
    }
}

/// One record ready to write: validated, keyed and encoded before leaving the async task.
struct Prepared {
    key: Vec<u8>,
    /// Length of the key's `<group>\0<entity>\0` prefix (time series only).
    prefix_len: usize,
    event_time: i64,
    bytes: Vec<u8>,
}

fn backend(e: fjall::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The oldest event time served or kept at `now`: records strictly older are past retention.
fn age_cutoff(group: &FeatureGroup, now: i64) -> Option<i64> {
    group.retention.max_age.map(|age| {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(age_ms)
    })
}

fn check_group_name(group: &FeatureGroup) -> Result<()> {
    if group.name.as_bytes().contains(&SEPARATOR) {
        return Err(StoreError::InvalidInput {
            group: group.name.escape_debug().to_string(),
            entity: String::new(),
            reason: "group names may not contain a NUL byte".to_owned(),
        });
    }
    Ok(())
}

/// `<group>\0<entity>` into `buf`, replacing its contents.
fn attribute_key(buf: &mut Vec<u8>, group: &str, entity: &EntityKey) {
    buf.clear();
    buf.extend_from_slice(group.as_bytes());
    buf.push(SEPARATOR);
    buf.extend_from_slice(entity.as_bytes());
}

/// `<group>\0` into `buf`: the prefix of every key of a group.
fn group_prefix(group: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(group.len() + 1);
    buf.extend_from_slice(group.as_bytes());
    buf.push(SEPARATOR);
    buf
}

/// `<group>\0<entity>\0` into `buf`: the prefix of an entity's time series.
fn series_prefix(buf: &mut Vec<u8>, group: &str, entity: &EntityKey) {
    attribute_key(buf, group, entity);
    buf.push(SEPARATOR);
}

/// Flipping the sign bit maps i64 order onto u64 order (negative times included).
const SIGN_BIT: u64 = 1 << 63;

/// Whether a put of `new` records into one entity's series trims it to `max` now. Trimming
/// reads every stored key of the entity, so doing it on every put makes appends cost O(max);
/// instead a put trims with a probability of about `new.len() / (max / 8)`, decided by a hash
/// of the new keys, so an entity holds about `max * 9 / 8` records at most between trims
/// (reads stop at `max`, and the periodic `trim` removes the rest), at an amortised cost of a
/// few key reads per append.
fn trim_due(new: &BTreeMap<&[u8], &[u8]>, max: u32) -> bool {
    let every = u64::from(max / 8).max(1);
    if new.len() as u64 >= every {
        return true;
    }
    new.keys().any(|key| {
        // splitmix64 of the key's last 8 bytes (the inverted event time): event times in a
        // pattern (whole seconds, say) still trim at the intended rate.
        let tail = key.len().saturating_sub(8);
        let mut bytes = [0u8; 8];
        bytes[..key.len() - tail].copy_from_slice(&key[tail..]);
        let mut z = u64::from_be_bytes(bytes).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % every == 0
    })
}

fn inverted_time(event_time: i64) -> [u8; TIME_LEN] {
    // Inverted so that a newer time gives a smaller key and sorts first.
    (!((event_time as u64) ^ SIGN_BIT)).to_be_bytes()
}

/// The event time at the end of a time-series key, if the key has exactly `prefix_len` bytes
/// before it (a longer key belongs to an entity whose key merely starts with ours).
fn key_time(key: &[u8], prefix_len: usize) -> Option<i64> {
    if key.len() != prefix_len + TIME_LEN {
        return None;
    }
    let raw: [u8; TIME_LEN] = key.get(prefix_len..)?.try_into().ok()?;
    Some(((!u64::from_be_bytes(raw)) ^ SIGN_BIT) as i64)
}

fn corrupt(group: &str, entity: &[u8], e: StoreError) -> StoreError {
    StoreError::Corrupt {
        group: group.to_owned(),
        reason: format!(
            "record of entity `{}`: {e}",
            String::from_utf8_lossy(entity).escape_debug()
        ),
    }
}

impl Inner {
    /// The current record of each entity of an attribute group.
    fn read_attributes(&self, group: &str, entities: &[EntityKey]) -> Result<Vec<Option<Record>>> {
        let mut key = Vec::with_capacity(group.len() + 32);
        let mut records = Vec::with_capacity(entities.len());
        for entity in entities {
            if !storable(group, entity) {
                records.push(None);
                continue;
            }
            attribute_key(&mut key, group, entity);
            let Some(bytes) = self.attributes.get(&key).map_err(backend)? else {
                records.push(None);
                continue;
            };
            let record = codec::decode(&bytes).map_err(|e| corrupt(group, entity.as_bytes(), e))?;
            records.push(Some(record));
        }
        Ok(records)
    }

    /// Up to `limit` records of each entity's series, newest first, none older than `oldest`.
    fn scan_series(
        &self,
        group: &str,
        entities: &[EntityKey],
        oldest: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Vec<Record>>> {
        let mut prefix = Vec::with_capacity(group.len() + 32);
        let mut result = Vec::with_capacity(entities.len());
        for entity in entities {
            let mut series = Vec::new();
            if limit == 0 || !storable(group, entity) {
                result.push(series);
                continue;
            }
            series_prefix(&mut prefix, group, entity);
            for guard in self.timeseries.prefix(&prefix) {
                let (key, value) = guard.into_inner().map_err(backend)?;
                let Some(event_time) = key_time(&key, prefix.len()) else {
                    continue;
                };
                if oldest.is_some_and(|o| event_time < o) {
                    // Newest first: everything after this is older still.
                    break;
                }
                let record =
                    codec::decode(&value).map_err(|e| corrupt(group, entity.as_bytes(), e))?;
                series.push(record);
                if series.len() >= limit {
                    break;
                }
            }
            result.push(series);
        }
        Ok(result)
    }

    /// The writer stripe of `group`.
    fn stripe(&self, group: &str) -> &Stripe {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        group.hash(&mut hasher);
        &self.writers[(hasher.finish() % WRITER_LOCKS as u64) as usize]
    }

    /// Takes the writer lock of `group`.
    fn lock_writer(&self, group: &str) -> Writer<'_> {
        let stripe = self.stripe(group);
        // A writer that panicked appended nothing it had not recorded, so there is nothing to
        // repair.
        let recent = stripe
            .recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Writer { stripe, recent }
    }

    /// A batch whose durability [`Inner::append`] and [`Inner::wait_durable`] handle.
    fn batch(&self) -> fjall::OwnedWriteBatch {
        self.db.batch().durability(None)
    }

    /// Appends `batch` to the journal and applies it, returning its ticket for
    /// [`Inner::wait_durable`]. Called with the group's writer lock held: a later writer of
    /// the group that read this batch's records then holds a later ticket, so it is not
    /// answered before the records it based its decisions on are durable.
    fn append(&self, batch: fjall::OwnedWriteBatch) -> Result<u64> {
        batch.commit().map_err(backend)?;
        Ok(self.commits.appended.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// Returns once the batch of `ticket`, and every batch appended before it, is durable.
    fn wait_durable(&self, ticket: u64) -> Result<()> {
        let mut synced = self
            .commits
            .synced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *synced >= ticket {
            return Ok(());
        }
        // Every ticket up to this one was handed out after its batch reached the journal, so
        // the fsync below covers them all.
        let covered = self.commits.appended.load(Ordering::SeqCst);
        self.db.persist(DURABLE).map_err(backend)?;
        *synced = covered;
        Ok(())
    }

    /// Appends `batch` under the group's `writer` lock, records what it `written`, releases
    /// the lock, and waits until the batch is durable.
    fn commit(
        &self,
        batch: fjall::OwnedWriteBatch,
        mut writer: Writer<'_>,
        written: Written,
    ) -> Result<()> {
        let ticket = self.append(batch)?;
        // Numbered only once applied: a writer that reads the new number reads this batch.
        let number = writer.stripe.commits.load(Ordering::Relaxed) + 1;
        writer.recent.push(number, written);
        writer.stripe.commits.store(number, Ordering::Release);
        drop(writer);
        self.wait_durable(ticket)
    }

    fn put_attributes(&self, group: &str, prepared: Vec<Prepared>) -> Result<Vec<PutOutcome>> {
        // Read before locking (see the module documentation), then catch up under the lock.
        let times = Arc::new(PutTimes::of(&prepared));
        let stripe = self.stripe(group);
        let seen = stripe.commits.load(Ordering::Acquire);
        let mut stored = prepared
            .iter()
            .map(|p| self.stored_event_time(group, &p.key))
            .collect::<Result<Vec<_>>>()?;
        let writer = self.lock_writer(group);
        let now = stripe.commits.load(Ordering::Relaxed);
        if now != seen {
            match writer.recent.since(seen, now) {
                Some(puts) => {
                    for (current, p) in stored.iter_mut().zip(&prepared) {
                        for put in &puts {
                            *current = (*current).max(put.get(&p.key));
                        }
                    }
                }
                None => {
                    for (current, p) in stored.iter_mut().zip(&prepared) {
                        *current = self.stored_event_time(group, &p.key)?;
                    }
                }
            }
        }
        // The write decided earlier in this batch for each key (its index), so a batch holding
        // several writes for one entity is judged write by write, and only the last applied
        // one is written.
        let mut winners: HashMap<&[u8], usize> = HashMap::with_capacity(prepared.len());
        let mut outcomes = Vec::with_capacity(prepared.len());
        for (i, p) in prepared.iter().enumerate() {
            let current = match winners.get(p.key.as_slice()) {
                Some(w) => Some(prepared[*w].event_time),
                None => stored[i],
            };
            if current.is_some_and(|t| t >= p.event_time) {
                outcomes.push(PutOutcome::Stale);
            } else {
                winners.insert(&p.key, i);
                outcomes.push(PutOutcome::Applied);
            }
        }
        // Inserted in the batch's order, not the map's: a caller that sorts its batch by key
        // (batch ingestion does) gets inserts that walk the memtable in order, several times
        // cheaper than scattered ones.
        let mut batch = self.batch();
        for (i, p) in prepared.iter().enumerate() {
            if winners.get(p.key.as_slice()) == Some(&i) {
                batch.insert(&self.attributes, p.key.as_slice(), p.bytes.as_slice());
            }
        }
        self.commit(batch, writer, Written::Puts(times))?;
        Ok(outcomes)
    }

    /// Read-modify-write under the writer lock, so no put or other update interleaves; one
    /// durable batch for all the entities.
    fn update_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        mut updater: crate::Updater,
    ) -> Result<Vec<Option<Record>>> {
        let writer = self.lock_writer(&group.name);
        let mut updated: HashMap<Vec<u8>, Record> = HashMap::new();
        let mut outcome = Vec::with_capacity(entities.len());
        let mut batch = self.batch();
        let storage = group.storage_name();
        for (index, entity) in entities.iter().enumerate() {
            let mut key = Vec::with_capacity(storage.len() + entity.0.len() + 1);
            attribute_key(&mut key, &storage, entity);
            let stored = match updated.get(&key) {
                Some(r) => Some(r.clone()),
                None => match self.attributes.get(&key).map_err(backend)? {
                    None => None,
                    Some(bytes) => match codec::decode(&bytes) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            tracing::warn!(group = %group.name, entity = %entity.as_str().escape_debug(), error = %e, "updating an undecodable stored record as absent");
                            None
                        }
                    },
                },
            };
            let Some(next) = updater(index, entity, stored) else {
                outcome.push(None);
                continue;
            };
            crate::check_size(group, entity, &next)?;
            let bytes = codec::encode(&next).map_err(|e| StoreError::InvalidInput {
                group: group.name.clone(),
                entity: entity.as_str().escape_debug().to_string(),
                reason: e.to_string(),
            })?;
            batch.insert(&self.attributes, key.as_slice(), bytes);
            updated.insert(key, next.clone());
            outcome.push(Some(next));
        }
        self.commit(batch, writer, Written::Unrecorded)?;
        Ok(outcome)
    }

    /// The event time of the stored attribute record, if any. A record that cannot be decoded
    /// is treated as absent so that a newer write can replace it, rather than wedging the key.
    fn stored_event_time(&self, group: &str, key: &[u8]) -> Result<Option<i64>> {
        let Some(stored) = self.attributes.get(key).map_err(backend)? else {
            return Ok(None);
        };
        match codec::decode_event_time(&stored) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                tracing::warn!(group, key = %String::from_utf8_lossy(key).escape_debug(), error = %e, "replacing an undecodable stored record");
                Ok(None)
            }
        }
    }

    fn put_timeseries(
        &self,
        group: &str,
        max_records: Option<u32>,
        prepared: Vec<Prepared>,
    ) -> Result<Vec<PutOutcome>> {
        let outcomes = vec![PutOutcome::Applied; prepared.len()];
        // Per entity prefix, the new records by key; a later write of the same event time in
        // the batch replaces an earlier one, as it would across batches.
        let mut by_entity: BTreeMap<&[u8], BTreeMap<&[u8], &[u8]>> = BTreeMap::new();
        for p in &prepared {
            by_entity
                .entry(&p.key[..p.prefix_len])
                .or_default()
                .insert(&p.key, &p.bytes);
        }
        let writer = self.lock_writer(group);
        let mut batch = self.batch();
        for (prefix, mut new) in by_entity {
            if let Some(max) = max_records {
                if trim_due(&new, max) {
                    self.trim_entity_on_put(&mut batch, prefix, &mut new, max as usize)?;
                }
            }
            for (key, bytes) in new {
                batch.insert(&self.timeseries, key, bytes);
            }
        }
        self.commit(batch, writer, Written::NoAttributes)?;
        Ok(outcomes)
    }

    /// Keeps the newest `max` of an entity's stored and new records (see [`trim_due`] for
    /// when): stored ones past it are
    /// removed in `batch`, new ones past it are dropped from `new` before being written.
    fn trim_entity_on_put(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        prefix: &[u8],
        new: &mut BTreeMap<&[u8], &[u8]>,
        max: usize,
    ) -> Result<()> {
        let mut stored = Vec::new();
        for guard in self.timeseries.prefix(prefix) {
            let key = guard.key().map_err(backend)?;
            if key_time(&key, prefix.len()).is_some() {
                stored.push(key);
            }
        }
        if stored.len() + new.len() <= max {
            return Ok(());
        }
        // Merge the two newest-first key lists; a key in both is one record (replaced).
        let mut kept = 0;
        let new_keys: Vec<&[u8]> = new.keys().copied().collect();
        let (mut i, mut j) = (0, 0);
        let mut drop_new = Vec::new();
        while i < stored.len() || j < new_keys.len() {
            let take_stored = match (stored.get(i), new_keys.get(j)) {
                (Some(s), Some(n)) => s.as_ref() <= *n,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if take_stored {
                let key = &stored[i];
                let also_new = new_keys.get(j).is_some_and(|n| *n == key.as_ref());
                if kept >= max {
                    batch.remove(&self.timeseries, key.clone());
                    if also_new {
                        drop_new.push(new_keys[j]);
                    }
                }
                kept += 1;
                i += 1;
                if also_new {
                    j += 1;
                }
            } else {
                if kept >= max {
                    drop_new.push(new_keys[j]);
                }
                kept += 1;
                j += 1;
            }
        }
        for key in drop_new {
            new.remove(key);
        }
        Ok(())
    }

    fn delete(&self, group: &FeatureGroup, entities: &[EntityKey]) -> Result<()> {
        let writer = self.lock_writer(&group.name);
        let mut batch = self.batch();
        let mut key = Vec::new();
        let storage = group.storage_name();
        for entity in entities {
            if !storable(&storage, entity) {
                continue;
            }
            match group.kind {
                GroupKind::Attribute => {
                    attribute_key(&mut key, &storage, entity);
                    batch.remove(&self.attributes, key.as_slice());
                }
                GroupKind::Timeseries => {
                    series_prefix(&mut key, &storage, entity);
                    for guard in self.timeseries.prefix(&key) {
                        let stored = guard.key().map_err(backend)?;
                        if key_time(&stored, key.len()).is_some() {
                            batch.remove(&self.timeseries, stored);
                        }
                    }
                }
            }
        }
        let written = match group.kind {
            GroupKind::Attribute => Written::Unrecorded,
            GroupKind::Timeseries => Written::NoAttributes,
        };
        self.commit(batch, writer, written)
    }

    fn trim(&self, group: &FeatureGroup, now: i64) -> Result<u64> {
        let cutoff = age_cutoff(group, now);
        let prefix = group_prefix(&group.storage_name());
        let mut candidates: Vec<fjall::UserKey> = Vec::new();
        let mut removed = 0;
        match group.kind {
            GroupKind::Attribute => {
                let Some(cutoff) = cutoff else {
                    return Ok(0);
                };
                for guard in self.attributes.prefix(&prefix) {
                    let (key, value) = guard.into_inner().map_err(backend)?;
                    if codec::decode_event_time(&value).is_ok_and(|t| t < cutoff) {
                        candidates.push(key);
                    }
                    if candidates.len() >= TRIM_CHUNK {
                        removed +=
                            self.remove_expired_attributes(&group.name, &mut candidates, cutoff)?;
                    }
                }
                removed += self.remove_expired_attributes(&group.name, &mut candidates, cutoff)?;
            }
            GroupKind::Timeseries => {
                let max_records = group.retention.max_records.map(|m| m as usize);
                if cutoff.is_none() && max_records.is_none() {
                    return Ok(0);
                }
                // Keys are sorted by entity, then newest first: one pass counts each entity's
                // records in order. The scan reads a snapshot, so chunks committed meanwhile
                // do not disturb the count.
                let mut entity: Vec<u8> = Vec::new();
                let mut position = 0usize;
                for guard in self.timeseries.prefix(&prefix) {
                    let key = guard.key().map_err(backend)?;
                    let Some(rest) = key.get(prefix.len()..) else {
                        continue;
                    };
                    let Some(entity_len) = rest.len().checked_sub(TIME_LEN + 1) else {
                        continue;
                    };
                    let this_entity = &rest[..entity_len];
                    if this_entity != entity.as_slice() {
                        entity.clear();
                        entity.extend_from_slice(this_entity);
                        position = 0;
                    }
                    let Some(event_time) = key_time(&key, prefix.len() + entity_len + 1) else {
                        continue;
                    };
                    let over_count = max_records.is_some_and(|m| position >= m);
                    let too_old = cutoff.is_some_and(|c| event_time < c);
                    position += 1;
                    if over_count || too_old {
                        candidates.push(key);
                    }
                    if candidates.len() >= TRIM_CHUNK {
                        removed += self.remove_series_keys(&group.name, &mut candidates)?;
                    }
                }
                removed += self.remove_series_keys(&group.name, &mut candidates)?;
            }
        }
        Ok(removed)
    }

    /// Removes the candidates that are still past `cutoff` under the writer lock: a put may
    /// have replaced one with a newer record since the scan saw it.
    fn remove_expired_attributes(
        &self,
        group: &str,
        candidates: &mut Vec<fjall::UserKey>,
        cutoff: i64,
    ) -> Result<u64> {
        if candidates.is_empty() {
            return Ok(0);
        }
        let writer = self.lock_writer(group);
        let mut batch = self.batch();
        let mut removed = 0;
        for key in candidates.drain(..) {
            let still_expired = match self.attributes.get(&key).map_err(backend)? {
                Some(value) => codec::decode_event_time(&value).is_ok_and(|t| t < cutoff),
                None => false,
            };
            if still_expired {
                batch.remove(&self.attributes, key);
                removed += 1;
            }
        }
        self.commit(batch, writer, Written::Unrecorded)?;
        Ok(removed)
    }

    /// Removes time-series keys that still exist (a concurrent put may have trimmed some).
    fn remove_series_keys(&self, group: &str, candidates: &mut Vec<fjall::UserKey>) -> Result<u64> {
        if candidates.is_empty() {
            return Ok(0);
        }
        let writer = self.lock_writer(group);
        let mut batch = self.batch();
        let mut removed = 0;
        for key in candidates.drain(..) {
            if self.timeseries.contains_key(&key).map_err(backend)? {
                batch.remove(&self.timeseries, key);
                removed += 1;
            }
        }
        self.commit(batch, writer, Written::NoAttributes)?;
        Ok(removed)
    }
}

impl EmbeddedStore {
    fn prepare(&self, group: &FeatureGroup, writes: &[Write]) -> Result<Vec<Prepared>> {
        check_group_name(group)?;
        let mut prepared = Vec::with_capacity(writes.len());
        let storage = group.storage_name();
        for w in writes {
            let invalid = |reason: String| StoreError::InvalidInput {
                group: group.name.clone(),
                entity: shown(&w.entity),
                reason,
            };
            if !storable(&storage, &w.entity) {
                return Err(invalid(unstorable_reason(&storage, &w.entity)));
            }
            let bytes = codec::encode(&w.record).map_err(|e| invalid(e.to_string()))?;
            crate::check_encoded_size(group, &w.entity, bytes.len())?;
            let mut key = Vec::with_capacity(storage.len() + w.entity.0.len() + 2 + TIME_LEN);
            let prefix_len = match group.kind {
                GroupKind::Attribute => {
                    attribute_key(&mut key, &storage, &w.entity);
                    key.len()
                }
                GroupKind::Timeseries => {
                    series_prefix(&mut key, &storage, &w.entity);
                    let len = key.len();
                    key.extend_from_slice(&inverted_time(w.record.event_time));
                    len
                }
            };
            prepared.push(Prepared {
                key,
                prefix_len,
                event_time: w.record.event_time,
                bytes,
            });
        }
        Ok(prepared)
    }
}

#[async_trait]
impl RecordReader for EmbeddedStore {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        check_group_name(group)?;
        if entities.len() <= INLINE_READ_RECORDS {
            return self.inner.read_attributes(&group.storage_name(), entities);
        }
        let mut records = Vec::with_capacity(entities.len());
        for chunk in entities.chunks(INLINE_READ_RECORDS) {
            let (name, chunk) = (group.storage_name().into_owned(), chunk.to_vec());
            records.extend(
                self.blocking(move |inner| inner.read_attributes(&name, &chunk))
                    .await?,
            );
        }
        Ok(records)
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        check_group_name(group)?;
        let oldest = match (age_cutoff(group, now_ms()), query.since) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        // Puts trim lazily (see `trim_due`), so a series may briefly hold more than its
        // retention allows: never serve past it.
        let limit = match group.retention.max_records {
            Some(max) => query.top_n.min(max as usize),
            None => query.top_n,
        };
        let per_chunk = (INLINE_READ_RECORDS / limit.max(1)).max(1);
        if entities.len() <= per_chunk {
            return self
                .inner
                .scan_series(&group.storage_name(), entities, oldest, limit);
        }
        let mut result = Vec::with_capacity(entities.len());
        for chunk in entities.chunks(per_chunk) {
            let (name, chunk) = (group.storage_name().into_owned(), chunk.to_vec());
            result.extend(
                self.blocking(move |inner| inner.scan_series(&name, &chunk, oldest, limit))
                    .await?,
            );
        }
        Ok(result)
    }
}

#[async_trait]
impl OnlineStore for EmbeddedStore {
    async fn put(&self, group: &FeatureGroup, writes: &[Write]) -> Result<Vec<PutOutcome>> {
        if writes.is_empty() {
            return Ok(Vec::new());
        }
        // Every record is checked and encoded before anything is written, so a bad record
        // fails its whole batch and leaves the store untouched.
        let prepared = self.prepare(group, writes)?;
        let name = group.name.clone();
        match group.kind {
            GroupKind::Attribute => {
                self.blocking(move |inner| inner.put_attributes(&name, prepared))
                    .await
            }
            GroupKind::Timeseries => {
                let max_records = group.retention.max_records;
                self.blocking(move |inner| inner.put_timeseries(&name, max_records, prepared))
                    .await
            }
        }
    }

    async fn update(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: crate::Updater,
    ) -> Result<Vec<Option<Record>>> {
        check_group_name(group)?;
        if group.kind != GroupKind::Attribute {
            return Err(StoreError::InvalidInput {
                group: group.name.clone(),
                entity: String::new(),
                reason: "only attribute groups are updated in place; time series are appended"
                    .to_owned(),
            });
        }
        let storage = group.storage_name();
        if let Some(bad) = entities.iter().find(|e| !storable(&storage, e)) {
            return Err(StoreError::InvalidInput {
                group: group.name.clone(),
                entity: shown(bad),
                reason: unstorable_reason(&group.name, bad),
            });
        }
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let (group, entities) = (group.clone(), entities.to_vec());
        self.blocking(move |inner| inner.update_attributes(&group, &entities, updater))
            .await
    }

    async fn delete(&self, group: &FeatureGroup, entities: &[EntityKey]) -> Result<()> {
        check_group_name(group)?;
        if entities.is_empty() {
            return Ok(());
        }
        let group = group.clone();
        let entities = entities.to_vec();
        self.blocking(move |inner| inner.delete(&group, &entities))
            .await
    }

    async fn trim(&self, group: &FeatureGroup, now: i64) -> Result<u64> {
        check_group_name(group)?;
        let group = group.clone();
        self.blocking(move |inner| inner.trim(&group, now)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_in_use_says_so_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path()).unwrap();
        let Err(err) = EmbeddedStore::open(dir.path()) else {
            panic!("a second open of a directory in use succeeded");
        };
        let message = err.to_string();
        assert!(
            message.contains("in use by another process") && message.contains("--data-dir"),
            "{message}"
        );
    }

    #[test]
    fn inverted_time_sorts_newest_first() {
        let times = [
            i64::MIN,
            -1_000,
            -1,
            0,
            1,
            1_000,
            1_700_000_000_000,
            i64::MAX,
        ];
        for pair in times.windows(2) {
            assert!(inverted_time(pair[1]) < inverted_time(pair[0]));
        }
    }

    #[test]
    fn key_time_round_trips_and_rejects_longer_entities() {
        let mut key = Vec::new();
        series_prefix(&mut key, "g", &EntityKey("u1".into()));
        let prefix_len = key.len();
        key.extend_from_slice(&inverted_time(1_700_000_000_123));
        assert_eq!(key_time(&key, prefix_len), Some(1_700_000_000_123));
        for t in [i64::MIN, -5, 0, i64::MAX] {
            key.truncate(prefix_len);
            key.extend_from_slice(&inverted_time(t));
            assert_eq!(key_time(&key, prefix_len), Some(t));
        }

        let mut other = Vec::new();
        series_prefix(&mut other, "g", &EntityKey("u1\u{1f}x".into()));
        other.extend_from_slice(&inverted_time(5));
        assert_eq!(key_time(&other, prefix_len), None);
    }

    fn prepared(key: &str, event_time: i64) -> Prepared {
        Prepared {
            key: key.as_bytes().to_vec(),
            prefix_len: key.len(),
            event_time,
            bytes: Vec::new(),
        }
    }

    #[test]
    fn put_times_keep_the_newest_event_time_per_key() {
        let times = PutTimes::of(&[
            prepared("g\0a", 5),
            prepared("g\0b", 7),
            prepared("g\0a", 9),
            prepared("g\0a", 3),
        ]);
        assert_eq!(times.get(b"g\0a"), Some(9));
        assert_eq!(times.get(b"g\0b"), Some(7));
        assert_eq!(times.get(b"g\0c"), None);
        assert_eq!(times.get(b"g\0"), None);
    }

    #[test]
    fn recent_commits_answer_only_for_an_unbroken_recorded_run() {
        let put = |t| Written::Puts(Arc::new(PutTimes::of(&[prepared("k", t)])));
        let mut recent = RecentCommits::default();
        recent.push(1, put(10));
        recent.push(2, Written::NoAttributes);
        recent.push(3, put(30));
        let newest = |puts: Vec<Arc<PutTimes>>| puts.iter().filter_map(|p| p.get(b"k")).max();

        assert_eq!(recent.since(0, 3).map(newest), Some(Some(30)));
        assert_eq!(recent.since(1, 2).map(newest), Some(None));
        assert_eq!(recent.since(2, 3).map(newest), Some(Some(30)));
        // A commit after 3 that is not kept yet.
        assert!(recent.since(2, 4).is_none());

        recent.push(4, Written::Unrecorded);
        assert!(recent.since(2, 4).is_none());
        recent.push(5, put(50));
        assert_eq!(recent.since(4, 5).map(newest), Some(Some(50)));

        // Old commits fall out: a writer that read before them reads again.
        for n in 6..6 + RECENT_COMMITS as u64 {
            recent.push(n, Written::NoAttributes);
        }
        assert!(recent.since(4, 5 + RECENT_COMMITS as u64).is_none());
        assert!(recent.since(6, 5 + RECENT_COMMITS as u64).is_some());
    }

    #[test]
    fn recent_commits_hold_a_bounded_number_of_keys() {
        let put = |keys: std::ops::Range<usize>| {
            let batch: Vec<Prepared> = keys.map(|k| prepared(&format!("k{k}"), 1)).collect();
            Written::Puts(Arc::new(PutTimes::of(&batch)))
        };
        let half = RECENT_KEYS / 2;
        let mut recent = RecentCommits::default();
        recent.push(1, put(0..half));
        recent.push(2, put(half..2 * half));
        assert_eq!(recent.keys, 2 * half);
        assert!(recent.since(0, 2).is_some());
        // A third commit of that size pushes the first out.
        recent.push(3, put(0..half));
        assert_eq!(recent.keys, 2 * half);
        assert!(recent.since(0, 3).is_none());
        assert!(recent.since(1, 3).is_some());
        // The newest is kept whatever its size.
        recent.push(4, put(0..RECENT_KEYS + 1));
        assert_eq!(recent.keys, RECENT_KEYS + 1);
        assert!(recent.since(3, 4).is_some());
        assert!(recent.since(2, 4).is_none());
    }

    /// Reads past `INLINE_READ_RECORDS` go to the blocking pool in chunks; the answer is the
    /// same as one read would give, in the order asked.
    #[tokio::test]
    async fn large_reads_answer_in_chunks_in_order() {
        use crate::conformance::{attribute_group, timeseries_group};
        use cellar_spec::Value;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let record = |t: i64| Record::new(t, vec![Value::String(format!("r{t}")), Value::Int64(t)]);
        let attributes = attribute_group("profile");
        let entities: Vec<EntityKey> = (0..3000).map(|i| EntityKey(format!("u{i}"))).collect();
        let writes: Vec<Write> = entities
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == 0)
            .map(|(i, e)| Write {
                entity: e.clone(),
                record: record(i as i64),
            })
            .collect();
        store.put(&attributes, &writes).await.unwrap();
        let found = store.get_attributes(&attributes, &entities).await.unwrap();
        assert_eq!(found.len(), 3000);
        for (i, r) in found.iter().enumerate() {
            let expected = (i % 3 == 0).then(|| record(i as i64));
            assert_eq!(r.as_ref(), expected.as_ref(), "entity {i}");
        }

        let series = timeseries_group("clicks", None, None);
        let users: Vec<EntityKey> = (0..45).map(|i| EntityKey(format!("u{i}"))).collect();
        let writes: Vec<Write> = users
            .iter()
            .enumerate()
            .flat_map(|(u, e)| {
                (0..60).map(move |t| Write {
                    entity: e.clone(),
                    record: record((u * 1000 + t) as i64),
                })
            })
            .collect();
        store.put(&series, &writes).await.unwrap();
        let query = TimeseriesQuery {
            top_n: 50,
            since: None,
        };
        // 45 users x 50 records is three chunks.
        assert!(users.len() * query.top_n > 2 * INLINE_READ_RECORDS);
        let found = store.scan_timeseries(&series, &users, query).await.unwrap();
        assert_eq!(found.len(), users.len());
        for (u, records) in found.iter().enumerate() {
            let times: Vec<i64> = records.iter().map(|r| r.event_time).collect();
            let expected: Vec<i64> = (10..60).rev().map(|t| (u * 1000 + t) as i64).collect();
            assert_eq!(times, expected, "user {u}");
        }
    }
}
