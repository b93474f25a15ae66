//! `jepsen run`: a real topology in a private network namespace, load from an instrumented
//! exchange, faults from a seeded schedule, then heal, quiescence, the checkers and a report.
//!
//! The order of a run:
//! 1. the run's folder, the schedule (`schedule.json`), every process's clock set so that one
//!    campaign's day ends during the run;
//! 2. coordinators (one Raft group), campaigns and budgets, then edges;
//! 3. load (the exchange), balance reads, budget raises and the nemesis, all at once;
//! 4. the last fault healed, load continues through the quiet tail; then notices drain and the
//!    replicas catch up;
//! 5. the ledger read back from every replica, every data directory verified, the checkers run;
//! 6. `results.json`, `report.md` and its plots.

pub mod exchange;
pub mod faults;
pub mod grpc;
pub mod report;
pub mod tally;
pub mod topology;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use shared::log::{Payload, Verifier};
use shared::proto::v1 as pb;

use crate::check::{self, Verdict};
use crate::history::{self, Call, OpType};
use crate::nemesis::{Kind, Params, Schedule};
use exchange::{CAMPAIGNS, Exchange, Recorder};
use faults::Injected;
use grpc::{Coords, bucket_name};
use topology::{Plan, Topology};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fixes the schedule and every random choice of the load.
    pub seed: u64,
    /// The whole run, quiet tail included.
    pub time_limit: Duration,
    /// The fault kinds.
    pub kinds: Vec<Kind>,
    /// Exchange requests per second.
    pub rate: u32,
    /// Where run folders go.
    pub out: PathBuf,
    /// Where the binaries are.
    pub bin_dir: PathBuf,
    /// Regions (1: the single-region run).
    pub regions: usize,
    /// Coordinators per region.
    pub coordinators: usize,
    /// Edges.
    pub edges: usize,
    /// A planted bug to run with (binaries built with `shared/planted-bugs`).
    pub planted_bug: Option<String>,
    /// The required utilization of buckets whose demand exceeded their budget, ppm.
    pub min_utilization_ppm: i64,
    /// The longest the load goes on past the time limit (until every bucket is spent).
    pub drain_max: Duration,
}

/// How a run ended.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The run's folder.
    pub dir: PathBuf,
    /// Every invariant held and every fault was observed.
    pub passed: bool,
    /// The verdicts.
    pub verdicts: Vec<Verdict>,
    /// The faults.
    pub faults: Vec<Injected>,
    /// The lowest utilization among buckets whose demand exceeded their budget, ppm.
    pub utilization_ppm: Option<i64>,
    /// Runs of several regions: how long after the load every region's counters were equal
    /// for good (I5), in ms.
    pub converged_ms: Option<u64>,
    /// Processes that exited by themselves during the run (a crash fails the run).
    pub crashed: Vec<String>,
    /// Regions whose balances could not be read at the heal or at the end, with why (this
    /// fails the run too: a region that lost every node still owes its report).
    pub unread: Vec<String>,
}

/// The quiet tail: long enough for a lease stranded by the last fault to be reclaimed, wait in
/// doubt and be spent again.
/// The size of a coordinator's disk in runs where one fills up: room for a run's database,
/// snapshots and segments many times over (a 600 s run uses tens of MiB).
const SMALL_DISK_BYTES: u64 = 1 << 30;

const TAIL: Duration = Duration::from_secs(30);
/// Budgets are small, and raised by one step each time one runs out (nothing left to lease in
/// any region), at most this often, while faults run: so budgets end again and again, inside
/// fault windows, and errors at the end of a budget are exercised many times a run, not only
/// at its last second. The gap keeps each end in force for a while.
const RAISE_GAP: Duration = Duration::from_secs(3);
/// No raise this close to the quiet tail: the last raise is spent after the faults.
const RAISE_STOP: Duration = Duration::from_secs(10);
/// The regions' shares of the exchange's requests, home first: uneven on purpose, so that
/// rights must move.
const REGION_WEIGHTS: [u32; 3] = [50, 35, 15];
/// I5's bound: every region's counters equal this soon after the load stops.
const CONVERGE_BOUND: Duration = Duration::from_secs(10);

fn progress(start: Instant, msg: impl std::fmt::Display) {
    eprintln!("[{:>5.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// The wall-clock offset that puts the next midnight of `zone` `after` into the run.
fn offset_to_midnight(zone: &str, after: Duration) -> Result<i64> {
    let tz = jiff::tz::TimeZone::get(zone)?;
    let now = jiff::Timestamp::now();
    let tomorrow = now.to_zoned(tz.clone()).date().tomorrow()?;
    let midnight = tomorrow.to_zoned(tz)?.timestamp();
    let after_us = i64::try_from(after.as_micros()).unwrap_or(i64::MAX);
    Ok(midnight.as_microsecond() - now.as_microsecond() - after_us)
}

/// The date in `zone` at `unix_us`.
fn date_in(zone: &str, unix_us: i64) -> Result<String> {
    let tz = jiff::tz::TimeZone::get(zone)?;
    Ok(jiff::Timestamp::from_microsecond(unix_us)?
        .to_zoned(tz)
        .date()
        .to_string())
}

fn wall_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// The fault schedule of a run with these options.
pub fn schedule(
    seed: u64,
    time_limit: Duration,
    kinds: Vec<Kind>,
    regions: usize,
    coordinators: usize,
    edges: usize,
) -> Schedule {
    let names = |what: &str, n: usize| -> Vec<String> {
        topology::region_names(regions)
            .iter()
            .flat_map(|r| (1..=n).map(move |i| topology::node_name(regions, r, what, i)))
            .collect()
    };
    let region_nodes: Vec<(String, Vec<String>)> = if regions > 1 {
        topology::region_names(regions)
            .iter()
            .map(|r| {
                let mut nodes: Vec<String> = (1..=coordinators)
                    .map(|i| topology::node_name(regions, r, "coordinator", i))
                    .collect();
                nodes.extend((1..=edges).map(|i| topology::node_name(regions, r, "edge", i)));
                (r.clone(), nodes)
            })
            .collect()
    } else {
        Vec::new()
    };
    let coordinators = names("coordinator", coordinators);
    let edges = names("edge", edges);
    let mut params = Params::new(seed, time_limit, kinds, coordinators, edges);
    params.regions = region_nodes;
    params.tail = TAIL;
    Schedule::generate(&params)
}

/// Runs one whole run.
pub fn run(opts: &Options) -> Result<Outcome> {
    chaos::netns::ensure_private()?;
    chaos::netns::loopback_up()?;
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let dir = opts.out.join(format!("{stamp}-seed-{}", opts.seed));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let schedule = schedule(
        opts.seed,
        opts.time_limit,
        opts.kinds.clone(),
        opts.regions,
        opts.coordinators,
        opts.edges,
    );
    std::fs::write(
        dir.join("schedule.json"),
        serde_json::to_vec_pretty(&schedule)?,
    )?;
    let start = Instant::now();
    progress(
        start,
        format!(
            "run {} (seed {}): {} faults of {} over {:?}",
            dir.display(),
            opts.seed,
            schedule.windows.len(),
            schedule
                .kinds()
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(","),
            opts.time_limit
        ),
    );
    if schedule.windows.is_empty() && !opts.kinds.is_empty() {
        bail!(
            "the run is too short for any fault: give at least {} s",
            (TAIL + Duration::from_secs(15)).as_secs()
        );
    }
    let cross_at = (opts.time_limit / 4).min(Duration::from_secs(30));
    let day_zone = CAMPAIGNS[1].zone;
    let base_offset_us = offset_to_midnight(day_zone, cross_at)?;
    let topo = Topology::start(&Plan {
        dir: &dir,
        bin_dir: &opts.bin_dir,
        regions: opts.regions,
        coordinators: opts.coordinators,
        edges: opts.edges,
        base_offset_us,
        planted_bug: opts.planted_bug.as_deref(),
        // Only where a disk fills up: other runs keep the real file system's fsync.
        small_disks: schedule
            .kinds()
            .contains(&crate::nemesis::Kind::DiskFull)
            .then_some(SMALL_DISK_BYTES),
        fail_sync: schedule.kinds().contains(&crate::nemesis::Kind::SyncFail),
    })?;
    progress(
        start,
        format!(
            "{} coordinators and {} edges up{}; clocks at {} in {day_zone}, whose day ends {:?} into the load",
            opts.coordinators,
            opts.edges,
            if opts.regions > 1 {
                format!(" in each of {} regions", opts.regions)
            } else {
                String::new()
            },
            date_in(day_zone, wall_us() + base_offset_us)?,
            cross_at
        ),
    );
    for c in &CAMPAIGNS {
        let mut args = vec![
            "campaign",
            "create",
            c.name,
            "--zone",
            c.zone,
            "--bid-cpm",
            c.bid_cpm,
            "--country",
            c.country,
        ];
        let daily;
        if let Some(d) = c.daily_micros {
            daily = shared::Money::from_micros(d).to_string();
            args.extend(["--daily-budget", daily.as_str()]);
        }
        topo.budgetctl(&args)?;
    }
    let topo = Arc::new(Mutex::new(topo));
    let result = drive(opts, &dir, &schedule, &topo, base_offset_us, cross_at);
    let mut t = topo.lock().unwrap_or_else(|p| p.into_inner());
    t.stop();
    let (mut outcome, pending) = result?;
    // Every replica's data directory, verified offline by the auditor's tool, with the signed
    // head beside each sealed segment checked against the run's CA.
    let mut replicas_ok = Vec::new();
    for n in t.coordinators() {
        let out = std::process::Command::new(t.bin_dir.join("budgetctl"))
            .args(["audit", "verify"])
            .arg(&n.data_dir)
            .arg("--ca")
            .arg(t.pki.join("ca.pem"))
            .output()?;
        replicas_ok.push((
            n.name.clone(),
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string()
                + String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    drop(t);
    let path = report::finish(&mut outcome, pending, &replicas_ok, opts, &schedule)?;
    eprintln!("report: {}", path.display());
    Ok(outcome)
}

/// One replica's log as read back: its node, its entries with their hashes, and whether the
/// chain verified.
pub type ReplicaLog = (
    String,
    Vec<(shared::log::Entry, [u8; 32])>,
    Result<(), String>,
);

/// What the checks need from the replicas.
pub struct Ledger {
    /// Every coordinator's log.
    pub replicas: Vec<ReplicaLog>,
    /// Each replica's region (the same order).
    pub regions: Vec<String>,
}

/// Every region's balances: `(region, balances)`, home first.
type Snapshot = Vec<(String, Vec<pb::Balance>)>;

/// Each region's balances by bucket name.
fn per_region(snap: &Snapshot) -> Vec<(String, BTreeMap<String, pb::Balance>)> {
    snap.iter().map(|(r, b)| (r.clone(), by_name(b))).collect()
}

/// The regions' balances summed per bucket: settled, leased, in doubt, rights and available
/// added; the budget is the home's (the only region that sets one).
fn aggregate(snap: &Snapshot) -> BTreeMap<String, pb::Balance> {
    let mut out: BTreeMap<String, pb::Balance> = BTreeMap::new();
    for (_, balances) in snap {
        for (name, b) in by_name(balances) {
            let e = out.entry(name).or_insert_with(|| pb::Balance {
                bucket: b.bucket.clone(),
                ..Default::default()
            });
            e.budget_micros = e.budget_micros.max(b.budget_micros);
            e.rights_micros += b.rights_micros;
            e.settled_micros += b.settled_micros;
            e.leased_micros += b.leased_micros;
            e.in_doubt_micros += b.in_doubt_micros;
            e.available_micros += b.available_micros;
        }
    }
    out
}

/// Every region's balances, listed linearizably at one of its nodes. A region none of whose
/// nodes answers (it died, or never healed) has no balances; `unread` says which and why.
async fn snapshot(by_region: &[(String, Coords)], unread: &mut Vec<String>) -> Snapshot {
    let mut out = Vec::new();
    for (region, coords) in by_region {
        let balances = match coords.list_buckets(Duration::from_secs(20)).await {
            Ok(b) => b,
            Err(e) => {
                let why = format!("{region}: {e:#}");
                eprintln!("jepsen: could not read the balances of {why}");
                if !unread.iter().any(|u| u.starts_with(&format!("{region}:"))) {
                    unread.push(why);
                }
                Vec::new()
            }
        };
        out.push((region.clone(), balances));
    }
    out
}

/// Polls every region's `RegionStatus` (at whichever node leads) in rounds, until a round in
/// which all agree has been followed by two more, or `limit` passes.
async fn converge_rounds(
    by_region: &[(String, Coords)],
    rec: &Recorder,
    limit: Duration,
) -> Vec<check::converge::Observation> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut agreed_rounds = 0;
    let regions: Vec<String> = by_region.iter().map(|(r, _)| r.clone()).collect();
    for round in 0.. {
        let mut this = Vec::new();
        for (_, coords) in by_region {
            for i in 0..coords.nodes.len() {
                let r = coords
                    .admin(i)
                    .region_status(pb::RegionStatusRequest::default())
                    .await;
                if let Ok(r) = r.map(tonic::Response::into_inner)
                    && r.not_leader.is_none()
                {
                    this.extend(check::converge::observations(round, rec.now_us(), &r));
                    break;
                }
            }
        }
        out.extend(this);
        let (v, _) = check::converge::check(&regions, &out, 0, u64::MAX);
        agreed_rounds = if v.held { agreed_rounds + 1 } else { 0 };
        if agreed_rounds >= 3 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out
}

/// A balance snapshot's buckets by name.
fn by_name(balances: &[pb::Balance]) -> BTreeMap<String, pb::Balance> {
    balances
        .iter()
        .filter_map(|b| Some((bucket_name(b).ok()?, b.clone())))
        .collect()
}

#[allow(clippy::too_many_lines)]
fn drive(
    opts: &Options,
    dir: &Path,
    schedule: &Schedule,
    topo: &Arc<Mutex<Topology>>,
    base_offset_us: i64,
    cross_at: Duration,
) -> Result<(Outcome, report::Pending)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (regions, addrs, edge_urls, edge_regions, log_dir, topo_operator) = {
        let t = topo.lock().unwrap_or_else(|p| p.into_inner());
        let regions = t.regions();
        let addrs: Vec<Vec<(String, String)>> = regions
            .iter()
            .map(|r| {
                t.coordinators_of(r)
                    .map(|n| (n.name.clone(), n.addr()))
                    .collect()
            })
            .collect();
        (
            regions,
            addrs,
            t.edges()
                .map(|n| format!("http://{}", n.addr()))
                .collect::<Vec<_>>(),
            t.edges().map(|n| n.region.clone()).collect::<Vec<_>>(),
            dir.join("nodes"),
            t.operator.clone(),
        )
    };
    let multi = regions.len() > 1;
    // Per region, home first. One region's history and samples name no region.
    let by_region: Vec<(String, Coords)> = rt.block_on(async {
        regions
            .iter()
            .zip(&addrs)
            .map(|(r, a)| {
                Ok((
                    r.clone(),
                    Coords::new(a, &topo_operator, Duration::from_secs(2))?,
                ))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let coords = by_region[0].1.clone();
    let scale = i64::from(opts.rate.max(1));
    let step = |c: &exchange::Campaign| c.step_micros * scale / 300;
    // Budgets: the harness's own record of what it asked for (the largest, should an answer
    // be lost), the truth I1 holds the exchange's bills to.
    let budgets: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let budget_events: Arc<Mutex<Vec<(u64, String, i64)>>> = Arc::default();
    rt.block_on(async {
        for c in &CAMPAIGNS {
            coords
                .set_budget(c.name, step(c), Duration::from_secs(20))
                .await?;
            budgets
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(format!("{}/lifetime", c.name), step(c));
            budget_events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((0, c.name.to_string(), step(c)));
        }
        anyhow::Ok(())
    })?;
    // Edges take a moment to reach a coordinator; wait until each says it is healthy (200:
    // a coordinator answered its campaign poll).
    for url in &edge_urls {
        let addr = url.trim_start_matches("http://");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !faults::http_ok(addr, "/healthz") {
            if Instant::now() > deadline {
                bail!("edge {addr} did not come up");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let start = Instant::now();
    let history_file = std::fs::File::create(dir.join("history.jsonl"))?;
    let rec = Arc::new(Recorder::new(history_file, start));
    let ex_edge_regions = edge_regions.clone();
    let ex = Exchange::new(
        exchange::Settings {
            edges: edge_urls.clone(),
            edge_regions,
            weights: regions
                .iter()
                .zip(REGION_WEIGHTS.iter().copied().chain(std::iter::repeat(10)))
                .map(|(r, w)| (r.clone(), w))
                .collect(),
            rate: opts.rate,
            duration: opts.time_limit + opts.drain_max,
            seed: opts.seed,
            exp: exchange::ExpMix {
                default_s: topology::DEFAULT_EXP_S,
                max_s: topology::MAX_EXP_S,
            },
            late: Duration::from_millis(topology::LATE_ACCEPTANCE_MS),
        },
        rec.clone(),
    );
    let abort = Arc::new(AtomicBool::new(false));
    let nemesis = {
        let (schedule, topo, rec, abort, log_dir) = (
            schedule.clone(),
            topo.clone(),
            rec.clone(),
            abort.clone(),
            log_dir.clone(),
        );
        std::thread::spawn(move || faults::run(&schedule, &topo, &rec, start, &abort, &log_dir))
    };
    let escrow: Arc<Mutex<Vec<check::budget::Escrow>>> = Arc::default();
    let stop_reads = Arc::new(AtomicBool::new(false));
    // The leases the edges released, as each showed them (I10), read every 2 s.
    let edge_leases: Arc<Mutex<BTreeMap<(String, u64), check::leases::EdgeLease>>> = Arc::default();
    let edge_poller = {
        let (edges, regions, out, stop) = (
            edge_urls.clone(),
            ex_edge_regions.clone(),
            edge_leases.clone(),
            stop_reads.clone(),
        );
        std::thread::spawn(move || {
            let mut last = false;
            loop {
                for (url, region) in edges.iter().zip(&regions) {
                    poll_edge_leases(url.trim_start_matches("http://"), region, &out);
                }
                if last {
                    return;
                }
                for _ in 0..20 {
                    if stop.load(Ordering::Relaxed) {
                        last = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
    };
    let last_raise_at = opts.time_limit.saturating_sub(TAIL + RAISE_STOP);
    let mut unread = Vec::new();
    let (heal_snapshot, heal_at) = rt.block_on(async {
        let exchange = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run().await })
        };
        let mut readers = Vec::new();
        for r in 0..2u64 {
            readers.push(tokio::spawn(read_loop(
                by_region.clone(),
                multi,
                rec.clone(),
                escrow.clone(),
                stop_reads.clone(),
                opts.seed.wrapping_add(r),
            )));
        }
        // Budget raises and progress lines while the nemesis works.
        let mut last_raised = [Duration::ZERO; CAMPAIGNS.len()];
        let mut next_raise_check = Duration::ZERO;
        let mut next_progress = Duration::from_secs(5);
        let mut healed: Option<(Snapshot, Duration)> = None;
        while start.elapsed() < opts.time_limit {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = start.elapsed();
            if now >= next_raise_check && now < last_raise_at {
                next_raise_check = now + Duration::from_secs(1);
                for (ci, c) in CAMPAIGNS.iter().enumerate() {
                    if now.saturating_sub(last_raised[ci]) < RAISE_GAP {
                        continue;
                    }
                    // Ended: what every region could still lease is under two bids.
                    let Some(available) = available_everywhere(&by_region, c.name).await else {
                        continue;
                    };
                    if available >= 2 * c.bid_micros {
                        continue;
                    }
                    let key = format!("{}/lifetime", c.name);
                    let to = budgets
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&key)
                        .copied()
                        .unwrap_or(0)
                        + step(c);
                    budgets
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, to);
                    budget_events
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((rec.now_us(), c.name.to_string(), to));
                    if let Err(e) = coords.set_budget(c.name, to, Duration::from_secs(15)).await {
                        progress(start, format!("budget raise: {e:#}"));
                    }
                    last_raised[ci] = now;
                }
            }
            if healed.is_none() && nemesis.is_finished() {
                let snap = snapshot(&by_region, &mut unread).await;
                healed = Some((snap, start.elapsed()));
                progress(
                    start,
                    "every fault healed; load continues through the quiet tail",
                );
            }
            if now >= next_progress {
                next_progress += Duration::from_secs(5);
                let t = &ex.tally;
                let billed: i64 = t.billed_by_campaign().values().sum();
                progress(
                    start,
                    format!(
                        "requests {} bids {} wins {} billed {} notices sent {} abandoned {}",
                        t.requests.load(Ordering::Relaxed),
                        t.bids.load(Ordering::Relaxed),
                        t.wins.load(Ordering::Relaxed),
                        check::budget::micros(billed),
                        t.deliveries.load(Ordering::Relaxed),
                        t.abandoned.load(Ordering::Relaxed),
                    ),
                );
            }
        }
        // The drain: the load goes on past the time limit, for at most `drain_max`, until every
        // bucket whose demand exceeds what is left of it is spent to the required utilization.
        // Money that bids without a notice hold comes back only when their deadlines pass (up
        // to `exp` and the late acceptance later); a budget is spent when demand outlasts that,
        // and the run ends as soon as it is.
        if let Some((at_heal, heal_at)) = &healed {
            let heal_s = usize::try_from(heal_at.as_secs()).unwrap_or(usize::MAX);
            let heal = aggregate(at_heal);
            let drain_from = start.elapsed();
            let mut first = true;
            loop {
                let snap = snapshot(&by_region, &mut Vec::new()).await;
                let now = aggregate(&snap);
                let wall = wall_us() + base_offset_us;
                let short: Vec<String> = CAMPAIGNS
                    .iter()
                    .filter_map(|c| {
                        let bucket = report::binding_bucket(c, wall).ok()?;
                        let b = now.get(&bucket)?;
                        let settled_at_heal = heal.get(&bucket).map_or(0, |b| b.settled_micros);
                        let left_at_heal = (b.budget_micros - settled_at_heal).max(1);
                        let wanted = ex.tally.demand_since(c.name, heal_s) >= 2 * left_at_heal;
                        // I6's two rules: spent to the utilization (or less than a bid left),
                        // and spending resumed after the heal if a bid was left then. A drain
                        // that stopped at the first while the second still waited failed a
                        // 600 s seed on a bucket at 99.5 % whose last bid had not come back.
                        let spent =
                            check::progress::utilization_ppm(b.settled_micros, b.budget_micros)
                                >= opts.min_utilization_ppm
                                || b.budget_micros - b.settled_micros < c.bid_micros;
                        let resumed = b.settled_micros > settled_at_heal
                            || b.budget_micros - settled_at_heal < c.bid_micros;
                        let enough = spent && resumed;
                        (wanted && !enough).then_some(bucket)
                    })
                    .collect();
                let drained = start.elapsed() - drain_from;
                if short.is_empty() || drained >= opts.drain_max {
                    progress(
                        start,
                        format!(
                            "load stops after a drain of {} ms{}",
                            drained.as_millis(),
                            if short.is_empty() {
                                String::new()
                            } else {
                                format!(" (still short: {})", short.join(", "))
                            }
                        ),
                    );
                    break;
                }
                if std::mem::take(&mut first) {
                    progress(
                        start,
                        format!(
                            "time limit; the load goes on while {} is short of its budget",
                            short.join(", ")
                        ),
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        ex.stop();
        progress(start, "load done; waiting for the last notices");
        exchange.await?;
        stop_reads.store(true, Ordering::Relaxed);
        for r in readers {
            r.await?;
        }
        let healed = match healed {
            Some(h) => h,
            None => {
                abort.store(true, Ordering::Relaxed);
                (snapshot(&by_region, &mut unread).await, start.elapsed())
            }
        };
        anyhow::Ok(healed)
    })?;
    let injected = nemesis
        .join()
        .map_err(|_| anyhow::anyhow!("the nemesis thread panicked"))??;
    edge_poller
        .join()
        .map_err(|_| anyhow::anyhow!("the edge poller panicked"))?;
    let crashed = topo.lock().unwrap_or_else(|p| p.into_inner()).crashed();
    if !crashed.is_empty() {
        progress(
            start,
            format!("processes that exited by themselves: {crashed:?}"),
        );
    }
    progress(
        start,
        "quiescence: waiting for every replica to hold the same log",
    );
    let load_done_us = rec.now_us();
    let (final_balances, ledger, rounds) = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, coords) in &by_region {
            loop {
                let mut heads = Vec::new();
                for i in 0..coords.nodes.len() {
                    heads.push(coords.head(i).await.ok());
                }
                let same = heads.iter().all(|h| h.is_some() && *h == heads[0]);
                if same || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        // I5: rounds of every region's counters until they agree (and a little after).
        let rounds = if multi {
            converge_rounds(&by_region, &rec, CONVERGE_BOUND * 3).await
        } else {
            Vec::new()
        };
        let balances = snapshot(&by_region, &mut unread).await;
        let mut replicas = Vec::new();
        let mut replica_regions = Vec::new();
        for (region_name, coords) in &by_region {
            let region: shared::RegionId = region_name.parse()?;
            for (i, (name, _)) in coords.nodes.iter().enumerate() {
                let records = coords.read_log(i).await.unwrap_or_default();
                let mut v = Verifier::new();
                let mut verified = Ok(());
                let mut entries = Vec::new();
                for r in &records {
                    if let Err(f) = v.live_record(name, &region, r) {
                        verified = Err(format!("{f:?}"));
                        break;
                    }
                    match shared::log::record::decode(r) {
                        Ok(e) => entries.push(e),
                        Err(e) => {
                            verified = Err(e);
                            break;
                        }
                    }
                }
                if records.is_empty() {
                    verified = Err("its log could not be read".into());
                }
                replicas.push((name.clone(), entries, verified));
                replica_regions.push(region_name.clone());
            }
        }
        anyhow::Ok((
            balances,
            Ledger {
                replicas,
                regions: replica_regions,
            },
            rounds,
        ))
    })?;
    drop(rt);
    let ops = rec.ops();
    let completed = history::complete(&ops)?;
    let inputs = report::Inputs {
        opts,
        dir,
        schedule,
        injected: &injected,
        completed: &completed,
        tally: &ex.tally,
        budgets: &budgets.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        budget_events: &budget_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        escrow: &escrow.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        heal: &aggregate(&heal_snapshot),
        heal_regions: &per_region(&heal_snapshot),
        heal_at,
        end: &aggregate(&final_balances),
        end_regions: &per_region(&final_balances),
        rounds: &rounds,
        load_done_us,
        regions: &regions,
        ledger: &ledger,
        base_offset_us,
        cross_at,
        load_start_wall_us: wall_us() - i64::try_from(start.elapsed().as_micros())?,
        edge_leases: &edge_leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
    };
    let (mut outcome, pending) = report::check_all(&inputs)?;
    outcome.crashed = crashed;
    outcome.unread = unread;
    Ok((outcome, pending))
}

/// Reads an edge's `/debug/leases` and keeps, per released lease, the lowest unreserved
/// amount it showed (keyed `(region, lease)`, region "" in a run of one region). An edge that
/// does not answer (killed, paused, cut off) is read next time.
fn poll_edge_leases(
    addr: &str,
    region: &str,
    out: &Mutex<BTreeMap<(String, u64), check::leases::EdgeLease>>,
) {
    let Ok(body) = faults::http_get(addr, "/debug/leases") else {
        return;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return;
    };
    let edge = v["edge"].as_str().unwrap_or(addr).to_string();
    let region = if region == topology::REGION {
        String::new()
    } else {
        region.to_string()
    };
    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
    for r in v["released"].as_array().into_iter().flatten() {
        let (Some(lease), Some(amount), Some(unreserved)) = (
            r["lease"].as_u64(),
            r["amount"].as_i64(),
            r["unreserved"].as_i64(),
        ) else {
            continue;
        };
        let e = out
            .entry((region.clone(), lease))
            .or_insert(check::leases::EdgeLease {
                edge: edge.clone(),
                amount,
                unreserved,
            });
        e.unreserved = e.unreserved.min(unreserved);
    }
}

/// What every region could still lease of `campaign`'s lifetime bucket, summed; `None` if a
/// region could not be read.
async fn available_everywhere(by_region: &[(String, Coords)], campaign: &str) -> Option<i64> {
    let mut sum = 0;
    for (_, coords) in by_region {
        let mut read = None;
        for i in 0..coords.nodes.len() {
            let r = tokio::time::timeout(
                Duration::from_millis(500),
                coords.admin(i).get_balance(pb::GetBalanceRequest {
                    bucket: Some(grpc::lifetime(campaign)),
                }),
            )
            .await;
            if let Ok(Ok(b)) = r {
                read = Some(b.into_inner().available_micros);
                break;
            }
        }
        sum += read?;
    }
    Some(sum)
}

/// Linearizable balance reads of random lifetime buckets at random coordinators, recorded for
/// I7 and sampled for I2, until `stop`.
async fn read_loop(
    by_region: Vec<(String, Coords)>,
    multi: bool,
    rec: Arc<Recorder>,
    escrow: Arc<Mutex<Vec<check::budget::Escrow>>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        let (region, coords) = &by_region[rng.usize(..by_region.len())];
        let i = rng.usize(..coords.nodes.len());
        let c = &CAMPAIGNS[rng.usize(..CAMPAIGNS.len())];
        let bucket = format!("{}/lifetime", c.name);
        let process = rec.process("r");
        let call = |value, index| Call::Read {
            bucket: bucket.clone(),
            value,
            index,
            region: if multi { region.clone() } else { String::new() },
        };
        rec.record(&process, OpType::Invoke, call(None, None));
        let r = coords
            .admin(i)
            .get_balance(pb::GetBalanceRequest {
                bucket: Some(grpc::lifetime(c.name)),
            })
            .await;
        match r {
            Ok(b) => {
                let b = b.into_inner();
                rec.record(
                    &process,
                    OpType::Ok,
                    call(Some(b.settled_micros), Some(b.read_at_index)),
                );
                escrow
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(check::budget::Escrow {
                        at_us: rec.now_us(),
                        region: region.clone(),
                        bucket: bucket.clone(),
                        rights: b.rights_micros,
                        settled: b.settled_micros,
                        leased: b.leased_micros,
                        in_doubt: b.in_doubt_micros,
                    });
            }
            // A read that failed changed nothing, whatever the reason.
            Err(_) => rec.record(&process, OpType::Fail, call(None, None)),
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(20..80))).await;
    }
}

/// What a ledger holds, from the entries of its longest replica: the lease → buckets map, the
/// charged events (for I3), and each bucket's settled spend after every Raft index that changed
/// it (for I7).
pub struct Facts {
    /// Lease id → `(campaign, ["campaign/bucket", …])`.
    pub leases: BTreeMap<u64, (String, Vec<String>)>,
    /// Lease id → amount granted, micros.
    pub granted: BTreeMap<u64, i64>,
    /// Lease id → the Raft index of its release or reclaim.
    pub closed_at: BTreeMap<u64, u64>,
    /// Charged events.
    pub events: Vec<check::notices::LedgerEvent>,
    /// Settled per bucket over Raft indexes.
    pub timelines: BTreeMap<String, check::linear::Timeline>,
}

/// Reads the facts out of `region`'s `entries`.
pub fn facts(region: &str, entries: &[(shared::log::Entry, [u8; 32])]) -> Facts {
    let mut f = Facts {
        leases: BTreeMap::new(),
        granted: BTreeMap::new(),
        closed_at: BTreeMap::new(),
        events: Vec::new(),
        timelines: BTreeMap::new(),
    };
    let mut settled: BTreeMap<String, i64> = BTreeMap::new();
    for (e, _) in entries {
        match &e.payload {
            Payload::LeaseGranted(g) => {
                let buckets = g
                    .buckets
                    .iter()
                    .map(|b| format!("{}/{b}", g.campaign))
                    .collect();
                f.leases
                    .insert(g.lease.0, (g.campaign.to_string(), buckets));
                f.granted.insert(g.lease.0, g.amount.micros());
            }
            Payload::LeaseReleased(r) => {
                f.closed_at.entry(r.lease.0).or_insert(e.raft_index);
            }
            Payload::LeaseReclaimed(r) => {
                f.closed_at.entry(r.lease.0).or_insert(e.raft_index);
            }
            Payload::SpendBatch(b) => {
                let total: i64 = b.events.iter().map(|x| x.amount.micros()).sum();
                for x in &b.events {
                    f.events.push(check::notices::LedgerEvent {
                        bid: format!("{region}/{}.{}", b.lease.0, x.bid),
                        event: x.key.to_string(),
                        amount: x.amount.micros(),
                        seq: e.seq,
                        how: check::notices::Charge::Settled,
                    });
                }
                let buckets = f
                    .leases
                    .get(&b.lease.0)
                    .map(|l| l.1.clone())
                    .unwrap_or_default();
                for k in buckets {
                    let s = settled.entry(k.clone()).or_default();
                    *s += total;
                    let t = f.timelines.entry(k).or_default();
                    match t.last_mut() {
                        Some(last) if last.0 == e.raft_index => last.1 = *s,
                        _ => t.push((e.raft_index, *s)),
                    }
                }
            }
            Payload::Anomaly(a) => f.events.push(check::notices::LedgerEvent {
                bid: format!("{region}/{}.{}", a.lease.0, a.event.bid),
                event: a.event.key.to_string(),
                amount: a.event.amount.micros(),
                seq: e.seq,
                how: check::notices::Charge::Anomaly,
            }),
            _ => {}
        }
    }
    f
}
