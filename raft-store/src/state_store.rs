//! openraft's state machine on RocksDB, generic over the application's [`Machine`].
//!
//! Column families:
//! - `sm_rows`: the machine's rows (key → value), as it reports them after each command;
//! - `fin_log`: financial-log records (seq big-endian → record bytes);
//! - `sm_meta`: `applied` (last applied log id), `membership`, `snapshot` (the current one).
//!
//! **Atomic apply.** For a batch of entries openraft hands over, the rows, the log records and
//! the last-applied log id all go into one `WriteBatch`, written with one sync: group commit, and
//! a crash at any moment leaves either all of the batch or none of it. On restart, the machine is
//! rebuilt from `sm_rows`, and openraft re-applies whatever the log holds past `applied`.
//!
//! **Snapshots** hold every row, every log record and the meta; installing one replaces all
//! three. So a node that was down for long, or a new node, catches up, financial log included.

use std::fmt::Debug;
use std::io::Cursor;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftTypeConfig, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use rocksdb::{DB, IteratorMode, WriteBatch, WriteOptions};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Column family of the machine's rows.
pub const CF_ROWS: &str = "sm_rows";
/// Column family of financial-log records.
pub const CF_FIN_LOG: &str = "fin_log";
/// Column family of applied state and the current snapshot.
pub const CF_SM_META: &str = "sm_meta";

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const SNAPSHOT_MAGIC: &[u8; 8] = b"BUDGSNP1";

/// Key-value pairs, owned.
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Key-value pairs borrowed from a snapshot.
type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

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
    /// Every row of the state (for snapshots).
    fn all_rows(&self) -> Vec<(Vec<u8>, Vec<u8>)>;
    /// Replaces the state with one rebuilt from `rows` (all rows, any order).
    fn load(&mut self, rows: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), AnyError>;
}

struct Inner<C: RaftTypeConfig, M> {
    machine: M,
    applied: Option<LogId<C::NodeId>>,
    membership: StoredMembership<C::NodeId, C::Node>,
}

/// The state machine store of one node. Cheap to clone: clones share the state.
pub struct StateStore<C: RaftTypeConfig, M> {
    db: Arc<DB>,
    inner: Arc<Mutex<Inner<C, M>>>,
    observer: Option<crate::SyncObserver>,
}

impl<C: RaftTypeConfig, M> Clone for StateStore<C, M> {
    fn clone(&self) -> Self {
        StateStore {
            db: self.db.clone(),
            inner: self.inner.clone(),
            observer: self.observer.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapshotHead<C: RaftTypeConfig> {
    meta: SnapshotMeta<C::NodeId, C::Node>,
    rows: u64,
    records: u64,
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

fn put_len(out: &mut Vec<u8>, bytes: &[u8]) {
    // Rows and records are far below 4 GiB (records ≤ 16 MiB).
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_len<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    let (out, rest) = rest.split_at_checked(usize::try_from(u32::from_be_bytes(*len)).ok()?)?;
    *bytes = rest;
    Some(out)
}

impl<C, M> StateStore<C, M>
where
    C: RaftTypeConfig<Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>,
    C::D: Debug,
    M: Machine<C>,
{
    /// Opens the store on `db`, rebuilding `machine` from the stored rows.
    pub fn open(db: Arc<DB>, mut machine: M) -> SResult<C, Self> {
        let rows = scan(&db, CF_ROWS).map_err(io_read::<C>)?;
        machine
            .load(rows)
            .map_err(StorageIOError::read_state_machine)?;
        let get = |key: &[u8]| db.get_cf(cf(&db, CF_SM_META), key).map_err(io_read::<C>);
        let applied = match get(KEY_APPLIED)? {
            Some(v) => serde_json::from_slice(&v).map_err(io_read::<C>)?,
            None => None,
        };
        let membership = match get(KEY_MEMBERSHIP)? {
            Some(v) => serde_json::from_slice(&v).map_err(io_read::<C>)?,
            None => StoredMembership::default(),
        };
        Ok(StateStore {
            db,
            inner: Arc::new(Mutex::new(Inner {
                machine,
                applied,
                membership,
            })),
            observer: None,
        })
    }

    /// Reports the duration of every synced apply batch to `observer`.
    pub fn with_sync_observer(mut self, observer: crate::SyncObserver) -> Self {
        self.observer = Some(observer);
        self
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

    /// The financial-log records with seq in `from..`, at most `max`.
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
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xff; 8]));
            out.push((seq, v.to_vec()));
        }
        Ok(out)
    }

    fn build(&self) -> SResult<C, (Meta<C>, Vec<u8>)> {
        let inner = self.lock();
        let rows = inner.machine.all_rows();
        let records = scan(&self.db, CF_FIN_LOG).map_err(io_read::<C>)?;
        let id = match &inner.applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: inner.applied.clone(),
            last_membership: inner.membership.clone(),
            snapshot_id: id,
        };
        drop(inner);
        let head = SnapshotHead::<C> {
            meta: meta.clone(),
            rows: rows.len() as u64,
            records: records.len() as u64,
        };
        let mut data = SNAPSHOT_MAGIC.to_vec();
        put_len(
            &mut data,
            &serde_json::to_vec(&head).map_err(io_write::<C>)?,
        );
        for (k, v) in rows.iter().chain(records.iter()) {
            put_len(&mut data, k);
            put_len(&mut data, v);
        }
        let mut stored = Vec::new();
        put_len(
            &mut stored,
            &serde_json::to_vec(&meta).map_err(io_write::<C>)?,
        );
        stored.extend_from_slice(&data);
        self.db
            .put_cf_opt(cf(&self.db, CF_SM_META), KEY_SNAPSHOT, stored, &synced())
            .map_err(io_write::<C>)?;
        Ok((meta, data))
    }
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

fn parse_snapshot<C: RaftTypeConfig>(
    data: &[u8],
) -> Option<(SnapshotHead<C>, Pairs<'_>, Pairs<'_>)> {
    let mut rest = data.strip_prefix(SNAPSHOT_MAGIC.as_slice())?;
    let head: SnapshotHead<C> = serde_json::from_slice(take_len(&mut rest)?).ok()?;
    let mut rows = Vec::new();
    let mut records = Vec::new();
    for i in 0..head.rows.checked_add(head.records)? {
        let k = take_len(&mut rest)?;
        let v = take_len(&mut rest)?;
        if i < head.rows {
            rows.push((k, v))
        } else {
            records.push((k, v))
        }
    }
    rest.is_empty().then_some((head, rows, records))
}

impl<C, M> RaftSnapshotBuilder<C> for StateStore<C, M>
where
    C: RaftTypeConfig<Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>,
    C::D: Debug,
    M: Machine<C>,
{
    async fn build_snapshot(&mut self) -> SResult<C, Snapshot<C>> {
        let (meta, data) = self.build()?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl<C, M> RaftStateMachine<C> for StateStore<C, M>
where
    C: RaftTypeConfig<Entry = Entry<C>, SnapshotData = Cursor<Vec<u8>>>,
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
        let started = std::time::Instant::now();
        crate::blocking(|| db.write_opt(batch, &synced())).map_err(io_write::<C>)?;
        if let Some(o) = &self.observer {
            o("state", started.elapsed());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<C, Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<C::NodeId, C::Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> SResult<C, ()> {
        let data = snapshot.into_inner();
        let bad = || {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error("snapshot data is malformed"),
            )
        };
        let (head, rows, records) = parse_snapshot::<C>(&data).ok_or_else(bad)?;
        if head.meta.last_log_id != meta.last_log_id {
            return Err(bad().into());
        }
        let db = self.db.clone();
        let mut inner = self.lock();
        // Rebuild the machine first: if the rows do not load, nothing on disk has changed.
        let owned: Vec<(Vec<u8>, Vec<u8>)> =
            rows.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        inner
            .machine
            .load(owned)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), e))?;
        let mut batch = WriteBatch::default();
        for name in [CF_ROWS, CF_FIN_LOG] {
            for (k, _) in scan(&db, name).map_err(io_read::<C>)? {
                batch.delete_cf(cf(&db, name), k);
            }
        }
        for (k, v) in &rows {
            batch.put_cf(cf(&db, CF_ROWS), k, v);
        }
        for (k, v) in &records {
            batch.put_cf(cf(&db, CF_FIN_LOG), k, v);
        }
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
        let mut stored = Vec::new();
        put_len(
            &mut stored,
            &serde_json::to_vec(meta).map_err(io_write::<C>)?,
        );
        stored.extend_from_slice(&data);
        batch.put_cf(cf(&db, CF_SM_META), KEY_SNAPSHOT, stored);
        db.write_opt(batch, &synced()).map_err(io_write::<C>)?;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<C, Option<Snapshot<C>>> {
        let Some(stored) = self
            .db
            .get_cf(cf(&self.db, CF_SM_META), KEY_SNAPSHOT)
            .map_err(io_read::<C>)?
        else {
            return Ok(None);
        };
        let mut rest = stored.as_slice();
        let meta_bytes = take_len(&mut rest)
            .ok_or_else(|| io_read::<C>(std::io::Error::other("stored snapshot is malformed")))?;
        let meta: SnapshotMeta<C::NodeId, C::Node> =
            serde_json::from_slice(meta_bytes).map_err(io_read::<C>)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(rest.to_vec())),
        }))
    }
}
