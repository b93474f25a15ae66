//! The Jepsen-style harness: recorded histories and the checkers of DESIGN §9's invariants.
//! (`jepsen run`, which starts topologies and injects faults, comes with the chaos issue.)

pub mod check;
pub mod history;
