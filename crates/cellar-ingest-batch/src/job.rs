//! A batch ingestion ready to run: its spec checked and resolved once (group, entity, feature
//! positions, columns read, how records are written), shared by every shard of the job.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use cellar_expr::WriteExpressions;
use cellar_spec::limits::EventTimeBounds;
use cellar_spec::{
    BatchInput, Entity, FeatureExpr, FeatureGroup, FeatureRepo, FileFormat, GroupKind, Ingestion,
    IngestionSource, Parallelism,
};

use crate::error::{BatchError, Result};
use crate::files::Storage;
use crate::transform::Transform;

/// Rows per record batch read.
pub const DEFAULT_BATCH_ROWS: usize = 4096;

/// Rows per store write. Larger sorted writes are faster per row on the embedded store: more
/// of their keys are neighbours in its index, and fewer fsyncs are paid (`batch_bench`,
/// attribute group: 280k-460k rows/s at 16 Ki rows per write, 400k-550k at 32 Ki, 500k-690k
/// at 64 Ki, with about 110 MB more peak memory than 16 Ki). A write holds its
/// group's writer lock while it decides and appends its rows, delaying concurrent writers of
/// the group (stream ingestion, pushes) for that long, and a shard holds up to four writes
/// in memory (one gathering, two queued, one writing).
pub const DEFAULT_WRITE_ROWS: usize = 64 * 1024;

/// Share of a shard's rows that may be rejected before the shard fails.
pub const DEFAULT_MAX_REJECT_RATIO: f64 = 0.01;

/// Rows a shard reads before its reject ratio is judged mid-shard (it is always judged at the
/// end): the first rejected row of a shard must not fail it alone.
pub const REJECT_RATIO_MIN_ROWS: u64 = 1000;

/// How a job's rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Each row is a whole record: time series (inserted at its event time, replacing one of
    /// the same event time) and attribute groups whose every feature the ingestion maps
    /// (stored unless the stored record's event time is the same or newer). A redone shard
    /// writes nothing new: every put of it is stale, or replaces a record with itself.
    Put,
    /// The ingestion sets some of an attribute group's features: each row is merged into the
    /// stored record (its fields set when the row is not older than the record), leaving the
    /// others, as stream ingestion does. Merging the same row again sets the same values.
    Merge,
}

/// The span of event time a job loads, `[from, to)` in epoch milliseconds; an open end is
/// unbounded. Rows outside it are skipped, not rejected: a daily run reading a file that also
/// holds other days loads only its own. Ingestions without an event-time column stamp every
/// row with the run time and load every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Period {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl Period {
    /// Every event time.
    pub const ALL: Period = Period {
        from_ms: None,
        to_ms: None,
    };

    pub fn contains(&self, event_time_ms: i64) -> bool {
        self.from_ms.is_none_or(|from| event_time_ms >= from)
            && self.to_ms.is_none_or(|to| event_time_ms < to)
    }
}

/// Tuning of a job's shards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobOptions {
    /// Rows per record batch read: what a reader holds in memory per column at once.
    pub batch_rows: usize,
    /// Rows gathered (from one file) into one store write, sorted by entity key.
    pub write_rows: usize,
    /// A shard fails once more than this share of its rows is rejected (0.0: any reject fails
    /// it, 1.0: never).
    pub max_reject_ratio: f64,
    /// Rows with an event time outside are rejected.
    pub event_times: EventTimeBounds,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            batch_rows: DEFAULT_BATCH_ROWS,
            write_rows: DEFAULT_WRITE_ROWS,
            max_reject_ratio: DEFAULT_MAX_REJECT_RATIO,
            event_times: EventTimeBounds::default(),
        }
    }
}

/// Where a job's rows come from.
#[derive(Clone, PartialEq, Eq)]
pub enum JobInput {
    /// Parquet or CSV files: a path, directory or glob.
    Files { path: String, format: FileFormat },
    /// The rows of one query on a PostgreSQL database, in the order it returns them. `url`
    /// may hold a password: `Debug` and every error show the URL with it hidden.
    Postgres { url: String, query: String },
}

impl std::fmt::Debug for JobInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobInput::Files { path, format } => f
                .debug_struct("Files")
                .field("path", path)
                .field("format", format)
                .finish(),
            JobInput::Postgres { url, query } => f
                .debug_struct("Postgres")
                .field("url", &crate::postgres::redact(url))
                .field("query", query)
                .finish(),
        }
    }
}

/// A batch ingestion ready to plan and run.
#[derive(Debug, Clone)]
pub struct BatchJob {
    /// The ingestion's name, in reports and rejects.
    pub ingestion: String,
    /// Where the rows come from.
    pub input: JobInput,
    pub parallelism: Parallelism,
    /// The group written, shared with every write.
    pub group: Arc<FeatureGroup>,
    /// The group's entity: its key fields' order and types.
    pub entity: Entity,
    /// Columns holding the entity's key fields, in the entity's order.
    pub key_columns: Vec<String>,
    /// Column holding each row's event time; `None` stamps every row with `run_time_ms`.
    pub event_time_column: Option<String>,
    /// (feature position in the group, column), in the ingestion's order.
    pub features: Vec<(usize, String)>,
    /// Features computed from the others by write-time expressions, after each record batch
    /// is mapped.
    pub computed: Option<Arc<WriteExpressions>>,
    pub mode: WriteMode,
    /// When the job runs, epoch milliseconds: the event time of rows when the ingestion names
    /// no event-time column. Fixed per job, so a redone shard stamps the same time.
    pub run_time_ms: i64,
    /// Rows whose event time falls outside are skipped.
    pub period: Period,
    pub options: JobOptions,
    /// The SQL run over the input before its rows are mapped; the columns above are then the
    /// query's.
    pub transform: Option<Transform>,
    /// The columns readers read when they are not the mapped ones: a transform's input
    /// columns, on the copy of the job that reads its `source` table.
    pub(crate) read_columns: Option<Vec<String>>,
    /// Where its files are read from (clones of the job share its object store clients).
    pub(crate) storage: Storage,
}

impl BatchJob {
    /// The job of ingestion `name` of `repo`.
    pub fn from_repo(repo: &FeatureRepo, name: &str, run_time_ms: i64) -> Result<BatchJob> {
        let ingestion = repo.ingestion(name).ok_or_else(|| BatchError::Job {
            ingestion: name.to_owned(),
            reason: "no such ingestion".into(),
        })?;
        let fail = |reason: String| BatchError::Job {
            ingestion: name.to_owned(),
            reason,
        };
        let group = repo
            .group(&ingestion.into)
            .ok_or_else(|| fail(format!("group `{}` does not exist", ingestion.into)))?;
        let entity = repo
            .entity(&group.entity)
            .ok_or_else(|| fail(format!("entity `{}` does not exist", group.entity)))?;
        BatchJob::new(ingestion, group, entity, run_time_ms)
    }

    /// The job of `ingestion`, which writes `group` of `entity`.
    pub fn new(
        ingestion: &Ingestion,
        group: &FeatureGroup,
        entity: &Entity,
        run_time_ms: i64,
    ) -> Result<BatchJob> {
        let fail = |reason: String| BatchError::Job {
            ingestion: ingestion.name.clone(),
            reason,
        };
        let IngestionSource::Batch(batch) = &ingestion.source else {
            return Err(fail("it is a stream ingestion".into()));
        };
        let input = match &batch.input {
            BatchInput::Files { path, format } => JobInput::Files {
                path: path.clone(),
                format: *format,
            },
            BatchInput::Postgres { url, query } => JobInput::Postgres {
                url: url.clone(),
                query: query.clone(),
            },
        };
        let transform = batch
            .transform
            .as_deref()
            .map(|sql| Transform::parse(sql).map_err(&fail))
            .transpose()?;
        if ingestion.into != group.name || group.entity != entity.name {
            return Err(fail(format!(
                "it writes group `{}`, not `{}` of entity `{}`",
                ingestion.into, group.name, entity.name
            )));
        }
        if ingestion.key.len() != entity.keys.len() {
            return Err(fail(format!(
                "key has {} column(s) but entity `{}` has {} key field(s)",
                ingestion.key.len(),
                entity.name,
                entity.keys.len()
            )));
        }
        let mut features = Vec::with_capacity(ingestion.features.len());
        for m in &ingestion.features {
            let position = group.feature_index(&m.feature).ok_or_else(|| {
                fail(format!(
                    "group `{}` has no feature `{}`",
                    group.name, m.feature
                ))
            })?;
            match &m.expr {
                FeatureExpr::Field(column) => features.push((position, column.clone())),
                FeatureExpr::Expression(_) => {}
                FeatureExpr::Aggregate(_) => {
                    return Err(fail(format!(
                        "feature `{}` is an aggregate: batch ingestions read values as they \
                         are, aggregate in the SQL `transform` instead",
                        m.feature
                    )))
                }
            }
        }
        let computed = WriteExpressions::compile(group, ingestion)
            .map_err(&fail)?
            .map(Arc::new);
        let maps_every_feature = group.live_positions().all(|position| {
            features.iter().any(|(p, _)| *p == position)
                || computed
                    .iter()
                    .any(|c| c.positions().any(|p| p == position))
        });
        let mode = match group.kind {
            GroupKind::Attribute if !maps_every_feature => WriteMode::Merge,
            _ => WriteMode::Put,
        };
        Ok(BatchJob {
            ingestion: ingestion.name.clone(),
            input,
            parallelism: batch.parallelism,
            group: Arc::new(group.clone()),
            entity: entity.clone(),
            key_columns: ingestion.key.clone(),
            event_time_column: ingestion.event_time.clone(),
            features,
            computed,
            mode,
            run_time_ms,
            period: Period::ALL,
            options: JobOptions::default(),
            transform,
            read_columns: None,
            storage: Storage::default(),
        })
    }

    /// The same job, loading only rows of `period`.
    pub fn with_period(mut self, period: Period) -> BatchJob {
        self.period = period;
        self
    }

    /// The same job with other options.
    pub fn with_options(mut self, options: JobOptions) -> BatchJob {
        self.options = options;
        self
    }

    /// Every column the job reads, each once, in first-use order: keys, event time, features
    /// (of the transform's rows when there is one).
    pub fn columns(&self) -> Vec<&str> {
        if let Some(columns) = &self.read_columns {
            return columns.iter().map(String::as_str).collect();
        }
        let mut out: Vec<&str> = Vec::new();
        let all = self
            .key_columns
            .iter()
            .chain(&self.event_time_column)
            .chain(self.features.iter().map(|(_, c)| c));
        for c in all {
            if !out.contains(&c.as_str()) {
                out.push(c);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(extra: &str) -> FeatureRepo {
        let text = format!(
            r#"
kind: Entity
name: user
keys: [{{ name: user_id, type: string }}]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - {{ name: country, type: string }}
  - {{ name: age, type: int64 }}
---
{extra}
"#
        );
        cellar_spec::parse_repo(&[("repo.yaml".into(), text)]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn partial_attribute_ingestions_merge_and_full_ones_put() {
        let partial = repo(
            "kind: Ingestion\nname: countries\nbatch: { files: { path: a.parquet } }\n\
             into: profile\nkey: user_id\nfeatures: { country: c }\n",
        );
        let job = BatchJob::from_repo(&partial, "countries", 5).unwrap();
        assert_eq!(job.mode, WriteMode::Merge);
        assert_eq!(job.columns(), ["user_id", "c"]);
        let full = repo(
            "kind: Ingestion\nname: profiles\nbatch: { files: { path: a.csv } }\n\
             into: profile\nkey: user_id\nevent_time: ts\nfeatures: { country: c, age: user_id }\n",
        );
        let job = BatchJob::from_repo(&full, "profiles", 5).unwrap();
        assert_eq!(job.mode, WriteMode::Put);
        assert_eq!(
            job.input,
            JobInput::Files {
                path: "a.csv".into(),
                format: FileFormat::Csv
            }
        );
        assert_eq!(job.columns(), ["user_id", "ts", "c"]);
    }

    #[test]
    fn aggregates_are_refused_with_the_reason() {
        let r = repo(
            "kind: Ingestion\nname: profiles\nbatch: { files: { path: a.csv } }\n\
             into: profile\nkey: user_id\nfeatures: { country: c }\n",
        );
        let mut ingestion = r.ingestion("profiles").unwrap().clone();
        ingestion.features[0].expr = FeatureExpr::Aggregate(cellar_spec::AggregateExpr {
            function: cellar_spec::AggregateFunction::Count,
            of: None,
            window: std::time::Duration::from_secs(60),
            slide: None,
        });
        let err = BatchJob::new(&ingestion, &r.groups[0], &r.entities[0], 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ingestion `profiles` cannot run: feature `country` is an aggregate: batch \
             ingestions read values as they are, aggregate in the SQL `transform` instead"
        );
        assert!(!err.is_retryable());
    }

    #[test]
    fn postgres_sources_keep_their_query_and_references_and_hide_a_password() {
        let r = repo(
            "kind: Ingestion\nname: pg\nbatch: { postgres: { url: \"postgres://me:${PG_PASSWORD}@db/y\", query: \"SELECT 1\" } }\n\
             into: profile\nkey: user_id\nfeatures: { country: c }\n",
        );
        let job = BatchJob::from_repo(&r, "pg", 0).unwrap();
        // The reference is read only when the shard connects.
        assert_eq!(
            job.input,
            JobInput::Postgres {
                url: "postgres://me:${PG_PASSWORD}@db/y".into(),
                query: "SELECT 1".into()
            }
        );
        // A password written out (a repo applied before they were refused) is not shown.
        let written_out = JobInput::Postgres {
            url: "postgres://me:hush@db/y".into(),
            query: "SELECT 1".into(),
        };
        let shown = format!("{written_out:?}");
        assert!(
            !shown.contains("hush") && shown.contains("postgres://me:***@db/y"),
            "{shown}"
        );
    }
}
