//! Records as stored: values by feature position, the event time, and applied offsets.

use serde::{Deserialize, Serialize};

use cellar_spec::Value;

/// One record of a feature group for one entity.
///
/// Values are positional: `values[i]` belongs to the group's i-th feature, so stored records
/// never repeat feature names. A record written before features were appended to its group is
/// shorter; the missing trailing values read as null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Event time, milliseconds since the Unix epoch. Newer event times win.
    pub event_time: i64,
    /// Feature values by position in the group.
    pub values: Vec<Value>,
    /// For each source partition that contributed to this record, the last offset applied, so
    /// a redelivered event can be recognised and skipped (effectively-once ingestion).
    #[serde(default)]
    pub applied: Vec<AppliedOffset>,
    /// State kept by the stream aggregators beside the values (the partial aggregates of each
    /// window's buckets), never served.
    #[serde(default)]
    pub state: Vec<Value>,
}

/// The last offset of one source partition applied to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedOffset {
    /// Stable id of the source partition (topic and partition).
    pub source: u64,
    /// The offset last applied from that partition.
    pub offset: u64,
}

impl Record {
    /// A record with no applied offsets.
    pub fn new(event_time: i64, values: Vec<Value>) -> Record {
        Record {
            event_time,
            values,
            applied: Vec::new(),
            state: Vec::new(),
        }
    }

    /// The offset last applied from `source`, if any.
    pub fn applied_offset(&self, source: u64) -> Option<u64> {
        self.applied
            .iter()
            .find(|a| a.source == source)
            .map(|a| a.offset)
    }

    /// Records `offset` as the last one applied from `source`.
    pub fn set_applied_offset(&mut self, source: u64, offset: u64) {
        match self.applied.iter_mut().find(|a| a.source == source) {
            Some(a) => a.offset = offset,
            None => self.applied.push(AppliedOffset { source, offset }),
        }
    }

    /// The value of the feature at `position`, null when the record predates it.
    pub fn value(&self, position: usize) -> &Value {
        self.values.get(position).unwrap_or(&Value::Null)
    }
}
