//! Single-flight reads: concurrent misses on one key make one read of the next tier.
//!
//! A request that misses a key nobody is reading becomes that key's leader: it reads the key
//! (with the other keys it leads, in one call) and publishes the answer. A request that
//! misses a key already being read follows: it waits for the leader's answer instead of
//! reading. A leader that fails, or is dropped mid-read (its request cancelled), publishes
//! nothing; its followers then read the key themselves, so no request ever waits on a read
//! that will not come.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

/// Reads in flight, by cache key.
pub(crate) struct Flights<V> {
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<Option<V>>>>>,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Flights {
            inflight: Arc::default(),
        }
    }
}

/// What a request does about each key it missed.
pub(crate) enum Role<V> {
    /// Read it, then publish through the guard.
    Lead,
    /// Wait for this leader's answer.
    Follow(watch::Receiver<Option<V>>),
}

/// The keys one request leads. Dropping it without publishing releases them, waking the
/// followers to read for themselves.
pub(crate) struct Leadership<V> {
    inflight: Arc<Mutex<HashMap<String, watch::Receiver<Option<V>>>>>,
    led: Vec<(String, watch::Sender<Option<V>>)>,
}

impl<V: Clone> Flights<V> {
    /// Decides, for each key, whether this request leads its read or follows another's.
    pub(crate) fn join(&self, keys: &[String]) -> (Vec<Role<V>>, Leadership<V>) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        let mut roles = Vec::with_capacity(keys.len());
        let mut led = Vec::new();
        for key in keys {
            match inflight.get(key) {
                Some(rx) => roles.push(Role::Follow(rx.clone())),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(key.clone(), rx);
                    led.push((key.clone(), tx));
                    roles.push(Role::Lead);
                }
            }
        }
        (
            roles,
            Leadership {
                inflight: self.inflight.clone(),
                led,
            },
        )
    }
}

impl<V> Leadership<V> {
    /// Publishes the answer of a led key to its followers and ends its flight.
    pub(crate) fn publish(&mut self, key: &str, value: V) {
        if let Some(at) = self.led.iter().position(|(k, _)| k == key) {
            let (key, tx) = self.led.swap_remove(at);
            self.release(&key, &tx);
            tx.send_replace(Some(value));
        }
    }

    fn release(&self, key: &str, tx: &watch::Sender<Option<V>>) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight
            .get(key)
            .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
        {
            inflight.remove(key);
        }
    }
}

impl<V> Drop for Leadership<V> {
    fn drop(&mut self) {
        for (key, tx) in std::mem::take(&mut self.led) {
            self.release(&key, &tx);
            // Dropping the sender wakes the followers with an error: they read themselves.
        }
    }
}

/// Waits for a leader's answer; `None` when the leader gave up without one.
pub(crate) async fn follow<V: Clone>(mut rx: watch::Receiver<Option<V>>) -> Option<V> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}
