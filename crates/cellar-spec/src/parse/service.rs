//! Feature service documents: which groups and features a service serves.

use marked_yaml::types::MarkedMappingNode;

use super::document::index;
use super::{Doc, Head, Located, ServiceDraft};

impl Doc<'_> {
    pub(super) fn service(&mut self, root: &MarkedMappingNode, head: Head) -> ServiceDraft {
        self.check_fields(root, "", &["kind", "name", "description", "features"]);
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
        ServiceDraft { head, selections }
    }
}

#[cfg(test)]
mod tests {
    use crate::model::FeatureSelection;
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
    }
}
