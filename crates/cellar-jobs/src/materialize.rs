//! Feast's materialization, as Feast's `FeatureStore.materialize()` and
//! `materialize_incremental()` send it to a remote feature server: `POST /materialize`
//! `{"start_ts", "end_ts", "feature_views"}` and `POST /materialize-incremental` `{"end_ts",
//! "feature_views"}`.
//!
//! A feature view is a group; it is loaded by its batch ingestions, each as a backfill job
//! over the period asked (every group with a batch ingestion when the request names none).
//! An incremental one starts where the ingestion's last succeeded job ended. The request
//! waits for the jobs (200 with them; a failed one makes it fail, naming the job and why),
//! unless `?async=true`: 202 with the jobs submitted, followed at `/v1/jobs/{id}`.
//!
//! Times without a zone are UTC, as Feast sends them. Each ingestion needs `operate_jobs`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cellar_auth::{Access, Action, ResourceKind};
use cellar_ingest_batch::Period;
use cellar_registry::{Job, JobFilter, JobState};
use cellar_spec::{FeatureRepo, IngestionSource};
use serde::Deserialize;

use crate::executor::JobRequest;
use crate::http::{bad_request, denied, error, job_error, registry_error, Jobs};

#[derive(Debug, Deserialize)]
struct MaterializeBody {
    start_ts: Option<String>,
    end_ts: Option<String>,
    feature_views: Option<Vec<String>>,
    /// Load every row whatever its event time.
    #[serde(default)]
    disable_event_timestamp: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct MaterializeQuery {
    #[serde(rename = "async")]
    run_async: Option<bool>,
}

pub(crate) async fn materialize(
    State(jobs): State<Jobs>,
    access: Access,
    Query(query): Query<MaterializeQuery>,
    body: axum::body::Bytes,
) -> Response {
    run(jobs, access, query, &body, false).await
}

pub(crate) async fn materialize_incremental(
    State(jobs): State<Jobs>,
    access: Access,
    Query(query): Query<MaterializeQuery>,
    body: axum::body::Bytes,
) -> Response {
    run(jobs, access, query, &body, true).await
}

async fn run(
    Jobs { executor, audit }: Jobs,
    access: Access,
    query: MaterializeQuery,
    body: &[u8],
    incremental: bool,
) -> Response {
    let body: MaterializeBody = match serde_json::from_slice(body) {
        Ok(body) => body,
        Err(e) => return bad_request(format!("invalid materialize request: {e}")),
    };
    let time = |field: &str, text: &Option<String>| -> Result<Option<i64>, String> {
        text.as_deref().map(|t| feast_time(field, t)).transpose()
    };
    let (start, end) = match (
        time("start_ts", &body.start_ts),
        time("end_ts", &body.end_ts),
    ) {
        (Ok(start), Ok(end)) => (start, end),
        (Err(e), _) | (_, Err(e)) => return bad_request(e),
    };
    if !incremental && !body.disable_event_timestamp && (start.is_none() || end.is_none()) {
        return bad_request("start_ts and end_ts are required".to_owned());
    }
    // Every ingestion when none is named, as a list of all jobs needs; checked before the
    // repo is read, so that a caller learns nothing of it.
    if body.feature_views.is_none() {
        if let Err(e) = access.check_every(Action::OperateJobs, ResourceKind::Ingestion) {
            return denied(e);
        }
    }
    let repo = match executor.current_repo().await {
        Ok(repo) => repo,
        Err(e) => return job_error(e),
    };
    let ingestions = match ingestions_of(&repo, body.feature_views.as_deref(), &access) {
        Ok(ingestions) => ingestions,
        Err(response) => return *response,
    };
    for name in &ingestions {
        if let Err(e) = access.check(Action::OperateJobs, ResourceKind::Ingestion, name) {
            return denied(e);
        }
    }
    let mut submitted: Vec<Job> = Vec::with_capacity(ingestions.len());
    for name in &ingestions {
        let period = if body.disable_event_timestamp {
            Period::ALL
        } else if incremental {
            let from = match last_loaded(&executor, name).await {
                Ok(from) => from,
                Err(response) => return *response,
            };
            // Loaded up to the end asked already: nothing to do.
            if let (Some(from), Some(end)) = (from, end) {
                if from >= end {
                    continue;
                }
            }
            Period {
                from_ms: from,
                to_ms: end,
            }
        } else {
            Period {
                from_ms: start,
                to_ms: end,
            }
        };
        let resource = format!("ingestion:{name}");
        match executor.submit(&JobRequest::backfill(name, period)).await {
            Ok(job) => {
                audit.record(
                    &access,
                    Action::OperateJobs,
                    &resource,
                    0,
                    &format!("ok: materialize, job {}", job.id),
                );
                submitted.push(job);
            }
            Err(e) => {
                audit.record(
                    &access,
                    Action::OperateJobs,
                    &resource,
                    0,
                    "error: materialize",
                );
                return job_error(e);
            }
        }
    }
    if query.run_async.unwrap_or(false) {
        for job in &submitted {
            executor.spawn_run(job.id);
        }
        return (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "jobs": submitted })),
        )
            .into_response();
    }
    let mut finished = Vec::with_capacity(submitted.len());
    for job in submitted {
        match executor.run(job.id).await {
            Ok(job) if job.state == JobState::Succeeded => finished.push(job),
            Ok(job) => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!(
                        "materializing `{}`: job {} {}: {}",
                        job.ingestion,
                        job.id,
                        job.state,
                        job.error.as_deref().unwrap_or("no reason given")
                    ),
                )
            }
            Err(e) => return job_error(e),
        }
    }
    Json(serde_json::json!({ "jobs": finished })).into_response()
}

/// The batch ingestions loading `views` (groups), or every batch ingestion when none are
/// named; a view that is no group, or that no batch ingestion loads, is refused by name (to a
/// caller who may not operate every ingestion, as a denial: no probing for names).
fn ingestions_of(
    repo: &FeatureRepo,
    views: Option<&[String]>,
    access: &Access,
) -> Result<Vec<String>, Box<Response>> {
    let batch = |group: &str| -> Vec<String> {
        repo.ingestions
            .iter()
            .filter(|i| i.into == group && matches!(i.source, IngestionSource::Batch(_)))
            .map(|i| i.name.clone())
            .collect()
    };
    let Some(views) = views else {
        return Ok(repo
            .ingestions
            .iter()
            .filter(|i| matches!(i.source, IngestionSource::Batch(_)))
            .map(|i| i.name.clone())
            .collect());
    };
    let mut out = Vec::new();
    for view in views {
        if !repo.groups.iter().any(|g| g.name == *view) {
            if let Err(e) = access.check_every(Action::OperateJobs, ResourceKind::Ingestion) {
                return Err(Box::new(denied(e)));
            }
            return Err(Box::new(error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("feature_views: there is no feature group `{view}`"),
            )));
        }
        let loads = batch(view);
        if loads.is_empty() {
            return Err(Box::new(bad_request(format!(
                "feature_views: no batch ingestion loads `{view}`, so there is nothing to \
                 materialize it from (its data arrives by stream or push)"
            ))));
        }
        for name in loads {
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// Where the last succeeded job of `ingestion` ended: its period's end, or when it started for
/// one without an end. None when it never succeeded.
async fn last_loaded(
    executor: &crate::Executor,
    ingestion: &str,
) -> Result<Option<i64>, Box<Response>> {
    let filter = JobFilter {
        ingestion: Some(ingestion.to_owned()),
        states: vec![JobState::Succeeded],
        limit: 1,
    };
    let jobs = executor
        .registry()
        .list_jobs(&filter)
        .await
        .map_err(|e| Box::new(registry_error(e)))?;
    Ok(jobs.first().and_then(|job| {
        job.period_to_ms
            .or_else(|| job.started_at.map(|t| t.timestamp_millis()))
    }))
}

/// A time as Feast sends it: RFC 3339, or ISO 8601 without a zone, meaning UTC.
fn feast_time(field: &str, text: &str) -> Result<i64, String> {
    match cellar_spec::value::parse_naive_utc(text) {
        Some(ms) => Ok(ms),
        None => crate::http::parse_time(field, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feast_times_with_and_without_a_zone() {
        let utc = 1_765_002_393_696;
        assert_eq!(feast_time("t", "2025-12-06T06:26:33.696").unwrap(), utc);
        assert_eq!(
            feast_time("t", "2025-12-06T06:26:33.696+00:00").unwrap(),
            utc
        );
        assert_eq!(
            feast_time("t", "2025-12-06T15:26:33.696+09:00").unwrap(),
            utc
        );
        assert!(feast_time("end_ts", "soon").unwrap_err().contains("end_ts"));
    }
}
