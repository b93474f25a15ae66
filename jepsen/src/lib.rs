//! The Jepsen-style harness: recorded histories, the checkers of DESIGN §9's invariants, and
//! the seeded nemesis schedule. (`jepsen run`, which starts topologies and injects the faults,
//! is being built on these.)

pub mod check;
pub mod history;
pub mod nemesis;
