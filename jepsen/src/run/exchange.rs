//! The simulated exchange of a run, instrumented: it is the truth the checkers hold the system
//! to. It behaves as real exchanges do, not as our edge would like them to:
//!
//! - two exchanges: `adx` bills by `burl` (as Prebid Server does: a win notice, when sent,
//!   charges nothing) and `nx` bills by `nurl` (every win is charged);
//! - impressions carry `exp` (OpenRTB 2.6 §3.2.4): absent for some, most within the region's
//!   maximum, some above it (not biddable: the edge must skip them);
//! - ids are the exchange's, not ours to trust: some requests reuse an earlier auction's id,
//!   some are replays of an earlier request, byte for byte; each bid of ours is billed on its
//!   own;
//! - a second-price auction of each bid against a synthetic competitor (a first-price one on
//!   the third exchange, `fpx`); a share of lost bids get a loss notice with an IAB loss reason
//!   code; some wins are never billed (the impression was not shown);
//! - billing notices come at once or late, anywhere within the impression's `exp` (some at its
//!   very end), some twice; most go first to the edge that bid, a fifth to another edge of its
//!   region; each is retried at a random edge of the bid's region until one acknowledges it or
//!   the bid's deadline (auction + `exp`) and the region's late acceptance have passed.
//!
//! Every delivery attempt of a charging notice is an operation of the history; what was
//! acknowledged is what the exchange billed.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge::http::HttpClient;
use edge::openrtb::BidResponse;
use shared::Money;

use crate::history::{Call, Op, OpType};

/// One campaign of the run.
#[derive(Clone, Debug)]
pub struct Campaign {
    /// Its name.
    pub name: &'static str,
    /// Its time zone.
    pub zone: &'static str,
    /// The one country it targets; the exchange's requests are split between the countries.
    pub country: &'static str,
    /// Bid, as a CPM for `budgetctl`.
    pub bid_cpm: &'static str,
    /// Bid per impression, micros.
    pub bid_micros: i64,
    /// Daily budget, micros.
    pub daily_micros: Option<i64>,
    /// Lifetime budget at the start and added at each raise, once the budget has run out,
    /// micros (at 300 requests/s; scaled with the rate): a few seconds of its spending.
    pub step_micros: i64,
}

/// The run's campaigns: three zones, one of them with a daily budget whose day ends during the
/// run (the harness sets every process's clock so that it does).
pub const CAMPAIGNS: [Campaign; 3] = [
    Campaign {
        name: "north",
        zone: "UTC",
        country: "USA",
        bid_cpm: "2.50",
        bid_micros: 2_500,
        daily_micros: None,
        step_micros: 150_000,
    },
    Campaign {
        name: "east",
        zone: "Asia/Kolkata",
        country: "FRA",
        bid_cpm: "2.00",
        bid_micros: 2_000,
        daily_micros: Some(600_000),
        step_micros: 120_000,
    },
    Campaign {
        name: "west",
        zone: "America/Los_Angeles",
        country: "DEU",
        bid_cpm: "1.50",
        bid_micros: 1_500,
        daily_micros: None,
        step_micros: 60_000,
    },
];

/// The history, written to its file as it happens (a run that dies leaves what it saw).
pub struct Recorder {
    start: Instant,
    inner: Mutex<(BufWriter<File>, Vec<Op>)>,
    next_process: AtomicU64,
}

impl Recorder {
    /// Records into `file`; times count from `start`.
    pub fn new(file: File, start: Instant) -> Recorder {
        Recorder {
            start,
            inner: Mutex::new((BufWriter::new(file), Vec::new())),
            next_process: AtomicU64::new(0),
        }
    }

    /// µs since the run started.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// A fresh process name: one per operation, so that an `info` never blocks a process.
    pub fn process(&self, prefix: &str) -> String {
        format!(
            "{prefix}{}",
            self.next_process.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Appends one operation.
    pub fn record(&self, process: &str, kind: OpType, call: Call) {
        let op = Op {
            time_us: self.now_us(),
            process: process.to_string(),
            kind,
            call,
        };
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (w, ops) = &mut *g;
        if let Ok(line) = serde_json::to_string(&op) {
            let _ = writeln!(w, "{line}");
        }
        ops.push(op);
    }

    /// Everything recorded so far (and flushes the file).
    pub fn ops(&self) -> Vec<Op> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = g.0.flush();
        g.1.clone()
    }
}

/// How an exchange bills.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Billing {
    /// By the billing notice (`burl`).
    Burl,
    /// By the win notice (`nurl`).
    Nurl,
}

/// One exchange of the run.
#[derive(Clone, Copy, Debug)]
pub struct Venue {
    /// Its id in the edges' `[[exchanges]]` (and in every charge's exchange ids).
    pub id: &'static str,
    /// Its OpenRTB endpoint at the edges.
    pub path: &'static str,
    /// How it bills.
    pub billing: Billing,
    /// Its share of the requests, percent.
    pub share: u32,
    /// A first-price auction (`at: 1`): a winner pays its bid. Otherwise second price.
    pub first_price: bool,
}

/// The run's exchanges.
pub const VENUES: [Venue; 3] = [
    Venue {
        id: "adx",
        path: "/openrtb2/bid",
        billing: Billing::Burl,
        share: 50,
        first_price: false,
    },
    Venue {
        id: "nx",
        path: "/openrtb2/nx",
        billing: Billing::Nurl,
        share: 25,
        first_price: false,
    },
    // First price: every charge is the whole reservation, so a bid that took a little more
    // than its lease had left shows up as money billed past the lease.
    Venue {
        id: "fpx",
        path: "/openrtb2/fp",
        billing: Billing::Burl,
        share: 25,
        first_price: true,
    },
];

/// The `[[exchanges]]` of an edge's configuration for [`VENUES`].
pub fn edge_exchanges_toml() -> String {
    VENUES
        .iter()
        .map(|v| {
            let billing = match v.billing {
                Billing::Burl => "burl",
                Billing::Nurl => "nurl",
            };
            format!(
                "\n[[exchanges]]\nid = \"{}\"\nbid_path = \"{}\"\nbilling = \"{billing}\"\n",
                v.id, v.path
            )
        })
        .collect()
}

/// The mix of `exp` the exchange sends, in seconds.
#[derive(Clone, Copy, Debug)]
pub struct ExpMix {
    /// What the region assumes when an impression has no `exp`.
    pub default_s: u64,
    /// The longest the region bids on.
    pub max_s: u64,
}

impl ExpMix {
    /// An impression's `exp`: absent for 10 %, above the maximum for 5 %, else 1 s to the
    /// maximum.
    fn draw(self, rng: &mut fastrand::Rng) -> Option<u64> {
        match rng.u8(..100) {
            0..10 => None,
            10..15 => Some(rng.u64(self.max_s + 1..=self.max_s * 4)),
            _ => Some(rng.u64(1..=self.max_s)),
        }
    }
}

/// One impression the exchange billed (an edge acknowledged its notice).
#[derive(Clone, Debug)]
pub struct Billed {
    /// Our bid, `REGION/LEASE.N`.
    pub bid: String,
    /// `EXCHANGE/AUCTION/IMP`.
    pub event: String,
    /// The campaign.
    pub campaign: String,
    /// The lease named in the notice.
    pub lease: u64,
    /// The region whose lease it is (empty in a run of one region).
    pub region: String,
    /// The clearing price, micros.
    pub amount: i64,
    /// When it was acknowledged, µs since the start.
    pub at_us: u64,
}

/// What the exchange saw.
#[derive(Default)]
pub struct Tally {
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests that reused an earlier auction's id with new impressions.
    pub reused_ids: AtomicU64,
    /// Requests that replayed an earlier request byte for byte.
    pub replays: AtomicU64,
    /// Impressions offered whose `exp` is past the region's maximum.
    pub exp_too_long: AtomicU64,
    /// Bids received for such impressions (the edge must not bid on them).
    pub bids_past_max_exp: AtomicU64,
    /// Bids received.
    pub bids: AtomicU64,
    /// Auctions our bidder won.
    pub wins: AtomicU64,
    /// Wins never billed (the impression was not shown).
    pub unbilled_wins: AtomicU64,
    /// Loss notices sent.
    pub losses: AtomicU64,
    /// Notice deliveries attempted.
    pub deliveries: AtomicU64,
    /// Notices given up, unacknowledged, at their bid's deadline and the late acceptance.
    pub abandoned: AtomicU64,
    /// Requests with no answer (timeouts, refused connections).
    pub unanswered: AtomicU64,
    /// Every impression the exchange billed, by our bid, acknowledged or not: what it charged
    /// the advertiser, and what I1 holds to the budget (a duplicate delivery bills once;
    /// `at_us` is when it first sent the notice).
    pub made: Mutex<BTreeMap<String, Billed>>,
    /// The bills an edge acknowledged, by our bid (`at_us`: the acknowledgement).
    pub billed: Mutex<BTreeMap<String, Billed>>,
    /// Answered bid requests: (ms since the start, latency µs).
    pub latencies: Mutex<Vec<(u32, u32)>>,
    /// Per lease that bid (`(region, lease)`; region empty in a run of one region): how many
    /// bids came under it, and when the last request that got one was sent (µs since the
    /// start). The reservation of a bid was made after its request was sent.
    pub bids_by_lease: Mutex<BTreeMap<(String, u64), (u64, u64)>>,
    /// Winning demand per campaign and second: what the campaign would have paid had it bid on
    /// every request it targets (micros). The measure of "demand exceeds the budget".
    pub demand: Mutex<BTreeMap<&'static str, Vec<i64>>>,
}

impl Tally {
    /// Demand of `campaign` from second `from` on.
    pub fn demand_since(&self, campaign: &str, from_s: usize) -> i64 {
        let d = self.demand.lock().unwrap_or_else(|p| p.into_inner());
        d.get(campaign)
            .map_or(0, |v| v.iter().skip(from_s).sum::<i64>())
    }

    /// Billed micros per campaign (every bill made, acknowledged or not).
    pub fn billed_by_campaign(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for b in self.made.lock().unwrap_or_else(|p| p.into_inner()).values() {
            *out.entry(b.campaign.clone()).or_insert(0) += b.amount;
        }
        out
    }
}

/// The exchange's settings.
#[derive(Clone)]
pub struct Settings {
    /// Edge base URLs.
    pub edges: Vec<String>,
    /// Each edge's region (the same order), and the regions' shares of the requests: a
    /// request goes to a region drawn by weight, then to one of its edges. One region: all
    /// edges alike, and notices carry no region.
    pub edge_regions: Vec<String>,
    /// `(region, weight)`.
    pub weights: Vec<(String, u32)>,
    /// Requests per second.
    pub rate: u32,
    /// Send requests for at most this long (until [`Exchange::stop`]).
    pub duration: Duration,
    /// Seed of every choice.
    pub seed: u64,
    /// The `exp` it sends.
    pub exp: ExpMix,
    /// How long after a bid's deadline it still retries a charging notice that no edge has
    /// acknowledged: the region's late acceptance, the window in which the region promises to
    /// settle a notice that was sent in time (DESIGN §5). A notice an edge took in and lost
    /// (killed, say) is sent again, as an edge crash must make an exchange do.
    pub late: Duration,
}

const SIZES: [(u32, u32); 3] = [(300, 250), (728, 90), (320, 50)];

/// IAB loss reason codes (OpenRTB 2.5 list 5.25) the exchange sends: lost to a
/// higher bid, mostly; sometimes the impression opportunity expired.
const LOSS_CODES: [(&str, u8); 2] = [("102", 85), ("2", 15)];

/// An edge for a new request: a region by weight, then one of its edges.
fn pick_edge(rng: &mut fastrand::Rng, s: &Settings) -> usize {
    let total: u32 = s.weights.iter().map(|(_, w)| *w).sum();
    let mut at = rng.u32(..total.max(1));
    let mut region = s.weights.first().map_or("", |(r, _)| r.as_str());
    for (r, w) in &s.weights {
        if at < *w {
            region = r;
            break;
        }
        at -= w;
    }
    let of_region: Vec<usize> = (0..s.edges.len())
        .filter(|e| s.edge_regions[*e] == region)
        .collect();
    if of_region.is_empty() {
        rng.usize(..s.edges.len())
    } else {
        of_region[rng.usize(..of_region.len())]
    }
}

/// A venue by share.
fn pick_venue(rng: &mut fastrand::Rng) -> usize {
    let mut at = rng.u32(..VENUES.iter().map(|v| v.share).sum::<u32>().max(1));
    for (i, v) in VENUES.iter().enumerate() {
        if at < v.share {
            return i;
        }
        at -= v.share;
    }
    0
}

/// One auction's request as the exchange keeps it: enough to replay it or reuse its id.
#[derive(Clone)]
struct Sent {
    id: String,
    venue: usize,
    campaign: usize,
    body: Vec<u8>,
    /// Each impression's `exp` as sent (`None`: absent).
    exps: Vec<Option<u64>>,
}

fn request(
    rng: &mut fastrand::Rng,
    id: &str,
    country: &str,
    exps: &[Option<u64>],
    first_price: bool,
) -> Vec<u8> {
    let imp: Vec<serde_json::Value> = exps
        .iter()
        .enumerate()
        .map(|(i, exp)| {
            let (w, h) = SIZES[rng.usize(..SIZES.len())];
            let mut imp = serde_json::json!({
                "id": (i + 1).to_string(),
                "bidfloor": f64::from(rng.u32(..500)) / 1000.0,
                "bidfloorcur": "USD",
                "banner": {"w": w, "h": h, "format": [{"w": w, "h": h}]},
            });
            if let Some(e) = exp {
                imp["exp"] = (*e).into();
            }
            imp
        })
        .collect();
    let body = serde_json::json!({
        "id": id,
        "at": if first_price { 1 } else { 2 },
        "tmax": 200,
        "cur": ["USD"],
        "imp": imp,
        "site": {"id": "site-1", "domain": "news.example", "page": "https://news.example/a", "cat": ["IAB1"]},
        "device": {"devicetype": 2, "geo": {"country": country}},
        "user": {"id": format!("u{}", rng.u32(..100_000))},
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The lease of our bid `REGION/LEASE.N` (`Bid.id`), keyed as the history keys regions: the
/// single region of a one-region run is "".
pub fn lease_of_bid(id: &str) -> Option<(String, u64)> {
    let (region, rest) = id.split_once('/')?;
    let lease = rest.split_once('.')?.0.parse().ok()?;
    let region = if region == super::topology::REGION {
        String::new()
    } else {
        region.to_string()
    };
    Some((region, lease))
}

/// A CPM with three decimals, from micros per impression.
fn cpm(micros: i64) -> String {
    format!("{}.{:03}", micros / 1000, micros % 1000)
}

/// A query parameter of a notice URL, percent-decoded.
fn param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// The earlier requests a new one may reuse or replay.
const REMEMBERED: usize = 2_000;

/// The exchange.
pub struct Exchange {
    settings: Settings,
    http: HttpClient,
    rec: Arc<Recorder>,
    /// What it saw.
    pub tally: Arc<Tally>,
    /// Set to stop sending requests before `duration` ends.
    stop: std::sync::atomic::AtomicBool,
}

/// One notice to send.
struct Notice {
    url: String,
    /// What it charges (`None`: a win notice of a `burl` exchange, or a loss notice: not part
    /// of the history).
    amount: Option<i64>,
    /// Our bid (`Bid.id`).
    bid: String,
    /// How long after the auction it is sent.
    delay: Duration,
    /// First to the edge that bid (else to any edge of its region).
    to_bidder: bool,
    /// Retried until this long after the auction (the bid's deadline), then given up.
    deadline: Duration,
}

impl Exchange {
    /// An exchange recording into `rec`.
    pub fn new(settings: Settings, rec: Arc<Recorder>) -> Arc<Exchange> {
        Arc::new(Exchange {
            settings,
            http: HttpClient::new(Duration::from_secs(3)),
            rec,
            tally: Arc::new(Tally::default()),
            stop: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Stops sending new requests (the auctions under way finish their notices).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Sends requests for the configured time, then waits for every auction's notices to be
    /// acknowledged or given up.
    pub async fn run(self: &Arc<Exchange>) {
        let s = &self.settings;
        let started = Instant::now();
        let mut rng = fastrand::Rng::with_seed(s.seed ^ 0x5eed_e8c4);
        let mut tick =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(s.rate.max(1))));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut tasks = tokio::task::JoinSet::new();
        let mut earlier: VecDeque<Sent> = VecDeque::with_capacity(REMEMBERED);
        let mut n = 0u64;
        while started.elapsed() < s.duration && !self.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            let roll = rng.u8(..100);
            let sent = if roll < 2 && !earlier.is_empty() {
                // A replay: the same request again, byte for byte.
                self.tally.replays.fetch_add(1, Ordering::Relaxed);
                earlier[rng.usize(..earlier.len())].clone()
            } else {
                let (id, venue) = if roll < 5 && !earlier.is_empty() {
                    // A new auction under an id the exchange used before.
                    self.tally.reused_ids.fetch_add(1, Ordering::Relaxed);
                    let e = &earlier[rng.usize(..earlier.len())];
                    (e.id.clone(), e.venue)
                } else {
                    (format!("j{}-{n}", s.seed), pick_venue(&mut rng))
                };
                let campaign = rng.usize(..CAMPAIGNS.len());
                let imps = if rng.u8(..5) == 0 { 2 } else { 1 };
                let exps: Vec<Option<u64>> = (0..imps).map(|_| s.exp.draw(&mut rng)).collect();
                let body = request(
                    &mut rng,
                    &id,
                    CAMPAIGNS[campaign].country,
                    &exps,
                    VENUES[venue].first_price,
                );
                Sent {
                    id,
                    venue,
                    campaign,
                    body,
                    exps,
                }
            };
            if earlier.len() == REMEMBERED {
                earlier.pop_front();
            }
            earlier.push_back(sent.clone());
            let campaign = &CAMPAIGNS[sent.campaign];
            let competitors: Vec<i64> = sent.exps.iter().map(|_| rng.i64(0..3_000)).collect();
            let second = u32::try_from(started.elapsed().as_secs()).unwrap_or(u32::MAX);
            {
                let mut d = self.tally.demand.lock().unwrap_or_else(|p| p.into_inner());
                let v = d.entry(campaign.name).or_default();
                let at = second as usize;
                if v.len() <= at {
                    v.resize(at + 1, 0);
                }
                for (c, exp) in competitors.iter().zip(&sent.exps) {
                    let biddable = exp.is_none_or(|e| e <= s.exp.max_s);
                    if biddable && campaign.bid_micros > *c {
                        v[at] += c + 1;
                    }
                }
            }
            let edge = pick_edge(&mut rng, s);
            let seed = rng.u64(..);
            let me = self.clone();
            tasks.spawn(async move { me.auction(edge, sent, competitors, seed).await });
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn auction(&self, edge: usize, sent: Sent, competitors: Vec<i64>, seed: u64) {
        let s = &self.settings;
        let t = &self.tally;
        let venue = VENUES[sent.venue];
        t.requests.fetch_add(1, Ordering::Relaxed);
        let too_long = sent
            .exps
            .iter()
            .filter(|e| e.is_some_and(|e| e > s.exp.max_s))
            .count();
        t.exp_too_long.fetch_add(too_long as u64, Ordering::Relaxed);
        let at = Instant::now();
        let sent_us = self.rec.now_us();
        let r = self
            .http
            .post(
                &format!("{}{}", s.edges[edge], venue.path),
                &[("x-openrtb-version", "2.6")],
                sent.body,
            )
            .await;
        let Ok(r) = r else {
            t.unanswered.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let at_ms = u32::try_from(self.rec.now_us() / 1000).unwrap_or(u32::MAX);
        let us = u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX);
        t.latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((at_ms, us));
        if r.status != 200 {
            return;
        }
        let Ok(resp) = serde_json::from_slice::<BidResponse>(&r.body) else {
            return;
        };
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut notices = Vec::new();
        for bid in resp.seatbid.iter().flat_map(|b| &b.bid) {
            t.bids.fetch_add(1, Ordering::Relaxed);
            if let Some(key) = lease_of_bid(&bid.id) {
                let mut by = t.bids_by_lease.lock().unwrap_or_else(|p| p.into_inner());
                let e = by.entry(key).or_insert((0, 0));
                e.0 += 1;
                e.1 = e.1.max(sent_us);
            }
            let Ok(price) = Money::from_cpm_str(bid.price.get()) else {
                continue;
            };
            let imp: usize = bid.impid.parse().unwrap_or(1);
            let exp = sent.exps.get(imp.wrapping_sub(1)).copied().flatten();
            if exp.is_some_and(|e| e > s.exp.max_s) {
                t.bids_past_max_exp.fetch_add(1, Ordering::Relaxed);
            }
            // The bid's deadline: the impression may be shown until `exp` after the auction.
            let deadline = Duration::from_secs(exp.unwrap_or(s.exp.default_s));
            let competitor = competitors.get(imp.wrapping_sub(1)).copied().unwrap_or(0);
            let ours = price.micros();
            let id = bid.id.clone();
            if ours <= competitor {
                // Lost. Seven in ten losers hear so, with a reason code.
                if rng.u8(..10) < 7 {
                    let mut at = rng.u8(..100);
                    let code = LOSS_CODES
                        .iter()
                        .find(|(_, share)| {
                            let hit = at < *share;
                            at = at.saturating_sub(*share);
                            hit
                        })
                        .map_or("102", |(c, _)| c);
                    let loss = bid
                        .lurl
                        .replace("${AUCTION_PRICE}", &cpm(competitor))
                        .replace("${AUCTION_LOSS}", code);
                    t.losses.fetch_add(1, Ordering::Relaxed);
                    notices.push(Notice {
                        url: loss,
                        amount: None,
                        bid: id,
                        delay: Duration::from_millis(rng.u64(..500)),
                        to_bidder: true,
                        deadline,
                    });
                }
                continue;
            }
            t.wins.fetch_add(1, Ordering::Relaxed);
            // Second price: the runner-up's price plus one micro, at most our bid. First
            // price: our bid.
            let clearing = if venue.first_price {
                ours
            } else {
                (competitor + 1).min(ours)
            };
            let fill = |u: &str| u.replace("${AUCTION_PRICE}", &cpm(clearing));
            // Shown (and billed) at once or later within `exp`; one in twenty never.
            if rng.u8(..20) == 0 {
                t.unbilled_wins.fetch_add(1, Ordering::Relaxed);
                if venue.billing == Billing::Burl && rng.bool() {
                    notices.push(Notice {
                        url: fill(&bid.nurl),
                        amount: None,
                        bid: id,
                        delay: Duration::ZERO,
                        to_bidder: true,
                        deadline,
                    });
                }
                continue;
            }
            // A third are shown later, anywhere within `exp` (most of them after the lease
            // that bid has been released, as with real `exp`s of minutes against leases of
            // seconds).
            let late = if rng.u8(..3) == 0 {
                deadline.mul_f64(rng.f64() * 0.9)
            } else {
                Duration::ZERO
            };
            let charging = match venue.billing {
                Billing::Burl => {
                    if rng.u8(..10) < 3 {
                        // The win notice, which charges nothing here.
                        notices.push(Notice {
                            url: fill(&bid.nurl),
                            amount: None,
                            bid: id.clone(),
                            delay: Duration::ZERO,
                            to_bidder: true,
                            deadline,
                        });
                    }
                    fill(&bid.burl)
                }
                Billing::Nurl => fill(&bid.nurl),
            };
            // One in five first goes to another edge of the region (DESIGN §6: any edge may
            // settle any notice); one in twenty comes at the very end of `exp`, long after
            // the lease that bid has ended, to any edge.
            let (late, to_bidder) = match rng.u8(..20) {
                0 => (deadline.mul_f64(0.9 + rng.f64() * 0.08), false),
                1..=4 => (late, false),
                _ => (late, true),
            };
            notices.push(Notice {
                url: charging.clone(),
                amount: Some(clearing),
                bid: id.clone(),
                delay: late,
                to_bidder,
                deadline,
            });
            if rng.u8(..10) == 0 {
                // The same charging notice again, a little later, to any edge.
                notices.push(Notice {
                    url: charging,
                    amount: Some(clearing),
                    bid: id,
                    delay: late + Duration::from_millis(rng.u64(..300)),
                    to_bidder: false,
                    deadline,
                });
            }
        }
        let mut sends = tokio::task::JoinSet::new();
        for n in notices {
            let path = n
                .url
                .find("/notice/")
                .map_or(n.url.clone(), |i| n.url[i..].to_string());
            let http = self.http.clone();
            let rec = self.rec.clone();
            let tally = self.tally.clone();
            // A notice is for its region's edges (another region's refuses it: its leases are
            // not theirs).
            let region = &s.edge_regions[edge];
            let edges: Vec<String> = (0..s.edges.len())
                .filter(|e| s.edge_regions[*e] == *region)
                .map(|e| s.edges[e].clone())
                .collect();
            let own = edges.iter().position(|u| *u == s.edges[edge]).unwrap_or(0);
            let seed = rng.u64(..);
            // First to the edge that bid (as a real exchange calls the URL it was given), or,
            // for a duplicate, to any edge of its region; retries go to any edge of its region.
            let first = if n.to_bidder {
                own
            } else {
                rng.usize(..edges.len())
            };
            let deadline = at + n.deadline + s.late;
            sends.spawn(async move {
                tokio::time::sleep(n.delay).await;
                match n.amount {
                    Some(a) => {
                        let to = Route {
                            first,
                            deadline,
                            seed,
                        };
                        deliver(&http, &rec, &tally, &edges, &path, &n.bid, a, to).await;
                    }
                    None => {
                        // A win notice that charges nothing, or a loss notice: best effort,
                        // not part of the history.
                        let _ = http.get(&format!("{}{path}", edges[first])).await;
                    }
                }
            });
        }
        while sends.join_next().await.is_some() {}
    }
}

/// Where a notice goes: `first`, then random edges until `deadline`.
struct Route {
    first: usize,
    deadline: Instant,
    seed: u64,
}

/// Sends a charging notice of our bid `bid` to `to.first`, then to random edges, until one
/// acknowledges it or `to.deadline` (the bid's deadline and the late acceptance) passes. Every
/// attempt is one operation of the history.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    http: &HttpClient,
    rec: &Recorder,
    tally: &Tally,
    edges: &[String],
    path: &str,
    bid: &str,
    amount: i64,
    to: Route,
) {
    let Route {
        first,
        deadline,
        seed,
    } = to;
    let mut rng = fastrand::Rng::with_seed(seed);
    let (Some(x), Some(a), Some(i), Some(campaign)) = (
        param(path, "x"),
        param(path, "a"),
        param(path, "i"),
        param(path, "c"),
    ) else {
        return;
    };
    let lease: u64 = param(path, "l").and_then(|l| l.parse().ok()).unwrap_or(0);
    // Only named in a run of several regions (one region's history stays as it was).
    let region = match param(path, "g") {
        Some(g) if g != super::topology::REGION => g,
        _ => String::new(),
    };
    let event = format!("{x}/{a}/{i}");
    let call = |index| Call::Notice {
        bid: bid.to_string(),
        event: event.clone(),
        campaign: campaign.clone(),
        amount,
        index,
        region: region.clone(),
    };
    // The bill is made now, whatever becomes of its notice: a real exchange charges the
    // impression, not our acknowledgement.
    let bill_at = |at_us| Billed {
        bid: bid.to_string(),
        event: event.clone(),
        campaign: campaign.clone(),
        lease,
        region: region.clone(),
        amount,
        at_us,
    };
    tally
        .made
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(bid.to_string())
        .or_insert(bill_at(rec.now_us()));
    let mut attempt = 0u32;
    loop {
        if Instant::now() >= deadline {
            tally.abandoned.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tally.deliveries.fetch_add(1, Ordering::Relaxed);
        let process = rec.process("x");
        let edge = if attempt == 0 {
            &edges[first]
        } else {
            &edges[rng.usize(..edges.len())]
        };
        rec.record(&process, OpType::Invoke, call(None));
        let r = http.get(&format!("{edge}{path}")).await;
        match r {
            Ok(r) if r.status == 200 => {
                let body = String::from_utf8_lossy(&r.body);
                let index = body
                    .split_once("index=")
                    .and_then(|(_, n)| n.trim().parse::<u64>().ok());
                rec.record(&process, OpType::Ok, call(index));
                let mut billed = tally.billed.lock().unwrap_or_else(|p| p.into_inner());
                billed
                    .entry(bid.to_string())
                    .or_insert(bill_at(rec.now_us()));
                return;
            }
            Ok(r) if r.status == 400 => {
                rec.record(&process, OpType::Fail, call(None));
                return;
            }
            _ => rec.record(&process, OpType::Info, call(None)),
        }
        attempt = attempt.saturating_add(1);
        let wait = Duration::from_millis((100u64 << attempt.min(4)).min(1_000));
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_parameters_are_read_decoded() {
        let url = "/notice/bill?l=7&c=north&x=sim&a=j1-5%2Fz&i=2&b=2500&p=1.000";
        assert_eq!(param(url, "a").as_deref(), Some("j1-5/z"));
        assert_eq!(param(url, "l").as_deref(), Some("7"));
        assert_eq!(param(url, "q"), None);
        assert_eq!(cpm(2_501), "2.501");
    }

    #[test]
    fn the_exp_mix_has_absent_long_and_too_long_impressions() {
        let mix = ExpMix {
            default_s: 5,
            max_s: 15,
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let draws: Vec<Option<u64>> = (0..10_000).map(|_| mix.draw(&mut rng)).collect();
        let absent = draws.iter().filter(|e| e.is_none()).count();
        let too_long = draws.iter().filter(|e| e.is_some_and(|e| e > 15)).count();
        let at_max = draws.iter().filter(|e| **e == Some(15)).count();
        assert!((800..1_200).contains(&absent), "{absent}");
        assert!((350..650).contains(&too_long), "{too_long}");
        assert!(at_max > 500, "{at_max}");
        assert!(
            draws
                .iter()
                .all(|e| e.is_none_or(|e| (1..=mix.max_s * 4).contains(&e)))
        );
    }

    #[test]
    fn the_edges_get_both_exchanges() {
        let toml = edge_exchanges_toml();
        assert!(toml.contains("id = \"adx\"") && toml.contains("billing = \"burl\""));
        assert!(
            toml.contains("bid_path = \"/openrtb2/nx\"") && toml.contains("billing = \"nurl\"")
        );
    }
}
