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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::str::FromStr;
use std::time::Duration;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};

use crate::model::{
    AggregateExpr, AggregateFunction, BatchInput, BatchSource, Entity, EntityKeyField, EventFormat,
    Feature, FeatureExpr, FeatureGroup, FeatureMapping, FeatureSelection, FeatureService,
    FileFormat, GroupKind, Ingestion, IngestionSource, KeyType, Origin, Parallelism, Retention,
    ServingPolicy, StreamSource, Tier, WriteStrategy,
};
use crate::repo::{FeatureRepo, SpecKind};
use crate::value::{ScalarType, ValueType};

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
/// hold several YAML documents separated by `---`.
pub fn parse_repo(files: &[(String, String)]) -> Result<FeatureRepo, SpecErrors> {
    let parsed = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("cellar-spec-parse".into())
            .stack_size(PARSER_STACK_BYTES)
            .spawn_scoped(scope, || parse_repo_on_this_thread(files))
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

fn parse_repo_on_this_thread(files: &[(String, String)]) -> Result<FeatureRepo, SpecErrors> {
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
        if let Some(repo) = drafts.build() {
            return Ok(repo);
        }
        return Err(internal_error(
            files,
            "a spec was incomplete although no error was found",
        ));
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

// ---------------------------------------------------------------------------------------------
// Documents

/// One YAML document of a file.
struct Chunk<'t> {
    /// Line of the file the chunk starts on (1-based), where its `---` is.
    first_line: usize,
    text: &'t str,
}

impl Chunk<'_> {
    /// Only separators, comments and blank lines: not a spec, and not an error either.
    fn is_blank(&self) -> bool {
        self.text.lines().all(|line| {
            let line = line.trim();
            let line = line
                .strip_prefix("---")
                .or_else(|| line.strip_prefix("..."))
                .unwrap_or(line)
                .trim();
            line.is_empty() || line.starts_with('#')
        })
    }
}

fn is_document_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t")
}

/// Splits a file on `---` lines. The loader reads one document per call; the separator line
/// stays at the start of the chunk it opens (the parser accepts it), so chunk lines map to file
/// lines by one offset. YAML itself treats a `---` in column 0 as a document start even inside a
/// multi-line scalar, so this split agrees with the parser.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i > 0 && is_document_separator(line) {
            chunks.push(Chunk {
                first_line: start_line,
                text: &text[start..offset],
            });
            start = offset;
            start_line = i + 1;
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        first_line: start_line,
        text: &text[start..],
    });
    chunks
}

/// What a node is, for "expected X, found Y" messages.
fn node_kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "text",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

/// A field path within a document: `serving.soft_ttl`, `features[2].type`.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
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

impl<'a> Doc<'a> {
    fn line(&self, span: &Span) -> usize {
        span.start()
            .map(|m| self.first_line + m.line().saturating_sub(1))
            .unwrap_or(self.first_line)
    }

    fn origin(&self, span: &Span) -> Origin {
        Origin {
            file: self.file.to_owned(),
            line: self.line(span),
        }
    }

    fn locate<T>(&self, value: T, span: &Span, field: &str) -> Located<T> {
        Located {
            value,
            origin: self.origin(span),
            field: field.to_owned(),
        }
    }

    fn error(&mut self, span: &Span, field: &str, message: impl Into<String>) {
        let line = self.line(span);
        self.error_at(line, field, message);
    }

    fn error_at(&mut self, line: usize, field: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Parses one document's text into its root mapping, reporting YAML errors.
    fn load(&mut self, text: &str) -> Option<MarkedMappingNode> {
        if let Some((i, _)) = text
            .lines()
            .enumerate()
            .find(|(_, line)| line.len() > MAX_LINE_WIDTH)
        {
            self.error_at(
                self.first_line + i,
                "",
                format!(
                    "line longer than {MAX_LINE_WIDTH} characters: too deeply nested or too \
                     large to check"
                ),
            );
            return None;
        }
        let options = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true);
        // The loader asserts on parser states it does not expect; a document that reaches one is
        // reported as unreadable rather than taking the whole run down.
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            marked_yaml::parse_yaml_with_options(0, text, options)
        }));
        let node = match loaded {
            Ok(Ok(node)) => node,
            Ok(Err(e)) => {
                self.yaml_error(e);
                return None;
            }
            Err(_) => {
                self.error_at(self.first_line, "", "unreadable YAML document");
                return None;
            }
        };
        match node {
            Node::Mapping(map) => Some(map),
            other => {
                let kind = node_kind(&other);
                self.error(
                    other.span(),
                    "",
                    format!("a spec document must be a mapping with a `kind`, not {kind}"),
                );
                None
            }
        }
    }

    fn yaml_error(&mut self, e: LoadError) {
        let (marker, message) = match &e {
            LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => (
                Some(*m),
                "a spec document must be a mapping with a `kind`".to_owned(),
            ),
            LoadError::UnexpectedAnchor(m) => (
                Some(*m),
                "YAML anchors and aliases are not supported in specs".to_owned(),
            ),
            LoadError::MappingKeyMustBeScalar(m) => {
                (Some(*m), "mapping keys must be plain text".to_owned())
            }
            LoadError::UnexpectedTag(m) => {
                (Some(*m), "YAML tags are not supported in specs".into())
            }
            LoadError::ScanError(m, scan) => (Some(*m), format!("YAML syntax: {}", scan.info())),
            LoadError::DuplicateKey(dup) => {
                let first = dup
                    .prev_key
                    .span()
                    .start()
                    .map(|m| self.line_of_marker(m.line()));
                let message = match first {
                    Some(line) => format!(
                        "duplicate key `{}` (first at line {line})",
                        dup.key.as_str()
                    ),
                    None => format!("duplicate key `{}`", dup.key.as_str()),
                };
                (dup.key.span().start().copied(), message)
            }
        };
        let line = marker
            .map(|m| self.line_of_marker(m.line()))
            .unwrap_or(self.first_line);
        self.error_at(line, "", message);
    }

    fn line_of_marker(&self, line: usize) -> usize {
        self.first_line + line.saturating_sub(1)
    }

    // --- generic readers -------------------------------------------------------------------

    /// Reports keys of `map` that are not in `allowed`, suggesting the nearest allowed one.
    fn check_fields(&mut self, map: &MarkedMappingNode, path: &str, allowed: &[&str]) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let message = match suggest(key.as_str(), allowed.iter().copied()) {
                    Some(s) => format!("unknown field `{}`; did you mean `{s}`?", key.as_str()),
                    None => format!(
                        "unknown field `{}`; expected one of {}",
                        key.as_str(),
                        allowed.join(", ")
                    ),
                };
                self.error(key.span(), &join(path, key.as_str()), message);
            }
        }
    }

    /// A field's node, reporting it when required and absent. Empty values count as absent.
    fn field<'n>(
        &mut self,
        map: &'n MarkedMappingNode,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<&'n Node> {
        let node = map
            .get_node(key)
            .filter(|n| !matches!(n, Node::Scalar(s) if is_null(s)));
        if node.is_none() && required {
            self.error(
                map.span(),
                &join(path, key),
                format!("missing required field `{key}`"),
            );
        }
        node
    }

    fn expect_scalar<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n MarkedScalarNode> {
        match node {
            Node::Scalar(s) => Some(s),
            other => {
                self.error(
                    other.span(),
                    path,
                    format!("expected text, found {}", node_kind(other)),
                );
                None
            }
        }
    }

    fn expect_mapping<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n MarkedMappingNode> {
        match node {
            Node::Mapping(m) => Some(m),
            other => {
                self.error(
                    other.span(),
                    path,
                    format!("expected a mapping, found {}", node_kind(other)),
                );
                None
            }
        }
    }

    fn expect_sequence<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
    ) -> Option<&'n MarkedSequenceNode> {
        match node {
            Node::Sequence(s) => Some(s),
            other => {
                self.error(
                    other.span(),
                    path,
                    format!("expected a list, found {}", node_kind(other)),
                );
                None
            }
        }
    }

    /// A text field.
    fn text<'n>(
        &mut self,
        map: &'n MarkedMappingNode,
        path: &str,
        key: &str,
        required: bool,
    ) -> Option<&'n MarkedScalarNode> {
        let node = self.field(map, path, key, required)?;
        self.expect_scalar(node, &join(path, key))
    }

    /// A text field parsed by `parse`, whose error message is reported as is.
    fn parsed<T>(
        &mut self,
        map: &MarkedMappingNode,
        path: &str,
        key: &str,
        required: bool,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let scalar = self.text(map, path, key, required)?;
        match parse(scalar.as_str()) {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(scalar.span(), &join(path, key), message);
                None
            }
        }
    }

    /// A list of text, or one text standing for a list of one.
    fn text_list<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
    ) -> Option<Vec<(usize, &'n MarkedScalarNode)>> {
        match node {
            Node::Scalar(s) => Some(vec![(0, s)]),
            Node::Sequence(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match self.expect_scalar(item, &index(path, i)) {
                        Some(s) if !is_null(s) => out.push((i, s)),
                        Some(s) => {
                            self.error(s.span(), &index(path, i), "empty entry");
                            ok = false;
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            Node::Mapping(m) => {
                self.error(
                    m.span(),
                    path,
                    "expected a list or a single text, found a mapping",
                );
                None
            }
        }
    }

    /// Checks a spec, feature or key field name; reports and returns false when it is invalid.
    fn check_name(&mut self, scalar: &MarkedScalarNode, path: &str) -> bool {
        match name_problem(scalar.as_str()) {
            Some(problem) => {
                self.error(scalar.span(), path, problem);
                false
            }
            None => true,
        }
    }

    // --- documents ---------------------------------------------------------------------------

    fn spec(&mut self, root: &MarkedMappingNode, drafts: &mut Drafts) {
        const KINDS: [&str; 4] = ["Entity", "FeatureGroup", "Ingestion", "FeatureService"];
        let Some(kind) = self.text(root, "", "kind", true) else {
            return;
        };
        let kind = match kind.as_str() {
            "Entity" => SpecKind::Entity,
            "FeatureGroup" => SpecKind::FeatureGroup,
            "Ingestion" => SpecKind::Ingestion,
            "FeatureService" => SpecKind::FeatureService,
            other => {
                let message = match suggest(other, KINDS) {
                    Some(s) => format!("unknown kind `{other}`; did you mean `{s}`?"),
                    None => format!(
                        "unknown kind `{other}`; expected one of {}",
                        KINDS.join(", ")
                    ),
                };
                self.error(kind.span(), "kind", message);
                return;
            }
        };
        let name = self.text(root, "", "name", true).map(|n| {
            // A badly formed name is still registered, so that references to it do not report
            // a second, misleading "unknown" error.
            self.check_name(n, "name");
            n.as_str().to_owned()
        });
        let description = self
            .text(root, "", "description", false)
            .map(|d| d.as_str().to_owned());
        let head = Head {
            name: name.unwrap_or_default(),
            origin: self.origin(root.span()),
            description,
        };
        match kind {
            SpecKind::Entity => {
                let draft = self.entity(root, head);
                if !draft.head.name.is_empty() {
                    drafts.entities.push(draft);
                }
            }
            SpecKind::FeatureGroup => {
                let draft = self.group(root, head);
                if !draft.head.name.is_empty() {
                    drafts.groups.push(draft);
                }
            }
            SpecKind::Ingestion => {
                let draft = self.ingestion(root, head);
                if !draft.head.name.is_empty() {
                    drafts.ingestions.push(draft);
                }
            }
            SpecKind::FeatureService => {
                let draft = self.service(root, head);
                if !draft.head.name.is_empty() {
                    drafts.services.push(draft);
                }
            }
        }
    }

    fn entity(&mut self, root: &MarkedMappingNode, head: Head) -> EntityDraft {
        self.check_fields(root, "", &["kind", "name", "description", "keys"]);
        let keys = self
            .field(root, "", "keys", true)
            .and_then(|node| self.expect_sequence(node, "keys"))
            .and_then(|items| {
                if items.is_empty() {
                    self.error(
                        items.span(),
                        "keys",
                        "an entity needs at least one key field",
                    );
                    return None;
                }
                let mut keys = Vec::new();
                let mut seen: HashMap<String, usize> = HashMap::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let path = index("keys", i);
                    match self.key_field(item, &path) {
                        Some((field, line)) => {
                            if let Some(first) = seen.insert(field.name.clone(), line) {
                                self.error_at(
                                    line,
                                    &join(&path, "name"),
                                    format!(
                                        "duplicate key field `{}` (first at line {first})",
                                        field.name
                                    ),
                                );
                                ok = false;
                            }
                            keys.push(field);
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(keys)
            });
        EntityDraft { head, keys }
    }

    fn key_field(&mut self, node: &Node, path: &str) -> Option<(EntityKeyField, usize)> {
        let map = self.expect_mapping(node, path)?;
        self.check_fields(map, path, &["name", "type"]);
        let name = self.text(map, path, "name", true);
        let name_ok = name.is_some_and(|n| self.check_name(n, &join(path, "name")));
        let key_type = self.parsed(map, path, "type", true, |s| match s {
            "string" => Ok(KeyType::String),
            "int64" => Ok(KeyType::Int64),
            other => Err(format!(
                "unknown key type `{other}`: entity keys are `string` or `int64`"
            )),
        });
        let name = name.filter(|_| name_ok)?;
        Some((
            EntityKeyField {
                name: name.as_str().to_owned(),
                key_type: key_type?,
            },
            self.line(name.span()),
        ))
    }

    fn group(&mut self, root: &MarkedMappingNode, head: Head) -> GroupDraft {
        self.check_fields(
            root,
            "",
            &[
                "kind",
                "name",
                "description",
                "entity",
                "type",
                "features",
                "retention",
                "serving",
                "max_record_bytes",
            ],
        );
        let entity = self
            .text(root, "", "entity", true)
            .map(|e| self.locate(e.as_str().to_owned(), e.span(), "entity"));
        let kind = self.parsed(root, "", "type", true, |s| match s {
            "attribute" => Ok(GroupKind::Attribute),
            "timeseries" => Ok(GroupKind::Timeseries),
            other => Err(format!(
                "unknown group type `{other}`: expected `attribute` or `timeseries`"
            )),
        });
        let features = self.features(root);
        let retention = match self.field(root, "", "retention", false) {
            Some(node) => self.retention(node, kind).unwrap_or_default(),
            None => Retention::default(),
        };
        let serving = match self.field(root, "", "serving", false) {
            Some(node) => self.serving(node).unwrap_or_default(),
            None => ServingPolicy::default(),
        };
        let max_record_bytes = self
            .parsed(root, "", "max_record_bytes", false, |s| {
                match s.parse::<usize>() {
                    Ok(n) if (1..=MAX_RECORD_BYTES_LIMIT).contains(&n) => Ok(n),
                    _ => Err(format!(
                        "`{s}` is not a size: expected a whole number of bytes from 1 to {MAX_RECORD_BYTES_LIMIT}"
                    )),
                }
            })
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        GroupDraft {
            head,
            entity,
            kind,
            features,
            retention,
            serving,
            max_record_bytes,
        }
    }

    fn features(&mut self, root: &MarkedMappingNode) -> Vec<FeatureDraft> {
        let Some(items) = self
            .field(root, "", "features", true)
            .and_then(|node| self.expect_sequence(node, "features"))
        else {
            return Vec::new();
        };
        if items.is_empty() {
            self.error(
                items.span(),
                "features",
                "a feature group needs at least one feature",
            );
            return Vec::new();
        }
        let mut out: Vec<FeatureDraft> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let path = index("features", i);
            let Some(map) = self.expect_mapping(item, &path) else {
                continue;
            };
            self.check_fields(map, &path, &["name", "type", "description"]);
            let name = self.text(map, &path, "name", true);
            let value_type = self.parsed(map, &path, "type", true, ValueType::from_str);
            let description = self
                .text(map, &path, "description", false)
                .map(|d| d.as_str().to_owned());
            let Some(name) = name else { continue };
            self.check_name(name, &join(&path, "name"));
            let line = self.line(name.span());
            if let Some(first) = seen.insert(name.as_str().to_owned(), line) {
                self.error_at(
                    line,
                    &join(&path, "name"),
                    format!(
                        "duplicate feature `{}` (first at line {first})",
                        name.as_str()
                    ),
                );
                continue;
            }
            out.push(FeatureDraft {
                name: name.as_str().to_owned(),
                value_type,
                description,
            });
        }
        out
    }

    fn retention(&mut self, node: &Node, kind: Option<GroupKind>) -> Option<Retention> {
        let map = self.expect_mapping(node, "retention")?;
        self.check_fields(map, "retention", &["max_records", "max_age"]);
        let max_records = self.parsed(map, "retention", "max_records", false, |s| {
            match s.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!(
                    "`{s}` is not a record count: expected a whole number >= 1"
                )),
            }
        });
        if max_records.is_some() && kind == Some(GroupKind::Attribute) {
            if let Some(n) = map.get_node("max_records") {
                self.error(
                    n.span(),
                    "retention.max_records",
                    "an attribute group keeps one record per entity; `max_records` applies to \
                     timeseries groups",
                );
            }
        }
        let max_age = self.parsed(map, "retention", "max_age", false, parse_duration);
        if max_age == Some(Duration::ZERO) {
            if let Some(n) = map.get_node("max_age") {
                self.error(
                    n.span(),
                    "retention.max_age",
                    "`max_age` must be more than 0",
                );
            }
        }
        Some(Retention {
            max_records,
            max_age,
        })
    }

    fn serving(&mut self, node: &Node) -> Option<ServingPolicy> {
        const P: &str = "serving";
        let map = self.expect_mapping(node, P)?;
        self.check_fields(
            map,
            P,
            &[
                "tiers",
                "soft_ttl",
                "hard_ttl",
                "jitter",
                "negative_ttl",
                "write",
                "early_refresh",
                "admit_after",
                "admit_window",
            ],
        );
        let mut policy = ServingPolicy::default();
        if let Some(node) = self.field(map, P, "tiers", false) {
            if let Some(items) = self.text_list(node, "serving.tiers") {
                let mut tiers = Vec::new();
                for (i, item) in items {
                    let path = index("serving.tiers", i);
                    let tier = match item.as_str() {
                        "local" => Tier::Local,
                        "remote" => Tier::Remote,
                        other => {
                            let message = match suggest(other, ["local", "remote"]) {
                                Some(s) => format!("unknown tier `{other}`; did you mean `{s}`?"),
                                None => {
                                    format!("unknown tier `{other}`: expected `local` or `remote`")
                                }
                            };
                            self.error(item.span(), &path, message);
                            continue;
                        }
                    };
                    if tiers.contains(&tier) {
                        self.error(
                            item.span(),
                            &path,
                            format!("tier `{}` listed twice", item.as_str()),
                        );
                        continue;
                    }
                    tiers.push(tier);
                }
                policy.tiers = tiers;
            }
        } else if map.get_node("tiers").is_some() {
            // `tiers:` with nothing after it: no cache tier, every read goes to the store.
            policy.tiers = Vec::new();
        }
        if let Some(d) = self.parsed(map, P, "soft_ttl", false, parse_duration) {
            policy.soft_ttl = d;
        }
        if let Some(d) = self.parsed(map, P, "hard_ttl", false, parse_duration) {
            policy.hard_ttl = d;
        }
        if let Some(d) = self.parsed(map, P, "negative_ttl", false, parse_duration) {
            policy.negative_ttl = d;
        }
        if let Some(j) = self.parsed(map, P, "jitter", false, parse_jitter) {
            policy.jitter = j;
        }
        if let Some(w) = self.parsed(map, P, "write", false, |s| match s {
            "through" => Ok(WriteStrategy::Through),
            "around" => Ok(WriteStrategy::Around),
            other => Err(format!(
                "unknown write strategy `{other}`: expected `through` or `around`"
            )),
        }) {
            policy.write = w;
        }
        if let Some(beta) = self.parsed(map, P, "early_refresh", false, parse_early_refresh) {
            policy.early_refresh = beta;
        }
        if let Some(k) = self.parsed(map, P, "admit_after", false, |s| {
            match s.trim().parse::<u32>() {
                Ok(k) if (1..=MAX_ADMIT_AFTER).contains(&k) => Ok(k),
                _ => Err(format!(
                    "`{s}` is not a read count: expected a whole number from 1 to {MAX_ADMIT_AFTER}"
                )),
            }
        }) {
            policy.admit_after = k;
        }
        if let Some(d) = self.parsed(map, P, "admit_window", false, parse_duration) {
            if d.is_zero() {
                let span = map.get_node("admit_window").map(|n| *n.span());
                if let Some(span) = span {
                    self.error(
                        &span,
                        "serving.admit_window",
                        "`admit_window` must be more than 0",
                    );
                }
            } else {
                policy.admit_window = d;
            }
        }
        if policy.soft_ttl > policy.hard_ttl {
            let span = map
                .get_node("soft_ttl")
                .or_else(|| map.get_node("hard_ttl"))
                .map(|n| *n.span())
                .unwrap_or_else(|| *map.span());
            self.error(
                &span,
                "serving.soft_ttl",
                format!(
                    "soft_ttl ({}) is longer than hard_ttl ({}): a copy must turn stale before it \
                     expires",
                    format_duration(policy.soft_ttl),
                    format_duration(policy.hard_ttl)
                ),
            );
        }
        Some(policy)
    }

    fn ingestion(&mut self, root: &MarkedMappingNode, head: Head) -> IngestionDraft {
        self.check_fields(
            root,
            "",
            &[
                "kind",
                "name",
                "description",
                "stream",
                "batch",
                "into",
                "key",
                "event_time",
                "features",
            ],
        );
        let stream_node = self.field(root, "", "stream", false);
        let batch_node = self.field(root, "", "batch", false);
        let mut depends_on = Vec::new();
        let source = match (stream_node, batch_node) {
            (Some(st), Some(b)) => {
                self.error(
                    b.span(),
                    "batch",
                    "an ingestion reads either a `stream` or a `batch` source, not both",
                );
                // Both are still checked, so that their own mistakes are reported in this run.
                self.stream(st);
                self.batch(b, &mut depends_on);
                None
            }
            (None, None) => {
                self.error(
                    root.span(),
                    "stream",
                    "missing source: give either `stream` or `batch`",
                );
                None
            }
            (Some(s), None) => self.stream(s).map(IngestionSource::Stream),
            (None, Some(b)) => self.batch(b, &mut depends_on).map(IngestionSource::Batch),
        };
        // Which mapping style to check even when the source itself had errors.
        let is_stream = stream_node.is_some() || batch_node.is_none();
        let into = self
            .text(root, "", "into", true)
            .map(|s| self.locate(s.as_str().to_owned(), s.span(), "into"));
        let key = self.field(root, "", "key", true).and_then(|node| {
            let items = self.text_list(node, "key")?;
            let mut ok = true;
            for (i, item) in &items {
                let path = if matches!(node, Node::Scalar(_)) {
                    "key".to_owned()
                } else {
                    index("key", *i)
                };
                ok &= self.check_expr(item, &path, is_stream);
            }
            let key: Vec<String> = items.iter().map(|(_, s)| s.as_str().to_owned()).collect();
            ok.then(|| self.locate(key, node.span(), "key"))
        });
        let event_time = self.text(root, "", "event_time", false).and_then(|s| {
            self.check_expr(s, "event_time", is_stream)
                .then(|| s.as_str().to_owned())
        });
        let features = self.mappings(root, is_stream);
        IngestionDraft {
            head,
            into,
            source,
            key,
            event_time,
            features,
            depends_on,
        }
    }

    /// Checks a field reference: a JSON path for streams, a column name for batch sources.
    fn check_expr(&mut self, scalar: &MarkedScalarNode, path: &str, is_stream: bool) -> bool {
        let expr = scalar.as_str();
        let problem = if expr.trim().is_empty() {
            Some("empty field reference".to_owned())
        } else if is_stream && !expr.starts_with('$') {
            Some(format!(
                "stream events are read by JSON path: write `$.{expr}`, not `{expr}`"
            ))
        } else if !is_stream && expr.starts_with('$') {
            Some(format!(
                "batch rows are read by column name: write `{}`, not `{expr}`",
                expr.trim_start_matches('$').trim_start_matches('.')
            ))
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.error(scalar.span(), path, message);
                false
            }
            None => true,
        }
    }

    fn stream(&mut self, node: &Node) -> Option<StreamSource> {
        const P: &str = "stream";
        let map = self.expect_mapping(node, P)?;
        self.check_fields(
            map,
            P,
            &[
                "topic",
                "event_types",
                "event_type",
                "format",
                "event_type_field",
                "republish_to",
            ],
        );
        let before = self.errors.len();
        let topic = self.parsed(map, P, "topic", true, |s| {
            topic_problem(s).map_or(Ok(s.to_owned()), Err)
        });
        let mut event_types = Vec::new();
        match (map.get_node("event_types"), map.get_node("event_type")) {
            (Some(_), Some(single)) => self.error(
                single.span(),
                "stream.event_type",
                "give either `event_types` or `event_type`, not both",
            ),
            (Some(node), None) | (None, Some(node)) => {
                let path = if map.get_node("event_types").is_some() {
                    "stream.event_types"
                } else {
                    "stream.event_type"
                };
                if let Some(items) = self.text_list(node, path) {
                    event_types = items.iter().map(|(_, s)| s.as_str().to_owned()).collect();
                }
            }
            (None, None) => {}
        }
        let format = self
            .parsed(map, P, "format", false, |s| match s {
                "json" => Ok(EventFormat::Json),
                "avro" | "protobuf" => Err(format!(
                    "event format `{s}` is not supported yet: use `json`"
                )),
                other => Err(format!("unknown event format `{other}`: expected `json`")),
            })
            .unwrap_or(EventFormat::Json);
        let event_type_field = self
            .text(map, P, "event_type_field", false)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|| "type".to_owned());
        let republish_to = self.parsed(map, P, "republish_to", false, |s| {
            topic_problem(s).map_or(Ok(s.to_owned()), Err)
        });
        let topic = topic?;
        (self.errors.len() == before).then_some(StreamSource {
            topic,
            event_types,
            format,
            event_type_field,
            republish_to,
        })
    }

    fn batch(&mut self, node: &Node, depends_on: &mut Vec<Located<String>>) -> Option<BatchSource> {
        const P: &str = "batch";
        let map = self.expect_mapping(node, P)?;
        self.check_fields(
            map,
            P,
            &[
                "files",
                "postgres",
                "transform",
                "schedule",
                "parallelism",
                "depends_on",
            ],
        );
        let before = self.errors.len();
        let input = match (
            self.field(map, P, "files", false),
            self.field(map, P, "postgres", false),
        ) {
            (Some(_), Some(pg)) => {
                self.error(
                    pg.span(),
                    "batch.postgres",
                    "a batch source reads either `files` or `postgres`, not both",
                );
                None
            }
            (None, None) => {
                self.error(
                    map.span(),
                    "batch.files",
                    "missing batch input: give either `files` or `postgres`",
                );
                None
            }
            (Some(files), None) => self.files(files),
            (None, Some(pg)) => self.postgres(pg),
        };
        let transform = self
            .text(map, P, "transform", false)
            .map(|s| s.as_str().to_owned());
        let schedule = self.parsed(map, P, "schedule", false, |s| {
            check_cron(s).map(|()| s.to_owned())
        });
        let parallelism = self
            .parsed(map, P, "parallelism", false, |s| match s {
                "auto" => Ok(Parallelism::Auto),
                n => match n.parse::<u32>() {
                    Ok(n) if n >= 1 => Ok(Parallelism::Fixed(n)),
                    _ => Err(format!(
                        "`{n}` is not a parallelism: expected `auto` or a whole number >= 1"
                    )),
                },
            })
            .unwrap_or_default();
        if let Some(node) = self.field(map, P, "depends_on", false) {
            if let Some(items) = self.text_list(node, "batch.depends_on") {
                for (i, item) in items {
                    let path = if matches!(node, Node::Scalar(_)) {
                        "batch.depends_on".to_owned()
                    } else {
                        index("batch.depends_on", i)
                    };
                    depends_on.push(self.locate(item.as_str().to_owned(), item.span(), &path));
                }
            }
        }
        let input = input?;
        (self.errors.len() == before).then(|| BatchSource {
            input,
            transform,
            schedule,
            parallelism,
            depends_on: depends_on.iter().map(|d| d.value.clone()).collect(),
        })
    }

    fn files(&mut self, node: &Node) -> Option<BatchInput> {
        const P: &str = "batch.files";
        let map = self.expect_mapping(node, P)?;
        self.check_fields(map, P, &["path", "format"]);
        let path = self.text(map, P, "path", true)?;
        let format = self.parsed(map, P, "format", false, |s| match s {
            "parquet" => Ok(FileFormat::Parquet),
            "csv" => Ok(FileFormat::Csv),
            other => Err(format!(
                "unknown file format `{other}`: expected `parquet` or `csv`"
            )),
        });
        let format = match format {
            Some(f) => f,
            None if map.get_node("format").is_some() => return None,
            // Without a format, the path's extension says it.
            None if path.as_str().ends_with(".parquet") => FileFormat::Parquet,
            None if path.as_str().ends_with(".csv") => FileFormat::Csv,
            None => {
                self.error(
                    map.span(),
                    "batch.files.format",
                    "missing `format` (`parquet` or `csv`): the path does not end in .parquet or .csv",
                );
                return None;
            }
        };
        Some(BatchInput::Files {
            path: path.as_str().to_owned(),
            format,
        })
    }

    fn postgres(&mut self, node: &Node) -> Option<BatchInput> {
        const P: &str = "batch.postgres";
        let map = self.expect_mapping(node, P)?;
        self.check_fields(map, P, &["url", "query"]);
        let url = self.text(map, P, "url", true);
        let query = self.text(map, P, "query", true);
        Some(BatchInput::Postgres {
            url: url?.as_str().to_owned(),
            query: query?.as_str().to_owned(),
        })
    }

    /// The `features` mapping of an ingestion: feature name -> field reference or aggregate.
    fn mappings(&mut self, root: &MarkedMappingNode, is_stream: bool) -> Vec<MappingDraft> {
        let Some(map) = self
            .field(root, "", "features", true)
            .and_then(|node| self.expect_mapping(node, "features"))
        else {
            return Vec::new();
        };
        if map.is_empty() {
            self.error(
                map.span(),
                "features",
                "an ingestion must write at least one feature",
            );
        }
        let mut out = Vec::new();
        for (feature, node) in map.iter() {
            let path = join("features", feature.as_str());
            let expr = match node {
                Node::Scalar(s) if is_null(s) => {
                    self.error(
                        s.span(),
                        &path,
                        "missing value: a field reference or an aggregate",
                    );
                    None
                }
                Node::Scalar(s) => self
                    .check_expr(s, &path, is_stream)
                    .then(|| FeatureExpr::Field(s.as_str().to_owned())),
                Node::Mapping(m) if is_stream => self
                    .aggregate(m, &path, is_stream)
                    .map(FeatureExpr::Aggregate),
                Node::Mapping(m) => {
                    self.error(
                        m.span(),
                        &path,
                        "aggregates are computed on streams; a batch ingestion aggregates in its \
                         `transform`",
                    );
                    None
                }
                Node::Sequence(s) => {
                    self.error(
                        s.span(),
                        &path,
                        "expected a field reference or an aggregate mapping, found a list",
                    );
                    None
                }
            };
            let aggregate = match node {
                Node::Mapping(m) if is_stream => m
                    .get_scalar("aggregate")
                    .and_then(|f| aggregate_function(f.as_str()).ok()),
                _ => None,
            };
            out.push(MappingDraft {
                feature: self.locate(feature.as_str().to_owned(), feature.span(), &path),
                expr,
                aggregate,
            });
        }
        out
    }

    fn aggregate(
        &mut self,
        map: &MarkedMappingNode,
        path: &str,
        is_stream: bool,
    ) -> Option<AggregateExpr> {
        self.check_fields(map, path, &["aggregate", "of", "window", "slide"]);
        let before = self.errors.len();
        let function = self.parsed(map, path, "aggregate", true, |s| match s {
            "count" => Ok(AggregateFunction::Count),
            "sum" => Ok(AggregateFunction::Sum),
            "min" => Ok(AggregateFunction::Min),
            "max" => Ok(AggregateFunction::Max),
            "distinct_count" => Ok(AggregateFunction::DistinctCount),
            other => Err(
                match suggest(other, ["count", "sum", "min", "max", "distinct_count"]) {
                    Some(s) => format!("unknown aggregate `{other}`; did you mean `{s}`?"),
                    None => format!(
                    "unknown aggregate `{other}`: expected count, sum, min, max or distinct_count"
                ),
                },
            ),
        });
        let of = self.text(map, path, "of", false);
        match (function, of) {
            (Some(AggregateFunction::Count), Some(of)) => self.error(
                of.span(),
                &join(path, "of"),
                "`count` counts events and takes no `of`",
            ),
            (Some(f), None) if f != AggregateFunction::Count => self.error(
                map.span(),
                &join(path, "of"),
                format!(
                    "missing required field `of`: the value `{}` aggregates",
                    aggregate_name(f)
                ),
            ),
            (_, Some(of)) => {
                self.check_expr(of, &join(path, "of"), is_stream);
            }
            _ => {}
        }
        let window = self.parsed(map, path, "window", true, parse_duration);
        if window == Some(Duration::ZERO) {
            if let Some(n) = map.get_node("window") {
                self.error(
                    n.span(),
                    &join(path, "window"),
                    "`window` must be more than 0",
                );
            }
        }
        let slide = self.parsed(map, path, "slide", false, parse_duration);
        if let (Some(slide), Some(n)) = (slide, map.get_node("slide")) {
            if slide == Duration::ZERO {
                self.error(
                    n.span(),
                    &join(path, "slide"),
                    "`slide` must be more than 0",
                );
            } else if window.is_some_and(|w| slide > w) {
                self.error(
                    n.span(),
                    &join(path, "slide"),
                    format!(
                        "slide ({}) is longer than the window ({}): events would fall between windows",
                        format_duration(slide),
                        window.map(format_duration).unwrap_or_default()
                    ),
                );
            } else if let Some(w) = window.filter(|w| w.as_millis() % slide.as_millis().max(1) != 0)
            {
                self.error(
                    n.span(),
                    &join(path, "slide"),
                    format!(
                        "the window ({}) is not a whole number of slides ({})",
                        format_duration(w),
                        format_duration(slide)
                    ),
                );
            } else if let Some(w) =
                window.filter(|w| w.as_millis() / slide.as_millis().max(1) > MAX_SLIDES_PER_WINDOW)
            {
                self.error(
                    n.span(),
                    &join(path, "slide"),
                    format!(
                        "the window ({}) holds {} slides of {}, over the limit of {MAX_SLIDES_PER_WINDOW}",
                        format_duration(w),
                        w.as_millis() / slide.as_millis().max(1),
                        format_duration(slide)
                    ),
                );
            }
        }
        if self.errors.len() != before {
            return None;
        }
        Some(AggregateExpr {
            function: function?,
            of: of.map(|s| s.as_str().to_owned()),
            window: window?,
            slide,
        })
    }

    fn service(&mut self, root: &MarkedMappingNode, head: Head) -> ServiceDraft {
        self.check_fields(root, "", &["kind", "name", "description", "features"]);
        let mut selections = Vec::new();
        if let Some(items) = self
            .field(root, "", "features", true)
            .and_then(|node| self.expect_sequence(node, "features"))
        {
            if items.is_empty() {
                self.error(
                    items.span(),
                    "features",
                    "a feature service needs at least one feature",
                );
            }
            for (i, item) in items.iter().enumerate() {
                let path = index("features", i);
                let Some(s) = self.expect_scalar(item, &path) else {
                    continue;
                };
                let Some((group, feature)) = s.as_str().split_once(':') else {
                    self.error(
                        s.span(),
                        &path,
                        format!("`{}` is not `group:feature` or `group:*`", s.as_str()),
                    );
                    continue;
                };
                let (group, feature) = (group.trim().to_owned(), feature.trim());
                let feature = (feature != "*").then(|| feature.to_owned());
                if group.is_empty() || feature.as_deref() == Some("") {
                    self.error(
                        s.span(),
                        &path,
                        format!("`{}` is not `group:feature` or `group:*`", s.as_str()),
                    );
                    continue;
                }
                // A repeated or overlapping entry is most likely a copy-paste slip, and the
                // service's feature order must be unambiguous.
                let overlap =
                    selections
                        .iter()
                        .find(|earlier: &&Located<(String, Option<String>)>| {
                            let (g, f) = &earlier.value;
                            *g == group && (f.is_none() || feature.is_none() || *f == feature)
                        });
                if let Some(earlier) = overlap {
                    let (g, f) = &earlier.value;
                    let written = format!("{g}:{}", f.as_deref().unwrap_or("*"));
                    let message = if written == s.as_str() {
                        format!("`{written}` listed twice (first as {})", earlier.field)
                    } else {
                        format!("`{}` overlaps `{written}` ({})", s.as_str(), earlier.field)
                    };
                    self.error(s.span(), &path, message);
                    continue;
                }
                selections.push(self.locate((group, feature), s.span(), &path));
            }
        }
        ServiceDraft { head, selections }
    }
}

fn is_null(s: &MarkedScalarNode) -> bool {
    // Quoted text is never null; the loader marks plain scalars as coercible.
    s.as_str().is_empty()
        || (s.may_coerce() && matches!(s.as_str(), "~" | "null" | "Null" | "NULL"))
}

fn aggregate_function(name: &str) -> Result<AggregateFunction, String> {
    const NAMES: [&str; 5] = ["count", "sum", "min", "max", "distinct_count"];
    match name {
        "count" => Ok(AggregateFunction::Count),
        "sum" => Ok(AggregateFunction::Sum),
        "min" => Ok(AggregateFunction::Min),
        "max" => Ok(AggregateFunction::Max),
        "distinct_count" => Ok(AggregateFunction::DistinctCount),
        other => Err(match suggest(other, NAMES) {
            Some(s) => format!("unknown aggregate `{other}`; did you mean `{s}`?"),
            None => format!("unknown aggregate `{other}`: expected {}", NAMES.join(", ")),
        }),
    }
}

/// Most buckets a sliding window keeps per entity: each holds a partial aggregate in the
/// entity's record.
const MAX_SLIDES_PER_WINDOW: u128 = 4096;

fn aggregate_name(f: AggregateFunction) -> &'static str {
    match f {
        AggregateFunction::Count => "count",
        AggregateFunction::Sum => "sum",
        AggregateFunction::Min => "min",
        AggregateFunction::Max => "max",
        AggregateFunction::DistinctCount => "distinct_count",
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// Why a name is not a valid spec, feature or key field name.
fn name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        Some(format!(
            "`{name}` is not a valid name: use lowercase letters, digits and `_`, starting with a letter"
        ))
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "name is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        ))
    } else {
        None
    }
}

/// The longest topic name Kafka accepts, in bytes.
pub const MAX_TOPIC_LEN: usize = 249;

/// What is wrong with `topic` under Kafka's topic name rules (1 to [`MAX_TOPIC_LEN`] of
/// `[a-zA-Z0-9._-]`), if anything. Specs and the embedded log both follow them, so a
/// deployment can move from the embedded log to Kafka with the same topics.
pub fn topic_problem(topic: &str) -> Option<String> {
    let ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| {
        format!(
            "`{topic}` is not a valid topic name: use 1 to {MAX_TOPIC_LEN} of a-z, A-Z, 0-9, \
             `.`, `_`, `-`"
        )
    })
}

/// Parses `500ms`, `30s`, `10m`, `1h` or `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{text}` is not a duration: expected a whole number and a unit, as in 500ms, 30s, 10m, 1h or 30d")
    };
    let text_trimmed = text.trim();
    let digits = text_trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text_trimmed.len());
    let (number, unit) = text_trimmed.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("duration `{text}` is too long"))
}

/// Writes a duration in the largest unit that divides it, the way specs write them.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.checked_rem(size) == Some(0) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses a TTL jitter written as `10%` or `0.1`.
/// Largest `serving.admit_after`: past it, a tier would hardly ever cache anything.
pub const MAX_ADMIT_AFTER: u32 = 1000;

/// Largest `serving.early_refresh`: past it, entries would refresh almost as soon as cached.
pub const MAX_EARLY_REFRESH: f64 = 100.0;

/// XFetch's beta: a non-negative number, at most [`MAX_EARLY_REFRESH`].
pub fn parse_early_refresh(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(beta) if (0.0..=MAX_EARLY_REFRESH).contains(&beta) => Ok(beta),
        _ => Err(format!(
            "`{text}` is not an early refresh factor: expected a number from 0 (never) to \
             {MAX_EARLY_REFRESH}, 1 being the usual"
        )),
    }
}

pub fn parse_jitter(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| {
        format!("`{text}` is not a jitter: expected a percentage (10%) or a fraction (0.1)")
    })?;
    if !(0.0..=MAX_JITTER).contains(&value) {
        return Err(format!("jitter `{text}` is outside 0% to 50%"));
    }
    Ok(value)
}

/// Checks the shape of a cron expression: 5 fields (minute to weekday) or 6 (with seconds).
fn check_cron(text: &str) -> Result<(), String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "schedule `{text}` has {} fields; a cron expression has 5 (minute hour day month weekday) or 6 (with seconds first)",
            fields.len()
        ));
    }
    if let Some(field) = fields.iter().find(|f| {
        !f.chars()
            .all(|c| c.is_ascii_alphanumeric() || "*/,-?#".contains(c))
    }) {
        return Err(format!("schedule field `{field}` is not a cron field"));
    }
    Ok(())
}

/// Edit distance between two words, counting each insertion, deletion or substitution.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate nearest to a misspelt word, if it is near enough to be what was meant.
fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

// ---------------------------------------------------------------------------------------------
// Drafts and cross-checks

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
}

#[derive(Debug)]
struct FeatureDraft {
    name: String,
    /// `None` when the written type was reported as wrong.
    value_type: Option<ValueType>,
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
}

#[derive(Debug)]
struct ServiceDraft {
    head: Head,
    /// (group, feature); `None` selects the whole group.
    selections: Vec<Located<(String, Option<String>)>>,
}

/// Every spec document read, in the order read; those without a name are left out.
#[derive(Debug, Default)]
struct Drafts {
    entities: Vec<EntityDraft>,
    groups: Vec<GroupDraft>,
    ingestions: Vec<IngestionDraft>,
    services: Vec<ServiceDraft>,
}

fn error_at(origin: &Origin, field: &str, message: String) -> SpecError {
    SpecError {
        file: origin.file.clone(),
        line: origin.line,
        field: field.to_owned(),
        message,
    }
}

fn unknown(what: &str, name: &str, known: &BTreeMap<&str, usize>) -> String {
    match suggest(name, known.keys().copied()) {
        Some(s) => format!("unknown {what} `{name}`; did you mean `{s}`?"),
        None => format!("unknown {what} `{name}`"),
    }
}

/// Reports second declarations of a name and returns the first one of each name by index.
fn first_by_name<'d>(
    kind: SpecKind,
    heads: impl Iterator<Item = &'d Head>,
    errors: &mut Vec<SpecError>,
) -> BTreeMap<&'d str, usize> {
    let mut first: BTreeMap<&str, (usize, &Origin)> = BTreeMap::new();
    for (i, head) in heads.enumerate() {
        match first.get(head.name.as_str()) {
            Some((_, origin)) => errors.push(error_at(
                &head.origin,
                "name",
                format!(
                    "duplicate {kind} `{}`: already declared at {}:{}",
                    head.name, origin.file, origin.line
                ),
            )),
            None => {
                first.insert(&head.name, (i, &head.origin));
            }
        }
    }
    first.into_iter().map(|(k, (i, _))| (k, i)).collect()
}

impl Drafts {
    fn cross_check(&self, errors: &mut Vec<SpecError>) {
        let entities = first_by_name(
            SpecKind::Entity,
            self.entities.iter().map(|d| &d.head),
            errors,
        );
        let groups = first_by_name(
            SpecKind::FeatureGroup,
            self.groups.iter().map(|d| &d.head),
            errors,
        );
        let ingestions = first_by_name(
            SpecKind::Ingestion,
            self.ingestions.iter().map(|d| &d.head),
            errors,
        );
        first_by_name(
            SpecKind::FeatureService,
            self.services.iter().map(|d| &d.head),
            errors,
        );

        for group in &self.groups {
            if let Some(entity) = &group.entity {
                if !entities.contains_key(entity.value.as_str()) {
                    errors.push(error_at(
                        &entity.origin,
                        &entity.field,
                        unknown("entity", &entity.value, &entities),
                    ));
                }
            }
        }

        for ingestion in &self.ingestions {
            self.check_ingestion(ingestion, &entities, &groups, &ingestions, errors);
        }
        self.check_dependency_cycles(&ingestions, errors);

        for service in &self.services {
            for selection in &service.selections {
                let (group_name, feature) = &selection.value;
                let Some(&g) = groups.get(group_name.as_str()) else {
                    errors.push(error_at(
                        &selection.origin,
                        &selection.field,
                        unknown("feature group", group_name, &groups),
                    ));
                    continue;
                };
                let group = &self.groups[g];
                if let Some(feature) = feature {
                    if !group.features.iter().any(|f| &f.name == feature) {
                        errors.push(error_at(
                            &selection.origin,
                            &selection.field,
                            no_such_feature(group, feature),
                        ));
                    }
                }
            }
        }
    }

    fn check_ingestion(
        &self,
        ingestion: &IngestionDraft,
        entities: &BTreeMap<&str, usize>,
        groups: &BTreeMap<&str, usize>,
        ingestions: &BTreeMap<&str, usize>,
        errors: &mut Vec<SpecError>,
    ) {
        for dep in &ingestion.depends_on {
            match ingestions.get(dep.value.as_str()) {
                None => errors.push(error_at(
                    &dep.origin,
                    &dep.field,
                    unknown("ingestion", &dep.value, ingestions),
                )),
                Some(&i) => {
                    if matches!(self.ingestions[i].source, Some(IngestionSource::Stream(_))) {
                        errors.push(error_at(
                            &dep.origin,
                            &dep.field,
                            format!(
                                "`{}` is a stream ingestion; `depends_on` names batch ingestions",
                                dep.value
                            ),
                        ));
                    }
                }
            }
        }
        let Some(into) = &ingestion.into else { return };
        let Some(&g) = groups.get(into.value.as_str()) else {
            errors.push(error_at(
                &into.origin,
                &into.field,
                unknown("feature group", &into.value, groups),
            ));
            return;
        };
        let group = &self.groups[g];

        let entity = group
            .entity
            .as_ref()
            .and_then(|e| entities.get(e.value.as_str()))
            .map(|&e| &self.entities[e]);
        if let (Some(entity), Some(keys), Some(key)) =
            (entity, entity.and_then(|e| e.keys.as_ref()), &ingestion.key)
        {
            if keys.len() != key.value.len() {
                let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
                errors.push(error_at(
                    &key.origin,
                    &key.field,
                    format!(
                        "group `{}` is keyed by entity `{}`, which has {} key field(s) ({}); got {} key expression(s)",
                        group.head.name,
                        entity.head.name,
                        keys.len(),
                        names.join(", "),
                        key.value.len()
                    ),
                ));
            }
        }

        for mapping in &ingestion.features {
            let feature = &mapping.feature;
            let Some(declared) = group.features.iter().find(|f| f.name == feature.value) else {
                errors.push(error_at(
                    &feature.origin,
                    &feature.field,
                    no_such_feature(group, &feature.value),
                ));
                continue;
            };
            let Some(function) = mapping.aggregate else {
                continue;
            };
            if group.kind == Some(GroupKind::Timeseries) {
                errors.push(error_at(
                    &feature.origin,
                    &feature.field,
                    format!(
                        "aggregates write into attribute groups; `{}` is a timeseries group",
                        group.head.name
                    ),
                ));
                continue;
            }
            let Some(value_type) = declared.value_type else {
                continue;
            };
            let int64 = ValueType::Scalar(ScalarType::Int64);
            let float64 = ValueType::Scalar(ScalarType::Float64);
            let fits = match function {
                AggregateFunction::Count | AggregateFunction::DistinctCount => value_type == int64,
                AggregateFunction::Sum | AggregateFunction::Min | AggregateFunction::Max => {
                    value_type == int64 || value_type == float64
                }
            };
            if !fits {
                let expected = match function {
                    AggregateFunction::Count | AggregateFunction::DistinctCount => "int64",
                    _ => "int64 or float64",
                };
                errors.push(error_at(
                    &feature.origin,
                    &feature.field,
                    format!(
                        "`{}` produces {expected}, but feature `{}` of `{}` is {value_type}",
                        aggregate_name(function),
                        feature.value,
                        group.head.name
                    ),
                ));
            }
        }
    }

    /// Reports each cycle of batch `depends_on` once, as `a -> b -> a`, at the first declared
    /// member of the cycle.
    fn check_dependency_cycles(
        &self,
        ingestions: &BTreeMap<&str, usize>,
        errors: &mut Vec<SpecError>,
    ) {
        // Edges between first declarations only; duplicates were reported already.
        let edges: Vec<Vec<usize>> = self
            .ingestions
            .iter()
            .map(|d| {
                d.depends_on
                    .iter()
                    .filter_map(|dep| ingestions.get(dep.value.as_str()).copied())
                    .collect()
            })
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            OnPath,
            Done,
        }
        let mut mark = vec![Mark::New; edges.len()];
        let mut cycles: BTreeSet<Vec<usize>> = BTreeSet::new();
        // Iterative depth-first search: a long chain of dependencies must not exhaust the stack.
        for &start in ingestions.values() {
            if mark[start] != Mark::New {
                continue;
            }
            let mut path: Vec<(usize, usize)> = vec![(start, 0)];
            mark[start] = Mark::OnPath;
            while let Some(&mut (node, ref mut next)) = path.last_mut() {
                if let Some(&to) = edges[node].get(*next) {
                    *next += 1;
                    match mark[to] {
                        Mark::New => {
                            mark[to] = Mark::OnPath;
                            path.push((to, 0));
                        }
                        Mark::OnPath => {
                            let from = path.iter().position(|(n, _)| *n == to).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                path[from..].iter().map(|(n, _)| *n).collect();
                            // One rotation per cycle, starting at its first declared member.
                            let min = cycle
                                .iter()
                                .enumerate()
                                .min_by_key(|(_, n)| **n)
                                .map(|(i, _)| i)
                                .unwrap_or(0);
                            cycle.rotate_left(min);
                            cycles.insert(cycle);
                        }
                        Mark::Done => {}
                    }
                } else {
                    mark[node] = Mark::Done;
                    path.pop();
                }
            }
        }
        for cycle in cycles {
            let names: Vec<&str> = cycle
                .iter()
                .map(|&i| self.ingestions[i].head.name.as_str())
                .collect();
            let first = &self.ingestions[cycle[0]];
            let next = names.get(1).copied().unwrap_or(names[0]);
            let at = first
                .depends_on
                .iter()
                .find(|d| d.value == next)
                .map(|d| (&d.origin, d.field.as_str()))
                .unwrap_or((&first.head.origin, "batch.depends_on"));
            errors.push(error_at(
                at.0,
                at.1,
                format!("dependency cycle: {} -> {}", names.join(" -> "), names[0]),
            ));
        }
    }

    /// The repo, when every draft is complete (which no error found means).
    fn build(self) -> Option<FeatureRepo> {
        let mut repo = FeatureRepo::default();
        for d in self.entities {
            repo.origins
                .insert((SpecKind::Entity, d.head.name.clone()), d.head.origin);
            repo.entities.push(Entity {
                name: d.head.name,
                keys: d.keys?,
                description: d.head.description,
            });
        }
        for d in self.groups {
            repo.origins
                .insert((SpecKind::FeatureGroup, d.head.name.clone()), d.head.origin);
            let features = d
                .features
                .into_iter()
                .map(|f| {
                    Some(Feature {
                        name: f.name,
                        value_type: f.value_type?,
                        description: f.description,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            repo.groups.push(FeatureGroup {
                name: d.head.name,
                entity: d.entity?.value,
                kind: d.kind?,
                features,
                retention: d.retention,
                serving: d.serving,
                max_record_bytes: d.max_record_bytes,
                description: d.head.description,
            });
        }
        for d in self.ingestions {
            repo.origins
                .insert((SpecKind::Ingestion, d.head.name.clone()), d.head.origin);
            let features = d
                .features
                .into_iter()
                .map(|m| {
                    Some(FeatureMapping {
                        feature: m.feature.value,
                        expr: m.expr?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            repo.ingestions.push(Ingestion {
                name: d.head.name,
                into: d.into?.value,
                source: d.source?,
                key: d.key?.value,
                event_time: d.event_time,
                features,
            });
        }
        for d in self.services {
            repo.origins.insert(
                (SpecKind::FeatureService, d.head.name.clone()),
                d.head.origin,
            );
            // Entries of one group are merged, in the order the groups first appear.
            let mut features: Vec<FeatureSelection> = Vec::new();
            for s in d.selections {
                let (group, feature) = s.value;
                match features.iter_mut().find(|f| f.group == group) {
                    Some(existing) => {
                        if let (Some(list), Some(feature)) = (&mut existing.features, feature) {
                            list.push(feature);
                        }
                    }
                    None => features.push(FeatureSelection {
                        group,
                        features: feature.map(|f| vec![f]),
                    }),
                }
            }
            repo.services.push(FeatureService {
                name: d.head.name,
                features,
                description: d.head.description,
            });
        }
        repo.entities.sort_by(|a, b| a.name.cmp(&b.name));
        repo.groups.sort_by(|a, b| a.name.cmp(&b.name));
        repo.ingestions.sort_by(|a, b| a.name.cmp(&b.name));
        repo.services.sort_by(|a, b| a.name.cmp(&b.name));
        Some(repo)
    }
}

fn no_such_feature(group: &GroupDraft, feature: &str) -> String {
    match suggest(feature, group.features.iter().map(|f| f.name.as_str())) {
        Some(s) => format!(
            "group `{}` has no feature `{feature}`; did you mean `{s}`?",
            group.head.name
        ),
        None => format!("group `{}` has no feature `{feature}`", group.head.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(text: &str) -> Vec<String> {
        match parse_repo(&[("repo.yaml".to_owned(), text.to_owned())]) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    const USER: &str = "kind: Entity\nname: user\nkeys: [{ name: user_id, type: string }]\n";

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in [
            "",
            "10",
            "1.5h",
            "-1s",
            "1 h",
            "1w",
            "h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn jitter_is_a_percentage_or_a_fraction_up_to_half() {
        assert_eq!(parse_jitter("10%"), Ok(0.1));
        assert_eq!(parse_jitter("0.25"), Ok(0.25));
        assert_eq!(parse_jitter("0"), Ok(0.0));
        assert_eq!(parse_jitter("50%"), Ok(0.5));
        assert!(parse_jitter("51%")
            .unwrap_err()
            .contains("outside 0% to 50%"));
        assert!(parse_jitter("-0.1").is_err());
        assert!(parse_jitter("ten").is_err());
    }

    #[test]
    fn names_are_lowercase_identifiers_of_at_most_64() {
        assert_eq!(name_problem("user_id2"), None);
        assert!(name_problem("User").is_some());
        assert!(name_problem("2users").is_some());
        assert!(name_problem("user-id").is_some());
        assert!(name_problem("").is_some());
        assert_eq!(name_problem(&"a".repeat(64)), None);
        assert!(name_problem(&"a".repeat(65))
            .unwrap()
            .contains("limit is 64"));
    }

    #[test]
    fn topics_follow_kafkas_rules() {
        let longest = "t".repeat(MAX_TOPIC_LEN);
        for good in ["user-actions", "a.b_c-D9", longest.as_str()] {
            assert_eq!(topic_problem(good), None, "{good}");
        }
        let too_long = "t".repeat(MAX_TOPIC_LEN + 1);
        for bad in ["", "user actions", "naïve", "a/b", too_long.as_str()] {
            assert!(topic_problem(bad).is_some(), "{bad}");
        }
        assert_eq!(
            topic_problem("a b").unwrap(),
            "`a b` is not a valid topic name: use 1 to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`"
        );
    }

    #[test]
    fn suggestions_need_a_near_miss() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest("featurs", ["features", "entity"]), Some("features"));
        assert_eq!(
            suggest("soft_tl", ["soft_ttl", "hard_ttl"]),
            Some("soft_ttl")
        );
        assert_eq!(suggest("zzz", ["features", "entity"]), None);
    }

    #[test]
    fn cron_schedules_have_five_or_six_fields() {
        assert!(check_cron("0 3 * * *").is_ok());
        assert!(check_cron("0 0 3 * * MON-FRI").is_ok());
        assert!(check_cron("0 3 * *").is_err());
        assert!(check_cron("@daily").is_err());
        assert!(check_cron("0 3 * * * ; rm").is_err());
    }

    #[test]
    fn documents_split_on_separator_lines_only() {
        let chunks = split_documents("a: 1\n---\nb: 2\n--- # c\nc: 3\nd: \"---\"\n");
        let firsts: Vec<usize> = chunks.iter().map(|c| c.first_line).collect();
        assert_eq!(firsts, vec![1, 2, 4]);
        assert_eq!(chunks[2].text, "--- # c\nc: 3\nd: \"---\"\n");
        assert!(Chunk {
            first_line: 1,
            text: "---\n# note\n\n"
        }
        .is_blank());
    }

    #[test]
    fn defaults_fill_what_a_group_leaves_out() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
             features: [{{ name: f, type: int64 }}]\nserving: {{ hard_ttl: 1h }}\n"
        );
        let repo = parse_repo(&[("r.yaml".into(), text)]).unwrap();
        let g = &repo.groups[0];
        assert_eq!(g.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
        assert_eq!(g.retention, Retention::default());
        assert_eq!(
            g.serving,
            ServingPolicy {
                hard_ttl: Duration::from_secs(3600),
                ..ServingPolicy::default()
            }
        );
        assert_eq!(
            repo.origins[&(SpecKind::FeatureGroup, "g".to_owned())],
            Origin {
                file: "r.yaml".into(),
                line: 5
            }
        );
    }

    #[test]
    fn soft_ttl_is_checked_against_the_default_hard_ttl() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
             features: [{{ name: f, type: int64 }}]\nserving: {{ soft_ttl: 1h }}\n"
        );
        assert_eq!(
            errors_of(&text),
            vec![
                "repo.yaml:10: serving.soft_ttl: soft_ttl (1h) is longer than hard_ttl (10m): \
                 a copy must turn stale before it expires"
            ]
        );
    }

    #[test]
    fn early_refresh_and_admission() {
        let group = |serving: &str| {
            format!(
                "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
                 features: [{{ name: f, type: int64 }}]\nserving: {{ {serving} }}\n"
            )
        };
        let text = group("early_refresh: 2.5, admit_after: 3, admit_window: 5m");
        let repo = parse_repo(&[("r.yaml".into(), text)]).unwrap();
        let serving = &repo.groups[0].serving;
        assert_eq!(serving.early_refresh, 2.5);
        assert_eq!(serving.admit_after, 3);
        assert_eq!(serving.admit_window, Duration::from_secs(300));

        assert_eq!(
            errors_of(&group(
                "early_refresh: -1, admit_after: 0, admit_window: 0s"
            )),
            vec![
                "repo.yaml:10: serving.early_refresh: `-1` is not an early refresh factor: \
                 expected a number from 0 (never) to 100, 1 being the usual",
                "repo.yaml:10: serving.admit_after: `0` is not a read count: expected a whole \
                 number from 1 to 1000",
                "repo.yaml:10: serving.admit_window: `admit_window` must be more than 0",
            ]
        );
    }

    #[test]
    fn stream_defaults_and_single_key() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: g\nentity: user\ntype: attribute\n\
             features: [{{ name: f, type: int64 }}]\n---\nkind: Ingestion\nname: i\n\
             stream: {{ topic: t }}\ninto: g\nkey: $.user_id\nfeatures: {{ f: $.f }}\n"
        );
        let repo = parse_repo(&[("r.yaml".into(), text)]).unwrap();
        let IngestionSource::Stream(s) = &repo.ingestions[0].source else {
            panic!("a stream ingestion")
        };
        assert_eq!(s.format, EventFormat::Json);
        assert_eq!(s.event_type_field, "type");
        assert!(s.event_types.is_empty());
        assert_eq!(repo.ingestions[0].key, vec!["$.user_id".to_owned()]);
        assert_eq!(repo.ingestions[0].event_time, None);
    }

    #[test]
    fn aggregates_only_into_attribute_groups_of_numeric_features() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: ts\nentity: user\ntype: timeseries\n\
             features: [{{ name: n, type: int64 }}]\n---\nkind: FeatureGroup\nname: a\n\
             entity: user\ntype: attribute\nfeatures: [{{ name: s, type: string }}, \
             {{ name: x, type: float64 }}]\n---\nkind: Ingestion\nname: i\nstream: {{ topic: t }}\n\
             into: ts\nkey: $.u\nfeatures: {{ n: {{ aggregate: count, window: 1h }} }}\n---\n\
             kind: Ingestion\nname: j\nstream: {{ topic: t }}\ninto: a\nkey: $.u\nfeatures:\n  \
             s: {{ aggregate: min, of: $.v, window: 1h }}\n  \
             x: {{ aggregate: distinct_count, of: $.v, window: 1h }}\n"
        );
        assert_eq!(
            errors_of(&text),
            vec![
                "repo.yaml:22: features.n: aggregates write into attribute groups; `ts` is a \
                 timeseries group",
                "repo.yaml:30: features.s: `min` produces int64 or float64, but feature `s` of \
                 `a` is string",
                "repo.yaml:31: features.x: `distinct_count` produces int64, but feature `x` of \
                 `a` is float64",
            ]
        );
    }

    #[test]
    fn sliding_windows_are_whole_numbers_of_slides_within_a_limit() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: a\nentity: user\ntype: attribute\n\
             features: [{{ name: n, type: int64 }}, {{ name: m, type: int64 }}]\n---\n\
             kind: Ingestion\nname: i\nstream: {{ topic: t }}\ninto: a\nkey: $.u\nfeatures:\n  \
             n: {{ aggregate: count, window: 1h, slide: 7m }}\n  \
             m: {{ aggregate: count, window: 1d, slide: 1s }}\n"
        );
        assert_eq!(
            errors_of(&text),
            vec![
                "repo.yaml:17: features.n.slide: the window (1h) is not a whole number of slides \
                 (7m)",
                "repo.yaml:18: features.m.slide: the window (1d) holds 86400 slides of 1s, over \
                 the limit of 4096",
            ]
        );
    }

    #[test]
    fn aggregates_other_than_count_need_of() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: a\nentity: user\ntype: attribute\n\
             features: [{{ name: n, type: int64 }}]\n---\nkind: Ingestion\nname: i\n\
             stream: {{ topic: t }}\ninto: a\nkey: $.u\n\
             features: {{ n: {{ aggregate: sum, window: 1h, wndow: 2h }} }}\n"
        );
        assert_eq!(
            errors_of(&text),
            vec![
                "repo.yaml:16: features.n.wndow: unknown field `wndow`; did you mean `window`?",
                "repo.yaml:16: features.n.of: missing required field `of`: the value `sum` \
                 aggregates",
            ]
        );
    }

    #[test]
    fn service_entries_merge_per_group() {
        let text = format!(
            "{USER}---\nkind: FeatureGroup\nname: a\nentity: user\ntype: attribute\n\
             features: [{{ name: x, type: int64 }}, {{ name: y, type: int64 }}]\n---\n\
             kind: FeatureService\nname: s\nfeatures: [\"a:y\", \"a:x\"]\n"
        );
        let repo = parse_repo(&[("r.yaml".into(), text)]).unwrap();
        assert_eq!(
            repo.services[0].features,
            vec![FeatureSelection {
                group: "a".into(),
                features: Some(vec!["y".into(), "x".into()])
            }]
        );
    }

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
