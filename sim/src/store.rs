//! openraft's storage on the simulated [`Disk`]: the Raft log, vote and committed id, and the
//! state machine over the coordinator's real [`LedgerMachine`], with the real store's rules —
//! an append is acknowledged once synced; a batch of applied entries writes its rows, its
//! financial-log records and the applied id together, in one synced write.
//!
//! Snapshots are not simulated yet: the simulation never purges the log, so no snapshot is
//! ever built or sent (building one is refused, loudly).

#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
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
use raft_store::{Machine, SnapshotFile};
use shared::RegionId;

use crate::disk::{Disk, Op, Space};

type SResult<T> = Result<T, StorageError<u64>>;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";
const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";

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

/// The state machine of one node instance: the real ledger, persisted on the simulated disk.
#[derive(Clone)]
pub struct SimState {
    disk: Disk,
    generation: u64,
    inner: Arc<Mutex<Inner>>,
}

impl SimState {
    /// The state machine of the instance starting now on `disk`: the ledger rebuilt from the
    /// durable rows, as the real store does on restart.
    pub fn open(disk: &Disk, region: RegionId) -> anyhow::Result<SimState> {
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

impl RaftSnapshotBuilder<TypeConfig> for SimState {
    async fn build_snapshot(&mut self) -> SResult<Snapshot<TypeConfig>> {
        Err(StorageIOError::write_snapshot(
            None,
            AnyError::error("the simulation builds no snapshots (its log is never purged)"),
        )
        .into())
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
        let (ops, replies) = {
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
            (ops, replies)
        };
        self.disk
            .write_synced(self.generation, ops)
            .await
            .map_err(io)?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> SResult<Box<SnapshotFile>> {
        Err(StorageIOError::write_snapshot(
            None,
            AnyError::error("the simulation receives no snapshots"),
        )
        .into())
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<u64, BasicNode>,
        _snapshot: Box<SnapshotFile>,
    ) -> SResult<()> {
        Err(StorageIOError::write_snapshot(
            None,
            AnyError::error("the simulation installs no snapshots"),
        )
        .into())
    }

    async fn get_current_snapshot(&mut self) -> SResult<Option<Snapshot<TypeConfig>>> {
        Ok(None)
    }
}
