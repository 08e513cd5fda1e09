//! The registry: entities, feature services, the applied versions and what each changed, and
//! a plan preview of a feature repo directory the server can read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use axum::extract::{Query, State};
use axum::response::Response;
use cellar_auth::Access;
use cellar_spec::{FeatureRepo, SpecKind};
use maud::{html, Markup};
use serde::Deserialize;

use super::{layout, refused_view, registry_unavailable, time_text, Console};

/// Spec changes listed.
const CHANGES: i64 = 200;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RegistryQuery {
    /// A repo directory to plan against the applied repo.
    plan: Option<String>,
}

pub(super) async fn page(
    State(console): State<Console>,
    access: Access,
    Query(q): Query<RegistryQuery>,
) -> Response {
    if let Some(resp) = refused_view(&access) {
        return resp;
    }
    let (applied, changes) = match (
        console.registry.current().await,
        console.registry.changes(CHANGES).await,
    ) {
        (Ok(applied), Ok(changes)) => (applied, changes),
        (Err(e), _) | (_, Err(e)) => return registry_unavailable(&access, &e),
    };
    let repo = applied.as_ref().map(|a| a.repo.clone()).unwrap_or_default();
    let plan = match q.plan.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        Some(dir) => Some(preview(&console, dir).await),
        None => None,
    };
    let mut by_version: BTreeMap<i64, Vec<_>> = BTreeMap::new();
    for change in &changes {
        by_version
            .entry(change.repo_version)
            .or_default()
            .push(change);
    }
    let dir = q
        .plan
        .clone()
        .unwrap_or_else(|| console.repo_dir.display().to_string());
    let body = html! {
        h1 { "Registry " small {
            @match &applied {
                Some(a) => { "repo version " (a.version) " applied " (time_text(a.applied_at.timestamp_millis())) }
                None => { "nothing applied yet" }
            }
        } }
        h2 #entities { "Entities" }
        (entities(&repo))
        h2 #services { "Feature services" }
        (services(&repo))
        h2 #plan { "Plan preview" }
        form.filters method="get" action="/ui/registry#plan" {
            label { "Feature repo directory (under " (console.repo_dir.display()) ")"
                input type="text" name="plan" size="60" value=(dir);
            }
            button.button type="submit" { "Plan" }
        }
        @match &plan {
            Some(Ok(text)) => { pre #plan-output { (text) } p.muted { "Apply it with " code { "cellar apply" } "; the console does not apply." } }
            Some(Err(message)) => { p.error role="alert" { (message) } }
            None => {}
        }
        h2 #versions { "Applied versions" }
        @if by_version.is_empty() { p.muted { "Nothing applied yet: " code { "cellar apply" } "." } }
        table {
            thead { tr { th.num { "Repo version" } th { "Applied" } th { "Specs written" } } }
            tbody {
                @for (version, changed) in by_version.iter().rev() {
                    tr {
                        td.num { (version) }
                        td { (changed.first().map(|c| time_text(c.applied_at.timestamp_millis())).unwrap_or_default()) }
                        td {
                            @for (i, c) in changed.iter().enumerate() {
                                @if i > 0 { ", " }
                                @if c.removed { del { (kind_text(c.kind)) " " (c.name) } }
                                @else if matches!(c.kind, SpecKind::FeatureGroup | SpecKind::OnDemandGroup) {
                                    (kind_text(c.kind)) " " a href={"/ui/groups/" (c.name)} { (c.name) } " v" (c.version)
                                } @else {
                                    (kind_text(c.kind)) " " (c.name) " v" (c.version)
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Registry", &access, "/ui/registry", body)
}

fn kind_text(kind: SpecKind) -> &'static str {
    match kind {
        SpecKind::Entity => "entity",
        SpecKind::FeatureGroup => "group",
        SpecKind::OnDemandGroup => "on-demand group",
        SpecKind::Ingestion => "ingestion",
        SpecKind::FeatureService => "service",
    }
}

fn entities(repo: &FeatureRepo) -> Markup {
    html! {
        table {
            thead { tr { th { "Entity" } th { "Keys" } th { "Feature groups" } th { "Description" } } }
            tbody {
                @for e in &repo.entities {
                    tr {
                        td { (e.name) }
                        td { @for (i, k) in e.keys.iter().enumerate() { @if i > 0 { ", " } code { (k.name) } " " small { (format!("{:?}", k.key_type).to_lowercase()) } } }
                        td { @for (i, g) in repo.groups.iter().filter(|g| g.entity == e.name).enumerate() {
                            @if i > 0 { ", " } a href={"/ui/groups/" (g.name)} { (g.name) } } }
                        td.muted { (e.description.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
    }
}

fn services(repo: &FeatureRepo) -> Markup {
    html! {
        @if repo.services.is_empty() { p.muted { "None." } }
        @else {
            table {
                thead { tr { th { "Service" } th { "Features" } th { "Logging" } th { "Description" } } }
                tbody {
                    @for s in &repo.services {
                        tr {
                            td { (s.name) }
                            td { @for f in &s.features {
                                div { a href={"/ui/groups/" (f.group)} { (f.group) } ": "
                                    @match &f.features { Some(names) => (names.join(", ")), None => "all" } }
                            } }
                            td { @if s.logging.is_off() { span.muted { "off" } } @else { (format!("{:.0}% of reads", s.logging.sample_rate * 100.0)) } }
                            td.muted { (s.description.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// The plan of the repo in `dir`, if `dir` is the server's repo directory or below it.
async fn preview(console: &Console, dir: &str) -> Result<String, String> {
    let dir = within(&console.repo_dir, Path::new(dir))?;
    match crate::repo::plan_repo(&console.registry, &dir).await {
        Ok((_, plan)) => Ok(crate::repo::render_plan(&plan)),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// `dir`, resolved, if it is `root` or below it: the console reads no other directory.
fn within(root: &Path, dir: &Path) -> Result<PathBuf, String> {
    let root = root
        .canonicalize()
        .map_err(|e| format!("the server's repo directory {}: {e}", root.display()))?;
    let wanted = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        root.join(dir)
    };
    let resolved = wanted
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    if resolved.starts_with(&root) {
        Ok(resolved)
    } else {
        Err(format!(
            "{} is outside the server's repo directory {}: plan previews read only below it",
            dir.display(),
            root.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_previews_stay_in_the_repo_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("next")).unwrap();
        assert!(within(root.path(), Path::new("next")).is_ok());
        assert!(within(root.path(), &root.path().join("next")).is_ok());
        assert!(within(root.path(), Path::new("."))
            .unwrap()
            .ends_with(root.path().file_name().unwrap()));
        let err = within(root.path(), Path::new("..")).unwrap_err();
        assert!(err.contains("outside the server's repo directory"), "{err}");
        let err = within(root.path(), Path::new("/etc")).unwrap_err();
        assert!(err.contains("outside"), "{err}");
        assert!(within(root.path(), Path::new("missing")).is_err());
    }
}
