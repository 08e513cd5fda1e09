//! Read-modify-write updates of attribute records: partial field updates, windowed aggregates
//! (count, sum, min, max, distinct count over tumbling or sliding windows of event time) and the
//! applied offsets that make a redelivered event a no-op.
//!
//! Windows are in event time and aligned to the epoch. A window of `size` sliding by `slide`
//! (tumbling: `slide == size`) is kept as buckets of `slide`, each holding a partial aggregate.
//! An entity's current window is the one ending with the bucket of its newest event: the
//! feature's value aggregates the buckets of `[end - size, end)`. An event older than that is
//! late: it is counted, not applied. Values follow event time, not the wall clock: a quiet
//! entity keeps the aggregate of its last active window (a group's `max_age` expires it).
//!
//! The buckets live in the record's `state`, position by position with its values, and each
//! describes its own window, so any update can move every window of the record forward.
//!
//! A `distinct_count` keeps fixed-size state, so that a busy entity's record stays under its
//! group's size limit (module `distinct`): each bucket holds the 64-bit hashes of its distinct
//! values while the window holds at most `max(64, 3 * 2^p / 32)` hashes, and the count is then
//! exact; past that, a bucket receiving a new value becomes a HyperLogLog sketch of `2^p`
//! registers and the count is estimated, with a relative standard error of `1.04 / sqrt(2^p)`.
//! The precision `p` falls with the window's number of buckets so that the feature's state stays
//! within 2 KiB ([`cellar_spec::aggregate`]): 11 for a tumbling window (2.3%), 8 for 5 to 8
//! buckets (6.5%), 6 from 15 buckets on (13%).

use cellar_spec::aggregate::{distinct_count_exact_limit, distinct_count_precision};
use cellar_spec::{AggregateFunction, Value};
use cellar_store::Record;

use crate::distinct::{self, Distinct};

/// One windowed aggregate of a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub function: AggregateFunction,
    /// Window length, milliseconds.
    pub size_ms: i64,
    /// Bucket length and step, milliseconds; equal to `size_ms` for tumbling windows.
    pub slide_ms: i64,
    /// Whether the feature is float64 (sums, minima and maxima of int64 features stay int64).
    pub float: bool,
}

/// A value folded into the aggregate at a feature position.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    pub position: usize,
    pub window: WindowSpec,
    /// The value aggregated; null for `count`, or when the event has none (then only `count`
    /// changes).
    pub input: Value,
}

/// What one event changes in one attribute record.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub event_time: i64,
    /// The event's source, for effectively-once: a stable id of (ingestion, topic, partition)
    /// and the event's offset there.
    pub origin: Option<(u64, u64)>,
    /// Values replacing the stored ones, by feature position, unless the record is newer.
    pub fields: Vec<(usize, Value)>,
    pub folds: Vec<Fold>,
}

/// What applying an update did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    /// The record already held a newer event: the update's fields were not applied.
    pub stale: bool,
    /// The event was applied before (redelivered): nothing changed.
    pub duplicate: bool,
    /// Folds older than their window, not applied.
    pub late: u32,
}

/// A stable id of the place an ingestion reads events from (FNV-1a of ingestion, topic and
/// partition), recorded with the last offset applied from it.
pub fn origin_id(ingestion: &str, topic: &str, partition: i32) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(ingestion.as_bytes());
    eat(&[0]);
    eat(topic.as_bytes());
    eat(&[0]);
    eat(&partition.to_le_bytes());
    hash
}

/// Whether `record` already holds `update`: its source's offset is at or past the update's.
pub fn redelivered(record: &Record, update: &Update) -> bool {
    update.origin.is_some_and(|(source, offset)| {
        record
            .applied_offset(source)
            .is_some_and(|done| done >= offset)
    })
}

/// Applies `update` to `record` (the stored one, or a new one of `width` null values).
/// Returns the effect; `record` is unchanged when the update is a duplicate.
pub fn apply(record: &mut Option<Record>, width: usize, update: &Update) -> Effect {
    let mut effect = Effect::default();
    let rec =
        record.get_or_insert_with(|| Record::new(update.event_time, vec![Value::Null; width]));
    if redelivered(rec, update) {
        effect.duplicate = true;
        return effect;
    }
    if let Some((source, offset)) = update.origin {
        rec.set_applied_offset(source, offset);
    }
    if rec.values.len() < width {
        rec.values.resize(width, Value::Null);
    }
    if update.event_time >= rec.event_time {
        for (position, value) in &update.fields {
            if let Some(slot) = rec.values.get_mut(*position) {
                *slot = value.clone();
            }
        }
    } else if !update.fields.is_empty() {
        effect.stale = true;
    }
    let newest = rec.event_time.max(update.event_time);
    let advanced = newest != rec.event_time;
    rec.event_time = newest;
    if rec.state.len() < width {
        rec.state.resize(width, Value::Null);
    }
    for fold in &update.folds {
        let Some(slot) = rec.state.get_mut(fold.position) else {
            continue;
        };
        let mut state = WindowState::decode(slot, fold.window);
        if !state.add(newest, update.event_time, &fold.input) {
            effect.late += 1;
        }
        *slot = state.encode();
    }
    // Every window of the record ends with its newest event: move them all, folded or not.
    for position in 0..rec.state.len() {
        if rec.state[position] == Value::Null {
            continue;
        }
        let touched = update.folds.iter().any(|f| f.position == position);
        if !(advanced || touched) {
            continue;
        }
        if let Some(window) = WindowState::spec_of(&rec.state[position]) {
            let mut state = WindowState::decode(&rec.state[position], window);
            state.advance(newest);
            // A stored record is not trusted to hold as many values as states.
            if let Some(value) = rec.values.get_mut(position) {
                *value = state.value();
            }
            rec.state[position] = state.encode();
        }
    }
    while rec.state.last() == Some(&Value::Null) {
        rec.state.pop();
    }
    effect
}

/// The buckets of one feature's window.
#[derive(Debug, Clone, PartialEq)]
struct WindowState {
    spec: WindowSpec,
    /// (bucket start, partial aggregate), oldest first.
    buckets: Vec<(i64, Value)>,
}

fn function_tag(f: AggregateFunction) -> i64 {
    match f {
        AggregateFunction::Count => 0,
        AggregateFunction::Sum => 1,
        AggregateFunction::Min => 2,
        AggregateFunction::Max => 3,
        AggregateFunction::DistinctCount => 4,
    }
}

fn function_of_tag(tag: i64) -> Option<AggregateFunction> {
    Some(match tag {
        0 => AggregateFunction::Count,
        1 => AggregateFunction::Sum,
        2 => AggregateFunction::Min,
        3 => AggregateFunction::Max,
        4 => AggregateFunction::DistinctCount,
        _ => return None,
    })
}

impl WindowState {
    /// The window a stored state describes: `[size, slide, function, float, buckets...]`.
    fn spec_of(stored: &Value) -> Option<WindowSpec> {
        let Value::List(items) = stored else {
            return None;
        };
        match items.get(..4)? {
            [Value::Int64(size), Value::Int64(slide), Value::Int64(tag), Value::Bool(float)]
                if *size > 0 && *slide > 0 =>
            {
                Some(WindowSpec {
                    function: function_of_tag(*tag)?,
                    size_ms: *size,
                    slide_ms: *slide,
                    float: *float,
                })
            }
            _ => None,
        }
    }

    /// The state stored for `spec`; empty when there is none, or when the stored one was kept
    /// for another window (the spec changed: the aggregate starts again).
    fn decode(stored: &Value, spec: WindowSpec) -> WindowState {
        let mut state = WindowState {
            spec,
            buckets: Vec::new(),
        };
        if Self::spec_of(stored) != Some(spec) {
            return state;
        }
        if let Value::List(items) = stored {
            for bucket in &items[4..] {
                if let Value::List(pair) = bucket {
                    if let [Value::Int64(start), partial] = pair.as_slice() {
                        state.buckets.push((*start, partial.clone()));
                    }
                }
            }
        }
        if spec.function == AggregateFunction::DistinctCount {
            state.settle_distinct();
        }
        state
    }

    /// Buckets per window.
    fn bucket_count(&self) -> u64 {
        (self.spec.size_ms / self.spec.slide_ms).max(1) as u64
    }

    fn precision(&self) -> u8 {
        distinct_count_precision(self.bucket_count())
    }

    /// Hashes the exact buckets of a distinct count may hold together.
    fn exact_limit(&self) -> usize {
        distinct_count_exact_limit(self.precision())
    }

    /// Reads buckets stored as sets of values (before sketches) as hashes, and turns the
    /// largest exact buckets into sketches while the window holds more hashes than it may.
    fn settle_distinct(&mut self) {
        for (_, partial) in &mut self.buckets {
            if matches!(partial, Value::Set(_)) {
                *partial = Distinct::decode(partial).encode();
            }
        }
        let (limit, precision) = (self.exact_limit(), self.precision());
        loop {
            let held = |p: &Value| Distinct::stored_hashes(p);
            let total: usize = self.buckets.iter().map(|(_, p)| held(p)).sum();
            if total <= limit {
                return;
            }
            let Some((_, largest)) = self.buckets.iter_mut().max_by_key(|(_, p)| held(p)) else {
                return;
            };
            *largest = Distinct::decode(largest).into_sketch(precision).encode();
        }
    }

    fn encode(self) -> Value {
        let mut items = Vec::with_capacity(4 + self.buckets.len());
        items.push(Value::Int64(self.spec.size_ms));
        items.push(Value::Int64(self.spec.slide_ms));
        items.push(Value::Int64(function_tag(self.spec.function)));
        items.push(Value::Bool(self.spec.float));
        for (start, partial) in self.buckets {
            items.push(Value::List(vec![Value::Int64(start), partial]));
        }
        Value::List(items)
    }

    // Event times are bounded where they enter, far from the integer limits; the arithmetic
    // saturates all the same, so a stored record from before those bounds cannot wrap a
    // window around (a wrapped start would let every old bucket back in).
    fn bucket_of(&self, t: i64) -> i64 {
        t.div_euclid(self.spec.slide_ms)
            .saturating_mul(self.spec.slide_ms)
    }

    /// The oldest event time inside the window ending with `newest`'s bucket.
    fn window_start(&self, newest: i64) -> i64 {
        self.bucket_of(newest)
            .saturating_add(self.spec.slide_ms)
            .saturating_sub(self.spec.size_ms)
    }

    /// Drops the buckets that left the window ending with `newest`'s bucket.
    fn advance(&mut self, newest: i64) {
        let start = self.window_start(newest);
        self.buckets.retain(|(b, _)| *b >= start);
    }

    /// Folds one event in; false when it is late (older than the window).
    fn add(&mut self, newest: i64, event_time: i64, input: &Value) -> bool {
        if event_time < self.window_start(newest) {
            return false;
        }
        let f = self.spec.function;
        if f != AggregateFunction::Count && *input == Value::Null {
            return true;
        }
        let start = self.bucket_of(event_time);
        let at = match self.buckets.binary_search_by_key(&start, |(b, _)| *b) {
            Ok(at) => at,
            Err(at) => {
                self.buckets.insert(at, (start, Value::Null));
                at
            }
        };
        if f == AggregateFunction::DistinctCount {
            // The hashes this bucket may hold: the window's limit less the other buckets'.
            let others: usize = (self.buckets.iter().enumerate())
                .filter(|(i, _)| *i != at)
                .map(|(_, (_, p))| Distinct::stored_hashes(p))
                .sum();
            let room = self.exact_limit().saturating_sub(others);
            let precision = self.precision();
            let partial = &mut self.buckets[at].1;
            let mut seen = Distinct::decode(partial);
            seen.insert(distinct::hash(input), room, precision);
            *partial = seen.encode();
            return true;
        }
        let partial = &mut self.buckets[at].1;
        *partial = match (f, std::mem::replace(partial, Value::Null)) {
            (AggregateFunction::Count, Value::Int64(n)) => Value::Int64(n.saturating_add(1)),
            (AggregateFunction::Count, _) => Value::Int64(1),
            (AggregateFunction::Sum, acc) => add(acc, input.clone()),
            (AggregateFunction::Min, acc) => pick(acc, input.clone(), std::cmp::Ordering::Less),
            (AggregateFunction::Max, acc) => pick(acc, input.clone(), std::cmp::Ordering::Greater),
            // Folded above.
            (AggregateFunction::DistinctCount, acc) => acc,
        };
        true
    }

    /// The feature's value: the buckets folded together.
    fn value(&self) -> Value {
        let partials = self.buckets.iter().map(|(_, p)| p.clone());
        match self.spec.function {
            AggregateFunction::Count => Value::Int64(
                partials
                    .map(|p| if let Value::Int64(n) = p { n } else { 0 })
                    .fold(0i64, i64::saturating_add),
            ),
            AggregateFunction::Sum => {
                let zero = if self.spec.float {
                    Value::Float64(0.0)
                } else {
                    Value::Int64(0)
                };
                partials.fold(zero, add)
            }
            AggregateFunction::Min => {
                partials.fold(Value::Null, |a, p| pick(a, p, std::cmp::Ordering::Less))
            }
            AggregateFunction::Max => {
                partials.fold(Value::Null, |a, p| pick(a, p, std::cmp::Ordering::Greater))
            }
            AggregateFunction::DistinctCount => {
                let buckets: Vec<Distinct> = partials.map(|p| Distinct::decode(&p)).collect();
                Value::Int64(distinct::count(&buckets))
            }
        }
    }
}

fn add(acc: Value, v: Value) -> Value {
    match (acc, v) {
        (Value::Null, v) | (v, Value::Null) => v,
        (Value::Int64(a), Value::Int64(b)) => Value::Int64(a.saturating_add(b)),
        (Value::Float64(a), Value::Float64(b)) => Value::Float64(a + b),
        (Value::Float64(a), Value::Int64(b)) | (Value::Int64(b), Value::Float64(a)) => {
            Value::Float64(a + b as f64)
        }
        (acc, _) => acc,
    }
}

/// The one of `acc` and `v` that orders `keep` against the other (the smaller for min).
fn pick(acc: Value, v: Value, keep: std::cmp::Ordering) -> Value {
    match (&acc, &v) {
        (Value::Null, _) => v,
        (_, Value::Null) => acc,
        _ if compare(&v, &acc) == keep => v,
        _ => acc,
    }
}

/// A total order over the scalar values minima and maxima see: numbers by value, others by
/// their encoding-independent debug text.
fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Int64(x), Value::Int64(y)) => x.cmp(y),
        (Value::Float64(x), Value::Float64(y)) => x.total_cmp(y),
        (Value::Int64(x), Value::Float64(y)) => (*x as f64).total_cmp(y),
        (Value::Float64(x), Value::Int64(y)) => x.total_cmp(&(*y as f64)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => format!("{a:?}").cmp(&format!("{b:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn window(function: AggregateFunction, size: i64, slide: i64) -> WindowSpec {
        WindowSpec {
            function,
            size_ms: size,
            slide_ms: slide,
            float: false,
        }
    }

    fn fold(position: usize, window: WindowSpec, input: Value) -> Fold {
        Fold {
            position,
            window,
            input,
        }
    }

    fn event(t: i64, offset: u64, folds: Vec<Fold>) -> Update {
        Update {
            event_time: t,
            origin: Some((7, offset)),
            fields: Vec::new(),
            folds,
        }
    }

    #[test]
    fn tumbling_count_restarts_with_each_window_and_counts_late_events() {
        let w = window(AggregateFunction::Count, 10 * MIN, 10 * MIN);
        let mut rec = None;
        for (i, t) in [MIN, 2 * MIN, 9 * MIN].into_iter().enumerate() {
            apply(
                &mut rec,
                1,
                &event(t, i as u64, vec![fold(0, w, Value::Null)]),
            );
        }
        assert_eq!(rec.as_ref().unwrap().values, vec![Value::Int64(3)]);
        // The next window starts empty.
        apply(
            &mut rec,
            1,
            &event(12 * MIN, 3, vec![fold(0, w, Value::Null)]),
        );
        assert_eq!(rec.as_ref().unwrap().values, vec![Value::Int64(1)]);
        // An event of the closed window is late.
        let effect = apply(
            &mut rec,
            1,
            &event(5 * MIN, 4, vec![fold(0, w, Value::Null)]),
        );
        assert_eq!(effect.late, 1);
        assert_eq!(rec.as_ref().unwrap().values, vec![Value::Int64(1)]);
        assert_eq!(rec.as_ref().unwrap().event_time, 12 * MIN);
    }

    #[test]
    fn windows_at_the_ends_of_time_do_not_wrap_around() {
        let w = window(AggregateFunction::Count, 10 * MIN, 10 * MIN);
        let mut rec = None;
        apply(&mut rec, 1, &event(MIN, 0, vec![fold(0, w, Value::Null)]));
        // An event at the last representable instant: its window holds it alone.
        apply(
            &mut rec,
            1,
            &event(i64::MAX, 1, vec![fold(0, w, Value::Null)]),
        );
        assert_eq!(rec.as_ref().unwrap().values, vec![Value::Int64(1)]);
        let effect = apply(&mut rec, 1, &event(MIN, 2, vec![fold(0, w, Value::Null)]));
        assert_eq!(effect.late, 1);
        assert_eq!(rec.as_ref().unwrap().values, vec![Value::Int64(1)]);

        let mut rec = None;
        for (i, t) in [i64::MIN, i64::MIN + 1].into_iter().enumerate() {
            apply(
                &mut rec,
                1,
                &event(t, i as u64, vec![fold(0, w, Value::Null)]),
            );
        }
        assert_eq!(rec.as_ref().unwrap().values, vec![Value::Int64(2)]);
    }

    #[test]
    fn sliding_windows_keep_the_last_size_of_buckets() {
        let sum = window(AggregateFunction::Sum, 3 * MIN, MIN);
        let mut rec = None;
        for (i, minute) in [0, 1, 2, 3, 3].into_iter().enumerate() {
            let t = minute * MIN + 30_000;
            let update = event(t, i as u64, vec![fold(0, sum, Value::Int64(minute + 1))]);
            apply(&mut rec, 1, &update);
        }
        // Window [1m, 4m): 2 + 3 + 4 + 4.
        assert_eq!(rec.as_ref().unwrap().values, vec![Value::Int64(13)]);
        // An event in minute 1 still counts; one in minute 0 is late.
        let effect = apply(
            &mut rec,
            1,
            &event(MIN, 10, vec![fold(0, sum, Value::Int64(100))]),
        );
        assert_eq!(effect.late, 0);
        let effect = apply(
            &mut rec,
            1,
            &event(59_999, 11, vec![fold(0, sum, Value::Int64(1))]),
        );
        assert_eq!(effect.late, 1);
        assert_eq!(rec.as_ref().unwrap().values, vec![Value::Int64(113)]);
    }

    #[test]
    fn min_max_and_distinct_count() {
        let min = window(AggregateFunction::Min, 10 * MIN, 10 * MIN);
        let max = WindowSpec {
            float: true,
            ..window(AggregateFunction::Max, 10 * MIN, 10 * MIN)
        };
        let distinct = window(AggregateFunction::DistinctCount, 10 * MIN, 10 * MIN);
        let mut rec = None;
        let inputs = [(5, 2.5, "a"), (3, 1.0, "b"), (9, 7.25, "a"), (4, 0.5, "c")];
        for (i, (n, x, s)) in inputs.into_iter().enumerate() {
            let update = event(
                i as i64 * 1000,
                i as u64,
                vec![
                    fold(0, min, Value::Int64(n)),
                    fold(1, max, Value::Float64(x)),
                    fold(2, distinct, Value::String(s.into())),
                ],
            );
            apply(&mut rec, 3, &update);
        }
        assert_eq!(
            rec.unwrap().values,
            vec![Value::Int64(3), Value::Float64(7.25), Value::Int64(3)]
        );
    }

    fn distinct_value(i: usize) -> Value {
        Value::String(format!("article-{i}"))
    }

    /// Folds `values` into the distinct count at position 0, one event each at `t`.
    fn add_distinct(
        rec: &mut Option<Record>,
        w: WindowSpec,
        t: i64,
        values: impl Iterator<Item = Value>,
    ) {
        for input in values {
            let update = Update {
                event_time: t,
                origin: None,
                fields: Vec::new(),
                folds: vec![fold(0, w, input)],
            };
            apply(rec, 1, &update);
        }
    }

    fn count_of(rec: &Option<Record>) -> i64 {
        match rec.as_ref().map(|r| &r.values[0]) {
            Some(Value::Int64(n)) => *n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn distinct_counts_are_exact_below_the_threshold_and_ignore_repeats() {
        let w = window(AggregateFunction::DistinctCount, 10 * MIN, 10 * MIN);
        let limit = distinct_count_exact_limit(distinct_count_precision(1));
        assert_eq!(limit, 192);
        let mut rec = None;
        for n in 1..=limit {
            add_distinct(
                &mut rec,
                w,
                MIN,
                [n - 1, 0, n / 2].into_iter().map(distinct_value),
            );
            assert_eq!(count_of(&rec), n as i64);
        }
        // Past the threshold the count is an estimate; repeats still change nothing.
        add_distinct(&mut rec, w, MIN, (limit..1000).map(distinct_value));
        let estimate = count_of(&rec);
        assert!((estimate - 1000).abs() <= 70, "{estimate}");
        let state = rec.as_ref().unwrap().state.clone();
        add_distinct(&mut rec, w, MIN, (0..1000).map(distinct_value));
        assert_eq!(count_of(&rec), estimate);
        assert_eq!(rec.unwrap().state, state);
    }

    #[test]
    fn sliding_distinct_counts_drop_the_buckets_that_leave_the_window() {
        // Three buckets: precision 9, 64 hashes exactly.
        let w = window(AggregateFunction::DistinctCount, 3 * MIN, MIN);
        let mut rec = None;
        add_distinct(&mut rec, w, 0, (0..30).map(distinct_value));
        add_distinct(&mut rec, w, MIN, (20..50).map(distinct_value));
        assert_eq!(count_of(&rec), 50);
        // The window holds 60 hashes: the third bucket becomes a sketch at its fifth value.
        add_distinct(&mut rec, w, 2 * MIN, (100..5100).map(distinct_value));
        let error = 1.04 / 512f64.sqrt();
        let near = |truth: f64, rec: &Option<Record>| {
            let estimate = count_of(rec) as f64;
            assert!(
                (estimate - truth).abs() <= 3.0 * error * truth,
                "{estimate} for {truth}"
            );
        };
        near(5050.0, &rec);
        // Minute 0 leaves the window; minute 1 stays exact, minute 2 a sketch.
        add_distinct(&mut rec, w, 3 * MIN, (0..5).map(distinct_value));
        near(5035.0, &rec);
        // Once the sketch's bucket has left too, the count is exact again.
        add_distinct(&mut rec, w, 5 * MIN, (7..9).map(distinct_value));
        assert_eq!(count_of(&rec), 7);
        // An event without a value is not counted, but moves the window on.
        apply(
            &mut rec,
            1,
            &event(6 * MIN, 99, vec![fold(0, w, Value::Null)]),
        );
        assert_eq!(count_of(&rec), 2);
    }

    #[test]
    fn distinct_counts_stored_as_sets_of_values_read_as_hashes() {
        let w = window(AggregateFunction::DistinctCount, 10 * MIN, 10 * MIN);
        // A record as stored before sketches: each bucket a set of the values themselves.
        let stored = |values: Vec<Value>| {
            let mut rec = Record::new(MIN, vec![Value::Int64(values.len() as i64)]);
            rec.state = vec![Value::List(vec![
                Value::Int64(10 * MIN),
                Value::Int64(10 * MIN),
                Value::Int64(4),
                Value::Bool(false),
                Value::List(vec![Value::Int64(0), Value::Set(values)]),
            ])];
            Some(rec)
        };
        let mut rec = stored(vec![distinct_value(1), distinct_value(2)]);
        add_distinct(&mut rec, w, 2 * MIN, [2, 3].into_iter().map(distinct_value));
        assert_eq!(count_of(&rec), 3);
        // More values than the exact threshold: the count becomes an estimate, not lost.
        let mut rec = stored((0..1500).map(distinct_value).collect());
        add_distinct(&mut rec, w, 2 * MIN, [1500].into_iter().map(distinct_value));
        let estimate = count_of(&rec);
        assert!((estimate - 1501).abs() <= 100, "{estimate}");
        let Value::List(items) = &rec.unwrap().state[0] else {
            panic!()
        };
        assert!(matches!(&items[4], Value::List(pair) if matches!(pair[1], Value::Bytes(_))));
    }

    #[test]
    fn stored_states_stay_within_the_sizes_specs_are_checked_against() {
        use cellar_spec::aggregate::worst_state_bytes;
        let size_of = |rec: &Record| {
            let mut bare = rec.clone();
            bare.values.clear();
            bare.state.clear();
            cellar_store::codec::encoded_len(rec) - cellar_store::codec::encoded_len(&bare)
        };
        // An event time far from the epoch, for the longest bucket starts.
        let base = 4_102_444_800_000;
        for (function, input) in [
            (AggregateFunction::Count, Value::Null),
            (AggregateFunction::Sum, Value::Int64(i64::MAX / 4)),
            (AggregateFunction::Max, Value::Int64(i64::MIN)),
        ] {
            let w = window(function, 12 * MIN, MIN);
            let mut rec = None;
            for b in 0..12 {
                for offset in 0..4 {
                    let t = base + b * MIN;
                    let update = event(t, (b * 4 + offset) as u64, vec![fold(0, w, input.clone())]);
                    apply(&mut rec, 1, &update);
                }
            }
            let rec = rec.unwrap();
            assert!(
                size_of(&rec) <= worst_state_bytes(function, 12),
                "{function:?}"
            );
        }
        for buckets in [1, 2, 3, 5, 9, 15, 30] {
            let w = window(AggregateFunction::DistinctCount, buckets * MIN, MIN);
            let bound = worst_state_bytes(AggregateFunction::DistinctCount, buckets as u64);
            let mut rec = None;
            let mut largest = 0;
            // Every bucket fills up, a few values at a time.
            for round in 0..40 {
                for b in 0..buckets {
                    let first = (round * buckets + b) as usize * 50;
                    add_distinct(
                        &mut rec,
                        w,
                        base + b * MIN,
                        (first..first + 50).map(distinct_value),
                    );
                    largest = largest.max(size_of(rec.as_ref().unwrap()));
                }
            }
            assert!(largest <= bound, "{buckets} buckets: {largest} > {bound}");
        }
    }

    #[test]
    fn a_redelivered_event_changes_nothing() {
        let w = window(AggregateFunction::Count, 10 * MIN, MIN);
        let mut rec = None;
        for offset in [0, 1, 2] {
            apply(
                &mut rec,
                1,
                &event(offset as i64, offset, vec![fold(0, w, Value::Null)]),
            );
        }
        let before = rec.clone();
        let effect = apply(&mut rec, 1, &event(1, 1, vec![fold(0, w, Value::Null)]));
        assert!(effect.duplicate);
        assert_eq!(rec, before);
        // Another source's offsets are its own.
        let mut other = event(1, 1, vec![fold(0, w, Value::Null)]);
        other.origin = Some((8, 1));
        assert!(!apply(&mut rec, 1, &other).duplicate);
        assert_eq!(rec.unwrap().values, vec![Value::Int64(4)]);
    }

    #[test]
    fn a_newer_event_moves_every_window_of_the_record() {
        let clicks = window(AggregateFunction::Count, 10 * MIN, 10 * MIN);
        let mut rec = None;
        apply(
            &mut rec,
            2,
            &event(MIN, 0, vec![fold(0, clicks, Value::Null)]),
        );
        // A field update 15 minutes later: the clicks window moved on, so it counts 0.
        let update = Update {
            event_time: 15 * MIN,
            origin: None,
            fields: vec![(1, Value::String("KR".into()))],
            folds: Vec::new(),
        };
        apply(&mut rec, 2, &update);
        assert_eq!(
            rec.as_ref().unwrap().values,
            vec![Value::Int64(0), Value::String("KR".into())]
        );
        // An older field update is stale; the newer value stays.
        let mut old = update.clone();
        old.event_time = 2 * MIN;
        old.fields = vec![(1, Value::String("US".into()))];
        assert!(apply(&mut rec, 2, &old).stale);
        assert_eq!(rec.unwrap().values[1], Value::String("KR".into()));
    }

    #[test]
    fn origin_ids_differ_by_ingestion_topic_and_partition() {
        let ids = [
            origin_id("a", "t", 0),
            origin_id("a", "t", 1),
            origin_id("a", "u", 0),
            origin_id("b", "t", 0),
            origin_id("at", "", 0),
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(origin_id("a", "t", 0), origin_id("a", "t", 0));
    }
}
