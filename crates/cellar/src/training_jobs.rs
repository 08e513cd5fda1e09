//! Training sets as jobs of the server, for clients that hold a spine but not the history:
//!
//! - `POST /v1/training-sets?service=S&features=g:f,g:*&timestamp_column=&top_n=`, the spine as
//!   the body (`Content-Type: application/vnd.apache.parquet` or `text/csv`): 202 with the job;
//! - `GET /v1/training-sets`: the jobs, newest first; `GET /v1/training-sets/{id}`: one, with its
//!   progress (groups joined or computed, of all);
//! - `GET /v1/training-sets/{id}/output`: the training set, Parquet;
//! - `POST /v1/training-sets/{id}/cancel`, `DELETE /v1/training-sets/{id}`.
//!
//! A job is a directory under `<data_dir>/training-sets/<id>`: its record (`job.json`), the
//! spine as uploaded and the output. The server that took a job runs it, one at a time, after
//! converting what the history has staged so the set sees every write acknowledged before it
//! started. A job a stopped server was running is failed when it starts again; one still
//! waiting runs then.
//!
//! Every route needs `read_features` on what the job reads: the feature service, or each
//! group named; with authentication on, a job is seen only by who submitted it (its spine
//! holds their labels). Submits, cancels and deletes are written to the audit log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cellar_auth::{Access, Action, Audit, Denied, ResourceKind};
use cellar_history::training::CHUNK_ROWS;
use cellar_history::{training_set_file, OfflineHistory, Progress, TrainingPlan};
use cellar_registry::{JobState, Registry};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use crate::config::Config;

/// Jobs waiting to run at most; past them a submit is answered 503.
const MAX_WAITING: usize = 16;

/// A training set job as recorded in its `job.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingSetJob {
    pub id: u64,
    /// Submitted (waiting), running, succeeded, failed or cancelled.
    pub state: JobState,
    pub service: Option<String>,
    /// `group:feature` or `group:*`.
    pub features: Vec<String>,
    pub timestamp_column: String,
    pub top_n: usize,
    /// `parquet` or `csv`.
    pub spine_format: String,
    pub spine_bytes: u64,
    /// Who submitted it.
    pub submitted_by: String,
    pub submitted_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Spine rows, once joined.
    pub rows: Option<usize>,
    /// Feature columns of the output.
    pub columns: Option<usize>,
    pub output_bytes: Option<u64>,
    pub error: Option<String>,
}

/// What the job routes and the runner share.
#[derive(Clone)]
pub struct TrainingSets {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    config: Config,
    registry: Registry,
    history: Arc<OfflineHistory>,
    audit: Audit,
    jobs: Mutex<Jobs>,
    queue: tokio::sync::mpsc::Sender<u64>,
    receiver: Mutex<Option<tokio::sync::mpsc::Receiver<u64>>>,
}

#[derive(Default)]
struct Jobs {
    by_id: BTreeMap<u64, TrainingSetJob>,
    /// The running job's progress, and whether it was asked to stop.
    running: Option<(u64, Arc<Progress>)>,
}

impl TrainingSets {
    /// The jobs under `<data_dir>/training-sets`: a job a stopped server was running is failed,
    /// the waiting ones queued again.
    pub fn open(
        config: &Config,
        registry: Registry,
        history: Arc<OfflineHistory>,
        audit: Audit,
    ) -> anyhow::Result<TrainingSets> {
        let dir = config.data_dir.join("training-sets");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let mut by_id = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let path = entry.path().join("job.json");
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            match serde_json::from_slice::<TrainingSetJob>(&text) {
                Ok(job) => {
                    by_id.insert(job.id, job);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable training set job, skipped")
                }
            }
        }
        let (queue, receiver) = tokio::sync::mpsc::channel(MAX_WAITING);
        let sets = TrainingSets {
            inner: Arc::new(Inner {
                dir,
                config: config.clone(),
                registry,
                history,
                audit,
                jobs: Mutex::new(Jobs {
                    by_id,
                    running: None,
                }),
                queue,
                receiver: Mutex::new(Some(receiver)),
            }),
        };
        let (mut waiting, mut changed) = (Vec::new(), Vec::new());
        for job in sets.lock().by_id.values_mut() {
            match job.state {
                JobState::Running => {
                    job.state = JobState::Failed;
                    job.finished_at = Some(Utc::now());
                    job.error = Some("the server stopped while it ran; submit it again".into());
                }
                JobState::Submitted if waiting.len() < MAX_WAITING => waiting.push(job.id),
                JobState::Submitted => {
                    job.state = JobState::Failed;
                    job.error = Some("too many training sets were waiting".into());
                }
                _ => continue,
            }
            if job.state == JobState::Failed {
                changed.push(job.clone());
            }
        }
        // Only the records whose state changed are written again.
        for job in changed {
            sets.save(&job)?;
        }
        for id in waiting {
            let _ = sets.inner.queue.try_send(id);
        }
        Ok(sets)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn job_dir(&self, id: u64) -> PathBuf {
        self.inner.dir.join(id.to_string())
    }

    fn output_path(&self, id: u64) -> PathBuf {
        self.job_dir(id).join("output.parquet")
    }

    /// Writes `job`'s record, whole or not at all.
    fn save(&self, job: &TrainingSetJob) -> anyhow::Result<()> {
        let dir = self.job_dir(job.id);
        std::fs::create_dir_all(&dir)?;
        let staged = dir.join("job.json.new");
        std::fs::write(&staged, serde_json::to_vec_pretty(job)?)?;
        std::fs::rename(&staged, dir.join("job.json"))?;
        Ok(())
    }

    /// Changes the recorded job `id` by `change` and saves it.
    fn update(&self, id: u64, change: impl FnOnce(&mut TrainingSetJob)) -> Option<TrainingSetJob> {
        let job = {
            let mut jobs = self.lock();
            let job = jobs.by_id.get_mut(&id)?;
            change(job);
            job.clone()
        };
        if let Err(e) = self.save(&job) {
            tracing::error!(id, error = %e, "recording a training set job failed");
        }
        Some(job)
    }

    /// Runs the waiting jobs one after another until `stop`.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(mut receiver) = self
            .inner
            .receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        loop {
            let id = tokio::select! {
                id = receiver.recv() => match id { Some(id) => id, None => return },
                _ = stop.wait_for(|s| *s) => return,
            };
            tokio::select! {
                _ = self.run_one(id) => {}
                // The job stays recorded as running: the next start fails it.
                _ = stop.wait_for(|s| *s) => {
                    if let Some((_, progress)) = &self.lock().running {
                        progress.cancelled.store(true, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }

    async fn run_one(&self, id: u64) {
        let progress = Arc::new(Progress::default());
        let Some(job) = ({
            let mut jobs = self.lock();
            let job = jobs.by_id.get(&id).cloned();
            match job {
                Some(job) if job.state == JobState::Submitted => {
                    jobs.running = Some((id, progress.clone()));
                    Some(job)
                }
                // Cancelled while it waited.
                _ => None,
            }
        }) else {
            return;
        };
        self.update(id, |j| {
            j.state = JobState::Running;
            j.started_at = Some(Utc::now());
        });
        let outcome = self.build(&job, progress.clone()).await;
        self.lock().running = None;
        let cancelled = progress.cancelled.load(Ordering::Relaxed);
        self.update(id, |j| {
            j.finished_at = Some(Utc::now());
            match outcome {
                Ok((rows, columns, bytes)) => {
                    j.state = JobState::Succeeded;
                    j.rows = Some(rows);
                    j.columns = Some(columns);
                    j.output_bytes = Some(bytes);
                }
                Err(_) if cancelled => {
                    j.state = JobState::Cancelled;
                    j.error = Some("cancelled while it ran".into());
                }
                Err(e) => {
                    j.state = JobState::Failed;
                    j.error = Some(format!("{e:#}"));
                }
            }
        });
        if !matches!(
            self.lock().by_id.get(&id).map(|j| j.state),
            Some(JobState::Succeeded)
        ) {
            let _ = std::fs::remove_file(self.output_path(id));
            let _ = std::fs::remove_file(self.job_dir(id).join("output.parquet.new"));
        }
    }

    /// The training set of `job`: (rows, feature columns, output bytes).
    async fn build(
        &self,
        job: &TrainingSetJob,
        progress: Arc<Progress>,
    ) -> anyhow::Result<(usize, usize, u64)> {
        let repo = self
            .inner
            .registry
            .current()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the registry is empty"))?
            .repo;
        let plan = TrainingPlan::resolve(&repo, job.service.as_deref(), &job.features, job.top_n)?;
        let (sets, job) = (self.clone(), job.clone());
        tokio::task::spawn_blocking(move || {
            // What this process and stopped ones staged, converted first.
            let history = &sets.inner.history;
            history.flush()?;
            crate::training::convert_leftovers_into(&sets.inner.config, history.storage())?;
            let dir = sets.job_dir(job.id);
            let staged = dir.join("output.parquet.new");
            let built = training_set_file(
                history.storage(),
                &dir.join(format!("spine.{}", job.spine_format)),
                &staged,
                &job.timestamp_column,
                &plan,
                &progress,
                CHUNK_ROWS,
            )?;
            std::fs::rename(&staged, sets.output_path(job.id))?;
            let bytes = std::fs::metadata(sets.output_path(job.id))?.len();
            let rows = built.rows;
            Ok((rows, plan.columns.len(), bytes))
        })
        .await?
    }
}

/// The routes above; `history.max_spine_bytes` bounds an uploaded spine.
pub fn training_sets_router(sets: TrainingSets) -> Router {
    Router::new()
        // The spine is streamed to disk under its own limit, not the API's body limit.
        .route(
            "/v1/training-sets",
            get(list).post(submit).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/training-sets/{id}", get(show).delete(delete))
        .route("/v1/training-sets/{id}/output", get(output))
        .route("/v1/training-sets/{id}/cancel", post(cancel))
        .with_state(sets)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitQuery {
    service: Option<String>,
    /// Comma-separated `group:feature` or `group:*`.
    features: Option<String>,
    timestamp_column: Option<String>,
    top_n: Option<usize>,
}

/// Whether `access` may see `job`: its submitter (every caller, with authentication off), with
/// the permission to read what it reads. Another caller's spine holds its own labels.
fn may_see(access: &Access, job: &TrainingSetJob) -> Result<(), String> {
    if job.submitted_by != access.who() {
        return Err(format!(
            "training set {} was submitted by another caller; only they may see it",
            job.id
        ));
    }
    may_read(access, job.service.as_deref(), &job.features).map_err(|e| e.to_string())
}

/// Whether `access` may read what a job reads: its service, or each group it names.
fn may_read(access: &Access, service: Option<&str>, features: &[String]) -> Result<(), Denied> {
    if let Some(service) = service {
        access.check(Action::ReadFeatures, ResourceKind::Service, service)?;
    }
    for name in features {
        let group = name.split_once(':').map_or(name.as_str(), |(g, _)| g);
        access.check(Action::ReadFeatures, ResourceKind::Group, group)?;
    }
    Ok(())
}

async fn submit(
    State(sets): State<TrainingSets>,
    access: Access,
    query: Result<Query<SubmitQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_argument", e.body_text()),
    };
    let features: Vec<String> = q
        .features
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect();
    let resource = format!(
        "training-set:{}",
        q.service.clone().unwrap_or_else(|| features.join(","))
    );
    if let Err(e) = may_read(&access, q.service.as_deref(), &features) {
        sets.inner.audit.record(
            &access,
            Action::ReadFeatures,
            &resource,
            0,
            "denied: training set",
        );
        return error(StatusCode::FORBIDDEN, "permission_denied", e.to_string());
    }
    let config = &sets.inner.config;
    let top_n = q.top_n.unwrap_or(config.server.default_top_n);
    if top_n == 0 || top_n > config.server.max_top_n {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!(
                "top_n: {top_n} is out of range, it must be from 1 to {} (server.max_top_n)",
                config.server.max_top_n
            ),
        );
    }
    let spine_format = match request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .as_deref()
    {
        Some("application/vnd.apache.parquet" | "application/x-parquet") => "parquet",
        Some("text/csv") => "csv",
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_argument",
                format!(
                    "the spine is sent as the body, Parquet (Content-Type: \
                     application/vnd.apache.parquet) or CSV (text/csv); got {}",
                    other.unwrap_or("no Content-Type")
                ),
            )
        }
    };
    // The names are checked against the applied repo before anything is stored.
    let repo = match sets.inner.registry.current().await {
        Ok(Some(applied)) => applied.repo,
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "failed_precondition",
                "the registry is empty: nothing is applied".into(),
            )
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            )
        }
    };
    if let Err(e) = TrainingPlan::resolve(&repo, q.service.as_deref(), &features, top_n) {
        return error(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string());
    }
    let job = {
        let mut jobs = sets.lock();
        let waiting = jobs
            .by_id
            .values()
            .filter(|j| j.state == JobState::Submitted)
            .count();
        if waiting >= MAX_WAITING {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{waiting} training sets are waiting to run, the most this server queues"),
            );
        }
        let id = jobs.by_id.keys().next_back().map_or(1, |last| last + 1);
        let job = TrainingSetJob {
            id,
            state: JobState::Submitted,
            service: q.service.clone(),
            features: features.clone(),
            timestamp_column: q
                .timestamp_column
                .clone()
                .unwrap_or_else(|| "event_timestamp".to_owned()),
            top_n,
            spine_format: spine_format.to_owned(),
            spine_bytes: 0,
            submitted_by: access.who().to_owned(),
            submitted_at: Utc::now(),
            started_at: None,
            finished_at: None,
            rows: None,
            columns: None,
            output_bytes: None,
            error: None,
        };
        // Reserved while the spine arrives, as cancelled so the runner never takes it.
        jobs.by_id.insert(
            id,
            TrainingSetJob {
                state: JobState::Cancelled,
                ..job.clone()
            },
        );
        job
    };
    let spine = sets.job_dir(job.id).join(format!("spine.{spine_format}"));
    let received = receive(request.into_body(), &spine, config.history.max_spine_bytes).await;
    let bytes = match received {
        Ok(bytes) => bytes,
        Err((status, message)) => {
            sets.lock().by_id.remove(&job.id);
            let _ = std::fs::remove_dir_all(sets.job_dir(job.id));
            return error(status, "invalid_argument", message);
        }
    };
    let job = TrainingSetJob {
        spine_bytes: bytes,
        ..job
    };
    sets.lock().by_id.insert(job.id, job.clone());
    if let Err(e) = sets.save(&job) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("recording the job: {e}"),
        );
    }
    if sets.inner.queue.try_send(job.id).is_err() {
        sets.update(job.id, |j| {
            j.state = JobState::Failed;
            j.error = Some("the server's queue of training sets is full".into());
        });
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the server's queue of training sets is full".into(),
        );
    }
    sets.inner.audit.record(
        &access,
        Action::ReadFeatures,
        &resource,
        0,
        "training set submitted",
    );
    (StatusCode::ACCEPTED, Json(shown(&sets, &job))).into_response()
}

/// Streams the request body into `path`, refusing it (413) past `limit` bytes.
async fn receive(
    body: axum::body::Body,
    path: &Path,
    limit: usize,
) -> Result<u64, (StatusCode, String)> {
    use http_body_util::BodyExt as _;
    let failed = |e: std::io::Error| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("storing the spine: {e}"),
        )
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    }
    let mut file = tokio::fs::File::create(path).await.map_err(failed)?;
    let mut body = http_body_util::Limited::new(body, limit);
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the spine is larger than {limit} bytes (history.max_spine_bytes); \
                         split it into several training sets"
                    ),
                )
            } else {
                (StatusCode::BAD_REQUEST, format!("reading the spine: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            bytes += data.len() as u64;
            file.write_all(&data).await.map_err(failed)?;
        }
    }
    file.sync_all().await.map_err(failed)?;
    if bytes == 0 {
        return Err((
            StatusCode::BAD_REQUEST,
            "the spine is empty: send it as the request's body".into(),
        ));
    }
    Ok(bytes)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(
    State(sets): State<TrainingSets>,
    access: Access,
    Query(q): Query<ListQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let jobs: Vec<TrainingSetJob> = sets
        .lock()
        .by_id
        .values()
        .rev()
        .filter(|j| may_see(&access, j).is_ok())
        .take(limit)
        .cloned()
        .collect();
    let shown: Vec<serde_json::Value> = jobs.iter().map(|j| shown(&sets, j)).collect();
    Json(serde_json::json!({ "training_sets": shown })).into_response()
}

/// The job as answered: its record, with the running job's progress.
fn shown(sets: &TrainingSets, job: &TrainingSetJob) -> serde_json::Value {
    let mut value = serde_json::to_value(job).unwrap_or_default();
    let progress = match &sets.lock().running {
        Some((id, p)) if *id == job.id => Some((
            p.rows_done.load(Ordering::Relaxed),
            p.done.load(Ordering::Relaxed),
            p.total.load(Ordering::Relaxed),
        )),
        _ => None,
    };
    if let Some((rows, done, total)) = progress {
        value["progress"] = serde_json::json!({
            "rows_done": rows, "steps_done": done, "steps_total": total
        });
    } else if job.state == JobState::Succeeded {
        value["output"] = format!("/v1/training-sets/{}/output", job.id).into();
    }
    value
}

/// The job `id` if `access` may read it; otherwise the answer saying why not.
fn find(sets: &TrainingSets, access: &Access, id: u64) -> Result<TrainingSetJob, Box<Response>> {
    let job = sets.lock().by_id.get(&id).cloned();
    let Some(job) = job else {
        return Err(Box::new(not_found(id)));
    };
    if let Err(e) = may_see(access, &job) {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "permission_denied",
            e,
        )));
    }
    Ok(job)
}

async fn show(
    State(sets): State<TrainingSets>,
    access: Access,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    match find(&sets, &access, id) {
        Ok(job) => Json(shown(&sets, &job)).into_response(),
        Err(response) => *response,
    }
}

async fn output(
    State(sets): State<TrainingSets>,
    access: Access,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    let job = match find(&sets, &access, id) {
        Ok(job) => job,
        Err(response) => return *response,
    };
    if job.state != JobState::Succeeded {
        return error(
            StatusCode::CONFLICT,
            "failed_precondition",
            format!(
                "training set {id} is {}: only a succeeded one has an output",
                job.state
            ),
        );
    }
    let file = match tokio::fs::File::open(sets.output_path(id)).await {
        Ok(file) => file,
        Err(e) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("training set {id}'s output cannot be read: {e}"),
            )
        }
    };
    let stream = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut chunk = vec![0u8; 256 * 1024];
        match file.read(&mut chunk).await {
            Ok(0) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    (
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.apache.parquet".to_owned(),
            ),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"training-set-{id}.parquet\""),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn cancel(
    State(sets): State<TrainingSets>,
    access: Access,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    let job = match find(&sets, &access, id) {
        Ok(job) => job,
        Err(response) => return *response,
    };
    let resource = format!("training-set:{id}");
    let job = match job.state {
        JobState::Submitted => sets.update(id, |j| {
            j.state = JobState::Cancelled;
            j.finished_at = Some(Utc::now());
            j.error = Some("cancelled before it ran".into());
        }),
        JobState::Running => {
            if let Some((running, progress)) = &sets.lock().running {
                if *running == id {
                    progress.cancelled.store(true, Ordering::Relaxed);
                }
            }
            Some(job)
        }
        state => {
            return error(
                StatusCode::CONFLICT,
                "failed_precondition",
                format!(
                    "training set {id} is {state}: only a waiting or running one can be cancelled"
                ),
            )
        }
    };
    sets.inner.audit.record(
        &access,
        Action::ReadFeatures,
        &resource,
        0,
        "training set cancelled",
    );
    match job {
        Some(job) => (StatusCode::ACCEPTED, Json(shown(&sets, &job))).into_response(),
        None => not_found(id),
    }
}

async fn delete(
    State(sets): State<TrainingSets>,
    access: Access,
    UrlPath(id): UrlPath<u64>,
) -> Response {
    let job = match find(&sets, &access, id) {
        Ok(job) => job,
        Err(response) => return *response,
    };
    if !job.state.is_finished() {
        return error(
            StatusCode::CONFLICT,
            "failed_precondition",
            format!("training set {id} is {}: cancel it first", job.state),
        );
    }
    sets.lock().by_id.remove(&id);
    if let Err(e) = std::fs::remove_dir_all(sets.job_dir(id)) {
        tracing::warn!(id, error = %e, "removing a training set's files failed");
    }
    sets.inner.audit.record(
        &access,
        Action::ReadFeatures,
        &format!("training-set:{id}"),
        0,
        "training set deleted",
    );
    StatusCode::NO_CONTENT.into_response()
}

fn not_found(id: u64) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no training set {id}"),
    )
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    (
        status,
        Json(serde_json::json!({
            "error": { "code": status.as_u16(), "kind": kind, "message": message }
        })),
    )
        .into_response()
}
