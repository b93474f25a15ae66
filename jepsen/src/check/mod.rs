//! The invariants of DESIGN §9, each a pure function from what a run recorded to a [`Verdict`].
//! Every checker is tested on crafted histories that hold a violation it must catch.

pub mod budget;
pub mod chains;
pub mod conservation;
pub mod converge;
pub mod leases;
pub mod linear;
pub mod notices;
pub mod progress;
pub mod reclaim;

use serde::Serialize;

/// At most this many violations are kept as evidence (the count is always exact).
pub const EVIDENCE_MAX: usize = 20;

/// What one checker concluded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// `I1` … `I8`.
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

/// One verdict from the verdicts of several regions: it holds only if each holds, and its
/// evidence names the region (none is named for a region called "": a run of one region).
pub fn combine(invariant: &'static str, parts: Vec<(String, Verdict)>) -> Verdict {
    let mut checked = 0;
    let mut violations = 0;
    let mut evidence = Vec::new();
    let mut held = !parts.is_empty();
    for (region, v) in parts {
        checked += v.checked;
        violations += v.violations;
        held &= v.held;
        evidence.extend(v.evidence.into_iter().map(|e| {
            if region.is_empty() {
                e
            } else {
                format!("{region}: {e}")
            }
        }));
    }
    evidence.truncate(EVIDENCE_MAX);
    Verdict {
        invariant,
        held,
        checked,
        violations,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_verdicts_hold_only_if_every_region_holds() {
        let ok = Verdict::new("I4", 3, vec![]);
        let bad = Verdict::new("I4", 3, vec!["fork at seq 9".into()]);
        let none = Verdict::new("I4", 0, vec![]);
        let v = combine(
            "I4",
            vec![("eu-1".into(), ok.clone()), ("us-1".into(), bad)],
        );
        assert!(!v.held);
        assert_eq!((v.checked, v.violations), (6, 1));
        assert_eq!(v.evidence, ["us-1: fork at seq 9"]);
        assert!(
            !combine(
                "I4",
                vec![("eu-1".into(), ok.clone()), ("us-1".into(), none)]
            )
            .held
        );
        assert!(combine("I4", vec![(String::new(), ok.clone())]).held);
        assert!(!combine("I4", vec![]).held);
    }

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
