//! The ledger's rules, one by one, and random command sequences against its invariants.

use proptest::prelude::*;
use shared::bucket::{Bucket, BucketKey};
use shared::crdt::{CounterRows, CounterState, RegionCounter};
use shared::log::entry::Kind;
use shared::log::{SegmentWriter, SpendEvent, Verifier};
use shared::{BatchId, CampaignId, EdgeId, LeaseId, Money, RegionId};

use super::*;

/// 2026-11-01T12:00:00Z.
const NOON_NOV_1: i64 = 1_793_534_400_000_000;

fn m(n: i64) -> Money {
    Money::from_micros(n)
}

fn cid(s: &str) -> CampaignId {
    s.parse().unwrap()
}

fn eid(s: &str) -> EdgeId {
    s.parse().unwrap()
}

fn rid(s: &str) -> RegionId {
    s.parse().unwrap()
}

/// A charge of the bid named `auction` (the helper gives each auction its own bid number, so
/// the same name is the same bid: a retried or repeated notice).
fn ev(auction: &str, amount: i64) -> SpendEvent {
    // FNV-1a: a stable number per name, never 0.
    let bid = auction.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) | 1;
    evb(bid, auction, amount)
}

/// A charge of bid number `bid` with the exchange's auction id `auction`.
fn evb(bid: u64, auction: &str, amount: i64) -> SpendEvent {
    SpendEvent {
        bid,
        key: format!("adx/{auction}/1").parse().unwrap(),
        amount: m(amount),
    }
}

/// One in-doubt part.
fn part(wait_ms: u64, amount: i64) -> DoubtPart {
    DoubtPart {
        wait_ms,
        amount: m(amount),
    }
}

fn lifetime(c: &str) -> BucketKey {
    BucketKey {
        campaign: cid(c),
        bucket: Bucket::Lifetime,
    }
}

/// A ledger with a running Raft index, a settable clock, fresh keys, and a check of every
/// invariant after every command.
struct H {
    l: Ledger,
    index: u64,
    time_us: i64,
    n: u128,
    /// What a store holding this ledger's rows would hold.
    table: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
}

impl H {
    fn new() -> H {
        H::with(Params {
            lease_min: m(100),
            ..Params::default()
        })
    }

    fn with(params: Params) -> H {
        H::in_region("eu-1", params)
    }

    /// A ledger of `region` whose rules `params` are recorded (its first command).
    fn in_region(region: &str, params: Params) -> H {
        let mut h = H::unruled(region);
        let key = h.key();
        let a = h.run(Command::SetParams { key, params });
        assert!(matches!(a.reply, Reply::ParamsSet { .. }), "{:?}", a.reply);
        h
    }

    /// A new ledger of `region`: no rules recorded yet.
    fn unruled(region: &str) -> H {
        H {
            l: Ledger::new(rid(region), Params::default()),
            index: 0,
            time_us: NOON_NOV_1,
            n: 0,
            table: std::collections::BTreeMap::new(),
        }
    }

    fn key(&mut self) -> RequestKey {
        self.n += 1;
        RequestKey(self.n.to_be_bytes())
    }

    fn batch(&mut self) -> BatchId {
        self.n += 1;
        BatchId((self.n | 1 << 100).to_be_bytes())
    }

    fn run(&mut self, cmd: Command) -> Applied {
        self.index += 1;
        let stamp = Stamp {
            term: 1,
            index: self.index,
            time_us: self.time_us,
        };
        let a = self.l.apply(stamp, &cmd);
        self.l
            .validate()
            .unwrap_or_else(|e| panic!("after {cmd:?}: {e}"));
        rows::apply_writes(&mut self.table, self.l.rows(&a.changes));
        a
    }

    /// A ledger loaded from the rows written so far is the same ledger.
    fn check_reload(&self) {
        let params = self.l.params.clone();
        let loaded = Ledger::load(self.l.region.clone(), params, self.table.clone()).unwrap();
        assert_eq!(
            loaded.all_rows(),
            self.l.all_rows(),
            "rows differ after reload"
        );
        let table: Vec<(Vec<u8>, Vec<u8>)> = self.table.clone().into_iter().collect();
        assert_eq!(
            table,
            self.l.all_rows(),
            "the incremental writes are not the full state"
        );
        assert_eq!(loaded.chain(), self.l.chain());
        // The same live keys in the same order (the running ledger may also hold stale ones).
        let live = |l: &Ledger| -> Vec<(u64, RequestKey)> {
            l.request_order
                .iter()
                .copied()
                .filter(|(o, k)| l.requests.get(k).is_some_and(|r| r.order == *o))
                .collect()
        };
        assert_eq!(live(&loaded), live(&self.l));
        assert_eq!(loaded.request_order.len(), loaded.requests.len());
        assert_eq!(loaded.closed, self.l.closed);
        loaded.validate().unwrap();
        // The per-lease lists, rebuilt from other rows, hold the same keys (live requests only:
        // the running ledger may list keys already forgotten, which removal skips).
        for (id, lease) in self.l.leases() {
            let other = loaded.lease(*id).unwrap();
            let mut a = lease.events.clone();
            let mut b = other.events.clone();
            a.sort();
            b.sort();
            assert_eq!(a, b, "events of lease {id}");
            let mut a: Vec<RequestKey> = lease
                .requests
                .iter()
                .copied()
                .filter(|k| self.l.requests.contains_key(k))
                .collect();
            let mut b = other.requests.clone();
            a.sort();
            b.sort();
            assert_eq!(a, b, "requests of lease {id}");
        }
    }

    fn campaign(&mut self, c: &str, daily: Option<i64>) -> Applied {
        let key = self.key();
        let config = CampaignConfig {
            zone: "America/New_York".into(),
            bid_cpm: m(2_000_000),
            daily_budget: daily.map(m),
            targeting: Box::new(shared::targeting::Targeting {
                countries: vec!["USA".into()],
                sizes: vec!["300x250".into()],
                ..Default::default()
            }),
        };
        self.run(Command::UpsertCampaign {
            key,
            campaign: cid(c),
            config,
        })
    }

    fn budget(&mut self, c: &str, bucket: Bucket, budget: i64) -> Reply {
        let key = self.key();
        self.run(Command::SetBudget {
            key,
            campaign: cid(c),
            bucket,
            budget: m(budget),
        })
        .reply
    }

    fn grant(&mut self, edge: &str, c: &str, want: i64) -> Reply {
        let key = self.key();
        self.run(Command::GrantLease {
            key,
            edge: eid(edge),
            campaign: cid(c),
            want: m(want),
        })
        .reply
    }

    fn granted(&mut self, edge: &str, c: &str, want: i64) -> (LeaseId, Money) {
        match self.grant(edge, c, want) {
            Reply::LeaseGranted { lease, amount, .. } => (lease, amount),
            other => panic!("no lease: {other:?}"),
        }
    }

    fn report(&mut self, edge: &str, lease: LeaseId, events: Vec<SpendEvent>) -> Applied {
        self.report_losses(edge, lease, events, Vec::new())
    }

    fn report_losses(
        &mut self,
        edge: &str,
        lease: LeaseId,
        events: Vec<SpendEvent>,
        losses: Vec<BidPrice>,
    ) -> Applied {
        self.report_held(edge, lease, events, losses, Vec::new())
    }

    /// A report whose charges of `held` bids came after the edge released the lease: their
    /// whole prices are in the lease's in-doubt parts.
    fn report_held(
        &mut self,
        edge: &str,
        lease: LeaseId,
        events: Vec<SpendEvent>,
        losses: Vec<BidPrice>,
        held: Vec<BidPrice>,
    ) -> Applied {
        let batch = self.batch();
        self.run(Command::ReportSpend {
            batch,
            edge: eid(edge),
            lease,
            events,
            losses,
            held,
        })
    }

    fn release(&mut self, edge: &str, lease: LeaseId) -> Reply {
        // Nothing outstanding: everything unspent returns at once.
        self.release_holding(edge, lease, i64::MAX, vec![]).reply
    }

    /// A release: `unreserved` returns, the edge says its reservations wait as `parts`.
    fn release_holding(
        &mut self,
        edge: &str,
        lease: LeaseId,
        unreserved: i64,
        parts: Vec<DoubtPart>,
    ) -> Applied {
        let batch = self.batch();
        self.run(Command::ReleaseLease {
            batch,
            edge: eid(edge),
            lease,
            unreserved: m(unreserved),
            bids: 100,
            in_doubt: parts,
        })
    }

    /// The in-doubt parts of `lease`, as the ledger holds them.
    fn parts(&self, lease: LeaseId) -> Vec<DoubtPart> {
        match &self.l.lease(lease).map(|l| l.state.clone()) {
            Some(LeaseState::InDoubt { parts }) => parts.clone(),
            _ => Vec::new(),
        }
    }

    /// Every in-doubt part of `lease` waits no longer: what they hold returns.
    fn expire_all(&mut self, lease: LeaseId) -> Applied {
        let parts = self
            .parts(lease)
            .iter()
            .map(|p| (lease, p.wait_ms))
            .collect();
        self.run(Command::ExpireInDoubt { parts })
    }

    fn available(&self, key: &BucketKey) -> Money {
        self.l
            .bucket(key)
            .map_or(Money::ZERO, BucketState::available)
    }
}

fn refused(r: &Reply) -> &Refusal {
    match r {
        Reply::Refused(why) => why,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn campaigns_are_validated() {
    let mut h = H::new();
    assert_eq!(
        h.campaign("c1", None).reply,
        Reply::CampaignSaved { created: true }
    );
    assert_eq!(
        h.campaign("c1", Some(5)).reply,
        Reply::CampaignSaved { created: false }
    );
    let bad =
        |zone: &str, bid: i64, daily: Option<i64>, country: &str, size: &str| CampaignConfig {
            zone: zone.into(),
            bid_cpm: m(bid),
            daily_budget: daily.map(m),
            targeting: Box::new(shared::targeting::Targeting {
                countries: vec![country.into()],
                sizes: vec![size.into()],
                ..Default::default()
            }),
        };
    for (config, field) in [
        (bad("Mars/Base", 1, None, "USA", "1x1"), "zone"),
        (bad("UTC", 0, None, "USA", "1x1"), "bid_cpm"),
        (bad("UTC", 1, Some(-1), "USA", "1x1"), "daily_budget"),
        (bad("UTC", 1, None, "us", "1x1"), "countries"),
        (bad("UTC", 1, None, "USA", "big"), "sizes"),
    ] {
        let key = h.key();
        let a = h.run(Command::UpsertCampaign {
            key,
            campaign: cid("c2"),
            config,
        });
        assert!(
            matches!(refused(&a.reply), Refusal::Invalid { field: f, .. } if f == field),
            "{a:?}"
        );
        assert!(h.l.campaign(&cid("c2")).is_none());
    }
    let key = h.key();
    let a = h.run(Command::Pause {
        key,
        campaign: cid("nope"),
    });
    assert_eq!(
        refused(&a.reply),
        &Refusal::UnknownCampaign {
            campaign: cid("nope")
        }
    );
}

#[test]
fn budgets_create_and_burn_rights() {
    let mut h = H::new();
    h.campaign("c1", None);
    assert_eq!(
        h.budget("c1", Bucket::Lifetime, 100_000),
        Reply::BudgetSet { budget: m(100_000) }
    );
    assert_eq!(h.available(&lifetime("c1")), m(100_000));
    h.budget("c1", Bucket::Lifetime, 150_000);
    assert_eq!(h.available(&lifetime("c1")), m(150_000));
    h.budget("c1", Bucket::Lifetime, 120_000);
    assert_eq!(h.available(&lifetime("c1")), m(120_000));
    let state = h.l.bucket(&lifetime("c1")).unwrap().counter.state().clone();
    assert_eq!(state.created(&rid("eu-1")), 150_000);
    assert_eq!(state.burned(&rid("eu-1")), 30_000);
    // A lease holds 30,000 (a quarter); lowering the budget below what is leased is refused.
    let (_, amount) = h.granted("e1", "c1", 1_000_000);
    assert_eq!(amount, m(30_000));
    let before = h.l.chain().clone();
    let r = h.budget("c1", Bucket::Lifetime, 20_000);
    assert_eq!(
        refused(&r),
        &Refusal::BudgetBelowCommitted {
            bucket: lifetime("c1"),
            wanted: m(20_000),
            smallest: m(30_000),
            settled: m(0),
            in_flight: m(30_000),
            elsewhere: m(0),
        }
    );
    assert!(
        refused(&r)
            .to_string()
            .contains("the budget can go down to 0.030000 now, not 0.020000"),
        "{}",
        refused(&r)
    );
    assert_eq!(h.l.chain(), &before, "nothing logged");
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().budget, m(120_000));
    // The same budget again: nothing to log.
    let a = {
        let key = h.key();
        h.run(Command::SetBudget {
            key,
            campaign: cid("c1"),
            bucket: Bucket::Lifetime,
            budget: m(120_000),
        })
    };
    assert!(a.entries.is_empty());
    assert!(matches!(
        refused(&h.budget("c1", Bucket::Lifetime, -1)),
        Refusal::Invalid { .. }
    ));
    assert!(matches!(
        refused(&h.budget("zz", Bucket::Lifetime, 1)),
        Refusal::UnknownCampaign { .. }
    ));
}

#[test]
fn leases_debit_lifetime_and_the_local_day_together() {
    let mut h = H::new();
    h.campaign("c1", Some(10_000));
    h.budget("c1", Bucket::Lifetime, 1_000_000);
    // 03:30 UTC on 1 November is still 31 October in New York.
    h.time_us = NOON_NOV_1 - (8 * 3_600 + 1_800) * 1_000_000;
    let a = {
        let key = h.key();
        h.run(Command::GrantLease {
            key,
            edge: eid("e1"),
            campaign: cid("c1"),
            want: m(50_000),
        })
    };
    let oct31 = BucketKey {
        campaign: cid("c1"),
        bucket: Bucket::Day("2026-10-31".parse().unwrap()),
    };
    // The day bucket was created with the daily budget (one entry), then the lease (another).
    let kinds: Vec<Kind> = a.entries.iter().map(|(e, _)| e.payload.kind()).collect();
    assert_eq!(kinds, [Kind::BudgetSet, Kind::LeaseGranted]);
    // min(want, lifetime's quarter, the day's quarter) = 10,000 / 4.
    assert!(
        matches!(a.reply, Reply::LeaseGranted { amount, ref buckets, .. } if amount == m(2_500) && buckets.len() == 2)
    );
    assert_eq!(h.available(&oct31), m(7_500));
    assert_eq!(h.available(&lifetime("c1")), m(997_500));
    // At noon it is 1 November: a new day bucket.
    h.time_us = NOON_NOV_1;
    h.granted("e1", "c1", 50_000);
    let nov1 = BucketKey {
        campaign: cid("c1"),
        bucket: Bucket::Day("2026-11-01".parse().unwrap()),
    };
    assert_eq!(h.available(&nov1), m(7_500));
}

#[test]
fn grants_are_refused_without_rights_or_when_paused() {
    let mut h = H::new();
    h.campaign("c1", None);
    assert_eq!(
        refused(&h.grant("e1", "c1", 10)),
        &Refusal::NoRights {
            campaign: cid("c1")
        }
    );
    // Less than one impression's bid (2,000): nothing a lease could fund.
    h.budget("c1", Bucket::Lifetime, 1_999);
    assert!(matches!(
        refused(&h.grant("e1", "c1", 10)),
        Refusal::NoRights { .. }
    ));
    h.budget("c1", Bucket::Lifetime, 10_000);
    let key = h.key();
    h.run(Command::Pause {
        key,
        campaign: cid("c1"),
    });
    assert_eq!(
        refused(&h.grant("e1", "c1", 10)),
        &Refusal::Paused {
            campaign: cid("c1")
        }
    );
    let key = h.key();
    h.run(Command::Resume {
        key,
        campaign: cid("c1"),
    });
    assert!(matches!(
        h.grant("e1", "c1", 10),
        Reply::LeaseGranted { .. }
    ));
    assert!(matches!(
        refused(&h.grant("e1", "c1", 0)),
        Refusal::Invalid { .. }
    ));
    assert!(matches!(
        refused(&h.grant("e1", "nope", 10)),
        Refusal::UnknownCampaign { .. }
    ));
}

#[test]
fn the_last_micros_of_a_budget_are_leased_and_spent() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 10_001);
    let mut spent = 0;
    let mut auction = 0;
    while let Reply::LeaseGranted { lease, amount, .. } = h.grant("e1", "c1", 10_000) {
        // Never less than one impression's bid (2,000): a smaller lease funds no bid.
        assert!(amount >= m(2_000), "{amount:?}");
        auction += 1;
        let a = h.report(
            "e1",
            lease,
            vec![ev(&format!("a{auction}"), amount.micros())],
        );
        assert!(matches!(a.reply, Reply::SpendSettled { settled: 1, .. }));
        spent += amount.micros();
        h.release("e1", lease);
    }
    // Spent down to less than one bid: what no impression can use.
    let left = h.available(&lifetime("c1"));
    assert!(left < m(2_000), "{left:?} left");
    assert_eq!(spent + left.micros(), 10_001);
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().settled(), m(spent));
}

#[test]
fn spend_is_settled_once_and_never_beyond_the_lease() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 1_000_000);
    let (lease, amount) = h.granted("e1", "c1", 5_000);
    assert_eq!(amount, m(5_000));
    let a = h.report(
        "e1",
        lease,
        vec![ev("a1", 1_000), ev("a2", 1_500), ev("a1", 1_000)],
    );
    assert_eq!(
        a.reply,
        Reply::SpendSettled {
            settled: 2,
            duplicates: 1,
            anomalies: 0,
            log_seq: Some(a.entries[0].0.seq),
            conflicts: 0,
            lost: 0,
            unknown_bids: 0,
        }
    );
    // Another edge reports a notice for the same impression: a duplicate, not a second charge.
    let a = h.report("e2", lease, vec![ev("a2", 1_500), ev("a3", 2_000)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            settled: 1,
            duplicates: 1,
            anomalies: 0,
            ..
        }
    ));
    assert_eq!(h.l.lease(lease).unwrap().spent, m(4_500));
    // 500 left: a 600 charge is an anomaly, recorded and not settled; a 500 one settles.
    let a = h.report("e1", lease, vec![ev("a4", 600), ev("a5", 500)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            settled: 1,
            anomalies: 1,
            ..
        }
    ));
    let kinds: Vec<Kind> = a.entries.iter().map(|(e, _)| e.payload.kind()).collect();
    assert_eq!(kinds, [Kind::SpendBatch, Kind::Anomaly]);
    assert_eq!(h.l.lease(lease).unwrap().spent, m(5_000));
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().settled(), m(5_000));
    // A retried batch (same id) returns the first reply and changes nothing.
    let batch = h.batch();
    let cmd = Command::ReportSpend {
        batch,
        edge: eid("e1"),
        lease,
        events: vec![ev("a9", 0)],
        losses: vec![],
        held: vec![],
    };
    let first = h.run(cmd.clone());
    let again = h.run(cmd);
    assert_eq!(again.reply, first.reply);
    assert!(again.entries.is_empty());
}

#[test]
fn bad_reports_are_refused_and_change_nothing() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 1_000_000);
    let (lease, _) = h.granted("e1", "c1", 5_000);
    let before = h.l.chain().clone();
    for (events, field) in [(vec![], "events"), (vec![ev("a1", -5)], "events")] {
        let r = h.report("e1", lease, events).reply;
        assert!(
            matches!(refused(&r), Refusal::Invalid { field: f, .. } if f == field),
            "{r:?}"
        );
    }
    assert_eq!(
        refused(&h.report("e1", LeaseId(999), vec![ev("a1", 5)]).reply),
        &Refusal::UnknownLease {
            lease: LeaseId(999)
        }
    );
    let too_many: Vec<SpendEvent> = (0..=BATCH_EVENTS_MAX)
        .map(|i| ev(&format!("x{i}"), 1))
        .collect();
    assert!(matches!(
        refused(&h.report("e1", lease, too_many).reply),
        Refusal::Invalid { .. }
    ));
    assert_eq!(h.l.chain(), &before);
    assert_eq!(h.l.lease(lease).unwrap().spent, Money::ZERO);
}

#[test]
fn release_returns_the_unspent_part_once() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, amount) = h.granted("e1", "c1", 10_000);
    h.report("e1", lease, vec![ev("a1", 3_000)]);
    assert!(
        matches!(refused(&h.release("e2", lease)), Refusal::Invalid { field, .. } if field == "edge")
    );
    assert_eq!(
        h.release("e1", lease),
        Reply::LeaseClosed {
            spent: m(3_000),
            returned: sub(amount, m(3_000))
        }
    );
    assert_eq!(h.available(&lifetime("c1")), m(97_000));
    // A second release (new batch id) finds it closed and returns nothing more.
    assert_eq!(
        h.release("e1", lease),
        Reply::LeaseClosed {
            spent: m(3_000),
            returned: Money::ZERO
        }
    );
    assert_eq!(h.available(&lifetime("c1")), m(97_000));
    // A notice after the release is recorded as late spend, not settled.
    let a = h.report("e1", lease, vec![ev("a2", 100)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            settled: 0,
            anomalies: 1,
            ..
        }
    ));
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().settled(), m(3_000));
}

#[test]
fn a_release_returns_only_the_unreserved_and_holds_the_rest_for_late_notices() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    h.report("e1", lease, vec![ev("a1", 1_000)]);
    // The edge reserved 5,000 more whose notices have not come: 4,000 returns now.
    let a = h.release_holding("e1", lease, 4_000, vec![part(60_000, 5_000)]);
    assert_eq!(
        a.reply,
        Reply::LeaseClosed {
            spent: m(1_000),
            returned: m(4_000)
        }
    );
    let b = h.l.bucket(&lifetime("c1")).unwrap();
    assert_eq!((b.leased, b.in_doubt), (Money::ZERO, m(5_000)));
    assert_eq!(h.available(&lifetime("c1")), m(94_000));
    // A notice retried after W, at another edge, still settles (before the fix it was a
    // late-spend anomaly: billed, never debited).
    let a = h.report("e2", lease, vec![ev("a2", 2_500)]);
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 1,
                anomalies: 0,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().in_doubt, m(2_500));
    // The late-acceptance window ends: the rest returns.
    h.expire_all(lease);
    assert_eq!(h.available(&lifetime("c1")), m(96_500));
    // An unreserved figure above the unspent amount, or below zero, is clamped.
    let (l2, amount2) = h.granted("e1", "c1", 10_000);
    let a = h.release_holding("e1", l2, -5, vec![]);
    assert!(matches!(a.reply, Reply::LeaseClosed { returned, .. } if returned == Money::ZERO));
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().in_doubt, amount2);
}

#[test]
fn reclaimed_leases_hold_money_in_doubt_for_late_notices() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, amount) = h.granted("e1", "c1", 10_000);
    assert_eq!(amount, m(10_000));
    h.report("e1", lease, vec![ev("a1", 1_000)]);
    let a = h.run(Command::ReclaimLeases {
        leases: vec![lease, lease, LeaseId(77)],
    });
    assert_eq!(a.reply, Reply::LeasesClosed { count: 1 });
    let b = h.l.bucket(&lifetime("c1")).unwrap();
    assert_eq!((b.leased, b.in_doubt), (Money::ZERO, m(9_000)));
    // In-doubt money is not available for new leases.
    assert_eq!(h.available(&lifetime("c1")), m(90_000));
    // A late notice settles against it.
    let a = h.report("e1", lease, vec![ev("a2", 2_000)]);
    assert!(matches!(a.reply, Reply::SpendSettled { settled: 1, .. }));
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().in_doubt, m(7_000));
    // Reclaiming again does nothing; releasing now returns nothing.
    assert_eq!(
        h.run(Command::ReclaimLeases {
            leases: vec![lease]
        })
        .reply,
        Reply::LeasesClosed { count: 0 }
    );
    assert_eq!(
        h.release("e1", lease),
        Reply::LeaseClosed {
            spent: m(3_000),
            returned: Money::ZERO
        }
    );
    // The window ends: the rest returns.
    assert_eq!(h.expire_all(lease).reply, Reply::LeasesClosed { count: 1 });
    assert_eq!(h.available(&lifetime("c1")), m(97_000));
    // Later still: recorded as late spend.
    let a = h.report("e1", lease, vec![ev("a3", 10)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            settled: 0,
            anomalies: 1,
            ..
        }
    ));
    assert!(
        matches!(&a.entries[0].0.payload, Payload::Anomaly(x) if x.rule == AnomalyKind::LateSpend)
    );
}

#[test]
fn a_charge_is_our_bids_whatever_ids_the_exchange_gave_it() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 1_000_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    // Two bids of ours on requests that carry the same auction and impression ids (the
    // exchange reused them): two charges.
    let a = h.report(
        "e1",
        lease,
        vec![evb(1, "dup", 1_000), evb(2, "dup", 1_200)],
    );
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 2,
                duplicates: 0,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
    // The same bid's notice again (a retry, at another edge, in another batch): settled once.
    let a = h.report("e2", lease, vec![evb(2, "dup", 1_200)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            settled: 0,
            duplicates: 1,
            conflicts: 0,
            ..
        }
    ));
    // A second bill for bid 1 at another price: a conflict, recorded as an anomaly, the first
    // price stands.
    let a = h.report("e1", lease, vec![evb(1, "dup", 900)]);
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 0,
                anomalies: 1,
                conflicts: 1,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
    assert!(
        matches!(&a.entries[0].0.payload, Payload::Anomaly(x) if x.rule == AnomalyKind::Conflict)
    );
    assert_eq!(h.l.lease(lease).unwrap().spent, m(2_200));
    // Another lease's bid 1 with the same ids: its own charge.
    let (other, _) = h.granted("e2", "c1", 10_000);
    let a = h.report("e2", other, vec![evb(1, "dup", 1_000)]);
    assert!(matches!(a.reply, Reply::SpendSettled { settled: 1, .. }));
    // Bid numbers start at 1.
    assert!(matches!(
        refused(&h.report("e1", lease, vec![evb(0, "z", 1)]).reply),
        Refusal::Invalid { .. }
    ));
    h.check_reload();
}

#[test]
fn a_release_holds_reservations_until_their_deadlines_longest_first() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, amount) = h.granted("e1", "c1", 10_000);
    assert_eq!(amount, m(10_000));
    // Another edge settled a notice of one of e1's bids: the ledger knows, e1 does not.
    h.report("e2", lease, vec![evb(3, "a3", 500)]);
    // e1 made 6 bids: 1,000 of them given back; it still holds 2,000 waiting 60 s, 3,000
    // waiting 300 s and 4,000 waiting 3,600 s (bid 3's 1,000 among them, which it never saw
    // settled). The ledger's unspent rest is 9,500: 1,000 returns, 8,500 waits.
    let a = h.release_holding(
        "e1",
        lease,
        1_000,
        vec![
            part(60_000, 2_000),
            part(300_000, 3_000),
            part(3_600_000, 4_000),
        ],
    );
    assert_eq!(
        a.reply,
        Reply::LeaseClosed {
            spent: m(500),
            returned: m(1_000)
        }
    );
    // The longest waits are filled first: the shortest part holds what is left for it.
    assert_eq!(
        h.parts(lease),
        vec![
            part(60_000, 1_500),
            part(300_000, 3_000),
            part(3_600_000, 4_000)
        ]
    );
    assert!(
        matches!(&a.entries[0].0.payload, Payload::LeaseReleased(r) if r.in_doubt == h.parts(lease) && r.bids == 100)
    );
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().in_doubt, m(8_500));
    // A late charge takes from the shortest wait first.
    h.report("e2", lease, vec![evb(4, "a4", 2_000)]);
    assert_eq!(
        h.parts(lease),
        vec![part(300_000, 2_500), part(3_600_000, 4_000)]
    );
    // The 300 s part's wait is over: it returns; the hour's stays.
    let a = h.run(Command::ExpireInDoubt {
        parts: vec![(lease, 300_000), (lease, 60_000)],
    });
    assert_eq!(a.reply, Reply::LeasesClosed { count: 1 });
    assert!(
        matches!(&a.entries[0].0.payload, Payload::InDoubtReturned(r) if r.wait_ms == 300_000 && r.returned == m(2_500))
    );
    assert_eq!(h.parts(lease), vec![part(3_600_000, 4_000)]);
    // A charge within the hour still settles.
    let a = h.report("e3", lease, vec![evb(5, "a5", 3_000)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            settled: 1,
            anomalies: 0,
            ..
        }
    ));
    h.expire_all(lease);
    assert_eq!(h.l.lease(lease).unwrap().state, LeaseState::Closed);
    assert_eq!(
        h.available(&lifetime("c1")),
        m(100_000 - 500 - 2_000 - 3_000)
    );
    h.check_reload();
}

/// Checks in `edge` as process `incarnation`, covering `covers`.
fn check_in(h: &mut H, edge: &str, incarnation: u64, covers: u64) -> Reply {
    h.run(Command::CheckIn {
        edge: eid(edge),
        incarnation,
        covers,
    })
    .reply
}

#[test]
fn in_doubt_money_waits_until_every_edge_checked_in_past_its_due_entry() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    // Two edges register (covering nothing yet) before accepting notices.
    assert_eq!(
        check_in(&mut h, "e1", 7, 0),
        Reply::CheckedIn {
            incarnation: 7,
            accepted: true
        }
    );
    check_in(&mut h, "e2", 3, 0);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    h.release_holding("e1", lease, 4_000, vec![part(60_000, 6_000)]);
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().in_doubt, m(6_000));
    // The wait is over on the leader's clock: the first expiry only marks the part due.
    let a = h.expire_all(lease);
    let due_at = h.index;
    assert_eq!(a.reply, Reply::LeasesClosed { count: 0 });
    assert!(a.entries.is_empty(), "marking moves no money");
    assert_eq!(h.l.lease(lease).unwrap().due.get(&60_000), Some(&due_at));
    // e1 checks in past the mark, e2 only before it: still waiting (e2 may hold a notice).
    check_in(&mut h, "e1", 7, due_at);
    check_in(&mut h, "e2", 3, due_at - 1);
    assert_eq!(h.l.edges_covered(), due_at - 1);
    assert_eq!(h.expire_all(lease).reply, Reply::LeasesClosed { count: 0 });
    // A notice e2 held through the cut settles against the part, as it must.
    let a = h.report("e2", lease, vec![evb(9, "a9", 1_500)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            settled: 1,
            anomalies: 0,
            ..
        }
    ));
    // A check-in of an older process of e2 changes nothing, and says which one is registered.
    assert_eq!(
        check_in(&mut h, "e2", 2, u64::MAX),
        Reply::CheckedIn {
            incarnation: 3,
            accepted: false
        }
    );
    assert_eq!(h.l.edges_covered(), due_at - 1);
    // A lower `covers` from the registered process never lowers what it covers.
    check_in(&mut h, "e1", 7, 1);
    assert_eq!(h.l.edges()[&eid("e1")].covers, due_at);
    h.check_reload();
    // e2 restarted: its new process registers (covering nothing); then checks in past the mark.
    check_in(&mut h, "e2", 4, 0);
    assert_eq!(h.expire_all(lease).reply, Reply::LeasesClosed { count: 0 });
    check_in(&mut h, "e2", 4, due_at);
    let a = h.expire_all(lease);
    assert_eq!(a.reply, Reply::LeasesClosed { count: 1 });
    assert!(
        matches!(&a.entries[0].0.payload, Payload::InDoubtReturned(r) if r.returned == m(4_500))
    );
    assert_eq!(h.l.lease(lease).unwrap().state, LeaseState::Closed);
    assert!(h.l.lease(lease).unwrap().due.is_empty());
    assert_eq!(h.available(&lifetime("c1")), m(100_000 - 1_500));
    h.check_reload();
}

#[test]
fn a_retired_edge_is_no_longer_waited_for() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    check_in(&mut h, "gone", 1, 0);
    let (lease, _) = h.granted("gone", "c1", 10_000);
    h.run(Command::ReclaimLeases {
        leases: vec![lease],
    });
    h.expire_all(lease);
    assert_eq!(h.expire_all(lease).reply, Reply::LeasesClosed { count: 0 });
    let key = h.key();
    let a = h.run(Command::RetireEdge {
        key,
        edge: eid("gone"),
    });
    assert_eq!(a.reply, Reply::EdgeRetired);
    assert!(h.l.edges().is_empty());
    assert_eq!(h.expire_all(lease).reply, Reply::LeasesClosed { count: 1 });
    assert_eq!(h.available(&lifetime("c1")), m(100_000));
    // Retiring it again (a retried request) answers the same.
    let a = h.run(Command::RetireEdge {
        key,
        edge: eid("gone"),
    });
    assert_eq!(a.reply, Reply::EdgeRetired);
    // A new request to retire it (or any edge never registered) is refused by name.
    let key = h.key();
    let a = h.run(Command::RetireEdge {
        key,
        edge: eid("gone"),
    });
    assert_eq!(
        a.reply,
        Reply::Refused(Refusal::UnknownEdge { edge: eid("gone") })
    );
    h.check_reload();
}

#[test]
fn what_the_edges_parts_do_not_cover_waits_for_the_longest_hold() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    // The edge's figures account for less than the ledger's unspent rest (a notice was on
    // its way at the edge when it counted): the rest waits as long as any bid may.
    h.release_holding("e1", lease, 5_000, vec![part(60_000, 1_000)]);
    let max_hold = Params::default().max_exp_ms + Params::default().max_tmax_ms;
    assert_eq!(
        h.parts(lease),
        vec![part(60_000, 1_000), part(max_hold, 4_000)]
    );
}

#[test]
fn releases_with_parts_out_of_shape_are_refused_and_change_nothing() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    let max_hold = Params::default().max_exp_ms + Params::default().max_tmax_ms;
    let before = h.l.chain().clone();
    for parts in [
        vec![part(300_000, 1), part(60_000, 1)],
        vec![part(60_000, 1), part(60_000, 1)],
        vec![part(60_000, 0)],
        vec![part(max_hold + 1, 1)],
        (0..=DOUBT_PARTS_MAX as u64)
            .map(|i| part(i + 1, 1))
            .collect(),
    ] {
        let r = h.release_holding("e1", lease, 0, parts.clone()).reply;
        assert!(
            matches!(refused(&r), Refusal::Invalid { field, .. } if field == "in_doubt"),
            "{parts:?}: {r:?}"
        );
    }
    assert_eq!(h.l.chain(), &before);
    assert_eq!(h.l.lease(lease).unwrap().state, LeaseState::Open);
}

#[test]
fn a_bid_charged_after_the_release_gives_the_rest_of_its_price_back() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    // Released with two bids of 3,000 in doubt (one part), the rest back.
    h.release_holding("e1", lease, 4_000, vec![part(300_000, 6_000)]);
    assert_eq!(h.available(&lifetime("c1")), m(100_000 - 6_000));
    let price = |bid, amount| BidPrice {
        bid,
        amount: m(amount),
    };
    // Bid 1 is charged 1,200 of its 3,000: the other 1,800 can never be charged, so it comes
    // back now; a price given for a bid not charged in the report (bid 9) changes nothing.
    let a = h.report_held(
        "e1",
        lease,
        vec![evb(1, "a1", 1_200)],
        vec![],
        vec![price(1, 3_000), price(9, 3_000)],
    );
    assert!(
        matches!(a.reply, Reply::SpendSettled { settled: 1, .. }),
        "{:?}",
        a.reply
    );
    let rest = a
        .entries
        .iter()
        .find_map(|(e, _)| match &e.payload {
            Payload::RestReturned(r) => Some(r.clone()),
            _ => None,
        })
        .expect("a rest_returned entry");
    assert_eq!((rest.count, rest.returned), (1, m(1_800)));
    assert_eq!(h.parts(lease), vec![part(300_000, 3_000)]);
    assert_eq!(h.available(&lifetime("c1")), m(100_000 - 3_000 - 1_200));
    // Its retry is a duplicate: nothing more comes back.
    let a = h.report_held(
        "e2",
        lease,
        vec![evb(1, "a1", 1_200)],
        vec![],
        vec![price(1, 3_000)],
    );
    assert!(matches!(a.reply, Reply::SpendSettled { duplicates: 1, .. }));
    assert!(a.entries.is_empty(), "{:?}", a.entries);
    // A price at or under its charge has no rest; one over what the parts still hold returns
    // only what they hold, and the lease closes.
    let a = h.report_held(
        "e1",
        lease,
        vec![evb(2, "a2", 2_000)],
        vec![],
        vec![price(2, 2_000)],
    );
    assert!(
        !a.entries
            .iter()
            .any(|(e, _)| matches!(e.payload, Payload::RestReturned(_)))
    );
    let a = h.report_held(
        "e1",
        lease,
        vec![evb(3, "a3", 500)],
        vec![],
        vec![price(3, 9_000)],
    );
    assert!(
        a.entries
            .iter()
            .any(|(e, _)| matches!(&e.payload, Payload::RestReturned(r) if r.returned == m(500))),
        "{:?}",
        a.entries
    );
    assert!(
        h.l.lease(lease)
            .is_none_or(|l| l.state == LeaseState::Closed)
    );
    assert_eq!(
        h.available(&lifetime("c1")),
        m(100_000 - 1_200 - 2_000 - 500)
    );
}

#[test]
fn prices_of_charges_on_an_open_lease_change_nothing_until_the_release() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    // A report overtaking the release: the lease is still open, so the rest stays leased.
    let a = h.report_held(
        "e1",
        lease,
        vec![evb(1, "a1", 1_000)],
        vec![],
        vec![BidPrice {
            bid: 1,
            amount: m(3_000),
        }],
    );
    assert!(
        !a.entries
            .iter()
            .any(|(e, _)| matches!(e.payload, Payload::RestReturned(_)))
    );
    assert_eq!(h.available(&lifetime("c1")), m(100_000 - 10_000));
    // A bad price is refused with the field named.
    let a = h.report_held(
        "e1",
        lease,
        vec![evb(2, "a2", 1_000)],
        vec![],
        vec![BidPrice {
            bid: 0,
            amount: m(3_000),
        }],
    );
    assert!(
        matches!(&a.reply, Reply::Refused(Refusal::Invalid { field, .. }) if field == "held"),
        "{:?}",
        a.reply
    );
}

#[test]
fn loss_notices_give_reservations_back_early() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    let lost = |bid, amount| BidPrice {
        bid,
        amount: m(amount),
    };
    // While the lease is open, a loss seen at another edge is remembered…
    let a = h.report_losses("e2", lease, vec![], vec![lost(1, 2_000), lost(1, 2_000)]);
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                lost: 1,
                duplicates: 1,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
    assert!(
        matches!(&a.entries[0].0.payload, Payload::BidsLost(b) if b.count == 1 && b.bid_total == m(2_000) && b.returned == Money::ZERO)
    );
    assert_eq!(h.l.lease(lease).unwrap().lost, m(2_000));
    // …and returns at the release, although the edge (which never saw it) still counted it.
    let a = h.release_holding("e1", lease, 4_000, vec![part(300_000, 6_000)]);
    assert_eq!(
        a.reply,
        Reply::LeaseClosed {
            spent: Money::ZERO,
            returned: m(6_000)
        }
    );
    assert_eq!(h.parts(lease), vec![part(300_000, 4_000)]);
    // After the release a loss returns its bid's money at once.
    let a = h.report_losses("e3", lease, vec![], vec![lost(2, 1_500)]);
    assert!(matches!(&a.entries[0].0.payload, Payload::BidsLost(b) if b.returned == m(1_500)));
    assert_eq!(h.parts(lease), vec![part(300_000, 2_500)]);
    assert_eq!(h.available(&lifetime("c1")), m(100_000 - 2_500));
    // A bill for a bid already lost, its money gone: a conflict, not settled.
    let a = h.report("e3", lease, vec![evb(2, "a2", 1_000)]);
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 0,
                anomalies: 1,
                conflicts: 1,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
    // A loss for a bid already charged changes nothing.
    h.report("e3", lease, vec![evb(3, "a3", 700)]);
    let a = h.report_losses("e3", lease, vec![], vec![lost(3, 900)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            lost: 0,
            conflicts: 1,
            ..
        }
    ));
    assert!(a.entries.is_empty());
    h.check_reload();
}

#[test]
fn a_bill_after_a_loss_on_an_open_lease_settles() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    h.report_losses(
        "e2",
        lease,
        vec![],
        vec![BidPrice {
            bid: 7,
            amount: m(2_000),
        }],
    );
    // The exchange bills it after all: what it bills counts; the loss is undone.
    let a = h.report("e1", lease, vec![evb(7, "a7", 1_800)]);
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 1,
                conflicts: 1,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
    assert_eq!(h.l.lease(lease).unwrap().lost, Money::ZERO);
    assert_eq!(h.l.lease(lease).unwrap().spent, m(1_800));
    h.check_reload();
}

#[test]
fn a_reclaim_holds_the_rest_for_the_longest_hold_and_returns_lost_bids() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    h.report_losses(
        "e2",
        lease,
        vec![evb(1, "a1", 1_000)],
        vec![BidPrice {
            bid: 2,
            amount: m(500),
        }],
    );
    let a = h.run(Command::ReclaimLeases {
        leases: vec![lease],
    });
    let max_hold = Params::default().max_exp_ms + Params::default().max_tmax_ms;
    assert!(matches!(&a.entries[0].0.payload, Payload::LeaseReclaimed(r)
        if r.returned == m(500) && r.in_doubt == m(8_500) && r.wait_ms == max_hold));
    assert_eq!(h.parts(lease), vec![part(max_hold, 8_500)]);
}

#[test]
fn unknown_bids_are_counted_once_the_release_says_how_many_there_were() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    h.release_holding("e1", lease, 0, vec![part(60_000, 10_000)]);
    // The release said 100 bids: bid 101 is none of them. It is billed, so it settles.
    let a = h.report("e2", lease, vec![evb(101, "x", 10), evb(100, "y", 10)]);
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 2,
                unknown_bids: 1,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
}

#[test]
fn the_regions_rules_are_replicated_state_set_by_a_logged_command() {
    let mut h = H::unruled("eu-1");
    assert!(!h.l.params_recorded());
    // No lease before the region's rules are recorded: every replica grants by the log's.
    h.campaign("c0", None);
    h.budget("c0", Bucket::Lifetime, 100_000);
    assert_eq!(
        refused(&h.grant("e1", "c0", 1_000)),
        &Refusal::RulesNotRecorded
    );
    let rules = Params {
        lease_duration_ms: 5_000,
        margin_ms: 1_000,
        max_exp_ms: 600_000,
        default_exp_ms: 60_000,
        lease_min: m(100),
        ..Params::default()
    };
    let key = h.key();
    let a = h.run(Command::SetParams {
        key,
        params: rules.clone(),
    });
    assert_eq!(
        a.reply,
        Reply::ParamsSet {
            params: rules.clone()
        }
    );
    assert!(matches!(&a.entries[0].0.payload, Payload::ParamsSet(p) if p.params == rules));
    assert!(h.l.params_recorded());
    // The same rules again: nothing new to record.
    let key = h.key();
    assert!(
        h.run(Command::SetParams {
            key,
            params: rules.clone()
        })
        .entries
        .is_empty()
    );
    // Rules that do not fit together are refused by name.
    let key = h.key();
    let bad = Params {
        margin_ms: 0,
        clock_rate_error_ppm: 1_000,
        ..rules.clone()
    };
    assert!(
        matches!(refused(&h.run(Command::SetParams { key, params: bad }).reply), Refusal::Invalid { problem, .. } if problem.contains("margin_ms"))
    );
    // A lease keeps the terms it was granted under.
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    let key = h.key();
    h.run(Command::SetParams {
        key,
        params: Params {
            max_exp_ms: 3_600_000,
            ..rules.clone()
        },
    });
    assert_eq!(h.l.lease(lease).unwrap().terms, Terms::of(&rules));
    assert!(
        matches!(h.grant("e1", "c1", 1_000), Reply::LeaseGranted { terms, .. } if terms.max_exp_ms == 3_600_000)
    );
    h.check_reload();
}

/// A bid of the deadline property test, as the edge that made it saw it.
#[derive(Clone, Debug)]
struct HeldBid {
    price: i64,
    /// Its deadline, ms after the release (the edge's class of its hold).
    wait_ms: u64,
    /// What happened before the release: 0 nothing, 1 settled at another edge, 2 settled at
    /// the holding edge, 3 lost at the holding edge, 4 lost at another edge.
    before: u8,
    /// After the release, before its deadline: billed at this share of its price (percent),
    /// or (None) lost.
    after: Option<u8>,
    /// When, as a share of its wait (percent).
    at: u8,
}

fn arb_held_bid() -> impl Strategy<Value = HeldBid> {
    (
        1..3_000i64,
        prop_oneof![
            Just(10_000u64),
            Just(60_000),
            Just(300_000),
            Just(3_600_000)
        ],
        0..5u8,
        proptest::option::of(0..=100u8),
        0..100u8,
    )
        .prop_map(|(price, wait_ms, before, after, at)| HeldBid {
            price,
            wait_ms,
            before,
            after,
            at,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The rule of this issue: a notice that comes before its bid's deadline always settles,
    /// whatever else was settled, lost or expired before it. Bids are made under one lease;
    /// some are resolved before the release (at the holding edge or elsewhere); the edge
    /// releases with its outstanding reservations by deadline; then the other bids' notices or
    /// losses come in time order, and every part whose wait is over is expired as early as the
    /// ledger allows (exactly at its wait: the leader only ever waits longer).
    #[test]
    fn a_notice_before_its_bids_deadline_always_settles(bids in proptest::collection::vec(arb_held_bid(), 1..40)) {
        let mut h = H::new();
        h.campaign("c1", None);
        h.budget("c1", Bucket::Lifetime, 1_000_000_000);
        let total: i64 = bids.iter().map(|b| b.price).sum();
        let (lease, amount) = h.granted("e1", "c1", total + 5_000);
        prop_assume!(amount.micros() >= total);
        let mut unreserved = amount.micros() - total;
        let mut classes: BTreeMap<u64, i64> = BTreeMap::new();
        let mut open: Vec<(u64, &HeldBid)> = Vec::new();
        for (i, b) in bids.iter().enumerate() {
            let n = i as u64 + 1;
            let ev = evb(n, &format!("x{}", i % 3), b.price * 9 / 10);
            match b.before {
                1 => { h.report("e2", lease, vec![ev]); classes.entry(b.wait_ms).and_modify(|a| *a += b.price).or_insert(b.price); }
                2 => { unreserved += b.price - ev.amount.micros(); h.report("e1", lease, vec![ev]); }
                3 => unreserved += b.price,
                4 => {
                    h.report_losses("e2", lease, vec![], vec![BidPrice { bid: n, amount: m(b.price) }]);
                    classes.entry(b.wait_ms).and_modify(|a| *a += b.price).or_insert(b.price);
                }
                _ => { classes.entry(b.wait_ms).and_modify(|a| *a += b.price).or_insert(b.price); open.push((n, b)); }
            }
        }
        let parts: Vec<DoubtPart> = classes.iter().map(|(w, a)| part(*w, *a)).collect();
        h.release_holding("e1", lease, unreserved, parts);
        // The notices and losses of the open bids, in time order, with the expiries between.
        let mut events: Vec<(u64, u64, &HeldBid)> = open
            .iter()
            .map(|(n, b)| (b.wait_ms * u64::from(b.at) / 100, *n, *b))
            .collect();
        events.sort_by_key(|(t, n, _)| (*t, *n));
        for (t, n, b) in events {
            let due: Vec<(LeaseId, u64)> = h.parts(lease).iter().filter(|p| p.wait_ms < t).map(|p| (lease, p.wait_ms)).collect();
            if !due.is_empty() {
                h.run(Command::ExpireInDoubt { parts: due });
            }
            match b.after {
                Some(share) => {
                    let amount = b.price * i64::from(share) / 100;
                    let a = h.report("e3", lease, vec![evb(n, "late", amount)]);
                    prop_assert!(
                        matches!(a.reply, Reply::SpendSettled { settled: 1, anomalies: 0, .. }),
                        "bid {n} billed {amount} at {t} ms of its {} ms was not settled: {:?}; parts {:?}",
                        b.wait_ms, a.reply, h.parts(lease)
                    );
                }
                None => {
                    h.report_losses("e3", lease, vec![], vec![BidPrice { bid: n, amount: m(b.price) }]);
                }
            }
        }
        h.expire_all(lease);
        prop_assert_eq!(h.l.lease(lease).unwrap().state.clone(), LeaseState::Closed);
    }
}

#[test]
fn forgotten_leases_and_requests_are_bounded() {
    let mut h = H::with(Params {
        lease_min: m(10),
        closed_leases_retained: 2,
        requests_retained: 1_000,
        ..Params::default()
    });
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 1_000_000);
    let mut leases = Vec::new();
    for i in 0..4 {
        let (lease, _) = h.granted("e1", "c1", 100);
        h.report("e1", lease, vec![ev(&format!("a{i}"), 10)]);
        h.release("e1", lease);
        leases.push(lease);
    }
    assert_eq!(
        h.l.leases().count(),
        2,
        "only the last two closed leases are remembered"
    );
    assert!(h.l.lease(leases[0]).is_none());
    // A notice for a forgotten lease is still recorded (as late), never refused or settled.
    let a = h.report("e1", leases[0], vec![ev("a0", 10), ev("late", 5)]);
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 0,
                anomalies: 2,
                ..
            }
        ),
        "{a:?}"
    );
    // A lease id never granted is refused.
    assert!(matches!(
        refused(&h.report("e1", LeaseId(50), vec![ev("b", 1)]).reply),
        Refusal::UnknownLease { .. }
    ));
    let mut small = H::with(Params {
        requests_retained: 3,
        ..Params::default()
    });
    for _ in 0..10 {
        small.campaign("c1", None);
    }
    assert_eq!(small.l.requests.len(), 3);
    small.check_reload();
    h.check_reload();
}

#[test]
fn transfers_and_merges_move_rights_between_regions() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let key = h.key();
    let a = h.run(Command::TransferRights {
        key,
        campaign: cid("c1"),
        bucket: Bucket::Lifetime,
        to: rid("us-1"),
        amount: m(40_000),
    });
    let seq = h.l.chain().next_seq() - 1;
    assert_eq!(
        a.reply,
        Reply::Transferred {
            amount: m(40_000),
            log_seq: seq
        }
    );
    assert_eq!(h.available(&lifetime("c1")), m(60_000));
    let key = h.key();
    let a = h.run(Command::TransferRights {
        key,
        campaign: cid("c1"),
        bucket: Bucket::Lifetime,
        to: rid("us-1"),
        amount: m(60_001),
    });
    assert!(matches!(
        refused(&a.reply),
        Refusal::InsufficientRights { .. }
    ));
    let key = h.key();
    let a = h.run(Command::TransferRights {
        key,
        campaign: cid("c1"),
        bucket: Bucket::Lifetime,
        to: rid("eu-1"),
        amount: m(1),
    });
    assert!(matches!(refused(&a.reply), Refusal::Invalid { .. }));

    // us-1 hears of the transfer and gives 10,000 back.
    let ours = h.l.bucket(&lifetime("c1")).unwrap().counter.state().clone();
    let mut us = RegionCounter::new(rid("us-1"));
    us.merge(&rid("eu-1"), &ours).unwrap();
    us.transfer(&rid("eu-1"), m(10_000)).unwrap();
    let remote = vec![RemoteBucket {
        bucket: lifetime("c1"),
        rows: CounterRows::from(us.state()),
    }];
    let cmd = Command::MergeRemote {
        from: rid("us-1"),
        buckets: remote,
        campaigns: Vec::new(),
        remote_seq: 7,
        remote_head: [9; 32],
    };
    let a = h.run(cmd.clone());
    assert_eq!(
        a.reply,
        Reply::Merged {
            received: m(10_000),
            campaigns: 0,
            stale: false
        }
    );
    assert!(
        matches!(&a.entries[0].0.payload, Payload::RemoteMerged(r) if r.remote_seq == 7 && r.received.len() == 1)
    );
    assert_eq!(h.available(&lifetime("c1")), m(70_000));
    // The same state again: idempotent, nothing more received.
    assert_eq!(
        h.run(cmd.clone()).reply,
        Reply::Merged {
            received: Money::ZERO,
            campaigns: 0,
            stale: false
        }
    );
    // An older state from the same peer (a delayed message) changes nothing at all.
    let Command::MergeRemote { buckets, .. } = &cmd else {
        unreachable!()
    };
    let a = h.run(Command::MergeRemote {
        from: rid("us-1"),
        buckets: buckets.clone(),
        campaigns: Vec::new(),
        remote_seq: 6,
        remote_head: [8; 32],
    });
    assert_eq!(
        a.reply,
        Reply::Merged {
            received: Money::ZERO,
            campaigns: 0,
            stale: true
        }
    );
    assert!(a.entries.is_empty());
    assert_eq!(h.l.witnessed()[&rid("us-1")].seq, 7);

    // A state showing our own rows ahead of us (we lost data) is refused, and nothing changes.
    let mut forged = CounterState::from(&CounterRows::from(us.state()));
    let mut fake_us = RegionCounter::new(rid("eu-1"));
    fake_us.create(m(999_999)).unwrap();
    forged.join(fake_us.state());
    let before = h.l.bucket(&lifetime("c1")).unwrap().counter.clone();
    let remote = vec![RemoteBucket {
        bucket: lifetime("c1"),
        rows: CounterRows::from(&forged),
    }];
    let a = h.run(Command::MergeRemote {
        from: rid("us-1"),
        buckets: remote,
        campaigns: Vec::new(),
        remote_seq: 8,
        remote_head: [1; 32],
    });
    assert!(
        matches!(refused(&a.reply), Refusal::MergeRefused { .. }),
        "{a:?}"
    );
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().counter, before);
    assert!(a.entries.is_empty());
    h.check_reload();
}

/// What `from` pushes to its peers (as `region::state_of` puts it on the wire).
fn push(from: &H) -> Command {
    let l = &from.l;
    Command::MergeRemote {
        from: l.region().clone(),
        buckets: l
            .buckets()
            .map(|(k, b)| RemoteBucket {
                bucket: k.clone(),
                rows: CounterRows::from(b.counter.state()),
            })
            .collect(),
        campaigns: l
            .campaigns()
            .filter(|(_, c)| c.home == *l.region())
            .map(|(id, c)| RemoteCampaign {
                campaign: id.clone(),
                config: c.config.clone(),
                paused: c.paused,
                version: c.home_version,
            })
            .collect(),
        remote_seq: l.chain().next_seq(),
        remote_head: l.chain().head(),
    }
}

fn merged(a: &Applied) -> (Money, u32) {
    match &a.reply {
        Reply::Merged {
            received,
            campaigns,
            stale: false,
        } => (*received, *campaigns),
        other => panic!("not merged: {other:?}"),
    }
}

#[test]
fn a_campaign_is_created_once_at_home_and_its_rights_spread_by_transfer() {
    let params = Params {
        lease_min: m(100),
        ..Params::default()
    };
    let mut eu = H::in_region("eu-1", params.clone());
    let mut us = H::in_region("us-1", params);
    eu.campaign("c1", Some(50_000));
    eu.budget("c1", Bucket::Lifetime, 100_000);
    let today = Bucket::Day(jiff::civil::date(2026, 11, 1));
    let day = BucketKey {
        campaign: cid("c1"),
        bucket: today,
    };

    // Until the home's state arrives, the campaign is unknown elsewhere.
    assert!(matches!(
        refused(&us.grant("e1", "c1", 1_000)),
        Refusal::UnknownCampaign { .. }
    ));
    let a = us.run(push(&eu));
    assert_eq!(merged(&a).1, 1, "the campaign's settings are adopted");
    assert_eq!(us.l.campaign(&cid("c1")).unwrap().home, rid("eu-1"));
    // Known now, but no rights here yet: not the lifetime's, and not the day's, which only
    // the home creates.
    assert!(matches!(
        refused(&us.grant("e1", "c1", 1_000)),
        Refusal::NoRights { .. }
    ));
    assert!(us.l.bucket(&day).is_none());
    // Settings and budgets change only at home.
    for reply in [
        us.campaign("c1", Some(1)).reply,
        us.budget("c1", Bucket::Lifetime, 1),
        {
            let key = us.key();
            us.run(Command::Pause {
                key,
                campaign: cid("c1"),
            })
            .reply
        },
    ] {
        assert!(
            matches!(refused(&reply), Refusal::NotHome { home, .. } if *home == rid("eu-1")),
            "{reply:?}"
        );
    }

    // The home gives 30,000 of the lifetime and 20,000 of today, which it opens for that.
    let key = eu.key();
    let a = eu.run(Command::TransferRights {
        key,
        campaign: cid("c1"),
        bucket: Bucket::Lifetime,
        to: rid("us-1"),
        amount: m(30_000),
    });
    assert!(matches!(a.reply, Reply::Transferred { .. }));
    let key = eu.key();
    let a = eu.run(Command::TransferRights {
        key,
        campaign: cid("c1"),
        bucket: today,
        to: rid("us-1"),
        amount: m(20_000),
    });
    let kinds: Vec<&str> = a
        .entries
        .iter()
        .map(|(e, _)| e.payload.kind().name())
        .collect();
    assert_eq!(kinds, ["budget_set", "rights_transferred"]);
    let Reply::Transferred { log_seq, .. } = a.reply else {
        panic!("{:?}", a.reply)
    };
    assert_eq!(log_seq, a.entries[1].0.seq);
    assert_eq!(eu.available(&day), m(30_000));
    // A day far from the home's clock is not opened on request.
    let key = eu.key();
    let far = Bucket::Day(jiff::civil::date(2026, 11, 4));
    let a = eu.run(Command::TransferRights {
        key,
        campaign: cid("c1"),
        bucket: far,
        to: rid("us-1"),
        amount: m(1),
    });
    assert!(matches!(
        refused(&a.reply),
        Refusal::InsufficientRights { .. }
    ));

    // The transfers arrive with the home's next push.
    let a = us.run(push(&eu));
    assert_eq!(merged(&a), (m(50_000), 0));
    assert_eq!(us.available(&lifetime("c1")), m(30_000));
    assert_eq!(us.available(&day), m(20_000));
    let (lease, amount) = us.granted("e1", "c1", 50_000);
    assert!(
        amount <= m(20_000),
        "the day's rights bound the lease: {amount}"
    );
    us.report("e1", lease, vec![ev("a1", 2_000)]);

    // A new setting at home replaces the copy; an old one never does.
    let key = eu.key();
    eu.run(Command::Pause {
        key,
        campaign: cid("c1"),
    });
    let a = us.run(push(&eu));
    assert_eq!(merged(&a).1, 1);
    assert!(us.l.campaign(&cid("c1")).unwrap().paused);
    assert!(matches!(
        refused(&us.grant("e2", "c1", 1_000)),
        Refusal::Paused { .. }
    ));

    // The spend travels back: both regions see the same global picture.
    let a = eu.run(push(&us));
    assert_eq!(
        merged(&a),
        (Money::ZERO, 0),
        "us homes nothing and gave nothing"
    );
    for h in [&eu, &us] {
        let s = h.l.bucket(&lifetime("c1")).unwrap().counter.state();
        assert_eq!(s.settled(&rid("us-1")), 2_000);
        assert_eq!(s.transferred(&rid("eu-1"), &rid("us-1")), 30_000);
        assert!(s.total_settled() + s.total_burned() <= s.total_created());
        h.check_reload();
    }
    assert_eq!(eu.l.witnessed()[&rid("us-1")].seq, us.l.chain().next_seq());
}

#[test]
fn a_campaign_of_the_same_name_homed_elsewhere_is_not_overwritten() {
    let mut eu = H::new();
    let mut us = H::in_region("us-1", Params::default());
    eu.campaign("c1", None);
    us.campaign("c1", Some(7));
    let a = us.run(push(&eu));
    assert_eq!(merged(&a).1, 0);
    let c = us.l.campaign(&cid("c1")).unwrap();
    assert_eq!(
        (c.home.as_str(), c.config.daily_budget),
        ("us-1", Some(m(7)))
    );
    // A region never merges a state that claims to be its own.
    let mut own = push(&us);
    if let Command::MergeRemote { from, .. } = &mut own {
        *from = rid("us-1");
    }
    assert!(matches!(
        refused(&us.run(own).reply),
        Refusal::Invalid { .. }
    ));
}

/// One random step for the property test.
#[derive(Clone, Debug)]
enum Step {
    Budget {
        c: usize,
        budget: i64,
    },
    Grant {
        edge: usize,
        c: usize,
        want: i64,
    },
    Report {
        edge: usize,
        lease: u64,
        events: Vec<(u8, i64)>,
        /// Loss notices: bid numbers (as the auction names of `events`) and bid prices.
        losses: Vec<(u8, i64)>,
        /// Bid prices of charged bids held whole in doubt (some below their charges).
        held: Vec<(u8, i64)>,
    },
    Release {
        edge: usize,
        lease: u64,
        unreserved: i64,
        /// In-doubt parts the edge reports: waits (seconds, sorted and deduplicated) and amounts.
        parts: Vec<(u16, i64)>,
    },
    Reclaim {
        lease: u64,
    },
    Expire {
        lease: u64,
        /// Which of its parts (modulo their number), or every one.
        pick: Option<usize>,
    },
    Pause {
        c: usize,
        paused: bool,
    },
    /// The leader ends the log's open segment here.
    Seal,
    /// Edge `edge` checks in as process `incarnation`, covering `back` entries before now.
    CheckIn {
        edge: usize,
        incarnation: u64,
        back: u64,
    },
    Clock {
        hours: i64,
    },
    Replay,
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..2usize, 0..200_000i64).prop_map(|(c, budget)| Step::Budget { c, budget }),
        (0..3usize, 0..2usize, 1..60_000i64).prop_map(|(edge, c, want)| Step::Grant {
            edge,
            c,
            want
        }),
        (
            0..3usize,
            0..12u64,
            proptest::collection::vec((0..40u8, 0..9_000i64), 1..6),
            proptest::collection::vec((0..40u8, 0..9_000i64), 0..3),
            proptest::collection::vec((0..40u8, 0..12_000i64), 0..4),
        )
            .prop_map(|(edge, lease, events, losses, held)| Step::Report {
                edge,
                lease,
                events,
                losses,
                held,
            }),
        (
            0..3usize,
            0..12u64,
            prop_oneof![Just(i64::MAX), 0..60_000i64, -10..10i64],
            proptest::collection::vec((0..3_700u16, 1..20_000i64), 0..4),
        )
            .prop_map(|(edge, lease, unreserved, parts)| Step::Release {
                edge,
                lease,
                unreserved,
                parts
            }),
        (0..12u64).prop_map(|lease| Step::Reclaim { lease }),
        (0..12u64, proptest::option::of(0..4usize))
            .prop_map(|(lease, pick)| Step::Expire { lease, pick }),
        (0..2usize, any::<bool>()).prop_map(|(c, paused)| Step::Pause { c, paused }),
        Just(Step::Seal),
        (0..3usize, 1..4u64, 0..6u64).prop_map(|(edge, incarnation, back)| Step::CheckIn {
            edge,
            incarnation,
            back
        }),
        (1..30i64).prop_map(|hours| Step::Clock { hours }),
        Just(Step::Replay),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random sequences of commands never break an invariant (checked after every step by
    /// `H::run`); no event is settled twice; two replicas stay identical; and the log they
    /// write verifies.
    #[test]
    fn random_commands_keep_every_invariant(steps in proptest::collection::vec(arb_step(), 1..120)) {
        // Small retention, so that forgetting leases and requests happens often.
        let params = Params { lease_min: m(100), closed_leases_retained: 3, requests_retained: 20, ..Params::default() };
        let mut a = H::with(params.clone());
        let mut b = H::with(params);
        let mut log: Vec<(Entry, Hash)> = Vec::new();
        let mut last: Option<Command> = None;
        let mut commands = Vec::new();
        for c in ["c0", "c1"] {
            a.campaign(c, Some(50_000));
        }
        // The log from here on (the rules were recorded before).
        let start = a.l.chain().clone();
        for step in steps {
            let cmd = match step {
                Step::Budget { c, budget } => Command::SetBudget { key: a.key(), campaign: cid(&format!("c{c}")), bucket: Bucket::Lifetime, budget: m(budget) },
                Step::Grant { edge, c, want } => Command::GrantLease { key: a.key(), edge: eid(&format!("e{edge}")), campaign: cid(&format!("c{c}")), want: m(want) },
                Step::Report { edge, lease, events, losses, held } => Command::ReportSpend {
                    batch: a.batch(),
                    edge: eid(&format!("e{edge}")),
                    lease: LeaseId(lease),
                    // Bid numbers from 1 to 40, the exchange's auction ids from fewer names, so
                    // that two bids often share them (an exchange reusing its ids).
                    events: events.into_iter().map(|(bid, amount)| evb(u64::from(bid) + 1, &format!("x{}", bid % 7), amount)).collect(),
                    losses: losses.into_iter().map(|(bid, amount)| BidPrice { bid: u64::from(bid) + 1, amount: m(amount) }).collect(),
                    held: held.into_iter().map(|(bid, amount)| BidPrice { bid: u64::from(bid) + 1, amount: m(amount) }).collect(),
                },
                Step::Release { edge, lease, unreserved, mut parts } => {
                    parts.sort();
                    parts.dedup_by_key(|p| p.0);
                    let in_doubt = parts.into_iter().map(|(secs, amount)| part(u64::from(secs) * 1_000, amount)).collect();
                    Command::ReleaseLease { batch: a.batch(), edge: eid(&format!("e{edge}")), lease: LeaseId(lease), unreserved: m(unreserved), bids: 30, in_doubt }
                }
                Step::Reclaim { lease } => Command::ReclaimLeases { leases: vec![LeaseId(lease)] },
                Step::Expire { lease, pick } => {
                    let held = a.parts(LeaseId(lease));
                    let parts = match pick {
                        Some(i) if !held.is_empty() => vec![(LeaseId(lease), held[i % held.len()].wait_ms)],
                        Some(_) => vec![(LeaseId(lease), 60_000)],
                        None => held.iter().map(|p| (LeaseId(lease), p.wait_ms)).collect(),
                    };
                    Command::ExpireInDoubt { parts }
                }
                Step::Pause { c, paused } => {
                    let campaign = cid(&format!("c{c}"));
                    if paused { Command::Pause { key: a.key(), campaign } } else { Command::Resume { key: a.key(), campaign } }
                }
                Step::Seal => Command::SealSegment,
                Step::CheckIn { edge, incarnation, back } => Command::CheckIn {
                    edge: eid(&format!("e{edge}")),
                    incarnation,
                    covers: a.index.saturating_sub(back),
                },
                Step::Clock { hours } => {
                    a.time_us += hours * 3_600_000_000;
                    continue;
                }
                Step::Replay => match last.clone() {
                    Some(c) => c,
                    None => continue,
                },
            };
            let applied = a.run(cmd.clone());
            // Replica `a` restarts from its rows now and then; `b` never does.
            if commands.len() % 7 == 6 {
                a.l = Ledger::load(a.l.region.clone(), a.l.params.clone(), a.table.clone()).unwrap();
            }
            log.extend(applied.entries);
            last = Some(cmd.clone());
            commands.push((a.index, a.time_us, cmd));
        }
        // Every bid is settled at most once in the log's spend batches.
        let mut seen = std::collections::BTreeSet::new();
        for (e, _) in &log {
            if let Payload::SpendBatch(batch) = &e.payload {
                for ev in &batch.events {
                    prop_assert!(seen.insert((batch.lease, ev.bid)), "bid {}.{} settled twice", batch.lease, ev.bid);
                }
            }
        }
        // Per lease, the log adds up: granted = settled + returned + in doubt now + expired.
        let mut by_lease: BTreeMap<LeaseId, (i128, i128)> = BTreeMap::new();
        for (e, _) in &log {
            let (l, amount, used): (LeaseId, i128, i128) = match &e.payload {
                Payload::LeaseGranted(g) => (g.lease, i128::from(g.amount.micros()), 0),
                Payload::SpendBatch(b) => (b.lease, 0, b.events.iter().map(|e| i128::from(e.amount.micros())).sum()),
                Payload::LeaseReleased(r) => (r.lease, 0, i128::from(r.returned.micros())),
                Payload::LeaseReclaimed(r) => (r.lease, 0, i128::from(r.returned.micros())),
                Payload::InDoubtReturned(r) => (r.lease, 0, i128::from(r.returned.micros())),
                Payload::BidsLost(b) => (b.lease, 0, i128::from(b.returned.micros())),
                Payload::RestReturned(r) => (r.lease, 0, i128::from(r.returned.micros())),
                _ => continue,
            };
            let t = by_lease.entry(l).or_default();
            t.0 += amount;
            t.1 += used;
        }
        for (id, (granted, used)) in by_lease {
            if let Some(lease) = a.l.lease(id) {
                let open = if lease.state == LeaseState::Open { i128::from(sub(lease.amount, lease.spent).micros()) } else { 0 };
                let held = i128::from(lease.state.in_doubt().micros());
                prop_assert_eq!(granted, used + held + open, "lease {} does not add up in the log", id);
            } else {
                prop_assert!(used <= granted, "lease {} used {} of {}", id, used, granted);
            }
        }
        // Per bucket: settled + leased + in doubt + burned never exceed what was created.
        for (k, s) in a.l.buckets() {
            let st = s.counter.state();
            let me = a.l.region().clone();
            let used = i128::from(st.settled(&me)) + i128::from(st.burned(&me)) + i128::from(s.leased.micros()) + i128::from(s.in_doubt.micros());
            prop_assert!(used <= i128::from(st.created(&me)), "{k}: {used} used of {}", st.created(&me));
        }
        // A second replica applying the same commands at the same stamps ends identical.
        for c in ["c0", "c1"] {
            b.campaign(c, Some(50_000));
        }
        for (index, time_us, cmd) in &commands {
            b.index = index - 1;
            b.time_us = *time_us;
            b.run(cmd.clone());
        }
        prop_assert_eq!(a.l.chain(), b.l.chain());
        prop_assert_eq!(a.l.all_rows(), b.l.all_rows());
        // The rows written after each apply rebuild the same ledger.
        a.check_reload();
        // The log verifies with the auditor's verifier.
        if !log.is_empty() {
            let mut w = SegmentWriter::new(a.l.region(), start.next_seq(), start.head());
            for (e, h) in &log {
                prop_assert_eq!(w.push(e).unwrap(), *h);
            }
            let bytes = w.seal().unwrap();
            let mut v = Verifier::new();
            let name = shared::log::segment::segment_file_name(a.l.region(), start.next_seq());
            v.segment(&name, &bytes).unwrap();
            let summary = v.finish(Some(&a.l.chain().head())).unwrap();
            prop_assert_eq!(summary.entries, log.len() as u64);
        }
    }
}

#[test]
fn a_replica_restarted_from_its_rows_forgets_exactly_like_one_that_was_not() {
    // Forgetting a lease drops its request keys while they still wait in the eviction queue,
    // possibly behind live keys. Sweep the limits so that every arrangement occurs.
    for closed_leases_retained in 1..=3 {
        for requests_retained in 2..=12 {
            let params = Params {
                lease_min: m(10),
                closed_leases_retained,
                requests_retained,
                ..Params::default()
            };
            let mut a = H::with(params.clone());
            let mut b = H::with(params);
            for h in [&mut a, &mut b] {
                h.campaign("c1", None);
                h.budget("c1", Bucket::Lifetime, 1_000_000);
            }
            for round in 0..8 {
                for h in [&mut a, &mut b] {
                    let (lease, _) = h.granted("e1", "c1", 100);
                    h.report("e1", lease, vec![ev(&format!("r{round}"), 10)]);
                    if round % 3 != 1 {
                        h.campaign("c1", None);
                    }
                    h.release("e1", lease);
                }
                // `a` restarts from its rows after every round; `b` runs on.
                a.l =
                    Ledger::load(a.l.region.clone(), a.l.params.clone(), a.table.clone()).unwrap();
                assert_eq!(
                    a.l.all_rows(),
                    b.l.all_rows(),
                    "leases {closed_leases_retained}, requests {requests_retained}, round {round}"
                );
            }
        }
    }
}

/// One step of several regions' ledgers in the multi-region property test.
#[derive(Clone, Debug)]
enum RegionStep {
    /// Region `r`'s edge asks for a lease.
    Grant {
        r: usize,
        want: i64,
    },
    /// Spends part of one of region `r`'s open leases (`pick` modulo their count).
    Spend {
        r: usize,
        pick: usize,
        amount: i64,
    },
    /// Releases one of region `r`'s leases.
    Release {
        r: usize,
        pick: usize,
    },
    /// Region `r`'s leader reclaims, then later expires, one of its leases.
    Reclaim {
        r: usize,
        pick: usize,
    },
    Expire {
        r: usize,
        pick: usize,
    },
    /// Region `r` gives rights of the lifetime bucket (`day` false) or today's to `to`.
    Transfer {
        r: usize,
        to: usize,
        day: bool,
        amount: i64,
    },
    /// The home raises the lifetime budget.
    Raise {
        amount: i64,
    },
    /// Region `r` pushes its state to `to` (it travels in the network).
    Send {
        r: usize,
        to: usize,
    },
    /// The network delivers a state in flight, maybe keeping a copy to deliver again.
    Deliver {
        pick: usize,
        keep: bool,
    },
}

fn arb_region_step() -> impl Strategy<Value = RegionStep> {
    let r = 0..3usize;
    prop_oneof![
        3 => (r.clone(), 1..50_000i64).prop_map(|(r, want)| RegionStep::Grant { r, want }),
        3 => (r.clone(), any::<usize>(), 1..20_000i64)
            .prop_map(|(r, pick, amount)| RegionStep::Spend { r, pick, amount }),
        1 => (r.clone(), any::<usize>()).prop_map(|(r, pick)| RegionStep::Release { r, pick }),
        1 => (r.clone(), any::<usize>()).prop_map(|(r, pick)| RegionStep::Reclaim { r, pick }),
        1 => (r.clone(), any::<usize>()).prop_map(|(r, pick)| RegionStep::Expire { r, pick }),
        2 => (r.clone(), r.clone(), any::<bool>(), 1..60_000i64)
            .prop_map(|(r, to, day, amount)| RegionStep::Transfer { r, to, day, amount }),
        1 => (1..50_000i64).prop_map(|amount| RegionStep::Raise { amount }),
        3 => (r.clone(), r).prop_map(|(r, to)| RegionStep::Send { r, to }),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(pick, keep)| RegionStep::Deliver { pick, keep }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Three regions' ledgers (one home, where the campaign and its budgets are made) under
    /// random grants, spends, releases, reclaims, transfers, budget raises and pushes that the
    /// network delays, reorders, duplicates and drops: every ledger keeps its invariants, no
    /// honest push is refused, and per bucket, over all regions, what is settled, leased and
    /// in doubt never exceeds the budget (I2 globally), while each region's own settled spend
    /// is what every other region ends up seeing.
    #[test]
    fn regions_in_any_order_never_spend_more_than_the_budget(
        steps in proptest::collection::vec(arb_region_step(), 1..150)
    ) {
        let names = ["eu-1", "us-1", "ap-1"];
        let mut hs: Vec<H> = names
            .iter()
            .map(|n| H::in_region(n, Params { lease_min: m(100), ..Params::default() }))
            .collect();
        hs[0].campaign("c1", Some(80_000));
        let mut budget = 100_000i64;
        hs[0].budget("c1", Bucket::Lifetime, budget);
        let today = Bucket::Day(jiff::civil::date(2026, 11, 1));
        let mut leases: Vec<Vec<(LeaseId, Money)>> = vec![Vec::new(); 3];
        let mut in_flight: Vec<(usize, Command)> = Vec::new();
        let mut n = 0u64;
        for step in steps {
            match step {
                RegionStep::Grant { r, want } => {
                    if let Reply::LeaseGranted { lease, amount, .. } = hs[r].grant("e1", "c1", want) {
                        leases[r].push((lease, amount));
                    }
                }
                RegionStep::Spend { r, pick, amount } => {
                    if !leases[r].is_empty() {
                        let (lease, _) = leases[r][pick % leases[r].len()];
                        n += 1;
                        // An event over the lease is an anomaly, not spend: the ledger decides.
                        hs[r].report("e1", lease, vec![ev(&format!("x{n}"), amount)]);
                    }
                }
                RegionStep::Release { r, pick } => {
                    if !leases[r].is_empty() {
                        let i = pick % leases[r].len();
                        let (lease, _) = leases[r].swap_remove(i);
                        hs[r].release("e1", lease);
                    }
                }
                RegionStep::Reclaim { r, pick } | RegionStep::Expire { r, pick } => {
                    if !leases[r].is_empty() {
                        let (lease, _) = leases[r][pick % leases[r].len()];
                        if matches!(step, RegionStep::Reclaim { .. }) {
                            hs[r].run(Command::ReclaimLeases { leases: vec![lease] });
                        } else {
                            hs[r].expire_all(lease);
                        }
                    }
                }
                RegionStep::Transfer { r, to, day, amount } => {
                    let key = hs[r].key();
                    let a = hs[r].run(Command::TransferRights {
                        key,
                        campaign: cid("c1"),
                        bucket: if day { today } else { Bucket::Lifetime },
                        to: rid(names[to]),
                        amount: m(amount),
                    });
                    if let Reply::Refused(why) = &a.reply {
                        prop_assert!(
                            matches!(why, Refusal::InsufficientRights { .. } | Refusal::UnknownCampaign { .. })
                                || (r == to && matches!(why, Refusal::Invalid { .. })),
                            "{why:?}"
                        );
                    }
                }
                RegionStep::Raise { amount } => {
                    budget += amount;
                    hs[0].budget("c1", Bucket::Lifetime, budget);
                }
                RegionStep::Send { r, to } => {
                    if r != to {
                        in_flight.push((to, push(&hs[r])));
                    }
                }
                RegionStep::Deliver { pick, keep } => {
                    if !in_flight.is_empty() {
                        let i = pick % in_flight.len();
                        let (to, cmd) = if keep { in_flight[i].clone() } else { in_flight.swap_remove(i) };
                        let a = hs[to].run(cmd);
                        prop_assert!(matches!(a.reply, Reply::Merged { .. }), "an honest push was refused: {:?}", a.reply);
                    }
                }
            }
            // Globally, per bucket: the truth is each region's own rows.
            for bucket in [Bucket::Lifetime, today] {
                let key = BucketKey { campaign: cid("c1"), bucket };
                let mut truth = CounterState::new();
                let mut held = 0i128;
                for h in &hs {
                    if let Some(b) = h.l.bucket(&key) {
                        truth.join(b.counter.state());
                        held += i128::from(b.leased.micros()) + i128::from(b.in_doubt.micros());
                    }
                }
                let cap = truth.total_created() as i128 - truth.total_burned() as i128;
                let used = truth.total_settled() as i128 + held;
                prop_assert!(used <= cap, "{key}: settled + leased + in doubt {used} > rights {cap}");
                let limit = if bucket == Bucket::Lifetime { i128::from(budget) } else { 80_000 };
                prop_assert!(cap <= limit, "{key}: {cap} rights created for a budget of {limit}");
            }
        }
        // (A region that applied nothing has written no rows yet.)
        for h in hs.iter().filter(|h| h.index > 0) {
            h.check_reload();
        }
    }
}

#[test]
fn evenly_paced_days_spent_ahead_of_the_clock_are_counted() {
    let mut h = H::new();
    for (c, pacing) in [
        ("even", shared::targeting::Pacing::Even),
        ("asap", shared::targeting::Pacing::Asap),
    ] {
        let key = h.key();
        let config = CampaignConfig {
            zone: "America/New_York".into(),
            bid_cpm: m(2_000_000),
            daily_budget: Some(m(100_000)),
            targeting: Box::new(shared::targeting::Targeting {
                pacing,
                ..Default::default()
            }),
        };
        h.run(Command::UpsertCampaign {
            key,
            campaign: cid(c),
            config,
        });
        h.budget(c, Bucket::Lifetime, 1_000_000);
    }
    // 1 November 2026 lasts 25 hours in New York (summer time ends); noon UTC is 8 hours
    // into it: 32,000 of the day's 100,000, plus a tenth of it, may be spent before a bucket is
    // ahead of its pace.
    let ahead = |h: &H| crate::metrics::ahead_of_pace(&h.l, NOON_NOV_1);
    let mut n = 0u64;
    let mut spend = |h: &mut H, c: &str, mut total: i64| {
        while total > 0 {
            let (lease, amount) = h.granted("e1", c, 100_000);
            let x = amount.micros().min(total);
            n += 1;
            h.report("e1", lease, vec![evb(1, &format!("{c}-{n}"), x)]);
            total -= x;
        }
    };
    for c in ["even", "asap"] {
        spend(&mut h, c, 42_000);
    }
    assert_eq!(ahead(&h), 0, "42,000 is within the pace");
    for c in ["even", "asap"] {
        spend(&mut h, c, 1);
    }
    assert_eq!(
        ahead(&h),
        1,
        "a micro more is ahead; only the evenly paced one counts"
    );
    // Later in the day the same spend is behind the pace again.
    assert_eq!(
        crate::metrics::ahead_of_pace(&h.l, NOON_NOV_1 + 3 * 3_600_000_000),
        0
    );
}

#[test]
fn a_day_that_is_over_in_the_campaigns_zone_keeps_its_budget() {
    let mut h = H::new();
    h.campaign("c1", None);
    // Noon UTC on 1 November is the morning of 1 November in New York.
    let day = |d: &str| Bucket::Day(d.parse().unwrap());
    let r = h.budget("c1", day("2026-10-31"), 50_000);
    assert!(
        matches!(refused(&r), Refusal::Invalid { field, problem } if field == "day"
            && problem.contains("2026-10-31 is over in America/New_York (today is 2026-11-01")),
        "{r:?}"
    );
    assert!(
        h.l.bucket(&BucketKey {
            campaign: cid("c1"),
            bucket: day("2026-10-31")
        })
        .is_none()
    );
    assert_eq!(
        h.budget("c1", day("2026-11-01"), 50_000),
        Reply::BudgetSet { budget: m(50_000) }
    );
    assert_eq!(
        h.budget("c1", day("2026-12-25"), 70_000),
        Reply::BudgetSet { budget: m(70_000) }
    );
}

#[test]
fn a_closed_lease_keeps_its_marks_compactly_and_repeats_stay_duplicates() {
    let mut h = H::new();
    h.campaign("c1", None);
    h.budget("c1", Bucket::Lifetime, 100_000);
    let (lease, _) = h.granted("e1", "c1", 10_000);
    let lost = |bid| BidPrice { bid, amount: m(50) };
    h.report_losses(
        "e1",
        lease,
        vec![evb(1, "a1", 100), evb(2, "a2", 200)],
        vec![lost(3)],
    );
    assert!(h.l.bid_marks() >= 3);
    h.release("e1", lease);
    // Closed: the exact marks are gone, the lease's row carries them compactly.
    assert_eq!(h.l.bid_marks(), 0);
    assert_eq!(h.l.closed_marks().0, 3);
    assert!(
        !h.table.keys().any(|k| k.starts_with(b"e/")),
        "a closed lease's lists of marks are deleted"
    );
    h.check_reload();
    let records = h.l.chain().next_seq();
    // Repeated bills of charged bids, at their price or another: duplicates, nothing logged.
    let a = h.report("e1", lease, vec![evb(1, "a1", 100), evb(2, "a2", 999)]);
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 0,
                duplicates: 2,
                anomalies: 0,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
    assert_eq!(h.l.chain().next_seq(), records, "a duplicate is not logged");
    // A lost bid billed after the close is a conflict, once; a new bid is late spend, once.
    let a = h.report("e1", lease, vec![evb(3, "a3", 50), evb(4, "a4", 70)]);
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 0,
                anomalies: 2,
                conflicts: 1,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
    let records = h.l.chain().next_seq();
    let a = h.report_losses(
        "e1",
        lease,
        vec![evb(3, "a3", 50), evb(4, "a4", 70)],
        vec![lost(1)],
    );
    assert!(
        matches!(
            a.reply,
            Reply::SpendSettled {
                settled: 0,
                duplicates: 2,
                anomalies: 0,
                conflicts: 1,
                ..
            }
        ),
        "{:?}",
        a.reply
    );
    assert_eq!(h.l.chain().next_seq(), records);
    // A bid number the edge never made (it said 100 at the release) is kept exactly.
    let a = h.report("e1", lease, vec![evb(1 << 40, "far", 5)]);
    assert!(matches!(a.reply, Reply::SpendSettled { anomalies: 1, .. }));
    let a = h.report("e1", lease, vec![evb(1 << 40, "far", 5)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            duplicates: 1,
            anomalies: 0,
            ..
        }
    ));
    assert_eq!(h.l.closed_marks().0, 5);
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().settled(), m(300));
    h.check_reload();
}

#[test]
fn a_day_over_with_nothing_held_retires_and_nothing_brings_it_back() {
    let mut h = H::new();
    h.campaign("c1", Some(50_000));
    h.budget("c1", Bucket::Lifetime, 1_000_000);
    let day = BucketKey {
        campaign: cid("c1"),
        bucket: Bucket::Day(jiff::civil::date(2026, 11, 1)),
    };
    let retire = |h: &mut H| {
        let a = h.run(Command::RetireDays {
            days: vec![day.clone()],
        });
        match a.reply {
            Reply::DaysRetired { retired } => (retired, a.entries),
            other => panic!("{other:?}"),
        }
    };
    let (lease, _) = h.granted("e1", "c1", 10_000);
    h.report("e1", lease, vec![evb(1, "a1", 3_000)]);
    // Not over yet: kept.
    assert_eq!(retire(&mut h).0, 0);
    // The next day, past every window, but a lease still holds money of it: kept.
    h.time_us = NOON_NOV_1 + 24 * 3_600 * 1_000_000;
    assert!(h.l.retirable_days(h.time_us, 10).is_empty());
    assert_eq!(retire(&mut h).0, 0);
    h.release("e1", lease);
    assert_eq!(h.l.retirable_days(h.time_us, 10), vec![day.clone()]);
    let (n, entries) = retire(&mut h);
    assert_eq!(n, 1);
    match &entries[..] {
        [(e, _)] => assert_eq!(
            e.payload,
            Payload::DayRetired(DayRetired {
                campaign: cid("c1"),
                bucket: day.bucket,
                budget: m(50_000),
                settled_here: m(3_000),
                settled_all: m(3_000),
                lapsed: m(47_000),
            })
        ),
        other => panic!("{other:?}"),
    }
    assert!(h.l.bucket(&day).is_none() && h.l.is_retired(&day));
    assert!(
        !h.table
            .keys()
            .any(|k| k.starts_with(format!("b/c1/{}", day.bucket).as_bytes())),
        "its row is deleted"
    );
    h.check_reload();
    let settled = h.l.bucket(&lifetime("c1")).unwrap().settled();
    // A late bill of the closed lease: recorded, not settled, and nothing breaks.
    let a = h.report("e1", lease, vec![evb(2, "a2", 100)]);
    assert!(matches!(
        a.reply,
        Reply::SpendSettled {
            settled: 0,
            anomalies: 1,
            ..
        }
    ));
    // A leader whose clock is a day behind cannot open the day again.
    h.time_us = NOON_NOV_1;
    let key = h.key();
    let a = h.run(Command::GrantLease {
        key,
        edge: eid("e1"),
        campaign: cid("c1"),
        want: m(1_000),
    });
    assert!(
        matches!(refused(&a.reply), Refusal::Invalid { field, .. } if field == "time"),
        "{:?}",
        a.reply
    );
    // Nor a peer that asks for its rights, nor one that pushes it.
    let key = h.key();
    let a = h.run(Command::TransferRights {
        key,
        campaign: cid("c1"),
        bucket: day.bucket,
        to: rid("us-1"),
        amount: m(1_000),
    });
    assert!(matches!(
        refused(&a.reply),
        Refusal::InsufficientRights { .. }
    ));
    let mut us = RegionCounter::new(rid("us-1"));
    us.create(m(7_000)).unwrap();
    let a = h.run(Command::MergeRemote {
        from: rid("us-1"),
        buckets: vec![RemoteBucket {
            bucket: day.clone(),
            rows: CounterRows::from(us.state()),
        }],
        campaigns: Vec::new(),
        remote_seq: 3,
        remote_head: [4; 32],
    });
    assert!(matches!(a.reply, Reply::Merged { .. }), "{:?}", a.reply);
    assert!(h.l.bucket(&day).is_none(), "a peer's push brought it back");
    // The next day is a new one.
    h.time_us = NOON_NOV_1 + 24 * 3_600 * 1_000_000;
    let (l2, _) = h.granted("e1", "c1", 1_000);
    assert!(h.l.lease(l2).is_some());
    assert_eq!(h.l.bucket(&lifetime("c1")).unwrap().settled(), settled);
    h.check_reload();
}
