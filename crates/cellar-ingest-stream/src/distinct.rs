//! The distinct values of one window bucket, in bounded space: their 64-bit hashes while the
//! window holds few, a HyperLogLog sketch after.
//!
//! A value is known by the XXH3-64 hash of a canonical encoding of it (numbers by value, so
//! int64 1 and float64 1.0 are one value; -0.0 is 0; every NaN is one value). XXH3's output is
//! fixed by its specification: the same on every platform, process and version, so hashes
//! stored by one build are understood by the next.
//!
//! A sketch of precision `p` has `m = 2^p` registers; a hash goes to the register named by its
//! top `p` bits, which keeps the largest rank (position of the first 1 bit) of the remaining
//! bits it has seen. The count of a union of buckets is the register-wise maximum of their
//! sketches (exact buckets' hashes are added to it), estimated by the HyperLogLog formula
//! `alpha_m * m^2 / sum(2^-register)`, or by linear counting `m * ln(m / empty registers)` when
//! that is at most `2.5 m` and some register is empty. With 64-bit hashes no large-range
//! correction is needed. The relative standard error is `1.04 / sqrt(m)`; the precision of a
//! window and its exact threshold are chosen in [`cellar_spec::aggregate`].
//!
//! Stored as `Value::Bytes`: a first byte 0 followed by the hashes (8 bytes little endian each,
//! ascending), or a first byte `p` followed by the `2^p` six-bit registers packed four to three
//! bytes. A bucket stored before sketches existed (a `Value::Set` of the values themselves) is
//! read as the hashes of its values.

use cellar_spec::aggregate::register_bytes;
use cellar_spec::Value;
use xxhash_rust::xxh3::xxh3_64;

/// Stored first byte of a bucket holding hashes.
const EXACT: u8 = 0;
/// Precisions a stored sketch may have: below 4, the estimate's constants are undefined; 16
/// is far beyond any window's budget.
const PRECISIONS: std::ops::RangeInclusive<u8> = 4..=16;

/// One bucket's distinct values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Distinct {
    /// The hashes of the values, ascending, without repeats.
    Exact(Vec<u64>),
    Sketch(Sketch),
}

/// HyperLogLog registers, six bits each, packed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sketch {
    precision: u8,
    packed: Vec<u8>,
}

/// The hash a distinct value is known by.
pub(crate) fn hash(value: &Value) -> u64 {
    let mut canonical = Vec::with_capacity(16);
    encode_canonical(value, &mut canonical);
    xxh3_64(&canonical)
}

/// A type tag and the value's content, lengths prefixed so that nested values cannot run into
/// each other.
fn encode_canonical(value: &Value, out: &mut Vec<u8>) {
    let prefixed = |out: &mut Vec<u8>, tag: u8, bytes: &[u8]| {
        out.push(tag);
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    match value {
        Value::Null => out.push(0),
        Value::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
        Value::Int64(n) => int(*n, out),
        // A whole float is the integer it equals (2^63 is not an i64, so the bound is strict).
        Value::Float64(x) if x.fract() == 0.0 && x.abs() < 9_223_372_036_854_775_808.0 => {
            int(*x as i64, out)
        }
        Value::Float64(x) => {
            let bits = if x.is_nan() {
                f64::NAN.to_bits()
            } else {
                x.to_bits()
            };
            out.push(3);
            out.extend_from_slice(&bits.to_le_bytes());
        }
        Value::String(s) => prefixed(out, 4, s.as_bytes()),
        Value::Bytes(b) => prefixed(out, 5, b),
        Value::Timestamp(t) => {
            out.push(6);
            out.extend_from_slice(&t.to_le_bytes());
        }
        Value::List(items) | Value::Set(items) => {
            out.push(if matches!(value, Value::List(_)) {
                7
            } else {
                8
            });
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                encode_canonical(item, out);
            }
        }
        Value::Map(entries) => {
            out.push(9);
            out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
            for (key, item) in entries {
                prefixed(out, 4, key.as_bytes());
                encode_canonical(item, out);
            }
        }
        Value::Vector(v) => {
            out.push(10);
            out.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for x in v {
                out.extend_from_slice(&x.to_bits().to_le_bytes());
            }
        }
    }
}

fn int(n: i64, out: &mut Vec<u8>) {
    out.push(2);
    out.extend_from_slice(&n.to_le_bytes());
}

impl Distinct {
    /// A stored bucket; an empty one for null (a new bucket) or bytes in no known layout.
    pub(crate) fn decode(stored: &Value) -> Distinct {
        match stored {
            Value::Bytes(bytes) => match bytes.split_first() {
                Some((&EXACT, hashes)) if hashes.len() % 8 == 0 => {
                    let mut hashes: Vec<u64> = hashes
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect();
                    // Stored by this module ascending; not trusted to be.
                    hashes.sort_unstable();
                    hashes.dedup();
                    Distinct::Exact(hashes)
                }
                Some((&precision, packed))
                    if PRECISIONS.contains(&precision)
                        && packed.len() == register_bytes(precision) =>
                {
                    Distinct::Sketch(Sketch {
                        precision,
                        packed: packed.to_vec(),
                    })
                }
                _ => Distinct::Exact(Vec::new()),
            },
            Value::Set(values) => {
                let mut hashes: Vec<u64> = values.iter().map(hash).collect();
                hashes.sort_unstable();
                hashes.dedup();
                Distinct::Exact(hashes)
            }
            _ => Distinct::Exact(Vec::new()),
        }
    }

    pub(crate) fn encode(&self) -> Value {
        let mut bytes;
        match self {
            Distinct::Exact(hashes) => {
                bytes = Vec::with_capacity(1 + 8 * hashes.len());
                bytes.push(EXACT);
                for h in hashes {
                    bytes.extend_from_slice(&h.to_le_bytes());
                }
            }
            Distinct::Sketch(sketch) => {
                bytes = Vec::with_capacity(1 + sketch.packed.len());
                bytes.push(sketch.precision);
                bytes.extend_from_slice(&sketch.packed);
            }
        }
        Value::Bytes(bytes)
    }

    /// How many hashes a stored bucket holds, without decoding it (for a bucket stored as a
    /// set of values, how many values).
    pub(crate) fn stored_hashes(stored: &Value) -> usize {
        match stored {
            Value::Bytes(bytes) if bytes.first() == Some(&EXACT) => (bytes.len() - 1) / 8,
            Value::Set(values) => values.len(),
            _ => 0,
        }
    }

    /// Adds a value's hash. A bucket of hashes that would hold more than `room` becomes a
    /// sketch of `precision`.
    pub(crate) fn insert(&mut self, hash: u64, room: usize, precision: u8) {
        match self {
            Distinct::Exact(hashes) => {
                if let Err(at) = hashes.binary_search(&hash) {
                    if hashes.len() < room {
                        hashes.insert(at, hash);
                    } else {
                        let mut sketch = Sketch::new(precision);
                        for h in hashes.iter().copied().chain([hash]) {
                            sketch.insert(h);
                        }
                        *self = Distinct::Sketch(sketch);
                    }
                }
            }
            Distinct::Sketch(sketch) => sketch.insert(hash),
        }
    }

    /// Turns a bucket of hashes into a sketch of `precision`.
    pub(crate) fn into_sketch(self, precision: u8) -> Distinct {
        match self {
            Distinct::Exact(hashes) => {
                let mut sketch = Sketch::new(precision);
                for h in hashes {
                    sketch.insert(h);
                }
                Distinct::Sketch(sketch)
            }
            sketch => sketch,
        }
    }
}

/// The number of distinct values of a union of buckets: exact when every bucket holds hashes,
/// estimated otherwise.
pub(crate) fn count(buckets: &[Distinct]) -> i64 {
    let precision = buckets
        .iter()
        .filter_map(|b| match b {
            Distinct::Sketch(s) => Some(s.precision),
            Distinct::Exact(_) => None,
        })
        .min();
    let Some(precision) = precision else {
        let mut all: Vec<u64> = buckets
            .iter()
            .flat_map(|b| match b {
                Distinct::Exact(hashes) => hashes.as_slice(),
                Distinct::Sketch(_) => &[],
            })
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        return all.len() as i64;
    };
    let mut registers = vec![0u8; 1 << precision];
    for bucket in buckets {
        match bucket {
            Distinct::Exact(hashes) => {
                for &h in hashes {
                    let (index, rank) = place(h, precision);
                    registers[index] = registers[index].max(rank);
                }
            }
            Distinct::Sketch(sketch) => sketch.fold_into(&mut registers, precision),
        }
    }
    estimate(&registers).round() as i64
}

/// The register a hash goes to at `precision`, and its rank there: one more than the number of
/// leading zeros of the bits below the index, at most `65 - precision`.
fn place(hash: u64, precision: u8) -> (usize, u8) {
    let index = (hash >> (64 - precision)) as usize;
    let rest = (hash << precision) | (1 << (precision - 1));
    (index, rest.leading_zeros() as u8 + 1)
}

/// The HyperLogLog estimate of a set of registers, with linear counting for small counts.
fn estimate(registers: &[u8]) -> f64 {
    let m = registers.len() as f64;
    let mut sum = 0.0;
    let mut empty = 0usize;
    for &r in registers {
        // 2^-r, exactly.
        sum += f64::from_bits((1023 - u64::from(r)) << 52);
        empty += usize::from(r == 0);
    }
    let alpha = match registers.len() {
        16 => 0.673,
        32 => 0.697,
        64 => 0.709,
        _ => 0.7213 / (1.0 + 1.079 / m),
    };
    let raw = alpha * m * m / sum;
    if raw <= 2.5 * m && empty > 0 {
        m * (m / empty as f64).ln()
    } else {
        raw
    }
}

impl Sketch {
    fn new(precision: u8) -> Sketch {
        Sketch {
            precision,
            packed: vec![0; register_bytes(precision)],
        }
    }

    fn insert(&mut self, hash: u64) {
        let (index, rank) = place(hash, self.precision);
        if rank > self.get(index) {
            self.set(index, rank);
        }
    }

    // Register i is bits 6i..6i+6 of the packed bytes read as one little-endian number, so it
    // spans at most two bytes.
    fn get(&self, i: usize) -> u8 {
        let (byte, shift) = (6 * i / 8, 6 * i % 8);
        let lo = u16::from(self.packed[byte]);
        let hi = u16::from(self.packed.get(byte + 1).copied().unwrap_or(0));
        (((hi << 8 | lo) >> shift) & 0x3f) as u8
    }

    fn set(&mut self, i: usize, rank: u8) {
        let (byte, shift) = (6 * i / 8, 6 * i % 8);
        let lo = u16::from(self.packed[byte]);
        let hi = u16::from(self.packed.get(byte + 1).copied().unwrap_or(0));
        let word = ((hi << 8 | lo) & !(0x3f << shift)) | (u16::from(rank & 0x3f) << shift);
        self.packed[byte] = word as u8;
        if let Some(next) = self.packed.get_mut(byte + 1) {
            *next = (word >> 8) as u8;
        }
    }

    /// Maxes this sketch's registers into `registers` of `precision`, at most this sketch's:
    /// a finer sketch is folded, the index bits it has beyond `precision` becoming the leading
    /// bits of the rank.
    fn fold_into(&self, registers: &mut [u8], precision: u8) {
        let extra = self.precision - precision;
        let cap = 65 - precision;
        for i in 0..(1usize << self.precision) {
            let r = self.get(i);
            if r == 0 {
                continue;
            }
            let low = i & ((1 << extra) - 1);
            let rank = if low == 0 {
                r.saturating_add(extra)
            } else {
                // Leading zeros of `low` within `extra` bits, plus one.
                extra - (usize::BITS - low.leading_zeros()) as u8 + 1
            };
            let slot = &mut registers[i >> extra];
            *slot = (*slot).max(rank.min(cap));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, well spread 64-bit values (splitmix64).
    fn hashes(seed: u64, n: usize) -> impl Iterator<Item = u64> {
        let mut state = seed;
        (0..n).map(move |_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        })
    }

    #[test]
    fn hashes_are_stable_and_numbers_are_equal_by_value() {
        // Fixed by XXH3's specification: a changed hash would break every stored bucket.
        assert_eq!(
            hash(&Value::String("article-1".into())),
            xxh3_64(b"\x04\x09\0\0\0\0\0\0\0article-1")
        );
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(hash(&Value::Int64(1)), hash(&Value::Float64(1.0)));
        assert_eq!(hash(&Value::Int64(0)), hash(&Value::Float64(-0.0)));
        assert_eq!(
            hash(&Value::Float64(f64::NAN)),
            hash(&Value::Float64(-f64::NAN))
        );
        assert_ne!(hash(&Value::Int64(1)), hash(&Value::Float64(1.5)));
        assert_ne!(hash(&Value::Int64(1)), hash(&Value::String("1".into())));
        assert_ne!(hash(&Value::Int64(1)), hash(&Value::Timestamp(1)));
        assert_ne!(
            hash(&Value::List(vec![
                Value::String("ab".into()),
                Value::String("c".into())
            ])),
            hash(&Value::List(vec![
                Value::String("a".into()),
                Value::String("bc".into())
            ]))
        );
    }

    #[test]
    fn packed_registers_hold_every_value_apart() {
        let mut sketch = Sketch::new(6);
        for i in 0..64 {
            sketch.set(i, ((i * 7 + 3) % 64) as u8);
        }
        for i in 0..64 {
            assert_eq!(sketch.get(i), ((i * 7 + 3) % 64) as u8, "register {i}");
        }
        assert_eq!(sketch.packed.len(), 48);
    }

    #[test]
    fn estimates_are_within_the_standard_error() {
        // Three standard errors: these fixed inputs land well inside.
        for precision in [6u8, 8, 11] {
            let error = 1.04 / f64::from(1u32 << precision).sqrt();
            for n in [100usize, 1_000, 10_000, 100_000, 1_000_000] {
                let mut sketch = Distinct::Exact(Vec::new());
                for h in hashes(n as u64, n) {
                    sketch.insert(h, 0, precision);
                }
                let estimate = count(&[sketch]) as f64;
                let off = (estimate - n as f64).abs() / n as f64;
                assert!(
                    off <= 3.0 * error,
                    "p={precision} n={n}: {estimate} ({off:.4} off, error {error:.4})"
                );
            }
        }
    }

    #[test]
    fn a_union_folds_finer_sketches_and_adds_exact_hashes() {
        let all: Vec<u64> = hashes(7, 20_000).collect();
        let (fine, coarse, exact) = (&all[..10_000], &all[10_000..19_990], &all[19_990..]);
        let mut a = Distinct::Exact(Vec::new());
        let mut b = Distinct::Exact(Vec::new());
        for &h in fine {
            a.insert(h, 0, 11);
        }
        for &h in coarse {
            b.insert(h, 0, 8);
        }
        let c = Distinct::Exact(exact.to_vec());
        // The same as one sketch of the coarser precision over everything.
        let mut whole = Distinct::Exact(Vec::new());
        for &h in &all {
            whole.insert(h, 0, 8);
        }
        assert_eq!(count(&[a, b, c]), count(&[whole]));
    }

    #[test]
    fn buckets_round_trip_and_old_sets_read_as_hashes() {
        let mut exact = Distinct::Exact(Vec::new());
        let [a, b, c] = [0x8000_0000_0000_0000u64, 0x0800_0000_0000_0000, u64::MAX];
        for h in [b, a, b, c] {
            exact.insert(h, 64, 11);
        }
        assert_eq!(exact, Distinct::Exact(vec![b, a, c]));
        assert_eq!(Distinct::decode(&exact.encode()), exact);
        assert_eq!(Distinct::stored_hashes(&exact.encode()), 3);
        let sketch = exact.clone().into_sketch(9);
        let Value::Bytes(bytes) = sketch.encode() else {
            panic!()
        };
        assert_eq!(bytes.len(), 1 + 384);
        assert_eq!(Distinct::decode(&Value::Bytes(bytes)), sketch);
        assert_eq!(count(&[sketch]), 3);

        let old = Value::Set(vec![Value::String("a".into()), Value::String("b".into())]);
        let Distinct::Exact(hashes) = Distinct::decode(&old) else {
            panic!()
        };
        let mut expected = vec![
            hash(&Value::String("a".into())),
            hash(&Value::String("b".into())),
        ];
        expected.sort_unstable();
        assert_eq!(hashes, expected);
        for junk in [
            Value::Null,
            Value::Bytes(vec![]),
            Value::Bytes(vec![9, 1, 2]),
            Value::Int64(3),
        ] {
            assert_eq!(Distinct::decode(&junk), Distinct::Exact(Vec::new()));
        }
    }
}
