//! Integration tests of `shared`: the financial log against real archives.

mod archive;
mod cases;
mod proof;
mod tamper;
mod vectors;

use std::path::PathBuf;

use shared::log::segment::{Item, read_header, read_item};
use shared::log::verify::{Failure, Summary, Verifier};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `testdata/sample-archive`.
pub fn sample_dir() -> PathBuf {
    repo().join("testdata/sample-archive")
}

/// The sample archive's segments, in log order: (file name, bytes).
pub fn sample_segments() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(sample_dir())
        .expect("testdata/sample-archive exists")
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .filter(|(n, _)| n.ends_with(".seg"))
        .collect();
    out.sort();
    out
}

/// Verifies segments held in memory, in order.
pub fn verify_segments(segs: &[(String, Vec<u8>)]) -> Result<Summary, Failure> {
    let mut v = Verifier::new();
    for (name, bytes) in segs {
        v.segment(name, bytes)?;
    }
    v.finish(None)
}

/// Where things are in an intact segment.
#[derive(Debug)]
pub struct Layout {
    pub header_len: usize,
    /// (start, end, seq) of each record.
    pub records: Vec<(usize, usize, u64)>,
    pub trailer_start: usize,
}

impl Layout {
    pub fn of(bytes: &[u8]) -> Layout {
        let (header, header_len) = read_header(bytes).expect("intact header");
        let mut records = Vec::new();
        let mut pos = header_len;
        let mut seq = header.first_seq;
        loop {
            match read_item(bytes, pos).expect("intact segment") {
                Item::Record(r) => {
                    records.push((r.offset, r.end, seq));
                    seq += 1;
                    pos = r.end;
                }
                Item::Trailer(_, at) => {
                    return Layout {
                        header_len,
                        records,
                        trailer_start: at,
                    };
                }
            }
        }
    }

    pub fn first_seq(&self) -> u64 {
        self.records[0].2
    }

    pub fn last_seq(&self) -> u64 {
        self.records.last().unwrap().2
    }

    /// The seq a change of the byte at `offset` must be blamed on.
    pub fn blame(&self, offset: usize) -> u64 {
        if offset < self.header_len {
            return self.first_seq();
        }
        if offset >= self.trailer_start {
            return self.last_seq();
        }
        let i = self.records.partition_point(|(_, end, _)| *end <= offset);
        self.records[i].2
    }
}
