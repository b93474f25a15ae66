//! I10: every lease's bids stayed within the lease, as the exchange and the edges saw them.
//!
//! - What the exchange billed under a lease (every bill it made, acknowledged or not) is at
//!   most what the lease granted. On a first-price exchange a charge is the whole reservation,
//!   so a bid that took a little more than its lease had left shows here.
//! - No bid was made under a lease after the harness had seen the lease closed: a bid
//!   request sent after a linearizable read returned at an index at or past the lease's release
//!   or reclaim got its reservation after the region had taken the lease back. The order comes
//!   from the harness's own clock and the region's Raft indexes; no node's clock is trusted.
//! - Each lease an edge released shows (`/debug/leases`) what it granted and what was never
//!   reserved: never below zero (reserved past the lease), and the amount the ledger granted.

use std::collections::BTreeMap;

use super::Verdict;
use super::budget::micros;

/// One lease as an edge showed it after releasing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeLease {
    /// The edge.
    pub edge: String,
    /// What the edge held as the lease's amount.
    pub amount: i64,
    /// What was never reserved, unclamped (the lowest seen).
    pub unreserved: i64,
}

/// What the checker needs, keyed by `(region, lease)` (region "" in a run of one region).
#[derive(Default)]
pub struct Inputs {
    /// Amount granted, from the ledger.
    pub granted: BTreeMap<(String, u64), i64>,
    /// The Raft index that closed the lease (release or reclaim).
    pub closed_at: BTreeMap<(String, u64), u64>,
    /// What the exchange billed under the lease.
    pub billed: BTreeMap<(String, u64), i64>,
    /// The send time of the last bid request answered with a bid under the lease (µs).
    pub last_bid_sent_us: BTreeMap<(String, u64), u64>,
    /// Linearizable reads that completed: `(region, index read at, completed at µs)`.
    pub reads: Vec<(String, u64, u64)>,
    /// Leases as the edges showed them after release.
    pub edges: BTreeMap<(String, u64), EdgeLease>,
}

/// Checks I10. Checked: leases examined.
pub fn check(i: &Inputs) -> Verdict {
    let mut violations = Vec::new();
    let name = |k: &(String, u64)| {
        if k.0.is_empty() {
            format!("lease {}", k.1)
        } else {
            format!("{}/lease {}", k.0, k.1)
        }
    };
    for (k, billed) in &i.billed {
        match i.granted.get(k) {
            Some(g) if billed > g => violations.push(format!(
                "{}: the exchange billed {} under it, which granted {} (over by {})",
                name(k),
                micros(*billed),
                micros(*g),
                micros(billed - g)
            )),
            Some(_) => {}
            None => violations.push(format!(
                "{}: the exchange billed {} under a lease the ledger never granted",
                name(k),
                micros(*billed)
            )),
        }
    }
    // Per region, the earliest time each index was seen committed: reads sorted by completion,
    // with the highest index seen so far.
    let mut seen: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    let mut reads: Vec<&(String, u64, u64)> = i.reads.iter().collect();
    reads.sort_by_key(|r| r.2);
    for (region, index, at) in reads {
        let v = seen.entry(region.as_str()).or_default();
        if v.last().is_none_or(|(_, top)| index > top) {
            v.push((*at, *index));
        }
    }
    let seen_closed = |region: &str, index: u64| -> Option<u64> {
        let v = seen.get(region)?;
        let i = v.partition_point(|(_, top)| *top < index);
        v.get(i).map(|(at, _)| *at)
    };
    for (k, sent) in &i.last_bid_sent_us {
        let Some(closed) = i.closed_at.get(k) else {
            continue;
        };
        if let Some(at) = seen_closed(&k.0, *closed)
            && *sent > at
        {
            violations.push(format!(
                "{}: a bid request sent at {} µs got a bid under it, after a read at {} µs had \
                 seen it closed (Raft index {closed})",
                name(k),
                sent,
                at
            ));
        }
    }
    for (k, e) in &i.edges {
        if e.unreserved < 0 {
            violations.push(format!(
                "{}: {} reserved {} past its amount {}",
                name(k),
                e.edge,
                micros(-e.unreserved),
                micros(e.amount)
            ));
        }
        if let Some(g) = i.granted.get(k)
            && *g != e.amount
        {
            violations.push(format!(
                "{}: {} held it as {}, the ledger granted {}",
                name(k),
                e.edge,
                micros(e.amount),
                micros(*g)
            ));
        }
    }
    let mut leases: Vec<&(String, u64)> = i
        .billed
        .keys()
        .chain(i.last_bid_sent_us.keys())
        .chain(i.edges.keys())
        .collect();
    leases.sort();
    leases.dedup();
    Verdict::new("I10", leases.len() as u64, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(lease: u64) -> (String, u64) {
        (String::new(), lease)
    }

    fn inputs() -> Inputs {
        let mut i = Inputs::default();
        i.granted.insert(k(1), 10_000);
        i.granted.insert(k(2), 5_000);
        i.closed_at.insert(k(1), 40);
        i.billed.insert(k(1), 10_000);
        i.billed.insert(k(2), 4_000);
        i.last_bid_sent_us.insert(k(1), 1_000);
        i.reads = vec![("".into(), 30, 900), ("".into(), 41, 1_500)];
        i.edges.insert(
            k(1),
            EdgeLease {
                edge: "edge-1".into(),
                amount: 10_000,
                unreserved: 0,
            },
        );
        i
    }

    #[test]
    fn bids_and_bills_within_their_leases_pass() {
        let v = check(&inputs());
        assert!(v.held, "{v:?}");
        assert_eq!(v.checked, 2);
        assert!(!check(&Inputs::default()).held);
    }

    #[test]
    fn a_micro_past_a_lease_or_a_bid_after_its_close_is_caught() {
        let mut i = inputs();
        i.billed.insert(k(2), 5_001);
        let v = check(&i);
        assert!(v.evidence[0].contains("over by 0.000001"), "{v:?}");
        let mut i = inputs();
        // Sent after the read that saw index 41 ≥ the close at 40.
        i.last_bid_sent_us.insert(k(1), 1_501);
        let v = check(&i);
        assert!(!v.held && v.evidence[0].contains("seen it closed"), "{v:?}");
        // A bid sent before the close was seen is no evidence, whenever its answer came.
        let mut i = inputs();
        i.last_bid_sent_us.insert(k(1), 1_499);
        assert!(check(&i).held);
        let mut i = inputs();
        i.edges.get_mut(&k(1)).unwrap().unreserved = -3;
        let v = check(&i);
        assert!(v.evidence[0].contains("reserved 0.000003 past"), "{v:?}");
        let mut i = inputs();
        i.billed.insert(k(9), 1);
        assert!(!check(&i).held);
    }
}
