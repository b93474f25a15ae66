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
pub use state_store::{
    Machine, MachineApplied, SnapshotContents, SnapshotFile, SnapshotStats, StateStore,
    decode_snapshot, encode_snapshot, snapshot_id,
};

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
///
/// Damage is refused, never repaired silently: RocksDB's paranoid checks are on (a damaged
/// file found at open or while running stops the database instead of being skipped), and a
/// write-ahead log may lose only its last record, the one a crash cut short; a damaged record
/// before it is an error, not the end of the log (the default would drop it and every synced
/// entry after it: a replica forgetting what it acknowledged). [`verify_db`] reads the rest.
pub fn open_db(path: &Path) -> Result<Arc<rocksdb::DB>, rocksdb::Error> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_paranoid_checks(true);
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
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

/// What [`verify_db`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// Keys read, in every column family.
    pub keys: u64,
    /// Their bytes, keys and values.
    pub bytes: u64,
}

/// Reads every key of every column family with block checksums verified and without filling
/// the block cache: a damaged table block (bit rot, a torn or overwritten file) is found now,
/// at start, instead of at the first read that needs it. An error names the damage.
pub fn verify_db(db: &rocksdb::DB) -> Result<Verified, rocksdb::Error> {
    let mut seen = Verified::default();
    for name in COLUMN_FAMILIES {
        let Some(cf) = db.cf_handle(name) else {
            continue;
        };
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_verify_checksums(true);
        opts.fill_cache(false);
        for item in db.iterator_cf_opt(cf, opts, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            seen.keys += 1;
            seen.bytes += (k.len() + v.len()) as u64;
        }
    }
    Ok(seen)
}

/// True if `e` is RocksDB's report of damaged data (a checksum that does not match, a file
/// that is not what the manifest says), as opposed to an I/O error such as a full disk.
pub fn is_corruption(e: &rocksdb::Error) -> bool {
    e.kind() == rocksdb::ErrorKind::Corruption
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
