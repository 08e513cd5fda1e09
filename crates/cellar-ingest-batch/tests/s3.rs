//! Files in S3-compatible object storage as a batch source, end to end into the embedded store:
//! Parquet row groups and CSV byte ranges read with ranged GETs, listing like local paths, and
//! the errors met on the way. Tests that need a server take its endpoint from `CELLAR_TEST_S3`,
//! such as `http://127.0.0.1:8014` (where `scripts/services.sh` starts s3s-fs), which takes the
//! access key `AK` and the secret key `SECRET`; each makes its own uniquely named bucket and
//! deletes it afterwards. They are ignored by a plain `cargo test`; run with
//! `--include-ignored` (as `scripts/test.sh` does) and without the variable, they fail.

mod common;

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cellar_ingest_batch::{
    plan, plan_with, BatchError, BatchJob, JobReport, LocalRunner, Piece, Plan, PlanOptions,
};
use common::*;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const S3_ENV: &str = "CELLAR_TEST_S3";
const ACCESS_KEY: &str = "AK";
const SECRET_KEY: &str = "SECRET";
const REGION: &str = "us-east-1";

/// The job of an ingestion of clicks from `path`, in `format`.
fn clicks_job(path: &str, format: &str) -> Arc<BatchJob> {
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
batch: {{ files: {{ path: "{path}", format: {format} }} }}
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

/// A bucket of its own on the server, and a client to fill it.
struct Bucket {
    name: String,
    endpoint: String,
    store: AmazonS3,
}

impl Bucket {
    async fn create(endpoint: &str) -> Bucket {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "cellar-test-{}-{nanos}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let store = AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
            .with_bucket_name(&name)
            .build()
            .unwrap();
        let bucket = Bucket {
            name,
            endpoint: endpoint.to_owned(),
            store,
        };
        bucket
            .bucket_request(reqwest::Method::PUT)
            .await
            .unwrap_or_else(|e| panic!("{S3_ENV}={endpoint}: cannot create a bucket: {e}"));
        bucket
    }

    /// CreateBucket or DeleteBucket, which object_store does not send: a presigned request.
    async fn bucket_request(&self, method: reqwest::Method) -> Result<(), String> {
        let url = self
            .store
            .signed_url(
                method.clone(),
                &ObjectPath::from(""),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| e.to_string())?;
        let response = reqwest::Client::new()
            .request(method, url.as_str())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "{}: {}",
                response.status(),
                response.text().await.unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// `s3://BUCKET/key`.
    fn url(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.name)
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) {
        self.store
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await
            .unwrap();
    }

    /// Uploads every file under `dir`, keyed by its path below `dir`.
    async fn upload(&self, dir: &Path) {
        let mut pending = vec![dir.to_path_buf()];
        while let Some(at) = pending.pop() {
            for entry in std::fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    let key = path.strip_prefix(dir).unwrap().to_str().unwrap();
                    self.put(key, std::fs::read(&path).unwrap()).await;
                }
            }
        }
    }

    async fn delete(&self) -> Result<(), String> {
        let objects: Vec<_> = self
            .store
            .list(None)
            .try_collect()
            .await
            .map_err(|e| e.to_string())?;
        for object in objects {
            self.store
                .delete(&object.location)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.bucket_request(reqwest::Method::DELETE).await
    }
}

/// Points the clients that jobs build from the AWS environment at the server, once for the
/// whole test binary, before any of them reads it.
fn aws_environment(endpoint: &str) {
    static SET: Once = Once::new();
    SET.call_once(|| {
        // Ones that would override those set here.
        for name in [
            "AWS_ENDPOINT",
            "AWS_ENDPOINT_URL_S3",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
        ] {
            std::env::remove_var(name);
        }
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_REGION", REGION);
        std::env::set_var("AWS_ENDPOINT_URL", endpoint);
        std::env::set_var("AWS_ALLOW_HTTP", "true");
    });
}

/// Runs `body` with a fresh bucket, then deletes the bucket.
async fn with_bucket<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Arc<Bucket>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let endpoint = service_address(
        S3_ENV,
        &format!(
            "an S3-compatible endpoint taking the access key {ACCESS_KEY}, such as \
             http://127.0.0.1:8014"
        ),
    );
    aws_environment(&endpoint);
    let bucket = Arc::new(Bucket::create(&endpoint).await);
    // On a task, so a failing assertion still lets the bucket be deleted.
    let outcome = tokio::spawn(body(Arc::clone(&bucket))).await;
    if let Err(e) = bucket.delete().await {
        eprintln!("could not delete test bucket {}: {e}", bucket.name);
    }
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("{test}: did not finish: {e}"),
        }
    }
}

/// Plans on a blocking thread, as jobs are: object storage is read through the runtime.
async fn plan_off_runtime(job: &Arc<BatchJob>, options: PlanOptions) -> Result<Plan, BatchError> {
    let job = Arc::clone(job);
    tokio::task::spawn_blocking(move || plan_with(&job, &options))
        .await
        .unwrap()
}

/// Runs every shard of `plan` into a fresh embedded store in `dir`; no row may be rejected.
async fn run(
    dir: &Path,
    job: &Arc<BatchJob>,
    plan: &Plan,
) -> (Arc<cellar_store::embedded::EmbeddedStore>, JobReport) {
    let (store, sink) = store(dir);
    let (rejected, rejects) = memory_rejects();
    let report = LocalRunner::new(2)
        .run(Arc::clone(job), plan, sink, rejects, Arc::new(|_| {}))
        .await;
    assert!(rejected.rejects().is_empty(), "{:?}", rejected.rejects());
    (store, report)
}

/// Runs `plan` and checks that it succeeded, wrote each of its `rows` clicks once, and that
/// every user's clicks are in the store.
async fn run_and_check_every_click(
    dir: &Path,
    job: &Arc<BatchJob>,
    plan: &Plan,
    rows: usize,
    users: usize,
) {
    let (store, report) = run(dir, job, plan).await;
    assert!(
        report.succeeded(),
        "{:?}",
        report.failures().collect::<Vec<_>>()
    );
    assert_eq!(
        (report.rows_read, report.rows_written),
        (rows as u64, rows as u64)
    );
    assert_clicks(&store, job, rows, users).await;
}

#[tokio::test]
#[ignore = "needs S3-compatible storage (CELLAR_TEST_S3); scripts/test.sh starts s3s-fs"]
async fn a_parquet_glob_loads_every_row_group_of_every_object() {
    with_bucket("parquet_glob_loads_every_row_group", |bucket| async move {
        const ROWS: usize = 12_000;
        const USERS: usize = 120;
        let dir = tempfile::tempdir().unwrap();
        click_files(&dir.path().join("data"), ROWS, USERS, 3, 1_000);
        // Beside the data, as writers leave them; none is Parquet, so reading one would fail.
        write_text(&dir.path().join("data/clicks/_SUCCESS"), "");
        write_text(
            &dir.path().join("data/clicks/_temporary.parquet"),
            "partial",
        );
        write_text(&dir.path().join("data/clicks/.part-0.parquet"), "crc");
        write_text(
            &dir.path().join("data/clicks/old/part-9.parquet"),
            "not listed",
        );
        bucket.upload(&dir.path().join("data")).await;

        let job = clicks_job(&bucket.url("clicks/*.parquet"), "parquet");
        let options = PlanOptions {
            target_rows: 1_000,
            ..PlanOptions::default()
        };
        let plan = plan_off_runtime(&job, options).await.unwrap();
        assert_eq!(
            (plan.files, plan.rows, plan.rows_exact),
            (3, ROWS as u64, true)
        );
        // A shard per row group: 3 objects of 4.
        assert_eq!(plan.shards.len(), 12);
        let mut groups: Vec<(String, usize)> = plan
            .shards
            .iter()
            .flat_map(|s| &s.pieces)
            .map(|p| match p {
                Piece::Parquet {
                    file,
                    row_group,
                    offset: 0,
                    rows: 1_000,
                    ..
                } => (file.clone(), *row_group),
                other => panic!("not a whole row group: {other:?}"),
            })
            .collect();
        groups.sort();
        let expected: Vec<(String, usize)> = (0..3)
            .flat_map(|f| (0..4).map(move |g| (f, g)))
            .map(|(f, g)| (bucket.url(&format!("clicks/part-{f}.parquet")), g))
            .collect();
        assert_eq!(groups, expected);

        run_and_check_every_click(dir.path(), &job, &plan, ROWS, USERS).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs S3-compatible storage (CELLAR_TEST_S3); scripts/test.sh starts s3s-fs"]
async fn a_directory_or_one_key_lists_like_a_local_path() {
    with_bucket("directory_or_one_key_lists", |bucket| async move {
        let dir = tempfile::tempdir().unwrap();
        click_files(dir.path(), 2_000, 20, 2, 500);
        write_text(&dir.path().join("clicks/_SUCCESS"), "");
        write_text(&dir.path().join("clicks/notes.txt"), "not data");
        write_text(&dir.path().join("clicks/old/part-9.parquet"), "not listed");
        bucket.upload(dir.path()).await;

        let files_of = |plan: &Plan| {
            let mut files: Vec<String> = plan
                .shards
                .iter()
                .flat_map(|s| &s.pieces)
                .map(|p| p.file().to_owned())
                .collect();
            files.dedup();
            files
        };
        let both = vec![
            bucket.url("clicks/part-0.parquet"),
            bucket.url("clicks/part-1.parquet"),
        ];
        for path in ["clicks/", "clicks"] {
            let job = clicks_job(&bucket.url(path), "parquet");
            let plan = plan_off_runtime(&job, PlanOptions::default())
                .await
                .unwrap();
            assert_eq!((plan.files, plan.rows), (2, 2_000), "{path}");
            assert_eq!(files_of(&plan), both, "{path}");
        }
        let job = clicks_job(&bucket.url("clicks/part-1.parquet"), "parquet");
        let plan = plan_off_runtime(&job, PlanOptions::default())
            .await
            .unwrap();
        assert_eq!(files_of(&plan), vec![both[1].clone()]);

        let (store, report) = run(dir.path(), &job, &plan).await;
        assert_eq!(report.rows_written, 1_000);
        let got = series(&store, &job, &keys(&["u0"])).await;
        assert_eq!(got[0].len(), 50, "u0's clicks of the second file");
    })
    .await;
}

#[tokio::test]
#[ignore = "needs S3-compatible storage (CELLAR_TEST_S3); scripts/test.sh starts s3s-fs"]
async fn a_csv_object_split_into_byte_ranges_loads_each_row_once() {
    with_bucket("csv_split_into_byte_ranges", |bucket| async move {
        const ROWS: usize = 20_000;
        const USERS: usize = 200;
        let text = click_csv(ROWS, USERS);
        let len = text.len() as u64;
        bucket.put("logs/clicks.csv", text.into_bytes()).await;

        let job = clicks_job(&bucket.url("logs/*.csv"), "csv");
        let options = PlanOptions {
            target_rows: 4_000,
            min_piece_bytes: 32 * 1024,
            ..PlanOptions::default()
        };
        let plan = plan_off_runtime(&job, options).await.unwrap();
        // About 5: the rows are estimated from the first 64 KiB.
        assert!((4..=6).contains(&plan.shards.len()), "{plan:?}");
        // Ranges that follow each other from the header to the end of the object.
        let mut next = 0;
        for shard in &plan.shards {
            let [Piece::Csv {
                file,
                file_len,
                start,
                end,
                ..
            }] = shard.pieces.as_slice()
            else {
                panic!("{:?}", shard.pieces);
            };
            assert_eq!((file, *file_len), (&bucket.url("logs/clicks.csv"), len));
            assert_eq!(*start, next);
            next = *end;
        }
        assert_eq!(next, len);

        let dir = tempfile::tempdir().unwrap();
        run_and_check_every_click(dir.path(), &job, &plan, ROWS, USERS).await;
    })
    .await;
}

#[tokio::test]
#[ignore = "needs S3-compatible storage (CELLAR_TEST_S3); scripts/test.sh starts s3s-fs"]
async fn missing_objects_and_buckets_are_named_by_url() {
    with_bucket("missing_objects_and_buckets", |bucket| async move {
        let dir = tempfile::tempdir().unwrap();
        click_files(dir.path(), 100, 10, 1, 100);
        bucket.upload(dir.path()).await;

        let url = bucket.url("clicks/*.csv");
        let err = plan_off_runtime(&clicks_job(&url, "csv"), PlanOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), format!("{url}: no files match"));

        let absent = format!("{}-absent", bucket.name);
        for url in [
            format!("s3://{absent}/clicks/*.parquet"),
            format!("s3://{absent}/clicks/"),
            format!("s3://{absent}/clicks/part-0.parquet"),
        ] {
            let err = plan_off_runtime(&clicks_job(&url, "parquet"), PlanOptions::default())
                .await
                .unwrap_err();
            assert!(
                matches!(err, BatchError::Source { .. }) && err.is_retryable(),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("{url}: the bucket does not exist at {}", bucket.endpoint)
            );
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "needs S3-compatible storage (CELLAR_TEST_S3); scripts/test.sh starts s3s-fs"]
async fn an_object_changed_after_planning_is_refused() {
    with_bucket("object_changed_after_planning", |bucket| async move {
        let dir = tempfile::tempdir().unwrap();
        click_files(&dir.path().join("first"), 4_000, 40, 2, 1_000);
        bucket.upload(&dir.path().join("first")).await;
        let job = clicks_job(&bucket.url("clicks/*.parquet"), "parquet");
        let plan = plan_off_runtime(&job, PlanOptions::default())
            .await
            .unwrap();
        let key = "clicks/part-1.parquet";
        let planned_len = std::fs::metadata(dir.path().join("first").join(key))
            .unwrap()
            .len();

        // Rewritten with fewer rows, so shorter.
        click_files(&dir.path().join("second"), 1_000, 40, 1, 1_000);
        let rewritten = std::fs::read(dir.path().join("second/clicks/part-0.parquet")).unwrap();
        let len = rewritten.len();
        bucket.put(key, rewritten).await;

        let (_, report) = run(dir.path(), &job, &plan).await;
        let failures: Vec<String> = report.failures().map(|(_, e)| e.to_string()).collect();
        assert_eq!(
            failures,
            vec![format!(
                "{}: the file is {len} bytes, {planned_len} when the job was planned: plan again",
                bucket.url(key)
            )]
        );
    })
    .await;
}

#[test]
fn other_schemes_are_refused_with_the_supported_ones() {
    for (path, reason) in [
        (
            "gs://bucket/clicks/*.parquet",
            "unsupported scheme `gs://`: batch files are local paths or s3://BUCKET/KEY URLs",
        ),
        (
            "http://example.com/clicks.parquet",
            "unsupported scheme `http://`: batch files are local paths or s3://BUCKET/KEY URLs",
        ),
        (
            "s3:///clicks.parquet",
            "no bucket: expected s3://BUCKET/KEY",
        ),
    ] {
        let err = plan(&clicks_job(path, "parquet")).unwrap_err();
        assert_eq!(err.to_string(), format!("{path}: {reason}"));
    }
}
