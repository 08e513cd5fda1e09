//! On-demand groups on the serving path: each feature's expression compiled once per applied
//! repo against the inputs it reads, then evaluated per request over every row at once.

use std::collections::BTreeSet;

use cellar_expr::cells::CellColumn;
use cellar_expr::column::Cell;
use cellar_expr::{ExprError, OnDemandExpressions, Outcome};
use cellar_spec::{FeatureRepo, OnDemandGroup, ScalarType, Value, ValueType};

pub use cellar_expr::InputSource;

use std::sync::Arc;

use arrow_array::ArrayRef;

use crate::service::Row;
use crate::sources::{SourceClient, SourceMetrics};

/// One input's values for every row of a read.
pub enum InputColumn<'r> {
    /// Each row's value, or why the row has none: a feature reading it gets that error.
    Values(Vec<Result<Value, String>>),
    /// Built straight from what was read (stored records), every row with a value or null.
    Array(ArrayRef),
    /// The same, as cells borrowed from what was read, for a read whose features are all
    /// walked a row at a time.
    Cells(CellColumn<'r>),
}

/// An on-demand group ready to serve.
#[derive(Debug)]
pub struct ServedOnDemand {
    pub spec: OnDemandGroup,
    compiled: Result<OnDemandExpressions, String>,
    /// One client per external source of the spec, in its order.
    clients: Vec<Arc<SourceClient>>,
    /// The other on-demand groups the features read, each once: known at compile time, asked
    /// for by every request.
    on_demand_inputs: Vec<String>,
    /// The stored groups the features read, each once.
    stored_inputs: Vec<String>,
    /// The external sources the features read (indices into the spec's `sources`).
    sources_read: Vec<usize>,
}

impl ServedOnDemand {
    /// Compiles every feature of `spec` against `repo`. Applied repos were checked, so this
    /// fails only for a registry written by an older version; the group then answers every
    /// value with the reason.
    pub fn new(
        spec: &OnDemandGroup,
        repo: &FeatureRepo,
        metrics: &SourceMetrics,
    ) -> ServedOnDemand {
        let compiled = OnDemandExpressions::compile(spec, repo)
            .map_err(|e| format!("on-demand group `{}` cannot be served: {e}", spec.name));
        // What the features read, each once: known at compile time, asked for by every request.
        let (mut on_demand_inputs, mut stored_inputs, mut sources_read) =
            (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for (source, _) in compiled.iter().flat_map(|c| c.sources.iter()) {
            match source {
                InputSource::OnDemand { group, .. } => on_demand_inputs.insert(group.clone()),
                InputSource::Stored { group, .. } | InputSource::EventTime { group } => {
                    stored_inputs.insert(group.clone())
                }
                InputSource::External { source, .. } => sources_read.insert(*source),
                InputSource::Request(_) | InputSource::Key(_) => false,
            };
        }
        let (on_demand_inputs, stored_inputs, sources_read) = (
            on_demand_inputs.into_iter().collect(),
            stored_inputs.into_iter().collect(),
            sources_read.into_iter().collect(),
        );
        ServedOnDemand {
            spec: spec.clone(),
            compiled,
            on_demand_inputs,
            stored_inputs,
            sources_read,
            clients: spec
                .sources
                .iter()
                .map(|s| Arc::new(SourceClient::new(s, metrics.clone())))
                .collect(),
        }
    }

    /// The external sources the features read (indices into the spec's `sources`).
    pub fn sources_read(&self) -> &[usize] {
        &self.sources_read
    }

    pub fn client(&self, source: usize) -> Option<&Arc<SourceClient>> {
        self.clients.get(source)
    }

    /// The stored groups whose records the features read.
    pub fn stored_inputs(&self) -> &[String] {
        &self.stored_inputs
    }

    /// The other on-demand groups whose features the features read.
    pub fn on_demand_inputs(&self) -> &[String] {
        &self.on_demand_inputs
    }

    /// The request data fields and entity key columns the features read, with their types.
    pub fn request_inputs(&self) -> impl Iterator<Item = &(InputSource, ValueType)> {
        self.compiled
            .iter()
            .flat_map(|c| c.sources.iter())
            .filter(|(s, _)| matches!(s, InputSource::Request(_) | InputSource::Key(_)))
    }

    /// The features at `selected` (positions in the spec) for `rows` rows. `column` gives each
    /// input's column, one value per row; as cells when its third argument is true (every
    /// selected feature is walked a row at a time, which reads nothing else), otherwise as
    /// values or an Arrow array.
    pub fn evaluate<'r>(
        &self,
        selected: &[usize],
        rows: usize,
        now_ms: i64,
        mut column: impl FnMut(&InputSource, ValueType, bool) -> InputColumn<'r>,
    ) -> Vec<Row> {
        let compiled = match &self.compiled {
            Ok(c) => c,
            Err(e) => {
                return (0..rows)
                    .map(|_| Row::Computed {
                        values: vec![Err(e.clone()); selected.len()],
                    })
                    .collect()
            }
        };
        let walked = selected
            .iter()
            .all(|&f| compiled.expressions[f].walks(rows));
        let mut given: Vec<InputColumn<'r>> = compiled
            .sources
            .iter()
            .map(|(source, t)| column(source, *t, walked))
            .collect();
        let evaluated = if walked {
            walk(compiled, selected, rows, now_ms, &mut given)
        } else {
            evaluate(compiled, selected, rows, now_ms, &given)
        };
        let evaluated = match evaluated {
            Ok(evaluated) => evaluated,
            Err(e) => {
                return (0..rows)
                    .map(|_| Row::Computed {
                        values: vec![Err(e.to_string()); selected.len()],
                    })
                    .collect()
            }
        };
        let mut by_feature: Vec<std::vec::IntoIter<Outcome>> = selected
            .iter()
            .zip(evaluated)
            .map(|(&f, mut outcomes)| {
                for &input in &compiled.reads[f] {
                    let InputColumn::Values(values) = &given[input] else {
                        continue;
                    };
                    for (row, value) in values.iter().enumerate() {
                        if let (Err(e), Some(outcome)) = (value, outcomes.get_mut(row)) {
                            if outcome.is_ok() {
                                *outcome = Err(e.clone());
                            }
                        }
                    }
                }
                outcomes.into_iter()
            })
            .collect();
        (0..rows)
            .map(|_| Row::Computed {
                values: by_feature
                    .iter_mut()
                    .map(|outcomes| outcomes.next().unwrap_or(Ok(Value::Null)))
                    .collect(),
            })
            .collect()
    }
}

/// The features at `selected` over the inputs as one Arrow batch.
fn evaluate(
    compiled: &OnDemandExpressions,
    selected: &[usize],
    rows: usize,
    now_ms: i64,
    given: &[InputColumn<'_>],
) -> Result<Vec<Vec<Outcome>>, ExprError> {
    let columns = compiled
        .sources
        .iter()
        .zip(given)
        .map(|((_, t), given)| match given {
            InputColumn::Values(values) => Ok(cellar_expr::arrow::column(
                *t,
                values.iter().map(|v| v.as_ref().unwrap_or(&Value::Null)),
            )),
            InputColumn::Array(array) => Ok(Arc::clone(array)),
            // Cells are given only when asked for; nulls in their place would pass for
            // values not found.
            InputColumn::Cells(_) => Err(ExprError(
                "building the inputs: cells given where columns were asked for".to_owned(),
            )),
        })
        .collect::<Result<_, _>>()?;
    let batch = compiled.scope.rows(columns, rows, now_ms)?;
    Ok(selected
        .iter()
        .map(|&f| compiled.expressions[f].evaluate_in(&batch))
        .collect())
}

/// The features at `selected`, every one walked a row at a time over the inputs' cells.
fn walk(
    compiled: &OnDemandExpressions,
    selected: &[usize],
    rows: usize,
    now_ms: i64,
    given: &mut [InputColumn<'_>],
) -> Result<Vec<Vec<Outcome>>, ExprError> {
    let taken: Vec<Option<CellColumn<'_>>> = given
        .iter_mut()
        .map(|g| match g {
            InputColumn::Cells(cells) => Some(std::mem::take(cells)),
            _ => None,
        })
        .collect();
    let columns = compiled
        .sources
        .iter()
        .zip(given.iter())
        .zip(taken)
        .map(|(((_, t), given), taken)| match given {
            InputColumn::Values(values) => CellColumn::of_values(
                *t,
                values.iter().map(|v| v.as_ref().unwrap_or(&Value::Null)),
            ),
            InputColumn::Array(array) => CellColumn::arrow(array),
            InputColumn::Cells(_) => taken.unwrap_or_default(),
        })
        .collect();
    let cells = compiled.scope.cells(columns, rows, now_ms)?;
    Ok(selected
        .iter()
        .map(|&f| {
            compiled.expressions[f]
                .evaluate_cells(&cells)
                .unwrap_or_else(|| vec![Err("the feature cannot be walked".to_owned()); rows])
        })
        .collect())
}

/// The column of the stored feature at `position` over `rows`: each row's value, or for a
/// time series (`series`) the list of its records' values, newest first, nulls left out; null
/// where nothing was found. Built from the records' values without copying them into
/// intermediate values.
pub fn stored_column(rows: &[Row], position: usize, t: ValueType, series: bool) -> ArrayRef {
    match t {
        ValueType::List(element) if series => cellar_expr::arrow::list_column(
            element,
            series_len(rows),
            rows.iter().map(|row| match row {
                Row::Series { records } if !records.is_empty() => Some(
                    records
                        .iter()
                        .map(move |r| r.value(position))
                        .filter(|v| !matches!(v, Value::Null)),
                ),
                _ => None,
            }),
        ),
        t => cellar_expr::arrow::column(
            t,
            rows.iter().map(|row| match row {
                Row::Record {
                    record: Some(r), ..
                } => r.value(position),
                _ => &Value::Null,
            }),
        ),
    }
}

/// The event times an on-demand input takes from a stored group's rows: each record's, or for
/// a time series (`series`) the list of its records', newest first; null where nothing was
/// found.
pub fn event_time_column(rows: &[Row], series: bool) -> ArrayRef {
    if series {
        cellar_expr::arrow::time_list_column(
            series_len(rows),
            rows.iter().map(|row| match row {
                Row::Series { records } if !records.is_empty() => {
                    Some(records.iter().map(|r| r.event_time))
                }
                _ => None,
            }),
        )
    } else {
        cellar_expr::arrow::time_column(rows.iter().map(|row| match row {
            Row::Record {
                record: Some(record),
                ..
            } => Some(record.event_time),
            _ => None,
        }))
    }
}

/// [`stored_column`] as cells borrowed from the records, for a walked read.
pub fn stored_cells(rows: &[Row], position: usize, t: ValueType, series: bool) -> CellColumn<'_> {
    match t {
        ValueType::List(_) if series => {
            let mut column = CellColumn::with_capacity(t, rows.len(), series_len(rows));
            for row in rows {
                match row {
                    Row::Series { records } if !records.is_empty() => column.push_list(
                        records
                            .iter()
                            .map(move |r| r.value(position))
                            .filter(|v| !matches!(v, Value::Null)),
                    ),
                    _ => column.push_cell(Cell::Null),
                }
            }
            column
        }
        t => CellColumn::of_values(
            t,
            rows.iter().map(|row| match row {
                Row::Record {
                    record: Some(r), ..
                } => r.value(position),
                _ => &Value::Null,
            }),
        ),
    }
}

/// [`event_time_column`] as cells, for a walked read.
pub fn event_time_cells(rows: &[Row], series: bool) -> CellColumn<'_> {
    let timestamp = ScalarType::Timestamp;
    let mut column = if series {
        CellColumn::with_capacity(ValueType::List(timestamp), rows.len(), series_len(rows))
    } else {
        CellColumn::with_capacity(ValueType::Scalar(timestamp), rows.len(), 0)
    };
    for row in rows {
        match row {
            Row::Series { records } if series && !records.is_empty() => {
                column.push_times(records.iter().map(|r| r.event_time))
            }
            Row::Record {
                record: Some(record),
                ..
            } if !series => column.push_cell(Cell::Time(record.event_time)),
            _ => column.push_cell(Cell::Null),
        }
    }
    column
}

/// How many records the time series rows hold in all.
fn series_len(rows: &[Row]) -> usize {
    rows.iter()
        .map(|row| match row {
            Row::Series { records } => records.len(),
            _ => 0,
        })
        .sum()
}
