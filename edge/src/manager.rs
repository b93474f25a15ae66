//! Background work of an edge, off the bid path: polling the campaigns, pacing, and leases
//! (ask, renew, retire, release).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use shared::proto::v1 as pb;
use shared::targeting::Pacing;
use shared::{LeaseId, Money};
use tokio::sync::mpsc;

use crate::bidder::Edge;
use crate::catalog::Catalog;
use crate::coord::Coordinators;
use crate::lease::{ActiveLease, Terms};
use crate::metrics::Outcome;
use crate::settle::Release;

/// Polls the coordinators for campaigns every `poll_interval_ms`, rebuilding the catalog when
/// their version moves and updating pacing each time. Ends when `stop` fires.
pub async fn poll_campaigns(
    edge: Arc<Edge>,
    coords: Arc<Coordinators>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let every = Duration::from_millis(edge.settings.config.poll_interval_ms);
    let mut failures = 0u32;
    // The newest day's spend per campaign, kept up to date by the replies' deltas.
    let mut spend: BTreeMap<String, pb::DaySpend> = BTreeMap::new();
    let mut spend_version = 0u64;
    // The campaigns as last listed, kept up to date by the replies' deltas.
    let mut configs: BTreeMap<String, pb::CampaignConfig> = BTreeMap::new();
    loop {
        let known = edge.catalog.load().version;
        match coords.campaigns(known, spend_version).await {
            Ok(reply) => {
                failures = 0;
                edge.polled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if !reply.unchanged {
                    let changed = reply.campaigns.len();
                    edge.metrics
                        .catalog_campaigns_received
                        .inc_by(changed as u64);
                    let list =
                        merge_campaigns(&mut configs, reply.campaigns, reply.campaigns_delta);
                    let built = {
                        let mut slots = edge.slots.lock().unwrap_or_else(|p| p.into_inner());
                        Catalog::build(reply.version, &list, &mut slots)
                    };
                    let (catalog, skipped) = built;
                    for s in skipped {
                        tracing::warn!(campaign = %s.campaign, reason = %s.reason, "campaign left out");
                    }
                    // A region with no campaigns answers version 0 to every poll: not news.
                    if reply.version != known {
                        tracing::info!(
                            version = reply.version,
                            campaigns = catalog.campaigns.len(),
                            changed,
                            delta = reply.campaigns_delta,
                            "campaigns loaded"
                        );
                    }
                    edge.metrics
                        .campaigns
                        .set(i64::try_from(catalog.campaigns.len()).unwrap_or(i64::MAX));
                    edge.metrics
                        .catalog_version
                        .set(i64::try_from(reply.version).unwrap_or(i64::MAX));
                    edge.catalog.store(Arc::new(catalog));
                }
                if reply.spend_complete {
                    spend.clear();
                }
                for d in reply.day_spend {
                    spend.insert(d.campaign.clone(), d);
                }
                spend_version = reply.spend_version;
                pace(&edge, &spend);
            }
            Err(e) => {
                failures += 1;
                // Keep bidding on the campaigns held; say so once in a while.
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %e, failures, "campaign poll failed; keeping the campaigns held");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The campaigns after a poll's reply: `listed` replaces what was held, or with `delta`
/// updates it (a campaign is never removed by the coordinators, only paused).
fn merge_campaigns(
    held: &mut BTreeMap<String, pb::CampaignConfig>,
    listed: Vec<pb::CampaignConfig>,
    delta: bool,
) -> Vec<pb::CampaignConfig> {
    if !delta {
        held.clear();
    }
    for c in listed {
        held.insert(c.campaign.clone(), c);
    }
    held.values().cloned().collect()
}

/// Even pacing: keeps a campaign's spend today near the elapsed share of its day. The throttle
/// falls linearly from all bids to none as the spend runs ahead by 1 % of the daily budget.
fn pace(edge: &Edge, day_spend: &BTreeMap<String, pb::DaySpend>) {
    let catalog = edge.catalog.load();
    let now = jiff::Timestamp::from_microsecond(edge.clock.wall_us())
        .unwrap_or_else(|_| jiff::Timestamp::now());
    for c in &catalog.campaigns {
        if c.targeting.pacing != Pacing::Even {
            continue;
        }
        let Some(budget) = c.daily_budget.map(Money::micros).filter(|b| *b > 0) else {
            continue;
        };
        let Ok(tz) = jiff::tz::TimeZone::get(&c.zone) else {
            continue;
        };
        let zoned = now.to_zoned(tz);
        let today = zoned.date().to_string();
        let settled = day_spend
            .get(c.id.as_str())
            .filter(|d| d.day == today)
            .map_or(0, |d| d.settled_micros);
        let (Ok(start), Ok(end)) = (
            zoned.start_of_day(),
            zoned.tomorrow().and_then(|t| t.start_of_day()),
        ) else {
            continue;
        };
        let day_us = (end.timestamp().as_microsecond() - start.timestamp().as_microsecond()).max(1);
        let elapsed_us =
            (now.as_microsecond() - start.timestamp().as_microsecond()).clamp(0, day_us);
        let target =
            i64::try_from(i128::from(budget) * i128::from(elapsed_us) / i128::from(day_us))
                .unwrap_or(budget);
        let slack = (budget / 100).max(1);
        let ahead = settled - target;
        let throttle = if ahead <= 0 {
            1_000_000
        } else {
            (1_000_000 - i128::from(ahead) * 1_000_000 / i128::from(slack)).max(0) as u32
        };
        c.slot.throttle_ppm.store(throttle, Ordering::Relaxed);
    }
}

/// Grants asked for by the bid path, and the retirement of leases whose windows have passed.
pub async fn manage_leases(
    edge: Arc<Edge>,
    coords: Arc<Coordinators>,
    mut asks: mpsc::Receiver<u32>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ask = asks.recv() => {
                let Some(index) = ask else { return };
                tokio::spawn(grant(edge.clone(), coords.clone(), index));
            }
            _ = tick.tick() => retire(&edge),
            _ = stop.changed() => {
                stop_bidding(&edge).await;
                return;
            }
        }
    }
}

async fn grant(edge: Arc<Edge>, coords: Arc<Coordinators>, index: u32) {
    let (name, slot) = {
        let slots = edge.slots.lock().unwrap_or_else(|p| p.into_inner());
        (slots.name(index).clone(), slots.all[index as usize].clone())
    };
    // The spending window is measured from before the request leaves (DESIGN §5): from the
    // first send of a request asked again after an answer was lost.
    let (key, sent) = slot.grant_key(edge.clock.mono());
    let request = pb::GrantLeaseRequest {
        idempotency_key: Some(pb::IdempotencyKey { key }),
        edge: edge.settings.edge.to_string(),
        campaign: name.to_string(),
        want_micros: edge.settings.config.lease_want_micros,
    };
    let asked = std::time::Instant::now();
    // (The planted bug `window-from-retry` notes when the attempt that was answered left.)
    let attempt_sent = std::sync::Arc::new(std::sync::Mutex::new(sent));
    let result = coords
        .call(|mut c| {
            let request = request.clone();
            if shared::planted::active("window-from-retry") {
                *attempt_sent.lock().unwrap_or_else(|p| p.into_inner()) = edge.clock.mono();
            }
            async move {
                Ok(crate::coord::granted(
                    c.grant_lease(request).await?.into_inner(),
                ))
            }
        })
        .await;
    edge.metrics
        .lease_grant_seconds
        .observe(asked.elapsed().as_secs_f64());
    let now_ms = |edge: &Edge| u64::try_from(edge.clock.mono().as_millis()).unwrap_or(u64::MAX);
    if result.is_ok() {
        slot.grant_answered();
    }
    match result {
        Ok(Ok(l)) if l.amount_micros > 0 => {
            let terms = terms_of(&l);
            let sent = *attempt_sent.lock().unwrap_or_else(|p| p.into_inner());
            let lease = Arc::new(ActiveLease::new(
                LeaseId(l.lease_id),
                index,
                Money::from_micros(l.amount_micros),
                sent,
                terms,
            ));
            let held = {
                let mut leases = edge.leases.lock().unwrap_or_else(|p| p.into_inner());
                leases.insert(lease.id, lease.clone());
                leases.len()
            };
            edge.metrics
                .leases_held
                .set(i64::try_from(held).unwrap_or(i64::MAX));
            let previous = slot.current.swap(Some(lease.clone()));
            // The replaced lease keeps bidding from what it has left until its window ends.
            if let Some(p) = &previous
                && edge.clock.mono() < p.spend_until
            {
                slot.previous.store(Some(p.clone()));
            }
            let event = if previous.is_some() {
                "renewed"
            } else {
                "acquired"
            };
            edge.metrics
                .leases
                .get_or_create(&Outcome { outcome: event })
                .inc();
            tracing::debug!(campaign = %name, lease = %lease.id, amount = l.amount_micros, duration_ms = l.duration_ms, event, "lease");
        }
        Ok(other) => {
            let why = match other {
                Err(r) => pb::Refusal::try_from(r).map_or("refused", |r| r.as_str_name()),
                Ok(_) => "nothing left",
            };
            edge.metrics
                .leases
                .get_or_create(&Outcome { outcome: "refused" })
                .inc();
            tracing::debug!(campaign = %name, why, "no lease");
            slot.retry_after_ms
                .store(now_ms(&edge) + 1_000, Ordering::Relaxed);
        }
        Err(e) => {
            edge.metrics
                .leases
                .get_or_create(&Outcome { outcome: "failed" })
                .inc();
            tracing::warn!(campaign = %name, error = %e, "lease request failed");
            slot.retry_after_ms
                .store(now_ms(&edge) + 500, Ordering::Relaxed);
        }
    }
    slot.asking.store(false, Ordering::Release);
}

/// A granted lease's terms. A coordinator that sends none (an older one) gets the rules it
/// had then: the lease's duration, W 10 s, a 2 s margin, no `exp` longer than W.
fn terms_of(l: &pb::Lease) -> Terms {
    let ms = Duration::from_millis;
    match &l.terms {
        Some(t) => terms_from_wire(t),
        None => Terms {
            duration: ms(l.duration_ms),
            settlement_window: ms(10_000),
            margin: ms(2_000),
            default_exp: ms(0),
            max_exp: ms(10_000),
            max_tmax: ms(5_000),
        },
    }
}

/// The terms a coordinator sent with a lease.
pub fn terms_from_wire(t: &pb::LeaseTerms) -> Terms {
    let ms = Duration::from_millis;
    Terms {
        duration: ms(t.duration_ms),
        settlement_window: ms(t.settlement_window_ms),
        margin: ms(t.margin_ms),
        default_exp: ms(t.default_exp_ms),
        max_exp: ms(t.max_exp_ms),
        max_tmax: ms(t.max_tmax_ms),
    }
}

/// Takes leases whose spending window has passed out of their slots, and releases those whose
/// settlement window has passed too.
fn retire(edge: &Arc<Edge>) {
    let now = edge.clock.mono();
    let slots: Vec<_> = edge
        .slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .all
        .clone();
    let mut done = Vec::new();
    let mut released = Vec::new();
    let mut hold = Vec::new();
    {
        let mut leases = edge.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.retain(|id, l| {
            if now >= l.spend_until {
                let slot = &slots[l.slot as usize];
                let current = slot.current.load();
                if current.as_ref().is_some_and(|c| c.id == *id) {
                    slot.current.store(None);
                    edge.metrics
                        .leases
                        .get_or_create(&Outcome { outcome: "expired" })
                        .inc();
                }
                if slot.previous.load().as_ref().is_some_and(|p| p.id == *id) {
                    slot.previous.store(None);
                }
            }
            if now >= l.release_at {
                released.push(crate::bidder::LeaseRecord::of(l));
                // What the bids without a notice hold first, then the reservoir: a notice
                // handled between the two reads is counted held, never lost.
                let in_doubt = l.in_doubt(now);
                let counted_twice = if shared::planted::active("release-counts-held") {
                    in_doubt.last().map_or(0, |p| p.1)
                } else {
                    0
                };
                if let Some(longest) = in_doubt.last().map(|p| p.0) {
                    // Remembered past its bids' deadlines (with the clock-rate allowance and a
                    // minute more): forgetting early only leaves a rest in doubt longer.
                    let keep = Duration::from_millis(longest + longest / 10 + 60_000);
                    hold.push((*id, l.clone(), now + keep));
                }
                let release = Release {
                    unreserved: l.reservoir.unreserved() + counted_twice,
                    bids: l.bids(),
                    in_doubt,
                };
                done.push((*id, release));
                return false;
            }
            true
        });
        // In lease order, not the map's: which leases are kept when the list is full, and the
        // order releases leave in, are then the same in every run of a simulation's seed.
        done.sort_unstable_by_key(|(id, _)| *id);
        released.sort_unstable_by_key(|r: &crate::bidder::LeaseRecord| r.lease);
        hold.sort_unstable_by_key(|(id, _, _)| *id);
        // Still under the `leases` lock: a notice handler finds the lease in one map or the
        // other.
        let mut kept = edge.released_held.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|_, (_, until)| *until > now);
        for (id, l, until) in hold {
            if kept.len() < crate::bidder::RELEASED_HELD_MAX {
                kept.insert(id, (l, until));
            }
        }
        drop(kept);
        edge.metrics
            .leases_held
            .set(i64::try_from(leases.len()).unwrap_or(i64::MAX));
    }
    if !released.is_empty() {
        let mut kept = edge.released.lock().unwrap_or_else(|p| p.into_inner());
        for r in released {
            if kept.len() == crate::bidder::RELEASED_KEPT {
                kept.pop_front();
            }
            kept.push_back(r);
        }
    }
    for (id, release) in done {
        let settler = edge.settler.clone();
        tokio::spawn(async move {
            if let Some(closed) = settler.release(id, release).await {
                tracing::debug!(lease = %id, spent = closed.spent_micros, returned = closed.returned_micros, "lease released");
            }
        });
    }
}

/// At shutdown: stop reserving. Leases are not released early: notices for bids already made
/// may still come (to any edge) until their deadlines, so the leases are left to the leader's
/// reclaim, which waits for exactly that.
async fn stop_bidding(edge: &Edge) {
    let slots = edge
        .slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .all
        .clone();
    for s in slots {
        s.current.store(None);
        s.previous.store(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, cpm: i64) -> pb::CampaignConfig {
        pb::CampaignConfig {
            campaign: name.into(),
            time_zone: "UTC".into(),
            bid_cpm_micros: cpm,
            ..Default::default()
        }
    }

    #[test]
    fn a_delta_updates_what_is_held_and_a_whole_list_replaces_it() {
        let mut held = BTreeMap::new();
        let all = merge_campaigns(&mut held, vec![config("a", 1), config("b", 2)], false);
        assert_eq!(all.len(), 2);
        // A delta: b changed, c is new, a is kept as it was.
        let all = merge_campaigns(&mut held, vec![config("b", 5), config("c", 3)], true);
        let got: Vec<(&str, i64)> = all
            .iter()
            .map(|c| (c.campaign.as_str(), c.bid_cpm_micros))
            .collect();
        assert_eq!(got, [("a", 1), ("b", 5), ("c", 3)]);
        // A whole list: what it does not name is gone.
        let all = merge_campaigns(&mut held, vec![config("c", 3)], false);
        assert_eq!(all.len(), 1);
        assert_eq!(held.len(), 1);
    }
}
