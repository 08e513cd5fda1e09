//! The overview: every feature group with its kind, entity, tiers, freshness, read rate, hit
//! ratio per tier and what is failing, marked red where it is outside its thresholds.

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use cellar_auth::Access;
use cellar_registry::{JobFilter, JobState};
use cellar_spec::repo::STREAM_FRESHNESS;
use cellar_spec::{FeatureRepo, GroupKind, Tier};
use maud::{html, Markup};

use super::chart::compact;
use super::{
    counted, duration_text, now_ms, refreshing, refused_view, registry_unavailable, time_text,
    Console, LOW_HIT_RATIO, RELOAD_SECS,
};

/// The span hit ratios and rates on the overview are taken over.
const WINDOW_MS: i64 = 5 * 60_000;
/// Newest jobs looked at for ingestions whose last job failed.
const RECENT_JOBS: i64 = 200;
/// Dead letters counted at most: enough to mark a group, cheap enough for every load.
const COUNTED_DEAD_LETTERS: usize = 1000;

/// One stored group's row.
struct Row {
    name: String,
    kind: &'static str,
    entity: String,
    tiers: Vec<Tier>,
    /// Seconds since the newest event written, and from event time to written.
    age: Option<f64>,
    delay: Option<f64>,
    /// Seconds the newest event may be old (`FeatureRepo::freshness_objective`).
    stale_after: Option<f64>,
    reads: Option<f64>,
    ratios: Vec<(Tier, Option<f64>)>,
    failed_jobs: usize,
    dead_letters: Option<usize>,
}

impl Row {
    fn stale(&self) -> bool {
        self.age
            .zip(self.stale_after)
            .is_some_and(|(age, limit)| age > limit)
    }

    fn low_ratio(ratio: Option<f64>) -> bool {
        ratio.is_some_and(|r| r < LOW_HIT_RATIO)
    }

    fn bad(&self) -> bool {
        self.stale()
            || self.ratios.iter().any(|(_, r)| Row::low_ratio(*r))
            || self.failed_jobs > 0
            || self.dead_letters.is_some_and(|d| d > 0)
    }
}

pub(super) async fn page(State(console): State<Console>, access: Access) -> Response {
    if let Some(resp) = refused_view(&access) {
        return resp;
    }
    let applied = match console.registry.current().await {
        Ok(applied) => applied,
        Err(e) => return registry_unavailable(&access, &e),
    };
    let (repo, version, applied_at) = match applied {
        Some(a) => (a.repo, a.version, Some(a.applied_at)),
        None => (FeatureRepo::default(), 0, None),
    };
    let failed = failed_jobs_by_group(&console, &repo).await;
    let dead = dead_letters_by_group(&console, &repo).await;
    let rows: Vec<Row> = repo
        .groups
        .iter()
        .map(|g| row(&console, &repo, g, &failed, dead.as_ref()))
        .collect();
    let bad = rows.iter().filter(|r| r.bad()).count();
    let sampled = console.history.latest_at();
    let body = html! {
        h1 { "Feature groups " small { (repo.groups.len()) " stored, " (repo.on_demand.len()) " on demand · repo version " (version)
            @if let Some(at) = applied_at { " applied " (at.format("%Y-%m-%d %H:%M UTC")) } } }
        @if bad > 0 {
            p.error role="alert" { (bad) " of " (rows.len()) " groups need a look: marked red below." }
        }
        table #groups {
            thead { tr {
                th { "Group" } th { "Kind" } th { "Entity" } th { "Tiers" }
                th.num title="Time since the newest event written to the group by this server" { "Newest event" }
                th.num title="From event time to written, for the newest record of the last write" { "Ingestion latency" }
                th.num title="Entities read per second, last 5 min" { "Reads/s" }
                th.num title="Hits over lookups per tier, last 5 min" { "Hit ratio" }
                th.num title="Ingestions whose last job failed (among the newest 200 jobs), and dead letters waiting" { "Errors" }
            } }
            tbody {
                @for r in &rows { (row_markup(r)) }
                @for g in &repo.on_demand {
                    tr {
                        td { span.mark {} a href={"/ui/groups/" (g.name)} { (g.name) } }
                        td { "on demand" } td.muted { "-" } td.muted { "-" }
                        td.num.muted colspan="5" {
                            "computed per request"
                            @if !g.sources.is_empty() { ", reading " (counted(g.sources.len() as u64, "external source")) }
                        }
                    }
                }
            }
        }
        p.muted {
            "Red: newest event older than the group's " code { "freshness" } " (" (duration_text(STREAM_FRESHNESS.as_secs_f64()))
            " for a stream-fed group that declares none), a tier's hit ratio under "
            (format!("{:.0}%", LOW_HIT_RATIO * 100.0)) ", an ingestion whose last job failed, or a dead letter. "
            @match sampled {
                Some(at) => { "Rates from the server's metrics, sampled every 10 s, last at " (time_text(at)) "." }
                None => { "Rates appear once the server has sampled its metrics twice (every 10 s)." }
            }
        }
    };
    refreshing("Overview", &access, "/ui", Some(RELOAD_SECS), body)
}

fn row(
    console: &Console,
    repo: &FeatureRepo,
    group: &cellar_spec::FeatureGroup,
    failed: &HashMap<String, usize>,
    dead: Option<&HashMap<String, usize>>,
) -> Row {
    let now = now_ms();
    let fresh = console.freshness.of(&group.name);
    let history = &console.history;
    let reads = match group.serving.tiers.first() {
        Some(tier) => window_rate(
            history,
            "cellar_cache_lookups_total",
            &[("tier", tier_name(*tier)), ("group", &group.name)],
        ),
        None => window_rate(
            history,
            "cellar_store_reads_total",
            &[("group", &group.name)],
        ),
    };
    let ratios = group
        .serving
        .tiers
        .iter()
        .map(|t| (*t, window_ratio(history, tier_name(*t), &group.name)))
        .collect();
    let stale_after = stale_after(repo, group);
    Row {
        name: group.name.clone(),
        kind: match group.kind {
            GroupKind::Attribute => "attribute",
            GroupKind::Timeseries => "timeseries",
        },
        entity: group.entity.clone(),
        tiers: group.serving.tiers.clone(),
        age: fresh
            .filter(|f| f.last_write_ms > 0)
            .map(|f| (now - f.newest_event_ms) as f64 / 1000.0),
        delay: fresh
            .filter(|f| f.last_write_ms > 0)
            .map(|f| f.last_delay_ms as f64 / 1000.0),
        stale_after,
        reads,
        ratios,
        failed_jobs: failed.get(&group.name).copied().unwrap_or(0),
        dead_letters: dead.map(|d| d.get(&group.name).copied().unwrap_or(0)),
    }
}

fn row_markup(r: &Row) -> Markup {
    let tiers: Vec<&str> = r.tiers.iter().map(|t| tier_name(*t)).collect();
    html! {
        tr class=[r.bad().then_some("bad")] data-group=(r.name) {
            td { span.mark.bad[r.bad()] {} a href={"/ui/groups/" (r.name)} { (r.name) } }
            td { (r.kind) }
            td { (r.entity) }
            td { @if tiers.is_empty() { span.muted { "store only" } } @else { (tiers.join(", ")) } }
            td.num.bad-value[r.stale()] {
                @match r.age { Some(a) => { (duration_text(a)) " ago" } None => span.muted { "no write recorded" } }
                @if let Some(limit) = r.stale_after { br; span.muted { "at most " (duration_text(limit)) } }
            }
            td.num { @match r.delay { Some(d) => (duration_text(d)), None => span.muted { "-" } } }
            td.num { @match r.reads { Some(v) => (compact(v)), None => span.muted { "-" } } }
            td.num {
                @for (tier, ratio) in &r.ratios {
                    span.bad-value[Row::low_ratio(*ratio)] {
                        (tier_name(*tier)) " "
                        @match ratio { Some(v) => (format!("{:.0}%", v * 100.0)), None => "-" }
                    }
                    " "
                }
                @if r.ratios.is_empty() { span.muted { "-" } }
            }
            td.num {
                @if r.failed_jobs > 0 { span.bad-value { (counted(r.failed_jobs as u64, "failed job")) } " " }
                @match r.dead_letters {
                    Some(0) => { @if r.failed_jobs == 0 { span.muted { "none" } } }
                    Some(n) => span.bad-value { (counted(n as u64, "dead letter")) },
                    None => { @if r.failed_jobs == 0 { span.muted { "none failed" } } }
                }
            }
        }
    }
}

/// Seconds a group's newest event may be old before it counts as stale, if it ever does.
pub(super) fn stale_after(repo: &FeatureRepo, group: &cellar_spec::FeatureGroup) -> Option<f64> {
    repo.freshness_objective(group).map(|d| d.as_secs_f64())
}

pub(super) fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Local => "local",
        Tier::Remote => "remote",
    }
}

/// The per-second rate of a counter over the last [`WINDOW_MS`] of samples.
fn window_rate(
    history: &super::samples::MetricsHistory,
    name: &str,
    labels: super::samples::Labels,
) -> Option<f64> {
    let sums = history.sums(name, labels);
    let (t1, v1) = *sums.last()?;
    let (t0, v0) = *sums.iter().find(|(t, _)| *t >= t1 - WINDOW_MS)?;
    (t1 > t0).then(|| (v1 - v0).max(0.0) / ((t1 - t0) as f64 / 1000.0))
}

/// Hits over lookups of a tier of a group over the last [`WINDOW_MS`].
fn window_ratio(history: &super::samples::MetricsHistory, tier: &str, group: &str) -> Option<f64> {
    let delta = |outcome| {
        let sums = history.sums(
            "cellar_cache_lookups_total",
            &[("tier", tier), ("group", group), ("outcome", outcome)],
        );
        let (t1, v1) = *sums.last()?;
        let (_, v0) = *sums.iter().find(|(t, _)| *t >= t1 - WINDOW_MS)?;
        Some((v1 - v0).max(0.0))
    };
    let hits = delta("hit").unwrap_or(0.0) + delta("negative_hit").unwrap_or(0.0);
    let misses = delta("miss").unwrap_or(0.0);
    (hits + misses > 0.0).then(|| hits / (hits + misses))
}

/// Ingestions whose newest job failed (a failure since followed by a job that succeeded is
/// over), counted by the group they write; looked for among the newest jobs.
async fn failed_jobs_by_group(console: &Console, repo: &FeatureRepo) -> HashMap<String, usize> {
    let filter = JobFilter {
        ingestion: None,
        states: Vec::new(),
        limit: RECENT_JOBS,
    };
    let mut out = HashMap::new();
    let Ok(jobs) = console.registry.list_jobs(&filter).await else {
        return out;
    };
    // Newest first: the first job seen of an ingestion is its newest.
    let mut seen = std::collections::HashSet::new();
    for job in jobs {
        if !seen.insert(job.ingestion.clone()) || job.state != JobState::Failed {
            continue;
        }
        if let Some(i) = repo.ingestions.iter().find(|i| i.name == job.ingestion) {
            *out.entry(i.into.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// Dead letters waiting, by the group their ingestion writes; `None` when they cannot be
/// counted quickly (Kafka: see the stream page).
async fn dead_letters_by_group(
    console: &Console,
    repo: &FeatureRepo,
) -> Option<HashMap<String, usize>> {
    let ingestion = console.ingestion.as_ref()?;
    if !ingestion.is_embedded() {
        return None;
    }
    let letters = ingestion
        .dead_letters()
        .list(COUNTED_DEAD_LETTERS, None)
        .await
        .ok()?;
    let mut out = HashMap::new();
    for letter in letters {
        let Some(name) = &letter.ingestion else {
            continue;
        };
        if let Some(i) = repo.ingestions.iter().find(|i| &i.name == name) {
            *out.entry(i.into.clone()).or_insert(0) += 1;
        }
    }
    Some(out)
}
