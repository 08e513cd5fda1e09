//! Read-modify-write of attribute records with optimistic concurrency.
//!
//! The entities are read with one `MGET`, the updater answers for each in the order of the
//! call, then the new records are written by a compare-and-set script per entity, all in one
//! pipeline: each writes only if the key still holds the value read (its header, whose random
//! token every write replaces; or its absence). A concurrent put, update or delete fails the
//! comparison; those entities are then read again and the updater called again for them, so
//! no write is lost, without a lock or a connection of its own (`WATCH` would need one per
//! concurrent update). Every answer is checked before anything is written, so an answer the
//! store refuses (too large) fails the call untouched; only a conflict retry that then gets a
//! refused answer fails after other entities were written.

use std::collections::HashMap;
use std::time::Duration;

use redis::Cmd;

use cellar_spec::time::now_ms;
use cellar_spec::{EntityKey, FeatureGroup, GroupKind};
use cellar_store::{Record, Result, StoreError, Updater};

use crate::keys::{self, HEADER_LEN};
use crate::scripts::{self, SCRIPTS};
use crate::{expiry_arg, int_reply, redis_error, RedisStore};

/// Conflicting writes one call survives before giving up with a retryable error.
const UPDATE_ATTEMPTS: u32 = 64;

/// What the read found, which the compare-and-set requires to be unchanged.
enum Read {
    Absent,
    /// The stored value's header: format, event time and write token.
    Header(Vec<u8>),
    /// A whole stored value without this store's header (written by something else).
    Exact(Vec<u8>),
}

/// One distinct entity's updates, decided and not yet written.
struct Plan {
    entity: EntityKey,
    key: Vec<u8>,
    /// The entity's positions in the call (more than one when it is repeated).
    indices: Vec<usize>,
    read: Read,
    /// The record the next position's updater call sees: the stored one, then each answer.
    current: Option<Record>,
    /// Per position answered so far, the updater's answer.
    answers: Vec<Option<Record>>,
    /// The value to store (the last answer that was not `None`, encoded) and its expiry.
    write: Option<(Vec<u8>, Option<i64>)>,
}

impl Plan {
    /// Starts the plan again from what the key holds now.
    fn read(&mut self, group: &str, stored: Option<Vec<u8>>) {
        self.answers.clear();
        self.write = None;
        let Some(value) = stored else {
            self.read = Read::Absent;
            self.current = None;
            return;
        };
        self.current = match keys::decode_attribute(group, &self.key, &value) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(group, entity = %self.entity.as_str().escape_debug(), error = %e, "updating an undecodable stored record as absent");
                None
            }
        };
        self.read = if keys::has_header(&value) {
            Read::Header(value[..HEADER_LEN].to_vec())
        } else {
            Read::Exact(value)
        };
    }

    /// Asks the updater for the record of the entity's position `index` in the call.
    fn answer(
        &mut self,
        group: &FeatureGroup,
        index: usize,
        updater: &mut Updater,
        now: i64,
    ) -> Result<()> {
        let answer = updater(index, &self.entity, self.current.clone());
        if let Some(next) = &answer {
            let value = keys::attribute_value(group, &self.entity, next)?;
            let expiry = keys::attribute_expiry(group, next.event_time, now);
            self.write = Some((value, expiry));
            self.current = Some(next.clone());
        }
        self.answers.push(answer);
        Ok(())
    }

    /// The compare-and-set of the plan's write, if it has one.
    fn compare_and_set(&self) -> Option<Cmd> {
        let (value, expiry) = self.write.as_ref()?;
        let mut call = scripts::call(&SCRIPTS.update_attribute, &self.key);
        match &self.read {
            Read::Absent => call.arg("absent").arg(""),
            Read::Header(header) => call.arg("header").arg(&header[..]),
            Read::Exact(stored) => call.arg("exact").arg(&stored[..]),
        };
        call.arg(&value[..]).arg(expiry_arg(*expiry));
        Some(call)
    }
}

/// Waits a little before reading again after a conflict: short (a conflict means another
/// writer just succeeded, not an overloaded server) and random, so contending writers spread.
async fn conflict_pause(attempt: u32) {
    let most = 1u64 << attempt.min(5);
    let pause = Duration::from_millis(rand::random_range(0..=most));
    tokio::time::sleep(pause).await;
}

impl RedisStore {
    pub(crate) async fn update_attributes(
        &self,
        group: &FeatureGroup,
        entities: &[EntityKey],
        mut updater: Updater,
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
        let mut plans: Vec<Plan> = Vec::new();
        let mut slot_of = Vec::with_capacity(entities.len());
        let mut slots: HashMap<Vec<u8>, usize> = HashMap::new();
        let storage = group.storage_name();
        for (index, entity) in entities.iter().enumerate() {
            let key = self.keys.attribute(&storage, entity);
            let slot = *slots.entry(key).or_insert_with_key(|key| {
                plans.push(Plan {
                    entity: entity.clone(),
                    key: key.clone(),
                    indices: Vec::new(),
                    read: Read::Absent,
                    current: None,
                    answers: Vec::new(),
                    write: None,
                });
                plans.len() - 1
            });
            plans[slot].indices.push(index);
            slot_of.push(slot);
        }
        let mut pending: Vec<usize> = (0..plans.len()).collect();
        self.read_plans(&group.name, &mut plans, &pending).await?;
        // The updater sees the entities in the order of the call, as it would under a lock.
        let now = now_ms();
        for (index, slot) in slot_of.into_iter().enumerate() {
            plans[slot].answer(group, index, &mut updater, now)?;
        }
        let mut attempt = 0;
        loop {
            let (writing, calls): (Vec<usize>, Vec<Cmd>) = pending
                .iter()
                .filter_map(|&p| plans[p].compare_and_set().map(|call| (p, call)))
                .unzip();
            let replies = scripts::run(&mut self.conn.clone(), calls)
                .await
                .map_err(|e| redis_error(&group.name, "update", &e))?;
            let mut conflicts = Vec::new();
            for (p, reply) in writing.into_iter().zip(replies) {
                if int_reply(&group.name, "update", reply)? != 1 {
                    conflicts.push(p);
                }
            }
            if conflicts.is_empty() {
                break;
            }
            attempt += 1;
            if attempt >= UPDATE_ATTEMPTS {
                return Err(StoreError::Backend(format!(
                    "Redis update of entity `{}` of group `{}` gave up after {UPDATE_ATTEMPTS} conflicting concurrent writes",
                    plans[conflicts[0]].entity.as_str().escape_debug(),
                    group.name,
                )));
            }
            conflict_pause(attempt).await;
            self.read_plans(&group.name, &mut plans, &conflicts).await?;
            let now = now_ms();
            for &p in &conflicts {
                let plan = &mut plans[p];
                for index in plan.indices.clone() {
                    plan.answer(group, index, &mut updater, now)?;
                }
            }
            pending = conflicts;
        }
        let mut outcome = vec![None; entities.len()];
        for plan in plans {
            for (index, answer) in plan.indices.into_iter().zip(plan.answers) {
                outcome[index] = answer;
            }
        }
        Ok(outcome)
    }

    /// Reads the stored values of the plans at `which` (one `MGET`) and starts them again.
    async fn read_plans(&self, group: &str, plans: &mut [Plan], which: &[usize]) -> Result<()> {
        let keys: Vec<Vec<u8>> = which.iter().map(|&p| plans[p].key.clone()).collect();
        let stored = self.mget(group, &keys).await?;
        for (&p, value) in which.iter().zip(stored) {
            plans[p].read(group, value);
        }
        Ok(())
    }
}
