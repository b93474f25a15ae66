//! Leases: the record the ledger keeps, and how big a new one is.

use serde::{Deserialize, Serialize};
use shared::bucket::Bucket;
use shared::{CampaignId, EdgeId, EventKey, Money};

use super::Params;
use super::command::RequestKey;

/// Where a lease is in its life (DESIGN §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LeaseState {
    /// The edge may spend under it.
    Open,
    /// Reclaimed by the leader; `remaining` is held for late notices.
    InDoubt {
        /// What late notices may still settle against.
        remaining: Money,
    },
    /// Released, or its late-acceptance window is over.
    Closed,
}

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The edge that holds it.
    pub edge: EdgeId,
    /// Its campaign.
    pub campaign: CampaignId,
    /// The buckets it debits: lifetime, and the day's if the campaign has one.
    pub buckets: Vec<Bucket>,
    /// How much was leased.
    pub amount: Money,
    /// Settled under it so far.
    pub spent: Money,
    /// Open, in doubt or closed.
    pub state: LeaseState,
    /// How long the edge may reserve under it.
    pub duration_ms: u64,
    /// The Raft index that granted it.
    pub granted_at_index: u64,
    /// Event keys charged under it (dropped with the lease), one list per report that charged
    /// any. Not persisted in the lease's row: each list is a row of its own (written once, when
    /// charged), and the lists are rebuilt at load from those rows, which name their lease.
    #[serde(skip)]
    pub events: Vec<Vec<EventKey>>,
    /// Idempotency keys of its commands (dropped with the lease). Not persisted in the lease's
    /// row: rebuilt at load from the request rows, which name their lease.
    #[serde(skip)]
    pub requests: Vec<RequestKey>,
    /// When it was fully closed, in the ledger's order of retirements (oldest forgotten first).
    pub retired: Option<u64>,
}

/// How much to lease: `min(want, target, cap)`, where
///
/// - `target` is twice what the edge spent under its last lease of this campaign (its
///   velocity), but at least `lease_min`; with no history, what it asks for;
/// - `cap` is `available / lease_share_divisor`, so that one edge cannot take everything while
///   others wait, but at least `min(available, lease_min)`: near exhaustion leases shrink, yet
///   the last micros can still be leased and spent.
pub fn size(want: Money, available: Money, last_spent: Option<Money>, p: &Params) -> Money {
    if want.micros() <= 0 || available.micros() <= 0 {
        return Money::ZERO;
    }
    let target = match last_spent {
        Some(s) => s.checked_mul(2).unwrap_or(Money::MAX).max(p.lease_min),
        None => want,
    };
    let share = Money::from_micros(available.micros() / p.lease_share_divisor.max(1));
    let cap = share.max(available.min(p.lease_min));
    want.min(target).min(cap).min(available)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(n: i64) -> Money {
        Money::from_micros(n)
    }

    #[track_caller]
    fn check(want: i64, available: i64, last: Option<i64>, expected: i64) {
        let p = Params {
            lease_min: m(100),
            lease_share_divisor: 4,
            ..Params::default()
        };
        assert_eq!(
            size(m(want), m(available), last.map(m), &p),
            m(expected),
            "want {want} available {available} last {last:?}"
        );
    }

    #[test]
    fn lease_sizes() {
        check(1_000, 100_000, None, 1_000); // what was asked
        check(50_000, 100_000, None, 25_000); // at most a quarter of what is available
        check(50_000, 100_000, Some(3_000), 6_000); // twice the last lease's spend
        check(50_000, 100_000, Some(10), 100); // but at least the minimum
        check(1_000, 300, None, 100); // near exhaustion: the minimum…
        check(1_000, 60, None, 60); // …or the last micros
        check(1_000, 0, None, 0);
        check(0, 1_000, None, 0);
        check(-5, 1_000, None, 0);
        check(i64::MAX, i64::MAX, Some(i64::MAX), i64::MAX / 4);
    }
}
