//! [`Expression`]: one feature's SQL scalar expression, checked against a [`Scope`] of typed
//! inputs and compiled once into a DataFusion physical expression, then evaluated over a
//! record batch of many rows at once.

use std::fmt;
use std::sync::{Arc, LazyLock};

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, SchemaRef, TimeUnit};
use cellar_spec::{ExpressionCheck, ExpressionInput as Input, ScalarType, Value, ValueType};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, TableReference};
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::Expr;
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use crate::arrow::{data_type, UTC};
use crate::cells::{CellColumn, CellRows};
use crate::column::{Cell, Column as Cells};
use crate::row::{Inputs, RowPlan};

/// The column that holds the time an expression is evaluated at: what `now()` reads. (`@`
/// cannot appear in a spec name, so no input can take it.)
pub const NOW: &str = "@now";

/// Why an expression cannot be compiled: what is wrong, in words for a spec's author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

/// The inputs expressions are compiled against. Callers give and read inputs in their own
/// order; the batches evaluated hold the unqualified inputs first, then [`NOW`], then the
/// qualified ones (see [`Scope::new`]).
#[derive(Debug, Clone)]
pub struct Scope {
    inputs: Vec<Input>,
    unreadable: Vec<Input>,
    schema: SchemaRef,
    df_schema: Arc<DFSchema>,
    /// For each input, its column in the batch.
    column_of: Vec<usize>,
    /// The column of [`NOW`].
    now_column: usize,
}

impl Scope {
    /// A scope of `inputs`. Those expressions cannot read (maps) are left out, and named in
    /// the error of an expression that tries.
    ///
    /// An unqualified input may share its name with a qualified one (the key `article_id` and
    /// a time series' feature `recent_clicks.article_id`): the bare name reads the unqualified
    /// input. DataFusion's schema constructors refuse such a mix, but its merge keeps it, and
    /// its name lookup prefers the one unqualified match, so the schema is built as the
    /// unqualified fields merged with the qualified ones.
    pub fn new(inputs: Vec<Input>) -> Result<Scope, ExprError> {
        let (inputs, unreadable): (Vec<Input>, Vec<Input>) = inputs
            .into_iter()
            .partition(|i| data_type(i.value_type).is_some());
        let field = |input: &Input| {
            Arc::new(Field::new(
                &input.name,
                data_type(input.value_type).unwrap_or(DataType::Null),
                true,
            ))
        };
        let mut column_of = vec![0; inputs.len()];
        let mut unqualified = Vec::with_capacity(inputs.len() + 1);
        for (i, input) in inputs.iter().enumerate() {
            if input.qualifier.is_none() {
                column_of[i] = unqualified.len();
                unqualified.push(field(input));
            }
        }
        let now_column = unqualified.len();
        unqualified.push(Arc::new(Field::new(
            NOW,
            DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            false,
        )));
        let mut qualified = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            if let Some(q) = &input.qualifier {
                column_of[i] = now_column + 1 + qualified.len();
                qualified.push((Some(TableReference::bare(q.as_str())), field(input)));
            }
        }
        let schema_error =
            |e: datafusion::error::DataFusionError| ExprError(message(&e.to_string()));
        let mut df_schema =
            DFSchema::from_unqualified_fields(unqualified.into(), Default::default())
                .map_err(schema_error)?;
        let qualified =
            DFSchema::new_with_metadata(qualified, Default::default()).map_err(schema_error)?;
        df_schema.merge(&qualified);
        if df_schema.fields().len() != inputs.len() + 1 {
            return Err(ExprError(
                "two inputs have the same name and qualifier".to_owned(),
            ));
        }
        Ok(Scope {
            inputs,
            unreadable,
            schema: Arc::clone(df_schema.inner()),
            df_schema: Arc::new(df_schema),
            column_of,
            now_column,
        })
    }

    /// The input of batch column `column`, `None` for [`NOW`].
    fn input_of(&self, column: usize) -> Option<usize> {
        self.column_of.iter().position(|&c| c == column)
    }

    /// `message`, with a word on the unreadable inputs it names.
    fn explain(&self, message: String) -> ExprError {
        let named: Vec<String> = self
            .unreadable
            .iter()
            .filter(|i| message.contains(i.name.as_str()))
            .map(|i| format!("`{i}` is a {}", i.value_type))
            .collect();
        if named.is_empty() {
            ExprError(message)
        } else {
            ExprError(format!(
                "{message} ({}: map features cannot be read by expressions yet)",
                named.join(", ")
            ))
        }
    }

    pub fn inputs(&self) -> &[Input] {
        &self.inputs
    }

    /// The schema of the batches expressions of this scope are evaluated over.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// A batch of `rows` rows: `columns` holds each input's column, in the order of
    /// [`Scope::inputs`], built by [`crate::arrow::column`]; `now_ms` is the evaluation time of
    /// every row.
    pub fn batch(
        &self,
        columns: Vec<ArrayRef>,
        rows: usize,
        now_ms: i64,
    ) -> Result<RecordBatch, ExprError> {
        self.batch_at(columns, rows, now_column(now_ms, rows))
    }

    /// [`Scope::batch`] with an evaluation time of each row's own: `now` is a column of UTC
    /// millisecond timestamps, one per row.
    pub fn batch_at(
        &self,
        columns: Vec<ArrayRef>,
        rows: usize,
        now: ArrayRef,
    ) -> Result<RecordBatch, ExprError> {
        let columns = self.in_schema_order(columns, now)?;
        RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| ExprError(format!("building the inputs: {e}")))
    }

    /// The inputs' `columns` (in scope order, each of its input's Arrow type) for `rows`
    /// rows evaluated at `now_ms`, ready for [`Expression::evaluate_in`]: the same rows as
    /// [`Scope::batch`] gives, without building the record batch unless DataFusion needs it.
    pub fn rows(
        &self,
        columns: Vec<ArrayRef>,
        rows: usize,
        now_ms: i64,
    ) -> Result<RowBatch, ExprError> {
        let columns = self.in_schema_order(columns, now_column(now_ms, rows))?;
        // What the record batch would check, here for the walk, which reads cells by type.
        for (column, field) in columns.iter().zip(self.schema.fields()) {
            if column.len() != rows || column.data_type() != field.data_type() {
                return Err(ExprError(format!(
                    "building the inputs: column `{}` has {} values of type {} for {rows} rows of type {}",
                    field.name(),
                    column.len(),
                    column.data_type(),
                    field.data_type()
                )));
            }
        }
        Ok(RowBatch {
            schema: Arc::clone(&self.schema),
            columns,
            rows,
            batch: std::cell::OnceCell::new(),
            cells: std::cell::OnceCell::new(),
        })
    }

    /// The inputs' cells (in scope order, each built for its input's type) for `rows` rows
    /// evaluated at `now_ms`: the same rows as [`Scope::rows`] gives, for expressions walked a
    /// row at a time ([`Expression::evaluate_cells`]), without an Arrow column built.
    pub fn cells<'a>(
        &self,
        columns: Vec<CellColumn<'a>>,
        rows: usize,
        now_ms: i64,
    ) -> Result<CellRows<'a>, ExprError> {
        if columns.len() != self.inputs.len() {
            return Err(ExprError(format!(
                "building the inputs: {} columns for {} inputs",
                columns.len(),
                self.inputs.len()
            )));
        }
        let mut ordered: Vec<CellColumn<'a>> = Vec::with_capacity(columns.len() + 1);
        ordered.resize_with(columns.len() + 1, CellColumn::default);
        let mut now = CellColumn::with_capacity(ValueType::Scalar(ScalarType::Timestamp), rows, 0);
        for _ in 0..rows {
            now.push_cell(Cell::Time(now_ms));
        }
        ordered[self.now_column] = now;
        for (i, column) in columns.into_iter().enumerate() {
            let input = &self.inputs[i];
            crate::cells::check(&column, input.value_type, rows)
                .map_err(|e| ExprError(format!("building the inputs: `{input}`: {e}")))?;
            ordered[self.column_of[i]] = column;
        }
        Ok(CellRows {
            columns: ordered,
            rows,
        })
    }

    /// The inputs' columns and `now` in the schema's order.
    fn in_schema_order(
        &self,
        columns: Vec<ArrayRef>,
        now: ArrayRef,
    ) -> Result<Vec<ArrayRef>, ExprError> {
        if columns.len() != self.inputs.len() {
            return Err(ExprError(format!(
                "building the inputs: {} columns for {} inputs",
                columns.len(),
                self.inputs.len()
            )));
        }
        let mut ordered: Vec<Option<ArrayRef>> = vec![None; columns.len() + 1];
        ordered[self.now_column] = Some(now);
        for (i, column) in columns.into_iter().enumerate() {
            ordered[self.column_of[i]] = Some(column);
        }
        Ok(ordered.into_iter().flatten().collect())
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
    /// The same expression walked a row at a time, when every node of it can be.
    rows: Option<Arc<RowPlan>>,
}

/// `now()` for `rows` rows evaluated at `now_ms`.
fn now_column(now_ms: i64, rows: usize) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(vec![now_ms; rows]).with_timezone(UTC))
}

/// The largest batch [`Expression::evaluate_in`] walks a row at a time (see there).
const WALKED_MAX_ROWS: usize = 64;

/// A batch's columns, readable cell by cell: what [`Expression::evaluate_in`] reads, built once
/// for all the expressions evaluated over the same rows. The Arrow record batch DataFusion
/// needs is made only when an expression is not walked, and the cells only when one is.
pub struct RowBatch {
    schema: SchemaRef,
    /// In the schema's order.
    columns: Vec<ArrayRef>,
    rows: usize,
    batch: std::cell::OnceCell<Result<RecordBatch, String>>,
    cells: std::cell::OnceCell<Vec<Cells>>,
}

impl RowBatch {
    pub fn new(batch: RecordBatch) -> RowBatch {
        RowBatch {
            schema: batch.schema(),
            columns: batch.columns().to_vec(),
            rows: batch.num_rows(),
            batch: std::cell::OnceCell::from(Ok(batch)),
            cells: std::cell::OnceCell::new(),
        }
    }

    fn cells(&self) -> &[Cells] {
        self.cells
            .get_or_init(|| self.columns.iter().map(Cells::new).collect())
    }

    /// The rows as one Arrow record batch.
    pub fn batch(&self) -> Result<&RecordBatch, &str> {
        self.batch
            .get_or_init(|| {
                RecordBatch::try_new_with_options(
                    Arc::clone(&self.schema),
                    self.columns.clone(),
                    &RecordBatchOptions::new().with_row_count(Some(self.rows)),
                )
                .map_err(|e| format!("building the inputs: {e}"))
            })
            .as_ref()
            .map_err(String::as_str)
    }
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
            .map_err(|e| scope.explain(message(&e.to_string())))?;
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
            .map_err(|e| scope.explain(message(&e.to_string())))?;
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
        let rows = RowPlan::new(&physical, &scope.schema).map(Arc::new);
        Ok(Expression {
            text: text.to_owned(),
            output,
            physical,
            schema: Arc::clone(&scope.schema),
            rows,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Positions (in [`Scope::inputs`] of the scope it was compiled in) of the inputs the
    /// expression reads, sorted.
    pub fn inputs_read(&self, scope: &Scope) -> Vec<usize> {
        let mut read: Vec<usize> =
            datafusion::physical_expr::utils::collect_columns(&self.physical)
                .into_iter()
                .filter_map(|c| scope.input_of(c.index()))
                .collect();
        read.sort_unstable();
        read.dedup();
        read
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

    /// Whether [`Expression::evaluate_in`] walks the expression a row at a time rather than
    /// handing the batch to DataFusion.
    pub fn has_row_plan(&self) -> bool {
        self.rows.is_some()
    }

    /// The expression's value for every row of `rows`, the same as
    /// [`Expression::evaluate_rows`] gives: a row at a time when the expression has a row plan
    /// and the batch is small, otherwise by DataFusion. Over one row the plan is ten to
    /// twenty times cheaper; near a hundred rows the two cost the same, and past that
    /// DataFusion's vectorised kernels win.
    pub fn evaluate_in(&self, rows: &RowBatch) -> Vec<Outcome> {
        if self.walks(rows.rows) {
            if let Some(outcomes) = self.evaluate_walked(rows) {
                return outcomes;
            }
        }
        match rows.batch() {
            Ok(batch) => self.evaluate_rows(batch),
            Err(e) => vec![Err(e.to_owned()); rows.rows],
        }
    }

    /// Whether [`Expression::evaluate_in`] walks `rows` rows a row at a time: the inputs of
    /// such a request can be given as cells ([`Expression::evaluate_cells`]).
    pub fn walks(&self, rows: usize) -> bool {
        self.rows.is_some() && rows <= WALKED_MAX_ROWS
    }

    /// The expression's value for every row of `rows` walked a row at a time, whatever the
    /// batch's size; `None` when the expression has no row plan.
    pub fn evaluate_walked(&self, rows: &RowBatch) -> Option<Vec<Outcome>> {
        self.walk(rows.cells(), rows.rows)
    }

    /// The expression's value for every row of `rows`, the same as
    /// [`Expression::evaluate_walked`] gives over the same values as Arrow columns; `None`
    /// when the expression has no row plan.
    pub fn evaluate_cells(&self, rows: &CellRows<'_>) -> Option<Vec<Outcome>> {
        self.walk(rows, rows.rows)
    }

    fn walk<I: Inputs + ?Sized>(&self, inputs: &I, rows: usize) -> Option<Vec<Outcome>> {
        let plan = self.rows.as_ref()?;
        Some(
            (0..rows)
                .map(|row| {
                    plan.evaluate(inputs, row).and_then(|cell| {
                        cell.to_value(self.output)
                            .map_err(|e| format!("the result does not fit {}: {e}", self.output))
                    })
                })
                .collect(),
        )
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

/// The check `cellar_spec::parse_repo_with` runs on every expression at `plan` and `apply`:
/// it compiles against its inputs and gives the feature's type.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checker;

impl ExpressionCheck for Checker {
    fn check(&self, expr: &str, inputs: &[Input], output: ValueType) -> Result<Vec<usize>, String> {
        let scope = Scope::new(inputs.to_vec()).map_err(|e| e.0)?;
        let compiled = Expression::compile(expr, &scope, output).map_err(|e| e.0)?;
        // Positions in the scope, which leaves out unreadable inputs, back to `inputs`.
        Ok(compiled
            .inputs_read(&scope)
            .into_iter()
            .filter_map(|i| inputs.iter().position(|input| *input == scope.inputs()[i]))
            .collect())
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
