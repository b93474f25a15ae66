//! The test harness: starts a multi-region topology, drives a simulated exchange, records a
//! history, injects faults from `chaos`, checks the invariants of DESIGN §9 and writes a report.
//!
//! Not built yet: this is the subject of the harness issue. The crate exists so that the
//! workspace has its final shape.
