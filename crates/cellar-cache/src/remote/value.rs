//! Cached values, as the layout in the module's docs has them: encoded, and decoded without
//! ever panicking on what Redis holds.

use cellar_store::{codec, Record, Result, TimeseriesQuery};

const FORMAT: u8 = 2;
/// The layout before values carried their group's generation: read as misses, replaced.
const FORMAT_UNSTAMPED: u8 = 1;
const KIND_RECORD: u8 = 1;
const KIND_MISSING: u8 = 2;
const KIND_SERIES: u8 = 3;
const KIND_INVALIDATED: u8 = 4;
const HEADER_LEN: usize = 26;
pub(super) const ENTRY_HEADER_LEN: usize = 12;

/// An event time or deadline as bytes whose lexicographic order is numeric order.
pub(super) fn ordered(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn from_ordered(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

fn put_header(buf: &mut Vec<u8>, kind: u8, event_time: i64, soft_deadline: i64, generation: u64) {
    buf.push(FORMAT);
    buf.push(kind);
    buf.extend_from_slice(&ordered(event_time));
    buf.extend_from_slice(&ordered(soft_deadline));
    buf.extend_from_slice(&generation.to_be_bytes());
}

/// A record, valid while its group's generation is at most `generation`.
pub(super) fn encode_record(
    record: &Record,
    soft_deadline: i64,
    generation: u64,
) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(HEADER_LEN + codec::encoded_len(record));
    put_header(
        &mut buf,
        KIND_RECORD,
        record.event_time,
        soft_deadline,
        generation,
    );
    codec::encode_into(record, &mut buf)?;
    Ok(buf)
}

pub(super) fn encode_missing(soft_deadline: i64, generation: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN);
    put_header(&mut buf, KIND_MISSING, i64::MIN, soft_deadline, generation);
    buf
}

/// A marker is a miss whatever its generation.
pub(super) fn encode_invalidated(event_time: i64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_LEN);
    put_header(&mut buf, KIND_INVALIDATED, event_time, i64::MIN, 0);
    buf
}

/// One record of a cached series: what the merge script reads without decoding the record.
pub(super) fn encode_series_entry(buf: &mut Vec<u8>, record: &Record) -> Result<()> {
    let len = codec::encoded_len(record);
    let len = u32::try_from(len)
        .map_err(|_| cellar_store::StoreError::Codec(format!("record of {len} bytes")))?;
    buf.extend_from_slice(&ordered(record.event_time));
    buf.extend_from_slice(&len.to_be_bytes());
    codec::encode_into(record, buf)
}

pub(super) fn encode_series(
    records: &[Record],
    complete: bool,
    soft_deadline: i64,
    generation: u64,
) -> Result<Vec<u8>> {
    let newest = records.first().map_or(i64::MIN, |r| r.event_time);
    let payload: usize = records
        .iter()
        .map(|r| ENTRY_HEADER_LEN + codec::encoded_len(r))
        .sum();
    let mut buf = Vec::with_capacity(HEADER_LEN + 1 + payload);
    put_header(&mut buf, KIND_SERIES, newest, soft_deadline, generation);
    buf.push(u8::from(complete));
    for r in records {
        encode_series_entry(&mut buf, r)?;
    }
    Ok(buf)
}

/// What a cached value holds.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cached {
    Record(Record),
    Missing,
    Series {
        /// The records decoded: all of them, or those a query picked.
        records: Vec<Record>,
        /// How many records the value holds.
        held: usize,
        /// All the records the tier below had (fewer than the series length), so any `top_n`
        /// can be answered.
        complete: bool,
    },
    Invalidated,
}

#[derive(Debug)]
pub(super) struct Decoded {
    pub(super) cached: Cached,
    pub(super) soft_deadline: i64,
    /// The group's generation the value was made under: it is valid while the group's
    /// generation is not greater.
    pub(super) generation: u64,
}

fn read8(bytes: &[u8], at: usize) -> Option<[u8; 8]> {
    bytes.get(at..at + 8)?.try_into().ok()
}

/// Decodes a cached value; any malformed input is an error, never a panic. For a series, only
/// the records `pick` selects are decoded (all of them without a query): each entry's event
/// time sits before its record, so the others are skipped undecoded.
pub(super) fn decode_value(
    bytes: &[u8],
    pick: Option<TimeseriesQuery>,
) -> std::result::Result<Decoded, String> {
    if bytes.first() == Some(&FORMAT_UNSTAMPED) {
        return Ok(Decoded {
            cached: Cached::Invalidated,
            soft_deadline: i64::MIN,
            generation: 0,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(format!("value of {} bytes", bytes.len()));
    }
    if bytes[0] != FORMAT {
        return Err(format!("unknown value format {}", bytes[0]));
    }
    let soft_deadline = read8(bytes, 10).map(from_ordered).ok_or("short header")?;
    let generation = read8(bytes, 18)
        .map(u64::from_be_bytes)
        .ok_or("short header")?;
    let payload = &bytes[HEADER_LEN..];
    let cached = match bytes[1] {
        KIND_RECORD => Cached::Record(codec::decode(payload).map_err(|e| e.to_string())?),
        KIND_MISSING => Cached::Missing,
        KIND_INVALIDATED => Cached::Invalidated,
        KIND_SERIES => {
            let (&complete, mut rest) = payload.split_first().ok_or("series without flags")?;
            let mut records = Vec::new();
            let mut held = 0;
            while !rest.is_empty() {
                let event_time = read8(rest, 0)
                    .map(from_ordered)
                    .ok_or("truncated series entry")?;
                let len = rest
                    .get(8..ENTRY_HEADER_LEN)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(u32::from_be_bytes)
                    .ok_or("truncated series entry")?;
                let end = ENTRY_HEADER_LEN
                    .checked_add(len as usize)
                    .filter(|&end| end <= rest.len())
                    .ok_or("truncated series entry")?;
                let wanted = pick.is_none_or(|q| {
                    records.len() < q.top_n && q.since.is_none_or(|since| event_time >= since)
                });
                if wanted {
                    records.push(
                        codec::decode(&rest[ENTRY_HEADER_LEN..end]).map_err(|e| e.to_string())?,
                    );
                }
                held += 1;
                rest = &rest[end..];
            }
            Cached::Series {
                records,
                held,
                complete: complete == 1,
            }
        }
        other => return Err(format!("unknown value kind {other}")),
    };
    Ok(Decoded {
        cached,
        soft_deadline,
        generation,
    })
}

#[cfg(test)]
mod tests {
    use cellar_spec::Value;

    use super::*;

    fn record(at: i64, label: &str) -> Record {
        Record::new(at, vec![Value::String(label.to_owned())])
    }

    #[test]
    fn ordered_event_times_sort_as_bytes() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(ordered(pair[0]) < ordered(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(from_ordered(ordered(t)), t);
        }
    }

    #[test]
    fn values_round_trip() {
        let r = record(42, "a");
        let d = decode_value(&encode_record(&r, 99, 3).unwrap(), None).unwrap();
        assert_eq!(d.cached, Cached::Record(r.clone()));
        assert_eq!(d.soft_deadline, 99);
        assert_eq!(d.generation, 3);

        let d = decode_value(&encode_missing(7, 0), None).unwrap();
        assert_eq!(d.cached, Cached::Missing);

        let d = decode_value(&encode_invalidated(5), None).unwrap();
        assert_eq!(d.cached, Cached::Invalidated);

        let series = vec![record(30, "c"), record(20, "b"), record(10, "a")];
        let bytes = encode_series(&series, true, 11, 5).unwrap();
        assert_eq!(&bytes[2..10], &ordered(30));
        let d = decode_value(&bytes, None).unwrap();
        assert_eq!(
            d.cached,
            Cached::Series {
                records: series.clone(),
                held: 3,
                complete: true
            }
        );
        // A query decodes only what it picks.
        let pick = |top_n, since| Some(TimeseriesQuery { top_n, since });
        let d = decode_value(&bytes, pick(2, None)).unwrap();
        assert_eq!(
            d.cached,
            Cached::Series {
                records: series[..2].to_vec(),
                held: 3,
                complete: true
            }
        );
        let d = decode_value(&bytes, pick(5, Some(20))).unwrap();
        assert_eq!(
            d.cached,
            Cached::Series {
                records: series[..2].to_vec(),
                held: 3,
                complete: true
            }
        );
    }

    #[test]
    fn garbage_values_are_errors_not_panics() {
        let good = encode_series(&[record(2, "x"), record(1, "y")], false, 0, 1).unwrap();
        for end in 0..good.len() {
            let _ = decode_value(&good[..end], None);
        }
        for i in 0..good.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let _ = decode_value(&bad, None);
            }
        }
        assert!(decode_value(&[], None).is_err());
        // A value of the layout before generations: a miss, to be replaced.
        let d = decode_value(&[1, 1, 0, 0], None).unwrap();
        assert_eq!(d.cached, Cached::Invalidated);
        assert!(decode_value(&[9; 40], None).is_err());
    }
}
