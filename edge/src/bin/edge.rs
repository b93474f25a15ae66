//! `edge`: an OpenRTB bidder that spends campaign budgets only from leases. See `edge --help`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use edge::config::Config;
use shared::clock::Clock;

/// An OpenRTB 2.5/2.6 bidder that cannot overspend: it bids only with money reserved from a
/// lease granted by the region's coordinators, and settles wins exactly once.
///
/// Settings come from `--config FILE` (TOML; every key has a default, unknown keys are an
/// error; `--print-config` shows them all), then from these flags, which win.
///
/// Routes: POST <bid_path> of each exchange (`[[exchanges]]`; default one, `sim`, at
/// /openrtb2/bid, billing by its billing notice) for bid requests; GET /notice/{win,bill,loss}
/// for the exchanges' notices; GET /healthz; GET /metrics. The lease timings (spending window,
/// W, margin, the longest `exp` and `tmax` bid on) are the region's, sent with every lease.
#[derive(Debug, Parser)]
#[command(name = "edge", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This edge's name (default edge-1).
    #[arg(long)]
    edge_id: Option<String>,
    /// The region of its coordinators; signs its notices (default local).
    #[arg(long)]
    region: Option<String>,
    /// HTTP listen address (default 127.0.0.1:8080).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// A coordinator of the region; repeat for each (default 127.0.0.1:7001).
    #[arg(long = "coordinator", value_name = "HOST:PORT")]
    coordinators: Vec<String>,
    /// The exchange's name, part of every charge's exchange ids (default sim). Renames the
    /// first of `[[exchanges]]`.
    #[arg(long)]
    exchange: Option<String>,
    /// Notice-signing key, hex (default: a development key, with a warning).
    #[arg(
        long,
        value_name = "HEX",
        env = "EDGE_NOTICE_KEY_HEX",
        hide_env_values = true
    )]
    notice_key_hex: Option<String>,
    /// Source IP of calls to the coordinators (default: the system chooses).
    #[arg(long, value_name = "IP")]
    outgoing_address: Option<String>,
    /// Call the coordinators without TLS (they must run with it too): for local development
    /// and tests only. Without it, the `[tls]` files are required.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn load(args: &Args) -> Result<Config, String> {
    let mut config: Config = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(v) = &args.edge_id {
        config.edge_id = v.clone();
    }
    if let Some(v) = &args.region {
        config.region = v.clone();
    }
    if let Some(v) = &args.listen {
        config.listen = v.clone();
    }
    if !args.coordinators.is_empty() {
        config.coordinators = args.coordinators.clone();
    }
    if let Some(v) = &args.exchange {
        match config.exchanges.first_mut() {
            Some(x) => x.id = v.clone(),
            None => config.exchanges.push(edge::config::ExchangeConfig {
                id: v.clone(),
                ..Default::default()
            }),
        }
    }
    if let Some(v) = &args.notice_key_hex {
        config.notice_key_hex = v.clone();
    }
    if let Some(v) = &args.outgoing_address {
        config.outgoing_address = v.clone();
    }
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge: {e}");
            return ExitCode::from(2);
        }
    };
    let mut settings = match config.validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("edge: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    settings.transport = match shared::tls::Transport::from_config(
        &config.tls,
        args.insecure_plaintext,
        &[shared::tls::Role::Edge],
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("edge: {e}");
            return ExitCode::from(2);
        }
    };
    // An edge's certificate names its region; the coordinators lease only to their own.
    if let Some(theirs) = settings.transport.region()
        && theirs != config.region
    {
        eprintln!(
            "edge: {}: the certificate is for region {theirs}; this edge bids for region {}",
            config.tls.cert_file.display(),
            config.region
        );
        return ExitCode::from(2);
    }
    if settings.transport.is_tls() {
        tracing::info!(cert = %config.tls.cert_file.display(), "mutual TLS to the coordinators");
    } else {
        tracing::warn!(
            "INSECURE: calling the coordinators in plaintext (--insecure-plaintext): for local \
             development and tests only"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.listen))?;
        edge::server::run(settings, Clock::from_env(), listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    shared::shutdown::signal().await;
    tracing::info!("shutting down: finishing requests in flight");
}
