//! Entity keys: the canonical text form of an entity's key field values.

use serde::{Deserialize, Serialize};

use crate::limits::MAX_ENTITY_KEY_BYTES;
use crate::model::{Entity, KeyType};

/// Separates the fields of a composite key. Key values may not contain it.
pub const KEY_SEPARATOR: char = '\u{1f}';

/// The canonical form of one entity's key: the key field values in order, as text, joined by
/// [`KEY_SEPARATOR`]. For the common single-field key it is just the value (`u42`, `1001`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EntityKey(pub String);

impl EntityKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Display for EntityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a key value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("entity `{entity}` has {expected} key field(s) ({names}), got {got}")]
    Arity {
        entity: String,
        expected: usize,
        names: String,
        got: usize,
    },
    #[error("key field `{field}` of entity `{entity}` must be {expected}, got {got}")]
    Type {
        entity: String,
        field: String,
        expected: &'static str,
        got: String,
    },
    #[error("key field `{field}` may not be empty or contain the character U+001F")]
    Reserved { field: String },
    /// Stores cannot hold NUL (the embedded store's key separator), and no producer means a
    /// key with a control character in it.
    #[error(
        "key field `{field}` may not contain a control character: it holds U+{code:04X} at byte {at}"
    )]
    Control { field: String, code: u32, at: usize },
    #[error("the key of entity `{entity}` is {len} bytes, over the limit of {MAX_ENTITY_KEY_BYTES} bytes")]
    TooLong { entity: String, len: usize },
}

/// One key field's value as a reader holds it: text, or an integer. Batch readers build keys
/// from typed columns with it, without going through JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart<'a> {
    Text(&'a str),
    Int(i64),
}

impl Entity {
    /// Builds the key of one entity from JSON values of its key fields, in order.
    pub fn key_from_json(&self, values: &[&serde_json::Value]) -> Result<EntityKey, KeyError> {
        self.check_arity(values.len())?;
        let mut out = String::new();
        for (i, (field, v)) in self.keys.iter().zip(values).enumerate() {
            let part = match v {
                serde_json::Value::String(s) => Some(KeyPart::Text(s)),
                serde_json::Value::Number(n) => n.as_i64().map(KeyPart::Int),
                _ => None,
            };
            let Some(part) = part else {
                return Err(KeyError::Type {
                    entity: self.name.clone(),
                    field: field.name.clone(),
                    expected: expected_of(field.key_type),
                    got: match v {
                        serde_json::Value::Number(n) => format!("the number {n}"),
                        serde_json::Value::Null => "null".into(),
                        serde_json::Value::Bool(_) => "a boolean".into(),
                        _ => "a compound value".into(),
                    },
                });
            };
            self.push_key_part(&mut out, i, part)?;
        }
        Ok(EntityKey(out))
    }

    /// Fails unless `got` key field values were given for this entity's key fields.
    pub fn check_arity(&self, got: usize) -> Result<(), KeyError> {
        if got == self.keys.len() {
            return Ok(());
        }
        Err(self.arity_error(got))
    }

    fn arity_error(&self, got: usize) -> KeyError {
        KeyError::Arity {
            entity: self.name.clone(),
            expected: self.keys.len(),
            names: self
                .keys
                .iter()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            got,
        }
    }

    /// Appends the value of key field `index` to `out` in the canonical form (preceded by the
    /// separator unless it is the first field): the one place the key encoding is decided, so
    /// keys built from JSON events and from batch columns are equal.
    pub fn push_key_part(
        &self,
        out: &mut String,
        index: usize,
        part: KeyPart<'_>,
    ) -> Result<(), KeyError> {
        let Some(field) = self.keys.get(index) else {
            return Err(self.arity_error(index + 1));
        };
        if index > 0 {
            out.push(KEY_SEPARATOR);
        }
        let type_error = |got: String| KeyError::Type {
            entity: self.name.clone(),
            field: field.name.clone(),
            expected: expected_of(field.key_type),
            got,
        };
        match (field.key_type, part) {
            (KeyType::String, KeyPart::Text(s)) => {
                if s.is_empty() || s.contains(KEY_SEPARATOR) {
                    return Err(KeyError::Reserved {
                        field: field.name.clone(),
                    });
                }
                // Checked before the control characters: a long key is refused without
                // scanning it.
                self.check_len(out.len() + s.len())?;
                if let Some((at, c)) = s.char_indices().find(|(_, c)| c.is_control()) {
                    return Err(KeyError::Control {
                        field: field.name.clone(),
                        code: u32::from(c),
                        at,
                    });
                }
                out.push_str(s);
            }
            (KeyType::Int64, KeyPart::Int(i)) => {
                use std::fmt::Write as _;
                // Writing into a String cannot fail.
                let _ = write!(out, "{i}");
                self.check_len(out.len())?;
            }
            // Integer keys are also accepted as decimal text, as query strings send them.
            (KeyType::Int64, KeyPart::Text(s)) if s.parse::<i64>().is_ok() => {
                self.check_len(out.len() + s.len())?;
                out.push_str(s);
            }
            (KeyType::Int64, KeyPart::Text(_)) => return Err(type_error("a string".into())),
            (KeyType::String, KeyPart::Int(i)) => {
                return Err(type_error(format!("the number {i}")))
            }
        }
        Ok(())
    }

    fn check_len(&self, len: usize) -> Result<(), KeyError> {
        if len > MAX_ENTITY_KEY_BYTES {
            return Err(KeyError::TooLong {
                entity: self.name.clone(),
                len,
            });
        }
        Ok(())
    }

    /// The JSON values of a key's fields, as they are echoed back to clients.
    pub fn key_to_json(&self, key: &EntityKey) -> Vec<serde_json::Value> {
        key.0
            .split(KEY_SEPARATOR)
            .zip(&self.keys)
            .map(|(part, field)| match field.key_type {
                KeyType::String => serde_json::Value::String(part.to_owned()),
                KeyType::Int64 => part
                    .parse::<i64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| serde_json::Value::String(part.to_owned())),
            })
            .collect()
    }
}

fn expected_of(key_type: KeyType) -> &'static str {
    match key_type {
        KeyType::String => "a string",
        KeyType::Int64 => "a 64-bit integer",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EntityKeyField;
    use serde_json::json;

    fn entity(keys: &[(&str, KeyType)]) -> Entity {
        Entity {
            name: "e".into(),
            keys: keys
                .iter()
                .map(|(n, t)| EntityKeyField {
                    name: (*n).into(),
                    key_type: *t,
                })
                .collect(),
            description: None,
        }
    }

    #[test]
    fn composite_keys_round_trip() {
        let e = entity(&[("user_id", KeyType::String), ("shard", KeyType::Int64)]);
        let key = e.key_from_json(&[&json!("u1"), &json!(7)]).unwrap();
        assert_eq!(e.key_to_json(&key), vec![json!("u1"), json!(7)]);
    }

    #[test]
    fn typed_parts_encode_like_json() {
        let e = entity(&[("user_id", KeyType::String), ("shard", KeyType::Int64)]);
        let from_json = e.key_from_json(&[&json!("u1"), &json!(-7)]).unwrap();
        let mut typed = String::new();
        e.push_key_part(&mut typed, 0, KeyPart::Text("u1")).unwrap();
        e.push_key_part(&mut typed, 1, KeyPart::Int(-7)).unwrap();
        assert_eq!(typed, from_json.0);
        let err = e
            .push_key_part(&mut String::new(), 1, KeyPart::Text("x"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "key field `shard` of entity `e` must be a 64-bit integer, got a string"
        );
    }

    #[test]
    fn keys_no_store_can_hold_are_refused() {
        let e = entity(&[("user_id", KeyType::String), ("shard", KeyType::Int64)]);
        let err = e.key_from_json(&[&json!("a\0b"), &json!(1)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key field `user_id` may not contain a control character: it holds U+0000 at byte 1"
        );
        assert!(e.key_from_json(&[&json!("a\nb"), &json!(1)]).is_err());
        assert!(e.key_from_json(&[&json!("a\u{7f}"), &json!(1)]).is_err());
        // The limit counts the whole key: its fields and separators.
        let longest = "x".repeat(MAX_ENTITY_KEY_BYTES - 2);
        let key = e.key_from_json(&[&json!(longest), &json!(7)]).unwrap();
        assert_eq!(key.0.len(), MAX_ENTITY_KEY_BYTES);
        let err = e.key_from_json(&[&json!(longest), &json!(70)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the key of entity `e` is 1025 bytes, over the limit of 1024 bytes"
        );
        let err = e
            .key_from_json(&[&json!("k".repeat(70_000)), &json!(1)])
            .unwrap_err();
        assert!(
            matches!(err, KeyError::TooLong { len: 70_000, .. }),
            "{err}"
        );
    }

    #[test]
    fn wrong_key_type_names_the_field() {
        let e = entity(&[("user_id", KeyType::String)]);
        let err = e.key_from_json(&[&json!(5)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key field `user_id` of entity `e` must be a string, got the number 5"
        );
    }
}
