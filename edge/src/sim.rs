//! A small simulated exchange: it sends real-shaped OpenRTB 2.6 requests to the edges at a
//! fixed rate, runs a second-price auction of each bid against a synthetic competitor, sends the
//! win and billing (or loss) notice to the edge that bid, retrying at any edge of its region
//! until acknowledged, and keeps its own record of what it billed.
//!
//! Its traffic is shaped like a real exchange's, not like our edge would want it: impressions
//! carry `exp` (10 % none, 5 % two hours, the rest 60 s to an hour), 3 % of requests reuse an
//! earlier auction's id and 2 % replay an earlier request byte for byte, 7 in 10 lost bids hear
//! so with an IAB loss reason code, one win in twenty is never billed, and a third of the bills
//! come late (within the impression's `exp`, at most 10 s in a demo). With regions, it can move
//! most of its traffic from one region to the next (`focus_every`). Once a second it prints a
//! status line: requests, bids, wins, and per campaign what it billed against the budget.
//!
//! Bounded: it stops after `duration` or `max_requests`, whichever comes first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shared::Money;
use shared::bucket::Bucket;
use shared::proto::v1 as pb;
use tokio::sync::Mutex;

use crate::http::HttpClient;
use crate::openrtb::BidResponse;

/// What to run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Edge base URLs.
    pub edges: Vec<String>,
    /// The region of each edge, in the same order (empty: no regions). A notice is retried
    /// only at edges of the region of the edge that bid: another region's edges refuse it.
    pub regions: Vec<String>,
    /// Move the traffic between regions: 80 % of the requests go to one region's edges at a
    /// time, the next region's every this long (None: spread evenly over the edges).
    pub focus_every: Option<Duration>,
    /// Coordinators, for budgets in the status line (empty: none); the first that answers.
    pub coordinators: Vec<String>,
    /// How to call them (an operator's certificate, or plaintext).
    pub transport: shared::tls::Transport,
    /// Requests per second.
    pub rate: u32,
    /// Stop after this long.
    pub duration: Duration,
    /// Stop after this many requests.
    pub max_requests: u64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Every `exp` is divided by this (at least 1 s): 1 sends real ones (a minute to two
    /// hours), 360 the same mix in seconds (for tests whose region's longest `exp` is 10 s).
    pub exp_scale: u64,
    /// The prefix of its auction ids (unique per run unless the seed is given: a second run
    /// against the same region must not look like a replay of the first).
    pub run_id: String,
    /// Print a status line every second.
    pub status: bool,
}

/// What the exchange saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Requests sent.
    pub requests: AtomicU64,
    /// Bids received.
    pub bids: AtomicU64,
    /// Auctions our bidder won.
    pub wins: AtomicU64,
    /// Notices that were never acknowledged.
    pub notices_lost: AtomicU64,
    /// Requests that reused an earlier auction's id.
    pub reused_ids: AtomicU64,
    /// Requests replayed byte for byte.
    pub replays: AtomicU64,
    /// Loss notices sent.
    pub losses: AtomicU64,
    /// Wins never billed.
    pub unbilled: AtomicU64,
    /// Micros billed per campaign (acknowledged billing notices).
    pub billed: Mutex<BTreeMap<String, i64>>,
    /// Micros billed per campaign, acknowledged or not: what the exchange charged (a real
    /// exchange bills the impression, not our acknowledgement).
    pub made: Mutex<BTreeMap<String, i64>>,
    /// All micros billed.
    pub billed_total: AtomicI64,
}

const DOMAINS: [&str; 4] = [
    "news.example",
    "sports.example",
    "recipes.example",
    "games.example",
];
const COUNTRIES: [&str; 3] = ["USA", "FRA", "DEU"];
const SIZES: [(u32, u32); 3] = [(300, 250), (728, 90), (320, 50)];

/// An impression's `exp`, seconds: none for 10 %, two hours (past the default maximum) for
/// 5 %, else a common value from a minute to an hour.
fn exp(rng: &mut fastrand::Rng, scale: u64) -> Option<u64> {
    const COMMON: [u64; 5] = [60, 300, 900, 1_800, 3_600];
    let s = match rng.u8(..100) {
        0..10 => return None,
        10..15 => 7_200,
        _ => COMMON[rng.usize(..COMMON.len())],
    };
    Some((s / scale.max(1)).max(1))
}

fn request(rng: &mut fastrand::Rng, id: &str, exp_scale: u64) -> Vec<u8> {
    let (w, h) = SIZES[rng.usize(..SIZES.len())];
    let floor_milli = rng.u32(..800);
    let mut body = serde_json::json!({
        "id": id,
        "at": 2,
        "tmax": 120,
        "cur": ["USD"],
        "imp": [{
            "id": "1",
            "bidfloor": f64::from(floor_milli) / 1000.0,
            "bidfloorcur": "USD",
            "banner": {"w": w, "h": h, "format": [{"w": w, "h": h}]},
        }],
        "site": {
            "id": "site-1",
            "domain": DOMAINS[rng.usize(..DOMAINS.len())],
            "page": format!("https://{}/article", DOMAINS[rng.usize(..DOMAINS.len())]),
            "cat": ["IAB1"],
        },
        "device": {"devicetype": 2, "geo": {"country": COUNTRIES[rng.usize(..COUNTRIES.len())]}},
        "user": {"id": format!("u{}", rng.u32(..100_000))},
    });
    if let Some(e) = exp(rng, exp_scale) {
        body["imp"][0]["exp"] = e.into();
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The earlier requests a new one may reuse or replay.
const REMEMBERED: usize = 1_000;

/// The longest a demo's bill comes late.
const LATEST_BILL: Duration = Duration::from_secs(10);

/// The region the traffic is focused on `elapsed` into the run, if it moves.
pub fn focus(cfg: &SimConfig, elapsed: Duration) -> Option<&str> {
    let every = cfg.focus_every?.as_millis().max(1);
    let mut names: Vec<&str> = cfg.regions.iter().map(String::as_str).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < 2 {
        return None;
    }
    let phase = usize::try_from(elapsed.as_millis() / every).unwrap_or(0);
    Some(names[phase % names.len()])
}

/// The index of the edge for the next request: 80 % of them go to the focused region's edges
/// when the traffic moves, the rest (and all, when it does not) to any edge.
fn pick_edge(cfg: &SimConfig, rng: &mut fastrand::Rng, elapsed: Duration) -> usize {
    if let Some(f) = focus(cfg, elapsed)
        && rng.u8(..10) < 8
    {
        let of: Vec<usize> = (0..cfg.edges.len())
            .filter(|i| cfg.regions.get(*i).map(String::as_str) == Some(f))
            .collect();
        if !of.is_empty() {
            return of[rng.usize(..of.len())];
        }
    }
    rng.usize(..cfg.edges.len())
}

/// A CPM in decimal from micros per impression.
fn cpm(micros: i64) -> String {
    format!("{}.{:03}", micros / 1000, micros % 1000)
}

/// Runs the exchange; returns what it saw.
pub async fn run(cfg: SimConfig) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let http = HttpClient::new(Duration::from_secs(15));
    let started = Instant::now();
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(cfg.rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let status = if cfg.status {
        Some(tokio::spawn(status_loop(
            cfg.clone(),
            tally.clone(),
            started,
        )))
    } else {
        None
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    let mut earlier: std::collections::VecDeque<(String, Vec<u8>)> =
        std::collections::VecDeque::with_capacity(REMEMBERED);
    // Where each edge's notices may be retried: the edges of its region.
    let retry: Vec<Arc<Vec<String>>> = (0..cfg.edges.len())
        .map(|i| {
            Arc::new(
                (0..cfg.edges.len())
                    .filter(|j| cfg.regions.get(*j) == cfg.regions.get(i))
                    .map(|j| cfg.edges[j].clone())
                    .collect(),
            )
        })
        .collect();
    while started.elapsed() < cfg.duration && n < cfg.max_requests {
        tick.tick().await;
        n += 1;
        let roll = rng.u8(..100);
        let body = if roll < 2 && !earlier.is_empty() {
            tally.replays.fetch_add(1, Ordering::Relaxed);
            earlier[rng.usize(..earlier.len())].1.clone()
        } else {
            let id = if roll < 5 && !earlier.is_empty() {
                tally.reused_ids.fetch_add(1, Ordering::Relaxed);
                earlier[rng.usize(..earlier.len())].0.clone()
            } else {
                format!("sim-{}-{n}", cfg.run_id)
            };
            let body = request(&mut rng, &id, cfg.exp_scale);
            if earlier.len() == REMEMBERED {
                earlier.pop_front();
            }
            earlier.push_back((id, body.clone()));
            body
        };
        let i = pick_edge(&cfg, &mut rng, started.elapsed());
        let edge = cfg.edges[i].clone();
        let competitor = rng.i64(0..3_000);
        let seed = rng.u64(..);
        let (http, tally, edges) = (http.clone(), tally.clone(), retry[i].clone());
        tasks.spawn(
            async move { auction(&http, &tally, &edges, &edge, body, competitor, seed).await },
        );
        // Reap finished auctions so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    if let Some(s) = status {
        s.abort();
    }
    if cfg.status {
        let budgets: Budgets = Arc::default();
        let campaigns: Vec<String> = tally.billed.lock().await.keys().cloned().collect();
        for c in campaigns {
            if let Some(b) = budget(&cfg.transport, &cfg.coordinators, &c).await {
                budgets.lock().await.insert(c, b);
            }
        }
        print_status(&cfg, &tally, started, &budgets).await;
    }
    tally
}

/// One campaign at the end of a run: its lifetime budget, what the exchange billed
/// (acknowledged or not), and what each region's ledger settled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The campaign.
    pub campaign: String,
    /// Its lifetime budget (rights created less burned, every region).
    pub budget: i64,
    /// What the exchange billed.
    pub billed: i64,
    /// Settled, per region.
    pub settled: Vec<(String, i64)>,
}

impl Verdict {
    /// Settled in every region.
    pub fn settled_total(&self) -> i64 {
        self.settled.iter().map(|(_, s)| s).sum()
    }
}

/// The end of a run, per campaign (every campaign a ledger knows, and every one the exchange
/// billed, added by hand during the run or not): budget, billed, settled per region and in
/// all. It reads until the ledgers hold every bill or `patience` passes (peer regions' spend
/// reaches the home a sync interval later). Returns the lines and whether the run kept every
/// promise: nothing billed over a budget, nothing billed that no ledger holds.
pub async fn verdict(cfg: &SimConfig, tally: &Tally, patience: Duration) -> (String, bool) {
    let deadline = Instant::now() + patience;
    let made = tally.made.lock().await.clone();
    let mut verdicts;
    // Campaigns whose ledger no coordinator answered for: no verdict is possible for them, and
    // a read that failed is not a zero (a rolling restart once made it look like an overspend).
    let mut unread: Vec<String>;
    loop {
        verdicts = Vec::new();
        unread = Vec::new();
        let mut names: Vec<String> = made.keys().cloned().collect();
        names.extend(campaigns(cfg).await);
        names.sort();
        names.dedup();
        for c in names {
            let Some((budget, settled)) = settled_by_region(cfg, &c).await else {
                unread.push(c);
                continue;
            };
            verdicts.push(Verdict {
                billed: made.get(&c).copied().unwrap_or(0),
                campaign: c,
                budget,
                settled,
            });
        }
        // (Settled may exceed this run's bills: earlier runs against the same region.)
        let held = verdicts.iter().all(|v| v.settled_total() >= v.billed);
        if (unread.is_empty() && held) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let m = Money::from_micros;
    let mut out = format!(
        "{:<16} {:>12} {:>12} {:>12}  settled per region",
        "campaign", "budget", "billed", "settled"
    );
    let (mut over, mut unheld) = (Vec::new(), 0i64);
    for v in &verdicts {
        let per: Vec<String> = v
            .settled
            .iter()
            .map(|(r, s)| format!("{r} {}", m(*s)))
            .collect();
        out.push_str(&format!(
            "\n{:<16} {:>12} {:>12} {:>12}  {}",
            v.campaign,
            m(v.budget).to_string(),
            m(v.billed).to_string(),
            m(v.settled_total()).to_string(),
            per.join(", ")
        ));
        if v.billed > v.budget {
            over.push(format!("{} by {}", v.campaign, m(v.billed - v.budget)));
        }
        unheld += (v.billed - v.settled_total()).max(0);
    }
    for c in &unread {
        out.push_str(&format!(
            "\n{c:<16} no coordinator of {} answered for its ledger",
            cfg.coordinators.join(", ")
        ));
    }
    let ok = over.is_empty() && unheld == 0 && unread.is_empty();
    let unknown = (!unread.is_empty()).then(|| format!("unknown (unread: {})", unread.join(", ")));
    out.push_str(&format!(
        "\nnever over budget: {}",
        if !over.is_empty() {
            format!("NO ({})", over.join(", "))
        } else {
            unknown.clone().unwrap_or_else(|| "yes".to_string())
        }
    ));
    out.push_str(&format!(
        "\nevery bill in a ledger: {}",
        if unheld != 0 {
            format!("NO ({} billed that no ledger holds)", m(unheld))
        } else {
            unknown.clone().unwrap_or_else(|| "yes".to_string())
        }
    ));
    (out, ok)
}

/// Every campaign the coordinators' region knows.
async fn campaigns(cfg: &SimConfig) -> Vec<String> {
    for addr in &cfg.coordinators {
        let Some(mut c) = admin(&cfg.transport, addr).await else {
            continue;
        };
        if let Ok(r) = c
            .list_buckets(pb::ListBucketsRequest {
                campaign: String::new(),
            })
            .await
        {
            let mut names: Vec<String> = r
                .into_inner()
                .balances
                .iter()
                .filter_map(|b| b.bucket.as_ref().map(|k| k.campaign.clone()))
                .collect();
            names.dedup();
            return names;
        }
    }
    Vec::new()
}

/// A campaign's lifetime budget, and what each region settled of it (from the region status
/// of the coordinators' region; one region: its own balance).
/// A campaign's lifetime budget and settled spend per region, from the first coordinator that
/// leads and answers; `None` if none did (a rolling restart, an election).
async fn settled_by_region(cfg: &SimConfig, campaign: &str) -> Option<(i64, Vec<(String, i64)>)> {
    // The configured coordinators, then the leaders they name (a follower answers with the
    // leader's address: the deploy test gives one coordinator, which a rolling restart leaves
    // a follower).
    let mut addrs: Vec<String> = cfg.coordinators.clone();
    let mut i = 0;
    while i < addrs.len() && i < cfg.coordinators.len() + 3 {
        let addr = addrs[i].clone();
        i += 1;
        let Some(mut c) = admin(&cfg.transport, &addr).await else {
            continue;
        };
        let Ok(r) = c
            .region_status(pb::RegionStatusRequest {
                campaign: campaign.to_owned(),
            })
            .await
        else {
            continue;
        };
        let r = r.into_inner();
        if let Some(nl) = &r.not_leader {
            if !nl.leader_addr.is_empty() && !addrs.contains(&nl.leader_addr) {
                addrs.push(nl.leader_addr.clone());
            }
            continue;
        }
        let lifetime = r.buckets.iter().find(|b| {
            b.bucket.as_ref().and_then(|k| k.bucket.as_ref())
                == Some(&pb::Bucket::from(&Bucket::Lifetime))
        });
        // (A campaign with no lifetime bucket has no budget and no spend.)
        return Some(lifetime.map_or((0, Vec::new()), |b| {
            let budget = b
                .regions
                .iter()
                .map(|x| x.created_micros - x.burned_micros)
                .sum();
            (
                budget,
                b.regions
                    .iter()
                    .map(|x| (x.region.clone(), x.settled_micros))
                    .collect(),
            )
        }));
    }
    None
}

async fn admin(
    transport: &shared::tls::Transport,
    addr: &str,
) -> Option<pb::admin_client::AdminClient<tonic::transport::Channel>> {
    let channel = transport
        .endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .ok()?;
    Some(pb::admin_client::AdminClient::new(channel))
}

async fn auction(
    http: &HttpClient,
    tally: &Tally,
    edges: &[String],
    edge: &str,
    body: Vec<u8>,
    competitor_micros: i64,
    seed: u64,
) {
    tally.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(r) = http
        .post(
            &format!("{edge}/openrtb2/bid"),
            &[("x-openrtb-version", "2.6")],
            body,
        )
        .await
    else {
        return;
    };
    if r.status != 200 {
        return;
    }
    let Ok(resp) = serde_json::from_slice::<BidResponse>(&r.body) else {
        return;
    };
    let mut rng = fastrand::Rng::with_seed(seed);
    for bid in resp.seatbid.iter().flat_map(|s| &s.bid) {
        tally.bids.fetch_add(1, Ordering::Relaxed);
        let Ok(price) = Money::from_cpm_str(bid.price.get()) else {
            continue;
        };
        let ours = price.micros();
        // Second price: the winner pays the runner-up's price plus one micro, at most its bid.
        let (won, clearing) = if ours > competitor_micros {
            (true, (competitor_micros + 1).min(ours))
        } else {
            (false, 0)
        };
        // A notice goes to the edge that bid; a retry goes to any edge of its region (any of
        // them may settle it).
        let path = |url: &str| url.find("/notice/").map_or(url, |i| &url[i..]).to_string();
        let seed = rng.u64(..);
        if won {
            tally.wins.fetch_add(1, Ordering::Relaxed);
            let win = path(&bid.nurl).replace("${AUCTION_PRICE}", &cpm(clearing));
            let bill = path(&bid.burl).replace("${AUCTION_PRICE}", &cpm(clearing));
            let _ = deliver(http, tally, edges, edge, &win, seed).await;
            if rng.u8(..20) == 0 {
                // Won, never shown: no bill.
                tally.unbilled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if rng.u8(..3) == 0 {
                // Shown later, within the impression's `exp` (at most LATEST_BILL here).
                let exp = bid
                    .exp
                    .and_then(|e| u64::try_from(e).ok())
                    .unwrap_or(300)
                    .max(1);
                let latest = Duration::from_secs(exp).min(LATEST_BILL);
                tokio::time::sleep(latest.mul_f64(rng.f64())).await;
            }
            *tally
                .made
                .lock()
                .await
                .entry(bid.cid.to_string())
                .or_default() += clearing;
            if deliver(http, tally, edges, edge, &bill, seed ^ 1).await {
                *tally
                    .billed
                    .lock()
                    .await
                    .entry(bid.cid.to_string())
                    .or_default() += clearing;
                tally.billed_total.fetch_add(clearing, Ordering::Relaxed);
            }
        } else if rng.u8(..10) < 7 {
            // Lost, and told so: mostly to a higher bid (102), sometimes the impression
            // opportunity expired (2).
            let code = if rng.u8(..100) < 85 { "102" } else { "2" };
            let loss = path(&bid.lurl)
                .replace("${AUCTION_PRICE}", &cpm(competitor_micros))
                .replace("${AUCTION_LOSS}", code);
            tally.losses.fetch_add(1, Ordering::Relaxed);
            let _ = deliver(http, tally, edges, edge, &loss, seed).await;
        }
    }
}

/// Sends a notice (`path`) to the edge that bid, then to random edges, until one acknowledges
/// it (at most 10 tries).
async fn deliver(
    http: &HttpClient,
    tally: &Tally,
    edges: &[String],
    first: &str,
    path: &str,
    seed: u64,
) -> bool {
    let mut rng = fastrand::Rng::with_seed(seed);
    for attempt in 0..10u32 {
        let at = if attempt == 0 {
            first
        } else {
            &edges[rng.usize(..edges.len())]
        };
        if let Ok(r) = http.get(&format!("{at}{path}")).await {
            if r.status == 200 {
                return true;
            }
            if r.status == 400 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(4))).await;
    }
    tally.notices_lost.fetch_add(1, Ordering::Relaxed);
    false
}

/// Each campaign's lifetime budget and settled spend as last read ([`budget`]): the status
/// lines print from it, so that a slow coordinator never delays a line.
type Budgets = Arc<Mutex<BTreeMap<String, (i64, i64)>>>;

/// A status line every second, on the second (a missed tick is skipped, never bunched), from
/// figures a second task keeps fresh.
async fn status_loop(cfg: SimConfig, tally: Arc<Tally>, started: Instant) {
    let budgets: Budgets = Arc::default();
    let refresh = {
        let (cfg, tally, budgets) = (cfg.clone(), tally.clone(), budgets.clone());
        tokio::spawn(async move {
            loop {
                let campaigns: Vec<String> = tally.billed.lock().await.keys().cloned().collect();
                for c in campaigns {
                    if let Some(b) = budget(&cfg.transport, &cfg.coordinators, &c).await {
                        budgets.lock().await.insert(c, b);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let _stop = AbortOnDrop(refresh);
    loop {
        tick.tick().await;
        print_status(&cfg, &tally, started, &budgets).await;
    }
}

/// Aborts a task when dropped (the status loop's refresher ends with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn print_status(cfg: &SimConfig, tally: &Tally, started: Instant, budgets: &Budgets) {
    let billed = tally.billed.lock().await.clone();
    let focus = focus(cfg, started.elapsed()).map_or(String::new(), |f| format!(" focus={f}"));
    let mut line = format!(
        "t={:>3}s{focus} requests={} bids={} wins={} billed={}",
        started.elapsed().as_secs(),
        tally.requests.load(Ordering::Relaxed),
        tally.bids.load(Ordering::Relaxed),
        tally.wins.load(Ordering::Relaxed),
        Money::from_micros(tally.billed_total.load(Ordering::Relaxed)),
    );
    let known = budgets.lock().await.clone();
    for (campaign, micros) in &billed {
        match known.get(campaign).copied() {
            Some((budget, settled)) => line.push_str(&format!(
                " | {campaign} {} of {} (ledger {})",
                Money::from_micros(*micros),
                Money::from_micros(budget),
                Money::from_micros(settled)
            )),
            None => line.push_str(&format!(" | {campaign} {}", Money::from_micros(*micros))),
        }
    }
    println!("{line}");
}

/// A campaign's lifetime budget and settled spend, from the first coordinator that answers
/// (the leader; balance reads are linearizable). With peer regions, the spend settled in every
/// region as the coordinators' region last heard of it (a sync interval behind, at most).
async fn budget(
    transport: &shared::tls::Transport,
    coordinators: &[String],
    campaign: &str,
) -> Option<(i64, i64)> {
    for addr in coordinators {
        let Ok(endpoint) = transport.endpoint(addr) else {
            continue;
        };
        let Ok(channel) = endpoint
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
        else {
            continue;
        };
        let mut c = pb::admin_client::AdminClient::new(channel);
        let regions = c
            .region_status(pb::RegionStatusRequest {
                campaign: campaign.to_owned(),
            })
            .await;
        if let Ok(r) = regions {
            let r = r.into_inner();
            let lifetime = r.buckets.iter().find(|b| {
                b.bucket.as_ref().and_then(|k| k.bucket.as_ref())
                    == Some(&pb::Bucket::from(&Bucket::Lifetime))
            });
            if let (false, Some(b)) = (r.peers.is_empty(), lifetime) {
                let sum = |f: fn(&pb::RegionFigures) -> i64| b.regions.iter().map(f).sum::<i64>();
                let budget = sum(|x| x.created_micros) - sum(|x| x.burned_micros);
                return Some((budget, sum(|x| x.settled_micros)));
            }
        }
        let r = c
            .get_balance(pb::GetBalanceRequest {
                bucket: Some(pb::BucketKey {
                    campaign: campaign.to_owned(),
                    bucket: Some(pb::Bucket::from(&Bucket::Lifetime)),
                }),
            })
            .await;
        if let Ok(b) = r {
            let b = b.into_inner();
            return Some((b.budget_micros, b.settled_micros));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(focus_every: Option<Duration>) -> SimConfig {
        SimConfig {
            edges: ["a", "b", "c", "d"].map(String::from).to_vec(),
            regions: ["us-1", "eu-1", "us-1", "ap-1"].map(String::from).to_vec(),
            focus_every,
            coordinators: Vec::new(),
            transport: shared::tls::Transport::Plaintext,
            rate: 1,
            duration: Duration::from_secs(1),
            max_requests: 1,
            seed: 1,
            run_id: "1".into(),
            exp_scale: 1,
            status: false,
        }
    }

    #[test]
    fn the_traffic_moves_from_region_to_region_in_name_order() {
        let c = cfg(Some(Duration::from_secs(15)));
        let at = |s| focus(&c, Duration::from_secs(s));
        assert_eq!(
            [at(0), at(14), at(15), at(30), at(45)],
            [
                Some("ap-1"),
                Some("ap-1"),
                Some("eu-1"),
                Some("us-1"),
                Some("ap-1")
            ]
        );
        assert_eq!(focus(&cfg(None), Duration::ZERO), None);
        let mut one = cfg(Some(Duration::from_secs(15)));
        one.regions = vec!["eu-1".into(); 4];
        assert_eq!(focus(&one, Duration::ZERO), None);
    }

    #[test]
    fn most_requests_go_to_the_focused_regions_edges() {
        let c = cfg(Some(Duration::from_secs(15)));
        let mut rng = fastrand::Rng::with_seed(3);
        let mut to = [0u32; 4];
        for _ in 0..10_000 {
            to[pick_edge(&c, &mut rng, Duration::from_secs(31))] += 1;
        }
        // us-1 (edges a and c) has the focus: 80 % + its share (2 of 4) of the other 20 %.
        let us = to[0] + to[2];
        assert!((8_800..9_200).contains(&us), "{to:?}");
        assert!(to[1] > 0 && to[3] > 0, "{to:?}");
        // Without a focus, spread evenly.
        let even = cfg(None);
        let mut to = [0u32; 4];
        for _ in 0..10_000 {
            to[pick_edge(&even, &mut rng, Duration::from_secs(31))] += 1;
        }
        assert!(to.iter().all(|n| (2_300..2_700).contains(n)), "{to:?}");
    }
}
