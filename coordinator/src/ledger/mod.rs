//! The region state machine: campaigns, budgets, rights, leases and the financial log, as a
//! pure function `apply(state, stamp, command) -> (reply, log entries)`.
//!
//! - No I/O, no clock reads, no randomness: time comes from the leader's [`Stamp`]. Maps are
//!   `BTreeMap`s, so nothing depends on hash order.
//! - Every handler checks everything before it changes anything. A refusal ([`Refusal`]) is a
//!   reply, and leaves the state untouched.
//! - Per bucket, `available = rights − settled − burned − leased − in doubt ≥ 0` (rights from the
//!   [`RegionCounter`]). It is checked before every change that lowers it, and asserted after
//!   every apply, in release builds too: a crashed replica is better than replicated corruption.
//! - Every command that moves money appends its entries to the financial log ([`Chain`]).
//! - Commands carry idempotency keys (request keys, or batch ids for spend reports and
//!   releases); a replay returns the first reply and changes nothing. The table of keys is
//!   bounded ([`Params::requests_retained`]); keys of a lease are dropped with it.
//!
//! Persistence: each [`Applied`] carries the [`Changes`] it made; [`rows`] turns them into the
//! key-value rows the store writes in the same batch as the log entries, and rebuilds a ledger
//! from all rows at start-up.
//!
//! Leases (DESIGN §5): granted against the lifetime bucket and the day's bucket at once, for
//! `min(want, policy share, available)` ([`lease::size`]), under the region's [`Params`] of the
//! moment (the lease keeps them as its [`Terms`]). Spend under a lease never exceeds it: an
//! event that would is an `over_lease` anomaly, recorded in the log, not settled. A charge is
//! our bid's: `(lease, bid number)`; a bid is charged once, whatever ids the exchange gave it.
//! A release returns what the edge never reserved and holds the rest in doubt in parts, each
//! until the deadlines of the bids it holds for have passed (ARCHITECTURE.md, "Reservations
//! live until their deadlines"). The leader reclaims leases and expires in-doubt parts by
//! proposing [`Command::ReclaimLeases`] and [`Command::ExpireInDoubt`] when its own monotonic
//! timers say so (`crate::reclaim`); `apply` only carries the decision out.

pub mod command;
pub mod lease;
pub mod marks;
pub mod rows;
#[cfg(test)]
mod tests;
pub mod versions;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use shared::bucket::{Bucket, BucketKey, CampaignZone};
use shared::crdt::{CounterState, RegionCounter};
use shared::log::entry::{
    Anomaly, AnomalyKind, BATCH_EVENTS_MAX, BUCKETS_MAX, BidsLost, BudgetSet, DOUBT_PARTS_MAX,
    DayRetired, DoubtPart, InDoubtReturned, LeaseGranted, LeaseReclaimed, LeaseReleased, ParamsSet,
    Received, RemoteMerged, RestReturned, RightsTransferred, SpendBatch,
};
use shared::log::{Chain, Entry, Hash, Payload, SpendEvent};
use shared::targeting::Pacing;
use shared::{BatchId, CampaignId, EdgeId, LeaseId, Money, RegionId};

pub use command::{
    BidPrice, CampaignConfig, Command, Refusal, RemoteBucket, RemoteCampaign, Reply, RequestKey,
    Stamp,
};
pub use lease::{Lease, LeaseState, Terms};
use marks::{ClosedMarks, Seen};
/// The region's lease and reclaim rules: replicated state, set by [`Command::SetParams`] and
/// recorded in the log (`params_set`), so that every replica applies the same ones.
pub use shared::log::entry::LeaseParams as Params;

/// What the ledger knows of one of our bids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// Charged this amount (settled, or recorded as an anomaly).
    Charged(Money),
    /// The exchange reported it lost; its reservation held this bid price.
    Lost(Money),
}

/// Where a bucket's money is: the parts its rights are split into (DESIGN §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pool {
    /// Not leased, spent, burned or in doubt: free for new leases and transfers.
    Available,
    /// Held by open leases.
    Leased,
    /// Held by closed leases for notices still to come.
    InDoubt,
    /// Spent (this region's settled counter row).
    Settled,
}

/// Moves `amount` from one part of each of `lease`'s buckets to another: the one place money
/// moves between a bucket's parts. A lease's buckets exist for as long as it does (a grant
/// creates or finds them, nothing removes them), so a missing one is a broken invariant: it
/// panics, and the replica stops rather than carry on with a ledger that does not add up.
fn shift(
    buckets: &mut BTreeMap<BucketKey, BucketState>,
    changes: &mut Changes,
    lease: &Lease,
    from: Pool,
    to: Pool,
    amount: Money,
) {
    assert!(
        from != Pool::Settled,
        "ledger invariant broken: spent money moved"
    );
    if amount.micros() == 0 {
        return;
    }
    assert!(
        amount.micros() > 0,
        "ledger invariant broken: a negative amount {amount} moved"
    );
    for b in &lease.buckets {
        let k = BucketKey {
            campaign: lease.campaign.clone(),
            bucket: *b,
        };
        let s = buckets
            .get_mut(&k)
            .unwrap_or_else(|| panic!("ledger invariant broken: a lease names missing bucket {k}"));
        match from {
            Pool::Available | Pool::Settled => {}
            Pool::Leased => s.leased = sub(s.leased, amount),
            Pool::InDoubt => s.in_doubt = sub(s.in_doubt, amount),
        }
        match to {
            Pool::Available => {}
            Pool::Leased => s.leased = add(s.leased, amount),
            Pool::InDoubt => s.in_doubt = add(s.in_doubt, amount),
            // The amount was leased (or is in doubt) from this bucket, so the rights are here.
            Pool::Settled => s.counter.settle(amount).unwrap_or_else(|e| {
                panic!("ledger invariant broken: settling {amount} in {k}: {e}")
            }),
        }
        changes.buckets.insert(k);
    }
}

/// Takes `amount` from in-doubt `parts`, the shortest waits first; parts left empty are
/// removed. Returns what was taken (less than `amount` when the parts hold less).
///
/// Shortest first is what keeps every deadline covered: at any moment, the money still held
/// for waits of at least `t` must cover the bids whose deadlines are at least `t` away. A
/// charge (or a loss) of one bid lowers what those bids need by its bid price and what is held
/// by at most as much; taking it from the shortest waits leaves the longer ones as they were
/// as far as the shorter parts reach, and past that the bid itself was among what they held
/// for (the argument in full: ARCHITECTURE.md).
fn take_from_parts(parts: &mut Vec<DoubtPart>, amount: Money) -> Money {
    let mut left = amount;
    for p in parts.iter_mut() {
        if left.micros() == 0 {
            break;
        }
        let t = p.amount.min(left);
        p.amount = sub(p.amount, t);
        left = sub(left, t);
    }
    parts.retain(|p| p.amount.micros() > 0);
    sub(amount, left)
}

/// Holds `total` in parts shaped like the edge's `reported` ones (waits strictly increasing),
/// the longest waits first, each at most what the edge said it holds; what the edge's parts do
/// not cover waits `max_hold_ms`, the longest any bid of the lease may be billed.
fn allocate_doubt(total: Money, reported: &[DoubtPart], max_hold_ms: u64) -> Vec<DoubtPart> {
    let mut left = total;
    let mut parts: Vec<DoubtPart> = Vec::with_capacity(reported.len() + 1);
    for r in reported.iter().rev() {
        if left.micros() == 0 {
            break;
        }
        let a = r.amount.min(left);
        left = sub(left, a);
        parts.push(DoubtPart {
            wait_ms: r.wait_ms,
            amount: a,
        });
    }
    if left.micros() > 0 {
        match parts.first_mut() {
            Some(p) if p.wait_ms == max_hold_ms => p.amount = add(p.amount, left),
            _ => parts.insert(
                0,
                DoubtPart {
                    wait_ms: max_hold_ms,
                    amount: left,
                },
            ),
        }
    }
    parts.reverse();
    parts
}

/// A campaign and its settings.
#[derive(Clone, Debug)]
pub struct Campaign {
    /// Settings as last saved.
    pub config: CampaignConfig,
    /// The parsed zone of `config.zone`.
    pub zone: CampaignZone,
    /// New leases refused while paused.
    pub paused: bool,
    /// The ledger's campaigns version when this campaign last changed.
    pub version: u64,
    /// The region where the campaign was created: the only one that changes its settings and
    /// creates its rights (DESIGN §7). Other regions hold a copy received through region sync.
    pub home: RegionId,
    /// The home region's version of these settings: a copy is replaced only by a newer one.
    pub home_version: u64,
    /// The latest of its days retired here ([`Command::RetireDays`]): no lease, transfer or
    /// peer's push touches a day at or before it again unless its bucket is still here.
    pub retired_through: Option<jiff::civil::Date>,
}

/// The last log head a peer region showed us (its `MergeRemote`): a witness of its chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Witness {
    /// The peer's next log seq at the time (its entries `0..seq`).
    pub seq: u64,
    /// The hash of its entry `seq − 1`.
    #[serde(with = "shared::log::entry::hex_hash")]
    pub head: Hash,
    /// Our Raft index that recorded it.
    pub at_index: u64,
}

/// One bucket's money in this region.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BucketState {
    /// The budget as set here.
    pub budget: Money,
    /// This region's copy of the bucket's bounded counter.
    pub counter: RegionCounter,
    /// Unspent amounts of open leases.
    pub leased: Money,
    /// Unreported remainders of reclaimed leases, held for late notices.
    pub in_doubt: Money,
}

impl BucketState {
    /// A bucket of `region` that holds nothing.
    pub fn new(region: &RegionId) -> BucketState {
        BucketState {
            budget: Money::ZERO,
            counter: RegionCounter::new(region.clone()),
            leased: Money::ZERO,
            in_doubt: Money::ZERO,
        }
    }

    /// Rights that can be leased, burned or transferred now.
    pub fn available(&self) -> Money {
        let a = i128::from(self.counter.available().micros())
            - i128::from(self.leased.micros())
            - i128::from(self.in_doubt.micros());
        Money::from_micros(i64::try_from(a).unwrap_or(i64::MIN))
    }

    /// This region's settled spend in the bucket.
    pub fn settled(&self) -> Money {
        micros_u64(self.counter.state().settled(self.counter.me()))
    }
}

fn micros_u64(n: u64) -> Money {
    // Counter rows stay ≤ i64::MAX (RegionCounter refuses to go past it).
    Money::from_micros(i64::try_from(n).unwrap_or(i64::MAX))
}

/// What one apply changed, by table: the rows raft-store rewrites (or deletes, for keys no
/// longer in the ledger) in the same `WriteBatch` as the log entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Campaigns saved or paused.
    pub campaigns: BTreeSet<CampaignId>,
    /// Buckets whose money moved.
    pub buckets: BTreeSet<BucketKey>,
    /// Leases granted, changed or forgotten.
    pub leases: BTreeSet<LeaseId>,
    /// Idempotency keys remembered or forgotten.
    pub requests: BTreeSet<RequestKey>,
    /// Event keys newly charged, as `(lease, i)`: the lease's `events[i]`, one row.
    pub charged: Vec<(LeaseId, u32)>,
    /// Leases forgotten with their charged keys, and how many rows of keys each had.
    pub uncharged: Vec<(LeaseId, u32)>,
    /// Velocities updated.
    pub velocity: BTreeSet<(EdgeId, CampaignId)>,
    /// Edges registered, checked in or retired.
    pub edges: BTreeSet<EdgeId>,
    /// The seal points changed.
    pub seal_points: bool,
    /// The region's rules changed.
    pub params: bool,
}

/// The result of applying one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The reply to the client.
    pub reply: Reply,
    /// The financial-log entries the command appended, with their hashes.
    pub entries: Vec<(Entry, Hash)>,
    /// The same entries as stored records (LOG_FORMAT.md §5), in the same order.
    pub records: Vec<Vec<u8>>,
    /// The rows to persist.
    pub changes: Changes,
}

/// A remembered reply to an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remembered {
    /// The first reply.
    pub reply: Reply,
    /// When it was remembered (eviction order).
    pub order: u64,
    /// The lease the request concerned, if any (its key is forgotten with the lease).
    pub lease: Option<LeaseId>,
}

/// The state of one region.
#[derive(Clone, Debug)]
pub struct Ledger {
    region: RegionId,
    params: Params,
    params_recorded: bool,
    chain: Chain,
    campaigns: BTreeMap<CampaignId, Campaign>,
    /// Grows with every change to any campaign's settings or state; edges poll by it.
    campaigns_version: u64,
    buckets: BTreeMap<BucketKey, BucketState>,
    leases: BTreeMap<LeaseId, Lease>,
    next_lease: u64,
    /// What is known of every bid charged, recorded as an anomaly, or reported lost, by
    /// `(lease, bid number)`: the dedup table. Bid numbers are ours (the edge numbers its bids),
    /// so no exchange can choose keys that collide in the hash. Nothing iterates it, so its
    /// order reaches no row, entry or reply.
    charged: FxHashMap<(LeaseId, u64), Mark>,
    /// Exchange ids charged, for the planted bug `dedup-by-exchange-ids` only (test builds with
    /// it active); always empty otherwise.
    planted_keys: std::collections::HashSet<String>,
    /// Replies by idempotency key, with the order they were remembered in.
    requests: BTreeMap<RequestKey, Remembered>,
    /// `(order, key)` oldest first. May hold stale entries (keys forgotten with their lease, or
    /// remembered again later); eviction skips them, so it depends only on the live keys and
    /// a ledger reloaded from rows (which has no stale entries) evicts exactly the same.
    request_order: VecDeque<(u64, RequestKey)>,
    closed: VecDeque<LeaseId>,
    /// Orders requests and retired leases (persisted, so that eviction order survives restarts).
    order_seq: u64,
    changes: Changes,
    /// What each edge spent under its last closed lease of each campaign: its velocity.
    last_spent: BTreeMap<(EdgeId, CampaignId), Money>,
    /// The last log head each peer region showed us.
    witnessed: BTreeMap<RegionId, Witness>,
    /// Every edge that registered, with its last check-in: what in-doubt money waits for.
    edges: BTreeMap<EdgeId, EdgeCheck>,
    /// Where sealed segments end besides every `segment_entries` records: the log's next seq
    /// at each `SealSegment`, the most recent [`SEAL_POINTS_KEPT`].
    seal_points: BTreeSet<u64>,
    /// The Raft index of the last command applied (or the index the rows were loaded at).
    version: u64,
    /// The first index whose changes the versions below know: changes at lower indexes came
    /// with the rows this ledger was loaded from.
    tracked_from: u64,
    /// When each bucket last changed (in memory only).
    bucket_versions: versions::Versions<BucketKey>,
    /// When each campaign last changed (in memory only).
    campaign_versions: versions::Versions<CampaignId>,
}

/// What changed in a ledger since a version ([`Ledger::changed_since`]).
#[derive(Debug)]
pub struct Changed<'a> {
    /// The ledger's version now: what a reader asks from next time.
    pub version: u64,
    /// Buckets changed since (all of them if the reader's version was older than the rows
    /// this ledger was loaded from).
    pub buckets: Vec<(&'a BucketKey, &'a BucketState)>,
    /// Campaigns changed since (all of them, likewise).
    pub campaigns: Vec<(&'a CampaignId, &'a Campaign)>,
    /// Whether this is everything.
    pub everything: bool,
}

/// Seal points kept: at one per ten minutes, ten weeks of them (a node that seals after a
/// longer absence cuts its segments by count alone, which still verify).
pub const SEAL_POINTS_KEPT: usize = 10_000;

/// In-doubt parts whose waits are over and that wait for edges' check-ins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    /// How many parts.
    pub parts: u64,
    /// Their money.
    pub money: Money,
    /// The lowest index one was found due at.
    pub lowest_due: Option<u64>,
}

/// An edge's registration and its last check-in ([`Command::CheckIn`]).
///
/// Why in-doubt money waits for it: a reservation's deadline passing on the leader's clock
/// proves the exchange sent its notices in time, not that they were settled. An edge cut off
/// from the region holds the notices it accepted, unsettled, for as long as the cut lasts;
/// returning their money at the deadline and leasing it again would spend it twice. So a part
/// found due at index `i` returns only once every registered edge has checked in covering an
/// index `≥ i`: it learnt of a commit at or after `i` (so after the deadline, in real time),
/// and every notice it had accepted before learning it is settled. No clock is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeCheck {
    /// The registered process of the edge (a restarted edge is a new one: what the old one
    /// held died with it unanswered, so the exchange sent it again).
    pub incarnation: u64,
    /// The highest index it has checked in covering.
    pub covers: u64,
}

fn invalid(field: &str, problem: impl Into<String>) -> Refusal {
    Refusal::Invalid {
        field: field.to_string(),
        problem: problem.into(),
    }
}

fn positive(field: &str, m: Money) -> Result<(), Refusal> {
    if m.micros() <= 0 {
        return Err(invalid(field, format!("must be positive, got {m}")));
    }
    Ok(())
}

/// Arithmetic that the invariants guarantee cannot overflow: every part of a bucket is at most
/// its rights, which are at most `i64::MAX`.
fn add(a: Money, b: Money) -> Money {
    a.checked_add(b)
        .unwrap_or_else(|_| panic!("ledger invariant broken: {a} + {b} overflows"))
}

/// A closed lease's compacted mark of `bid`, in the terms the report's rules read: a charged
/// bid reads as charged at `amount` (so a repeat is a duplicate), a lost one as lost.
fn compacted(lease: &Lease, bid: u64, amount: Money) -> Option<Mark> {
    match lease.marks.as_ref()?.get(bid)? {
        Seen::Charged => Some(Mark::Charged(amount)),
        Seen::Lost => Some(Mark::Lost(Money::ZERO)),
    }
}

fn sub(a: Money, b: Money) -> Money {
    a.checked_sub(b)
        .unwrap_or_else(|_| panic!("ledger invariant broken: {a} - {b} overflows"))
}

impl Ledger {
    /// An empty ledger of `region`.
    pub fn new(region: RegionId, params: Params) -> Ledger {
        Ledger {
            region,
            params,
            params_recorded: false,
            chain: Chain::new(),
            campaigns: BTreeMap::new(),
            campaigns_version: 0,
            buckets: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_lease: 1,
            charged: FxHashMap::default(),
            planted_keys: std::collections::HashSet::new(),
            requests: BTreeMap::new(),
            request_order: VecDeque::new(),
            closed: VecDeque::new(),
            order_seq: 0,
            changes: Changes::default(),
            last_spent: BTreeMap::new(),
            witnessed: BTreeMap::new(),
            edges: BTreeMap::new(),
            seal_points: BTreeSet::new(),
            version: 0,
            tracked_from: 1,
            bucket_versions: versions::Versions::default(),
            campaign_versions: versions::Versions::default(),
        }
    }

    /// The rows this ledger was loaded from are the state at Raft index `index`: versions
    /// count from there (a reader that saw an older version gets everything).
    pub fn loaded_at(&mut self, index: u64) {
        self.version = index;
        self.tracked_from = index.saturating_add(1);
    }

    /// The buckets and campaigns changed since Raft index `seen` (the version a reader got
    /// last time, from this replica or another: versions are Raft indexes); everything if it
    /// saw none, or one older than the rows this ledger was loaded from. Costs what changed.
    pub fn changed_since(&self, seen: Option<u64>) -> Changed<'_> {
        match seen {
            Some(v) if v.saturating_add(1) >= self.tracked_from => Changed {
                version: self.version,
                buckets: self
                    .bucket_versions
                    .since(v)
                    .filter_map(|k| self.buckets.get_key_value(k))
                    .collect(),
                campaigns: self
                    .campaign_versions
                    .since(v)
                    .filter_map(|k| self.campaigns.get_key_value(k))
                    .collect(),
                everything: false,
            },
            _ => Changed {
                version: self.version,
                buckets: self.buckets.iter().collect(),
                campaigns: self.campaigns.iter().collect(),
                everything: true,
            },
        }
    }

    /// The region.
    pub fn region(&self) -> &RegionId {
        &self.region
    }

    /// The rules it applies.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The region's rules have been recorded in its log (`SetParams`); until then it runs by
    /// the defaults it was built with.
    pub fn params_recorded(&self) -> bool {
        self.params_recorded
    }

    /// The financial log's chain position (next seq, head hash).
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// A campaign.
    pub fn campaign(&self, id: &CampaignId) -> Option<&Campaign> {
        self.campaigns.get(id)
    }

    /// Every campaign.
    pub fn campaigns(&self) -> impl Iterator<Item = (&CampaignId, &Campaign)> {
        self.campaigns.iter()
    }

    /// The version of all campaign settings: it grows with every change to any of them.
    pub fn campaigns_version(&self) -> u64 {
        self.campaigns_version
    }

    /// The last log head each peer region showed us.
    pub fn witnessed(&self) -> &BTreeMap<RegionId, Witness> {
        &self.witnessed
    }

    /// A bucket's money.
    pub fn bucket(&self, key: &BucketKey) -> Option<&BucketState> {
        self.buckets.get(key)
    }

    /// The newest day bucket of `campaign` (buckets order by campaign, then the lifetime
    /// bucket, then days in date order).
    pub fn newest_day(&self, campaign: &CampaignId) -> Option<(&BucketKey, &BucketState)> {
        let from = BucketKey {
            campaign: campaign.clone(),
            bucket: Bucket::Lifetime,
        };
        self.buckets
            .range(from..)
            .take_while(|(k, _)| k.campaign == *campaign)
            .filter(|(k, _)| matches!(k.bucket, Bucket::Day(_)))
            .last()
    }

    /// Every bucket.
    pub fn buckets(&self) -> impl Iterator<Item = (&BucketKey, &BucketState)> {
        self.buckets.iter()
    }

    /// A lease (open, in doubt, or closed and still remembered).
    pub fn lease(&self, id: LeaseId) -> Option<&Lease> {
        self.leases.get(&id)
    }

    /// Every remembered lease.
    pub fn leases(&self) -> impl Iterator<Item = (&LeaseId, &Lease)> {
        self.leases.iter()
    }

    /// Every registered edge with its last check-in.
    pub fn edges(&self) -> &BTreeMap<EdgeId, EdgeCheck> {
        &self.edges
    }

    /// How many bids' marks (charged, lost, or recorded as an anomaly) the ledger holds exactly:
    /// those of leases not yet closed (a closed lease's are compacted, [`Ledger::closed_marks`]).
    pub fn bid_marks(&self) -> usize {
        self.charged.len()
    }

    /// Closed leases' compacted marks: how many bids, and about how many bytes.
    pub fn closed_marks(&self) -> (usize, usize) {
        self.leases
            .values()
            .filter_map(|l| l.marks.as_ref())
            .fold((0, 0), |(n, b), m| (n + m.len(), b + m.bytes()))
    }

    /// Where segments end besides every `segment_entries` records ([`Command::SealSegment`]).
    pub fn seal_points(&self) -> &BTreeSet<u64> {
        &self.seal_points
    }

    /// The index every registered edge has checked in covering: an in-doubt part marked due
    /// at or below it returns on the next `ExpireInDoubt` that names it.
    pub fn edges_covered(&self) -> u64 {
        self.edges_cover()
    }

    /// The in-doubt parts found due and still waiting for edges to check in: how many, their
    /// money, and the lowest index one was found due at (for `budgetctl edges` and metrics).
    pub fn waiting_for_check_ins(&self) -> Waiting {
        let mut w = Waiting::default();
        for lease in self.leases.values().filter(|l| !l.due.is_empty()) {
            let LeaseState::InDoubt { parts } = &lease.state else {
                continue;
            };
            for (wait_ms, at) in &lease.due {
                if let Some(p) = parts.iter().find(|p| p.wait_ms == *wait_ms) {
                    w.parts += 1;
                    w.money = w.money.checked_add(p.amount).unwrap_or(Money::MAX);
                    w.lowest_due = Some(w.lowest_due.map_or(*at, |l: u64| l.min(*at)));
                }
            }
        }
        w
    }

    /// Applies one command. Deterministic: the same state, stamp and command give the same
    /// reply, entries and next state on every replica.
    pub fn apply(&mut self, stamp: Stamp, cmd: &Command) -> Applied {
        let key = request_key(cmd);
        let forgets_grants = matches!(cmd, Command::GrantLease { .. })
            && shared::planted::active("grant-retry-applied-twice");
        if let Some(Remembered { reply, .. }) = key
            .filter(|_| !forgets_grants)
            .and_then(|k| self.requests.get(&k))
        {
            return Applied {
                reply: reply.clone(),
                entries: Vec::new(),
                records: Vec::new(),
                changes: Changes::default(),
            };
        }
        let mut out: Vec<Payload> = Vec::new();
        self.changes = Changes::default();
        let result = match cmd {
            Command::UpsertCampaign {
                campaign, config, ..
            } => self.upsert_campaign(campaign, config),
            Command::SetBudget {
                campaign,
                bucket,
                budget,
                ..
            } => self.set_budget(stamp, campaign, *bucket, *budget, &mut out),
            Command::Pause { campaign, .. } => self.set_paused(campaign, true),
            Command::Resume { campaign, .. } => self.set_paused(campaign, false),
            Command::GrantLease {
                edge,
                campaign,
                want,
                ..
            } => self.grant(stamp, edge, campaign, *want, &mut out),
            Command::ReportSpend {
                batch,
                edge,
                lease,
                events,
                losses,
                held,
            } => self.report(*batch, edge, *lease, events, losses, held, &mut out),
            Command::ReleaseLease {
                batch,
                edge,
                lease,
                unreserved,
                bids,
                in_doubt,
            } => self.release(*batch, edge, *lease, *unreserved, *bids, in_doubt, &mut out),
            Command::ReclaimLeases { leases } => Ok(self.reclaim(leases, &mut out)),
            Command::ExpireInDoubt { parts } => Ok(self.expire(stamp, parts, &mut out)),
            Command::SealSegment => Ok(self.seal_point()),
            Command::RetireDays { days } => Ok(self.retire_days(stamp, days, &mut out)),
            Command::CheckIn {
                edge,
                incarnation,
                covers,
            } => Ok(self.check_in(edge, *incarnation, *covers)),
            Command::RetireEdge { edge, .. } => self.retire_edge(edge),
            Command::SetParams { params, .. } => self.set_params(params, &mut out),
            Command::TransferRights {
                campaign,
                bucket,
                to,
                amount,
                ..
            } => self.transfer(stamp, campaign, *bucket, to, *amount, &mut out),
            Command::MergeRemote {
                from,
                buckets,
                campaigns,
                remote_seq,
                remote_head,
            } => self.merge(
                from,
                buckets,
                campaigns,
                Witness {
                    seq: *remote_seq,
                    head: *remote_head,
                    at_index: stamp.index,
                },
                &mut out,
            ),
        };
        let reply = result.unwrap_or_else(Reply::Refused);
        if matches!(reply, Reply::Refused(_)) {
            assert!(out.is_empty(), "a refused command produced log entries");
        }
        let mut entries = Vec::with_capacity(out.len());
        let mut records = Vec::with_capacity(out.len());
        for p in out {
            let kind = p.kind();
            // Handlers only build payloads within the encoder's limits (non-empty batches of at
            // most BATCH_EVENTS_MAX events, at most BUCKETS_MAX buckets, no negative amounts), so
            // encoding cannot fail.
            let (entry, hash, record) = self
                .chain
                .append_record(stamp.term, stamp.index, stamp.time_us, p)
                .unwrap_or_else(|e| {
                    panic!("ledger built an unencodable {} entry: {e}", kind.name())
                });
            entries.push((entry, hash));
            records.push(record);
        }
        for key in &self.changes.buckets {
            if let Some(b) = self.buckets.get(key) {
                assert!(
                    !b.available().is_negative(),
                    "ledger invariant broken: {key} has available {}",
                    b.available()
                );
            }
        }
        self.version = stamp.index;
        for k in &self.changes.buckets {
            if self.buckets.contains_key(k) {
                self.bucket_versions.touch(k, stamp.index);
            } else {
                self.bucket_versions.forget(k);
            }
        }
        for c in &self.changes.campaigns {
            if self.campaigns.contains_key(c) {
                self.campaign_versions.touch(c, stamp.index);
            } else {
                self.campaign_versions.forget(c);
            }
        }
        if let Some(k) = key {
            let lease = match (cmd, &reply) {
                (_, Reply::LeaseGranted { lease, .. }) => Some(*lease),
                (Command::ReportSpend { lease, .. } | Command::ReleaseLease { lease, .. }, _) => {
                    self.leases.contains_key(lease).then_some(*lease)
                }
                _ => None,
            };
            // The one place a request is tied to its lease: the key is forgotten with it.
            if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
                l.requests.push(k);
            }
            self.remember(k, &reply, lease);
        }
        Applied {
            reply,
            entries,
            records,
            changes: std::mem::take(&mut self.changes),
        }
    }

    fn remember(&mut self, key: RequestKey, reply: &Reply, lease: Option<LeaseId>) {
        self.order_seq += 1;
        self.requests.insert(
            key,
            Remembered {
                reply: reply.clone(),
                order: self.order_seq,
                lease,
            },
        );
        self.request_order.push_back((self.order_seq, key));
        self.changes.requests.insert(key);
        let retained = usize::try_from(self.params.requests_retained).unwrap_or(usize::MAX);
        while self.requests.len() > retained {
            let Some((order, old)) = self.request_order.pop_front() else {
                break;
            };
            if self.requests.get(&old).is_some_and(|r| r.order == order) {
                self.requests.remove(&old);
                self.changes.requests.insert(old);
            }
        }
        // Drop stale entries once they outnumber the live ones.
        if self.request_order.len() > 2 * self.requests.len() + 64 {
            let live = &self.requests;
            self.request_order
                .retain(|(order, k)| live.get(k).is_some_and(|r| r.order == *order));
        }
    }

    fn campaign_or_refuse(&self, id: &CampaignId) -> Result<&Campaign, Refusal> {
        self.campaigns
            .get(id)
            .ok_or_else(|| Refusal::UnknownCampaign {
                campaign: id.clone(),
            })
    }

    /// The campaign, if this region is its home: settings and budgets change only there.
    fn home_campaign_or_refuse(&self, id: &CampaignId) -> Result<&Campaign, Refusal> {
        let c = self.campaign_or_refuse(id)?;
        if c.home != self.region {
            return Err(Refusal::NotHome {
                campaign: id.clone(),
                home: c.home.clone(),
            });
        }
        Ok(c)
    }

    fn upsert_campaign(
        &mut self,
        id: &CampaignId,
        config: &CampaignConfig,
    ) -> Result<Reply, Refusal> {
        if self.campaigns.contains_key(id) {
            self.home_campaign_or_refuse(id)?;
        }
        let zone = CampaignZone::new(&config.zone).map_err(|e| invalid("zone", e.to_string()))?;
        positive("bid_cpm", config.bid_cpm)?;
        if let Some(d) = config.daily_budget
            && d.is_negative()
        {
            return Err(invalid("daily_budget", format!("negative: {d}")));
        }
        config
            .targeting
            .validate(config.bid_cpm)
            .map_err(|(field, problem)| invalid(field, problem))?;
        if config.targeting.pacing == Pacing::Even && config.daily_budget.is_none() {
            return Err(invalid("pacing", "even pacing needs a daily budget"));
        }
        let created = !self.campaigns.contains_key(id);
        let paused = self.campaigns.get(id).is_some_and(|c| c.paused);
        self.changes.campaigns.insert(id.clone());
        self.campaigns_version += 1;
        self.campaigns.insert(
            id.clone(),
            Campaign {
                config: config.clone(),
                zone,
                paused,
                version: self.campaigns_version,
                home: self.region.clone(),
                home_version: self.campaigns_version,
                retired_through: self.campaigns.get(id).and_then(|c| c.retired_through),
            },
        );
        Ok(Reply::CampaignSaved { created })
    }

    fn set_paused(&mut self, id: &CampaignId, paused: bool) -> Result<Reply, Refusal> {
        self.home_campaign_or_refuse(id)?;
        if let Some(c) = self.campaigns.get_mut(id) {
            self.campaigns_version += 1;
            c.version = self.campaigns_version;
            c.home_version = self.campaigns_version;
            c.paused = paused;
            self.changes.campaigns.insert(id.clone());
        }
        Ok(Reply::CampaignState { paused })
    }

    fn set_budget(
        &mut self,
        stamp: Stamp,
        campaign: &CampaignId,
        bucket: Bucket,
        budget: Money,
        out: &mut Vec<Payload>,
    ) -> Result<Reply, Refusal> {
        let c = self.home_campaign_or_refuse(campaign)?;
        if budget.is_negative() {
            return Err(invalid("budget", format!("negative: {budget}")));
        }
        // A day that is over (by the time the leader stamped) can be spent no more.
        if let Bucket::Day(day) = bucket
            && let Ok(today) = c.zone.day_of_unix_micros(stamp.time_us)
            && day < today
        {
            return Err(invalid(
                "day",
                format!(
                    "{day} is over in {} (today is {today} there): a past day's budget does \
                     not change",
                    c.zone.name()
                ),
            ));
        }
        let key = BucketKey {
            campaign: campaign.clone(),
            bucket,
        };
        let mut state = self
            .buckets
            .get(&key)
            .cloned()
            .unwrap_or_else(|| BucketState::new(&self.region));
        let before = state.budget;
        let delta = budget
            .checked_sub(before)
            .map_err(|_| invalid("budget", "change overflows"))?;
        if delta.micros() > 0 {
            state
                .counter
                .create(delta)
                .map_err(|e| invalid("budget", e.to_string()))?;
        } else if delta.micros() < 0 {
            let burn = Money::from_micros(-delta.micros());
            if state.available() < burn {
                // What holds the rest: spend settled in every region, leases and in-doubt
                // money here, and rights other regions hold.
                let settled = Money::from_micros(
                    i64::try_from(state.counter.state().total_settled()).unwrap_or(i64::MAX),
                );
                let in_flight = state
                    .leased
                    .checked_add(state.in_doubt)
                    .unwrap_or(Money::MAX);
                let smallest = before.checked_sub(state.available()).unwrap_or(Money::ZERO);
                let elsewhere = smallest
                    .checked_sub(settled)
                    .and_then(|m| m.checked_sub(in_flight))
                    .unwrap_or(Money::ZERO)
                    .max(Money::ZERO);
                return Err(Refusal::BudgetBelowCommitted {
                    bucket: key,
                    wanted: budget,
                    smallest,
                    settled,
                    in_flight,
                    elsewhere,
                });
            }
            state
                .counter
                .burn(burn)
                .map_err(|e| invalid("budget", e.to_string()))?;
        } else {
            return Ok(Reply::BudgetSet { budget });
        }
        state.budget = budget;
        out.push(Payload::BudgetSet(BudgetSet {
            campaign: campaign.clone(),
            bucket,
            before,
            after: budget,
        }));
        self.changes.buckets.insert(key.clone());
        self.buckets.insert(key, state);
        Ok(Reply::BudgetSet { budget })
    }

    fn grant(
        &mut self,
        stamp: Stamp,
        edge: &EdgeId,
        campaign: &CampaignId,
        want: Money,
        out: &mut Vec<Payload>,
    ) -> Result<Reply, Refusal> {
        positive("want", want)?;
        // Every replica grants by the rules in the log, never by its own defaults.
        if !self.params_recorded {
            return Err(Refusal::RulesNotRecorded);
        }
        let c = self.campaign_or_refuse(campaign)?;
        if c.paused {
            return Err(Refusal::Paused {
                campaign: campaign.clone(),
            });
        }
        let day = c
            .zone
            .day_of_unix_micros(stamp.time_us)
            .map_err(|e| invalid("time", e.to_string()))?;
        // A day retired here is never spent again (a leader whose clock is behind the one that
        // retired it would otherwise open its bucket anew, with a fresh daily budget).
        if c.retired_through.is_some_and(|r| day <= r)
            && !self.buckets.contains_key(&BucketKey {
                campaign: campaign.clone(),
                bucket: Bucket::Day(day),
            })
        {
            return Err(invalid(
                "time",
                format!("{day} is over and retired here: no lease spends from it"),
            ));
        }
        // Only the home region creates a day's rights; elsewhere they arrive by transfer.
        let daily_default = c.config.daily_budget;
        let home = c.home == self.region;
        // One impression at the campaign's bid. A smaller lease cannot fund a single bid: it
        // would only hold money away from the edges until released or reclaimed, and near the
        // end of a budget the share rule split the rest into such crumbs, so that the last
        // bids were never made (found by `jepsen run`: I6, seed 2).
        let unit = c.config.bid_cpm.per_impression();
        let lifetime = BucketKey {
            campaign: campaign.clone(),
            bucket: Bucket::Lifetime,
        };
        let day_key = BucketKey {
            campaign: campaign.clone(),
            bucket: Bucket::Day(day),
        };
        let mut available = self
            .buckets
            .get(&lifetime)
            .map_or(Money::ZERO, BucketState::available);
        // The day's bucket applies if it exists, or if the campaign has a daily budget (then it
        // is created now, with that budget).
        let new_day = if self.buckets.contains_key(&day_key) || !home {
            None
        } else {
            daily_default
        };
        let day_applies = self.buckets.contains_key(&day_key) || daily_default.is_some();
        if let Some(b) = self.buckets.get(&day_key) {
            available = available.min(b.available());
        } else if let Some(d) = new_day {
            available = available.min(d);
        } else if day_applies {
            // A day with a budget whose rights have not reached this region yet.
            available = Money::ZERO;
        }
        let velocity = self
            .last_spent
            .get(&(edge.clone(), campaign.clone()))
            .copied();
        let amount = if available < unit {
            Money::ZERO
        } else {
            lease::size(want, available, velocity, &self.params).max(unit)
        };
        if amount.micros() <= 0 {
            return Err(Refusal::NoRights {
                campaign: campaign.clone(),
            });
        }
        // Act.
        if let Some(d) = new_day {
            self.open_day(campaign, day, d, out);
        }
        let mut buckets = vec![Bucket::Lifetime];
        if day_applies {
            buckets.push(Bucket::Day(day));
        }
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        self.changes.leases.insert(id);
        let terms = Terms::of(&self.params);
        let lease = Lease {
            edge: edge.clone(),
            campaign: campaign.clone(),
            buckets: buckets.clone(),
            amount,
            spent: Money::ZERO,
            lost: Money::ZERO,
            state: LeaseState::Open,
            terms,
            granted_at_index: stamp.index,
            bids: None,
            events: Vec::new(),
            requests: Vec::new(),
            retired: None,
            marks: None,
            due: BTreeMap::new(),
        };
        // Every bucket of the lease was found or opened above (a missing one panics in shift).
        shift(
            &mut self.buckets,
            &mut self.changes,
            &lease,
            Pool::Available,
            Pool::Leased,
            amount,
        );
        self.leases.insert(id, lease);
        out.push(Payload::LeaseGranted(LeaseGranted {
            lease: id,
            edge: edge.clone(),
            campaign: campaign.clone(),
            buckets: buckets.clone(),
            amount,
            duration_ms: terms.duration_ms,
        }));
        Ok(Reply::LeaseGranted {
            lease: id,
            amount,
            buckets,
            terms,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &mut self,
        batch: BatchId,
        edge: &EdgeId,
        lease_id: LeaseId,
        events: &[SpendEvent],
        losses: &[BidPrice],
        held: &[BidPrice],
        out: &mut Vec<Payload>,
    ) -> Result<Reply, Refusal> {
        if events.is_empty() && losses.is_empty() {
            return Err(invalid(
                "events",
                "a spend report holds at least one event or loss",
            ));
        }
        if events.len() > BATCH_EVENTS_MAX
            || losses.len() > BATCH_EVENTS_MAX
            || held.len() > BATCH_EVENTS_MAX
        {
            return Err(invalid(
                "events",
                format!(
                    "{} events, {} losses and {} held bid prices, at most \
                     {BATCH_EVENTS_MAX} of each per report",
                    events.len(),
                    losses.len(),
                    held.len()
                ),
            ));
        }
        if let Some(e) = events.iter().find(|e| e.amount.is_negative()) {
            return Err(invalid(
                "events",
                format!("{}: negative amount {}", e.key, e.amount),
            ));
        }
        if events.iter().any(|e| e.bid == 0) || losses.iter().any(|l| l.bid == 0) {
            return Err(invalid("events", "bid numbers start at 1"));
        }
        if let Some(l) = losses.iter().find(|l| l.amount.is_negative()) {
            return Err(invalid(
                "losses",
                format!("bid {}: negative amount {}", l.bid, l.amount),
            ));
        }
        if let Some(h) = held.iter().find(|h| h.amount.is_negative() || h.bid == 0) {
            return Err(invalid(
                "held",
                format!("bid {}: bid price {}", h.bid, h.amount),
            ));
        }
        let Some(lease) = self.leases.get(&lease_id) else {
            if lease_id.0 == 0 || lease_id.0 >= self.next_lease {
                return Err(Refusal::UnknownLease { lease: lease_id });
            }
            // A lease closed so long ago that it is forgotten: the charges were billed, so they
            // are recorded as late. Losses of it change nothing.
            let mut seen = BTreeSet::new();
            for e in events.iter().filter(|e| seen.insert(e.bid)) {
                out.push(Payload::Anomaly(Anomaly {
                    rule: AnomalyKind::LateSpend,
                    lease: lease_id,
                    event: e.clone(),
                }));
            }
            let n = u32::try_from(out.len()).unwrap_or(u32::MAX);
            return Ok(Reply::SpendSettled {
                settled: 0,
                duplicates: 0,
                anomalies: n,
                log_seq: None,
                conflicts: 0,
                lost: 0,
                unknown_bids: 0,
            });
        };
        // Plan: what each event and loss does, against the lease as it is.
        let open = lease.state == LeaseState::Open;
        let closed = lease.state == LeaseState::Closed;
        // What charges may still take: an open lease's unspent amount less its bids known lost
        // (they return at the release); a closed lease's in-doubt parts.
        let mut headroom = match &lease.state {
            LeaseState::Open => sub(sub(lease.amount, lease.spent), lease.lost),
            s @ LeaseState::InDoubt { .. } => s.in_doubt(),
            LeaseState::Closed => Money::ZERO,
        };
        let mut lost_delta: i128 = 0;
        let mut marks: Vec<(u64, Mark)> = Vec::new();
        let mut known: FxHashMap<u64, Mark> = FxHashMap::default();
        let mut settle: Vec<SpendEvent> = Vec::new();
        let mut anomalies: Vec<(AnomalyKind, SpendEvent)> = Vec::new();
        let (mut duplicates, mut conflicts, mut unknown_bids) = (0u32, 0u32, 0u32);
        for e in events {
            if lease.bids.is_some_and(|n| e.bid > n) {
                unknown_bids += 1;
            }
            let prior = known
                .get(&e.bid)
                .or_else(|| self.charged.get(&(lease_id, e.bid)))
                .copied()
                .or_else(|| compacted(lease, e.bid, e.amount))
                .or_else(|| self.planted_exchange_ids_dup(lease_id, e, &settle));
            let mark = Mark::Charged(e.amount);
            match prior {
                Some(Mark::Charged(a)) if a == e.amount => duplicates += 1,
                Some(Mark::Charged(_)) => {
                    // Another price for a bid already charged: the first stands.
                    conflicts += 1;
                    anomalies.push((AnomalyKind::Conflict, e.clone()));
                }
                Some(Mark::Lost(bid_price)) if open => {
                    // Reported lost, now billed: the exchange's reports disagree; what it bills
                    // is what counts. Its reservation is still in the lease: undo the loss.
                    conflicts += 1;
                    lost_delta -= i128::from(bid_price.micros());
                    headroom = add(headroom, bid_price);
                    if e.amount <= headroom {
                        headroom = sub(headroom, e.amount);
                        settle.push(e.clone());
                    } else {
                        anomalies.push((AnomalyKind::OverLease, e.clone()));
                    }
                    marks.push((e.bid, mark));
                    known.insert(e.bid, mark);
                }
                Some(Mark::Lost(_)) => {
                    // Its money went back when the loss came: nothing holds for it now.
                    conflicts += 1;
                    anomalies.push((AnomalyKind::Conflict, e.clone()));
                    marks.push((e.bid, mark));
                    known.insert(e.bid, mark);
                }
                None => {
                    if closed {
                        anomalies.push((AnomalyKind::LateSpend, e.clone()));
                    } else if e.amount <= headroom {
                        headroom = sub(headroom, e.amount);
                        settle.push(e.clone());
                    } else {
                        anomalies.push((AnomalyKind::OverLease, e.clone()));
                    }
                    marks.push((e.bid, mark));
                    known.insert(e.bid, mark);
                }
            }
        }
        let mut lost_bids = 0u32;
        let mut lost_total = Money::ZERO;
        for l in losses {
            let prior = known
                .get(&l.bid)
                .or_else(|| self.charged.get(&(lease_id, l.bid)))
                .copied()
                .or_else(|| compacted(lease, l.bid, l.amount));
            match prior {
                Some(Mark::Charged(_)) => conflicts += 1,
                Some(Mark::Lost(_)) => duplicates += 1,
                None => {
                    // An open lease holds it until the release; never more than it has left.
                    let held = if open {
                        let a = l.amount.min(headroom);
                        headroom = sub(headroom, a);
                        lost_delta += i128::from(a.micros());
                        a
                    } else {
                        l.amount
                    };
                    let mark = Mark::Lost(held);
                    lost_bids += 1;
                    lost_total = add(lost_total, l.amount);
                    marks.push((l.bid, mark));
                    known.insert(l.bid, mark);
                }
            }
        }
        // The rests of charged bids whose whole prices the in-doubt parts hold (an open lease's
        // rests return with its release; a closed lease holds nothing).
        let (mut rest_bids, mut rest_total) = (0u32, Money::ZERO);
        if !open && !closed && !held.is_empty() {
            let prices: FxHashMap<u64, Money> = held.iter().map(|h| (h.bid, h.amount)).collect();
            for e in &settle {
                if let Some(price) = prices.get(&e.bid)
                    && *price > e.amount
                {
                    rest_bids += 1;
                    rest_total = add(rest_total, sub(*price, e.amount));
                }
            }
        }
        // Act.
        let total = Money::checked_sum(settle.iter().map(|e| e.amount))
            .unwrap_or_else(|_| panic!("events within a lease overflow"));
        if shared::planted::active("dedup-by-exchange-ids") {
            self.planted_keys
                .extend(settle.iter().map(|e| e.key.to_string()));
        }
        let Ledger {
            leases,
            buckets,
            changes,
            charged,
            ..
        } = self;
        let lease = leases
            .get_mut(&lease_id)
            .unwrap_or_else(|| unreachable!("looked up above"));
        let mut returned = Money::ZERO;
        let mut rest_returned = Money::ZERO;
        match &mut lease.state {
            LeaseState::Open => {
                shift(buckets, changes, lease, Pool::Leased, Pool::Settled, total);
                let lost = i128::from(lease.lost.micros()) + lost_delta;
                lease.lost = Money::from_micros(i64::try_from(lost).unwrap_or(i64::MAX));
            }
            LeaseState::InDoubt { parts } => {
                let mut parts = std::mem::take(parts);
                let took = take_from_parts(&mut parts, total);
                assert_eq!(
                    took, total,
                    "ledger invariant broken: settled past the doubt"
                );
                // Lost bids cannot be charged: what they held goes back now.
                returned = take_from_parts(&mut parts, lost_total);
                // Nor can charged ones again: the rest of their prices goes back too.
                rest_returned = take_from_parts(&mut parts, rest_total);
                shift(buckets, changes, lease, Pool::InDoubt, Pool::Settled, total);
                shift(
                    buckets,
                    changes,
                    lease,
                    Pool::InDoubt,
                    Pool::Available,
                    add(returned, rest_returned),
                );
                lease.state = if parts.is_empty() {
                    LeaseState::Closed
                } else {
                    LeaseState::InDoubt { parts }
                };
            }
            LeaseState::Closed => {}
        }
        lease.spent = add(lease.spent, total);
        let marked = !marks.is_empty();
        if let Some(kept) = lease.marks.as_mut() {
            // Closed and compacted: its row carries the marks.
            for (bid, mark) in marks {
                kept.insert(bid, mark);
            }
        } else if marked {
            for (bid, mark) in &marks {
                charged.insert((lease_id, *bid), *mark);
            }
            // At most one list per report, so a lease cannot approach u32::MAX lists.
            let i = u32::try_from(lease.events.len()).unwrap_or(u32::MAX);
            lease.events.push(marks);
            changes.charged.push((lease_id, i));
        }
        changes.leases.insert(lease_id);
        let now_closed = lease.state == LeaseState::Closed && !closed;
        let log_seq = (!settle.is_empty()).then(|| self.chain.next_seq());
        let settled = u32::try_from(settle.len()).unwrap_or(u32::MAX);
        let n_anomalies = u32::try_from(anomalies.len()).unwrap_or(u32::MAX);
        if !settle.is_empty() {
            out.push(Payload::SpendBatch(SpendBatch {
                lease: lease_id,
                batch,
                edge: edge.clone(),
                events: settle,
            }));
        }
        for (rule, event) in anomalies {
            out.push(Payload::Anomaly(Anomaly {
                rule,
                lease: lease_id,
                event,
            }));
        }
        if lost_bids > 0 {
            out.push(Payload::BidsLost(BidsLost {
                lease: lease_id,
                batch,
                count: lost_bids,
                bid_total: lost_total,
                returned: returned.min(lost_total),
            }));
        }
        if rest_returned.micros() > 0 {
            out.push(Payload::RestReturned(RestReturned {
                lease: lease_id,
                batch,
                count: rest_bids,
                returned: rest_returned,
            }));
        }
        if now_closed {
            self.retire(lease_id);
        }
        Ok(Reply::SpendSettled {
            settled,
            duplicates,
            anomalies: n_anomalies,
            log_seq,
            conflicts,
            lost: lost_bids,
            unknown_bids,
        })
    }

    /// The planted bug `dedup-by-exchange-ids` (`shared::planted`, test builds only): a charge
    /// counts as a duplicate of any earlier one with the same exchange ids, as the ledger did
    /// before a charge was our bid's, so two bids of ours on an auction whose ids the exchange
    /// reused settle once.
    fn planted_exchange_ids_dup(
        &self,
        _lease: LeaseId,
        e: &SpendEvent,
        settling: &[SpendEvent],
    ) -> Option<Mark> {
        if !shared::planted::active("dedup-by-exchange-ids") {
            return None;
        }
        let key = e.key.to_string();
        (self.planted_keys.contains(&key) || settling.iter().any(|s| s.key == e.key))
            .then_some(Mark::Charged(e.amount))
    }

    /// The edge is done with a lease. What it never reserved (or was given back) returns now,
    /// with the bids known lost; what it reserved for bids whose notices it has not seen waits
    /// in doubt — notices may still come, to any edge, until each bid's deadline. The edge
    /// says how long: `in_doubt` holds its reservations by wait. The ledger holds the lease's
    /// unspent rest in those parts, the longest waits first, and whatever they do not cover
    /// for the longest hold any bid may have. (A release that returned everything let a late
    /// notice land on a closed lease: billed, not debited, and the budget overspent. The
    /// harness found it: seeds 1 and 2 of the long form.)
    #[allow(clippy::too_many_arguments)]
    fn release(
        &mut self,
        batch: BatchId,
        edge: &EdgeId,
        lease_id: LeaseId,
        unreserved: Money,
        bids: u64,
        reported: &[DoubtPart],
        out: &mut Vec<Payload>,
    ) -> Result<Reply, Refusal> {
        let lease = self
            .leases
            .get(&lease_id)
            .ok_or(Refusal::UnknownLease { lease: lease_id })?;
        if lease.edge != *edge {
            return Err(invalid(
                "edge",
                format!("lease {lease_id} is held by {}, not {edge}", lease.edge),
            ));
        }
        if lease.state != LeaseState::Open {
            return Ok(Reply::LeaseClosed {
                spent: lease.spent,
                returned: Money::ZERO,
            });
        }
        if reported.len() > DOUBT_PARTS_MAX {
            return Err(invalid(
                "in_doubt",
                format!("{} parts, at most {DOUBT_PARTS_MAX}", reported.len()),
            ));
        }
        let max_hold = lease.terms.max_hold_ms();
        for (i, p) in reported.iter().enumerate() {
            if p.amount.micros() <= 0 {
                return Err(invalid("in_doubt", format!("part {i} holds {}", p.amount)));
            }
            if i > 0 && p.wait_ms <= reported[i - 1].wait_ms {
                return Err(invalid("in_doubt", "waits must strictly increase"));
            }
            if p.wait_ms > max_hold {
                return Err(invalid(
                    "in_doubt",
                    format!(
                        "part {i} waits {} ms, longer than any bid of the lease may ({max_hold} ms)",
                        p.wait_ms
                    ),
                ));
            }
        }
        let rest = sub(sub(lease.amount, lease.spent), lease.lost);
        let back = unreserved.max(Money::ZERO).min(rest);
        let doubt = sub(rest, back);
        let parts = if shared::planted::active("release-returns-held") {
            // The planted bug (test builds only): only what exceeds the edge's parts is held,
            // as if the reservations within their deadlines were free.
            let covered = Money::checked_sum(reported.iter().map(|p| p.amount)).unwrap_or(doubt);
            allocate_doubt(sub(doubt, covered.min(doubt)), &[], max_hold)
        } else {
            allocate_doubt(doubt, reported, max_hold)
        };
        let held = Money::checked_sum(parts.iter().map(|p| p.amount)).unwrap_or(doubt);
        let returned = add(lease.lost, sub(rest, held));
        let Ledger {
            leases,
            buckets,
            changes,
            last_spent,
            ..
        } = self;
        let lease = leases
            .get_mut(&lease_id)
            .unwrap_or_else(|| unreachable!("looked up above"));
        shift(
            buckets,
            changes,
            lease,
            Pool::Leased,
            Pool::Available,
            returned,
        );
        shift(buckets, changes, lease, Pool::Leased, Pool::InDoubt, held);
        lease.state = if parts.is_empty() {
            LeaseState::Closed
        } else {
            LeaseState::InDoubt {
                parts: parts.clone(),
            }
        };
        lease.bids = Some(bids);
        // The lost bids' money went back with `returned`.
        lease.lost = Money::ZERO;
        changes.leases.insert(lease_id);
        let spent = lease.spent;
        let who = (lease.edge.clone(), lease.campaign.clone());
        last_spent.insert(who.clone(), spent);
        changes.velocity.insert(who);
        let closed = parts.is_empty();
        out.push(Payload::LeaseReleased(LeaseReleased {
            lease: lease_id,
            batch,
            spent,
            returned,
            bids,
            in_doubt: parts,
        }));
        if closed {
            self.retire(lease_id);
        }
        Ok(Reply::LeaseClosed { spent, returned })
    }

    fn reclaim(&mut self, ids: &[LeaseId], out: &mut Vec<Payload>) -> Reply {
        let mut count = 0u32;
        for id in dedup_ids(ids) {
            let Ledger {
                leases,
                buckets,
                changes,
                last_spent,
                ..
            } = self;
            let Some(lease) = leases.get_mut(&id) else {
                continue;
            };
            if lease.state != LeaseState::Open {
                continue;
            }
            // Bids known lost return now; every other bid may still be billed until the
            // longest hold any of them may have.
            let returned = lease.lost;
            let rest = sub(sub(lease.amount, lease.spent), lease.lost);
            let wait_ms = lease.terms.max_hold_ms();
            shift(
                buckets,
                changes,
                lease,
                Pool::Leased,
                Pool::Available,
                returned,
            );
            shift(buckets, changes, lease, Pool::Leased, Pool::InDoubt, rest);
            lease.lost = Money::ZERO;
            lease.state = if rest.micros() > 0 {
                LeaseState::InDoubt {
                    parts: vec![DoubtPart {
                        wait_ms,
                        amount: rest,
                    }],
                }
            } else {
                LeaseState::Closed
            };
            changes.leases.insert(id);
            let who = (lease.edge.clone(), lease.campaign.clone());
            last_spent.insert(who.clone(), lease.spent);
            changes.velocity.insert(who);
            out.push(Payload::LeaseReclaimed(LeaseReclaimed {
                lease: id,
                spent: lease.spent,
                returned,
                in_doubt: rest,
                wait_ms,
            }));
            if rest.micros() == 0 {
                self.retire(id);
            }
            count += 1;
        }
        Reply::LeasesClosed { count }
    }

    fn expire(&mut self, stamp: Stamp, due: &[(LeaseId, u64)], out: &mut Vec<Payload>) -> Reply {
        let mut count = 0u32;
        let due: BTreeSet<(LeaseId, u64)> = due.iter().copied().collect();
        let covered = self.edges_cover();
        for (id, wait_ms) in due {
            let Ledger {
                leases,
                buckets,
                changes,
                ..
            } = self;
            let Some(lease) = leases.get_mut(&id) else {
                continue;
            };
            let LeaseState::InDoubt { parts } = &mut lease.state else {
                continue;
            };
            let Some(i) = parts.iter().position(|p| p.wait_ms == wait_ms) else {
                continue;
            };
            // Due from the first entry that found it so; returned once every edge has
            // checked in past that entry.
            let marked = *lease.due.entry(wait_ms).or_insert(stamp.index);
            if marked == stamp.index {
                changes.leases.insert(id);
            }
            let flushed = shared::planted::active("return-before-check-in") || covered >= marked;
            if !flushed {
                continue;
            }
            lease.due.remove(&wait_ms);
            let part = parts.remove(i);
            let now_closed = parts.is_empty();
            if now_closed {
                lease.state = LeaseState::Closed;
            }
            shift(
                buckets,
                changes,
                lease,
                Pool::InDoubt,
                Pool::Available,
                part.amount,
            );
            changes.leases.insert(id);
            out.push(Payload::InDoubtReturned(InDoubtReturned {
                lease: id,
                wait_ms,
                returned: part.amount,
            }));
            if now_closed {
                self.retire(id);
            }
            count += 1;
        }
        Reply::LeasesClosed { count }
    }

    /// The index every registered edge has checked in covering (`u64::MAX` with no edge: no
    /// notice can be held anywhere).
    fn edges_cover(&self) -> u64 {
        self.edges
            .values()
            .map(|e| e.covers)
            .min()
            .unwrap_or(u64::MAX)
    }

    fn check_in(&mut self, edge: &EdgeId, incarnation: u64, covers: u64) -> Reply {
        match self.edges.get_mut(edge) {
            Some(e) if incarnation < e.incarnation => {
                return Reply::CheckedIn {
                    incarnation: e.incarnation,
                    accepted: false,
                };
            }
            Some(e) if incarnation == e.incarnation => {
                if covers > e.covers {
                    e.covers = covers;
                    self.changes.edges.insert(edge.clone());
                }
            }
            _ => {
                self.edges.insert(
                    edge.clone(),
                    EdgeCheck {
                        incarnation,
                        covers,
                    },
                );
                self.changes.edges.insert(edge.clone());
            }
        }
        Reply::CheckedIn {
            incarnation,
            accepted: true,
        }
    }

    fn seal_point(&mut self) -> Reply {
        let at = self.chain.next_seq();
        if at == 0 || self.seal_points.last().is_some_and(|p| *p >= at) {
            return Reply::SealPoint { at: None };
        }
        self.seal_points.insert(at);
        while self.seal_points.len() > SEAL_POINTS_KEPT {
            self.seal_points.pop_first();
        }
        self.changes.seal_points = true;
        Reply::SealPoint { at: Some(at) }
    }

    fn retire_edge(&mut self, edge: &EdgeId) -> Result<Reply, Refusal> {
        if self.edges.remove(edge).is_none() {
            return Err(Refusal::UnknownEdge { edge: edge.clone() });
        }
        self.changes.edges.insert(edge.clone());
        Ok(Reply::EdgeRetired)
    }

    fn set_params(&mut self, params: &Params, out: &mut Vec<Payload>) -> Result<Reply, Refusal> {
        params.validate().map_err(|e| invalid("params", e))?;
        // The first rules are always recorded, so that every log says what its region ran by.
        if *params != self.params || !self.params_recorded {
            self.params = params.clone();
            self.params_recorded = true;
            self.changes.params = true;
            out.push(Payload::ParamsSet(ParamsSet {
                params: params.clone(),
            }));
        }
        Ok(Reply::ParamsSet {
            params: params.clone(),
        })
    }

    /// Whether `key` is a day retired here (and not still held: a day retired out of order
    /// leaves an earlier one live until it is retired too).
    pub fn is_retired(&self, key: &BucketKey) -> bool {
        let Bucket::Day(day) = key.bucket else {
            return false;
        };
        !self.buckets.contains_key(key)
            && self
                .campaigns
                .get(&key.campaign)
                .and_then(|c| c.retired_through)
                .is_some_and(|r| day <= r)
    }

    /// How long after its end a day may be retired: a lease granted at its last instant spends
    /// for a lease duration and settles for the settlement window; late notices come within the
    /// late-acceptance window after that.
    pub fn retire_after_ms(&self) -> u64 {
        let p = &self.params;
        p.lease_duration_ms
            .saturating_add(p.settlement_window_ms)
            .saturating_add(p.margin_ms)
            .saturating_add(p.late_acceptance_ms)
    }

    /// Whether `day` of campaign `c` is over at `time_us` by [`Ledger::retire_after_ms`].
    fn day_done(&self, c: &Campaign, day: jiff::civil::Date, time_us: i64) -> bool {
        let wait_us =
            i64::try_from(self.retire_after_ms().saturating_mul(1_000)).unwrap_or(i64::MAX);
        c.zone
            .day_of_unix_micros(time_us.saturating_sub(wait_us))
            .is_ok_and(|d| d > day)
    }

    /// The day buckets the leader may propose to retire at `time_us` (its wall clock): over by
    /// [`Ledger::retire_after_ms`], with nothing leased or in doubt. At most `max`, oldest days
    /// first per campaign. A scan of every bucket: the leader runs it rarely (once a minute).
    pub fn retirable_days(&self, time_us: i64, max: usize) -> Vec<BucketKey> {
        self.buckets
            .iter()
            .filter(|(k, b)| {
                let Bucket::Day(day) = k.bucket else {
                    return false;
                };
                b.leased.micros() == 0
                    && b.in_doubt.micros() == 0
                    && self
                        .campaigns
                        .get(&k.campaign)
                        .is_some_and(|c| self.day_done(c, day, time_us))
            })
            .map(|(k, _)| k.clone())
            .take(max)
            .collect()
    }

    /// Retires the named day buckets that are over by the stamp's time and hold nothing leased
    /// or in doubt (the others are skipped: the leader names them again later). Each gets a
    /// `day_retired` entry with its final figures and leaves the live state; the campaign
    /// remembers its latest retired day, so that nothing opens or merges it again.
    fn retire_days(&mut self, stamp: Stamp, days: &[BucketKey], out: &mut Vec<Payload>) -> Reply {
        let mut retired = 0u32;
        for key in days.iter().take(BUCKETS_MAX) {
            let Bucket::Day(day) = key.bucket else {
                continue;
            };
            let Some(c) = self.campaigns.get(&key.campaign) else {
                continue;
            };
            if !self.day_done(c, day, stamp.time_us) {
                continue;
            }
            let Some(b) = self.buckets.get(key) else {
                continue;
            };
            if b.leased.micros() != 0 || b.in_doubt.micros() != 0 {
                continue;
            }
            let st = b.counter.state();
            out.push(Payload::DayRetired(DayRetired {
                campaign: key.campaign.clone(),
                bucket: key.bucket,
                budget: b.budget.max(Money::ZERO),
                settled_here: Money::from_micros(
                    i64::try_from(st.settled(&self.region)).unwrap_or(i64::MAX),
                ),
                settled_all: Money::from_micros(
                    i64::try_from(st.total_settled()).unwrap_or(i64::MAX),
                ),
                lapsed: b.available().max(Money::ZERO),
            }));
            self.buckets.remove(key);
            self.changes.buckets.insert(key.clone());
            if let Some(c) = self.campaigns.get_mut(&key.campaign) {
                c.retired_through = Some(c.retired_through.map_or(day, |r| r.max(day)));
                self.changes.campaigns.insert(key.campaign.clone());
            }
            retired += 1;
        }
        Reply::DaysRetired { retired }
    }

    /// A lease is fully closed: remember it for a while (dedup, late notices), then forget it
    /// with its bids and request keys.
    ///
    /// Its marks are compacted now ([`ClosedMarks`]): it can take no money any more, so all a
    /// repeated notice needs is whether the bid was charged or lost.
    fn retire(&mut self, id: LeaseId) {
        self.order_seq += 1;
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.retired = Some(self.order_seq);
            if lease.marks.is_none() {
                let lists = std::mem::take(&mut lease.events);
                for (bid, _) in lists.iter().flatten() {
                    self.charged.remove(&(id, *bid));
                }
                lease.marks = Some(ClosedMarks::compact(lease.bids, &lists));
                let rows = u32::try_from(lists.len()).unwrap_or(u32::MAX);
                self.changes.uncharged.push((id, rows));
                self.changes.leases.insert(id);
            }
        }
        self.closed.push_back(id);
        let retained = usize::try_from(self.params.closed_leases_retained).unwrap_or(usize::MAX);
        while self.closed.len() > retained {
            let Some(old) = self.closed.pop_front() else {
                break;
            };
            self.changes.leases.insert(old);
            if let Some(lease) = self.leases.remove(&old) {
                for (bid, _) in lease.events.iter().flatten() {
                    self.charged.remove(&(old, *bid));
                }
                let rows = u32::try_from(lease.events.len()).unwrap_or(u32::MAX);
                self.changes.uncharged.push((old, rows));
                for r in &lease.requests {
                    self.requests.remove(r);
                    self.changes.requests.insert(*r);
                }
            }
        }
    }

    /// Creates a day's bucket with the campaign's daily budget as new rights here (the home
    /// region, on the day's first lease or first transfer). `budget` is positive.
    fn open_day(
        &mut self,
        campaign: &CampaignId,
        day: jiff::civil::Date,
        budget: Money,
        out: &mut Vec<Payload>,
    ) {
        let mut state = BucketState::new(&self.region);
        // A fresh counter holds nothing, so a positive budget cannot overflow it.
        state
            .counter
            .create(budget)
            .unwrap_or_else(|e| panic!("new day bucket: {e}"));
        state.budget = budget;
        out.push(Payload::BudgetSet(BudgetSet {
            campaign: campaign.clone(),
            bucket: Bucket::Day(day),
            before: Money::ZERO,
            after: budget,
        }));
        let key = BucketKey {
            campaign: campaign.clone(),
            bucket: Bucket::Day(day),
        };
        self.changes.buckets.insert(key.clone());
        self.buckets.insert(key, state);
    }

    fn transfer(
        &mut self,
        stamp: Stamp,
        campaign: &CampaignId,
        bucket: Bucket,
        to: &RegionId,
        amount: Money,
        out: &mut Vec<Payload>,
    ) -> Result<Reply, Refusal> {
        positive("amount", amount)?;
        if *to == self.region {
            return Err(invalid("to", "a region cannot transfer rights to itself"));
        }
        let key = BucketKey {
            campaign: campaign.clone(),
            bucket,
        };
        // The home region opens a day that a peer asks rights for: the day of the leader's
        // clock or either neighbour (peers' clocks are not ours; a day has one budget wherever
        // it is opened, so opening it early or late creates nothing twice).
        let open = match (bucket, self.campaigns.get(campaign)) {
            (Bucket::Day(day), Some(c))
                if c.home == self.region && !self.buckets.contains_key(&key) =>
            {
                let today = c
                    .zone
                    .day_of_unix_micros(stamp.time_us)
                    .map_err(|e| invalid("time", e.to_string()))?;
                let near = [today.yesterday().ok(), Some(today), today.tomorrow().ok()]
                    .contains(&Some(day));
                // A day retired here is never opened again.
                let retired = c.retired_through.is_some_and(|r| day <= r);
                match c.config.daily_budget {
                    Some(d) if near && !retired && d.micros() > 0 => Some((day, d)),
                    _ => None,
                }
            }
            _ => None,
        };
        let have = match open {
            Some((_, d)) => d,
            None => self
                .buckets
                .get(&key)
                .map_or(Money::ZERO, BucketState::available),
        };
        if have < amount {
            return Err(Refusal::InsufficientRights {
                bucket: key,
                available: have,
                wanted: amount,
            });
        }
        if let Some((day, d)) = open {
            self.open_day(campaign, day, d, out);
        }
        let state = self
            .buckets
            .get_mut(&key)
            .unwrap_or_else(|| panic!("{key}: rights checked above but no bucket"));
        // Checked above: `amount ≤ available`, so the counter cannot refuse.
        state
            .counter
            .transfer(to, amount)
            .unwrap_or_else(|e| panic!("{key}: transfer of checked rights refused: {e}"));
        // Entries of this command go in after those it pushed already.
        let log_seq = self.chain.next_seq() + out.len() as u64;
        out.push(Payload::RightsTransferred(RightsTransferred {
            campaign: campaign.clone(),
            bucket,
            to: to.clone(),
            amount,
        }));
        self.changes.buckets.insert(key);
        Ok(Reply::Transferred { amount, log_seq })
    }

    fn merge(
        &mut self,
        from: &RegionId,
        remote: &[RemoteBucket],
        campaigns: &[RemoteCampaign],
        witness: Witness,
        out: &mut Vec<Payload>,
    ) -> Result<Reply, Refusal> {
        if *from == self.region {
            return Err(invalid("from", "a region does not merge its own state"));
        }
        if remote.len() > BUCKETS_MAX {
            return Err(invalid(
                "buckets",
                format!("{} buckets, at most {BUCKETS_MAX} per merge", remote.len()),
            ));
        }
        // The sender's own rows only grow with its log: a state behind the last one witnessed
        // from it is an old message (a retry, a deposed leader's push), and changes nothing.
        if self
            .witnessed
            .get(from)
            .is_some_and(|w| witness.seq < w.seq)
        {
            return Ok(Reply::Merged {
                received: Money::ZERO,
                campaigns: 0,
                stale: true,
            });
        }
        // Merge into copies; keep them only if every bucket merges.
        let mut merged: Vec<(BucketKey, BucketState, Money)> = Vec::new();
        for rb in remote {
            if self.is_retired(&rb.bucket) {
                // Its day is over here: a peer that has not retired it yet cannot bring it back.
                continue;
            }
            let mut state = self
                .buckets
                .get(&rb.bucket)
                .cloned()
                .unwrap_or_else(|| BucketState::new(&self.region));
            let before = state.counter.available();
            let theirs = CounterState::from(&rb.rows);
            state
                .counter
                .merge(from, &theirs)
                .map_err(|e| Refusal::MergeRefused {
                    from: from.clone(),
                    reason: format!("{}: {e}", rb.bucket),
                })?;
            let received = sub(state.counter.available(), before);
            merged.push((rb.bucket.clone(), state, received));
        }
        let mut received_all = Vec::new();
        let mut total = Money::ZERO;
        for (key, state, received) in merged {
            if received.micros() > 0 {
                received_all.push(Received {
                    campaign: key.campaign.clone(),
                    bucket: key.bucket,
                    amount: received,
                });
                total = add(total, received);
            }
            self.changes.buckets.insert(key.clone());
            self.buckets.insert(key, state);
        }
        let adopted = self.adopt(from, campaigns);
        out.push(Payload::RemoteMerged(RemoteMerged {
            from: from.clone(),
            remote_seq: witness.seq,
            remote_head: witness.head,
            received: received_all,
        }));
        self.witnessed.insert(from.clone(), witness);
        Ok(Reply::Merged {
            received: total,
            campaigns: adopted,
            stale: false,
        })
    }

    /// Adopts the settings of campaigns homed in `from` that are newer than our copy. A
    /// campaign of the same name homed elsewhere is kept as it is (names are chosen by
    /// operators; two regions creating the same name is their conflict to resolve, and
    /// `budgetctl status` shows each copy's home). Returns how many were adopted.
    fn adopt(&mut self, from: &RegionId, campaigns: &[RemoteCampaign]) -> u32 {
        let mut adopted = 0;
        for rc in campaigns {
            let newer = match self.campaigns.get(&rc.campaign) {
                None => true,
                Some(c) => c.home == *from && c.home_version < rc.version,
            };
            // A zone this build's tz database does not know cannot be bid on here.
            let Ok(zone) = CampaignZone::new(&rc.config.zone) else {
                continue;
            };
            if !newer {
                continue;
            }
            self.campaigns_version += 1;
            self.campaigns.insert(
                rc.campaign.clone(),
                Campaign {
                    config: rc.config.clone(),
                    zone,
                    paused: rc.paused,
                    version: self.campaigns_version,
                    home: from.clone(),
                    home_version: rc.version,
                    retired_through: self
                        .campaigns
                        .get(&rc.campaign)
                        .and_then(|c| c.retired_through),
                },
            );
            self.changes.campaigns.insert(rc.campaign.clone());
            adopted += 1;
        }
        adopted
    }

    /// Checks every invariant of the whole state. O(leases × buckets): for tests and the
    /// harness, not for every apply.
    pub fn validate(&self) -> Result<(), String> {
        let mut leased: BTreeMap<BucketKey, Money> = BTreeMap::new();
        let mut in_doubt: BTreeMap<BucketKey, Money> = BTreeMap::new();
        for (id, l) in &self.leases {
            if l.spent.checked_add(l.lost).map_or(true, |s| s > l.amount) {
                return Err(format!(
                    "lease {id} spent {} and lost {} of {}",
                    l.spent, l.lost, l.amount
                ));
            }
            if l.state != LeaseState::Open && l.lost.micros() != 0 {
                return Err(format!("closed lease {id} still counts {} lost", l.lost));
            }
            if let LeaseState::InDoubt { parts } = &l.state {
                if parts.is_empty() {
                    return Err(format!("lease {id} is in doubt with no part"));
                }
                for (i, p) in parts.iter().enumerate() {
                    if p.amount.micros() <= 0 || (i > 0 && p.wait_ms <= parts[i - 1].wait_ms) {
                        return Err(format!(
                            "lease {id}: in-doubt parts out of shape: {parts:?}"
                        ));
                    }
                }
                if l.state.in_doubt() > sub(l.amount, l.spent) {
                    return Err(format!(
                        "lease {id} holds {} in doubt, more than its unspent {}",
                        l.state.in_doubt(),
                        sub(l.amount, l.spent)
                    ));
                }
            }
            for b in &l.buckets {
                let k = BucketKey {
                    campaign: l.campaign.clone(),
                    bucket: *b,
                };
                // A closed lease may outlive its day's bucket (retired); nothing else may.
                let retired_under_closed = l.state == LeaseState::Closed && self.is_retired(&k);
                if !self.buckets.contains_key(&k) && !retired_under_closed {
                    return Err(format!("lease {id} names missing bucket {k}"));
                }
                match &l.state {
                    LeaseState::Open => {
                        let e = leased.entry(k).or_default();
                        *e = add(*e, sub(l.amount, l.spent));
                    }
                    s @ LeaseState::InDoubt { .. } => {
                        let e = in_doubt.entry(k).or_default();
                        *e = add(*e, s.in_doubt());
                    }
                    LeaseState::Closed => {}
                }
            }
        }
        for (k, b) in &self.buckets {
            if b.available().is_negative() {
                return Err(format!("{k}: available {} < 0", b.available()));
            }
            let want_leased = leased.get(k).copied().unwrap_or_default();
            if b.leased != want_leased {
                return Err(format!(
                    "{k}: leased {} but open leases hold {want_leased}",
                    b.leased
                ));
            }
            let want_doubt = in_doubt.get(k).copied().unwrap_or_default();
            if b.in_doubt != want_doubt {
                return Err(format!(
                    "{k}: in doubt {} but closed leases hold {want_doubt}",
                    b.in_doubt
                ));
            }
            b.counter.validate()?;
        }
        self.params.validate()?;
        Ok(())
    }
}

fn request_key(cmd: &Command) -> Option<RequestKey> {
    match cmd {
        Command::UpsertCampaign { key, .. }
        | Command::SetBudget { key, .. }
        | Command::Pause { key, .. }
        | Command::Resume { key, .. }
        | Command::GrantLease { key, .. }
        | Command::TransferRights { key, .. }
        | Command::RetireEdge { key, .. } => Some(*key),
        Command::SetParams { key, .. } => Some(*key),
        Command::ReportSpend { batch, .. } | Command::ReleaseLease { batch, .. } => {
            Some(RequestKey::from(*batch))
        }
        Command::ReclaimLeases { .. }
        | Command::ExpireInDoubt { .. }
        | Command::SealSegment
        | Command::CheckIn { .. }
        | Command::MergeRemote { .. }
        | Command::RetireDays { .. } => None,
    }
}

fn dedup_ids(ids: &[LeaseId]) -> Vec<LeaseId> {
    let set: BTreeSet<LeaseId> = ids.iter().copied().collect();
    set.into_iter().collect()
}
