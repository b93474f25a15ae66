//! `chaos`: try faults by hand inside a private network namespace. See `chaos --help`.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

/// Fault injection for a topology on one machine.
///
/// Network faults work only inside a private network namespace (never on the machine's own
/// network): start one with `chaos shell`, run the topology there, and inject faults from that
/// shell. Addresses are the nodes' own 127.0.0.x addresses.
#[derive(Debug, Parser)]
#[command(name = "chaos", version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A shell in a new private network namespace, with loopback up.
    Shell,
    /// Drop packets from FROM to TO (both ways unless --one-way).
    Partition {
        /// Source addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<Ipv4Addr>,
        /// Destination addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<Ipv4Addr>,
        /// Only FROM -> TO.
        #[arg(long)]
        one_way: bool,
    },
    /// Drop a percentage of the packets from FROM to TO.
    Loss {
        /// Source addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<Ipv4Addr>,
        /// Destination addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<Ipv4Addr>,
        /// 1 to 100.
        #[arg(long)]
        percent: u8,
    },
    /// Send every packet from FROM to TO twice.
    Duplicate {
        /// Source addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<Ipv4Addr>,
        /// Destination addresses, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<Ipv4Addr>,
    },
    /// Remove every partition, loss and duplication rule.
    Heal,
    /// Hold one NFQUEUE queue's packets for a delay with jitter, in the foreground (the delay
    /// fault starts this; jitter wider than the gap between packets reorders them).
    DelayHelper {
        /// The queue number the iptables NFQUEUE rule sends to.
        #[arg(long)]
        queue: u16,
        /// Mean delay.
        #[arg(long, default_value_t = 50)]
        delay_ms: u64,
        /// Each packet is held delay ± up to this much.
        #[arg(long, default_value_t = 0)]
        jitter_ms: u64,
        /// Stop after this long (it always stops by itself).
        #[arg(long, default_value_t = 60)]
        for_secs: u64,
    },
    /// Write a clock skew file, which our binaries follow while running (BUDGET_CLOCK_FILE).
    Skew {
        /// The skew file.
        #[arg(long)]
        file: std::path::PathBuf,
        /// Wall-clock offset in µs (any size, either sign).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        offset_us: i64,
        /// Clock rate error in parts per million (±500000 at most).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        rate_ppm: i64,
    },
}

fn main() -> ExitCode {
    match run(Args::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cmd: Cmd) -> std::io::Result<()> {
    use chaos::net::{Action, Firewall};
    match cmd {
        Cmd::Shell => {
            if chaos::netns::reexecuted() {
                chaos::netns::loopback_up()?;
                let shell = std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into());
                eprintln!("chaos: in a private network namespace; `exit` leaves it");
                let status = std::process::Command::new(shell).status()?;
                std::process::exit(status.code().unwrap_or(1));
            }
            let exe = std::env::current_exe()?;
            let status = chaos::netns::reexec_command(&exe, &["shell".into()]).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Partition { from, to, one_way } => {
            let mut fw = Firewall::attach()?;
            println!("{}", fw.apply(&from, &to, Action::Drop)?);
            if !one_way {
                println!("{}", fw.apply(&to, &from, Action::Drop)?);
            }
        }
        Cmd::Loss { from, to, percent } => {
            println!(
                "{}",
                Firewall::attach()?.apply(&from, &to, Action::Loss(percent))?
            );
        }
        Cmd::Duplicate { from, to } => {
            println!(
                "{}",
                Firewall::attach()?.apply(&from, &to, Action::Duplicate)?
            );
        }
        Cmd::Heal => {
            Firewall::attach()?.heal_all()?;
            println!("healed");
        }
        Cmd::DelayHelper {
            queue,
            delay_ms,
            jitter_ms,
            for_secs,
        } => {
            let until = Instant::now() + Duration::from_secs(for_secs);
            let n = chaos::delay::run(
                queue,
                Duration::from_millis(delay_ms),
                Duration::from_millis(jitter_ms),
                until,
            )?;
            println!("delayed {n} packets");
        }
        Cmd::Skew {
            file,
            offset_us,
            rate_ppm,
        } => {
            let skew = shared::clock::Skew {
                offset_us,
                rate_ppm,
            };
            std::fs::write(&file, skew.to_file_text())?;
            println!("{}: {}", file.display(), skew.to_file_text().trim());
        }
    }
    Ok(())
}
