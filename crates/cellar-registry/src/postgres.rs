//! PostgreSQL connection options from a URL, for the registry and the batch sources alike, so
//! both take the same settings the same way: libpq's URL parameters, TLS included
//! (`sslmode` = `disable`, `allow`, `prefer` (the default), `require`, `verify-ca` or
//! `verify-full`; `sslrootcert`, `sslcert`, `sslkey`).
//!
//! Without `sslrootcert`, `verify-ca` and `verify-full` trust the system's roots. The files a
//! URL names are checked here, so a missing one is reported with its parameter rather than as
//! a TLS failure once connected. `allow` is taken as `prefer`: libpq's `allow` tries without
//! TLS first and then with it, while sqlx's never tries TLS and so fails on a server that
//! requires it; `prefer` reaches every server `allow` does, with TLS where it is offered.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// The options `url` stands for, or what is wrong with it. Messages never repeat the URL
/// (it may hold a password).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, String> {
    let mut options = PgConnectOptions::from_str(url).map_err(|e| e.to_string())?;
    if matches!(options.get_ssl_mode(), PgSslMode::Allow) {
        options = options.ssl_mode(PgSslMode::Prefer);
    }
    let params = query_params(url);
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    match (param("sslcert"), param("sslkey")) {
        (Some(_), None) => {
            return Err(
                "`sslkey` is needed with `sslcert`: the client certificate's private key".into(),
            )
        }
        (None, Some(_)) => {
            return Err(
                "`sslcert` is needed with `sslkey`: the client certificate the key belongs to"
                    .into(),
            )
        }
        _ => {}
    }
    for name in ["sslrootcert", "sslcert", "sslkey"] {
        if let Some(path) = param(name) {
            std::fs::File::open(path)
                .map_err(|e| format!("`{name}`: cannot read `{path}`: {e}"))?;
        }
    }
    Ok(options)
}

/// The query parameters of a URL, percent-decoded, in order.
fn query_params(url: &str) -> Vec<(String, String)> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or_default();
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            // The spellings sqlx takes besides libpq's.
            let k = match decode(k).as_str() {
                "ssl-root-cert" | "ssl-ca" => "sslrootcert".to_owned(),
                "ssl-cert" => "sslcert".to_owned(),
                "ssl-key" => "sslkey".to_owned(),
                other => other.to_owned(),
            };
            (k, decode(v))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sslmode_is_taken_and_a_bad_one_is_refused() {
        for (mode, expected) in [
            ("disable", PgSslMode::Disable),
            ("allow", PgSslMode::Prefer),
            ("prefer", PgSslMode::Prefer),
            ("require", PgSslMode::Require),
            ("verify-ca", PgSslMode::VerifyCa),
            ("verify-full", PgSslMode::VerifyFull),
        ] {
            let options = connect_options(&format!("postgres://u@h/db?sslmode={mode}")).unwrap();
            // PgSslMode has no PartialEq.
            assert_eq!(
                format!("{:?}", options.get_ssl_mode()),
                format!("{expected:?}"),
                "{mode}"
            );
        }
        let err = connect_options("postgres://u:hunter2@h/db?sslmode=always").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn certificate_files_are_checked_and_named() {
        let err = connect_options(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        )
        .unwrap_err();
        assert!(
            err.starts_with("`sslrootcert`: cannot read `/nonexistent/ca.pem`"),
            "{err}"
        );
        let err = connect_options("postgres://u@h/db?sslmode=require&sslcert=/c.pem").unwrap_err();
        assert!(err.starts_with("`sslkey` is needed"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("my ca.pem");
        std::fs::write(&ca, "").unwrap();
        let url = format!(
            "postgres://u@h/db?sslmode=verify-ca&sslrootcert={}",
            ca.display().to_string().replace(' ', "%20")
        );
        connect_options(&url).unwrap();
    }
}
