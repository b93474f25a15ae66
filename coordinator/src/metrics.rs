//! Prometheus metrics of a node, served as text on HTTP `GET /metrics`.
//!
//! Counters are updated where things happen (commands proposed here, synced writes); gauges
//! are read from Raft and the ledger when scraped.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shared::bucket::Bucket;

use crate::ledger::{Command, LeaseState, Reply};
use crate::node::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    finding: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreLabels {
    store: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgeLabels {
    peer: String,
    of: &'static str,
}

/// The metrics of one node.
pub struct Metrics {
    registry: Registry,
    commands: Family<CommandLabels, Counter>,
    spend_findings: Family<FindingLabels, Counter>,
    lease_grants: Counter,
    lease_granted_micros: Counter,
    sync_seconds: Family<StoreLabels, Histogram>,
    term: Gauge,
    leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    log_head_seq: Gauge,
    settled_micros: Gauge<i64, AtomicI64>,
    clock_wall_seconds: Gauge<f64, AtomicU64>,
    open_leases: Gauge,
    registered_edges: Gauge,
    in_doubt_waiting_parts: Gauge,
    in_doubt_waiting_micros: Gauge<i64, AtomicI64>,
    region_pushes: Family<PeerLabels, Counter>,
    region_alarms: Family<PeerLabels, Counter>,
    region_transfers: Family<DirectionLabels, Counter>,
    region_transferred_micros: Family<DirectionLabels, Counter>,
    region_sync_age_seconds: Family<AgeLabels, Gauge<f64, AtomicU64>>,
}

/// The label of a command's kind.
pub fn command_kind(c: &Command) -> &'static str {
    match c {
        Command::UpsertCampaign { .. } => "upsert_campaign",
        Command::SetBudget { .. } => "set_budget",
        Command::Pause { .. } => "pause",
        Command::Resume { .. } => "resume",
        Command::GrantLease { .. } => "grant_lease",
        Command::ReportSpend { .. } => "report_spend",
        Command::ReleaseLease { .. } => "release_lease",
        Command::ReclaimLeases { .. } => "reclaim_leases",
        Command::ExpireInDoubt { .. } => "expire_in_doubt",
        Command::TransferRights { .. } => "transfer_rights",
        Command::MergeRemote { .. } => "merge_remote",
        Command::CheckIn { .. } => "check_in",
        Command::RetireEdge { .. } => "retire_edge",
        Command::SetParams { .. } => "set_params",
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("budget");
        let commands = Family::<CommandLabels, Counter>::default();
        registry.register(
            "commands",
            "Commands proposed by this node, by kind and result",
            commands.clone(),
        );
        let spend_findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "spend_findings",
            "Spend-report events the leader did not settle as reported: anomaly (recorded in \
             the log, not settled), conflict (contradicts an earlier report of the same bid), \
             unknown_bid (a bid number the lease never had)",
            spend_findings.clone(),
        );
        let lease_grants = Counter::default();
        registry.register(
            "lease_grants",
            "Leases granted through this node",
            lease_grants.clone(),
        );
        let lease_granted_micros = Counter::default();
        registry.register(
            "lease_granted_micros",
            "Micros leased through this node",
            lease_granted_micros.clone(),
        );
        let sync_seconds = Family::<StoreLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register("storage_sync_seconds", "Duration of fsync'd RocksDB write batches (log: Raft log appends; state: state machine applies)", sync_seconds.clone());
        let term = Gauge::default();
        registry.register("raft_term", "Current Raft term", term.clone());
        let leader = Gauge::default();
        registry.register(
            "raft_leader",
            "Node id of the current leader (0: none known)",
            leader.clone(),
        );
        let last_log_index = Gauge::default();
        registry.register(
            "raft_last_log_index",
            "Index of the last entry in this node's Raft log",
            last_log_index.clone(),
        );
        let applied_index = Gauge::default();
        registry.register(
            "raft_applied_index",
            "Index of the last entry applied to the state machine",
            applied_index.clone(),
        );
        let log_head_seq = Gauge::default();
        registry.register(
            "log_head_seq",
            "Seq of the financial log's last entry (-1: empty)",
            log_head_seq.clone(),
        );
        let settled_micros = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "settled_micros",
            "Spend settled in this region, over every campaign's lifetime bucket",
            settled_micros.clone(),
        );
        let open_leases = Gauge::default();
        registry.register("open_leases", "Leases open now", open_leases.clone());
        let registered_edges = Gauge::default();
        registry.register(
            "registered_edges",
            "Edges registered with the region: in-doubt money waits for each one's check-in",
            registered_edges.clone(),
        );
        let in_doubt_waiting_parts = Gauge::default();
        registry.register(
            "in_doubt_waiting_parts",
            "In-doubt parts whose waits are over, held until every registered edge has checked              in past them (budgetctl edges list names the edges behind)",
            in_doubt_waiting_parts.clone(),
        );
        let in_doubt_waiting_micros = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "in_doubt_waiting_micros",
            "Money of the in-doubt parts that wait for edges' check-ins",
            in_doubt_waiting_micros.clone(),
        );
        let clock_wall_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "clock_wall_seconds",
            "This node's wall clock when scraped, in seconds since the Unix epoch, to the \
             microsecond (skewed, if a fault-injection skew file drives it)",
            clock_wall_seconds.clone(),
        );
        let region_pushes = Family::<PeerLabels, Counter>::default();
        registry.register(
            "region_pushes",
            "State pushes to peer regions, by peer and result (ok, refused, failed)",
            region_pushes.clone(),
        );
        let region_alarms = Family::<PeerLabels, Counter>::default();
        registry.register(
            "region_alarms",
            "Alarms about peer regions' states (result: data_loss, went_back); any is a page",
            region_alarms.clone(),
        );
        let region_transfers = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "region_transfers",
            "Rights moved between regions by this leader (out: given on request; in: merged)",
            region_transfers.clone(),
        );
        let region_transferred_micros = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "region_transferred_micros",
            "Micros of rights moved between regions (out: given; in: received through merges)",
            region_transferred_micros.clone(),
        );
        let region_sync_age_seconds = Family::<AgeLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "region_sync_age_seconds",
            "Seconds since the last acknowledged push to a peer (of=push) or the last push from \
             it (of=receive); -1: never. On the leader.",
            region_sync_age_seconds.clone(),
        );
        Metrics {
            registry,
            region_pushes,
            region_alarms,
            region_transfers,
            region_transferred_micros,
            region_sync_age_seconds,
            commands,
            spend_findings,
            lease_grants,
            lease_granted_micros,
            sync_seconds,
            term,
            leader,
            last_log_index,
            applied_index,
            log_head_seq,
            settled_micros,
            clock_wall_seconds,
            open_leases,
            registered_edges,
            in_doubt_waiting_parts,
            in_doubt_waiting_micros,
        }
    }

    /// Counts what a spend report's reply found: anomalies, conflicts, unknown bids.
    pub fn report_findings(&self, anomalies: u32, conflicts: u32, unknown_bids: u32) {
        for (finding, n) in [
            ("anomaly", anomalies),
            ("conflict", conflicts),
            ("unknown_bid", unknown_bids),
        ] {
            if n > 0 {
                self.spend_findings
                    .get_or_create(&FindingLabels { finding })
                    .inc_by(u64::from(n));
            }
        }
    }

    /// Counts a command of `kind` ([`command_kind`]) this node proposed, and its outcome.
    pub fn command(&self, kind: &'static str, outcome: Result<&Reply, &'static str>) {
        let result = match outcome {
            Ok(Reply::Refused(_)) => "refused",
            Ok(_) => "applied",
            Err(e) => e,
        };
        self.commands
            .get_or_create(&CommandLabels { kind, result })
            .inc();
        if let Ok(Reply::LeaseGranted { amount, .. }) = outcome {
            self.lease_grants.inc();
            self.lease_granted_micros
                .inc_by(u64::try_from(amount.micros()).unwrap_or(0));
        }
    }

    /// Counts a push to `peer` and its result.
    pub fn region_push(&self, peer: &str, result: &'static str) {
        self.region_pushes
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
                result,
            })
            .inc();
    }

    /// Counts an alarm about `peer`.
    pub fn region_alarm(&self, peer: &str, kind: &'static str) {
        self.region_alarms
            .get_or_create(&PeerLabels {
                peer: peer.to_string(),
                result: kind,
            })
            .inc();
    }

    /// Counts rights moved `direction` ("in" or "out").
    pub fn region_transfer(&self, direction: &'static str, amount: shared::Money) {
        let d = DirectionLabels { direction };
        self.region_transfers.get_or_create(&d).inc();
        self.region_transferred_micros
            .get_or_create(&d)
            .inc_by(u64::try_from(amount.micros()).unwrap_or(0));
    }

    /// Records one synced write of `store`.
    pub fn synced(&self, store: &'static str, took: Duration) {
        self.sync_seconds
            .get_or_create(&StoreLabels { store })
            .observe(took.as_secs_f64());
    }

    /// The metrics as Prometheus text, with gauges read from `node` now.
    pub fn render(&self, node: &Node) -> String {
        let m = node.raft.metrics().borrow().clone();
        self.term
            .set(i64::try_from(m.current_term).unwrap_or(i64::MAX));
        self.leader.set(
            m.current_leader
                .map_or(0, |l| i64::try_from(l).unwrap_or(0)),
        );
        self.last_log_index.set(
            m.last_log_index
                .map_or(0, |i| i64::try_from(i).unwrap_or(i64::MAX)),
        );
        self.applied_index.set(
            m.last_applied
                .map_or(0, |l| i64::try_from(l.index).unwrap_or(i64::MAX)),
        );
        let (head, settled, open) = node.state.read(|machine| {
            let l = machine.ledger();
            let head = i64::try_from(l.chain().next_seq()).unwrap_or(i64::MAX) - 1;
            let settled: i64 = l
                .buckets()
                .filter(|(k, _)| k.bucket == Bucket::Lifetime)
                .map(|(_, b)| b.settled().micros())
                .fold(0, i64::saturating_add);
            let open = l
                .leases()
                .filter(|(_, lease)| lease.state == LeaseState::Open)
                .count();
            self.registered_edges
                .set(i64::try_from(l.edges().len()).unwrap_or(i64::MAX));
            let waiting = l.waiting_for_check_ins();
            self.in_doubt_waiting_parts
                .set(i64::try_from(waiting.parts).unwrap_or(i64::MAX));
            self.in_doubt_waiting_micros.set(waiting.money.micros());
            (head, settled, open)
        });
        self.log_head_seq.set(head);
        self.settled_micros.set(settled);
        self.clock_wall_seconds
            .set(node.clock.wall_us() as f64 / 1e6);
        self.open_leases
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        for (peer, push, receive) in node.sync.ages() {
            for (of, v) in [("push", push), ("receive", receive)] {
                self.region_sync_age_seconds
                    .get_or_create(&AgeLabels {
                        peer: peer.to_string(),
                        of,
                    })
                    .set(if v < 0 { -1.0 } else { v as f64 / 1e3 });
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        shared::exposition::to_prometheus_text(&out)
    }
}

/// Serves `GET /metrics` for `node` on `listener` until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let node = node.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        shared::exposition::CONTENT_TYPE,
                    )],
                    node.metrics.render(&node),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
