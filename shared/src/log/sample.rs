//! A deterministic generator of realistic archives: one region's ledger simulated from a seed —
//! budgets set, leases granted, spend batches settled, leases released or reclaimed, in-doubt
//! money returned, rights transferred, peers merged, anomalies recorded — cut into sealed
//! segments. The same seed gives the same bytes, so `testdata/sample-archive` can be checked
//! against its generator.

use std::collections::BTreeMap;

use crate::bucket::{Bucket, CampaignZone};
use crate::id::{BatchId, CampaignId, EdgeId, EventKey, ExchangeId, LeaseId, RegionId};
use crate::money::Money;

use super::entry::{
    Anomaly, AnomalyKind, BudgetSet, InDoubtReturned, LeaseGranted, LeaseReclaimed, LeaseReleased,
    Payload, Received, RemoteMerged, RightsTransferred, SpendBatch, SpendEvent,
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
    /// A few charges that are in the log (one per hundred batches), for proof examples.
    pub some_charges: Vec<EventKey>,
}

struct Lease {
    campaign: usize,
    amount: Money,
    spent: Money,
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
    let mut in_doubt: Vec<(LeaseId, usize, Money)> = Vec::new();
    let mut next_lease = 1u64;
    let mut peer_seq: Vec<u64> = vec![0; peers.len()];

    let mut segments = Vec::new();
    let mut writer = SegmentWriter::new(&region, 0, chain.head());
    let mut seg_target = rng.u64(cfg.segment_entries.0..=cfg.segment_entries.1);
    let mut some_charges = Vec::new();
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
        let payload = if seq < camps.len() as u64
            || (roll < 3 && camps[c].available < Money::from_micros(5_000_000))
        {
            // Set (or raise) the lifetime budget: new rights in this region.
            let c = if seq < camps.len() as u64 {
                seq as usize
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
                let auction = format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    rng.u32(..),
                    rng.u16(..),
                    rng.u16(..),
                    rng.u16(..),
                    rng.u64(..) & 0xffff_ffff_ffff
                );
                let key = EventKey::new(
                    exchanges[rng.usize(0..exchanges.len())].clone(),
                    auction,
                    (1 + rng.u8(0..4)).to_string(),
                )
                .unwrap_or_else(|_| unreachable!("generated ids are valid"));
                events.push(SpendEvent { key, amount: price });
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
                })
            } else {
                batches += 1;
                if batches % 100 == 1 {
                    some_charges.push(events[rng.usize(0..events.len())].key.clone());
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
                in_doubt.push((lease, l.campaign, rest));
                Payload::LeaseReclaimed(LeaseReclaimed {
                    lease,
                    spent: l.spent,
                    in_doubt: rest,
                })
            } else {
                camps[l.campaign].available = camps[l.campaign]
                    .available
                    .checked_add(rest)
                    .unwrap_or(Money::MAX);
                Payload::LeaseReleased(LeaseReleased {
                    lease,
                    batch: BatchId::random(&mut rng),
                    spent: l.spent,
                    returned: rest,
                })
            }
        } else if roll < 88 && !in_doubt.is_empty() {
            let (lease, campaign, amount) = in_doubt.remove(0);
            camps[campaign].available = camps[campaign]
                .available
                .checked_add(amount)
                .unwrap_or(Money::MAX);
            Payload::InDoubtReturned(InDoubtReturned {
                lease,
                returned: amount,
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
            let rule = if rng.bool() {
                AnomalyKind::LateSpend
            } else {
                AnomalyKind::OverLease
            };
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
    })
}
