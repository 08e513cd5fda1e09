//! The embedded durable log as a consumer and a producer rely on it: records come back as
//! appended, offsets are gap-free per partition, keys stick to partitions, positions and
//! records survive restarts and crashes, and bad input gets an error, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use cellar_ingest_stream::log::{
    EventLog, LogEntry, LogError, LogRecord, Producer, RecordPosition, MAX_PARTITIONS,
    MAX_RECORD_BYTES,
};

fn record(key: Option<&str>, payload: &str) -> LogRecord {
    LogRecord {
        key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        headers: Vec::new(),
        timestamp_ms: 1_700_000_000_000,
    }
}

fn payloads(entries: &[LogEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect()
}

fn offsets(entries: &[LogEntry]) -> Vec<i64> {
    entries.iter().map(|e| e.offset).collect()
}

fn fresh() -> (EventLog, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = EventLog::open(dir.path()).expect("open the log");
    (log, dir)
}

#[test]
fn the_log_can_be_shared_across_tasks() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<EventLog>();
}

#[tokio::test]
async fn appended_records_read_back_with_keys_headers_and_timestamps() {
    let (log, _dir) = fresh();
    log.create_topic("events", 1).await.expect("create");
    let records = vec![
        LogRecord {
            key: Some(Bytes::from_static(b"user-1")),
            payload: Bytes::from_static(b"{\"clicks\":1}"),
            headers: vec![
                ("attempt".to_owned(), Bytes::from_static(b"2")),
                ("error".to_owned(), Bytes::from_static(b"store timed out")),
                ("binary".to_owned(), Bytes::from_static(&[0, 255, 0])),
            ],
            timestamp_ms: 1_700_000_000_123,
        },
        LogRecord {
            key: None,
            payload: Bytes::new(),
            headers: Vec::new(),
            timestamp_ms: -5,
        },
        LogRecord {
            key: Some(Bytes::new()),
            payload: Bytes::from(vec![7u8; 100_000]),
            headers: vec![(String::new(), Bytes::new())],
            timestamp_ms: 0,
        },
    ];
    let positions = log.append("events", &records).await.expect("append");
    assert_eq!(
        positions,
        (0..3)
            .map(|offset| RecordPosition {
                partition: 0,
                offset
            })
            .collect::<Vec<_>>()
    );
    let entries = log.read("events", 0, 0, 10).expect("read");
    assert_eq!(entries.len(), 3);
    for (entry, (offset, record)) in entries.iter().zip(records.iter().enumerate()) {
        assert_eq!(entry.offset, offset as i64);
        assert_eq!(entry.key, record.key);
        assert_eq!(entry.payload, record.payload);
        assert_eq!(entry.headers, record.headers);
        assert_eq!(entry.timestamp_ms, record.timestamp_ms);
    }
    // A read from the middle, and one bounded by max_records.
    assert_eq!(
        offsets(&log.read("events", 0, 1, 10).expect("read")),
        [1, 2]
    );
    assert_eq!(offsets(&log.read("events", 0, 0, 2).expect("read")), [0, 1]);
    assert!(log
        .read("events", 0, 3, 10)
        .expect("read at end")
        .is_empty());
}

#[tokio::test]
async fn offsets_start_at_zero_and_increase_per_partition() {
    let (log, _dir) = fresh();
    log.create_topic("events", 3).await.expect("create");
    assert_eq!(log.partitions("events").expect("partitions"), 3);
    for partition in 0..3 {
        assert_eq!(log.end_offset("events", partition).expect("end"), 0);
        assert_eq!(log.start_offset("events", partition).expect("start"), 0);
    }
    let first = log
        .append_to("events", 1, &[record(None, "a"), record(None, "b")])
        .await
        .expect("append");
    assert_eq!(first, [0, 1]);
    let second = log
        .append_to("events", 1, &[record(Some("x"), "c")])
        .await
        .expect("append");
    assert_eq!(second, [2], "an explicit partition wins over the key");
    let other = log
        .append_to("events", 2, &[record(None, "d")])
        .await
        .expect("append");
    assert_eq!(other, [0], "each partition counts from zero");
    assert_eq!(log.end_offset("events", 0).expect("end"), 0);
    assert_eq!(log.end_offset("events", 1).expect("end"), 3);
    assert_eq!(log.end_offset("events", 2).expect("end"), 1);
    assert_eq!(
        payloads(&log.read("events", 1, 0, 100).expect("read")),
        ["a", "b", "c"]
    );
}

#[tokio::test]
async fn one_key_always_lands_on_one_partition() {
    let (log, dir) = fresh();
    log.create_topic("events", 8).await.expect("create");
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let mut home: HashMap<String, u32> = HashMap::new();
    for round in 0..3 {
        let records: Vec<LogRecord> = keys
            .iter()
            .map(|k| record(Some(k), &format!("{k}/{round}")))
            .collect();
        let positions = log.append("events", &records).await.expect("append");
        for (key, position) in keys.iter().zip(&positions) {
            let partition = *home.entry(key.clone()).or_insert(position.partition);
            assert_eq!(position.partition, partition, "{key} moved partitions");
        }
    }
    let used: std::collections::HashSet<u32> = home.values().copied().collect();
    assert!(
        used.len() > 4,
        "200 keys spread over most of 8 partitions: {used:?}"
    );
    // Kafka's default partitioner puts these keys on these partitions of an 8-partition
    // topic; the embedded log must agree so moving to Kafka keeps per-key order.
    let expected = [("21", 4u32), ("foobar", 6), ("abc", 3)];
    for (key, partition) in expected {
        let positions = log
            .append("events", &[record(Some(key), "x")])
            .await
            .expect("append");
        assert_eq!(positions[0].partition, partition, "key {key}");
    }
    // And after a restart.
    drop(log);
    let log = EventLog::open(dir.path()).expect("reopen");
    for key in keys.iter().take(20) {
        let positions = log
            .append("events", &[record(Some(key), "again")])
            .await
            .expect("append");
        assert_eq!(positions[0].partition, home[key]);
    }
    // Every record of a key reads back from its partition in append order.
    let key = &keys[7];
    let entries = log.read("events", home[key], 0, 10_000).expect("read");
    let mine: Vec<String> = entries
        .iter()
        .filter(|e| e.key.as_deref() == Some(key.as_bytes()))
        .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    assert_eq!(
        mine,
        [
            format!("{key}/0"),
            format!("{key}/1"),
            format!("{key}/2"),
            "again".to_owned()
        ]
    );
}

#[tokio::test]
async fn records_without_a_key_spread_round_robin() {
    let (log, _dir) = fresh();
    log.create_topic("events", 4).await.expect("create");
    let records: Vec<LogRecord> = (0..8).map(|i| record(None, &i.to_string())).collect();
    let positions = log.append("events", &records).await.expect("append");
    let mut per_partition = [0; 4];
    for position in positions {
        per_partition[position.partition as usize] += 1;
    }
    assert_eq!(per_partition, [2, 2, 2, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appenders_get_unique_gap_free_offsets() {
    let (log, _dir) = fresh();
    log.create_topic("events", 3).await.expect("create");
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for call in 0..20 {
                    let records: Vec<LogRecord> = (0..(call % 4 + 1))
                        .map(|i| {
                            let key = format!("k{}", (task * 7 + call + i) % 50);
                            record(Some(&key), &format!("{task}/{call}/{i}"))
                        })
                        .collect();
                    let positions = log.append("events", &records).await.expect("append");
                    assert_eq!(positions.len(), records.len());
                    for (position, record) in positions.into_iter().zip(records) {
                        written.push((position, record.payload));
                    }
                }
                written
            })
        })
        .collect();
    let mut written: BTreeMap<RecordPosition, Bytes> = BTreeMap::new();
    for task in tasks {
        for (position, payload) in task.await.expect("task") {
            assert!(
                written.insert(position, payload).is_none(),
                "two records got {position:?}"
            );
        }
    }
    assert_eq!(written.len(), 32 * (20 / 4) * (1 + 2 + 3 + 4));
    for partition in 0..3 {
        let end = log.end_offset("events", partition).expect("end");
        let entries = log
            .read("events", partition, 0, usize::MAX)
            .expect("read all");
        assert_eq!(offsets(&entries), (0..end).collect::<Vec<_>>(), "no gaps");
        for entry in entries {
            let position = RecordPosition {
                partition,
                offset: entry.offset,
            };
            assert_eq!(written.get(&position), Some(&entry.payload), "{position:?}");
        }
    }
    let total: i64 = (0..3)
        .map(|p| log.end_offset("events", p).expect("end"))
        .sum();
    assert_eq!(total as usize, written.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_creators_agree_on_one_topic() {
    let (log, dir) = fresh();
    let creators: Vec<_> = (0..16)
        .map(|i| {
            let log = log.clone();
            // Half ask for 4 partitions, half for 5: whichever wins, the others must be told.
            tokio::spawn(async move { log.create_topic("events", 4 + i % 2).await })
        })
        .collect();
    let mut created = 0;
    let mut refused = 0;
    for creator in creators {
        match creator.await.expect("task") {
            Ok(()) => created += 1,
            Err(LogError::PartitionCountMismatch { .. }) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!((created, refused), (8, 8));
    let partitions = log.partitions("events").expect("partitions");
    assert!(partitions == 4 || partitions == 5);
    drop(log);
    let log = EventLog::open(dir.path()).expect("reopen");
    assert_eq!(log.partitions("events").expect("partitions"), partitions);
}

#[tokio::test]
async fn committed_positions_are_per_group_never_move_back_and_survive_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let log = EventLog::open(dir.path()).expect("open");
        log.create_topic("events", 2).await.expect("create");
        let records: Vec<LogRecord> = (0..10).map(|i| record(None, &i.to_string())).collect();
        log.append_to("events", 0, &records).await.expect("append");
        log.append_to("events", 1, &records[..4])
            .await
            .expect("append");
        assert_eq!(
            log.committed("billing", "events", 0).expect("committed"),
            None
        );
        assert_eq!(
            log.commit("billing", "events", 0, 6).await.expect("commit"),
            6
        );
        assert_eq!(
            log.commit("fraud", "events", 0, 2).await.expect("commit"),
            2
        );
        assert_eq!(
            log.commit("billing", "events", 1, 4).await.expect("commit"),
            4
        );
        // A late commit from a consumer that lost the partition does not rewind the group.
        assert_eq!(
            log.commit("billing", "events", 0, 3).await.expect("commit"),
            6
        );
        assert_eq!(
            log.commit("billing", "events", 0, 10)
                .await
                .expect("commit"),
            10
        );
        assert_eq!(
            log.commit("fraud", "events", 0, 0).await.expect("commit"),
            2
        );
        // Beyond the end offset is refused.
        let err = log
            .commit("fraud", "events", 1, 5)
            .await
            .expect_err("beyond the end");
        assert!(
            matches!(
                err,
                LogError::OffsetOutOfRange {
                    offset: 5,
                    end: 4,
                    ..
                }
            ),
            "{err}"
        );
    }
    let log = EventLog::open(dir.path()).expect("reopen");
    assert_eq!(log.committed("billing", "events", 0).expect("c"), Some(10));
    assert_eq!(log.committed("billing", "events", 1).expect("c"), Some(4));
    assert_eq!(log.committed("fraud", "events", 0).expect("c"), Some(2));
    assert_eq!(log.committed("fraud", "events", 1).expect("c"), None);
    assert_eq!(log.committed("audit", "events", 0).expect("c"), None);
    assert_eq!(
        log.commit("fraud", "events", 0, 1).await.expect("commit"),
        2
    );
}

#[tokio::test]
async fn reopening_keeps_topics_records_offsets_and_truncations() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let log = EventLog::open(dir.path()).expect("open");
        log.create_topic("events", 4).await.expect("create");
        log.create_topic("retry", 1).await.expect("create");
        for batch in 0..10 {
            let records: Vec<LogRecord> = (0..10)
                .map(|i| record(Some(&format!("k{i}")), &format!("{batch}/{i}")))
                .collect();
            log.append("events", &records).await.expect("append");
        }
        log.append_to(
            "retry",
            0,
            &[record(None, "r0"), record(None, "r1"), record(None, "r2")],
        )
        .await
        .expect("append");
        log.truncate_before("retry", 0, 2).await.expect("truncate");
        // A clone outliving the original keeps the log open; both go before the reopen.
        let clone = log.clone();
        drop(log);
        assert_eq!(clone.end_offset("retry", 0).expect("end"), 3);
    }
    let log = EventLog::open(dir.path()).expect("reopen");
    assert_eq!(log.topics(), ["events", "retry"]);
    assert_eq!(log.partitions("events").expect("partitions"), 4);
    let mut total = 0;
    for partition in 0..4 {
        let end = log.end_offset("events", partition).expect("end");
        let entries = log.read("events", partition, 0, 1000).expect("read");
        assert_eq!(offsets(&entries), (0..end).collect::<Vec<_>>());
        total += entries.len();
    }
    assert_eq!(total, 100);
    assert_eq!(log.start_offset("retry", 0).expect("start"), 2);
    assert_eq!(log.end_offset("retry", 0).expect("end"), 3);
    assert_eq!(
        payloads(&log.read("retry", 0, 2, 10).expect("read")),
        ["r2"]
    );
    // Appends carry on from the end offsets found on disk.
    let next = log
        .append_to("retry", 0, &[record(None, "r3")])
        .await
        .expect("append");
    assert_eq!(next, [3]);
}

#[tokio::test]
async fn truncation_removes_old_records_and_reads_below_the_start_fail() {
    let (log, dir) = fresh();
    log.create_topic("events", 2).await.expect("create");
    let records: Vec<LogRecord> = (0..25_000).map(|i| record(None, &i.to_string())).collect();
    log.append_to("events", 0, &records).await.expect("append");
    log.append_to("events", 1, &records[..3])
        .await
        .expect("append");

    // More than one deletion chunk.
    assert_eq!(
        log.truncate_before("events", 0, 20_005)
            .await
            .expect("truncate"),
        20_005
    );
    assert_eq!(log.start_offset("events", 0).expect("start"), 20_005);
    let err = log
        .read("events", 0, 20_004, 10)
        .expect_err("below the start");
    assert_eq!(
        err,
        LogError::OffsetOutOfRange {
            topic: "events".into(),
            partition: 0,
            offset: 20_004,
            start: 20_005,
            end: 25_000,
        }
    );
    assert!(err.to_string().contains("20005..25000"), "{err}");
    let kept = log
        .read("events", 0, 20_005, 2)
        .expect("read from the start");
    assert_eq!(payloads(&kept), ["20005", "20006"]);
    // At or below the start: nothing to do. Past the end: refused.
    assert_eq!(
        log.truncate_before("events", 0, 100).await.expect("no-op"),
        0
    );
    assert_eq!(log.start_offset("events", 0).expect("start"), 20_005);
    let err = log
        .truncate_before("events", 0, 25_001)
        .await
        .expect_err("past the end");
    assert!(
        matches!(err, LogError::OffsetOutOfRange { offset: 25_001, .. }),
        "{err}"
    );
    // Other partitions are untouched.
    assert_eq!(log.read("events", 1, 0, 10).expect("read").len(), 3);

    // Truncating everything keeps the end offset, and appends continue from it.
    assert_eq!(
        log.truncate_before("events", 1, 3).await.expect("truncate"),
        3
    );
    assert!(log
        .read("events", 1, 3, 10)
        .expect("read at end")
        .is_empty());
    drop(log);
    let log = EventLog::open(dir.path()).expect("reopen");
    assert_eq!(log.start_offset("events", 1).expect("start"), 3);
    assert_eq!(log.end_offset("events", 1).expect("end"), 3);
    let next = log
        .append_to("events", 1, &[record(None, "x")])
        .await
        .expect("append");
    assert_eq!(next, [3]);
    assert!(log.read("events", 0, 0, 1).is_err());
    assert_eq!(
        log.read("events", 0, 20_005, 1).expect("read")[0].offset,
        20_005
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_wakes_on_append() {
    let (log, _dir) = fresh();
    log.create_topic("events", 2).await.expect("create");
    log.append_to("events", 0, &[record(None, "first")])
        .await
        .expect("append");
    // A record that is already there needs no waiting.
    assert!(log
        .wait_for("events", 0, 0, Duration::ZERO)
        .await
        .expect("wait"));
    let waiter = {
        let log = log.clone();
        tokio::spawn(async move {
            log.wait_for("events", 0, 1, Duration::from_secs(30))
                .await
                .expect("wait")
        })
    };
    tokio::task::yield_now().await;
    // An append to another partition does not satisfy the waiter.
    log.append_to("events", 1, &[record(None, "elsewhere")])
        .await
        .expect("append");
    log.append_to("events", 0, &[record(None, "second")])
        .await
        .expect("append");
    assert!(waiter.await.expect("waiter"), "woken by the append");
    assert_eq!(
        payloads(&log.read("events", 0, 1, 10).expect("read")),
        ["second"]
    );
}

#[tokio::test(start_paused = true)]
async fn wait_for_times_out_when_nothing_arrives() {
    let (log, _dir) = fresh();
    log.create_topic("events", 1).await.expect("create");
    let started = tokio::time::Instant::now();
    let arrived = log
        .wait_for("events", 0, 0, Duration::from_secs(5))
        .await
        .expect("wait");
    assert!(!arrived);
    assert!(started.elapsed() >= Duration::from_secs(5));
}

#[tokio::test]
async fn hostile_input_gets_errors_naming_what_is_wrong() {
    let (log, _dir) = fresh();
    log.create_topic("events", 2).await.expect("create");
    log.append_to("events", 0, &[record(None, "a")])
        .await
        .expect("append");

    let unknown = |err: LogError| {
        assert_eq!(
            err,
            LogError::UnknownTopic {
                topic: "nope".into()
            }
        );
        assert_eq!(err.to_string(), "unknown topic `nope`");
    };
    unknown(log.append("nope", &[record(None, "x")]).await.unwrap_err());
    unknown(log.append("nope", &[]).await.unwrap_err());
    unknown(log.append_to("nope", 0, &[]).await.unwrap_err());
    unknown(log.read("nope", 0, 0, 1).unwrap_err());
    unknown(log.end_offset("nope", 0).unwrap_err());
    unknown(log.start_offset("nope", 0).unwrap_err());
    unknown(log.partitions("nope").unwrap_err());
    unknown(log.commit("g", "nope", 0, 0).await.unwrap_err());
    unknown(log.committed("g", "nope", 0).unwrap_err());
    unknown(log.truncate_before("nope", 0, 0).await.unwrap_err());
    unknown(
        log.wait_for("nope", 0, 0, Duration::ZERO)
            .await
            .unwrap_err(),
    );

    let out_of_range = |err: LogError| {
        assert_eq!(
            err,
            LogError::PartitionOutOfRange {
                topic: "events".into(),
                partition: 99,
                partitions: 2
            }
        );
        assert!(err.to_string().contains("partition 99"), "{err}");
    };
    out_of_range(
        log.append_to("events", 99, &[record(None, "x")])
            .await
            .unwrap_err(),
    );
    out_of_range(log.read("events", 99, 0, 1).unwrap_err());
    out_of_range(log.end_offset("events", 99).unwrap_err());
    out_of_range(log.start_offset("events", 99).unwrap_err());
    out_of_range(log.commit("g", "events", 99, 0).await.unwrap_err());
    out_of_range(log.committed("g", "events", 99).unwrap_err());
    out_of_range(log.truncate_before("events", 99, 0).await.unwrap_err());
    out_of_range(
        log.wait_for("events", 99, 0, Duration::ZERO)
            .await
            .unwrap_err(),
    );

    for offset in [i64::MAX, i64::MIN, -1, 2] {
        let err = log.read("events", 0, offset, usize::MAX).unwrap_err();
        assert!(
            matches!(err, LogError::OffsetOutOfRange { offset: o, start: 0, end: 1, .. } if o == offset),
            "{err}"
        );
        assert!(log.commit("g", "events", 0, offset).await.is_err());
        assert!(log.truncate_before("events", 0, offset).await.is_err());
    }
    assert!(log.wait_for("events", 0, -1, Duration::ZERO).await.is_err());
    assert!(!log
        .wait_for("events", 0, i64::MAX, Duration::ZERO)
        .await
        .expect("a far offset simply has not arrived"));
    assert!(log
        .read("events", 0, 0, 0)
        .expect("zero records")
        .is_empty());
    assert_eq!(log.read("events", 0, 0, usize::MAX).expect("read").len(), 1);

    // An empty batch appends nothing and moves no offset.
    assert_eq!(log.append("events", &[]).await.expect("empty"), []);
    assert_eq!(
        log.append_to("events", 1, &[]).await.expect("empty"),
        Vec::<i64>::new()
    );
    assert_eq!(log.end_offset("events", 0).expect("end"), 1);

    // Names and counts the layout cannot hold.
    for name in ["", "a\0b", &"t".repeat(250)] {
        let err = log.create_topic(name, 1).await.unwrap_err();
        assert!(matches!(err, LogError::InvalidInput { .. }), "{err}");
    }
    for partitions in [0, MAX_PARTITIONS + 1, u32::MAX] {
        let err = log.create_topic("fresh", partitions).await.unwrap_err();
        assert!(err.to_string().contains("partition count"), "{err}");
    }
    let err = log.create_topic("events", 3).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "topic `events` exists with 2 partitions, not 3"
    );
    log.create_topic("events", 2)
        .await
        .expect("same count is fine");
    let err = log.commit("bad\0group", "events", 0, 0).await.unwrap_err();
    assert!(err.to_string().contains("NUL"), "{err}");
    assert_eq!(
        log.committed("bad\0group", "events", 0)
            .expect("never committed"),
        None
    );

    // An oversized record is refused with its size and the limit, and nothing is written.
    let big = LogRecord {
        payload: Bytes::from(vec![0u8; MAX_RECORD_BYTES]),
        ..LogRecord::default()
    };
    let err = log
        .append("events", &[record(None, "small"), big])
        .await
        .unwrap_err();
    assert!(
        matches!(err, LogError::RecordTooLarge { size, limit, .. } if size > limit && limit == MAX_RECORD_BYTES),
        "{err}"
    );
    assert_eq!(log.end_offset("events", 0).expect("end"), 1);
    assert_eq!(log.end_offset("events", 1).expect("end"), 0);
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn a_damaged_record_is_reported_with_its_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let log = EventLog::open(dir.path()).expect("open");
        log.create_topic("events", 2).await.expect("create");
        let records: Vec<LogRecord> = (0..3).map(|i| record(None, &i.to_string())).collect();
        log.append_to("events", 1, &records).await.expect("append");
    }
    {
        // Damage offset 1 of partition 1 behind the log's back.
        let db = fjall::Database::builder(dir.path())
            .open()
            .expect("open fjall");
        let records = db
            .keyspace("records", fjall::KeyspaceCreateOptions::default)
            .expect("keyspace");
        let mut key = b"events\0".to_vec();
        key.extend_from_slice(&1u32.to_be_bytes());
        key.extend_from_slice(&1u64.to_be_bytes());
        records.insert(key, [1u8, 0xff]).expect("insert");
        db.persist(fjall::PersistMode::SyncAll).expect("persist");
    }
    let log = EventLog::open(dir.path()).expect("reopen");
    let err = log.read("events", 1, 0, 10).unwrap_err();
    assert!(
        matches!(&err, LogError::Corrupt { topic, partition: 1, offset: 1, .. } if topic == "events"),
        "{err}"
    );
    assert!(!err.is_retryable());
    // The records around it still read.
    assert_eq!(payloads(&log.read("events", 1, 0, 1).expect("read")), ["0"]);
    assert_eq!(payloads(&log.read("events", 1, 2, 1).expect("read")), ["2"]);
}

/// Set in the child process of the crash test: the directory it writes to before aborting.
const CRASH_CHILD_DIR: &str = "CELLAR_LOG_CRASH_CHILD_DIR";
/// Appends the crash test's child makes, of `CRASH_BATCH` records each.
const CRASH_APPENDS: usize = 40;
const CRASH_BATCH: usize = 25;

/// Appends and commits in a child process that aborts right after its last call returns (no
/// destructors, no shutdown flush), then reopens the directory: every acknowledged record and
/// position must be there.
#[test]
fn acknowledged_appends_and_commits_survive_a_crash() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        append_then_abort(Path::new(&dir));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary path");
    let status = Command::new(exe)
        .args([
            "acknowledged_appends_and_commits_survive_a_crash",
            "--exact",
            "--nocapture",
        ])
        .env(CRASH_CHILD_DIR, dir.path())
        .status()
        .expect("run the child");
    assert!(!status.success(), "the child aborts after its appends");

    let log = EventLog::open(dir.path()).expect("reopen after the crash");
    assert_eq!(log.partitions("events").expect("topic"), 4);
    let mut seen = Vec::new();
    for partition in 0..4 {
        let end = log.end_offset("events", partition).expect("end");
        let entries = log.read("events", partition, 0, usize::MAX).expect("read");
        assert_eq!(offsets(&entries), (0..end).collect::<Vec<_>>());
        seen.extend(payloads(&entries));
        assert_eq!(
            log.committed("ingest", "events", partition)
                .expect("committed"),
            Some(end),
            "partition {partition}"
        );
    }
    seen.sort();
    let mut expected: Vec<String> = (0..CRASH_APPENDS * CRASH_BATCH)
        .map(|i| i.to_string())
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "every acknowledged record, once");
}

fn append_then_abort(dir: &Path) -> ! {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let log = EventLog::open(dir).expect("open in the child");
        log.create_topic("events", 4).await.expect("create");
        for append in 0..CRASH_APPENDS {
            let records: Vec<LogRecord> = (0..CRASH_BATCH)
                .map(|i| {
                    let n = append * CRASH_BATCH + i;
                    record(Some(&format!("k{}", n % 13)), &n.to_string())
                })
                .collect();
            log.append("events", &records).await.expect("append");
        }
        for partition in 0..4 {
            let end = log.end_offset("events", partition).expect("end");
            log.commit("ingest", "events", partition, end)
                .await
                .expect("commit");
        }
    });
    std::process::abort()
}

fn numbered(from: u64, to: u64) -> Vec<LogRecord> {
    (from..to).map(|i| record(None, &format!("e{i}"))).collect()
}

fn producer(first_sequence: u64) -> Producer {
    Producer {
        id: "import-1".to_owned(),
        first_sequence,
    }
}

/// Every payload of a one-partition topic.
fn everything(log: &EventLog, topic: &str) -> Vec<String> {
    payloads(&log.read(topic, 0, 0, 10_000).expect("read"))
}

#[tokio::test]
async fn a_producer_appending_the_same_records_again_appends_them_once_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let log = EventLog::open(dir.path()).expect("open");
        log.create_topic("events", 1).await.expect("create");
        let done = log
            .append_produced("events", &producer(0), &numbered(0, 3))
            .await
            .expect("append");
        assert_eq!(
            (done.positions.len(), done.duplicates, done.next_sequence),
            (3, 0, 3)
        );

        // A retry of the same request appends nothing.
        let again = log
            .append_produced("events", &producer(0), &numbered(0, 3))
            .await
            .expect("retry");
        assert_eq!(
            (again.positions.len(), again.duplicates, again.next_sequence),
            (0, 3, 3)
        );
    }
    // After a restart, an overlapping request appends only what is new.
    let log = EventLog::open(dir.path()).expect("reopen");
    assert_eq!(log.next_sequence("events", "import-1"), 3);
    let done = log
        .append_produced("events", &producer(1), &numbered(1, 6))
        .await
        .expect("overlap");
    assert_eq!(
        (done.positions.len(), done.duplicates, done.next_sequence),
        (3, 2, 6)
    );
    assert_eq!(
        everything(&log, "events"),
        ["e0", "e1", "e2", "e3", "e4", "e5"]
    );

    // A gap is refused, naming what is missing, and appends nothing.
    let gap = log
        .append_produced("events", &producer(8), &numbered(8, 9))
        .await
        .unwrap_err();
    assert!(
        matches!(
            gap,
            LogError::SequenceGap {
                expected: 6,
                got: 8,
                ..
            }
        ),
        "{gap}"
    );
    assert!(gap.to_string().contains("resend from 6"), "{gap}");
    assert_eq!(everything(&log, "events").len(), 6);

    // Other producers and other topics count on their own; plain appends are untouched.
    let other = Producer {
        id: "import-2".to_owned(),
        first_sequence: 0,
    };
    let done = log
        .append_produced("events", &other, &numbered(0, 1))
        .await
        .expect("other producer");
    assert_eq!(done.positions.len(), 1);
    log.append("events", &numbered(0, 1)).await.expect("plain");
    assert_eq!(everything(&log, "events").len(), 8);
    assert!(log
        .append_produced("events", &producer(u64::MAX), &numbered(0, 1))
        .await
        .is_err());
}

#[tokio::test]
async fn concurrent_retries_of_one_producer_append_each_record_once() {
    let (log, _dir) = fresh();
    log.create_topic("events", 4).await.expect("create");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in 0..10u64 {
                // Each task sends every chunk; sequences are global, so all but one copy of
                // each record is a duplicate, whichever task gets there first.
                let _ = log
                    .append_produced(
                        "events",
                        &producer(chunk * 10),
                        &numbered(chunk * 10, chunk * 10 + 10),
                    )
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let mut seen = Vec::new();
    for partition in 0..4 {
        seen.extend(payloads(
            &log.read("events", partition, 0, 10_000).expect("read"),
        ));
    }
    seen.sort();
    let mut expected: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

fn stamped(payload: &str, timestamp_ms: i64) -> LogRecord {
    LogRecord {
        timestamp_ms,
        ..record(None, payload)
    }
}

#[tokio::test]
async fn retention_deletes_what_every_consumer_processed_once_old_and_keeps_the_rest() {
    let (log, _dir) = fresh();
    let keep = Duration::from_secs(60);
    let now = 1_700_000_000_000;
    let old = now - 120_000;
    for topic in ["consumed", "unconsumed", "dead"] {
        log.create_topic(topic, 1).await.expect("create");
        let records: Vec<LogRecord> = (0..10)
            .map(|i| stamped(&format!("{topic}{i}"), if i < 8 { old } else { now }))
            .collect();
        log.append(topic, &records).await.expect("append");
    }
    // A group that will read `consumed` but has not committed yet needs all of it.
    let declared = [("late".to_owned(), "consumed".to_owned())];
    log.enforce_retention(
        keep,
        now,
        &declared,
        &["dead".to_owned(), "unconsumed".to_owned()],
    )
    .await
    .expect("retention");
    assert_eq!(log.start_offset("consumed", 0).expect("start"), 0);

    // Two groups consume `consumed`; the slower one has processed 5 records.
    log.commit("fast", "consumed", 0, 10).await.expect("commit");
    log.commit("slow", "consumed", 0, 5).await.expect("commit");

    let removed = log
        .enforce_retention(keep, now, &[], &["dead".to_owned()])
        .await
        .expect("retention");
    // consumed: old and processed by both groups: 0..5; unconsumed: the 8 old ones.
    assert_eq!(removed, 5 + 8);
    assert_eq!(log.start_offset("consumed", 0).expect("start"), 5);
    assert_eq!(log.start_offset("unconsumed", 0).expect("start"), 8);
    assert_eq!(log.start_offset("dead", 0).expect("start"), 0);
    assert_eq!(
        payloads(&log.read("consumed", 0, 5, 100).expect("read"))[0],
        "consumed5"
    );

    // Once the slow group moves on, the old records it processed go too; young ones stay.
    log.commit("slow", "consumed", 0, 10).await.expect("commit");
    let removed = log
        .enforce_retention(keep, now, &[], &["dead".to_owned()])
        .await
        .expect("retention");
    assert_eq!(removed, 3);
    assert_eq!(log.start_offset("consumed", 0).expect("start"), 8);
    // Not kept whole any more, `dead` loses its old records; then nothing is left to remove.
    assert_eq!(
        log.enforce_retention(keep, now, &[], &[])
            .await
            .expect("retention"),
        8
    );
    assert_eq!(
        log.enforce_retention(keep, now, &[], &[])
            .await
            .expect("retention"),
        0
    );
}

#[tokio::test]
async fn retention_keeps_the_log_bounded_while_events_flow() {
    let (log, dir) = fresh();
    log.create_topic("events", 4).await.expect("create");
    let mut held = Vec::new();
    for round in 0..20i64 {
        let records: Vec<LogRecord> = (0..5_000)
            .map(|i| record(Some(&format!("k{i}")), &format!("{round}-{i}")))
            .collect();
        log.append("events", &records).await.expect("append");
        for p in 0..4 {
            let end = log.end_offset("events", p).expect("end");
            log.commit("consumer", "events", p, end)
                .await
                .expect("commit");
        }
        // Everything is processed and older than a retention of 0.
        log.enforce_retention(Duration::ZERO, i64::MAX, &[], &[])
            .await
            .expect("retention");
        let kept: i64 = (0..4)
            .map(|p| {
                log.end_offset("events", p).expect("end")
                    - log.start_offset("events", p).expect("start")
            })
            .sum();
        held.push(kept);
    }
    assert!(held.iter().all(|&kept| kept == 0), "{held:?}");
    let total: i64 = (0..4)
        .map(|p| log.end_offset("events", p).expect("end"))
        .sum();
    assert_eq!(total, 100_000);
    drop(log);
    assert!(dir.path().exists());
}

/// The bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list the log's directory")
        .map(|entry| {
            let entry = entry.expect("directory entry");
            let meta = entry.metadata().expect("file metadata");
            if meta.is_dir() {
                disk_bytes(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// About 1 KB of hex digits that compression cannot shrink, so the bytes on disk follow the
/// records kept rather than how well they compress.
fn incompressible(seed: u64) -> String {
    let mut state = seed;
    (0..64)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

/// 400,000 events of about 1 KB (400 MiB) flow through the log while a consumer commits
/// behind the producer and retention deletes what it committed. The log's directory, about
/// 115 MiB after the first 100,000 events (journals not yet rotated, the first memtable
/// flushed), stays between 64 and 145 MiB from there on: journals are evicted at fjall's
/// 64 MiB limit and compaction drops the deleted records. Twice the size after 100,000 events
/// leaves room for a journal and a flush more. Were nothing deleted, the directory would pass
/// it by 250,000 events; with fjall's default 512 MiB of journals, by 225,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_log_bounded_on_disk_while_events_flow() {
    const EVENTS: usize = 400_000;
    const BATCH: usize = 1_000;
    const PARTITIONS: u32 = 4;
    let (log, dir) = fresh();
    log.create_topic("events", PARTITIONS)
        .await
        .expect("create");
    let mut early = None;
    let mut sizes = Vec::new();
    for batch in 1..=EVENTS / BATCH {
        let records: Vec<LogRecord> = ((batch - 1) * BATCH..batch * BATCH)
            .map(|i| {
                let payload = format!("{{\"id\":{i},\"blob\":\"{}\"}}", incompressible(i as u64));
                record(Some(&format!("k{}", i % 1_000)), &payload)
            })
            .collect();
        log.append("events", &records).await.expect("append");
        for p in 0..PARTITIONS {
            let end = log.end_offset("events", p).expect("end");
            log.commit("consumer", "events", p, end)
                .await
                .expect("commit");
        }
        if batch % 10 == 0 {
            log.enforce_retention(Duration::ZERO, i64::MAX, &[], &[])
                .await
                .expect("retention");
        }
        if batch % 25 == 0 {
            let bytes = disk_bytes(dir.path());
            sizes.push((batch * BATCH, bytes >> 20));
            match early {
                None if batch * BATCH >= EVENTS / 4 => early = Some(bytes),
                Some(early) => assert!(
                    bytes <= 2 * early,
                    "{bytes} bytes on disk after {} events, {early} after {}: (events, MiB) {sizes:?}",
                    batch * BATCH,
                    EVENTS / 4
                ),
                None => {}
            }
        }
    }
    let held: i64 = (0..PARTITIONS)
        .map(|p| {
            log.end_offset("events", p).expect("end")
                - log.start_offset("events", p).expect("start")
        })
        .sum();
    assert_eq!(held, 0, "retention ran after the last commit");
}
