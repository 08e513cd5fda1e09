//! A group's spec as the registry holds it, written back the way spec files write it (YAML,
//! durations as `30s`), so the page and the diffs between versions read like the repo.

use std::fmt::Write as _;

use cellar_spec::parse::format_duration;
use cellar_spec::{FeatureGroup, GroupKind, OnDemandGroup, SpecKind};

/// The spec stored as `json` (of `kind`), as YAML; the JSON itself if it does not read as one.
pub fn from_stored(kind: SpecKind, json: &serde_json::Value) -> String {
    let text = match kind {
        SpecKind::FeatureGroup => serde_json::from_value::<FeatureGroup>(json.clone())
            .ok()
            .map(|g| group(&g)),
        SpecKind::OnDemandGroup => serde_json::from_value::<OnDemandGroup>(json.clone())
            .ok()
            .map(|g| on_demand(&g)),
        _ => None,
    };
    text.unwrap_or_else(|| serde_json::to_string_pretty(json).unwrap_or_default())
}

pub fn group(g: &FeatureGroup) -> String {
    let mut out = String::new();
    let kind = match g.kind {
        GroupKind::Attribute => "attribute",
        GroupKind::Timeseries => "timeseries",
    };
    let _ = writeln!(
        out,
        "kind: FeatureGroup\nname: {}\nentity: {}\ntype: {kind}",
        g.name, g.entity
    );
    if let Some(d) = &g.description {
        let _ = writeln!(out, "description: {d}");
    }
    let _ = writeln!(out, "features:");
    for f in &g.features {
        let _ = write!(out, "  - {{ name: {}, type: {}", f.name, f.value_type);
        if let Some(d) = &f.description {
            let _ = write!(out, ", description: {d}");
        }
        let retired = if f.retired { " }  # retired" } else { " }" };
        let _ = writeln!(out, "{retired}");
    }
    let r = &g.retention;
    let mut retention = Vec::new();
    if let Some(n) = r.max_records {
        retention.push(format!("max_records: {n}"));
    }
    if let Some(age) = r.max_age {
        retention.push(format!("max_age: {}", format_duration(age)));
    }
    if let Some(history) = r.history {
        retention.push(format!("history: {}", format_duration(history)));
    }
    if !retention.is_empty() {
        let _ = writeln!(out, "retention: {{ {} }}", retention.join(", "));
    }
    let s = &g.serving;
    let tiers: Vec<String> = s
        .tiers
        .iter()
        .map(|t| super::overview::tier_name(*t).to_owned())
        .collect();
    let _ = writeln!(
        out,
        "serving: {{ tiers: [{}], soft_ttl: {}, hard_ttl: {}, jitter: {:.0}%, negative_ttl: {}, write: {}, early_refresh: {}, admit_after: {}, admit_window: {} }}",
        tiers.join(", "),
        format_duration(s.soft_ttl),
        format_duration(s.hard_ttl),
        s.jitter * 100.0,
        format_duration(s.negative_ttl),
        match s.write {
            cellar_spec::WriteStrategy::Through => "through",
            cellar_spec::WriteStrategy::Around => "around",
        },
        s.early_refresh,
        s.admit_after,
        format_duration(s.admit_window),
    );
    let _ = writeln!(out, "max_record_bytes: {}", g.max_record_bytes);
    if let Some(freshness) = g.freshness {
        let _ = writeln!(out, "freshness: {}", format_duration(freshness));
    }
    if !g.push_sources.is_empty() {
        let _ = writeln!(out, "push_sources: [{}]", g.push_sources.join(", "));
    }
    if g.generation > 0 {
        let _ = writeln!(
            out,
            "# storage generation {} (after a layout change)",
            g.generation
        );
    }
    out
}

pub fn on_demand(g: &OnDemandGroup) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kind: FeatureGroup\nname: {}\ntype: on_demand", g.name);
    if let Some(d) = &g.description {
        let _ = writeln!(out, "description: {d}");
    }
    if !g.request.is_empty() {
        let _ = writeln!(out, "request:");
        for r in &g.request {
            let _ = writeln!(out, "  - {{ name: {}, type: {} }}", r.name, r.value_type);
        }
    }
    if !g.sources.is_empty() {
        let _ = writeln!(out, "sources:");
        for s in &g.sources {
            let _ = writeln!(out, "  - {{ name: {}, url: {} }}", s.name, s.url);
        }
    }
    let _ = writeln!(out, "features:");
    for f in &g.features {
        let _ = writeln!(
            out,
            "  - name: {}\n    type: {}\n    expr: {}",
            f.name, f.value_type, f.expr
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_group_reads_like_its_spec_file() {
        let files = vec![(
            "g.yaml".to_owned(),
            "kind: Entity\nname: user\nkeys: [{ name: user_id, type: string }]\n---\n\
             kind: FeatureGroup\nname: profile\nentity: user\ntype: attribute\n\
             features:\n  - { name: country, type: string }\n\
             serving: { tiers: [local], soft_ttl: 30s, hard_ttl: 10m }\nfreshness: 90m\n"
                .to_owned(),
        )];
        let repo = cellar_spec::parse_repo_with(&files, &cellar_expr::Checker).unwrap();
        let json = serde_json::to_value(&repo.groups[0]).unwrap();
        let text = from_stored(SpecKind::FeatureGroup, &json);
        assert!(
            text.starts_with("kind: FeatureGroup\nname: profile\nentity: user\ntype: attribute\n"),
            "{text}"
        );
        assert!(
            text.contains("  - { name: country, type: string }\n"),
            "{text}"
        );
        assert!(text.contains("soft_ttl: 30s, hard_ttl: 10m"), "{text}");
        assert!(text.contains("\nfreshness: 90m\n"), "{text}");
        // Not a group: shown as the JSON it is.
        let other = from_stored(SpecKind::Entity, &serde_json::json!({"name": "user"}));
        assert!(other.contains("\"name\": \"user\""), "{other}");
    }
}
