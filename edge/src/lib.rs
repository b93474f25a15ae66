//! The edge bidder.
//!
//! - [`openrtb`]: bid requests as read from the wire, checked; the response we write.
//! - [`catalog`]: the campaigns, indexed; matching, floors and currencies, deals, the price.
//! - [`lease`]: leases as this edge holds them, with their spending window, and each campaign's
//!   slot (current lease, pacing throttle).
//! - [`reserve`]: the reservation, the per-bid hold on a lease, one atomic operation.
//! - [`notice`]: win, billing and loss notice URLs: signed when we bid, checked when they come
//!   back, and the clearing price read from the exchange's macro.

pub mod catalog;
pub mod lease;
pub mod notice;
pub mod openrtb;
pub mod reserve;
