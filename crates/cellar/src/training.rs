//! `cellar training-set`: a spine joined point-in-time onto the offline history.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use cellar_history::{table, training_set, HistoryError, OfflineHistory, Selection};
use cellar_spec::FeatureRepo;

use crate::config::Config;

/// What a training set is built from.
#[derive(Debug, Clone)]
pub struct TrainingSetArgs {
    pub spine: PathBuf,
    pub service: Option<String>,
    /// `group:feature` or `group:*`.
    pub features: Vec<String>,
    pub timestamp_column: String,
    pub top_n: Option<usize>,
    pub out: PathBuf,
}

/// The selections a service or a list of `group:feature` names stand for, one per group in
/// the order first named. On-demand groups are refused by name: their features are not
/// computed offline yet.
pub fn selections(
    repo: &FeatureRepo,
    service: Option<&str>,
    features: &[String],
    top_n: usize,
) -> anyhow::Result<Vec<Selection>> {
    let mut named: Vec<(String, Option<String>)> = Vec::new();
    if let Some(name) = service {
        let service = repo.service(name).with_context(|| {
            format!(
                "no feature service `{name}` (known: {})",
                repo.services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        for selection in &service.features {
            match &selection.features {
                None => named.push((selection.group.clone(), None)),
                Some(features) => named.extend(
                    features
                        .iter()
                        .map(|f| (selection.group.clone(), Some(f.clone()))),
                ),
            }
        }
    }
    for spec in features {
        let (group, feature) = spec
            .split_once(':')
            .with_context(|| format!("`{spec}`: features are named as group:feature or group:*"))?;
        named.push((
            group.to_owned(),
            (feature != "*").then(|| feature.to_owned()),
        ));
    }
    if named.is_empty() {
        anyhow::bail!("name a feature service (--service) or features (-f group:feature)");
    }
    let mut out: Vec<Selection> = Vec::new();
    for (group_name, feature) in named {
        if repo.on_demand_group(&group_name).is_some() {
            anyhow::bail!(
                "`{group_name}` is an on-demand group: training sets hold stored features only, \
                 so far; select its inputs instead"
            );
        }
        let group = repo.group(&group_name).with_context(|| {
            format!(
                "no feature group `{group_name}` (known: {})",
                repo.groups
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let entity = repo
            .entity(&group.entity)
            .with_context(|| format!("group `{group_name}` names an unknown entity"))?;
        let wanted: Vec<String> = match feature {
            Some(f) => {
                if group.feature_index(&f).is_none() {
                    anyhow::bail!(
                        "group `{group_name}` has no feature `{f}` (it has {})",
                        group
                            .live_features()
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                vec![f]
            }
            None => group.live_features().map(|f| f.name.clone()).collect(),
        };
        let selection = match out.iter_mut().find(|s| s.group.name == group_name) {
            Some(s) => s,
            None => {
                out.push(Selection {
                    group: group.clone(),
                    entity: entity.clone(),
                    features: Vec::new(),
                    top_n,
                });
                out.last_mut().expect("just pushed")
            }
        };
        for f in wanted {
            if !selection.features.contains(&f) {
                selection.features.push(f);
            }
        }
    }
    Ok(out)
}

/// Converts what processes that have stopped left staged (a process still running converts
/// its own every `history.convert_interval_secs`), so the history is as complete as it can be.
pub fn convert_leftovers(config: &Config) -> anyhow::Result<usize> {
    let dir = config.data_dir.join("history-staging");
    let Ok(roles) = std::fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut converted = 0;
    for role in roles.flatten() {
        let path = role.path();
        // A staging log in use is locked by its process, which converts it: skipped.
        let history = match OfflineHistory::open(
            config.history_path(),
            &path,
            std::time::Duration::from_secs(3600),
        ) {
            Ok(history) => history,
            Err(HistoryError::Locked(_)) => continue,
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("converting what {} holds", path.display())))
            }
        };
        converted += history.close()?.records;
    }
    Ok(converted)
}

/// `cellar training-set`.
pub async fn run(config: &Config, args: &TrainingSetArgs) -> anyhow::Result<()> {
    let registry = cellar_registry::Registry::open(&config.registry_url()).await?;
    let repo = registry
        .current()
        .await?
        .context("the registry is empty: run `cellar apply` first")?
        .repo;
    registry.close().await;
    let top_n = args.top_n.unwrap_or(config.server.default_top_n);
    if top_n == 0 || top_n > config.server.max_top_n {
        anyhow::bail!(
            "--top-n: {top_n} is out of range, it must be from 1 to {} (server.max_top_n)",
            config.server.max_top_n
        );
    }
    let selections = selections(&repo, args.service.as_deref(), &args.features, top_n)?;
    let leftovers = convert_leftovers(config)?;
    if leftovers > 0 {
        eprintln!("converted {leftovers} staged records left by stopped processes");
    }
    let started = Instant::now();
    let spine = table::read_table(&args.spine)?;
    let read = started.elapsed();
    let root = config.history_path();
    let (timestamp, spine_rows) = (args.timestamp_column.clone(), spine.num_rows());
    let set = tokio::task::spawn_blocking(move || {
        training_set(&root, &spine, &timestamp, &selections).map(|set| (set, selections))
    })
    .await??;
    let (set, selections) = set;
    let joined = started.elapsed();
    table::write_table(&args.out, &set)?;
    eprintln!(
        "{} rows x {} features into {} in {:.2} s (spine read {:.2} s, join {:.2} s, write {:.2} s)",
        spine_rows,
        feature_columns(&selections),
        args.out.display(),
        started.elapsed().as_secs_f64(),
        read.as_secs_f64(),
        (joined - read).as_secs_f64(),
        (started.elapsed() - joined).as_secs_f64(),
    );
    for s in &selections {
        for f in &s.features {
            let name = s.column_name(f);
            if let Some(column) = set.column_by_name(&name) {
                eprintln!(
                    "  {name}: {:.1}% of rows have a value",
                    100.0 * (column.len() - column.null_count()) as f64
                        / column.len().max(1) as f64
                );
            }
        }
    }
    Ok(())
}

fn feature_columns(selections: &[Selection]) -> usize {
    selections.iter().map(|s| s.features.len()).sum()
}
