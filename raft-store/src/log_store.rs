//! The Raft log, the vote and the committed log id, in two column families of one RocksDB.
//!
//! - `raft_log`: key = log index (`u64` big-endian, so keys sort by index), value = the entry
//!   (postcard, a compact binary serde format: with it instead of JSON here and in the Raft
//!   transport, the region benchmark went from about 52,000 to about 72,000 events/s).
//! - `raft_meta`: `vote`, `committed`, `last_purged` (JSON).
//!
//! Durability: every write that openraft must not lose is synced (`WriteOptions::set_sync`)
//! before it is acknowledged. `append` writes all the entries it is given in one `WriteBatch`
//! with one sync: group commit, one fsync for many entries.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError,
    StorageIOError, Vote,
};
use rocksdb::{DB, Direction, IteratorMode, WriteBatch, WriteOptions};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Column family of log entries.
pub const CF_LOG: &str = "raft_log";
/// Column family of the vote, committed log id and last purged log id.
pub const CF_META: &str = "raft_meta";

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The Raft log of one node. Cheap to clone: clones share the database.
pub struct LogStore<C: RaftTypeConfig> {
    db: Arc<DB>,
    observer: Option<crate::SyncObserver>,
    /// The planted bug `ack-before-sync` (see [`LogStore::planted_ack_before_sync`]).
    ack_before_sync: bool,
    _c: std::marker::PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            observer: self.observer.clone(),
            ack_before_sync: self.ack_before_sync,
            _c: std::marker::PhantomData,
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

fn synced() -> WriteOptions {
    let mut o = WriteOptions::default();
    o.set_sync(true);
    o
}

type SResult<C, T> = Result<T, StorageError<<C as RaftTypeConfig>::NodeId>>;

impl<C: RaftTypeConfig> LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    /// The log store on `db`, which must have the column families [`CF_LOG`] and [`CF_META`].
    pub fn new(db: Arc<DB>) -> Self {
        LogStore {
            db,
            observer: None,
            ack_before_sync: false,
            _c: std::marker::PhantomData,
        }
    }

    /// A deliberate bug, for the harnesses' planted-bug tests only (the coordinator turns it
    /// on only in builds with `shared/planted-bugs`, under `PLANTED_BUG=ack-before-sync`):
    /// appends are written without a sync and acknowledged, as if the state machine's synced
    /// writes to the same write-ahead log made them durable soon enough. A killed process loses
    /// nothing by it (the kernel still holds the write); only a machine that loses power does.
    #[doc(hidden)]
    pub fn planted_ack_before_sync(mut self) -> Self {
        self.ack_before_sync = true;
        self
    }

    /// Reports the duration of every synced append to `observer`.
    pub fn with_sync_observer(mut self, observer: crate::SyncObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // `open_db` creates every column family this crate names.
        self.db.cf_handle(name).unwrap_or_else(|| {
            panic!("column family {name} missing: open the database with raft_store::open_db")
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, AnyError> {
        let Some(bytes) = self
            .db
            .get_cf(self.cf(CF_META), key)
            .map_err(|e| AnyError::new(&e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AnyError::new(&e))
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), AnyError> {
        let bytes = serde_json::to_vec(value).map_err(|e| AnyError::new(&e))?;
        self.db
            .put_cf_opt(self.cf(CF_META), key, bytes, &synced())
            .map_err(|e| AnyError::new(&e))
    }

    fn last_log_id(&self) -> SResult<C, Option<LogId<C::NodeId>>> {
        let mut it = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(Err(e)) => Err(StorageIOError::read_logs(AnyError::new(&e)).into()),
            Some(Ok((_, value))) => {
                let entry: C::Entry = postcard::from_bytes(&value)
                    .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
                Ok(Some(entry.get_log_id().clone()))
            }
        }
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<C, Vec<C::Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let mode = IteratorMode::From(&index_key(start), Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_LOG), mode) {
            let (key, value) = item.map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
            let index = key_index(&key).ok_or_else(|| {
                StorageIOError::read_logs(AnyError::error("log key is not 8 bytes"))
            })?;
            if !range.contains(&index) {
                break;
            }
            let entry: C::Entry = postcard::from_bytes(&value)
                .map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)))?;
            // Paired check across the storage boundary: the key and the entry agree.
            assert_eq!(
                entry.get_log_id().index,
                index,
                "raft_log key {index} holds entry {}",
                entry.get_log_id()
            );
            out.push(entry);
        }
        Ok(out)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C>
where
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<C, LogState<C>> {
        let last_purged_log_id: Option<LogId<C::NodeId>> = self
            .get_meta(KEY_LAST_PURGED)
            .map_err(StorageIOError::read_logs)?;
        let last_log_id = self.last_log_id()?.or_else(|| last_purged_log_id.clone());
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> SResult<C, ()> {
        self.put_meta(KEY_VOTE, vote)
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> SResult<C, Option<Vote<C::NodeId>>> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> SResult<C, ()> {
        // Synced, so that after a restart reads never go back before what was committed.
        self.put_meta(KEY_COMMITTED, &committed)
            .map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> SResult<C, Option<LogId<C::NodeId>>> {
        let committed: Option<Option<LogId<C::NodeId>>> =
            self.get_meta(KEY_COMMITTED).map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> SResult<C, ()>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_LOG);
        for entry in entries {
            let index = entry.get_log_id().index;
            let bytes = postcard::to_stdvec(&entry).map_err(|e| {
                StorageIOError::write_log_entry(entry.get_log_id().clone(), AnyError::new(&e))
            })?;
            batch.put_cf(cf, index_key(index), bytes);
        }
        let started = std::time::Instant::now();
        let options = if self.ack_before_sync {
            rocksdb::WriteOptions::default()
        } else {
            synced()
        };
        let result = crate::blocking(|| self.db.write_opt(batch, &options));
        if let Some(o) = &self.observer {
            o("log", started.elapsed());
        }
        let io = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(io);
        result.map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> SResult<C, ()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOG),
            index_key(log_id.index),
            index_key(u64::MAX),
        );
        batch.delete_cf(self.cf(CF_LOG), index_key(u64::MAX));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> SResult<C, ()> {
        // Record the purge point first: a crash between the two writes leaves entries behind the
        // recorded purge point, which openraft never reads again; never a hole it does not know.
        self.put_meta(KEY_LAST_PURGED, &log_id)
            .map_err(StorageIOError::write_logs)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(CF_LOG),
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)).into())
    }
}
