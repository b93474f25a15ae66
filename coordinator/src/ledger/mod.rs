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
//! `min(want, policy share, available)` ([`lease::size`]). Spend under a lease never exceeds it:
//! an event that would is an `over_lease` anomaly, recorded in the log, not settled. The leader
//! reclaims leases and expires in-doubt money by proposing [`Command::ReclaimLeases`] and
//! [`Command::ExpireInDoubt`] when its own monotonic timers say so (`crate::reclaim`); `apply`
//! only carries the decision out.

pub mod command;
pub mod lease;
pub mod rows;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rustc_hash::FxHashSet;
use shared::bucket::{Bucket, BucketKey, CampaignZone};
use shared::crdt::{CounterState, RegionCounter};
use shared::log::entry::{
    Anomaly, AnomalyKind, BATCH_EVENTS_MAX, BUCKETS_MAX, BudgetSet, InDoubtReturned, LeaseGranted,
    LeaseReclaimed, LeaseReleased, Received, RemoteMerged, RightsTransferred, SpendBatch,
};
use shared::log::{Chain, Entry, Hash, Payload, SpendEvent};
use shared::targeting::Pacing;
use shared::{BatchId, CampaignId, EdgeId, EventKey, LeaseId, Money, RegionId};

pub use command::{
    CampaignConfig, Command, Refusal, RemoteBucket, RemoteCampaign, Reply, RequestKey, Stamp,
};
pub use lease::{Lease, LeaseState};

/// Tunable rules of the state machine. Part of the replicated state: every replica must use the
/// same values, so they come from the region's configuration at creation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// How long an edge may reserve under a lease.
    pub lease_duration_ms: u64,
    /// One lease takes at most `available / lease_share_divisor` …
    pub lease_share_divisor: i64,
    /// … but never less than this (or what is left), so that the last micros get spent.
    pub lease_min: Money,
    /// Closed leases remembered for dedup and late notices, oldest dropped first.
    pub closed_leases_retained: usize,
    /// Idempotency keys remembered, oldest dropped first.
    pub requests_retained: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            lease_duration_ms: 30_000,
            lease_share_divisor: 4,
            // 0.1 currency units: about a hundred bids at a 1.00 CPM.
            lease_min: Money::from_micros(100_000),
            closed_leases_retained: 100_000,
            requests_retained: 1_000_000,
        }
    }
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
    fn new(region: &RegionId) -> BucketState {
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
    chain: Chain,
    campaigns: BTreeMap<CampaignId, Campaign>,
    /// Grows with every change to any campaign's settings or state; edges poll by it.
    campaigns_version: u64,
    buckets: BTreeMap<BucketKey, BucketState>,
    leases: BTreeMap<LeaseId, Lease>,
    next_lease: u64,
    /// Every event key settled or recorded as an anomaly, with its lease: the dedup table.
    /// Hashed, as the largest table and the one every event looks up. Nothing iterates it, so
    /// its order reaches no row, entry or reply, and `apply` stays deterministic although the
    /// hasher's seed is random: the seed only keeps exchanges, who choose auction ids, from
    /// crafting ids that collide (an unseeded hash such as FxHash would let them slow every
    /// apply down). foldhash, seeded per process, measured within noise of FxHash on these
    /// keys; std's SipHash measured slower (BENCHMARKS.md).
    charged: std::collections::HashMap<EventKey, LeaseId, foldhash::fast::RandomState>,
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
            chain: Chain::new(),
            campaigns: BTreeMap::new(),
            campaigns_version: 0,
            buckets: BTreeMap::new(),
            leases: BTreeMap::new(),
            next_lease: 1,
            charged: std::collections::HashMap::default(),
            requests: BTreeMap::new(),
            request_order: VecDeque::new(),
            closed: VecDeque::new(),
            order_seq: 0,
            changes: Changes::default(),
            last_spent: BTreeMap::new(),
            witnessed: BTreeMap::new(),
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

    /// Applies one command. Deterministic: the same state, stamp and command give the same
    /// reply, entries and next state on every replica.
    pub fn apply(&mut self, stamp: Stamp, cmd: &Command) -> Applied {
        let key = request_key(cmd);
        if let Some(Remembered { reply, .. }) = key.and_then(|k| self.requests.get(&k)) {
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
            } => self.set_budget(campaign, *bucket, *budget, &mut out),
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
            } => self.report(*batch, edge, *lease, events, &mut out),
            Command::ReleaseLease {
                batch,
                edge,
                lease,
                unreserved,
            } => self.release(*batch, edge, *lease, *unreserved, &mut out),
            Command::ReclaimLeases { leases } => Ok(self.reclaim(leases, &mut out)),
            Command::ExpireInDoubt { leases } => Ok(self.expire(leases, &mut out)),
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
        while self.requests.len() > self.params.requests_retained {
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
        campaign: &CampaignId,
        bucket: Bucket,
        budget: Money,
        out: &mut Vec<Payload>,
    ) -> Result<Reply, Refusal> {
        self.home_campaign_or_refuse(campaign)?;
        if budget.is_negative() {
            return Err(invalid("budget", format!("negative: {budget}")));
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
                return Err(Refusal::InsufficientRights {
                    bucket: key,
                    available: state.available(),
                    wanted: burn,
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
        // Only the home region creates a day's rights; elsewhere they arrive by transfer.
        let daily_default = c.config.daily_budget;
        let home = c.home == self.region;
        // One impression at the campaign's bid. A smaller lease cannot fund a single bid: it
        // would only hold money away from the edges until released or reclaimed, and near the
        // end of a budget the share rule split the rest into such crumbs, so that the last
        // bids were never made (found by `jepsen run`: I6, seed 2).
        let unit = Money::from_micros(c.config.bid_cpm.micros() / 1000);
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
        for b in &buckets {
            let k = BucketKey {
                campaign: campaign.clone(),
                bucket: *b,
            };
            if let Some(s) = self.buckets.get_mut(&k) {
                s.leased = add(s.leased, amount);
            }
            self.changes.buckets.insert(k);
        }
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        self.changes.leases.insert(id);
        let duration_ms = self.params.lease_duration_ms;
        self.leases.insert(
            id,
            Lease {
                edge: edge.clone(),
                campaign: campaign.clone(),
                buckets: buckets.clone(),
                amount,
                spent: Money::ZERO,
                state: LeaseState::Open,
                duration_ms,
                granted_at_index: stamp.index,
                events: Vec::new(),
                requests: Vec::new(),
                retired: None,
            },
        );
        out.push(Payload::LeaseGranted(LeaseGranted {
            lease: id,
            edge: edge.clone(),
            campaign: campaign.clone(),
            buckets: buckets.clone(),
            amount,
            duration_ms,
        }));
        Ok(Reply::LeaseGranted {
            lease: id,
            amount,
            duration_ms,
            buckets,
        })
    }

    fn report(
        &mut self,
        batch: BatchId,
        edge: &EdgeId,
        lease_id: LeaseId,
        events: &[SpendEvent],
        out: &mut Vec<Payload>,
    ) -> Result<Reply, Refusal> {
        if events.is_empty() {
            return Err(invalid("events", "a spend report holds at least one event"));
        }
        if events.len() > BATCH_EVENTS_MAX {
            return Err(invalid(
                "events",
                format!(
                    "{} events, at most {BATCH_EVENTS_MAX} per report",
                    events.len()
                ),
            ));
        }
        if let Some(e) = events.iter().find(|e| e.amount.is_negative()) {
            return Err(invalid(
                "events",
                format!("{}: negative amount {}", e.key, e.amount),
            ));
        }
        let Some(lease) = self.leases.get(&lease_id) else {
            if lease_id.0 == 0 || lease_id.0 >= self.next_lease {
                return Err(Refusal::UnknownLease { lease: lease_id });
            }
            // A lease closed so long ago that it is forgotten: the charges were billed, so they
            // are recorded as late.
            for e in dedup_within(events) {
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
            });
        };
        // Plan.
        let mut headroom = match lease.state {
            LeaseState::Open => sub(lease.amount, lease.spent),
            LeaseState::InDoubt { remaining } => remaining,
            LeaseState::Closed => Money::ZERO,
        };
        let mut seen: FxHashSet<&EventKey> = FxHashSet::default();
        let mut settle: Vec<SpendEvent> = Vec::new();
        let mut anomalies: Vec<(AnomalyKind, SpendEvent)> = Vec::new();
        let mut duplicates = 0u32;
        for e in events {
            if self.charged.contains_key(&e.key)
                || !seen.insert(&e.key)
                || self.planted_auction_dup(&e.key, &seen)
            {
                duplicates += 1;
            } else if lease.state == LeaseState::Closed {
                anomalies.push((AnomalyKind::LateSpend, e.clone()));
            } else if e.amount <= headroom {
                headroom = sub(headroom, e.amount);
                settle.push(e.clone());
            } else {
                anomalies.push((AnomalyKind::OverLease, e.clone()));
            }
        }
        // Act.
        let total = Money::checked_sum(settle.iter().map(|e| e.amount))
            .unwrap_or_else(|_| panic!("events within a lease overflow"));
        let lease = self
            .leases
            .get_mut(&lease_id)
            .unwrap_or_else(|| unreachable!("looked up above"));
        if total.micros() > 0 {
            for b in &lease.buckets {
                let k = BucketKey {
                    campaign: lease.campaign.clone(),
                    bucket: *b,
                };
                let s = self
                    .buckets
                    .get_mut(&k)
                    .unwrap_or_else(|| panic!("lease {lease_id} names missing bucket {k}"));
                // The amount was leased (or is in doubt) from this bucket, so the rights are here.
                s.counter
                    .settle(total)
                    .unwrap_or_else(|e| panic!("settling {total} in {k}: {e}"));
                match lease.state {
                    LeaseState::Open => s.leased = sub(s.leased, total),
                    LeaseState::InDoubt { .. } => s.in_doubt = sub(s.in_doubt, total),
                    LeaseState::Closed => unreachable!("nothing settles under a closed lease"),
                }
                self.changes.buckets.insert(k);
            }
            lease.spent = add(lease.spent, total);
            if let LeaseState::InDoubt { remaining } = lease.state {
                lease.state = LeaseState::InDoubt {
                    remaining: sub(remaining, total),
                };
            }
        }
        let charged: Vec<EventKey> = settle
            .iter()
            .chain(anomalies.iter().map(|(_, e)| e))
            .map(|e| e.key.clone())
            .collect();
        if !charged.is_empty() {
            for k in &charged {
                self.charged.insert(k.clone(), lease_id);
            }
            // At most one list per report, so a lease cannot approach u32::MAX lists.
            let i = u32::try_from(lease.events.len()).unwrap_or(u32::MAX);
            lease.events.push(charged);
            self.changes.charged.push((lease_id, i));
        }
        self.changes.leases.insert(lease_id);
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
        Ok(Reply::SpendSettled {
            settled,
            duplicates,
            anomalies: n_anomalies,
            log_seq,
        })
    }

    /// The planted bug `dedup-by-auction` (`shared::planted`, test builds only): an impression
    /// counts as a duplicate of the auction's first one, as if events were keyed without the
    /// impression id.
    fn planted_auction_dup(&self, key: &EventKey, seen: &FxHashSet<&EventKey>) -> bool {
        if !shared::planted::active("dedup-by-auction") || key.imp_id() == "1" {
            return false;
        }
        EventKey::from_parts(key.exchange(), key.auction_id(), "1")
            .is_ok_and(|first| self.charged.contains_key(&first) || seen.contains(&first))
    }

    /// The edge is done with a lease. Notices for its bids may still be on their way: the
    /// exchange retries an unacknowledged notice at any edge, possibly after W. So only what the
    /// edge never reserved (or was given back) returns now; the rest of the unspent amount waits
    /// in doubt for the late-acceptance window, like a reclaimed lease's. (A release that
    /// returned everything let a late notice land on a closed lease: billed, not debited, and
    /// the budget overspent. The harness found it: seeds 1 and 2 of the long form.)
    fn release(
        &mut self,
        batch: BatchId,
        edge: &EdgeId,
        lease_id: LeaseId,
        unreserved: Money,
        out: &mut Vec<Payload>,
    ) -> Result<Reply, Refusal> {
        let lease = self
            .leases
            .get_mut(&lease_id)
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
        let rest = sub(lease.amount, lease.spent);
        let returned = unreserved.max(Money::ZERO).min(rest);
        let doubt = sub(rest, returned);
        for b in &lease.buckets {
            let k = BucketKey {
                campaign: lease.campaign.clone(),
                bucket: *b,
            };
            if let Some(s) = self.buckets.get_mut(&k) {
                s.leased = sub(s.leased, rest);
                s.in_doubt = add(s.in_doubt, doubt);
            }
            self.changes.buckets.insert(k);
        }
        lease.state = if doubt.micros() > 0 {
            LeaseState::InDoubt { remaining: doubt }
        } else {
            LeaseState::Closed
        };
        self.changes.leases.insert(lease_id);
        let spent = lease.spent;
        let who = (lease.edge.clone(), lease.campaign.clone());
        self.last_spent.insert(who.clone(), spent);
        self.changes.velocity.insert(who);
        out.push(Payload::LeaseReleased(LeaseReleased {
            lease: lease_id,
            batch,
            spent,
            returned,
        }));
        if doubt.micros() == 0 {
            self.retire(lease_id);
        }
        Ok(Reply::LeaseClosed { spent, returned })
    }

    fn reclaim(&mut self, ids: &[LeaseId], out: &mut Vec<Payload>) -> Reply {
        let mut count = 0u32;
        for id in dedup_ids(ids) {
            let Some(lease) = self.leases.get_mut(&id) else {
                continue;
            };
            if lease.state != LeaseState::Open {
                continue;
            }
            let rest = sub(lease.amount, lease.spent);
            for b in &lease.buckets {
                let k = BucketKey {
                    campaign: lease.campaign.clone(),
                    bucket: *b,
                };
                if let Some(s) = self.buckets.get_mut(&k) {
                    s.leased = sub(s.leased, rest);
                    s.in_doubt = add(s.in_doubt, rest);
                }
                self.changes.buckets.insert(k);
            }
            lease.state = LeaseState::InDoubt { remaining: rest };
            self.changes.leases.insert(id);
            let who = (lease.edge.clone(), lease.campaign.clone());
            self.last_spent.insert(who.clone(), lease.spent);
            self.changes.velocity.insert(who);
            out.push(Payload::LeaseReclaimed(LeaseReclaimed {
                lease: id,
                spent: lease.spent,
                in_doubt: rest,
            }));
            count += 1;
        }
        Reply::LeasesClosed { count }
    }

    fn expire(&mut self, ids: &[LeaseId], out: &mut Vec<Payload>) -> Reply {
        let mut count = 0u32;
        for id in dedup_ids(ids) {
            let Some(lease) = self.leases.get_mut(&id) else {
                continue;
            };
            let LeaseState::InDoubt { remaining } = lease.state else {
                continue;
            };
            for b in &lease.buckets {
                let k = BucketKey {
                    campaign: lease.campaign.clone(),
                    bucket: *b,
                };
                if let Some(s) = self.buckets.get_mut(&k) {
                    s.in_doubt = sub(s.in_doubt, remaining);
                }
                self.changes.buckets.insert(k);
            }
            lease.state = LeaseState::Closed;
            self.changes.leases.insert(id);
            out.push(Payload::InDoubtReturned(InDoubtReturned {
                lease: id,
                returned: remaining,
            }));
            self.retire(id);
            count += 1;
        }
        Reply::LeasesClosed { count }
    }

    /// A lease is fully closed: remember it for a while (dedup, late notices), then forget it
    /// with its event keys and request keys.
    fn retire(&mut self, id: LeaseId) {
        self.order_seq += 1;
        if let Some(lease) = self.leases.get_mut(&id) {
            lease.retired = Some(self.order_seq);
        }
        self.closed.push_back(id);
        while self.closed.len() > self.params.closed_leases_retained {
            let Some(old) = self.closed.pop_front() else {
                break;
            };
            self.changes.leases.insert(old);
            if let Some(lease) = self.leases.remove(&old) {
                for k in lease.events.iter().flatten() {
                    self.charged.remove(k);
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
                match c.config.daily_budget {
                    Some(d) if near && d.micros() > 0 => Some((day, d)),
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
            if l.spent > l.amount {
                return Err(format!("lease {id} spent {} of {}", l.spent, l.amount));
            }
            for b in &l.buckets {
                let k = BucketKey {
                    campaign: l.campaign.clone(),
                    bucket: *b,
                };
                if !self.buckets.contains_key(&k) {
                    return Err(format!("lease {id} names missing bucket {k}"));
                }
                match l.state {
                    LeaseState::Open => {
                        let e = leased.entry(k).or_default();
                        *e = add(*e, sub(l.amount, l.spent));
                    }
                    LeaseState::InDoubt { remaining } => {
                        let e = in_doubt.entry(k).or_default();
                        *e = add(*e, remaining);
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
                    "{k}: in doubt {} but reclaimed leases hold {want_doubt}",
                    b.in_doubt
                ));
            }
            b.counter.validate()?;
        }
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
        | Command::TransferRights { key, .. } => Some(*key),
        Command::ReportSpend { batch, .. } | Command::ReleaseLease { batch, .. } => {
            Some(RequestKey::from(*batch))
        }
        Command::ReclaimLeases { .. }
        | Command::ExpireInDoubt { .. }
        | Command::MergeRemote { .. } => None,
    }
}

fn dedup_ids(ids: &[LeaseId]) -> Vec<LeaseId> {
    let set: BTreeSet<LeaseId> = ids.iter().copied().collect();
    set.into_iter().collect()
}

fn dedup_within(events: &[SpendEvent]) -> Vec<&SpendEvent> {
    let mut seen = BTreeSet::new();
    events.iter().filter(|e| seen.insert(&e.key)).collect()
}
