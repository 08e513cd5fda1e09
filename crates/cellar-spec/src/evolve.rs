//! Schema evolution: a repo read from YAML laid over the applied one, so that what is stored
//! keeps its meaning whatever the spec files now say.
//!
//! Stored records hold values by feature position and are keyed by a layout that depends on the
//! group's kind and its entity's key fields. [`evolve`] therefore
//! - keeps every feature at the position it was first applied at, whatever its line in YAML;
//! - retires the position of a removed feature, and of a feature whose type changed (which is
//!   given a new position), so no later feature reads values written for another;
//! - moves a group whose kind, entity or key fields changed, or that was removed and is
//!   created again, to a new storage generation, so old records are never decoded with the new
//!   layout; when the entity stays (only the kind or key types changed), the new generation
//!   keeps the old one as its `previous`, whose records are served, converted, for entities
//!   the new generation holds nothing for yet.
//!
//! Which of these break readers or stored data is [`crate::plan`]'s to say; the registry
//! refuses them unless the apply allows breaking changes.

use std::collections::BTreeMap;

use crate::model::{EntityKeyField, Feature, FeatureGroup};
use crate::repo::FeatureRepo;

/// `desired` with its groups' features at their stored positions and their generations set.
///
/// `was_applied` tells whether a group absent from `current` was applied before (and since
/// removed); `fresh_generation` is a generation no group has used yet, such as the version the
/// apply will create.
pub fn evolve(
    current: &FeatureRepo,
    mut desired: FeatureRepo,
    was_applied: impl Fn(&str) -> bool,
    fresh_generation: u64,
) -> FeatureRepo {
    let desired_keys: BTreeMap<String, Vec<EntityKeyField>> = desired
        .entities
        .iter()
        .map(|e| (e.name.clone(), e.keys.clone()))
        .collect();
    for group in &mut desired.groups {
        let Some(old) = current.group(&group.name) else {
            if was_applied(&group.name) {
                group.generation = fresh_generation;
            }
            continue;
        };
        let old_keys = current.entity(&old.entity).map(|e| &e.keys);
        let relayout = old.kind != group.kind
            || old.entity != group.entity
            || old_keys != desired_keys.get(&group.entity);
        if relayout {
            // A new generation starts empty, so positions start afresh in file order.
            group.generation = fresh_generation;
            // Its entities are the old ones when only the kind or the key types changed: the
            // old records answer for them until the new generation holds their own.
            let same_entities = old.entity == group.entity
                && old_keys.map(Vec::len) == desired_keys.get(&group.entity).map(Vec::len);
            group.previous = same_entities.then(|| {
                Box::new(FeatureGroup {
                    previous: None,
                    ..old.clone()
                })
            });
        } else {
            group.generation = old.generation;
            group.previous = old.previous.clone();
            group.features = align(&old.features, std::mem::take(&mut group.features));
        }
    }
    desired
}

/// `new` (file order) laid over `old` (stored order): old positions first, retired where the
/// feature is gone or changed type, then the features that take new positions.
fn align(old: &[Feature], new: Vec<Feature>) -> Vec<Feature> {
    let mut placed = vec![false; new.len()];
    let mut out = Vec::with_capacity(old.len() + new.len());
    for f in old {
        let kept = (!f.retired)
            .then(|| new.iter().position(|n| n.name == f.name))
            .flatten()
            .filter(|&j| new[j].value_type == f.value_type);
        match kept {
            Some(j) => {
                out.push(new[j].clone());
                placed[j] = true;
            }
            None => out.push(Feature {
                retired: true,
                ..f.clone()
            }),
        }
    }
    out.extend(
        new.into_iter()
            .zip(placed)
            .filter(|(_, placed)| !placed)
            .map(|(f, _)| f),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Entity, FeatureGroup, GroupKind, KeyType, Retention, ServingPolicy};
    use crate::value::{ScalarType, ValueType};

    const INT: ValueType = ValueType::Scalar(ScalarType::Int64);
    const STRING: ValueType = ValueType::Scalar(ScalarType::String);

    fn repo(key_type: KeyType, kind: GroupKind, features: &[(&str, ValueType)]) -> FeatureRepo {
        FeatureRepo {
            entities: vec![Entity {
                name: "user".into(),
                keys: vec![EntityKeyField {
                    name: "user_id".into(),
                    key_type,
                }],
                description: None,
            }],
            groups: vec![FeatureGroup {
                name: "profile".into(),
                entity: "user".into(),
                kind,
                features: features.iter().map(|(n, t)| Feature::new(*n, *t)).collect(),
                retention: Retention::default(),
                serving: ServingPolicy::default(),
                max_record_bytes: 8192,
                freshness: None,
                push_sources: Vec::new(),
                description: None,
                generation: 0,
                previous: None,
            }],
            ..FeatureRepo::default()
        }
    }

    fn layout(repo: &FeatureRepo) -> Vec<(String, bool)> {
        repo.groups[0]
            .features
            .iter()
            .map(|f| (f.name.clone(), f.retired))
            .collect()
    }

    fn never(_: &str) -> bool {
        false
    }

    #[test]
    fn reordered_lines_keep_their_positions() {
        let current = repo(
            KeyType::String,
            GroupKind::Attribute,
            &[("age", INT), ("country", STRING)],
        );
        let desired = repo(
            KeyType::String,
            GroupKind::Attribute,
            &[("city", STRING), ("country", STRING), ("age", INT)],
        );
        let evolved = evolve(&current, desired, never, 7);
        assert_eq!(
            layout(&evolved),
            [
                ("age".to_owned(), false),
                ("country".to_owned(), false),
                ("city".to_owned(), false)
            ]
        );
        assert_eq!(evolved.groups[0].generation, 0);
    }

    #[test]
    fn removed_and_retyped_features_retire_their_positions() {
        let current = repo(
            KeyType::String,
            GroupKind::Attribute,
            &[("age", INT), ("country", STRING), ("score", INT)],
        );
        let desired = repo(
            KeyType::String,
            GroupKind::Attribute,
            &[("score", INT), ("age", STRING)],
        );
        let evolved = evolve(&current, desired, never, 7);
        assert_eq!(
            layout(&evolved),
            [
                ("age".to_owned(), true),
                ("country".to_owned(), true),
                ("score".to_owned(), false),
                ("age".to_owned(), false),
            ]
        );
        let group = &evolved.groups[0];
        assert_eq!(group.feature_index("age"), Some(3));
        assert_eq!(
            group.features[0].value_type, INT,
            "the retired slot keeps its type"
        );
        assert_eq!(group.live_positions().collect::<Vec<_>>(), [2, 3]);
        // The retyped feature's old values stay readable through its predecessor.
        assert_eq!(group.predecessors().collect::<Vec<_>>(), [(3, 0)]);

        // A retired position stays retired, and a feature added back gets a new one.
        let again = repo(
            KeyType::String,
            GroupKind::Attribute,
            &[("country", STRING), ("score", INT), ("age", STRING)],
        );
        let evolved = evolve(&evolved, again, never, 8);
        assert_eq!(evolved.groups[0].feature_index("country"), Some(4));
        assert_eq!(evolved.groups[0].features.len(), 5);
        // Declared again with its old type, a removed feature starts empty.
        assert_eq!(evolved.groups[0].predecessor(4), None);
    }

    #[test]
    fn layout_changes_and_recreated_groups_move_to_a_new_generation() {
        let current = repo(KeyType::String, GroupKind::Attribute, &[("age", INT)]);
        let kind = repo(KeyType::String, GroupKind::Timeseries, &[("age", INT)]);
        assert_eq!(evolve(&current, kind, never, 7).groups[0].generation, 7);
        let key = repo(KeyType::Int64, GroupKind::Attribute, &[("age", INT)]);
        assert_eq!(evolve(&current, key, never, 7).groups[0].generation, 7);
        assert_eq!(
            evolve(&current, current.clone(), never, 7).groups[0].generation,
            0
        );

        let empty = FeatureRepo::default();
        let back = evolve(&empty, current.clone(), |name| name == "profile", 9);
        assert_eq!(back.groups[0].generation, 9);
        assert_eq!(back.groups[0].storage_name(), "profile@9");
        let first = evolve(&empty, current.clone(), never, 9);
        assert_eq!(first.groups[0].storage_name(), "profile");
    }

    #[test]
    fn a_new_generation_keeps_the_old_one_while_the_entities_are_the_same() {
        let current = repo(KeyType::String, GroupKind::Attribute, &[("age", INT)]);
        let kind = repo(KeyType::String, GroupKind::Timeseries, &[("age", INT)]);
        let moved = evolve(&current, kind.clone(), never, 7);
        let previous = moved.groups[0]
            .previous
            .as_deref()
            .expect("previous generation");
        assert_eq!(previous.storage_name(), "profile");
        assert_eq!(previous.kind, GroupKind::Attribute);

        // Applying the same again keeps it; a later move replaces it (one generation back).
        let again = evolve(&moved, kind, never, 8);
        assert_eq!(again.groups[0].previous, moved.groups[0].previous);
        let back = evolve(&again, current.clone(), never, 9);
        assert_eq!(back.groups[0].storage_name(), "profile@9");
        let previous = back.groups[0].previous.as_deref().unwrap();
        assert_eq!(previous.storage_name(), "profile@7");
        assert!(previous.previous.is_none());

        // Other key fields mean other entities: nothing to carry over.
        let mut two_keys = current.clone();
        two_keys.entities[0].keys.push(EntityKeyField {
            name: "region".into(),
            key_type: KeyType::String,
        });
        assert!(evolve(&current, two_keys, never, 7).groups[0]
            .previous
            .is_none());
    }
}
