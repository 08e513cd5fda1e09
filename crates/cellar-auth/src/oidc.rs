//! OIDC bearer tokens: JWTs checked against the issuer's published keys (JWKS) for signature,
//! issuer, audience and expiry. The keys are cached, fetched again every `refresh_secs`, and
//! at once (rate-limited) when a token names a key not yet seen: that is how a key rotation is
//! picked up without a restart.
//!
//! A verified token is remembered (by its text) until it expires, for at most
//! [`VERIFIED_FOR`]: a client sends the same token with every request, and checking an ECDSA
//! or RSA signature costs more than serving a cached read. So a token signed by a key the
//! issuer has since withdrawn passes for at most that long.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::OidcConfig;
use crate::policy::{Policy, Principal, Via};
use crate::{ConfigError, Unauthenticated};

/// How long a verified token is remembered.
pub const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Most verified tokens remembered.
const VERIFIED_MAX: u64 = 10_000;

/// The signature families a JWKS key can verify. HMAC is not one: a JWKS is public, and a
/// token "signed" with a public key as an HMAC secret must not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

fn family_of_alg(alg: Algorithm) -> Option<Family> {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
    }
}

struct Key {
    key: DecodingKey,
    family: Family,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    fetched: Option<Instant>,
}

/// Checks tokens of one issuer.
pub struct Oidc {
    issuer: String,
    audience: String,
    jwks_url: String,
    roles_claim: Vec<String>,
    refresh: Duration,
    min_refetch: Duration,
    leeway: u64,
    http: reqwest::Client,
    keys: RwLock<Arc<Keys>>,
    /// One fetch at a time; the others wait for its keys.
    fetching: tokio::sync::Mutex<()>,
    /// Tokens verified lately: the principal and the token's expiry (epoch seconds).
    verified: moka::sync::Cache<String, (Arc<Principal>, u64)>,
}

#[derive(Deserialize)]
struct Discovery {
    jwks_uri: String,
}

impl Oidc {
    /// `None` when no issuer is configured.
    pub fn new(config: &OidcConfig, http: reqwest::Client) -> Result<Option<Oidc>, ConfigError> {
        let issuer = config.issuer.trim();
        if issuer.is_empty() {
            return Ok(None);
        }
        if config.audience.trim().is_empty() {
            return Err(ConfigError(
                "auth.oidc.audience: set the audience tokens must be issued for (a token for another service must not pass)".into(),
            ));
        }
        let jwks_url = if config.jwks_url.trim().is_empty() {
            String::new()
        } else {
            config.jwks_url.trim().to_owned()
        };
        Ok(Some(Oidc {
            issuer: issuer.to_owned(),
            audience: config.audience.trim().to_owned(),
            jwks_url,
            roles_claim: config.roles_claim.split('.').map(str::to_owned).collect(),
            refresh: Duration::from_secs(config.refresh_secs.max(1)),
            min_refetch: Duration::from_secs(config.min_refetch_secs),
            leeway: config.leeway_secs,
            http,
            keys: RwLock::new(Arc::default()),
            fetching: tokio::sync::Mutex::new(()),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_MAX)
                .time_to_live(VERIFIED_FOR)
                .build(),
        }))
    }

    /// The principal a token stands for, or why it does not pass.
    pub async fn verify(
        &self,
        token: &str,
        policy: &Policy,
    ) -> Result<Arc<Principal>, Unauthenticated> {
        if let Some((principal, exp)) = self.verified.get(token) {
            let now = cellar_spec::time::now_ms().max(0) as u64 / 1000;
            if now < exp.saturating_add(self.leeway) {
                return Ok(principal);
            }
            self.verified.invalidate(token);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Unauthenticated::InvalidToken(format!("not a JWT: {e}")))?;
        let family = family_of_alg(header.alg).ok_or_else(|| {
            Unauthenticated::InvalidToken(format!(
                "algorithm {:?} is not accepted: tokens must be signed with the issuer's keys (RS*, PS*, ES*, EdDSA)",
                header.alg
            ))
        })?;
        let kid = header.kid.unwrap_or_default();
        let key = self.key(&kid).await?;
        if key.family != family {
            return Err(Unauthenticated::InvalidToken(format!(
                "algorithm {:?} does not match the type of key `{kid}`",
                header.alg
            )));
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                Unauthenticated::InvalidToken(match e.kind() {
                    K::ExpiredSignature => "the token has expired".into(),
                    K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
                    K::InvalidSignature => "the token's signature does not verify".into(),
                    K::InvalidIssuer => format!("the token's issuer is not `{}`", self.issuer),
                    K::InvalidAudience => {
                        format!("the token's audience is not `{}`", self.audience)
                    }
                    K::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
                    _ => format!("the token does not verify: {e}"),
                })
            })?;
        let claims = data.claims;
        let name = ["sub", "client_id", "azp"]
            .iter()
            .find_map(|c| claims.get(c).and_then(|v| v.as_str()))
            .unwrap_or("unnamed")
            .to_owned();
        let principal = Arc::new(policy.principal(name, Via::Token, self.roles(&claims)));
        // `exp` was required and checked above.
        if let Some(exp) = claims.get("exp").and_then(|e| e.as_u64()) {
            self.verified
                .insert(token.to_owned(), (principal.clone(), exp));
        }
        Ok(principal)
    }

    fn roles(&self, claims: &serde_json::Value) -> Vec<String> {
        let mut at = claims;
        for part in &self.roles_claim {
            match at.get(part) {
                Some(v) => at = v,
                None => return Vec::new(),
            }
        }
        match at {
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            serde_json::Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        }
    }

    /// The key `kid`, fetching the JWKS when it is stale or does not hold that key.
    async fn key(&self, kid: &str) -> Result<Arc<Key>, Unauthenticated> {
        let current = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let fresh = current.fetched.is_some_and(|t| t.elapsed() < self.refresh);
        if let Some(key) = current.by_kid.get(kid) {
            if fresh {
                return Ok(key.clone());
            }
        }
        let _fetching = self.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let current = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let fresh = current.fetched.is_some_and(|t| t.elapsed() < self.refresh);
        let may_refetch = current
            .fetched
            .is_none_or(|t| t.elapsed() >= self.min_refetch);
        let known = current.by_kid.get(kid).cloned();
        if let (Some(key), true) = (&known, fresh) {
            return Ok(key.clone());
        }
        if !fresh || (known.is_none() && may_refetch) {
            match self.fetch().await {
                Ok(keys) => {
                    let keys = Arc::new(keys);
                    *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys.clone();
                    if let Some(key) = keys.by_kid.get(kid) {
                        return Ok(key.clone());
                    }
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.issuer, error = %e, "fetching the issuer's keys failed");
                    if let Some(key) = known {
                        // Keep verifying with the keys we have while the issuer is down.
                        return Ok(key);
                    }
                    return Err(Unauthenticated::InvalidToken(format!(
                        "the issuer's keys cannot be fetched: {e}"
                    )));
                }
            }
        }
        known.ok_or_else(|| {
            Unauthenticated::InvalidToken(format!(
                "the token's key `{kid}` is not one of the issuer's keys"
            ))
        })
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let url = if self.jwks_url.is_empty() {
            let discovery = format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            );
            self.get_json::<Discovery>(&discovery).await?.jwks_uri
        } else {
            self.jwks_url.clone()
        };
        let set: JwkSet = self.get_json(&url).await?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let family = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Family::Rsa,
                AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                AlgorithmParameters::OctetKey(_) => continue,
            };
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            by_kid.insert(kid, Arc::new(Key { key, family }));
        }
        Ok(Keys {
            by_kid,
            fetched: Some(Instant::now()),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: {}", resp.status()));
        }
        resp.json::<T>()
            .await
            .map_err(|e| format!("GET {url}: {}", e.without_url()))
    }
}
