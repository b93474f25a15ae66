//! Heap allocations on the bid path, counted by a global allocator: a single-impression request
//! that gets one bid allocates only the answer's body.
//!
//! Its own test binary: the counting allocator serves every test in its process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use edge::config::Config;
use edge::openrtb::Version;
use shared::LeaseId;

/// Counts the allocations (and reallocations) of the thread that turned counting on.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: a thread being torn down has no locals left, and is not counted.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, COUNT.with(Cell::get))
}

/// The valid sample requests (`../shared/openrtb-samples/`: the IAB spec's examples and
/// Prebid Server's fixtures), by path.
fn samples() -> Vec<(String, Vec<u8>)> {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/openrtb-samples");
    let mut out = Vec::new();
    for (dir, keep) in [("iab", "-req-"), ("prebid", ".json")] {
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.contains(keep) && n.ends_with(".json") && n != "manifest.json"
            })
            .collect();
        files.sort();
        for f in files {
            let name = format!("{dir}/{}", f.file_name().unwrap().to_string_lossy());
            out.push((name, std::fs::read(&f).unwrap()));
        }
    }
    out
}

/// Past parsing, a bid on a single impression allocates one thing: the answer's body. Parsing
/// allocates nothing for a request whose skipped parts are flat (the IAB's mobile-app example);
/// serde_json keeps one buffer per request to skip nested arrays inside fields we do not read
/// (`site.publisher.cat`), and a native request held as an escaped string is unescaped into
/// a copy before it is checked.
#[test]
fn a_single_impression_bid_allocates_only_its_answer() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (edge, _addr) = rt.block_on(edge::fixture::serve_in_process(Config {
        edge_id: "alloc".into(),
        coordinators: vec!["127.0.0.1:1".into()],
        ..Config::default()
    }));
    edge::fixture::bid_on_anything(
        &edge,
        LeaseId(1),
        1_000_000_000_000,
        Duration::from_secs(3600),
    );
    let mut single = Vec::new();
    for (name, body) in samples() {
        let Ok(imps) = edge::openrtb::parse(&body, Version::V26).map(|r| r.imp.len()) else {
            continue;
        };
        // Warm: the first bid may set up what lives for the process (metrics' series).
        if !matches!(
            edge.bid(0, &body, Version::V26, Instant::now()),
            edge::bidder::BidOutcome::Bid(_)
        ) || imps != 1
        {
            continue;
        }
        let (_, parsing) = allocations(|| {
            let r = edge::openrtb::parse(&body, Version::V26);
            std::hint::black_box(&r);
        });
        let (outcome, bidding) = allocations(|| edge.bid(0, &body, Version::V26, Instant::now()));
        assert!(
            matches!(outcome, edge::bidder::BidOutcome::Bid(_)),
            "{name}: {outcome:?}"
        );
        single.push((name, parsing, bidding));
    }
    assert!(
        single.len() >= 100,
        "only {} single-impression bids",
        single.len()
    );
    let past_parsing: Vec<_> = single.iter().filter(|(_, p, b)| b - p != 1).collect();
    assert!(
        past_parsing.is_empty(),
        "past parsing, a single-impression bid should allocate its answer only: {past_parsing:?}"
    );
    let total = |n: &str| single.iter().find(|(s, ..)| s == n).map(|(_, _, b)| *b);
    assert_eq!(total("iab/2.6-req-03-mobile-app.json"), Some(1));
    assert_eq!(total("iab/2.6-req-01-simple-banner.json"), Some(2));
    let mut by_count = std::collections::BTreeMap::<u64, usize>::new();
    for (_, _, b) in &single {
        *by_count.entry(*b).or_default() += 1;
    }
    println!(
        "{} single-impression bids; allocations per bid (count: bids): {by_count:?}",
        single.len()
    );
}
