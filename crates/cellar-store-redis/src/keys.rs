//! The key model and value layout (see the crate docs for the reasons behind them): keys,
//! attribute values and series members, scores, glob patterns and expiry times.

use std::time::Duration;

use cellar_spec::{EntityKey, FeatureGroup};
use cellar_store::{codec, Record, Result, StoreError};

/// Ends the group in a key; refused in group names.
pub(crate) const GROUP_SEPARATOR: u8 = b'#';
/// Marks attribute keys, after the key prefix.
const ATTRIBUTE_KIND: &[u8] = b"a:";
/// Marks time-series keys, after the key prefix.
const SERIES_KIND: &[u8] = b"s:";

/// The first byte of every attribute value: the layout version.
pub(crate) const VALUE_FORMAT: u8 = 1;
/// Bytes of an ordered event time.
pub(crate) const TIME_LEN: usize = 8;
/// Bytes of an attribute value before the record: format, event time, write token.
pub(crate) const HEADER_LEN: usize = 1 + TIME_LEN + 8;

/// How long a record past its group's `max_age` stays in Redis at least before Redis expires
/// it by itself: readers can tell "expired" from "not found" until `trim` removes it, and an
/// entity nobody writes any more still leaves memory where no process trims.
pub(crate) const EXPIRED_GRACE: Duration = Duration::from_secs(3600);
/// The furthest expiry given to Redis (about 34 years), far below what overflows its clock.
pub(crate) const MAX_TTL_MS: i64 = 1 << 40;

/// Refuses group names that would make the `<group>#` prefix ambiguous. Spec names are
/// identifiers, so only a caller building groups by hand can hit this.
pub(crate) fn check_group_name(group: &FeatureGroup) -> Result<()> {
    if group.name.as_bytes().contains(&GROUP_SEPARATOR) {
        return Err(StoreError::InvalidInput {
            group: group.name.escape_debug().to_string(),
            entity: String::new(),
            reason: "group names may not contain `#`, which ends the group in Redis keys"
                .to_owned(),
        });
    }
    Ok(())
}

/// Builds the keys of one store: its prefix is fixed at connect time.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: Vec<u8>,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.as_bytes().to_vec(),
        }
    }

    pub(crate) fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    fn key(&self, kind: &[u8], group: &str, entity: &EntityKey) -> Vec<u8> {
        let mut key =
            Vec::with_capacity(self.prefix.len() + kind.len() + group.len() + 1 + entity.0.len());
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(kind);
        key.extend_from_slice(group.as_bytes());
        key.push(GROUP_SEPARATOR);
        key.extend_from_slice(entity.as_bytes());
        key
    }

    /// `<prefix>a:<group>#<entity>`: a string holding the entity's attribute record.
    pub(crate) fn attribute(&self, group: &str, entity: &EntityKey) -> Vec<u8> {
        self.key(ATTRIBUTE_KIND, group, entity)
    }

    /// `<prefix>s:<group>#<entity>`: a sorted set holding the entity's time series.
    pub(crate) fn series(&self, group: &str, entity: &EntityKey) -> Vec<u8> {
        self.key(SERIES_KIND, group, entity)
    }

    /// A SCAN pattern matching every attribute key of `group` and nothing else.
    pub(crate) fn attribute_pattern(&self, group: &str) -> Vec<u8> {
        self.group_pattern(ATTRIBUTE_KIND, group)
    }

    /// A SCAN pattern matching every time-series key of `group` and nothing else.
    pub(crate) fn series_pattern(&self, group: &str) -> Vec<u8> {
        self.group_pattern(SERIES_KIND, group)
    }

    fn group_pattern(&self, kind: &[u8], group: &str) -> Vec<u8> {
        let mut pattern = glob_escaped(&self.prefix);
        pattern.extend_from_slice(&glob_escaped(kind));
        pattern.extend_from_slice(&glob_escaped(group.as_bytes()));
        pattern.push(GROUP_SEPARATOR);
        pattern.push(b'*');
        pattern
    }

    /// A SCAN pattern matching every key under the prefix.
    pub(crate) fn all_pattern(&self) -> Vec<u8> {
        let mut pattern = glob_escaped(&self.prefix);
        pattern.push(b'*');
        pattern
    }
}

/// `bytes` with Redis's glob metacharacters escaped, to match themselves in a pattern.
fn glob_escaped(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\' | b'^' | b'-') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// An event time as bytes whose byte order is numeric order (the sign bit flipped, big
/// endian), so Lua compares event times byte by byte and Redis sorts series members of equal
/// scores by event time.
pub(crate) fn ordered(t: i64) -> [u8; TIME_LEN] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

pub(crate) fn from_ordered(b: [u8; TIME_LEN]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// A sorted-set score for an event time. Scores are doubles, exact up to 2^53 ms (year
/// 287,396); beyond that, members of equal scores still sort by their ordered event time.
pub(crate) fn score(t: i64) -> String {
    (t as f64).to_string()
}

/// A record checked against its group's size limit and encoded, the encoding after `header`.
fn encode_after(
    group: &FeatureGroup,
    entity: &EntityKey,
    record: &Record,
    header: &[u8],
) -> Result<Vec<u8>> {
    cellar_store::check_size(group, entity, record)?;
    let mut buf = Vec::with_capacity(header.len() + codec::encoded_len(record));
    buf.extend_from_slice(header);
    codec::encode_into(record, &mut buf).map_err(|e| StoreError::InvalidInput {
        group: group.name.clone(),
        entity: entity.as_str().escape_debug().to_string(),
        reason: e.to_string(),
    })?;
    Ok(buf)
}

/// An attribute value: format, ordered event time, a fresh random write token (what an
/// update's compare-and-set compares), then the record in the codec's bytes.
pub(crate) fn attribute_value(
    group: &FeatureGroup,
    entity: &EntityKey,
    record: &Record,
) -> Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    header[0] = VALUE_FORMAT;
    header[1..1 + TIME_LEN].copy_from_slice(&ordered(record.event_time));
    header[1 + TIME_LEN..].copy_from_slice(&rand::random::<u64>().to_be_bytes());
    encode_after(group, entity, record, &header)
}

/// A series member: ordered event time, then the record in the codec's bytes.
pub(crate) fn series_member(
    group: &FeatureGroup,
    entity: &EntityKey,
    record: &Record,
) -> Result<Vec<u8>> {
    encode_after(group, entity, record, &ordered(record.event_time))
}

/// Whether a stored attribute value has this crate's header (anything else in the key is
/// replaced by a put, as the embedded store replaces an undecodable record).
pub(crate) fn has_header(value: &[u8]) -> bool {
    value.len() >= HEADER_LEN && value[0] == VALUE_FORMAT
}

fn corrupt(group: &str, key: &[u8], reason: String) -> StoreError {
    StoreError::Corrupt {
        group: group.to_owned(),
        reason: format!(
            "key `{}`: {reason}",
            String::from_utf8_lossy(key).escape_debug()
        ),
    }
}

/// The record of a stored attribute value.
pub(crate) fn decode_attribute(group: &str, key: &[u8], value: &[u8]) -> Result<Record> {
    if !has_header(value) {
        return Err(corrupt(
            group,
            key,
            "not an attribute value of this store".to_owned(),
        ));
    }
    codec::decode(&value[HEADER_LEN..]).map_err(|e| corrupt(group, key, e.to_string()))
}

/// The record of a series member, `None` if it is older than `oldest` (a score rounds event
/// times past 2^53 ms, so the range query may return a few just below it).
pub(crate) fn decode_member(
    group: &str,
    key: &[u8],
    member: &[u8],
    oldest: i64,
) -> Result<Option<Record>> {
    let Some((time, record)) = member.split_first_chunk::<TIME_LEN>() else {
        return Err(corrupt(group, key, "a series member too short".to_owned()));
    };
    if from_ordered(*time) < oldest {
        return Ok(None);
    }
    codec::decode(record)
        .map(Some)
        .map_err(|e| corrupt(group, key, e.to_string()))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The oldest event time kept at `now`: records strictly older are past retention.
pub(crate) fn age_cutoff(group: &FeatureGroup, now: i64) -> Option<i64> {
    group
        .retention
        .max_age
        .map(|age| now.saturating_sub(millis(age)))
}

/// When Redis may expire an attribute record of `event_time` written at `now` (ms since the
/// epoch), `None` for groups without a `max_age`: [`EXPIRED_GRACE`] after it is past its
/// `max_age`, or after `now` for a record written already past it.
pub(crate) fn attribute_expiry(group: &FeatureGroup, event_time: i64, now: i64) -> Option<i64> {
    let age = millis(group.retention.max_age?);
    let expires = event_time.saturating_add(age).max(now);
    Some(
        expires
            .saturating_add(millis(EXPIRED_GRACE))
            .min(now.saturating_add(MAX_TTL_MS)),
    )
}

/// The `max_age` of a group in milliseconds, as the series scripts take it (`""`: none).
pub(crate) fn max_age_arg(group: &FeatureGroup) -> String {
    group
        .retention
        .max_age
        .map(|age| millis(age).to_string())
        .unwrap_or_default()
}

/// The `max_records` of a group, as the series scripts take it (`""`: none).
pub(crate) fn max_records_arg(group: &FeatureGroup) -> String {
    group
        .retention
        .max_records
        .map(|m| m.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_store::conformance::{attribute_group, timeseries_group};

    fn key(e: &str) -> EntityKey {
        EntityKey(e.to_owned())
    }

    #[test]
    fn keys_keep_kinds_groups_and_entities_apart() {
        let keys = Keys::new("cellar:store:");
        assert_eq!(
            keys.attribute("profile", &key("u1")),
            b"cellar:store:a:profile#u1"
        );
        assert_eq!(
            keys.series("profile", &key("u1")),
            b"cellar:store:s:profile#u1"
        );
        // Entity `b#c` of group `a` is not group `a#b`'s (which is refused anyway).
        assert_ne!(
            keys.attribute("a", &key("b#c")),
            keys.attribute("ab", &key("#c"))
        );
        assert!(check_group_name(&attribute_group("a#b")).is_err());
        assert!(check_group_name(&attribute_group("profile_v2")).is_ok());
    }

    #[test]
    fn patterns_escape_glob_metacharacters() {
        let keys = Keys::new("t[1]*?:");
        assert_eq!(
            keys.attribute_pattern("clicks"),
            b"t\\[1\\]\\*\\?:a:clicks#*".to_vec()
        );
        assert_eq!(keys.series_pattern("g"), b"t\\[1\\]\\*\\?:s:g#*".to_vec());
        assert_eq!(keys.all_pattern(), b"t\\[1\\]\\*\\?:*".to_vec());
    }

    #[test]
    fn ordered_times_sort_as_numbers_and_round_trip() {
        let times = [i64::MIN, -1_000, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(ordered(pair[0]) < ordered(pair[1]));
        }
        for t in times {
            assert_eq!(from_ordered(ordered(t)), t);
        }
    }

    #[test]
    fn scores_are_plain_numbers_redis_parses() {
        assert_eq!(score(1_700_000_000_123), "1700000000123");
        assert_eq!(score(-5), "-5");
        // Shortest digits of the same double, as Redis's strtod reads them back.
        for t in [i64::MIN, i64::MAX, (1 << 60) + 3] {
            let s = score(t);
            assert!(!s.contains('e'), "{s}");
            assert_eq!(s.parse::<f64>().unwrap(), t as f64);
        }
    }

    #[test]
    fn values_and_members_round_trip_and_refuse_what_is_not_theirs() {
        let group = attribute_group("profile");
        let record = Record::new(42, vec![cellar_spec::Value::Int64(7)]);
        let value = attribute_value(&group, &key("u1"), &record).unwrap();
        assert!(has_header(&value));
        assert_eq!(value[1..9], ordered(42));
        assert_eq!(decode_attribute("profile", b"k", &value).unwrap(), record);
        let other = attribute_value(&group, &key("u1"), &record).unwrap();
        assert_ne!(value[9..17], other[9..17], "every write has its own token");
        assert!(matches!(
            decode_attribute("profile", b"k", b"junk"),
            Err(StoreError::Corrupt { .. })
        ));

        let member = series_member(&group, &key("u1"), &record).unwrap();
        assert_eq!(
            decode_member("profile", b"k", &member, 42).unwrap(),
            Some(record)
        );
        assert_eq!(decode_member("profile", b"k", &member, 43).unwrap(), None);
        assert!(decode_member("profile", b"k", b"short", 0).is_err());
    }

    #[test]
    fn oversized_records_are_refused_with_size_and_limit() {
        let mut group = attribute_group("profile");
        group.max_record_bytes = 10;
        let record = Record::new(1, vec![cellar_spec::Value::String("x".repeat(20))]);
        let err = attribute_value(&group, &key("u1"), &record).unwrap_err();
        assert!(
            matches!(err, StoreError::RecordTooLarge { limit: 10, .. }),
            "{err}"
        );
    }

    #[test]
    fn attribute_records_expire_a_grace_after_max_age() {
        let grace = millis(EXPIRED_GRACE);
        let mut group = attribute_group("profile");
        assert_eq!(attribute_expiry(&group, 1_000, 5_000), None);
        group.retention.max_age = Some(Duration::from_secs(10));
        // Fresh: max_age after its event time, then the grace.
        assert_eq!(attribute_expiry(&group, 1_000, 5_000), Some(11_000 + grace));
        // Written already past max_age: the grace from now.
        assert_eq!(
            attribute_expiry(&group, 1_000, 50_000),
            Some(50_000 + grace)
        );
        // Event times far in the future are capped.
        assert_eq!(attribute_expiry(&group, i64::MAX, 0), Some(MAX_TTL_MS));
    }

    #[test]
    fn retention_arguments_are_empty_when_unset() {
        let group = timeseries_group("clicks", Some(3), Some(Duration::from_secs(2)));
        assert_eq!(max_records_arg(&group), "3");
        assert_eq!(max_age_arg(&group), "2000");
        let group = timeseries_group("clicks", None, None);
        assert_eq!(max_records_arg(&group), "");
        assert_eq!(max_age_arg(&group), "");
        assert_eq!(age_cutoff(&group, 10), None);
    }
}
