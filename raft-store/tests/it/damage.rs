//! A damaged database is refused, never read as if it were whole: a flipped byte in a table
//! file is found by [`verify_db`], one in the write-ahead log by opening; a log that a crash
//! cut short in its last record still opens.

use std::path::{Path, PathBuf};

use raft_store::{is_corruption, open_db, verify_db};

const ROWS: &str = raft_store::state_store::CF_ROWS;

/// Writes `n` synced rows of 100 bytes each.
fn write_rows(db: &rocksdb::DB, n: u32) {
    let cf = db.cf_handle(ROWS).unwrap();
    let mut o = rocksdb::WriteOptions::default();
    o.set_sync(true);
    for i in 0..n {
        db.put_cf_opt(cf, i.to_be_bytes(), [i as u8; 100], &o)
            .unwrap();
    }
}

fn files_ending(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .filter(|p| std::fs::metadata(p).unwrap().len() > 64)
        .collect();
    v.sort();
    v
}

/// Flips every bit of the byte at `at`.
fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Opens and verifies: the error, if either fails.
fn open_and_verify(path: &Path) -> Result<raft_store::Verified, rocksdb::Error> {
    let db = open_db(path)?;
    verify_db(&db)
}

#[test]
fn a_flipped_byte_in_a_table_file_is_found_at_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = open_db(&path).unwrap();
        write_rows(&db, 2_000);
        db.flush_cf(db.cf_handle(ROWS).unwrap()).unwrap();
    }
    let whole = open_and_verify(&path).unwrap();
    assert_eq!(whole.keys, 2_000, "{whole:?}");
    let tables = files_ending(&path, "sst");
    assert!(!tables.is_empty(), "the flush wrote no table file");
    // Byte 20 lies in a table's first data block.
    for t in &tables {
        flip(t, 20);
    }
    let e = open_and_verify(&path).expect_err("a damaged table file verified");
    assert!(is_corruption(&e), "not reported as corruption: {e}");
}

#[test]
fn a_flipped_byte_in_the_write_ahead_log_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = open_db(&path).unwrap();
        write_rows(&db, 200);
    }
    let logs = files_ending(&path, "log");
    assert!(!logs.is_empty(), "no write-ahead log with records");
    // Inside the first record, so that the records after it (synced, acknowledged) are not
    // silently dropped with it.
    for l in &logs {
        flip(l, 20);
    }
    let e = open_and_verify(&path).expect_err("a damaged write-ahead log opened");
    assert!(is_corruption(&e), "not reported as corruption: {e}");
}

#[test]
fn a_log_cut_short_in_its_last_record_opens_with_the_records_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let db = open_db(&path).unwrap();
        write_rows(&db, 200);
    }
    let logs = files_ending(&path, "log");
    let last = logs.last().expect("a write-ahead log");
    let len = std::fs::metadata(last).unwrap().len();
    // A crash in the middle of the last record's write.
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len - 30)
        .unwrap();
    let seen = open_and_verify(&path).expect("a log cut short in its last record");
    assert_eq!(seen.keys, 199, "{seen:?}");
}
