//! The applied specs as the serving path looks them up: by name, with each group's entity.

use std::collections::HashMap;
use std::sync::Arc;

use cellar_spec::{Entity, FeatureGroup, FeatureRepo, FeatureService};

use crate::on_demand::ServedOnDemand;
use crate::sources::SourceMetrics;

/// A feature group with its entity, ready to serve.
#[derive(Debug)]
pub struct ServedGroup {
    pub spec: FeatureGroup,
    pub entity: Entity,
    /// (live position, retired predecessor) of each retyped feature, whose old values are
    /// served converted until written again.
    pub retyped: Vec<(usize, usize)>,
}

/// Every group (stored and on-demand) and feature service of the applied repo, by name.
#[derive(Debug, Default)]
pub struct Catalog {
    groups: HashMap<String, Arc<ServedGroup>>,
    on_demand: HashMap<String, Arc<ServedOnDemand>>,
    services: HashMap<String, FeatureService>,
    /// Which entity each key field name belongs to, to explain a wrong key name.
    key_owners: HashMap<String, String>,
}

impl Catalog {
    /// Builds the catalog of an applied (validated) repo. Groups whose entity is missing are
    /// skipped; validation rejects such repos before they are applied.
    pub fn new(repo: &FeatureRepo) -> Catalog {
        Catalog::with_source_metrics(repo, &SourceMetrics::default())
    }

    /// [`Catalog::new`], its on-demand groups' external sources measured in `metrics`.
    pub fn with_source_metrics(repo: &FeatureRepo, metrics: &SourceMetrics) -> Catalog {
        let mut groups = HashMap::new();
        for g in &repo.groups {
            if let Some(entity) = repo.entity(&g.entity) {
                groups.insert(
                    g.name.clone(),
                    Arc::new(ServedGroup {
                        spec: g.clone(),
                        entity: entity.clone(),
                        retyped: g.predecessors().collect(),
                    }),
                );
            }
        }
        let on_demand = repo
            .on_demand
            .iter()
            .map(|g| {
                (
                    g.name.clone(),
                    Arc::new(ServedOnDemand::new(g, repo, metrics)),
                )
            })
            .collect();
        let services = repo
            .services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let key_owners = repo
            .entities
            .iter()
            .flat_map(|e| e.keys.iter().map(|k| (k.name.clone(), e.name.clone())))
            .collect();
        Catalog {
            groups,
            on_demand,
            services,
            key_owners,
        }
    }

    pub fn group(&self, name: &str) -> Option<&Arc<ServedGroup>> {
        self.groups.get(name)
    }

    pub fn on_demand(&self, name: &str) -> Option<&Arc<ServedOnDemand>> {
        self.on_demand.get(name)
    }

    pub fn service(&self, name: &str) -> Option<&FeatureService> {
        self.services.get(name)
    }

    /// Whether any feature service logs a share of its answers.
    pub fn any_service_logs(&self) -> bool {
        self.services.values().any(|s| !s.logging.is_off())
    }

    /// Every group, in no particular order.
    pub fn groups(&self) -> impl Iterator<Item = &Arc<ServedGroup>> {
        self.groups.values()
    }

    /// Whether an on-demand group declares a request field of this name.
    pub fn is_request_field(&self, name: &str) -> bool {
        self.on_demand
            .values()
            .any(|g| g.spec.request.iter().any(|f| f.name == name))
    }

    /// The entity that has a key field of this name, if any.
    pub fn key_owner(&self, field: &str) -> Option<&str> {
        self.key_owners.get(field).map(String::as_str)
    }

    /// Group names (stored and on-demand), sorted, for error messages.
    pub fn group_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .groups
            .keys()
            .chain(self.on_demand.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }
}
