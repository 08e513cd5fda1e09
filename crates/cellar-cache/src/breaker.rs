//! A circuit breaker for the remote tier.
//!
//! A cache is an optimisation: when Redis is down or slow, every read that still waits for it
//! pays the full timeout before falling back to the tier below, and a fleet of servers keeps
//! hammering a Redis that is trying to recover. The breaker watches the outcome of every Redis
//! call and, once they fail too often, opens: callers skip Redis altogether and read the tier
//! below, at its normal latency. After a cool-down one call is let through as a probe; if it
//! succeeds the breaker closes, if it fails it stays open for another cool-down.
//!
//! The closed state, which is the state of every request in normal operation, costs an atomic
//! load on the way in and one or two atomic updates on the way out; no lock is taken.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

/// When the breaker opens, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker.
    pub consecutive_failures: u32,
    /// Share of failed calls within [`window`](Self::window) that opens the breaker (0.0 to
    /// 1.0), once at least [`min_calls`](Self::min_calls) were made in it.
    pub failure_ratio: f64,
    /// Calls a window needs before its failure ratio counts.
    pub min_calls: u32,
    /// Length of the window the failure ratio is measured over.
    pub window: Duration,
    /// How long the breaker stays open before a probe is let through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(10),
            cool_down: Duration::from_secs(1),
        }
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go to Redis.
    Closed,
    /// Calls skip Redis until the cool-down has passed.
    Open,
    /// One probe call is in flight; the others skip Redis until it answers.
    HalfOpen,
}

impl BreakerState {
    /// The state as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The state as a gauge value: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A circuit breaker shared by every caller of one Redis deployment.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    /// Times are kept as milliseconds since this instant, so they fit in atomics.
    origin: Instant,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    /// When the breaker last opened.
    opened_at: AtomicU64,
    /// When the current failure-ratio window started, and its counts.
    window_start: AtomicU64,
    window_calls: AtomicU64,
    window_failures: AtomicU64,
    /// How many times the breaker has opened.
    trips: AtomicU64,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            origin: Instant::now(),
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            opened_at: AtomicU64::new(0),
            window_start: AtomicU64::new(0),
            window_calls: AtomicU64::new(0),
            window_failures: AtomicU64::new(0),
            trips: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// How many times the breaker has opened since it was made.
    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Asks to make one call. `None`: the breaker is open, skip Redis. Otherwise the call is
    /// made and its outcome reported on the permit; a permit dropped without an outcome (the
    /// caller gave up) counts for nothing, and a probe so dropped lets the next caller probe.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Permit {
                breaker: self,
                probe: false,
                settled: false,
            }),
            OPEN => {
                let opened_at = self.opened_at.load(Ordering::Acquire);
                let cool_down =
                    u64::try_from(self.config.cool_down.as_millis()).unwrap_or(u64::MAX);
                if self.now_ms().saturating_sub(opened_at) < cool_down {
                    return None;
                }
                // Only the caller that moves the breaker to half-open makes the probe.
                self.state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .ok()
                    .map(|_| Permit {
                        breaker: self,
                        probe: true,
                        settled: false,
                    })
            }
            _ => None,
        }
    }

    fn succeeded(&self, probe: bool) {
        if probe {
            self.reset_counts();
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!("remote cache circuit closed: Redis answers again");
            return;
        }
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        self.count_in_window(false);
    }

    fn failed(&self, probe: bool) {
        if probe {
            self.opened_at.store(self.now_ms(), Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
            return;
        }
        let consecutive = self
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let (calls, failures) = self.count_in_window(true);
        let ratio_tripped = calls >= u64::from(self.config.min_calls.max(1))
            && failures as f64 >= self.config.failure_ratio * calls as f64;
        if consecutive >= self.config.consecutive_failures.max(1) || ratio_tripped {
            self.trip(consecutive, calls, failures);
        }
    }

    /// A probe whose caller gave up: the next caller may probe at once.
    fn abandoned(&self, probe: bool) {
        if probe {
            let cool_down = u64::try_from(self.config.cool_down.as_millis()).unwrap_or(u64::MAX);
            self.opened_at
                .store(self.now_ms().saturating_sub(cool_down), Ordering::Release);
            self.state.store(OPEN, Ordering::Release);
        }
    }

    fn trip(&self, consecutive: u32, calls: u64, failures: u64) {
        if self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.opened_at.store(self.now_ms(), Ordering::Release);
            self.trips.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                consecutive,
                window_calls = calls,
                window_failures = failures,
                cool_down_ms = self.config.cool_down.as_millis() as u64,
                "remote cache circuit opened: reads go to the tier below"
            );
        }
    }

    /// Counts one call in the current window, starting a new window when the current one is
    /// over; returns the window's calls and failures so far.
    fn count_in_window(&self, failed: bool) -> (u64, u64) {
        let now = self.now_ms();
        let window = u64::try_from(self.config.window.as_millis()).unwrap_or(u64::MAX);
        let start = self.window_start.load(Ordering::Acquire);
        if now.saturating_sub(start) >= window
            && self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.window_calls.store(0, Ordering::Relaxed);
            self.window_failures.store(0, Ordering::Relaxed);
        }
        let calls = self.window_calls.fetch_add(1, Ordering::Relaxed) + 1;
        let failures = if failed {
            self.window_failures.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            self.window_failures.load(Ordering::Relaxed)
        };
        (calls, failures)
    }

    fn reset_counts(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.window_start.store(self.now_ms(), Ordering::Release);
        self.window_calls.store(0, Ordering::Relaxed);
        self.window_failures.store(0, Ordering::Relaxed);
    }
}

/// Leave to make one Redis call; report how it went with [`Permit::succeeded`] or
/// [`Permit::failed`].
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Permit<'_> {
    /// Whether this call is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    pub fn succeeded(mut self) {
        self.settled = true;
        self.breaker.succeeded(self.probe);
    }

    /// The call failed or timed out.
    pub fn failed(mut self) {
        self.settled = true;
        self.breaker.failed(self.probe);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.abandoned(self.probe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(cool_down_ms: u64) -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            min_calls: 10,
            window: Duration::from_secs(60),
            cool_down: Duration::from_millis(cool_down_ms),
        }
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let b = Breaker::new(config(10_000));
        b.try_acquire().unwrap().failed();
        b.try_acquire().unwrap().failed();
        b.try_acquire().unwrap().succeeded();
        b.try_acquire().unwrap().failed();
        b.try_acquire().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire().is_none(), "open: calls skip Redis");
        assert_eq!(b.trips(), 1);
    }

    #[test]
    fn a_high_failure_ratio_opens_it() {
        let b = Breaker::new(BreakerConfig {
            consecutive_failures: 100,
            ..config(10_000)
        });
        // Alternating outcomes never make three failures in a row, but half of them fail.
        for i in 0..9 {
            let p = b.try_acquire().unwrap();
            if i % 2 == 0 {
                p.succeeded()
            } else {
                p.failed()
            }
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.try_acquire().unwrap().failed();
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn after_the_cool_down_one_probe_decides() {
        let b = Breaker::new(config(30));
        for _ in 0..3 {
            b.try_acquire().unwrap().failed();
        }
        assert!(b.try_acquire().is_none());
        std::thread::sleep(Duration::from_millis(50));
        let probe = b.try_acquire().unwrap();
        assert!(probe.is_probe());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.try_acquire().is_none(), "one probe at a time");
        probe.failed();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(
            b.try_acquire().is_none(),
            "a failed probe restarts the cool-down"
        );
        std::thread::sleep(Duration::from_millis(50));
        b.try_acquire().unwrap().succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        let p = b.try_acquire().unwrap();
        assert!(!p.is_probe());
        p.succeeded();
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_caller_probe() {
        let b = Breaker::new(config(30));
        for _ in 0..3 {
            b.try_acquire().unwrap().failed();
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(b.try_acquire().unwrap());
        assert_eq!(b.state(), BreakerState::Open);
        let probe = b.try_acquire().unwrap();
        assert!(probe.is_probe());
        probe.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn an_abandoned_ordinary_call_changes_nothing() {
        let b = Breaker::new(config(10_000));
        for _ in 0..10 {
            drop(b.try_acquire().unwrap());
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
