//! Redis clients, standalone and cluster, built in one place for the store and the cache's
//! remote tier: a `rediss://` URL speaks TLS, verified against the system's roots or the CA
//! file given, with a client certificate when the server asks for one.

use redis::cluster::ClusterClientBuilder;
use redis::{ClientTlsConfig, TlsCertificates};

/// TLS settings of a Redis connection besides its `rediss://` URL. Empty strings are unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM file of the CAs that sign the server's certificate; unset: the system's roots.
    pub ca_file: String,
    /// PEM client certificate, for servers run with `tls-auth-clients yes`.
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
}

/// What is wrong with a Redis connection's settings, naming the setting under the section
/// (such as `store.redis`) they were given in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct RedisSettingError {
    pub setting: String,
    pub problem: String,
}

impl RedisTls {
    fn is_set(&self) -> bool {
        [&self.ca_file, &self.cert_file, &self.key_file]
            .iter()
            .any(|v| !v.trim().is_empty())
    }

    /// The certificates to hand the client, read from their files; `None` when nothing is
    /// set (a `rediss://` URL then trusts the system's roots).
    fn certificates(
        &self,
        section: &str,
        prefix: &str,
    ) -> Result<Option<TlsCertificates>, RedisSettingError> {
        if !self.is_set() {
            return Ok(None);
        }
        let wrong = |setting: &str, problem: String| RedisSettingError {
            setting: format!("{section}.{prefix}{setting}"),
            problem,
        };
        let read = |setting: &str, path: &str| {
            std::fs::read(path.trim())
                .map_err(|e| wrong(setting, format!("cannot read `{}`: {e}", path.trim())))
        };
        let root_cert = match self.ca_file.trim() {
            "" => None,
            path => Some(read("ca_file", path)?),
        };
        let client_tls = match (self.cert_file.trim(), self.key_file.trim()) {
            ("", "") => None,
            (_, "") => {
                return Err(wrong(
                    "key_file",
                    format!(
                        "is needed with {prefix}cert_file: the client certificate's private key"
                    ),
                ))
            }
            ("", _) => {
                return Err(wrong(
                    "cert_file",
                    format!(
                    "is needed with {prefix}key_file: the client certificate the key belongs to"
                ),
                ))
            }
            (cert, key) => Some(ClientTlsConfig {
                client_cert: read("cert_file", cert)?,
                client_key: read("key_file", key)?,
            }),
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

fn is_tls_url(url: &str) -> bool {
    url.trim_start().starts_with("rediss://")
}

/// Refuses TLS files with a URL that does not speak TLS, where they would be ignored.
fn check_scheme(
    urls: &[&str],
    tls: &RedisTls,
    section: &str,
    prefix: &str,
    url_setting: &str,
) -> Result<(), RedisSettingError> {
    if tls.is_set() && urls.iter().any(|u| !is_tls_url(u)) {
        let setting = [
            ("ca_file", &tls.ca_file),
            ("cert_file", &tls.cert_file),
            ("key_file", &tls.key_file),
        ]
        .into_iter()
        .find(|(_, v)| !v.trim().is_empty())
        .map_or("ca_file", |(s, _)| s);
        return Err(RedisSettingError {
            setting: format!("{section}.{prefix}{setting}"),
            problem: format!(
                "is a TLS setting, but {section}.{url_setting} is not a `rediss://` URL: TLS needs `rediss://`"
            ),
        });
    }
    Ok(())
}

fn invalid(section: &str, url_setting: &str, e: &redis::RedisError) -> RedisSettingError {
    RedisSettingError {
        setting: format!("{section}.{url_setting}"),
        // The error of an invalid URL does not repeat the URL, which may hold a password.
        problem: format!("invalid Redis URL: {e}"),
    }
}

/// A client of the standalone Redis at `url`. `section` and `prefix` name the settings in
/// errors: `("store.redis", "")` gives `store.redis.ca_file`, `("cache", "remote_")` gives
/// `cache.remote_ca_file`.
pub fn client(
    url: &str,
    tls: &RedisTls,
    section: &str,
    prefix: &str,
) -> Result<redis::Client, RedisSettingError> {
    let url_setting = format!("{prefix}url");
    check_scheme(&[url], tls, section, prefix, &url_setting)?;
    match tls.certificates(section, prefix)? {
        None => redis::Client::open(url).map_err(|e| invalid(section, &url_setting, &e)),
        Some(certificates) => redis::Client::build_with_tls(url, certificates)
            .map_err(|e| invalid(section, &url_setting, &e)),
    }
}

/// A builder of a client of the Redis Cluster whose seed nodes are `urls`; errors name the
/// settings as [`client`]'s do.
pub fn cluster_client(
    urls: &[String],
    tls: &RedisTls,
    section: &str,
    prefix: &str,
) -> Result<ClusterClientBuilder, RedisSettingError> {
    let url_setting = format!("{prefix}urls");
    let seeds: Vec<&str> = urls.iter().map(String::as_str).collect();
    check_scheme(&seeds, tls, section, prefix, &url_setting)?;
    if seeds.iter().any(|u| is_tls_url(u)) && !seeds.iter().all(|u| is_tls_url(u)) {
        return Err(RedisSettingError {
            setting: format!("{section}.{url_setting}"),
            problem: "mixes `redis://` and `rediss://`: a cluster's nodes all speak TLS or none"
                .to_owned(),
        });
    }
    let builder = ClusterClientBuilder::new(seeds);
    Ok(match tls.certificates(section, prefix)? {
        None => builder,
        Some(certificates) => builder.certs(certificates),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_need_a_tls_url_and_each_other() {
        let ca = RedisTls {
            ca_file: "/ca.pem".into(),
            ..RedisTls::default()
        };
        let err = client("redis://127.0.0.1:6379", &ca, "store.redis", "").unwrap_err();
        assert_eq!(err.setting, "store.redis.ca_file");
        assert!(err.problem.contains("`rediss://`"), "{err}");

        let err = cluster_client(
            &["rediss://a:1".into(), "redis://b:1".into()],
            &RedisTls::default(),
            "cache",
            "remote_",
        )
        .err()
        .unwrap();
        assert_eq!(err.setting, "cache.remote_urls");

        let cert_only = RedisTls {
            cert_file: "/c.pem".into(),
            ..RedisTls::default()
        };
        let err = client("rediss://127.0.0.1:6390", &cert_only, "cache", "remote_").unwrap_err();
        assert_eq!(err.setting, "cache.remote_key_file");

        let missing = RedisTls {
            ca_file: "/nonexistent/ca.pem".into(),
            ..RedisTls::default()
        };
        let err = client("rediss://127.0.0.1:6390", &missing, "store.redis", "").unwrap_err();
        assert_eq!(
            err.to_string(),
            "store.redis.ca_file: cannot read `/nonexistent/ca.pem`: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let err = client(
            "redis://:hunter2@host:notaport",
            &RedisTls::default(),
            "store.redis",
            "",
        )
        .unwrap_err();
        assert_eq!(err.setting, "store.redis.url");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
