//! Compares the two candidate embedded engines, fjall and redb, on the online store's workload,
//! in one run on the same machine, so the embedded backend's engine is chosen by measurement.
//!
//! ```text
//! cargo run --release -p cellar-store --example engine_bench -- [--records 1000000]
//!     [--reads 200000] [--ts-records N] [--scans 20000] [--batch 1000] [--cache-mb 64]
//!     [--dir PATH]
//! ```
//!
//! For each engine, on a fresh directory (a temp dir unless `--dir` is given):
//! - load: `--records` attribute records (`<group>\0<entity>` keys in a scattered order, ~100 byte
//!   values encoded by the store's codec) in durable commits of `--batch` records (fsync'd before
//!   the commit returns, as the store's `put` must be);
//! - point reads: `--reads` random gets of loaded keys, one read per call as a single-entity
//!   request makes it (for redb that includes opening a read transaction);
//! - time series: `--ts-records` records (default a fifth of `--records`) over entities of 100
//!   records each, keyed `<group>\0<entity>\0<inverted big-endian event time>`, loaded in event-time
//!   order across entities, then `--scans` newest-first top-50 prefix scans of random entities.
//!
//! Both engines get the same block/page cache (`--cache-mb`). Results and the choice they led to
//! are in `docs/store-engine.md`.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cellar_spec::Value;
use cellar_store::{codec, Record};

type BenchResult<T> = Result<T, Box<dyn Error>>;

const ATTR_GROUP: &str = "user_profile";
const TS_GROUP: &str = "recent_clicks";
const TS_PER_ENTITY: usize = 100;
const TOP_N: usize = 50;
const BASE_TIME: i64 = 1_700_000_000_000;

const REDB_ATTR: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("attr");
const REDB_TS: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("ts");

struct Options {
    records: usize,
    reads: usize,
    ts_records: usize,
    scans: usize,
    batch: usize,
    cache_bytes: u64,
    dir: Option<PathBuf>,
}

fn parse_options() -> BenchResult<Options> {
    let mut o = Options {
        records: 1_000_000,
        reads: 200_000,
        ts_records: 0,
        scans: 20_000,
        batch: 1_000,
        cache_bytes: 64 << 20,
        dir: None,
    };
    let mut ts_records = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--records" => o.records = value.parse()?,
            "--reads" => o.reads = value.parse()?,
            "--ts-records" => ts_records = Some(value.parse()?),
            "--scans" => o.scans = value.parse()?,
            "--batch" => o.batch = value.parse()?,
            "--cache-mb" => o.cache_bytes = value.parse::<u64>()? << 20,
            "--dir" => o.dir = Some(PathBuf::from(value)),
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    o.ts_records = ts_records.unwrap_or(o.records / 5).max(TS_PER_ENTITY);
    if o.records == 0 || o.batch == 0 {
        return Err("--records and --batch must be positive".into());
    }
    Ok(o)
}

/// xorshift64*: deterministic, so both engines see the same keys, values and read order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Entity ids in a scattered order (a multiplicative permutation of 0..n), as ingestion sees
/// them, rather than sorted, which would flatter both engines.
fn entity_id(i: usize, n: usize) -> usize {
    ((i as u128 * 2_654_435_761u128) % n as u128) as usize
}

fn attr_key(entity: usize) -> Vec<u8> {
    format!("{ATTR_GROUP}\0u{entity}").into_bytes()
}

fn ts_prefix(entity: usize) -> Vec<u8> {
    format!("{TS_GROUP}\0u{entity}\0").into_bytes()
}

fn ts_key(entity: usize, event_time: i64) -> Vec<u8> {
    let mut key = ts_prefix(entity);
    key.extend_from_slice(&(!(event_time as u64)).to_be_bytes());
    key
}

fn value(rng: &mut Rng, event_time: i64) -> BenchResult<Vec<u8>> {
    let record = Record::new(
        event_time,
        vec![
            Value::String(format!(
                "article-{:016x}-{:08x}",
                rng.next(),
                rng.next() as u32
            )),
            Value::Int64((rng.next() % 10_000) as i64),
            Value::Float64((rng.next() % 1_000_000) as f64 / 1e6),
            Value::Float64((rng.next() % 1_000_000) as f64 / 1e3),
            Value::String(format!("{:016x}{:014x}", rng.next(), rng.next() >> 8)),
        ],
    );
    Ok(codec::encode(&record)?)
}

/// The same workload, spoken to each engine through these calls.
trait Engine {
    fn name(&self) -> &'static str;
    /// Writes one batch durably: returns once it would survive a power loss.
    fn write_batch(&mut self, ts: bool, batch: &[(Vec<u8>, Vec<u8>)]) -> BenchResult<()>;
    /// Returns the value's length, so the read cannot be optimised away.
    fn get(&self, key: &[u8]) -> BenchResult<Option<usize>>;
    /// Returns how many records the newest-first prefix scan yielded (at most `limit`).
    fn scan(&self, prefix: &[u8], limit: usize) -> BenchResult<usize>;
}

struct Fjall {
    db: fjall::Database,
    attr: fjall::Keyspace,
    ts: fjall::Keyspace,
}

impl Fjall {
    fn open(path: &Path, cache_bytes: u64) -> BenchResult<Fjall> {
        let db = fjall::Database::builder(path)
            .cache_size(cache_bytes)
            .open()?;
        let attr = db.keyspace("attr", fjall::KeyspaceCreateOptions::default)?;
        let ts = db.keyspace("ts", fjall::KeyspaceCreateOptions::default)?;
        Ok(Fjall { db, attr, ts })
    }
}

impl Engine for Fjall {
    fn name(&self) -> &'static str {
        "fjall 3.1"
    }

    fn write_batch(&mut self, ts: bool, batch: &[(Vec<u8>, Vec<u8>)]) -> BenchResult<()> {
        let keyspace = if ts { &self.ts } else { &self.attr };
        // SyncData is what redb's commit uses (fdatasync), so both pay the same durability.
        let mut wb = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncData));
        for (k, v) in batch {
            wb.insert(keyspace, k.as_slice(), v.as_slice());
        }
        wb.commit()?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> BenchResult<Option<usize>> {
        Ok(self.attr.get(key)?.map(|v| v.len()))
    }

    fn scan(&self, prefix: &[u8], limit: usize) -> BenchResult<usize> {
        let mut n = 0;
        for guard in self.ts.prefix(prefix).take(limit) {
            let (_key, value) = guard.into_inner()?;
            n += usize::from(!value.is_empty());
        }
        Ok(n)
    }
}

struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(path: &Path, cache_bytes: u64) -> BenchResult<Redb> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes as usize)
            .create(path.join("store.redb"))?;
        let txn = db.begin_write()?;
        txn.open_table(REDB_ATTR)?;
        txn.open_table(REDB_TS)?;
        txn.commit()?;
        Ok(Redb { db })
    }
}

impl Engine for Redb {
    fn name(&self) -> &'static str {
        "redb 4.6"
    }

    fn write_batch(&mut self, ts: bool, batch: &[(Vec<u8>, Vec<u8>)]) -> BenchResult<()> {
        // Durability::Immediate is the default: commit returns after fdatasync.
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(if ts { REDB_TS } else { REDB_ATTR })?;
            for (k, v) in batch {
                table.insert(k.as_slice(), v.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> BenchResult<Option<usize>> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REDB_ATTR)?;
        Ok(table.get(key)?.map(|v| v.value().len()))
    }

    fn scan(&self, prefix: &[u8], limit: usize) -> BenchResult<usize> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REDB_TS)?;
        let mut end = prefix.to_vec();
        // Prefixes end in the NUL separator, so bumping the last byte bounds the range.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut n = 0;
        for entry in table.range(prefix..end.as_slice())?.take(limit) {
            let (_key, value) = entry?;
            n += usize::from(!value.value().is_empty());
        }
        Ok(n)
    }
}

struct Figures {
    engine: &'static str,
    load_per_sec: f64,
    load_secs: f64,
    disk_mb: f64,
    read_p50: Duration,
    read_p99: Duration,
    reads_per_sec: f64,
    ts_load_per_sec: f64,
    scan_p50: Duration,
    scan_p99: Duration,
    scans_per_sec: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn run(engine: &mut dyn Engine, o: &Options, dir: &Path) -> BenchResult<Figures> {
    let name = engine.name();
    let mut rng = Rng(0x853c_49e6_748f_ea9b);

    // Load attribute records.
    let start = Instant::now();
    let mut batch = Vec::with_capacity(o.batch);
    for i in 0..o.records {
        let entity = entity_id(i, o.records);
        batch.push((attr_key(entity), value(&mut rng, BASE_TIME + i as i64)?));
        if batch.len() == o.batch {
            engine.write_batch(false, &batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        engine.write_batch(false, &batch)?;
        batch.clear();
    }
    let load = start.elapsed();
    let disk_mb = dir_size(dir) as f64 / (1 << 20) as f64;
    eprintln!(
        "{name}: loaded {} attribute records in {load:.2?}",
        o.records
    );

    // Random point reads of loaded keys.
    let mut latencies = Vec::with_capacity(o.reads);
    let start = Instant::now();
    for _ in 0..o.reads {
        let key = attr_key(rng.below(o.records));
        let t = Instant::now();
        let found = engine.get(&key)?;
        latencies.push(t.elapsed());
        if found.is_none() {
            return Err(format!("{name}: a loaded key was not found").into());
        }
    }
    let reads_per_sec = o.reads as f64 / start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let (read_p50, read_p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    eprintln!("{name}: {} point reads done", o.reads);

    // Time series: every entity gets one more event per round, in event-time order.
    let entities = (o.ts_records / TS_PER_ENTITY).max(1);
    let start = Instant::now();
    let mut written = 0;
    for round in 0..TS_PER_ENTITY {
        for i in 0..entities {
            let entity = entity_id(i, entities);
            let event_time = BASE_TIME + (round * 1_000 + i % 997) as i64;
            batch.push((ts_key(entity, event_time), value(&mut rng, event_time)?));
            written += 1;
            if batch.len() == o.batch {
                engine.write_batch(true, &batch)?;
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        engine.write_batch(true, &batch)?;
        batch.clear();
    }
    let ts_load_per_sec = written as f64 / start.elapsed().as_secs_f64();

    let mut latencies = Vec::with_capacity(o.scans);
    let start = Instant::now();
    for _ in 0..o.scans {
        let prefix = ts_prefix(rng.below(entities));
        let t = Instant::now();
        let n = engine.scan(&prefix, TOP_N)?;
        latencies.push(t.elapsed());
        if n != TOP_N.min(TS_PER_ENTITY) {
            return Err(format!("{name}: a scan returned {n} records").into());
        }
    }
    let scans_per_sec = o.scans as f64 / start.elapsed().as_secs_f64();
    latencies.sort_unstable();

    Ok(Figures {
        engine: name,
        load_per_sec: o.records as f64 / load.as_secs_f64(),
        load_secs: load.as_secs_f64(),
        disk_mb,
        read_p50,
        read_p99,
        reads_per_sec,
        ts_load_per_sec,
        scan_p50: percentile(&latencies, 0.5),
        scan_p99: percentile(&latencies, 0.99),
        scans_per_sec,
    })
}

fn micros(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() -> BenchResult<()> {
    let o = parse_options()?;
    let base = match &o.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            tempfile::tempdir_in(dir)?
        }
        None => tempfile::tempdir()?,
    };
    eprintln!(
        "records {}, reads {}, ts records {}, scans {}, batch {}, cache {} MiB, dir {}",
        o.records,
        o.reads,
        o.ts_records,
        o.scans,
        o.batch,
        o.cache_bytes >> 20,
        base.path().display()
    );

    let mut figures = Vec::new();
    {
        let dir = base.path().join("fjall");
        let mut engine = Fjall::open(&dir, o.cache_bytes)?;
        figures.push(run(&mut engine, &o, &dir)?);
    }
    {
        let dir = base.path().join("redb");
        std::fs::create_dir_all(&dir)?;
        let mut engine = Redb::open(&dir, o.cache_bytes)?;
        figures.push(run(&mut engine, &o, &dir)?);
    }

    println!(
        "| engine | load (records/s) | load time (s) | disk after load (MiB) | get p50 (µs) | get p99 (µs) | gets/s | ts load (records/s) | top-{TOP_N} scan p50 (µs) | scan p99 (µs) | scans/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for f in &figures {
        println!(
            "| {} | {:.0} | {:.1} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {} | {:.0} |",
            f.engine,
            f.load_per_sec,
            f.load_secs,
            f.disk_mb,
            micros(f.read_p50),
            micros(f.read_p99),
            f.reads_per_sec,
            f.ts_load_per_sec,
            micros(f.scan_p50),
            micros(f.scan_p99),
            f.scans_per_sec,
        );
    }
    if let [a, b] = figures.as_slice() {
        println!(
            "\nratios {} / {}: load {:.2}x, get p50 {:.2}x, scan p50 {:.2}x, ts load {:.2}x",
            a.engine,
            b.engine,
            a.load_per_sec / b.load_per_sec,
            a.read_p50.as_secs_f64() / b.read_p50.as_secs_f64(),
            a.scan_p50.as_secs_f64() / b.scan_p50.as_secs_f64(),
            a.ts_load_per_sec / b.ts_load_per_sec,
        );
    }
    Ok(())
}
