//! The test vectors of LOG_FORMAT.md: `testdata/log-vectors.json` must be what the code
//! computes, and LOG_FORMAT.md must quote every value in it. Regenerate the file with
//! `UPDATE_VECTORS=1 cargo test -p shared --test it vectors`, then update the document.

use jiff::civil::date;
use serde_json::{Value, json};
use shared::log::entry::{
    Anomaly, AnomalyKind, BidsLost, BudgetSet, DayRetired, DoubtPart, InDoubtReturned,
    LeaseGranted, LeaseParams, LeaseReclaimed, LeaseReleased, ParamsSet, Received, RemoteMerged,
    RestReturned, RightsTransferred, SpendBatch, body_digest, genesis,
};
use shared::log::merkle;
use shared::log::segment::{SegmentWriter, segment_file_name};
use shared::log::{Chain, Entry, Payload, SpendEvent};
use shared::{BatchId, Bucket, Money};

use crate::{Layout, repo};

fn n<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().unwrap()
}

fn m(micros: i64) -> Money {
    Money::from_micros(micros)
}

fn events() -> Vec<SpendEvent> {
    vec![
        SpendEvent {
            bid: 3,
            key: n("adx/auction-1/1"),
            amount: m(1_500),
        },
        SpendEvent {
            bid: 5,
            key: n("adx/auction-2/1"),
            amount: m(2_250),
        },
        SpendEvent {
            bid: 6,
            key: n("openx/a/b/2"),
            amount: m(900),
        },
    ]
}

/// One entry of every kind, in a chain from genesis.
fn payloads() -> Vec<Payload> {
    let cmp = || n("cmp-1");
    vec![
        Payload::BudgetSet(BudgetSet {
            campaign: cmp(),
            bucket: Bucket::Lifetime,
            before: m(0),
            after: m(100_000_000),
        }),
        Payload::LeaseGranted(LeaseGranted {
            lease: n("L1"),
            edge: n("edge-1"),
            campaign: cmp(),
            buckets: vec![Bucket::Lifetime, Bucket::Day(date(2026, 11, 1))],
            amount: m(5_000_000),
            duration_ms: 30_000,
        }),
        Payload::SpendBatch(SpendBatch {
            lease: n("L1"),
            batch: BatchId(*b"batch-0000000001"),
            edge: n("edge-2"),
            events: events(),
        }),
        Payload::LeaseReleased(LeaseReleased {
            lease: n("L1"),
            batch: BatchId(*b"batch-0000000002"),
            spent: m(4_650),
            returned: m(4_992_350),
            bids: 7,
            in_doubt: vec![
                DoubtPart {
                    wait_ms: 295_000,
                    amount: m(1_000),
                },
                DoubtPart {
                    wait_ms: 3_605_000,
                    amount: m(2_000),
                },
            ],
        }),
        Payload::LeaseReclaimed(LeaseReclaimed {
            lease: n("L2"),
            spent: m(0),
            returned: m(500),
            in_doubt: m(2_000_000),
            wait_ms: 3_605_000,
        }),
        Payload::InDoubtReturned(InDoubtReturned {
            lease: n("L2"),
            wait_ms: 3_605_000,
            returned: m(2_000_000),
        }),
        Payload::RightsTransferred(RightsTransferred {
            campaign: cmp(),
            bucket: Bucket::Day(date(2026, 11, 1)),
            to: n("us-1"),
            amount: m(10_000_000),
        }),
        Payload::RemoteMerged(RemoteMerged {
            from: n("us-1"),
            remote_seq: 41,
            remote_head: [0xab; 32],
            received: vec![Received {
                campaign: cmp(),
                bucket: Bucket::Lifetime,
                amount: m(3_000_000),
            }],
        }),
        Payload::Anomaly(Anomaly {
            rule: AnomalyKind::LateSpend,
            lease: n("L2"),
            event: SpendEvent {
                bid: 12,
                key: n("adx/auction-9/1"),
                amount: m(700),
            },
        }),
        Payload::BidsLost(BidsLost {
            lease: n("L1"),
            batch: BatchId(*b"batch-0000000003"),
            count: 2,
            bid_total: m(5_000),
            returned: m(1_000),
        }),
        Payload::ParamsSet(ParamsSet {
            params: LeaseParams::default(),
        }),
        Payload::RestReturned(RestReturned {
            lease: n("L1"),
            batch: BatchId(*b"batch-0000000004"),
            count: 1,
            returned: m(750),
        }),
        Payload::DayRetired(DayRetired {
            campaign: n("cmp-1"),
            bucket: Bucket::Day(date(2026, 11, 1)),
            budget: m(5_000_000),
            settled_here: m(3_000),
            settled_all: m(4_200),
            lapsed: m(1_000),
        }),
    ]
}

fn compute() -> Value {
    let mut chain = Chain::new();
    let region = n("eu-1");
    let mut seg = SegmentWriter::new(&region, 0, chain.head());
    let mut entries = Vec::new();
    for (i, payload) in payloads().into_iter().enumerate() {
        let i = i as u64;
        let (entry, hash) = chain
            .append(
                2,
                10 + i,
                1_793_491_200_000_000 + i as i64 * 1_000_000,
                payload,
            )
            .unwrap();
        let body = entry.body().unwrap();
        assert_eq!(seg.push(&entry).unwrap(), hash);
        entries.push(json!({
            "kind": entry.payload.kind().name(),
            "entry": entry,
            "body_hex": hex::encode(&body),
            "body_digest": hex::encode(body_digest(&body)),
            "entry_hash": hex::encode(hash),
        }));
    }
    let file = seg.seal().unwrap();
    let layout = Layout::of(&file);
    let records: Vec<String> = layout
        .records
        .iter()
        .map(|(a, b, _)| hex::encode(&file[*a..*b]))
        .collect();
    let event_bytes: Vec<Vec<u8>> = events().iter().map(SpendEvent::to_bytes).collect();
    let leaves: Vec<[u8; 32]> = event_bytes.iter().map(|b| merkle::leaf_hash(b)).collect();
    let n01 = merkle::node_hash(&leaves[0], &leaves[1]);
    json!({
        "genesis": hex::encode(genesis()),
        "entries": entries,
        "merkle": {
            "events_hex": event_bytes.iter().map(hex::encode).collect::<Vec<_>>(),
            "leaf_hashes": leaves.iter().map(hex::encode).collect::<Vec<_>>(),
            "node_0_1": hex::encode(n01),
            "root": hex::encode(merkle::root(&leaves)),
            "audit_path_of_leaf_2": merkle::audit_path(&leaves, 2).unwrap().iter().map(hex::encode).collect::<Vec<_>>(),
        },
        "segment": {
            "name": segment_file_name(&region, 0),
            "header_hex": hex::encode(&file[..layout.header_len]),
            "spend_batch_record_hex": records[2],
            "trailer_hex": hex::encode(&file[layout.trailer_start..]),
            "file_hex": hex::encode(&file),
        },
    })
}

#[test]
fn vectors_file_is_what_the_code_computes() {
    let path = repo().join("testdata/log-vectors.json");
    let computed = compute();
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&computed).unwrap() + "\n",
        )
        .unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(
        stored, computed,
        "testdata/log-vectors.json is stale: UPDATE_VECTORS=1 cargo test -p shared --test it vectors"
    );
    // And the entries in the file, read back as entries, encode to the stated bytes.
    for e in stored["entries"].as_array().unwrap() {
        let entry: Entry = serde_json::from_value(e["entry"].clone()).unwrap();
        assert_eq!(
            hex::encode(entry.body().unwrap()),
            e["body_hex"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(entry.hash().unwrap()),
            e["entry_hash"].as_str().unwrap()
        );
    }
}

#[test]
fn log_format_md_quotes_every_vector() {
    let doc = std::fs::read_to_string(repo().join("LOG_FORMAT.md")).unwrap();
    let doc: String = doc.split_whitespace().collect();
    let v = compute();
    let mut wanted = vec![v["genesis"].as_str().unwrap().to_string()];
    for e in v["entries"].as_array().unwrap() {
        for field in ["body_hex", "body_digest", "entry_hash"] {
            wanted.push(e[field].as_str().unwrap().to_string());
        }
    }
    for field in ["events_hex", "leaf_hashes", "audit_path_of_leaf_2"] {
        for h in v["merkle"][field].as_array().unwrap() {
            wanted.push(h.as_str().unwrap().to_string());
        }
    }
    for field in ["node_0_1", "root"] {
        wanted.push(v["merkle"][field].as_str().unwrap().to_string());
    }
    for field in ["header_hex", "spend_batch_record_hex", "trailer_hex"] {
        wanted.push(v["segment"][field].as_str().unwrap().to_string());
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|h| !doc.contains(h.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "LOG_FORMAT.md lacks these vectors (see testdata/log-vectors.json): {missing:#?}"
    );
}

/// `Chain::append_record` makes the same entries and hashes as `Chain::append`, and records that
/// build the same segment as pushing the entries.
#[test]
fn append_record_matches_append_and_encode() {
    let (mut a, mut b) = (Chain::new(), Chain::new());
    let region = n("eu-1");
    let mut by_entry = SegmentWriter::new(&region, 0, a.head());
    let mut by_record = SegmentWriter::new(&region, 0, b.head());
    for (i, payload) in payloads().into_iter().enumerate() {
        let (entry, hash) = a.append(3, i as u64, 7, payload.clone()).unwrap();
        let (entry2, hash2, record) = b.append_record(3, i as u64, 7, payload).unwrap();
        assert_eq!((&entry, hash), (&entry2, hash2));
        assert_eq!(
            shared::log::segment::encode_record(&entry).unwrap(),
            (record.clone(), hash)
        );
        assert_eq!(
            by_entry.push(&entry).unwrap(),
            by_record.push_record(&record).unwrap()
        );
    }
    assert_eq!(a, b);
    assert_eq!(by_entry.seal().unwrap(), by_record.seal().unwrap());
}
