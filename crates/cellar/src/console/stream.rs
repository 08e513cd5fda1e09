//! Stream ingestion: lag per topic and partition, throughput, the consumers' adaptive
//! concurrency and retries per pipeline; the dead letters with their errors and payloads, and
//! the re-drive.

use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use cellar_auth::{Access, Action, ResourceKind};
use cellar_spec::IngestionSource;
use maud::{html, Markup};

use super::chart::{self, compact, Unit};
use super::{
    after, confirm_page, counted, denied, layout, problem, refreshing, refused_view, Console,
    Outcome, RELOAD_SECS,
};
use crate::deadletter::{DeadLetter, MAX_LIST_LIMIT};

/// Dead letters the page lists.
const LISTED: usize = 200;
/// Characters of a payload the page shows.
const PAYLOAD_SHOWN: usize = 2000;

pub(super) async fn page(
    State(console): State<Console>,
    access: Access,
    Query(outcome): Query<Outcome>,
) -> Response {
    if let Some(resp) = refused_view(&access) {
        return resp;
    }
    let Some(ingestion) = &console.ingestion else {
        return layout(
            "Stream ingestion",
            &access,
            "/ui/stream",
            html! {
                h1 { "Stream ingestion" }
                p.muted { "This server does not run stream ingestion (ingest.in_server is false): see the servers that do." }
            },
        );
    };
    let repo = console
        .registry
        .current()
        .await
        .ok()
        .flatten()
        .map(|a| a.repo)
        .unwrap_or_default();
    let history = &console.history;
    let lag = ingestion.lag();
    let concurrency = ingestion.concurrency();
    let (main, retry) = ingestion.stats();
    let may_see_letters = access
        .check_every(Action::OperateDeadLetters, ResourceKind::Ingestion)
        .is_ok();
    let letters = if may_see_letters {
        Some(ingestion.dead_letters().list(LISTED, None).await)
    } else {
        None
    };
    let pipelines = [("main", main), ("retry", retry)];
    let body = html! {
        h1 { "Stream ingestion " small { @if ingestion.is_embedded() { "embedded event log" } @else { "Kafka" } } }
        (outcome.banner())
        h2 { "Ingestions" }
        table {
            thead { tr { th { "Ingestion" } th { "Topic" } th { "Event types" } th { "Into" } } }
            tbody {
                @for i in &repo.ingestions {
                    @if let IngestionSource::Stream(s) = &i.source {
                        tr { td { (i.name) } td { code { (s.topic) } }
                             td { @if s.event_types.is_empty() { span.muted { "all" } } @else { (s.event_types.join(", ")) } }
                             td { a href={"/ui/groups/" (i.into)} { (i.into) } } }
                    }
                }
            }
        }
        h2 { "Partitions" }
        table #partitions {
            thead { tr { th { "Topic" } th.num { "Partition" } th.num { "Lag (events not committed)" } } }
            tbody {
                @for (topic, partition, behind) in &lag {
                    tr { td { code { (topic) } } td.num { (partition) } td.num.bad-value[*behind > 10_000] { (behind) } }
                }
                @if lag.is_empty() { tr { td.muted colspan="3" { "No partitions assigned to this server yet." } } }
            }
        }
        h2 { "Pipelines" }
        table #pipelines {
            thead { tr {
                th { "Pipeline" } th.num { "Events/s" } th.num { "Records/s" } th.num { "Events" }
                th.num { "Retried" } th.num { "Dead letters sent" } th.num { "Duplicates skipped" }
                th.num title="Events the consumer may run at once, as adapted to the store" { "Concurrency" }
                th.num { "In flight" }
            } }
            tbody {
                @for (i, (name, stats)) in pipelines.iter().enumerate() {
                    @let events_rate = history.rate("cellar_ingest_events_total", &[("pipeline", name)]);
                    @let records_rate = history.rate("cellar_ingest_records_total", &[("pipeline", name)]);
                    tr {
                        td { (name) }
                        td.num { (events_rate.map(compact).unwrap_or_else(|| "-".into())) }
                        td.num { (records_rate.map(compact).unwrap_or_else(|| "-".into())) }
                        td.num { (stats.events.load(Ordering::Relaxed)) }
                        td.num { (stats.retried.load(Ordering::Relaxed)) }
                        td.num.bad-value[stats.dead_lettered.load(Ordering::Relaxed) > 0] { (stats.dead_lettered.load(Ordering::Relaxed)) }
                        td.num { (stats.duplicates.load(Ordering::Relaxed)) }
                        td.num { (concurrency.get(i).map(|c| c.0.to_string()).unwrap_or_else(|| "-".into())) }
                        td.num { (concurrency.get(i).map(|c| c.1.to_string()).unwrap_or_else(|| "-".into())) }
                    }
                }
            }
        }
        h2 { "Last hours" }
        div.grid {
            (chart::line("Events, main pipeline", Unit::PerSecond, &history.rates("cellar_ingest_events_total", &[("pipeline", "main")])))
            (chart::line("Consumer lag, all partitions", Unit::Count, &history.sums("cellar_ingest_consumer_lag", &[])))
            (chart::line("Concurrency limit, main pipeline", Unit::Count, &history.sums("cellar_ingest_concurrency_limit", &[("pipeline", "main")])))
            (chart::line("Retries", Unit::PerSecond, &history.rates("cellar_ingest_retries_total", &[])))
        }
        h2 { "Dead letters" }
        (dead_letters(&access, letters))
    };
    refreshing(
        "Stream ingestion",
        &access,
        "/ui/stream",
        Some(RELOAD_SECS),
        body,
    )
}

fn dead_letters(access: &Access, letters: Option<anyhow::Result<Vec<DeadLetter>>>) -> Markup {
    let letters = match letters {
        None => {
            return html! {
                p.muted { "Dead letters hold the events' data: listing them needs "
                    code { "operate_dead_letters" } " on every ingestion." }
                (super::action_button(access, Action::OperateDeadLetters, "*", "/ui/stream/redrive", "Re-drive dead letters"))
            }
        }
        Some(Err(e)) => {
            return html! { p.error { "The dead letters could not be read: " (format!("{e:#}")) } }
        }
        Some(Ok(letters)) => letters,
    };
    html! {
        @if letters.is_empty() {
            p.muted { "None waiting." }
        } @else {
            p {
                (letters.len()) @if letters.len() == LISTED { "+" } " waiting, oldest first. "
                a.button #redrive href="/ui/stream/redrive" { "Re-drive dead letters" }
            }
            table #dead-letters {
                thead { tr { th { "Where" } th { "Ingestion" } th.num { "Attempts" } th { "First failure" } th { "Error" } th { "Payload" } } }
                tbody {
                    @for d in &letters {
                        tr {
                            td { (d.origin.as_deref().unwrap_or("-")) br; small.muted { "dead letter " (d.partition) "@" (d.offset) } }
                            td { (d.ingestion.as_deref().unwrap_or("(all)")) }
                            td.num { (d.attempts.map(|a| a.to_string()).unwrap_or_else(|| "-".into())) }
                            td { (d.first_failure.as_deref().unwrap_or("-")) }
                            td.status-error { (d.error.as_deref().unwrap_or("-")) }
                            td { pre.payload { (shown(&d.payload)) } }
                        }
                    }
                }
            }
        }
    }
}

/// The start of a payload: an event can be large, and the page lists many.
fn shown(payload: &str) -> String {
    match payload.char_indices().nth(PAYLOAD_SHOWN) {
        None => payload.to_owned(),
        Some((end, _)) => format!(
            "{}… ({} bytes in all: GET /v1/dead-letters has it whole)",
            &payload[..end],
            payload.len()
        ),
    }
}

fn may_redrive(access: &Access) -> Result<(), cellar_auth::Denied> {
    access.check_every(Action::OperateDeadLetters, ResourceKind::Ingestion)
}

pub(super) async fn confirm_redrive(State(console): State<Console>, access: Access) -> Response {
    if let Some(resp) = refused_view(&access) {
        return resp;
    }
    if let Err(e) = may_redrive(&access) {
        return denied(&access, &e);
    }
    let Some(ingestion) = &console.ingestion else {
        return problem(
            StatusCode::NOT_FOUND,
            &access,
            "No stream ingestion",
            "this server does not run stream ingestion",
        );
    };
    let waiting = ingestion
        .dead_letters()
        .list(MAX_LIST_LIMIT, None)
        .await
        .map(|l| l.len())
        .unwrap_or(0);
    confirm_page(
        &access,
        "Re-drive dead letters",
        html! {
            p { "Publish every dead letter waiting (" (waiting) @if waiting == MAX_LIST_LIMIT { "+" } ") again to the topic it was first published to. "
                "Events that fail again come back as new dead letters." }
        },
        "/ui/stream/redrive",
        &[],
        "/ui/stream",
    )
}

pub(super) async fn redrive(State(console): State<Console>, access: Access) -> Response {
    if let Err(e) = may_redrive(&access) {
        console.audit.record(
            &access,
            Action::OperateDeadLetters,
            "ingestion:*",
            0,
            "denied: console re-drive",
        );
        return denied(&access, &e);
    }
    let Some(ingestion) = &console.ingestion else {
        return after(
            "/ui/stream",
            Err("this server does not run stream ingestion".into()),
        );
    };
    let outcome = ingestion.dead_letters().redrive(None).await;
    let (count, result) = match &outcome {
        Ok(done) => (
            done.redriven,
            Ok(format!(
                "Re-drove {} ({} skipped: no original topic).",
                counted(done.redriven, "dead letter"),
                done.skipped
            )),
        ),
        Err(e) => (0, Err(format!("re-drive failed: {e:#}"))),
    };
    console.audit.record(
        &access,
        Action::OperateDeadLetters,
        "ingestion:*",
        count,
        if outcome.is_ok() {
            "ok: console re-drive"
        } else {
            "error: console re-drive"
        },
    );
    after("/ui/stream", result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_payload_is_shown_in_part() {
        assert_eq!(shown("{\"a\": 1}"), "{\"a\": 1}");
        let long = "é".repeat(PAYLOAD_SHOWN + 10);
        let text = shown(&long);
        assert!(text.starts_with(&"é".repeat(PAYLOAD_SHOWN)), "{text}");
        assert!(text.ends_with(&format!(
            "({} bytes in all: GET /v1/dead-letters has it whole)",
            long.len()
        )));
    }
}
