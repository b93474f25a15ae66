//! `budgetctl audit …`: verification of archives and proofs of single charges.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use shared::EventKey;
use shared::log::proof::{self, ChargeRef, InclusionProof, ProveError};
use shared::log::verify::{ArchiveError, Failure, Summary, verify_path_observed};
use shared::log::{Hash, parse_hash};

use super::{EXIT_FAILED, EXIT_USAGE};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify a log archive: every segment, entry, hash link, Merkle root and trailer.
    ///
    /// Exit 0 and a summary if it verifies; exit 1 and the first bad entry (seq, file, byte
    /// offset, reason) if it does not; exit 2 if it cannot be read.
    Verify {
        #[command(flatten)]
        offline: super::Offline,
        /// A directory of sealed segments (*.seg), one segment file, or a coordinator's data
        /// directory (its `segments/`). (`audit verify-live` verifies a running region's log.)
        path: PathBuf,
        /// Also require the archive's last entry to have this hash (64 hex digits), for example a
        /// head published earlier.
        #[arg(long, value_name = "HASH", value_parser = hash_arg)]
        expect_head: Option<Hash>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a proof (JSON) that one charge is in the log, leading to the archive's head.
    ///
    /// Verifies the whole archive first. The proof reveals the charge, its spend batch's body,
    /// and one digest per later entry: nothing of any other charge. Name the charge by our bid
    /// (--bid, one charge at most) or by the exchange's ids (--event): exchanges reuse ids, so
    /// those may name several charges; then each is listed by its bid id and none is written
    /// until --bid picks one.
    #[command(group(clap::ArgGroup::new("charge").required(true).args(["bid", "event"])))]
    Prove {
        #[command(flatten)]
        offline: super::Offline,
        /// A directory of sealed segments, or one segment file.
        path: PathBuf,
        /// The charge of our bid LEASE.BID (as a notice's `l` and `n` name it; `12.7`: bid 7
        /// of lease 12).
        #[arg(long, value_name = "LEASE.BID", value_parser = ChargeRef::parse_bid)]
        bid: Option<ChargeRef>,
        /// The charge with these exchange ids: EXCHANGE/AUCTION_ID/IMP_ID (the auction id may
        /// hold '/', the others not).
        #[arg(long, value_name = "EXCHANGE/AUCTION/IMP")]
        event: Option<EventKey>,
        /// Prove against the head at this seq instead of the archive's last entry.
        #[arg(long, value_name = "SEQ")]
        head_seq: Option<u64>,
        /// Write the proof to this file instead of standard output.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Verify the live log of the coordinator at --endpoint: every entry from the first, every
    /// hash link and Merkle root, ending at the head the coordinator reports.
    ///
    /// Exit 0 and a summary if it verifies; exit 1 and the first bad entry if it does not;
    /// exit 2 if the coordinator cannot be reached.
    VerifyLive {
        /// Also require the log's last entry to have this hash (64 hex digits).
        #[arg(long, value_name = "HASH", value_parser = hash_arg)]
        expect_head: Option<Hash>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the head of a running region's financial log (seq and hash), from --endpoint.
    Head {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a proof made by `audit prove` against a head hash you trust. Offline.
    ///
    /// Exit 0 if the proof leads from the charge to that head, 1 if it does not.
    CheckProof {
        #[command(flatten)]
        offline: super::Offline,
        /// The proof file (JSON); `-` reads standard input.
        proof: PathBuf,
        /// The head hash you trust (64 hex digits), for example from `audit verify` or a
        /// published head.
        #[arg(long, value_name = "HASH", value_parser = hash_arg)]
        head: Hash,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Entries between two progress lines.
const PROGRESS_EVERY: u64 = 250_000;

/// A coordinator's data directory holds its sealed segments in `segments/`.
fn archive_dir(path: PathBuf) -> PathBuf {
    let sub = path.join("segments");
    if sub.is_dir() { sub } else { path }
}

fn hash_arg(s: &str) -> Result<Hash, String> {
    parse_hash(s)
}

pub(crate) fn run(endpoint: &str, cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify {
            path,
            expect_head,
            json,
            ..
        } => verify(&archive_dir(path), expect_head.as_ref(), json),
        AuditCommand::VerifyLive { expect_head, json } => {
            verify_live(endpoint, expect_head.as_ref(), json)
        }
        AuditCommand::Prove {
            path,
            bid,
            event,
            head_seq,
            output,
            ..
        } => {
            let which = match (bid, event) {
                (Some(b), _) => b,
                (None, Some(e)) => ChargeRef::Exchange(e),
                // clap's group requires one of them.
                (None, None) => return usage_error("name the charge with --bid or --event"),
            };
            prove(&archive_dir(path), &which, head_seq, output)
        }
        AuditCommand::Head { json } => head(endpoint, json),
        AuditCommand::CheckProof {
            proof, head, json, ..
        } => check_proof(&proof, &head, json),
    }
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("budgetctl: {msg}");
    ExitCode::from(EXIT_USAGE)
}

fn print_json(value: &serde_json::Value) {
    // Serialising a Value cannot fail.
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn verify(path: &std::path::Path, expect_head: Option<&Hash>, json: bool) -> ExitCode {
    // Long verifications show progress on a terminal (never in pipes, files or --json runs).
    let progress = !json && std::io::stderr().is_terminal();
    let mut seen = 0u64;
    let mut observe = |_: &shared::log::verify::Verified<'_>| {
        seen += 1;
        if progress && seen.is_multiple_of(PROGRESS_EVERY) {
            eprint!("\rverified {} entries…", grouped(seen));
        }
    };
    let result = verify_path_observed(path, expect_head, &mut observe);
    if progress && seen >= PROGRESS_EVERY {
        eprint!("\r\x1b[K");
    }
    let result = match result {
        Ok(r) => r,
        Err(e @ ArchiveError::Io { .. }) | Err(e @ ArchiveError::NoSegments(_)) => {
            return usage_error(e);
        }
    };
    match result {
        Ok(summary) => {
            if json {
                print_json(&serde_json::json!({ "ok": true, "path": path, "summary": summary }));
            } else {
                print!("{}", summary_text(path, &summary));
            }
            ExitCode::SUCCESS
        }
        Err((failure, partial)) => {
            if json {
                print_json(&serde_json::json!({
                    "ok": false, "path": path, "failure": failure, "verified_before": partial,
                }));
            } else {
                print!("{}", failure_text(path, &failure, &partial));
            }
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `12345678` → `12,345,678`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn summary_text(path: &std::path::Path, s: &Summary) -> String {
    let mut out = String::new();
    let secs = s.elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        (s.entries as f64 / secs) as u64
    } else {
        0
    };
    let _ = writeln!(out, "OK: archive {} verifies", path.display());
    if let Some(r) = &s.region {
        let _ = writeln!(out, "  region    {r}");
    }
    if s.segments == 0 {
        let _ = writeln!(
            out,
            "  source    live log ({} bytes read)",
            grouped(s.bytes)
        );
    } else {
        let _ = writeln!(
            out,
            "  segments  {} ({} bytes)",
            s.segments,
            grouped(s.bytes)
        );
    }
    let range = match (s.first_seq, s.last_seq) {
        (Some(a), Some(b)) => format!("seq {a}..={b}"),
        _ => "none".into(),
    };
    let origin = if s.from_genesis {
        "from genesis".to_string()
    } else {
        format!(
            "anchored at seq {}: earlier entries not in this archive",
            s.first_seq.unwrap_or(0)
        )
    };
    let _ = writeln!(
        out,
        "  entries   {} ({range}, {origin})",
        grouped(s.entries)
    );
    let _ = writeln!(
        out,
        "  charges   {} spend events, {} settled",
        grouped(s.events),
        s.settled
    );
    let kinds: Vec<String> = s
        .kinds
        .iter()
        .map(|(k, n)| format!("{} {}", k.name(), grouped(*n)))
        .collect();
    let _ = writeln!(out, "  kinds     {}", kinds.join(", "));
    let _ = writeln!(out, "  head      {}", s.head_hash.as_deref().unwrap_or("-"));
    let _ = writeln!(
        out,
        "  took      {} ms ({} entries/s)",
        s.elapsed.as_millis(),
        grouped(rate)
    );
    out
}

fn failure_text(path: &std::path::Path, f: &Failure, partial: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "FAILED: archive {} does not verify", path.display());
    match f.seq {
        Some(seq) => {
            let _ = writeln!(out, "  first bad entry  seq {seq}");
        }
        None => {
            let _ = writeln!(out, "  first bad entry  (before any entry of the segment)");
        }
    }
    if !f.segment.is_empty() {
        let _ = writeln!(out, "  where            {} at byte {}", f.segment, f.offset);
    }
    let _ = writeln!(out, "  reason           {}", f.reason);
    let _ = writeln!(
        out,
        "  verified before  {} entries in {} segments",
        grouped(partial.entries),
        partial.segments
    );
    out
}

fn prove(
    path: &std::path::Path,
    which: &ChargeRef,
    head_seq: Option<u64>,
    output: Option<PathBuf>,
) -> ExitCode {
    let mut proofs = match proof::prove(path, which, head_seq) {
        Ok(p) => p,
        Err(ProveError::Archive(e)) => return usage_error(e),
        Err(e) => {
            eprintln!("budgetctl: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    if proofs.len() > 1 {
        eprintln!(
            "budgetctl: {} charges {which} (the exchange reused its ids); prove one with --bid:",
            proofs.len()
        );
        for p in &proofs {
            let lease = p.lease().map_or(0, |l| l.0);
            eprintln!(
                "  --bid {lease}.{}   {} at entry {}",
                p.event.bid, p.event.amount, p.entry_seq
            );
        }
        return ExitCode::from(EXIT_FAILED);
    }
    let proof = proofs.remove(0);
    // Serialising a proof cannot fail: it holds strings, numbers and arrays only.
    let text = serde_json::to_string_pretty(&proof).unwrap_or_default() + "\n";
    match output {
        Some(file) => {
            if let Err(e) = std::fs::write(&file, text) {
                return usage_error(format!("{}: {e}", file.display()));
            }
            eprintln!(
                "wrote proof of the charge {which} ({}, bid {}; entry {}, head seq {} {}) to {}",
                proof.event.key,
                proof.event.bid,
                proof.entry_seq,
                proof.head_seq,
                hex::encode(proof.head_hash),
                file.display()
            );
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}

fn check_proof(file: &std::path::Path, head: &Hash, json: bool) -> ExitCode {
    let text = if file.as_os_str() == "-" {
        let mut s = String::new();
        match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            Ok(_) => s,
            Err(e) => return usage_error(format!("standard input: {e}")),
        }
    } else {
        match std::fs::read_to_string(file) {
            Ok(s) => s,
            Err(e) => return usage_error(format!("{}: {e}", file.display())),
        }
    };
    let parsed: InclusionProof = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(e) => return usage_error(format!("{}: not a proof: {e}", file.display())),
    };
    match proof::check(&parsed, head) {
        Ok(charge) => {
            if json {
                print_json(&serde_json::json!({ "ok": true, "charge": charge }));
            } else {
                println!(
                    "OK: charge {} of {} for bid {}.{} is in region {}'s log at entry {}, under head {} at seq {}",
                    charge.event.key,
                    charge.event.amount,
                    charge.lease.0,
                    charge.event.bid,
                    charge.region,
                    charge.entry_seq,
                    hex::encode(charge.head_hash),
                    charge.head_seq
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                print_json(&serde_json::json!({ "ok": false, "error": e.to_string() }));
            } else {
                println!("FAILED: {e}");
            }
            ExitCode::from(EXIT_FAILED)
        }
    }
}

async fn audit_client(
    endpoint: &str,
) -> Result<shared::proto::v1::audit_client::AuditClient<tonic::transport::Channel>, String> {
    Ok(
        shared::proto::v1::audit_client::AuditClient::new(super::connect(endpoint).await?)
            .max_decoding_message_size(64 << 20),
    )
}

fn rt() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
}

fn head(endpoint: &str, json: bool) -> ExitCode {
    let Some(rt) = rt() else {
        return usage_error("cannot start a runtime");
    };
    let result = rt.block_on(async {
        let mut c = audit_client(endpoint).await?;
        c.head(shared::proto::v1::HeadRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    });
    match result {
        Ok(h) if h.hash.is_empty() => {
            println!("region {}: the financial log is empty", h.region);
            ExitCode::SUCCESS
        }
        Ok(h) => {
            if json {
                print_json(
                    &serde_json::json!({"region": h.region, "seq": h.seq, "hash": hex::encode(&h.hash), "raft_index": h.raft_index}),
                );
            } else {
                println!(
                    "region {} log head: seq {} hash {} (raft index {})",
                    h.region,
                    h.seq,
                    hex::encode(&h.hash),
                    h.raft_index
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => usage_error(e),
    }
}

/// Records read per `ReadLog` call.
const LIVE_CHUNK: u64 = 10_000;

fn verify_live(endpoint: &str, expect_head: Option<&Hash>, json: bool) -> ExitCode {
    let Some(rt) = rt() else {
        return usage_error("cannot start a runtime");
    };
    let source = format!("live log at {endpoint}");
    let outcome: Result<Result<Summary, (Failure, Summary)>, String> = rt.block_on(async {
        let mut c = audit_client(endpoint).await?;
        let head = c
            .head(shared::proto::v1::HeadRequest {})
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        let region: shared::RegionId = head
            .region
            .parse()
            .map_err(|e| format!("the coordinator names region {:?}: {e}", head.region))?;
        let mut v = shared::log::Verifier::new();
        let mut next = 0u64;
        let wanted = if head.hash.is_empty() {
            0
        } else {
            head.seq + 1
        };
        while next < wanted {
            let req = shared::proto::v1::ReadLogRequest {
                from_seq: next,
                max_records: LIVE_CHUNK.min(wanted - next),
            };
            let mut stream = c
                .read_log(req)
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            let before = next;
            while let Some(rec) = stream
                .message()
                .await
                .map_err(|s| s.message().to_string())?
            {
                if let Err(f) = v.live_record(&source, &region, &rec.record) {
                    return Ok(Err((f, v.summary())));
                }
                next += 1;
            }
            if next == before {
                break;
            }
        }
        if next < wanted {
            let f = Failure {
                segment: source.clone(),
                offset: 0,
                seq: Some(next),
                reason: shared::log::Reason::Truncated {
                    detail: format!(
                        "the coordinator reports head seq {} but served only {next} records",
                        head.seq
                    ),
                },
            };
            return Ok(Err((f, v.summary())));
        }
        // The chain must end at the head the coordinator reports, and at the expected one.
        let reported: Option<Hash> = head.hash.as_slice().try_into().ok();
        if let Some(reported) = reported
            && reported != v.head()
        {
            let f = Failure {
                segment: source.clone(),
                offset: 0,
                seq: Some(head.seq),
                reason: shared::log::Reason::Head {
                    expected: reported,
                    found: v.head(),
                },
            };
            return Ok(Err((f, v.summary())));
        }
        let partial = v.summary();
        Ok(v.finish(expect_head).map_err(|f| (f, partial)))
    });
    let path = std::path::PathBuf::from(&source);
    match outcome {
        Err(e) => usage_error(e),
        Ok(Ok(summary)) => {
            if json {
                print_json(&serde_json::json!({ "ok": true, "path": source, "summary": summary }));
            } else {
                print!("{}", summary_text(&path, &summary));
            }
            ExitCode::SUCCESS
        }
        Ok(Err((failure, partial))) => {
            if json {
                print_json(
                    &serde_json::json!({ "ok": false, "path": source, "failure": failure, "verified_before": partial }),
                );
            } else {
                print!("{}", failure_text(&path, &failure, &partial));
            }
            ExitCode::from(EXIT_FAILED)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        for (n, s) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(grouped(n), s);
        }
    }
}
