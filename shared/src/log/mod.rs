//! The financial log: every applied command that moves money appends one entry to its region's
//! log, and the entries form a SHA-256 hash chain. `LOG_FORMAT.md` at the repository root is the
//! specification; this module is its reference implementation.
//!
//! - [`codec`]: the canonical byte primitives.
//! - [`entry`]: entries, payload kinds, body digests and entry hashes.
//! - [`merkle`]: the RFC 6962 Merkle tree over a spend batch's events.
//! - [`segment`]: sealed segment files (header, records, trailer) and their reader and writer.
//! - [`verify`]: checks an archive and names the first entry that fails, and why.
//! - [`proof`]: proofs that one charge is in the log, checked offline against a head hash.
//! - [`record`]: one stored record back into its entry, for tools that read a live log.
//! - [`sha`]: one-shot SHA-256 over a few slices (the hot path's hash).
//! - [`sample`]: a deterministic generator of realistic archives, for tests, demos and benches.

pub mod codec;
pub mod entry;
pub mod merkle;
pub mod proof;
pub mod record;
pub mod sample;
pub mod segment;
pub mod sha;
#[cfg(feature = "tls")]
pub mod signed;
pub mod verify;

pub use entry::{Entry, Kind, Payload, SpendEvent, genesis};
pub use segment::SegmentWriter;
pub use verify::{Failure, Reason, Summary, Verifier, verify_path};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Reads 64 hex digits (either case) as a hash.
pub fn parse_hash(s: &str) -> Result<Hash, String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut out)
        .map_err(|_| format!("{s:?} is not a hash (64 hexadecimal digits)"))?;
    Ok(out)
}

/// Appends entries to a region's chain: assigns seqs and links hashes. The state machine holds
/// one; so does the sample generator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    next_seq: u64,
    head: Hash,
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new()
    }
}

impl Chain {
    /// An empty chain: the next entry is seq 0 and links to [`genesis`].
    pub fn new() -> Chain {
        Chain {
            next_seq: 0,
            head: genesis(),
        }
    }

    /// A chain whose last entry was `next_seq − 1` with hash `head`.
    pub fn resume(next_seq: u64, head: Hash) -> Chain {
        Chain { next_seq, head }
    }

    /// The seq the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last entry (genesis if none).
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Makes the next entry from its fields and payload, and advances the chain. Nothing changes
    /// if the payload cannot be encoded.
    pub fn append(
        &mut self,
        raft_term: u64,
        raft_index: u64,
        time_us: i64,
        payload: Payload,
    ) -> Result<(Entry, Hash), entry::EncodeError> {
        let entry = self.next_entry(raft_term, raft_index, time_us, payload);
        let hash = entry.hash()?;
        Ok((self.advance(entry, hash), hash))
    }

    /// Like [`Chain::append`], and also returns the entry's stored record
    /// ([`segment::encode_record`]), encoding the entry once for both.
    pub fn append_record(
        &mut self,
        raft_term: u64,
        raft_index: u64,
        time_us: i64,
        payload: Payload,
    ) -> Result<(Entry, Hash, Vec<u8>), segment::WriteError> {
        let entry = self.next_entry(raft_term, raft_index, time_us, payload);
        let (record, hash) = segment::encode_record(&entry)?;
        Ok((self.advance(entry, hash), hash, record))
    }

    fn next_entry(&self, raft_term: u64, raft_index: u64, time_us: i64, payload: Payload) -> Entry {
        Entry {
            seq: self.next_seq,
            prev_hash: self.head,
            raft_term,
            raft_index,
            time_us,
            payload,
        }
    }

    fn advance(&mut self, entry: Entry, hash: Hash) -> Entry {
        self.next_seq += 1;
        self.head = hash;
        entry
    }
}
