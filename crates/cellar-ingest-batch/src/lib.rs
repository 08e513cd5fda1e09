//! Cellar's batch ingestion: Parquet and CSV files are planned into shards from the data's real
//! size (a PostgreSQL query is one shard), each shard's rows are mapped to records of the
//! ingestion's feature group (or rejected with a reason), and the records are written in
//! batches through the write path, on a local pool of workers.
//!
//! The flow of a job, and where each step lives:
//!
//! - [`job`]: [`BatchJob`], an `Ingestion` spec with a `batch` source checked and resolved once
//!   (group, entity, columns, write mode);
//! - [`mod@plan`]: the planner: files listed, Parquet footers and CSV samples read, the job split
//!   into serialisable [`Shard`]s (row groups or row ranges, CSV byte ranges at line starts, or
//!   the query);
//! - `read`: a shard's pieces streamed as Arrow record batches, never a whole file in memory;
//! - `postgres`: a query's rows streamed with `sqlx` into Arrow record batches, PostgreSQL
//!   types mapped to Arrow ones (the table is in its docs), the URL's password never shown;
//! - `column` and `map`: each row to an entity key (the stream path's encoding), an event
//!   time and feature values coerced to their types, or a [`Reject`];
//! - [`shard`]: [`run_shard`]: read and map on a blocking thread, batched writes to a
//!   [`RecordSink`] overlapping with them, the reject ratio enforced; why redoing a shard is
//!   safe is documented there;
//! - [`runner`]: [`LocalRunner`], a bounded pool of workers with progress reports;
//! - [`rejects`]: the [`Rejects`] sink and its JSON-lines file;
//! - [`sink`]: [`RecordSink`], implemented by `cellar_cache::WritePath`;
//! - [`transform`]: an ingestion's SQL transform, run with DataFusion over the readers'
//!   batches (as table `source`) before mapping; it decides whether the job can be sharded;
//! - `files`: the seam to where files live, local disk or S3-compatible object storage
//!   (`s3`: `s3://BUCKET/...` paths listed and read with ranged GETs through `object_store`);
//! - `examples/batch_bench.rs`: the throughput benchmark.
//!
//! Depends on `cellar-spec`, `cellar-store`, `cellar-cache` (the write path), `sqlx` (the
//! PostgreSQL source), `object_store` (the S3 client), `datafusion` (SQL transforms), `cellar-expr` (Arrow cells read as feature values) and `cellar-ingest-stream` (only its
//! read-modify-write of attribute records, so batch and stream ingestion merge into shared
//! records alike). Of the registry it uses only `cellar_registry::postgres`, so a source's URL
//! and the registry's are read alike (TLS included). It must not depend on serving, the
//! registry's state or the binary; scheduling, job state and the Kafka runner build on top of
//! it.

pub mod error;
mod files;
pub mod job;
mod map;
pub mod plan;
pub mod postgres;
mod read;
pub mod rejects;
pub mod runner;
mod s3;
pub mod shard;
pub mod sink;
pub mod transform;

pub use error::{BatchError, Result};
pub use job::{BatchJob, JobInput, JobOptions, Period, WriteMode};
pub use plan::{plan, plan_with, Piece, Plan, PlanOptions, Shard};
pub use rejects::{MemoryRejects, Reject, RejectFile, Rejects};
pub use runner::{JobReport, LocalRunner, Progress, ShardOutcome};
pub use s3::bucket_client;
pub use shard::{run_shard, run_shard_observed, BatchDone, ShardReport};
pub use sink::RecordSink;
pub use transform::{Scope, Transform};
