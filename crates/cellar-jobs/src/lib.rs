//! Cellar's batch jobs: what runs a batch ingestion from a request (a backfill, a scheduled
//! period) to a finished job, with every step recorded in the registry.
//!
//! A job's life, and where each step lives:
//!
//! - [`executor`]: [`Executor`] submits a job, plans it into shards (the planner of
//!   `cellar-ingest-batch`, from the data's real size), records the shards in the registry and
//!   runs them on a local pool: each shard is claimed, run, its progress written as a
//!   heartbeat, and finished; a failed shard is retried up to the job's attempts, and the job
//!   ends succeeded or failed, alerting on failure;
//! - [`kafka`]: the `kafka` runner: shard tasks on a topic, taken by `cellar worker`s;
//! - [`schedule`]: the cron scheduler: due periods of each scheduled ingestion, caught up once
//!   after downtime, in `depends_on` order, with watermarks moved only by succeeded jobs;
//! - [`alert`]: the webhook that tells people a job failed or is stuck, with a link to its page;
//! - [`http`]: `/v1/jobs...` (JSON) and `/jobs/{id}` (the page an alert links to);
//! - [`metrics`]: Prometheus figures of the registry's jobs.
//!
//! Job and shard state live in the registry (`cellar-registry`), so any process that shares
//! the registry can show, retry or cancel a job, and a job whose process died is taken over
//! once its shards' heartbeats stop.

pub mod alert;
pub mod error;
pub mod executor;
pub mod http;
pub mod kafka;
mod materialize;
pub mod metrics;
pub mod schedule;

pub use alert::Alerter;
pub use error::{JobError, Result};
pub use executor::{Executor, ExecutorSettings, JobRequest};
pub use metrics::JobMetrics;
