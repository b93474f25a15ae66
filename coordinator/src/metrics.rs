//! Prometheus metrics of a node, served as text on HTTP `GET /metrics`.
//!
//! Counters are updated where things happen (commands proposed here, synced writes); gauges
//! are set from Raft, the ledger, the clock and region sync when scraped, by the node
//! (`Node::render_metrics`), which hands each reading in: this module is a sink, and knows no
//! `Node`.

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

use crate::ledger::Ledger;
use crate::ledger::{Command, LeaseState, Reply};

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
struct PushLabels {
    peer: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CampaignLabels {
    campaign: String,
}

/// Per-campaign series are exported for at most this many campaigns, those with the largest
/// lifetime budgets: a region of 100,000 campaigns must not cost Prometheus 200,000 series.
pub const CAMPAIGNS_EXPORTED: usize = 1_000;

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
    spend_lane_wait: Histogram,
    term: Gauge,
    leader: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    log_head_seq: Gauge,
    settled_micros: Gauge<i64, AtomicI64>,
    clock_wall_seconds: Gauge<f64, AtomicU64>,
    open_leases: Gauge,
    bid_marks: Gauge,
    registered_edges: Gauge,
    campaign_settled: Family<CampaignLabels, Gauge<i64, AtomicI64>>,
    campaign_budget: Family<CampaignLabels, Gauge<i64, AtomicI64>>,
    certificate_expiry: Gauge,
    ahead_of_pace: Gauge,
    in_doubt_waiting_parts: Gauge,
    in_doubt_waiting_micros: Gauge<i64, AtomicI64>,
    log_sealed_next: Gauge,
    log_segments: Gauge,
    log_archive_gap: Gauge,
    log_segments_damaged: Gauge,
    log_segments_repaired: Counter,
    snapshot_bytes: Gauge,
    snapshot_rows: Gauge,
    snapshot_records: Gauge,
    snapshot_build_seconds: Gauge<f64, AtomicU64>,
    snapshot_last_index: Gauge,
    region_pushes: Family<PeerLabels, Counter>,
    region_alarms: Family<PeerLabels, Counter>,
    region_push_bytes: Family<PushLabels, Counter>,
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
        Command::SealSegment => "seal_segment",
        Command::RetireDays { .. } => "retire_days",
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
        let spend_lane_wait = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register(
            "spend_lane_wait_seconds",
            "How long spend reports waited at the leader for a place in the Raft log (grants and \
             releases do not wait: [raft] spend_in_flight)",
            spend_lane_wait.clone(),
        );
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
        let log_sealed_next = Gauge::default();
        registry.register(
            "log_sealed_next_seq",
            "The financial log's first seq not yet sealed into a segment file: records below it \
             live only in segments, the rest in RocksDB",
            log_sealed_next.clone(),
        );
        let log_segments = Gauge::default();
        registry.register(
            "log_segments",
            "Sealed segment files this node holds",
            log_segments.clone(),
        );
        let log_archive_gap = Gauge::default();
        registry.register(
            "log_archive_gap_records",
            "Sealed records this node holds neither in RocksDB nor in segments: after it joined \
             by snapshot, until it fetched them from its peers (0: its archive is whole)",
            log_archive_gap.clone(),
        );
        let log_segments_damaged = Gauge::default();
        registry.register(
            "log_segments_damaged",
            "Sealed segments found damaged here (they do not verify against their hashes), \
             moved aside and not yet fetched again from a peer",
            log_segments_damaged.clone(),
        );
        let log_segments_repaired = Counter::default();
        registry.register(
            "log_segments_repaired",
            "Damaged segments put back from a peer's verified copy",
            log_segments_repaired.clone(),
        );
        let snapshot_bytes = Gauge::default();
        registry.register(
            "snapshot_bytes",
            "Size of the last Raft snapshot this node built (0: none yet)",
            snapshot_bytes.clone(),
        );
        let snapshot_rows = Gauge::default();
        registry.register(
            "snapshot_rows",
            "State rows in the last Raft snapshot this node built",
            snapshot_rows.clone(),
        );
        let snapshot_records = Gauge::default();
        registry.register(
            "snapshot_log_records",
            "Unsealed financial-log records in the last Raft snapshot this node built",
            snapshot_records.clone(),
        );
        let snapshot_last_index = Gauge::default();
        registry.register(
            "snapshot_last_index",
            "Raft index the last snapshot this node built covers (0: none yet)",
            snapshot_last_index.clone(),
        );
        let snapshot_build_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "snapshot_build_seconds",
            "How long building the last Raft snapshot took",
            snapshot_build_seconds.clone(),
        );
        let settled_micros = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "settled_micros",
            "Spend settled in this region, over every campaign's lifetime bucket",
            settled_micros.clone(),
        );
        let open_leases = Gauge::default();
        registry.register("open_leases", "Leases open now", open_leases.clone());
        let bid_marks = Gauge::default();
        registry.register(
            "ledger_bid_marks",
            "Bids whose marks (charged, lost, late) the ledger holds exactly: those of leases not \
             yet closed (a closed lease keeps one bit per bid until it is forgotten)",
            bid_marks.clone(),
        );
        let campaign_settled = Family::<CampaignLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "campaign_settled_micros",
            "Spend settled in this region in a campaign's lifetime bucket (the campaigns with \
             the largest budgets, at most 1,000)",
            campaign_settled.clone(),
        );
        let campaign_budget = Family::<CampaignLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "campaign_budget_micros",
            "A campaign's lifetime budget: rights created in every region less those burned, \
             as this region's counters know them (the same campaigns)",
            campaign_budget.clone(),
        );
        let certificate_expiry = Gauge::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When this node's certificate expires, in seconds since the Unix epoch (0: no TLS)",
            certificate_expiry.clone(),
        );
        let ahead_of_pace = Gauge::default();
        registry.register(
            "buckets_ahead_of_pace",
            "Evenly paced campaigns homed here whose day's spend (in every region) is ahead of \
             the elapsed share of their day by more than a tenth of the day's budget",
            ahead_of_pace.clone(),
        );
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
        let region_push_bytes = Family::<PushLabels, Counter>::default();
        registry.register(
            "region_push_bytes",
            "Bytes of states sent to peer regions (encoded), by peer and kind (delta: what \
             changed since the peer's last acknowledgement; complete: everything)",
            region_push_bytes.clone(),
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
            region_push_bytes,
            region_alarms,
            region_transfers,
            region_transferred_micros,
            region_sync_age_seconds,
            commands,
            spend_findings,
            lease_grants,
            lease_granted_micros,
            sync_seconds,
            spend_lane_wait,
            term,
            leader,
            last_log_index,
            applied_index,
            log_head_seq,
            settled_micros,
            clock_wall_seconds,
            open_leases,
            bid_marks,
            registered_edges,
            certificate_expiry,
            campaign_settled,
            campaign_budget,
            ahead_of_pace,
            in_doubt_waiting_parts,
            in_doubt_waiting_micros,
            log_sealed_next,
            log_segments,
            log_archive_gap,
            log_segments_damaged,
            log_segments_repaired,
            snapshot_bytes,
            snapshot_rows,
            snapshot_records,
            snapshot_build_seconds,
            snapshot_last_index,
        }
    }

    /// Counts a damaged segment put back from a peer.
    pub fn segment_repaired(&self) {
        self.log_segments_repaired.inc();
    }

    /// Segments damaged here now, awaiting repair.
    pub fn observe_damaged(&self, n: usize) {
        self.log_segments_damaged
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The archive's and the last snapshot's figures now: the next seq to seal, segments held,
    /// records missing from the archive, and the snapshot's bytes, rows, records, build
    /// time in µs and last index (all zero before the first).
    pub fn observe_storage(&self, sealed_next: u64, segments: usize, gap: u64, snapshot: [u64; 5]) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.log_sealed_next.set(n(sealed_next));
        self.log_archive_gap.set(n(gap));
        self.log_segments
            .set(i64::try_from(segments).unwrap_or(i64::MAX));
        let [bytes, rows, records, build_us, index] = snapshot;
        self.snapshot_last_index.set(n(index));
        self.snapshot_bytes.set(n(bytes));
        self.snapshot_rows.set(n(rows));
        self.snapshot_records.set(n(records));
        // Seconds from whole µs for a gauge: no money here.
        self.snapshot_build_seconds.set(build_us as f64 / 1e6);
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

    /// The per-campaign series: this region's settled spend and the budget of the campaigns
    /// with the largest lifetime budgets ([`CAMPAIGNS_EXPORTED`]), the others cleared.
    fn campaigns(&self, l: &crate::ledger::Ledger) {
        let mut lifetimes: Vec<(i128, &shared::CampaignId, i64)> = l
            .buckets()
            .filter(|(k, _)| k.bucket == Bucket::Lifetime)
            .map(|(k, b)| {
                let s = b.counter.state();
                let budget = i128::try_from(s.total_created()).unwrap_or(i128::MAX)
                    - i128::try_from(s.total_burned()).unwrap_or(0);
                (budget, &k.campaign, b.settled().micros())
            })
            .collect();
        lifetimes.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        self.campaign_settled.clear();
        self.campaign_budget.clear();
        for (budget, campaign, settled) in lifetimes.into_iter().take(CAMPAIGNS_EXPORTED) {
            let labels = CampaignLabels {
                campaign: campaign.to_string(),
            };
            self.campaign_settled.get_or_create(&labels).set(settled);
            self.campaign_budget
                .get_or_create(&labels)
                .set(i64::try_from(budget).unwrap_or(i64::MAX));
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

    /// Counts the bytes of a state about to be sent to `peer`.
    pub fn region_push_size(&self, peer: &str, complete: bool, bytes: usize) {
        self.region_push_bytes
            .get_or_create(&PushLabels {
                peer: peer.to_string(),
                kind: if complete { "complete" } else { "delta" },
            })
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
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

    /// Records how long one spend report waited for its place in the log.
    pub fn spend_lane_waited(&self, took: Duration) {
        self.spend_lane_wait.observe(took.as_secs_f64());
    }

    /// Raft's figures now: term, leader (`None`: none known), last log index, applied index.
    pub fn observe_raft(
        &self,
        term: u64,
        leader: Option<u64>,
        last_log_index: Option<u64>,
        applied: Option<u64>,
    ) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(n(term));
        self.leader.set(leader.map_or(0, n));
        self.last_log_index.set(last_log_index.map_or(0, n));
        self.applied_index.set(applied.map_or(0, n));
    }

    /// The ledger's figures now, at wall time `wall_us` (for the pace of today's budgets).
    pub fn observe_ledger(&self, l: &Ledger, wall_us: i64) {
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
        self.ahead_of_pace.set(ahead_of_pace(l, wall_us));
        self.campaigns(l);
        let waiting = l.waiting_for_check_ins();
        self.in_doubt_waiting_parts
            .set(i64::try_from(waiting.parts).unwrap_or(i64::MAX));
        self.in_doubt_waiting_micros.set(waiting.money.micros());
        self.log_head_seq.set(head);
        self.settled_micros.set(settled);
        self.open_leases
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        self.bid_marks
            .set(i64::try_from(l.bid_marks()).unwrap_or(i64::MAX));
    }

    /// The node's wall clock now (µs), and its TLS certificate's expiry (unix s), if any.
    pub fn observe_clock(&self, wall_us: i64, certificate_expiry: Option<i64>) {
        self.clock_wall_seconds.set(wall_us as f64 / 1e6);
        if let Some(t) = certificate_expiry {
            self.certificate_expiry.set(t);
        }
    }

    /// Region sync's ages: `(peer, since our last acked push, since its last push)` in ms, -1
    /// for never.
    pub fn observe_region_ages(&self, ages: &[(shared::RegionId, i64, i64)]) {
        for (peer, push, receive) in ages {
            for (of, v) in [("push", *push), ("receive", *receive)] {
                self.region_sync_age_seconds
                    .get_or_create(&AgeLabels {
                        peer: peer.to_string(),
                        of,
                    })
                    .set(if v < 0 { -1.0 } else { v as f64 / 1e3 });
            }
        }
    }

    /// The metrics as Prometheus text, as last observed.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        shared::exposition::to_prometheus_text(&out)
    }
}

/// Serves `GET /metrics` on `listener`, each scrape answered with `render()`, until `shutdown`
/// resolves.
pub async fn serve(
    render: Arc<dyn Fn() -> String + Send + Sync>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        shared::exposition::CONTENT_TYPE,
                    )],
                    render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// How many evenly paced campaigns homed in this region have spent more of today's budget
/// (in every region, as the merged counters say) than the elapsed share of their day plus a
/// tenth of the budget, at wall time `wall_us`. A metric, not money: the wall clock is fine
/// here.
pub fn ahead_of_pace(ledger: &crate::ledger::Ledger, wall_us: i64) -> i64 {
    let mut ahead = 0;
    for (id, c) in ledger.campaigns() {
        if c.home != *ledger.region()
            || c.config.targeting.pacing != shared::targeting::Pacing::Even
        {
            continue;
        }
        let Ok(day) = c.zone.day_of_unix_micros(wall_us) else {
            continue;
        };
        let Ok((start, end)) = c.zone.day_span(day) else {
            continue;
        };
        let key = shared::bucket::BucketKey {
            campaign: id.clone(),
            bucket: Bucket::Day(day),
        };
        let Some(b) = ledger.bucket(&key) else {
            continue;
        };
        let budget = i128::from(b.budget.micros());
        let span = i128::from(end.as_microsecond() - start.as_microsecond()).max(1);
        let elapsed = i128::from(wall_us - start.as_microsecond()).clamp(0, span);
        let allowed = budget * elapsed / span + budget / 10;
        let settled = i128::try_from(b.counter.state().total_settled()).unwrap_or(i128::MAX);
        if budget > 0 && settled > allowed {
            ahead += 1;
        }
    }
    ahead
}
