//! Per-key ordering: events with the same key run one at a time, in offset order; events of
//! different keys run concurrently.
//!
//! A key is *busy* from the moment one of its events is released for running until that event
//! finishes; later events of a busy key wait in the key's queue and are released one by one.
//! Events without a key are unordered: they are released at once. Kafka's default partitioner
//! spreads keyless records over partitions round-robin, so no producer can rely on an order
//! between them, and serialising them would only cost throughput.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// The queues of events waiting behind a busy key.
#[derive(Debug)]
pub struct KeyQueue<E> {
    /// Busy keys, each with the events waiting behind the one that runs; a key with an empty
    /// queue is still busy. A key leaves the map when its last event finishes, so the map only
    /// holds keys with work in hand.
    busy: HashMap<Bytes, VecDeque<E>>,
    /// Events waiting in all queues, so `queued()` does not scan.
    queued: usize,
}

impl<E> Default for KeyQueue<E> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
            queued: 0,
        }
    }
}

impl<E> KeyQueue<E> {
    /// An empty set of queues.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers an event: returns it back when it may run now (its key was idle and is now busy,
    /// or it has no key), or keeps it queued behind its key's running event.
    pub fn admit(&mut self, key: Option<&Bytes>, event: E) -> Option<E> {
        let Some(key) = key else {
            return Some(event);
        };
        // One lookup per event: the consumer's keys are shared, so a clone only counts a
        // reference.
        match self.busy.entry(key.clone()) {
            Entry::Occupied(mut waiting) => {
                waiting.get_mut().push_back(event);
                self.queued += 1;
                None
            }
            Entry::Vacant(idle) => {
                idle.insert(VecDeque::new());
                Some(event)
            }
        }
    }

    /// Records that the running event of `key` finished: returns the key's next event, which
    /// may run now (the key stays busy), or frees the key.
    pub fn complete(&mut self, key: Option<&Bytes>) -> Option<E> {
        let Entry::Occupied(mut waiting) = self.busy.entry(key?.clone()) else {
            return None;
        };
        match waiting.get_mut().pop_front() {
            Some(next) => {
                self.queued -= 1;
                Some(next)
            }
            None => {
                waiting.remove();
                None
            }
        }
    }

    /// Drops every queued event and frees every key; returns how many events were dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queued;
        self.busy.clear();
        self.queued = 0;
        dropped
    }

    /// Events waiting behind busy keys.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Keys with an event released or running.
    pub fn busy_keys(&self) -> usize {
        self.busy.len()
    }

    /// Whether `key` has an event released or running.
    pub fn is_busy(&self, key: &Bytes) -> bool {
        self.busy.contains_key(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &'static str) -> Bytes {
        Bytes::from_static(name.as_bytes())
    }

    #[test]
    fn same_key_waits_and_is_released_in_order() {
        let mut queue = KeyQueue::new();
        let a = key("a");
        assert_eq!(queue.admit(Some(&a), 1), Some(1));
        assert_eq!(queue.admit(Some(&a), 2), None);
        assert_eq!(queue.admit(Some(&a), 3), None);
        assert_eq!(queue.queued(), 2);
        assert_eq!(queue.complete(Some(&a)), Some(2));
        assert_eq!(queue.complete(Some(&a)), Some(3));
        assert_eq!(queue.complete(Some(&a)), None);
        assert!(!queue.is_busy(&a));
        assert_eq!(queue.admit(Some(&a), 4), Some(4));
    }

    #[test]
    fn different_keys_do_not_wait_for_each_other() {
        let mut queue = KeyQueue::new();
        assert_eq!(queue.admit(Some(&key("a")), 1), Some(1));
        assert_eq!(queue.admit(Some(&key("b")), 2), Some(2));
        assert_eq!(queue.busy_keys(), 2);
    }

    #[test]
    fn keyless_events_are_unordered() {
        let mut queue = KeyQueue::new();
        assert_eq!(queue.admit(None, 1), Some(1));
        assert_eq!(queue.admit(None, 2), Some(2));
        assert_eq!(queue.complete(None), None);
        assert_eq!(queue.busy_keys(), 0);
    }

    #[test]
    fn clear_drops_queued_events_and_frees_keys() {
        let mut queue = KeyQueue::new();
        let a = key("a");
        queue.admit(Some(&a), 1);
        queue.admit(Some(&a), 2);
        queue.admit(Some(&a), 3);
        assert_eq!(queue.clear(), 2);
        assert_eq!(queue.queued(), 0);
        assert!(!queue.is_busy(&a));
    }
}
