//! Sealed segment files: every node archives its financial log into `<data_dir>/segments/` as
//! segment files of LOG_FORMAT.md §5, `segment_entries` records each, so that
//! `budgetctl audit verify <data_dir>` (or any verifier) can check it without a server.
//!
//! A segment is written whole, atomically: to a temporary file, synced, renamed into place, and
//! the directory synced. The next segment continues from the last sealed one's trailer (its last
//! seq and head hash), read back from the file. Sealing happens once per `segment_entries`
//! records, off the request path.
//!
//! Segment files are written through io_uring (`tokio-uring`) where the kernel allows it, and
//! with plain file I/O otherwise: [`FileIo::detect`] tries to set up a ring once per process.
//! Both write the same bytes; only the system calls differ.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use shared::RegionId;
use shared::log::segment::{Item, SegmentWriter, TRAILER_LEN, read_item, segment_file_name};
use shared::log::{Hash, genesis};

/// How segment files are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileIo {
    /// io_uring submissions through a `tokio-uring` runtime on the sealing thread.
    Uring,
    /// `std::fs`: write, fsync and rename system calls.
    Std,
}

impl FileIo {
    /// io_uring when this kernel (and its seccomp policy) lets a ring be set up, plain file I/O
    /// otherwise. Probed once per process.
    pub fn detect() -> FileIo {
        static DETECTED: OnceLock<FileIo> = OnceLock::new();
        *DETECTED.get_or_init(|| match on_own_thread(|| tokio_uring::Runtime::new(&tokio_uring::builder()).map(drop)) {
            Ok(()) => FileIo::Uring,
            Err(e) => {
                tracing::info!(error = %e, "io_uring is not available; segment files use plain file I/O");
                FileIo::Std
            }
        })
    }

    /// `io_uring` or `std`, for logs and status.
    pub fn name(self) -> &'static str {
        match self {
            FileIo::Uring => "io_uring",
            FileIo::Std => "std",
        }
    }
}

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

/// Writes `NAME.head` beside the sealed segment `NAME.seg`: its last entry's seq and hash,
/// signed by `signer` at `time_us` (LOG_FORMAT.md §9). Written to a temporary file, synced,
/// then renamed: a crash leaves the old file or the new one, never half of one.
pub fn write_signed_head(
    signer: &shared::log::signed::HeadSigner,
    segment: &Path,
    time_us: i64,
) -> io::Result<PathBuf> {
    let bytes = fs::read(segment)?;
    let at = bytes.len().saturating_sub(TRAILER_LEN);
    let Ok(Item::Trailer(t, _)) = read_item(&bytes, at) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no trailer: not a sealed segment", segment.display()),
        ));
    };
    let head = signer
        .sign(t.last_seq, &t.head_hash, time_us)
        .map_err(io::Error::other)?;
    let text = serde_json::to_string_pretty(&head).map_err(io::Error::other)? + "\n";
    let path = segment.with_extension(shared::log::signed::HEAD_EXT);
    let tmp = segment.with_extension("head.tmp");
    {
        use std::io::Write as _;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Seals every complete segment that `records` can supply past what `dir` already holds. A
/// segment ends after `segment_entries` records, or earlier at a seal point (the replicated
/// `SealSegment` boundaries, in `points`): every replica cuts the same segments.
/// `records(from, max)` returns stored `(seq, record)` pairs from `from`. Returns the files
/// written.
pub fn seal_ready(
    io: FileIo,
    dir: &Path,
    region: &RegionId,
    segment_entries: u64,
    points: &std::collections::BTreeSet<u64>,
    available_until: u64,
    records: impl Fn(u64, usize) -> io::Result<Vec<(u64, Vec<u8>)>>,
) -> io::Result<Vec<PathBuf>> {
    let segment_entries = segment_entries.max(1);
    fs::create_dir_all(dir)?;
    let (mut next, mut head) = sealed_until(dir)?;
    let mut written = Vec::new();
    loop {
        let by_count = next + segment_entries;
        let end = points
            .range(next + 1..)
            .next()
            .map_or(by_count, |p| (*p).min(by_count));
        if end > available_until {
            break;
        }
        let want = usize::try_from(end - next).unwrap_or(usize::MAX);
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
        write_atomically(io, &path, &bytes)?;
        written.push(path);
        next = end;
    }
    Ok(written)
}

/// Writes `bytes` as `path`, whole or not at all: into a temporary file, synced, renamed into
/// place, and the directory synced so that the rename survives a crash.
fn write_atomically(io: FileIo, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("seg.tmp");
    let dir = path.parent().unwrap_or(Path::new("."));
    match io {
        FileIo::Std => {
            {
                let mut f = File::create(&tmp)?;
                f.write_all(bytes)?;
                f.sync_all()?;
            }
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        }
        FileIo::Uring => on_own_thread(|| {
            let rt = tokio_uring::Runtime::new(&tokio_uring::builder())?;
            let bytes = bytes.to_vec();
            rt.block_on(async move {
                let f = tokio_uring::fs::File::create(&tmp).await?;
                let (written, _) = f.write_all_at(bytes, 0).await;
                written?;
                f.sync_all().await?;
                f.close().await?;
                tokio_uring::fs::rename(&tmp, path).await?;
                let d = tokio_uring::fs::File::from_std(File::open(dir)?);
                d.sync_all().await?;
                d.close().await
            })
        }),
    }
}

/// Runs `work` on a thread of its own: a `tokio-uring` runtime may neither start nor be dropped
/// on a thread that is inside another Tokio runtime, as the caller's may be.
fn on_own_thread<T: Send>(work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(work)
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the io_uring thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::log::sample::{SampleConfig, generate};
    use shared::log::segment::read_header;

    /// The records of a generated 1,000-entry log, in order.
    fn sample_records() -> (RegionId, Vec<(u64, Vec<u8>)>) {
        let archive = generate(&SampleConfig {
            seed: 7,
            entries: 1_000,
            segment_entries: (1_000, 1_000),
            batch_events_max: 4,
        })
        .expect("sample");
        let bytes = &archive.segments[0].bytes;
        let (header, mut at) = read_header(bytes).expect("header");
        let mut records = Vec::new();
        while let Ok(Item::Record(r)) = read_item(bytes, at) {
            records.push((
                header.first_seq + records.len() as u64,
                bytes[r.offset..r.end].to_vec(),
            ));
            at = r.end;
        }
        assert_eq!(records.len(), 1_000);
        (header.region, records)
    }

    fn seal(io: FileIo, dir: &Path, until: u64) -> Vec<PathBuf> {
        seal_at(io, dir, until, &[])
    }

    fn seal_at(io: FileIo, dir: &Path, until: u64, points: &[u64]) -> Vec<PathBuf> {
        let (region, records) = sample_records();
        let points = points.iter().copied().collect();
        seal_ready(io, dir, &region, 300, &points, until, |from, max| {
            Ok(records
                .iter()
                .skip(from as usize)
                .take(max)
                .cloned()
                .collect())
        })
        .expect("seal")
    }

    fn names(files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn seal_points_end_segments_early_and_the_archive_still_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("segments");
        // Points at 5 and 420: segments 0..5, 5..305 (by count), 305..420, 420..720 (by
        // count); the 280 records after 720 make no segment yet.
        let files = seal_at(FileIo::Std, &dir, 1_000, &[5, 420]);
        assert_eq!(
            names(&files)
                .iter()
                .map(|n| n.split('-').next_back().unwrap().to_string())
                .collect::<Vec<_>>(),
            [
                "00000000000000000000.seg",
                "00000000000000000005.seg",
                "00000000000000000305.seg",
                "00000000000000000420.seg",
            ]
        );
        // A point past what is stored waits; none before it are cut again.
        let more = seal_at(FileIo::Std, &dir, 1_000, &[5, 420, 1_200]);
        assert!(more.is_empty(), "{more:?}");
        // A point at the end of what is stored seals the rest.
        let last = seal_at(FileIo::Std, &dir, 1_000, &[5, 420, 1_000]);
        assert_eq!(names(&last).len(), 1);
        let summary = shared::log::verify_path(&dir, None)
            .unwrap()
            .expect("the archive verifies");
        assert_eq!(summary.entries, 1_000);
    }

    #[test]
    fn seals_full_segments_only_and_continues_from_the_last_trailer() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("segments");
        let first = seal(FileIo::Std, &dir, 650);
        assert_eq!(first.len(), 2, "600 of 650 records fit in segments of 300");
        assert_eq!(sealed_until(&dir).unwrap().0, 600);
        assert!(
            seal(FileIo::Std, &dir, 650).is_empty(),
            "nothing new to seal"
        );
        let second = seal(FileIo::Std, &dir, 1_000);
        assert_eq!(second.len(), 1);
        let summary = shared::log::verify_path(&dir, None)
            .unwrap()
            .expect("the archive verifies");
        assert_eq!(summary.entries, 900);
        // No temporary file is left behind.
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn io_uring_and_plain_io_write_the_same_files() {
        let io = FileIo::detect();
        eprintln!("this kernel: segment files via {}", io.name());
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("std"), tmp.path().join("detected"));
        let std_files = seal(FileIo::Std, &a, 1_000);
        let files = seal(io, &b, 1_000);
        assert_eq!(names(&std_files), names(&files));
        for (x, y) in std_files.iter().zip(&files) {
            assert_eq!(
                fs::read(x).unwrap(),
                fs::read(y).unwrap(),
                "{}",
                y.display()
            );
        }
        shared::log::verify_path(&b, None)
            .unwrap()
            .expect("the archive verifies");
    }

    #[test]
    fn a_directory_that_ends_without_a_trailer_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("segments");
        let files = seal(FileIo::Std, &dir, 300);
        let bytes = fs::read(&files[0]).unwrap();
        fs::write(&files[0], &bytes[..bytes.len() - 1]).unwrap();
        let err = sealed_until(&dir).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}
