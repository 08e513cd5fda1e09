//! Secret references: settings and specs name a secret instead of holding it.
//!
//! A text may refer to secrets as `${NAME}` (the environment variable `NAME`) or
//! `${file:PATH}` (the contents of the file at `PATH`, without its trailing newline). The text
//! with its references is what configs and the registry keep; [`resolve`] replaces them when a
//! client is built, so the secret itself lives only in that client. `$${` writes a literal `${`.
//!
//! A resolved value is held as a [`Secret`], whose `Debug` and `Display` show `***`, so that
//! logging a settings struct cannot print it.

use std::fmt;

use crate::redact;

/// A resolved secret value. Shown as `***`; [`Secret::expose`] gives the value to the one
/// place that must send it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the client that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why a reference could not be resolved. Names the reference, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable `{0}` is not set (referred to as `${{{0}}}`)")]
    MissingVar(String),
    #[error("secret file `{path}` cannot be read: {reason}")]
    File { path: String, reason: String },
    #[error("`${{{0}}}` is not a secret reference: write `${{NAME}}` (an environment variable, letters, digits and `_`) or `${{file:PATH}}`; `$${{` writes a literal `${{`")]
    Malformed(String),
    #[error("a `${{` is not closed by `}}`")]
    Unclosed,
}

/// One reference found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference<'a> {
    Var(&'a str),
    File(&'a str),
}

/// Where references are looked up: the process's environment and files by default, a map in
/// tests.
pub trait Lookup {
    fn var(&self, name: &str) -> Option<String>;
    fn file(&self, path: &str) -> Result<String, String>;
}

/// The process's environment variables and files.
pub struct System;

impl Lookup for System {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn file(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| e.to_string())
    }
}

/// `text` with its references replaced from the environment and files.
pub fn resolve(text: &str) -> Result<Secret, SecretError> {
    resolve_with(text, &System)
}

/// `text` with its references replaced from `lookup`.
pub fn resolve_with(text: &str, lookup: &dyn Lookup) -> Result<Secret, SecretError> {
    let mut out = String::with_capacity(text.len());
    walk(text, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(Reference::Var(name)) => {
                let value = lookup
                    .var(name)
                    .ok_or_else(|| SecretError::MissingVar(name.to_owned()))?;
                out.push_str(&value);
            }
            Piece::Ref(Reference::File(path)) => {
                let value = lookup.file(path).map_err(|reason| SecretError::File {
                    path: path.to_owned(),
                    reason,
                })?;
                out.push_str(value.strip_suffix('\n').unwrap_or(&value));
            }
        }
        Ok(())
    })?;
    Ok(Secret(out))
}

/// The references `text` holds, or what is malformed in it.
pub fn references(text: &str) -> Result<Vec<Reference<'_>>, SecretError> {
    let mut found = Vec::new();
    walk(text, |piece| {
        if let Piece::Ref(r) = piece {
            found.push(r);
        }
        Ok(())
    })?;
    Ok(found)
}

/// Where `url` holds a password written out rather than referred to (`after the user name`,
/// ...), or `None`; an error when one of its references is malformed. A keyword/value
/// connection string (`host=db password=...`) is checked for its `password` setting.
pub fn literal_password(url: &str) -> Result<Option<String>, SecretError> {
    // References are masked first: what one names (a file's path holds slashes) must not be
    // read as part of the URL.
    let masked = mask(url)?;
    let written_out = |p: &str| !p.is_empty() && !p.chars().all(|c| c == MASK);
    Ok(match redact::passwords(&masked) {
        Some(found) => found
            .into_iter()
            .find(|(_, p)| written_out(p))
            .map(|(place, _)| place.to_string()),
        None => masked
            .split_whitespace()
            .filter_map(|setting| setting.split_once('='))
            .any(|(key, value)| key.eq_ignore_ascii_case("password") && written_out(value))
            .then(|| "in its `password` setting".to_owned()),
    })
}

/// Whether `text` is nothing but references (`${PG_URL}`): safe to show as it is.
pub fn only_references(text: &str) -> bool {
    mask(text).is_ok_and(|m| !m.is_empty() && m.chars().all(|c| c == MASK))
}

/// What stands for a reference in a masked text: a control character no URL holds.
const MASK: char = '\u{1}';

/// `text` with each reference replaced by a numbered token of control characters, and the
/// references as written, so that text can be reworked (a URL's password hidden) without
/// reading into references, then [`put_back`].
pub(crate) fn set_aside(text: &str) -> Result<(String, Vec<String>), SecretError> {
    let mut out = String::with_capacity(text.len());
    let mut references = Vec::new();
    walk(text, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(r) => {
                out.push_str(&format!("{MASK}{}\u{2}", references.len()));
                references.push(match r {
                    Reference::Var(name) => format!("${{{name}}}"),
                    Reference::File(path) => format!("${{file:{path}}}"),
                });
            }
        }
        Ok(())
    })?;
    Ok((out, references))
}

/// `text` from [`set_aside`] with the references its tokens stand for written back.
pub(crate) fn put_back(text: &str, references: &[String]) -> String {
    let mut out = text.to_owned();
    for (i, reference) in references.iter().enumerate() {
        out = out.replace(&format!("{MASK}{i}\u{2}"), reference);
    }
    out
}

/// `text` with each reference replaced by [`MASK`] (and `$${` by `${`).
fn mask(text: &str) -> Result<String, SecretError> {
    let mut out = String::with_capacity(text.len());
    walk(text, |piece| {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Ref(_) => out.push(MASK),
        }
        Ok(())
    })?;
    Ok(out)
}

enum Piece<'a> {
    Text(&'a str),
    Ref(Reference<'a>),
}

fn walk<'a>(
    text: &'a str,
    mut each: impl FnMut(Piece<'a>) -> Result<(), SecretError>,
) -> Result<(), SecretError> {
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if at > 0 && rest.as_bytes()[at - 1] == b'$' {
            // `$${`: a literal `${`.
            each(Piece::Text(&rest[..at - 1]))?;
            each(Piece::Text("${"))?;
            rest = &rest[at + 2..];
            continue;
        }
        each(Piece::Text(&rest[..at]))?;
        let inner_start = at + 2;
        let close = rest[inner_start..].find('}').ok_or(SecretError::Unclosed)?;
        let inner = &rest[inner_start..inner_start + close];
        let reference = match inner.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Reference::File(path),
            _ if is_var_name(inner) => Reference::Var(inner),
            _ => return Err(SecretError::Malformed(inner.to_owned())),
        };
        each(Piece::Ref(reference))?;
        rest = &rest[inner_start + close + 1..];
    }
    each(Piece::Text(rest))
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);

    impl Lookup for Map {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
        fn file(&self, path: &str) -> Result<String, String> {
            self.0
                .get(path)
                .map(|v| v.to_string())
                .ok_or_else(|| "No such file or directory".to_owned())
        }
    }

    fn lookup() -> Map {
        Map(HashMap::from([
            ("PG_PASSWORD", "s3cr:t@"),
            ("/run/secrets/hook", "https://hooks.example/T0/B0/xyz\n"),
        ]))
    }

    #[test]
    fn variables_and_files_are_replaced() {
        let url = "postgres://cellar:${PG_PASSWORD}@db/analytics";
        let resolved = resolve_with(url, &lookup()).unwrap();
        assert_eq!(resolved.expose(), "postgres://cellar:s3cr:t@@db/analytics");
        let hook = resolve_with("${file:/run/secrets/hook}", &lookup()).unwrap();
        assert_eq!(hook.expose(), "https://hooks.example/T0/B0/xyz");
        assert_eq!(
            references(url).unwrap(),
            vec![Reference::Var("PG_PASSWORD")]
        );
    }

    #[test]
    fn a_resolved_secret_is_never_shown() {
        let resolved = resolve_with("${PG_PASSWORD}", &lookup()).unwrap();
        assert_eq!(format!("{resolved:?} {resolved}"), "*** ***");
    }

    #[test]
    fn text_without_references_is_kept_and_dollar_dollar_escapes() {
        assert_eq!(
            resolve_with("redis://host:6379", &lookup())
                .unwrap()
                .expose(),
            "redis://host:6379"
        );
        assert_eq!(
            resolve_with("a$${PG_PASSWORD}b", &lookup())
                .unwrap()
                .expose(),
            "a${PG_PASSWORD}b"
        );
        assert!(references("a$${X}").unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_reference_not_a_value() {
        assert_eq!(
            resolve_with("${NOPE}", &lookup()).unwrap_err(),
            SecretError::MissingVar("NOPE".into())
        );
        let err = resolve_with("${file:/nope}", &lookup()).unwrap_err();
        assert!(err.to_string().contains("/nope"), "{err}");
        assert!(matches!(
            resolve_with("${a b}", &lookup()),
            Err(SecretError::Malformed(_))
        ));
        assert_eq!(
            resolve_with("x${PG_PASSWORD", &lookup()).unwrap_err(),
            SecretError::Unclosed
        );
    }

    #[test]
    fn passwords_written_out_are_found_and_references_are_not() {
        let place = |url: &str| literal_password(url).unwrap();
        assert_eq!(
            place("postgres://u:hush@db/app").as_deref(),
            Some("after the user name")
        );
        assert_eq!(
            place("postgres://u@db/app?sslmode=require&password=hush").as_deref(),
            Some("in its `password` parameter")
        );
        assert_eq!(
            place("host=db password=hush").as_deref(),
            Some("in its `password` setting")
        );
        // Part of it written out is written out.
        assert!(place("postgres://u:x${PG_PASSWORD}@db/app").is_some());
        for referred in [
            "postgres://u:${PG_PASSWORD}@db/app",
            "postgres://u:${file:/run/secrets/pg}@db/app?sslmode=require",
            "postgres://${PG_USER}:${PG_PASSWORD}@db/app",
            "postgres://u@db/app?password=${PG_PASSWORD}",
            "host=db password=${PG_PASSWORD}",
            "${PG_URL}",
            "postgres://u@db/app",
            "postgres://u:@db/app",
        ] {
            assert_eq!(place(referred), None, "{referred}");
        }
        assert!(matches!(
            literal_password("postgres://u:${PG PASSWORD}@db/app"),
            Err(SecretError::Malformed(_))
        ));
    }

    #[test]
    fn only_references_is_nothing_else() {
        assert!(only_references("${PG_URL}"));
        assert!(only_references("${A}${file:/b}"));
        assert!(!only_references("postgres://u:${A}@db"));
        assert!(!only_references(""));
        assert!(!only_references("${a b}"));
    }
}
