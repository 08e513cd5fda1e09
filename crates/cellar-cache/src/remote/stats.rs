//! The tier's counters, for all groups together.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::breaker::BreakerState;

/// Counters of the remote tier, for all groups together. Lookups per group and outcome also go
/// to the shared [`CacheMetrics`](crate::metrics::CacheMetrics) under the `remote` tier.
#[derive(Debug, Default)]
pub(super) struct RemoteStats {
    pub(super) hits: AtomicU64,
    pub(super) negative_hits: AtomicU64,
    pub(super) stale: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) bypassed: AtomicU64,
    pub(super) fills_queued: AtomicU64,
    pub(super) fills_dropped: AtomicU64,
    pub(super) fills_applied: AtomicU64,
    pub(super) fills_superseded: AtomicU64,
    pub(super) writes: AtomicU64,
    pub(super) writes_skipped: AtomicU64,
    pub(super) invalidations_applied: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) timeouts: AtomicU64,
    pub(super) corrupt: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteStatsSnapshot {
    /// Keys found holding records.
    pub hits: u64,
    /// Keys found holding a cached "no record".
    pub negative_hits: u64,
    /// Hits past their soft deadline: served, and a refresh queued.
    pub stale: u64,
    /// Keys not found (or invalidated), read from the tier below.
    pub misses: u64,
    /// Keys read from the tier below without asking Redis: the breaker was open, or the call
    /// to Redis failed.
    pub bypassed: u64,
    /// Values queued for back-fill.
    pub fills_queued: u64,
    /// Values not back-filled: the queue was full, or the breaker open when they were due.
    pub fills_dropped: u64,
    /// Back-fill and refresh jobs waiting in the queue now.
    pub backfill_queue_depth: u64,
    /// Back-filled values written to Redis.
    pub fills_applied: u64,
    /// Back-filled values Redis kept out because it held a newer event time.
    pub fills_superseded: u64,
    /// Write-through and invalidation values written.
    pub writes: u64,
    /// Write-through and invalidation values not written: the breaker was open or the call
    /// failed (or timed out, and Redis may still apply it). Their keys are remembered and
    /// invalidated once Redis answers again.
    pub writes_skipped: u64,
    /// Keys of skipped writes remembered now, waiting to be invalidated.
    pub skipped_keys_held: u64,
    /// Whether any group has skipped writes not yet invalidated: reads of such a group skip
    /// Redis on this node.
    pub invalidations_owed: bool,
    /// Invalidation markers (and generation moves) written for skipped writes.
    pub invalidations_applied: u64,
    /// Redis calls that failed.
    pub errors: u64,
    /// Redis calls that timed out.
    pub timeouts: u64,
    /// Cached values that could not be decoded (read as misses).
    pub corrupt: u64,
    /// The circuit breaker's state.
    pub breaker: BreakerState,
    /// How many times the breaker has opened.
    pub breaker_trips: u64,
}

pub(super) fn bump(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

pub(super) fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
