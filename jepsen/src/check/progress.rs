//! I6: after faults heal, spending resumes; where demand exceeds a budget, the budget is spent
//! to within the stated utilization.
//!
//! Utilization is in parts per million of the budget (integers: no floats in a report path).

use super::Verdict;
use super::budget::micros;

/// One bucket's spend around the heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spend {
    /// `CAMPAIGN/BUCKET`.
    pub bucket: String,
    /// Its budget.
    pub budget: i64,
    /// Settled when the last fault healed.
    pub at_heal: i64,
    /// Settled at the end of the run (after quiescence).
    pub at_end: i64,
    /// Whether the load offered more than the budget (the exchange had more winning demand).
    pub demand_exceeds: bool,
    /// The least one impression can spend (the campaign's bid): a bucket with less left than
    /// this is as spent as it can be, and has nothing to resume.
    pub unit: i64,
}

/// Settled as parts per million of the budget (0 for no budget).
pub fn utilization_ppm(settled: i64, budget: i64) -> i64 {
    if budget <= 0 {
        return 0;
    }
    i64::try_from(i128::from(settled) * 1_000_000 / i128::from(budget)).unwrap_or(i64::MAX)
}

/// `123456` ppm as `12.3456 %`.
pub fn percent(ppm: i64) -> String {
    format!("{}.{:04} %", ppm / 10_000, (ppm % 10_000).abs())
}

/// Checks every bucket. `min_ppm`: the utilization a bucket with excess demand must reach.
/// Returns the verdict and the lowest utilization among those buckets (the run's figure).
pub fn check(buckets: &[Spend], min_ppm: i64) -> (Verdict, Option<i64>) {
    let mut violations = Vec::new();
    let mut lowest: Option<i64> = None;
    for b in buckets {
        let u = utilization_ppm(b.at_end, b.budget);
        if b.demand_exceeds {
            lowest = Some(lowest.map_or(u, |l| l.min(u)));
            if b.budget - b.at_heal >= b.unit.max(1) && b.at_end <= b.at_heal {
                violations.push(format!(
                    "{}: spending did not resume after the heal (settled {} then and at the \
                     end, of a budget of {})",
                    b.bucket,
                    micros(b.at_heal),
                    micros(b.budget)
                ));
            } else if u < min_ppm && b.budget - b.at_end >= b.unit.max(1) {
                // (Less than one impression left is as spent as a bucket can be, whatever
                // share of a small budget that is.)
                violations.push(format!(
                    "{}: spent {} of its budget ({} of {}), below the {} required",
                    b.bucket,
                    percent(u),
                    micros(b.at_end),
                    micros(b.budget),
                    percent(min_ppm)
                ));
            }
        }
    }
    let checked = buckets.iter().filter(|b| b.demand_exceeds).count() as u64;
    (Verdict::new("I6", checked, violations), lowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spend(at_heal: i64, at_end: i64) -> Spend {
        Spend {
            bucket: "c/lifetime".into(),
            budget: 1_000_000,
            at_heal,
            at_end,
            demand_exceeds: true,
            unit: 2_500,
        }
    }

    #[test]
    fn resumed_and_spent_passes_with_its_figure() {
        let (v, lowest) = check(&[spend(400_000, 990_000)], 950_000);
        assert!(v.held, "{v:?}");
        assert_eq!(lowest, Some(990_000));
        assert_eq!(percent(990_000), "99.0000 %");
    }

    #[test]
    fn stalled_or_underspent_budgets_are_caught() {
        let (v, _) = check(&[spend(400_000, 400_000)], 950_000);
        assert!(!v.held);
        assert!(v.evidence[0].contains("did not resume"), "{v:?}");
        let (v, lowest) = check(&[spend(400_000, 900_000)], 950_000);
        assert!(!v.held);
        assert!(v.evidence[0].contains("90.0000 %"), "{v:?}");
        assert_eq!(lowest, Some(900_000));
        // Exhausted before the heal: nothing left to resume, and fully spent.
        assert!(check(&[spend(1_000_000, 1_000_000)], 950_000).0.held);
        // Less left than one impression costs is exhausted too; one impression more is not.
        assert!(check(&[spend(997_501, 997_501)], 950_000).0.held);
        assert!(!check(&[spend(997_500, 997_500)], 950_000).0.held);
        // At 99.9 % required, a budget of 300 bids with less than one bid left is spent; one
        // bid left is not.
        let mut small = spend(0, 598_001);
        small.budget = 600_000;
        small.unit = 2_000;
        assert!(check(&[small.clone()], 999_000).0.held);
        small.at_end = 598_000;
        assert!(!check(&[small], 999_000).0.held);
        // No bucket with excess demand: nothing to check.
        let mut idle = spend(0, 0);
        idle.demand_exceeds = false;
        assert!(!check(&[idle], 950_000).0.held);
    }
}
