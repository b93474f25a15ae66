//! Proof that one charge is in a region's log, checkable offline against a head hash.
//!
//! A proof carries the event's canonical bytes, its Merkle audit path to the root in its spend
//! batch's body, that body and `prev_hash`, and the body digests of every later entry up to the
//! head. The checker recomputes leaf → root → entry hash → … → head and compares with the head
//! the auditor trusts. Nothing of any other charge, nor of any later entry beyond its digest, is
//! revealed.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::id::{EventKey, LeaseId, RegionId};
use crate::money::Money;

use super::Hash;
use super::entry::{BodyRef, Kind, Payload, SpendEvent, body_digest, entry_hash, hex_hash};
use super::merkle;
use super::verify::{ArchiveError, Failure, verify_path_observed};

/// The `format` field of every proof.
pub const PROOF_FORMAT: &str = "budget-log-inclusion-proof/v1";

/// A proof of inclusion of one charge (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// Always [`PROOF_FORMAT`].
    pub format: String,
    /// The region whose log holds the charge.
    pub region: RegionId,
    /// The charge, readable. The checker insists it equals `event_hex` decoded.
    pub event: SpendEvent,
    /// The charge's canonical bytes, hex: what the leaf hash covers.
    pub event_hex: String,
    /// Its position among the batch's events.
    pub leaf_index: u64,
    /// The number of events in the batch.
    pub tree_size: u64,
    /// The Merkle audit path, leaf upward, hex.
    pub audit_path: Vec<String>,
    /// The spend batch entry's seq.
    pub entry_seq: u64,
    /// Its `prev_hash`.
    #[serde(with = "hex_hash")]
    pub entry_prev_hash: Hash,
    /// Its body, hex.
    pub entry_body_hex: String,
    /// Body digests of entries `entry_seq + 1 ..= head_seq`, hex.
    pub later_body_digests: Vec<String>,
    /// Seq of the head the proof leads to.
    pub head_seq: u64,
    /// The head's hash. Checking compares it with the head the auditor trusts.
    #[serde(with = "hex_hash")]
    pub head_hash: Hash,
}

impl InclusionProof {
    /// The lease whose batch holds the charge, as the entry body says (`None` if the body does
    /// not parse as a spend batch; [`check`] says why). With `event.bid`, the charge's bid id.
    pub fn lease(&self) -> Option<LeaseId> {
        let body = hex::decode(&self.entry_body_hex).ok()?;
        let parsed = BodyRef::parse(&body).ok()?;
        match Payload::decode(parsed.kind, parsed.payload).ok()? {
            (Payload::SpendBatch(b), _) => Some(b.lease),
            _ => None,
        }
    }
}

/// What a proof that checks out establishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProvenCharge {
    /// The region.
    pub region: RegionId,
    /// The charge.
    pub event: SpendEvent,
    /// The spend batch entry holding it.
    pub entry_seq: u64,
    /// The lease charged.
    pub lease: LeaseId,
    /// The entry's leader-stamped time (microseconds since the Unix epoch).
    pub time_us: i64,
    /// The batch's total.
    pub batch_total: Money,
    /// The head it leads to.
    pub head_seq: u64,
    /// That head's hash.
    #[serde(with = "hex_hash")]
    pub head_hash: Hash,
}

/// Which charge to prove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeRef {
    /// Our bid: the lease and the bid's number within it. At most one charge has it.
    Bid {
        /// The lease.
        lease: LeaseId,
        /// The bid's number.
        bid: u64,
    },
    /// The exchange's ids of the impression. They are the exchange's to choose and may repeat,
    /// so several charges (of different bids of ours) may carry them.
    Exchange(EventKey),
}

impl std::fmt::Display for ChargeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChargeRef::Bid { lease, bid } => write!(f, "of bid {}.{bid}", lease.0),
            ChargeRef::Exchange(key) => write!(f, "with exchange ids {key}"),
        }
    }
}

impl ChargeRef {
    /// Our bid's id as `budgetctl` writes it: `LEASE.BID` (`12.7`: bid 7 of lease 12).
    pub fn parse_bid(s: &str) -> Result<ChargeRef, String> {
        let bad = || format!("{s:?} is not a bid id LEASE.BID (two positive numbers, as in 12.7)");
        let (l, b) = s.split_once('.').ok_or_else(bad)?;
        let lease: u64 = l.parse().map_err(|_| bad())?;
        let bid: u64 = b.parse().map_err(|_| bad())?;
        if lease == 0 || bid == 0 {
            return Err(bad());
        }
        Ok(ChargeRef::Bid {
            lease: LeaseId(lease),
            bid,
        })
    }

    fn matches(&self, lease: LeaseId, e: &SpendEvent) -> bool {
        match self {
            ChargeRef::Bid { lease: l, bid } => *l == lease && e.bid == *bid,
            ChargeRef::Exchange(key) => e.key == *key,
        }
    }
}

/// Why a proof could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    /// The archive could not be read.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The archive does not verify; no proof is made from it.
    #[error("the archive does not verify: {0}")]
    Failed(Failure),
    /// The charge is not in the archive (up to the head asked for).
    #[error("no charge {0} in the archive")]
    NotFound(ChargeRef),
    /// The head asked for is not in the archive.
    #[error("the archive ends at seq {last:?}; no head at seq {wanted}")]
    NoSuchHead {
        /// The head asked for.
        wanted: u64,
        /// The archive's last seq.
        last: Option<u64>,
    },
}

/// Why a proof does not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The proof's JSON is not a proof.
    #[error("not a proof: {0}")]
    Malformed(String),
    /// The proof is well formed but does not lead to the trusted head.
    #[error("proof does not hold: {0}")]
    Invalid(String),
}

/// Makes a proof for every charge that `which` selects in the archive at `path` (one at most for
/// [`ChargeRef::Bid`], any number for [`ChargeRef::Exchange`]), each leading to the head at seq
/// `head_seq` (default: the archive's last entry). Verifies the whole archive first. Proofs come
/// in log order; none found is [`ProveError::NotFound`].
pub fn prove(
    path: &Path,
    which: &ChargeRef,
    head_seq: Option<u64>,
) -> Result<Vec<InclusionProof>, ProveError> {
    /// The proof minus what is known only at the end (region, head).
    struct Found {
        event: SpendEvent,
        event_hex: String,
        leaf_index: u64,
        tree_size: u64,
        audit_path: Vec<String>,
        entry_seq: u64,
        entry_prev_hash: Hash,
        entry_body_hex: String,
        later_body_digests: Vec<String>,
    }
    let mut found: Vec<Found> = Vec::new();
    let mut head: Option<(u64, Hash)> = None;
    let mut observe = |v: &super::verify::Verified<'_>| {
        if head_seq.is_some_and(|h| v.seq > h) {
            return;
        }
        head = Some((v.seq, *v.hash));
        let digest = hex::encode(v.body_digest);
        for f in &mut found {
            f.later_body_digests.push(digest.clone());
        }
        if v.kind != Kind::SpendBatch {
            return;
        }
        let Ok((Payload::SpendBatch(batch), _)) =
            BodyRef::parse(v.body).and_then(|b| Payload::decode(b.kind, b.payload))
        else {
            return;
        };
        // The verifier checked the events section; split it and look for the charge.
        let events = super::record::split_events(v.events);
        let hits: Vec<(usize, SpendEvent)> = events
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                SpendEvent::decode(b)
                    .ok()
                    .filter(|e| which.matches(batch.lease, e))
                    .map(|e| (i, e))
            })
            .collect();
        if hits.is_empty() {
            return;
        }
        let leaves: Vec<Hash> = events.iter().map(|b| merkle::leaf_hash(b)).collect();
        for (index, event) in hits {
            found.push(Found {
                event,
                event_hex: hex::encode(events[index]),
                leaf_index: index as u64,
                tree_size: leaves.len() as u64,
                audit_path: merkle::audit_path(&leaves, index)
                    .unwrap_or_default()
                    .iter()
                    .map(hex::encode)
                    .collect(),
                entry_seq: v.seq,
                entry_prev_hash: *v.prev_hash,
                entry_body_hex: hex::encode(v.body),
                later_body_digests: Vec::new(),
            });
        }
    };
    let summary = match verify_path_observed(path, None, &mut observe)? {
        Ok(s) => s,
        Err((f, _)) => return Err(ProveError::Failed(f)),
    };
    if let Some(wanted) = head_seq
        && summary.last_seq.is_none_or(|last| last < wanted)
    {
        return Err(ProveError::NoSuchHead {
            wanted,
            last: summary.last_seq,
        });
    }
    let (Some(region), Some((head_seq, head_hash))) = (summary.region, head) else {
        return Err(ProveError::NotFound(which.clone()));
    };
    if found.is_empty() {
        return Err(ProveError::NotFound(which.clone()));
    }
    Ok(found
        .into_iter()
        .map(|f| InclusionProof {
            format: PROOF_FORMAT.to_string(),
            region: region.clone(),
            event: f.event,
            event_hex: f.event_hex,
            leaf_index: f.leaf_index,
            tree_size: f.tree_size,
            audit_path: f.audit_path,
            entry_seq: f.entry_seq,
            entry_prev_hash: f.entry_prev_hash,
            entry_body_hex: f.entry_body_hex,
            later_body_digests: f.later_body_digests,
            head_seq,
            head_hash,
        })
        .collect())
}

fn unhex(what: &str, s: &str) -> Result<Vec<u8>, ProofError> {
    hex::decode(s).map_err(|_| ProofError::Malformed(format!("{what} is not hex")))
}

fn unhex_hash(what: &str, s: &str) -> Result<Hash, ProofError> {
    super::parse_hash(s)
        .map_err(|_| ProofError::Malformed(format!("{what} is not a 64-digit hex hash")))
}

/// Checks `proof` against `trusted_head`, the head hash the auditor got from a trusted source.
pub fn check(proof: &InclusionProof, trusted_head: &Hash) -> Result<ProvenCharge, ProofError> {
    let invalid = |s: String| ProofError::Invalid(s);
    if proof.format != PROOF_FORMAT {
        return Err(ProofError::Malformed(format!(
            "format {:?}, expected {PROOF_FORMAT:?}",
            proof.format
        )));
    }
    let event_bytes = unhex("event_hex", &proof.event_hex)?;
    let event = SpendEvent::decode(&event_bytes)
        .map_err(|e| ProofError::Malformed(format!("event_hex: {e}")))?;
    if event != proof.event {
        return Err(invalid(format!(
            "event {} (bid {}) is not what event_hex holds ({}, bid {})",
            proof.event.key, proof.event.bid, event.key, event.bid
        )));
    }
    let path = proof
        .audit_path
        .iter()
        .map(|h| unhex_hash("audit_path", h))
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = merkle::leaf_hash(&event_bytes);
    let root = merkle::root_from_path(&leaf, proof.leaf_index, proof.tree_size, &path)
        .ok_or_else(|| invalid("audit path does not fit the leaf index and tree size".into()))?;
    let body = unhex("entry_body_hex", &proof.entry_body_hex)?;
    let parsed =
        BodyRef::parse(&body).map_err(|e| ProofError::Malformed(format!("entry body: {e}")))?;
    if parsed.kind != Kind::SpendBatch {
        return Err(invalid(format!(
            "entry is a {}, not a spend batch",
            parsed.kind.name()
        )));
    }
    if parsed.seq != proof.entry_seq {
        return Err(invalid(format!(
            "entry body has seq {}, proof says {}",
            parsed.seq, proof.entry_seq
        )));
    }
    let (payload, summary) = Payload::decode(parsed.kind, parsed.payload)
        .map_err(|e| ProofError::Malformed(format!("entry payload: {e}")))?;
    let (Payload::SpendBatch(batch), Some(summary)) = (payload, summary) else {
        return Err(invalid("entry payload is not a spend batch".into()));
    };
    if summary.count as u64 != proof.tree_size {
        return Err(invalid(format!(
            "batch holds {} events, proof says {}",
            summary.count, proof.tree_size
        )));
    }
    if summary.merkle_root != root {
        return Err(invalid(
            "the event's audit path does not lead to the batch's Merkle root".into(),
        ));
    }
    let mut hash = entry_hash(&proof.entry_prev_hash, &body_digest(&body));
    for d in &proof.later_body_digests {
        hash = entry_hash(&hash, &unhex_hash("later_body_digests", d)?);
    }
    let head_seq = proof
        .entry_seq
        .checked_add(proof.later_body_digests.len() as u64);
    if head_seq != Some(proof.head_seq) {
        return Err(invalid(format!(
            "{} later digests after seq {} do not reach head seq {}",
            proof.later_body_digests.len(),
            proof.entry_seq,
            proof.head_seq
        )));
    }
    if hash != proof.head_hash {
        return Err(invalid(
            "the chain from the entry does not lead to the proof's head hash".into(),
        ));
    }
    if hash != *trusted_head {
        return Err(invalid(format!(
            "the proof leads to head {}, not to the trusted head {}",
            hex::encode(hash),
            hex::encode(trusted_head)
        )));
    }
    Ok(ProvenCharge {
        region: proof.region.clone(),
        event,
        entry_seq: proof.entry_seq,
        lease: batch.lease,
        time_us: parsed.time_us,
        batch_total: summary.total,
        head_seq: proof.head_seq,
        head_hash: hash,
    })
}
