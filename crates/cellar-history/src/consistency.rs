//! The online/offline consistency check: a service's logged answers recomputed point-in-time
//! from the history, at the time each was served, and compared feature by feature. A feature
//! computed one way online and another offline (skew), or served from a stale copy, shows as
//! mismatches; one the history lacks as values served online only ("extra"); one served empty
//! though the history held a value as "missing".

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema};
use cellar_spec::{FeatureRepo, KeyType};
use serde::Serialize;

use crate::error::{HistoryError, Result};
use crate::logged;
use crate::plan::TrainingPlan;
use crate::storage::Storage;
use crate::training::{column_name, training_set, Progress};

/// Examples kept per feature and kind of difference.
pub const EXAMPLES: usize = 3;

/// What the check found for one feature.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FeatureReport {
    /// `<group>__<feature>`.
    pub column: String,
    /// Logged rows compared.
    pub checked: usize,
    /// Equal online and offline (null in both counts).
    pub matched: usize,
    /// A value in both, different.
    pub mismatched: usize,
    /// A value offline, none served online.
    pub missing: usize,
    /// A value served online, none offline.
    pub extra: usize,
    pub examples: Vec<Example>,
}

/// One row that differed.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// `mismatched`, `missing` or `extra`.
    pub kind: &'static str,
    pub request_id: String,
    pub row: i64,
    pub served_at: String,
    pub online: String,
    pub offline: String,
}

/// The whole check.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub service: String,
    /// Logged rows in the period.
    pub rows: usize,
    pub features: Vec<FeatureReport>,
    /// Features of the service that cannot be recomputed, and why.
    pub not_checked: Vec<(String, String)>,
}

/// Checks `service`'s answers logged in `[from, to)` against the history in `storage`.
pub fn check(
    storage: &Storage,
    repo: &FeatureRepo,
    service: &str,
    from: Option<i64>,
    to: Option<i64>,
    top_n: usize,
) -> Result<Report> {
    let spec = repo
        .service(service)
        .ok_or_else(|| HistoryError::Invalid(format!("no feature service `{service}`")))?;
    let logged = logged::read(storage, service, from, to)?;
    let mut report = Report {
        service: service.to_owned(),
        rows: logged.num_rows(),
        ..Report::default()
    };
    // Each feature alone first, so one that cannot be recomputed leaves the rest checked.
    let mut features = Vec::new();
    let every = TrainingPlan::resolve(repo, Some(service), &[], top_n);
    let columns: Vec<(String, String)> = match &every {
        Ok(plan) => plan.columns.clone(),
        Err(_) => spec
            .features
            .iter()
            .flat_map(|s| {
                let names: Vec<String> = match &s.features {
                    Some(f) => f.clone(),
                    None => repo
                        .group(&s.group)
                        .map(|g| g.live_features().map(|f| f.name.clone()).collect())
                        .or_else(|| {
                            repo.on_demand_group(&s.group)
                                .map(|g| g.features.iter().map(|f| f.name.clone()).collect())
                        })
                        .unwrap_or_default(),
                };
                names.into_iter().map(move |f| (s.group.clone(), f))
            })
            .collect(),
    };
    for (group, feature) in columns {
        let name = format!("{group}:{feature}");
        match TrainingPlan::resolve(repo, None, std::slice::from_ref(&name), top_n) {
            Ok(_)
                if logged
                    .column_by_name(&column_name(&group, &feature))
                    .is_none() =>
            {
                report.not_checked.push((
                    column_name(&group, &feature),
                    "never logged in the period".into(),
                ))
            }
            Ok(_) => features.push(name),
            Err(e) => report
                .not_checked
                .push((column_name(&group, &feature), e.to_string())),
        }
    }
    if features.is_empty() || logged.num_rows() == 0 {
        return Ok(report);
    }
    let plan = TrainingPlan::resolve(repo, None, &features, top_n)?;
    let spine = spine_of(repo, &plan, &logged)?;
    let recomputed = training_set(
        storage,
        &spine,
        logged::SERVED_AT,
        &plan,
        &Progress::default(),
    )?;
    let requests = logged
        .column_by_name(logged::REQUEST_ID)
        .map(|c| c.as_string::<i32>().clone());
    let rows = logged
        .column_by_name(logged::ROW)
        .map(|c| c.as_primitive::<arrow_array::types::Int64Type>().clone());
    let options = FormatOptions::default().with_null("null");
    let served_at = ArrayFormatter::try_new(logged.column(0).as_ref(), &options)
        .map_err(|e| HistoryError::Invalid(e.to_string()))?;
    for (group, feature) in &plan.columns {
        let column = column_name(group, feature);
        let (Some(online), Some(offline)) = (
            logged.column_by_name(&column),
            recomputed.column_by_name(&column),
        ) else {
            continue;
        };
        let online = comparable(online)?;
        let offline = comparable(offline)?;
        let shown_online = ArrayFormatter::try_new(online.as_ref(), &options)
            .map_err(|e| HistoryError::Invalid(e.to_string()))?;
        let shown_offline = ArrayFormatter::try_new(offline.as_ref(), &options)
            .map_err(|e| HistoryError::Invalid(e.to_string()))?;
        let mut found = FeatureReport {
            column: column.clone(),
            ..FeatureReport::default()
        };
        for row in 0..logged.num_rows() {
            found.checked += 1;
            let kind = match (online.is_null(row), offline.is_null(row)) {
                (true, true) => None,
                (true, false) => Some("missing"),
                (false, true) => Some("extra"),
                (false, false) => (shown_online.value(row).to_string()
                    != shown_offline.value(row).to_string())
                .then_some("mismatched"),
            };
            match kind {
                None => found.matched += 1,
                Some(kind) => {
                    match kind {
                        "missing" => found.missing += 1,
                        "extra" => found.extra += 1,
                        _ => found.mismatched += 1,
                    }
                    if found.examples.iter().filter(|e| e.kind == kind).count() < EXAMPLES {
                        found.examples.push(Example {
                            kind,
                            request_id: requests
                                .as_ref()
                                .map(|r| r.value(row).to_owned())
                                .unwrap_or_default(),
                            row: rows.as_ref().map_or(0, |r| r.value(row)),
                            served_at: served_at.value(row).to_string(),
                            online: shown_online.value(row).to_string(),
                            offline: shown_offline.value(row).to_string(),
                        });
                    }
                }
            }
        }
        report.features.push(found);
    }
    Ok(report)
}

/// The spine the logged rows stand for: their entity keys (typed as the entities key them),
/// request data under the fields' own names, and the time each was served.
fn spine_of(repo: &FeatureRepo, plan: &TrainingPlan, logged: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = vec![Arc::new(Field::new(
        logged::SERVED_AT,
        logged.column(0).data_type().clone(),
        false,
    ))];
    let mut columns: Vec<ArrayRef> = vec![Arc::clone(logged.column(0))];
    let mut add = |name: &str, column: ArrayRef| {
        if fields.iter().all(|f| f.name() != name) {
            fields.push(Arc::new(Field::new(name, column.data_type().clone(), true)));
            columns.push(column);
        }
    };
    for key in repo.entities.iter().flat_map(|e| &e.keys) {
        let Some(text) = logged.column_by_name(&key.name) else {
            continue;
        };
        let column = match key.key_type {
            KeyType::String => Arc::clone(text),
            KeyType::Int64 => arrow_cast::cast(text, &DataType::Int64).map_err(|e| {
                HistoryError::Invalid(format!("logged `{}` is not an integer: {e}", key.name))
            })?,
        };
        add(&key.name, column);
    }
    for selection in &plan.on_demand {
        for field in &selection.group.request {
            if let Some(column) = logged.column_by_name(&logged::request_column(&field.name)) {
                add(&field.name, Arc::clone(column));
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| HistoryError::Invalid(format!("building the spine of logged rows: {e}")))
}

/// A column as compared: lists without their null items (serving leaves them out).
fn comparable(column: &ArrayRef) -> Result<ArrayRef> {
    match column.data_type() {
        DataType::List(_) => crate::on_demand::without_null_items(column),
        _ => Ok(Arc::clone(column)),
    }
}
