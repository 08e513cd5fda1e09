//! Authentication and authorization of a serving node, over HTTP (Cellar's API, the
//! Feast-compatible routes, jobs, events, dead letters, metrics) and gRPC: API keys and OIDC
//! tokens checked against a JWKS this test serves (and rotates), roles closed by default, the
//! audit log, TLS with a certificate reloaded on renewal, and the refusal to expose a server
//! without authentication.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cellar::config::Config;
use cellar::node::Node;
use cellar::{quickstart, repo};
use cellar_auth::config::{ApiKeyConfig, GrantConfig, RoleConfig};
use cellar_auth::Action;
use cellar_serving::grpc::pb;
use cellar_serving::grpc::pb::feature_serving_client::FeatureServingClient;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tempfile::TempDir;

const ISSUER_AUDIENCE: &str = "cellar";

/// An OIDC issuer's signing key: a P-256 key pair, its `kid`, and its JWK.
struct SigningKey {
    kid: String,
    key: rcgen::KeyPair,
}

impl SigningKey {
    fn new(kid: &str) -> SigningKey {
        SigningKey {
            kid: kid.to_owned(),
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    fn jwk(&self) -> Value {
        // The raw public key is the uncompressed point: 0x04, x, y.
        let raw = self.key.public_key_raw();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig", "alg": "ES256",
               "x": b64(&raw[1..33]), "y": b64(&raw[33..65])})
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Signed by this key, but naming `kid`.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let key = EncodingKey::from_ec_der(&self.key.serialize_der());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

/// A JWKS endpoint whose key set the test can change.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
}

impl Issuer {
    async fn start(keys: Vec<Value>) -> Issuer {
        let keys = Arc::new(Mutex::new(keys));
        let shared = keys.clone();
        let app = axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                let keys = shared.lock().unwrap().clone();
                async move { axum::Json(json!({ "keys": keys })) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Issuer {
            url: format!("http://{addr}"),
            keys,
        }
    }

    fn claims(&self, sub: &str, roles: &[&str], expires_in: i64) -> Value {
        let now = cellar_spec::time::now_ms() / 1000;
        json!({"iss": self.url, "aud": ISSUER_AUDIENCE, "sub": sub, "roles": roles,
               "iat": now, "exp": now + expires_in})
    }
}

fn role(name: &str, grants: &[(&[Action], &[&str])]) -> RoleConfig {
    RoleConfig {
        name: name.into(),
        grants: grants
            .iter()
            .map(|(actions, resources)| GrantConfig {
                actions: actions.to_vec(),
                resources: resources.iter().map(|r| r.to_string()).collect(),
            })
            .collect(),
    }
}

/// An API key of `roles`, and its config entry.
fn api_key(name: &str, roles: &[&str]) -> (String, ApiKeyConfig) {
    let (key, sha256) = cellar_auth::keys::new_key();
    (
        key,
        ApiKeyConfig {
            name: name.into(),
            sha256,
            roles: roles.iter().map(|r| r.to_string()).collect(),
        },
    )
}

struct Server {
    base: String,
    grpc: String,
    client: reqwest::Client,
    dir: TempDir,
    /// The key of a reader of `user_*` groups only.
    reader: String,
    /// The key of a writer and operator of everything.
    admin: String,
}

impl Server {
    async fn start(issuer: Option<&Issuer>) -> Server {
        Self::start_with(issuer, |_| {}).await
    }

    async fn start_with(issuer: Option<&Issuer>, configure: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            repo: dir.path().join("repo"),
            ..Config::default()
        };
        let (reader, reader_entry) = api_key("ranker", &["reader"]);
        let (admin, admin_entry) = api_key("ops", &["admin"]);
        config.auth.enabled = true;
        config.auth.api_keys = vec![reader_entry, admin_entry];
        config.auth.roles = vec![
            role(
                "reader",
                &[(&[Action::ReadFeatures], &["group:user_*", "service:none"])],
            ),
            role(
                "admin",
                &[(
                    &[
                        Action::ReadFeatures,
                        Action::WriteFeatures,
                        Action::PublishEvents,
                        Action::OperateJobs,
                        Action::OperateDeadLetters,
                        Action::ReadMetrics,
                    ],
                    &["*"],
                )],
            ),
        ];
        if let Some(issuer) = issuer {
            config.auth.oidc.issuer = issuer.url.clone();
            config.auth.oidc.audience = ISSUER_AUDIENCE.into();
            config.auth.oidc.jwks_url = format!("{}/jwks", issuer.url);
            config.auth.oidc.min_refetch_secs = 0;
            config.auth.oidc.leeway_secs = 0;
        }
        configure(&mut config);
        quickstart::write_example_repo(&config.repo).unwrap();
        let registry = cellar_registry::Registry::open(&config.registry_url())
            .await
            .unwrap();
        registry
            .apply(&repo::load_repo(&config.repo).unwrap())
            .await
            .unwrap();
        let node = Node::open(config).await.unwrap();
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = http.local_addr().unwrap();
        let grpc_addr: SocketAddr = grpc.local_addr().unwrap();
        tokio::spawn(node.serve(http, Some(grpc), std::future::pending()));
        Server {
            base: format!("http://{addr}"),
            grpc: format!("http://{grpc_addr}"),
            client: reqwest::Client::new(),
            dir,
            reader,
            admin,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "GET" => self.client.get(url),
            _ => self.client.post(url).json(&body),
        };
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn read(&self, token: Option<&str>, group: &str) -> (u16, Value) {
        self.call(
            "POST",
            "/v1/features",
            token,
            json!({"entities": {"user_id": ["u1"]}, "groups": [group]}),
        )
        .await
    }

    async fn grpc_read(&self, token: Option<&str>, group: &str) -> Result<(), tonic::Status> {
        let mut client = FeatureServingClient::connect(self.grpc.clone())
            .await
            .unwrap();
        let mut request = tonic::Request::new(pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".into(),
                values: vec![pb::Value {
                    kind: Some(pb::value::Kind::StringValue("u1".into())),
                }],
            }],
            groups: vec![pb::GroupRequest {
                name: group.into(),
                ..Default::default()
            }],
            feature_service: None,
            request_data: Vec::new(),
        });
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        client.get_features(request).await.map(|_| ())
    }
}

/// Every route that does something, as (method, path, body).
fn protected_routes() -> Vec<(&'static str, &'static str, Value)> {
    let entities = json!({"user_id": ["u1"]});
    vec![
        (
            "POST",
            "/v1/features",
            json!({"entities": entities, "groups": ["user_profile"]}),
        ),
        (
            "POST",
            "/v1/push",
            json!({"group": "user_profile", "records": [{"entity": {"user_id": "u1"}, "features": {"age": 1}}]}),
        ),
        (
            "POST",
            "/get-online-features",
            json!({"entities": entities, "features": ["user_profile:age"]}),
        ),
        (
            "POST",
            "/push",
            json!({"push_source_name": "user_profile", "df": {"user_id": ["u1"], "age": [1]}}),
        ),
        (
            "POST",
            "/write-to-online-store",
            json!({"feature_view_name": "user_profile", "df": {"user_id": ["u1"], "age": [1]}}),
        ),
        (
            "POST",
            "/v1/events",
            json!({"topic": "clicks", "events": [{"user_id": "u1"}]}),
        ),
        ("GET", "/v1/dead-letters", Value::Null),
        ("POST", "/v1/dead-letters/redrive", json!({})),
        ("GET", "/v1/jobs", Value::Null),
        ("POST", "/v1/jobs", json!({"ingestion": "anything"})),
        ("GET", "/v1/jobs/1", Value::Null),
        ("POST", "/v1/jobs/1/retry", Value::Null),
        ("POST", "/v1/jobs/1/cancel", Value::Null),
        (
            "POST",
            "/materialize",
            json!({"start_ts": "2026-01-01T00:00:00", "end_ts": "2026-01-02T00:00:00"}),
        ),
        (
            "POST",
            "/materialize-incremental",
            json!({"end_ts": "2026-01-02T00:00:00"}),
        ),
        ("GET", "/metrics", Value::Null),
        ("GET", "/v1/training-sets", Value::Null),
        (
            "POST",
            "/v1/training-sets?features=user_profile:age",
            Value::Null,
        ),
        ("GET", "/v1/training-sets/1", Value::Null),
        ("GET", "/v1/training-sets/1/output", Value::Null),
        ("POST", "/v1/training-sets/1/cancel", Value::Null),
    ]
}

#[tokio::test]
async fn a_training_set_needs_read_permission_and_is_seen_only_by_who_submitted_it() {
    let s = Server::start(None).await;
    let submit = |token: &str, query: &str| {
        s.client
            .post(format!("{}/v1/training-sets?{query}", s.base))
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body("user_id,event_timestamp\nu1,2026-01-01T00:00:00Z\n")
            .send()
    };
    // The reader may read user_* groups only, and no service of the quickstart.
    for query in [
        "service=home_feed_ranker",
        "features=article_stats:ctr_7d",
        "features=user_profile:age,article_stats:*",
    ] {
        let resp = submit(&s.reader, query).await.unwrap();
        assert_eq!(resp.status(), 403, "{query}");
    }
    let resp = submit(&s.reader, "features=user_profile:age")
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let path = format!("/v1/training-sets/{id}");
    let (status, job) = s.call("GET", &path, Some(&s.reader), Value::Null).await;
    assert_eq!(status, 200, "{job}");
    // The admin may read every group, but the spine is the reader's.
    let (status, answer) = s.call("GET", &path, Some(&s.admin), Value::Null).await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("submitted by another caller"),
        "{answer}"
    );
    let (_, listed) = s
        .call("GET", "/v1/training-sets", Some(&s.admin), Value::Null)
        .await;
    assert_eq!(listed["training_sets"], json!([]), "{listed}");
    let (_, listed) = s
        .call("GET", "/v1/training-sets", Some(&s.reader), Value::Null)
        .await;
    assert_eq!(listed["training_sets"][0]["id"], id, "{listed}");
    assert_eq!(listed["training_sets"][0]["submitted_by"], "ranker");
}

#[tokio::test]
async fn without_credentials_every_route_but_health_is_401() {
    let s = Server::start(None).await;
    for (method, path, body) in protected_routes() {
        for token in [None, Some("cellar_not-a-key"), Some("")] {
            let (status, answer) = s.call(method, path, token, body.clone()).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert_eq!(answer["error"]["kind"], "unauthenticated", "{answer}");
        }
    }
    let (status, _) = s.call("GET", "/health", None, Value::Null).await;
    assert_eq!(status, 200);
    let err = s.grpc_read(None, "user_profile").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = s
        .grpc_read(Some("cellar_wrong"), "user_profile")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
}

/// The web console's pages, each of which a browser without credentials is sent to sign in.
const CONSOLE_PAGES: [&str; 11] = [
    "/ui",
    "/ui/groups/user_profile",
    "/ui/groups/user_profile?user_id=u1,u2",
    "/ui/stream",
    "/ui/stream/redrive",
    "/ui/jobs",
    "/ui/jobs?state=failed",
    "/ui/jobs/1",
    "/jobs/1",
    "/ui/registry",
    "/ui/backfill?ingestion=anything",
];

#[tokio::test]
async fn the_console_takes_its_cookie_on_its_own_pages_and_from_its_own_origin_only() {
    let s = Server::start(None).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: &str, cookie: Option<&str>| {
        let mut req = browser.get(format!("{}{path}", s.base));
        if let Some(key) = cookie {
            req = req.header("cookie", format!("cellar_console={key}"));
        }
        req.send()
    };
    let post = |path: &str, cookie: Option<&str>, origin: Option<&str>| {
        let mut req = browser
            .post(format!("{}{path}", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("ingestion=profile_import");
        if let Some(key) = cookie {
            req = req.header("cookie", format!("cellar_console={key}"));
        }
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req.send()
    };
    // Without a credential, or with a wrong one, a page sends the browser to sign in and back.
    for path in CONSOLE_PAGES {
        for cookie in [None, Some("cellar_not-a-key")] {
            let resp = get(path, cookie).await.unwrap();
            assert_eq!(resp.status(), 303, "{path} with {cookie:?}");
            let location = resp.headers()["location"].to_str().unwrap().to_owned();
            let next: String = form_urlencoded::byte_serialize(path.as_bytes()).collect();
            assert_eq!(location, format!("/ui/login?next={next}"), "{path}");
        }
    }
    // The sign-in form and the stylesheet need none; a wrong key is refused with its reason
    // and no cookie.
    assert_eq!(get("/ui/login", None).await.unwrap().status(), 200);
    assert_eq!(
        get("/ui/assets/console.css", None).await.unwrap().status(),
        200
    );
    let sign_in = |key: &str| {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("key", key)
            .append_pair("next", "/ui/jobs")
            .finish();
        browser
            .post(format!("{}/ui/login", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let refused = sign_in("cellar_not-a-key").await.unwrap();
    assert_eq!(refused.status(), 303);
    assert!(refused.headers().get("set-cookie").is_none());
    let location = refused.headers()["location"].to_str().unwrap();
    assert!(location.contains("error=unknown+API+key"), "{location}");
    assert_eq!(
        sign_in("a key; with=quotes")
            .await
            .unwrap()
            .headers()
            .get("set-cookie"),
        None
    );
    // Another site's form cannot sign a browser in.
    let cross = browser
        .post(format!("{}/ui/login", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .body(format!("key={}", s.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    assert!(cross.headers().get("set-cookie").is_none());
    let signed_in = sign_in(&s.admin).await.unwrap();
    assert_eq!(signed_in.headers()["location"], "/ui/jobs");
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
    assert_eq!(
        cookie,
        format!(
            "cellar_console={}; Path=/; HttpOnly; SameSite=Strict",
            s.admin
        )
    );
    // Signed in with a key that may see the console: every page, with a policy that lets in
    // nothing from elsewhere and no script at all.
    for path in CONSOLE_PAGES {
        let resp = get(path, Some(&s.admin)).await.unwrap();
        let status = resp.status().as_u16();
        // Job 1 does not exist: its pages say so.
        let expected = if path.ends_with("/1") { 404 } else { 200 };
        assert_eq!(status, expected, "{path}");
        let policy = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            policy.starts_with("default-src 'none'; style-src 'self'"),
            "{policy}"
        );
    }
    // A key without read_metrics sees no page.
    let resp = get("/ui", Some(&s.reader)).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("read_metrics"));
    // The cookie is not a credential of the API.
    let resp = get("/v1/jobs", Some(&s.admin)).await.unwrap();
    assert_eq!(resp.status(), 401);
    // A change made with the cookie must come from the console's own origin.
    let own = s.base.clone();
    for origin in [None, Some("http://evil.example"), Some("null")] {
        let resp = post("/ui/backfill", Some(&s.admin), origin).await.unwrap();
        assert_eq!(resp.status(), 401, "origin {origin:?}");
    }
    let resp = post("/ui/backfill", Some(&s.reader), Some(&own))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = post("/ui/stream/redrive", Some(&s.reader), Some(&own))
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = post("/ui/jobs/1/retry", None, Some(&own)).await.unwrap();
    assert_eq!(resp.status(), 401);
    // The operator's post goes through, and the refusals and the action are in the audit log.
    let resp = post("/ui/stream/redrive", Some(&s.admin), Some(&own))
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    let location = resp.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("/ui/stream?notice=Re-drove+0"),
        "{location}"
    );
    // The audit log is written in the background.
    let mut audit = String::new();
    for _ in 0..50 {
        audit = std::fs::read_to_string(s.dir.path().join("data").join("audit.log"))
            .unwrap_or_default();
        if audit.contains("ok: console re-drive") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(audit.contains("denied: console re-drive"), "{audit}");
    assert!(audit.contains("ok: console re-drive"), "{audit}");
    assert!(audit.contains("ok: signed in"), "{audit}");
}

#[tokio::test]
async fn a_reader_of_some_groups_is_refused_everything_else() {
    let s = Server::start(None).await;
    let reader = Some(s.reader.as_str());
    let (status, answer) = s.read(reader, "user_profile").await;
    assert_eq!(status, 200, "{answer}");
    // Another group, a feature service not granted, and every write and operation: 403.
    let (status, answer) = s.read(reader, "article_stats").await;
    assert_eq!(status, 403, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`ranker`")
            && message.contains("read_features")
            && message.contains("`article_stats`"),
        "{message}"
    );
    // A group that does not exist is refused the same way: no probing for names.
    let (status, _) = s.read(reader, "no_such_group").await;
    assert_eq!(status, 403);
    let (status, _) = s
        .call(
            "POST",
            "/v1/features",
            reader,
            json!({"entities": {"user_id": ["u1"]}, "feature_service": "home_feed_ranker"}),
        )
        .await;
    assert_eq!(status, 403);
    for (method, path, body) in protected_routes().into_iter().skip(1) {
        // Training sets answer a reader for its own jobs: tested on their own below.
        if path == "/get-online-features" || path.starts_with("/v1/training-sets") {
            continue;
        }
        let (status, answer) = s.call(method, path, reader, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    // Feast's read of a granted group passes; of another, 403.
    let (status, answer) = s
        .call(
            "POST",
            "/get-online-features",
            reader,
            json!({"entities": {"user_id": ["u1"]}, "features": ["user_profile:age"]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = s
        .call(
            "POST",
            "/get-online-features",
            reader,
            json!({"entities": {"article_id": ["a1"]}, "features": ["article_stats:ctr_7d"]}),
        )
        .await;
    assert_eq!(status, 403);
    // gRPC: the same grants.
    s.grpc_read(reader, "user_profile").await.unwrap();
    let err = s.grpc_read(reader, "article_stats").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
}

#[tokio::test]
async fn writes_and_operations_are_granted_and_audited() {
    let s = Server::start(None).await;
    let admin = Some(s.admin.as_str());
    let (status, answer) = s
        .call(
            "POST",
            "/v1/push",
            admin,
            json!({"group": "user_profile", "records": [{"entity": {"user_id": "u1"}, "features": {"age": 41}}]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = s.read(admin, "user_profile").await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = s.call("GET", "/metrics", admin, Value::Null).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = s
        .call("POST", "/v1/dead-letters/redrive", admin, json!({}))
        .await;
    assert_eq!(status, 200, "{answer}");
    // A refused push is audited too.
    let (status, _) = s
        .call(
            "POST",
            "/v1/push",
            Some(&s.reader),
            json!({"group": "user_profile", "records": [{"entity": {"user_id": "u1"}, "features": {"age": 1}}]}),
        )
        .await;
    assert_eq!(status, 403);

    let log = s.dir.path().join("data").join("audit.log");
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect();
        if lines.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let find = |who: &str, action: &str| {
        lines
            .iter()
            .find(|l| l["who"] == who && l["action"] == action)
            .unwrap_or_else(|| panic!("no {who} {action} in {lines:?}"))
            .clone()
    };
    let push = find("ops", "write_features");
    assert_eq!(push["resource"], "group:user_profile");
    assert_eq!(push["records"], 1);
    assert_eq!(push["outcome"], "ok");
    assert_eq!(push["via"], "api_key");
    assert!(push["time"].as_str().unwrap().starts_with("20"), "{push}");
    assert_eq!(
        find("ops", "operate_dead_letters")["outcome"],
        "ok: redrive"
    );
    assert_eq!(find("ranker", "write_features")["outcome"], "denied");
    // The log holds names, never a key.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&s.admin) && !text.contains(&s.reader));
}

#[tokio::test]
async fn oidc_tokens_are_checked_and_a_rotated_key_is_picked_up() {
    let first = SigningKey::new("k1");
    let issuer = Issuer::start(vec![first.jwk()]).await;
    let s = Server::start(Some(&issuer)).await;

    let token = first.sign(&issuer.claims("svc-ranker", &["reader"], 300));
    let (status, answer) = s.read(Some(&token), "user_profile").await;
    assert_eq!(status, 200, "{answer}");
    let (status, _) = s.read(Some(&token), "article_stats").await;
    assert_eq!(status, 403);
    s.grpc_read(Some(&token), "user_profile").await.unwrap();

    let refused = |what: &str, token: String| (what.to_owned(), token);
    let mut wrong_audience = issuer.claims("svc", &["reader"], 300);
    wrong_audience["aud"] = json!("another-service");
    let mut wrong_issuer = issuer.claims("svc", &["reader"], 300);
    wrong_issuer["iss"] = json!("https://evil.example");
    let stranger = SigningKey::new("k1");
    let hs256 = jsonwebtoken::encode(
        &Header {
            kid: Some("k1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &issuer.claims("svc", &["admin"], 300),
        &EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    for (what, token) in [
        refused(
            "expired",
            first.sign(&issuer.claims("svc", &["reader"], -60)),
        ),
        refused(
            "signed by another key under the same kid",
            stranger.sign(&issuer.claims("svc", &["reader"], 300)),
        ),
        refused("wrong audience", first.sign(&wrong_audience)),
        refused("wrong issuer", first.sign(&wrong_issuer)),
        refused(
            "an unknown kid",
            stranger.sign_as("k9", &issuer.claims("svc", &["reader"], 300)),
        ),
        refused("HS256 with a guessed secret", hs256),
        refused("garbage", "a.b.c".into()),
    ] {
        let (status, answer) = s.read(Some(&token), "user_profile").await;
        assert_eq!(status, 401, "{what}: {answer}");
        let err = s.grpc_read(Some(&token), "user_profile").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{what}: {err}");
    }

    // The issuer rotates to a new key: tokens it signs pass without a restart, and the
    // retired key's tokens stop passing once the set is fetched again.
    let second = SigningKey::new("k2");
    *issuer.keys.lock().unwrap() = vec![second.jwk()];
    let token = second.sign(&issuer.claims("svc-ranker", &["reader"], 300));
    let (status, answer) = s.read(Some(&token), "user_profile").await;
    assert_eq!(status, 200, "{answer}");
    let old = first.sign(&issuer.claims("svc-ranker", &["reader"], 300));
    let (status, answer) = s.read(Some(&old), "user_profile").await;
    assert_eq!(status, 401, "{answer}");
}

#[tokio::test]
async fn operator_routes_can_have_a_listener_of_their_own() {
    let port = common::free_port();
    let s = Server::start_with(None, |c| {
        c.server.admin_listen = format!("127.0.0.1:{port}")
    })
    .await;
    let admin_key = s.admin.clone();
    let admin = Some(admin_key.as_str());
    // Not on the serving listener any more...
    for path in ["/v1/jobs", "/v1/dead-letters", "/ui", "/ui/login"] {
        let (status, answer) = s.call("GET", path, admin, Value::Null).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
    // ...but on the admin listener, behind the same authentication and roles.
    let on_admin = Server {
        base: format!("http://127.0.0.1:{port}"),
        ..s
    };
    let mut answered = false;
    for _ in 0..50 {
        if on_admin
            .client
            .get(format!("{}/health", on_admin.base))
            .send()
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the admin listener does not answer");
    for path in ["/v1/jobs", "/v1/dead-letters"] {
        let (status, answer) = on_admin.call("GET", path, admin, Value::Null).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let (status, _) = on_admin.call("GET", path, None, Value::Null).await;
        assert_eq!(status, 401, "{path}");
        let (status, _) = on_admin
            .call("GET", path, Some(&on_admin.reader), Value::Null)
            .await;
        assert_eq!(status, 403, "{path}");
    }
    // The console is there too.
    let (status, page) = on_admin.call("GET", "/ui", admin, Value::Null).await;
    assert_eq!(status, 200);
    assert!(page.as_str().unwrap().contains("Feature groups"), "{page}");
    // Features are not served there.
    let (status, _) = on_admin.read(admin, "user_profile").await;
    assert_eq!(status, 404);
}

/// A CA and a certificate for 127.0.0.1 it signed, as PEM: (ca, cert, key).
fn certificate() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn tls_serves_http_and_grpc_and_a_renewed_certificate_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificate();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        repo: dir.path().join("repo"),
        ..Config::default()
    };
    config.server.tls.cert_file = cert_file.display().to_string();
    config.server.tls.key_file = key_file.display().to_string();
    config.server.tls.reload_secs = 1;
    quickstart::write_example_repo(&config.repo).unwrap();
    let registry = cellar_registry::Registry::open(&config.registry_url())
        .await
        .unwrap();
    registry
        .apply(&repo::load_repo(&config.repo).unwrap())
        .await
        .unwrap();
    let node = Node::open(config).await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, grpc_addr) = (http.local_addr().unwrap(), grpc.local_addr().unwrap());
    tokio::spawn(node.serve(http, Some(grpc), std::future::pending()));

    let trusting = |ca: &str| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .build()
            .unwrap()
    };
    let url = format!("https://{addr}/v1/features");
    let body = json!({"entities": {"user_id": ["u1"]}, "groups": ["user_profile"]});
    let resp = trusting(&ca).post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Plain HTTP on a TLS port gets no answer.
    let plain = reqwest::Client::new()
        .post(format!("http://{addr}/v1/features"))
        .json(&body)
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));

    // gRPC over TLS, checked against the CA.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca))
        .domain_name("127.0.0.1");
    let channel = tonic::transport::Channel::from_shared(format!("https://{grpc_addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    FeatureServingClient::new(channel)
        .get_features(pb::GetFeaturesRequest {
            entities: vec![pb::EntityColumn {
                name: "user_id".into(),
                values: vec![pb::Value {
                    kind: Some(pb::value::Kind::StringValue("u1".into())),
                }],
            }],
            groups: vec![pb::GroupRequest {
                name: "user_profile".into(),
                ..Default::default()
            }],
            feature_service: None,
            request_data: Vec::new(),
        })
        .await
        .unwrap();

    // The certificate is renewed by another CA: new connections get the new one.
    let (new_ca, new_cert, new_key) = certificate();
    std::fs::write(&key_file, &new_key).unwrap();
    std::fs::write(&cert_file, &new_cert).unwrap();
    let mut renewed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Ok(resp) = trusting(&new_ca).post(&url).json(&body).send().await {
            assert_eq!(resp.status(), 200);
            renewed = true;
            break;
        }
    }
    assert!(
        renewed,
        "the renewed certificate was not served within 10 s"
    );
    assert!(trusting(&ca).post(&url).json(&body).send().await.is_err());
}

#[tokio::test]
async fn a_server_exposed_without_authentication_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        repo: dir.path().join("repo"),
        ..Config::default()
    };
    let node = Node::open(config.clone()).await.unwrap();
    let http = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let err = node
        .serve(http, None, std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("without authentication"), "{err}");
    // Said explicitly, it starts.
    config.auth.allow_unauthenticated = true;
    let node = Node::open(config).await.unwrap();
    let http = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = http.local_addr().unwrap().port();
    tokio::spawn(node.serve(http, None, std::future::pending()));
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/health")).await;
    assert_eq!(resp.unwrap().status(), 200);
}

// The CLI runs as a blocking child process while this runtime's other thread serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_its_token() {
    let s = Server::start(None).await;
    let get = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cellar"));
        cmd.args([
            "--data-dir",
            s.dir.path().join("cli").to_str().unwrap(),
            "get",
            "--server",
            &s.base,
            "-e",
            "user_id=u1",
            "-g",
            "user_profile",
            "--json",
        ])
        .env_remove("CELLAR_TOKEN");
        if let Some(token) = token {
            cmd.env("CELLAR_TOKEN", token);
        }
        cmd.output().unwrap()
    };
    let refused = get(None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("no credentials"),
        "{stderr}"
    );
    let answered = get(Some(&s.reader));
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    let answer: Value = serde_json::from_slice(&answered.stdout).unwrap();
    assert_eq!(answer["results"][0]["group"], "user_profile", "{answer}");
}
