//! The dispatcher and the per-ingestion mappings: which ingestions consume an event (M:N, from
//! the applied specs), and how one event becomes a record of one group.

use std::sync::Arc;

use cellar_expr::WriteExpressions;
use cellar_spec::value::parse_timestamp;
use cellar_spec::{
    AggregateFunction, Entity, EntityKey, FeatureExpr, FeatureGroup, FeatureRepo, GroupKind,
    Ingestion, IngestionSource, ScalarType, Value, ValueType,
};
use cellar_store::Record;
use serde_json_path::JsonPath;

use crate::aggregate::{Fold, Update, WindowSpec};
use crate::decode::{DecodedEvent, EventFields};
use crate::writer::Change;
use rustc_hash::FxHashMap;

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

/// A windowed aggregate of an ingestion: feature position, window, and the `of` path, if any.
type AggregateMapping = (usize, WindowSpec, Option<FieldPath>);

/// A path of an ingestion: its text, for messages, and how to follow it. Paths made only of
/// member names (`$.user_id`, `$.a.b`), nearly all of them, are followed directly on the event:
/// the JSONPath engine costs more than the rest of mapping an event.
#[derive(Debug)]
struct FieldPath {
    text: String,
    query: JsonPath,
    /// The member names, when the path is nothing else.
    members: Option<Vec<String>>,
}

impl FieldPath {
    fn parse(ingestion: &str, field: &str, text: &str) -> Result<FieldPath, CompileError> {
        let query = JsonPath::parse(text).map_err(|e| CompileError {
            ingestion: ingestion.to_owned(),
            reason: format!("{field}: `{text}` is not a JSON path: {e}"),
        })?;
        Ok(FieldPath {
            text: text.to_owned(),
            query,
            members: member_names(text),
        })
    }

    /// The single value the path selects, or `None` when it selects nothing.
    fn select<'a>(&self, event: &'a (impl EventFields + ?Sized)) -> Option<&'a serde_json::Value> {
        match self.members.as_deref() {
            Some([first, rest @ ..]) => {
                rest.iter().try_fold(event.member(first)?, |value, name| {
                    value.as_object()?.get(name)
                })
            }
            Some([]) => event.document(),
            None => self
                .query
                .query(event.document()?)
                .at_most_one()
                .ok()
                .flatten(),
        }
    }

    /// The top-level member the path starts with, or `None` when it reads more than the
    /// members it names (`$` itself, or any path beyond member names).
    fn first_member(&self) -> Option<&str> {
        self.members.as_deref()?.first().map(String::as_str)
    }
}

/// The member names of a path written as `$` followed by `.name` shorthands only, each name
/// in plain ASCII (a letter or `_`, then letters, digits or `_`); `None` for any other path.
fn member_names(text: &str) -> Option<Vec<String>> {
    let rest = text.strip_prefix('$')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    rest.strip_prefix('.')?
        .split('.')
        .map(|name| {
            let mut chars = name.chars();
            let first = chars.next()?;
            let plain = (first.is_ascii_alphabetic() || first == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            plain.then(|| name.to_owned())
        })
        .collect()
}

/// The features `computed` computes for one event, whose other features `value` reads by
/// position. (An event at a time: the pipeline maps events one by one.)
fn compute_one<'a>(
    computed: &WriteExpressions,
    event_time: i64,
    value: impl Fn(usize) -> &'a Value,
) -> Result<Vec<(usize, Value)>, String> {
    computed
        .compute(1, |_, position| value(position), |_| event_time)
        .pop()
        .unwrap_or_else(|| Err("no result".to_owned()))
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
    /// Where derived events go after each change (the record as it stands), for a further
    /// ingestion to consume.
    pub republish_to: Option<String>,
    key: Vec<FieldPath>,
    event_time: Option<FieldPath>,
    /// (feature position, source path).
    features: Vec<(usize, FieldPath)>,
    aggregates: Vec<AggregateMapping>,
    /// Features computed from the others by write-time expressions.
    computed: Option<WriteExpressions>,
    /// Retired positions that held a written feature before its type changed: cleared by each
    /// update, so the value written now is served and not the old one converted.
    superseded: Vec<usize>,
    /// Whether records are read, changed and written back (attribute groups: aggregates,
    /// ingestions that set only some features, applied offsets) or appended (time series).
    updates: bool,
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
            .map(|k| FieldPath::parse(&ingestion.name, "key", k))
            .collect::<Result<Vec<_>, CompileError>>()?;
        let event_time = match &ingestion.event_time {
            Some(t) => Some(FieldPath::parse(&ingestion.name, "event_time", t)?),
            None => None,
        };
        let mut features = Vec::with_capacity(ingestion.features.len());
        let mut aggregates = Vec::new();
        for m in &ingestion.features {
            let position = group.feature_index(&m.feature).ok_or_else(|| {
                fail(format!(
                    "group `{}` has no feature `{}`",
                    group.name, m.feature
                ))
            })?;
            match &m.expr {
                FeatureExpr::Field(path) => {
                    let parsed = FieldPath::parse(
                        &ingestion.name,
                        &format!("features.{}", m.feature),
                        path,
                    )?;
                    features.push((position, parsed));
                }
                FeatureExpr::Expression(_) => {}
                FeatureExpr::Aggregate(agg) => {
                    let feature = &group.features[position];
                    let float = match (agg.function, feature.value_type) {
                        (_, ValueType::Scalar(ScalarType::Int64)) => false,
                        (
                            AggregateFunction::Sum
                            | AggregateFunction::Min
                            | AggregateFunction::Max,
                            ValueType::Scalar(ScalarType::Float64),
                        ) => true,
                        (_, other) => {
                            return Err(fail(format!(
                                "feature `{}` is {other}, which its aggregate cannot produce",
                                m.feature
                            )))
                        }
                    };
                    if group.kind != GroupKind::Attribute {
                        return Err(fail(format!(
                            "aggregates write into attribute groups; `{}` is a time series",
                            group.name
                        )));
                    }
                    // Specs bound durations far below i64's milliseconds; saturate anyway.
                    let millis =
                        |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                    let size_ms = millis(agg.window);
                    let slide_ms = agg.slide.map_or(size_ms, millis);
                    if size_ms <= 0 || slide_ms <= 0 || size_ms % slide_ms != 0 {
                        return Err(fail(format!(
                            "feature `{}`: the window must be a whole number of slides",
                            m.feature
                        )));
                    }
                    let of = match &agg.of {
                        Some(path) => Some(FieldPath::parse(
                            &ingestion.name,
                            &format!("features.{}.of", m.feature),
                            path,
                        )?),
                        None => None,
                    };
                    let window = WindowSpec {
                        function: agg.function,
                        size_ms,
                        slide_ms,
                        float,
                    };
                    aggregates.push((position, window, of));
                }
            }
        }
        let computed = WriteExpressions::compile(group, ingestion).map_err(&fail)?;
        let updates = group.kind == GroupKind::Attribute;
        let superseded = features
            .iter()
            .map(|(position, _)| *position)
            .chain(computed.iter().flat_map(|c| c.positions()))
            .filter_map(|position| group.predecessor(position))
            .collect();
        Ok(StreamMapping {
            name: ingestion.name.clone(),
            topic: stream.topic.clone(),
            event_types: stream.event_types.clone(),
            group: Arc::new(group.clone()),
            entity: entity.clone(),
            republish_to: stream.republish_to.clone(),
            key,
            event_time,
            features,
            aggregates,
            computed,
            superseded,
            updates,
        })
    }

    /// The entity an event is about (producers key events by it, so that one entity's events
    /// stay in one partition, in order).
    pub fn entity_key(
        &self,
        event: &(impl EventFields + ?Sized),
    ) -> Result<EntityKey, MappingError> {
        let fail = |reason: String| MappingError {
            ingestion: self.name.clone(),
            reason,
        };
        let part = |path: &FieldPath| {
            path.select(event)
                .ok_or_else(|| fail(format!("key `{}` is missing", path.text)))
        };
        // Entities keyed by one field, the usual kind, need no list of parts.
        let keyed = match self.key.as_slice() {
            [path] => self.entity.key_from_json(&[part(path)?]),
            paths => {
                let parts = paths.iter().map(part).collect::<Result<Vec<_>, _>>()?;
                self.entity.key_from_json(&parts)
            }
        };
        keyed.map_err(|e| fail(format!("key: {e}")))
    }

    /// Maps one event to the entity key and the change it makes to that entity's record.
    /// `arrival_ms` is the event time when the ingestion has no `event_time` path; `origin` is
    /// where the event was read (see [`crate::aggregate::origin_id`]), so that a read-modify-write
    /// skips an event it already applied.
    pub fn map(
        &self,
        event: &(impl EventFields + ?Sized),
        arrival_ms: i64,
        origin: Option<(u64, u64)>,
    ) -> Result<(EntityKey, Change), MappingError> {
        let fail = |reason: String| MappingError {
            ingestion: self.name.clone(),
            reason,
        };
        let entity = self.entity_key(event)?;
        let event_time = match &self.event_time {
            None => arrival_ms,
            Some(path) => {
                let text = &path.text;
                let v = path
                    .select(event)
                    .ok_or_else(|| fail(format!("event_time `{text}` is missing")))?;
                parse_timestamp(v).ok_or_else(|| {
                    fail(format!(
                        "event_time `{text}`: expected an RFC 3339 timestamp or epoch milliseconds, got {v}"
                    ))
                })?
            }
        };
        let field = |position: usize, path: &FieldPath| {
            let feature = &self.group.features[position];
            match path.select(event) {
                Some(v) => Value::from_json(feature.value_type, v).map_err(|e| {
                    fail(format!("feature `{}` (`{}`): {e}", feature.name, path.text))
                }),
                None => Ok(Value::Null),
            }
        };
        if !self.updates {
            let mut values = vec![Value::Null; self.group.features.len()];
            for (position, path) in &self.features {
                values[*position] = field(*position, path)?;
            }
            if let Some(computed) = &self.computed {
                for (position, value) in
                    compute_one(computed, event_time, |p| &values[p]).map_err(&fail)?
                {
                    values[position] = value;
                }
            }
            return Ok((entity, Change::Put(Record::new(event_time, values))));
        }
        let mut fields = Vec::with_capacity(self.features.len());
        for (position, path) in &self.features {
            fields.push((*position, field(*position, path)?));
        }
        if let Some(computed) = &self.computed {
            let read = |p: usize| {
                fields
                    .iter()
                    .find(|(position, _)| *position == p)
                    .map_or(&Value::Null, |(_, v)| v)
            };
            let values = compute_one(computed, event_time, read).map_err(&fail)?;
            fields.extend(values);
        }
        fields.extend(self.superseded.iter().map(|&p| (p, Value::Null)));
        let mut folds = Vec::with_capacity(self.aggregates.len());
        for (position, window, of) in &self.aggregates {
            let input = match (window.function, of) {
                (_, None) => Value::Null,
                // Distinct values are told apart by their JSON text, whatever their type.
                (AggregateFunction::DistinctCount, Some(path)) => match path.select(event) {
                    None | Some(serde_json::Value::Null) => Value::Null,
                    Some(serde_json::Value::String(s)) => Value::String(s.clone()),
                    Some(other) => Value::String(other.to_string()),
                },
                (_, Some(path)) => field(*position, path)?,
            };
            folds.push(Fold {
                position: *position,
                window: *window,
                input,
            });
        }
        Ok((
            entity,
            Change::Update(Update {
                event_time,
                origin,
                fields,
                folds,
            }),
        ))
    }

    /// The derived event re-published after `event` changed `record`: the ingestion's name as
    /// its type, the entity's key fields (named as in the entity), the record's event time as
    /// `ts`, the group and its features by name. It carries the values as they stand, not the
    /// change, so consuming one twice does no harm to a latest-value ingestion.
    pub fn derived_event(
        &self,
        event: &(impl EventFields + ?Sized),
        record: &Record,
    ) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        out.insert("type".into(), self.name.clone().into());
        for (field, path) in self.entity.keys.iter().zip(&self.key) {
            if let Some(v) = path.select(event) {
                out.insert(field.name.clone(), v.clone());
            }
        }
        out.insert("ts".into(), record.event_time.into());
        out.insert("group".into(), self.group.name.clone().into());
        let features: serde_json::Map<String, serde_json::Value> = self
            .group
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), record.value(i).to_json()))
            .collect();
        out.insert("features".into(), features.into());
        serde_json::Value::Object(out)
    }

    /// Whether records of this ingestion append to a time series (or replace an attribute).
    pub fn appends(&self) -> bool {
        self.group.kind == GroupKind::Timeseries
    }

    /// Adds the top-level members this ingestion reads to `names`; false when some path
    /// needs the whole document.
    fn read_members(&self, names: &mut Vec<String>) -> bool {
        let paths = self
            .key
            .iter()
            .chain(&self.event_time)
            .chain(self.features.iter().map(|(_, path)| path))
            .chain(self.aggregates.iter().filter_map(|(_, _, of)| of.as_ref()));
        for path in paths {
            let Some(name) = path.first_member() else {
                return false;
            };
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
        true
    }
}

/// Routes events to every ingestion that consumes them, by topic and event type.
#[derive(Debug, Default)]
pub struct Dispatcher {
    /// Keyed by topic, so routing an event looks its topic up once and copies no name. Fx
    /// hashing: the keys come from the specs, not from producers, so none can be crafted to
    /// collide.
    topics: FxHashMap<String, TopicRoutes>,
}

/// The ingestions of one topic.
#[derive(Debug, Default)]
struct TopicRoutes {
    /// Event type -> ingestions naming that type.
    typed: FxHashMap<String, Vec<Arc<StreamMapping>>>,
    /// Ingestions taking every event of the topic.
    untyped: Vec<Arc<StreamMapping>>,
    /// Where the topic's events carry their type.
    type_fields: Vec<String>,
    /// The top-level members the topic's ingestions read and route by, or `None` when one of
    /// them needs whole documents.
    members: Option<Vec<String>>,
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
            let routes = d
                .topics
                .entry(stream.topic.clone())
                .or_insert_with(|| TopicRoutes {
                    members: Some(Vec::new()),
                    ..TopicRoutes::default()
                });
            if !routes.type_fields.contains(&stream.event_type_field) {
                routes.type_fields.push(stream.event_type_field.clone());
            }
            if let Some(members) = &mut routes.members {
                if !members.contains(&stream.event_type_field) {
                    members.push(stream.event_type_field.clone());
                }
                if !mapping.read_members(members) {
                    routes.members = None;
                }
            }
            if stream.event_types.is_empty() {
                routes.untyped.push(mapping);
            } else {
                for t in &stream.event_types {
                    routes
                        .typed
                        .entry(t.clone())
                        .or_default()
                        .push(mapping.clone());
                }
            }
        }
        (d, errors)
    }

    /// Topics any ingestion consumes, sorted.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.topics.keys().cloned().collect();
        topics.sort();
        topics
    }

    /// Topics derived events are re-published to, sorted; they must exist before events are
    /// consumed.
    pub fn republish_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .topics
            .values()
            .flat_map(|routes| routes.typed.values().flatten().chain(&routes.untyped))
            .filter_map(|m| m.republish_to.clone())
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Decodes the payload of an event of `topic`: only the members its ingestions read,
    /// unless one of them needs the whole document. Fails as decoding it whole would.
    pub fn decode<'p>(
        &self,
        topic: &str,
        payload: &'p [u8],
    ) -> Result<DecodedEvent<'p>, serde_json::Error> {
        match self.topics.get(topic) {
            // No ingestion reads it, but a malformed event is still reported.
            None => DecodedEvent::members(payload, &[]),
            Some(TopicRoutes {
                members: Some(members),
                ..
            }) => DecodedEvent::members(payload, members),
            Some(_) => DecodedEvent::document(payload),
        }
    }

    /// The ingestions an event of `topic` feeds.
    pub fn route<'a>(
        &'a self,
        topic: &str,
        event: &(impl EventFields + ?Sized),
    ) -> Vec<&'a Arc<StreamMapping>> {
        let Some(routes) = self.topics.get(topic) else {
            return Vec::new();
        };
        let mut out: Vec<&Arc<StreamMapping>> = routes.untyped.iter().collect();
        for field in &routes.type_fields {
            if let Some(serde_json::Value::String(t)) = event.member(field) {
                if let Some(m) = routes.typed.get(t.as_str()) {
                    out.extend(m);
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
        let (key, change) = m.map(&event, 0, Some((3, 9))).unwrap();
        assert_eq!(key.as_str(), "u1");
        assert_eq!(
            change,
            Change::Update(Update {
                event_time: 1_767_225_600_000,
                origin: Some((3, 9)),
                fields: vec![(0, Value::String("KR".into())), (1, Value::Int64(30))],
                folds: Vec::new(),
            })
        );
        let click =
            json!({"type": "article_clicked", "user_id": "u1", "ts": 7, "article": {"id": "a9"}});
        let m = d
            .route("actions", &click)
            .into_iter()
            .find(|m| m.name == "clicks_from_actions")
            .unwrap();
        assert_eq!(
            m.map(&click, 0, None).unwrap().1,
            Change::Put(Record::new(7, vec![Value::String("a9".into())]))
        );
    }

    #[test]
    fn events_decoded_for_their_topic_map_as_whole_ones_do() {
        let (d, _) = Dispatcher::new(&repo());
        let click = json!({"type": "article_clicked", "user_id": "u1", "ts": 7, "country": "KR",
                           "article": {"id": "a9", "tags": [1]}, "unused": {"deep": [null]}});
        let payload = click.to_string();
        let decoded = d.decode("actions", payload.as_bytes()).unwrap();
        assert_eq!(
            decoded.document(),
            None,
            "member paths need no whole document"
        );
        assert_eq!(decoded.member("unused"), None);
        let whole = d.route("actions", &click);
        let part = d.route("actions", &decoded);
        assert_eq!(part.len(), 2);
        for (m, w) in part.iter().zip(&whole) {
            assert_eq!(m.name, w.name);
            let mapped = m.map(&decoded, 0, Some((1, 2))).unwrap();
            assert_eq!(mapped, w.map(&click, 0, Some((1, 2))).unwrap());
            let record = match mapped.1 {
                Change::Put(record) => record,
                Change::Update(update) => Record::new(update.event_time, Vec::new()),
            };
            assert_eq!(
                m.derived_event(&decoded, &record),
                m.derived_event(&click, &record)
            );
        }
        // Events of a topic no ingestion reads are still checked.
        assert!(d.decode("elsewhere", b"{}").is_ok());
        assert!(d.decode("elsewhere", b"{").is_err());

        // A path beyond member names makes its topic's events decode whole.
        let repo = cellar_spec::parse_repo(&[(
            "repo.yaml".into(),
            format!(
                "{REPO}---\nkind: Ingestion\nname: first_tags\nstream: {{ topic: actions }}\n\
                 into: clicks\nkey: $.user_id\nfeatures: {{ article_id: \"$.article.tags[0]\" }}\n"
            ),
        )])
        .unwrap_or_else(|e| panic!("{e}"));
        let (d, errors) = Dispatcher::new(&repo);
        assert!(errors.is_empty(), "{errors:?}");
        let decoded = d.decode("actions", payload.as_bytes()).unwrap();
        assert_eq!(decoded.document(), Some(&click));
        assert_eq!(d.route("actions", &decoded).len(), 3);
        let users = d.decode("users", payload.as_bytes()).unwrap();
        assert_eq!(users.document(), None, "other topics still decode members");
    }

    #[test]
    fn member_paths_select_what_the_jsonpath_engine_selects() {
        let paths = [
            "$",
            "$.user_id",
            "$.a",
            "$.a.b",
            "$.a.b.c",
            "$._x",
            "$.a1",
            "$.missing",
            "$.a.missing",
            "$.null",
            "$.list",
            "$.list.a",
            "$.true",
            "$['a']",
            "$.a['b']",
            "$.list[0]",
            "$.list[-1].a",
            "$..b",
            "$.*",
            "$.a.*",
            "$.é",
            "$['a-b']",
            "$ .a",
        ];
        let documents = [
            json!({"user_id": "u1", "a": {"b": {"c": 3}}, "_x": 1, "a1": [1], "null": null,
                   "list": [{"a": 1}, {"a": 2}], "true": false, "é": "e", "a-b": 2}),
            json!({"a": {"b": [1, 2]}, "user_id": 7}),
            json!({"a": "text", "list": {"a": 5}}),
            json!({"a": {"b": null}}),
            json!([{"a": 1}]),
            json!("scalar"),
            json!(null),
            json!({}),
        ];
        for text in paths {
            let path = FieldPath::parse("test", "key", text).unwrap_or_else(|e| panic!("{e}"));
            for doc in &documents {
                let expected = path.query.query(doc).at_most_one().ok().flatten();
                assert_eq!(path.select(doc), expected, "`{text}` on {doc}");
            }
        }
        assert_eq!(member_names("$.a.b"), Some(vec!["a".into(), "b".into()]));
        for text in [
            "$['a']", "$.a[0]", "$..a", "$.*", "$.é", "$ .a", "$.", "$.a.", "@.a",
        ] {
            assert_eq!(
                member_names(text),
                None,
                "`{text}` is not member names only"
            );
        }
    }

    #[test]
    fn bad_events_say_which_field_is_wrong() {
        let (d, _) = Dispatcher::new(&repo());
        let m = d.route("users", &json!({"type": "profile_updated"}))[0];
        let err = m.map(&json!({"ts": 1}), 0, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ingestion `profile_updates`: key `$.user_id` is missing"
        );
        let err = m
            .map(&json!({"user_id": "u1", "ts": 1, "age": "old"}), 0, None)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("feature `age` (`$.age`): expected int64"),
            "{err}"
        );
        let err = m
            .map(&json!({"user_id": "u1", "ts": "yesterday"}), 0, None)
            .unwrap_err();
        assert!(err.to_string().contains("event_time `$.ts`"), "{err}");
    }
}
