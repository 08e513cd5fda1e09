//! The embedded backend against the shared conformance suite, plus what only a local disk
//! store can show: data survives closing and reopening the directory.

use std::path::Path;
use std::process::Command;

use cellar_spec::{EntityKey, Value};
use cellar_store::conformance::{attribute_group, now_ms, timeseries_group, Guarded};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{OnlineStore, PutOutcome, Record, RecordReader, TimeseriesQuery, Write};

/// A fresh store in its own temp dir, removed when the store is dropped.
async fn fresh_store() -> Guarded<EmbeddedStore, tempfile::TempDir> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open embedded store");
    Guarded::new(store, dir)
}

cellar_store::online_store_conformance!(fresh_store());

fn write(entity: &str, event_time: i64, label: &str) -> Write {
    Write {
        entity: EntityKey(entity.to_owned()),
        record: Record::new(event_time, vec![Value::String(label.to_owned())]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let attrs = attribute_group("profile");
    let series = timeseries_group("clicks", Some(3), None);
    let t = now_ms();
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let outcomes = store
            .put(&attrs, &[write("u1", t, "kept"), write("u2", t, "deleted")])
            .await
            .expect("put attributes");
        assert_eq!(outcomes, vec![PutOutcome::Applied; 2]);
        let writes: Vec<Write> = (0..5).map(|i| write("u1", t - i, "click")).collect();
        store.put(&series, &writes).await.expect("put series");
        store
            .delete(&attrs, &[EntityKey("u2".into())])
            .await
            .expect("delete");
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let got = store
        .get_attributes(&attrs, &[EntityKey("u1".into()), EntityKey("u2".into())])
        .await
        .expect("get");
    assert_eq!(
        got,
        vec![
            Some(Record::new(t, vec![Value::String("kept".into())])),
            None
        ]
    );
    let query = TimeseriesQuery {
        top_n: 10,
        since: None,
    };
    let got = store
        .scan_timeseries(&series, &[EntityKey("u1".into())], query)
        .await
        .expect("scan");
    let times: Vec<i64> = got[0].iter().map(|r| r.event_time).collect();
    assert_eq!(times, vec![t, t - 1, t - 2]);
    // The reopened store still judges event times against what was stored before.
    let outcomes = store
        .put(&attrs, &[write("u1", t - 1, "late")])
        .await
        .expect("put after reopen");
    assert_eq!(outcomes, vec![PutOutcome::Stale]);
}

#[tokio::test]
async fn nul_in_an_entity_key_is_refused_with_its_reason() {
    let store = fresh_store().await;
    let attrs = attribute_group("profile");
    let err = store
        .put(&attrs, &[write("u1\0x", now_ms(), "x")])
        .await
        .expect_err("a NUL byte is reserved by the key layout");
    assert!(err.to_string().contains("NUL"), "{err}");
    assert!(!err.is_retryable());
    // Reading such a key is simply a miss.
    let got = store
        .get_attributes(&attrs, &[EntityKey("u1\0x".into())])
        .await
        .expect("get");
    assert_eq!(got, vec![None]);
}

#[tokio::test]
async fn keys_over_the_engines_limit_are_refused_not_a_panic() {
    let store = fresh_store().await;
    let attrs = attribute_group("profile");
    let series = timeseries_group("clicks", Some(3), None);
    let huge = "k".repeat(70_000);
    for group in [&attrs, &series] {
        let err = store
            .put(group, &[write(&huge, now_ms(), "x")])
            .await
            .expect_err("a key over 64 KiB cannot be stored");
        assert!(
            err.to_string()
                .contains("over the embedded store's limit of 65535 bytes"),
            "{err}"
        );
        assert!(!err.is_retryable());
    }
    let err = store
        .update(&attrs, &[EntityKey(huge.clone())], Box::new(|_, _, r| r))
        .await
        .expect_err("nor updated");
    assert!(!err.is_retryable(), "{err}");
    // Reading or deleting such a key is simply a miss.
    let got = store
        .get_attributes(&attrs, &[EntityKey(huge.clone())])
        .await
        .expect("get");
    assert_eq!(got, vec![None]);
    let query = TimeseriesQuery {
        top_n: 10,
        since: None,
    };
    let got = store
        .scan_timeseries(&series, &[EntityKey(huge.clone())], query)
        .await
        .expect("scan");
    assert_eq!(got, vec![Vec::<Record>::new()]);
    store
        .delete(&series, &[EntityKey(huge.clone())])
        .await
        .expect("delete");
    // The store still works.
    let outcomes = store
        .put(&attrs, &[write("u1", now_ms(), "x")])
        .await
        .expect("put");
    assert_eq!(outcomes, vec![PutOutcome::Applied]);
}

/// Set in the child process of the crash test: the directory it writes to before aborting.
const CRASH_CHILD_DIR: &str = "CELLAR_STORE_CRASH_CHILD_DIR";
/// The event time the crash test's child writes.
const CRASH_EVENT_TIME: i64 = 1_700_000_000_000;

/// Writes in a child process that aborts right after `put` returns (no destructors, no
/// shutdown flush), then reopens the directory: every acknowledged write must be there.
#[test]
fn acknowledged_writes_survive_a_crash() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        write_then_abort(Path::new(&dir));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    let status = Command::new(exe)
        .args([
            "acknowledged_writes_survive_a_crash",
            "--exact",
            "--nocapture",
        ])
        .env(CRASH_CHILD_DIR, dir.path())
        .status()
        .expect("run the child");
    assert!(!status.success(), "the child aborts after its writes");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = EmbeddedStore::open(dir.path()).expect("reopen after the crash");
        let attrs = attribute_group("profile");
        let entities: Vec<EntityKey> = (0..100).map(|i| EntityKey(format!("u{i}"))).collect();
        let got = store.get_attributes(&attrs, &entities).await.expect("get");
        for (i, record) in got.iter().enumerate() {
            let record = record.as_ref().unwrap_or_else(|| panic!("u{i} was lost"));
            assert_eq!(record.event_time, CRASH_EVENT_TIME + i as i64);
        }
        let series = timeseries_group("clicks", Some(100), None);
        let query = TimeseriesQuery {
            top_n: 100,
            since: None,
        };
        let got = store
            .scan_timeseries(&series, &[EntityKey("u1".into())], query)
            .await
            .expect("scan");
        assert_eq!(got[0].len(), 10, "every acknowledged time-series record");
    });
}

fn write_then_abort(dir: &Path) -> ! {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = EmbeddedStore::open(dir).expect("open in the child");
        let attrs = attribute_group("profile");
        // Ten acknowledged puts of ten records each, as ingestion batches arrive.
        for batch in 0..10 {
            let writes: Vec<Write> = (batch * 10..batch * 10 + 10)
                .map(|i| write(&format!("u{i}"), CRASH_EVENT_TIME + i, "x"))
                .collect();
            store.put(&attrs, &writes).await.expect("put in the child");
        }
        let series = timeseries_group("clicks", Some(100), None);
        for i in 0..10 {
            let w = write("u1", CRASH_EVENT_TIME + i, "click");
            store.put(&series, &[w]).await.expect("put in the child");
        }
        // While the store is open: its drop would flush, which a crash does not.
        std::process::abort();
    });
    std::process::abort()
}

/// Set in the child process of the concurrent crash test.
const CONCURRENT_CHILD_DIR: &str = "CELLAR_STORE_CONCURRENT_CHILD_DIR";
/// Writers in the concurrent crash test, spread over three groups.
const CONCURRENT_WRITERS: usize = 8;

/// Concurrent writers share fsyncs (group commit): the child prints each write once its `put`
/// returns and aborts while the others are still writing; every printed write must be there.
#[test]
fn concurrent_acknowledged_writes_survive_a_crash() {
    if let Some(dir) = std::env::var_os(CONCURRENT_CHILD_DIR) {
        write_concurrently_then_abort(Path::new(&dir));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    let output = Command::new(exe)
        .args([
            "concurrent_acknowledged_writes_survive_a_crash",
            "--exact",
            "--nocapture",
        ])
        .env(CONCURRENT_CHILD_DIR, dir.path())
        .output()
        .expect("run the child");
    assert!(!output.status.success(), "the child aborts mid-write");
    let acknowledged: Vec<(usize, i64)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (writer, i) = line.strip_prefix("acked ")?.split_once(' ')?;
            Some((writer.parse().ok()?, i.parse().ok()?))
        })
        .collect();
    assert!(
        acknowledged.len() >= 100,
        "the child acknowledged {} writes before aborting",
        acknowledged.len()
    );

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = EmbeddedStore::open(dir.path()).expect("reopen after the crash");
        for (writer, i) in acknowledged {
            let group = attribute_group(&format!("g{}", writer % 3));
            let entity = EntityKey(format!("w{writer}-{}", i % 10));
            let got = store.get_attributes(&group, &[entity]).await.expect("get");
            let stored = got[0].as_ref().map_or(i64::MIN, |r| r.event_time);
            // Each writer rewrites ten entities with rising event times: an acknowledged
            // write is there, or a later one of the same entity replaced it.
            assert!(
                stored >= CRASH_EVENT_TIME + i,
                "writer {writer}'s acknowledged write {i} was lost (stored event time {stored})"
            );
        }
    });
}

fn write_concurrently_then_abort(dir: &Path) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use std::io::Write as _;
        let store = EmbeddedStore::open(dir).expect("open in the child");
        let mut tasks = Vec::new();
        for writer in 0..CONCURRENT_WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let group = attribute_group(&format!("g{}", writer % 3));
                for i in 0..i64::MAX {
                    let entity = format!("w{writer}-{}", i % 10);
                    let w = write(&entity, CRASH_EVENT_TIME + i, "x");
                    store.put(&group, &[w]).await.expect("put in the child");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {writer} {i}").expect("stdout");
                    out.flush().expect("stdout");
                    if writer == 0 && i == 200 {
                        // While the store is open and the others are mid-write.
                        std::process::abort();
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    std::process::abort()
}

/// Writers of one group run in parallel, stripe by stripe: concurrent puts of the same entities
/// with interleaved event times still leave each entity with its newest record, and exactly one
/// put of each (entity, event time) is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_puts_of_one_group_keep_the_newest_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let group = attribute_group("profile");
    let writers = 4i64;
    let rounds = 25i64;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let group = group.clone();
        tasks.push(tokio::spawn(async move {
            let mut applied = 0;
            for round in 0..rounds {
                // Every writer writes every entity, each with its own event times.
                let t = CRASH_EVENT_TIME + round * writers + writer;
                let writes: Vec<Write> = (0..200)
                    .map(|e| write(&format!("u{e}"), t, &format!("w{writer}")))
                    .collect();
                let outcomes = store.put(&group, &writes).await.expect("put");
                applied += outcomes
                    .iter()
                    .filter(|o| **o == PutOutcome::Applied)
                    .count();
            }
            applied
        }));
    }
    let mut applied = 0;
    for task in tasks {
        applied += task.await.expect("writer");
    }
    assert!(applied >= 200, "at least the first write of each entity");
    let entities: Vec<EntityKey> = (0..200).map(|e| EntityKey(format!("u{e}"))).collect();
    let newest = CRASH_EVENT_TIME + rounds * writers - 1;
    for (e, record) in store
        .get_attributes(&group, &entities)
        .await
        .expect("get")
        .into_iter()
        .enumerate()
    {
        let record = record.unwrap_or_else(|| panic!("u{e} missing"));
        assert_eq!(record.event_time, newest, "u{e} holds the newest write");
        assert_eq!(
            record.values,
            vec![Value::String(format!("w{}", writers - 1))]
        );
    }
}

/// Writers of one group read stored event times before taking the group's lock and catch up
/// with what was committed meanwhile under it. Batches of overlapping keys from many tasks,
/// with deletes of other keys interleaved (a commit that forces a fresh read), must still end
/// with each key's newest record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_batches_of_overlapping_keys_end_with_each_newest() {
    let store = fresh_store().await;
    let group = attribute_group("profile");
    let keys = 300usize;
    let writers = 12u64;
    let batches = 15u64;
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..writers {
        let store = store.store().clone();
        let group = group.clone();
        tasks.spawn(async move {
            for batch in 0..batches {
                // Every writer writes every key once per batch, at scrambled event times.
                let writes: Vec<Write> = (0..keys)
                    .map(|k| {
                        let t = ((k as u64 * 7919 + writer * 104_729 + batch * 1_299_709) % 100_003)
                            as i64;
                        write(&format!("user-{k:04}"), t, &format!("w{writer}-b{batch}"))
                    })
                    .collect();
                store.put(&group, &writes).await.expect("put");
                if batch % 5 == 4 {
                    store
                        .delete(&group, &[EntityKey(format!("gone-{writer}"))])
                        .await
                        .expect("delete");
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("writer task");
    }
    let entities: Vec<EntityKey> = (0..keys)
        .map(|k| EntityKey(format!("user-{k:04}")))
        .collect();
    let stored = store
        .get_attributes(&group, &entities)
        .await
        .expect("read back");
    for (k, record) in stored.iter().enumerate() {
        let newest = (0..writers)
            .flat_map(|w| (0..batches).map(move |b| (w, b)))
            .map(|(w, b)| ((k as u64 * 7919 + w * 104_729 + b * 1_299_709) % 100_003) as i64)
            .max()
            .expect("some write");
        let record = record
            .as_ref()
            .unwrap_or_else(|| panic!("user-{k:04} missing"));
        assert_eq!(record.event_time, newest, "user-{k:04}");
    }
}
