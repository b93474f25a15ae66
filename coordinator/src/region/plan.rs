//! The pure half of rebalancing (DESIGN §7): where rights are wanted, how fast each bucket
//! spends, what this region needs, what it asks its peers for and what it gives them.
//!
//! No I/O, no locks, no clock: every time is a `now` on the node's monotonic clock
//! (`shared::clock::Clock::mono`, which the chaos harness can skew), passed in by the caller, so
//! that each rule is tested with the times it names. [`super::Sync`] keeps one [`Plan`] behind
//! its lock and does the talking.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use shared::bucket::BucketKey;
use shared::{CampaignId, Money, RegionId};

/// A campaign is in demand here while edges asked for its leases this recently.
pub const DEMAND_WINDOW: Duration = Duration::from_secs(5);
/// Settled spend is sampled over this window to measure a bucket's rate.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// How a region rebalances: its horizon, how often it asks, and the smallest lease.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// Projected need = settled rate × horizon.
    pub horizon: Duration,
    /// No second ask for one bucket within this.
    pub ask_interval: Duration,
    /// The region's smallest lease: the least a bucket in demand keeps for itself.
    pub lease_min: Money,
}

/// One bucket of a campaign in demand, as the leader sees it at a tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// The bucket.
    pub key: BucketKey,
    /// What is free to lease here.
    pub available: Money,
    /// The peers to ask, the one that holds most first.
    pub holders: Vec<RegionId>,
}

/// An ask to make: `want` of `key`, telling the peers we `have` that much, in `holders`' order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The bucket.
    pub key: BucketKey,
    /// How much to ask for.
    pub want: Money,
    /// What is free to lease here now.
    pub have: Money,
    /// Whom to ask, in order.
    pub holders: Vec<RegionId>,
}

/// The leader's rebalancing memory: recent lease requests, settled samples and ask back-offs.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per campaign: when edges last asked for one of its leases.
    demand: BTreeMap<CampaignId, Duration>,
    /// When the samples were taken, oldest first, over [`RATE_WINDOW`].
    ticks: VecDeque<Duration>,
    /// Per bucket: its settled spend at the samples where it had changed, oldest first (those
    /// within the window, and the last one before it).
    settled: BTreeMap<BucketKey, VecDeque<(Duration, i64)>>,
    /// Per bucket: no new ask before this.
    next_ask: BTreeMap<BucketKey, Duration>,
}

impl Plan {
    /// Edges asked for a lease of `campaign` at `now`.
    pub fn asked(&mut self, campaign: &CampaignId, now: Duration) {
        match self.demand.get_mut(campaign) {
            Some(t) => *t = (*t).max(now),
            None => {
                self.demand.insert(campaign.clone(), now);
            }
        }
    }

    /// The campaigns edges asked for within [`DEMAND_WINDOW`] of `now`.
    pub fn wanted(&self, now: Duration) -> Vec<CampaignId> {
        self.demand
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) <= DEMAND_WINDOW)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Edges asked for `campaign` within [`DEMAND_WINDOW`] of `now`.
    pub fn in_demand(&self, campaign: &CampaignId, now: Duration) -> bool {
        self.demand
            .get(campaign)
            .is_some_and(|t| now.saturating_sub(*t) <= DEMAND_WINDOW)
    }

    /// Records at `now` the settled spend of the buckets that changed since the last sample
    /// (every bucket, the first time), and forgets samples older than [`RATE_WINDOW`] (each
    /// bucket keeps its last one before the window). Costs what changed.
    pub fn sample(&mut self, now: Duration, changed: impl IntoIterator<Item = (BucketKey, i64)>) {
        self.ticks.push_back(now);
        while self
            .ticks
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > RATE_WINDOW)
        {
            self.ticks.pop_front();
        }
        let t0 = self.ticks.front().copied().unwrap_or(now);
        for (k, settled) in changed {
            // A bucket never seen had nothing settled: a first sample of 0 says no more.
            if settled == 0 && !self.settled.contains_key(&k) {
                continue;
            }
            let q = self.settled.entry(k).or_default();
            if q.back().is_some_and(|(_, last)| *last == settled) {
                continue;
            }
            q.push_back((now, settled));
            while q.get(1).is_some_and(|(t, _)| *t <= t0) {
                q.pop_front();
            }
        }
    }

    /// The settled rate of `key` in micros per second over the samples kept (0 until there
    /// are two, some time apart): its settled spend at the newest sample less that at the
    /// oldest (a bucket not seen by then had none).
    pub fn rate(&self, key: &BucketKey) -> i64 {
        let (Some(t0), Some(t1)) = (self.ticks.front(), self.ticks.back()) else {
            return 0;
        };
        let ms = i64::try_from(t1.saturating_sub(*t0).as_millis()).unwrap_or(i64::MAX);
        if ms <= 0 {
            return 0;
        }
        let at = |t: &Duration| {
            self.settled.get(key).map_or(0, |q| {
                q.iter()
                    .rev()
                    .find(|(when, _)| when <= t)
                    .map_or(0, |(_, s)| *s)
            })
        };
        (at(t1) - at(t0)).max(0).saturating_mul(1000) / ms
    }

    /// What this region expects to spend from `key` within the horizon: its rate times the
    /// horizon, and at least the smallest lease while the campaign is in demand here.
    pub fn need(&self, key: &BucketKey, rules: &Rules, now: Duration) -> Money {
        let horizon_ms = i64::try_from(rules.horizon.as_millis()).unwrap_or(i64::MAX);
        let projected = self.rate(key).saturating_mul(horizon_ms) / 1000;
        let floor = if self.in_demand(&key.campaign, now) {
            rules.lease_min.micros()
        } else {
            0
        };
        Money::from_micros(projected.max(floor))
    }

    /// The asks due at `now`: each viewed bucket with someone to ask whose available money is
    /// under its low-water mark (the need, at least the smallest lease) asks for twice the mark
    /// less what it has, at most once per `ask_interval`.
    pub fn asks(&mut self, views: Vec<View>, rules: &Rules, now: Duration) -> Vec<Ask> {
        let mut asks = Vec::new();
        for v in views {
            if v.holders.is_empty() {
                continue;
            }
            let low = self.need(&v.key, rules, now).max(rules.lease_min);
            if v.available >= low {
                continue;
            }
            if self.next_ask.get(&v.key).is_some_and(|t| now < *t) {
                continue;
            }
            let want = Money::from_micros(low.micros().saturating_mul(2) - v.available.micros());
            self.next_ask
                .insert(v.key.clone(), now + rules.ask_interval.max(super::TICK));
            asks.push(Ask {
                key: v.key,
                want,
                have: v.available,
                holders: v.holders,
            });
        }
        asks
    }
}

/// What a donor that `have`s of a bucket and expects to `need` within the horizon gives an
/// asker that `want`s, when one bid costs `unit` (all in micros).
///
/// Above one bid, it gives what exceeds its need, and only whole bids' worth. Less than one bid
/// funds nothing here: the crumbs of several regions must add up to a bid somewhere (`./dev
/// run` left 0.0039 of a 3.00 budget split between two regions below a 0.0025 bid each). They
/// flow one way only, to the region that holds more (`asker_holds_more`): when both regions bid
/// and each gave all it had to the other, they swapped places on every tick for ever (a
/// two-region jepsen run left 0.001412 + 0.001737 unspent against a 0.002 bid). A donor that is
/// not `bidding` gives its crumbs to anyone; it does not ask for them back.
pub fn to_give(
    have: i64,
    need: i64,
    want: i64,
    unit: i64,
    bidding: bool,
    asker_holds_more: bool,
) -> i64 {
    if have < unit {
        if !bidding || asker_holds_more {
            have.min(want).max(0)
        } else {
            0
        }
    } else {
        let give = (have - need).min(want);
        if give < unit { 0 } else { give }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::bucket::Bucket;

    const BID: i64 = 2_000;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn key(c: &str) -> BucketKey {
        BucketKey {
            campaign: c.parse().unwrap(),
            bucket: Bucket::Lifetime,
        }
    }

    fn rules() -> Rules {
        Rules {
            horizon: s(5),
            ask_interval: Duration::from_millis(500),
            lease_min: Money::from_micros(10_000),
        }
    }

    #[test]
    fn crumbs_of_two_bidding_regions_flow_one_way_only() {
        // eu-1 holds 1,412 and us-1 1,737, both bid, and each asks the other.
        let eu_gives = to_give(1_412, 1_000, 5_000, BID, true, true);
        let us_gives = to_give(1_737, 1_000, 5_000, BID, true, false);
        assert_eq!((eu_gives, us_gives), (1_412, 0));
        // A tie has one winner too.
        let a = to_give(1_500, 1_000, 5_000, BID, true, true);
        let b = to_give(1_500, 1_000, 5_000, BID, true, false);
        assert_eq!((a, b), (1_500, 0));
    }

    #[test]
    fn a_region_that_does_not_bid_gives_its_crumbs_to_anyone_up_to_the_want() {
        assert_eq!(to_give(1_737, 0, 5_000, BID, false, false), 1_737);
        assert_eq!(to_give(1_737, 0, 700, BID, false, false), 700);
        assert_eq!(to_give(0, 0, 700, BID, false, true), 0);
    }

    #[test]
    fn above_one_bid_only_whole_bids_beyond_the_need_are_given() {
        // 10,000 held, 7,000 needed: 3,000 spare, capped by the want.
        assert_eq!(to_give(10_000, 7_000, 50_000, BID, true, true), 3_000);
        assert_eq!(to_give(10_000, 7_000, 2_500, BID, true, true), 2_500);
        // Spare under one bid: nothing, whoever holds more.
        assert_eq!(to_give(10_000, 8_500, 50_000, BID, true, true), 0);
        assert_eq!(to_give(10_000, 8_500, 50_000, BID, false, true), 0);
        // Needing more than it has.
        assert_eq!(to_give(10_000, 20_000, 50_000, BID, true, true), 0);
    }

    #[test]
    fn demand_lasts_the_window_after_the_last_ask() {
        let mut p = Plan::default();
        let west: CampaignId = "west".parse().unwrap();
        p.asked(&west, s(100));
        // A late report of an earlier ask does not move it back.
        p.asked(&west, s(98));
        assert!(p.in_demand(&west, s(105)));
        assert!(!p.in_demand(&west, s(106)));
        assert_eq!(p.wanted(s(104)), vec![west.clone()]);
        assert!(p.wanted(s(106)).is_empty());
    }

    #[test]
    fn the_rate_is_settled_spend_over_the_samples_kept_and_the_need_is_rate_times_horizon() {
        let mut p = Plan::default();
        let k = key("west");
        assert_eq!(p.rate(&k), 0, "no samples");
        p.sample(s(10), [(k.clone(), 1_000)]);
        assert_eq!(p.rate(&k), 0, "one sample");
        p.sample(s(14), [(k.clone(), 9_000)]);
        assert_eq!(p.rate(&k), 2_000, "8,000 in 4 s");
        // The sample of 10 s falls out of the 10 s window at 21 s.
        p.sample(s(21), [(k.clone(), 30_000)]);
        assert_eq!(p.rate(&k), 3_000, "21,000 in 7 s");
        // Not in demand: the need is the projection alone; in demand, at least a lease.
        assert_eq!(p.need(&k, &rules(), s(21)), Money::from_micros(15_000));
        // Samples where it did not change (not passed): its spend stands still.
        p.sample(s(25), []);
        assert_eq!(
            p.rate(&k),
            0,
            "no change since 21 s, now the window's start"
        );
        p.sample(s(29), [(k.clone(), 34_000)]);
        assert_eq!(p.rate(&k), 500, "4,000 in 8 s");
        assert_eq!(
            p.settled[&k].len(),
            2,
            "one sample from before the window is kept"
        );
        // A bucket first seen after the window started had nothing before.
        let new = key("east");
        p.sample(s(32), [(new.clone(), 700)]);
        assert_eq!(p.rate(&new), 100, "700 in the 7 s from 25 s");
        let mut quiet = Plan::default();
        assert_eq!(quiet.need(&k, &rules(), s(21)), Money::ZERO);
        quiet.asked(&k.campaign, s(20));
        assert_eq!(quiet.need(&k, &rules(), s(21)), Money::from_micros(10_000));
    }

    #[test]
    fn a_bucket_under_its_mark_asks_for_twice_the_mark_at_most_once_an_interval() {
        let mut p = Plan::default();
        let k = key("west");
        let eu: RegionId = "eu-1".parse().unwrap();
        let view = |available: i64, holders: Vec<RegionId>| View {
            key: k.clone(),
            available: Money::from_micros(available),
            holders,
        };
        // Enough here, or nobody to ask: no ask.
        assert!(
            p.asks(vec![view(10_000, vec![eu.clone()])], &rules(), s(1))
                .is_empty()
        );
        assert!(p.asks(vec![view(3_000, vec![])], &rules(), s(1)).is_empty());
        // 3,000 under a mark of 10,000: ask for 20,000 − 3,000.
        let asks = p.asks(vec![view(3_000, vec![eu.clone()])], &rules(), s(1));
        assert_eq!(
            asks,
            vec![Ask {
                key: k.clone(),
                want: Money::from_micros(17_000),
                have: Money::from_micros(3_000),
                holders: vec![eu.clone()],
            }]
        );
        // Not again within the interval; again after it.
        let again = Duration::from_millis(1_400);
        assert!(
            p.asks(vec![view(3_000, vec![eu.clone()])], &rules(), again)
                .is_empty()
        );
        assert_eq!(p.asks(vec![view(3_000, vec![eu])], &rules(), s(2)).len(), 1);
    }
}
