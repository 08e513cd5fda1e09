//! Processes that write but do not serve (`cellar ingest`, `cellar worker`, jobs run by the
//! CLI) keep the Redis tier in line with their writes, so servers never read a copy older
//! than what they wrote. Needs Redis (`CELLAR_TEST_REDIS`, started by scripts/test.sh): ignored
//! by a plain `cargo test`, and failing with `--include-ignored` but without the variable.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cellar::config::Config;
use cellar_cache::{CacheMetrics, RemoteConfig, RemoteTier};
use cellar_spec::{EntityKey, ServingPolicy, Tier, Value, WriteStrategy};
use cellar_store::conformance::attribute_group;
use cellar_store::{Record, RecordReader, Write};

#[tokio::test]
#[ignore = "needs Redis (CELLAR_TEST_REDIS); scripts/test.sh starts it"]
async fn a_writer_that_does_not_serve_updates_the_copies_servers_read() {
    let url = common::service_address("CELLAR_TEST_REDIS", "Redis");
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    config.cache.remote_urls = vec![url.clone()];
    config.cache.remote_key_prefix = format!("cellar-writers:{:016x}:", rand::random::<u64>());
    let store = cellar::node::open_store(&config).await.unwrap();

    // A server's Redis tier, on the same Redis and store.
    let below: Arc<dyn RecordReader> = store.clone();
    let server = RemoteTier::new(
        RemoteConfig {
            urls: vec![url],
            key_prefix: config.cache.remote_key_prefix.clone(),
            timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            ..RemoteConfig::default()
        },
        below,
        CacheMetrics::default(),
    )
    .unwrap();
    let mut through = attribute_group("profile");
    through.serving = ServingPolicy {
        tiers: vec![Tier::Remote],
        write: WriteStrategy::Through,
        soft_ttl: Duration::from_secs(300),
        hard_ttl: Duration::from_secs(600),
        ..ServingPolicy::default()
    };
    let mut around = attribute_group("status");
    around.serving = ServingPolicy {
        write: WriteStrategy::Around,
        ..through.serving.clone()
    };

    let writer = cellar::node::write_path(&config, store, "ingest").unwrap();
    let user = EntityKey("u1".to_owned());
    let write = |at: i64| Write {
        entity: user.clone(),
        record: Record::new(at, vec![Value::String(format!("v{at}")), Value::Int64(at)]),
    };
    for group in [&through, &around] {
        writer.write(group, &[write(10)]).await.unwrap();
        // The server reads it, and its copy goes to Redis.
        let got = server
            .get_attributes(group, std::slice::from_ref(&user))
            .await
            .unwrap();
        assert_eq!(got[0].as_ref().map(|r| r.event_time), Some(10));
        server.drain().await;
        let hits = server.stats().hits;
        let got = server
            .get_attributes(group, std::slice::from_ref(&user))
            .await
            .unwrap();
        assert_eq!(server.stats().hits, hits + 1, "{} cached", group.name);
        assert_eq!(got[0].as_ref().map(|r| r.event_time), Some(10));

        // The writer's next write reaches the copy in Redis.
        writer.write(group, &[write(20)]).await.unwrap();
        let got = server
            .get_attributes(group, std::slice::from_ref(&user))
            .await
            .unwrap();
        assert_eq!(
            got[0].as_ref().map(|r| r.event_time),
            Some(20),
            "{}: the server read a copy older than the write",
            group.name
        );
    }
}
