//! Compaction: a partition's many small files (one per conversion run) merged into one.
//!
//! Each process compacts only the files its own staging log produced (their names start with
//! its id), so two processes never merge the same files. A merged file is named after the
//! first of its inputs (`<id>-m<first sequence>-<schema>.parquet`) and written whole before the
//! inputs are removed: a crash in between leaves duplicates, which change no answer, and the
//! next compaction merges them away.

use std::collections::BTreeMap;

use arrow_array::RecordBatch;

use crate::error::{HistoryError, Result};
use crate::files;
use crate::storage::Storage;

/// Files of one schema in one partition at which they are merged.
pub const COMPACT_AT: usize = 8;

/// A history file's name taken apart: its first sequence and its schema hash, if it is one of
/// `staging`'s files.
fn parse_own(name: &str, staging: &str) -> Option<(u64, String)> {
    let rest = name.strip_prefix(staging)?.strip_prefix('-')?;
    let rest = rest.strip_suffix(".parquet")?;
    let rest = rest.strip_prefix('m').unwrap_or(rest);
    let (first, schema) = rest.split_once('-')?;
    Some((first.parse().ok()?, schema.to_owned()))
}

/// Merges, in each of `partitions` (their keys), the files of `staging` that share a schema
/// once there are [`COMPACT_AT`] of them. Returns how many files were merged away.
pub fn compact<'a>(
    storage: &Storage,
    partitions: impl IntoIterator<Item = &'a String>,
    staging: &str,
) -> Result<usize> {
    let mut merged = 0;
    for partition in partitions {
        merged += compact_partition(storage, partition, staging)?;
    }
    Ok(merged)
}

fn compact_partition(storage: &Storage, partition: &str, staging: &str) -> Result<usize> {
    let mut by_schema: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for key in storage.list(partition)? {
        let name = key.rsplit('/').next().unwrap_or(&key);
        let Some((first, schema)) = parse_own(name, staging) else {
            continue;
        };
        by_schema.entry(schema).or_default().push((first, key));
    }
    let mut merged = 0;
    for (schema, mut inputs) in by_schema {
        if inputs.len() < COMPACT_AT {
            continue;
        }
        inputs.sort();
        let first = inputs[0].0;
        let mut batches: Vec<RecordBatch> = Vec::new();
        for (_, key) in &inputs {
            batches.extend(files::read_batches(storage, key)?);
        }
        let Some(schema_ref) = batches.first().map(RecordBatch::schema) else {
            continue;
        };
        let batch = arrow_select::concat::concat_batches(&schema_ref, &batches)
            .map_err(|e| HistoryError::Corrupt(format!("{}: {e}", storage.name(partition))))?;
        let target = format!("{partition}/{staging}-m{first:020}-{schema}.parquet");
        storage.write_parquet(&target, &batch)?;
        for (_, key) in &inputs {
            if *key != target {
                storage.remove(key)?;
                merged += 1;
            }
        }
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::convert_all;
    use crate::frame::{self, Header};
    use crate::staging::Staging;

    #[tokio::test]
    async fn a_partitions_small_files_are_merged_into_one_holding_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let describe: crate::storage::Describe = std::sync::Arc::new(|e| e.to_string());
        let bucket = Storage::bucket(
            std::sync::Arc::new(object_store::memory::InMemory::new()),
            "s3://b/history",
            describe,
        );
        for (n, storage) in [Storage::Local(dir.path().join("history")), bucket]
            .into_iter()
            .enumerate()
        {
            let staging = Staging::open(dir.path().join(format!("staging{n}"))).unwrap();
            let group = cellar_store::conformance::attribute_group("g");
            let header = Header::of(&group);
            let mut partitions = std::collections::BTreeSet::new();
            for i in 0..COMPACT_AT as i64 + 2 {
                let record =
                    cellar_store::Record::new(1_000 + i, vec![cellar_spec::Value::Int64(i)]);
                let frame = frame::encode(&header, [("u1", &record, true)].into_iter()).unwrap();
                staging.append(frame).await.unwrap();
                partitions.extend(convert_all(&staging, &storage).unwrap().partitions);
                if i == 3 {
                    // Below the threshold nothing is merged.
                    assert_eq!(compact(&storage, &partitions, staging.id()).unwrap(), 0);
                }
            }
            let listed = || files::list(&storage, "g", (i64::MIN, i64::MAX)).unwrap();
            assert_eq!(listed().len(), COMPACT_AT + 2, "{storage}");
            // Another process's files are left alone.
            assert_eq!(partitions.len(), 1);
            assert_eq!(
                compact(&storage, &partitions, "0123456789abcdef").unwrap(),
                0
            );
            assert_eq!(
                compact(&storage, &partitions, staging.id()).unwrap(),
                COMPACT_AT + 2
            );
            let after = listed();
            assert_eq!(after.len(), 1, "{storage}");
            let features = vec![(group.features[0].name.clone(), group.features[0].value_type)];
            let rows: usize = files::read(&storage, &after[0].1, &features)
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum();
            assert_eq!(rows, COMPACT_AT + 2, "{storage}");
        }
    }

    #[test]
    fn only_this_staging_logs_files_are_recognised() {
        assert_eq!(
            parse_own("abc-00000000000000000042-ff.parquet", "abc"),
            Some((42, "ff".into()))
        );
        assert_eq!(
            parse_own("abc-m00000000000000000042-ff.parquet", "abc"),
            Some((42, "ff".into()))
        );
        assert_eq!(
            parse_own("abd-00000000000000000042-ff.parquet", "abc"),
            None
        );
        assert_eq!(
            parse_own("abc-00000000000000000042-ff.parquet.tmp", "abc"),
            None
        );
    }
}
