//! Leases as the edge holds them (DESIGN §5): the money granted, the spending window on this
//! edge's monotonic clock, and the reservations taken under it.
//!
//! A campaign's [`Slot`] points at its current lease; bids read it without a lock
//! (`ArcSwapOption`). Older leases of the campaign stay alive, out of the slot, until their
//! settlement window ends and they are released.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use shared::{EventKey, LeaseId, Money};

use crate::reserve::Reservoir;

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
    /// When the edge releases it: `spend_until + W`. Notices of its bids arrive before.
    pub release_at: Duration,
    /// Past this (70 % of the spending window by default) a new lease is asked for.
    pub renew_at: Duration,
    /// Event keys this edge has already settled or seen lost under this lease, as hashes: a
    /// reservation is given back at most once.
    seen: Mutex<foldhash::HashSet<u64>>,
}

impl ActiveLease {
    /// A lease granted with `amount`, sent at `sent` (monotonic) with the grant's `duration`.
    pub fn new(
        id: LeaseId,
        slot: u32,
        amount: Money,
        sent: Duration,
        duration: Duration,
        margin: Duration,
        settlement_window: Duration,
    ) -> ActiveLease {
        let spend_until = (sent + duration).saturating_sub(margin);
        let window = spend_until.saturating_sub(sent);
        ActiveLease {
            renew_at: sent + window * 7 / 10,
            id,
            slot,
            reservoir: Reservoir::new(amount.micros()),
            spend_until,
            release_at: spend_until + settlement_window,
            seen: Mutex::new(foldhash::HashSet::default()),
        }
    }

    /// Takes `price` micros for a bid at monotonic time `now`: only inside the spending window.
    #[inline]
    pub fn try_reserve(&self, price: i64, now: Duration) -> bool {
        now < self.spend_until && self.reservoir.try_reserve(price)
    }

    /// Records that this edge handled a notice for `key`; true the first time. Only then may
    /// the unspent part of its reservation be given back.
    pub fn first_notice(&self, key: &EventKey) -> bool {
        use std::hash::BuildHasher;
        // Fixed seed: the same key hashes alike for the lease's whole life.
        let h = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key.to_string());
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h)
    }
}

/// A campaign's place at this edge: its current lease and its pacing throttle.
#[derive(Debug, Default)]
pub struct Slot {
    /// The lease bids reserve from.
    pub current: ArcSwapOption<ActiveLease>,
    /// Bids allowed by pacing, in parts per million (1,000,000: all).
    pub throttle_ppm: AtomicU32,
    /// A lease (or a renewal) has been asked for and not yet answered.
    pub asking: AtomicBool,
    /// Do not ask for a lease before this monotonic time, ms (after a refusal).
    pub retry_after_ms: AtomicU64,
}

impl Slot {
    /// A slot with no lease and no throttle.
    pub fn new() -> Slot {
        Slot {
            throttle_ppm: AtomicU32::new(1_000_000),
            ..Slot::default()
        }
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
    fn reservations_only_inside_the_spending_window() {
        let l = ActiveLease::new(
            LeaseId(1),
            0,
            Money::from_micros(10_000),
            Duration::from_secs(100),
            Duration::from_secs(30),
            Duration::from_secs(2),
            Duration::from_secs(10),
        );
        assert_eq!(l.spend_until, Duration::from_secs(128));
        assert_eq!(l.release_at, Duration::from_secs(138));
        assert!(l.try_reserve(5_000, Duration::from_secs(127)));
        assert!(!l.try_reserve(1, Duration::from_secs(128)));
        let k = EventKey::from_parts("x", "a", "1").unwrap();
        assert!(l.first_notice(&k));
        assert!(!l.first_notice(&k));
    }
}
