//! Prometheus metrics of an edge, served on `GET /metrics` beside the bid endpoint.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// One label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// What happened.
    pub outcome: &'static str,
}

/// Notice labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NoticeLabels {
    /// win, bill, loss.
    pub kind: &'static str,
    /// settled, duplicate, refused reason…
    pub result: &'static str,
}

/// Every metric of the edge.
pub struct Metrics {
    registry: Registry,
    /// Bid requests by outcome: bid, no_bid, invalid, shed, late, too_large.
    pub bid_requests: Family<Outcome, Counter>,
    /// Seconds from request to answer, for every request.
    pub bid_seconds: Histogram,
    /// Reservations by result: taken, no_lease, exhausted, given_back.
    pub reservations: Family<Outcome, Counter>,
    /// Micros reserved.
    pub reserved_micros: Counter,
    /// Lease events: acquired, renewed, refused, expired, released, failed.
    pub leases: Family<Outcome, Counter>,
    /// Notices by kind and result.
    pub notices: Family<NoticeLabels, Counter>,
    /// How the clearing price arrived: cleared, first_price, missing, unreplaced, unreadable.
    pub notice_prices: Family<Outcome, Counter>,
    /// Seconds from a batch's first send to its acknowledgement.
    pub batch_commit_seconds: Histogram,
    /// Spend batches by result: committed, retried.
    pub batches: Family<Outcome, Counter>,
    /// Notices waiting for their batch to commit.
    pub notices_pending: Gauge<i64, AtomicI64>,
    /// Campaigns in the catalog.
    pub campaigns: Gauge<i64, AtomicI64>,
    /// The campaigns version held.
    pub catalog_version: Gauge<i64, AtomicI64>,
    /// Leases held (current or settling).
    pub leases_held: Gauge<i64, AtomicI64>,
    /// The bid path's counters, made once: `Family::get_or_create` takes a lock, and the bid
    /// path takes none. Each is a handle on its family's series.
    request_counters: Vec<(&'static str, Counter)>,
    /// `reservations{outcome="taken"}`.
    pub reservation_taken: Counter,
    /// `reservations{outcome="no_lease"}`.
    pub reservation_no_lease: Counter,
    /// `reservations{outcome="exhausted"}`.
    pub reservation_exhausted: Counter,
}

/// Every outcome label of `bid_requests`.
const REQUEST_OUTCOMES: [&str; 9] = [
    "bid",
    "no_match",
    "currency",
    "tmax",
    "late",
    "encode",
    "invalid",
    "shed",
    "too_large",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the prefix `edge`.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("edge");
        let m = Metrics {
            bid_requests: Family::default(),
            bid_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 18)),
            reservations: Family::default(),
            reserved_micros: Counter::default(),
            leases: Family::default(),
            notices: Family::default(),
            notice_prices: Family::default(),
            batch_commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
            batches: Family::default(),
            notices_pending: Gauge::default(),
            campaigns: Gauge::default(),
            catalog_version: Gauge::default(),
            leases_held: Gauge::default(),
            registry: Registry::default(),
            request_counters: Vec::new(),
            reservation_taken: Counter::default(),
            reservation_no_lease: Counter::default(),
            reservation_exhausted: Counter::default(),
        };
        let request_counters = REQUEST_OUTCOMES
            .iter()
            .map(|o| {
                (
                    *o,
                    m.bid_requests
                        .get_or_create(&Outcome { outcome: o })
                        .clone(),
                )
            })
            .collect();
        let res = |outcome| m.reservations.get_or_create(&Outcome { outcome }).clone();
        let (reservation_taken, reservation_no_lease, reservation_exhausted) =
            (res("taken"), res("no_lease"), res("exhausted"));
        r.register(
            "bid_requests",
            "Bid requests by outcome",
            m.bid_requests.clone(),
        );
        r.register("bid_seconds", "Bid request latency", m.bid_seconds.clone());
        r.register(
            "reservations",
            "Reservations by result",
            m.reservations.clone(),
        );
        r.register(
            "reserved_micros",
            "Micros reserved for bids",
            m.reserved_micros.clone(),
        );
        r.register("leases", "Lease events", m.leases.clone());
        r.register("notices", "Notices by kind and result", m.notices.clone());
        r.register(
            "notice_prices",
            "How clearing prices arrived",
            m.notice_prices.clone(),
        );
        r.register(
            "batch_commit_seconds",
            "Spend batch latency, first send to commit",
            m.batch_commit_seconds.clone(),
        );
        r.register("batches", "Spend batches by result", m.batches.clone());
        r.register(
            "notices_pending",
            "Notices waiting for their batch",
            m.notices_pending.clone(),
        );
        r.register("campaigns", "Campaigns in the catalog", m.campaigns.clone());
        r.register(
            "catalog_version",
            "Campaigns version held",
            m.catalog_version.clone(),
        );
        r.register("leases_held", "Leases held", m.leases_held.clone());
        Metrics {
            registry: r,
            request_counters,
            reservation_taken,
            reservation_no_lease,
            reservation_exhausted,
            ..m
        }
    }

    /// Counts one bid request.
    pub fn request(&self, outcome: &'static str) {
        match self.request_counters.iter().find(|(o, _)| *o == outcome) {
            Some((_, c)) => {
                c.inc();
            }
            // An outcome missing from the list: counted, through the family's lock.
            None => {
                self.bid_requests.get_or_create(&Outcome { outcome }).inc();
            }
        }
    }

    /// Counts one notice.
    pub fn notice(&self, kind: &'static str, result: &'static str) {
        self.notices
            .get_or_create(&NoticeLabels { kind, result })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}
