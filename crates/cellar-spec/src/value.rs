//! Feature value types and values, and their JSON forms.

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The element types that lists, sets and maps are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScalarType {
    Bool,
    Int64,
    Float64,
    String,
    Bytes,
    Timestamp,
}

impl ScalarType {
    fn name(self) -> &'static str {
        match self {
            ScalarType::Bool => "bool",
            ScalarType::Int64 => "int64",
            ScalarType::Float64 => "float64",
            ScalarType::String => "string",
            ScalarType::Bytes => "bytes",
            ScalarType::Timestamp => "timestamp",
        }
    }

    fn parse(s: &str) -> Option<ScalarType> {
        Some(match s {
            "bool" => ScalarType::Bool,
            "int64" => ScalarType::Int64,
            "float64" => ScalarType::Float64,
            "string" => ScalarType::String,
            "bytes" => ScalarType::Bytes,
            "timestamp" => ScalarType::Timestamp,
            _ => return None,
        })
    }
}

/// The type of a feature, written in specs as `int64`, `list<string>`, `set<int64>`,
/// `map<string, float64>` or `vector<float32, 128>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    Scalar(ScalarType),
    List(ScalarType),
    Set(ScalarType),
    /// Map from string keys to values of one type.
    Map(ScalarType),
    /// A float32 vector of a fixed dimension (embeddings).
    Vector(u32),
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueType::Scalar(s) => f.write_str(s.name()),
            ValueType::List(s) => write!(f, "list<{}>", s.name()),
            ValueType::Set(s) => write!(f, "set<{}>", s.name()),
            ValueType::Map(s) => write!(f, "map<string, {}>", s.name()),
            ValueType::Vector(d) => write!(f, "vector<float32, {d}>"),
        }
    }
}

/// Largest vector dimension a spec may declare.
pub const MAX_VECTOR_DIM: u32 = 65_536;

impl std::str::FromStr for ValueType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let expected = "expected one of bool, int64, float64, string, bytes, timestamp, \
                        list<T>, set<T>, map<string, T> or vector<float32, N>";
        if let Some(scalar) = ScalarType::parse(s) {
            return Ok(ValueType::Scalar(scalar));
        }
        let Some((outer, rest)) = s.split_once('<') else {
            return Err(format!("unknown type `{s}`: {expected}"));
        };
        let Some(inner) = rest.strip_suffix('>') else {
            return Err(format!("type `{s}` is missing its closing `>`"));
        };
        let args: Vec<&str> = inner.split(',').map(str::trim).collect();
        let scalar = |name: &str| {
            ScalarType::parse(name).ok_or_else(|| {
                format!("unknown element type `{name}` in `{s}`: elements are bool, int64, float64, string, bytes or timestamp")
            })
        };
        match (outer.trim(), args.as_slice()) {
            ("list", [t]) => Ok(ValueType::List(scalar(t)?)),
            ("set", [t]) => Ok(ValueType::Set(scalar(t)?)),
            ("map", ["string", t]) => Ok(ValueType::Map(scalar(t)?)),
            ("map", [k, _]) => Err(format!("map keys must be `string`, not `{k}`")),
            ("vector", ["float32", n]) => match n.parse::<u32>() {
                Ok(d) if (1..=MAX_VECTOR_DIM).contains(&d) => Ok(ValueType::Vector(d)),
                _ => Err(format!(
                    "vector dimension `{n}` must be a whole number from 1 to {MAX_VECTOR_DIM}"
                )),
            },
            ("vector", [e, _]) => Err(format!("vector elements must be `float32`, not `{e}`")),
            _ => Err(format!("unknown type `{s}`: {expected}")),
        }
    }
}

/// One feature value. Timestamps are milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    Bool(bool),
    Int64(i64),
    Float64(f64),
    String(String),
    Bytes(Vec<u8>),
    Timestamp(i64),
    List(Vec<Value>),
    /// Distinct elements, kept sorted so equal sets encode equally.
    Set(Vec<Value>),
    Map(Vec<(String, Value)>),
    Vector(Vec<f32>),
}

/// Why a JSON value does not fit a feature's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, got {got}")]
pub struct ValueError {
    pub expected: String,
    pub got: String,
}

fn json_kind(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "null".into(),
        serde_json::Value::Bool(_) => "a boolean".into(),
        serde_json::Value::Number(n) => format!("the number {n}"),
        serde_json::Value::String(s) if s.len() > 40 => "a string".into(),
        serde_json::Value::String(s) => format!("the string {s:?}"),
        serde_json::Value::Array(a) => format!("an array of {} elements", a.len()),
        serde_json::Value::Object(_) => "an object".into(),
    }
}

fn mismatch(expected: impl Into<String>, got: &serde_json::Value) -> ValueError {
    ValueError {
        expected: expected.into(),
        got: json_kind(got),
    }
}

/// Parses a timestamp given as RFC 3339 text or as epoch milliseconds.
pub fn parse_timestamp(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => parse_rfc3339(s),
        _ => None,
    }
}

/// Parses RFC 3339 text (`2024-01-02T03:04:05Z`, any offset) to epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Epoch milliseconds of an ISO 8601 time without a zone (`2026-12-06T06:26:33.696004`, or
/// with a space for the `T`), taken as UTC: how Feast's clients send times. None for anything
/// else, a zoned time included.
pub fn parse_naive_utc(s: &str) -> Option<i64> {
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(s, format).ok())
        .map(|t| t.and_utc().timestamp_millis())
}

/// Formats epoch milliseconds as RFC 3339 UTC text.
pub fn format_timestamp(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => ms.to_string(),
    }
}

fn scalar_from_json(t: ScalarType, v: &serde_json::Value) -> Result<Value, ValueError> {
    use serde_json::Value as J;
    match (t, v) {
        (ScalarType::Bool, J::Bool(b)) => Ok(Value::Bool(*b)),
        (ScalarType::Int64, J::Number(n)) => n
            .as_i64()
            .map(Value::Int64)
            .ok_or_else(|| mismatch("a 64-bit integer", v)),
        (ScalarType::Float64, J::Number(n)) => n
            .as_f64()
            .map(Value::Float64)
            .ok_or_else(|| mismatch("a number", v)),
        (ScalarType::String, J::String(s)) => Ok(Value::String(s.clone())),
        (ScalarType::Bytes, J::String(s)) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .map(Value::Bytes)
            .map_err(|_| mismatch("base64 text", v)),
        (ScalarType::Timestamp, _) => parse_timestamp(v)
            .map(Value::Timestamp)
            .ok_or_else(|| mismatch("an RFC 3339 timestamp or epoch milliseconds", v)),
        (t, _) => Err(mismatch(t.name(), v)),
    }
}

/// Largest integer a float64 holds exactly (2^53): conversions stay exact or give nothing.
const EXACT_FLOAT_INT: i64 = 1 << 53;

fn convert_scalar(v: &Value, to: ScalarType) -> Option<Value> {
    use ScalarType as T;
    Some(match (v, to) {
        (Value::Bool(b), T::Bool) => Value::Bool(*b),
        (Value::Bool(b), T::Int64) => Value::Int64(i64::from(*b)),
        (Value::Bool(b), T::String) => Value::String(b.to_string()),
        (Value::Int64(i), T::Int64) => Value::Int64(*i),
        (Value::Int64(i), T::Float64) if i.unsigned_abs() <= EXACT_FLOAT_INT as u64 => {
            Value::Float64(*i as f64)
        }
        (Value::Int64(i), T::String) => Value::String(i.to_string()),
        (Value::Int64(i), T::Timestamp) => Value::Timestamp(*i),
        (Value::Int64(i @ (0 | 1)), T::Bool) => Value::Bool(*i == 1),
        (Value::Float64(f), T::Float64) => Value::Float64(*f),
        (Value::Float64(f), T::Int64) if f.fract() == 0.0 && f.abs() <= EXACT_FLOAT_INT as f64 => {
            Value::Int64(*f as i64)
        }
        (Value::Float64(f), T::String) => Value::String(f.to_string()),
        (Value::String(s), T::String) => Value::String(s.clone()),
        (Value::String(s), T::Int64) => Value::Int64(s.trim().parse().ok()?),
        (Value::String(s), T::Float64) => Value::Float64(s.trim().parse().ok()?),
        (Value::String(s), T::Bool) => Value::Bool(s.trim().parse().ok()?),
        (Value::String(s), T::Bytes) => Value::Bytes(s.as_bytes().to_vec()),
        (Value::String(s), T::Timestamp) => Value::Timestamp(parse_rfc3339(s)?),
        (Value::Bytes(b), T::Bytes) => Value::Bytes(b.clone()),
        (Value::Bytes(b), T::String) => Value::String(String::from_utf8(b.clone()).ok()?),
        (Value::Timestamp(t), T::Timestamp) => Value::Timestamp(*t),
        (Value::Timestamp(t), T::Int64) => Value::Int64(*t),
        (Value::Timestamp(t), T::String) => Value::String(format_timestamp(*t)),
        _ => return None,
    })
}

fn convert_all(items: &[Value], to: ScalarType) -> Option<Vec<Value>> {
    items.iter().map(|v| convert_scalar(v, to)).collect()
}

impl Value {
    /// This value as a value of type `to`, when that keeps its meaning exactly (an int64 as a
    /// float64 or as text, a whole float64 as an int64, a number written as text, a scalar as
    /// a list of one, the elements of a list or set one by one); null otherwise. Used to serve
    /// values stored before a feature's type changed.
    pub fn convert(&self, to: ValueType) -> Value {
        let converted = match (self, to) {
            (Value::Null, _) => None,
            (Value::List(items) | Value::Set(items), ValueType::List(s)) => {
                convert_all(items, s).map(Value::List)
            }
            (Value::List(items) | Value::Set(items), ValueType::Set(s)) => {
                convert_all(items, s).map(Value::set_of)
            }
            (Value::Map(entries), ValueType::Map(s)) => entries
                .iter()
                .map(|(k, v)| convert_scalar(v, s).map(|v| (k.clone(), v)))
                .collect::<Option<Vec<_>>>()
                .map(Value::Map),
            (Value::Vector(xs), ValueType::Vector(dim)) if xs.len() == dim as usize => {
                Some(Value::Vector(xs.clone()))
            }
            (Value::Vector(xs), ValueType::List(ScalarType::Float64)) => Some(Value::List(
                xs.iter().map(|x| Value::Float64(f64::from(*x))).collect(),
            )),
            (Value::List(items), ValueType::Vector(dim)) if items.len() == dim as usize => items
                .iter()
                .map(|v| match v {
                    Value::Float64(f) => Some(*f as f32),
                    Value::Int64(i) => Some(*i as f32),
                    _ => None,
                })
                .collect::<Option<Vec<f32>>>()
                .map(Value::Vector),
            (v, ValueType::List(s)) => convert_scalar(v, s).map(|v| Value::List(vec![v])),
            (v, ValueType::Set(s)) => convert_scalar(v, s).map(|v| Value::Set(vec![v])),
            (v, ValueType::Scalar(s)) => convert_scalar(v, s),
            _ => None,
        };
        converted.unwrap_or(Value::Null)
    }

    /// Converts a JSON value to a value of type `t`. JSON `null` is [`Value::Null`].
    pub fn from_json(t: ValueType, v: &serde_json::Value) -> Result<Value, ValueError> {
        use serde_json::Value as J;
        if v.is_null() {
            return Ok(Value::Null);
        }
        match t {
            ValueType::Scalar(s) => scalar_from_json(s, v),
            ValueType::List(s) | ValueType::Set(s) => {
                let J::Array(items) = v else {
                    return Err(mismatch(t.to_string(), v));
                };
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.push(scalar_from_json(s, item).map_err(|e| ValueError {
                        expected: format!("{} at element {i}", e.expected),
                        got: e.got,
                    })?);
                }
                if matches!(t, ValueType::Set(_)) {
                    Ok(Value::set_of(out))
                } else {
                    Ok(Value::List(out))
                }
            }
            ValueType::Map(s) => {
                let J::Object(entries) = v else {
                    return Err(mismatch(t.to_string(), v));
                };
                let mut out = Vec::with_capacity(entries.len());
                for (k, item) in entries {
                    out.push((
                        k.clone(),
                        scalar_from_json(s, item).map_err(|e| ValueError {
                            expected: format!("{} at key {k:?}", e.expected),
                            got: e.got,
                        })?,
                    ));
                }
                Ok(Value::Map(out))
            }
            ValueType::Vector(dim) => {
                let J::Array(items) = v else {
                    return Err(mismatch(t.to_string(), v));
                };
                if items.len() != dim as usize {
                    return Err(ValueError {
                        expected: format!("{dim} numbers"),
                        got: format!("{} elements", items.len()),
                    });
                }
                items
                    .iter()
                    .map(|x| x.as_f64().map(|f| f as f32))
                    .collect::<Option<Vec<f32>>>()
                    .map(Value::Vector)
                    .ok_or_else(|| mismatch(format!("{dim} numbers"), v))
            }
        }
    }

    /// A set of the given elements: sorted and without duplicates, so equal sets encode equally.
    pub fn set_of(mut items: Vec<Value>) -> Value {
        items.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        items.dedup();
        Value::Set(items)
    }

    /// The JSON form of this value, as served.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int64(i) => J::from(*i),
            Value::Float64(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::String(s) => J::String(s.clone()),
            Value::Bytes(b) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
            Value::Timestamp(ms) => J::String(format_timestamp(*ms)),
            Value::List(items) | Value::Set(items) => {
                J::Array(items.iter().map(Value::to_json).collect())
            }
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
            Value::Vector(xs) => J::Array(
                xs.iter()
                    .map(|x| {
                        serde_json::Number::from_f64(*x as f64)
                            .map(J::Number)
                            .unwrap_or(J::Null)
                    })
                    .collect(),
            ),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        use Value::*;
        match (self, other) {
            (Bool(a), Bool(b)) => a.partial_cmp(b),
            (Int64(a), Int64(b)) | (Timestamp(a), Timestamp(b)) => a.partial_cmp(b),
            (Float64(a), Float64(b)) => a.partial_cmp(b),
            (String(a), String(b)) => a.partial_cmp(b),
            (Bytes(a), Bytes(b)) => a.partial_cmp(b),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn type_names_round_trip() {
        for s in [
            "bool",
            "int64",
            "float64",
            "string",
            "bytes",
            "timestamp",
            "list<string>",
            "set<int64>",
            "map<string, float64>",
            "vector<float32, 128>",
        ] {
            let t: ValueType = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn bad_type_names_say_why() {
        let e = "map<int64, string>".parse::<ValueType>().unwrap_err();
        assert!(e.contains("map keys must be `string`"), "{e}");
        let e = "vector<float32, 0>".parse::<ValueType>().unwrap_err();
        assert!(e.contains("from 1 to"), "{e}");
        let e = "list<strin>".parse::<ValueType>().unwrap_err();
        assert!(e.contains("`strin`"), "{e}");
    }

    #[test]
    fn json_values_convert_by_type() {
        let t: ValueType = "set<int64>".parse().unwrap();
        assert_eq!(
            Value::from_json(t, &json!([3, 1, 3])).unwrap(),
            Value::Set(vec![Value::Int64(1), Value::Int64(3)])
        );
        let t: ValueType = "vector<float32, 2>".parse().unwrap();
        let e = Value::from_json(t, &json!([1.0])).unwrap_err();
        assert_eq!(e.to_string(), "expected 2 numbers, got 1 elements");
        let t = ValueType::Scalar(ScalarType::Timestamp);
        let v = Value::from_json(t, &json!("2024-01-02T03:04:05Z")).unwrap();
        assert_eq!(v.to_json(), json!("2024-01-02T03:04:05Z"));
        let e = Value::from_json(ValueType::Scalar(ScalarType::Int64), &json!("7")).unwrap_err();
        assert_eq!(e.to_string(), "expected int64, got the string \"7\"");
    }

    #[test]
    fn conversions_keep_meaning_or_give_null() {
        use ScalarType as T;
        let int = ValueType::Scalar(T::Int64);
        let float = ValueType::Scalar(T::Float64);
        let text = ValueType::Scalar(T::String);
        assert_eq!(Value::Int64(42).convert(float), Value::Float64(42.0));
        assert_eq!(Value::Int64(42).convert(text), Value::String("42".into()));
        assert_eq!(Value::Float64(7.0).convert(int), Value::Int64(7));
        assert_eq!(Value::Float64(7.5).convert(int), Value::Null);
        assert_eq!(Value::Int64(i64::MAX).convert(float), Value::Null);
        assert_eq!(Value::String(" 12 ".into()).convert(int), Value::Int64(12));
        assert_eq!(Value::String("NZ".into()).convert(int), Value::Null);
        assert_eq!(
            Value::String("a".into()).convert(ValueType::List(T::String)),
            Value::List(vec![Value::String("a".into())])
        );
        assert_eq!(
            Value::List(vec![Value::Int64(2), Value::Int64(1), Value::Int64(2)])
                .convert(ValueType::Set(T::Float64)),
            Value::Set(vec![Value::Float64(1.0), Value::Float64(2.0)])
        );
        assert_eq!(
            Value::List(vec![Value::Int64(1), Value::String("x".into())])
                .convert(ValueType::List(T::Int64)),
            Value::Null
        );
        assert_eq!(Value::Null.convert(int), Value::Null);
        assert_eq!(
            Value::Timestamp(0).convert(text),
            Value::String(format_timestamp(0))
        );
    }
}
