//! A Cellar node: the store, registry, cache tiers and serving service wired together, and
//! the servers that expose them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cellar_auth::{Audit, Authenticator};
use cellar_cache::remote::{RemoteConfig, RemoteTier};
use cellar_cache::{CacheMetrics, Freshness, LocalTier, MeasuredStore, WritePath};
use cellar_history::{HistoryError, OfflineHistory};
use cellar_ingest_batch::RecordSink;
use cellar_jobs::http::jobs_router;
use cellar_jobs::schedule::run_scheduler;
use cellar_jobs::{Executor, JobMetrics};
use cellar_registry::Registry;
use cellar_serving::http::{router, HttpState};
use cellar_serving::listener::{self, ListenerLimits, ListenerMetrics, Observed, Security};
use cellar_serving::metrics::{OnDemandMetrics, ServingMetrics};
use cellar_serving::sources::SourceMetrics;
use cellar_serving::tls::ServerTls;
use cellar_serving::{Catalog, FeatureServer, FeatureServing, Limits};
use cellar_store::embedded::EmbeddedStore;
use cellar_store::{OnlineStore, RecordReader};
#[cfg(feature = "dynamodb")]
use cellar_store_dynamodb::{DynamoConfig, DynamoStore};
use cellar_store_redis::{RedisConfig, RedisStore, RedisTls};
use tokio::net::TcpListener;

use crate::config::{Config, StoreBackend};
use crate::console::samples::MetricsHistory;
use crate::console::{self, Console};
use crate::group_writes::{SharedFreshness, SHARE_EVERY};
use crate::ingest::{stream_routers, IngestMetrics, StreamIngestion};
use crate::served_log::HistoryServedLog;
use crate::training_jobs::{training_sets_router, TrainingSets};
use cellar_spec::FeatureRepo;

/// How often the batch job figures of `/metrics` are read from the registry: about as often
/// as Prometheus scrapes.
const JOB_METRICS_EVERY: Duration = Duration::from_secs(5);

/// Everything a serving process holds.
pub struct Node {
    pub config: Config,
    pub registry: Registry,
    pub store: Arc<dyn OnlineStore>,
    pub local: Arc<LocalTier>,
    pub server: Arc<FeatureServer>,
    /// Every write of this process goes through it: store, then cache tiers, then the
    /// offline history.
    pub writer: WritePath,
    /// The offline history this process writes, when the config keeps one.
    pub history: Option<Arc<OfflineHistory>>,
    pub metrics: Arc<ServingMetrics>,
    /// Registry version the catalog was built from; 0 before any apply.
    pub version: i64,
    /// Stream ingestion from the embedded log, when enabled.
    pub ingestion: Option<Arc<StreamIngestion>>,
    /// Runs batch jobs (scheduled, and submitted to this node), when enabled.
    pub jobs: Option<Executor>,
    /// Figures of the registry's batch jobs, whoever runs them.
    job_metrics: JobMetrics,
    /// What the HTTP and gRPC listeners turned away.
    pub listener_metrics: ListenerMetrics,
    /// TLS and authentication of both listeners.
    pub security: Security,
    /// Where writes and operator actions are recorded.
    pub audit: Audit,
    /// Training sets built as jobs of this server, when it keeps a history.
    pub training_sets: Option<TrainingSets>,
}

/// Opens the online store `config` names: the embedded one in the data directory, a DynamoDB
/// table (created when missing), or a Redis (keys under `store.redis.key_prefix`).
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn OnlineStore>> {
    match config.store.backend {
        StoreBackend::Embedded => {
            let path = config.store_path();
            let store = EmbeddedStore::open(&path)
                .with_context(|| format!("opening the store at {}", path.display()))?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "dynamodb"))]
        StoreBackend::Dynamodb => anyhow::bail!(
            "store.backend = \"dynamodb\" needs the `dynamodb` feature, which this build of cellar \
             leaves out: build it with default features"
        ),
        #[cfg(feature = "dynamodb")]
        StoreBackend::Dynamodb => {
            let d = &config.store.dynamodb;
            let store = DynamoStore::connect(DynamoConfig {
                table: d.table.clone(),
                region: d.region.clone(),
                endpoint: (!d.endpoint.is_empty()).then(|| d.endpoint.clone()),
            })
            .await
            .with_context(|| format!("connecting to DynamoDB table `{}`", d.table))?;
            store
                .ensure_table()
                .await
                .with_context(|| format!("creating DynamoDB table `{}`", d.table))?;
            Ok(Arc::new(store))
        }
        StoreBackend::Redis => {
            let r = &config.store.redis;
            let store = RedisStore::connect(RedisConfig {
                url: r.url.clone(),
                tls: RedisTls {
                    ca_file: r.ca_file.clone(),
                    cert_file: r.cert_file.clone(),
                    key_file: r.key_file.clone(),
                },
                key_prefix: r.key_prefix.clone(),
                ..RedisConfig::default()
            })
            .await
            // Not the URL: it may hold a password.
            .context("connecting to the Redis store (store.redis.url)")?;
            Ok(Arc::new(store))
        }
    }
}

/// The Redis tier's settings from `config`; `None` without Redis URLs.
fn remote_config(config: &Config) -> Option<RemoteConfig> {
    if config.cache.remote_urls.is_empty() {
        return None;
    }
    Some(RemoteConfig {
        urls: config.cache.remote_urls.clone(),
        tls: RedisTls {
            ca_file: config.cache.remote_ca_file.clone(),
            cert_file: config.cache.remote_cert_file.clone(),
            key_file: config.cache.remote_key_file.clone(),
        },
        key_prefix: config.cache.remote_key_prefix.clone(),
        timeout: Duration::from_millis(config.cache.remote_timeout_ms),
        ..RemoteConfig::default()
    })
}

/// How often the history's partitions past their group's `retention.history` are removed.
const HISTORY_SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Removes, at start and then every hour, the history partitions older than each group's
/// `retention.history`.
async fn sweep_history(storage: cellar_history::Storage, server: Arc<FeatureServer>) {
    loop {
        let groups: Vec<(String, Duration)> = server
            .catalog()
            .groups()
            .filter_map(|g| {
                Some((
                    g.spec.storage_name().into_owned(),
                    g.spec.retention.history?,
                ))
            })
            .collect();
        let storage = storage.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let now = cellar_spec::time::now_ms();
            for (group, keep) in groups {
                let age = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
                let keep_from = cellar_history::files::day_of(now.saturating_sub(age));
                match cellar_history::files::sweep(&storage, &group, keep_from) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(%group, partitions = n, "removed history past retention.history"),
                    Err(e) => tracing::warn!(%group, error = %e, "removing history past retention.history failed"),
                }
            }
        })
        .await;
        if let Err(e) = swept {
            tracing::warn!(error = %e, "the history sweep failed");
        }
        tokio::time::sleep(HISTORY_SWEEP_EVERY).await;
    }
}

/// The offline history of a process of `role` (see [`Config::history_staging_path`]), when
/// the config keeps one.
pub fn open_history(config: &Config, role: &str) -> anyhow::Result<Option<Arc<OfflineHistory>>> {
    if !config.history.enabled {
        return Ok(None);
    }
    let interval = Duration::from_secs(config.history.convert_interval_secs.max(1));
    let storage = config.history_storage()?;
    // Processes of one role on one machine (several `cellar worker`s) each take the first
    // staging log no other process holds: `worker`, then `worker-1`, and so on. A process
    // started after a crash takes over what the crashed one left there. Any failure other
    // than a log in use is the history's, and stops the process.
    for n in 0..MAX_STAGING_LOGS {
        let name = if n == 0 {
            role.to_owned()
        } else {
            format!("{role}-{n}")
        };
        let staging = config.history_staging_path(&name);
        match OfflineHistory::open(storage.clone(), &staging, interval) {
            Ok(history) => {
                history.set_max_staged_bytes(config.history.max_staged_bytes);
                return Ok(Some(Arc::new(history)));
            }
            Err(HistoryError::Locked(_)) => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "opening the offline history (staging at {})",
                    staging.display()
                )))
            }
        }
    }
    anyhow::bail!(
        "opening the offline history: all {MAX_STAGING_LOGS} staging logs of role `{role}` \
         under {} are in use by other processes",
        config.data_dir.join("history-staging").display()
    )
}

/// Staging logs one role may have on one machine: processes of that role running at once.
const MAX_STAGING_LOGS: usize = 64;

/// The write path of a process that writes but does not serve (`cellar ingest`, `cellar
/// worker`, jobs run by the CLI, as `role`): the store, the offline history, and the Redis
/// tier when there is one, so that its writes update or invalidate the copies every server
/// reads.
pub fn write_path(
    config: &Config,
    store: Arc<dyn OnlineStore>,
    role: &str,
) -> anyhow::Result<WritePath> {
    let mut writer = WritePath::new(store.clone(), None);
    if let Some(history) = open_history(config, role)? {
        writer = writer.with_history(history);
    }
    let Some(remote_config) = remote_config(config) else {
        return Ok(writer);
    };
    let tier = RemoteTier::new(remote_config, store, CacheMetrics::default())
        .context("setting up the Redis tier (cache.remote_urls)")?;
    Ok(writer.with_remote(Arc::new(tier)))
}

impl Node {
    /// Opens the store and registry named by `config` and builds the read path.
    pub async fn open(config: Config) -> anyhow::Result<Node> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let security = security(&config)?;
        let audit_path = config.audit_log_path();
        let audit = Audit::open(&audit_path)
            .with_context(|| format!("opening the audit log {}", audit_path.display()))?;
        let registry = Registry::open(&config.registry_url()).await?;
        let store = open_store(&config).await?;
        let (repo, version) = match registry.current().await? {
            Some(applied) => (applied.repo, applied.version),
            None => (FeatureRepo::default(), 0),
        };
        let cache_metrics = CacheMetrics::default();
        // Reads that reach the store are timed and counted on their way.
        let measured: Arc<dyn RecordReader> =
            Arc::new(MeasuredStore::new(store.clone(), cache_metrics.clone()));
        let remote = match remote_config(&config) {
            None => None,
            Some(remote_config) => {
                let tier = RemoteTier::new(remote_config, measured.clone(), cache_metrics.clone())
                    .context("setting up the Redis tier (cache.remote_urls)")?;
                Some(Arc::new(tier))
            }
        };
        let next: Arc<dyn RecordReader> = match &remote {
            Some(remote) => remote.clone(),
            None => measured,
        };
        let local = Arc::new(LocalTier::new(
            config.cache.local_max_bytes,
            next,
            cache_metrics.clone(),
        ));
        let mut metrics = ServingMetrics::new();
        metrics
            .registry_mut()
            .register_collector(Box::new(cache_metrics));
        if let Some(remote) = &remote {
            metrics
                .registry_mut()
                .register_collector(Box::new(RemoteMetrics(remote.clone())));
        }
        let limits = Limits {
            max_entities: config.server.max_entities_per_request,
            max_push_records: config.server.max_push_records,
            default_top_n: config.server.default_top_n,
            max_top_n: config.server.max_top_n,
            deadline: Duration::from_millis(config.server.deadline_ms),
            max_request_cost: config.server.max_request_cost,
        };
        let reader: Arc<dyn RecordReader> = local.clone();
        let mut writer = WritePath::new(store.clone(), Some(local.clone()));
        if let Some(remote) = &remote {
            writer = writer.with_remote(remote.clone());
        }
        let history = open_history(&config, "serve")?;
        if let Some(history) = &history {
            writer = writer.with_history(history.clone());
        }
        writer
            .freshness()
            .set_objectives(repo.freshness_objectives());
        metrics
            .registry_mut()
            .register_collector(Box::new(writer.freshness().clone()));
        let event_times = config.event_time.bounds().map_err(|e| anyhow::anyhow!(e))?;
        let on_demand_metrics = OnDemandMetrics::register(metrics.registry_mut());
        let source_metrics = SourceMetrics::register(metrics.registry_mut());
        let catalog = Catalog::with_source_metrics(&repo, &source_metrics);
        let mut server = FeatureServer::new(catalog, reader, writer.clone(), limits)
            .with_event_times(event_times)
            .with_audit(audit.clone())
            .with_on_demand_metrics(on_demand_metrics)
            .with_source_metrics(source_metrics);
        if let Some(history) = &history {
            let (log, _keeper) = HistoryServedLog::start(history.clone(), metrics.registry_mut());
            server = server.with_served_log(log);
        }
        let server = Arc::new(server);
        let ingestion = if config.ingest.in_server {
            let ingestion = Arc::new(StreamIngestion::open(&config, writer.clone(), &repo)?);
            metrics
                .registry_mut()
                .register_collector(Box::new(IngestMetrics(ingestion.clone())));
            Some(ingestion)
        } else {
            None
        };
        let job_metrics = JobMetrics::default();
        metrics
            .registry_mut()
            .register_collector(Box::new(job_metrics.clone()));
        let listener_metrics = ListenerMetrics::register(metrics.registry_mut());
        let jobs = if config.jobs.in_server {
            let sink: Arc<dyn RecordSink> = Arc::new(writer.clone());
            Some(crate::jobs::executor(&config, registry.clone(), sink).await?)
        } else {
            None
        };
        let training_sets = match &history {
            Some(history) => Some(TrainingSets::open(
                &config,
                registry.clone(),
                history.clone(),
                audit.clone(),
            )?),
            None => None,
        };
        Ok(Node {
            training_sets,
            jobs,
            job_metrics,
            listener_metrics,
            security,
            audit,
            config,
            registry,
            store,
            local,
            server,
            writer,
            history,
            metrics: Arc::new(metrics),
            version,
            ingestion,
        })
    }

    /// Serves HTTP on `http` (and gRPC on `grpc`, if given) until `shutdown` resolves,
    /// reloading the catalog when a new repo version is applied.
    pub async fn serve(
        self,
        http: TcpListener,
        grpc: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let admin = match self.config.server.admin_listen.trim() {
            "" => None,
            addr => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (server.admin_listen)"))?,
            ),
        };
        let addresses = std::iter::once(&http)
            .chain(grpc.as_ref())
            .chain(admin.as_ref())
            .map(|l| l.local_addr())
            .collect::<std::io::Result<Vec<_>>>()?;
        check_exposure(&self.config, &self.security, &addresses)?;
        if let Some(tls) = &self.security.tls {
            tls.watch(Duration::from_secs(
                self.config.server.tls.reload_secs.max(1),
            ));
        }
        let service: Arc<dyn FeatureServing> = self.server.clone();
        let state = Arc::new(HttpState {
            service,
            metrics: self.metrics.clone(),
        });
        let mut app = router(state, self.config.server.max_body_bytes);
        // Operator routes: on the admin listener when there is one, else with the rest.
        let mut operator = axum::Router::new();
        if let Some(ingestion) = &self.ingestion {
            let routes = stream_routers(
                ingestion.clone(),
                self.config.server.max_push_records,
                self.config.server.max_body_bytes,
                self.audit.clone(),
            );
            app = app.merge(routes.events);
            operator = operator.merge(routes.dead_letters);
        }
        if let Some(executor) = &self.jobs {
            operator = operator.merge(jobs_router(executor.clone(), self.audit.clone()));
        }
        let samples = MetricsHistory::default();
        if self.config.server.console {
            operator = operator.merge(console::router(self.console(samples.clone(), &http)?));
        }
        if let Some(sets) = &self.training_sets {
            app = app.merge(training_sets_router(sets.clone()));
        }
        let admin = match admin {
            None => {
                app = app.merge(operator);
                None
            }
            Some(listener) => {
                let operator = operator.route(
                    "/health",
                    axum::routing::get(|| async {
                        axum::Json(serde_json::json!({"status": "ok"}))
                    }),
                );
                Some((listener, operator))
            }
        };
        let trim = (self.config.store.trim_interval_secs > 0).then(|| {
            tokio::spawn(trim_retention(
                self.store.clone(),
                self.server.clone(),
                Duration::from_secs(self.config.store.trim_interval_secs),
            ))
        });
        let reload = tokio::spawn(reload_catalog(
            self.registry.clone(),
            self.server.clone(),
            self.ingestion.clone(),
            self.writer.freshness().clone(),
            self.version,
            Duration::from_secs(self.config.server.reload_interval_secs.max(1)),
        ));
        // One shutdown signal, fanned out to both servers.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let ingest_task = self.ingestion.clone().map(|ingestion| {
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                if let Err(e) = ingestion.run(stop).await {
                    tracing::error!(error = %format!("{e:#}"), "stream ingestion stopped");
                }
            })
        });
        let sharing = SharedFreshness::new(self.registry.clone(), self.writer.freshness().clone());
        sharing.exchange_logged().await;
        let mut job_tasks = vec![tokio::spawn(
            sharing.clone().run(SHARE_EVERY, stop_rx.clone()),
        )];
        if self.config.server.console {
            job_tasks.push(tokio::spawn(
                samples.run(self.metrics.clone(), stop_rx.clone()),
            ));
        }
        if let Some(sets) = &self.training_sets {
            job_tasks.push(tokio::spawn(sets.clone().run(stop_rx.clone())));
        }
        if let Some(history) = &self.history {
            job_tasks.push(tokio::spawn(sweep_history(
                history.storage().clone(),
                self.server.clone(),
            )));
        }
        job_tasks.push(tokio::spawn({
            let (metrics, registry, stop) = (
                self.job_metrics.clone(),
                self.registry.clone(),
                stop_rx.clone(),
            );
            async move { metrics.watch(registry, JOB_METRICS_EVERY, stop).await }
        }));
        if let Some(executor) = &self.jobs {
            let every = Duration::from_millis(self.config.jobs.poll_interval_ms.max(10));
            job_tasks.push(tokio::spawn({
                let (executor, stop) = (executor.clone(), stop_rx.clone());
                async move { executor.serve(every, stop).await }
            }));
            job_tasks.push(tokio::spawn(run_scheduler(
                executor.clone(),
                every,
                stop_rx.clone(),
            )));
            if let Some(alerter) = crate::jobs::alerter(&self.config)? {
                let stuck_after = Duration::from_secs(self.config.jobs.stuck_after_secs.max(1));
                let (registry, stop) = (self.registry.clone(), stop_rx.clone());
                job_tasks.push(tokio::spawn(async move {
                    alerter
                        .watch_stuck(registry, stuck_after, every, stop)
                        .await
                }));
            }
        }
        let limits = listener_limits(&self.config);
        let grpc_task = match grpc {
            Some(listener) => {
                tracing::info!(addr = %listener.local_addr()?, "serving grpc");
                let routes =
                    tonic::service::Routes::new(cellar_serving::grpc::service(self.server.clone()))
                        .prepare()
                        .into_axum_router();
                Some(tokio::spawn(listener::serve(
                    listener,
                    routes,
                    limits.clone(),
                    self.security.clone(),
                    Observed {
                        name: "grpc",
                        metrics: self.listener_metrics.clone(),
                    },
                    stopped(stop_rx.clone()),
                )))
            }
            None => None,
        };
        let admin_task = match admin {
            Some((listener, routes)) => {
                tracing::info!(addr = %listener.local_addr()?, "serving operator routes");
                Some(tokio::spawn(listener::serve(
                    listener,
                    routes,
                    limits.clone(),
                    self.security.clone(),
                    Observed {
                        name: "admin",
                        metrics: self.listener_metrics.clone(),
                    },
                    stopped(stop_rx.clone()),
                )))
            }
            None => None,
        };
        tracing::info!(addr = %http.local_addr()?, "serving http");
        let observed = Observed {
            name: "http",
            metrics: self.listener_metrics.clone(),
        };
        let result = listener::serve(
            http,
            app,
            limits,
            self.security.clone(),
            observed,
            stopped(stop_rx),
        )
        .await
        .context("http server failed");
        reload.abort();
        // Ingestion stops on the same signal; let it commit its positions.
        if let Some(task) = ingest_task {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        // Its last writes included: a server started next shows them.
        sharing.exchange_logged().await;
        if let Some(task) = trim {
            task.abort();
        }
        for task in job_tasks {
            task.abort();
        }
        // The gRPC and admin listeners stopped on the same signal; they drain their own
        // connections.
        if let Some(task) = admin_task {
            if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(35), task).await {
                tracing::warn!(error = %e, "admin server failed");
            }
        }
        if let Some(task) = grpc_task {
            if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(35), task).await {
                tracing::warn!(error = %e, "grpc server failed");
            }
        }
        // What the history staged is converted before the process ends, so a training set
        // built next sees it.
        if let Some(history) = self.history.clone() {
            match tokio::task::spawn_blocking(move || history.close()).await {
                Ok(Err(e)) => tracing::error!(error = %e, "converting the offline history failed"),
                Err(e) => tracing::error!(error = %e, "converting the offline history failed"),
                Ok(Ok(_)) => {}
            }
        }
        result
    }
}

impl Node {
    /// What the web console reads and acts on.
    fn console(&self, samples: MetricsHistory, http: &TcpListener) -> anyhow::Result<Console> {
        let public_url = match self.config.jobs.public_url.trim() {
            "" => {
                let scheme = if self.security.tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                format!("{scheme}://{}", http.local_addr()?)
            }
            url => url.trim_end_matches('/').to_owned(),
        };
        Ok(Console {
            registry: self.registry.clone(),
            server: self.server.clone(),
            ingestion: self.ingestion.clone(),
            executor: self.jobs.clone(),
            history: samples,
            freshness: self.writer.freshness().clone(),
            audit: self.audit.clone(),
            auth: self.security.auth.clone(),
            tls: self.security.tls.is_some(),
            repo_dir: self.config.repo.clone(),
            public_url,
        })
    }
}

/// The listeners' TLS (`[server.tls]`) and authentication (`[auth]`), or what is wrong with
/// their settings.
pub fn security(config: &Config) -> anyhow::Result<Security> {
    let tls = if config.server.tls.enabled() {
        let t = &config.server.tls;
        if t.key_file.trim().is_empty() {
            anyhow::bail!("server.tls.cert_file is set but server.tls.key_file is not");
        }
        Some(
            ServerTls::load(
                std::path::Path::new(t.cert_file.trim()),
                std::path::Path::new(t.key_file.trim()),
            )
            .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?,
        )
    } else {
        None
    };
    let http = reqwest::Client::builder()
        .build()
        .context("building the HTTP client of OIDC key fetches")?;
    let auth = Authenticator::new(&config.auth, http).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Security { tls, auth })
}

/// Refuses to serve a non-loopback address with authentication off, unless the config says
/// so: anyone reaching it could write features and operate jobs.
fn check_exposure(
    config: &Config,
    security: &Security,
    addresses: &[std::net::SocketAddr],
) -> anyhow::Result<()> {
    if security.auth.is_some() || config.auth.allow_unauthenticated {
        return Ok(());
    }
    if let Some(exposed) = addresses.iter().find(|a| !a.ip().is_loopback()) {
        anyhow::bail!(
            "refusing to serve {exposed} without authentication: it is not a loopback address, \
             so anyone who reaches it could read and write features and operate jobs. Turn on \
             [auth] (auth.enabled with API keys or an OIDC issuer), or set \
             auth.allow_unauthenticated = true if something in front of Cellar authenticates"
        );
    }
    Ok(())
}

/// The limits of every listener of a serving process, from `[server]`.
pub fn listener_limits(config: &Config) -> ListenerLimits {
    let ms = |v: u64| Duration::from_millis(v.max(1));
    let s = &config.server;
    ListenerLimits {
        header_timeout: ms(s.header_timeout_ms),
        body_timeout: ms(s.body_timeout_ms),
        idle_timeout: ms(s.idle_timeout_ms),
        max_connections: s.max_connections.max(1),
        max_in_flight: s.max_in_flight_requests.max(1),
        max_body_bytes: s.max_body_bytes,
    }
}

/// Polls the registry and swaps in the catalog of each newly applied version.
async fn reload_catalog(
    registry: Registry,
    server: Arc<FeatureServer>,
    ingestion: Option<Arc<StreamIngestion>>,
    freshness: Freshness,
    mut version: i64,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match registry.current().await {
            Ok(Some(applied)) if applied.version != version => {
                version = applied.version;
                server.reload(server.catalog_for(&applied.repo));
                freshness.set_objectives(applied.repo.freshness_objectives());
                if let Some(ingestion) = &ingestion {
                    ingestion.reload(&applied.repo);
                }
                tracing::info!(version, "serving a newly applied repo");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "registry poll failed"),
        }
    }
}

/// Periodically removes records past each group's retention (count and age), so that the
/// store does not keep what it will never serve.
async fn trim_retention(store: Arc<dyn OnlineStore>, server: Arc<FeatureServer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    // The first tick fires at once; trimming right at start-up would slow it down.
    tick.tick().await;
    loop {
        tick.tick().await;
        let catalog = server.catalog();
        let now = chrono::Utc::now().timestamp_millis();
        for group in catalog.groups() {
            let retention = &group.spec.retention;
            if retention.max_age.is_none() && retention.max_records.is_none() {
                continue;
            }
            match store.trim(&group.spec, now).await {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(group = %group.spec.name, removed, "trimmed records past retention")
                }
                Err(e) => {
                    tracing::warn!(group = %group.spec.name, error = %e, "retention trim failed")
                }
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Prometheus view of the remote tier: its counters and the circuit breaker's state.
#[derive(Clone)]
struct RemoteMetrics(Arc<RemoteTier>);

impl std::fmt::Debug for RemoteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemoteMetrics")
    }
}

impl prometheus_client::collector::Collector for RemoteMetrics {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let s = self.0.stats();
        let counters = [
            (
                "remote_cache_bypassed",
                "Reads that went to the store without Redis (breaker open or Redis failing)",
                s.bypassed,
            ),
            (
                "remote_cache_fills_queued",
                "Values queued for back-fill into Redis",
                s.fills_queued,
            ),
            (
                "remote_cache_fills_dropped",
                "Back-fills dropped: queue full or breaker open",
                s.fills_dropped,
            ),
            (
                "remote_cache_fills_applied",
                "Back-filled values written to Redis",
                s.fills_applied,
            ),
            (
                "remote_cache_fills_superseded",
                "Back-fills Redis refused because it held a newer event time",
                s.fills_superseded,
            ),
            (
                "remote_cache_writes",
                "Write-through and invalidation values written to Redis",
                s.writes,
            ),
            (
                "remote_cache_writes_skipped",
                "Write-through and invalidation values not written (breaker open or failure)",
                s.writes_skipped,
            ),
            (
                "remote_cache_invalidations_applied",
                "Invalidations written for skipped writes once Redis answered again",
                s.invalidations_applied,
            ),
            ("remote_cache_errors", "Redis calls that failed", s.errors),
            (
                "remote_cache_timeouts",
                "Redis calls that timed out",
                s.timeouts,
            ),
            (
                "remote_cache_breaker_trips",
                "Times the circuit breaker opened",
                s.breaker_trips,
            ),
        ];
        for (name, help, value) in counters {
            let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(m)?;
        }
        let m = encoder.encode_descriptor(
            "remote_cache_breaker_state",
            "Circuit breaker of the Redis tier: 0 closed, 1 open, 2 half-open",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.breaker.as_gauge()).encode(m)?;
        let m = encoder.encode_descriptor(
            "remote_cache_backfill_queue_depth",
            "Back-fill and refresh jobs waiting to be written to Redis",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.backfill_queue_depth as i64).encode(m)?;
        let m = encoder.encode_descriptor(
            "remote_cache_skipped_keys",
            "Keys of skipped writes waiting to be invalidated in Redis (their groups are read \
             from the store meanwhile)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.skipped_keys_held as i64).encode(m)?;
        Ok(())
    }
}
