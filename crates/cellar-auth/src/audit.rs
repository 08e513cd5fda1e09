//! The audit log: one JSON line per write and operator action (who, what, on what, how many
//! records, the outcome), appended to a file by a background task so that requests never
//! wait on the disk, and also given to `tracing` under the target `cellar::audit`.

use std::io::Write as _;
use std::path::Path;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::policy::{Access, Action};

/// Where audit records go. Cloning shares the writer.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    file: Option<mpsc::UnboundedSender<String>>,
}

#[derive(Serialize)]
struct Entry<'a> {
    time: String,
    who: &'a str,
    via: &'static str,
    action: &'static str,
    resource: &'a str,
    records: u64,
    outcome: &'a str,
}

impl Audit {
    /// Audit records to `tracing` only.
    pub fn tracing_only() -> Audit {
        Audit::default()
    }

    /// Appends audit records to `path` (created if missing). Must be called within a Tokio
    /// runtime, whose blocking pool writes the lines.
    pub fn open(path: &Path) -> std::io::Result<Audit> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::task::spawn_blocking(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = first;
                while let Ok(next) = rx.try_recv() {
                    batch.push_str(&next);
                }
                if let Err(e) = file.write_all(batch.as_bytes()).and_then(|()| file.flush()) {
                    tracing::error!(error = %e, "writing the audit log failed");
                }
            }
        });
        Ok(Audit { file: Some(tx) })
    }

    /// Records that `access`'s caller did `action` on `resource` (`group:x`, `job:12`, ...),
    /// touching `records` records, with `outcome` (`ok`, `denied`, or an error's text).
    pub fn record(
        &self,
        access: &Access,
        action: Action,
        resource: &str,
        records: u64,
        outcome: &str,
    ) {
        tracing::info!(
            target: "cellar::audit",
            who = access.who(),
            via = access.via(),
            action = action.as_str(),
            resource,
            records,
            outcome,
        );
        let Some(tx) = &self.file else { return };
        let entry = Entry {
            time: chrono_now(),
            who: access.who(),
            via: access.via(),
            action: action.as_str(),
            resource,
            records,
            outcome,
        };
        if let Ok(mut line) = serde_json::to_string(&entry) {
            line.push('\n');
            let _ = tx.send(line);
        }
    }
}

fn chrono_now() -> String {
    cellar_spec::value::format_timestamp(cellar_spec::time::now_ms())
}
