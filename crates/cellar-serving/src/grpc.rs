//! The gRPC adapter: `cellar.v1.FeatureServing` (`proto/cellar/v1/serving.proto`) over the
//! same [`FeatureServing`] service as the HTTP API, so both protocols answer the same.
//!
//! Requests carry typed [`pb::Value`]s; the service takes entity keys and pushed values as
//! JSON and checks them against the spec types, so request values are converted to the JSON
//! the HTTP API would have received (bytes as base64 text, timestamps as epoch milliseconds).
//! Served values go from [`cellar_spec::Value`] straight into [`pb::Value`]. Errors become
//! [`tonic::Status`] through the one error table in [`crate::error`].

use std::sync::Arc;

use base64::Engine as _;
use cellar_auth::Access;
use cellar_spec::{GroupKind, Value};
use tonic::{Request, Response};

use crate::error::{ErrorKind, ServeError};
use crate::service::{
    value_status, FeatureRequest, FeatureResponse, FeatureServing, GroupRequest, PushRequest,
    PushRow, ResultGroup, Row, Selection, Status,
};

/// The messages, server and client generated from `proto/cellar/v1/serving.proto`.
// Generated code follows prost's style, not ours; lint the proto instead.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("cellar.v1");
}

use pb::feature_serving_server::{FeatureServing as FeatureServingRpc, FeatureServingServer};
use pb::value::Kind;

/// The gRPC server of `cellar.v1.FeatureServing` over a serving service, ready to add to a
/// `tonic::transport::Server`.
pub fn service(svc: Arc<dyn FeatureServing>) -> FeatureServingServer<GrpcFeatureServing> {
    FeatureServingServer::new(GrpcFeatureServing { service: svc })
}

/// Implements the generated gRPC service by converting messages and calling the serving
/// service; it holds no state of its own.
pub struct GrpcFeatureServing {
    service: Arc<dyn FeatureServing>,
}

/// Turns a serving error into its gRPC status, logging the ones that are our side's fault (the
/// client already hears about its own mistakes).
fn status(rpc: &'static str, e: ServeError) -> tonic::Status {
    if matches!(e.kind(), ErrorKind::Internal | ErrorKind::Unavailable) {
        tracing::warn!(rpc, error = %e, "request failed");
    }
    e.into()
}

/// The caller's access, put into the request by the listener; [`Access::Open`] when
/// authentication is off.
fn caller<T>(request: &Request<T>) -> Access {
    request
        .extensions()
        .get::<Access>()
        .cloned()
        .unwrap_or_default()
}

#[tonic::async_trait]
impl FeatureServingRpc for GrpcFeatureServing {
    async fn get_features(
        &self,
        request: Request<pb::GetFeaturesRequest>,
    ) -> Result<Response<pb::GetFeaturesResponse>, tonic::Status> {
        let access = caller(&request);
        let (mut req, entities) =
            feature_request(request.into_inner()).map_err(|e| status("GetFeatures", e))?;
        req.access = access;
        let resp = self
            .service
            .get_features(req)
            .await
            .map_err(|e| status("GetFeatures", e))?;
        Ok(Response::new(feature_response(&resp, entities)))
    }

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<pb::PushResponse>, tonic::Status> {
        let access = caller(&request);
        let mut req = push_request(request.into_inner()).map_err(|e| status("Push", e))?;
        req.access = access;
        let resp = self
            .service
            .push(req)
            .await
            .map_err(|e| status("Push", e))?;
        Ok(Response::new(pb::PushResponse {
            applied: resp.applied as u64,
            stale: resp.stale as u64,
        }))
    }
}

/// The JSON that the HTTP API would have received for this value: null, booleans, numbers,
/// strings and arrays and objects of them, with bytes as base64 text and timestamps as epoch
/// milliseconds. Fails only on numbers JSON cannot hold (NaN, infinities).
///
/// Recursion is bounded: prost refuses to decode messages nested more than 100 deep.
pub fn value_to_json(v: &pb::Value) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(*b),
        Some(Kind::Int64Value(i)) | Some(Kind::TimestampMs(i)) => J::from(*i),
        Some(Kind::DoubleValue(f)) => finite(*f)?,
        Some(Kind::StringValue(s)) => J::String(s.clone()),
        Some(Kind::BytesValue(b)) => J::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Some(Kind::ListValue(l)) | Some(Kind::SetValue(l)) => J::Array(
            l.values
                .iter()
                .enumerate()
                .map(|(i, v)| value_to_json(v).map_err(|e| format!("element {i}: {e}")))
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::MapValue(m)) => J::Object(
            m.entries
                .iter()
                .map(|(k, v)| {
                    value_to_json(v)
                        .map(|v| (k.clone(), v))
                        .map_err(|e| format!("key {k:?}: {e}"))
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::VectorValue(xs)) => J::Array(
            xs.values
                .iter()
                .enumerate()
                .map(|(i, &x)| finite(f64::from(x)).map_err(|e| format!("element {i}: {e}")))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn finite(f: f64) -> Result<serde_json::Value, String> {
    serde_json::Number::from_f64(f)
        .map(serde_json::Value::Number)
        .ok_or_else(|| format!("expected a finite number, got {f}"))
}

/// A served value as a message. Unlike the JSON form, non-finite floats are kept as they are.
pub fn value_to_proto(v: &Value) -> pb::Value {
    let kind = match v {
        Value::Null => Kind::NullValue(pb::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Int64(i) => Kind::Int64Value(*i),
        Value::Float64(f) => Kind::DoubleValue(*f),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Bytes(b) => Kind::BytesValue(b.clone()),
        Value::Timestamp(ms) => Kind::TimestampMs(*ms),
        Value::List(items) => Kind::ListValue(value_list(items)),
        Value::Set(items) => Kind::SetValue(value_list(items)),
        Value::Map(entries) => Kind::MapValue(pb::ValueMap {
            entries: entries
                .iter()
                .map(|(k, v)| (k.clone(), value_to_proto(v)))
                .collect(),
        }),
        Value::Vector(xs) => Kind::VectorValue(pb::FloatVector { values: xs.clone() }),
    };
    pb::Value { kind: Some(kind) }
}

fn value_list(items: &[Value]) -> pb::ValueList {
    pb::ValueList {
        values: items.iter().map(value_to_proto).collect(),
    }
}

/// The service's request, and the key columns as given, to echo in the response unchanged.
fn feature_request(
    req: pb::GetFeaturesRequest,
) -> Result<(FeatureRequest, Vec<pb::EntityColumn>), ServeError> {
    let columns = |given: &[pb::EntityColumn], what: &str| {
        given
            .iter()
            .map(|column| {
                let values = column
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        value_to_json(v).map_err(|e| {
                            ServeError::invalid(format!("{what}.{}[{i}]: {e}", column.name))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((column.name.clone(), values))
            })
            .collect::<Result<Vec<_>, ServeError>>()
    };
    let entities = columns(&req.entities, "entities")?;
    let request_data = columns(&req.request_data, "request_data")?;
    let select = match (req.feature_service, req.groups.is_empty()) {
        (Some(_), false) => {
            return Err(ServeError::invalid(
                "give either `groups` or `feature_service`, not both",
            ))
        }
        (Some(service), true) => Selection::Service(service),
        // No groups at all is left to the service, which says what to send.
        (None, _) => Selection::Groups(
            req.groups
                .into_iter()
                .map(|g| GroupRequest {
                    group: g.name,
                    // Proto cannot tell an empty list from a missing one; asking for no
                    // features is of no use, so empty means all of them.
                    features: (!g.features.is_empty()).then_some(g.features),
                    top_n: g.top_n.map(|n| n as usize),
                    window: g.window,
                })
                .collect(),
        ),
    };
    Ok((
        FeatureRequest {
            entities,
            request_data,
            select,
            access: Access::Open,
            request_id: None,
        },
        req.entities,
    ))
}

fn row_status(s: Status) -> pb::RowStatus {
    match s {
        Status::Present => pb::RowStatus::Present,
        Status::NotFound => pb::RowStatus::NotFound,
        Status::Expired => pb::RowStatus::Expired,
        Status::Error => pb::RowStatus::Error,
    }
}

fn values(record: &cellar_store::Record, features: &[usize]) -> Vec<pb::Value> {
    features
        .iter()
        .map(|&i| value_to_proto(record.value(i)))
        .collect()
}

fn feature_response(
    resp: &FeatureResponse,
    entities: Vec<pb::EntityColumn>,
) -> pb::GetFeaturesResponse {
    let results = resp
        .groups
        .iter()
        .map(|g| pb::GroupResult {
            name: g.group.name().to_owned(),
            kind: match &g.group {
                ResultGroup::Stored(s) => match s.spec.kind {
                    GroupKind::Attribute => pb::GroupKind::Attribute,
                    GroupKind::Timeseries => pb::GroupKind::Timeseries,
                },
                ResultGroup::OnDemand(_) => pb::GroupKind::OnDemand,
            } as i32,
            features: g.feature_names().map(str::to_owned).collect(),
            rows: g
                .rows
                .iter()
                .map(|row| {
                    let status = row_status(row.status()) as i32;
                    match row {
                        Row::Record {
                            record: Some(r), ..
                        } => pb::Row {
                            status,
                            event_time_ms: Some(r.event_time),
                            values: values(r, &g.features),
                            ..pb::Row::default()
                        },
                        Row::Record { record: None, .. } => pb::Row {
                            status,
                            ..pb::Row::default()
                        },
                        Row::Series { records } => pb::Row {
                            status,
                            records: records
                                .iter()
                                .map(|r| pb::Record {
                                    event_time_ms: r.event_time,
                                    values: values(r, &g.features),
                                })
                                .collect(),
                            ..pb::Row::default()
                        },
                        Row::Computed { values } => pb::Row {
                            status,
                            values: values
                                .iter()
                                .map(|v| value_to_proto(v.as_ref().unwrap_or(&Value::Null)))
                                .collect(),
                            statuses: values
                                .iter()
                                .map(|v| row_status(value_status(v)) as i32)
                                .collect(),
                            errors: if values.iter().any(Result::is_err) {
                                values
                                    .iter()
                                    .map(|v| v.as_ref().err().cloned().unwrap_or_default())
                                    .collect()
                            } else {
                                Vec::new()
                            },
                            ..pb::Row::default()
                        },
                    }
                })
                .collect(),
        })
        .collect();
    pb::GetFeaturesResponse { entities, results }
}

fn push_request(req: pb::PushRequest) -> Result<PushRequest, ServeError> {
    let fields = |i: usize, what: &str, map: &std::collections::BTreeMap<String, pb::Value>| {
        map.iter()
            .map(|(name, v)| {
                value_to_json(v)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| ServeError::invalid(format!("records[{i}].{what}.{name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let rows = req
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(PushRow {
                entity: fields(i, "entity", &r.entity)?,
                event_time: r.event_time_ms.map(serde_json::Value::from),
                features: fields(i, "features", &r.features)?,
            })
        })
        .collect::<Result<_, ServeError>>()?;
    Ok(PushRequest {
        group: req.group,
        rows,
        access: Access::Open,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_spec::{ScalarType, ValueType};
    use serde_json::json;

    fn pv(kind: Kind) -> pb::Value {
        pb::Value { kind: Some(kind) }
    }

    #[test]
    fn request_values_become_the_json_the_http_api_takes() {
        let cases = [
            (pb::Value::default(), json!(null)),
            (pv(Kind::NullValue(0)), json!(null)),
            (pv(Kind::BoolValue(true)), json!(true)),
            (pv(Kind::Int64Value(-7)), json!(-7)),
            (pv(Kind::DoubleValue(2.5)), json!(2.5)),
            (pv(Kind::StringValue("u1".into())), json!("u1")),
            (pv(Kind::BytesValue(vec![0, 255, 7])), json!("AP8H")),
            (
                pv(Kind::TimestampMs(1_700_000_000_123)),
                json!(1_700_000_000_123_i64),
            ),
            (
                pv(Kind::ListValue(pb::ValueList {
                    values: vec![pv(Kind::StringValue("a".into())), pb::Value::default()],
                })),
                json!(["a", null]),
            ),
            (
                pv(Kind::SetValue(pb::ValueList {
                    values: vec![pv(Kind::Int64Value(1))],
                })),
                json!([1]),
            ),
            (
                pv(Kind::MapValue(pb::ValueMap {
                    entries: [("k".to_owned(), pv(Kind::DoubleValue(0.5)))].into(),
                })),
                json!({"k": 0.5}),
            ),
            (
                pv(Kind::VectorValue(pb::FloatVector {
                    values: vec![0.5, -1.0],
                })),
                json!([0.5, -1.0]),
            ),
        ];
        for (proto, expected) in cases {
            assert_eq!(value_to_json(&proto), Ok(expected), "{proto:?}");
        }
    }

    #[test]
    fn non_finite_numbers_are_refused_with_where() {
        let e = value_to_json(&pv(Kind::DoubleValue(f64::NAN))).unwrap_err();
        assert_eq!(e, "expected a finite number, got NaN");
        let v = pv(Kind::VectorValue(pb::FloatVector {
            values: vec![1.0, f32::INFINITY],
        }));
        assert_eq!(
            value_to_json(&v).unwrap_err(),
            "element 1: expected a finite number, got inf"
        );
    }

    #[test]
    fn served_values_become_typed_messages() {
        assert_eq!(
            value_to_proto(&Value::Null),
            pv(Kind::NullValue(pb::NullValue::NullValue as i32))
        );
        assert_eq!(
            value_to_proto(&Value::Timestamp(5)),
            pv(Kind::TimestampMs(5))
        );
        assert_eq!(
            value_to_proto(&Value::Set(vec![Value::Int64(1), Value::Int64(2)])),
            pv(Kind::SetValue(pb::ValueList {
                values: vec![pv(Kind::Int64Value(1)), pv(Kind::Int64Value(2))],
            }))
        );
        assert_eq!(
            value_to_proto(&Value::Float64(f64::INFINITY)),
            pv(Kind::DoubleValue(f64::INFINITY))
        );
    }

    /// What a client reads back, it can push again and get the same value: every type goes
    /// through proto and JSON to the spec value it started as.
    #[test]
    fn every_type_round_trips_through_push() {
        let s = ValueType::Scalar;
        let cases = [
            (s(ScalarType::Bool), Value::Bool(false)),
            (s(ScalarType::Int64), Value::Int64(i64::MIN)),
            (s(ScalarType::Float64), Value::Float64(-0.25)),
            (s(ScalarType::String), Value::String("héllo".into())),
            (s(ScalarType::Bytes), Value::Bytes(vec![1, 2, 3, 250])),
            (
                s(ScalarType::Timestamp),
                Value::Timestamp(1_700_000_000_001),
            ),
            (s(ScalarType::Int64), Value::Null),
            (
                ValueType::List(ScalarType::String),
                Value::List(vec![Value::String("b".into()), Value::String("a".into())]),
            ),
            (
                ValueType::Set(ScalarType::Timestamp),
                Value::Set(vec![Value::Timestamp(1), Value::Timestamp(2)]),
            ),
            (
                ValueType::Map(ScalarType::Bytes),
                Value::Map(vec![
                    ("a".into(), Value::Bytes(vec![0])),
                    ("b".into(), Value::Bytes(vec![])),
                ]),
            ),
            (ValueType::Vector(3), Value::Vector(vec![0.5, -2.0, 1e-3])),
        ];
        for (t, v) in cases {
            let json = value_to_json(&value_to_proto(&v)).expect("finite values convert");
            assert_eq!(Value::from_json(t, &json), Ok(v), "type {t}");
        }
    }

    #[test]
    fn groups_and_feature_service_are_exclusive() {
        let req = pb::GetFeaturesRequest {
            entities: Vec::new(),
            groups: vec![pb::GroupRequest {
                name: "profile".into(),
                ..Default::default()
            }],
            feature_service: Some("ranking".into()),
            request_data: Vec::new(),
        };
        let e = feature_request(req).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn group_requests_keep_their_bounds_and_empty_features_mean_all() {
        let req = pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".into(),
                values: vec![pv(Kind::StringValue("u1".into())), pv(Kind::Int64Value(2))],
            }],
            groups: vec![
                pb::GroupRequest {
                    name: "clicks".into(),
                    features: vec!["url".into()],
                    top_n: Some(3),
                    window: Some("7d".into()),
                },
                pb::GroupRequest {
                    name: "profile".into(),
                    ..Default::default()
                },
            ],
            feature_service: None,
            request_data: Vec::new(),
        };
        let (req, echoed) = feature_request(req).expect("valid request");
        assert_eq!(echoed.len(), 1);
        assert_eq!(
            req.entities,
            vec![("user_id".to_owned(), vec![json!("u1"), json!(2)])]
        );
        let Selection::Groups(groups) = req.select else {
            panic!("expected groups, got {:?}", req.select);
        };
        assert_eq!(groups[0].features, Some(vec!["url".to_owned()]));
        assert_eq!(groups[0].top_n, Some(3));
        assert_eq!(groups[0].window.as_deref(), Some("7d"));
        assert_eq!(groups[1].features, None);
        assert_eq!(groups[1].top_n, None);
    }

    #[test]
    fn bad_pushed_values_name_the_record_and_feature() {
        let req = pb::PushRequest {
            group: "profile".into(),
            records: vec![
                pb::PushRecord::default(),
                pb::PushRecord {
                    entity: [("user_id".to_owned(), pv(Kind::StringValue("u1".into())))].into(),
                    event_time_ms: Some(10),
                    features: [("score".to_owned(), pv(Kind::DoubleValue(f64::NAN)))].into(),
                },
            ],
        };
        let e = push_request(req).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert_eq!(
            e.to_string(),
            "records[1].features.score: expected a finite number, got NaN"
        );
    }

    #[test]
    fn pushed_records_carry_keys_time_and_features() {
        let req = pb::PushRequest {
            group: "profile".into(),
            records: vec![pb::PushRecord {
                entity: [("user_id".to_owned(), pv(Kind::StringValue("u1".into())))].into(),
                event_time_ms: Some(1_700_000_000_000),
                features: [("age".to_owned(), pv(Kind::Int64Value(36)))].into(),
            }],
        };
        let req = push_request(req).expect("valid push");
        assert_eq!(req.group, "profile");
        assert_eq!(
            req.rows[0].entity,
            vec![("user_id".to_owned(), json!("u1"))]
        );
        assert_eq!(req.rows[0].event_time, Some(json!(1_700_000_000_000_i64)));
        assert_eq!(req.rows[0].features, vec![("age".to_owned(), json!(36))]);
    }
}
