//! The `[auth]` settings.

use serde::{Deserialize, Serialize};

use crate::policy::Action;

/// Authentication and authorization of the HTTP and gRPC APIs. Off by default.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether every request (but `/health`) must carry an API key or an OIDC token.
    pub enabled: bool,
    /// Serve a non-loopback address with authentication off. Without it such a server
    /// refuses to start.
    pub allow_unauthenticated: bool,
    /// Serve `/metrics` without credentials (a Prometheus that cannot send a token).
    pub public_metrics: bool,
    /// API keys, as SHA-256 digests (`cellar auth new-key` makes a key and its entry).
    pub api_keys: Vec<ApiKeyConfig>,
    /// A TOML file of further `[[api_keys]]` entries, read at startup; empty: none.
    pub api_keys_file: String,
    pub oidc: OidcConfig,
    /// Roles, each granting actions on resources by name pattern.
    pub roles: Vec<RoleConfig>,
    /// Where the audit log (one JSON line per write and operator action) is appended; empty
    /// means `<data_dir>/audit.log`.
    pub audit_log: String,
}

/// One API key: who it is, the digest of its secret, and its roles.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who the key belongs to, as messages and the audit log name it.
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    pub roles: Vec<String>,
}

/// OIDC bearer tokens: JWTs signed by the issuer's keys (its JWKS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer (`iss`) tokens must name; empty: tokens are not accepted.
    pub issuer: String,
    /// The audience (`aud`) tokens must name.
    pub audience: String,
    /// Where the issuer's keys are; empty: read from the issuer's
    /// `/.well-known/openid-configuration`.
    pub jwks_url: String,
    /// The claim holding the caller's roles (a list, or a space-separated string); a dotted
    /// path reaches into objects (`realm_access.roles`).
    pub roles_claim: String,
    /// How often the keys are fetched again, seconds; a token signed by a key not yet known
    /// fetches them at once (at most every `min_refetch_secs`).
    pub refresh_secs: u64,
    pub min_refetch_secs: u64,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_secs: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: String::new(),
            roles_claim: "roles".into(),
            refresh_secs: 300,
            min_refetch_secs: 10,
            leeway_secs: 30,
        }
    }
}

/// A role: a name that API keys and tokens carry, and its grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    pub name: String,
    pub grants: Vec<GrantConfig>,
}

/// Actions allowed on the resources matching any pattern: `group:user_*`, `service:ranking`,
/// `topic:*`, `ingestion:ctr_*`, `metrics:*`, or `*` for everything.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub actions: Vec<Action>,
    pub resources: Vec<String>,
}
