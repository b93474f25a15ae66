//! openraft's own storage test suite against [`raft_store::LogStore`] and
//! [`raft_store::StateStore`], and durability across reopening the database.

mod sum;

use std::io::Cursor;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError, Vote};
use raft_store::{LogStore, StateStore, open_db};

openraft::declare_raft_types!(
    pub TestConfig:
        D = u64,
        R = u64,
);

// `declare_raft_types!` makes `SnapshotData = Cursor<Vec<u8>>` (BUILD-FACTS: import Cursor).
const _: fn(Cursor<Vec<u8>>) = |_| {};

type Sm = StateStore<TestConfig, sum::Sum>;

struct Builder;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, Sm, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore<TestConfig>, Sm), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_db(dir.path()).expect("open rocksdb");
        let sm = StateStore::open(db.clone(), sum::Sum::default())?;
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

#[tokio::test]
async fn applied_state_rows_and_records_survive_a_reopen_and_travel_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sm = Sm::open(open_db(dir.path()).unwrap(), sum::Sum::default()).unwrap();
        let replies = sm.apply((1..=4).map(|i| normal(i, i))).await.unwrap();
        assert_eq!(replies, [1, 3, 6, 10]);
    }
    let db = open_db(dir.path()).unwrap();
    let mut sm = Sm::open(db.clone(), sum::Sum::default()).unwrap();
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

    // A snapshot installed on a fresh node brings rows, records and the applied position.
    let snap = sm.build_snapshot().await.unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = Sm::open(open_db(other_dir.path()).unwrap(), sum::Sum::default()).unwrap();
    other.apply([normal(1, 99)]).await.unwrap();
    other
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .unwrap();
    assert_eq!(other.read(|s| s.total), 10);
    assert_eq!(other.applied_state().await.unwrap().0, Some(log_id(4)));
    assert_eq!(other.log_records(0, 10).unwrap().len(), 4);
    assert!(other.get_current_snapshot().await.unwrap().is_some());
    // And a damaged snapshot is refused without changing anything.
    let good = sm.build_snapshot().await.unwrap();
    let mut bytes = good.snapshot.into_inner();
    bytes.truncate(bytes.len() - 1);
    let err = other
        .install_snapshot(&good.meta, Box::new(Cursor::new(bytes)))
        .await;
    assert!(err.is_err());
    assert_eq!(other.read(|s| s.total), 10);
}
