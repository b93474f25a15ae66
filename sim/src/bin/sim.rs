//! `sim`: runs the deterministic simulation of a region over a range of seeds, or replays one.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use sim::{Scenario, run_seed};

/// Deterministic simulation of a region: the real ledger and openraft on simulated time,
/// network and disk. One seed is one history: `sim replay SEED` prints it again, event by
/// event.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct Shape {
    /// Coordinators in the region.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Edges spending.
    #[arg(long, default_value_t = 3)]
    edges: u64,
    /// Simulated seconds of load per seed.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Run without the nemesis (a baseline).
    #[arg(long)]
    no_faults: bool,
}

impl Shape {
    fn scenario(&self) -> Scenario {
        Scenario {
            nodes: self.nodes,
            edges: self.edges,
            secs: self.secs,
            faults: !self.no_faults,
            ..Scenario::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs seeds A..B (B excluded) and lists the ones whose invariants failed.
    Run {
        /// The seeds, `A..B`.
        #[arg(long, value_parser = parse_range)]
        seeds: (u64, u64),
        #[command(flatten)]
        shape: Shape,
    },
    /// Runs one seed again and prints its trace and verdicts.
    Replay {
        /// The seed.
        seed: u64,
        #[command(flatten)]
        shape: Shape,
    },
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?} is not A..B"))?;
    let a: u64 = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    if b <= a {
        return Err(format!("{s}: no seed (B must be above A)"));
    }
    Ok((a, b))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { seeds, shape } => {
            let scenario = shape.scenario();
            let started = Instant::now();
            let mut failed = Vec::new();
            let total = seeds.1 - seeds.0;
            let mut faults = 0;
            let mut installed = 0;
            for (n, seed) in (seeds.0..seeds.1).enumerate() {
                match run_seed(seed, &scenario) {
                    Ok(o) if o.passed() => {
                        faults += o.faults;
                        installed += o.snapshots.1;
                    }
                    Ok(o) => {
                        let broken: Vec<String> = o
                            .verdicts
                            .iter()
                            .filter(|v| !v.held)
                            .map(|v| format!("{} {:?}", v.invariant, v.evidence.first()))
                            .collect();
                        eprintln!("seed {seed}: FAILED {}", broken.join("; "));
                        failed.push(seed);
                    }
                    Err(e) => {
                        eprintln!("seed {seed}: FAILED to run: {e:#}");
                        failed.push(seed);
                    }
                }
                let done = n as u64 + 1;
                if done.is_multiple_of(10) || done == total {
                    eprintln!(
                        "[{:>6.1}s] {done}/{total} seeds, {} failed",
                        started.elapsed().as_secs_f64(),
                        failed.len()
                    );
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{total} seeds of {} simulated seconds in {secs:.1} s ({:.1} seeds a minute), {faults} faults, {installed} snapshots installed; {} failed{}",
                scenario.secs,
                total as f64 * 60.0 / secs.max(0.001),
                failed.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        failed
                            .iter()
                            .map(u64::to_string)
                            .collect::<Vec<_>>()
                            .join(" ")
                    )
                }
            );
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Replay { seed, shape } => match run_seed(seed, &shape.scenario()) {
            Ok(o) => {
                for l in &o.trace {
                    println!("{l}");
                }
                println!(
                    "seed {seed}: {} ({} faults, {} micros billed, snapshots {} built {} installed)",
                    if o.passed() { "passed" } else { "FAILED" },
                    o.faults,
                    o.billed,
                    o.snapshots.0,
                    o.snapshots.1
                );
                if o.passed() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("sim: seed {seed} did not run: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
