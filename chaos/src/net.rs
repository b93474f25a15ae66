//! Network faults with nftables, inside a private namespace ([`crate::netns`]).
//!
//! All rules live in one table, `ip chaos`. Drops and loss sit on the `input` hook: the sender's
//! packet leaves normally and vanishes on arrival, so the sender sees silence and a timeout, as
//! on a real network (a drop on `output` would fail the sender's `send` at once with `EPERM`).
//! Duplication sits on `output`. On loopback each packet between two nodes passes each hook
//! once, and matching on source and destination address picks the direction. Each rule counts
//! the packets it acted on, which is how a test shows that a fault reached its target.
//!
//! What nftables does here: partitions (both ways or one way), random loss, duplication. What it
//! cannot do here: delay and reordering (`tc netem` is absent, and so is nftables' `queue`
//! statement); those need a userspace queue.

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

use crate::netns::{ensure_private, output, run};

const TABLE: &str = "chaos";
/// Where drops and loss happen.
const INPUT: &str = "input";
/// Where duplication happens.
const OUTPUT: &str = "output";

/// What a rule does to the packets it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Drops every packet: a partition in that direction.
    Drop,
    /// Drops each packet with this probability, in percent (1 to 100).
    Loss(u8),
    /// Sends each packet twice.
    Duplicate,
    /// Drops the TCP segments that carry data (IP length over [`DATA_MIN_LEN`]) and lets pure
    /// acknowledgements through: the receiver's requests keep arriving and being served while
    /// its answers are lost — an application's acknowledgement dropped, not its request. (A
    /// plain drop of the answering direction also stops the TCP acknowledgements, and the
    /// sender's requests stall behind its first unacknowledged segment.)
    DropData,
}

/// The IP length above which [`Action::DropData`] takes a TCP segment to carry data: a pure
/// acknowledgement, with timestamps and SACK blocks, is at most 80 bytes; an answer over TLS
/// is longer than 100.
pub const DATA_MIN_LEN: u16 = 100;

/// A fault in force: which packets, what is done to them, and the rules that do it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Sources whose packets are affected.
    pub from: Vec<Ipv4Addr>,
    /// Destinations whose packets are affected.
    pub to: Vec<Ipv4Addr>,
    /// What happens to them.
    pub action: Action,
    /// The rules' comment, unique per fault.
    tag: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |a: &[Ipv4Addr]| {
            a.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let what = match self.action {
            Action::Drop => "drop".to_string(),
            Action::Loss(p) => format!("loss {p}%"),
            Action::Duplicate => "duplicate".to_string(),
            Action::DropData => "drop data".to_string(),
        };
        write!(f, "{what} {} -> {}", list(&self.from), list(&self.to))
    }
}

fn set(addrs: &[Ipv4Addr]) -> String {
    let items: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

fn nft(args: &[&str]) -> io::Result<String> {
    output(Command::new("nft").args(args))
}

/// The `chaos` table of this namespace.
pub struct Firewall {
    next: u64,
}

impl Firewall {
    /// Creates the table and its chains, empty. Refuses outside a private namespace.
    pub fn new() -> io::Result<Firewall> {
        ensure_private()?;
        // Start from nothing, whatever an earlier run in this namespace left.
        let _ = nft(&["delete", "table", "ip", TABLE]);
        Firewall::attach()
    }

    /// Uses the table as an earlier process left it (creating it if missing), adding to its
    /// faults: for a command line that injects one fault per call.
    pub fn attach() -> io::Result<Firewall> {
        ensure_private()?;
        nft(&["add", "table", "ip", TABLE])?;
        for (chain, hook) in [(INPUT, "input"), (OUTPUT, "output")] {
            nft(&[
                "add",
                "chain",
                "ip",
                TABLE,
                chain,
                &format!("{{ type filter hook {hook} priority 0; policy accept; }}"),
            ])?;
        }
        // Tags must stay unique across processes.
        Ok(Firewall {
            next: u64::from(std::process::id()) << 20,
        })
    }

    /// Applies `action` to packets from any of `from` to any of `to`.
    pub fn apply(
        &mut self,
        from: &[Ipv4Addr],
        to: &[Ipv4Addr],
        action: Action,
    ) -> io::Result<Fault> {
        if from.is_empty() || to.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a fault needs at least one source and one destination",
            ));
        }
        if let Action::Loss(p) = action
            && !(1..=100).contains(&p)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("loss of {p}%: give 1 to 100"),
            ));
        }
        self.next += 1;
        let tag = format!("fault-{}", self.next);
        let matches = format!("ip saddr {} ip daddr {}", set(from), set(to));
        let chain = if action == Action::Duplicate {
            OUTPUT
        } else {
            INPUT
        };
        let rules: Vec<String> = match action {
            Action::Drop => vec![format!("{matches} counter drop")],
            Action::DropData => vec![format!(
                "{matches} meta l4proto tcp ip length > {DATA_MIN_LEN} counter drop"
            )],
            Action::Loss(p) => vec![format!(
                "{matches} numgen random mod 100 < {p} counter drop"
            )],
            // One rule per destination: the copy goes to the packet's own destination. The
            // kernel does not duplicate a copy again.
            Action::Duplicate => to
                .iter()
                .map(|d| {
                    format!(
                        "ip saddr {} ip daddr {d} counter dup to {d} device \"lo\"",
                        set(from)
                    )
                })
                .collect(),
        };
        for r in rules {
            run(Command::new("nft")
                .arg(format!("add rule ip {TABLE} {chain} {r} comment \"{tag}\"")))?;
        }
        Ok(Fault {
            from: from.to_vec(),
            to: to.to_vec(),
            action,
            tag,
        })
    }

    /// Drops everything between the two groups, both ways: a partition.
    pub fn partition(&mut self, a: &[Ipv4Addr], b: &[Ipv4Addr]) -> io::Result<[Fault; 2]> {
        Ok([
            self.apply(a, b, Action::Drop)?,
            self.apply(b, a, Action::Drop)?,
        ])
    }

    /// How many packets the fault's rules have acted on so far.
    pub fn packets(&self, fault: &Fault) -> io::Result<u64> {
        let mut n = 0;
        for rule in rules_of(fault)? {
            for e in rule["expr"].as_array().into_iter().flatten() {
                n += e["counter"]["packets"].as_u64().unwrap_or(0);
            }
        }
        Ok(n)
    }

    /// Removes one fault's rules.
    pub fn heal(&mut self, fault: &Fault) -> io::Result<()> {
        for rule in rules_of(fault)? {
            if let (Some(chain), Some(h)) = (rule["chain"].as_str(), rule["handle"].as_u64()) {
                nft(&[
                    "delete",
                    "rule",
                    "ip",
                    TABLE,
                    chain,
                    "handle",
                    &h.to_string(),
                ])?;
            }
        }
        Ok(())
    }

    /// Removes every fault.
    pub fn heal_all(&mut self) -> io::Result<()> {
        for chain in [INPUT, OUTPUT] {
            nft(&["flush", "chain", "ip", TABLE, chain])?;
        }
        Ok(())
    }
}

/// The rules (as nft's JSON, with handles and counters) that carry the fault's tag.
fn rules_of(fault: &Fault) -> io::Result<Vec<serde_json::Value>> {
    let json = nft(&["-j", "-a", "list", "table", "ip", TABLE])?;
    let v: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| io::Error::other(format!("nft -j output: {e}")))?;
    Ok(v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| &item["rule"])
        .filter(|rule| rule["comment"].as_str() == Some(fault.tag.as_str()))
        .cloned()
        .collect())
}
