//! A 3-node region on loopback, fsync on, driven through the gRPC lease API (`./dev bench`).
//!
//! - `spend`: settled spend events per second, batches of up to 1,000 events, from several
//!   concurrent reporters, for a fixed time.
//! - `grant`: lease grant latency (p50, p99) while the spend load runs.
//! - `apply`: the state machine's apply cost per event, without Raft or disk.
//!
//! Every loop is bounded in count and time. Set `BENCH_SECS` to change the run time (default 10)
//! `BENCH_REPORTERS` the number of concurrent reporters (default 4), and `BENCH_RATE` an offered
//! load in events/s (default: as fast as the region takes them), `BENCH_SPEND_IN_FLIGHT` the
//! spend reports the leader lets into the log at once (0: no limit).

#[path = "common/mod.rs"]
#[allow(dead_code)] // the soak follows leader changes; this bench does not
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{channel, env_u64, events, grant, start_region};
use coordinator::ledger::{CampaignConfig, Command, Ledger, Params, RequestKey, Stamp};
use shared::bucket::Bucket;
use shared::log::SpendEvent;
use shared::proto::v1 as pb;
use shared::{BatchId, LeaseId, Money};

const BATCH: usize = 1_000;
/// Most batches the whole run may send, whatever the time.
const MAX_BATCHES: u64 = 100_000;

/// Concurrent reporters, each with its own lease (`BENCH_REPORTERS`, 1 to 64, default 4).
fn reporters() -> usize {
    std::env::var("BENCH_REPORTERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|n| (1..=64).contains(n))
        .unwrap_or(4)
}

/// Offered load in events per second, spread over the reporters (`BENCH_RATE`); unset or 0:
/// as fast as the region takes them.
fn rate() -> u64 {
    env_u64("BENCH_RATE", 0)
}

/// Spend reports the leader lets into the Raft log at once (`BENCH_SPEND_IN_FLIGHT`; 0: no
/// limit, as before the spend lane; default: the node's default).
fn spend_in_flight() -> usize {
    usize::try_from(env_u64(
        "BENCH_SPEND_IN_FLIGHT",
        coordinator::node::SPEND_IN_FLIGHT as u64,
    ))
    .unwrap_or(usize::MAX)
}

fn secs() -> u64 {
    env_u64("BENCH_SECS", 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn apply_cost() {
    let mut l = Ledger::new("eu-1".parse().expect("region"), Params::default());
    let stamp = |i: u64| Stamp {
        term: 1,
        index: i,
        time_us: 1_793_534_400_000_000,
    };
    l.apply(
        stamp(0),
        &Command::SetParams {
            key: RequestKey([9; 16]),
            params: Params::default(),
        },
    );
    let config = CampaignConfig {
        zone: "UTC".into(),
        bid_cpm: Money::from_micros(1_000_000),
        daily_budget: None,
        targeting: Default::default(),
    };
    l.apply(
        stamp(1),
        &Command::UpsertCampaign {
            key: RequestKey([1; 16]),
            campaign: "c1".parse().expect("id"),
            config,
        },
    );
    l.apply(
        stamp(2),
        &Command::SetBudget {
            key: RequestKey([2; 16]),
            campaign: "c1".parse().expect("id"),
            bucket: Bucket::Lifetime,
            budget: Money::MAX,
        },
    );
    l.apply(
        stamp(3),
        &Command::GrantLease {
            key: RequestKey([3; 16]),
            edge: "e1".parse().expect("id"),
            campaign: "c1".parse().expect("id"),
            want: Money::from_micros(i64::MAX / 8),
        },
    );
    let batches = 200u64;
    let cmds: Vec<Command> = (0..batches)
        .map(|b| Command::ReportSpend {
            batch: BatchId(u128::from(b + 10).to_be_bytes()),
            edge: "e1".parse().expect("id"),
            lease: LeaseId(1),
            events: (0..BATCH)
                .map(|i| SpendEvent {
                    bid: b * BATCH as u64 + i as u64 + 1,
                    key: format!("adx/{b}-{i}/1").parse().expect("key"),
                    amount: Money::from_micros(1_000),
                })
                .collect(),
            losses: Vec::new(),
            held: Vec::new(),
        })
        .collect();
    let start = Instant::now();
    for (i, c) in cmds.iter().enumerate() {
        let a = l.apply(stamp(10 + i as u64), c);
        std::hint::black_box(l.rows(&a.changes));
    }
    let per_event = start.elapsed() / (batches as u32 * BATCH as u32);
    println!(
        "apply: {per_event:?} per event (ledger apply + rows, batches of {BATCH}, {batches} batches, no Raft, no disk)"
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    apply_cost();
    let tmp = tempfile::tempdir().expect("temp dir");
    let in_flight = spend_in_flight();
    let region = start_region(tmp.path(), |c| c.spend_in_flight = in_flight).await;
    let addr = region.leader.clone();

    let deadline = Instant::now() + Duration::from_secs(secs());
    let settled = Arc::new(AtomicU64::new(0));
    let batches = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for r in 0..reporters() {
        let addr = addr.clone();
        let settled = settled.clone();
        let batches = batches.clone();
        tasks.push(tokio::spawn(async move {
            let mut leases = pb::lease_api_client::LeaseApiClient::new(channel(&addr).await);
            let lease = grant(
                &mut leases,
                (1_000 + r as u128).to_be_bytes().to_vec(),
                &format!("e{r}"),
                i64::MAX / 64,
            )
            .await;
            // Each reporter sends one batch per period, so that all of them offer `rate()`.
            let mut pace = (rate() > 0).then(|| {
                let period = Duration::from_secs_f64((BATCH * reporters()) as f64 / rate() as f64);
                let mut t = tokio::time::interval(period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            let mut n = 0u64;
            while Instant::now() < deadline && batches.fetch_add(1, Ordering::Relaxed) < MAX_BATCHES
            {
                if let Some(p) = pace.as_mut() {
                    p.tick().await;
                }
                n += 1;
                let events = events(&format!("r{r}-b{n}"), (n - 1) * BATCH as u64 + 1, BATCH);
                let req = pb::ReportSpendRequest {
                    batch_id: ((r as u128) << 64 | u128::from(n)).to_be_bytes().to_vec(),
                    edge: format!("e{r}"),
                    lease_id: lease.lease_id,
                    events,
                    losses: Vec::new(),
                    held: Vec::new(),
                };
                if let Some(pb::report_spend_reply::Result::Settled(s)) = leases
                    .report_spend(req)
                    .await
                    .expect("report")
                    .into_inner()
                    .result
                {
                    settled.fetch_add(u64::from(s.settled_events), Ordering::Relaxed);
                }
            }
        }));
    }
    // Grant latency under that load.
    let mut lat = Vec::new();
    let mut leases = pb::lease_api_client::LeaseApiClient::new(channel(&addr).await);
    let started = Instant::now();
    let mut k = 0u128;
    while Instant::now() < deadline && k < 10_000 {
        k += 1;
        let t = Instant::now();
        let req = pb::GrantLeaseRequest {
            idempotency_key: Some(pb::IdempotencyKey {
                key: (1u128 << 100 | k).to_be_bytes().to_vec(),
            }),
            edge: "g".into(),
            campaign: "c1".into(),
            want_micros: 1_000,
        };
        leases.grant_lease(req).await.expect("grant");
        lat.push(t.elapsed());
    }
    for t in tasks {
        t.await.expect("reporter");
    }
    let elapsed = started.elapsed();
    lat.sort();
    let total = settled.load(Ordering::Relaxed);
    println!(
        "spend: {} events settled in {:.1} s = {} events/s (3 nodes, fsync on, {} reporters, batches of {BATCH}, offered {}, spend in flight {})",
        total,
        elapsed.as_secs_f64(),
        (total as f64 / elapsed.as_secs_f64()) as u64,
        reporters(),
        match rate() {
            0 => "as fast as taken".to_string(),
            r => format!("{r} events/s"),
        },
        match in_flight {
            0 => "unlimited".to_string(),
            k => k.to_string(),
        }
    );
    println!(
        "grant: {} grants under that load, p50 {:?}, p99 {:?}, max {:?}",
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default()
    );
    for n in &region.nodes {
        n.shutdown().await;
    }
}
