//! The dispatcher and the per-ingestion mappings: which ingestions consume an event (M:N, from
//! the applied specs), and how one event becomes a record of one group.

use std::collections::HashMap;
use std::sync::Arc;

use cellar_spec::value::parse_timestamp;
use cellar_spec::{
    Entity, EntityKey, FeatureExpr, FeatureGroup, FeatureRepo, GroupKind, Ingestion,
    IngestionSource, Value,
};
use cellar_store::Record;
use serde_json_path::JsonPath;

/// Why an event could not become a record. The reason goes with the event to the dead-letter
/// topic: it names the ingestion and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ingestion `{ingestion}`: {reason}")]
pub struct MappingError {
    pub ingestion: String,
    pub reason: String,
}

/// Why an ingestion cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ingestion `{ingestion}` cannot run: {reason}")]
pub struct CompileError {
    pub ingestion: String,
    pub reason: String,
}

/// A stream ingestion ready to map events: its paths parsed, its features resolved to
/// positions of its group.
#[derive(Debug)]
pub struct StreamMapping {
    pub name: String,
    pub topic: String,
    /// Event types consumed; empty means every event on the topic.
    pub event_types: Vec<String>,
    /// Shared with every record this ingestion writes, so mapping an event copies no spec.
    pub group: Arc<FeatureGroup>,
    pub entity: Entity,
    key: Vec<(String, JsonPath)>,
    event_time: Option<(String, JsonPath)>,
    /// (feature position, source path text, parsed path).
    features: Vec<(usize, String, JsonPath)>,
}

fn parse_path(ingestion: &str, field: &str, text: &str) -> Result<JsonPath, CompileError> {
    JsonPath::parse(text).map_err(|e| CompileError {
        ingestion: ingestion.to_owned(),
        reason: format!("{field}: `{text}` is not a JSON path: {e}"),
    })
}

/// The single value a path selects, or `None` when it selects nothing.
fn select<'a>(path: &JsonPath, event: &'a serde_json::Value) -> Option<&'a serde_json::Value> {
    path.query(event).at_most_one().ok().flatten()
}

impl StreamMapping {
    /// Prepares a stream ingestion of `repo` to map events.
    pub fn compile(
        ingestion: &Ingestion,
        repo: &FeatureRepo,
    ) -> Result<StreamMapping, CompileError> {
        let fail = |reason: String| CompileError {
            ingestion: ingestion.name.clone(),
            reason,
        };
        let IngestionSource::Stream(stream) = &ingestion.source else {
            return Err(fail("it is a batch ingestion".into()));
        };
        let group = repo
            .group(&ingestion.into)
            .ok_or_else(|| fail(format!("group `{}` does not exist", ingestion.into)))?;
        let entity = repo
            .entity(&group.entity)
            .ok_or_else(|| fail(format!("entity `{}` does not exist", group.entity)))?;
        if ingestion.key.len() != entity.keys.len() {
            return Err(fail(format!(
                "key has {} path(s) but entity `{}` has {} key field(s)",
                ingestion.key.len(),
                entity.name,
                entity.keys.len()
            )));
        }
        let key = ingestion
            .key
            .iter()
            .map(|k| Ok((k.clone(), parse_path(&ingestion.name, "key", k)?)))
            .collect::<Result<Vec<_>, CompileError>>()?;
        let event_time = match &ingestion.event_time {
            Some(t) => Some((t.clone(), parse_path(&ingestion.name, "event_time", t)?)),
            None => None,
        };
        let mut features = Vec::with_capacity(ingestion.features.len());
        for m in &ingestion.features {
            let position = group.feature_index(&m.feature).ok_or_else(|| {
                fail(format!(
                    "group `{}` has no feature `{}`",
                    group.name, m.feature
                ))
            })?;
            match &m.expr {
                FeatureExpr::Field(path) => {
                    let parsed =
                        parse_path(&ingestion.name, &format!("features.{}", m.feature), path)?;
                    features.push((position, path.clone(), parsed));
                }
                FeatureExpr::Aggregate(_) => {
                    return Err(fail(format!(
                        "feature `{}` is a windowed aggregate, which the stream runner does not compute yet",
                        m.feature
                    )))
                }
            }
        }
        Ok(StreamMapping {
            name: ingestion.name.clone(),
            topic: stream.topic.clone(),
            event_types: stream.event_types.clone(),
            group: Arc::new(group.clone()),
            entity: entity.clone(),
            key,
            event_time,
            features,
        })
    }

    /// Maps one event to the entity key and record it writes. `arrival_ms` is the event time
    /// when the ingestion has no `event_time` path.
    pub fn map(
        &self,
        event: &serde_json::Value,
        arrival_ms: i64,
    ) -> Result<(EntityKey, Record), MappingError> {
        let fail = |reason: String| MappingError {
            ingestion: self.name.clone(),
            reason,
        };
        let mut parts = Vec::with_capacity(self.key.len());
        for (text, path) in &self.key {
            parts
                .push(select(path, event).ok_or_else(|| fail(format!("key `{text}` is missing")))?);
        }
        let entity = self
            .entity
            .key_from_json(&parts)
            .map_err(|e| fail(format!("key: {e}")))?;
        let event_time = match &self.event_time {
            None => arrival_ms,
            Some((text, path)) => {
                let v = select(path, event)
                    .ok_or_else(|| fail(format!("event_time `{text}` is missing")))?;
                parse_timestamp(v).ok_or_else(|| {
                    fail(format!(
                        "event_time `{text}`: expected an RFC 3339 timestamp or epoch milliseconds, got {v}"
                    ))
                })?
            }
        };
        let mut values = vec![Value::Null; self.group.features.len()];
        for (position, text, path) in &self.features {
            let feature = &self.group.features[*position];
            if let Some(v) = select(path, event) {
                values[*position] = Value::from_json(feature.value_type, v)
                    .map_err(|e| fail(format!("feature `{}` (`{text}`): {e}", feature.name)))?;
            }
        }
        Ok((entity, Record::new(event_time, values)))
    }

    /// Whether records of this ingestion append to a time series (or replace an attribute).
    pub fn appends(&self) -> bool {
        self.group.kind == GroupKind::Timeseries
    }
}

/// Routes events to every ingestion that consumes them, by topic and event type.
#[derive(Debug, Default)]
pub struct Dispatcher {
    /// (topic, event type) -> ingestions naming that type.
    typed: HashMap<(String, String), Vec<Arc<StreamMapping>>>,
    /// topic -> ingestions taking every event of the topic.
    untyped: HashMap<String, Vec<Arc<StreamMapping>>>,
    /// Where each topic's events carry their type.
    type_fields: HashMap<String, Vec<String>>,
}

impl Dispatcher {
    /// The dispatcher of a repo's stream ingestions. Ingestions that cannot run are returned
    /// beside it, so the caller can report them; the others still run.
    pub fn new(repo: &FeatureRepo) -> (Dispatcher, Vec<CompileError>) {
        let mut d = Dispatcher::default();
        let mut errors = Vec::new();
        for ingestion in &repo.ingestions {
            let IngestionSource::Stream(stream) = &ingestion.source else {
                continue;
            };
            let mapping = match StreamMapping::compile(ingestion, repo) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let fields = d.type_fields.entry(stream.topic.clone()).or_default();
            if !fields.contains(&stream.event_type_field) {
                fields.push(stream.event_type_field.clone());
            }
            if stream.event_types.is_empty() {
                d.untyped
                    .entry(stream.topic.clone())
                    .or_default()
                    .push(mapping);
            } else {
                for t in &stream.event_types {
                    d.typed
                        .entry((stream.topic.clone(), t.clone()))
                        .or_default()
                        .push(mapping.clone());
                }
            }
        }
        (d, errors)
    }

    /// Topics any ingestion consumes, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.type_fields.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// The ingestions an event of `topic` feeds.
    pub fn route<'a>(
        &'a self,
        topic: &str,
        event: &serde_json::Value,
    ) -> Vec<&'a Arc<StreamMapping>> {
        let mut out: Vec<&Arc<StreamMapping>> = self
            .untyped
            .get(topic)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        if let Some(fields) = self.type_fields.get(topic) {
            for field in fields {
                if let Some(serde_json::Value::String(t)) = event.get(field) {
                    if let Some(m) = self.typed.get(&(topic.to_owned(), t.clone())) {
                        out.extend(m.iter());
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REPO: &str = r#"
kind: Entity
name: user
keys: [{ name: user_id, type: string }]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - { name: country, type: string }
  - { name: age, type: int64 }
---
kind: FeatureGroup
name: clicks
entity: user
type: timeseries
features:
  - { name: article_id, type: string }
---
kind: Ingestion
name: profile_updates
stream: { topic: users, event_types: [profile_updated] }
into: profile
key: $.user_id
event_time: $.ts
features: { country: $.country, age: $.age }
---
kind: Ingestion
name: clicks_from_actions
stream: { topic: actions, event_types: [article_clicked] }
into: clicks
key: $.user_id
event_time: $.ts
features: { article_id: $.article.id }
---
kind: Ingestion
name: countries_from_actions
stream: { topic: actions, event_types: [article_clicked, signed_in] }
into: profile
key: $.user_id
event_time: $.ts
features: { country: $.country }
"#;

    fn repo() -> FeatureRepo {
        cellar_spec::parse_repo(&[("repo.yaml".into(), REPO.into())])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn one_event_feeds_every_ingestion_of_its_type() {
        let (d, errors) = Dispatcher::new(&repo());
        assert!(errors.is_empty(), "{errors:?}");
        let click =
            json!({"type": "article_clicked", "user_id": "u1", "ts": 5, "article": {"id": "a9"}});
        let mut names: Vec<&str> = d
            .route("actions", &click)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        names.sort();
        assert_eq!(names, ["clicks_from_actions", "countries_from_actions"]);
        let sign_in = json!({"type": "signed_in", "user_id": "u1", "ts": 5});
        assert_eq!(d.route("actions", &sign_in).len(), 1);
        assert!(d.route("users", &click).is_empty());
        assert_eq!(d.topics(), ["actions", "users"]);
    }

    #[test]
    fn events_map_to_positional_records() {
        let (d, _) = Dispatcher::new(&repo());
        let event = json!({"type": "profile_updated", "user_id": "u1", "ts": "2026-01-01T00:00:00Z", "age": 30, "country": "KR"});
        let m = d.route("users", &event)[0];
        let (key, record) = m.map(&event, 0).unwrap();
        assert_eq!(key.as_str(), "u1");
        assert_eq!(record.event_time, 1_767_225_600_000);
        assert_eq!(
            record.values,
            vec![Value::String("KR".into()), Value::Int64(30)]
        );
    }

    #[test]
    fn bad_events_say_which_field_is_wrong() {
        let (d, _) = Dispatcher::new(&repo());
        let m = d.route("users", &json!({"type": "profile_updated"}))[0];
        let err = m.map(&json!({"ts": 1}), 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ingestion `profile_updates`: key `$.user_id` is missing"
        );
        let err = m
            .map(&json!({"user_id": "u1", "ts": 1, "age": "old"}), 0)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("feature `age` (`$.age`): expected int64"),
            "{err}"
        );
        let err = m
            .map(&json!({"user_id": "u1", "ts": "yesterday"}), 0)
            .unwrap_err();
        assert!(err.to_string().contains("event_time `$.ts`"), "{err}");
    }
}
