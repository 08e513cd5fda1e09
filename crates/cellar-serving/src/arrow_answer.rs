//! `/v1/features` answered as an Arrow IPC stream, for clients that asked for it (`Accept:
//! application/vnd.apache.arrow.stream`): a large answer reaches a dataframe without a JSON
//! value per feature on either side, typed by the specs rather than guessed from values.
//!
//! One record batch, one row per entity row: the entity key columns as sent, then per group
//! its features as `<group>__<feature>` (a time series' as lists, newest first), its row status
//! as `<group>__status` and, for stored groups, its event time as `<group>__event_time`
//! (a list for a time series; timestamps in ms, UTC). The schema's metadata names the groups
//! (`cellar.groups`: their names, kinds and features, as JSON) and the logged request id
//! (`cellar.request_id`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{
    new_null_array, Array, ArrayRef, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{Field, Schema};
use cellar_spec::{Value, ValueType};

use crate::error::ServeError;
use crate::service::{FeatureResponse, GroupResult, ResultGroup, Row};

/// The media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Whether an `Accept` header asks for the Arrow answer.
pub fn wants_arrow(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| {
        accept.split(',').any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let refused = parts.any(|p| p.replace(' ', "") == "q=0");
            media.eq_ignore_ascii_case(ARROW_STREAM) && !refused
        })
    })
}

/// The answer as an Arrow IPC stream.
pub fn encode(response: &FeatureResponse) -> Result<Vec<u8>, ServeError> {
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let rows = response
        .entities
        .first()
        .map(|(_, v)| v.len())
        .or_else(|| response.groups.first().map(|g| g.rows.len()))
        .unwrap_or(0);
    for (name, values) in &response.entities {
        let column = key_column(values);
        fields.push(Field::new(name, column.data_type().clone(), true));
        columns.push(column);
    }
    let mut groups = Vec::with_capacity(response.groups.len());
    for group in &response.groups {
        groups.push(serde_json::json!({
            "group": group.group.name(),
            "kind": group.group.kind_name(),
            "features": group.feature_names().collect::<Vec<_>>(),
        }));
        group_columns(group, &mut fields, &mut columns);
    }
    let mut metadata = HashMap::from([(
        "cellar.groups".to_owned(),
        serde_json::Value::from(groups).to_string(),
    )]);
    if let Some(id) = &response.logged_as {
        metadata.insert("cellar.request_id".to_owned(), id.clone());
    }
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| ServeError::Internal(format!("building the Arrow answer: {e}")))?;
    let mut out = Vec::new();
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut out, &schema)
        .map_err(|e| ServeError::Internal(format!("writing the Arrow answer: {e}")))?;
    writer
        .write(&batch)
        .and_then(|()| writer.finish())
        .map_err(|e| ServeError::Internal(format!("writing the Arrow answer: {e}")))?;
    drop(writer);
    Ok(out)
}

/// Entity key values as sent: integers as int64, anything else as text.
fn key_column(values: &[serde_json::Value]) -> ArrayRef {
    if values.iter().all(|v| v.is_i64() || v.is_null()) && values.iter().any(|v| v.is_i64()) {
        return Arc::new(Int64Array::from_iter(values.iter().map(|v| v.as_i64())));
    }
    Arc::new(StringArray::from_iter(values.iter().map(|v| match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    })))
}

fn value_type(group: &ResultGroup, position: usize) -> ValueType {
    match group {
        ResultGroup::Stored(g) => g.spec.features[position].value_type,
        ResultGroup::OnDemand(g) => g.spec.features[position].value_type,
    }
}

/// Lists of `items`, row `i` holding the next `lengths[i]` of them; rows in `absent` are
/// null. On-demand rows answer each value's own status only in JSON; here the row's.
fn list_column(items: ArrayRef, lengths: &[usize], absent: &[bool]) -> ArrayRef {
    let field = Arc::new(Field::new_list_field(items.data_type().clone(), true));
    let nulls = absent
        .iter()
        .any(|a| *a)
        .then(|| arrow_buffer::NullBuffer::from_iter(absent.iter().map(|a| !a)));
    Arc::new(ListArray::new(
        field,
        OffsetBuffer::from_lengths(lengths.iter().copied()),
        items,
        nulls,
    ))
}

fn group_columns(group: &GroupResult, fields: &mut Vec<Field>, columns: &mut Vec<ArrayRef>) {
    let name = group.group.name();
    let mut push = |column_name: String, column: ArrayRef| {
        fields.push(Field::new(column_name, column.data_type().clone(), true));
        columns.push(column);
    };
    let statuses: ArrayRef = Arc::new(StringArray::from_iter_values(
        group.rows.iter().map(|r| r.status().as_str()),
    ));
    let is_series = group.group.kind_name() == "timeseries";
    if is_series {
        let records: Vec<&[cellar_store::Record]> = group
            .rows
            .iter()
            .map(|r| match r {
                Row::Series { records } => records.as_slice(),
                _ => &[],
            })
            .collect();
        let lengths: Vec<usize> = records.iter().map(|r| r.len()).collect();
        let absent: Vec<bool> = lengths.iter().map(|n| *n == 0).collect();
        for (j, &position) in group.features.iter().enumerate() {
            let t = value_type(&group.group, position);
            let items = cellar_expr::arrow::stored_column(
                t,
                records
                    .iter()
                    .flat_map(|rs| rs.iter().map(move |r| r.value(position))),
            );
            push(
                format!("{name}__{}", group.group.feature_name(group.features[j])),
                list_column(items, &lengths, &absent),
            );
        }
        push(format!("{name}__status"), statuses);
        let times: ArrayRef = Arc::new(
            TimestampMillisecondArray::from_iter_values(
                records
                    .iter()
                    .flat_map(|rs| rs.iter().map(|r| r.event_time)),
            )
            .with_timezone("UTC"),
        );
        push(
            format!("{name}__event_time"),
            list_column(times, &lengths, &absent),
        );
        return;
    }
    for (j, &position) in group.features.iter().enumerate() {
        let t = value_type(&group.group, position);
        let column = if group.rows.is_empty() {
            new_null_array(&cellar_expr::arrow::stored_type(t), 0)
        } else {
            cellar_expr::arrow::stored_column(
                t,
                group.rows.iter().map(|row| match row {
                    Row::Record {
                        record: Some(record),
                        ..
                    } => record.value(position),
                    Row::Computed { values } => match values.get(j) {
                        Some(Ok(v)) => v,
                        _ => &Value::Null,
                    },
                    _ => &Value::Null,
                }),
            )
        };
        push(
            format!("{name}__{}", group.group.feature_name(position)),
            column,
        );
    }
    push(format!("{name}__status"), statuses);
    if let ResultGroup::Stored(_) = group.group {
        let times: ArrayRef = Arc::new(
            TimestampMillisecondArray::from_iter(group.rows.iter().map(|row| match row {
                Row::Record {
                    record: Some(record),
                    ..
                } => Some(record.event_time),
                _ => None,
            }))
            .with_timezone("UTC"),
        );
        push(format!("{name}__event_time"), times);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arrow_answer_is_chosen_by_the_accept_header() {
        assert!(wants_arrow(Some(ARROW_STREAM)));
        assert!(wants_arrow(Some(
            "application/vnd.apache.arrow.stream, application/json;q=0.5"
        )));
        assert!(!wants_arrow(Some("application/json")));
        assert!(!wants_arrow(Some(
            "application/vnd.apache.arrow.stream;q=0"
        )));
        assert!(!wants_arrow(None));
    }
}
