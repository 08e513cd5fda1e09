//! Group generations: a counter per group kept in Redis, stamped on every cached value. Moving
//! a group to a new generation invalidates all its copies at once, on every node, for the
//! price of one key read with each `MGET`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// The generation of each group as this process last learned it from Redis (0 until then, and
/// for a group never moved on). Writes stamp it on their values: a stale one only makes the
/// value a miss, never a stale hit.
#[derive(Debug, Default)]
pub(super) struct Generations {
    by_group: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

impl Generations {
    pub(super) fn get(&self, group: &str) -> u64 {
        self.by_group
            .read()
            .ok()
            .and_then(|m| m.get(group).map(|g| g.load(Ordering::Acquire)))
            .unwrap_or(0)
    }

    pub(super) fn learn(&self, group: &str, generation: u64) {
        if let Ok(m) = self.by_group.read() {
            if let Some(g) = m.get(group) {
                g.store(generation, Ordering::Release);
                return;
            }
        }
        if let Ok(mut m) = self.by_group.write() {
            m.entry(group.to_owned())
                .or_default()
                .store(generation, Ordering::Release);
        }
    }
}

/// A generation as Redis holds it: decimal digits; no key is generation 0.
pub(super) fn parse(value: Option<&[u8]>) -> Option<u64> {
    match value {
        None => Some(0),
        Some(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_parse_and_are_learned() {
        assert_eq!(parse(None), Some(0));
        assert_eq!(
            parse(Some(b"1712345678901234")),
            Some(1_712_345_678_901_234)
        );
        assert_eq!(parse(Some(b"x")), None);
        let g = Generations::default();
        assert_eq!(g.get("a"), 0);
        g.learn("a", 7);
        g.learn("a", 5);
        assert_eq!(g.get("a"), 5, "the latest answer, not the largest");
        assert_eq!(g.get("b"), 0);
    }
}
