//! The chunked, multi-threaded turns reader agrees with the schema crate's JSONL reader.

use report::fixture::FixtureSpec;
use report::load::read_turns;
use std::path::Path;
use turnbench_schema::{jsonl, TurnRecord};

/// About 10 MB of records: several 4 MB parse chunks.
fn big_turns() -> (tempfile::TempDir, Vec<u8>) {
    let tmp = tempfile::tempdir().unwrap();
    let spec = FixtureSpec::with_records("chunks", 20_000);
    let dir = report::fixture::write_run(tmp.path(), "r", &spec).unwrap();
    let bytes = std::fs::read(dir.join("turns.jsonl")).unwrap();
    assert!(bytes.len() > 9 << 20, "crosses chunk boundaries");
    (tmp, bytes)
}

#[test]
fn same_records_as_the_schema_reader() {
    let (_tmp, bytes) = big_turns();
    let expected: Vec<TurnRecord> = jsonl::read_all(bytes.as_slice()).unwrap();
    let (records, torn) = read_turns(bytes.as_slice(), Path::new("turns.jsonl")).unwrap();
    assert!(!torn);
    assert_eq!(records.len(), 20_000);
    assert!(records == expected, "records differ from jsonl::read_all");
}

#[test]
fn torn_tail_is_tolerated_and_reported() {
    let (_tmp, mut bytes) = big_turns();
    bytes.extend_from_slice(b"{\"gpu\":\"h1");
    let (records, torn) = read_turns(bytes.as_slice(), Path::new("turns.jsonl")).unwrap();
    assert!(torn);
    assert_eq!(records.len(), 20_000);
}

#[test]
fn a_bad_line_deep_in_the_file_is_named() {
    let (_tmp, bytes) = big_turns();
    let text = String::from_utf8(bytes).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[15_000 - 1] = "{\"gpu\": 7}";
    lines.insert(100, "");
    let text = lines.join("\n") + "\n";
    let err = read_turns(text.as_bytes(), Path::new("some/turns.jsonl"))
        .unwrap_err()
        .to_string();
    // The blank line inserted above shifts the bad line by one.
    assert!(err.starts_with("some/turns.jsonl:15001: "), "{err}");
}

#[test]
fn an_unreadable_telemetry_line_is_skipped_not_the_run() {
    // A telemetry line torn by a full disk, then appended to by a resume, sits mid-file.
    let tmp = tempfile::tempdir().unwrap();
    let spec = FixtureSpec::with_records("tele", 200);
    let dir = report::fixture::write_run(tmp.path(), "r", &spec).unwrap();
    let path = dir.join("telemetry.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let n = text.lines().count();
    assert!(n >= 2, "the fixture has telemetry");
    let torn = text.replacen('\n', "{\"t\": 1.5, \"gp\n", 1);
    std::fs::write(&path, torn).unwrap();
    let run = report::load::load_dir(&dir).unwrap();
    assert_eq!(
        run.telemetry.len(),
        n - 1,
        "the line the fragment was glued to is lost"
    );
    let turns = std::fs::read_to_string(dir.join("turns.jsonl")).unwrap();
    assert_eq!(run.records.len(), turns.lines().count());
}
