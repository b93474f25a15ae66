//! Verification speed of the financial log on the sample archive (`./dev bench`).
//!
//! `verify/sample_archive` verifies `testdata/sample-archive` from memory on one thread, so the
//! figure is entries per second of one core, I/O excluded. `verify/entries_only` is the same
//! chain without spend events (no Merkle work), to show what the events cost.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shared::log::Verifier;
use shared::log::sample::{SampleConfig, generate};

fn load_sample() -> Vec<(String, Vec<u8>)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/sample-archive");
    let mut segs: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("testdata/sample-archive")
        .map(|e| {
            let p = e.expect("dir entry").path();
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                std::fs::read(&p).expect("read"),
            )
        })
        .collect();
    segs.sort();
    segs
}

fn verify_all(segs: &[(String, Vec<u8>)]) -> u64 {
    let mut v = Verifier::new();
    for (name, bytes) in segs {
        v.segment(name, bytes).expect("archive verifies");
    }
    v.finish(None).expect("head").entries
}

fn bench(c: &mut Criterion) {
    let sample = load_sample();
    let entries = verify_all(&sample);
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(entries));
    g.bench_function(format!("sample_archive/entries={entries}"), |b| {
        b.iter(|| black_box(verify_all(black_box(&sample))))
    });

    // The same generator with one event per batch, to see the cost of the Merkle work.
    let lean = generate(&SampleConfig {
        batch_events_max: 1,
        ..SampleConfig::default()
    })
    .expect("generate");
    let lean: Vec<(String, Vec<u8>)> = lean
        .segments
        .into_iter()
        .map(|s| (s.name, s.bytes))
        .collect();
    g.bench_function(format!("one_event_batches/entries={entries}"), |b| {
        b.iter(|| black_box(verify_all(black_box(&lean))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
