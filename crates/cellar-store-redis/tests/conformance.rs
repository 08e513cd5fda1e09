//! The Redis backend against the shared conformance suite, on the Redis named by
//! `CELLAR_TEST_REDIS` (a URL such as `redis://127.0.0.1:6379`; `scripts/services.sh` starts
//! Redis and sets it). Each check gets a key prefix of its own, so the checks run in parallel;
//! the prefix's keys are deleted with the store. Every check is ignored by a plain `cargo test`;
//! run with `--include-ignored` (as `scripts/test.sh` does) and without the variable, each fails.

use std::time::Duration;

use cellar_spec::{EntityKey, Value};
use cellar_store::conformance::{attribute_group, now_ms, timeseries_group, Guarded};
use cellar_store::{
    OnlineStore, PutOutcome, Record, RecordReader, StoreError, TimeseriesQuery, Updater, Write,
};
use cellar_store_redis::{RedisConfig, RedisStore};

const URL_VAR: &str = "CELLAR_TEST_REDIS";

/// The test Redis's URL. A check asked for without one fails: passing would claim a check
/// that never ran.
fn redis_url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!("{URL_VAR} is not set: this test needs Redis; scripts/test.sh starts it"),
    }
}

/// Deletes its prefix's keys when the store it guards is dropped.
struct ClearPrefix(RedisStore);

impl Drop for ClearPrefix {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.0.clone();
        tokio::task::block_in_place(|| {
            if let Err(e) = runtime.block_on(store.clear()) {
                eprintln!(
                    "could not delete the test keys under `{}`: {e}",
                    store.key_prefix()
                );
            }
        });
    }
}

/// A store under a new random key prefix.
async fn fresh_store(url: String) -> Guarded<RedisStore, ClearPrefix> {
    let config = RedisConfig {
        url,
        key_prefix: format!("cellar-test-{:016x}:", rand::random::<u64>()),
        ..RedisConfig::default()
    };
    let store = RedisStore::connect(config).await.expect("connect");
    Guarded::new(store.clone(), ClearPrefix(store))
}

cellar_store::online_store_conformance!(
    #[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
    fresh_store(redis_url())
);

fn key(entity: &str) -> EntityKey {
    EntityKey(entity.to_owned())
}

fn write(entity: &str, event_time: i64) -> Write {
    Write {
        entity: key(entity),
        record: Record::new(event_time, vec![Value::Int64(event_time)]),
    }
}

/// A plain connection to the test Redis, to look at and tamper with the store's keys.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

async fn keys_under(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .expect("KEYS");
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn group_names_with_the_separator_are_refused() {
    let store = fresh_store(redis_url()).await;
    let group = attribute_group("a#b");
    let err = store
        .put(&group, &[write("c", now_ms())])
        .await
        .expect_err("`#` ends the group in keys");
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(store.get_attributes(&group, &[]).await.is_err());
    assert!(store.trim(&group, now_ms()).await.is_err());
}

/// The documented key layout, expiry from `max_age`, and a store's keys gone with `clear`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn keys_follow_the_documented_layout_and_expire_past_max_age() {
    let url = redis_url();
    let store = fresh_store(url.clone()).await;
    let prefix = store.store().key_prefix();
    let mut conn = raw(&url).await;
    let t = now_ms();
    let mut attrs = attribute_group("profile");
    store.put(&attrs, &[write("b#c", t)]).await.expect("put");
    let series = timeseries_group("profile", Some(10), Some(Duration::from_secs(60)));
    store.put(&series, &[write("u1", t)]).await.expect("put");
    assert_eq!(
        keys_under(&mut conn, &prefix).await,
        vec![
            format!("{prefix}a:profile#b#c"),
            format!("{prefix}s:profile#u1")
        ]
    );
    let ttl = |key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .expect("PTTL")
        }
    };
    // No max_age: no expiry.
    assert_eq!(ttl(format!("{prefix}a:profile#b#c")).await, -1);
    // A minute of max_age after the newest record, then an hour's grace.
    let series_ttl = ttl(format!("{prefix}s:profile#u1")).await;
    assert!(
        (3_600_000..=3_660_000).contains(&series_ttl),
        "series ttl {series_ttl} ms"
    );
    attrs.retention.max_age = Some(Duration::from_secs(60));
    store
        .put(&attrs, &[write("b#c", t + 1)])
        .await
        .expect("put");
    let attr_ttl = ttl(format!("{prefix}a:profile#b#c")).await;
    assert!(
        (3_600_000..=3_660_001).contains(&attr_ttl),
        "attribute ttl {attr_ttl} ms"
    );
    assert_eq!(store.store().clear().await.expect("clear"), 2);
    assert!(keys_under(&mut conn, &prefix).await.is_empty());
}

/// Entity keys may hold `#`; group `a`'s entity `b#c` is not any other group's record, and
/// trimming one group never counts another's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn entities_with_the_separator_stay_in_their_group() {
    let store = fresh_store(redis_url()).await;
    let t = now_ms();
    let a = attribute_group("a");
    let ab = attribute_group("ab");
    store.put(&a, &[write("b#c", t)]).await.expect("put");
    store.put(&ab, &[write("#c", t)]).await.expect("put");
    let got = store
        .get_attributes(&a, &[key("b#c"), key("#c")])
        .await
        .expect("get");
    assert_eq!(got, vec![Some(write("b#c", t).record), None]);

    let series = timeseries_group("a", Some(1), None);
    let query = TimeseriesQuery {
        top_n: 10,
        since: None,
    };
    let got = store
        .scan_timeseries(&series, &[key("b#c")], query)
        .await
        .expect("scan");
    assert_eq!(
        got,
        vec![vec![]],
        "an attribute record is not a series record"
    );
    assert_eq!(store.trim(&series, t).await.expect("trim"), 0);
}

/// A key of the layout holding another type, or a value the store did not write, is corrupt
/// data (not retryable); a put replaces a foreign string value as the embedded store
/// replaces an undecodable record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn foreign_values_under_the_prefix_are_corrupt() {
    let url = redis_url();
    let store = fresh_store(url.clone()).await;
    let prefix = store.store().key_prefix();
    let mut conn = raw(&url).await;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}a:profile#u1"))
        .arg("not a record")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}s:clicks#u1"))
        .arg("not a sorted set")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let attrs = attribute_group("profile");
    let err = store
        .get_attributes(&attrs, &[key("u1")])
        .await
        .expect_err("foreign value");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let series = timeseries_group("clicks", Some(5), None);
    let query = TimeseriesQuery {
        top_n: 5,
        since: None,
    };
    let err = store
        .scan_timeseries(&series, &[key("u1")], query)
        .await
        .expect_err("wrong type");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(!err.is_retryable());
    let err = store
        .put(&series, &[write("u1", now_ms())])
        .await
        .expect_err("wrong type");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");

    let t = now_ms();
    let outcomes = store.put(&attrs, &[write("u1", t)]).await.expect("put");
    assert_eq!(outcomes, vec![PutOutcome::Applied]);
    assert_eq!(
        store
            .get_attributes(&attrs, &[key("u1")])
            .await
            .expect("get"),
        vec![Some(write("u1", t).record)]
    );
}

/// Scripts flushed from Redis's cache (a restart, `SCRIPT FLUSH`) are loaded again by the
/// next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn writes_survive_a_flushed_script_cache() {
    let url = redis_url();
    let store = fresh_store(url.clone()).await;
    let mut conn = raw(&url).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("SCRIPT FLUSH");
    let attrs = attribute_group("profile");
    let t = now_ms();
    let outcomes = store
        .put(
            &attrs,
            &[write("u1", t), write("u1", t + 1), write("u2", t)],
        )
        .await
        .expect("put");
    assert_eq!(outcomes, vec![PutOutcome::Applied; 3]);
    let got = store
        .get_attributes(&attrs, &[key("u1"), key("u2")])
        .await
        .expect("get");
    assert_eq!(
        got,
        vec![Some(write("u1", t + 1).record), Some(write("u2", t).record)]
    );
}

/// A repeated entity sees the record answered for its earlier position, and only the last
/// answer is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn repeated_entities_in_one_update_chain() {
    let store = fresh_store(redis_url()).await;
    let group = attribute_group("counters");
    let count = |r: &Option<Record>| match r.as_ref().map(|r| r.value(0)) {
        Some(Value::Int64(n)) => *n,
        _ => 0,
    };
    let updater: Updater =
        Box::new(move |_, _, stored| Some(Record::new(1, vec![Value::Int64(count(&stored) + 1)])));
    let stored = store
        .update(&group, &[key("a"), key("b"), key("a"), key("a")], updater)
        .await
        .expect("update");
    assert_eq!(
        stored.iter().map(count).collect::<Vec<_>>(),
        vec![1, 1, 2, 3]
    );
    let got = store
        .get_attributes(&group, &[key("a"), key("b")])
        .await
        .expect("get");
    assert_eq!(got.iter().map(count).collect::<Vec<_>>(), vec![3, 1]);
}

/// Event times past 2^53 ms, where scores round, still sort, replace and trim exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn event_times_beyond_double_precision_stay_exact() {
    let store = fresh_store(redis_url()).await;
    let series = timeseries_group("far", Some(3), None);
    // 2^60 and its neighbours share one double.
    let base = 1i64 << 60;
    let writes: Vec<Write> = [base + 2, base, base + 4, base + 1, base + 3]
        .into_iter()
        .map(|t| write("u1", t))
        .collect();
    store.put(&series, &writes).await.expect("put");
    store
        .put(
            &series,
            &[Write {
                entity: key("u1"),
                record: Record::new(base + 3, vec![Value::String("again".into())]),
            }],
        )
        .await
        .expect("put");
    let query = TimeseriesQuery {
        top_n: 10,
        since: Some(base + 3),
    };
    let got = store
        .scan_timeseries(&series, &[key("u1")], query)
        .await
        .expect("scan");
    assert_eq!(
        got[0],
        vec![
            write("u1", base + 4).record,
            Record::new(base + 3, vec![Value::String("again".into())]),
        ]
    );
    // A top_n past what Redis counts in (a signed 64-bit integer) reads everything.
    let mut unlimited = series.clone();
    unlimited.retention.max_records = None;
    let query = TimeseriesQuery {
        top_n: usize::MAX,
        since: None,
    };
    let got = store
        .scan_timeseries(&unlimited, &[key("u1")], query)
        .await
        .expect("scan");
    let times: Vec<i64> = got[0].iter().map(|r| r.event_time).collect();
    assert_eq!(times, vec![base + 4, base + 3, base + 2], "trimmed to 3");

    let mut aged = series.clone();
    aged.retention.max_age = Some(Duration::from_millis(1));
    // As of base + 4, records before base + 3 are past a 1 ms max_age.
    assert_eq!(store.trim(&aged, base + 4).await.expect("trim"), 1);

    let attrs = attribute_group("far");
    let outcomes = store
        .put(&attrs, &[write("u1", base + 1)])
        .await
        .expect("put");
    assert_eq!(outcomes, vec![PutOutcome::Applied]);
    let outcomes = store.put(&attrs, &[write("u1", base)]).await.expect("put");
    assert_eq!(outcomes, vec![PutOutcome::Stale], "older by 1 ms");
}
