//! What the integration tests share: the address of a service a test needs, a free port, and
//! a bucket of a test's own on the S3-compatible server.

// Each test file uses some of these.
#![allow(dead_code)]

/// The address of a service a test needs, from `var`. Such tests are ignored by a plain
/// `cargo test`; asked for (`--include-ignored`, as `scripts/test.sh` does) without their
/// service, they fail: passing would claim a test that never ran.
pub fn service_address(var: &str, service: &str) -> String {
    match std::env::var(var) {
        Ok(address) if !address.is_empty() => address,
        _ => panic!("{var} is not set: this test needs {service}; scripts/test.sh starts it"),
    }
}

#[path = "../../../../test-support/free_port.rs"]
mod port;

/// A loopback port for a server a test starts as a process (see `test-support/free_port.rs`).
pub fn free_port() -> u16 {
    port::free_port()
}

/// The S3-compatible server's keys (s3s-fs as `scripts/services.sh` starts it).
const S3_ACCESS_KEY: &str = "AK";
const S3_SECRET_KEY: &str = "SECRET";

/// A bucket of a test's own on the S3-compatible server at `CELLAR_TEST_S3`.
pub struct TestBucket {
    pub name: String,
    pub endpoint: String,
    pub store: std::sync::Arc<object_store::aws::AmazonS3>,
}

impl TestBucket {
    /// Creates a uniquely named bucket (object_store sends no CreateBucket: a presigned one).
    pub async fn create() -> TestBucket {
        use object_store::signer::Signer;
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let endpoint = service_address("CELLAR_TEST_S3", "an S3-compatible server");
        let name = format!(
            "cellar-test-{}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
            SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(true)
            .with_access_key_id(S3_ACCESS_KEY)
            .with_secret_access_key(S3_SECRET_KEY)
            .with_region("us-east-1")
            .with_bucket_name(&name)
            .build()
            .unwrap();
        let url = store
            .signed_url(
                reqwest::Method::PUT,
                &object_store::path::Path::from(""),
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap();
        let response = reqwest::Client::new()
            .put(url.as_str())
            .send()
            .await
            .unwrap_or_else(|e| panic!("CELLAR_TEST_S3={endpoint}: cannot create a bucket: {e}"));
        assert!(
            response.status().is_success(),
            "CELLAR_TEST_S3={endpoint}: cannot create a bucket: {}",
            response.status()
        );
        TestBucket {
            name,
            endpoint,
            store: std::sync::Arc::new(store),
        }
    }

    /// What a `cellar` process needs in its environment to reach the bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The history kept under `prefix` of the bucket, read with the test's own client.
    pub fn history(&self, prefix: &str) -> cellar_history::Storage {
        cellar_history::Storage::bucket(
            self.store.clone(),
            &format!("s3://{}/{prefix}", self.name),
            std::sync::Arc::new(|e| e.to_string()),
        )
    }
}
