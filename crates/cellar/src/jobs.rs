//! `cellar backfill` and `cellar jobs`: batch jobs from the terminal.
//!
//! A backfill is submitted to the registry. When a server answers at `server.listen` (or
//! `--server`), it runs the job (with the embedded store it is the only process that can
//! write); otherwise this process runs it. Either way the terminal follows the job from the
//! registry with a progress bar (rows, rate, ETA) until it ends.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cellar_ingest_batch::{Period, RecordSink};
use cellar_jobs::executor::{default_worker_name, JobRequest};
use cellar_jobs::kafka::{KafkaRunnerConfig, TaskPublisher};
use cellar_jobs::{Alerter, Executor, ExecutorSettings};
use cellar_registry::{Job, JobFilter, JobState, Registry, ShardRun};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use indicatif::{ProgressBar, ProgressStyle};

use crate::client;
use crate::config::{Config, JobRunner, StoreBackend};
use crate::group_writes::{SharedFreshness, SHARE_EVERY};

/// The executor a process runs jobs with, as `config` sets it up: with the `kafka` runner,
/// it publishes shard tasks instead of running them.
pub async fn executor(
    config: &Config,
    registry: Registry,
    sink: Arc<dyn RecordSink>,
) -> anyhow::Result<Executor> {
    let mut settings = ExecutorSettings::new(config.rejects_dir());
    if config.jobs.shard_workers > 0 {
        settings.shard_workers = config.jobs.shard_workers;
    }
    settings.lease = Duration::from_secs(config.jobs.lease_secs.max(1));
    settings.retry_backoff = Duration::from_millis(config.jobs.retry_backoff_ms);
    settings.worker = default_worker_name();
    settings.event_times = config.event_time.bounds().map_err(|e| anyhow::anyhow!(e))?;
    let executor = Executor::new(registry, sink, settings, alerter(config)?);
    Ok(match config.jobs.runner {
        JobRunner::Local => executor,
        JobRunner::Kafka => {
            let tasks = TaskPublisher::connect(&kafka_runner(config)?)
                .await
                .context("connecting the kafka runner (jobs.runner = \"kafka\")")?;
            executor.with_kafka_runner(tasks)
        }
    })
}

/// The `kafka` runner's settings, from `ingest.kafka` and `jobs`.
pub fn kafka_runner(config: &Config) -> anyhow::Result<KafkaRunnerConfig> {
    if !config.ingest.kafka.enabled() {
        anyhow::bail!(
            "the kafka runner needs a Kafka cluster: set ingest.kafka.brokers (or \
             CELLAR_INGEST__KAFKA__BROKERS)"
        );
    }
    if config.store.backend == StoreBackend::Embedded {
        anyhow::bail!(
            "the kafka runner's workers must share the store: the embedded store belongs to one \
             process; set store.backend to dynamodb or redis"
        );
    }
    Ok(KafkaRunnerConfig {
        connection: config
            .ingest
            .kafka
            .connection()
            .map_err(|e| anyhow::anyhow!(e))?,
        topic: config.jobs.kafka_topic.clone(),
        partitions: config.jobs.kafka_partitions.max(1),
        group: config.jobs.kafka_group.clone(),
    })
}

/// `cellar worker`: runs shard tasks of the `kafka` runner until stopped.
pub async fn worker(config: &Config) -> anyhow::Result<()> {
    let runner = kafka_runner(config)?;
    let registry = Registry::open(&config.registry_url()).await?;
    let store = crate::node::open_store(config).await?;
    let writer = crate::node::write_path(config, store, "worker")?;
    let sharing = SharedFreshness::new(registry.clone(), writer.freshness().clone());
    let sink: Arc<dyn RecordSink> = Arc::new(writer);
    let mut settings = ExecutorSettings::new(config.rejects_dir());
    if config.jobs.shard_workers > 0 {
        settings.shard_workers = config.jobs.shard_workers;
    }
    settings.lease = Duration::from_secs(config.jobs.lease_secs.max(1));
    settings.event_times = config.event_time.bounds().map_err(|e| anyhow::anyhow!(e))?;
    let executor = Executor::new(registry, sink, settings, None);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::node::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    tokio::spawn(sharing.clone().run(SHARE_EVERY, stop_rx.clone()));
    let result = cellar_jobs::kafka::run_worker(executor, &runner, stop_rx).await;
    sharing.exchange_logged().await;
    Ok(result?)
}

/// The alerter `config` names, if any; an error names a secret reference of
/// `jobs.alert_webhook` that cannot be read, or a CA file that cannot be used.
pub fn alerter(config: &Config) -> anyhow::Result<Option<Alerter>> {
    let webhook = config.jobs.alert_webhook.trim();
    if webhook.is_empty() {
        return Ok(None);
    }
    let alerter = Alerter::new(webhook, &config.public_url()).context("jobs.alert_webhook")?;
    alerter
        .with_ca_file(&config.jobs.alert_ca_file)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("jobs.alert_ca_file: {e}"))
}

/// What `cellar backfill` was asked.
#[derive(Debug, Clone)]
pub struct BackfillArgs {
    pub ingestion: String,
    pub period: Period,
    pub max_attempts: Option<u32>,
    /// A server to run it; `None` asks `server.listen` and runs here if it does not answer.
    pub server: Option<String>,
    /// Draw a progress bar (a terminal); otherwise a line every few seconds.
    pub progress_bar: bool,
}

/// Runs a backfill to its end; returns the finished job.
pub async fn backfill(config: &Config, args: &BackfillArgs) -> anyhow::Result<Job> {
    let registry = Registry::open(&config.registry_url()).await?;
    let server = match &args.server {
        Some(s) => Some(client::server_url(Some(s), &config.server.listen)?),
        None => {
            let url = client::server_url(None, &config.server.listen)?;
            server_answers(&url).await.then_some(url)
        }
    };
    let max_attempts = args.max_attempts.unwrap_or(config.jobs.max_attempts);
    let mut sharing = None;
    let id = match &server {
        Some(url) => {
            let mut body = serde_json::json!({
                "ingestion": args.ingestion,
                "max_attempts": max_attempts,
            });
            if let Some(ms) = args.period.from_ms {
                body["from"] = rfc3339(ms).into();
            }
            if let Some(ms) = args.period.to_ms {
                body["to"] = rfc3339(ms).into();
            }
            let job = client::post(url, "/v1/jobs", &body).await?;
            let id = job["id"]
                .as_i64()
                .context("the server's answer has no job id")?;
            eprintln!("job {id} submitted to {url}; its page: {url}/jobs/{id}");
            id
        }
        None => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
            let (sink, shared) = local_sink(config, &registry).await?;
            sharing = Some(shared);
            let executor = executor(config, registry.clone(), sink).await?;
            let request = JobRequest {
                max_attempts,
                ..JobRequest::backfill(&args.ingestion, args.period)
            };
            let job = executor.submit(&request).await?;
            eprintln!("job {} submitted; running it here", job.id);
            let id = job.id;
            tokio::spawn(async move {
                if let Err(e) = executor.run(id).await {
                    tracing::error!(job = id, error = %e, "the backfill stopped");
                }
            });
            id
        }
    };
    let job = follow(&registry, id, args.progress_bar).await;
    if let Some(sharing) = sharing {
        sharing.exchange_logged().await;
    }
    job
}

/// The write path of a job run by this command, and its side of the freshness sharing, to
/// record what the job wrote once it ends.
async fn local_sink(
    config: &Config,
    registry: &Registry,
) -> anyhow::Result<(Arc<dyn RecordSink>, SharedFreshness)> {
    let store = crate::node::open_store(config).await?;
    let writer = crate::node::write_path(config, store, "cli")?;
    let sharing = SharedFreshness::new(registry.clone(), writer.freshness().clone());
    Ok((Arc::new(writer), sharing))
}

/// Follows job `id` in the registry until it ends, drawing its progress.
pub async fn follow(registry: &Registry, id: i64, bar: bool) -> anyhow::Result<Job> {
    let progress = if bar {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {human_pos}/{human_len} rows {per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    progress.set_prefix(format!("job {id}"));
    let mut last_line = std::time::Instant::now();
    loop {
        let job = registry
            .job(id)
            .await?
            .with_context(|| format!("job {id} is gone from the registry"))?;
        if let Some(total) = job.rows_planned {
            progress.set_length(total.max(job.rows_read).max(0) as u64);
        }
        progress.set_position(job.rows_read.max(0) as u64);
        progress.set_message(format!(
            "{} · shards {}/{}{}",
            job.state,
            job.shards_succeeded,
            job.shards_total,
            if job.rows_rejected > 0 {
                format!(" · {} rejected", job.rows_rejected)
            } else {
                String::new()
            }
        ));
        if !bar && last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "job {id}: {} · {} of {} rows · shards {}/{}",
                job.state,
                job.rows_read,
                job.rows_planned
                    .map_or_else(|| "?".to_owned(), |r| r.to_string()),
                job.shards_succeeded,
                job.shards_total
            );
            last_line = std::time::Instant::now();
        }
        if job.state.is_finished() {
            progress.finish();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One line on how a job ended.
pub fn summary(job: &Job) -> String {
    let took = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) => (f - s).to_std().unwrap_or_default(),
        _ => Duration::ZERO,
    };
    let rate = job.rows_read as f64 / took.as_secs_f64().max(1e-3);
    let mut line = format!(
        "job {} {}: {} rows read, {} written, {} rejected, {} shard(s), in {:.1} s ({:.0} rows/s)",
        job.id,
        job.state,
        job.rows_read,
        job.rows_written,
        job.rows_rejected,
        job.shards_total,
        took.as_secs_f64(),
        rate
    );
    if let Some(e) = &job.error {
        line.push_str(&format!("\nerror: {e}"));
    }
    line
}

async fn server_answers(url: &str) -> bool {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap_or_default();
    client
        .get(format!("{url}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// `cellar jobs list`.
pub async fn list(
    config: &Config,
    ingestion: Option<String>,
    states: Vec<JobState>,
    limit: i64,
) -> anyhow::Result<Vec<Job>> {
    let registry = Registry::open(&config.registry_url()).await?;
    Ok(registry
        .list_jobs(&JobFilter {
            ingestion,
            states,
            limit,
        })
        .await?)
}

/// `cellar jobs show`.
pub async fn show(config: &Config, id: i64) -> anyhow::Result<(Job, Vec<ShardRun>)> {
    let registry = Registry::open(&config.registry_url()).await?;
    let job = registry
        .job(id)
        .await?
        .with_context(|| format!("there is no job {id}"))?;
    let shards = registry.shards(id).await?;
    Ok((job, shards))
}

/// `cellar jobs retry`: failed shards made runnable again, then run by the server if one
/// answers, else here (followed with a progress bar).
pub async fn retry(
    config: &Config,
    id: i64,
    server: Option<String>,
    bar: bool,
) -> anyhow::Result<Job> {
    let registry = Registry::open(&config.registry_url()).await?;
    let url = client::server_url(server.as_deref(), &config.server.listen)?;
    let mut sharing = None;
    if server.is_some() || server_answers(&url).await {
        client::post(
            &url,
            &format!("/v1/jobs/{id}/retry"),
            &serde_json::json!({}),
        )
        .await?;
        eprintln!("job {id} made runnable again; {url} runs it");
    } else {
        registry.retry_job(id).await?;
        let (sink, shared) = local_sink(config, &registry).await?;
        sharing = Some(shared);
        let executor = executor(config, registry.clone(), sink).await?;
        eprintln!("job {id} made runnable again; running it here");
        tokio::spawn(async move {
            if let Err(e) = executor.run(id).await {
                tracing::error!(job = id, error = %e, "the job stopped");
            }
        });
    }
    let job = follow(&registry, id, bar).await;
    if let Some(sharing) = sharing {
        sharing.exchange_logged().await;
    }
    job
}

/// `cellar jobs cancel`.
pub async fn cancel(config: &Config, id: i64) -> anyhow::Result<Job> {
    let registry = Registry::open(&config.registry_url()).await?;
    Ok(registry.cancel_job(id).await?)
}

/// Jobs as a table.
pub fn render_jobs(jobs: &[Job]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "id",
        "ingestion",
        "kind",
        "state",
        "shards",
        "rows read",
        "written",
        "rejected",
        "submitted",
        "error",
    ]);
    for j in jobs {
        table.add_row([
            j.id.to_string(),
            j.ingestion.clone(),
            j.kind.to_string(),
            j.state.to_string(),
            format!("{}/{}", j.shards_succeeded, j.shards_total),
            j.rows_read.to_string(),
            j.rows_written.to_string(),
            j.rows_rejected.to_string(),
            j.submitted_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            j.error.clone().unwrap_or_default(),
        ]);
    }
    format!("{table}\n")
}

/// A job and its shards as text.
pub fn render_job(job: &Job, shards: &[ShardRun]) -> String {
    let mut out = render_jobs(std::slice::from_ref(job));
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "shard",
        "state",
        "attempts",
        "worker",
        "rows planned",
        "read",
        "written",
        "rejected",
        "last error",
    ]);
    for s in shards {
        table.add_row([
            s.index.to_string(),
            s.state.to_string(),
            s.attempts.to_string(),
            s.worker.clone().unwrap_or_default(),
            s.rows_planned.to_string(),
            s.rows_read.to_string(),
            s.rows_written.to_string(),
            s.rows_rejected.to_string(),
            s.error.clone().unwrap_or_default(),
        ]);
    }
    out.push_str(&format!("{table}\n"));
    out
}
