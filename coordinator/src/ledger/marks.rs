//! What a closed lease remembers of its bids, compactly.
//!
//! While a lease can still take money, the ledger keeps each marked bid's [`Mark`] exactly (the
//! price matters: a second bill at another price is a conflict, a lost bid's reservation comes
//! back). Once the lease is closed no charge can take money any more, and all a repeated
//! notice needs is whether the bid was charged or lost before, so that a repeat is a duplicate
//! and not a late spend the auditors would see twice in the log. [`ClosedMarks`] keeps exactly
//! that: one bit per bid number in `1..=span` for "charged" and one for "lost", and the rare
//! marks beyond `span` (bid numbers the edge never made, or a reclaimed lease's) exactly.
//!
//! A closed lease with 10,000 charged bids keeps 1,250 bytes instead of 10,000 map entries of
//! about 40 bytes and 10,000 list items of 24: the closed leases the ledger retains
//! ([`super::Params::closed_leases_retained`]) stop growing memory and snapshots with every
//! event.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Mark;

/// The one thing lost by compaction: a repeated bill of a charged bid counts as a duplicate
/// whatever its price (the first charge stood either way; only the conflict's log record is
/// not written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Charged (settled, or recorded as an anomaly).
    Charged,
    /// Reported lost.
    Lost,
}

/// A closed lease's marks: two bitmaps over bid numbers `1..=span`, and exact marks beyond.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedMarks {
    /// Bid numbers `1..=span` are in the bitmaps.
    span: u64,
    /// Bit `b - 1` is set when bid `b` was charged. Trailing zero bytes are trimmed.
    #[serde(with = "bitmap_json", default, skip_serializing_if = "Vec::is_empty")]
    charged: Vec<u8>,
    /// Bit `b - 1` is set when bid `b` was reported lost. Trailing zero bytes are trimmed.
    #[serde(with = "bitmap_json", default, skip_serializing_if = "Vec::is_empty")]
    lost: Vec<u8>,
    /// Marks of bids above `span`, exactly.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    beyond: BTreeMap<u64, Mark>,
}

/// A bitmap never spends more than this many bits per mark it holds (plus a word): a lease
/// whose marks are few and scattered keeps the far ones exactly instead.
const BITS_PER_MARK_MAX: u64 = 64;

impl ClosedMarks {
    /// Compacts `lists` (a lease's marks in report order: a later mark of a bid counts) for a
    /// lease that made `bids` bids, if it said so.
    pub fn compact(bids: Option<u64>, lists: &[Vec<(u64, Mark)>]) -> ClosedMarks {
        let mut last: BTreeMap<u64, Mark> = BTreeMap::new();
        for &(bid, mark) in lists.iter().flatten() {
            last.insert(bid, mark);
        }
        let n = u64::try_from(last.len()).unwrap_or(u64::MAX);
        let limit = bids
            .unwrap_or(u64::MAX)
            .min(n.saturating_mul(BITS_PER_MARK_MAX).saturating_add(64));
        let span = last.range(..=limit).next_back().map_or(0, |(b, _)| *b);
        let mut m = ClosedMarks {
            span,
            ..ClosedMarks::default()
        };
        for (bid, mark) in last {
            m.insert(bid, mark);
        }
        m
    }

    /// Adds a mark (a notice that came after the close). Later marks of a bid win, as in the
    /// exact lists.
    pub fn insert(&mut self, bid: u64, mark: Mark) {
        if bid == 0 || bid > self.span {
            self.beyond.insert(bid, mark);
            return;
        }
        let (set, clear) = match mark {
            Mark::Charged(_) => (&mut self.charged, &mut self.lost),
            Mark::Lost(_) => (&mut self.lost, &mut self.charged),
        };
        set_bit(set, bid - 1, true);
        set_bit(clear, bid - 1, false);
    }

    /// What is known of bid `bid`.
    pub fn get(&self, bid: u64) -> Option<Seen> {
        if bid == 0 || bid > self.span {
            return self.beyond.get(&bid).map(|m| match m {
                Mark::Charged(_) => Seen::Charged,
                Mark::Lost(_) => Seen::Lost,
            });
        }
        if bit(&self.charged, bid - 1) {
            Some(Seen::Charged)
        } else if bit(&self.lost, bid - 1) {
            Some(Seen::Lost)
        } else {
            None
        }
    }

    /// How many bids it knows.
    pub fn len(&self) -> usize {
        let ones = |v: &[u8]| v.iter().map(|b| b.count_ones() as usize).sum::<usize>();
        ones(&self.charged) + ones(&self.lost) + self.beyond.len()
    }

    /// Whether it knows no bid.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory it holds (bitmaps and exact marks, roughly), for the gauge.
    pub fn bytes(&self) -> usize {
        self.charged.len() + self.lost.len() + self.beyond.len() * 40
    }
}

fn bit(v: &[u8], i: u64) -> bool {
    let byte = usize::try_from(i / 8).unwrap_or(usize::MAX);
    v.get(byte).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn set_bit(v: &mut Vec<u8>, i: u64, on: bool) {
    let byte = usize::try_from(i / 8).unwrap_or(usize::MAX);
    if on {
        if v.len() <= byte {
            v.resize(byte + 1, 0);
        }
        v[byte] |= 1 << (i % 8);
    } else if let Some(b) = v.get_mut(byte) {
        *b &= !(1 << (i % 8));
        while v.last() == Some(&0) {
            v.pop();
        }
    }
}

/// A bitmap in JSON, whichever is shorter: lowercase hex, or `r:` and the runs of set bits as
/// `first-last` or `bit` (bit numbers from 0), comma-separated. A lease whose bids were all
/// charged keeps `r:0-9999` instead of 2,500 hex digits; a scattered one keeps hex.
mod bitmap_json {
    use std::fmt::Write as _;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let hex = hex::encode(v);
        let mut runs = String::from("r:");
        let mut start: Option<u64> = None;
        let bits = u64::try_from(v.len()).unwrap_or(u64::MAX).saturating_mul(8);
        for i in 0..=bits {
            let on = i < bits && super::bit(v, i);
            match (on, start) {
                (true, None) => start = Some(i),
                (false, Some(first)) => {
                    if runs.len() > 2 {
                        runs.push(',');
                    }
                    let last = i - 1;
                    if first == last {
                        let _ = write!(runs, "{first}");
                    } else {
                        let _ = write!(runs, "{first}-{last}");
                    }
                    start = None;
                    if runs.len() >= hex.len() {
                        return s.serialize_str(&hex);
                    }
                }
                _ => {}
            }
        }
        if runs.len() < hex.len() {
            s.serialize_str(&runs)
        } else {
            s.serialize_str(&hex)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        let Some(runs) = s.strip_prefix("r:") else {
            return hex::decode(&s).map_err(serde::de::Error::custom);
        };
        let mut v = Vec::new();
        let bad = |run: &str| serde::de::Error::custom(format!("bad run {run:?} in a bitmap"));
        for run in runs.split(',').filter(|r| !r.is_empty()) {
            let (a, b) = run.split_once('-').unwrap_or((run, run));
            let (a, b): (u64, u64) = (
                a.parse().map_err(|_| bad(run))?,
                b.parse().map_err(|_| bad(run))?,
            );
            // A closed lease's bitmap spans at most 64 bits per mark it holds: refuse absurd
            // runs instead of allocating for them.
            if b < a || b >= 1 << 40 {
                return Err(bad(run));
            }
            for i in a..=b {
                super::set_bit(&mut v, i, true);
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::Money;

    fn c(n: i64) -> Mark {
        Mark::Charged(Money::from_micros(n))
    }
    fn l(n: i64) -> Mark {
        Mark::Lost(Money::from_micros(n))
    }

    #[test]
    fn every_mark_survives_compaction_and_the_last_one_counts() {
        let lists = vec![
            vec![(1, c(5)), (2, l(7)), (3, c(1))],
            vec![(2, c(7)), (9, l(3)), (1_000_000, c(2))],
        ];
        let m = ClosedMarks::compact(Some(10), &lists);
        assert_eq!(m.get(1), Some(Seen::Charged));
        assert_eq!(m.get(2), Some(Seen::Charged), "the later mark counts");
        assert_eq!(m.get(3), Some(Seen::Charged));
        assert_eq!(m.get(9), Some(Seen::Lost));
        assert_eq!(
            m.get(1_000_000),
            Some(Seen::Charged),
            "beyond the bids made"
        );
        for b in [0, 4, 5, 8, 10, 11, 999_999, u64::MAX] {
            assert_eq!(m.get(b), None, "bid {b}");
        }
        assert_eq!(m.len(), 5);
        assert_eq!(m.span, 9);
        assert_eq!(m.beyond.len(), 1);
        let back: ClosedMarks = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn scattered_marks_of_an_unknown_count_stay_exact_not_a_huge_bitmap() {
        // A reclaimed lease (no count) with two marks far apart.
        let m = ClosedMarks::compact(None, &[vec![(3, c(1)), (u64::MAX, l(1))]]);
        assert!(m.bytes() < 200, "{} bytes", m.bytes());
        assert_eq!(m.get(3), Some(Seen::Charged));
        assert_eq!(m.get(u64::MAX), Some(Seen::Lost));
        // Dense marks of a known count: one bit each.
        let dense: Vec<(u64, Mark)> = (1..=10_000).map(|b| (b, c(1))).collect();
        let m = ClosedMarks::compact(Some(10_000), &[dense]);
        assert_eq!(m.bytes(), 1_250);
        assert_eq!(m.len(), 10_000);
        // In its row, all charged is one run.
        let row = serde_json::to_string(&m).unwrap();
        assert_eq!(row, r#"{"span":10000,"charged":"r:0-9999"}"#);
        assert_eq!(serde_json::from_str::<ClosedMarks>(&row).unwrap(), m);
    }

    #[test]
    fn a_bitmap_row_is_runs_or_hex_whichever_is_shorter_and_reads_back() {
        // One bid in seven charged, the rest lost, as an exchange with loss notices reports.
        let lists: Vec<(u64, Mark)> = (1..=7_000)
            .map(|b| (b, if b % 7 == 0 { c(1) } else { l(1) }))
            .collect();
        let m = ClosedMarks::compact(Some(7_000), &[lists]);
        let row = serde_json::to_string(&m).unwrap();
        assert!(row.len() < 2 * 7_000 / 4 + 100, "{} bytes", row.len());
        assert_eq!(serde_json::from_str::<ClosedMarks>(&row).unwrap(), m);
        for b in [7, 14, 6_999, 7_000] {
            assert_eq!(
                m.get(b),
                Some(if b % 7 == 0 {
                    Seen::Charged
                } else {
                    Seen::Lost
                })
            );
        }
        for bad in [
            r#"{"span":10,"charged":"r:5-2"}"#,
            r#"{"span":10,"charged":"r:x"}"#,
            r#"{"span":10,"charged":"r:0-99999999999999"}"#,
            r#"{"span":10,"charged":"zz"}"#,
        ] {
            assert!(serde_json::from_str::<ClosedMarks>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn later_notices_flip_a_bid_and_trim_the_bitmaps() {
        let mut m = ClosedMarks::compact(Some(64), &[vec![(64, l(1))]]);
        m.insert(64, c(2));
        assert_eq!(m.get(64), Some(Seen::Charged));
        assert!(m.lost.is_empty(), "the lost bitmap is trimmed to nothing");
        m.insert(65, c(2));
        assert_eq!(m.get(65), Some(Seen::Charged));
        m.insert(5, l(2));
        assert_eq!(m.get(5), Some(Seen::Lost));
        assert_eq!(m.len(), 3);
    }
}
