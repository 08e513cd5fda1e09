//! Read-modify-write of attribute records with optimistic concurrency.
//!
//! The entities are read concurrently (consistent GetItems), then the updater answers for each
//! in the order of the call, then the new records are written concurrently, each by a PutItem
//! conditioned on the version read (or on the item still being absent). A concurrent write
//! fails the condition; that entity is then read again and the updater called again for it,
//! so no write is lost, without a lock. Every answer is checked before anything is written, so
//! an answer the store refuses (too large) fails the call untouched; only a conflict retry
//! that then gets a refused answer fails after other entities were written.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use futures::{StreamExt, TryStreamExt};

use cellar_spec::{EntityKey, FeatureGroup, GroupKind};
use cellar_store::{Record, Result, StoreError, Updater};

use crate::keys::{self, PK, VALUE, VERSION};
use crate::requests::CONCURRENCY;
use crate::DynamoStore;

/// Conflicting writes one entity's update survives before giving up with a retryable error.
const UPDATE_ATTEMPTS: u32 = 64;

/// What the read found, which the conditional write requires to be unchanged.
enum Read {
    Absent,
    Version(String),
    /// An item without a version (written by something other than this store).
    Unversioned,
}

/// One distinct entity's updates, decided and not yet written.
struct Plan {
    entity: EntityKey,
    pk: String,
    /// The entity's positions in the call (more than one when it is repeated).
    indices: Vec<usize>,
    read: Read,
    /// The record the next position's updater call sees: the stored one, then each answer.
    current: Option<Record>,
    /// Per position answered so far, the updater's answer.
    answers: Vec<Option<Record>>,
    /// The record to store: the last answer that was not `None`, encoded.
    write: Option<(i64, Vec<u8>)>,
}

impl Plan {
    /// Asks the updater for the record of the entity's position `index` in the call.
    fn answer(&mut self, group: &FeatureGroup, index: usize, updater: &mut Updater) -> Result<()> {
        let answer = updater(index, &self.entity, self.current.clone());
        if let Some(next) = &answer {
            let bytes = keys::encode_record(group, &self.entity, &self.pk, next)?;
            self.write = Some((next.event_time, bytes));
            self.current = Some(next.clone());
        }
        self.answers.push(answer);
        Ok(())
    }
}

/// The condition of a plan's write: the item as it was read. Each expression names only
/// what it uses, as DynamoDB requires.
struct Condition {
    expression: &'static str,
    names: HashMap<String, String>,
    values: Option<HashMap<String, AttributeValue>>,
}

impl Condition {
    fn unchanged_since(read: &Read) -> Condition {
        let (expression, names, values) = match read {
            Read::Absent => ("attribute_not_exists(#pk)", keys::names(&[PK]), None),
            Read::Version(version) => (
                "#ver = :ver",
                keys::names(&[VERSION]),
                Some(HashMap::from([(
                    ":ver".to_owned(),
                    AttributeValue::N(version.clone()),
                )])),
            ),
            Read::Unversioned => (
                "attribute_exists(#pk) AND attribute_not_exists(#ver)",
                keys::names(&[PK, VERSION]),
                None,
            ),
        };
        Condition {
            expression,
            names,
            values,
        }
    }
}

/// Waits a little before planning again after a conflict: short (a conflict means another
/// writer just succeeded, not an overloaded table) and random, so contending writers spread.
async fn conflict_pause(attempt: u32) {
    let most = 1u64 << attempt.min(5);
    let pause = Duration::from_millis(rand::random_range(0..=most));
    tokio::time::sleep(pause).await;
}

impl DynamoStore {
    pub(crate) async fn update_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        updater: Updater,
    ) -> Result<Vec<Option<Record>>> {
        keys::check_group_name(group)?;
        if group.kind != GroupKind::Attribute {
            return Err(StoreError::InvalidInput {
                group: group.name.clone(),
                entity: String::new(),
                reason: "only attribute groups are updated in place; time series are appended"
                    .to_owned(),
            });
        }
        // Distinct entities in order of first appearance, with their positions.
        let mut distinct: Vec<(EntityKey, String, Vec<usize>)> = Vec::new();
        let mut slot_of = Vec::with_capacity(entities.len());
        let mut slots: HashMap<String, usize> = HashMap::new();
        for (index, entity) in entities.iter().enumerate() {
            let pk = keys::writable_partition_key(group, entity)?;
            let slot = *slots.entry(pk.clone()).or_insert_with(|| {
                distinct.push((entity.clone(), pk, Vec::new()));
                distinct.len() - 1
            });
            distinct[slot].2.push(index);
            slot_of.push(slot);
        }
        let mut plans: Vec<Plan> = futures::stream::iter(distinct)
            .map(|(entity, pk, indices)| self.read_plan(&group.name, entity, pk, indices))
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        // The updater sees the entities in the order of the call, as it would under a lock.
        let mut updater = updater;
        for (index, slot) in slot_of.into_iter().enumerate() {
            plans[slot].answer(group, index, &mut updater)?;
        }
        // Conflicts are planned again concurrently; the updater, which is not `Sync`, is then
        // called by one entity at a time, and never across an await.
        let updater = Mutex::new(updater);
        let written: Vec<Plan> = futures::stream::iter(plans)
            .map(|plan| self.write_plan(group, plan, &updater))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut outcome = vec![None; entities.len()];
        for plan in written {
            for (index, answer) in plan.indices.into_iter().zip(plan.answers) {
                outcome[index] = answer;
            }
        }
        Ok(outcome)
    }

    /// Reads an entity for an update; the updater has not answered yet.
    async fn read_plan(
        &self,
        group: &str,
        entity: EntityKey,
        pk: String,
        indices: Vec<usize>,
    ) -> Result<Plan> {
        let (read, current) = self.read_for_update(group, &entity, &pk).await?;
        Ok(Plan {
            answers: Vec::with_capacity(indices.len()),
            entity,
            pk,
            indices,
            read,
            current,
            write: None,
        })
    }

    async fn read_for_update(
        &self,
        group: &str,
        entity: &EntityKey,
        pk: &str,
    ) -> Result<(Read, Option<Record>)> {
        let answer = self
            .throttled(|| {
                self.client
                    .get_item()
                    .table_name(&self.table)
                    .set_key(Some(keys::attribute_key(pk)))
                    .consistent_read(true)
                    .projection_expression(keys::projection(&[PK, VALUE, VERSION]))
                    .set_expression_attribute_names(Some(keys::names(&[PK, VALUE, VERSION])))
                    .send()
            })
            .await
            .map_err(|e| self.backend_error("GetItem", e))?;
        let Some(item) = answer.item else {
            return Ok((Read::Absent, None));
        };
        let read = match keys::number_of(&item, VERSION) {
            Some(version) => Read::Version(version.to_owned()),
            None => Read::Unversioned,
        };
        let stored = match keys::decode_item(group, &item) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(group, entity = %entity.as_str().escape_debug(), error = %e, "updating an undecodable stored record as absent");
                None
            }
        };
        Ok((read, stored))
    }

    /// Writes a plan if the entity is as it was read; after a concurrent write, plans it again
    /// from a fresh read.
    async fn write_plan(
        &self,
        group: &FeatureGroup,
        mut plan: Plan,
        updater: &Mutex<Updater>,
    ) -> Result<Plan> {
        let mut attempt = 0;
        loop {
            let Some((event_time, bytes)) = plan.write.take() else {
                return Ok(plan);
            };
            let item = keys::item(group, keys::attribute_key(&plan.pk), event_time, bytes);
            let condition = Condition::unchanged_since(&plan.read);
            let answer = self
                .throttled(|| {
                    self.client
                        .put_item()
                        .table_name(&self.table)
                        .set_item(Some(item.clone()))
                        .condition_expression(condition.expression)
                        .set_expression_attribute_names(Some(condition.names.clone()))
                        .set_expression_attribute_values(condition.values.clone())
                        .send()
                })
                .await;
            match answer {
                Ok(_) => return Ok(plan),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                {
                    attempt += 1;
                    if attempt >= UPDATE_ATTEMPTS {
                        return Err(StoreError::Backend(format!(
                            "DynamoDB update of entity `{}` of group `{}` in table `{}` gave up after {UPDATE_ATTEMPTS} conflicting concurrent writes",
                            plan.entity.as_str().escape_debug(),
                            group.name,
                            self.table
                        )));
                    }
                    conflict_pause(attempt).await;
                    plan = self
                        .read_plan(&group.name, plan.entity, plan.pk, plan.indices)
                        .await?;
                    let mut answering = updater.lock().unwrap_or_else(|p| p.into_inner());
                    for index in plan.indices.clone() {
                        plan.answer(group, index, &mut answering)?;
                    }
                }
                Err(e) => return Err(self.backend_error("PutItem", e)),
            }
        }
    }
}
