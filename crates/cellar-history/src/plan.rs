//! What a training set holds, resolved against the applied repo: the stored groups joined from
//! the history (with the features asked for and those on-demand features read), the on-demand
//! groups computed over them, and the output columns in the order they were named.

use std::sync::Arc;

use cellar_expr::{InputSource, OnDemandExpressions};
use cellar_spec::{FeatureRepo, OnDemandGroup};

use crate::error::{HistoryError, Result};
use crate::training::Selection;

/// Some features of one on-demand group, computed for every spine row from the same inputs
/// serving reads, as they were at the row's timestamp.
#[derive(Debug, Clone)]
pub struct OnDemandSelection {
    pub group: OnDemandGroup,
    pub expressions: Arc<OnDemandExpressions>,
    /// Positions in the group of the features computed: those asked for and those another
    /// on-demand group reads.
    pub features: Vec<usize>,
}

/// A training set's groups and columns.
#[derive(Debug, Clone, Default)]
pub struct TrainingPlan {
    /// Stored groups joined from the history, each with every feature read (asked for or
    /// read by an on-demand feature).
    pub stored: Vec<Selection>,
    /// Stored groups whose records' event times an on-demand feature reads.
    pub event_times: Vec<String>,
    /// On-demand groups, each after the groups it reads.
    pub on_demand: Vec<OnDemandSelection>,
    /// The output's feature columns in order, as (group, feature).
    pub columns: Vec<(String, String)>,
}

impl TrainingPlan {
    /// A plan of stored features alone: every feature of each selection, in order.
    pub fn stored(selections: Vec<Selection>) -> TrainingPlan {
        let columns = selections
            .iter()
            .flat_map(|s| s.features.iter().map(|f| (s.group.name.clone(), f.clone())))
            .collect();
        TrainingPlan {
            stored: selections,
            columns,
            ..TrainingPlan::default()
        }
    }

    /// The plan for a feature service and/or `group:feature` (`group:*`) names, time series
    /// giving `top_n` records a row (capped by each group's `max_records`).
    pub fn resolve(
        repo: &FeatureRepo,
        service: Option<&str>,
        features: &[String],
        top_n: usize,
    ) -> Result<TrainingPlan> {
        let mut named: Vec<(String, Option<String>)> = Vec::new();
        if let Some(name) = service {
            let service = repo.service(name).ok_or_else(|| {
                invalid(format!(
                    "no feature service `{name}` (known: {})",
                    list(repo.services.iter().map(|s| s.name.as_str()))
                ))
            })?;
            for selection in &service.features {
                match &selection.features {
                    None => named.push((selection.group.clone(), None)),
                    Some(features) => named.extend(
                        features
                            .iter()
                            .map(|f| (selection.group.clone(), Some(f.clone()))),
                    ),
                }
            }
        }
        for spec in features {
            let (group, feature) = spec.split_once(':').ok_or_else(|| {
                invalid(format!(
                    "`{spec}`: features are named as group:feature or group:*"
                ))
            })?;
            named.push((
                group.to_owned(),
                (feature != "*").then(|| feature.to_owned()),
            ));
        }
        if named.is_empty() {
            return Err(invalid(
                "name a feature service or features (group:feature or group:*)".to_owned(),
            ));
        }
        let mut plan = TrainingPlan::default();
        for (group, feature) in named {
            let wanted: Vec<String> = if let Some(spec) = repo.on_demand_group(&group) {
                match feature {
                    Some(f) if spec.feature_index(&f).is_none() => {
                        return Err(invalid(format!(
                            "on-demand group `{group}` has no feature `{f}` (it has {})",
                            list(spec.features.iter().map(|f| f.name.as_str()))
                        )))
                    }
                    Some(f) => vec![f],
                    None => spec.features.iter().map(|f| f.name.clone()).collect(),
                }
            } else {
                let spec = repo.group(&group).ok_or_else(|| {
                    invalid(format!(
                        "no feature group `{group}` (known: {})",
                        list(
                            repo.groups
                                .iter()
                                .map(|g| g.name.as_str())
                                .chain(repo.on_demand.iter().map(|g| g.name.as_str()))
                        )
                    ))
                })?;
                match feature {
                    Some(f) if spec.feature_index(&f).is_none() => {
                        return Err(invalid(format!(
                            "group `{group}` has no feature `{f}` (it has {})",
                            list(spec.live_features().map(|f| f.name.as_str()))
                        )))
                    }
                    Some(f) => vec![f],
                    None => spec.live_features().map(|f| f.name.clone()).collect(),
                }
            };
            for f in wanted {
                if plan.columns.iter().any(|(g, c)| *g == group && *c == f) {
                    continue;
                }
                plan.add(repo, &group, &f, top_n, &mut Vec::new())?;
                plan.columns.push((group.clone(), f));
            }
        }
        plan.order_on_demand()?;
        Ok(plan)
    }

    /// Places each on-demand group after the on-demand groups its computed features read.
    fn order_on_demand(&mut self) -> Result<()> {
        let mut pending = std::mem::take(&mut self.on_demand);
        while !pending.is_empty() {
            let ready = pending.iter().position(|s| {
                s.features.iter().all(|&f| {
                    s.expressions.reads[f]
                        .iter()
                        .all(|&i| match &s.expressions.sources[i].0 {
                            InputSource::OnDemand { group, .. } => {
                                self.on_demand.iter().any(|done| done.group.name == *group)
                            }
                            _ => true,
                        })
                })
            });
            let Some(ready) = ready else {
                return Err(invalid(format!(
                    "on-demand groups read each other in a cycle: {}",
                    list(pending.iter().map(|s| s.group.name.as_str()))
                )));
            };
            self.on_demand.push(pending.remove(ready));
        }
        Ok(())
    }

    /// Adds `group`'s `feature` and, for an on-demand feature, everything it reads. `reading` holds the on-demand
    /// features being added, outermost first, to name a cycle.
    fn add(
        &mut self,
        repo: &FeatureRepo,
        group: &str,
        feature: &str,
        top_n: usize,
        reading: &mut Vec<String>,
    ) -> Result<()> {
        let Some(spec) = repo.on_demand_group(group) else {
            return self.add_stored(repo, group, Some(feature), top_n);
        };
        let position = spec.feature_index(feature).ok_or_else(|| {
            invalid(format!(
                "on-demand group `{group}` has no feature `{feature}`"
            ))
        })?;
        let name = format!("{group}.{feature}");
        if reading.contains(&name) {
            reading.push(name);
            return Err(invalid(format!(
                "on-demand features read each other in a cycle: {}",
                reading.join(" -> ")
            )));
        }
        if let Some(s) = self.on_demand.iter().find(|s| s.group.name == group) {
            if s.features.contains(&position) {
                return Ok(());
            }
        }
        let expressions = match self.on_demand.iter().find(|s| s.group.name == group) {
            Some(s) => Arc::clone(&s.expressions),
            None => Arc::new(OnDemandExpressions::compile(spec, repo).map_err(|e| {
                invalid(format!("on-demand group `{group}` cannot be computed: {e}"))
            })?),
        };
        reading.push(name);
        for &input in &expressions.reads[position] {
            match &expressions.sources[input].0 {
                InputSource::Request(_) | InputSource::Key(_) => {}
                InputSource::Stored {
                    group: stored,
                    position,
                } => {
                    let stored_spec = repo.group(stored).ok_or_else(|| {
                        invalid(format!(
                            "`{group}.{feature}` reads an unknown group `{stored}`"
                        ))
                    })?;
                    let name = &stored_spec.features[*position].name;
                    self.add_stored(repo, stored, Some(name), top_n)?;
                }
                InputSource::EventTime { group: stored } => {
                    self.add_stored(repo, stored, None, top_n)?;
                    if !self.event_times.contains(stored) {
                        self.event_times.push(stored.clone());
                    }
                }
                InputSource::OnDemand {
                    group: other,
                    feature: position,
                } => {
                    let other_spec = repo.on_demand_group(other).ok_or_else(|| {
                        invalid(format!(
                            "`{group}.{feature}` reads an unknown group `{other}`"
                        ))
                    })?;
                    let name = other_spec.features[*position].name.clone();
                    self.add(repo, other, &name, top_n, reading)?;
                }
                InputSource::External { source, .. } => {
                    return Err(invalid(format!(
                        "`{}` reads the external source `{}`, whose past answers Cellar does \
                         not keep, so it cannot be computed as it was; log the features served \
                         (a service's `logging.sample_rate`) to train on them",
                        reading.join("` through `"),
                        spec.sources[*source].name
                    )))
                }
            }
        }
        reading.pop();
        match self.on_demand.iter_mut().find(|s| s.group.name == group) {
            Some(s) => s.features.push(position),
            None => self.on_demand.push(OnDemandSelection {
                group: spec.clone(),
                expressions,
                features: vec![position],
            }),
        }
        Ok(())
    }

    /// Joins the stored `group` (with `feature`, if named).
    fn add_stored(
        &mut self,
        repo: &FeatureRepo,
        group: &str,
        feature: Option<&str>,
        top_n: usize,
    ) -> Result<()> {
        let selection = match self.stored.iter_mut().position(|s| s.group.name == group) {
            Some(i) => &mut self.stored[i],
            None => {
                let spec = repo
                    .group(group)
                    .ok_or_else(|| invalid(format!("no feature group `{group}`")))?;
                let entity = repo
                    .entity(&spec.entity)
                    .ok_or_else(|| invalid(format!("group `{group}` names an unknown entity")))?;
                self.stored.push(Selection {
                    group: spec.clone(),
                    entity: entity.clone(),
                    features: Vec::new(),
                    top_n,
                });
                self.stored.last_mut().expect("just pushed")
            }
        };
        if let Some(f) = feature {
            if !selection.features.iter().any(|s| s == f) {
                selection.features.push(f.to_owned());
            }
        }
        Ok(())
    }
}

fn invalid(message: String) -> HistoryError {
    HistoryError::Invalid(message)
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}
