//! Across regions (DESIGN §7): the leader's sync with peer regions, and rebalancing.
//!
//! - **Push, by deltas.** While this node leads, one task per peer region sends it a
//!   [`pb::RegionState`]: the financial-log head, and the buckets (counter rows, and for
//!   operators our own leased and in-doubt amounts) and home campaigns changed since the state
//!   the peer last acknowledged ([`Ledger::changed_since`]: the cost is what changed, nothing
//!   scans every bucket). It sends when something changed (woken every [`TICK`]), after a
//!   transfer to the peer, and at least every `push_interval` (then perhaps with nothing but
//!   the head). The first push of a leadership, and one every `full_push_interval`, carry
//!   everything (`complete`): they repair what a lost acknowledgement or a peer's lost data
//!   hid, since the merge is a join and repeating rows is harmless.
//! - **Receive.** [`Sync::receive`] decides whether a pushed state brings anything: a row above
//!   ours, a newer campaign setting, or a log head to witness (first, or older than
//!   `witness_refresh`). Only then it proposes `MergeRemote` through our own Raft log, so that
//!   two idle regions do not write each other's heads into their logs for ever. The merge is
//!   the lattice join: idempotent, order-free, safe to repeat; a state older than one already
//!   witnessed changes nothing.
//! - **Alarms.** A state that shows evidence of data loss (our own rows ahead at the peer, or a
//!   region's rows that diverge: `shared::crdt::MergeError`) is refused by the ledger, and
//!   raises an alarm: an error log, `budget_region_alarms_total`, and a line in `budgetctl
//!   regions`. So does a peer that keeps sending states behind the log head it showed before
//!   ([`STALE_ALARM_AFTER`] in a row): it went back in time.
//! - **Rebalance.** Every `ask_interval`, for each campaign edges asked leases for in the last
//!   [`DEMAND_WINDOW`], the leader looks at its lifetime bucket and today's: when what is
//!   available falls under its low-water mark (the settled rate times `horizon`, at least the
//!   smallest lease), it asks the peer that holds the most for twice the mark. The donor
//!   ([`Sync::donate`]) transfers only what exceeds its own need (its own rate times
//!   `horizon`), through a `TransferRights` command in its own log, and pushes its state to the
//!   asker at once. The home region opens a day's bucket when asked for its rights. Crumbs
//!   (less than one bid) go whole, but only towards the region that holds more, so that the
//!   crumbs of several regions add up to a bid in one of them.
//!
//! Nothing here guards money: the ledger checks every transfer and merge. Times are this
//! node's monotonic clock, for ages and rates only.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::bucket::{Bucket, BucketKey};
use shared::crdt::CounterRows;
use shared::log::entry::BUCKETS_MAX;
use shared::proto::v1 as pb;
use shared::proto::v1::region_sync_client::RegionSyncClient;
use shared::{CampaignId, Money, RegionId};
use tonic::transport::Channel;

use crate::ledger::{Command, Ledger, Refusal, RemoteBucket, RemoteCampaign, Reply, RequestKey};
use crate::node::{Node, ProposeError};

/// How often the leader builds its state and checks its buckets.
pub const TICK: Duration = Duration::from_millis(200);
pub mod plan;

pub use plan::{DEMAND_WINDOW, RATE_WINDOW};
use plan::{Plan, Rules, View};
/// Stale states in a row from one peer that raise an alarm.
pub const STALE_ALARM_AFTER: u32 = 5;
/// Alarms kept for `budgetctl regions`.
pub const ALARMS_KEPT: usize = 100;
/// Campaigns' settings one merge adopts at most.
pub const CAMPAIGNS_PER_MERGE: usize = 1_000;
/// How long one push or ask may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The region-sync settings of a node.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Peer regions and their coordinators' addresses.
    pub peers: BTreeMap<RegionId, Vec<String>>,
    /// A peer gets what changed (or just our log head) at least this often.
    pub push_interval: Duration,
    /// A peer gets our whole state at least this often.
    pub full_push_interval: Duration,
    /// A peer's log head is written into our log at least this often while it pushes.
    pub witness_refresh: Duration,
    /// Projected need = settled rate × horizon.
    pub horizon: Duration,
    /// How often the leader looks for buckets short of rights.
    pub ask_interval: Duration,
    /// Source IP of connections to peers.
    pub outgoing: Option<IpAddr>,
    /// How connections to peers are carried (the node's own transport).
    pub transport: shared::tls::Transport,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            peers: BTreeMap::new(),
            push_interval: Duration::from_secs(1),
            full_push_interval: Duration::from_secs(300),
            witness_refresh: Duration::from_secs(10),
            horizon: Duration::from_secs(10),
            ask_interval: Duration::from_millis(500),
            outgoing: None,
            transport: shared::tls::Transport::Plaintext,
        }
    }
}

/// What this node knows of one peer region.
#[derive(Clone, Debug, Default)]
struct Peer {
    addrs: Vec<String>,
    /// The peer's leader, as its last `not_leader` answer said.
    hint: Option<String>,
    last_push_ok: Option<Duration>,
    last_received: Option<Duration>,
    last_error: String,
    pushes_ok: u64,
    pushes_failed: u64,
    /// The ledger version (a Raft index) of the state it last acknowledged
    /// ([`Ledger::changed_since`]).
    acked: Option<u64>,
    /// When it last acknowledged a complete state.
    last_full: Option<Duration>,
    /// Push at the next chance, changed or not (after a transfer to it).
    push_now: bool,
    /// States in a row behind its witnessed head.
    stale_run: u32,
    /// Its own leased and in-doubt amounts per bucket, from its pushes (none kept for a
    /// bucket where both are zero).
    figures: BTreeMap<BucketKey, (i64, i64)>,
    /// When we last wrote its log head into our log.
    witnessed_at: Option<Duration>,
}

#[derive(Debug, Default)]
struct Inner {
    peers: BTreeMap<RegionId, Peer>,
    alarms: VecDeque<String>,
    /// The ledger version the rate samples were last taken at.
    sampled: Option<u64>,
}

/// The region-sync side of a node: peers, alarms, rates, and the state to push.
#[derive(Debug)]
pub struct Sync {
    region: RegionId,
    settings: Settings,
    inner: Mutex<Inner>,
    clients: Mutex<BTreeMap<String, RegionSyncClient<Channel>>>,
    wake: tokio::sync::Notify,
    /// Rebalancing's memory: demand, rates, ask back-offs.
    plan: Mutex<Plan>,
}

/// One peer as `budgetctl regions` shows it.
pub type PeerStatus = pb::PeerStatus;

/// Ms from `t` to `now` on the node's monotonic clock, -1 for never.
fn age_ms(now: Duration, t: Option<Duration>) -> i64 {
    t.map_or(-1, |t| {
        i64::try_from(now.saturating_sub(t).as_millis()).unwrap_or(i64::MAX)
    })
}

fn micros_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A key for a command from a random source: commands the leader makes on its own.
fn fresh_key() -> RequestKey {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    k[8..].copy_from_slice(&fastrand::u64(..).to_le_bytes());
    RequestKey(k)
}

/// This region's state to push to a peer that last acknowledged `seen`: the buckets and home
/// campaigns changed since (everything if `seen` is `None`, or older than the rows the ledger
/// was loaded from), and the log head. Returns it with the version to remember once the peer
/// acknowledges it.
pub fn state_since(ledger: &Ledger, seen: Option<u64>) -> (u64, pb::RegionState) {
    let changed = ledger.changed_since(seen);
    let buckets = changed
        .buckets
        .iter()
        .map(|(k, b)| {
            crate::wire::counter_to_wire(
                k,
                &CounterRows::from(b.counter.state()),
                b.leased.micros(),
                b.in_doubt.micros(),
            )
        })
        .collect();
    let campaigns = changed
        .campaigns
        .iter()
        .filter(|(_, c)| c.home == *ledger.region())
        .map(|(id, c)| pb::HomeCampaign {
            config: Some(crate::wire::campaign_to_wire(id, c)),
            version: c.home_version,
        })
        .collect();
    let state = pb::RegionState {
        from_region: ledger.region().to_string(),
        log_seq: ledger.chain().next_seq(),
        log_head: ledger.chain().head().to_vec(),
        buckets,
        campaigns,
        complete: changed.everything,
    };
    (changed.version, state)
}

/// This region's whole state (a complete push).
pub fn state_of(ledger: &Ledger) -> pb::RegionState {
    state_since(ledger, None).1
}

/// Why a pushed state was not taken.
#[derive(Debug)]
pub enum ReceiveError {
    /// Bad input: the field and the problem.
    Invalid(String),
    /// From a region that is not one of our peers.
    UnknownPeer(RegionId),
    /// Not the leader here.
    NotLeader(Option<(u64, String)>),
    /// Refused as evidence of data loss (an alarm was raised).
    Refused(String),
    /// The outcome is unknown (Raft failed); the sender retries.
    Unavailable(String),
}

impl Sync {
    /// The side of a region with no peers (tests, a region on its own).
    pub fn alone(region: RegionId) -> Sync {
        Sync::new(region, Settings::default())
    }

    /// `node`'s metrics page, with region sync's ages read now.
    pub fn render_metrics(&self, node: &Node) -> String {
        node.metrics
            .observe_region_ages(&self.ages(node.clock.mono()));
        node.render_metrics()
    }

    /// The sync of a node of `region`.
    pub fn new(region: RegionId, settings: Settings) -> Sync {
        let peers = settings
            .peers
            .iter()
            .map(|(r, addrs)| {
                (
                    r.clone(),
                    Peer {
                        addrs: addrs.clone(),
                        ..Peer::default()
                    },
                )
            })
            .collect();
        Sync {
            region,
            settings,
            inner: Mutex::new(Inner {
                peers,
                ..Inner::default()
            }),
            clients: Mutex::new(BTreeMap::new()),
            wake: tokio::sync::Notify::new(),
            plan: Mutex::new(Plan::default()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Edges asked for a lease of `campaign` at `now` (the node's monotonic clock): rights
    /// are wanted here.
    pub fn asked(&self, campaign: &CampaignId, now: Duration) {
        self.plan().asked(campaign, now);
    }

    /// The rebalancing rules under the region's smallest lease `lease_min`.
    fn rules(&self, lease_min: Money) -> Rules {
        Rules {
            horizon: self.settings.horizon,
            ask_interval: self.settings.ask_interval,
            lease_min,
        }
    }

    fn alarm(&self, node: &Node, peer: &RegionId, kind: &'static str, what: String) {
        tracing::error!(peer = %peer, kind, "REGION ALARM: {what}");
        node.metrics.region_alarm(peer.as_str(), kind);
        let secs = node.clock.wall_us() / 1_000_000;
        let mut inner = self.lock();
        inner.alarms.push_back(format!("{secs} {peer}: {what}"));
        while inner.alarms.len() > ALARMS_KEPT {
            inner.alarms.pop_front();
        }
    }

    fn client(&self, addr: &str) -> Result<RegionSyncClient<Channel>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        // HTTP/2 pings find a connection that a partition killed within seconds: without them
        // the channel kept it, and a healed link waited for TCP's retransmission backoff (a
        // two-region run with a 37 s isolation converged only 20.8 s after the load ended).
        let channel = self
            .settings
            .transport
            .endpoint(addr)
            .map_err(|e| e.to_string())?
            .connect_timeout(CALL_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(CALL_TIMEOUT)
            .keep_alive_while_idle(true)
            .local_address(self.settings.outgoing)
            .connect_lazy();
        let c = RegionSyncClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// The addresses to try for `peer`, its known leader first.
    fn targets(&self, peer: &RegionId) -> Vec<String> {
        let inner = self.lock();
        let Some(p) = inner.peers.get(peer) else {
            return Vec::new();
        };
        let mut out: Vec<String> = p.hint.iter().cloned().collect();
        out.extend(
            p.addrs
                .iter()
                .filter(|a| Some(*a) != p.hint.as_ref())
                .cloned(),
        );
        out
    }

    fn set_hint(&self, peer: &RegionId, hint: Option<String>) {
        if let Some(p) = self.lock().peers.get_mut(peer) {
            p.hint = hint.filter(|h| !h.is_empty());
        }
    }

    /// Sends `state` to `peer`, following `not_leader` answers. Returns whether it was acked.
    async fn push_to(
        &self,
        node: &Node,
        peer: &RegionId,
        seen: u64,
        state: &pb::RegionState,
    ) -> bool {
        let mut error = "no address answered".to_string();
        let mut targets: VecDeque<String> = self.targets(peer).into();
        let mut tried = Vec::new();
        while let Some(addr) = targets.pop_front() {
            tried.push(addr.clone());
            let mut client = match self.client(&addr) {
                Ok(c) => c,
                Err(e) => {
                    error = e;
                    continue;
                }
            };
            match client
                .push_state(state.clone())
                .await
                .map(|r| r.into_inner().result)
            {
                Ok(Some(pb::push_ack::Result::MergedAtIndex(_))) => {
                    node.metrics.region_push(peer.as_str(), "ok");
                    let mut inner = self.lock();
                    if let Some(p) = inner.peers.get_mut(peer) {
                        p.hint = Some(addr);
                        p.last_push_ok = Some(node.clock.mono());
                        p.last_error.clear();
                        p.pushes_ok += 1;
                        p.acked = Some(seen);
                        if state.complete {
                            p.last_full = p.last_push_ok;
                        }
                    }
                    return true;
                }
                Ok(Some(pb::push_ack::Result::Refused(why))) => {
                    node.metrics.region_push(peer.as_str(), "refused");
                    tracing::error!(peer = %peer, %addr, reason = %why, "our state was refused as evidence of data loss");
                    error = format!("refused by {addr}: {why}");
                    break;
                }
                Ok(Some(pb::push_ack::Result::NotLeader(nl))) => {
                    error = format!("{addr} is not the leader");
                    if !nl.leader_addr.is_empty() && !tried.contains(&nl.leader_addr) {
                        targets.push_front(nl.leader_addr);
                    }
                }
                Ok(None) => error = format!("{addr}: empty answer"),
                Err(s) => error = format!("{addr}: {}", s.message()),
            }
        }
        node.metrics.region_push(peer.as_str(), "failed");
        let mut inner = self.lock();
        if let Some(p) = inner.peers.get_mut(peer) {
            p.hint = None;
            p.last_error = error;
            p.pushes_failed += 1;
        }
        false
    }

    /// Takes a state pushed by a peer: merges it through Raft when it brings something.
    /// Returns the Raft index it is merged at or before.
    pub async fn receive(&self, node: &Node, state: pb::RegionState) -> Result<u64, ReceiveError> {
        let from: RegionId = state
            .from_region
            .parse()
            .map_err(|e| ReceiveError::Invalid(format!("from_region: {e}")))?;
        if !self.lock().peers.contains_key(&from) {
            return Err(ReceiveError::UnknownPeer(from));
        }
        let head: [u8; 32] = state
            .log_head
            .as_slice()
            .try_into()
            .map_err(|_| ReceiveError::Invalid("log_head: must be 32 bytes".into()))?;
        let mut buckets = Vec::with_capacity(state.buckets.len());
        let mut figures = BTreeMap::new();
        for b in &state.buckets {
            let (bucket, rows) =
                crate::wire::counter_from_wire(b).map_err(ReceiveError::Invalid)?;
            figures.insert(bucket.clone(), (b.leased_micros, b.in_doubt_micros));
            buckets.push(RemoteBucket { bucket, rows });
        }
        let mut campaigns = Vec::with_capacity(state.campaigns.len());
        for c in &state.campaigns {
            let cfg = c
                .config
                .as_ref()
                .ok_or_else(|| ReceiveError::Invalid("campaigns.config: missing".into()))?;
            let (campaign, config) = crate::wire::campaign_config(cfg)
                .map_err(|s| ReceiveError::Invalid(s.message().to_string()))?;
            campaigns.push(RemoteCampaign {
                campaign,
                config,
                paused: cfg.paused,
                version: c.version,
            });
        }
        let leading = node.raft.metrics().borrow().current_leader == Some(node.id);
        if !leading {
            return Err(ReceiveError::NotLeader(node.leader()));
        }
        {
            let mut inner = self.lock();
            if let Some(p) = inner.peers.get_mut(&from) {
                p.last_received = Some(node.clock.mono());
                // A delta names only what changed; a complete state names everything. Only
                // figures that are not zero are kept (a bucket not listed has none).
                if state.complete {
                    p.figures.clear();
                }
                for (k, f) in figures {
                    if f == (0, 0) {
                        p.figures.remove(&k);
                    } else {
                        p.figures.insert(k, f);
                    }
                }
            }
        }
        // Does it bring anything? (Our lock and the state machine's are never held together:
        // `status` once took them in the other order, and `./dev run` deadlocked.)
        let due = self.witness_due(&from, node.clock.mono());
        let (buckets, needed, stale) = node.state.read(|m| {
            let l = m.ledger();
            let witnessed = l.witnessed().get(&from);
            let stale = witnessed.is_some_and(|w| state.log_seq < w.seq);
            // Only buckets whose join changes ours: merging the others is a no-op, and cannot
            // reveal data loss either (that takes a remote row above ours).
            let buckets: Vec<RemoteBucket> = buckets
                .into_iter()
                .filter(|rb| {
                    // A day retired here: merging it changes nothing.
                    if l.is_retired(&rb.bucket) {
                        return false;
                    }
                    let theirs = shared::crdt::CounterState::from(&rb.rows);
                    match l.bucket(&rb.bucket) {
                        None => theirs != shared::crdt::CounterState::new(),
                        Some(b) => {
                            let mut joined = b.counter.state().clone();
                            joined.join(&theirs);
                            joined != *b.counter.state()
                        }
                    }
                })
                .collect();
            let campaigns_new = campaigns.iter().any(|rc| match l.campaign(&rc.campaign) {
                None => true,
                Some(c) => c.home == from && c.home_version < rc.version,
            });
            let witness_due = match witnessed {
                None => true,
                Some(w) => w.seq < state.log_seq && due,
            };
            let needed = !stale && (!buckets.is_empty() || campaigns_new || witness_due);
            (buckets, needed, stale)
        });
        let applied = node.applied_index();
        if stale {
            let run = {
                let mut inner = self.lock();
                inner.peers.get_mut(&from).map_or(0, |p| {
                    p.stale_run += 1;
                    p.stale_run
                })
            };
            if run == STALE_ALARM_AFTER {
                let w = node
                    .state
                    .read(|m| m.ledger().witnessed().get(&from).map(|w| w.seq));
                self.alarm(
                    node,
                    &from,
                    "went_back",
                    format!(
                        "{STALE_ALARM_AFTER} states in a row at log seq {}, behind the seq {} it showed before: it lost data or runs from an old copy",
                        state.log_seq,
                        w.unwrap_or(0)
                    ),
                );
            }
            return Ok(applied);
        }
        if let Some(p) = self.lock().peers.get_mut(&from) {
            p.stale_run = 0;
        }
        if !needed {
            return Ok(applied);
        }
        // A merge holds at most BUCKETS_MAX buckets (its log entry lists what each received)
        // and CAMPAIGNS_PER_MERGE campaigns' settings (one Raft entry stays small, whatever
        // the number of campaigns): a larger state goes in several merges.
        let mut buckets = buckets.into_iter();
        let mut campaigns = campaigns.into_iter();
        let mut last = applied;
        let mut first = true;
        loop {
            let chunk: Vec<RemoteBucket> = buckets.by_ref().take(BUCKETS_MAX).collect();
            let settings: Vec<RemoteCampaign> =
                campaigns.by_ref().take(CAMPAIGNS_PER_MERGE).collect();
            if chunk.is_empty() && settings.is_empty() && !first {
                break;
            }
            first = false;
            let command = Command::MergeRemote {
                from: from.clone(),
                buckets: chunk,
                campaigns: settings,
                remote_seq: state.log_seq,
                remote_head: head,
            };
            last = self.merge(node, &from, command).await?;
        }
        self.witnessed_now(&from, node.clock.mono());
        Ok(last)
    }

    async fn merge(
        &self,
        node: &Node,
        from: &RegionId,
        command: Command,
    ) -> Result<u64, ReceiveError> {
        match node.propose(command).await {
            Ok((
                Reply::Merged {
                    received,
                    campaigns,
                    ..
                },
                index,
            )) => {
                if received.micros() > 0 || campaigns > 0 {
                    tracing::info!(peer = %from, %received, campaigns, index, "merged a peer's state");
                }
                if received.micros() > 0 {
                    node.metrics.region_transfer("in", received);
                }
                Ok(index)
            }
            Ok((Reply::Refused(Refusal::MergeRefused { reason, .. }), _)) => {
                self.alarm(node, from, "data_loss", format!("state refused: {reason}"));
                Err(ReceiveError::Refused(reason))
            }
            Ok((Reply::Refused(why), _)) => Err(ReceiveError::Invalid(why.to_string())),
            Ok((other, _)) => Err(ReceiveError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
            Err(ProposeError::NotLeader { leader }) => Err(ReceiveError::NotLeader(leader)),
            Err(e) => Err(ReceiveError::Unavailable(e.to_string())),
        }
    }

    fn witness_due(&self, from: &RegionId, now: Duration) -> bool {
        let inner = self.lock();
        inner
            .peers
            .get(from)
            .and_then(|p| p.witnessed_at)
            .is_none_or(|t| now.saturating_sub(t) >= self.settings.witness_refresh)
    }

    fn witnessed_now(&self, from: &RegionId, now: Duration) {
        if let Some(p) = self.lock().peers.get_mut(from) {
            p.witnessed_at = Some(now);
        }
    }
}

/// Why a request for rights got nothing.
#[derive(Debug)]
pub enum DonateError {
    /// Bad input: the field and the problem.
    Invalid(String),
    /// From a region that is not one of our peers.
    UnknownPeer(RegionId),
    /// Not the leader here.
    NotLeader(Option<(u64, String)>),
    /// The outcome is unknown (Raft failed); the asker retries with the same key.
    Unavailable(String),
}

impl Sync {
    /// A peer asks for rights: transfers what exceeds our own need, up to what it wants.
    /// Returns the amount transferred (0: nothing to spare) and the transfer's log seq.
    pub async fn donate(
        &self,
        node: &Node,
        r: pb::RightsRequest,
    ) -> Result<(Money, u64), DonateError> {
        let to: RegionId = r
            .from_region
            .parse()
            .map_err(|e| DonateError::Invalid(format!("from_region: {e}")))?;
        if !self.lock().peers.contains_key(&to) {
            return Err(DonateError::UnknownPeer(to));
        }
        let key = crate::wire::bucket_key(r.bucket.as_ref())
            .map_err(|s| DonateError::Invalid(s.message().to_string()))?;
        let want = shared::proto::nonneg_micros("want_micros", r.want_micros)
            .map_err(|e| DonateError::Invalid(e.to_string()))?;
        let theirs = shared::proto::nonneg_micros("have_micros", r.have_micros)
            .map_err(|e| DonateError::Invalid(e.to_string()))?;
        let idem = crate::wire::request_key(r.idempotency_key.as_ref())
            .map_err(|s| DonateError::Invalid(s.message().to_string()))?;
        if node.raft.metrics().borrow().current_leader != Some(node.id) {
            return Err(DonateError::NotLeader(node.leader()));
        }
        let lease_min = node.state.read(|m| m.ledger().params().lease_min);
        let (have, unit) = node.state.read(|m| {
            let l = m.ledger();
            let unit = l
                .campaign(&key.campaign)
                .map_or(1, |c| c.config.bid_cpm.per_impression().micros().max(1));
            let have = match l.bucket(&key) {
                Some(b) => b.available(),
                // The home region opens a day when its rights are asked for.
                None => match (key.bucket, l.campaign(&key.campaign)) {
                    (Bucket::Day(_), Some(c)) if c.home == *l.region() => {
                        c.config.daily_budget.unwrap_or(Money::ZERO)
                    }
                    _ => Money::ZERO,
                },
            };
            (have, unit)
        });
        // Who holds more: ties go to the lower region name.
        let asker_holds_more = (theirs.micros(), std::cmp::Reverse(&to))
            > (have.micros(), std::cmp::Reverse(&self.region));
        let now = node.clock.mono();
        let (need, bidding) = {
            let plan = self.plan();
            (
                plan.need(&key, &self.rules(lease_min), now),
                plan.in_demand(&key.campaign, now),
            )
        };
        let give = plan::to_give(
            have.micros(),
            need.micros(),
            want.micros(),
            unit,
            bidding,
            asker_holds_more,
        );
        if give <= 0 {
            return Ok((Money::ZERO, 0));
        }
        let command = Command::TransferRights {
            key: idem,
            campaign: key.campaign.clone(),
            bucket: key.bucket,
            to: to.clone(),
            amount: Money::from_micros(give),
        };
        match node.propose(command).await {
            Ok((Reply::Transferred { amount, log_seq }, _)) => {
                tracing::info!(peer = %to, bucket = %key, %amount, "transferred rights to a peer region");
                node.metrics.region_transfer("out", amount);
                if let Some(p) = self.lock().peers.get_mut(&to) {
                    p.push_now = true;
                }
                self.wake.notify_waiters();
                Ok((amount, log_seq))
            }
            // Between our look and the apply, leases took what we meant to give.
            Ok((Reply::Refused(Refusal::InsufficientRights { .. }), _)) => Ok((Money::ZERO, 0)),
            Ok((Reply::Refused(why), _)) => Err(DonateError::Invalid(why.to_string())),
            Ok((other, _)) => Err(DonateError::Unavailable(format!(
                "unexpected reply {other:?}"
            ))),
            Err(ProposeError::NotLeader { leader }) => Err(DonateError::NotLeader(leader)),
            Err(e) => Err(DonateError::Unavailable(e.to_string())),
        }
    }

    /// Asks `peer` for `want` of `key`, telling it we `have` that much. Returns what it
    /// transferred.
    async fn ask(&self, peer: &RegionId, key: &BucketKey, want: Money, have: Money) -> Money {
        let request = pb::RightsRequest {
            from_region: self.region.to_string(),
            bucket: Some(pb::BucketKey {
                campaign: key.campaign.to_string(),
                bucket: Some(pb::Bucket::from(&key.bucket)),
            }),
            want_micros: want.micros(),
            idempotency_key: Some(pb::IdempotencyKey {
                key: fresh_key().0.to_vec(),
            }),
            have_micros: have.micros(),
        };
        let mut targets: VecDeque<String> = self.targets(peer).into();
        let mut tried = Vec::new();
        while let Some(addr) = targets.pop_front() {
            tried.push(addr.clone());
            let Ok(mut client) = self.client(&addr) else {
                continue;
            };
            match client
                .request_rights(request.clone())
                .await
                .map(|r| r.into_inner().result)
            {
                Ok(Some(pb::rights_reply::Result::GrantedMicros(g))) => {
                    self.set_hint(peer, Some(addr));
                    return Money::from_micros(g.max(0));
                }
                Ok(Some(pb::rights_reply::Result::NotLeader(nl)))
                    if !nl.leader_addr.is_empty() && !tried.contains(&nl.leader_addr) =>
                {
                    targets.push_front(nl.leader_addr);
                }
                _ => {}
            }
        }
        Money::ZERO
    }

    /// One leader tick: samples settled spend, builds the state to push, and returns the
    /// buckets short of rights with what to ask for, what they have, and whom to ask, in order.
    fn tick(&self, node: &Node) -> Vec<plan::Ask> {
        let now = node.clock.mono();
        let wanted = self.plan().wanted(now);
        let sampled = self.lock().sampled;
        let (seen, settled, views) = node.state.read(|m| {
            let l = m.ledger();
            // Only the buckets changed since the last sample: the others' spend stood still.
            let changed = l.changed_since(sampled);
            let settled: Vec<(BucketKey, i64)> = changed
                .buckets
                .iter()
                .map(|(k, b)| ((*k).clone(), b.settled().micros()))
                .collect();
            let seen = changed.version;
            // For each wanted campaign: its buckets here, available, and peers by what they hold.
            let mut views = Vec::new();
            for c in &wanted {
                let Some(camp) = l.campaign(c) else { continue };
                if camp.paused {
                    continue;
                }
                let mut keys = vec![BucketKey {
                    campaign: c.clone(),
                    bucket: Bucket::Lifetime,
                }];
                if camp.config.daily_budget.is_some()
                    && let Ok(day) = camp.zone.day_of_unix_micros(node.clock.wall_us())
                {
                    keys.push(BucketKey {
                        campaign: c.clone(),
                        bucket: Bucket::Day(day),
                    });
                }
                let unit = camp.config.bid_cpm.per_impression().micros();
                for k in keys {
                    let (available, mut holders) = match l.bucket(&k) {
                        Some(b) => {
                            let s = b.counter.state();
                            let holders: Vec<(i64, RegionId)> = self
                                .settings
                                .peers
                                .keys()
                                .map(|p| (s.available(p).micros(), p.clone()))
                                .filter(|(a, _)| *a > 0)
                                .collect();
                            // Not one bid left anywhere we know of: nothing to ask for (and
                            // crumbs would only travel back and forth).
                            let reachable = b.available().micros()
                                + holders.iter().map(|(a, _)| *a).sum::<i64>();
                            if reachable < unit {
                                continue;
                            }
                            (b.available(), holders)
                        }
                        // A bucket we never heard of (a day its home has not opened yet, or a
                        // campaign whose rights never reached us): its home opens or has it.
                        None if camp.home != *l.region() => {
                            (Money::ZERO, vec![(0, camp.home.clone())])
                        }
                        None => continue,
                    };
                    holders.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
                    let holders: Vec<RegionId> = holders.into_iter().map(|(_, r)| r).collect();
                    views.push(View {
                        key: k,
                        available,
                        holders,
                    });
                }
            }
            (seen, settled, views)
        });
        let lease_min = node.state.read(|m| m.ledger().params().lease_min);
        self.lock().sampled = Some(seen);
        let rules = self.rules(lease_min);
        let mut plan = self.plan();
        plan.sample(now, settled);
        plan.asks(views, &rules, now)
    }
}

/// The leader's sync loop: every [`TICK`] while this node leads, builds the state to push,
/// wakes the per-peer pushers, and asks peers for rights where they are short. Runs until
/// `stop` fires.
pub async fn sync_loop(
    node: Arc<Node>,
    sync: Arc<Sync>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if sync.settings.peers.is_empty() {
        return;
    }
    let mut pushers = tokio::task::JoinSet::new();
    for peer in sync.settings.peers.keys() {
        pushers.spawn(push_loop(
            node.clone(),
            sync.clone(),
            peer.clone(),
            stop.clone(),
        ));
    }
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asking = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if !node.leads() {
            // The next leadership starts with complete pushes.
            for p in sync.lock().peers.values_mut() {
                p.acked = None;
                p.last_full = None;
            }
            continue;
        }
        let asks = sync.tick(&node);
        sync.wake.notify_waiters();
        while asking.try_join_next().is_some() {}
        for plan::Ask {
            key,
            want,
            have,
            holders,
        } in asks
        {
            let s = sync.clone();
            asking.spawn(async move {
                let (mut want, mut have) = (want, have);
                for peer in holders {
                    let got = s.ask(&peer, &key, want, have).await;
                    if got.micros() > 0 {
                        tracing::info!(peer = %peer, bucket = %key, %got, "a peer region sent rights");
                    }
                    want = Money::from_micros(want.micros() - got.micros());
                    have = Money::from_micros(have.micros().saturating_add(got.micros()));
                    if want.micros() <= 0 {
                        break;
                    }
                }
            });
        }
    }
    asking.abort_all();
    while pushers.join_next().await.is_some() {}
}

/// Pushes our state to one peer while this node leads: what changed since the peer last
/// acknowledged, when something did (the sync loop wakes us every tick), when a transfer to it
/// was made, and every `push_interval` anyway; everything every `full_push_interval`.
async fn push_loop(
    node: Arc<Node>,
    sync: Arc<Sync>,
    peer: RegionId,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_push: Option<Duration> = None;
    loop {
        tokio::select! {
            _ = sync.wake.notified() => {}
            _ = tokio::time::sleep(sync.settings.push_interval) => {}
            _ = stop.changed() => return,
        }
        if !node.leads() {
            continue;
        }
        let now = node.clock.mono();
        let (push_now, acked) = {
            let mut inner = sync.lock();
            inner.peers.get_mut(&peer).map_or((false, None), |p| {
                let full_due = p
                    .last_full
                    .is_none_or(|t| now.saturating_sub(t) >= sync.settings.full_push_interval);
                (
                    std::mem::take(&mut p.push_now),
                    p.acked.filter(|_| !full_due),
                )
            })
        };
        let (seen, state) = node.state.read(|m| state_since(m.ledger(), acked));
        let interval_due =
            last_push.is_none_or(|t| now.saturating_sub(t) >= sync.settings.push_interval);
        let changed = state.complete || !state.buckets.is_empty() || !state.campaigns.is_empty();
        if !changed && !push_now && !interval_due {
            continue;
        }
        last_push = Some(now);
        node.metrics.region_push_size(
            peer.as_str(),
            state.complete,
            prost::Message::encoded_len(&state),
        );
        if !sync.push_to(&node, &peer, seen, &state).await {
            // Tried every address; the next wake or interval tries again.
            tracing::debug!(peer = %peer, "push failed");
        }
    }
}

impl Sync {
    /// The region view for `budgetctl status` and `budgetctl regions`.
    pub fn status(&self, node: &Node, campaign: Option<&CampaignId>) -> pb::RegionStatusReply {
        let now = node.clock.mono();
        // A copy: our lock is never held inside the state machine's (see `receive`).
        let (peers, alarms) = {
            let inner = self.lock();
            (inner.peers.clone(), inner.alarms.clone())
        };
        node.state.read(|m| {
            let l = m.ledger();
            let peer_rows = peers
                .iter()
                .map(|(r, p)| {
                    let w = l.witnessed().get(r);
                    pb::PeerStatus {
                        region: r.to_string(),
                        addrs: p.addrs.clone(),
                        last_push_ok_age_ms: age_ms(now, p.last_push_ok),
                        last_received_age_ms: age_ms(now, p.last_received),
                        witnessed_seq: w.map_or(0, |w| w.seq),
                        witnessed_head: w.map(|w| w.head.to_vec()).unwrap_or_default(),
                        witnessed_at_index: w.map_or(0, |w| w.at_index),
                        last_error: p.last_error.clone(),
                        pushes_ok: p.pushes_ok,
                        pushes_failed: p.pushes_failed,
                    }
                })
                .collect();
            let buckets = l
                .buckets()
                .filter(|(k, _)| campaign.is_none_or(|c| k.campaign == *c))
                .map(|(k, b)| {
                    let s = b.counter.state();
                    let mut regions: std::collections::BTreeSet<RegionId> = s.regions();
                    regions.insert(l.region().clone());
                    regions.extend(peers.keys().cloned());
                    let figures = regions
                        .into_iter()
                        .map(|r| {
                            let (leased, in_doubt, age) = if r == *l.region() {
                                (b.leased.micros(), b.in_doubt.micros(), 0)
                            } else {
                                // A peer heard from that lists no figures for it has none.
                                match peers.get(&r).filter(|p| p.last_received.is_some()) {
                                    Some(p) => {
                                        let (le, d) = p.figures.get(k).copied().unwrap_or((0, 0));
                                        (le, d, age_ms(now, p.last_received))
                                    }
                                    None => (0, 0, -1),
                                }
                            };
                            let available =
                                s.available_i128(&r) - i128::from(leased) - i128::from(in_doubt);
                            pb::RegionFigures {
                                region: r.to_string(),
                                created_micros: micros_i64(s.created(&r)),
                                transferred_in_micros: micros_i64(s.transferred_in(&r)),
                                transferred_out_micros: micros_i64(s.transferred_out(&r)),
                                settled_micros: micros_i64(s.settled(&r)),
                                burned_micros: micros_i64(s.burned(&r)),
                                leased_micros: leased,
                                in_doubt_micros: in_doubt,
                                available_micros: i64::try_from(available).unwrap_or(i64::MAX),
                                figures_age_ms: age,
                            }
                        })
                        .collect();
                    pb::BucketStatus {
                        bucket: Some(pb::BucketKey {
                            campaign: k.campaign.to_string(),
                            bucket: Some(pb::Bucket::from(&k.bucket)),
                        }),
                        home: l
                            .campaign(&k.campaign)
                            .map(|c| c.home.to_string())
                            .unwrap_or_default(),
                        regions: figures,
                        transferred: crate::wire::transfer_rows(&CounterRows::from(s)),
                    }
                })
                .collect();
            let retired = l
                .campaigns()
                .filter(|(id, _)| campaign.is_none_or(|c| *id == c))
                .filter_map(|(id, c)| {
                    c.retired_through.map(|d| pb::RetiredDays {
                        campaign: id.to_string(),
                        retired_through: d.to_string(),
                    })
                })
                .collect();
            pb::RegionStatusReply {
                region: l.region().to_string(),
                not_leader: None,
                log_seq: l.chain().next_seq(),
                log_head: l.chain().head().to_vec(),
                peers: peer_rows,
                alarms: alarms.into_iter().collect(),
                buckets,
                retired,
            }
        })
    }

    /// Ages at `now` (the node's monotonic clock) for the metrics: `(peer, since our last
    /// acked push, since its last push)` in ms, -1 for never.
    pub fn ages(&self, now: Duration) -> Vec<(RegionId, i64, i64)> {
        self.lock()
            .peers
            .iter()
            .map(|(r, p)| {
                (
                    r.clone(),
                    age_ms(now, p.last_push_ok),
                    age_ms(now, p.last_received),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{CampaignConfig, Params, Stamp};

    struct Applier {
        l: Ledger,
        index: u64,
    }

    impl Applier {
        fn run(&mut self, cmd: Command) {
            self.index += 1;
            let stamp = Stamp {
                term: 1,
                index: self.index,
                time_us: 1_700_000_000_000_000,
            };
            let a = self.l.apply(stamp, &cmd);
            assert!(!matches!(a.reply, Reply::Refused(_)), "{:?}", a.reply);
        }

        fn key(&self) -> RequestKey {
            let mut k = [0u8; 16];
            k[..8].copy_from_slice(&self.index.to_be_bytes());
            RequestKey(k)
        }

        fn campaign(&mut self, c: &str, budget: i64) {
            let config = CampaignConfig {
                zone: "UTC".into(),
                bid_cpm: Money::from_micros(1_000_000),
                daily_budget: None,
                targeting: Box::default(),
            };
            let campaign: CampaignId = c.parse().unwrap();
            self.run(Command::UpsertCampaign {
                key: self.key(),
                campaign: campaign.clone(),
                config,
            });
            self.run(Command::SetBudget {
                key: self.key(),
                campaign,
                bucket: Bucket::Lifetime,
                budget: Money::from_micros(budget),
            });
        }
    }

    fn names(s: &pb::RegionState) -> Vec<String> {
        s.buckets
            .iter()
            .map(|b| b.bucket.as_ref().unwrap().campaign.clone())
            .collect()
    }

    #[test]
    fn a_push_carries_what_changed_since_the_peer_acknowledged_and_everything_after_a_reload() {
        let mut a = Applier {
            l: Ledger::new("eu-1".parse().unwrap(), Params::default()),
            index: 0,
        };
        for i in 0..100 {
            a.campaign(&format!("c{i:03}"), 1_000_000);
        }
        let (seen, first) = state_since(&a.l, None);
        assert!(first.complete);
        assert_eq!((first.buckets.len(), first.campaigns.len()), (100, 100));
        // Nothing changed: nothing but the head.
        let (again, idle) = state_since(&a.l, Some(seen));
        assert_eq!(again, seen);
        assert!(!idle.complete && idle.buckets.is_empty() && idle.campaigns.is_empty());
        assert_eq!(idle.log_seq, first.log_seq);
        // One budget and one campaign's settings change: those, once.
        a.run(Command::SetBudget {
            key: a.key(),
            campaign: "c042".parse().unwrap(),
            bucket: Bucket::Lifetime,
            budget: Money::from_micros(2_000_000),
        });
        a.campaign("c007", 5);
        let (next, delta) = state_since(&a.l, Some(seen));
        assert_eq!(names(&delta), ["c042", "c007"]);
        assert_eq!(delta.campaigns.len(), 1, "c007's settings");
        assert!(!delta.complete);
        assert!(
            prost::Message::encoded_len(&delta) * 20 < prost::Message::encoded_len(&first),
            "a delta of 2 buckets is a small part of 100"
        );
        assert!(state_since(&a.l, Some(next)).1.buckets.is_empty());
        // A ledger loaded again (a restart, a snapshot) knows no versions below the index it
        // was loaded at: a peer at that index gets what changed since, an older one everything.
        let mut loaded =
            Ledger::load(a.l.region().clone(), Params::default(), a.l.all_rows()).unwrap();
        loaded.loaded_at(a.index);
        assert_eq!(next, a.index);
        let (_, current) = state_since(&loaded, Some(next));
        assert!(!current.complete && current.buckets.is_empty());
        let (_, older) = state_since(&loaded, Some(seen));
        assert!(older.complete);
        assert_eq!(older.buckets.len(), 100);
    }
}
