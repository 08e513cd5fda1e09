//! `trim`: a paginated Scan of one group's items (by the `<group>#` prefix of their partition
//! keys) removing what is past the group's retention.
//!
//! The Scan reads the whole table, filtered on the server: trimming is a periodic background
//! job, and TTL already removes most expired records on AWS.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::{StreamExt, TryStreamExt};

use cellar_spec::{FeatureGroup, GroupKind};
use cellar_store::Result;

use crate::keys::{self, ATTRIBUTE_SK, EVENT_TIME, PK, SK};
use crate::requests::CONCURRENCY;
use crate::DynamoStore;

type Item = HashMap<String, AttributeValue>;

/// One Scan filter: the expression with its names and values.
struct Filter {
    expression: &'static str,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    projection: String,
}

impl DynamoStore {
    pub(crate) async fn trim_group(&self, group: &FeatureGroup, now: i64) -> Result<u64> {
        let cutoff = keys::age_cutoff(group, now);
        match group.kind {
            GroupKind::Attribute => match cutoff {
                Some(cutoff) => self.trim_attributes(group, cutoff).await,
                None => Ok(0),
            },
            GroupKind::Timeseries => {
                let max_records = group.retention.max_records.map(|m| m as usize);
                if cutoff.is_none() && max_records.is_none() {
                    return Ok(0);
                }
                self.trim_timeseries(group, cutoff, max_records).await
            }
        }
    }

    /// Deletes attribute records older than `cutoff`, each on condition that it still is: a
    /// put may have replaced it with a newer record since the scan saw it.
    async fn trim_attributes(&self, group: &FeatureGroup, cutoff: i64) -> Result<u64> {
        let filter = Filter {
            expression: "begins_with(#pk, :prefix) AND #sk = :attribute AND #t < :cutoff",
            names: keys::names(&[PK, SK, EVENT_TIME]),
            values: HashMap::from([
                (
                    ":prefix".to_owned(),
                    AttributeValue::S(keys::group_prefix(&group.storage_name())),
                ),
                (
                    ":attribute".to_owned(),
                    AttributeValue::N(ATTRIBUTE_SK.to_owned()),
                ),
                (":cutoff".to_owned(), keys::number(cutoff)),
            ]),
            projection: keys::projection(&[PK]),
        };
        let mut removed = 0;
        let mut start = None;
        loop {
            let (items, next) = self.scan_page(&filter, start).await?;
            let pks: Vec<String> = items
                .iter()
                .filter_map(|item| keys::string_of(item, PK).map(str::to_owned))
                .collect();
            let deleted: Vec<bool> = futures::stream::iter(pks)
                .map(|pk| async move { self.delete_expired_attribute(&pk, cutoff).await })
                .buffer_unordered(CONCURRENCY)
                .try_collect()
                .await?;
            removed += deleted.into_iter().filter(|d| *d).count() as u64;
            start = next;
            if start.is_none() {
                return Ok(removed);
            }
        }
    }

    /// Whether the attribute record was deleted (it was still older than `cutoff`).
    async fn delete_expired_attribute(&self, pk: &str, cutoff: i64) -> Result<bool> {
        let answer = self
            .throttled(|| {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .set_key(Some(keys::attribute_key(pk)))
                    .condition_expression("#t < :cutoff")
                    .expression_attribute_names("#t", EVENT_TIME)
                    .expression_attribute_values(":cutoff", keys::number(cutoff))
                    .send()
            })
            .await;
        match answer {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(self.backend_error("DeleteItem", e)),
        }
    }

    /// Deletes time-series records older than `cutoff` as the scan finds them, counting the
    /// others per entity; then trims the entities over `max_records`.
    async fn trim_timeseries(
        &self,
        group: &FeatureGroup,
        cutoff: Option<i64>,
        max_records: Option<usize>,
    ) -> Result<u64> {
        let filter = Filter {
            expression: "begins_with(#pk, :prefix) AND #sk >= :min",
            names: keys::names(&[PK, SK]),
            values: HashMap::from([
                (
                    ":prefix".to_owned(),
                    AttributeValue::S(keys::group_prefix(&group.storage_name())),
                ),
                (":min".to_owned(), keys::number(i64::MIN)),
            ]),
            projection: keys::projection(&[PK, SK]),
        };
        let mut removed = 0;
        let mut kept: HashMap<String, usize> = HashMap::new();
        let mut start = None;
        loop {
            let (items, next) = self.scan_page(&filter, start).await?;
            let mut expired = Vec::new();
            for item in items {
                let Some(event_time) =
                    keys::number_of(&item, SK).and_then(|n| n.parse::<i64>().ok())
                else {
                    continue;
                };
                if cutoff.is_some_and(|c| event_time < c) {
                    expired.push(item);
                } else if let Some(pk) = keys::string_of(&item, PK) {
                    *kept.entry(pk.to_owned()).or_default() += 1;
                }
            }
            removed += expired.len() as u64;
            self.delete_keys(expired).await?;
            start = next;
            if start.is_none() {
                break;
            }
        }
        let Some(max) = max_records else {
            return Ok(removed);
        };
        let oldest = cutoff.unwrap_or(i64::MIN);
        let over: Vec<String> = kept
            .into_iter()
            .filter(|(_, count)| *count > max)
            .map(|(pk, _)| pk)
            .collect();
        let trimmed: Vec<u64> = futures::stream::iter(over)
            .map(|pk| async move { self.trim_series(&pk, oldest, max).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(removed + trimmed.into_iter().sum::<u64>())
    }

    /// One page of a strongly consistent Scan, and where the next starts.
    async fn scan_page(
        &self,
        filter: &Filter,
        start: Option<Item>,
    ) -> Result<(Vec<Item>, Option<Item>)> {
        let answer = self
            .throttled(|| {
                self.client
                    .scan()
                    .table_name(&self.table)
                    .filter_expression(filter.expression)
                    .set_expression_attribute_names(Some(filter.names.clone()))
                    .set_expression_attribute_values(Some(filter.values.clone()))
                    .projection_expression(&filter.projection)
                    .consistent_read(true)
                    .set_exclusive_start_key(start.clone())
                    .send()
            })
            .await
            .map_err(|e| self.backend_error("Scan", e))?;
        Ok((answer.items.unwrap_or_default(), answer.last_evaluated_key))
    }
}
