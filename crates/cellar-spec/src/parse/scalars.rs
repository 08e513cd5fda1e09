//! Names and scalar values as written in specs: names, topics, durations, factors, cron
//! schedules.

use std::time::Duration;

use super::{MAX_JITTER, MAX_NAME_LEN};
use crate::limits::MAX_DURATION;

/// Why a name is not a valid spec, feature or key field name.
pub(super) fn name_problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        Some(format!(
            "`{name}` is not a valid name: use lowercase letters, digits and `_`, starting with a letter"
        ))
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "name is {} characters long; the limit is {MAX_NAME_LEN}",
            name.len()
        ))
    } else {
        None
    }
}

/// The longest topic name Kafka accepts, in bytes.
pub const MAX_TOPIC_LEN: usize = 249;

/// What is wrong with `topic` under Kafka's topic name rules (1 to [`MAX_TOPIC_LEN`] of
/// `[a-zA-Z0-9._-]`), if anything. Specs and the embedded log both follow them, so a
/// deployment can move from the embedded log to Kafka with the same topics.
pub fn topic_problem(topic: &str) -> Option<String> {
    let ok = !topic.is_empty()
        && topic.len() <= MAX_TOPIC_LEN
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    (!ok).then(|| {
        format!(
            "`{topic}` is not a valid topic name: use 1 to {MAX_TOPIC_LEN} of a-z, A-Z, 0-9, \
             `.`, `_`, `-`"
        )
    })
}

/// Parses `500ms`, `30s`, `10m`, `1h` or `30d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("`{text}` is not a duration: expected a whole number and a unit, as in 500ms, 30s, 10m, 1h or 30d")
    };
    let text_trimmed = text.trim();
    let digits = text_trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text_trimmed.len());
    let (number, unit) = text_trimmed.split_at(digits);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let too_long = || {
        format!(
            "duration `{text}` is over the limit of {}",
            format_duration(MAX_DURATION)
        )
    };
    let duration = number
        .checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(too_long)?;
    // Windows and ages are subtracted from event times: past this they could overflow.
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

/// Writes a duration in the largest unit that divides it, the way specs write them.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms.checked_rem(size) == Some(0) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Parses a TTL jitter written as `10%` or `0.1`.
/// Largest `serving.admit_after`: past it, a tier would hardly ever cache anything.
pub const MAX_ADMIT_AFTER: u32 = 1000;

/// Largest `serving.early_refresh`: past it, entries would refresh almost as soon as cached.
pub const MAX_EARLY_REFRESH: f64 = 100.0;

/// XFetch's beta: a non-negative number, at most [`MAX_EARLY_REFRESH`].
pub fn parse_early_refresh(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(beta) if (0.0..=MAX_EARLY_REFRESH).contains(&beta) => Ok(beta),
        _ => Err(format!(
            "`{text}` is not an early refresh factor: expected a number from 0 (never) to \
             {MAX_EARLY_REFRESH}, 1 being the usual"
        )),
    }
}

pub fn parse_jitter(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let value = match t.strip_suffix('%') {
        Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| {
        format!("`{text}` is not a jitter: expected a percentage (10%) or a fraction (0.1)")
    })?;
    if !(0.0..=MAX_JITTER).contains(&value) {
        return Err(format!("jitter `{text}` is outside 0% to 50%"));
    }
    Ok(value)
}

/// Checks the shape of a cron expression: 5 fields (minute to weekday) or 6 (with seconds).
pub(super) fn check_cron(text: &str) -> Result<(), String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "schedule `{text}` has {} fields; a cron expression has 5 (minute hour day month weekday) or 6 (with seconds first)",
            fields.len()
        ));
    }
    if let Some(field) = fields.iter().find(|f| {
        !f.chars()
            .all(|c| c.is_ascii_alphanumeric() || "*/,-?#".contains(c))
    }) {
        return Err(format!("schedule field `{field}` is not a cron field"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_one_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in [
            "",
            "10",
            "1.5h",
            "-1s",
            "1 h",
            "1w",
            "h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        for too_long in ["36501d", "200000000000d", "18446744073709551615ms"] {
            assert_eq!(
                parse_duration(too_long),
                Err(format!("duration `{too_long}` is over the limit of 36500d"))
            );
        }
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn jitter_is_a_percentage_or_a_fraction_up_to_half() {
        assert_eq!(parse_jitter("10%"), Ok(0.1));
        assert_eq!(parse_jitter("0.25"), Ok(0.25));
        assert_eq!(parse_jitter("0"), Ok(0.0));
        assert_eq!(parse_jitter("50%"), Ok(0.5));
        assert!(parse_jitter("51%")
            .unwrap_err()
            .contains("outside 0% to 50%"));
        assert!(parse_jitter("-0.1").is_err());
        assert!(parse_jitter("ten").is_err());
    }

    #[test]
    fn names_are_lowercase_identifiers_of_at_most_64() {
        assert_eq!(name_problem("user_id2"), None);
        assert!(name_problem("User").is_some());
        assert!(name_problem("2users").is_some());
        assert!(name_problem("user-id").is_some());
        assert!(name_problem("").is_some());
        assert_eq!(name_problem(&"a".repeat(64)), None);
        assert!(name_problem(&"a".repeat(65))
            .unwrap()
            .contains("limit is 64"));
    }

    #[test]
    fn topics_follow_kafkas_rules() {
        let longest = "t".repeat(MAX_TOPIC_LEN);
        for good in ["user-actions", "a.b_c-D9", longest.as_str()] {
            assert_eq!(topic_problem(good), None, "{good}");
        }
        let too_long = "t".repeat(MAX_TOPIC_LEN + 1);
        for bad in ["", "user actions", "naïve", "a/b", too_long.as_str()] {
            assert!(topic_problem(bad).is_some(), "{bad}");
        }
        assert_eq!(
            topic_problem("a b").unwrap(),
            "`a b` is not a valid topic name: use 1 to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`"
        );
    }

    #[test]
    fn cron_schedules_have_five_or_six_fields() {
        assert!(check_cron("0 3 * * *").is_ok());
        assert!(check_cron("0 0 3 * * MON-FRI").is_ok());
        assert!(check_cron("0 3 * *").is_err());
        assert!(check_cron("@daily").is_err());
        assert!(check_cron("0 3 * * * ; rm").is_err());
    }
}
