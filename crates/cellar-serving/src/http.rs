//! The HTTP/JSON adapter: Cellar's `/v1` API, the Feast-compatible routes, health and metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Serialize, Serializer};

use cellar_auth::{Access, Action, ResourceKind};

use crate::error::{ErrorKind, ServeError};
use crate::feast;
use crate::json::{encode, error_body, serve_error_body, ValueJson};
use crate::metrics::ServingMetrics;
use crate::service::{
    value_status, FeatureRequest, FeatureResponse, FeatureServing, GroupRequest, PushRequest,
    PushRow, Row, Selection, Status,
};
use cellar_spec::value::format_timestamp;
use cellar_spec::Value;

/// What the HTTP handlers share.
pub struct HttpState {
    pub service: Arc<dyn FeatureServing>,
    pub metrics: Arc<ServingMetrics>,
}

/// The HTTP API. `max_body_bytes` bounds request bodies (larger ones get 413).
pub fn router(state: Arc<HttpState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/features", post(v1_features))
        .route("/v1/push", post(v1_push))
        .route("/get-online-features", post(feast::get_online_features))
        .route("/push", post(feast::push))
        .route("/write-to-online-store", post(feast::write_to_online_store))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|uri: axum::http::Uri| async move {
            error_response(ErrorKind::NotFound, not_found_body(uri.path()))
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn health() -> Response {
    json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
}

async fn metrics(State(state): State<Arc<HttpState>>, access: Access) -> Response {
    if let Err(denied) = access.check(Action::ReadMetrics, ResourceKind::Metrics, "metrics") {
        let e = ServeError::from(denied);
        return error_response(e.kind(), serve_error_body(&e));
    }
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn error_response(kind: ErrorKind, body: Vec<u8>) -> Response {
    let status =
        StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, body)
}

/// Parses a JSON body, turning serde's error into a 400 that says where and what.
pub(crate) fn parse_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ServeError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "invalid request",
            _ => "malformed JSON",
        };
        ServeError::invalid(format!("{what}: {e}"))
    })
}

/// Runs a handler body, counting it and mapping errors to their status and JSON body.
pub(crate) async fn timed<F>(state: &HttpState, endpoint: &'static str, f: F) -> Response
where
    F: std::future::Future<Output = Result<Vec<u8>, ServeError>>,
{
    let start = Instant::now();
    let resp = match f.await {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => {
            if e.kind() == ErrorKind::Internal || e.kind() == ErrorKind::Unavailable {
                tracing::warn!(endpoint, error = %e, "request failed");
            }
            error_response(e.kind(), serve_error_body(&e))
        }
    };
    state
        .metrics
        .observe(endpoint, resp.status().as_u16(), start.elapsed());
    resp
}

/// Entity key columns from a JSON object: each key maps to an array of values (or a single
/// value, meaning one row).
pub(crate) fn entity_columns(
    entities: serde_json::Map<String, serde_json::Value>,
) -> Vec<(String, Vec<serde_json::Value>)> {
    entities
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::Array(values) => (k, values),
            single => (k, vec![single]),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeaturesBody {
    /// Absent for a read of on-demand groups that take request data alone.
    #[serde(default)]
    entities: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    groups: Option<Vec<GroupBody>>,
    #[serde(default)]
    feature_service: Option<String>,
    /// On-demand groups' request fields: a column of values per field, one per entity row.
    #[serde(default)]
    request_data: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum GroupBody {
    Name(String),
    Full(GroupSpecBody),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSpecBody {
    name: String,
    #[serde(default)]
    features: Option<Vec<String>>,
    #[serde(default)]
    top_n: Option<usize>,
    #[serde(default)]
    window: Option<String>,
}

fn selection(
    groups: Option<Vec<GroupBody>>,
    service: Option<String>,
) -> Result<Selection, ServeError> {
    match (groups, service) {
        (Some(_), Some(_)) => Err(ServeError::invalid(
            "give either `groups` or `feature_service`, not both",
        )),
        (None, None) => Err(ServeError::invalid(
            "missing field `groups` (or `feature_service`)",
        )),
        (None, Some(s)) => Ok(Selection::Service(s)),
        (Some(groups), None) => Ok(Selection::Groups(
            groups
                .into_iter()
                .map(|g| match g {
                    GroupBody::Name(group) => GroupRequest {
                        group,
                        ..GroupRequest::default()
                    },
                    GroupBody::Full(g) => GroupRequest {
                        group: g.name,
                        features: g.features,
                        top_n: g.top_n,
                        window: g.window,
                    },
                })
                .collect(),
        )),
    }
}

/// Longest `X-Request-Id` taken.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// The answer of `/v1/features` to `body` (a JSON request), as JSON: what the console's lookup
/// form shows, so it answers exactly as the API does for the same request.
pub async fn features_json(
    service: &dyn FeatureServing,
    body: &[u8],
    access: Access,
) -> Result<Vec<u8>, ServeError> {
    let body: FeaturesBody = parse_body(body)?;
    let resp = features(service, body, access, None).await?;
    encode(&FeaturesJson(&resp))
}

async fn features(
    service: &dyn FeatureServing,
    body: FeaturesBody,
    access: Access,
    request_id: Option<String>,
) -> Result<FeatureResponse, ServeError> {
    let req = FeatureRequest {
        entities: entity_columns(body.entities),
        request_data: entity_columns(body.request_data),
        select: selection(body.groups, body.feature_service)?,
        access,
        request_id,
    };
    service.get_features(req).await
}

async fn v1_features(
    State(state): State<Arc<HttpState>>,
    access: Access,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let arrow =
        crate::arrow_answer::wants_arrow(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let mut response = timed(&state, "/v1/features", async {
        let body: FeaturesBody = parse_body(&body)?;
        let request_id = match headers.get("x-request-id") {
            None => None,
            Some(v) => match v.to_str() {
                Ok(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES => Some(id.to_owned()),
                _ => {
                    return Err(ServeError::InvalidArgument(format!(
                        "X-Request-Id must be 1 to {MAX_REQUEST_ID_BYTES} visible ASCII characters"
                    )))
                }
            },
        };
        let resp = features(state.service.as_ref(), body, access, request_id).await?;
        if arrow {
            return crate::arrow_answer::encode(&resp);
        }
        encode(&FeaturesJson(&resp))
    })
    .await;
    // Errors stay JSON, which every client reads.
    if arrow && response.status() == StatusCode::OK {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::arrow_answer::ARROW_STREAM),
        );
    }
    response
}

/// `/v1/features` response: entity columns echoed, then one result per group with a row per
/// entity row.
struct FeaturesJson<'a>(&'a FeatureResponse);

impl Serialize for FeaturesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("entities", &EntitiesJson(&self.0.entities))?;
        map.serialize_entry(
            "results",
            &SeqJson(self.0.groups.iter().map(|g| GroupJson { result: g })),
        )?;
        // The id labels are joined to the logged answer by.
        if let Some(id) = &self.0.logged_as {
            map.serialize_entry("request_id", id)?;
        }
        map.end()
    }
}

struct EntitiesJson<'a>(&'a [(String, Vec<serde_json::Value>)]);

impl Serialize for EntitiesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Serializes an iterator as a JSON array.
struct SeqJson<I>(I);

impl<I, T> Serialize for SeqJson<I>
where
    I: Iterator<Item = T> + Clone,
    T: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        for item in self.0.clone() {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

struct GroupJson<'a> {
    result: &'a crate::service::GroupResult,
}

impl Serialize for GroupJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let g = self.result;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("group", g.group.name())?;
        map.serialize_entry("kind", g.group.kind_name())?;
        map.serialize_entry("features", &SeqJson(g.feature_names()))?;
        map.serialize_entry(
            "rows",
            &SeqJson(g.rows.iter().map(|row| RowJson {
                row,
                features: &g.features,
            })),
        )?;
        map.end()
    }
}

pub(crate) fn status_name(s: Status) -> &'static str {
    s.as_str()
}

struct RowJson<'a> {
    row: &'a Row,
    features: &'a [usize],
}

/// The values of a record at the given positions.
struct ValuesJson<'a> {
    record: &'a cellar_store::Record,
    features: &'a [usize],
}

impl Serialize for ValuesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.features.len()))?;
        for &i in self.features {
            seq.serialize_element(&ValueJson(self.record.value(i)))?;
        }
        seq.end()
    }
}

struct RecordJson<'a> {
    record: &'a cellar_store::Record,
    features: &'a [usize],
}

impl Serialize for RecordJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("event_time", &format_timestamp(self.record.event_time))?;
        map.serialize_entry(
            "values",
            &ValuesJson {
                record: self.record,
                features: self.features,
            },
        )?;
        map.end()
    }
}

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("status", status_name(self.row.status()))?;
        match self.row {
            Row::Record {
                record: Some(record),
                ..
            } => {
                map.serialize_entry("event_time", &format_timestamp(record.event_time))?;
                map.serialize_entry(
                    "values",
                    &ValuesJson {
                        record,
                        features: self.features,
                    },
                )?;
            }
            Row::Record { record: None, .. } => {}
            Row::Series { records } => {
                map.serialize_entry(
                    "records",
                    &SeqJson(records.iter().map(|record| RecordJson {
                        record,
                        features: self.features,
                    })),
                )?;
            }
            // Each computed value has its own status, and an error its reason.
            Row::Computed { values } => {
                map.serialize_entry(
                    "values",
                    &SeqJson(
                        values
                            .iter()
                            .map(|v| ValueJson(v.as_ref().unwrap_or(&Value::Null))),
                    ),
                )?;
                map.serialize_entry(
                    "statuses",
                    &SeqJson(values.iter().map(|v| status_name(value_status(v)))),
                )?;
                if values.iter().any(Result::is_err) {
                    map.serialize_entry(
                        "errors",
                        &SeqJson(values.iter().map(|v| v.as_ref().err())),
                    )?;
                }
            }
        }
        map.end()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushBody {
    group: String,
    records: Vec<PushRecordBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRecordBody {
    entity: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    event_time: Option<serde_json::Value>,
    #[serde(default)]
    features: serde_json::Map<String, serde_json::Value>,
}

async fn v1_push(State(state): State<Arc<HttpState>>, access: Access, body: Bytes) -> Response {
    timed(&state, "/v1/push", async {
        let body: PushBody = parse_body(&body)?;
        let req = PushRequest {
            access,
            group: body.group,
            rows: body
                .records
                .into_iter()
                .map(|r| PushRow {
                    entity: r.entity.into_iter().collect(),
                    event_time: r.event_time,
                    features: r.features.into_iter().collect(),
                })
                .collect(),
        };
        let resp = state.service.push(req).await?;
        Ok(serde_json::to_vec(&serde_json::json!({
            "applied": resp.applied,
            "stale": resp.stale,
        }))
        .unwrap_or_default())
    })
    .await
}

/// The answer to a request for a path that does not exist.
fn not_found_body(path: &str) -> Vec<u8> {
    error_body(ErrorKind::NotFound, &format!("no such endpoint: {path}"))
}
