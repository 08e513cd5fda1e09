//! JSON forms shared by the HTTP adapters: values streamed straight from records (no
//! intermediate JSON tree on the response path) and the error body.

use base64::Engine as _;
use cellar_spec::value::format_timestamp;
use cellar_spec::Value;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::error::{ErrorKind, ServeError};

/// A value in its served JSON form.
pub struct ValueJson<'a>(pub &'a Value);

impl Serialize for ValueJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int64(i) => s.serialize_i64(*i),
            Value::Float64(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Float64(_) => s.serialize_unit(),
            Value::String(v) => s.serialize_str(v),
            Value::Bytes(b) => {
                s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
            }
            Value::Timestamp(ms) => s.serialize_str(&format_timestamp(*ms)),
            Value::List(items) | Value::Set(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&ValueJson(v))?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, &ValueJson(v))?;
                }
                map.end()
            }
            Value::Vector(xs) => {
                let mut seq = s.serialize_seq(Some(xs.len()))?;
                for x in xs {
                    if x.is_finite() {
                        seq.serialize_element(x)?;
                    } else {
                        seq.serialize_element(&())?;
                    }
                }
                seq.end()
            }
        }
    }
}

/// Encodes a response body. Starting from a buffer of typical size saves the regrowth of a
/// small vector on every request.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ServeError> {
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, value)
        .map_err(|e| ServeError::Internal(format!("response encoding failed: {e}")))?;
    Ok(out)
}

/// The snake_case name of an error kind, as error bodies carry it.
pub fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::NotFound => "not_found",
        ErrorKind::TooLarge => "too_large",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::DeadlineExceeded => "deadline_exceeded",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
    }
}

/// `{"error": {"code": 400, "kind": "invalid_argument", "message": "..."}}`
pub fn error_body(kind: ErrorKind, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "error": {
            "code": kind.http_status(),
            "kind": kind_name(kind),
            "message": message,
        }
    }))
    .unwrap_or_default()
}

/// The error body of a serving error.
pub fn serve_error_body(e: &ServeError) -> Vec<u8> {
    error_body(e.kind(), &e.to_string())
}
