//! The bounded counter of DESIGN §7: how the rights to one bucket's budget are split between
//! regions, without a cross-region call on any spend.
//!
//! The state is three grow-only counters of micros, each a [`crdts::VClock`] (the `crdts`
//! crate's grow-only lattice of per-actor counts, which its `GCounter` wraps; we use it directly
//! because `GCounter` keeps the per-actor rows private, and availability is a per-region
//! question):
//!
//! - `created[r]`: rights region `r` created (budget set or raised in `r`),
//! - `transferred[(r, s)]`: rights `r` gave to `s`,
//! - `settled[r]`: spend `r` settled,
//! - `burned[r]`: rights `r` destroyed (a budget lowered in `r`).
//!
//! `available(r) = created[r] + Σ transferred[(*, r)] − Σ transferred[(r, *)] − settled[r] − burned[r]`.
//!
//! (DESIGN §7 has three rows. A budget decrease must destroy rights, and a grow-only counter cannot
//! go down, so burning is a fourth grow-only row rather than a decrement.)
//!
//! Only region `r` increments the rows that name it as the actor, through [`RegionCounter`],
//! which refuses any increment that would make `available(r)` negative. The join is the
//! element-wise maximum. Because every state that travels is a full state (it includes every
//! transfer its sender had seen), `available(r) ≥ 0` holds for every `r` in every join of such
//! states, and so `Σ settled ≤ Σ created`.
//!
//! **Data loss is refused, not merged.** A join never lowers a row, so "a state that lowers our
//! rows" cannot do harm by itself, and a peer that shows *lower* values for our rows than we hold
//! has merely not heard from us lately. What does reveal lost data:
//! - a peer that shows *higher* values for our own rows than we hold: only we increment them, so
//!   we have lost increments we once made and shared ([`MergeError::OwnRowsAhead`]);
//! - a peer whose copy of some region's rows is *incomparable* with ours (some row higher, some
//!   lower): copies of one region's rows are snapshots of a monotone history and are always
//!   ordered, unless that region lost state and went on from an older one
//!   ([`MergeError::Diverged`]).
//!
//! In both cases [`RegionCounter::merge`] changes nothing and returns the error, for the caller to
//! raise an alarm.

use std::collections::BTreeSet;

use crdts::{CmRDT, CvRDT, Dot, VClock};
use serde::{Deserialize, Serialize};

use crate::id::RegionId;
use crate::money::Money;

/// Which row of the counter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Row {
    /// `created[region]`.
    Created(RegionId),
    /// `transferred[(from, to)]`.
    Transferred(RegionId, RegionId),
    /// `settled[region]`.
    Settled(RegionId),
    /// `burned[region]`.
    Burned(RegionId),
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Row::Created(r) => write!(f, "created[{r}]"),
            Row::Transferred(a, b) => write!(f, "transferred[{a}->{b}]"),
            Row::Settled(r) => write!(f, "settled[{r}]"),
            Row::Burned(r) => write!(f, "burned[{r}]"),
        }
    }
}

/// Why an increment was refused. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    /// Amounts must be positive.
    #[error("amount must be positive, got {0}")]
    NotPositive(Money),
    /// The region does not hold enough rights.
    #[error("region {region} has {available} available, {wanted} wanted")]
    Insufficient {
        /// The acting region.
        region: RegionId,
        /// What it has.
        available: Money,
        /// What was asked.
        wanted: Money,
    },
    /// A row would pass `i64::MAX` micros.
    #[error("row would overflow")]
    Overflow,
    /// A region cannot transfer rights to itself.
    #[error("region {0} cannot transfer rights to itself")]
    SelfTransfer(RegionId),
}

/// Why a remote state was refused. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// The remote state shows more for one of our own rows than we hold: we lost data.
    #[error(
        "remote state shows {row} = {theirs} but we hold {ours}: our own row is ahead elsewhere (data loss here)"
    )]
    OwnRowsAhead {
        /// The row.
        row: Row,
        /// Our value.
        ours: u64,
        /// Theirs.
        theirs: u64,
    },
    /// The remote copy of `origin`'s rows is neither ahead of nor behind ours: `origin` lost
    /// state and went on from an older one.
    #[error(
        "remote copy of region {origin}'s rows diverges from ours ({higher} higher, {lower} lower): data loss in {origin}"
    )]
    Diverged {
        /// The region whose rows disagree.
        origin: RegionId,
        /// A row where the remote is higher.
        higher: Row,
        /// A row where the remote is lower.
        lower: Row,
    },
    /// A state claiming to come from ourselves.
    #[error("state claims to come from this region ({0})")]
    FromSelf(RegionId),
}

/// The lattice: four grow-only counters. [`CounterState::join`] is commutative, associative
/// and idempotent. It is what regions send each other. It serializes as [`CounterRows`], so
/// that formats which key maps by strings only (JSON) can hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CounterRows", into = "CounterRows")]
pub struct CounterState {
    created: VClock<RegionId>,
    transferred: VClock<(RegionId, RegionId)>,
    settled: VClock<RegionId>,
    burned: VClock<RegionId>,
}

impl CounterState {
    /// The empty state.
    pub fn new() -> CounterState {
        CounterState::default()
    }

    /// The element-wise maximum of `self` and `other`, unchecked. [`RegionCounter::merge`] is
    /// the checked form that regions use.
    pub fn join(&mut self, other: &CounterState) {
        self.created.merge(other.created.clone());
        self.transferred.merge(other.transferred.clone());
        self.settled.merge(other.settled.clone());
        self.burned.merge(other.burned.clone());
    }

    /// `created[region]`.
    pub fn created(&self, region: &RegionId) -> u64 {
        self.created.get(region)
    }

    /// `transferred[(from, to)]`.
    pub fn transferred(&self, from: &RegionId, to: &RegionId) -> u64 {
        self.transferred.get(&(from.clone(), to.clone()))
    }

    /// `settled[region]`.
    pub fn settled(&self, region: &RegionId) -> u64 {
        self.settled.get(region)
    }

    /// `burned[region]`.
    pub fn burned(&self, region: &RegionId) -> u64 {
        self.burned.get(region)
    }

    /// `Σ transferred[(*, region)]`: rights `region` received.
    pub fn transferred_in(&self, region: &RegionId) -> u64 {
        self.transferred
            .dots
            .iter()
            .filter(|((_, to), _)| to == region)
            .fold(0u64, |s, (_, n)| s.saturating_add(*n))
    }

    /// `Σ transferred[(region, *)]`: rights `region` gave away.
    pub fn transferred_out(&self, region: &RegionId) -> u64 {
        self.transferred
            .dots
            .iter()
            .filter(|((from, _), _)| from == region)
            .fold(0u64, |s, (_, n)| s.saturating_add(*n))
    }

    /// Every region named in any row.
    pub fn regions(&self) -> BTreeSet<RegionId> {
        let mut out: BTreeSet<RegionId> = self.created.dots.keys().cloned().collect();
        out.extend(self.settled.dots.keys().cloned());
        out.extend(self.burned.dots.keys().cloned());
        for (a, b) in self.transferred.dots.keys() {
            out.insert(a.clone());
            out.insert(b.clone());
        }
        out
    }

    /// Rights `region` may still spend or give away, as far as this state knows (in `i128`, so
    /// that even a corrupt state cannot overflow the arithmetic; it is never negative in a state
    /// built by [`RegionCounter`]s and joins).
    pub fn available_i128(&self, region: &RegionId) -> i128 {
        let mut sum = i128::from(self.created(region))
            - i128::from(self.settled(region))
            - i128::from(self.burned(region));
        for ((from, to), n) in &self.transferred.dots {
            if to == region {
                sum += i128::from(*n);
            }
            if from == region {
                sum -= i128::from(*n);
            }
        }
        sum
    }

    /// [`CounterState::available_i128`] as money.
    pub fn available(&self, region: &RegionId) -> Money {
        let a = self.available_i128(region).clamp(0, i128::from(i64::MAX));
        // Cannot fail: clamped into i64's range above.
        Money::from_micros(i64::try_from(a).unwrap_or(i64::MAX))
    }

    /// `Σ created` over all regions.
    pub fn total_created(&self) -> u128 {
        self.created.dots.values().map(|n| u128::from(*n)).sum()
    }

    /// `Σ burned` over all regions.
    pub fn total_burned(&self) -> u128 {
        self.burned.dots.values().map(|n| u128::from(*n)).sum()
    }

    /// `Σ settled` over all regions.
    pub fn total_settled(&self) -> u128 {
        self.settled.dots.values().map(|n| u128::from(*n)).sum()
    }

    /// The rows owned by `region` (the ones it alone increments), with their values.
    fn rows_of(&self, region: &RegionId) -> Vec<(Row, u64)> {
        let mut rows = vec![
            (Row::Created(region.clone()), self.created(region)),
            (Row::Settled(region.clone()), self.settled(region)),
            (Row::Burned(region.clone()), self.burned(region)),
        ];
        for ((from, to), n) in &self.transferred.dots {
            if from == region {
                rows.push((Row::Transferred(from.clone(), to.clone()), *n));
            }
        }
        rows
    }

    fn get(&self, row: &Row) -> u64 {
        match row {
            Row::Created(r) => self.created(r),
            Row::Transferred(a, b) => self.transferred(a, b),
            Row::Settled(r) => self.settled(r),
            Row::Burned(r) => self.burned(r),
        }
    }
}

/// A counter state as a flat list of rows, for wire formats and logs that cannot key maps by
/// region pairs (JSON). Row order is canonical (sorted), so equal states give equal lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRows {
    /// `(region, micros)` of `created`.
    pub created: Vec<(RegionId, u64)>,
    /// `(from, to, micros)` of `transferred`.
    pub transferred: Vec<(RegionId, RegionId, u64)>,
    /// `(region, micros)` of `settled`.
    pub settled: Vec<(RegionId, u64)>,
    /// `(region, micros)` of `burned`.
    pub burned: Vec<(RegionId, u64)>,
}

impl From<&CounterState> for CounterRows {
    fn from(s: &CounterState) -> Self {
        let flat = |c: &VClock<RegionId>| c.dots.iter().map(|(r, n)| (r.clone(), *n)).collect();
        CounterRows {
            created: flat(&s.created),
            transferred: s
                .transferred
                .dots
                .iter()
                .map(|((a, b), n)| (a.clone(), b.clone(), *n))
                .collect(),
            settled: flat(&s.settled),
            burned: flat(&s.burned),
        }
    }
}

impl From<CounterState> for CounterRows {
    fn from(s: CounterState) -> Self {
        CounterRows::from(&s)
    }
}

impl From<CounterRows> for CounterState {
    fn from(rows: CounterRows) -> Self {
        CounterState::from(&rows)
    }
}

impl From<&CounterRows> for CounterState {
    /// Rows named twice keep the larger value, as a join would.
    fn from(rows: &CounterRows) -> Self {
        let mut s = CounterState::new();
        for (r, n) in &rows.created {
            s.created.apply(Dot::new(r.clone(), *n));
        }
        for (a, b, n) in &rows.transferred {
            s.transferred.apply(Dot::new((a.clone(), b.clone()), *n));
        }
        for (r, n) in &rows.settled {
            s.settled.apply(Dot::new(r.clone(), *n));
        }
        for (r, n) in &rows.burned {
            s.burned.apply(Dot::new(r.clone(), *n));
        }
        s
    }
}

/// One region's copy of a bucket's counter: the state plus who "we" are. All increments act on
/// our own rows only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionCounter {
    me: RegionId,
    state: CounterState,
}

fn positive(amount: Money) -> Result<u64, CounterError> {
    u64::try_from(amount.micros())
        .ok()
        .filter(|n| *n > 0)
        .ok_or(CounterError::NotPositive(amount))
}

fn bump<A: Ord + Clone + std::fmt::Debug>(
    clock: &mut VClock<A>,
    actor: A,
    by: u64,
) -> Result<(), CounterError> {
    let next = clock
        .get(&actor)
        .checked_add(by)
        .filter(|n| i64::try_from(*n).is_ok())
        .ok_or(CounterError::Overflow)?;
    clock.apply(Dot::new(actor, next));
    Ok(())
}

impl RegionCounter {
    /// An empty counter held by region `me`.
    pub fn new(me: RegionId) -> RegionCounter {
        RegionCounter {
            me,
            state: CounterState::new(),
        }
    }

    /// Our region.
    pub fn me(&self) -> &RegionId {
        &self.me
    }

    /// The lattice state, to send to peers.
    pub fn state(&self) -> &CounterState {
        &self.state
    }

    /// Rights we may still spend or give away.
    pub fn available(&self) -> Money {
        self.state.available(&self.me)
    }

    /// Creates `amount` of rights in our region (a budget set or raised here).
    pub fn create(&mut self, amount: Money) -> Result<(), CounterError> {
        let n = positive(amount)?;
        // The sum must stay representable as money.
        let after = self.state.available_i128(&self.me) + i128::from(n);
        if after > i128::from(i64::MAX) {
            return Err(CounterError::Overflow);
        }
        bump(&mut self.state.created, self.me.clone(), n)
    }

    /// Destroys `amount` of our unspent rights (a budget lowered here).
    pub fn burn(&mut self, amount: Money) -> Result<(), CounterError> {
        let n = positive(amount)?;
        self.check_available(amount)?;
        bump(&mut self.state.burned, self.me.clone(), n)
    }

    /// Records `amount` of settled spend against our rights.
    pub fn settle(&mut self, amount: Money) -> Result<(), CounterError> {
        let n = positive(amount)?;
        self.check_available(amount)?;
        bump(&mut self.state.settled, self.me.clone(), n)
    }

    /// Gives `amount` of our rights to region `to`.
    pub fn transfer(&mut self, to: &RegionId, amount: Money) -> Result<(), CounterError> {
        if *to == self.me {
            return Err(CounterError::SelfTransfer(to.clone()));
        }
        let n = positive(amount)?;
        self.check_available(amount)?;
        bump(
            &mut self.state.transferred,
            (self.me.clone(), to.clone()),
            n,
        )
    }

    fn check_available(&self, wanted: Money) -> Result<(), CounterError> {
        let available = self.available();
        if i128::from(wanted.micros()) > self.state.available_i128(&self.me) {
            return Err(CounterError::Insufficient {
                region: self.me.clone(),
                available,
                wanted,
            });
        }
        Ok(())
    }

    /// Joins a state received from region `from`, after checking it for evidence of data loss
    /// (see the module documentation). On error nothing changes.
    pub fn merge(&mut self, from: &RegionId, remote: &CounterState) -> Result<(), MergeError> {
        if *from == self.me {
            return Err(MergeError::FromSelf(from.clone()));
        }
        // The remote's list of our rows includes transfer rows we may have lost entirely.
        for (row, theirs) in remote.rows_of(&self.me) {
            let ours = self.state.get(&row);
            if theirs > ours {
                return Err(MergeError::OwnRowsAhead { row, ours, theirs });
            }
        }
        for origin in remote.regions() {
            if origin == self.me {
                continue;
            }
            let mut higher = None;
            let mut lower = None;
            let mut rows = remote.rows_of(&origin);
            rows.extend(self.state.rows_of(&origin));
            for (row, _) in rows {
                let (theirs, ours) = (remote.get(&row), self.state.get(&row));
                if theirs > ours && higher.is_none() {
                    higher = Some(row);
                } else if theirs < ours && lower.is_none() {
                    lower = Some(row);
                }
            }
            if let (Some(higher), Some(lower)) = (higher, lower) {
                return Err(MergeError::Diverged {
                    origin,
                    higher,
                    lower,
                });
            }
        }
        self.state.join(remote);
        if crate::planted::active("merge-lowers-own-rows") {
            self.planted_lower_own_rows(remote);
        }
        Ok(())
    }

    /// The planted bug `merge-lowers-own-rows`: our own rows take the remote's (older) values.
    fn planted_lower_own_rows(&mut self, remote: &CounterState) {
        let me = self.me.clone();
        for (clock, theirs) in [
            (&mut self.state.created, remote.created(&me)),
            (&mut self.state.settled, remote.settled(&me)),
            (&mut self.state.burned, remote.burned(&me)),
        ] {
            if theirs > 0 {
                clock.dots.insert(me.clone(), theirs);
            }
        }
        for ((from, to), n) in &remote.transferred.dots {
            if *from == me {
                self.state
                    .transferred
                    .dots
                    .insert((from.clone(), to.clone()), *n);
            }
        }
    }

    /// Checks the counter's invariants: no region, as far as we know, has negative availability.
    /// Tests and the harness call it after every step.
    pub fn validate(&self) -> Result<(), String> {
        for r in self.state.regions() {
            let a = self.state.available_i128(&r);
            if a < 0 {
                return Err(format!("available({r}) = {a} < 0"));
            }
        }
        if self.state.total_settled() + self.state.total_burned() > self.state.total_created() {
            return Err("settled and burned exceed created".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn region(i: usize) -> RegionId {
        RegionId::new(format!("r{i}")).unwrap()
    }

    fn m(n: i64) -> Money {
        Money::from_micros(n)
    }

    /// An arbitrary lattice state over regions r0..r3 (not necessarily one regions could build:
    /// the lattice laws hold for every state).
    fn arb_state() -> impl Strategy<Value = CounterState> {
        let row = (0..4usize, 0..4usize, 0..4u8, 0..1_000u64);
        proptest::collection::vec(row, 0..12).prop_map(|rows| {
            let mut s = CounterState::new();
            for (a, b, which, n) in rows {
                match which {
                    0 => s.created.apply(Dot::new(region(a), n)),
                    1 => s.settled.apply(Dot::new(region(a), n)),
                    2 => s.burned.apply(Dot::new(region(a), n)),
                    _ => s.transferred.apply(Dot::new((region(a), region(b)), n)),
                }
            }
            s
        })
    }

    fn joined(a: &CounterState, b: &CounterState) -> CounterState {
        let mut out = a.clone();
        out.join(b);
        out
    }

    proptest! {
        #[test]
        fn join_is_commutative(a in arb_state(), b in arb_state()) {
            prop_assert_eq!(joined(&a, &b), joined(&b, &a));
        }

        #[test]
        fn join_is_associative(a in arb_state(), b in arb_state(), c in arb_state()) {
            prop_assert_eq!(joined(&joined(&a, &b), &c), joined(&a, &joined(&b, &c)));
        }

        #[test]
        fn rows_round_trip(a in arb_state()) {
            let json = serde_json::to_string(&a).unwrap();
            prop_assert_eq!(serde_json::from_str::<CounterState>(&json).unwrap(), a.clone());
            let rows = CounterRows::from(&a);
            prop_assert_eq!(CounterState::from(&rows), a.clone());
            let json = serde_json::to_string(&rows).unwrap();
            let back: CounterRows = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, rows);
        }

        #[test]
        fn join_is_idempotent(a in arb_state(), b in arb_state()) {
            prop_assert_eq!(joined(&a, &a), a.clone());
            let ab = joined(&a, &b);
            prop_assert_eq!(joined(&ab, &b), ab);
        }
    }

    /// One step of a simulated multi-region run.
    #[derive(Clone, Debug)]
    enum Op {
        Create {
            r: usize,
            amount: i64,
        },
        Settle {
            r: usize,
            amount: i64,
        },
        Burn {
            r: usize,
            amount: i64,
        },
        Transfer {
            r: usize,
            to: usize,
            amount: i64,
        },
        /// Region `r` snapshots its state into the network for region `to`.
        Send {
            r: usize,
            to: usize,
        },
        /// The network delivers in-flight message number `pick` (modulo the count), possibly
        /// again later (`keep`: duplication), in any order.
        Deliver {
            pick: usize,
            keep: bool,
        },
    }

    fn arb_op(regions: usize) -> impl Strategy<Value = Op> {
        let r = 0..regions;
        prop_oneof![
            (r.clone(), 1..5_000i64).prop_map(|(r, amount)| Op::Create { r, amount }),
            (r.clone(), 1..3_000i64).prop_map(|(r, amount)| Op::Settle { r, amount }),
            (r.clone(), 1..2_000i64).prop_map(|(r, amount)| Op::Burn { r, amount }),
            (r.clone(), r.clone(), 1..3_000i64).prop_map(|(r, to, amount)| Op::Transfer {
                r,
                to,
                amount
            }),
            (r.clone(), r).prop_map(|(r, to)| Op::Send { r, to }),
            (any::<usize>(), any::<bool>()).prop_map(|(pick, keep)| Op::Deliver { pick, keep }),
            (any::<usize>(), any::<bool>()).prop_map(|(pick, keep)| Op::Deliver { pick, keep }),
        ]
    }

    fn arb_run() -> impl Strategy<Value = (usize, Vec<Op>)> {
        (3..=5usize).prop_flat_map(|n| (Just(n), proptest::collection::vec(arb_op(n), 1..200)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever the operations and however the network reorders, duplicates or drops
        /// states, no replica ever sees a negative availability or more settled than created,
        /// and honest merges are never refused.
        #[test]
        fn random_runs_never_overspend((n, ops) in arb_run()) {
            let mut replicas: Vec<RegionCounter> = (0..n).map(|i| RegionCounter::new(region(i))).collect();
            let mut in_flight: Vec<(usize, usize, CounterState)> = Vec::new();
            // What each region itself settled and created: the truth, not any replica's view.
            for op in ops {
                match op {
                    Op::Create { r, amount } => replicas[r].create(m(amount)).unwrap(),
                    Op::Burn { r, amount } => {
                        let before = replicas[r].available();
                        match replicas[r].burn(m(amount)) {
                            Ok(()) => prop_assert!(amount <= before.micros()),
                            Err(CounterError::Insufficient { .. }) => prop_assert!(amount > before.micros()),
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Settle { r, amount } => {
                        let before = replicas[r].available();
                        match replicas[r].settle(m(amount)) {
                            Ok(()) => prop_assert!(amount <= before.micros()),
                            Err(CounterError::Insufficient { .. }) => prop_assert!(amount > before.micros()),
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Transfer { r, to, amount } => {
                        let before = replicas[r].available();
                        match replicas[r].transfer(&region(to), m(amount)) {
                            Ok(()) => prop_assert!(amount <= before.micros() && r != to),
                            Err(CounterError::Insufficient { .. }) => prop_assert!(amount > before.micros()),
                            Err(CounterError::SelfTransfer(_)) => prop_assert_eq!(r, to),
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Send { r, to } => {
                        if r != to {
                            in_flight.push((r, to, replicas[r].state().clone()));
                        }
                    }
                    Op::Deliver { pick, keep } => {
                        if !in_flight.is_empty() {
                            let i = pick % in_flight.len();
                            let (from, to, state) = if keep {
                                in_flight[i].clone()
                            } else {
                                in_flight.swap_remove(i)
                            };
                            prop_assert_eq!(replicas[to].merge(&region(from), &state), Ok(()));
                        }
                    }
                }
                for rep in &replicas {
                    prop_assert_eq!(rep.validate(), Ok(()));
                    for i in 0..n {
                        prop_assert!(rep.state().available_i128(&region(i)) >= 0);
                    }
                }
            }
            // The truth: each region's own rows, as only it knows them.
            let mut truth = CounterState::new();
            for rep in &replicas {
                truth.join(rep.state());
            }
            prop_assert!(truth.total_settled() + truth.total_burned() <= truth.total_created());
            for (i, rep) in replicas.iter().enumerate() {
                prop_assert_eq!(truth.settled(&region(i)), rep.state().settled(&region(i)));
            }
        }
    }

    #[test]
    fn increments_are_checked() {
        let mut a = RegionCounter::new(region(0));
        assert_eq!(a.create(m(0)), Err(CounterError::NotPositive(m(0))));
        assert_eq!(a.create(m(-5)), Err(CounterError::NotPositive(m(-5))));
        a.create(m(100)).unwrap();
        assert_eq!(
            a.settle(m(101)),
            Err(CounterError::Insufficient {
                region: region(0),
                available: m(100),
                wanted: m(101)
            })
        );
        a.transfer(&region(1), m(40)).unwrap();
        a.settle(m(60)).unwrap();
        assert_eq!(a.available(), m(0));
        assert!(a.settle(m(1)).is_err());
        assert_eq!(
            a.transfer(&region(0), m(1)),
            Err(CounterError::SelfTransfer(region(0)))
        );
        assert_eq!(a.create(Money::MAX), Err(CounterError::Overflow));
        let mut b = RegionCounter::new(region(1));
        b.merge(&region(0), a.state()).unwrap();
        assert_eq!(b.available(), m(40));
        b.settle(m(40)).unwrap();
        assert_eq!(b.state().total_settled(), 100);
        assert_eq!(b.state().total_created(), 100);
        // Burning destroys unspent rights only, and is replicated like the other rows.
        let mut c = RegionCounter::new(region(2));
        c.create(m(50)).unwrap();
        assert!(matches!(
            c.burn(m(51)),
            Err(CounterError::Insufficient { .. })
        ));
        c.burn(m(20)).unwrap();
        assert_eq!(c.available(), m(30));
        assert_eq!(c.state().total_burned(), 20);
        b.merge(&region(2), c.state()).unwrap();
        assert_eq!(b.state().available(&region(2)), m(30));
    }

    #[test]
    fn a_state_showing_our_own_rows_ahead_is_refused() {
        let mut a = RegionCounter::new(region(0));
        a.create(m(100)).unwrap();
        a.transfer(&region(1), m(30)).unwrap();
        let mut b = RegionCounter::new(region(1));
        b.merge(&region(0), a.state()).unwrap();
        // Region 0 loses its state (restored from nothing) and hears from region 1.
        let mut restored = RegionCounter::new(region(0));
        let before = restored.clone();
        let err = restored.merge(&region(1), b.state()).unwrap_err();
        assert!(
            matches!(
                err,
                MergeError::OwnRowsAhead {
                    theirs: 100,
                    ours: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(restored, before, "nothing merged");
        // A stale state (lower values for our rows) is ordinary and accepted.
        let stale = b.state().clone();
        a.create(m(5)).unwrap();
        a.merge(&region(1), &stale).unwrap();
        assert_eq!(a.available(), m(75));
        assert_eq!(
            a.merge(&region(0), &stale),
            Err(MergeError::FromSelf(region(0)))
        );
    }

    #[test]
    fn a_region_that_went_on_from_an_old_state_is_caught() {
        let mut a = RegionCounter::new(region(0));
        a.create(m(100)).unwrap();
        let old = a.clone();
        a.settle(m(50)).unwrap();
        let mut c = RegionCounter::new(region(2));
        c.merge(&region(0), a.state()).unwrap();
        // Region 0 is restored from `old` (its settled 50 is lost) and creates more rights.
        let mut a2 = old;
        a2.create(m(20)).unwrap();
        let err = c.merge(&region(0), a2.state()).unwrap_err();
        assert!(
            matches!(&err, MergeError::Diverged { origin, .. } if *origin == region(0)),
            "{err}"
        );
        // Relayed through a third region, it is caught the same way.
        let mut b = RegionCounter::new(region(1));
        b.merge(&region(0), a2.state()).unwrap();
        assert!(matches!(
            c.merge(&region(1), b.state()),
            Err(MergeError::Diverged { .. })
        ));
    }
}
