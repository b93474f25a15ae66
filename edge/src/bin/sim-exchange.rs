//! `sim-exchange`: a small simulated ad exchange for local runs. See `sim-exchange --help`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use edge::sim::{SimConfig, run};

/// A simulated exchange: sends OpenRTB 2.6 bid requests to the edges at a fixed rate, runs a
/// second-price auction of each bid against a synthetic competitor, sends win and billing (or
/// loss) notices to a random edge until acknowledged, and prints a status line every second:
/// requests, bids, wins, and per campaign what it billed against the budget and the ledger.
/// Stops by itself after --duration-secs or --max-requests.
#[derive(Debug, Parser)]
#[command(name = "sim-exchange", version)]
struct Args {
    /// An edge's base URL; repeat for each (default http://127.0.0.1:8080).
    #[arg(long = "edge", value_name = "URL")]
    edges: Vec<String>,
    /// A coordinator (HOST:PORT) to read budgets from; repeat; none: no budgets shown.
    #[arg(long = "coordinator", value_name = "HOST:PORT")]
    coordinators: Vec<String>,
    /// Bid requests per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// Seed of every random choice (same seed, same requests).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.rate == 0 || args.rate > 100_000 {
        eprintln!("sim-exchange: --rate must be 1 to 100000");
        return ExitCode::from(2);
    }
    let edges = if args.edges.is_empty() {
        vec!["http://127.0.0.1:8080".to_owned()]
    } else {
        args.edges
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sim-exchange: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tally = rt.block_on(run(SimConfig {
        edges,
        coordinators: args.coordinators,
        rate: args.rate,
        duration: Duration::from_secs(args.duration_secs),
        max_requests: args.max_requests,
        seed: args.seed,
        status: true,
    }));
    let lost = tally
        .notices_lost
        .load(std::sync::atomic::Ordering::Relaxed);
    if lost > 0 {
        eprintln!("sim-exchange: {lost} notices were never acknowledged");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
