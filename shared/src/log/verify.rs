//! Verification of a log archive: every segment, every record, every link; the first thing that
//! fails is named by segment, byte offset, entry seq and reason.
//!
//! Per record, in this order: framing; body structure; `seq` is the expected one; `prev_hash` is
//! the previous entry's hash; the stored hash is the computed one; the payload decodes; for a
//! spend batch, the events decode and their count, total and Merkle root are the body's. Per
//! segment: the header digest, the file name, continuity with the previous segment (seq, region,
//! head), and the trailer's fields and seal. The whole: the first segment starts at genesis (or
//! the summary says where the archive is anchored), and optionally the head is the expected one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::Bucket;
use crate::id::RegionId;
use crate::money::Money;

use super::Hash;
use super::entry::{
    BodyRef, Kind, Payload, SpendEvent, body_digest, entry_hash, genesis, hex_hash,
};
use super::merkle;
use super::segment::{
    FrameError, Item, RecordRef, SEGMENT_EXT, first_seq_from_file_name, read_header, read_item,
    seal,
};

/// Why verification failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// The file ends early: inside a record, or with no trailer.
    Truncated {
        /// What is missing.
        detail: String,
    },
    /// A segment header is damaged or does not fit the archive.
    Header {
        /// What is wrong.
        detail: String,
    },
    /// Bytes that do not form a valid record or entry.
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// The entry's seq is not the next one: an entry or segment is missing, repeated or moved.
    Seq {
        /// The seq that should come.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// The entry's `prev_hash` is not the previous entry's hash.
    PrevHash {
        /// The previous entry's hash.
        #[serde(with = "hex_hash")]
        expected: Hash,
        /// The stored `prev_hash`.
        #[serde(with = "hex_hash")]
        found: Hash,
    },
    /// The stored entry hash is not the hash of the entry's bytes.
    Hash {
        /// The stored hash.
        #[serde(with = "hex_hash")]
        stored: Hash,
        /// The computed one.
        #[serde(with = "hex_hash")]
        computed: Hash,
    },
    /// The spend batch's events do not have the Merkle root its body commits to.
    MerkleRoot {
        /// The root in the body.
        #[serde(with = "hex_hash")]
        stored: Hash,
        /// The root of the events present.
        #[serde(with = "hex_hash")]
        computed: Hash,
    },
    /// The spend batch's events are not what its body says (count, total or an event's bytes).
    Events {
        /// What is wrong.
        detail: String,
    },
    /// The trailer disagrees with the segment, or its seal is wrong.
    Trailer {
        /// What is wrong.
        detail: String,
    },
    /// Entries that each decode but together break a rule of the ledger that matters for
    /// money (LOG_FORMAT.md §6.5): a bid charged twice, a lease granted twice, a peer's
    /// witnessed `remote_seq` going back, a bucket received twice in one merge.
    Rule {
        /// Which rule, and where.
        detail: String,
    },
    /// Bytes follow the segment's trailer.
    Trailing {
        /// How many.
        bytes: u64,
    },
    /// The last entry's hash is not the expected head.
    Head {
        /// The head the caller expected.
        #[serde(with = "hex_hash")]
        expected: Hash,
        /// The archive's head.
        #[serde(with = "hex_hash")]
        found: Hash,
    },
}

impl Reason {
    /// A one-word code: `truncated`, `seq`, `hash`, …
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Truncated { .. } => "truncated",
            Reason::Header { .. } => "header",
            Reason::Malformed { .. } => "malformed",
            Reason::Seq { .. } => "seq",
            Reason::PrevHash { .. } => "prev_hash",
            Reason::Hash { .. } => "hash",
            Reason::MerkleRoot { .. } => "merkle_root",
            Reason::Events { .. } => "events",
            Reason::Trailer { .. } => "trailer",
            Reason::Trailing { .. } => "trailing",
            Reason::Rule { .. } => "rule",
            Reason::Head { .. } => "head",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Truncated { detail } => write!(f, "truncated: {detail}"),
            Reason::Header { detail } => write!(f, "bad segment header: {detail}"),
            Reason::Malformed { detail } => write!(f, "malformed: {detail}"),
            Reason::Seq { expected, found } => {
                write!(f, "seq gap: expected seq {expected}, found {found}")
            }
            Reason::PrevHash { expected, found } => write!(
                f,
                "prev_hash mismatch: previous entry's hash is {}, entry says {}",
                hex::encode(expected),
                hex::encode(found)
            ),
            Reason::Hash { stored, computed } => write!(
                f,
                "hash mismatch: stored {}, computed {}",
                hex::encode(stored),
                hex::encode(computed)
            ),
            Reason::MerkleRoot { stored, computed } => write!(
                f,
                "Merkle root mismatch: body commits to {}, events give {}",
                hex::encode(stored),
                hex::encode(computed)
            ),
            Reason::Events { detail } => write!(f, "events do not match the body: {detail}"),
            Reason::Trailer { detail } => write!(f, "bad trailer: {detail}"),
            Reason::Trailing { bytes } => write!(f, "{bytes} bytes after the trailer"),
            Reason::Rule { detail } => write!(f, "rule broken: {detail}"),
            Reason::Head { expected, found } => write!(
                f,
                "head mismatch: expected {}, archive ends at {}",
                hex::encode(expected),
                hex::encode(found)
            ),
        }
    }
}

/// The first thing in an archive that does not verify.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The segment file (its name).
    pub segment: String,
    /// Byte offset in that file of the record or part that failed.
    pub offset: u64,
    /// The entry named: the seq the failing record should have had. For a header, the segment's
    /// first seq; for a trailer, its last.
    pub seq: Option<u64>,
    /// What is wrong.
    #[serde(flatten)]
    pub reason: Reason,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.seq {
            Some(seq) => write!(
                f,
                "entry {seq} ({} at byte {}): {}",
                self.segment, self.offset, self.reason
            ),
            None => write!(
                f,
                "{} at byte {}: {}",
                self.segment, self.offset, self.reason
            ),
        }
    }
}

/// One record that verified, as handed to a [`Verifier`]'s observer.
pub struct Verified<'a> {
    /// Its seq.
    pub seq: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its `prev_hash`.
    pub prev_hash: &'a Hash,
    /// Its body bytes.
    pub body: &'a [u8],
    /// Its body digest.
    pub body_digest: &'a Hash,
    /// Its hash.
    pub hash: &'a Hash,
    /// Its events section (spend batches), already checked.
    pub events: &'a [u8],
}

/// What a verified archive holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The region whose log it is.
    pub region: Option<RegionId>,
    /// Segments verified.
    pub segments: u64,
    /// Entries verified.
    pub entries: u64,
    /// Spend events in spend batches.
    pub events: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Seq of the first entry.
    pub first_seq: Option<u64>,
    /// Seq of the last entry.
    pub last_seq: Option<u64>,
    /// Hash of the last entry (the head), hex.
    pub head_hash: Option<String>,
    /// True if the archive starts at entry 0 from the genesis value; false if it starts later,
    /// trusting its first segment's `prev_hash`.
    pub from_genesis: bool,
    /// Entries per kind.
    pub kinds: BTreeMap<Kind, u64>,
    /// Total spend settled in spend batches.
    pub settled: Money,
    /// Wall time spent verifying.
    #[serde(serialize_with = "ser_millis", rename = "elapsed_ms")]
    pub elapsed: Duration,
}

fn ser_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Verifies segments one after another, in log order, carrying the chain between them.
#[derive(Clone)]
pub struct Verifier {
    region: Option<RegionId>,
    next_seq: Option<u64>,
    head: Hash,
    leaves: Vec<Hash>,
    /// The bid numbers of the batch being checked.
    bids: Vec<u64>,
    rules: Rules,
    summary: Summary,
    started: Instant,
}

/// What the semantic rules remember between entries. Memory stays bounded: a lease is
/// remembered from its grant until it is closed for good (released or reclaimed with nothing
/// in doubt, or its last in-doubt part returned), after which no charge may settle under it.
#[derive(Clone, Default)]
struct Rules {
    /// Leases granted in the verified part of the log and not yet closed: the bids charged
    /// under each, and its in-doubt parts still held.
    leases: std::collections::HashMap<u64, OpenLease>,
    /// Per peer region, the last `remote_seq` witnessed.
    remote: BTreeMap<RegionId, u64>,
    /// Per campaign, the latest day a `day_retired` closed (one date per campaign, like the
    /// ledger's own mark: a day retired out of order may leave an earlier one live).
    retired: BTreeMap<crate::CampaignId, jiff::civil::Date>,
}

#[derive(Clone, Default)]
struct OpenLease {
    charged: std::collections::HashSet<u64>,
    /// In-doubt parts still held, once released or reclaimed.
    parts: Option<usize>,
}

impl Rules {
    /// Applies one decoded entry (`bids`: a spend batch's bid numbers).
    fn apply(&mut self, payload: &Payload, bids: &[u64]) -> Result<(), Reason> {
        let rule = |detail: String| Reason::Rule { detail };
        match payload {
            Payload::LeaseGranted(g) => {
                // A lease draws on its campaign's lifetime bucket and perhaps a day's: at least
                // one bucket, each once (its money is taken from each).
                if g.buckets.is_empty() {
                    return Err(rule(format!("lease {} draws on no bucket", g.lease)));
                }
                let mut seen = std::collections::BTreeSet::new();
                if let Some(b) = g.buckets.iter().find(|b| !seen.insert(**b)) {
                    return Err(rule(format!("lease {} lists bucket {b} twice", g.lease)));
                }
                // No lease takes a day on or before the campaign's latest retired day.
                if let Some(through) = self.retired.get(&g.campaign)
                    && let Some(d) = g.buckets.iter().find_map(|b| match b {
                        Bucket::Day(d) if d <= through => Some(d),
                        _ => None,
                    })
                {
                    return Err(rule(format!(
                        "lease {} draws on {}/day:{d}, retired through {through}",
                        g.lease, g.campaign
                    )));
                }
                if self
                    .leases
                    .insert(g.lease.0, OpenLease::default())
                    .is_some()
                {
                    return Err(rule(format!("lease {} granted twice", g.lease)));
                }
            }
            Payload::DayRetired(r) => {
                let Bucket::Day(day) = r.bucket else {
                    return Err(rule(format!(
                        "day_retired names {}/{}, not a day",
                        r.campaign, r.bucket
                    )));
                };
                self.reopened(&r.campaign, r.bucket, "retired again")?;
                let latest = self.retired.entry(r.campaign.clone()).or_insert(day);
                *latest = (*latest).max(day);
            }
            Payload::BudgetSet(b) => self.reopened(&b.campaign, b.bucket, "given a budget")?,
            Payload::RightsTransferred(t) => {
                self.reopened(&t.campaign, t.bucket, "given rights to a peer")?;
            }
            Payload::SpendBatch(b) => {
                // A lease granted before the verified part starts is not known here.
                if let Some(l) = self.leases.get_mut(&b.lease.0) {
                    for bid in bids {
                        if !l.charged.insert(*bid) {
                            return Err(rule(format!(
                                "bid {}.{bid} charged twice (one bid is charged at most once)",
                                b.lease
                            )));
                        }
                    }
                }
            }
            Payload::LeaseReleased(r) => self.close_parts(r.lease.0, r.in_doubt.len()),
            Payload::LeaseReclaimed(r) => {
                self.close_parts(r.lease.0, usize::from(r.in_doubt.micros() > 0));
            }
            Payload::InDoubtReturned(r) => {
                if let Some(l) = self.leases.get_mut(&r.lease.0) {
                    let left = l.parts.unwrap_or(1).saturating_sub(1);
                    l.parts = Some(left);
                    if left == 0 {
                        self.leases.remove(&r.lease.0);
                    }
                }
            }
            Payload::RemoteMerged(m) => {
                if let Some(last) = self.remote.get(&m.from)
                    && m.remote_seq < *last
                {
                    return Err(rule(format!(
                        "region {}'s witnessed remote_seq went back from {last} to {}",
                        m.from, m.remote_seq
                    )));
                }
                self.remote.insert(m.from.clone(), m.remote_seq);
                let mut seen = std::collections::BTreeSet::new();
                for r in &m.received {
                    if r.amount.micros() == 0 {
                        return Err(rule(format!(
                            "bucket {}/{} listed in a merge with nothing received",
                            r.campaign, r.bucket
                        )));
                    }
                    if !seen.insert((&r.campaign, r.bucket)) {
                        return Err(rule(format!(
                            "bucket {}/{} received twice in one merge",
                            r.campaign, r.bucket
                        )));
                    }
                    self.reopened(&r.campaign, r.bucket, "received in a merge")?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A retired day stays closed: no entry after its `day_retired` names the campaign's latest
    /// retired day (earlier days may be live still, retired out of order; grants, which refuse
    /// every day up to it, are checked apart).
    fn reopened(
        &self,
        campaign: &crate::CampaignId,
        bucket: Bucket,
        what: &str,
    ) -> Result<(), Reason> {
        match (bucket, self.retired.get(campaign)) {
            (Bucket::Day(d), Some(through)) if d == *through => Err(Reason::Rule {
                detail: format!("{campaign}/day:{d} {what} after its day_retired"),
            }),
            _ => Ok(()),
        }
    }

    /// A lease released or reclaimed with `parts` in-doubt parts: forgotten once none is held.
    fn close_parts(&mut self, lease: u64, parts: usize) {
        if parts == 0 {
            self.leases.remove(&lease);
        } else if let Some(l) = self.leases.get_mut(&lease) {
            l.parts = Some(parts);
        }
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

struct SegmentCtx<'n> {
    name: &'n str,
}

impl SegmentCtx<'_> {
    fn fail(&self, offset: usize, seq: Option<u64>, reason: Reason) -> Failure {
        Failure {
            segment: self.name.to_string(),
            offset: u64::try_from(offset).unwrap_or(u64::MAX),
            seq,
            reason,
        }
    }
}

fn frame_reason(e: FrameError) -> Reason {
    match e {
        FrameError::Truncated(detail) => Reason::Truncated { detail },
        FrameError::Malformed(detail) => Reason::Malformed { detail },
        FrameError::Header(detail) => Reason::Header { detail },
        FrameError::Trailer(detail) => Reason::Trailer { detail },
        FrameError::Trailing(n) => Reason::Trailing {
            bytes: u64::try_from(n).unwrap_or(u64::MAX),
        },
        FrameError::TrailerCut(detail) => Reason::Truncated { detail },
    }
}

fn to_hash(b: &[u8]) -> Hash {
    let mut h = [0u8; 32];
    // Callers pass slices the reader took as exactly 32 bytes.
    h.copy_from_slice(&b[..32]);
    h
}

impl Verifier {
    /// A verifier expecting the archive's first segment next.
    pub fn new() -> Verifier {
        Verifier {
            region: None,
            next_seq: None,
            head: genesis(),
            leaves: Vec::new(),
            bids: Vec::new(),
            rules: Rules::default(),
            summary: Summary::default(),
            started: Instant::now(),
        }
    }

    /// What was verified so far.
    pub fn summary(&self) -> Summary {
        let mut s = self.summary.clone();
        s.region = self.region.clone();
        s.elapsed = self.started.elapsed();
        // The hash of the last entry that verified: on a failure, the head of the part that
        // did (`verified_before` in `budgetctl audit verify --json`).
        if s.entries > 0 {
            s.head_hash = Some(hex::encode(self.head));
        }
        s
    }

    /// The hash of the last entry verified (genesis before any).
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Verifies the next segment, file `name` holding `bytes`.
    pub fn segment(&mut self, name: &str, bytes: &[u8]) -> Result<(), Failure> {
        self.segment_observed(name, bytes, &mut |_| {})
    }

    /// [`Verifier::segment`], calling `observe` with every record once it has verified.
    pub fn segment_observed(
        &mut self,
        name: &str,
        bytes: &[u8],
        observe: &mut dyn FnMut(&Verified<'_>),
    ) -> Result<(), Failure> {
        let ctx = SegmentCtx { name };
        let name_seq = first_seq_from_file_name(name);
        let named = name_seq.or(self.next_seq);
        let (header, header_len) =
            read_header(bytes).map_err(|e| ctx.fail(0, named, frame_reason(e)))?;
        let first = header.first_seq;
        let header_fail = |detail: String| {
            ctx.fail(
                0,
                Some(name_seq.unwrap_or(first)),
                Reason::Header { detail },
            )
        };
        // The name must be the one the header gives: REGION-SEQ.seg (a copy of a segment
        // under another name is not part of the archive's log).
        let want = super::segment::segment_file_name(&header.region, first);
        if name != want {
            return Err(header_fail(format!(
                "file name {name} is not {want}, the name its header gives"
            )));
        }
        match &self.region {
            Some(r) if *r != header.region => {
                return Err(header_fail(format!(
                    "region {} differs from the archive's {r}",
                    header.region
                )));
            }
            _ => self.region = Some(header.region.clone()),
        }
        match self.next_seq {
            Some(expected) if expected != first => {
                return Err(ctx.fail(
                    0,
                    Some(expected),
                    Reason::Seq {
                        expected,
                        found: first,
                    },
                ));
            }
            Some(_) if header.prev_hash != self.head => {
                return Err(header_fail(format!(
                    "prev_hash {} is not the previous segment's head {}",
                    hex::encode(header.prev_hash),
                    hex::encode(self.head)
                )));
            }
            Some(_) => {}
            None if first == 0 && header.prev_hash != genesis() => {
                return Err(header_fail(
                    "segment starts at seq 0 but prev_hash is not the genesis value".into(),
                ));
            }
            None => {
                self.summary.from_genesis = first == 0;
                self.summary.first_seq = Some(first);
                self.head = header.prev_hash;
            }
        }
        let mut expected = first;
        let mut pos = header_len;
        loop {
            let item = read_item(bytes, pos).map_err(|e| {
                // A damaged trailer, bytes after it, or a file cut inside it: blamed on the
                // segment's last entry, like any trailer error.
                let seq = match e {
                    FrameError::Trailer(_)
                    | FrameError::Trailing(_)
                    | FrameError::TrailerCut(_) => expected
                        .checked_sub(1)
                        .filter(|l| *l >= first)
                        .unwrap_or(first),
                    _ => expected,
                };
                ctx.fail(pos, Some(seq), frame_reason(e))
            })?;
            match item {
                Item::Record(rec) => {
                    self.record(&rec, expected, observe)
                        .map_err(|reason| ctx.fail(rec.offset, Some(expected), reason))?;
                    expected += 1;
                    pos = rec.end;
                }
                Item::Trailer(t, at) => {
                    let last = expected.checked_sub(1).filter(|l| *l >= first);
                    let bad = |detail: String| {
                        ctx.fail(at, last.or(Some(first)), Reason::Trailer { detail })
                    };
                    let Some(last) = last else {
                        return Err(bad("segment holds no entries".into()));
                    };
                    let count = last - first + 1;
                    if t.first_seq != first || t.last_seq != last || t.entry_count != count {
                        return Err(bad(format!(
                            "trailer says seqs {}..={} ({} entries), segment holds {first}..={last} ({count})",
                            t.first_seq, t.last_seq, t.entry_count
                        )));
                    }
                    if t.head_hash != self.head {
                        return Err(bad(format!(
                            "head hash {} is not the last entry's {}",
                            hex::encode(t.head_hash),
                            hex::encode(self.head)
                        )));
                    }
                    let computed = seal(
                        &header.digest,
                        &bytes[at..at + super::segment::TRAILER_LEN - 32],
                    );
                    if t.seal != computed {
                        return Err(bad(format!(
                            "seal is {}, computed {}",
                            hex::encode(t.seal),
                            hex::encode(computed)
                        )));
                    }
                    break;
                }
            }
        }
        self.next_seq = Some(expected);
        self.summary.segments += 1;
        self.summary.bytes += u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        Ok(())
    }

    fn record(
        &mut self,
        rec: &RecordRef<'_>,
        expected: u64,
        observe: &mut dyn FnMut(&Verified<'_>),
    ) -> Result<(), Reason> {
        let malformed = |e: super::codec::DecodeError| Reason::Malformed {
            detail: e.to_string(),
        };
        let body = BodyRef::parse(rec.body).map_err(malformed)?;
        if body.seq != expected {
            return Err(Reason::Seq {
                expected,
                found: body.seq,
            });
        }
        let prev = to_hash(rec.prev_hash);
        if prev != self.head {
            return Err(Reason::PrevHash {
                expected: self.head,
                found: prev,
            });
        }
        let digest = body_digest(rec.body);
        let computed = entry_hash(&prev, &digest);
        let stored = to_hash(rec.hash);
        if stored != computed {
            return Err(Reason::Hash { stored, computed });
        }
        let (payload, batch) = Payload::decode(body.kind, body.payload).map_err(malformed)?;
        match batch {
            Some(summary) => {
                let total = self.check_events(rec.events, summary.count)?;
                if total != summary.total {
                    return Err(Reason::Events {
                        detail: format!("events total {total}, body says {}", summary.total),
                    });
                }
                let root = merkle::root(&self.leaves);
                if root != summary.merkle_root {
                    return Err(Reason::MerkleRoot {
                        stored: summary.merkle_root,
                        computed: root,
                    });
                }
                self.summary.events += summary.count as u64;
                self.summary.settled =
                    self.summary
                        .settled
                        .checked_add(total)
                        .map_err(|_| Reason::Events {
                            detail: "settled total overflows i64 micros".into(),
                        })?;
            }
            None if !rec.events.is_empty() => {
                return Err(Reason::Malformed {
                    detail: format!(
                        "{} bytes of events in a {} entry",
                        rec.events.len(),
                        body.kind.name()
                    ),
                });
            }
            None => {}
        }
        if batch.is_none() {
            self.bids.clear();
        }
        self.rules.apply(&payload, &self.bids)?;
        self.head = computed;
        self.summary.entries += 1;
        self.summary.last_seq = Some(expected);
        *self.summary.kinds.entry(body.kind).or_insert(0) += 1;
        observe(&Verified {
            seq: expected,
            kind: body.kind,
            prev_hash: &prev,
            body: rec.body,
            body_digest: &digest,
            hash: &computed,
            events: rec.events,
        });
        Ok(())
    }

    /// Checks the events section: `count` canonical events and nothing else. Leaves their leaf
    /// hashes in `self.leaves` and returns their total.
    fn check_events(&mut self, mut events: &[u8], count: usize) -> Result<Money, Reason> {
        self.leaves.clear();
        self.bids.clear();
        let mut total = Money::ZERO;
        while !events.is_empty() {
            let n = self.leaves.len();
            if n == count {
                return Err(Reason::Events {
                    detail: format!("more than the {count} events the body says"),
                });
            }
            let Some((len, rest)) = events.split_first_chunk::<2>() else {
                return Err(Reason::Events {
                    detail: format!("event {n}: length cut short"),
                });
            };
            let len = usize::from(u16::from_be_bytes(*len));
            let Some((event, rest)) = rest.split_at_checked(len) else {
                return Err(Reason::Events {
                    detail: format!("event {n}: {len} bytes announced, {} left", rest.len()),
                });
            };
            let amount = SpendEvent::check(event).map_err(|e| Reason::Events {
                detail: format!("event {n}: {e}"),
            })?;
            total = total.checked_add(amount).map_err(|_| Reason::Events {
                detail: "events total overflows".into(),
            })?;
            self.leaves.push(merkle::leaf_hash(event));
            // The event ends with its bid number and amount (8 bytes each), already checked.
            if let Some(b) = event
                .len()
                .checked_sub(16)
                .and_then(|i| event.get(i..i + 8))
            {
                self.bids
                    .push(u64::from_be_bytes(b.try_into().unwrap_or([0; 8])));
            }
            events = rest;
        }
        if self.leaves.len() != count {
            return Err(Reason::Events {
                detail: format!(
                    "{} events present, the body says {count}",
                    self.leaves.len()
                ),
            });
        }
        Ok(total)
    }

    /// Verifies the next record of a live log (one streamed by a coordinator rather than read
    /// from a segment file), with the same checks as inside a segment. A live log starts at
    /// seq 0 from the genesis value. `source` names the log in failures.
    pub fn live_record(
        &mut self,
        source: &str,
        region: &RegionId,
        bytes: &[u8],
    ) -> Result<(), Failure> {
        let expected = match self.next_seq {
            Some(n) => n,
            None => {
                self.summary.from_genesis = true;
                self.summary.first_seq = Some(0);
                self.region = Some(region.clone());
                0
            }
        };
        let fail = |reason| Failure {
            segment: source.to_string(),
            offset: 0,
            seq: Some(expected),
            reason,
        };
        match read_item(bytes, 0) {
            Ok(Item::Record(r)) if r.end == bytes.len() => {
                self.record(&r, expected, &mut |_| {}).map_err(fail)?;
                self.next_seq = Some(expected + 1);
                self.summary.bytes += u64::try_from(bytes.len()).unwrap_or(u64::MAX);
                Ok(())
            }
            Ok(_) => Err(fail(Reason::Malformed {
                detail: "not exactly one record".into(),
            })),
            Err(e) => Err(fail(frame_reason(e))),
        }
    }

    /// Ends verification: the summary, with the head, or a failure if the archive's head is not
    /// `expect_head`.
    pub fn finish(self, expect_head: Option<&Hash>) -> Result<Summary, Failure> {
        if let Some(expected) = expect_head
            && *expected != self.head
        {
            return Err(Failure {
                segment: String::new(),
                offset: 0,
                seq: self.summary.last_seq,
                reason: Reason::Head {
                    expected: *expected,
                    found: self.head,
                },
            });
        }
        Ok(self.summary())
    }
}

/// Why an archive could not be verified at all (as opposed to: it did not verify).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Nothing to verify.
    #[error("{0}: no segment files (*.{SEGMENT_EXT}) found")]
    NoSegments(PathBuf),
}

/// The segment files under `path` (a directory of segments, or one segment file), in log order
/// (by name: names carry the zero-padded first seq).
pub fn segment_files(path: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let io = |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        if p.extension().is_some_and(|e| e == SEGMENT_EXT) && p.is_file() {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(ArchiveError::NoSegments(path.to_path_buf()));
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Verifies every segment under `path`, calling `observe` for each record that verifies.
/// `Ok(Err(failure))` is an archive that does not verify (with what did verify before it);
/// `Err` is an archive that could not be read.
pub fn verify_path_observed(
    path: &Path,
    expect_head: Option<&Hash>,
    observe: &mut dyn FnMut(&Verified<'_>),
) -> Result<Result<Summary, (Failure, Summary)>, ArchiveError> {
    let mut v = Verifier::new();
    for file in segment_files(path)? {
        let bytes = std::fs::read(&file).map_err(|source| ArchiveError::Io {
            path: file.clone(),
            source,
        })?;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(f) = v.segment_observed(&name, &bytes, observe) {
            return Ok(Err((f, v.summary())));
        }
    }
    let partial = v.summary();
    Ok(v.finish(expect_head).map_err(|f| (f, partial)))
}

/// [`verify_path_observed`] without an observer.
pub fn verify_path(
    path: &Path,
    expect_head: Option<&Hash>,
) -> Result<Result<Summary, (Failure, Summary)>, ArchiveError> {
    verify_path_observed(path, expect_head, &mut |_| {})
}
