//! Writes whose Redis update was skipped (breaker open, error, timeout), remembered until their
//! copies are invalidated: the tier's staleness bound after a blip.
//!
//! A skipped write leaves the copy in Redis older than the store, and a write that timed out
//! may still be applied later, as may a fill that read the store before the write. So the
//! keys are remembered with the newest event time written to them, and once Redis answers
//! again each gets an invalidation marker at that event time (`PUT_IF_NEWER` with `max`): the
//! marker reads as a miss, and any fill or late write older than it loses against it. Past
//! [`RemoteConfig::skipped_keys`](super::RemoteConfig::skipped_keys) keys, a group is
//! invalidated whole instead (and a time-series group always is, since a late record's event
//! time cannot tell an old fill from a new one): its generation moves on, and every value
//! stamped with an older one (including fills still in flight, stamped with the generation
//! read before their store read) is a miss.
//!
//! Until a group's invalidations are applied, reads of that group on this node skip Redis,
//! so this node never serves a copy older than a write it acknowledged. Other nodes serve the
//! old copies until the invalidations land. A background task applies them: at once after a
//! write is skipped, then once per breaker cool-down while they fail, so they land within a
//! cool-down of Redis answering this node again, plus the time to write them (a pipeline per
//! `backfill_batch` keys, each within the write timeout); if this node stops first, the
//! copies live until their hard TTL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::Value;

use super::scripts::{ScriptCall, Tie, SCRIPTS};
use super::stats::bump;
use super::value::encode_invalidated;
use super::Shared;

/// The skipped writes of one group.
#[derive(Debug)]
struct GroupSkips {
    /// Where the group's generation lives, to move it on.
    generation_key: Vec<u8>,
    /// How long the markers live: longer than any fill still in flight.
    marker_ttl_ms: u64,
    /// Each key's newest event time written while its update was skipped; its marker's.
    keys: HashMap<Vec<u8>, i64>,
    /// Too many keys were skipped: the whole group is invalidated (its generation moved on).
    whole: bool,
    /// Counts the writes recorded, so a recovery that ran meanwhile forgets only what it did.
    changes: u64,
}

/// What one recovery does for a group.
struct Owed {
    group: String,
    generation_key: Vec<u8>,
    marker_ttl_ms: u64,
    keys: Vec<(Vec<u8>, i64)>,
    whole: bool,
    changes: u64,
}

/// The skipped writes of every group, bounded by a count of keys.
#[derive(Debug)]
pub(super) struct Skipped {
    groups: Mutex<HashMap<String, GroupSkips>>,
    /// How many groups have skipped writes: reads check it before taking the lock.
    owing: AtomicUsize,
    capacity: usize,
}

impl Skipped {
    pub(super) fn new(capacity: usize) -> Skipped {
        Skipped {
            groups: Mutex::default(),
            owing: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Whether `group` (any group, if `None`) has skipped writes not yet invalidated.
    pub(super) fn owes(&self, group: Option<&str>) -> bool {
        if self.owing.load(Ordering::Acquire) == 0 {
            return false;
        }
        match (group, self.groups.lock()) {
            (Some(g), Ok(groups)) => groups.contains_key(g),
            (None, Ok(groups)) => !groups.is_empty(),
            // A poisoned lock: safer to keep reads off Redis.
            (_, Err(_)) => true,
        }
    }

    /// Keys of skipped writes, held until invalidated.
    pub(super) fn held(&self) -> usize {
        self.groups
            .lock()
            .map(|g| g.values().map(|s| s.keys.len()).sum())
            .unwrap_or(0)
    }

    /// Remembers writes to `keys` (each with the event time its marker needs) whose update
    /// Redis may not have applied; with `whole`, the whole group is to be invalidated.
    pub(super) fn record(
        &self,
        group: &str,
        generation_key: &[u8],
        marker_ttl_ms: u64,
        whole: bool,
        keys: impl IntoIterator<Item = (Vec<u8>, i64)>,
    ) {
        let mut keys = keys.into_iter().peekable();
        if keys.peek().is_none() {
            return;
        }
        let Ok(mut groups) = self.groups.lock() else {
            return;
        };
        let mut held: usize = groups.values().map(|s| s.keys.len()).sum();
        let skips = groups
            .entry(group.to_owned())
            .or_insert_with(|| GroupSkips {
                generation_key: generation_key.to_vec(),
                marker_ttl_ms,
                keys: HashMap::new(),
                whole: false,
                changes: 0,
            });
        skips.changes += 1;
        skips.marker_ttl_ms = skips.marker_ttl_ms.max(marker_ttl_ms);
        if whole && !skips.whole {
            skips.whole = true;
            skips.keys = HashMap::new();
        }
        for (key, event_time) in keys {
            if skips.whole {
                break;
            }
            if let Some(t) = skips.keys.get_mut(&key) {
                *t = (*t).max(event_time);
            } else if held < self.capacity {
                skips.keys.insert(key, event_time);
                held += 1;
            } else {
                tracing::warn!(
                    group,
                    capacity = self.capacity,
                    "too many writes skipped by the remote cache: the group's copies will be \
                     invalidated whole"
                );
                skips.whole = true;
                skips.keys = HashMap::new();
            }
        }
        self.owing.store(groups.len(), Ordering::Release);
    }

    fn owed(&self, group: Option<&str>) -> Vec<Owed> {
        let Ok(groups) = self.groups.lock() else {
            return Vec::new();
        };
        groups
            .iter()
            .filter(|(name, _)| group.is_none_or(|g| g == name.as_str()))
            .map(|(name, s)| Owed {
                group: name.clone(),
                generation_key: s.generation_key.clone(),
                marker_ttl_ms: s.marker_ttl_ms,
                keys: s.keys.iter().map(|(k, t)| (k.clone(), *t)).collect(),
                whole: s.whole,
                changes: s.changes,
            })
            .collect()
    }

    /// Forgets what a recovery invalidated: the group, if nothing was recorded since, else the
    /// keys whose event time did not move.
    fn settle(&self, owed: &Owed, done_keys: &[(Vec<u8>, i64)]) {
        let Ok(mut groups) = self.groups.lock() else {
            return;
        };
        if let Some(skips) = groups.get_mut(&owed.group) {
            if skips.changes == owed.changes {
                groups.remove(&owed.group);
            } else if !owed.whole {
                for (key, t) in done_keys {
                    if skips.keys.get(key) == Some(t) {
                        skips.keys.remove(key);
                    }
                }
                if skips.keys.is_empty() && !skips.whole {
                    groups.remove(&owed.group);
                }
            }
        }
        self.owing.store(groups.len(), Ordering::Release);
    }
}

impl Shared {
    /// Remembers writes of `group` whose update Redis may not have applied (see
    /// [`Skipped::record`]), and wakes the task that invalidates them.
    pub(super) fn skipped_writes(
        &self,
        group: &cellar_spec::FeatureGroup,
        keys: impl IntoIterator<Item = (Vec<u8>, i64)>,
    ) {
        let mut keys = keys.into_iter().peekable();
        if keys.peek().is_none() {
            return;
        }
        // A series record may be older than the newest one cached (a late event): its marker
        // would take the cached series' newest event time, which a fill of the series read
        // without the record ties, and a tie replaces a marker. Series groups move on whole.
        let whole = group.kind == cellar_spec::GroupKind::Timeseries;
        self.skipped.record(
            &group.name,
            &self.generation_key(&group.name),
            super::deadlines::Ttls::marker(&group.serving),
            whole,
            keys,
        );
        self.recover_soon.notify_one();
    }

    /// Applies every invalidation owed, group by group (one refused keeps only its own group
    /// off Redis); returns whether none is owed any more.
    async fn recover(&self) -> bool {
        for owed in self.skipped.owed(None) {
            self.invalidate_owed(&owed).await;
        }
        !self.skipped.owes(None)
    }

    /// Invalidates one group's owed keys (or the whole group), in pipelines through the
    /// breaker; returns whether all of it was applied.
    async fn invalidate_owed(&self, owed: &Owed) -> bool {
        let calls: Vec<ScriptCall> = if owed.whole {
            vec![ScriptCall {
                key: owed.generation_key.clone(),
                script: &SCRIPTS.bump_generation,
                args: Vec::new(),
            }]
        } else {
            owed.keys
                .iter()
                .map(|(key, event_time)| {
                    ScriptCall::put(
                        key.clone(),
                        encode_invalidated(*event_time),
                        owed.marker_ttl_ms,
                        Tie::Max,
                    )
                })
                .collect()
        };
        let mut done = Vec::new();
        for (chunk, keys) in calls.chunks(self.batch).zip(
            owed.keys
                .chunks(self.batch)
                .chain(std::iter::repeat(&[][..])),
        ) {
            let Some(permit) = self.breaker.try_acquire() else {
                return false;
            };
            let mut conn = self.conn.clone();
            match tokio::time::timeout(self.write_timeout, conn.run_scripts(chunk)).await {
                Ok(Ok(replies)) if replies.iter().all(|r| matches!(r, Value::Int(_))) => {
                    permit.succeeded();
                    if owed.whole {
                        if let Some(Value::Int(generation)) = replies.first() {
                            self.generations.learn(&owed.group, *generation as u64);
                        }
                    }
                    bump(&self.stats.invalidations_applied, chunk.len());
                    done.extend_from_slice(keys);
                }
                Ok(Ok(replies)) => {
                    // Redis answers, but refused a script: keep the group off Redis.
                    permit.succeeded();
                    bump(&self.stats.errors, 1);
                    let refused = replies.iter().find(|r| !matches!(r, Value::Int(_)));
                    tracing::warn!(group = %owed.group, reply = ?refused,
                        "remote cache invalidation after skipped writes refused");
                    return false;
                }
                Ok(Err(e)) => {
                    permit.failed();
                    bump(&self.stats.errors, 1);
                    tracing::debug!(group = %owed.group, error = %e, "remote cache invalidation failed");
                    return false;
                }
                Err(_) => {
                    permit.failed();
                    bump(&self.stats.timeouts, 1);
                    return false;
                }
            }
        }
        self.skipped.settle(owed, &done);
        if owed.whole {
            tracing::info!(group = %owed.group, "remote cache group invalidated after skipped writes");
        }
        true
    }
}

/// Applies owed invalidations when woken (a write was skipped) and every `interval` (the
/// breaker's cool-down), waiting an interval after a failed attempt so a dead Redis is not
/// hammered. Ends with the tier.
pub(super) async fn keep_recovering(
    shared: Weak<Shared>,
    recover_soon: Arc<tokio::sync::Notify>,
    interval: Duration,
) {
    let interval = interval.max(Duration::from_millis(10));
    loop {
        let _ = tokio::time::timeout(interval, recover_soon.notified()).await;
        let Some(tier) = shared.upgrade() else {
            return;
        };
        let recovered = tier.recover().await;
        drop(tier);
        if !recovered {
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(skipped: &Skipped, group: &str) -> Vec<(Vec<u8>, i64)> {
        let mut keys = skipped
            .owed(Some(group))
            .pop()
            .map(|o| o.keys)
            .unwrap_or_default();
        keys.sort();
        keys
    }

    #[test]
    fn skipped_keys_keep_their_newest_event_time_until_settled() {
        let s = Skipped::new(10);
        assert!(!s.owes(None));
        s.record("g", b"g!generation", 1000, false, []);
        assert!(!s.owes(None), "nothing skipped, nothing owed");
        s.record(
            "g",
            b"g!generation",
            1000,
            false,
            [(b"a".to_vec(), 5), (b"b".to_vec(), 7)],
        );
        s.record(
            "g",
            b"g!generation",
            1000,
            false,
            [(b"a".to_vec(), 9), (b"a".to_vec(), 3)],
        );
        assert!(s.owes(Some("g")) && s.owes(None) && !s.owes(Some("h")));
        assert_eq!(keys(&s, "g"), vec![(b"a".to_vec(), 9), (b"b".to_vec(), 7)]);
        let owed = s.owed(Some("g")).pop().unwrap();
        s.settle(&owed, &owed.keys);
        assert!(!s.owes(None));
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_write_skipped_during_a_recovery_stays_owed() {
        let s = Skipped::new(10);
        s.record(
            "g",
            b"k",
            1000,
            false,
            [(b"a".to_vec(), 5), (b"b".to_vec(), 7)],
        );
        let owed = s.owed(None).pop().unwrap();
        // Skipped while the markers were on their way: a newer event time for a, and c.
        s.record(
            "g",
            b"k",
            1000,
            false,
            [(b"a".to_vec(), 8), (b"c".to_vec(), 1)],
        );
        s.settle(&owed, &owed.keys);
        assert!(s.owes(Some("g")));
        assert_eq!(keys(&s, "g"), vec![(b"a".to_vec(), 8), (b"c".to_vec(), 1)]);
    }

    #[test]
    fn past_the_capacity_the_group_is_owed_whole() {
        let s = Skipped::new(3);
        s.record(
            "g",
            b"k",
            1000,
            false,
            [(b"a".to_vec(), 1), (b"b".to_vec(), 1)],
        );
        s.record("h", b"k", 1000, false, [(b"x".to_vec(), 1)]);
        // A key already held costs nothing more.
        s.record("g", b"k", 1000, false, [(b"a".to_vec(), 2)]);
        assert!(!s.owed(Some("g")).pop().unwrap().whole);
        s.record("g", b"k", 1000, false, [(b"c".to_vec(), 1)]);
        let owed = s.owed(Some("g")).pop().unwrap();
        assert!(owed.whole && owed.keys.is_empty());
        assert_eq!(s.held(), 1, "the whole group holds no keys");
        // Another group still has room now.
        s.record("h", b"k", 1000, false, [(b"y".to_vec(), 1)]);
        assert!(!s.owed(Some("h")).pop().unwrap().whole);
        s.settle(&owed, &[]);
        assert!(!s.owes(Some("g")) && s.owes(Some("h")));
        s.record("s", b"k", 1000, true, [(b"a".to_vec(), 1)]);
        let owed = s.owed(Some("s")).pop().unwrap();
        assert!(owed.whole && owed.keys.is_empty(), "asked for whole");
    }
}
