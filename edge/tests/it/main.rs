//! The edge against real coordinators and real HTTP: sample requests, settlement, crashes.

mod harness;
mod samples;
mod settle;
mod tls;
mod topology;
