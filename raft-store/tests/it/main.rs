//! openraft's own storage test suite against [`raft_store::LogStore`], plus durability across a
//! reopen of the database.

mod mem_sm;

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftLogStorage;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{RaftLogReader, StorageError, Vote};
use raft_store::{LogStore, open_db};

openraft::declare_raft_types!(
    pub TestConfig:
        D = u64,
        R = u64,
);

// `declare_raft_types!` makes `SnapshotData = Cursor<Vec<u8>>` (BUILD-FACTS: import Cursor).
const _: fn(Cursor<Vec<u8>>) = |_| {};

struct Builder;

impl StoreBuilder<TestConfig, LogStore<TestConfig>, mem_sm::MemStateMachine, tempfile::TempDir>
    for Builder
{
    async fn build(
        &self,
    ) -> Result<
        (
            tempfile::TempDir,
            LogStore<TestConfig>,
            mem_sm::MemStateMachine,
        ),
        StorageError<u64>,
    > {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = open_db(dir.path()).expect("open rocksdb");
        Ok((dir, LogStore::new(db), mem_sm::MemStateMachine::default()))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}

#[tokio::test]
async fn vote_committed_and_entries_survive_a_reopen() {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    let dir = tempfile::tempdir().unwrap();
    let log_id = |index| LogId::new(CommittedLeaderId::new(3, 1), index);
    {
        let mut store: LogStore<TestConfig> = LogStore::new(open_db(dir.path()).unwrap());
        store.save_vote(&Vote::new(3, 1)).await.unwrap();
        let entries: Vec<Entry<TestConfig>> = (1..=5)
            .map(|i| Entry {
                log_id: log_id(i),
                payload: EntryPayload::Normal(i * 10),
            })
            .collect();
        // LogFlushed has no public constructor: append through the test helper.
        openraft::storage::RaftLogStorageExt::blocking_append(&mut store, entries)
            .await
            .unwrap();
        store.save_committed(Some(log_id(4))).await.unwrap();
        store.purge(log_id(2)).await.unwrap();
    }
    let db: Arc<rocksdb::DB> = open_db(dir.path()).unwrap();
    let mut store: LogStore<TestConfig> = LogStore::new(db);
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
