//! Exactly-once settlement (DESIGN §6.6): spend events go to the leader in batches bounded in
//! size and age, each batch with a stable id, sent again with the same id until acknowledged.
//! A notice's HTTP answer waits for its batch's commit, so an edge that dies before the commit
//! leaves the notice unanswered: the exchange sends it again (to any edge), and the ledger's
//! dedup by event key settles it once.
//!
//! A lease is released only after every batch of it has been acknowledged, so that no report
//! of this edge reaches a closed lease.
//!
//! **Check-ins.** The region returns in-doubt money whose deadlines have passed only once every
//! registered edge has checked in since ([`crate`]'s coordinator side: `Command::CheckIn`): an
//! edge cut off from the region holds the notices it accepted until the cut heals, and their
//! money must still be there. A check-in says "every notice this process accepted before it
//! learnt that index `covers` was committed is in a committed batch". The settler makes that
//! true: it reads `covers` (the highest committed index it has been told of), waits for the
//! notice handlers that accepted a notice before then to queue it ([`Settler::accept`]), sends
//! every queued charge, waits until every batch sent so far is acknowledged, and only then
//! sends the check-in. An edge registers its process this way before it accepts any notice. Loss notices for leases this edge does not hold ride in
//! the same batches (best effort: a loss that never reaches the ledger only keeps its bid's
//! money in doubt until the bid's deadline).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

// Tokio's clock for every decision here (batch age, a check-in's patience): the same as the
// system's in a process, and a simulation's virtual time under a paused runtime.
use tokio::time::Instant;

use shared::log::SpendEvent;
use shared::proto::v1 as pb;
use shared::{BatchId, EdgeId, LeaseId, Money};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::coord::{Answer, Coordinators, backoff, hint};
use crate::metrics::{Metrics, Outcome};

/// Limits of a batch.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Events per batch (the ledger takes at most 1,000).
    pub max_events: usize,
    /// The oldest event waits at most this long before its batch is sent.
    pub max_delay: Duration,
}

/// A bid of ours and its bid price: a loss for a lease this edge does not hold, or a charge
/// whose whole reservation the lease's in-doubt money holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    /// The bid's number under its lease.
    pub bid: u64,
    /// Its bid price.
    pub amount: Money,
}

/// What a lease's release tells the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Release {
    /// What its reservoir holds: never reserved, or given back by notices.
    pub unreserved: i64,
    /// How many bids it made.
    pub bids: u64,
    /// What its bids without a notice hold, by wait (ms, increasing).
    pub in_doubt: Vec<(u64, i64)>,
}

/// Why a charge was not committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failed {
    /// The settler is gone (the process is stopping): the exchange sends the notice again.
    Stopping,
    /// The region refused the batch for good (an unknown lease): sending it again will not
    /// help.
    Refused(String),
}

type Waiter = oneshot::Sender<Result<u64, Failed>>;

/// What the settler is asked to do.
enum Job {
    Spend {
        lease: LeaseId,
        event: SpendEvent,
        /// The bid's price, when the lease's in-doubt money holds it whole.
        held: Option<Money>,
        done: Waiter,
    },
    Loss {
        lease: LeaseId,
        lost: Lost,
    },
    Release {
        lease: LeaseId,
        release: Release,
        done: oneshot::Sender<Option<pb::LeaseClosed>>,
    },
    /// Send every queued charge now; answer with the seal number of the last batch sent.
    Flush {
        done: oneshot::Sender<u64>,
    },
}

/// What the settler, the notice handlers and the check-ins share.
struct Shared {
    /// The highest Raft index this process has been told was committed.
    learned: AtomicU64,
    /// Notice handlers hold it (read) from accepting a notice until its charge is queued; a
    /// check-in takes it (write) once, after reading `learned`, to wait for them.
    gate: tokio::sync::RwLock<()>,
    /// The seal numbers of the batches sent and not yet answered for good.
    outstanding: tokio::sync::watch::Sender<BTreeSet<u64>>,
    /// This process is registered with the region: it may accept notices.
    registered: AtomicBool,
    /// This process's incarnation (raised above the registered one if that is higher).
    incarnation: AtomicU64,
}

/// The handle notices and the lease manager use.
#[derive(Clone)]
pub struct Settler {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// Held by a notice handler from accepting a notice until its charge is queued.
pub struct Accepting<'a> {
    _guard: tokio::sync::RwLockReadGuard<'a, ()>,
}

/// Jobs queued before senders wait (back-pressure on notices, never dropped).
const QUEUE: usize = 65_536;

impl Settler {
    /// Starts the settler's task.
    pub fn start(
        edge: EdgeId,
        coords: Arc<Coordinators>,
        limits: BatchLimits,
        metrics: Arc<Metrics>,
        clock: &shared::clock::Clock,
    ) -> Settler {
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            learned: AtomicU64::new(0),
            gate: tokio::sync::RwLock::new(()),
            outstanding: tokio::sync::watch::Sender::new(BTreeSet::new()),
            registered: AtomicBool::new(false),
            incarnation: AtomicU64::new(first_incarnation(clock)),
        });
        tokio::spawn(run(rx, edge, coords, limits, metrics, shared.clone()));
        Settler { tx, shared }
    }

    /// A notice handler calls this before it looks at a notice, and keeps the guard until the
    /// notice's charge is queued ([`Settler::submit`]). `None`: this process is not registered
    /// with its region yet, and must not accept notices (answer 503: the exchange sends again).
    pub async fn accept(&self) -> Option<Accepting<'_>> {
        if !self.shared.registered.load(Ordering::Acquire) {
            return None;
        }
        Some(Accepting {
            _guard: self.shared.gate.read().await,
        })
    }

    /// True once this process is registered with its region.
    pub fn registered(&self) -> bool {
        self.shared.registered.load(Ordering::Acquire)
    }

    /// Queues one charge; the receiver resolves when its batch is committed, with the Raft
    /// index that applied the batch. `Err`: not committed (the process is stopping, or the
    /// region refused the batch); the notice must not be acknowledged. `held`: the bid's
    /// price, when this edge released the lease counting the bid's whole reservation in doubt
    /// (the first notice it saw for the bid came after the release): the ledger gives the rest
    /// of the price back at once.
    pub async fn submit(
        &self,
        lease: LeaseId,
        event: SpendEvent,
        held: Option<Money>,
    ) -> Result<oneshot::Receiver<Result<u64, Failed>>, Failed> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Spend {
                lease,
                event,
                held,
                done,
            })
            .await
            .map_err(|_| Failed::Stopping)?;
        Ok(wait)
    }

    /// [`Settler::submit`], then waits for the commit.
    pub async fn spend(
        &self,
        lease: LeaseId,
        event: SpendEvent,
        held: Option<Money>,
    ) -> Result<u64, Failed> {
        let wait = self.submit(lease, event, held).await?;
        wait.await.unwrap_or(Err(Failed::Stopping))
    }

    /// One check-in (module docs): `Some(index)` of the committed check-in, `None` when the
    /// region could not be reached (or refused it) within `patience`.
    pub async fn check_in(
        &self,
        edge: &EdgeId,
        coords: &Coordinators,
        patience: Duration,
    ) -> Option<u64> {
        let covers = self.shared.learned.load(Ordering::Acquire);
        // Every handler that accepted a notice before `covers` was read has queued its charge.
        drop(self.shared.gate.write().await);
        let (done, sealed) = oneshot::channel();
        self.tx.send(Job::Flush { done }).await.ok()?;
        let sealed = sealed.await.ok()?;
        let deadline = Instant::now() + patience;
        let mut outstanding = self.shared.outstanding.subscribe();
        let settled = outstanding.wait_for(|o| o.first().is_none_or(|first| *first > sealed));
        tokio::time::timeout_at(deadline, settled)
            .await
            .ok()?
            .ok()?;
        let mut attempt = 0;
        while Instant::now() < deadline {
            let incarnation = self.shared.incarnation.load(Ordering::Acquire);
            let request = pb::CheckInRequest {
                edge: edge.to_string(),
                incarnation,
                covers_index: covers,
            };
            let r = coords
                .call(|mut c| {
                    let request = request.clone();
                    async move {
                        let reply = c.check_in(request).await?.into_inner();
                        Ok(match reply.result {
                            Some(pb::check_in_reply::Result::CheckedIn(c)) => Answer::Done(c),
                            Some(pb::check_in_reply::Result::NotLeader(n)) => {
                                Answer::NotLeader(hint(&n))
                            }
                            None => Answer::NotLeader(None),
                        })
                    }
                })
                .await;
            match r {
                Ok(c) if c.accepted => {
                    self.shared
                        .learned
                        .fetch_max(c.raft_index, Ordering::AcqRel);
                    if !self.shared.registered.swap(true, Ordering::AcqRel) {
                        tracing::info!(%edge, incarnation, index = c.raft_index,
                            "registered with the region: accepting notices");
                    }
                    return Some(c.raft_index);
                }
                Ok(c) => {
                    // An older process of this edge is registered under a higher number (a
                    // clock that went back): start above it. Only before registering, since a
                    // registered process is the highest.
                    tracing::warn!(%edge, ours = incarnation, registered = c.incarnation,
                        "an earlier process of this edge is registered above this one; starting above it");
                    self.shared
                        .incarnation
                        .fetch_max(c.incarnation.saturating_add(1), Ordering::AcqRel);
                }
                Err(e) => {
                    tracing::debug!(%edge, error = %e, "check-in not acknowledged; trying again");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        None
    }

    /// Queues a loss for a lease this edge does not hold; never waits (a full queue drops it:
    /// the bid's money then waits for its deadline, which is safe).
    pub fn lost(&self, lease: LeaseId, lost: Lost) {
        let _ = self.tx.try_send(Job::Loss { lease, lost });
    }

    /// Releases a lease after its batches are committed; the coordinator's answer, or `None`
    /// when it was never obtained. Only what the lease's reservoir holds returns to the region
    /// at once; what its bids without a notice hold waits in doubt, each part for its wait.
    pub async fn release(&self, lease: LeaseId, release: Release) -> Option<pb::LeaseClosed> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Release {
                lease,
                release,
                done,
            })
            .await
            .ok()?;
        wait.await.ok().flatten()
    }
}

struct Pending {
    events: Vec<SpendEvent>,
    losses: Vec<Lost>,
    /// Bid prices of charges in `events` held whole in doubt.
    held: Vec<Lost>,
    waiters: Vec<Waiter>,
    since: Instant,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            events: Vec::new(),
            losses: Vec::new(),
            held: Vec::new(),
            waiters: Vec::new(),
            since: Instant::now(),
        }
    }

    fn len(&self) -> usize {
        self.events.len().max(self.losses.len())
    }
}

/// A new process's incarnation: its start in microseconds of wall time, so that a restart is
/// (almost always) above the process before it. When it is not (a clock set back), the region
/// says so and the process starts above the registered one: nothing here relies on clocks.
fn first_incarnation(clock: &shared::clock::Clock) -> u64 {
    u64::try_from(clock.wall_us()).unwrap_or(1).max(1)
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    edge: EdgeId,
    coords: Arc<Coordinators>,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
) {
    let mut pending: BTreeMap<LeaseId, Pending> = BTreeMap::new();
    let mut in_flight: BTreeMap<LeaseId, Vec<JoinHandle<()>>> = BTreeMap::new();
    let mut seal = 0u64;
    let ctx = Arc::new(Ctx {
        edge,
        coords,
        metrics,
        shared,
        reuse: Default::default(),
    });

    let mut rng = fastrand::Rng::new();
    let mut tick = tokio::time::interval(limits.max_delay.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { break };
                match job {
                    Job::Spend { lease, event, held, done } => {
                        let p = pending.entry(lease).or_insert_with(Pending::new);
                        if let Some(amount) = held {
                            p.held.push(Lost { bid: event.bid, amount });
                        }
                        p.events.push(event);
                        p.waiters.push(done);
                        if p.len() >= limits.max_events
                            && let Some(p) = pending.remove(&lease)
                        {
                            send(&ctx, &mut seal, &mut in_flight, lease, p, &mut rng);
                        }
                    }
                    Job::Loss { lease, lost } => {
                        let p = pending.entry(lease).or_insert_with(Pending::new);
                        p.losses.push(lost);
                        if p.len() >= limits.max_events
                            && let Some(p) = pending.remove(&lease)
                        {
                            send(&ctx, &mut seal, &mut in_flight, lease, p, &mut rng);
                        }
                    }
                    Job::Release { lease, release: rel, done } => {
                        if let Some(p) = pending.remove(&lease) {
                            send(&ctx, &mut seal, &mut in_flight, lease, p, &mut rng);
                        }
                        let handles = in_flight.remove(&lease).unwrap_or_default();
                        let batch = BatchId::random(&mut rng);
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            for h in handles {
                                let _ = h.await;
                            }
                            let _ = done.send(release(&ctx, lease, batch, rel).await);
                        });
                    }
                    Job::Flush { done } => {
                        for (lease, p) in std::mem::take(&mut pending) {
                            send(&ctx, &mut seal, &mut in_flight, lease, p, &mut rng);
                        }
                        let _ = done.send(seal);
                    }
                }
            }
            _ = tick.tick() => {
                let due: Vec<LeaseId> = pending
                    .iter()
                    .filter(|(_, p)| p.since.elapsed() >= limits.max_delay)
                    .map(|(l, _)| *l)
                    .collect();
                for lease in due {
                    if let Some(p) = pending.remove(&lease) {
                        send(&ctx, &mut seal, &mut in_flight, lease, p, &mut rng);
                    }
                }
                for hs in in_flight.values_mut() {
                    hs.retain(|h| !h.is_finished());
                }
                in_flight.retain(|_, hs| !hs.is_empty());
            }
        }
    }
}

/// Sends `p` as a new batch of `lease`, numbered (`seal`) for the check-ins that wait for it,
/// and keeps its handle in `in_flight`.
fn send(
    ctx: &Arc<Ctx>,
    seal: &mut u64,
    in_flight: &mut BTreeMap<LeaseId, Vec<JoinHandle<()>>>,
    lease: LeaseId,
    p: Pending,
    rng: &mut fastrand::Rng,
) {
    *seal += 1;
    let n = *seal;
    ctx.shared.outstanding.send_modify(|o| {
        o.insert(n);
    });
    let handles = in_flight.entry(lease).or_default();
    let mut id = BatchId::random(rng);
    if shared::planted::active("batch-id-reuse") {
        // A new batch takes the id of one of its lease still unanswered.
        if let Some(i) = handles.iter().position(|h| !h.is_finished()) {
            id = ctx.reuse.lock().unwrap_or_else(|p| p.into_inner())[&(lease, i)];
        }
        let i = handles.len();
        ctx.reuse
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((lease, i), id);
    }
    handles.push(send_batch(ctx.clone(), lease, p, id, n));
}

/// What every batch task needs.
struct Ctx {
    edge: EdgeId,
    coords: Arc<Coordinators>,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    /// The ids of a lease's batches by position, for the planted bug `batch-id-reuse` only.
    reuse: std::sync::Mutex<BTreeMap<(LeaseId, usize), BatchId>>,
}

impl Ctx {
    /// Batch `seal` is answered for good (committed, or refused and so never applied).
    fn answered(&self, seal: u64) {
        self.shared.outstanding.send_modify(|o| {
            o.remove(&seal);
        });
    }
}

/// Sends one batch with its id until the leader acknowledges it, then answers its waiters.
fn send_batch(
    ctx: Arc<Ctx>,
    lease: LeaseId,
    p: Pending,
    batch: BatchId,
    seal: u64,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ctx {
            edge,
            coords,
            metrics,
            ..
        } = &*ctx;
        let request = pb::ReportSpendRequest {
            batch_id: batch.0.to_vec(),
            edge: edge.to_string(),
            lease_id: lease.0,
            events: p.events.iter().map(pb::SpendEvent::from).collect(),
            losses: p
                .losses
                .iter()
                .map(|l| pb::LostBid {
                    bid: l.bid,
                    amount_micros: l.amount.micros(),
                })
                .collect(),
            held: p
                .held
                .iter()
                .map(|l| pb::LostBid {
                    bid: l.bid,
                    amount_micros: l.amount.micros(),
                })
                .collect(),
        };
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let r = coords
                .call(|mut c| {
                    let request = request.clone();
                    async move {
                        let reply = c.report_spend(request).await?.into_inner();
                        Ok(match reply.result {
                            Some(pb::report_spend_reply::Result::Settled(s)) => Answer::Done(s),
                            Some(pb::report_spend_reply::Result::NotLeader(n)) => {
                                Answer::NotLeader(hint(&n))
                            }
                            None => Answer::NotLeader(None),
                        })
                    }
                })
                .await;
            match r {
                Ok(settled) => {
                    tracing::debug!(%lease, %batch, events = p.events.len(), settled = settled.settled_events,
                        duplicates = settled.duplicate_events, anomalies = settled.anomalies, "batch committed");
                    if settled.anomalies > 0 || settled.conflicts > 0 || settled.unknown_bids > 0 {
                        tracing::warn!(%lease, %batch, anomalies = settled.anomalies,
                            conflicts = settled.conflicts, unknown_bids = settled.unknown_bids,
                            "the ledger found charges it did not settle as reported (anomalies: recorded, not settled; conflicts: contradict an earlier report of their bid)");
                    }
                    metrics.findings(settled.anomalies, settled.conflicts, settled.unknown_bids);
                    metrics
                        .batch_commit_seconds
                        .observe(started.elapsed().as_secs_f64());
                    metrics
                        .batches
                        .get_or_create(&Outcome {
                            outcome: "committed",
                        })
                        .inc();
                    ctx.shared
                        .learned
                        .fetch_max(settled.raft_index, Ordering::AcqRel);
                    ctx.answered(seal);
                    for w in p.waiters {
                        let _ = w.send(Ok(settled.raft_index));
                    }
                    return;
                }
                Err(crate::coord::CallError::Refused(why)) => {
                    // Definite: nothing was applied, and sending it again would not change
                    // that. Its notices are answered with the refusal (counted and logged: a
                    // signed notice for a lease the region does not know is never normal).
                    metrics
                        .batches
                        .get_or_create(&Outcome { outcome: "refused" })
                        .inc();
                    tracing::error!(%lease, %batch, events = p.events.len(), error = %why,
                        "the region refused a spend batch; its notices are refused");
                    ctx.answered(seal);
                    for w in p.waiters {
                        let _ = w.send(Err(Failed::Refused(why.clone())));
                    }
                    return;
                }
                Err(e) => {
                    // Indefinite: the batch may be committed already; the same id makes the
                    // next send harmless.
                    metrics
                        .batches
                        .get_or_create(&Outcome { outcome: "retried" })
                        .inc();
                    tracing::warn!(%lease, %batch, error = %e, "spend batch not acknowledged; sending it again");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    })
}

/// Releases a lease; tries for a while, then leaves it to the leader's reclaim.
async fn release(
    ctx: &Ctx,
    lease: LeaseId,
    batch: BatchId,
    rel: Release,
) -> Option<pb::LeaseClosed> {
    let Ctx {
        edge,
        coords,
        metrics,
        ..
    } = ctx;
    let request = pb::ReleaseLeaseRequest {
        batch_id: batch.0.to_vec(),
        edge: edge.to_string(),
        lease_id: lease.0,
        unreserved_micros: rel.unreserved,
        bids: rel.bids,
        in_doubt: rel
            .in_doubt
            .iter()
            .map(|(wait_ms, amount)| pb::DoubtPart {
                wait_ms: *wait_ms,
                amount_micros: *amount,
            })
            .collect(),
    };
    for attempt in 0..10 {
        let r = coords
            .call(|mut c| {
                let request = request.clone();
                async move {
                    let reply = c.release_lease(request).await?.into_inner();
                    Ok(match reply.result {
                        Some(pb::release_lease_reply::Result::Closed(c)) => Answer::Done(c),
                        Some(pb::release_lease_reply::Result::NotLeader(n)) => {
                            Answer::NotLeader(hint(&n))
                        }
                        None => Answer::NotLeader(None),
                    })
                }
            })
            .await;
        match r {
            Ok(closed) => {
                metrics
                    .leases
                    .get_or_create(&Outcome {
                        outcome: "released",
                    })
                    .inc();
                return Some(closed);
            }
            Err(crate::coord::CallError::Refused(why)) => {
                tracing::error!(%lease, error = %why, "the region refused the release; the leader will reclaim the lease");
                break;
            }
            Err(e) => {
                tracing::warn!(%lease, error = %e, "release not acknowledged; trying again");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    metrics
        .leases
        .get_or_create(&Outcome {
            outcome: "release_failed",
        })
        .inc();
    tracing::warn!(%lease, "lease not released; the leader will reclaim it");
    None
}

/// Checks in every `every` until `stop` fires: at once at start (the registration that lets
/// this process accept notices), then on the interval. A check-in that cannot finish within
/// ten intervals (the region unreachable) is given up and the next one starts.
pub async fn check_in_loop(
    settler: Settler,
    edge: EdgeId,
    coords: Arc<Coordinators>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let patience = every.saturating_mul(10).max(Duration::from_secs(1));
    let mut failing = false;
    loop {
        tokio::select! {
            r = settler.check_in(&edge, &coords, patience) => {
                match (r, failing) {
                    (None, false) => {
                        failing = true;
                        tracing::warn!(%edge, "cannot check in with the region; in-doubt money there waits for this edge");
                    }
                    (Some(index), true) => {
                        failing = false;
                        tracing::info!(%edge, index, "checked in with the region again");
                    }
                    _ => {}
                }
            }
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
