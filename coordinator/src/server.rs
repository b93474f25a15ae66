//! The `coordinator` process: configuration, start-up, the leader's reclaim loop, and clean
//! shutdown.
//!
//! Configuration comes from a TOML file whose every field has a default (so the file is
//! optional), then from command-line flags, which win. Unknown keys are an error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use shared::{LeaseId, Money, RegionId};
use tokio::net::TcpListener;

use crate::ledger::{Command, LeaseState, Params};
use crate::node::{Node, NodeConfig};
use crate::reclaim::{MonoClock, Part, Timers};

/// The whole configuration of one node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The region this node belongs to.
    pub region: String,
    /// The node's number in the region's Raft group.
    pub node_id: u64,
    /// Address to listen on for gRPC (Raft, leases, admin, audit).
    pub listen: String,
    /// Directory of the node's RocksDB.
    pub data_dir: PathBuf,
    /// Address of the Prometheus `/metrics` HTTP endpoint; empty: no endpoint.
    pub metrics_listen: String,
    /// Source IP of this node's connections to its peers; empty: the system chooses. Set it
    /// when several nodes share a host and must be told apart by address (the chaos harness
    /// gives each node its own `127.0.0.x` and partitions them by it).
    pub outgoing_address: String,
    /// When set, this node initializes a new region with these members (`id = "host:port"`).
    /// Harmless on a region that is already initialized.
    pub init_members: BTreeMap<String, String>,
    /// Raft timing.
    pub raft: RaftConfig,
    /// The lease and reclaim rules a new region starts with. Once a region exists its rules
    /// are replicated state (`budgetctl cluster params`), the same on every node; a node whose
    /// file differs says so at start and follows the region's.
    pub leases: LeaseConfig,
    /// Financial-log records per sealed segment file in `<data_dir>/segments/`.
    pub segment_entries: u64,
    /// Bytes per sealed segment file at most (a segment of one larger record excepted): bounds
    /// what RocksDB and a Raft snapshot hold of the log when records are large. Like
    /// `segment_entries`, the same on every node of a region (each cuts its own segments, and
    /// they must be the same files).
    pub segment_bytes_max: u64,
    /// A segment still open after this long (ms) is sealed anyway, whatever it holds: a quiet
    /// region's log is sealed, and verifiable offline, within this.
    pub segment_seal_interval_ms: u64,
    /// Bytes of sealed segments read back against their hashes per second (the scrub), so
    /// that a file that rots on disk is found and fetched again from a peer before an
    /// auditor reads it. At the default, 16 MiB/s (about 1.3 TiB a day, against the 295 GiB of
    /// segments a day of 100,000 events/s seals), a year of history is read every 80 days. 0
    /// turns it off (every read still verifies its segment).
    pub scrub_bytes_per_second: u64,
    /// The leader retires day buckets whose day is over (`RetireDays`, a `day_retired` log
    /// entry each), so that a campaign's live state does not grow by a bucket a day for ever.
    /// Off: every day bucket stays live (and in every push and snapshot).
    pub retire_days: bool,
    /// How often (ms) the leader looks for day buckets to retire.
    pub retire_interval_ms: u64,
    /// Peer regions and region sync (DESIGN §7). No peers: a region on its own.
    pub regions: RegionsConfig,
    /// Mutual TLS: the CA, this node's certificate (role `coordinator`) and its key. Required
    /// unless the `--insecure-plaintext` flag is given (there is no such key in the file).
    pub tls: shared::tls::TlsFiles,
}

/// Region sync: the peer regions and how often to talk to them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionsConfig {
    /// Each peer region's coordinators: `peers = { eu = ["10.1.0.1:7001", ...] }`.
    pub peers: BTreeMap<String, Vec<String>>,
    /// A peer gets what changed at least this often (and at once when our counters change).
    pub push_interval_ms: u64,
    /// A peer gets our whole state at least this often (repairs what a lost acknowledgement
    /// hid; between, pushes carry only what changed).
    pub full_push_interval_ms: u64,
    /// A peer's log head is recorded in our log at least this often while it pushes.
    pub witness_refresh_ms: u64,
    /// Projected need of a bucket = its settled rate × this; a donor keeps that much.
    pub horizon_ms: u64,
    /// How often the leader looks for buckets short of rights.
    pub ask_interval_ms: u64,
}

impl Default for RegionsConfig {
    fn default() -> Self {
        let s = crate::region::Settings::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        RegionsConfig {
            peers: BTreeMap::new(),
            push_interval_ms: ms(s.push_interval),
            full_push_interval_ms: ms(s.full_push_interval),
            witness_refresh_ms: ms(s.witness_refresh),
            horizon_ms: ms(s.horizon),
            ask_interval_ms: ms(s.ask_interval),
        }
    }
}

/// Raft timing.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout, lower bound.
    pub election_timeout_min_ms: u64,
    /// Election timeout, upper bound.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// How long one snapshot chunk may take to reach a follower, and the last one to be
    /// installed there (openraft's own default, 200 ms, is shorter than installing a large
    /// region's snapshot: the leader gave up and started again from the first chunk, forever).
    pub snapshot_chunk_timeout_ms: u64,
    /// Bytes of a snapshot per chunk.
    pub snapshot_chunk_bytes: u64,
    /// Spend reports the leader has in the Raft log at once; more wait at the leader, so that
    /// a lease grant or release (which an edge waits on to bid) commits behind at most this
    /// many 1,000-event reports. 0: no limit (every report goes straight into the log).
    pub spend_in_flight: usize,
}

/// Lease rules (DESIGN §5) for a new region: the first leader of a region records them in its
/// log (`params_set`). Afterwards they change only through `budgetctl cluster params set`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// How long an edge may reserve under a lease.
    pub duration_ms: u64,
    /// `W`: how long an edge keeps a lease after its spending window for the first notices of
    /// its bids before releasing it.
    pub settlement_window_ms: u64,
    /// Allowance for clock rate error (≥ duration × clock_rate_error_ppm).
    pub margin_ms: u64,
    /// How long in-doubt money waits for late notices past its bids' deadlines.
    pub late_acceptance_ms: u64,
    /// The `exp` assumed for an impression that has none.
    pub default_exp_ms: u64,
    /// The longest `exp` bid on (OpenRTB: seconds between the auction and the impression).
    pub max_exp_ms: u64,
    /// The longest `tmax` bid on.
    pub max_tmax_ms: u64,
    /// The largest clock rate error between two machines, parts per million.
    pub clock_rate_error_ppm: u32,
    /// One lease takes at most `available / share_divisor`.
    pub share_divisor: u32,
    /// … but at least this many micros (or what is left).
    pub min_micros: i64,
}

impl LeaseConfig {
    /// The region rules these settings give (retention from the defaults).
    pub fn params(&self) -> Params {
        Params {
            lease_duration_ms: self.duration_ms,
            settlement_window_ms: self.settlement_window_ms,
            margin_ms: self.margin_ms,
            late_acceptance_ms: self.late_acceptance_ms,
            default_exp_ms: self.default_exp_ms,
            max_exp_ms: self.max_exp_ms,
            max_tmax_ms: self.max_tmax_ms,
            clock_rate_error_ppm: self.clock_rate_error_ppm,
            lease_share_divisor: self.share_divisor,
            lease_min: Money::from_micros(self.min_micros),
            ..Params::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            region: "local".into(),
            node_id: 1,
            listen: "127.0.0.1:7001".into(),
            data_dir: PathBuf::from("data/node-1"),
            metrics_listen: "127.0.0.1:9101".into(),
            outgoing_address: String::new(),
            init_members: BTreeMap::new(),
            raft: RaftConfig::default(),
            leases: LeaseConfig::default(),
            segment_entries: 10_000,
            segment_bytes_max: crate::archive::SEGMENT_BYTES_MAX,
            segment_seal_interval_ms: 600_000,
            scrub_bytes_per_second: 16 << 20,
            retire_days: true,
            retire_interval_ms: 60_000,
            regions: RegionsConfig::default(),
            tls: shared::tls::TlsFiles::default(),
        }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_every: 10_000,
            logs_kept_after_snapshot: 1_000,
            snapshot_chunk_timeout_ms: 10_000,
            snapshot_chunk_bytes: 1 << 20,
            spend_in_flight: crate::node::SPEND_IN_FLIGHT,
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> Self {
        let p = Params::default();
        LeaseConfig {
            duration_ms: p.lease_duration_ms,
            settlement_window_ms: p.settlement_window_ms,
            margin_ms: p.margin_ms,
            late_acceptance_ms: p.late_acceptance_ms,
            default_exp_ms: p.default_exp_ms,
            max_exp_ms: p.max_exp_ms,
            max_tmax_ms: p.max_tmax_ms,
            clock_rate_error_ppm: p.clock_rate_error_ppm,
            share_divisor: p.lease_share_divisor,
            min_micros: p.lease_min.micros(),
        }
    }
}

/// A configuration that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(pub String);

/// A configuration checked at start-up.
#[derive(Debug)]
pub struct Checked {
    /// The node's settings.
    pub node: NodeConfig,
    /// Its side of region sync: peer regions and how to sync with them (none: a region on its
    /// own). The node's transport and outgoing address are added when it starts.
    pub sync: crate::region::Settings,
    /// The members of a new region to initialize (empty: join, or restart).
    pub members: BTreeMap<u64, String>,
}

impl Config {
    /// Checks everything once, at start-up; returns the node's settings.
    pub fn validate(&self) -> Result<Checked, ConfigError> {
        let err = |m: String| ConfigError(m);
        let region: RegionId = self
            .region
            .parse()
            .map_err(|e| err(format!("region: {e}")))?;
        if self.node_id == 0 {
            return Err(err("node_id: must be at least 1".into()));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0
            || r.election_timeout_min_ms <= r.heartbeat_ms
            || r.election_timeout_max_ms <= r.election_timeout_min_ms
        {
            return Err(err(
                "raft: need 0 < heartbeat_ms < election_timeout_min_ms < election_timeout_max_ms"
                    .into(),
            ));
        }
        if r.snapshot_chunk_timeout_ms < 100 || r.snapshot_chunk_bytes < 4_096 {
            return Err(err(
                "raft: need snapshot_chunk_timeout_ms >= 100 and snapshot_chunk_bytes >= 4096"
                    .into(),
            ));
        }
        let params = self.leases.params();
        params.validate().map_err(|e| err(format!("leases: {e}")))?;
        if self.segment_entries == 0 {
            return Err(err("segment_entries: at least 1".into()));
        }
        if self.segment_bytes_max < 65_536 {
            return Err(err("segment_bytes_max: at least 65536".into()));
        }
        if self.segment_seal_interval_ms < 1_000 {
            return Err(err(
                "segment_seal_interval_ms: at least 1000 (a second)".into()
            ));
        }
        let mut members = BTreeMap::new();
        for (id, addr) in &self.init_members {
            let id: u64 = id
                .parse()
                .map_err(|_| err(format!("init_members: {id:?} is not a node number")))?;
            members.insert(id, addr.clone());
        }
        if !members.is_empty() && !members.contains_key(&self.node_id) {
            return Err(err(format!(
                "init_members: does not include this node ({})",
                self.node_id
            )));
        }
        let mut node = NodeConfig::new(region, self.node_id, self.data_dir.clone());
        node.init_params = params;
        node.heartbeat = Duration::from_millis(r.heartbeat_ms);
        node.election_timeout = (
            Duration::from_millis(r.election_timeout_min_ms),
            Duration::from_millis(r.election_timeout_max_ms),
        );
        if !self.outgoing_address.is_empty() {
            node.outgoing = Some(self.outgoing_address.parse().map_err(|_| {
                err(format!(
                    "outgoing_address: {:?} is not an IP address",
                    self.outgoing_address
                ))
            })?);
        }
        let g = &self.regions;
        let mut sync = crate::region::Settings::default();
        if g.push_interval_ms == 0 || g.witness_refresh_ms == 0 || g.ask_interval_ms == 0 {
            return Err(err(
                "regions: push_interval_ms, witness_refresh_ms and ask_interval_ms must be positive"
                    .into(),
            ));
        }
        if g.full_push_interval_ms < g.push_interval_ms {
            return Err(err(format!(
                "regions: full_push_interval_ms ({}) must be at least push_interval_ms ({})",
                g.full_push_interval_ms, g.push_interval_ms
            )));
        }
        for (name, addrs) in &g.peers {
            let peer: RegionId = name
                .parse()
                .map_err(|e| err(format!("regions.peers: {name:?}: {e}")))?;
            if peer == node.region {
                return Err(err(format!(
                    "regions.peers: {name} is this node's own region"
                )));
            }
            if addrs.is_empty() || addrs.iter().any(|a| a.trim().is_empty()) {
                return Err(err(format!(
                    "regions.peers: {name} needs at least one coordinator address, none empty"
                )));
            }
            sync.peers.insert(peer, addrs.clone());
        }
        sync.push_interval = Duration::from_millis(g.push_interval_ms);
        sync.full_push_interval = Duration::from_millis(g.full_push_interval_ms);
        sync.witness_refresh = Duration::from_millis(g.witness_refresh_ms);
        sync.horizon = Duration::from_millis(g.horizon_ms);
        sync.ask_interval = Duration::from_millis(g.ask_interval_ms);
        node.snapshot_every = r.snapshot_every;
        node.logs_kept_after_snapshot = r.logs_kept_after_snapshot;
        node.snapshot_chunk_timeout = Duration::from_millis(r.snapshot_chunk_timeout_ms);
        node.snapshot_chunk_bytes = r.snapshot_chunk_bytes;
        node.spend_in_flight = r.spend_in_flight;
        Ok(Checked {
            node,
            sync,
            members,
        })
    }
}

/// How often the leader checks its lease timers.
pub const RECLAIM_TICK: Duration = Duration::from_millis(200);

/// How long the leader's own loops (reclaims, in-doubt expiry, day retirement, sealing) wait
/// for one of their proposals. A proposal in flight when leadership moves may never be
/// answered; a loop that waited for it stopped for good on that node: in a long `jepsen run
/// --nemesis all` (seed 5) eu-1's node 3 proposed at 15:01:31, lost and later regained the
/// lead, and neither reclaimed a lease nor returned in-doubt money again (0.33 of a budget
/// stayed in doubt to the end). A proposal not answered in time is retried at a later tick,
/// as a failed one is: each is idempotent in the ledger.
pub const LOOP_PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the leader's reclaim loop needs of a node: whether it leads, its ledger, and a way to
/// propose. [`Node`] is one; the deterministic simulation (`sim`) runs the same loop over its
/// simulated nodes.
pub trait LoopHost {
    /// The node's id, for the logs.
    fn node_id(&self) -> u64;
    /// Whether this node believes it leads.
    fn leads(&self) -> bool;
    /// Reads the ledger as this node has applied it.
    fn read_ledger<T>(&self, f: impl FnOnce(&crate::ledger::Ledger) -> T) -> T;
    /// Proposes `command` through this node, with the reply and the entry's index.
    fn propose(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = Result<(crate::ledger::Reply, u64), String>> + Send;
}

impl LoopHost for Node {
    fn node_id(&self) -> u64 {
        self.id
    }

    fn leads(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    fn read_ledger<T>(&self, f: impl FnOnce(&crate::ledger::Ledger) -> T) -> T {
        self.state.read(|m| f(m.ledger()))
    }

    async fn propose(&self, command: Command) -> Result<(crate::ledger::Reply, u64), String> {
        Node::propose(self, command)
            .await
            .map_err(|e| e.to_string())
    }
}

/// [`LoopHost::propose`] for the leader's loops, given up after [`LOOP_PROPOSE_TIMEOUT`].
async fn propose_bounded(
    node: &impl LoopHost,
    command: Command,
) -> Result<(crate::ledger::Reply, u64), String> {
    match tokio::time::timeout(LOOP_PROPOSE_TIMEOUT, node.propose(command)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer in {} s (leadership may have moved)",
            LOOP_PROPOSE_TIMEOUT.as_secs()
        )),
    }
}

/// What the leader's timers need of the ledger: open leases with their reclaim waits, in-doubt
/// parts with theirs (from each lease's own terms).
type Timed = (Vec<(LeaseId, Duration)>, Vec<(Part, Duration)>);

fn timed(node: &impl LoopHost) -> Timed {
    node.read_ledger(|ledger| {
        let mut open = Vec::new();
        let mut doubt = Vec::new();
        for (id, l) in ledger.leases() {
            match &l.state {
                LeaseState::Open => {
                    open.push((*id, Duration::from_millis(l.terms.reclaim_wait_ms())))
                }
                LeaseState::InDoubt { parts } => {
                    for p in parts {
                        let wait = Duration::from_millis(l.terms.doubt_wait_ms(p.wait_ms));
                        doubt.push(((*id, p.wait_ms), wait));
                    }
                }
                LeaseState::Closed => {}
            }
        }
        (open, doubt)
    })
}

/// One tick of the leader's reclaim loop at `now`: keeps `timers` in line with the ledger
/// while this node leads, and proposes `ReclaimLeases` / `ExpireInDoubt` for what is due.
/// Returns the leases it proposed to reclaim and the parts it proposed to expire.
pub async fn reclaim_step(
    node: &impl LoopHost,
    timers: &mut Timers,
    now: crate::reclaim::Mono,
) -> (Vec<LeaseId>, Vec<Part>) {
    if !node.leads() {
        if timers.is_leading() {
            tracing::info!(
                node = node.node_id(),
                "no longer leader: lease timers stopped"
            );
            timers.stepped_down();
        }
        return (Vec::new(), Vec::new());
    }
    let (open, in_doubt) = timed(node);
    if !timers.is_leading() {
        tracing::info!(
            node = node.node_id(),
            open = open.len(),
            in_doubt = in_doubt.len(),
            mono_ms = mono_ms(now),
            "became leader: every lease wait starts over"
        );
        timers.became_leader(now, open.iter().copied(), in_doubt.iter().copied());
    } else {
        // When the leader first saw each new lease open, on its monotonic clock: the harness's
        // check of the reclaim rule (I8) measures each wait from the earliest sign of a grant
        // after its apply, this or the grant's answer (which a pause can delay by seconds).
        for (id, _) in open.iter().filter(|(id, _)| !timers.tracks(*id)) {
            tracing::debug!(target: "budget::timeline", lease = id.0, mono_ms = mono_ms(now), "lease seen open");
        }
        timers.sync(now, &open, &in_doubt);
    }
    let reclaim = timers.due_reclaims(now);
    if !reclaim.is_empty() {
        // The waits each lease's terms ask for, from the ledger (not the timers), so that a
        // checker of the reclaim rule can hold these moments to them.
        let waits: Vec<String> = reclaim
            .iter()
            .map(|id| {
                let wait = open
                    .iter()
                    .find(|(l, _)| l == id)
                    .map_or(0, |(_, w)| w.as_millis());
                format!("{}:{wait}", id.0)
            })
            .collect();
        tracing::info!(
            leases = ?reclaim,
            mono_ms = mono_ms(now),
            waits_ms = %waits.join(","),
            "reclaiming leases whose edges never released them"
        );
        match propose_bounded(
            node,
            Command::ReclaimLeases {
                leases: reclaim.clone(),
            },
        )
        .await
        {
            // Applied: each lease's rest waits from now for the longest hold of its bids.
            Ok(_) => {
                let (_, parts) = timed(node);
                for id in &reclaim {
                    let part = parts
                        .iter()
                        .find(|((l, _), _)| l == id)
                        .map(|((_, w), d)| (*w, *d));
                    timers.reclaimed(now, *id, part);
                }
            }
            Err(e) => tracing::warn!(error = %e, "reclaim proposal failed; retrying next tick"),
        }
    }
    let due = timers.due_expiries(now);
    let expire = ready_to_expire(node, due, timers);
    if !expire.is_empty() {
        tracing::info!(parts = ?expire, "in-doubt waits over: returning what late notices left");
        // The timers keep each part until the ledger no longer holds it: a part whose edges
        // have not all checked in since it fell due stays in doubt, and is named again.
        if let Err(e) = propose_bounded(
            node,
            Command::ExpireInDoubt {
                parts: expire.clone(),
            },
        )
        .await
        {
            tracing::warn!(error = %e, "in-doubt expiry proposal failed; retrying next tick")
        }
    }
    (reclaim, expire)
}

/// Of the parts whose waits are over, those worth proposing now: not yet marked due, or marked
/// at an index every registered edge has checked in past. Logs (once per change) which edges
/// the others wait for.
fn ready_to_expire(node: &impl LoopHost, due: Vec<Part>, timers: &mut Timers) -> Vec<Part> {
    if due.is_empty() {
        timers.waiting_for(Vec::new());
        return due;
    }
    node.read_ledger(|ledger| {
        let covered = ledger.edges_covered();
        let mut held_back = 0usize;
        let mut lowest_mark = u64::MAX;
        let ready: Vec<Part> = due
            .into_iter()
            .filter(|(id, wait_ms)| {
                let mark = ledger.lease(*id).and_then(|l| l.due.get(wait_ms).copied());
                match mark {
                    Some(m) if m > covered => {
                        held_back += 1;
                        lowest_mark = lowest_mark.min(m);
                        false
                    }
                    _ => true,
                }
            })
            .collect();
        let behind: Vec<String> = if held_back == 0 {
            Vec::new()
        } else {
            ledger
                .edges()
                .iter()
                .filter(|(_, c)| c.covers < lowest_mark)
                .map(|(e, c)| format!("{e}@{}", c.covers))
                .collect()
        };
        let list = behind.join(",");
        if timers.waiting_for(behind) && !list.is_empty() {
            tracing::info!(parts = held_back, due_at = lowest_mark, edges = %list,
                "in-doubt money due, waiting for these edges to check in (they may hold unsettled notices)");
        }
        ready
    })
}

/// A monotonic reading in whole ms, for the logs a checker reads.
fn mono_ms(now: crate::reclaim::Mono) -> u64 {
    u64::try_from(now.0.as_millis()).unwrap_or(u64::MAX)
}

/// The leader's reclaim loop: [`reclaim_step`] every [`RECLAIM_TICK`] on `clock`, until `stop`
/// fires.
pub async fn reclaim_loop(
    node: Arc<Node>,
    clock: Arc<dyn MonoClock>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut timers = Timers::new();
    let mut tick = tokio::time::interval(RECLAIM_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        reclaim_step(&*node, &mut timers, clock.now()).await;
    }
}

/// The leader's day retirement: every `interval`, the day buckets over on its wall clock
/// (by [`crate::ledger::Ledger::retire_after_ms`]) that hold nothing leased or in doubt are
/// proposed for retirement, up to one merge's worth at a time; the ledger checks both again
/// against the entry's stamp. No money depends on the clock here: a day retired early only
/// stops spending from it (grants refuse a retired day), and one retired late costs rows.
pub async fn retire_loop(
    node: Arc<Node>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if !node.leads() {
            continue;
        }
        let now = node.clock.wall_us();
        let days = node.state.read(|m| {
            m.ledger()
                .retirable_days(now, shared::log::entry::BUCKETS_MAX)
        });
        if days.is_empty() {
            continue;
        }
        let named = days.len();
        match propose_bounded(&*node, Command::RetireDays { days }).await {
            Ok((crate::ledger::Reply::DaysRetired { retired }, index)) => {
                tracing::info!(
                    named,
                    retired,
                    index,
                    "retired day buckets whose day is over"
                );
            }
            Ok((other, _)) => tracing::warn!(?other, "day retirement: unexpected reply"),
            Err(e) => tracing::warn!(error = %e, "day retirement proposal failed; retrying"),
        }
    }
}

/// How often a node looks for full segments to seal.
pub const ARCHIVE_TICK: Duration = Duration::from_secs(1);

/// Seals complete segments of the financial log into the data directory, on every node, until
/// `stop` fires; sealed records then leave RocksDB. A node whose archive has a gap (it joined
/// by snapshot) fetches the missing segments from its peers first. On the leader, a segment left open for `seal_interval` (by its monotonic
/// clock) is ended with a `SealSegment` command, so that a quiet region's log is sealed (and
/// verifiable offline) too.
pub async fn archive_loop(
    node: Arc<Node>,
    rule: impl Into<crate::archive::SegmentRule>,
    seal_interval: Duration,
    scrub_bytes: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let rule = rule.into();
    let mut tick = tokio::time::interval(ARCHIVE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The open segment's first seq, and since when (monotonic) it has been open here.
    let mut open: Option<(u64, Duration)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if node.leader().is_some_and(|(id, _)| id == node.id) {
            let next = node.state.read(|m| m.ledger().chain().next_seq());
            match node.archive.sealed() {
                (sealed, _) if next > sealed => {
                    let now = node.clock.mono();
                    let since = match open {
                        Some((start, since)) if start == sealed => since,
                        _ => now,
                    };
                    open = Some((sealed, since));
                    if now.saturating_sub(since) >= seal_interval {
                        match propose_bounded(&*node, Command::SealSegment).await {
                            Ok((reply, _)) => tracing::info!(
                                ?reply,
                                "the open financial-log segment waited its seal interval: sealed"
                            ),
                            Err(e) => tracing::warn!(error = %e, "seal proposal failed; retrying"),
                        }
                        open = None;
                    }
                }
                _ => open = None,
            }
        } else {
            open = None;
        }
        // A node that joined by snapshot first fetches the sealed history it lacks.
        let n = node.clone();
        if let Ok(Ok(Some((from, until)))) =
            tokio::task::spawn_blocking(move || n.archive_gap()).await
        {
            tracing::info!(
                from,
                until,
                "this node's archive lacks sealed records (it installed a snapshot): fetching them from its peers"
            );
            match node.fetch_archive_gap().await {
                Ok(n) => tracing::info!(segments = n, "the archive is whole again"),
                Err(e) => tracing::warn!(error = %e, "fetching sealed segments failed; will retry"),
            }
            continue;
        }
        // The scrub: a share of the archive read against its hashes every tick; a damaged
        // segment (here or found by a read) is fetched again from a peer.
        if scrub_bytes > 0 {
            let archive = node.archive.clone();
            match tokio::task::spawn_blocking(move || archive.scrub(scrub_bytes)).await {
                Ok(Ok((_, found))) if !found.is_empty() => {
                    tracing::warn!(segments = ?found, "the scrub found damaged segments")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the scrub could not read a segment"),
                Err(e) => tracing::error!(error = %e, "the scrub task failed"),
            }
        }
        if !node.archive.damaged().is_empty() {
            match node.repair_damaged().await {
                Ok(n) => tracing::info!(segments = n, "damaged segments repaired"),
                Err(e) => {
                    tracing::warn!(error = %e, "repairing damaged segments failed; will retry")
                }
            }
        }
        let n = node.clone();
        match tokio::task::spawn_blocking(move || n.archive(rule)).await {
            Ok(Ok(files)) => {
                for f in files {
                    tracing::info!(file = %f.display(), "sealed a financial-log segment");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "sealing financial-log segments failed; will retry")
            }
            Err(e) => tracing::error!(error = %e, "the sealing task failed"),
        }
    }
}

/// Runs a node until `shutdown` resolves: storage, Raft, gRPC on `listener` over `transport`,
/// the reclaim loop; initializes a new region if members are configured.
pub async fn run(
    config: Config,
    transport: shared::tls::Transport,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Checked {
        node: mut node_cfg,
        sync: mut sync_cfg,
        members,
    } = config.validate()?;
    node_cfg.transport = transport;
    if node_cfg.transport.is_tls() {
        tracing::info!(ca = %config.tls.ca_file.display(), cert = %config.tls.cert_file.display(), "mutual TLS on every gRPC link");
        // The same key signs the region's log heads for auditors.
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("[tls] {}: {e}", p.display()))
        };
        let signer = shared::log::signed::HeadSigner::from_pem(
            &read(&config.tls.cert_file)?,
            &read(&config.tls.key_file)?,
            &node_cfg.region,
        )
        .map_err(|e| anyhow::anyhow!("[tls] {}: {e}", config.tls.cert_file.display()))?;
        node_cfg.head_signer = Some(Arc::new(signer));
    } else {
        tracing::warn!(
            "INSECURE: gRPC in plaintext (--insecure-plaintext); any peer that can connect may \
             call every API, admin included. For local development and tests only"
        );
    }
    node_cfg.clock = shared::clock::Clock::from_env();
    if node_cfg.clock.is_skewable() {
        tracing::warn!(
            file = ?std::env::var_os(shared::clock::CLOCK_FILE_ENV),
            "the clock follows a skew file: for fault-injection tests only"
        );
    }
    std::fs::create_dir_all(&node_cfg.data_dir)
        .map_err(|e| anyhow::anyhow!("data_dir {}: {e}", node_cfg.data_dir.display()))?;
    let node = Arc::new(Node::start(&node_cfg).await?);
    sync_cfg.outgoing = sync_cfg.outgoing.or(node_cfg.outgoing);
    sync_cfg.transport = node_cfg.transport.clone();
    let sync = Arc::new(crate::region::Sync::new(node.region.clone(), sync_cfg));
    let addr = listener.local_addr()?;
    tracing::info!(region = %node.region, node = node.id, %addr, data_dir = %node_cfg.data_dir.display(), segment_io = crate::archive::FileIo::detect().name(), "coordinator listening");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let serving = node.clone();
    let serving_sync = sync.clone();
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        crate::api::serve(&serving, &serving_sync, listener, async move {
            let _ = server_stop.changed().await;
        })
        .await
    });
    if !members.is_empty() {
        match node.initialize(members).await {
            Ok(()) => tracing::info!("initialized a new region"),
            Err(e) => tracing::info!(reason = %e, "not initializing (already initialized?)"),
        }
    }
    let metrics = if config.metrics_listen.is_empty() {
        None
    } else {
        let l = TcpListener::bind(&config.metrics_listen)
            .await
            .map_err(|e| anyhow::anyhow!("metrics_listen {}: {e}", config.metrics_listen))?;
        tracing::info!(addr = %config.metrics_listen, "metrics on http://{}/metrics", config.metrics_listen);
        let mut stop = stop_rx.clone();
        let scraped = node.clone();
        let scraped_sync = sync.clone();
        Some(tokio::spawn(crate::metrics::serve(
            Arc::new(move || scraped_sync.render_metrics(&scraped)),
            l,
            async move {
                let _ = stop.changed().await;
            },
        )))
    };
    let archiver = tokio::spawn(archive_loop(
        node.clone(),
        crate::archive::SegmentRule {
            entries: config.segment_entries,
            bytes_max: config.segment_bytes_max,
        },
        Duration::from_millis(config.segment_seal_interval_ms),
        config
            .scrub_bytes_per_second
            .saturating_mul(ARCHIVE_TICK.as_secs().max(1)),
        stop_rx.clone(),
    ));
    let reclaim = tokio::spawn(reclaim_loop(
        node.clone(),
        Arc::new(node.clock.clone()),
        stop_rx.clone(),
    ));
    let retire = config.retire_days.then(|| {
        tokio::spawn(retire_loop(
            node.clone(),
            Duration::from_millis(config.retire_interval_ms),
            stop_rx.clone(),
        ))
    });
    if !sync.settings().peers.is_empty() {
        tracing::info!(peers = ?sync.settings().peers.keys().collect::<Vec<_>>(), "syncing with peer regions");
    }
    let sync = tokio::spawn(crate::region::sync_loop(node.clone(), sync, stop_rx));
    let failed = tokio::select! {
        () = shutdown => None,
        why = raft_failure(&node) => Some(why),
    };
    match failed {
        None => tracing::info!("shutting down"),
        Some(why) => {
            tracing::error!(
                error = %why,
                "raft stopped on a storage failure: this replica can take no write and vote in \
                 no election any more, so it stops (fail-stop). A full disk: free space and \
                 start it again, it loses nothing. A damaged disk: replace the replica"
            );
            // At once, with the storage status: closing the database would write to a log
            // that RocksDB holds in an error state (its assertions abort the process then).
            eprintln!("coordinator: raft stopped on a storage failure: {why}");
            std::process::exit(74);
        }
    }
    let _ = stop_tx.send(true);
    let _ = reclaim.await;
    if let Some(r) = retire {
        let _ = r.await;
    }
    let _ = sync.await;
    let _ = archiver.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    node.shutdown().await;
    server.await??;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Resolves, with the reason, once this node's Raft has stopped on a fatal error.
async fn raft_failure(node: &Node) -> String {
    let mut m = node.raft.metrics();
    loop {
        let fatal = m
            .borrow()
            .running_state
            .as_ref()
            .err()
            .map(ToString::to_string);
        if let Some(why) = fatal {
            return why;
        }
        if m.changed().await.is_err() {
            return "raft's metrics channel closed".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Config, String> {
        toml::from_str::<Config>(toml_text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_a_working_configuration() {
        let Checked { node, members, .. } = Config::default().validate().unwrap();
        assert_eq!(node.id, 1);
        assert_eq!(node.region.as_str(), "local");
        assert_eq!(node.init_params, Params::default());
        assert!(members.is_empty());
        // An empty file is the defaults.
        let c = parse("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:7001");
        assert_eq!(c.segment_entries, 10_000);
    }

    #[test]
    fn a_file_sets_what_it_names_and_nothing_else() {
        let c = parse(
            r#"
            region = "eu-1"
            node_id = 2
            init_members = { 1 = "10.0.0.1:7001", 2 = "10.0.0.2:7001" }
            [leases]
            duration_ms = 5000
            "#,
        )
        .unwrap();
        let Checked { node, members, .. } = c.validate().unwrap();
        assert_eq!((node.region.as_str(), node.id), ("eu-1", 2));
        assert_eq!(node.init_params.lease_duration_ms, 5_000);
        assert_eq!(
            node.init_params.lease_share_divisor,
            Params::default().lease_share_divisor
        );
        assert_eq!(members.len(), 2);
    }

    #[track_caller]
    fn refused(toml_text: &str, mentions: &str) {
        let err = match parse(toml_text) {
            Err(e) => e,
            Ok(c) => c
                .validate()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
        };
        assert!(
            err.contains(mentions),
            "{toml_text:?}: {err:?} does not mention {mentions:?}"
        );
    }

    #[test]
    fn bad_configurations_are_refused_by_name() {
        refused("colour = \"blue\"", "colour");
        refused("[raft]\nheartbeat_secs = 1", "heartbeat_secs");
        refused("region = \"eu 1\"", "region");
        refused("node_id = 0", "node_id");
        refused("outgoing_address = \"127.0.0\"", "outgoing_address");
        refused(
            "[raft]\nheartbeat_ms = 500\nelection_timeout_min_ms = 400",
            "raft",
        );
        refused("[leases]\nshare_divisor = 0", "lease_share_divisor");
        refused(
            "[leases]\nduration_ms = 30000\nmargin_ms = 1\nclock_rate_error_ppm = 1000",
            "margin_ms",
        );
        refused(
            "[leases]\ndefault_exp_ms = 7200000\nmax_exp_ms = 3600000",
            "default_exp_ms",
        );
        refused(
            "node_id = 3\ninit_members = { 1 = \"a:1\" }",
            "does not include this node",
        );
        refused("init_members = { one = \"a:1\" }", "not a node number");
        refused("node_id = -1", "node_id");
        refused(
            "region = \"eu\"\n[regions.peers]\neu = [\"a:1\"]",
            "own region",
        );
        refused("[regions.peers]\nus = []", "at least one");
        refused("[regions.peers]\n\"u s\" = [\"a:1\"]", "regions.peers");
        refused("[regions]\npush_interval_ms = 0", "push_interval_ms");
        refused(
            "[regions]\npush_interval_ms = 5000\nfull_push_interval_ms = 1000",
            "full_push_interval_ms",
        );
    }
}
