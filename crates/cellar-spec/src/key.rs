//! Entity keys: the canonical text form of an entity's key field values.

use serde::{Deserialize, Serialize};

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
}

impl Entity {
    /// Builds the key of one entity from JSON values of its key fields, in order.
    pub fn key_from_json(&self, values: &[&serde_json::Value]) -> Result<EntityKey, KeyError> {
        if values.len() != self.keys.len() {
            return Err(KeyError::Arity {
                entity: self.name.clone(),
                expected: self.keys.len(),
                names: self
                    .keys
                    .iter()
                    .map(|k| k.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                got: values.len(),
            });
        }
        let mut out = String::new();
        for (i, (field, v)) in self.keys.iter().zip(values).enumerate() {
            if i > 0 {
                out.push(KEY_SEPARATOR);
            }
            let type_error = |expected: &'static str| KeyError::Type {
                entity: self.name.clone(),
                field: field.name.clone(),
                expected,
                got: match v {
                    serde_json::Value::String(_) => "a string".into(),
                    serde_json::Value::Number(n) => format!("the number {n}"),
                    serde_json::Value::Null => "null".into(),
                    serde_json::Value::Bool(_) => "a boolean".into(),
                    _ => "a compound value".into(),
                },
            };
            match (field.key_type, v) {
                (KeyType::String, serde_json::Value::String(s)) => {
                    if s.is_empty() || s.contains(KEY_SEPARATOR) {
                        return Err(KeyError::Reserved {
                            field: field.name.clone(),
                        });
                    }
                    out.push_str(s)
                }
                (KeyType::Int64, serde_json::Value::Number(n)) => match n.as_i64() {
                    Some(i) => out.push_str(&i.to_string()),
                    None => return Err(type_error("a 64-bit integer")),
                },
                // Integer keys are also accepted as decimal text, as query strings send them.
                (KeyType::Int64, serde_json::Value::String(s)) if s.parse::<i64>().is_ok() => {
                    out.push_str(s)
                }
                (KeyType::String, _) => return Err(type_error("a string")),
                (KeyType::Int64, _) => return Err(type_error("a 64-bit integer")),
            }
        }
        Ok(EntityKey(out))
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
    fn wrong_key_type_names_the_field() {
        let e = entity(&[("user_id", KeyType::String)]);
        let err = e.key_from_json(&[&json!(5)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "key field `user_id` of entity `e` must be a string, got the number 5"
        );
    }
}
