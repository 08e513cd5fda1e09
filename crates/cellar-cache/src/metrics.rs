//! Per tier and per group cache counters, exported to Prometheus on scrape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cellar_spec::Tier;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

/// What one lookup in a tier found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// A cached "no record" answer.
    NegativeHit,
    /// Served while past its soft TTL (a refresh was started).
    Stale,
    Miss,
}

const OUTCOMES: [(Outcome, &str); 4] = [
    (Outcome::Hit, "hit"),
    (Outcome::NegativeHit, "negative_hit"),
    (Outcome::Stale, "stale"),
    (Outcome::Miss, "miss"),
];

/// Counters of one group: per tier, per outcome.
#[derive(Debug, Default)]
struct Counters([[AtomicU64; 4]; 2]);

fn tier_index(t: Tier) -> usize {
    match t {
        Tier::Local => 0,
        Tier::Remote => 1,
    }
}

/// Lookup counters by tier and group. Cheap to clone; lookups on the read path only take a
/// read lock and bump an atomic (label sets are built at scrape time, not per request).
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    by_group: Arc<RwLock<HashMap<String, Arc<Counters>>>>,
}

impl CacheMetrics {
    /// Counts one lookup.
    pub fn record(&self, tier: Tier, group: &str, outcome: Outcome) {
        self.record_n(tier, group, outcome, 1)
    }

    /// Counts `n` lookups with the same outcome.
    pub fn record_n(&self, tier: Tier, group: &str, outcome: Outcome, n: u64) {
        let (t, o) = (tier_index(tier), outcome as usize);
        if let Ok(map) = self.by_group.read() {
            if let Some(c) = map.get(group) {
                c.0[t][o].fetch_add(n, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut map) = self.by_group.write() {
            map.entry(group.to_owned()).or_default().0[t][o].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The count of one outcome so far.
    pub fn count(&self, tier: Tier, group: &str, outcome: Outcome) -> u64 {
        self.by_group
            .read()
            .ok()
            .and_then(|m| {
                m.get(group)
                    .map(|c| c.0[tier_index(tier)][outcome as usize].load(Ordering::Relaxed))
            })
            .unwrap_or(0)
    }
}

fn tier_name(t: Tier) -> &'static str {
    match t {
        Tier::Local => "local",
        Tier::Remote => "remote",
    }
}

impl Collector for CacheMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(map) = self.by_group.read() else {
            return Ok(());
        };
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let mut metric = encoder.encode_descriptor(
            "cellar_cache_lookups",
            "Cache lookups by tier, feature group and outcome",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (group, counters) in rows {
            for tier in [Tier::Local, Tier::Remote] {
                let by_outcome = &counters.0[tier_index(tier)];
                if by_outcome.iter().all(|c| c.load(Ordering::Relaxed) == 0) {
                    continue;
                }
                for (outcome, name) in OUTCOMES {
                    let labels = [
                        ("tier", tier_name(tier)),
                        ("group", group.as_str()),
                        ("outcome", name),
                    ];
                    let value = by_outcome[outcome as usize].load(Ordering::Relaxed);
                    ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}
