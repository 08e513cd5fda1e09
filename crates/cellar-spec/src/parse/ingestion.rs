//! Ingestion documents: the stream or batch source, keys and event time, and the expressions
//! that read them.

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;

use super::document::{index, join};
use super::scalars::{check_cron, topic_problem};
use super::{Doc, Head, IngestionDraft, Located};
use crate::model::{
    BatchInput, BatchSource, EventFormat, FileFormat, IngestionSource, Parallelism, StreamSource,
};

impl Doc<'_> {
    pub(super) fn ingestion(&mut self, root: &MarkedMappingNode, head: Head) -> IngestionDraft {
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
    pub(super) fn check_expr(
        &mut self,
        scalar: &MarkedScalarNode,
        path: &str,
        is_stream: bool,
    ) -> bool {
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
        if let Some(url) = url {
            if let Some(problem) = secret_problem(url.as_str()) {
                self.error(url.span(), &join(P, "url"), problem);
            }
        }
        let query = self.text(map, P, "query", true);
        Some(BatchInput::Postgres {
            url: url?.as_str().to_owned(),
            query: query?.as_str().to_owned(),
        })
    }
}

/// What is wrong with a source URL that may hold a password: a malformed reference, or a
/// password written out, which the registry would store and every reader of it see. Neither
/// the URL nor the password is quoted.
fn secret_problem(url: &str) -> Option<String> {
    match crate::secret::literal_password(url) {
        Ok(None) => None,
        Ok(Some(place)) => Some(format!(
            "the URL holds a password {place}, which would be stored in the registry: refer to \
             it instead, as `${{NAME}}` (an environment variable) or `${{file:PATH}}` (a file's \
             contents), e.g. postgres://user:${{PG_PASSWORD}}@host/db; it is read when the \
             ingestion runs"
        )),
        Err(e) => Some(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_repo;
    use crate::parse::tests::USER;

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
}
