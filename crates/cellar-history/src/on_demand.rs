//! On-demand features in training sets: the group's expressions, compiled as serving compiles
//! them, evaluated over each spine row's inputs as they were at its timestamp. Request data and
//! entity keys come from the spine's columns of the same names, stored features from the as-of
//! join (a time series' values as lists, newest first, nulls left out, as serving gives them),
//! and `now()` is the row's timestamp.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    new_null_array, Array, ArrayRef, BooleanArray, ListArray, RecordBatch,
    TimestampMillisecondArray,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::DataType;
use cellar_expr::InputSource;
use cellar_spec::{GroupKind, Value};
use rustc_hash::FxHashMap;

use crate::error::{HistoryError, Result};
use crate::plan::OnDemandSelection;
use crate::training::Selection;

/// Rows evaluated at once: large enough for DataFusion's kernels, small enough that the
/// inputs' slices stay in cache.
const CHUNK_ROWS: usize = 64 * 1024;

/// The selection's features (in its order) for every spine row. `values` holds every joined
/// stored feature and every on-demand feature computed before, by (group, feature);
/// `event_times` the joined groups' event times.
pub(crate) fn compute(
    selection: &OnDemandSelection,
    spine: &RecordBatch,
    times: &[i64],
    stored: &[Selection],
    on_demand: &[OnDemandSelection],
    values: &FxHashMap<(String, String), ArrayRef>,
    event_times: &FxHashMap<String, ArrayRef>,
) -> Result<Vec<ArrayRef>> {
    let group = &selection.group;
    let expressions = &selection.expressions;
    let rows = spine.num_rows();
    let read: BTreeSet<usize> = selection
        .features
        .iter()
        .flat_map(|&f| expressions.reads[f].iter().copied())
        .collect();
    let missing = |what: String| {
        HistoryError::Invalid(format!(
            "on-demand group `{}` reads {what}, which the training set does not hold",
            group.name
        ))
    };
    let mut inputs: Vec<ArrayRef> = Vec::with_capacity(expressions.sources.len());
    for (i, (source, t)) in expressions.sources.iter().enumerate() {
        let Some(data_type) = cellar_expr::arrow::data_type(*t) else {
            return Err(HistoryError::Invalid(format!(
                "on-demand group `{}` reads a {t}, which expressions cannot read",
                group.name
            )));
        };
        // Inputs only features not computed here read stand as nulls.
        if !read.contains(&i) {
            inputs.push(new_null_array(&data_type, rows));
            continue;
        }
        let column = match source {
            InputSource::Request(name) | InputSource::Key(name) => {
                let what = if matches!(source, InputSource::Request(_)) {
                    "request data field"
                } else {
                    "entity key"
                };
                let column = spine.column_by_name(name).ok_or_else(|| {
                    HistoryError::Invalid(format!(
                        "on-demand group `{}` reads the {what} `{name}`: the spine needs a \
                         column `{name}` holding it for each row",
                        group.name
                    ))
                })?;
                arrow_cast::cast(column, &data_type).map_err(|e| {
                    HistoryError::Invalid(format!(
                        "the spine's `{name}` is {}, which cannot be read as the {t} `{}` \
                         reads: {e}",
                        column.data_type(),
                        group.name
                    ))
                })?
            }
            InputSource::Stored { group: g, position } => {
                let selection = stored
                    .iter()
                    .find(|s| s.group.name == *g)
                    .ok_or_else(|| missing(format!("group `{g}`")))?;
                let name = &selection.group.features[*position].name;
                let column = values
                    .get(&(g.clone(), name.clone()))
                    .ok_or_else(|| missing(format!("`{g}.{name}`")))?;
                match selection.group.kind {
                    GroupKind::Attribute => Arc::clone(column),
                    GroupKind::Timeseries => without_null_items(column)?,
                }
            }
            InputSource::EventTime { group: g } => Arc::clone(
                event_times
                    .get(g)
                    .ok_or_else(|| missing(format!("the event times of `{g}`")))?,
            ),
            InputSource::OnDemand { group: g, feature } => {
                let name = on_demand
                    .iter()
                    .find(|s| s.group.name == *g)
                    .and_then(|s| s.group.features.get(*feature))
                    .map(|f| f.name.clone())
                    .ok_or_else(|| missing(format!("a feature of on-demand group `{g}`")))?;
                let column = values
                    .get(&(g.clone(), name.clone()))
                    .ok_or_else(|| missing(format!("`{g}.{name}`")))?;
                Arc::clone(column)
            }
            // Refused when the plan was made: read only by features not computed here.
            InputSource::External { .. } => new_null_array(&data_type, rows),
        };
        if column.data_type() != &data_type {
            return Err(HistoryError::Invalid(format!(
                "on-demand group `{}`: input {} is {}, expected {data_type}",
                group.name,
                i,
                column.data_type()
            )));
        }
        inputs.push(column);
    }
    let now: ArrayRef =
        Arc::new(TimestampMillisecondArray::from(times.to_vec()).with_timezone("UTC"));
    let mut chunks: Vec<Vec<ArrayRef>> = vec![Vec::new(); selection.features.len()];
    let mut start = 0;
    while start < rows {
        let len = CHUNK_ROWS.min(rows - start);
        let batch = expressions
            .scope
            .batch_at(
                inputs.iter().map(|c| c.slice(start, len)).collect(),
                len,
                now.slice(start, len),
            )
            .map_err(|e| HistoryError::Invalid(format!("on-demand group `{}`: {e}", group.name)))?;
        for (out, &f) in chunks.iter_mut().zip(&selection.features) {
            let expression = &expressions.expressions[f];
            let t = group.features[f].value_type;
            // A batch that fails (one row dividing by zero) is evaluated row by row: that
            // row's value is null, as serving answers it with an error status.
            let column = match expression.evaluate(&batch) {
                Ok(column) => column,
                Err(_) => {
                    let outcomes = expression.evaluate_rows(&batch);
                    cellar_expr::arrow::column(
                        t,
                        outcomes.iter().map(|o| o.as_ref().unwrap_or(&Value::Null)),
                    )
                }
            };
            out.push(column);
        }
        start += len;
    }
    selection
        .features
        .iter()
        .zip(chunks)
        .map(|(&f, parts)| {
            let t = group.features[f].value_type;
            if parts.is_empty() {
                let data_type = cellar_expr::arrow::data_type(t).unwrap_or(DataType::Utf8);
                return Ok(new_null_array(&data_type, 0));
            }
            let parts: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
            arrow_select::concat::concat(&parts).map_err(|e| {
                HistoryError::Invalid(format!("`{}.{}`: {e}", group.name, group.features[f].name))
            })
        })
        .collect()
}

/// A list column with its null items left out (serving leaves a time series' null values
/// out of the lists expressions read); rows that were null stay null.
pub(crate) fn without_null_items(column: &ArrayRef) -> Result<ArrayRef> {
    let list = column.as_list::<i32>();
    let items = list.values();
    let Some(nulls) = items.logical_nulls() else {
        return Ok(Arc::clone(column));
    };
    let keep = BooleanArray::new(nulls.inner().clone(), None);
    let lengths = list.offsets().windows(2).map(|w| {
        (w[0] as usize..w[1] as usize)
            .filter(|&i| nulls.is_valid(i))
            .count()
    });
    let offsets = OffsetBuffer::<i32>::from_lengths(lengths);
    let kept = arrow_select::filter::filter(items.as_ref(), &keep)
        .map_err(|e| HistoryError::Invalid(format!("dropping null items: {e}")))?;
    let DataType::List(field) = column.data_type() else {
        return Err(HistoryError::Invalid(format!(
            "expected a list column, found {}",
            column.data_type()
        )));
    };
    let out = ListArray::try_new(Arc::clone(field), offsets, kept, list.nulls().cloned())
        .map_err(|e| HistoryError::Invalid(format!("dropping null items: {e}")))?;
    Ok(Arc::new(out))
}
