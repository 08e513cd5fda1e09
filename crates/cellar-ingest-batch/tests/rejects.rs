//! The JSON-lines reject file.

use cellar_ingest_batch::{Reject, RejectFile, Rejects};

#[test]
fn reject_files_hold_one_json_object_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rejects.jsonl");
    let file = RejectFile::create(&path).unwrap();
    let reject = Reject {
        ingestion: "profiles".into(),
        shard: 2,
        file: "a.parquet".into(),
        row: Some(17),
        line: None,
        byte: None,
        column: Some("age".into()),
        reason: "feature `age` (`age`): expected int64, got the text \"old\"".into(),
    };
    file.record(std::slice::from_ref(&reject)).unwrap();
    file.record(&[]).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "{\"ingestion\":\"profiles\",\"shard\":2,\"file\":\"a.parquet\",\"row\":17,\
         \"column\":\"age\",\"reason\":\"feature `age` (`age`): expected int64, got the text \
         \\\"old\\\"\"}\n"
    );
    assert_eq!(RejectFile::read(&path).unwrap(), vec![reject]);
}
