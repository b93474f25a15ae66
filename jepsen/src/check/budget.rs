//! I1 (billed ≤ budget, by the exchange's own record) and I2 (settled + leased + in doubt ≤
//! rights, per region; settled ≤ budget across regions).

use std::collections::BTreeMap;

use super::Verdict;

/// Micros as a decimal (`1.500000`), for evidence.
pub fn micros(m: i64) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let a = m.unsigned_abs();
    format!("{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
}

/// I1: for every bucket, the total the exchange billed is at most its budget. `billed` is the
/// exchange's record: `(bucket, micros)` per billed impression. A bucket billed that has no
/// budget is a violation.
pub fn billed_within_budget(budgets: &BTreeMap<String, i64>, billed: &[(String, i64)]) -> Verdict {
    let mut totals: BTreeMap<&str, i64> = BTreeMap::new();
    for (bucket, m) in billed {
        let t = totals.entry(bucket.as_str()).or_default();
        *t = t.saturating_add(*m);
    }
    let mut violations = Vec::new();
    for (bucket, total) in &totals {
        match budgets.get(*bucket) {
            Some(budget) if total <= budget => {}
            Some(budget) => violations.push(format!(
                "{bucket}: the exchange billed {} against a budget of {} (over by {})",
                micros(*total),
                micros(*budget),
                micros(total - budget)
            )),
            None => violations.push(format!(
                "{bucket}: the exchange billed {} and the bucket has no budget",
                micros(*total)
            )),
        }
    }
    Verdict::new("I1", totals.len() as u64, violations)
}

/// One bucket of one region as a coordinator reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escrow {
    /// Microseconds since the run started.
    pub at_us: u64,
    /// The region.
    pub region: String,
    /// `CAMPAIGN/BUCKET`.
    pub bucket: String,
    /// The region's spending rights.
    pub rights: i64,
    /// Settled.
    pub settled: i64,
    /// Under open leases.
    pub leased: i64,
    /// Under leases in doubt.
    pub in_doubt: i64,
}

/// I2: in every sample, a region's settled + leased + in doubt ≤ its rights; and across regions,
/// the most each region was ever seen to have settled adds up to at most the bucket's budget
/// (settled money never moves, so samples of different moments can be added).
pub fn escrow_within_rights(budgets: &BTreeMap<String, i64>, samples: &[Escrow]) -> Verdict {
    let mut violations = Vec::new();
    let mut settled: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for s in samples {
        let used = s
            .settled
            .saturating_add(s.leased)
            .saturating_add(s.in_doubt);
        if used > s.rights || [s.settled, s.leased, s.in_doubt].iter().any(|m| *m < 0) {
            violations.push(format!(
                "{} in {} at {} µs: settled {} + leased {} + in doubt {} exceeds rights {}",
                s.bucket,
                s.region,
                s.at_us,
                micros(s.settled),
                micros(s.leased),
                micros(s.in_doubt),
                micros(s.rights)
            ));
        }
        let m = settled.entry((&s.bucket, &s.region)).or_default();
        *m = (*m).max(s.settled);
    }
    let mut global: BTreeMap<&str, i64> = BTreeMap::new();
    for ((bucket, _), m) in &settled {
        *global.entry(bucket).or_default() += m;
    }
    for (bucket, total) in &global {
        let budget = budgets.get(*bucket).copied().unwrap_or(0);
        if *total > budget {
            violations.push(format!(
                "{bucket}: regions settled {} in all against a budget of {}",
                micros(*total),
                micros(budget)
            ));
        }
    }
    Verdict::new("I2", samples.len() as u64, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets() -> BTreeMap<String, i64> {
        BTreeMap::from([("c/lifetime".to_string(), 1_000)])
    }

    #[test]
    fn billing_up_to_the_budget_passes_and_one_micro_over_is_caught() {
        let at = |n: i64| {
            vec![
                ("c/lifetime".to_string(), 600),
                ("c/lifetime".to_string(), n),
            ]
        };
        assert!(billed_within_budget(&budgets(), &at(400)).held);
        let v = billed_within_budget(&budgets(), &at(401));
        assert!(!v.held);
        assert!(v.evidence[0].contains("over by 0.000001"), "{v:?}");
        let unknown = vec![("d/lifetime".to_string(), 1)];
        assert!(!billed_within_budget(&budgets(), &unknown).held);
        assert!(
            !billed_within_budget(&budgets(), &[]).held,
            "nothing billed proves nothing"
        );
    }

    fn sample(region: &str, rights: i64, settled: i64, leased: i64, in_doubt: i64) -> Escrow {
        Escrow {
            at_us: 1,
            region: region.into(),
            bucket: "c/lifetime".into(),
            rights,
            settled,
            leased,
            in_doubt,
        }
    }

    #[test]
    fn escrow_over_rights_is_caught_per_region_and_across_regions() {
        let ok = vec![
            sample("eu", 600, 300, 200, 100),
            sample("us", 400, 400, 0, 0),
        ];
        assert!(escrow_within_rights(&budgets(), &ok).held);
        let over = vec![sample("eu", 600, 300, 200, 101)];
        assert!(!escrow_within_rights(&budgets(), &over).held);
        // Each region within its rights, but together they settled more than the budget.
        let global = vec![sample("eu", 600, 600, 0, 0), sample("us", 600, 500, 0, 0)];
        let v = escrow_within_rights(&budgets(), &global);
        assert!(!v.held);
        assert!(v.evidence[0].contains("regions settled 0.001100"), "{v:?}");
    }
}
