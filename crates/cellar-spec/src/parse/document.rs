//! One YAML document: splitting files on `---`, loading a document with its lines mapped to
//! the file's, the generic readers of fields (reporting what is missing, unknown or of the
//! wrong shape), and the dispatch of a document to the reader of its kind.

use std::panic::{catch_unwind, AssertUnwindSafe};

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};

use super::scalars::name_problem;
use super::suggest::suggest;
use super::{Doc, Drafts, Head, Located, SpecError, MAX_LINE_WIDTH};
use crate::model::Origin;
use crate::repo::SpecKind;

/// One YAML document of a file.
pub(super) struct Chunk<'t> {
    /// Line of the file the chunk starts on (1-based), where its `---` is.
    pub(super) first_line: usize,
    pub(super) text: &'t str,
}

impl Chunk<'_> {
    /// Only separators, comments and blank lines: not a spec, and not an error either.
    pub(super) fn is_blank(&self) -> bool {
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
pub(super) fn split_documents(text: &str) -> Vec<Chunk<'_>> {
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
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

pub(super) fn is_null(s: &MarkedScalarNode) -> bool {
    // Quoted text is never null; the loader marks plain scalars as coercible.
    s.as_str().is_empty()
        || (s.may_coerce() && matches!(s.as_str(), "~" | "null" | "Null" | "NULL"))
}

impl Doc<'_> {
    pub(super) fn line(&self, span: &Span) -> usize {
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

    pub(super) fn locate<T>(&self, value: T, span: &Span, field: &str) -> Located<T> {
        Located {
            value,
            origin: self.origin(span),
            field: field.to_owned(),
        }
    }

    pub(super) fn error(&mut self, span: &Span, field: &str, message: impl Into<String>) {
        let line = self.line(span);
        self.error_at(line, field, message);
    }

    pub(super) fn error_at(&mut self, line: usize, field: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            line,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Parses one document's text into its root mapping, reporting YAML errors.
    pub(super) fn load(&mut self, text: &str) -> Option<MarkedMappingNode> {
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

    /// Reports keys of `map` that are not in `allowed`, suggesting the nearest allowed one.
    pub(super) fn check_fields(&mut self, map: &MarkedMappingNode, path: &str, allowed: &[&str]) {
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
    pub(super) fn field<'n>(
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

    pub(super) fn expect_scalar<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
    ) -> Option<&'n MarkedScalarNode> {
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

    pub(super) fn expect_mapping<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
    ) -> Option<&'n MarkedMappingNode> {
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

    pub(super) fn expect_sequence<'n>(
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
    pub(super) fn text<'n>(
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
    pub(super) fn parsed<T>(
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
    pub(super) fn text_list<'n>(
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
    pub(super) fn check_name(&mut self, scalar: &MarkedScalarNode, path: &str) -> bool {
        match name_problem(scalar.as_str()) {
            Some(problem) => {
                self.error(scalar.span(), path, problem);
                false
            }
            None => true,
        }
    }

    pub(super) fn spec(&mut self, root: &MarkedMappingNode, drafts: &mut Drafts) {
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
            SpecKind::FeatureGroup
                if root
                    .get_scalar("type")
                    .is_some_and(|t| t.as_str().trim() == "on_demand") =>
            {
                let draft = self.on_demand_group(root, head);
                if !draft.head.name.is_empty() {
                    drafts.on_demand.push(draft);
                }
            }
            SpecKind::FeatureGroup => {
                let draft = self.group(root, head);
                if !draft.head.name.is_empty() {
                    drafts.groups.push(draft);
                }
            }
            // Written as `kind: FeatureGroup` with `type: on_demand`.
            SpecKind::OnDemandGroup => {}
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
