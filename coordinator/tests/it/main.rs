//! `budgetctl` as a user runs it: the real binary, its output and its exit codes.

mod audit;
mod clock;
mod cluster;
mod disk;
mod regions;
mod tls;
