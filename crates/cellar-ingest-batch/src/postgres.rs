//! The PostgreSQL reader: a job's query run once, its rows streamed (never the whole result in
//! memory) into Arrow record batches of the columns the job reads, so the mapper treats them
//! as it treats a Parquet file's.
//!
//! Column types, decided once from the prepared statement (so a query returning no row is
//! checked too):
//!
//! | PostgreSQL | Arrow |
//! |---|---|
//! | `int2`, `int4`, `int8` | `Int64` |
//! | `float4`, `float8` | `Float64` |
//! | `numeric` | `Float64`, rounded to the nearest (`NaN` and infinities kept) |
//! | `bool` | `Boolean` |
//! | `text`, `varchar`, `bpchar`, `name` | `Utf8` |
//! | `timestamptz`, `timestamp` | `Timestamp(ms)` (a `timestamp` is taken as UTC) |
//! | `date` | `Date32` |
//! | `bytea` | `Binary` |
//!
//! A column read of any other type (arrays, `jsonb`, ...) fails the shard with
//! [`BatchError::Column`] naming it and its type: cast it in the query (`payload::text`).
//! Columns the job does not read may be of any type. `numeric` becomes a float because
//! features hold `int64` or `float64`: a value beyond a float's 15-17 significant digits loses
//! the rest.
//!
//! The reader runs on the shard's blocking thread and drives the connection with the runtime's
//! [`Handle`], one `block_on` per record batch; the batch is handed on outside it, since
//! handing on may block on the writer.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use cellar_spec::redact::{hide_passwords, show_url};
use cellar_spec::secret::{self, Secret};
use futures::StreamExt;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgConnection, PgRow, PgValueFormat, PgValueRef, Postgres};
use sqlx::{Column as _, Connection, Decode, Executor, Row, Statement, TypeInfo, ValueRef};
use tokio::runtime::Handle;

use crate::error::{BatchError, Result};
use crate::job::BatchJob;
use crate::map::{Locator, Mapper};
use crate::plan::Shard;
use crate::read::OnBatch;

/// How long connecting may take before the shard fails (and may be retried).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from the Unix epoch to PostgreSQL's.
const PG_EPOCH_DAYS: i32 = 10_957;

/// The PostgreSQL types read, by type OID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    Bool,
    Text,
    Timestamp,
    TimestampTz,
    Date,
    Bytea,
}

impl PgType {
    fn of(oid: u32) -> Option<PgType> {
        Some(match oid {
            21 => PgType::Int2,
            23 => PgType::Int4,
            20 => PgType::Int8,
            700 => PgType::Float4,
            701 => PgType::Float8,
            1700 => PgType::Numeric,
            16 => PgType::Bool,
            // text, name, bpchar, varchar
            25 | 19 | 1042 | 1043 => PgType::Text,
            1114 => PgType::Timestamp,
            1184 => PgType::TimestampTz,
            1082 => PgType::Date,
            17 => PgType::Bytea,
            _ => return None,
        })
    }

    fn data_type(self) -> DataType {
        match self {
            PgType::Int2 | PgType::Int4 | PgType::Int8 => DataType::Int64,
            PgType::Float4 | PgType::Float8 | PgType::Numeric => DataType::Float64,
            PgType::Bool => DataType::Boolean,
            PgType::Text => DataType::Utf8,
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            PgType::TimestampTz => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            PgType::Date => DataType::Date32,
            PgType::Bytea => DataType::Binary,
        }
    }

    fn builder(self, rows: usize) -> Builder {
        match self {
            PgType::Int2 | PgType::Int4 | PgType::Int8 => {
                Builder::Int(Int64Builder::with_capacity(rows))
            }
            PgType::Float4 | PgType::Float8 | PgType::Numeric => {
                Builder::Float(Float64Builder::with_capacity(rows))
            }
            PgType::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            PgType::Text => Builder::Text(StringBuilder::with_capacity(rows, rows * 16)),
            PgType::Timestamp => Builder::Time(TimestampMillisecondBuilder::with_capacity(rows)),
            PgType::TimestampTz => {
                Builder::Time(TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC"))
            }
            PgType::Date => Builder::Date(Date32Builder::with_capacity(rows)),
            PgType::Bytea => Builder::Bytes(BinaryBuilder::with_capacity(rows, rows * 16)),
        }
    }
}

/// One column of the batch being built.
enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Text(StringBuilder),
    Time(TimestampMillisecondBuilder),
    Date(Date32Builder),
    Bytes(BinaryBuilder),
}

impl Builder {
    /// Appends one cell of type `t`.
    fn append(&mut self, t: PgType, value: PgValueRef<'_>) -> Result<(), BoxDynError> {
        if value.is_null() {
            match self {
                Builder::Int(b) => b.append_null(),
                Builder::Float(b) => b.append_null(),
                Builder::Bool(b) => b.append_null(),
                Builder::Text(b) => b.append_null(),
                Builder::Time(b) => b.append_null(),
                Builder::Date(b) => b.append_null(),
                Builder::Bytes(b) => b.append_null(),
            }
            return Ok(());
        }
        match (self, t) {
            (Builder::Int(b), PgType::Int2) => b.append_value(i64::from(decode::<i16>(value)?)),
            (Builder::Int(b), PgType::Int4) => b.append_value(i64::from(decode::<i32>(value)?)),
            (Builder::Int(b), _) => b.append_value(decode::<i64>(value)?),
            (Builder::Float(b), PgType::Float4) => b.append_value(f64::from(decode::<f32>(value)?)),
            (Builder::Float(b), PgType::Numeric) => b.append_value(numeric(binary(&value)?)?),
            (Builder::Float(b), _) => b.append_value(decode::<f64>(value)?),
            (Builder::Bool(b), _) => b.append_value(decode::<bool>(value)?),
            (Builder::Text(b), _) => b.append_value(decode::<&str>(value)?),
            (Builder::Time(b), _) => {
                let micros = i64::from_be_bytes(fixed(binary(&value)?)?);
                b.append_value(micros.saturating_add(PG_EPOCH_MICROS).div_euclid(1000));
            }
            (Builder::Date(b), _) => {
                let days = i32::from_be_bytes(fixed(binary(&value)?)?);
                b.append_value(days.saturating_add(PG_EPOCH_DAYS));
            }
            (Builder::Bytes(b), _) => b.append_value(decode::<&[u8]>(value)?),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Bytes(b) => Arc::new(b.finish()),
        }
    }
}

fn decode<'r, T: Decode<'r, Postgres>>(value: PgValueRef<'r>) -> Result<T, BoxDynError> {
    T::decode(value)
}

/// The bytes of a value sent in binary, as results of prepared statements are.
fn binary<'r>(value: &PgValueRef<'r>) -> Result<&'r [u8], BoxDynError> {
    match value.format() {
        PgValueFormat::Binary => value.as_bytes(),
        PgValueFormat::Text => Err("expected a binary value, got text".into()),
    }
}

fn fixed<const N: usize>(bytes: &[u8]) -> Result<[u8; N], BoxDynError> {
    bytes
        .try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", bytes.len()).into())
}

/// A binary `numeric` as the nearest float: its base-10000 digits written out in decimal and
/// parsed, so the rounding is the standard library's (correct) one.
fn numeric(bytes: &[u8]) -> Result<f64, BoxDynError> {
    let word = |i: usize| -> Result<i16, BoxDynError> {
        Ok(i16::from_be_bytes(fixed(
            bytes.get(i * 2..i * 2 + 2).ok_or("truncated numeric")?,
        )?))
    };
    let (ndigits, weight, sign) = (word(0)?, word(1)?, word(2)? as u16);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok(f64::NAN),
        0xD000 => return Ok(f64::INFINITY),
        0xF000 => return Ok(f64::NEG_INFINITY),
        other => return Err(format!("numeric with unknown sign {other:#x}").into()),
    }
    let ndigits = usize::try_from(ndigits).map_err(|_| "numeric with negative length")?;
    let mut text = String::with_capacity(ndigits * 4 + 8);
    if sign == 0x4000 {
        text.push('-');
    }
    text.push('0');
    for i in 0..ndigits {
        text.push_str(&format!("{:04}", word(4 + i)?));
    }
    // The last base-10000 digit is worth 10000^(weight - ndigits + 1).
    let exponent = 4 * (i64::from(weight) - ndigits as i64 + 1);
    text.push_str(&format!("e{exponent}"));
    Ok(text.parse::<f64>()?)
}

/// Reads every row of `query` on `url` for `shard`, handing on record batches of
/// `job.options.batch_rows` rows; false when `each` said to stop.
pub(crate) fn read(
    shard: &Shard,
    job: &BatchJob,
    url: &str,
    query: &str,
    each: &mut OnBatch<'_>,
) -> Result<bool> {
    let source = redact(url);
    let url = resolve(url, &source)?;
    let url = url.expose();
    let fail = |e: &dyn std::fmt::Display| {
        BatchError::source(&source, hide_passwords(&e.to_string(), url))
    };
    let runtime = runtime()?;
    let mut conn = runtime.block_on(connect(url, &fail))?;
    let statement = runtime
        .block_on(conn.prepare(query))
        .map_err(|e| fail(&format!("the query failed: {e}")))?;
    let (names, types, all) = result_columns(&statement);
    Mapper::new(job, shard.index, &source, &all)?;
    let wanted: Vec<usize> = job
        .columns()
        .into_iter()
        .filter_map(|c| names.iter().position(|n| *n == c))
        .collect();
    let (columns, schema) = read_columns(&statement, &names, &types, &wanted, &source)?;
    let mapper = Mapper::new(job, shard.index, &source, &schema)?;
    let read_all = fetch(
        &runtime,
        &mut conn,
        &statement,
        (&columns, &names, schema),
        job.options.batch_rows,
        &fail,
        &mut |batch, first| each(&mapper, &batch, Locator::Rows { first }, Vec::new()),
    )?;
    // The rows are all read: a failure to say goodbye changes nothing.
    let _ = runtime.block_on(conn.close());
    Ok(read_all)
}

/// Every row of `query` on `url` (its secret references read now), every column typed as the
/// table above, handed on as record batches of up to `batch_rows` rows until `each` says to
/// stop. A column of another type fails, naming it: cast it in the query.
pub fn query(
    url: &str,
    query: &str,
    batch_rows: usize,
    each: &mut dyn FnMut(RecordBatch) -> Result<bool>,
) -> Result<()> {
    let source = redact(url);
    let url = resolve(url, &source)?;
    let url = url.expose();
    let fail = |e: &dyn std::fmt::Display| {
        BatchError::source(&source, hide_passwords(&e.to_string(), url))
    };
    let runtime = runtime()?;
    let mut conn = runtime.block_on(connect(url, &fail))?;
    let statement = runtime
        .block_on(conn.prepare(query))
        .map_err(|e| fail(&format!("the query failed: {e}")))?;
    let (names, types, _) = result_columns(&statement);
    let every: Vec<usize> = (0..names.len()).collect();
    let (columns, schema) = read_columns(&statement, &names, &types, &every, &source)?;
    fetch(
        &runtime,
        &mut conn,
        &statement,
        (&columns, &names, schema),
        batch_rows,
        &fail,
        &mut |batch, _| each(batch),
    )?;
    let _ = runtime.block_on(conn.close());
    Ok(())
}

/// Result columns read: (position, type) of each.
type ReadColumns = Vec<(usize, PgType)>;

/// The result columns at `wanted` (positions), each with the type it is read as, and their
/// schema; a column of a type not read fails, naming it and the types that are.
fn read_columns(
    statement: &sqlx::postgres::PgStatement<'_>,
    names: &[&str],
    types: &[Option<PgType>],
    wanted: &[usize],
    source: &str,
) -> Result<(ReadColumns, Arc<Schema>)> {
    let mut columns = Vec::with_capacity(wanted.len());
    for &i in wanted {
        let Some(t) = types[i] else {
            let pg_type = statement.columns()[i].type_info().name().to_lowercase();
            return Err(BatchError::Column {
                file: source.to_owned(),
                reason: format!(
                    "column `{}` is of PostgreSQL type {pg_type}, which Cellar does not read \
                     (int2, int4, int8, float4, float8, numeric, bool, text, varchar, bpchar, \
                     name, timestamptz, timestamp, date, bytea): cast it in the query",
                    names[i]
                ),
            });
        };
        columns.push((i, t));
    }
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(i, t)| Field::new(names[*i], t.data_type(), true))
            .collect::<Vec<_>>(),
    ));
    Ok((columns, schema))
}

/// The result columns a reader keeps: (position, type) of each, every column's name, and the
/// schema of the kept ones.
type Kept<'a> = (&'a [(usize, PgType)], &'a [&'a str], Arc<Schema>);

/// Streams `statement`'s rows as record batches of the `kept` columns, `batch_rows` at a time,
/// to `each` (with the first row's number); false when `each` said to stop.
fn fetch(
    runtime: &Handle,
    conn: &mut PgConnection,
    statement: &sqlx::postgres::PgStatement<'_>,
    (columns, names, schema): Kept<'_>,
    batch_rows: usize,
    fail: &dyn Fn(&dyn std::fmt::Display) -> BatchError,
    each: &mut dyn FnMut(RecordBatch, u64) -> Result<bool>,
) -> Result<bool> {
    let batch_rows = batch_rows.max(1);
    let mut builders: Vec<Builder> = columns.iter().map(|(_, t)| t.builder(batch_rows)).collect();
    let mut rows = statement.query().fetch(conn);
    let mut first = 0u64;
    loop {
        let (count, more) = runtime.block_on(async {
            let mut count = 0usize;
            while count < batch_rows {
                let Some(row) = rows.next().await else {
                    return Ok((count, false));
                };
                let row: PgRow = row.map_err(|e| fail(&format!("the query failed: {e}")))?;
                for ((i, t), builder) in columns.iter().zip(&mut builders) {
                    let cell = row.try_get_raw(*i).map_err(|e| fail(&e))?;
                    builder.append(*t, cell).map_err(|e| {
                        fail(&format!(
                            "row {}: column `{}`: {e}",
                            first + count as u64,
                            names[*i]
                        ))
                    })?;
                }
                count += 1;
            }
            Ok::<_, BatchError>((count, true))
        })?;
        if count > 0 {
            let arrays: Vec<ArrayRef> = builders.iter_mut().map(Builder::finish).collect();
            let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| fail(&e))?;
            if !each(batch, first)? {
                return Ok(false);
            }
            first += count as u64;
        }
        if !more {
            return Ok(true);
        }
    }
}

/// The query's columns as the reader types them (columns of types it does not read as
/// `Null`): the `source` table a transform sees.
pub(crate) fn describe(url: &str, query: &str) -> Result<Schema> {
    let source = redact(url);
    let url = resolve(url, &source)?;
    let url = url.expose();
    let fail = |e: &dyn std::fmt::Display| {
        BatchError::source(&source, hide_passwords(&e.to_string(), url))
    };
    let runtime = runtime()?;
    runtime.block_on(async {
        let mut conn = connect(url, &fail).await?;
        let statement = conn
            .prepare(query)
            .await
            .map_err(|e| fail(&format!("the query failed: {e}")))?;
        let (_, _, all) = result_columns(&statement);
        drop(statement);
        let _ = conn.close().await;
        Ok(all)
    })
}

fn runtime() -> Result<Handle> {
    Handle::try_current().map_err(|e| {
        BatchError::Internal(format!("the PostgreSQL reader needs a Tokio runtime: {e}"))
    })
}

async fn connect(
    url: &str,
    fail: &dyn Fn(&dyn std::fmt::Display) -> BatchError,
) -> Result<PgConnection> {
    // The registry's options: the same URL parameters, TLS included, read the same way.
    let options = cellar_registry::postgres::connect_options(url)
        .map_err(|e| fail(&format!("invalid URL: {e}")))?;
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(fail(&format!("cannot connect: {e}"))),
        Err(_) => Err(fail(&format!(
            "cannot connect: no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// The result's column names, the types read (`None`: not read), and every column as a
/// schema, those of types not read as all-null placeholders: the mapper names a missing
/// column with the others, and refuses types that cannot fit.
fn result_columns<'s>(
    statement: &'s sqlx::postgres::PgStatement<'_>,
) -> (Vec<&'s str>, Vec<Option<PgType>>, Schema) {
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    let types: Vec<Option<PgType>> = statement
        .columns()
        .iter()
        .map(|c| c.type_info().oid().and_then(|oid| PgType::of(oid.0)))
        .collect();
    let all = Schema::new(
        names
            .iter()
            .zip(&types)
            .map(|(n, t)| Field::new(*n, t.map_or(DataType::Null, PgType::data_type), true))
            .collect::<Vec<_>>(),
    );
    (names, types, all)
}

/// The URL the spec refers to (`postgres://u:${PG_PASSWORD}@db/app`), its secret references
/// read now, when the source is used: the spec and the registry hold only the references, and
/// the machine that runs the shard holds the secrets. A reference it cannot read fails the
/// shard with the reference's name; the shard may be run again, on a worker that has it.
fn resolve(url: &str, source: &str) -> Result<Secret> {
    secret::resolve(url).map_err(|e| BatchError::source(source, e))
}

/// `url` as messages show it: its passwords hidden. A keyword/value connection string (which
/// the reader cannot connect with anyway) is not shown at all: a password may sit anywhere in
/// it. A URL that is one reference (`${PG_URL}`) is shown as that.
pub(crate) fn redact(url: &str) -> String {
    show_url(url, "(PostgreSQL URL)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_that_are_not_urls_are_not_shown() {
        assert_eq!(redact("host=db password=hush"), "(PostgreSQL URL)");
        assert_eq!(redact("${PG_URL}"), "${PG_URL}");
        assert_eq!(
            redact("postgres://me:hush@db/app"),
            "postgres://me:***@db/app"
        );
    }

    fn numeric_bytes(weight: i16, sign: u16, digits: &[i16]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((digits.len() as i16).to_be_bytes());
        out.extend(weight.to_be_bytes());
        out.extend(sign.to_be_bytes());
        out.extend(0u16.to_be_bytes());
        for d in digits {
            out.extend(d.to_be_bytes());
        }
        out
    }

    #[test]
    fn numerics_become_the_nearest_float() {
        // 12345.678 = 1|2345|6780 with weight 1.
        let v = numeric(&numeric_bytes(1, 0, &[1, 2345, 6780])).unwrap();
        assert_eq!(v, 12345.678);
        // -0.001 = 0.0010 with weight -1.
        let v = numeric(&numeric_bytes(-1, 0x4000, &[10])).unwrap();
        assert_eq!(v, -0.001);
        assert_eq!(numeric(&numeric_bytes(0, 0, &[])).unwrap(), 0.0);
        assert_eq!(numeric(&numeric_bytes(2, 0, &[7])).unwrap(), 7e8);
        assert!(numeric(&numeric_bytes(0, 0xC000, &[])).unwrap().is_nan());
        assert!(numeric(&[0, 1]).is_err());
    }
}
