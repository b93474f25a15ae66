//! I3: every notice an edge acknowledged is in the ledger exactly once, debited from its budget
//! (not only recorded as an anomaly), and nothing else is. A bill recorded only as an anomaly
//! fails the run whether or not it was acknowledged: the exchange sends every notice within its
//! bid's deadline, before the late-acceptance window ends, so the ledger has no reason to find
//! any of them late or over its lease; one that does is money billed and never debited.
//!
//! A charge is known by our bid (`REGION/LEASE.N`), not by the exchange's ids: exchanges reuse
//! auction ids, replay whole requests, and two bids of ours may carry the same
//! `EXCHANGE/AUCTION/IMP`. Each must be charged on its own, once, with the exchange ids the
//! exchange sent it with (the auditor's link to the exchange's own records).

use std::collections::BTreeMap;

use super::Verdict;
use crate::history::{Call, Completed, OpType};

/// How an event is in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// Settled in a spend batch (debited from the budget).
    Settled,
    /// Recorded as an anomaly (late or over-lease spend): in the log, not debited.
    Anomaly,
}

/// One charge as the financial log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEvent {
    /// Our bid: `REGION/LEASE.N`.
    pub bid: String,
    /// `EXCHANGE/AUCTION/IMP`.
    pub event: String,
    /// Micros charged.
    pub amount: i64,
    /// The log entry that holds it.
    pub seq: u64,
    /// Settled or anomaly.
    pub how: Charge,
}

/// Checks the notices of `history` against the charges of the financial log.
pub fn check(history: &[Completed], ledger: &[LedgerEvent]) -> Verdict {
    let mut violations = Vec::new();
    let mut in_ledger: BTreeMap<&str, Vec<&LedgerEvent>> = BTreeMap::new();
    for e in ledger {
        in_ledger.entry(e.bid.as_str()).or_default().push(e);
    }
    for (bid, found) in &in_ledger {
        if found.len() > 1 {
            let seqs: Vec<String> = found.iter().map(|e| e.seq.to_string()).collect();
            violations.push(format!(
                "bid {bid} is in the ledger {} times (log seqs {})",
                found.len(),
                seqs.join(", ")
            ));
        }
    }
    // What the exchange sent, by our bid: its ids, the amount, and whether an edge
    // acknowledged or refused it.
    struct Sent<'a> {
        event: &'a str,
        amount: i64,
        acked: bool,
        refused: bool,
    }
    let mut sent: BTreeMap<&str, Sent> = BTreeMap::new();
    let mut notices = 0u64;
    for c in history {
        let Call::Notice {
            bid, event, amount, ..
        } = &c.invoked
        else {
            continue;
        };
        notices += 1;
        let s = sent.entry(bid.as_str()).or_insert(Sent {
            event,
            amount: *amount,
            acked: false,
            refused: false,
        });
        if s.amount != *amount || s.event != event {
            violations.push(format!(
                "the exchange sent bid {bid} twice differently ({} for {} and {amount} for {event})",
                s.amount, s.event
            ));
        }
        match c.outcome {
            OpType::Ok => s.acked = true,
            OpType::Fail => s.refused = true,
            _ => {}
        }
    }
    for (bid, s) in &sent {
        let found = in_ledger.get(bid).map(Vec::as_slice).unwrap_or_default();
        if s.acked && found.is_empty() {
            violations.push(format!(
                "bid {bid} ({}): an edge acknowledged it, but the ledger does not hold it",
                s.event
            ));
        }
        // An anomaly is in the log but debits nothing: an acknowledged bill recorded so is
        // money the exchange billed and the budget never paid.
        if !found.is_empty() && found.iter().all(|e| e.how == Charge::Anomaly) {
            let who = if s.acked {
                "an edge acknowledged it"
            } else {
                "the exchange billed it within its deadline (unacknowledged)"
            };
            violations.push(format!(
                "bid {bid} ({}): {who}, but the ledger holds it only as an anomaly (log seq \
                 {}), debited from no budget",
                s.event, found[0].seq
            ));
        }
        if s.refused && !s.acked && !found.is_empty() {
            violations.push(format!(
                "bid {bid} ({}): every edge that answered refused it, yet the ledger holds it \
                 (seq {})",
                s.event, found[0].seq
            ));
        }
        if let Some(e) = found.iter().find(|e| e.amount != s.amount) {
            violations.push(format!(
                "bid {bid} ({}): the ledger charged {} micros (seq {}), the exchange billed {}",
                s.event, e.amount, e.seq, s.amount
            ));
        }
        if let Some(e) = found.iter().find(|e| e.event != s.event) {
            violations.push(format!(
                "bid {bid}: the ledger holds it with the exchange ids {} (seq {}), the exchange \
                 sent {}",
                e.event, e.seq, s.event
            ));
        }
    }
    for (bid, found) in &in_ledger {
        if !sent.contains_key(bid) {
            violations.push(format!(
                "bid {bid} ({}) is in the ledger (seq {}) but the exchange never sent it",
                found[0].event, found[0].seq
            ));
        }
    }
    Verdict::new("I3", notices + ledger.len() as u64, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(bid: &str, event: &str, amount: i64, outcome: OpType) -> Completed {
        let call = Call::Notice {
            bid: bid.into(),
            event: event.into(),
            campaign: "c".into(),
            amount,
            index: None,
            region: String::new(),
        };
        Completed {
            process: "exchange".into(),
            invoke_us: 0,
            complete_us: (outcome != OpType::Info).then_some(1),
            outcome,
            invoked: call.clone(),
            completed: Some(call),
        }
    }

    fn charged(bid: &str, event: &str, amount: i64, seq: u64) -> LedgerEvent {
        LedgerEvent {
            bid: bid.into(),
            event: event.into(),
            amount,
            seq,
            how: Charge::Settled,
        }
    }

    #[test]
    fn a_faithful_ledger_passes() {
        let h = vec![
            notice("r/1.1", "x/a/1", 10, OpType::Ok),
            notice("r/1.1", "x/a/1", 10, OpType::Info), // a retry of the same notice
            notice("r/1.2", "x/b/1", 20, OpType::Info), // unknown: may or may not be in the ledger
            notice("r/1.3", "x/c/1", 30, OpType::Fail),
        ];
        let v = check(
            &h,
            &[
                charged("r/1.1", "x/a/1", 10, 4),
                charged("r/1.2", "x/b/1", 20, 5),
            ],
        );
        assert!(v.held, "{v:?}");
    }

    #[test]
    fn two_bids_with_the_same_exchange_ids_are_each_charged() {
        let h = vec![
            notice("r/1.1", "x/a/1", 10, OpType::Ok),
            notice("r/2.1", "x/a/1", 12, OpType::Ok),
        ];
        let both = [
            charged("r/1.1", "x/a/1", 10, 4),
            charged("r/2.1", "x/a/1", 12, 7),
        ];
        assert!(check(&h, &both).held);
        // Dropping the second as a duplicate of the first (dedup by the exchange's ids) is
        // caught.
        let v = check(&h, &both[..1]);
        assert!(!v.held);
        assert!(v.evidence[0].contains("r/2.1"), "{v:?}");
    }

    #[test]
    fn an_acknowledged_notice_missing_from_the_ledger_is_caught() {
        let v = check(&[notice("r/1.1", "x/a/1", 10, OpType::Ok)], &[]);
        assert!(!v.held);
        assert!(v.evidence[0].contains("does not hold it"), "{v:?}");
    }

    #[test]
    fn an_acknowledged_bill_recorded_only_as_an_anomaly_is_caught() {
        let h = vec![notice("r/1.1", "x/a/1", 10, OpType::Ok)];
        let mut late = charged("r/1.1", "x/a/1", 10, 4);
        late.how = Charge::Anomaly;
        let v = check(&h, &[late.clone()]);
        assert!(!v.held);
        assert!(v.evidence[0].contains("anomaly"), "{v:?}");
        // Unacknowledged too: the exchange sent it in time, so it was billed and never debited.
        let v = check(&[notice("r/1.1", "x/a/1", 10, OpType::Info)], &[late]);
        assert!(!v.held);
        assert!(v.evidence[0].contains("within its deadline"), "{v:?}");
    }

    #[test]
    fn a_double_charge_is_caught() {
        let h = vec![notice("r/1.1", "x/a/1", 10, OpType::Ok)];
        let v = check(
            &h,
            &[
                charged("r/1.1", "x/a/1", 10, 4),
                charged("r/1.1", "x/a/1", 10, 9),
            ],
        );
        assert!(!v.held);
        assert!(v.evidence[0].contains("2 times"), "{v:?}");
    }

    #[test]
    fn charges_the_exchange_never_sent_at_another_price_or_with_other_ids_are_caught() {
        let h = vec![notice("r/1.1", "x/a/1", 10, OpType::Ok)];
        assert!(
            !check(
                &h,
                &[
                    charged("r/1.1", "x/a/1", 10, 1),
                    charged("r/1.9", "x/z/1", 5, 2)
                ]
            )
            .held
        );
        assert!(!check(&h, &[charged("r/1.1", "x/a/1", 11, 1)]).held);
        assert!(!check(&h, &[charged("r/1.1", "x/q/1", 10, 1)]).held);
    }

    #[test]
    fn a_refused_notice_that_was_charged_is_caught() {
        let h = vec![notice("r/1.1", "x/a/1", 10, OpType::Fail)];
        assert!(!check(&h, &[charged("r/1.1", "x/a/1", 10, 1)]).held);
    }
}
