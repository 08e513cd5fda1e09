//! A feature repo: every spec of a directory, validated together.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{
    Entity, FeatureGroup, FeatureService, Ingestion, IngestionSource, OnDemandGroup, Origin,
};

/// How old a stream-fed group's newest event may be when its spec declares no `freshness`:
/// events arrive continuously, so an hour without one means the stream or its ingestion stopped.
pub const STREAM_FRESHNESS: Duration = Duration::from_secs(3600);

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
    /// How old `group`'s newest event written may be before it counts as stale: its declared
    /// `freshness`, else [`STREAM_FRESHNESS`] if a stream feeds it; a group only batch jobs or
    /// pushes write and that declares none is never stale.
    pub fn freshness_objective(&self, group: &FeatureGroup) -> Option<Duration> {
        group.freshness.or_else(|| {
            self.ingestions
                .iter()
                .any(|i| i.into == group.name && matches!(i.source, IngestionSource::Stream(_)))
                .then_some(STREAM_FRESHNESS)
        })
    }

    /// Every group's freshness objective, for the groups that have one.
    pub fn freshness_objectives(&self) -> impl Iterator<Item = (&str, Duration)> + '_ {
        self.groups
            .iter()
            .filter_map(|g| Some((g.name.as_str(), self.freshness_objective(g)?)))
    }

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
