//! The spec model: what a feature repo declares once parsed and validated.
//!
//! Every type here is plain data that serializes to JSON, so the registry can store applied
//! versions and compare them with a repo on disk.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::value::ValueType;

/// Where a spec came from, for error messages and `plan` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Origin {
    pub file: String,
    pub line: usize,
}

/// What features describe (`user`, `article`), with its key fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub name: String,
    /// Key fields in order; most entities have one (`user_id`).
    pub keys: Vec<EntityKeyField>,
    #[serde(default)]
    pub description: Option<String>,
}

/// One field of an entity key. Keys are strings or 64-bit integers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityKeyField {
    pub name: String,
    pub key_type: KeyType,
}

/// The type of an entity key field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    String,
    Int64,
}

/// How a group keeps records per entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// One current record per entity: the one with the newest event time.
    Attribute,
    /// Many records per entity, ordered by event time, served newest-first as top-N in a window.
    Timeseries,
}

/// A named, ordered list of typed features of one entity, stored and served together.
///
/// The position of a feature in `features` is its storage id: stored records hold values by
/// position. A repo read from YAML lists features in file order; the registry keeps each
/// feature at the position it was first applied at and retires (never reuses) the positions of
/// removed features ([`crate::evolve`]), so the order of lines in a spec file never changes
/// what a stored value means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureGroup {
    pub name: String,
    pub entity: String,
    pub kind: GroupKind,
    /// Features by storage position, retired ones included.
    pub features: Vec<Feature>,
    pub retention: Retention,
    pub serving: ServingPolicy,
    /// Largest encoded record accepted, in bytes.
    pub max_record_bytes: usize,
    /// Names of Feast push sources the group answers to: a Feast-compatible push naming one
    /// writes to every group that declares it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub push_sources: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// How old the newest event written may be before the group counts as stale (the
    /// console marks it); `None`: a stream-fed group is stale after an hour, a batch-fed one
    /// never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freshness: Option<Duration>,
    /// Where the group's records are stored: 0 for the layout the group was created with. An
    /// apply that changes how records are keyed or laid out (kind, entity, key fields), or
    /// that re-creates a removed group, moves the group to a new generation, stored apart from
    /// the old records, so old bytes are never read with a new layout.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// The group as it was in the generation before, while its records can still answer for
    /// this one: an entity the new generation holds nothing for yet is served from the old
    /// records, read with the old layout and converted to this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<FeatureGroup>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl FeatureGroup {
    /// Position of a live (not retired) feature by name.
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features
            .iter()
            .position(|f| !f.retired && f.name == name)
    }

    /// Positions of the features that are served and written, in storage order.
    pub fn live_positions(&self) -> impl Iterator<Item = usize> + '_ {
        self.features
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.retired)
            .map(|(i, _)| i)
    }

    /// The features that are served and written, in storage order.
    pub fn live_features(&self) -> impl Iterator<Item = &Feature> + '_ {
        self.features.iter().filter(|f| !f.retired)
    }

    /// The retired position that held the live feature at `position` before its type changed:
    /// values stored there are served, converted, until the new position is written.
    pub fn predecessor(&self, position: usize) -> Option<usize> {
        let feature = self.features.get(position)?;
        if feature.retired {
            return None;
        }
        // A feature removed and later declared again with its old type starts empty: only a
        // type change carries values over.
        self.features[..position]
            .iter()
            .rposition(|f| f.retired && f.name == feature.name)
            .filter(|&i| self.features[i].value_type != feature.value_type)
    }

    /// Every (live position, retired predecessor) pair of the group.
    pub fn predecessors(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.live_positions()
            .filter_map(|j| self.predecessor(j).map(|i| (j, i)))
    }

    /// The name records are stored under: the group's name for generation 0, the name and the
    /// generation after a layout change (`@` cannot appear in a spec name).
    pub fn storage_name(&self) -> std::borrow::Cow<'_, str> {
        if self.generation == 0 {
            std::borrow::Cow::Borrowed(&self.name)
        } else {
            std::borrow::Cow::Owned(format!("{}@{}", self.name, self.generation))
        }
    }
}

/// One typed feature of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub value_type: ValueType,
    #[serde(default)]
    pub description: Option<String>,
    /// A feature removed, or whose type changed, keeps its position so that no later feature
    /// is given it: values stored there are never served or written again.
    #[serde(default, skip_serializing_if = "is_false")]
    pub retired: bool,
}

impl Feature {
    /// A live feature.
    pub fn new(name: impl Into<String>, value_type: ValueType) -> Feature {
        Feature {
            name: name.into(),
            value_type,
            description: None,
            retired: false,
        }
    }
}

/// How long a group keeps records in the online store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Retention {
    /// Time series: records kept per entity, newest first.
    pub max_records: Option<u32>,
    /// Records whose event time is older than this are not served and are trimmed.
    pub max_age: Option<Duration>,
    /// How long the offline history keeps the group's records, by event date; `None`: for
    /// ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Duration>,
}

/// A cache tier a group may be served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// In-process cache of the serving process.
    Local,
    /// Shared cache (Redis).
    Remote,
}

/// Whether writes update the cache tiers or only the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WriteStrategy {
    /// Writes update the cache tiers with the new record (newer event time wins).
    #[default]
    Through,
    /// Writes go to the store only and invalidate cached copies; reads fill the cache.
    Around,
}

/// Per-group serving policy: which tiers, and how long cached copies live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServingPolicy {
    pub tiers: Vec<Tier>,
    /// After this, a cached copy is stale: served, and refreshed in the background.
    pub soft_ttl: Duration,
    /// After this, a cached copy is never served.
    pub hard_ttl: Duration,
    /// Random spread applied to both TTLs, as a fraction (0.1 = +-10%), so that groups written
    /// together do not expire together.
    pub jitter: f64,
    /// How long "this entity has no record" is cached.
    pub negative_ttl: Duration,
    pub write: WriteStrategy,
    /// How eagerly a fresh, hot copy is refreshed before its soft TTL ends (XFetch's beta):
    /// 0 never, 1 as the XFetch paper suggests, more is earlier.
    #[serde(default = "default_early_refresh")]
    pub early_refresh: f64,
    /// A missed entity is cached only once it has been read this many times within
    /// `admit_window` (1: every miss is cached), so entities read once do not evict hot ones.
    #[serde(default = "default_admit_after")]
    pub admit_after: u32,
    #[serde(default = "default_admit_window")]
    pub admit_window: Duration,
}

fn default_early_refresh() -> f64 {
    1.0
}

fn default_admit_after() -> u32 {
    1
}

fn default_admit_window() -> Duration {
    Duration::from_secs(60)
}

impl Default for ServingPolicy {
    fn default() -> Self {
        ServingPolicy {
            tiers: vec![Tier::Local],
            soft_ttl: Duration::from_secs(30),
            hard_ttl: Duration::from_secs(600),
            jitter: 0.1,
            negative_ttl: Duration::from_secs(30),
            write: WriteStrategy::Through,
            early_refresh: default_early_refresh(),
            admit_after: default_admit_after(),
            admit_window: default_admit_window(),
        }
    }
}

/// A group whose features are computed for each request and never stored: SQL expressions
/// over the request's data, its entity keys and the features of stored groups (see
/// docs/expressions.md). It can be read wherever a stored group can, and has no ingestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnDemandGroup {
    pub name: String,
    /// Fields the caller sends with each request row.
    pub request: Vec<RequestField>,
    pub features: Vec<OnDemandFeature>,
    /// External sources its expressions read, by name (`credit.score`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<OnDemandSource>,
    #[serde(default)]
    pub description: Option<String>,
}

/// An HTTP endpoint on-demand features read per request: one POST with the entity keys of
/// every row, answered with one object of fields per row. Its values are never stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnDemandSource {
    pub name: String,
    /// `http://` or `https://`; may hold secret references, resolved at each call.
    pub url: String,
    /// Request headers; credentials only as secret references (`Bearer ${CREDIT_TOKEN}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The entity key fields sent for each row.
    pub keys: Vec<String>,
    pub fields: Vec<SourceField>,
    /// How long one call may take; a request's deadline bounds it too.
    pub timeout: Duration,
    /// Calls in flight at once, over all requests.
    pub max_concurrency: u32,
    /// Further attempts after a failed call, within the timeout's budget.
    pub retries: u32,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before letting one through.
    pub breaker_open_for: Duration,
    /// How long a row's answer is kept in process; zero: never kept.
    pub cache_ttl: Duration,
}

/// One field an external source answers, with what stands in when it cannot be had.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceField {
    pub name: String,
    pub value_type: ValueType,
    /// Used when the source fails or answers a value of the wrong type; without it, the
    /// features that read the field get an error status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<crate::value::Value>,
}

impl OnDemandGroup {
    pub fn feature_index(&self, name: &str) -> Option<usize> {
        self.features.iter().position(|f| f.name == name)
    }
}

/// A named, typed field of a request, for on-demand features to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestField {
    pub name: String,
    pub value_type: ValueType,
}

/// One feature of an on-demand group: its type and the expression that computes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnDemandFeature {
    pub name: String,
    pub value_type: ValueType,
    pub expr: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// One value an expression may read: a request field or entity key field (unqualified), or a
/// feature of a stored group (qualified by the group's name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpressionInput {
    pub qualifier: Option<String>,
    pub name: String,
    pub value_type: ValueType,
}

impl ExpressionInput {
    pub fn new(name: impl Into<String>, value_type: ValueType) -> ExpressionInput {
        ExpressionInput {
            qualifier: None,
            name: name.into(),
            value_type,
        }
    }

    pub fn qualified(
        qualifier: impl Into<String>,
        name: impl Into<String>,
        value_type: ValueType,
    ) -> ExpressionInput {
        ExpressionInput {
            qualifier: Some(qualifier.into()),
            name: name.into(),
            value_type,
        }
    }
}

impl std::fmt::Display for ExpressionInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.qualifier {
            Some(q) => write!(f, "{q}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The name under which expressions read a stored group's event time(s), unless the group has
/// a feature of that name.
pub const EVENT_TIME_INPUT: &str = "event_time";

/// The inputs of a stored group that expressions read: each live feature, as it is for an
/// attribute group, and as the list of its values in the group's records (newest first) for a
/// time series; then the record's event time (a list of them for a time series) as
/// `event_time`. A time series' compound features are left out (lists of lists).
pub fn group_inputs(group: &FeatureGroup) -> impl Iterator<Item = ExpressionInput> + '_ {
    let in_records = move |t: ValueType| match (group.kind, t) {
        (GroupKind::Attribute, t) => Some(t),
        (GroupKind::Timeseries, ValueType::Scalar(s)) => Some(ValueType::List(s)),
        (GroupKind::Timeseries, _) => None,
    };
    let event_time = (group.feature_index(EVENT_TIME_INPUT).is_none())
        .then(|| in_records(ValueType::Scalar(crate::value::ScalarType::Timestamp)))
        .flatten()
        .map(|t| ExpressionInput::qualified(&group.name, EVENT_TIME_INPUT, t));
    group
        .live_features()
        .filter_map(move |f| {
            in_records(f.value_type).map(|t| ExpressionInput::qualified(&group.name, &f.name, t))
        })
        .chain(event_time)
}

/// Where a write-time expression's input comes from in the record being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteInput {
    /// The feature at this position of the group.
    Feature(usize),
    /// The record's event time.
    EventTime,
}

/// The inputs of an ingestion's write-time expressions ([`FeatureExpr::Expression`]): each
/// feature it reads from a field, by its name and also qualified by its group's name (so the
/// text an on-demand group would use reads the same), and the record's event time as
/// `event_time`, unless a feature has that name. `now()` is the event time too, so that
/// writing the same event again gives the same values.
pub fn write_inputs(
    group: &FeatureGroup,
    ingestion: &Ingestion,
) -> Vec<(ExpressionInput, WriteInput)> {
    let mut inputs = Vec::new();
    for mapping in &ingestion.features {
        let FeatureExpr::Field(_) = mapping.expr else {
            continue;
        };
        let Some(position) = group.feature_index(&mapping.feature) else {
            continue;
        };
        let value_type = group.features[position].value_type;
        let read = WriteInput::Feature(position);
        inputs.push((ExpressionInput::new(&mapping.feature, value_type), read));
        inputs.push((
            ExpressionInput::qualified(&group.name, &mapping.feature, value_type),
            read,
        ));
    }
    if group.feature_index(EVENT_TIME_INPUT).is_none() {
        let timestamp = ValueType::Scalar(crate::value::ScalarType::Timestamp);
        inputs.push((
            ExpressionInput::new(EVENT_TIME_INPUT, timestamp),
            WriteInput::EventTime,
        ));
        inputs.push((
            ExpressionInput::qualified(&group.name, EVENT_TIME_INPUT, timestamp),
            WriteInput::EventTime,
        ));
    }
    inputs
}

/// Checks an expression against its inputs and the type it must give; implemented by the
/// expression language (`cellar-expr`), which this crate cannot depend on.
pub trait ExpressionCheck: Sync {
    /// The positions in `inputs` of those the expression reads; `Err` says what is wrong, in
    /// words for the spec's author.
    fn check(
        &self,
        expr: &str,
        inputs: &[ExpressionInput],
        output: ValueType,
    ) -> Result<Vec<usize>, String>;
}

/// A named set of features across groups that one model reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureService {
    pub name: String,
    pub features: Vec<FeatureSelection>,
    #[serde(default)]
    pub description: Option<String>,
    /// Which of its answers are logged to the offline history; none by default.
    #[serde(default, skip_serializing_if = "ServiceLogging::is_off")]
    pub logging: ServiceLogging,
}

/// Served-feature logging of a feature service: the share of its reads whose answers (request
/// id, time, entity keys, each value with its status) are kept in the offline history, so
/// that labels joined later give a training set of exactly what the model saw.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ServiceLogging {
    /// From 0 (nothing logged) to 1 (every read).
    pub sample_rate: f64,
}

impl ServiceLogging {
    pub fn is_off(&self) -> bool {
        self.sample_rate <= 0.0
    }
}

/// Some or all features of one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSelection {
    pub group: String,
    /// `None` selects every feature of the group.
    pub features: Option<Vec<String>>,
}

/// How a group is filled: from an event stream or from batch data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ingestion {
    pub name: String,
    /// The feature group this ingestion writes.
    pub into: String,
    pub source: IngestionSource,
    /// Where each entity key field comes from: a JSON path (`$.user_id`) for streams, a column
    /// name for batch sources. One per key field of the group's entity, in order.
    pub key: Vec<String>,
    /// Where the event time comes from; `None` means arrival time.
    pub event_time: Option<String>,
    /// Feature name -> how its value is computed.
    pub features: Vec<FeatureMapping>,
}

/// One output feature of an ingestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureMapping {
    pub feature: String,
    pub expr: FeatureExpr,
}

/// How a feature value is computed from an event or a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureExpr {
    /// The value at a JSON path or column.
    Field(String),
    /// An aggregate over a window of events.
    Aggregate(AggregateExpr),
    /// A SQL scalar expression over the features the same ingestion reads from fields (see
    /// [`write_inputs`]), computed when the event or row is written.
    Expression(String),
}

/// A windowed aggregate, maintained by the stream aggregators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateExpr {
    pub function: AggregateFunction,
    /// The value aggregated; `None` for `count`.
    pub of: Option<String>,
    pub window: Duration,
    /// Sliding windows advance by this step; `None` means tumbling windows.
    pub slide: Option<Duration>,
}

/// Built-in aggregate functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFunction {
    Count,
    Sum,
    Min,
    Max,
    DistinctCount,
}

/// Where an ingestion reads from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestionSource {
    Stream(StreamSource),
    Batch(BatchSource),
}

/// An event stream: a topic and the event types taken from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamSource {
    pub topic: String,
    /// Event types consumed; empty means every event on the topic.
    pub event_types: Vec<String>,
    pub format: EventFormat,
    /// Where the event type is read from in each event.
    pub event_type_field: String,
    /// Derived events re-published to this topic for a further ingestion to consume.
    pub republish_to: Option<String>,
}

/// How stream events are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    Json,
}

/// A batch source with its schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchSource {
    pub input: BatchInput,
    /// SQL run over the input (as table `source`) before mapping rows to records.
    pub transform: Option<String>,
    /// Cron expression (5 or 6 fields); `None` means backfill-only.
    pub schedule: Option<String>,
    pub parallelism: Parallelism,
    /// Ingestions that must succeed for the same period before this one runs.
    pub depends_on: Vec<String>,
}

/// Files or a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchInput {
    Files { path: String, format: FileFormat },
    Postgres { url: String, query: String },
}

/// Batch file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Parquet,
    Csv,
}

/// How many shards a batch job is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Parallelism {
    /// Split from the data's real size.
    #[default]
    Auto,
    Fixed(u32),
}
