//! `cellar get`, `cellar push`, `cellar produce` and `cellar dead-letters`: talk to a running
//! server over its HTTP API.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context as _;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use serde_json::{json, Value as Json};

use crate::deadletter::{DeadLetter, Redriven};

/// Parses `key=value` entity arguments into key columns (repeated keys add rows).
pub fn entity_columns(args: &[String]) -> anyhow::Result<serde_json::Map<String, Json>> {
    let mut columns = serde_json::Map::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("entity `{a}` is not written as key=value"))?;
        let entry = columns
            .entry(k.to_owned())
            .or_insert_with(|| Json::Array(Vec::new()));
        if let Json::Array(values) = entry {
            values.push(Json::String(v.to_owned()));
        }
    }
    if columns.is_empty() {
        anyhow::bail!("give at least one --entity key=value");
    }
    Ok(columns)
}

/// Request data columns from `field=value` arguments: a value is JSON where it parses as
/// JSON (`52.5`, `true`, `["a","b"]`), else text.
pub fn request_columns(args: &[String]) -> anyhow::Result<serde_json::Map<String, Json>> {
    let mut columns = serde_json::Map::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .with_context(|| format!("request field `{a}` is not written as field=value"))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Json::String(v.to_owned()));
        let entry = columns
            .entry(k.to_owned())
            .or_insert_with(|| Json::Array(Vec::new()));
        if let Json::Array(values) = entry {
            values.push(value);
        }
    }
    Ok(columns)
}

/// An error answer of the server: its status and message.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ServerError {
    pub status: reqwest::StatusCode,
    pub message: String,
}

/// The HTTP client of every command that calls a server, set up once by [`configure`].
static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();

/// Sets up the client commands call servers with: `token` (an API key or OIDC token) sent as
/// `Authorization: Bearer`, and `ca_file` (PEM) trusted for the server's TLS certificate
/// beside the system's roots.
pub fn configure(token: Option<&str>, ca_file: Option<&Path>) -> anyhow::Result<()> {
    let mut builder = reqwest::Client::builder();
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            anyhow::anyhow!("--token (CELLAR_TOKEN) holds characters a header cannot carry")
        })?;
        // Kept out of reqwest's debug output.
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("--ca-file (CELLAR_CA_FILE) {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    let client = builder.build().context("setting up the HTTP client")?;
    let _ = CLIENT.set(client);
    Ok(())
}

/// The configured client, or a plain one.
pub fn http() -> reqwest::Client {
    CLIENT.get_or_init(reqwest::Client::new).clone()
}

/// Posts a JSON body and returns the JSON answer, or the server's error message.
pub async fn post(server: &str, path: &str, body: &Json) -> anyhow::Result<Json> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    send(http().post(&url).json(body), &url).await
}

/// Gets `path` with a query and returns the JSON answer, or the server's error message.
pub async fn get(server: &str, path: &str, query: &[(&str, String)]) -> anyhow::Result<Json> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    send(http().get(&url).query(query), &url).await
}

async fn send(request: reqwest::RequestBuilder, url: &str) -> anyhow::Result<Json> {
    let resp = request
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is `cellar serve` running?"))?;
    let status = resp.status();
    let answer: Json = resp
        .json()
        .await
        .with_context(|| format!("the answer of {url} is not JSON (status {status})"))?;
    if !status.is_success() {
        let message = answer["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| answer.to_string());
        return Err(ServerError { status, message }.into());
    }
    Ok(answer)
}

/// The server a command talks to: `given` (`http://` is assumed when it names no scheme), else
/// the configured listen address (a wildcard one reached on loopback).
pub fn server_url(given: Option<&str>, listen: &str) -> anyhow::Result<String> {
    let text = match given {
        Some(g) => g.trim().to_owned(),
        None => {
            let local = listen
                .replacen("0.0.0.0:", "127.0.0.1:", 1)
                .replacen("[::]:", "[::1]:", 1);
            format!("http://{local}")
        }
    };
    let with_scheme = if text.contains("://") {
        text.clone()
    } else {
        format!("http://{text}")
    };
    let valid = reqwest::Url::parse(&with_scheme).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https")
            && u.host_str().is_some_and(|h| !h.is_empty())
            && u.query().is_none()
    });
    match valid {
        Some(_) => Ok(with_scheme.trim_end_matches('/').to_owned()),
        None => anyhow::bail!(
            "`{text}` is not a server address such as http://127.0.0.1:6566 (from {})",
            if given.is_some() {
                "--server"
            } else {
                "server.listen"
            }
        ),
    }
}

/// A dead-letter request's error, with a 404 explained: the server answers, but without the
/// dead-letter API.
fn dead_letter_error(server: &str, e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<ServerError>() {
        Some(s) if s.status == reqwest::StatusCode::NOT_FOUND => anyhow::anyhow!(
            "{server} has no dead-letter API: it runs no stream ingestion (ingest.in_server = \
             false; the process that ingests owns the dead letters) or is not a Cellar server"
        ),
        _ => e,
    }
}

/// `GET /v1/dead-letters` of a running server.
pub async fn list_dead_letters(
    server: &str,
    limit: usize,
    ingestion: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut query = vec![("limit", limit.to_string())];
    if let Some(i) = ingestion {
        query.push(("ingestion", i.to_owned()));
    }
    let answer = get(server, "/v1/dead-letters", &query)
        .await
        .map_err(|e| dead_letter_error(server, e))?;
    serde_json::from_value(answer).context("the server's list of dead letters is not understood")
}

/// `POST /v1/dead-letters/redrive` of a running server.
pub async fn redrive_dead_letters(server: &str, limit: Option<usize>) -> anyhow::Result<Redriven> {
    let body = match limit {
        Some(n) => json!({ "limit": n }),
        None => json!({}),
    };
    let answer = post(server, "/v1/dead-letters/redrive", &body)
        .await
        .map_err(|e| dead_letter_error(server, e))?;
    serde_json::from_value(answer).context("the server's answer to a re-drive is not understood")
}

/// Widest payload and error shown in a dead-letter table; `--json` shows them whole.
const PAYLOAD_WIDTH: usize = 60;
const ERROR_WIDTH: usize = 80;

/// `text` on one line, cut to `max` characters.
fn shorten(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Renders dead letters as one table.
pub fn render_dead_letters(letters: &[DeadLetter]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header([
        "partition",
        "offset",
        "topic",
        "ingestion",
        "attempts",
        "first failure",
        "error",
        "payload",
    ]);
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    for d in letters {
        table.add_row([
            d.partition.to_string(),
            d.offset.to_string(),
            text(&d.topic),
            text(&d.ingestion),
            d.attempts.map(|a| a.to_string()).unwrap_or_default(),
            text(&d.first_failure),
            shorten(d.error.as_deref().unwrap_or_default(), ERROR_WIDTH),
            shorten(&d.payload, PAYLOAD_WIDTH),
        ]);
    }
    format!("{table}\n")
}

/// Events sent per request by `produce`.
const PRODUCE_CHUNK: usize = 1000;

/// What `produce` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    /// Events appended by this run.
    pub appended: u64,
    /// Events skipped because an earlier run (or retry) had appended them.
    pub duplicates: u64,
    /// Events no ingestion consumes.
    pub unrouted: u64,
}

/// Most malformed lines named when a file is refused.
const BAD_LINES_SHOWN: usize = 5;

/// Sends JSON lines to `/v1/events` in chunks.
///
/// Every line is parsed first: if any is not JSON, nothing is sent and the error names them.
/// With a `producer` id the events are numbered (the n-th event of the input is sequence n),
/// so running the same input again appends only what is missing: a run that was killed, or
/// that failed midway, resumes where the server's log ends.
pub async fn produce(
    server: &str,
    topic: &str,
    lines: &str,
    producer: Option<&str>,
) -> anyhow::Result<Produced> {
    let mut events = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in lines.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Json>(line) {
            Ok(event) => events.push(event),
            Err(e) => bad.push(format!("line {}: {e}", i + 1)),
        }
    }
    if !bad.is_empty() {
        let more = bad.len().saturating_sub(BAD_LINES_SHOWN);
        let mut message = format!(
            "{} line(s) are not JSON; nothing was sent:\n  {}",
            bad.len(),
            bad[..bad.len().min(BAD_LINES_SHOWN)].join("\n  ")
        );
        if more > 0 {
            message.push_str(&format!("\n  and {more} more"));
        }
        anyhow::bail!(message);
    }

    let mut done = Produced::default();
    let mut next = 0usize;
    while next < events.len() {
        let end = (next + PRODUCE_CHUNK).min(events.len());
        let mut body = json!({"topic": topic, "events": &events[next..end]});
        if let Some(id) = producer {
            body["producer"] = json!({"id": id, "sequence": next});
        }
        let answer = post(server, "/v1/events", &body).await.with_context(|| {
            format!(
                "{} of {} events appended before this failure{}",
                next,
                events.len(),
                if producer.is_some() {
                    "; run the same command again to resume (events already appended are \
                     skipped)"
                } else {
                    ""
                }
            )
        })?;
        done.appended += answer["appended"].as_u64().unwrap_or(0);
        done.duplicates += answer["duplicates"].as_u64().unwrap_or(0);
        done.unrouted += answer["unrouted"].as_u64().unwrap_or(0);
        // A resumed run learns from its first answer where the log ends and skips ahead.
        let server_next = answer["next_sequence"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(end);
        if server_next > end {
            done.duplicates += (server_next.min(events.len()) - end) as u64;
        }
        next = server_next.max(end);
    }
    Ok(done)
}

/// The producer id `cellar produce` uses for a file: its name and a hash of its full path, so
/// running it again on the same file resumes, and two files never share sequences.
pub fn producer_id_for(path: &std::path::Path) -> String {
    let full = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in full.to_string_lossy().as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let name: String = path
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(64).collect())
        .unwrap_or_default();
    format!("file:{name}:{hash:016x}")
}

fn cell(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// Renders a `/v1/features` answer as one table per group.
pub fn render_features(answer: &Json) -> String {
    let mut out = String::new();
    let entities = answer["entities"].as_object();
    let key_names: Vec<&String> = entities.map(|e| e.keys().collect()).unwrap_or_default();
    for result in answer["results"].as_array().into_iter().flatten() {
        let features: Vec<String> = result["features"]
            .as_array()
            .into_iter()
            .flatten()
            .map(cell)
            .collect();
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        let mut header: Vec<String> = key_names.iter().map(|k| k.to_string()).collect();
        header.extend(["status".to_owned(), "event_time".to_owned()]);
        header.extend(features.iter().cloned());
        table.set_header(header);
        for (i, row) in result["rows"].as_array().into_iter().flatten().enumerate() {
            let keys: Vec<String> = key_names
                .iter()
                .map(|k| cell(&entities.map_or(Json::Null, |e| e[k.as_str()][i].clone())))
                .collect();
            let status = cell(&row["status"]);
            match row["records"].as_array() {
                Some(records) => {
                    if records.is_empty() {
                        let mut line = keys.clone();
                        line.push(status.clone());
                        table.add_row(line);
                    }
                    for r in records {
                        let mut line = keys.clone();
                        line.push(status.clone());
                        line.push(cell(&r["event_time"]));
                        line.extend(r["values"].as_array().into_iter().flatten().map(cell));
                        table.add_row(line);
                    }
                }
                None => {
                    let mut line = keys;
                    line.push(status);
                    line.push(cell(&row["event_time"]));
                    line.extend(row["values"].as_array().into_iter().flatten().map(cell));
                    table.add_row(line);
                }
            }
        }
        out.push_str(&format!("{}\n{table}\n", cell(&result["group"])));
    }
    out
}

/// The `/v1/features` body of a `cellar get`.
pub fn features_body(
    entities: serde_json::Map<String, Json>,
    groups: &[String],
    features: &[String],
    top_n: Option<usize>,
    window: Option<&str>,
    service: Option<&str>,
) -> anyhow::Result<Json> {
    if let Some(service) = service {
        return Ok(json!({ "entities": entities, "feature_service": service }));
    }
    if groups.is_empty() {
        anyhow::bail!("give --group (one or more) or --service");
    }
    let groups: Vec<Json> = groups
        .iter()
        .map(|g| {
            let mut body = json!({ "name": g });
            if !features.is_empty() {
                body["features"] = json!(features);
            }
            if let Some(n) = top_n {
                body["top_n"] = json!(n);
            }
            if let Some(w) = window {
                body["window"] = json!(w);
            }
            body
        })
        .collect();
    Ok(json!({ "entities": entities, "groups": groups }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_arguments_become_columns() {
        let cols = entity_columns(&["user_id=u1".into(), "user_id=u2".into()]).unwrap();
        assert_eq!(Json::Object(cols), json!({"user_id": ["u1", "u2"]}));
        assert!(entity_columns(&["u1".into()]).is_err());
    }

    #[test]
    fn request_arguments_become_typed_columns() {
        let cols = request_columns(&[
            "lat=52.5".into(),
            "lat=-1".into(),
            "city=Paris".into(),
            "tags=[\"a\"]".into(),
        ])
        .unwrap();
        assert_eq!(
            Json::Object(cols),
            json!({"lat": [52.5, -1], "city": ["Paris"], "tags": [["a"]]})
        );
        assert!(request_columns(&["lat".into()]).is_err());
    }

    #[test]
    fn server_addresses_default_to_the_listen_address() {
        assert_eq!(
            server_url(None, "0.0.0.0:6566").unwrap(),
            "http://127.0.0.1:6566"
        );
        assert_eq!(
            server_url(Some("localhost:7000/"), "x").unwrap(),
            "http://localhost:7000"
        );
        assert_eq!(
            server_url(Some("https://cellar.example"), "x").unwrap(),
            "https://cellar.example"
        );
        for bad in ["", "ftp://h", "http://", "a b:1"] {
            let err = server_url(Some(bad), "x").unwrap_err().to_string();
            assert!(err.contains("not a server address"), "{bad}: {err}");
        }
    }

    #[test]
    fn dead_letter_tables_cut_long_payloads() {
        let letter = DeadLetter {
            partition: 2,
            offset: 41,
            topic: Some("actions".into()),
            ingestion: Some("clicks".into()),
            attempts: Some(1),
            first_failure: Some("2026-01-01T00:00:00.000Z".into()),
            error: Some("feature `age`: expected int64".into()),
            origin: None,
            key: None,
            payload: format!("{{\"pad\": \"{}\"}}", "x".repeat(500)),
        };
        let text = render_dead_letters(&[letter]);
        assert!(
            text.contains("clicks") && text.contains("expected int64"),
            "{text}"
        );
        assert!(
            text.contains('…') && !text.contains(&"x".repeat(100)),
            "{text}"
        );
    }

    #[test]
    fn tables_show_every_row() {
        let answer = json!({
            "entities": {"user_id": ["u1", "u2"]},
            "results": [{"group": "g", "kind": "attribute", "features": ["country"],
                "rows": [{"status": "present", "event_time": "2024-01-01T00:00:00Z", "values": ["KR"]},
                         {"status": "not_found"}]}]
        });
        let text = render_features(&answer);
        assert!(
            text.contains("KR") && text.contains("not_found") && text.contains("u2"),
            "{text}"
        );
    }
}
