//! The invariants of DESIGN §9, each a pure function from what a run recorded to a [`Verdict`].
//! Every checker is tested on crafted histories that hold a violation it must catch.

pub mod budget;
pub mod chains;
pub mod converge;
pub mod linear;
pub mod notices;
pub mod progress;

use serde::Serialize;

/// At most this many violations are kept as evidence (the count is always exact).
pub const EVIDENCE_MAX: usize = 20;

/// What one checker concluded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `I1` … `I7`.
    pub invariant: &'static str,
    /// True only if the checker examined something and found no violation.
    pub held: bool,
    /// How many items it examined (buckets, notices, reads, replicas…).
    pub checked: u64,
    /// How many violations it found.
    pub violations: u64,
    /// The first violations, each a sentence naming what broke.
    pub evidence: Vec<String>,
}

impl Verdict {
    /// A verdict from the items examined and the violations found. Nothing examined is not a
    /// pass: a checker that saw no history proves nothing.
    pub fn new(invariant: &'static str, checked: u64, violations: Vec<String>) -> Verdict {
        let mut evidence = violations;
        let count = evidence.len() as u64;
        if checked == 0 {
            evidence.insert(
                0,
                "nothing to check: the run recorded nothing this invariant covers".into(),
            );
        }
        evidence.truncate(EVIDENCE_MAX);
        Verdict {
            invariant,
            held: checked > 0 && count == 0,
            checked,
            violations: count,
            evidence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_check_does_not_pass() {
        let v = Verdict::new("I1", 0, vec![]);
        assert!(!v.held);
        assert!(v.evidence[0].contains("nothing to check"));
        assert!(Verdict::new("I1", 3, vec![]).held);
        let many = Verdict::new("I1", 100, (0..50).map(|i| i.to_string()).collect());
        assert_eq!(
            (many.held, many.violations, many.evidence.len()),
            (false, 50, EVIDENCE_MAX)
        );
    }
}
