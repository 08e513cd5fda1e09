//! SQL transforms: an ingestion's `transform` run with DataFusion between reading and mapping.
//!
//! The query sees the job's input as one table, `source`: Parquet columns with their types,
//! CSV columns as text (cast them: `CAST(ctr AS DOUBLE)`), PostgreSQL columns as the
//! PostgreSQL reader types them. The table's schema is the first file's. Only the columns the
//! query uses are read, by the readers untransformed jobs use (so a CSV line that does not
//! parse is still rejected alone, by its position); a later file whose column has another type
//! is cast to the first file's. The query's result columns are then mapped by name, as a
//! file's are; its rows are named in rejects by their position in the shard's result, under
//! the file name [`OUTPUT`].
//!
//! **How a transformed job is sharded.** A query that looks at each row on its own (only
//! projections and filters: `SELECT a, b * 2 AS c FROM source WHERE ...`) runs in every shard
//! over that shard's rows, so the job is planned and spread over workers as any other. Any
//! other query (aggregates, windows, joins, `DISTINCT`, `ORDER BY`, `LIMIT`, `UNION`,
//! subqueries) needs the whole input at once: the job is one shard, in which DataFusion reads
//! the input's pieces in as many parallel partitions as the machine has cores. The planner
//! tells the two apart from the query's logical plan ([`Scope`]).
//!
//! A transform is one read-only `SELECT`: other statements are refused when the job is built,
//! and the session reads no table but `source` (no files, no DDL).

use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::arrow::compute::cast;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNode;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, TableType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast;
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::error::{BatchError, Result};
use crate::job::{BatchJob, JobInput};
use crate::map::{Locator, Mapper};
use crate::plan::{Piece, Shard};
use crate::read::{self, read_shard, OnBatch};
use crate::rejects::Reject;

/// The table a transform reads.
pub const SOURCE: &str = "source";
/// The file name rejects give a transform's result rows.
pub const OUTPUT: &str = "transform";

/// An ingestion's SQL transform, checked to be one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    sql: String,
}

/// How much of the input a transform needs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Each row on its own: every shard runs the query over its own rows.
    Rows,
    /// The whole input: the job is one shard.
    Whole,
}

impl Transform {
    /// Checks that `sql` is one `SELECT` (or `WITH ... SELECT`) query.
    pub fn parse(sql: &str) -> std::result::Result<Transform, String> {
        let statements = DFParser::parse_sql(sql)
            .map_err(|e| format!("the SQL transform does not parse: {e}"))?;
        match statements.front() {
            Some(Statement::Statement(s)) if statements.len() == 1 => match s.as_ref() {
                ast::Statement::Query(_) => Ok(Transform {
                    sql: sql.to_owned(),
                }),
                _ => Err(format!(
                    "the SQL transform must be a SELECT query over table `{SOURCE}`, not: {s}"
                )),
            },
            _ => Err(format!(
                "the SQL transform must be one SELECT query over table `{SOURCE}`, not {} \
                 statements",
                statements.len()
            )),
        }
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }
}

/// How much of its input the transform of `job` needs, judged over the schema of the file of
/// `first` (the job's first piece). Blocking IO: call it where planning runs.
pub(crate) fn scope(job: &BatchJob, transform: &Transform, first: &Piece) -> Result<Scope> {
    let schema = source_schema(job, first)?;
    let context = Context::new(job, schema, Vec::new(), 1);
    let frame = futures::executor::block_on(context.query(transform))?;
    Ok(scope_of(frame.logical_plan()))
}

fn scope_of(plan: &LogicalPlan) -> Scope {
    if row_by_row(plan) {
        Scope::Rows
    } else {
        Scope::Whole
    }
}

/// Whether `plan` maps each input row to at most one output row on its own.
fn row_by_row(plan: &LogicalPlan) -> bool {
    let own = match plan {
        LogicalPlan::Projection(p) => p.expr.iter().all(no_subquery),
        LogicalPlan::Filter(f) => no_subquery(&f.predicate),
        LogicalPlan::TableScan(_) | LogicalPlan::SubqueryAlias(_) => true,
        _ => false,
    };
    own && plan.inputs().into_iter().all(row_by_row)
}

fn no_subquery(expr: &Expr) -> bool {
    !expr
        .exists(|e| {
            Ok(matches!(
                e,
                Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
            ))
        })
        .unwrap_or(true)
}

/// Reads `shard` of `job` through its transform: hands on the query's result, mapped by one
/// mapper, and the rows the source's readers rejected. False when `each` said to stop.
pub(crate) fn read(
    shard: &Shard,
    job: &BatchJob,
    transform: &Transform,
    each: &mut OnBatch<'_>,
) -> Result<bool> {
    let Some(first) = shard.pieces.first() else {
        return Ok(true);
    };
    let runtime = Handle::try_current()
        .map_err(|e| BatchError::Internal(format!("a SQL transform needs a Tokio runtime: {e}")))?;
    let schema = source_schema(job, first)?;
    let plan_only = Context::new(job, Arc::clone(&schema), Vec::new(), 1);
    let scope = scope_of(runtime.block_on(plan_only.query(transform))?.logical_plan());
    let partitions = match scope {
        // One partition keeps the shard's rows in file order, as an untransformed shard's.
        Scope::Rows => vec![shard.clone()],
        Scope::Whole => split(shard, cores()),
    };
    let width = partitions.len();
    let context = Context::new(job, schema, partitions, width);
    let mut stream = runtime.block_on(async {
        let frame = context.query(transform).await?;
        frame.execute_stream().await.map_err(|e| context.error(e))
    })?;
    let output = stream.schema();
    let mapper = Mapper::new(job, shard.index, OUTPUT, &output)?;
    let mut first_row = 0u64;
    loop {
        let next = runtime.block_on(stream.next());
        let rejected = std::mem::take(&mut *lock(&context.source_rejects));
        let batch = match next {
            Some(Ok(batch)) => batch,
            Some(Err(e)) => return Err(context.error(e)),
            None => {
                if !rejected.is_empty() {
                    let empty = RecordBatch::new_empty(output.clone());
                    each(
                        &mapper,
                        &empty,
                        Locator::Rows { first: first_row },
                        rejected,
                    )?;
                }
                return Ok(true);
            }
        };
        if !each(
            &mapper,
            &batch,
            Locator::Rows { first: first_row },
            rejected,
        )? {
            return Ok(false);
        }
        first_row += batch.num_rows() as u64;
    }
}

/// The `source` table's schema: the first piece's file's (or the query's) columns, each
/// nullable, since a later file may hold nulls where the first has none.
fn source_schema(job: &BatchJob, first: &Piece) -> Result<SchemaRef> {
    let schema = match first {
        Piece::Parquet { file, file_len, .. } => read::parquet_schema(job, file, *file_len)?,
        Piece::Csv { file, file_len, .. } => read::csv_schema(job, file, *file_len)?,
        Piece::Postgres { query } => {
            let JobInput::Postgres { url, .. } = &job.input else {
                return Err(BatchError::Job {
                    ingestion: job.ingestion.clone(),
                    reason: "a shard holds a PostgreSQL query but the job reads files".into(),
                });
            };
            crate::postgres::describe(url, query)?
        }
    };
    Ok(Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), f.data_type().clone(), true))
            .collect::<Vec<_>>(),
    )))
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The pieces of `shard` dealt into at most `n` partitions of about equal rows, each keeping
/// its pieces in the shard's order.
fn split(shard: &Shard, n: usize) -> Vec<Shard> {
    let n = n.clamp(1, shard.pieces.len().max(1));
    let mut parts: Vec<Shard> = (0..n)
        .map(|_| Shard {
            pieces: Vec::new(),
            rows: 0,
            bytes: 0,
            ..shard.clone()
        })
        .collect();
    for piece in &shard.pieces {
        let Some(part) = parts.iter_mut().min_by_key(|p| p.rows) else {
            break;
        };
        part.rows += piece.rows().max(1);
        part.bytes += piece.bytes();
        part.pieces.push(piece.clone());
    }
    parts.retain(|p| !p.pieces.is_empty());
    parts
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A DataFusion session whose one table is `source`.
struct Context {
    ingestion: String,
    session: SessionContext,
    /// Rows the source's readers rejected, not yet handed on.
    source_rejects: Arc<Mutex<Vec<Reject>>>,
    /// The first error of a source reader, kept whole (DataFusion passes on its text): whether
    /// a retry may help is the reader's error's to say.
    source_failure: Arc<Mutex<Option<BatchError>>>,
}

impl Context {
    fn new(job: &BatchJob, schema: SchemaRef, partitions: Vec<Shard>, width: usize) -> Context {
        let config = SessionConfig::new()
            .with_target_partitions(width.max(1))
            .with_batch_size(job.options.batch_rows.max(1))
            .with_information_schema(false);
        let session = SessionContext::new_with_config(config);
        // The functions of Cellar's expression language, so a transform computes what an
        // on-demand or write-time expression of the same text computes.
        for function in cellar_expr::functions::all() {
            session.register_udf(function);
        }
        let source_rejects = Arc::default();
        let source_failure = Arc::default();
        let table = SourceTable {
            job: Arc::new(job.clone()),
            schema,
            partitions,
            rejects: Arc::clone(&source_rejects),
            failure: Arc::clone(&source_failure),
        };
        // A fresh session holds no table of this name: registering cannot clash.
        let _ = session.register_table(SOURCE, Arc::new(table));
        Context {
            ingestion: job.ingestion.clone(),
            session,
            source_rejects,
            source_failure,
        }
    }

    /// Plans the transform: a read-only query, over `source` alone.
    async fn query(&self, transform: &Transform) -> Result<datafusion::dataframe::DataFrame> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        self.session
            .sql_with_options(transform.sql(), options)
            .await
            .map_err(|e| self.error(e))
    }

    /// A DataFusion error as the job's: a source reader's own error when one failed, else
    /// the transform's.
    fn error(&self, e: DataFusionError) -> BatchError {
        lock(&self.source_failure)
            .take()
            .unwrap_or_else(|| BatchError::Transform {
                ingestion: self.ingestion.clone(),
                reason: e.find_root().to_string(),
            })
    }
}

/// The `source` table: the pieces of one shard, read by Cellar's readers.
#[derive(Debug)]
struct SourceTable {
    /// The transformed job.
    job: Arc<BatchJob>,
    schema: SchemaRef,
    /// The pieces each partition reads.
    partitions: Vec<Shard>,
    rejects: Arc<Mutex<Vec<Reject>>>,
    failure: Arc<Mutex<Option<BatchError>>>,
}

#[async_trait]
impl TableProvider for SourceTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let projected = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => Arc::clone(&self.schema),
        };
        let mut columns: Vec<String> = projected
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        // A query that reads no column (`SELECT count(*)`) still needs the rows: one column
        // is read and dropped.
        if columns.is_empty() {
            if let Some(f) = self.schema.fields().first() {
                columns.push(f.name().clone());
            }
        }
        let mut reader = BatchJob::clone(&self.job);
        reader.key_columns.clear();
        reader.event_time_column = None;
        reader.features.clear();
        reader.transform = None;
        reader.read_columns = Some(columns);
        let reader = Arc::new(reader);
        let partitions = self
            .partitions
            .iter()
            .map(|shard| {
                Arc::new(SourcePartition {
                    shard: shard.clone(),
                    job: Arc::clone(&reader),
                    schema: Arc::clone(&projected),
                    rejects: Arc::clone(&self.rejects),
                    failure: Arc::clone(&self.failure),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        Ok(Arc::new(StreamingTableExec::try_new(
            projected,
            partitions,
            None,
            [],
            false,
            limit,
        )?))
    }
}

/// One partition of `source`: some pieces, read in order on a blocking thread.
#[derive(Debug)]
struct SourcePartition {
    shard: Shard,
    /// The job that reads the columns the query uses, and maps none.
    job: Arc<BatchJob>,
    /// The columns handed on, in the table's order.
    schema: SchemaRef,
    rejects: Arc<Mutex<Vec<Reject>>>,
    failure: Arc<Mutex<Option<BatchError>>>,
}

/// Batches a partition's reader may run ahead of the query.
const PARTITION_READ_AHEAD: usize = 2;

impl PartitionStream for SourcePartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, mut rx) = mpsc::channel::<DfResult<RecordBatch>>(PARTITION_READ_AHEAD);
        let runtime = match Handle::try_current() {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = tx.try_send(Err(DataFusionError::External(
                    format!("a SQL transform needs a Tokio runtime: {e}").into(),
                )));
                let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
                return Box::pin(RecordBatchStreamAdapter::new(
                    Arc::clone(&self.schema),
                    batches,
                ));
            }
        };
        let (shard, job, schema) = (
            self.shard.clone(),
            Arc::clone(&self.job),
            Arc::clone(&self.schema),
        );
        let (rejects, failure) = (Arc::clone(&self.rejects), Arc::clone(&self.failure));
        let read = move || {
            let outcome = read_shard(&shard, &job, &mut |mapper, batch, _, found| {
                if !found.is_empty() {
                    lock(&rejects).extend(found);
                }
                let batch = conform(&schema, batch, mapper.file())?;
                // A closed channel: the query stopped (done with a LIMIT, or failed).
                Ok(tx.blocking_send(Ok(batch)).is_ok())
            });
            if let Err(e) = outcome {
                let text = e.to_string();
                lock(&failure).get_or_insert(e);
                let _ = tx.blocking_send(Err(DataFusionError::External(text.into())));
            }
        };
        runtime.spawn_blocking(read);
        let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        ))
    }
}

/// `batch` (of one file's columns, in the file's order) as a batch of `schema`: its columns
/// in the table's order, cast to the table's types where the file's differ.
fn conform(schema: &SchemaRef, batch: &RecordBatch, file: &str) -> Result<RecordBatch> {
    let fail = |reason: String| BatchError::Column {
        file: file.to_owned(),
        reason,
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = batch.column_by_name(field.name()).ok_or_else(|| {
            fail(format!(
                "no column `{}` (read by the transform)",
                field.name()
            ))
        })?;
        if column.data_type() == field.data_type() {
            columns.push(Arc::clone(column));
        } else {
            columns.push(cast(column, field.data_type()).map_err(|e| {
                fail(format!(
                    "column `{}` is {}, which cannot be cast to {}, its type in the job's \
                     first file: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ))
            })?);
        }
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_select_is_a_transform() {
        assert!(Transform::parse("SELECT a, b FROM source WHERE a > 1").is_ok());
        assert!(Transform::parse("WITH t AS (SELECT a FROM source) SELECT a FROM t").is_ok());
        let two = Transform::parse("SELECT 1; SELECT 2").unwrap_err();
        assert!(two.contains("not 2 statements"), "{two}");
        let ddl = Transform::parse("DROP TABLE source").unwrap_err();
        assert!(ddl.contains("must be a SELECT query"), "{ddl}");
        let broken = Transform::parse("SELEC a FROM source").unwrap_err();
        assert!(
            broken.starts_with("the SQL transform does not parse"),
            "{broken}"
        );
    }

    fn scope_of_sql(sql: &str) -> Scope {
        let session = SessionContext::new();
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", arrow_schema::DataType::Int64, true),
            Field::new("b", arrow_schema::DataType::Utf8, true),
        ]));
        let table = datafusion::datasource::empty::EmptyTable::new(schema);
        session.register_table(SOURCE, Arc::new(table)).unwrap();
        let frame = futures::executor::block_on(session.sql(sql)).unwrap();
        scope_of(frame.logical_plan())
    }

    #[test]
    fn projections_and_filters_run_per_shard_and_the_rest_on_the_whole_input() {
        for sql in [
            "SELECT a, upper(b) AS c FROM source",
            "SELECT a * 2 AS a FROM source WHERE b IS NOT NULL AND a > 3",
            "SELECT s.a FROM (SELECT a FROM source WHERE a > 0) s",
            "SELECT a, CASE WHEN a > 1 THEN 'x' ELSE b END AS b FROM source",
        ] {
            assert_eq!(scope_of_sql(sql), Scope::Rows, "{sql}");
        }
        for sql in [
            "SELECT b, count(*) AS n FROM source GROUP BY b",
            "SELECT max(a) AS a FROM source",
            "SELECT DISTINCT a FROM source",
            "SELECT a FROM source ORDER BY a",
            "SELECT a FROM source LIMIT 10",
            "SELECT a, row_number() OVER (PARTITION BY b ORDER BY a) AS r FROM source",
            "SELECT a FROM source WHERE a > (SELECT avg(a) FROM source)",
            "SELECT a FROM source UNION ALL SELECT a FROM source",
            "SELECT x.a FROM source x JOIN source y ON x.a = y.a",
        ] {
            assert_eq!(scope_of_sql(sql), Scope::Whole, "{sql}");
        }
    }
}
