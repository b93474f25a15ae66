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

/// The faults aimed at the money path, every one of them in 150 s with seed 1 (`jepsen
/// schedule --regions 1 --time-limit 150 --nemesis money --seed 1`). They include a partition
/// (an edge isolated), kills (the busiest edge), pauses (the leader) and clock faults (a
/// follower, then an election; an edge).
#[test]
fn a_short_run_under_the_money_path_faults_passes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().unwrap();
    let o = jepsen(
        &bin_dir(),
        out.path(),
        &[
            "--regions",
            "1",
            "--time-limit",
            "150",
            "--nemesis",
            "money",
            "--seed",
            "1",
        ],
    );
    let r = results(out.path());
    assert_passed(
        &o,
        &r,
        &[
            "edge-isolate",
            "leader-pause",
            "ack-drop",
            "edge-kill",
            "exchange-cut",
            "slow-edge",
            "reclaim-election",
            "clock-election",
            "edge-clock",
        ],
        &["I1", "I2", "I3", "I4", "I6", "I7", "I8", "I9", "I10"],
    );
    // Budgets ran out again and again, most of the time while a fault was in force.
    let x = &r["exchange"];
    assert!(x["budget_ends"].as_u64().unwrap() >= 20, "{x:#}");
    assert!(
        x["budget_ends_in_faults"].as_u64().unwrap() * 2 >= x["budget_ends"].as_u64().unwrap(),
        "{x:#}"
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

/// One planted bug and the runs that must catch it.
struct Planted {
    bug: &'static str,
    regions: &'static str,
    nemesis: &'static str,
    /// The run's time limit, seconds.
    secs: &'static str,
    /// Tried in order until one catches the bug: real processes on a loaded machine do not
    /// replay a seed exactly, so a bug counts as caught within this many seeds, and the test
    /// says which seed caught it.
    seeds: &'static [&'static str],
    /// The invariant that must say so.
    invariant: &'static str,
}

/// Each planted bug, the faults and seeds of the runs that catch it, and the invariant that
/// must say so (`shared::planted` says what each bug does). Why these:
/// - `reclaim-no-restart` passes every end-to-end invariant (the late-acceptance window covers
///   the early reclaims); only I8, the reclaim rule read from the leaders' logs, sees it.
/// - `ack-before-commit` loses charges only when an edge dies with notices in flight:
///   `edge-kill` cuts an edge from its coordinators, then kills it (a kill alone found a
///   notice unsettled too rarely: a fresh-clone CI run missed it with both seeds).
/// - `merge-lowers-own-rows` corrupts the home region's counters at a heal. Depending on
///   timing the region goes on with them, or its replicas stop on the ledger's own invariant
///   check and the report names the region it could not read. Either way the regions never
///   agree again (I5); runs by hand also failed I3, I4, I7 and I10.
/// - `release-returns-held` and `release-counts-held` give back money bids still hold: the
///   bills that follow find nothing to charge and are kept only as anomalies (I3; sometimes
///   also an overspend, I1).
/// - `return-before-check-in` returns in-doubt money while an isolated edge holds notices for
///   it: those charges come back as anomalies (I3). Only an isolation longer than a lease's
///   in-doubt wait (the longest `exp` and the late acceptance, 30 s) shows it: 80 s runs whose
///   seeds isolate an edge for 37–38 s (a fresh-clone CI run with a 25 s isolation missed it).
/// - `reserve-short` takes the last bid of a lease a little short: the edge's own
///   `/debug/leases` shows the lease reserved past its amount (I10).
/// - `window-from-retry` bids past the window the leader reclaims by: a bid request sent
///   after a read saw the lease reclaimed got a bid (I10). `ack-drop` loses grants' answers.
/// - `batch-id-reuse` has charges acknowledged that no batch settled (I3).
/// - `stale-read` serves balance reads without confirming leadership: followers behind
///   answer with balances the region has moved past (I7; seed 1 by hand: 231 of 3,147 reads).
const PLANTED: [Planted; 12] = [
    Planted {
        bug: "reclaim-no-restart",
        regions: "1",
        nemesis: "partition",
        secs: "60",
        seeds: &["11", "5"],
        invariant: "I8",
    },
    Planted {
        bug: "dedup-by-exchange-ids",
        regions: "1",
        nemesis: "partition",
        secs: "60",
        seeds: &["11", "5"],
        invariant: "I3",
    },
    Planted {
        bug: "release-returns-held",
        regions: "1",
        nemesis: "partition",
        secs: "60",
        seeds: &["11", "5"],
        invariant: "I3",
    },
    Planted {
        bug: "reclaim-early",
        regions: "1",
        nemesis: "partition,pause",
        secs: "60",
        seeds: &["5", "11"],
        invariant: "I1",
    },
    Planted {
        bug: "ack-before-commit",
        regions: "1",
        nemesis: "edge-kill",
        secs: "60",
        seeds: &["1", "2"],
        invariant: "I3",
    },
    Planted {
        bug: "merge-lowers-own-rows",
        regions: "2",
        nemesis: "region-partition",
        secs: "60",
        seeds: &["3", "4"],
        invariant: "I5",
    },
    Planted {
        bug: "return-before-check-in",
        regions: "1",
        nemesis: "edge-isolate",
        secs: "80",
        seeds: &["10", "4", "17"],
        invariant: "I3",
    },
    Planted {
        bug: "reserve-short",
        regions: "1",
        nemesis: "partition",
        secs: "60",
        seeds: &["11", "5"],
        invariant: "I10",
    },
    Planted {
        bug: "window-from-retry",
        regions: "1",
        nemesis: "ack-drop",
        secs: "60",
        seeds: &["3", "1"],
        invariant: "I10",
    },
    Planted {
        bug: "batch-id-reuse",
        regions: "1",
        nemesis: "partition",
        secs: "60",
        seeds: &["11", "5"],
        invariant: "I3",
    },
    Planted {
        bug: "stale-read",
        regions: "1",
        nemesis: "partition",
        secs: "60",
        seeds: &["1", "2"],
        invariant: "I7",
    },
    Planted {
        bug: "release-counts-held",
        regions: "1",
        nemesis: "partition",
        secs: "60",
        seeds: &["11", "5"],
        invariant: "I3",
    },
];

/// Runs the planted bugs two at a time: each run has its own namespace, and a run that must
/// fail does not need a quiet machine (the four-minute saving keeps `./dev test` in its time).
const PLANTED_AT_ONCE: usize = 2;

#[test]
fn every_planted_bug_is_caught_with_its_seed() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bins = shared::planted::build_binaries(
        env!("CARGO"),
        root,
        &["coordinator", "edge", "chaos", "jepsen"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let missed: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PLANTED_AT_ONCE {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(planted) = PLANTED.get(k) else {
                        return;
                    };
                    let mut why = Vec::new();
                    let caught = planted.seeds.iter().any(|seed| {
                        match planted_run(&bins, planted, seed) {
                            Ok(()) => {
                                eprintln!(
                                    "planted {} caught by {} with seed {seed}",
                                    planted.bug, planted.invariant
                                );
                                true
                            }
                            Err(e) => {
                                // The verdict first: a long report must not hide which bug it is.
                                eprintln!("planted {} not caught with seed {seed}", planted.bug);
                                why.push(e);
                                false
                            }
                        }
                    });
                    if !caught {
                        missed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(why.join("\n\n"));
                    }
                }
            });
        }
    });
    let missed = missed.into_inner().unwrap_or_else(|p| p.into_inner());
    assert!(missed.is_empty(), "{}", missed.join("\n\n"));
}

/// One run of a planted bug: `Err` says how it was not caught.
fn planted_run(bins: &Path, p: &Planted, seed: &str) -> Result<(), String> {
    let out = tempfile::tempdir().unwrap();
    let o = jepsen(
        bins,
        out.path(),
        &[
            "--regions",
            p.regions,
            "--time-limit",
            p.secs,
            "--drain-max",
            "15",
            "--nemesis",
            p.nemesis,
            "--seed",
            seed,
            "--planted-bug",
            p.bug,
        ],
    );
    let first = if p.regions == "1" {
        "coordinator-1"
    } else {
        "eu-1-coordinator-1"
    };
    let r = results_of(out.path(), first);
    let (bug, nemesis, invariant) = (p.bug, p.nemesis, p.invariant);
    // The verdicts only (the whole results would bury the reason in a CI log).
    let verdicts: Vec<String> = r["invariants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            format!(
                "{}: held {} ({} violations)",
                v["invariant"], v["held"], v["violations"]
            )
        })
        .collect();
    let fail = |why: &str| {
        Err(format!(
            "{bug} (seed {seed}, {nemesis}): {why}; {}",
            verdicts.join(", ")
        ))
    };
    if o.status.code() != Some(1) || r["passed"] != false {
        return fail("the run did not fail");
    }
    if r["seed"].as_u64() != seed.parse().ok() || r["planted_bug"] != bug {
        return fail("the results name another seed or bug");
    }
    let caught = r["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["invariant"] == invariant)
        .is_some_and(|v| v["held"] == false && v["violations"].as_u64().unwrap_or(0) > 0);
    if !caught {
        return fail(&format!("not caught by {invariant}"));
    }
    if !String::from_utf8_lossy(&o.stderr).contains(&format!("FAILED (seed {seed})")) {
        return fail("the seed is not reported");
    }
    Ok(())
}

/// A follower replaced under load as an operator replaces a failed replica (killed, removed,
/// wiped, added back under a new node id): it catches up by a snapshot that carries only the
/// unsealed records, fetches the sealed segments from a peer, and I4 reads its whole log.
#[test]
fn a_replica_replaced_under_load_catches_up_and_its_log_is_whole() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = tempfile::tempdir().unwrap();
    let o = jepsen(
        &bin_dir(),
        out.path(),
        &[
            "--regions",
            "1",
            "--time-limit",
            "70",
            "--nemesis",
            "replace,kill",
            "--seed",
            "1",
        ],
    );
    let r = results(out.path());
    assert_passed(
        &o,
        &r,
        &["replace", "kill"],
        &["I1", "I2", "I3", "I4", "I6", "I7", "I8", "I9", "I10"],
    );
    let replaced = r["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["window"]["fault"]["kind"] == "replace")
        .unwrap();
    let proof = replaced["proof"].as_str().unwrap();
    assert!(proof.contains("its archive whole"), "{proof}");
    // The new node (id 4) fetched the sealed history it did not get with the snapshot.
    let run = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.is_dir())
        .unwrap();
    let name = proof.split(':').next().unwrap();
    let log = std::fs::read_to_string(run.join(format!("nodes/{name}.log"))).unwrap();
    let after = log
        .split("node=4 addr=")
        .nth(1)
        .expect("the replacement started as node 4");
    assert!(
        after.contains("fetched a sealed segment this node lacked"),
        "the replacement fetched no segment"
    );
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
            // The tail of a budget shared by two regions is slow: money of bids without a
            // notice comes back only at their deadlines and check-ins, and the last crumbs
            // travel between the regions. Two runs of this seed on 2026-12-06 ended west at
            // 94.74 % and 94.88 % after the default 90 s drain, still spending about a bid a
            // second; the drain stops as soon as every bucket is spent.
            "--drain-max",
            "150",
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

/// Disk faults on real processes: a follower whose database rots refuses to start (exit 65,
/// "damaged") and is replaced; a leader or follower whose disk fills stops with a clear error
/// (exit 74, "No space left on device") and, given space, comes back; one whose syncs fail
/// (EIO) stops too (exit 74, "Input/output error") and comes back on a good disk; a sealed
/// segment that rots is found against its hashes and put back from a peer; the region keeps
/// its majority and no balance read, charge or log record is wrong or lost. (The seed draws
/// all four: `jepsen schedule --regions 1 --time-limit 100 --nemesis storage --seed 1`, less
/// `replace`, which its own test runs.)
#[test]
fn disk_faults_are_refused_and_the_region_loses_nothing() {
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
            "disk-corrupt,disk-full,sync-fail,segment-corrupt",
            "--seed",
            "1",
        ],
    );
    let r = results(out.path());
    assert_passed(
        &o,
        &r,
        &["disk-corrupt", "disk-full", "sync-fail", "segment-corrupt"],
        &["I1", "I2", "I3", "I4", "I6", "I7", "I8", "I9", "I10"],
    );
    let proof = |kind: &str| {
        r["faults"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["window"]["fault"]["kind"] == kind)
            .and_then(|f| f["proof"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    let damaged = proof("disk-corrupt");
    assert!(damaged.contains("exit status: 65"), "{damaged}");
    assert!(damaged.contains("its archive whole"), "{damaged}");
    let full = proof("disk-full");
    assert!(full.contains("exit status: 74"), "{full}");
    assert!(full.contains("No space left on device"), "{full}");
    let failing = proof("sync-fail");
    assert!(failing.contains("exit status: 74"), "{failing}");
    assert!(failing.contains("Input/output error"), "{failing}");
    let rotted = proof("segment-corrupt");
    assert!(rotted.contains("byte for byte"), "{rotted}");
}
