//! Soft and hard deadlines of cached entries, with jitter, and the early refresh of hot
//! entries before their soft deadline (XFetch).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
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

/// XFetch (Vattani, Chierichetti and Lowenstein, "Optimal Probabilistic Cache Stampede
/// Prevention", VLDB 2015): whether a read of a fresh entry, `until_soft` before its soft
/// deadline, should refresh it now. The chance is `exp(-until_soft / (cost * beta))`, where
/// `cost` is how long reading the entry again takes: it grows as the deadline nears, and sooner
/// for entries that are slow to read. A hot entry is therefore refreshed by one read shortly
/// before it turns stale, and no read ever sees it stale; a cold one is rarely touched early.
pub fn refresh_early(until_soft: Duration, cost: Duration, beta: f64) -> bool {
    if beta <= 0.0 || cost.is_zero() {
        return false;
    }
    let scale = cost.as_secs_f64() * beta;
    let until = until_soft.as_secs_f64();
    // Far from the deadline the chance is below e^-40: skip drawing a number on most hits.
    if until > 40.0 * scale {
        return false;
    }
    // 1 - U lies in (0, 1], so its logarithm is finite and at most 0.
    let u: f64 = 1.0 - rand::rng().random::<f64>();
    scale * -u.ln() >= until
}

/// How long reading from the tier below takes, per group: a moving average of observed reads,
/// the `cost` of [`refresh_early`].
#[derive(Debug, Default)]
pub struct ReadCosts {
    /// Nanoseconds, exponentially weighted (1/8 per observation).
    by_group: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

impl ReadCosts {
    pub fn observe(&self, group: &str, took: Duration) {
        let nanos = took.as_nanos().min(u64::MAX as u128) as u64;
        let cell = {
            let found = self
                .by_group
                .read()
                .ok()
                .and_then(|m| m.get(group).cloned());
            match found {
                Some(cell) => cell,
                None => {
                    let Ok(mut map) = self.by_group.write() else {
                        return;
                    };
                    let cell = map
                        .entry(group.to_owned())
                        .or_insert_with(|| Arc::new(AtomicU64::new(nanos)));
                    cell.clone()
                }
            }
        };
        // A lost update under contention only drops one sample from the average.
        let old = cell.load(Ordering::Relaxed);
        let new = old - old / 8 + nanos / 8;
        cell.store(new, Ordering::Relaxed);
    }

    /// The group's average read time; zero before any read was observed.
    pub fn get(&self, group: &str) -> Duration {
        self.by_group
            .read()
            .ok()
            .and_then(|m| m.get(group).map(|c| c.load(Ordering::Relaxed)))
            .map_or(Duration::ZERO, Duration::from_nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_refresh_grows_likelier_as_the_deadline_nears() {
        let cost = Duration::from_millis(1);
        let share = |until: Duration| {
            (0..20_000)
                .filter(|_| refresh_early(until, cost, 1.0))
                .count() as f64
                / 20_000.0
        };
        // exp(-0), exp(-1), exp(-10): about 1, 0.37 and 0.00005.
        assert_eq!(share(Duration::ZERO), 1.0);
        let near = share(Duration::from_millis(1));
        assert!((0.33..0.41).contains(&near), "{near}");
        assert!(share(Duration::from_millis(10)) < 0.002);
        assert!(
            !refresh_early(Duration::ZERO, cost, 0.0),
            "beta 0 disables it"
        );
        assert!(
            !refresh_early(Duration::ZERO, Duration::ZERO, 1.0),
            "no cost known yet"
        );
    }

    #[test]
    fn read_costs_average_per_group() {
        let costs = ReadCosts::default();
        assert_eq!(costs.get("g"), Duration::ZERO);
        costs.observe("g", Duration::from_micros(800));
        assert_eq!(costs.get("g"), Duration::from_micros(800));
        for _ in 0..100 {
            costs.observe("g", Duration::from_micros(100));
        }
        let settled = costs.get("g");
        assert!(
            settled >= Duration::from_micros(99) && settled <= Duration::from_micros(101),
            "{settled:?}"
        );
        assert_eq!(costs.get("other"), Duration::ZERO);
    }

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
