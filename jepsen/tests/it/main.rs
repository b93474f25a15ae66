//! `jepsen run` end to end: a short run of real processes under partition, kill, pause and clock
//! faults must pass; the same harness must catch every planted bug, each with its seed.
//!
//! These tests need root (a private network namespace and nftables), and the workspace's binaries
//! built: `cargo test --workspace` builds them; `./dev test` does it all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// One run at a time: each has its own namespace, but they would share two cores, and a starved
/// run measures the machine rather than the system.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The directory with this build's binaries (`target/debug`).
fn bin_dir() -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_jepsen"));
    me.parent()
        .expect("the binary has a directory")
        .to_path_buf()
}

fn results(out: &Path) -> serde_json::Value {
    results_of(out, "coordinator-1")
}

/// A run's `results.json`, after checking that its files are there (`first` names its first
/// coordinator).
fn results_of(out: &Path, first: &str) -> serde_json::Value {
    let run = std::fs::read_dir(out)
        .expect("the run folder exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.is_dir())
        .expect("one run folder");
    for f in [
        "history.jsonl",
        "schedule.json",
        "report.md",
        "spend.svg",
        "latency.svg",
    ] {
        let p = run.join(f);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{} is missing or empty", p.display());
    }
    assert!(run.join(format!("nodes/{first}.log")).is_file());
    let text = std::fs::read_to_string(run.join("results.json")).expect("results.json");
    serde_json::from_str(&text).expect("results.json is JSON")
}

fn jepsen(bin_dir: &Path, out: &Path, args: &[&str]) -> std::process::Output {
    for bin in ["coordinator", "edge", "budgetctl", "chaos"] {
        assert!(
            bin_dir.join(bin).is_file(),
            "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
            bin_dir.join(bin).display()
        );
    }
    let o = Command::new(bin_dir.join("jepsen"))
        .arg("run")
        .args(args)
        .arg("--out")
        .arg(out)
        .arg("--bin-dir")
        .arg(bin_dir)
        .output()
        .expect("jepsen runs");
    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// A run that must pass: exit 0, every fault kind in `kinds` injected and seen to reach its
/// target, and the invariants `names`, in order, each held having checked something.
fn assert_passed(o: &std::process::Output, r: &serde_json::Value, kinds: &[&str], names: &[&str]) {
    assert_eq!(o.status.code(), Some(0), "{r:#}");
    assert_eq!(r["passed"], true);
    assert_eq!(r["baseline"], false);
    let faults = r["faults"].as_array().unwrap();
    for kind in kinds {
        assert!(
            faults
                .iter()
                .any(|f| f["window"]["fault"]["kind"] == *kind && f["observed"] == true),
            "no {kind} fault reached its target: {faults:#?}"
        );
    }
    let inv = r["invariants"].as_array().unwrap();
    let got: Vec<&str> = inv.iter().filter_map(|v| v["invariant"].as_str()).collect();
    assert_eq!(got, names);
    for v in inv {
        assert_eq!(v["held"], true, "{v:#}");
        assert!(v["checked"].as_u64().unwrap() > 0, "{v:#}");
    }
}

#[test]
fn a_short_run_under_partition_kill_pause_and_clock_faults_passes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().unwrap();
    let o = jepsen(
        &bin_dir(),
        out.path(),
        &[
            "--regions",
            "1",
            "--time-limit",
            "100",
            "--nemesis",
            "partition,kill,pause,clock",
            "--seed",
            "2",
        ],
    );
    let r = results(out.path());
    assert_passed(
        &o,
        &r,
        &["partition", "kill", "pause", "clock"],
        &["I1", "I2", "I3", "I4", "I6", "I7", "I8", "I9", "I10"],
    );
    // The report's path is printed.
    assert!(String::from_utf8_lossy(&o.stdout).contains("report.md"));
    // The exchange behaved as real ones do: ids reused and requests replayed (and bids that
    // share exchange ids billed each), loss notices, impressions past the longest `exp`, none
    // of which was bid on.
    let x = &r["exchange"];
    for k in [
        "reused_ids",
        "replays",
        "losses",
        "unbilled_wins",
        "exp_too_long",
        "billed_bids_sharing_exchange_ids",
    ] {
        assert!(x[k].as_u64().unwrap() > 0, "{k}: {x:#}");
    }
    assert_eq!(x["bids_past_max_exp"], 0, "{x:#}");
}

/// Each planted bug, the regions, faults and seed of the run that catches it, and the invariant
/// that must say so. (`ack-before-commit` loses charges only when an edge dies: seed 84 kills
/// an edge three times in 80 s, as `jepsen schedule --regions 1 --time-limit 80 --nemesis kill --seed 84`
/// shows.) `merge-lowers-own-rows` corrupts the home region's counters at a heal. Depending on
/// timing the region goes on with them, or its replicas stop on the ledger's own invariant
/// check and the report names the region it could not read. Either way the regions never agree
/// again (I5); three runs by hand also failed I7 and I6, and two of them I1.
/// `release-returns-held` gives an edge back money its bids still hold: the bills that follow
/// find nothing to charge and are kept only as anomalies (I3); one run of seed 11 also
/// overspent (I1), the next did not, so the table names I3.
/// `reclaim-no-restart` passes every end-to-end invariant (the late-acceptance window covers
/// the early reclaims); only I8, the reclaim rule read from the leaders' logs, sees it.
const PLANTED: [(&str, &str, &str, &str, &str); 6] = [
    ("reclaim-no-restart", "1", "partition", "11", "I8"),
    ("dedup-by-exchange-ids", "1", "partition", "11", "I3"),
    ("release-returns-held", "1", "partition", "11", "I3"),
    ("reclaim-early", "1", "partition,pause", "5", "I1"),
    ("ack-before-commit", "1", "kill", "84", "I3"),
    ("merge-lowers-own-rows", "2", "region-partition", "3", "I5"),
];

#[test]
fn every_planted_bug_is_caught_with_its_seed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // The buggy binaries live in their own target directory, so that the normal ones are never
    // replaced by them.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = root.join("target/planted");
    let status = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "build",
            "--locked",
            "-q",
            "--features",
            "shared/planted-bugs",
            "-p",
            "coordinator",
            "-p",
            "edge",
            "-p",
            "chaos",
            "-p",
            "jepsen",
            "--bins",
            "--target-dir",
        ])
        .arg(&target)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building with the planted bugs failed");
    let bins = target.join("debug");
    for (bug, regions, nemesis, seed, invariant) in PLANTED {
        let out = tempfile::tempdir().unwrap();
        let o = jepsen(
            &bins,
            out.path(),
            &[
                "--regions",
                regions,
                "--time-limit",
                "80",
                "--nemesis",
                nemesis,
                "--seed",
                seed,
                "--planted-bug",
                bug,
            ],
        );
        let first = if regions == "1" {
            "coordinator-1"
        } else {
            "eu-1-coordinator-1"
        };
        let r = results_of(out.path(), first);
        assert_eq!(o.status.code(), Some(1), "{bug}: the run must fail: {r:#}");
        assert_eq!(r["passed"], false);
        assert_eq!(r["seed"].as_u64(), seed.parse().ok());
        assert_eq!(r["planted_bug"], bug);
        let v = r["invariants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["invariant"] == invariant)
            .unwrap();
        assert_eq!(
            v["held"], false,
            "{bug} was not caught by {invariant}: {r:#}"
        );
        assert!(v["violations"].as_u64().unwrap() > 0);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains(&format!("FAILED (seed {seed})")),
            "the seed is reported"
        );
    }
}

/// (A fresh-clone CI run of it once failed I6: two regions that both bid swapped their crumbs
/// of a day, each under one bid, on every tick; crumbs now flow to the larger holder only.)
#[test]
fn a_short_run_of_two_regions_under_region_faults_passes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().unwrap();
    let o = jepsen(
        &bin_dir(),
        out.path(),
        &[
            "--regions",
            "2",
            "--time-limit",
            "100",
            "--nemesis",
            "region-partition,region-kill,kill",
            "--seed",
            "2",
        ],
    );
    let r = results_of(out.path(), "eu-1-coordinator-1");
    assert_passed(
        &o,
        &r,
        &["region-partition", "region-kill", "kill"],
        &["I1", "I2", "I3", "I4", "I5", "I6", "I7", "I8", "I9", "I10"],
    );
    // I5 says how long the regions took to agree after the load.
    assert!(r["converged_ms"].as_u64().is_some(), "{r:#}");
}
