//! `cellar get` and `cellar push`: talk to a running server over its HTTP API.

use anyhow::Context as _;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde_json::{json, Value as Json};

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

/// Posts a JSON body and returns the JSON answer, or the server's error message.
pub async fn post(server: &str, path: &str, body: &Json) -> anyhow::Result<Json> {
    let url = format!("{}{path}", server.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .json(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}; is `cellar serve` running?"))?;
    let status = resp.status();
    let answer: Json = resp
        .json()
        .await
        .context("the server's answer is not JSON")?;
    if !status.is_success() {
        let message = answer["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| answer.to_string());
        anyhow::bail!("{status}: {message}");
    }
    Ok(answer)
}

/// Events sent per request by `produce`.
const PRODUCE_CHUNK: usize = 1000;

/// Sends JSON lines to `/v1/events` in chunks; returns (appended, unrouted). A line that is not
/// JSON stops the command with its line number before anything after it is sent.
pub async fn produce(server: &str, topic: &str, lines: &str) -> anyhow::Result<(u64, u64)> {
    let mut chunk = Vec::with_capacity(PRODUCE_CHUNK);
    let (mut appended, mut unrouted) = (0, 0);
    let send = |chunk: Vec<Json>| async move {
        let answer = post(
            server,
            "/v1/events",
            &json!({"topic": topic, "events": chunk}),
        )
        .await?;
        anyhow::Ok((
            answer["appended"].as_u64().unwrap_or(0),
            answer["unrouted"].as_u64().unwrap_or(0),
        ))
    };
    for (i, line) in lines.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event: Json =
            serde_json::from_str(line).with_context(|| format!("line {} is not JSON", i + 1))?;
        chunk.push(event);
        if chunk.len() == PRODUCE_CHUNK {
            let (a, u) = send(std::mem::take(&mut chunk)).await?;
            appended += a;
            unrouted += u;
        }
    }
    if !chunk.is_empty() {
        let (a, u) = send(chunk).await?;
        appended += a;
        unrouted += u;
    }
    Ok((appended, unrouted))
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
