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
    pub bid_seconds: BidLatency,
    /// Reservations by result: taken, no_lease, exhausted, given_back, and
    /// given_back_after_release (a bill after the release whose rest the ledger returns).
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
    /// Seconds from asking for a lease to its answer (granted, refused or failed).
    pub lease_grant_seconds: Histogram,
    /// Spend batches by result: committed, retried, refused.
    pub batches: Family<Outcome, Counter>,
    /// What the ledger did not settle as reported, from its replies: anomaly, conflict,
    /// unknown_bid.
    pub findings: Family<Outcome, Counter>,
    /// Connections by result: accepted, refused (over `max_connections`).
    pub connections: Family<Outcome, Counter>,
    /// Notices waiting for their batch to commit.
    pub notices_pending: Gauge<i64, AtomicI64>,
    /// Campaigns in the catalog.
    pub campaigns: Gauge<i64, AtomicI64>,
    /// The campaigns version held.
    pub catalog_version: Gauge<i64, AtomicI64>,
    /// Campaign settings received from the coordinators' polls (the whole list on the first
    /// poll, then only the campaigns changed: a steady climb means full lists).
    pub catalog_campaigns_received: Counter,
    /// Leases held (current or settling).
    pub leases_held: Gauge<i64, AtomicI64>,
    /// When this edge's certificate expires, seconds since the Unix epoch (set at start with
    /// TLS; 0 without).
    pub certificate_expiry: Gauge<i64, AtomicI64>,
    /// This edge's wall clock when scraped, µs since the Unix epoch (skewed, if a test skews
    /// it): how a fault-injection test sees that a clock fault reached the process.
    pub clock_wall_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
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
const REQUEST_OUTCOMES: [&str; 12] = [
    "bid",
    "no_match",
    "exp_too_long",
    "tmax_too_long",
    "currency",
    "tmax",
    "late",
    "encode",
    "invalid",
    "shed",
    "too_large",
    "slow_body",
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A latency histogram that the bid path can record into without a lock: buckets with upper
/// bounds 10 µs × 2^k (k < 18) and one for the rest, each an atomic counter, and the sum in
/// nanoseconds. (prometheus-client's `Histogram` takes a mutex on every observation.) A scrape
/// may see a count and a sum from slightly different instants; each is exact on its own.
#[derive(Clone, Debug, Default)]
pub struct BidLatency {
    inner: std::sync::Arc<BidLatencyInner>,
}

#[derive(Debug, Default)]
struct BidLatencyInner {
    buckets: [std::sync::atomic::AtomicU64; BidLatency::BUCKETS + 1],
    sum_ns: std::sync::atomic::AtomicU64,
}

impl BidLatency {
    const BUCKETS: usize = 18;
    const FIRST_NS: u64 = 10_000;

    /// Records one bid that took `d`.
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Bucket k holds (FIRST·2^(k-1), FIRST·2^k]; the first holds everything up to FIRST.
        let k = if ns <= Self::FIRST_NS {
            0
        } else {
            let ratio = (ns - 1) / Self::FIRST_NS; // ≥ 1
            ((u64::BITS - ratio.leading_zeros()) as usize).min(Self::BUCKETS)
        };
        self.inner.buckets[k].fetch_add(1, Relaxed);
        self.inner.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Upper bounds in seconds, and the count of each bucket (not cumulative); the last bound
    /// is infinity.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = Vec::with_capacity(Self::BUCKETS + 1);
        let mut count = 0;
        for (k, b) in self.inner.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            count += n;
            let bound = if k < Self::BUCKETS {
                (Self::FIRST_NS << k) as f64 / 1e9
            } else {
                f64::INFINITY
            };
            out.push((bound, n));
        }
        (self.inner.sum_ns.load(Relaxed) as f64 / 1e9, count, out)
    }
}

impl prometheus_client::encoding::EncodeMetric for BidLatency {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.snapshot();
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

impl Metrics {
    /// Registers every metric under the prefix `edge`.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("edge");
        let m = Metrics {
            bid_requests: Family::default(),
            bid_seconds: BidLatency::default(),
            reservations: Family::default(),
            reserved_micros: Counter::default(),
            leases: Family::default(),
            notices: Family::default(),
            notice_prices: Family::default(),
            batch_commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
            lease_grant_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 18)),
            batches: Family::default(),
            findings: Family::default(),
            notices_pending: Gauge::default(),
            campaigns: Gauge::default(),
            catalog_version: Gauge::default(),
            catalog_campaigns_received: Counter::default(),
            leases_held: Gauge::default(),
            clock_wall_seconds: Gauge::default(),
            connections: Family::default(),
            certificate_expiry: Gauge::default(),
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
            "lease_grant_seconds",
            "Lease request latency, from asking to the answer (granted, refused or failed)",
            m.lease_grant_seconds.clone(),
        );
        r.register(
            "batch_commit_seconds",
            "Spend batch latency, first send to commit",
            m.batch_commit_seconds.clone(),
        );
        r.register("batches", "Spend batches by result", m.batches.clone());
        r.register(
            "spend_findings",
            "Charges the ledger did not settle as reported: anomaly (recorded, not settled), \
             conflict (contradicts an earlier report of the same bid), unknown_bid",
            m.findings.clone(),
        );
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
        r.register(
            "catalog_campaigns_received",
            "Campaign settings received from the coordinators' polls",
            m.catalog_campaigns_received.clone(),
        );
        r.register("leases_held", "Leases held", m.leases_held.clone());
        r.register(
            "connections",
            "Client connections by result: accepted, refused (over max_connections)",
            m.connections.clone(),
        );
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When this edge's certificate expires, in seconds since the Unix epoch (0: no TLS)",
            m.certificate_expiry.clone(),
        );
        r.register(
            "clock_wall_seconds",
            "This edge's wall clock when scraped, in seconds since the Unix epoch, to the \
             microsecond (skewed, if a fault-injection test skews it)",
            m.clock_wall_seconds.clone(),
        );
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

    /// Counts a client connection and what became of it.
    pub fn connections(&self, result: &'static str) {
        self.connections
            .get_or_create(&Outcome { outcome: result })
            .inc();
    }

    /// Counts what a batch's reply found.
    pub fn findings(&self, anomalies: u32, conflicts: u32, unknown_bids: u32) {
        for (outcome, n) in [
            ("anomaly", anomalies),
            ("conflict", conflicts),
            ("unknown_bid", unknown_bids),
        ] {
            if n > 0 {
                self.findings
                    .get_or_create(&Outcome { outcome })
                    .inc_by(u64::from(n));
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
        shared::exposition::to_prometheus_text(&s)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn each_bid_lands_in_the_smallest_bucket_that_holds_it() {
        let h = BidLatency::default();
        for us in [1, 10, 11, 20, 21, 40, 41, 1_310_720, 1_310_721, 60_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 10);
        assert_eq!(sum, 62_621_585.0 / 1e6);
        let counts: Vec<u64> = buckets.iter().map(|b| b.1).collect();
        // ≤10 µs: 2; ≤20: 2; ≤40: 2; ≤80: 1; ≤1.31 s: 1; +Inf: 2.
        assert_eq!(counts[..4], [2, 2, 2, 1]);
        assert_eq!(counts[17], 1);
        assert_eq!(counts[18], 2);
        assert_eq!(counts.iter().sum::<u64>(), 10);
    }

    #[test]
    fn the_page_shows_cumulative_buckets() {
        let m = Metrics::new();
        m.bid_seconds.observe(Duration::from_micros(15));
        m.bid_seconds.observe(Duration::from_micros(5));
        let page = m.render();
        assert!(
            page.contains("edge_bid_seconds_bucket{le=\"0.00001\"} 1"),
            "{page}"
        );
        assert!(
            page.contains("edge_bid_seconds_bucket{le=\"0.00002\"} 2"),
            "{page}"
        );
        assert!(page.contains("edge_bid_seconds_count 2"), "{page}");
        assert!(
            page.contains("edge_bid_seconds_bucket{le=\"+Inf\"} 2"),
            "{page}"
        );
    }
}
