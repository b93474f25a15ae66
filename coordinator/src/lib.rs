//! The region coordinator and the `budgetctl` CLI.
//!
//! - [`ledger`]: the region state machine, pure: campaigns, budgets, rights, leases and the
//!   financial log, `apply(stamp, command) -> (reply, entries)`.
//! - [`raft`]: openraft's type config for a region, leader proposals, and the ledger as the
//!   `raft-store` machine (rows, log records and applied id in one synced batch).
//! - [`metrics`]: Prometheus metrics on HTTP `/metrics`.
//! - [`network`]: the Raft transport over gRPC, client and server sides.
//! - [`node`]: one node: openraft on the RocksDB stores, proposing, serving.
//! - [`reclaim`]: the leader's lease timers on its monotonic clock, which decide when to propose
//!   reclaiming leases and returning in-doubt money.
//! - [`api`]: the gRPC services of a node: lease API, admin API, audit API.
//! - [`wire`]: conversions between the gRPC messages and the ledger's types.
//! - [`server`]: the `coordinator` process: configuration, the leader's reclaim loop, shutdown.
//! - [`archive`]: sealed segment files of the financial log in the data directory.
//! - [`region`]: cross-region sync (DESIGN §7): pushes, merges, rebalancing, status.
//! - [`budgetctl`]: the operator and auditor CLI.
//! - [`fail_stop`]: a panic anywhere stops the process.

pub mod api;
pub mod archive;
pub mod budgetctl;
pub mod fail_stop;
pub mod ledger;
pub mod metrics;
pub mod network;
pub mod node;
pub mod raft;
pub mod reclaim;
pub mod region;
pub mod server;
pub mod wire;
