//! The leader's lease timers (DESIGN §5), on its own monotonic clock.
//!
//! **Reclaim rule.** The leader closes a lease its edge never released only when at least
//! `duration + W + margin` (the lease's [`Terms::reclaim_wait_ms`]) has elapsed on the *current
//! leader's* monotonic clock since the later of (a) when this node saw the grant applied and
//! (b) when this node became leader. A new leader therefore restarts every wait instead of
//! trusting another machine's clock. Likewise each in-doubt part of a closed lease returns
//! only after its wait ([`Terms::doubt_wait_ms`]: the deadlines of the bids it holds for,
//! stretched for clock rate error, plus the late-acceptance window) has elapsed on the current
//! leader's clock since the later of when this node saw the part and its leadership.
//!
//! The timers live outside the state machine (its `apply` reads no clock): when they are due,
//! the leader proposes `ReclaimLeases` or `ExpireInDoubt` naming the leases and parts. Time is
//! a [`Mono`] reading injected by the caller, so tests control it exactly.

use std::collections::BTreeMap;
use std::time::Duration;

use shared::LeaseId;

#[cfg(doc)]
use crate::ledger::Terms;

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

/// One in-doubt part of a lease: the lease and the part's `wait_ms`.
pub type Part = (LeaseId, u64);

/// The leader's timers. Followers keep none: a node starts them when it becomes leader, from
/// the leases the state machine holds.
#[derive(Debug, Default)]
pub struct Timers {
    leading: bool,
    /// When each open lease's reclaim wait ends.
    open: BTreeMap<LeaseId, Mono>,
    /// When each in-doubt part's wait ends.
    in_doubt: BTreeMap<Part, Mono>,
    /// The edges due parts were last found waiting for (`edge@covers`), for logging changes.
    waiting: Vec<String>,
}

impl Timers {
    /// No timers: this node is not the leader.
    pub fn new() -> Timers {
        Timers::default()
    }

    /// True while this node runs the timers.
    pub fn is_leading(&self) -> bool {
        self.leading
    }

    /// This node became leader at `now`. Every wait starts over from `now`: `open` lists the
    /// open leases with their reclaim waits, `in_doubt` the in-doubt parts with theirs.
    pub fn became_leader(
        &mut self,
        now: Mono,
        open: impl IntoIterator<Item = (LeaseId, Duration)>,
        in_doubt: impl IntoIterator<Item = (Part, Duration)>,
    ) {
        self.leading = true;
        // The planted bug `reclaim-no-restart` counts the waits of the leases it inherits from
        // this process's start, as if it had been timing them all along.
        let from = if shared::planted::active("reclaim-no-restart") {
            Mono(Duration::ZERO)
        } else {
            now
        };
        self.open = open
            .into_iter()
            .map(|(id, wait)| (id, from.after(planted_reclaim(wait))))
            .collect();
        self.in_doubt = in_doubt
            .into_iter()
            .map(|(part, wait)| (part, now.after(wait)))
            .collect();
    }

    /// This node is no longer leader: forget everything (a later leadership starts over).
    pub fn stepped_down(&mut self) {
        *self = Timers::new();
    }

    /// The state machine applied a grant at `now`; the lease is reclaimed after `wait`.
    pub fn granted(&mut self, now: Mono, lease: LeaseId, wait: Duration) {
        if self.leading {
            self.open.insert(lease, now.after(planted_reclaim(wait)));
        }
    }

    /// The state machine applied a reclaim of `lease` at `now`, holding `part` in doubt for
    /// `wait`.
    pub fn reclaimed(&mut self, now: Mono, lease: LeaseId, part: Option<(u64, Duration)>) {
        self.open.remove(&lease);
        if let (true, Some((wait_ms, wait))) = (self.leading, part) {
            let wait = if shared::planted::active("reclaim-early") {
                Duration::ZERO
            } else {
                wait
            };
            self.in_doubt.insert((lease, wait_ms), now.after(wait));
        }
    }

    /// The state machine closed `lease` (released, or its in-doubt money returned).
    pub fn closed(&mut self, lease: LeaseId) {
        self.open.remove(&lease);
        self.in_doubt.retain(|(id, _), _| *id != lease);
    }

    /// The part returned its money.
    pub fn expired(&mut self, part: Part) {
        self.in_doubt.remove(&part);
    }

    /// Brings the timers in line with the state machine at `now`: leases and parts not yet
    /// timed start their wait now, those no longer open (or in doubt) are dropped. A lease
    /// first seen by a poll after its grant was applied starts its wait later than the rule
    /// requires, never earlier: reclaim can only come later, which is safe.
    pub fn sync(&mut self, now: Mono, open: &[(LeaseId, Duration)], in_doubt: &[(Part, Duration)]) {
        if !self.leading {
            return;
        }
        let open_ids: std::collections::BTreeSet<LeaseId> =
            open.iter().map(|(id, _)| *id).collect();
        let doubt_ids: std::collections::BTreeSet<Part> =
            in_doubt.iter().map(|(p, _)| *p).collect();
        self.open.retain(|id, _| open_ids.contains(id));
        self.in_doubt.retain(|p, _| doubt_ids.contains(p));
        for (id, wait) in open {
            self.open
                .entry(*id)
                .or_insert_with(|| now.after(planted_reclaim(*wait)));
        }
        for (part, wait) in in_doubt {
            self.in_doubt
                .entry(*part)
                .or_insert_with(|| now.after(*wait));
        }
    }

    /// The timers hold `lease`'s reclaim wait.
    pub fn tracks(&self, lease: LeaseId) -> bool {
        self.open.contains_key(&lease)
    }

    /// Open leases whose reclaim wait has ended by `now`: propose `ReclaimLeases` for them.
    pub fn due_reclaims(&self, now: Mono) -> Vec<LeaseId> {
        self.open
            .iter()
            .filter(|(_, end)| **end <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// In-doubt parts whose wait has ended by `now`: propose `ExpireInDoubt` for them.
    pub fn due_expiries(&self, now: Mono) -> Vec<Part> {
        self.in_doubt
            .iter()
            .filter(|(_, end)| **end <= now)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Notes the edges due parts wait for; true when that differs from the last note.
    pub fn waiting_for(&mut self, edges: Vec<String>) -> bool {
        if edges == self.waiting {
            return false;
        }
        self.waiting = edges;
        true
    }

    /// How many leases and parts are timed (for metrics and tests).
    pub fn counts(&self) -> (usize, usize) {
        (self.open.len(), self.in_doubt.len())
    }
}

/// The planted bug `reclaim-early` (test builds only) halves every reclaim wait.
fn planted_reclaim(wait: Duration) -> Duration {
    if shared::planted::active("reclaim-early") {
        return wait / 2;
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Mono {
        Mono(Duration::from_secs(secs))
    }

    fn d(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// 30 + 10 + 2 s.
    const RECLAIM: Duration = Duration::from_secs(42);

    #[test]
    fn a_lease_is_reclaimed_only_after_its_wait_and_each_part_after_its_own() {
        let mut t = Timers::new();
        t.became_leader(s(0), [], []);
        t.granted(s(100), LeaseId(1), RECLAIM);
        assert!(
            t.due_reclaims(s(141)).is_empty(),
            "30 + 10 + 2 = 42 s have not passed"
        );
        assert_eq!(t.due_reclaims(s(142)), [LeaseId(1)]);
        t.reclaimed(s(143), LeaseId(1), Some((3_605_000, d(3_700))));
        assert!(t.due_reclaims(s(10_000)).is_empty());
        assert!(t.due_expiries(s(3_842)).is_empty());
        assert_eq!(t.due_expiries(s(3_843)), [(LeaseId(1), 3_605_000)]);
        t.closed(LeaseId(1));
        assert!(t.due_expiries(s(10_000)).is_empty());
        // A released lease's parts: each on its own wait.
        t.sync(
            s(200),
            &[],
            &[
                ((LeaseId(2), 60_000), d(70)),
                ((LeaseId(2), 300_000), d(330)),
            ],
        );
        assert_eq!(t.due_expiries(s(270)), [(LeaseId(2), 60_000)]);
        t.expired((LeaseId(2), 60_000));
        assert!(t.due_expiries(s(529)).is_empty());
        assert_eq!(t.due_expiries(s(530)), [(LeaseId(2), 300_000)]);
    }

    #[test]
    fn a_new_leader_restarts_every_wait() {
        // The old leader granted at 100 on its clock; it would have reclaimed at 142.
        let mut old = Timers::new();
        old.became_leader(s(0), [], []);
        old.granted(s(100), LeaseId(1), RECLAIM);
        old.stepped_down();
        assert!(!old.is_leading());
        assert!(
            old.due_reclaims(s(1_000)).is_empty(),
            "a follower reclaims nothing"
        );
        // The new leader's clock reads 5 when it takes over (clocks are not comparable): the
        // wait starts at 5, whatever the grant's age elsewhere.
        let mut new = Timers::new();
        new.became_leader(
            s(5),
            [(LeaseId(1), RECLAIM)],
            [((LeaseId(9), 60_000), d(60))],
        );
        assert!(new.due_reclaims(s(46)).is_empty());
        assert_eq!(new.due_reclaims(s(47)), [LeaseId(1)]);
        assert!(new.due_expiries(s(64)).is_empty());
        assert_eq!(new.due_expiries(s(65)), [(LeaseId(9), 60_000)]);
    }

    #[test]
    fn a_released_lease_is_never_reclaimed_and_followers_track_nothing() {
        let mut t = Timers::new();
        t.granted(s(0), LeaseId(3), RECLAIM);
        assert!(t.due_reclaims(s(1_000)).is_empty(), "not leader: no timers");
        t.became_leader(s(0), [], []);
        t.granted(s(0), LeaseId(3), RECLAIM);
        t.closed(LeaseId(3));
        assert!(t.due_reclaims(s(1_000)).is_empty());
    }

    #[test]
    fn sync_starts_waits_when_leases_are_first_seen_and_drops_closed_ones() {
        let mut t = Timers::new();
        t.became_leader(s(0), [], []);
        t.sync(s(10), &[(LeaseId(1), RECLAIM), (LeaseId(2), RECLAIM)], &[]);
        t.sync(
            s(20),
            &[
                (LeaseId(1), RECLAIM),
                (LeaseId(2), RECLAIM),
                (LeaseId(3), RECLAIM),
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
        let part = (LeaseId(1), 3_605_000);
        t.sync(s(63), &[(LeaseId(3), RECLAIM)], &[(part, d(60))]);
        assert_eq!(t.due_reclaims(s(1_000)), [LeaseId(3)]);
        assert!(t.due_expiries(s(122)).is_empty());
        assert_eq!(t.due_expiries(s(123)), [part]);
        assert_eq!(t.counts(), (1, 1));
    }
}
