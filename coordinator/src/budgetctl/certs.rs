//! `budgetctl certs`: the deployment's certificate authority and each process's certificate.
//!
//! The CA key signs every certificate of the deployment; keep it on the machine that deploys,
//! never on the hosts. Each certificate grants one role (`shared::tls::Role`), which decides the
//! APIs its holder may call.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use shared::tls::{Authority, Role, Validity};

use super::{EXIT_FAILED, EXIT_USAGE};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a new CA: writes DIR/ca.pem (give it to every host) and DIR/ca.key (keep it here).
    /// Refuses to overwrite an existing CA.
    Ca {
        /// Directory to write to (made if missing).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "budget service CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Sign a certificate for one process: writes DIR/NAME.pem and DIR/NAME.key (mode 0600).
    /// Refuses to overwrite; delete the old pair to re-issue.
    Issue {
        /// Directory of the CA (ca.pem, ca.key).
        #[arg(long, value_name = "DIR")]
        ca_dir: PathBuf,
        /// The role it grants: coordinator (Raft, region sync; serves every API), edge (leases),
        /// operator (admin, audit, campaign list) or auditor (reads the log).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Its name: the common name and the file name (e.g. eu-1-node-2).
        #[arg(long)]
        name: String,
        /// The region of a coordinator or an edge (required for them, refused for operators
        /// and auditors): Raft admits only its own region's coordinators, the lease API only
        /// its own region's edges, and region sync takes a region's counters only from that
        /// region's coordinators.
        #[arg(long, value_parser = parse_region)]
        region: Option<shared::RegionId>,
        /// A host name or IP address clients dial it by; repeat for each. Coordinators need
        /// every address their peers, edges and operators use.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Days it is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Directory to write to (default: the CA's).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Show a certificate's name, role, hosts and validity, and check it against a CA.
    Show {
        /// The certificate (PEM).
        file: PathBuf,
        /// Check that this CA signed it.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
    },
}

fn parse_role(s: &str) -> std::result::Result<Role, String> {
    s.parse().map_err(|e: shared::tls::TlsError| e.0)
}

fn parse_region(s: &str) -> std::result::Result<shared::RegionId, String> {
    s.parse().map_err(|e| format!("{e}"))
}

/// Runs a `certs` command.
pub fn run(cmd: CertsCommand) -> ExitCode {
    let result = match cmd {
        CertsCommand::Ca { dir, name, days } => ca(&dir, &name, days),
        CertsCommand::Issue {
            ca_dir,
            role,
            name,
            region,
            hosts,
            days,
            out,
        } => issue(
            &ca_dir,
            role,
            &name,
            region.as_ref().map(|r| r.as_str()),
            &hosts,
            days,
            out.as_deref(),
        ),
        CertsCommand::Show { file, ca } => show(&file, ca.as_deref()),
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err((code, e)) => {
            eprintln!("budgetctl certs: {e}");
            ExitCode::from(code)
        }
    }
}

type Result<T> = std::result::Result<T, (u8, String)>;

fn usage(e: impl std::fmt::Display) -> (u8, String) {
    (EXIT_USAGE, e.to_string())
}

/// Writes `text` to a new file `path` with `mode`; an existing file is an error.
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| usage(format!("{}: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| usage(format!("{}: {e}", path.display())))
}

fn refuse_existing(paths: &[&Path]) -> Result<()> {
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(usage(format!(
            "{} exists: not overwriting it (delete it first to replace it)",
            p.display()
        ))),
        None => Ok(()),
    }
}

fn ca(dir: &Path, name: &str, days: u32) -> Result<String> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    refuse_existing(&[&cert, &key])?;
    std::fs::create_dir_all(dir).map_err(|e| usage(format!("{}: {e}", dir.display())))?;
    let ca = Authority::create(name, Validity::days(days).map_err(usage)?).map_err(usage)?;
    write_new(&key, &ca.key_pem(), 0o600)?;
    write_new(&cert, ca.cert_pem(), 0o644)?;
    Ok(format!(
        "wrote {} (copy to every host) and {} (keep it off the hosts)",
        cert.display(),
        key.display()
    ))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| usage(format!("{}: {e}", path.display())))
}

fn issue(
    ca_dir: &Path,
    role: Role,
    name: &str,
    region: Option<&str>,
    hosts: &[String],
    days: u32,
    out: Option<&Path>,
) -> Result<String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(usage(format!(
            "--name {name:?}: use letters, digits, '-', '_' and '.' (it is also the file name)"
        )));
    }
    if role == Role::Coordinator && hosts.is_empty() {
        return Err(usage(
            "a coordinator needs --host for each name or address it is dialled by",
        ));
    }
    let ca = Authority::load(
        &read(&ca_dir.join("ca.pem"))?,
        &read(&ca_dir.join("ca.key"))?,
    )
    .map_err(usage)?;
    let out = out.unwrap_or(ca_dir);
    let (cert, key) = (
        out.join(format!("{name}.pem")),
        out.join(format!("{name}.key")),
    );
    refuse_existing(&[&cert, &key])?;
    std::fs::create_dir_all(out).map_err(|e| usage(format!("{}: {e}", out.display())))?;
    let issued = ca
        .issue(
            role,
            name,
            region,
            hosts,
            Validity::days(days).map_err(usage)?,
        )
        .map_err(usage)?;
    write_new(&key, &issued.key_pem, 0o600)?;
    write_new(&cert, &issued.cert_pem, 0o644)?;
    Ok(format!(
        "wrote {} and {}: {role} {name:?}, valid {days} days",
        cert.display(),
        key.display()
    ))
}

fn show(file: &Path, ca: Option<&Path>) -> Result<String> {
    let pem = std::fs::read(file).map_err(|e| usage(format!("{}: {e}", file.display())))?;
    let info = shared::tls::describe(&pem).map_err(|e| (EXIT_FAILED, e.0))?;
    let mut text = format!(
        "name:   {}\nrole:   {}\nregion: {}\nhosts:  {}\nvalid:  {} to {}",
        info.name,
        info.role,
        info.region.as_deref().unwrap_or("-"),
        if info.hosts.is_empty() {
            "-".to_string()
        } else {
            info.hosts.join(", ")
        },
        info.not_before,
        info.not_after
    );
    if let Some(ca) = ca {
        let ca_pem = std::fs::read(ca).map_err(|e| usage(format!("{}: {e}", ca.display())))?;
        shared::tls::check_signed_by(&pem, &ca_pem).map_err(|e| (EXIT_FAILED, e.0))?;
        text.push_str(&format!("\nsigned by {}: yes", ca.display()));
    }
    Ok(text)
}
