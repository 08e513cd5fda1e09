//! Plans: what applying a repo over the registry's current one would do.

use std::collections::BTreeMap;
use std::fmt::Display;

use serde::{Deserialize, Serialize};

use crate::model::{
    Entity, FeatureGroup, FeatureService, Ingestion, OnDemandGroup, OnDemandSource, Retention,
    ServingPolicy,
};
use crate::parse::format_duration;
use crate::repo::{FeatureRepo, SpecKind};

/// The changes from one repo to another.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    pub changes: Vec<Change>,
}

impl Plan {
    /// Whether applying the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether any change breaks stored data or readers.
    pub fn is_breaking(&self) -> bool {
        self.changes.iter().any(Change::is_breaking)
    }

    /// What breaks, one line per problem, each naming its spec.
    pub fn breaking(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.changes {
            match &c.action {
                ChangeAction::Modify { breaking, .. } => out.extend(
                    breaking
                        .iter()
                        .map(|b| format!("{} `{}`: {b}", c.kind, c.name)),
                ),
                ChangeAction::Remove if c.is_breaking() => {
                    out.push(format!("{} `{}` removed: {REMOVED_GROUP}", c.kind, c.name))
                }
                _ => {}
            }
        }
        out
    }
}

/// Why removing a group breaks: said by `plan` and by a refused apply.
pub const REMOVED_GROUP: &str =
    "its stored records are no longer served, and a group created again under this name \
     starts empty";

impl Change {
    /// Whether this change breaks stored data or readers: a breaking modification, or the
    /// removal of a feature group (which may hold data).
    pub fn is_breaking(&self) -> bool {
        match &self.action {
            ChangeAction::Modify { breaking, .. } => !breaking.is_empty(),
            ChangeAction::Remove => self.kind == SpecKind::FeatureGroup,
            ChangeAction::Add => false,
        }
    }
}

/// One spec added, changed or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub kind: SpecKind,
    pub name: String,
    pub action: ChangeAction,
}

/// What happens to one spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ChangeAction {
    Add,
    /// `details` describe every difference; `breaking` names the ones that break stored data
    /// or readers (a changed feature type, a removed or reordered feature, a changed key).
    Modify {
        details: Vec<String>,
        breaking: Vec<String>,
    },
    Remove,
}

/// Diffs `current` (applied) against `desired` (on disk).
///
/// Changes come sorted by kind, then name. Where specs were declared (`origins`) is not part
/// of what is compared.
pub fn plan(current: &FeatureRepo, desired: &FeatureRepo) -> Plan {
    let mut changes = Vec::new();
    diff_kind(
        SpecKind::Entity,
        &current.entities,
        &desired.entities,
        |e| &e.name,
        diff_entity,
        &mut changes,
    );
    diff_kind(
        SpecKind::FeatureGroup,
        &current.groups,
        &desired.groups,
        |g| &g.name,
        diff_group,
        &mut changes,
    );
    diff_kind(
        SpecKind::OnDemandGroup,
        &current.on_demand,
        &desired.on_demand,
        |g| &g.name,
        diff_on_demand,
        &mut changes,
    );
    diff_kind(
        SpecKind::Ingestion,
        &current.ingestions,
        &desired.ingestions,
        |i| &i.name,
        diff_ingestion,
        &mut changes,
    );
    diff_kind(
        SpecKind::FeatureService,
        &current.services,
        &desired.services,
        |s| &s.name,
        diff_service,
        &mut changes,
    );
    Plan { changes }
}

/// What differs between two versions of one spec.
#[derive(Default)]
struct Diff {
    details: Vec<String>,
    breaking: Vec<String>,
}

impl Diff {
    fn detail(&mut self, message: String) {
        self.details.push(message);
    }

    /// A breaking difference is a detail too, so `details` alone tells the whole story.
    fn breaking(&mut self, message: String) {
        self.details.push(message.clone());
        self.breaking.push(message);
    }

    fn field<T: PartialEq + ?Sized>(
        &mut self,
        what: &str,
        old: &T,
        new: &T,
        show: impl Fn(&T) -> String,
    ) {
        if old != new {
            self.detail(format!(
                "{what} changed from {} to {}",
                show(old),
                show(new)
            ));
        }
    }
}

fn diff_kind<T: PartialEq>(
    kind: SpecKind,
    current: &[T],
    desired: &[T],
    name: impl Fn(&T) -> &String,
    diff: impl Fn(&T, &T, &mut Diff),
    changes: &mut Vec<Change>,
) {
    let current: BTreeMap<&String, &T> = current.iter().map(|s| (name(s), s)).collect();
    let desired: BTreeMap<&String, &T> = desired.iter().map(|s| (name(s), s)).collect();
    let mut names: Vec<&String> = current.keys().chain(desired.keys()).copied().collect();
    names.sort();
    names.dedup();
    for n in names {
        let action = match (current.get(n), desired.get(n)) {
            (None, Some(_)) => ChangeAction::Add,
            (Some(_), None) => ChangeAction::Remove,
            (Some(old), Some(new)) if old != new => {
                let mut d = Diff::default();
                diff(old, new, &mut d);
                if d.details.is_empty() {
                    // Every field is compared below; this is a safety net for one added to the
                    // model and not to the diff, so that a change is never silently dropped.
                    d.detail("changed".into());
                }
                ChangeAction::Modify {
                    details: d.details,
                    breaking: d.breaking,
                }
            }
            _ => continue,
        };
        changes.push(Change {
            kind,
            name: n.clone(),
            action,
        });
    }
}

fn quoted(s: &String) -> String {
    format!("`{s}`")
}

fn optional<T: Display>(v: &Option<T>) -> String {
    match v {
        Some(v) => format!("`{v}`"),
        None => "none".into(),
    }
}

fn debug_lower<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}").to_lowercase()
}

fn diff_entity(old: &Entity, new: &Entity, d: &mut Diff) {
    if old.keys != new.keys {
        let show = |e: &Entity| {
            e.keys
                .iter()
                .map(|k| format!("{}: {}", k.name, debug_lower(&k.key_type)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        d.breaking(format!(
            "key fields changed from ({}) to ({}): stored records are keyed by the old fields",
            show(old),
            show(new)
        ));
    }
    d.field("description", &old.description, &new.description, optional);
}

fn diff_group(old: &FeatureGroup, new: &FeatureGroup, d: &mut Diff) {
    if old.kind != new.kind {
        d.breaking(format!(
            "group type changed from {} to {}: stored records have the old layout",
            debug_lower(&old.kind),
            debug_lower(&new.kind)
        ));
    }
    if old.entity != new.entity {
        d.breaking(format!(
            "entity changed from `{}` to `{}`: stored records are keyed by the old entity",
            old.entity, new.entity
        ));
    }
    if old.generation != new.generation {
        d.breaking(if new.previous.is_some() {
            format!(
                "records move to storage generation {}: it is filled by the group's \
                 ingestions, and until an entity has records there its generation {} records \
                 are served, converted to the new layout",
                new.generation, old.generation
            )
        } else {
            format!(
                "records move to storage generation {}: the group starts empty and is filled \
                 by its ingestions; records of generation {} are no longer served",
                new.generation, old.generation
            )
        });
    } else {
        diff_features(old, new, d);
    }
    diff_retention(&old.retention, &new.retention, d);
    diff_serving(&old.serving, &new.serving, d);
    d.field(
        "max_record_bytes",
        &old.max_record_bytes,
        &new.max_record_bytes,
        |v| v.to_string(),
    );
    d.field("freshness", &old.freshness, &new.freshness, |f| match f {
        Some(f) => format_duration(*f),
        None => "none".into(),
    });
    d.field("description", &old.description, &new.description, optional);
}

/// Features of two versions of one group at the same generation, positions as [`crate::evolve`]
/// keeps them.
fn diff_features(old: &FeatureGroup, new: &FeatureGroup, d: &mut Diff) {
    for i in old.live_positions() {
        let f = &old.features[i];
        match new.feature_index(&f.name) {
            None => d.breaking(format!(
                "feature `{}` ({}) removed: readers of it break; position {i} is retired",
                f.name, f.value_type
            )),
            Some(j) => {
                let g = &new.features[j];
                if f.value_type != g.value_type {
                    d.breaking(format!(
                        "feature `{}` type changed from {} to {}: readers of it break; values \
                         stored as {} are served converted where the conversion is exact, \
                         otherwise as null, until written again (position {i} retired, new \
                         position {j})",
                        f.name, f.value_type, g.value_type, f.value_type
                    ));
                } else if i != j {
                    // Not produced by `evolve`; a repo planned without it would misread data.
                    d.breaking(format!(
                        "feature `{}` moved from position {i} to {j}: positions are storage ids",
                        f.name
                    ));
                }
                if f.description != g.description {
                    d.detail(format!(
                        "feature `{}` description changed from {} to {}",
                        f.name,
                        optional(&f.description),
                        optional(&g.description)
                    ));
                }
            }
        }
    }
    for j in new.live_positions() {
        let g = &new.features[j];
        if old.feature_index(&g.name).is_none() {
            d.detail(format!(
                "feature `{}` ({}) added at position {j}",
                g.name, g.value_type
            ));
        }
    }
}

fn diff_retention(old: &Retention, new: &Retention, d: &mut Diff) {
    d.field(
        "retention.max_records",
        &old.max_records,
        &new.max_records,
        |v| match v {
            Some(n) => n.to_string(),
            None => "unlimited".into(),
        },
    );
    d.field(
        "retention.max_age",
        &old.max_age,
        &new.max_age,
        |v| match v {
            Some(age) => format_duration(*age),
            None => "unlimited".into(),
        },
    );
    d.field(
        "retention.history",
        &old.history,
        &new.history,
        |v| match v {
            Some(age) => format_duration(*age),
            None => "unlimited".into(),
        },
    );
}

fn diff_serving(old: &ServingPolicy, new: &ServingPolicy, d: &mut Diff) {
    d.field("serving.tiers", &old.tiers, &new.tiers, |t| {
        let names: Vec<String> = t.iter().map(debug_lower).collect();
        format!("[{}]", names.join(", "))
    });
    let ttl = |v: &std::time::Duration| format_duration(*v);
    d.field("serving.soft_ttl", &old.soft_ttl, &new.soft_ttl, ttl);
    d.field("serving.hard_ttl", &old.hard_ttl, &new.hard_ttl, ttl);
    d.field(
        "serving.negative_ttl",
        &old.negative_ttl,
        &new.negative_ttl,
        ttl,
    );
    d.field("serving.jitter", &old.jitter, &new.jitter, |j| {
        format!("{}%", j * 100.0)
    });
    d.field("serving.write", &old.write, &new.write, debug_lower);
    d.field(
        "serving.early_refresh",
        &old.early_refresh,
        &new.early_refresh,
        |b| b.to_string(),
    );
    d.field(
        "serving.admit_after",
        &old.admit_after,
        &new.admit_after,
        |k| k.to_string(),
    );
    d.field(
        "serving.admit_window",
        &old.admit_window,
        &new.admit_window,
        ttl,
    );
}

fn diff_ingestion(old: &Ingestion, new: &Ingestion, d: &mut Diff) {
    d.field("into", &old.into, &new.into, quoted);
    if old.source != new.source {
        let show = |s: &crate::model::IngestionSource| {
            let s = without_passwords(s);
            serde_json::to_string(&s).unwrap_or_else(|_| format!("{s:?}"))
        };
        d.detail(format!(
            "source changed from {} to {}",
            show(&old.source),
            show(&new.source)
        ));
    }
    d.field("key", &old.key, &new.key, |k| format!("[{}]", k.join(", ")));
    d.field("event_time", &old.event_time, &new.event_time, optional);
    let show_expr = |e: &crate::model::FeatureExpr| match e {
        crate::model::FeatureExpr::Field(f) => format!("`{f}`"),
        crate::model::FeatureExpr::Expression(e) => format!("expression `{e}`"),
        crate::model::FeatureExpr::Aggregate(a) => {
            let mut s = format!(
                "{} over {}",
                debug_lower(&a.function),
                format_duration(a.window)
            );
            if let Some(of) = &a.of {
                s = format!(
                    "{} of `{of}` over {}",
                    debug_lower(&a.function),
                    format_duration(a.window)
                );
            }
            if let Some(slide) = a.slide {
                s.push_str(&format!(" sliding by {}", format_duration(slide)));
            }
            s
        }
    };
    for m in &old.features {
        match new.features.iter().find(|n| n.feature == m.feature) {
            None => d.detail(format!("no longer writes feature `{}`", m.feature)),
            Some(n) if n.expr != m.expr => d.detail(format!(
                "feature `{}` changed from {} to {}",
                m.feature,
                show_expr(&m.expr),
                show_expr(&n.expr)
            )),
            Some(_) => {}
        }
    }
    for n in &new.features {
        if !old.features.iter().any(|m| m.feature == n.feature) {
            d.detail(format!(
                "now writes feature `{}` from {}",
                n.feature,
                show_expr(&n.expr)
            ));
        }
    }
}

/// `source` as a plan may show it: a PostgreSQL URL with its password hidden (a repo applied
/// before passwords had to be references may hold one).
fn without_passwords(source: &crate::model::IngestionSource) -> crate::model::IngestionSource {
    use crate::model::{BatchInput, IngestionSource};
    let mut source = source.clone();
    if let IngestionSource::Batch(batch) = &mut source {
        if let BatchInput::Postgres { url, .. } = &mut batch.input {
            *url = crate::redact::show_url(url, "(PostgreSQL URL)");
        }
    }
    source
}

/// An on-demand group stores nothing: every change takes effect on the next request, and only
/// a removed or retyped feature breaks its readers.
fn diff_on_demand(old: &OnDemandGroup, new: &OnDemandGroup, d: &mut Diff) {
    for f in &old.request {
        match new.request.iter().find(|n| n.name == f.name) {
            None => d.detail(format!("request field `{}` removed", f.name)),
            Some(n) if n.value_type != f.value_type => d.detail(format!(
                "request field `{}` type changed from {} to {}",
                f.name, f.value_type, n.value_type
            )),
            Some(_) => {}
        }
    }
    for n in &new.request {
        if !old.request.iter().any(|f| f.name == n.name) {
            d.detail(format!("request field `{}` added", n.name));
        }
    }
    for f in &old.features {
        match new.features.iter().find(|n| n.name == f.name) {
            None => d.breaking(format!("feature `{}` removed", f.name)),
            Some(n) => {
                if n.value_type != f.value_type {
                    d.breaking(format!(
                        "feature `{}` type changed from {} to {}",
                        f.name, f.value_type, n.value_type
                    ));
                }
                if n.expr != f.expr {
                    d.detail(format!(
                        "feature `{}` expression changed from `{}` to `{}`",
                        f.name, f.expr, n.expr
                    ));
                }
                d.field(
                    &format!("feature `{}` description", f.name),
                    &f.description,
                    &n.description,
                    optional,
                );
            }
        }
    }
    for n in &new.features {
        if !old.features.iter().any(|f| f.name == n.name) {
            d.detail(format!("feature `{}` added: `{}`", n.name, n.expr));
        }
    }
    let order = |g: &OnDemandGroup| {
        g.features
            .iter()
            .map(|f| f.name.clone())
            .collect::<Vec<_>>()
    };
    let (a, b) = (order(old), order(new));
    if a.iter()
        .filter(|n| b.contains(n))
        .ne(b.iter().filter(|n| a.contains(n)))
    {
        d.detail("features reordered".into());
    }
    for source in &old.sources {
        match new.sources.iter().find(|n| n.name == source.name) {
            None => d.detail(format!("source `{}` removed", source.name)),
            Some(n) => diff_source(source, n, d),
        }
    }
    for n in &new.sources {
        if !old.sources.iter().any(|s| s.name == n.name) {
            d.detail(format!("source `{}` added", n.name));
        }
    }
    d.field("description", &old.description, &new.description, optional);
}

/// What changed in one external source. Its URL and headers hold secret references, never
/// secrets, so they are shown as written.
fn diff_source(old: &OnDemandSource, new: &OnDemandSource, d: &mut Diff) {
    let what = |field: &str| format!("source `{}` {field}", old.name);
    d.field(&what("url"), &old.url, &new.url, quoted);
    let names =
        |h: &[(String, String)]| -> Vec<String> { h.iter().map(|(k, _)| k.clone()).collect() };
    let (old_names, new_names) = (names(&old.headers), names(&new.headers));
    d.field(&what("headers"), &old_names, &new_names, |n| {
        format!("[{}]", n.join(", "))
    });
    if old_names == new_names && old.headers != new.headers {
        d.detail(format!("source `{}` header values changed", old.name));
    }
    d.field(&what("keys"), &old.keys, &new.keys, |k| k.join(", "));
    let durations = [
        ("timeout", old.timeout, new.timeout),
        (
            "breaker.open_for",
            old.breaker_open_for,
            new.breaker_open_for,
        ),
        ("cache_ttl", old.cache_ttl, new.cache_ttl),
    ];
    for (field, a, b) in durations {
        d.field(&what(field), &a, &b, |v| format_duration(*v));
    }
    let counts = [
        ("max_concurrency", old.max_concurrency, new.max_concurrency),
        ("retries", old.retries, new.retries),
        (
            "breaker.failures",
            old.breaker_failures,
            new.breaker_failures,
        ),
    ];
    for (field, a, b) in counts {
        d.field(&what(field), &a, &b, u32::to_string);
    }
    for f in &old.fields {
        match new.fields.iter().find(|n| n.name == f.name) {
            None => d.detail(format!("source `{}` field `{}` removed", old.name, f.name)),
            Some(n) => {
                d.field(
                    &format!("source `{}` field `{}` type", old.name, f.name),
                    &f.value_type,
                    &n.value_type,
                    ToString::to_string,
                );
                d.field(
                    &format!("source `{}` field `{}` fallback", old.name, f.name),
                    &f.fallback,
                    &n.fallback,
                    |v| match v {
                        Some(v) => format!("{v:?}"),
                        None => "none".to_owned(),
                    },
                );
            }
        }
    }
    for n in &new.fields {
        if !old.fields.iter().any(|f| f.name == n.name) {
            d.detail(format!("source `{}` field `{}` added", old.name, n.name));
        }
    }
}

fn diff_service(old: &FeatureService, new: &FeatureService, d: &mut Diff) {
    let entries = |s: &FeatureService| -> Vec<String> {
        s.features
            .iter()
            .flat_map(|sel| match &sel.features {
                None => vec![format!("{}:*", sel.group)],
                Some(fs) => fs.iter().map(|f| format!("{}:{f}", sel.group)).collect(),
            })
            .collect()
    };
    let (old_entries, new_entries) = (entries(old), entries(new));
    for e in &old_entries {
        if !new_entries.contains(e) {
            // The model reading this service expects the feature: dropping it breaks the reader.
            d.breaking(format!("feature `{e}` removed from the service"));
        }
    }
    for e in &new_entries {
        if !old_entries.contains(e) {
            d.detail(format!("feature `{e}` added to the service"));
        }
    }
    if old_entries
        .iter()
        .filter(|e| new_entries.contains(e))
        .ne(new_entries.iter().filter(|e| old_entries.contains(e)))
    {
        d.detail("features reordered".into());
    }
    d.field("description", &old.description, &new.description, optional);
    d.field(
        "logging.sample_rate",
        &old.logging.sample_rate,
        &new.logging.sample_rate,
        |r| r.to_string(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Feature, GroupKind, Origin};
    use crate::value::ValueType;

    fn group(features: &[(&str, &str)]) -> FeatureGroup {
        FeatureGroup {
            name: "g".into(),
            entity: "user".into(),
            kind: GroupKind::Attribute,
            features: features
                .iter()
                .map(|(n, t)| Feature::new(*n, t.parse::<ValueType>().unwrap()))
                .collect(),
            retention: Retention::default(),
            serving: ServingPolicy::default(),
            max_record_bytes: 8192,
            freshness: None,
            push_sources: Vec::new(),
            description: None,
            generation: 0,
            previous: None,
        }
    }

    fn repo(groups: Vec<FeatureGroup>) -> FeatureRepo {
        FeatureRepo {
            groups,
            ..FeatureRepo::default()
        }
    }

    fn modify(p: &Plan) -> (&[String], &[String]) {
        match &p.changes[..] {
            [Change {
                action: ChangeAction::Modify { details, breaking },
                ..
            }] => (details, breaking),
            other => panic!("expected one modification, got {other:?}"),
        }
    }

    #[test]
    fn identical_repos_plan_nothing_whatever_their_origins() {
        let a = repo(vec![group(&[("x", "int64")])]);
        let mut b = a.clone();
        b.origins.insert(
            (SpecKind::FeatureGroup, "g".into()),
            Origin {
                file: "moved.yaml".into(),
                line: 9,
            },
        );
        assert!(plan(&a, &b).is_empty());
    }

    #[test]
    fn appending_a_feature_is_not_breaking() {
        let a = repo(vec![group(&[("x", "int64")])]);
        let b = repo(vec![group(&[("x", "int64"), ("y", "list<string>")])]);
        let p = plan(&a, &b);
        let (details, breaking) = modify(&p);
        assert_eq!(details, ["feature `y` (list<string>) added at position 1"]);
        assert!(breaking.is_empty());
        assert!(!p.is_breaking());
    }

    #[test]
    fn type_changes_and_removals_are_breaking_and_reordering_is_nothing() {
        let a = repo(vec![group(&[
            ("x", "int64"),
            ("y", "string"),
            ("z", "bool"),
        ])]);
        let reordered = crate::evolve(
            &a,
            repo(vec![group(&[
                ("z", "bool"),
                ("y", "string"),
                ("x", "int64"),
            ])]),
            |_| false,
            2,
        );
        assert!(plan(&a, &reordered).is_empty());

        let b = crate::evolve(
            &a,
            repo(vec![group(&[("z", "bool"), ("x", "float64")])]),
            |_| false,
            2,
        );
        let p = plan(&a, &b);
        let (details, breaking) = modify(&p);
        assert_eq!(details, breaking);
        assert_eq!(
            breaking,
            [
                "feature `x` type changed from int64 to float64: readers of it break; values \
                 stored as int64 are served converted where the conversion is exact, otherwise \
                 as null, until written again (position 0 retired, new position 3)",
                "feature `y` (string) removed: readers of it break; position 1 is retired",
            ]
        );
        assert_eq!(
            p.breaking()[1],
            "FeatureGroup `g`: feature `y` (string) removed: readers of it break; position 1 is \
             retired"
        );
    }

    #[test]
    fn a_move_not_made_by_evolve_is_breaking() {
        let a = repo(vec![group(&[("x", "int64"), ("y", "string")])]);
        let b = repo(vec![group(&[("y", "string"), ("x", "int64")])]);
        let p = plan(&a, &b);
        assert_eq!(
            modify(&p).1,
            [
                "feature `x` moved from position 0 to 1: positions are storage ids",
                "feature `y` moved from position 1 to 0: positions are storage ids",
            ]
        );
    }

    #[test]
    fn removing_a_group_is_breaking_and_a_new_generation_too() {
        let a = repo(vec![group(&[("x", "int64")])]);
        let p = plan(&a, &FeatureRepo::default());
        assert!(p.is_breaking());
        assert_eq!(
            p.breaking(),
            [format!("FeatureGroup `g` removed: {REMOVED_GROUP}")]
        );

        let mut moved = group(&[("x", "int64")]);
        moved.generation = 5;
        let p = plan(&a, &repo(vec![moved]));
        assert!(modify(&p).1[0].starts_with("records move to storage generation 5"));
    }

    #[test]
    fn serving_and_retention_changes_are_details() {
        let a = repo(vec![group(&[("x", "int64")])]);
        let mut g = group(&[("x", "int64")]);
        g.serving.jitter = 0.2;
        g.retention.max_age = Some(std::time::Duration::from_secs(86_400));
        g.kind = GroupKind::Timeseries;
        g.freshness = Some(std::time::Duration::from_secs(900));
        let p = plan(&a, &repo(vec![g]));
        let (details, breaking) = modify(&p);
        assert_eq!(
            details,
            [
                "group type changed from attribute to timeseries: stored records have the old layout",
                "retention.max_age changed from unlimited to 1d",
                "serving.jitter changed from 10% to 20%",
                "freshness changed from none to 15m",
            ]
        );
        assert_eq!(breaking, &details[..1]);
    }

    #[test]
    fn changes_are_sorted_by_kind_then_name() {
        let mut b1 = group(&[("x", "int64")]);
        b1.name = "b".into();
        let mut a1 = group(&[("x", "int64")]);
        a1.name = "a".into();
        let p = plan(&repo(vec![b1]), &repo(vec![a1]));
        let summary: Vec<(String, ChangeAction)> =
            p.changes.into_iter().map(|c| (c.name, c.action)).collect();
        assert_eq!(
            summary,
            vec![
                ("a".into(), ChangeAction::Add),
                ("b".into(), ChangeAction::Remove)
            ]
        );
    }

    #[test]
    fn an_on_demand_source_change_names_each_setting() {
        let source = OnDemandSource {
            name: "credit".into(),
            url: "https://scores/v1".into(),
            headers: vec![("Authorization".into(), "Bearer ${TOKEN}".into())],
            keys: vec!["user_id".into()],
            fields: vec![crate::model::SourceField {
                name: "score".into(),
                value_type: ValueType::Scalar(crate::value::ScalarType::Float64),
                fallback: None,
            }],
            timeout: std::time::Duration::from_millis(100),
            max_concurrency: 64,
            retries: 0,
            breaker_failures: 5,
            breaker_open_for: std::time::Duration::from_secs(10),
            cache_ttl: std::time::Duration::ZERO,
        };
        let group = |source: OnDemandSource| FeatureRepo {
            on_demand: vec![OnDemandGroup {
                name: "signals".into(),
                request: Vec::new(),
                features: vec![crate::model::OnDemandFeature {
                    name: "s".into(),
                    value_type: ValueType::Scalar(crate::value::ScalarType::Float64),
                    expr: "credit.score".into(),
                    description: None,
                }],
                sources: vec![source],
                description: None,
            }],
            ..FeatureRepo::default()
        };
        let changed = OnDemandSource {
            headers: vec![("Authorization".into(), "Bearer ${OTHER_TOKEN}".into())],
            timeout: std::time::Duration::from_millis(50),
            retries: 2,
            ..source.clone()
        };
        let p = plan(&group(source), &group(changed));
        let (details, breaking) = modify(&p);
        assert_eq!(
            details,
            [
                "source `credit` header values changed",
                "source `credit` timeout changed from 100ms to 50ms",
                "source `credit` retries changed from 0 to 2",
            ]
        );
        assert!(breaking.is_empty());
    }

    #[test]
    fn a_changed_source_is_shown_without_its_password() {
        use crate::model::{
            BatchInput, BatchSource, FeatureExpr, FeatureMapping, Ingestion, IngestionSource,
            Parallelism,
        };
        let ingestion = |url: &str| Ingestion {
            name: "i".into(),
            into: "g".into(),
            source: IngestionSource::Batch(BatchSource {
                input: BatchInput::Postgres {
                    url: url.into(),
                    query: "SELECT 1".into(),
                },
                transform: None,
                schedule: None,
                parallelism: Parallelism::Auto,
                depends_on: vec![],
            }),
            key: vec!["user_id".into()],
            event_time: None,
            features: vec![FeatureMapping {
                feature: "x".into(),
                expr: FeatureExpr::Field("x".into()),
            }],
        };
        let mut a = repo(vec![group(&[("x", "int64")])]);
        let mut b = a.clone();
        // Applied before passwords had to be references.
        a.ingestions = vec![ingestion("postgres://u:Old-Hush@db/app")];
        b.ingestions = vec![ingestion("postgres://u:${PG_PASSWORD}@db/app")];
        let p = plan(&a, &b);
        let (details, _) = modify(&p);
        let shown = details.join("\n");
        assert!(shown.contains("postgres://u:***@db/app"), "{shown}");
        assert!(!shown.contains("Old-Hush"), "{shown}");
    }
}
