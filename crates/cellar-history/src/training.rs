//! Point-in-time-correct training sets: for each row of a spine (entity keys, a timestamp,
//! labels), each selected feature as serving would have answered at that timestamp.
//!
//! - An attribute group gives the newest record with an event time at or before the row's
//!   timestamp, or null when there is none or it is older than the group's `max_age` there.
//! - A time-series group gives, as lists, its newest `top_n` records (at most `max_records`)
//!   with event times in the window ending at the timestamp (`max_age` long).
//! - Records with equal event times resolve as the online store resolves them: an attribute
//!   record the store took beats one it refused as stale, and otherwise the later write wins.
//!
//! The join is a sort-merge as-of join over Arrow: the history rows of the spine's entities
//! and the spine rows are each sorted by (entity, time) and walked together once, so the cost
//! is the two sorts and one pass, whatever the distribution of keys. Groups are joined in
//! parallel; the values are gathered column by column with Arrow's `interleave`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Int32Type, Int64Type, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt32Type, UInt64Type,
};
use arrow_array::{
    new_null_array, Array, ArrayRef, ListArray, RecordBatch, TimestampMillisecondArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use cellar_spec::{Entity, FeatureGroup, GroupKind, KeyPart, ScalarType, ValueType};
// Keys come from the caller's own spine and history, not from the network.
use rustc_hash::FxHashMap;

use crate::error::{HistoryError, Result};
use crate::files;
use crate::plan::TrainingPlan;
use crate::storage::Storage;

/// Some features of one stored group, joined onto the spine.
#[derive(Debug, Clone)]
pub struct Selection {
    pub group: FeatureGroup,
    /// The group's entity: which spine columns hold its key.
    pub entity: Entity,
    /// Live feature names, in output order.
    pub features: Vec<String>,
    /// Records per row of a time-series group (capped by its `max_records`), as a read's
    /// `top_n`.
    pub top_n: usize,
}

impl Selection {
    /// The output column of one of its features.
    pub fn column_name(&self, feature: &str) -> String {
        column_name(&self.group.name, feature)
    }
}

/// The spine's timestamps in epoch milliseconds. A row without one is refused, named.
pub fn spine_times(spine: &RecordBatch, column: &str) -> Result<Vec<i64>> {
    let array = spine.column_by_name(column).ok_or_else(|| {
        HistoryError::Invalid(format!(
            "the spine has no timestamp column `{column}` (it has {})",
            column_names(spine)
        ))
    })?;
    let times: Vec<Option<i64>> = match array.data_type() {
        DataType::Timestamp(unit, _) => {
            let scale = |v: Option<i64>| {
                v.map(|v| match unit {
                    TimeUnit::Second => v.saturating_mul(1000),
                    TimeUnit::Millisecond => v,
                    TimeUnit::Microsecond => v.div_euclid(1000),
                    TimeUnit::Nanosecond => v.div_euclid(1_000_000),
                })
            };
            match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().iter().map(scale).collect(),
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().iter().map(scale).collect(),
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().iter().map(scale).collect(),
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().iter().map(scale).collect(),
            }
        }
        DataType::Int64 => array.as_primitive::<Int64Type>().iter().collect(),
        DataType::Utf8 => array
            .as_string::<i32>()
            .iter()
            .enumerate()
            .map(|(row, s)| match s {
                None => Ok(None),
                Some(s) => cellar_spec::value::parse_rfc3339(s).map(Some).ok_or_else(|| {
                    HistoryError::Invalid(format!(
                        "spine row {row}: `{column}` is `{s}`, not an RFC 3339 time"
                    ))
                }),
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(HistoryError::Invalid(format!(
                "the spine's `{column}` is {other}: a timestamp, epoch milliseconds (int64) or RFC 3339 text is needed"
            )))
        }
    };
    times
        .into_iter()
        .enumerate()
        .map(|(row, t)| {
            t.ok_or_else(|| HistoryError::Invalid(format!("spine row {row} has no `{column}`")))
        })
        .collect()
}

fn column_names(batch: &RecordBatch) -> String {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| format!("`{}`", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each spine row's entity key for `entity`, from its key columns; `None` where a key field is
/// null. A value of the wrong type is refused with its row.
pub fn spine_keys(spine: &RecordBatch, entity: &Entity) -> Result<Vec<Option<String>>> {
    let mut columns = Vec::with_capacity(entity.keys.len());
    for field in &entity.keys {
        let column = spine.column_by_name(&field.name).ok_or_else(|| {
            HistoryError::Invalid(format!(
                "the spine has no column `{}`, a key of entity `{}` (it has {})",
                field.name,
                entity.name,
                column_names(spine)
            ))
        })?;
        columns.push(column.clone());
    }
    let mut keys = Vec::with_capacity(spine.num_rows());
    'rows: for row in 0..spine.num_rows() {
        let mut key = String::new();
        for (i, column) in columns.iter().enumerate() {
            if column.is_null(row) {
                keys.push(None);
                continue 'rows;
            }
            let part = match column.data_type() {
                DataType::Utf8 => KeyPart::Text(column.as_string::<i32>().value(row)),
                DataType::LargeUtf8 => KeyPart::Text(column.as_string::<i64>().value(row)),
                DataType::Utf8View => KeyPart::Text(column.as_string_view().value(row)),
                DataType::Int64 => KeyPart::Int(column.as_primitive::<Int64Type>().value(row)),
                DataType::Int32 => {
                    KeyPart::Int(column.as_primitive::<Int32Type>().value(row).into())
                }
                DataType::UInt32 => {
                    KeyPart::Int(column.as_primitive::<UInt32Type>().value(row).into())
                }
                DataType::UInt64 => {
                    let v = column.as_primitive::<UInt64Type>().value(row);
                    let v = i64::try_from(v).map_err(|_| {
                        HistoryError::Invalid(format!(
                            "spine row {row}: `{}` is {v}, past the largest int64 key",
                            entity.keys[i].name
                        ))
                    })?;
                    KeyPart::Int(v)
                }
                other => {
                    return Err(HistoryError::Invalid(format!(
                        "the spine's `{}` is {other}: entity keys are text or integers",
                        entity.keys[i].name
                    )))
                }
            };
            entity
                .push_key_part(&mut key, i, part)
                .map_err(|e| HistoryError::Invalid(format!("spine row {row}: {e}")))?;
        }
        keys.push(Some(key));
    }
    Ok(keys)
}

/// One history record of an entity in the spine, by where it lies.
#[derive(Clone, Copy)]
struct Entry {
    entity: u32,
    event_time: i64,
    applied: bool,
    written_at: i64,
    sequence: u64,
    batch: u32,
    row: u32,
}

impl Entry {
    fn order(&self) -> (u32, i64, bool, i64, u64) {
        (
            self.entity,
            self.event_time,
            self.applied,
            self.written_at,
            self.sequence,
        )
    }
}

/// One entity's keys in the spine: each row's dense id (`None` without a key), and the ids
/// by key.
struct SpineEntity {
    name: String,
    rows: Vec<Option<u32>>,
    ids: FxHashMap<String, u32>,
}

/// The merge of the as-of join: history entries sorted by (entity, time, resolution), walked
/// once alongside spine rows sorted by (entity, time).
struct Walk<'a> {
    entries: &'a [Entry],
    /// Where the current entity's entries start.
    start: usize,
    /// Past the last entry at or before the latest time asked for.
    at: usize,
    entity: u32,
}

impl<'a> Walk<'a> {
    fn new(entries: &'a [Entry]) -> Walk<'a> {
        Walk {
            entries,
            start: 0,
            at: 0,
            entity: u32::MAX,
        }
    }

    /// `entity`'s entries with event times at or before `time`, oldest first. Calls must come
    /// in (entity, time) order: the walk only moves forward.
    fn until(&mut self, entity: u32, time: i64) -> &'a [Entry] {
        let entries = self.entries;
        if entity != self.entity {
            self.entity = entity;
            while self.at < entries.len() && entries[self.at].entity < entity {
                self.at += 1;
            }
            self.start = self.at;
        }
        while self.at < entries.len()
            && entries[self.at].entity == entity
            && entries[self.at].event_time <= time
        {
            self.at += 1;
        }
        &entries[self.start..self.at]
    }
}

/// How far a training set has got: spine rows written, and of the chunk being joined, steps
/// (groups joined or computed) done of all; and whether it should stop at the next step.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows_done: AtomicUsize,
    pub done: AtomicUsize,
    pub total: AtomicUsize,
    pub cancelled: AtomicBool,
}

/// Spine rows joined at once by [`training_set_file`]: the spine, the history of its entities
/// and the output of one chunk are what is held in memory.
pub const CHUNK_ROWS: usize = 2_000_000;

/// What [`training_set_file`] did, and where its time went.
#[derive(Debug, Default, Clone)]
pub struct Built {
    pub rows: usize,
    pub chunks: usize,
    /// Of each of the plan's columns, the rows with a value.
    pub values: Vec<usize>,
    pub read: std::time::Duration,
    pub join: std::time::Duration,
    pub write: std::time::Duration,
}

/// The training set of the spine in file `spine` (Parquet or CSV), written to `out` (Parquet,
/// or CSV by its extension): the spine is read and joined `chunk_rows` rows at a time, each
/// chunk's output written before the next is read, so a spine larger than memory works (each
/// chunk reads the history of its own entities).
pub fn training_set_file(
    storage: &Storage,
    spine: &Path,
    out: &Path,
    timestamp: &str,
    plan: &TrainingPlan,
    progress: &Progress,
    chunk_rows: usize,
) -> Result<Built> {
    let mut built = Built {
        values: vec![0; plan.columns.len()],
        ..Built::default()
    };
    let mut started = std::time::Instant::now();
    let mut writer: Option<crate::table::TableWriter> = None;
    for chunk in crate::table::read_chunks(spine, chunk_rows)? {
        let chunk = chunk?;
        built.read += started.elapsed();
        started = std::time::Instant::now();
        progress.done.store(0, Ordering::Relaxed);
        let set = training_set(storage, &chunk, timestamp, plan, progress)?;
        built.join += started.elapsed();
        started = std::time::Instant::now();
        let writer = match &mut writer {
            Some(w) => w,
            None => writer.insert(crate::table::TableWriter::create(out, set.schema())?),
        };
        writer.write(&set)?;
        built.write += started.elapsed();
        for ((group, feature), values) in plan.columns.iter().zip(&mut built.values) {
            if let Some(column) = set.column_by_name(&column_name(group, feature)) {
                *values += column.len() - column.null_count();
            }
        }
        built.rows += chunk.num_rows();
        built.chunks += 1;
        progress
            .rows_done
            .fetch_add(chunk.num_rows(), Ordering::Relaxed);
        started = std::time::Instant::now();
    }
    if let Some(writer) = writer {
        started = std::time::Instant::now();
        writer.close()?;
        built.write += started.elapsed();
    }
    Ok(built)
}

impl Progress {
    fn go_on(&self) -> Result<()> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(HistoryError::Invalid(
                "the training set was cancelled".into(),
            ));
        }
        Ok(())
    }
}

/// Builds the training set: the spine's columns, then each of the plan's columns as
/// `<group>__<feature>`.
pub fn training_set(
    storage: &Storage,
    spine: &RecordBatch,
    timestamp: &str,
    plan: &TrainingPlan,
    progress: &Progress,
) -> Result<RecordBatch> {
    let times = spine_times(spine, timestamp)?;
    let selections = &plan.stored;
    for s in selections {
        for f in &s.features {
            if s.group.feature_index(f).is_none() {
                return Err(HistoryError::Invalid(format!(
                    "group `{}` has no feature `{f}`",
                    s.group.name
                )));
            }
        }
    }
    progress
        .total
        .store(selections.len() + plan.on_demand.len(), Ordering::Relaxed);
    // Each entity's keys are resolved once, however many groups it has.
    let mut entities: Vec<SpineEntity> = Vec::new();
    for s in selections {
        if entities.iter().any(|e| e.name == s.entity.name) {
            continue;
        }
        let keys = spine_keys(spine, &s.entity)?;
        let mut ids: FxHashMap<String, u32> = FxHashMap::default();
        let rows = keys
            .into_iter()
            .map(|k| {
                k.map(|k| {
                    let next = ids.len() as u32;
                    *ids.entry(k).or_insert(next)
                })
            })
            .collect();
        entities.push(SpineEntity {
            name: s.entity.name.clone(),
            rows,
            ids,
        });
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let joined: Vec<Result<Joined>> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        let mut results: Vec<Option<Result<Joined>>> = selections.iter().map(|_| None).collect();
        let panicked = || Err(HistoryError::Invalid("a join thread panicked".into()));
        for (i, s) in selections.iter().enumerate() {
            let SpineEntity { rows, ids, .. } = entities
                .iter()
                .find(|e| e.name == s.entity.name)
                .expect("every selection's entity was resolved above");
            let times = &times;
            let event_times = plan.event_times.contains(&s.group.name);
            handles.push((
                i,
                scope.spawn(move || {
                    progress.go_on()?;
                    let joined = join_group(storage, s, rows, ids, times, event_times);
                    progress.done.fetch_add(1, Ordering::Relaxed);
                    joined
                }),
            ));
            if handles.len() >= threads {
                let (i, h) = handles.remove(0);
                results[i] = Some(h.join().unwrap_or_else(|_| panicked()));
            }
        }
        for (i, h) in handles {
            results[i] = Some(h.join().unwrap_or_else(|_| panicked()));
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Ok(Joined::default())))
            .collect()
    });
    // Every column by (group, feature): joined, then computed.
    let mut values: FxHashMap<(String, String), ArrayRef> = FxHashMap::default();
    let mut event_times: FxHashMap<String, ArrayRef> = FxHashMap::default();
    for (s, joined) in selections.iter().zip(joined) {
        let joined = joined?;
        for (feature, column) in s.features.iter().zip(joined.features) {
            values.insert((s.group.name.clone(), feature.clone()), column);
        }
        if let Some(column) = joined.event_times {
            event_times.insert(s.group.name.clone(), column);
        }
    }
    for selection in &plan.on_demand {
        progress.go_on()?;
        let computed = crate::on_demand::compute(
            selection,
            spine,
            &times,
            &plan.stored,
            &plan.on_demand,
            &values,
            &event_times,
        )?;
        for (&f, column) in selection.features.iter().zip(computed) {
            let name = selection.group.features[f].name.clone();
            values.insert((selection.group.name.clone(), name), column);
        }
        progress.done.fetch_add(1, Ordering::Relaxed);
    }
    let mut fields: Vec<Arc<Field>> = spine.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = spine.columns().to_vec();
    for (group, feature) in &plan.columns {
        let name = column_name(group, feature);
        if fields.iter().any(|f| *f.name() == name) {
            return Err(HistoryError::Invalid(format!(
                "the output would have two columns `{name}`: the spine has one, or a feature is selected twice"
            )));
        }
        let column = values
            .get(&(group.clone(), feature.clone()))
            .cloned()
            .ok_or_else(|| {
                HistoryError::Invalid(format!("`{group}.{feature}` was not joined or computed"))
            })?;
        fields.push(Arc::new(Field::new(name, column.data_type().clone(), true)));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| HistoryError::Invalid(format!("assembling the training set: {e}")))
}

/// The output column of `group`'s `feature`.
pub fn column_name(group: &str, feature: &str) -> String {
    format!("{group}__{feature}")
}

/// One group's joined columns: each feature's, and its records' event times when asked for.
#[derive(Default)]
struct Joined {
    features: Vec<ArrayRef>,
    event_times: Option<ArrayRef>,
}

/// One group's features for every spine row, and its records' event times if `event_times`.
fn join_group(
    storage: &Storage,
    selection: &Selection,
    rows: &[Option<u32>],
    ids: &FxHashMap<String, u32>,
    times: &[i64],
    event_times: bool,
) -> Result<Joined> {
    let group = &selection.group;
    let max_age_ms = group
        .retention
        .max_age
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let features: Vec<(String, ValueType)> = selection
        .features
        .iter()
        .filter_map(|f| {
            let i = group.feature_index(f)?;
            Some((f.clone(), group.features[i].value_type))
        })
        .collect();
    // Only the dates the spine can reach are read.
    let (Some(&earliest), Some(&latest)) = (times.iter().min(), times.iter().max()) else {
        let time = ValueType::Scalar(ScalarType::Timestamp);
        return Ok(Joined {
            features: features
                .iter()
                .map(|(_, t)| output_array(group.kind, *t, 0))
                .collect(),
            event_times: event_times.then(|| output_array(group.kind, time, 0)),
        });
    };
    let from = match max_age_ms {
        Some(age) => files::day_of(earliest.saturating_sub(age)),
        None => i64::MIN,
    };
    let to = files::day_of(latest);
    let batches = read_group(storage, &group.storage_name(), (from, to), &features)?;
    // The records of the spine's entities, in (entity, time, resolution) order.
    let mut entries: Vec<Entry> = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        let keys = batch.column(0).as_string::<i32>();
        let event_times = batch.column(1).as_primitive::<TimestampMillisecondType>();
        let written = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        let applied = batch.column(3).as_boolean();
        let sequences = batch.column(4).as_primitive::<UInt64Type>();
        for row in 0..batch.num_rows() {
            let Some(&entity) = ids.get(keys.value(row)) else {
                continue;
            };
            entries.push(Entry {
                entity,
                event_time: event_times.value(row),
                applied: applied.value(row),
                written_at: written.value(row),
                sequence: sequences.value(row),
                batch: b as u32,
                row: row as u32,
            });
        }
    }
    entries.sort_unstable_by_key(Entry::order);
    // The spine rows with a key, in (entity, time) order.
    let mut order: Vec<u32> = (0..rows.len() as u32)
        .filter(|&r| rows[r as usize].is_some())
        .collect();
    order.sort_unstable_by_key(|&r| (rows[r as usize], times[r as usize]));

    let null_source = batches.len();
    match group.kind {
        GroupKind::Attribute => {
            // Each spine row's record, or the null row past the last batch.
            let mut picks: Vec<(usize, usize)> = vec![(null_source, 0); rows.len()];
            let mut walk = Walk::new(&entries);
            for &r in &order {
                let (entity, time) = (rows[r as usize].unwrap_or(u32::MAX), times[r as usize]);
                if let Some(e) = walk.until(entity, time).last() {
                    let fresh =
                        max_age_ms.is_none_or(|age| e.event_time >= time.saturating_sub(age));
                    if fresh {
                        picks[r as usize] = (e.batch as usize, e.row as usize);
                    }
                }
            }
            let columns = features
                .iter()
                .enumerate()
                .map(|(i, (_, t))| {
                    let null = new_null_array(&files::column_type(*t), 1);
                    let mut sources: Vec<&dyn Array> = batches
                        .iter()
                        .map(|b| b.column(files::META_COLUMNS + i).as_ref())
                        .collect();
                    sources.push(null.as_ref());
                    arrow_select::interleave::interleave(&sources, &picks).map_err(|e| {
                        HistoryError::Invalid(format!("gathering `{}`: {e}", features[i].0))
                    })
                })
                .collect::<Result<_>>()?;
            let times = event_times.then(|| {
                let picked = picks.iter().map(|&(b, row)| {
                    (b < null_source).then(|| {
                        batches[b]
                            .column(1)
                            .as_primitive::<TimestampMillisecondType>()
                            .value(row)
                    })
                });
                Arc::new(TimestampMillisecondArray::from_iter(picked).with_timezone("UTC"))
                    as ArrayRef
            });
            Ok(Joined {
                features: columns,
                event_times: times,
            })
        }
        GroupKind::Timeseries => {
            let limit = match group.retention.max_records {
                Some(max) => selection.top_n.min(max as usize),
                None => selection.top_n,
            };
            // Each spine row's records, newest first: where they start in `flat`, and how many.
            let mut spans: Vec<(usize, usize)> = vec![(0, 0); rows.len()];
            let mut flat: Vec<(usize, usize)> = Vec::new();
            let mut walk = Walk::new(&entries);
            for &r in &order {
                let (entity, time) = (rows[r as usize].unwrap_or(u32::MAX), times[r as usize]);
                let since = max_age_ms.map(|age| time.saturating_sub(age));
                let begin = flat.len();
                let mut last_time = None;
                for e in walk.until(entity, time).iter().rev() {
                    if since.is_some_and(|s| e.event_time < s) || flat.len() - begin == limit {
                        break;
                    }
                    // Of records with one event time, the last in order is the one kept.
                    if last_time == Some(e.event_time) {
                        continue;
                    }
                    last_time = Some(e.event_time);
                    flat.push((e.batch as usize, e.row as usize));
                }
                spans[r as usize] = (begin, flat.len() - begin);
            }
            // Rows in spine order: the flat picks rearranged.
            let mut ordered: Vec<(usize, usize)> = Vec::with_capacity(flat.len());
            for &(begin, len) in &spans {
                ordered.extend_from_slice(&flat[begin..begin + len]);
            }
            let offsets = OffsetBuffer::<i32>::from_lengths(spans.iter().map(|&(_, len)| len));
            let nulls = NullBuffer::from_iter(spans.iter().map(|&(_, len)| len > 0));
            let times = event_times.then(|| {
                let picked = ordered.iter().map(|&(b, row)| {
                    batches[b]
                        .column(1)
                        .as_primitive::<TimestampMillisecondType>()
                        .value(row)
                });
                let values = Arc::new(
                    TimestampMillisecondArray::from_iter_values(picked).with_timezone("UTC"),
                ) as ArrayRef;
                let field = Arc::new(Field::new_list_field(values.data_type().clone(), true));
                Arc::new(ListArray::new(
                    field,
                    offsets.clone(),
                    values,
                    Some(nulls.clone()),
                )) as ArrayRef
            });
            let columns = features
                .iter()
                .enumerate()
                .map(|(i, (name, t))| {
                    let item = files::column_type(*t);
                    let values: ArrayRef = if batches.is_empty() {
                        new_null_array(&item, 0)
                    } else {
                        let sources: Vec<&dyn Array> = batches
                            .iter()
                            .map(|b| b.column(files::META_COLUMNS + i).as_ref())
                            .collect();
                        arrow_select::interleave::interleave(&sources, &ordered).map_err(|e| {
                            HistoryError::Invalid(format!("gathering `{name}`: {e}"))
                        })?
                    };
                    let field = Arc::new(Field::new_list_field(item, true));
                    let list =
                        ListArray::try_new(field, offsets.clone(), values, Some(nulls.clone()))
                            .map_err(|e| HistoryError::Invalid(format!("listing `{name}`: {e}")))?;
                    Ok(Arc::new(list) as ArrayRef)
                })
                .collect::<Result<_>>()?;
            Ok(Joined {
                features: columns,
                event_times: times,
            })
        }
    }
}

/// Every record of a group's files for event dates in `days`. A file compaction merged away
/// between the listing and the read sends the read back to a new listing.
fn read_group(
    storage: &Storage,
    group: &str,
    days: (i64, i64),
    features: &[(String, ValueType)],
) -> Result<Vec<RecordBatch>> {
    let mut attempt = 0;
    'listing: loop {
        attempt += 1;
        let mut batches = Vec::new();
        for (_, key) in files::list(storage, group, days)? {
            match files::read(storage, &key, features) {
                Ok(read) => batches.extend(read),
                Err(HistoryError::Gone(_)) if attempt < 5 => continue 'listing,
                Err(e) => return Err(e),
            }
        }
        return Ok(batches);
    }
}

/// An all-null output column of a feature of type `t`, for `rows` rows.
fn output_array(kind: GroupKind, t: ValueType, rows: usize) -> ArrayRef {
    let item = files::column_type(t);
    match kind {
        GroupKind::Attribute => new_null_array(&item, rows),
        GroupKind::Timeseries => new_null_array(
            &DataType::List(Arc::new(Field::new_list_field(item, true))),
            rows,
        ),
    }
}
