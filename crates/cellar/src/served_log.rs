//! Served-feature logging: the answers a feature service with `logging.sample_rate` logs go
//! from the serving path over a bounded channel to a task that keeps them in the offline
//! history (`cellar_history::logged` describes the layout). The serving path never waits for
//! it: when the channel is full the answer is dropped and counted.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cellar_cache::{History, Kept};
use cellar_history::logged;
use cellar_serving::service::{ResultGroup, Row};
use cellar_serving::{LoggedRead, ServedLog};
use cellar_spec::{
    EntityKey, Feature, FeatureGroup, GroupKind, Retention, ScalarType, ServingPolicy, Value,
    ValueType,
};
use cellar_store::Record;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Answers waiting to be kept at most.
const CAPACITY: usize = 4096;
/// Answered rows waiting to be kept at most: what bounds the memory the waiting answers take.
const MAX_WAITING_ROWS: usize = 100_000;
/// Answers kept in one write to the history at most.
const BATCH: usize = 256;

/// The serving path's end of the log.
pub struct HistoryServedLog {
    sender: tokio::sync::mpsc::Sender<LoggedRead>,
    /// Rows of the answers waiting.
    waiting_rows: Arc<AtomicUsize>,
    /// Answers dropped: the history was behind or failed.
    pub dropped: Counter,
    /// Answers kept.
    pub kept: Counter,
}

impl ServedLog for HistoryServedLog {
    fn log(&self, read: LoggedRead) {
        let rows = answered_rows(&read);
        if self.waiting_rows.fetch_add(rows, Ordering::Relaxed) + rows > MAX_WAITING_ROWS {
            self.waiting_rows.fetch_sub(rows, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        if self.sender.try_send(read).is_err() {
            self.waiting_rows.fetch_sub(rows, Ordering::Relaxed);
            self.dropped.inc();
        }
    }
}

impl HistoryServedLog {
    /// The log, its figures registered in `metrics`, and the task keeping what it is sent in
    /// `history` until every sender is gone.
    pub fn start(
        history: Arc<dyn History>,
        metrics: &mut Registry,
    ) -> (Arc<HistoryServedLog>, tokio::task::JoinHandle<()>) {
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<LoggedRead>(CAPACITY);
        let log = Arc::new(HistoryServedLog {
            sender,
            waiting_rows: Arc::new(AtomicUsize::new(0)),
            dropped: Counter::default(),
            kept: Counter::default(),
        });
        metrics.register(
            "served_log_kept",
            "Answers of feature services that log kept in the offline history",
            log.kept.clone(),
        );
        metrics.register(
            "served_log_dropped",
            "Answers of feature services that log dropped: the history was behind or failed",
            log.dropped.clone(),
        );
        let (dropped, kept, waiting) = (
            log.dropped.clone(),
            log.kept.clone(),
            log.waiting_rows.clone(),
        );
        let task = tokio::spawn(async move {
            let mut reads = Vec::with_capacity(BATCH);
            while receiver.recv_many(&mut reads, BATCH).await > 0 {
                // The answers of one service with the same columns are kept in one write.
                let mut pending: Vec<Pending> = Vec::new();
                for read in reads.drain(..) {
                    waiting.fetch_sub(answered_rows(&read), Ordering::Relaxed);
                    let (group, records) = logged_records(&read);
                    let keys = (0..records.len())
                        .map(|row| EntityKey(format!("{}/{row}", read.request_id)));
                    let at = match pending.iter().position(|p| p.group == group) {
                        Some(at) => at,
                        None => {
                            pending.push(Pending {
                                group,
                                keys: Vec::new(),
                                records: Vec::new(),
                                answers: 0,
                            });
                            pending.len() - 1
                        }
                    };
                    let p = &mut pending[at];
                    p.keys.extend(keys);
                    p.records.extend(records);
                    p.answers += 1;
                }
                for p in pending {
                    let rows: Vec<Kept<'_>> = p
                        .keys
                        .iter()
                        .zip(&p.records)
                        .map(|(entity, record)| Kept {
                            entity,
                            record,
                            applied: true,
                        })
                        .collect();
                    match history.keep(&p.group, &rows).await {
                        Ok(()) => {
                            kept.inc_by(p.answers);
                        }
                        Err(e) => {
                            dropped.inc_by(p.answers);
                            tracing::warn!(group = %p.group.name, answers = p.answers, error = %e, "logged answers could not be kept");
                        }
                    }
                }
            }
        });
        (log, task)
    }
}

/// Logged answers of one service with the same columns, waiting for one write.
struct Pending {
    group: FeatureGroup,
    keys: Vec<EntityKey>,
    records: Vec<Record>,
    answers: u64,
}

/// How many rows `read` answered.
fn answered_rows(read: &LoggedRead) -> usize {
    let response = &read.response;
    response
        .entities
        .first()
        .map(|(_, v)| v.len())
        .or_else(|| response.groups.first().map(|g| g.rows.len()))
        .unwrap_or(0)
}

/// The group a logged answer is kept as, and one record per answered row.
pub fn logged_records(read: &LoggedRead) -> (FeatureGroup, Vec<Record>) {
    let text = ValueType::Scalar(ScalarType::String);
    let response = &read.response;
    let rows = answered_rows(read);
    let mut features = vec![
        Feature::new(logged::REQUEST_ID, text),
        Feature::new(logged::ROW, ValueType::Scalar(ScalarType::Int64)),
    ];
    let mut values: Vec<Vec<Value>> = (0..rows)
        .map(|row| {
            vec![
                Value::String(read.request_id.clone()),
                Value::Int64(row as i64),
            ]
        })
        .collect();
    let as_text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::String(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    };
    for (name, column) in &response.entities {
        features.push(Feature::new(name, text));
        for (row, out) in values.iter_mut().enumerate() {
            out.push(column.get(row).map_or(Value::Null, as_text));
        }
    }
    for (name, column) in &read.request_data {
        features.push(Feature::new(logged::request_column(name), text));
        for (row, out) in values.iter_mut().enumerate() {
            out.push(column.get(row).map_or(Value::Null, as_text));
        }
    }
    for result in &response.groups {
        let group = result.group.name();
        for &position in &result.features {
            let (t, series) = match &result.group {
                ResultGroup::Stored(g) => (
                    g.spec.features[position].value_type,
                    g.spec.kind == GroupKind::Timeseries,
                ),
                ResultGroup::OnDemand(g) => (g.spec.features[position].value_type, false),
            };
            let t = match (t, series) {
                (t, false) => t,
                (ValueType::Scalar(s), true) => ValueType::List(s),
                // A time series of lists has no list-of-lists type to be logged as.
                (_, true) => continue,
            };
            features.push(Feature::new(
                cellar_history::training::column_name(group, result.group.feature_name(position)),
                t,
            ));
            let computed = result.features.iter().position(|&f| f == position);
            for (row, out) in values.iter_mut().enumerate() {
                let value = match result.rows.get(row) {
                    Some(Row::Record {
                        record: Some(r), ..
                    }) => r.value(position).clone(),
                    Some(Row::Series { records }) if !records.is_empty() => Value::List(
                        records
                            .iter()
                            .map(|r| r.value(position).clone())
                            .filter(|v| !matches!(v, Value::Null))
                            .collect(),
                    ),
                    Some(Row::Computed { values }) => computed
                        .and_then(|i| values.get(i))
                        .and_then(|v| v.as_ref().ok())
                        .cloned()
                        .unwrap_or(Value::Null),
                    _ => Value::Null,
                };
                out.push(value);
            }
        }
        features.push(Feature::new(logged::status_column(group), text));
        for (row, out) in values.iter_mut().enumerate() {
            let status = result.rows.get(row).map_or(Value::Null, |r| {
                Value::String(r.status().as_str().to_owned())
            });
            out.push(status);
        }
    }
    let group = FeatureGroup {
        name: logged::storage(&read.service),
        entity: "_served".to_owned(),
        kind: GroupKind::Attribute,
        features,
        retention: Retention::default(),
        serving: ServingPolicy::default(),
        max_record_bytes: usize::MAX,
        freshness: None,
        push_sources: Vec::new(),
        description: None,
        generation: 0,
        previous: None,
    };
    let records = values
        .into_iter()
        .map(|values| Record {
            event_time: read.served_at_ms,
            values,
            applied: Vec::new(),
            state: Vec::new(),
        })
        .collect();
    (group, records)
}
