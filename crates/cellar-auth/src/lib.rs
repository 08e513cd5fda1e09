//! Who may do what in Cellar.
//!
//! - [`config`]: the `[auth]` settings;
//! - [`keys`]: API keys, kept as SHA-256 digests;
//! - [`oidc`]: OIDC bearer tokens checked against the issuer's JWKS;
//! - [`policy`]: roles granting actions on resources by name pattern, closed by default, and
//!   the [`Access`] every endpoint checks;
//! - [`audit`]: the audit log of writes and operator actions.
//!
//! The listeners authenticate a request before any handler runs ([`Authenticator`]) and put
//! its [`Access`] into the request's extensions; handlers check it against the resources the
//! request names once they have parsed them.

pub mod audit;
pub mod config;
pub mod keys;
pub mod oidc;
pub mod policy;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};

pub use audit::Audit;
pub use config::AuthConfig;
pub use policy::{Access, Action, Denied, Principal, ResourceKind};

use keys::ApiKeys;
use oidc::Oidc;
use policy::Policy;

/// A setting of `[auth]` that cannot work; the text names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Why a request's credentials were not accepted (401). The text tells the caller what to
/// send; it never echoes the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("no credentials: send `Authorization: Bearer <API key or OIDC token>`")]
    Missing,
    #[error("the Authorization header is not `Bearer <API key or OIDC token>`")]
    Malformed,
    #[error("unknown API key")]
    UnknownKey,
    #[error("this server does not accept OIDC tokens (auth.oidc.issuer is not set)")]
    TokensNotAccepted,
    #[error("invalid token: {0}")]
    InvalidToken(String),
}

/// Checks the credentials of requests.
pub struct Authenticator {
    policy: Policy,
    keys: ApiKeys,
    oidc: Option<Oidc>,
    public_metrics: bool,
}

impl Authenticator {
    /// The authenticator `config` describes; `None` when authentication is off.
    pub fn new(
        config: &AuthConfig,
        http: reqwest::Client,
    ) -> Result<Option<Arc<Authenticator>>, ConfigError> {
        if !config.enabled {
            return Ok(None);
        }
        let policy = Policy::new(&config.roles)?;
        let keys = ApiKeys::new(&config.api_keys, &config.api_keys_file, &policy)?;
        let oidc = Oidc::new(&config.oidc, http)?;
        if keys.is_empty() && oidc.is_none() {
            return Err(ConfigError(
                "auth.enabled is true, but there are no API keys (auth.api_keys, auth.api_keys_file) and no OIDC issuer (auth.oidc.issuer): nobody could call the server".into(),
            ));
        }
        Ok(Some(Arc::new(Authenticator {
            policy,
            keys,
            oidc,
            public_metrics: config.public_metrics,
        })))
    }

    /// Whether `path` is served without credentials: health checks (load balancers), and
    /// `/metrics` when so configured.
    pub fn is_public(&self, path: &str) -> bool {
        path == "/health" || (self.public_metrics && path == "/metrics")
    }

    /// The caller's access, from its `Authorization` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Access, Unauthenticated> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(Unauthenticated::Missing)?;
        let value = value.to_str().map_err(|_| Unauthenticated::Malformed)?;
        let (scheme, credential) = value
            .trim()
            .split_once(' ')
            .ok_or(Unauthenticated::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Unauthenticated::Malformed);
        }
        let credential = credential.trim();
        // A JWT is three base64url parts joined by dots; an API key has no dot.
        if credential.bytes().filter(|&b| b == b'.').count() == 2 {
            let oidc = self
                .oidc
                .as_ref()
                .ok_or(Unauthenticated::TokensNotAccepted)?;
            let principal = oidc.verify(credential, &self.policy).await?;
            return Ok(Access::Principal(principal));
        }
        self.keys
            .find(credential)
            .map(|p| Access::Principal(p.clone()))
            .ok_or(Unauthenticated::UnknownKey)
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No key digests, no claims: only what is configured.
        f.debug_struct("Authenticator")
            .field("api_keys", &!self.keys.is_empty())
            .field("oidc", &self.oidc.is_some())
            .field("public_metrics", &self.public_metrics)
            .finish()
    }
}

/// Handlers take the request's [`Access`] as an extractor. A request that did not pass
/// through an authenticating listener (authentication off) is [`Access::Open`].
impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Access, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Access>()
            .cloned()
            .unwrap_or_default())
    }
}
