//! The checks of a run and what it writes: `results.json` (per invariant: held or violated,
//! with the evidence) and `report.md` with SVG plots (spend against budget per campaign, bid
//! latency; fault windows shaded).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use shared::proto::v1 as pb;

use super::exchange::{CAMPAIGNS, Tally};
use super::faults::Injected;
use super::{Ledger, Options, Outcome, date_in, facts};
use crate::check::budget::{Escrow, micros};
use crate::check::progress::{Spend, percent};
use crate::check::{self, chains};
use crate::history::{Call, Completed, OpType};
use crate::nemesis::Schedule;

/// Everything a run recorded.
pub struct Inputs<'a> {
    /// The options.
    pub opts: &'a Options,
    /// The run's folder.
    pub dir: &'a Path,
    /// The schedule.
    pub schedule: &'a Schedule,
    /// What the nemesis did.
    pub injected: &'a [Injected],
    /// The history, paired.
    pub completed: &'a [Completed],
    /// The exchange's record.
    pub tally: &'a Tally,
    /// Lifetime budgets the harness set (the largest asked for).
    pub budgets: &'a BTreeMap<String, i64>,
    /// Budget raises: (µs, campaign, new budget).
    pub budget_events: &'a [(u64, String, i64)],
    /// Balance samples.
    pub escrow: &'a [Escrow],
    /// Balances when the last fault healed (summed over regions).
    pub heal: &'a BTreeMap<String, pb::Balance>,
    /// When that was.
    pub heal_at: Duration,
    /// Balances at the end (summed over regions).
    pub end: &'a BTreeMap<String, pb::Balance>,
    /// Each region's balances when the last fault healed.
    pub heal_regions: &'a [(String, BTreeMap<String, pb::Balance>)],
    /// Each region's balances at the end.
    pub end_regions: &'a [(String, BTreeMap<String, pb::Balance>)],
    /// Rounds of every region's counters after the load (I5; empty with one region).
    pub rounds: &'a [crate::check::converge::Observation],
    /// When the load (and its notices) ended, µs since the start.
    pub load_done_us: u64,
    /// The regions, home first.
    pub regions: &'a [String],
    /// The replicas' logs.
    pub ledger: &'a Ledger,
    /// Every process's clock offset.
    pub base_offset_us: i64,
    /// When the day of the campaign with a daily budget ends, into the load.
    pub cross_at: Duration,
    /// The harness's wall clock when the load started.
    pub load_start_wall_us: i64,
    /// Leases as the edges showed them after releasing them (`/debug/leases`), by
    /// `(region, lease)`.
    pub edge_leases: &'a BTreeMap<(String, u64), crate::check::leases::EdgeLease>,
}

/// What is left to do after the processes stopped.
pub struct Pending {
    replicas: Vec<(String, chains::Replica)>,
    body: String,
    buckets: serde_json::Value,
    exchange: serde_json::Value,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

/// Every coordinator's log in `nodes`: (node name, text), by name.
fn coordinator_logs(nodes: &Path) -> Vec<(String, String)> {
    let mut logs: Vec<(String, String)> = std::fs::read_dir(nodes)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let node = name.strip_suffix(".log")?.to_string();
            node.contains("coordinator")
                .then(|| Some((node, std::fs::read_to_string(e.path()).ok()?)))
                .flatten()
        })
        .collect();
    logs.sort();
    logs
}

/// The first panic in a process's log: its `panicked at` line and the message after it.
pub fn first_panic(log: &str) -> Option<String> {
    let mut lines = log.lines();
    let at = lines.find(|l| l.contains("panicked at"))?;
    let message = lines.next().unwrap_or("").trim();
    Some(format!("panicked: {} {message}", at.trim()))
}

/// How the last raise of one budget was spent: ms after the raise at which the bills reached
/// 99 % and 99.9 % of the budget, and of the last bill (`None`: never).
#[derive(Debug, PartialEq, Eq)]
pub struct SpendTimes {
    pub to_99_ms: Option<u64>,
    pub to_99_9_ms: Option<u64>,
    pub last_bill_ms: Option<u64>,
}

/// Spend times of a budget raised to `budget` at `raised_us`, from every bill `(µs, micros)`
/// of its campaign over the run (bills before the raise count towards the total).
pub fn spend_times(bills: &[(u64, i64)], raised_us: u64, budget: i64) -> SpendTimes {
    let mut bills = bills.to_vec();
    bills.sort_unstable();
    let after = |t: u64| t.saturating_sub(raised_us) / 1000;
    let (mut sum, mut to_99, mut to_999) = (0i64, None, None);
    for &(t, m) in &bills {
        sum += m;
        // sum ≥ 99 % of budget, in integers.
        if to_99.is_none() && sum.saturating_mul(100) >= budget.saturating_mul(99) {
            to_99 = Some(after(t));
        }
        if to_999.is_none() && sum.saturating_mul(1000) >= budget.saturating_mul(999) {
            to_999 = Some(after(t));
        }
    }
    SpendTimes {
        to_99_ms: to_99,
        to_99_9_ms: to_999,
        last_bill_ms: bills.last().map(|(t, _)| after(*t)),
    }
}

/// Where one region's part of a bucket's rights sat at one moment, from the balance samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Free to lease: rights − settled − leased − in doubt.
    pub available: i64,
    /// Under open leases (reserved by bids, or still in an edge's reservoir).
    pub leased: i64,
    /// Held for notices until deadlines pass.
    pub in_doubt: i64,
}

/// The tail of a bucket after `from_us`: every `step_us`, until `to_us`, each region's
/// [`Held`] as its latest sample at or before that moment showed it (regions not sampled yet
/// are left out). This is where the money not yet spent waited: free in a region, in edges'
/// leases, or in doubt until deadlines.
pub fn tail(
    samples: &[Escrow],
    bucket: &str,
    from_us: u64,
    to_us: u64,
    step_us: u64,
) -> Vec<(u64, BTreeMap<String, Held>)> {
    let mut of_bucket: Vec<&Escrow> = samples.iter().filter(|s| s.bucket == bucket).collect();
    of_bucket.sort_by_key(|s| s.at_us);
    let mut out = Vec::new();
    let mut latest: BTreeMap<String, Held> = BTreeMap::new();
    let mut next = 0;
    let mut t = from_us;
    while t <= to_us && step_us > 0 {
        while next < of_bucket.len() && of_bucket[next].at_us <= t {
            let s = of_bucket[next];
            latest.insert(
                s.region.clone(),
                Held {
                    available: s.rights - s.settled - s.leased - s.in_doubt,
                    leased: s.leased,
                    in_doubt: s.in_doubt,
                },
            );
            next += 1;
        }
        out.push((t, latest.clone()));
        t += step_us;
    }
    out
}

/// Seconds between the rows of a tail table.
const TAIL_STEP_S: u64 = 10;

/// For each lifetime budget's last raise: where what was not yet billed waited, every
/// [`TAIL_STEP_S`] from the raise to the end of the load (a table in the report, and the rows for
/// `results.json`).
fn tails_after_raises(
    i: &Inputs,
    times: &serde_json::Value,
    body: &mut String,
) -> serde_json::Value {
    let billed = i.tally.made.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = serde_json::Map::new();
    let mut wrote_intro = false;
    for (bucket, t) in times.as_object().into_iter().flatten() {
        let (Some(raised_ms), Some(budget)) =
            (t["raised_at_ms"].as_u64(), t["budget_micros"].as_i64())
        else {
            continue;
        };
        let campaign = bucket.trim_end_matches("/lifetime");
        let mut bills: Vec<(u64, i64)> = billed
            .values()
            .filter(|b| b.campaign == campaign)
            .map(|b| (b.at_us, b.amount))
            .collect();
        bills.sort_unstable();
        let rows = tail(
            i.escrow,
            bucket,
            raised_ms * 1_000,
            i.load_done_us,
            TAIL_STEP_S * 1_000_000,
        );
        if rows.is_empty() {
            continue;
        }
        if !std::mem::replace(&mut wrote_intro, true) {
            let _ = writeln!(
                body,
                "\nWhere the money not yet billed waited after each last raise, every {TAIL_STEP_S} s \
                 (each region: free to lease / in edges' leases / in doubt until deadlines, from \
                 the balance samples):"
            );
        }
        let _ = writeln!(
            body,
            "\n{bucket}, budget {}:\n\n| s after the raise | not billed | {} |\n|---:|---:|{}",
            micros(budget),
            i.regions.join(" | "),
            "---:|".repeat(i.regions.len())
        );
        let mut json_rows = Vec::new();
        for (at, held) in rows {
            let billed_by_then: i64 = bills
                .iter()
                .take_while(|(t, _)| *t <= at)
                .map(|(_, m)| m)
                .sum();
            let cells: Vec<String> = i
                .regions
                .iter()
                .map(|r| {
                    held.get(r).map_or("—".to_string(), |h| {
                        format!(
                            "{} / {} / {}",
                            micros(h.available),
                            micros(h.leased),
                            micros(h.in_doubt)
                        )
                    })
                })
                .collect();
            let _ = writeln!(
                body,
                "| {} | {} | {} |",
                (at / 1_000 - raised_ms) / 1_000,
                micros(budget - billed_by_then),
                cells.join(" | ")
            );
            json_rows.push(serde_json::json!({
                "at_ms": at / 1_000,
                "not_billed": budget - billed_by_then,
                "regions": held
                    .iter()
                    .map(|(r, h)| (r.clone(), serde_json::json!({
                        "available": h.available, "leased": h.leased, "in_doubt": h.in_doubt
                    })))
                    .collect::<serde_json::Map<_, _>>(),
            }));
        }
        out.insert(bucket.clone(), serde_json::Value::Array(json_rows));
    }
    serde_json::Value::Object(out)
}

/// Every campaign's lifetime spend times, keyed by bucket, for `results.json`.
fn lifetime_spend_times(i: &Inputs) -> serde_json::Value {
    let billed = i.tally.made.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = serde_json::Map::new();
    for c in &CAMPAIGNS {
        let Some((raised_us, budget)) = i
            .budget_events
            .iter()
            .filter(|(_, name, _)| name == c.name)
            .map(|(t, _, b)| (*t, *b))
            .max_by_key(|(t, _)| *t)
        else {
            continue;
        };
        let bills: Vec<(u64, i64)> = billed
            .values()
            .filter(|b| b.campaign == c.name)
            .map(|b| (b.at_us, b.amount))
            .collect();
        let t = spend_times(&bills, raised_us, budget);
        out.insert(
            format!("{}/lifetime", c.name),
            serde_json::json!({
                "budget_micros": budget,
                "raised_at_ms": raised_us / 1000,
                "to_99_ms": t.to_99_ms,
                "to_99_9_ms": t.to_99_9_ms,
                "last_bill_ms": t.last_bill_ms,
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// The bucket that limits `c`'s spend at wall time `wall_us` (the harness's skewed wall
/// clock): its lifetime, or for a campaign with a daily budget, that day's.
pub fn binding_bucket(c: &super::exchange::Campaign, wall_us: i64) -> Result<String> {
    Ok(match c.daily_micros {
        Some(_) => format!("{}/day:{}", c.name, date_in(c.zone, wall_us)?),
        None => format!("{}/lifetime", c.name),
    })
}

/// Runs every checker but the offline half of I4, and draws the plots.
pub fn check_all(i: &Inputs) -> Result<(Outcome, Pending)> {
    let multi = i.regions.len() > 1;
    // Each region's facts, from its longest replica. Keyed as the history names regions: by
    // name with several, by "" with one.
    let key = |r: &str| if multi { r.to_string() } else { String::new() };
    let mut by_region: BTreeMap<String, crate::run::Facts> = BTreeMap::new();
    for region in i.regions {
        let longest = i
            .ledger
            .replicas
            .iter()
            .zip(&i.ledger.regions)
            .filter(|(_, r)| *r == region)
            .map(|(rep, _)| rep)
            .max_by_key(|r| r.1.len())
            .map(|r| r.1.as_slice())
            .unwrap_or_default();
        by_region.insert(key(region), facts(region, longest));
    }
    let lease_buckets = |region: &str, lease: u64| -> Option<Vec<String>> {
        by_region
            .get(region)
            .and_then(|f| f.leases.get(&lease))
            .map(|l| l.1.clone())
    };
    // Budgets per bucket: lifetime as the harness set them; a day's as its campaign's daily
    // budget, for every day the ledger opened.
    let mut budgets = i.budgets.clone();
    for (campaign, buckets) in by_region.values().flat_map(|f| f.leases.values()) {
        let daily = CAMPAIGNS
            .iter()
            .find(|c| c.name == campaign)
            .and_then(|c| c.daily_micros);
        for b in buckets {
            if let (Some(d), true) = (daily, b.contains("/day:")) {
                budgets.insert(b.clone(), d);
            }
        }
    }
    // I1: what the exchange billed, acknowledged or not, per bucket the lease debited.
    let billed: Vec<(String, i64)> = i
        .tally
        .made
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .flat_map(|b| {
            let buckets = lease_buckets(&b.region, b.lease)
                .unwrap_or_else(|| vec![format!("{}/lifetime", b.campaign)]);
            buckets.into_iter().map(move |k| (k, b.amount))
        })
        .collect();
    let i1 = check::budget::billed_within_budget(&budgets, &billed);
    // I2: every sample, plus both snapshots of every region.
    let mut samples = i.escrow.to_vec();
    for (at, snaps) in [(i.heal_at, i.heal_regions), (Duration::MAX, i.end_regions)] {
        for (region, name, b) in snaps
            .iter()
            .flat_map(|(r, s)| s.iter().map(move |(n, b)| (r, n, b)))
        {
            samples.push(Escrow {
                at_us: u64::try_from(at.as_micros()).unwrap_or(u64::MAX),
                region: region.clone(),
                bucket: name.clone(),
                rights: b.rights_micros,
                settled: b.settled_micros,
                leased: b.leased_micros,
                in_doubt: b.in_doubt_micros,
            });
        }
    }
    let i2 = check::budget::escrow_within_rights(&budgets, &samples);
    let events: Vec<check::notices::LedgerEvent> = by_region
        .values()
        .flat_map(|f| f.events.iter().cloned())
        .collect();
    let i3 = check::notices::check(i.completed, &events);
    // I6: buckets whose demand after the heal was at least twice what was left of them.
    let heal_s = usize::try_from(i.heal_at.as_secs()).unwrap_or(usize::MAX);
    let end_wall =
        i.load_start_wall_us + i64::try_from(i.load_done_us).unwrap_or(0) + i.base_offset_us;
    let mut spends = Vec::new();
    for c in &CAMPAIGNS {
        // A campaign with a day budget is held by whichever of its day and its lifetime has
        // less left at the end: once the harness stops raising a lifetime budget, the lifetime
        // can run out with the day's budget unspent (a short disk-full run: the day at 73 %,
        // the lifetime at 99.7 %), and the day could not have been spent further.
        let lifetime = format!("{}/lifetime", c.name);
        let Some((bucket, end)) = [binding_bucket(c, end_wall)?, lifetime]
            .into_iter()
            .filter_map(|b| i.end.get(&b).map(|e| (b, e)))
            .min_by_key(|(_, e)| e.budget_micros - e.settled_micros)
        else {
            continue;
        };
        let at_heal = i.heal.get(&bucket).map_or(0, |b| b.settled_micros);
        let budget = end.budget_micros;
        let demand = i.tally.demand_since(c.name, heal_s);
        spends.push(Spend {
            bucket,
            budget,
            at_heal,
            at_end: end.settled_micros,
            demand_exceeds: demand >= 2 * (budget - at_heal).max(1),
            unit: c.bid_micros,
        });
    }
    let (i6, utilization) = check::progress::check(&spends, i.opts.min_utilization_ppm);
    // I7 per region: each region's log orders its own writes and reads.
    let i7 = check::combine(
        "I7",
        by_region
            .iter()
            .map(|(region, f)| {
                let mine: Vec<Completed> = i
                    .completed
                    .iter()
                    .filter(|c| crate::history::region_of(c) == Some(region.as_str()))
                    .cloned()
                    .collect();
                (region.clone(), check::linear::check(&f.timelines, &mine))
            })
            .collect(),
    );
    let replicas: Vec<(String, chains::Replica)> = i
        .ledger
        .replicas
        .iter()
        .zip(&i.ledger.regions)
        .map(|((name, entries, verified), region)| {
            (
                region.clone(),
                chains::Replica {
                    node: name.clone(),
                    hashes: entries.iter().map(|(_, h)| *h).collect(),
                    verified: verified.clone(),
                },
            )
        })
        .collect();
    let i5 = multi.then(|| {
        check::converge::check(
            i.regions,
            i.rounds,
            i.load_done_us,
            u64::try_from(super::CONVERGE_BOUND.as_micros()).unwrap_or(u64::MAX),
        )
    });
    // The plots and the report's body.
    let spend_svg = spend_plot(i);
    std::fs::write(i.dir.join("spend.svg"), spend_svg)?;
    std::fs::write(i.dir.join("latency.svg"), latency_plot(i))?;
    let mut body = String::new();
    let t = i.tally;
    use std::sync::atomic::Ordering::Relaxed;
    let _ = writeln!(
        body,
        "## Load\n\n{} requests ({} reusing an earlier auction's id, {} replayed byte for \
         byte), {} bids, {} wins ({} never billed), {} loss notices, {} charging notice \
         deliveries ({} abandoned at their bid's deadline and the late acceptance), {} requests unanswered. {} \
         impressions had an `exp` past the region's maximum; {} of them were bid on (must be 0). \
         Demand exceeds budgets by design: budgets are small, and raised by a step each time \
         one runs out (at most every {} s) while faults run.\n",
        t.requests.load(Relaxed),
        t.reused_ids.load(Relaxed),
        t.replays.load(Relaxed),
        t.bids.load(Relaxed),
        t.wins.load(Relaxed),
        t.unbilled_wins.load(Relaxed),
        t.losses.load(Relaxed),
        t.deliveries.load(Relaxed),
        t.abandoned.load(Relaxed),
        t.unanswered.load(Relaxed),
        t.exp_too_long.load(Relaxed),
        t.bids_past_max_exp.load(Relaxed),
        super::RAISE_GAP.as_secs()
    );
    let (billed_bids, sharing) = {
        let billed = t.billed.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_event: BTreeMap<&str, u64> = BTreeMap::new();
        for b in billed.values() {
            *by_event.entry(b.event.as_str()).or_default() += 1;
        }
        (
            billed.len(),
            by_event.values().filter(|n| **n > 1).sum::<u64>(),
        )
    };
    // How long each budget's last raise took to spend (the report's table and results.json).
    let times = lifetime_spend_times(i);
    // Bills made that no edge acknowledged: the exchange charged them all the same.
    let (made, unacked, unacked_micros) = {
        let made = t.made.lock().unwrap_or_else(|p| p.into_inner());
        let acked = t.billed.lock().unwrap_or_else(|p| p.into_inner());
        let un: Vec<&super::exchange::Billed> = made
            .values()
            .filter(|b| !acked.contains_key(&b.bid))
            .collect();
        (
            made.len(),
            un.len(),
            un.iter().map(|b| b.amount).sum::<i64>(),
        )
    };
    let _ = writeln!(
        body,
        "The exchange billed {made} impressions; {unacked} of those bills ({}) were never \
         acknowledged, and count against the budget all the same (I1).\n",
        micros(unacked_micros)
    );
    // Budgets that ran out (each raise after the first budget follows one), and how many of
    // those ends came while a fault was in force.
    let ends: Vec<u64> = i
        .budget_events
        .iter()
        .filter(|(t, _, _)| *t > 0)
        .map(|(t, _, _)| *t / 1000)
        .collect();
    let ends_in_faults = ends
        .iter()
        .filter(|t| {
            i.schedule
                .windows
                .iter()
                .any(|w| w.start_ms <= **t && **t <= w.end_ms + 1_000)
        })
        .count();
    let _ = writeln!(
        body,
        "Budgets ran out {} times ({ends_in_faults} of them while a fault was in force) and were \
         raised each time.\n",
        ends.len()
    );
    let exchange = serde_json::json!({
        "budget_ends": ends.len(),
        "budget_ends_in_faults": ends_in_faults,
        "bills_made": made,
        "bills_unacknowledged": unacked,
        "bills_unacknowledged_micros": unacked_micros,
        "requests": t.requests.load(Relaxed),
        "reused_ids": t.reused_ids.load(Relaxed),
        "replays": t.replays.load(Relaxed),
        "bids": t.bids.load(Relaxed),
        "wins": t.wins.load(Relaxed),
        "unbilled_wins": t.unbilled_wins.load(Relaxed),
        "losses": t.losses.load(Relaxed),
        "deliveries": t.deliveries.load(Relaxed),
        "abandoned": t.abandoned.load(Relaxed),
        "unanswered": t.unanswered.load(Relaxed),
        "exp_too_long": t.exp_too_long.load(Relaxed),
        "bids_past_max_exp": t.bids_past_max_exp.load(Relaxed),
        "billed_bids": billed_bids,
        "billed_bids_sharing_exchange_ids": sharing,
        "spend_times": times.clone(),
    });
    let billed_by = t.billed_by_campaign();
    let _ = writeln!(
        body,
        "| bucket | budget | exchange billed | ledger settled | utilization |\n|---|---:|---:|---:|---:|"
    );
    let mut billed_per_bucket: BTreeMap<&str, i64> = BTreeMap::new();
    for (k, m) in &billed {
        *billed_per_bucket.entry(k.as_str()).or_default() += m;
    }
    for (name, b) in i.end {
        let _ = writeln!(
            body,
            "| {name} | {} | {} | {} | {} |",
            micros(budgets.get(name).copied().unwrap_or(b.budget_micros)),
            micros(billed_per_bucket.get(name.as_str()).copied().unwrap_or(0)),
            micros(b.settled_micros),
            percent(check::progress::utilization_ppm(
                b.settled_micros,
                b.budget_micros
            )),
        );
    }
    let _ = writeln!(
        body,
        "\nBilled per campaign: {}.\n\nThe day of `{}` ({}) ends {:?} into the load; every \
         process's clock runs {} s ahead of the machine's so that it does.\n",
        billed_by
            .iter()
            .map(|(c, m)| format!("{c} {}", micros(*m)))
            .collect::<Vec<_>>()
            .join(", "),
        CAMPAIGNS[1].name,
        CAMPAIGNS[1].zone,
        i.cross_at,
        i.base_offset_us / 1_000_000
    );
    let _ = writeln!(
        body,
        "After each lifetime budget's last raise (ms): when the exchange had billed 99 % and \
         99.9 % of it, and its last bill. Money held by bids that never got a notice comes back \
         only at their deadlines; this is how long the last of a budget took.\n\n\
         | bucket | budget | raised at (s) | 99 % | 99.9 % | last bill |\n|---|---:|---:|---:|---:|---:|"
    );
    let ms = |v: &serde_json::Value| v.as_u64().map_or("—".to_string(), |m| m.to_string());
    for (bucket, t) in times.as_object().into_iter().flatten() {
        let _ = writeln!(
            body,
            "| {bucket} | {} | {} | {} | {} | {} |",
            micros(t["budget_micros"].as_i64().unwrap_or(0)),
            t["raised_at_ms"].as_u64().unwrap_or(0) / 1000,
            ms(&t["to_99_ms"]),
            ms(&t["to_99_9_ms"]),
            ms(&t["last_bill_ms"]),
        );
    }
    let tails = tails_after_raises(i, &times, &mut body);
    let _ = writeln!(
        body,
        "\n![spend against budget](spend.svg)\n\n![bid latency](latency.svg)\n"
    );
    let snapshot = |s: &BTreeMap<String, pb::Balance>| -> serde_json::Value {
        s.iter()
            .map(|(k, b)| {
                (
                    k.clone(),
                    serde_json::json!({"budget": b.budget_micros, "rights": b.rights_micros,
                        "settled": b.settled_micros, "leased": b.leased_micros,
                        "in_doubt": b.in_doubt_micros, "available": b.available_micros}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let buckets =
        serde_json::json!({"at_heal": snapshot(i.heal), "at_end": snapshot(i.end), "tails": tails});
    // I8: the reclaim rule, from every coordinator's own log.
    let i8 = check::reclaim::check(&coordinator_logs(&i.dir.join("nodes")));
    // I9: money conserved at every entry of every replica's log.
    let logs: Vec<(String, Vec<shared::log::Entry>)> = i
        .ledger
        .replicas
        .iter()
        .map(|(node, entries, _)| {
            (
                node.clone(),
                entries.iter().map(|(e, _)| e.clone()).collect(),
            )
        })
        .collect();
    let i9 = check::conservation::check(&logs);
    drop(logs);
    // I10: bids and bills within their leases, as the exchange and the edges saw them.
    let i10 = {
        let mut inputs = check::leases::Inputs::default();
        for (region, f) in &by_region {
            for (lease, amount) in &f.granted {
                inputs.granted.insert((region.clone(), *lease), *amount);
            }
            for (lease, index) in &f.closed_at {
                inputs.closed_at.insert((region.clone(), *lease), *index);
            }
        }
        for b in t.made.lock().unwrap_or_else(|p| p.into_inner()).values() {
            *inputs
                .billed
                .entry((b.region.clone(), b.lease))
                .or_default() += b.amount;
        }
        for (k, (_, last)) in t
            .bids_by_lease
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            inputs.last_bid_sent_us.insert(k.clone(), *last);
        }
        for c in i.completed {
            if let (
                OpType::Ok,
                Some(Call::Read {
                    region,
                    index: Some(ix),
                    ..
                }),
            ) = (c.outcome, &c.completed)
                && let Some(done) = c.complete_us
            {
                inputs.reads.push((region.clone(), *ix, done));
            }
        }
        inputs.edges = i.edge_leases.clone();
        check::leases::check(&inputs)
    };
    let outcome = Outcome {
        dir: i.dir.to_path_buf(),
        passed: false,
        verdicts: {
            let mut v = vec![i1, i2, i3];
            if let Some((i5, _)) = &i5 {
                v.push(i5.clone());
            }
            v.extend([i6, i7, i8, i9, i10]);
            v
        },
        faults: i.injected.to_vec(),
        utilization_ppm: utilization,
        converged_ms: i5.as_ref().and_then(|(_, t)| *t).map(|us| us / 1000),
        crashed: Vec::new(),
        unread: Vec::new(),
    };
    Ok((
        outcome,
        Pending {
            replicas,
            body,
            buckets,
            exchange,
        },
    ))
}

/// Adds I4 (live chains and the offline verification of every data directory), decides the
/// outcome, and writes `results.json` and `report.md`.
pub fn finish(
    outcome: &mut Outcome,
    pending: Pending,
    offline: &[(String, bool, String)],
    opts: &Options,
    schedule: &Schedule,
) -> Result<PathBuf> {
    let mut replicas = pending.replicas;
    for (_, r) in &mut replicas {
        if let Some((_, ok, out)) = offline.iter().find(|(n, _, _)| *n == r.node)
            && !ok
            && r.verified.is_ok()
        {
            r.verified = Err(format!(
                "budgetctl audit verify on its data directory: {out}"
            ));
        }
    }
    // I4 per region: a region's replicas hold one chain; regions' chains differ.
    let mut regions: Vec<String> = replicas.iter().map(|(r, _)| r.clone()).collect();
    regions.dedup();
    let i4 = check::combine(
        "I4",
        regions
            .iter()
            .map(|region| {
                let mine: Vec<chains::Replica> = replicas
                    .iter()
                    .filter(|(r, _)| r == region)
                    .map(|(_, rep)| rep.clone())
                    .collect();
                (region.clone(), chains::check(&mine))
            })
            .collect(),
    );
    outcome.verdicts.insert(3, i4);
    // A baseline (`--nemesis none`) passes on its invariants alone; it says so everywhere.
    let baseline = opts.kinds.is_empty();
    let faults_ok =
        (baseline || !outcome.faults.is_empty()) && outcome.faults.iter().all(|f| f.observed);
    outcome.passed = faults_ok
        && outcome.crashed.is_empty()
        && outcome.unread.is_empty()
        && outcome.verdicts.iter().all(|v| v.held);
    let results = serde_json::json!({
        "seed": opts.seed,
        "time_limit_secs": opts.time_limit.as_secs(),
        "nemesis": opts.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
        "rate": opts.rate,
        "planted_bug": opts.planted_bug,
        "passed": outcome.passed,
        "baseline": baseline,
        "regions": opts.regions,
        "faults_injected": outcome.faults.iter().filter(|f| f.observed).count(),
        "faults_scheduled": schedule.windows.len(),
        "utilization_ppm": outcome.utilization_ppm,
        "converged_ms": outcome.converged_ms,
        "crashed": outcome.crashed,
        "unread": outcome.unread,
        "invariants": outcome.verdicts,
        "faults": outcome.faults,
        "buckets_micros": pending.buckets,
        "exchange": pending.exchange,
        "data_directories": offline.iter().map(|(n, ok, out)| serde_json::json!({"node": n, "verified": ok, "output": out})).collect::<Vec<_>>(),
    });
    std::fs::write(
        outcome.dir.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Run seed {} — {}\n\n`jepsen run{} --seed {} --time-limit {} --nemesis {}{}`\n",
        opts.seed,
        match (outcome.passed, baseline) {
            (true, false) => "PASSED",
            (false, false) => "FAILED",
            (true, true) => "BASELINE, no faults: every invariant held",
            (false, true) => "BASELINE, no faults: FAILED",
        },
        if opts.regions > 1 {
            format!(" --regions {}", opts.regions)
        } else {
            String::new()
        },
        opts.seed,
        opts.time_limit.as_secs(),
        if baseline {
            "none".to_string()
        } else {
            opts.kinds
                .iter()
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(",")
        },
        opts.planted_bug
            .as_ref()
            .map(|b| format!(" --planted-bug {b}"))
            .unwrap_or_default()
    );
    // A process that stopped by itself comes first: what follows is its consequence.
    if !outcome.crashed.is_empty() {
        let _ = writeln!(
            md,
            "## Processes that stopped by themselves\n\nRead this first: the checks below \
             see what these stops caused.\n"
        );
        for name in &outcome.crashed {
            let log = outcome.dir.join("nodes").join(format!("{name}.log"));
            let why = std::fs::read_to_string(&log)
                .ok()
                .and_then(|text| first_panic(&text))
                .unwrap_or_else(|| "no panic in its log".to_string());
            let _ = writeln!(md, "- **{name}**: {}", why.replace('|', "\\|"));
        }
        let _ = writeln!(md);
    }
    let _ = writeln!(
        md,
        "## Invariants\n\n| invariant | held | checked | violations | first evidence |\n|---|---|---:|---:|---|"
    );
    for v in &outcome.verdicts {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            v.invariant,
            if v.held { "yes" } else { "**NO**" },
            v.checked,
            v.violations,
            v.evidence
                .first()
                .map_or("", String::as_str)
                .replace('|', "\\|")
        );
    }
    if !outcome.unread.is_empty() {
        let _ = writeln!(
            md,
            "\n**Regions whose balances could not be read** (their buckets are missing from the checks above): {}.",
            outcome.unread.join("; ")
        );
    }
    if let Some(u) = outcome.utilization_ppm {
        let _ = writeln!(
            md,
            "\nUtilization (lowest bucket whose demand exceeded its budget): **{}**.",
            percent(u)
        );
    }
    if let Some(ms) = outcome.converged_ms {
        let _ = writeln!(
            md,
            "\nEvery region's counters were equal for good {}.{:03} s after the load ended (I5).",
            ms / 1000,
            ms % 1000
        );
    }
    let _ = writeln!(
        md,
        "\n## Faults\n\n| from (s) | to (s) | fault | target | reached it | proof |\n|---:|---:|---|---|---|---|"
    );
    for f in &outcome.faults {
        let _ = writeln!(
            md,
            "| {:.1} | {:.1} | {} | {} | {} | {} |",
            f.window.start_ms as f64 / 1000.0,
            f.window.end_ms as f64 / 1000.0,
            f.window.fault.kind(),
            f.window.fault.target(),
            if f.observed { "yes" } else { "**NO**" },
            f.proof.replace('|', "\\|")
        );
    }
    let _ = writeln!(md, "\n{}", pending.body);
    let _ = writeln!(
        md,
        "## Files\n\n`history.jsonl` (every operation), `schedule.json`, `results.json`, \
         `nodes/*.log` (each process's log), `nodes/coordinator-*/` (data directories), \
         `pki/` (the run's CA and certificates: every gRPC link was mutual TLS).\n"
    );
    let path = outcome.dir.join("report.md");
    std::fs::write(&path, md)?;
    Ok(path)
}

/// Fault windows as shaded rectangles over a plot `x0..x0+w` wide for `secs` seconds.
fn shade(i: &Inputs, x0: f64, w: f64, secs: f64, y: f64, h: f64) -> String {
    let mut s = String::new();
    for f in i.injected {
        let a = x0 + w * (f.window.start_ms as f64 / 1000.0) / secs;
        let b = x0 + w * (f.window.end_ms as f64 / 1000.0) / secs;
        let _ = write!(
            s,
            r##"<rect x="{a:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="#f4a261" fill-opacity="0.25"><title>{} {}</title></rect>"##,
            (b - a).max(1.0),
            f.window.fault.kind(),
            f.window.fault.target()
        );
    }
    s
}

fn polyline(points: &[(f64, f64)], color: &str) -> String {
    let p: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    format!(
        r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
        p.join(" ")
    )
}

/// Per campaign: what the exchange billed (cumulative) against the lifetime budget over time.
/// Amounts are plotted from integer micros; only pixel positions are fractional.
fn spend_plot(i: &Inputs) -> String {
    let secs = i.opts.time_limit.as_secs_f64().max(1.0) + 15.0;
    let (w, ph, x0) = (760.0, 150.0, 60.0);
    let height = ph * CAMPAIGNS.len() as f64 + 40.0;
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="840" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let billed = i.tally.made.lock().unwrap_or_else(|p| p.into_inner());
    for (k, c) in CAMPAIGNS.iter().enumerate() {
        let y0 = 20.0 + ph * k as f64;
        let mut bills: Vec<(u64, i64)> = billed
            .values()
            .filter(|b| b.campaign == c.name)
            .map(|b| (b.at_us, b.amount))
            .collect();
        bills.sort_unstable();
        let steps: Vec<(u64, i64)> = i
            .budget_events
            .iter()
            .filter(|e| e.1 == c.name)
            .map(|e| (e.0, e.2))
            .collect();
        let top = steps
            .iter()
            .map(|s| s.1)
            .chain([bills.iter().map(|b| b.1).sum::<i64>()])
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let x = |us: u64| x0 + w * (us as f64 / 1e6) / secs;
        let y = |m: i64| y0 + ph - 25.0 - (ph - 35.0) * (m as f64 / top);
        s.push_str(&shade(i, x0, w, secs, y0, ph - 25.0));
        let _ = write!(
            s,
            r##"<text x="{x0}" y="{:.1}">{} — billed by the exchange (blue) against the lifetime budget (red), top {}</text><line x1="{x0}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999"/>"##,
            y0 + 8.0,
            c.name,
            micros(top as i64),
            y(0),
            x0 + w,
            y(0)
        );
        let mut budget_pts = Vec::new();
        let mut last = 0i64;
        for (at, m) in &steps {
            budget_pts.push((x(*at), y(last)));
            budget_pts.push((x(*at), y(*m)));
            last = *m;
        }
        budget_pts.push((x0 + w, y(last)));
        s.push_str(&polyline(&budget_pts, "#d62828"));
        let mut sum = 0i64;
        let mut pts = vec![(x(0), y(0))];
        for (at, m) in &bills {
            sum += m;
            pts.push((x(*at), y(sum)));
        }
        s.push_str(&polyline(&pts, "#1d4e89"));
    }
    let _ = write!(
        s,
        r#"<text x="{x0}" y="{:.1}">seconds since the load started; shaded: fault windows</text></svg>"#,
        height - 5.0
    );
    s
}

/// Per second: the median and the 99th percentile of the bid latency the exchange saw.
fn latency_plot(i: &Inputs) -> String {
    let lat = i.tally.latencies.lock().unwrap_or_else(|p| p.into_inner());
    let mut per: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (ms, us) in lat.iter() {
        per.entry(ms / 1000).or_default().push(*us);
    }
    let secs = i.opts.time_limit.as_secs_f64().max(1.0) + 15.0;
    let (w, h, x0, y0) = (760.0, 220.0, 60.0, 20.0);
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for (s, v) in &mut per {
        v.sort_unstable();
        let q = |f: usize| v[(v.len() - 1) * f / 100];
        p50.push((*s, q(50)));
        p99.push((*s, q(99)));
    }
    let top = p99.iter().map(|p| p.1).max().unwrap_or(1).max(1) as f64;
    let x = |s: u32| x0 + w * f64::from(s) / secs;
    let y = |us: u32| y0 + h - h * f64::from(us) / top;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="840" height="{}" font-family="sans-serif" font-size="11">"#,
        h + 50.0
    );
    out.push_str(&shade(i, x0, w, secs, y0, h));
    out.push_str(&polyline(
        &p50.iter().map(|p| (x(p.0), y(p.1))).collect::<Vec<_>>(),
        "#1d4e89",
    ));
    out.push_str(&polyline(
        &p99.iter().map(|p| (x(p.0), y(p.1))).collect::<Vec<_>>(),
        "#d62828",
    ));
    let _ = write!(
        out,
        r##"<line x1="{x0}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999"/><text x="{x0}" y="12">bid latency seen by the exchange per second: median (blue), p99 (red); top {:.1} ms; shaded: fault windows</text></svg>"##,
        y0 + h,
        x0 + w,
        y0 + h,
        top / 1000.0
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polylines_hold_every_point() {
        let p = polyline(&[(1.0, 2.0), (3.5, 4.25)], "red");
        assert!(p.contains("1.0,2.0 3.5,4.2"), "{p}");
    }

    #[test]
    fn a_crashed_process_is_explained_by_its_first_panic() {
        let log = "INFO start\nthread 'tokio-rt-worker' (12) panicked at coordinator/src/ledger/mod.rs:9:5:\nrelease returns more than held\nnote: run with RUST_BACKTRACE\nthread 'x' panicked at b.rs:1:1:\nsecond\n";
        let why = first_panic(log).unwrap();
        assert!(
            why.contains("ledger/mod.rs:9:5") && why.ends_with("release returns more than held"),
            "{why}"
        );
        assert_eq!(first_panic("INFO fine\n"), None);
    }

    #[test]
    fn a_tail_shows_each_regions_latest_sample_at_every_step() {
        let e = |at_us, region: &str, settled, leased, in_doubt| Escrow {
            at_us,
            region: region.to_string(),
            bucket: "west/lifetime".to_string(),
            rights: 1_000,
            settled,
            leased,
            in_doubt,
        };
        let samples = [
            e(4_000_000, "eu-1", 100, 50, 0),
            e(12_000_000, "eu-1", 700, 0, 250),
            e(15_000_000, "us-1", 900, 0, 0),
            e(18_000_000, "eu-1", 950, 0, 30),
            Escrow {
                bucket: "north/lifetime".to_string(),
                ..e(9_000_000, "eu-1", 0, 0, 0)
            },
        ];
        let rows = tail(
            &samples,
            "west/lifetime",
            10_000_000,
            30_000_000,
            10_000_000,
        );
        let at: Vec<u64> = rows.iter().map(|(t, _)| *t).collect();
        assert_eq!(at, [10_000_000, 20_000_000, 30_000_000]);
        // At 10 s only eu-1's sample of 4 s is known: 850 free, 50 leased.
        assert_eq!(rows[0].1.len(), 1);
        assert_eq!(
            rows[0].1["eu-1"],
            Held {
                available: 850,
                leased: 50,
                in_doubt: 0
            }
        );
        // At 20 s: eu-1's sample of 18 s and us-1's of 15 s; north's sample is not west's.
        assert_eq!(
            rows[1].1["eu-1"],
            Held {
                available: 20,
                leased: 0,
                in_doubt: 30
            }
        );
        assert_eq!(rows[1].1["us-1"].available, 100);
        assert_eq!(rows[2].1, rows[1].1);
        assert!(tail(&samples, "west/lifetime", 10, 5, 1).is_empty());
    }

    #[test]
    fn spend_times_count_from_the_raise_and_every_bill_before_it() {
        // 600 billed before the raise at 10 s; the raise to 1,000 is spent by bills at 11 s
        // (990: 99 %), 14 s (999: 99.9 %) and 20 s (1,000), given out of order.
        let bills = [
            (20_000_000, 1),
            (5_000_000, 600),
            (14_000_000, 9),
            (11_000_000, 390),
        ];
        let t = spend_times(&bills, 10_000_000, 1_000);
        assert_eq!(
            t,
            SpendTimes {
                to_99_ms: Some(1_000),
                to_99_9_ms: Some(4_000),
                last_bill_ms: Some(10_000),
            }
        );
        // Short of 99.9 %: that time is unknown, not the last bill's.
        let t = spend_times(&bills[1..3], 10_000_000, 1_000);
        assert_eq!((t.to_99_ms, t.to_99_9_ms), (None, None));
        assert_eq!(spend_times(&[], 0, 1).last_bill_ms, None);
    }
}
