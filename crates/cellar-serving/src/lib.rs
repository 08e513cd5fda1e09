//! Cellar's serving layer: one service trait ([`service::FeatureServing`]) that reads features
//! through the cache tiers and writes pushed records to the store, with thin protocol adapters
//! over it:
//!
//! - [`http`]: the HTTP/JSON API (`/v1/features`, `/v1/push`, `/health`, `/metrics`);
//! - [`feast`]: Feast-compatible `/get-online-features`, `/push` and `/write-to-online-store`;
//! - [`error`]: serving errors and the one table mapping them to HTTP and gRPC codes;
//! - [`catalog`]: the applied specs, looked up by name;
//! - [`on_demand`]: on-demand groups, compiled per applied repo and evaluated per request;
//! - [`sources`]: the external HTTP sources on-demand features read, with their timeouts,
//!   breakers and caches;
//! - [`limits`]: what one read may cost, and repeated groups merged;
//! - [`listener`]: serving a router on a TCP listener with timeouts, a connection limit and
//!   load shedding, TLS and authentication;
//! - [`tls`]: the listeners' TLS, reloading renewed certificates;
//! - [`metrics`]: Prometheus request counters and latency histograms.
//!
//! Authorization: every request carries its caller's [`cellar_auth::Access`] (put there by the
//! listener); the service checks it against each group, feature service and push it serves.
//!
//! Depends on `cellar-spec`, `cellar-expr`, `cellar-auth`, `cellar-store` and `cellar-cache`; knows nothing of the registry
//! or of ingestion.

pub mod arrow_answer;
pub mod catalog;
pub mod error;
pub mod feast;
pub mod grpc;
pub mod http;
pub mod json;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod on_demand;
pub mod service;
pub mod sources;
pub mod tls;

pub use catalog::Catalog;
pub use error::{ErrorKind, ServeError};
pub use service::{FeatureServer, FeatureServing, Limits, LoggedRead, ServedLog};
