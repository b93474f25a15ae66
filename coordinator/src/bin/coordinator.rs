//! `coordinator`: one node of a region's Raft group. See `coordinator --help`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use coordinator::server::{Config, run};

/// One node of a region's coordinator group: holds the region's budget ledger, leases and
/// financial log, replicated with Raft, and serves the lease, admin, audit and Raft gRPC APIs.
///
/// Settings come from `--config FILE` (TOML; every key has a default, unknown keys are an
/// error), then from these flags, which win. A new region is started by giving one node the
/// members with `--init ID=HOST:PORT` (once per member).
#[derive(Debug, Parser)]
#[command(
    name = "coordinator",
    version,
    after_help = "Exit status: 0 after SIGTERM or Ctrl-C; 2 a bad configuration; 65 the \
                  database is damaged (a checksum does not match): replace this replica; 74 a \
                  storage failure while running (a full disk: free space and start it again, \
                  nothing is lost); 1 anything else."
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Region name (default "local").
    #[arg(long)]
    region: Option<String>,
    /// This node's number in the region (default 1).
    #[arg(long)]
    node_id: Option<u64>,
    /// gRPC listen address (default 127.0.0.1:7001).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Data directory (default data/node-1).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Prometheus /metrics HTTP address (default 127.0.0.1:9101; "" turns it off).
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Source IP of connections to the other nodes (default: the system chooses).
    #[arg(long, value_name = "IP")]
    outgoing_address: Option<String>,
    /// Initialize a new region with these members; repeat for each (ID=HOST:PORT).
    #[arg(long = "init", value_name = "ID=HOST:PORT")]
    init: Vec<String>,
    /// Serve and call gRPC without TLS, with no certificate checks: for local development and
    /// tests only. Without it, the `[tls]` files are required.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn load(args: &Args) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(r) = &args.region {
        config.region = r.clone();
    }
    if let Some(n) = args.node_id {
        config.node_id = n;
    }
    if let Some(l) = &args.listen {
        config.listen = l.clone();
    }
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(m) = &args.metrics_listen {
        config.metrics_listen = m.clone();
    }
    if let Some(o) = &args.outgoing_address {
        config.outgoing_address = o.clone();
    }
    if !args.init.is_empty() {
        let mut members = BTreeMap::new();
        for m in &args.init {
            let (id, addr) = m
                .split_once('=')
                .ok_or_else(|| format!("--init {m:?}: expected ID=HOST:PORT"))?;
            members.insert(id.to_string(), addr.to_string());
        }
        config.init_members = members;
    }
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn main() -> ExitCode {
    coordinator::fail_stop::install("coordinator");
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    coordinator::fail_stop::install_storage_abort(&config.data_dir);
    let transport = match shared::tls::Transport::from_config(
        &config.tls,
        args.insecure_plaintext,
        &[shared::tls::Role::Coordinator],
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    // A coordinator certificate names its region; Raft and region sync check it on every call.
    if let Some(theirs) = transport.region()
        && theirs != config.region
    {
        eprintln!(
            "coordinator: {}: the certificate is for region {theirs}; this node serves region {}",
            config.tls.cert_file.display(),
            config.region
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coordinator: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("listening on {}: {e}", config.listen))?;
        run(config, transport, listener, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit status that tells a supervisor what went wrong (sysexits.h): 65 (`EX_DATAERR`),
/// the database is damaged and the replica must be replaced; 1, anything else. (A storage
/// failure while running exits 74, `EX_IOERR`, at once from `server::run`: closing the
/// database would write again.)
fn exit_code(e: &anyhow::Error) -> u8 {
    if matches!(
        e.downcast_ref::<coordinator::node::StartError>(),
        Some(coordinator::node::StartError::Damaged { .. })
    ) {
        65
    } else {
        1
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    shared::shutdown::signal().await;
}
