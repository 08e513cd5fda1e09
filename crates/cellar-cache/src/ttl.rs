//! Soft and hard deadlines of cached entries, with jitter.

use std::time::{Duration, Instant};

use cellar_spec::ServingPolicy;
use rand::Rng;

/// When a cached entry turns stale (served, and refreshed in the background) and when it must
/// no longer be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    pub soft: Instant,
    pub hard: Instant,
}

/// Spreads `ttl` by up to `jitter` (a fraction) either way, so that entries written together
/// do not expire together.
pub fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 || ttl.is_zero() {
        return ttl;
    }
    let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
    ttl.mul_f64(factor.max(0.0))
}

impl Deadlines {
    /// Deadlines of an entry holding records.
    pub fn positive(policy: &ServingPolicy) -> Deadlines {
        let now = Instant::now();
        let hard = jittered(policy.hard_ttl, policy.jitter);
        let soft = jittered(policy.soft_ttl, policy.jitter).min(hard);
        Deadlines {
            soft: now + soft,
            hard: now + hard,
        }
    }

    /// Deadlines of a negative entry ("no record"): it is never refreshed early.
    pub fn negative(policy: &ServingPolicy) -> Deadlines {
        let hard = Instant::now() + jittered(policy.negative_ttl, policy.jitter);
        Deadlines { soft: hard, hard }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        let ttl = Duration::from_secs(100);
        for _ in 0..1000 {
            let t = jittered(ttl, 0.1);
            assert!(
                t >= Duration::from_secs(90) && t <= Duration::from_secs(110),
                "{t:?}"
            );
        }
        assert_eq!(jittered(ttl, 0.0), ttl);
    }

    #[test]
    fn soft_never_outlives_hard() {
        let policy = ServingPolicy {
            soft_ttl: Duration::from_secs(60),
            hard_ttl: Duration::from_secs(10),
            ..ServingPolicy::default()
        };
        let d = Deadlines::positive(&policy);
        assert!(d.soft <= d.hard);
    }
}
