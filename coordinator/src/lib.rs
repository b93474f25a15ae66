//! The region coordinator and the `budgetctl` CLI.
//!
//! - [`ledger`]: the region state machine, pure: campaigns, budgets, rights, leases and the
//!   financial log, `apply(stamp, command) -> (reply, entries)`.
//! - [`budgetctl`]: the operator and auditor CLI (today: `audit verify`, `audit prove`,
//!   `audit check-proof`, which need no server).
//!
//! Not built yet: the server (openraft node on `raft-store`, gRPC services, lease reclaim
//! timers, cross-region sync, metrics).

pub mod budgetctl;
pub mod ledger;
