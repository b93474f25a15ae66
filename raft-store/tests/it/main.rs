//! openraft's own storage test suite against [`raft_store::LogStore`] and
//! [`raft_store::StateStore`], and durability across reopening the database.

mod damage;
mod sum;

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError, Vote};
use raft_store::{LogStore, SnapshotFile, StateStore, open_db};

openraft::declare_raft_types!(
    pub TestConfig:
        D = u64,
        R = u64,
        SnapshotData = SnapshotFile,
);

type Sm = StateStore<TestConfig, sum::Sum>;

struct Builder;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, Sm, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<TestConfig>, Sm), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_db(&dir.path().join("db")).expect("open rocksdb");
        let sm = StateStore::open(
            db.clone(),
            &dir.path().join("snapshots"),
            sum::Sum::default(),
        )?;
        Ok((dir, LogStore::new(db), sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

fn normal(index: u64, v: u64) -> Entry<TestConfig> {
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Normal(v),
    }
}

#[tokio::test]
async fn vote_committed_and_entries_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store: LogStore<TestConfig> = LogStore::new(open_db(dir.path()).unwrap());
        store.save_vote(&Vote::new(3, 1)).await.unwrap();
        store
            .blocking_append((1..=5).map(|i| normal(i, i * 10)))
            .await
            .unwrap();
        store.save_committed(Some(log_id(4))).await.unwrap();
        store.purge(log_id(2)).await.unwrap();
    }
    let mut store: LogStore<TestConfig> = LogStore::new(open_db(dir.path()).unwrap());
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(4)));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2)));
    assert_eq!(state.last_log_id, Some(log_id(5)));
    let got = store.try_get_log_entries(3..6).await.unwrap();
    let payloads: Vec<u64> = got
        .iter()
        .map(|e| match e.payload {
            EntryPayload::Normal(v) => v,
            _ => panic!("not a normal entry"),
        })
        .collect();
    assert_eq!(payloads, [30, 40, 50]);
    store.truncate(log_id(4)).await.unwrap();
    assert_eq!(
        store.get_log_state().await.unwrap().last_log_id,
        Some(log_id(3))
    );
}

fn open_sm(dir: &Path) -> Sm {
    Sm::open(
        open_db(&dir.join("db")).unwrap(),
        &dir.join("snapshots"),
        sum::Sum::default(),
    )
    .unwrap()
}

/// Streams `bytes` into `sm` as openraft does with a snapshot it receives, and installs them.
async fn receive(
    sm: &mut Sm,
    meta: &openraft::SnapshotMeta<u64, openraft::BasicNode>,
    bytes: &[u8],
) -> Result<(), StorageError<u64>> {
    use tokio::io::AsyncWriteExt as _;
    let mut received = sm.begin_receiving_snapshot().await?;
    received.write_all(bytes).await.unwrap();
    received.shutdown().await.unwrap();
    sm.install_snapshot(meta, received).await
}

/// The files in a store's snapshot directory, by name.
fn snapshot_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn applied_state_rows_and_records_survive_a_reopen_and_travel_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = open_sm(dir.path());
        let replies = sm.apply((1..=4).map(|i| normal(i, i))).await.unwrap();
        assert_eq!(replies, [1, 3, 6, 10]);
    }
    let mut sm = open_sm(dir.path());
    assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(4)));
    assert_eq!(
        sm.read(|s| s.total),
        10,
        "the machine was rebuilt from its rows"
    );
    assert_eq!(
        sm.log_records(2, 10).unwrap(),
        [(2, vec![2]), (3, vec![3]), (4, vec![4])]
    );

    // A snapshot installed on a fresh node brings rows, records and the applied position,
    // streamed through a file the receiver made.
    let snap = sm.build_snapshot().await.unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = open_sm(other_dir.path());
    other.apply([normal(1, 99)]).await.unwrap();
    let bytes = std::fs::read(snap.snapshot.path()).unwrap();
    receive(&mut other, &snap.meta, &bytes).await.unwrap();
    assert_eq!(other.read(|s| s.total), 10);
    assert_eq!(other.applied_state().await.unwrap().0, Some(log_id(4)));
    assert_eq!(other.log_records(0, 10).unwrap().len(), 4);
    let current = other.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
    assert_eq!(std::fs::read(current.snapshot.path()).unwrap(), bytes);
    assert_eq!(
        snapshot_files(other_dir.path()).len(),
        1,
        "the received file became the current snapshot: {:?}",
        snapshot_files(other_dir.path())
    );

    // A damaged snapshot (one byte flipped, or one missing) is refused without changing anything.
    for damage in [Damage::Flip, Damage::Truncate] {
        let good = sm.build_snapshot().await.unwrap();
        let mut bytes = std::fs::read(good.snapshot.path()).unwrap();
        match damage {
            Damage::Flip => {
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x40;
            }
            Damage::Truncate => {
                bytes.pop();
            }
        }
        let err = receive(&mut other, &good.meta, &bytes).await;
        assert!(err.is_err(), "{damage:?}");
        assert_eq!(other.read(|s| s.total), 10);
        assert_eq!(other.log_records(0, 10).unwrap().len(), 4);
    }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Flip,
    Truncate,
}

/// Records the application forgot (archived elsewhere) are in no later snapshot, and a node
/// that installs one holds the records from its first on; the snapshot's size follows what is
/// stored, not the history.
#[tokio::test]
async fn forgotten_records_leave_the_store_and_later_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_sm(dir.path());
    sm.apply((1..=200).map(|i| normal(i, i % 250)))
        .await
        .unwrap();
    let whole = sm.build_snapshot().await.unwrap();
    let whole_stats = sm.last_snapshot_build().unwrap();
    assert_eq!(whole_stats.records, 200);
    assert_eq!(sm.first_log_seq().unwrap(), Some(1));

    sm.forget_log_before(191).unwrap();
    assert_eq!(sm.first_log_seq().unwrap(), Some(191));
    assert_eq!(sm.log_records(0, 5).unwrap()[0].0, 191);
    sm.apply((201..=210).map(|i| normal(i, 1))).await.unwrap();
    let tail = sm.build_snapshot().await.unwrap();
    let tail_stats = sm.last_snapshot_build().unwrap();
    assert_eq!(tail_stats.records, 20, "191..=210");
    assert!(
        tail_stats.bytes < whole_stats.bytes,
        "{tail_stats:?} vs {whole_stats:?}"
    );
    assert_ne!(tail.meta.snapshot_id, whole.meta.snapshot_id);
    assert_eq!(
        snapshot_files(dir.path()).len(),
        1,
        "older snapshot files are removed: {:?}",
        snapshot_files(dir.path())
    );

    let other_dir = tempfile::tempdir().unwrap();
    let mut other = open_sm(other_dir.path());
    let bytes = std::fs::read(tail.snapshot.path()).unwrap();
    receive(&mut other, &tail.meta, &bytes).await.unwrap();
    assert_eq!(other.first_log_seq().unwrap(), Some(191));
    assert_eq!(other.log_records(0, 100).unwrap().len(), 20);
    assert_eq!(other.read(|s| s.total), sm.read(|s| s.total));

    // Reopened, both stores keep their current snapshot and nothing else.
    drop((sm, other));
    let mut sm = open_sm(dir.path());
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, tail.meta);
    assert_eq!(snapshot_files(dir.path()).len(), 1);
}
