//! Cellar's stream ingestion: events from a source (Kafka, or the embedded durable log of the
//! default mode) are consumed in parallel within each partition, in offset order per entity
//! key, turned into feature records and written to the online store, losing nothing and
//! counting nothing twice.
//!
//! - [`log`]: the embedded durable log: partitioned topics with offsets and committed
//!   positions per consumer group, on local disk;
//! - [`dispatch`]: which ingestions consume an event (M:N), and how an event maps to a
//!   record of each one's group;
//! - [`decode`]: an event's JSON payload decoded into the members its ingestions read;
//! - [`pipeline`]: the driver loop: poll, submit per partition, pause when full, commit;
//! - [`source`]: the `Source` (a consumer-group member) and `Publisher` traits;
//! - [`process`]: one event through dispatch, mapping and writing; failures to the retry or
//!   dead-letter topic with their reason;
//! - [`writer`]: the batching writer: one durable store write per group per batch;
//! - [`aggregate`]: read-modify-write of attribute records: partial updates, windowed
//!   aggregates, and the applied offsets that make redelivered events no-ops;
//! - `distinct`: the fixed-size state of distinct counts: exact hashes, then HyperLogLog;
//! - [`consumer`]: the parallel in-partition consumer: per-key ordering, out-of-order
//!   completion tracking, the committable offset, bounded in-flight work and adaptive
//!   concurrency.
//!
//! Depends on `cellar-spec` and `cellar-store`; knows nothing of serving or of the registry.

pub mod aggregate;
pub mod consumer;
pub mod decode;
pub mod dispatch;
mod distinct;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log;
pub mod pipeline;
pub mod process;
pub mod source;
pub mod writer;
