//! The scheduler: runs each batch ingestion that has a `schedule` once per due period, in
//! `depends_on` order.
//!
//! **Periods.** An ingestion's watermark (in the registry) is the end of the last period it
//! loaded successfully. At each pass the scheduler finds the latest cron tick at or before now;
//! if it is past the watermark, the period `[watermark, tick)` is due (`[unbounded, tick)` the
//! first time). After downtime that is one job covering every missed tick, not one per tick.
//! Only a succeeded scheduled job moves the watermark (to its period's end, never back), so a
//! failed period is loaded again with the next one, and `cellar apply`, which never writes
//! watermarks, changes nothing here.
//!
//! **Dependencies.** A due period of an ingestion is submitted only once every ingestion it
//! `depends_on` has loaded it: its watermark reached the period's end, or (for one with no
//! schedule of its own) a job for exactly that period succeeded. Until then it waits, and the
//! next pass looks again.
//!
//! A period already submitted is not submitted again while its job is unfinished or has
//! succeeded; a failed one is left for `cellar jobs retry`, and its period is taken up again
//! by the next tick.

use std::str::FromStr;
use std::time::Duration;

use cellar_ingest_batch::Period;
use cellar_registry::{JobKind, JobState, Registry, WatermarkValue};
use cellar_spec::{FeatureRepo, IngestionSource};
use chrono::{DateTime, Utc};

use crate::error::{JobError, Result};
use crate::executor::{Executor, JobRequest, DEFAULT_MAX_ATTEMPTS};

/// A cron expression as the spec allows it: 5 fields (minute first) or 6 (seconds first).
#[derive(Debug, Clone)]
pub struct CronSchedule(cron::Schedule);

impl CronSchedule {
    pub fn parse(text: &str) -> Result<CronSchedule> {
        let fields = text.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {text}"),
            6 => text.to_owned(),
            n => {
                return Err(JobError::Invalid(format!(
                    "schedule `{text}` has {n} fields; expected 5 or 6"
                )))
            }
        };
        cron::Schedule::from_str(&full)
            .map(CronSchedule)
            .map_err(|e| JobError::Invalid(format!("schedule `{text}`: {e}")))
    }

    /// The first tick after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.0.after(&t).next()
    }

    /// The latest tick at or before `now`, looking back at most to `since` (exclusive); `None`
    /// when there is none in that span.
    pub fn latest_tick(&self, since: DateTime<Utc>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are walked forward, so look in a short recent span first: a long outage of a
        // frequent schedule would otherwise walk every tick it missed.
        let last_in = |from: DateTime<Utc>| self.0.after(&from).take_while(|t| *t <= now).last();
        for lookback in [chrono::Duration::hours(1), chrono::Duration::days(2)] {
            let from = since.max(now - lookback);
            if let Some(tick) = last_in(from) {
                return Some(tick);
            }
            if from == since {
                return None;
            }
        }
        last_in(since)
    }
}

/// The due period of a scheduled ingestion, if any.
pub fn due_period(
    schedule: &CronSchedule,
    watermark_ms: Option<i64>,
    now: DateTime<Utc>,
) -> Option<Period> {
    // The first run looks back one day for its tick: an ingestion applied today starts with
    // the latest tick, not with one decades ago.
    let since = match watermark_ms {
        Some(ms) => DateTime::from_timestamp_millis(ms)?,
        None => now - chrono::Duration::days(1),
    };
    let tick = schedule.latest_tick(since, now)?;
    let to = tick.timestamp_millis();
    if watermark_ms.is_some_and(|w| w >= to) {
        return None;
    }
    Some(Period {
        from_ms: watermark_ms,
        to_ms: Some(to),
    })
}

/// Runs the scheduler until `stop` is set, checking every `every`.
pub async fn run_scheduler(
    executor: Executor,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = schedule_pass(&executor, Utc::now()).await {
            tracing::warn!(error = %e, "scheduler pass failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass: submits (and starts) each due period whose dependencies are met. Returns the
/// ids of the jobs submitted.
pub async fn schedule_pass(executor: &Executor, now: DateTime<Utc>) -> Result<Vec<i64>> {
    let registry = executor.registry();
    let Some(applied) = registry.current().await? else {
        return Ok(Vec::new());
    };
    let repo = applied.repo;
    let mut submitted = Vec::new();
    for name in dependency_order(&repo) {
        let Some(ingestion) = repo.ingestion(&name) else {
            continue;
        };
        let IngestionSource::Batch(batch) = &ingestion.source else {
            continue;
        };
        let Some(text) = &batch.schedule else {
            continue;
        };
        let schedule = match CronSchedule::parse(text) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(ingestion = %name, error = %e, "unusable schedule");
                continue;
            }
        };
        let watermark = watermark_ms(registry, &name).await?;
        let Some(period) = due_period(&schedule, watermark, now) else {
            continue;
        };
        // Submitted already: running, done, or failed and left for a retry.
        if registry
            .last_job_for_period(&name, period.from_ms, period.to_ms)
            .await?
            .is_some()
        {
            continue;
        }
        let mut waiting = None;
        for dep in &batch.depends_on {
            if !loaded(registry, &repo, dep, period).await? {
                waiting = Some(dep);
                break;
            }
        }
        if let Some(dep) = waiting {
            tracing::debug!(ingestion = %name, waits_for = %dep, "due period waits for a dependency");
            continue;
        }
        let job = executor
            .submit(&JobRequest {
                ingestion: name.clone(),
                kind: JobKind::Scheduled,
                period,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
            })
            .await?;
        tracing::info!(job = job.id, ingestion = %name, from = ?period.from_ms, to = ?period.to_ms, "scheduled batch job");
        submitted.push(job.id);
        let executor = executor.clone();
        tokio::spawn(async move {
            if let Err(e) = executor.run(job.id).await {
                tracing::warn!(job = job.id, error = %e, "scheduled job run stopped");
            }
        });
    }
    Ok(submitted)
}

/// Whether `dep` has loaded `period`.
async fn loaded(
    registry: &Registry,
    repo: &FeatureRepo,
    dep: &str,
    period: Period,
) -> Result<bool> {
    let scheduled = matches!(
        repo.ingestion(dep).map(|i| &i.source),
        Some(IngestionSource::Batch(b)) if b.schedule.is_some()
    );
    if scheduled {
        let watermark = watermark_ms(registry, dep).await?;
        return Ok(matches!((watermark, period.to_ms), (Some(w), Some(to)) if w >= to));
    }
    Ok(registry
        .last_job_for_period(dep, period.from_ms, period.to_ms)
        .await?
        .is_some_and(|j| j.state == JobState::Succeeded))
}

async fn watermark_ms(registry: &Registry, ingestion: &str) -> Result<Option<i64>> {
    Ok(match registry.watermark(ingestion).await? {
        Some(w) => match w.value {
            WatermarkValue::Millis(ms) => Some(ms),
            WatermarkValue::Text(_) => None,
        },
        None => None,
    })
}

/// Moves a scheduled ingestion's watermark to the end of a period it loaded, never back.
pub async fn advance_watermark(registry: &Registry, ingestion: &str, to_ms: i64) -> Result<()> {
    if watermark_ms(registry, ingestion)
        .await?
        .is_some_and(|w| w >= to_ms)
    {
        return Ok(());
    }
    registry
        .set_watermark(ingestion, &WatermarkValue::Millis(to_ms))
        .await?;
    Ok(())
}

/// Batch ingestions, each after those it depends on (the spec parser has refused cycles;
/// were one left, its members would come last, in name order).
pub fn dependency_order(repo: &FeatureRepo) -> Vec<String> {
    let batch: Vec<(&str, Vec<&str>)> = repo
        .ingestions
        .iter()
        .filter_map(|i| match &i.source {
            IngestionSource::Batch(b) => Some((
                i.name.as_str(),
                b.depends_on.iter().map(String::as_str).collect(),
            )),
            IngestionSource::Stream(_) => None,
        })
        .collect();
    let mut order: Vec<String> = Vec::with_capacity(batch.len());
    let mut left = batch;
    while !left.is_empty() {
        let (ready, blocked): (Vec<_>, Vec<_>) = left.into_iter().partition(|(_, deps)| {
            deps.iter().all(|d| order.iter().any(|o| o == d))
                || deps
                    .iter()
                    .all(|d| !repo.ingestions.iter().any(|i| i.name == *d))
        });
        if ready.is_empty() {
            let mut rest: Vec<String> = blocked.iter().map(|(n, _)| (*n).to_owned()).collect();
            rest.sort();
            order.extend(rest);
            break;
        }
        order.extend(ready.iter().map(|(n, _)| (*n).to_owned()));
        left = blocked;
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn ms(text: &str) -> i64 {
        at(text).timestamp_millis()
    }

    #[test]
    fn five_and_six_field_schedules_parse() {
        assert!(CronSchedule::parse("0 3 * * *").is_ok());
        assert!(CronSchedule::parse("*/2 * * * * *").is_ok());
        let err = CronSchedule::parse("* * *").unwrap_err().to_string();
        assert!(err.contains("has 3 fields"), "{err}");
    }

    #[test]
    fn missed_ticks_are_caught_up_in_one_period() {
        let daily = CronSchedule::parse("0 3 * * *").unwrap();
        let now = at("2026-11-27T10:00:00Z");
        // Down since the 20th: one period up to today's 03:00.
        let period = due_period(&daily, Some(ms("2026-11-20T03:00:00Z")), now).unwrap();
        assert_eq!(period.from_ms, Some(ms("2026-11-20T03:00:00Z")));
        assert_eq!(period.to_ms, Some(ms("2026-11-27T03:00:00Z")));
        // Once loaded, nothing is due until tomorrow's tick.
        assert_eq!(due_period(&daily, period.to_ms, now), None);
        assert!(due_period(&daily, period.to_ms, at("2026-11-28T03:00:00Z")).is_some());
        // The first run starts unbounded, at the latest tick.
        let first = due_period(&daily, None, now).unwrap();
        assert_eq!(first.from_ms, None);
        assert_eq!(first.to_ms, Some(ms("2026-11-27T03:00:00Z")));
    }

    #[test]
    fn a_long_outage_of_a_frequent_schedule_finds_the_latest_tick() {
        let every_minute = CronSchedule::parse("* * * * *").unwrap();
        let now = at("2026-11-27T10:00:30Z");
        let period = due_period(&every_minute, Some(ms("2026-01-01T00:00:00Z")), now).unwrap();
        assert_eq!(period.from_ms, Some(ms("2026-01-01T00:00:00Z")));
        assert_eq!(period.to_ms, Some(ms("2026-11-27T10:00:00Z")));
    }

    #[test]
    fn dependencies_come_first() {
        let text = r#"
kind: Entity
name: user
keys: [{ name: user_id, type: string }]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features: [{ name: country, type: string }]
---
kind: Ingestion
name: c
batch: { files: { path: c.csv }, depends_on: [b] }
into: profile
key: user_id
features: { country: country }
---
kind: Ingestion
name: a
batch: { files: { path: a.csv } }
into: profile
key: user_id
features: { country: country }
---
kind: Ingestion
name: b
batch: { files: { path: b.csv }, depends_on: [a] }
into: profile
key: user_id
features: { country: country }
"#;
        let repo = cellar_spec::parse_repo(&[("r.yaml".into(), text.into())]).unwrap();
        assert_eq!(dependency_order(&repo), ["a", "b", "c"]);
    }
}
