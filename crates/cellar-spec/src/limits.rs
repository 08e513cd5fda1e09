//! Limits on what enters Cellar from outside (requests, stream events, batch rows), chosen so
//! that every store backend can hold what passes them and no arithmetic on it overflows. They
//! are checked where input enters, so one bad value is refused alone with a message naming the
//! limit, instead of failing a store write that it shares with good ones.

use std::time::Duration;

use crate::parse::format_duration;
use crate::value::format_timestamp;

/// Longest entity key, in bytes of its canonical form (a composite key's fields and
/// separators included). DynamoDB holds partition keys (`<group>#<entity>`, group names being
/// at most 64 bytes) up to 2048 bytes, the embedded engine keys up to 64 KiB, Redis any: every
/// backend holds a key of this length.
pub const MAX_ENTITY_KEY_BYTES: usize = 1024;

/// Longest duration a spec or request may give (windows, slides, TTLs, retention ages):
/// 36500 days, about 100 years. Counted in milliseconds it is far from `i64`'s limits, so an
/// event time plus or minus a duration never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// The default earliest accepted event time: 2000-01-01T00:00:00Z.
pub const DEFAULT_EARLIEST_EVENT_TIME_MS: i64 = 946_684_800_000;

/// How far ahead of the clock an event time may be by default: clocks of producers drift, but
/// not by days.
pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(86_400);

/// The earliest configurable bound: 0001-01-01T00:00:00Z, the first instant RFC 3339 can write.
const EARLIEST_CONFIGURABLE_MS: i64 = -62_135_596_800_000;

/// The event times accepted from pushes, stream events and batch rows: from a fixed earliest
/// instant to a margin ahead of the clock. An event time outside is a mistake (seconds sent as
/// milliseconds, a placeholder such as `i64::MAX`); stored, it would freeze its entity (every
/// later write is older) or overflow window arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeBounds {
    earliest_ms: i64,
    max_future_ms: i64,
}

impl Default for EventTimeBounds {
    fn default() -> Self {
        EventTimeBounds {
            earliest_ms: DEFAULT_EARLIEST_EVENT_TIME_MS,
            max_future_ms: DEFAULT_MAX_FUTURE.as_millis() as i64,
        }
    }
}

impl EventTimeBounds {
    /// Event times from `earliest_ms` (epoch milliseconds) to `max_future` ahead of the
    /// clock. `earliest_ms` must be from year 1 to now, and `max_future` at most
    /// [`MAX_DURATION`], so that neither end nears the integer limits.
    pub fn new(earliest_ms: i64, max_future: Duration) -> Result<EventTimeBounds, String> {
        let now = crate::time::now_ms();
        if !(EARLIEST_CONFIGURABLE_MS..=now).contains(&earliest_ms) {
            return Err(format!(
                "the earliest event time {} must be from 0001-01-01T00:00:00Z to now",
                format_timestamp(earliest_ms)
            ));
        }
        if max_future > MAX_DURATION {
            return Err(format!(
                "the future margin {} is over the limit of {}",
                format_duration(max_future),
                format_duration(MAX_DURATION)
            ));
        }
        Ok(EventTimeBounds {
            earliest_ms,
            max_future_ms: max_future.as_millis() as i64,
        })
    }

    /// The earliest event time accepted, epoch milliseconds.
    pub fn earliest_ms(&self) -> i64 {
        self.earliest_ms
    }

    /// How far ahead of the clock an event time may be.
    pub fn max_future(&self) -> Duration {
        Duration::from_millis(self.max_future_ms as u64)
    }

    /// Fails unless `event_time_ms` is within the bounds when the clock reads `now_ms`.
    pub fn check(&self, event_time_ms: i64, now_ms: i64) -> Result<(), EventTimeError> {
        let latest_ms = now_ms.saturating_add(self.max_future_ms);
        if (self.earliest_ms..=latest_ms).contains(&event_time_ms) {
            return Ok(());
        }
        Err(EventTimeError {
            event_time_ms,
            earliest_ms: self.earliest_ms,
            max_future: self.max_future(),
            latest_ms,
        })
    }
}

/// An event time outside the accepted [`EventTimeBounds`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} is outside the accepted event times, from {} to {} after now ({}); \
     `[event_time]` in the config sets them",
    format_timestamp(*event_time_ms),
    format_timestamp(*earliest_ms),
    format_duration(*max_future),
    format_timestamp(*latest_ms)
)]
pub struct EventTimeError {
    pub event_time_ms: i64,
    pub earliest_ms: i64,
    pub max_future: Duration,
    /// The latest event time accepted when it was checked.
    pub latest_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_000_000_000;

    #[test]
    fn event_times_are_accepted_from_the_earliest_to_a_margin_past_now() {
        let b = EventTimeBounds::default();
        assert!(b.check(DEFAULT_EARLIEST_EVENT_TIME_MS, NOW).is_ok());
        assert!(b.check(NOW, NOW).is_ok());
        assert!(b.check(NOW + 86_400_000, NOW).is_ok());
        for bad in [
            i64::MIN,
            -1,
            0,
            DEFAULT_EARLIEST_EVENT_TIME_MS - 1,
            NOW + 86_400_001,
            i64::MAX,
        ] {
            assert!(b.check(bad, NOW).is_err(), "{bad}");
        }
        let err = b.check(i64::MAX, NOW).unwrap_err().to_string();
        assert!(
            err.starts_with("9223372036854775807 is outside the accepted event times, from 2000-01-01T00:00:00Z to 1d after now"),
            "{err}"
        );
        let err = b.check(0, NOW).unwrap_err().to_string();
        assert!(err.starts_with("1970-01-01T00:00:00Z is outside"), "{err}");
    }

    #[test]
    fn configured_bounds_stay_far_from_the_integer_limits() {
        let b = EventTimeBounds::new(0, Duration::from_secs(3600)).unwrap();
        assert!(b.check(0, NOW).is_ok());
        assert!(b.check(NOW + 3_600_001, NOW).is_err());
        assert!(EventTimeBounds::new(i64::MIN, DEFAULT_MAX_FUTURE).is_err());
        assert!(EventTimeBounds::new(i64::MAX, DEFAULT_MAX_FUTURE).is_err());
        assert!(EventTimeBounds::new(0, MAX_DURATION).is_ok());
        let err = EventTimeBounds::new(0, MAX_DURATION + Duration::from_millis(1)).unwrap_err();
        assert!(err.contains("over the limit of 36500d"), "{err}");
    }
}
