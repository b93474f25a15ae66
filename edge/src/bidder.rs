//! The bid path and the notice path of one edge (DESIGN §6).
//!
//! Bid: parse → match (index) → price → reserve from the campaign's current lease with one
//! atomic operation → answer with signed notice URLs. Nothing on this path waits for the
//! network: a campaign without a lease (or with too little left) does not bid, and a lease is
//! asked for in the background.
//!
//! Notice: verify → if this edge holds the lease, give back the unspent part of the
//! reservation (once) → queue the charge (or, for a loss elsewhere, the loss) → answer after
//! its batch is committed. Which notice charges depends on the exchange: its billing notice,
//! or for an exchange that bills every win, its win notice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use shared::clock::Clock;
use shared::log::SpendEvent;
use shared::{LeaseId, Money};
use smallvec::SmallVec;
use tokio::sync::mpsc;

use crate::catalog::{Candidate, Catalog, Slots};
use crate::config::{Billing, Settings};
use crate::lease::{ActiveLease, Slot};
use crate::metrics::{Metrics, Outcome};
use crate::notice::{self, Fields, Kind, Price};
use crate::openrtb::{self, Version};
use crate::settle::Settler;

/// One edge's shared state.
pub struct Edge {
    /// Settings.
    pub settings: Settings,
    /// The current campaigns.
    pub catalog: ArcSwap<Catalog>,
    /// Every campaign's slot.
    pub slots: Mutex<Slots>,
    /// Leases this edge holds, current or settling.
    pub leases: Mutex<HashMap<LeaseId, Arc<ActiveLease>>>,
    /// Leases this edge released with money in doubt, until their bids' deadlines have passed
    /// (at most [`RELEASED_HELD_MAX`]): whether a late notice is the first this edge saw for its
    /// bid, so whether the release counted the bid's whole price in doubt. Taken under the
    /// `leases` lock, after it, when a lease moves here from `leases`.
    pub released_held: Mutex<HashMap<LeaseId, (Arc<ActiveLease>, std::time::Duration)>>,
    /// Time.
    pub clock: Clock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Slots that want a lease.
    pub ask: mpsc::Sender<u32>,
    /// Settlement.
    pub settler: Settler,
    /// Bid requests being handled.
    pub in_flight: AtomicUsize,
    /// A coordinator has answered a campaign poll (the edge is connected, campaigns or not).
    pub polled: std::sync::atomic::AtomicBool,
    /// The last leases released, newest last (at most [`RELEASED_KEPT`]): `/debug/leases`.
    pub released: Mutex<std::collections::VecDeque<LeaseRecord>>,
}

/// How many released leases `/debug/leases` remembers.
pub const RELEASED_KEPT: usize = 1_000;

/// How many released leases with money in doubt an edge remembers for their late notices.
/// Past it, a late notice of a forgotten lease settles its charge only (the rest of its bid's
/// price waits for its deadline) and reports a loss as if another edge had released it.
pub const RELEASED_HELD_MAX: usize = 65_536;

/// One lease as `/debug/leases` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LeaseRecord {
    /// The lease.
    pub lease: u64,
    /// What it granted, micros.
    pub amount: i64,
    /// What was never reserved (the reservation counter, unclamped), micros.
    pub unreserved: i64,
    /// Bids made under it.
    pub bids: u64,
}

impl LeaseRecord {
    /// The record of `l` now.
    pub fn of(l: &ActiveLease) -> LeaseRecord {
        LeaseRecord {
            lease: l.id.0,
            amount: l.reservoir.amount(),
            unreserved: l.reservoir.raw(),
            bids: l.bids(),
        }
    }
}

/// What a bid request gets.
#[derive(Debug)]
pub enum BidOutcome {
    /// 200 with this JSON body.
    Bid(Vec<u8>),
    /// 204; the reason is a metric label.
    NoBid(&'static str),
    /// 400 with this reason.
    Invalid(String),
}

/// A reservation made for one impression of the request being answered.
struct Reserved {
    lease: Arc<ActiveLease>,
    imp: usize,
    cand: Candidate,
    /// Our bid's number under the lease.
    bid: u64,
    /// Its `exp` class.
    class: usize,
    /// The `exp` it was bid with, seconds (the impression's, or the lease's default).
    exp_s: i64,
}

/// Why nothing was bid, when nothing was: the most telling reason seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Skipped {
    /// No campaign matched, had a lease with room, or passed pacing.
    NoMatch,
    /// The request's `tmax` is longer than the region bids on.
    TmaxTooLong,
    /// An impression's `exp` is longer than the region bids on.
    ExpTooLong,
}

impl Skipped {
    fn outcome(self) -> &'static str {
        match self {
            Skipped::NoMatch => "no_match",
            Skipped::TmaxTooLong => "tmax_too_long",
            Skipped::ExpTooLong => "exp_too_long",
        }
    }
}

impl Edge {
    /// Answers one bid request of exchange `exchange` (an index into the settings' exchanges)
    /// whose body arrived at `start`.
    pub fn bid(
        &self,
        exchange: usize,
        body: &[u8],
        version: Version,
        start: Instant,
    ) -> BidOutcome {
        let req = match openrtb::parse(body, version) {
            Ok(r) => r,
            Err(e) => return BidOutcome::Invalid(e.0),
        };
        let cfg = &self.settings.config;
        let ours = &self.settings.currencies.ours;
        if !req.cur.is_empty() && !req.cur.iter().any(|c| c.eq_ignore_ascii_case(ours)) {
            return BidOutcome::NoBid("currency");
        }
        let tmax = req
            .tmax
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(cfg.default_tmax_ms);
        let Some(budget) = tmax.checked_sub(cfg.tmax_safety_ms).filter(|b| *b > 0) else {
            return BidOutcome::NoBid("tmax");
        };
        let deadline = start + Duration::from_millis(budget);
        // The auction comes at most tmax after the request: this bid's notices from then on
        // until the impression's exp.
        let auction_in = Duration::from_millis(tmax);
        let catalog = self.catalog.load();
        let now = self.clock.mono();
        let mut reserved: SmallVec<[Reserved; 1]> = SmallVec::new();
        let mut skipped = Skipped::NoMatch;
        let mut cands = crate::catalog::Candidates::new();
        for (i, imp) in req.imp.iter().enumerate() {
            catalog.candidates(&req, imp, &self.settings.currencies, &mut cands);
            for cand in cands.drain(..) {
                let campaign = &catalog.campaigns[cand.campaign as usize];
                if !campaign.slot.paced_in() {
                    continue;
                }
                // What is left of the lease the current one replaced goes first.
                let previous = campaign.slot.previous.load();
                let from_previous = previous.as_ref().and_then(|p| {
                    if u128::from(tmax) > p.terms.max_tmax.as_millis() {
                        return None;
                    }
                    let class = p.class_of(imp.exp)?;
                    let bid = p.try_reserve(cand.price_micros, now, auction_in, class)?;
                    Some((p.clone(), bid, class))
                });
                let (lease, bid, class) = match from_previous {
                    Some(taken) => taken,
                    None => {
                        let guard = campaign.slot.current.load();
                        let Some(lease) = guard.as_ref() else {
                            self.metrics.reservation_no_lease.inc();
                            self.ask(campaign.slot_index, &campaign.slot);
                            continue;
                        };
                        // Notices of this bid may come until the auction (at most tmax after
                        // the request) plus the impression's exp: both within what the lease
                        // allows.
                        if u128::from(tmax) > lease.terms.max_tmax.as_millis() {
                            skipped = skipped.max(Skipped::TmaxTooLong);
                            continue;
                        }
                        let Some(class) = lease.class_of(imp.exp) else {
                            skipped = skipped.max(Skipped::ExpTooLong);
                            continue;
                        };
                        let Some(bid) =
                            lease.try_reserve(cand.price_micros, now, auction_in, class)
                        else {
                            self.metrics.reservation_exhausted.inc();
                            self.ask(campaign.slot_index, &campaign.slot);
                            continue;
                        };
                        let used = lease.reservoir.used_permille();
                        if used >= i64::from(cfg.renew_at_used_percent) * 10
                            || now >= lease.renew_at
                        {
                            self.ask(campaign.slot_index, &campaign.slot);
                        }
                        (lease.clone(), bid, class)
                    }
                };
                self.metrics.reservation_taken.inc();
                self.metrics
                    .reserved_micros
                    .inc_by(cand.price_micros.unsigned_abs());
                let exp_s = imp.exp.unwrap_or_else(|| {
                    i64::try_from(lease.terms.default_exp.as_secs()).unwrap_or(i64::MAX)
                });
                reserved.push(Reserved {
                    lease,
                    imp: i,
                    cand,
                    bid,
                    class,
                    exp_s: exp_s.max(0),
                });
                break;
            }
        }
        if reserved.is_empty() {
            return BidOutcome::NoBid(skipped.outcome());
        }
        if Instant::now() >= deadline {
            // Never sent: no notice will come; the reservations go back.
            for r in &reserved {
                r.lease.unsent(r.cand.price_micros, r.class);
            }
            return BidOutcome::NoBid("late");
        }
        let first_price = req.first_price();
        let base = &self.settings.notice_base;
        let signer = &self.settings.signer;
        let exchange_id = self.settings.exchanges[exchange].id.as_str();
        let region = cfg.region.as_bytes();
        // The answer, written directly (the shape of `openrtb::BidResponse`): sized for a
        // typical one, a bid with three notice URLs fits without regrowing.
        let mut out = Vec::with_capacity(1024 + 1024 * reserved.len());
        let put = |out: &mut Vec<u8>, s: &[u8]| out.extend_from_slice(s);
        let mut num = itoa::Buffer::new();
        put(&mut out, b"{\"id\":");
        openrtb::push_json_str(&mut out, &req.id);
        put(&mut out, b",\"seatbid\":[{\"seat\":");
        openrtb::push_json_str(&mut out, &cfg.seat);
        put(&mut out, b",\"bid\":[");
        for (n, r) in reserved.iter().enumerate() {
            let imp_id = req.imp[r.imp].id.as_deref().unwrap_or_default();
            let campaign = catalog.campaigns[r.cand.campaign as usize].id.as_str();
            let fields = Fields {
                lease: r.lease.id,
                bid: r.bid,
                hold_s: crate::lease::EXP_CLASSES_S[r.class],
                campaign,
                exchange: exchange_id,
                auction: &req.id,
                imp: imp_id,
                bid_micros: r.cand.price_micros,
                first_price,
            };
            // One MAC for the bid's three notices.
            let sig = fields.sign(signer);
            if n > 0 {
                out.push(b',');
            }
            // Our bid's id: region, lease and number (what `budgetctl audit prove --bid`
            // takes, without the region). A region name needs no escaping.
            put(&mut out, b"{\"id\":\"");
            put(&mut out, region);
            out.push(b'/');
            put(&mut out, num.format(r.lease.id.0).as_bytes());
            out.push(b'.');
            put(&mut out, num.format(r.bid).as_bytes());
            put(&mut out, b"\",\"impid\":");
            openrtb::push_json_str(&mut out, imp_id);
            put(&mut out, b",\"price\":");
            openrtb::push_cpm(&mut out, r.cand.price_micros);
            for (name, kind) in [
                (&b",\"nurl\":\""[..], Kind::Win),
                (b"\",\"burl\":\"", Kind::Bill),
                (b"\",\"lurl\":\"", Kind::Loss),
            ] {
                put(&mut out, name);
                fields.write_url(&mut out, kind, base, signer, &sig);
            }
            // A campaign id is one of shared's ids: printable, no quote or backslash.
            put(&mut out, b"\",\"cid\":\"");
            put(&mut out, campaign.as_bytes());
            put(&mut out, b"\",\"crid\":\"");
            put(&mut out, campaign.as_bytes());
            put(&mut out, b"-creative\"");
            if let Some(deal) = &r.cand.deal {
                put(&mut out, b",\"dealid\":");
                openrtb::push_json_str(&mut out, deal);
            }
            for (name, v) in [(&b",\"w\":"[..], r.cand.w), (b",\"h\":", r.cand.h)] {
                if let Some(v) = v {
                    put(&mut out, name);
                    put(&mut out, num.format(v).as_bytes());
                }
            }
            put(&mut out, b",\"adomain\":[\"");
            put(&mut out, campaign.as_bytes());
            // OpenRTB 2.6 `bid.exp`: how long we wait for the impression.
            put(&mut out, b".example\"],\"exp\":");
            put(&mut out, num.format(r.exp_s).as_bytes());
            out.push(b'}');
        }
        put(&mut out, b"]}],\"cur\":");
        openrtb::push_json_str(&mut out, ours);
        out.push(b'}');
        BidOutcome::Bid(out)
    }

    /// Asks the lease manager for a lease for `slot`, once at a time, not before a refusal's
    /// back-off has passed. Never waits.
    fn ask(&self, index: u32, slot: &Slot) {
        let now_ms = u64::try_from(self.clock.mono().as_millis()).unwrap_or(u64::MAX);
        if now_ms < slot.retry_after_ms.load(Ordering::Relaxed) {
            return;
        }
        if !slot.asking.swap(true, Ordering::AcqRel) && self.ask.try_send(index).is_err() {
            slot.asking.store(false, Ordering::Release);
        }
    }

    /// Handles a notice; returns the HTTP status and a short body.
    pub async fn notice(&self, kind: Kind, query: &str) -> (u16, String) {
        let n = match notice::parse(kind, query, &self.settings.signer) {
            Ok(n) => n,
            Err(e) => {
                self.metrics.notice(kind.as_str(), e.as_str());
                // 421 Misdirected Request: the notice is good, this is the wrong region's edge.
                let status = if matches!(e, notice::Refused::OtherRegion { .. }) {
                    421
                } else {
                    400
                };
                return (status, e.to_string());
            }
        };
        // Accepted from here: a check-in of this process waits until the charge is queued.
        let Some(accepting) = self.settler.accept().await else {
            self.metrics.notice(kind.as_str(), "unregistered");
            return (
                503,
                "the edge is not registered with its region yet; send the notice again\n".into(),
            );
        };
        if n.price != Price::FirstPrice {
            self.metrics
                .notice_prices
                .get_or_create(&Outcome {
                    outcome: n.price.as_str(),
                })
                .inc();
        }
        // Which notice charges is the exchange's choice. One this edge does not bid on (another
        // edge of the region does) is taken to bill every win: charging a win that was never
        // billed holds money back, never overspends.
        let billing = self
            .settings
            .exchanges
            .iter()
            .find(|x| x.id.as_str() == n.key.exchange())
            .map_or(Billing::Nurl, |x| x.billing);
        if kind == Kind::Win && billing == Billing::Burl {
            // The bid won; it is billed (or not) by its billing notice, until its deadline.
            self.metrics.notice(kind.as_str(), "won");
            return (200, "ok won\n".into());
        }
        if matches!(
            n.price,
            Price::Missing | Price::Unreplaced | Price::Unreadable
        ) && kind != Kind::Loss
        {
            tracing::info!(lease = %n.lease, bid = n.bid_no, key = %n.key, case = n.price.as_str(), "clearing price unreadable; the bid price is spent");
        }
        let spend = n.spend();
        // Give back what will not be spent, once, if the lease is ours. If this edge released
        // it, the release counted the bid's whole price in doubt unless a notice for it came
        // before (the lease moves between the maps under the `leases` lock, so one of the two
        // holds it for the lookup).
        let (held, released) = {
            let leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            match leases.get(&n.lease) {
                Some(l) => (Some(l.clone()), None),
                None => {
                    let released = self
                        .released_held
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&n.lease)
                        .map(|(l, _)| l.clone());
                    (None, released)
                }
            }
        };
        // Some(true): released by this edge, and this is the first notice it saw for the bid.
        let first_after_release = released.as_ref().map(|l| l.first_notice(n.bid_no));
        if let Some(lease) = &held {
            if n.bid_no > lease.bids() {
                self.metrics.notice(kind.as_str(), "unknown_bid");
                tracing::warn!(lease = %n.lease, bid = n.bid_no, made = lease.bids(), key = %n.key,
                    "a signed notice names a bid this edge never made under the lease");
            }
            if lease.first_notice(n.bid_no) {
                let back = n.bid.micros() - spend.map_or(0, Money::micros);
                lease.reservoir.give_back(back);
                lease.resolved(n.class, n.bid.micros());
                if back > 0 {
                    self.metrics
                        .reservations
                        .get_or_create(&Outcome {
                            outcome: "given_back",
                        })
                        .inc();
                }
            }
        }
        let Some(amount) = spend else {
            if held.is_none() && first_after_release != Some(false) {
                // A loss for a lease another edge holds, or one already released (not one whose
                // bid had a notice here before the release: its money is not in doubt): the
                // ledger returns what the bid's reservation holds there.
                self.settler.lost(
                    n.lease,
                    crate::settle::Lost {
                        bid: n.bid_no,
                        amount: n.bid,
                    },
                );
            }
            self.metrics.notice(kind.as_str(), "loss");
            return (200, "ok\n".into());
        };
        self.metrics.notices_pending.inc();
        let event = SpendEvent {
            bid: n.bid_no,
            key: n.key.clone(),
            amount,
        };
        if shared::planted::active("ack-before-commit") {
            // The planted bug (test builds only): acknowledge first, settle in the background.
            let settler = self.settler.clone();
            let lease = n.lease;
            tokio::spawn(async move { settler.spend(lease, event, None).await });
            self.metrics.notices_pending.dec();
            return (200, "ok\n".into());
        }
        // The rest of the price comes back from doubt only when this edge knows the release
        // held the whole price.
        let whole = (first_after_release == Some(true)).then_some(n.bid);
        if whole.is_some_and(|price| price > amount) {
            self.metrics
                .reservations
                .get_or_create(&Outcome {
                    outcome: "given_back_after_release",
                })
                .inc();
        }
        let wait = match self.settler.submit(n.lease, event, whole).await {
            Ok(wait) => wait,
            Err(_) => {
                self.metrics.notices_pending.dec();
                self.metrics.notice(kind.as_str(), "stopping");
                return (503, "the edge is stopping; send the notice again\n".into());
            }
        };
        drop(accepting);
        let timeout = Duration::from_millis(self.settings.config.notice_timeout_ms);
        let r = tokio::time::timeout(timeout, async {
            wait.await.unwrap_or(Err(crate::settle::Failed::Stopping))
        })
        .await;
        self.metrics.notices_pending.dec();
        match r {
            Ok(Ok(index)) => {
                self.metrics.notice(kind.as_str(), "settled");
                // The index lets a test order this charge among linearizable balance reads.
                (200, format!("ok index={index}\n"))
            }
            Ok(Err(crate::settle::Failed::Stopping)) => {
                self.metrics.notice(kind.as_str(), "stopping");
                (503, "the edge is stopping; send the notice again\n".into())
            }
            Ok(Err(crate::settle::Failed::Refused(why))) => {
                self.metrics.notice(kind.as_str(), "refused");
                (409, format!("the region refused the charge: {why}\n"))
            }
            Err(_) => {
                // The batch is still being retried; the exchange's retry is deduplicated.
                self.metrics.notice(kind.as_str(), "timeout");
                (503, "not committed yet; send the notice again\n".into())
            }
        }
    }
}
