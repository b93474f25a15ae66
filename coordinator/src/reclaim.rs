//! The leader's lease timers (DESIGN §5), on its own monotonic clock.
//!
//! **Reclaim rule.** The leader closes a lease its edge never released only when at least
//! `duration + W + margin` has elapsed on the *current leader's* monotonic clock since the later
//! of (a) when this node applied the grant and (b) when this node became leader. A new leader
//! therefore restarts every wait instead of trusting another machine's clock. Likewise the
//! in-doubt remainder of a reclaimed lease returns only after the late-acceptance window has
//! elapsed on the current leader's clock since the later of the reclaim and its leadership.
//!
//! The timers live outside the state machine (its `apply` reads no clock): when they are due,
//! the leader proposes `ReclaimLeases` or `ExpireInDoubt` naming the leases. Time is a
//! [`Mono`] reading injected by the caller, so tests control it exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use shared::LeaseId;

/// A monotonic clock reading: time since some fixed origin of this process. Never compared
/// across processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mono(pub Duration);

impl Mono {
    fn after(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(d))
    }
}

/// A source of [`Mono`] readings.
pub trait MonoClock: Send + Sync {
    /// Now.
    fn now(&self) -> Mono;
}

/// The process clock's monotonic readings (skewable in rate by a test harness).
impl MonoClock for shared::clock::Clock {
    fn now(&self) -> Mono {
        Mono(self.mono())
    }
}

/// The waits of DESIGN §5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// `W`: the longest an exchange may take to send a notice after a bid.
    pub settlement: Duration,
    /// Allowance for clock rate error: at least `duration × max_clock_rate_error`.
    pub margin: Duration,
    /// How long in-doubt money waits for late notices.
    pub late_acceptance: Duration,
}

/// The leader's timers. Followers keep none: a node starts them when it becomes leader, from
/// the leases the state machine holds.
#[derive(Debug, Default)]
pub struct Timers {
    windows: Option<Windows>,
    /// When each open lease's reclaim wait ends.
    open: BTreeMap<LeaseId, Mono>,
    /// When each in-doubt lease's late-acceptance window ends.
    in_doubt: BTreeMap<LeaseId, Mono>,
}

impl Timers {
    /// No timers: this node is not the leader.
    pub fn new() -> Timers {
        Timers::default()
    }

    /// True while this node runs the timers.
    pub fn is_leading(&self) -> bool {
        self.windows.is_some()
    }

    /// This node became leader at `now`. Every wait starts over from `now`: `open` lists the
    /// open leases with their durations, `in_doubt` the reclaimed ones.
    pub fn became_leader(
        &mut self,
        now: Mono,
        windows: Windows,
        open: impl IntoIterator<Item = (LeaseId, Duration)>,
        in_doubt: impl IntoIterator<Item = LeaseId>,
    ) {
        self.windows = Some(windows);
        self.open = open
            .into_iter()
            .map(|(id, d)| (id, now.after(reclaim_wait(d, &windows))))
            .collect();
        self.in_doubt = in_doubt
            .into_iter()
            .map(|id| (id, now.after(windows.late_acceptance)))
            .collect();
    }

    /// This node is no longer leader: forget everything (a later leadership starts over).
    pub fn stepped_down(&mut self) {
        *self = Timers::new();
    }

    /// The state machine applied a grant at `now`.
    pub fn granted(&mut self, now: Mono, lease: LeaseId, duration: Duration) {
        if let Some(w) = self.windows {
            self.open
                .insert(lease, now.after(reclaim_wait(duration, &w)));
        }
    }

    /// The state machine applied a reclaim of `lease` at `now`.
    pub fn reclaimed(&mut self, now: Mono, lease: LeaseId) {
        self.open.remove(&lease);
        if let Some(w) = self.windows {
            let wait = if shared::planted::active("reclaim-early") {
                Duration::ZERO
            } else {
                w.late_acceptance
            };
            self.in_doubt.insert(lease, now.after(wait));
        }
    }

    /// The state machine closed `lease` (released, or its in-doubt money returned).
    pub fn closed(&mut self, lease: LeaseId) {
        self.open.remove(&lease);
        self.in_doubt.remove(&lease);
    }

    /// Brings the timers in line with the state machine at `now`: leases not yet timed start
    /// their wait now, leases no longer open (or in doubt) are dropped. A lease first seen by
    /// a poll after its grant was applied starts its wait later than the rule requires, never
    /// earlier: reclaim can only come later, which is safe.
    pub fn sync(&mut self, now: Mono, open: &[(LeaseId, Duration)], in_doubt: &[LeaseId]) {
        let Some(w) = self.windows else { return };
        let open_ids: std::collections::BTreeSet<LeaseId> =
            open.iter().map(|(id, _)| *id).collect();
        let doubt_ids: std::collections::BTreeSet<LeaseId> = in_doubt.iter().copied().collect();
        self.open.retain(|id, _| open_ids.contains(id));
        self.in_doubt.retain(|id, _| doubt_ids.contains(id));
        for (id, d) in open {
            self.open
                .entry(*id)
                .or_insert_with(|| now.after(reclaim_wait(*d, &w)));
        }
        for id in in_doubt {
            self.in_doubt
                .entry(*id)
                .or_insert_with(|| now.after(w.late_acceptance));
        }
    }

    /// Open leases whose reclaim wait has ended by `now`: propose `ReclaimLeases` for them.
    pub fn due_reclaims(&self, now: Mono) -> Vec<LeaseId> {
        self.open
            .iter()
            .filter(|(_, end)| **end <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// In-doubt leases whose window has ended by `now`: propose `ExpireInDoubt` for them.
    pub fn due_expiries(&self, now: Mono) -> Vec<LeaseId> {
        self.in_doubt
            .iter()
            .filter(|(_, end)| **end <= now)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// `duration + W + margin`.
pub fn reclaim_wait(duration: Duration, w: &Windows) -> Duration {
    if shared::planted::active("reclaim-early") {
        return duration / 2;
    }
    duration
        .saturating_add(w.settlement)
        .saturating_add(w.margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Mono {
        Mono(Duration::from_secs(secs))
    }

    const W: Windows = Windows {
        settlement: Duration::from_secs(10),
        margin: Duration::from_secs(2),
        late_acceptance: Duration::from_secs(60),
    };

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn a_lease_is_reclaimed_only_after_duration_plus_w_plus_margin() {
        let mut t = Timers::new();
        t.became_leader(s(0), W, [], []);
        t.granted(s(100), LeaseId(1), LEASE);
        assert!(
            t.due_reclaims(s(141)).is_empty(),
            "30 + 10 + 2 = 42 s have not passed"
        );
        assert_eq!(t.due_reclaims(s(142)), [LeaseId(1)]);
        t.reclaimed(s(143), LeaseId(1));
        assert!(t.due_reclaims(s(1_000)).is_empty());
        assert!(t.due_expiries(s(202)).is_empty());
        assert_eq!(t.due_expiries(s(203)), [LeaseId(1)]);
        t.closed(LeaseId(1));
        assert!(t.due_expiries(s(1_000)).is_empty());
    }

    #[test]
    fn a_new_leader_restarts_every_wait() {
        // The old leader granted at 100 on its clock; it would have reclaimed at 142.
        let mut old = Timers::new();
        old.became_leader(s(0), W, [], []);
        old.granted(s(100), LeaseId(1), LEASE);
        old.stepped_down();
        assert!(!old.is_leading());
        assert!(
            old.due_reclaims(s(1_000)).is_empty(),
            "a follower reclaims nothing"
        );
        // The new leader's clock reads 5 when it takes over (clocks are not comparable): the
        // wait starts at 5, whatever the grant's age elsewhere.
        let mut new = Timers::new();
        new.became_leader(s(5), W, [(LeaseId(1), LEASE)], [LeaseId(9)]);
        assert!(new.due_reclaims(s(46)).is_empty());
        assert_eq!(new.due_reclaims(s(47)), [LeaseId(1)]);
        assert!(new.due_expiries(s(64)).is_empty());
        assert_eq!(new.due_expiries(s(65)), [LeaseId(9)]);
    }

    #[test]
    fn a_released_lease_is_never_reclaimed_and_followers_track_nothing() {
        let mut t = Timers::new();
        t.granted(s(0), LeaseId(3), LEASE);
        assert!(t.due_reclaims(s(1_000)).is_empty(), "not leader: no timers");
        t.became_leader(s(0), W, [], []);
        t.granted(s(0), LeaseId(3), LEASE);
        t.closed(LeaseId(3));
        assert!(t.due_reclaims(s(1_000)).is_empty());
    }

    #[test]
    fn sync_starts_waits_when_leases_are_first_seen_and_drops_closed_ones() {
        let mut t = Timers::new();
        t.became_leader(s(0), W, [], []);
        t.sync(s(10), &[(LeaseId(1), LEASE), (LeaseId(2), LEASE)], &[]);
        t.sync(
            s(20),
            &[
                (LeaseId(1), LEASE),
                (LeaseId(2), LEASE),
                (LeaseId(3), LEASE),
            ],
            &[],
        );
        assert_eq!(
            t.due_reclaims(s(52)),
            [LeaseId(1), LeaseId(2)],
            "seen at 10: due at 52"
        );
        assert_eq!(t.due_reclaims(s(62)), [LeaseId(1), LeaseId(2), LeaseId(3)]);
        // Lease 2 was released, lease 1 reclaimed: 2 is gone, 1 waits in doubt.
        t.sync(s(63), &[(LeaseId(3), LEASE)], &[LeaseId(1)]);
        assert_eq!(t.due_reclaims(s(1_000)), [LeaseId(3)]);
        assert!(t.due_expiries(s(122)).is_empty());
        assert_eq!(t.due_expiries(s(123)), [LeaseId(1)]);
    }
}
