//! Leases as the edge holds them (DESIGN §5): the money granted, the spending window on this
//! edge's monotonic clock, the reservations taken under it, and how long each may still be
//! billed.
//!
//! A campaign's [`Slot`] points at its current lease; bids read it without a lock
//! (`ArcSwapOption`). Older leases of the campaign stay alive, out of the slot, until their
//! settlement window ends and they are released.
//!
//! **Reservations live until their deadlines.** A bid on an impression may be billed until the
//! impression's `exp` after the auction, and the auction comes at most `tmax` after the
//! request. The edge numbers its bids per lease and sorts each reservation by its `exp` into
//! one of [`EXP_CLASSES_S`] (rounded up): at the release it tells the ledger, per class, what
//! its bids without a notice still hold and how long their deadlines are from now, and the
//! ledger holds each part that long (ARCHITECTURE.md).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use shared::{LeaseId, Money};

use crate::reserve::Reservoir;

/// The `exp` classes, seconds: a reservation is held for the smallest class at least its
/// impression's `exp`. The common values exchanges send (60, 300, 600, 1800, 3600 s) are
/// classes of their own, so they are held no longer than they say.
pub const EXP_CLASSES_S: [u32; 34] = [
    1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 360, 420, 480, 600, 720, 900, 1200,
    1500, 1800, 2400, 3000, 3600, 5400, 7200, 10_800, 14_400, 21_600, 43_200, 86_400,
];

/// The class of an `exp` of `secs` seconds: the smallest class at least `secs` (`None` above
/// a day, which no region allows).
pub fn exp_class(secs: u64) -> Option<usize> {
    EXP_CLASSES_S.iter().position(|c| u64::from(*c) >= secs)
}

/// The rules a lease was granted under (the region's replicated parameters at the grant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terms {
    /// How long the edge may reserve, from before it sent the grant request.
    pub duration: Duration,
    /// `W`: how long the edge keeps the lease after its spending window before releasing it.
    pub settlement_window: Duration,
    /// Taken off the spending window for clock rate error.
    pub margin: Duration,
    /// The `exp` assumed for an impression that has none.
    pub default_exp: Duration,
    /// The longest `exp` bid on.
    pub max_exp: Duration,
    /// The longest `tmax` bid on.
    pub max_tmax: Duration,
}

impl Terms {
    /// Terms for tests and fixtures: a lease of `duration`, W, and a margin, with exchange
    /// traffic's defaults (`exp` 300 s when absent, up to an hour; `tmax` up to 5 s).
    pub fn new(duration: Duration, settlement_window: Duration, margin: Duration) -> Terms {
        Terms {
            duration,
            settlement_window,
            margin,
            default_exp: Duration::from_secs(300),
            max_exp: Duration::from_secs(3_600),
            max_tmax: Duration::from_secs(5),
        }
    }
}

/// One lease held by this edge.
#[derive(Debug)]
pub struct ActiveLease {
    /// Its id.
    pub id: LeaseId,
    /// Its campaign's index in the slot table.
    pub slot: u32,
    /// The unreserved money.
    pub reservoir: Reservoir,
    /// Reservations may be taken while the monotonic clock reads less than this:
    /// send time of the grant + duration − margin.
    pub spend_until: Duration,
    /// When the edge releases it: `spend_until + W`. The first notices of its bids arrive
    /// before; later ones settle against what the release holds in doubt.
    pub release_at: Duration,
    /// Past this (70 % of the spending window by default) a new lease is asked for.
    pub renew_at: Duration,
    /// The rules it was granted under.
    pub terms: Terms,
    /// Bids numbered so far: bid `n` is the `n`-th reservation taken (1, 2, 3, …).
    bids: AtomicU64,
    /// What bids without a notice here hold, by `exp` class (micros).
    held: [AtomicI64; EXP_CLASSES_S.len()],
    /// By `exp` class: the monotonic time (ms) by which the auction of every bid of the class
    /// has happened, the latest of each bid's request time plus its own `tmax` (0: no bid).
    auction_by_ms: [AtomicU64; EXP_CLASSES_S.len()],
    /// Bids this edge has already seen a notice for: a reservation is given back at most
    /// once.
    seen: Mutex<foldhash::HashSet<u64>>,
}

impl ActiveLease {
    /// A lease granted with `amount`, sent at `sent` (monotonic), under `terms`.
    pub fn new(id: LeaseId, slot: u32, amount: Money, sent: Duration, terms: Terms) -> ActiveLease {
        let spend_until = (sent + terms.duration).saturating_sub(terms.margin);
        let window = spend_until.saturating_sub(sent);
        ActiveLease {
            renew_at: sent + window * 7 / 10,
            id,
            slot,
            reservoir: Reservoir::new(amount.micros()),
            spend_until,
            release_at: spend_until + terms.settlement_window,
            terms,
            bids: AtomicU64::new(0),
            held: std::array::from_fn(|_| AtomicI64::new(0)),
            auction_by_ms: std::array::from_fn(|_| AtomicU64::new(0)),
            seen: Mutex::new(foldhash::HashSet::default()),
        }
    }

    /// The `exp` class a bid on an impression with `exp` seconds (or none) is held in, or why
    /// it may not be bid on under this lease (`exp` longer than the lease's longest).
    #[inline]
    pub fn class_of(&self, exp: Option<i64>) -> Option<usize> {
        let ms = match exp {
            Some(s) => u64::try_from(s).unwrap_or(0).saturating_mul(1_000),
            None => u64::try_from(self.terms.default_exp.as_millis()).unwrap_or(u64::MAX),
        };
        if u128::from(ms) > self.terms.max_exp.as_millis() {
            return None;
        }
        exp_class(ms.div_ceil(1_000))
    }

    /// Takes `price` micros for a bid at monotonic time `now` on a request whose auction comes
    /// at most `tmax` later, held in `class`: only inside the spending window. The reservation
    /// is one atomic operation; then the bid gets its number, and its class its price and its
    /// auction time (bookkeeping for the release, not a decision).
    #[inline]
    pub fn try_reserve(
        &self,
        price: i64,
        now: Duration,
        tmax: Duration,
        class: usize,
    ) -> Option<u64> {
        if now >= self.spend_until || !self.reservoir.try_reserve(price) {
            return None;
        }
        self.held[class].fetch_add(price, Ordering::Relaxed);
        let auction_by = u64::try_from((now + tmax).as_millis()).unwrap_or(u64::MAX);
        self.auction_by_ms[class].fetch_max(auction_by.saturating_add(1), Ordering::Relaxed);
        Some(self.bids.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// A bid that was never sent (the request ran out of time): its reservation comes back
    /// whole and it holds nothing.
    pub fn unsent(&self, price: i64, class: usize) {
        self.held[class].fetch_sub(price, Ordering::Relaxed);
        self.reservoir.give_back(price);
    }

    /// How many bids were made under it.
    pub fn bids(&self) -> u64 {
        self.bids.load(Ordering::Relaxed)
    }

    /// Records that this edge handled a notice for `bid`; true the first time. Only then may
    /// the unspent part of its reservation be given back.
    pub fn first_notice(&self, bid: u64) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bid)
    }

    /// A notice came for a bid of `class` with bid price `price`: it holds nothing any more
    /// (what it spent is settled, the rest is given back by the caller).
    pub fn resolved(&self, class: usize, price: i64) {
        if let Some(h) = self.held.get(class) {
            h.fetch_sub(price, Ordering::Relaxed);
        }
    }

    /// What the bids without a notice here still hold, by how long their deadlines may be
    /// from `now` (ms, waits increasing): each bid's auction came at most its request's `tmax`
    /// after the request (the latest of a class: `auction_by_ms`, and never past the end of
    /// the spending window plus the lease's longest `tmax`), its impression at most its
    /// class's `exp` (never past the lease's longest) after that.
    ///
    /// The request's own `tmax` (a few hundred ms from real exchanges) and the class's last
    /// bid, rather than the longest `tmax` after the window's end, keep money in doubt no
    /// longer than its bids' deadlines: 4.8 s less per part with a 200 ms `tmax` and the
    /// default 5 s longest, which every bid without a notice waits again near a budget's end.
    pub fn in_doubt(&self, now: Duration) -> Vec<(u64, i64)> {
        let mut parts: Vec<(u64, i64)> = Vec::new();
        let latest = self.spend_until + self.terms.max_tmax;
        for (i, h) in self.held.iter().enumerate() {
            let amount = h.load(Ordering::Relaxed);
            if amount <= 0 {
                continue;
            }
            let exp = Duration::from_secs(u64::from(EXP_CLASSES_S[i])).min(self.terms.max_exp);
            let auction_by = match self.auction_by_ms[i].load(Ordering::Relaxed) {
                0 => latest,
                ms => Duration::from_millis(ms).min(latest),
            };
            let deadline = auction_by + exp;
            let wait = u64::try_from(deadline.saturating_sub(now).as_millis()).unwrap_or(u64::MAX);
            match parts.last_mut() {
                Some(last) if last.0 == wait => last.1 += amount,
                _ => parts.push((wait, amount)),
            }
        }
        parts
    }
}

/// A campaign's place at this edge: its current lease and its pacing throttle.
#[derive(Debug, Default)]
pub struct Slot {
    /// The lease bids reserve from.
    pub current: ArcSwapOption<ActiveLease>,
    /// The lease `current` replaced, while its spending window is open: bids take what is left
    /// of it (and what its loss notices gave back) first. Without it, that money waited unused
    /// for the old lease's release, and near the end of a budget most of what was left sat
    /// there (a fault-free run still had 0.9 % of a budget left 150 s after its last raise).
    pub previous: ArcSwapOption<ActiveLease>,
    /// Bids allowed by pacing, in parts per million (1,000,000: all).
    pub throttle_ppm: AtomicU32,
    /// A lease (or a renewal) has been asked for and not yet answered.
    pub asking: AtomicBool,
    /// Do not ask for a lease before this monotonic time, ms (after a refusal).
    pub retry_after_ms: AtomicU64,
    /// The grant asked for and never answered: its idempotency key and when it was first
    /// sent. The next ask reuses both, so that a grant applied after its answer was lost is
    /// found again instead of orphaned (an orphan holds its money until the leader reclaims
    /// it, then in doubt until its bids' deadlines).
    pending: Mutex<Option<(Vec<u8>, Duration)>>,
}

impl Slot {
    /// A slot with no lease and no throttle.
    pub fn new() -> Slot {
        Slot {
            throttle_ppm: AtomicU32::new(1_000_000),
            ..Slot::default()
        }
    }

    /// The idempotency key and first send time of the next grant request at monotonic `now`:
    /// those of the last request if it was never answered, else new ones. The spending window
    /// counts from the first send: the grant may have been applied right after it.
    pub fn grant_key(&self, now: Duration) -> (Vec<u8>, Duration) {
        let mut p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.get_or_insert_with(|| ((0..16).map(|_| fastrand::u8(..)).collect(), now))
            .clone()
    }

    /// The grant request was answered (a lease or a refusal): the next one is a new request.
    pub fn grant_answered(&self) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Pacing lets this bid through.
    #[inline]
    pub fn paced_in(&self) -> bool {
        let t = self.throttle_ppm.load(Ordering::Relaxed);
        t >= 1_000_000 || fastrand::u32(..1_000_000) < t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_grant_is_asked_again_with_its_key_and_first_send_time() {
        let slot = Slot::new();
        let (k1, t1) = slot.grant_key(Duration::from_secs(1));
        let (k2, t2) = slot.grant_key(Duration::from_secs(9));
        assert_eq!((&k1, t1), (&k2, t2));
        assert_eq!(k1.len(), 16);
        slot.grant_answered();
        let (k3, t3) = slot.grant_key(Duration::from_secs(12));
        assert_ne!(k3, k1);
        assert_eq!(t3, Duration::from_secs(12));
    }

    /// The `tmax` of the tests' requests.
    const TMAX: Duration = Duration::from_secs(1);

    fn lease() -> ActiveLease {
        ActiveLease::new(
            LeaseId(1),
            0,
            Money::from_micros(10_000),
            Duration::from_secs(100),
            Terms::new(
                Duration::from_secs(30),
                Duration::from_secs(10),
                Duration::from_secs(2),
            ),
        )
    }

    #[test]
    fn reservations_only_inside_the_spending_window_numbered_from_one() {
        let l = lease();
        assert_eq!(l.spend_until, Duration::from_secs(128));
        assert_eq!(l.release_at, Duration::from_secs(138));
        let class = l.class_of(Some(60)).unwrap();
        assert_eq!(
            l.try_reserve(5_000, Duration::from_secs(127), TMAX, class),
            Some(1)
        );
        assert_eq!(
            l.try_reserve(1, Duration::from_secs(127), TMAX, class),
            Some(2)
        );
        assert_eq!(
            l.try_reserve(1, Duration::from_secs(128), TMAX, class),
            None
        );
        assert_eq!(
            l.try_reserve(9_000, Duration::from_secs(127), TMAX, class),
            None
        );
        assert_eq!(l.bids(), 2);
        assert!(l.first_notice(1));
        assert!(!l.first_notice(1));
    }

    #[test]
    fn exp_classes_round_up_and_refuse_what_is_too_long() {
        let l = lease();
        let secs = |c: Option<usize>| c.map(|i| EXP_CLASSES_S[i]);
        assert_eq!(secs(l.class_of(Some(60))), Some(60));
        assert_eq!(secs(l.class_of(Some(61))), Some(90));
        assert_eq!(secs(l.class_of(Some(3_600))), Some(3_600));
        assert_eq!(secs(l.class_of(Some(0))), Some(1));
        assert_eq!(secs(l.class_of(Some(-4))), Some(1));
        assert_eq!(secs(l.class_of(None)), Some(300), "the default exp");
        assert_eq!(
            l.class_of(Some(3_601)),
            None,
            "longer than the lease allows"
        );
        assert_eq!(l.class_of(Some(i64::MAX)), None);
        assert!(EXP_CLASSES_S.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_release_holds_each_class_until_its_bids_deadlines() {
        let l = lease();
        let at = Duration::from_secs(120);
        let c60 = l.class_of(Some(60)).unwrap();
        let c300 = l.class_of(None).unwrap();
        let c3600 = l.class_of(Some(3_000)).unwrap();
        l.try_reserve(1_000, at, TMAX, c60).unwrap();
        l.try_reserve(2_000, at, TMAX, c300).unwrap();
        let b = l.try_reserve(3_000, at, TMAX, c300).unwrap();
        // The class's latest bid decides: at 127 s with a 200 ms tmax.
        l.try_reserve(
            4_000,
            Duration::from_secs(127),
            Duration::from_millis(200),
            c3600,
        )
        .unwrap();
        // A notice for the 3,000 bid: it holds nothing any more.
        l.resolved(c300, 3_000);
        assert!(l.first_notice(b));
        // Released at 138 s. The 60 s and 300 s bids were made at 120 s, their auctions at
        // most 1 s later (+1 ms for the rounding), their impressions exp after that; the 3,600 s
        // class's auction came by 127.2 s (+1 ms).
        assert_eq!(
            l.in_doubt(Duration::from_secs(138)),
            vec![(43_001, 1_000), (283_001, 2_000), (2_989_201, 4_000)]
        );
        assert_eq!(l.reservoir.unreserved(), 0);
        // The whole lease is reserved: no further bid.
        assert_eq!(l.try_reserve(1, at, TMAX, c60), None);
        // A bid never sent holds nothing, and its money can be bid again.
        let l = lease();
        let c = l.class_of(Some(10)).unwrap();
        l.try_reserve(500, at, TMAX, c).unwrap();
        l.unsent(500, c);
        assert_eq!(l.in_doubt(Duration::from_secs(138)), vec![]);
        assert_eq!(l.reservoir.unreserved(), 10_000);
    }
}
