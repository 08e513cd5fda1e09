//! The serving service: one trait that every protocol adapter (HTTP/JSON, Feast, gRPC) calls.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use arrow_array::ArrayRef;
use async_trait::async_trait;
use cellar_auth::{Access, Action, Audit, ResourceKind};
use cellar_cache::WritePath;
use cellar_spec::limits::EventTimeBounds;
use cellar_spec::time::now_ms;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind, Value};
use cellar_store::{layout, PutOutcome, Record, RecordReader, TimeseriesQuery, Updater, Write};

use crate::catalog::{Catalog, ServedGroup};
use crate::error::ServeError;
use crate::limits::{records_per_row, RequestCost};
use crate::metrics::OnDemandMetrics;
use crate::on_demand::{
    event_time_cells, event_time_column, stored_cells, stored_column, InputColumn, InputSource,
    ServedOnDemand,
};
use crate::sources::SourceMetrics;
use cellar_expr::cells::CellColumn;

/// The share of a read's deadline external sources may take: the rest is for computing and
/// answering, so a slow source never makes the read miss its deadline.
const SOURCE_SHARE_OF_DEADLINE: f64 = 0.8;

/// Request limits and defaults of the serving path.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most entity rows one request may ask for.
    pub max_entities: usize,
    /// Most records one push may carry.
    pub max_push_records: usize,
    /// `top_n` of a time-series group when the request does not say.
    pub default_top_n: usize,
    /// Largest `top_n` a request may ask for.
    pub max_top_n: usize,
    /// A read that takes longer fails with a deadline error instead of holding the client.
    pub deadline: Duration,
    /// Most feature values one read may answer (see [`crate::limits::RequestCost`]); a read
    /// over it is refused before anything is read.
    pub max_request_cost: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entities: 1000,
            max_push_records: 10_000,
            default_top_n: 50,
            max_top_n: 1000,
            deadline: Duration::from_secs(1),
            max_request_cost: 1_000_000,
        }
    }
}

/// Which features a request reads.
#[derive(Debug, Clone)]
pub enum Selection {
    Groups(Vec<GroupRequest>),
    /// A feature service by name; time-series groups use the default `top_n` and no window.
    Service(String),
}

/// One group of a read, with an optional subset of its features.
#[derive(Debug, Clone, Default)]
pub struct GroupRequest {
    pub group: String,
    /// `None` reads every feature, in spec order.
    pub features: Option<Vec<String>>,
    /// Time series: most records per entity.
    pub top_n: Option<usize>,
    /// Time series: only records newer than this (`30m`, `7d`, ...).
    pub window: Option<String>,
}

/// A read of features for rows of entity keys.
#[derive(Debug, Clone)]
pub struct FeatureRequest {
    /// Entity key columns: a key field name and one value per row; all of the same length.
    pub entities: Vec<(String, Vec<serde_json::Value>)>,
    /// Request data columns for on-demand groups: a field name and one value per row.
    pub request_data: Vec<(String, Vec<serde_json::Value>)>,
    pub select: Selection,
    /// Who asks: every group and feature service read must be granted to it.
    pub access: Access,
    /// The caller's id for the read (`X-Request-Id`): a logged answer is kept under it.
    pub request_id: Option<String>,
}

/// Whether a value was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Present,
    NotFound,
    /// A record exists but is older than the group's retention `max_age`.
    Expired,
    /// An on-demand value could not be computed (the row's values say why).
    Error,
}

/// One row's answer for one group.
#[derive(Debug, Clone)]
pub enum Row {
    /// Attribute group: the current record, if any.
    Record {
        status: Status,
        record: Option<Record>,
    },
    /// Time-series group: records newest first, as the request bounded them.
    Series { records: Vec<Record> },
    /// On-demand group: each selected feature's value (null when an input is missing or the
    /// expression says so), or why it could not be computed.
    Computed { values: Vec<cellar_expr::Outcome> },
}

impl Status {
    /// The name answers give it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Present => "present",
            Status::NotFound => "not_found",
            Status::Expired => "expired",
            Status::Error => "error",
        }
    }
}

/// The status of one computed value.
pub fn value_status(value: &cellar_expr::Outcome) -> Status {
    match value {
        Err(_) => Status::Error,
        Ok(Value::Null) => Status::NotFound,
        Ok(_) => Status::Present,
    }
}

impl Row {
    pub fn status(&self) -> Status {
        match self {
            Row::Record { status, .. } => *status,
            Row::Series { records } if records.is_empty() => Status::NotFound,
            Row::Series { .. } => Status::Present,
            // An error anywhere marks the row; otherwise it is present if anything is.
            Row::Computed { values } => {
                if values.iter().any(Result::is_err) {
                    Status::Error
                } else if values.iter().any(|v| !matches!(v, Ok(Value::Null))) {
                    Status::Present
                } else {
                    Status::NotFound
                }
            }
        }
    }
}

/// The group a result is for.
#[derive(Debug, Clone)]
pub enum ResultGroup {
    Stored(Arc<ServedGroup>),
    OnDemand(Arc<ServedOnDemand>),
}

impl ResultGroup {
    pub fn name(&self) -> &str {
        match self {
            ResultGroup::Stored(g) => &g.spec.name,
            ResultGroup::OnDemand(g) => &g.spec.name,
        }
    }

    /// `attribute`, `timeseries` or `on_demand`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ResultGroup::Stored(g) => match g.spec.kind {
                GroupKind::Attribute => "attribute",
                GroupKind::Timeseries => "timeseries",
            },
            ResultGroup::OnDemand(_) => "on_demand",
        }
    }

    /// The name of the feature at `position`.
    pub fn feature_name(&self, position: usize) -> &str {
        match self {
            ResultGroup::Stored(g) => &g.spec.features[position].name,
            ResultGroup::OnDemand(g) => &g.spec.features[position].name,
        }
    }
}

/// The answer for one group: the features read (by position) and one row per entity row.
#[derive(Debug, Clone)]
pub struct GroupResult {
    pub group: ResultGroup,
    /// Positions of the features returned, in the order asked. A computed row's values are
    /// in this order already.
    pub features: Vec<usize>,
    pub rows: Vec<Row>,
}

impl GroupResult {
    pub fn feature_names(&self) -> impl Iterator<Item = &str> + Clone {
        self.features.iter().map(|&i| self.group.feature_name(i))
    }
}

/// The answer to a [`FeatureRequest`].
#[derive(Debug, Clone)]
pub struct FeatureResponse {
    /// The entity key columns, echoed.
    pub entities: Vec<(String, Vec<serde_json::Value>)>,
    pub groups: Vec<GroupResult>,
    /// The request id the answer was logged under, when its feature service logs a share
    /// of its reads and this one was taken.
    pub logged_as: Option<String>,
}

/// One answer of a feature service that logs what it serves.
#[derive(Debug, Clone)]
pub struct LoggedRead {
    pub service: String,
    pub request_id: String,
    /// When it was served, epoch milliseconds.
    pub served_at_ms: i64,
    /// The request data columns the read was given.
    pub request_data: Vec<(String, Vec<serde_json::Value>)>,
    pub response: FeatureResponse,
}

/// Where logged answers go (the offline history). Called on the serving path: it must not
/// block, and drops (and counts) what it cannot take.
pub trait ServedLog: Send + Sync {
    fn log(&self, read: LoggedRead);
}

/// One record to push.
#[derive(Debug, Clone, Default)]
pub struct PushRow {
    /// Entity key field name -> value.
    pub entity: Vec<(String, serde_json::Value)>,
    /// RFC 3339 text or epoch milliseconds; `None` means now.
    pub event_time: Option<serde_json::Value>,
    /// Feature name -> value; features left out are null.
    pub features: Vec<(String, serde_json::Value)>,
}

/// Records to write into one group.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub group: String,
    pub rows: Vec<PushRow>,
    /// Who writes: the group must be granted to it.
    pub access: Access,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PushResponse {
    /// Records stored.
    pub applied: usize,
    /// Records older than the stored one, left out (newer event time wins).
    pub stale: usize,
}

/// The serving operations, whatever the protocol.
#[async_trait]
pub trait FeatureServing: Send + Sync {
    async fn get_features(&self, req: FeatureRequest) -> Result<FeatureResponse, ServeError>;
    async fn push(&self, req: PushRequest) -> Result<PushResponse, ServeError>;
    /// The entity key field names of a group, so column-shaped pushes can tell keys from
    /// features.
    fn entity_key_fields(&self, group: &str) -> Result<Vec<String>, ServeError>;
    /// The groups a Feast-compatible push naming `name` writes, with each one's live
    /// features: the group of that name, else every group declaring `name` among its
    /// `push_sources`. Empty when neither exists.
    fn push_targets(&self, name: &str) -> Vec<(String, Vec<String>)> {
        let _ = name;
        Vec::new()
    }
}

/// The serving service over a read path (cache tiers and store) and the store for writes.
pub struct FeatureServer {
    catalog: RwLock<Arc<Catalog>>,
    /// Reads go through the cache tiers.
    reader: Arc<dyn RecordReader>,
    /// Writes go to the store, then to the cache tiers per the group's write strategy.
    writer: WritePath,
    limits: Limits,
    /// Pushed records with an event time outside are refused.
    event_times: EventTimeBounds,
    /// Where pushes are recorded.
    audit: Audit,
    on_demand_metrics: OnDemandMetrics,
    /// Where the external sources of the catalogs built by [`FeatureServer::catalog_for`] are
    /// measured.
    source_metrics: SourceMetrics,
    /// Where the answers of services that log are sent.
    served_log: Option<Arc<dyn ServedLog>>,
    /// Whether the catalog has a service that logs: reads look no further when none does.
    any_service_logs: std::sync::atomic::AtomicBool,
}

/// One stored group of a read, resolved against the catalog.
struct ResolvedGroup {
    group: Arc<ServedGroup>,
    features: Vec<usize>,
    query: TimeseriesQuery,
    /// False for a group read only as an on-demand group's input.
    returned: bool,
}

/// One on-demand group of a read.
struct ResolvedOnDemand {
    group: Arc<ServedOnDemand>,
    /// The features answered.
    features: Vec<usize>,
    /// The features computed: those answered, or all of them for a group other on-demand
    /// groups read.
    computed: Vec<usize>,
}

/// A read resolved against the catalog: the stored groups to read, the on-demand groups to
/// compute from them, and the order the answer lists them in.
struct Resolved {
    stored: Vec<ResolvedGroup>,
    on_demand: Vec<ResolvedOnDemand>,
    order: Vec<Answer>,
}

enum Answer {
    Stored(usize),
    OnDemand(usize),
}

impl FeatureServer {
    pub fn new(
        catalog: Catalog,
        reader: Arc<dyn RecordReader>,
        writer: WritePath,
        limits: Limits,
    ) -> FeatureServer {
        let any_service_logs = catalog.any_service_logs().into();
        FeatureServer {
            any_service_logs,
            catalog: RwLock::new(Arc::new(catalog)),
            reader,
            writer,
            limits,
            event_times: EventTimeBounds::default(),
            audit: Audit::tracing_only(),
            on_demand_metrics: OnDemandMetrics::default(),
            source_metrics: SourceMetrics::default(),
            served_log: None,
        }
    }

    /// The same server, logging a sample of the answers of feature services with
    /// `logging.sample_rate` to `log`.
    pub fn with_served_log(mut self, log: Arc<dyn ServedLog>) -> FeatureServer {
        self.served_log = Some(log);
        self
    }

    /// The same server, measuring external sources in `metrics` (the catalog given to
    /// [`FeatureServer::new`] should be built with the same).
    pub fn with_source_metrics(mut self, metrics: SourceMetrics) -> FeatureServer {
        self.source_metrics = metrics;
        self
    }

    /// The catalog of `repo`, its external sources measured with this server's metrics.
    pub fn catalog_for(&self, repo: &cellar_spec::FeatureRepo) -> Catalog {
        Catalog::with_source_metrics(repo, &self.source_metrics)
    }

    /// The same server, measuring on-demand groups in `metrics`.
    pub fn with_on_demand_metrics(mut self, metrics: OnDemandMetrics) -> FeatureServer {
        self.on_demand_metrics = metrics;
        self
    }

    /// The same server, recording pushes in `audit`.
    pub fn with_audit(mut self, audit: Audit) -> FeatureServer {
        self.audit = audit;
        self
    }

    /// The same server, accepting pushed event times within `bounds`.
    pub fn with_event_times(mut self, bounds: EventTimeBounds) -> FeatureServer {
        self.event_times = bounds;
        self
    }

    /// Swaps in the catalog of a newly applied repo.
    pub fn reload(&self, catalog: Catalog) {
        self.any_service_logs.store(
            catalog.any_service_logs(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Ok(mut c) = self.catalog.write() {
            *c = Arc::new(catalog);
        }
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        match self.catalog.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn resolve(
        &self,
        catalog: &Catalog,
        select: &Selection,
        access: &Access,
    ) -> Result<Resolved, ServeError> {
        // Permissions are checked on the names asked for before anything is looked up, so a
        // caller cannot learn which groups exist from 404s.
        let requests: Vec<GroupRequest> = match select {
            Selection::Groups(groups) => {
                for g in groups {
                    access.check(Action::ReadFeatures, ResourceKind::Group, &g.group)?;
                }
                groups.clone()
            }
            Selection::Service(name) => {
                access.check(Action::ReadFeatures, ResourceKind::Service, name)?;
                let service = catalog
                    .service(name)
                    .ok_or_else(|| ServeError::UnknownService(name.clone()))?;
                service
                    .features
                    .iter()
                    .map(|s| GroupRequest {
                        group: s.group.clone(),
                        features: s.features.clone(),
                        top_n: None,
                        window: None,
                    })
                    .collect()
            }
        };
        if requests.is_empty() {
            return Err(ServeError::invalid(
                "no feature groups asked for: give `groups` (or `features`) or a `feature_service`",
            ));
        }
        // A group named twice is read once: repeats cost nothing.
        let requests = crate::limits::merge_repeated(requests)?;
        let mut out = Vec::with_capacity(requests.len());
        let mut on_demand = Vec::new();
        let mut order = Vec::with_capacity(requests.len());
        for (i, r) in &requests {
            if let Some(group) = catalog.on_demand(&r.group) {
                if r.top_n.is_some() || r.window.is_some() {
                    return Err(ServeError::invalid(format!(
                        "groups[{i}]: `top_n` and `window` apply to time-series groups; `{}` is an on-demand group",
                        r.group
                    )));
                }
                let spec = &group.spec;
                let features = match &r.features {
                    None => (0..spec.features.len()).collect(),
                    Some(names) => names
                        .iter()
                        .map(|name| {
                            spec.feature_index(name)
                                .ok_or_else(|| ServeError::UnknownFeature {
                                    group: spec.name.clone(),
                                    feature: name.clone(),
                                    known: spec
                                        .features
                                        .iter()
                                        .map(|f| f.name.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                };
                order.push(Answer::OnDemand(on_demand.len()));
                on_demand.push(ResolvedOnDemand {
                    group: group.clone(),
                    computed: features.clone(),
                    features,
                });
                continue;
            }
            let group = catalog
                .group(&r.group)
                .ok_or_else(|| ServeError::UnknownGroup {
                    name: r.group.clone(),
                    known: catalog.group_names().join(", "),
                })?;
            let spec = &group.spec;
            let features = match &r.features {
                None => spec.live_positions().collect(),
                Some(names) => {
                    let mut positions = Vec::with_capacity(names.len());
                    for name in names {
                        let pos =
                            spec.feature_index(name)
                                .ok_or_else(|| ServeError::UnknownFeature {
                                    group: spec.name.clone(),
                                    feature: name.clone(),
                                    known: spec
                                        .live_features()
                                        .map(|f| f.name.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", "),
                                })?;
                        positions.push(pos);
                    }
                    positions
                }
            };
            let is_series = spec.kind == GroupKind::Timeseries;
            if !is_series && (r.top_n.is_some() || r.window.is_some()) {
                return Err(ServeError::invalid(format!(
                    "groups[{i}]: `top_n` and `window` apply to time-series groups; `{}` is an attribute group",
                    spec.name
                )));
            }
            let top_n = r.top_n.unwrap_or(self.limits.default_top_n);
            if top_n == 0 || top_n > self.limits.max_top_n {
                return Err(ServeError::invalid(format!(
                    "groups[{i}].top_n: {top_n} is out of range, it must be from 1 to {}",
                    self.limits.max_top_n
                )));
            }
            let window = match &r.window {
                None => None,
                Some(w) => match cellar_spec::parse::parse_duration(w) {
                    Ok(d) if !d.is_zero() => Some(d),
                    Ok(_) => {
                        return Err(ServeError::invalid(format!(
                            "groups[{i}].window: the window must be longer than zero"
                        )))
                    }
                    Err(e) => return Err(ServeError::invalid(format!("groups[{i}].window: {e}"))),
                },
            };
            // The group's retention age bounds every read, whatever the window.
            let max_age = match (window, spec.retention.max_age) {
                (Some(w), Some(a)) => Some(w.min(a)),
                (w, a) => w.or(a),
            };
            let since = max_age.map(|d| {
                let age_ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                now_ms().saturating_sub(age_ms)
            });
            order.push(Answer::Stored(out.len()));
            out.push(ResolvedGroup {
                group: group.clone(),
                features,
                query: TimeseriesQuery { top_n, since },
                returned: true,
            });
        }
        // The on-demand groups on-demand features read, whether asked for or not, with every
        // feature; and the groups those read, and so on.
        let mut next = 0;
        while next < on_demand.len() {
            let reading = Arc::clone(&on_demand[next].group);
            next += 1;
            for name in reading.on_demand_inputs() {
                let Some(group) = catalog.on_demand(name) else {
                    continue;
                };
                let all: Vec<usize> = (0..group.spec.features.len()).collect();
                match on_demand.iter_mut().find(|d| d.group.spec.name == *name) {
                    Some(read) => read.computed = all,
                    None => on_demand.push(ResolvedOnDemand {
                        group: group.clone(),
                        features: Vec::new(),
                        computed: all,
                    }),
                }
            }
        }
        // The stored groups on-demand features read, with the default `top_n` and the group's
        // retention: read once, whether asked for or not.
        for d in &on_demand {
            for name in d.group.stored_inputs() {
                if out.iter().any(|r| r.group.spec.name == *name) {
                    continue;
                }
                let Some(group) = catalog.group(name) else {
                    continue;
                };
                let since = group.spec.retention.max_age.map(|d| {
                    let age_ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
                    now_ms().saturating_sub(age_ms)
                });
                out.push(ResolvedGroup {
                    group: group.clone(),
                    features: Vec::new(),
                    query: TimeseriesQuery {
                        top_n: self.limits.default_top_n,
                        since,
                    },
                    returned: false,
                });
            }
        }
        Ok(Resolved {
            stored: out,
            on_demand,
            order,
        })
    }

    /// The calls to external sources a read makes: (on-demand group, source, each row's key
    /// values). A key column a source needs and the request lacks is the caller's error.
    #[allow(clippy::type_complexity)]
    fn source_calls(
        &self,
        resolved: &Resolved,
        entities: &[(String, Vec<serde_json::Value>)],
        rows: usize,
    ) -> Result<Vec<(usize, usize, Vec<Vec<serde_json::Value>>)>, ServeError> {
        let mut calls = Vec::new();
        for (di, d) in resolved.on_demand.iter().enumerate() {
            for &source in d.group.sources_read() {
                let Some(spec) = d.group.spec.sources.get(source) else {
                    continue;
                };
                let mut columns = Vec::with_capacity(spec.keys.len());
                for key in &spec.keys {
                    let Some((_, values)) = entities.iter().find(|(n, _)| n == key) else {
                        return Err(ServeError::invalid(format!(
                            "entities: on-demand group `{}` needs `{key}` for its source `{}`",
                            d.group.spec.name, spec.name
                        )));
                    };
                    columns.push(values);
                }
                let keys = (0..rows)
                    .map(|row| columns.iter().map(|c| c[row].clone()).collect())
                    .collect();
                calls.push((di, source, keys));
            }
        }
        Ok(calls)
    }

    /// The request data and entity key columns the on-demand groups of a read need, as
    /// values of their types. A missing column or a value of the wrong type is the caller's
    /// error, named.
    fn request_inputs(
        &self,
        resolved: &Resolved,
        req: &FeatureRequest,
        rows: usize,
    ) -> Result<HashMap<String, Vec<Value>>, ServeError> {
        let mut columns: HashMap<String, Vec<Value>> = HashMap::new();
        let mut declared: Vec<&str> = Vec::new();
        for d in &resolved.on_demand {
            declared.extend(d.group.spec.request.iter().map(|f| f.name.as_str()));
            for (source, t) in d.group.request_inputs() {
                let (name, given, what) = match source {
                    InputSource::Request(name) => (name, &req.request_data, "request_data"),
                    InputSource::Key(name) => (name, &req.entities, "entities"),
                    InputSource::Stored { .. }
                    | InputSource::EventTime { .. }
                    | InputSource::External { .. }
                    | InputSource::OnDemand { .. } => continue,
                };
                if columns.contains_key(name) {
                    continue;
                }
                let Some((_, values)) = given.iter().find(|(n, _)| n == name) else {
                    return Err(ServeError::invalid(format!(
                        "{what}: on-demand group `{}` needs `{name}` ({t}), one value per entity row",
                        d.group.spec.name
                    )));
                };
                let converted = values
                    .iter()
                    .enumerate()
                    .map(|(row, v)| {
                        Value::from_json(*t, v)
                            .map_err(|e| ServeError::invalid(format!("{what}.{name}[{row}]: {e}")))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                columns.insert(name.clone(), converted);
            }
        }
        for (name, values) in &req.request_data {
            if !declared.contains(&name.as_str()) {
                return Err(ServeError::invalid(format!(
                    "request_data: `{name}` is not a request field of any on-demand group read"
                )));
            }
            if values.len() != rows {
                return Err(ServeError::invalid(format!(
                    "request_data: `{name}` has {} values for {rows} entity rows",
                    values.len()
                )));
            }
        }
        Ok(columns)
    }

    /// Builds each group's entity keys from the request's key columns.
    fn keys_for(
        &self,
        group: &ServedGroup,
        columns: &[(String, Vec<serde_json::Value>)],
        rows: usize,
    ) -> Result<Vec<EntityKey>, ServeError> {
        let entity = &group.entity;
        let mut cols = Vec::with_capacity(entity.keys.len());
        for field in &entity.keys {
            let col = columns
                .iter()
                .find(|(name, _)| *name == field.name)
                .ok_or_else(|| {
                    let given: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
                    ServeError::invalid(format!(
                        "entities: feature group `{}` needs entity key `{}` (entity `{}`); the request gives: {}",
                        group.spec.name,
                        field.name,
                        entity.name,
                        if given.is_empty() { "none".to_owned() } else { given.join(", ") }
                    ))
                })?;
            cols.push(&col.1);
        }
        let mut keys = Vec::with_capacity(rows);
        let mut parts: Vec<&serde_json::Value> = Vec::with_capacity(cols.len());
        for row in 0..rows {
            parts.clear();
            parts.extend(cols.iter().map(|c| &c[row]));
            let key = entity
                .key_from_json(&parts)
                .map_err(|e| ServeError::invalid(format!("entities[{row}]: {e}")))?;
            keys.push(key);
        }
        Ok(keys)
    }

    async fn read_group(
        &self,
        resolved: &ResolvedGroup,
        keys: Vec<EntityKey>,
    ) -> Result<GroupRows, ServeError> {
        // Rows often repeat a key (a feature service read for one user and many articles):
        // read each distinct key once.
        let (unique, index) = dedup(keys);
        let group = &resolved.group;
        let spec = &group.spec;
        let mut rows: Vec<Row> = match spec.kind {
            GroupKind::Attribute => {
                let mut found = self.reader.get_attributes(spec, &unique).await?;
                if let Some(previous) = spec.previous.as_deref() {
                    self.fill_from_previous(previous, spec, &unique, &mut found)
                        .await?;
                }
                let cutoff = resolved.query.since;
                found
                    .into_iter()
                    .map(|r| match r {
                        None => Row::Record {
                            status: Status::NotFound,
                            record: None,
                        },
                        Some(r) if cutoff.is_some_and(|c| r.event_time < c) => Row::Record {
                            status: Status::Expired,
                            record: None,
                        },
                        Some(r) => Row::Record {
                            status: Status::Present,
                            record: Some(r),
                        },
                    })
                    .collect()
            }
            GroupKind::Timeseries => {
                let query = resolved.query;
                let mut series = self.reader.scan_timeseries(spec, &unique, query).await?;
                if let Some(previous) = spec.previous.as_deref() {
                    let older = layout::previous_series(
                        self.reader.as_ref(),
                        previous,
                        spec,
                        &unique,
                        query,
                    )
                    .await?;
                    series = series
                        .into_iter()
                        .zip(older)
                        .map(|(newer, older)| layout::merge_series(newer, older, query.top_n))
                        .collect();
                }
                series
                    .into_iter()
                    .map(|records| Row::Series { records })
                    .collect()
            }
        };
        if !group.retyped.is_empty() {
            for row in &mut rows {
                match row {
                    Row::Record { record, .. } => {
                        for r in record.iter_mut() {
                            layout::upgrade(spec, &group.retyped, r);
                        }
                    }
                    Row::Series { records } => {
                        for r in records.iter_mut() {
                            layout::upgrade(spec, &group.retyped, r);
                        }
                    }
                    Row::Computed { .. } => {}
                }
            }
        }
        Ok(GroupRows { rows, index })
    }

    /// Answers the entities an attribute group's generation holds nothing for from its
    /// previous generation's records, laid out anew.
    async fn fill_from_previous(
        &self,
        previous: &FeatureGroup,
        spec: &FeatureGroup,
        keys: &[EntityKey],
        found: &mut [Option<Record>],
    ) -> Result<(), ServeError> {
        let missing: Vec<usize> = (0..found.len()).filter(|&i| found[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let missing_keys: Vec<EntityKey> = missing.iter().map(|&i| keys[i].clone()).collect();
        let old =
            layout::previous_records(self.reader.as_ref(), previous, spec, &missing_keys).await?;
        for (i, record) in missing.into_iter().zip(old) {
            found[i] = record;
        }
        Ok(())
    }

    async fn read(&self, mut req: FeatureRequest) -> Result<FeatureResponse, ServeError> {
        let started = std::time::Instant::now();
        let catalog = self.catalog();
        // Request fields sent among the entity columns (as Feast sends request-source fields)
        // are request data.
        if req
            .entities
            .iter()
            .any(|(n, _)| catalog.key_owner(n).is_none() && catalog.is_request_field(n))
        {
            let (keys, data) = std::mem::take(&mut req.entities)
                .into_iter()
                .partition(|(n, _)| catalog.key_owner(n).is_some() || !catalog.is_request_field(n));
            req.entities = keys;
            req.request_data.extend::<Vec<_>>(data);
        }
        // The rows are the entity key columns' rows; a read of on-demand groups that take
        // request data alone has the request data's.
        let rows = match (req.entities.first(), req.request_data.first()) {
            (Some((_, values)), _) | (None, Some((_, values))) => values.len(),
            (None, None) => {
                return Err(ServeError::invalid(
                    "entities: no entity keys given; send at least one key column such as {\"user_id\": [\"u1\"]} (or, for on-demand groups that read request data alone, request_data)",
                ))
            }
        };
        for (name, values) in &req.entities {
            if values.len() != rows {
                return Err(ServeError::invalid(format!(
                    "entities: every key column must have the same number of values; `{}` has {rows}, `{name}` has {}",
                    req.entities[0].0,
                    values.len()
                )));
            }
            if catalog.key_owner(name).is_none() {
                return Err(ServeError::invalid(format!(
                    "entities: `{name}` is not the key of any entity"
                )));
            }
        }
        if rows == 0 {
            return Err(ServeError::invalid(if req.entities.is_empty() {
                "request_data: the columns are empty"
            } else {
                "entities: the key columns are empty"
            }));
        }
        if rows > self.limits.max_entities {
            return Err(ServeError::TooManyEntities {
                count: rows,
                limit: self.limits.max_entities,
            });
        }
        let resolved = self.resolve(&catalog, &req.select, &req.access)?;
        // Refused before any read: the cost bounds the reads and the answer alike. A group
        // read only for on-demand features costs its records as if one feature were asked.
        let mut cost = RequestCost::new(rows);
        for r in &resolved.stored {
            cost.add(
                records_per_row(&r.group.spec, r.query.top_n),
                r.features.len().max(usize::from(!r.returned)),
            );
        }
        for d in &resolved.on_demand {
            cost.add(1, d.computed.len());
        }
        cost.check(self.limits.max_request_cost)?;
        let inputs = self.request_inputs(&resolved, &req, rows)?;
        let calls = self.source_calls(&resolved, &req.entities, rows)?;
        let reads = async {
            if resolved.stored.len() == 1 {
                let r = &resolved.stored[0];
                let keys = self.keys_for(&r.group, &req.entities, rows)?;
                Ok(vec![self.read_group(r, keys).await?])
            } else {
                let mut reads = Vec::with_capacity(resolved.stored.len());
                for r in &resolved.stored {
                    let keys = self.keys_for(&r.group, &req.entities, rows)?;
                    reads.push(self.read_group(r, keys));
                }
                futures::future::try_join_all(reads).await
            }
        };
        // External sources are called while the stored groups are read; a source answers by
        // the source deadline or fails on its own, never the request.
        let source_deadline = started + self.limits.deadline.mul_f64(SOURCE_SHARE_OF_DEADLINE);
        let fetches = futures::future::join_all(calls.iter().map(|(d, source, keys)| {
            let client = resolved.on_demand[*d].group.client(*source).cloned();
            async move {
                match client {
                    Some(client) => client.fetch(keys, source_deadline).await,
                    None => Err("no client for the source".to_owned()),
                }
            }
        }));
        let (stored_rows, fetched) = tokio::join!(reads, fetches);
        let mut stored_rows: Vec<GroupRows> = stored_rows?;
        let now = now_ms();
        let mut computed: Vec<Option<Vec<Row>>> = resolved.on_demand.iter().map(|_| None).collect();
        for di in evaluation_order(&resolved.on_demand) {
            let d = &resolved.on_demand[di];
            let started = std::time::Instant::now();
            let rows_computed = d
                .group
                .evaluate(&d.computed, rows, now, |source, t, cells| match source {
                    InputSource::OnDemand { group, feature } => {
                        let read = resolved
                            .on_demand
                            .iter()
                            .position(|o| o.group.spec.name == *group)
                            .and_then(|o| {
                                let at = resolved.on_demand[o]
                                    .computed
                                    .iter()
                                    .position(|f| f == feature)?;
                                Some((computed[o].as_ref()?, at))
                            });
                        InputColumn::Values(match read {
                            Some((theirs, at)) => theirs
                                .iter()
                                .map(|row| match row {
                                    Row::Computed { values } => {
                                        values.get(at).cloned().unwrap_or(Ok(Value::Null))
                                    }
                                    _ => Ok(Value::Null),
                                })
                                .collect(),
                            None => vec![
                                Err(format!(
                                    "on-demand group `{group}` could not be computed first"
                                ));
                                rows
                            ],
                        })
                    }
                    InputSource::Request(name) | InputSource::Key(name) => match inputs.get(name) {
                        Some(values) if cells => {
                            InputColumn::Cells(CellColumn::of_values(t, values.iter()))
                        }
                        Some(values) => InputColumn::Array(cellar_expr::arrow::column(t, values)),
                        None => InputColumn::Values(vec![Ok(Value::Null); rows]),
                    },
                    InputSource::Stored { group, .. } | InputSource::EventTime { group } => {
                        match resolved
                            .stored
                            .iter()
                            .position(|r| r.group.spec.name == *group)
                        {
                            Some(g) => {
                                let series =
                                    resolved.stored[g].group.spec.kind == GroupKind::Timeseries;
                                let read = &stored_rows[g];
                                let position = match source {
                                    InputSource::Stored { position, .. } => Some(*position),
                                    _ => None,
                                };
                                match (position, cells) {
                                    (Some(p), true) => InputColumn::Cells(
                                        read.expand_cells(|rows| stored_cells(rows, p, t, series)),
                                    ),
                                    (Some(p), false) => {
                                        InputColumn::Array(read.expand_column(|rows| {
                                            stored_column(rows, p, t, series)
                                        }))
                                    }
                                    (None, true) => InputColumn::Cells(
                                        read.expand_cells(|rows| event_time_cells(rows, series)),
                                    ),
                                    (None, false) => InputColumn::Array(
                                        read.expand_column(|rows| event_time_column(rows, series)),
                                    ),
                                }
                            }
                            None => InputColumn::Values(vec![Ok(Value::Null); rows]),
                        }
                    }
                    InputSource::External { source, field } => {
                        let fallback = d
                            .group
                            .spec
                            .sources
                            .get(*source)
                            .and_then(|s| s.fields.get(*field))
                            .and_then(|f| f.fallback.clone());
                        let answer = calls
                            .iter()
                            .position(|(g, s, _)| *g == di && *s == *source)
                            .and_then(|i| fetched.get(i));
                        let value = |v: Result<Value, String>| match (v, &fallback) {
                            (Err(_), Some(f)) => Ok(f.clone()),
                            (v, _) => v,
                        };
                        InputColumn::Values(match answer {
                            Some(Ok(answers)) => answers
                                .iter()
                                .map(|row| {
                                    value(row.get(*field).cloned().unwrap_or(Ok(Value::Null)))
                                })
                                .collect(),
                            Some(Err(e)) => vec![value(Err(e.clone())); rows],
                            None => {
                                vec![value(Err("the source was not called".to_owned())); rows]
                            }
                        })
                    }
                });
            self.observe_on_demand(&d.group.spec.name, started.elapsed(), &rows_computed);
            computed[di] = Some(rows_computed);
        }
        let mut groups = Vec::with_capacity(resolved.order.len());
        for answer in &resolved.order {
            match *answer {
                Answer::Stored(i) => {
                    let r = &resolved.stored[i];
                    groups.push(GroupResult {
                        group: ResultGroup::Stored(r.group.clone()),
                        features: r.features.clone(),
                        rows: std::mem::take(&mut stored_rows[i]).expand(),
                    });
                }
                Answer::OnDemand(i) => {
                    let d = &resolved.on_demand[i];
                    let mut rows = computed[i].take().unwrap_or_default();
                    if d.computed != d.features {
                        // Computed in full for another group: answered as asked.
                        let at: Vec<usize> = d
                            .features
                            .iter()
                            .filter_map(|f| d.computed.iter().position(|c| c == f))
                            .collect();
                        for row in &mut rows {
                            if let Row::Computed { values } = row {
                                *values = at.iter().map(|&a| values[a].clone()).collect();
                            }
                        }
                    }
                    groups.push(GroupResult {
                        group: ResultGroup::OnDemand(d.group.clone()),
                        features: d.features.clone(),
                        rows,
                    });
                }
            }
        }
        Ok(FeatureResponse {
            entities: req.entities,
            groups,
            logged_as: None,
        })
    }
}

/// A request id for a logged answer the caller gave none for: 128 random bits, hex.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The order to compute on-demand groups in: each after the groups it reads. Applied repos
/// have no cycles (`plan` refuses them); a group caught in one anyway is computed last, and its
/// inputs from the others of the cycle are errors.
fn evaluation_order(groups: &[ResolvedOnDemand]) -> Vec<usize> {
    let mut order = Vec::with_capacity(groups.len());
    let mut done = vec![false; groups.len()];
    while order.len() < groups.len() {
        let ready = (0..groups.len()).find(|&i| {
            !done[i]
                && groups[i].group.on_demand_inputs().iter().all(|name| {
                    groups
                        .iter()
                        .zip(&done)
                        .all(|(g, &d)| d || g.group.spec.name != *name)
                })
        });
        let next = ready.unwrap_or_else(|| (0..groups.len()).find(|&i| !done[i]).unwrap_or(0));
        done[next] = true;
        order.push(next);
    }
    order
}

impl FeatureServer {
    /// One on-demand group's evaluation time and values by status.
    fn observe_on_demand(&self, group: &str, elapsed: Duration, rows: &[Row]) {
        let (mut present, mut not_found, mut errors) = (0, 0, 0);
        for row in rows {
            if let Row::Computed { values } = row {
                for v in values {
                    match value_status(v) {
                        Status::Present => present += 1,
                        Status::Error => errors += 1,
                        _ => not_found += 1,
                    }
                }
            }
        }
        self.on_demand_metrics
            .observe(group, elapsed, present, not_found, errors);
    }
}

/// What a stored group's read found: a row per distinct key, and for each row of the request
/// the index of its key's row (`None` when the request's keys were already distinct).
#[derive(Default)]
struct GroupRows {
    rows: Vec<Row>,
    index: Option<Vec<usize>>,
}

impl GroupRows {
    /// A row per row of the request.
    fn expand(self) -> Vec<Row> {
        match self.index {
            None => self.rows,
            Some(index) => index.into_iter().map(|i| self.rows[i].clone()).collect(),
        }
    }

    /// [`GroupRows::expand_column`] as cells, for a walked read: the distinct rows' cells
    /// repeated by reference.
    fn expand_cells<'a>(
        &'a self,
        build: impl FnOnce(&'a [Row]) -> CellColumn<'a>,
    ) -> CellColumn<'a> {
        let column = build(&self.rows);
        match &self.index {
            None => column,
            Some(index) => column.expand(index),
        }
    }

    /// An on-demand input's column, a value per row of the request: built once per distinct
    /// key by `build` from the rows read, then repeated by Arrow's `take`.
    fn expand_column(&self, build: impl FnOnce(&[Row]) -> ArrayRef) -> ArrayRef {
        let column = build(&self.rows);
        match &self.index {
            None => column,
            Some(index) => cellar_expr::arrow::expand(&column, index),
        }
    }
}

/// Distinct keys, and for each row the index of its key among them (`None` when all rows are
/// already distinct).
fn dedup(keys: Vec<EntityKey>) -> (Vec<EntityKey>, Option<Vec<usize>>) {
    if keys.len() < 2 {
        return (keys, None);
    }
    let mut seen: HashMap<&EntityKey, usize> = HashMap::with_capacity(keys.len());
    let mut index = Vec::with_capacity(keys.len());
    let mut unique_idx = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let next = seen.len();
        let at = *seen.entry(k).or_insert(next);
        if at == next {
            unique_idx.push(i);
        }
        index.push(at);
    }
    if unique_idx.len() == keys.len() {
        return (keys, None);
    }
    let unique = unique_idx.into_iter().map(|i| keys[i].clone()).collect();
    (unique, Some(index))
}

#[async_trait]
impl FeatureServing for FeatureServer {
    fn push_targets(&self, name: &str) -> Vec<(String, Vec<String>)> {
        let catalog = self.catalog();
        let features = |g: &ServedGroup| g.spec.live_features().map(|f| f.name.clone()).collect();
        if let Some(g) = catalog.group(name) {
            return vec![(g.spec.name.clone(), features(g))];
        }
        let mut targets: Vec<(String, Vec<String>)> = catalog
            .groups()
            .filter(|g| g.spec.push_sources.iter().any(|s| s == name))
            .map(|g| (g.spec.name.clone(), features(g)))
            .collect();
        targets.sort();
        targets
    }

    fn entity_key_fields(&self, group: &str) -> Result<Vec<String>, ServeError> {
        let catalog = self.catalog();
        let g = catalog
            .group(group)
            .ok_or_else(|| ServeError::UnknownGroup {
                name: group.to_owned(),
                known: catalog.group_names().join(", "),
            })?;
        Ok(g.entity.keys.iter().map(|k| k.name.clone()).collect())
    }

    async fn get_features(&self, req: FeatureRequest) -> Result<FeatureResponse, ServeError> {
        let deadline = self.limits.deadline;
        // Whether this read is logged is drawn before it runs; the answer is sent after.
        let logs = self
            .any_service_logs
            .load(std::sync::atomic::Ordering::Relaxed);
        let logged = match (&req.select, &self.served_log) {
            (Selection::Service(name), Some(_)) if logs => {
                let rate = self
                    .catalog()
                    .service(name)
                    .map_or(0.0, |s| s.logging.sample_rate);
                (rate > 0.0 && (rate >= 1.0 || rand::random::<f64>() < rate)).then(|| {
                    let id = req.request_id.clone().unwrap_or_else(new_request_id);
                    (name.clone(), id, req.request_data.clone())
                })
            }
            _ => None,
        };
        let mut resp = match tokio::time::timeout(deadline, self.read(req)).await {
            Ok(r) => r?,
            Err(_) => return Err(ServeError::DeadlineExceeded(deadline.as_millis() as u64)),
        };
        if let (Some((service, request_id, request_data)), Some(log)) = (logged, &self.served_log) {
            resp.logged_as = Some(request_id.clone());
            log.log(LoggedRead {
                service,
                request_id,
                served_at_ms: now_ms(),
                request_data,
                response: resp.clone(),
            });
        }
        Ok(resp)
    }

    async fn push(&self, req: PushRequest) -> Result<PushResponse, ServeError> {
        let resource = format!("group:{}", req.group);
        if let Err(denied) =
            req.access
                .check(Action::WriteFeatures, ResourceKind::Group, &req.group)
        {
            self.audit
                .record(&req.access, Action::WriteFeatures, &resource, 0, "denied");
            return Err(denied.into());
        }
        let result = self.push_granted(&req).await;
        let (records, outcome) = match &result {
            Ok(done) => (done.applied as u64, "ok".to_owned()),
            Err(e) => (0, format!("error: {}", crate::json::kind_name(e.kind()))),
        };
        self.audit.record(
            &req.access,
            Action::WriteFeatures,
            &resource,
            records,
            &outcome,
        );
        result
    }
}

impl FeatureServer {
    async fn push_granted(&self, req: &PushRequest) -> Result<PushResponse, ServeError> {
        let catalog = self.catalog();
        if catalog.on_demand(&req.group).is_some() {
            return Err(ServeError::invalid(format!(
                "`{}` is an on-demand group: its features are computed for each request and cannot be written",
                req.group
            )));
        }
        let group = catalog
            .group(&req.group)
            .ok_or_else(|| ServeError::UnknownGroup {
                name: req.group.clone(),
                known: catalog.group_names().join(", "),
            })?
            .clone();
        if req.rows.is_empty() {
            return Err(ServeError::invalid("records: no records to push"));
        }
        if req.rows.len() > self.limits.max_push_records {
            return Err(ServeError::TooLarge(format!(
                "records: {} records in one push, the limit is {}",
                req.rows.len(),
                self.limits.max_push_records
            )));
        }
        let spec = &group.spec;
        let now = now_ms();
        let mut writes = Vec::with_capacity(req.rows.len());
        let mut named = Vec::with_capacity(req.rows.len());
        for (i, row) in req.rows.iter().enumerate() {
            if let Some((name, _)) = row
                .entity
                .iter()
                .find(|(n, _)| !group.entity.keys.iter().any(|k| k.name == *n))
            {
                return Err(ServeError::invalid(format!(
                    "records[{i}].entity: `{name}` is not a key field of entity `{}`; its key fields: {}",
                    group.entity.name,
                    group
                        .entity
                        .keys
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            let mut parts = Vec::with_capacity(group.entity.keys.len());
            for field in &group.entity.keys {
                let v = row
                    .entity
                    .iter()
                    .find(|(n, _)| *n == field.name)
                    .map(|(_, v)| v)
                    .ok_or_else(|| {
                        ServeError::invalid(format!(
                            "records[{i}]: missing entity key `{}` of entity `{}`",
                            field.name, group.entity.name
                        ))
                    })?;
                parts.push(v);
            }
            let entity = group
                .entity
                .key_from_json(&parts)
                .map_err(|e| ServeError::invalid(format!("records[{i}]: {e}")))?;
            let event_time = match &row.event_time {
                None => now,
                Some(v) => cellar_spec::value::parse_timestamp(v).ok_or_else(|| {
                    ServeError::invalid(format!(
                        "records[{i}].event_time: expected an RFC 3339 timestamp or epoch milliseconds, got {v}"
                    ))
                })?,
            };
            self.event_times
                .check(event_time, now)
                .map_err(|e| ServeError::invalid(format!("records[{i}].event_time: {e}")))?;
            let mut values = vec![Value::Null; spec.features.len()];
            let mut positions = Vec::with_capacity(row.features.len());
            for (name, v) in &row.features {
                let pos = spec
                    .feature_index(name)
                    .ok_or_else(|| ServeError::UnknownFeature {
                        group: spec.name.clone(),
                        feature: name.clone(),
                        known: spec
                            .live_features()
                            .map(|f| f.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                values[pos] = Value::from_json(spec.features[pos].value_type, v).map_err(|e| {
                    ServeError::invalid(format!("records[{i}].features.{name}: {e}"))
                })?;
                positions.push(pos);
            }
            let record = Record::new(event_time, values);
            // Checked here, so that the error names the record, and the store never fails a
            // write for one record of it.
            cellar_store::check_size(spec, &entity, &record)
                .map_err(|e| ServeError::TooLarge(format!("records[{i}]: {e}")))?;
            writes.push(Write { entity, record });
            named.push(positions);
        }
        self.write_pushed(spec, writes, named).await
    }
}

impl FeatureServer {
    /// Stores pushed records. A record naming every feature of its group replaces the stored
    /// one if it is newer; an attribute record naming only some is merged into the stored
    /// record (its named features replace the stored values if it is not older, the others are
    /// kept), as the stream path merges events, so a push never erases what it did not name.
    /// Time-series records are inserted as they are: each is an event of its own.
    async fn write_pushed(
        &self,
        spec: &FeatureGroup,
        writes: Vec<Write>,
        named: Vec<Vec<usize>>,
    ) -> Result<PushResponse, ServeError> {
        let live = spec.live_positions().count();
        let (mut whole, mut partial) = (Vec::new(), Vec::new());
        for (write, mut positions) in writes.into_iter().zip(named) {
            positions.sort_unstable();
            positions.dedup();
            if spec.kind == GroupKind::Timeseries || positions.len() == live {
                whole.push(write);
            } else {
                // A retyped feature's old slot is cleared (null in `write`) with the new one,
                // so its old value is no longer served in place of what was written.
                let superseded: Vec<usize> = positions
                    .iter()
                    .filter_map(|&p| spec.predecessor(p))
                    .collect();
                positions.extend(superseded);
                partial.push((write, positions));
            }
        }
        let mut response = PushResponse::default();
        if !whole.is_empty() {
            for outcome in self.writer.write(spec, &whole).await? {
                match outcome {
                    PutOutcome::Applied => response.applied += 1,
                    PutOutcome::Stale => response.stale += 1,
                }
            }
        }
        if !partial.is_empty() {
            let entities: Vec<EntityKey> = partial.iter().map(|(w, _)| w.entity.clone()).collect();
            let width = spec.features.len();
            let updater: Updater = Box::new(move |i, _, stored: Option<Record>| {
                let (write, positions) = &partial[i];
                let mut record = match stored {
                    Some(r) if r.event_time > write.record.event_time => return None,
                    Some(r) => r,
                    None => Record::new(write.record.event_time, vec![Value::Null; width]),
                };
                if record.values.len() < width {
                    record.values.resize(width, Value::Null);
                }
                for &p in positions {
                    record.values[p] = write.record.values[p].clone();
                }
                record.event_time = write.record.event_time;
                Some(record)
            });
            for stored in self.writer.update(spec, &entities, updater).await? {
                match stored {
                    Some(_) => response.applied += 1,
                    None => response.stale += 1,
                }
            }
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_maps_rows_to_distinct_keys() {
        let k = |s: &str| EntityKey(s.into());
        let (unique, index) = dedup(vec![k("a"), k("b"), k("a")]);
        assert_eq!(unique, vec![k("a"), k("b")]);
        assert_eq!(index, Some(vec![0, 1, 0]));
        let (unique, index) = dedup(vec![k("a"), k("b")]);
        assert_eq!(unique.len(), 2);
        assert_eq!(index, None);
    }
}
