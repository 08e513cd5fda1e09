//! Served-feature logs in the history: the answers a feature service logged, kept like a
//! group's records under `_served.<service>`, one record per answered row with its event time
//! the time it was served. Labels joined to them give a training set of exactly what the
//! model saw; recomputing them from the history shows online/offline skew.
//!
//! A logged row's columns: `request_id`, `row` (its place in the request), the entity key
//! fields as text under their own names, the request data fields as text as
//! `request__<field>`, each feature as `<group>__<feature>` (a time series as the list it
//! served) and each group's status as `<group>__status`.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::{new_null_array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use rustc_hash::FxHashMap;

use crate::error::{HistoryError, Result};
use crate::files;
use crate::storage::Storage;

pub const REQUEST_ID: &str = "request_id";
pub const ROW: &str = "row";
/// The time a logged row was served, in what [`read`] gives.
pub const SERVED_AT: &str = "served_at";

/// Where a service's logged answers are kept (a name no spec can give a group).
pub fn storage(service: &str) -> String {
    format!("_served.{service}")
}

/// The column a request data field is logged in.
pub fn request_column(field: &str) -> String {
    format!("request__{field}")
}

/// The column a group's row status is logged in.
pub fn status_column(group: &str) -> String {
    format!("{group}__status")
}

/// Every row `service` logged with a serving time in `[from, to)` (epoch ms; either side
/// open), oldest first: `served_at`, then the logged columns (a column some files lack is null
/// in their rows).
pub fn read(
    history: &Storage,
    service: &str,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<RecordBatch> {
    let days = (
        from.map_or(i64::MIN, files::day_of),
        to.map_or(i64::MAX, |t| files::day_of(t.saturating_sub(1))),
    );
    // A file compaction merged away between the listing and the read sends the read back to
    // a new listing, which holds the merged file.
    let mut attempt = 0;
    let batches = 'listing: loop {
        attempt += 1;
        let mut batches: Vec<RecordBatch> = Vec::new();
        for (_, key) in files::list(history, &storage(service), days)? {
            match files::read_batches(history, &key) {
                Ok(read) => batches.extend(read),
                Err(HistoryError::Gone(_)) if attempt < 5 => continue 'listing,
                Err(e) => return Err(e),
            }
        }
        break batches;
    };
    // The union of the files' columns, in the order first seen; `served_at` for event_time.
    let mut fields: Vec<Arc<Field>> = vec![Arc::new(Field::new(
        SERVED_AT,
        DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, Some("UTC".into())),
        false,
    ))];
    let skipped = [
        files::ENTITY_KEY,
        files::EVENT_TIME,
        files::WRITTEN_AT,
        files::APPLIED,
        files::SEQUENCE,
    ];
    let mut types: FxHashMap<String, DataType> = FxHashMap::default();
    for batch in &batches {
        for field in batch.schema().fields() {
            if skipped.contains(&field.name().as_str()) {
                continue;
            }
            match types.get(field.name()) {
                None => {
                    types.insert(field.name().clone(), field.data_type().clone());
                    fields.push(Arc::new(Field::new(
                        field.name(),
                        field.data_type().clone(),
                        true,
                    )));
                }
                Some(t) if t != field.data_type() => {
                    return Err(HistoryError::Invalid(format!(
                        "the logs of `{service}` hold `{}` as {t} and as {}: the service changed \
                         it; read a period of one or the other",
                        field.name(),
                        field.data_type()
                    )))
                }
                Some(_) => {}
            }
        }
    }
    let schema = Arc::new(Schema::new(fields));
    let mut aligned = Vec::with_capacity(batches.len());
    for batch in &batches {
        let times = batch
            .column_by_name(files::EVENT_TIME)
            .ok_or_else(|| HistoryError::Corrupt("a logged file has no event_time".into()))?;
        let keep = times
            .as_primitive::<TimestampMillisecondType>()
            .iter()
            .map(|t| t.is_some_and(|t| from.is_none_or(|f| t >= f) && to.is_none_or(|e| t < e)));
        let keep = arrow_array::BooleanArray::from(keep.collect::<Vec<_>>());
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| {
                let name = if f.name() == SERVED_AT {
                    files::EVENT_TIME
                } else {
                    f.name().as_str()
                };
                batch
                    .column_by_name(name)
                    .cloned()
                    .unwrap_or_else(|| new_null_array(f.data_type(), batch.num_rows()))
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .and_then(|b| arrow_select::filter::filter_record_batch(&b, &keep))
            .map_err(|e| HistoryError::Corrupt(format!("aligning logged rows: {e}")))?;
        aligned.push(batch);
    }
    let all = arrow_select::concat::concat_batches(&schema, &aligned)
        .map_err(|e| HistoryError::Invalid(format!("joining logged rows: {e}")))?;
    // Oldest first, then by request and row.
    let served = all.column(0).as_primitive::<TimestampMillisecondType>();
    let requests = all.column_by_name(REQUEST_ID).map(|c| c.as_string::<i32>());
    let rows = all
        .column_by_name(ROW)
        .map(|c| c.as_primitive::<arrow_array::types::Int64Type>());
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_by_key(|&i| {
        let i = i as usize;
        (
            served.value(i),
            requests.map(|r| r.value(i)),
            rows.map(|r| r.value(i)),
        )
    });
    arrow_select::take::take_record_batch(&all, &arrow_array::UInt32Array::from(order))
        .map_err(|e| HistoryError::Invalid(format!("sorting logged rows: {e}")))
}

/// Each of `labels`' rows with the answer logged for it: the one logged under its
/// `request_id` (and, when the labels hold key columns the log has, for the same keys), or
/// without `request_id` in the labels, the newest logged for its keys at or before its
/// `timestamp`. Labels' columns first, then the logged `served_at`, `request_id` (when the
/// labels lack it) and feature and status columns; a labels row nothing was logged for gets
/// nulls.
pub fn join_labels(
    logged: &RecordBatch,
    labels: &RecordBatch,
    timestamp: &str,
) -> Result<RecordBatch> {
    let by_request = labels.column_by_name(REQUEST_ID).is_some();
    // Key columns: logged columns that are not features, statuses, request data or meta,
    // and that the labels hold.
    let keys: Vec<String> = logged
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| {
            ![SERVED_AT, REQUEST_ID, ROW].contains(&n.as_str())
                && !n.contains("__")
                && labels.column_by_name(n).is_some()
        })
        .collect();
    if !by_request && keys.is_empty() {
        return Err(HistoryError::Invalid(format!(
            "the labels need a `{REQUEST_ID}` column, or the entity key columns the answers were \
             logged with ({}) and a `{timestamp}` column",
            logged
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .filter(|n| ![SERVED_AT, REQUEST_ID, ROW].contains(n) && !n.contains("__"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let text = |batch: &RecordBatch, name: &str| -> Result<Vec<Option<String>>> {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| HistoryError::Invalid(format!("no column `{name}`")))?;
        let column = arrow_cast::cast(column, &DataType::Utf8)
            .map_err(|e| HistoryError::Invalid(format!("`{name}` cannot be read as text: {e}")))?;
        Ok(column
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect())
    };
    let join_key = |batch: &RecordBatch| -> Result<Vec<Option<String>>> {
        let mut parts: Vec<Vec<Option<String>>> = Vec::new();
        if by_request {
            parts.push(text(batch, REQUEST_ID)?);
        }
        for k in &keys {
            parts.push(text(batch, k)?);
        }
        Ok((0..batch.num_rows())
            .map(|row| {
                let mut key = String::new();
                for p in &parts {
                    key.push_str(p[row].as_deref()?);
                    key.push('\u{1f}');
                }
                Some(key)
            })
            .collect())
    };
    let logged_keys = join_key(logged)?;
    let label_keys = join_key(labels)?;
    let served: Vec<i64> = logged
        .column(0)
        .as_primitive::<TimestampMillisecondType>()
        .values()
        .to_vec();
    // Logged rows by key, oldest first (the log is sorted by serving time).
    let mut rows: FxHashMap<&str, Vec<u32>> = FxHashMap::default();
    for (row, key) in logged_keys.iter().enumerate() {
        if let Some(key) = key {
            rows.entry(key.as_str()).or_default().push(row as u32);
        }
    }
    let times = if by_request {
        None
    } else {
        Some(crate::training::spine_times(labels, timestamp)?)
    };
    let mut picks: Vec<Option<u32>> = Vec::with_capacity(labels.num_rows());
    for (row, key) in label_keys.iter().enumerate() {
        let candidates = key.as_deref().and_then(|k| rows.get(k));
        let pick =
            match (candidates, &times) {
                (None, _) => None,
                (Some(c), None) if c.len() > 1 => {
                    return Err(HistoryError::Invalid(format!(
                    "labels row {row}: request `{}` logged {} rows; add the entity key columns \
                     to the labels to tell them apart",
                    key.as_deref().unwrap_or("").split('\u{1f}').next().unwrap_or(""),
                    c.len()
                )))
                }
                (Some(c), None) => c.first().copied(),
                (Some(c), Some(times)) => c
                    .iter()
                    .rev()
                    .find(|&&r| served[r as usize] <= times[row])
                    .copied(),
            };
        picks.push(pick);
    }
    let indices = arrow_array::UInt32Array::from(picks);
    let mut fields: Vec<Arc<Field>> = labels.schema().fields().iter().cloned().collect();
    let mut columns: Vec<ArrayRef> = labels.columns().to_vec();
    for (field, column) in logged.schema().fields().iter().zip(logged.columns()) {
        let name = field.name();
        if labels.column_by_name(name).is_some() || name == ROW {
            continue;
        }
        let taken = arrow_select::take::take(column.as_ref(), &indices, None)
            .map_err(|e| HistoryError::Invalid(format!("gathering `{name}`: {e}")))?;
        fields.push(Arc::new(Field::new(name, field.data_type().clone(), true)));
        columns.push(taken);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| HistoryError::Invalid(format!("assembling the training set: {e}")))
}
