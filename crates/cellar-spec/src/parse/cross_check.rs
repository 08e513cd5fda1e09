//! The cross-checks between drafts: duplicate names, references between specs, key counts,
//! aggregate types and the `depends_on` graph.

use std::collections::{BTreeMap, BTreeSet};

use super::mapping::aggregate_name;
use super::suggest::suggest;
use super::{Drafts, GroupDraft, Head, IngestionDraft, Located, SpecError};
use crate::aggregate;
use crate::model::{AggregateFunction, FeatureExpr, GroupKind, IngestionSource, Origin};
use crate::repo::SpecKind;
use crate::value::{ScalarType, ValueType};

fn error_at(origin: &Origin, field: &str, message: String) -> SpecError {
    SpecError {
        file: origin.file.clone(),
        line: origin.line,
        field: field.to_owned(),
        message,
    }
}

fn unknown(what: &str, name: &str, known: &BTreeMap<&str, usize>) -> String {
    match suggest(name, known.keys().copied()) {
        Some(s) => format!("unknown {what} `{name}`; did you mean `{s}`?"),
        None => format!("unknown {what} `{name}`"),
    }
}

/// Reports second declarations of a name and returns the first one of each name by index.
fn first_by_name<'d>(
    kind: SpecKind,
    heads: impl Iterator<Item = &'d Head>,
    errors: &mut Vec<SpecError>,
) -> BTreeMap<&'d str, usize> {
    let mut first: BTreeMap<&str, (usize, &Origin)> = BTreeMap::new();
    for (i, head) in heads.enumerate() {
        match first.get(head.name.as_str()) {
            Some((_, origin)) => errors.push(error_at(
                &head.origin,
                "name",
                format!(
                    "duplicate {kind} `{}`: already declared at {}:{}",
                    head.name, origin.file, origin.line
                ),
            )),
            None => {
                first.insert(&head.name, (i, &head.origin));
            }
        }
    }
    first.into_iter().map(|(k, (i, _))| (k, i)).collect()
}

/// The largest state kept for one aggregate feature: bytes, buckets, and the mapping keeping
/// it.
type FeatureState<'d> = (usize, u64, &'d Located<String>);

fn no_such_feature(group: &GroupDraft, feature: &str) -> String {
    match suggest(feature, group.features.iter().map(|f| f.name.as_str())) {
        Some(s) => format!(
            "group `{}` has no feature `{feature}`; did you mean `{s}`?",
            group.head.name
        ),
        None => format!("group `{}` has no feature `{feature}`", group.head.name),
    }
}

impl Drafts {
    pub(super) fn cross_check(&self, errors: &mut Vec<SpecError>) {
        let entities = first_by_name(
            SpecKind::Entity,
            self.entities.iter().map(|d| &d.head),
            errors,
        );
        let groups = first_by_name(
            SpecKind::FeatureGroup,
            self.groups.iter().map(|d| &d.head),
            errors,
        );
        let ingestions = first_by_name(
            SpecKind::Ingestion,
            self.ingestions.iter().map(|d| &d.head),
            errors,
        );
        first_by_name(
            SpecKind::FeatureService,
            self.services.iter().map(|d| &d.head),
            errors,
        );
        let on_demand = self.check_on_demand(&groups, errors);

        for group in &self.groups {
            // A push naming a group writes that group: a push source of another group's name
            // could never be reached.
            for source in &group.push_sources {
                if *source != group.head.name && groups.contains_key(source.as_str()) {
                    errors.push(error_at(
                        &group.head.origin,
                        "push_sources",
                        format!(
                            "push source `{source}` has the name of feature group `{source}`, \
                             which a push naming it writes: rename the push source"
                        ),
                    ));
                }
            }
            if let Some(entity) = &group.entity {
                if !entities.contains_key(entity.value.as_str()) {
                    errors.push(error_at(
                        &entity.origin,
                        &entity.field,
                        unknown("entity", &entity.value, &entities),
                    ));
                }
            }
        }

        for ingestion in &self.ingestions {
            self.check_ingestion(ingestion, &entities, &groups, &ingestions, errors);
        }
        self.check_dependency_cycles(&ingestions, errors);
        self.check_aggregate_state(&groups, errors);

        for service in &self.services {
            for selection in &service.selections {
                let (group_name, feature) = &selection.value;
                if let Some(&g) = on_demand.get(group_name.as_str()) {
                    let group = &self.on_demand[g];
                    if let Some(feature) = feature {
                        if !group.features.iter().any(|f| &f.name == feature) {
                            let names = group.features.iter().map(|f| f.name.as_str());
                            let message = match suggest(feature, names) {
                                Some(s) => format!(
                                    "group `{group_name}` has no feature `{feature}`; did you mean `{s}`?"
                                ),
                                None => format!("group `{group_name}` has no feature `{feature}`"),
                            };
                            errors.push(error_at(&selection.origin, &selection.field, message));
                        }
                    }
                    continue;
                }
                let Some(&g) = groups.get(group_name.as_str()) else {
                    errors.push(error_at(
                        &selection.origin,
                        &selection.field,
                        unknown("feature group", group_name, &groups),
                    ));
                    continue;
                };
                let group = &self.groups[g];
                if let Some(feature) = feature {
                    if !group.features.iter().any(|f| &f.name == feature) {
                        errors.push(error_at(
                            &selection.origin,
                            &selection.field,
                            no_such_feature(group, feature),
                        ));
                    }
                }
            }
        }
    }

    /// On-demand groups: names unique among all groups, request fields that do not shadow
    /// entity key fields. Returns them by name.
    fn check_on_demand(
        &self,
        groups: &BTreeMap<&str, usize>,
        errors: &mut Vec<SpecError>,
    ) -> BTreeMap<&str, usize> {
        let on_demand = first_by_name(
            SpecKind::FeatureGroup,
            self.on_demand.iter().map(|d| &d.head),
            errors,
        );
        for (name, &i) in &on_demand {
            if let Some(&g) = groups.get(name) {
                let (head, stored) = (&self.on_demand[i].head, &self.groups[g].head);
                errors.push(error_at(
                    &head.origin,
                    "name",
                    format!(
                        "duplicate FeatureGroup `{name}`: already declared at {}:{}",
                        stored.origin.file, stored.origin.line
                    ),
                ));
            }
        }
        let keys: BTreeSet<&str> = self
            .entities
            .iter()
            .flat_map(|e| e.keys.iter().flatten())
            .map(|k| k.name.as_str())
            .collect();
        for draft in &self.on_demand {
            for (source, source_keys) in &draft.source_keys {
                if groups.contains_key(source.value.as_str()) {
                    errors.push(error_at(
                        &source.origin,
                        &source.field,
                        format!(
                            "`{}` is a feature group's name: expressions could not tell `{}.x` apart",
                            source.value, source.value
                        ),
                    ));
                }
                for key in source_keys {
                    if !keys.contains(key.value.as_str()) {
                        let known = keys.iter().copied().collect::<Vec<_>>().join(", ");
                        errors.push(error_at(
                            &key.origin,
                            &key.field,
                            format!(
                                "`{}` is not an entity key field; the repo's are: {known}",
                                key.value
                            ),
                        ));
                    }
                }
            }
            for field in &draft.request {
                if keys.contains(field.name.value.as_str()) {
                    errors.push(error_at(
                        &field.name.origin,
                        &field.name.field,
                        format!(
                            "`{}` is an entity key field: expressions read it without declaring it",
                            field.name.value
                        ),
                    ));
                }
            }
        }
        on_demand
    }

    fn check_ingestion(
        &self,
        ingestion: &IngestionDraft,
        entities: &BTreeMap<&str, usize>,
        groups: &BTreeMap<&str, usize>,
        ingestions: &BTreeMap<&str, usize>,
        errors: &mut Vec<SpecError>,
    ) {
        for dep in &ingestion.depends_on {
            match ingestions.get(dep.value.as_str()) {
                None => errors.push(error_at(
                    &dep.origin,
                    &dep.field,
                    unknown("ingestion", &dep.value, ingestions),
                )),
                Some(&i) => {
                    if matches!(self.ingestions[i].source, Some(IngestionSource::Stream(_))) {
                        errors.push(error_at(
                            &dep.origin,
                            &dep.field,
                            format!(
                                "`{}` is a stream ingestion; `depends_on` names batch ingestions",
                                dep.value
                            ),
                        ));
                    }
                }
            }
        }
        let Some(into) = &ingestion.into else { return };
        let Some(&g) = groups.get(into.value.as_str()) else {
            let message = if self.on_demand.iter().any(|d| d.head.name == into.value) {
                format!(
                    "`{}` is an on-demand group: its features are computed for each request, never ingested",
                    into.value
                )
            } else {
                unknown("feature group", &into.value, groups)
            };
            errors.push(error_at(&into.origin, &into.field, message));
            return;
        };
        let group = &self.groups[g];

        let entity = group
            .entity
            .as_ref()
            .and_then(|e| entities.get(e.value.as_str()))
            .map(|&e| &self.entities[e]);
        if let (Some(entity), Some(keys), Some(key)) =
            (entity, entity.and_then(|e| e.keys.as_ref()), &ingestion.key)
        {
            if keys.len() != key.value.len() {
                let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                errors.push(error_at(
                    &key.origin,
                    &key.field,
                    format!(
                        "group `{}` is keyed by entity `{}`, which has {} key field(s) ({}); got {} key expression(s)",
                        group.head.name,
                        entity.head.name,
                        keys.len(),
                        names.join(", "),
                        key.value.len()
                    ),
                ));
            }
        }

        for mapping in &ingestion.features {
            let feature = &mapping.feature;
            let Some(declared) = group.features.iter().find(|f| f.name == feature.value) else {
                errors.push(error_at(
                    &feature.origin,
                    &feature.field,
                    no_such_feature(group, &feature.value),
                ));
                continue;
            };
            let Some(function) = mapping.aggregate else {
                continue;
            };
            if group.kind == Some(GroupKind::Timeseries) {
                errors.push(error_at(
                    &feature.origin,
                    &feature.field,
                    format!(
                        "aggregates write into attribute groups; `{}` is a timeseries group",
                        group.head.name
                    ),
                ));
                continue;
            }
            let Some(value_type) = declared.value_type else {
                continue;
            };
            let int64 = ValueType::Scalar(ScalarType::Int64);
            let float64 = ValueType::Scalar(ScalarType::Float64);
            let fits = match function {
                AggregateFunction::Count | AggregateFunction::DistinctCount => value_type == int64,
                AggregateFunction::Sum | AggregateFunction::Min | AggregateFunction::Max => {
                    value_type == int64 || value_type == float64
                }
            };
            if !fits {
                let expected = match function {
                    AggregateFunction::Count | AggregateFunction::DistinctCount => "int64",
                    _ => "int64 or float64",
                };
                errors.push(error_at(
                    &feature.origin,
                    &feature.field,
                    format!(
                        "`{}` produces {expected}, but feature `{}` of `{}` is {value_type}",
                        aggregate_name(function),
                        feature.value,
                        group.head.name
                    ),
                ));
            }
        }
    }

    /// Reports each attribute group whose windowed aggregates could keep more state than its
    /// `max_record_bytes`: a busy entity's record would be refused, and with it every update of
    /// the entity's features. Reported at the group's largest aggregate.
    fn check_aggregate_state(&self, groups: &BTreeMap<&str, usize>, errors: &mut Vec<SpecError>) {
        // Per group, per feature: the largest state any ingestion keeps for it, and where.
        let mut states: BTreeMap<usize, BTreeMap<&str, FeatureState>> = BTreeMap::new();
        for ingestion in &self.ingestions {
            let Some(&g) = ingestion
                .into
                .as_ref()
                .and_then(|i| groups.get(i.value.as_str()))
            else {
                continue;
            };
            let group = &self.groups[g];
            if group.kind == Some(GroupKind::Timeseries) {
                continue;
            }
            for mapping in &ingestion.features {
                let Some(FeatureExpr::Aggregate(agg)) = &mapping.expr else {
                    continue;
                };
                if !group
                    .features
                    .iter()
                    .any(|f| f.name == mapping.feature.value)
                {
                    continue;
                }
                let buckets = aggregate::buckets(agg.window, agg.slide);
                let bytes = aggregate::worst_state_bytes(agg.function, buckets);
                let slot = states
                    .entry(g)
                    .or_default()
                    .entry(mapping.feature.value.as_str())
                    .or_insert((0, 0, &mapping.feature));
                if bytes > slot.0 {
                    *slot = (bytes, buckets, &mapping.feature);
                }
            }
        }
        for (g, features) in states {
            let group = &self.groups[g];
            let total: usize = features.values().map(|(bytes, _, _)| bytes).sum();
            if total <= group.max_record_bytes {
                continue;
            }
            let Some((bytes, buckets, at)) = features.values().max_by_key(|(bytes, _, _)| *bytes)
            else {
                continue;
            };
            errors.push(error_at(
                &at.origin,
                &at.field,
                format!(
                    "the windowed aggregates of group `{}` may keep {total} bytes per entity \
                     (`{}` alone {bytes}, over {buckets} bucket(s)), over its max_record_bytes \
                     of {}: slide by longer steps, or raise max_record_bytes",
                    group.head.name, at.value, group.max_record_bytes
                ),
            ));
        }
    }

    /// Reports each cycle of batch `depends_on` once, as `a -> b -> a`, at the first declared
    /// member of the cycle.
    fn check_dependency_cycles(
        &self,
        ingestions: &BTreeMap<&str, usize>,
        errors: &mut Vec<SpecError>,
    ) {
        // Edges between first declarations only; duplicates were reported already.
        let edges: Vec<Vec<usize>> = self
            .ingestions
            .iter()
            .map(|d| {
                d.depends_on
                    .iter()
                    .filter_map(|dep| ingestions.get(dep.value.as_str()).copied())
                    .collect()
            })
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let mut mark = vec![Mark::New; edges.len()];
        let mut cycles: BTreeSet<Vec<usize>> = BTreeSet::new();
        // Iterative depth-first search: a long chain of dependencies must not exhaust the stack.
        for &start in ingestions.values() {
            if mark[start] != Mark::New {
                continue;
            }
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            mark[start] = Mark::OnPath;
            while let Some(&mut (node, ref mut next)) = path.last_mut() {
                if let Some(&to) = edges[node].get(*next) {
                    *next += 1;
                    match mark[to] {
                        Mark::New => {
                            mark[to] = Mark::OnPath;
                            path.push((to, 0));
                        }
                        Mark::OnPath => {
                            let from = path.iter().position(|(n, _)| *n == to).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                path[from..].iter().map(|(n, _)| *n).collect();
                            // One rotation per cycle, starting at its first declared member.
                            let min = cycle
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, n)| **n)
                                .map(|(i, _)| i)
                                .unwrap_or(0);
                            cycle.rotate_left(min);
                            cycles.insert(cycle);
                        }
                        Mark::Done => {}
                    }
                } else {
                    mark[node] = Mark::Done;
                    path.pop();
                }
            }
        }
        for cycle in cycles {
            let names: Vec<&str> = cycle
                .iter()
                .map(|&i| self.ingestions[i].head.name.as_str())
                .collect();
            let first = &self.ingestions[cycle[0]];
            let next = names.get(1).copied().unwrap_or(names[0]);
            let at = first
                .depends_on
                .iter()
                .find(|d| d.value == next)
                .map(|d| (&d.origin, d.field.as_str()))
                .unwrap_or((&first.head.origin, "batch.depends_on"));
            errors.push(error_at(
                at.0,
                at.1,
                format!("dependency cycle: {} -> {}", names.join(" -> "), names[0]),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::parse::tests::{errors_of, USER};

    #[test]
    fn a_push_source_may_not_take_another_groups_name() {
        let repo = |sources: &str| {
            format!(
                "kind: Entity\nname: user\nkeys: [{{ name: user_id, type: string }}]\n---\n\
                 kind: FeatureGroup\nname: a\nentity: user\ntype: attribute\n\
                 features: [{{ name: x, type: int64 }}]\npush_sources: {sources}\n---\n\
                 kind: FeatureGroup\nname: b\nentity: user\ntype: attribute\n\
                 features: [{{ name: y, type: int64 }}]\npush_sources: [shared]\n"
            )
        };
        let parsed = crate::parse_repo(&[("r.yaml".into(), repo("[shared, a_push]"))]).unwrap();
        assert_eq!(parsed.groups[0].push_sources, ["shared", "a_push"]);
        let errors = crate::parse_repo(&[("r.yaml".into(), repo("[b]"))]).unwrap_err();
        assert!(
            errors
                .to_string()
                .contains("push source `b` has the name of feature group `b`"),
            "{errors}"
        );
    }

    #[test]
    fn aggregate_state_must_fit_the_group_record_limit() {
        let group = |max: &str| {
            format!(
                "{USER}---\nkind: FeatureGroup\nname: a\nentity: user\ntype: attribute\n\
                 {max}features: [{{ name: n, type: int64 }}, {{ name: d, type: int64 }}]\n---\n\
                 kind: Ingestion\nname: i\nstream: {{ topic: t }}\ninto: a\nkey: $.u\nfeatures:\n  \
                 n: {{ aggregate: count, window: 1d, slide: 1m }}\n  \
                 d: {{ aggregate: distinct_count, of: $.v, window: 1h }}\n"
            )
        };
        assert_eq!(
            errors_of(&group("")),
            vec![
                "repo.yaml:17: features.n: the windowed aggregates of group `a` may keep 31855 \
                 bytes per entity (`n` alone 30273, over 1440 bucket(s)), over its \
                 max_record_bytes of 8192: slide by longer steps, or raise max_record_bytes",
            ]
        );
        assert!(errors_of(&group("max_record_bytes: 40000\n")).is_empty());
        // A distinct count's sketches shrink with its buckets, to a floor.
        let sliding = group("").replace("window: 1d, slide: 1m", "window: 1h, slide: 5m");
        assert!(errors_of(&sliding).is_empty());
    }

    #[test]
    fn aggregates_only_into_attribute_groups_of_numeric_features() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: ts\nentity: user\ntype: timeseries\n\
             features: [{{ name: n, type: int64 }}]\n---\nkind: FeatureGroup\nname: a\n\
             entity: user\ntype: attribute\nfeatures: [{{ name: s, type: string }}, \
             {{ name: x, type: float64 }}]\n---\nkind: Ingestion\nname: i\nstream: {{ topic: t }}\n\
             into: ts\nkey: $.u\nfeatures: {{ n: {{ aggregate: count, window: 1h }} }}\n---\n\
             kind: Ingestion\nname: j\nstream: {{ topic: t }}\ninto: a\nkey: $.u\nfeatures:\n  \
             s: {{ aggregate: min, of: $.v, window: 1h }}\n  \
             x: {{ aggregate: distinct_count, of: $.v, window: 1h }}\n"
        );
        assert_eq!(
            errors_of(&text),
            vec![
                "repo.yaml:22: features.n: aggregates write into attribute groups; `ts` is a \
                 timeseries group",
                "repo.yaml:30: features.s: `min` produces int64 or float64, but feature `s` of \
                 `a` is string",
                "repo.yaml:31: features.x: `distinct_count` produces int64, but feature `x` of \
                 `a` is float64",
            ]
        );
    }
}
