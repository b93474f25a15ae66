//! One simulated run: a region of real ledgers under openraft on the simulated disk and
//! network, edges that lease, bid, report and release, an exchange that bills, a nemesis, and
//! the checks at the end. Everything random is drawn from the seed, and time is Tokio's paused
//! clock, so one seed is one history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coordinator::ledger::{CampaignConfig, Command, Params, Reply, RequestKey};
use coordinator::raft::{Proposal, TypeConfig};
use jepsen::check::Verdict;
use jepsen::check::budget::Escrow;
use jepsen::history::{Call, Completed, OpType};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use shared::bucket::Bucket;
use shared::log::SpendEvent;
use shared::{BatchId, CampaignId, EdgeId, LeaseId, Money, RegionId};
use tokio::time::Instant;

use crate::disk::{Disk, Space};
use crate::net::{Net, Router, Weather};
use crate::store::{SimLog, SimState, SnapshotCounts};

/// What a run does.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Coordinators in the region.
    pub nodes: u64,
    /// Edges spending.
    pub edges: u64,
    /// Simulated seconds of load.
    pub secs: u64,
    /// Whether the nemesis runs.
    pub faults: bool,
    /// The campaign's lifetime budget, micros.
    pub budget_micros: i64,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            nodes: 3,
            edges: 3,
            secs: 60,
            faults: true,
            budget_micros: 2_000_000,
        }
    }
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Every event, in order, each line stamped with simulated time.
    pub trace: Vec<String>,
    /// The invariants checked.
    pub verdicts: Vec<Verdict>,
    /// Faults injected.
    pub faults: u64,
    /// Micros the exchange billed.
    pub billed: i64,
    /// Snapshots built, and installed by a node from a leader.
    pub snapshots: (u64, u64),
    /// Applies lost to crashes (written unsynced, as the real store writes them) and made
    /// again from the log, every node.
    pub applies_lost: u64,
    /// Leases the leaders' loops proposed to reclaim.
    pub reclaims: u64,
}

impl Outcome {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        !self.verdicts.is_empty() && self.verdicts.iter().all(|v| v.held)
    }
}

/// The region's rules in a simulated minute: short leases, so that one run sees many.
fn params() -> Params {
    Params {
        lease_duration_ms: 5_000,
        settlement_window_ms: 2_000,
        margin_ms: 1_000,
        late_acceptance_ms: 5_000,
        // Notices come within seconds here: bids' deadlines a few seconds long keep what a
        // release or a reclaim holds in doubt for seconds, not the hour real traffic allows.
        clock_rate_error_ppm: RATE_PPM as u32,
        default_exp_ms: 3_000,
        max_exp_ms: 3_000,
        max_tmax_ms: 1_000,
        lease_min: Money::from_micros(10_000),
        ..Params::default()
    }
}

const REGION: &str = "sim-1";
const CAMPAIGN: &str = "c1";
/// The bid price: 1.00 CPM, 1,000 micros an impression.
const PRICE: i64 = 1_000;
/// The monotonic clocks' rate error, at most (ppm): the region's `clock_rate_error_ppm`.
const RATE_PPM: i64 = 1_000;
/// A clock offset the nemesis may give a node, at most (µs).
const MAX_SKEW_US: i64 = 2_000_000;
/// The exchange's auction ids: drawn from this many, so that they repeat.
const AUCTION_IDS: u32 = 500;
/// How long a client keeps proposing one command, and the region may take to bring every
/// replica level after the load, before the run is failed for want of progress.
const GIVE_UP: Duration = Duration::from_secs(120);
/// A snapshot every this many applied entries, this many kept in the log after it, and the
/// chunk size it travels in (a minute's run applies about a thousand entries).
const SNAPSHOT_EVERY: u64 = 100;
const LOGS_KEPT: u64 = 20;
const CHUNK_BYTES: u64 = 16 * 1024;
/// How long a client waits for one proposal before trying again.
const ATTEMPT: Duration = Duration::from_secs(3);

/// Locks `m`, a poisoned lock included (a panicking task fails the run anyway).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The trace, shared by every task.
#[derive(Clone)]
struct Trace {
    start: Instant,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Trace {
    /// Simulated µs since the run started.
    fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn log(&self, what: impl AsRef<str>) {
        let us = self.start.elapsed().as_micros();
        let line = format!(
            "{:>6}.{:06} {}",
            us / 1_000_000,
            us % 1_000_000,
            what.as_ref()
        );
        locked(&self.lines).push(line);
    }
}

/// What the harness's checkers read, as `jepsen run` records it: the exchange's notices (one
/// per won bid, invoked when the exchange bills it, acknowledged when the edge's report of it
/// is answered, with the Raft index that settled it) and linearizable balance reads, with the
/// escrow every read and every replica showed.
#[derive(Clone, Default)]
struct Recorded {
    ops: Arc<Mutex<Vec<Completed>>>,
    escrow: Arc<Mutex<Vec<Escrow>>>,
}

impl Recorded {
    fn op(&self, c: Completed) {
        locked(&self.ops).push(c);
    }

    fn escrow(&self, e: Escrow) {
        locked(&self.escrow).push(e);
    }
}

/// A notice of the exchange: `bid` is ours (`REGION/LEASE.N`), `event` the exchange's ids.
fn notice(bid: String, event: String, amount: i64, index: Option<u64>) -> Call {
    Call::Notice {
        bid,
        event,
        campaign: CAMPAIGN.into(),
        amount,
        index,
        region: String::new(),
    }
}

/// The lifetime bucket's figures in `l`, as the coordinator's balance read gives them.
fn balance(
    l: &coordinator::ledger::Ledger,
    key: &shared::bucket::BucketKey,
    read_at: u64,
) -> shared::proto::v1::Balance {
    let empty = coordinator::ledger::BucketState::new(l.region());
    let b = l.bucket(key).unwrap_or(&empty);
    coordinator::wire::balance(l.region(), key, b, read_at)
}

fn escrow_of(at_us: u64, b: &shared::proto::v1::Balance) -> Escrow {
    Escrow {
        at_us,
        region: REGION.into(),
        bucket: format!("{CAMPAIGN}/lifetime"),
        rights: b.rights_micros,
        settled: b.settled_micros,
        leased: b.leased_micros,
        in_doubt: b.in_doubt_micros,
    }
}

fn lifetime_key() -> shared::bucket::BucketKey {
    shared::bucket::BucketKey {
        campaign: CAMPAIGN.parse().expect("campaign id"),
        bucket: Bucket::Lifetime,
    }
}

struct NodeSlot {
    disk: Disk,
    raft: Option<Raft<TypeConfig>>,
    state: Option<SimState>,
    epoch: u64,
    skew_us: i64,
    /// When the running instance started (its monotonic clock's origin).
    started: Instant,
}

/// The region: its nodes, the network, the clocks.
#[derive(Clone)]
struct Region {
    nodes: Arc<Mutex<BTreeMap<u64, NodeSlot>>>,
    router: Router,
    config: Arc<openraft::Config>,
    region: RegionId,
    trace: Trace,
    /// The wall clock at the start, µs since the Unix epoch (fixed: a seed's history does not
    /// depend on when it runs).
    base_unix_us: i64,
    /// Proposals answered, and what never got an answer within [`GIVE_UP`] (a region that
    /// stops making progress ends the run rather than hanging it).
    progress: Arc<Mutex<(u64, Vec<String>)>>,
    /// Woken whenever a proposal gets its answer (the power-loss fault waits for one).
    answered: Arc<tokio::sync::Notify>,
    /// Snapshots built and installed, every node.
    snapshots: Arc<SnapshotCounts>,
    /// Set when the run is over: the leaders' loops and the edges' check-ins stop.
    stopped: Arc<AtomicBool>,
    /// Every reclaim the leaders' loops proposed: (simulated µs, leases).
    reclaims: Arc<Mutex<Vec<Reclaim>>>,
    /// Every lease granted: when its edge asked for it (simulated µs, before the request)
    /// and its reclaim wait (ms), for the reclaim rule.
    leases_sent: Arc<Mutex<BTreeMap<LeaseId, (u64, u64)>>>,
    /// Edges paused by the nemesis, until when.
    edges_paused: Arc<Mutex<BTreeMap<u64, Instant>>>,
    /// Each node's and each edge's monotonic clock rate error, ppm (within the region's
    /// `clock_rate_error_ppm`, drawn from the seed): node `i` at `[i - 1]`, edge `n` at
    /// `[n - 1]`.
    node_rate_ppm: Arc<Vec<i64>>,
    edge_rate_ppm: Arc<Vec<i64>>,
    /// While the nemesis drops answers: the chance (ppm) that a client's answer is lost on its
    /// way back, after the command took effect; the client retries it with the same key.
    answers_lost_ppm: Arc<std::sync::atomic::AtomicU32>,
    /// Draws for lost answers (seeded: the one thread draws in a fixed order).
    answer_rng: Arc<Mutex<fastrand::Rng>>,
}

/// The rate of a clock off by `ppm` (|ppm| < 10⁶), in millionths.
fn rate(ppm: i64) -> u128 {
    u128::try_from(1_000_000 + ppm).unwrap_or(1)
}

/// `d` on a clock whose rate is off by `ppm`.
fn skewed(d: Duration, ppm: i64) -> Duration {
    let us = d.as_micros() * rate(ppm) / 1_000_000;
    Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}

/// The true duration a clock off by `ppm` reads as `d` (rounded up: that clock reads `d` by
/// then).
fn unskewed(d: Duration, ppm: i64) -> Duration {
    let us = (d.as_micros() * 1_000_000).div_ceil(rate(ppm));
    Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}

/// A reclaim a leader proposed: when (simulated µs), and which leases.
type Reclaim = (u64, Vec<LeaseId>);

/// One node as the leader's reclaim loop sees it (`coordinator::server::LoopHost`): the same
/// loop a coordinator runs, over the simulated node.
struct SimHost {
    id: u64,
    raft: Raft<TypeConfig>,
    state: SimState,
    region: Region,
}

impl coordinator::server::LoopHost for SimHost {
    fn node_id(&self) -> u64 {
        self.id
    }

    fn leads(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    fn read_ledger<T>(&self, f: impl FnOnce(&coordinator::ledger::Ledger) -> T) -> T {
        self.state.read(f)
    }

    async fn propose(&self, command: Command) -> Result<(Reply, u64), String> {
        if let Command::ReclaimLeases { leases } = &command {
            locked(&self.region.reclaims).push((self.region.trace.now_us(), leases.clone()));
        }
        let proposal = Proposal {
            time_us: self.region.wall_us(self.id),
            command,
        };
        match self.raft.client_write(proposal).await {
            Ok(r) => Ok((r.data, r.log_id.index)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The lease API real edges call, served by a simulated node instance: proposals through its
/// Raft, reads of its state, its own monotonic clock (from the instance's start, at the node's
/// rate).
impl coordinator::api::LeaseHost for SimHost {
    async fn write(
        &self,
        command: Command,
    ) -> Result<(Reply, u64), coordinator::node::ProposeError> {
        use coordinator::node::ProposeError;
        let proposal = Proposal {
            time_us: self.region.wall_us(self.id),
            command,
        };
        match self.raft.client_write(proposal).await {
            Ok(r) => Ok((r.data, r.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                })
            }
            Err(e) => Err(ProposeError::Fatal(e.to_string())),
        }
    }

    fn ledger<T>(&self, f: impl FnOnce(&coordinator::ledger::Ledger) -> T) -> T {
        self.state.read(f)
    }

    fn mono(&self) -> Duration {
        let i = usize::try_from(self.id.saturating_sub(1)).unwrap_or(usize::MAX);
        let rate = self.region.node_rate_ppm.get(i).copied().unwrap_or(0);
        let started = self.region.lock().get(&self.id).map(|s| s.started);
        skewed(started.map_or(Duration::ZERO, |t| t.elapsed()), rate)
    }

    fn report_findings(&self, _anomalies: u32, _conflicts: u32, _unknown_bids: u32) {}
}

/// The real edge's link to the simulated nodes. Only the tests use it yet: the world's edges
/// move onto the real edge's manager and settler through it next (issue 23).
#[cfg(test)]
mod link {
    use super::*;

    /// How a real edge's gRPC calls reach the simulated nodes (`edge::coord::Dial`): node `nI`'s
    /// lease API, served by whichever instance of it runs when the call arrives. A call takes a
    /// millisecond each way; a node that is down refuses it, a paused one holds it, and while the
    /// nemesis loses answers the answer may be lost after the command took effect (the edge tries
    /// again with the same key). The link runs in the one simulated thread, so a seed stays one
    /// history.
    pub(super) fn lease_dial(region: &Region) -> edge::coord::Dial {
        let region = region.clone();
        Arc::new(move |addr: &str| {
            let id: u64 = addr
                .strip_prefix('n')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("no simulated node at {addr}"))?;
            Ok(edge::coord::Link::new(SimLink {
                region: region.clone(),
                id,
            }))
        })
    }

    /// One edge's link to node `id` ([`lease_dial`]).
    #[derive(Clone)]
    struct SimLink {
        region: Region,
        id: u64,
    }

    type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
    type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

    impl tower::Service<HttpRequest> for SimLink {
        type Response = HttpResponse;
        type Error = edge::coord::LinkError;
        type Future = std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<HttpResponse, edge::coord::LinkError>>
                    + Send,
            >,
        >;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: HttpRequest) -> Self::Future {
            let (region, id) = (self.region.clone(), self.id);
            Box::pin(async move {
                let fail = |why: &str| edge::coord::LinkError(why.to_owned().into());
                tokio::time::sleep(LINK_DELAY).await;
                region.router.wait_unpaused(id).await;
                let host = {
                    let n = region.lock();
                    let slot = n.get(&id).ok_or_else(|| fail("no such node"))?;
                    match (&slot.raft, &slot.state) {
                        (Some(raft), Some(state)) => SimHost {
                            id,
                            raft: raft.clone(),
                            state: state.clone(),
                            region: region.clone(),
                        },
                        _ => return Err(fail("connection refused")),
                    }
                };
                let sync = Arc::new(coordinator::region::Sync::alone(region.region.clone()));
                let api = shared::proto::v1::lease_api_server::LeaseApiServer::new(
                    coordinator::api::LeaseService::new(Arc::new(host), sync),
                );
                let answer = tower::ServiceExt::oneshot(api, request)
                    .await
                    .map_err(|e| edge::coord::LinkError(e.into()))?;
                if region.answer_lost() {
                    return Err(fail("connection reset: the answer was lost"));
                }
                tokio::time::sleep(LINK_DELAY).await;
                Ok(answer)
            })
        }
    }

    /// Each way of a call from an edge to a node.
    const LINK_DELAY: Duration = Duration::from_millis(1);
}
#[cfg(test)]
use link::lease_dial;

/// Why a proposal got no answer.
#[derive(Debug)]
enum Propose {
    /// Nobody leads (yet), or the one asked does not.
    NoLeader,
    /// Asked, no definite answer (a timeout, a leader that stepped down): try again, with
    /// the same key.
    Unknown(String),
}

impl Region {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, NodeSlot>> {
        locked(&self.nodes)
    }

    async fn start(&self, id: u64) -> anyhow::Result<()> {
        let (disk, epoch) = {
            let mut n = self.lock();
            let slot = n.get_mut(&id).expect("a node of the region");
            slot.epoch += 1;
            (slot.disk.clone(), slot.epoch)
        };
        let log = SimLog::open(&disk);
        let state = SimState::open(&disk, self.region.clone(), self.snapshots.clone())?;
        let raft = Raft::new(
            id,
            self.config.clone(),
            Net::new(&self.router, id, epoch),
            log,
            state.clone(),
        )
        .await?;
        self.router.attach(id, epoch, raft.clone());
        {
            let mut n = self.lock();
            let slot = n.get_mut(&id).expect("a node of the region");
            slot.raft = Some(raft.clone());
            slot.state = Some(state.clone());
            slot.started = Instant::now();
        }
        tokio::spawn(reclaim_loop(
            SimHost {
                id,
                raft,
                state,
                region: self.clone(),
            },
            epoch,
        ));
        Ok(())
    }

    /// Whether the answer now on its way to a client is lost.
    fn answer_lost(&self) -> bool {
        let ppm = self.answers_lost_ppm.load(Ordering::Relaxed);
        ppm > 0 && locked(&self.answer_rng).u32(..1_000_000) < ppm
    }

    /// Edge `n`'s monotonic clock: from the run's start, at its rate.
    fn edge_mono(&self, n: u64) -> Duration {
        skewed(self.trace.start.elapsed(), self.edge_rate(n))
    }

    /// When edge `n`'s monotonic clock reads `t`.
    fn edge_instant(&self, n: u64, t: Duration) -> Instant {
        self.trace.start + unskewed(t, self.edge_rate(n))
    }

    fn edge_rate(&self, n: u64) -> i64 {
        let i = usize::try_from(n.saturating_sub(1)).unwrap_or(usize::MAX);
        self.edge_rate_ppm.get(i).copied().unwrap_or(0)
    }

    /// Returns once edge `n` is not paused (a paused process does nothing: no bid, no report,
    /// no release, no check-in).
    async fn edge_runs(&self, n: u64) {
        loop {
            let until = locked(&self.edges_paused).get(&n).copied();
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }

    /// Whether instance `epoch` of node `id` still runs.
    fn alive(&self, id: u64, epoch: u64) -> bool {
        !self.stopped.load(Ordering::Relaxed)
            && self
                .lock()
                .get(&id)
                .is_some_and(|s| s.epoch == epoch && s.raft.is_some())
    }

    /// The process dies: unsynced writes are lost, its messages stop.
    fn crash(&self, id: u64) {
        let raft = {
            let mut n = self.lock();
            let slot = n.get_mut(&id).expect("a node of the region");
            slot.disk.crash();
            slot.state = None;
            slot.raft.take()
        };
        self.router.detach(id);
        if let Some(r) = raft {
            tokio::spawn(async move {
                let _ = r.shutdown().await;
            });
        }
    }

    fn up(&self) -> Vec<(u64, Raft<TypeConfig>)> {
        self.lock()
            .iter()
            .filter_map(|(id, s)| s.raft.clone().map(|r| (*id, r)))
            .collect()
    }

    fn leader(&self) -> Option<(u64, Raft<TypeConfig>)> {
        self.up()
            .into_iter()
            .find(|(id, r)| r.metrics().borrow().current_leader == Some(*id))
    }

    fn lock_progress(&self) -> std::sync::MutexGuard<'_, (u64, Vec<String>)> {
        locked(&self.progress)
    }

    fn wall_us(&self, id: u64) -> i64 {
        let skew = self.lock().get(&id).map_or(0, |s| s.skew_us);
        let elapsed = i64::try_from(self.trace.start.elapsed().as_micros()).unwrap_or(i64::MAX);
        self.base_unix_us + elapsed + skew
    }

    async fn propose_once(&self, command: &Command) -> Result<(Reply, u64), Propose> {
        let (id, raft) = self.leader().ok_or(Propose::NoLeader)?;
        let proposal = Proposal {
            time_us: self.wall_us(id),
            command: command.clone(),
        };
        match tokio::time::timeout(ATTEMPT, raft.client_write(proposal)).await {
            Ok(Ok(_)) if self.answer_lost() => Err(Propose::Unknown("answer lost".into())),
            Ok(Ok(r)) => Ok((r.data, r.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(Propose::NoLeader)
            }
            Ok(Err(e)) => Err(Propose::Unknown(e.to_string())),
            Err(_) => Err(Propose::Unknown("timed out".into())),
        }
    }

    /// Proposes until a definite answer, the same command (and key) each time; `None` after
    /// [`GIVE_UP`] without one (recorded: the run fails).
    async fn propose(&self, command: Command) -> Option<Reply> {
        self.propose_indexed(command).await.map(|(r, _)| r)
    }

    /// [`Region::propose`], with the Raft index of the entry that answered.
    async fn propose_indexed(&self, command: Command) -> Option<(Reply, u64)> {
        let deadline = Instant::now() + GIVE_UP;
        loop {
            if Instant::now() > deadline {
                let what = format!("no answer in {GIVE_UP:?} to {command:?}");
                self.trace.log(&what);
                self.lock_progress().1.push(what);
                return None;
            }
            match self.propose_once(&command).await {
                Ok(r) => {
                    self.lock_progress().0 += 1;
                    self.answered.notify_waiters();
                    return Some(r);
                }
                Err(Propose::NoLeader) => {}
                Err(Propose::Unknown(why)) => self
                    .trace
                    .log(format!("proposal unanswered ({why}); again")),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A node instance's reclaim loop: the coordinator's own `reclaim_step` every
/// `RECLAIM_TICK`, on the instance's monotonic clock (from its start, as a process's), until
/// the instance dies or the run stops.
async fn reclaim_loop(host: SimHost, epoch: u64) {
    let started = Instant::now();
    let i = usize::try_from(host.id.saturating_sub(1)).unwrap_or(usize::MAX);
    let rate = host.region.node_rate_ppm.get(i).copied().unwrap_or(0);
    let mut timers = coordinator::reclaim::Timers::new();
    loop {
        tokio::time::sleep(coordinator::server::RECLAIM_TICK).await;
        if !host.region.alive(host.id, epoch) {
            return;
        }
        let now = coordinator::reclaim::Mono(skewed(started.elapsed(), rate));
        let (reclaimed, expired) = coordinator::server::reclaim_step(&host, &mut timers, now).await;
        if !reclaimed.is_empty() || !expired.is_empty() {
            host.region.trace.log(format!(
                "n{} reclaims leases {reclaimed:?}, returns in-doubt parts {expired:?}",
                host.id
            ));
        }
    }
}

fn key(rng: &mut fastrand::Rng) -> [u8; 16] {
    let mut k = [0u8; 16];
    rng.fill(&mut k);
    k
}

/// What the exchange billed: `(bucket, micros)` per won impression.
type Billed = Arc<Mutex<Vec<(String, i64)>>>;

/// An edge's own record of what it accepted, for its check-ins: a check-in covers index `I`
/// when every notice accepted before the edge learnt `I` was committed is in a committed
/// spend batch. Notices are numbered as accepted; each index learnt remembers how many had
/// been accepted by then.
#[derive(Default)]
struct EdgeBook {
    accepted: u64,
    uncommitted: std::collections::BTreeSet<u64>,
    learnt: std::collections::VecDeque<(u64, u64)>,
    covers: u64,
}

#[derive(Clone)]
struct Book(Arc<Mutex<EdgeBook>>);

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, EdgeBook> {
        locked(&self.0)
    }

    /// A notice accepted: its number.
    fn accept(&self) -> u64 {
        let mut b = self.lock();
        let n = b.accepted;
        b.accepted += 1;
        b.uncommitted.insert(n);
        n
    }

    /// An answer at `index`, which committed the notices `settled`.
    fn learnt(&self, index: u64, settled: &[u64]) {
        let mut b = self.lock();
        for n in settled {
            b.uncommitted.remove(n);
        }
        let accepted = b.accepted;
        b.learnt.push_back((index, accepted));
        let first_open = b.uncommitted.first().copied().unwrap_or(accepted);
        while let Some(&(i, before)) = b.learnt.front() {
            if before > first_open {
                break;
            }
            b.covers = b.covers.max(i);
            b.learnt.pop_front();
        }
    }
}

/// The edge's terms of a lease from the ledger's, through the wire as the API sends them.
fn edge_terms(t: &coordinator::ledger::Terms) -> edge::lease::Terms {
    edge::manager::terms_from_wire(&coordinator::wire::terms_to_wire(t))
}

/// A request's `tmax`.
const TMAX: Duration = Duration::from_millis(200);

/// One edge, as the real one spends: it registers (a check-in covering 0) and checks in every
/// half second; it leases, and bids under the lease with the edge's own `ActiveLease` (one
/// reservation per bid, only inside the spending window measured from before the grant was
/// asked for); the exchange answers most bids at once with a win (billed at a clearing price
/// up to the bid) or a loss, and never answers some (their money waits in doubt at the
/// release). When a lease's money or window runs out the edge asks for the next, while the
/// last one's wins are reported and it is released once its settlement window has passed.
#[allow(clippy::too_many_arguments)]
async fn edge(
    region: Region,
    n: u64,
    seed: u64,
    until: Instant,
    billed: Billed,
    recorded: Recorded,
    book: Book,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let me: EdgeId = format!("edge-{n}").parse().expect("edge id");
    let campaign: CampaignId = CAMPAIGN.parse().expect("campaign id");
    // Registered before any notice is accepted: in-doubt money waits for this edge's
    // check-ins from now on.
    let registered = region
        .propose(Command::CheckIn {
            edge: me.clone(),
            incarnation: 1,
            covers: 0,
        })
        .await;
    if registered.is_none() {
        return;
    }
    // Checking in goes on after the load, until the run stops: in-doubt money returns only
    // when every registered edge has checked in past it.
    tokio::spawn(check_ins(region.clone(), n, me.clone(), book.clone()));
    let mut done = Vec::new();
    while Instant::now() < until {
        region.edge_runs(n).await;
        let sent = region.edge_mono(n);
        let sent_us = region.trace.now_us();
        let reply = region
            .propose_indexed(Command::GrantLease {
                key: RequestKey(key(&mut rng)),
                edge: me.clone(),
                campaign: campaign.clone(),
                want: Money::from_micros(rng.i64(20_000..=80_000)),
            })
            .await;
        let Some((reply, index)) = reply else { break };
        book.learnt(index, &[]);
        let Reply::LeaseGranted {
            lease,
            amount,
            buckets,
            terms,
        } = reply
        else {
            region.trace.log(format!("{me} no lease: {reply:?}"));
            tokio::time::sleep(Duration::from_millis(rng.u64(200..800))).await;
            continue;
        };
        region
            .trace
            .log(format!("{me} lease {} of {amount}", lease.0));
        locked(&region.leases_sent).insert(lease, (sent_us, terms.reclaim_wait_ms()));
        let held = Arc::new(edge::lease::ActiveLease::new(
            lease,
            0,
            amount,
            sent,
            edge_terms(&terms),
        ));
        let released = Arc::new(AtomicBool::new(false));
        let cx = EdgeCtx {
            region: region.clone(),
            n,
            me: me.clone(),
            buckets,
            billed: billed.clone(),
            recorded: recorded.clone(),
            book: book.clone(),
        };
        let (wins, notices) = bid(&mut rng, &cx, &held, &released).await;
        done.push(tokio::spawn(finish(
            region.clone(),
            n,
            me.clone(),
            rng.u64(..),
            Ending {
                lease: held,
                released,
                wins,
                notices,
            },
            recorded.clone(),
            book.clone(),
        )));
    }
    for d in done {
        let _ = d.await;
    }
}

/// Wins an edge accepted under a lease, to report: each event, when the exchange billed it
/// (simulated µs), and the edge's number for it (its book's).
#[derive(Default)]
struct Wins {
    events: Vec<SpendEvent>,
    billed_at: Vec<u64>,
    seqs: Vec<u64>,
}

/// A win whose notice the exchange sends late, within its bid's `exp`: at `at` (from the
/// run's start), its deadline `deadline`.
struct Late {
    at: Duration,
    deadline: Duration,
    bid: u64,
    class: usize,
    event: SpendEvent,
}

/// The exchange's bill of a won impression, for every bucket of the lease.
fn bill(billed: &Billed, buckets: &[Bucket], micros: i64) {
    let mut b = locked(billed);
    for k in buckets {
        b.push((format!("{CAMPAIGN}/{k}"), micros));
    }
}

/// Bids under `lease` until its money or its window runs out, a few milliseconds apart.
/// Half the bids win and are billed at once at a clearing price up to the bid; four in ten
/// lose; one in twenty wins with its notice late (anywhere within its `exp`, often after the
/// release: settled against what the release holds in doubt), and one in twenty is never
/// answered (its price waits in doubt until its deadline has passed).
async fn bid(
    rng: &mut fastrand::Rng,
    cx: &EdgeCtx,
    lease: &Arc<edge::lease::ActiveLease>,
    released: &Arc<AtomicBool>,
) -> (Wins, Vec<tokio::task::JoinHandle<()>>) {
    let (region, n, buckets, billed, book) = (&cx.region, cx.n, &cx.buckets, &cx.billed, &cx.book);
    let trace = &region.trace;
    let mut wins = Wins::default();
    let mut late = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_micros(rng.u64(2_000..40_000))).await;
        region.edge_runs(n).await;
        let now = region.edge_mono(n);
        let exp_s = rng.u64(1..=3);
        let Some(class) = lease.class_of(Some(exp_s as i64)) else {
            continue;
        };
        let Some(bid) = lease.try_reserve(PRICE, now, TMAX, class) else {
            return (wins, late);
        };
        let clearing = PRICE - rng.i64(0..=PRICE / 4);
        // Exchanges reuse their auction ids (a small pool here): two bids of ours may carry
        // the same ids and are still two charges.
        let event = SpendEvent {
            bid,
            key: format!("sim/a{}/1", rng.u32(..AUCTION_IDS))
                .parse()
                .expect("event key"),
            amount: Money::from_micros(clearing),
        };
        match rng.u8(0..20) {
            0..10 => {
                bill(billed, buckets, clearing);
                wins.seqs.push(book.accept());
                wins.billed_at.push(trace.now_us());
                wins.events.push(event);
                if lease.first_notice(bid) {
                    lease.reservoir.give_back(PRICE - clearing);
                    lease.resolved(class, PRICE);
                }
            }
            10..18 if lease.first_notice(bid) => {
                lease.reservoir.give_back(PRICE);
                lease.resolved(class, PRICE);
            }
            10..18 => {}
            18 => {
                let exp = Duration::from_secs(exp_s);
                let delay = Duration::from_millis(rng.u64(300..exp_s * 1_000));
                // The exchange's times are the true ones.
                let auction = trace.start.elapsed();
                let l = Late {
                    at: auction + delay,
                    deadline: auction + exp,
                    bid,
                    class,
                    event,
                };
                late.push(tokio::spawn(late_notice(
                    cx.clone(),
                    lease.clone(),
                    released.clone(),
                    l,
                    rng.u64(..),
                )));
            }
            // No notice, ever: the bid holds its price until the release puts it in doubt.
            _ => {}
        }
    }
}

/// What one lease's end needs: the lease, whether it is released, the wins to report, and
/// the tasks of its late notices.
struct Ending {
    lease: Arc<edge::lease::ActiveLease>,
    released: Arc<AtomicBool>,
    wins: Wins,
    notices: Vec<tokio::task::JoinHandle<()>>,
}

/// What a late notice's task needs of its edge.
#[derive(Clone)]
struct EdgeCtx {
    region: Region,
    n: u64,
    me: EdgeId,
    buckets: Vec<Bucket>,
    billed: Billed,
    recorded: Recorded,
    book: Book,
}

/// A late notice: it comes at its time; the edge takes it if it runs before the deadline (a
/// paused edge past it is found by nobody, and the exchange bills nothing), and reports it
/// on its own.
async fn late_notice(
    cx: EdgeCtx,
    lease: Arc<edge::lease::ActiveLease>,
    released: Arc<AtomicBool>,
    l: Late,
    seed: u64,
) {
    let region = &cx.region;
    tokio::time::sleep_until(region.trace.start + l.at).await;
    region.edge_runs(cx.n).await;
    if region.trace.start.elapsed() > l.deadline {
        region.trace.log(format!(
            "{}: the exchange's late notice of bid {}.{} found the edge paused past its deadline",
            cx.me, lease.id.0, l.bid
        ));
        return;
    }
    // Taken back into the lease while this edge still holds it; after the release, the
    // ledger settles it against what the release held in doubt.
    if !released.load(Ordering::Relaxed) && lease.first_notice(l.bid) {
        lease.reservoir.give_back(PRICE - l.event.amount.micros());
        lease.resolved(l.class, PRICE);
    }
    bill(&cx.billed, &cx.buckets, l.event.amount.micros());
    let wins = Wins {
        seqs: vec![cx.book.accept()],
        billed_at: vec![region.trace.now_us()],
        events: vec![l.event],
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    report(
        region,
        &cx.me,
        &mut rng,
        lease.id,
        wins,
        &cx.recorded,
        &cx.book,
    )
    .await;
}

/// A lease's end at its edge: its wins reported as one spend batch; each late notice taken
/// when it comes and reported on its own (one that comes while the edge is paused past its
/// deadline finds nobody and is not billed); once its settlement window has passed, its
/// release with what it never reserved and what its unanswered bids hold in doubt. Each
/// proposal is retried with its key until answered.
#[allow(clippy::too_many_arguments)]
async fn finish(
    region: Region,
    n: u64,
    me: EdgeId,
    seed: u64,
    end: Ending,
    recorded: Recorded,
    book: Book,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let Ending {
        lease,
        released,
        wins,
        notices,
    } = end;
    region.edge_runs(n).await;
    if report(&region, &me, &mut rng, lease.id, wins, &recorded, &book).await {
        tokio::time::sleep_until(region.edge_instant(n, lease.release_at)).await;
        region.edge_runs(n).await;
        release(&region, &me, &mut rng, &lease, &released, &book, n).await;
    }
    for t in notices {
        let _ = t.await;
    }
}

/// Reports `wins` of `lease` as one spend batch, and records the exchange's notices of them:
/// acknowledged (with the index that settled them) if the region settled the report, refused
/// otherwise. False if the region never answered.
async fn report(
    region: &Region,
    me: &EdgeId,
    rng: &mut fastrand::Rng,
    lease: LeaseId,
    wins: Wins,
    recorded: &Recorded,
    book: &Book,
) -> bool {
    if wins.events.is_empty() {
        return true;
    }
    let settled = region
        .propose_indexed(Command::ReportSpend {
            batch: BatchId(key(rng)),
            edge: me.clone(),
            lease,
            events: wins.events.clone(),
            losses: Vec::new(),
            held: Vec::new(),
        })
        .await;
    let Some((settled, index)) = settled else {
        return false;
    };
    // Settled or refused, the batch is answered: its notices are done with.
    book.learnt(index, &wins.seqs);
    region.trace.log(format!(
        "{me} reported {} wins of lease {}: {settled:?}",
        wins.events.len(),
        lease.0
    ));
    let ok = matches!(settled, Reply::SpendSettled { .. });
    let done_us = region.trace.now_us();
    for (e, invoked_us) in wins.events.iter().zip(wins.billed_at) {
        let bid = format!("{REGION}/{}.{}", lease.0, e.bid);
        let invoked = notice(bid, e.key.to_string(), e.amount.micros(), None);
        let mut completed = invoked.clone();
        if let Call::Notice { index: i, .. } = &mut completed {
            *i = ok.then_some(index);
        }
        recorded.op(Completed {
            process: me.to_string(),
            invoke_us: invoked_us,
            complete_us: Some(done_us),
            outcome: if ok { OpType::Ok } else { OpType::Fail },
            invoked,
            completed: Some(completed),
        });
    }
    true
}

/// Releases `lease`: what it never reserved, how many bids, and what its bids without a notice
/// hold in doubt. False if the region never answered.
async fn release(
    region: &Region,
    me: &EdgeId,
    rng: &mut fastrand::Rng,
    lease: &edge::lease::ActiveLease,
    released: &AtomicBool,
    book: &Book,
    n: u64,
) -> bool {
    let now = region.edge_mono(n);
    // From here on a late notice is the ledger's to settle from what is held in doubt (no
    // await until the figures are read: no notice is counted both ways).
    released.store(true, Ordering::Relaxed);
    let in_doubt = lease
        .in_doubt(now)
        .into_iter()
        .map(|(wait_ms, amount)| shared::log::entry::DoubtPart {
            wait_ms,
            amount: Money::from_micros(amount),
        })
        .collect();
    let closed = region
        .propose_indexed(Command::ReleaseLease {
            batch: BatchId(key(rng)),
            edge: me.clone(),
            lease: lease.id,
            unreserved: Money::from_micros(lease.reservoir.unreserved()),
            bids: lease.bids(),
            in_doubt,
        })
        .await;
    let Some((closed, index)) = closed else {
        return false;
    };
    book.learnt(index, &[]);
    region
        .trace
        .log(format!("{me} released {}: {closed:?}", lease.id.0));
    true
}

/// An edge's check-ins: registration first (covering 0, before it accepts any notice), then
/// every half second what its book covers, until the run stops.
async fn check_ins(region: Region, n: u64, me: EdgeId, book: Book) {
    loop {
        region.edge_runs(n).await;
        let covers = book.lock().covers;
        let r = region
            .propose_indexed(Command::CheckIn {
                edge: me.clone(),
                incarnation: 1,
                covers,
            })
            .await;
        let Some((_, index)) = r else { return };
        book.learnt(index, &[]);
        if region.stopped.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Reads the campaign's balance every few tens of milliseconds through a node picked at
/// random, as the API does (`coordinator::raft::read_index`, then that node's state), recording each
/// read for I7 and its escrow for I2; and every replica's own state, read or not, for I2.
async fn reader(region: Region, nodes: u64, seed: u64, until: Instant, recorded: Recorded) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let key = lifetime_key();
    let bucket = format!("{CAMPAIGN}/lifetime");
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.u64(20..80))).await;
        let at = region.trace.now_us();
        let states: Vec<SimState> = region
            .lock()
            .values()
            .filter_map(|s| s.state.clone())
            .collect();
        for st in states {
            let b = st.read(|l| balance(l, &key, 0));
            recorded.escrow(escrow_of(at, &b));
        }
        let id = rng.u64(1..=nodes);
        let Some((raft, state)) = region
            .lock()
            .get(&id)
            .and_then(|s| Some((s.raft.clone()?, s.state.clone()?)))
        else {
            continue;
        };
        let invoked = Call::Read {
            bucket: bucket.clone(),
            value: None,
            index: None,
            region: String::new(),
        };
        let invoke_us = region.trace.now_us();
        let read = tokio::time::timeout(ATTEMPT, coordinator::raft::read_index(&raft)).await;
        let complete_us = region.trace.now_us();
        let (outcome, completed) = match read {
            Ok(Ok(read_at)) => {
                let b = state.read(|l| balance(l, &key, read_at));
                recorded.escrow(escrow_of(complete_us, &b));
                let c = Call::Read {
                    bucket: bucket.clone(),
                    value: Some(b.settled_micros),
                    index: Some(read_at),
                    region: String::new(),
                };
                (OpType::Ok, Some(c))
            }
            // Refused (not the leader, no quorum) or unanswered: a read takes no effect.
            _ => (OpType::Fail, None),
        };
        recorded.op(Completed {
            process: format!("reader-n{id}"),
            invoke_us,
            complete_us: Some(complete_us),
            outcome,
            invoked,
            completed,
        });
    }
}

/// The nemesis: a fault every few seconds, each healed before the next: a node cut off, a
/// crash (often the leader's) that loses its unsynced writes, a pause, bad weather (delay,
/// loss, duplication), power lost on every node at once just after an answer, a clock off.
async fn nemesis(region: Region, nodes: u64, edges: u64, seed: u64, until: Instant) -> u64 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut faults = 0;
    let ids: Vec<u64> = (1..=nodes).collect();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.u64(1_000..3_000))).await;
        let lasts = Duration::from_millis(rng.u64(300..4_000));
        let victim = ids[rng.usize(..ids.len())];
        let leader = region.leader().map(|(id, _)| id);
        faults += 1;
        match rng.u8(0..9) {
            0 => {
                region
                    .trace
                    .log(format!("nemesis: isolate n{victim} for {lasts:?}"));
                for o in ids.iter().filter(|o| **o != victim) {
                    region.router.cut(victim, *o);
                }
                tokio::time::sleep(lasts).await;
                region.router.heal();
            }
            1 | 2 => {
                let v = if rng.bool() {
                    leader.unwrap_or(victim)
                } else {
                    victim
                };
                region
                    .trace
                    .log(format!("nemesis: crash n{v} for {lasts:?}"));
                region.crash(v);
                tokio::time::sleep(lasts).await;
                if let Err(e) = region.start(v).await {
                    region
                        .trace
                        .log(format!("nemesis: n{v} did not restart: {e}"));
                }
            }
            3 => {
                region
                    .trace
                    .log(format!("nemesis: pause n{victim} for {lasts:?}"));
                region.router.pause(victim, Instant::now() + lasts);
                tokio::time::sleep(lasts).await;
            }
            4 => {
                let w = Weather {
                    delay_us: (100, rng.u64(1_000..50_000)),
                    loss_ppm: rng.u32(0..200_000),
                    dup_ppm: rng.u32(0..200_000),
                };
                region
                    .trace
                    .log(format!("nemesis: weather {w:?} for {lasts:?}"));
                region.router.set_weather(w);
                tokio::time::sleep(lasts).await;
                region.router.set_weather(Weather::CALM);
            }
            5 => {
                // Power fails in the whole region at once, the instant a proposal is answered:
                // whatever was acknowledged must already be on a majority's disks.
                let _ = tokio::time::timeout(lasts, region.answered.notified()).await;
                region.trace.log(format!(
                    "nemesis: power lost on every node, just after an answer, for {lasts:?}"
                ));
                for id in &ids {
                    region.crash(*id);
                }
                tokio::time::sleep(lasts).await;
                for id in &ids {
                    if let Err(e) = region.start(*id).await {
                        region
                            .trace
                            .log(format!("nemesis: n{id} did not restart: {e}"));
                    }
                }
            }
            7 => {
                // An edge stops (a long GC pause, SIGSTOP) past its leases' reclaim waits:
                // the leader reclaims them, and their reports, releases and check-ins come late.
                let e = rng.u64(1..=edges);
                let lasts = Duration::from_millis(rng.u64(2_000..30_000));
                region
                    .trace
                    .log(format!("nemesis: pause edge-{e} for {lasts:?}"));
                locked(&region.edges_paused).insert(e, Instant::now() + lasts);
                tokio::time::sleep(lasts).await;
            }
            8 => {
                // Answers lost on their way back (a connection reset after the leader
                // answered): clients retry commands that took effect, with the same keys.
                let ppm = rng.u32(100_000..500_000);
                region
                    .trace
                    .log(format!("nemesis: answers lost ({ppm} ppm) for {lasts:?}"));
                region.answers_lost_ppm.store(ppm, Ordering::Relaxed);
                tokio::time::sleep(lasts).await;
                region.answers_lost_ppm.store(0, Ordering::Relaxed);
            }
            _ => {
                let skew = rng.i64(-MAX_SKEW_US..=MAX_SKEW_US);
                region
                    .trace
                    .log(format!("nemesis: clock of n{victim} off by {skew} µs"));
                if let Some(s) = region.lock().get_mut(&victim) {
                    s.skew_us = skew;
                }
            }
        }
    }
    faults
}

/// The region of `scenario`, started and initialized, its rules recorded and the campaign
/// and its budget set; every draw from `root`, in the run's order.
async fn build(
    root: &mut fastrand::Rng,
    scenario: &Scenario,
    trace: &Trace,
) -> anyhow::Result<Region> {
    let config = openraft::Config {
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        // Snapshots as a real region takes them (`snapshot_every`, `logs_kept_after_snapshot`),
        // scaled to a minute's log: a node that falls behind the purged log gets one, in
        // small chunks, over the faulty network.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: LOGS_KEPT,
        purge_batch_size: 16,
        snapshot_max_chunk_size: CHUNK_BYTES,
        ..Default::default()
    }
    .validate()?;
    let mut nodes = BTreeMap::new();
    for id in 1..=scenario.nodes {
        nodes.insert(
            id,
            NodeSlot {
                disk: Disk::new(root.u64(..), (200, 3_000)),
                raft: None,
                state: None,
                epoch: 0,
                skew_us: 0,
                started: Instant::now(),
            },
        );
    }
    let region = Region {
        nodes: Arc::new(Mutex::new(nodes)),
        router: Router::new(root.u64(..)),
        config: Arc::new(config),
        region: REGION.parse()?,
        trace: trace.clone(),
        base_unix_us: 1_796_083_200_000_000, // 2026-12-01T00:00:00Z
        progress: Arc::default(),
        answered: Arc::default(),
        snapshots: Arc::default(),
        stopped: Arc::default(),
        reclaims: Arc::default(),
        leases_sent: Arc::default(),
        edges_paused: Arc::default(),
        node_rate_ppm: Arc::new(
            (0..scenario.nodes)
                .map(|_| root.i64(-RATE_PPM..=RATE_PPM))
                .collect(),
        ),
        edge_rate_ppm: Arc::new(
            (0..scenario.edges)
                .map(|_| root.i64(-RATE_PPM..=RATE_PPM))
                .collect(),
        ),
        answers_lost_ppm: Arc::default(),
        answer_rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(root.u64(..)))),
    };
    trace.log(format!(
        "clock rates (ppm): nodes {:?}, edges {:?}",
        region.node_rate_ppm, region.edge_rate_ppm
    ));
    for id in 1..=scenario.nodes {
        region.start(id).await?;
    }
    let members: BTreeMap<u64, BasicNode> = (1..=scenario.nodes)
        .map(|id| (id, BasicNode::new(format!("n{id}"))))
        .collect();
    let first = region.up()[0].1.clone();
    first.initialize(members).await?;
    trace.log("initialized");

    // The region's rules, the campaign and its budget.
    let mut k = || RequestKey(key(root));
    let setup = [
        Command::SetParams {
            key: k(),
            params: params(),
        },
        Command::UpsertCampaign {
            key: k(),
            campaign: CAMPAIGN.parse()?,
            config: CampaignConfig {
                zone: "UTC".into(),
                bid_cpm: Money::from_micros(PRICE * 1_000),
                daily_budget: None,
                targeting: Default::default(),
            },
        },
        Command::SetBudget {
            key: k(),
            campaign: CAMPAIGN.parse()?,
            bucket: Bucket::Lifetime,
            budget: Money::from_micros(scenario.budget_micros),
        },
    ];
    for c in setup {
        let r = region.propose(c).await;
        trace.log(format!("setup: {r:?}"));
        anyhow::ensure!(
            r.is_some(),
            "the region answered no setup command in {GIVE_UP:?}"
        );
    }

    Ok(region)
}

/// Runs `scenario` under `seed` to its end and checks what happened.
pub async fn run(seed: u64, scenario: &Scenario) -> anyhow::Result<Outcome> {
    let mut root = fastrand::Rng::with_seed(seed);
    let trace = Trace {
        start: Instant::now(),
        lines: Arc::new(Mutex::new(Vec::new())),
    };
    let region = build(&mut root, scenario, &trace).await?;
    let until = Instant::now() + Duration::from_secs(scenario.secs);
    let billed: Billed = Arc::default();
    let recorded = Recorded::default();
    let mut edges = Vec::new();
    for n in 1..=scenario.edges {
        edges.push(tokio::spawn(edge(
            region.clone(),
            n,
            root.u64(..),
            until,
            billed.clone(),
            recorded.clone(),
            Book(Arc::default()),
        )));
    }
    let nemesis = scenario.faults.then(|| {
        tokio::spawn(nemesis(
            region.clone(),
            scenario.nodes,
            scenario.edges,
            root.u64(..),
            until,
        ))
    });
    edges.push(tokio::spawn(reader(
        region.clone(),
        scenario.nodes,
        root.u64(..),
        until,
        recorded.clone(),
    )));
    let faults = match nemesis {
        Some(n) => n.await?,
        None => 0,
    };
    // Heal everything, bring every node back, and let the edges finish their leases.
    region.router.heal();
    region.router.set_weather(Weather::CALM);
    for id in 1..=scenario.nodes {
        let down = region.lock().get(&id).is_some_and(|s| s.raft.is_none());
        if down {
            region.start(id).await?;
        }
    }
    trace.log("healed");
    for e in edges {
        e.await?;
    }
    // Every lease released or reclaimed, and nothing left in doubt: the leader's loop returns
    // what the edges' check-ins allow.
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let held = region.leader().and_then(|(id, _)| {
            let state = region.lock().get(&id).and_then(|s| s.state.clone())?;
            Some(state.read(|l| {
                l.leases()
                    .filter(|(_, lease)| {
                        !matches!(lease.state, coordinator::ledger::LeaseState::Closed)
                    })
                    .count()
            }))
        });
        if held == Some(0) {
            break;
        }
        if Instant::now() > deadline {
            let what = format!("{held:?} leases still open or in doubt {GIVE_UP:?} after the load");
            trace.log(&what);
            region.lock_progress().1.push(what);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    region.stopped.store(true, Ordering::Relaxed);
    trace.log("every lease closed; loops stopped");
    // Every replica applies everything.
    let deadline = Instant::now() + GIVE_UP;
    let last = loop {
        if Instant::now() > deadline {
            let what = format!("the replicas applied different entries {GIVE_UP:?} after the heal");
            trace.log(&what);
            region.lock_progress().1.push(what);
            break 0;
        }
        if let Some((_, r)) = region.leader() {
            let m = r.metrics().borrow().clone();
            if let Some(l) = m.last_applied {
                let all = region
                    .up()
                    .iter()
                    .all(|(_, r)| r.metrics().borrow().last_applied == Some(l));
                if all {
                    break l.index;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    trace.log(format!("every replica applied {last}"));
    let snapshots = (
        region.snapshots.built.load(Ordering::Relaxed),
        region.snapshots.installed.load(Ordering::Relaxed),
    );
    trace.log(format!(
        "snapshots: {} built, {} installed",
        snapshots.0, snapshots.1
    ));
    let applies_lost: u64 = region.lock().values().map(|n| n.disk.lost_applies()).sum();
    trace.log(format!(
        "applies lost to crashes, made again: {applies_lost}"
    ));
    let verdicts = check(&region, scenario, &billed, &recorded);
    for v in &verdicts {
        trace.log(format!(
            "{}: {} ({} checked, {} violations) {:?}",
            v.invariant,
            if v.held { "held" } else { "VIOLATED" },
            v.checked,
            v.violations,
            v.evidence.first()
        ));
    }
    for (id, r) in region.up() {
        let _ = r.shutdown().await;
        trace.log(format!("n{id} stopped"));
    }
    let billed_total = locked(&billed)
        .iter()
        .filter(|(b, _)| b.ends_with("/lifetime"))
        .map(|(_, m)| *m)
        .sum();
    let lines = locked(&trace.lines).clone();
    let reclaims = locked(&region.reclaims)
        .iter()
        .map(|(_, l)| l.len() as u64)
        .sum();
    Ok(Outcome {
        reclaims,
        seed,
        trace: lines,
        verdicts,
        faults,
        billed: billed_total,
        snapshots,
        applies_lost,
    })
}

/// The invariants: I1 (the exchange billed at most the budget), conservation (what the
/// exchange billed is what every replica settled, nothing lost or counted twice, and nothing
/// left leased or in doubt once every edge released), I4 (every replica holds the same
/// financial log, and it verifies), I9 (`jepsen::check::conservation`: money conserved at
/// every entry of every replica's log), and progress (every command answered).
fn check(
    region: &Region,
    scenario: &Scenario,
    billed: &Billed,
    recorded: &Recorded,
) -> Vec<Verdict> {
    let billed = locked(billed).clone();
    let budgets: BTreeMap<String, i64> =
        BTreeMap::from([(format!("{CAMPAIGN}/lifetime"), scenario.budget_micros)]);
    let i1 = jepsen::check::budget::billed_within_budget(&budgets, &billed);

    let lifetime: i64 = billed
        .iter()
        .filter(|(b, _)| b.ends_with("/lifetime"))
        .map(|(_, m)| *m)
        .sum();
    let key = shared::bucket::BucketKey {
        campaign: CAMPAIGN.parse().expect("campaign id"),
        bucket: Bucket::Lifetime,
    };
    let nodes = region.lock();
    let mut settled_violations = Vec::new();
    let mut logs: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
    for (id, slot) in nodes.iter() {
        if let Some(state) = &slot.state {
            let (settled, held, valid) = state.read(|l| {
                let b = l.bucket(&key);
                let settled = b.map_or(0, |b| b.counter.state().settled(&region.region));
                let held = b.map_or((0, 0), |b| (b.leased.micros(), b.in_doubt.micros()));
                (settled, held, l.validate())
            });
            if i64::try_from(settled).ok() != Some(lifetime) {
                settled_violations.push(format!(
                    "n{id} settled {settled} micros; the exchange billed {lifetime}"
                ));
            }
            // Every edge released every lease it got, with nothing in doubt: nothing may be
            // held (a lease no edge knows of would hold money nobody spends).
            if held != (0, 0) {
                settled_violations.push(format!(
                    "n{id} holds {} micros leased and {} in doubt after every edge released",
                    held.0, held.1
                ));
            }
            if let Err(e) = valid {
                settled_violations.push(format!("n{id}'s ledger is inconsistent: {e}"));
            }
        }
        // The records as the replica holds them now. Its last applies may not be synced yet
        // (they are written unsynced, durable at the node's next synced write), and which
        // ones differs between a leader and its followers; a crash's losses are applied again
        // from the log before this point.
        let disk = &slot.disk;
        let records = disk
            .read(disk.generation(), |i| {
                i.space(Space::Records).values().cloned().collect()
            })
            .unwrap_or_default();
        logs.push((*id, records));
    }
    let conservation = Verdict::new("settled", nodes.len() as u64, settled_violations);

    let mut log_violations = Vec::new();
    let mut checked = 0;
    for (id, records) in &logs {
        let mut v = shared::log::Verifier::new();
        for r in records {
            checked += 1;
            if let Err(f) = v.live_record(&format!("n{id}"), &region.region, r) {
                log_violations.push(format!("n{id}'s log does not verify: {f:?}"));
                break;
            }
        }
        if records != &logs[0].1 {
            log_violations.push(format!(
                "n{id} holds {} records, n{} {}, or they differ",
                records.len(),
                logs[0].0,
                logs[0].1.len()
            ));
        }
    }
    let i4 = Verdict::new("I4", checked, log_violations);
    // I9, the harness's own checker: money adds up after every entry of every replica's log.
    let mut undecodable = Vec::new();
    let decoded: Vec<(String, Vec<(shared::log::Entry, shared::log::Hash)>)> = logs
        .iter()
        .map(|(id, records)| {
            let decoded = records
                .iter()
                .map_while(|r| match shared::log::record::decode(r) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        undecodable.push(format!("n{id}: a record does not decode: {e}"));
                        None
                    }
                })
                .collect();
            (format!("n{id}"), decoded)
        })
        .collect();
    let entries: Vec<(String, Vec<shared::log::Entry>)> = decoded
        .iter()
        .map(|(n, es)| (n.clone(), es.iter().map(|(e, _)| e.clone()).collect()))
        .collect();
    let mut i9 = jepsen::check::conservation::check(&entries);
    if !undecodable.is_empty() {
        i9 = Verdict::new("I9", i9.checked, undecodable);
    }
    // The harness's facts from the longest replica's log (I4 holds them all the same): the
    // charges for I3, each bucket's settled spend over Raft indexes for I7.
    let longest = decoded
        .iter()
        .max_by_key(|(_, es)| es.len())
        .map(|(_, es)| es.as_slice())
        .unwrap_or_default();
    let facts = jepsen::run::facts(REGION, longest);
    let ops = locked(&recorded.ops).clone();
    let i3 = jepsen::check::notices::check(&ops, &facts.events);
    let i7 = jepsen::check::linear::check(&facts.timelines, &ops);
    let escrow = locked(&recorded.escrow).clone();
    let i2 = jepsen::check::budget::escrow_within_rights(&budgets, &escrow);
    let i8 = reclaim_rule(region);
    let (answered, stuck) = region.lock_progress().clone();
    let progress = Verdict::new("progress", answered, stuck);
    vec![i1, i2, i3, conservation, i4, i7, i8, i9, progress]
}

/// I8, the reclaim rule (DESIGN §5), exact here because the simulation knows the true time:
/// no leader proposes to reclaim a lease before its reclaim wait (duration + W + margin, on a
/// clock that may run fast by the rate error allowed) has passed since its edge asked for it.
/// The leader's wait starts when it first sees the lease open, after the grant was applied,
/// after the edge asked: a reclaim any earlier was timed wrong, whether or not the edge had
/// released the lease by then.
fn reclaim_rule(region: &Region) -> Verdict {
    let sent = locked(&region.leases_sent).clone();
    let reclaims = locked(&region.reclaims).clone();
    let mut violations = Vec::new();
    let mut checked = 0;
    for (at_us, leases) in &reclaims {
        for lease in leases {
            checked += 1;
            let Some((sent_us, wait_ms)) = sent.get(lease) else {
                violations.push(format!(
                    "lease {} reclaimed at {at_us} µs, but no edge was ever granted it",
                    lease.0
                ));
                continue;
            };
            // The leader's clock may run fast by the rate error the terms allow for.
            let wait_us = wait_ms.saturating_mul(1_000);
            let allowed = wait_us * 1_000_000 / (1_000_000 + RATE_PPM as u64);
            let due_us = sent_us.saturating_add(allowed);
            if *at_us < due_us {
                violations.push(format!(
                    "lease {} reclaimed at {at_us} µs, {} ms before its wait of {wait_ms} ms \
                     from its edge's request ({sent_us} µs) was over",
                    lease.0,
                    (due_us - at_us) / 1_000
                ));
            }
        }
    }
    // A run without a reclaim has not checked the rule: count the leases instead, so that the
    // verdict says how much it saw; with no lease at all it fails.
    Verdict::new("I8", checked.max(sent.len() as u64), violations)
}

#[cfg(test)]
mod lease_api_tests {
    use super::*;
    use edge::coord::{Coordinators, granted};
    use shared::proto::v1 as pb;

    /// The real edge's client reaches the simulated region through the coordinator's own
    /// lease API: it asks node 1, follows a redirect to the leader if node 1 does not lead,
    /// and is granted a lease the leader's ledger holds for it; the same key asked again is
    /// the same lease.
    #[test]
    fn the_edge_client_is_granted_a_lease_through_the_simulated_lease_api() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let mut root = fastrand::Rng::with_seed(3);
            let trace = Trace {
                start: Instant::now(),
                lines: Arc::default(),
            };
            let scenario = Scenario::default();
            let region = build(&mut root, &scenario, &trace).await.unwrap();
            let names = (1..=scenario.nodes).map(|i| format!("n{i}")).collect();
            let coords = Coordinators::dialing(names, lease_dial(&region));
            let grant = || {
                coords.call(|mut c| async move {
                    let reply = c
                        .grant_lease(pb::GrantLeaseRequest {
                            idempotency_key: Some(pb::IdempotencyKey { key: vec![7; 16] }),
                            edge: "edge-1".into(),
                            campaign: CAMPAIGN.into(),
                            want_micros: 50_000,
                        })
                        .await?
                        .into_inner();
                    Ok(granted(reply))
                })
            };
            let lease = grant().await.unwrap().unwrap();
            assert_eq!(lease.amount_micros, 50_000, "{lease:?}");
            let again = grant().await.unwrap().unwrap();
            assert_eq!(again.lease_id, lease.lease_id, "a retry is the same lease");
            let leader_id = region.leader().unwrap().0;
            let state = region.lock()[&leader_id].state.clone().unwrap();
            let edge_of =
                state.read(|l| l.lease(LeaseId(lease.lease_id)).map(|l| l.edge.to_string()));
            assert_eq!(edge_of.as_deref(), Some("edge-1"));
        });
    }
}
