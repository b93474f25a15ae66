//! I5: after the faults heal (and the load stops), every region's copy of every bucket's
//! bounded counter becomes the same, within a stated time.
//!
//! The harness polls every region's leader in rounds (`budgetctl regions`' view: each bucket's
//! counter rows as that region holds them). The states are equal in a round when, for every
//! bucket any region knows, every region holds the same rows (a bucket a region does not know
//! counts as all rows zero). The regions have converged at the first round from which every
//! later round is equal (rights may still move for a moment after the load: a transfer
//! asked for before it stopped), and that must come within the bound; if the last rounds
//! still differ, they never converged.
//!
//! A day bucket a region has retired (its day over, its final figures in that region's log as
//! a `day_retired` entry, I9's to check) is no longer live there: that region's view of it is
//! left out of the comparison, and the regions that still hold it must agree among themselves.
//! A region that merely lacks a bucket is not excused: its rows count as zero.

use std::collections::{BTreeMap, BTreeSet};

use super::Verdict;

/// One region's rows of one bucket, as polled in one round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The poll round (all regions are polled once per round).
    pub round: u64,
    /// Microseconds since the run started, when the round ended.
    pub at_us: u64,
    /// The region that answered.
    pub region: String,
    /// `CAMPAIGN/BUCKET`.
    pub bucket: String,
    /// Row name (`created[eu-1]`, `transferred[eu-1->us-1]`, …) → micros; zero rows may be
    /// left out.
    pub rows: BTreeMap<String, u64>,
    /// Set when this is not a bucket's rows but a retirement mark: `bucket` is then a campaign,
    /// whose day buckets through this date the region has retired.
    pub retired_through: Option<jiff::civil::Date>,
}

/// Whether `bucket` (`CAMPAIGN/day:DATE`) is a day retired by `retired` (campaign → date).
fn is_retired(retired: Option<&BTreeMap<&str, jiff::civil::Date>>, bucket: &str) -> bool {
    let Some((campaign, name)) = bucket.split_once('/') else {
        return false;
    };
    match (retired.and_then(|r| r.get(campaign)), name.parse()) {
        (Some(through), Ok(shared::Bucket::Day(day))) => day <= *through,
        _ => false,
    }
}

/// Bucket → row → micros, as one region holds them.
type Buckets<'a> = BTreeMap<&'a str, BTreeMap<&'a str, u64>>;

/// What I5 found: the verdict, and the time from `from_us` to the first round in which every
/// region held the same state (None: never).
pub fn check(
    regions: &[String],
    observations: &[Observation],
    from_us: u64,
    bound_us: u64,
) -> (Verdict, Option<u64>) {
    // round → (end time, region → bucket → rows without zeros)
    let mut rounds: BTreeMap<u64, (u64, BTreeMap<&str, Buckets<'_>>)> = BTreeMap::new();
    // round → region → campaign → the last day it retired
    let mut retired: BTreeMap<u64, BTreeMap<&str, BTreeMap<&str, jiff::civil::Date>>> =
        BTreeMap::new();
    for o in observations.iter().filter(|o| o.at_us >= from_us) {
        let r = rounds.entry(o.round).or_default();
        r.0 = r.0.max(o.at_us);
        if let Some(d) = o.retired_through {
            // The region answered, whatever else it holds.
            r.1.entry(o.region.as_str()).or_default();
            retired
                .entry(o.round)
                .or_default()
                .entry(o.region.as_str())
                .or_default()
                .insert(o.bucket.as_str(), d);
            continue;
        }
        let rows = o
            .rows
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        r.1.entry(o.region.as_str())
            .or_default()
            .insert(o.bucket.as_str(), rows);
    }
    let mut violations = Vec::new();
    let mut converged_at: Option<u64> = None;
    let mut buckets_checked: BTreeSet<&str> = BTreeSet::new();
    let mut last_difference = None;
    for (round, (at, by_region)) in &rounds {
        // A round in which some region did not answer says nothing either way.
        if regions.iter().any(|r| !by_region.contains_key(r.as_str())) {
            continue;
        }
        let buckets: BTreeSet<&str> = by_region.values().flat_map(|b| b.keys().copied()).collect();
        buckets_checked.extend(&buckets);
        let empty = BTreeMap::new();
        let retired_here = retired.get(round);
        let difference = buckets.iter().find_map(|b| {
            // The regions for which the bucket is still live.
            let live: Vec<&str> = regions
                .iter()
                .map(String::as_str)
                .filter(|r| {
                    // A day retired out of order leaves an earlier one live until it retires
                    // too: a bucket the region still lists is live there.
                    by_region[r].contains_key(b)
                        || !is_retired(retired_here.and_then(|x| x.get(r)), b)
                })
                .collect();
            let (&first, rest) = live.split_first()?;
            let want = by_region[first].get(b).unwrap_or(&empty);
            rest.iter().find_map(|&r| {
                let got = by_region[r].get(b).unwrap_or(&empty);
                (got != want).then(|| {
                    let row = want
                        .keys()
                        .chain(got.keys())
                        .find(|k| want.get(*k) != got.get(*k))
                        .copied()
                        .unwrap_or("?");
                    format!(
                        "{b}: {first} holds {row} = {}, {r} holds {} (round {round})",
                        want.get(row).copied().unwrap_or(0),
                        got.get(row).copied().unwrap_or(0)
                    )
                })
            })
        });
        match difference {
            None if converged_at.is_none() => converged_at = Some(*at),
            None => {}
            Some(d) => {
                converged_at = None;
                last_difference = Some(d);
            }
        }
    }
    let took = converged_at.map(|c| c.saturating_sub(from_us));
    match took {
        None => violations.push(format!(
            "never converged in {} rounds: {}",
            rounds.len(),
            last_difference.unwrap_or_else(|| "no round heard from every region".into())
        )),
        Some(t) if t > bound_us => violations.push(format!(
            "converged after {:.1} s, beyond the bound of {:.1} s",
            t as f64 / 1e6,
            bound_us as f64 / 1e6
        )),
        Some(_) => {}
    }
    (
        Verdict::new("I5", buckets_checked.len() as u64, violations),
        took,
    )
}

/// One round's observations of one region from its `RegionStatus` answer: per bucket, the
/// counter rows it holds (created, settled and burned per region, and every transfer row).
pub fn observations(
    round: u64,
    at_us: u64,
    reply: &shared::proto::v1::RegionStatusReply,
) -> Vec<Observation> {
    reply
        .buckets
        .iter()
        .map(|b| {
            let mut rows = BTreeMap::new();
            for f in &b.regions {
                for (name, v) in [
                    ("created", f.created_micros),
                    ("settled", f.settled_micros),
                    ("burned", f.burned_micros),
                ] {
                    rows.insert(
                        format!("{name}[{}]", f.region),
                        u64::try_from(v).unwrap_or(0),
                    );
                }
            }
            for t in &b.transferred {
                rows.insert(
                    format!("transferred[{}->{}]", t.from_region, t.to_region),
                    t.micros,
                );
            }
            let bucket = b.bucket.as_ref().map_or(String::new(), |k| {
                let name = k
                    .bucket
                    .as_ref()
                    .and_then(|x| shared::Bucket::try_from(x).ok())
                    .map_or("?".to_string(), |x| x.to_string());
                format!("{}/{name}", k.campaign)
            });
            Observation {
                round,
                at_us,
                region: reply.region.clone(),
                bucket,
                rows,
                retired_through: None,
            }
        })
        .chain(reply.retired.iter().filter_map(|r| {
            Some(Observation {
                round,
                at_us,
                region: reply.region.clone(),
                bucket: r.campaign.clone(),
                rows: BTreeMap::new(),
                retired_through: Some(r.retired_through.parse().ok()?),
            })
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<String> {
        vec!["eu-1".into(), "us-1".into()]
    }

    fn obs(round: u64, region: &str, rows: &[(&str, u64)]) -> Observation {
        Observation {
            round,
            at_us: 1_000_000 * round,
            region: region.into(),
            bucket: "c/lifetime".into(),
            rows: rows.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            retired_through: None,
        }
    }

    fn day(round: u64, region: &str, date: &str, rows: &[(&str, u64)]) -> Observation {
        Observation {
            bucket: format!("c/day:{date}"),
            ..obs(round, region, rows)
        }
    }

    fn retired(round: u64, region: &str, through: &str) -> Observation {
        Observation {
            bucket: "c".into(),
            retired_through: Some(through.parse().unwrap()),
            ..obs(round, region, &[])
        }
    }

    #[test]
    fn a_day_retired_in_one_region_is_compared_among_the_others_only() {
        let three: Vec<String> = vec!["eu-1".into(), "us-1".into(), "ap-1".into()];
        // eu-1 retired 2026-12-06; us-1 and ap-1 still hold it, and agree: held.
        let mut o = vec![
            retired(1, "eu-1", "2026-12-06"),
            day(
                1,
                "us-1",
                "2026-12-06",
                &[("created[eu-1]", 100), ("settled[us-1]", 7)],
            ),
            day(
                1,
                "ap-1",
                "2026-12-06",
                &[("created[eu-1]", 100), ("settled[us-1]", 7)],
            ),
            // The next day is live everywhere and equal.
            day(1, "eu-1", "2026-12-07", &[("created[eu-1]", 50)]),
            day(1, "us-1", "2026-12-07", &[("created[eu-1]", 50)]),
            day(1, "ap-1", "2026-12-07", &[("created[eu-1]", 50)]),
        ];
        let (v, _) = check(&three, &o, 0, 5_000_000);
        assert!(v.held, "{v:?}");
        // The live ones must still agree among themselves.
        o[2] = day(1, "ap-1", "2026-12-06", &[("created[eu-1]", 100)]);
        let (v, _) = check(&three, &o, 0, 5_000_000);
        assert!(!v.held, "{v:?}");
        assert!(v.evidence[0].contains("settled[us-1]"), "{v:?}");
        // A later day the retirement does not cover is not excused where it is missing.
        o[2] = day(
            1,
            "ap-1",
            "2026-12-06",
            &[("created[eu-1]", 100), ("settled[us-1]", 7)],
        );
        o.remove(3);
        let (v, _) = check(&three, &o, 0, 5_000_000);
        assert!(!v.held, "{v:?}");
        assert!(v.evidence[0].contains("2026-12-07"), "{v:?}");
        // Nor is a region that lacks a bucket without having retired it.
        let lost = vec![
            day(1, "eu-1", "2026-12-06", &[("created[eu-1]", 100)]),
            day(1, "us-1", "2026-12-06", &[]),
            retired(1, "us-1", "2026-12-05"),
        ];
        assert!(!check(&regions(), &lost, 0, 5_000_000).0.held);
        // A bucket the retiring region still lists (an earlier day left live) is compared.
        let listed = vec![
            retired(1, "eu-1", "2026-12-06"),
            day(1, "eu-1", "2026-12-05", &[("created[eu-1]", 100)]),
            day(1, "us-1", "2026-12-05", &[("created[eu-1]", 90)]),
        ];
        assert!(!check(&regions(), &listed, 0, 5_000_000).0.held);
    }

    #[test]
    fn equal_states_within_the_bound_pass_and_the_time_is_measured() {
        let o = vec![
            obs(1, "eu-1", &[("created[eu-1]", 100)]),
            obs(1, "us-1", &[]),
            obs(2, "eu-1", &[("created[eu-1]", 100)]),
            obs(2, "us-1", &[("created[eu-1]", 100), ("settled[us-1]", 0)]),
            obs(3, "eu-1", &[("created[eu-1]", 100)]),
            obs(3, "us-1", &[("created[eu-1]", 100)]),
        ];
        let (v, took) = check(&regions(), &o, 500_000, 5_000_000);
        assert!(v.held, "{v:?}");
        assert_eq!(took, Some(1_500_000));
        assert_eq!(v.checked, 1);
    }

    #[test]
    fn states_that_never_meet_meet_late_or_part_at_the_end_are_caught() {
        let never = vec![
            obs(1, "eu-1", &[("created[eu-1]", 100), ("settled[eu-1]", 5)]),
            obs(1, "us-1", &[("created[eu-1]", 100)]),
        ];
        let (v, took) = check(&regions(), &never, 0, 5_000_000);
        assert!(!v.held && took.is_none());
        assert!(v.evidence[0].contains("settled[eu-1]"), "{v:?}");

        let late = vec![
            obs(9, "eu-1", &[("created[eu-1]", 100)]),
            obs(9, "us-1", &[("created[eu-1]", 100)]),
        ];
        let (v, took) = check(&regions(), &late, 0, 5_000_000);
        assert!(!v.held && took == Some(9_000_000));
        assert!(v.evidence[0].contains("beyond the bound"), "{v:?}");

        let parted = vec![
            obs(1, "eu-1", &[("created[eu-1]", 100)]),
            obs(1, "us-1", &[("created[eu-1]", 100)]),
            obs(2, "eu-1", &[("created[eu-1]", 100)]),
            obs(2, "us-1", &[("created[eu-1]", 90)]),
        ];
        let (v, took) = check(&regions(), &parted, 0, 5_000_000);
        assert!(!v.held && took.is_none());
        assert!(v.evidence[0].contains("never converged"), "{v:?}");
        // Equal, apart for a round (a last transfer), then equal for good: converged at the
        // last meeting.
        let mut settled_late = parted.clone();
        settled_late.push(obs(3, "eu-1", &[("created[eu-1]", 90)]));
        settled_late.push(obs(3, "us-1", &[("created[eu-1]", 90)]));
        let (v, took) = check(&regions(), &settled_late, 0, 5_000_000);
        assert!(v.held, "{v:?}");
        assert_eq!(took, Some(3_000_000));
    }

    #[test]
    fn a_status_answer_becomes_rows() {
        use shared::proto::v1 as pb;
        let reply = pb::RegionStatusReply {
            region: "us-1".into(),
            buckets: vec![pb::BucketStatus {
                bucket: Some(pb::BucketKey {
                    campaign: "c".into(),
                    bucket: Some(pb::Bucket::from(&shared::Bucket::Lifetime)),
                }),
                home: "eu-1".into(),
                regions: vec![pb::RegionFigures {
                    region: "eu-1".into(),
                    created_micros: 100,
                    settled_micros: 7,
                    ..Default::default()
                }],
                transferred: vec![pb::TransferRow {
                    from_region: "eu-1".into(),
                    to_region: "us-1".into(),
                    micros: 40,
                }],
            }],
            retired: vec![pb::RetiredDays {
                campaign: "c".into(),
                retired_through: "2026-12-06".into(),
            }],
            ..Default::default()
        };
        let o = observations(3, 9, &reply);
        assert_eq!(o.len(), 2);
        assert_eq!(
            (o[1].bucket.as_str(), o[1].retired_through),
            ("c", Some(jiff::civil::date(2026, 12, 6)))
        );
        assert_eq!(
            (o[0].round, o[0].region.as_str(), o[0].bucket.as_str()),
            (3, "us-1", "c/lifetime")
        );
        assert_eq!(o[0].rows["created[eu-1]"], 100);
        assert_eq!(o[0].rows["transferred[eu-1->us-1]"], 40);
    }

    #[test]
    fn a_round_missing_a_region_proves_nothing_and_nothing_is_not_a_pass() {
        let partial = vec![obs(1, "eu-1", &[("created[eu-1]", 100)])];
        let (v, took) = check(&regions(), &partial, 0, 5_000_000);
        assert!(!v.held && took.is_none());
        assert!(!check(&regions(), &[], 0, 1).0.held);
    }
}
