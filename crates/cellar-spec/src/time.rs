//! The wall clock in the unit every event time, expiry and deadline of Cellar is counted in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by the wall clock (not monotonic: the values are compared
/// across processes and with event times). A clock set before 1970 reads 0.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_in_milliseconds() {
        // After 2020-01-01 in ms, and before the same instant counted in microseconds.
        let now = now_ms();
        assert!(
            now > 1_577_836_800_000 && now < 1_577_836_800_000_000,
            "{now}"
        );
    }
}
