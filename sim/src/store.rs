//! openraft's storage on the simulated [`Disk`]: the Raft log, vote and committed id, and the
//! state machine over the coordinator's real [`LedgerMachine`], with the real store's rules —
//! an append is acknowledged once synced; a batch of applied entries writes its rows, its
//! financial-log records and the applied id together, in one write made durable by the next
//! sync (a crash may lose the last applies, which the log holds).
//!
//! Snapshots are the real store's format ([`raft_store::encode_snapshot`]: meta, rows, records,
//! CRC), kept whole on the simulated disk beside the applied id, and streamed through openraft's
//! chunked transport as [`SnapshotFile::in_memory`]: a node behind the leader's purged log is
//! brought up to date by one, as in a real region.

#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use coordinator::ledger::{Params, Reply};
use coordinator::raft::{LedgerMachine, TypeConfig};
use openraft::storage::{
    LogFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
    Snapshot,
};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use raft_store::{Machine, SnapshotFile, decode_snapshot, encode_snapshot, snapshot_id};
use shared::RegionId;

use crate::disk::{Disk, Op, Space};

type SResult<T> = Result<T, StorageError<u64>>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";
const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
/// The current snapshot: its meta and its bytes.
const KEY_SNAPSHOT: &[u8] = b"snapshot";

type Meta = SnapshotMeta<u64, BasicNode>;

fn index_key(i: u64) -> Vec<u8> {
    i.to_be_bytes().to_vec()
}

fn io(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(&e)).into()
}

fn encode<T: serde::Serialize>(v: &T) -> SResult<Vec<u8>> {
    postcard::to_stdvec(v).map_err(io)
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> SResult<T> {
    postcard::from_bytes(b).map_err(|e| StorageIOError::read(AnyError::new(&e)).into())
}

/// The Raft log of one node instance.
#[derive(Clone)]
pub struct SimLog {
    disk: Disk,
    generation: u64,
}

impl SimLog {
    /// The log of the instance starting now on `disk`.
    pub fn open(disk: &Disk) -> SimLog {
        SimLog {
            disk: disk.clone(),
            generation: disk.generation(),
        }
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> SResult<Option<T>> {
        let raw = self
            .disk
            .read(self.generation, |i| i.space(Space::Meta).get(key).cloned())
            .map_err(io)?;
        raw.map(|b| decode(&b)).transpose()
    }

    async fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T) -> SResult<()> {
        let op = Op::Put(Space::Meta, key.to_vec(), encode(v)?);
        self.disk
            .write_synced(self.generation, vec![op])
            .await
            .map_err(io)
    }
}

impl RaftLogReader<TypeConfig> for SimLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> SResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let raw: Vec<(u64, Vec<u8>)> = self
            .disk
            .read(self.generation, |i| {
                i.space(Space::Log)
                    .range(index_key(start)..)
                    .map(|(k, v)| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(k);
                        (u64::from_be_bytes(b), v.clone())
                    })
                    .take_while(|(k, _)| range.contains(k))
                    .collect()
            })
            .map_err(io)?;
        raw.iter().map(|(_, v)| decode(v)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for SimLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> SResult<LogState<TypeConfig>> {
        let purged: Option<LogId<u64>> = self.meta(KEY_PURGED)?;
        let last = self
            .disk
            .read(self.generation, |i| {
                i.space(Space::Log).last_key_value().map(|(_, v)| v.clone())
            })
            .map_err(io)?;
        let last = match last {
            Some(b) => Some(decode::<Entry<TypeConfig>>(&b)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> SResult<()> {
        self.put_meta(KEY_VOTE, vote).await
    }

    async fn read_vote(&mut self) -> SResult<Option<Vote<u64>>> {
        self.meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> SResult<()> {
        self.put_meta(KEY_COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> SResult<Option<LogId<u64>>> {
        Ok(self.meta::<Option<LogId<u64>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> SResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let mut ops = Vec::new();
        for e in entries {
            ops.push(Op::Put(Space::Log, index_key(e.log_id.index), encode(&e)?));
        }
        if shared::planted::active("ack-before-sync") {
            // The planted bug (test builds only), as `raft_store::LogStore` plants it: the
            // append is written unsynced and acknowledged; the node's next synced write (its
            // state machine's, a vote) makes it durable.
            let r = self.disk.write(self.generation, ops);
            callback.log_io_completed(r.clone().map_err(|e| std::io::Error::other(e.to_string())));
            return r.map_err(io);
        }
        let r = self.disk.write_synced(self.generation, ops).await;
        callback.log_io_completed(r.clone().map_err(|e| std::io::Error::other(e.to_string())));
        r.map_err(io)
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> SResult<()> {
        let op = Op::DeleteRange(
            Space::Log,
            index_key(log_id.index),
            vec![0xff; 9], // past every 8-byte key
        );
        self.disk
            .write_synced(self.generation, vec![op])
            .await
            .map_err(io)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> SResult<()> {
        self.put_meta(KEY_PURGED, &log_id).await?;
        let op = Op::DeleteRange(
            Space::Log,
            index_key(0),
            index_key(log_id.index.saturating_add(1)),
        );
        self.disk
            .write_synced(self.generation, vec![op])
            .await
            .map_err(io)
    }
}

struct Inner {
    machine: LedgerMachine,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
}

/// Snapshots built and installed in a run, over every node.
#[derive(Debug, Default)]
pub struct SnapshotCounts {
    /// Built (and made current).
    pub built: AtomicU64,
    /// Received from a leader and installed.
    pub installed: AtomicU64,
}

/// The state machine of one node instance: the real ledger, persisted on the simulated disk.
#[derive(Clone)]
pub struct SimState {
    disk: Disk,
    generation: u64,
    inner: Arc<Mutex<Inner>>,
    counts: Arc<SnapshotCounts>,
}

impl SimState {
    /// The state machine of the instance starting now on `disk`: the ledger rebuilt from the
    /// durable rows, as the real store does on restart.
    pub fn open(
        disk: &Disk,
        region: RegionId,
        counts: Arc<SnapshotCounts>,
    ) -> anyhow::Result<SimState> {
        let generation = disk.generation();
        let (rows, applied, membership) = disk.read(generation, |i| {
            (
                i.space(Space::Rows)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>(),
                i.space(Space::SmMeta).get(KEY_APPLIED).cloned(),
                i.space(Space::SmMeta).get(KEY_MEMBERSHIP).cloned(),
            )
        })?;
        let applied: Option<LogId<u64>> = match applied {
            Some(b) => decode(&b)?,
            None => None,
        };
        let membership = match membership {
            Some(b) => decode(&b)?,
            None => StoredMembership::default(),
        };
        let mut machine = LedgerMachine::new(region, Params::default());
        if !rows.is_empty() {
            machine
                .load(rows, applied.map_or(0, |a| a.index))
                .map_err(|e| anyhow::anyhow!("loading the rows: {e}"))?;
        }
        Ok(SimState {
            disk: disk.clone(),
            generation,
            inner: Arc::new(Mutex::new(Inner {
                machine,
                applied,
                membership,
            })),
            counts,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the ledger.
    pub fn read<T>(&self, f: impl FnOnce(&coordinator::ledger::Ledger) -> T) -> T {
        f(self.lock().machine.ledger())
    }
}

impl SimState {
    /// The current snapshot as stored: its meta and bytes.
    fn stored_snapshot(&self) -> SResult<Option<(Meta, Vec<u8>)>> {
        let raw = self
            .disk
            .read(self.generation, |i| {
                i.space(Space::SmMeta).get(KEY_SNAPSHOT).cloned()
            })
            .map_err(io)?;
        raw.map(|b| decode(&b)).transpose()
    }
}

fn snapshot_io(meta: Option<&Meta>, e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_snapshot(meta.map(|m| m.signature()), AnyError::new(&e)).into()
}

impl RaftSnapshotBuilder<TypeConfig> for SimState {
    /// The real store's rules: the state as of one applied id (read under the machine's lock),
    /// the id named by the applied log id and the first record, stored synced, and a build that
    /// ends after a newer snapshot was installed leaves that one current.
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        let (meta, rows, records) = {
            let inner = self.lock();
            let (rows, records) = self
                .disk
                .read(self.generation, |i| {
                    let all = |s: Space| {
                        i.space(s)
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<Vec<_>>()
                    };
                    (all(Space::Rows), all(Space::Records))
                })
                .map_err(io)?;
            let first = records
                .first()
                .map(|(k, _)| u64::from_be_bytes(k.as_slice().try_into().unwrap_or([0xff; 8])));
            let meta = SnapshotMeta {
                last_log_id: inner.applied,
                last_membership: inner.membership.clone(),
                snapshot_id: snapshot_id::<TypeConfig>(inner.applied.as_ref(), first),
            };
            (meta, rows, records)
        };
        let bytes = encode_snapshot::<TypeConfig>(&meta, &rows, &records)
            .map_err(|e| snapshot_io(Some(&meta), e))?;
        let newer_installed = self
            .stored_snapshot()?
            .is_some_and(|(current, _)| current.last_log_id > meta.last_log_id);
        if !newer_installed {
            let op = Op::Put(
                Space::SmMeta,
                KEY_SNAPSHOT.to_vec(),
                encode(&(&meta, &bytes))?,
            );
            self.disk
                .write_synced(self.generation, vec![op])
                .await
                .map_err(io)?;
            self.counts.built.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::in_memory(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for SimState {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> SResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        let inner = self.lock();
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> SResult<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
    {
        let replies = {
            let mut inner = self.lock();
            let mut ops = Vec::new();
            let mut replies = Vec::new();
            let mut touched_membership = false;
            for entry in entries {
                match &entry.payload {
                    EntryPayload::Blank => replies.push(inner.machine.no_command_reply()),
                    EntryPayload::Membership(m) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                        touched_membership = true;
                        replies.push(inner.machine.no_command_reply());
                    }
                    EntryPayload::Normal(p) => {
                        let applied = inner.machine.apply(&entry.log_id, p);
                        for (k, v) in applied.rows {
                            ops.push(match v {
                                Some(v) => Op::Put(Space::Rows, k, v),
                                None => Op::Delete(Space::Rows, k),
                            });
                        }
                        for (seq, record) in applied.log_records {
                            ops.push(Op::Put(Space::Records, index_key(seq), record));
                        }
                        replies.push(applied.reply);
                    }
                }
                inner.applied = Some(entry.log_id);
            }
            ops.push(Op::Put(
                Space::SmMeta,
                KEY_APPLIED.to_vec(),
                encode(&inner.applied)?,
            ));
            if touched_membership {
                ops.push(Op::Put(
                    Space::SmMeta,
                    KEY_MEMBERSHIP.to_vec(),
                    encode(&inner.membership)?,
                ));
            }
            // Written under the lock, so that what the disk shows always matches `applied`
            // (a snapshot build reads both under it, as the real store reads RocksDB).
            self.disk.write(self.generation, ops).map_err(io)?;
            replies
        };
        // Not synced, as in the real store: durable with the next sync of this disk (the next
        // log append), and a crash before it loses the tail of the applies, applied again from
        // the log.
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<SnapshotFile>> {
        Ok(Box::new(SnapshotFile::in_memory(Vec::new())))
    }

    /// As the real store: the received bytes are checked whole (framing, CRC, the meta they
    /// carry), the machine rebuilt from them before anything is written, then rows, records,
    /// applied id, membership and the snapshot replace the old ones in one synced write.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<SnapshotFile>,
    ) -> SResult<()> {
        let bad = |what: String| {
            StorageError::from(StorageIOError::read_snapshot(
                Some(meta.signature()),
                AnyError::error(what),
            ))
        };
        let bytes = snapshot
            .into_memory()
            .ok_or_else(|| bad("a snapshot file given to the simulated store".into()))?;
        let parsed = decode_snapshot::<TypeConfig>(&bytes).map_err(|e| bad(e.to_string()))?;
        if parsed.meta.last_log_id != meta.last_log_id {
            return Err(bad(format!(
                "the bytes are snapshot {}, not {}",
                parsed.meta.snapshot_id, meta.snapshot_id
            )));
        }
        {
            let mut inner = self.lock();
            inner
                .machine
                .load(parsed.rows.clone(), meta.last_log_id.map_or(0, |l| l.index))
                .map_err(|e| bad(e.to_string()))?;
            inner.applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            let mut ops = vec![Op::Clear(Space::Rows), Op::Clear(Space::Records)];
            ops.extend(
                parsed
                    .rows
                    .into_iter()
                    .map(|(k, v)| Op::Put(Space::Rows, k, v)),
            );
            ops.extend(
                parsed
                    .records
                    .into_iter()
                    .map(|(k, v)| Op::Put(Space::Records, k, v)),
            );
            ops.push(Op::Put(
                Space::SmMeta,
                KEY_APPLIED.to_vec(),
                encode(&inner.applied)?,
            ));
            ops.push(Op::Put(
                Space::SmMeta,
                KEY_MEMBERSHIP.to_vec(),
                encode(&inner.membership)?,
            ));
            ops.push(Op::Put(
                Space::SmMeta,
                KEY_SNAPSHOT.to_vec(),
                encode(&(meta, &bytes))?,
            ));
            self.disk.write(self.generation, ops).map_err(io)?;
        }
        self.disk.sync(self.generation).await.map_err(io)?;
        self.counts.installed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.stored_snapshot()?.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(SnapshotFile::in_memory(bytes)),
        }))
    }
}
