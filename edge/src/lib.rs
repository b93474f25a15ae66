//! The edge bidder: OpenRTB 2.x endpoint, campaign matching and pricing, the lease cache and
//! per-bid reservations, notice endpoints and batched spend reports.
//!
//! Not built yet: this is the subject of the edge issue. The crate exists so that the workspace
//! has its final shape.
