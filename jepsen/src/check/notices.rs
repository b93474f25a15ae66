//! I3: every notice an edge acknowledged is in the ledger exactly once, and nothing else is.

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

/// One event key as the financial log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEvent {
    /// `EXCHANGE/AUCTION/IMP`.
    pub event: String,
    /// Micros charged.
    pub amount: i64,
    /// The log entry that holds it.
    pub seq: u64,
    /// Settled or anomaly.
    pub how: Charge,
}

/// Checks the notices of `history` against the events of the financial log.
pub fn check(history: &[Completed], ledger: &[LedgerEvent]) -> Verdict {
    let mut violations = Vec::new();
    let mut in_ledger: BTreeMap<&str, Vec<&LedgerEvent>> = BTreeMap::new();
    for e in ledger {
        in_ledger.entry(e.event.as_str()).or_default().push(e);
    }
    for (event, found) in &in_ledger {
        if found.len() > 1 {
            let seqs: Vec<String> = found.iter().map(|e| e.seq.to_string()).collect();
            violations.push(format!(
                "{event} is in the ledger {} times (log seqs {})",
                found.len(),
                seqs.join(", ")
            ));
        }
    }
    // What the exchange sent, by event: the amount, and whether an edge acknowledged or refused.
    struct Sent {
        amount: i64,
        acked: bool,
        refused: bool,
    }
    let mut sent: BTreeMap<&str, Sent> = BTreeMap::new();
    let mut notices = 0u64;
    for c in history {
        let Call::Notice { event, amount, .. } = &c.invoked else {
            continue;
        };
        notices += 1;
        let s = sent.entry(event.as_str()).or_insert(Sent {
            amount: *amount,
            acked: false,
            refused: false,
        });
        if s.amount != *amount {
            violations.push(format!(
                "the exchange sent {event} with two amounts ({} and {amount} micros)",
                s.amount
            ));
        }
        match c.outcome {
            OpType::Ok => s.acked = true,
            OpType::Fail => s.refused = true,
            _ => {}
        }
    }
    for (event, s) in &sent {
        let found = in_ledger.get(event).map(Vec::as_slice).unwrap_or_default();
        if s.acked && found.is_empty() {
            violations.push(format!(
                "{event}: an edge acknowledged it, but the ledger does not hold it"
            ));
        }
        if s.refused && !s.acked && !found.is_empty() {
            violations.push(format!(
                "{event}: every edge that answered refused it, yet the ledger holds it (seq {})",
                found[0].seq
            ));
        }
        if let Some(e) = found.iter().find(|e| e.amount != s.amount) {
            violations.push(format!(
                "{event}: the ledger charged {} micros (seq {}), the exchange billed {}",
                e.amount, e.seq, s.amount
            ));
        }
    }
    for (event, found) in &in_ledger {
        if !sent.contains_key(event) {
            violations.push(format!(
                "{event} is in the ledger (seq {}) but the exchange never sent it",
                found[0].seq
            ));
        }
    }
    Verdict::new("I3", notices + ledger.len() as u64, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(event: &str, amount: i64, outcome: OpType) -> Completed {
        let call = Call::Notice {
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

    fn charged(event: &str, amount: i64, seq: u64) -> LedgerEvent {
        LedgerEvent {
            event: event.into(),
            amount,
            seq,
            how: Charge::Settled,
        }
    }

    #[test]
    fn a_faithful_ledger_passes() {
        let h = vec![
            notice("x/a/1", 10, OpType::Ok),
            notice("x/a/1", 10, OpType::Info), // a retry of the same notice
            notice("x/b/1", 20, OpType::Info), // unknown: may or may not be in the ledger
            notice("x/c/1", 30, OpType::Fail),
        ];
        let v = check(&h, &[charged("x/a/1", 10, 4), charged("x/b/1", 20, 5)]);
        assert!(v.held, "{v:?}");
    }

    #[test]
    fn an_acknowledged_notice_missing_from_the_ledger_is_caught() {
        let v = check(&[notice("x/a/1", 10, OpType::Ok)], &[]);
        assert!(!v.held);
        assert!(v.evidence[0].contains("does not hold it"), "{v:?}");
    }

    #[test]
    fn a_double_charge_is_caught() {
        let h = vec![notice("x/a/1", 10, OpType::Ok)];
        let v = check(&h, &[charged("x/a/1", 10, 4), charged("x/a/1", 10, 9)]);
        assert!(!v.held);
        assert!(v.evidence[0].contains("2 times"), "{v:?}");
    }

    #[test]
    fn charges_the_exchange_never_sent_or_at_another_price_are_caught() {
        let h = vec![notice("x/a/1", 10, OpType::Ok)];
        assert!(!check(&h, &[charged("x/a/1", 10, 1), charged("x/z/1", 5, 2)]).held);
        assert!(!check(&h, &[charged("x/a/1", 11, 1)]).held);
    }

    #[test]
    fn a_refused_notice_that_was_charged_is_caught() {
        let h = vec![notice("x/a/1", 10, OpType::Fail)];
        assert!(!check(&h, &[charged("x/a/1", 10, 1)]).held);
    }
}
