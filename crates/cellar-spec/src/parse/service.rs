//! Feature service documents: which groups and features a service serves.

use marked_yaml::types::MarkedMappingNode;

use super::document::index;
use super::{Doc, Head, Located, ServiceDraft};
use crate::model::ServiceLogging;

impl Doc<'_> {
    pub(super) fn service(&mut self, root: &MarkedMappingNode, head: Head) -> ServiceDraft {
        self.check_fields(
            root,
            "",
            &["kind", "name", "description", "features", "logging"],
        );
        let mut logging = ServiceLogging::default();
        if let Some(node) = self.field(root, "", "logging", false) {
            if let Some(map) = self.expect_mapping(node, "logging") {
                self.check_fields(map, "logging", &["sample_rate"]);
                if let Some(rate) =
                    self.parsed(map, "logging", "sample_rate", true, parse_sample_rate)
                {
                    logging.sample_rate = rate;
                }
            }
        }
        let mut selections = Vec::new();
        if let Some(items) = self
            .field(root, "", "features", true)
            .and_then(|node| self.expect_sequence(node, "features"))
        {
            if items.is_empty() {
                self.error(
                    items.span(),
                    "features",
                    "a feature service needs at least one feature",
                );
            }
            for (i, item) in items.iter().enumerate() {
                let path = index("features", i);
                let Some(s) = self.expect_scalar(item, &path) else {
                    continue;
                };
                let Some((group, feature)) = s.as_str().split_once(':') else {
                    self.error(
                        s.span(),
                        &path,
                        format!("`{}` is not `group:feature` or `group:*`", s.as_str()),
                    );
                    continue;
                };
                let (group, feature) = (group.trim().to_owned(), feature.trim());
                let feature = (feature != "*").then(|| feature.to_owned());
                if group.is_empty() || feature.as_deref() == Some("") {
                    self.error(
                        s.span(),
                        &path,
                        format!("`{}` is not `group:feature` or `group:*`", s.as_str()),
                    );
                    continue;
                }
                // A repeated or overlapping entry is most likely a copy-paste slip, and the
                // service's feature order must be unambiguous.
                let overlap =
                    selections
                        .iter()
                        .find(|earlier: &&Located<(String, Option<String>)>| {
                            let (g, f) = &earlier.value;
                            *g == group && (f.is_none() || feature.is_none() || *f == feature)
                        });
                if let Some(earlier) = overlap {
                    let (g, f) = &earlier.value;
                    let written = format!("{g}:{}", f.as_deref().unwrap_or("*"));
                    let message = if written == s.as_str() {
                        format!("`{written}` listed twice (first as {})", earlier.field)
                    } else {
                        format!("`{}` overlaps `{written}` ({})", s.as_str(), earlier.field)
                    };
                    self.error(s.span(), &path, message);
                    continue;
                }
                selections.push(self.locate((group, feature), s.span(), &path));
            }
        }
        ServiceDraft {
            head,
            selections,
            logging,
        }
    }
}

/// A share of reads: a number from 0 to 1, or a percentage.
fn parse_sample_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let rate = match t.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    };
    match rate {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{t}` is not a sample rate: a number from 0 to 1 (0.05) or a percentage (5%)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{FeatureSelection, ServiceLogging};
    use crate::parse::parse_repo;
    use crate::parse::tests::USER;

    #[test]
    fn service_entries_merge_per_group() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: a\nentity: user\ntype: attribute\n\
             features: [{{ name: x, type: int64 }}, {{ name: y, type: int64 }}]\n---\n\
             kind: FeatureService\nname: s\nfeatures: [\"a:y\", \"a:x\"]\n"
        );
        let repo = parse_repo(&[("r.yaml".into(), text)]).unwrap();
        assert_eq!(
            repo.services[0].features,
            vec![FeatureSelection {
                group: "a".into(),
                features: Some(vec!["y".into(), "x".into()])
            }]
        );
        assert_eq!(repo.services[0].logging, ServiceLogging::default());
    }

    #[test]
    fn a_service_logs_a_share_of_its_reads() {
        let service = |logging: &str| {
            format!(
                "{USER}---\nkind: FeatureGroup\nname: a\nentity: user\ntype: attribute\n\
                 features: [{{ name: x, type: int64 }}]\n---\n\
                 kind: FeatureService\nname: s\nfeatures: [\"a:x\"]\nlogging: {logging}\n"
            )
        };
        for (written, rate) in [
            ("{ sample_rate: 0.25 }", 0.25),
            ("{ sample_rate: 5% }", 0.05),
        ] {
            let repo = parse_repo(&[("r.yaml".into(), service(written))]).unwrap();
            assert_eq!(repo.services[0].logging.sample_rate, rate);
        }
        for (written, needle) in [
            ("{ sample_rate: 1.5 }", "`1.5` is not a sample rate"),
            ("{ sample_rate: often }", "`often` is not a sample rate"),
            ("{ rate: 0.1 }", "rate"),
        ] {
            let errors = crate::parse::tests::errors_of(&service(written));
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{written}: {errors:?}"
            );
        }
    }
}
