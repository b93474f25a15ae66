//! A node's simulated disk: writes land at once in what the node reads, and become durable
//! only when synced. A sync takes simulated time; a crash keeps only what was synced before it,
//! and fences the crashed instance off (its later writes fail, as a dead process's would).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The disk's key spaces (RocksDB's column families in the real store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    /// Raft log entries by index (big-endian).
    Log = 0,
    /// Vote, committed, last purged.
    Meta = 1,
    /// The machine's rows.
    Rows = 2,
    /// Financial-log records by seq (big-endian).
    Records = 3,
    /// Applied log id, membership.
    SmMeta = 4,
}

const SPACES: usize = 5;

/// Everything on the disk, one sorted map per space.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image(pub [BTreeMap<Vec<u8>, Vec<u8>>; SPACES]);

impl Image {
    /// The map of `space`.
    pub fn space(&self, space: Space) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.0[space as usize]
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Put(s, k, v) => {
                self.0[*s as usize].insert(k.clone(), v.clone());
            }
            Op::Delete(s, k) => {
                self.0[*s as usize].remove(k);
            }
            Op::DeleteRange(s, from, to) => {
                let m = &mut self.0[*s as usize];
                let doomed: Vec<Vec<u8>> = m
                    .range(from.clone()..to.clone())
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    m.remove(&k);
                }
            }
            Op::Clear(s) => self.0[*s as usize].clear(),
        }
    }
}

/// One write.
#[derive(Clone, Debug)]
pub enum Op {
    /// Set a key.
    Put(Space, Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Space, Vec<u8>),
    /// Remove `[from, to)`.
    DeleteRange(Space, Vec<u8>, Vec<u8>),
    /// Remove every key of a space.
    Clear(Space),
}

/// Why a disk operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskError {
    /// The instance that issued it crashed.
    Crashed,
}

impl std::fmt::Display for DiskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the node crashed: its disk is fenced off")
    }
}

impl std::error::Error for DiskError {}

#[derive(Debug, Default)]
struct State {
    /// What survives a crash.
    durable: Image,
    /// What the running instance reads: durable plus `pending`.
    current: Image,
    /// Written, not yet synced: whole writes, each durable entire or not at all (as a
    /// RocksDB write batch is in its write-ahead log).
    pending: Vec<Vec<Op>>,
    /// Bumped by each crash: an instance holds the generation it started with.
    generation: u64,
    /// Syncs completed, writes lost to crashes (for the trace).
    syncs: u64,
    lost: u64,
    /// Writes of the state machine's `applied` id lost to crashes: applies the node made,
    /// unsynced, and must make again from its log.
    lost_applies: u64,
}

/// A node's disk, shared by its stores. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    state: Arc<Mutex<State>>,
    /// How long a sync takes, drawn per sync: `(min, max)` in µs.
    sync_us: (u64, u64),
    rng: Arc<Mutex<fastrand::Rng>>,
}

impl Disk {
    /// An empty disk whose syncs take `sync_us` (drawn from `seed`).
    pub fn new(seed: u64, sync_us: (u64, u64)) -> Disk {
        Disk {
            state: Arc::new(Mutex::new(State::default())),
            sync_us,
            rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(seed))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The generation a new instance starts with.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Reads what instance `generation` sees.
    pub fn read<T>(&self, generation: u64, f: impl FnOnce(&Image) -> T) -> Result<T, DiskError> {
        let s = self.lock();
        if s.generation != generation {
            return Err(DiskError::Crashed);
        }
        Ok(f(&s.current))
    }

    /// Writes `ops` (visible at once, durable after a sync).
    pub fn write(&self, generation: u64, ops: Vec<Op>) -> Result<(), DiskError> {
        let mut s = self.lock();
        if s.generation != generation {
            return Err(DiskError::Crashed);
        }
        for op in &ops {
            s.current.apply(op);
        }
        s.pending.push(ops);
        Ok(())
    }

    /// Writes `ops` and waits for them (and every earlier write) to be synced.
    pub async fn write_synced(&self, generation: u64, ops: Vec<Op>) -> Result<(), DiskError> {
        self.write(generation, ops)?;
        self.sync(generation).await
    }

    /// Waits a sync's time, then makes every write issued before it durable, unless the
    /// instance crashed meanwhile.
    pub async fn sync(&self, generation: u64) -> Result<(), DiskError> {
        let upto = self.lock().pending.len();
        let wait = {
            let mut r = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            r.u64(self.sync_us.0..=self.sync_us.1.max(self.sync_us.0))
        };
        tokio::time::sleep(Duration::from_micros(wait)).await;
        let mut s = self.lock();
        if s.generation != generation {
            return Err(DiskError::Crashed);
        }
        // Writes issued while this sync waited are left for the next one (an earlier sync
        // may have taken some of ours already, and then this one takes as many later writes,
        // each whole).
        let upto = upto.min(s.pending.len());
        let done: Vec<Vec<Op>> = s.pending.drain(..upto).collect();
        for op in done.iter().flatten() {
            s.durable.apply(op);
        }
        s.syncs += 1;
        Ok(())
    }

    /// The process crashed: what was not synced is gone, and the running instance is fenced off.
    pub fn crash(&self) {
        let mut s = self.lock();
        s.generation += 1;
        s.lost += s.pending.iter().map(|w| w.len() as u64).sum::<u64>();
        s.lost_applies += s
            .pending
            .iter()
            .filter(|w| {
                w.iter()
                    .any(|op| matches!(op, Op::Put(Space::SmMeta, k, _) if k == b"applied"))
            })
            .count() as u64;
        s.pending.clear();
        s.current = s.durable.clone();
    }

    /// What survives a crash now.
    pub fn durable(&self) -> Image {
        self.lock().durable.clone()
    }

    /// `(syncs, writes lost to crashes)`.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.lock();
        (s.syncs, s.lost)
    }

    /// Applies (batches with their `applied` id) lost to crashes before a sync made them
    /// durable.
    pub fn lost_applies(&self) -> u64 {
        self.lock().lost_applies
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_crash_keeps_what_was_synced_and_fences_the_old_instance() {
        let d = Disk::new(1, (100, 100));
        let g = d.generation();
        d.write_synced(g, vec![Op::Put(Space::Rows, b"a".to_vec(), b"1".to_vec())])
            .await
            .unwrap();
        d.write(g, vec![Op::Put(Space::Rows, b"b".to_vec(), b"2".to_vec())])
            .unwrap();
        assert_eq!(d.read(g, |i| i.space(Space::Rows).len()).unwrap(), 2);
        d.crash();
        assert_eq!(d.read(g, |_| ()), Err(DiskError::Crashed));
        assert!(d.write(g, vec![]).is_err());
        let g2 = d.generation();
        let rows = d.read(g2, |i| i.space(Space::Rows).clone()).unwrap();
        assert_eq!(rows.keys().collect::<Vec<_>>(), [b"a"]);
        assert_eq!(d.counts(), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_during_a_sync_loses_its_writes() {
        let d = Disk::new(1, (1_000, 1_000));
        let g = d.generation();
        let w = {
            let d = d.clone();
            tokio::spawn(async move {
                d.write_synced(g, vec![Op::Put(Space::Log, vec![1], vec![1])])
                    .await
            })
        };
        tokio::time::sleep(Duration::from_micros(500)).await;
        d.crash();
        assert_eq!(w.await.unwrap(), Err(DiskError::Crashed));
        assert!(d.durable().space(Space::Log).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_is_durable_whole_or_not_at_all() {
        // Two syncs overlap; a two-op write lands after the first drained and before the
        // second ends. A crash then must keep both ops or neither (a RocksDB write batch is
        // atomic in its write-ahead log).
        // (Tokio's timers tick in milliseconds.)
        let d = Disk::new(1, (10_000, 10_000));
        let g = d.generation();
        d.write(g, vec![Op::Put(Space::Rows, b"a".to_vec(), b"1".to_vec())])
            .unwrap();
        let first = tokio::spawn({
            let d = d.clone();
            async move { d.sync(g).await }
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
        let second = tokio::spawn({
            let d = d.clone();
            async move { d.sync(g).await }
        });
        tokio::time::sleep(Duration::from_millis(9)).await;
        first.await.unwrap().unwrap();
        d.write(
            g,
            vec![
                Op::Put(Space::Rows, b"b".to_vec(), b"2".to_vec()),
                Op::Put(Space::SmMeta, b"applied".to_vec(), b"2".to_vec()),
            ],
        )
        .unwrap();
        second.await.unwrap().unwrap();
        d.crash();
        let durable = d.durable();
        assert_eq!(
            durable.space(Space::Rows).contains_key(&b"b"[..]),
            durable.space(Space::SmMeta).contains_key(&b"applied"[..]),
            "a write torn in two: {durable:?}"
        );
    }
}
