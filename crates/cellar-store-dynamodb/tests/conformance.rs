//! The DynamoDB backend against the shared conformance suite, on a DynamoDB-compatible server
//! named by `CELLAR_TEST_DYNAMODB` (`scripts/dynamodb.sh` starts dynalite and sets it). Each
//! check gets a table of its own, so the checks run in parallel; the table is dropped with the
//! store. Every check is ignored by a plain `cargo test`; run with `--include-ignored` (as
//! `scripts/test.sh` does) and without the variable, each fails.

use cellar_spec::EntityKey;
use cellar_store::conformance::{attribute_group, now_ms, timeseries_group, Guarded};
use cellar_store::{OnlineStore, Record, RecordReader, StoreError, TimeseriesQuery, Write};
use cellar_store_dynamodb::{DynamoConfig, DynamoStore};

const ENDPOINT_VAR: &str = "CELLAR_TEST_DYNAMODB";

/// The test server's endpoint. A check asked for without one fails: passing would claim a
/// check that never ran.
fn endpoint() -> String {
    match std::env::var(ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        _ => panic!(
            "{ENDPOINT_VAR} is not set: this test needs a DynamoDB-compatible server; \
             scripts/test.sh starts dynalite"
        ),
    }
}

/// Drops its table when the store it guards is dropped.
struct DropTable(DynamoStore);

impl Drop for DropTable {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.0.clone();
        tokio::task::block_in_place(|| {
            if let Err(e) = runtime.block_on(store.drop_table()) {
                eprintln!("could not drop test table `{}`: {e}", store.table());
            }
        });
    }
}

/// A store on a new table with a random name.
async fn fresh_store(endpoint: String) -> Guarded<DynamoStore, DropTable> {
    let config = DynamoConfig {
        table: format!("cellar-test-{:016x}", rand::random::<u64>()),
        region: "us-east-1".to_owned(),
        endpoint: Some(endpoint),
    };
    let store = DynamoStore::connect(config).await.expect("connect");
    store.ensure_table().await.expect("create the test table");
    Guarded::new(store.clone(), DropTable(store))
}

cellar_store::online_store_conformance!(
    #[ignore = "needs a DynamoDB-compatible server (CELLAR_TEST_DYNAMODB); scripts/test.sh starts dynalite"]
    fresh_store(endpoint())
);

fn write(entity: &str, event_time: i64) -> Write {
    Write {
        entity: EntityKey(entity.to_owned()),
        record: Record::new(event_time, vec![]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB-compatible server (CELLAR_TEST_DYNAMODB); scripts/test.sh starts dynalite"]
async fn group_names_with_the_separator_are_refused() {
    let store = fresh_store(endpoint()).await;
    let group = attribute_group("a#b");
    let err = store
        .put(&group, &[write("c", now_ms())])
        .await
        .expect_err("`#` ends the group in partition keys");
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(store.get_attributes(&group, &[]).await.is_err());
    assert!(store.trim(&group, now_ms()).await.is_err());
}

/// Entity keys may hold `#`; group `a`'s entity `b#c` is not any other group's record, and
/// trimming one group never counts another's items.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB-compatible server (CELLAR_TEST_DYNAMODB); scripts/test.sh starts dynalite"]
async fn entities_with_the_separator_stay_in_their_group() {
    let store = fresh_store(endpoint()).await;
    let t = now_ms();
    let a = attribute_group("a");
    let ab = attribute_group("ab");
    store.put(&a, &[write("b#c", t)]).await.expect("put");
    store.put(&ab, &[write("#c", t)]).await.expect("put");
    let got = store
        .get_attributes(&a, &[EntityKey("b#c".into()), EntityKey("#c".into())])
        .await
        .expect("get");
    assert_eq!(got, vec![Some(Record::new(t, vec![])), None]);

    let series = timeseries_group("a", Some(1), None);
    let query = TimeseriesQuery {
        top_n: 10,
        since: None,
    };
    let got = store
        .scan_timeseries(&series, &[EntityKey("b#c".into())], query)
        .await
        .expect("scan");
    assert_eq!(
        got,
        vec![vec![]],
        "an attribute record is not a series record"
    );
    assert_eq!(store.trim(&series, t).await.expect("trim"), 0);
}

/// An entity key too long for a DynamoDB partition key is a miss on read and refused on write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB-compatible server (CELLAR_TEST_DYNAMODB); scripts/test.sh starts dynalite"]
async fn overlong_entity_keys_miss_and_are_refused() {
    let store = fresh_store(endpoint()).await;
    let group = attribute_group("profile");
    let long = "x".repeat(4096);
    let got = store
        .get_attributes(&group, &[EntityKey(long.clone())])
        .await
        .expect("get");
    assert_eq!(got, vec![None]);
    let err = store
        .put(&group, &[write(&long, now_ms())])
        .await
        .expect_err("refused");
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
}

/// More distinct keys than one BatchGetItem takes, asked with repeats, answer in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB-compatible server (CELLAR_TEST_DYNAMODB); scripts/test.sh starts dynalite"]
async fn large_batches_are_split_and_answered_in_order() {
    let store = fresh_store(endpoint()).await;
    let group = attribute_group("profile");
    let t = now_ms();
    let writes: Vec<Write> = (0..260).map(|i| write(&format!("u{i}"), t + i)).collect();
    store.put(&group, &writes).await.expect("put");
    let asked: Vec<EntityKey> = (0..300)
        .rev()
        .chain(0..10)
        .map(|i| EntityKey(format!("u{i}")))
        .collect();
    let got = store.get_attributes(&group, &asked).await.expect("get");
    let times: Vec<Option<i64>> = got
        .iter()
        .map(|r| r.as_ref().map(|r| r.event_time))
        .collect();
    let expected: Vec<Option<i64>> = (0..300)
        .rev()
        .chain(0..10)
        .map(|i| (i < 260).then_some(t + i))
        .collect();
    assert_eq!(times, expected);

    let series = timeseries_group("clicks", None, None);
    let writes: Vec<Write> = (0..120).map(|i| write("u1", t - i)).collect();
    store.put(&series, &writes).await.expect("put series");
    store
        .delete(&series, &[EntityKey("u1".into())])
        .await
        .expect("delete");
    let query = TimeseriesQuery {
        top_n: 1000,
        since: None,
    };
    let got = store
        .scan_timeseries(&series, &[EntityKey("u1".into())], query)
        .await
        .expect("scan");
    assert!(got[0].is_empty());
}

/// A repeated entity sees the record answered for its earlier position, and only the last
/// answer is stored; a second `ensure_table` finds the table as it left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB-compatible server (CELLAR_TEST_DYNAMODB); scripts/test.sh starts dynalite"]
async fn repeated_entities_in_one_update_chain_and_tables_are_reused() {
    let store = fresh_store(endpoint()).await;
    let group = attribute_group("counters");
    let count = |r: &Option<Record>| match r.as_ref().map(|r| r.value(0)) {
        Some(cellar_spec::Value::Int64(n)) => *n,
        _ => 0,
    };
    let updater: cellar_store::Updater = Box::new(move |_, _, stored| {
        Some(Record::new(
            1,
            vec![cellar_spec::Value::Int64(count(&stored) + 1)],
        ))
    });
    let u = |e: &str| EntityKey(e.to_owned());
    let stored = store
        .update(&group, &[u("a"), u("b"), u("a"), u("a")], updater)
        .await
        .expect("update");
    let counts: Vec<i64> = stored.iter().map(count).collect();
    assert_eq!(counts, vec![1, 1, 2, 3]);

    store
        .store()
        .ensure_table()
        .await
        .expect("ensure an existing table");
    let got = store
        .get_attributes(&group, &[u("a"), u("b")])
        .await
        .expect("get");
    assert_eq!(got.iter().map(count).collect::<Vec<_>>(), vec![3, 1]);
}
