//! `cellar`: a real-time feature platform in one binary.

use std::io::IsTerminal as _;
use std::path::PathBuf;

use anyhow::Context as _;
use cellar::config::Config;
use cellar::deadletter::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use cellar::node::{shutdown_signal, Node};
use cellar::{client, quickstart, repo};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

// The serving path allocates many small, short-lived buffers per request; mimalloc's
// thread-local free lists serve them faster than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "cellar", version, about = "A real-time feature platform")]
struct Cli {
    /// Runtime config file (TOML); `CELLAR_*` environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Directory of embedded state (store, SQLite registry).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Feature repo directory.
    #[arg(long, global = true)]
    repo: Option<PathBuf>,
    /// API key or OIDC token sent to the server (`Authorization: Bearer`).
    #[arg(long, global = true, env = "CELLAR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust for the server's TLS certificate, beside the system's.
    #[arg(long, global = true, env = "CELLAR_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write an example feature repo, apply it, load sample data and serve it.
    Quickstart {
        /// HTTP address.
        #[arg(long)]
        listen: Option<String>,
        /// gRPC address; default: the port after `--listen`'s, when that is given.
        #[arg(long)]
        grpc_listen: Option<String>,
    },
    /// Serve features over HTTP and gRPC.
    Serve {
        /// HTTP address.
        #[arg(long)]
        listen: Option<String>,
        /// gRPC address; default: the port after `--listen`'s, when that is given.
        #[arg(long)]
        grpc_listen: Option<String>,
    },
    /// Show what `apply` would add, change or remove.
    Plan,
    /// Validate the feature repo and apply it to the registry.
    Apply {
        /// Make breaking changes: retire removed and retyped features (their stored values are
        /// never served again) and move groups whose kind, entity or key changed to a new,
        /// empty storage generation. Without it, an apply with breaking changes is refused.
        #[arg(long)]
        allow_breaking: bool,
    },
    /// Fetch features from a running server and print them as tables.
    Get {
        /// Entity key as key=value; repeat for more rows.
        #[arg(long = "entity", short = 'e', required = true)]
        entities: Vec<String>,
        /// Request data of on-demand groups as field=value (JSON if it parses: 52.5, true,
        /// [1,2]; else text); repeat for more rows.
        #[arg(long = "request", short = 'r')]
        request: Vec<String>,
        /// Feature group to read; repeat for more.
        #[arg(long = "group", short = 'g')]
        groups: Vec<String>,
        /// Only these features (of every group given).
        #[arg(long = "feature", short = 'f')]
        features: Vec<String>,
        /// Feature service to read instead of groups.
        #[arg(long)]
        service: Option<String>,
        #[arg(long)]
        top_n: Option<usize>,
        /// Time-series window such as 30m or 7d.
        #[arg(long)]
        window: Option<String>,
        /// Print the JSON answer instead of tables.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "http://127.0.0.1:6566")]
        server: String,
    },
    /// Consume the embedded event log into the store (without serving), until stopped.
    Ingest {
        /// Stop once every event in the log is applied and committed.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Send events (JSON lines, from a file or stdin) to a running server's event log.
    Produce {
        /// Topic the events go to.
        #[arg(long, short = 't')]
        topic: String,
        /// File of JSON lines; `-` or nothing reads stdin.
        file: Option<PathBuf>,
        #[arg(long, default_value = "http://127.0.0.1:6566")]
        server: String,
        /// Number the events as this producer, so a re-run appends only what is missing.
        /// Default for a file: derived from its path (re-running on it resumes); stdin has
        /// none unless given.
        #[arg(long)]
        producer_id: Option<String>,
    },
    /// Serve a fixed body from a bare HTTP server: the serving benchmark's baseline.
    #[command(hide = true)]
    BenchBaseline {
        #[arg(long, default_value = "127.0.0.1:6591")]
        listen: String,
        #[arg(long, default_value_t = 200)]
        body_bytes: usize,
        /// How long `POST /source` (an external source of on-demand features) takes to answer.
        #[arg(long, default_value_t = 2)]
        source_delay_ms: u64,
    },
    /// Push records (a /v1/push JSON body, from a file or stdin) to a running server.
    Push {
        /// File with the body; `-` or nothing reads stdin.
        file: Option<PathBuf>,
        #[arg(long, default_value = "http://127.0.0.1:6566")]
        server: String,
    },
    /// List and re-drive the events stream ingestion gave up on (the dead-letter topic).
    ///
    /// With the embedded log, the running server owns the log: these commands talk to it
    /// (`--server`, default the configured `server.listen`). With Kafka (`ingest.kafka.brokers`
    /// set) they read and write Kafka directly, unless `--server` is given.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// API keys of the server's authentication.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Load an ingestion's batch data once (history, or a period of it), with a progress bar.
    ///
    /// A server answering at `server.listen` (or `--server`) runs the job; otherwise this
    /// process does. Rows outside `--from`/`--to` (by the ingestion's event time) are skipped.
    Backfill {
        /// The batch ingestion to run.
        ingestion: String,
        /// Start of the period: RFC 3339 or YYYY-MM-DD (UTC).
        #[arg(long)]
        from: Option<String>,
        /// End of the period, exclusive: RFC 3339 or YYYY-MM-DD (UTC).
        #[arg(long)]
        to: Option<String>,
        /// Attempts of a failing shard (default: `jobs.max_attempts`).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        max_attempts: Option<u32>,
        /// Server to run it on.
        #[arg(long)]
        server: Option<String>,
    },
    /// Run batch shards handed out through Kafka (`jobs.runner = "kafka"`), until stopped.
    ///
    /// Any number of workers, on any machines sharing the registry, store and Kafka, take the
    /// shard tasks of `jobs.kafka_topic` as one consumer group (`jobs.kafka_group`).
    Worker,
    /// List, show, retry and cancel batch jobs (from the registry).
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Build a training set: each row of a spine (entity keys, a timestamp, labels) with the
    /// features as they were at its timestamp, from the offline history.
    TrainingSet {
        /// The spine: a Parquet or CSV file.
        #[arg(long, required_unless_present_any = ["logged", "spine_sql"], conflicts_with_all = ["logged", "spine_sql"])]
        spine: Option<PathBuf>,
        /// The spine as a query on the PostgreSQL database of --spine-db.
        #[arg(long, requires = "spine_db", conflicts_with = "logged")]
        spine_sql: Option<String>,
        /// The database of --spine-sql: a PostgreSQL URL, its password as a reference
        /// (`postgres://u:${PG_PASSWORD}@db/app`) read from the environment or a file.
        #[arg(long, requires = "spine_sql")]
        spine_db: Option<String>,
        /// Join labels to the answers this feature service logged (with --labels) instead of
        /// recomputing features.
        #[arg(long, requires = "labels")]
        logged: Option<String>,
        /// With --logged: the labels, with a `request_id` column (the id each answer was
        /// logged under), or the entity key columns and a timestamp (the newest answer served
        /// at or before it).
        #[arg(long, requires = "logged")]
        labels: Option<PathBuf>,
        /// Feature service whose features to fetch.
        #[arg(long)]
        service: Option<String>,
        /// Features as group:feature or group:*; repeat for more.
        #[arg(long = "feature", short = 'f')]
        features: Vec<String>,
        /// The spine's timestamp column (a timestamp, epoch milliseconds or RFC 3339 text).
        #[arg(long, default_value = "event_timestamp")]
        timestamp_column: String,
        /// Records per row of time-series groups (default: `server.default_top_n`).
        #[arg(long)]
        top_n: Option<usize>,
        /// Output file: Parquet, or CSV when it ends in `.csv`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a running server's cache tiers: hit ratios per group and tier, store misses, read
    /// latency per tier, and the Redis tier's breaker and back-fill queue.
    Stats {
        /// Server to ask; default: `server.listen` of the config.
        #[arg(long)]
        server: Option<String>,
    },
    /// Check online/offline consistency: recompute a feature service's logged answers from
    /// the offline history at the time each was served, and report per feature the share of
    /// mismatched, missing and extra values, with examples.
    Consistency {
        /// The feature service (it must log: `logging.sample_rate`).
        #[arg(long)]
        service: String,
        /// Answers served from this time (RFC 3339); default: all.
        #[arg(long)]
        from: Option<String>,
        /// Answers served before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs, newest first.
    List {
        /// Only this ingestion's.
        #[arg(long)]
        ingestion: Option<String>,
        /// Only jobs in these states (comma-separated: submitted, runnable, running,
        /// succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = cellar_jobs::http::DEFAULT_LIST_LIMIT,
              value_parser = clap::value_parser!(i64).range(1..=cellar_jobs::http::MAX_LIST_LIMIT))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// A job with its shards: state, attempts, rows and errors.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Run a failed or cancelled job's unfinished shards again.
    Retry {
        id: i64,
        /// Server to run it on (default: `server.listen` if it answers, else here).
        #[arg(long)]
        server: Option<String>,
    },
    /// Cancel a job: its unfinished shards stop.
    Cancel { id: i64 },
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Make a new API key: prints the key (give it to the client, it is not kept anywhere)
    /// and the `[[auth.api_keys]]` entry holding only its digest.
    NewKey {
        /// Who the key is for, as the audit log and messages name it.
        #[arg(long)]
        name: String,
        /// A role of `auth.roles` the key carries (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Show the dead letters not yet re-driven, oldest first per partition.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT as u64,
              value_parser = clap::value_parser!(u64).range(1..=MAX_LIST_LIMIT as u64))]
        limit: u64,
        /// Only the dead letters of this ingestion.
        #[arg(long)]
        ingestion: Option<String>,
        /// Print them as JSON, payloads and errors whole.
        #[arg(long)]
        json: bool,
        /// Server to ask (embedded log); default: `server.listen` of the config.
        #[arg(long)]
        server: Option<String>,
    },
    /// Publish dead letters again to the topics they were first published to.
    ///
    /// Each re-driven event keeps its key and its `cellar-ingestion` header, so only the
    /// ingestion that failed runs it again; if it fails again it is retried and dead-lettered
    /// as usual. What was re-driven is remembered (a committed position per dead-letter
    /// partition), so a second re-drive does not send it again.
    ///
    /// A re-drive takes every dead letter not yet re-driven, or with `--limit` the oldest N
    /// (in offset order per partition). It cannot take one ingestion's only: the position
    /// moves past records in order and would hide the others (`list --ingestion` filters the
    /// list only). Fix every cause first, or re-drive in order and let what still fails come
    /// back as new dead letters.
    Redrive {
        /// Re-drive at most this many.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Not supported: see above.
        #[arg(long, hide = true)]
        ingestion: Option<String>,
        /// Server to ask (embedded log); default: `server.listen` of the config.
        #[arg(long)]
        server: Option<String>,
    },
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(r) = &cli.repo {
        config.repo = r.clone();
    }
    Ok(config)
}

fn main() {
    if let Err(e) = start() {
        // The chain of causes, one line, without a backtrace: these are user-facing errors.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = load_config(&cli)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if config.server.worker_threads > 0 {
        runtime.worker_threads(config.server.worker_threads);
    }
    runtime
        .build()
        .context("starting the async runtime")?
        .block_on(run(cli, config))
}

async fn run(cli: Cli, mut config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // Cellar's own events at INFO; its libraries' (the storage engine's flushes and
            // compactions, the SQL pool's statements) only when they warn. RUST_LOG overrides.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,cellar=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    client::configure(cli.token.as_deref(), cli.ca_file.as_deref())?;
    for setting in config.check_secrets().map_err(anyhow::Error::msg)? {
        tracing::warn!(
            %setting,
            "a password is written out in the config: refer to it as ${{NAME}} (an environment \
             variable) or ${{file:PATH}} (a file) instead"
        );
    }
    match cli.command {
        Command::Quickstart {
            listen,
            grpc_listen,
        } => {
            config
                .set_listen(listen, grpc_listen)
                .map_err(anyhow::Error::msg)?;
            if cli.repo.is_none() {
                config.repo = config.data_dir.join("feature_repo");
            }
            run_quickstart(config).await
        }
        Command::Serve {
            listen,
            grpc_listen,
        } => {
            config
                .set_listen(listen, grpc_listen)
                .map_err(anyhow::Error::msg)?;
            let node = Node::open(config.clone()).await?;
            if node.version == 0 {
                tracing::warn!("the registry is empty: run `cellar apply` to serve a feature repo");
            }
            let http = bind(&config.server.listen).await?;
            let grpc = bind(&config.server.grpc_listen).await?;
            node.serve(http, Some(grpc), shutdown_signal()).await
        }
        Command::Plan => {
            let registry = cellar_registry::Registry::open(&config.registry_url()).await?;
            match repo::plan_repo(&registry, &config.repo).await {
                Ok((_, plan)) => {
                    print!("{}", repo::render_plan(&plan));
                    Ok(())
                }
                Err(e) => {
                    eprint!("{e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Apply { allow_breaking } => {
            let registry = cellar_registry::Registry::open(&config.registry_url()).await?;
            match repo::plan_repo(&registry, &config.repo).await {
                Ok((desired, plan)) => {
                    print!("{}", repo::render_plan(&plan));
                    let breaking = if allow_breaking {
                        cellar_registry::Breaking::Allow
                    } else {
                        cellar_registry::Breaking::Refuse
                    };
                    let outcome = match registry.apply_with(&desired, breaking).await {
                        Err(e @ cellar_registry::RegistryError::Breaking { .. }) => {
                            eprintln!("{e}");
                            std::process::exit(1);
                        }
                        outcome => outcome?,
                    };
                    if outcome.changed {
                        println!("applied: registry is at version {}", outcome.version);
                    } else {
                        println!(
                            "nothing to apply: registry stays at version {}",
                            outcome.version
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    eprint!("{e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Get {
            entities,
            request,
            groups,
            features,
            service,
            top_n,
            window,
            json,
            server,
        } => {
            let mut body = client::features_body(
                client::entity_columns(&entities)?,
                &groups,
                &features,
                top_n,
                window.as_deref(),
                service.as_deref(),
            )?;
            if !request.is_empty() {
                body["request_data"] =
                    serde_json::Value::Object(client::request_columns(&request)?);
            }
            let answer = client::post(&server, "/v1/features", &body).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", client::render_features(&answer));
            }
            Ok(())
        }
        Command::Ingest { until_caught_up } => run_ingest(config, until_caught_up).await,
        Command::Produce {
            topic,
            file,
            server,
            producer_id,
        } => {
            let (text, producer) = match file {
                Some(f) if f.as_os_str() != "-" => (
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?,
                    producer_id.or_else(|| Some(client::producer_id_for(&f))),
                ),
                _ => (
                    std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
                    producer_id,
                ),
            };
            let sent = client::produce(&server, &topic, &text, producer.as_deref()).await?;
            println!(
                "appended {} events to `{topic}` ({} appended before and skipped, {} consumed \
                 by no ingestion)",
                sent.appended, sent.duplicates, sent.unrouted
            );
            Ok(())
        }
        Command::BenchBaseline {
            listen,
            body_bytes,
            source_delay_ms,
        } => {
            let listener = bind(&listen).await?;
            let limits = cellar::node::listener_limits(&config);
            let delay = std::time::Duration::from_millis(source_delay_ms);
            cellar::bench::serve_baseline(listener, body_bytes, delay, limits).await?;
            Ok(())
        }
        Command::Push { file, server } => {
            let text = match file {
                Some(f) if f.as_os_str() != "-" => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?,
                _ => std::io::read_to_string(std::io::stdin()).context("reading stdin")?,
            };
            let body: serde_json::Value =
                serde_json::from_str(&text).context("the push body is not valid JSON")?;
            let answer = client::post(&server, "/v1/push", &body).await?;
            println!("{answer}");
            Ok(())
        }
        Command::DeadLetters(command) => run_dead_letters(&config, command).await,
        Command::Auth(AuthCommand::NewKey { name, roles }) => {
            let (key, sha256) = cellar_auth::keys::new_key();
            let entry = toml::to_string(&serde_json::json!({
                "api_keys": [{ "name": name, "sha256": sha256, "roles": roles }]
            }))?;
            println!("API key (shown once; give it to `{name}`):\n  {key}\n");
            println!("Add to the config's [auth] section, or to auth.api_keys_file:\n");
            print!("{}", entry.replace("[[api_keys]]", "[[auth.api_keys]]"));
            Ok(())
        }
        Command::Backfill {
            ingestion,
            from,
            to,
            max_attempts,
            server,
        } => {
            let period = cellar_jobs::http::parse_period(from.as_deref(), to.as_deref())
                .map_err(|e| anyhow::anyhow!("--{e}"))?;
            let args = cellar::jobs::BackfillArgs {
                ingestion,
                period,
                max_attempts,
                server,
                progress_bar: std::io::stderr().is_terminal(),
            };
            let job = cellar::jobs::backfill(&config, &args).await?;
            finish_job_command(&job)
        }
        Command::Jobs(command) => run_jobs(&config, command).await,
        Command::Worker => cellar::jobs::worker(&config).await,
        Command::Stats { server } => {
            let server = client::server_url(server.as_deref(), &config.server.listen)?;
            let stats = cellar::stats::fetch(&server).await?;
            print!("{}", cellar::stats::render(&stats));
            Ok(())
        }
        Command::TrainingSet {
            spine,
            spine_sql,
            spine_db,
            logged,
            labels,
            service,
            features,
            timestamp_column,
            top_n,
            out,
        } => {
            let spine = match (spine.or(labels), spine_sql, spine_db) {
                (Some(path), _, _) => cellar::training::Spine::File(path),
                (None, Some(query), Some(url)) => cellar::training::Spine::Query { url, query },
                _ => anyhow::bail!("give --spine FILE, or --spine-sql QUERY with --spine-db URL"),
            };
            let args = cellar::training::TrainingSetArgs {
                spine,
                logged,
                service,
                features,
                timestamp_column,
                top_n,
                out,
            };
            cellar::training::run(&config, &args).await
        }
        Command::Consistency {
            service,
            from,
            to,
            json,
        } => {
            cellar::training::consistency(&config, &service, from.as_deref(), to.as_deref(), json)
                .await
        }
    }
}

/// Prints how a job ended; a failed or cancelled job makes the command fail.
fn finish_job_command(job: &cellar_registry::Job) -> anyhow::Result<()> {
    println!("{}", cellar::jobs::summary(job));
    if job.state != cellar_registry::JobState::Succeeded {
        std::process::exit(1);
    }
    Ok(())
}

async fn run_jobs(config: &Config, command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::List {
            ingestion,
            state,
            limit,
            json,
        } => {
            let states = state
                .as_deref()
                .map(cellar_jobs::http::parse_states)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--{e}"))?
                .unwrap_or_default();
            let jobs = cellar::jobs::list(config, ingestion, states, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                println!("no jobs");
            } else {
                print!("{}", cellar::jobs::render_jobs(&jobs));
            }
            Ok(())
        }
        JobsCommand::Show { id, json } => {
            let (job, shards) = cellar::jobs::show(config, id).await?;
            if json {
                let both = serde_json::json!({ "job": job, "shards": shards });
                println!("{}", serde_json::to_string_pretty(&both)?);
            } else {
                print!("{}", cellar::jobs::render_job(&job, &shards));
            }
            Ok(())
        }
        JobsCommand::Retry { id, server } => {
            let job =
                cellar::jobs::retry(config, id, server, std::io::stderr().is_terminal()).await?;
            finish_job_command(&job)
        }
        JobsCommand::Cancel { id } => {
            let job = cellar::jobs::cancel(config, id).await?;
            println!("job {} {}", job.id, job.state);
            Ok(())
        }
    }
}

/// Where `cellar dead-letters` reads and writes: a server, or Kafka directly.
enum DeadLetterTarget {
    Server(String),
    Kafka(cellar::deadletter::DeadLetters),
}

impl DeadLetterTarget {
    fn new(config: &Config, server: Option<&str>) -> anyhow::Result<DeadLetterTarget> {
        if server.is_none() && config.ingest.kafka.enabled() {
            return Ok(DeadLetterTarget::Kafka(cellar::ingest::kafka_dead_letters(
                config,
            )?));
        }
        Ok(DeadLetterTarget::Server(client::server_url(
            server,
            &config.server.listen,
        )?))
    }
}

async fn run_dead_letters(config: &Config, command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List {
            limit,
            ingestion,
            json,
            server,
        } => {
            if let Some(name) = &ingestion {
                cellar::deadletter::check_ingestion_name(name).context("--ingestion")?;
            }
            let limit = limit as usize;
            let letters = match DeadLetterTarget::new(config, server.as_deref())? {
                DeadLetterTarget::Server(url) => {
                    client::list_dead_letters(&url, limit, ingestion.as_deref()).await?
                }
                DeadLetterTarget::Kafka(dead) => dead.list(limit, ingestion.as_deref()).await?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                match &ingestion {
                    Some(name) => println!("no dead letters of ingestion `{name}`"),
                    None => println!("no dead letters"),
                }
            } else {
                print!("{}", client::render_dead_letters(&letters));
                if letters.len() == limit {
                    println!("the first {limit}; --limit shows more");
                }
            }
            Ok(())
        }
        DeadLetterCommand::Redrive {
            limit,
            ingestion,
            server,
        } => {
            if ingestion.is_some() {
                anyhow::bail!(
                    "redrive takes no --ingestion: it re-drives every dead letter in order (or \
                     the first --limit), since what was re-driven is one position per partition; \
                     `list --ingestion` shows one ingestion's"
                );
            }
            let limit = limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
            let done = match DeadLetterTarget::new(config, server.as_deref())? {
                DeadLetterTarget::Server(url) => client::redrive_dead_letters(&url, limit).await?,
                DeadLetterTarget::Kafka(dead) => dead.redrive(limit).await?,
            };
            println!("re-drove {} dead letters", done.redriven);
            if done.skipped > 0 {
                println!(
                    "passed over {} that name no original topic (no cellar-topic or \
                     cellar-origin header)",
                    done.skipped
                );
            }
            Ok(())
        }
    }
}

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

async fn run_quickstart(config: Config) -> anyhow::Result<()> {
    quickstart::write_example_repo(&config.repo)?;
    println!("example feature repo: {}", config.repo.display());
    let registry = cellar_registry::Registry::open(&config.registry_url()).await?;
    let (desired, plan) = repo::plan_repo(&registry, &config.repo)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    print!("{}", repo::render_plan(&plan));
    let outcome = registry.apply(&desired).await?;
    println!("registry at version {}", outcome.version);
    // Sample data is laid out as applied: features at their stored positions.
    let desired = registry
        .current()
        .await?
        .context("the registry is empty after an apply")?
        .repo;
    registry.close().await;

    let node = Node::open(config.clone()).await?;
    // The anchor of the sample data's event times is kept, so a second quickstart rewrites
    // the same records instead of adding new ones.
    let anchor_file = config.data_dir.join("quickstart-anchor");
    let (anchor, fresh) = match std::fs::read_to_string(&anchor_file)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        Some(a) => (a, false),
        None => (chrono::Utc::now().timestamp_millis(), true),
    };
    if fresh {
        println!(
            "loading sample data ({} users, {} articles)...",
            quickstart::USERS,
            quickstart::ARTICLES
        );
        let loaded = quickstart::load_sample_data(&node.writer, &desired, anchor).await?;
        std::fs::write(&anchor_file, anchor.to_string())?;
        println!(
            "loaded {} records in {:.1} s ({:.0} records/s)",
            loaded.records,
            loaded.seconds,
            loaded.records as f64 / loaded.seconds.max(1e-9)
        );
    } else {
        println!("sample data already loaded");
    }
    let http = bind(&config.server.listen).await?;
    let grpc = bind(&config.server.grpc_listen).await?;
    println!("{}", quickstart::example_requests(&config.server.listen));
    node.serve(http, Some(grpc), shutdown_signal()).await
}

async fn run_ingest(config: Config, until_caught_up: bool) -> anyhow::Result<()> {
    let repo = cellar::training::applied_repo(&config).await?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let store = cellar::node::open_store(&config).await?;
    let writer = cellar::node::write_path(&config, store, "ingest")?;
    let sharing = cellar::group_writes::SharedFreshness::new(
        cellar_registry::Registry::open(&config.registry_url()).await?,
        writer.freshness().clone(),
    );
    let ingestion = std::sync::Arc::new(cellar::ingest::StreamIngestion::open(
        &config, writer, &repo,
    )?);
    if until_caught_up && !ingestion.is_embedded() {
        anyhow::bail!(
            "--until-caught-up needs the embedded log: on Kafka, run `cellar ingest` as a \
             service and watch cellar_ingest_consumer_lag"
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop_tx.send(true);
        });
    }
    if until_caught_up {
        let ingestion = ingestion.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                if ingestion.caught_up() {
                    tracing::info!("every event is applied and committed");
                    let _ = stop_tx.send(true);
                    break;
                }
            }
        });
    }
    tokio::spawn(
        sharing
            .clone()
            .run(cellar::group_writes::SHARE_EVERY, stop_rx.clone()),
    );
    let result = ingestion.run(stop_rx).await;
    sharing.exchange_logged().await;
    result
}
