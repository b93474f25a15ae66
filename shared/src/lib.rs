//! Everything the processes of a region, and an auditor, must agree on.
//!
//! - [`money`]: integer micros, checked arithmetic, the one CPM-to-micros conversion.
//! - [`id`]: campaign, region, edge, exchange, lease and batch ids, and the key of a spend event.
//! - [`bucket`]: lifetime and daily buckets, days in the campaign's IANA time zone.
//! - [`targeting`]: what a campaign bids on (formats, sizes, geo, lists, deals) and its pacing.
//! - [`crdt`]: the bounded counter that splits a bucket's rights between regions.
//! - [`exposition`]: Prometheus' text format from the metrics crate's OpenMetrics.
//! - [`log`]: the financial log: entries, their canonical bytes and hash chain, Merkle proofs of
//!   single charges, sealed segment files and their verification.
//! - `proto` (feature `grpc`): the gRPC services, generated from `proto/` at build time.
//!
//! This crate does no network I/O and reads files only where asked to verify an archive, so an
//! auditor's tool can depend on it alone (with default features).

pub mod bucket;
pub mod clock;
pub mod crdt;
pub mod exposition;
pub mod id;
pub mod log;
pub mod money;
pub mod planted;
#[cfg(feature = "grpc")]
pub mod proto;
#[cfg(feature = "grpc")]
pub mod shutdown;
pub mod targeting;
#[cfg(feature = "tls")]
pub mod tls;

pub use bucket::{Bucket, BucketKey, CampaignZone};
pub use id::{BatchId, CampaignId, EdgeId, EventKey, ExchangeId, LeaseId, RegionId};
pub use money::Money;
