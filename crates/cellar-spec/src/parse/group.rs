//! Feature group documents: features, retention and the serving policy, with their defaults.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use super::document::{index, join};
use super::scalars::{
    format_duration, parse_duration, parse_early_refresh, parse_jitter, MAX_ADMIT_AFTER,
};
use super::suggest::suggest;
use super::{
    Doc, FeatureDraft, GroupDraft, Head, DEFAULT_MAX_RECORD_BYTES, MAX_RECORD_BYTES_LIMIT,
};
use crate::model::{GroupKind, Retention, ServingPolicy, Tier, WriteStrategy};
use crate::value::ValueType;

impl Doc<'_> {
    pub(super) fn group(&mut self, root: &MarkedMappingNode, head: Head) -> GroupDraft {
        self.check_fields(
            root,
            "",
            &[
                "kind",
                "name",
                "description",
                "entity",
                "type",
                "features",
                "retention",
                "serving",
                "max_record_bytes",
                "push_sources",
                "freshness",
            ],
        );
        let entity = self
            .text(root, "", "entity", true)
            .map(|e| self.locate(e.as_str().to_owned(), e.span(), "entity"));
        let kind = self.parsed(root, "", "type", true, |s| match s {
            "attribute" => Ok(GroupKind::Attribute),
            "timeseries" => Ok(GroupKind::Timeseries),
            other => Err(format!(
                "unknown group type `{other}`: expected `attribute`, `timeseries` or `on_demand`"
            )),
        });
        let features = self.features(root);
        let retention = match self.field(root, "", "retention", false) {
            Some(node) => self.retention(node, kind).unwrap_or_default(),
            None => Retention::default(),
        };
        let serving = match self.field(root, "", "serving", false) {
            Some(node) => self.serving(node).unwrap_or_default(),
            None => ServingPolicy::default(),
        };
        let max_record_bytes = self
            .parsed(root, "", "max_record_bytes", false, |s| {
                match s.parse::<usize>() {
                    Ok(n) if (1..=MAX_RECORD_BYTES_LIMIT).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "`{s}` is not a size: expected a whole number of bytes from 1 to {MAX_RECORD_BYTES_LIMIT}"
                    )),
                }
            })
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        let push_sources = self.push_sources(root);
        let freshness = self.parsed(root, "", "freshness", false, |s| {
            match parse_duration(s)? {
                d if d.is_zero() => Err(format!(
                    "freshness `{s}` is zero: no group is ever that fresh; give the age its newest event may reach, as in 15m"
                )),
                d => Ok(d),
            }
        });
        GroupDraft {
            head,
            entity,
            kind,
            features,
            retention,
            serving,
            max_record_bytes,
            push_sources,
            freshness,
        }
    }

    /// `push_sources`: the Feast push source names the group answers to.
    fn push_sources(&mut self, root: &MarkedMappingNode) -> Vec<String> {
        let Some(items) = self
            .field(root, "", "push_sources", false)
            .and_then(|node| self.text_list(node, "push_sources"))
        else {
            return Vec::new();
        };
        let mut out: Vec<String> = Vec::new();
        for (i, name) in items {
            self.check_name(name, &index("push_sources", i));
            if !out.iter().any(|n| n == name.as_str()) {
                out.push(name.as_str().to_owned());
            }
        }
        out
    }

    fn features(&mut self, root: &MarkedMappingNode) -> Vec<FeatureDraft> {
        let Some(items) = self
            .field(root, "", "features", true)
            .and_then(|node| self.expect_sequence(node, "features"))
        else {
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                items.span(),
                "features",
                "a feature group needs at least one feature",
            );
            return Vec::new();
        }
        let mut out: Vec<FeatureDraft> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = index("features", i);
            let Some(map) = self.expect_mapping(item, &path) else {
                continue;
            };
            self.check_fields(map, &path, &["name", "type", "description"]);
            let name = self.text(map, &path, "name", true);
            let value_type = self.parsed(map, &path, "type", true, ValueType::from_str);
            let description = self
                .text(map, &path, "description", false)
                .map(|d| d.as_str().to_owned());
            let Some(name) = name else { continue };
            self.check_name(name, &join(&path, "name"));
            let line = self.line(name.span());
            if let Some(first) = seen.insert(name.as_str().to_owned(), line) {
                self.error_at(
                    line,
                    &join(&path, "name"),
                    format!(
                        "duplicate feature `{}` (first at line {first})",
                        name.as_str()
                    ),
                );
                continue;
            }
            out.push(FeatureDraft {
                name: name.as_str().to_owned(),
                value_type,
                description,
            });
        }
        out
    }

    fn retention(&mut self, node: &Node, kind: Option<GroupKind>) -> Option<Retention> {
        let map = self.expect_mapping(node, "retention")?;
        self.check_fields(map, "retention", &["max_records", "max_age", "history"]);
        let max_records = self.parsed(map, "retention", "max_records", false, |s| {
            match s.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!(
                    "`{s}` is not a record count: expected a whole number >= 1"
                )),
            }
        });
        if max_records.is_some() && kind == Some(GroupKind::Attribute) {
            if let Some(n) = map.get_node("max_records") {
                self.error(
                    n.span(),
                    "retention.max_records",
                    "an attribute group keeps one record per entity; `max_records` applies to \
                     timeseries groups",
                );
            }
        }
        let max_age = self.parsed(map, "retention", "max_age", false, parse_duration);
        if max_age == Some(Duration::ZERO) {
            if let Some(n) = map.get_node("max_age") {
                self.error(
                    n.span(),
                    "retention.max_age",
                    "`max_age` must be more than 0",
                );
            }
        }
        let history = self.parsed(
            map,
            "retention",
            "history",
            false,
            |s| match parse_duration(s)? {
                d if d < Duration::from_secs(86_400) => Err(format!(
                    "`{s}` is too short: the history is kept by event date, so at least 1d"
                )),
                d => Ok(d),
            },
        );
        Some(Retention {
            max_records,
            max_age,
            history,
        })
    }

    fn serving(&mut self, node: &Node) -> Option<ServingPolicy> {
        const P: &str = "serving";
        let map = self.expect_mapping(node, P)?;
        self.check_fields(
            map,
            P,
            &[
                "tiers",
                "soft_ttl",
                "hard_ttl",
                "jitter",
                "negative_ttl",
                "write",
                "early_refresh",
                "admit_after",
                "admit_window",
            ],
        );
        let mut policy = ServingPolicy::default();
        if let Some(node) = self.field(map, P, "tiers", false) {
            if let Some(items) = self.text_list(node, "serving.tiers") {
                let mut tiers = Vec::new();
                for (i, item) in items {
                    let path = index("serving.tiers", i);
                    let tier = match item.as_str() {
                        "local" => Tier::Local,
                        "remote" => Tier::Remote,
                        other => {
                            let message = match suggest(other, ["local", "remote"]) {
                                Some(s) => format!("unknown tier `{other}`; did you mean `{s}`?"),
                                None => {
                                    format!("unknown tier `{other}`: expected `local` or `remote`")
                                }
                            };
                            self.error(item.span(), &path, message);
                            continue;
                        }
                    };
                    if tiers.contains(&tier) {
                        self.error(
                            item.span(),
                            &path,
                            format!("tier `{}` listed twice", item.as_str()),
                        );
                        continue;
                    }
                    tiers.push(tier);
                }
                policy.tiers = tiers;
            }
        } else if map.get_node("tiers").is_some() {
            // `tiers:` with nothing after it: no cache tier, every read goes to the store.
            policy.tiers = Vec::new();
        }
        if let Some(d) = self.parsed(map, P, "soft_ttl", false, parse_duration) {
            policy.soft_ttl = d;
        }
        if let Some(d) = self.parsed(map, P, "hard_ttl", false, parse_duration) {
            policy.hard_ttl = d;
        }
        if let Some(d) = self.parsed(map, P, "negative_ttl", false, parse_duration) {
            policy.negative_ttl = d;
        }
        if let Some(j) = self.parsed(map, P, "jitter", false, parse_jitter) {
            policy.jitter = j;
        }
        if let Some(w) = self.parsed(map, P, "write", false, |s| match s {
            "through" => Ok(WriteStrategy::Through),
            "around" => Ok(WriteStrategy::Around),
            other => Err(format!(
                "unknown write strategy `{other}`: expected `through` or `around`"
            )),
        }) {
            policy.write = w;
        }
        if let Some(beta) = self.parsed(map, P, "early_refresh", false, parse_early_refresh) {
            policy.early_refresh = beta;
        }
        if let Some(k) = self.parsed(map, P, "admit_after", false, |s| {
            match s.trim().parse::<u32>() {
                Ok(k) if (1..=MAX_ADMIT_AFTER).contains(&k) => Ok(k),
                _ => Err(format!(
                    "`{s}` is not a read count: expected a whole number from 1 to {MAX_ADMIT_AFTER}"
                )),
            }
        }) {
            policy.admit_after = k;
        }
        if let Some(d) = self.parsed(map, P, "admit_window", false, parse_duration) {
            if d.is_zero() {
                let span = map.get_node("admit_window").map(|n| *n.span());
                if let Some(span) = span {
                    self.error(
                        &span,
                        "serving.admit_window",
                        "`admit_window` must be more than 0",
                    );
                }
            } else {
                policy.admit_window = d;
            }
        }
        if policy.soft_ttl > policy.hard_ttl {
            let span = map
                .get_node("soft_ttl")
                .or_else(|| map.get_node("hard_ttl"))
                .map(|n| *n.span())
                .unwrap_or_else(|| *map.span());
            self.error(
                &span,
                "serving.soft_ttl",
                format!(
                    "soft_ttl ({}) is longer than hard_ttl ({}): a copy must turn stale before it \
                     expires",
                    format_duration(policy.soft_ttl),
                    format_duration(policy.hard_ttl)
                ),
            );
        }
        Some(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Origin;
    use crate::parse::parse_repo;
    use crate::parse::tests::{errors_of, USER};
    use crate::repo::SpecKind;

    #[test]
    fn defaults_fill_what_a_group_leaves_out() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
             features: [{{ name: f, type: int64 }}]\nserving: {{ hard_ttl: 1h }}\n"
        );
        let repo = parse_repo(&[("r.yaml".into(), text)]).unwrap();
        let g = &repo.groups[0];
        assert_eq!(g.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
        assert_eq!(g.retention, Retention::default());
        assert_eq!(
            g.serving,
            ServingPolicy {
                hard_ttl: Duration::from_secs(3600),
                ..ServingPolicy::default()
            }
        );
        assert_eq!(
            repo.origins[&(SpecKind::FeatureGroup, "g".to_owned())],
            Origin {
                file: "r.yaml".into(),
                line: 5
            }
        );
    }

    #[test]
    fn the_history_keeps_a_group_as_long_as_its_retention_says() {
        let group = |retention: &str| {
            format!(
                "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
                 features: [{{ name: f, type: int64 }}]\nretention: {retention}\n"
            )
        };
        let repo = parse_repo(&[("r.yaml".into(), group("{ history: 400d }"))]).unwrap();
        assert_eq!(
            repo.groups[0].retention.history,
            Some(Duration::from_secs(400 * 86_400))
        );
        let errors = errors_of(&group("{ history: 12h }"));
        assert!(
            errors
                .iter()
                .any(|e| e.contains("retention.history") && e.contains("`12h` is too short")),
            "{errors:?}"
        );
    }

    #[test]
    fn freshness_is_a_duration_above_zero() {
        let group = |freshness: &str| {
            format!(
                "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
                 features: [{{ name: f, type: int64 }}]\nfreshness: {freshness}\n"
            )
        };
        let repo = parse_repo(&[("r.yaml".into(), group("15m"))]).unwrap();
        assert_eq!(repo.groups[0].freshness, Some(Duration::from_secs(900)));
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
             features: [{{ name: f, type: int64 }}]\n"
        );
        let repo = parse_repo(&[("r.yaml".into(), text)]).unwrap();
        assert_eq!(repo.groups[0].freshness, None);
        assert_eq!(
            errors_of(&group("0s")),
            vec![
                "repo.yaml:10: freshness: freshness `0s` is zero: no group is ever that fresh; \
                 give the age its newest event may reach, as in 15m"
            ]
        );
        let errors = errors_of(&group("soon"));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("repo.yaml:10: freshness: `soon` is not a duration")),
            "{errors:?}"
        );
    }

    #[test]
    fn soft_ttl_is_checked_against_the_default_hard_ttl() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
             features: [{{ name: f, type: int64 }}]\nserving: {{ soft_ttl: 1h }}\n"
        );
        assert_eq!(
            errors_of(&text),
            vec![
                "repo.yaml:10: serving.soft_ttl: soft_ttl (1h) is longer than hard_ttl (10m): \
                 a copy must turn stale before it expires"
            ]
        );
    }

    #[test]
    fn early_refresh_and_admission() {
        let group = |serving: &str| {
            format!(
                "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
                 features: [{{ name: f, type: int64 }}]\nserving: {{ {serving} }}\n"
            )
        };
        let text = group("early_refresh: 2.5, admit_after: 3, admit_window: 5m");
        let repo = parse_repo(&[("r.yaml".into(), text)]).unwrap();
        let serving = &repo.groups[0].serving;
        assert_eq!(serving.early_refresh, 2.5);
        assert_eq!(serving.admit_after, 3);
        assert_eq!(serving.admit_window, Duration::from_secs(300));

        assert_eq!(
            errors_of(&group(
                "early_refresh: -1, admit_after: 0, admit_window: 0s"
            )),
            vec![
                "repo.yaml:10: serving.early_refresh: `-1` is not an early refresh factor: \
                 expected a number from 0 (never) to 100, 1 being the usual",
                "repo.yaml:10: serving.admit_after: `0` is not a read count: expected a whole \
                 number from 1 to 1000",
                "repo.yaml:10: serving.admit_window: `admit_window` must be more than 0",
            ]
        );
    }
}
