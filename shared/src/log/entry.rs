//! Log entries: the fields every entry has, the payload of each kind, their canonical bytes, and
//! the hash chain.
//!
//! ```text
//! body        = version seq raft_term raft_index time_us kind payload_len payload
//! body_digest = SHA-256("BUDGETLOG-V1-BODY"  ‖ body)
//! entry_hash  = SHA-256("BUDGETLOG-V1-ENTRY" ‖ prev_hash ‖ body_digest)
//! ```
//!
//! A spend batch's events are not in its body: the body holds their count, total and Merkle root
//! ([`super::merkle`]), and the events travel beside the entry. So one charge can be proved with
//! its Merkle path, and the chain from its entry to a head with one 32-byte digest per later
//! entry, revealing nothing else.

use serde::{Deserialize, Serialize};

use crate::bucket::Bucket;
use crate::id::{BatchId, CampaignId, EdgeId, EventKey, ExchangeId, LeaseId, RegionId};
use crate::money::{Money, MoneyError};

use super::Hash;
use super::codec::{DecodeError, Reader, Writer};
use super::merkle;
use super::sha::sha256;

/// The version byte that opens every body.
pub const ENTRY_VERSION: u8 = 1;
/// Domain tag of the body digest.
pub const TAG_BODY: &[u8] = b"BUDGETLOG-V1-BODY";
/// Domain tag of the entry hash.
pub const TAG_ENTRY: &[u8] = b"BUDGETLOG-V1-ENTRY";
/// Domain tag of the genesis value.
pub const TAG_GENESIS: &[u8] = b"BUDGETLOG-V1-GENESIS";
/// Bytes of a body before its payload.
pub const BODY_HEADER_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1 + 4;
/// The largest payload, in bytes.
pub const PAYLOAD_MAX_BYTES: usize = 1 << 20;
/// The most events one spend batch may hold.
pub const BATCH_EVENTS_MAX: usize = 65_536;
/// The most buckets one lease or merge may name.
pub const BUCKETS_MAX: usize = 1024;

/// `prev_hash` of entry 0: `SHA-256("BUDGETLOG-V1-GENESIS")`.
pub fn genesis() -> Hash {
    sha256(&[TAG_GENESIS])
}

/// `SHA-256("BUDGETLOG-V1-BODY" ‖ body)`.
pub fn body_digest(body: &[u8]) -> Hash {
    sha256(&[TAG_BODY, body])
}

/// `SHA-256("BUDGETLOG-V1-ENTRY" ‖ prev_hash ‖ body_digest)`.
pub fn entry_hash(prev_hash: &Hash, body_digest: &Hash) -> Hash {
    sha256(&[TAG_ENTRY, prev_hash, body_digest])
}

/// What an entry records. The numbers are the `kind` byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Kind {
    /// A bucket's budget was set; rights were created (or burned) in this region.
    BudgetSet = 1,
    /// Rights were leased to an edge.
    LeaseGranted = 2,
    /// Spend events settled under a lease.
    SpendBatch = 3,
    /// An edge released a lease; the unspent part returned to the region.
    LeaseReleased = 4,
    /// The leader closed a lease its edge never released; the remainder went in doubt.
    LeaseReclaimed = 5,
    /// A reclaimed lease's late-acceptance window ended; what was in doubt returned.
    InDoubtReturned = 6,
    /// This region gave rights to another region.
    RightsTransferred = 7,
    /// A peer region's counter state was merged; its chain head witnessed.
    RemoteMerged = 8,
    /// Spend that broke a rule (over a lease, after the late window) — recorded, not hidden.
    Anomaly = 9,
    /// Bids reported lost by the exchange (loss notices); what they held goes back early.
    BidsLost = 10,
    /// The region's lease and reclaim rules were set (at `cluster init` or by an operator).
    ParamsSet = 11,
    /// Bids charged against a released lease's in-doubt money: what their reservations held
    /// beyond the charges goes back at once.
    RestReturned = 12,
    /// A day bucket's day is over and nothing holds its money: its final figures, and it leaves
    /// the live state.
    DayRetired = 13,
}

impl Kind {
    /// Every kind, in byte order.
    pub const ALL: [Kind; 13] = [
        Kind::BudgetSet,
        Kind::LeaseGranted,
        Kind::SpendBatch,
        Kind::LeaseReleased,
        Kind::LeaseReclaimed,
        Kind::InDoubtReturned,
        Kind::RightsTransferred,
        Kind::RemoteMerged,
        Kind::Anomaly,
        Kind::BidsLost,
        Kind::ParamsSet,
        Kind::RestReturned,
        Kind::DayRetired,
    ];

    /// The kind with byte `b`.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(b).wrapping_sub(1)).copied()
    }

    /// The snake_case name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::BudgetSet => "budget_set",
            Kind::LeaseGranted => "lease_granted",
            Kind::SpendBatch => "spend_batch",
            Kind::LeaseReleased => "lease_released",
            Kind::LeaseReclaimed => "lease_reclaimed",
            Kind::InDoubtReturned => "in_doubt_returned",
            Kind::RightsTransferred => "rights_transferred",
            Kind::RemoteMerged => "remote_merged",
            Kind::Anomaly => "anomaly",
            Kind::BidsLost => "bids_lost",
            Kind::ParamsSet => "params_set",
            Kind::RestReturned => "rest_returned",
            Kind::DayRetired => "day_retired",
        }
    }
}

/// One settled charge: our bid it pays for, the exchange's ids of the impression, and the amount
/// billed.
///
/// The charge's identity is our bid's: `(lease, bid)`, the lease named by the batch or anomaly
/// that carries the event and the bid's number within it (an edge numbers its bids under a
/// lease 1, 2, 3, …). The exchange's ids are kept for the auditor, but they are the exchange's
/// to choose and may repeat: two bids of ours with the same ids are two charges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendEvent {
    /// Our bid's number within its lease, ≥ 1.
    pub bid: u64,
    /// Exchange, auction id, impression id.
    pub key: EventKey,
    /// The clearing price charged, in micros; never negative.
    pub amount: Money,
}

impl SpendEvent {
    /// Canonical bytes: exchange, auction id, impression id (strings), bid number (`u64`),
    /// amount (`i64`).
    pub fn encode(&self, w: &mut Writer) {
        w.str(self.key.exchange());
        w.str(self.key.auction_id());
        w.str(self.key.imp_id());
        w.u64(self.bid);
        w.money(self.amount);
    }

    /// The length of [`SpendEvent::encode`]'s bytes: three `u16`-prefixed strings, a `u64` and
    /// an `i64`.
    pub fn encoded_len(&self) -> usize {
        let k = &self.key;
        6 + k.exchange().len() + k.auction_id().len() + k.imp_id().len() + 8 + 8
    }

    /// The canonical bytes alone.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes()
    }

    /// Decodes exactly `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<SpendEvent, DecodeError> {
        let mut r = Reader::new(bytes);
        let exchange: ExchangeId = r.id("event exchange")?;
        let auction = r.str("event auction id")?;
        let imp = r.str("event imp id")?;
        let key = EventKey::new(exchange, auction, imp)?;
        let bid = bid_number(&mut r, "event bid")?;
        let amount = r.money_nonneg("event amount")?;
        r.finish("event")?;
        Ok(SpendEvent { bid, key, amount })
    }

    /// Checks that `bytes` are one canonical event and returns its amount, without allocating.
    /// Equivalent to `decode(bytes).map(|e| e.amount)`, on the verification hot path.
    pub fn check(bytes: &[u8]) -> Result<Money, DecodeError> {
        match SpendEvent::check_fast(bytes) {
            Some(amount) => Ok(amount),
            // Anything unusual takes the slow path, which gives the precise error.
            None => SpendEvent::decode(bytes).map(|e| e.amount),
        }
    }

    /// The common case, on raw bytes: printable-ASCII ids. Anything else (including valid
    /// non-ASCII ids) returns `None` and takes the slow path.
    fn check_fast(bytes: &[u8]) -> Option<Money> {
        let mut r = Reader::new(bytes);
        let mut field = |max: usize, ok: fn(u8) -> bool| -> Option<()> {
            let len = usize::from(r.u16("").ok()?);
            let s = r.take(len, "").ok()?;
            (len > 0 && len <= max && s.iter().all(|b| ok(*b))).then_some(())
        };
        field(crate::id::NAME_ID_MAX_BYTES, crate::id::is_name_byte)?;
        let printable = |b: u8| (0x20..0x7f).contains(&b);
        field(crate::id::OPENRTB_ID_MAX_BYTES, printable)?;
        field(crate::id::OPENRTB_ID_MAX_BYTES, printable)?;
        if r.u64("").ok()? == 0 {
            return None;
        }
        let amount = r.money_nonneg("").ok()?;
        r.finish("").ok()?;
        Some(amount)
    }
}

/// A bid number: ≥ 1 (an edge numbers a lease's bids from 1).
fn bid_number(r: &mut Reader<'_>, what: &'static str) -> Result<u64, DecodeError> {
    let n = r.u64(what)?;
    if n == 0 {
        return Err(DecodeError::Invalid {
            what,
            detail: "bid numbers start at 1".into(),
        });
    }
    Ok(n)
}

/// `BudgetSet`: a bucket's budget changed from `before` to `after`; `after − before` of rights
/// were created in (or, if negative, burned from) this region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSet {
    /// The campaign.
    pub campaign: CampaignId,
    /// Its bucket.
    pub bucket: Bucket,
    /// The budget before.
    pub before: Money,
    /// The budget after.
    pub after: Money,
}

/// `LeaseGranted`: `amount` leased to `edge` against every bucket in `buckets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGranted {
    /// The new lease.
    pub lease: LeaseId,
    /// Who holds it.
    pub edge: EdgeId,
    /// For which campaign.
    pub campaign: CampaignId,
    /// The buckets debited (lifetime and the day's).
    pub buckets: Vec<Bucket>,
    /// How much.
    pub amount: Money,
    /// For how long the edge may reserve under it.
    pub duration_ms: u64,
}

/// `SpendBatch`: events settled under `lease`, reported by `edge` in batch `batch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendBatch {
    /// The lease charged.
    pub lease: LeaseId,
    /// The edge's batch id (a retried batch is settled once).
    pub batch: BatchId,
    /// The edge that reported it (any edge can settle a notice).
    pub edge: EdgeId,
    /// The events, in the order of the Merkle tree's leaves. At least one.
    pub events: Vec<SpendEvent>,
}

impl SpendBatch {
    /// The sum of the events' amounts.
    pub fn total(&self) -> Result<Money, MoneyError> {
        Money::checked_sum(self.events.iter().map(|e| e.amount))
    }

    /// The Merkle root over the events' canonical bytes.
    pub fn merkle_root(&self) -> Hash {
        let mut w = Writer::new();
        let leaves: Vec<Hash> = self
            .events
            .iter()
            .map(|e| {
                w.clear();
                e.encode(&mut w);
                merkle::leaf_hash(w.as_bytes())
            })
            .collect();
        merkle::root(&leaves)
    }
}

/// Money of a closed lease held for notices still to come: `amount` waits `wait_ms` (measured
/// from when the entry was applied, stretched by the leader for clock rate error) before it
/// returns to the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoubtPart {
    /// How long the bids it holds for may still be billed, ms from the release.
    pub wait_ms: u64,
    /// What it holds; positive.
    pub amount: Money,
}

/// The most in-doubt parts one release may hold.
pub const DOUBT_PARTS_MAX: usize = 64;

/// `LeaseReleased`: the edge is done with `lease`; `returned` went back to the region, and
/// `in_doubt` waits for the notices of bids still within their deadlines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReleased {
    /// The lease.
    pub lease: LeaseId,
    /// The edge's release batch id.
    pub batch: BatchId,
    /// Spend settled under the lease in all.
    pub spent: Money,
    /// The unspent amount returned.
    pub returned: Money,
    /// How many bids the edge made under the lease (numbered 1 to `bids`).
    pub bids: u64,
    /// What is held, by how long it waits: waits strictly increasing, amounts positive.
    pub in_doubt: Vec<DoubtPart>,
}

/// `LeaseReclaimed`: the leader closed `lease`; `in_doubt` is held for late notices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReclaimed {
    /// The lease.
    pub lease: LeaseId,
    /// Spend settled under it so far.
    pub spent: Money,
    /// Returned to the region now: the bids reported lost while it was open.
    pub returned: Money,
    /// The rest, now in doubt.
    pub in_doubt: Money,
    /// How long it waits, ms: the longest any of the lease's bids may still be billed.
    pub wait_ms: u64,
}

/// `InDoubtReturned`: the part of `lease`'s in-doubt money that waited `wait_ms` is over;
/// `returned` is available again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InDoubtReturned {
    /// The lease.
    pub lease: LeaseId,
    /// The part's wait, ms (as in its `lease_released` or `lease_reclaimed` entry).
    pub wait_ms: u64,
    /// What returned to the region.
    pub returned: Money,
}

/// `RightsTransferred`: this region gave `amount` of a bucket's rights to region `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RightsTransferred {
    /// The campaign.
    pub campaign: CampaignId,
    /// Its bucket.
    pub bucket: Bucket,
    /// The receiving region.
    pub to: RegionId,
    /// How much.
    pub amount: Money,
}

/// Rights a merge brought in for one bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The campaign.
    pub campaign: CampaignId,
    /// Its bucket.
    pub bucket: Bucket,
    /// Rights newly transferred to this region, as the merge revealed.
    pub amount: Money,
}

/// `RemoteMerged`: region `from`'s counter state was joined; its log head at `remote_seq` was
/// `remote_head`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMerged {
    /// The peer region.
    pub from: RegionId,
    /// The seq of the peer's last log entry when it sent its state.
    pub remote_seq: u64,
    /// That entry's hash.
    pub remote_head: Hash,
    /// Rights that arrived for this region, per bucket (may be empty).
    pub received: Vec<Received>,
}

/// Which rule a spend broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum AnomalyKind {
    /// The event would have taken spend under a lease past the lease amount.
    OverLease = 1,
    /// The notice came after the lease's late-acceptance window.
    LateSpend = 2,
    /// A charge for one of our bids that contradicts what was already known of it: another
    /// price than its first charge, or a bid the exchange reported lost (on a lease whose
    /// money for it has gone back). Not settled.
    Conflict = 3,
}

impl AnomalyKind {
    /// The kind with byte `b`.
    pub fn from_u8(b: u8) -> Option<AnomalyKind> {
        match b {
            1 => Some(AnomalyKind::OverLease),
            2 => Some(AnomalyKind::LateSpend),
            3 => Some(AnomalyKind::Conflict),
            _ => None,
        }
    }

    /// The snake_case name used in reports, metrics and JSON.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::OverLease => "over_lease",
            AnomalyKind::LateSpend => "late_spend",
            AnomalyKind::Conflict => "conflict",
        }
    }
}

/// `Anomaly`: a charge that broke a rule, recorded so that it is seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Which rule it broke.
    pub rule: AnomalyKind,
    /// The lease named by the notice.
    pub lease: LeaseId,
    /// The charge.
    pub event: SpendEvent,
}

/// `BidsLost`: the exchange reported `count` bids under `lease` lost (loss notices reported in
/// batch `batch`); their reservations, `bid_total` in all, can no longer be charged. `returned`
/// of it went back to the region now (from the lease's in-doubt money); the rest is deducted
/// when the lease is released.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidsLost {
    /// The lease.
    pub lease: LeaseId,
    /// The edge's batch id.
    pub batch: BatchId,
    /// How many bids, newly known lost.
    pub count: u32,
    /// Their bid prices, summed.
    pub bid_total: Money,
    /// What returned to the region by this entry.
    pub returned: Money,
}

/// `RestReturned`: `count` bids charged in batch `batch` under `lease` after its release,
/// whose whole bid prices its in-doubt money held (the edge that released it had seen no notice
/// for them). A bid is charged its clearing price; `returned`, the rest of their reservations
/// (bid prices less charges), went back to the region at once, from the in-doubt parts (shortest
/// wait first), as a loss notice returns a lost bid's whole price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestReturned {
    /// The lease.
    pub lease: LeaseId,
    /// The edge's batch id (its `spend_batch` comes just before, when it settled anything).
    pub batch: BatchId,
    /// How many charged bids gave back a rest.
    pub count: u32,
    /// What returned to the region by this entry (≥ 1 micro).
    pub returned: Money,
}

/// `DayRetired`: the day of a campaign's day bucket is over (by the leader's stamp, past the
/// late-acceptance and settlement windows) and no lease holds money of it: the bucket leaves the
/// region's live state, and no lease, transfer or peer's push brings it back. Its final figures
/// here: the budget its home set (0 if this region only received rights), what settled in this
/// region, what settled in every region as this one last heard, and what lapsed here unspent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayRetired {
    /// The campaign.
    pub campaign: CampaignId,
    /// The day bucket.
    pub bucket: Bucket,
    /// The day's budget, as its home set it (0 where it was not set).
    pub budget: Money,
    /// Settled in this region.
    pub settled_here: Money,
    /// Settled in every region, as this one last heard.
    pub settled_all: Money,
    /// This region's rights of the day that nobody spent: they lapse.
    pub lapsed: Money,
}

/// The region's lease and reclaim rules: replicated state, the same on every replica, changed
/// only by a `params_set` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseParams {
    /// How long an edge may reserve under a lease, ms.
    pub lease_duration_ms: u64,
    /// `W`: how long an edge keeps a lease after its spending window for the first notices of
    /// its bids before releasing it, ms.
    pub settlement_window_ms: u64,
    /// Taken off every spending window for clock rate error: at least
    /// `lease_duration_ms × clock_rate_error_ppm / 10⁶`, ms.
    pub margin_ms: u64,
    /// How long in-doubt money waits for late notices past the deadlines of its bids, ms.
    pub late_acceptance_ms: u64,
    /// The `exp` assumed for an impression that has none, ms.
    pub default_exp_ms: u64,
    /// The longest `exp` bid on; impressions with a longer one are skipped, ms.
    pub max_exp_ms: u64,
    /// The longest `tmax` bid on (a bid's deadline counts from the auction, at most `tmax`
    /// after the request), ms.
    pub max_tmax_ms: u64,
    /// The largest clock rate error allowed for between two machines, parts per million.
    pub clock_rate_error_ppm: u32,
    /// One lease takes at most `available / lease_share_divisor` …
    pub lease_share_divisor: u32,
    /// … but never less than this (or what is left), so that the last micros get spent.
    pub lease_min: Money,
    /// Closed leases remembered for dedup and late notices, oldest forgotten first.
    pub closed_leases_retained: u64,
    /// Idempotency keys remembered, oldest forgotten first.
    pub requests_retained: u64,
}

impl Default for LeaseParams {
    /// Rules for real exchange traffic: 30 s leases, impressions with `exp` up to an hour.
    fn default() -> Self {
        LeaseParams {
            lease_duration_ms: 30_000,
            settlement_window_ms: 10_000,
            margin_ms: 2_000,
            late_acceptance_ms: 60_000,
            default_exp_ms: 300_000,
            max_exp_ms: 3_600_000,
            max_tmax_ms: 5_000,
            clock_rate_error_ppm: 1_000,
            lease_share_divisor: 4,
            // 0.1 currency units: about a hundred bids at a 1.00 CPM.
            lease_min: Money::from_micros(100_000),
            closed_leases_retained: 100_000,
            requests_retained: 1_000_000,
        }
    }
}

/// The longest `exp` a region may allow, ms: one day.
pub const MAX_EXP_LIMIT_MS: u64 = 86_400_000;

impl LeaseParams {
    /// Checks that the rules make sense together; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("lease_duration_ms", self.lease_duration_ms),
            ("max_tmax_ms", self.max_tmax_ms),
            ("lease_share_divisor", u64::from(self.lease_share_divisor)),
            ("closed_leases_retained", self.closed_leases_retained),
            ("requests_retained", self.requests_retained),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name}: must be positive"));
            }
        }
        if self.lease_min.micros() < 1 {
            return Err(format!(
                "lease_min: must be positive, got {}",
                self.lease_min
            ));
        }
        if self.clock_rate_error_ppm >= 200_000 {
            return Err(format!(
                "clock_rate_error_ppm: {} is 20 % or more; clocks that far off are broken",
                self.clock_rate_error_ppm
            ));
        }
        let least_margin = (u128::from(self.lease_duration_ms)
            * u128::from(self.clock_rate_error_ppm))
        .div_ceil(1_000_000);
        if u128::from(self.margin_ms) < least_margin {
            return Err(format!(
                "margin_ms: {} is less than lease_duration_ms × clock_rate_error_ppm = {least_margin}",
                self.margin_ms
            ));
        }
        if self.margin_ms >= self.lease_duration_ms {
            return Err(format!(
                "margin_ms: {} leaves no spending window of a {} ms lease",
                self.margin_ms, self.lease_duration_ms
            ));
        }
        if self.max_exp_ms > MAX_EXP_LIMIT_MS {
            return Err(format!(
                "max_exp_ms: {} is more than a day ({MAX_EXP_LIMIT_MS})",
                self.max_exp_ms
            ));
        }
        if self.default_exp_ms > self.max_exp_ms {
            return Err(format!(
                "default_exp_ms: {} is more than max_exp_ms {}",
                self.default_exp_ms, self.max_exp_ms
            ));
        }
        if self.max_tmax_ms > 60_000 {
            return Err(format!(
                "max_tmax_ms: {} is more than a minute",
                self.max_tmax_ms
            ));
        }
        Ok(())
    }
}

/// `ParamsSet`: the region's rules are now `params`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamsSet {
    /// The rules.
    pub params: LeaseParams,
}

/// The kind-specific part of an entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// See [`BudgetSet`].
    BudgetSet(BudgetSet),
    /// See [`LeaseGranted`].
    LeaseGranted(LeaseGranted),
    /// See [`SpendBatch`].
    SpendBatch(SpendBatch),
    /// See [`LeaseReleased`].
    LeaseReleased(LeaseReleased),
    /// See [`LeaseReclaimed`].
    LeaseReclaimed(LeaseReclaimed),
    /// See [`InDoubtReturned`].
    InDoubtReturned(InDoubtReturned),
    /// See [`RightsTransferred`].
    RightsTransferred(RightsTransferred),
    /// See [`RemoteMerged`].
    RemoteMerged(RemoteMerged),
    /// See [`Anomaly`].
    Anomaly(Anomaly),
    /// See [`BidsLost`].
    BidsLost(BidsLost),
    /// See [`ParamsSet`].
    ParamsSet(ParamsSet),
    /// See [`RestReturned`].
    RestReturned(RestReturned),
    /// See [`DayRetired`].
    DayRetired(DayRetired),
}

/// Why a payload could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A spend batch with no events.
    #[error("a spend batch must hold at least one event")]
    EmptyBatch,
    /// Too many of something.
    #[error("{what}: {count} is more than the {max} allowed")]
    TooMany {
        /// What.
        what: &'static str,
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A negative amount where only non-negative ones are allowed.
    #[error("{0}: negative amount")]
    Negative(&'static str),
    /// The events' total overflows.
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// A value the format does not allow.
    #[error("{0}")]
    Invalid(&'static str),
}

fn nonneg(what: &'static str, m: Money) -> Result<(), EncodeError> {
    if m.is_negative() {
        Err(EncodeError::Negative(what))
    } else {
        Ok(())
    }
}

fn count_u32(what: &'static str, count: usize, max: usize) -> Result<u32, EncodeError> {
    if count > max {
        return Err(EncodeError::TooMany { what, count, max });
    }
    // count ≤ max ≤ 65,536 fits in u32.
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

impl Payload {
    /// The entry kind.
    pub fn kind(&self) -> Kind {
        match self {
            Payload::BudgetSet(_) => Kind::BudgetSet,
            Payload::LeaseGranted(_) => Kind::LeaseGranted,
            Payload::SpendBatch(_) => Kind::SpendBatch,
            Payload::LeaseReleased(_) => Kind::LeaseReleased,
            Payload::LeaseReclaimed(_) => Kind::LeaseReclaimed,
            Payload::InDoubtReturned(_) => Kind::InDoubtReturned,
            Payload::RightsTransferred(_) => Kind::RightsTransferred,
            Payload::RemoteMerged(_) => Kind::RemoteMerged,
            Payload::Anomaly(_) => Kind::Anomaly,
            Payload::BidsLost(_) => Kind::BidsLost,
            Payload::ParamsSet(_) => Kind::ParamsSet,
            Payload::RestReturned(_) => Kind::RestReturned,
            Payload::DayRetired(_) => Kind::DayRetired,
        }
    }

    /// The payload's canonical bytes (for a spend batch: count, total and Merkle root, not the
    /// events).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::new();
        match self {
            Payload::BudgetSet(p) => {
                nonneg("budget before", p.before)?;
                nonneg("budget after", p.after)?;
                w.str(p.campaign.as_str());
                w.bucket(&p.bucket);
                w.money(p.before);
                w.money(p.after);
            }
            Payload::LeaseGranted(p) => {
                nonneg("lease amount", p.amount)?;
                w.u64(p.lease.0);
                w.str(p.edge.as_str());
                w.str(p.campaign.as_str());
                w.u32(count_u32("lease buckets", p.buckets.len(), BUCKETS_MAX)?);
                for b in &p.buckets {
                    w.bucket(b);
                }
                w.money(p.amount);
                w.u64(p.duration_ms);
            }
            Payload::SpendBatch(p) => {
                if p.events.is_empty() {
                    return Err(EncodeError::EmptyBatch);
                }
                for e in &p.events {
                    nonneg("event amount", e.amount)?;
                }
                w.u64(p.lease.0);
                w.batch(&p.batch);
                w.str(p.edge.as_str());
                w.u32(count_u32("batch events", p.events.len(), BATCH_EVENTS_MAX)?);
                w.money(p.total()?);
                w.hash(&p.merkle_root());
            }
            Payload::LeaseReleased(p) => {
                nonneg("spent", p.spent)?;
                nonneg("returned", p.returned)?;
                w.u64(p.lease.0);
                w.batch(&p.batch);
                w.money(p.spent);
                w.money(p.returned);
                w.u64(p.bids);
                w.u32(count_u32(
                    "in-doubt parts",
                    p.in_doubt.len(),
                    DOUBT_PARTS_MAX,
                )?);
                let mut last: Option<u64> = None;
                for part in &p.in_doubt {
                    if part.amount.micros() <= 0 {
                        return Err(EncodeError::Invalid("an in-doubt part holds no money"));
                    }
                    if last.is_some_and(|l| part.wait_ms <= l) {
                        return Err(EncodeError::Invalid(
                            "in-doubt parts must have strictly increasing waits",
                        ));
                    }
                    last = Some(part.wait_ms);
                    w.u64(part.wait_ms);
                    w.money(part.amount);
                }
            }
            Payload::LeaseReclaimed(p) => {
                nonneg("spent", p.spent)?;
                nonneg("returned", p.returned)?;
                nonneg("in doubt", p.in_doubt)?;
                w.u64(p.lease.0);
                w.money(p.spent);
                w.money(p.returned);
                w.money(p.in_doubt);
                w.u64(p.wait_ms);
            }
            Payload::InDoubtReturned(p) => {
                nonneg("returned", p.returned)?;
                w.u64(p.lease.0);
                w.u64(p.wait_ms);
                w.money(p.returned);
            }
            Payload::RightsTransferred(p) => {
                nonneg("transfer amount", p.amount)?;
                w.str(p.campaign.as_str());
                w.bucket(&p.bucket);
                w.str(p.to.as_str());
                w.money(p.amount);
            }
            Payload::RemoteMerged(p) => {
                w.str(p.from.as_str());
                w.u64(p.remote_seq);
                w.hash(&p.remote_head);
                w.u32(count_u32("merge buckets", p.received.len(), BUCKETS_MAX)?);
                for r in &p.received {
                    nonneg("received", r.amount)?;
                    w.str(r.campaign.as_str());
                    w.bucket(&r.bucket);
                    w.money(r.amount);
                }
            }
            Payload::Anomaly(p) => {
                nonneg("event amount", p.event.amount)?;
                if p.event.bid == 0 {
                    return Err(EncodeError::Invalid("bid numbers start at 1"));
                }
                w.u8(p.rule as u8);
                w.u64(p.lease.0);
                p.event.encode(&mut w);
            }
            Payload::BidsLost(p) => {
                nonneg("bid total", p.bid_total)?;
                nonneg("returned", p.returned)?;
                if p.count == 0 {
                    return Err(EncodeError::Invalid(
                        "a bids_lost entry names at least one bid",
                    ));
                }
                if p.returned > p.bid_total {
                    return Err(EncodeError::Invalid(
                        "more returned than the lost bids held",
                    ));
                }
                w.u64(p.lease.0);
                w.batch(&p.batch);
                w.u32(p.count);
                w.money(p.bid_total);
                w.money(p.returned);
            }
            Payload::ParamsSet(p) => {
                let q = &p.params;
                nonneg("lease min", q.lease_min)?;
                w.u64(q.lease_duration_ms);
                w.u64(q.settlement_window_ms);
                w.u64(q.margin_ms);
                w.u64(q.late_acceptance_ms);
                w.u64(q.default_exp_ms);
                w.u64(q.max_exp_ms);
                w.u64(q.max_tmax_ms);
                w.u32(q.clock_rate_error_ppm);
                w.u32(q.lease_share_divisor);
                w.money(q.lease_min);
                w.u64(q.closed_leases_retained);
                w.u64(q.requests_retained);
            }
            Payload::RestReturned(p) => {
                if p.count == 0 {
                    return Err(EncodeError::Invalid(
                        "a rest_returned entry names at least one bid",
                    ));
                }
                if p.returned.micros() <= 0 {
                    return Err(EncodeError::Invalid(
                        "a rest_returned entry returns at least one micro",
                    ));
                }
                w.u64(p.lease.0);
                w.batch(&p.batch);
                w.u32(p.count);
                w.money(p.returned);
            }
            Payload::DayRetired(p) => {
                if !matches!(p.bucket, Bucket::Day(_)) {
                    return Err(EncodeError::Invalid(
                        "a day_retired entry names a day bucket",
                    ));
                }
                nonneg("budget", p.budget)?;
                nonneg("settled here", p.settled_here)?;
                nonneg("settled in all regions", p.settled_all)?;
                nonneg("lapsed", p.lapsed)?;
                w.str(p.campaign.as_str());
                w.bucket(&p.bucket);
                w.money(p.budget);
                w.money(p.settled_here);
                w.money(p.settled_all);
                w.money(p.lapsed);
            }
        }
        Ok(w.into_bytes())
    }

    /// Decodes a payload of `kind` from exactly `bytes`. A spend batch comes back with its
    /// events empty and their summary in the returned [`BatchSummary`]; the caller attaches the
    /// events and checks them against it.
    pub fn decode(
        kind: Kind,
        bytes: &[u8],
    ) -> Result<(Payload, Option<BatchSummary>), DecodeError> {
        let mut r = Reader::new(bytes);
        let mut summary = None;
        let payload = match kind {
            Kind::BudgetSet => Payload::BudgetSet(BudgetSet {
                campaign: r.id("campaign")?,
                bucket: r.bucket("bucket")?,
                before: r.money_nonneg("budget before")?,
                after: r.money_nonneg("budget after")?,
            }),
            Kind::LeaseGranted => {
                let lease = LeaseId(r.u64("lease")?);
                let edge = r.id("edge")?;
                let campaign = r.id("campaign")?;
                let n = bounded(r.u32("bucket count")?, BUCKETS_MAX, "bucket count")?;
                let buckets = (0..n)
                    .map(|_| r.bucket("bucket"))
                    .collect::<Result<_, _>>()?;
                Payload::LeaseGranted(LeaseGranted {
                    lease,
                    edge,
                    campaign,
                    buckets,
                    amount: r.money_nonneg("lease amount")?,
                    duration_ms: r.u64("duration")?,
                })
            }
            Kind::SpendBatch => {
                let lease = LeaseId(r.u64("lease")?);
                let batch = r.batch("batch id")?;
                let edge = r.id("edge")?;
                let count = bounded(r.u32("event count")?, BATCH_EVENTS_MAX, "event count")?;
                if count == 0 {
                    return Err(DecodeError::Invalid {
                        what: "event count",
                        detail: "a spend batch holds at least one event".into(),
                    });
                }
                let total = r.money_nonneg("batch total")?;
                let merkle_root = r.hash("merkle root")?;
                summary = Some(BatchSummary {
                    count,
                    total,
                    merkle_root,
                });
                Payload::SpendBatch(SpendBatch {
                    lease,
                    batch,
                    edge,
                    events: Vec::new(),
                })
            }
            Kind::LeaseReleased => {
                let lease = LeaseId(r.u64("lease")?);
                let batch = r.batch("batch id")?;
                let spent = r.money_nonneg("spent")?;
                let returned = r.money_nonneg("returned")?;
                let bids = r.u64("bids")?;
                let n = bounded(r.u32("part count")?, DOUBT_PARTS_MAX, "part count")?;
                let mut in_doubt: Vec<DoubtPart> = Vec::with_capacity(n);
                for _ in 0..n {
                    let wait_ms = r.u64("part wait")?;
                    let amount = r.money_nonneg("part amount")?;
                    if amount.micros() == 0 {
                        return Err(DecodeError::Invalid {
                            what: "part amount",
                            detail: "an in-doubt part holds no money".into(),
                        });
                    }
                    if in_doubt.last().is_some_and(|l| wait_ms <= l.wait_ms) {
                        return Err(DecodeError::Invalid {
                            what: "part wait",
                            detail: "in-doubt parts must have strictly increasing waits".into(),
                        });
                    }
                    in_doubt.push(DoubtPart { wait_ms, amount });
                }
                Payload::LeaseReleased(LeaseReleased {
                    lease,
                    batch,
                    spent,
                    returned,
                    bids,
                    in_doubt,
                })
            }
            Kind::LeaseReclaimed => Payload::LeaseReclaimed(LeaseReclaimed {
                lease: LeaseId(r.u64("lease")?),
                spent: r.money_nonneg("spent")?,
                returned: r.money_nonneg("returned")?,
                in_doubt: r.money_nonneg("in doubt")?,
                wait_ms: r.u64("wait")?,
            }),
            Kind::InDoubtReturned => Payload::InDoubtReturned(InDoubtReturned {
                lease: LeaseId(r.u64("lease")?),
                wait_ms: r.u64("wait")?,
                returned: r.money_nonneg("returned")?,
            }),
            Kind::RightsTransferred => Payload::RightsTransferred(RightsTransferred {
                campaign: r.id("campaign")?,
                bucket: r.bucket("bucket")?,
                to: r.id("to region")?,
                amount: r.money_nonneg("transfer amount")?,
            }),
            Kind::RemoteMerged => {
                let from = r.id("from region")?;
                let remote_seq = r.u64("remote seq")?;
                let remote_head = r.hash("remote head")?;
                let n = bounded(r.u32("bucket count")?, BUCKETS_MAX, "bucket count")?;
                let mut received = Vec::with_capacity(n);
                for _ in 0..n {
                    received.push(Received {
                        campaign: r.id("campaign")?,
                        bucket: r.bucket("bucket")?,
                        amount: r.money_nonneg("received")?,
                    });
                }
                Payload::RemoteMerged(RemoteMerged {
                    from,
                    remote_seq,
                    remote_head,
                    received,
                })
            }
            Kind::Anomaly => {
                let k = r.u8("anomaly rule")?;
                let rule = AnomalyKind::from_u8(k).ok_or_else(|| DecodeError::Invalid {
                    what: "anomaly rule",
                    detail: format!("unknown anomaly rule {k}"),
                })?;
                let lease = LeaseId(r.u64("lease")?);
                let rest = r.take(r.remaining(), "event")?;
                Payload::Anomaly(Anomaly {
                    rule,
                    lease,
                    event: SpendEvent::decode(rest)?,
                })
            }
            Kind::BidsLost => {
                let lease = LeaseId(r.u64("lease")?);
                let batch = r.batch("batch id")?;
                let count = r.u32("count")?;
                if count == 0 {
                    return Err(DecodeError::Invalid {
                        what: "count",
                        detail: "a bids_lost entry names at least one bid".into(),
                    });
                }
                let bid_total = r.money_nonneg("bid total")?;
                let returned = r.money_nonneg("returned")?;
                if returned > bid_total {
                    return Err(DecodeError::Invalid {
                        what: "returned",
                        detail: format!("{returned} returned of lost bids holding {bid_total}"),
                    });
                }
                Payload::BidsLost(BidsLost {
                    lease,
                    batch,
                    count,
                    bid_total,
                    returned,
                })
            }
            Kind::ParamsSet => Payload::ParamsSet(ParamsSet {
                params: LeaseParams {
                    lease_duration_ms: r.u64("lease duration")?,
                    settlement_window_ms: r.u64("settlement window")?,
                    margin_ms: r.u64("margin")?,
                    late_acceptance_ms: r.u64("late acceptance")?,
                    default_exp_ms: r.u64("default exp")?,
                    max_exp_ms: r.u64("max exp")?,
                    max_tmax_ms: r.u64("max tmax")?,
                    clock_rate_error_ppm: r.u32("clock rate error")?,
                    lease_share_divisor: r.u32("lease share divisor")?,
                    lease_min: r.money_nonneg("lease min")?,
                    closed_leases_retained: r.u64("closed leases retained")?,
                    requests_retained: r.u64("requests retained")?,
                },
            }),
            Kind::RestReturned => {
                let lease = LeaseId(r.u64("lease")?);
                let batch = r.batch("batch id")?;
                let count = r.u32("count")?;
                if count == 0 {
                    return Err(DecodeError::Invalid {
                        what: "count",
                        detail: "a rest_returned entry names at least one bid".into(),
                    });
                }
                let returned = r.money_nonneg("returned")?;
                if returned.micros() == 0 {
                    return Err(DecodeError::Invalid {
                        what: "returned",
                        detail: "a rest_returned entry returns at least one micro".into(),
                    });
                }
                Payload::RestReturned(RestReturned {
                    lease,
                    batch,
                    count,
                    returned,
                })
            }
            Kind::DayRetired => {
                let campaign = r.id("campaign")?;
                let bucket = r.bucket("bucket")?;
                if !matches!(bucket, Bucket::Day(_)) {
                    return Err(DecodeError::Invalid {
                        what: "bucket",
                        detail: "a day_retired entry names a day bucket".into(),
                    });
                }
                Payload::DayRetired(DayRetired {
                    campaign,
                    bucket,
                    budget: r.money_nonneg("budget")?,
                    settled_here: r.money_nonneg("settled here")?,
                    settled_all: r.money_nonneg("settled in all regions")?,
                    lapsed: r.money_nonneg("lapsed")?,
                })
            }
        };
        r.finish("payload")?;
        Ok((payload, summary))
    }
}

fn bounded(n: u32, max: usize, what: &'static str) -> Result<usize, DecodeError> {
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    if n > max {
        return Err(DecodeError::Invalid {
            what,
            detail: format!("{n} is more than the {max} allowed"),
        });
    }
    Ok(n)
}

/// What a spend batch's body says about its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSummary {
    /// How many events.
    pub count: usize,
    /// Their total.
    pub total: Money,
    /// Their Merkle root.
    pub merkle_root: Hash,
}

/// One entry of the financial log, without its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the region's log: 0, 1, 2, … with no gaps.
    pub seq: u64,
    /// Hash of entry `seq − 1`, or [`genesis`] for entry 0.
    #[serde(with = "hex_hash")]
    pub prev_hash: Hash,
    /// Raft term of the command that produced the entry.
    pub raft_term: u64,
    /// Raft log index of that command.
    pub raft_index: u64,
    /// Wall-clock time the leader stamped into the command, in microseconds since the Unix
    /// epoch. For reports only: nothing checks it.
    pub time_us: i64,
    /// What happened.
    #[serde(flatten)]
    pub payload: Payload,
}

impl Entry {
    /// The entry's canonical body bytes.
    pub fn body(&self) -> Result<Vec<u8>, EncodeError> {
        let payload = self.payload.encode()?;
        // The payload limit is far above anything encode produces for bounded inputs.
        let len = count_u32("payload bytes", payload.len(), PAYLOAD_MAX_BYTES)?;
        let mut w = Writer::new();
        w.u8(ENTRY_VERSION);
        w.u64(self.seq);
        w.u64(self.raft_term);
        w.u64(self.raft_index);
        w.i64(self.time_us);
        w.u8(self.payload.kind() as u8);
        w.u32(len);
        w.raw(&payload);
        Ok(w.into_bytes())
    }

    /// The entry's hash.
    pub fn hash(&self) -> Result<Hash, EncodeError> {
        Ok(entry_hash(&self.prev_hash, &body_digest(&self.body()?)))
    }
}

/// The fixed fields of a body, borrowed; the payload undecoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyRef<'a> {
    /// `seq`.
    pub seq: u64,
    /// `raft_term`.
    pub raft_term: u64,
    /// `raft_index`.
    pub raft_index: u64,
    /// `time_us`.
    pub time_us: i64,
    /// `kind`.
    pub kind: Kind,
    /// The payload bytes.
    pub payload: &'a [u8],
}

impl<'a> BodyRef<'a> {
    /// Parses a whole body: version 1, a known kind, exactly `payload_len` payload bytes.
    pub fn parse(body: &'a [u8]) -> Result<BodyRef<'a>, DecodeError> {
        let mut r = Reader::new(body);
        let version = r.u8("version")?;
        if version != ENTRY_VERSION {
            return Err(DecodeError::Invalid {
                what: "version",
                detail: format!("unknown entry version {version}"),
            });
        }
        let seq = r.u64("seq")?;
        let raft_term = r.u64("raft term")?;
        let raft_index = r.u64("raft index")?;
        let time_us = r.i64("time")?;
        let kind_byte = r.u8("kind")?;
        let kind = Kind::from_u8(kind_byte).ok_or_else(|| DecodeError::Invalid {
            what: "kind",
            detail: format!("unknown entry kind {kind_byte}"),
        })?;
        let len = bounded(
            r.u32("payload length")?,
            PAYLOAD_MAX_BYTES,
            "payload length",
        )?;
        let payload = r.take(len, "payload")?;
        r.finish("body")?;
        Ok(BodyRef {
            seq,
            raft_term,
            raft_index,
            time_us,
            kind,
            payload,
        })
    }
}

/// Hashes as lowercase hex in JSON.
pub mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Hash;

    /// Writes 64 hex digits.
    pub fn serialize<S: Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }

    /// Reads 64 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        super::super::parse_hash(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(auction: &str, amount: i64) -> SpendEvent {
        SpendEvent {
            bid: 7,
            key: EventKey::new("adx".parse().unwrap(), auction, "1").unwrap(),
            amount: Money::from_micros(amount),
        }
    }

    #[test]
    fn kinds_number_from_one() {
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(Kind::from_u8(i as u8 + 1), Some(*k));
            assert_eq!(*k as u8, i as u8 + 1);
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(14), None);
    }

    #[test]
    fn event_check_agrees_with_decode() {
        let good = event("a-1", 1500).to_bytes();
        assert_eq!(event("a-1", 1500).encoded_len(), good.len());
        assert_eq!(SpendEvent::check(&good), Ok(Money::from_micros(1500)));
        assert_eq!(SpendEvent::decode(&good).unwrap(), event("a-1", 1500));
        let mut bad_name = good.clone();
        bad_name[2] = b'/';
        assert!(SpendEvent::check(&bad_name).is_err());
        assert!(SpendEvent::decode(&bad_name).is_err());
        let mut negative = good.clone();
        let n = negative.len();
        negative[n - 8] = 0x80;
        assert!(SpendEvent::check(&negative).is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(SpendEvent::check(&longer).is_err());
        // Non-ASCII ids are valid and take the slow path; DEL is a control character.
        let unicode = SpendEvent {
            bid: 1,
            key: EventKey::new("adx".parse().unwrap(), "enchère-1", "1").unwrap(),
            amount: Money::from_micros(9),
        };
        assert_eq!(
            SpendEvent::check(&unicode.to_bytes()),
            Ok(Money::from_micros(9))
        );
        // Bid numbers start at 1.
        let mut zero = good.clone();
        let n = zero.len();
        zero[n - 16..n - 8].fill(0);
        assert!(SpendEvent::check(&zero).is_err());
        assert!(SpendEvent::decode(&zero).is_err());
        let mut del = event("a-1", 1).to_bytes();
        let i = del.iter().position(|b| *b == b'-').unwrap();
        del[i] = 0x7f;
        assert!(SpendEvent::check(&del).is_err());
    }

    #[test]
    fn empty_or_negative_payloads_are_not_encoded() {
        let batch = SpendBatch {
            lease: LeaseId(1),
            batch: BatchId([0; 16]),
            edge: "e1".parse().unwrap(),
            events: vec![],
        };
        assert_eq!(
            Payload::SpendBatch(batch).encode(),
            Err(EncodeError::EmptyBatch)
        );
        let neg = InDoubtReturned {
            lease: LeaseId(1),
            wait_ms: 0,
            returned: Money::from_micros(-1),
        };
        assert_eq!(
            Payload::InDoubtReturned(neg).encode(),
            Err(EncodeError::Negative("returned"))
        );
    }

    #[test]
    fn in_doubt_parts_are_canonical() {
        let part = |wait_ms, micros| DoubtPart {
            wait_ms,
            amount: Money::from_micros(micros),
        };
        let released = |in_doubt| {
            Payload::LeaseReleased(LeaseReleased {
                lease: LeaseId(3),
                batch: BatchId([1; 16]),
                spent: Money::from_micros(5),
                returned: Money::from_micros(6),
                bids: 4,
                in_doubt,
            })
        };
        let good = released(vec![part(1_000, 10), part(60_000, 20)]);
        let bytes = good.encode().unwrap();
        assert_eq!(
            Payload::decode(Kind::LeaseReleased, &bytes).unwrap().0,
            good
        );
        for bad in [
            vec![part(60_000, 20), part(1_000, 10)],
            vec![part(1_000, 10), part(1_000, 20)],
            vec![part(1_000, 0)],
        ] {
            assert!(released(bad.clone()).encode().is_err(), "{bad:?}");
        }
        // The same refusals on the decoding side: swap the two parts' bytes.
        let mut swapped = bytes.clone();
        let parts = bytes.len() - 32;
        swapped[parts..parts + 16].copy_from_slice(&bytes[parts + 16..]);
        swapped[parts + 16..].copy_from_slice(&bytes[parts..parts + 16]);
        assert!(Payload::decode(Kind::LeaseReleased, &swapped).is_err());
    }
}
