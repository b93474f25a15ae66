//! I7: reads of a balance through the coordinator are linearizable.
//!
//! # Why this check is exact
//!
//! The ledger is one Raft state machine, so its writes have one order that every replica
//! applies: the Raft log's. A write's effect on any balance is fixed by its place in that order
//! (`apply` is deterministic). A linearization of the history must therefore place the writes
//! in log order. What is left to choose is where each read goes, that is, the log index `i`
//! whose state the read observed. A read with real-time interval `[a, b]` and value `v` may go
//! at `i` if and only if:
//!
//! 1. `state(i)` has `v` for the read's bucket;
//! 2. `i` ≥ the index of every write that completed (was acknowledged) before `a`;
//! 3. `i` < the index of every write invoked after `b`;
//! 4. `i` ≥ the index chosen for every read that completed before `a`.
//!
//! (1)–(3) bound each read on its own. (4) ties reads together, but only with lower bounds. So
//! the history is linearizable if and only if choosing, for reads in invocation order, the
//! *smallest* admissible `i` never fails. Taking the smallest choice only lowers later reads'
//! bounds, so it never rules out a choice that another assignment would allow. This is the
//! Knossos/Porcupine search collapsed to a sweep: the log removes the search over write orders.
//!
//! Writes that no process recorded (the leader reclaiming a lease, say) are in the log but
//! impose no real-time bounds, which is exactly right: nothing observed their timing.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::Verdict;
use crate::history::{Call, Completed, OpType};

/// One bucket's settled micros after each log index that changed it, in ascending index order;
/// before the first change it is 0.
pub type Timeline = Vec<(u64, i64)>;

fn value_at(t: &Timeline, i: u64) -> i64 {
    match t.partition_point(|(at, _)| *at <= i) {
        0 => 0,
        n => t[n - 1].1,
    }
}

/// The smallest `i` in `[lo, hi]` whose state has `v`.
fn first_with(t: &Timeline, v: i64, lo: u64, hi: u64) -> Option<u64> {
    if lo > hi {
        return None;
    }
    if value_at(t, lo) == v {
        return Some(lo);
    }
    let from = t.partition_point(|(at, _)| *at <= lo);
    t[from..]
        .iter()
        .take_while(|(at, _)| *at <= hi)
        .find(|(_, val)| *val == v)
        .map(|(at, _)| *at)
}

/// Checks every `ok` read in `history` against the timelines of the buckets they read. Writes
/// are the `ok` notices that report the log index that settled them.
pub fn check(timelines: &BTreeMap<String, Timeline>, history: &[Completed]) -> Verdict {
    // Acknowledged writes: (invoked, completed, index).
    let mut writes: Vec<(u64, u64, u64)> = history
        .iter()
        .filter(|c| c.outcome == OpType::Ok)
        .filter_map(|c| match (&c.completed, c.complete_us) {
            (Some(Call::Notice { index: Some(i), .. }), Some(done)) => {
                Some((c.invoke_us, done, *i))
            }
            _ => None,
        })
        .collect();
    // For bound (3): writes by invocation time, with the least index invoked at or after each.
    writes.sort_by_key(|w| w.0);
    let mut least_after = vec![u64::MAX; writes.len() + 1];
    for k in (0..writes.len()).rev() {
        least_after[k] = least_after[k + 1].min(writes[k].2);
    }
    // For bound (2): writes by completion time, with the greatest index completed so far.
    let mut by_completion: Vec<(u64, u64)> = writes.iter().map(|w| (w.1, w.2)).collect();
    by_completion.sort();
    let mut most_before = Vec::with_capacity(by_completion.len());
    let mut m = 0;
    for (_, i) in &by_completion {
        m = m.max(*i);
        most_before.push(m);
    }

    struct Read<'a> {
        process: &'a str,
        bucket: &'a str,
        a: u64,
        b: u64,
        value: i64,
    }
    let mut reads: Vec<Read> = history
        .iter()
        .filter(|c| c.outcome == OpType::Ok)
        .filter_map(|c| match (&c.completed, c.complete_us) {
            (
                Some(Call::Read {
                    bucket,
                    value: Some(v),
                    ..
                }),
                Some(b),
            ) => Some(Read {
                process: &c.process,
                bucket,
                a: c.invoke_us,
                b,
                value: *v,
            }),
            _ => None,
        })
        .collect();
    reads.sort_by_key(|r| (r.a, r.b));

    // Sweep: reads' completions raise the floor of reads invoked strictly later.
    // (completed, chosen index) of reads not yet folded into `floor`, earliest completion first.
    let mut done: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut floor = 0u64;
    let mut violations = Vec::new();
    let empty = Timeline::new();
    for r in &reads {
        while done.peek().is_some_and(|Reverse((b, _))| *b < r.a) {
            if let Some(Reverse((_, i))) = done.pop() {
                floor = floor.max(i);
            }
        }
        let t = timelines.get(r.bucket).unwrap_or(&empty);
        let acked = by_completion.partition_point(|(at, _)| *at < r.a);
        let lo_writes = if acked == 0 {
            0
        } else {
            most_before[acked - 1]
        };
        let later = writes.partition_point(|w| w.0 <= r.b);
        let hi = least_after[later].saturating_sub(1);
        let lo = lo_writes.max(floor);
        match first_with(t, r.value, lo, hi) {
            Some(i) => done.push(Reverse((r.b, i))),
            None => {
                violations.push(format!(
                    "read of {} by {} over [{} µs, {} µs] returned {} micros, which no state \
                     between log indexes {lo} and {hi} holds (at {lo}: {}; writes acknowledged \
                     before the read reach index {lo_writes}, earlier reads index {floor})",
                    r.bucket,
                    r.process,
                    r.a,
                    r.b,
                    r.value,
                    value_at(t, lo)
                ));
                // Keep checking the others against what this read could at least have seen.
                done.push(Reverse((r.b, lo)));
            }
        }
    }
    Verdict::new("I7", reads.len() as u64, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(p: &str, a: u64, b: u64, v: i64) -> Completed {
        Completed {
            process: p.into(),
            invoke_us: a,
            complete_us: Some(b),
            outcome: OpType::Ok,
            invoked: Call::Read {
                bucket: "c/lifetime".into(),
                value: None,
                index: None,
                region: String::new(),
            },
            completed: Some(Call::Read {
                bucket: "c/lifetime".into(),
                value: Some(v),
                index: None,
                region: String::new(),
            }),
        }
    }

    fn write(p: &str, a: u64, b: u64, index: u64) -> Completed {
        let n = |index| Call::Notice {
            bid: format!("r/1.{p}"),
            event: format!("adx/{p}/1"),
            campaign: "c".into(),
            amount: 100,
            index,
            region: String::new(),
        };
        Completed {
            process: p.into(),
            invoke_us: a,
            complete_us: Some(b),
            outcome: OpType::Ok,
            invoked: n(None),
            completed: Some(n(Some(index))),
        }
    }

    /// Settled 100 at index 10, 200 at index 20.
    fn timelines() -> BTreeMap<String, Timeline> {
        BTreeMap::from([("c/lifetime".to_string(), vec![(10, 100), (20, 200)])])
    }

    #[test]
    fn reads_consistent_with_the_log_pass() {
        let h = vec![
            write("w1", 0, 10, 10),
            read("r1", 11, 12, 100),
            write("w2", 13, 30, 20),
            read("r2", 14, 15, 100), // concurrent with w2: may miss it
            read("r3", 16, 40, 200), // concurrent with w2: may see it
            read("r4", 41, 42, 200),
        ];
        let v = check(&timelines(), &h);
        assert!(v.held, "{v:?}");
        assert_eq!(v.checked, 4);
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_caught() {
        let h = vec![write("w1", 0, 10, 10), read("r1", 11, 12, 0)];
        let v = check(&timelines(), &h);
        assert!(!v.held);
        assert!(v.evidence[0].contains("r1"), "{v:?}");
    }

    #[test]
    fn reading_a_write_invoked_after_the_read_ended_is_caught() {
        let h = vec![read("r1", 0, 5, 100), write("w1", 6, 10, 10)];
        assert!(!check(&timelines(), &h).held);
    }

    #[test]
    fn a_read_going_back_in_time_after_another_read_is_caught() {
        // r1 saw 200 (index ≥ 20); r2 began after r1 ended, yet saw 100. Each alone is fine.
        let h = vec![read("r1", 0, 5, 200), read("r2", 6, 7, 100)];
        let v = check(&timelines(), &h);
        assert!(!v.held);
        assert_eq!(v.violations, 1);
        assert!(v.evidence[0].contains("r2"));
        // Overlapping, the same two reads are fine.
        assert!(
            check(
                &timelines(),
                &[read("r1", 0, 7, 200), read("r2", 6, 8, 100)]
            )
            .held
        );
    }

    #[test]
    fn a_value_no_state_ever_held_is_caught() {
        assert!(!check(&timelines(), &[read("r1", 0, 1, 150)]).held);
    }

    #[test]
    fn no_reads_is_not_a_pass() {
        assert!(!check(&timelines(), &[write("w1", 0, 1, 10)]).held);
    }
}
