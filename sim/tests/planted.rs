//! The planted bugs the simulation can see (`shared::planted`), each caught within a bounded
//! number of seeds. The buggy build lives in `target/planted`, beside the one the jepsen
//! harness's planted-bug test makes, so that the normal binaries are never replaced.

use std::path::Path;
use std::process::Command;

/// `(bug, seeds it must be caught within, a check that sees it in the first failing seed)`.
const CAUGHT: &[(&str, u64, &str)] = &[
    // The exchange reuses auction ids: charges are dropped as duplicates, acknowledged bills
    // the ledger does not hold (seed 0).
    ("dedup-by-exchange-ids", 3, "I3"),
    // A retried grant applied twice (its answer lost, the nemesis's `answers lost`) leaves a
    // lease no edge knows; the leader's loop reclaims it (seed 0).
    ("grant-retry-applied-twice", 10, "I8"),
    // Appends acknowledged before they are synced: power lost on every node just after an
    // answer takes entries a majority acknowledged, and the replicas' logs part (openraft
    // itself stops on a follower whose log went back) (seed 1).
    ("ack-before-sync", 20, "I4"),
    // Balance reads served from a node's own state without confirming leadership: a follower
    // behind answers with a balance the region has moved past (seed 0).
    ("stale-read", 3, "I7"),
    // The reclaim loop's own bugs, timed against the simulation's true time (seeds 0 and 3).
    ("reclaim-early", 3, "I8"),
    ("reclaim-no-restart", 10, "I8"),
    // In-doubt money returned before a paused edge checked in: its late report finds the
    // money gone and is recorded as an anomaly (seed 1).
    ("return-before-check-in", 10, "I3"),
    // A release that returns what bids awaiting late notices hold: the late notices find
    // nothing held (seed 4).
    ("release-returns-held", 15, "I3"),
    // The edge's reservation (its real `Reservoir`) lets a bid through a little short: the
    // lease's last bid spends money the lease never had; only a lease whose last bid finds
    // less than a price left shows it (seed 31).
    ("reserve-short", 50, "I3"),
];

#[test]
fn each_planted_bug_the_simulation_sees_is_caught_within_its_bound() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let sim = shared::planted::build_binaries(env!("CARGO"), root, &["sim"])
        .unwrap_or_else(|e| panic!("{e}"))
        .join("sim");
    for (bug, bound, by) in CAUGHT {
        let o = Command::new(&sim)
            .env(shared::planted::ENV, bug)
            .args(["run", "--secs", "30", "--seeds"])
            .arg(format!("0..{bound}"))
            .output()
            .expect("sim runs");
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{bug}: not caught in {bound} seeds\n{out}{err}"
        );
        let first = err
            .lines()
            .find(|l| l.contains(": FAILED"))
            .unwrap_or_else(|| panic!("{bug}: no failing seed named\n{err}"));
        // `seed N: FAILED a Some(..); b Some(..)`: the check must be among those that broke.
        let broke = first.contains(&format!("FAILED {by} ")) || first.contains(&format!("; {by} "));
        assert!(broke, "{bug}: caught by other checks: {first}");
        eprintln!("{bug}: {first}");
    }
}
