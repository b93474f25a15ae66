//! Scale (`./dev bench scale`): `BENCH_CAMPAIGNS` campaigns (default 100,000), each with a
//! lifetime and a daily budget, homed in `eu-1` and synced to `us-1` and `ap-1`: three regions
//! of one coordinator each, in this process, fsync on, syncing over loopback gRPC as deployed.
//!
//! It reports, each with what it is measured against:
//! - memory per campaign per node: the process's resident memory, and the part of it Rust code
//!   holds (a counting allocator: the ledgers, region sync, gRPC; RocksDB's memtables and caches
//!   are C++ allocations outside it);
//! - how long the peers take to hold every campaign and bucket (region sync);
//! - region-sync bytes per second, idle and under load (`budget_region_push_bytes_total`,
//!   every push of every region), against one full state (target: idle ≤ 1 % of one full state
//!   per push interval);
//! - lease grant latency at `eu-1` under load (`BENCH_LOAD_SECS`, default 30, `BENCH_WORKERS`
//!   concurrent edges, default 16, each granting on a random campaign, reporting 10 bids and
//!   releasing), p50 / p99 / max;
//! - the edges' catalog poll: the first (everything), a steady one, and one after a campaign
//!   changed (what changed);
//! - the time a new node takes to join `eu-1` by snapshot.
//!
//! Every loop is bounded in count and time.

#[path = "common/mod.rs"]
#[allow(dead_code)] // this bench starts its own regions
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{channel, env_u64, events};
use coordinator::node::{Node, NodeConfig};
use coordinator::region::{Settings, Sync};
use prost::Message;
use shared::RegionId;
use shared::bucket::Bucket;
use shared::proto::v1 as pb;

const MIB: f64 = 1024.0 * 1024.0;
const REGIONS: [&str; 3] = ["eu-1", "us-1", "ap-1"];

/// The system allocator, counting the bytes Rust code holds: the ledgers, region sync, gRPC.
/// RocksDB allocates in C++, outside it: its memtables and caches are in RSS only.
struct Counting;

static HELD: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged; only a counter is added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        HELD.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        HELD.fetch_add(new as u64, Ordering::Relaxed);
        HELD.fetch_sub(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes Rust code holds now.
fn held() -> u64 {
    HELD.load(Ordering::Relaxed)
}

struct Region {
    node: Arc<Node>,
    sync: Arc<Sync>,
    addr: String,
    /// Stops its sync loop when dropped.
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Starts region `name`'s one node on `listener`, knowing `peers`.
async fn start(
    name: &str,
    dir: &Path,
    listener: tokio::net::TcpListener,
    peers: BTreeMap<RegionId, Vec<String>>,
) -> Region {
    let addr = listener.local_addr().expect("addr").to_string();
    let mut cfg = NodeConfig::new(name.parse().expect("region"), 1, dir.join(name));
    // Few entries kept after a snapshot: a node that joins must take the snapshot.
    cfg.logs_kept_after_snapshot = 100;
    let node = Arc::new(Node::start(&cfg).await.expect("node"));
    let sync = Arc::new(Sync::new(
        name.parse().expect("region"),
        Settings {
            peers,
            ..Settings::default()
        },
    ));
    let (serving, serving_sync) = (node.clone(), sync.clone());
    tokio::spawn(async move {
        coordinator::api::serve(&serving, &serving_sync, listener, std::future::pending()).await
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(coordinator::region::sync_loop(
        node.clone(),
        sync.clone(),
        stop_rx,
    ));
    node.initialize(BTreeMap::from([(1, addr.clone())]))
        .await
        .expect("init");
    node.raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.current_leader == Some(1), "leader")
        .await
        .expect("leader");
    Region {
        node,
        sync,
        addr,
        _stop: stop,
    }
}

fn key(kind: u8, n: u64) -> Option<pb::IdempotencyKey> {
    Some(pb::IdempotencyKey {
        key: (u128::from(kind) << 120 | u128::from(n))
            .to_be_bytes()
            .to_vec(),
    })
}

fn name(i: u64) -> String {
    format!("c{i:06}")
}

/// Creates campaign `i`: a daily budget of 1.00 and a lifetime budget of 100.00.
async fn campaign(admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>, i: u64) {
    admin
        .upsert_campaign(pb::UpsertCampaignRequest {
            idempotency_key: key(1, i),
            config: Some(pb::CampaignConfig {
                campaign: name(i),
                time_zone: "UTC".into(),
                bid_cpm_micros: 1_000_000,
                daily_budget_micros: Some(1_000_000),
                ..Default::default()
            }),
        })
        .await
        .expect("campaign");
    admin
        .set_budget(pb::SetBudgetRequest {
            idempotency_key: key(2, i),
            bucket: Some(pb::BucketKey {
                campaign: name(i),
                bucket: Some(pb::Bucket::from(&Bucket::Lifetime)),
            }),
            budget_micros: 100_000_000,
        })
        .await
        .expect("budget");
}

/// Bytes every region pushed so far, from their metrics pages.
fn pushed(regions: &[Region]) -> u64 {
    regions
        .iter()
        .map(|r| {
            r.sync
                .render_metrics(&r.node)
                .lines()
                .filter(|l| l.starts_with("budget_region_push_bytes_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let n = env_u64("BENCH_CAMPAIGNS", 100_000).max(1);
    let workers = env_u64("BENCH_WORKERS", 16).clamp(1, 256);
    let load_secs = env_u64("BENCH_LOAD_SECS", 30);
    let idle_secs = env_u64("BENCH_IDLE_SECS", 30);
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut listeners = Vec::new();
    for _ in REGIONS {
        listeners.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr").to_string())
        .collect();
    let (before, held_before) = (common::rss(), held());
    let mut regions = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let peers = REGIONS
            .iter()
            .zip(&addrs)
            .filter(|(r, _)| **r != REGIONS[i])
            .map(|(r, a)| (r.parse().expect("region"), vec![a.clone()]))
            .collect();
        regions.push(start(REGIONS[i], tmp.path(), l, peers).await);
    }
    let interval = Settings::default().push_interval;
    let full_interval = Settings::default().full_push_interval;
    println!(
        "scale: {n} campaigns (daily and lifetime budgets) homed in eu-1, 3 regions of 1 node, fsync on, pushes every {interval:?}, complete every {full_interval:?}"
    );

    // Create them at their home, `workers` clients at a time.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers.max(32) {
        let (addr, next) = (regions[0].addr.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut admin = pb::admin_client::AdminClient::new(channel(&addr).await);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                campaign(&mut admin, i).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    let created = started.elapsed();
    println!(
        "created at eu-1 in {:.1} s ({:.0} campaigns/s, 2 commands each)",
        created.as_secs_f64(),
        n as f64 / created.as_secs_f64()
    );
    // The peers hold them all once pushes and merges went through (at most 10 minutes).
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let held: Vec<(usize, usize)> = regions
            .iter()
            .map(|r| {
                r.node.state.read(|m| {
                    let l = m.ledger();
                    (l.campaigns().count(), l.buckets().count())
                })
            })
            .collect();
        if held.iter().all(|(c, b)| *c as u64 == n && *b as u64 >= n) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 600 s the regions hold (campaigns, buckets) {held:?} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let synced = started.elapsed();
    println!(
        "every region holds them {:.1} s after the first was created",
        synced.as_secs_f64()
    );
    let (after, held_after) = (common::rss(), held());
    println!(
        "memory: RSS {:.0} → {:.0} MiB with 3 nodes: {:.0} bytes per campaign per node, of which Rust's heap (ledgers, sync, gRPC) {:.0} → {:.0} MiB: {:.0} bytes per campaign per node (target ≤ 4,096); the rest is RocksDB's (memtables, caches)",
        before as f64 / MIB,
        after as f64 / MIB,
        after.saturating_sub(before) as f64 / 3.0 / n as f64,
        held_before as f64 / MIB,
        held_after as f64 / MIB,
        held_after.saturating_sub(held_before) as f64 / 3.0 / n as f64
    );
    let (rows, row_bytes) = regions[1].node.state.read(|m| {
        let rows = m.ledger().all_rows();
        let bytes: usize = rows.iter().map(|(k, v)| k.len() + v.len()).sum();
        (rows.len(), bytes)
    });
    println!(
        "us-1's state: {rows} rows, {:.1} MiB ({:.0} bytes per campaign)",
        row_bytes as f64 / MIB,
        row_bytes as f64 / n as f64
    );

    // Idle: what the pushes cost against one full state.
    let whole = regions[0]
        .node
        .state
        .read(|m| coordinator::region::state_of(m.ledger()))
        .encoded_len();
    let b0 = pushed(&regions);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let idle = (pushed(&regions) - b0) as f64 / t0.elapsed().as_secs_f64();
    // 3 regions × 2 peers each.
    let per_peer = idle / 6.0;
    let amortized = whole as f64 / full_interval.as_secs_f64();
    println!(
        "region sync idle: one full state is {:.2} MiB; pushes sent {:.0} bytes/s per peer over {idle_secs} s ({:.4} % of a full state per interval); with the complete push every {full_interval:?} amortized, {:.0} bytes/s ({:.3} %; target ≤ 1 %)",
        whole as f64 / MIB,
        per_peer,
        per_peer * interval.as_secs_f64() * 100.0 / whole as f64,
        per_peer + amortized,
        (per_peer + amortized) * interval.as_secs_f64() * 100.0 / whole as f64
    );

    // Under load: edges at eu-1 take leases of random campaigns, spend 10 bids, release.
    let b0 = pushed(&regions);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(load_secs);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let addr = regions[0].addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut leases = pb::lease_api_client::LeaseApiClient::new(channel(&addr).await);
            let mut lat = Vec::new();
            let edge = format!("e{w}");
            let mut rng = fastrand::Rng::with_seed(w);
            for round in 0..1_000_000u64 {
                if Instant::now() >= deadline {
                    break;
                }
                let i = rng.u64(0..n);
                let t = Instant::now();
                let reply = leases
                    .grant_lease(pb::GrantLeaseRequest {
                        idempotency_key: key(3, w << 32 | round),
                        edge: edge.clone(),
                        campaign: name(i),
                        want_micros: 20_000,
                    })
                    .await
                    .expect("grant")
                    .into_inner()
                    .result;
                lat.push(t.elapsed().as_micros() as u64);
                let Some(pb::grant_lease_reply::Result::Lease(lease)) = reply else {
                    continue;
                };
                let mut spend = events(&format!("w{w}-r{round}"), 1, 10);
                for e in &mut spend {
                    e.amount_micros = 1_000;
                }
                leases
                    .report_spend(pb::ReportSpendRequest {
                        batch_id: key(4, w << 32 | round).map(|k| k.key).unwrap_or_default(),
                        edge: edge.clone(),
                        lease_id: lease.lease_id,
                        events: spend,
                        losses: Vec::new(),
                        held: Vec::new(),
                    })
                    .await
                    .expect("report");
                leases
                    .release_lease(pb::ReleaseLeaseRequest {
                        batch_id: key(5, w << 32 | round).map(|k| k.key).unwrap_or_default(),
                        edge: edge.clone(),
                        lease_id: lease.lease_id,
                        unreserved_micros: lease.amount_micros - 10_000,
                        bids: 10,
                        in_doubt: Vec::new(),
                    })
                    .await
                    .expect("release");
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("edge"));
    }
    let took = t0.elapsed().as_secs_f64();
    let loaded = (pushed(&regions) - b0) as f64 / took / 6.0;
    lat.sort_unstable();
    println!(
        "under load ({workers} edges at eu-1, {} leases in {took:.0} s = {:.0}/s, each 10 bids and a release): grant p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; region sync {:.0} bytes/s per peer ({:.3} % of a full state per interval)",
        lat.len(),
        lat.len() as f64 / took,
        percentile(&lat, 50) as f64 / 1e3,
        percentile(&lat, 99) as f64 / 1e3,
        lat.last().copied().unwrap_or(0) as f64 / 1e3,
        loaded,
        loaded * interval.as_secs_f64() * 100.0 / whole as f64
    );

    // The edges' catalog poll: the first (everything), then the next (what changed since).
    let mut leases = pb::lease_api_client::LeaseApiClient::new(channel(&regions[1].addr).await)
        .max_decoding_message_size(1 << 30);
    let t = Instant::now();
    let first = leases
        .list_active_campaigns(pb::ListActiveCampaignsRequest::default())
        .await
        .expect("poll")
        .into_inner();
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let next = leases
        .list_active_campaigns(pb::ListActiveCampaignsRequest {
            known_version: first.version,
            known_spend_version: first.spend_version,
        })
        .await
        .expect("poll")
        .into_inner();
    let next_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "catalog poll at us-1: the first {:.2} MiB ({} campaigns, {} day spends) in {first_ms:.1} ms; the next {} bytes ({} day spends) in {next_ms:.2} ms",
        first.encoded_len() as f64 / MIB,
        first.campaigns.len(),
        first.day_spend.len(),
        next.encoded_len(),
        next.day_spend.len()
    );
    // One campaign's price changes at its home; once us-1 has merged it, its edges' next poll
    // carries that campaign alone.
    let mut admin = pb::admin_client::AdminClient::new(channel(&regions[0].addr).await);
    admin
        .upsert_campaign(pb::UpsertCampaignRequest {
            idempotency_key: key(6, 0),
            config: Some(pb::CampaignConfig {
                campaign: name(0),
                time_zone: "UTC".into(),
                bid_cpm_micros: 2_000_000,
                daily_budget_micros: Some(1_000_000),
                ..Default::default()
            }),
        })
        .await
        .expect("change");
    let deadline = Instant::now() + Duration::from_secs(60);
    while regions[1]
        .node
        .state
        .read(|m| m.ledger().campaigns_version())
        == next.version
    {
        assert!(Instant::now() < deadline, "the change did not reach us-1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    let changed = leases
        .list_active_campaigns(pb::ListActiveCampaignsRequest {
            known_version: next.version,
            known_spend_version: next.spend_version,
        })
        .await
        .expect("poll")
        .into_inner();
    let changed_ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        changed.campaigns_delta && changed.campaigns.len() == 1,
        "a whole list for one change"
    );
    println!(
        "catalog poll after one campaign changed: {} bytes ({} campaign, {} day spends) in {changed_ms:.2} ms",
        changed.encoded_len(),
        changed.campaigns.len(),
        changed.day_spend.len()
    );

    // A new node joins eu-1: a snapshot first, so that it must take it.
    let eu = &regions[0].node;
    let applied = eu.state.applied_index();
    eu.raft.trigger().snapshot().await.expect("trigger");
    let waited = Instant::now();
    while eu
        .state
        .last_snapshot_build()
        .is_none_or(|s| s.index < applied)
    {
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "no snapshot within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snap = eu.state.last_snapshot_build().unwrap_or_default();
    eu.raft
        .trigger()
        .purge_log(snap.index)
        .await
        .expect("purge");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let joiner = Arc::new(
        Node::start(&NodeConfig::new(
            "eu-1".parse().expect("region"),
            2,
            tmp.path().join("eu-1-n2"),
        ))
        .await
        .expect("node 2"),
    );
    let serving = joiner.clone();
    tokio::spawn(async move {
        coordinator::api::serve_alone(&serving, listener, std::future::pending()).await
    });
    let t = Instant::now();
    eu.raft
        .add_learner(2, openraft::BasicNode { addr }, true)
        .await
        .expect("add learner");
    let joined = t.elapsed().as_secs_f64();
    let got = joiner.state.applied_index();
    println!(
        "join: a snapshot of {:.1} MiB ({} rows, built in {} ms); node 2 joined eu-1 and applied index {got} (≥ {}) in {joined:.2} s",
        snap.bytes as f64 / MIB,
        snap.rows,
        snap.build_us / 1_000,
        snap.index
    );
    assert!(got >= snap.index, "the new node did not catch up");
    joiner.shutdown().await;
    for r in &regions {
        r.node.shutdown().await;
    }
}
