//! Fault injection for real processes on one machine: a private network namespace
//! ([`netns`]), network faults with nftables ([`net`]), delay and reordering through a
//! userspace queue ([`delay`]), and process faults ([`process`]). Clock faults are skew files
//! for `shared::clock`.
//! See ARCHITECTURE.md for which mechanism does what and what it cannot do.

pub mod delay;
pub mod net;
pub mod netns;
pub mod process;
