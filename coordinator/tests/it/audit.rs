//! `budgetctl audit …` on the sample archive and on damaged copies of it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sample() -> PathBuf {
    repo().join("testdata/sample-archive")
}

fn budgetctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_budgetctl"))
        .args(args)
        .output()
        .expect("budgetctl runs")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// A copy of the sample archive in a fresh temporary directory.
fn copy_sample() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(sample()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn head_of_sample() -> String {
    let o = budgetctl(&["audit", "verify", "--json", sample().to_str().unwrap()]);
    json(&o)["summary"]["head_hash"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_sample_archive_verifies() {
    let o = budgetctl(&["audit", "verify", sample().to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("OK: archive"), "{out}");
    assert!(
        out.contains("entries   10,500 (seq 0..=10499, from genesis)"),
        "{out}"
    );
    assert!(out.lines().count() <= 12, "more than a screen:\n{out}");
    let j = json(&budgetctl(&[
        "audit",
        "verify",
        "--json",
        sample().to_str().unwrap(),
    ]));
    assert_eq!(j["ok"], true);
    assert_eq!(j["summary"]["entries"], 10_500);
    assert_eq!(j["summary"]["region"], "eu-1");
    assert!(out.contains(j["summary"]["head_hash"].as_str().unwrap()));
}

#[test]
fn a_flipped_byte_fails_with_the_entry_named() {
    let dir = copy_sample();
    let seg = &segments(dir.path())[1];
    let mut bytes = std::fs::read(seg).unwrap();
    // Byte 500,000 of the second segment: inside some record. Find which with --json.
    bytes[500_000] ^= 0x04;
    std::fs::write(seg, &bytes).unwrap();
    let o = budgetctl(&["audit", "verify", "--json", dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    let j = json(&o);
    assert_eq!(j["ok"], false);
    let seq = j["failure"]["seq"].as_u64().unwrap();
    let first_of_segment: u64 = seg
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seq > first_of_segment, "seq {seq}");
    assert_eq!(
        j["failure"]["segment"],
        seg.file_name().unwrap().to_str().unwrap()
    );
    assert_eq!(
        j["verified_before"]["entries"].as_u64().unwrap(),
        seq,
        "every entry before it verified"
    );
    // The head of what did verify (LOG_FORMAT.md §6.6): the entry just before the bad one.
    assert_eq!(j["verified_before"]["last_seq"].as_u64().unwrap(), seq - 1);
    let head = j["verified_before"]["head_hash"].as_str().unwrap();
    assert!(
        shared::log::parse_hash(head).is_ok() && head == head.to_lowercase(),
        "{head}"
    );
    let text = stdout(&budgetctl(&[
        "audit",
        "verify",
        dir.path().to_str().unwrap(),
    ]));
    assert!(text.starts_with("FAILED"), "{text}");
    assert!(text.contains(&format!("seq {seq}")), "{text}");
}

#[test]
fn a_truncated_archive_says_truncated() {
    let dir = copy_sample();
    let last = segments(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() - 1000]).unwrap();
    let o = budgetctl(&["audit", "verify", "--json", dir.path().to_str().unwrap()]);
    assert_eq!(code(&o), 1);
    assert_eq!(json(&o)["failure"]["reason"], "truncated");
}

#[test]
fn the_expected_head_is_checked() {
    let head = head_of_sample();
    let path = sample();
    let p = path.to_str().unwrap();
    assert_eq!(
        code(&budgetctl(&["audit", "verify", p, "--expect-head", &head])),
        0
    );
    let mut other = head.clone().into_bytes();
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    let other = String::from_utf8(other).unwrap();
    let o = budgetctl(&["audit", "verify", p, "--expect-head", &other]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("head mismatch"), "{}", stdout(&o));
}

#[test]
fn usage_and_io_errors_exit_2_with_a_message() {
    let o = budgetctl(&["audit", "verify", "/no/such/archive"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("/no/such/archive"), "{}", stderr(&o));
    let empty = tempfile::tempdir().unwrap();
    let o = budgetctl(&["audit", "verify", empty.path().to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("no segment files"), "{}", stderr(&o));
    let o = budgetctl(&[
        "audit",
        "verify",
        sample().to_str().unwrap(),
        "--expect-head",
        "xyz",
    ]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("not a hash"), "{}", stderr(&o));
    let o = budgetctl(&[
        "audit",
        "prove",
        sample().to_str().unwrap(),
        "--event",
        "adx-only",
    ]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("EXCHANGE/AUCTION/IMP"),
        "{}",
        stderr(&o)
    );
    assert_eq!(code(&budgetctl(&["audit", "frobnicate"])), 2);
    let help = stdout(&budgetctl(&["audit", "--help"]));
    for cmd in ["verify", "prove", "check-proof"] {
        assert!(help.contains(cmd), "{help}");
    }
}

/// A charge from the sample archive, found through the JSON proof of a known-good run.
fn some_charge() -> String {
    let segs = segments(&sample());
    let bytes = std::fs::read(&segs[0]).unwrap();
    // Event keys in the sample are adx/openx/magnite/pubmatic, a UUID auction id and imp 1..4;
    // pick the first UUID-looking auction id after an "adx" exchange string.
    let needle = b"\x00\x03adx\x00\x24";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("an adx event");
    let auction = std::str::from_utf8(&bytes[at + needle.len()..at + needle.len() + 36]).unwrap();
    let imp_len =
        u16::from_be_bytes([bytes[at + needle.len() + 36], bytes[at + needle.len() + 37]]) as usize;
    let imp = std::str::from_utf8(&bytes[at + needle.len() + 38..at + needle.len() + 38 + imp_len])
        .unwrap();
    format!("adx/{auction}/{imp}")
}

#[test]
fn prove_then_check_proof() {
    let head = head_of_sample();
    let event = some_charge();
    let dir = tempfile::tempdir().unwrap();
    let proof = dir.path().join("proof.json");
    let o = budgetctl(&[
        "audit",
        "prove",
        sample().to_str().unwrap(),
        "--event",
        &event,
        "-o",
        proof.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let p: Value = serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    assert_eq!(p["format"], "budget-log-inclusion-proof/v1");
    assert_eq!(p["head_hash"], head.as_str());
    let o = budgetctl(&[
        "audit",
        "check-proof",
        proof.to_str().unwrap(),
        "--head",
        &head,
    ]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).starts_with(&format!("OK: charge {event}")),
        "{}",
        stdout(&o)
    );
    // Against another head: refused.
    let other = "00".repeat(32);
    let o = budgetctl(&[
        "audit",
        "check-proof",
        proof.to_str().unwrap(),
        "--head",
        &other,
        "--json",
    ]);
    assert_eq!(code(&o), 1);
    assert_eq!(json(&o)["ok"], false);
    // A tampered amount: refused.
    let mut tampered = p.clone();
    tampered["event"]["amount"] = Value::from(p["event"]["amount"].as_i64().unwrap() + 1);
    std::fs::write(&proof, tampered.to_string()).unwrap();
    assert_eq!(
        code(&budgetctl(&[
            "audit",
            "check-proof",
            proof.to_str().unwrap(),
            "--head",
            &head
        ])),
        1
    );
    // Not a proof at all: a usage error.
    std::fs::write(&proof, "{\"hello\": 1}").unwrap();
    assert_eq!(
        code(&budgetctl(&[
            "audit",
            "check-proof",
            proof.to_str().unwrap(),
            "--head",
            &head
        ])),
        2
    );
    // A charge that is not there.
    let o = budgetctl(&[
        "audit",
        "prove",
        sample().to_str().unwrap(),
        "--event",
        "adx/nope/1",
    ]);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("no charge with exchange ids adx/nope/1"),
        "{}",
        stderr(&o)
    );
}

/// Exchanges reuse their ids: asked by them, `audit prove` lists every charge that carries
/// them by our bid id and writes nothing; asked by one of those bid ids, it proves that one.
#[test]
fn prove_by_exchange_ids_lists_every_bid_that_carries_them() {
    let sample_cfg = shared::log::sample::SampleConfig::default();
    let reused = shared::log::sample::generate(&sample_cfg)
        .unwrap()
        .reused_ids;
    let (lease, bid, key) = reused.first().cloned().expect("the sample reuses ids");
    let dir = tempfile::tempdir().unwrap();
    let proof = dir.path().join("proof.json");
    let o = budgetctl(&[
        "audit",
        "prove",
        sample().to_str().unwrap(),
        "--event",
        &key.to_string(),
        "-o",
        proof.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let listed: Vec<&str> = stderr(&o)
        .leak()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--bid "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(listed.len() >= 2, "{listed:?}");
    let mine = format!("{}.{bid}", lease.0);
    assert!(listed.contains(&mine.as_str()), "{mine} not in {listed:?}");
    assert!(!proof.exists(), "no proof is written until --bid picks one");
    let head = head_of_sample();
    for b in &listed {
        let o = budgetctl(&[
            "audit",
            "prove",
            sample().to_str().unwrap(),
            "--bid",
            b,
            "-o",
            proof.to_str().unwrap(),
        ]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let o = budgetctl(&[
            "audit",
            "check-proof",
            proof.to_str().unwrap(),
            "--head",
            &head,
        ]);
        assert_eq!(code(&o), 0, "{}", stdout(&o));
        let (l, n) = b.split_once('.').unwrap();
        assert!(
            stdout(&o).contains(&format!("for bid {l}.{n} "))
                && stdout(&o).contains(&key.to_string()),
            "{}",
            stdout(&o)
        );
    }
    // A bid id that is not one: a usage error naming the form.
    let o = budgetctl(&["audit", "prove", sample().to_str().unwrap(), "--bid", "12"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("LEASE.BID"), "{}", stderr(&o));
}

#[test]
fn the_coordinator_binary_explains_itself_and_refuses_bad_settings() {
    let bin = env!("CARGO_BIN_EXE_coordinator");
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert_eq!(code(&out), 0);
    for flag in [
        "--config",
        "--node-id",
        "--listen",
        "--data-dir",
        "--init",
        "--metrics-listen",
        "--print-config",
    ] {
        assert!(stdout(&out).contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(bin)
        .args(["--print-config", "--node-id", "2", "--region", "eu-1"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    assert!(stdout(&out).contains("node_id: 2"), "{}", stdout(&out));
    let out = Command::new(bin)
        .args(["--config", "/no/such/file.toml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("/no/such/file.toml"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(bin)
        .args([
            "--init",
            "1=127.0.0.1:7001",
            "--node-id",
            "2",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("does not include this node"),
        "{}",
        stderr(&out)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "regoin = \"eu-1\"\n").unwrap();
    let out = Command::new(bin)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("regoin"), "{}", stderr(&out));
}

/// A CA, and a coordinator certificate of `region` from it, written to `dir`: (ca, cert, key).
fn pki_in(dir: &Path, region: &str) -> (PathBuf, PathBuf, PathBuf) {
    use shared::tls::{Authority, Role, Validity};
    let ca_file = dir.join("ca.pem");
    let ca = if ca_file.exists() {
        Authority::load(
            &std::fs::read_to_string(&ca_file).unwrap(),
            &std::fs::read_to_string(dir.join("ca.key")).unwrap(),
        )
        .unwrap()
    } else {
        let ca = Authority::create("test CA", Validity::days(30).unwrap()).unwrap();
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        std::fs::write(dir.join("ca.key"), ca.key_pem()).unwrap();
        ca
    };
    let name = format!("{region}-coordinator-1");
    let issued = ca
        .issue(
            Role::Coordinator,
            &name,
            Some(region),
            &["127.0.0.1".into()],
            Validity::days(30).unwrap(),
        )
        .unwrap();
    let (cert, key) = issued.write_to(dir, &name).unwrap();
    (ca_file, cert, key)
}

/// A head of `region`'s log at (seq, hash), signed with `cert`/`key`, written to `file`.
fn sign_head(cert: &Path, key: &Path, region: &str, seq: u64, hash: &str, file: &Path) {
    let signer = shared::log::signed::HeadSigner::from_pem(
        &std::fs::read_to_string(cert).unwrap(),
        &std::fs::read_to_string(key).unwrap(),
        &region.parse().unwrap(),
    )
    .unwrap();
    let h = signer
        .sign(
            seq,
            &shared::log::parse_hash(hash).unwrap(),
            1_793_491_200_000_000,
        )
        .unwrap();
    std::fs::write(file, serde_json::to_string_pretty(&h).unwrap()).unwrap();
}

/// LOG_FORMAT.md §7 and §9: a head hash does not bind a proof's region, a signed head does;
/// archives are held to signed heads; two signed heads that differ at one seq conflict.
#[test]
fn signed_heads_bind_the_region_of_proofs_and_archives() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = pki_in(dir.path(), "eu-1");
    let summary = json(&budgetctl(&[
        "audit",
        "verify",
        "--json",
        sample().to_str().unwrap(),
    ]));
    let (head, seq) = (
        summary["summary"]["head_hash"]
            .as_str()
            .unwrap()
            .to_string(),
        summary["summary"]["last_seq"].as_u64().unwrap(),
    );
    assert_eq!(summary["summary"]["region"], "eu-1");
    let signed = dir.path().join("eu-1.head.json");
    sign_head(&cert, &key, "eu-1", seq, &head, &signed);
    let (ca_s, signed_s) = (ca.to_str().unwrap(), signed.to_str().unwrap());

    // check-head: valid; edited, refused.
    let o = budgetctl(&["audit", "check-head", signed_s, "--ca", ca_s]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("signed by eu-1-coordinator-1"),
        "{}",
        stdout(&o)
    );
    let mut edited: Value =
        serde_json::from_str(&std::fs::read_to_string(&signed).unwrap()).unwrap();
    edited["region"] = "us-1".into();
    let forged = dir.path().join("forged.json");
    std::fs::write(&forged, edited.to_string()).unwrap();
    let o = budgetctl(&[
        "audit",
        "check-head",
        forged.to_str().unwrap(),
        "--ca",
        ca_s,
    ]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    // Two valid heads of one seq with different hashes: the region showed two logs.
    let other = dir.path().join("other.json");
    sign_head(&cert, &key, "eu-1", seq, &"ab".repeat(32), &other);
    let o = budgetctl(&[
        "audit",
        "check-head",
        signed_s,
        other.to_str().unwrap(),
        "--ca",
        ca_s,
    ]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("CONFLICT"), "{}", stdout(&o));

    // The archive against the signed head: it holds that entry with that hash.
    let o = budgetctl(&[
        "audit",
        "verify",
        sample().to_str().unwrap(),
        "--ca",
        ca_s,
        "--signed-head",
        signed_s,
    ]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("1 signed heads check"),
        "{}",
        stdout(&o)
    );
    let o = budgetctl(&[
        "audit",
        "verify",
        sample().to_str().unwrap(),
        "--ca",
        ca_s,
        "--signed-head",
        other.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert_eq!(json(&o)["failure"]["reason"], "signed_head");
    // `*.head` files in the archive are checked with --ca: a head of another region is refused.
    let copy = copy_sample();
    let (_, us_cert, us_key) = pki_in(dir.path(), "us-1");
    sign_head(
        &us_cert,
        &us_key,
        "us-1",
        seq,
        &head,
        &copy.path().join("x.head"),
    );
    let o = budgetctl(&[
        "audit",
        "verify",
        copy.path().to_str().unwrap(),
        "--ca",
        ca_s,
    ]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(stdout(&o).contains("region us-1's"), "{}", stdout(&o));
    let o = budgetctl(&["audit", "verify", copy.path().to_str().unwrap()]);
    assert_eq!(code(&o), 0);
    assert!(
        stdout(&o).contains("not checked: give --ca"),
        "{}",
        stdout(&o)
    );

    // A proof whose region was edited: a head hash cannot tell, and says the region is only
    // claimed; the signed head refuses it.
    let proof = dir.path().join("proof.json");
    let o = budgetctl(&[
        "audit",
        "prove",
        sample().to_str().unwrap(),
        "--event",
        &some_charge(),
        "-o",
        proof.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = budgetctl(&[
        "audit",
        "check-proof",
        proof.to_str().unwrap(),
        "--signed-head",
        signed_s,
        "--ca",
        ca_s,
        "--json",
    ]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert_eq!(json(&o)["charge"]["region_bound"], true);
    let mut p: Value = serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    p["region"] = "us-1".into();
    std::fs::write(&proof, p.to_string()).unwrap();
    let o = budgetctl(&[
        "audit",
        "check-proof",
        proof.to_str().unwrap(),
        "--head",
        &head,
    ]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("region us-1 as the proof claims"),
        "{}",
        stdout(&o)
    );
    let o = budgetctl(&[
        "audit",
        "check-proof",
        proof.to_str().unwrap(),
        "--signed-head",
        signed_s,
        "--ca",
        ca_s,
    ]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("the proof says region us-1"),
        "{}",
        stdout(&o)
    );
    // --signed-head without --ca is a usage error.
    let o = budgetctl(&[
        "audit",
        "check-proof",
        proof.to_str().unwrap(),
        "--signed-head",
        signed_s,
    ]);
    assert_eq!(code(&o), 2);
}
