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
