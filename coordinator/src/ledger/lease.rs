//! Leases: the record the ledger keeps, the terms an edge holds one under, and how big a new
//! one is.

use serde::{Deserialize, Serialize};
use shared::bucket::Bucket;
use shared::log::entry::DoubtPart;
use shared::{CampaignId, EdgeId, Money};

use super::command::RequestKey;
use super::marks::ClosedMarks;
use super::{Mark, Params};

/// Where a lease is in its life (DESIGN §5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LeaseState {
    /// The edge may spend under it.
    Open,
    /// Released with bids still within their deadlines, or reclaimed: `parts` is held for
    /// their notices, each part until its own wait is over. Waits strictly increase; every
    /// part holds money.
    InDoubt {
        /// What late notices may still settle against, by wait.
        parts: Vec<DoubtPart>,
    },
    /// Released with nothing in doubt, or every part's wait is over.
    Closed,
}

impl LeaseState {
    /// The money in doubt.
    pub fn in_doubt(&self) -> Money {
        match self {
            LeaseState::InDoubt { parts } => {
                // Parts are parts of one lease amount: their sum fits.
                Money::checked_sum(parts.iter().map(|p| p.amount)).unwrap_or(Money::MAX)
            }
            _ => Money::ZERO,
        }
    }

    /// The state's name, as `budgetctl` and the lease API show it.
    pub fn name(&self) -> &'static str {
        match self {
            LeaseState::Open => "open",
            LeaseState::InDoubt { .. } => "in_doubt",
            LeaseState::Closed => "closed",
        }
    }
}

/// The timing rules a lease was granted under: the region's [`Params`] at the grant. The edge
/// spends and releases by them, and the leader reclaims and expires by them, even if the
/// region's rules change while the lease lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// How long the edge may reserve, from before it sent the grant request, ms.
    pub duration_ms: u64,
    /// `W`: how long the edge keeps the lease after its spending window, ms.
    pub settlement_window_ms: u64,
    /// Taken off the spending window for clock rate error, ms.
    pub margin_ms: u64,
    /// How long in-doubt money waits past its bids' deadlines, ms.
    pub late_acceptance_ms: u64,
    /// The `exp` assumed for an impression that has none, ms.
    pub default_exp_ms: u64,
    /// The longest `exp` bid on, ms.
    pub max_exp_ms: u64,
    /// The longest `tmax` bid on, ms.
    pub max_tmax_ms: u64,
    /// The clock rate error allowed for, ppm.
    pub clock_rate_error_ppm: u32,
}

impl Terms {
    /// The terms of a lease granted under `p`.
    pub fn of(p: &Params) -> Terms {
        Terms {
            duration_ms: p.lease_duration_ms,
            settlement_window_ms: p.settlement_window_ms,
            margin_ms: p.margin_ms,
            late_acceptance_ms: p.late_acceptance_ms,
            default_exp_ms: p.default_exp_ms,
            max_exp_ms: p.max_exp_ms,
            max_tmax_ms: p.max_tmax_ms,
            clock_rate_error_ppm: p.clock_rate_error_ppm,
        }
    }

    /// The longest any bid of the lease may be billed after it was made: its auction comes at
    /// most `tmax` after the request, its impression at most `exp` after the auction.
    pub fn max_hold_ms(&self) -> u64 {
        self.max_exp_ms.saturating_add(self.max_tmax_ms)
    }

    /// How long the leader waits, on its own monotonic clock, before it reclaims a lease the
    /// edge never released (DESIGN §5): `duration + W + margin`.
    pub fn reclaim_wait_ms(&self) -> u64 {
        self.duration_ms
            .saturating_add(self.settlement_window_ms)
            .saturating_add(self.margin_ms)
    }

    /// How long the leader waits, on its own monotonic clock from when it saw the part, before
    /// it returns an in-doubt part that holds for `wait_ms` (as the edge measured it at the
    /// release, or the longest hold for a reclaim).
    ///
    /// The edge measured `wait_ms` from its last possible bid on its own clock; over the
    /// lease's life (at most `duration + W`, and a second for the release to be sent) its
    /// clock may have run slow by the rate error `r`, so the deadline may be up to
    /// `r × (duration + W + 1 s)` later in real time. The leader then adds the late-acceptance
    /// window, and stretches the whole by `1 + r` for its own clock running fast:
    /// `(wait + late + r × (duration + W + 1 s)) × (1 + r)`. Rounded up; saturating.
    pub fn doubt_wait_ms(&self, wait_ms: u64) -> u64 {
        let r = u128::from(self.clock_rate_error_ppm);
        let life = u128::from(self.duration_ms) + u128::from(self.settlement_window_ms) + 1_000;
        let drift = (life * r).div_ceil(1_000_000);
        let base = u128::from(wait_ms) + u128::from(self.late_acceptance_ms) + drift;
        let stretched = (base * (1_000_000 + r)).div_ceil(1_000_000);
        u64::try_from(stretched).unwrap_or(u64::MAX)
    }
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
    /// Bid prices of its bids the exchange reported lost while it was open: they will never
    /// be charged, so they return to the region when the lease closes.
    pub lost: Money,
    /// Open, in doubt or closed.
    pub state: LeaseState,
    /// The rules it was granted under.
    pub terms: Terms,
    /// The Raft index that granted it.
    pub granted_at_index: u64,
    /// How many bids the edge made under it (numbered `1..=bids`), once it said so at the
    /// release.
    pub bids: Option<u64>,
    /// What each report learnt of its bids (dropped with the lease), one list per report that
    /// charged, recorded or lost any: each bid's number and its [`Mark`] (a later list may
    /// mark a bid again: the last mark counts). Not persisted in the lease's row: each list is
    /// a row of its own (written once), and the lists are rebuilt at load from those rows,
    /// which name their lease.
    #[serde(skip)]
    pub events: Vec<Vec<(u64, Mark)>>,
    /// Idempotency keys of its commands (dropped with the lease). Not persisted in the lease's
    /// row: rebuilt at load from the request rows, which name their lease.
    #[serde(skip)]
    pub requests: Vec<RequestKey>,
    /// Once it is closed: its bids' marks, compacted out of `events` ([`ClosedMarks`]), and
    /// persisted in its row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marks: Option<ClosedMarks>,
    /// When it was fully closed, in the ledger's order of retirements (oldest forgotten first).
    pub retired: Option<u64>,
    /// In-doubt parts whose wait the leader found over, by the part's `wait_ms`: the Raft
    /// index of the `ExpireInDoubt` that found it so. A part returns only once every
    /// registered edge has checked in covering that index ([`crate::ledger::EdgeCheck`]).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub due: std::collections::BTreeMap<u64, u64>,
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
    let share = Money::from_micros(available.micros() / i64::from(p.lease_share_divisor.max(1)));
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
    fn doubt_waits_cover_rate_error_and_the_late_window() {
        let t = Terms::of(&Params {
            lease_duration_ms: 30_000,
            settlement_window_ms: 10_000,
            late_acceptance_ms: 60_000,
            clock_rate_error_ppm: 100_000,
            ..Params::default()
        });
        // (300 s + 60 s + 10 % of 41 s) × 1.1 = (360 + 4.1) × 1.1 s.
        assert_eq!(t.doubt_wait_ms(300_000), 400_510);
        let exact = Terms::of(&Params {
            clock_rate_error_ppm: 0,
            late_acceptance_ms: 0,
            ..Params::default()
        });
        assert_eq!(exact.doubt_wait_ms(1_234), 1_234);
        assert_eq!(t.doubt_wait_ms(u64::MAX), u64::MAX);
        assert_eq!(t.reclaim_wait_ms(), 30_000 + 10_000 + 2_000);
        assert_eq!(t.max_hold_ms(), 3_600_000 + 5_000);
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
