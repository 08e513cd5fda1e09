//! Entity documents: names and key fields.

use std::collections::HashMap;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use super::document::{index, join};
use super::{Doc, EntityDraft, Head};
use crate::model::{EntityKeyField, KeyType};

impl Doc<'_> {
    pub(super) fn entity(&mut self, root: &MarkedMappingNode, head: Head) -> EntityDraft {
        self.check_fields(root, "", &["kind", "name", "description", "keys"]);
        let keys = self
            .field(root, "", "keys", true)
            .and_then(|node| self.expect_sequence(node, "keys"))
            .and_then(|items| {
                if items.is_empty() {
                    self.error(
                        items.span(),
                        "keys",
                        "an entity needs at least one key field",
                    );
                    return None;
                }
                let mut keys = Vec::new();
                let mut seen: HashMap<String, usize> = HashMap::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let path = index("keys", i);
                    match self.key_field(item, &path) {
                        Some((field, line)) => {
                            if let Some(first) = seen.insert(field.name.clone(), line) {
                                self.error_at(
                                    line,
                                    &join(&path, "name"),
                                    format!(
                                        "duplicate key field `{}` (first at line {first})",
                                        field.name
                                    ),
                                );
                                ok = false;
                            }
                            keys.push(field);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(keys)
            });
        EntityDraft { head, keys }
    }

    fn key_field(&mut self, node: &Node, path: &str) -> Option<(EntityKeyField, usize)> {
        let map = self.expect_mapping(node, path)?;
        self.check_fields(map, path, &["name", "type"]);
        let name = self.text(map, path, "name", true);
        let name_ok = name.is_some_and(|n| self.check_name(n, &join(path, "name")));
        let key_type = self.parsed(map, path, "type", true, |s| match s {
            "string" => Ok(KeyType::String),
            "int64" => Ok(KeyType::Int64),
            other => Err(format!(
                "unknown key type `{other}`: entity keys are `string` or `int64`"
            )),
        });
        let name = name.filter(|_| name_ok)?;
        Some((
            EntityKeyField {
                name: name.as_str().to_owned(),
                key_type: key_type?,
            },
            self.line(name.span()),
        ))
    }
}
