//! Alerts: a JSON message POSTed to a webhook when a job fails or is stuck, naming the job and
//! linking to its page (`<public_url>/jobs/<id>`), which shows its state, shards and errors.
//!
//! The body carries `text` (a one-line message, which Slack and Mattermost incoming webhooks
//! show as is) and the job's fields for receivers that route or de-duplicate. A webhook that
//! fails is logged, not retried: the job's page and `cellar jobs` keep the state either way.
//!
//! The webhook's URL is a credential (whoever holds a Slack incoming webhook's URL can post to
//! the channel): it may be given as a secret reference, is held as a [`Secret`], and is never
//! logged, not even inside an HTTP client's error.

use std::time::Duration;

use cellar_registry::{Job, JobFilter, JobState, Registry};
use cellar_spec::secret::{self, Secret, SecretError};
use chrono::Utc;
use serde::Serialize;

/// Sends job alerts to one webhook.
#[derive(Debug, Clone)]
pub struct Alerter {
    client: reqwest::Client,
    webhook: Secret,
    /// Base URL of the server whose `/jobs/<id>` pages the links open.
    public_url: String,
}

/// What an alert says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertMessage {
    pub text: String,
    /// `failed` or `stuck`.
    pub alert: &'static str,
    pub job_id: i64,
    pub ingestion: String,
    pub state: JobState,
    pub reason: String,
    pub link: String,
}

/// How long one alert may take.
const ALERT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client of the HTTPS endpoints Cellar calls (alert webhooks): it trusts the
/// system's CAs and, when `ca_file` is given, the PEM certificates in it, so an endpoint
/// behind a private CA is reachable. The error names the file and what is wrong with it.
pub fn https_client(ca_file: &str, timeout: Duration) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    let ca_file = ca_file.trim();
    if !ca_file.is_empty() {
        let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read `{ca_file}`: {e}"))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("`{ca_file}` is not a PEM certificate bundle: {e}"))?;
        if certificates.is_empty() {
            return Err(format!("`{ca_file}` holds no PEM certificate"));
        }
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot set up the HTTPS client: {e}"))
}

impl Alerter {
    /// An alerter posting to `webhook`, whose secret references (`${SLACK_WEBHOOK}`,
    /// `${file:PATH}`) are read now; the error names a reference that cannot be.
    pub fn new(webhook: &str, public_url: &str) -> Result<Alerter, SecretError> {
        Ok(Alerter {
            client: https_client("", ALERT_TIMEOUT).unwrap_or_default(),
            webhook: secret::resolve(webhook.trim())?,
            public_url: public_url.trim_end_matches('/').to_owned(),
        })
    }

    /// Trusts the CAs of `ca_file` (PEM) for an `https://` webhook, besides the system's.
    pub fn with_ca_file(mut self, ca_file: &str) -> Result<Alerter, String> {
        self.client = https_client(ca_file, ALERT_TIMEOUT)?;
        Ok(self)
    }

    /// The page of job `id`.
    pub fn link(&self, id: i64) -> String {
        format!("{}/jobs/{id}", self.public_url)
    }

    /// The message about a failed job.
    pub fn failed_message(&self, job: &Job) -> AlertMessage {
        let reason = job
            .error
            .clone()
            .unwrap_or_else(|| "no error recorded".into());
        let link = self.link(job.id);
        AlertMessage {
            text: format!(
                "cellar: batch job {} of ingestion `{}` failed: {reason} ({link})",
                job.id, job.ingestion
            ),
            alert: "failed",
            job_id: job.id,
            ingestion: job.ingestion.clone(),
            state: job.state,
            reason,
            link,
        }
    }

    /// The message about a job with no progress for `idle`.
    pub fn stuck_message(&self, job: &Job, idle: Duration) -> AlertMessage {
        let link = self.link(job.id);
        let reason = format!(
            "{} with no progress for {}s (since {})",
            job.state,
            idle.as_secs(),
            job.updated_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        AlertMessage {
            text: format!(
                "cellar: batch job {} of ingestion `{}` is stuck: {reason} ({link})",
                job.id, job.ingestion
            ),
            alert: "stuck",
            job_id: job.id,
            ingestion: job.ingestion.clone(),
            state: job.state,
            reason,
            link,
        }
    }

    pub async fn job_failed(&self, job: &Job) {
        self.send(&self.failed_message(job)).await;
    }

    async fn send(&self, message: &AlertMessage) {
        match self
            .client
            .post(self.webhook.expose())
            .json(message)
            .send()
            .await
        {
            Ok(answer) if answer.status().is_success() => {
                tracing::info!(job = message.job_id, alert = message.alert, "alert sent");
            }
            Ok(answer) => {
                tracing::warn!(job = message.job_id, status = %answer.status(), "the alert webhook refused an alert");
            }
            Err(e) => {
                let error = webhook_error(e, &self.webhook);
                tracing::warn!(job = message.job_id, %error, "the alert webhook is unreachable");
            }
        }
    }

    /// Every `every`, alerts once about each job that has been submitted, runnable or running
    /// with no progress (no shard heartbeat, no state change) for `stuck_after`: a job nobody
    /// picks up, or one whose workers all died. Runs until `stop` is set.
    pub async fn watch_stuck(
        &self,
        registry: Registry,
        stuck_after: Duration,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let filter = JobFilter {
            ingestion: None,
            states: vec![JobState::Submitted, JobState::Runnable, JobState::Running],
            limit: 1000,
        };
        loop {
            match registry.list_jobs(&filter).await {
                Ok(jobs) => {
                    let now = Utc::now();
                    for job in jobs.iter().filter(|j| j.alerted_at.is_none()) {
                        let idle = (now - job.updated_at).to_std().unwrap_or_default();
                        if idle >= stuck_after {
                            self.send(&self.stuck_message(job, idle)).await;
                            if let Err(e) = registry.mark_alerted(job.id).await {
                                tracing::warn!(job = job.id, error = %e, "recording an alert failed");
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing jobs for stuck alerts failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// A failed post as logs may show it: reqwest's error without the URL (the credential) and
/// with its causes (refused, timed out, TLS), which say what to fix. A cause quoting the URL
/// anyway has it hidden.
fn webhook_error(e: reqwest::Error, webhook: &Secret) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    if webhook.is_empty() {
        return text;
    }
    text.replace(webhook.expose(), "***")
}
