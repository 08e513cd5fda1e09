//! Per tier and per group cache counters, and read latency per tier, exported to Prometheus
//! on scrape. Names are given without the `cellar_` prefix, which the registry adds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cellar_spec::Tier;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;

/// What one lookup in a tier found, or what the tier did about it.
///
/// `Hit`, `NegativeHit` and `Miss` partition the lookups. `Stale` and `EarlyRefresh` count
/// hits a second time, when the hit also started a refresh; `NotAdmitted` counts misses
/// whose answer the tier did not keep (the group's admission policy had not seen the entity
/// read often enough yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// A cached "no record" answer.
    NegativeHit,
    Miss,
    /// A hit past its soft TTL: served, and refreshed in the background.
    Stale,
    /// A hit before its soft TTL that was refreshed early (XFetch).
    EarlyRefresh,
    /// A miss whose answer was not cached.
    NotAdmitted,
}

const OUTCOME_COUNT: usize = 6;

/// Read-path stages with a latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Local,
    Remote,
    Store,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Local => "local",
            Stage::Remote => "remote",
            Stage::Store => "store",
        }
    }

    fn of(tier: Tier) -> Stage {
        match tier {
            Tier::Local => Stage::Local,
            Tier::Remote => Stage::Remote,
        }
    }
}

const STAGES: [Stage; 3] = [Stage::Local, Stage::Remote, Stage::Store];

/// Counters of one group: per stage, per outcome (the store stage only uses hit and miss:
/// records found and not found).
#[derive(Debug, Default)]
struct Counters([[AtomicU64; OUTCOME_COUNT]; 3]);

/// Lookup counters by tier and group, and read latencies by tier. Cheap to clone; lookups on
/// the read path only take a read lock and bump an atomic (label sets are built at scrape
/// time, not per request).
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    by_group: Arc<RwLock<HashMap<String, Arc<Counters>>>>,
    latency: Arc<[Histogram; 3]>,
    /// Observations per stage (the histogram does not tell).
    timed: Arc<[AtomicU64; 3]>,
}

impl Default for CacheMetrics {
    fn default() -> Self {
        // 10 µs to about 5 s.
        let histogram = || Histogram::new(exponential_buckets(0.000_01, 2.0, 20));
        CacheMetrics {
            by_group: Arc::default(),
            latency: Arc::new([histogram(), histogram(), histogram()]),
            timed: Arc::default(),
        }
    }
}

impl CacheMetrics {
    /// Counts one lookup.
    pub fn record(&self, tier: Tier, group: &str, outcome: Outcome) {
        self.record_n(tier, group, outcome, 1)
    }

    /// Counts `n` lookups with the same outcome.
    pub fn record_n(&self, tier: Tier, group: &str, outcome: Outcome, n: u64) {
        self.bump(Stage::of(tier), group, outcome, n);
    }

    /// Counts a store read of `asked` entities, of which `found` had records.
    pub fn record_store_read(&self, group: &str, asked: u64, found: u64) {
        self.bump(Stage::Store, group, Outcome::Hit, found);
        self.bump(
            Stage::Store,
            group,
            Outcome::Miss,
            asked.saturating_sub(found),
        );
    }

    /// Records how long one read of a stage took.
    pub fn observe_latency(&self, stage: Stage, took: Duration) {
        self.latency[stage as usize].observe(took.as_secs_f64());
        self.timed[stage as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn bump(&self, stage: Stage, group: &str, outcome: Outcome, n: u64) {
        if n == 0 {
            return;
        }
        let (s, o) = (stage as usize, outcome as usize);
        if let Ok(map) = self.by_group.read() {
            if let Some(c) = map.get(group) {
                c.0[s][o].fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut map) = self.by_group.write() {
            map.entry(group.to_owned()).or_default().0[s][o].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The count of one outcome so far.
    pub fn count(&self, tier: Tier, group: &str, outcome: Outcome) -> u64 {
        self.load(Stage::of(tier), group, outcome)
    }

    /// Entities read from the store so far: (found, not found).
    pub fn store_reads(&self, group: &str) -> (u64, u64) {
        (
            self.load(Stage::Store, group, Outcome::Hit),
            self.load(Stage::Store, group, Outcome::Miss),
        )
    }

    /// Reads of a stage timed so far.
    pub fn latency_count(&self, stage: Stage) -> u64 {
        self.timed[stage as usize].load(Ordering::Relaxed)
    }

    fn load(&self, stage: Stage, group: &str, outcome: Outcome) -> u64 {
        self.by_group
            .read()
            .ok()
            .and_then(|m| {
                m.get(group)
                    .map(|c| c.0[stage as usize][outcome as usize].load(Ordering::Relaxed))
            })
            .unwrap_or(0)
    }
}

/// A counter family: its name, help, the stage it reads and its `outcome` labels (none when
/// the family has one outcome).
struct Family {
    name: &'static str,
    help: &'static str,
    stages: &'static [Stage],
    outcomes: &'static [(Outcome, &'static str)],
    labelled: bool,
}

const FAMILIES: [Family; 5] = [
    Family {
        name: "cache_lookups",
        help: "Cache lookups by tier, feature group and outcome",
        stages: &[Stage::Local, Stage::Remote],
        outcomes: &[
            (Outcome::Hit, "hit"),
            (Outcome::NegativeHit, "negative_hit"),
            (Outcome::Miss, "miss"),
        ],
        labelled: true,
    },
    Family {
        name: "cache_stale_served",
        help: "Hits served past their soft TTL (and refreshed), by tier and feature group",
        stages: &[Stage::Local, Stage::Remote],
        outcomes: &[(Outcome::Stale, "")],
        labelled: false,
    },
    Family {
        name: "cache_early_refreshes",
        help: "Hits refreshed before their soft TTL ended (XFetch), by tier and feature group",
        stages: &[Stage::Local, Stage::Remote],
        outcomes: &[(Outcome::EarlyRefresh, "")],
        labelled: false,
    },
    Family {
        name: "cache_not_admitted",
        help: "Misses not cached by the group's admission policy, by tier and feature group",
        stages: &[Stage::Local, Stage::Remote],
        outcomes: &[(Outcome::NotAdmitted, "")],
        labelled: false,
    },
    Family {
        name: "store_reads",
        help: "Entities read from the online store by feature group: found or missing",
        stages: &[Stage::Store],
        outcomes: &[(Outcome::Hit, "found"), (Outcome::Miss, "missing")],
        labelled: true,
    },
];

impl Collector for CacheMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let Ok(map) = self.by_group.read() else {
                return Ok(());
            };
            let mut rows: Vec<_> = map.iter().collect();
            rows.sort_by(|a, b| a.0.cmp(b.0));
            for family in &FAMILIES {
                let mut metric = encoder.encode_descriptor(
                    family.name,
                    family.help,
                    None,
                    MetricType::Counter,
                )?;
                for (group, counters) in &rows {
                    for &stage in family.stages {
                        let by_outcome = &counters.0[stage as usize];
                        let values: Vec<u64> = family
                            .outcomes
                            .iter()
                            .map(|(o, _)| by_outcome[*o as usize].load(Ordering::Relaxed))
                            .collect();
                        if values.iter().all(|&v| v == 0) {
                            continue;
                        }
                        for ((_, outcome), value) in family.outcomes.iter().zip(values) {
                            let counter = ConstCounter::new(value);
                            if family.stages.len() == 1 {
                                let labels = [("group", group.as_str()), ("outcome", outcome)];
                                counter.encode(metric.encode_family(&labels)?)?;
                            } else if family.labelled {
                                let labels = [
                                    ("tier", stage.name()),
                                    ("group", group.as_str()),
                                    ("outcome", outcome),
                                ];
                                counter.encode(metric.encode_family(&labels)?)?;
                            } else {
                                let labels = [("tier", stage.name()), ("group", group.as_str())];
                                counter.encode(metric.encode_family(&labels)?)?;
                            }
                        }
                    }
                }
            }
        }
        let mut metric = encoder.encode_descriptor(
            "cache_read_duration_seconds",
            "Time one read took in each stage of the read path: the local tier (its own \
             lookups), Redis (one round trip) and the online store",
            None,
            MetricType::Histogram,
        )?;
        for stage in STAGES {
            if self.latency_count(stage) == 0 {
                continue;
            }
            self.latency[stage as usize]
                .encode(metric.encode_family(&[("tier", stage.name())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn families_are_exported_with_their_labels() {
        let metrics = CacheMetrics::default();
        metrics.record_n(Tier::Local, "g", Outcome::Hit, 3);
        metrics.record(Tier::Local, "g", Outcome::Stale);
        metrics.record(Tier::Remote, "g", Outcome::NotAdmitted);
        metrics.record_store_read("g", 5, 4);
        metrics.observe_latency(Stage::Store, Duration::from_micros(300));
        let mut registry = Registry::with_prefix("cellar");
        registry.register_collector(Box::new(metrics.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            r#"cellar_cache_lookups_total{tier="local",group="g",outcome="hit"} 3"#,
            r#"cellar_cache_lookups_total{tier="local",group="g",outcome="miss"} 0"#,
            r#"cellar_cache_stale_served_total{tier="local",group="g"} 1"#,
            r#"cellar_cache_not_admitted_total{tier="remote",group="g"} 1"#,
            r#"cellar_store_reads_total{group="g",outcome="found"} 4"#,
            r#"cellar_store_reads_total{group="g",outcome="missing"} 1"#,
            r#"cellar_cache_read_duration_seconds_count{tier="store"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains(r#"tier="remote",group="g",outcome="hit""#));
        assert!(!text.contains("cellar_cellar"), "prefixed once: {text}");
        assert_eq!(metrics.store_reads("g"), (4, 1));
    }
}
