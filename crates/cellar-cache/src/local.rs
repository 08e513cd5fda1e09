//! The local tier: an in-process cache bounded by bytes, in front of the next tier.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind, Tier, WriteStrategy};
use cellar_store::{Record, RecordReader, Result, TimeseriesQuery};
use moka::ops::compute::Op;
use moka::sync::Cache;

use crate::admission::Doorkeeper;
use crate::flight::Flights;
use crate::metrics::{CacheMetrics, Outcome, Stage};
use crate::ttl::{refresh_early, Deadlines, ReadCosts};

/// Records a time-series entry keeps when the group sets no retention count.
pub const DEFAULT_CACHED_SERIES_LEN: usize = 200;

/// Key of one cached entry: group and entity, joined by a NUL (neither may contain one).
type CacheKey = String;

fn cache_key(group: &str, entity: &EntityKey) -> CacheKey {
    let mut k = String::with_capacity(group.len() + 1 + entity.0.len());
    write_cache_key(&mut k, group, entity);
    k
}

/// Writes a key into a reused buffer, so lookups that hit allocate nothing for the key.
fn write_cache_key(buf: &mut String, group: &str, entity: &EntityKey) {
    buf.clear();
    buf.push_str(group);
    buf.push('\0');
    buf.push_str(&entity.0);
}

/// What the cache knows about one entity of one group.
#[derive(Debug, Clone)]
pub(crate) enum Cached {
    /// The next tier had no record: a negative entry.
    Missing,
    Attribute(Arc<Record>),
    /// The newest records, newest first. `complete` is true when they are all the records the
    /// next tier had (fewer than asked for), so any `top_n` can be answered from them.
    Series {
        records: Arc<Vec<Record>>,
        complete: bool,
    },
}

impl Cached {
    /// Event time of the newest record held; a newer one always replaces an older one.
    fn newest_event_time(&self) -> Option<i64> {
        match self {
            Cached::Missing => None,
            Cached::Attribute(r) => Some(r.event_time),
            Cached::Series { records, .. } => records.first().map(|r| r.event_time),
        }
    }

    fn weight(&self, key_len: usize) -> u32 {
        // Rough in-memory size: the struct overheads plus the values' payloads.
        let records = match self {
            Cached::Missing => 0,
            Cached::Attribute(r) => record_weight(r),
            Cached::Series { records, .. } => records.iter().map(record_weight).sum(),
        };
        (64 + key_len + records).min(u32::MAX as usize) as u32
    }
}

fn record_weight(r: &Record) -> usize {
    fn value_weight(v: &cellar_spec::Value) -> usize {
        use cellar_spec::Value::*;
        32 + match v {
            String(s) => s.len(),
            Bytes(b) => b.len(),
            List(xs) | Set(xs) => xs.iter().map(value_weight).sum(),
            Map(kv) => kv.iter().map(|(k, v)| k.len() + value_weight(v)).sum(),
            Vector(xs) => xs.len() * 4,
            _ => 0,
        }
    }
    48 + r.values.iter().map(value_weight).sum::<usize>()
}

#[derive(Debug, Clone)]
struct Entry {
    cached: Cached,
    deadlines: Deadlines,
}

/// Tells moka when each entry must go: at its own hard deadline.
struct HardExpiry;

impl moka::Expiry<CacheKey, Entry> for HardExpiry {
    fn expire_after_create(
        &self,
        _: &CacheKey,
        e: &Entry,
        created_at: Instant,
    ) -> Option<Duration> {
        Some(e.deadlines.hard.saturating_duration_since(created_at))
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        e: &Entry,
        updated_at: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(e.deadlines.hard.saturating_duration_since(updated_at))
    }
}

/// The in-process cache tier. Implements [`RecordReader`] over the next tier (the remote
/// cache or the store), serving each group only if its policy lists the local tier.
pub struct LocalTier {
    /// Entries by group and entity, weighed in bytes; moka evicts past the byte budget and
    /// drops entries at their hard deadline.
    cache: Cache<CacheKey, Entry>,
    /// Where misses and refreshes read from.
    next: Arc<dyn RecordReader>,
    /// Keys being refreshed in the background, so a stale hot key is refreshed once.
    refreshing: Arc<Mutex<HashSet<CacheKey>>>,
    /// Misses being read from the next tier, so concurrent misses on a key make one read.
    flights: Flights<CacheKey, Cached>,
    /// Reads of entities not cached yet, for groups that admit only after several.
    doorkeeper: Doorkeeper<CacheKey>,
    /// How long reads of the next tier take, per group: how early hot entries refresh.
    costs: Arc<ReadCosts>,
    metrics: CacheMetrics,
}

impl LocalTier {
    /// A local tier of at most `max_bytes` in front of `next`.
    pub fn new(max_bytes: u64, next: Arc<dyn RecordReader>, metrics: CacheMetrics) -> LocalTier {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &CacheKey, e: &Entry| e.cached.weight(k.len()))
            .expire_after(HardExpiry)
            .build();
        LocalTier {
            cache,
            next,
            refreshing: Arc::default(),
            flights: Flights::default(),
            doorkeeper: Doorkeeper::default(),
            costs: Arc::default(),
            metrics,
        }
    }

    /// Reads missed keys from the next tier, once per key however many requests missed it at
    /// the same time: this request reads the keys nobody else is reading, in one call, and
    /// waits for the others' answers. Each answer is cached here before it is returned, if the
    /// group's admission policy lets it in.
    async fn read_misses(
        &self,
        group: &FeatureGroup,
        keys: Vec<CacheKey>,
        entities: Vec<EntityKey>,
        series_len: usize,
    ) -> Result<Vec<Cached>> {
        let admitted: Vec<bool> = keys
            .iter()
            .map(|k| self.doorkeeper.admit(&group.serving, k))
            .collect();
        let refused = admitted.iter().filter(|a| !**a).count() as u64;
        self.metrics
            .record_n(Tier::Local, &group.name, Outcome::NotAdmitted, refused);
        let answers = self
            .flights
            .read(&keys, |asked: Vec<usize>| {
                let (keys, entities, admitted) = (&keys, &entities, &admitted);
                async move {
                    let wanted: Vec<EntityKey> =
                        asked.iter().map(|&i| entities[i].clone()).collect();
                    let found = self.timed_read_next(group, &wanted, series_len).await?;
                    for (&i, cached) in asked.iter().zip(&found) {
                        if admitted[i] {
                            insert_if_newer(&self.cache, group, keys[i].clone(), cached.clone());
                        }
                    }
                    Ok(found)
                }
            })
            .await?;
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or(Cached::Missing))
            .collect())
    }

    /// Reads from the next tier, learning how long such reads take.
    async fn timed_read_next(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        series_len: usize,
    ) -> Result<Vec<Cached>> {
        let started = Instant::now();
        let found = read_next(&*self.next, group, entities, series_len).await?;
        self.costs.observe(&group.name, started.elapsed());
        Ok(found)
    }

    fn serves(group: &FeatureGroup) -> bool {
        group.serving.tiers.contains(&Tier::Local)
    }

    /// The group's cost of a read of the next tier, looked up once per request; zero (no early
    /// refresh) when the group does not refresh early.
    fn read_cost(&self, group: &FeatureGroup) -> Duration {
        if group.serving.early_refresh > 0.0 {
            self.costs.get(&group.name)
        } else {
            Duration::ZERO
        }
    }

    /// Series entries hold this many records, so that most `top_n` can be answered.
    fn series_len(group: &FeatureGroup) -> usize {
        group
            .retention
            .max_records
            .map_or(DEFAULT_CACHED_SERIES_LEN, |n| n as usize)
    }

    /// Looks up one key. A stale entry is returned and refreshed in the background; so is,
    /// now and then, a fresh one nearing its soft deadline (XFetch), so that a hot entry is
    /// refreshed before any read finds it stale.
    fn lookup(
        &self,
        group: &FeatureGroup,
        key: &str,
        entity: &EntityKey,
        read_cost: Duration,
    ) -> Option<Cached> {
        let entry = self.cache.get(key)?;
        let now = Instant::now();
        if now >= entry.deadlines.hard {
            return None;
        }
        if now >= entry.deadlines.soft {
            self.metrics
                .record(Tier::Local, &group.name, Outcome::Stale);
            self.refresh(group, key.to_owned(), entity.clone());
        } else if group.serving.early_refresh > 0.0
            && !matches!(entry.cached, Cached::Missing)
            && refresh_early(
                entry.deadlines.soft - now,
                read_cost,
                group.serving.early_refresh,
            )
        {
            self.metrics
                .record(Tier::Local, &group.name, Outcome::EarlyRefresh);
            self.refresh(group, key.to_owned(), entity.clone());
        }
        Some(entry.cached)
    }

    fn refresh(&self, group: &FeatureGroup, key: CacheKey, entity: EntityKey) {
        {
            let Ok(mut refreshing) = self.refreshing.lock() else {
                return;
            };
            if !refreshing.insert(key.clone()) {
                return;
            }
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.done_refreshing(&key);
            return;
        };
        let next = self.next.clone();
        let group = group.clone();
        let cache = self.cache.clone();
        let refreshing = self.refreshing.clone();
        let costs = self.costs.clone();
        let len = Self::series_len(&group);
        handle.spawn(async move {
            let started = Instant::now();
            let fresh = read_next(&*next, &group, std::slice::from_ref(&entity), len).await;
            costs.observe(&group.name, started.elapsed());
            match fresh {
                Ok(mut found) => {
                    if let Some(cached) = found.pop() {
                        insert_if_newer(&cache, &group, key.clone(), cached);
                    }
                }
                Err(e) => {
                    tracing::warn!(group = %group.name, error = %e, "local tier refresh failed")
                }
            }
            if let Ok(mut r) = refreshing.lock() {
                r.remove(&key);
            }
        });
    }

    fn done_refreshing(&self, key: &CacheKey) {
        if let Ok(mut r) = self.refreshing.lock() {
            r.remove(key);
        }
    }

    /// Applies a write to the cached copy as the group's write strategy says: write-through
    /// puts the record in (when newer), write-around drops the cached copy. A group that
    /// admits entities only after several reads has write-through update cached copies only:
    /// writes do not admit.
    pub fn record_written(&self, group: &FeatureGroup, entity: &EntityKey, record: &Record) {
        if !Self::serves(group) {
            return;
        }
        let key = cache_key(&group.storage_name(), entity);
        match group.serving.write {
            WriteStrategy::Around => self.cache.invalidate(&key),
            WriteStrategy::Through => {
                let deadlines = Deadlines::positive(&group.serving);
                let len = Self::series_len(group);
                let admits_on_write = group.serving.admit_after <= 1;
                self.cache.entry(key).and_compute_with(|current| {
                    let current = current.map(|e| e.into_value().cached);
                    match (group.kind, current) {
                        (GroupKind::Attribute, None) if !admits_on_write => Op::Nop,
                        (GroupKind::Attribute, Some(Cached::Attribute(cur)))
                            if cur.event_time >= record.event_time =>
                        {
                            Op::Nop
                        }
                        (GroupKind::Attribute, _) => Op::Put(Entry {
                            cached: Cached::Attribute(Arc::new(record.clone())),
                            deadlines,
                        }),
                        (GroupKind::Timeseries, Some(Cached::Series { records, complete })) => {
                            let mut records = (*records).clone();
                            let at = records
                                .iter()
                                .position(|r| r.event_time <= record.event_time)
                                .unwrap_or(records.len());
                            if records.get(at).map(|r| r.event_time) == Some(record.event_time) {
                                records[at] = record.clone();
                            } else {
                                records.insert(at, record.clone());
                            }
                            let complete = complete && records.len() <= len;
                            records.truncate(len);
                            Op::Put(Entry {
                                cached: Cached::Series {
                                    records: Arc::new(records),
                                    complete,
                                },
                                deadlines,
                            })
                        }
                        // Without the series already cached, one record is not the whole
                        // series: leave it to the next read to fill.
                        (GroupKind::Timeseries, Some(Cached::Missing))
                        | (GroupKind::Timeseries, None) => Op::Remove,
                        (GroupKind::Timeseries, Some(Cached::Attribute(_))) => Op::Remove,
                    }
                });
            }
        }
    }

    /// Follows a read-modify-write of an attribute record: the store now holds `record`, even
    /// where its event time equals the cached one's (an aggregate that counted a late event).
    /// Write-through caches it unless a newer record is cached; write-around drops the copy.
    pub fn record_replaced(&self, group: &FeatureGroup, entity: &EntityKey, record: &Record) {
        if !Self::serves(group) {
            return;
        }
        let key = cache_key(&group.storage_name(), entity);
        match (group.serving.write, group.kind) {
            (WriteStrategy::Through, GroupKind::Attribute) => {
                let deadlines = Deadlines::positive(&group.serving);
                let admits_on_write = group.serving.admit_after <= 1;
                self.cache.entry(key).and_compute_with(|current| {
                    match current.map(|e| e.into_value().cached) {
                        Some(Cached::Attribute(cur)) if cur.event_time > record.event_time => {
                            Op::Nop
                        }
                        None if !admits_on_write => Op::Nop,
                        _ => Op::Put(Entry {
                            cached: Cached::Attribute(Arc::new(record.clone())),
                            deadlines,
                        }),
                    }
                });
            }
            _ => self.cache.invalidate(&key),
        }
    }

    /// Drops every cached copy of the given entities of a group.
    pub fn invalidate(&self, group: &FeatureGroup, entities: &[EntityKey]) {
        let storage = group.storage_name();
        for e in entities {
            self.cache.invalidate(&cache_key(&storage, e));
        }
    }

    /// Visits every record held, with the storage name of its group: what this process keeps
    /// in memory, for an operator (or a compliance check) to see.
    pub fn for_each_record(&self, mut visit: impl FnMut(&str, &Record)) {
        for (key, entry) in self.cache.iter() {
            let group = key.split('\0').next().unwrap_or_default();
            match &entry.cached {
                Cached::Missing => {}
                Cached::Attribute(record) => visit(group, record),
                Cached::Series { records, .. } => {
                    records.iter().for_each(|record| visit(group, record))
                }
            }
        }
    }

    /// Bytes held, as weighed.
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

/// Stores `cached` unless the entry already holds a newer record: a slow read never overwrites
/// a fresher write.
fn insert_if_newer(
    cache: &Cache<CacheKey, Entry>,
    group: &FeatureGroup,
    key: CacheKey,
    cached: Cached,
) {
    let deadlines = match cached {
        Cached::Missing => Deadlines::negative(&group.serving),
        _ => Deadlines::positive(&group.serving),
    };
    let incoming = cached.newest_event_time();
    cache.entry(key).and_compute_with(|current| match current {
        Some(cur) if cur.value().cached.newest_event_time() > incoming => Op::Nop,
        _ => Op::Put(Entry { cached, deadlines }),
    });
}

/// Reads entities from the next tier in the cache's shape.
async fn read_next(
    next: &dyn RecordReader,
    group: &FeatureGroup,
    entities: &[EntityKey],
    series_len: usize,
) -> Result<Vec<Cached>> {
    match group.kind {
        GroupKind::Attribute => Ok(next
            .get_attributes(group, entities)
            .await?
            .into_iter()
            .map(|r| r.map_or(Cached::Missing, |r| Cached::Attribute(Arc::new(r))))
            .collect()),
        GroupKind::Timeseries => {
            let query = TimeseriesQuery {
                top_n: series_len,
                since: None,
            };
            Ok(next
                .scan_timeseries(group, entities, query)
                .await?
                .into_iter()
                .map(|records| {
                    if records.is_empty() {
                        Cached::Missing
                    } else {
                        let complete = records.len() < series_len;
                        Cached::Series {
                            records: Arc::new(records),
                            complete,
                        }
                    }
                })
                .collect())
        }
    }
}

#[async_trait]
impl RecordReader for LocalTier {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        if !Self::serves(group) {
            return self.next.get_attributes(group, entities).await;
        }
        let started = Instant::now();
        let read_cost = self.read_cost(group);
        let mut out: Vec<Option<Record>> = vec![None; entities.len()];
        let mut missed: Vec<usize> = Vec::new();
        let mut missed_keys: Vec<CacheKey> = Vec::new();
        let mut key = String::new();
        let storage = group.storage_name();
        for (i, entity) in entities.iter().enumerate() {
            write_cache_key(&mut key, &storage, entity);
            match self.lookup(group, &key, entity, read_cost) {
                Some(Cached::Attribute(r)) => {
                    self.metrics.record(Tier::Local, &group.name, Outcome::Hit);
                    out[i] = Some((*r).clone());
                }
                Some(Cached::Missing) => {
                    self.metrics
                        .record(Tier::Local, &group.name, Outcome::NegativeHit);
                }
                Some(Cached::Series { .. }) | None => {
                    self.metrics.record(Tier::Local, &group.name, Outcome::Miss);
                    missed.push(i);
                    missed_keys.push(key.clone());
                }
            }
        }
        self.metrics
            .observe_latency(Stage::Local, started.elapsed());
        if missed.is_empty() {
            return Ok(out);
        }
        let asked: Vec<EntityKey> = missed.iter().map(|&i| entities[i].clone()).collect();
        let found = self.read_misses(group, missed_keys, asked, 0).await?;
        for (i, cached) in missed.into_iter().zip(found) {
            if let Cached::Attribute(r) = &cached {
                out[i] = Some((**r).clone());
            }
        }
        Ok(out)
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        let len = Self::series_len(group);
        if !Self::serves(group) || query.top_n > len {
            return self.next.scan_timeseries(group, entities, query).await;
        }
        let started = Instant::now();
        let read_cost = self.read_cost(group);
        let mut out: Vec<Vec<Record>> = vec![Vec::new(); entities.len()];
        let mut missed: Vec<usize> = Vec::new();
        let mut missed_keys: Vec<CacheKey> = Vec::new();
        let mut key = String::new();
        let storage = group.storage_name();
        for (i, entity) in entities.iter().enumerate() {
            write_cache_key(&mut key, &storage, entity);
            match self.lookup(group, &key, entity, read_cost) {
                Some(Cached::Series { records, complete })
                    if complete || records.len() >= query.top_n =>
                {
                    self.metrics.record(Tier::Local, &group.name, Outcome::Hit);
                    out[i] = select(&records, query);
                }
                Some(Cached::Missing) => {
                    self.metrics
                        .record(Tier::Local, &group.name, Outcome::NegativeHit);
                }
                _ => {
                    self.metrics.record(Tier::Local, &group.name, Outcome::Miss);
                    missed.push(i);
                    missed_keys.push(key.clone());
                }
            }
        }
        self.metrics
            .observe_latency(Stage::Local, started.elapsed());
        if missed.is_empty() {
            return Ok(out);
        }
        let asked: Vec<EntityKey> = missed.iter().map(|&i| entities[i].clone()).collect();
        let found = self.read_misses(group, missed_keys, asked, len).await?;
        for (i, cached) in missed.into_iter().zip(found) {
            if let Cached::Series { records, .. } = &cached {
                out[i] = select(records, query);
            }
        }
        Ok(out)
    }
}

/// The records of a cached series that a query asks for.
fn select(records: &[Record], query: TimeseriesQuery) -> Vec<Record> {
    records
        .iter()
        .take_while(|r| query.since.is_none_or(|since| r.event_time >= since))
        .take(query.top_n)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use cellar_spec::{ServingPolicy, Value};
    use cellar_store::conformance::{attribute_group, timeseries_group};
    use cellar_store::embedded::EmbeddedStore;
    use cellar_store::{OnlineStore, Write};

    use super::*;

    /// The real store, counting the reads that reach it.
    struct CountingStore {
        store: EmbeddedStore,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl RecordReader for CountingStore {
        async fn get_attributes(
            &self,
            group: &FeatureGroup,
            entities: &[EntityKey],
        ) -> Result<Vec<Option<Record>>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.store.get_attributes(group, entities).await
        }

        async fn scan_timeseries(
            &self,
            group: &FeatureGroup,
            entities: &[EntityKey],
            query: TimeseriesQuery,
        ) -> Result<Vec<Vec<Record>>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.store.scan_timeseries(group, entities, query).await
        }
    }

    /// A store that counts reads and takes `delay` over each, so concurrent misses overlap.
    struct SlowStore {
        store: EmbeddedStore,
        reads: AtomicUsize,
        delay: Duration,
    }

    #[async_trait]
    impl RecordReader for SlowStore {
        async fn get_attributes(
            &self,
            group: &FeatureGroup,
            entities: &[EntityKey],
        ) -> Result<Vec<Option<Record>>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.store.get_attributes(group, entities).await
        }

        async fn scan_timeseries(
            &self,
            group: &FeatureGroup,
            entities: &[EntityKey],
            query: TimeseriesQuery,
        ) -> Result<Vec<Vec<Record>>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.store.scan_timeseries(group, entities, query).await
        }
    }

    async fn slow_tier(delay: Duration) -> (Arc<SlowStore>, Arc<LocalTier>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SlowStore {
            store: EmbeddedStore::open(dir.path()).unwrap(),
            reads: AtomicUsize::new(0),
            delay,
        });
        let group = cached_group(ServingPolicy::default());
        let writes = [Write {
            entity: key("hot"),
            record: record(1, "v1"),
        }];
        store.store.put(&group, &writes).await.unwrap();
        let tier = Arc::new(LocalTier::new(
            1 << 20,
            store.clone(),
            CacheMetrics::default(),
        ));
        (store, tier, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_concurrent_misses_on_one_key_make_one_store_read() {
        let (store, tier, _dir) = slow_tier(Duration::from_millis(200)).await;
        let group = Arc::new(cached_group(ServingPolicy::default()));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (tier, group) = (tier.clone(), group.clone());
                tokio::spawn(
                    async move { tier.get_attributes(&group, &[key("hot")]).await.unwrap() },
                )
            })
            .collect();
        for t in tasks {
            assert_eq!(label(&t.await.unwrap()[0]), Some("v1"));
        }
        assert_eq!(store.reads.load(Ordering::SeqCst), 1, "one store read");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_of_a_cancelled_read_read_for_themselves() {
        let (store, tier, _dir) = slow_tier(Duration::from_millis(300)).await;
        let group = Arc::new(cached_group(ServingPolicy::default()));
        let leader = {
            let (tier, group) = (tier.clone(), group.clone());
            tokio::spawn(async move { tier.get_attributes(&group, &[key("hot")]).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let followers: Vec<_> = (0..10)
            .map(|_| {
                let (tier, group) = (tier.clone(), group.clone());
                tokio::spawn(
                    async move { tier.get_attributes(&group, &[key("hot")]).await.unwrap() },
                )
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        leader.abort();
        for f in followers {
            assert_eq!(label(&f.await.unwrap()[0]), Some("v1"));
        }
        // The cancelled leader's read, then one more by the first follower to notice; the
        // other followers followed that one or found it cached.
        assert!(store.reads.load(Ordering::SeqCst) <= 11);
        assert!(store.reads.load(Ordering::SeqCst) >= 2);
    }

    struct Fixture {
        store: Arc<CountingStore>,
        tier: LocalTier,
        metrics: CacheMetrics,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(max_bytes: u64) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(CountingStore {
                store: EmbeddedStore::open(dir.path()).unwrap(),
                reads: AtomicUsize::new(0),
            });
            let metrics = CacheMetrics::default();
            let tier = LocalTier::new(max_bytes, store.clone(), metrics.clone());
            Fixture {
                store,
                tier,
                metrics,
                _dir: dir,
            }
        }

        fn reads(&self) -> usize {
            self.store.reads.load(Ordering::SeqCst)
        }

        async fn put(&self, group: &FeatureGroup, entity: &str, at: i64, label: &str) {
            self.store
                .store
                .put(
                    group,
                    &[Write {
                        entity: key(entity),
                        record: record(at, label),
                    }],
                )
                .await
                .unwrap();
        }

        async fn get(&self, group: &FeatureGroup, entity: &str) -> Option<Record> {
            self.tier
                .get_attributes(group, &[key(entity)])
                .await
                .unwrap()
                .pop()
                .flatten()
        }
    }

    fn key(s: &str) -> EntityKey {
        EntityKey(s.to_owned())
    }

    fn record(at: i64, label: &str) -> Record {
        Record::new(at, vec![Value::String(label.to_owned())])
    }

    fn cached_group(policy: ServingPolicy) -> FeatureGroup {
        let mut g = attribute_group("profile");
        g.serving = ServingPolicy {
            jitter: 0.0,
            ..policy
        };
        g
    }

    fn label(r: &Option<Record>) -> Option<&str> {
        match r.as_ref()?.value(0) {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_miss_reads_the_next_tier_once_then_hits() {
        let f = Fixture::new(1 << 20);
        let g = cached_group(ServingPolicy::default());
        f.put(&g, "u1", 10, "v1").await;
        assert_eq!(label(&f.get(&g, "u1").await), Some("v1"));
        assert_eq!(label(&f.get(&g, "u1").await), Some("v1"));
        assert_eq!(label(&f.get(&g, "u1").await), Some("v1"));
        assert_eq!(f.reads(), 1);
        assert_eq!(f.metrics.count(Tier::Local, "profile", Outcome::Miss), 1);
        assert_eq!(f.metrics.count(Tier::Local, "profile", Outcome::Hit), 2);
    }

    #[tokio::test]
    async fn missing_entities_are_cached_for_the_negative_ttl() {
        let f = Fixture::new(1 << 20);
        let g = cached_group(ServingPolicy {
            negative_ttl: Duration::from_millis(150),
            ..ServingPolicy::default()
        });
        assert!(f.get(&g, "ghost").await.is_none());
        assert!(f.get(&g, "ghost").await.is_none());
        assert_eq!(f.reads(), 1);
        assert_eq!(
            f.metrics
                .count(Tier::Local, "profile", Outcome::NegativeHit),
            1
        );
        // The entity appears in the store; the negative entry still answers until it expires.
        f.put(&g, "ghost", 10, "here").await;
        assert!(f.get(&g, "ghost").await.is_none());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(label(&f.get(&g, "ghost").await), Some("here"));
        assert_eq!(f.reads(), 2);
    }

    #[tokio::test]
    async fn past_the_hard_ttl_an_entry_is_never_served() {
        let f = Fixture::new(1 << 20);
        let g = cached_group(ServingPolicy {
            soft_ttl: Duration::from_millis(100),
            hard_ttl: Duration::from_millis(100),
            ..ServingPolicy::default()
        });
        f.put(&g, "u1", 10, "old").await;
        assert_eq!(label(&f.get(&g, "u1").await), Some("old"));
        f.put(&g, "u1", 20, "new").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
        assert_eq!(f.reads(), 2);
    }

    #[tokio::test]
    async fn past_the_soft_ttl_a_stale_entry_is_served_and_refreshed() {
        let f = Fixture::new(1 << 20);
        let g = cached_group(ServingPolicy {
            soft_ttl: Duration::from_millis(50),
            hard_ttl: Duration::from_secs(60),
            ..ServingPolicy::default()
        });
        f.put(&g, "u1", 10, "old").await;
        assert_eq!(label(&f.get(&g, "u1").await), Some("old"));
        f.put(&g, "u1", 20, "new").await;
        tokio::time::sleep(Duration::from_millis(120)).await;
        // Stale: served at once, refreshed in the background.
        assert_eq!(label(&f.get(&g, "u1").await), Some("old"));
        let mut refreshed = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            refreshed = f.get(&g, "u1").await;
            if label(&refreshed) == Some("new") {
                break;
            }
        }
        assert_eq!(label(&refreshed), Some("new"));
        assert!(f.metrics.count(Tier::Local, "profile", Outcome::Stale) >= 1);
    }

    #[tokio::test]
    async fn an_entity_is_cached_only_from_its_admit_after_th_read() {
        let f = Fixture::new(1 << 20);
        let g = cached_group(ServingPolicy {
            admit_after: 3,
            ..ServingPolicy::default()
        });
        f.put(&g, "u1", 10, "v1").await;
        for _ in 0..3 {
            assert_eq!(label(&f.get(&g, "u1").await), Some("v1"));
        }
        assert_eq!(
            f.reads(),
            3,
            "the first two answers were not kept, the third was"
        );
        assert_eq!(label(&f.get(&g, "u1").await), Some("v1"));
        assert_eq!(f.reads(), 3);
        assert_eq!(
            f.metrics
                .count(Tier::Local, "profile", Outcome::NotAdmitted),
            2
        );
        // Writes do not admit: an entity written through but never read is not cached...
        f.put(&g, "u2", 10, "w").await;
        f.tier.record_written(&g, &key("u2"), &record(10, "w"));
        assert_eq!(label(&f.get(&g, "u2").await), Some("w"));
        assert_eq!(f.reads(), 4);
        // ...while a cached one takes the write.
        f.tier.record_written(&g, &key("u1"), &record(20, "v2"));
        assert_eq!(label(&f.get(&g, "u1").await), Some("v2"));
        assert_eq!(f.reads(), 4);
    }

    /// Reads one hot key every 10 ms for `run`; returns (stale served, early refreshes).
    async fn read_hot_key(policy: ServingPolicy, run: Duration) -> (u64, u64) {
        let (store, tier, _dir) = slow_tier(Duration::from_millis(20)).await;
        let group = cached_group(policy);
        let started = Instant::now();
        while started.elapsed() < run {
            let got = tier.get_attributes(&group, &[key("hot")]).await.unwrap();
            assert_eq!(label(&got[0]), Some("v1"));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.reads.load(Ordering::SeqCst) >= 2);
        let m = &tier.metrics;
        (
            m.count(Tier::Local, "profile", Outcome::Stale),
            m.count(Tier::Local, "profile", Outcome::EarlyRefresh),
        )
    }

    #[tokio::test]
    async fn a_hot_entry_is_refreshed_before_its_soft_ttl_and_never_served_stale() {
        // Reads of the next tier take 20 ms; beta 25 makes refreshes likely in the last half
        // second or so of the 600 ms soft TTL, so no read in 2 s finds the entry stale.
        let policy = ServingPolicy {
            soft_ttl: Duration::from_millis(600),
            hard_ttl: Duration::from_secs(60),
            early_refresh: 25.0,
            ..ServingPolicy::default()
        };
        let (stale, early) = read_hot_key(policy.clone(), Duration::from_secs(2)).await;
        assert_eq!(stale, 0);
        assert!(early >= 2, "{early} early refreshes");
        // Without early refresh the same reads find it stale.
        let (stale, early) = read_hot_key(
            ServingPolicy {
                early_refresh: 0.0,
                ..policy
            },
            Duration::from_secs(2),
        )
        .await;
        assert!(stale >= 2, "{stale} stale reads");
        assert_eq!(early, 0);
    }

    #[tokio::test]
    async fn write_through_keeps_the_newest_event_time() {
        let f = Fixture::new(1 << 20);
        let g = cached_group(ServingPolicy::default());
        f.tier.record_written(&g, &key("u1"), &record(20, "new"));
        f.tier.record_written(&g, &key("u1"), &record(10, "late"));
        assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
        assert_eq!(
            f.reads(),
            0,
            "a written-through record is served without a store read"
        );
    }

    #[tokio::test]
    async fn a_slow_back_fill_never_overwrites_a_fresher_write() {
        let f = Fixture::new(1 << 20);
        let g = cached_group(ServingPolicy::default());
        // A read found the old record in the next tier and is about to fill the cache ...
        let filled_by_read = Cached::Attribute(Arc::new(record(10, "old")));
        // ... when a newer record is written through.
        f.tier.record_written(&g, &key("u1"), &record(20, "new"));
        insert_if_newer(
            &f.tier.cache,
            &g,
            cache_key("profile", &key("u1")),
            filled_by_read,
        );
        assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
        // A negative fill loses to a record as well.
        insert_if_newer(
            &f.tier.cache,
            &g,
            cache_key("profile", &key("u1")),
            Cached::Missing,
        );
        assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
    }

    #[tokio::test]
    async fn write_around_drops_the_cached_copy() {
        let f = Fixture::new(1 << 20);
        let g = cached_group(ServingPolicy {
            write: WriteStrategy::Around,
            ..ServingPolicy::default()
        });
        f.put(&g, "u1", 10, "old").await;
        assert_eq!(label(&f.get(&g, "u1").await), Some("old"));
        f.put(&g, "u1", 20, "new").await;
        f.tier.record_written(&g, &key("u1"), &record(20, "new"));
        assert_eq!(label(&f.get(&g, "u1").await), Some("new"));
        assert_eq!(f.reads(), 2);
    }

    #[tokio::test]
    async fn groups_without_the_local_tier_are_not_cached() {
        let f = Fixture::new(1 << 20);
        let g = cached_group(ServingPolicy {
            tiers: vec![],
            ..ServingPolicy::default()
        });
        f.put(&g, "u1", 10, "v").await;
        f.get(&g, "u1").await;
        f.get(&g, "u1").await;
        assert_eq!(f.reads(), 2);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_byte_budget() {
        let budget = 64 * 1024;
        let f = Fixture::new(budget);
        let g = cached_group(ServingPolicy::default());
        let long = "x".repeat(1000);
        for i in 0..500 {
            f.tier
                .record_written(&g, &key(&format!("u{i}")), &record(1, &long));
        }
        assert!(
            f.tier.weighted_size() <= budget,
            "{}",
            f.tier.weighted_size()
        );
    }

    #[tokio::test]
    async fn cached_series_answer_top_n_and_since_and_take_writes() {
        let f = Fixture::new(1 << 20);
        let mut g = timeseries_group("clicks", Some(10), None);
        g.serving.jitter = 0.0;
        for t in 1..=5 {
            f.put(&g, "u1", t * 100, &format!("c{t}")).await;
        }
        let q = |top_n, since| TimeseriesQuery { top_n, since };
        let read = |query| {
            let tier = &f.tier;
            let g = &g;
            async move {
                tier.scan_timeseries(g, &[key("u1")], query)
                    .await
                    .unwrap()
                    .pop()
                    .unwrap()
                    .iter()
                    .map(|r| r.event_time)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(read(q(3, None)).await, vec![500, 400, 300]);
        assert_eq!(read(q(10, Some(250))).await, vec![500, 400, 300]);
        assert_eq!(f.reads(), 1, "the whole series is cached by the first read");
        f.tier.record_written(&g, &key("u1"), &record(450, "c45"));
        assert_eq!(read(q(3, None)).await, vec![500, 450, 400]);
        assert_eq!(f.reads(), 1);
    }
}
