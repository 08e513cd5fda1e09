//! On-demand group documents (`kind: FeatureGroup`, `type: on_demand`): request fields and
//! features computed by expressions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::str::FromStr;

use marked_yaml::types::MarkedMappingNode;

use super::document::{index, join};
use super::{
    Doc, Head, Located, OnDemandDraft, OnDemandFeatureDraft, RequestFieldDraft, SpecError,
};
use crate::model::{group_inputs, ExpressionCheck, ExpressionInput, KeyType, OnDemandGroup};
use crate::repo::FeatureRepo;
use crate::value::{ScalarType, ValueType};

/// Longest expression, in bytes: expressions are compiled at every apply and server start.
pub const MAX_EXPRESSION_LEN: usize = 4096;

impl Doc<'_> {
    pub(super) fn on_demand_group(
        &mut self,
        root: &MarkedMappingNode,
        head: Head,
    ) -> OnDemandDraft {
        self.check_fields(
            root,
            "",
            &["kind", "name", "description", "type", "request", "features"],
        );
        let request = self.request_fields(root);
        let features = self.on_demand_features(root);
        OnDemandDraft {
            head,
            request,
            features,
        }
    }

    fn request_fields(&mut self, root: &MarkedMappingNode) -> Vec<RequestFieldDraft> {
        let Some(items) = self
            .field(root, "", "request", false)
            .and_then(|node| self.expect_sequence(node, "request"))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = index("request", i);
            let Some(map) = self.expect_mapping(item, &path) else {
                continue;
            };
            self.check_fields(map, &path, &["name", "type"]);
            let name = self.text(map, &path, "name", true);
            let value_type = self.parsed(map, &path, "type", true, ValueType::from_str);
            let Some(name) = name else { continue };
            self.check_name(name, &join(&path, "name"));
            let line = self.line(name.span());
            if let Some(first) = seen.insert(name.as_str().to_owned(), line) {
                self.error_at(
                    line,
                    &join(&path, "name"),
                    format!(
                        "duplicate request field `{}` (first at line {first})",
                        name.as_str()
                    ),
                );
                continue;
            }
            out.push(RequestFieldDraft {
                name: self.locate(name.as_str().to_owned(), name.span(), &join(&path, "name")),
                value_type,
            });
        }
        out
    }

    fn on_demand_features(&mut self, root: &MarkedMappingNode) -> Vec<OnDemandFeatureDraft> {
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
        let mut out = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = index("features", i);
            let Some(map) = self.expect_mapping(item, &path) else {
                continue;
            };
            self.check_fields(map, &path, &["name", "type", "expr", "description"]);
            let name = self.text(map, &path, "name", true);
            let value_type = self.parsed(map, &path, "type", true, ValueType::from_str);
            let expr = self.text(map, &path, "expr", true).and_then(|e| {
                let field = join(&path, "expr");
                if e.as_str().len() > MAX_EXPRESSION_LEN {
                    self.error(
                        e.span(),
                        &field,
                        format!(
                            "the expression is {} bytes long; at most {MAX_EXPRESSION_LEN}",
                            e.as_str().len()
                        ),
                    );
                    return None;
                }
                Some(self.locate(e.as_str().trim().to_owned(), e.span(), &field))
            });
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
            out.push(OnDemandFeatureDraft {
                name: name.as_str().to_owned(),
                value_type,
                expr,
                description,
            });
        }
        out
    }
}

/// Where each on-demand feature's expression was written: (group, feature) -> the text.
pub(super) type WrittenExpressions = BTreeMap<(String, String), Located<String>>;

impl super::Drafts {
    pub(super) fn expressions(&self) -> WrittenExpressions {
        let mut out = BTreeMap::new();
        for group in &self.on_demand {
            for feature in &group.features {
                if let Some(expr) = &feature.expr {
                    out.insert(
                        (group.head.name.clone(), feature.name.clone()),
                        expr.clone(),
                    );
                }
            }
        }
        out
    }
}

/// What an expression may read in `repo`: its group's request fields, every entity key field,
/// and the features of every stored group (see [`group_inputs`]).
pub fn expression_inputs(repo: &FeatureRepo, group: &OnDemandGroup) -> Vec<ExpressionInput> {
    let mut inputs: Vec<ExpressionInput> = group
        .request
        .iter()
        .map(|f| ExpressionInput::new(&f.name, f.value_type))
        .collect();
    let mut keys = BTreeSet::new();
    for key in repo.entities.iter().flat_map(|e| &e.keys) {
        if keys.insert(key.name.as_str()) {
            let t = match key.key_type {
                KeyType::String => ValueType::Scalar(ScalarType::String),
                KeyType::Int64 => ValueType::Scalar(ScalarType::Int64),
            };
            inputs.push(ExpressionInput::new(&key.name, t));
        }
    }
    for stored in &repo.groups {
        inputs.extend(group_inputs(stored));
    }
    inputs
}

/// Every on-demand feature's expression checked by `check`, errors at the expression's line.
pub(super) fn check_expressions(
    repo: &FeatureRepo,
    written: &WrittenExpressions,
    check: &dyn ExpressionCheck,
) -> Vec<SpecError> {
    let mut errors = Vec::new();
    for group in &repo.on_demand {
        let inputs = expression_inputs(repo, group);
        for feature in &group.features {
            if let Err(message) = check.check(&feature.expr, &inputs, feature.value_type) {
                let Some(at) = written.get(&(group.name.clone(), feature.name.clone())) else {
                    continue;
                };
                errors.push(SpecError {
                    file: at.origin.file.clone(),
                    line: at.origin.line,
                    field: at.field.clone(),
                    message,
                });
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::tests::{errors_of, USER};
    use crate::parse::{parse_repo, parse_repo_with};
    use crate::repo::SpecKind;

    const CLICKS: &str = "kind: FeatureGroup\nname: clicks\nentity: user\ntype: attribute\n\
                          features: [{ name: last_at, type: timestamp }, { name: n, type: int64 }]\n";

    fn on_demand(body: &str) -> String {
        format!(
            "{USER}---\n{CLICKS}---\nkind: FeatureGroup\nname: signals\ntype: on_demand\n{body}"
        )
    }

    #[test]
    fn an_on_demand_group_is_read_with_its_request_fields_and_expressions() {
        let text = on_demand(
            "request: [{ name: lat, type: float64 }]\nfeatures:\n  - name: twice\n    type: int64\n    expr: clicks.n * 2\n",
        );
        let repo = parse_repo(&[("r.yaml".into(), text)]).unwrap();
        let g = &repo.on_demand[0];
        assert_eq!(g.name, "signals");
        assert_eq!(g.request[0].name, "lat");
        assert_eq!(g.features[0].expr, "clicks.n * 2");
        assert!(repo.groups.iter().all(|s| s.name != "signals"));
        assert!(repo
            .origins
            .contains_key(&(SpecKind::OnDemandGroup, "signals".to_owned())));
        let inputs = expression_inputs(&repo, g);
        let names: Vec<String> = inputs.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "lat",
                "user_id",
                "clicks.last_at",
                "clicks.n",
                "clicks.event_time"
            ]
        );
    }

    #[test]
    fn on_demand_mistakes_name_their_field() {
        let text = on_demand(
            "request: [{ name: user_id, type: string }, { name: user_id, type: int64 }]\n\
             retention: { max_age: 1d }\n\
             features:\n  - { name: a, type: int64 }\n  - { name: b, type: nope, expr: '1' }\n",
        );
        assert_eq!(
            errors_of(&text),
            vec![
                "repo.yaml:14: request[1].name: duplicate request field `user_id` (first at line 14)",
                "repo.yaml:14: request[0].name: `user_id` is an entity key field: expressions read it without declaring it",
                "repo.yaml:15: retention: unknown field `retention`; expected one of kind, name, description, type, request, features",
                "repo.yaml:17: features[0].expr: missing required field `expr`",
                "repo.yaml:18: features[1].type: unknown type `nope`: expected one of bool, int64, float64, string, bytes, timestamp, list<T>, set<T>, map<string, T> or vector<float32, N>",
            ]
        );
    }

    #[test]
    fn names_are_shared_with_stored_groups_and_on_demand_groups_take_no_ingestion() {
        let text = format!(
            "{USER}---\n{CLICKS}---\nkind: FeatureGroup\nname: clicks\ntype: on_demand\n\
             features: [{{ name: x, type: int64, expr: '1' }}]\n---\n\
             kind: FeatureGroup\nname: signals\ntype: on_demand\n\
             features: [{{ name: x, type: int64, expr: '1' }}]\n---\n\
             kind: Ingestion\nname: fill\ninto: signals\nsource: {{ stream: {{ topic: t }} }}\n\
             key: [$.user_id]\nfeatures: {{ x: $.x }}\n---\n\
             kind: FeatureService\nname: svc\nfeatures: [signals:x, signals:y]\n"
        );
        let errors = errors_of(&text);
        assert!(
            errors
                .iter()
                .any(|e| e
                    .contains("duplicate FeatureGroup `clicks`: already declared at repo.yaml:5")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("into: `signals` is an on-demand group")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("group `signals` has no feature `y`")),
            "{errors:?}"
        );
        assert!(
            !errors.iter().any(|e| e.contains("signals:x")),
            "{errors:?}"
        );
    }

    struct Refuse;

    impl ExpressionCheck for Refuse {
        fn check(
            &self,
            expr: &str,
            inputs: &[ExpressionInput],
            _: ValueType,
        ) -> Result<(), String> {
            if expr.contains("bad") {
                Err(format!("refused among {} inputs", inputs.len()))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn expressions_are_checked_at_their_line() {
        let text = on_demand(
            "features:\n  - { name: ok, type: int64, expr: '1' }\n  - name: broken\n    type: int64\n    expr: bad + 1\n",
        );
        let err = parse_repo_with(&[("r.yaml".into(), text.clone())], &Refuse).unwrap_err();
        let messages: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            ["r.yaml:18: features[1].expr: refused among 4 inputs"]
        );
        parse_repo(&[("r.yaml".into(), text)]).unwrap();
    }
}
