//! The web console's credential: the API key or OIDC token its sign-in form was given, kept
//! by the browser in an `HttpOnly`, `SameSite=Strict` cookie and accepted on the console's
//! own paths only (the API still wants an `Authorization` header). The server keeps nothing.

use axum::http::{header, HeaderMap};

/// The cookie's name.
pub const COOKIE: &str = "cellar_console";
/// The sign-in page, served to callers without credentials.
pub const LOGIN_PATH: &str = "/ui/login";
/// The console's stylesheet and icons: nothing secret, served to the sign-in page too.
pub const ASSETS_PREFIX: &str = "/ui/assets/";

/// Whether `path` is one of the console's: `/ui` and below, and the job pages alerts link to.
pub fn is_console_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/") || path.starts_with("/jobs/")
}

/// The credential in the console's cookie, if the request carries one.
pub fn cookie_credential(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// Whether a credential can be kept in the cookie as it is: API keys and JWTs are made of
/// these characters, and anything else would need quoting a browser may not send back alike.
pub fn fits_cookie(credential: &str) -> bool {
    !credential.is_empty()
        && credential.len() <= 8192
        && credential.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'+' | b'/' | b'=')
        })
}

/// The `Set-Cookie` value that keeps `credential` for the browser's session; `secure` when
/// the console is served over TLS.
pub fn set_cookie(credential: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={credential}; Path=/; HttpOnly; SameSite=Strict{secure}")
}

/// The `Set-Cookie` value that signs the browser out.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Whether the request's `Origin` is the host it was sent to. Browsers send `Origin` with
/// every form post and script request; one without it is not taken as the console's.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; cellar_console=key_123; b=2")]);
        assert_eq!(cookie_credential(&h), Some("key_123"));
        let h = headers(&[("cookie", "a=1"), ("cookie", "cellar_console=k")]);
        assert_eq!(cookie_credential(&h), Some("k"));
        assert_eq!(
            cookie_credential(&headers(&[("cookie", "cellar_console=")])),
            None
        );
        assert_eq!(
            cookie_credential(&headers(&[("cookie", "xcellar_console=k")])),
            None
        );
    }

    #[test]
    fn only_the_consoles_own_origin_may_change_things() {
        let own = headers(&[
            ("origin", "http://127.0.0.1:6566"),
            ("host", "127.0.0.1:6566"),
        ]);
        assert!(same_origin(&own));
        let other_port = headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:6566"),
        ]);
        assert!(!same_origin(&other_port));
        let other_site = headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:6566"),
        ]);
        assert!(!same_origin(&other_site));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:6566")])));
        assert!(!same_origin(&headers(&[
            ("origin", "null"),
            ("host", "127.0.0.1:6566")
        ])));
    }

    #[test]
    fn credentials_that_need_quoting_are_not_kept() {
        assert!(fits_cookie("cellar_ab12-CD.ef~"));
        assert!(!fits_cookie("a;b"));
        assert!(!fits_cookie("a b"));
        assert!(!fits_cookie(""));
        assert!(set_cookie("k", true).ends_with("; Secure"));
    }

    #[test]
    fn console_paths_are_the_ui_and_the_job_pages() {
        assert!(is_console_path("/ui"));
        assert!(is_console_path("/ui/groups/x"));
        assert!(is_console_path("/jobs/7"));
        assert!(!is_console_path("/v1/jobs/7"));
        assert!(!is_console_path("/uix"));
    }
}
