//! Applies a nemesis schedule to a running topology, and proves each fault reached its target:
//! a network fault's rules counted packets, a killed process was gone and came back, a paused one
//! was stopped, a skewed clock was read back from the process itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use chaos::delay::Delay;
use chaos::net::{Action, Fault as NetFault, Firewall};
use chaos::process::State;
use serde::Serialize;

use super::exchange::Recorder;
use super::topology::{Topology, write_skew};
use crate::history::{Call, OpType};
use crate::nemesis::{Fault, Schedule, Window};

/// What happened to one window of the schedule.
#[derive(Clone, Debug, Serialize)]
pub struct Injected {
    /// The window.
    pub window: Window,
    /// True if the fault demonstrably reached its target.
    pub observed: bool,
    /// How we know (or why we do not).
    pub proof: String,
}

/// A fault in force, with what heals it.
enum Active {
    Net(Vec<NetFault>),
    Delay(Delay),
    Killed(String),
    KilledAll(Vec<String>),
    Paused(String),
    /// The node, and how far off its clock was just before (µs, a range: see `read_clock`).
    Clock(String, (i64, i64)),
}

/// `GET path` from `addr` over plain HTTP/1.0, with short timeouts: the body.
pub fn http_get(addr: &str, path: &str) -> Result<String> {
    http_request(addr, path).map(|(_, body)| body)
}

/// True if `GET path` at `addr` is answered with status 200.
pub fn http_ok(addr: &str, path: &str) -> bool {
    http_request(addr, path).is_ok_and(|(status, _)| status == 200)
}

/// `GET path` at `addr`: the status code and the body.
fn http_request(addr: &str, path: &str) -> Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr.parse().context("address")?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(1)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    // "HTTP/1.1 200 OK": the second word.
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    Ok((
        status,
        out.split_once("\r\n\r\n")
            .map_or(String::new(), |(_, b)| b.to_string()),
    ))
}

fn harness_wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `clock_wall_us` a node reports on `/metrics`, and the harness's wall clock just before
/// and just after the request (the node read its clock somewhere in between: a node starved
/// of CPU answers late, and only the two bounds together say what its clock said).
fn read_clock(metrics: &str) -> Result<(i64, i64, i64)> {
    let before = harness_wall_us();
    let body = http_get(metrics, "/metrics")?;
    let after = harness_wall_us();
    let v = body
        .lines()
        .find_map(|l| {
            // `budget_clock_wall_us` on coordinators, `edge_clock_wall_us` on edges.
            let (name, value) = l.split_once(' ')?;
            name.ends_with("_clock_wall_us").then_some(value)
        })
        .and_then(|v| v.trim().parse::<i64>().ok())
        .context("no clock_wall_us in /metrics")?;
    Ok((v, before, after))
}

/// Runs the schedule against `topo`, recording each window as a `nemesis` operation. Returns
/// when every window is over and healed, or when `abort` is set (healing what is in force).
pub fn run(
    schedule: &Schedule,
    topo: &Arc<Mutex<Topology>>,
    rec: &Recorder,
    start: Instant,
    abort: &AtomicBool,
    log_dir: &std::path::Path,
) -> Result<Vec<Injected>> {
    let mut fw = Firewall::new()?;
    let mut out = Vec::new();
    for (k, w) in schedule.windows.iter().enumerate() {
        if !sleep_until(start + Duration::from_millis(w.start_ms), abort) {
            break;
        }
        let process = format!("nemesis-{k}");
        let call = Call::Nemesis {
            fault: w.fault.kind().to_string(),
            target: w.fault.target(),
        };
        rec.record(&process, OpType::Invoke, call.clone());
        let len = Duration::from_millis(w.end_ms - w.start_ms);
        let injected = {
            let mut t = topo.lock().unwrap_or_else(|p| p.into_inner());
            inject(&w.fault, &mut t, &mut fw, k, len, log_dir)
        };
        let active = match injected {
            Ok(a) => a,
            Err(e) => {
                rec.record(&process, OpType::Info, call);
                out.push(Injected {
                    window: w.clone(),
                    observed: false,
                    proof: format!("could not inject: {e:#}"),
                });
                continue;
            }
        };
        // A look shortly after injection, for what can only be seen while in force.
        std::thread::sleep(Duration::from_millis(300));
        let early = {
            let mut t = topo.lock().unwrap_or_else(|p| p.into_inner());
            look(&active, &w.fault, &mut t, start)
        };
        sleep_until(start + Duration::from_millis(w.end_ms), abort);
        let healed = {
            let mut t = topo.lock().unwrap_or_else(|p| p.into_inner());
            heal(active, &mut t, &mut fw)
        };
        let (observed, proof) = match (early, healed) {
            (Ok(a), Ok(b)) => {
                let seen = a.0 && b.0;
                let proof = if a.1.is_empty() {
                    b.1
                } else {
                    format!("{}; {}", a.1, b.1)
                };
                (seen, proof)
            }
            (Err(e), _) | (_, Err(e)) => (false, format!("{e:#}")),
        };
        rec.record(&process, OpType::Ok, call);
        out.push(Injected {
            window: w.clone(),
            observed,
            proof,
        });
    }
    fw.heal_all()?;
    Ok(out)
}

/// Sleeps until `at`; false if aborted first.
fn sleep_until(at: Instant, abort: &AtomicBool) -> bool {
    while Instant::now() < at {
        if abort.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(
            at.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100)),
        );
    }
    !abort.load(Ordering::Relaxed)
}

fn inject(
    fault: &Fault,
    t: &mut Topology,
    fw: &mut Firewall,
    k: usize,
    len: Duration,
    log_dir: &std::path::Path,
) -> Result<Active> {
    Ok(match fault {
        Fault::Partition { a, b } => {
            let (a, b) = (t.ips(a)?, t.ips(b)?);
            Active::Net(fw.partition(&a, &b)?.to_vec())
        }
        Fault::OneWay { from, to } => {
            Active::Net(vec![fw.apply(&t.ips(from)?, &t.ips(to)?, Action::Drop)?])
        }
        Fault::Loss { node, percent } => Active::Net(vec![fw.apply(
            &t.others(node),
            &t.ips(std::slice::from_ref(node))?,
            Action::Loss(*percent),
        )?]),
        Fault::Duplicate { node } => Active::Net(vec![fw.apply(
            &t.ips(std::slice::from_ref(node))?,
            &t.others(node),
            Action::Duplicate,
        )?]),
        Fault::Delay {
            node,
            delay_ms,
            jitter_ms,
        } => Active::Delay(Delay::start(
            &t.bin_dir.join("chaos"),
            u16::try_from(k % 1000).unwrap_or(0) + 1,
            &t.others(node),
            &t.ips(std::slice::from_ref(node))?,
            Duration::from_millis(u64::from(*delay_ms)),
            Duration::from_millis(u64::from(*jitter_ms)),
            len + Duration::from_secs(10),
            log_dir.join(format!("delay-{k}.log")),
        )?),
        Fault::Kill { node } => {
            t.node_mut(node)?.proc.kill()?;
            Active::Killed(node.clone())
        }
        Fault::RegionPartition {
            a_nodes, b_nodes, ..
        } => {
            let (a, b) = (t.ips(a_nodes)?, t.ips(b_nodes)?);
            Active::Net(fw.partition(&a, &b)?.to_vec())
        }
        Fault::RegionIsolate { nodes, others, .. } => {
            let (a, b) = (t.ips(nodes)?, t.ips(others)?);
            Active::Net(fw.partition(&a, &b)?.to_vec())
        }
        Fault::RegionKill { nodes, .. } => {
            for n in nodes {
                t.node_mut(n)?.proc.kill()?;
            }
            Active::KilledAll(nodes.clone())
        }
        Fault::Pause { node } => {
            t.node_mut(node)?.proc.pause()?;
            Active::Paused(node.clone())
        }
        Fault::Clock {
            node,
            offset_us,
            rate_ppm,
        } => {
            let base = t.base_offset_us;
            let n = t.node_mut(node)?;
            // A clock that ran at a wrong rate in an earlier window keeps the drift it built
            // up (as a real one would until corrected), so the proof is that the clock *moved*
            // by the offset: its reading before is the baseline.
            let before = read_clock(&n.metrics)
                .map(|(theirs, b, a)| (theirs - a - base, theirs - b - base))
                .unwrap_or((0, 0));
            write_skew(&n.clock_file, base.saturating_add(*offset_us), *rate_ppm)?;
            Active::Clock(node.clone(), before)
        }
    })
}

/// What can be seen while the fault is in force: a paused process is stopped, a killed one is
/// gone, a skewed clock reads skewed.
fn look(
    active: &Active,
    fault: &Fault,
    t: &mut Topology,
    _start: Instant,
) -> Result<(bool, String)> {
    Ok(match active {
        Active::Killed(n) => {
            let s = t.node_mut(n)?.proc.state();
            (s == State::Gone, format!("{n} after SIGKILL: {s:?}"))
        }
        Active::KilledAll(names) => {
            let mut gone = true;
            for n in names {
                gone &= t.node_mut(n)?.proc.state() == State::Gone;
            }
            (
                gone,
                format!("{} processes after SIGKILL: all gone: {gone}", names.len()),
            )
        }
        Active::Paused(n) => {
            let s = t.node_mut(n)?.proc.state();
            (s == State::Stopped, format!("{n} after SIGSTOP: {s:?}"))
        }
        Active::Clock(n, (low0, high0)) => {
            let Fault::Clock { offset_us, .. } = fault else {
                bail!("a clock window without a clock fault")
            };
            let base = t.base_offset_us;
            let node = t.node_mut(n)?;
            let (theirs, before, after) = read_clock(&node.metrics)?;
            // The node read its clock between `before` and `after` (harness time), so its
            // offset lies between these two; it moved by the difference from its offset before
            // the fault, give or take the rate error (at most 10 % of the 300 ms since
            // injection) and a second for scheduling.
            let (low, high) = (theirs - after - base, theirs - before - base);
            let (moved_low, moved_high) = (low - high0, high - low0);
            let ok = *offset_us >= moved_low - 1_000_000 && *offset_us <= moved_high + 1_000_000;
            (
                ok,
                format!(
                    "{n}'s clock moved {moved_low}..{moved_high} µs (fault {offset_us} µs; it was {low0}..{high0} µs off before)"
                ),
            )
        }
        Active::Net(_) | Active::Delay(_) => (true, String::new()),
    })
}

fn heal(active: Active, t: &mut Topology, fw: &mut Firewall) -> Result<(bool, String)> {
    Ok(match active {
        Active::Net(faults) => {
            let mut packets = 0;
            for f in &faults {
                packets += fw.packets(f)?;
            }
            for f in &faults {
                fw.heal(f)?;
            }
            let what: Vec<String> = faults.iter().map(ToString::to_string).collect();
            (
                packets > 0,
                format!("{} acted on {packets} packets", what.join(" and ")),
            )
        }
        Active::Delay(d) => {
            let packets = d.packets()?;
            d.heal()?;
            (packets > 0, format!("delayed {packets} packets"))
        }
        Active::Killed(n) => {
            let node = t.node_mut(&n)?;
            let before = node.proc.starts();
            node.proc.restart()?;
            let after = node.proc.starts();
            (
                after == before + 1,
                format!(
                    "restarted (start {after}, pid {})",
                    node.proc.pid().map_or("none".into(), |p| p.to_string())
                ),
            )
        }
        Active::KilledAll(names) => {
            let mut restarted = 0;
            for n in &names {
                let node = t.node_mut(n)?;
                let before = node.proc.starts();
                node.proc.restart()?;
                if node.proc.starts() == before + 1 {
                    restarted += 1;
                }
            }
            (
                restarted == names.len(),
                format!("restarted {restarted} of {}", names.len()),
            )
        }
        Active::Paused(n) => {
            let node = t.node_mut(&n)?;
            node.proc.resume()?;
            let s = node.proc.state();
            (s == State::Live, format!("resumed: {s:?}"))
        }
        Active::Clock(n, _) => {
            let base = t.base_offset_us;
            let node = t.node_mut(&n)?;
            write_skew(&node.clock_file, base, 0)?;
            (true, "clock restored".into())
        }
    })
}
