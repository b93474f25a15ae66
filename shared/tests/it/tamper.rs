//! Damage an archive every way we can think of; verification must catch it and name the right
//! entry.

use proptest::prelude::*;
use shared::log::Hash;
use shared::log::sample::{SampleConfig, generate};
use shared::log::verify::{Reason, Verifier};

use crate::{Layout, sample_segments, verify_segments};

type Segs = Vec<(String, Vec<u8>)>;

fn small_archive() -> Segs {
    let cfg = SampleConfig {
        seed: 7,
        entries: 60,
        segment_entries: (15, 25),
        batch_events_max: 5,
    };
    generate(&cfg)
        .unwrap()
        .segments
        .into_iter()
        .map(|s| (s.name, s.bytes))
        .collect()
}

/// Flips `offset` of segment `si` with `mask` and checks that verification fails, blaming the
/// entry the byte belongs to, in the right segment.
#[track_caller]
fn check_flip(
    segs: &Segs,
    layouts: &[Layout],
    prefix: &[Verifier],
    si: usize,
    offset: usize,
    mask: u8,
) {
    assert_ne!(mask, 0);
    let mut bytes = segs[si].1.clone();
    bytes[offset] ^= mask;
    let mut v = prefix[si].clone();
    let mut result = v.segment(&segs[si].0, &bytes);
    // A damaged segment that still verifies on its own must break the link to the next one.
    if result.is_ok() {
        result = match segs.get(si + 1) {
            Some((name, next)) => v.segment(name, next),
            None => v.finish(None).map(|_| ()),
        };
    }
    let failure = result.expect_err(&format!(
        "flip of byte {offset} of {} (mask {mask:#04x}) went unnoticed",
        segs[si].0
    ));
    assert_eq!(failure.segment, segs[si].0, "byte {offset}: {failure}");
    let expected = layouts[si].blame(offset);
    assert_eq!(
        failure.seq,
        Some(expected),
        "byte {offset} of {}: {failure}",
        segs[si].0
    );
}

/// Verifier states after each prefix of segments, so that a flip re-verifies one segment only.
fn prefixes(segs: &Segs) -> Vec<Verifier> {
    let mut out = vec![Verifier::new()];
    for (name, bytes) in segs {
        let mut v = out.last().unwrap().clone();
        v.segment(name, bytes).unwrap();
        out.push(v);
    }
    out
}

#[test]
fn every_byte_of_a_small_archive_is_checked() {
    let segs = small_archive();
    assert!(segs.len() >= 3);
    let layouts: Vec<Layout> = segs.iter().map(|(_, b)| Layout::of(b)).collect();
    let prefix = prefixes(&segs);
    let mut flips = 0;
    for si in 0..segs.len() {
        for offset in 0..segs[si].1.len() {
            for mask in [0x01, 0x80] {
                check_flip(&segs, &layouts, &prefix, si, offset, mask);
                flips += 1;
            }
        }
    }
    assert!(flips > 10_000, "only {flips} flips");
}

#[test]
fn random_byte_changes_in_the_sample_archive_are_named_at_the_right_entry() {
    let segs = sample_segments();
    let layouts: Vec<Layout> = segs.iter().map(|(_, b)| Layout::of(b)).collect();
    let prefix = prefixes(&segs);
    let seed = std::env::var("FLIP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(fastrand_seed);
    eprintln!(
        "flip seed {seed} (reproduce: FLIP_SEED={seed} cargo test -p shared --test it random_byte)"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..1_500 {
        let si = rng.usize(0..segs.len());
        let offset = rng.usize(0..segs[si].1.len());
        check_flip(&segs, &layouts, &prefix, si, offset, rng.u8(1..));
    }
}

fn fastrand_seed() -> u64 {
    fastrand::u64(..)
}

#[test]
fn a_truncated_last_segment_is_reported_as_truncated() {
    let mut segs = sample_segments();
    let last = segs.len() - 1;
    let layout = Layout::of(&segs[last].1);
    let full = segs[last].1.clone();
    let mut rng = fastrand::Rng::with_seed(11);
    let mut cuts: Vec<usize> = (0..200).map(|_| rng.usize(0..full.len())).collect();
    // Edges: nothing, the header only, at a record boundary, just before the trailer, inside it.
    cuts.extend([
        0,
        1,
        layout.header_len,
        layout.records[3].0,
        layout.trailer_start,
        full.len() - 1,
    ]);
    for cut in cuts {
        segs[last].1 = full[..cut].to_vec();
        let f = verify_segments(&segs).expect_err("truncated archive verified");
        assert!(
            matches!(f.reason, Reason::Truncated { .. }),
            "cut at {cut}: {f}"
        );
        // Cut inside the trailer: blamed on the last entry, as every trailer failure is. Cut
        // right after a record: the file lacks what comes next, the entry after it.
        let expected = if cut > layout.trailer_start {
            layout.last_seq()
        } else if cut == layout.trailer_start {
            layout.last_seq() + 1
        } else {
            layout.blame(cut)
        };
        assert_eq!(f.seq, Some(expected), "cut at {cut}: {f}");
    }
}

/// A seq gap: entry `seq` expected, `seq + 1` found, blamed on `seq`.
#[track_caller]
fn assert_gap_at(f: &shared::log::Failure, seq: u64) {
    assert_eq!(
        f.reason,
        Reason::Seq {
            expected: seq,
            found: seq + 1
        },
        "{f}"
    );
    assert_eq!(f.seq, Some(seq), "{f}");
}

fn splice(bytes: &[u8], layout: &Layout, order: &[usize]) -> Vec<u8> {
    let mut out = bytes[..layout.header_len].to_vec();
    for &i in order {
        let (a, b, _) = layout.records[i];
        out.extend_from_slice(&bytes[a..b]);
    }
    out.extend_from_slice(&bytes[layout.trailer_start..]);
    out
}

#[test]
fn removed_or_reordered_entries_are_caught() {
    let segs = sample_segments();
    let layout = Layout::of(&segs[1].1);
    let n = layout.records.len();
    for k in [0, 1, n / 2, n - 2, n - 1] {
        // Removed.
        let order: Vec<usize> = (0..n).filter(|i| *i != k).collect();
        let mut damaged = segs.clone();
        damaged[1].1 = splice(&segs[1].1, &layout, &order);
        let f = verify_segments(&damaged).unwrap_err();
        let seq = layout.records[k].2;
        if k == n - 1 {
            // The last entry is gone: the trailer no longer matches.
            assert!(matches!(f.reason, Reason::Trailer { .. }), "{f}");
        } else {
            assert_gap_at(&f, seq);
        }
        // Swapped with the next.
        if k + 1 < n {
            let mut order: Vec<usize> = (0..n).collect();
            order.swap(k, k + 1);
            let mut damaged = segs.clone();
            damaged[1].1 = splice(&segs[1].1, &layout, &order);
            let f = verify_segments(&damaged).unwrap_err();
            assert_gap_at(&f, seq);
        }
        // Duplicated.
        let mut order: Vec<usize> = (0..n).collect();
        order.insert(k, k);
        let mut damaged = segs.clone();
        damaged[1].1 = splice(&segs[1].1, &layout, &order);
        let f = verify_segments(&damaged).unwrap_err();
        assert_eq!(f.seq, Some(seq + 1), "{f}");
    }
}

#[test]
fn removed_or_swapped_segments_are_caught() {
    let segs = sample_segments();
    let first_of = |i: usize| Layout::of(&segs[i].1).first_seq();
    let mut missing = segs.clone();
    missing.remove(1);
    let f = verify_segments(&missing).unwrap_err();
    assert_eq!(
        f.reason,
        Reason::Seq {
            expected: first_of(1),
            found: first_of(2)
        },
        "{f}"
    );
    // A later segment renamed to sort first.
    let mut swapped = segs.clone();
    swapped.swap(1, 2);
    swapped[1].0 = segs[1].0.clone();
    let f = verify_segments(&swapped).unwrap_err();
    assert!(matches!(f.reason, Reason::Header { .. }), "{f}");
    // Only the later segments: verifies, but says it is anchored, not from genesis.
    let tail = verify_segments(&segs[2..]).unwrap();
    assert!(!tail.from_genesis);
    assert_eq!(tail.first_seq, Some(first_of(2)));
}

#[test]
fn a_consistently_rewritten_archive_is_caught_by_the_expected_head() {
    // Someone regenerates the whole archive from different data: every hash is consistent, so
    // only the head an auditor kept can tell.
    let honest = generate(&SampleConfig {
        seed: 5,
        entries: 200,
        segment_entries: (60, 80),
        batch_events_max: 4,
    })
    .unwrap();
    let forged = generate(&SampleConfig {
        seed: 6,
        entries: 200,
        segment_entries: (60, 80),
        batch_events_max: 4,
    })
    .unwrap();
    let mut v = Verifier::new();
    for s in &forged.segments {
        v.segment(&s.name, &s.bytes).unwrap();
    }
    let expected: Hash = honest.head;
    let f = v.finish(Some(&expected)).unwrap_err();
    assert!(matches!(f.reason, Reason::Head { .. }), "{f}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// The reader never panics, whatever the bytes.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = Verifier::new().segment("x-00000000000000000000.seg", &bytes);
    }

    /// Nor do sample segments with several random changes, cuts and insertions.
    #[test]
    fn mangled_segments_never_panic_and_never_verify(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..8),
    ) {
        let segs = small_archive();
        let mut bytes = segs[0].1.clone();
        for (at, b, op) in edits {
            let i = at.index(bytes.len().max(1));
            match op {
                0 if i < bytes.len() => bytes[i] ^= b | 1,
                1 => bytes.truncate(i),
                _ => bytes.insert(i.min(bytes.len()), b),
            }
        }
        let result = Verifier::new().segment(&segs[0].0, &bytes);
        if bytes != segs[0].1 {
            prop_assert!(result.is_err());
        }
    }
}
