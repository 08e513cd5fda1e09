//! How windowed aggregates are kept in an attribute record, and the worst-case size of that
//! state, which specs are checked against before any record is written.
//!
//! A window of `size` sliding by `slide` (tumbling: `slide == size`) keeps `size / slide`
//! buckets, each holding a partial aggregate. A `distinct_count` bucket holds the 64-bit hashes
//! of its distinct values while the whole window holds at most
//! [`distinct_count_exact_limit`] of them (the count is then exact), and otherwise a
//! HyperLogLog sketch of `2^p` six-bit registers. The precision `p` is the highest, from
//! [`MIN_PRECISION`] to [`MAX_PRECISION`], that keeps the feature's state within
//! [`DISTINCT_COUNT_BUDGET_BYTES`]; its relative standard error is `1.04 / sqrt(2^p)`.
//!
//! | buckets | p | registers | standard error | exact up to |
//! |---|---|---|---|---|
//! | 1 | 11 | 2048 | 2.3% | 192 |
//! | 2 | 10 | 1024 | 3.3% | 96 |
//! | 3-4 | 9 | 512 | 4.6% | 64 |
//! | 5-8 | 8 | 256 | 6.5% | 64 |
//! | 9-14 | 7 | 128 | 9.2% | 64 |
//! | 15 or more | 6 | 64 | 13% | 64 |
//!
//! Past 25 buckets even precision 6 exceeds the budget: the state grows by 62 bytes a bucket,
//! and the group's record limit bounds the number of buckets.
//!
//! Sizes are those of the store's record encoding (a tag byte per value, LEB128 varints,
//! zigzag for signed integers); the stream aggregator's tests hold its encoded states to them.

use std::time::Duration;

use crate::limits::MAX_DURATION;
use crate::model::AggregateFunction;

/// Most buckets a sliding window keeps per entity.
pub const MAX_SLIDES_PER_WINDOW: u64 = 4096;

/// Largest state a `distinct_count` feature should keep, when its number of buckets allows a
/// precision of at least [`MIN_PRECISION`].
pub const DISTINCT_COUNT_BUDGET_BYTES: usize = 2048;

/// Lowest sketch precision: 64 registers, a standard error of 13%. Coarser sketches are too
/// rough to be worth serving; a window needing them is refused when it cannot fit its group's
/// records instead.
pub const MIN_PRECISION: u8 = 6;

/// Highest sketch precision: 2048 registers, a standard error of 2.3%, 1.5 KiB.
pub const MAX_PRECISION: u8 = 11;

/// A window's distinct values are counted exactly up to at least this many hashes (summed over
/// its buckets).
pub const MIN_EXACT_HASHES: usize = 64;

/// A signed varint payload of an event time or duration: both stay within 2^48 milliseconds
/// of the epoch (years 1 to 8900), so their zigzag form fits 49 bits, 7 bytes.
const TIME_VARINT_BYTES: usize = 7;
/// An int64 value: tag and up to 10 bytes of varint.
const INT_VALUE_BYTES: usize = 11;
/// A bucket's `[start, partial]` pair without its partial: list tag, count, start.
const BUCKET_OVERHEAD_BYTES: usize = 1 + 1 + 1 + TIME_VARINT_BYTES;

/// How many buckets a window of `size` sliding by `slide` keeps (1 when it tumbles).
pub fn buckets(size: Duration, slide: Option<Duration>) -> u64 {
    match slide {
        Some(slide) if !slide.is_zero() => (size.as_millis() / slide.as_millis()).max(1) as u64,
        _ => 1,
    }
}

/// Bytes of a sketch's registers at `precision`: six bits each.
pub fn register_bytes(precision: u8) -> usize {
    (3usize << precision) / 4
}

/// How many hashes a window of sketches at `precision` keeps exactly: as many as fit in one
/// sketch's registers, and at least [`MIN_EXACT_HASHES`].
pub fn distinct_count_exact_limit(precision: u8) -> usize {
    MIN_EXACT_HASHES.max(register_bytes(precision) / 8)
}

/// The sketch precision of a `distinct_count` over `buckets` buckets.
pub fn distinct_count_precision(buckets: u64) -> u8 {
    (MIN_PRECISION..=MAX_PRECISION)
        .rev()
        .find(|&p| distinct_count_bytes(buckets, p) <= DISTINCT_COUNT_BUDGET_BYTES)
        .unwrap_or(MIN_PRECISION)
}

/// The largest encoded state (and value) of one aggregate feature over `buckets` buckets.
pub fn worst_state_bytes(function: AggregateFunction, buckets: u64) -> usize {
    match function {
        AggregateFunction::DistinctCount => {
            distinct_count_bytes(buckets, distinct_count_precision(buckets))
        }
        // Counts, sums, minima and maxima are one int64 or float64 a bucket.
        _ => fixed_bytes(buckets) + buckets as usize * (BUCKET_OVERHEAD_BYTES + INT_VALUE_BYTES),
    }
}

/// The state's `[size, slide, function, float, buckets...]` header and the feature's value.
fn fixed_bytes(buckets: u64) -> usize {
    let header = 1
        + varint_len(4 + buckets)
        + 2 * (1 + duration_varint_bytes())
        + 2 // function tag
        + 1; // float flag
    header + INT_VALUE_BYTES
}

fn duration_varint_bytes() -> usize {
    varint_len((MAX_DURATION.as_millis() as u64) << 1)
}

/// A distinct count's state at `precision`: its exact hashes (8 bytes each) sum to at most one
/// sketch's registers' worth over the window, so the largest state has every bucket but one
/// as a sketch and the last holding all the hashes (or a sketch too).
fn distinct_count_bytes(buckets: u64, precision: u8) -> usize {
    let n = buckets.max(1) as usize;
    let registers = register_bytes(precision);
    let exact = 8 * distinct_count_exact_limit(precision);
    let payload = registers.max(exact);
    // Bytes tag, length, and the byte telling hashes from registers.
    let partial_overhead = 1 + varint_len(1 + payload as u64) + 1;
    fixed_bytes(buckets)
        + n * (BUCKET_OVERHEAD_BYTES + partial_overhead)
        + (n - 1) * registers
        + payload
}

fn varint_len(v: u64) -> usize {
    (64 - v.leading_zeros() as usize).div_ceil(7).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_falls_with_the_number_of_buckets_within_the_budget() {
        let table: Vec<(u64, u8)> = [1, 2, 3, 4, 5, 8, 9, 14, 15, 25, 26, 60, 4096]
            .into_iter()
            .map(|n| (n, distinct_count_precision(n)))
            .collect();
        assert_eq!(
            table,
            vec![
                (1, 11),
                (2, 10),
                (3, 9),
                (4, 9),
                (5, 8),
                (8, 8),
                (9, 7),
                (14, 7),
                (15, 6),
                (25, 6),
                (26, 6),
                (60, 6),
                (4096, 6)
            ]
        );
        for n in 1..=25 {
            let bytes = worst_state_bytes(AggregateFunction::DistinctCount, n);
            assert!(bytes <= DISTINCT_COUNT_BUDGET_BYTES, "{n}: {bytes}");
        }
        assert!(worst_state_bytes(AggregateFunction::DistinctCount, 26) > 2048);
        assert_eq!(distinct_count_exact_limit(11), 192);
        assert_eq!(distinct_count_exact_limit(10), 96);
        assert_eq!(distinct_count_exact_limit(6), 64);
    }

    #[test]
    fn buckets_of_tumbling_and_sliding_windows() {
        let min = Duration::from_secs(60);
        assert_eq!(buckets(60 * min, None), 1);
        assert_eq!(buckets(60 * min, Some(60 * min)), 1);
        assert_eq!(buckets(60 * min, Some(5 * min)), 12);
        // A count is 21 bytes a bucket at most.
        assert_eq!(
            worst_state_bytes(AggregateFunction::Count, 12)
                - worst_state_bytes(AggregateFunction::Count, 11),
            21
        );
    }
}
