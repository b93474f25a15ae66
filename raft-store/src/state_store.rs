//! openraft's state machine on RocksDB, generic over the application's [`Machine`].
//!
//! Column families:
//! - `sm_rows`: the machine's rows (key → value), as it reports them after each command;
//! - `fin_log`: financial-log records (seq big-endian → record bytes) not yet archived: the
//!   application seals records into segment files of its own and then forgets them here
//!   ([`StateStore::forget_log_before`]), so this family holds a bounded tail, not the history;
//! - `sm_meta`: `applied` (last applied log id), `membership`, `snapshot_file` (the current
//!   snapshot's meta and file name).
//!
//! **Atomic apply.** For a batch of entries openraft hands over, the rows, the log records and
//! the last-applied log id all go into one `WriteBatch`: a crash at any moment leaves either all
//! of the batch or none of it. The write is not synced: the entries are durable in the Raft log
//! already, and the next synced write of the database (log appends share its write-ahead log)
//! makes it durable; a crash before that loses whole batches from the end, applied again. On restart, the machine is
//! rebuilt from `sm_rows`, and openraft re-applies whatever the log holds past `applied`.
//!
//! **Snapshots are files** in the store's snapshot directory, written and read as streams
//! ([`SnapshotFile`]): the meta, every row, and the financial-log records still in `fin_log`
//! (from [`StateStore::first_log_seq`] on), then a CRC-32 of all of it. Their size follows the
//! state and the unarchived tail, not the history. Installing one replaces the rows and the
//! records; a node that installed one holds the records from the snapshot's first record on,
//! and the application fetches the archived ones below it from a peer.

use std::fmt::Debug;
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftTypeConfig, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Column family of the machine's rows.
pub const CF_ROWS: &str = "sm_rows";
/// Column family of financial-log records.
pub const CF_FIN_LOG: &str = "fin_log";
/// Column family of applied state and the current snapshot.
pub const CF_SM_META: &str = "sm_meta";

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// Written (empty) with a sync by [`StateStore::sync`].
const KEY_SYNCED: &[u8] = b"synced";
/// Where snapshots lived when they were one RocksDB value (removed on open).
const KEY_SNAPSHOT_LEGACY: &[u8] = b"snapshot";
const KEY_SNAPSHOT_FILE: &[u8] = b"snapshot_file";
const SNAPSHOT_MAGIC: &[u8; 8] = b"BUDGSNP2";
const SNAPSHOT_EXT: &str = "snap";
const RECEIVING_PREFIX: &str = "receiving-";
/// Tags before each pair of a snapshot file, and its end.
const TAG_ROW: u8 = 1;
const TAG_RECORD: u8 = 2;
const TAG_END: u8 = 0;
/// Largest key or value a snapshot may hold (records are ≤ 16 MiB).
const PAIR_PART_MAX: usize = 64 << 20;

/// Key-value pairs, owned.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// What applying one command produced.
pub struct MachineApplied<R> {
    /// The reply to the client.
    pub reply: R,
    /// Rows to write (`Some`) or delete (`None`).
    pub rows: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Financial-log records appended: `(seq, record bytes)`.
    pub log_records: Vec<(u64, Vec<u8>)>,
}

/// The application's state machine, as the store needs it: deterministic, in memory, and able
/// to say which rows each command changed.
pub trait Machine<C: RaftTypeConfig>: Send + Sync + 'static {
    /// Applies one command committed at `log_id`.
    fn apply(&mut self, log_id: &LogId<C::NodeId>, command: &C::D) -> MachineApplied<C::R>;
    /// The reply for entries that carry no command (blank and membership entries).
    fn no_command_reply(&self) -> C::R;
    /// Replaces the state with one rebuilt from `rows` (all rows, any order), the state after
    /// the entry at index `applied` (0: none).
    fn load(&mut self, rows: Vec<(Vec<u8>, Vec<u8>)>, applied: u64) -> Result<(), AnyError>;
}

/// A snapshot's bytes: a file in the store's snapshot directory, read and written by openraft
/// as a stream (`SnapshotData`). Declare the type config with `SnapshotData = SnapshotFile`.
///
/// Every operation finishes in the poll that starts it: reads and writes are positioned
/// (`pread`/`pwrite` at the position this handle keeps) and a seek only sets that position.
/// openraft's receiving side (`Streaming::receive`) remembers the offset it expects next and
/// seeks only when a chunk starts elsewhere; over `tokio::fs::File`, whose seek runs on a
/// blocking thread, an RPC dropped while its seek was pending moved the file but not that
/// offset, and the next chunk was written at the wrong place — a follower then failed to
/// install the snapshot and stopped (`jepsen run --nemesis all --seed 1`, ap-1).
///
/// A snapshot may also live in memory ([`SnapshotFile::in_memory`]): the simulation keeps its
/// snapshots on its simulated disk and streams them through openraft as the real store does.
pub struct SnapshotFile {
    body: Body,
    pos: u64,
    path: PathBuf,
}

enum Body {
    File(fs::File),
    Memory(Vec<u8>),
}

impl SnapshotFile {
    fn new(file: fs::File, path: PathBuf) -> Self {
        SnapshotFile {
            body: Body::File(file),
            pos: 0,
            path,
        }
    }

    /// A snapshot held in memory (empty to receive one): [`encode_snapshot`]'s bytes.
    pub fn in_memory(bytes: Vec<u8>) -> Self {
        SnapshotFile {
            body: Body::Memory(bytes),
            pos: 0,
            path: PathBuf::new(),
        }
    }

    /// The bytes of a snapshot held in memory (`None` for a file).
    pub fn into_memory(self) -> Option<Vec<u8>> {
        match self.body {
            Body::Memory(bytes) => Some(bytes),
            Body::File(_) => None,
        }
    }

    /// The file's path (empty for a snapshot in memory).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn len(&self) -> io::Result<u64> {
        match &self.body {
            Body::File(f) => Ok(f.metadata()?.len()),
            Body::Memory(b) => Ok(b.len() as u64),
        }
    }
}

impl Debug for SnapshotFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.body {
            Body::File(_) => write!(f, "SnapshotFile({})", self.path.display()),
            Body::Memory(b) => write!(f, "SnapshotFile(memory, {} bytes)", b.len()),
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let pos = this.pos;
        let n = match &this.body {
            Body::File(f) => match crate::blocking(|| f.read_at(buf.initialize_unfilled(), pos)) {
                Ok(n) => {
                    buf.advance(n);
                    n
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Poll::Ready(Err(e)),
            },
            Body::Memory(b) => {
                let start = usize::try_from(pos).unwrap_or(usize::MAX).min(b.len());
                let n = buf.remaining().min(b.len() - start);
                buf.put_slice(&b[start..start + n]);
                n
            }
        };
        this.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let pos = this.pos;
        let n = match &mut this.body {
            Body::File(f) => crate::blocking(|| f.write_at(buf, pos))?,
            Body::Memory(b) => {
                let start = usize::try_from(pos)
                    .map_err(|_| io::Error::other("a snapshot in memory past usize"))?;
                if b.len() < start {
                    b.resize(start, 0);
                }
                let overlap = (b.len() - start).min(buf.len());
                b[start..start + overlap].copy_from_slice(&buf[..overlap]);
                b.extend_from_slice(&buf[overlap..]);
                buf.len()
            }
        };
        this.pos += n as u64;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The end of a received stream: its bytes reach the disk before it is installed.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.get_mut().body {
            Body::File(f) => Poll::Ready(crate::blocking(|| f.sync_data())),
            Body::Memory(_) => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let (base, delta) = match position {
            io::SeekFrom::Start(n) => {
                this.pos = n;
                return Ok(());
            }
            io::SeekFrom::Current(d) => (this.pos, d),
            io::SeekFrom::End(d) => (this.len()?, d),
        };
        this.pos = base.checked_add_signed(delta).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

/// What the last snapshot build measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Bytes of the file.
    pub bytes: u64,
    /// Rows in it.
    pub rows: u64,
    /// Financial-log records in it.
    pub records: u64,
    /// Microseconds the build took (rows copied, file written and synced).
    pub build_us: u64,
    /// The index of the last log entry it covers.
    pub index: u64,
}

struct Inner<C: RaftTypeConfig, M> {
    machine: M,
    applied: Option<LogId<C::NodeId>>,
    membership: StoredMembership<C::NodeId, C::Node>,
    last_build: Option<SnapshotStats>,
}

/// The state machine store of one node. Cheap to clone: clones share the state.
pub struct StateStore<C: RaftTypeConfig, M> {
    db: Arc<DB>,
    snapshot_dir: Arc<PathBuf>,
    inner: Arc<Mutex<Inner<C, M>>>,
    receiving: Arc<AtomicU64>,
    /// Held while the current-snapshot pointer is read and its file opened, or the pointer
    /// moved and the files it no longer names removed: a file is never removed between a
    /// reader's look at the pointer and its open (an open handle outlives the removal).
    files: Arc<Mutex<()>>,
    observer: Option<crate::SyncObserver>,
    /// Set when a write of the machine failed: RocksDB's write-ahead log is then in an error
    /// state, and writing to it again trips an assertion in builds that keep them (Debian's
    /// librocksdb: SIGABRT); [`StateStore::sync`] refuses instead.
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl<C: RaftTypeConfig, M> Clone for StateStore<C, M> {
    fn clone(&self) -> Self {
        StateStore {
            db: self.db.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            inner: self.inner.clone(),
            receiving: self.receiving.clone(),
            files: self.files.clone(),
            observer: self.observer.clone(),
            failed: self.failed.clone(),
        }
    }
}

/// The current snapshot's pointer, and the result of opening the file it names.
type Opened<C> = (SnapshotPointer<C>, io::Result<fs::File>);

/// What `sm_meta` says of the current snapshot.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapshotPointer<C: RaftTypeConfig> {
    meta: SnapshotMeta<C::NodeId, C::Node>,
    /// The file's name in the snapshot directory.
    file: String,
}

/// The head of a snapshot file.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapshotHead<C: RaftTypeConfig> {
    meta: SnapshotMeta<C::NodeId, C::Node>,
}

type SResult<C, T> = Result<T, StorageError<<C as RaftTypeConfig>::NodeId>>;
type Meta<C> = SnapshotMeta<<C as RaftTypeConfig>::NodeId, <C as RaftTypeConfig>::Node>;

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

fn io_read<C: RaftTypeConfig>(e: impl std::error::Error + 'static) -> StorageError<C::NodeId> {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn io_write<C: RaftTypeConfig>(e: impl std::error::Error + 'static) -> StorageError<C::NodeId> {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn bad_data(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Writes through to `inner` and keeps a CRC-32 of everything written.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }

    fn put_len(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len()).map_err(|_| bad_data("a snapshot part over 4 GiB"))?;
        self.put(&len.to_be_bytes())?;
        self.put(bytes)
    }

    fn pair(&mut self, tag: u8, k: &[u8], v: &[u8]) -> io::Result<()> {
        self.put(&[tag])?;
        self.put_len(k)?;
        self.put_len(v)
    }
}

/// Reads from `inner` and keeps a CRC-32 of everything read.
struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> CrcReader<R> {
    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0; n];
        self.inner.read_exact(&mut out)?;
        self.crc.update(&out);
        Ok(out)
    }

    fn take_array<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut out = [0; N];
        self.inner.read_exact(&mut out)?;
        self.crc.update(&out);
        Ok(out)
    }

    fn take_len(&mut self) -> io::Result<Vec<u8>> {
        let len = u32::from_be_bytes(self.take_array::<4>()?) as usize;
        if len > PAIR_PART_MAX {
            return Err(bad_data(format!(
                "a part of {len} bytes (at most {PAIR_PART_MAX})"
            )));
        }
        self.take(len)
    }
}

/// A snapshot read back whole: its meta, rows and records (seq big-endian → record).
pub struct SnapshotContents<C: RaftTypeConfig> {
    /// What openraft knows it by.
    pub meta: SnapshotMeta<C::NodeId, C::Node>,
    /// The machine's rows.
    pub rows: Rows,
    /// The financial-log records it carries.
    pub records: Rows,
}

/// A snapshot in this store's format, in memory: what a build writes to its file.
pub fn encode_snapshot<C: RaftTypeConfig>(
    meta: &SnapshotMeta<C::NodeId, C::Node>,
    rows: &[(Vec<u8>, Vec<u8>)],
    records: &[(Vec<u8>, Vec<u8>)],
) -> io::Result<Vec<u8>> {
    let pairs = |v: &'_ [(Vec<u8>, Vec<u8>)]| {
        v.iter()
            .map(|(k, v)| Ok((k.clone().into_boxed_slice(), v.clone().into_boxed_slice())))
            .collect::<Vec<_>>()
    };
    let (out, _, _) = write_snapshot::<C, _>(Vec::new(), meta, pairs(rows), pairs(records))?;
    Ok(out)
}

/// The id of a snapshot of the state after `applied` whose first financial-log record is
/// `first`: the first record is part of it, since two builds at one index may differ in it.
pub fn snapshot_id<C: RaftTypeConfig>(
    applied: Option<&LogId<C::NodeId>>,
    first: Option<u64>,
) -> String {
    let id = match applied {
        Some(l) => format!("{}-{}", l.leader_id, l.index),
        None => "empty".to_string(),
    };
    match first {
        Some(f) => format!("{id}-r{f}"),
        None => id,
    }
}

/// Reads a snapshot in this store's format, checking its framing and CRC.
pub fn decode_snapshot<C: RaftTypeConfig>(bytes: &[u8]) -> io::Result<SnapshotContents<C>> {
    read_snapshot(bytes)
}

type Pair = (Box<[u8]>, Box<[u8]>);

/// Writes a snapshot to `out`: magic, head, rows, records, end, CRC; with the counts written.
fn write_snapshot<C: RaftTypeConfig, W: Write>(
    out: W,
    meta: &Meta<C>,
    rows: impl IntoIterator<Item = io::Result<Pair>>,
    records: impl IntoIterator<Item = io::Result<Pair>>,
) -> io::Result<(W, u64, u64)> {
    let head = serde_json::to_vec(&SnapshotHead::<C> { meta: meta.clone() })?;
    let mut w = CrcWriter {
        inner: out,
        crc: crc32fast::Hasher::new(),
    };
    w.put(SNAPSHOT_MAGIC)?;
    w.put_len(&head)?;
    let mut n_rows = 0u64;
    for item in rows {
        let (k, v) = item?;
        w.pair(TAG_ROW, &k, &v)?;
        n_rows += 1;
    }
    let mut n_records = 0u64;
    for item in records {
        let (k, v) = item?;
        w.pair(TAG_RECORD, &k, &v)?;
        n_records += 1;
    }
    w.put(&[TAG_END])?;
    let crc = w.crc.clone().finalize();
    let mut out = w.inner;
    out.write_all(&crc.to_be_bytes())?;
    Ok((out, n_rows, n_records))
}

/// Reads a whole snapshot file from its start, checking its framing and CRC.
fn read_snapshot_file<C: RaftTypeConfig>(mut file: fs::File) -> io::Result<SnapshotContents<C>> {
    file.rewind()?;
    read_snapshot(BufReader::with_capacity(1 << 20, file))
}

fn read_snapshot<C: RaftTypeConfig>(input: impl Read) -> io::Result<SnapshotContents<C>> {
    let mut r = CrcReader {
        inner: input,
        crc: crc32fast::Hasher::new(),
    };
    if r.take_array::<8>()? != *SNAPSHOT_MAGIC {
        return Err(bad_data("not a snapshot file of this format (magic)"));
    }
    let head: SnapshotHead<C> =
        serde_json::from_slice(&r.take_len()?).map_err(|e| bad_data(format!("head: {e}")))?;
    let (mut rows, mut records) = (Vec::new(), Vec::new());
    loop {
        match r.take_array::<1>()?[0] {
            TAG_END => break,
            TAG_ROW => rows.push((r.take_len()?, r.take_len()?)),
            TAG_RECORD => {
                let k = r.take_len()?;
                if k.len() != 8 {
                    return Err(bad_data("a record key is not a seq"));
                }
                records.push((k, r.take_len()?));
            }
            t => return Err(bad_data(format!("unknown tag {t}"))),
        }
    }
    let computed = r.crc.clone().finalize();
    let mut stored = [0u8; 4];
    r.inner.read_exact(&mut stored)?;
    if u32::from_be_bytes(stored) != computed {
        return Err(bad_data("CRC mismatch: the snapshot is damaged"));
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest)? != 0 {
        return Err(bad_data("bytes after the end"));
    }
    Ok(SnapshotContents {
        meta: head.meta,
        rows,
        records,
    })
}

/// Syncs a directory, so that a rename in it survives a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// A file name made of a snapshot id (which openraft formats with characters of its own).
fn file_name_for(id: &str) -> String {
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("snap-{clean}.{SNAPSHOT_EXT}")
}

impl<C, M> StateStore<C, M>
where
    C: RaftTypeConfig<Entry = Entry<C>, SnapshotData = SnapshotFile>,
    C::D: Debug,
    M: Machine<C>,
{
    /// Opens the store on `db`, rebuilding `machine` from the stored rows; snapshots are files
    /// in `snapshot_dir` (created if missing; files there that are not the current snapshot
    /// are removed).
    pub fn open(db: Arc<DB>, snapshot_dir: &Path, mut machine: M) -> SResult<C, Self> {
        fs::create_dir_all(snapshot_dir).map_err(io_write::<C>)?;
        let rows = scan(&db, CF_ROWS).map_err(io_read::<C>)?;
        let get = |key: &[u8]| db.get_cf(cf(&db, CF_SM_META), key).map_err(io_read::<C>);
        let applied: Option<LogId<C::NodeId>> = match get(KEY_APPLIED)? {
            Some(v) => serde_json::from_slice(&v).map_err(io_read::<C>)?,
            None => None,
        };
        machine
            .load(rows, applied.as_ref().map_or(0, |l| l.index))
            .map_err(StorageIOError::read_state_machine)?;
        let membership = match get(KEY_MEMBERSHIP)? {
            Some(v) => serde_json::from_slice(&v).map_err(io_read::<C>)?,
            None => StoredMembership::default(),
        };
        // A snapshot stored whole in RocksDB by an earlier version: openraft builds a new one.
        if get(KEY_SNAPSHOT_LEGACY)?.is_some() {
            db.delete_cf(cf(&db, CF_SM_META), KEY_SNAPSHOT_LEGACY)
                .map_err(io_write::<C>)?;
        }
        let current = match get(KEY_SNAPSHOT_FILE)? {
            Some(v) => {
                let p: SnapshotPointer<C> = serde_json::from_slice(&v).map_err(io_read::<C>)?;
                Some(p.file)
            }
            None => None,
        };
        remove_snapshot_files(snapshot_dir, current.as_deref(), true).map_err(io_write::<C>)?;
        Ok(StateStore {
            db,
            snapshot_dir: Arc::new(snapshot_dir.to_path_buf()),
            inner: Arc::new(Mutex::new(Inner {
                machine,
                applied,
                membership,
                last_build: None,
            })),
            receiving: Arc::new(AtomicU64::new(0)),
            failed: Arc::default(),
            files: Arc::new(Mutex::new(())),
            observer: None,
        })
    }

    /// Reports the duration of every synced apply batch to `observer`.
    pub fn with_sync_observer(mut self, observer: crate::SyncObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn files_lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current snapshot's pointer and its file, opened; `Ok(None)` when there is no pointer,
    /// `Err(NotFound)` when the file it names is gone.
    fn open_current(&self) -> SResult<C, Option<Opened<C>>> {
        let _files = self.files_lock();
        let Some(stored) = self
            .db
            .get_cf(cf(&self.db, CF_SM_META), KEY_SNAPSHOT_FILE)
            .map_err(io_read::<C>)?
        else {
            return Ok(None);
        };
        let pointer: SnapshotPointer<C> = serde_json::from_slice(&stored).map_err(io_read::<C>)?;
        let file = fs::File::open(self.snapshot_dir.join(&pointer.file));
        Ok(Some((pointer, file)))
    }

    fn lock(&self) -> MutexGuard<'_, Inner<C, M>> {
        // A panic while holding the lock means a broken invariant: the node must stop, and a
        // poisoned lock makes every later access stop it too.
        self.inner
            .lock()
            .unwrap_or_else(|_| panic!("state machine lock poisoned by an earlier panic"))
    }

    /// The index of the last log entry applied to the machine, exactly (openraft's published
    /// metrics can trail it for a moment).
    pub fn applied_index(&self) -> u64 {
        self.lock().applied.as_ref().map_or(0, |l| l.index)
    }

    /// Runs `f` on the machine (for reads by the server).
    pub fn read<T>(&self, f: impl FnOnce(&M) -> T) -> T {
        f(&self.lock().machine)
    }

    /// Runs `f` on the machine and the index of the last entry applied to it, both read at one
    /// moment (for answers that name the index they reflect).
    pub fn read_applied<T>(&self, f: impl FnOnce(&M, u64) -> T) -> T {
        let inner = self.lock();
        f(
            &inner.machine,
            inner.applied.as_ref().map_or(0, |l| l.index),
        )
    }

    /// The financial-log records stored here with seq in `from..`, at most `max`. Records the
    /// application has forgotten ([`Self::forget_log_before`]) are not among them: the first
    /// one returned may come after `from`.
    pub fn log_records(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, rocksdb::Error> {
        let mut out = Vec::new();
        let mode = IteratorMode::From(&from.to_be_bytes(), rocksdb::Direction::Forward);
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_FIN_LOG), mode)
            .take(max)
        {
            let (k, v) = item?;
            out.push((seq_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    /// The seq of the first financial-log record stored here, if any.
    pub fn first_log_seq(&self) -> Result<Option<u64>, rocksdb::Error> {
        match self
            .db
            .iterator_cf(cf(&self.db, CF_FIN_LOG), IteratorMode::Start)
            .next()
        {
            Some(item) => Ok(Some(seq_of(&item?.0))),
            None => Ok(None),
        }
    }

    /// Makes every apply so far durable (applies are written unsynced; see `apply`). The
    /// application calls this before it exports applied state that must not run ahead of
    /// what a crash keeps: records sealed into segment files.
    pub fn sync(&self) -> io::Result<()> {
        // After a failed write nothing more is written: RocksDB's log is in an error state,
        // and a write or a WAL sync then trips an assertion in builds that keep them (Debian's:
        // SIGABRT instead of the storage exit status in a jepsen disk-full run).
        if self.failed.load(Ordering::Acquire) {
            return Err(io::Error::other(
                "an earlier write of the state machine failed: nothing more is written",
            ));
        }
        self.db
            .put_cf_opt(cf(&self.db, CF_SM_META), KEY_SYNCED, [], &synced())
            .map_err(io::Error::other)
    }

    /// Forgets the financial-log records with seq below `seq`: the application calls this once
    /// they are archived elsewhere (sealed, synced and read back). Snapshots built afterwards no
    /// longer carry them.
    pub fn forget_log_before(&self, seq: u64) -> Result<(), rocksdb::Error> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_FIN_LOG),
            0u64.to_be_bytes(),
            seq.to_be_bytes(),
        );
        self.db.write(batch)
    }

    /// Compacts the deleted prefixes of the financial log (records forgotten) and of the Raft
    /// log (entries purged behind a snapshot), so that their space comes back now rather than
    /// whenever RocksDB would compact those files by itself: under steady load the database
    /// otherwise grows with what it deleted. Blocking; call off the request path.
    pub fn compact_deleted(&self) -> Result<(), rocksdb::Error> {
        for name in [CF_FIN_LOG, crate::log_store::CF_LOG] {
            let handle = cf(&self.db, name);
            let first = match self.db.iterator_cf(handle, IteratorMode::Start).next() {
                Some(item) => Some(item?.0.to_vec()),
                None => None,
            };
            match first {
                Some(first) => {
                    self.db
                        .compact_range_cf(handle, None::<&[u8]>, Some(first.as_slice()))
                }
                None => self
                    .db
                    .compact_range_cf(handle, None::<&[u8]>, None::<&[u8]>),
            }
        }
        Ok(())
    }

    /// What the last snapshot this store built measured (none yet: `None`).
    pub fn last_snapshot_build(&self) -> Option<SnapshotStats> {
        self.lock().last_build
    }

    /// Writes a snapshot file of the state as of now: a RocksDB snapshot (the rows and the
    /// records, written by every apply in the same batch as the applied index) and the meta
    /// are taken under the lock, and the file is written from them after it is released, so
    /// that applies wait for neither. (Rows once came from the machine under the lock: with
    /// 100,000 campaigns that held every apply for 0.7 s, `./dev bench scale`.)
    fn build(&self) -> SResult<C, Snapshot<C>> {
        let started = std::time::Instant::now();
        let db = self.db.clone();
        let inner = self.lock();
        let view = db.snapshot();
        let applied = inner.applied.clone();
        let membership = inner.membership.clone();
        drop(inner);
        let log_cf = cf(&db, CF_FIN_LOG);
        let first = match view.iterator_cf(log_cf, IteratorMode::Start).next() {
            Some(item) => Some(seq_of(&item.map_err(io_read::<C>)?.0)),
            None => None,
        };
        let id = snapshot_id::<C>(applied.as_ref(), first);
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: id,
        };
        let name = file_name_for(&meta.snapshot_id);
        let dir = self.snapshot_dir.as_path();
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let rows_cf = cf(&db, CF_ROWS);
        let write = || -> io::Result<(u64, u64, u64)> {
            let pairs = |cf| {
                view.iterator_cf(cf, IteratorMode::Start)
                    .map(|item| item.map_err(io::Error::other))
            };
            let out = BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
            let (out, rows, records) =
                write_snapshot::<C, _>(out, &meta, pairs(rows_cf), pairs(log_cf))?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
            let bytes = file.metadata()?.len();
            fs::rename(&tmp, &path)?;
            sync_dir(dir)?;
            Ok((bytes, rows, records))
        };
        let (bytes, rows, records) = crate::blocking(write).map_err(io_write::<C>)?;
        drop(view);
        let files = self.files_lock();
        let file = fs::File::open(&path)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let current: Option<SnapshotPointer<C>> = self
            .db
            .get_cf(cf(&self.db, CF_SM_META), KEY_SNAPSHOT_FILE)
            .map_err(io_read::<C>)?
            .map(|v| serde_json::from_slice(&v))
            .transpose()
            .map_err(io_read::<C>)?;
        if current.is_some_and(|c| c.meta.last_log_id > meta.last_log_id) {
            // A newer snapshot was installed while this one was written: it stays current, and
            // this one is only handed to whoever asked for it (through the open handle).
            fs::remove_file(&path).map_err(io_write::<C>)?;
        } else {
            let pointer = SnapshotPointer::<C> {
                meta: meta.clone(),
                file: name.clone(),
            };
            self.db
                .put_cf_opt(
                    cf(&self.db, CF_SM_META),
                    KEY_SNAPSHOT_FILE,
                    serde_json::to_vec(&pointer).map_err(io_write::<C>)?,
                    &synced(),
                )
                .map_err(io_write::<C>)?;
            // Older files go; one still being sent stays readable through its open handle.
            remove_snapshot_files(dir, Some(&name), false).map_err(io_write::<C>)?;
        }
        drop(files);
        self.lock().last_build = Some(SnapshotStats {
            bytes,
            rows,
            records,
            build_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            index: meta.last_log_id.as_ref().map_or(0, |l| l.index),
        });
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::new(file, path)),
        })
    }
}

fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key.try_into().unwrap_or([0xff; 8]))
}

/// Removes the finished snapshot files of `dir` other than `keep`, and `at_open` (when no
/// build, copy or stream can be under way) unfinished ones and files being received too.
fn remove_snapshot_files(dir: &Path, keep: Option<&str>, at_open: bool) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let finished = name.starts_with("snap-") && name.ends_with(&format!(".{SNAPSHOT_EXT}"));
        let ours = finished
            || (at_open && (name.starts_with("snap-") || name.starts_with(RECEIVING_PREFIX)));
        if ours && Some(name.as_str()) != keep {
            match fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    // `open_db` creates every column family this crate names.
    db.cf_handle(name).unwrap_or_else(|| {
        panic!("column family {name} missing: open the database with raft_store::open_db")
    })
}

fn scan(db: &DB, name: &str) -> Result<Rows, rocksdb::Error> {
    db.iterator_cf(cf(db, name), IteratorMode::Start)
        .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect()
}

impl<C, M> RaftSnapshotBuilder<C> for StateStore<C, M>
where
    C: RaftTypeConfig<Entry = Entry<C>, SnapshotData = SnapshotFile>,
    C::D: Debug,
    M: Machine<C>,
{
    async fn build_snapshot(&mut self) -> SResult<C, Snapshot<C>> {
        self.build()
    }
}

impl<C, M> RaftStateMachine<C> for StateStore<C, M>
where
    C: RaftTypeConfig<Entry = Entry<C>, SnapshotData = SnapshotFile>,
    C::D: Debug + Serialize + DeserializeOwned,
    M: Machine<C>,
{
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> SResult<
        C,
        (
            Option<LogId<C::NodeId>>,
            StoredMembership<C::NodeId, C::Node>,
        ),
    > {
        let inner = self.lock();
        Ok((inner.applied.clone(), inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<C, Vec<C::R>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
    {
        let db = self.db.clone();
        let mut inner = self.lock();
        let mut batch = WriteBatch::default();
        let mut replies = Vec::new();
        let mut touched_membership = false;
        for entry in entries {
            match &entry.payload {
                EntryPayload::Blank => replies.push(inner.machine.no_command_reply()),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(entry.log_id.clone()), m.clone());
                    touched_membership = true;
                    replies.push(inner.machine.no_command_reply());
                }
                EntryPayload::Normal(command) => {
                    let applied = inner.machine.apply(&entry.log_id, command);
                    for (k, v) in applied.rows {
                        match v {
                            Some(v) => batch.put_cf(cf(&db, CF_ROWS), k, v),
                            None => batch.delete_cf(cf(&db, CF_ROWS), k),
                        }
                    }
                    for (seq, record) in applied.log_records {
                        batch.put_cf(cf(&db, CF_FIN_LOG), seq.to_be_bytes(), record);
                    }
                    replies.push(applied.reply);
                }
            }
            inner.applied = Some(entry.log_id.clone());
        }
        batch.put_cf(
            cf(&db, CF_SM_META),
            KEY_APPLIED,
            serde_json::to_vec(&inner.applied).map_err(io_write::<C>)?,
        );
        if touched_membership {
            batch.put_cf(
                cf(&db, CF_SM_META),
                KEY_MEMBERSHIP,
                serde_json::to_vec(&inner.membership).map_err(io_write::<C>)?,
            );
        }
        // Not synced: the entries are already synced in the Raft log (on a majority before
        // they were committed), and this write goes into the same write-ahead log, in order,
        // behind them; the next synced write of this database (the next log append, a
        // snapshot's pointer, [`StateStore::sync`]) makes it durable. A machine that crashes
        // before then recovers a prefix of its applies (RocksDB's point-in-time recovery),
        // whole batches with their `applied` id, and openraft applies the rest again from the
        // log, which is never purged past a snapshot (and a snapshot's synced pointer makes
        // every apply before it durable). Measured: one fsync of three per entry per replica.
        let started = std::time::Instant::now();
        crate::blocking(|| db.write_opt(batch, &WriteOptions::default())).map_err(|e| {
            self.failed.store(true, Ordering::Release);
            io_write::<C>(e)
        })?;
        if let Some(o) = &self.observer {
            o("state", started.elapsed());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<C, Box<SnapshotFile>> {
        // openraft receives one stream at a time: an earlier unfinished one was abandoned.
        let dir = self.snapshot_dir.as_path();
        for entry in fs::read_dir(dir).map_err(io_write::<C>)? {
            let entry = entry.map_err(io_write::<C>)?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(RECEIVING_PREFIX)
            {
                let _ = fs::remove_file(entry.path());
            }
        }
        let n = self.receiving.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{RECEIVING_PREFIX}{n}.tmp"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(SnapshotFile::new(file, path)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<C::NodeId, C::Node>,
        snapshot: Box<SnapshotFile>,
    ) -> SResult<C, ()> {
        let SnapshotFile { body, path, .. } = *snapshot;
        let bad = |e: &io::Error| StorageIOError::read_snapshot(Some(meta.signature()), e);
        let Body::File(file) = body else {
            return Err(bad(&io::Error::other(
                "a snapshot in memory given to the file store",
            ))
            .into());
        };
        let parsed = crate::blocking(|| read_snapshot_file::<C>(file)).map_err(|e| bad(&e))?;
        if parsed.meta.last_log_id != meta.last_log_id {
            return Err(bad(&bad_data(format!(
                "the file is snapshot {}, not {}",
                parsed.meta.snapshot_id, meta.snapshot_id
            )))
            .into());
        }
        // The file becomes this node's current snapshot, under a name of its own.
        let dir = self.snapshot_dir.clone();
        let name = file_name_for(&meta.snapshot_id);
        let dest = dir.join(&name);
        let received_here = path.parent() == Some(dir.as_path())
            && path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(RECEIVING_PREFIX));
        crate::blocking(|| -> io::Result<()> {
            if received_here {
                fs::rename(&path, &dest)?;
            } else {
                let tmp = dir.join(format!("{name}.tmp"));
                fs::copy(&path, &tmp)?;
                fs::File::open(&tmp)?.sync_all()?;
                fs::rename(&tmp, &dest)?;
            }
            sync_dir(&dir)
        })
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;

        let db = self.db.clone();
        let mut inner = self.lock();
        let mut batch = WriteBatch::default();
        for (k, _) in scan(&db, CF_ROWS).map_err(io_read::<C>)? {
            batch.delete_cf(cf(&db, CF_ROWS), k);
        }
        let log_cf = cf(&db, CF_FIN_LOG);
        batch.delete_range_cf(log_cf, 0u64.to_be_bytes(), u64::MAX.to_be_bytes());
        batch.delete_cf(log_cf, u64::MAX.to_be_bytes());
        for (k, v) in &parsed.rows {
            batch.put_cf(cf(&db, CF_ROWS), k, v);
        }
        for (k, v) in &parsed.records {
            batch.put_cf(log_cf, k, v);
        }
        // Rebuild the machine before writing: if the rows do not load, nothing on disk changes.
        inner
            .machine
            .load(
                parsed.rows,
                meta.last_log_id.as_ref().map_or(0, |l| l.index),
            )
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), e))?;
        inner.applied = meta.last_log_id.clone();
        inner.membership = meta.last_membership.clone();
        batch.put_cf(
            cf(&db, CF_SM_META),
            KEY_APPLIED,
            serde_json::to_vec(&inner.applied).map_err(io_write::<C>)?,
        );
        batch.put_cf(
            cf(&db, CF_SM_META),
            KEY_MEMBERSHIP,
            serde_json::to_vec(&inner.membership).map_err(io_write::<C>)?,
        );
        let pointer = SnapshotPointer::<C> {
            meta: meta.clone(),
            file: name.clone(),
        };
        batch.put_cf(
            cf(&db, CF_SM_META),
            KEY_SNAPSHOT_FILE,
            serde_json::to_vec(&pointer).map_err(io_write::<C>)?,
        );
        let files = self.files_lock();
        crate::blocking(|| db.write_opt(batch, &synced())).map_err(io_write::<C>)?;
        drop(inner);
        remove_snapshot_files(&dir, Some(&name), false).map_err(io_write::<C>)?;
        drop(files);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<C, Option<Snapshot<C>>> {
        match self.open_current()? {
            None => Ok(None),
            Some((pointer, Ok(file))) => {
                let path = self.snapshot_dir.join(&pointer.file);
                Ok(Some(Snapshot {
                    meta: pointer.meta,
                    snapshot: Box::new(SnapshotFile::new(file, path)),
                }))
            }
            // Files are removed only when the pointer moves (under the same lock), so this one
            // was lost some other way. Answering "none" would stop openraft (a leader asks for
            // the snapshot to send it): build one now instead.
            Some((pointer, Err(e))) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(file = %pointer.file, "the current snapshot's file is missing; building a new one");
                self.build().map(Some)
            }
            Some((pointer, Err(e))) => {
                Err(StorageIOError::read_snapshot(Some(pointer.meta.signature()), &e).into())
            }
        }
    }
}
