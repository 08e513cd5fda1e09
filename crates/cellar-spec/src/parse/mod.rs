//! YAML feature repo parsing and validation.
//!
//! Parsing runs in two passes so that one run reports every problem:
//! 1. each YAML document is read on its own into a draft (a spec whose doubtful parts are
//!    `None`), recording its own errors (syntax, unknown or missing fields, bad values);
//! 2. the drafts are cross-checked (duplicate names, references between specs, key counts,
//!    aggregate types, the `depends_on` graph), skipping checks whose inputs were already
//!    reported as wrong so that one mistake is reported once.
//!
//! A repo is returned only when both passes found nothing.
//!
//! Layout:
//! - this file: [`parse_repo`], its errors, and the drafts and document reader the passes share;
//! - `document`: YAML documents, their loading and the generic field readers;
//! - `entity`, `group`, `on_demand`, `ingestion` (with `mapping`, its features), `service`: the
//!   reader of each spec kind, into a draft;
//! - `scalars`: names, topics, durations and the other values written as text;
//! - `suggest`: "did you mean" for misspelt names;
//! - `cross_check`: the second pass, over all the drafts;
//! - `build`: the checked drafts turned into a [`FeatureRepo`].

mod build;
mod cross_check;
mod document;
mod entity;
mod group;
mod ingestion;
mod mapping;
mod on_demand;
mod scalars;
mod service;
mod suggest;

use std::collections::HashMap;
use std::time::Duration;

use crate::model::{
    AggregateFunction, EntityKeyField, ExpressionCheck, FeatureExpr, GroupKind, IngestionSource,
    Origin, Retention, ServingPolicy,
};
use crate::repo::FeatureRepo;
use crate::value::ValueType;
use document::split_documents;

pub use on_demand::{expression_inputs, MAX_EXPRESSION_LEN};
pub use scalars::{
    format_duration, parse_duration, parse_early_refresh, parse_jitter, topic_problem,
    MAX_ADMIT_AFTER, MAX_EARLY_REFRESH, MAX_TOPIC_LEN,
};

/// Largest encoded record a group may allow when `max_record_bytes` is not given.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 8192;
/// Upper bound for `max_record_bytes`: records are read whole on the serving path.
pub const MAX_RECORD_BYTES_LIMIT: usize = 1 << 20;
/// Longest spec, feature or key field name.
pub const MAX_NAME_LEN: usize = 64;
/// Largest TTL jitter, as a fraction: beyond it, soft and hard TTLs overlap in practice.
pub const MAX_JITTER: f64 = 0.5;

/// The YAML parser recurses once per nesting level. It caps flow (`[`, `{`) nesting itself
/// at 255 levels, but not block nesting, which needs one more column of indentation (or one more
/// `- ` on a line) per level: so a document's nesting depth is at most its widest line plus
/// 255. Documents whose widest line is under this bound are parsed on a thread whose stack holds
/// that depth; wider ones are refused unparsed.
const MAX_LINE_WIDTH: usize = 20_000;
/// Stack of the parsing thread; see [`MAX_LINE_WIDTH`]. Only touched pages are committed.
const PARSER_STACK_BYTES: usize = 64 << 20;

/// One problem in a feature repo, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {}{message}", field_prefix(.field))]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    /// The field at fault, as a path within its document (`features[2].type`); empty for
    /// problems of the document as a whole (a YAML syntax error).
    pub field: String,
    pub message: String,
}

fn field_prefix(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!("{field}: ")
    }
}

/// Every problem found in a repo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} error(s) in the feature repo:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecErrors {}

/// Parses and validates the files of a feature repo, given as (path, text) pairs. Each file may
/// hold several YAML documents separated by `---`. On-demand features' expressions are not
/// checked: see [`parse_repo_with`].
pub fn parse_repo(files: &[(String, String)]) -> Result<FeatureRepo, SpecErrors> {
    parse_repo_checked(files, None)
}

/// [`parse_repo`], with every on-demand feature's expression checked by `expressions` against
/// the inputs it may read, its errors reported at the expression's line.
pub fn parse_repo_with(
    files: &[(String, String)],
    expressions: &dyn ExpressionCheck,
) -> Result<FeatureRepo, SpecErrors> {
    parse_repo_checked(files, Some(expressions))
}

fn parse_repo_checked(
    files: &[(String, String)],
    expressions: Option<&dyn ExpressionCheck>,
) -> Result<FeatureRepo, SpecErrors> {
    let parsed = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("cellar-spec-parse".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, || parse_repo_on_this_thread(files, expressions))
            .map(|handle| handle.join())
    });
    match parsed {
        Ok(Ok(result)) => result,
        // Neither happens on valid or hostile input; they are reported rather than re-raised
        // because a caller validating a repo should get an answer, not a crash.
        Ok(Err(_)) => Err(internal_error(files, "the spec parser failed unexpectedly")),
        Err(e) => Err(internal_error(
            files,
            &format!("could not start the spec parser: {e}"),
        )),
    }
}

fn internal_error(files: &[(String, String)], message: &str) -> SpecErrors {
    SpecErrors(vec![SpecError {
        file: files.first().map(|f| f.0.clone()).unwrap_or_default(),
        line: 1,
        field: String::new(),
        message: message.into(),
    }])
}

fn parse_repo_on_this_thread(
    files: &[(String, String)],
    expressions: Option<&dyn ExpressionCheck>,
) -> Result<FeatureRepo, SpecErrors> {
    let mut drafts = Drafts::default();
    let mut errors = Vec::new();
    for (path, text) in files {
        for chunk in split_documents(text) {
            if chunk.is_blank() {
                continue;
            }
            let mut doc = Doc {
                file: path,
                first_line: chunk.first_line,
                errors: &mut errors,
            };
            if let Some(root) = doc.load(chunk.text) {
                doc.spec(&root, &mut drafts);
            }
        }
    }
    drafts.cross_check(&mut errors);
    if errors.is_empty() {
        let written = drafts.expressions();
        if let Some(repo) = drafts.build() {
            if let Some(check) = expressions {
                errors.extend(on_demand::check_expressions(&repo, &written, check));
            }
            if errors.is_empty() {
                return Ok(repo);
            }
        } else {
            return Err(internal_error(
                files,
                "a spec was incomplete although no error was found",
            ));
        }
    }
    let order: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, (path, _))| (path.as_str(), i))
        .collect();
    // Stable: errors on one line keep the order they were found in.
    errors.sort_by_key(|e| (order.get(e.file.as_str()).copied(), e.line));
    errors.dedup();
    Err(SpecErrors(errors))
}

/// The reader of one document: knows its file and line offset, and where errors go.
struct Doc<'a> {
    file: &'a str,
    first_line: usize,
    errors: &'a mut Vec<SpecError>,
}

/// A value with the place it was written, for errors found by the cross-checks.
#[derive(Debug, Clone)]
struct Located<T> {
    value: T,
    origin: Origin,
    field: String,
}

/// What every spec has.
#[derive(Debug)]
struct Head {
    name: String,
    origin: Origin,
    description: Option<String>,
}

#[derive(Debug)]
struct EntityDraft {
    head: Head,
    keys: Option<Vec<EntityKeyField>>,
}

#[derive(Debug)]
struct GroupDraft {
    head: Head,
    entity: Option<Located<String>>,
    kind: Option<GroupKind>,
    features: Vec<FeatureDraft>,
    retention: Retention,
    serving: ServingPolicy,
    max_record_bytes: usize,
    push_sources: Vec<String>,
    freshness: Option<Duration>,
}

#[derive(Debug)]
struct FeatureDraft {
    name: String,
    /// `None` when the written type was reported as wrong.
    value_type: Option<ValueType>,
    description: Option<String>,
}

#[derive(Debug)]
struct OnDemandDraft {
    head: Head,
    request: Vec<RequestFieldDraft>,
    features: Vec<OnDemandFeatureDraft>,
    /// `None` when a source was reported as wrong.
    sources: Option<Vec<crate::model::OnDemandSource>>,
    /// Each source's name and its entity key fields, with where they were written.
    source_keys: Vec<(Located<String>, Vec<Located<String>>)>,
}

#[derive(Debug)]
struct RequestFieldDraft {
    name: Located<String>,
    value_type: Option<ValueType>,
}

#[derive(Debug)]
struct OnDemandFeatureDraft {
    name: String,
    value_type: Option<ValueType>,
    expr: Option<Located<String>>,
    description: Option<String>,
}

#[derive(Debug)]
struct IngestionDraft {
    head: Head,
    into: Option<Located<String>>,
    source: Option<IngestionSource>,
    key: Option<Located<Vec<String>>>,
    event_time: Option<String>,
    features: Vec<MappingDraft>,
    /// Also in `source`, with where each name was written.
    depends_on: Vec<Located<String>>,
}

#[derive(Debug)]
struct MappingDraft {
    feature: Located<String>,
    expr: Option<FeatureExpr>,
    /// Known even when the rest of the aggregate is wrong, for the checks against the group.
    aggregate: Option<AggregateFunction>,
    /// A write-time expression, with where it was written.
    written_expr: Option<Located<String>>,
}

#[derive(Debug)]
struct ServiceDraft {
    head: Head,
    /// (group, feature); `None` selects the whole group.
    selections: Vec<Located<(String, Option<String>)>>,
    logging: crate::model::ServiceLogging,
}

/// Every spec document read, in the order read; those without a name are left out.
#[derive(Debug, Default)]
struct Drafts {
    entities: Vec<EntityDraft>,
    groups: Vec<GroupDraft>,
    on_demand: Vec<OnDemandDraft>,
    ingestions: Vec<IngestionDraft>,
    services: Vec<ServiceDraft>,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn errors_of(text: &str) -> Vec<String> {
        match parse_repo(&[("repo.yaml".to_owned(), text.to_owned())]) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    pub(super) const USER: &str =
        "kind: Entity\nname: user\nkeys: [{ name: user_id, type: string }]\n";

    #[test]
    fn errors_display_with_file_line_and_field() {
        let e = SpecError {
            file: "a.yaml".into(),
            line: 3,
            field: "features[2].type".into(),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "a.yaml:3: features[2].type: bad");
        let e = SpecError {
            field: String::new(),
            ..e
        };
        assert_eq!(e.to_string(), "a.yaml:3: bad");
    }

    #[test]
    fn an_empty_repo_is_valid() {
        let repo = parse_repo(&[("a.yaml".into(), String::new())]).unwrap();
        assert_eq!(repo, FeatureRepo::default());
        assert_eq!(parse_repo(&[]).unwrap(), FeatureRepo::default());
    }
}
