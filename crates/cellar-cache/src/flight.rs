//! Single-flight reads: concurrent misses on one key make one read of the next tier.
//!
//! A request that misses a key nobody is reading becomes that key's leader: it reads the key
//! (with the other keys it leads, in one call) and publishes the answer. A request that
//! misses a key already being read follows: it waits for the leader's answer instead of
//! reading. A leader that fails, or is dropped mid-read (its request cancelled), publishes
//! nothing; its followers then read the key themselves, so no request ever waits on a read
//! that will not come.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

type InFlight<K, V> = Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>;

/// Reads in flight, by cache key.
pub(crate) struct Flights<K, V> {
    inflight: InFlight<K, V>,
}

impl<K, V> Default for Flights<K, V> {
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
pub(crate) struct Leadership<K: Hash + Eq, V> {
    inflight: InFlight<K, V>,
    led: Vec<(K, watch::Sender<Option<V>>)>,
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    /// Answers `keys`, reading each once however many requests ask for it at the same time:
    /// `read` is called once with the positions of the keys nobody else is reading (it reads
    /// them from the next tier, and may cache what it found, before the followers are told),
    /// this request waits for the others' answers, and calls `read` again for the keys whose
    /// leader gave up. An answer is `None` only where `read` returned fewer values than asked.
    pub(crate) async fn read<F, Fut, E>(&self, keys: &[K], read: F) -> Result<Vec<Option<V>>, E>
    where
        F: Fn(Vec<usize>) -> Fut,
        Fut: Future<Output = Result<Vec<V>, E>>,
    {
        let (roles, mut leadership) = self.join(keys);
        let led: Vec<usize> = (0..keys.len())
            .filter(|&i| matches!(roles[i], Role::Lead))
            .collect();
        let mut answers: Vec<Option<V>> = vec![None; keys.len()];
        if !led.is_empty() {
            let found = read(led.clone()).await?;
            for (&i, value) in led.iter().zip(found) {
                leadership.publish(&keys[i], value.clone());
                answers[i] = Some(value);
            }
        }
        drop(leadership);
        let mut unanswered = Vec::new();
        for (i, role) in roles.into_iter().enumerate() {
            if let Role::Follow(rx) = role {
                match follow(rx).await {
                    Some(value) => answers[i] = Some(value),
                    None => unanswered.push(i),
                }
            }
        }
        if !unanswered.is_empty() {
            let found = read(unanswered.clone()).await?;
            for (i, value) in unanswered.into_iter().zip(found) {
                answers[i] = Some(value);
            }
        }
        Ok(answers)
    }

    /// Decides, for each key, whether this request leads its read or follows another's.
    pub(crate) fn join(&self, keys: &[K]) -> (Vec<Role<V>>, Leadership<K, V>) {
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

impl<K: Hash + Eq, V> Leadership<K, V> {
    /// Publishes the answer of a led key to its followers and ends its flight.
    pub(crate) fn publish(&mut self, key: &K, value: V) {
        if let Some(at) = self.led.iter().position(|(k, _)| k == key) {
            let (key, tx) = self.led.swap_remove(at);
            self.release(&key, &tx);
            tx.send_replace(Some(value));
        }
    }

    fn release(&self, key: &K, tx: &watch::Sender<Option<V>>) {
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight
            .get(key)
            .is_some_and(|rx| rx.same_channel(&tx.subscribe()))
        {
            inflight.remove(key);
        }
    }
}

impl<K: Hash + Eq, V> Drop for Leadership<K, V> {
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
