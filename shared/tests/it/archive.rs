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

#[test]
fn segments_rebuilt_from_stored_records_are_the_same_bytes() {
    use shared::log::segment::{Item, SegmentWriter, WriteError, read_header, read_item};
    let cfg = SampleConfig {
        seed: 9,
        entries: 120,
        segment_entries: (50, 70),
        batch_events_max: 6,
    };
    for seg in generate(&cfg).unwrap().segments {
        let (header, mut pos) = read_header(&seg.bytes).unwrap();
        let mut w = SegmentWriter::new(&header.region, header.first_seq, header.prev_hash);
        let mut records = Vec::new();
        while let Item::Record(r) = read_item(&seg.bytes, pos).unwrap() {
            records.push((
                seg.bytes[r.offset..r.end].to_vec(),
                <[u8; 32]>::try_from(r.hash).unwrap(),
            ));
            pos = r.end;
        }
        // Out of order: refused (a segment of one record has no second to push first).
        let mut wrong = SegmentWriter::new(&header.region, header.first_seq, header.prev_hash);
        if let Some((second, _)) = records.get(1) {
            assert!(matches!(
                wrong.push_record(second),
                Err(WriteError::Seq { .. })
            ));
        }
        assert!(matches!(
            wrong.push_record(&records[0].0[..10]),
            Err(WriteError::NotARecord)
        ));
        for (rec, hash) in &records {
            assert_eq!(
                w.push_record(rec).unwrap(),
                *hash,
                "the hash the record carries"
            );
        }
        assert!(w.seal().unwrap() == seg.bytes, "{} differs", seg.name);
    }
}
