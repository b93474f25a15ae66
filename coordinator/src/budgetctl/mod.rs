//! `budgetctl`: the operator and auditor CLI. Subcommands go noun then verb
//! (`budgetctl audit verify`). Tables for people, `--json` for machines.
//!
//! Exit codes: 0 success; 1 the thing checked does not hold or the region said no (an archive
//! that does not verify, a proof that does not check out, a charge that is not there, a command
//! refused, no leader found); 2 usage or I/O error.

mod audit;
mod ops;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Operate and audit the budget service.
#[derive(Debug, Parser)]
#[command(name = "budgetctl", version, about, long_about = None)]
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the financial log: verify archives, prove single charges, check proofs. Needs no
    /// server.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Create, budget, pause, resume and inspect campaigns on a running region.
    #[command(subcommand)]
    Campaign(ops::CampaignCommand),
    /// List leases.
    #[command(subcommand)]
    Leases(ops::LeasesCommand),
    /// Initialize a region, add or remove nodes.
    #[command(subcommand)]
    Cluster(ops::ClusterCommand),
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

/// Exit code: the thing checked does not hold.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage or I/O error.
pub const EXIT_USAGE: u8 = 2;

/// Connects to a coordinator at `endpoint` (`HOST:PORT` or a URL). The error names the
/// endpoint.
pub(crate) async fn connect(endpoint: &str) -> Result<tonic::transport::Channel, String> {
    let url = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("endpoint {url}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Audit(cmd) => audit::run(&cli.endpoint, cmd),
        Command::Campaign(cmd) => ops::campaign(&cli.endpoint, cmd),
        Command::Status { json } => ops::status(&cli.endpoint, json),
        Command::Regions { campaign, json } => {
            ops::regions(&cli.endpoint, campaign.as_deref(), json)
        }
        Command::Leases(cmd) => ops::leases(&cli.endpoint, cmd),
        Command::Cluster(cmd) => ops::cluster(&cli.endpoint, cmd),
    }
}
