//! Runtime configuration: defaults, then a TOML file, then `CELLAR_*` environment variables.

use std::path::{Path, PathBuf};

use cellar_ingest_stream::kafka::{
    KafkaConnection, KafkaSecurity, SaslMechanism, SecurityProtocol,
};
use cellar_spec::limits::EventTimeBounds;
use cellar_spec::secret;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Every setting of a Cellar process. Each has a default that works on one machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where embedded state lives: the store, and the SQLite registry unless one is given.
    pub data_dir: PathBuf,
    /// The feature repo directory that `plan` and `apply` read.
    pub repo: PathBuf,
    pub server: ServerConfig,
    pub registry: RegistryConfig,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub ingest: IngestConfig,
    pub jobs: JobsConfig,
    pub event_time: EventTimeConfig,
    /// Who may call the server, and what each caller may do.
    pub auth: cellar_auth::AuthConfig,
    pub history: HistoryConfig,
}

/// The offline history: every record written online, kept in Parquet for training sets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Whether writes are kept in the history. Off, nothing is kept and no training set can be
    /// built from what Cellar wrote.
    pub enabled: bool,
    /// Where the history's Parquet files go: a directory, or `s3://BUCKET/PREFIX` in an
    /// S3-compatible bucket; empty means `<data_dir>/history`.
    pub path: String,
    /// How often staged records are converted to Parquet: the most a training set built by
    /// another process lags behind the writes.
    pub convert_interval_secs: u64,
    /// Bytes a process may hold staged; past them (conversion failing or behind) writes fail,
    /// retryably, instead of filling the disk.
    pub max_staged_bytes: u64,
    /// Largest spine `POST /v1/training-sets` takes, bytes.
    pub max_spine_bytes: usize,
}

/// The event times accepted from pushes, stream events and batch rows; outside them a push is
/// refused, an event dead-lettered and a row rejected, each naming the range.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    /// The earliest event time, RFC 3339.
    pub earliest: String,
    /// How far ahead of the clock an event time may be (`1d`, `2h`, ...).
    pub max_future: String,
}

impl EventTimeConfig {
    /// The bounds these settings describe, or what is wrong with them.
    pub fn bounds(&self) -> Result<EventTimeBounds, String> {
        let earliest =
            cellar_spec::value::parse_rfc3339(self.earliest.trim()).ok_or_else(|| {
                format!(
                "event_time.earliest: `{}` is not an RFC 3339 time such as 2000-01-01T00:00:00Z",
                self.earliest
            )
            })?;
        let max_future = cellar_spec::parse::parse_duration(&self.max_future)
            .map_err(|e| format!("event_time.max_future: {e}"))?;
        EventTimeBounds::new(earliest, max_future).map_err(|e| format!("event_time: {e}"))
    }
}

/// Batch jobs: the executor and scheduler a serving process runs, and alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Whether `serve` runs batch jobs: scheduled ingestions, and jobs submitted by
    /// `cellar backfill` or `POST /v1/jobs`.
    pub in_server: bool,
    /// Shards run at once by one process; 0 means one per core.
    pub shard_workers: usize,
    /// Attempts of a failing shard in all, before its job fails.
    pub max_attempts: u32,
    /// Wait before a failed shard's second attempt, milliseconds; doubled for each further one.
    pub retry_backoff_ms: u64,
    /// A running shard whose process wrote no progress for this long is run again elsewhere.
    pub lease_secs: u64,
    /// How often the scheduler looks for due periods and the executor for jobs to run.
    pub poll_interval_ms: u64,
    /// Where rejected rows go; empty means `<data_dir>/rejects`.
    pub rejects_dir: String,
    /// URL alerts are POSTed to (JSON with a `text` field, as Slack's incoming webhooks take);
    /// empty: no alerts. A credential: best given as a secret reference (`${SLACK_WEBHOOK}`).
    pub alert_webhook: String,
    /// PEM file of CAs trusted for an `https://` webhook besides the system's; empty: none.
    pub alert_ca_file: String,
    /// Alert about a job submitted, runnable or running with no progress for this long.
    pub stuck_after_secs: u64,
    /// Base URL of the job pages alerts link to; empty means `http://<server.listen>`.
    pub public_url: String,
    /// Who runs the shards of jobs this process submits: `local` (its own pool) or `kafka`
    /// (`cellar worker` processes, fed through `kafka_topic` on `ingest.kafka.brokers`; the
    /// store must then be one they share, not the embedded one).
    pub runner: JobRunner,
    /// Topic of shard tasks of the `kafka` runner.
    pub kafka_topic: String,
    /// Partitions of that topic when Cellar creates it: at most this many workers share a job.
    pub kafka_partitions: i32,
    /// Consumer group of `cellar worker` processes.
    pub kafka_group: String,
}

/// Where batch jobs' shards run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobRunner {
    Local,
    Kafka,
}

/// Stream ingestion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Whether `serve` also runs the stream pipelines (on the embedded log, or on Kafka when
    /// brokers are set); `cellar ingest` runs them without serving.
    pub in_server: bool,
    /// Kafka, instead of the embedded log, when `brokers` is set.
    pub kafka: KafkaConfig,
    /// Attempts of a failing event in all; after the last it is dead-lettered.
    pub max_attempts: u32,
    /// Backoff before the second attempt, milliseconds; doubled for each further one.
    pub retry_backoff_ms: u64,
    /// Topic failed events wait in between attempts.
    pub retry_topic: String,
    /// Topic of events given up on (poison, or past the last attempt); `cellar dead-letters`
    /// lists and re-drives them.
    pub dead_letter_topic: String,
    /// On the embedded log, records every consumer has processed are deleted once they are
    /// this old (seconds); topics no ingestion consumes keep records this long. The
    /// dead-letter topic is kept whole. 0 keeps everything.
    pub log_retention_secs: u64,
}

/// The Kafka cluster stream ingestion consumes and publishes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`; empty means the embedded log.
    pub brokers: String,
    /// Consumer group of the main pipeline, shared by every `cellar ingest` worker of a
    /// deployment; the retry pipeline's group is this with `-retry`.
    pub group: String,
    /// Partitions of the retry and dead-letter topics when Cellar creates them.
    pub partitions: i32,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// PEM file of the CAs that sign the brokers' certificates; empty: the system's.
    pub ca_file: String,
    /// PEM client certificate and its key, for brokers that authenticate clients by certificate.
    pub cert_file: String,
    pub key_file: String,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` or `AWS_MSK_IAM`, with a `sasl_*` protocol.
    #[serde(default)]
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: String,
    /// A secret reference: `${NAME}` (an environment variable) or `${file:PATH}`.
    pub sasl_password: String,
    /// Further librdkafka properties for every client (`session.timeout.ms`, ...); values
    /// may be secret references (`"ssl.key.password" = "${KEY_PASSWORD}"`).
    pub properties: std::collections::BTreeMap<String, String>,
}

impl IngestConfig {
    /// The retry and dead-letter topics, `(retry, dead letter)`: both named, and not the same
    /// topic (dead letters would be retried, and retries listed as dead).
    pub fn failure_topics(&self) -> Result<(String, String), String> {
        let (retry, dead) = (self.retry_topic.trim(), self.dead_letter_topic.trim());
        if retry.is_empty() || dead.is_empty() {
            return Err("ingest.retry_topic and ingest.dead_letter_topic must not be empty".into());
        }
        if retry == dead {
            return Err(format!(
                "ingest.retry_topic and ingest.dead_letter_topic are both `{retry}`: give each its own topic"
            ));
        }
        Ok((retry.to_owned(), dead.to_owned()))
    }
}

impl KafkaConfig {
    /// Whether Kafka is configured.
    pub fn enabled(&self) -> bool {
        !self.brokers.trim().is_empty()
    }

    /// How every Kafka client reaches the cluster, or the setting that is wrong (checked
    /// without IO; files and secrets are read when a client is built).
    pub fn connection(&self) -> Result<KafkaConnection, String> {
        let security = KafkaSecurity {
            protocol: self.security_protocol,
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            sasl_mechanism: self.sasl_mechanism,
            sasl_username: self.sasl_username.clone(),
            sasl_password: self.sasl_password.clone(),
        };
        security
            .validate()
            .map_err(|e| format!("ingest.kafka.{e}"))?;
        Ok(KafkaConnection {
            bootstrap_servers: self.brokers.clone(),
            security,
            properties: self
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// The serving process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// HTTP address.
    pub listen: String,
    /// gRPC address.
    pub grpc_listen: String,
    /// Address of a listener of their own for the operator routes (jobs, job pages, dead
    /// letters), behind the same TLS and authentication; empty: they are served on `listen`.
    pub admin_listen: String,
    pub max_entities_per_request: usize,
    pub max_push_records: usize,
    pub max_body_bytes: usize,
    /// Deadline of one read, in milliseconds.
    pub deadline_ms: u64,
    /// `top_n` of time-series groups when a request does not give one.
    pub default_top_n: usize,
    pub max_top_n: usize,
    /// How often the server looks for a newly applied repo, in seconds.
    pub reload_interval_secs: u64,
    /// Threads serving requests; 0 means one per core.
    pub worker_threads: usize,
    /// Most feature values one read may answer: entity rows x records per row (`top_n`, 1 for
    /// attribute groups) x features, summed over the groups asked for. Past it: 413.
    pub max_request_cost: u64,
    /// A client must send a request's headers within this, milliseconds (on HTTP/2, its first
    /// request after connecting); HTTP/1 connections waiting for their next request too.
    pub header_timeout_ms: u64,
    /// A client must send a request's whole body within this, milliseconds; past it: 408.
    pub body_timeout_ms: u64,
    /// A connection with no bytes moving for this long is closed (after the request in
    /// progress, if any), milliseconds.
    pub idle_timeout_ms: u64,
    /// Most open connections per listener (HTTP, gRPC); further ones are closed at once.
    pub max_connections: usize,
    /// Most requests in progress per listener; further ones get 503 with `Retry-After`.
    pub max_in_flight_requests: usize,
    /// TLS of the HTTP and gRPC listeners.
    pub tls: ServerTlsConfig,
    /// Serve the web console under `/ui` (with the operator routes: on `admin_listen` when
    /// set).
    pub console: bool,
}

/// The listeners' certificate: PEM files, read again when they change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The certificate chain; empty: plain HTTP and gRPC.
    pub cert_file: String,
    /// Its private key.
    pub key_file: String,
    /// How often the files are looked at for a renewed certificate, seconds.
    pub reload_secs: u64,
}

impl ServerTlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.trim().is_empty()
    }
}

/// The registry of applied specs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `sqlite://PATH` or `postgres://...`; empty means `sqlite://<data_dir>/registry.db`.
    /// A password may be a secret reference (`postgres://cellar:${PG_PASSWORD}@db/cellar`).
    pub url: String,
}

/// The online store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (local disk, the default), `dynamodb` or `redis`.
    pub backend: StoreBackend,
    /// Embedded store directory; empty means `<data_dir>/store`.
    pub path: String,
    pub dynamodb: DynamoDbConfig,
    pub redis: RedisStoreConfig,
    /// How often a serving process removes records past their group's retention, in
    /// seconds; 0 turns it off.
    pub trim_interval_secs: u64,
}

/// Which online store backend holds the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreBackend {
    Embedded,
    Dynamodb,
    Redis,
}

/// The DynamoDB table of the `dynamodb` backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbConfig {
    /// The table holding every group's records; created (on-demand billing) when missing.
    pub table: String,
    pub region: String,
    /// A DynamoDB-compatible endpoint instead of AWS's (e.g. `http://127.0.0.1:8000`);
    /// empty means AWS. Credentials come from the usual AWS environment and profiles.
    pub endpoint: String,
}

/// The Redis of the `redis` backend, for small deployments: the store held in memory, as
/// durable as Redis's own persistence (`appendonly yes`) makes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// A standalone Redis, `redis://[:password@]host:port[/db]` (`rediss://` for TLS).
    pub url: String,
    /// With a `rediss://` URL: PEM file of the CAs that sign the server's certificate (empty:
    /// the system's roots), and a PEM client certificate and its key (empty: none).
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    /// Put before every key of the store, so deployments (and the cache tier, whose keys start
    /// with `cache.remote_key_prefix`) can share a Redis.
    pub key_prefix: String,
}

/// Cache tiers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Byte budget of the in-process tier.
    pub local_max_bytes: u64,
    /// Redis URLs of the remote tier, used by groups whose `serving.tiers` name `remote`:
    /// one URL for a standalone Redis, several for a cluster's seed nodes; empty: no remote
    /// tier.
    pub remote_urls: Vec<String>,
    /// With `rediss://` URLs: PEM file of the CAs that sign the servers' certificates (empty:
    /// the system's roots), and a PEM client certificate and its key (empty: none).
    pub remote_ca_file: String,
    pub remote_cert_file: String,
    pub remote_key_file: String,
    /// Put before every Redis key, so deployments can share a Redis.
    pub remote_key_prefix: String,
    /// Longest wait for a Redis read, milliseconds; past it the read goes to the store.
    pub remote_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".cellar"),
            repo: PathBuf::from("feature_repo"),
            server: ServerConfig {
                listen: "127.0.0.1:6566".into(),
                grpc_listen: "127.0.0.1:6567".into(),
                admin_listen: String::new(),
                max_entities_per_request: 1000,
                max_push_records: 10_000,
                max_body_bytes: 4 * 1024 * 1024,
                deadline_ms: 1000,
                default_top_n: 50,
                max_top_n: 1000,
                reload_interval_secs: 5,
                worker_threads: 0,
                max_request_cost: 1_000_000,
                header_timeout_ms: 10_000,
                body_timeout_ms: 30_000,
                idle_timeout_ms: 60_000,
                max_connections: 2048,
                max_in_flight_requests: 512,
                console: true,
                tls: ServerTlsConfig {
                    cert_file: String::new(),
                    key_file: String::new(),
                    reload_secs: 10,
                },
            },
            registry: RegistryConfig { url: String::new() },
            store: StoreConfig {
                backend: StoreBackend::Embedded,
                path: String::new(),
                dynamodb: DynamoDbConfig {
                    table: "cellar".into(),
                    region: "us-east-1".into(),
                    endpoint: String::new(),
                },
                redis: RedisStoreConfig {
                    url: "redis://127.0.0.1:6379".into(),
                    ca_file: String::new(),
                    cert_file: String::new(),
                    key_file: String::new(),
                    key_prefix: "cellar:store:".into(),
                },
                trim_interval_secs: 600,
            },
            cache: CacheConfig {
                local_max_bytes: 512 * 1024 * 1024,
                remote_urls: Vec::new(),
                remote_ca_file: String::new(),
                remote_cert_file: String::new(),
                remote_key_file: String::new(),
                remote_key_prefix: "cellar:".into(),
                remote_timeout_ms: 50,
            },
            ingest: IngestConfig {
                in_server: true,
                kafka: KafkaConfig {
                    brokers: String::new(),
                    group: "cellar-ingest".into(),
                    partitions: 8,
                    security_protocol: SecurityProtocol::Plaintext,
                    ca_file: String::new(),
                    cert_file: String::new(),
                    key_file: String::new(),
                    sasl_mechanism: None,
                    sasl_username: String::new(),
                    sasl_password: String::new(),
                    properties: Default::default(),
                },
                max_attempts: 5,
                retry_backoff_ms: 1000,
                retry_topic: "cellar-retry".into(),
                dead_letter_topic: "cellar-dead-letter".into(),
                log_retention_secs: 86_400,
            },
            jobs: JobsConfig {
                in_server: true,
                shard_workers: 0,
                max_attempts: 3,
                retry_backoff_ms: 1000,
                lease_secs: 30,
                poll_interval_ms: 2000,
                rejects_dir: String::new(),
                alert_webhook: String::new(),
                alert_ca_file: String::new(),
                stuck_after_secs: 1800,
                public_url: String::new(),
                runner: JobRunner::Local,
                kafka_topic: "cellar-batch-shards".into(),
                kafka_partitions: 8,
                kafka_group: "cellar-workers".into(),
            },
            event_time: EventTimeConfig {
                earliest: "2000-01-01T00:00:00Z".into(),
                max_future: "1d".into(),
            },
            auth: cellar_auth::AuthConfig::default(),
            history: HistoryConfig {
                enabled: true,
                path: String::new(),
                convert_interval_secs: 60,
                max_staged_bytes: cellar_history::staging::DEFAULT_MAX_STAGED_BYTES,
                max_spine_bytes: 1 << 30,
            },
        }
    }
}

/// Top-level names of the config, the only `CELLAR_*` variables read as settings.
const SECTIONS: [&str; 11] = [
    "data_dir",
    "repo",
    "server",
    "registry",
    "store",
    "cache",
    "ingest",
    "jobs",
    "event_time",
    "auth",
    "history",
];

impl Config {
    /// Loads the configuration: defaults, then `file` (if given), then environment variables
    /// such as `CELLAR_SERVER__LISTEN=0.0.0.0:6566` (sections separated by `__`).
    pub fn load(file: Option<&Path>) -> Result<Config, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    file.display()
                ))));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment
            .merge(Env::prefixed("CELLAR_").split("__").filter(|k| {
                // Other variables share the prefix (the tests' CELLAR_TEST_*): only the
                // config's own top-level names are settings.
                let top = k.as_str().split('.').next().unwrap_or_default();
                SECTIONS.iter().any(|s| top.eq_ignore_ascii_case(s))
            }))
            .extract()
            .map_err(Box::new)
    }

    /// The registry URL, defaulting to a SQLite file in the data directory.
    pub fn registry_url(&self) -> String {
        if self.registry.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("registry.db").display())
        } else {
            self.registry.url.clone()
        }
    }

    /// Where rejected rows of batch jobs go.
    pub fn rejects_dir(&self) -> PathBuf {
        if self.jobs.rejects_dir.is_empty() {
            self.data_dir.join("rejects")
        } else {
            PathBuf::from(&self.jobs.rejects_dir)
        }
    }

    /// The base URL of job pages, for alert links.
    pub fn public_url(&self) -> String {
        if self.jobs.public_url.is_empty() {
            format!("http://{}", self.server.listen)
        } else {
            self.jobs.public_url.clone()
        }
    }

    /// Moves the server to the addresses given on the command line. An HTTP address alone
    /// moves gRPC with it, to the next port on the same host, so that two servers started
    /// with different `--listen` do not both claim the default gRPC port.
    pub fn set_listen(&mut self, http: Option<String>, grpc: Option<String>) -> Result<(), String> {
        if let Some(http) = http {
            if grpc.is_none() {
                self.server.grpc_listen = next_port(&http)?;
            }
            self.server.listen = http;
        }
        if let Some(grpc) = grpc {
            self.server.grpc_listen = grpc;
        }
        Ok(())
    }

    /// Where the offline history's files are: `history.path`, a directory or a prefix in an
    /// S3-compatible bucket (`s3://BUCKET/PREFIX`, its client configured from the environment
    /// as batch sources' are); by default `<data_dir>/history`.
    pub fn history_storage(&self) -> anyhow::Result<cellar_history::Storage> {
        let path = self.history.path.trim();
        if path.is_empty() {
            return Ok(cellar_history::Storage::Local(
                self.data_dir.join("history"),
            ));
        }
        if path.starts_with("s3://") {
            let (store, describe) = cellar_ingest_batch::bucket_client(path)
                .map_err(|e| anyhow::anyhow!("history.path: {e}"))?;
            return Ok(cellar_history::Storage::bucket(store, path, describe));
        }
        if let Some((scheme, _)) = path.split_once("://") {
            anyhow::bail!(
                "history.path: `{scheme}://` is not a place Cellar keeps its history: give a \
                 directory or an s3://BUCKET/PREFIX URL"
            );
        }
        Ok(cellar_history::Storage::Local(PathBuf::from(path)))
    }

    /// Where records wait to be converted into the history, for a process of `role`
    /// (`serve`, `ingest`, `worker`, `cli`, or one of those numbered when several run at
    /// once): each process stages apart, and a restarted one finds what it left.
    pub fn history_staging_path(&self, role: &str) -> PathBuf {
        self.data_dir.join("history-staging").join(role)
    }

    /// Where the audit log is appended.
    pub fn audit_log_path(&self) -> PathBuf {
        if self.auth.audit_log.is_empty() {
            self.data_dir.join("audit.log")
        } else {
            PathBuf::from(&self.auth.audit_log)
        }
    }

    /// Checks the settings that may hold credentials (the registry and Redis URLs, the alert
    /// webhook, Kafka properties): a malformed secret reference is an error naming its
    /// setting; the answer names the settings holding a password written out rather than
    /// referred to, for a warning. Those are allowed, since this file stays on the machine
    /// (unlike specs, which are stored in the registry), but a reference keeps the secret out
    /// of the file and of anything that shows settings. References are read later, when each
    /// client is built.
    pub fn check_secrets(&self) -> Result<Vec<String>, String> {
        let mut urls = vec![
            ("registry.url".to_owned(), self.registry.url.as_str()),
            ("store.redis.url".to_owned(), self.store.redis.url.as_str()),
        ];
        for (i, url) in self.cache.remote_urls.iter().enumerate() {
            urls.push((format!("cache.remote_urls[{i}]"), url.as_str()));
        }
        let mut written_out = Vec::new();
        for (setting, url) in urls {
            match secret::literal_password(url) {
                Ok(None) => {}
                Ok(Some(_)) => written_out.push(setting),
                Err(e) => return Err(format!("{setting}: {e}")),
            }
        }
        secret::references(&self.jobs.alert_webhook)
            .map_err(|e| format!("jobs.alert_webhook: {e}"))?;
        let sasl_password = &self.ingest.kafka.sasl_password;
        secret::references(sasl_password)
            .map_err(|e| format!("ingest.kafka.sasl_password: {e}"))?;
        if !sasl_password.is_empty() && !secret::only_references(sasl_password) {
            written_out.push("ingest.kafka.sasl_password".to_owned());
        }
        for (name, value) in &self.ingest.kafka.properties {
            let setting = format!("ingest.kafka.properties.\"{name}\"");
            secret::references(value).map_err(|e| format!("{setting}: {e}"))?;
            let holds_secret = name.contains("password") || name.contains("secret");
            if holds_secret && !value.is_empty() && !secret::only_references(value) {
                written_out.push(setting);
            }
        }
        Ok(written_out)
    }

    /// The embedded store directory.
    pub fn store_path(&self) -> PathBuf {
        if self.store.path.is_empty() {
            self.data_dir.join("store")
        } else {
            PathBuf::from(&self.store.path)
        }
    }
}

/// `host:port` with the port after the given one; port 0 (any free port) stays 0.
fn next_port(addr: &str) -> Result<String, String> {
    let invalid = || format!("listen address {addr:?} is not HOST:PORT");
    let (host, port) = addr.rsplit_once(':').ok_or_else(invalid)?;
    let port: u16 = port.parse().map_err(|_| invalid())?;
    let next = match port {
        0 => 0,
        u16::MAX => {
            return Err(format!(
                "listen address {addr:?} has the last port: give --grpc-listen as well"
            ))
        }
        p => p + 1,
    };
    Ok(format!("{host}:{next}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_address_alone_moves_grpc_to_the_next_port() {
        let mut c = Config::default();
        c.set_listen(Some("127.0.0.1:7100".into()), None).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:7100");
        assert_eq!(c.server.grpc_listen, "127.0.0.1:7101");

        let mut c = Config::default();
        c.set_listen(Some("[::1]:0".into()), None).unwrap();
        assert_eq!(c.server.grpc_listen, "[::1]:0");

        let mut c = Config::default();
        c.set_listen(Some("127.0.0.1:7100".into()), Some("127.0.0.1:9000".into()))
            .unwrap();
        assert_eq!(c.server.grpc_listen, "127.0.0.1:9000");

        let mut c = Config::default();
        c.set_listen(None, Some("127.0.0.1:9000".into())).unwrap();
        assert_eq!(c.server.listen, "127.0.0.1:6566");
        assert_eq!(c.server.grpc_listen, "127.0.0.1:9000");

        let mut c = Config::default();
        let err = c.set_listen(Some("localhost".into()), None).unwrap_err();
        assert!(err.contains("HOST:PORT"), "{err}");
        let err = c.set_listen(Some("h:65535".into()), None).unwrap_err();
        assert!(err.contains("--grpc-listen"), "{err}");
    }

    #[test]
    // `Jail`'s closure must return figment's own (large) error type.
    #[allow(clippy::result_large_err)]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cellar.toml");
        std::fs::write(
            &file,
            "data_dir = \"/tmp/x\"\n[server]\nlisten = \"127.0.0.1:7000\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("CELLAR_SERVER__MAX_ENTITIES_PER_REQUEST", "7");
            jail.set_env("CELLAR_TEST_SOMETHING", "not a setting");
            jail.set_env("CELLAR_HISTORY__PATH", "s3://bucket/history");
            let c = Config::load(Some(&file)).unwrap();
            assert_eq!(c.history.path, "s3://bucket/history");
            assert_eq!(c.server.listen, "127.0.0.1:7000");
            assert_eq!(c.server.max_entities_per_request, 7);
            assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(c.registry_url(), "sqlite:///tmp/x/registry.db");
            Ok(())
        });
    }

    #[test]
    fn every_section_of_the_config_can_be_set_from_the_environment() {
        let defaults = serde_json::to_value(Config::default()).unwrap();
        let mut sections: Vec<&str> = defaults
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        sections.sort_unstable();
        let mut read = SECTIONS.to_vec();
        read.sort_unstable();
        assert_eq!(read, sections);
    }

    #[test]
    fn the_redis_store_is_chosen_and_configured_in_its_section() {
        let defaults = Config::default();
        assert_eq!(defaults.store.redis.url, "redis://127.0.0.1:6379");
        assert_eq!(defaults.store.redis.key_prefix, "cellar:store:");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cellar.toml");
        std::fs::write(
            &file,
            "[store]\nbackend = \"redis\"\n[store.redis]\nurl = \"redis://10.0.0.5:6380/2\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Redis);
        assert_eq!(c.store.redis.url, "redis://10.0.0.5:6380/2");
        assert_eq!(c.store.redis.key_prefix, "cellar:store:");
    }

    #[test]
    fn event_time_bounds_default_to_2000_and_a_day_ahead_and_are_checked() {
        let bounds = Config::default().event_time.bounds().unwrap();
        assert_eq!(bounds, EventTimeBounds::default());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cellar.toml");
        std::fs::write(
            &file,
            "[event_time]\nearliest = \"1990-01-01T00:00:00Z\"\nmax_future = \"2h\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        let bounds = c.event_time.bounds().unwrap();
        assert_eq!(bounds.earliest_ms(), 631_152_000_000);
        assert_eq!(bounds.max_future(), std::time::Duration::from_secs(7200));
        let mut c = Config::default();
        c.event_time.earliest = "yesterday".into();
        assert!(c
            .event_time
            .bounds()
            .unwrap_err()
            .contains("event_time.earliest"));
        c.event_time.earliest = "3000-01-01T00:00:00Z".into();
        assert!(c.event_time.bounds().unwrap_err().contains("to now"));
        let mut c = Config::default();
        c.event_time.max_future = "200000000000d".into();
        assert!(c
            .event_time
            .bounds()
            .unwrap_err()
            .contains("event_time.max_future: duration `200000000000d` is over the limit"));
    }

    #[test]
    fn passwords_written_out_are_named_and_malformed_references_refused() {
        let mut c = Config::default();
        assert_eq!(c.check_secrets(), Ok(vec![]));
        c.registry.url = "postgres://cellar:${PG_PASSWORD}@db/cellar".into();
        c.store.redis.url = "redis://:hush@10.0.0.5:6379".into();
        c.cache.remote_urls = vec![
            "redis://:${file:/run/secrets/redis}@10.0.0.6:6379".into(),
            "redis://10.0.0.7:6379?password=hush".into(),
        ];
        c.jobs.alert_webhook = "${SLACK_WEBHOOK}".into();
        c.ingest
            .kafka
            .properties
            .insert("sasl.password".into(), "hush".into());
        c.ingest
            .kafka
            .properties
            .insert("ssl.key.password".into(), "${KEY_PASSWORD}".into());
        c.ingest
            .kafka
            .properties
            .insert("sasl.username".into(), "cellar".into());
        let named = c.check_secrets().unwrap();
        assert_eq!(
            named,
            [
                "store.redis.url",
                "cache.remote_urls[1]",
                "ingest.kafka.properties.\"sasl.password\""
            ]
        );
        assert!(!named.iter().any(|n| n.contains("hush")));

        c.jobs.alert_webhook = "https://hooks.example/${SLACK HOOK}".into();
        let err = c.check_secrets().unwrap_err();
        assert!(
            err.starts_with("jobs.alert_webhook: `${SLACK HOOK}`"),
            "{err}"
        );
        c.jobs.alert_webhook = String::new();
        c.registry.url = "postgres://cellar:${PG_PASSWORD@db/cellar".into();
        let err = c.check_secrets().unwrap_err();
        assert!(
            err.starts_with("registry.url: a `${` is not closed"),
            "{err}"
        );
    }

    #[test]
    fn kafka_security_settings_are_read_and_wrong_combinations_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cellar.toml");
        std::fs::write(
            &file,
            "[ingest.kafka]\nbrokers = \"b:9096\"\nsecurity_protocol = \"sasl_ssl\"\n\
             ca_file = \"/etc/ca.pem\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
             sasl_username = \"cellar\"\nsasl_password = \"${KAFKA_PASSWORD}\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&file)).unwrap();
        let connection = c.ingest.kafka.connection().unwrap();
        assert_eq!(connection.bootstrap_servers, "b:9096");
        assert_eq!(connection.security.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(
            connection.security.sasl_mechanism,
            Some(SaslMechanism::ScramSha512)
        );
        assert_eq!(connection.security.sasl_password, "${KAFKA_PASSWORD}");

        let mut c = Config::default();
        c.ingest.kafka.security_protocol = SecurityProtocol::Ssl;
        c.ingest.kafka.sasl_mechanism = Some(SaslMechanism::Plain);
        let err = c.ingest.kafka.connection().unwrap_err();
        assert!(
            err.starts_with("ingest.kafka.sasl_mechanism: is `PLAIN`"),
            "{err}"
        );

        std::fs::write(&file, "[ingest.kafka]\nsasl_mechanism = \"GSSAPI\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("GSSAPI") && err.contains("sasl_mechanism"),
            "{err}"
        );
    }

    #[test]
    fn unknown_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cellar.toml");
        std::fs::write(&file, "[server]\nlisten_addr = \"x\"\n").unwrap();
        let err = Config::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("listen_addr"), "{err}");
    }
}
