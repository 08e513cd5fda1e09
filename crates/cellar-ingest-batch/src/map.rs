//! Rows to records: each row of a record batch becomes one write of the job's group (entity
//! key, event time, feature values), or one [`Reject`] saying where it is and what is wrong.

use arrow_array::RecordBatch;
use arrow_schema::Schema;
use cellar_ingest_stream::aggregate::Update;
use cellar_spec::{EntityKey, KeyPart, KeyType, Value};
use cellar_store::{Record, Write};

use crate::error::{BatchError, Result};
use crate::job::{BatchJob, WriteMode};
use crate::rejects::Reject;
use cellar_expr::column::{Cell, Column, Kind};

/// Where the rows of a record batch are in their file.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Locator<'a> {
    /// Parquet: row `i` of the batch is row `first + i` of the file.
    Rows { first: u64 },
    /// CSV: the byte offset of each row, and its line when the reader knows it.
    Csv {
        bytes: &'a [u64],
        lines: Option<&'a [u64]>,
    },
}

/// Where one row is, as a reject names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Place {
    pub row: Option<u64>,
    pub line: Option<u64>,
    pub byte: Option<u64>,
}

impl Locator<'_> {
    fn place(&self, i: usize) -> Place {
        match self {
            Locator::Rows { first } => Place {
                row: Some(first + i as u64),
                ..Place::default()
            },
            Locator::Csv { bytes, lines } => Place {
                row: None,
                line: lines.and_then(|l| l.get(i).copied()),
                byte: bytes.get(i).copied(),
            },
        }
    }
}

/// The writes of one record batch.
#[derive(Debug)]
pub(crate) enum Writes {
    /// Whole records ([`WriteMode::Put`]).
    Puts(Vec<Write>),
    /// Partial updates of attribute records ([`WriteMode::Merge`]), with each row's place, so
    /// a merged record that turns out too large can be rejected by name.
    Merges {
        entities: Vec<EntityKey>,
        updates: Vec<Update>,
        places: Vec<Place>,
    },
}

impl Writes {
    /// No writes yet, of the job's mode.
    pub(crate) fn new(mode: WriteMode) -> Writes {
        match mode {
            WriteMode::Put => Writes::Puts(Vec::new()),
            WriteMode::Merge => Writes::Merges {
                entities: Vec::new(),
                updates: Vec::new(),
                places: Vec::new(),
            },
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Writes::Puts(w) => w.len(),
            Writes::Merges { entities, .. } => entities.len(),
        }
    }

    /// Puts the writes in entity key order. On the embedded store, lookups and inserts of a
    /// batch in key order walk nearby parts of its index instead of jumping across it: for
    /// keys that arrive scattered that is several times faster than row order. The sort is
    /// stable, so rows of one entity keep their order, and what the store decides for them is
    /// unchanged.
    pub(crate) fn sort_by_entity(&mut self) {
        match self {
            Writes::Puts(writes) => {
                let order = entity_order(writes.len(), |i| &writes[i].entity);
                let mut slots: Vec<Option<Write>> = writes.drain(..).map(Some).collect();
                writes.extend(order.into_iter().filter_map(|i| slots[i as usize].take()));
            }
            Writes::Merges {
                entities,
                updates,
                places,
            } => {
                let order = entity_order(entities.len(), |i| &entities[i]);
                let mut slots: Vec<Option<(EntityKey, Update, Place)>> = entities
                    .drain(..)
                    .zip(updates.drain(..))
                    .zip(places.drain(..))
                    .map(|((e, u), p)| Some((e, u, p)))
                    .collect();
                for (e, u, p) in order.into_iter().filter_map(|i| slots[i as usize].take()) {
                    entities.push(e);
                    updates.push(u);
                    places.push(p);
                }
            }
        }
    }
}

/// The positions of `len` rows ordered by entity key, rows of one entity in their order.
/// Sorting positions and moving each row once is cheaper than sorting the rows themselves.
fn entity_order<'a>(len: usize, entity: impl Fn(usize) -> &'a EntityKey) -> Vec<u32> {
    let mut order: Vec<u32> = (0..len as u32).collect();
    order.sort_unstable_by(|a, b| entity(*a as usize).cmp(entity(*b as usize)).then(a.cmp(b)));
    order
}

/// Maps the record batches of one file (whose schema it checked once) to writes.
pub(crate) struct Mapper<'j> {
    job: &'j BatchJob,
    shard: u32,
    file: String,
    /// Batch column index of each key field, in the entity's order.
    key: Vec<usize>,
    event_time: Option<usize>,
    /// (feature position in the group, batch column index).
    features: Vec<(usize, usize)>,
    /// Retired positions that held a written feature before its type changed: a merge clears
    /// them, so the value written now is served and not the old one converted.
    superseded: Vec<usize>,
}

impl<'j> Mapper<'j> {
    /// Checks that `schema` (of the batches to come from `file`) holds every column the job
    /// reads, each of a type that can become its key field, event time or feature.
    pub(crate) fn new(job: &'j BatchJob, shard: u32, file: &str, schema: &Schema) -> Result<Self> {
        let fail = |reason: String| BatchError::Column {
            file: file.to_owned(),
            reason,
        };
        let find = |column: &str, role: &str| {
            schema.index_of(column).map_err(|_| {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                fail(format!(
                    "no column `{column}` ({role}); its columns are: {}",
                    names.join(", ")
                ))
            })
        };
        let kind = |i: usize| Kind::of(schema.field(i).data_type());
        let mut key = Vec::with_capacity(job.key_columns.len());
        for (column, field) in job.key_columns.iter().zip(&job.entity.keys) {
            let i = find(column, &format!("key field `{}`", field.name))?;
            if !kind(i).feeds_key(field.key_type) {
                return Err(fail(format!(
                    "column `{column}` is {}, which cannot be key field `{}` ({})",
                    schema.field(i).data_type(),
                    field.name,
                    match field.key_type {
                        cellar_spec::KeyType::String => "a string",
                        cellar_spec::KeyType::Int64 => "a 64-bit integer",
                    }
                )));
            }
            key.push(i);
        }
        let event_time = match &job.event_time_column {
            None => None,
            Some(column) => {
                let i = find(column, "event_time")?;
                if !kind(i).feeds_event_time() {
                    return Err(fail(format!(
                        "column `{column}` is {}, which cannot be an event time (timestamps, \
                         dates, integer epoch milliseconds or RFC 3339 text)",
                        schema.field(i).data_type()
                    )));
                }
                Some(i)
            }
        };
        let mut features = Vec::with_capacity(job.features.len());
        for (position, column) in &job.features {
            let feature = &job.group.features[*position];
            let i = find(column, &format!("feature `{}`", feature.name))?;
            if !kind(i).feeds(feature.value_type) {
                return Err(fail(format!(
                    "column `{column}` is {}, which cannot become feature `{}` of type {}",
                    schema.field(i).data_type(),
                    feature.name,
                    feature.value_type
                )));
            }
            features.push((*position, i));
        }
        for column in job.read_columns.iter().flatten() {
            find(column, "read by the transform")?;
        }
        let superseded = features
            .iter()
            .map(|(position, _)| *position)
            .chain(job.computed.iter().flat_map(|c| c.positions()))
            .filter_map(|position| job.group.predecessor(position))
            .collect();
        Ok(Mapper {
            job,
            shard,
            file: file.to_owned(),
            key,
            event_time,
            features,
            superseded,
        })
    }

    /// The file the mapper reads.
    pub(crate) fn file(&self) -> &str {
        &self.file
    }

    pub(crate) fn reject(&self, place: Place, column: Option<&str>, reason: String) -> Reject {
        Reject {
            ingestion: self.job.ingestion.clone(),
            shard: self.shard,
            file: self.file.clone(),
            row: place.row,
            line: place.line,
            byte: place.byte,
            column: column.map(str::to_owned),
            reason,
        }
    }

    /// Maps every row of `batch`, appending the writes of the rows that fit to `out` (of the
    /// job's mode) and a reject to `rejects` for each row that does not. Returns how many rows
    /// were skipped for an event time outside the job's period.
    pub(crate) fn map(
        &self,
        batch: &RecordBatch,
        locator: Locator<'_>,
        out: &mut Writes,
        rejects: &mut Vec<Reject>,
    ) -> u64 {
        let mut skipped = 0;
        let columns: Vec<Column> = batch.columns().iter().map(Column::new).collect();
        let rows = batch.num_rows();
        match out {
            Writes::Puts(puts) => puts.reserve(rows),
            Writes::Merges {
                entities,
                updates,
                places,
            } => {
                entities.reserve(rows);
                updates.reserve(rows);
                places.reserve(rows);
            }
        }
        // Read once per batch: rows of one batch are judged against one clock reading.
        let now = cellar_spec::time::now_ms();
        let first_reject = rejects.len();
        let mut mapped = Vec::with_capacity(rows);
        for row in 0..rows {
            match self.map_row(&columns, row, now) {
                Ok(Some((entity, record))) => mapped.push((row, entity, record)),
                Ok(None) => skipped += 1,
                Err((column, reason)) => {
                    rejects.push(self.reject(locator.place(row), column, reason));
                }
            }
        }
        // Write-time expressions run over all the batch's mapped rows at once.
        let computed = match &self.job.computed {
            Some(computed) => computed.compute(
                mapped.len(),
                |i, position| mapped[i].2.value(position),
                |i| mapped[i].2.event_time,
            ),
            None => Vec::new(),
        };
        let mut computed = computed.into_iter();
        for (row, entity, mut record) in mapped {
            if self.job.computed.is_some() {
                match computed.next() {
                    Some(Ok(values)) => {
                        for (position, value) in values {
                            record.values[position] = value;
                        }
                    }
                    Some(Err(reason)) => {
                        rejects.push(self.reject(locator.place(row), None, reason));
                        continue;
                    }
                    None => {
                        let reason = "its write-time expressions gave no values".to_owned();
                        rejects.push(self.reject(locator.place(row), None, reason));
                        continue;
                    }
                }
            }
            if let Err(e) = cellar_store::check_size(&self.job.group, &entity, &record) {
                rejects.push(self.reject(locator.place(row), None, e.to_string()));
                continue;
            }
            match out {
                Writes::Puts(puts) => puts.push(Write { entity, record }),
                Writes::Merges {
                    entities,
                    updates,
                    places,
                } => {
                    let Record {
                        event_time,
                        mut values,
                        ..
                    } = record;
                    let fields = self
                        .features
                        .iter()
                        .map(|(p, _)| *p)
                        .chain(self.job.computed.iter().flat_map(|c| c.positions()))
                        .map(|p| (p, std::mem::replace(&mut values[p], Value::Null)))
                        .chain(self.superseded.iter().map(|&p| (p, Value::Null)))
                        .collect();
                    entities.push(entity);
                    updates.push(Update {
                        event_time,
                        origin: None,
                        fields,
                        folds: Vec::new(),
                    });
                    places.push(locator.place(row));
                }
            }
        }
        // Rows refused after mapping (by their expressions or their size) in file order too.
        rejects[first_reject..].sort_by_key(|r| (r.row, r.byte));
        skipped
    }

    /// One row as the entity and its record (every feature the job does not map is null, and
    /// its computed features are not computed yet),
    /// `None` when its event time is outside the job's period, or the column at fault and why.
    /// `now` is the clock, for the latest event time accepted.
    fn map_row(
        &self,
        columns: &[Column],
        row: usize,
        now: i64,
    ) -> std::result::Result<Option<(EntityKey, Record)>, RowFault<'j>> {
        let job = self.job;
        let mut key = String::with_capacity(24);
        for (i, &c) in self.key.iter().enumerate() {
            let name = job.key_columns[i].as_str();
            let cell = columns[c].cell(row);
            let part = match (cell, job.entity.keys[i].key_type) {
                // Integer keys in text (every CSV column) are read as the integers they spell,
                // so `007` and `7` are one entity, as they are in integer columns.
                (Cell::Text(s), KeyType::Int64) => match s.trim().parse::<i64>() {
                    Ok(n) => Some(KeyPart::Int(n)),
                    Err(_) => Some(KeyPart::Text(s)),
                },
                _ => cell.to_key_part(),
            };
            let part = match part {
                Some(part) => part,
                None if matches!(cell, Cell::Null) => {
                    return Err((Some(name), format!("key `{name}` is null")))
                }
                None => {
                    return Err((
                        Some(name),
                        format!(
                            "key `{name}`: expected a 64-bit integer, got {}",
                            cell.describe()
                        ),
                    ))
                }
            };
            job.entity
                .push_key_part(&mut key, i, part)
                .map_err(|e| (Some(name), format!("key: {e}")))?;
        }
        let event_time = match (self.event_time, &job.event_time_column) {
            (Some(c), Some(name)) => {
                let cell = columns[c].cell(row);
                match cell.to_millis() {
                    Some(ms) => {
                        if let Err(e) = job.options.event_times.check(ms, now) {
                            return Err((Some(name), format!("event_time `{name}`: {e}")));
                        }
                        ms
                    }
                    None if matches!(cell, Cell::Null) => {
                        return Err((Some(name), format!("event_time `{name}` is null")))
                    }
                    None => {
                        return Err((
                            Some(name),
                            format!(
                                "event_time `{name}`: expected a timestamp, epoch milliseconds \
                                 or RFC 3339 text, got {}",
                                cell.describe()
                            ),
                        ))
                    }
                }
            }
            _ => job.run_time_ms,
        };
        if !job.period.contains(event_time) {
            return Ok(None);
        }
        let mut values = vec![Value::Null; job.group.features.len()];
        for (i, &(position, c)) in self.features.iter().enumerate() {
            let feature = &job.group.features[position];
            values[position] = columns[c]
                .cell(row)
                .to_value(feature.value_type)
                .map_err(|e| {
                    let column = job.features[i].1.as_str();
                    (
                        Some(column),
                        format!("feature `{}` (`{column}`): {e}", feature.name),
                    )
                })?;
        }
        Ok(Some((EntityKey(key), Record::new(event_time, values))))
    }
}

/// Why a row was refused: the column at fault (`None` for the row as a whole) and the reason.
type RowFault<'j> = (Option<&'j str>, String);

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow_schema::{DataType, Field};
    use cellar_spec::limits::{EventTimeBounds, DEFAULT_MAX_FUTURE};
    use cellar_spec::FeatureRepo;
    use std::sync::Arc;

    const REPO: &str = r#"
kind: Entity
name: user
keys: [{ name: user_id, type: string }, { name: region, type: int64 }]
---
kind: FeatureGroup
name: clicks
entity: user
type: timeseries
features:
  - { name: article, type: string }
  - { name: dwell, type: float64 }
  - { name: tags, type: "list<string>" }
max_record_bytes: 64
---
kind: Ingestion
name: click_log
batch: { files: { path: clicks.parquet } }
into: clicks
key: [user_id, region]
event_time: ts
features: { article: article_id, dwell: dwell_s }
"#;

    fn job() -> BatchJob {
        let repo: FeatureRepo = cellar_spec::parse_repo(&[("r.yaml".into(), REPO.into())])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut job = BatchJob::from_repo(&repo, "click_log", 0).unwrap();
        // Rows of these tests are stamped near the epoch.
        job.options.event_times = EventTimeBounds::new(0, DEFAULT_MAX_FUTURE).unwrap();
        job
    }

    #[test]
    fn write_time_expressions_fill_their_features_and_a_failing_row_is_rejected_alone() {
        let text = REPO
            .replace(
                "  - { name: tags, type: \"list<string>\" }",
                "  - { name: tags, type: \"list<string>\" }\n  - { name: per_char, type: int64 }",
            )
            .replace("max_record_bytes: 64", "max_record_bytes: 4096")
            .replace(
                "features: { article: article_id, dwell: dwell_s }",
                "features:\n  article: article_id\n  dwell: dwell_s\n  per_char: { expr: \"CAST(dwell AS BIGINT) / character_length(article)\" }",
            );
        let repo: FeatureRepo =
            cellar_spec::parse_repo(&[("r.yaml".into(), text)]).unwrap_or_else(|e| panic!("{e}"));
        let mut job = BatchJob::from_repo(&repo, "click_log", 0).unwrap();
        job.options.event_times = EventTimeBounds::new(0, DEFAULT_MAX_FUTURE).unwrap();
        let b = batch(vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["u1", "u2", "u3"])) as ArrayRef,
            ),
            ("region", Arc::new(Int64Array::from(vec![1, 1, 1]))),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(vec![10, 20, 30])),
            ),
            (
                "article_id",
                Arc::new(StringArray::from(vec!["abcd", "", "ab"])),
            ),
            (
                "dwell_s",
                Arc::new(arrow_array::Float64Array::from(vec![8.0, 3.0, 9.0])),
            ),
        ]);
        let mapper = Mapper::new(&job, 0, "f.parquet", &b.schema()).unwrap();
        let (mut writes, mut rejects) = (Writes::new(job.mode), Vec::new());
        mapper.map(&b, Locator::Rows { first: 0 }, &mut writes, &mut rejects);
        let Writes::Puts(puts) = writes else {
            panic!("a time series is written whole")
        };
        let per_char: Vec<&Value> = puts.iter().map(|w| w.record.value(3)).collect();
        assert_eq!(per_char, [&Value::Int64(2), &Value::Int64(4)]);
        assert_eq!(rejects.len(), 1, "{rejects:?}");
        assert_eq!(rejects[0].row, Some(1));
        assert!(
            rejects[0].reason.contains("feature `per_char`")
                && rejects[0].reason.contains("Divide by zero"),
            "{}",
            rejects[0].reason
        );
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn rows_become_positional_records_keyed_like_streams() {
        let job = job();
        let b = batch(vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec!["u1", "u2"])) as ArrayRef,
            ),
            ("region", Arc::new(Int64Array::from(vec![3, 4]))),
            (
                "ts",
                Arc::new(TimestampMillisecondArray::from(vec![10, 20])),
            ),
            (
                "article_id",
                Arc::new(StringArray::from(vec![Some("a9"), None])),
            ),
            ("dwell_s", Arc::new(StringArray::from(vec!["1.5", "2"]))),
        ]);
        let mapper = Mapper::new(&job, 0, "f.parquet", &b.schema()).unwrap();
        let mut rejects = Vec::new();
        let mut out = Writes::new(job.mode);
        mapper.map(&b, Locator::Rows { first: 0 }, &mut out, &mut rejects);
        let Writes::Puts(writes) = out else {
            panic!("time series are put");
        };
        assert!(rejects.is_empty(), "{rejects:?}");
        let expected_key = job
            .entity
            .key_from_json(&[&serde_json::json!("u1"), &serde_json::json!(3)])
            .unwrap();
        assert_eq!(writes[0].entity, expected_key);
        assert_eq!(
            writes[0].record,
            Record::new(
                10,
                vec![Value::String("a9".into()), Value::Float64(1.5), Value::Null]
            )
        );
        assert_eq!(writes[1].record.values[0], Value::Null);
    }

    #[test]
    fn bad_rows_are_rejected_with_their_place_column_and_reason() {
        let job = job();
        let long = "x".repeat(100);
        let b = batch(vec![
            (
                "user_id",
                Arc::new(StringArray::from(vec![
                    None,
                    Some("u2"),
                    Some("u3"),
                    Some("u4"),
                    Some("u5"),
                ])) as ArrayRef,
            ),
            ("region", Arc::new(Int64Array::from(vec![1, 1, 1, 1, 1]))),
            (
                "ts",
                Arc::new(StringArray::from(vec![
                    Some("1"),
                    Some("yesterday"),
                    Some("2024-01-01T00:00:00Z"),
                    Some("5"),
                    None,
                ])),
            ),
            (
                "article_id",
                Arc::new(StringArray::from(vec!["a", "a", "a", long.as_str(), "a"])),
            ),
            (
                "dwell_s",
                Arc::new(StringArray::from(vec!["1", "1", "slow", "1", "1"])),
            ),
        ]);
        let mapper = Mapper::new(&job, 7, "f.parquet", &b.schema()).unwrap();
        let mut rejects = Vec::new();
        let mut writes = Writes::new(job.mode);
        mapper.map(&b, Locator::Rows { first: 100 }, &mut writes, &mut rejects);
        assert_eq!(writes.len(), 0);
        let got: Vec<(Option<u64>, Option<&str>, &str)> = rejects
            .iter()
            .map(|r| (r.row, r.column.as_deref(), r.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(100), Some("user_id"), "key `user_id` is null"),
                (
                    Some(101),
                    Some("ts"),
                    "event_time `ts`: expected a timestamp, epoch milliseconds or RFC 3339 text, \
                     got the text \"yesterday\""
                ),
                (
                    Some(102),
                    Some("dwell_s"),
                    "feature `dwell` (`dwell_s`): expected float64, got the text \"slow\""
                ),
                (
                    Some(103),
                    None,
                    "record for entity `u4\u{1f}1` of group `clicks` is 117 bytes, over the limit of 64 bytes"
                ),
                (Some(104), Some("ts"), "event_time `ts` is null"),
            ]
        );
        assert!(rejects
            .iter()
            .all(|r| r.shard == 7 && r.file == "f.parquet"));
    }

    #[test]
    fn rows_with_keys_or_event_times_no_store_can_hold_are_rejected_alone() {
        let mut job = job();
        job.options.event_times = EventTimeBounds::default();
        let now = cellar_spec::time::now_ms();
        let long = "k".repeat(70_000);
        let users = ["u1", "nul\0", long.as_str(), "u4", "u5", "u6", "u7"];
        let times = [
            now,
            now,
            now,
            i64::MAX,
            i64::MIN,
            now + 2 * 86_400_000,
            -14_182_940_000,
        ];
        let b = batch(vec![
            (
                "user_id",
                Arc::new(StringArray::from(users.to_vec())) as ArrayRef,
            ),
            ("region", Arc::new(Int64Array::from(vec![1; 7]))),
            ("ts", Arc::new(Int64Array::from(times.to_vec()))),
            ("article_id", Arc::new(StringArray::from(vec!["a"; 7]))),
            ("dwell_s", Arc::new(StringArray::from(vec!["1"; 7]))),
        ]);
        let mapper = Mapper::new(&job, 0, "f.parquet", &b.schema()).unwrap();
        let mut rejects = Vec::new();
        let mut writes = Writes::new(job.mode);
        mapper.map(&b, Locator::Rows { first: 0 }, &mut writes, &mut rejects);
        assert_eq!(writes.len(), 1, "only the first row fits");
        let got: Vec<(Option<u64>, Option<&str>, &str)> = rejects
            .iter()
            .map(|r| (r.row, r.column.as_deref(), r.reason.as_str()))
            .collect();
        assert_eq!(got[0], (Some(1), Some("user_id"), "key: key field `user_id` may not contain a control character: it holds U+0000 at byte 3"));
        assert_eq!(
            got[1],
            (
                Some(2),
                Some("user_id"),
                "key: the key of entity `user` is 70000 bytes, over the limit of 1024 bytes"
            )
        );
        assert_eq!(got.len(), 6, "{got:?}");
        for (i, (row, column, reason)) in got[2..].iter().enumerate() {
            assert_eq!(*row, Some(i as u64 + 3));
            assert_eq!(*column, Some("ts"));
            assert!(
                reason.starts_with("event_time `ts`: ")
                    && reason.contains("is outside the accepted event times, from 2000-01-01T00:00:00Z to 1d after now"),
                "{reason}"
            );
        }
    }

    #[test]
    fn sorting_a_merge_batch_keeps_each_row_with_its_update_and_place() {
        let key = |k: &str| EntityKey(k.into());
        let update = |t: i64| Update {
            event_time: t,
            origin: None,
            fields: vec![(0, Value::Int64(t))],
            folds: Vec::new(),
        };
        let place = |r: u64| Place {
            row: Some(r),
            ..Place::default()
        };
        let mut writes = Writes::Merges {
            entities: vec![key("b"), key("a"), key("b"), key("a")],
            updates: vec![update(1), update(2), update(3), update(4)],
            places: vec![place(0), place(1), place(2), place(3)],
        };
        writes.sort_by_entity();
        let Writes::Merges {
            entities,
            updates,
            places,
        } = writes
        else {
            unreachable!()
        };
        assert_eq!(entities, vec![key("a"), key("a"), key("b"), key("b")]);
        // Stable: rows of one entity keep their order.
        let times: Vec<i64> = updates.iter().map(|u| u.event_time).collect();
        assert_eq!(times, vec![2, 4, 1, 3]);
        let rows: Vec<Option<u64>> = places.iter().map(|p| p.row).collect();
        assert_eq!(rows, vec![Some(1), Some(3), Some(0), Some(2)]);
    }

    #[test]
    fn files_without_a_column_or_with_an_unfit_type_are_refused_whole() {
        let job = job();
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("region", DataType::Int64, true),
            Field::new("ts", DataType::Int64, true),
            Field::new("article_id", DataType::Utf8, true),
        ]);
        let err = Mapper::new(&job, 0, "f.parquet", &schema).err().unwrap();
        assert_eq!(
            err.to_string(),
            "f.parquet: no column `dwell_s` (feature `dwell`); its columns are: \
             user_id, region, ts, article_id"
        );
        let schema = Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("region", DataType::Float64, true),
            Field::new("ts", DataType::Int64, true),
            Field::new("article_id", DataType::Utf8, true),
            Field::new("dwell_s", DataType::Float64, true),
        ]);
        let err = Mapper::new(&job, 0, "f.parquet", &schema).err().unwrap();
        assert_eq!(
            err.to_string(),
            "f.parquet: column `region` is Float64, which cannot be key field `region` (a 64-bit integer)"
        );
    }
}
