//! `cellar stats`: the read path of a running server at a glance, from its `/metrics`: hit
//! ratios per group and tier, negative-cache hits, the store miss ratio, read latency per
//! tier, and the Redis tier's breaker and back-fill queue.

use std::collections::BTreeMap;

use anyhow::Context as _;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text exposition format; lines that are not samples (comments, the
/// `# EOF` marker, anything malformed) are skipped.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let at = line.find(['{', ' '])?;
    let (name, mut rest) = line.split_at(at);
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let used = parse_labels(body, &mut labels)?;
        rest = &body[used..];
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` into `labels`; returns the length consumed, the `}` included.
fn parse_labels(text: &str, labels: &mut Vec<(String, String)>) -> Option<usize> {
    let mut at = 0;
    loop {
        let rest = &text[at..];
        let trimmed = rest.trim_start_matches(',');
        at += rest.len() - trimmed.len();
        if trimmed.starts_with('}') {
            return Some(at + 1);
        }
        let eq = trimmed.find("=\"")?;
        let key = trimmed[..eq].to_owned();
        let mut value = String::new();
        let mut iter = trimmed[eq + 2..].char_indices();
        let close = loop {
            match iter.next()? {
                (i, '"') => break eq + 2 + i,
                (_, '\\') => match iter.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        at += close + 1;
    }
}

/// Lookups of one group in one tier.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TierCounts {
    pub hits: f64,
    pub negative_hits: f64,
    pub misses: f64,
    pub stale: f64,
    pub early_refreshes: f64,
    pub not_admitted: f64,
}

impl TierCounts {
    pub fn lookups(&self) -> f64 {
        self.hits + self.negative_hits + self.misses
    }
}

/// Latency of one stage of the read path.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency {
    pub reads: f64,
    pub p50: f64,
    pub p99: f64,
}

/// The Redis tier's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RemoteView {
    pub breaker: f64,
    pub trips: f64,
    pub queue_depth: f64,
    pub fills_dropped: f64,
    pub bypassed: f64,
    pub errors: f64,
    pub timeouts: f64,
}

/// What `cellar stats` shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// By group, then tier (`local`, `remote`).
    pub lookups: BTreeMap<String, BTreeMap<String, TierCounts>>,
    /// By group: entities read from the store, found and missing.
    pub store: BTreeMap<String, (f64, f64)>,
    /// By stage (`local`, `remote`, `store`).
    pub latency: BTreeMap<String, Latency>,
    pub remote: Option<RemoteView>,
}

fn counts<'s>(stats: &'s mut Stats, group: &str, tier: &str) -> &'s mut TierCounts {
    stats
        .lookups
        .entry(group.to_owned())
        .or_default()
        .entry(tier.to_owned())
        .or_default()
}

/// The sample names carry the registry's `cellar_` prefix.
fn metric(name: &str) -> String {
    format!("cellar_{name}")
}

pub fn summarize(samples: &[Sample]) -> Stats {
    let mut stats = Stats::default();
    let mut buckets: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut remote = RemoteView::default();
    let mut remote_seen = false;
    for s in samples {
        let group = s.label("group").unwrap_or_default().to_owned();
        let tier = s.label("tier").unwrap_or_default().to_owned();
        let name = s.name.as_str();
        if name == metric("cache_lookups_total") {
            let c = counts(&mut stats, &group, &tier);
            match s.label("outcome") {
                Some("hit") => c.hits += s.value,
                Some("negative_hit") => c.negative_hits += s.value,
                Some("miss") => c.misses += s.value,
                _ => {}
            }
        } else if name == metric("cache_stale_served_total") {
            counts(&mut stats, &group, &tier).stale += s.value;
        } else if name == metric("cache_early_refreshes_total") {
            counts(&mut stats, &group, &tier).early_refreshes += s.value;
        } else if name == metric("cache_not_admitted_total") {
            counts(&mut stats, &group, &tier).not_admitted += s.value;
        } else if name == metric("store_reads_total") {
            let entry = stats.store.entry(group).or_default();
            match s.label("outcome") {
                Some("found") => entry.0 += s.value,
                Some("missing") => entry.1 += s.value,
                _ => {}
            }
        } else if name == metric("cache_read_duration_seconds_bucket") {
            let le = match s.label("le") {
                Some("+Inf") => f64::INFINITY,
                Some(le) => le.parse().unwrap_or(f64::INFINITY),
                None => continue,
            };
            buckets.entry(tier).or_default().push((le, s.value));
        } else if let Some(remote_metric) = name.strip_prefix(&metric("remote_cache_")) {
            remote_seen = true;
            let field = match remote_metric {
                "breaker_state" => &mut remote.breaker,
                "breaker_trips_total" => &mut remote.trips,
                "backfill_queue_depth" => &mut remote.queue_depth,
                "fills_dropped_total" => &mut remote.fills_dropped,
                "bypassed_total" => &mut remote.bypassed,
                "errors_total" => &mut remote.errors,
                "timeouts_total" => &mut remote.timeouts,
                _ => continue,
            };
            *field = s.value;
        }
    }
    for (stage, mut b) in buckets {
        b.sort_by(|x, y| x.0.total_cmp(&y.0));
        let reads = b.last().map_or(0.0, |x| x.1);
        stats.latency.insert(
            stage,
            Latency {
                reads,
                p50: quantile(&b, 0.5),
                p99: quantile(&b, 0.99),
            },
        );
    }
    stats.remote = remote_seen.then_some(remote);
    stats
}

/// A quantile from cumulative histogram buckets `(upper bound, count)`, interpolated within
/// the bucket that holds it, as Prometheus's `histogram_quantile` does.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    if total <= 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let in_bucket = count - lower.1;
            if in_bucket <= 0.0 {
                return le;
            }
            return lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket;
        }
        lower = (le, count);
    }
    lower.0
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.1}", 100.0 * part / whole)
    } else {
        "-".to_owned()
    }
}

fn seconds(s: f64) -> String {
    if s.is_nan() {
        "-".to_owned()
    } else if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn breaker_name(state: f64) -> &'static str {
    match state as i64 {
        0 => "closed",
        1 => "open",
        _ => "half-open",
    }
}

/// Renders the tables `cellar stats` prints.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let mut lookups = Table::new();
    lookups.load_preset(UTF8_FULL_CONDENSED).set_header([
        "group",
        "tier",
        "lookups",
        "hit %",
        "negative hit %",
        "miss %",
        "stale served",
        "early refreshes",
        "not admitted",
    ]);
    for (group, tiers) in &stats.lookups {
        for (tier, c) in tiers {
            let n = c.lookups();
            lookups.add_row([
                group.clone(),
                tier.clone(),
                format!("{n}"),
                percent(c.hits, n),
                percent(c.negative_hits, n),
                percent(c.misses, n),
                format!("{}", c.stale),
                format!("{}", c.early_refreshes),
                format!("{}", c.not_admitted),
            ]);
        }
    }
    out.push_str("Cache tiers, by feature group\n");
    if stats.lookups.is_empty() {
        out.push_str("(no cached reads yet)\n");
    } else {
        out.push_str(&format!("{lookups}\n"));
    }

    let mut store = Table::new();
    store
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["group", "entities read", "missing %"]);
    for (group, (found, missing)) in &stats.store {
        store.add_row([
            group.clone(),
            format!("{}", found + missing),
            percent(*missing, found + missing),
        ]);
    }
    out.push_str("\nOnline store reads (what no tier answered)\n");
    if stats.store.is_empty() {
        out.push_str("(none yet)\n");
    } else {
        out.push_str(&format!("{store}\n"));
    }

    let mut latency = Table::new();
    latency
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(["tier", "reads", "p50", "p99"]);
    for stage in ["local", "remote", "store"] {
        if let Some(l) = stats.latency.get(stage) {
            latency.add_row([
                stage.to_owned(),
                format!("{}", l.reads),
                seconds(l.p50),
                seconds(l.p99),
            ]);
        }
    }
    out.push_str("\nRead latency per tier\n");
    if stats.latency.is_empty() {
        out.push_str("(no reads yet)\n");
    } else {
        out.push_str(&format!("{latency}\n"));
    }

    out.push('\n');
    match &stats.remote {
        None => out.push_str("Redis tier: not configured\n"),
        Some(r) => out.push_str(&format!(
            "Redis tier: breaker {} ({} trips), back-fill queue {} waiting, {} fills dropped, \
             {} reads bypassed Redis, {} errors, {} timeouts\n",
            breaker_name(r.breaker),
            r.trips,
            r.queue_depth,
            r.fills_dropped,
            r.bypassed,
            r.errors,
            r.timeouts
        )),
    }
    out
}

/// Fetches a server's metrics and summarizes them.
pub async fn fetch(server: &str) -> anyhow::Result<Stats> {
    let url = format!("{}/metrics", server.trim_end_matches('/'));
    let response = crate::client::http()
        .get(&url)
        .send()
        .await
        .with_context(|| format!("fetching {url}"))?;
    let status = response.status();
    let text = response.text().await.context("reading the metrics")?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {text}");
    }
    Ok(summarize(&parse_samples(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP cellar_cache_lookups Cache lookups
# TYPE cellar_cache_lookups counter
cellar_cache_lookups_total{tier="local",group="user_profile",outcome="hit"} 90
cellar_cache_lookups_total{tier="local",group="user_profile",outcome="negative_hit"} 5
cellar_cache_lookups_total{tier="local",group="user_profile",outcome="miss"} 5
cellar_cache_stale_served_total{tier="local",group="user_profile"} 2
cellar_cache_not_admitted_total{tier="local",group="user_profile"} 1
cellar_store_reads_total{group="user_profile",outcome="found"} 3
cellar_store_reads_total{group="user_profile",outcome="missing"} 1
cellar_cache_read_duration_seconds_bucket{tier="store",le="0.001"} 50
cellar_cache_read_duration_seconds_bucket{tier="store",le="0.002"} 100
cellar_cache_read_duration_seconds_bucket{tier="store",le="+Inf"} 100
cellar_remote_cache_breaker_state 1
cellar_remote_cache_backfill_queue_depth 7
odd_metric{label="with \"quotes\", and commas"} 1
# EOF
"#;

    #[test]
    fn samples_parse_with_escaped_labels() {
        let samples = parse_samples(EXPOSITION);
        assert_eq!(samples.len(), 13);
        let odd = samples.last().unwrap();
        assert_eq!(odd.label("label"), Some(r#"with "quotes", and commas"#));
        assert_eq!(odd.value, 1.0);
        assert_eq!(samples[0].label("outcome"), Some("hit"));
        assert_eq!(samples[0].value, 90.0);
    }

    #[test]
    fn stats_summarize_ratios_and_quantiles() {
        let stats = summarize(&parse_samples(EXPOSITION));
        let local = &stats.lookups["user_profile"]["local"];
        assert_eq!(local.lookups(), 100.0);
        assert_eq!(
            (local.hits, local.stale, local.not_admitted),
            (90.0, 2.0, 1.0)
        );
        assert_eq!(stats.store["user_profile"], (3.0, 1.0));
        let store = &stats.latency["store"];
        assert_eq!(store.reads, 100.0);
        assert!((store.p50 - 0.001).abs() < 1e-12, "{}", store.p50);
        assert!((store.p99 - 0.00198).abs() < 1e-9, "{}", store.p99);
        let remote = stats.remote.as_ref().unwrap();
        assert_eq!((remote.breaker, remote.queue_depth), (1.0, 7.0));
        let text = render(&stats);
        assert!(text.contains("user_profile"), "{text}");
        assert!(text.contains("90.0"), "{text}");
        assert!(text.contains("25.0"), "store missing %: {text}");
        assert!(text.contains("breaker open"), "{text}");
    }

    #[test]
    fn quantile_of_nothing_is_not_a_number() {
        assert!(quantile(&[], 0.5).is_nan());
        assert!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5).is_nan());
    }
}
