//! The server's own short history of its metrics, for the console's charts and rates: every
//! [`EVERY`] the metrics are rendered as Prometheus would scrape them and their values kept
//! in a ring of [`KEPT`] samples (six hours), so no Prometheus server is needed to see the
//! last hours. Histogram buckets are left out (their sums and counts are kept).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cellar_serving::metrics::ServingMetrics;

/// How often the metrics are sampled.
pub const EVERY: Duration = Duration::from_secs(10);
/// Samples kept: six hours of them.
pub const KEPT: usize = 6 * 360;

/// One sample: when, and a value per series (by the series' index; NaN where the series did
/// not exist yet).
struct Sample {
    at_ms: i64,
    values: Vec<f64>,
}

#[derive(Default)]
struct Samples {
    /// `name{labels}` to the series' index in each sample's values.
    series: HashMap<String, usize>,
    ring: VecDeque<Sample>,
}

/// The history, shared by the sampler and the pages.
#[derive(Clone, Default)]
pub struct MetricsHistory {
    samples: Arc<RwLock<Samples>>,
}

/// Labels to match a series by: every pair must be among the series' labels.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl MetricsHistory {
    /// Samples `metrics` now, then every [`EVERY`] until `stop`.
    pub async fn run(
        self,
        metrics: Arc<ServingMetrics>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.record(chrono::Utc::now().timestamp_millis(), &metrics.render());
        }
    }

    /// Keeps the values of a Prometheus text exposition taken at `at_ms`.
    pub fn record(&self, at_ms: i64, exposition: &str) {
        let Ok(mut samples) = self.samples.write() else {
            return;
        };
        let samples = &mut *samples;
        let mut values = vec![f64::NAN; samples.series.len()];
        for (series, value) in parse(exposition) {
            let next = samples.series.len();
            let index = *samples.series.entry(series.to_owned()).or_insert(next);
            if index >= values.len() {
                values.resize(index + 1, f64::NAN);
            }
            values[index] = value;
        }
        if samples.ring.len() == KEPT {
            samples.ring.pop_front();
        }
        samples.ring.push_back(Sample { at_ms, values });
    }

    /// When the newest sample was taken.
    pub fn latest_at(&self) -> Option<i64> {
        let samples = self.samples.read().ok()?;
        samples.ring.back().map(|s| s.at_ms)
    }

    /// Per sample, the sum of the series named `name` whose labels include `labels`: `(time,
    /// sum)`, oldest first, leaving out samples where none of them existed.
    pub fn sums(&self, name: &str, labels: Labels) -> Vec<(i64, f64)> {
        let Ok(samples) = self.samples.read() else {
            return Vec::new();
        };
        let indexes = matching(&samples.series, name, labels);
        samples
            .ring
            .iter()
            .filter_map(|s| {
                let found: Vec<f64> = indexes
                    .iter()
                    .filter_map(|&i| s.values.get(i).copied())
                    .filter(|v| !v.is_nan())
                    .collect();
                (!found.is_empty()).then(|| (s.at_ms, found.iter().sum()))
            })
            .collect()
    }

    /// The per-second rate of a counter sum between consecutive samples: `(time, rate)`.
    pub fn rates(&self, name: &str, labels: Labels) -> Vec<(i64, f64)> {
        per_interval(&self.sums(name, labels))
    }

    /// The newest rate of a counter sum (over the last interval), if two samples have it.
    pub fn rate(&self, name: &str, labels: Labels) -> Option<f64> {
        self.rates(name, labels).last().map(|(_, r)| *r)
    }

    /// Hits over all lookups of a tier of a group, per interval: `(time, ratio)`, only where
    /// there were lookups.
    pub fn hit_ratios(&self, tier: &str, group: &str) -> Vec<(i64, f64)> {
        let labels = |outcome| [("tier", tier), ("group", group), ("outcome", outcome)];
        let hits = self.sums("cellar_cache_lookups_total", &labels("hit"));
        let negative = self.sums("cellar_cache_lookups_total", &labels("negative_hit"));
        let misses = self.sums("cellar_cache_lookups_total", &labels("miss"));
        let at = |series: &[(i64, f64)], t: i64| {
            series
                .iter()
                .find(|(at, _)| *at == t)
                .map_or(0.0, |(_, v)| *v)
        };
        let mut totals: Vec<(i64, f64, f64)> = hits
            .iter()
            .map(|(t, h)| (*t, *h + at(&negative, *t), at(&misses, *t)))
            .collect();
        for (t, m) in &misses {
            if !totals.iter().any(|(at, _, _)| at == t) {
                totals.push((*t, at(&negative, *t), *m));
            }
        }
        totals.sort_by_key(|(t, _, _)| *t);
        totals
            .windows(2)
            .filter_map(|w| {
                let hits = w[1].1 - w[0].1;
                let misses = w[1].2 - w[0].2;
                (hits + misses > 0.0 && hits >= 0.0 && misses >= 0.0)
                    .then(|| (w[1].0, hits / (hits + misses)))
            })
            .collect()
    }
}

/// Differences per second between consecutive points; a counter that went down (a restart of
/// whatever counts it) starts again from zero.
fn per_interval(points: &[(i64, f64)]) -> Vec<(i64, f64)> {
    points
        .windows(2)
        .filter_map(|w| {
            let secs = (w[1].0 - w[0].0) as f64 / 1000.0;
            (secs > 0.0).then(|| {
                let delta = w[1].1 - w[0].1;
                (w[1].0, if delta < 0.0 { w[1].1 } else { delta } / secs)
            })
        })
        .collect()
}

/// The indexes of the series named `name` whose labels include every pair of `labels`.
fn matching(series: &HashMap<String, usize>, name: &str, labels: Labels) -> Vec<usize> {
    series
        .iter()
        .filter(|(key, _)| {
            let (series_name, series_labels) = key.split_once('{').unwrap_or((key, ""));
            series_name == name
                && labels.iter().all(|(k, v)| {
                    let wanted = format!("{k}=\"{}\"", escape(v));
                    series_labels
                        .trim_end_matches('}')
                        .split(',')
                        .any(|pair| pair == wanted)
                })
        })
        .map(|(_, &i)| i)
        .collect()
}

/// A label value as the text exposition writes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `(series, value)` of each sample line of a text exposition, without histogram buckets.
fn parse(exposition: &str) -> impl Iterator<Item = (&str, f64)> {
    exposition.lines().filter_map(|line| {
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        if series.contains("_bucket{") {
            return None;
        }
        Some((series, value.parse().ok()?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT_0: &str = "# HELP cellar_cache_lookups Cache lookups\n\
        # TYPE cellar_cache_lookups counter\n\
        cellar_cache_lookups_total{tier=\"local\",group=\"g\",outcome=\"hit\"} 10\n\
        cellar_cache_lookups_total{tier=\"local\",group=\"g\",outcome=\"miss\"} 10\n\
        cellar_cache_lookups_total{tier=\"local\",group=\"h\",outcome=\"hit\"} 5\n\
        cellar_request_duration_seconds_bucket{endpoint=\"/v1/features\",le=\"0.1\"} 3\n\
        # EOF\n";

    const AT_10: &str =
        "cellar_cache_lookups_total{tier=\"local\",group=\"g\",outcome=\"hit\"} 40\n\
        cellar_cache_lookups_total{tier=\"local\",group=\"g\",outcome=\"miss\"} 20\n\
        cellar_cache_lookups_total{tier=\"local\",group=\"h\",outcome=\"hit\"} 5\n\
        cellar_ingest_consumer_lag{topic=\"t\",partition=\"0\"} 7\n";

    #[test]
    fn rates_and_ratios_come_from_consecutive_samples() {
        let history = MetricsHistory::default();
        history.record(0, AT_0);
        history.record(10_000, AT_10);
        assert_eq!(
            history.sums("cellar_cache_lookups_total", &[("group", "g")]),
            vec![(0, 20.0), (10_000, 60.0)]
        );
        assert_eq!(
            history.rate("cellar_cache_lookups_total", &[("group", "g")]),
            Some(4.0)
        );
        // 30 hits and 10 misses in the interval.
        assert_eq!(history.hit_ratios("local", "g"), vec![(10_000, 0.75)]);
        assert_eq!(history.hit_ratios("local", "h"), vec![]);
        // A series that appears later is absent from earlier samples, not zero.
        assert_eq!(
            history.sums("cellar_ingest_consumer_lag", &[]),
            vec![(10_000, 7.0)]
        );
        assert!(history
            .sums("cellar_request_duration_seconds_bucket", &[])
            .is_empty());
        assert_eq!(history.latest_at(), Some(10_000));
    }

    #[test]
    fn the_ring_keeps_the_newest_samples() {
        let history = MetricsHistory::default();
        for i in 0..(KEPT as i64 + 5) {
            history.record(i, &format!("x {i}\n"));
        }
        let sums = history.sums("x", &[]);
        assert_eq!(sums.len(), KEPT);
        assert_eq!(sums[0], (5, 5.0));
    }

    #[test]
    fn a_counter_that_restarts_is_not_a_negative_rate() {
        assert_eq!(per_interval(&[(0, 100.0), (1000, 3.0)]), vec![(1000, 3.0)]);
    }
}
