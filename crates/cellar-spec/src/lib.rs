//! Cellar's spec layer: the model of a feature repo (entities, feature groups, ingestions,
//! feature services), its YAML format, validation that reports every error with file and line,
//! and the plan diff between two repos.
//!
//! Layout:
//! - [`model`]: the spec types, plain serializable data;
//! - [`value`]: feature value types, values, and their JSON forms;
//! - [`key`]: canonical entity keys;
//! - [`aggregate`]: how windowed aggregates are kept, and the worst-case size of their state;
//! - [`limits`]: the bounds of keys, event times and durations entering Cellar;
//! - [`repo`]: a whole feature repo and its lookups;
//! - [`parse`]: YAML text to a validated [`FeatureRepo`], collecting every error;
//! - [`evolve`]: a repo from YAML laid over the applied one, so stored records keep their meaning;
//! - [`plan`]: what applying one repo over another adds, changes (breaking or not) and removes;
//! - [`redact`]: connection URLs with their passwords hidden, for logs and messages;
//! - [`secret`]: `${NAME}` and `${file:PATH}` references to secrets, resolved when a client is built;
//! - [`time`]: the wall clock in milliseconds since the epoch, the one `now_ms` of every crate.
//!
//! This crate does no IO (callers hand it file names and text; it only reads the clock, and the
//! environment and secret files when a caller resolves a secret reference) and
//! depends on no other Cellar crate: every other crate depends on it.

pub mod aggregate;
pub mod evolve;
pub mod key;
pub mod limits;
pub mod model;
pub mod parse;
pub mod plan;
pub mod redact;
pub mod repo;
pub mod secret;
pub mod time;
pub mod value;

pub use evolve::evolve;
pub use key::{EntityKey, KeyError, KeyPart};
pub use model::*;
pub use parse::{parse_repo, parse_repo_with, SpecError, SpecErrors};
pub use plan::{plan, Change, ChangeAction, Plan};
pub use repo::{FeatureRepo, SpecKind};
pub use value::{ScalarType, Value, ValueError, ValueType};
