//! Admission: which misses a tier keeps. A group's `admit_after: k` caches an entity only on
//! its k-th read within `admit_window`, so entities read once (a crawl, a one-off backfill
//! check) pass through without evicting hot ones. With the default `k = 1` every miss is
//! cached and nothing is tracked.

use std::hash::Hash;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cellar_spec::ServingPolicy;
use moka::sync::Cache;

/// Entities tracked at most: past it the least recently missed are forgotten, which only
/// delays their admission.
pub const DOORKEEPER_CAPACITY: u64 = 1 << 18;

#[derive(Debug)]
struct Reads {
    count: AtomicU32,
    window: Duration,
}

/// Forgets an entity's reads once its window has passed since its first counted read.
struct WindowExpiry;

impl<K> moka::Expiry<K, Arc<Reads>> for WindowExpiry {
    fn expire_after_create(&self, _: &K, reads: &Arc<Reads>, _: Instant) -> Option<Duration> {
        Some(reads.window)
    }
}

/// Counts misses of entities not yet admitted, per cache key.
pub struct Doorkeeper<K> {
    seen: Cache<K, Arc<Reads>>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Default for Doorkeeper<K> {
    fn default() -> Self {
        Doorkeeper::with_capacity(DOORKEEPER_CAPACITY)
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Doorkeeper<K> {
    pub fn with_capacity(capacity: u64) -> Doorkeeper<K> {
        Doorkeeper {
            seen: Cache::builder()
                .max_capacity(capacity)
                .expire_after(WindowExpiry)
                .build(),
        }
    }

    /// Counts one miss of `key`; whether its answer may be cached now.
    pub fn admit(&self, policy: &ServingPolicy, key: &K) -> bool {
        if policy.admit_after <= 1 {
            return true;
        }
        let reads = self.seen.get_with_by_ref(key, || {
            Arc::new(Reads {
                count: AtomicU32::new(0),
                window: policy.admit_window,
            })
        });
        let count = reads.count.fetch_add(1, Ordering::Relaxed) + 1;
        if count >= policy.admit_after {
            self.seen.invalidate(key);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(admit_after: u32, window: Duration) -> ServingPolicy {
        ServingPolicy {
            admit_after,
            admit_window: window,
            ..ServingPolicy::default()
        }
    }

    #[test]
    fn admits_on_the_kth_read() {
        let door = Doorkeeper::<String>::default();
        let p = policy(3, Duration::from_secs(60));
        let key = "g\0u1".to_owned();
        assert!(!door.admit(&p, &key));
        assert!(!door.admit(&p, &key));
        assert!(door.admit(&p, &key));
        // Once admitted, counting starts again (should the entry be evicted later).
        assert!(!door.admit(&p, &key));
        // Other keys count on their own.
        assert!(!door.admit(&p, &"g\0u2".to_owned()));
    }

    #[test]
    fn one_read_admits_by_default() {
        let door = Doorkeeper::<Vec<u8>>::default();
        assert!(door.admit(&ServingPolicy::default(), &b"k".to_vec()));
        assert_eq!(door.seen.entry_count(), 0, "nothing is tracked for k = 1");
    }

    #[test]
    fn reads_outside_the_window_do_not_add_up() {
        let door = Doorkeeper::<String>::default();
        let p = policy(2, Duration::from_millis(50));
        let key = "g\0u1".to_owned();
        assert!(!door.admit(&p, &key));
        std::thread::sleep(Duration::from_millis(120));
        door.seen.run_pending_tasks();
        assert!(!door.admit(&p, &key), "the first read has expired");
        assert!(door.admit(&p, &key));
    }
}
