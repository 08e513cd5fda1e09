//! `trim`: a `SCAN` of one group's keys (by the `<prefix>a:<group>#` or `<prefix>s:<group>#`
//! pattern), removing what is past the group's retention with one script call per key, each
//! page's calls in one pipeline.
//!
//! `SCAN` walks the whole keyspace, filtered on the server: trimming is a periodic background
//! job, and Redis already expires most of what is long past `max_age` (see the crate docs).
//! `SCAN` may return a key twice; the scripts remove nothing the second time, so the count
//! stays exact.

use cellar_spec::{FeatureGroup, GroupKind};
use cellar_store::Result;
use redis::Cmd;

use crate::keys;
use crate::scripts::{self, SCRIPTS};
use crate::{int_reply, redis_error, RedisStore};

/// Keys a `SCAN` call looks at per page: enough to make few round trips, few enough that one
/// call never holds Redis up.
const SCAN_COUNT: usize = 1000;

impl RedisStore {
    pub(crate) async fn trim_group(&self, group: &FeatureGroup, now: i64) -> Result<u64> {
        let cutoff = keys::age_cutoff(group, now);
        match group.kind {
            GroupKind::Attribute => {
                let Some(cutoff) = cutoff else {
                    return Ok(0);
                };
                let cutoff = keys::ordered(cutoff);
                let pattern = self.keys.attribute_pattern(&group.storage_name());
                self.trim_keys(&group.name, &pattern, |key| {
                    let mut call = scripts::call(&SCRIPTS.trim_attribute, key);
                    call.arg(&cutoff[..]);
                    call
                })
                .await
            }
            GroupKind::Timeseries => {
                if cutoff.is_none() && group.retention.max_records.is_none() {
                    return Ok(0);
                }
                let max_records = keys::max_records_arg(group);
                let (score, ordered) = match cutoff {
                    Some(c) => (keys::score(c), keys::ordered(c).to_vec()),
                    None => (String::new(), Vec::new()),
                };
                let pattern = self.keys.series_pattern(&group.storage_name());
                self.trim_keys(&group.name, &pattern, |key| {
                    let mut call = scripts::call(&SCRIPTS.trim_series, key);
                    call.arg(&max_records).arg(&score).arg(&ordered[..]);
                    call
                })
                .await
            }
        }
    }

    /// Runs the script call `trim` builds on every key matching `pattern`; returns the sum of
    /// their answers (records removed).
    async fn trim_keys(
        &self,
        group: &str,
        pattern: &[u8],
        trim: impl Fn(&[u8]) -> Cmd,
    ) -> Result<u64> {
        let mut removed = 0u64;
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan_page(cursor, pattern, group).await?;
            let calls = keys.iter().map(|key| trim(key)).collect();
            let replies = scripts::run(&mut self.conn.clone(), calls)
                .await
                .map_err(|e| redis_error(group, "trim", &e))?;
            for reply in replies {
                removed += u64::try_from(int_reply(group, "trim", reply)?).unwrap_or(0);
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// One page of `SCAN cursor MATCH pattern`: the next cursor (0 when done) and the keys.
    pub(crate) async fn scan_page(
        &self,
        cursor: u64,
        pattern: &[u8],
        group: &str,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error(group, "SCAN", &e))
    }
}
