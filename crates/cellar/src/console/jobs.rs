//! Batch jobs: the list with filters, the `depends_on` graph of batch ingestions with each
//! one's watermark and next run, a job's page (shards, attempts, rows, progress, rejected
//! rows), and its retry, cancel and backfill, each confirmed first.

use std::collections::HashMap;

use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use cellar_auth::{Access, Action, ResourceKind};
use cellar_jobs::http::{parse_period, parse_states};
use cellar_jobs::schedule::{dependency_order, CronSchedule};
use cellar_jobs::JobRequest;
use cellar_registry::{Job, JobFilter, JobState, ShardRun, WatermarkValue};
use cellar_spec::{FeatureRepo, IngestionSource};
use maud::{html, Markup};
use serde::Deserialize;

use super::{
    action_button, after, confirm_page, denied, layout, now_ms, problem, refreshing, refused_view,
    registry_unavailable, time_text, Console, Outcome, RELOAD_JOB_SECS,
};

/// Jobs the list shows at most.
const LISTED: i64 = 100;

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    ingestion: Option<String>,
    state: Option<String>,
    #[serde(flatten)]
    outcome: Outcome,
}

pub(super) async fn list(
    State(console): State<Console>,
    access: Access,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(resp) = refused_view(&access) {
        return resp;
    }
    let ingestion = q.ingestion.clone().filter(|i| !i.is_empty());
    let states = match q
        .state
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(parse_states)
    {
        None => Vec::new(),
        Some(Ok(states)) => states,
        Some(Err(message)) => {
            return problem(StatusCode::BAD_REQUEST, &access, "Bad filter", &message)
        }
    };
    let filter = JobFilter {
        ingestion: ingestion.clone(),
        states,
        limit: LISTED,
    };
    let (jobs, repo) = match (
        console.registry.list_jobs(&filter).await,
        console.registry.current().await,
    ) {
        (Ok(jobs), Ok(applied)) => (jobs, applied.map(|a| a.repo).unwrap_or_default()),
        (Err(e), _) | (_, Err(e)) => return registry_unavailable(&access, &e),
    };
    let batch: Vec<&str> = repo
        .ingestions
        .iter()
        .filter(|i| matches!(i.source, IngestionSource::Batch(_)))
        .map(|i| i.name.as_str())
        .collect();
    let graph = graph(&console, &repo).await;
    let body = html! {
        h1 { "Batch jobs" }
        (q.outcome.banner())
        form.filters method="get" action="/ui/jobs" {
            label { "Ingestion"
                select name="ingestion" {
                    option value="" { "all" }
                    @for name in &batch { option value=(name) selected[ingestion.as_deref() == Some(*name)] { (name) } }
                }
            }
            label { "State"
                select name="state" {
                    option value="" { "any" }
                    @for s in JobState::ALL { option value=(s.as_str()) selected[q.state.as_deref() == Some(s.as_str())] { (s.as_str()) } }
                }
            }
            button.button type="submit" { "Filter" }
        }
        table #jobs {
            thead { tr {
                th.num { "Job" } th { "Ingestion" } th { "Kind" } th { "State" } th { "Period" }
                th { "Progress" } th.num { "Rows written" } th.num { "Rejected" } th { "Submitted" }
            } }
            tbody {
                @for job in &jobs {
                    tr data-job=(job.id) {
                        td.num { a href={"/ui/jobs/" (job.id)} { (job.id) } }
                        td { (job.ingestion) } td { (job.kind.as_str()) }
                        td class={"state-" (job.state.as_str())} { (job.state.as_str()) }
                        td { (period(job)) }
                        td { (progress(job)) }
                        td.num { (job.rows_written) }
                        td.num.bad-value[job.rows_rejected > 0] { (job.rows_rejected) }
                        td { (time_text(job.submitted_at.timestamp_millis())) }
                    }
                }
                @if jobs.is_empty() { tr { td.muted colspan="9" { "No jobs match." } } }
            }
        }
        h2 { "Scheduled ingestions " small { "each after the ones it depends on" } }
        (graph)
        h2 { "Backfill" }
        @if console.executor.is_some() && !batch.is_empty() {
            form.filters method="get" action="/ui/backfill" {
                label { "Ingestion" select name="ingestion" { @for name in &batch { option value=(name) { (name) } } } }
                label { "From (YYYY-MM-DD or RFC 3339, optional)" input type="text" name="from"; }
                label { "To (exclusive, optional)" input type="text" name="to"; }
                button.button type="submit" { "Backfill…" }
            }
        } @else {
            p.muted { "This server does not run batch jobs (jobs.in_server is false), or the repo has no batch ingestion." }
        }
    };
    layout("Batch jobs", &access, "/ui/jobs", body)
}

fn period(job: &Job) -> String {
    let end = |ms: Option<i64>, open: &str| ms.map_or(open.to_owned(), time_text);
    format!(
        "{} to {}",
        end(job.period_from_ms, "the start"),
        end(job.period_to_ms, "now")
    )
}

fn progress(job: &Job) -> Markup {
    let fraction = match job.rows_planned {
        Some(planned) if planned > 0 => (job.rows_read as f64 / planned as f64).clamp(0.0, 1.0),
        _ if job.state == JobState::Succeeded => 1.0,
        _ => 0.0,
    };
    // A native bar: the pages carry no inline style (the policy allows the stylesheet only).
    let percent = format!("{:.0}", fraction * 100.0);
    html! {
        progress value=(percent) max="100" title={(job.rows_read) " of " (job.rows_planned.map_or("?".to_owned(), |p| p.to_string())) " rows read"} {
            (percent) "%"
        }
        " " small { (job.shards_succeeded) "/" (job.shards_total) " shards" }
    }
}

/// The batch ingestions in dependency order, as levels: each after the ones it depends on.
async fn graph(console: &Console, repo: &FeatureRepo) -> Markup {
    let order = dependency_order(repo);
    if order.is_empty() {
        return html! { p.muted { "No batch ingestions." } };
    }
    let mut level: HashMap<&str, usize> = HashMap::new();
    for name in &order {
        let deps = repo
            .ingestions
            .iter()
            .find(|i| &i.name == name)
            .and_then(|i| match &i.source {
                IngestionSource::Batch(b) => Some(b.depends_on.as_slice()),
                IngestionSource::Stream(_) => None,
            })
            .unwrap_or_default();
        let l = deps
            .iter()
            .filter_map(|d| level.get(d.as_str()))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        level.insert(name.as_str(), l);
    }
    let depth = level.values().max().copied().unwrap_or(0);
    let now = chrono::Utc::now();
    let mut nodes = Vec::new();
    for name in &order {
        let Some(ingestion) = repo.ingestions.iter().find(|i| &i.name == name) else {
            continue;
        };
        let IngestionSource::Batch(batch) = &ingestion.source else {
            continue;
        };
        let watermark = console.registry.watermark(name).await.ok().flatten();
        let last = console
            .registry
            .list_jobs(&JobFilter {
                ingestion: Some(name.clone()),
                states: Vec::new(),
                limit: 1,
            })
            .await
            .ok()
            .and_then(|jobs| jobs.into_iter().next());
        let next = batch
            .schedule
            .as_deref()
            .and_then(|s| CronSchedule::parse(s).ok())
            .and_then(|s| s.next_after(now));
        nodes.push((name.as_str(), batch, watermark, last, next));
    }
    html! {
        div.graph #graph {
            @for l in 0..=depth {
                div.level {
                    @if l > 0 { span.arrow { "↳" } }
                    @for (name, batch, watermark, last, next) in nodes.iter().filter(|n| level.get(n.0) == Some(&l)) {
                        div.node data-ingestion=(name) {
                            strong { (name) }
                            @if !batch.depends_on.is_empty() { " " small { "after " (batch.depends_on.join(", ")) } }
                            br;
                            small {
                                @match &batch.schedule { Some(s) => { "schedule " code { (s) } } None => { "backfill only" } }
                                " · watermark "
                                @match watermark {
                                    Some(w) => {
                                        @match &w.value {
                                            WatermarkValue::Millis(ms) => { (time_text(*ms)) }
                                            WatermarkValue::Text(t) => { code { (t) } }
                                        }
                                    }
                                    None => { "none" }
                                }
                                @if let Some(next) = next { " · next run " (next.format("%Y-%m-%d %H:%M UTC")) }
                                @if let Some(job) = last {
                                    " · last job " a href={"/ui/jobs/" (job.id)} { (job.id) }
                                    " " span class={"state-" (job.state.as_str())} { (job.state.as_str()) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub(super) async fn page(
    State(console): State<Console>,
    access: Access,
    Path(id): Path<i64>,
    Query(outcome): Query<Outcome>,
) -> Response {
    if let Some(resp) = refused_view(&access) {
        return resp;
    }
    let job = match find_job(&console, &access, id).await {
        Ok(found) => found,
        Err(resp) => return *resp,
    };
    let shards: Vec<ShardRun> = match console.registry.shards(id).await {
        Ok(shards) => shards,
        Err(e) => return registry_unavailable(&access, &e),
    };
    let rejects = console
        .executor
        .as_ref()
        .map(|e| e.rejects_dir().to_path_buf());
    let buttons = buttons(&console, &access, &job);
    let body = html! {
        h1 { "Job " (job.id) " " small { (job.ingestion) " · " (job.kind.as_str()) } }
        (outcome.banner())
        div.panel {
            dl.kv {
                dt { "State" } dd #state class={"state-" (job.state.as_str())} { (job.state.as_str()) }
                dt { "Period" } dd { (period(&job)) }
                dt { "Progress" } dd { (progress(&job)) }
                dt { "Rows" } dd { (job.rows_read) " read of " (job.rows_planned.map_or("?".to_owned(), |p| p.to_string())) " planned, "
                    (job.rows_written) " written, " span.bad-value[job.rows_rejected > 0] { (job.rows_rejected) " rejected" } }
                dt { "Runner" } dd { (job.runner) ", " (job.max_attempts) " attempts per shard" }
                dt { "Submitted" } dd { (time_text(job.submitted_at.timestamp_millis())) }
                dt { "Started" } dd { (job.started_at.map_or("-".to_owned(), |t| time_text(t.timestamp_millis()))) }
                dt { "Finished" } dd { (job.finished_at.map_or("-".to_owned(), |t| time_text(t.timestamp_millis()))) }
                dt { "Last progress" } dd { (time_text(job.updated_at.timestamp_millis())) }
                @if let Some(error) = &job.error { dt { "Error" } dd.status-error #error { (error) } }
            }
        }
        p #buttons { (buttons) }
        h2 { "Shards" }
        table #shards {
            thead { tr {
                th.num { "Shard" } th { "State" } th.num { "Attempts" } th.num { "Rows planned" } th.num { "Read" }
                th.num { "Written" } th.num { "Rejected" } th { "Worker" } th { "Last error" } th { "Rejected rows" }
            } }
            tbody {
                @for s in &shards {
                    tr {
                        td.num { (s.index) }
                        td class={"state-" (s.state.as_str())} { (s.state.as_str()) }
                        td.num { (s.attempts) }
                        td.num { (s.rows_planned) } td.num { (s.rows_read) } td.num { (s.rows_written) }
                        td.num.bad-value[s.rows_rejected > 0] { (s.rows_rejected) }
                        td { (s.worker.as_deref().unwrap_or("-")) }
                        td.status-error { (s.error.as_deref().unwrap_or("")) }
                        td { @if s.rows_rejected > 0 { @if let Some(dir) = &rejects {
                            code { (cellar_jobs::executor::reject_path(dir, &job.ingestion, job.id, s.index as u32).display()) }
                        } } }
                    }
                }
                @if shards.is_empty() { tr { td.muted colspan="10" { "Not planned yet." } } }
            }
        }
        p.muted { a href={"/ui/jobs?ingestion=" (job.ingestion)} { "Every job of " (job.ingestion) } }
    };
    let every = (!job.state.is_finished()).then_some(RELOAD_JOB_SECS);
    refreshing(&format!("Job {id}"), &access, "/ui/jobs", every, body)
}

/// Job `id`, or the page saying why not (boxed: a response is large).
async fn find_job(console: &Console, access: &Access, id: i64) -> Result<Job, Box<Response>> {
    match console.registry.job(id).await {
        Ok(Some(job)) => Ok(job),
        Ok(None) => Err(Box::new(problem(
            StatusCode::NOT_FOUND,
            access,
            "No such job",
            &format!("there is no job {id}"),
        ))),
        Err(e) => Err(Box::new(registry_unavailable(access, &e))),
    }
}

fn buttons(console: &Console, access: &Access, job: &Job) -> Markup {
    if console.executor.is_none() {
        return html! { small.muted { "This server does not run batch jobs: retry and cancel from one that does." } };
    }
    let retryable = job.state == JobState::Failed || job.state == JobState::Cancelled;
    let cancellable = !job.state.is_finished();
    html! {
        @if retryable { (action_button(access, Action::OperateJobs, &job.ingestion, &format!("/ui/jobs/{}/retry", job.id), "Retry")) " " }
        @if cancellable { (action_button(access, Action::OperateJobs, &job.ingestion, &format!("/ui/jobs/{}/cancel", job.id), "Cancel")) " " }
        (action_button(access, Action::OperateJobs, &job.ingestion, &format!("/ui/backfill?ingestion={}", job.ingestion), "Backfill…"))
    }
}

/// `retry` or `cancel`.
fn verb(action: &str) -> Option<&'static str> {
    match action {
        "retry" => Some("retry"),
        "cancel" => Some("cancel"),
        _ => None,
    }
}

pub(super) async fn confirm(
    State(console): State<Console>,
    access: Access,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
    if let Some(resp) = refused_view(&access) {
        return resp;
    }
    let Some(verb) = verb(&action) else {
        return problem(
            StatusCode::NOT_FOUND,
            &access,
            "No such action",
            &format!("`{action}`: a job can be retried or cancelled"),
        );
    };
    let job = match find_job(&console, &access, id).await {
        Ok(found) => found,
        Err(resp) => return *resp,
    };
    if let Err(e) = access.check(Action::OperateJobs, ResourceKind::Ingestion, &job.ingestion) {
        return denied(&access, &e);
    }
    let what = match verb {
        "retry" => {
            html! { p { "Run job " (job.id) " of " strong { (job.ingestion) } " again: its failed and cancelled shards get new attempts; shards that succeeded are not run again." } }
        }
        _ => {
            html! { p { "Cancel job " (job.id) " of " strong { (job.ingestion) } ": shards not finished stop being run; what they wrote stays written." } }
        }
    };
    confirm_page(
        &access,
        &format!(
            "{} job {}?",
            if verb == "retry" { "Retry" } else { "Cancel" },
            job.id
        ),
        what,
        &format!("/ui/jobs/{id}/{verb}"),
        &[],
        &format!("/ui/jobs/{id}"),
    )
}

pub(super) async fn act(
    State(console): State<Console>,
    access: Access,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
    let Some(verb) = verb(&action) else {
        return problem(
            StatusCode::NOT_FOUND,
            &access,
            "No such action",
            &format!("`{action}`: a job can be retried or cancelled"),
        );
    };
    let Some(executor) = &console.executor else {
        return after(
            &format!("/ui/jobs/{id}"),
            Err("this server does not run batch jobs".into()),
        );
    };
    let job = match find_job(&console, &access, id).await {
        Ok(found) => found,
        Err(resp) => return *resp,
    };
    let resource = format!("ingestion:{}", job.ingestion);
    if let Err(e) = access.check(Action::OperateJobs, ResourceKind::Ingestion, &job.ingestion) {
        console.audit.record(
            &access,
            Action::OperateJobs,
            &resource,
            0,
            &format!("denied: console {verb} job {id}"),
        );
        return denied(&access, &e);
    }
    let done = match verb {
        "retry" => executor.retry(id).await,
        _ => executor.registry().cancel_job(id).await,
    };
    let outcome = match &done {
        Ok(job) => Ok(format!(
            "Job {id}: {} ({}).",
            if verb == "retry" {
                "retried"
            } else {
                "cancelled"
            },
            job.state.as_str()
        )),
        Err(e) => Err(format!("{verb} failed: {e}")),
    };
    console.audit.record(
        &access,
        Action::OperateJobs,
        &resource,
        0,
        &format!(
            "{}: console {verb} job {id}",
            if done.is_ok() { "ok" } else { "error" }
        ),
    );
    after(&format!("/ui/jobs/{id}"), outcome)
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct BackfillForm {
    ingestion: String,
    from: Option<String>,
    to: Option<String>,
}

impl BackfillForm {
    fn bounds(&self) -> (Option<&str>, Option<&str>) {
        fn given(t: &Option<String>) -> Option<&str> {
            t.as_deref().map(str::trim).filter(|t| !t.is_empty())
        }
        (given(&self.from), given(&self.to))
    }
}

pub(super) async fn confirm_backfill(
    State(console): State<Console>,
    access: Access,
    Query(form): Query<BackfillForm>,
) -> Response {
    if let Some(resp) = refused_view(&access) {
        return resp;
    }
    if let Err(e) = access.check(
        Action::OperateJobs,
        ResourceKind::Ingestion,
        &form.ingestion,
    ) {
        return denied(&access, &e);
    }
    if console.executor.is_none() {
        return after(
            "/ui/jobs",
            Err("this server does not run batch jobs".into()),
        );
    }
    let (from, to) = form.bounds();
    if let Err(message) = parse_period(from, to) {
        return after("/ui/jobs", Err(message));
    }
    let mut fields = vec![("ingestion", form.ingestion.clone())];
    if let Some(from) = from {
        fields.push(("from", from.to_owned()));
    }
    if let Some(to) = to {
        fields.push(("to", to.to_owned()));
    }
    confirm_page(
        &access,
        &format!("Backfill {}?", form.ingestion),
        html! {
            p { "Submit a backfill job of " strong { (form.ingestion) } " over event times from "
                (from.unwrap_or("the start")) " to " (to.unwrap_or("now")) ": it reads the ingestion's source for that period and writes every row again (newer event times win, so nothing newer is overwritten)." }
        },
        "/ui/backfill",
        &fields,
        "/ui/jobs",
    )
}

pub(super) async fn backfill(
    State(console): State<Console>,
    access: Access,
    Form(form): Form<BackfillForm>,
) -> Response {
    let resource = format!("ingestion:{}", form.ingestion);
    if let Err(e) = access.check(
        Action::OperateJobs,
        ResourceKind::Ingestion,
        &form.ingestion,
    ) {
        console.audit.record(
            &access,
            Action::OperateJobs,
            &resource,
            0,
            "denied: console backfill",
        );
        return denied(&access, &e);
    }
    let Some(executor) = &console.executor else {
        return after(
            "/ui/jobs",
            Err("this server does not run batch jobs".into()),
        );
    };
    let (from, to) = form.bounds();
    let period = match parse_period(from, to) {
        Ok(period) => period,
        Err(message) => return after("/ui/jobs", Err(message)),
    };
    match executor
        .submit(&JobRequest::backfill(&form.ingestion, period))
        .await
    {
        Ok(job) => {
            console.audit.record(
                &access,
                Action::OperateJobs,
                &resource,
                0,
                &format!("ok: console submitted job {}", job.id),
            );
            executor.spawn_run(job.id);
            after(
                &format!("/ui/jobs/{}", job.id),
                Ok(format!(
                    "Submitted job {} at {}.",
                    job.id,
                    time_text(now_ms())
                )),
            )
        }
        Err(e) => {
            console.audit.record(
                &access,
                Action::OperateJobs,
                &resource,
                0,
                "error: console backfill",
            );
            after("/ui/jobs", Err(format!("backfill refused: {e}")))
        }
    }
}
