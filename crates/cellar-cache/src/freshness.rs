//! How fresh each group is: the newest event time written to it, when it was last written,
//! and how long the newest events took from their event time to being servable, beside each
//! group's freshness objective from its spec. The write path records them, merged with what
//! other processes recorded (the registry carries them between processes and restarts);
//! Prometheus and the console read them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// One group's figures, in milliseconds since the Unix epoch (0: never written).
#[derive(Debug, Default)]
struct GroupWrites {
    newest_event_ms: AtomicI64,
    last_write_ms: AtomicI64,
    /// Wall time minus event time of the newest record of the last write.
    last_delay_ms: AtomicI64,
}

/// What one group's writes look like now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupFreshness {
    /// The newest event time written, ms since the epoch.
    pub newest_event_ms: i64,
    /// When the group was last written, ms since the epoch.
    pub last_write_ms: i64,
    /// From event time to written, for the newest record of the last write, in ms.
    pub last_delay_ms: i64,
}

/// Freshness per group, shared by every clone (the write path's clones all record into one).
#[derive(Debug, Clone, Default)]
pub struct Freshness {
    by_group: Arc<RwLock<HashMap<String, Arc<GroupWrites>>>>,
    /// How old each group's newest event may be, in seconds, from the applied repo: exported
    /// so an alert can compare the two without repeating every group's spec.
    objectives: Arc<RwLock<Vec<(String, f64)>>>,
}

impl Freshness {
    /// Records a write to `group` of records whose newest event time is `newest_event_ms`.
    pub fn written(&self, group: &str, newest_event_ms: i64) {
        let now = now_ms();
        let Some(writes) = self.entry(group) else {
            return;
        };
        writes
            .newest_event_ms
            .fetch_max(newest_event_ms, Ordering::Relaxed);
        writes.last_write_ms.store(now, Ordering::Relaxed);
        writes
            .last_delay_ms
            .store((now - newest_event_ms).max(0), Ordering::Relaxed);
    }

    /// Replaces the groups' freshness objectives (on every apply of a repo).
    pub fn set_objectives<'a>(
        &self,
        objectives: impl IntoIterator<Item = (&'a str, std::time::Duration)>,
    ) {
        let mut list: Vec<(String, f64)> = objectives
            .into_iter()
            .map(|(group, d)| (group.to_owned(), d.as_secs_f64()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        if let Ok(mut objectives) = self.objectives.write() {
            *objectives = list;
        }
    }

    /// Takes in what other processes wrote to `group` (through the registry): the newest
    /// event time and the last write only move forward.
    pub fn merge(&self, group: &str, seen: GroupFreshness) {
        let Some(writes) = self.entry(group) else {
            return;
        };
        writes
            .newest_event_ms
            .fetch_max(seen.newest_event_ms, Ordering::Relaxed);
        if writes
            .last_write_ms
            .fetch_max(seen.last_write_ms, Ordering::Relaxed)
            < seen.last_write_ms
        {
            writes
                .last_delay_ms
                .store(seen.last_delay_ms, Ordering::Relaxed);
        }
    }

    /// Every group written (here or, merged, elsewhere), by name.
    pub fn all(&self) -> Vec<(String, GroupFreshness)> {
        let Ok(map) = self.by_group.read() else {
            return Vec::new();
        };
        let mut all: Vec<_> = map
            .iter()
            .map(|(group, w)| (group.clone(), figures(w)))
            .filter(|(_, f)| f.last_write_ms > 0)
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn entry(&self, group: &str) -> Option<Arc<GroupWrites>> {
        let found = self
            .by_group
            .read()
            .ok()
            .and_then(|m| m.get(group).cloned());
        match found {
            Some(writes) => Some(writes),
            None => Some(
                self.by_group
                    .write()
                    .ok()?
                    .entry(group.to_owned())
                    .or_default()
                    .clone(),
            ),
        }
    }

    /// The figures of `group`; `None` if nothing was written to it.
    pub fn of(&self, group: &str) -> Option<GroupFreshness> {
        let map = self.by_group.read().ok()?;
        Some(figures(map.get(group)?))
    }
}

fn figures(writes: &GroupWrites) -> GroupFreshness {
    GroupFreshness {
        newest_event_ms: writes.newest_event_ms.load(Ordering::Relaxed),
        last_write_ms: writes.last_write_ms.load(Ordering::Relaxed),
        last_delay_ms: writes.last_delay_ms.load(Ordering::Relaxed),
    }
}

/// Reads one figure of a group.
type Reader = fn(&GroupWrites) -> i64;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Collector for Freshness {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(map) = self.by_group.read() else {
            return Ok(());
        };
        let mut rows: Vec<_> = map.iter().collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let families: [(&str, &str, Reader); 3] = [
            (
                "group_newest_event_timestamp_seconds",
                "Newest event time written to a feature group (by any process sharing the registry)",
                |w| w.newest_event_ms.load(Ordering::Relaxed),
            ),
            (
                "group_last_write_timestamp_seconds",
                "When a feature group was last written (by any process sharing the registry)",
                |w| w.last_write_ms.load(Ordering::Relaxed),
            ),
            (
                "group_write_delay_seconds",
                "From event time to written, for the newest record of a group's last write",
                |w| w.last_delay_ms.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (group, writes) in &rows {
                ConstGauge::new(read(writes) as f64 / 1000.0)
                    .encode(family.encode_family(&[("group", group.as_str())])?)?;
            }
        }
        drop(map);
        let Ok(objectives) = self.objectives.read() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "group_freshness_objective_seconds",
            "How old a feature group's newest event may be (its spec's freshness)",
            None,
            MetricType::Gauge,
        )?;
        for (group, seconds) in objectives.iter() {
            ConstGauge::new(*seconds)
                .encode(family.encode_family(&[("group", group.as_str())])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_event_time_only_moves_forward() {
        let freshness = Freshness::default();
        assert_eq!(freshness.of("g"), None);
        let now = now_ms();
        freshness.written("g", now - 5_000);
        freshness.clone().written("g", now - 60_000);
        let seen = freshness.of("g").unwrap();
        assert_eq!(seen.newest_event_ms, now - 5_000);
        assert!(seen.last_delay_ms >= 60_000, "{seen:?}");
        assert!(seen.last_write_ms >= now);
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(freshness));
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("group_newest_event_timestamp_seconds{group=\"g\"}"),
            "{text}"
        );
    }

    #[test]
    fn merged_figures_only_move_forward() {
        let freshness = Freshness::default();
        freshness.written("g", now_ms() - 1_000);
        let here = freshness.of("g").unwrap();
        // Another process: an older event, written later, with its own delay.
        let later = GroupFreshness {
            newest_event_ms: here.newest_event_ms - 60_000,
            last_write_ms: here.last_write_ms + 5_000,
            last_delay_ms: 65_000,
        };
        freshness.merge("g", later);
        assert_eq!(
            freshness.of("g").unwrap(),
            GroupFreshness {
                newest_event_ms: here.newest_event_ms,
                ..later
            }
        );
        // What is older in every way changes nothing; a group only seen elsewhere appears.
        freshness.merge("g", GroupFreshness::default());
        assert_eq!(freshness.of("g").unwrap().last_delay_ms, 65_000);
        freshness.merge("elsewhere", later);
        let all: Vec<String> = freshness.all().into_iter().map(|(g, _)| g).collect();
        assert_eq!(all, ["elsewhere", "g"]);
    }

    #[test]
    fn objectives_are_exported_for_groups_not_written_yet_and_replaced_on_apply() {
        let freshness = Freshness::default();
        freshness.set_objectives([
            ("clicks", std::time::Duration::from_secs(3600)),
            ("daily", std::time::Duration::from_secs(26 * 3600)),
        ]);
        let render = |freshness: &Freshness| {
            let mut text = String::new();
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(freshness.clone()));
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            text
        };
        let text = render(&freshness);
        assert!(
            text.contains("group_freshness_objective_seconds{group=\"clicks\"} 3600"),
            "{text}"
        );
        assert!(
            text.contains("group_freshness_objective_seconds{group=\"daily\"} 93600"),
            "{text}"
        );
        freshness.set_objectives([("daily", std::time::Duration::from_secs(60))]);
        let text = render(&freshness);
        assert!(!text.contains("group=\"clicks\""), "{text}");
        assert!(
            text.contains("group_freshness_objective_seconds{group=\"daily\"} 60"),
            "{text}"
        );
    }
}
