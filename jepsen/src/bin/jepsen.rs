//! `jepsen`: run the harness. See `jepsen run --help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use jepsen::nemesis::Kind;
use jepsen::run::{Options, run};

/// The Jepsen-style harness of the budget service.
#[derive(Debug, Parser)]
#[command(name = "jepsen", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a real topology (per region 3 coordinators and 2 edges; a simulated exchange) in
    /// a private network namespace, drive load, inject the faults a seed fixes, heal, and check
    /// I1–I4 and I6–I10 (and I5 with several regions; I8: every reclaim kept the reclaim
    /// rule, read from the coordinators' logs; I9: money conserved at every entry of every
    /// replica's log; I10: bids and bills within their leases, as the exchange and the edges
    /// saw them). Writes a folder per run (history,
    /// schedule, node logs, results.json, report.md with plots) and prints its path. Exit 0
    /// only if every invariant held and every fault was seen to reach its target; 1 otherwise;
    /// 2 if the run could not be made. `--nemesis none` is a baseline: no faults, for
    /// measuring utilization beside faulted runs; it is never a chaos pass.
    ///
    /// Needs root (for the namespace and nftables) and the binaries built
    /// (`cargo build -p coordinator -p edge -p chaos -p jepsen --bins`, and for the sync-fail
    /// fault `cargo build -p chaos-failsync`).
    Run {
        /// The whole run in seconds, including a 30 s quiet tail with no faults.
        #[arg(long, default_value_t = 150)]
        time_limit: u64,
        /// Fault kinds: all, none (a baseline), or a comma-separated list of partition,
        /// one-way, loss, duplicate, delay, kill, pause, clock; the faults aimed at the money
        /// path (money names them all): edge-isolate (an edge cut off from its coordinators
        /// for 20–40 s, the exchange still reaching it), leader-pause (the leader paused just
        /// after a grant, longer than the lease), ack-drop (the acknowledgements to an edge
        /// lost), edge-kill (the edge with the most unanswered notices cut
        /// from its coordinators until one waits, then killed), exchange-cut
        /// (the exchange cannot reach an edge), slow-edge (grants and acknowledgements seconds
        /// late), reclaim-election (a new leader just before a reclaim is due), clock-election
        /// (a skewed follower, then an election), edge-clock (an edge's clock off and off-rate);
        /// the storage faults (storage names them all): replace (a follower wiped and added
        /// back under a new id), disk-corrupt (a follower's database files rot: it must refuse
        /// to start, exit 65), disk-full (a coordinator's 1 GiB disk fills: it must stop, exit
        /// 74, and catch up once freed), sync-fail (a coordinator's fsync and fdatasync fail with
        /// EIO: it must stop, exit 74, and catch up on a good disk), segment-corrupt (a bit flips in a sealed segment: its
        /// scrub must put back a peer's copy); and with several regions region-partition,
        /// region-isolate, region-kill (all includes these then).
        #[arg(long, default_value = "partition,kill,pause,clock,money")]
        nemesis: String,
        /// Fixes the fault schedule and the load (default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Bid requests per second from the exchange.
        #[arg(long, default_value_t = 300)]
        rate: u32,
        /// Where run folders are written.
        #[arg(long, default_value = "jepsen-runs")]
        out: PathBuf,
        /// The directory holding coordinator, edge, budgetctl and chaos (default: this
        /// program's own directory).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Run with a planted bug (binaries built with `--features shared/planted-bugs`):
        /// reclaim-early, reclaim-no-restart, dedup-by-exchange-ids, release-returns-held,
        /// ack-before-commit or merge-lowers-own-rows.
        #[arg(long)]
        planted_bug: Option<String>,
        /// Required utilization of a bucket whose demand exceeded its budget, in percent, up
        /// to four decimals (`99.9`); the load after the time limit goes on until it is met.
        #[arg(long, default_value = "95", value_parser = percent_ppm)]
        min_utilization: i64,
        /// The longest the load goes on past the time limit for money held by bids without a
        /// notice to come back and be spent (seconds; it stops as soon as every bucket is).
        /// (Two regions under region kills needed 62 s.) A run that checks for a planted bug
        /// may cut it short.
        #[arg(long, default_value_t = 90)]
        drain_max: u64,
        /// Regions of 3 coordinators and 2 edges each (1–3), syncing rights; campaigns are
        /// homed in the first and the exchange sends 50/35/15 % of its requests to them.
        #[arg(long, default_value_t = 3)]
        regions: usize,
    },
    /// Print the fault schedule (JSON) that `run` would follow with these options, without
    /// running anything.
    Schedule {
        /// As for `run`.
        #[arg(long, default_value_t = 150)]
        time_limit: u64,
        /// As for `run`.
        #[arg(long, default_value = "partition,kill,pause,clock,money")]
        nemesis: String,
        /// As for `run`.
        #[arg(long)]
        seed: u64,
        /// As for `run`.
        #[arg(long, default_value_t = 3)]
        regions: usize,
    },
    /// Tally the runs under a folder (each run's results.json): runs, passes, faults injected
    /// by kind, violations by invariant, and the lowest utilization. Exit 1 if any run failed.
    Tally {
        /// The folder `run --out` wrote to.
        #[arg(default_value = "jepsen-runs")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Tally { dir } = &cli.command {
        return match jepsen::run::tally::tally(dir) {
            Ok(t) => {
                print!("{}", t.text);
                if t.failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("jepsen: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Schedule {
        time_limit,
        nemesis,
        seed,
        regions,
    } = &cli.command
    {
        return match kinds_for(nemesis, *regions) {
            Ok(kinds) => {
                let s = jepsen::run::schedule(
                    *seed,
                    Duration::from_secs(*time_limit),
                    kinds,
                    *regions,
                    3,
                    2,
                );
                println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("jepsen: --nemesis: {e}");
                ExitCode::from(2)
            }
        };
    }
    let Command::Run {
        time_limit,
        nemesis,
        seed,
        rate,
        out,
        bin_dir,
        planted_bug,
        min_utilization,
        regions,
        drain_max,
    } = cli.command
    else {
        unreachable!("schedule and tally are handled above")
    };
    if !(1..=jepsen::run::topology::REGIONS.len()).contains(&regions) {
        eprintln!(
            "jepsen: --regions must be 1 to {}",
            jepsen::run::topology::REGIONS.len()
        );
        return ExitCode::from(2);
    }
    let kinds = match kinds_for(&nemesis, regions) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("jepsen: --nemesis: {e}");
            return ExitCode::from(2);
        }
    };
    if !(1..=20_000).contains(&rate) {
        eprintln!("jepsen: --rate must be 1 to 20000");
        return ExitCode::from(2);
    }
    if let Some(b) = &planted_bug
        && !shared::planted::BUGS.contains(&b.as_str())
    {
        eprintln!(
            "jepsen: no planted bug '{b}' (there are {})",
            shared::planted::BUGS.join(", ")
        );
        return ExitCode::from(2);
    }
    let seed_given = seed.is_some();
    let seed = seed.unwrap_or_else(|| fastrand::u64(..1_000_000));
    let bin_dir = match bin_dir.or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(PathBuf::from))
    }) {
        Some(d) => d,
        None => {
            eprintln!("jepsen: cannot tell where the binaries are: give --bin-dir");
            return ExitCode::from(2);
        }
    };
    // The whole run happens in a private network namespace: re-run this program inside one.
    if !chaos::netns::reexecuted() {
        let Ok(me) = std::env::current_exe() else {
            eprintln!("jepsen: cannot find this program to re-run it in a namespace");
            return ExitCode::from(2);
        };
        let mut args: Vec<String> = std::env::args().skip(1).collect();
        if !seed_given {
            args.extend(["--seed".into(), seed.to_string()]);
        }
        return match chaos::netns::reexec_command(&me, &args).status() {
            Ok(s) => ExitCode::from(u8::try_from(s.code().unwrap_or(2)).unwrap_or(2)),
            Err(e) => {
                eprintln!(
                    "jepsen: unshare --net: {e} (root is needed; ./dev setup installs util-linux)"
                );
                ExitCode::from(2)
            }
        };
    }
    let opts = Options {
        seed,
        time_limit: Duration::from_secs(time_limit),
        kinds,
        rate,
        out,
        bin_dir,
        regions,
        coordinators: 3,
        edges: 2,
        planted_bug,
        min_utilization_ppm: min_utilization,
        drain_max: Duration::from_secs(drain_max),
    };
    match run(&opts) {
        Ok(o) => {
            for v in &o.verdicts {
                eprintln!(
                    "{}: {} ({} checked, {} violations){}",
                    v.invariant,
                    if v.held { "held" } else { "VIOLATED" },
                    v.checked,
                    v.violations,
                    v.evidence
                        .first()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
            }
            if !o.crashed.is_empty() {
                eprintln!(
                    "processes that exited by themselves: {}",
                    o.crashed.join(", ")
                );
            }
            if !o.unread.is_empty() {
                eprintln!(
                    "regions whose balances could not be read: {}",
                    o.unread.join("; ")
                );
            }
            let seen = o.faults.iter().filter(|f| f.observed).count();
            eprintln!(
                "faults: {seen} of {} seen to reach their target",
                o.faults.len()
            );
            println!("{}", o.dir.join("report.md").display());
            if o.passed && o.faults.is_empty() {
                eprintln!(
                    "BASELINE PASSED (seed {seed}): no faults were injected, so this is a measurement, not a chaos pass"
                );
                ExitCode::SUCCESS
            } else if o.passed {
                eprintln!("PASSED (seed {seed})");
                ExitCode::SUCCESS
            } else {
                eprintln!("FAILED (seed {seed})");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("jepsen: the run could not be made (seed {seed}): {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The fault kinds of `--nemesis`: `all` means the region faults too when there are several
/// regions; region faults need several.
fn kinds_for(nemesis: &str, regions: usize) -> Result<Vec<Kind>, String> {
    let mut kinds = Kind::parse_list(nemesis)?;
    if nemesis.trim() == "all" && regions > 1 {
        kinds.extend(Kind::REGION);
    }
    if regions < 2 && kinds.iter().any(|k| Kind::REGION.contains(k)) {
        return Err("region faults need --regions 2 or more".into());
    }
    Ok(kinds)
}

/// A percentage of 0 to 100 with up to four decimals, as parts per million (no floats: it
/// is compared with money).
fn percent_ppm(s: &str) -> Result<i64, String> {
    let bad = || format!("'{s}' is not a percentage of 0 to 100 with at most four decimals");
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty()
        || frac.len() > 4
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (s.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let whole: i64 = whole.parse().map_err(|_| bad())?;
    let frac: i64 = format!("{frac:0<4}").parse().map_err(|_| bad())?;
    let ppm = whole
        .checked_mul(10_000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)?;
    if ppm > 1_000_000 {
        return Err(bad());
    }
    Ok(ppm)
}

#[cfg(test)]
mod tests {
    use super::percent_ppm;

    #[test]
    fn percentages_are_read_without_floats() {
        assert_eq!(percent_ppm("95"), Ok(950_000));
        assert_eq!(percent_ppm("99.9"), Ok(999_000));
        assert_eq!(percent_ppm("99.9999"), Ok(999_999));
        assert_eq!(percent_ppm("100"), Ok(1_000_000));
        assert_eq!(percent_ppm("0"), Ok(0));
        for bad in [
            "100.1", "101", "-1", "", ".5", "5.", "9.12345", "1e2", "99,9",
        ] {
            assert!(percent_ppm(bad).is_err(), "{bad}");
        }
    }
}
