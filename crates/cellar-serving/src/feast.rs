//! Feast-compatible routes: `POST /get-online-features`, `POST /push` and
//! `POST /write-to-online-store`, with the request and response JSON of Feast's Python feature
//! server. A Cellar feature group stands in for a Feast feature view (and for a push source),
//! so `"group:feature"` references and feature services work unchanged.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use cellar_auth::{Access, Action, ResourceKind};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

use crate::error::ServeError;
use crate::http::{entity_columns, parse_body, timed, HttpState};
use crate::json::{encode, ValueJson};
use crate::service::{
    value_status, FeatureRequest, FeatureResponse, GroupRequest, PushRequest, PushRow, Row,
    Selection, Status,
};
use cellar_spec::value::format_timestamp;

/// Feast's timestamp for values that have none (entity keys, missing values).
const EPOCH: &str = "1970-01-01T00:00:00Z";

#[derive(Deserialize)]
struct GetOnlineFeaturesBody {
    #[serde(default)]
    features: Option<Vec<String>>,
    #[serde(default)]
    feature_service: Option<String>,
    entities: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    full_feature_names: bool,
    // Feast clients send this; Cellar always reads the live registry.
    #[serde(default, rename = "allow_registry_cache")]
    _allow_registry_cache: Option<bool>,
}

/// One output column: which group result and which of its features.
#[derive(Debug)]
struct Column {
    group: usize,
    feature: usize,
}

/// Groups `"group:feature"` references by group, keeping first-appearance order, and records
/// each reference's output column. A reference named again is answered once (Feast's own
/// server refuses such requests): repeats cost nothing.
fn group_references(refs: &[String]) -> Result<(Vec<GroupRequest>, Vec<Column>), ServeError> {
    let mut groups: Vec<GroupRequest> = Vec::new();
    let mut columns = Vec::with_capacity(refs.len().min(1024));
    // Hash lookups, not scans: a body can name many thousands of references.
    let mut group_at: HashMap<&str, usize> = HashMap::new();
    let mut seen: HashSet<(usize, &str)> = HashSet::new();
    for (i, r) in refs.iter().enumerate() {
        let Some((group, feature)) = r.split_once(':') else {
            return Err(ServeError::invalid(format!(
                "features[{i}]: `{r}` is not a feature reference; write `group:feature`"
            )));
        };
        if group.is_empty() || feature.is_empty() {
            return Err(ServeError::invalid(format!(
                "features[{i}]: `{r}` is not a feature reference; write `group:feature`"
            )));
        }
        let g = *group_at.entry(group).or_insert_with(|| {
            groups.push(GroupRequest {
                group: group.to_owned(),
                features: Some(Vec::new()),
                ..GroupRequest::default()
            });
            groups.len() - 1
        });
        if !seen.insert((g, feature)) {
            continue;
        }
        let features = groups[g].features.get_or_insert_with(Vec::new);
        features.push(feature.to_owned());
        columns.push(Column {
            group: g,
            feature: features.len() - 1,
        });
    }
    Ok((groups, columns))
}

pub(crate) async fn get_online_features(
    State(state): State<Arc<HttpState>>,
    access: Access,
    body: Bytes,
) -> Response {
    timed(&state, "/get-online-features", async {
        let body: GetOnlineFeaturesBody = parse_body(&body)?;
        let (select, columns) = match (body.features, body.feature_service) {
            (Some(refs), None) => {
                let (groups, columns) = group_references(&refs)?;
                (Selection::Groups(groups), Some(columns))
            }
            (None, Some(service)) => (Selection::Service(service), None),
            (Some(_), Some(_)) => {
                return Err(ServeError::invalid(
                    "give either `features` or `feature_service`, not both",
                ))
            }
            (None, None) => {
                return Err(ServeError::invalid(
                    "missing field `features` (or `feature_service`)",
                ))
            }
        };
        // Feast sends request-source fields among the entities: the service tells them apart.
        let req = FeatureRequest {
            entities: entity_columns(body.entities),
            request_data: Vec::new(),
            select,
            access,
            request_id: None,
        };
        let resp = state.service.get_features(req).await?;
        // A feature service answers every feature of its groups in service order.
        let columns = columns.unwrap_or_else(|| {
            resp.groups
                .iter()
                .enumerate()
                .flat_map(|(g, r)| {
                    (0..r.features.len()).map(move |feature| Column { group: g, feature })
                })
                .collect()
        });
        encode(&FeastResponse {
            resp: &resp,
            columns: &columns,
            full_names: body.full_feature_names,
        })
    })
    .await
}

/// Feast's column-shaped answer: `metadata.feature_names`, then one result per column (entity
/// keys first) with `values`, `statuses` and `event_timestamps` per row.
struct FeastResponse<'a> {
    resp: &'a FeatureResponse,
    columns: &'a [Column],
    full_names: bool,
}

impl Serialize for FeastResponse<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("metadata", &Metadata(self))?;
        map.serialize_entry("results", &Results(self))?;
        map.end()
    }
}

struct Metadata<'a, 'b>(&'b FeastResponse<'a>);

impl Serialize for Metadata<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut names: Vec<String> = r.resp.entities.iter().map(|(n, _)| n.clone()).collect();
        for c in r.columns {
            let g = &r.resp.groups[c.group];
            let feature = g.group.feature_name(g.features[c.feature]);
            names.push(if r.full_names {
                format!("{}__{}", g.group.name(), feature)
            } else {
                feature.to_owned()
            });
        }
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry("feature_names", &names)?;
        map.end()
    }
}

struct Results<'a, 'b>(&'b FeastResponse<'a>);

impl Serialize for Results<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        let mut seq = s.serialize_seq(Some(r.resp.entities.len() + r.columns.len()))?;
        for (_, values) in &r.resp.entities {
            seq.serialize_element(&EntityColumn(values))?;
        }
        for c in r.columns {
            let g = &r.resp.groups[c.group];
            seq.serialize_element(&FeatureColumn {
                rows: &g.rows,
                position: g.features[c.feature],
                index: c.feature,
            })?;
        }
        seq.end()
    }
}

struct EntityColumn<'a>(&'a [serde_json::Value]);

impl Serialize for EntityColumn<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0.len();
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("values", self.0)?;
        map.serialize_entry("statuses", &vec!["PRESENT"; n])?;
        map.serialize_entry("event_timestamps", &vec![EPOCH; n])?;
        map.end()
    }
}

struct FeatureColumn<'a> {
    rows: &'a [Row],
    /// The feature's position in its group (stored rows hold values by position).
    position: usize,
    /// The feature's index among those asked (computed rows hold values in that order).
    index: usize,
}

/// One cell of a feature column.
struct Cell<'a> {
    row: &'a Row,
    position: usize,
    index: usize,
}

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.row {
            Row::Record {
                record: Some(r), ..
            } => ValueJson(r.value(self.position)).serialize(s),
            Row::Record { record: None, .. } => s.serialize_unit(),
            // A time series is served as the list of its values, newest first; one with no
            // records as null, as Feast serves a missing value (its client cannot type an
            // empty list).
            Row::Series { records } if records.is_empty() => s.serialize_unit(),
            Row::Series { records } => {
                let mut seq = s.serialize_seq(Some(records.len()))?;
                for r in records {
                    seq.serialize_element(&ValueJson(r.value(self.position)))?;
                }
                seq.end()
            }
            Row::Computed { values } => match values.get(self.index) {
                Some(Ok(v)) => ValueJson(v).serialize(s),
                _ => s.serialize_unit(),
            },
        }
    }
}

fn feast_status(row: &Row, position: usize, index: usize) -> &'static str {
    if let Row::Computed { values } = row {
        // Feast has no status for a value that failed: INVALID is the nearest.
        return match values.get(index).map(value_status) {
            Some(Status::Present) => "PRESENT",
            Some(Status::Error) => "INVALID",
            _ => "NOT_FOUND",
        };
    }
    match row.status() {
        Status::NotFound | Status::Error => "NOT_FOUND",
        Status::Expired => "OUTSIDE_MAX_AGE",
        Status::Present => match row {
            Row::Record {
                record: Some(r), ..
            } if matches!(r.value(position), cellar_spec::Value::Null) => "NULL_VALUE",
            _ => "PRESENT",
        },
    }
}

fn feast_timestamp(row: &Row) -> String {
    match row {
        Row::Record {
            record: Some(r), ..
        } => format_timestamp(r.event_time),
        Row::Series { records } if !records.is_empty() => format_timestamp(records[0].event_time),
        _ => EPOCH.to_owned(),
    }
}

impl Serialize for FeatureColumn<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        let cells: Vec<Cell> = self
            .rows
            .iter()
            .map(|row| Cell {
                row,
                position: self.position,
                index: self.index,
            })
            .collect();
        map.serialize_entry("values", &cells)?;
        let statuses: Vec<&str> = self
            .rows
            .iter()
            .map(|r| feast_status(r, self.position, self.index))
            .collect();
        map.serialize_entry("statuses", &statuses)?;
        let stamps: Vec<String> = self.rows.iter().map(feast_timestamp).collect();
        map.serialize_entry("event_timestamps", &stamps)?;
        map.end()
    }
}

#[derive(Deserialize)]
struct PushBody {
    push_source_name: String,
    df: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default, rename = "allow_registry_cache")]
    _allow_registry_cache: Option<bool>,
}

#[derive(Deserialize)]
struct WriteBody {
    feature_view_name: String,
    df: serde_json::Map<String, serde_json::Value>,
    #[serde(default, rename = "allow_registry_cache")]
    _allow_registry_cache: Option<bool>,
}

/// Columns of a Feast data frame that carry the event time.
const EVENT_TIME_COLUMNS: [&str; 3] = ["event_timestamp", "event_time", "ts"];
/// Feast's bookkeeping column, not a feature.
const IGNORED_COLUMNS: [&str; 2] = ["created", "created_timestamp"];

/// Turns a column-shaped data frame into push rows for one group. Key columns are the group's
/// entity key fields; every other column is a feature (validated by the service).
fn rows_from_frame(
    df: serde_json::Map<String, serde_json::Value>,
    key_fields: &[String],
) -> Result<Vec<PushRow>, ServeError> {
    let mut len: Option<(String, usize)> = None;
    let mut columns = Vec::with_capacity(df.len());
    for (name, col) in df {
        let serde_json::Value::Array(values) = col else {
            return Err(ServeError::invalid(format!(
                "df.{name}: each column must be an array of values"
            )));
        };
        match &len {
            None => len = Some((name.clone(), values.len())),
            Some((first, n)) if *n != values.len() => {
                return Err(ServeError::invalid(format!(
                "df: every column must have the same length; `{first}` has {n}, `{name}` has {}",
                values.len()
            )))
            }
            _ => {}
        }
        columns.push((name, values));
    }
    let rows = len.map_or(0, |(_, n)| n);
    let mut out: Vec<PushRow> = (0..rows).map(|_| PushRow::default()).collect();
    for (name, values) in columns {
        if IGNORED_COLUMNS.contains(&name.as_str()) {
            continue;
        }
        let is_key = key_fields.contains(&name);
        let is_time = EVENT_TIME_COLUMNS.contains(&name.as_str());
        for (row, v) in out.iter_mut().zip(values) {
            if is_key {
                row.entity.push((name.clone(), v));
            } else if is_time {
                row.event_time = Some(zoned(v));
            } else {
                row.features.push((name.clone(), v));
            }
        }
    }
    Ok(out)
}

/// A Feast client's event time: Feast writes times without a zone (`isoformat()` of a naive
/// UTC datetime, `2026-12-06T06:26:33.696004`), meaning UTC; they are given one. Anything
/// else is left for validation to judge.
fn zoned(value: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::String(text) = &value else {
        return value;
    };
    if cellar_spec::value::parse_naive_utc(text).is_some() {
        serde_json::Value::String(format!("{}Z", text.replacen(' ', "T", 1)))
    } else {
        value
    }
}

async fn push_frame(
    state: &HttpState,
    access: Access,
    name: String,
    df: serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<u8>, ServeError> {
    let targets = state.service.push_targets(&name);
    // A group, or a push source one group declares: the whole frame is its.
    if targets.len() <= 1 {
        let group = targets.into_iter().next().map_or(name, |(group, _)| group);
        push_group(state, access, group, df).await?;
        // Feast's server answers a successful push with an empty body.
        return Ok(b"null".to_vec());
    }
    // A push source of several groups: each takes its keys, the event time and its own
    // features; a column none of them has is refused before anything is written.
    for (group, _) in &targets {
        access.check(Action::WriteFeatures, ResourceKind::Group, group)?;
    }
    let mut frames = Vec::with_capacity(targets.len());
    for (group, features) in &targets {
        let keys = state.service.entity_key_fields(group)?;
        let frame: serde_json::Map<String, serde_json::Value> = df
            .iter()
            .filter(|(column, _)| {
                keys.contains(column)
                    || features.contains(column)
                    || EVENT_TIME_COLUMNS.contains(&column.as_str())
                    || IGNORED_COLUMNS.contains(&column.as_str())
            })
            .map(|(column, values)| (column.clone(), values.clone()))
            .collect();
        frames.push((group.clone(), keys, frame));
    }
    for column in df.keys() {
        if !frames
            .iter()
            .any(|(_, _, frame)| frame.contains_key(column))
        {
            let groups: Vec<&str> = targets.iter().map(|(g, _)| g.as_str()).collect();
            return Err(ServeError::invalid(format!(
                "df.{column}: no group of push source `{name}` ({}) has a feature `{column}`",
                groups.join(", ")
            )));
        }
    }
    for (group, _, frame) in frames {
        push_group(state, access.clone(), group, frame).await?;
    }
    Ok(b"null".to_vec())
}

/// Pushes a column-shaped frame to one group.
async fn push_group(
    state: &HttpState,
    access: Access,
    group: String,
    df: serde_json::Map<String, serde_json::Value>,
) -> Result<(), ServeError> {
    // Before the group is looked up, so that a caller cannot learn which groups exist.
    access.check(Action::WriteFeatures, ResourceKind::Group, &group)?;
    let key_fields = state.service.entity_key_fields(&group)?;
    let rows = rows_from_frame(df, &key_fields)?;
    state
        .service
        .push(PushRequest {
            group,
            rows,
            access,
        })
        .await?;
    Ok(())
}

pub(crate) async fn push(
    State(state): State<Arc<HttpState>>,
    access: Access,
    body: Bytes,
) -> Response {
    timed(&state, "/push", async {
        let body: PushBody = parse_body(&body)?;
        match body.to.as_deref() {
            None | Some("online") | Some("online_and_offline") => {}
            Some(other) => {
                return Err(ServeError::invalid(format!(
                    "to: `{other}` is not supported; Cellar has an online store only, use `online`"
                )))
            }
        }
        push_frame(&state, access, body.push_source_name, body.df).await
    })
    .await
}

pub(crate) async fn write_to_online_store(
    State(state): State<Arc<HttpState>>,
    access: Access,
    body: Bytes,
) -> Response {
    timed(&state, "/write-to-online-store", async {
        let body: WriteBody = parse_body(&body)?;
        push_frame(&state, access, body.feature_view_name, body.df).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_group_in_first_appearance_order() {
        let refs: Vec<String> = ["a:x", "b:y", "a:z", "a:x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (groups, columns) = group_references(&refs).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!(
            groups[0].features.as_deref(),
            Some(&["x".to_string(), "z".to_string()][..])
        );
        // The repeated `a:x` is one column.
        let pairs: Vec<(usize, usize)> = columns.iter().map(|c| (c.group, c.feature)).collect();
        assert_eq!(pairs, vec![(0, 0), (1, 0), (0, 1)]);
    }

    #[test]
    fn feast_times_without_a_zone_are_utc() {
        let t = |s: &str| zoned(serde_json::json!(s));
        assert_eq!(
            t("2026-12-06T06:26:33.696004"),
            "2026-12-06T06:26:33.696004Z"
        );
        assert_eq!(t("2026-12-06 06:26:33"), "2026-12-06T06:26:33Z");
        // Zoned times and other values are left alone.
        assert_eq!(t("2026-12-06T06:26:33+09:00"), "2026-12-06T06:26:33+09:00");
        assert_eq!(t("2026-12-06T06:26:33Z"), "2026-12-06T06:26:33Z");
        assert_eq!(t("yesterday"), "yesterday");
        assert_eq!(zoned(serde_json::json!(17)), 17);
    }

    #[test]
    fn bad_references_name_the_index() {
        let err = group_references(&["a:x".into(), "nocolon".into()]).unwrap_err();
        assert!(err.to_string().contains("features[1]"), "{err}");
    }
}
