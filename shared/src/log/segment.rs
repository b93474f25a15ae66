//! Sealed segment files: a header, framed entry records, a trailer.
//!
//! ```text
//! header  = magic "BUDGLOG1" ‖ format u16 ‖ region str ‖ first_seq u64 ‖ prev_hash[32]
//!           ‖ header_digest[32]            (SHA-256("BUDGETLOG-V1-HEADER" ‖ the fields before it))
//! record  = record_len u32 ‖ prev_hash[32] ‖ body ‖ entry_hash[32] ‖ events
//!           events = (event_len u16 ‖ event bytes)*, only in spend batches
//! trailer = 0xFFFFFFFF ‖ magic "BUDGEND1" ‖ first_seq u64 ‖ last_seq u64 ‖ entry_count u64
//!           ‖ head_hash[32] ‖ seal[32]     (SHA-256("BUDGETLOG-V1-SEAL" ‖ header_digest ‖ the
//!                                            trailer bytes before the seal))
//! ```
//!
//! Every byte of a segment is covered by some check: the header by its digest, each record by
//! its entry hash, seq, chain link and Merkle root, the trailer by its seal and by agreeing with
//! the records. So a changed byte is always found, and blamed on the part it is in. The reader
//! takes any bytes without panicking.

use sha2::{Digest, Sha256};

use crate::id::RegionId;

use super::Hash;
use super::codec::{DecodeError, Reader, Writer};
use super::entry::{EncodeError, Entry, Payload, body_digest, entry_hash};

/// First bytes of a segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"BUDGLOG1";
/// Bytes 4..12 of a trailer.
pub const TRAILER_MAGIC: &[u8; 8] = b"BUDGEND1";
/// The segment format this code writes and reads.
pub const SEGMENT_FORMAT: u16 = 1;
/// The `record_len` value that opens a trailer instead of a record.
pub const TRAILER_MARKER: u32 = 0xFFFF_FFFF;
/// A trailer's length in bytes.
pub const TRAILER_LEN: usize = 4 + 8 + 8 + 8 + 8 + 32 + 32;
/// The longest record.
pub const RECORD_MAX_BYTES: usize = 16 << 20;
/// Domain tag of the header digest.
pub const TAG_HEADER: &[u8] = b"BUDGETLOG-V1-HEADER";
/// Domain tag of the seal.
pub const TAG_SEAL: &[u8] = b"BUDGETLOG-V1-SEAL";
/// File-name extension of segments.
pub const SEGMENT_EXT: &str = "seg";

/// The file name of the segment of `region` that starts at `first_seq`:
/// `REGION-<first_seq, 20 digits>.seg`, so that names sort in log order.
pub fn segment_file_name(region: &RegionId, first_seq: u64) -> String {
    format!("{region}-{first_seq:020}.{SEGMENT_EXT}")
}

/// The region and first seq a segment file name claims, if it has the form
/// `REGION-SSSSSSSSSSSSSSSSSSSS.seg` (the seq zero-padded to 20 digits).
pub fn parse_file_name(name: &str) -> Option<(&str, u64)> {
    let stem = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    let (region, digits) = stem.rsplit_once('-')?;
    if region.is_empty() || digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((region, digits.parse().ok()?))
}

/// The first seq a segment file name claims, if it is one.
pub fn first_seq_from_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_EXT)?.strip_suffix('.')?;
    let (_, digits) = stem.rsplit_once('-')?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// A segment's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The region whose log this is.
    pub region: RegionId,
    /// Seq of the first entry.
    pub first_seq: u64,
    /// Hash of the entry before it (genesis for seq 0).
    pub prev_hash: Hash,
    /// The header's digest, which the seal covers.
    pub digest: Hash,
}

/// A segment's trailer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Seq of the first entry.
    pub first_seq: u64,
    /// Seq of the last entry.
    pub last_seq: u64,
    /// Number of entries.
    pub entry_count: u64,
    /// Hash of the last entry.
    pub head_hash: Hash,
    /// The seal over header and trailer.
    pub seal: Hash,
}

/// One record as it lies in the file, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Byte offset of the record (its `record_len`) in the file.
    pub offset: usize,
    /// Offset one past its last byte.
    pub end: usize,
    /// The stored `prev_hash`.
    pub prev_hash: &'a [u8],
    /// The body bytes.
    pub body: &'a [u8],
    /// The stored entry hash.
    pub hash: &'a [u8],
    /// The events section (empty unless a spend batch).
    pub events: &'a [u8],
}

/// What comes next in a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// An entry record.
    Record(RecordRef<'a>),
    /// The trailer, and the offset where it starts.
    Trailer(Trailer, usize),
}

/// Why a segment's framing could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The file ends inside a record, or where a record or trailer should be.
    #[error("truncated: {0}")]
    Truncated(String),
    /// Bytes that are not a record.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The header is wrong.
    #[error("bad header: {0}")]
    Header(String),
    /// The trailer is wrong.
    #[error("bad trailer: {0}")]
    Trailer(String),
    /// This many bytes follow the trailer.
    #[error("{0} bytes after the trailer")]
    Trailing(usize),
    /// The file ends inside its trailer.
    #[error("truncated: {0}")]
    TrailerCut(String),
}

/// Reads the header at the start of `bytes`; returns it and its length.
pub fn read_header(bytes: &[u8]) -> Result<(Header, usize), FrameError> {
    let mut r = Reader::new(bytes);
    let trunc = |e: DecodeError| FrameError::Truncated(format!("header: {e}"));
    let magic = r.take(8, "magic").map_err(trunc)?;
    if magic != SEGMENT_MAGIC {
        return Err(FrameError::Header(format!(
            "magic is {:?}, not {:?}",
            hex::encode(magic),
            "BUDGLOG1"
        )));
    }
    let format = r.u16("format").map_err(trunc)?;
    if format != SEGMENT_FORMAT {
        return Err(FrameError::Header(format!(
            "unknown segment format {format}"
        )));
    }
    let region = r.str("region").map_err(|e| match e {
        DecodeError::Short { .. } => trunc(e),
        e => FrameError::Header(e.to_string()),
    })?;
    let region = RegionId::new(region).map_err(|e| FrameError::Header(e.to_string()))?;
    let first_seq = r.u64("first seq").map_err(trunc)?;
    let prev_hash = r.hash("prev hash").map_err(trunc)?;
    let fields_len = r.pos();
    let digest = r.hash("header digest").map_err(trunc)?;
    let computed = header_digest(&bytes[..fields_len]);
    if digest != computed {
        return Err(FrameError::Header(format!(
            "header digest is {}, computed {}",
            hex::encode(digest),
            hex::encode(computed)
        )));
    }
    Ok((
        Header {
            region,
            first_seq,
            prev_hash,
            digest,
        },
        r.pos(),
    ))
}

fn header_digest(fields: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(TAG_HEADER);
    h.update(fields);
    h.finalize().into()
}

/// The seal of a trailer: over the header digest and the trailer bytes before the seal.
pub fn seal(header_digest: &Hash, trailer_fields: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(TAG_SEAL);
    h.update(header_digest);
    h.update(trailer_fields);
    h.finalize().into()
}

/// Reads the record or trailer at `pos`.
pub fn read_item(bytes: &[u8], pos: usize) -> Result<Item<'_>, FrameError> {
    let rest = bytes.get(pos..).unwrap_or(&[]);
    if rest.is_empty() {
        return Err(FrameError::Truncated(
            "the segment ends without a trailer".into(),
        ));
    }
    if rest.len() < 4 {
        return Err(FrameError::Truncated(format!(
            "{} stray bytes at the end",
            rest.len()
        )));
    }
    let len_bytes = [rest[0], rest[1], rest[2], rest[3]];
    let record_len = u32::from_be_bytes(len_bytes);
    // The trailer is the last TRAILER_LEN bytes; it is recognised by its marker or its magic, so
    // that a damaged trailer is reported as such and not as a record.
    let looks_like_trailer = rest.len() == TRAILER_LEN
        && (record_len == TRAILER_MARKER || &rest[4..12] == TRAILER_MAGIC);
    if looks_like_trailer {
        return read_trailer(rest).map(|t| Item::Trailer(t, pos));
    }
    if record_len == TRAILER_MARKER {
        // A trailer marker with more than a trailer's bytes left: something follows the
        // trailer. With fewer: the file was cut inside its trailer.
        if rest.len() > TRAILER_LEN && rest.get(4..12) == Some(TRAILER_MAGIC) {
            return Err(FrameError::Trailing(rest.len() - TRAILER_LEN));
        }
        if rest.len() > TRAILER_LEN {
            return Err(FrameError::Malformed(format!(
                "record length is the trailer marker, with {} bytes left and no trailer magic",
                rest.len()
            )));
        }
        return Err(FrameError::TrailerCut(format!(
            "trailer of {} bytes, {TRAILER_LEN} expected",
            rest.len()
        )));
    }
    let record_len = usize::try_from(record_len).unwrap_or(usize::MAX);
    if record_len > RECORD_MAX_BYTES {
        return Err(FrameError::Malformed(format!(
            "record length {record_len} is more than the {RECORD_MAX_BYTES} allowed"
        )));
    }
    let Some(record) = rest.get(4..4 + record_len) else {
        return Err(FrameError::Truncated(format!(
            "record of {record_len} bytes, only {} left in the file",
            rest.len() - 4
        )));
    };
    let mut r = Reader::new(record);
    let malformed = |e: DecodeError| FrameError::Malformed(e.to_string());
    let prev_hash = r.take(32, "prev hash").map_err(malformed)?;
    let body_start = r.pos();
    // The body's length is in its own header: 37 bytes of fixed fields, then payload_len.
    r.take(super::entry::BODY_HEADER_LEN - 4, "body")
        .map_err(malformed)?;
    let payload_len = r.u32("payload length").map_err(malformed)?;
    r.take(
        usize::try_from(payload_len).unwrap_or(usize::MAX),
        "payload",
    )
    .map_err(malformed)?;
    let body = &record[body_start..r.pos()];
    let hash = r.take(32, "entry hash").map_err(malformed)?;
    let events = &record[r.pos()..];
    Ok(Item::Record(RecordRef {
        offset: pos,
        end: pos + 4 + record_len,
        prev_hash,
        body,
        hash,
        events,
    }))
}

fn read_trailer(t: &[u8]) -> Result<Trailer, FrameError> {
    let mut r = Reader::new(t);
    // Lengths were checked by the caller: every read below succeeds.
    let bad = |e: DecodeError| FrameError::Trailer(e.to_string());
    let marker = r.u32("marker").map_err(bad)?;
    let magic = r.take(8, "magic").map_err(bad)?;
    if marker != TRAILER_MARKER || magic != TRAILER_MAGIC {
        return Err(FrameError::Trailer(format!(
            "trailer opens with {:08x} {}, not ffffffff {}",
            marker,
            hex::encode(magic),
            hex::encode(TRAILER_MAGIC)
        )));
    }
    Ok(Trailer {
        first_seq: r.u64("first seq").map_err(bad)?,
        last_seq: r.u64("last seq").map_err(bad)?,
        entry_count: r.u64("entry count").map_err(bad)?,
        head_hash: r.hash("head hash").map_err(bad)?,
        seal: r.hash("seal").map_err(bad)?,
    })
}

/// Why a segment could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The entry's seq does not follow the segment's last.
    #[error("entry seq {found} does not follow {expected}")]
    Seq {
        /// Expected seq.
        expected: u64,
        /// The entry's.
        found: u64,
    },
    /// The entry's `prev_hash` is not the hash of the segment's last entry.
    #[error("entry {seq} does not link to the previous entry's hash")]
    PrevHash {
        /// The entry.
        seq: u64,
    },
    /// The entry could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A segment must hold at least one entry.
    #[error("a sealed segment must hold at least one entry")]
    Empty,
    /// The record would be too long.
    #[error("record of {0} bytes is more than the {RECORD_MAX_BYTES} allowed")]
    TooLong(usize),
    /// Bytes given as a record are not one.
    #[error("not a single well-formed record")]
    NotARecord,
}

/// The record of `entry` exactly as it lies in a segment (`record_len` first), and the entry's
/// hash. The coordinator stores these per seq and seals runs of them into segment files.
pub fn encode_record(entry: &Entry) -> Result<(Vec<u8>, Hash), WriteError> {
    let body = entry.body()?;
    let hash = entry_hash(&entry.prev_hash, &body_digest(&body));
    let mut rec = Writer::new();
    rec.hash(&entry.prev_hash);
    rec.raw(&body);
    rec.hash(&hash);
    if let Payload::SpendBatch(b) = &entry.payload {
        for e in &b.events {
            // Event strings are ≤ 64 + 2 × 255 bytes: far below u16::MAX.
            rec.u16(u16::try_from(e.encoded_len()).unwrap_or(u16::MAX));
            e.encode(&mut rec);
        }
    }
    let rec = rec.into_bytes();
    if rec.len() > RECORD_MAX_BYTES {
        return Err(WriteError::TooLong(rec.len()));
    }
    let mut out = Vec::with_capacity(4 + rec.len());
    // Checked against RECORD_MAX_BYTES (16 MiB) just above.
    out.extend_from_slice(&u32::try_from(rec.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&rec);
    Ok((out, hash))
}

/// Builds one segment in memory, entry by entry, checking that they chain.
pub struct SegmentWriter {
    buf: Vec<u8>,
    header_digest: Hash,
    first_seq: u64,
    next_seq: u64,
    head: Hash,
}

impl SegmentWriter {
    /// A segment of `region` whose first entry is `first_seq`, following `prev_hash`.
    pub fn new(region: &RegionId, first_seq: u64, prev_hash: Hash) -> SegmentWriter {
        let mut w = Writer::new();
        w.raw(SEGMENT_MAGIC);
        w.u16(SEGMENT_FORMAT);
        w.str(region.as_str());
        w.u64(first_seq);
        w.hash(&prev_hash);
        let mut buf = w.into_bytes();
        let digest = header_digest(&buf);
        buf.extend_from_slice(&digest);
        SegmentWriter {
            buf,
            header_digest: digest,
            first_seq,
            next_seq: first_seq,
            head: prev_hash,
        }
    }

    /// Entries written so far.
    pub fn len(&self) -> u64 {
        self.next_seq - self.first_seq
    }

    /// True before the first entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes so far.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// The hash of the last entry written (or the segment's `prev_hash`).
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Appends `entry`, which must be the next in the chain; returns its hash.
    pub fn push(&mut self, entry: &Entry) -> Result<Hash, WriteError> {
        if entry.seq != self.next_seq {
            return Err(WriteError::Seq {
                expected: self.next_seq,
                found: entry.seq,
            });
        }
        if entry.prev_hash != self.head {
            return Err(WriteError::PrevHash { seq: entry.seq });
        }
        let (record, hash) = encode_record(entry)?;
        self.buf.extend_from_slice(&record);
        self.next_seq += 1;
        self.head = hash;
        Ok(hash)
    }

    /// Appends a record made by [`encode_record`] (as stored, `record_len` first) for the next
    /// entry; returns the entry hash the record carries. Its seq and link to the previous entry
    /// are checked; its hash is not recomputed here (the verifier does that).
    pub fn push_record(&mut self, record: &[u8]) -> Result<Hash, WriteError> {
        let Ok(Item::Record(r)) = read_item(record, 0) else {
            return Err(WriteError::NotARecord);
        };
        let seq = super::entry::BodyRef::parse(r.body)
            .map(|b| b.seq)
            .map_err(|_| WriteError::NotARecord)?;
        if seq != self.next_seq {
            return Err(WriteError::Seq {
                expected: self.next_seq,
                found: seq,
            });
        }
        if r.prev_hash != self.head || r.end != record.len() {
            return Err(WriteError::PrevHash { seq });
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(r.hash);
        self.buf.extend_from_slice(record);
        self.next_seq += 1;
        self.head = hash;
        Ok(hash)
    }

    /// Writes the trailer and returns the segment's bytes.
    pub fn seal(self) -> Result<Vec<u8>, WriteError> {
        if self.is_empty() {
            return Err(WriteError::Empty);
        }
        let mut t = Writer::new();
        t.u32(TRAILER_MARKER);
        t.raw(TRAILER_MAGIC);
        t.u64(self.first_seq);
        t.u64(self.next_seq - 1);
        t.u64(self.len());
        t.hash(&self.head);
        let mut t = t.into_bytes();
        let s = seal(&self.header_digest, &t);
        t.extend_from_slice(&s);
        let mut buf = self.buf;
        buf.extend_from_slice(&t);
        Ok(buf)
    }
}
