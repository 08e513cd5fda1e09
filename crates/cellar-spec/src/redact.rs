//! Connection URLs as logs and messages may show them: with their passwords hidden.
//!
//! A URL holds a password after its user name (`scheme://user:password@host/...`) or in a
//! `password` query parameter (`?password=...`, as libpq reads it). Both are shown as `***`;
//! everything else (scheme, user, host, path, other parameters) stays, since it is what tells
//! a reader which database or endpoint failed.

/// `url` with its passwords shown as `***`. `None` when `url` is not a URL (no `scheme://`):
/// only the caller knows whether such text is safe to show (a file path is, a keyword/value
/// connection string may hold a password anywhere).
pub fn redact_url(url: &str) -> Option<String> {
    split(url).map(|(shown, _)| shown)
}

/// A connection URL as messages show it: [`redact_url`], its password hidden whether written
/// out or a secret reference, and other references (`${PG_USER}`) kept as written; a URL that
/// is only references (`${PG_URL}`) as written; other text (a keyword/value connection string,
/// where a password may sit anywhere) as `placeholder`.
pub fn show_url(url: &str, placeholder: &str) -> String {
    // References are set aside first: what one names (`${file:/run/secrets/pg}`) holds
    // slashes, which would end the URL's authority early.
    let Ok((masked, references)) = crate::secret::set_aside(url) else {
        return redact_url(url).unwrap_or_else(|| placeholder.to_owned());
    };
    match redact_url(&masked) {
        Some(shown) => crate::secret::put_back(&shown, &references),
        None if crate::secret::only_references(url) => url.to_owned(),
        None => placeholder.to_owned(),
    }
}

/// [`redact_url`], and the user name dropped too: for URLs whose user is itself a credential
/// (an S3 endpoint's access key id). `None` for text that is not a URL.
pub fn redact_url_and_user(url: &str) -> Option<String> {
    let shown = redact_url(url)?;
    let scheme_end = shown.find("://")? + 3;
    let rest = &shown[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    Some(match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}{}", &shown[..scheme_end], &rest[at + 1..]),
        None => shown,
    })
}

/// `message` with every password of `url` (as written, and percent-decoded) shown as `***`:
/// drivers quote the URL, or the password alone, in their errors. When `url` is not a URL the
/// whole of it is hidden, as it may be a password itself.
pub fn hide_passwords(message: &str, url: &str) -> String {
    let passwords = split(url).map_or_else(
        || vec![url.to_owned()],
        |(_, passwords)| passwords.into_iter().map(|(_, p)| p).collect(),
    );
    let mut out = message.to_owned();
    for password in passwords {
        for form in [percent_decode(&password), password] {
            if !form.is_empty() {
                out = out.replace(&form, "***");
            }
        }
    }
    out
}

/// Where a URL holds a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordPlace {
    /// `scheme://user:password@host`.
    UserInfo,
    /// `?password=...`.
    Parameter,
}

impl std::fmt::Display for PasswordPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PasswordPlace::UserInfo => "after the user name",
            PasswordPlace::Parameter => "in its `password` parameter",
        })
    }
}

/// The passwords `url` holds, as written, with where each is; `None` for text that is not a
/// URL.
pub fn passwords(url: &str) -> Option<Vec<(PasswordPlace, String)>> {
    split(url).map(|(_, passwords)| passwords)
}

/// The URL as shown, and the passwords it holds; `None` for text that is not a URL.
fn split(url: &str) -> Option<(String, Vec<(PasswordPlace, String)>)> {
    let scheme_end = url.find("://")? + 3;
    let mut passwords = Vec::new();
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut shown = url[..scheme_end].to_owned();
    match authority.rfind('@') {
        Some(at) => {
            let (user_info, host) = authority.split_at(at);
            match user_info.split_once(':') {
                Some((user, password)) => {
                    passwords.push((PasswordPlace::UserInfo, password.to_owned()));
                    shown.push_str(user);
                    shown.push_str(":***");
                }
                None => shown.push_str(user_info),
            }
            shown.push_str(host);
        }
        None => shown.push_str(authority),
    }
    match tail.split_once('?') {
        Some((path, params)) => {
            shown.push_str(path);
            shown.push('?');
            let params: Vec<String> = params
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((key, value)) if key.eq_ignore_ascii_case("password") => {
                        let value = value.split('#').next().unwrap_or(value);
                        passwords.push((PasswordPlace::Parameter, value.to_owned()));
                        format!("{key}=***")
                    }
                    _ => p.to_owned(),
                })
                .collect();
            shown.push_str(&params.join("&"));
        }
        None => shown.push_str(tail),
    }
    Some((shown, passwords))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(url: &str) -> String {
        redact_url(url).expect("a URL")
    }

    #[test]
    fn only_the_password_after_the_user_is_hidden() {
        assert_eq!(
            shown("postgres://cellar:s3cret@db:5432/cellar?sslmode=require"),
            "postgres://cellar:***@db:5432/cellar?sslmode=require"
        );
        assert_eq!(
            shown("postgres://me:p%40ss@db:5432/app?sslmode=require"),
            "postgres://me:***@db:5432/app?sslmode=require"
        );
        assert_eq!(
            shown("http://ak:secret@127.0.0.1:9000/x"),
            "http://ak:***@127.0.0.1:9000/x"
        );
    }

    #[test]
    fn user_names_that_are_credentials_can_be_dropped_whole() {
        assert_eq!(
            redact_url_and_user("http://AKIAEXAMPLE:secret@minio:9000/bucket").as_deref(),
            Some("http://minio:9000/bucket")
        );
        assert_eq!(
            redact_url_and_user("https://AKIAEXAMPLE@s3.example.com").as_deref(),
            Some("https://s3.example.com")
        );
        assert_eq!(
            redact_url_and_user("http://127.0.0.1:8014/a@b").as_deref(),
            Some("http://127.0.0.1:8014/a@b")
        );
        assert_eq!(redact_url_and_user("not a url"), None);
    }

    #[test]
    fn secret_references_are_kept_but_not_a_password_reference() {
        assert_eq!(
            show_url(
                "postgres://${PG_USER}:${file:/run/secrets/pg}@db:5432/app?sslmode=require",
                "-"
            ),
            "postgres://${PG_USER}:***@db:5432/app?sslmode=require"
        );
        assert_eq!(
            show_url("postgres://u@db/app?password=${PG_PASSWORD}", "-"),
            "postgres://u@db/app?password=***"
        );
        assert_eq!(show_url("${PG_URL}", "-"), "${PG_URL}");
        assert_eq!(show_url("host=db password=${PG_PASSWORD}", "-"), "-");
        assert_eq!(
            show_url("postgres://u:hush@db/app", "-"),
            "postgres://u:***@db/app"
        );
    }

    #[test]
    fn password_parameters_are_hidden() {
        assert_eq!(
            shown("postgres://db/app?user=me&password=hush&sslmode=disable"),
            "postgres://db/app?user=me&password=***&sslmode=disable"
        );
    }

    #[test]
    fn urls_without_a_password_are_shown_as_they_are() {
        for url in [
            "postgres://postgres@127.0.0.1/postgres",
            "postgres://me@db/app",
            "sqlite://data/registry.db",
            "https://s3.example",
        ] {
            assert_eq!(shown(url), url);
        }
    }

    #[test]
    fn text_that_is_not_a_url_is_left_to_the_caller() {
        assert_eq!(redact_url("registry.db"), None);
        assert_eq!(redact_url("host=db password=hush"), None);
        assert_eq!(
            hide_passwords(
                "cannot parse host=db password=hush",
                "host=db password=hush"
            ),
            "cannot parse ***"
        );
    }

    #[test]
    fn passwords_are_hidden_in_messages_as_written_and_decoded() {
        assert_eq!(
            hide_passwords(
                "auth failed for p@ss and p%40ss",
                "postgres://me:p%40ss@db/app"
            ),
            "auth failed for *** and ***"
        );
        assert_eq!(
            hide_passwords("bad password hush", "postgres://db/app?password=hush"),
            "bad password ***"
        );
    }
}
