//! The `cellar` binary's library: configuration, wiring of a node, and the subcommands, kept
//! here so tests drive exactly what the binary runs.
//!
//! - [`config`]: runtime configuration (defaults, TOML file, `CELLAR_*` variables);
//! - [`console`]: the web console under `/ui`, rendered on the server;
//! - [`ingest`]: stream ingestion of the embedded mode: the event log and its pipelines;
//! - [`deadletter`]: listing dead letters and re-driving them to their original topics;
//! - [`jobs`]: `cellar backfill` and `cellar jobs`: batch jobs submitted, run or followed;
//! - [`node`]: store, registry, cache tiers and serving wired together, and the servers;
//! - [`repo`]: `plan` and `apply` of a feature repo directory;
//! - [`served_log`]: the answers of feature services that log, kept in the offline history;
//! - [`quickstart`]: the example repo and its sample data;
//! - [`client`]: `get` and `push` against a running server;
//! - [`stats`]: `cellar stats`, the cache tiers of a running server from its metrics;
//! - [`training`]: `cellar training-set`, a spine joined point-in-time onto the offline history;
//! - [`training_jobs`]: the same as jobs of the server (`/v1/training-sets`);
//! - [`bench`]: the serving benchmark's bare-server baseline.

pub mod bench;
pub mod client;
pub mod config;
pub mod console;
pub mod deadletter;
pub mod group_writes;
pub mod ingest;
pub mod jobs;
pub mod node;
pub mod quickstart;
pub mod repo;
pub mod served_log;
pub mod stats;
pub mod training;
pub mod training_jobs;
