//! Cellar's cache tiers: wrappers in front of the online store that implement the same
//! [`cellar_store::RecordReader`] interface, so the read path is a stack of tiers
//! (local -> remote -> store) chosen per feature group by its serving policy.
//!
//! - [`local`]: the in-process tier, bounded by bytes, with soft and hard TTLs, jitter,
//!   negative caching, background refresh of stale entries, and write-through / write-around;
//! - [`remote`]: the shared tier in Redis (standalone or cluster): one round trip per request
//!   and group, asynchronous back-fill through a bounded queue, newer-event-time-wins writes
//!   in Lua, soft/hard TTLs and negative caching;
//! - [`breaker`]: the circuit breaker that sends reads past a failing Redis;
//! - [`ttl`]: deadlines with jitter, and early refresh of hot entries (XFetch);
//! - [`admission`]: which misses a tier keeps (after k reads in a window, per group);
//! - [`measured`]: the store at the bottom, timed and counted;
//! - [`write`]: the write path: store first, then each tier per the group's write strategy;
//! - [`freshness`]: per group, the newest event time written, when, and how late it came;
//! - [`metrics`]: hit, miss, negative-hit, stale, early-refresh and not-admitted counters per
//!   tier and group, store reads found and missing, and read latency per tier.
//!
//! Depends on `cellar-spec` and `cellar-store`, and on `cellar-store-redis` for its Redis
//! clients only; serving builds on top of it.

pub mod admission;
pub mod breaker;
mod flight;
pub mod freshness;
pub mod local;
pub mod measured;
pub mod metrics;
pub mod remote;
pub mod ttl;
pub mod write;

pub use breaker::{BreakerConfig, BreakerState};
pub use freshness::{Freshness, GroupFreshness};
pub use local::LocalTier;
pub use measured::MeasuredStore;
pub use metrics::{CacheMetrics, Outcome, Stage};
pub use remote::{RemoteConfig, RemoteError, RemoteStatsSnapshot, RemoteTier};
pub use write::{History, Kept, WritePath};
