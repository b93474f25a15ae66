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

/// The chunks of `bytes` openraft would send, as install requests.
fn chunks(
    meta: &openraft::SnapshotMeta<u64, openraft::BasicNode>,
    bytes: &[u8],
    size: usize,
) -> Vec<openraft::raft::InstallSnapshotRequest<TestConfig>> {
    let n = bytes.len().div_ceil(size);
    (0..n)
        .map(|i| openraft::raft::InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: meta.clone(),
            offset: (i * size) as u64,
            data: bytes[i * size..((i + 1) * size).min(bytes.len())].to_vec(),
            done: i + 1 == n,
        })
        .collect()
}

/// A leader whose chunk RPC timed out sends it again, and the receiver may drop a request
/// it is still serving (the RPC was cancelled). openraft's receiver seeks only when a chunk
/// does not start where the last one ended: a request dropped while its seek was pending must
/// not leave the file somewhere the receiver does not expect. (Over `tokio::fs::File` the next
/// chunk was written at the dropped request's offset, and the install failed.)
#[tokio::test]
async fn a_chunk_request_dropped_mid_flight_does_not_misplace_the_next_chunk() {
    use std::future::Future as _;
    use std::task::{Context, Waker};

    use openraft::network::snapshot_transport::Streaming;
    use tokio::io::AsyncWriteExt as _;

    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_sm(dir.path());
    sm.apply((1..=300).map(|i| normal(i, i % 7))).await.unwrap();
    let snap = sm.build_snapshot().await.unwrap();
    let bytes = std::fs::read(snap.snapshot.path()).unwrap();
    let reqs = chunks(&snap.meta, &bytes, 512);
    assert!(reqs.len() >= 4, "{} chunks", reqs.len());

    let other_dir = tempfile::tempdir().unwrap();
    let mut other = open_sm(other_dir.path());
    let mut streaming = Streaming::<TestConfig>::new(
        snap.meta.snapshot_id.clone(),
        other.begin_receiving_snapshot().await.unwrap(),
    );
    // A late copy of chunk 2 arrives first (it needs a seek), and its RPC is dropped after
    // one poll; the stream then goes on from the start.
    {
        let mut late = std::pin::pin!(streaming.receive(reqs[2].clone()));
        let _ = late.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    }
    for req in &reqs {
        streaming.receive(req.clone()).await.unwrap();
    }
    let mut data = streaming.into_snapshot_data();
    data.shutdown().await.unwrap();
    assert_eq!(
        std::fs::read(data.path()).unwrap(),
        bytes,
        "the received file"
    );
    other.install_snapshot(&snap.meta, data).await.unwrap();
    assert_eq!(other.read(|s| s.total), sm.read(|s| s.total));
}

/// A leader reads its current snapshot to send it while a newer one is being built: the
/// pointer it read must never name a file the build already removed (openraft stops the
/// leader on "snapshot not found": `jepsen run --nemesis all --seed 1`, us-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_current_snapshot_is_readable_while_newer_ones_replace_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_sm(dir.path());
    sm.apply((1..=50).map(|i| normal(i, i))).await.unwrap();
    sm.build_snapshot().await.unwrap();
    let mut builder = sm.clone();
    let builds = tokio::spawn(async move {
        for i in 51..=150 {
            builder.apply([normal(i, 1)]).await.unwrap();
            builder.build_snapshot().await.unwrap();
        }
    });
    let mut reads = 0u32;
    while !builds.is_finished() {
        let current = sm.get_current_snapshot().await.unwrap();
        let current = current.expect("a current snapshot, always");
        let mut file = current.snapshot;
        let mut head = [0u8; 8];
        tokio::io::AsyncReadExt::read_exact(&mut *file, &mut head)
            .await
            .unwrap();
        assert_eq!(&head, b"BUDGSNP2");
        reads += 1;
    }
    builds.await.unwrap();
    assert!(reads > 10, "only {reads} reads overlapped the builds");
    assert_eq!(
        snapshot_files(dir.path()).len(),
        1,
        "{:?}",
        snapshot_files(dir.path())
    );
}

/// A current snapshot whose file was lost (not by the store) is rebuilt when openraft asks for
/// it, not reported as "none", which would stop a leader that needs it for a follower.
#[tokio::test]
async fn a_lost_snapshot_file_is_rebuilt_when_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut sm = open_sm(dir.path());
    sm.apply((1..=20).map(|i| normal(i, i))).await.unwrap();
    let snap = sm.build_snapshot().await.unwrap();
    std::fs::remove_file(snap.snapshot.path()).unwrap();
    let current = sm.get_current_snapshot().await.unwrap().expect("rebuilt");
    assert_eq!(current.meta.last_log_id, Some(log_id(20)));
    assert!(current.snapshot.path().exists());
}
