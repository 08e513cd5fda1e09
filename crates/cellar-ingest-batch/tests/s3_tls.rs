//! Files in S3-compatible object storage read over HTTPS from an endpoint whose certificate a
//! private CA signed, trusted through `AWS_CA_BUNDLE`: `CELLAR_TEST_S3_TLS` (socat terminating
//! TLS in front of the server at `CELLAR_TEST_S3`, which takes the access key `AK` and the
//! secret key `SECRET` and through which the test fills its bucket) and the certificates in
//! `CELLAR_TEST_TLS_DIR` (`scripts/tls.sh` starts and makes them). Its own test binary: it sets
//! the AWS environment of the whole process. Ignored by a plain `cargo test`; run with
//! `--include-ignored` without the variables, it fails.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cellar_ingest_batch::{plan, BatchJob, LocalRunner};
use common::*;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ObjectStoreExt, PutPayload};

fn clicks_job(path: &str) -> Arc<BatchJob> {
    let text = format!(
        r#"
kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: clicks
entity: user
type: timeseries
features:
  - {{ name: article, type: string }}
  - {{ name: dwell, type: float64 }}
---
kind: Ingestion
name: click_log
batch: {{ files: {{ path: "{path}", format: csv }} }}
into: clicks
key: user_id
event_time: ts
features: {{ article: article_id, dwell: dwell_s }}
"#
    );
    let repo =
        cellar_spec::parse_repo(&[("repo.yaml".into(), text)]).unwrap_or_else(|e| panic!("{e}"));
    Arc::new(BatchJob::from_repo(&repo, "click_log", 0).unwrap())
}

/// Plans on a blocking thread, as jobs are: object storage is read through the runtime.
async fn plan_off_runtime(
    job: &Arc<BatchJob>,
) -> Result<cellar_ingest_batch::Plan, cellar_ingest_batch::BatchError> {
    let job = Arc::clone(job);
    tokio::task::spawn_blocking(move || plan(&job))
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs S3-compatible storage behind TLS (CELLAR_TEST_S3_TLS); scripts/test.sh starts it"]
async fn objects_are_read_over_https_with_the_ca_bundle_and_refused_without_it() {
    const ROWS: usize = 500;
    const USERS: usize = 20;
    let plain = service_address("CELLAR_TEST_S3", "S3-compatible storage");
    let https = service_address("CELLAR_TEST_S3_TLS", "S3-compatible storage behind TLS");
    let tls_dir = service_address("CELLAR_TEST_TLS_DIR", "the test certificates");

    // The bucket is made and filled over plain HTTP, through the server behind the proxy.
    let name = format!(
        "cellar-tls-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let s3 = AmazonS3Builder::new()
        .with_endpoint(&plain)
        .with_allow_http(true)
        .with_access_key_id("AK")
        .with_secret_access_key("SECRET")
        .with_region("us-east-1")
        .with_bucket_name(&name)
        .build()
        .unwrap();
    let bucket_request = |method: reqwest::Method| {
        let s3 = &s3;
        async move {
            let url = s3
                .signed_url(
                    method.clone(),
                    &ObjectPath::from(""),
                    Duration::from_secs(60),
                )
                .await
                .unwrap();
            let answer = reqwest::Client::new()
                .request(method, url.as_str())
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success(), "{}", answer.status());
        }
    };
    bucket_request(reqwest::Method::PUT).await;
    let key = "logs/clicks.csv";
    s3.put(
        &ObjectPath::from(key),
        PutPayload::from(click_csv(ROWS, USERS).into_bytes()),
    )
    .await
    .unwrap();

    for name in [
        "AWS_ENDPOINT",
        "AWS_ENDPOINT_URL_S3",
        "AWS_SESSION_TOKEN",
        "AWS_ALLOW_HTTP",
    ] {
        std::env::remove_var(name);
    }
    std::env::set_var("AWS_ACCESS_KEY_ID", "AK");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "SECRET");
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ENDPOINT_URL", &https);
    let path = format!("s3://{name}/{key}");

    std::env::set_var("AWS_CA_BUNDLE", format!("{tls_dir}/ca.crt"));
    let job = clicks_job(&path);
    let planned = plan_off_runtime(&job)
        .await
        .unwrap_or_else(|e| panic!("planning over HTTPS: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let (records, sink) = store(dir.path());
    let (rejected, rejects) = memory_rejects();
    let report = LocalRunner::new(2)
        .run(Arc::clone(&job), &planned, sink, rejects, Arc::new(|_| {}))
        .await;
    assert!(
        report.succeeded(),
        "{:?}",
        report.failures().collect::<Vec<_>>()
    );
    assert!(rejected.rejects().is_empty(), "{:?}", rejected.rejects());
    assert_eq!(report.rows_written, ROWS as u64);
    assert_clicks(&records, &job, ROWS, USERS).await;

    // A CA that did not sign the endpoint's certificate: nothing is read.
    std::env::set_var("AWS_CA_BUNDLE", format!("{tls_dir}/other-ca.crt"));
    let err = plan_off_runtime(&clicks_job(&path))
        .await
        .expect_err("an endpoint certificate no trusted CA signed")
        .to_string();
    assert!(
        err.contains("invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    std::env::set_var("AWS_CA_BUNDLE", "/nonexistent/ca.crt");
    let err = plan_off_runtime(&clicks_job(&path))
        .await
        .expect_err("a missing CA bundle")
        .to_string();
    assert!(
        err.contains("AWS_CA_BUNDLE: cannot read `/nonexistent/ca.crt`"),
        "{err}"
    );

    let _ = s3.delete(&ObjectPath::from(key)).await;
    bucket_request(reqwest::Method::DELETE).await;
}
