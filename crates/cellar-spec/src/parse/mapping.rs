//! An ingestion's feature mappings: expressions and windowed aggregates.

use std::time::Duration;

use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use super::document::{is_null, join};
use super::scalars::{format_duration, parse_duration};
use super::suggest::suggest;
use super::{Doc, Located, MappingDraft};
use crate::aggregate::MAX_SLIDES_PER_WINDOW;
use crate::model::{AggregateExpr, AggregateFunction, FeatureExpr};

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

pub(super) fn aggregate_name(f: AggregateFunction) -> &'static str {
    match f {
        AggregateFunction::Count => "count",
        AggregateFunction::Sum => "sum",
        AggregateFunction::Min => "min",
        AggregateFunction::Max => "max",
        AggregateFunction::DistinctCount => "distinct_count",
    }
}

impl Doc<'_> {
    /// The `features` mapping of an ingestion: feature name -> field reference or aggregate.
    pub(super) fn mappings(
        &mut self,
        root: &MarkedMappingNode,
        is_stream: bool,
    ) -> Vec<MappingDraft> {
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
            let mut written_expr = None;
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
                Node::Mapping(m) if m.get_node("expr").is_some() => {
                    written_expr = self.expression(m, &path);
                    written_expr
                        .as_ref()
                        .map(|e| FeatureExpr::Expression(e.value.clone()))
                }
                Node::Mapping(m) if is_stream => self
                    .aggregate(m, &path, is_stream)
                    .map(FeatureExpr::Aggregate),
                Node::Mapping(m) => {
                    self.error(
                        m.span(),
                        &path,
                        "aggregates are computed on streams; a batch ingestion aggregates in its \
                         `transform` (a mapping here is either `{ aggregate: ... }` on a stream \
                         or `{ expr: ... }`)",
                    );
                    None
                }
                Node::Sequence(s) => {
                    self.error(
                        s.span(),
                        &path,
                        "expected a field reference, an aggregate or an `expr` mapping, found a \
                         list",
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
                written_expr,
            });
        }
        out
    }

    /// A write-time expression: `{ expr: "clicks / CAST(views AS DOUBLE)" }`, checked against
    /// the ingestion's inputs once the repo is built.
    fn expression(&mut self, map: &MarkedMappingNode, path: &str) -> Option<Located<String>> {
        self.check_fields(map, path, &["expr"]);
        let text = self.text(map, path, "expr", true)?;
        if text.as_str().trim().is_empty() {
            self.error(text.span(), &join(path, "expr"), "empty expression");
            return None;
        }
        Some(self.locate(text.as_str().to_owned(), text.span(), &join(path, "expr")))
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
            } else if let Some(w) = window.filter(|w| {
                w.as_millis() / slide.as_millis().max(1) > u128::from(MAX_SLIDES_PER_WINDOW)
            }) {
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
}

#[cfg(test)]
mod tests {
    use crate::parse::tests::{errors_of, USER};

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
}
