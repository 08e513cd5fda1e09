//! The staging encoding of one kept batch: a group's records as one write gave them.
//!
//! ```text
//! frame   = version:u8  header:prefixed(JSON)  n:varint  row*n
//! row     = entity:prefixed(UTF-8)  applied:u8  record:prefixed
//! ```
//!
//! The header names the group and its live features with their storage positions and types,
//! so a frame converts to Parquet without the registry, whatever was applied since. Records are
//! the store's own encoding without applied offsets or aggregator state
//! ([`cellar_store::codec::encode_served_into`]). Decoding never trusts a length.

use cellar_spec::{FeatureGroup, ValueType};
use cellar_store::codec;
use cellar_store::varint;
use cellar_store::Record;
use serde::{Deserialize, Serialize};

use crate::error::{HistoryError, Result};

const FRAME_VERSION: u8 = 1;

/// What a frame's rows are: the group, and its live features at the time of the write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The group's name.
    pub group: String,
    /// Where the group's records are stored: its name, and its generation after a layout
    /// change. Histories of different generations are kept apart.
    pub storage: String,
    /// (storage position, name, type) of each live feature.
    pub features: Vec<(usize, String, ValueType)>,
}

impl Header {
    pub fn of(group: &FeatureGroup) -> Header {
        Header {
            group: group.name.clone(),
            storage: group.storage_name().into_owned(),
            features: group
                .features
                .iter()
                .enumerate()
                .filter(|(_, f)| !f.retired)
                .map(|(i, f)| (i, f.name.clone(), f.value_type))
                .collect(),
        }
    }
}

/// One kept record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub entity: String,
    pub applied: bool,
    pub record: Record,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Header,
    pub rows: Vec<Row>,
}

/// Encodes one batch. `rows` are (entity, record, applied).
pub fn encode<'a>(
    header: &Header,
    rows: impl ExactSizeIterator<Item = (&'a str, &'a Record, bool)>,
) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(64 + rows.len() * 48);
    buf.push(FRAME_VERSION);
    let header = serde_json::to_vec(header).map_err(|e| HistoryError::Encode(e.to_string()))?;
    varint::put_prefixed(&mut buf, &header);
    varint::put(&mut buf, rows.len() as u64);
    let mut record_buf = Vec::new();
    for (entity, record, applied) in rows {
        varint::put_prefixed(&mut buf, entity.as_bytes());
        buf.push(u8::from(applied));
        record_buf.clear();
        codec::encode_served_into(record, &mut record_buf)
            .map_err(|e| HistoryError::Encode(e.to_string()))?;
        varint::put_prefixed(&mut buf, &record_buf);
    }
    Ok(buf)
}

/// Decodes a frame written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Frame> {
    let mut input = Input { bytes, pos: 0 };
    let version = input.byte()?;
    if version != FRAME_VERSION {
        return Err(input.error(format!("unknown frame version {version}")));
    }
    let header = input.prefixed()?;
    let header: Header =
        serde_json::from_slice(header).map_err(|e| input.error(format!("header: {e}")))?;
    let n = input.varint()?;
    // Each row takes at least three bytes: no more rows than that are allocated for.
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > bytes.len() / 3 {
        return Err(input.error(format!("{n} rows cannot fit in {} bytes", bytes.len())));
    }
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        let entity = std::str::from_utf8(input.prefixed()?)
            .map_err(|_| input.error("an entity key is not UTF-8".into()))?
            .to_owned();
        let applied = match input.byte()? {
            0 => false,
            1 => true,
            b => return Err(input.error(format!("applied flag {b}"))),
        };
        let record = codec::decode(input.prefixed()?)
            .map_err(|e| input.error(format!("record of `{entity}`: {e}")))?;
        rows.push(Row {
            entity,
            applied,
            record,
        });
    }
    if input.pos != bytes.len() {
        return Err(input.error(format!("{} trailing bytes", bytes.len() - input.pos)));
    }
    Ok(Frame { header, rows })
}

struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn error(&self, reason: String) -> HistoryError {
        HistoryError::Corrupt(format!("staged frame at byte {}: {reason}", self.pos))
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| self.error("truncated".into()))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64> {
        let (value, used) = varint::read(&self.bytes[self.pos..])
            .map_err(|e| self.error(format!("varint: {e:?}")))?;
        self.pos += used;
        Ok(value)
    }

    fn prefixed(&mut self) -> Result<&'a [u8]> {
        let len = self.varint()?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.error(format!("a length of {len} runs past the end")))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_spec::{Feature, ScalarType, Value};

    fn header() -> Header {
        let mut group = FeatureGroup {
            name: "g".into(),
            entity: "user".into(),
            kind: cellar_spec::GroupKind::Attribute,
            features: vec![
                Feature::new("a", ValueType::Scalar(ScalarType::Int64)),
                Feature::new("b", ValueType::List(ScalarType::String)),
            ],
            retention: Default::default(),
            serving: Default::default(),
            max_record_bytes: 1 << 20,
            freshness: None,
            push_sources: Vec::new(),
            description: None,
            generation: 2,
            previous: None,
        };
        group.features[0].retired = true;
        Header::of(&group)
    }

    #[test]
    fn a_frame_reads_back_as_written_without_offsets_or_state() {
        let header = header();
        assert_eq!(header.storage, "g@2");
        assert_eq!(header.features.len(), 1);
        let mut record = Record::new(
            42,
            vec![Value::Null, Value::List(vec![Value::String("x".into())])],
        );
        record.state = vec![Value::Int64(9)];
        let bytes = encode(&header, [("u1", &record, false)].into_iter()).unwrap();
        let frame = decode(&bytes).unwrap();
        assert_eq!(frame.header, header);
        assert_eq!(frame.rows.len(), 1);
        assert_eq!(frame.rows[0].entity, "u1");
        assert!(!frame.rows[0].applied);
        assert_eq!(frame.rows[0].record.values, record.values);
        assert!(frame.rows[0].record.state.is_empty());
    }

    #[test]
    fn every_truncation_of_a_frame_is_an_error_not_a_panic() {
        let record = Record::new(1, vec![Value::Int64(5), Value::String("abc".into())]);
        let bytes = encode(&header(), [("u1", &record, true)].into_iter()).unwrap();
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end]).is_err(), "decoded {end} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }
}
