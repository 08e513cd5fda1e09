//! `cellar plan` and `cellar apply`: read a feature repo directory, validate it, diff it
//! against the registry and apply it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use cellar_ingest_batch::Transform;
use cellar_registry::Registry;
use cellar_spec::{
    parse_repo_with, plan, plan::REMOVED_GROUP, BatchSource, ChangeAction, FeatureRepo,
    IngestionSource, Plan, SpecErrors,
};

/// Reads every `.yaml` / `.yml` file under `dir`, sorted by path, as (path, text) pairs.
pub fn read_repo_files(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    if !dir.is_dir() {
        anyhow::bail!("feature repo {} is not a directory", dir.display());
    }
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                files.push((path.display().to_string(), text));
            }
        }
    }
    files.sort();
    if files.is_empty() {
        anyhow::bail!("feature repo {} has no .yaml files", dir.display());
    }
    Ok(files)
}

/// Why a repo could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("{0}")]
    Invalid(SpecErrors),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// Reads and validates a feature repo.
pub fn load_repo(dir: &Path) -> Result<FeatureRepo, RepoError> {
    let files = read_repo_files(dir)?;
    parse_repo_with(&files, &cellar_expr::Checker).map_err(RepoError::Invalid)
}

/// Refuses a batch ingestion whose SQL transform is not one query, before it is applied
/// (whether its columns fit is known only once its input is read, when the job is planned).
fn check_transforms(repo: &FeatureRepo) -> Result<(), RepoError> {
    let mut problems = String::new();
    for ingestion in &repo.ingestions {
        if let IngestionSource::Batch(BatchSource {
            transform: Some(sql),
            ..
        }) = &ingestion.source
        {
            if let Err(reason) = Transform::parse(sql) {
                let _ = writeln!(problems, "ingestion `{}`: {reason}", ingestion.name);
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(RepoError::Other(anyhow::anyhow!(problems)))
    }
}

/// The plan from the registry's current repo to the one in `dir`, as applying it would make
/// it (features at their stored positions: the order of lines in YAML changes nothing).
/// Returns the repo as read from `dir`, which is what an apply is given.
pub async fn plan_repo(registry: &Registry, dir: &Path) -> Result<(FeatureRepo, Plan), RepoError> {
    let desired = load_repo(dir)?;
    check_transforms(&desired)?;
    let (current, evolved) = registry
        .preview(&desired)
        .await
        .map_err(anyhow::Error::from)?;
    let p = plan(&current, &evolved);
    Ok((desired, p))
}

/// A plan as `cellar plan` prints it.
pub fn render_plan(p: &Plan) -> String {
    if p.changes.is_empty() {
        return "no changes: the registry matches the feature repo\n".to_owned();
    }
    let mut out = String::new();
    let (mut add, mut change, mut remove, mut breaking) = (0, 0, 0, 0);
    for c in &p.changes {
        match &c.action {
            ChangeAction::Add => {
                add += 1;
                let _ = writeln!(out, "  + {} {}", c.kind, c.name);
            }
            ChangeAction::Remove => {
                remove += 1;
                let _ = writeln!(out, "  - {} {}", c.kind, c.name);
                if c.is_breaking() {
                    breaking += 1;
                    let _ = writeln!(out, "      BREAKING: {REMOVED_GROUP}");
                }
            }
            ChangeAction::Modify {
                details,
                breaking: b,
            } => {
                change += 1;
                breaking += b.len();
                let _ = writeln!(out, "  ~ {} {}", c.kind, c.name);
                for d in b {
                    let _ = writeln!(out, "      BREAKING: {d}");
                }
                for d in details.iter().filter(|d| !b.contains(d)) {
                    let _ = writeln!(out, "      {d}");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "plan: {add} to add, {change} to change, {remove} to remove"
    );
    if breaking > 0 {
        let _ = writeln!(
            out,
            "{breaking} breaking change(s): stored records or readers of these groups are \
             affected; `cellar apply` refuses them unless given --allow-breaking"
        );
    }
    out
}
