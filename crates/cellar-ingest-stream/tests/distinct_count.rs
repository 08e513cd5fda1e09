//! A busy entity's `distinct_count` keeps its record under the group's size limit however many
//! distinct values it sees, and its value stays within the sketch's documented error.

use cellar_ingest_stream::aggregate::{apply, Fold, Update, WindowSpec};
use cellar_spec::parse::DEFAULT_MAX_RECORD_BYTES;
use cellar_spec::{AggregateFunction, Value};
use cellar_store::codec::encoded_len;

const HOUR: i64 = 3_600_000;
/// An hour boundary, so that one hour of events fills exactly one tumbling window.
const START: i64 = 1_700_002_800_000;

fn distinct(size_ms: i64, slide_ms: i64) -> WindowSpec {
    WindowSpec {
        function: AggregateFunction::DistinctCount,
        size_ms,
        slide_ms,
        float: false,
    }
}

#[test]
fn a_million_distinct_values_keep_the_record_under_the_cap() {
    let tumbling = distinct(HOUR, HOUR);
    let sliding = distinct(HOUR, 5 * 60_000);
    let (events, per_event) = (1000, 1000);
    let mut record = None;
    let mut largest = 0;
    for e in 0..events {
        // Spread over the hour, so that every bucket of the sliding window fills.
        let event_time = START + e * (HOUR / events);
        let mut folds = Vec::with_capacity(2 * per_event as usize);
        for i in 0..per_event {
            // Long values: a sketch keeps none of them.
            let input = Value::String(format!(
                "session-{:08}-{}",
                e * per_event + i,
                "x".repeat(40)
            ));
            folds.push(Fold {
                position: 0,
                window: tumbling,
                input: input.clone(),
            });
            folds.push(Fold {
                position: 1,
                window: sliding,
                input,
            });
        }
        let update = Update {
            event_time,
            origin: Some((1, e as u64)),
            fields: Vec::new(),
            folds,
        };
        apply(&mut record, 2, &update);
        let size = encoded_len(record.as_ref().unwrap());
        assert!(
            size <= DEFAULT_MAX_RECORD_BYTES,
            "after {} distinct values the record is {size} bytes",
            (e + 1) * per_event
        );
        largest = largest.max(size);
    }
    // Each feature's state within its 2 KiB budget.
    assert!(largest <= 2 * 2048 + 64, "largest record {largest} bytes");
    let truth = (events * per_event) as f64;
    let record = record.unwrap();
    for (position, relative_error) in [(0, 1.04 / 2048f64.sqrt()), (1, 1.04 / 128f64.sqrt())] {
        let Value::Int64(estimate) = record.values[position] else {
            panic!("{:?}", record.values[position]);
        };
        let off = (estimate as f64 - truth).abs() / truth;
        assert!(
            off <= 3.0 * relative_error,
            "feature {position}: {estimate} for {truth} distinct values ({off:.4} off)"
        );
    }
}
