//! Feature values as Arrow columns: the Arrow type each feature type is evaluated as, and a
//! column built from the values of many entities.

use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int64Builder,
    ListBuilder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, TimeUnit};
use cellar_spec::{ScalarType, Value, ValueType};

/// The time zone of every timestamp an expression sees.
pub const UTC: &str = "UTC";

/// The Arrow type a feature of type `t` is kept and answered as outside expressions (in the
/// offline history, in Arrow answers): [`data_type`]'s, and maps as JSON text.
pub fn stored_type(t: ValueType) -> DataType {
    data_type(t).unwrap_or(DataType::Utf8)
}

/// A column of `values` of feature type `t` as [`stored_type`] types it.
pub fn stored_column<'a>(t: ValueType, values: impl IntoIterator<Item = &'a Value>) -> ArrayRef {
    match t {
        ValueType::Map(_) => {
            let mut builder = StringBuilder::new();
            for value in values {
                match value {
                    Value::Null => builder.append_null(),
                    v => builder.append_value(v.to_json().to_string()),
                }
            }
            Arc::new(builder.finish())
        }
        t => column(t, values),
    }
}

/// The Arrow type a feature of type `t` is evaluated as. Sets are lists (sorted, distinct),
/// vectors lists of float32; maps have none yet.
pub fn data_type(t: ValueType) -> Option<DataType> {
    Some(match t {
        ValueType::Scalar(s) => scalar_type(s),
        ValueType::List(s) | ValueType::Set(s) => list_of(scalar_type(s)),
        ValueType::Vector(_) => list_of(DataType::Float32),
        ValueType::Map(_) => return None,
    })
}

fn scalar_type(s: ScalarType) -> DataType {
    match s {
        ScalarType::Bool => DataType::Boolean,
        ScalarType::Int64 => DataType::Int64,
        ScalarType::Float64 => DataType::Float64,
        ScalarType::String => DataType::Utf8,
        ScalarType::Bytes => DataType::Binary,
        ScalarType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
    }
}

fn list_of(t: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(t, true)))
}

/// A column of type [`data_type`]`(t)` holding `values`, one per row. A value that does not
/// have type `t` (which the write paths never store) is a null.
pub fn column<'a>(t: ValueType, values: impl IntoIterator<Item = &'a Value>) -> ArrayRef {
    let values = values.into_iter();
    match t {
        ValueType::Scalar(s) => {
            let mut builder = ScalarBuilder::new(s, values.size_hint().0);
            for value in values {
                builder.push(value);
            }
            ArrayBuilder::finish(&mut builder)
        }
        ValueType::List(s) | ValueType::Set(s) => {
            let rows = values.size_hint().0;
            let mut builder = ListBuilder::with_capacity(ScalarBuilder::new(s, rows), rows);
            for value in values {
                match value {
                    Value::List(items) | Value::Set(items) => {
                        for item in items {
                            builder.values().push(item);
                        }
                        builder.append(true);
                    }
                    _ => builder.append(false),
                }
            }
            Arc::new(builder.finish())
        }
        ValueType::Vector(_) => {
            let rows = values.size_hint().0;
            let mut builder = ListBuilder::with_capacity(Float32Builder::new(), rows);
            for value in values {
                match value {
                    Value::Vector(xs) => {
                        builder.values().append_slice(xs);
                        builder.append(true);
                    }
                    _ => builder.append(false),
                }
            }
            Arc::new(builder.finish())
        }
        ValueType::Map(_) => {
            // `data_type` has no Arrow type for maps, so scopes refuse them before this.
            let mut builder = StringBuilder::new();
            for _ in values {
                builder.append_null();
            }
            Arc::new(builder.finish())
        }
    }
}

/// A `list<element>` column with one row per item of `rows`: the row's elements, or null
/// for `None`. Built straight from borrowed values, as a time series' records hold them.
/// `elements` is how many elements the rows hold in all (a capacity: the builders are sized
/// once, not grown from Arrow's default of 1,024).
pub fn list_column<'a, I>(
    element: ScalarType,
    elements: usize,
    rows: impl ExactSizeIterator<Item = Option<I>>,
) -> ArrayRef
where
    I: IntoIterator<Item = &'a Value>,
{
    let mut builder = ListBuilder::with_capacity(ScalarBuilder::new(element, elements), rows.len());
    for row in rows {
        match row {
            Some(items) => {
                for item in items {
                    builder.values().push(item);
                }
                builder.append(true);
            }
            None => builder.append(false),
        }
    }
    Arc::new(builder.finish())
}

/// A timestamp column of epoch milliseconds, null for `None`: records' event times.
pub fn time_column(rows: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter(rows).with_timezone(UTC))
}

/// A `list<timestamp>` column of epoch milliseconds, null for `None`: the event times of a
/// time series' records, without a value built for each. `elements` is how many times the
/// rows hold in all.
pub fn time_list_column<I>(
    elements: usize,
    rows: impl ExactSizeIterator<Item = Option<I>>,
) -> ArrayRef
where
    I: IntoIterator<Item = i64>,
{
    let mut builder = ListBuilder::with_capacity(
        TimestampMillisecondBuilder::with_capacity(elements).with_timezone(UTC),
        rows.len(),
    );
    for row in rows {
        match row {
            Some(times) => {
                for ms in times {
                    builder.values().append_value(ms);
                }
                builder.append(true);
            }
            None => builder.append(false),
        }
    }
    Arc::new(builder.finish())
}

/// A builder of one scalar type's column, taking values of that type and nulls for the rest.
enum ScalarBuilder {
    Bool(BooleanBuilder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    String(StringBuilder),
    Bytes(BinaryBuilder),
    Timestamp(TimestampMillisecondBuilder),
}

impl ScalarBuilder {
    fn new(s: ScalarType, capacity: usize) -> ScalarBuilder {
        match s {
            ScalarType::Bool => ScalarBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            ScalarType::Int64 => ScalarBuilder::Int64(Int64Builder::with_capacity(capacity)),
            ScalarType::Float64 => ScalarBuilder::Float64(Float64Builder::with_capacity(capacity)),
            // Text of a few words is the common case; longer text grows the buffer.
            ScalarType::String => {
                ScalarBuilder::String(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            ScalarType::Bytes => {
                ScalarBuilder::Bytes(BinaryBuilder::with_capacity(capacity, capacity * 16))
            }
            ScalarType::Timestamp => ScalarBuilder::Timestamp(
                TimestampMillisecondBuilder::with_capacity(capacity).with_timezone(UTC),
            ),
        }
    }

    fn push(&mut self, value: &Value) {
        match (self, value) {
            (ScalarBuilder::Bool(b), Value::Bool(v)) => b.append_value(*v),
            (ScalarBuilder::Int64(b), Value::Int64(v)) => b.append_value(*v),
            (ScalarBuilder::Float64(b), Value::Float64(v)) => b.append_value(*v),
            (ScalarBuilder::String(b), Value::String(v)) => b.append_value(v),
            (ScalarBuilder::Bytes(b), Value::Bytes(v)) => b.append_value(v),
            (ScalarBuilder::Timestamp(b), Value::Timestamp(v)) => b.append_value(*v),
            (ScalarBuilder::Bool(b), _) => b.append_null(),
            (ScalarBuilder::Int64(b), _) => b.append_null(),
            (ScalarBuilder::Float64(b), _) => b.append_null(),
            (ScalarBuilder::String(b), _) => b.append_null(),
            (ScalarBuilder::Bytes(b), _) => b.append_null(),
            (ScalarBuilder::Timestamp(b), _) => b.append_null(),
        }
    }
}

impl ArrayBuilder for ScalarBuilder {
    fn len(&self) -> usize {
        match self {
            ScalarBuilder::Bool(b) => b.len(),
            ScalarBuilder::Int64(b) => b.len(),
            ScalarBuilder::Float64(b) => b.len(),
            ScalarBuilder::String(b) => b.len(),
            ScalarBuilder::Bytes(b) => b.len(),
            ScalarBuilder::Timestamp(b) => b.len(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ScalarBuilder::Bool(b) => Arc::new(b.finish()),
            ScalarBuilder::Int64(b) => Arc::new(b.finish()),
            ScalarBuilder::Float64(b) => Arc::new(b.finish()),
            ScalarBuilder::String(b) => Arc::new(b.finish()),
            ScalarBuilder::Bytes(b) => Arc::new(b.finish()),
            ScalarBuilder::Timestamp(b) => Arc::new(b.finish()),
        }
    }

    fn finish_cloned(&self) -> ArrayRef {
        match self {
            ScalarBuilder::Bool(b) => Arc::new(b.finish_cloned()),
            ScalarBuilder::Int64(b) => Arc::new(b.finish_cloned()),
            ScalarBuilder::Float64(b) => Arc::new(b.finish_cloned()),
            ScalarBuilder::String(b) => Arc::new(b.finish_cloned()),
            ScalarBuilder::Bytes(b) => Arc::new(b.finish_cloned()),
            ScalarBuilder::Timestamp(b) => Arc::new(b.finish_cloned()),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn into_box_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// `column`'s rows in the order of `index`, repeats allowed: a column built once per distinct
/// entity, given a row per row of the request.
pub fn expand(column: &ArrayRef, index: &[usize]) -> ArrayRef {
    let indices: arrow_array::UInt32Array = index.iter().map(|&i| u32::try_from(i).ok()).collect();
    // Every index is below the column's length: `take` only fails on one that is not.
    datafusion::arrow::compute::take(column.as_ref(), &indices, None)
        .unwrap_or_else(|_| arrow_array::new_null_array(column.data_type(), index.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::column::Column;

    #[test]
    fn borrowed_rows_become_a_list_column() {
        let a = Value::String("a".into());
        let b = Value::String("b".into());
        let rows = vec![Some(vec![&a, &b]), None, Some(vec![])];
        let array = list_column(ScalarType::String, 2, rows.into_iter());
        let t: ValueType = "list<string>".parse().unwrap();
        assert_eq!(array.data_type(), &data_type(t).unwrap());
        let read = Column::new(&array);
        assert_eq!(
            read.cell(0).to_value(t).unwrap(),
            Value::List(vec![a.clone(), b.clone()])
        );
        assert_eq!(read.cell(1).to_value(t).unwrap(), Value::Null);
        assert_eq!(read.cell(2).to_value(t).unwrap(), Value::List(vec![]));
    }

    #[test]
    fn values_become_columns_and_read_back_the_same() {
        let cases: Vec<(ValueType, Vec<Value>)> = vec![
            (
                "int64".parse().unwrap(),
                vec![Value::Int64(3), Value::Null, Value::Int64(-7)],
            ),
            (
                "float64".parse().unwrap(),
                vec![Value::Float64(0.5), Value::Null],
            ),
            (
                "string".parse().unwrap(),
                vec![Value::String("a".into()), Value::Null],
            ),
            (
                "timestamp".parse().unwrap(),
                vec![Value::Timestamp(1_700_000_000_123), Value::Null],
            ),
            (
                "list<string>".parse().unwrap(),
                vec![
                    Value::List(vec![Value::String("x".into()), Value::String("y".into())]),
                    Value::List(vec![]),
                    Value::Null,
                ],
            ),
            (
                "set<int64>".parse().unwrap(),
                vec![
                    Value::Set(vec![Value::Int64(1), Value::Int64(5)]),
                    Value::Null,
                ],
            ),
            (
                "vector<float32, 2>".parse().unwrap(),
                vec![Value::Vector(vec![0.25, -1.0]), Value::Null],
            ),
        ];
        for (t, values) in cases {
            let array = column(t, &values);
            assert_eq!(array.data_type(), &data_type(t).unwrap(), "{t}");
            let read = Column::new(&array);
            for (row, value) in values.iter().enumerate() {
                assert_eq!(&read.cell(row).to_value(t).unwrap(), value, "{t} row {row}");
            }
        }
    }
}
