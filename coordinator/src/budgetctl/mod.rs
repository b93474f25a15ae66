//! `budgetctl`: the operator and auditor CLI. Subcommands go noun then verb
//! (`budgetctl audit verify`). Tables for people, `--json` for machines.
//!
//! Exit codes: 0 done; 1 the service refused, or the thing checked does not hold (a command
//! refused, no leader found, an archive that does not verify, a proof that does not check out,
//! a charge that is not there); 2 usage, I/O or connection error. The connection flags
//! (`--endpoint`, TLS) are global, and hidden from the commands that need no server.

mod audit;
mod certs;
mod ops;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;

use clap::{Parser, Subcommand};

/// The exit-code rule, written in every `--help`.
const EXIT_CODES: &str = "Exit codes: 0 done; 1 refused by the service, or the thing checked \
    does not hold; 2 usage, I/O or connection error.";

/// budgetctl operates and audits the budget service: campaigns and their budgets, regions,
/// leases and edges, cluster membership, certificates, and the financial log (verification,
/// proofs of single charges).
#[derive(Debug, Parser)]
#[command(name = "budgetctl", version, long_about = None, after_help = EXIT_CODES)]
pub struct Cli {
    /// A coordinator of the region (any node; writes are sent on to the leader).
    #[arg(
        long,
        global = true,
        env = "BUDGETCTL_ENDPOINT",
        default_value = "127.0.0.1:7001",
        value_name = "HOST:PORT"
    )]
    endpoint: String,
    /// The deployment's CA certificate (PEM), for mutual TLS with the coordinators.
    #[arg(long, global = true, env = "BUDGETCTL_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Your certificate (role operator, or auditor for `audit` reads).
    #[arg(long, global = true, env = "BUDGETCTL_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Your certificate's private key.
    #[arg(long, global = true, env = "BUDGETCTL_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Talk to coordinators without TLS (they must run with --insecure-plaintext): local
    /// development only.
    #[arg(long, global = true, env = "BUDGETCTL_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the financial log: verify archives, prove single charges, check proofs (no
    /// server needed), or verify a running region's log (verify-live, head).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Create, update, budget, pause, resume and inspect campaigns on a running region.
    #[command(subcommand)]
    Campaign(ops::CampaignCommand),
    /// List leases.
    #[command(subcommand)]
    Leases(ops::LeasesCommand),
    /// Registered edges and their check-ins; retire an edge that is gone for good.
    #[command(subcommand)]
    Edges(ops::EdgesCommand),
    /// Initialize a region, add or remove nodes.
    #[command(subcommand)]
    Cluster(ops::ClusterCommand),
    /// Make the deployment's CA and sign each process's certificate. Needs no server.
    Certs {
        #[command(flatten)]
        offline: Offline,
        #[command(subcommand)]
        cmd: certs::CertsCommand,
    },
    /// The region's members, leader, term and applied index, and every bucket's money; with
    /// peer regions, every region's created / transferred / settled / leased / in doubt /
    /// available per bucket and the age of the last sync with each peer.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Peer regions: sync ages, the chain heads they showed us (witnesses), and alarms. Exits 1
    /// when there is an alarm.
    Regions {
        /// Also show this campaign's buckets across regions.
        #[arg(long)]
        campaign: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// [`Offline`] for the commands that take `--ca` themselves (to check signed log heads): the
/// other connection flags, hidden.
#[derive(Debug, clap::Args)]
pub(crate) struct OfflineCa {
    #[arg(long, hide = true)]
    endpoint: Option<String>,
    #[arg(long, hide = true)]
    cert: Option<PathBuf>,
    #[arg(long, hide = true)]
    key: Option<PathBuf>,
    #[arg(long, hide = true)]
    insecure_plaintext: bool,
}

/// The connection flags in a command that needs no server: declared here, hidden, so that
/// its help does not list them (the global ones are not passed down where a command declares
/// its own). Given after such a command, they are refused as unknown.
#[derive(Debug, clap::Args)]
pub(crate) struct Offline {
    #[command(flatten)]
    rest: OfflineCa,
    #[arg(long, hide = true)]
    ca: Option<PathBuf>,
}

/// Exit code: the thing checked does not hold.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage or I/O error.
pub const EXIT_USAGE: u8 = 2;

/// The TLS flags, set once in `main`.
#[derive(Clone, Debug, Default)]
struct TlsArgs {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure_plaintext: bool,
}

static TLS_ARGS: OnceLock<TlsArgs> = OnceLock::new();
/// How this run talks to coordinators; made on the first connection, so that the commands
/// that need no server need no certificates.
static TRANSPORT: OnceLock<Result<shared::tls::Transport, String>> = OnceLock::new();

fn make_transport(a: &TlsArgs) -> Result<shared::tls::Transport, String> {
    use shared::tls::{Role, Transport};
    let given = [&a.ca, &a.cert, &a.key];
    match (given.iter().all(|f| f.is_none()), a.insecure_plaintext) {
        (true, true) => Ok(Transport::Plaintext),
        (false, true) => Err("both --ca/--cert/--key and --insecure-plaintext: choose one".into()),
        (true, false) => Err("no TLS: pass --ca, --cert and --key (or set BUDGETCTL_CA, \
                              BUDGETCTL_CERT, BUDGETCTL_KEY), or --insecure-plaintext for a \
                              local development region"
            .into()),
        (false, false) => {
            let read = |flag: &str, f: &Option<PathBuf>| match f {
                None => Err(format!(
                    "{flag} is missing (--ca, --cert and --key go together)"
                )),
                Some(p) => std::fs::read(p).map_err(|e| format!("{flag} {}: {e}", p.display())),
            };
            let (ca, cert, key) = (
                read("--ca", &a.ca)?,
                read("--cert", &a.cert)?,
                read("--key", &a.key)?,
            );
            Transport::from_pem(&ca, &cert, &key, &[Role::Operator, Role::Auditor])
                .map_err(|e| format!("--cert: {e}"))
        }
    }
}

/// The CA file of the connection flags, if given: what `audit head --signed` checks the head
/// it fetched against.
pub(crate) fn connection_ca() -> Option<PathBuf> {
    TLS_ARGS.get().and_then(|a| a.ca.clone())
}

fn transport() -> Result<shared::tls::Transport, String> {
    TRANSPORT
        .get_or_init(|| make_transport(&TLS_ARGS.get().cloned().unwrap_or_default()))
        .clone()
}

/// Connects to a coordinator at `endpoint` (`HOST:PORT`, or a URL whose scheme matches the
/// TLS flags). The error names the endpoint.
pub(crate) async fn connect(endpoint: &str) -> Result<tonic::transport::Channel, String> {
    transport()?
        .endpoint(endpoint)
        .map_err(|e| e.to_string())?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("cannot reach {endpoint}: {}", causes(&e)))
}

/// An error and its causes, `: `-separated (tonic's own text is only "transport error"; the
/// TLS reason is further down).
fn causes(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(c) = next {
        // hyper and tonic repeat a cause's text in its wrapper ("tcp connect error: tcp
        // connect error: …"): each part once.
        let t = c.to_string();
        if !parts.contains(&t) {
            parts.push(t);
        }
        next = c.source();
    }
    parts.join(": ")
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = TLS_ARGS.set(TlsArgs {
        ca: cli.ca.clone(),
        cert: cli.cert.clone(),
        key: cli.key.clone(),
        insecure_plaintext: cli.insecure_plaintext,
    });
    match cli.command {
        Command::Certs { cmd, .. } => certs::run(cmd),
        Command::Audit(cmd) => audit::run(&cli.endpoint, cmd),
        Command::Campaign(cmd) => ops::campaign(&cli.endpoint, cmd),
        Command::Status { json } => ops::status(&cli.endpoint, json),
        Command::Regions { campaign, json } => {
            ops::regions(&cli.endpoint, campaign.as_deref(), json)
        }
        Command::Leases(cmd) => ops::leases(&cli.endpoint, cmd),
        Command::Cluster(cmd) => ops::cluster(&cli.endpoint, cmd),
        Command::Edges(cmd) => ops::edges(&cli.endpoint, cmd),
    }
}
