//! Arrow columns read cell by cell, and cells coerced to feature values, keys and event times.
//!
//! A column is downcast once per record batch into a [`Column`] (integers widened to `i64`,
//! floats to `f64`, timestamps and dates to epoch milliseconds, all vectorised), so reading a
//! cell is a `match` on a variant that is the same for every row, never a dynamic dispatch or
//! a downcast per cell. Which column types can feed which feature types is decided once per
//! file ([`Kind::feeds`]): a column that can never fit fails the shard with one clear error
//! instead of rejecting every row; what is left to reject row by row is what only the row
//! shows (nulls, text that does not parse, numbers out of range, vectors of the wrong length).

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeBinaryArray, FixedSizeListArray,
    Float64Array, Int64Array, LargeBinaryArray, LargeListArray, LargeStringArray, ListArray,
    StringArray, StringViewArray, UInt64Array,
};
use arrow_schema::{DataType, TimeUnit};
use cellar_spec::value::parse_rfc3339;
use cellar_spec::{KeyPart, KeyType, ScalarType, Value, ValueType};

const MS_PER_DAY: i64 = 86_400_000;

/// What a column holds, as far as mapping cares; decided from the schema once per file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Every cell is null (Arrow's `Null` type).
    Null,
    Bool,
    /// Signed integers of any width, and unsigned ones up to 32 bits.
    Int,
    /// Unsigned 64-bit integers: their values above `i64::MAX` are rejected row by row.
    UInt,
    Float,
    Text,
    Bytes,
    /// Timestamps of any unit or time zone, and dates.
    Time,
    /// A list of one of the other kinds.
    List(Box<Kind>),
    /// A type batch ingestion does not read (decimals, structs, maps, ...).
    Other(String),
}

impl Kind {
    pub fn of(t: &DataType) -> Kind {
        match t {
            DataType::Null => Kind::Null,
            DataType::Boolean => Kind::Bool,
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Kind::Int,
            DataType::UInt64 => Kind::UInt,
            DataType::Float32 | DataType::Float64 => Kind::Float,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
            DataType::Binary | DataType::LargeBinary | DataType::FixedSizeBinary(_) => Kind::Bytes,
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => Kind::Time,
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                match Kind::of(f.data_type()) {
                    Kind::List(_) | Kind::Other(_) => Kind::Other(t.to_string()),
                    inner => Kind::List(Box::new(inner)),
                }
            }
            other => Kind::Other(other.to_string()),
        }
    }

    /// Whether cells of this kind can become values of type `t` (text is parsed, so it feeds
    /// every type and is checked row by row).
    pub fn feeds(&self, t: ValueType) -> bool {
        match (self, t) {
            (Kind::Null | Kind::Text, _) => true,
            (Kind::Other(_), _) => false,
            (kind, ValueType::Scalar(s)) => kind.feeds_scalar(s),
            (Kind::List(inner), ValueType::List(s) | ValueType::Set(s)) => inner.feeds_scalar(s),
            (Kind::List(inner), ValueType::Vector(_)) => {
                matches!(**inner, Kind::Int | Kind::UInt | Kind::Float | Kind::Null)
            }
            _ => false,
        }
    }

    fn feeds_scalar(&self, s: ScalarType) -> bool {
        matches!(
            (self, s),
            (Kind::Null | Kind::Text, _)
                | (Kind::Bool, ScalarType::Bool)
                | (
                    Kind::Int | Kind::UInt | Kind::Float,
                    ScalarType::Int64 | ScalarType::Float64
                )
                | (Kind::Bytes, ScalarType::Bytes)
                | (Kind::Time | Kind::Int | Kind::UInt, ScalarType::Timestamp)
        )
    }

    /// Whether cells of this kind can be a key field of type `t`.
    pub fn feeds_key(&self, t: KeyType) -> bool {
        match t {
            KeyType::String => matches!(self, Kind::Text | Kind::Null),
            KeyType::Int64 => matches!(self, Kind::Int | Kind::UInt | Kind::Text | Kind::Null),
        }
    }

    /// Whether cells of this kind can be event times.
    pub fn feeds_event_time(&self) -> bool {
        matches!(
            self,
            Kind::Time | Kind::Int | Kind::UInt | Kind::Text | Kind::Null
        )
    }
}

/// One column of a record batch, downcast and normalised.
#[derive(Debug)]
pub enum Column {
    Null,
    Bool(BooleanArray),
    Int(Int64Array),
    UInt(UInt64Array),
    Float(Float64Array),
    Text(StringArray),
    LargeText(LargeStringArray),
    TextView(StringViewArray),
    Binary(BinaryArray),
    LargeBinary(LargeBinaryArray),
    FixedBinary(FixedSizeBinaryArray),
    /// Epoch milliseconds.
    Time(Int64Array),
    List(ListArray, Box<Column>),
    LargeList(LargeListArray, Box<Column>),
    FixedList(FixedSizeListArray, Box<Column>),
    /// A type [`Kind::Other`]; mapping never reads it (the file is refused first).
    Other,
}

/// One cell, borrowed from its column.
#[derive(Debug, Clone, Copy)]
pub enum Cell<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(&'a str),
    Bytes(&'a [u8]),
    /// Epoch milliseconds.
    Time(i64),
    List(Items<'a>),
}

/// The elements of a list cell.
#[derive(Debug, Clone, Copy)]
pub enum Items<'a> {
    /// Elements `start..end` of an Arrow list's child column.
    Column(&'a Column, usize, usize),
    /// Cells built straight from values (see [`crate::cells`]).
    Cells(&'a [Cell<'a>]),
}

impl<'a> Items<'a> {
    pub fn len(&self) -> usize {
        match self {
            Items::Column(_, start, end) => end - start,
            Items::Cells(cells) => cells.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` (`i < len()`).
    pub fn get(&self, i: usize) -> Cell<'a> {
        match self {
            Items::Column(child, start, _) => child.cell(start + i),
            Items::Cells(cells) => cells[i],
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Cell<'a>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

fn to_ms(unit: TimeUnit, v: i64) -> i64 {
    match unit {
        TimeUnit::Second => v.saturating_mul(1000),
        TimeUnit::Millisecond => v,
        TimeUnit::Microsecond => v.div_euclid(1000),
        TimeUnit::Nanosecond => v.div_euclid(1_000_000),
    }
}

impl Column {
    /// Downcasts `array` once. Integer, float and time columns are converted to one width in a
    /// vectorised pass (a few microseconds per batch) so that reading cells needs no per-type
    /// code.
    pub fn new(array: &ArrayRef) -> Column {
        Column::try_new(array).unwrap_or(Column::Other)
    }

    fn try_new(a: &ArrayRef) -> Option<Column> {
        Some(match a.data_type() {
            DataType::Null => Column::Null,
            DataType::Boolean => Column::Bool(a.as_boolean_opt()?.clone()),
            DataType::Int8 => Column::Int(a.as_primitive_opt::<Int8Type>()?.unary(i64::from)),
            DataType::Int16 => Column::Int(a.as_primitive_opt::<Int16Type>()?.unary(i64::from)),
            DataType::Int32 => Column::Int(a.as_primitive_opt::<Int32Type>()?.unary(i64::from)),
            DataType::Int64 => Column::Int(a.as_primitive_opt::<Int64Type>()?.clone()),
            DataType::UInt8 => Column::Int(a.as_primitive_opt::<UInt8Type>()?.unary(i64::from)),
            DataType::UInt16 => Column::Int(a.as_primitive_opt::<UInt16Type>()?.unary(i64::from)),
            DataType::UInt32 => Column::Int(a.as_primitive_opt::<UInt32Type>()?.unary(i64::from)),
            DataType::UInt64 => Column::UInt(a.as_primitive_opt::<UInt64Type>()?.clone()),
            DataType::Float32 => {
                Column::Float(a.as_primitive_opt::<Float32Type>()?.unary(f64::from))
            }
            DataType::Float64 => Column::Float(a.as_primitive_opt::<Float64Type>()?.clone()),
            DataType::Utf8 => Column::Text(a.as_string_opt::<i32>()?.clone()),
            DataType::LargeUtf8 => Column::LargeText(a.as_string_opt::<i64>()?.clone()),
            DataType::Utf8View => Column::TextView(a.as_string_view_opt()?.clone()),
            DataType::Binary => Column::Binary(a.as_binary_opt::<i32>()?.clone()),
            DataType::LargeBinary => Column::LargeBinary(a.as_binary_opt::<i64>()?.clone()),
            DataType::FixedSizeBinary(_) => {
                Column::FixedBinary(a.as_fixed_size_binary_opt()?.clone())
            }
            DataType::Timestamp(unit, _) => {
                let unit = *unit;
                let ms = match unit {
                    TimeUnit::Second => a
                        .as_primitive_opt::<TimestampSecondType>()?
                        .unary(|v| to_ms(unit, v)),
                    TimeUnit::Millisecond => a
                        .as_primitive_opt::<TimestampMillisecondType>()?
                        .reinterpret_cast::<Int64Type>(),
                    TimeUnit::Microsecond => a
                        .as_primitive_opt::<TimestampMicrosecondType>()?
                        .unary(|v| to_ms(unit, v)),
                    TimeUnit::Nanosecond => a
                        .as_primitive_opt::<TimestampNanosecondType>()?
                        .unary(|v| to_ms(unit, v)),
                };
                Column::Time(ms)
            }
            DataType::Date32 => Column::Time(
                a.as_primitive_opt::<Date32Type>()?
                    .unary(|d| i64::from(d).saturating_mul(MS_PER_DAY)),
            ),
            DataType::Date64 => Column::Time(a.as_primitive_opt::<Date64Type>()?.unary(|v| v)),
            DataType::List(_) => {
                let l = a.as_list_opt::<i32>()?;
                Column::List(l.clone(), Box::new(Column::new(l.values())))
            }
            DataType::LargeList(_) => {
                let l = a.as_list_opt::<i64>()?;
                Column::LargeList(l.clone(), Box::new(Column::new(l.values())))
            }
            DataType::FixedSizeList(_, _) => {
                let l = a.as_fixed_size_list_opt()?;
                Column::FixedList(l.clone(), Box::new(Column::new(l.values())))
            }
            _ => return None,
        })
    }

    /// The cell at `row`.
    #[inline]
    pub fn cell(&self, row: usize) -> Cell<'_> {
        macro_rules! cell {
            ($array:expr, $variant:ident, $value:expr) => {
                if $array.is_null(row) {
                    Cell::Null
                } else {
                    Cell::$variant($value)
                }
            };
        }
        match self {
            Column::Null | Column::Other => Cell::Null,
            Column::Bool(a) => cell!(a, Bool, a.value(row)),
            Column::Int(a) => cell!(a, Int, a.value(row)),
            Column::UInt(a) => cell!(a, UInt, a.value(row)),
            Column::Float(a) => cell!(a, Float, a.value(row)),
            Column::Text(a) => cell!(a, Text, a.value(row)),
            Column::LargeText(a) => cell!(a, Text, a.value(row)),
            Column::TextView(a) => cell!(a, Text, a.value(row)),
            Column::Binary(a) => cell!(a, Bytes, a.value(row)),
            Column::LargeBinary(a) => cell!(a, Bytes, a.value(row)),
            Column::FixedBinary(a) => cell!(a, Bytes, a.value(row)),
            Column::Time(a) => cell!(a, Time, a.value(row)),
            Column::List(a, child) => {
                if a.is_null(row) {
                    return Cell::Null;
                }
                let o = a.value_offsets();
                Cell::List(Items::Column(child, o[row] as usize, o[row + 1] as usize))
            }
            Column::LargeList(a, child) => {
                if a.is_null(row) {
                    return Cell::Null;
                }
                let o = a.value_offsets();
                Cell::List(Items::Column(child, o[row] as usize, o[row + 1] as usize))
            }
            Column::FixedList(a, child) => {
                if a.is_null(row) {
                    return Cell::Null;
                }
                let n = a.value_length() as usize;
                Cell::List(Items::Column(child, row * n, row * n + n))
            }
        }
    }
}

/// Why a cell did not fit: `expected {expected}, got {got}`, as the stream path words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub expected: String,
    pub got: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "expected {}, got {}", self.expected, self.got)
    }
}

impl Cell<'_> {
    /// How the cell is named in reject reasons.
    pub fn describe(&self) -> String {
        match self {
            Cell::Null => "null".into(),
            Cell::Bool(b) => format!("the boolean {b}"),
            Cell::Int(i) | Cell::Time(i) => format!("the number {i}"),
            Cell::UInt(u) => format!("the number {u}"),
            Cell::Float(f) => format!("the number {f}"),
            Cell::Text(s) if s.chars().count() > 40 => {
                let head: String = s.chars().take(40).collect();
                format!("the text {head:?}...")
            }
            Cell::Text(s) => format!("the text {s:?}"),
            Cell::Bytes(b) => format!("{} bytes", b.len()),
            Cell::List(items) => format!("a list of {} elements", items.len()),
        }
    }

    fn mismatch(&self, expected: impl Into<String>) -> Mismatch {
        Mismatch {
            expected: expected.into(),
            got: self.describe(),
        }
    }

    /// The value of a feature of type `t`; a null cell is [`Value::Null`].
    pub fn to_value(self, t: ValueType) -> Result<Value, Mismatch> {
        match (t, self) {
            (_, Cell::Null) => Ok(Value::Null),
            (ValueType::Scalar(s), cell) => cell.to_scalar(s),
            (ValueType::List(s) | ValueType::Set(s), Cell::List(list)) => {
                let mut items = Vec::with_capacity(list.len());
                for (i, item) in list.iter().enumerate() {
                    if matches!(item, Cell::Null) {
                        return Err(Mismatch {
                            expected: format!("{} at element {i}", name(s)),
                            got: "null".into(),
                        });
                    }
                    items.push(item.to_scalar(s).map_err(|e| Mismatch {
                        expected: format!("{} at element {i}", e.expected),
                        got: e.got,
                    })?);
                }
                Ok(match t {
                    ValueType::Set(_) => Value::set_of(items),
                    _ => Value::List(items),
                })
            }
            (ValueType::Vector(dim), Cell::List(list)) => {
                if list.len() != dim as usize {
                    return Err(Mismatch {
                        expected: format!("{dim} numbers"),
                        got: format!("{} elements", list.len()),
                    });
                }
                let mut xs = Vec::with_capacity(list.len());
                for (i, item) in list.iter().enumerate() {
                    xs.push(match item {
                        Cell::Float(f) => f as f32,
                        Cell::Int(v) => v as f32,
                        Cell::UInt(v) => v as f32,
                        other => {
                            return Err(Mismatch {
                                expected: format!("a number at element {i}"),
                                got: other.describe(),
                            })
                        }
                    });
                }
                Ok(Value::Vector(xs))
            }
            // Compound values in text columns (CSV) are JSON, read as the stream path reads
            // events.
            (_, Cell::Text(s)) => {
                let json: serde_json::Value = serde_json::from_str(s)
                    .map_err(|_| Cell::Text(s).mismatch(format!("{t} as JSON")))?;
                Value::from_json(t, &json).map_err(|e| Mismatch {
                    expected: e.expected,
                    got: e.got,
                })
            }
            (t, cell) => Err(cell.mismatch(t.to_string())),
        }
    }

    fn to_scalar(self, s: ScalarType) -> Result<Value, Mismatch> {
        let fail = || self.mismatch(name(s));
        match (s, self) {
            (_, Cell::Null) => Ok(Value::Null),
            (ScalarType::Bool, Cell::Bool(b)) => Ok(Value::Bool(b)),
            (ScalarType::Bool, Cell::Text(t)) => match t.trim() {
                "1" => Ok(Value::Bool(true)),
                "0" => Ok(Value::Bool(false)),
                t if t.eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
                t if t.eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
                _ => Err(fail()),
            },
            (ScalarType::Int64, Cell::Int(i)) => Ok(Value::Int64(i)),
            (ScalarType::Int64, Cell::UInt(u)) => {
                i64::try_from(u).map(Value::Int64).map_err(|_| fail())
            }
            // Writers that cannot hold a null integer (pandas) store whole numbers as floats,
            // and NaN for null.
            (ScalarType::Int64, Cell::Float(f)) if f.is_nan() => Ok(Value::Null),
            (ScalarType::Int64, Cell::Float(f)) => {
                if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
                    Ok(Value::Int64(f as i64))
                } else {
                    Err(self.mismatch("int64 (a whole number)"))
                }
            }
            (ScalarType::Int64, Cell::Text(t)) => {
                t.trim().parse().map(Value::Int64).map_err(|_| fail())
            }
            (ScalarType::Float64, Cell::Float(f)) => Ok(Value::Float64(f)),
            (ScalarType::Float64, Cell::Int(i)) => Ok(Value::Float64(i as f64)),
            (ScalarType::Float64, Cell::UInt(u)) => Ok(Value::Float64(u as f64)),
            (ScalarType::Float64, Cell::Text(t)) => {
                t.trim().parse().map(Value::Float64).map_err(|_| fail())
            }
            (ScalarType::String, Cell::Text(t)) => Ok(Value::String(t.to_owned())),
            (ScalarType::Bytes, Cell::Bytes(b)) => Ok(Value::Bytes(b.to_vec())),
            // Bytes in text are base64, as in JSON events.
            (ScalarType::Bytes, Cell::Text(t)) => Value::from_json(
                ValueType::Scalar(ScalarType::Bytes),
                &serde_json::Value::String(t.to_owned()),
            )
            .map_err(|_| self.mismatch("base64 text")),
            (ScalarType::Timestamp, cell) => cell
                .to_millis()
                .map(Value::Timestamp)
                .ok_or_else(|| self.mismatch("an RFC 3339 timestamp or epoch milliseconds")),
            _ => Err(fail()),
        }
    }

    /// The cell as epoch milliseconds: a timestamp or date, an integer (milliseconds), or text
    /// holding either RFC 3339 or an integer.
    pub fn to_millis(self) -> Option<i64> {
        match self {
            Cell::Time(ms) | Cell::Int(ms) => Some(ms),
            Cell::UInt(u) => i64::try_from(u).ok(),
            Cell::Text(t) => {
                let t = t.trim();
                t.parse::<i64>().ok().or_else(|| parse_rfc3339(t))
            }
            _ => None,
        }
    }
}

impl<'a> Cell<'a> {
    /// The cell as a key field value; `None` when it cannot be one (null, a float, ...).
    pub fn to_key_part(self) -> Option<KeyPart<'a>> {
        match self {
            Cell::Text(s) => Some(KeyPart::Text(s)),
            Cell::Int(i) => Some(KeyPart::Int(i)),
            Cell::UInt(u) => i64::try_from(u).ok().map(KeyPart::Int),
            _ => None,
        }
    }
}

fn name(s: ScalarType) -> String {
    ValueType::Scalar(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::builder::{ListBuilder, StringBuilder};
    use arrow_array::{Float32Array, Int32Array, TimestampMicrosecondArray};
    use std::sync::Arc;

    fn t(s: &str) -> ValueType {
        s.parse().unwrap()
    }

    #[test]
    fn integers_and_floats_are_widened_once_per_batch() {
        let ints: ArrayRef = Arc::new(Int32Array::from(vec![Some(7), None]));
        let col = Column::new(&ints);
        assert_eq!(col.cell(0).to_value(t("int64")), Ok(Value::Int64(7)));
        assert_eq!(col.cell(0).to_value(t("float64")), Ok(Value::Float64(7.0)));
        assert_eq!(col.cell(1).to_value(t("int64")), Ok(Value::Null));
        let floats: ArrayRef = Arc::new(Float32Array::from(vec![1.5f32, 2.0, f32::NAN]));
        let col = Column::new(&floats);
        assert_eq!(col.cell(0).to_value(t("float64")), Ok(Value::Float64(1.5)));
        assert_eq!(col.cell(1).to_value(t("int64")), Ok(Value::Int64(2)));
        assert_eq!(col.cell(2).to_value(t("int64")), Ok(Value::Null));
        assert_eq!(
            col.cell(0).to_value(t("int64")).unwrap_err().to_string(),
            "expected int64 (a whole number), got the number 1.5"
        );
    }

    #[test]
    fn timestamps_of_any_unit_become_milliseconds() {
        let us: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![1_700_000_000_123_456]).with_timezone("UTC"),
        );
        let col = Column::new(&us);
        assert_eq!(col.cell(0).to_millis(), Some(1_700_000_000_123));
        assert_eq!(
            col.cell(0).to_value(t("timestamp")),
            Ok(Value::Timestamp(1_700_000_000_123))
        );
        assert_eq!(
            Cell::Text("2024-01-02T03:04:05.5+01:00").to_millis(),
            Some(1_704_161_045_500)
        );
        assert_eq!(
            Cell::Text(" 1700000000000 ").to_millis(),
            Some(1_700_000_000_000)
        );
        assert_eq!(Cell::Text("yesterday").to_millis(), None);
    }

    #[test]
    fn text_is_parsed_to_the_feature_type() {
        assert_eq!(Cell::Text("42").to_value(t("int64")), Ok(Value::Int64(42)));
        assert_eq!(
            Cell::Text("TRUE").to_value(t("bool")),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            Cell::Text("0.25").to_value(t("float64")),
            Ok(Value::Float64(0.25))
        );
        assert_eq!(
            Cell::Text(r#"["b", "a", "b"]"#).to_value(t("set<string>")),
            Ok(Value::Set(vec![
                Value::String("a".into()),
                Value::String("b".into())
            ]))
        );
        assert_eq!(
            Cell::Text("aGk=").to_value(t("bytes")),
            Ok(Value::Bytes(b"hi".to_vec()))
        );
        assert_eq!(
            Cell::Text("old")
                .to_value(t("int64"))
                .unwrap_err()
                .to_string(),
            "expected int64, got the text \"old\""
        );
        assert_eq!(
            Cell::Text("[1, 2]")
                .to_value(t("vector<float32, 3>"))
                .unwrap_err()
                .to_string(),
            "expected 3 numbers, got 2 elements"
        );
    }

    #[test]
    fn list_columns_become_lists_sets_and_vectors() {
        let mut b = ListBuilder::new(StringBuilder::new());
        b.values().append_value("x");
        b.values().append_value("w");
        b.values().append_value("x");
        b.append(true);
        b.append(false);
        b.values().append_null();
        b.append(true);
        let lists: ArrayRef = Arc::new(b.finish());
        let col = Column::new(&lists);
        assert_eq!(
            Kind::of(lists.data_type()),
            Kind::List(Box::new(Kind::Text))
        );
        assert_eq!(
            col.cell(0).to_value(t("list<string>")),
            Ok(Value::List(vec![
                Value::String("x".into()),
                Value::String("w".into()),
                Value::String("x".into())
            ]))
        );
        assert_eq!(
            col.cell(0).to_value(t("set<string>")),
            Ok(Value::Set(vec![
                Value::String("w".into()),
                Value::String("x".into())
            ]))
        );
        assert_eq!(col.cell(1).to_value(t("list<string>")), Ok(Value::Null));
        assert_eq!(
            col.cell(2)
                .to_value(t("list<string>"))
                .unwrap_err()
                .to_string(),
            "expected string at element 0, got null"
        );
    }

    #[test]
    fn kinds_decide_which_columns_feed_which_types() {
        assert!(Kind::Int.feeds(t("float64")));
        assert!(Kind::Int.feeds(t("timestamp")));
        assert!(!Kind::Int.feeds(t("string")));
        assert!(!Kind::Bool.feeds(t("int64")));
        assert!(Kind::Text.feeds(t("map<string, int64>")));
        assert!(!Kind::Float.feeds_key(KeyType::Int64));
        assert!(!Kind::Int.feeds_key(KeyType::String));
        assert!(Kind::List(Box::new(Kind::Float)).feeds(t("vector<float32, 4>")));
        assert!(!Kind::of(&DataType::Decimal128(10, 2)).feeds(t("float64")));
    }
}
