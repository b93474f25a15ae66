//! The region coordinator and the `budgetctl` CLI.
//!
//! - [`budgetctl`]: the operator and auditor CLI (today: `audit verify`, `audit prove`,
//!   `audit check-proof`, which need no server).
//!
//! The coordinator server itself (openraft node, gRPC services, the region state machine, lease
//! reclaim, cross-region sync) is the subject of the coordinator issue and not built yet.

pub mod budgetctl;
