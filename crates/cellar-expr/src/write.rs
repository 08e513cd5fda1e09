//! Write-time expressions: stored features an ingestion computes, when it writes an event or a
//! row, from the features it reads from that event's or row's fields, in the language
//! on-demand features are computed in (Feast's transformation on write).

use std::sync::Arc;

use arrow_array::{ArrayRef, TimestampMillisecondArray};
use cellar_spec::{write_inputs, FeatureExpr, FeatureGroup, Ingestion, Value, WriteInput};

use crate::arrow::UTC;
use crate::{Expression, RowBatch, Scope};

/// The compiled write-time expressions of one ingestion.
#[derive(Debug, Clone)]
pub struct WriteExpressions {
    scope: Scope,
    /// Where each input of the scope (in its order) is read from.
    reads: Vec<WriteInput>,
    features: Vec<Computed>,
}

#[derive(Debug, Clone)]
struct Computed {
    position: usize,
    name: String,
    expression: Expression,
}

/// For one row: each computed feature as (position in the group, value), or why one of them
/// could not be computed (the feature named).
pub type ComputedRow = Result<Vec<(usize, Value)>, String>;

impl WriteExpressions {
    /// The write-time expressions of `ingestion` (which writes `group`), compiled once; `None`
    /// when it has none. An error names the feature whose expression does not compile.
    pub fn compile(
        group: &FeatureGroup,
        ingestion: &Ingestion,
    ) -> Result<Option<WriteExpressions>, String> {
        let written: Vec<(&str, &str)> = ingestion
            .features
            .iter()
            .filter_map(|m| match &m.expr {
                FeatureExpr::Expression(text) => Some((m.feature.as_str(), text.as_str())),
                _ => None,
            })
            .collect();
        if written.is_empty() {
            return Ok(None);
        }
        let all = write_inputs(group, ingestion);
        let mut written_at = Vec::with_capacity(written.len());
        for (name, text) in written {
            let position = group
                .feature_index(name)
                .ok_or_else(|| format!("group `{}` has no feature `{name}`", group.name))?;
            written_at.push((name, text, position));
        }
        let compile = |scope: &Scope| {
            written_at
                .iter()
                .map(|&(name, text, position)| {
                    Expression::compile(text, scope, group.features[position].value_type)
                        .map(|expression| Computed {
                            position,
                            name: name.to_owned(),
                            expression,
                        })
                        .map_err(|e| format!("feature `{name}`: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        // First against every input, to learn which are read; then against those alone, so
        // that each write builds only the columns its expressions need.
        let every =
            Scope::new(all.iter().map(|(input, _)| input.clone()).collect()).map_err(|e| e.0)?;
        let mut read = std::collections::BTreeSet::new();
        for computed in compile(&every)? {
            read.extend(computed.expression.inputs_read(&every));
        }
        let scope = Scope::new(read.iter().map(|&i| every.inputs()[i].clone()).collect())
            .map_err(|e| e.0)?;
        let reads = scope
            .inputs()
            .iter()
            .filter_map(|input| all.iter().find(|(i, _)| i == input).map(|(_, read)| *read))
            .collect();
        let features = compile(&scope)?;
        Ok(Some(WriteExpressions {
            scope,
            reads,
            features,
        }))
    }

    /// The positions of the features computed.
    pub fn positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.features.iter().map(|f| f.position)
    }

    /// Computes the features of `rows` rows at once: `value(row, position)` is a feature the
    /// ingestion read from a field, `event_time(row)` the row's event time, which is also its
    /// `now()`, so that writing the same event again gives the same values.
    pub fn compute<'a>(
        &self,
        rows: usize,
        value: impl Fn(usize, usize) -> &'a Value,
        event_time: impl Fn(usize) -> i64,
    ) -> Vec<ComputedRow> {
        let times: ArrayRef = Arc::new(
            TimestampMillisecondArray::from_iter_values((0..rows).map(&event_time))
                .with_timezone(UTC),
        );
        // A feature read both by its name and qualified by its group is built once.
        let mut built: Vec<(WriteInput, ArrayRef)> = Vec::new();
        let mut columns = Vec::with_capacity(self.reads.len());
        for (input, read) in self.scope.inputs().iter().zip(&self.reads) {
            if let Some((_, column)) = built.iter().find(|(r, _)| r == read) {
                columns.push(Arc::clone(column));
                continue;
            }
            let column = match *read {
                WriteInput::EventTime => Arc::clone(&times),
                WriteInput::Feature(position) => crate::arrow::column(
                    input.value_type,
                    (0..rows).map(|row| value(row, position)),
                ),
            };
            built.push((*read, Arc::clone(&column)));
            columns.push(column);
        }
        let batch = match self.scope.batch_at(columns, rows, times) {
            Ok(batch) => batch,
            Err(e) => return vec![Err(e.0); rows],
        };
        let batch = RowBatch::new(batch);
        let mut out: Vec<ComputedRow> = vec![Ok(Vec::with_capacity(self.features.len())); rows];
        for feature in &self.features {
            for (row, outcome) in feature
                .expression
                .evaluate_in(&batch)
                .into_iter()
                .enumerate()
            {
                let Some(Ok(computed)) = out.get_mut(row) else {
                    continue;
                };
                match outcome {
                    Ok(v) => computed.push((feature.position, v)),
                    Err(e) => out[row] = Err(format!("feature `{}`: {e}", feature.name)),
                }
            }
        }
        out
    }
}
