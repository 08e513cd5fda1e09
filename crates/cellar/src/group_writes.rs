//! Group freshness shared through the registry. Each process that writes feature groups
//! (servers, `cellar worker`, `cellar ingest`) records there what it wrote and takes in what
//! the others recorded, so the freshness the console and the metrics show survives a restart
//! and agrees across processes, [`SHARE_EVERY`] behind at most.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cellar_cache::{Freshness, GroupFreshness};
use cellar_registry::{GroupWrites, Registry, RegistryError};
use tokio::sync::{watch, Mutex};
use tokio::time::MissedTickBehavior;

/// How often a process shares its figures and takes in the others'.
pub const SHARE_EVERY: Duration = Duration::from_secs(10);

/// One process's side of the sharing.
#[derive(Clone)]
pub struct SharedFreshness {
    registry: Registry,
    freshness: Freshness,
    /// Each group's figures as last exchanged: a group is recorded again only once written
    /// here since.
    exchanged: Arc<Mutex<HashMap<String, GroupFreshness>>>,
}

impl SharedFreshness {
    pub fn new(registry: Registry, freshness: Freshness) -> SharedFreshness {
        SharedFreshness {
            registry,
            freshness,
            exchanged: Arc::default(),
        }
    }

    /// Records the groups written here since the last exchange, then takes in every group's
    /// figures as all processes recorded them.
    pub async fn exchange(&self) -> Result<(), RegistryError> {
        let mut exchanged = self.exchanged.lock().await;
        let written: Vec<GroupWrites> = self
            .freshness
            .all()
            .into_iter()
            .filter(|(group, now)| exchanged.get(group) != Some(now))
            .map(|(group, f)| GroupWrites {
                group,
                newest_event_ms: f.newest_event_ms,
                last_write_ms: f.last_write_ms,
                last_delay_ms: f.last_delay_ms,
            })
            .collect();
        self.registry.record_group_writes(&written).await?;
        for w in self.registry.group_writes().await? {
            self.freshness.merge(
                &w.group,
                GroupFreshness {
                    newest_event_ms: w.newest_event_ms,
                    last_write_ms: w.last_write_ms,
                    last_delay_ms: w.last_delay_ms,
                },
            );
            if let Some(merged) = self.freshness.of(&w.group) {
                exchanged.insert(w.group, merged);
            }
        }
        Ok(())
    }

    /// [`SharedFreshness::exchange`], a failure logged: the figures wait for the next one.
    pub async fn exchange_logged(&self) {
        if let Err(e) = self.exchange().await {
            tracing::warn!(error = %e, "sharing group freshness through the registry failed");
        }
    }

    /// Exchanges every `every` until `stop`; the caller exchanges before (at start) and once
    /// more after its last write.
    pub async fn run(self, every: Duration, mut stop: watch::Receiver<bool>) {
        // The caller exchanged at start: the first tick is one period later.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.exchange_logged().await,
                _ = async { let _ = stop.wait_for(|stop| *stop).await; } => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_processes_see_each_others_writes_and_a_new_one_sees_both() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("registry.db").display());
        let registry = Registry::open(&url).await.unwrap();
        let (server, worker) = (Freshness::default(), Freshness::default());
        let server_side = SharedFreshness::new(registry.clone(), server.clone());
        let worker_side = SharedFreshness::new(registry.clone(), worker.clone());
        let now = cellar_spec::time::now_ms();
        server.written("clicks", now - 1_000);
        worker.written("profile", now - 86_400_000);
        server_side.exchange().await.unwrap();
        worker_side.exchange().await.unwrap();
        server_side.exchange().await.unwrap();
        assert_eq!(server.of("profile"), worker.of("profile"));
        assert_eq!(worker.of("clicks"), server.of("clicks"));
        // Nothing written since: nothing recorded again.
        let before = registry.group_writes().await.unwrap();
        worker_side.exchange().await.unwrap();
        assert_eq!(registry.group_writes().await.unwrap(), before);
        // A restarted process starts from what was recorded.
        let restarted = Freshness::default();
        SharedFreshness::new(registry.clone(), restarted.clone())
            .exchange()
            .await
            .unwrap();
        assert_eq!(restarted.of("clicks"), server.of("clicks"));
        assert_eq!(
            restarted.of("profile").unwrap().newest_event_ms,
            now - 86_400_000
        );
        registry.close().await;
    }
}
