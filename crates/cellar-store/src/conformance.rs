//! The conformance suite every [`OnlineStore`] backend runs, so that the embedded, DynamoDB and
//! Redis backends keep the same semantics (event time wins, newest-first top-N, retention,
//! isolation between groups and entities, the record-size limit, lossless values).
//!
//! A backend's integration test runs the whole suite with one line:
//!
//! ```text
//! cellar_store::online_store_conformance!(async { MyStore::connect(&addr).await.unwrap() });
//! ```
//!
//! The expression is evaluated once per check and must yield a fresh, empty store. It generates
//! one `#[tokio::test]` per check (the calling crate needs `tokio` with its `macros` and
//! `rt-multi-thread` features). When something must outlive the store (a temp dir, a container
//! handle), wrap the store in a [`Guarded`]. Each check is also a public async function here,
//! taking the store to test, for backends that need their own harness.
//!
//! A backend that needs a service puts an attribute before the expression, which every
//! generated test gets: `#[ignore = "..."]` keeps the checks out of a plain `cargo test`, which
//! has no service to give them, instead of letting them pass having tested nothing.
//!
//! ```text
//! cellar_store::online_store_conformance!(
//!     #[ignore = "needs MyService (CELLAR_TEST_MYSERVICE); scripts/test.sh starts it"]
//!     async { MyStore::connect(&address()).await.unwrap() }
//! );
//! ```
//!
//! The checks assert and panic on failure: this module is test support, never called on a
//! serving or ingestion path.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cellar_spec::{
    EntityKey, Feature, FeatureGroup, GroupKind, Retention, ScalarType, ServingPolicy, Value,
    ValueType,
};

use crate::{
    AppliedOffset, OnlineStore, PutOutcome, Record, RecordReader, Result, StoreError,
    TimeseriesQuery, Updater, Write,
};

/// Generates one `#[tokio::test]` per conformance check, each running against a fresh store
/// from `$make`, an async expression (a future) yielding an [`OnlineStore`](crate::OnlineStore).
/// An attribute before the expression (such as `#[ignore = "needs ..."]`) is put on every test.
#[macro_export]
macro_rules! online_store_conformance {
    // The attribute arm comes first: an expression may itself begin with an attribute.
    (#[$attr:meta] $make:expr) => {
        $crate::__online_store_checks!([$attr] $make);
    };
    ($make:expr) => {
        $crate::__online_store_checks!([] $make);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __online_store_checks {
    // The arms are told apart by their first tokens: a failed `expr` match is not retried
    // against the next arm, so no arm may begin by parsing one.
    (@check [$($attr:meta)?] $make:expr; $check:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $(#[$attr])?
        async fn $check() {
            let store: ::std::sync::Arc<dyn $crate::OnlineStore> =
                ::std::sync::Arc::new($make.await);
            $crate::conformance::$check(store).await;
        }
    };
    // One check at a time: the optional attribute, bound once, cannot repeat in step with the
    // list of checks.
    (@each $attrs:tt $make:expr; $($check:ident),* $(,)?) => {
        $(
            $crate::__online_store_checks!(@check $attrs $make; $check);
        )*
    };
    ($attrs:tt $make:expr) => {
        $crate::__online_store_checks!(@each $attrs $make;
            missing_entity_reads_as_none,
            empty_requests_return_empty_answers,
            put_then_get_returns_the_record,
            batched_get_keeps_the_order_asked,
            older_event_time_is_stale_and_the_newer_value_stays,
            equal_event_time_is_stale,
            newest_write_in_one_batch_wins,
            concurrent_puts_on_one_key_end_with_the_newest,
            attribute_reads_return_records_past_max_age_until_trimmed,
            timeseries_is_newest_first_at_most_top_n_and_not_before_since,
            timeseries_same_event_time_replaces,
            timeseries_put_trims_to_max_records,
            timeseries_reads_never_exceed_max_records,
            timeseries_reads_skip_records_past_max_age,
            trim_removes_records_past_max_age,
            trim_applies_a_lowered_max_records,
            delete_removes_attribute_records,
            delete_removes_timeseries_records,
            groups_with_the_same_entity_stay_apart,
            prefix_entities_stay_apart,
            oversized_record_is_rejected_with_size_and_limit,
            values_of_every_type_round_trip,
            update_replaces_the_record_it_read_whatever_its_event_time,
            update_returning_none_leaves_the_record,
            concurrent_updates_of_one_key_are_never_lost,
            update_refuses_oversized_records_and_timeseries_groups,
        );
    };
}

/// A store together with something that must live as long as it (a temp dir, a container
/// handle); it is the store as far as callers can tell.
pub struct Guarded<S, G> {
    store: S,
    /// Held only to be dropped after the store.
    _guard: G,
}

impl<S, G> Guarded<S, G> {
    /// Keeps `guard` alive as long as `store`.
    pub fn new(store: S, guard: G) -> Self {
        Guarded {
            store,
            _guard: guard,
        }
    }

    /// The wrapped store.
    pub fn store(&self) -> &S {
        &self.store
    }
}

#[async_trait]
impl<S: RecordReader, G: Send + Sync> RecordReader for Guarded<S, G> {
    async fn get_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
    ) -> Result<Vec<Option<Record>>> {
        self.store.get_attributes(group, entities).await
    }

    async fn scan_timeseries(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        query: TimeseriesQuery,
    ) -> Result<Vec<Vec<Record>>> {
        self.store.scan_timeseries(group, entities, query).await
    }
}

#[async_trait]
impl<S: OnlineStore, G: Send + Sync> OnlineStore for Guarded<S, G> {
    async fn put(&self, group: &FeatureGroup, writes: &[Write]) -> Result<Vec<PutOutcome>> {
        self.store.put(group, writes).await
    }

    async fn update(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: Updater,
    ) -> Result<Vec<Option<Record>>> {
        self.store.update(group, entities, updater).await
    }

    async fn delete(&self, group: &FeatureGroup, entities: &[EntityKey]) -> Result<()> {
        self.store.delete(group, entities).await
    }

    async fn trim(&self, group: &FeatureGroup, now: i64) -> Result<u64> {
        self.store.trim(group, now).await
    }
}

/// The store under test, shared so concurrent checks can hand it to spawned tasks.
pub type SharedStore = Arc<dyn OnlineStore>;

/// Milliseconds since the Unix epoch, for the suites of the backends' own tests.
pub use cellar_spec::time::now_ms;

/// An attribute group with one string and one int64 feature, no retention, an 8 KB limit.
pub fn attribute_group(name: &str) -> FeatureGroup {
    group(name, GroupKind::Attribute, Retention::default())
}

/// A time-series group with the given retention.
pub fn timeseries_group(
    name: &str,
    max_records: Option<u32>,
    max_age: Option<Duration>,
) -> FeatureGroup {
    group(
        name,
        GroupKind::Timeseries,
        Retention {
            max_records,
            max_age,
            history: None,
        },
    )
}

fn group(name: &str, kind: GroupKind, retention: Retention) -> FeatureGroup {
    FeatureGroup {
        name: name.to_owned(),
        entity: "user".to_owned(),
        kind,
        features: vec![
            Feature {
                name: "label".to_owned(),
                value_type: ValueType::Scalar(ScalarType::String),
                description: None,
                retired: false,
            },
            Feature {
                name: "count".to_owned(),
                value_type: ValueType::Scalar(ScalarType::Int64),
                description: None,
                retired: false,
            },
        ],
        retention,
        serving: ServingPolicy::default(),
        max_record_bytes: 8 * 1024,
        freshness: None,
        push_sources: Vec::new(),
        description: None,
        generation: 0,
        previous: None,
    }
}

fn key(entity: &str) -> EntityKey {
    EntityKey(entity.to_owned())
}

fn record(event_time: i64, label: &str) -> Record {
    Record::new(
        event_time,
        vec![Value::String(label.to_owned()), Value::Int64(event_time)],
    )
}

fn write(entity: &str, event_time: i64, label: &str) -> Write {
    Write {
        entity: key(entity),
        record: record(event_time, label),
    }
}

async fn put(store: &SharedStore, group: &FeatureGroup, writes: Vec<Write>) -> Vec<PutOutcome> {
    match store.put(group, &writes).await {
        Ok(outcomes) => {
            assert_eq!(outcomes.len(), writes.len(), "one outcome per write");
            outcomes
        }
        Err(e) => panic!("put into `{}` failed: {e}", group.name),
    }
}

async fn get(store: &SharedStore, group: &FeatureGroup, entity: &str) -> Option<Record> {
    match store.get_attributes(group, &[key(entity)]).await {
        Ok(mut records) => {
            assert_eq!(records.len(), 1, "one answer per entity asked");
            records.pop().flatten()
        }
        Err(e) => panic!("get from `{}` failed: {e}", group.name),
    }
}

async fn scan(
    store: &SharedStore,
    group: &FeatureGroup,
    entity: &str,
    top_n: usize,
    since: Option<i64>,
) -> Vec<Record> {
    let query = TimeseriesQuery { top_n, since };
    match store.scan_timeseries(group, &[key(entity)], query).await {
        Ok(mut series) => {
            assert_eq!(series.len(), 1, "one answer per entity asked");
            series.pop().unwrap_or_default()
        }
        Err(e) => panic!("scan of `{}` failed: {e}", group.name),
    }
}

fn times(records: &[Record]) -> Vec<i64> {
    records.iter().map(|r| r.event_time).collect()
}

/// An entity that was never written reads as `None`, and as an empty series.
pub async fn missing_entity_reads_as_none(store: SharedStore) {
    let attrs = attribute_group("profile");
    assert_eq!(get(&store, &attrs, "nobody").await, None);
    let series = timeseries_group("clicks", Some(10), None);
    assert!(scan(&store, &series, "nobody", 10, None).await.is_empty());
}

/// Empty batches are valid calls with empty answers.
pub async fn empty_requests_return_empty_answers(store: SharedStore) {
    let attrs = attribute_group("profile");
    assert!(put(&store, &attrs, vec![]).await.is_empty());
    let got = store.get_attributes(&attrs, &[]).await;
    assert!(matches!(got, Ok(v) if v.is_empty()));
    let series = timeseries_group("clicks", None, None);
    let query = TimeseriesQuery {
        top_n: 5,
        since: None,
    };
    let got = store.scan_timeseries(&series, &[], query).await;
    assert!(matches!(got, Ok(v) if v.is_empty()));
    assert!(store.delete(&attrs, &[]).await.is_ok());
}

/// A written record reads back equal.
pub async fn put_then_get_returns_the_record(store: SharedStore) {
    let attrs = attribute_group("profile");
    let t = now_ms();
    let outcomes = put(&store, &attrs, vec![write("u1", t, "first")]).await;
    assert_eq!(outcomes, vec![PutOutcome::Applied]);
    assert_eq!(get(&store, &attrs, "u1").await, Some(record(t, "first")));
}

/// A batched get answers in the order asked, with `None` for misses.
pub async fn batched_get_keeps_the_order_asked(store: SharedStore) {
    let attrs = attribute_group("profile");
    let t = now_ms();
    put(
        &store,
        &attrs,
        vec![
            write("a", t, "a"),
            write("c", t + 1, "c"),
            write("e", t + 2, "e"),
        ],
    )
    .await;
    let asked: Vec<EntityKey> = ["e", "b", "a", "missing", "c", "a"]
        .iter()
        .map(|e| key(e))
        .collect();
    let got = match store.get_attributes(&attrs, &asked).await {
        Ok(got) => got,
        Err(e) => panic!("batched get failed: {e}"),
    };
    let labels: Vec<Option<Value>> = got
        .iter()
        .map(|r| r.as_ref().map(|r| r.value(0).clone()))
        .collect();
    let s = |v: &str| Some(Value::String(v.to_owned()));
    assert_eq!(labels, vec![s("e"), None, s("a"), None, s("c"), s("a")]);
}

/// An older event time is `Stale` and leaves the newer record in place.
pub async fn older_event_time_is_stale_and_the_newer_value_stays(store: SharedStore) {
    let attrs = attribute_group("profile");
    let t = now_ms();
    put(&store, &attrs, vec![write("u1", t, "new")]).await;
    let outcomes = put(&store, &attrs, vec![write("u1", t - 1_000, "late")]).await;
    assert_eq!(outcomes, vec![PutOutcome::Stale]);
    assert_eq!(get(&store, &attrs, "u1").await, Some(record(t, "new")));
    let outcomes = put(&store, &attrs, vec![write("u1", t + 1, "newer")]).await;
    assert_eq!(outcomes, vec![PutOutcome::Applied]);
    assert_eq!(
        get(&store, &attrs, "u1").await,
        Some(record(t + 1, "newer"))
    );
}

/// An equal event time is `Stale`: a replay never rewrites what was already stored.
pub async fn equal_event_time_is_stale(store: SharedStore) {
    let attrs = attribute_group("profile");
    let t = now_ms();
    put(&store, &attrs, vec![write("u1", t, "first")]).await;
    let outcomes = put(&store, &attrs, vec![write("u1", t, "second")]).await;
    assert_eq!(outcomes, vec![PutOutcome::Stale]);
    assert_eq!(get(&store, &attrs, "u1").await, Some(record(t, "first")));
}

/// Several writes to one entity in one batch: each is compared with the ones before it.
pub async fn newest_write_in_one_batch_wins(store: SharedStore) {
    let attrs = attribute_group("profile");
    let t = now_ms();
    let outcomes = put(
        &store,
        &attrs,
        vec![
            write("u1", t, "a"),
            write("u1", t + 5, "b"),
            write("u1", t + 2, "c"),
            write("u2", t, "d"),
        ],
    )
    .await;
    use PutOutcome::{Applied, Stale};
    assert_eq!(outcomes, vec![Applied, Applied, Stale, Applied]);
    assert_eq!(get(&store, &attrs, "u1").await, Some(record(t + 5, "b")));
}

/// Many concurrent puts of different event times on one key end with the newest, and exactly
/// the puts that won at their moment report `Applied`.
pub async fn concurrent_puts_on_one_key_end_with_the_newest(store: SharedStore) {
    let attrs = attribute_group("profile");
    let base = now_ms();
    // A scrambled order of offsets 0..64, so the newest is neither first nor last.
    let offsets: Vec<i64> = (0..64).map(|i| (i * 37) % 64).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for offset in offsets {
        let store = Arc::clone(&store);
        let attrs = attrs.clone();
        tasks.spawn(async move {
            let w = write("hot", base + offset, &format!("v{offset}"));
            store.put(&attrs, &[w]).await
        });
    }
    let mut applied = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(outcomes)) => {
                applied += outcomes
                    .iter()
                    .filter(|o| **o == PutOutcome::Applied)
                    .count()
            }
            Ok(Err(e)) => panic!("concurrent put failed: {e}"),
            Err(e) => panic!("concurrent put task failed: {e}"),
        }
    }
    assert!(applied >= 1, "at least the first put applies");
    assert_eq!(
        get(&store, &attrs, "hot").await,
        Some(record(base + 63, "v63"))
    );
}

/// Attribute records older than the group's `max_age` are still read until `trim` removes
/// them, so that serving can tell "expired" from "not found".
pub async fn attribute_reads_return_records_past_max_age_until_trimmed(store: SharedStore) {
    let mut attrs = attribute_group("profile");
    attrs.retention.max_age = Some(Duration::from_secs(3600));
    let now = now_ms();
    put(
        &store,
        &attrs,
        vec![
            write("old", now - 2 * 3_600_000, "old"),
            write("fresh", now - 60_000, "fresh"),
        ],
    )
    .await;
    assert_eq!(
        get(&store, &attrs, "old").await,
        Some(record(now - 2 * 3_600_000, "old"))
    );
    assert_eq!(
        get(&store, &attrs, "fresh").await,
        Some(record(now - 60_000, "fresh"))
    );
    store.trim(&attrs, now).await.expect("trim");
    assert_eq!(get(&store, &attrs, "old").await, None);
    assert!(get(&store, &attrs, "fresh").await.is_some());
}

/// A time series reads newest first, at most `top_n`, and nothing before `since`.
pub async fn timeseries_is_newest_first_at_most_top_n_and_not_before_since(store: SharedStore) {
    let series = timeseries_group("clicks", Some(100), None);
    let t = now_ms() - 100_000;
    // Written out of order, as late events arrive.
    let order = [3, 9, 0, 5, 1, 8, 2, 7, 4, 6];
    let writes = order
        .iter()
        .map(|i| write("u1", t + i * 1_000, &format!("c{i}")))
        .collect();
    put(&store, &series, writes).await;

    let all = scan(&store, &series, "u1", 100, None).await;
    assert_eq!(
        times(&all),
        (0..10).rev().map(|i| t + i * 1_000).collect::<Vec<_>>()
    );
    assert_eq!(all[0], record(t + 9_000, "c9"));

    let top3 = scan(&store, &series, "u1", 3, None).await;
    assert_eq!(times(&top3), vec![t + 9_000, t + 8_000, t + 7_000]);

    let since = scan(&store, &series, "u1", 100, Some(t + 6_000)).await;
    assert_eq!(
        times(&since),
        vec![t + 9_000, t + 8_000, t + 7_000, t + 6_000]
    );

    let both = scan(&store, &series, "u1", 2, Some(t + 8_500)).await;
    assert_eq!(times(&both), vec![t + 9_000]);

    assert!(scan(&store, &series, "u1", 0, None).await.is_empty());
}

/// A time-series record with an event time already stored replaces it.
pub async fn timeseries_same_event_time_replaces(store: SharedStore) {
    let series = timeseries_group("clicks", Some(100), None);
    let t = now_ms();
    put(
        &store,
        &series,
        vec![write("u1", t, "first"), write("u1", t - 1, "earlier")],
    )
    .await;
    let outcomes = put(&store, &series, vec![write("u1", t, "second")]).await;
    assert_eq!(outcomes, vec![PutOutcome::Applied]);
    let got = scan(&store, &series, "u1", 10, None).await;
    assert_eq!(got, vec![record(t, "second"), record(t - 1, "earlier")]);
}

/// Putting past `max_records` keeps only the newest records of the entity.
pub async fn timeseries_put_trims_to_max_records(store: SharedStore) {
    let series = timeseries_group("clicks", Some(3), None);
    let t = now_ms() - 100_000;
    for i in 0..5 {
        put(&store, &series, vec![write("u1", t + i * 10, "x")]).await;
    }
    // One batch going past the limit on its own, including a record older than all kept.
    put(
        &store,
        &series,
        vec![
            write("u2", t + 1, "x"),
            write("u2", t + 3, "x"),
            write("u2", t + 2, "x"),
        ],
    )
    .await;
    put(
        &store,
        &series,
        vec![write("u2", t + 4, "x"), write("u2", t, "x")],
    )
    .await;
    assert_eq!(
        times(&scan(&store, &series, "u1", 100, None).await),
        vec![t + 40, t + 30, t + 20]
    );
    assert_eq!(
        times(&scan(&store, &series, "u2", 100, None).await),
        vec![t + 4, t + 3, t + 2]
    );
    // A backend may trim lazily on put; `trim` then removes the rest, and reads are the same.
    if let Err(e) = store.trim(&series, now_ms()).await {
        panic!("trim failed: {e}");
    }
    assert_eq!(
        times(&scan(&store, &series, "u1", 100, None).await),
        vec![t + 40, t + 30, t + 20]
    );
}

/// A long series stays within its retention as it grows, whenever puts trim.
pub async fn timeseries_reads_never_exceed_max_records(store: SharedStore) {
    let series = timeseries_group("clicks", Some(50), None);
    let t = now_ms() - 1_000_000;
    for i in 0..400 {
        put(&store, &series, vec![write("u1", t + i, "x")]).await;
        if i % 37 == 0 {
            let got = scan(&store, &series, "u1", 1000, None).await;
            assert_eq!(got.len(), (i as usize + 1).min(50), "after {} puts", i + 1);
            assert_eq!(got[0].event_time, t + i, "newest first");
        }
    }
    store.trim(&series, now_ms()).await.expect("trim");
    let got = times(&scan(&store, &series, "u1", 1000, None).await);
    assert_eq!(got, (350..400).rev().map(|i| t + i).collect::<Vec<_>>());
}

/// Time-series records older than the group's `max_age` are not served.
pub async fn timeseries_reads_skip_records_past_max_age(store: SharedStore) {
    let series = timeseries_group("clicks", Some(100), Some(Duration::from_secs(3600)));
    let now = now_ms();
    put(
        &store,
        &series,
        vec![
            write("u1", now - 2 * 3_600_000, "old"),
            write("u1", now - 60_000, "fresh"),
            write("u1", now - 3_500_000, "older but kept"),
        ],
    )
    .await;
    let got = scan(&store, &series, "u1", 10, None).await;
    assert_eq!(times(&got), vec![now - 60_000, now - 3_500_000]);
}

/// `trim` removes records past `max_age` in both kinds of group and counts them.
pub async fn trim_removes_records_past_max_age(store: SharedStore) {
    let hour = Duration::from_secs(3600);
    let now = now_ms();
    let mut attrs = attribute_group("profile");
    attrs.retention.max_age = Some(hour);
    put(
        &store,
        &attrs,
        vec![
            write("old", now - 2 * 3_600_000, "old"),
            write("half", now - 1_800_000, "half an hour old"),
            write("fresh", now - 1_000, "fresh"),
        ],
    )
    .await;
    let series = timeseries_group("clicks", Some(100), Some(hour));
    put(
        &store,
        &series,
        vec![
            write("u1", now - 1_800_000, "half an hour old"),
            write("u1", now - 3 * 3_600_000, "old"),
            write("u1", now - 2 * 3_600_000, "old"),
            write("u1", now - 1_000, "fresh"),
            write("u2", now - 5 * 3_600_000, "old"),
        ],
    )
    .await;
    // Trimming as of a later "now" removes the half-hour-old records too: `now` is the
    // caller's, not the clock's.
    let later = now + 1_801_000;
    match store.trim(&attrs, later).await {
        Ok(removed) => assert_eq!(removed, 2, "two attribute records past retention"),
        Err(e) => panic!("trim failed: {e}"),
    }
    match store.trim(&series, later).await {
        Ok(removed) => assert_eq!(removed, 4, "four time-series records past retention"),
        Err(e) => panic!("trim failed: {e}"),
    }
    // Gone for good: not served even to a group with no age limit.
    let mut unlimited = attrs.clone();
    unlimited.retention.max_age = None;
    assert_eq!(get(&store, &unlimited, "old").await, None);
    assert_eq!(get(&store, &unlimited, "half").await, None);
    assert_eq!(
        get(&store, &attrs, "fresh").await,
        Some(record(now - 1_000, "fresh"))
    );
    let mut unlimited = series.clone();
    unlimited.retention.max_age = None;
    assert_eq!(
        times(&scan(&store, &unlimited, "u1", 10, None).await),
        vec![now - 1_000]
    );
    assert!(scan(&store, &unlimited, "u2", 10, None).await.is_empty());
}

/// `trim` enforces a `max_records` lowered after records were written.
pub async fn trim_applies_a_lowered_max_records(store: SharedStore) {
    let mut series = timeseries_group("clicks", Some(10), None);
    let t = now_ms() - 100_000;
    let writes = (0..8).map(|i| write("u1", t + i, "x")).collect();
    put(&store, &series, writes).await;
    put(&store, &series, vec![write("u2", t, "x")]).await;
    series.retention.max_records = Some(3);
    match store.trim(&series, now_ms()).await {
        Ok(removed) => assert_eq!(removed, 5),
        Err(e) => panic!("trim failed: {e}"),
    }
    assert_eq!(
        times(&scan(&store, &series, "u1", 100, None).await),
        vec![t + 7, t + 6, t + 5]
    );
    assert_eq!(
        times(&scan(&store, &series, "u2", 100, None).await),
        vec![t]
    );
}

/// `delete` removes the given entities' attribute records and no others.
pub async fn delete_removes_attribute_records(store: SharedStore) {
    let attrs = attribute_group("profile");
    let t = now_ms();
    put(
        &store,
        &attrs,
        vec![
            write("u1", t, "a"),
            write("u2", t, "b"),
            write("u3", t, "c"),
        ],
    )
    .await;
    if let Err(e) = store
        .delete(&attrs, &[key("u1"), key("u3"), key("never")])
        .await
    {
        panic!("delete failed: {e}");
    }
    assert_eq!(get(&store, &attrs, "u1").await, None);
    assert_eq!(get(&store, &attrs, "u2").await, Some(record(t, "b")));
    assert_eq!(get(&store, &attrs, "u3").await, None);
    // A deleted entity can be written again, even with an older event time.
    let outcomes = put(&store, &attrs, vec![write("u1", t - 1, "again")]).await;
    assert_eq!(outcomes, vec![PutOutcome::Applied]);
}

/// `delete` removes every record of the given entities' time series and no others.
pub async fn delete_removes_timeseries_records(store: SharedStore) {
    let series = timeseries_group("clicks", Some(100), None);
    let t = now_ms();
    let writes = (0..5)
        .flat_map(|i| [write("u1", t - i, "a"), write("u2", t - i, "b")])
        .collect();
    put(&store, &series, writes).await;
    if let Err(e) = store.delete(&series, &[key("u1")]).await {
        panic!("delete failed: {e}");
    }
    assert!(scan(&store, &series, "u1", 100, None).await.is_empty());
    assert_eq!(scan(&store, &series, "u2", 100, None).await.len(), 5);
}

/// Two groups holding the same entity never see each other's records.
pub async fn groups_with_the_same_entity_stay_apart(store: SharedStore) {
    let t = now_ms();
    let a = attribute_group("profile");
    let b = attribute_group("profile_v2");
    put(&store, &a, vec![write("u1", t, "from a")]).await;
    assert_eq!(get(&store, &b, "u1").await, None);
    put(&store, &b, vec![write("u1", t - 10, "from b")]).await;
    assert_eq!(get(&store, &a, "u1").await, Some(record(t, "from a")));
    assert_eq!(get(&store, &b, "u1").await, Some(record(t - 10, "from b")));

    let x = timeseries_group("clicks", Some(100), None);
    let y = timeseries_group("clicks_v2", Some(100), None);
    put(&store, &x, vec![write("u1", t, "x")]).await;
    put(
        &store,
        &y,
        vec![write("u1", t - 1, "y"), write("u1", t - 2, "y")],
    )
    .await;
    assert_eq!(times(&scan(&store, &x, "u1", 10, None).await), vec![t]);
    assert_eq!(
        times(&scan(&store, &y, "u1", 10, None).await),
        vec![t - 1, t - 2]
    );
    if let Err(e) = store.delete(&y, &[key("u1")]).await {
        panic!("delete failed: {e}");
    }
    assert_eq!(times(&scan(&store, &x, "u1", 10, None).await), vec![t]);
    match store.trim(&x, t + 1).await {
        Ok(removed) => assert_eq!(removed, 0),
        Err(e) => panic!("trim failed: {e}"),
    }
}

/// An entity whose key is a prefix of another's (`u1`, `u10`) never reads the other's records.
pub async fn prefix_entities_stay_apart(store: SharedStore) {
    let t = now_ms();
    let attrs = attribute_group("profile");
    put(&store, &attrs, vec![write("u10", t, "ten")]).await;
    assert_eq!(get(&store, &attrs, "u1").await, None);

    let series = timeseries_group("clicks", Some(2), None);
    put(
        &store,
        &series,
        vec![
            write("u10", t, "ten"),
            write("u10", t - 1, "ten"),
            write("u1", t - 5, "one"),
        ],
    )
    .await;
    assert_eq!(
        times(&scan(&store, &series, "u1", 10, None).await),
        vec![t - 5]
    );
    // Trimming u1 to its limit must not count or remove u10's records.
    put(&store, &series, vec![write("u1", t - 6, "one")]).await;
    assert_eq!(
        times(&scan(&store, &series, "u10", 10, None).await),
        vec![t, t - 1]
    );
    if let Err(e) = store.delete(&series, &[key("u1")]).await {
        panic!("delete failed: {e}");
    }
    assert_eq!(scan(&store, &series, "u10", 10, None).await.len(), 2);
}

/// A record over the group's size limit is rejected with its size and the limit, and nothing
/// of its batch is written.
pub async fn oversized_record_is_rejected_with_size_and_limit(store: SharedStore) {
    let mut attrs = attribute_group("profile");
    attrs.max_record_bytes = 100;
    let t = now_ms();
    let big = Write {
        entity: key("u2"),
        record: Record::new(t, vec![Value::String("x".repeat(200))]),
    };
    let size = crate::codec::encoded_len(&big.record);
    match store.put(&attrs, &[write("u1", t, "fits"), big]).await {
        Err(e @ StoreError::RecordTooLarge { .. }) => {
            let message = e.to_string();
            assert!(message.contains(&size.to_string()), "size in `{message}`");
            assert!(message.contains("100"), "limit in `{message}`");
            assert!(message.contains("u2"), "entity in `{message}`");
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!(get(&store, &attrs, "u1").await, None);
}

/// Values of every type, and applied offsets, read back exactly as written.
pub async fn values_of_every_type_round_trip(store: SharedStore) {
    let t = now_ms();
    let stored = Record {
        event_time: t,
        values: vec![
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int64(i64::MIN),
            Value::Int64(-1),
            Value::Float64(-0.125),
            Value::Float64(1e300),
            Value::String("héllo, 世界".to_owned()),
            Value::Bytes(vec![0, 1, 254, 255]),
            Value::Timestamp(t - 86_400_000),
            Value::List(vec![Value::Int64(3), Value::Int64(1), Value::Null]),
            Value::Set(vec![Value::String("a".into()), Value::String("b".into())]),
            Value::Map(vec![
                ("clicks".into(), Value::Int64(4)),
                ("views".into(), Value::Int64(40)),
            ]),
            Value::Vector(vec![0.5, -1.25, 3.0e-8, f32::MAX]),
        ],
        applied: vec![
            AppliedOffset {
                source: 7,
                offset: 1_234_567,
            },
            AppliedOffset {
                source: u64::MAX,
                offset: 0,
            },
        ],
        state: vec![Value::List(vec![Value::Int64(t), Value::Float64(2.5)])],
    };
    let attrs = attribute_group("everything");
    let w = Write {
        entity: key("u1"),
        record: stored.clone(),
    };
    put(&store, &attrs, vec![w.clone()]).await;
    assert_eq!(get(&store, &attrs, "u1").await.as_ref(), Some(&stored));

    let series = timeseries_group("everything_series", Some(10), None);
    put(&store, &series, vec![w]).await;
    assert_eq!(scan(&store, &series, "u1", 10, None).await, vec![stored]);

    // Distinct entities in one batch get distinct records back.
    let entities: HashSet<&str> = ["a", "b"].into_iter().collect();
    let writes = entities.iter().map(|e| write(e, t, e)).collect();
    put(&store, &attrs, writes).await;
    for e in entities {
        assert_eq!(get(&store, &attrs, e).await, Some(record(t, e)));
    }
}

/// A counter record: its one value is the number of updates applied.
fn counter(event_time: i64, n: i64) -> Record {
    Record::new(event_time, vec![Value::Int64(n)])
}

fn increment() -> Updater {
    Box::new(|_, _, stored: Option<Record>| {
        let n = match stored.as_ref().map(|r| r.value(0)) {
            Some(Value::Int64(n)) => *n,
            _ => 0,
        };
        Some(counter(stored.map_or(1, |r| r.event_time), n + 1))
    })
}

pub async fn update_replaces_the_record_it_read_whatever_its_event_time(store: SharedStore) {
    let group = attribute_group("counters");
    put(
        &store,
        &group,
        vec![Write {
            entity: key("u1"),
            record: counter(50, 1),
        }],
    )
    .await;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let updater: Updater = Box::new(move |_, entity, stored| {
        log.lock()
            .unwrap()
            .push((entity.as_str().to_owned(), stored.clone()));
        let n = match stored.as_ref().map(|r| r.value(0)) {
            Some(Value::Int64(n)) => *n,
            _ => 0,
        };
        let mut next = counter(10, n + 10);
        next.set_applied_offset(3, 99);
        Some(next)
    });
    let stored = store
        .update(&group, &[key("u1"), key("u2")], updater)
        .await
        .expect("update");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            ("u1".to_owned(), Some(counter(50, 1))),
            ("u2".to_owned(), None)
        ],
        "the updater sees each stored record"
    );
    let mut expected = counter(10, 11);
    expected.set_applied_offset(3, 99);
    assert_eq!(stored[0].as_ref(), Some(&expected));
    // Stored although its event time (10) is older than the record it replaced (50).
    assert_eq!(get(&store, &group, "u1").await, Some(expected));
    assert_eq!(
        get(&store, &group, "u2").await.map(|r| r.values),
        Some(vec![Value::Int64(10)])
    );
}

pub async fn update_returning_none_leaves_the_record(store: SharedStore) {
    let group = attribute_group("counters");
    put(
        &store,
        &group,
        vec![Write {
            entity: key("u1"),
            record: counter(5, 7),
        }],
    )
    .await;
    let stored = store
        .update(&group, &[key("u1"), key("u2")], Box::new(|_, _, _| None))
        .await
        .expect("update");
    assert_eq!(stored, vec![None, None]);
    assert_eq!(get(&store, &group, "u1").await, Some(counter(5, 7)));
    assert_eq!(get(&store, &group, "u2").await, None);
}

pub async fn concurrent_updates_of_one_key_are_never_lost(store: SharedStore) {
    let group = Arc::new(attribute_group("counters"));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (store, group) = (store.clone(), group.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                store
                    .update(&group, &[key("hot")], increment())
                    .await
                    .expect("update");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(
        get(&store, &group, "hot").await.map(|r| r.values),
        Some(vec![Value::Int64(100)]),
        "every one of 100 concurrent increments is kept"
    );
}

pub async fn update_refuses_oversized_records_and_timeseries_groups(store: SharedStore) {
    let mut group = attribute_group("counters");
    group.max_record_bytes = 32;
    let err = store
        .update(
            &group,
            &[key("u1")],
            Box::new(|_, _, _| Some(Record::new(1, vec![Value::String("x".repeat(100))]))),
        )
        .await
        .expect_err("an oversized record is refused");
    assert!(
        matches!(err, StoreError::RecordTooLarge { limit: 32, .. }),
        "{err}"
    );
    assert_eq!(get(&store, &group, "u1").await, None);
    let series = timeseries_group("series", Some(10), None);
    let err = store
        .update(&series, &[key("u1")], increment())
        .await
        .expect_err("time series are appended, not updated");
    assert!(!err.is_retryable(), "{err}");
}
