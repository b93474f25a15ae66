//! I9: money is conserved at every step of every replica's financial log, not only at the end
//! of a budget (as Jepsen's bank test checks every read, not only the last).
//!
//! Each replica's log is replayed entry by entry, with nothing but what the entries say
//! (LOG_FORMAT.md §3), and after every entry:
//!
//! - **per lease**: granted = settled + returned + in doubt + still open, where "still open"
//!   (`granted − settled − returned − in doubt`) is never negative, and is zero once the lease
//!   is released or reclaimed; a release or reclaim says the lease's settled spend as it is;
//!   each in-doubt part is never negative, and an `in_doubt_returned` returns exactly what
//!   notices left of its part (no more: that would be money created; no less: money lost);
//! - **per bucket of the region**: rights (budgets created here, minus burns and transfers out,
//!   plus rights received) minus what every lease covering the bucket still holds or spent
//!   (`granted − returned`) is never negative.
//!
//! An error that moves a few micros, anywhere in a run, shows here at the entry that made it.

use std::collections::BTreeMap;

use shared::log::{Entry, Payload};

use super::Verdict;
use super::budget::micros;

/// One lease as the log has told it so far.
#[derive(Debug, Default)]
struct Lease {
    granted: i64,
    buckets: Vec<String>,
    settled: i64,
    returned: i64,
    /// The in-doubt parts, by wait (ascending), once released or reclaimed.
    parts: Vec<(u64, i64)>,
    closed: bool,
}

impl Lease {
    fn in_doubt(&self) -> i64 {
        self.parts.iter().map(|p| p.1).sum()
    }

    fn open_rest(&self) -> i64 {
        self.granted - self.settled - self.returned - self.in_doubt()
    }

    /// `amount` returned at once from the in-doubt parts (lost bids, charged bids' rests): only a
    /// closed lease has parts, and never more than they hold. The violations, if any.
    fn return_from_doubt(&mut self, at: &str, id: u64, amount: i64, what: &str) -> Vec<String> {
        let mut v = Vec::new();
        if !self.closed {
            // An open lease returns what it holds at its release, not before.
            v.push(format!(
                "{at}: lease {id} returned {} of {what} while open (it returns them at its \
                 release)",
                micros(amount)
            ));
        }
        let short = self.take_from_parts(amount);
        if short > 0 {
            v.push(format!(
                "{at}: lease {id} returned {} of {what}, {} more than it held in doubt",
                micros(amount),
                micros(short)
            ));
        }
        self.returned += amount - short;
        v
    }

    /// Takes `amount` from the parts, shortest wait first; what the parts could not cover.
    fn take_from_parts(&mut self, mut amount: i64) -> i64 {
        for p in &mut self.parts {
            let t = amount.min(p.1);
            p.1 -= t;
            amount -= t;
        }
        self.parts.retain(|p| p.1 > 0);
        amount
    }
}

/// Replays one replica's `entries` (in seq order) and returns the violations, each naming the
/// entry (`node`, seq) where money stopped adding up.
pub fn replay(node: &str, entries: &[Entry]) -> Vec<String> {
    let mut v = Vec::new();
    let mut leases: BTreeMap<u64, Lease> = BTreeMap::new();
    let mut rights: BTreeMap<String, i64> = BTreeMap::new();
    // Per bucket, what leases covering it took and have not returned (granted − returned).
    let mut used: BTreeMap<String, i64> = BTreeMap::new();
    // Day buckets retired: nothing may take or bring their money again.
    let mut retired: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for e in entries {
        let at = format!("{node} seq {}", e.seq);
        let mut touched: Vec<u64> = Vec::new();
        let returned_before: BTreeMap<u64, i64> = lease_ids(&e.payload)
            .filter_map(|id| leases.get(&id).map(|l| (id, l.returned)))
            .collect();
        let mut buckets_touched: Vec<String> = Vec::new();
        match &e.payload {
            Payload::BudgetSet(b) => {
                let k = format!("{}/{}", b.campaign, b.bucket);
                *rights.entry(k.clone()).or_default() += b.after.micros() - b.before.micros();
                buckets_touched.push(k);
            }
            Payload::RightsTransferred(t) => {
                let k = format!("{}/{}", t.campaign, t.bucket);
                if retired.contains(&k) {
                    v.push(format!(
                        "{at}: rights of {k} transferred after it was retired"
                    ));
                }
                *rights.entry(k.clone()).or_default() -= t.amount.micros();
                buckets_touched.push(k);
            }
            Payload::RemoteMerged(m) => {
                for r in &m.received {
                    let k = format!("{}/{}", r.campaign, r.bucket);
                    if retired.contains(&k) {
                        v.push(format!("{at}: rights of {k} received after it was retired"));
                    }
                    *rights
                        .entry(format!("{}/{}", r.campaign, r.bucket))
                        .or_default() += r.amount.micros();
                }
            }
            Payload::LeaseGranted(g) => {
                if leases.contains_key(&g.lease.0) {
                    v.push(format!("{at}: lease {} granted twice", g.lease.0));
                }
                for b in &g.buckets {
                    let k = format!("{}/{b}", g.campaign);
                    if retired.contains(&k) {
                        v.push(format!(
                            "{at}: lease {} granted on {k} after it was retired",
                            g.lease.0
                        ));
                    }
                    *used.entry(k.clone()).or_default() += g.amount.micros();
                    buckets_touched.push(k);
                }
                leases.insert(
                    g.lease.0,
                    Lease {
                        granted: g.amount.micros(),
                        buckets: g
                            .buckets
                            .iter()
                            .map(|b| format!("{}/{b}", g.campaign))
                            .collect(),
                        ..Lease::default()
                    },
                );
                touched.push(g.lease.0);
            }
            Payload::SpendBatch(b) => {
                let total: i64 = b.events.iter().map(|x| x.amount.micros()).sum();
                let Some(l) = leases.get_mut(&b.lease.0) else {
                    v.push(format!(
                        "{at}: spend under lease {} never granted",
                        b.lease.0
                    ));
                    continue;
                };
                l.settled += total;
                if l.closed {
                    // Settled after the release or reclaim: out of the in-doubt parts.
                    let short = l.take_from_parts(total);
                    if short > 0 {
                        v.push(format!(
                            "{at}: lease {} settled {} after it closed, {} more than it held \
                             in doubt",
                            b.lease.0,
                            micros(total),
                            micros(short)
                        ));
                        // Count the shortfall as taken, so that one error is reported once.
                        l.settled -= short;
                    }
                }
                touched.push(b.lease.0);
            }
            Payload::BidsLost(x) => {
                let Some(l) = leases.get_mut(&x.lease.0) else {
                    v.push(format!(
                        "{at}: bids lost of lease {} never granted",
                        x.lease.0
                    ));
                    continue;
                };
                let returned = x.returned.micros();
                if returned > x.bid_total.micros() || returned < 0 {
                    v.push(format!(
                        "{at}: lease {} returned {} for lost bids worth {}",
                        x.lease.0,
                        micros(returned),
                        micros(x.bid_total.micros())
                    ));
                }
                if returned > 0 {
                    v.extend(l.return_from_doubt(&at, x.lease.0, returned, "lost bids"));
                }
                touched.push(x.lease.0);
            }
            Payload::RestReturned(x) => {
                let Some(l) = leases.get_mut(&x.lease.0) else {
                    v.push(format!(
                        "{at}: rest returned of lease {} never granted",
                        x.lease.0
                    ));
                    continue;
                };
                v.extend(l.return_from_doubt(
                    &at,
                    x.lease.0,
                    x.returned.micros(),
                    "charged bids' rests",
                ));
                touched.push(x.lease.0);
            }
            Payload::LeaseReleased(r) => {
                let Some(l) = leases.get_mut(&r.lease.0) else {
                    v.push(format!(
                        "{at}: release of lease {} never granted",
                        r.lease.0
                    ));
                    continue;
                };
                if l.closed {
                    v.push(format!(
                        "{at}: lease {} released after it closed",
                        r.lease.0
                    ));
                }
                if r.spent.micros() != l.settled {
                    v.push(format!(
                        "{at}: lease {} released saying {} spent; the log settled {}",
                        r.lease.0,
                        micros(r.spent.micros()),
                        micros(l.settled)
                    ));
                }
                l.returned += r.returned.micros();
                l.parts = r
                    .in_doubt
                    .iter()
                    .map(|p| (p.wait_ms, p.amount.micros()))
                    .collect();
                l.closed = true;
                touched.push(r.lease.0);
            }
            Payload::LeaseReclaimed(r) => {
                let Some(l) = leases.get_mut(&r.lease.0) else {
                    v.push(format!(
                        "{at}: reclaim of lease {} never granted",
                        r.lease.0
                    ));
                    continue;
                };
                if l.closed {
                    v.push(format!(
                        "{at}: lease {} reclaimed after it closed",
                        r.lease.0
                    ));
                }
                if r.spent.micros() != l.settled {
                    v.push(format!(
                        "{at}: lease {} reclaimed saying {} spent; the log settled {}",
                        r.lease.0,
                        micros(r.spent.micros()),
                        micros(l.settled)
                    ));
                }
                l.returned += r.returned.micros();
                l.parts = if r.in_doubt.micros() > 0 {
                    vec![(r.wait_ms, r.in_doubt.micros())]
                } else {
                    Vec::new()
                };
                l.closed = true;
                touched.push(r.lease.0);
            }
            Payload::InDoubtReturned(r) => {
                let Some(l) = leases.get_mut(&r.lease.0) else {
                    v.push(format!(
                        "{at}: in-doubt return of lease {} never granted",
                        r.lease.0
                    ));
                    continue;
                };
                let left = l.parts.iter().find(|p| p.0 == r.wait_ms).map_or(0, |p| p.1);
                if r.returned.micros() != left {
                    v.push(format!(
                        "{at}: lease {} returned {} from its in-doubt part of wait {} ms, which \
                         held {}",
                        r.lease.0,
                        micros(r.returned.micros()),
                        r.wait_ms,
                        micros(left)
                    ));
                }
                l.parts.retain(|p| p.0 != r.wait_ms);
                l.returned += r.returned.micros();
                touched.push(r.lease.0);
            }
            Payload::DayRetired(d) => {
                let k = format!("{}/{}", d.campaign, d.bucket);
                // Retired only when no lease holds money of it, and what lapses is exactly
                // what the log leaves available there.
                for (id, l) in &leases {
                    if l.buckets.contains(&k) && (!l.closed || l.in_doubt() > 0) {
                        v.push(format!(
                            "{at}: {k} retired while lease {id} holds money of it"
                        ));
                    }
                }
                let left =
                    rights.get(&k).copied().unwrap_or(0) - used.get(&k).copied().unwrap_or(0);
                if left != d.lapsed.micros() {
                    v.push(format!(
                        "{at}: {k} retired with {} lapsed; the log leaves {} available",
                        micros(d.lapsed.micros()),
                        micros(left)
                    ));
                }
                if !retired.insert(k.clone()) {
                    v.push(format!("{at}: {k} retired twice"));
                }
            }
            Payload::Anomaly(_) | Payload::ParamsSet(_) => {}
        }
        for id in touched {
            let Some(l) = leases.get(&id) else { continue };
            let rest = l.open_rest();
            if rest < 0 || (l.closed && rest != 0) {
                v.push(format!(
                    "{at}: lease {id} granted {} = settled {} + returned {} + in doubt {} + \
                     open {} ({})",
                    micros(l.granted),
                    micros(l.settled),
                    micros(l.returned),
                    micros(l.in_doubt()),
                    micros(rest),
                    if l.closed {
                        "closed: nothing may stay open"
                    } else {
                        "open: negative"
                    }
                ));
            }
        }
        // Money a lease returned leaves its buckets' use.
        for (id, before) in returned_before {
            if let Some(l) = leases.get(&id) {
                let d = l.returned - before;
                for b in &l.buckets {
                    *used.entry(b.clone()).or_default() -= d;
                    buckets_touched.push(b.clone());
                }
            }
        }
        // Per bucket: what leases took and never returned fits in the region's rights.
        buckets_touched.sort();
        buckets_touched.dedup();
        for bucket in buckets_touched {
            let have = rights.get(&bucket).copied().unwrap_or(0);
            let took = used.get(&bucket).copied().unwrap_or(0);
            if took > have {
                v.push(format!(
                    "{at}: {bucket}: leases hold or spent {} of rights {} (available {})",
                    micros(took),
                    micros(have),
                    micros(have - took)
                ));
            }
        }
    }
    v
}

/// The lease an entry names, if any.
fn lease_ids(p: &Payload) -> impl Iterator<Item = u64> {
    match p {
        Payload::LeaseReleased(r) => Some(r.lease.0),
        Payload::LeaseReclaimed(r) => Some(r.lease.0),
        Payload::InDoubtReturned(r) => Some(r.lease.0),
        Payload::BidsLost(r) => Some(r.lease.0),
        Payload::RestReturned(r) => Some(r.lease.0),
        _ => None,
    }
    .into_iter()
}

/// I9 over every replica: `(node, entries)`. Checked: entries replayed.
pub fn check(replicas: &[(String, Vec<Entry>)]) -> Verdict {
    let mut violations = Vec::new();
    let mut checked = 0u64;
    for (node, entries) in replicas {
        checked += entries.len() as u64;
        // One error tends to repeat at every later entry: the first few per replica say it.
        violations.extend(replay(node, entries).into_iter().take(5));
    }
    Verdict::new("I9", checked, violations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::bucket::Bucket;
    use shared::log::entry::{
        BidsLost, BudgetSet, DayRetired, DoubtPart, InDoubtReturned, LeaseGranted, LeaseReclaimed,
        LeaseReleased, RestReturned, SpendBatch,
    };
    use shared::{BatchId, EventKey, LeaseId, Money};

    fn m(n: i64) -> Money {
        Money::from_micros(n)
    }

    fn log(payloads: Vec<Payload>) -> Vec<Entry> {
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Entry {
                seq: i as u64,
                prev_hash: [0; 32],
                raft_term: 1,
                raft_index: i as u64 + 1,
                time_us: 0,
                payload,
            })
            .collect()
    }

    fn budget(after: i64) -> Payload {
        Payload::BudgetSet(BudgetSet {
            campaign: "c".parse().unwrap(),
            bucket: Bucket::Lifetime,
            before: m(0),
            after: m(after),
        })
    }

    fn grant(lease: u64, amount: i64) -> Payload {
        Payload::LeaseGranted(LeaseGranted {
            lease: LeaseId(lease),
            edge: "e".parse().unwrap(),
            campaign: "c".parse().unwrap(),
            buckets: vec![Bucket::Lifetime],
            amount: m(amount),
            duration_ms: 5_000,
        })
    }

    fn spend(lease: u64, amounts: &[i64]) -> Payload {
        Payload::SpendBatch(SpendBatch {
            lease: LeaseId(lease),
            batch: BatchId([lease as u8; 16]),
            edge: "e".parse().unwrap(),
            events: amounts
                .iter()
                .enumerate()
                .map(|(i, a)| shared::log::SpendEvent {
                    bid: i as u64 + 1,
                    key: EventKey::from_parts("x", &format!("a{i}"), "1").unwrap(),
                    amount: m(*a),
                })
                .collect(),
        })
    }

    fn release(lease: u64, spent: i64, returned: i64, parts: &[(u64, i64)]) -> Payload {
        Payload::LeaseReleased(LeaseReleased {
            lease: LeaseId(lease),
            batch: BatchId([9; 16]),
            spent: m(spent),
            returned: m(returned),
            bids: 10,
            in_doubt: parts
                .iter()
                .map(|(w, a)| DoubtPart {
                    wait_ms: *w,
                    amount: m(*a),
                })
                .collect(),
        })
    }

    fn expire(lease: u64, wait_ms: u64, returned: i64) -> Payload {
        Payload::InDoubtReturned(InDoubtReturned {
            lease: LeaseId(lease),
            wait_ms,
            returned: m(returned),
        })
    }

    #[test]
    fn a_lease_that_adds_up_at_every_step_passes() {
        let entries = log(vec![
            budget(10_000),
            grant(1, 6_000),
            spend(1, &[1_000, 500]),
            release(1, 1_500, 2_500, &[(100, 1_000), (900, 1_000)]),
            // A late notice takes from the shortest wait first; a loss returns at once.
            spend(1, &[700]),
            Payload::BidsLost(BidsLost {
                lease: LeaseId(1),
                batch: BatchId([7; 16]),
                count: 1,
                bid_total: m(400),
                returned: m(400),
            }),
            expire(1, 100, 0),
            expire(1, 900, 900),
            grant(2, 4_000),
            Payload::LeaseReclaimed(LeaseReclaimed {
                lease: LeaseId(2),
                spent: m(0),
                returned: m(0),
                in_doubt: m(4_000),
                wait_ms: 20_000,
            }),
            expire(2, 20_000, 4_000),
            grant(3, 10_000 - 2_200),
        ]);
        let v = replay("n1", &entries);
        assert!(v.is_empty(), "{v:#?}");
        let verdict = check(&[("n1".into(), entries)]);
        assert!(verdict.held && verdict.checked == 12, "{verdict:?}");
    }

    #[test]
    fn a_retired_day_lapses_what_the_log_left_and_is_never_touched_again() {
        let day = Bucket::Day(jiff::civil::date(2026, 11, 1));
        let day_budget = Payload::BudgetSet(BudgetSet {
            campaign: "c".parse().unwrap(),
            bucket: day,
            before: m(0),
            after: m(10_000),
        });
        let grant_day = |lease: u64, amount: i64| {
            Payload::LeaseGranted(LeaseGranted {
                lease: LeaseId(lease),
                edge: "e".parse().unwrap(),
                campaign: "c".parse().unwrap(),
                buckets: vec![Bucket::Lifetime, day],
                amount: m(amount),
                duration_ms: 5_000,
            })
        };
        let retire = |lapsed: i64| {
            Payload::DayRetired(DayRetired {
                campaign: "c".parse().unwrap(),
                bucket: day,
                budget: m(10_000),
                settled_here: m(3_000),
                settled_all: m(3_000),
                lapsed: m(lapsed),
            })
        };
        let start = vec![
            budget(100_000),
            day_budget,
            grant_day(1, 6_000),
            spend(1, &[3_000]),
        ];
        let with = |tail: Vec<Payload>| {
            let mut p = start.clone();
            p.extend(tail);
            replay("n1", &log(p))
        };
        let ok = with(vec![release(1, 3_000, 3_000, &[]), retire(7_000)]);
        assert!(ok.is_empty(), "{ok:#?}");
        let v = with(vec![release(1, 3_000, 3_000, &[]), retire(7_001)]);
        assert!(
            v.len() == 1 && v[0].contains("0.007001 lapsed") && v[0].contains("0.007000 available"),
            "{v:#?}"
        );
        let v = with(vec![retire(7_000)]);
        assert!(
            v.iter().any(|x| x.contains("while lease 1 holds")),
            "{v:#?}"
        );
        let v = with(vec![
            release(1, 3_000, 3_000, &[]),
            retire(7_000),
            grant_day(2, 1_000),
        ]);
        assert!(
            v.iter().any(|x| x.contains("after it was retired")),
            "{v:#?}"
        );
    }

    #[test]
    fn one_micro_too_many_anywhere_is_caught_at_its_entry() {
        // A release that returns one micro more than the edge left unspent.
        let v = replay(
            "n1",
            &log(vec![
                budget(10_000),
                grant(1, 6_000),
                spend(1, &[1_000]),
                release(1, 1_000, 4_001, &[(100, 1_000)]),
            ]),
        );
        assert!(
            v.iter().any(|e| e.starts_with("n1 seq 3: lease 1")),
            "{v:#?}"
        );
        // An in-doubt part returned whole after a late notice took some of it.
        let v = replay(
            "n1",
            &log(vec![
                budget(10_000),
                grant(1, 6_000),
                release(1, 0, 5_000, &[(100, 1_000)]),
                spend(1, &[300]),
                expire(1, 100, 1_000),
            ]),
        );
        assert!(
            v.iter()
                .any(|e| e.contains("seq 4") && e.contains("which held 0.000700")),
            "{v:#?}"
        );
        // A grant past the region's rights (the second lease is one micro too big).
        let v = replay(
            "n1",
            &log(vec![budget(10_000), grant(1, 6_000), grant(2, 4_001)]),
        );
        assert!(
            v.iter()
                .any(|e| e.contains("seq 2") && e.contains("available -0.000001")),
            "{v:#?}"
        );
        // A charge after the release, past what the release held in doubt.
        let v = replay(
            "n1",
            &log(vec![
                budget(10_000),
                grant(1, 6_000),
                release(1, 0, 5_000, &[(100, 1_000)]),
                spend(1, &[1_001]),
            ]),
        );
        assert!(v.iter().any(|e| e.contains("seq 3")), "{v:#?}");
        // A release that misstates what was settled.
        let v = replay(
            "n1",
            &log(vec![
                budget(10_000),
                grant(1, 6_000),
                spend(1, &[1_000]),
                release(1, 999, 5_001, &[]),
            ]),
        );
        assert!(
            v.iter().any(|e| e.contains("saying 0.000999 spent")),
            "{v:#?}"
        );
        assert!(!check(&[]).held, "no replica proves nothing");
    }

    fn rest(lease: u64, returned: i64) -> Payload {
        Payload::RestReturned(RestReturned {
            lease: LeaseId(lease),
            batch: BatchId([8; 16]),
            count: 1,
            returned: m(returned),
        })
    }

    #[test]
    fn a_charged_bids_rest_returns_from_the_parts_and_not_a_micro_more() {
        // A bid of 1,000 held in doubt is charged 600 after the release: 400 comes back at
        // once.
        let ok = log(vec![
            budget(10_000),
            grant(1, 6_000),
            release(1, 0, 5_000, &[(100, 1_000)]),
            spend(1, &[600]),
            rest(1, 400),
            // The part is empty, so the lease is closed: all but the charge is free again.
            grant(2, 10_000 - 600),
        ]);
        let v = replay("n1", &ok);
        assert!(v.is_empty(), "{v:#?}");
        // One micro more than the part held after the charge.
        let v = replay(
            "n1",
            &log(vec![
                budget(10_000),
                grant(1, 6_000),
                release(1, 0, 5_000, &[(100, 1_000)]),
                spend(1, &[600]),
                rest(1, 401),
            ]),
        );
        assert!(
            v.iter()
                .any(|e| e.contains("seq 4") && e.contains("0.000001 more than it held")),
            "{v:#?}"
        );
        // A rest returned while the lease is open (it returns with the release).
        let v = replay(
            "n1",
            &log(vec![
                budget(10_000),
                grant(1, 6_000),
                spend(1, &[600]),
                rest(1, 400),
            ]),
        );
        assert!(
            v.iter()
                .any(|e| e.contains("seq 3") && e.contains("while open")),
            "{v:#?}"
        );
    }
}
