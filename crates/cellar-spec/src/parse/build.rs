//! Validated drafts turned into the repo.

use super::Drafts;
use crate::model::{
    Entity, Feature, FeatureGroup, FeatureMapping, FeatureSelection, FeatureService, Ingestion,
    OnDemandFeature, OnDemandGroup, RequestField,
};
use crate::repo::{FeatureRepo, SpecKind};

impl Drafts {
    /// The repo, when every draft is complete (which no error found means).
    pub(super) fn build(self) -> Option<FeatureRepo> {
        let mut repo = FeatureRepo::default();
        for d in self.entities {
            repo.origins
                .insert((SpecKind::Entity, d.head.name.clone()), d.head.origin);
            repo.entities.push(Entity {
                name: d.head.name,
                keys: d.keys?,
                description: d.head.description,
            });
        }
        for d in self.groups {
            repo.origins
                .insert((SpecKind::FeatureGroup, d.head.name.clone()), d.head.origin);
            let features = d
                .features
                .into_iter()
                .map(|f| {
                    Some(Feature {
                        name: f.name,
                        value_type: f.value_type?,
                        description: f.description,
                        retired: false,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            repo.groups.push(FeatureGroup {
                name: d.head.name,
                entity: d.entity?.value,
                kind: d.kind?,
                features,
                retention: d.retention,
                serving: d.serving,
                max_record_bytes: d.max_record_bytes,
                push_sources: d.push_sources,
                description: d.head.description,
                freshness: d.freshness,
                generation: 0,
                previous: None,
            });
        }
        for d in self.on_demand {
            repo.origins.insert(
                (SpecKind::OnDemandGroup, d.head.name.clone()),
                d.head.origin,
            );
            let request = d
                .request
                .into_iter()
                .map(|f| {
                    Some(RequestField {
                        name: f.name.value,
                        value_type: f.value_type?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            let features = d
                .features
                .into_iter()
                .map(|f| {
                    Some(OnDemandFeature {
                        name: f.name,
                        value_type: f.value_type?,
                        expr: f.expr?.value,
                        description: f.description,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            repo.on_demand.push(OnDemandGroup {
                name: d.head.name,
                request,
                features,
                sources: d.sources?,
                description: d.head.description,
            });
        }
        for d in self.ingestions {
            repo.origins
                .insert((SpecKind::Ingestion, d.head.name.clone()), d.head.origin);
            let features = d
                .features
                .into_iter()
                .map(|m| {
                    Some(FeatureMapping {
                        feature: m.feature.value,
                        expr: m.expr?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            repo.ingestions.push(Ingestion {
                name: d.head.name,
                into: d.into?.value,
                source: d.source?,
                key: d.key?.value,
                event_time: d.event_time,
                features,
            });
        }
        for d in self.services {
            repo.origins.insert(
                (SpecKind::FeatureService, d.head.name.clone()),
                d.head.origin,
            );
            // Entries of one group are merged, in the order the groups first appear.
            let mut features: Vec<FeatureSelection> = Vec::new();
            for s in d.selections {
                let (group, feature) = s.value;
                match features.iter_mut().find(|f| f.group == group) {
                    Some(existing) => {
                        if let (Some(list), Some(feature)) = (&mut existing.features, feature) {
                            list.push(feature);
                        }
                    }
                    None => features.push(FeatureSelection {
                        group,
                        features: feature.map(|f| vec![f]),
                    }),
                }
            }
            repo.services.push(FeatureService {
                name: d.head.name,
                features,
                description: d.head.description,
                logging: d.logging,
            });
        }
        repo.entities.sort_by(|a, b| a.name.cmp(&b.name));
        repo.groups.sort_by(|a, b| a.name.cmp(&b.name));
        repo.on_demand.sort_by(|a, b| a.name.cmp(&b.name));
        repo.ingestions.sort_by(|a, b| a.name.cmp(&b.name));
        repo.services.sort_by(|a, b| a.name.cmp(&b.name));
        Some(repo)
    }
}
