//! On-demand group documents (`kind: FeatureGroup`, `type: on_demand`): request fields,
//! features computed by expressions, and the external sources they read.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use marked_yaml::types::MarkedMappingNode;

use super::document::{index, join};
use super::scalars::parse_duration;
use super::{
    Doc, Head, Located, OnDemandDraft, OnDemandFeatureDraft, RequestFieldDraft, SpecError,
};
use crate::model::{
    group_inputs, write_inputs, ExpressionCheck, ExpressionInput, FeatureExpr, KeyType,
    OnDemandGroup, OnDemandSource, SourceField,
};
use crate::repo::{FeatureRepo, SpecKind};
use crate::secret;
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
            &[
                "kind",
                "name",
                "description",
                "type",
                "request",
                "features",
                "sources",
            ],
        );
        let request = self.request_fields(root);
        let features = self.on_demand_features(root);
        let (sources, source_keys) = self.sources(root);
        OnDemandDraft {
            head,
            request,
            features,
            sources,
            source_keys,
        }
    }

    #[allow(clippy::type_complexity)]
    fn sources(
        &mut self,
        root: &MarkedMappingNode,
    ) -> (
        Option<Vec<OnDemandSource>>,
        Vec<(Located<String>, Vec<Located<String>>)>,
    ) {
        let Some(items) = self
            .field(root, "", "sources", false)
            .and_then(|node| self.expect_sequence(node, "sources"))
        else {
            return (Some(Vec::new()), Vec::new());
        };
        let mut out = Some(Vec::new());
        let mut keys_of = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = index("sources", i);
            let Some(map) = self.expect_mapping(item, &path) else {
                out = None;
                continue;
            };
            match self.source(map, &path, &mut seen) {
                Some((source, name, keys)) => {
                    keys_of.push((name, keys));
                    if let Some(list) = &mut out {
                        list.push(source);
                    }
                }
                None => out = None,
            }
        }
        (out, keys_of)
    }

    #[allow(clippy::type_complexity)]
    fn source(
        &mut self,
        map: &MarkedMappingNode,
        path: &str,
        seen: &mut HashMap<String, usize>,
    ) -> Option<(OnDemandSource, Located<String>, Vec<Located<String>>)> {
        self.check_fields(
            map,
            path,
            &[
                "name",
                "url",
                "headers",
                "keys",
                "fields",
                "timeout",
                "max_concurrency",
                "retries",
                "breaker",
                "cache_ttl",
            ],
        );
        let mut ok = true;
        let name = self.text(map, path, "name", true);
        let name = match name {
            Some(n) => {
                ok &= self.check_name(n, &join(path, "name"));
                let line = self.line(n.span());
                if let Some(first) = seen.insert(n.as_str().to_owned(), line) {
                    self.error_at(
                        line,
                        &join(path, "name"),
                        format!("duplicate source `{}` (first at line {first})", n.as_str()),
                    );
                    ok = false;
                }
                Some(self.locate(n.as_str().to_owned(), n.span(), &join(path, "name")))
            }
            None => None,
        };
        let url = self.parsed(map, path, "url", true, |u| {
            let u = u.trim();
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("`{u}` is not an http:// or https:// URL"));
            }
            match secret::literal_password(u) {
                Err(e) => Err(e.to_string()),
                Ok(Some(_)) => Err(
                    "the URL holds a password: refer to it as a secret (`${NAME}` or `${file:PATH}`)"
                        .to_owned(),
                ),
                Ok(None) => Ok(u.to_owned()),
            }
        });
        let mut headers = Vec::new();
        if let Some(node) = self.field(map, path, "headers", false) {
            let hpath = join(path, "headers");
            if let Some(h) = self.expect_mapping(node, &hpath) {
                for (k, v) in h.iter() {
                    let key = k.as_str().to_owned();
                    let field = join(&hpath, &key);
                    let Some(v) = self.expect_scalar(v, &field) else {
                        ok = false;
                        continue;
                    };
                    let value = v.as_str().to_owned();
                    let problem = match secret::references(&value) {
                        Err(e) => Some(e.to_string()),
                        Ok(refs) if refs.is_empty() && credential_header(&key) => Some(format!(
                            "`{key}` carries a credential: give it as a secret reference (`Bearer ${{CREDIT_TOKEN}}`), never written out"
                        )),
                        Ok(_) => None,
                    };
                    if let Some(problem) = problem {
                        self.error(v.span(), &field, problem);
                        ok = false;
                    }
                    headers.push((key, value));
                }
            } else {
                ok = false;
            }
        }
        let keys: Vec<Located<String>> = match self.field(map, path, "keys", true) {
            Some(node) => self
                .text_list(node, &join(path, "keys"))
                .unwrap_or_default()
                .into_iter()
                .map(|(i, k)| {
                    self.locate(
                        k.as_str().to_owned(),
                        k.span(),
                        &index(&join(path, "keys"), i),
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        ok &= !keys.is_empty();
        let fields = self.source_fields(map, path);
        let duration = |d: &mut Self, key: &str, default: Duration, zero_ok: bool| {
            d.parsed(map, path, key, false, |t| match parse_duration(t) {
                Ok(v) if v.is_zero() && !zero_ok => Err(format!("`{key}` must be more than 0")),
                other => other,
            })
            .unwrap_or(default)
        };
        let timeout = duration(self, "timeout", Duration::from_millis(100), false);
        let cache_ttl = duration(self, "cache_ttl", Duration::ZERO, true);
        let count = |d: &mut Self, key: &str, default: u32, min: u32, max: u32| {
            d.parsed(map, path, key, false, |t| match t.parse::<u32>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(format!(
                    "`{t}` is not a count: expected a whole number from {min} to {max}"
                )),
            })
            .unwrap_or(default)
        };
        let max_concurrency = count(self, "max_concurrency", 64, 1, 10_000);
        let retries = count(self, "retries", 0, 0, 10);
        let (mut breaker_failures, mut breaker_open_for) = (5, Duration::from_secs(10));
        if let Some(node) = self.field(map, path, "breaker", false) {
            let bpath = join(path, "breaker");
            if let Some(b) = self.expect_mapping(node, &bpath) {
                self.check_fields(b, &bpath, &["failures", "open_for"]);
                breaker_failures = self
                    .parsed(b, &bpath, "failures", false, |t| match t.parse::<u32>() {
                        Ok(n) if (1..=1000).contains(&n) => Ok(n),
                        _ => Err(format!(
                            "`{t}` is not a count: expected a whole number from 1 to 1000"
                        )),
                    })
                    .unwrap_or(breaker_failures);
                breaker_open_for = self
                    .parsed(b, &bpath, "open_for", false, |t| match parse_duration(t) {
                        Ok(v) if v.is_zero() => Err("`open_for` must be more than 0".to_owned()),
                        other => other,
                    })
                    .unwrap_or(breaker_open_for);
            }
        }
        let name = name?;
        let source = OnDemandSource {
            name: name.value.clone(),
            url: url?,
            headers,
            keys: keys.iter().map(|k| k.value.clone()).collect(),
            fields: fields?,
            timeout,
            max_concurrency,
            retries,
            breaker_failures,
            breaker_open_for,
            cache_ttl,
        };
        ok.then_some((source, name, keys))
    }

    fn source_fields(&mut self, map: &MarkedMappingNode, path: &str) -> Option<Vec<SourceField>> {
        let fpath = join(path, "fields");
        let items = self
            .field(map, path, "fields", true)
            .and_then(|node| self.expect_sequence(node, &fpath))?;
        if items.is_empty() {
            self.error(items.span(), &fpath, "a source needs at least one field");
            return None;
        }
        let mut out = Some(Vec::new());
        let mut seen = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let path = index(&fpath, i);
            let Some(m) = self.expect_mapping(item, &path) else {
                out = None;
                continue;
            };
            self.check_fields(m, &path, &["name", "type", "fallback"]);
            let name = self.text(m, &path, "name", true);
            let value_type = self.parsed(m, &path, "type", true, ValueType::from_str);
            let fallback = match (value_type, self.text(m, &path, "fallback", false)) {
                (Some(t), Some(f)) => {
                    let json = serde_json::from_str(f.as_str())
                        .unwrap_or_else(|_| serde_json::Value::String(f.as_str().to_owned()));
                    match crate::value::Value::from_json(t, &json) {
                        Ok(v) => Some(Some(v)),
                        Err(e) => {
                            self.error(f.span(), &join(&path, "fallback"), format!("{e}"));
                            None
                        }
                    }
                }
                (_, _) => Some(None),
            };
            let (Some(name), Some(value_type), Some(fallback)) = (name, value_type, fallback)
            else {
                out = None;
                continue;
            };
            self.check_name(name, &join(&path, "name"));
            if !seen.insert(name.as_str().to_owned()) {
                self.error(
                    name.span(),
                    &join(&path, "name"),
                    format!("duplicate field `{}`", name.as_str()),
                );
                out = None;
                continue;
            }
            if let Some(list) = &mut out {
                list.push(SourceField {
                    name: name.as_str().to_owned(),
                    value_type,
                    fallback,
                });
            }
        }
        out
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

/// Whether a header named `name` carries a credential, which the spec may only refer to.
fn credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "authorization"
        || name == "cookie"
        || ["token", "key", "secret", "password", "auth"]
            .iter()
            .any(|w| name.contains(w))
}

/// Where each expression was written: (on-demand group or ingestion, its name, the feature)
/// -> the text.
pub(super) type WrittenExpressions = BTreeMap<(SpecKind, String, String), Located<String>>;

impl super::Drafts {
    pub(super) fn expressions(&self) -> WrittenExpressions {
        let mut out = BTreeMap::new();
        for group in &self.on_demand {
            for feature in &group.features {
                if let Some(expr) = &feature.expr {
                    out.insert(
                        (
                            SpecKind::OnDemandGroup,
                            group.head.name.clone(),
                            feature.name.clone(),
                        ),
                        expr.clone(),
                    );
                }
            }
        }
        for ingestion in &self.ingestions {
            for mapping in &ingestion.features {
                if let Some(expr) = &mapping.written_expr {
                    out.insert(
                        (
                            SpecKind::Ingestion,
                            ingestion.head.name.clone(),
                            mapping.feature.value.clone(),
                        ),
                        expr.clone(),
                    );
                }
            }
        }
        out
    }
}

/// What an expression may read in `repo`: its group's request fields, every entity key field,
/// the features of every stored group (see [`group_inputs`]), of every other on-demand group
/// (qualified by the group's name), and of its group's external sources.
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
    for other in repo.on_demand.iter().filter(|o| o.name != group.name) {
        inputs.extend(
            other
                .features
                .iter()
                .map(|f| ExpressionInput::qualified(&other.name, &f.name, f.value_type)),
        );
    }
    for source in &group.sources {
        inputs.extend(
            source
                .fields
                .iter()
                .map(|f| ExpressionInput::qualified(&source.name, &f.name, f.value_type)),
        );
    }
    inputs
}

/// Each cycle of `reads` (group -> the groups it reads) once, as the path `a -> b -> a`
/// starting at its smallest name.
fn cycles<'a>(reads: &BTreeMap<&'a str, BTreeMap<&'a str, &'a str>>) -> Vec<Vec<&'a str>> {
    fn visit<'a>(
        at: &'a str,
        reads: &BTreeMap<&'a str, BTreeMap<&'a str, &'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        found: &mut Vec<Vec<&'a str>>,
    ) {
        if let Some(start) = path.iter().position(|p| *p == at) {
            let mut cycle = path[start..].to_vec();
            let smallest = (0..cycle.len()).min_by_key(|&i| cycle[i]).unwrap_or(0);
            cycle.rotate_left(smallest);
            cycle.push(cycle[0]);
            if !found.contains(&cycle) {
                found.push(cycle);
            }
            return;
        }
        if done.contains(at) {
            return;
        }
        path.push(at);
        for next in reads.get(at).into_iter().flat_map(|r| r.keys()) {
            visit(next, reads, path, done, found);
        }
        path.pop();
        done.insert(at);
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for start in reads.keys() {
        visit(start, reads, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

/// Every on-demand feature's expression checked by `check`, errors at the expression's line.
pub(super) fn check_expressions(
    repo: &FeatureRepo,
    written: &WrittenExpressions,
    check: &dyn ExpressionCheck,
) -> Vec<SpecError> {
    let mut errors = Vec::new();
    let mut report = |kind: SpecKind, owner: &str, feature: &str, message: String| {
        if let Some(at) = written.get(&(kind, owner.to_owned(), feature.to_owned())) {
            errors.push(SpecError {
                file: at.origin.file.clone(),
                line: at.origin.line,
                field: at.field.clone(),
                message,
            });
        }
    };
    // Which on-demand groups each one reads, and the first feature reading each.
    let mut reads: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for group in &repo.on_demand {
        let inputs = expression_inputs(repo, group);
        for feature in &group.features {
            match check.check(&feature.expr, &inputs, feature.value_type) {
                Ok(read) => {
                    for input in read.iter().filter_map(|&i| inputs.get(i)) {
                        let Some(q) = &input.qualifier else { continue };
                        if let Some(other) = repo.on_demand.iter().find(|o| o.name == *q) {
                            reads
                                .entry(group.name.as_str())
                                .or_default()
                                .entry(other.name.as_str())
                                .or_insert(feature.name.as_str());
                        }
                    }
                }
                Err(message) => {
                    report(SpecKind::OnDemandGroup, &group.name, &feature.name, message)
                }
            }
        }
    }
    for cycle in cycles(&reads) {
        let (first, second) = (cycle[0], cycle[1]);
        let Some(feature) = reads.get(first).and_then(|r| r.get(second)) else {
            continue;
        };
        report(
            SpecKind::OnDemandGroup,
            first,
            feature,
            format!(
                "on-demand groups cannot read each other in a cycle: {}",
                cycle.join(" -> ")
            ),
        );
    }
    for ingestion in &repo.ingestions {
        let Some(group) = repo.group(&ingestion.into) else {
            continue;
        };
        let mut inputs = None;
        for mapping in &ingestion.features {
            let FeatureExpr::Expression(expr) = &mapping.expr else {
                continue;
            };
            let Some(position) = group.feature_index(&mapping.feature) else {
                continue;
            };
            let feature = &group.features[position];
            let inputs = inputs.get_or_insert_with(|| {
                write_inputs(group, ingestion)
                    .into_iter()
                    .map(|(input, _)| input)
                    .collect::<Vec<_>>()
            });
            if let Err(message) = check.check(expr, inputs, feature.value_type) {
                report(
                    SpecKind::Ingestion,
                    &ingestion.name,
                    &mapping.feature,
                    message,
                );
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
                "repo.yaml:15: retention: unknown field `retention`; expected one of kind, name, description, type, request, features, sources",
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
        ) -> Result<Vec<usize>, String> {
            if expr.contains("bad") {
                Err(format!("refused among {} inputs", inputs.len()))
            } else {
                // Reads every input whose qualified name the text holds.
                Ok((0..inputs.len())
                    .filter(|&i| expr.contains(&inputs[i].to_string()))
                    .collect())
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

    #[test]
    fn write_time_expressions_are_read_and_checked_against_the_ingestion_fields() {
        let text = format!(
            "{USER}---\n{CLICKS}---\nkind: Ingestion\nname: c\n\
             stream: {{ topic: t, format: json }}\ninto: clicks\nkey: $.user_id\n\
             features:\n  n: $.n\n  last_at: {{ expr: bad }}\n"
        );
        let repo = parse_repo(&[("r.yaml".into(), text.clone())]).unwrap();
        let ingestion = &repo.ingestions[0];
        assert_eq!(
            ingestion.features[1].expr,
            FeatureExpr::Expression("bad".into())
        );
        // `n` by its name and qualified, and the event time both ways.
        let group = repo.group("clicks").unwrap();
        let inputs: Vec<String> = write_inputs(group, ingestion)
            .iter()
            .map(|(i, _)| i.to_string())
            .collect();
        assert_eq!(inputs, ["n", "clicks.n", "event_time", "clicks.event_time"]);
        let err = parse_repo_with(&[("r.yaml".into(), text)], &Refuse).unwrap_err();
        let messages: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            ["r.yaml:18: features.last_at.expr: refused among 4 inputs"]
        );

        let extra = format!(
            "{USER}---\n{CLICKS}---\nkind: Ingestion\nname: c\n\
             stream: {{ topic: t, format: json }}\ninto: clicks\nkey: $.user_id\n\
             features:\n  n: {{ expr: '1', window: 1m }}\n  last_at: {{ expr: '' }}\n"
        );
        let errors = errors_of(&extra);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("features.n") && e.contains("window")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("features.last_at.expr: missing required field")),
            "{errors:?}"
        );
    }

    #[test]
    fn on_demand_groups_read_each_other_but_not_in_a_cycle() {
        let group = |name: &str, expr: &str| {
            format!(
                "kind: FeatureGroup\nname: {name}\ntype: on_demand\nfeatures:\n  - {{ name: x, type: int64, expr: '{expr}' }}\n"
            )
        };
        let text = format!(
            "{USER}---\n{CLICKS}---\n{}---\n{}---\n{}",
            group("first", "clicks.n + 1"),
            group("second", "first.x * 2"),
            group("third", "second.x + first.x")
        );
        let repo = parse_repo_with(&[("r.yaml".into(), text)], &Refuse).unwrap();
        let third = repo.on_demand.iter().find(|g| g.name == "third").unwrap();
        let names: Vec<String> = expression_inputs(&repo, third)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(names.contains(&"first.x".to_owned()), "{names:?}");
        assert!(!names.contains(&"third.x".to_owned()), "{names:?}");

        let text = format!(
            "{USER}---\n{CLICKS}---\n{}---\n{}---\n{}",
            group("first", "third.x + 1"),
            group("second", "first.x * 2"),
            group("third", "second.x")
        );
        let err = parse_repo_with(&[("r.yaml".into(), text)], &Refuse).unwrap_err();
        let messages: Vec<String> = err.0.iter().map(ToString::to_string).collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(
            messages[0].contains(
                "on-demand groups cannot read each other in a cycle: first -> third -> second -> first"
            ),
            "{messages:?}"
        );
    }
}
