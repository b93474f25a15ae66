//! Fault injection for real processes on one machine: a private network namespace
//! ([`netns`]), network faults with nftables ([`net`]), and process faults ([`process`]).
//! See ARCHITECTURE.md for which mechanism does what and what it cannot do.

pub mod net;
pub mod netns;
pub mod process;
