//! The edge bidder.
//!
//! - [`openrtb`]: bid requests as read from the wire, checked; the response we write.
//! - [`reserve`]: the reservation, the per-bid hold on a lease, one atomic operation.
//! - [`notice`]: win, billing and loss notice URLs: signed when we bid, checked when they come
//!   back, and the clearing price read from the exchange's macro.

pub mod notice;
pub mod openrtb;
pub mod reserve;
