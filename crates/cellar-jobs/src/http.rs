//! The jobs API, merged into the server's router (the console has the jobs' pages).
//!
//! - `GET /v1/jobs?ingestion=&state=&limit=`: jobs, newest first;
//! - `POST /v1/jobs` `{"ingestion", "from", "to", "max_attempts"}`: submits a backfill, which
//!   this server runs (202 with the job);
//! - `GET /v1/jobs/{id}`: the job and its shards;
//! - `POST /v1/jobs/{id}/retry`, `POST /v1/jobs/{id}/cancel`;
//! - `POST /materialize`, `POST /materialize-incremental`: Feast's, as backfills
//!   ([`crate::materialize`]).
//!
//! Errors have the serving API's shape: `{"error": {"code", "kind", "message"}}`.
//!
//! Every route needs `operate_jobs` on the job's ingestion (a list without `ingestion`, on
//! every ingestion); submits, retries and cancels are written to the audit log.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cellar_auth::{Access, Action, Audit, ResourceKind};
use cellar_ingest_batch::Period;
use cellar_registry::{Job, JobFilter, JobState, RegistryError, ShardRun};
use serde::Deserialize;

use crate::error::JobError;
use crate::executor::{Executor, JobRequest, DEFAULT_MAX_ATTEMPTS};

/// Jobs a list returns when the request does not say.
pub const DEFAULT_LIST_LIMIT: i64 = 50;
pub const MAX_LIST_LIMIT: i64 = 1000;

/// What the job routes share.
#[derive(Clone)]
pub(crate) struct Jobs {
    pub executor: Executor,
    pub audit: Audit,
}

/// The routes above, served by `executor`, operator actions recorded in `audit`.
pub fn jobs_router(executor: Executor, audit: Audit) -> Router {
    Router::new()
        .route("/v1/jobs", get(list).post(submit))
        .route("/v1/jobs/{id}", get(show))
        .route("/v1/jobs/{id}/retry", post(retry))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/materialize", post(crate::materialize::materialize))
        .route(
            "/materialize-incremental",
            post(crate::materialize::materialize_incremental),
        )
        .with_state(Jobs { executor, audit })
}

pub(crate) fn denied(e: cellar_auth::Denied) -> Response {
    error(StatusCode::FORBIDDEN, "permission_denied", e.to_string())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    ingestion: Option<String>,
    /// Comma-separated states.
    state: Option<String>,
    limit: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    ingestion: String,
    /// Start of the period, RFC 3339 or `YYYY-MM-DD` (UTC).
    from: Option<String>,
    /// End of the period (exclusive), same forms.
    to: Option<String>,
    max_attempts: Option<u32>,
}

async fn list(
    State(Jobs { executor, .. }): State<Jobs>,
    access: Access,
    Query(q): Query<ListQuery>,
) -> Response {
    let allowed = match &q.ingestion {
        Some(name) => access.check(Action::OperateJobs, ResourceKind::Ingestion, name),
        None => access.check_every(Action::OperateJobs, ResourceKind::Ingestion),
    };
    if let Err(e) = allowed {
        return denied(e);
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return bad_request(format!(
            "limit: {limit} is out of range, expected 1 to {MAX_LIST_LIMIT}"
        ));
    }
    let states = match q.state.as_deref().map(parse_states).transpose() {
        Ok(states) => states.unwrap_or_default(),
        Err(message) => return bad_request(message),
    };
    let filter = JobFilter {
        ingestion: q.ingestion,
        states,
        limit,
    };
    match executor.registry().list_jobs(&filter).await {
        Ok(jobs) => Json(serde_json::json!({ "jobs": jobs })).into_response(),
        Err(e) => registry_error(e),
    }
}

async fn submit(
    State(Jobs { executor, audit }): State<Jobs>,
    access: Access,
    body: axum::body::Bytes,
) -> Response {
    let body: SubmitBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(e) => return bad_request(format!("invalid job request: {e}")),
    };
    let resource = format!("ingestion:{}", body.ingestion);
    if let Err(e) = access.check(
        Action::OperateJobs,
        ResourceKind::Ingestion,
        &body.ingestion,
    ) {
        audit.record(&access, Action::OperateJobs, &resource, 0, "denied: submit");
        return denied(e);
    }
    let period = match parse_period(body.from.as_deref(), body.to.as_deref()) {
        Ok(period) => period,
        Err(message) => return bad_request(message),
    };
    let request = JobRequest {
        max_attempts: body.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
        ..JobRequest::backfill(&body.ingestion, period)
    };
    match executor.submit(&request).await {
        Ok(job) => {
            audit.record(
                &access,
                Action::OperateJobs,
                &resource,
                0,
                &format!("ok: submitted job {}", job.id),
            );
            executor.spawn_run(job.id);
            (StatusCode::ACCEPTED, Json(job)).into_response()
        }
        Err(e) => {
            audit.record(&access, Action::OperateJobs, &resource, 0, "error: submit");
            job_error(e)
        }
    }
}

/// The job `id` if the caller may operate its ingestion; else the answer to send.
async fn granted_job(executor: &Executor, access: &Access, id: i64) -> Result<Job, Response> {
    match executor.registry().job(id).await {
        Ok(Some(job)) => access
            .check(Action::OperateJobs, ResourceKind::Ingestion, &job.ingestion)
            .map(|()| job)
            .map_err(denied),
        // Only a caller who may see every job learns that one does not exist.
        Ok(None) => Err(
            match access.check_every(Action::OperateJobs, ResourceKind::Ingestion) {
                Ok(()) => not_found(id),
                Err(e) => denied(e),
            },
        ),
        Err(e) => Err(registry_error(e)),
    }
}

async fn show(
    State(Jobs { executor, .. }): State<Jobs>,
    access: Access,
    Path(id): Path<i64>,
) -> Response {
    if let Err(resp) = granted_job(&executor, &access, id).await {
        return resp;
    }
    match detail(&executor, id).await {
        Ok(Some((job, shards))) => {
            Json(serde_json::json!({ "job": job, "shards": shards })).into_response()
        }
        Ok(None) => not_found(id),
        Err(e) => registry_error(e),
    }
}

async fn retry(State(jobs): State<Jobs>, access: Access, Path(id): Path<i64>) -> Response {
    act_on_job(&jobs, &access, id, "retry", |executor| async move {
        executor.retry(id).await
    })
    .await
}

async fn cancel(State(jobs): State<Jobs>, access: Access, Path(id): Path<i64>) -> Response {
    act_on_job(&jobs, &access, id, "cancel", |executor| async move {
        executor.registry().cancel_job(id).await
    })
    .await
}

/// Does `act` (`verb`) to job `id` if the caller may operate the job's ingestion, and records
/// the attempt in the audit log whatever its outcome.
async fn act_on_job<F, Fut>(jobs: &Jobs, access: &Access, id: i64, verb: &str, act: F) -> Response
where
    F: FnOnce(Executor) -> Fut,
    Fut: std::future::Future<Output = Result<Job, RegistryError>>,
{
    let record = |resource: &str, outcome: String| {
        jobs.audit
            .record(access, Action::OperateJobs, resource, 0, &outcome)
    };
    let job = match granted_job(&jobs.executor, access, id).await {
        Ok(job) => job,
        Err(resp) => {
            record(&format!("job:{id}"), format!("refused: {verb}"));
            return resp;
        }
    };
    let resource = format!("ingestion:{}", job.ingestion);
    match act(jobs.executor.clone()).await {
        Ok(job) => {
            record(&resource, format!("ok: {verb} job {id}"));
            Json(job).into_response()
        }
        Err(e) => {
            record(&resource, format!("error: {verb} job {id}"));
            registry_error(e)
        }
    }
}

async fn detail(
    executor: &Executor,
    id: i64,
) -> Result<Option<(Job, Vec<ShardRun>)>, RegistryError> {
    let Some(job) = executor.registry().job(id).await? else {
        return Ok(None);
    };
    let shards = executor.registry().shards(id).await?;
    Ok(Some((job, shards)))
}

/// `a,b` to states, naming the one not known.
pub fn parse_states(text: &str) -> Result<Vec<JobState>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            JobState::parse(s).ok_or_else(|| {
                format!(
                    "state: `{s}` is not a job state (submitted, runnable, running, succeeded, \
                     failed, cancelled)"
                )
            })
        })
        .collect()
}

/// A period from optional `from` and `to` times.
pub fn parse_period(from: Option<&str>, to: Option<&str>) -> Result<Period, String> {
    let from_ms = from.map(|t| parse_time("from", t)).transpose()?;
    let to_ms = to.map(|t| parse_time("to", t)).transpose()?;
    if let (Some(f), Some(t)) = (from_ms, to_ms) {
        if f >= t {
            return Err(format!(
                "from ({}) must be before to ({})",
                from.unwrap_or_default(),
                to.unwrap_or_default()
            ));
        }
    }
    Ok(Period { from_ms, to_ms })
}

/// RFC 3339, or a `YYYY-MM-DD` date meaning its midnight UTC, to epoch milliseconds.
pub fn parse_time(field: &str, text: &str) -> Result<i64, String> {
    if let Some(ms) = cellar_spec::value::parse_rfc3339(text) {
        return Ok(ms);
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
        .ok_or_else(|| {
            format!(
                "{field}: `{text}` is not a time: expected RFC 3339 (2026-01-31T00:00:00Z) or a \
                 date (2026-01-31)"
            )
        })
}

pub(crate) fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = serde_json::json!({
        "error": { "code": status.as_u16(), "kind": kind, "message": message }
    });
    (status, Json(body)).into_response()
}

pub(crate) fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_argument", message)
}

fn not_found(id: i64) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("there is no job {id}"),
    )
}

pub(crate) fn registry_error(e: RegistryError) -> Response {
    match &e {
        RegistryError::NoSuchJob { .. } => error(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        RegistryError::JobState { .. } => {
            error(StatusCode::CONFLICT, "failed_precondition", e.to_string())
        }
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    }
}

pub(crate) fn job_error(e: JobError) -> Response {
    match e {
        JobError::Invalid(message) => bad_request(message),
        JobError::NotFound(message) => error(StatusCode::NOT_FOUND, "not_found", message),
        JobError::Registry(e) => registry_error(e),
        e => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_dates() {
        assert_eq!(parse_time("from", "1970-01-02"), Ok(86_400_000));
        assert_eq!(parse_time("from", "1970-01-01T00:00:01Z"), Ok(1000));
        let err = parse_time("to", "yesterday").unwrap_err();
        assert!(err.starts_with("to: `yesterday` is not a time"), "{err}");
        let err = parse_period(Some("1970-01-02"), Some("1970-01-01")).unwrap_err();
        assert_eq!(err, "from (1970-01-02) must be before to (1970-01-01)");
        assert_eq!(
            parse_period(None, Some("1970-01-02")),
            Ok(Period {
                from_ms: None,
                to_ms: Some(86_400_000)
            })
        );
    }

    #[test]
    fn states_are_named_when_unknown() {
        assert_eq!(
            parse_states("failed, running"),
            Ok(vec![JobState::Failed, JobState::Running])
        );
        assert!(parse_states("done")
            .unwrap_err()
            .contains("`done` is not a job state"));
    }
}
