//! `cellar training-set`: a spine joined point-in-time onto the offline history.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use cellar_history::training::CHUNK_ROWS;
use cellar_history::{table, training_set_file, HistoryError, Progress, Storage, TrainingPlan};

use crate::config::Config;

/// What a training set is built from.
#[derive(Debug, Clone)]
pub struct TrainingSetArgs {
    /// The spine; or, with `logged`, the labels joined to a service's logged answers.
    pub spine: Spine,
    /// A feature service whose logged answers the spine's labels are joined to.
    pub logged: Option<String>,
    pub service: Option<String>,
    /// `group:feature` or `group:*`.
    pub features: Vec<String>,
    pub timestamp_column: String,
    pub top_n: Option<usize>,
    pub out: PathBuf,
}

/// Where a spine comes from.
#[derive(Debug, Clone)]
pub enum Spine {
    /// A Parquet or CSV file.
    File(PathBuf),
    /// A query on a PostgreSQL database (its URL may hold secret references).
    Query { url: String, query: String },
}

/// Rows of a spine query fetched at once.
const QUERY_BATCH_ROWS: usize = 64 * 1024;

/// The file holding `spine`: the file itself, or the query's rows written to a Parquet file
/// in `dir` (removed when the returned guard drops), streamed so none is held whole.
fn spine_file(
    spine: &Spine,
    dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, Option<TempSpine>)> {
    let (url, query) = match spine {
        Spine::File(path) => return Ok((path.clone(), None)),
        Spine::Query { url, query } => (url, query),
    };
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("spine-{}.parquet", std::process::id()));
    let guard = TempSpine(path.clone());
    let mut writer: Option<table::TableWriter> = None;
    let mut rows = 0usize;
    cellar_ingest_batch::postgres::query(url, query, QUERY_BATCH_ROWS, &mut |batch| {
        rows += batch.num_rows();
        let writer = match &mut writer {
            Some(w) => w,
            None => writer.insert(
                table::TableWriter::create(&path, batch.schema())
                    .map_err(|e| cellar_ingest_batch::BatchError::Internal(e.to_string()))?,
            ),
        };
        writer
            .write(&batch)
            .map_err(|e| cellar_ingest_batch::BatchError::Internal(e.to_string()))?;
        Ok(true)
    })?;
    match writer {
        Some(writer) => writer.close()?,
        None => anyhow::bail!("--spine-sql: the query returned no rows"),
    }
    eprintln!("spine: {rows} rows from the query");
    Ok((path, Some(guard)))
}

/// A spine file written for one training set, removed after it.
struct TempSpine(PathBuf);

impl Drop for TempSpine {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The repo last applied to the registry `config` names.
pub async fn applied_repo(config: &Config) -> anyhow::Result<cellar_spec::FeatureRepo> {
    let registry = cellar_registry::Registry::open(&config.registry_url()).await?;
    let repo = registry
        .current()
        .await?
        .context("the registry is empty: run `cellar apply` first")?
        .repo;
    registry.close().await;
    Ok(repo)
}

/// Converts what processes that have stopped left staged (a process still running converts
/// its own every `history.convert_interval_secs`), so the history is as complete as it can be.
pub fn convert_leftovers(config: &Config) -> anyhow::Result<usize> {
    convert_leftovers_into(config, &config.history_storage()?)
}

/// [`convert_leftovers`] into `storage`, the history's place.
pub fn convert_leftovers_into(config: &Config, storage: &Storage) -> anyhow::Result<usize> {
    let dir = config.data_dir.join("history-staging");
    let Ok(roles) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut converted = 0;
    for role in roles.flatten() {
        let path = role.path();
        // A staging log in use is locked by its process, which converts it: skipped.
        match cellar_history::convert_staged(&path, storage) {
            Ok(done) => converted += done.records,
            Err(HistoryError::Locked(_)) => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("converting what {} holds", path.display())))
            }
        }
    }
    Ok(converted)
}

/// `cellar training-set`.
pub async fn run(config: &Config, args: &TrainingSetArgs) -> anyhow::Result<()> {
    let repo = applied_repo(config).await?;
    if let Some(service) = &args.logged {
        return run_logged(config, &repo, service, args);
    }
    let top_n = args.top_n.unwrap_or(config.server.default_top_n);
    if top_n == 0 || top_n > config.server.max_top_n {
        anyhow::bail!(
            "--top-n: {top_n} is out of range, it must be from 1 to {} (server.max_top_n)",
            config.server.max_top_n
        );
    }
    let plan = TrainingPlan::resolve(&repo, args.service.as_deref(), &args.features, top_n)?;
    let leftovers = convert_leftovers(config)?;
    if leftovers > 0 {
        eprintln!("converted {leftovers} staged records left by stopped processes");
    }
    let started = Instant::now();
    let (storage, spine, out, timestamp, tmp) = (
        config.history_storage()?,
        args.spine.clone(),
        args.out.clone(),
        args.timestamp_column.clone(),
        config.data_dir.join("tmp"),
    );
    let (built, plan) = tokio::task::spawn_blocking(move || {
        let (spine, _removed_after) = spine_file(&spine, &tmp)?;
        training_set_file(
            &storage,
            &spine,
            &out,
            &timestamp,
            &plan,
            &Progress::default(),
            CHUNK_ROWS,
        )
        .map(|built| (built, plan))
        .map_err(anyhow::Error::from)
    })
    .await??;
    eprintln!(
        "{} rows x {} features into {} in {:.2} s (spine read {:.2} s, join {:.2} s, write {:.2} s{})",
        built.rows,
        plan.columns.len(),
        args.out.display(),
        started.elapsed().as_secs_f64(),
        built.read.as_secs_f64(),
        built.join.as_secs_f64(),
        built.write.as_secs_f64(),
        if built.chunks > 1 {
            format!("; {} chunks of up to {CHUNK_ROWS} rows", built.chunks)
        } else {
            String::new()
        }
    );
    for ((group, feature), values) in plan.columns.iter().zip(&built.values) {
        let name = cellar_history::training::column_name(group, feature);
        eprintln!(
            "  {name}: {:.1}% of rows have a value",
            100.0 * *values as f64 / built.rows.max(1) as f64
        );
    }
    Ok(())
}

/// `cellar training-set --logged S --labels FILE`: labels joined to what `service` served.
fn run_logged(
    config: &Config,
    repo: &cellar_spec::FeatureRepo,
    service: &str,
    args: &TrainingSetArgs,
) -> anyhow::Result<()> {
    let spec = repo
        .service(service)
        .with_context(|| format!("no feature service `{service}`"))?;
    if spec.logging.is_off() {
        eprintln!(
            "note: feature service `{service}` logs nothing now (logging.sample_rate is 0); \
             what it logged before is used"
        );
    }
    if args.service.is_some() || !args.features.is_empty() {
        anyhow::bail!("--logged takes the features the service logged: drop --service and -f");
    }
    let leftovers = convert_leftovers(config)?;
    if leftovers > 0 {
        eprintln!("converted {leftovers} staged records left by stopped processes");
    }
    let started = Instant::now();
    let Spine::File(labels) = &args.spine else {
        anyhow::bail!("--logged takes its labels from a file (--labels)");
    };
    let labels = table::read_table(labels)?;
    let logged = cellar_history::logged::read(&config.history_storage()?, service, None, None)?;
    if logged.num_rows() == 0 {
        anyhow::bail!(
            "feature service `{service}` has logged nothing yet: give it a logging.sample_rate \
             and serve it, then build the training set"
        );
    }
    let set = cellar_history::logged::join_labels(&logged, &labels, &args.timestamp_column)?;
    table::write_table(&args.out, &set)?;
    let found = set
        .column_by_name(cellar_history::logged::SERVED_AT)
        .map_or(0, |c| c.len() - c.null_count());
    eprintln!(
        "{} labels joined to {} logged rows of `{service}` into {} in {:.2} s: {} found what \
         was served",
        labels.num_rows(),
        logged.num_rows(),
        args.out.display(),
        started.elapsed().as_secs_f64(),
        found
    );
    Ok(())
}

/// `cellar consistency`: a service's logged answers recomputed from the history.
pub async fn consistency(
    config: &Config,
    service: &str,
    from: Option<&str>,
    to: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let repo = applied_repo(config).await?;
    let time = |flag: &str, t: Option<&str>| -> anyhow::Result<Option<i64>> {
        t.map(|t| {
            cellar_spec::value::parse_rfc3339(t)
                .with_context(|| format!("--{flag}: `{t}` is not an RFC 3339 time"))
        })
        .transpose()
    };
    let (from, to) = (time("from", from)?, time("to", to)?);
    convert_leftovers(config)?;
    let (storage, service_name, top_n) = (
        config.history_storage()?,
        service.to_owned(),
        config.server.default_top_n,
    );
    let report = tokio::task::spawn_blocking(move || {
        cellar_history::consistency::check(&storage, &repo, &service_name, from, to, top_n)
    })
    .await??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} logged rows of `{}` recomputed from the offline history",
        report.rows, report.service
    );
    let mut table = comfy_table::Table::new();
    table.set_header([
        "feature",
        "checked",
        "match",
        "mismatched",
        "missing",
        "extra",
    ]);
    let share = |n: usize, of: usize| format!("{n} ({:.1}%)", 100.0 * n as f64 / of.max(1) as f64);
    for f in &report.features {
        table.add_row([
            f.column.clone(),
            f.checked.to_string(),
            share(f.matched, f.checked),
            share(f.mismatched, f.checked),
            share(f.missing, f.checked),
            share(f.extra, f.checked),
        ]);
    }
    println!("{table}");
    for f in &report.features {
        for e in &f.examples {
            println!(
                "  {} {}: request {} row {} at {}: online {}, offline {}",
                f.column, e.kind, e.request_id, e.row, e.served_at, e.online, e.offline
            );
        }
    }
    for (column, why) in &report.not_checked {
        println!("  not checked: {column}: {why}");
    }
    Ok(())
}
