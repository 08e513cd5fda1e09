//! Roles, the actions they grant on resources by name pattern, and the check every endpoint
//! makes. Closed by default: an action on a resource that no grant of the caller's roles
//! covers is refused.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::RoleConfig;
use crate::ConfigError;

/// What a caller may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read features of a group, or through a feature service.
    ReadFeatures,
    /// Push records into a group.
    WriteFeatures,
    /// Append events to a topic.
    PublishEvents,
    /// List, submit, retry and cancel batch jobs of an ingestion.
    OperateJobs,
    /// List (payloads included) and re-drive the dead letters of an ingestion.
    OperateDeadLetters,
    /// Scrape `/metrics`.
    ReadMetrics,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ReadFeatures => "read_features",
            Action::WriteFeatures => "write_features",
            Action::PublishEvents => "publish_events",
            Action::OperateJobs => "operate_jobs",
            Action::OperateDeadLetters => "operate_dead_letters",
            Action::ReadMetrics => "read_metrics",
        }
    }

    /// The kinds of resource the action applies to.
    fn applies_to(self) -> &'static [ResourceKind] {
        match self {
            Action::ReadFeatures => &[ResourceKind::Group, ResourceKind::Service],
            Action::WriteFeatures => &[ResourceKind::Group],
            Action::PublishEvents => &[ResourceKind::Topic],
            Action::OperateJobs | Action::OperateDeadLetters => &[ResourceKind::Ingestion],
            Action::ReadMetrics => &[ResourceKind::Metrics],
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kinds of named resource a grant covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Group,
    Service,
    Topic,
    Ingestion,
    Metrics,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Group => "group",
            ResourceKind::Service => "service",
            ResourceKind::Topic => "topic",
            ResourceKind::Ingestion => "ingestion",
            ResourceKind::Metrics => "metrics",
        }
    }

    fn parse(text: &str) -> Option<ResourceKind> {
        Some(match text {
            "group" => ResourceKind::Group,
            "service" => ResourceKind::Service,
            "topic" => ResourceKind::Topic,
            "ingestion" => ResourceKind::Ingestion,
            "metrics" => ResourceKind::Metrics,
            _ => return None,
        })
    }
}

/// `kind:pattern`, or `*` for every resource of every kind.
#[derive(Debug, Clone)]
struct ResourcePattern {
    /// `None`: any kind.
    kind: Option<ResourceKind>,
    /// `None`: any name (the pattern `*`), which is also what grants an action on "every"
    /// resource of a kind (an unfiltered dead-letter listing, say).
    name: Option<glob::Pattern>,
}

impl ResourcePattern {
    fn parse(text: &str) -> Result<ResourcePattern, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(ResourcePattern {
                kind: None,
                name: None,
            });
        }
        let (kind, name) = text.split_once(':').ok_or_else(|| {
            format!("`{text}` is not a resource pattern: write `kind:name-pattern` (kinds: group, service, topic, ingestion, metrics) or `*`")
        })?;
        let kind = ResourceKind::parse(kind.trim()).ok_or_else(|| {
            format!("`{kind}` in `{text}` is not a resource kind: group, service, topic, ingestion or metrics")
        })?;
        let name = name.trim();
        let name = if name == "*" {
            None
        } else {
            Some(glob::Pattern::new(name).map_err(|e| format!("`{text}`: {e}"))?)
        };
        Ok(ResourcePattern {
            kind: Some(kind),
            name,
        })
    }

    fn covers(&self, kind: ResourceKind, name: &str) -> bool {
        self.kind.is_none_or(|k| k == kind) && self.name.as_ref().is_none_or(|p| p.matches(name))
    }

    fn covers_every(&self, kind: ResourceKind) -> bool {
        self.kind.is_none_or(|k| k == kind) && self.name.is_none()
    }
}

/// Actions on resources matching any of the patterns.
#[derive(Debug, Clone)]
struct Grant {
    actions: u8,
    resources: Vec<ResourcePattern>,
}

/// The roles of a deployment, compiled from the config.
#[derive(Debug, Default)]
pub struct Policy {
    roles: HashMap<String, Arc<Vec<Grant>>>,
}

impl Policy {
    /// The roles as configured, or the first thing wrong with them (naming the role).
    pub fn new(roles: &[RoleConfig]) -> Result<Policy, ConfigError> {
        let mut compiled = HashMap::new();
        for role in roles {
            let name = role.name.trim();
            if name.is_empty() {
                return Err(ConfigError("auth.roles: a role has no name".into()));
            }
            let mut grants = Vec::with_capacity(role.grants.len());
            for (i, grant) in role.grants.iter().enumerate() {
                let at = format!("auth.roles `{name}`, grant {}", i + 1);
                if grant.actions.is_empty() || grant.resources.is_empty() {
                    return Err(ConfigError(format!(
                        "{at}: a grant names at least one action and one resource pattern"
                    )));
                }
                let resources = grant
                    .resources
                    .iter()
                    .map(|r| ResourcePattern::parse(r))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConfigError(format!("{at}: {e}")))?;
                for action in &grant.actions {
                    let kinds = action.applies_to();
                    if !resources
                        .iter()
                        .any(|r| r.kind.is_none_or(|k| kinds.contains(&k)))
                    {
                        let names: Vec<_> = kinds.iter().map(|k| k.as_str()).collect();
                        return Err(ConfigError(format!(
                            "{at}: `{action}` applies to {} resources, and none of the patterns names one",
                            names.join(" or ")
                        )));
                    }
                }
                grants.push(Grant {
                    actions: grant.actions.iter().fold(0, |bits, a| bits | a.bit()),
                    resources,
                });
            }
            if compiled.insert(name.to_owned(), Arc::new(grants)).is_some() {
                return Err(ConfigError(format!(
                    "auth.roles: role `{name}` is defined twice"
                )));
            }
        }
        Ok(Policy { roles: compiled })
    }

    pub fn has_role(&self, name: &str) -> bool {
        self.roles.contains_key(name)
    }

    /// A principal holding `roles`; roles the policy does not define grant nothing.
    pub fn principal(&self, name: String, via: Via, roles: Vec<String>) -> Principal {
        let grants = roles
            .iter()
            .filter_map(|r| self.roles.get(r).cloned())
            .collect();
        Principal {
            name,
            via,
            roles,
            grants,
        }
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    ApiKey,
    Token,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::ApiKey => "api_key",
            Via::Token => "token",
        }
    }
}

/// An authenticated caller and what its roles grant.
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    pub via: Via,
    pub roles: Vec<String>,
    grants: Vec<Arc<Vec<Grant>>>,
}

impl Principal {
    fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.iter().flat_map(|g| g.iter())
    }
}

/// What the caller of one request may do: everything when authentication is off, else what
/// its principal's roles grant.
#[derive(Debug, Clone, Default)]
pub enum Access {
    /// Authentication is off: every action is allowed.
    #[default]
    Open,
    Principal(Arc<Principal>),
}

/// A refused action. Its text names the caller, the action and the resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{who} may not {action} on {kind} `{name}`: no role of it grants that (roles: {roles})")]
pub struct Denied {
    pub who: String,
    pub action: Action,
    pub kind: &'static str,
    pub name: String,
    roles: String,
}

impl Access {
    /// Who the caller is, for messages and the audit log.
    pub fn who(&self) -> &str {
        match self {
            Access::Open => "anonymous",
            Access::Principal(p) => &p.name,
        }
    }

    /// How the caller authenticated: `api_key`, `token`, or `none` with authentication off.
    pub fn via(&self) -> &'static str {
        match self {
            Access::Open => "none",
            Access::Principal(p) => p.via.as_str(),
        }
    }

    /// Whether `action` on the resource `kind` named `name` is allowed.
    pub fn check(&self, action: Action, kind: ResourceKind, name: &str) -> Result<(), Denied> {
        let Access::Principal(p) = self else {
            return Ok(());
        };
        let bit = action.bit();
        if p.grants()
            .any(|g| g.actions & bit != 0 && g.resources.iter().any(|r| r.covers(kind, name)))
        {
            return Ok(());
        }
        Err(self.denied(action, kind, name))
    }

    /// Whether `action` is allowed on every resource of `kind` (a grant of `kind:*` or `*`):
    /// for operations that are not limited to named resources.
    pub fn check_every(&self, action: Action, kind: ResourceKind) -> Result<(), Denied> {
        let Access::Principal(p) = self else {
            return Ok(());
        };
        let bit = action.bit();
        if p.grants()
            .any(|g| g.actions & bit != 0 && g.resources.iter().any(|r| r.covers_every(kind)))
        {
            return Ok(());
        }
        Err(self.denied(action, kind, "*"))
    }

    fn denied(&self, action: Action, kind: ResourceKind, name: &str) -> Denied {
        let (who, roles) = match self {
            Access::Open => ("anonymous".to_owned(), String::new()),
            Access::Principal(p) => (
                format!(
                    "{} `{}`",
                    match p.via {
                        Via::ApiKey => "API key",
                        Via::Token => "token subject",
                    },
                    p.name
                ),
                if p.roles.is_empty() {
                    "none".to_owned()
                } else {
                    p.roles.join(", ")
                },
            ),
        };
        Denied {
            who,
            action,
            kind: kind.as_str(),
            name: name.to_owned(),
            roles,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GrantConfig;

    fn policy() -> Policy {
        Policy::new(&[
            RoleConfig {
                name: "reader".into(),
                grants: vec![GrantConfig {
                    actions: vec![Action::ReadFeatures],
                    resources: vec!["group:user_*".into(), "service:ranking".into()],
                }],
            },
            RoleConfig {
                name: "operator".into(),
                grants: vec![GrantConfig {
                    actions: vec![Action::OperateJobs, Action::OperateDeadLetters],
                    resources: vec!["ingestion:*".into()],
                }],
            },
        ])
        .unwrap()
    }

    fn access(roles: &[&str]) -> Access {
        Access::Principal(Arc::new(policy().principal(
            "ranker".into(),
            Via::ApiKey,
            roles.iter().map(|r| r.to_string()).collect(),
        )))
    }

    #[test]
    fn grants_cover_their_patterns_and_nothing_else() {
        let reader = access(&["reader"]);
        assert!(reader
            .check(Action::ReadFeatures, ResourceKind::Group, "user_profile")
            .is_ok());
        assert!(reader
            .check(Action::ReadFeatures, ResourceKind::Service, "ranking")
            .is_ok());
        let denied = reader
            .check(Action::ReadFeatures, ResourceKind::Group, "article_stats")
            .unwrap_err();
        assert_eq!(
            denied.to_string(),
            "API key `ranker` may not read_features on group `article_stats`: no role of it grants that (roles: reader)"
        );
        assert!(reader
            .check(Action::WriteFeatures, ResourceKind::Group, "user_profile")
            .is_err());
        assert!(reader
            .check_every(Action::OperateDeadLetters, ResourceKind::Ingestion)
            .is_err());
    }

    #[test]
    fn closed_by_default_and_open_without_authentication() {
        let nobody = access(&["no_such_role"]);
        for (action, kind) in [
            (Action::ReadFeatures, ResourceKind::Group),
            (Action::WriteFeatures, ResourceKind::Group),
            (Action::PublishEvents, ResourceKind::Topic),
            (Action::OperateJobs, ResourceKind::Ingestion),
            (Action::ReadMetrics, ResourceKind::Metrics),
        ] {
            assert!(nobody.check(action, kind, "x").is_err(), "{action}");
            assert!(Access::Open.check(action, kind, "x").is_ok());
        }
        let operator = access(&["operator"]);
        assert!(operator
            .check_every(Action::OperateDeadLetters, ResourceKind::Ingestion)
            .is_ok());
    }

    #[test]
    fn misconfigured_roles_are_refused_naming_the_role() {
        let err = Policy::new(&[RoleConfig {
            name: "writer".into(),
            grants: vec![GrantConfig {
                actions: vec![Action::PublishEvents],
                resources: vec!["group:*".into()],
            }],
        }])
        .unwrap_err();
        assert!(
            err.0.contains("`writer`") && err.0.contains("topic"),
            "{err}"
        );
        let err = Policy::new(&[RoleConfig {
            name: "w".into(),
            grants: vec![GrantConfig {
                actions: vec![Action::ReadFeatures],
                resources: vec!["table:*".into()],
            }],
        }])
        .unwrap_err();
        assert!(err.0.contains("`table`"), "{err}");
    }
}
