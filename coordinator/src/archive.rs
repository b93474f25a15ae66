//! Sealed segment files: every node archives its financial log into `<data_dir>/segments/` as
//! segment files of LOG_FORMAT.md §5, `segment_entries` records each, so that
//! `budgetctl audit verify <data_dir>` (or any verifier) can check it without a server.
//!
//! A segment is written whole, atomically: to a temporary file, synced, renamed into place, and
//! the directory synced. The next segment continues from the last sealed one's trailer (its last
//! seq and head hash), read back from the file. Plain file I/O: sealing happens once per
//! `segment_entries` records, off the request path.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use shared::RegionId;
use shared::log::segment::{Item, SegmentWriter, TRAILER_LEN, read_item, segment_file_name};
use shared::log::{Hash, genesis};

/// The segments directory of a data directory.
pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("segments")
}

/// The next seq to seal and the head it must continue from: after the last sealed segment in
/// `dir`, or from genesis.
pub fn sealed_until(dir: &Path) -> io::Result<(u64, Hash)> {
    let mut last: Option<PathBuf> = None;
    if dir.exists() {
        let mut names: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        names.sort();
        last = names.pop();
    }
    let Some(path) = last else {
        return Ok((0, genesis()));
    };
    let bytes = fs::read(&path)?;
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let at = bytes
        .len()
        .checked_sub(TRAILER_LEN)
        .ok_or_else(|| bad("shorter than a trailer"))?;
    match read_item(&bytes, at) {
        Ok(Item::Trailer(t, _)) => Ok((t.last_seq + 1, t.head_hash)),
        _ => Err(bad("no trailer: not a sealed segment")),
    }
}

/// Seals every full segment of `segment_entries` records that `records` can supply past what
/// `dir` already holds. `records(from, max)` returns stored `(seq, record)` pairs from `from`.
/// Returns the files written.
pub fn seal_ready(
    dir: &Path,
    region: &RegionId,
    segment_entries: u64,
    available_until: u64,
    records: impl Fn(u64, usize) -> io::Result<Vec<(u64, Vec<u8>)>>,
) -> io::Result<Vec<PathBuf>> {
    let segment_entries = segment_entries.max(1);
    fs::create_dir_all(dir)?;
    let (mut next, mut head) = sealed_until(dir)?;
    let mut written = Vec::new();
    while next + segment_entries <= available_until {
        let want = usize::try_from(segment_entries).unwrap_or(usize::MAX);
        let recs = records(next, want)?;
        if recs.len() != want {
            return Err(io::Error::other(format!(
                "log records {next}.. : {} stored, {want} expected",
                recs.len()
            )));
        }
        let mut w = SegmentWriter::new(region, next, head);
        for (i, (seq, rec)) in recs.iter().enumerate() {
            if *seq != next + i as u64 {
                return Err(io::Error::other(format!(
                    "log record {} missing (found {seq})",
                    next + i as u64
                )));
            }
            head = w.push_record(rec).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("record {seq}: {e}"))
            })?;
        }
        let bytes = w.seal().map_err(io::Error::other)?;
        let path = dir.join(segment_file_name(region, next));
        write_atomically(&path, &bytes)?;
        written.push(path);
        next += segment_entries;
    }
    Ok(written)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("seg.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}
