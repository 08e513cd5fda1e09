//! Writes that follow the store's: write-through puts records in (merged into a cached
//! series), write-around leaves invalidation markers, deletes drop the keys.

use cellar_spec::{EntityKey, FeatureGroup, GroupKind, WriteStrategy};
use cellar_store::{codec, Record};
use redis::Value;

use super::deadlines::Ttls;
use super::generation::parse;
use super::scripts::{ScriptCall, Tie, SCRIPTS};
use super::stats::bump;
use super::value::{
    encode_invalidated, encode_record, encode_series_entry, ordered, ENTRY_HEADER_LEN,
};
use super::{RemoteTier, Shared};

impl RemoteTier {
    /// Applies writes to the cached copies as the group's write strategy says: write-through
    /// puts each record in unless a newer (or equal) event time is cached, merging time-series
    /// records into the cached series; write-around leaves an invalidation marker at the
    /// record's event time. Call it with the records the store applied.
    pub async fn records_written<'a>(
        &self,
        group: &FeatureGroup,
        written: impl IntoIterator<Item = (&'a EntityKey, &'a Record)>,
    ) {
        if !Self::serves(group) {
            return;
        }
        let calls: Vec<(ScriptCall, i64)> = written
            .into_iter()
            .map(|(entity, record)| {
                let call = self.write_call(group, entity, record, Tie::Keep);
                (call, record.event_time)
            })
            .collect();
        self.shared.write(group, calls).await;
    }

    /// [`records_written`](Self::records_written) for one record.
    pub async fn record_written(&self, group: &FeatureGroup, entity: &EntityKey, record: &Record) {
        self.records_written(group, [(entity, record)]).await
    }

    /// Follows read-modify-writes of attribute records: the store now holds each `record`,
    /// even where its event time equals the cached one's. Write-through caches it unless a
    /// strictly newer record is cached; otherwise the cached copy is invalidated.
    pub async fn records_replaced<'a>(
        &self,
        group: &FeatureGroup,
        replaced: impl IntoIterator<Item = (&'a EntityKey, &'a Record)>,
    ) {
        if !Self::serves(group) {
            return;
        }
        let calls: Vec<(ScriptCall, i64)> = replaced
            .into_iter()
            .map(|(entity, record)| {
                let call = match (group.serving.write, group.kind) {
                    (WriteStrategy::Through, GroupKind::Attribute) => {
                        self.write_call(group, entity, record, Tie::Replace)
                    }
                    _ => self.marker_call(group, entity, record.event_time),
                };
                // A replaced record may keep the old one's event time: if this update is
                // skipped, only a marker past it keeps a fill of the old record out.
                (call, record.event_time.saturating_add(1))
            })
            .collect();
        self.shared.write(group, calls).await;
    }

    /// [`records_replaced`](Self::records_replaced) for one record.
    pub async fn record_replaced(&self, group: &FeatureGroup, entity: &EntityKey, record: &Record) {
        self.records_replaced(group, [(entity, record)]).await
    }

    /// Drops the cached copies of the given entities (after their records were deleted).
    pub async fn invalidate(&self, group: &FeatureGroup, entities: &[EntityKey]) {
        if !Self::serves(group) || entities.is_empty() {
            return;
        }
        let storage = group.storage_name();
        let keys: Vec<Vec<u8>> = entities.iter().map(|e| self.key(&storage, e)).collect();
        let shared = &self.shared;
        // A deletion skipped is made up for with markers that every event time loses to
        // (until they expire): reads of those entities go to the store meanwhile.
        let skipped = |keys: Vec<Vec<u8>>| {
            shared.skipped_writes(group, keys.into_iter().map(|k| (k, i64::MAX)))
        };
        let Some(permit) = shared.breaker.try_acquire() else {
            bump(&shared.stats.writes_skipped, keys.len());
            skipped(keys);
            return;
        };
        let mut conn = shared.conn.clone();
        match tokio::time::timeout(shared.write_timeout, conn.del(&keys)).await {
            Ok(Ok(())) => {
                permit.succeeded();
                bump(&shared.stats.writes, keys.len());
            }
            Ok(Err(e)) => {
                permit.failed();
                bump(&shared.stats.errors, 1);
                bump(&shared.stats.writes_skipped, keys.len());
                skipped(keys);
                tracing::warn!(error = %e, group = %group.name, "remote cache invalidation failed");
            }
            Err(_) => {
                permit.failed();
                bump(&shared.stats.timeouts, 1);
                bump(&shared.stats.writes_skipped, keys.len());
                skipped(keys);
            }
        }
    }

    /// The script call that applies one written record to its cached copy.
    fn write_call(
        &self,
        group: &FeatureGroup,
        entity: &EntityKey,
        record: &Record,
        tie: Tie,
    ) -> ScriptCall {
        let key = self.key(&group.storage_name(), entity);
        let ttls = Ttls::positive(&group.serving);
        // The generation learned before the store took the write: if the group moved on since,
        // the value is a miss rather than a copy that may predate the move.
        let generation = self.shared.generations.get(&group.name);
        let call = match (group.serving.write, group.kind, ttls) {
            (WriteStrategy::Through, GroupKind::Attribute, Some(ttls)) => {
                encode_record(record, ttls.soft_deadline, generation)
                    .ok()
                    .map(|value| {
                        let mut call = ScriptCall::put(key.clone(), value, ttls.hard_ms, tie);
                        if group.serving.admit_after > 1 {
                            // Writes do not admit: update a cached copy, else leave a marker.
                            call.args.push(encode_invalidated(record.event_time));
                            call.args
                                .push(Ttls::marker(&group.serving).to_string().into_bytes());
                        }
                        call
                    })
            }
            (WriteStrategy::Through, GroupKind::Timeseries, Some(ttls)) => {
                let mut entry = Vec::with_capacity(ENTRY_HEADER_LEN + codec::encoded_len(record));
                encode_series_entry(&mut entry, record)
                    .ok()
                    .map(|()| ScriptCall {
                        key: key.clone(),
                        script: &SCRIPTS.merge_series,
                        args: vec![
                            entry,
                            Self::series_len(group).to_string().into_bytes(),
                            ttls.hard_ms.to_string().into_bytes(),
                            ordered(ttls.soft_deadline).to_vec(),
                            encode_invalidated(record.event_time),
                            generation.to_be_bytes().to_vec(),
                        ],
                    })
            }
            _ => None,
        };
        // Write-around, a policy that caches nothing, or a record that cannot be encoded: the
        // cached copy must go.
        call.unwrap_or_else(|| self.marker_call(group, entity, record.event_time))
    }

    fn marker_call(&self, group: &FeatureGroup, entity: &EntityKey, event_time: i64) -> ScriptCall {
        ScriptCall::put(
            self.key(&group.storage_name(), entity),
            encode_invalidated(event_time),
            Ttls::marker(&group.serving),
            Tie::Max,
        )
    }
}

impl Shared {
    /// Runs one group's write-path script calls now, through the breaker, each with the event
    /// time its invalidation needs should it be skipped; learns the group's generation on the
    /// way, for the next writes.
    async fn write(&self, group: &FeatureGroup, calls: Vec<(ScriptCall, i64)>) {
        if calls.is_empty() {
            return;
        }
        let n = calls.len();
        let (calls, event_times): (Vec<ScriptCall>, Vec<i64>) = calls.into_iter().unzip();
        let generation_key = self.generation_key(&group.name);
        let skipped = |which: &mut dyn Iterator<Item = usize>| {
            self.skipped_writes(group, which.map(|i| (calls[i].key.clone(), event_times[i])))
        };
        let Some(permit) = self.breaker.try_acquire() else {
            bump(&self.stats.writes_skipped, n);
            skipped(&mut (0..n));
            return;
        };
        let (mut conn, mut gen_conn) = (self.conn.clone(), self.conn.clone());
        let both =
            async { futures::join!(conn.run_scripts(&calls), gen_conn.get(&generation_key)) };
        match tokio::time::timeout(self.write_timeout, both).await {
            Ok((Ok(replies), learned)) => {
                permit.succeeded();
                if let Some(generation) = learned.ok().and_then(|g| parse(g.as_deref())) {
                    self.generations.learn(&group.name, generation);
                }
                let failed: Vec<usize> = replies
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| matches!(r, Value::ServerError(_) | Value::Nil))
                    .map(|(i, _)| i)
                    .collect();
                bump(&self.stats.writes, n - failed.len());
                bump(&self.stats.writes_skipped, failed.len());
                bump(&self.stats.errors, failed.len());
                skipped(&mut failed.into_iter());
            }
            Ok((Err(e), _)) => {
                permit.failed();
                bump(&self.stats.errors, 1);
                bump(&self.stats.writes_skipped, n);
                skipped(&mut (0..n));
                tracing::warn!(error = %e, "remote cache write failed");
            }
            Err(_) => {
                // Redis may still apply these writes, or not: either way the markers settle it.
                permit.failed();
                bump(&self.stats.timeouts, 1);
                bump(&self.stats.writes_skipped, n);
                skipped(&mut (0..n));
            }
        }
    }
}
