//! API keys: random secrets handed to clients once, kept by the server only as SHA-256
//! digests, so a config file or an environment dump does not give anyone a key.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use rand::RngCore as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::ApiKeyConfig;
use crate::policy::{Policy, Principal, Via};
use crate::ConfigError;

/// Every key starts with this, so a leaked one is easy to search for.
pub const KEY_PREFIX: &str = "cellar_";

/// A new random key (256 bits) and its digest, as `cellar auth new-key` prints them.
pub fn new_key() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let digest = hex(&digest(&key));
    (key, digest)
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The keys a server accepts, by digest.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Arc<Principal>>,
}

/// The `api_keys_file` format.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    api_keys: Vec<ApiKeyConfig>,
}

impl ApiKeys {
    /// The configured keys and those of `file` (when not empty). Every key's roles must be
    /// defined; a digest given twice is refused.
    pub fn new(
        configured: &[ApiKeyConfig],
        file: &str,
        policy: &Policy,
    ) -> Result<ApiKeys, ConfigError> {
        let mut entries: Vec<(String, ApiKeyConfig)> = configured
            .iter()
            .map(|k| ("auth.api_keys".to_owned(), k.clone()))
            .collect();
        if !file.trim().is_empty() {
            let text = std::fs::read_to_string(file)
                .map_err(|e| ConfigError(format!("auth.api_keys_file `{file}`: {e}")))?;
            let parsed: KeyFile = toml::from_str(&text)
                .map_err(|e| ConfigError(format!("auth.api_keys_file `{file}`: {e}")))?;
            entries.extend(parsed.api_keys.into_iter().map(|k| (file.to_owned(), k)));
        }
        let mut by_digest = HashMap::new();
        for (source, key) in entries {
            let name = key.name.trim();
            if name.is_empty() {
                return Err(ConfigError(format!("{source}: an API key has no name")));
            }
            let digest = parse_hex(&key.sha256).ok_or_else(|| {
                ConfigError(format!(
                    "{source}: API key `{name}`: sha256 must be 64 hex digits (the key's SHA-256, as `cellar auth new-key` prints it), not the key itself"
                ))
            })?;
            if let Some(role) = key.roles.iter().find(|r| !policy.has_role(r)) {
                return Err(ConfigError(format!(
                    "{source}: API key `{name}` has role `{role}`, which auth.roles does not define"
                )));
            }
            let principal = policy.principal(name.to_owned(), Via::ApiKey, key.roles.clone());
            if by_digest.insert(digest, Arc::new(principal)).is_some() {
                return Err(ConfigError(format!(
                    "{source}: API key `{name}` has the same digest as another key"
                )));
            }
        }
        Ok(ApiKeys { by_digest })
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Who `key` belongs to, if anyone.
    pub fn find(&self, key: &str) -> Option<&Arc<Principal>> {
        self.by_digest.get(&digest(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GrantConfig, RoleConfig};
    use crate::policy::Action;

    #[test]
    fn keys_are_found_by_digest_only() {
        let policy = Policy::new(&[RoleConfig {
            name: "reader".into(),
            grants: vec![GrantConfig {
                actions: vec![Action::ReadFeatures],
                resources: vec!["*".into()],
            }],
        }])
        .unwrap();
        let (key, sha256) = new_key();
        assert!(key.starts_with(KEY_PREFIX) && key.len() > 40);
        let keys = ApiKeys::new(
            &[ApiKeyConfig {
                name: "ranker".into(),
                sha256: sha256.clone(),
                roles: vec!["reader".into()],
            }],
            "",
            &policy,
        )
        .unwrap();
        assert_eq!(keys.find(&key).unwrap().name, "ranker");
        assert!(keys.find(&sha256).is_none());
        assert!(keys.find("cellar_wrong").is_none());

        let err = ApiKeys::new(
            &[ApiKeyConfig {
                name: "ranker".into(),
                sha256: key.clone(),
                roles: vec![],
            }],
            "",
            &policy,
        )
        .unwrap_err();
        assert!(err.0.contains("64 hex digits"), "{err}");
        assert!(!err.0.contains(&key), "a message must not echo the key");
        let err = ApiKeys::new(
            &[ApiKeyConfig {
                name: "ranker".into(),
                sha256,
                roles: vec!["admin".into()],
            }],
            "",
            &policy,
        )
        .unwrap_err();
        assert!(err.0.contains("`admin`"), "{err}");
    }
}
