//! Adaptive concurrency: how many events may be processed at once, across all partitions,
//! learned from the latency and error rate of the processing itself (the store behind it).
//!
//! Additive increase, multiplicative decrease, in the spirit of Netflix's concurrency-limits,
//! decided once per *window* of samples rather than per sample so that one slow call does not
//! halve the limit. A window lasts at least as many samples as the limit (about one round of
//! every slot completing once), so the limit grows by `increase` per round trip, like TCP's
//! congestion window.
//!
//! At the end of a window:
//! - if the error rate exceeds `max_error_rate`, or the window's mean latency exceeds
//!   `latency_tolerance` times the baseline, the limit is multiplied by `backoff`;
//! - otherwise, if the window actually used at least half the limit, it grows by `increase`
//!   (an idle consumer learns nothing about the store, so its limit does not creep up).
//!
//! The baseline is the lowest window mean of the last `baseline_windows` windows. Window means
//! rather than single samples, so a jittery but healthy store is not mistaken for a slow one;
//! a sliding minimum rather than an all-time one, so a store that became slower for good is
//! re-learnt after `baseline_windows` windows instead of pinning the limit at its floor.

use std::collections::VecDeque;
use std::time::Duration;

use super::ConsumerError;

/// Bounds and tuning of the adaptive concurrency limit.
#[derive(Debug, Clone, PartialEq)]
pub struct ConcurrencyConfig {
    /// The limit never goes below this.
    pub min: usize,
    /// The limit never goes above this.
    pub max: usize,
    /// The limit before any sample is seen.
    pub initial: usize,
    /// Added to the limit after a healthy window.
    pub increase: f64,
    /// Factor applied to the limit after an unhealthy window, in (0, 1).
    pub backoff: f64,
    /// A window whose mean latency exceeds the baseline by this factor is unhealthy.
    pub latency_tolerance: f64,
    /// A window whose share of failed samples exceeds this is unhealthy.
    pub max_error_rate: f64,
    /// The fewest samples a window holds, so that small limits still average some samples.
    pub min_window: usize,
    /// How many recent windows the latency baseline is the minimum of.
    pub baseline_windows: usize,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        Self {
            min: 1,
            max: 4096,
            initial: 16,
            increase: 4.0,
            backoff: 0.9,
            latency_tolerance: 3.0,
            max_error_rate: 0.05,
            min_window: 16,
            baseline_windows: 50,
        }
    }
}

impl ConcurrencyConfig {
    /// Checks the bounds and factors, naming every mistake at once.
    pub fn validate(&self) -> Result<(), ConsumerError> {
        let mut problems = Vec::new();
        if self.min == 0 {
            problems.push("min must be at least 1".to_owned());
        }
        if self.max < self.min {
            problems.push(format!("max {} is below min {}", self.max, self.min));
        }
        if self.initial < self.min || self.initial > self.max {
            problems.push(format!(
                "initial {} is outside [{}, {}]",
                self.initial, self.min, self.max
            ));
        }
        if !(self.increase.is_finite() && self.increase > 0.0) {
            problems.push(format!("increase {} must be positive", self.increase));
        }
        if !(self.backoff > 0.0 && self.backoff < 1.0) {
            problems.push(format!("backoff {} must be in (0, 1)", self.backoff));
        }
        if !(self.latency_tolerance.is_finite() && self.latency_tolerance >= 1.0) {
            problems.push(format!(
                "latency_tolerance {} must be at least 1",
                self.latency_tolerance
            ));
        }
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            problems.push(format!(
                "max_error_rate {} must be in [0, 1]",
                self.max_error_rate
            ));
        }
        if self.min_window == 0 {
            problems.push("min_window must be at least 1".to_owned());
        }
        if self.baseline_windows == 0 {
            problems.push("baseline_windows must be at least 1".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConsumerError::InvalidConfig(format!(
                "concurrency: {}",
                problems.join("; ")
            )))
        }
    }
}

/// Samples of the window in progress.
#[derive(Debug, Default, Clone)]
struct Window {
    samples: usize,
    failures: usize,
    latency_sum: Duration,
    max_in_flight: usize,
}

/// The adaptive limit on events processed at once. Pure logic: the caller feeds it one sample
/// per finished event and reads `current()`.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimit {
    config: ConcurrencyConfig,
    /// Fractional so that growth steps below 1 and repeated backoffs accumulate correctly.
    limit: f64,
    window: Window,
    /// Mean latencies of the most recent windows, oldest first; the baseline is their minimum.
    recent_means: VecDeque<Duration>,
}

impl ConcurrencyLimit {
    /// A limit starting at `config.initial`; fails on an invalid configuration.
    pub fn new(config: ConcurrencyConfig) -> Result<Self, ConsumerError> {
        config.validate()?;
        Ok(Self {
            limit: config.initial as f64,
            recent_means: VecDeque::with_capacity(config.baseline_windows),
            config,
            window: Window::default(),
        })
    }

    /// How many events may be in flight now.
    pub fn current(&self) -> usize {
        // The float stays within [min, max] by construction; the clamp guards the conversion.
        (self.limit.floor() as usize).clamp(self.config.min, self.config.max)
    }

    /// The latency considered normal for the store: the lowest recent window mean.
    pub fn baseline_latency(&self) -> Option<Duration> {
        self.recent_means.iter().min().copied()
    }

    /// The configuration in force.
    pub fn config(&self) -> &ConcurrencyConfig {
        &self.config
    }

    /// Records one finished event: how long its processing took, whether it failed, and how
    /// many events were in flight when it finished (itself included). Returns true when the
    /// limit changed.
    pub fn on_sample(&mut self, latency: Duration, failed: bool, in_flight: usize) -> bool {
        let window = &mut self.window;
        window.samples += 1;
        window.failures += usize::from(failed);
        window.latency_sum = window.latency_sum.saturating_add(latency);
        window.max_in_flight = window.max_in_flight.max(in_flight);
        if window.samples < self.config.min_window.max(self.current()) {
            return false;
        }
        let window = std::mem::take(&mut self.window);
        self.close_window(&window)
    }

    fn close_window(&mut self, window: &Window) -> bool {
        let samples = window.samples.max(1);
        let mean = window.latency_sum / u32::try_from(samples).unwrap_or(u32::MAX);
        let error_rate = window.failures as f64 / samples as f64;
        let baseline = self.baseline_latency();
        if self.recent_means.len() == self.config.baseline_windows {
            self.recent_means.pop_front();
        }
        self.recent_means.push_back(mean);

        let before = self.current();
        let latency_rose = baseline.is_some_and(|base| {
            mean.as_secs_f64() > base.as_secs_f64() * self.config.latency_tolerance
        });
        if error_rate > self.config.max_error_rate || latency_rose {
            self.limit = (self.limit * self.config.backoff).max(self.config.min as f64);
        } else if window.max_in_flight.saturating_mul(2) >= before {
            self.limit = (self.limit + self.config.increase).min(self.config.max as f64);
        }
        let after = self.current();
        if after != before {
            tracing::debug!(
                before,
                after,
                mean_latency_us = mean.as_micros() as u64,
                baseline_latency_us = baseline.map_or(0, |base| base.as_micros() as u64),
                error_rate,
                "concurrency limit changed"
            );
        }
        after != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ConcurrencyConfig {
        ConcurrencyConfig {
            min: 2,
            max: 64,
            initial: 8,
            increase: 1.0,
            backoff: 0.5,
            latency_tolerance: 2.0,
            max_error_rate: 0.1,
            min_window: 4,
            baseline_windows: 5,
        }
    }

    /// Feeds `windows` full windows of samples at `latency`, the limit fully used.
    fn feed(limit: &mut ConcurrencyLimit, windows: usize, latency: Duration, failed_every: usize) {
        for _ in 0..windows {
            let size = limit.current().max(limit.config().min_window);
            for i in 0..size {
                let failed = failed_every > 0 && i % failed_every == 0;
                limit.on_sample(latency, failed, limit.current());
            }
        }
    }

    #[test]
    fn grows_additively_while_latency_is_flat() {
        let mut limit = ConcurrencyLimit::new(config()).expect("valid config");
        feed(&mut limit, 10, Duration::from_millis(5), 0);
        assert_eq!(limit.current(), 18);
        feed(&mut limit, 100, Duration::from_millis(5), 0);
        assert_eq!(limit.current(), 64, "capped at max");
    }

    #[test]
    fn shrinks_multiplicatively_when_latency_jumps() {
        let mut limit = ConcurrencyLimit::new(config()).expect("valid config");
        feed(&mut limit, 20, Duration::from_millis(5), 0);
        assert_eq!(limit.current(), 28);
        feed(&mut limit, 1, Duration::from_millis(50), 0);
        assert_eq!(limit.current(), 14);
        feed(&mut limit, 3, Duration::from_millis(50), 0);
        assert_eq!(limit.current(), 2, "floored at min");
    }

    #[test]
    fn relearns_the_baseline_after_a_lasting_slowdown() {
        let mut limit = ConcurrencyLimit::new(config()).expect("valid config");
        feed(&mut limit, 5, Duration::from_millis(5), 0);
        feed(&mut limit, 5, Duration::from_millis(50), 0);
        assert_eq!(limit.current(), 2, "backed off to the floor");
        assert_eq!(limit.baseline_latency(), Some(Duration::from_millis(50)));
        feed(&mut limit, 5, Duration::from_millis(50), 0);
        assert_eq!(
            limit.current(),
            7,
            "grows again once the slower store is the norm"
        );
    }

    #[test]
    fn shrinks_on_errors() {
        let mut limit = ConcurrencyLimit::new(config()).expect("valid config");
        feed(&mut limit, 8, Duration::from_millis(5), 0);
        assert_eq!(limit.current(), 16);
        feed(&mut limit, 1, Duration::from_millis(5), 2);
        assert_eq!(limit.current(), 8);
    }

    #[test]
    fn does_not_grow_when_the_limit_is_not_used() {
        let mut limit = ConcurrencyLimit::new(config()).expect("valid config");
        for _ in 0..200 {
            limit.on_sample(Duration::from_millis(5), false, 1);
        }
        assert_eq!(limit.current(), 8);
    }

    #[test]
    fn rejects_an_invalid_config_naming_every_problem() {
        let bad = ConcurrencyConfig {
            min: 0,
            backoff: 1.5,
            ..config()
        };
        let error = ConcurrencyLimit::new(bad)
            .expect_err("invalid config")
            .to_string();
        assert!(error.contains("min must be at least 1"), "{error}");
        assert!(error.contains("backoff 1.5"), "{error}");
    }
}
