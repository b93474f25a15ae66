//! openraft storage on RocksDB.
//!
//! - [`log_store`]: [`LogStore`], openraft's `RaftLogStorage` on the `raft_log` and `raft_meta`
//!   column families: log, vote, committed log id.
//! - [`state_store`]: [`StateStore`], openraft's `RaftStateMachine` over any [`Machine`]: the
//!   machine's rows, the financial-log records and the last-applied log id of a batch in one
//!   synced `WriteBatch`; snapshots are files ([`SnapshotFile`]) of the rows and the records not
//!   yet archived, streamed to and from openraft.
//!
//! Only this crate knows RocksDB. It links Debian's RocksDB 7.8 (see `.cargo/config.toml`).

// openraft's `StorageError` is large (~190 bytes), and the storage traits return it from every
// method; the helpers here return it too rather than box and unbox it at every call.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod state_store;

use std::path::Path;
use std::sync::Arc;

pub use log_store::LogStore;

/// Called with the duration of every synced write (an fsync'd `WriteBatch`), and which store
/// made it (`"log"` or `"state"`). Lets the server export a latency histogram without this crate
/// knowing about metrics.
pub type SyncObserver = std::sync::Arc<dyn Fn(&'static str, std::time::Duration) + Send + Sync>;
pub use state_store::{Machine, MachineApplied, SnapshotFile, SnapshotStats, StateStore};

/// Every column family the crate uses.
pub const COLUMN_FAMILIES: &[&str] = &[
    log_store::CF_LOG,
    log_store::CF_META,
    state_store::CF_ROWS,
    state_store::CF_FIN_LOG,
    state_store::CF_SM_META,
];

/// The write-ahead log's total size at which RocksDB flushes the column families that keep its
/// oldest file alive.
pub const WAL_MAX_BYTES: u64 = 256 << 20;

/// Opens (creating if missing) the node's database at `path` with every column family.
pub fn open_db(path: &Path) -> Result<Arc<rocksdb::DB>, rocksdb::Error> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // A write-ahead log file goes only once every column family's memtable holding part of it
    // is flushed; the quiet families (meta) would keep every file alive, and the database grew
    // by the whole write rate under steady load. Past this total, RocksDB flushes them.
    opts.set_max_total_wal_size(WAL_MAX_BYTES);
    let cfs = COLUMN_FAMILIES
        .iter()
        .map(|name| rocksdb::ColumnFamilyDescriptor::new(*name, rocksdb::Options::default()));
    Ok(Arc::new(rocksdb::DB::open_cf_descriptors(
        &opts, path, cfs,
    )?))
}

/// Runs `work`, which blocks (a synced RocksDB write, a state-machine batch), on the current
/// thread while telling a multi-threaded Tokio runtime to move its other tasks elsewhere, so
/// that Raft heartbeats and gRPC replies do not queue behind an fsync. On a current-thread
/// runtime (tests), or outside one, it simply runs.
pub(crate) fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}
