//! Compact positional encoding of records.
//!
//! Layout (all integers are LEB128 varints; signed ones are zigzag-encoded first):
//!
//! ```text
//! record  = version:u8  event_time:zigzag  n:varint value*n  m:varint applied*m
//!           k:varint value*k            (aggregator state; version 2 on)
//! applied = source:varint offset:varint
//! value   = tag:u8 payload
//! ```
//!
//! | tag | value | payload |
//! |-----|-------|---------|
//! | 0 | null | none |
//! | 1, 2 | bool false, true | none (the tag is the value) |
//! | 3 | int64 | zigzag varint |
//! | 4 | float64 | 8 bytes, little endian |
//! | 5 | string | varint length, UTF-8 bytes |
//! | 6 | bytes | varint length, bytes |
//! | 7 | timestamp | zigzag varint (ms since the epoch) |
//! | 8, 9 | list, set | varint count, values |
//! | 10 | map | varint count, (varint length, UTF-8 key, value) per entry |
//! | 11 | vector | varint dimension, 4 bytes little endian per element |
//!
//! Values sit by feature position, so stored bytes never hold feature names. A hand-rolled
//! layout rather than serde: it folds booleans into the tag, lets [`encoded_len`] size a record
//! without allocating (the record-size limit is checked on every write), and lets the decoder
//! bound nesting depth and preallocation, so bytes read back from disk or the network can never
//! make it panic, overflow the stack or allocate more than the input justifies.

use cellar_spec::Value;

use crate::varint::{self, Malformed};
use crate::{AppliedOffset, Record, Result, StoreError};

/// The format version written as the first byte of every encoded record. A new layout gets a
/// new version, and the decoder keeps reading the old ones.
pub const FORMAT_VERSION: u8 = 2;

/// The first format, without aggregator state; still read.
const FORMAT_VERSION_1: u8 = 1;

/// Deepest nesting of lists, sets and maps the decoder accepts. Specs allow one level (a list of
/// scalars); the margin is for in-process values, while a bound keeps hostile bytes from
/// exhausting the stack.
pub const MAX_NESTING: usize = 16;

const TAG_NULL: u8 = 0;
const TAG_FALSE: u8 = 1;
const TAG_TRUE: u8 = 2;
const TAG_INT64: u8 = 3;
const TAG_FLOAT64: u8 = 4;
const TAG_STRING: u8 = 5;
const TAG_BYTES: u8 = 6;
const TAG_TIMESTAMP: u8 = 7;
const TAG_LIST: u8 = 8;
const TAG_SET: u8 = 9;
const TAG_MAP: u8 = 10;
const TAG_VECTOR: u8 = 11;

/// The size in bytes of `record` once encoded; what a group's `max_record_bytes` limits.
pub fn encoded_len(record: &Record) -> usize {
    1 + varint::zigzag_len(record.event_time)
        + varint::len(record.values.len() as u64)
        + record.values.iter().map(value_len).sum::<usize>()
        + varint::len(record.applied.len() as u64)
        + record
            .applied
            .iter()
            .map(|a| varint::len(a.source) + varint::len(a.offset))
            .sum::<usize>()
        + varint::len(record.state.len() as u64)
        + record.state.iter().map(value_len).sum::<usize>()
}

/// Encodes `record` in a new buffer of exactly its encoded length.
pub fn encode(record: &Record) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(encoded_len(record));
    encode_into(record, &mut buf)?;
    Ok(buf)
}

/// Appends the encoding of `record` to `buf`, so callers encoding many records can reuse one
/// buffer. Fails only for values nested deeper than [`MAX_NESTING`], which could not be read
/// back; `buf` may then hold a partial encoding.
pub fn encode_into(record: &Record, buf: &mut Vec<u8>) -> Result<()> {
    buf.push(FORMAT_VERSION);
    varint::put_zigzag(buf, record.event_time);
    varint::put(buf, record.values.len() as u64);
    for value in &record.values {
        put_value(buf, value, 0)?;
    }
    varint::put(buf, record.applied.len() as u64);
    for applied in &record.applied {
        varint::put(buf, applied.source);
        varint::put(buf, applied.offset);
    }
    varint::put(buf, record.state.len() as u64);
    for value in &record.state {
        put_value(buf, value, 0)?;
    }
    Ok(())
}

/// Appends the encoding of `record` without its applied offsets and aggregator state, which
/// are never served: [`decode`] reads it back as a record with neither. The offline history
/// keeps records this way.
pub fn encode_served_into(record: &Record, buf: &mut Vec<u8>) -> Result<()> {
    buf.push(FORMAT_VERSION);
    varint::put_zigzag(buf, record.event_time);
    varint::put(buf, record.values.len() as u64);
    for value in &record.values {
        put_value(buf, value, 0)?;
    }
    varint::put(buf, 0);
    varint::put(buf, 0);
    Ok(())
}

/// Decodes a record encoded by [`encode`]. Any malformed input (truncated, unknown version or
/// tag, invalid UTF-8, trailing bytes, nesting past [`MAX_NESTING`]) is an error.
pub fn decode(bytes: &[u8]) -> Result<Record> {
    let mut input = Input { bytes, pos: 0 };
    let version = input.byte()?;
    if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
        return Err(input.error(format!("unknown record format version {version}")));
    }
    let event_time = input.zigzag()?;
    let n = input.count(1)?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(input.value(0)?);
    }
    let m = input.count(2)?;
    let mut applied = Vec::with_capacity(m);
    for _ in 0..m {
        let source = input.varint()?;
        let offset = input.varint()?;
        applied.push(AppliedOffset { source, offset });
    }
    let mut state = Vec::new();
    if version >= FORMAT_VERSION {
        let k = input.count(1)?;
        state.reserve(k);
        for _ in 0..k {
            state.push(input.value(0)?);
        }
    }
    if input.pos != bytes.len() {
        return Err(input.error(format!("{} trailing bytes", bytes.len() - input.pos)));
    }
    Ok(Record {
        event_time,
        values,
        applied,
        state,
    })
}

/// Reads only the event time of an encoded record: attribute writes compare event times
/// without decoding the stored values.
pub fn decode_event_time(bytes: &[u8]) -> Result<i64> {
    let mut input = Input { bytes, pos: 0 };
    let version = input.byte()?;
    if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
        return Err(input.error(format!("unknown record format version {version}")));
    }
    input.zigzag()
}

fn value_len(value: &Value) -> usize {
    1 + match value {
        Value::Null | Value::Bool(_) => 0,
        Value::Int64(v) | Value::Timestamp(v) => varint::zigzag_len(*v),
        Value::Float64(_) => 8,
        Value::String(s) => varint::len(s.len() as u64) + s.len(),
        Value::Bytes(b) => varint::len(b.len() as u64) + b.len(),
        Value::List(items) | Value::Set(items) => {
            varint::len(items.len() as u64) + items.iter().map(value_len).sum::<usize>()
        }
        Value::Map(entries) => {
            varint::len(entries.len() as u64)
                + entries
                    .iter()
                    .map(|(k, v)| varint::len(k.len() as u64) + k.len() + value_len(v))
                    .sum::<usize>()
        }
        Value::Vector(v) => varint::len(v.len() as u64) + 4 * v.len(),
    }
}

fn put_value(buf: &mut Vec<u8>, value: &Value, depth: usize) -> Result<()> {
    match value {
        Value::Null => buf.push(TAG_NULL),
        Value::Bool(false) => buf.push(TAG_FALSE),
        Value::Bool(true) => buf.push(TAG_TRUE),
        Value::Int64(v) => {
            buf.push(TAG_INT64);
            varint::put_zigzag(buf, *v);
        }
        Value::Float64(v) => {
            buf.push(TAG_FLOAT64);
            buf.extend_from_slice(&v.to_le_bytes());
        }
        Value::String(s) => {
            buf.push(TAG_STRING);
            varint::put_prefixed(buf, s.as_bytes());
        }
        Value::Bytes(b) => {
            buf.push(TAG_BYTES);
            varint::put_prefixed(buf, b);
        }
        Value::Timestamp(v) => {
            buf.push(TAG_TIMESTAMP);
            varint::put_zigzag(buf, *v);
        }
        Value::List(items) | Value::Set(items) => {
            check_depth(depth)?;
            buf.push(if matches!(value, Value::List(_)) {
                TAG_LIST
            } else {
                TAG_SET
            });
            varint::put(buf, items.len() as u64);
            for item in items {
                put_value(buf, item, depth + 1)?;
            }
        }
        Value::Map(entries) => {
            check_depth(depth)?;
            buf.push(TAG_MAP);
            varint::put(buf, entries.len() as u64);
            for (key, item) in entries {
                varint::put_prefixed(buf, key.as_bytes());
                put_value(buf, item, depth + 1)?;
            }
        }
        Value::Vector(v) => {
            buf.push(TAG_VECTOR);
            varint::put(buf, v.len() as u64);
            for x in v {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    Ok(())
}

fn check_depth(depth: usize) -> Result<()> {
    if depth >= MAX_NESTING {
        return Err(StoreError::Codec(format!(
            "values are nested more than {MAX_NESTING} levels deep"
        )));
    }
    Ok(())
}

/// A cursor over bytes being decoded; every read is bounds-checked.
struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn error(&self, reason: String) -> StoreError {
        StoreError::Codec(format!("{reason} (at byte {})", self.pos))
    }

    fn truncated(&self) -> StoreError {
        self.error("record is truncated".to_owned())
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self.bytes.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if n > self.remaining() {
            return Err(self.truncated());
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.bytes[start..self.pos])
    }

    fn varint(&mut self) -> Result<u64> {
        match varint::read(&self.bytes[self.pos..]) {
            Ok((v, len)) => {
                self.pos += len;
                Ok(v)
            }
            // Errors give the position past what was read, as every other read's do.
            Err(Malformed::Truncated) => {
                self.pos = self.bytes.len();
                Err(self.truncated())
            }
            Err(Malformed::Overflow) => {
                self.pos += varint::MAX_LEN;
                Err(self.error("varint overflows 64 bits".to_owned()))
            }
        }
    }

    fn zigzag(&mut self) -> Result<i64> {
        self.varint().map(varint::unzigzag)
    }

    /// Reads an element count and checks it against the bytes left, given that each element
    /// takes at least `min_element_len` bytes: a corrupt count cannot cause a huge allocation.
    fn count(&mut self, min_element_len: usize) -> Result<usize> {
        let n = self.varint()?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_element_len) <= self.remaining() => Ok(n),
            _ => Err(self.error(format!(
                "count {n} exceeds the {} bytes left",
                self.remaining()
            ))),
        }
    }

    fn string(&mut self) -> Result<String> {
        let len = self.count(1)?;
        let start = self.pos;
        let bytes = self.take(len)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(StoreError::Codec(format!(
                "string is not valid UTF-8 (at byte {start})"
            ))),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        let tag = self.byte()?;
        Ok(match tag {
            TAG_NULL => Value::Null,
            TAG_FALSE => Value::Bool(false),
            TAG_TRUE => Value::Bool(true),
            TAG_INT64 => Value::Int64(self.zigzag()?),
            TAG_FLOAT64 => {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(self.take(8)?);
                Value::Float64(f64::from_le_bytes(raw))
            }
            TAG_STRING => Value::String(self.string()?),
            TAG_BYTES => {
                let len = self.count(1)?;
                Value::Bytes(self.take(len)?.to_vec())
            }
            TAG_TIMESTAMP => Value::Timestamp(self.zigzag()?),
            TAG_LIST | TAG_SET => {
                if depth >= MAX_NESTING {
                    return Err(self.error(format!("values nested past {MAX_NESTING} levels")));
                }
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                if tag == TAG_LIST {
                    Value::List(items)
                } else {
                    Value::Set(items)
                }
            }
            TAG_MAP => {
                if depth >= MAX_NESTING {
                    return Err(self.error(format!("values nested past {MAX_NESTING} levels")));
                }
                let n = self.count(2)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let key = self.string()?;
                    entries.push((key, self.value(depth + 1)?));
                }
                Value::Map(entries)
            }
            TAG_VECTOR => {
                let n = self.count(4)?;
                let raw = self.take(n * 4)?;
                Value::Vector(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                )
            }
            other => return Err(self.error(format!("unknown value tag {other}"))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_type() -> Record {
        Record {
            event_time: 1_700_000_000_123,
            values: vec![
                Value::Null,
                Value::Bool(true),
                Value::Bool(false),
                Value::Int64(-42),
                Value::Int64(i64::MIN),
                Value::Int64(i64::MAX),
                Value::Float64(3.25),
                Value::Float64(f64::NEG_INFINITY),
                Value::String("héllo".into()),
                Value::String(String::new()),
                Value::Bytes(vec![0, 255, 7]),
                Value::Timestamp(-1),
                Value::List(vec![Value::Int64(1), Value::Null]),
                Value::Set(vec![Value::String("a".into()), Value::String("b".into())]),
                Value::Map(vec![("k".into(), Value::Float64(0.5))]),
                Value::Vector(vec![0.1, -2.5, f32::MAX]),
            ],
            applied: vec![
                AppliedOffset {
                    source: 3,
                    offset: u64::MAX,
                },
                AppliedOffset {
                    source: 0,
                    offset: 0,
                },
            ],
            state: vec![Value::List(vec![Value::Int64(60_000), Value::Int64(3)])],
        }
    }

    #[test]
    fn version_1_records_still_decode_without_state() {
        let mut record = every_type();
        record.state.clear();
        let mut bytes = encode(&record).unwrap();
        // Version 1 is version 2 without the trailing state count.
        bytes[0] = FORMAT_VERSION_1;
        assert_eq!(bytes.pop(), Some(0));
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(decode_event_time(&bytes).unwrap(), record.event_time);
    }

    #[test]
    fn every_type_round_trips_and_len_is_exact() {
        let record = every_type();
        let bytes = encode(&record).unwrap();
        assert_eq!(bytes.len(), encoded_len(&record));
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode(&bytes).unwrap(), record);
        assert_eq!(decode_event_time(&bytes).unwrap(), record.event_time);
    }

    #[test]
    fn damaged_varints_say_where() {
        let mut truncated = Input {
            bytes: &[7, 0x80, 0x80],
            pos: 1,
        };
        assert_eq!(
            truncated.varint().unwrap_err().to_string(),
            "record encoding error: record is truncated (at byte 3)"
        );
        let mut long = vec![7];
        long.extend_from_slice(&[0xff; 10]);
        let mut overflow = Input {
            bytes: &long,
            pos: 1,
        };
        assert_eq!(
            overflow.varint().unwrap_err().to_string(),
            "record encoding error: varint overflows 64 bits (at byte 11)"
        );
    }

    #[test]
    fn small_record_is_compact() {
        // A typical attribute record: an id, a count and a score.
        let record = Record::new(
            1_700_000_000_000,
            vec![
                Value::String("article-123".into()),
                Value::Int64(17),
                Value::Float64(0.75),
            ],
        );
        // version + 6-byte time + count + (1+1+11) + (1+1) + (1+8) + applied and state counts
        assert_eq!(encoded_len(&record), 34);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(&every_type()).unwrap();
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end]).is_err(), "prefix of {end} bytes");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // Deterministic pseudo-random inputs, plus every single-byte corruption of a real record.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2_000 {
            let bytes: Vec<u8> = (0..len % 64)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
        let good = encode(&every_type()).unwrap();
        for i in 0..good.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let _ = decode(&bad);
            }
        }
    }

    #[test]
    fn hostile_inputs_are_rejected() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 0, 0, 0])
            .unwrap_err()
            .to_string()
            .contains("version"));
        // A count far beyond the input must not allocate.
        let huge = [FORMAT_VERSION, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode(&huge).unwrap_err().to_string().contains("exceeds"));
        // Nesting past the limit: lists of one list each.
        let mut deep = vec![FORMAT_VERSION, 0, 1];
        for _ in 0..10_000 {
            deep.extend_from_slice(&[TAG_LIST, 1]);
        }
        assert!(decode(&deep).unwrap_err().to_string().contains("nested"));
        // Trailing bytes.
        let mut trailing = encode(&Record::new(1, vec![])).unwrap();
        trailing.push(0);
        assert!(decode(&trailing)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
        // Invalid UTF-8 in a string.
        let bad_utf8 = [FORMAT_VERSION, 0, 1, TAG_STRING, 1, 0xff, 0];
        assert!(decode(&bad_utf8).unwrap_err().to_string().contains("UTF-8"));
        // An 11-byte varint.
        let mut long = vec![FORMAT_VERSION];
        long.extend_from_slice(&[0xff; 10]);
        long.push(0);
        assert!(decode(&long).is_err());
    }

    #[test]
    fn too_deep_values_are_refused_on_encode() {
        let mut value = Value::Null;
        for _ in 0..=MAX_NESTING {
            value = Value::List(vec![value]);
        }
        assert!(encode(&Record::new(0, vec![value])).is_err());
    }
}
