//! The recorded history of a run: one JSON object per line, in the order things happened.
//!
//! As in Jepsen, a logical *process* does one operation at a time: it records an `invoke`, then
//! exactly one completion — `ok` (it happened), `fail` (it certainly did not happen) or `info`
//! (unknown: a timeout, a crash). Times are microseconds of the harness's monotonic clock since
//! the run started, so they order events across processes without trusting any wall clock.

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

/// How an operation stands at this record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpType {
    /// The process started the operation.
    Invoke,
    /// It completed and took effect.
    Ok,
    /// It completed and certainly took no effect.
    Fail,
    /// Its outcome is unknown (and stays so).
    Info,
}

/// What an operation does, with what it returned on completion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Call {
    /// The exchange sends an edge the billing notice of one won impression. `ok`: the edge
    /// acknowledged it (settled); `fail`: the edge refused it; `info`: no answer.
    Notice {
        /// Our bid, as the bid response named it (`Bid.id`: `REGION/LEASE.N`): the charge's
        /// identity. Two bids may carry the same exchange ids; each is billed on its own.
        bid: String,
        /// `EXCHANGE/AUCTION/IMP`: the exchange's ids, which it may reuse.
        event: String,
        /// The campaign charged.
        campaign: String,
        /// The clearing price, in micros.
        amount: i64,
        /// The coordinator's Raft index that settled it (on `ok`, when the edge knows it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u64>,
        /// The region whose lease it was (and whose Raft index `index` is); empty in a run of
        /// one region.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        region: String,
    },
    /// A linearizable read of a bucket's settled spend through a coordinator.
    Read {
        /// `CAMPAIGN/BUCKET`.
        bucket: String,
        /// The settled micros read (on `ok`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<i64>,
        /// The Raft index the read was served at (on `ok`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<u64>,
        /// The region read; empty in a run of one region.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        region: String,
    },
    /// A fault, from injection (`invoke`) to heal (`ok`).
    Nemesis {
        /// The fault kind (`partition`, `kill`, `pause`, `clock`, …).
        fault: String,
        /// What it was applied to.
        target: String,
    },
}

/// The region an operation concerns: `Some("")` for notices and reads of a run of one region,
/// `None` for the nemesis.
pub fn region_of(c: &Completed) -> Option<&str> {
    match &c.invoked {
        Call::Notice { region, .. } | Call::Read { region, .. } => Some(region),
        Call::Nemesis { .. } => None,
    }
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Microseconds since the run started (monotonic).
    pub time_us: u64,
    /// The logical process.
    pub process: String,
    /// Invoke or a completion.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The operation.
    #[serde(flatten)]
    pub call: Call,
}

/// An invocation with its completion, if it had one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    /// The process.
    pub process: String,
    /// When it was invoked.
    pub invoke_us: u64,
    /// When it completed (`None`: never, or `info`).
    pub complete_us: Option<u64>,
    /// `Ok`, `Fail` or `Info`; `Info` also when the history ends before a completion.
    pub outcome: OpType,
    /// The call as invoked.
    pub invoked: Call,
    /// The call as completed (with its results), if it completed.
    pub completed: Option<Call>,
}

/// Why a history is malformed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A line is not an operation.
    #[error("line {line}: {source}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// Reading failed.
    #[error("reading the history: {0}")]
    Io(#[from] io::Error),
    /// A process completed an operation it had not invoked, or invoked two at once.
    #[error("line {line}: process {process}: {problem}")]
    Order {
        /// 1-based line number.
        line: usize,
        /// The process.
        process: String,
        /// What is wrong.
        problem: &'static str,
    },
}

/// Writes operations as JSON lines.
pub fn write_ops(out: &mut impl Write, ops: &[Op]) -> io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut *out, op)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Reads JSON lines (blank lines are skipped).
pub fn read_ops(input: impl BufRead) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(
            serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
                line: i + 1,
                source,
            })?,
        );
    }
    Ok(ops)
}

/// Pairs every invocation with its completion, in invocation order. An invocation still open
/// when the history ends counts as `info`.
pub fn complete(ops: &[Op]) -> Result<Vec<Completed>, HistoryError> {
    let mut open: std::collections::BTreeMap<&str, usize> = Default::default();
    let mut out: Vec<Completed> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let order = |problem| HistoryError::Order {
            line: i + 1,
            process: op.process.clone(),
            problem,
        };
        match op.kind {
            OpType::Invoke => {
                if open.contains_key(op.process.as_str()) {
                    return Err(order("invoked while another operation is open"));
                }
                open.insert(&op.process, out.len());
                out.push(Completed {
                    process: op.process.clone(),
                    invoke_us: op.time_us,
                    complete_us: None,
                    outcome: OpType::Info,
                    invoked: op.call.clone(),
                    completed: None,
                });
            }
            kind => {
                let at = open
                    .remove(op.process.as_str())
                    .ok_or_else(|| order("completed an operation it never invoked"))?;
                let c = &mut out[at];
                if std::mem::discriminant(&c.invoked) != std::mem::discriminant(&op.call) {
                    return Err(order("completed a different operation than it invoked"));
                }
                c.outcome = kind;
                c.complete_us = (kind != OpType::Info).then_some(op.time_us);
                c.completed = Some(op.call.clone());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(process: &str, kind: OpType, t: u64, value: Option<i64>) -> Op {
        Op {
            time_us: t,
            process: process.into(),
            kind,
            call: Call::Read {
                bucket: "c/lifetime".into(),
                value,
                index: value.map(|_| 3),
                region: String::new(),
            },
        }
    }

    #[test]
    fn round_trips_as_json_lines() {
        let ops = vec![
            read("r1", OpType::Invoke, 1, None),
            read("r1", OpType::Ok, 5, Some(700)),
        ];
        let mut buf = Vec::new();
        write_ops(&mut buf, &ops).unwrap();
        let text = String::from_utf8(buf.clone()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains(r#""type":"invoke""#), "{text}");
        assert!(text.contains(r#""f":"read""#), "{text}");
        assert_eq!(read_ops(&buf[..]).unwrap(), ops);
    }

    #[test]
    fn pairs_invocations_with_completions() {
        let ops = vec![
            read("a", OpType::Invoke, 1, None),
            read("b", OpType::Invoke, 2, None),
            read("b", OpType::Ok, 3, Some(5)),
            read("a", OpType::Info, 4, None),
            read("c", OpType::Invoke, 5, None),
        ];
        let c = complete(&ops).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].outcome, c[0].complete_us), (OpType::Info, None));
        assert_eq!((c[1].outcome, c[1].complete_us), (OpType::Ok, Some(3)));
        assert_eq!(
            (c[2].outcome, c[2].completed.as_ref()),
            (OpType::Info, None)
        );
    }

    #[test]
    fn malformed_histories_are_refused_with_their_line() {
        let twice = vec![
            read("a", OpType::Invoke, 1, None),
            read("a", OpType::Invoke, 2, None),
        ];
        assert!(matches!(
            complete(&twice),
            Err(HistoryError::Order { line: 2, .. })
        ));
        let orphan = vec![read("a", OpType::Ok, 1, Some(1))];
        assert!(matches!(
            complete(&orphan),
            Err(HistoryError::Order { line: 1, .. })
        ));
        let bad = b"{\"time_us\":1}\n";
        assert!(matches!(
            read_ops(&bad[..]),
            Err(HistoryError::Parse { line: 1, .. })
        ));
    }
}
