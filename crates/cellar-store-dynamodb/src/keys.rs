//! The key model and item layout (see the crate docs for the reasons behind them): partition
//! keys, sort keys, the attributes of an item, and turning items back into records.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use cellar_spec::{EntityKey, FeatureGroup};
use cellar_store::{codec, Record, Result, StoreError};

/// Partition key: `<group>#<entity>`.
pub(crate) const PK: &str = "pk";
/// Sort key: the event time of a time-series record, [`ATTRIBUTE_SK`] for an attribute record.
pub(crate) const SK: &str = "sk";
/// The event time, so that conditions compare it without decoding the record.
pub(crate) const EVENT_TIME: &str = "t";
/// The record in the codec's bytes.
pub(crate) const VALUE: &str = "v";
/// A random token every write replaces, compared by an update's conditional write.
pub(crate) const VERSION: &str = "ver";
/// When DynamoDB's TTL may delete the item, in epoch seconds (groups with a `max_age` only).
pub(crate) const TTL: &str = "ttl";

/// Ends the group in a partition key; refused in group names.
pub(crate) const GROUP_SEPARATOR: char = '#';
/// The sort key of attribute records: one below `i64::MIN`, so no event time can take it and a
/// series query (whose lower bound is at least `i64::MIN`) never reaches it.
pub(crate) const ATTRIBUTE_SK: &str = "-9223372036854775809";
/// DynamoDB's limit on a partition key value.
const MAX_PK_BYTES: usize = 2048;
/// DynamoDB's limit on an item, attribute names and values together.
const MAX_ITEM_BYTES: usize = 400 * 1024;
/// Bytes of an item besides its partition key and record: attribute names, three numbers.
const ITEM_OVERHEAD: usize = 128;

/// Refuses group names that would make the `<group>#` prefix ambiguous.
pub(crate) fn check_group_name(group: &FeatureGroup) -> Result<()> {
    if group.name.contains(GROUP_SEPARATOR) {
        return Err(StoreError::InvalidInput {
            group: group.name.escape_debug().to_string(),
            entity: String::new(),
            reason: format!("group names may not contain `{GROUP_SEPARATOR}`, which ends the group in DynamoDB partition keys"),
        });
    }
    Ok(())
}

/// The prefix of every partition key of a group.
pub(crate) fn group_prefix(group: &str) -> String {
    format!("{group}{GROUP_SEPARATOR}")
}

/// The partition key of an entity, `None` when it is too long for DynamoDB (such an entity can
/// hold no records: reads miss, writes are refused).
pub(crate) fn partition_key(group: &str, entity: &EntityKey) -> Option<String> {
    let len = group.len() + 1 + entity.0.len();
    (len <= MAX_PK_BYTES).then(|| format!("{group}{GROUP_SEPARATOR}{}", entity.0))
}

/// The partition key of an entity about to be written, or why it cannot be.
pub(crate) fn writable_partition_key(group: &FeatureGroup, entity: &EntityKey) -> Result<String> {
    partition_key(&group.storage_name(), entity).ok_or_else(|| StoreError::InvalidInput {
        group: group.name.clone(),
        entity: entity.as_str().escape_debug().to_string(),
        reason: format!(
            "the partition key `<group>{GROUP_SEPARATOR}<entity>` would be over DynamoDB's {MAX_PK_BYTES} bytes"
        ),
    })
}

/// A record checked against its group's size limit and DynamoDB's item limit, and encoded.
pub(crate) fn encode_record(
    group: &FeatureGroup,
    entity: &EntityKey,
    pk: &str,
    record: &Record,
) -> Result<Vec<u8>> {
    cellar_store::check_size(group, entity, record)?;
    let invalid = |reason: String| StoreError::InvalidInput {
        group: group.name.clone(),
        entity: entity.as_str().escape_debug().to_string(),
        reason,
    };
    let bytes = codec::encode(record).map_err(|e| invalid(e.to_string()))?;
    let item_len = pk.len() + bytes.len() + ITEM_OVERHEAD;
    if item_len > MAX_ITEM_BYTES {
        return Err(invalid(format!(
            "the item would be about {item_len} bytes, over DynamoDB's {MAX_ITEM_BYTES}-byte item limit"
        )));
    }
    Ok(bytes)
}

/// `#name` for each attribute, to stand in expressions for names DynamoDB may reserve
/// (`ttl` is one).
pub(crate) fn names(attributes: &[&str]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|a| (format!("#{a}"), (*a).to_owned()))
        .collect()
}

/// A projection of the given attributes, named as [`names`] does.
pub(crate) fn projection(attributes: &[&str]) -> String {
    attributes
        .iter()
        .map(|a| format!("#{a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn number(n: impl ToString) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// The key of an attribute record.
pub(crate) fn attribute_key(pk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(pk.to_owned())),
        (SK.to_owned(), AttributeValue::N(ATTRIBUTE_SK.to_owned())),
    ])
}

/// The key of a time-series record.
pub(crate) fn series_key(pk: &str, event_time: i64) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(pk.to_owned())),
        (SK.to_owned(), number(event_time)),
    ])
}

/// A fresh write token for [`VERSION`].
pub(crate) fn new_version() -> AttributeValue {
    number(rand::random::<u64>() >> 1)
}

/// The whole item of a record under `key`, with a fresh version and, for groups with a
/// `max_age`, the time DynamoDB's TTL may delete it.
pub(crate) fn item(
    group: &FeatureGroup,
    mut key: HashMap<String, AttributeValue>,
    event_time: i64,
    bytes: Vec<u8>,
) -> HashMap<String, AttributeValue> {
    key.insert(EVENT_TIME.to_owned(), number(event_time));
    key.insert(VALUE.to_owned(), AttributeValue::B(Blob::new(bytes)));
    key.insert(VERSION.to_owned(), new_version());
    if let Some(expiry) = expiry_seconds(group.retention.max_age, event_time) {
        key.insert(TTL.to_owned(), number(expiry));
    }
    key
}

/// The first whole second at which a record of `event_time` is past `max_age`.
fn expiry_seconds(max_age: Option<Duration>, event_time: i64) -> Option<i64> {
    let age_ms = i64::try_from(max_age?.as_millis()).unwrap_or(i64::MAX);
    let expires_ms = event_time.saturating_add(age_ms);
    let seconds = expires_ms.div_euclid(1000);
    Some(if expires_ms.rem_euclid(1000) > 0 {
        seconds.saturating_add(1)
    } else {
        seconds
    })
}

/// The oldest event time kept at `now`: records strictly older are past retention.
pub(crate) fn age_cutoff(group: &FeatureGroup, now: i64) -> Option<i64> {
    group.retention.max_age.map(|age| {
        let age_ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(age_ms)
    })
}

/// A string attribute of an item.
pub(crate) fn string_of<'a>(
    item: &'a HashMap<String, AttributeValue>,
    name: &str,
) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(s)) => Some(s),
        _ => None,
    }
}

/// A number attribute of an item, as DynamoDB returned it.
pub(crate) fn number_of<'a>(
    item: &'a HashMap<String, AttributeValue>,
    name: &str,
) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::N(n)) => Some(n),
        _ => None,
    }
}

/// The record an item holds.
pub(crate) fn decode_item(group: &str, item: &HashMap<String, AttributeValue>) -> Result<Record> {
    let corrupt = |reason: String| StoreError::Corrupt {
        group: group.to_owned(),
        reason: format!(
            "item `{}`: {reason}",
            string_of(item, PK).unwrap_or("?").escape_debug()
        ),
    };
    match item.get(VALUE) {
        Some(AttributeValue::B(blob)) => {
            codec::decode(blob.as_ref()).map_err(|e| corrupt(e.to_string()))
        }
        Some(_) => Err(corrupt(format!("attribute `{VALUE}` is not binary"))),
        None => Err(corrupt(format!("no attribute `{VALUE}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rounds_up_to_whole_seconds() {
        let hour = Some(Duration::from_secs(3600));
        assert_eq!(expiry_seconds(hour, 1_000), Some(3_601));
        assert_eq!(expiry_seconds(hour, 1_001), Some(3_602));
        assert_eq!(expiry_seconds(hour, -1_500), Some(3_599));
        assert_eq!(expiry_seconds(None, 1_000), None);
        assert_eq!(expiry_seconds(hour, i64::MAX), Some(i64::MAX / 1000 + 1));
    }

    #[test]
    fn the_attribute_sort_key_is_below_every_event_time() {
        let marker: i128 = ATTRIBUTE_SK.parse().unwrap();
        assert_eq!(marker, i128::from(i64::MIN) - 1);
    }

    #[test]
    fn overlong_partition_keys_are_refused() {
        let long = EntityKey("x".repeat(MAX_PK_BYTES));
        assert_eq!(partition_key("g", &long), None);
        let fits = EntityKey("x".repeat(MAX_PK_BYTES - 2));
        assert_eq!(
            partition_key("g", &fits).map(|pk| pk.len()),
            Some(MAX_PK_BYTES)
        );
    }
}
