//! A deterministic generator of realistic archives: one region's ledger simulated from a seed —
//! budgets set, leases granted, spend batches settled, bids lost, leases released (with money
//! in doubt for bids still within their deadlines) or reclaimed, in-doubt money returned,
//! rights transferred, peers merged, anomalies recorded — cut into sealed
//! segments. The same seed gives the same bytes, so `testdata/sample-archive` can be checked
//! against its generator.

use std::collections::BTreeMap;

use crate::bucket::{Bucket, CampaignZone};
use crate::id::{BatchId, CampaignId, EdgeId, EventKey, ExchangeId, LeaseId, RegionId};
use crate::money::Money;

use super::entry::{
    Anomaly, AnomalyKind, BidsLost, BudgetSet, DayRetired, DoubtPart, InDoubtReturned,
    LeaseGranted, LeaseParams, LeaseReclaimed, LeaseReleased, ParamsSet, Payload, Received,
    RemoteMerged, RestReturned, RightsTransferred, SpendBatch, SpendEvent,
};
use super::segment::{SegmentWriter, WriteError, segment_file_name};
use super::{Chain, Hash};

/// What to generate.
#[derive(Clone, Debug)]
pub struct SampleConfig {
    /// The seed: same seed, same bytes.
    pub seed: u64,
    /// Entries in all.
    pub entries: u64,
    /// Smallest and largest segment, in entries.
    pub segment_entries: (u64, u64),
    /// Most events in one spend batch.
    pub batch_events_max: usize,
}

impl Default for SampleConfig {
    /// The configuration of `testdata/sample-archive`.
    fn default() -> Self {
        SampleConfig {
            seed: 2026,
            entries: 10_500,
            segment_entries: (2_600, 3_600),
            batch_events_max: 8,
        }
    }
}

/// One generated segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleSegment {
    /// Its file name.
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A generated archive.
#[derive(Clone, Debug)]
pub struct SampleArchive {
    /// Segments, in log order.
    pub segments: Vec<SampleSegment>,
    /// The last entry's hash.
    pub head: Hash,
    /// A few charges that are in the log (one per hundred batches), for proof examples: the
    /// lease, our bid's number and the exchange's ids.
    pub some_charges: Vec<(LeaseId, u64, EventKey)>,
    /// Charges whose exchange ids an earlier charge of another bid carried already (exchanges
    /// reuse ids): the later charge's lease, bid number and the ids.
    pub reused_ids: Vec<(LeaseId, u64, EventKey)>,
}

struct Lease {
    campaign: usize,
    amount: Money,
    spent: Money,
    /// Bids numbered so far.
    bids: u64,
}

/// Splits `rest` into up to three in-doubt parts with increasing waits (a release's bids still
/// within their deadlines), the longest first to get money.
fn doubt_parts(rng: &mut fastrand::Rng, rest: Money) -> Vec<DoubtPart> {
    const WAITS_MS: [u64; 5] = [45_000, 290_000, 595_000, 1_795_000, 3_595_000];
    let n = rng
        .usize(0..=3)
        .min(usize::try_from(rest.micros()).unwrap_or(0));
    let mut waits: Vec<u64> = Vec::new();
    while waits.len() < n {
        let w = WAITS_MS[rng.usize(0..WAITS_MS.len())] + rng.u64(0..5_000);
        if !waits.contains(&w) {
            waits.push(w);
        }
    }
    waits.sort_unstable();
    let mut left = rest.micros();
    let mut parts = Vec::with_capacity(n);
    for (i, wait_ms) in waits.iter().enumerate() {
        let amount = if i + 1 == n {
            left
        } else {
            rng.i64(1..=left - (n - 1 - i) as i64)
        };
        left -= amount;
        parts.push(DoubtPart {
            wait_ms: *wait_ms,
            amount: Money::from_micros(amount),
        });
    }
    parts
}

struct Camp {
    id: CampaignId,
    zone: CampaignZone,
    lifetime_budget: Money,
    /// Rights not leased, spent or in doubt.
    available: Money,
}

fn name<T: std::str::FromStr>(s: &str) -> T {
    // Every literal passed here is a valid id.
    s.parse().unwrap_or_else(|_| unreachable!("literal id {s}"))
}

/// Generates an archive.
pub fn generate(cfg: &SampleConfig) -> Result<SampleArchive, WriteError> {
    let mut rng = fastrand::Rng::with_seed(cfg.seed);
    let region: RegionId = name("eu-1");
    let peers: Vec<RegionId> = vec![name("us-1"), name("ap-1")];
    let edges: Vec<EdgeId> = (1..=6).map(|i| name(&format!("edge-{i}"))).collect();
    let exchanges: Vec<ExchangeId> = ["adx", "openx", "magnite", "pubmatic"]
        .iter()
        .map(|s| name(s))
        .collect();
    let zones = [
        "America/New_York",
        "Europe/Berlin",
        "UTC",
        "Asia/Tokyo",
        "Australia/Sydney",
        "Europe/London",
    ];
    let mut camps: Vec<Camp> = zones
        .iter()
        .enumerate()
        .map(|(i, z)| Camp {
            id: name(&format!("cmp-{}", 100 + i)),
            // The zones are literals of the bundled database.
            zone: CampaignZone::new(z).unwrap_or_else(|_| unreachable!("zone {z}")),
            lifetime_budget: Money::ZERO,
            available: Money::ZERO,
        })
        .collect();

    let mut chain = Chain::new();
    // 2026-10-31T12:00:00Z: the run crosses the end of US daylight saving time on 1 November.
    let mut time_us: i64 = 1_793_448_000_000_000;
    let mut term = 3u64;
    let mut index = 17u64;
    let mut leases: BTreeMap<LeaseId, Lease> = BTreeMap::new();
    let mut in_doubt: Vec<(LeaseId, usize, DoubtPart)> = Vec::new();
    let mut next_lease = 1u64;
    let mut peer_seq: Vec<u64> = vec![0; peers.len()];

    let mut segments = Vec::new();
    let mut writer = SegmentWriter::new(&region, 0, chain.head());
    let mut seg_target = rng.u64(cfg.segment_entries.0..=cfg.segment_entries.1);
    let mut some_charges = Vec::new();
    let mut reused_ids = Vec::new();
    let mut recent_keys: Vec<EventKey> = Vec::new();
    let mut batches = 0u64;

    while chain.next_seq() < cfg.entries {
        time_us += rng.i64(100_000..20_000_000);
        if rng.u32(0..200) == 0 {
            term += 1;
        }
        index += 1 + rng.u64(0..3);
        let seq = chain.next_seq();
        let c = rng.usize(0..camps.len());
        let roll = rng.u32(0..100);
        let first_budgets = 1..=camps.len() as u64;
        let payload = if seq == 0 {
            // The region's rules, set at `cluster init`.
            Payload::ParamsSet(ParamsSet {
                params: LeaseParams::default(),
            })
        } else if seq + 1 == cfg.entries {
            // The last entry: the run's first day, over by now, leaves the live state. (Its
            // figures are illustrative: the sample keeps no per-day accounts.)
            let camp = &camps[c];
            let day = camp
                .zone
                .day_of_unix_micros(1_793_448_000_000_000)
                .map(Bucket::Day)
                .unwrap_or(Bucket::Lifetime);
            Payload::DayRetired(DayRetired {
                campaign: camp.id.clone(),
                bucket: day,
                budget: Money::ZERO,
                settled_here: Money::ZERO,
                settled_all: Money::ZERO,
                lapsed: Money::ZERO,
            })
        } else if first_budgets.contains(&seq)
            || (roll < 3 && camps[c].available < Money::from_micros(5_000_000))
        {
            // Set (or raise) the lifetime budget: new rights in this region.
            let c = if first_budgets.contains(&seq) {
                seq as usize - 1
            } else {
                c
            };
            let camp = &mut camps[c];
            let raise = Money::from_micros(rng.i64(50..500) * 1_000_000);
            let before = camp.lifetime_budget;
            camp.lifetime_budget = before.checked_add(raise).unwrap_or(before);
            camp.available = camp.available.checked_add(raise).unwrap_or(camp.available);
            Payload::BudgetSet(BudgetSet {
                campaign: camp.id.clone(),
                bucket: Bucket::Lifetime,
                before,
                after: camp.lifetime_budget,
            })
        } else if roll < 17 && leases.len() < 24 && camps[c].available.micros() > 0 {
            let camp = &mut camps[c];
            let want = Money::from_micros(rng.i64(1_000_000..20_000_000));
            let amount = want.min(camp.available);
            camp.available = camp.available.checked_sub(amount).unwrap_or(Money::ZERO);
            let lease = LeaseId(next_lease);
            next_lease += 1;
            leases.insert(
                lease,
                Lease {
                    campaign: c,
                    amount,
                    spent: Money::ZERO,
                    bids: 0,
                },
            );
            let day = camp
                .zone
                .day_of_unix_micros(time_us)
                .map(Bucket::Day)
                .unwrap_or(Bucket::Lifetime);
            Payload::LeaseGranted(LeaseGranted {
                lease,
                edge: edges[rng.usize(0..edges.len())].clone(),
                campaign: camp.id.clone(),
                buckets: vec![Bucket::Lifetime, day],
                amount,
                duration_ms: 30_000,
            })
        } else if roll < 72 && !leases.is_empty() {
            let pick = rng.usize(0..leases.len());
            let (&lease, l) = leases
                .iter_mut()
                .nth(pick)
                .unwrap_or_else(|| unreachable!());
            let mut events = Vec::new();
            for _ in 0..rng.usize(1..=cfg.batch_events_max) {
                let price = Money::from_micros(rng.i64(200..12_000));
                let after = l.spent.checked_add(price).unwrap_or(Money::MAX);
                if after > l.amount {
                    break;
                }
                l.spent = after;
                // Bids without a notice yet, or lost, take numbers too.
                l.bids += 1 + rng.u64(0..3);
                let auction = format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    rng.u32(..),
                    rng.u16(..),
                    rng.u16(..),
                    rng.u16(..),
                    rng.u64(..) & 0xffff_ffff_ffff
                );
                let fresh = EventKey::new(
                    exchanges[rng.usize(0..exchanges.len())].clone(),
                    auction,
                    (1 + rng.u8(0..4)).to_string(),
                )
                .unwrap_or_else(|_| unreachable!("generated ids are valid"));
                // One charge in fifty carries the ids of an earlier one: an exchange reusing its
                // auction ids. It is another bid of ours, so another charge.
                let key = if !recent_keys.is_empty() && rng.u32(0..50) == 0 {
                    let k = recent_keys[rng.usize(0..recent_keys.len())].clone();
                    reused_ids.push((lease, l.bids, k.clone()));
                    k
                } else {
                    if recent_keys.len() < 64 {
                        recent_keys.push(fresh.clone());
                    } else {
                        let i = rng.usize(0..64);
                        recent_keys[i] = fresh.clone();
                    }
                    fresh
                };
                events.push(SpendEvent {
                    bid: l.bids,
                    key,
                    amount: price,
                });
            }
            if events.is_empty() {
                // The lease is exhausted: release it.
                let l = leases.remove(&lease).unwrap_or_else(|| unreachable!());
                let returned = l.amount.checked_sub(l.spent).unwrap_or(Money::ZERO);
                camps[l.campaign].available = camps[l.campaign]
                    .available
                    .checked_add(returned)
                    .unwrap_or(Money::MAX);
                Payload::LeaseReleased(LeaseReleased {
                    lease,
                    batch: BatchId::random(&mut rng),
                    spent: l.spent,
                    returned,
                    bids: l.bids,
                    in_doubt: Vec::new(),
                })
            } else {
                batches += 1;
                if batches % 100 == 1 {
                    let e = &events[rng.usize(0..events.len())];
                    some_charges.push((lease, e.bid, e.key.clone()));
                }
                Payload::SpendBatch(SpendBatch {
                    lease,
                    batch: BatchId::random(&mut rng),
                    edge: edges[rng.usize(0..edges.len())].clone(),
                    events,
                })
            }
        } else if roll < 84 && !leases.is_empty() {
            let lease = *leases
                .keys()
                .nth(rng.usize(0..leases.len()))
                .unwrap_or_else(|| unreachable!());
            let l = leases.remove(&lease).unwrap_or_else(|| unreachable!());
            let rest = l.amount.checked_sub(l.spent).unwrap_or(Money::ZERO);
            if rng.u32(0..4) == 0 {
                let wait_ms = 3_605_000;
                if rest.micros() > 0 {
                    let part = DoubtPart {
                        wait_ms,
                        amount: rest,
                    };
                    in_doubt.push((lease, l.campaign, part));
                }
                Payload::LeaseReclaimed(LeaseReclaimed {
                    lease,
                    spent: l.spent,
                    returned: Money::ZERO,
                    in_doubt: rest,
                    wait_ms,
                })
            } else {
                // Some of what is left waits for bids still within their deadlines.
                let held = Money::from_micros(rng.i64(0..=rest.micros() / 2));
                let parts = doubt_parts(&mut rng, held);
                let held: Money =
                    Money::checked_sum(parts.iter().map(|p| p.amount)).unwrap_or(Money::ZERO);
                let returned = rest.checked_sub(held).unwrap_or(Money::ZERO);
                camps[l.campaign].available = camps[l.campaign]
                    .available
                    .checked_add(returned)
                    .unwrap_or(Money::MAX);
                for p in &parts {
                    in_doubt.push((lease, l.campaign, *p));
                }
                Payload::LeaseReleased(LeaseReleased {
                    lease,
                    batch: BatchId::random(&mut rng),
                    spent: l.spent,
                    returned,
                    bids: l.bids,
                    in_doubt: parts,
                })
            }
        } else if roll < 85 && !leases.is_empty() {
            // Loss notices for a few bids of an open lease: deducted at its release.
            let pick = rng.usize(0..leases.len());
            let (&lease, l) = leases
                .iter_mut()
                .nth(pick)
                .unwrap_or_else(|| unreachable!());
            let count = rng.u32(1..4);
            l.bids += u64::from(count);
            Payload::BidsLost(BidsLost {
                lease,
                batch: BatchId::random(&mut rng),
                count,
                bid_total: Money::from_micros(i64::from(count) * rng.i64(200..12_000)),
                returned: Money::ZERO,
            })
        } else if roll < 88
            && !in_doubt.is_empty()
            && in_doubt[0].2.amount.micros() >= 2_000
            && rng.bool()
        {
            // A bid charged after the release gives back the rest of its price: part of the
            // part returns now, the rest waits on.
            let (lease, campaign, part) = &mut in_doubt[0];
            let rest = Money::from_micros(rng.i64(1..part.amount.micros() / 2));
            part.amount = part.amount.checked_sub(rest).unwrap_or(Money::ZERO);
            let (lease, campaign) = (*lease, *campaign);
            camps[campaign].available = camps[campaign]
                .available
                .checked_add(rest)
                .unwrap_or(Money::MAX);
            Payload::RestReturned(RestReturned {
                lease,
                batch: BatchId::random(&mut rng),
                count: 1,
                returned: rest,
            })
        } else if roll < 88 && !in_doubt.is_empty() {
            let (lease, campaign, part) = in_doubt.remove(0);
            camps[campaign].available = camps[campaign]
                .available
                .checked_add(part.amount)
                .unwrap_or(Money::MAX);
            Payload::InDoubtReturned(InDoubtReturned {
                lease,
                wait_ms: part.wait_ms,
                returned: part.amount,
            })
        } else if roll < 92 && camps[c].available.micros() > 2_000_000 {
            let amount = Money::from_micros(rng.i64(1..camps[c].available.micros() / 2));
            camps[c].available = camps[c]
                .available
                .checked_sub(amount)
                .unwrap_or(Money::ZERO);
            Payload::RightsTransferred(RightsTransferred {
                campaign: camps[c].id.clone(),
                bucket: Bucket::Lifetime,
                to: peers[rng.usize(0..peers.len())].clone(),
                amount,
            })
        } else if roll < 98 {
            let p = rng.usize(0..peers.len());
            peer_seq[p] += rng.u64(1..400);
            let mut head = [0u8; 32];
            rng.fill(&mut head);
            let mut received = Vec::new();
            if rng.bool() {
                let amount = Money::from_micros(rng.i64(1_000_000..30_000_000));
                camps[c].available = camps[c].available.checked_add(amount).unwrap_or(Money::MAX);
                received.push(Received {
                    campaign: camps[c].id.clone(),
                    bucket: Bucket::Lifetime,
                    amount,
                });
            }
            Payload::RemoteMerged(RemoteMerged {
                from: peers[p].clone(),
                remote_seq: peer_seq[p],
                remote_head: head,
                received,
            })
        } else {
            let rule = [
                AnomalyKind::LateSpend,
                AnomalyKind::OverLease,
                AnomalyKind::Conflict,
            ][rng.usize(0..3)];
            let key = EventKey::new(
                exchanges[rng.usize(0..exchanges.len())].clone(),
                format!("late-{seq}"),
                "1",
            )
            .unwrap_or_else(|_| unreachable!("generated ids are valid"));
            Payload::Anomaly(Anomaly {
                rule,
                lease: LeaseId(rng.u64(1..next_lease.max(2))),
                event: SpendEvent {
                    bid: rng.u64(1..500),
                    key,
                    amount: Money::from_micros(rng.i64(200..12_000)),
                },
            })
        };
        let (entry, _) = chain.append(term, index, time_us, payload)?;
        writer.push(&entry)?;
        if writer.len() >= seg_target && chain.next_seq() < cfg.entries {
            let first = chain.next_seq() - writer.len();
            let done = std::mem::replace(
                &mut writer,
                SegmentWriter::new(&region, chain.next_seq(), chain.head()),
            );
            segments.push(SampleSegment {
                name: segment_file_name(&region, first),
                bytes: done.seal()?,
            });
            seg_target = rng.u64(cfg.segment_entries.0..=cfg.segment_entries.1);
        }
    }
    let first = chain.next_seq() - writer.len();
    segments.push(SampleSegment {
        name: segment_file_name(&region, first),
        bytes: writer.seal()?,
    });
    Ok(SampleArchive {
        segments,
        head: chain.head(),
        some_charges,
        reused_ids,
    })
}
