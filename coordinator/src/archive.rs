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
use shared::log::segment::{
    Item, SegmentWriter, TRAILER_LEN, read_header, read_item, segment_file_name,
};
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
    trailer_of(&path, &fs::read(&path)?)
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

/// Financial-log records, `(seq, record bytes)`, in order.
pub type Records = Vec<(u64, Vec<u8>)>;

/// Records read from the store at a time while sealing.
const READ_CHUNK: usize = 512;

/// Where segments end: after `entries` records, or before the record that would take the file
/// past `bytes_max` bytes (a segment holds at least one record), or at a seal point. Each is a
/// function of the log alone, so every replica with the same rule cuts the same segments; the
/// rule must be the same on every node of a region (`segment_entries`, `segment_bytes_max`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentRule {
    /// Most records in a segment.
    pub entries: u64,
    /// Most bytes in a segment file (unless one record alone is more).
    pub bytes_max: u64,
}

/// The default cap on a segment file's size: 64 MiB. It bounds the records RocksDB and a
/// snapshot hold when records are large (a spend batch of 1,000 events is about 34 KiB: in
/// `./dev bench soak`, a 64 MiB segment held about 2,000 of them).
pub const SEGMENT_BYTES_MAX: u64 = 64 << 20;

impl From<u64> for SegmentRule {
    /// At most `entries` records, and the default byte cap.
    fn from(entries: u64) -> SegmentRule {
        SegmentRule {
            entries,
            bytes_max: SEGMENT_BYTES_MAX,
        }
    }
}

/// How far the archive has looked past its sealed end: the records `from..until` would make a
/// file of `bytes` (with header and trailer). Kept between calls, so that an open segment's
/// records are read once while they accumulate, not on every tick.
#[derive(Clone, Copy, Debug)]
struct Probe {
    from: u64,
    until: u64,
    bytes: u64,
}

/// Writes the segment of `records` from `start` (its first seq and the head before it) to
/// `end`, atomically, and reads it back: only a segment that verifies may replace the records.
/// Returns its path and the position after it.
fn write_segment(
    io: FileIo,
    dir: &Path,
    region: &RegionId,
    start: (u64, Hash),
    end: u64,
    records: &impl Fn(u64, usize) -> io::Result<Records>,
) -> io::Result<(PathBuf, (u64, Hash))> {
    let (first, prev) = start;
    let mut w = SegmentWriter::new(region, first, prev);
    let mut at = first;
    while at < end {
        let want = usize::try_from(end - at)
            .unwrap_or(usize::MAX)
            .min(READ_CHUNK);
        let recs = records(at, want)?;
        if recs.is_empty() {
            return Err(io::Error::other(format!("log record {at} missing")));
        }
        for (seq, rec) in recs.iter().take(want) {
            if *seq != at {
                return Err(io::Error::other(format!(
                    "log record {at} missing (found {seq})"
                )));
            }
            w.push_record(rec).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("record {seq}: {e}"))
            })?;
            at += 1;
        }
    }
    let bytes = w.seal().map_err(io::Error::other)?;
    let path = dir.join(segment_file_name(region, first));
    write_atomically(io, &path, &bytes)?;
    let next = check_segment(&path, &fs::read(&path)?, region, start)?;
    if next.0 != end {
        return Err(io::Error::other(format!(
            "{}: ends before {end}",
            path.display()
        )));
    }
    Ok((path, next))
}

/// The position after the sealed segment `bytes` (read from `path`): its trailer's last seq
/// plus one and head hash.
fn trailer_of(path: &Path, bytes: &[u8]) -> io::Result<(u64, Hash)> {
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
    match read_item(bytes, at) {
        Ok(Item::Trailer(t, _)) => Ok((t.last_seq + 1, t.head_hash)),
        _ => Err(bad("no trailer: not a sealed segment")),
    }
}

/// Checks that `bytes` are a sealed segment of `region` that verifies and continues the chain
/// at `at` (its first seq and the head before it); returns the position after it.
pub fn check_segment(
    path: &Path,
    bytes: &[u8],
    region: &RegionId,
    at: (u64, Hash),
) -> io::Result<(u64, Hash)> {
    let bad = |what: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let (header, _) = read_header(bytes).map_err(|e| bad(format!("header: {e:?}")))?;
    if header.region != *region {
        return Err(bad(format!("a segment of region {}", header.region)));
    }
    if header.first_seq != at.0 || header.prev_hash != at.1 {
        return Err(bad(format!(
            "starts at seq {} after {}, not at {} after {}",
            header.first_seq,
            hex::encode(header.prev_hash),
            at.0,
            hex::encode(at.1)
        )));
    }
    let name = segment_file_name(region, at.0);
    let mut v = shared::log::Verifier::new();
    v.segment(&name, bytes)
        .map_err(|f| bad(format!("does not verify: {f}")))?;
    let summary = v.summary();
    let last = summary
        .last_seq
        .ok_or_else(|| bad("holds no entry".to_string()))?;
    Ok((last + 1, v.head()))
}

/// A node's archive: its sealed segment files, where sealing continues, and which segments it
/// holds (kept in memory, so that neither sealing nor reading lists the directory again).
pub struct Archive {
    dir: PathBuf,
    region: RegionId,
    io: FileIo,
    state: std::sync::Mutex<ArchiveState>,
}

struct ArchiveState {
    /// The next seq to seal and the head it continues from.
    next: (u64, Hash),
    /// What is known of the records past `next`.
    probe: Option<Probe>,
    /// The first seq of every segment held.
    starts: std::collections::BTreeSet<u64>,
    /// The first seq of every segment found damaged (moved aside as `NAME.seg.damaged`) and
    /// not yet fetched again from a peer.
    damaged: std::collections::BTreeSet<u64>,
    /// Where the scrub goes on: the first seq of the next segment it reads.
    scrub_from: u64,
}

/// What follows a segment being repaired.
enum After {
    /// The segment held that starts here.
    Held(u64),
    /// A damaged segment that starts here.
    Damaged(u64),
    /// Nothing: the archive's end, the next seq to seal and the head.
    End((u64, Hash)),
}

/// What a read of a held segment found.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The file does not verify (a byte changed since it was sealed): it was moved aside and
    /// the segment is to be fetched again from a peer.
    #[error("segment {first} is damaged here ({why}); it is being fetched again from a peer")]
    Damaged {
        /// Its first seq.
        first: u64,
        /// What verification found.
        why: String,
    },
    /// Reading it failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<SegmentError> for io::Error {
    fn from(e: SegmentError) -> io::Error {
        match e {
            SegmentError::Io(e) => e,
            d => io::Error::new(io::ErrorKind::InvalidData, d.to_string()),
        }
    }
}

impl Archive {
    /// Opens the archive in `dir` (created if missing): lists its segments once and reads the
    /// last one's trailer.
    pub fn open(dir: &Path, region: &RegionId) -> io::Result<Archive> {
        Archive::open_with(dir, region, FileIo::detect())
    }

    /// [`Archive::open`], writing files with `io`.
    pub fn open_with(dir: &Path, region: &RegionId, io: FileIo) -> io::Result<Archive> {
        fs::create_dir_all(dir)?;
        let next = sealed_until(dir)?;
        let mut starts = std::collections::BTreeSet::new();
        for e in fs::read_dir(dir)? {
            let name = e?.file_name();
            if let Some(first) =
                shared::log::segment::first_seq_from_file_name(&name.to_string_lossy())
            {
                starts.insert(first);
            }
        }
        Ok(Archive {
            dir: dir.to_path_buf(),
            region: region.clone(),
            io,
            state: std::sync::Mutex::new(ArchiveState {
                next,
                probe: None,
                starts,
                damaged: std::collections::BTreeSet::new(),
                scrub_from: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ArchiveState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next seq to seal and the head it continues from.
    pub fn sealed(&self) -> (u64, Hash) {
        self.lock().next
    }

    /// Segments held.
    pub fn segments(&self) -> usize {
        self.lock().starts.len()
    }

    /// Seals every segment that `records` (stored `(seq, record)` pairs from a seq, at most so
    /// many) can supply below `available_until`, cut by `rule` and at the seal points in
    /// `points` (the replicated `SealSegment` boundaries). Each file is written atomically and
    /// read back. Returns the files written. Blocking file I/O; call from one task at a time.
    pub fn seal(
        &self,
        rule: SegmentRule,
        points: &std::collections::BTreeSet<u64>,
        available_until: u64,
        records: impl Fn(u64, usize) -> io::Result<Records>,
    ) -> io::Result<Vec<PathBuf>> {
        fs::create_dir_all(&self.dir)?;
        let mut written = Vec::new();
        while let Some(end) = self.next_cut(rule, points, available_until, &records)? {
            let start = self.sealed();
            let (path, next) =
                write_segment(self.io, &self.dir, &self.region, start, end, &records)?;
            let mut st = self.lock();
            st.starts.insert(start.0);
            st.next = next;
            st.probe = None;
            written.push(path);
        }
        Ok(written)
    }

    /// Where the open segment ends, if it can be cut now.
    fn next_cut(
        &self,
        rule: SegmentRule,
        points: &std::collections::BTreeSet<u64>,
        available_until: u64,
        records: &impl Fn(u64, usize) -> io::Result<Records>,
    ) -> io::Result<Option<u64>> {
        let (next, head) = self.sealed();
        let by_count = next + rule.entries.max(1);
        let end = points
            .range(next + 1..)
            .next()
            .map_or(by_count, |p| (*p).min(by_count));
        let limit = end.min(available_until);
        let mut probe = match self.lock().probe {
            Some(p) if p.from == next => p,
            _ => Probe {
                from: next,
                until: next,
                bytes: (SegmentWriter::new(&self.region, next, head).byte_len() + TRAILER_LEN)
                    as u64,
            },
        };
        let mut cut = None;
        'read: while probe.until < limit {
            let want = usize::try_from(limit - probe.until)
                .unwrap_or(usize::MAX)
                .min(READ_CHUNK);
            let recs = records(probe.until, want)?;
            if recs.is_empty() {
                return Err(io::Error::other(format!(
                    "log record {} missing",
                    probe.until
                )));
            }
            for (seq, rec) in recs.iter().take(want) {
                if *seq != probe.until {
                    return Err(io::Error::other(format!(
                        "log record {} missing (found {seq})",
                        probe.until
                    )));
                }
                let bytes = probe.bytes + rec.len() as u64;
                if probe.until > next && bytes > rule.bytes_max {
                    cut = Some(probe.until);
                    break 'read;
                }
                probe.bytes = bytes;
                probe.until += 1;
            }
        }
        self.lock().probe = Some(probe);
        Ok(cut.or((probe.until == end).then_some(end)))
    }

    /// Adds a segment fetched from a peer, which must verify and continue the archive exactly
    /// where it ends. Blocking file I/O.
    pub fn adopt(&self, bytes: &[u8]) -> io::Result<PathBuf> {
        let at = self.sealed();
        let path = self.dir.join(segment_file_name(&self.region, at.0));
        let next = check_segment(&path, bytes, &self.region, at)?;
        write_atomically(self.io, &path, bytes)?;
        let on_disk = check_segment(&path, &fs::read(&path)?, &self.region, at)?;
        if on_disk != next {
            return Err(io::Error::other(format!(
                "{}: differs when read back",
                path.display()
            )));
        }
        let mut st = self.lock();
        st.starts.insert(at.0);
        st.next = next;
        Ok(path)
    }

    /// The bytes of the segment that starts at `first_seq`, if held, verified: a peer is never
    /// handed a damaged file.
    pub fn segment_bytes(&self, first_seq: u64) -> Result<Option<Vec<u8>>, SegmentError> {
        if !self.lock().starts.contains(&first_seq) {
            return Ok(None);
        }
        self.verified(first_seq).map(Some)
    }

    /// The bytes of the held segment `first`, once they verify on their own (the chain from
    /// the header's `prev_hash` through every record to the trailer's head, and the Merkle
    /// root). A file that does not is moved aside (`NAME.seg.damaged`, kept for a post-mortem)
    /// and listed in [`Archive::damaged`].
    fn verified(&self, first: u64) -> Result<Vec<u8>, SegmentError> {
        let name = segment_file_name(&self.region, first);
        let path = self.dir.join(&name);
        let bytes = fs::read(&path)?;
        let mut v = shared::log::Verifier::new();
        let why = match v.segment(&name, &bytes) {
            Ok(()) => match read_header(&bytes) {
                Ok((h, _)) if h.first_seq == first && h.region == self.region => return Ok(bytes),
                Ok((h, _)) => format!("its header says seq {} of {}", h.first_seq, h.region),
                Err(e) => format!("header: {e:?}"),
            },
            Err(f) => f.to_string(),
        };
        let aside = self.dir.join(format!("{name}.damaged"));
        fs::rename(&path, &aside)?;
        let mut st = self.lock();
        st.starts.remove(&first);
        st.damaged.insert(first);
        tracing::error!(file = %path.display(), moved_to = %aside.display(), %why, "a sealed segment does not verify: moved aside, to be fetched again from a peer");
        Err(SegmentError::Damaged { first, why })
    }

    /// The first seq of every segment found damaged and not yet repaired.
    pub fn damaged(&self) -> Vec<u64> {
        self.lock().damaged.iter().copied().collect()
    }

    /// Reads held segments from where the last call stopped, at least one and until `budget`
    /// bytes are read, wrapping around at the end: over time every file is checked against
    /// its hashes, read or not. Returns the bytes read and the segments found damaged.
    pub fn scrub(&self, budget: u64) -> io::Result<(u64, Vec<u64>)> {
        let (mut read, mut found) = (0u64, Vec::new());
        let mut seen = std::collections::BTreeSet::new();
        loop {
            let next = {
                let st = self.lock();
                st.starts
                    .range(st.scrub_from..)
                    .next()
                    .or_else(|| st.starts.iter().next())
                    .copied()
            };
            let Some(first) = next else {
                break;
            };
            if !seen.insert(first) {
                break;
            }
            self.lock().scrub_from = first + 1;
            match self.verified(first) {
                Ok(bytes) => read += bytes.len() as u64,
                Err(SegmentError::Damaged { .. }) => found.push(first),
                Err(SegmentError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(SegmentError::Io(e)) => return Err(e),
            }
            if read >= budget {
                break;
            }
        }
        Ok((read, found))
    }

    /// Puts back the damaged segment `first` from `bytes` fetched from a peer: they must
    /// verify, start where the segment before it ends (or at genesis) and end where the
    /// segment after it starts (or where the archive ends). Blocking file I/O.
    pub fn repair(&self, first: u64, bytes: &[u8]) -> io::Result<PathBuf> {
        let (before, after) = {
            let st = self.lock();
            if !st.damaged.contains(&first) {
                return Err(io::Error::other(format!(
                    "segment {first} is not damaged here"
                )));
            }
            // What follows: the next segment held, unless a damaged one comes first (whose
            // start is checked against this one's end when it is repaired in turn).
            let held = st.starts.range(first + 1..).next().copied();
            let damaged = st.damaged.range(first + 1..).next().copied();
            let after = match (held, damaged) {
                (Some(h), Some(d)) if d < h => After::Damaged(d),
                (None, Some(d)) => After::Damaged(d),
                (Some(h), _) => After::Held(h),
                (None, None) => After::End(st.next),
            };
            (st.starts.range(..first).next_back().copied(), after)
        };
        let name = |f: u64| self.dir.join(segment_file_name(&self.region, f));
        let at = match before {
            Some(b) => trailer_of(&name(b), &fs::read(name(b))?)?,
            None if first == 0 => (0, genesis()),
            None => {
                return Err(io::Error::other(format!(
                    "segment {first}: no segment before it to check its start against"
                )));
            }
        };
        if at.0 != first {
            return Err(io::Error::other(format!(
                "segment {first}: the segment before it ends at {}",
                at.0
            )));
        }
        let path = name(first);
        let next = check_segment(&path, bytes, &self.region, at)?;
        let expected = match after {
            After::Held(a) => {
                let b = fs::read(name(a))?;
                let (h, _) = read_header(&b).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("header: {e:?}"))
                })?;
                (h.first_seq, h.prev_hash)
            }
            After::Damaged(d) => (d, next.1),
            After::End(end) => end,
        };
        if next != expected {
            return Err(io::Error::other(format!(
                "segment {first} from a peer ends at {} but this archive goes on from {}",
                next.0, expected.0
            )));
        }
        write_atomically(self.io, &path, bytes)?;
        check_segment(&path, &fs::read(&path)?, &self.region, at)?;
        let mut st = self.lock();
        st.damaged.remove(&first);
        st.starts.insert(first);
        Ok(path)
    }

    /// Sealed records from `from` on, at most `max`, all from the one segment that holds
    /// `from`; `None` when no segment here holds it. The segment is verified first: a
    /// damaged one is an error, never wrong records.
    pub fn read(&self, from: u64, max: usize) -> Result<Option<Records>, SegmentError> {
        let first = {
            let st = self.lock();
            if from >= st.next.0 {
                return Ok(None);
            }
            if let Some(d) = st.damaged.range(..=from).next_back()
                && st.starts.range(..=from).next_back().is_none_or(|s| s < d)
            {
                return Err(SegmentError::Damaged {
                    first: *d,
                    why: "found before".into(),
                });
            }
            match st.starts.range(..=from).next_back() {
                Some(f) => *f,
                None => return Ok(None),
            }
        };
        let path = self.dir.join(segment_file_name(&self.region, first));
        let bytes = self.verified(first)?;
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {what}", path.display()),
            )
        };
        let (header, mut at) = read_header(&bytes).map_err(|_| bad("no header"))?;
        let mut seq = header.first_seq;
        let mut out = Vec::new();
        loop {
            match read_item(&bytes, at) {
                Ok(Item::Record(r)) => {
                    if seq >= from {
                        out.push((seq, bytes[r.offset..r.end].to_vec()));
                        if out.len() >= max {
                            break;
                        }
                    }
                    seq += 1;
                    at = r.end;
                }
                Ok(Item::Trailer(..)) => break,
                Err(_) => return Err(bad("malformed record").into()),
            }
        }
        // A segment whose records end before `from` is not the one that holds it: a gap.
        Ok((!out.is_empty()).then_some(out))
    }
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

    /// `records` from seq `from`, at most `max`, as a store would give them.
    fn slice(records: &Records, from: u64, max: usize) -> io::Result<Records> {
        Ok(records
            .iter()
            .skip(from as usize)
            .take(max)
            .cloned()
            .collect())
    }

    fn seal(io: FileIo, dir: &Path, until: u64) -> Vec<PathBuf> {
        seal_at(io, dir, until, &[])
    }

    fn seal_at(io: FileIo, dir: &Path, until: u64, points: &[u64]) -> Vec<PathBuf> {
        let (region, records) = sample_records();
        let points = points.iter().copied().collect();
        let archive = Archive::open_with(dir, &region, io).unwrap();
        archive
            .seal(300.into(), &points, until, |from, max| {
                slice(&records, from, max)
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

    #[test]
    fn sealed_records_are_read_back_from_the_segment_that_holds_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("segments");
        seal(FileIo::Std, &dir, 1_000);
        let (region, records) = sample_records();
        // Reopened: the archive finds its segments and position without sealing anything.
        let archive = Archive::open(&dir, &region).unwrap();
        assert_eq!(archive.sealed().0, 900);
        assert_eq!(archive.segments(), 3);
        // From inside the second segment: up to its end, never past it.
        let got = archive.read(450, 1_000).unwrap().unwrap();
        assert_eq!(got.first().map(|r| r.0), Some(450));
        assert_eq!(got.len(), 150, "450..600");
        assert_eq!(got, records[450..600].to_vec());
        assert_eq!(archive.read(899, 5).unwrap().unwrap().len(), 1);
        assert_eq!(
            archive.read(10, 3).unwrap().unwrap(),
            records[10..13].to_vec()
        );
        // Past the sealed end: none here.
        assert!(archive.read(900, 10).unwrap().is_none());
    }

    /// Rot in a sealed file: a read refuses it (never wrong records), the scrub finds it
    /// unread, and only a copy that verifies and joins its neighbours is put back.
    #[test]
    fn a_damaged_segment_is_refused_found_by_the_scrub_and_repaired_only_from_a_good_copy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("segments");
        let files = seal(FileIo::Std, &dir, 1_000);
        assert_eq!(files.len(), 3);
        let good: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
        let (region, records) = sample_records();
        let flip = |f: &Path, at: usize| {
            let mut b = fs::read(f).unwrap();
            b[at] ^= 0x01;
            fs::write(f, b).unwrap();
        };
        // One bit in a record of the second segment (300..600), one in the third's trailer.
        flip(&files[1], good[1].len() / 2);
        flip(&files[2], good[2].len() - 3);
        let archive = Archive::open(&dir, &region).unwrap();
        let e = archive.read(450, 10).unwrap_err();
        assert!(matches!(e, SegmentError::Damaged { first: 300, .. }), "{e}");
        assert_eq!(archive.damaged(), [300]);
        assert!(!files[1].exists() && files[1].with_extension("seg.damaged").exists());
        // Asked again: still refused, from memory.
        assert!(matches!(
            archive.read(301, 1),
            Err(SegmentError::Damaged { first: 300, .. })
        ));
        // The first segment is whole and still served.
        assert_eq!(archive.read(0, 2).unwrap().unwrap(), records[0..2].to_vec());
        // Nobody read the third: the scrub finds it.
        let (read, found) = archive.scrub(u64::MAX).unwrap();
        assert_eq!(found, [600]);
        assert_eq!(read, good[0].len() as u64, "only the whole one is counted");
        assert_eq!(archive.damaged(), [300, 600]);
        // A peer's copy must be the segment that belongs there.
        assert!(archive.repair(300, &good[2]).is_err(), "another segment");
        let mut bad = good[1].clone();
        bad[10] ^= 1;
        assert!(archive.repair(300, &bad).is_err(), "a damaged copy");
        assert!(archive.repair(0, &good[0]).is_err(), "not damaged here");
        // In order: the start of 600 is checked against the end of 300, once 300 is back.
        let e = archive.repair(600, &good[2]).unwrap_err();
        assert!(e.to_string().contains("ends at 300"), "{e}");
        archive.repair(300, &good[1]).unwrap();
        archive.repair(600, &good[2]).unwrap();
        assert!(archive.damaged().is_empty());
        assert_eq!(
            archive.read(450, 150).unwrap().unwrap(),
            records[450..600].to_vec()
        );
        assert_eq!(fs::read(&files[2]).unwrap(), good[2]);
        assert_eq!(archive.scrub(u64::MAX).unwrap().1, Vec::<u64>::new());
    }

    #[test]
    fn a_fetched_segment_is_adopted_only_where_it_continues_the_chain_and_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let (source, sink) = (tmp.path().join("source"), tmp.path().join("sink"));
        let files = seal(FileIo::Std, &source, 1_000);
        let (region, _) = sample_records();
        let archive = Archive::open_with(&sink, &region, FileIo::Std).unwrap();
        let bytes: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
        // The second segment cannot come first.
        let err = archive.adopt(&bytes[1]).unwrap_err();
        assert!(err.to_string().contains("starts at seq 300"), "{err}");
        // A damaged first segment is refused (a byte of a record flipped).
        let mut damaged = bytes[0].clone();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 1;
        assert!(archive.adopt(&damaged).is_err());
        assert_eq!(archive.sealed().0, 0, "nothing adopted");
        // In order, each is taken; the result is the source's archive byte for byte.
        for b in &bytes {
            archive.adopt(b).unwrap();
        }
        assert_eq!(archive.sealed(), sealed_until(&source).unwrap());
        for f in &files {
            assert_eq!(
                fs::read(f).unwrap(),
                fs::read(sink.join(f.file_name().unwrap())).unwrap()
            );
        }
        assert_eq!(
            archive.segment_bytes(300).unwrap().as_deref(),
            Some(bytes[1].as_slice())
        );
        assert!(archive.segment_bytes(301).unwrap().is_none());
    }

    #[test]
    fn segments_end_at_the_byte_cap_and_every_replica_cuts_them_alike_however_it_ticks() {
        let (region, records) = sample_records();
        let rule = SegmentRule {
            entries: 300,
            bytes_max: 4_096,
        };
        let source = |from: u64, max: usize| slice(&records, from, max);
        let none = std::collections::BTreeSet::new();
        let tmp = tempfile::tempdir().unwrap();
        // One node seals everything at once; another a few records at a time, as they apply.
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let at_once = Archive::open_with(&a, &region, FileIo::Std).unwrap();
        at_once.seal(rule, &none, 1_000, source).unwrap();
        let ticking = Archive::open_with(&b, &region, FileIo::Std).unwrap();
        for until in (7..1_000).step_by(7).chain([1_000]) {
            ticking.seal(rule, &none, until, source).unwrap();
        }
        assert_eq!(at_once.sealed(), ticking.sealed());
        let files = |d: &Path| {
            let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .map(|p| {
                    (
                        p.file_name().unwrap().to_string_lossy().into_owned(),
                        fs::read(&p).unwrap(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        let (fa, fb) = (files(&a), files(&b));
        assert_eq!(fa, fb, "the same segments, byte for byte");
        assert!(fa.len() > 5, "{} segments", fa.len());
        // Every segment is within the cap unless it holds a single record; the next record
        // would have taken it over.
        for (name, bytes) in &fa {
            let (header, _) = read_header(bytes).unwrap();
            let count = at_once
                .read(header.first_seq, 1_000)
                .unwrap()
                .unwrap()
                .len();
            assert!(
                bytes.len() as u64 <= rule.bytes_max || count == 1,
                "{name}: {} bytes, {count} records",
                bytes.len()
            );
        }
        let summary = shared::log::verify_path(&a, None).unwrap().unwrap();
        assert_eq!(summary.entries, at_once.sealed().0);
        assert!(summary.entries > 900, "{}", summary.entries);
    }
}
