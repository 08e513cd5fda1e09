//! A feature group's page: its spec and applied versions with their diffs, its ingestions and
//! the feature services that use it, a lookup (with the same request as curl and as the
//! Python SDK's call), and charts of its freshness, lag, reads and hit ratios.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use cellar_auth::Access;
use cellar_registry::SpecVersion;
use cellar_spec::{FeatureGroup, FeatureRepo, GroupKind, IngestionSource, SpecKind};
use maud::{html, Markup};
use serde_json::{json, Value as Json};

use super::chart::{self, Unit};
use super::overview::{stale_after, tier_name};
use super::{
    duration_text, layout, problem, refused_view, registry_unavailable, spec_text, time_text,
    Console,
};

/// Entities one lookup from the page may name, and records per entity of a time series: a
/// page stays a readable size.
const MAX_LOOKUP_ENTITIES: usize = 100;
const MAX_LOOKUP_RECORDS: u64 = 100;

pub(super) async fn page(
    State(console): State<Console>,
    access: Access,
    Path(name): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(resp) = refused_view(&access) {
        return resp;
    }
    let repo = match console.registry.current().await {
        Ok(applied) => applied.map(|a| a.repo).unwrap_or_default(),
        Err(e) => return registry_unavailable(&access, &e),
    };
    let kind = if repo.group(&name).is_some() {
        SpecKind::FeatureGroup
    } else if repo.on_demand.iter().any(|g| g.name == name) {
        SpecKind::OnDemandGroup
    } else {
        return problem(
            StatusCode::NOT_FOUND,
            &access,
            "No such feature group",
            &format!("the applied repo has no feature group `{name}`"),
        );
    };
    let versions = console
        .registry
        .history(kind, &name)
        .await
        .unwrap_or_default();
    let keys = key_fields(&repo, &name);
    let lookup = lookup_body(&keys, &query);
    let answer = match &lookup {
        Some(Ok(body)) => Some(run_lookup(&console, &access, &name, body).await),
        Some(Err(message)) => Some(Err(message.clone())),
        None => None,
    };
    let body = html! {
        h1 { (name) " " small { (kind_text(&repo, &name)) } }
        @if let Some(description) = description(&repo, &name) { p { (description) } }
        h2 { "Lookup" }
        (lookup_form(&repo, &name, &keys, &query))
        @match (&lookup, &answer) {
            (Some(Ok(body)), Some(answer)) => {
                (answer_markup(answer))
                (snippets(&console, &access, &name, body))
            }
            (_, Some(Err(message))) => { p.error role="alert" { (message) } }
            _ => {}
        }
        @if let Some(group) = repo.group(&name) {
            h2 { "Last hours" }
            (charts(&console, &repo, group))
        }
        h2 { "Ingestions" }
        (ingestions(&repo, &name))
        h2 { "Feature services using it" }
        (services(&repo, &name))
        h2 { "Spec " small { "as applied" } }
        (spec(&repo, &name))
        h2 { "Applied versions " small { (versions.len()) } }
        (version_list(&versions))
    };
    layout(&name, &access, "", body)
}

fn kind_text(repo: &FeatureRepo, name: &str) -> String {
    match repo.group(name) {
        Some(g) => format!(
            "{} of {} · {} features",
            match g.kind {
                GroupKind::Attribute => "attribute group",
                GroupKind::Timeseries => "time-series group",
            },
            g.entity,
            g.live_features().count()
        ),
        None => "on-demand group".to_owned(),
    }
}

fn description<'a>(repo: &'a FeatureRepo, name: &str) -> Option<&'a str> {
    match repo.group(name) {
        Some(g) => g.description.as_deref(),
        None => repo
            .on_demand
            .iter()
            .find(|g| g.name == name)
            .and_then(|g| g.description.as_deref()),
    }
}

/// The entity key fields a lookup of the group needs (none for on-demand groups: their
/// inputs come from request data, which the form does not take).
fn key_fields(repo: &FeatureRepo, name: &str) -> Vec<String> {
    repo.group(name)
        .and_then(|g| repo.entity(&g.entity))
        .map(|e| e.keys.iter().map(|k| k.name.clone()).collect())
        .unwrap_or_default()
}

/// The `/v1/features` body the form's query asks for; `None` when it asks for nothing.
fn lookup_body(keys: &[String], query: &BTreeMap<String, String>) -> Option<Result<Json, String>> {
    if keys.is_empty() || !keys.iter().any(|k| query.contains_key(k)) {
        return None;
    }
    Some(entities_and_options(keys, query))
}

fn entities_and_options(keys: &[String], query: &BTreeMap<String, String>) -> Result<Json, String> {
    let mut columns = serde_json::Map::new();
    let mut rows = None;
    for key in keys {
        let values: Vec<Json> = query
            .get(key)
            .map(String::as_str)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| Json::String(v.to_owned()))
            .collect();
        if values.is_empty() {
            return Err(format!("{key}: give at least one value"));
        }
        if values.len() > MAX_LOOKUP_ENTITIES {
            return Err(format!(
                    "{key}: {} values, over the page's limit of {MAX_LOOKUP_ENTITIES} (use the API for more)",
                    values.len()
                ));
        }
        if *rows.get_or_insert(values.len()) != values.len() {
            return Err(format!(
                    "{key}: {} values, but the other key fields have {}: give one value of each per entity",
                    values.len(),
                    rows.unwrap_or(0)
                ));
        }
        columns.insert(key.clone(), Json::Array(values));
    }
    let mut group = serde_json::Map::new();
    for field in ["top_n", "window"] {
        if let Some(v) = query.get(field).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            let value = match field {
                "top_n" => {
                    let n = v
                        .parse::<u64>()
                        .map_err(|_| format!("top_n: `{v}` is not a whole number"))?;
                    if n > MAX_LOOKUP_RECORDS {
                        return Err(format!(
                            "top_n: {n} is over the page's limit of {MAX_LOOKUP_RECORDS} records per entity (use the API for more)"
                        ));
                    }
                    json!(n)
                }
                _ => json!(v),
            };
            group.insert(field.to_owned(), value);
        }
    }
    Ok(json!({ "entities": columns, "groups": [group] }))
}

/// Runs the lookup as `/v1/features` would, with the caller's own access.
async fn run_lookup(
    console: &Console,
    access: &Access,
    name: &str,
    body: &Json,
) -> Result<Json, String> {
    let mut body = body.clone();
    if let Some(group) = body["groups"][0].as_object_mut() {
        group.insert("name".to_owned(), json!(name));
    }
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    match cellar_serving::http::features_json(console.server.as_ref(), &bytes, access.clone()).await
    {
        Ok(answer) => serde_json::from_slice(&answer).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The request as sent: a group given by name alone stays a name.
fn request_body(name: &str, body: &Json) -> Json {
    let options = body["groups"][0].as_object().cloned().unwrap_or_default();
    let group = if options.is_empty() {
        json!(name)
    } else {
        let mut group = serde_json::Map::new();
        group.insert("name".to_owned(), json!(name));
        group.extend(options);
        Json::Object(group)
    };
    json!({ "entities": body["entities"], "groups": [group] })
}

fn lookup_form(
    repo: &FeatureRepo,
    name: &str,
    keys: &[String],
    query: &BTreeMap<String, String>,
) -> Markup {
    let timeseries = repo
        .group(name)
        .is_some_and(|g| g.kind == GroupKind::Timeseries);
    html! {
        @if keys.is_empty() {
            p.muted { "An on-demand group is computed from request data and other groups: read it through the API or a feature service." }
        } @else {
            form.lookup #lookup method="get" action={"/ui/groups/" (name)} {
                @for key in keys {
                    label { (key) " (comma-separated)"
                        input type="text" name=(key) value=(query.get(key).map(String::as_str).unwrap_or("")) placeholder="u1, u2" required;
                    }
                }
                @if timeseries {
                    label { "top_n" input type="number" min="1" name="top_n" value=(query.get("top_n").map(String::as_str).unwrap_or("")); }
                    label { "window" input type="text" name="window" placeholder="1d" value=(query.get("window").map(String::as_str).unwrap_or("")); }
                }
                button.button type="submit" { "Look up" }
            }
        }
    }
}

/// The answer as a table: one row per entity (per record for a time series), each feature's
/// value, the row's status and event time.
fn answer_markup(answer: &Result<Json, String>) -> Markup {
    let answer = match answer {
        Ok(answer) => answer,
        Err(message) => return html! { p.error role="alert" { (message) } },
    };
    let entities = answer["entities"].as_object().cloned().unwrap_or_default();
    let result = &answer["results"][0];
    let features: Vec<&str> = result["features"]
        .as_array()
        .map(|f| f.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let rows = result["rows"].as_array().cloned().unwrap_or_default();
    let entity = |i: usize| -> String {
        entities
            .iter()
            .map(|(k, v)| format!("{k}={}", text(&v[i])))
            .collect::<Vec<_>>()
            .join(", ")
    };
    html! {
        table #answer {
            thead { tr {
                th { "Entity" } th { "Status" } th { "Event time" }
                @for f in &features { th { (f) } }
            } }
            tbody {
                @for (i, row) in rows.iter().enumerate() {
                    @let status = row["status"].as_str().unwrap_or("");
                    @if let Some(records) = row["records"].as_array() {
                        @if records.is_empty() {
                            tr { td { (entity(i)) } td class={"status-" (status)} { (status) } td.muted { "-" } }
                        }
                        @for record in records {
                            tr {
                                td { (entity(i)) } td class={"status-" (status)} { (status) }
                                td { (text(&record["event_time"])) }
                                @for v in record["values"].as_array().into_iter().flatten() { td { code { (text(v)) } } }
                            }
                        }
                    } @else {
                        tr {
                            td { (entity(i)) }
                            td class={"status-" (status)} { (status) }
                            td { @if row["event_time"].is_null() { span.muted { "-" } } @else { (text(&row["event_time"])) } }
                            @for (j, v) in row["values"].as_array().into_iter().flatten().enumerate() {
                                td {
                                    code { (text(v)) }
                                    @if let Some(s) = row["statuses"][j].as_str() {
                                        @if s != "present" { " " small class={"status-" (s)} { (s) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => "null".to_owned(),
        other => other.to_string(),
    }
}

/// The same request as curl and as the Python SDK's call.
fn snippets(console: &Console, access: &Access, name: &str, body: &Json) -> Markup {
    let request = request_body(name, body);
    let auth = matches!(access, Access::Principal(_));
    let url = console.public_url.trim_end_matches('/');
    let header = if auth {
        " \\\n  -H \"Authorization: Bearer $CELLAR_TOKEN\""
    } else {
        ""
    };
    let curl = format!(
        "curl -s {url}/v1/features{header} \\\n  -d '{}'",
        request.to_string().replace('\'', "'\\''")
    );
    let entities = python_dict(&body["entities"]);
    let options = body["groups"][0]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!(", {k}={}", python_value(v)))
                .collect::<String>()
        })
        .unwrap_or_default();
    let token = if auth {
        ", token=os.environ[\"CELLAR_TOKEN\"]"
    } else {
        ""
    };
    let import = if auth { "import os\n" } else { "" };
    let python = format!(
        "{import}from cellar import Client\n\nwith Client(\"{url}\"{token}) as cellar:\n    df = cellar.get_online_features(\n        [\"{name}:*\"], entities={entities}{options}\n    ).to_pandas()"
    );
    html! {
        details open {
            summary { "The same request with curl and with the Python SDK" }
            pre #curl { (curl) }
            pre #python { (python) }
        }
    }
}

fn python_dict(v: &Json) -> String {
    let Some(map) = v.as_object() else {
        return "{}".to_owned();
    };
    let items: Vec<String> = map
        .iter()
        .map(|(k, v)| format!("{}: {}", python_value(&json!(k)), python_value(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn python_value(v: &Json) -> String {
    match v {
        Json::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(python_value)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        // JSON strings are valid Python string literals.
        other => other.to_string(),
    }
}

fn charts(console: &Console, repo: &FeatureRepo, group: &FeatureGroup) -> Markup {
    let history = &console.history;
    let name = group.name.as_str();
    let newest = history.sums(
        "cellar_group_newest_event_timestamp_seconds",
        &[("group", name)],
    );
    let age: Vec<(i64, f64)> = newest
        .iter()
        .filter(|(_, v)| *v > 0.0)
        .map(|(t, v)| (*t, (*t as f64 / 1000.0 - v).max(0.0)))
        .collect();
    let delay = history.sums("cellar_group_write_delay_seconds", &[("group", name)]);
    let topics: Vec<&str> = repo
        .ingestions
        .iter()
        .filter(|i| i.into == name)
        .filter_map(|i| match &i.source {
            IngestionSource::Stream(s) => Some(s.topic.as_str()),
            IngestionSource::Batch(_) => None,
        })
        .collect();
    let mut lag: BTreeMap<i64, f64> = BTreeMap::new();
    for topic in &topics {
        for (t, v) in history.sums("cellar_ingest_consumer_lag", &[("topic", topic)]) {
            *lag.entry(t).or_insert(0.0) += v;
        }
    }
    let lag: Vec<(i64, f64)> = lag.into_iter().collect();
    let reads = match group.serving.tiers.first() {
        Some(tier) => history.rates(
            "cellar_cache_lookups_total",
            &[("tier", tier_name(*tier)), ("group", name)],
        ),
        None => history.rates("cellar_store_reads_total", &[("group", name)]),
    };
    let age_title = match stale_after(repo, group) {
        Some(limit) => format!("Newest event, age (stale past {})", duration_text(limit)),
        None => "Newest event, age".to_owned(),
    };
    html! {
        div.grid {
            (chart::line(&age_title, Unit::Seconds, &age))
            (chart::line("Ingestion latency (event time to written)", Unit::Seconds, &delay))
            @if !topics.is_empty() {
                (chart::line(&format!("Consumer lag ({})", topics.join(", ")), Unit::Count, &lag))
            }
            (chart::line("Reads", Unit::PerSecond, &reads))
            @for tier in &group.serving.tiers {
                (chart::line(&format!("Hit ratio, {} tier", tier_name(*tier)), Unit::Ratio, &history.hit_ratios(tier_name(*tier), name)))
            }
        }
    }
}

fn ingestions(repo: &FeatureRepo, name: &str) -> Markup {
    let feeding: Vec<_> = repo.ingestions.iter().filter(|i| i.into == name).collect();
    html! {
        @if feeding.is_empty() {
            p.muted { "None: the group is written by pushes only." }
        } @else {
            table {
                thead { tr { th { "Ingestion" } th { "Source" } th { "Features" } th {} } }
                tbody {
                    @for i in &feeding {
                        tr {
                            td { (i.name) }
                            @match &i.source {
                                IngestionSource::Stream(s) => {
                                    td { "stream: topic " code { (s.topic) }
                                        @if !s.event_types.is_empty() { ", events " (s.event_types.join(", ")) } }
                                    td { (i.features.len()) }
                                    td { a href="/ui/stream" { "lag and dead letters" } }
                                }
                                IngestionSource::Batch(b) => {
                                    td { "batch"
                                        @if let Some(s) = &b.schedule { ", schedule " code { (s) } } @else { ", backfill only" }
                                        @if !b.depends_on.is_empty() { ", after " (b.depends_on.join(", ")) } }
                                    td { (i.features.len()) }
                                    td { a href={"/ui/jobs?ingestion=" (i.name)} { "jobs" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn services(repo: &FeatureRepo, name: &str) -> Markup {
    let using: Vec<_> = repo
        .services
        .iter()
        .filter(|s| s.features.iter().any(|f| f.group == name))
        .collect();
    html! {
        @if using.is_empty() {
            p.muted { "None." }
        } @else {
            ul {
                @for s in &using {
                    li { a href="/ui/registry#services" { (s.name) }
                        @if let Some(d) = &s.description { " " span.muted { "· " (d) } } }
                }
            }
        }
    }
}

fn spec(repo: &FeatureRepo, name: &str) -> Markup {
    let text = match repo.group(name) {
        Some(g) => spec_text::group(g),
        None => repo
            .on_demand
            .iter()
            .find(|g| g.name == name)
            .map(spec_text::on_demand)
            .unwrap_or_default(),
    };
    html! { pre #spec { (text) } }
}

fn version_list(versions: &[SpecVersion]) -> Markup {
    let pretty = |v: &SpecVersion| {
        v.spec
            .as_ref()
            .map(|s| spec_text::from_stored(v.kind, s))
            .unwrap_or_default()
    };
    html! {
        @for (i, v) in versions.iter().enumerate().rev() {
            details open[i + 1 == versions.len()] {
                summary {
                    "version " (v.version) " · repo version " (v.repo_version) " · "
                    (time_text(v.applied_at.timestamp_millis()))
                    @if v.removed { " · " span.bad-value { "removed" } }
                    @if i == 0 { " · first applied" }
                }
                @if i > 0 {
                    (diff(&pretty(&versions[i - 1]), &pretty(v)))
                } @else {
                    div.diff { div { "(the first version: the spec above, as it was then)" } }
                }
            }
        }
    }
}

/// A line diff of two specs, changed lines with a few lines of context.
fn diff(old: &str, new: &str) -> Markup {
    let diff = similar::TextDiff::from_lines(old, new);
    html! {
        div.diff {
            @for group in diff.grouped_ops(2) {
                @for op in &group {
                    @for change in diff.iter_changes(op) {
                        @match change.tag() {
                            similar::ChangeTag::Delete => { div.del { "- " (change.value().trim_end()) } }
                            similar::ChangeTag::Insert => { div.ins { "+ " (change.value().trim_end()) } }
                            similar::ChangeTag::Equal => { div { "  " (change.value().trim_end()) } }
                        }
                    }
                }
                div.muted { "  ..." }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_form_becomes_a_features_request() {
        let keys = vec!["user_id".to_owned()];
        assert!(lookup_body(&keys, &query(&[])).is_none());
        let body = lookup_body(&keys, &query(&[("user_id", "u1, u2,"), ("top_n", "5")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            body,
            json!({"entities": {"user_id": ["u1", "u2"]}, "groups": [{"top_n": 5}]})
        );
        assert_eq!(
            request_body("clicks", &body),
            json!({"entities": {"user_id": ["u1", "u2"]}, "groups": [{"name": "clicks", "top_n": 5}]})
        );
    }

    #[test]
    fn a_bad_form_says_which_field() {
        let keys = vec!["a".to_owned(), "b".to_owned()];
        let err = lookup_body(&keys, &query(&[("a", "1,2"), ("b", "1")]))
            .unwrap()
            .unwrap_err();
        assert!(err.starts_with("b: 1 values"), "{err}");
        let err = lookup_body(&keys, &query(&[("a", "1"), ("b", " ")]))
            .unwrap()
            .unwrap_err();
        assert!(err.starts_with("b: give at least one"), "{err}");
        let many = vec!["x"; MAX_LOOKUP_ENTITIES + 1].join(",");
        let err = lookup_body(&keys[..1], &query(&[("a", &many)]))
            .unwrap()
            .unwrap_err();
        assert!(err.contains("over the page's limit of 100"), "{err}");
        let err = lookup_body(&keys[..1], &query(&[("a", "x"), ("top_n", "many")]))
            .unwrap()
            .unwrap_err();
        assert!(err.starts_with("top_n:"), "{err}");
        let err = lookup_body(&keys[..1], &query(&[("a", "x"), ("top_n", "101")]))
            .unwrap()
            .unwrap_err();
        assert!(
            err.contains("over the page's limit of 100 records"),
            "{err}"
        );
    }

    #[test]
    fn python_snippets_quote_like_python() {
        assert_eq!(
            python_dict(&json!({"user_id": ["u1", "it's"]})),
            r#"{"user_id": ["u1", "it's"]}"#
        );
    }
}
