//! openraft storage on RocksDB: the Raft log, the vote, snapshots and the region state machine's
//! column families, committed with the financial log and the last-applied index in one atomic
//! `WriteBatch`.
//!
//! Not built yet: this is the subject of the coordinator issue. The crate exists so that the
//! workspace has its final shape.
