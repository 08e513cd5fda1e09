//! The server's own short history of its metrics, for the console's charts and rates: every
//! [`EVERY`] the metrics are rendered as Prometheus would scrape them, and the values of the
//! families the console reads ([`KEPT_FAMILIES`]) kept in a ring of [`KEPT`] samples (three
//! hours), so no Prometheus server is needed to see the last hours. Memory is bounded: at
//! most [`MAX_SERIES`] series, 8 bytes a value (a 500-group deployment keeps about 5,500
//! series: 48 MB).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cellar_serving::metrics::ServingMetrics;

/// How often the metrics are sampled.
pub const EVERY: Duration = Duration::from_secs(10);
/// Samples kept: three hours of them.
pub const KEPT: usize = 3 * 360;
/// Series kept at most; series past it are not sampled (and said so once in the log).
pub const MAX_SERIES: usize = 10_000;
/// The metric families the pages read.
pub const KEPT_FAMILIES: [&str; 9] = [
    "cellar_cache_lookups_total",
    "cellar_store_reads_total",
    "cellar_group_newest_event_timestamp_seconds",
    "cellar_group_write_delay_seconds",
    "cellar_ingest_events_total",
    "cellar_ingest_records_total",
    "cellar_ingest_retries_total",
    "cellar_ingest_consumer_lag",
    "cellar_ingest_concurrency_limit",
];

/// One sample: when, and a value per series (by the series' index; NaN where the series did
/// not exist yet).
struct Sample {
    at_ms: i64,
    values: Vec<f64>,
}

#[derive(Default)]
struct Samples {
    /// `name{labels}` as exposed, to the series' index in each sample's values.
    series: HashMap<String, usize>,
    /// Each series' labels, by index.
    labels: Vec<Vec<(String, String)>>,
    /// Series by family name, and by family name and one label: what queries start from.
    by_name: HashMap<String, Vec<usize>>,
    by_label: HashMap<(String, String, String), Vec<usize>>,
    ring: VecDeque<Sample>,
    /// Whether the series cap has been reported.
    capped: bool,
}

impl Samples {
    /// The index of `series`, added if new and under the cap.
    fn index(&mut self, series: &str) -> Option<usize> {
        if let Some(&i) = self.series.get(series) {
            return Some(i);
        }
        if self.series.len() >= MAX_SERIES {
            if !self.capped {
                self.capped = true;
                tracing::warn!(
                    max = MAX_SERIES,
                    "the console's metric history holds its most series: newer ones are not charted"
                );
            }
            return None;
        }
        let (name, labels) = split_series(series);
        let i = self.labels.len();
        self.series.insert(series.to_owned(), i);
        self.by_name.entry(name.to_owned()).or_default().push(i);
        for (k, v) in &labels {
            self.by_label
                .entry((name.to_owned(), k.clone(), v.clone()))
                .or_default()
                .push(i);
        }
        self.labels.push(labels);
        Some(i)
    }

    /// The series of family `name` whose labels include every pair of `labels`.
    fn matching(&self, name: &str, labels: Labels) -> Vec<usize> {
        let start = match labels.first() {
            None => self.by_name.get(name),
            Some((k, v)) => self
                .by_label
                .get(&(name.to_owned(), (*k).to_owned(), (*v).to_owned())),
        };
        let Some(start) = start else {
            return Vec::new();
        };
        start
            .iter()
            .copied()
            .filter(|&i| {
                labels
                    .iter()
                    .all(|(k, v)| self.labels[i].iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .collect()
    }
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
        let mut values = vec![f64::NAN; samples.labels.len()];
        for (series, value) in parse(exposition) {
            let Some(index) = samples.index(series) else {
                continue;
            };
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

    /// Per sample, the sum of the series of family `name` whose labels include `labels`:
    /// `(time, sum)`, oldest first, leaving out samples where none of them existed.
    pub fn sums(&self, name: &str, labels: Labels) -> Vec<(i64, f64)> {
        let Ok(samples) = self.samples.read() else {
            return Vec::new();
        };
        let indexes = samples.matching(name, labels);
        if indexes.is_empty() {
            return Vec::new();
        }
        samples
            .ring
            .iter()
            .filter_map(|s| {
                let mut found = false;
                let mut sum = 0.0;
                for v in indexes.iter().filter_map(|&i| s.values.get(i)) {
                    if !v.is_nan() {
                        found = true;
                        sum += v;
                    }
                }
                found.then_some((s.at_ms, sum))
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
        let Ok(samples) = self.samples.read() else {
            return Vec::new();
        };
        let of = |outcome| {
            samples.matching(
                "cellar_cache_lookups_total",
                &[("group", group), ("tier", tier), ("outcome", outcome)],
            )
        };
        let mut hits = of("hit");
        hits.extend(of("negative_hit"));
        let misses = of("miss");
        // Per sample, the hits and misses counted so far (None before the series existed).
        let sum = |s: &Sample, indexes: &[usize]| {
            indexes
                .iter()
                .filter_map(|&i| s.values.get(i).copied())
                .filter(|v| !v.is_nan())
                .fold(None, |sum: Option<f64>, v| Some(sum.unwrap_or(0.0) + v))
        };
        let totals: Vec<(i64, f64, f64)> = samples
            .ring
            .iter()
            .filter_map(|s| match (sum(s, &hits), sum(s, &misses)) {
                (None, None) => None,
                (h, m) => Some((s.at_ms, h.unwrap_or(0.0), m.unwrap_or(0.0))),
            })
            .collect();
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

/// `name{k="v",...}` to the name and its label pairs (values unescaped).
fn split_series(series: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series, Vec::new());
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let key = key.trim_start_matches(',').trim().to_owned();
        if key.is_empty() || key == "}" || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.push((key, value));
    }
    (name, labels)
}

/// `(series, value)` of each sample line of a text exposition, for the families kept.
fn parse(exposition: &str) -> impl Iterator<Item = (&str, f64)> {
    exposition.lines().filter_map(|line| {
        if line.starts_with('#') || line.is_empty() {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let name = series.split_once('{').map_or(series, |(n, _)| n);
        if !KEPT_FAMILIES.contains(&name) {
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
            history.record(i, &format!("cellar_ingest_consumer_lag {i}\n"));
        }
        let sums = history.sums("cellar_ingest_consumer_lag", &[]);
        assert_eq!(sums.len(), KEPT);
        assert_eq!(sums[0], (5, 5.0));
    }

    #[test]
    fn labels_are_read_with_their_escapes() {
        let (name, labels) =
            split_series(r#"cellar_x_total{topic="a,b",group="say \"hi\"\\",p="0"}"#);
        assert_eq!(name, "cellar_x_total");
        assert_eq!(
            labels,
            vec![
                ("topic".to_owned(), "a,b".to_owned()),
                ("group".to_owned(), "say \"hi\"\\".to_owned()),
                ("p".to_owned(), "0".to_owned()),
            ]
        );
        assert_eq!(split_series("up"), ("up", vec![]));
    }

    #[test]
    fn series_past_the_cap_are_not_kept() {
        let history = MetricsHistory::default();
        let lines: String = (0..MAX_SERIES + 10)
            .map(|i| format!("cellar_ingest_consumer_lag{{topic=\"t\",partition=\"{i}\"}} 1\n"))
            .collect();
        history.record(0, &lines);
        assert_eq!(
            history.sums("cellar_ingest_consumer_lag", &[]),
            vec![(0, MAX_SERIES as f64)]
        );
    }

    #[test]
    fn a_counter_that_restarts_is_not_a_negative_rate() {
        assert_eq!(per_interval(&[(0, 100.0), (1000, 3.0)]), vec![(1000, 3.0)]);
    }
}
