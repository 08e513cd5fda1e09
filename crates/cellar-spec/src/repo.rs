//! A feature repo: every spec of a directory, validated together.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Entity, FeatureGroup, FeatureService, Ingestion, OnDemandGroup, Origin};

/// The kinds of spec document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SpecKind {
    Entity,
    FeatureGroup,
    OnDemandGroup,
    Ingestion,
    FeatureService,
}

impl std::fmt::Display for SpecKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SpecKind::Entity => "Entity",
            SpecKind::FeatureGroup => "FeatureGroup",
            SpecKind::OnDemandGroup => "OnDemandGroup",
            SpecKind::Ingestion => "Ingestion",
            SpecKind::FeatureService => "FeatureService",
        })
    }
}

/// Every spec of a feature repo, cross-checked: each group's entity exists, each ingestion's
/// group and features exist, each service's features exist. Sorted by name within a kind.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FeatureRepo {
    pub entities: Vec<Entity>,
    pub groups: Vec<FeatureGroup>,
    /// Groups computed per request (`type: on_demand`); their names are not stored groups'.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_demand: Vec<OnDemandGroup>,
    pub ingestions: Vec<Ingestion>,
    pub services: Vec<FeatureService>,
    /// Where each spec was declared; empty for specs read back from the registry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub origins: BTreeMap<(SpecKind, String), Origin>,
}

impl FeatureRepo {
    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| e.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&FeatureGroup> {
        self.groups.iter().find(|g| g.name == name)
    }

    pub fn on_demand_group(&self, name: &str) -> Option<&OnDemandGroup> {
        self.on_demand.iter().find(|g| g.name == name)
    }

    pub fn ingestion(&self, name: &str) -> Option<&Ingestion> {
        self.ingestions.iter().find(|i| i.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&FeatureService> {
        self.services.iter().find(|s| s.name == name)
    }
}
