//! A node on Redis servers that speak only TLS, with certificates the test setup generates
//! (`scripts/tls.sh`): records pushed over HTTP land in the Redis store and the Redis tier
//! (standalone and cluster) and are served back; a wrong CA and a missing client certificate
//! are refused, naming what is wrong.
//!
//! The servers: `CELLAR_TEST_REDIS_TLS` (client certificates optional),
//! `CELLAR_TEST_REDIS_MTLS` (client certificates required), `CELLAR_TEST_REDIS_TLS_CLUSTER`
//! (three masters, comma-separated), all signed by the CA in `CELLAR_TEST_TLS_DIR`, which also
//! holds the client certificate and a second, unrelated CA. Ignored by a plain `cargo test`;
//! run with `--include-ignored` without the variables, they fail.

mod common;

use std::net::SocketAddr;

use cellar::config::{Config, StoreBackend};
use cellar::node::Node;
use cellar::{quickstart, repo};
use cellar_store_redis::RedisTls;
use serde_json::{json, Value};
use tempfile::TempDir;

fn tls_file(name: &str) -> String {
    let dir = common::service_address("CELLAR_TEST_TLS_DIR", "the test certificates");
    format!("{dir}/{name}")
}

/// The test CA and client certificate.
fn client_tls() -> RedisTls {
    RedisTls {
        ca_file: tls_file("ca.crt"),
        cert_file: tls_file("client.crt"),
        key_file: tls_file("client.key"),
    }
}

fn random_prefix() -> String {
    format!("cellar-tls-test-{:016x}:", rand::random::<u64>())
}

struct Server {
    base: String,
    client: reqwest::Client,
    _dir: TempDir,
}

/// A config on the example repo in a fresh directory, every group cached in the remote tier.
fn config(dir: &TempDir) -> Config {
    let config = Config {
        data_dir: dir.path().join("data"),
        repo: dir.path().join("repo"),
        ..Config::default()
    };
    quickstart::write_example_repo(&config.repo).unwrap();
    for entry in std::fs::read_dir(&config.repo).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("tiers: [local]", "tiers: [local, remote]"),
        )
        .unwrap();
    }
    config
}

/// Opens a node on `config`, the example repo applied.
async fn open(config: Config) -> anyhow::Result<Node> {
    let registry = cellar_registry::Registry::open(&config.registry_url()).await?;
    registry.apply(&repo::load_repo(&config.repo)?).await?;
    Node::open(config).await
}

impl Server {
    async fn start(configure: impl FnOnce(&mut Config)) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(&dir);
        configure(&mut config);
        let node = open(config).await.unwrap_or_else(|e| panic!("{e:#}"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(node.serve(listener, None, std::future::pending()));
        Server {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
        resp.json().await.unwrap()
    }

    /// Pushes a profile of `user` and reads it back.
    async fn push_and_read(&self, user: &str) {
        let answer = self
            .post(
                "/v1/push",
                json!({"group": "user_profile", "records": [
                    {"entity": {"user_id": user}, "event_time": "2026-01-02T00:00:00Z",
                     "features": {"country": "KR", "age": 31}}]}),
            )
            .await;
        assert_eq!(answer, json!({"applied": 1, "stale": 0}));
        let body = self
            .post(
                "/v1/features",
                json!({"entities": {"user_id": [user]}, "groups": ["user_profile"]}),
            )
            .await;
        assert_eq!(
            body["results"][0]["rows"][0]["values"],
            json!(["KR", 31, null]),
            "{body}"
        );
    }
}

/// The keys under `prefix` on the standalone Redis at `url`, read over TLS.
async fn keys(url: &str, prefix: &str) -> Vec<String> {
    let client = cellar_store_redis::client(url, &client_tls(), "test", "").unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    keys
}

#[tokio::test]
#[ignore = "needs Redis with TLS (CELLAR_TEST_REDIS_MTLS); scripts/test.sh starts it"]
async fn the_redis_store_is_written_and_read_over_tls_with_a_client_certificate() {
    let url = common::service_address(
        "CELLAR_TEST_REDIS_MTLS",
        "Redis requiring client certificates",
    );
    let prefix = random_prefix();
    let s = Server::start(|c| {
        c.store.backend = StoreBackend::Redis;
        c.store.redis.url = url.clone();
        let tls = client_tls();
        c.store.redis.ca_file = tls.ca_file;
        c.store.redis.cert_file = tls.cert_file;
        c.store.redis.key_file = tls.key_file;
        c.store.redis.key_prefix = prefix.clone();
    })
    .await;
    s.push_and_read("u1").await;
    assert_eq!(
        keys(&url, &prefix).await,
        vec![format!("{prefix}a:user_profile#u1")]
    );
}

#[tokio::test]
#[ignore = "needs Redis with TLS (CELLAR_TEST_REDIS_TLS); scripts/test.sh starts it"]
async fn the_redis_tier_is_written_through_over_tls() {
    let url = common::service_address("CELLAR_TEST_REDIS_TLS", "Redis with TLS");
    let prefix = random_prefix();
    let s = Server::start(|c| {
        c.cache.remote_urls = vec![url.clone()];
        c.cache.remote_ca_file = tls_file("ca.crt");
        c.cache.remote_key_prefix = prefix.clone();
    })
    .await;
    s.push_and_read("u2").await;
    assert_eq!(
        keys(&url, &prefix).await,
        vec![format!("{prefix}user_profile#u2")]
    );
}

#[tokio::test]
#[ignore = "needs a Redis Cluster with TLS (CELLAR_TEST_REDIS_TLS_CLUSTER); scripts/test.sh starts it"]
async fn the_redis_tier_on_a_tls_cluster_is_written_through() {
    let urls: Vec<String> =
        common::service_address("CELLAR_TEST_REDIS_TLS_CLUSTER", "a Redis Cluster with TLS")
            .split(',')
            .map(str::to_owned)
            .collect();
    let prefix = random_prefix();
    let s = Server::start(|c| {
        c.cache.remote_urls = urls.clone();
        let tls = client_tls();
        c.cache.remote_ca_file = tls.ca_file;
        c.cache.remote_cert_file = tls.cert_file;
        c.cache.remote_key_file = tls.key_file;
        c.cache.remote_key_prefix = prefix.clone();
    })
    .await;
    s.push_and_read("u3").await;
    let key = format!("{prefix}user_profile#u3");
    let client = cellar_store_redis::cluster_client(&urls, &client_tls(), "test", "")
        .unwrap()
        .build()
        .unwrap();
    let mut conn = client
        .get_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists, "{key} was not written through to the cluster");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
#[ignore = "needs Redis with TLS (CELLAR_TEST_REDIS_TLS, CELLAR_TEST_REDIS_MTLS); scripts/test.sh starts them"]
async fn a_wrong_ca_or_a_missing_client_certificate_is_refused_with_the_reason() {
    let refused = |url: String, tls: RedisTls| async move {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(&dir);
        config.store.backend = StoreBackend::Redis;
        config.store.redis.url = url;
        config.store.redis.ca_file = tls.ca_file;
        config.store.redis.cert_file = tls.cert_file;
        config.store.redis.key_file = tls.key_file;
        match open(config).await {
            Ok(_) => panic!("the node connected"),
            Err(e) => format!("{e:#}"),
        }
    };
    let tls_url = common::service_address("CELLAR_TEST_REDIS_TLS", "Redis with TLS");
    let err = refused(
        tls_url.clone(),
        RedisTls {
            ca_file: tls_file("other-ca.crt"),
            ..RedisTls::default()
        },
    )
    .await;
    assert!(
        err.contains("store.redis") && err.contains("UnknownIssuer"),
        "{err}"
    );

    let mtls_url = common::service_address(
        "CELLAR_TEST_REDIS_MTLS",
        "Redis requiring client certificates",
    );
    let err = refused(
        mtls_url,
        RedisTls {
            ca_file: tls_file("ca.crt"),
            ..RedisTls::default()
        },
    )
    .await;
    assert!(err.contains("store.redis"), "{err}");

    let err = refused(
        tls_url.replace("rediss://", "redis://"),
        RedisTls {
            ca_file: tls_file("ca.crt"),
            ..RedisTls::default()
        },
    )
    .await;
    assert!(
        err.contains(
            "store.redis.ca_file: is a TLS setting, but store.redis.url is not a `rediss://` URL"
        ),
        "{err}"
    );
}
