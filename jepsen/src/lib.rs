//! The Jepsen-style harness: recorded histories, the checkers of DESIGN §9's invariants, the
//! seeded nemesis schedule, and [`run`], which starts a real topology, injects the faults and
//! writes the report (`jepsen run`).

pub mod check;
pub mod history;
pub mod nemesis;
pub mod run;
