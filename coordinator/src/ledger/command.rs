//! The commands of the region state machine (DESIGN §4), what they reply, and why they may be
//! refused. Commands travel in the Raft log, so they are plain serde data.

use serde::{Deserialize, Serialize};
use shared::bucket::{Bucket, BucketKey};
use shared::crdt::CounterRows;
use shared::log::entry::{DoubtPart, hex_hash};
use shared::log::{Hash, SpendEvent};
use shared::targeting::Targeting;
use shared::{BatchId, CampaignId, EdgeId, LeaseId, Money, RegionId};

use super::Params;
use super::lease::Terms;

/// The client-chosen idempotency key of a command: a replay returns the first reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestKey(pub [u8; 16]);

impl From<BatchId> for RequestKey {
    fn from(b: BatchId) -> Self {
        RequestKey(b.0)
    }
}

/// What the leader stamps into a command when it proposes it, and the Raft position it was
/// committed at. `apply` reads time only from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// Raft term of the entry.
    pub term: u64,
    /// Raft log index of the entry.
    pub index: u64,
    /// The leader's wall-clock time at proposal, in microseconds since the Unix epoch. Decides
    /// the day bucket; guards no money.
    pub time_us: i64,
}

/// A campaign's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignConfig {
    /// IANA time zone that decides where its days begin and end.
    pub zone: String,
    /// Bid price, micros per thousand impressions.
    pub bid_cpm: Money,
    /// The budget each new day bucket gets; `None`: no daily cap, only the lifetime bucket.
    pub daily_budget: Option<Money>,
    /// What it bids on, and its pacing.
    #[serde(default)]
    pub targeting: Box<Targeting>,
}

/// The counter state of one bucket, as a peer region sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteBucket {
    /// The bucket.
    pub bucket: BucketKey,
    /// Its counter rows.
    pub rows: CounterRows,
}

/// A campaign's settings as its home region sent them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteCampaign {
    /// The campaign.
    pub campaign: CampaignId,
    /// Its settings.
    pub config: CampaignConfig,
    /// Paused at home.
    pub paused: bool,
    /// The home region's version of these settings.
    pub version: u64,
}

/// A command of the region state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Creates or updates a campaign's settings. Moves no money.
    UpsertCampaign {
        key: RequestKey,
        campaign: CampaignId,
        config: CampaignConfig,
    },
    /// Sets a bucket's budget: an increase creates rights in this region; a decrease burns this
    /// region's unleased rights, refused if they are not here.
    SetBudget {
        key: RequestKey,
        campaign: CampaignId,
        bucket: Bucket,
        budget: Money,
    },
    /// Stops new leases for a campaign.
    Pause {
        key: RequestKey,
        campaign: CampaignId,
    },
    /// Allows new leases again.
    Resume {
        key: RequestKey,
        campaign: CampaignId,
    },
    /// Leases `min(want, policy share, available)` against every bucket of the campaign.
    GrantLease {
        key: RequestKey,
        edge: EdgeId,
        campaign: CampaignId,
        want: Money,
    },
    /// Settles a batch of charges under a lease, and records bids the exchange reported lost.
    /// The batch id is the idempotency key.
    ReportSpend {
        batch: BatchId,
        edge: EdgeId,
        lease: LeaseId,
        events: Vec<SpendEvent>,
        /// Loss notices of the lease's bids that reached an edge that does not hold the lease
        /// (or came after it was released).
        #[serde(default)]
        losses: Vec<BidPrice>,
        /// Bids charged in `events` whose whole reservations the lease's in-doubt money holds:
        /// the edge that released the lease had seen no notice for them. If the lease is in
        /// doubt when a charge settles, the rest of its bid price (price − charge) returns at
        /// once (`rest_returned`), as a loss returns a lost bid's whole price.
        #[serde(default)]
        held: Vec<BidPrice>,
    },
    /// The edge is done with the lease: what it never reserved returns to the region; what it
    /// reserved for bids whose notices have not come waits in doubt, each part until the
    /// deadlines of its bids have passed.
    ReleaseLease {
        batch: BatchId,
        edge: EdgeId,
        lease: LeaseId,
        /// What the edge never reserved or was given back: returned at once.
        unreserved: Money,
        /// How many bids it made under the lease.
        #[serde(default)]
        bids: u64,
        /// Its reservations still waiting for notices, by how long their deadlines are from
        /// the release (waits strictly increasing). The ledger holds the lease's unspent rest
        /// in these parts, the longest waits first.
        #[serde(default)]
        in_doubt: Vec<DoubtPart>,
    },
    /// Proposed by the leader for leases whose reclaim wait has passed on its own monotonic
    /// clock (DESIGN §5). Open leases among them close; their remainder goes in doubt for the
    /// longest hold of the lease's bids.
    ReclaimLeases { leases: Vec<LeaseId> },
    /// Proposed by the leader when in-doubt parts' waits have passed on its monotonic clock.
    /// Each named part (lease, the part's `wait_ms`) returns what it still holds once every
    /// registered edge has checked in covering the index at which a first `ExpireInDoubt`
    /// named it (that entry marks it due); until then the part waits, and the leader names
    /// it again when the edges have.
    ExpireInDoubt { parts: Vec<(LeaseId, u64)> },
    /// Proposed by the leader when the financial log's open segment has waited its seal
    /// interval: the segment ends here (at the log's next seq), on every replica alike. Segments
    /// also end every `segment_entries` records.
    SealSegment,
    /// An edge's check-in: every notice the edge process `incarnation` accepted before it
    /// learnt that Raft index `covers` was committed is in a spend batch committed before this
    /// command. An edge registers this way (`covers` 0) before it accepts any notice. A
    /// check-in of an incarnation older than the registered one changes nothing.
    CheckIn {
        edge: EdgeId,
        incarnation: u64,
        covers: u64,
    },
    /// The operator says an edge is gone for good: in-doubt money stops waiting for its
    /// check-ins. Notices it accepted and never reported are lost with it.
    RetireEdge { key: RequestKey, edge: EdgeId },
    /// Sets the region's lease and reclaim rules: `cluster init`, or an operator's change.
    /// Leases already granted keep the terms they were granted under.
    SetParams { key: RequestKey, params: Params },
    /// Gives unleased rights of a bucket to another region.
    TransferRights {
        key: RequestKey,
        campaign: CampaignId,
        bucket: Bucket,
        to: RegionId,
        amount: Money,
    },
    /// Joins a peer region's counter states, adopts the settings of campaigns homed there,
    /// and records its witnessed log head. A state older than the last one witnessed from that
    /// peer (`remote_seq` lower) changes nothing.
    MergeRemote {
        from: RegionId,
        buckets: Vec<RemoteBucket>,
        #[serde(default)]
        campaigns: Vec<RemoteCampaign>,
        remote_seq: u64,
        #[serde(with = "hex_hash")]
        remote_head: Hash,
    },
    /// Proposed by the leader for day buckets whose day is over on its wall clock (by the
    /// region's lease duration, settlement and late-acceptance windows) and that hold nothing
    /// leased or in doubt. The ledger checks both again against the stamp and skips the
    /// others; each one retired leaves the live state with a `day_retired` entry.
    RetireDays { days: Vec<BucketKey> },
}

/// A bid of ours and its bid price: a loss notice's bid, or a charged bid whose whole
/// reservation a released lease holds in doubt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidPrice {
    /// The bid's number under the lease.
    pub bid: u64,
    /// Its bid price: what its reservation held.
    pub amount: Money,
}

/// Why a command changed nothing. A business answer, not a failure of the system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    /// No such campaign.
    #[error("unknown campaign {campaign}")]
    UnknownCampaign { campaign: CampaignId },
    /// The campaign is paused.
    #[error("campaign {campaign} is paused")]
    Paused { campaign: CampaignId },
    /// No such lease.
    #[error("unknown lease {lease}")]
    UnknownLease { lease: LeaseId },
    /// Nothing available to lease.
    #[error("no rights available for campaign {campaign}")]
    NoRights { campaign: CampaignId },
    /// Not enough unleased rights in this region for a burn or a transfer.
    #[error("{bucket}: {available} unleased rights here, {wanted} needed")]
    InsufficientRights {
        bucket: BucketKey,
        available: Money,
        wanted: Money,
    },
    /// A budget below what is already committed: spent, in flight, or held elsewhere.
    #[error(
        "{bucket}: the budget can go down to {smallest} now, not {wanted}: {settled} is \
         spent, {in_flight} is leased or held for late notices here, and {elsewhere} is held \
         by other regions (it comes back as they give it)"
    )]
    BudgetBelowCommitted {
        bucket: BucketKey,
        wanted: Money,
        smallest: Money,
        settled: Money,
        in_flight: Money,
        elsewhere: Money,
    },
    /// No such registered edge.
    #[error("no registered edge {edge} (budgetctl edges list shows them)")]
    UnknownEdge { edge: EdgeId },
    /// A value out of its range.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// A peer's state was refused as evidence of data loss.
    #[error("state from region {from} refused: {reason}")]
    MergeRefused { from: RegionId, reason: String },
    /// A new region grants no lease until its rules are recorded in its log (its first
    /// leader does that at once).
    #[error("the region's lease rules are not recorded yet; its leader records them")]
    RulesNotRecorded,
    /// The campaign's settings and budgets are changed only in its home region.
    #[error("campaign {campaign} is homed in region {home}: change it there")]
    NotHome {
        campaign: CampaignId,
        home: RegionId,
    },
}

/// What an applied command answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The campaign was created (`created`) or updated.
    CampaignSaved { created: bool },
    /// The bucket's budget is now `budget`.
    BudgetSet { budget: Money },
    /// Pause or resume applied.
    CampaignState { paused: bool },
    /// A lease.
    LeaseGranted {
        lease: LeaseId,
        amount: Money,
        buckets: Vec<Bucket>,
        /// The rules the edge holds it under.
        terms: Terms,
    },
    /// A spend batch was settled. `log_seq` is its spend-batch entry, if any event settled.
    SpendSettled {
        settled: u32,
        /// Charges of bids already charged at the same price (retries, repeated notices).
        duplicates: u32,
        /// Charges recorded as anomalies, not settled.
        anomalies: u32,
        log_seq: Option<u64>,
        /// Reports that contradict what was known of a bid: a charge at another price than
        /// its first, a charge of a bid reported lost, a loss of a bid already charged.
        #[serde(default)]
        conflicts: u32,
        /// Bids newly recorded as lost.
        #[serde(default)]
        lost: u32,
        /// Events naming a bid number the lease never had (above the count its release gave).
        #[serde(default)]
        unknown_bids: u32,
    },
    /// The region's rules are now these.
    ParamsSet { params: Params },
    /// The lease is closed: `spent` in all, `returned` to the region by this command.
    LeaseClosed { spent: Money, returned: Money },
    /// Leases reclaimed (or in-doubt amounts returned) by this command.
    LeasesClosed { count: u32 },
    /// Rights transferred; `log_seq` is the transfer's entry.
    Transferred {
        amount: Money,
        #[serde(default)]
        log_seq: u64,
    },
    /// A peer's state merged; `received` rights arrived for this region, `campaigns` settings
    /// were adopted. `stale`: the state was older than one already witnessed, and ignored.
    Merged {
        received: Money,
        #[serde(default)]
        campaigns: u32,
        #[serde(default)]
        stale: bool,
    },
    /// A segment boundary at this seq (`None`: the log holds nothing past the last one).
    SealPoint { at: Option<u64> },
    /// How many of the named days were retired.
    DaysRetired { retired: u32 },
    /// An edge's check-in: the incarnation registered now, and whether this one is it (an
    /// older incarnation is told the registered one, and starts above it).
    CheckedIn { incarnation: u64, accepted: bool },
    /// A registered edge was retired.
    EdgeRetired,
    /// Nothing changed, and why.
    Refused(Refusal),
    /// The reply to Raft entries that carry no command (blank and membership entries). Never
    /// seen by clients.
    NoCommand,
}
