//! The verification rules of LOG_FORMAT.md §5–§6, each with a case: an archive (the sample
//! archive with one edit, or a small crafted one) and what a verifier must say of it — the
//! reason code, the segment file and the entry blamed. `testdata/verify-cases.json` holds every
//! case's files or edit and its verdict, for an independent verifier to run; this test checks
//! the reference verifier against the rule each case states, that the file is what this code
//! computes, and that LOG_FORMAT.md names every case. Regenerate the file with
//! `UPDATE_VECTORS=1 cargo test -p shared --test it cases`.

use jiff::civil::date;
use serde_json::{Value, json};
use shared::log::entry::{BudgetSet, DayRetired, LeaseGranted, Received, RemoteMerged, SpendBatch};
use shared::log::segment::{SegmentWriter, segment_file_name};
use shared::log::verify::Verifier;
use shared::log::{Chain, Payload, SpendEvent};
use shared::{BatchId, Bucket, Money, RegionId};

use crate::{Layout, repo, sample_segments};

type Files = Vec<(String, Vec<u8>)>;

/// What a verifier must say of a case.
struct Expect {
    /// `ok`, or the reason code.
    reason: &'static str,
    /// The segment file named (empty for `ok`).
    segment: String,
    /// The entry blamed.
    seq: Option<u64>,
}

struct Case {
    name: &'static str,
    /// The section of LOG_FORMAT.md that states the rule.
    section: &'static str,
    rule: &'static str,
    /// How the archive was made from the sample archive (JSON), or null for a crafted one.
    edit: Value,
    files: Files,
    expect: Expect,
}

fn ok() -> Expect {
    Expect {
        reason: "ok",
        segment: String::new(),
        seq: None,
    }
}

fn fails(reason: &'static str, segment: &str, seq: u64) -> Expect {
    Expect {
        reason,
        segment: segment.to_string(),
        seq: Some(seq),
    }
}

/// A crafted archive: one segment of region `eu-1` holding `payloads` from genesis.
fn crafted(payloads: Vec<Payload>) -> Files {
    let region: RegionId = "eu-1".parse().unwrap();
    let mut chain = Chain::new();
    let mut seg = SegmentWriter::new(&region, 0, chain.head());
    for (i, p) in payloads.into_iter().enumerate() {
        let (entry, _) = chain
            .append(1, 1 + i as u64, 1_793_491_200_000_000, p)
            .unwrap();
        seg.push(&entry).unwrap();
    }
    vec![(segment_file_name(&region, 0), seg.seal().unwrap())]
}

fn m(micros: i64) -> Money {
    Money::from_micros(micros)
}

fn grant(lease: u64) -> Payload {
    Payload::LeaseGranted(LeaseGranted {
        lease: shared::LeaseId(lease),
        edge: "edge-1".parse().unwrap(),
        campaign: "cmp-1".parse().unwrap(),
        buckets: vec![Bucket::Lifetime],
        amount: m(10_000),
        duration_ms: 30_000,
    })
}

fn batch(lease: u64, n: u8, bids: &[u64]) -> Payload {
    Payload::SpendBatch(SpendBatch {
        lease: shared::LeaseId(lease),
        batch: BatchId([n; 16]),
        edge: "edge-1".parse().unwrap(),
        events: bids
            .iter()
            .enumerate()
            .map(|(i, b)| SpendEvent {
                bid: *b,
                key: format!("adx/a-{n}-{i}/1").parse().unwrap(),
                amount: m(100),
            })
            .collect(),
    })
}

fn grant_on(lease: u64, buckets: Vec<Bucket>) -> Payload {
    let Payload::LeaseGranted(mut g) = grant(lease) else {
        unreachable!()
    };
    g.buckets = buckets;
    Payload::LeaseGranted(g)
}

fn merged(remote_seq: u64, buckets: &[Bucket]) -> Payload {
    Payload::RemoteMerged(RemoteMerged {
        from: "us-1".parse().unwrap(),
        remote_seq,
        remote_head: [7; 32],
        received: buckets
            .iter()
            .map(|b| Received {
                campaign: "cmp-1".parse().unwrap(),
                bucket: *b,
                amount: m(1_000),
            })
            .collect(),
    })
}

fn budget_on(day: jiff::civil::Date) -> Payload {
    Payload::BudgetSet(BudgetSet {
        campaign: "cmp-1".parse().unwrap(),
        bucket: Bucket::Day(day),
        before: m(0),
        after: m(1_000),
    })
}

fn retired_on(day: jiff::civil::Date) -> Payload {
    Payload::DayRetired(DayRetired {
        campaign: "cmp-1".parse().unwrap(),
        bucket: Bucket::Day(day),
        budget: m(1_000),
        settled_here: m(600),
        settled_all: m(900),
        lapsed: m(100),
    })
}

fn merged_on(remote_seq: u64, day: jiff::civil::Date) -> Payload {
    merged(remote_seq, &[Bucket::Day(day)])
}

fn cases() -> Vec<Case> {
    let segs = sample_segments();
    let name = |i: usize| segs[i].0.clone();
    let lay: Vec<Layout> = segs.iter().map(|(_, b)| Layout::of(b)).collect();
    let first = |i: usize| lay[i].records[0].2;
    let last = |i: usize| lay[i].last_seq();
    let edited = |i: usize, bytes: Vec<u8>| -> Files {
        let mut s = segs.clone();
        s[i].1 = bytes;
        s
    };
    let set_len = |i: usize, record: usize, len: u32| -> Vec<u8> {
        let mut b = segs[i].1.clone();
        let at = lay[i].records[record].0;
        b[at..at + 4].copy_from_slice(&len.to_be_bytes());
        b
    };
    let rec3 = lay[3].records[3];
    let mut out = vec![
        Case {
            name: "sample-archive",
            section: "§6",
            rule: "the sample archive verifies, from genesis",
            edit: json!(null),
            files: segs.clone(),
            expect: ok(),
        },
        Case {
            name: "anchored-archive",
            section: "§6 step 1",
            rule: "an archive that starts after seq 0 verifies, anchored at its first segment's prev_hash",
            edit: json!({"op": "delete", "file": name(0)}),
            files: segs[1..].to_vec(),
            expect: ok(),
        },
        Case {
            name: "bytes-after-trailer",
            section: "§6 step 2",
            rule: "a trailer followed by more bytes: trailing, blamed on the segment's last entry",
            edit: json!({"op": "append", "file": name(1), "hex": "00"}),
            files: edited(1, [segs[1].1.clone(), vec![0]].concat()),
            expect: fails("trailing", &name(1), last(1)),
        },
        Case {
            name: "cut-inside-trailer",
            section: "§6 step 2",
            rule: "a file cut inside its trailer: truncated, blamed on the segment's last entry",
            edit: json!({"op": "truncate", "file": name(3), "len": segs[3].1.len() - 1}),
            files: edited(3, segs[3].1[..segs[3].1.len() - 1].to_vec()),
            expect: fails("truncated", &name(3), last(3)),
        },
        Case {
            name: "no-trailer",
            section: "§6 step 2",
            rule: "a file that ends right after a record: truncated, blamed on the entry after it",
            edit: json!({"op": "truncate", "file": name(3), "len": lay[3].trailer_start}),
            files: edited(3, segs[3].1[..lay[3].trailer_start].to_vec()),
            expect: fails("truncated", &name(3), last(3) + 1),
        },
        Case {
            name: "cut-inside-record",
            section: "§6 step 2",
            rule: "a file cut inside a record: truncated, blamed on that record's entry",
            edit: json!({"op": "truncate", "file": name(3), "len": rec3.0 + 10}),
            files: edited(3, segs[3].1[..rec3.0 + 10].to_vec()),
            expect: fails("truncated", &name(3), rec3.2),
        },
        Case {
            name: "record-len-over-bound",
            section: "§6 step 2",
            rule: "a record_len over 16,777,216 is malformed, checked before whether it fits in the file",
            edit: json!({"op": "set", "file": name(2), "offset": lay[2].records[0].0, "hex": "01000001"}),
            files: edited(2, set_len(2, 0, 0x0100_0001)),
            expect: fails("malformed", &name(2), first(2)),
        },
        Case {
            name: "record-len-past-file-end",
            section: "§6 step 2",
            rule: "a record_len within the bound that runs past the file's end: truncated",
            edit: json!({"op": "set", "file": name(2), "offset": lay[2].records[0].0, "hex": "00ffffff"}),
            files: edited(2, set_len(2, 0, 0x00ff_ffff)),
            expect: fails("truncated", &name(2), first(2)),
        },
        Case {
            name: "record-len-is-marker",
            section: "§6 step 2",
            rule: "the trailer marker as a record_len, with no trailer magic after it and more than a trailer's bytes left: malformed",
            edit: json!({"op": "set", "file": name(2), "offset": lay[2].records[0].0, "hex": "ffffffff"}),
            files: edited(2, set_len(2, 0, 0xffff_ffff)),
            expect: fails("malformed", &name(2), first(2)),
        },
        Case {
            name: "header-cut",
            section: "§6 step 1",
            rule: "a file too short for its header: truncated, blamed on the first seq its file name gives",
            edit: json!({"op": "truncate", "file": name(2), "len": 20}),
            files: edited(2, segs[2].1[..20].to_vec()),
            expect: fails("truncated", &name(2), first(2)),
        },
        Case {
            name: "missing-segment",
            section: "§6 step 1",
            rule: "a segment missing from the middle: seq, in the next segment, blamed on the first seq missing",
            edit: json!({"op": "delete", "file": name(2)}),
            files: [&segs[..2], &segs[3..]].concat(),
            expect: fails("seq", &name(3), first(2)),
        },
        Case {
            name: "empty-segment",
            section: "§6 step 3",
            rule: "a segment with no record: trailer, blamed on its first seq",
            edit: json!({"op": "keep-header-and-trailer", "file": name(0)}),
            files: vec![(
                name(0),
                [
                    &segs[0].1[..lay[0].header_len],
                    &segs[0].1[lay[0].trailer_start..],
                ]
                .concat(),
            )],
            expect: fails("trailer", &name(0), 0),
        },
        Case {
            name: "renamed-copy-of-a-segment",
            section: "§5",
            rule: "a segment under a name other than REGION-SEQ.seg of its header is not part of the archive: header",
            edit: json!({"op": "only", "file": name(0), "as": "foo.seg"}),
            files: vec![("foo.seg".to_string(), segs[0].1.clone())],
            expect: fails("header", "foo.seg", 0),
        },
        Case {
            name: "segment-named-for-another-region",
            section: "§5",
            rule: "the file name's region must be the header's: header",
            edit: json!({"op": "only", "file": name(0), "as": "us-1-00000000000000000000.seg"}),
            files: vec![(
                "us-1-00000000000000000000.seg".to_string(),
                segs[0].1.clone(),
            )],
            expect: fails("header", "us-1-00000000000000000000.seg", 0),
        },
        Case {
            name: "segment-named-for-another-seq",
            section: "§5",
            rule: "the file name's seq must be the header's first_seq: header, blamed on the name's seq",
            edit: json!({"op": "rename", "file": name(1), "as": format!("eu-1-{:020}.seg", first(1) + 1)}),
            files: {
                let mut s = segs.clone();
                s[1].0 = format!("eu-1-{:020}.seg", first(1) + 1);
                s
            },
            expect: fails(
                "header",
                &format!("eu-1-{:020}.seg", first(1) + 1),
                first(1) + 1,
            ),
        },
    ];
    let one = |p: Vec<Payload>| crafted(p);
    let seg0 = segment_file_name(&"eu-1".parse().unwrap(), 0);
    out.extend([
        Case {
            name: "bucket-year-0",
            section: "§1",
            rule: "a day bucket's year is 1 to 9999: year 0 is malformed",
            edit: json!(null),
            files: one(vec![budget_on(date(0, 1, 1))]),
            expect: fails("malformed", &seg0, 0),
        },
        Case {
            name: "bucket-year-negative",
            section: "§1",
            rule: "a day bucket's year is 1 to 9999: a negative year is malformed",
            edit: json!(null),
            files: one(vec![budget_on(date(-1, 12, 31))]),
            expect: fails("malformed", &seg0, 0),
        },
        Case {
            name: "bucket-year-9999",
            section: "§1",
            rule: "a day bucket of year 9999 is valid",
            edit: json!(null),
            files: one(vec![budget_on(date(9999, 12, 31))]),
            expect: ok(),
        },
        Case {
            name: "bid-charged-twice-in-a-batch",
            section: "§6.5",
            rule: "one bid is charged at most once: twice in one spend batch is a rule broken",
            edit: json!(null),
            files: one(vec![grant(1), batch(1, 1, &[1, 2, 1])]),
            expect: fails("rule", &seg0, 1),
        },
        Case {
            name: "bid-charged-twice-in-two-batches",
            section: "§6.5",
            rule: "one bid is charged at most once: again in a later batch of the lease is a rule broken",
            edit: json!(null),
            files: one(vec![grant(1), batch(1, 1, &[1, 2]), batch(1, 2, &[3, 2])]),
            expect: fails("rule", &seg0, 2),
        },
        Case {
            name: "same-bid-in-two-leases",
            section: "§6.5",
            rule: "bid numbers are per lease: the same number under two leases is two bids",
            edit: json!(null),
            files: one(vec![grant(1), grant(2), batch(1, 1, &[1]), batch(2, 2, &[1])]),
            expect: ok(),
        },
        Case {
            name: "lease-granted-twice",
            section: "§6.5",
            rule: "a lease is granted once",
            edit: json!(null),
            files: one(vec![grant(1), grant(1)]),
            expect: fails("rule", &seg0, 1),
        },
        Case {
            name: "remote-seq-goes-back",
            section: "§6.5",
            rule: "a peer's witnessed remote_seq never decreases (equal is allowed: one push merged as several entries)",
            edit: json!(null),
            files: one(vec![merged(40, &[]), merged(40, &[Bucket::Lifetime]), merged(39, &[])]),
            expect: fails("rule", &seg0, 2),
        },
        Case {
            name: "lease-with-no-bucket",
            section: "§6.5",
            rule: "a lease draws on at least one bucket",
            edit: json!(null),
            files: one(vec![grant_on(1, vec![])]),
            expect: fails("rule", &seg0, 0),
        },
        Case {
            name: "lease-lists-a-bucket-twice",
            section: "§6.5",
            rule: "a lease lists each bucket it draws on once",
            edit: json!(null),
            files: one(vec![grant_on(1, vec![Bucket::Lifetime, Bucket::Lifetime])]),
            expect: fails("rule", &seg0, 0),
        },
        Case {
            name: "merge-receives-nothing",
            section: "§6.5",
            rule: "a merge lists only buckets that received money",
            edit: json!(null),
            files: one(vec![Payload::RemoteMerged(RemoteMerged {
                from: "us-1".parse().unwrap(),
                remote_seq: 1,
                remote_head: [7; 32],
                received: vec![Received {
                    campaign: "cmp-1".parse().unwrap(),
                    bucket: Bucket::Lifetime,
                    amount: m(0),
                }],
            })]),
            expect: fails("rule", &seg0, 0),
        },
        Case {
            name: "day-retired-then-granted",
            section: "§6.5",
            rule: "no lease draws on a day on or before its campaign's latest retired day",
            edit: json!(null),
            files: one(vec![
                retired_on(date(2026, 12, 6)),
                grant_on(1, vec![Bucket::Lifetime, Bucket::Day(date(2026, 12, 7))]),
                grant_on(2, vec![Bucket::Lifetime, Bucket::Day(date(2026, 12, 5))]),
            ]),
            expect: fails("rule", &seg0, 2),
        },
        Case {
            name: "day-retired-twice",
            section: "§6.5",
            rule: "a day is retired once",
            edit: json!(null),
            files: one(vec![retired_on(date(2026, 12, 6)), retired_on(date(2026, 12, 6))]),
            expect: fails("rule", &seg0, 1),
        },
        Case {
            name: "day-retired-then-merged",
            section: "§6.5",
            rule: "no budget, transfer or merge names a campaign's latest retired day after its day_retired",
            edit: json!(null),
            files: one(vec![
                budget_on(date(2026, 12, 6)),
                merged_on(1, date(2026, 12, 6)),
                retired_on(date(2026, 12, 6)),
                merged_on(2, date(2026, 12, 6)),
            ]),
            expect: fails("rule", &seg0, 3),
        },
        Case {
            name: "day-retired-out-of-order",
            section: "§6.5",
            rule: "an earlier day may stay live (and be retired) after a later one retires",
            edit: json!(null),
            files: one(vec![
                retired_on(date(2026, 12, 6)),
                merged_on(1, date(2026, 12, 5)),
                retired_on(date(2026, 12, 5)),
                merged_on(2, date(2026, 12, 7)),
            ]),
            expect: ok(),
        },
        Case {
            name: "bucket-twice-in-a-merge",
            section: "§6.5",
            rule: "a merge lists a bucket at most once",
            edit: json!(null),
            files: one(vec![merged(1, &[Bucket::Lifetime, Bucket::Lifetime])]),
            expect: fails("rule", &seg0, 0),
        },
    ]);
    out
}

/// What the reference verifier says of `files`, in the case's terms.
fn verdict(files: &Files) -> (String, String, Option<u64>) {
    let mut v = Verifier::new();
    for (name, bytes) in files {
        if let Err(f) = v.segment(name, bytes) {
            return (f.reason.code().to_string(), f.segment, f.seq);
        }
    }
    match v.finish(None) {
        Ok(_) => ("ok".into(), String::new(), None),
        Err(f) => (f.reason.code().to_string(), f.segment, f.seq),
    }
}

fn compute() -> Value {
    let mut out = Vec::new();
    for c in cases() {
        let (reason, segment, seq) = verdict(&c.files);
        let files: Value = if c.edit.is_null() {
            c.files
                .iter()
                .map(|(n, b)| json!({"name": n, "hex": hex::encode(b)}))
                .collect()
        } else {
            Value::Null
        };
        out.push(json!({
            "name": c.name,
            "section": c.section,
            "rule": c.rule,
            "edit_of_sample_archive": c.edit,
            "files": files,
            "expect": {"reason": reason, "segment": segment, "seq": seq},
        }));
    }
    json!({
        "about": "Verification cases of LOG_FORMAT.md §5-§6. Each case is the sample archive \
                  (testdata/sample-archive) with one edit, or the crafted files given in hex; \
                  expect: the reason code of the first failure ('ok': it verifies), the segment \
                  file it is in, and the seq it is blamed on.",
        "cases": out,
    })
}

#[test]
fn each_rule_is_what_the_reference_verifier_does() {
    let mut wrong = Vec::new();
    for c in cases() {
        let got = verdict(&c.files);
        let want = (c.expect.reason.to_string(), c.expect.segment, c.expect.seq);
        if got != want {
            wrong.push(format!("{}: got {got:?}, the rule says {want:?}", c.name));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn the_cases_file_is_what_the_code_computes() {
    let path = repo().join("testdata/verify-cases.json");
    let computed = compute();
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&computed).unwrap() + "\n",
        )
        .unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(
        stored == computed,
        "testdata/verify-cases.json is stale: UPDATE_VECTORS=1 cargo test -p shared --test it cases"
    );
}

#[test]
fn log_format_md_names_every_case() {
    let doc = std::fs::read_to_string(repo().join("LOG_FORMAT.md")).unwrap();
    let missing: Vec<&str> = cases()
        .iter()
        .map(|c| c.name)
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "LOG_FORMAT.md does not name these cases of testdata/verify-cases.json: {missing:?}"
    );
}
