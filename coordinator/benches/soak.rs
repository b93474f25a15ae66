//! Soak (`./dev bench soak`): one 3-node region in this process, fsync on, under constant
//! settled load for `BENCH_SECS` (default 600) at `BENCH_RATE` events/s (default 100,000), in
//! batches of 1,000 from `BENCH_REPORTERS` reporters (default 4), each releasing its lease and
//! taking a new one every `BENCH_LEASE_BATCHES` batches (default 10), as edges do. Snapshots
//! (every 10,000 entries) and sealing (segments of 10,000 records or 64 MiB) as configured by
//! default; each node's archive loop runs, so sealed records leave RocksDB.
//!
//! Every `BENCH_SAMPLE_SECS` (30) it prints the process's resident memory and, per node, its
//! RocksDB size, its last snapshot (bytes, build time, rows, records), its unsealed records and
//! its segments and its bid marks (exact, and closed leases' compacted); at the end, their spread after `BENCH_WARMUP_SECS` (120). The run stops early
//! if resident memory passes `BENCH_RSS_MAX_MIB` (12,000): state that grows without bound is
//! the finding, and the machine must survive it. Every loop is bounded in count and time.
//!
//! The ledger keeps closed leases and request keys up to counts (`BENCH_LEASES_RETAINED`,
//! default 100,000, and `BENCH_REQUESTS_RETAINED`, 1,000,000, the region's defaults): at this
//! load (10 leases and 120 keys a second) the defaults take hours to fill, so smaller counts are
//! how a run of minutes shows the state flat once they are reached.

#[path = "common/mod.rs"]
#[allow(dead_code)] // the region bench uses the leader it started with
mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Region, env_u64, events, start_region, try_grant};
use coordinator::archive::{SEGMENT_BYTES_MAX, SegmentRule};
use coordinator::node::Node;
use shared::proto::v1 as pb;

const BATCH: usize = 1_000;
const MIB: f64 = 1024.0 * 1024.0;

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// One node's figures at one moment.
#[derive(Clone, Copy, Default)]
struct NodeSample {
    db: u64,
    snapshot: u64,
    snapshot_ms: f64,
    rows: u64,
    records: u64,
    unsealed: u64,
    segments: usize,
    segment_bytes: u64,
    /// Bids whose marks the ledger holds exactly (leases not closed).
    exact_marks: usize,
    /// Bytes of closed leases' compacted marks.
    closed_marks: usize,
}

fn sample(node: &Node) -> NodeSample {
    let snap = node.state.last_snapshot_build().unwrap_or_default();
    let (next, exact_marks, closed_marks) = node.state.read(|m| {
        let l = m.ledger();
        (l.chain().next_seq(), l.bid_marks(), l.closed_marks().1)
    });
    NodeSample {
        db: dir_bytes(&node.data_dir.join("db")),
        snapshot: snap.bytes,
        snapshot_ms: snap.build_us as f64 / 1_000.0,
        rows: snap.rows,
        records: snap.records,
        unsealed: next.saturating_sub(node.archive.sealed().0),
        segments: node.archive.segments(),
        segment_bytes: dir_bytes(node.archive.dir()),
        exact_marks,
        closed_marks,
    }
}

/// A request key of `kind` (grant, report, release), reporter `r`, number `n`: grant keys and
/// batch ids share one space of request keys in the ledger, so they must differ.
fn key(kind: u8, r: usize, n: u64) -> Vec<u8> {
    (u128::from(kind) << 120 | (r as u128) << 64 | u128::from(n))
        .to_be_bytes()
        .to_vec()
}

/// How often a reporter retries one request (every retry follows the leader anew).
const RETRIES_MAX: u32 = 50;

/// Reports `batches` batches per lease, then releases it and takes another, until `deadline`
/// or `stop`. A failed request (a leader change, a refusal while a new leader catches up) is
/// retried with the same key on the node then leading, at most [`RETRIES_MAX`] times: retries
/// are idempotent, so nothing counts twice.
#[allow(clippy::too_many_arguments)]
async fn reporter(
    r: usize,
    region: Arc<Region>,
    lease_batches: u64,
    period: Duration,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    settled: Arc<AtomicU64>,
    retried: Arc<AtomicU64>,
) {
    let (mut leader, mut leases) = region.leader_client().await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let edge = format!("e{r}");
    let per_lease = lease_batches * BATCH as u64 * 1_000;
    let mut n = 0u64;
    // Follows the leader after a failure; panics with the last error after RETRIES_MAX.
    macro_rules! retrying {
        ($what:literal, $call:expr) => {{
            let mut tries = 0u32;
            loop {
                match $call {
                    Ok(v) => break v,
                    Err(e) if tries < RETRIES_MAX => {
                        tries += 1;
                        retried.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let (id, client) = region.leader_client().await;
                        if id != leader {
                            println!("reporter {r}: {} failed ({e}); leader now node {id}", $what);
                        }
                        (leader, leases) = (id, client);
                    }
                    Err(e) => panic!("reporter {r}: {} failed {tries} times: {e}", $what),
                }
            }
        }};
    }
    // At most one lease per batch: bounded by the time, and by this count too.
    for l in 0..10_000_000u64 {
        if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
            return;
        }
        let want = i64::try_from(per_lease * 2).unwrap_or(i64::MAX);
        let lease = retrying!(
            "grant",
            try_grant(&mut leases, key(1, r, l), &edge, want).await
        );
        let mut bids = 0u64;
        let mut spent = 0i64;
        for _ in 0..lease_batches {
            if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                break;
            }
            tick.tick().await;
            n += 1;
            let req = pb::ReportSpendRequest {
                batch_id: key(2, r, n),
                edge: edge.clone(),
                lease_id: lease.lease_id,
                events: events(&format!("r{r}-b{n}"), bids + 1, BATCH),
                losses: Vec::new(),
                held: Vec::new(),
            };
            bids += BATCH as u64;
            spent += BATCH as i64 * 1_000;
            let reply = retrying!("report", leases.report_spend(req.clone()).await);
            if let Some(pb::report_spend_reply::Result::Settled(s)) = reply.into_inner().result {
                settled.fetch_add(u64::from(s.settled_events), Ordering::Relaxed);
            }
        }
        // Every bid was reported: what was not spent returns at once, nothing waits in doubt.
        let release = pb::ReleaseLeaseRequest {
            batch_id: ((r as u128) << 64 | 1u128 << 63 | u128::from(l))
                .to_be_bytes()
                .to_vec(),
            edge: edge.clone(),
            lease_id: lease.lease_id,
            unreserved_micros: lease.amount_micros - spent,
            bids,
            in_doubt: Vec::new(),
        };
        retrying!("release", leases.release_lease(release.clone()).await);
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs = env_u64("BENCH_SECS", 600);
    let rate = env_u64("BENCH_RATE", 100_000).max(1);
    let reporters = env_u64("BENCH_REPORTERS", 4).clamp(1, 64) as usize;
    let lease_batches = env_u64("BENCH_LEASE_BATCHES", 10).max(1);
    let every = Duration::from_secs(env_u64("BENCH_SAMPLE_SECS", 30).max(1));
    let warmup = Duration::from_secs(env_u64("BENCH_WARMUP_SECS", 120));
    let rss_max = env_u64("BENCH_RSS_MAX_MIB", 12_000) << 20;
    let tmp = tempfile::tempdir().expect("temp dir");
    // The ledger forgets closed leases and request keys past these counts: with the defaults
    // (100,000 and 1,000,000) this load takes hours to reach them; smaller ones show the
    // state flat within a run.
    let leases_retained = env_u64("BENCH_LEASES_RETAINED", 100_000);
    let requests_retained = env_u64("BENCH_REQUESTS_RETAINED", 1_000_000);
    let region = Arc::new(
        start_region(tmp.path(), |cfg| {
            cfg.init_params.closed_leases_retained = leases_retained;
            cfg.init_params.requests_retained = requests_retained;
        })
        .await,
    );
    let rule = SegmentRule {
        entries: 10_000,
        bytes_max: SEGMENT_BYTES_MAX,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for n in &region.nodes {
        tokio::spawn(coordinator::server::archive_loop(
            n.clone(),
            rule,
            Duration::from_secs(600),
            coordinator::server::Config::default().scrub_bytes_per_second,
            stop_rx.clone(),
        ));
    }
    println!(
        "soak: 3 nodes, fsync on, {rate} events/s offered for {secs} s by {reporters} reporters in batches of {BATCH}, a new lease every {lease_batches} batches; snapshots every 10,000 entries, segments of 10,000 records or 64 MiB; closed leases retained {leases_retained}, request keys {requests_retained}"
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let stop = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64((BATCH * reporters) as f64 / rate as f64);
    let mut tasks = Vec::new();
    for r in 0..reporters {
        tasks.push(tokio::spawn(reporter(
            r,
            region.clone(),
            lease_batches,
            period,
            deadline,
            stop.clone(),
            settled.clone(),
            retried.clone(),
        )));
    }
    println!(
        "{:>5} {:>11} {:>9} {:>8} | per node: RocksDB MiB, snapshot MiB (build ms, rows, records), unsealed records, segments (MiB), exact bid marks, closed leases' marks MiB",
        "t s", "events", "events/s", "RSS MiB"
    );
    let mut samples: Vec<(Duration, u64, u64, Vec<NodeSample>)> = Vec::new();
    let mut last = (Duration::ZERO, 0u64);
    let mut stopped_early = None;
    while Instant::now() < deadline && !tasks.iter().all(|t| t.is_finished()) {
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
        let t = started.elapsed();
        let events = settled.load(Ordering::Relaxed);
        let mem = common::rss();
        let nodes: Vec<NodeSample> = region.nodes.iter().map(|n| sample(n)).collect();
        let per_s = (events - last.1) as f64 / (t - last.0).as_secs_f64().max(0.001);
        last = (t, events);
        let cells: Vec<String> = nodes
            .iter()
            .map(|s| {
                format!(
                    "{:.1}, {:.1} ({:.0}, {}, {}), {}, {} ({:.0}), {}, {:.1}",
                    s.db as f64 / MIB,
                    s.snapshot as f64 / MIB,
                    s.snapshot_ms,
                    s.rows,
                    s.records,
                    s.unsealed,
                    s.segments,
                    s.segment_bytes as f64 / MIB,
                    s.exact_marks,
                    s.closed_marks as f64 / MIB
                )
            })
            .collect();
        println!(
            "{:>5} {:>11} {:>9.0} {:>8.0} | {}",
            t.as_secs(),
            events,
            per_s,
            mem as f64 / MIB,
            cells.join(" | ")
        );
        samples.push((t, events, mem, nodes));
        if mem > rss_max {
            stopped_early = Some(t);
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("reporter");
    }
    let _ = stop_tx.send(true);
    let total = settled.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    println!(
        "settled {total} events in {:.0} s = {:.0} events/s; {} requests retried{}",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        retried.load(Ordering::Relaxed),
        match stopped_early {
            Some(t) => format!(
                "; STOPPED EARLY at {} s: resident memory over {} MiB",
                t.as_secs(),
                rss_max >> 20
            ),
            None => String::new(),
        }
    );
    let after: Vec<&(Duration, u64, u64, Vec<NodeSample>)> =
        samples.iter().filter(|s| s.0 >= warmup).collect();
    if after.len() < 2 {
        println!("too few samples after the warm-up to say more");
    } else {
        let spread = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            (lo, hi, mean)
        };
        let mem: Vec<f64> = after.iter().map(|s| s.2 as f64 / MIB).collect();
        let (lo, hi, mean) = spread(&mem);
        println!(
            "after the warm-up ({} samples): RSS {lo:.0}..{hi:.0} MiB, mean {mean:.0}, from first to last {:+.1} %",
            after.len(),
            (mem[mem.len() - 1] / mem[0] - 1.0) * 100.0
        );
        for i in 0..region.nodes.len() {
            let snap: Vec<f64> = after.iter().map(|s| s.3[i].snapshot as f64 / MIB).collect();
            let db: Vec<f64> = after.iter().map(|s| s.3[i].db as f64 / MIB).collect();
            let rows: Vec<f64> = after.iter().map(|s| s.3[i].rows as f64).collect();
            let per_m: Vec<f64> = after
                .iter()
                .map(|s| s.3[i].segment_bytes as f64 / MIB / (s.1 as f64 / 1e6))
                .collect();
            let (s_lo, s_hi, s_mean) = spread(&snap);
            let (d_lo, d_hi, _) = spread(&db);
            let (r_lo, r_hi, _) = spread(&rows);
            let (p_lo, p_hi, _) = spread(&per_m);
            println!(
                "node {}: snapshot {s_lo:.1}..{s_hi:.1} MiB (mean {s_mean:.1}), rows {r_lo:.0}..{r_hi:.0}; RocksDB {d_lo:.0}..{d_hi:.0} MiB; segments {p_lo:.2}..{p_hi:.2} MiB per million events settled",
                i + 1
            );
        }
    }
    for n in &region.nodes {
        n.shutdown().await;
    }
}
