//! `sim-exchange`: a small simulated ad exchange for local runs. See `sim-exchange --help`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use edge::sim::{SimConfig, run};

/// A simulated exchange: sends OpenRTB 2.6 bid requests to the edges at a fixed rate, runs a
/// second-price auction of each bid against a synthetic competitor, sends win and billing (or
/// loss) notices to the edge that bid (retrying at the edges of its region) until
/// acknowledged. Its traffic is shaped like a real exchange's: impressions with `exp` from a
/// minute to two hours (or none), reused auction ids and replayed requests, loss notices with
/// IAB reason codes, wins never billed and bills that come late. It prints a status line every second: requests, bids, wins, and per campaign
/// what it billed against the budget and the ledger. Stops by itself after --duration-secs or
/// --max-requests.
#[derive(Debug, Parser)]
#[command(name = "sim-exchange", version)]
struct Args {
    /// An edge's base URL, optionally after its region (`eu-1=http://127.0.0.1:8081`); repeat
    /// for each (default http://127.0.0.1:8080).
    #[arg(long = "edge", value_name = "[REGION=]URL")]
    edges: Vec<String>,
    /// Move the traffic between regions: every SECS, the next region's edges (in name order)
    /// get 80 % of the requests. Needs edges of two regions or more; 0: spread evenly.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    focus_every: u64,
    /// A coordinator (HOST:PORT) to read budgets from; repeat; none: no budgets shown.
    #[arg(long = "coordinator", value_name = "HOST:PORT")]
    coordinators: Vec<String>,
    /// The CA certificate, for mutual TLS with the coordinators (with --cert and --key, an
    /// operator's); without them the budgets are read in plaintext.
    #[arg(long, value_name = "FILE", requires_all = ["cert", "key"])]
    ca: Option<std::path::PathBuf>,
    /// An operator's certificate.
    #[arg(long, value_name = "FILE", requires = "ca")]
    cert: Option<std::path::PathBuf>,
    /// Its private key.
    #[arg(long, value_name = "FILE", requires = "ca")]
    key: Option<std::path::PathBuf>,
    /// Bid requests per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Stop after this many requests.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// Divide every impression's `exp` by this (1: real ones, a minute to two hours; e.g. 360
    /// against a region whose longest `exp` is 10 s).
    #[arg(long, value_name = "N", default_value_t = 1)]
    exp_scale: u64,
    /// Seed of every random choice: the same seed, the same requests, auction ids and all
    /// (a second run with one seed replays the first's ids, as a misbehaving exchange would).
    /// Without it, a random seed and auction ids unique to this run.
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.exp_scale == 0 {
        eprintln!("sim-exchange: --exp-scale must be at least 1");
        return ExitCode::from(2);
    }
    if args.rate == 0 || args.rate > 100_000 {
        eprintln!("sim-exchange: --rate must be 1 to 100000");
        return ExitCode::from(2);
    }
    let (mut edges, mut regions) = (Vec::new(), Vec::new());
    for e in &args.edges {
        match e.split_once('=') {
            Some((region, url)) if !region.contains("://") => {
                if region.is_empty() || url.is_empty() {
                    eprintln!("sim-exchange: --edge {e}: say REGION=URL or URL");
                    return ExitCode::from(2);
                }
                regions.push(region.to_owned());
                edges.push(url.to_owned());
            }
            _ => edges.push(e.clone()),
        }
    }
    if !regions.is_empty() && regions.len() != edges.len() {
        eprintln!("sim-exchange: name the region of every --edge, or of none");
        return ExitCode::from(2);
    }
    if edges.is_empty() {
        edges.push("http://127.0.0.1:8080".to_owned());
    }
    let focus_every = (args.focus_every > 0).then(|| Duration::from_secs(args.focus_every));
    let mut names = regions.clone();
    names.sort_unstable();
    names.dedup();
    if focus_every.is_some() && names.len() < 2 {
        eprintln!(
            "sim-exchange: --focus-every needs edges of two regions or more (--edge REGION=URL)"
        );
        return ExitCode::from(2);
    }
    let transport = match (&args.ca, &args.cert, &args.key) {
        (Some(ca), Some(cert), Some(key)) => {
            let files = shared::tls::TlsFiles {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
            };
            match shared::tls::Transport::from_config(&files, false, &[shared::tls::Role::Operator])
            {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("sim-exchange: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => shared::tls::Transport::Plaintext,
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
    let (seed, run_id) = match args.seed {
        Some(s) => (s, s.to_string()),
        None => {
            let s = fastrand::u64(..);
            (s, format!("{s:016x}"))
        }
    };
    let cfg = SimConfig {
        edges,
        regions,
        focus_every,
        coordinators: args.coordinators,
        transport,
        rate: args.rate,
        duration: Duration::from_secs(args.duration_secs),
        max_requests: args.max_requests,
        seed,
        run_id,
        exp_scale: args.exp_scale,
        status: true,
    };
    let tally = rt.block_on(run(cfg.clone()));
    let mut ok = true;
    if !cfg.coordinators.is_empty() {
        let (text, kept) = rt.block_on(edge::sim::verdict(&cfg, &tally, Duration::from_secs(15)));
        println!("\n{text}");
        ok &= kept;
    }
    let lost = tally
        .notices_lost
        .load(std::sync::atomic::Ordering::Relaxed);
    if lost > 0 {
        eprintln!("sim-exchange: {lost} notices were never acknowledged");
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
