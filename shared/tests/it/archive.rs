//! The committed sample archive: reproducible from its seed, and it verifies.

use shared::log::sample::{SampleConfig, generate};
use shared::log::{Kind, verify_path};

use crate::{sample_dir, sample_segments, verify_segments};

#[test]
fn sample_archive_is_what_its_generator_makes() {
    let archive = generate(&SampleConfig::default()).unwrap();
    let on_disk = sample_segments();
    let names: Vec<&str> = on_disk.iter().map(|(n, _)| n.as_str()).collect();
    let made: Vec<&str> = archive.segments.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names, made,
        "segment names differ: regenerate with ./dev sample-archive"
    );
    for ((name, bytes), seg) in on_disk.iter().zip(&archive.segments) {
        assert!(
            bytes == &seg.bytes,
            "{name} differs from the generator's output: ./dev sample-archive"
        );
    }
}

#[test]
fn sample_archive_verifies_and_holds_every_kind() {
    let summary = verify_path(&sample_dir(), None).unwrap().unwrap();
    assert!(summary.segments >= 3, "{summary:?}");
    assert!(summary.entries >= 10_000, "{summary:?}");
    assert!(summary.from_genesis);
    assert_eq!(summary.first_seq, Some(0));
    assert_eq!(summary.last_seq, Some(summary.entries - 1));
    for kind in Kind::ALL {
        assert!(
            summary.kinds.get(&kind).copied().unwrap_or(0) > 0,
            "no {} entry",
            kind.name()
        );
    }
    let in_memory = verify_segments(&sample_segments()).unwrap();
    assert_eq!(in_memory.head_hash, summary.head_hash);
    let head = generate(&SampleConfig::default()).unwrap().head;
    assert_eq!(summary.head_hash, Some(hex::encode(head)));
}

#[test]
fn different_seeds_make_different_archives_that_verify() {
    for seed in [1, 2, 3] {
        let cfg = SampleConfig {
            seed,
            entries: 400,
            segment_entries: (90, 150),
            batch_events_max: 12,
        };
        let a = generate(&cfg).unwrap();
        let segs: Vec<_> = a
            .segments
            .iter()
            .map(|s| (s.name.clone(), s.bytes.clone()))
            .collect();
        let s = verify_segments(&segs).unwrap();
        assert_eq!(s.entries, 400);
        assert_eq!(s.head_hash, Some(hex::encode(a.head)));
    }
}
