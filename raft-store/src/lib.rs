//! openraft storage on RocksDB: the Raft log, the vote and the committed log id (built), and the
//! state machine's column families with snapshots (not built yet: they come with the region
//! state machine, so that one atomic `WriteBatch` can hold state rows, financial-log entries and
//! the last-applied log id).
//!
//! - [`log_store`]: [`LogStore`], openraft's `RaftLogStorage` on the `raft_log` and `raft_meta`
//!   column families.
//!
//! Only this crate knows RocksDB. It links Debian's RocksDB 7.8 (see `.cargo/config.toml`).

pub mod log_store;

use std::path::Path;
use std::sync::Arc;

pub use log_store::LogStore;

/// Every column family the crate uses.
pub const COLUMN_FAMILIES: &[&str] = &[log_store::CF_LOG, log_store::CF_META];

/// Opens (creating if missing) the node's database at `path` with every column family.
pub fn open_db(path: &Path) -> Result<Arc<rocksdb::DB>, rocksdb::Error> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = COLUMN_FAMILIES
        .iter()
        .map(|name| rocksdb::ColumnFamilyDescriptor::new(*name, rocksdb::Options::default()));
    Ok(Arc::new(rocksdb::DB::open_cf_descriptors(
        &opts, path, cfs,
    )?))
}
