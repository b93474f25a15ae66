//! Proofs of single charges, made from the sample archive and checked offline.

use shared::log::Hash;
use shared::log::proof::{ChargeRef, InclusionProof, ProofError, ProveError, check, prove};
use shared::log::sample::{SampleConfig, generate};
use shared::log::verify::verify_path_observed;

use crate::sample_dir;

fn charges() -> Vec<ChargeRef> {
    generate(&SampleConfig::default())
        .unwrap()
        .some_charges
        .into_iter()
        .map(|(lease, bid, _)| ChargeRef::Bid { lease, bid })
        .collect()
}

/// The one proof of a charge selected by our bid id.
fn one(which: &ChargeRef, head: Option<u64>) -> Result<InclusionProof, ProveError> {
    let mut proofs = prove(&sample_dir(), which, head)?;
    assert_eq!(proofs.len(), 1, "one charge per bid id");
    Ok(proofs.remove(0))
}

fn head() -> Hash {
    generate(&SampleConfig::default()).unwrap().head
}

#[test]
fn proofs_of_charges_check_out_against_the_head() {
    let head = head();
    let keys = charges();
    assert!(keys.len() >= 10);
    for key in keys.iter().step_by(7) {
        let proof = one(key, None).unwrap();
        assert_eq!(proof.head_hash, head);
        let charge = check(&proof, &head).unwrap();
        let ChargeRef::Bid { lease, bid } = key else {
            unreachable!()
        };
        assert_eq!((charge.lease, charge.event.bid), (*lease, *bid));
        assert_eq!(charge.entry_seq, proof.entry_seq);
        // The JSON form round-trips.
        let json = serde_json::to_string(&proof).unwrap();
        let back: InclusionProof = serde_json::from_str(&json).unwrap();
        assert_eq!(check(&back, &head), Ok(charge));
    }
}

#[test]
fn a_proof_to_an_earlier_head_checks_against_that_head_only() {
    let key = &charges()[3];
    let full = one(key, None).unwrap();
    let upto = full.entry_seq + 5;
    let mut head_at = None;
    verify_path_observed(&sample_dir(), None, &mut |v| {
        if v.seq == upto {
            head_at = Some(*v.hash);
        }
    })
    .unwrap()
    .unwrap();
    let head_at = head_at.unwrap();
    let proof = one(key, Some(upto)).unwrap();
    assert_eq!(proof.head_seq, upto);
    assert_eq!(proof.later_body_digests.len(), 5);
    assert!(check(&proof, &head_at).is_ok());
    assert!(matches!(
        check(&proof, &head()),
        Err(ProofError::Invalid(_))
    ));
    assert!(matches!(
        prove(&sample_dir(), key, Some(u64::MAX)),
        Err(ProveError::NoSuchHead { .. })
    ));
}

#[test]
fn every_tampered_part_of_a_proof_is_refused() {
    let head = head();
    let proof = one(&charges()[5], None).unwrap();
    assert!(
        proof.tree_size > 1,
        "pick a charge in a batch of several events"
    );
    let flip_hex = |s: &str| {
        let mut b = hex::decode(s).unwrap();
        let i = b.len() / 2;
        b[i] ^= 1;
        hex::encode(b)
    };
    let mut cases: Vec<(&str, InclusionProof)> = Vec::new();
    let mut p = proof.clone();
    p.event.amount = shared::Money::from_micros(p.event.amount.micros() - 1);
    cases.push(("event amount", p));
    let mut p = proof.clone();
    p.event_hex = flip_hex(&p.event_hex);
    cases.push(("event bytes", p));
    let mut p = proof.clone();
    p.audit_path[0] = flip_hex(&p.audit_path[0]);
    cases.push(("audit path", p));
    let mut p = proof.clone();
    p.leaf_index = (p.leaf_index + 1) % p.tree_size;
    cases.push(("leaf index", p));
    let mut p = proof.clone();
    p.tree_size += 1;
    cases.push(("tree size", p));
    let mut p = proof.clone();
    p.entry_body_hex = flip_hex(&p.entry_body_hex);
    cases.push(("entry body", p));
    let mut p = proof.clone();
    p.entry_prev_hash[0] ^= 1;
    cases.push(("prev hash", p));
    let mut p = proof.clone();
    let last = p.later_body_digests.len() - 1;
    p.later_body_digests[last] = flip_hex(&p.later_body_digests[last]);
    cases.push(("later digest", p));
    let mut p = proof.clone();
    p.later_body_digests.pop();
    cases.push(("missing digest", p));
    let mut p = proof.clone();
    p.head_seq += 1;
    cases.push(("head seq", p));
    let mut p = proof.clone();
    p.format = "something-else".into();
    cases.push(("format", p));
    for (what, p) in cases {
        assert!(check(&p, &head).is_err(), "tampered {what} accepted");
    }
    let mut wrong_head = head;
    wrong_head[31] ^= 1;
    assert!(check(&proof, &wrong_head).is_err());
    assert!(check(&proof, &head).is_ok());
}

/// Exchanges choose their ids and reuse them: the sample archive has charges of different bids
/// of ours with the same exchange ids. Asked by those ids, `prove` finds every one; asked by our
/// bid id, exactly one.
#[test]
fn exchange_ids_may_name_several_charges_and_each_proves() {
    let head = head();
    let sample = generate(&SampleConfig::default()).unwrap();
    let (lease, bid, key) = sample
        .reused_ids
        .first()
        .cloned()
        .expect("the sample reuses ids");
    let proofs = prove(&sample_dir(), &ChargeRef::Exchange(key.clone()), None).unwrap();
    assert!(proofs.len() >= 2, "{} proofs for {key}", proofs.len());
    let mut bids = Vec::new();
    for p in &proofs {
        let c = check(p, &head).unwrap();
        assert_eq!(c.event.key, key);
        bids.push((c.lease, c.event.bid));
    }
    bids.sort();
    bids.dedup();
    assert_eq!(
        bids.len(),
        proofs.len(),
        "each proof is another bid's charge"
    );
    assert!(bids.contains(&(lease, bid)));
    let mine = one(&ChargeRef::Bid { lease, bid }, None).unwrap();
    assert_eq!(check(&mine, &head).unwrap().event.key, key);
}

#[test]
fn no_proof_for_an_absent_charge_or_from_a_damaged_archive() {
    let absent = ChargeRef::Exchange("adx/no-such-auction/1".parse().unwrap());
    assert!(matches!(
        prove(&sample_dir(), &absent, None),
        Err(ProveError::NotFound(_))
    ));
    let ChargeRef::Bid { lease, .. } = charges()[0] else {
        unreachable!()
    };
    let no_such_bid = ChargeRef::Bid {
        lease,
        bid: 1 << 40,
    };
    assert!(matches!(
        prove(&sample_dir(), &no_such_bid, None),
        Err(ProveError::NotFound(_))
    ));
    let dir = std::env::temp_dir().join(format!("prove-damaged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, mut bytes) in crate::sample_segments() {
        if name.ends_with("0000.seg") {
            bytes[5000] ^= 0x20;
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let result = prove(&dir, &charges()[0], None);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(result, Err(ProveError::Failed(_))), "{result:?}");
}
