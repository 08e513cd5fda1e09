//! Who may do what in Cellar.
//!
//! - [`config`]: the `[auth]` settings;
//! - [`keys`]: API keys, kept as SHA-256 digests;
//! - [`oidc`]: OIDC bearer tokens checked against the issuer's JWKS;
//! - [`policy`]: roles granting actions on resources by name pattern, closed by default, and
//!   the [`Access`] every endpoint checks;
//! - [`audit`]: the audit log of writes and operator actions;
//! - [`console`]: how the web console carries a credential: a cookie, on its own pages only.
//!
//! The listeners authenticate a request before any handler runs ([`Authenticator`]) and put
//! its [`Access`] into the request's extensions; handlers check it against the resources the
//! request names once they have parsed them.

pub mod audit;
pub mod config;
pub mod console;
pub mod keys;
pub mod oidc;
pub mod policy;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};

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
    #[error("a change made with the console's cookie must come from the console's own pages (the Origin header does not match the Host)")]
    CrossOrigin,
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
        path == "/health"
            || (self.public_metrics && path == "/metrics")
            || path == console::LOGIN_PATH
            || path.starts_with(console::ASSETS_PREFIX)
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
        self.authenticate_credential(credential.trim()).await
    }

    /// The caller's access, from its `Authorization` header or, on the console's pages only,
    /// from the console's cookie. A request that changes something with the cookie must come
    /// from the console's own origin: a browser sends the cookie with whatever page made the
    /// request, so the origin is what tells the console's forms from another site's.
    pub async fn authenticate_request(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Access, Unauthenticated> {
        if headers.contains_key(header::AUTHORIZATION) || !console::is_console_path(path) {
            return self.authenticate(headers).await;
        }
        let credential = console::cookie_credential(headers).ok_or(Unauthenticated::Missing)?;
        if !method.is_safe() && !console::same_origin(headers) {
            return Err(Unauthenticated::CrossOrigin);
        }
        self.authenticate_credential(credential).await
    }

    /// The access an API key or OIDC token gives.
    pub async fn authenticate_credential(
        &self,
        credential: &str,
    ) -> Result<Access, Unauthenticated> {
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
