//! Hard TTLs (for Redis) and soft deadlines (stored in values) from a group's serving policy.

use std::time::Duration;

use cellar_spec::time::now_ms;
use cellar_spec::ServingPolicy;

use crate::ttl::jittered;

/// Longest TTL given to Redis (about 34 years), far below what overflows its clock.
const MAX_TTL_MS: u64 = 1 << 40;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(MAX_TTL_MS)
        .min(MAX_TTL_MS)
}

/// A value's hard TTL (for Redis) and soft deadline (stored in the value). Soft deadlines are
/// wall-clock milliseconds: they are shared between processes, so they cannot be monotonic
/// instants.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ttls {
    pub(super) hard_ms: u64,
    pub(super) soft_deadline: i64,
}

impl Ttls {
    /// For values holding records; `None` when the policy caches nothing.
    pub(super) fn positive(policy: &ServingPolicy) -> Option<Ttls> {
        let hard = jittered(policy.hard_ttl, policy.jitter);
        if hard.is_zero() {
            return None;
        }
        let soft = jittered(policy.soft_ttl, policy.jitter).min(hard);
        Some(Ttls {
            hard_ms: ms(hard).max(1),
            soft_deadline: now_ms().saturating_add(ms(soft) as i64),
        })
    }

    /// For "no record" values: never stale, gone at the negative TTL.
    pub(super) fn negative(policy: &ServingPolicy) -> Option<Ttls> {
        let hard = jittered(policy.negative_ttl, policy.jitter);
        if hard.is_zero() {
            return None;
        }
        Some(Ttls {
            hard_ms: ms(hard).max(1),
            soft_deadline: now_ms().saturating_add(ms(hard) as i64),
        })
    }

    /// For invalidation markers: they outlive any fill still in flight.
    pub(super) fn marker(policy: &ServingPolicy) -> u64 {
        ms(policy.hard_ttl.max(policy.negative_ttl))
            .max(ms(Duration::from_secs(1)))
            .max(1)
    }
}
