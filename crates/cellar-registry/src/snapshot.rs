//! A repo in the form the registry stores it, and which specs an apply writes. No IO.

use std::collections::BTreeMap;

use cellar_spec::{evolve, plan, FeatureRepo, SpecKind};
use serde::Serialize;

use crate::backend::RepoRow;
use crate::{decode_applied_repo, Breaking, RegistryError};

/// What an apply of `desired` over `current` (the head row, `None` before the first apply)
/// writes: the version it creates and the snapshot of `desired` evolved over the current repo
/// ([`cellar_spec::evolve`]). `latest` is the newest history row of every spec ever applied,
/// which tells a re-created group from a new one. Breaking changes are refused unless allowed.
pub(crate) fn prepare(
    current: Option<RepoRow>,
    latest: &[LatestSpec],
    desired: &FeatureRepo,
    breaking: Breaking,
) -> Result<(i64, RepoSnapshot), RegistryError> {
    let (version, current) = match current {
        Some(row) => {
            let applied = decode_applied_repo(row)?;
            (applied.version + 1, applied.repo)
        }
        None => (1, FeatureRepo::default()),
    };
    let evolved = evolved(&current, latest, desired, version);
    if breaking == Breaking::Refuse {
        let changes = plan(&current, &evolved).breaking();
        if !changes.is_empty() {
            return Err(RegistryError::Breaking { changes });
        }
    }
    Ok((version, RepoSnapshot::new(&evolved)?))
}

/// `desired` evolved over `current` for the apply that creates `version`.
pub(crate) fn evolved(
    current: &FeatureRepo,
    latest: &[LatestSpec],
    desired: &FeatureRepo,
    version: i64,
) -> FeatureRepo {
    let was_applied = |name: &str| {
        latest
            .iter()
            .any(|l| l.kind == SpecKind::FeatureGroup && l.name == name)
    };
    evolve(
        current,
        desired.clone(),
        was_applied,
        u64::try_from(version).unwrap_or(0),
    )
}

/// A repo serialized for storage: the whole repo, and each spec on its own.
///
/// Change detection compares these JSON texts rather than decoded values: serialization of the
/// same value is deterministic, and text equality is not fooled by float rounding.
#[derive(Debug)]
pub(crate) struct RepoSnapshot {
    /// The repo without `origins`, which record where specs were declared and do not change
    /// what is served.
    pub(crate) json: String,
    pub(crate) specs: BTreeMap<(SpecKind, String), String>,
}

/// The newest history row of one spec, as read from the database.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LatestSpec {
    pub(crate) kind: SpecKind,
    pub(crate) name: String,
    pub(crate) version: i64,
    /// `None` when the newest row records a removal.
    pub(crate) spec: Option<String>,
}

/// A history row an apply writes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SpecWrite {
    pub(crate) kind: SpecKind,
    pub(crate) name: String,
    pub(crate) version: i64,
    /// `None` records a removal.
    pub(crate) spec: Option<String>,
}

impl RepoSnapshot {
    pub(crate) fn new(repo: &FeatureRepo) -> Result<RepoSnapshot, RegistryError> {
        let mut stored = repo.clone();
        // Origins are keyed by (kind, name) tuples, which JSON objects cannot hold; they are
        // also no part of what was applied.
        stored.origins.clear();
        let json = encode("the feature repo", &stored)?;

        let mut specs = BTreeMap::new();
        let mut add = |kind: SpecKind, name: &str, json: String| match specs
            .insert((kind, name.to_owned()), json)
        {
            Some(_) => Err(RegistryError::DuplicateSpec {
                kind,
                name: name.to_owned(),
            }),
            None => Ok(()),
        };
        for e in &stored.entities {
            add(
                SpecKind::Entity,
                &e.name,
                encode_spec(SpecKind::Entity, &e.name, e)?,
            )?;
        }
        for g in &stored.groups {
            let kind = SpecKind::FeatureGroup;
            add(kind, &g.name, encode_spec(kind, &g.name, g)?)?;
        }
        for g in &stored.on_demand {
            let kind = SpecKind::OnDemandGroup;
            add(kind, &g.name, encode_spec(kind, &g.name, g)?)?;
        }
        for i in &stored.ingestions {
            let kind = SpecKind::Ingestion;
            add(kind, &i.name, encode_spec(kind, &i.name, i)?)?;
        }
        for s in &stored.services {
            let kind = SpecKind::FeatureService;
            add(kind, &s.name, encode_spec(kind, &s.name, s)?)?;
        }
        Ok(RepoSnapshot { json, specs })
    }

    /// The history rows that bring `latest` (the newest row of every spec ever applied) to this
    /// repo: a new version for each spec added, changed or re-added, and a removal for each
    /// spec that is live in `latest` and absent here.
    pub(crate) fn spec_writes(&self, latest: &[LatestSpec]) -> Vec<SpecWrite> {
        let latest: BTreeMap<(SpecKind, &str), &LatestSpec> = latest
            .iter()
            .map(|l| ((l.kind, l.name.as_str()), l))
            .collect();
        let mut writes = Vec::new();
        for ((kind, name), json) in &self.specs {
            let previous = latest.get(&(*kind, name.as_str()));
            if previous.is_some_and(|p| p.spec.as_deref() == Some(json.as_str())) {
                continue;
            }
            writes.push(SpecWrite {
                kind: *kind,
                name: name.clone(),
                version: previous.map_or(1, |p| p.version + 1),
                spec: Some(json.clone()),
            });
        }
        for ((kind, name), previous) in &latest {
            let live = previous.spec.is_some();
            if live && !self.specs.contains_key(&(*kind, (*name).to_owned())) {
                writes.push(SpecWrite {
                    kind: *kind,
                    name: (*name).to_owned(),
                    version: previous.version + 1,
                    spec: None,
                });
            }
        }
        writes
    }
}

fn encode_spec(kind: SpecKind, name: &str, spec: &impl Serialize) -> Result<String, RegistryError> {
    encode(&format!("{kind} `{name}`"), spec)
}

fn encode(what: &str, value: &impl Serialize) -> Result<String, RegistryError> {
    serde_json::to_string(value).map_err(|source| RegistryError::Encode {
        what: what.to_owned(),
        source,
    })
}

/// The name a kind is stored under.
pub(crate) fn kind_name(kind: SpecKind) -> &'static str {
    match kind {
        SpecKind::Entity => "Entity",
        SpecKind::FeatureGroup => "FeatureGroup",
        SpecKind::OnDemandGroup => "OnDemandGroup",
        SpecKind::Ingestion => "Ingestion",
        SpecKind::FeatureService => "FeatureService",
    }
}

/// The kind stored under `name`, if any.
pub(crate) fn parse_kind(name: &str) -> Option<SpecKind> {
    [
        SpecKind::Entity,
        SpecKind::FeatureGroup,
        SpecKind::OnDemandGroup,
        SpecKind::Ingestion,
        SpecKind::FeatureService,
    ]
    .into_iter()
    .find(|k| kind_name(*k) == name)
}

#[cfg(test)]
mod tests {
    use cellar_spec::{Entity, EntityKeyField, KeyType, Origin};

    use super::*;

    fn entity(name: &str, description: Option<&str>) -> Entity {
        Entity {
            name: name.to_owned(),
            keys: vec![EntityKeyField {
                name: format!("{name}_id"),
                key_type: KeyType::String,
            }],
            description: description.map(str::to_owned),
        }
    }

    fn repo(entities: Vec<Entity>) -> FeatureRepo {
        FeatureRepo {
            entities,
            ..FeatureRepo::default()
        }
    }

    fn latest(name: &str, version: i64, spec: Option<String>) -> LatestSpec {
        LatestSpec {
            kind: SpecKind::Entity,
            name: name.to_owned(),
            version,
            spec,
        }
    }

    #[test]
    fn origins_do_not_change_the_snapshot() {
        let plain = repo(vec![entity("user", None)]);
        let mut with_origins = plain.clone();
        with_origins.origins.insert(
            (SpecKind::Entity, "user".to_owned()),
            Origin {
                file: "user.yaml".to_owned(),
                line: 3,
            },
        );
        let a = RepoSnapshot::new(&plain).expect("encodes");
        let b = RepoSnapshot::new(&with_origins).expect("encodes");
        assert_eq!(a.json, b.json);
        assert_eq!(a.specs, b.specs);
    }

    #[test]
    fn writes_new_changed_and_removed_specs_only() {
        let old = RepoSnapshot::new(&repo(vec![
            entity("article", None),
            entity("shop", None),
            entity("user", None),
        ]))
        .expect("encodes");
        let stored = |name: &str| old.specs[&(SpecKind::Entity, name.to_owned())].clone();
        let history = vec![
            latest("article", 1, Some(stored("article"))),
            latest("shop", 2, Some(stored("shop"))),
            latest("user", 1, Some(stored("user"))),
            latest("gone_long_ago", 2, None),
        ];
        let new = RepoSnapshot::new(&repo(vec![
            entity("article", None),
            entity("author", None),
            entity("user", Some("people")),
        ]))
        .expect("encodes");

        let writes = new.spec_writes(&history);
        let summary: Vec<(&str, i64, bool)> = writes
            .iter()
            .map(|w| (w.name.as_str(), w.version, w.spec.is_some()))
            .collect();
        assert_eq!(
            summary,
            vec![("author", 1, true), ("user", 2, true), ("shop", 3, false)]
        );
    }

    #[test]
    fn a_removed_spec_comes_back_as_a_new_version() {
        let snapshot = RepoSnapshot::new(&repo(vec![entity("user", None)])).expect("encodes");
        let writes = snapshot.spec_writes(&[latest("user", 2, None)]);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].version, 3);
        assert!(writes[0].spec.is_some());
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let err = RepoSnapshot::new(&repo(vec![entity("user", None), entity("user", None)]))
            .expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "the repo declares Entity `user` more than once"
        );
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in [
            SpecKind::Entity,
            SpecKind::FeatureGroup,
            SpecKind::OnDemandGroup,
            SpecKind::Ingestion,
            SpecKind::FeatureService,
        ] {
            assert_eq!(parse_kind(kind_name(kind)), Some(kind));
        }
        assert_eq!(parse_kind("Table"), None);
    }
}
