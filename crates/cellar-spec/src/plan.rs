//! Plans: what applying a repo over the registry's current one would do.

use serde::{Deserialize, Serialize};

use crate::repo::{FeatureRepo, SpecKind};

/// The changes from one repo to another.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Plan {
    pub changes: Vec<Change>,
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
pub fn plan(current: &FeatureRepo, desired: &FeatureRepo) -> Plan {
    let _ = (current, desired);
    todo!("plan")
}
