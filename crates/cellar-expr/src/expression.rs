//! [`Expression`]: one feature's SQL scalar expression, checked against a [`Scope`] of typed
//! inputs and compiled once into a DataFusion physical expression, then evaluated over a
//! record batch of many rows at once.

use std::fmt;
use std::sync::{Arc, LazyLock};

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use cellar_spec::{Value, ValueType};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, TableReference};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::Expr;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use crate::arrow::{data_type, UTC};
use crate::column::Column as Cells;

/// The column that holds the time an expression is evaluated at: what `now()` reads. (`@`
/// cannot appear in a spec name, so no input can take it.)
pub const NOW: &str = "@now";

/// Why an expression cannot be compiled: what is wrong, in words for a spec's author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

/// One named, typed value an expression may read: a request field or an entity key
/// (unqualified: `user_id`), or a feature of another group (qualified by the group:
/// `user_clicks.last_click_at`, or unqualified where no other input has its name).
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub qualifier: Option<String>,
    pub name: String,
    pub value_type: ValueType,
}

impl Input {
    pub fn new(name: impl Into<String>, value_type: ValueType) -> Input {
        Input {
            qualifier: None,
            name: name.into(),
            value_type,
        }
    }

    pub fn qualified(
        qualifier: impl Into<String>,
        name: impl Into<String>,
        value_type: ValueType,
    ) -> Input {
        Input {
            qualifier: Some(qualifier.into()),
            name: name.into(),
            value_type,
        }
    }

    fn display(&self) -> String {
        match &self.qualifier {
            Some(q) => format!("{q}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The inputs expressions are compiled against, in the order a batch holds their columns,
/// followed by [`NOW`].
#[derive(Debug, Clone)]
pub struct Scope {
    inputs: Vec<Input>,
    schema: SchemaRef,
    df_schema: Arc<DFSchema>,
}

impl Scope {
    pub fn new(inputs: Vec<Input>) -> Result<Scope, ExprError> {
        let mut fields = Vec::with_capacity(inputs.len() + 1);
        let mut qualified = Vec::with_capacity(inputs.len() + 1);
        for input in &inputs {
            let t = data_type(input.value_type).ok_or_else(|| {
                ExprError(format!(
                    "`{}` is a {}: map features cannot be read by expressions yet",
                    input.display(),
                    input.value_type
                ))
            })?;
            let field = Arc::new(Field::new(&input.name, t, true));
            qualified.push((
                input.qualifier.as_deref().map(TableReference::bare),
                Arc::clone(&field),
            ));
            fields.push(field);
        }
        let now = Arc::new(Field::new(
            NOW,
            DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            false,
        ));
        qualified.push((None, Arc::clone(&now)));
        fields.push(now);
        let schema = Arc::new(Schema::new(fields));
        let df_schema = DFSchema::new_with_metadata(qualified, Default::default())
            .map_err(|e| ExprError(message(&e.to_string())))?;
        Ok(Scope {
            inputs,
            schema,
            df_schema: Arc::new(df_schema),
        })
    }

    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// The schema of the batches expressions of this scope are evaluated over.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// A batch of `rows` rows: `columns` holds each input's column, in scope order, built by
    /// [`crate::arrow::column`]; `now_ms` is the evaluation time of every row.
    pub fn batch(
        &self,
        columns: Vec<ArrayRef>,
        rows: usize,
        now_ms: i64,
    ) -> Result<RecordBatch, ExprError> {
        let mut columns = columns;
        columns.push(Arc::new(
            TimestampMillisecondArray::from(vec![now_ms; rows]).with_timezone(UTC),
        ));
        RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| ExprError(format!("building the inputs: {e}")))
    }

    /// A batch of one row per element of `rows`, each holding the inputs' values in scope
    /// order.
    pub fn batch_of_rows(
        &self,
        rows: &[Vec<Value>],
        now_ms: i64,
    ) -> Result<RecordBatch, ExprError> {
        let columns = self
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                crate::arrow::column(
                    input.value_type,
                    rows.iter().map(|row| row.get(i).unwrap_or(&Value::Null)),
                )
            })
            .collect();
        self.batch(columns, rows.len(), now_ms)
    }
}

/// What one row of an evaluation gave: the value (`Value::Null` when an input was missing or
/// the expression says so), or why it could not be computed.
pub type Outcome = Result<Value, String>;

/// A compiled expression.
#[derive(Debug, Clone)]
pub struct Expression {
    text: String,
    output: ValueType,
    physical: Arc<dyn PhysicalExpr>,
    schema: SchemaRef,
}

static SESSION: LazyLock<SessionContext> = LazyLock::new(session);

/// A DataFusion session with the language's functions: the one expressions are compiled in,
/// and the one batch SQL that uses the language should run in.
pub fn session() -> SessionContext {
    let context = SessionContext::new();
    for function in crate::functions::all() {
        context.register_udf(function);
    }
    context
}

impl Expression {
    /// Parses and checks `text` against `scope`: unknown names, wrong argument types and a
    /// result that does not fit `output` are refused here, with DataFusion's words for what
    /// was wrong.
    pub fn compile(text: &str, scope: &Scope, output: ValueType) -> Result<Expression, ExprError> {
        let wanted = data_type(output).ok_or_else(|| {
            ExprError(format!(
                "an expression cannot compute a {output} yet: maps are not supported"
            ))
        })?;
        let logical = SESSION
            .parse_sql_expr(text, &scope.df_schema)
            .map_err(|e| ExprError(message(&e.to_string())))?;
        refuse_non_scalar(&logical)?;
        let logical = now_as_column(logical)?;
        // Some functions (`coalesce`, `nvl`) only run once rewritten by the simplifier, as the
        // SQL planner of the batch path does; constants fold here too, once per apply.
        let simplifier = ExprSimplifier::new(
            SimplifyContext::builder()
                .with_schema(Arc::clone(&scope.df_schema))
                .build(),
        );
        let logical = simplifier
            .coerce(logical, &scope.df_schema)
            .and_then(|e| simplifier.simplify(e))
            .map_err(|e| ExprError(message(&e.to_string())))?;
        let physical = SESSION
            .create_physical_expr(logical, &scope.df_schema)
            .map_err(|e| ExprError(message(&e.to_string())))?;
        let produced = physical
            .data_type(&scope.schema)
            .map_err(|e| ExprError(message(&e.to_string())))?;
        let physical = if produced == wanted {
            physical
        } else if fits(&produced, &wanted) {
            datafusion::physical_expr::expressions::cast(physical, &scope.schema, wanted)
                .map_err(|e| ExprError(message(&e.to_string())))?
        } else {
            return Err(ExprError(format!(
                "gives {}, which does not fit the feature's type {output}",
                describe(&produced)
            )));
        };
        Ok(Expression {
            text: text.to_owned(),
            output,
            physical,
            schema: Arc::clone(&scope.schema),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn output(&self) -> ValueType {
        self.output
    }

    /// The expression over every row of `batch` (of its scope's schema) as one column of the
    /// feature's Arrow type; an error of any row fails the whole batch.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef, String> {
        debug_assert_eq!(batch.schema(), self.schema);
        self.physical
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| message(&e.to_string()))
    }

    /// The expression's value for every row of `batch`. A batch that fails is evaluated again
    /// row by row, so one row's error (a division by zero) is that row's alone.
    pub fn evaluate_rows(&self, batch: &RecordBatch) -> Vec<Outcome> {
        match self.evaluate(batch) {
            Ok(array) => self.values(&array),
            Err(e) if batch.num_rows() <= 1 => vec![Err(e); batch.num_rows()],
            Err(_) => (0..batch.num_rows())
                .map(|row| match self.evaluate(&batch.slice(row, 1)) {
                    Ok(array) => self.values(&array).pop().unwrap_or(Ok(Value::Null)),
                    Err(e) => Err(e),
                })
                .collect(),
        }
    }

    fn values(&self, array: &ArrayRef) -> Vec<Outcome> {
        let cells = Cells::new(array);
        (0..array.len())
            .map(|row| {
                cells
                    .cell(row)
                    .to_value(self.output)
                    .map_err(|e| format!("the result does not fit {}: {e}", self.output))
            })
            .collect()
    }
}

/// Aggregates, window functions and subqueries need more than one row: a feature's value is
/// computed from its own row alone.
fn refuse_non_scalar(expr: &Expr) -> Result<(), ExprError> {
    let mut found = None;
    expr.apply(|e| {
        let what = match e {
            Expr::AggregateFunction(f) => Some(format!("the aggregate `{}`", f.func.name())),
            Expr::WindowFunction(_) => Some("a window function".to_owned()),
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_) => {
                Some("a subquery".to_owned())
            }
            _ => None,
        };
        match what {
            Some(what) => {
                found = Some(what);
                Ok(TreeNodeRecursion::Stop)
            }
            None => Ok(TreeNodeRecursion::Continue),
        }
    })
    .map_err(|e| ExprError(message(&e.to_string())))?;
    match found {
        Some(what) => Err(ExprError(format!(
            "{what} cannot be used here: an expression computes one entity's value from that entity's inputs"
        ))),
        None => Ok(()),
    }
}

/// `now()` (and `current_timestamp`) read the evaluation time from the [`NOW`] column: the
/// request's time when serving, a row's time in batch, never the time the expression was
/// compiled.
fn now_as_column(expr: Expr) -> Result<Expr, ExprError> {
    expr.transform_up(|e| match &e {
        Expr::ScalarFunction(f) if matches!(f.func.name(), "now" | "current_timestamp") => {
            Ok(Transformed::yes(Expr::Column(Column::from_name(NOW))))
        }
        _ => Ok(Transformed::no(e)),
    })
    .map(|t| t.data)
    .map_err(|e| ExprError(message(&e.to_string())))
}

/// Whether a result of type `produced` is converted to `wanted` without losing anything a
/// feature's author would not expect: integers to wider integers or to floats, whole
/// decimals to integers, float32 to float64, text of any kind to text, timestamps of any unit to milliseconds, a null literal
/// to anything, lists element-wise.
fn fits(produced: &DataType, wanted: &DataType) -> bool {
    use DataType::*;
    match (produced, wanted) {
        (Null, _) => true,
        (Int8 | Int16 | Int32 | UInt8 | UInt16 | UInt32, Int64) => true,
        // Counts are unsigned, and mixing them with signed integers gives decimals: a value
        // past int64's range is that row's error.
        (UInt64 | Decimal128(_, 0) | Decimal256(_, 0), Int64) => true,
        (Decimal128(_, _) | Decimal256(_, _), Float64) => true,
        (
            Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float32 | Float16,
            Float64,
        ) => true,
        (Utf8View | LargeUtf8, Utf8) => true,
        (BinaryView | LargeBinary, Binary) => true,
        (Timestamp(_, _), Timestamp(_, _)) => true,
        (List(p) | LargeList(p) | FixedSizeList(p, _), List(w)) => {
            p.data_type() == w.data_type() || fits(p.data_type(), w.data_type())
        }
        _ => false,
    }
}

fn describe(t: &DataType) -> String {
    use DataType::*;
    match t {
        Boolean => "bool".into(),
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 => "an integer".into(),
        Float16 | Float32 | Float64 => "a float".into(),
        Utf8 | LargeUtf8 | Utf8View => "a string".into(),
        Binary | LargeBinary | BinaryView => "bytes".into(),
        Timestamp(_, _) | Date32 | Date64 => "a timestamp".into(),
        Interval(_) | Duration(_) => "a duration (convert it: `extract(epoch from ...)`)".into(),
        List(f) | LargeList(f) | FixedSizeList(f, _) => {
            format!("a list of {}", describe(f.data_type()))
        }
        other => other.to_string(),
    }
}

/// DataFusion's error text without its layers' prefixes and backtraces.
fn message(e: &str) -> String {
    let mut s = e.trim();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "SQL error: ",
        "Execution error: ",
        "Arrow error: ",
        "Internal error: ",
        "Optimizer rule 'type_coercion' failed\ncaused by\n",
    ] {
        while let Some(rest) = s.strip_prefix(prefix) {
            s = rest.trim_start();
        }
    }
    s.lines().next().unwrap_or(s).trim().to_owned()
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}
