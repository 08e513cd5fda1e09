//! Prometheus metrics of batch jobs, read from the registry.
//!
//! Jobs are run by whichever process claims them (this one, another server, `cellar worker`s),
//! so counting in this process would show only part of the picture. Instead a watcher reads
//! the registry every poll interval and the collector serves that snapshot: every process that
//! shares the registry shows the same figures.
//!
//! - `cellar_jobs{state}`: jobs submitted, runnable or running now;
//! - `cellar_job_shards{state}`: the shards of those jobs, by state;
//! - `cellar_job_rows{ingestion, kind}`: rows read, written and rejected so far by the active
//!   jobs of each ingestion;
//! - `cellar_job_last_finished_timestamp_seconds{ingestion, state}`: when the last job of each
//!   ingestion succeeded or failed (an alert on "no success for a day" needs only this);
//! - `cellar_job_metrics_refreshed_timestamp_seconds`: when the snapshot was taken.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cellar_registry::{Job, JobFilter, JobState, Registry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Finished jobs read per refresh to find each ingestion's last success and failure.
const FINISHED_JOBS_READ: i64 = 1000;

/// The states a job is active in.
const ACTIVE: [JobState; 3] = [JobState::Submitted, JobState::Runnable, JobState::Running];

/// A shared snapshot of the registry's jobs, refreshed by [`JobMetrics::watch`] and served by
/// its [`Collector`]. Cheap to clone.
#[derive(Clone, Default)]
pub struct JobMetrics {
    snapshot: Arc<Mutex<Option<Snapshot>>>,
}

impl std::fmt::Debug for JobMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobMetrics")
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Snapshot {
    jobs: BTreeMap<&'static str, i64>,
    shards: BTreeMap<&'static str, i64>,
    /// Per ingestion: rows read, written, rejected by its active jobs.
    rows: BTreeMap<String, [i64; 3]>,
    /// Per (ingestion, state): when its last job in that state finished, in seconds.
    last_finished: BTreeMap<(String, &'static str), f64>,
    refreshed_at: f64,
}

impl JobMetrics {
    /// Reads the registry once and replaces the snapshot.
    pub async fn refresh(&self, registry: &Registry) -> crate::Result<()> {
        let active = registry
            .list_jobs(&JobFilter {
                ingestion: None,
                states: ACTIVE.to_vec(),
                limit: 0,
            })
            .await?;
        let finished = registry
            .list_jobs(&JobFilter {
                ingestion: None,
                states: vec![JobState::Succeeded, JobState::Failed],
                limit: FINISHED_JOBS_READ,
            })
            .await?;
        let snapshot = snapshot(&active, &finished, chrono::Utc::now());
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
        Ok(())
    }

    /// Refreshes the snapshot every `every` until `stop` turns true.
    pub async fn watch(
        &self,
        registry: Registry,
        every: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if let Err(e) = self.refresh(&registry).await {
                tracing::warn!(error = %e, "reading jobs for metrics failed");
            }
            // Also ends when the sender is gone, rather than spinning on a closed channel.
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

fn snapshot(active: &[Job], finished: &[Job], now: chrono::DateTime<chrono::Utc>) -> Snapshot {
    let mut s = Snapshot {
        refreshed_at: seconds(now),
        ..Snapshot::default()
    };
    for state in ACTIVE {
        s.jobs.insert(state.as_str(), 0);
    }
    for job in active {
        *s.jobs.entry(job.state.as_str()).or_default() += 1;
        let settled = job.shards_succeeded + job.shards_failed;
        *s.shards.entry(JobState::Succeeded.as_str()).or_default() += job.shards_succeeded;
        *s.shards.entry(JobState::Failed.as_str()).or_default() += job.shards_failed;
        // Runnable and running shards are not summed by the registry; together they are the
        // rest.
        *s.shards.entry("pending").or_default() += (job.shards_total - settled).max(0);
        let rows = s.rows.entry(job.ingestion.clone()).or_default();
        rows[0] += job.rows_read;
        rows[1] += job.rows_written;
        rows[2] += job.rows_rejected;
    }
    for job in finished {
        let Some(at) = job.finished_at else {
            continue;
        };
        let last = s
            .last_finished
            .entry((job.ingestion.clone(), job.state.as_str()))
            .or_insert(f64::MIN);
        *last = last.max(seconds(at));
    }
    s
}

fn seconds(at: chrono::DateTime<chrono::Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1000.0
}

impl Collector for JobMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            // Nothing read yet: no figures rather than zeros that would look like news.
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "jobs",
            "Batch jobs submitted, runnable or running, by state",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in &s.jobs {
            ConstGauge::new(*n).encode(family.encode_family(&[("state", *state)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "job_shards",
            "Shards of the active batch jobs: succeeded, failed, or pending (runnable or running)",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in &s.shards {
            ConstGauge::new(*n).encode(family.encode_family(&[("state", *state)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "job_rows",
            "Rows read, written and rejected so far by the active batch jobs, by ingestion",
            None,
            MetricType::Gauge,
        )?;
        for (ingestion, rows) in &s.rows {
            for (kind, n) in ["read", "written", "rejected"].iter().zip(rows) {
                let labels = [("ingestion", ingestion.as_str()), ("kind", *kind)];
                ConstGauge::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "job_last_finished_timestamp_seconds",
            "When the last batch job of each ingestion succeeded or failed",
            None,
            MetricType::Gauge,
        )?;
        for ((ingestion, state), at) in &s.last_finished {
            let labels = [("ingestion", ingestion.as_str()), ("state", *state)];
            ConstGauge::new(*at).encode(family.encode_family(&labels)?)?;
        }
        let family = encoder.encode_descriptor(
            "job_metrics_refreshed_timestamp_seconds",
            "When the batch job figures were last read from the registry",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(s.refreshed_at).encode(family)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, ingestion: &str, state: JobState) -> Job {
        let at =
            chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + id * 1000).expect("time");
        Job {
            id,
            ingestion: ingestion.to_owned(),
            kind: cellar_registry::JobKind::Backfill,
            state,
            period_from_ms: None,
            period_to_ms: None,
            runner: "local".to_owned(),
            max_attempts: 3,
            submitted_at: at,
            started_at: Some(at),
            finished_at: state.is_finished().then_some(at),
            updated_at: at,
            rows_planned: Some(100),
            rows_read: 40,
            rows_written: 30,
            rows_rejected: 1,
            shards_total: 4,
            shards_succeeded: 1,
            shards_failed: 1,
            error: None,
            alerted_at: None,
        }
    }

    #[test]
    fn the_snapshot_sums_active_jobs_and_keeps_the_last_finish_per_ingestion() {
        let active = [
            job(5, "clicks", JobState::Running),
            job(6, "clicks", JobState::Running),
            job(7, "profiles", JobState::Submitted),
        ];
        let finished = [
            job(3, "clicks", JobState::Succeeded),
            job(1, "clicks", JobState::Succeeded),
            job(2, "clicks", JobState::Failed),
        ];
        let now = chrono::DateTime::from_timestamp_millis(1_700_000_100_000).expect("time");
        let s = snapshot(&active, &finished, now);
        assert_eq!(s.jobs["running"], 2);
        assert_eq!(s.jobs["submitted"], 1);
        assert_eq!(
            s.jobs["runnable"], 0,
            "every active state is shown, even at 0"
        );
        assert_eq!(s.shards["succeeded"], 3);
        assert_eq!(s.shards["failed"], 3);
        assert_eq!(s.shards["pending"], 6);
        assert_eq!(s.rows["clicks"], [80, 60, 2]);
        assert_eq!(s.rows["profiles"], [40, 30, 1]);
        assert_eq!(
            s.last_finished[&("clicks".to_owned(), "succeeded")],
            1_700_000_003.0
        );
        assert_eq!(
            s.last_finished[&("clicks".to_owned(), "failed")],
            1_700_000_002.0
        );
        assert_eq!(s.refreshed_at, 1_700_000_100.0);
    }

    #[test]
    fn the_collector_shows_nothing_before_the_first_read_then_the_snapshot() {
        let metrics = JobMetrics::default();
        let mut registry = prometheus_client::registry::Registry::with_prefix("cellar");
        registry.register_collector(Box::new(metrics.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        assert!(!out.contains("cellar_jobs"), "{out}");

        let now = chrono::DateTime::from_timestamp_millis(1_700_000_100_000).expect("time");
        let finished = [job(3, "clicks", JobState::Succeeded)];
        *metrics.snapshot.lock().unwrap() = Some(snapshot(
            &[job(5, "clicks", JobState::Running)],
            &finished,
            now,
        ));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("encode");
        for line in [
            "cellar_jobs{state=\"running\"} 1",
            "cellar_jobs{state=\"runnable\"} 0",
            "cellar_job_shards{state=\"pending\"} 2",
            "cellar_job_rows{ingestion=\"clicks\",kind=\"written\"} 30",
            "cellar_job_last_finished_timestamp_seconds{ingestion=\"clicks\",state=\"succeeded\"} 1700000003.0",
        ] {
            assert!(out.contains(line), "missing `{line}` in:\n{out}");
        }
    }
}
