//! `budgetctl audit …`: verification of archives and proofs of single charges.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use shared::EventKey;
use shared::log::proof::{self, ChargeRef, InclusionProof, ProveError};
use shared::log::signed::{CheckedHead, HEAD_EXT, SignedHead};
use shared::log::verify::{ArchiveError, Failure, Summary, verify_path_observed};
use shared::log::{Hash, parse_hash};

use super::{EXIT_FAILED, EXIT_USAGE, connection_ca};

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Verify a log archive: every segment, entry, hash link, Merkle root and trailer.
    ///
    /// Exit 0 and a summary if it verifies; exit 1 and the first bad entry (seq, file, byte
    /// offset, reason) if it does not; exit 2 if it cannot be read.
    ///
    /// With --ca, also checks every signed head: the `*.head` files beside the segments (each
    /// sealed segment's, written by the coordinator that sealed it) and those given with
    /// --signed-head. Each must be signed by a coordinator of the archive's region whose
    /// certificate the CA issued, and name an entry of the archive with that entry's hash.
    /// Without a signed or otherwise trusted head, a verified archive is only consistent: its
    /// hashes are unkeyed, and whoever can write it can rewrite it (LOG_FORMAT.md §6.4).
    Verify {
        #[command(flatten)]
        offline: super::OfflineCa,
        /// A directory of sealed segments (*.seg), one segment file, or a coordinator's data
        /// directory (its `segments/`). (`audit verify-live` verifies a running region's log.)
        path: PathBuf,
        /// Also require the archive's last entry to have this hash (64 hex digits), for example a
        /// head published earlier.
        #[arg(long, value_name = "HASH", value_parser = hash_arg)]
        expect_head: Option<Hash>,
        /// The deployment's CA certificate (PEM): check signed heads against it.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// A signed head (from `audit head --signed`) the archive must contain; repeatable.
        /// Needs --ca.
        #[arg(long, value_name = "FILE", requires = "ca")]
        signed_head: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check signed log heads (LOG_FORMAT.md §9) against the deployment's CA, and that no two
    /// of them show one region's log two ways (same seq, different hash). Offline.
    ///
    /// Exit 0 if every head checks and none conflicts; 1 if one does not check or two
    /// conflict; 2 if a file cannot be read.
    CheckHead {
        #[command(flatten)]
        offline: super::OfflineCa,
        /// Signed head files (`audit head --signed`, or the `*.head` files of an archive).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The deployment's CA certificate (PEM).
        #[arg(long, value_name = "FILE", required = true)]
        ca: PathBuf,
        /// Print JSON.
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
    ///
    /// With --signed, the head signed by that coordinator with its TLS key (JSON, LOG_FORMAT.md
    /// §9), checked against --ca before it is printed or written: keep it, publish it, compare
    /// it with others' with `audit check-head`, and hold archives and proofs to it with
    /// --signed-head.
    Head {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Ask for a signed head (the coordinator must run with TLS).
        #[arg(long)]
        signed: bool,
        /// With --signed: write it to this file instead of standard output.
        #[arg(long, short, value_name = "FILE", requires = "signed")]
        output: Option<PathBuf>,
    },
    /// Check a proof made by `audit prove` against a head you trust. Offline.
    ///
    /// Against a head hash (--head), the proof's region is only claimed: no hash covers it.
    /// Against a signed head (--signed-head with --ca), the region is bound too.
    ///
    /// Exit 0 if the proof leads from the charge to that head, 1 if it does not, 2 if a file
    /// cannot be read or is not a proof.
    #[command(group(clap::ArgGroup::new("trusted").required(true).args(["head", "signed_head"])))]
    CheckProof {
        #[command(flatten)]
        offline: super::OfflineCa,
        /// The proof file (JSON); `-` reads standard input.
        proof: PathBuf,
        /// The head hash you trust (64 hex digits), for example from `audit verify` or a
        /// published head.
        #[arg(long, value_name = "HASH", value_parser = hash_arg)]
        head: Option<Hash>,
        /// A signed head (`audit head --signed`): binds the proof's region, seq and head.
        #[arg(long, value_name = "FILE", requires = "ca")]
        signed_head: Option<PathBuf>,
        /// The deployment's CA certificate (PEM), to check the signed head.
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
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
            ca,
            signed_head,
            json,
            ..
        } => verify(
            &archive_dir(path),
            expect_head.as_ref(),
            ca.as_deref(),
            &signed_head,
            json,
        ),
        AuditCommand::CheckHead {
            files, ca, json, ..
        } => check_heads(&files, &ca, json),
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
        AuditCommand::Head {
            json,
            signed,
            output,
        } => {
            if signed {
                signed_head(endpoint, output.as_deref())
            } else {
                head(endpoint, json)
            }
        }
        AuditCommand::CheckProof {
            proof,
            head,
            signed_head,
            ca,
            json,
            ..
        } => {
            let trusted = match (head, signed_head, ca) {
                (Some(h), None, _) => Trusted::Hash(h),
                (None, Some(file), Some(ca)) => match read_checked_head(&file, &ca) {
                    Ok(Ok(h)) => Trusted::Signed(Box::new(h)),
                    Ok(Err(e)) => {
                        if json {
                            print_json(&serde_json::json!({ "ok": false, "error": e }));
                        } else {
                            println!("FAILED: {e}");
                        }
                        return ExitCode::from(EXIT_FAILED);
                    }
                    Err(e) => return usage_error(e),
                },
                _ => return usage_error("give --head HASH, or --signed-head FILE with --ca FILE"),
            };
            check_proof(&proof, &trusted, json)
        }
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

/// A signed head file that cannot be used: `Err` outside (cannot be read or is not a signed
/// head: a usage error, exit 2), `Ok(Err)` inside (does not check: exit 1).
fn read_checked_head(
    file: &std::path::Path,
    ca: &std::path::Path,
) -> Result<Result<CheckedHead, String>, String> {
    let ca_pem = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let head = SignedHead::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(head
        .check(&ca_pem)
        .map_err(|e| format!("signed head {}: {e}", file.display())))
}

/// The signed heads beside the segments of an archive directory (`*.head`), by name.
fn head_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == HEAD_EXT) && p.is_file())
        .collect();
    out.sort();
    out
}

fn verify(
    path: &std::path::Path,
    expect_head: Option<&Hash>,
    ca: Option<&std::path::Path>,
    signed: &[PathBuf],
    json: bool,
) -> ExitCode {
    // The signed heads to hold the archive to: given ones, and with --ca the archive's own.
    let mut heads: Vec<(PathBuf, CheckedHead)> = Vec::new();
    let mut unchecked_heads = 0usize;
    let own = if path.is_dir() {
        head_files(path)
    } else {
        Vec::new()
    };
    let mut bad_head: Option<String> = None;
    match ca {
        Some(ca) => {
            for f in signed.iter().chain(&own) {
                match read_checked_head(f, ca) {
                    Ok(Ok(h)) => heads.push((f.clone(), h)),
                    Ok(Err(e)) => {
                        bad_head.get_or_insert(e);
                    }
                    Err(e) => return usage_error(e),
                }
            }
        }
        None => unchecked_heads = own.len(),
    }
    // Long verifications show progress on a terminal (never in pipes, files or --json runs).
    let progress = !json && std::io::stderr().is_terminal();
    let mut seen = 0u64;
    let wanted: std::collections::BTreeSet<u64> = heads.iter().map(|(_, h)| h.head.seq).collect();
    let mut found: std::collections::BTreeMap<u64, Hash> = std::collections::BTreeMap::new();
    let mut observe = |v: &shared::log::verify::Verified<'_>| {
        seen += 1;
        if wanted.contains(&v.seq) {
            found.insert(v.seq, *v.hash);
        }
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
            // Every signed head must name an entry of this archive, with its hash.
            let mismatch = bad_head.or_else(|| {
                heads.iter().find_map(|(f, h)| {
                    let h = &h.head;
                    let f = f.display();
                    if summary.region.as_ref() != Some(&h.region) {
                        return Some(format!(
                            "signed head {f} is region {}'s; the archive is region {}'s",
                            h.region,
                            summary
                                .region
                                .as_ref()
                                .map_or("?".into(), |r| r.to_string())
                        ));
                    }
                    match found.get(&h.seq) {
                        Some(x) if *x == h.head_hash => None,
                        Some(x) => Some(format!(
                            "signed head {f}: entry {} has hash {}, the region signed {}: \
                             the archive is not the log the region signed",
                            h.seq,
                            hex::encode(x),
                            hex::encode(h.head_hash)
                        )),
                        None => Some(format!(
                            "signed head {f}: entry {} is not in the archive (seq {}..={})",
                            h.seq,
                            summary.first_seq.map_or("-".into(), |s| s.to_string()),
                            summary.last_seq.map_or("-".into(), |s| s.to_string())
                        )),
                    }
                })
            });
            let conflicting = {
                let checked: Vec<CheckedHead> = heads.iter().map(|(_, h)| h.clone()).collect();
                shared::log::signed::conflict(&checked).map(|(a, b)| {
                    format!(
                        "two signed heads of region {} at seq {} differ ({} and {})",
                        a.head.region,
                        a.head.seq,
                        hex::encode(a.head.head_hash),
                        hex::encode(b.head.head_hash)
                    )
                })
            };
            if let Some(why) = mismatch.or(conflicting) {
                if json {
                    print_json(&serde_json::json!({
                        "ok": false, "path": path,
                        "failure": {"reason": "signed_head", "detail": why},
                        "verified_before": summary,
                    }));
                } else {
                    println!("FAILED: archive {} verifies, but {why}", path.display());
                }
                return ExitCode::from(EXIT_FAILED);
            }
            let signers: Vec<serde_json::Value> = heads
                .iter()
                .map(|(f, h)| serde_json::json!({"file": f, "seq": h.head.seq, "signer": h.signer}))
                .collect();
            if json {
                print_json(&serde_json::json!({
                    "ok": true, "path": path, "summary": summary,
                    "signed_heads": signers, "signed_heads_unchecked": unchecked_heads,
                }));
            } else {
                print!("{}", summary_text(path, &summary));
                if !heads.is_empty() {
                    let last = heads.iter().map(|(_, h)| h.head.seq).max().unwrap_or(0);
                    println!(
                        "  signed    {} signed heads check against the CA (the last at seq {last})",
                        heads.len()
                    );
                } else if unchecked_heads > 0 {
                    println!(
                        "  signed    {unchecked_heads} signed heads not checked: give --ca to \
                         check them"
                    );
                } else {
                    println!(
                        "  signed    none: consistent, but not tied to a head the region signed"
                    );
                }
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

fn check_heads(files: &[PathBuf], ca: &std::path::Path, json: bool) -> ExitCode {
    let mut checked = Vec::new();
    let mut bad = Vec::new();
    for f in files {
        match read_checked_head(f, ca) {
            Ok(Ok(h)) => checked.push((f.clone(), h)),
            Ok(Err(e)) => bad.push(e),
            Err(e) => return usage_error(e),
        }
    }
    let heads: Vec<CheckedHead> = checked.iter().map(|(_, h)| h.clone()).collect();
    let conflict = shared::log::signed::conflict(&heads).map(|(a, b)| {
        format!(
            "CONFLICT: region {} signed two different logs: seq {} is {} in one head and {} in \
             another",
            a.head.region,
            a.head.seq,
            hex::encode(a.head.head_hash),
            hex::encode(b.head.head_hash)
        )
    });
    let ok = bad.is_empty() && conflict.is_none();
    if json {
        let list: Vec<serde_json::Value> = checked
            .iter()
            .map(|(f, h)| {
                serde_json::json!({
                    "file": f, "region": h.head.region, "seq": h.head.seq,
                    "head_hash": hex::encode(h.head.head_hash), "time_us": h.head.time_us,
                    "signer": h.signer,
                })
            })
            .collect();
        print_json(&serde_json::json!({
            "ok": ok, "checked": list, "invalid": bad, "conflict": conflict,
        }));
    } else {
        for (f, h) in &checked {
            println!(
                "OK: {}: region {} seq {} head {} signed by {}",
                f.display(),
                h.head.region,
                h.head.seq,
                hex::encode(h.head.head_hash),
                h.signer
            );
        }
        for e in &bad {
            println!("FAILED: {e}");
        }
        if let Some(c) = &conflict {
            println!("{c}");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

fn signed_head(endpoint: &str, output: Option<&std::path::Path>) -> ExitCode {
    let Some(rt) = rt() else {
        return usage_error("cannot start a runtime");
    };
    let result = rt.block_on(async {
        let mut c = audit_client(endpoint).await?;
        c.signed_head(shared::proto::v1::HeadRequest {})
            .await
            .map(|r| r.into_inner().json)
            .map_err(|s| s.message().to_string())
    });
    let text = match result {
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    // Checked before it is kept: against the CA this connection trusts.
    let checked = match connection_ca() {
        Some(ca) => {
            let ca_pem = match std::fs::read(&ca) {
                Ok(p) => p,
                Err(e) => return usage_error(format!("--ca {}: {e}", ca.display())),
            };
            match SignedHead::parse(&text).and_then(|h| h.check(&ca_pem)) {
                Ok(h) => Some(h),
                Err(e) => {
                    eprintln!("budgetctl: the coordinator's signed head does not check: {e}");
                    return ExitCode::from(EXIT_FAILED);
                }
            }
        }
        None => None,
    };
    let about = checked.map(|h| {
        format!(
            "region {} seq {} head {} signed by {}",
            h.head.region,
            h.head.seq,
            hex::encode(h.head.head_hash),
            h.signer
        )
    });
    match output {
        Some(path) => match std::fs::write(path, text + "\n") {
            Ok(()) => {
                match about {
                    Some(a) => println!("{a}: checked, written to {}", path.display()),
                    None => println!(
                        "signed head written to {} (not checked: no --ca)",
                        path.display()
                    ),
                }
                ExitCode::SUCCESS
            }
            Err(e) => usage_error(format!("{}: {e}", path.display())),
        },
        None => {
            println!("{text}");
            if let Some(a) = about {
                eprintln!("{a}: checked");
            }
            ExitCode::SUCCESS
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

/// What a proof is checked against.
enum Trusted {
    /// A head hash: binds the charge and the chain, not the region.
    Hash(Hash),
    /// A signed head that checked: binds the region too.
    Signed(Box<CheckedHead>),
}

fn check_proof(file: &std::path::Path, trusted: &Trusted, json: bool) -> ExitCode {
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
    let head = match trusted {
        Trusted::Hash(h) => *h,
        Trusted::Signed(h) => h.head.head_hash,
    };
    let checked = proof::check(&parsed, &head)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            // A signed head binds what a hash cannot: the region, and the seq of the head.
            if let Trusted::Signed(h) = trusted {
                if c.region != h.head.region {
                    return Err(format!(
                        "the proof says region {}, the signed head is region {}'s",
                        c.region, h.head.region
                    ));
                }
                if c.head_seq != h.head.seq {
                    return Err(format!(
                        "the proof leads to seq {}, the signed head is at seq {}",
                        c.head_seq, h.head.seq
                    ));
                }
            }
            Ok(c)
        });
    let bound = matches!(trusted, Trusted::Signed(_));
    match checked {
        Ok(charge) => {
            if json {
                let mut v = serde_json::to_value(&charge).unwrap_or_default();
                v["region_bound"] = bound.into();
                print_json(&serde_json::json!({ "ok": true, "charge": v }));
            } else {
                let region = if bound {
                    format!("is in region {}'s log", charge.region)
                } else {
                    format!(
                        "is in the log (region {} as the proof claims: a head hash does not bind \
                         a region; check against a signed head to bind it)",
                        charge.region
                    )
                };
                println!(
                    "OK: charge {} of {} for bid {}.{} {region} at entry {}, under head {} at seq {}",
                    charge.event.key,
                    charge.event.amount,
                    charge.lease.0,
                    charge.event.bid,
                    charge.entry_seq,
                    hex::encode(charge.head_hash),
                    charge.head_seq
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if json {
                print_json(&serde_json::json!({ "ok": false, "error": e }));
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
