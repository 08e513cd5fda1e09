//! The expressions of an on-demand group compiled against a repo: which input each reads
//! (request data, entity keys, stored features and their event times, external sources, other
//! on-demand groups), shared by the serving path and by training sets, which compute the same
//! features from the same expressions over the offline history.

use std::collections::BTreeSet;

use cellar_spec::{FeatureRepo, OnDemandGroup, ValueType, EVENT_TIME_INPUT};

use crate::{Expression, Scope};

/// Where an expression input's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSource {
    /// A request data field the caller sends.
    Request(String),
    /// An entity key column of the request.
    Key(String),
    /// A feature of a stored group read for the same rows: its value, or for a time series
    /// the list of its values in the records read (newest first).
    Stored { group: String, position: usize },
    /// The event time of a stored group's record, or for a time series the list of its
    /// records' event times (newest first).
    EventTime { group: String },
    /// A field of one of the group's external sources (indices into its `sources` and the
    /// source's `fields`).
    External { source: usize, field: usize },
    /// A feature of another on-demand group, computed first for the same rows.
    OnDemand { group: String, feature: usize },
}

/// An on-demand group's features compiled once, against the inputs they read.
#[derive(Debug)]
pub struct OnDemandExpressions {
    /// Only the inputs some feature reads, in the order of `sources`.
    pub scope: Scope,
    pub sources: Vec<(InputSource, ValueType)>,
    /// One per feature, in spec order.
    pub expressions: Vec<Expression>,
    /// For each feature, the inputs it reads (indices into `sources`).
    pub reads: Vec<Vec<usize>>,
}

impl OnDemandExpressions {
    /// Compiles every feature of `spec` against `repo`; an error names the feature whose
    /// expression does not compile or the input it names that `repo` lacks.
    pub fn compile(
        spec: &OnDemandGroup,
        repo: &FeatureRepo,
    ) -> Result<OnDemandExpressions, String> {
        let all = cellar_spec::parse::expression_inputs(repo, spec);
        let scope = Scope::new(all).map_err(|e| e.0)?;
        // First against every input, to learn which ones are read; then against those alone, so a
        // request builds only the columns its features need.
        let mut read = BTreeSet::new();
        for f in &spec.features {
            let e = Expression::compile(&f.expr, &scope, f.value_type)
                .map_err(|e| format!("feature `{}`: {e}", f.name))?;
            read.extend(e.inputs_read(&scope));
        }
        let inputs: Vec<_> = read
            .into_iter()
            .map(|i| scope.inputs()[i].clone())
            .collect();
        let scope = Scope::new(inputs).map_err(|e| e.0)?;
        let expressions: Vec<Expression> = spec
            .features
            .iter()
            .map(|f| {
                Expression::compile(&f.expr, &scope, f.value_type)
                    .map_err(|e| format!("feature `{}`: {e}", f.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sources = scope
            .inputs()
            .iter()
            .map(|input| {
                let external = input.qualifier.as_ref().and_then(|q| {
                    let source = spec.sources.iter().position(|s| s.name == *q)?;
                    let field = spec.sources[source]
                        .fields
                        .iter()
                        .position(|f| f.name == input.name)?;
                    Some(InputSource::External { source, field })
                });
                if let Some(external) = external {
                    return Ok((external, input.value_type));
                }
                let source = match &input.qualifier {
                    Some(group) if repo.group(group).is_none() => {
                        let other = repo
                            .on_demand
                            .iter()
                            .find(|o| o.name == *group)
                            .ok_or_else(|| format!("no feature group `{group}`"))?;
                        let feature = other.feature_index(&input.name).ok_or_else(|| {
                            format!("group `{group}` has no feature `{}`", input.name)
                        })?;
                        InputSource::OnDemand {
                            group: group.clone(),
                            feature,
                        }
                    }
                    Some(group) => {
                        let stored = repo
                            .group(group)
                            .ok_or_else(|| format!("no feature group `{group}`"))?;
                        match stored.feature_index(&input.name) {
                            Some(position) => InputSource::Stored {
                                group: group.clone(),
                                position,
                            },
                            None if input.name == EVENT_TIME_INPUT => InputSource::EventTime {
                                group: group.clone(),
                            },
                            None => {
                                return Err(format!(
                                    "group `{group}` has no feature `{}`",
                                    input.name
                                ))
                            }
                        }
                    }
                    None if spec.request.iter().any(|f| f.name == input.name) => {
                        InputSource::Request(input.name.clone())
                    }
                    None => InputSource::Key(input.name.clone()),
                };
                Ok((source, input.value_type))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let reads = expressions.iter().map(|e| e.inputs_read(&scope)).collect();
        Ok(OnDemandExpressions {
            scope,
            sources,
            expressions,
            reads,
        })
    }
}
