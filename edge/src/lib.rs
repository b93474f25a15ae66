//! The edge bidder.
//!
//! - [`openrtb`]: bid requests as read from the wire, checked; the response we write.
//! - [`catalog`]: the campaigns, indexed; matching, floors and currencies, deals, the price.
//! - [`lease`]: leases as this edge holds them, with their spending window, and each campaign's
//!   slot (current lease, pacing throttle).
//! - [`bidder`]: the bid path and the notice path.
//! - [`manager`]: off the bid path: campaign polling, pacing, asking for and retiring leases.
//! - [`settle`]: spend batches to the leader with stable ids, retried until acknowledged.
//! - [`coord`]: the region's coordinators, leader-following.
//! - [`config`], [`metrics`], [`server`]: configuration, Prometheus metrics, HTTP routes.
//! - [`fixture`]: an edge that bids on anything without a coordinator, for tests and benchmarks.
//! - [`http`]: a small HTTP client (the simulated exchange and tests use it).
//! - [`sim`]: a small simulated exchange (second-price auctions, notices to any edge, its own
//!   billing record) for the local topology and tests.
//! - [`reserve`]: the reservation, the per-bid hold on a lease, one atomic operation.
//! - [`notice`]: win, billing and loss notice URLs: signed when we bid, checked when they come
//!   back, and the clearing price read from the exchange's macro.

pub mod bidder;
pub mod catalog;
pub mod config;
pub mod coord;
pub mod fixture;
pub mod http;
pub mod lease;
pub mod manager;
pub mod metrics;
pub mod notice;
pub mod openrtb;
pub mod reserve;
pub mod server;
pub mod settle;
pub mod sim;
