//! The gRPC and HTTP APIs, served by one real `FeatureServer` (embedded store behind a local
//! cache tier), answer the same reads the same: features, values, statuses and event times;
//! and both refuse a read over the cost ceiling, and stop a read at its deadline.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use cellar_cache::{CacheMetrics, LocalTier, WritePath};
use cellar_serving::grpc::pb::feature_serving_client::FeatureServingClient;
use cellar_serving::grpc::pb::{self, value::Kind};
use cellar_serving::http::{router, HttpState};
use cellar_serving::metrics::ServingMetrics;
use cellar_serving::{grpc, Catalog, FeatureServer, FeatureServing, Limits};
use cellar_spec::value::{format_timestamp, parse_timestamp};
use cellar_spec::{
    Entity, EntityKeyField, Feature, FeatureGroup, FeatureRepo, FeatureSelection, FeatureService,
    GroupKind, KeyType, OnDemandFeature, OnDemandGroup, RequestField, Retention, ScalarType,
    ServingPolicy, ValueType,
};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{OnlineStore, RecordReader};
use serde_json::json;
use tonic::transport::Channel;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn feature(name: &str, value_type: ValueType) -> Feature {
    Feature {
        name: name.to_owned(),
        value_type,
        description: None,
        retired: false,
    }
}

fn group(
    name: &str,
    kind: GroupKind,
    features: Vec<Feature>,
    retention: Retention,
) -> FeatureGroup {
    FeatureGroup {
        name: name.to_owned(),
        entity: "user".to_owned(),
        kind,
        features,
        retention,
        serving: ServingPolicy::default(),
        max_record_bytes: 64 * 1024,
        freshness: None,
        push_sources: Vec::new(),
        description: None,
        generation: 0,
        previous: None,
    }
}

fn on_demand_feature(name: &str, value_type: &str, expr: &str) -> OnDemandFeature {
    OnDemandFeature {
        name: name.to_owned(),
        value_type: value_type.parse().unwrap(),
        expr: expr.to_owned(),
        description: None,
    }
}

/// `user` keyed by `user_id`; `profile` (attributes, served for 30 days), `clicks` (a time
/// series) and the `ranking` feature service over both.
fn repo() -> FeatureRepo {
    FeatureRepo {
        entities: vec![Entity {
            name: "user".to_owned(),
            keys: vec![EntityKeyField {
                name: "user_id".to_owned(),
                key_type: KeyType::String,
            }],
            description: None,
        }],
        groups: vec![
            group(
                "profile",
                GroupKind::Attribute,
                vec![
                    feature("name", ValueType::Scalar(ScalarType::String)),
                    feature("age", ValueType::Scalar(ScalarType::Int64)),
                    feature("tags", ValueType::List(ScalarType::String)),
                ],
                Retention {
                    max_records: None,
                    max_age: Some(Duration::from_millis(30 * DAY_MS as u64)),
                    history: None,
                },
            ),
            group(
                "clicks",
                GroupKind::Timeseries,
                vec![feature("url", ValueType::Scalar(ScalarType::String))],
                Retention {
                    max_records: Some(100),
                    max_age: None,
                    history: None,
                },
            ),
        ],
        on_demand: vec![OnDemandGroup {
            name: "signals".to_owned(),
            request: vec![RequestField {
                name: "boost".to_owned(),
                value_type: ValueType::Scalar(ScalarType::Int64),
            }],
            features: vec![
                on_demand_feature("boosted_age", "int64", "profile.age + boost"),
                on_demand_feature("latest_url", "string", "array_element(clicks.url, 1)"),
                on_demand_feature("per_year_over_36", "int64", "100 / (profile.age - 36)"),
            ],
            sources: Vec::new(),
            description: None,
        }],
        ingestions: Vec::new(),
        services: vec![FeatureService {
            name: "ranking".to_owned(),
            features: vec![
                FeatureSelection {
                    group: "profile".to_owned(),
                    features: Some(vec!["age".to_owned()]),
                },
                FeatureSelection {
                    group: "clicks".to_owned(),
                    features: None,
                },
            ],
            description: None,
            logging: Default::default(),
        }],
        origins: Default::default(),
    }
}

/// Both APIs listening on port 0 over one service; the store's directory lives as long as
/// this does.
struct Servers {
    http: String,
    grpc: FeatureServingClient<Channel>,
    _dir: tempfile::TempDir,
}

async fn start() -> Servers {
    start_with(Limits {
        // The test machine is shared; a slow read must not turn into a deadline error.
        deadline: Duration::from_secs(30),
        ..Limits::default()
    })
    .await
}

async fn start_with(limits: Limits) -> Servers {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open embedded store"));
    let local = Arc::new(LocalTier::new(
        16 << 20,
        store.clone() as Arc<dyn RecordReader>,
        CacheMetrics::default(),
    ));
    let service: Arc<dyn FeatureServing> = Arc::new(FeatureServer::new(
        Catalog::new(&repo()),
        local.clone() as Arc<dyn RecordReader>,
        WritePath::new(store as Arc<dyn OnlineStore>, Some(local)),
        limits,
    ));

    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind http");
    let http_addr = http_listener.local_addr().expect("http addr");
    let app = router(
        Arc::new(HttpState {
            service: service.clone(),
            metrics: Arc::new(ServingMetrics::new()),
        }),
        1 << 20,
    );
    tokio::spawn(async move { axum::serve(http_listener, app).await });

    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind grpc");
    let grpc_addr = grpc_listener.local_addr().expect("grpc addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc::service(service))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc_listener)),
    );
    let grpc = FeatureServingClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("connect grpc");
    Servers {
        http: format!("http://{http_addr}"),
        grpc,
        _dir: dir,
    }
}

fn string(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

fn int(i: i64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::Int64Value(i)),
    }
}

fn strings(items: &[&str]) -> pb::Value {
    pb::Value {
        kind: Some(Kind::ListValue(pb::ValueList {
            values: items.iter().map(|s| string(s)).collect(),
        })),
    }
}

fn record(user: &str, event_time_ms: i64, features: Vec<(&str, pb::Value)>) -> pb::PushRecord {
    pb::PushRecord {
        entity: [("user_id".to_owned(), string(user))].into(),
        event_time_ms: Some(event_time_ms),
        features: features
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    }
}

/// One group's answer in a protocol-neutral form: values in their served JSON form, event
/// times in epoch milliseconds.
#[derive(Debug, PartialEq)]
struct GroupView {
    name: String,
    kind: String,
    features: Vec<String>,
    rows: Vec<RowView>,
}

#[derive(Debug, PartialEq)]
struct RowView {
    status: String,
    event_time_ms: Option<i64>,
    values: Vec<serde_json::Value>,
    records: Vec<(i64, Vec<serde_json::Value>)>,
    /// On-demand rows: each value's status, and the errors when one failed.
    statuses: Vec<String>,
    errors: Vec<String>,
}

/// A message value as the HTTP API serves the same value.
fn served_json(v: &pb::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::Int64Value(i)) => json!(i),
        Some(Kind::DoubleValue(f)) => json!(f),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::BytesValue(b)) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Some(Kind::TimestampMs(ms)) => json!(format_timestamp(*ms)),
        Some(Kind::ListValue(l)) | Some(Kind::SetValue(l)) => {
            J::Array(l.values.iter().map(served_json).collect())
        }
        Some(Kind::MapValue(m)) => J::Object(
            m.entries
                .iter()
                .map(|(k, v)| (k.clone(), served_json(v)))
                .collect(),
        ),
        Some(Kind::VectorValue(xs)) => json!(xs.values),
    }
}

fn status_name(s: pb::RowStatus) -> &'static str {
    match s {
        pb::RowStatus::Present => "present",
        pb::RowStatus::NotFound => "not_found",
        pb::RowStatus::Expired => "expired",
        pb::RowStatus::Error => "error",
        pb::RowStatus::Unspecified => "unspecified",
    }
}

fn grpc_view(resp: &pb::GetFeaturesResponse) -> Vec<GroupView> {
    resp.results
        .iter()
        .map(|g| GroupView {
            name: g.name.clone(),
            kind: match g.kind() {
                pb::GroupKind::Attribute => "attribute",
                pb::GroupKind::Timeseries => "timeseries",
                pb::GroupKind::OnDemand => "on_demand",
                pb::GroupKind::Unspecified => "unspecified",
            }
            .to_owned(),
            features: g.features.clone(),
            rows: g
                .rows
                .iter()
                .map(|r| RowView {
                    status: status_name(r.status()).to_owned(),
                    statuses: r.statuses().map(|s| status_name(s).to_owned()).collect(),
                    errors: r.errors.clone(),
                    event_time_ms: r.event_time_ms,
                    values: r.values.iter().map(served_json).collect(),
                    records: r
                        .records
                        .iter()
                        .map(|rec| {
                            (
                                rec.event_time_ms,
                                rec.values.iter().map(served_json).collect(),
                            )
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect()
}

fn http_time(v: &serde_json::Value) -> i64 {
    parse_timestamp(v).unwrap_or_else(|| panic!("event_time is not a timestamp: {v}"))
}

fn http_values(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn http_view(body: &serde_json::Value) -> Vec<GroupView> {
    let results = body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {body}"));
    results
        .iter()
        .map(|g| GroupView {
            name: g["group"].as_str().unwrap_or_default().to_owned(),
            kind: g["kind"].as_str().unwrap_or_default().to_owned(),
            features: g["features"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .map(|f| f.as_str().unwrap_or_default().to_owned())
                        .collect()
                })
                .unwrap_or_default(),
            rows: g["rows"]
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .map(|r| RowView {
                            status: r["status"].as_str().unwrap_or_default().to_owned(),
                            event_time_ms: r.get("event_time").map(http_time),
                            values: http_values(&r["values"]),
                            statuses: http_values(&r["statuses"])
                                .iter()
                                .map(|s| s.as_str().unwrap_or_default().to_owned())
                                .collect(),
                            errors: http_values(&r["errors"])
                                .iter()
                                .map(|e| e.as_str().unwrap_or_default().to_owned())
                                .collect(),
                            records: r["records"]
                                .as_array()
                                .map(|recs| {
                                    recs.iter()
                                        .map(|rec| {
                                            (
                                                http_time(&rec["event_time"]),
                                                http_values(&rec["values"]),
                                            )
                                        })
                                        .collect()
                                })
                                .unwrap_or_default(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

async fn http_post(
    http: &reqwest::Client,
    url: String,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = http
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("http request");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

fn row(status: &str, event_time_ms: Option<i64>, values: Vec<serde_json::Value>) -> RowView {
    RowView {
        status: status.to_owned(),
        event_time_ms,
        values,
        records: Vec::new(),
        statuses: Vec::new(),
        errors: Vec::new(),
    }
}

fn computed(values: Vec<serde_json::Value>, statuses: &[&str], errors: &[&str]) -> RowView {
    let status = if statuses.contains(&"error") {
        "error"
    } else if statuses.contains(&"present") {
        "present"
    } else {
        "not_found"
    };
    RowView {
        status: status.to_owned(),
        event_time_ms: None,
        values,
        records: Vec::new(),
        statuses: statuses.iter().map(|s| (*s).to_owned()).collect(),
        errors: errors.iter().map(|e| (*e).to_owned()).collect(),
    }
}

fn series(records: Vec<(i64, &str)>) -> RowView {
    RowView {
        status: if records.is_empty() {
            "not_found"
        } else {
            "present"
        }
        .to_owned(),
        event_time_ms: None,
        values: Vec::new(),
        records: records
            .into_iter()
            .map(|(t, url)| (t, vec![json!(url)]))
            .collect(),
        statuses: Vec::new(),
        errors: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_and_http_serve_the_same_features() {
    let mut servers = start().await;
    let http = reqwest::Client::new();
    let t = now_ms();

    let pushed = servers
        .grpc
        .push(pb::PushRequest {
            group: "profile".to_owned(),
            records: vec![
                record(
                    "u1",
                    t - 1000,
                    vec![
                        ("name", string("Ada")),
                        ("age", int(36)),
                        ("tags", strings(&["ml", "rust"])),
                    ],
                ),
                record("u2", t - 5000, vec![("name", string("Bo"))]),
                // Past the group's 30-day max_age: stored, but served as expired.
                record("u3", t - 40 * DAY_MS, vec![("name", string("Old"))]),
            ],
        })
        .await
        .expect("push profile")
        .into_inner();
    assert_eq!((pushed.applied, pushed.stale), (3, 0));

    let stale = servers
        .grpc
        .push(pb::PushRequest {
            group: "profile".to_owned(),
            records: vec![record("u2", t - 9000, vec![("name", string("older"))])],
        })
        .await
        .expect("push stale profile")
        .into_inner();
    assert_eq!((stale.applied, stale.stale), (0, 1));

    let clicks = servers
        .grpc
        .push(pb::PushRequest {
            group: "clicks".to_owned(),
            records: vec![
                record("u1", t - 3000, vec![("url", string("/a"))]),
                record("u1", t - 2000, vec![("url", string("/b"))]),
                record("u1", t - 1000, vec![("url", string("/c"))]),
            ],
        })
        .await
        .expect("push clicks")
        .into_inner();
    assert_eq!((clicks.applied, clicks.stale), (3, 0));

    let users = ["u1", "u404", "u3", "u2"];

    // Groups with a feature subset and a time series bounded by top_n.
    let grpc_resp = servers
        .grpc
        .get_features(pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".to_owned(),
                values: users.iter().map(|u| string(u)).collect(),
            }],
            groups: vec![
                pb::GroupRequest {
                    name: "profile".to_owned(),
                    features: vec!["tags".to_owned(), "name".to_owned(), "age".to_owned()],
                    ..Default::default()
                },
                pb::GroupRequest {
                    name: "clicks".to_owned(),
                    top_n: Some(2),
                    ..Default::default()
                },
            ],
            feature_service: None,
            request_data: Vec::new(),
        })
        .await
        .expect("grpc get features")
        .into_inner();
    let (code, http_resp) = http_post(
        &http,
        format!("{}/v1/features", servers.http),
        json!({
            "entities": {"user_id": users},
            "groups": [
                {"name": "profile", "features": ["tags", "name", "age"]},
                {"name": "clicks", "top_n": 2},
            ],
        }),
    )
    .await;
    assert_eq!(code, 200, "{http_resp}");

    let expected = vec![
        GroupView {
            name: "profile".to_owned(),
            kind: "attribute".to_owned(),
            features: vec!["tags".into(), "name".into(), "age".into()],
            rows: vec![
                row(
                    "present",
                    Some(t - 1000),
                    vec![json!(["ml", "rust"]), json!("Ada"), json!(36)],
                ),
                row("not_found", None, Vec::new()),
                row("expired", None, Vec::new()),
                row(
                    "present",
                    Some(t - 5000),
                    vec![json!(null), json!("Bo"), json!(null)],
                ),
            ],
        },
        GroupView {
            name: "clicks".to_owned(),
            kind: "timeseries".to_owned(),
            features: vec!["url".into()],
            rows: vec![
                series(vec![(t - 1000, "/c"), (t - 2000, "/b")]),
                series(Vec::new()),
                series(Vec::new()),
                series(Vec::new()),
            ],
        },
    ];
    assert_eq!(grpc_view(&grpc_resp), expected);
    assert_eq!(http_view(&http_resp), expected);
    assert_eq!(grpc_resp.entities.len(), 1);
    assert_eq!(grpc_resp.entities[0].values.len(), users.len());

    // A feature service: its own subsets, the default top_n.
    let grpc_resp = servers
        .grpc
        .get_features(pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".to_owned(),
                values: vec![string("u1"), string("u404")],
            }],
            groups: Vec::new(),
            feature_service: Some("ranking".to_owned()),
            request_data: Vec::new(),
        })
        .await
        .expect("grpc get feature service")
        .into_inner();
    let (code, http_resp) = http_post(
        &http,
        format!("{}/v1/features", servers.http),
        json!({"entities": {"user_id": ["u1", "u404"]}, "feature_service": "ranking"}),
    )
    .await;
    assert_eq!(code, 200, "{http_resp}");
    let expected = vec![
        GroupView {
            name: "profile".to_owned(),
            kind: "attribute".to_owned(),
            features: vec!["age".into()],
            rows: vec![
                row("present", Some(t - 1000), vec![json!(36)]),
                row("not_found", None, Vec::new()),
            ],
        },
        GroupView {
            name: "clicks".to_owned(),
            kind: "timeseries".to_owned(),
            features: vec!["url".into()],
            rows: vec![
                series(vec![(t - 1000, "/c"), (t - 2000, "/b"), (t - 3000, "/a")]),
                series(Vec::new()),
            ],
        },
    ];
    assert_eq!(grpc_view(&grpc_resp), expected);
    assert_eq!(http_view(&http_resp), expected);

    // An on-demand group over both, with request data: a value per feature, each with its
    // status, and the error of the one that failed (u1 is 36: a division by zero).
    let boost = pb::EntityColumn {
        name: "boost".to_owned(),
        values: vec![int(1), int(2), int(3)],
    };
    let grpc_resp = servers
        .grpc
        .get_features(pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".to_owned(),
                values: vec![string("u1"), string("u404"), string("u2")],
            }],
            groups: vec![pb::GroupRequest {
                name: "signals".to_owned(),
                ..Default::default()
            }],
            feature_service: None,
            request_data: vec![boost],
        })
        .await
        .expect("grpc get on-demand features")
        .into_inner();
    let (code, http_resp) = http_post(
        &http,
        format!("{}/v1/features", servers.http),
        json!({
            "entities": {"user_id": ["u1", "u404", "u2"]},
            "request_data": {"boost": [1, 2, 3]},
            "groups": ["signals"],
        }),
    )
    .await;
    assert_eq!(code, 200, "{http_resp}");
    let expected = vec![GroupView {
        name: "signals".to_owned(),
        kind: "on_demand".to_owned(),
        features: vec![
            "boosted_age".into(),
            "latest_url".into(),
            "per_year_over_36".into(),
        ],
        rows: vec![
            computed(
                vec![json!(37), json!("/c"), json!(null)],
                &["present", "present", "error"],
                &["", "", "Divide by zero error"],
            ),
            computed(
                vec![json!(null), json!(null), json!(null)],
                &["not_found", "not_found", "not_found"],
                &[],
            ),
            computed(
                vec![json!(null), json!(null), json!(null)],
                &["not_found", "not_found", "not_found"],
                &[],
            ),
        ],
    }];
    assert_eq!(grpc_view(&grpc_resp), expected);
    assert_eq!(http_view(&http_resp), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_group_is_not_found_naming_it() {
    let mut servers = start().await;
    let err = servers
        .grpc
        .get_features(pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".to_owned(),
                values: vec![string("u1")],
            }],
            groups: vec![pb::GroupRequest {
                name: "nope".to_owned(),
                ..Default::default()
            }],
            feature_service: None,
            request_data: Vec::new(),
        })
        .await
        .expect_err("an unknown group is an error");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert_eq!(
        err.message(),
        "unknown feature group `nope`; known groups: clicks, profile, signals"
    );

    let (code, body) = http_post(
        &reqwest::Client::new(),
        format!("{}/v1/features", servers.http),
        json!({"entities": {"user_id": ["u1"]}, "groups": ["nope"]}),
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert_eq!(body["error"]["message"], json!(err.message()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pushed_values_are_invalid_arguments_naming_the_feature() {
    let mut servers = start().await;
    let err = servers
        .grpc
        .push(pb::PushRequest {
            group: "profile".to_owned(),
            records: vec![record("u1", now_ms(), vec![("age", string("36"))])],
        })
        .await
        .expect_err("a string is not an int64");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("records[0].features.age"),
        "{}",
        err.message()
    );
}

fn users(n: usize) -> pb::EntityColumn {
    pb::EntityColumn {
        name: "user_id".to_owned(),
        values: (0..n).map(|i| string(&format!("u{i}"))).collect(),
    }
}

/// The error of a read that must fail; an answer is summed up, not printed whole.
fn refused(
    result: Result<tonic::Response<pb::GetFeaturesResponse>, tonic::Status>,
) -> tonic::Status {
    match result {
        Err(status) => status,
        Ok(resp) => {
            let resp = resp.into_inner();
            let records: usize = resp
                .results
                .iter()
                .flat_map(|g| &g.rows)
                .map(|r| r.records.len())
                .sum();
            panic!(
                "answered {} groups with {records} records in all",
                resp.results.len()
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amplifying_read_is_refused_over_grpc_naming_the_ceiling() {
    // `clicks` has one feature: 1000 rows x top_n 1000 is ten times this.
    let mut servers = start_with(Limits {
        deadline: Duration::from_secs(30),
        max_request_cost: 100_000,
        ..Limits::default()
    })
    .await;
    let clicks = pb::GroupRequest {
        name: "clicks".to_owned(),
        top_n: Some(1000),
        ..Default::default()
    };
    let err = refused(
        servers
            .grpc
            .get_features(pb::GetFeaturesRequest {
                entities: vec![users(1000)],
                groups: vec![clicks; 300],
                feature_service: None,
                request_data: Vec::new(),
            })
            .await,
    );
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(
        err.message().contains("server.max_request_cost")
            && err.message().contains("= 1000000 feature values")
            && err.message().contains("ceiling of 100000 "),
        "{}",
        err.message()
    );
}

/// A deadline of zero leaves no time for any read that cannot finish at once: a large read
/// (more records than the store reads in one go) must be stopped, not finished and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_read_stops_at_its_deadline() {
    let mut servers = start_with(Limits {
        deadline: Duration::ZERO,
        ..Limits::default()
    })
    .await;
    let t = now_ms();
    for user in 0..100 {
        let records = (0..50)
            .map(|i| {
                record(
                    &format!("u{user}"),
                    t - 1000 * i,
                    vec![("url", string("/x"))],
                )
            })
            .collect();
        servers
            .grpc
            .push(pb::PushRequest {
                group: "clicks".to_owned(),
                records,
            })
            .await
            .expect("push clicks");
    }
    let err = refused(
        servers
            .grpc
            .get_features(pb::GetFeaturesRequest {
                entities: vec![users(100)],
                groups: vec![pb::GroupRequest {
                    name: "clicks".to_owned(),
                    top_n: Some(100),
                    ..Default::default()
                }],
                feature_service: None,
                request_data: Vec::new(),
            })
            .await,
    );
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_event_times_no_store_can_hold_are_invalid_arguments_naming_the_limit() {
    let mut servers = start().await;
    let huge = "k".repeat(70_000);
    let err = servers
        .grpc
        .get_features(pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".to_owned(),
                values: vec![string(&huge)],
            }],
            groups: vec![pb::GroupRequest {
                name: "profile".to_owned(),
                ..Default::default()
            }],
            feature_service: None,
            request_data: Vec::new(),
        })
        .await
        .expect_err("the key is over the limit");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .contains("is 70000 bytes, over the limit of 1024 bytes"),
        "{}",
        err.message()
    );
    let good = record("u1", now_ms(), vec![("age", int(36))]);
    for (bad, expected) in [
        (
            record(&huge, now_ms(), vec![("age", int(36))]),
            "over the limit of 1024 bytes",
        ),
        (
            record("nul\0", now_ms(), vec![("age", int(36))]),
            "control character",
        ),
        (
            record("u2", i64::MAX, vec![("age", int(36))]),
            "records[1].event_time: 9223372036854775807 is outside the accepted event times",
        ),
    ] {
        let err = servers
            .grpc
            .push(pb::PushRequest {
                group: "profile".to_owned(),
                records: vec![good.clone(), bad],
            })
            .await
            .expect_err("the second record is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(expected), "{}", err.message());
        assert!(err.message().starts_with("records[1]"), "{}", err.message());
    }
}
