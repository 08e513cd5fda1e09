//! The on-disk encoding of the embedded log: keys that sort in offset order and compact record
//! values.
//!
//! Keys of the `records` keyspace are `<topic> 0x00 <partition, u32 BE> <offset, u64 BE>`:
//! big-endian integers sort like numbers, so a range scan of one partition reads in offset
//! order, and the NUL (refused in topic names) keeps topic `a` from matching topic `ab`.
//!
//! A record value is a format version byte, then:
//!
//! ```text
//! timestamp_ms   zigzag varint
//! key            0x00 (none) | 0x01 varint-length bytes
//! payload        varint-length bytes
//! header count   varint, then per header: varint-length name (UTF-8), varint-length value
//! ```
//!
//! Varints (LEB128, those of the store's records: [`cellar_store::varint`]) keep the per-record
//! overhead to a few bytes for small events. Decoding never trusts a stored length: every read
//! is bounds-checked and trailing bytes are an error.

use bytes::Bytes;
use cellar_store::varint::{self, Malformed};

use super::LogRecord;

/// The record format written today; a reader refuses versions it does not know.
pub(crate) const RECORD_VERSION: u8 = 1;
/// Separates the topic name from the partition in keys; refused inside topic and group names.
pub(crate) const SEPARATOR: u8 = 0;
/// Bytes of a partition number in keys.
const PARTITION_LEN: usize = 4;
/// Bytes of an offset in keys.
const OFFSET_LEN: usize = 8;

/// `<topic>\0<partition BE>`: the prefix of every key of one partition, also the key of its
/// start offset in the `starts` keyspace.
pub(crate) fn partition_prefix(topic: &str, partition: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 1 + PARTITION_LEN + OFFSET_LEN);
    key.extend_from_slice(topic.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

/// The key of the record at `offset`, given its partition's prefix.
pub(crate) fn record_key(prefix: &[u8], offset: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + OFFSET_LEN);
    write_record_key(&mut key, prefix, offset);
    key
}

/// [`record_key`] into `key`, replacing its contents, so one buffer serves a whole batch.
pub(crate) fn write_record_key(key: &mut Vec<u8>, prefix: &[u8], offset: u64) {
    key.clear();
    key.extend_from_slice(prefix);
    key.extend_from_slice(&offset.to_be_bytes());
}

/// The offset at the end of a record key, if the key is exactly a prefix of `prefix_len`
/// bytes plus an offset.
pub(crate) fn key_offset(key: &[u8], prefix_len: usize) -> Option<u64> {
    if key.len() != prefix_len + OFFSET_LEN {
        return None;
    }
    let raw: [u8; OFFSET_LEN] = key.get(prefix_len..)?.try_into().ok()?;
    Some(u64::from_be_bytes(raw))
}

/// `<group>\0<topic>\0<partition BE>`: the key of a committed position.
pub(crate) fn position_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(group.len() + 1 + topic.len() + 1 + PARTITION_LEN);
    key.extend_from_slice(group.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(&partition_prefix(topic, partition));
    key
}

/// `<topic>\0<producer id>`: where a producer's next sequence is kept.
pub(crate) fn producer_key(topic: &str, producer: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(topic.len() + 1 + producer.len());
    key.extend_from_slice(topic.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(producer.as_bytes());
    key
}

/// Splits a producer key back into topic and producer id.
pub(crate) fn parse_producer_key(key: &[u8]) -> Option<(String, String)> {
    let split = key.iter().position(|&b| b == SEPARATOR)?;
    let topic = std::str::from_utf8(key.get(..split)?).ok()?;
    let producer = std::str::from_utf8(key.get(split + 1..)?).ok()?;
    Some((topic.to_owned(), producer.to_owned()))
}

/// Splits a committed-position key back into group, topic and partition.
pub(crate) fn parse_position_key(key: &[u8]) -> Option<(String, String, u32)> {
    let group_end = key.iter().position(|&b| b == SEPARATOR)?;
    let (group, rest) = (key.get(..group_end)?, key.get(group_end + 1..)?);
    let (topic, partition) = parse_partition_prefix(rest)?;
    let group = std::str::from_utf8(group).ok()?.to_owned();
    Some((group, topic, partition))
}

/// Splits `<topic>\0<partition BE>` back into its parts.
pub(crate) fn parse_partition_prefix(key: &[u8]) -> Option<(String, u32)> {
    let topic_end = key.len().checked_sub(1 + PARTITION_LEN)?;
    if key.get(topic_end) != Some(&SEPARATOR) {
        return None;
    }
    let topic = std::str::from_utf8(key.get(..topic_end)?).ok()?;
    let raw: [u8; PARTITION_LEN] = key.get(topic_end + 1..)?.try_into().ok()?;
    Some((topic.to_owned(), u32::from_be_bytes(raw)))
}

/// A stored big-endian `u64` (start offsets, committed positions).
pub(crate) fn decode_u64(value: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(value.try_into().ok()?))
}

/// A topic's metadata: the version byte, then its partition count.
pub(crate) fn encode_topic(partitions: u32) -> [u8; 5] {
    let mut value = [RECORD_VERSION, 0, 0, 0, 0];
    value[1..].copy_from_slice(&partitions.to_be_bytes());
    value
}

/// The partition count from a topic's metadata.
pub(crate) fn decode_topic(value: &[u8]) -> Result<u32, String> {
    match value {
        [RECORD_VERSION, count @ ..] => count
            .try_into()
            .map(u32::from_be_bytes)
            .map_err(|_| format!("expected 4 bytes of partition count, found {}", count.len())),
        [version, ..] => Err(format!("unknown topic format version {version}")),
        [] => Err("empty topic entry".to_owned()),
    }
}

/// Bytes `record` takes encoded, computed without encoding it.
pub(crate) fn encoded_len(record: &LogRecord) -> usize {
    let bytes = |len: usize| varint::len(len as u64) + len;
    let key = match &record.key {
        Some(key) => 1 + bytes(key.len()),
        None => 1,
    };
    let headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| bytes(name.len()) + bytes(value.len()))
        .sum();
    1 + varint::zigzag_len(record.timestamp_ms)
        + key
        + bytes(record.payload.len())
        + varint::len(record.headers.len() as u64)
        + headers
}

/// Appends `record`'s encoding to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, record: &LogRecord) {
    out.push(RECORD_VERSION);
    varint::put_zigzag(out, record.timestamp_ms);
    match &record.key {
        Some(key) => {
            out.push(1);
            varint::put_prefixed(out, key);
        }
        None => out.push(0),
    }
    varint::put_prefixed(out, &record.payload);
    varint::put(out, record.headers.len() as u64);
    for (name, value) in &record.headers {
        varint::put_prefixed(out, name.as_bytes());
        varint::put_prefixed(out, value);
    }
}

/// A record decoded from its stored value; the error says what did not decode.
pub(crate) fn decode_record(value: &[u8]) -> Result<LogRecord, String> {
    let mut input = Reader { rest: value };
    match input.byte("format version")? {
        RECORD_VERSION => {}
        other => return Err(format!("unknown record format version {other}")),
    }
    let timestamp_ms = varint::unzigzag(input.varint("timestamp")?);
    let key = match input.byte("key flag")? {
        0 => None,
        1 => Some(Bytes::copy_from_slice(input.bytes("key")?)),
        other => return Err(format!("invalid key flag {other}")),
    };
    let payload = Bytes::copy_from_slice(input.bytes("payload")?);
    let count = input.varint("header count")?;
    // Each header takes at least two bytes, which bounds the allocation whatever the count says.
    let capacity = usize::try_from(count)
        .unwrap_or(usize::MAX)
        .min(input.rest.len() / 2);
    let mut headers = Vec::with_capacity(capacity);
    for _ in 0..count {
        let name = std::str::from_utf8(input.bytes("header name")?)
            .map_err(|e| format!("header name is not UTF-8: {e}"))?
            .to_owned();
        let value = Bytes::copy_from_slice(input.bytes("header value")?);
        headers.push((name, value));
    }
    if !input.rest.is_empty() {
        return Err(format!("{} trailing bytes", input.rest.len()));
    }
    Ok(LogRecord {
        key,
        payload,
        headers,
        timestamp_ms,
    })
}

/// Reads fields off the front of a stored value, bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self, field: &str) -> Result<u8, String> {
        let (&first, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| format!("truncated before the {field}"))?;
        self.rest = rest;
        Ok(first)
    }

    fn varint(&mut self, field: &str) -> Result<u64, String> {
        let (value, len) = varint::read(self.rest).map_err(|e| match e {
            Malformed::Truncated => format!("truncated before the {field}"),
            Malformed::Overflow => format!("the {field} overflows 64 bits"),
        })?;
        self.rest = &self.rest[len..];
        Ok(value)
    }

    fn bytes(&mut self, field: &str) -> Result<&'a [u8], String> {
        let len = self.varint(field)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.rest.len())
            .ok_or_else(|| {
                format!(
                    "the {field} claims {len} bytes but {} remain",
                    self.rest.len()
                )
            })?;
        let (field, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&str>, payload: &str, headers: &[(&str, &str)], ts: i64) -> LogRecord {
        LogRecord {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            timestamp_ms: ts,
        }
    }

    #[test]
    fn records_round_trip_and_their_length_is_predicted() {
        let cases = [
            record(None, "", &[], 0),
            record(Some(""), "p", &[], -1),
            record(
                Some("user-1"),
                "{\"a\":1}",
                &[("attempt", "3"), ("", "")],
                1_700_000_000_000,
            ),
            record(
                Some("k"),
                &"x".repeat(300),
                &[("h", &"v".repeat(200))],
                i64::MIN,
            ),
            record(None, "p", &[], i64::MAX),
        ];
        for case in cases {
            let mut out = Vec::new();
            encode_record(&mut out, &case);
            assert_eq!(out.len(), encoded_len(&case), "{case:?}");
            assert_eq!(decode_record(&out), Ok(case));
        }
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        let mut good = Vec::new();
        encode_record(&mut good, &record(Some("k"), "payload", &[("h", "v")], 42));
        // Every truncation and one appended byte must be refused.
        for len in 0..good.len() {
            assert!(
                decode_record(&good[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode_record(&longer).unwrap_err().contains("trailing"));
        let mut version = good.clone();
        version[0] = 9;
        assert!(decode_record(&version).unwrap_err().contains("version 9"));
        // A length far beyond the value, and a varint that never ends.
        assert!(decode_record(&[1, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_record(&[
            1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
        ])
        .is_err());
        // A header count of u64::MAX with nothing behind it.
        let huge_count = [
            1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert!(decode_record(&huge_count).is_err());
    }

    #[test]
    fn damaged_varints_name_their_field() {
        let mut reader = Reader { rest: &[0x80, 7] };
        assert_eq!(reader.varint("timestamp"), Ok(0x380));
        assert_eq!(
            reader.varint("header count"),
            Err("truncated before the header count".to_owned())
        );
        let long = [0xff; 10];
        assert_eq!(
            Reader { rest: &long }.varint("payload"),
            Err("the payload overflows 64 bits".to_owned())
        );
    }

    #[test]
    fn keys_sort_in_offset_order_and_parse_back() {
        let prefix = partition_prefix("events", 3);
        let keys: Vec<Vec<u8>> = [0u64, 1, 255, 256, 1 << 40]
            .iter()
            .map(|&o| record_key(&prefix, o))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(key_offset(&keys[3], prefix.len()), Some(256));
        // A longer topic sharing the name's start sorts outside the partition's range.
        assert!(!record_key(&partition_prefix("events2", 3), 0).starts_with(&prefix));
        assert_eq!(
            parse_partition_prefix(&prefix),
            Some(("events".to_owned(), 3))
        );
        let position = position_key("billing", "events", 7);
        assert_eq!(
            parse_position_key(&position),
            Some(("billing".to_owned(), "events".to_owned(), 7))
        );
        assert_eq!(decode_topic(&encode_topic(12)), Ok(12));
        assert!(decode_topic(&[]).is_err());
        assert!(decode_topic(&[1, 0]).is_err());
    }
}
