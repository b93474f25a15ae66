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
    /// The coordinator replaced, its old node id and its new one.
    Replaced(String, u64, u64),
    /// A coordinator whose database was damaged: whether it refused to start as it must
    /// (and what it said), then replaced (old and new node id).
    Damaged(String, bool, String, u64, u64),
    /// A coordinator whose disk was filled, and the file that fills it.
    Full(String, std::path::PathBuf),
    /// A coordinator whose syncs fail, and the file whose presence makes them fail.
    SyncFailing(String, std::path::PathBuf),
    /// A coordinator's segment file with a flipped byte: the node, the file, its bytes before,
    /// and the node's count of repaired segments before.
    Rotted(String, std::path::PathBuf, Vec<u8>, i64),
}

/// The address the harness (the exchange, the readers) sends from.
const HARNESS_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 1);

/// The leader among `coordinators`, as the first of them that answers says (`raft_leader` on
/// its `/metrics`: a node id; node `N` is named `…coordinator-N`). During an election none is
/// known: it asks again for up to 5 s.
fn leader_of(t: &mut Topology, coordinators: &[String]) -> Result<String> {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match known_leader(t, coordinators) {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// [`leader_of`], asked once.
fn known_leader(t: &mut Topology, coordinators: &[String]) -> Result<String> {
    for c in coordinators {
        let Ok(body) = http_get(&t.node_mut(c)?.metrics, "/metrics") else {
            continue;
        };
        let id = body.lines().find_map(|l| {
            let (name, value) = l.split_once(' ')?;
            (name == "budget_raft_leader").then(|| value.trim().parse::<u64>().ok())?
        });
        // Node ids, not names: a replaced coordinator keeps its name under a new id.
        if let Some(id) = id.filter(|id| *id > 0) {
            for name in coordinators {
                if t.node_mut(name)?.node_id == id {
                    return Ok(name.clone());
                }
            }
        }
    }
    bail!(
        "no coordinator of {} names a leader",
        coordinators.join(",")
    )
}

/// Waits (at most `patience`) for `node`'s log to show a new fresh grant; how long it took.
fn next_grant(log: &std::path::Path, patience: Duration) -> Option<Duration> {
    let from = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let began = Instant::now();
    while began.elapsed() < patience {
        if let Ok(mut f) = std::fs::File::open(log) {
            use std::io::Seek;
            let mut tail = String::new();
            if f.seek(std::io::SeekFrom::Start(from)).is_ok()
                && f.read_to_string(&mut tail).is_ok()
                && tail.contains("lease granted")
            {
                return Some(began.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// The number a metric `name` shows on `/metrics` at `addr`.
fn metric(addr: &str, name: &str) -> Option<i64> {
    let body = http_get(addr, "/metrics").ok()?;
    body.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// The step some money-path faults take inside their window: the leader among
/// `coordinators` paused at `at` from the window's start, for `hold`.
fn mid_step(fault: &Fault) -> Option<(Duration, Duration, &[String])> {
    match fault {
        Fault::ReclaimElection {
            coordinators,
            pause_at_ms,
            pause_ms,
            ..
        } => Some((
            Duration::from_millis(*pause_at_ms),
            Duration::from_millis(*pause_ms),
            coordinators,
        )),
        Fault::ClockElection {
            coordinators,
            pause_ms,
            ..
        } => Some((
            Duration::from_millis(600),
            Duration::from_millis(*pause_ms),
            coordinators,
        )),
        _ => None,
    }
}

/// Pauses the leader among `coordinators` for `hold` (or until `abort`): whether it was seen
/// stopped and then live again, and what happened.
fn pause_leader(
    topo: &Arc<Mutex<Topology>>,
    coordinators: &[String],
    hold: Duration,
    abort: &AtomicBool,
) -> (bool, String) {
    let paused = {
        let mut t = topo.lock().unwrap_or_else(|p| p.into_inner());
        leader_of(&mut t, coordinators).and_then(|l| {
            let n = t.node_mut(&l)?;
            n.proc.pause()?;
            Ok((l.clone(), n.proc.state()))
        })
    };
    let (leader, state) = match paused {
        Ok(p) => p,
        Err(e) => return (false, format!("could not pause the leader: {e:#}")),
    };
    sleep_until(Instant::now() + hold, abort);
    let mut t = topo.lock().unwrap_or_else(|p| p.into_inner());
    let after = t
        .node_mut(&leader)
        .and_then(|n| {
            n.proc.resume()?;
            Ok(n.proc.state())
        })
        .map_or_else(|e| format!("{e:#}"), |s| format!("{s:?}"));
    let new_leader = leader_of(&mut t, coordinators).unwrap_or_else(|_| "none yet".into());
    (
        state == State::Stopped && after == "Live",
        format!(
            "leader {leader} paused {} ms ({state:?}), then {after}; leader now {new_leader}",
            hold.as_millis()
        ),
    )
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

/// The `clock_wall_seconds` a node reports on `/metrics` (in µs), and the harness's wall clock just before
/// and just after the request (the node read its clock somewhere in between: a node starved
/// of CPU answers late, and only the two bounds together say what its clock said).
fn read_clock(metrics: &str) -> Result<(i64, i64, i64)> {
    let before = harness_wall_us();
    let body = http_get(metrics, "/metrics")?;
    let after = harness_wall_us();
    let v = body
        .lines()
        .find_map(|l| {
            // `budget_clock_wall_seconds` on coordinators, `edge_clock_wall_seconds` on edges.
            let (name, value) = l.split_once(' ')?;
            name.ends_with("_clock_wall_seconds").then_some(value)
        })
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| (s * 1e6).round() as i64)
        .context("no clock_wall_seconds in /metrics")?;
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
        let (active, note) = match injected {
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
        // A look shortly after injection, for what can only be seen while in force. A skewed
        // clock is seen on the node's `/metrics`: a node restarted just before (a kill's heal)
        // may not answer yet, and is given up to 5 s, within the window, to come up (a
        // clock-election 1 s after a kill found its follower refusing connections: seed 20).
        std::thread::sleep(Duration::from_millis(300));
        if let Active::Clock(node, _) = &active {
            let metrics = {
                let mut t = topo.lock().unwrap_or_else(|p| p.into_inner());
                t.node_mut(node).map(|n| n.metrics.clone()).ok()
            };
            let until = (Instant::now() + Duration::from_secs(5))
                .min(start + Duration::from_millis(w.end_ms));
            while let Some(m) = &metrics {
                if http_get(m, "/metrics").is_ok() || Instant::now() >= until {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let early = {
            let mut t = topo.lock().unwrap_or_else(|p| p.into_inner());
            look(&active, &w.fault, &mut t, start)
        };
        let mid = mid_step(&w.fault).map(|(at, hold, coordinators)| {
            sleep_until(start + Duration::from_millis(w.start_ms) + at, abort);
            pause_leader(topo, coordinators, hold, abort)
        });
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
        let (observed, proof) = match mid {
            Some((seen, what)) => (observed && seen, format!("{proof}; {what}")),
            None => (observed, proof),
        };
        let proof = if note.is_empty() {
            proof
        } else {
            format!("{note}; {proof}")
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

/// Puts `fault` in force: what heals it, and a note for its proof.
fn inject(
    fault: &Fault,
    t: &mut Topology,
    fw: &mut Firewall,
    k: usize,
    len: Duration,
    log_dir: &std::path::Path,
) -> Result<(Active, String)> {
    let mut note = String::new();
    let active = match fault {
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
        Fault::Replace { coordinators } => {
            let (leader, follower) = leader_and_follower(t, coordinators)?;
            let (old, new) = replace(t, &follower, &leader)?;
            Active::Replaced(follower, old, new)
        }
        Fault::DiskCorrupt { coordinators } => {
            let (leader, follower) = leader_and_follower(t, coordinators)?;
            let node = t.node_mut(&follower)?;
            node.proc.kill()?;
            let files = damage_db(&node.data_dir.join("db"))?;
            let log = node.proc.log_path().to_path_buf();
            let logged = std::fs::metadata(&log).map_or(0, |m| m.len());
            node.proc.restart()?;
            let (refused, said) = refusal(node, &log, logged, "is damaged", 65)?;
            note = format!("flipped a byte in {files} database files of {follower}");
            let (old, new) = replace(t, &follower, &leader)?;
            Active::Damaged(follower, refused, said, old, new)
        }
        Fault::SegmentCorrupt { node } => {
            let n = t.node_mut(node)?;
            let metrics = n.metrics.clone();
            let segments = n.data_dir.join("segments");
            // Early in a run none may be sealed yet: the first comes within seconds.
            let until = Instant::now() + SEGMENT_WAIT;
            let file = loop {
                if let Some(f) = newest_segment(&segments) {
                    break f;
                }
                if Instant::now() >= until {
                    bail!("{node} sealed no segment within {SEGMENT_WAIT:?}");
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            let before = metric(&metrics, REPAIRED).unwrap_or(0);
            let good = std::fs::read(&file)?;
            let mut bad = good.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x01;
            std::fs::write(&file, &bad)?;
            note = format!("flipped a bit of byte {at} of {}", file.display());
            Active::Rotted(node.clone(), file, good, before)
        }
        Fault::DiskFull {
            coordinators,
            leader,
        } => {
            let n = leader_or_follower(t, coordinators, *leader)?;
            let dir = t.node_mut(&n)?.data_dir.clone();
            let (fill, bytes) = fill_disk(&dir)?;
            // A node may go on for minutes in space it reserved ahead (RocksDB's log files)
            // when its load is light (long seed 5: a leader felt nothing in 43 s): a snapshot
            // asked for now is a write it must make and cannot.
            let addr = t.node_mut(&n)?.addr();
            let asked =
                match t.budgetctl_at(&addr, &["cluster", "snapshot"], Duration::from_secs(5)) {
                    Ok(_) => "a snapshot asked for".to_string(),
                    Err(e) => format!("a snapshot asked for: {e:#}"),
                };
            note = format!("filled {n}'s disk with {bytes} bytes; {asked}");
            Active::Full(n, fill)
        }
        Fault::SyncFail {
            coordinators,
            leader,
        } => {
            let n = leader_or_follower(t, coordinators, *leader)?;
            let trigger = t.node_mut(&n)?.proc.log_path().with_extension("failsync");
            std::fs::write(
                &trigger,
                b"fsync and fdatasync fail with EIO while this file exists\n",
            )
            .with_context(|| format!("writing {}", trigger.display()))?;
            note = format!("{n}'s syncs fail (EIO) from now");
            Active::SyncFailing(n, trigger)
        }
        // A clock that ran at a wrong rate in an earlier window keeps the drift it built up
        // (as a real one would until corrected), so the proof is that the clock *moved* by the
        // offset: its reading before is the baseline.
        Fault::Clock {
            node,
            offset_us,
            rate_ppm,
        } => skew(t, node, *offset_us, *rate_ppm)?,
        Fault::EdgeIsolate { edge, coordinators }
        | Fault::ReclaimElection {
            edge, coordinators, ..
        } => {
            let (a, b) = (t.ips(std::slice::from_ref(edge))?, t.ips(coordinators)?);
            Active::Net(fw.partition(&a, &b)?.to_vec())
        }
        // The answers are lost, not the requests: TCP's own acknowledgements pass, so the
        // edge's reports, grants and check-ins keep arriving and being applied.
        Fault::AckDrop { edge, coordinators } => Active::Net(vec![fw.apply(
            &t.ips(coordinators)?,
            &t.ips(std::slice::from_ref(edge))?,
            Action::DropData,
        )?]),
        Fault::ExchangeCut { edge } => Active::Net(vec![fw.apply(
            &[HARNESS_IP],
            &t.ips(std::slice::from_ref(edge))?,
            Action::Drop,
        )?]),
        Fault::SlowEdge {
            edge,
            coordinators,
            delay_ms,
            jitter_ms,
        } => Active::Delay(Delay::start(
            &t.bin_dir.join("chaos"),
            u16::try_from(k % 1000).unwrap_or(0) + 1,
            &t.ips(coordinators)?,
            &t.ips(std::slice::from_ref(edge))?,
            Duration::from_millis(u64::from(*delay_ms)),
            Duration::from_millis(u64::from(*jitter_ms)),
            len + Duration::from_secs(10),
            log_dir.join(format!("delay-{k}.log")),
        )?),
        Fault::LeaderPause { coordinators } => {
            let leader = leader_of(t, coordinators)?;
            let waited = next_grant(
                &log_dir.join(format!("{leader}.log")),
                Duration::from_secs(3),
            );
            t.node_mut(&leader)?.proc.pause()?;
            note = match waited {
                Some(d) => format!(
                    "leader {leader} paused {} ms after it granted",
                    d.as_millis()
                ),
                None => format!("leader {leader} paused (no grant in 3 s)"),
            };
            Active::Paused(leader)
        }
        Fault::EdgeKill {
            edges,
            coordinators,
        } => {
            let mut busiest: Option<(i64, &String)> = None;
            for e in edges {
                let pending = metric(&t.node_mut(e)?.metrics, "edge_notices_pending").unwrap_or(0);
                if busiest.is_none_or(|(p, _)| pending > p) {
                    busiest = Some((pending, e));
                }
            }
            let (_, edge) = busiest.context("no edge to kill")?;
            // Notices settle within milliseconds, so a kill alone rarely finds one unsettled:
            // the edge is cut from its coordinators first, until a notice waits for its batch
            // (a correct edge holds its answer; the exchange must send it again elsewhere).
            let cut = fw.partition(&t.ips(std::slice::from_ref(edge))?, &t.ips(coordinators)?)?;
            let held = Instant::now();
            let until = held + Duration::from_millis(crate::nemesis::EDGE_KILL_HOLD_MS);
            let killed = (|| -> Result<i64> {
                let pending = loop {
                    let pending =
                        metric(&t.node_mut(edge)?.metrics, "edge_notices_pending").unwrap_or(0);
                    if pending > 0 || Instant::now() >= until {
                        break pending;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                t.node_mut(edge)?.proc.kill()?;
                Ok(pending)
            })();
            // The cut is lifted whatever happened: the restarted edge must reach the region.
            for f in &cut {
                fw.heal(f)?;
            }
            let pending = killed?;
            note = format!(
                "{edge} cut from its coordinators, killed {} ms later with {pending} notices waiting for their batches",
                held.elapsed().as_millis()
            );
            Active::Killed(edge.clone())
        }
        Fault::ClockElection {
            coordinators,
            follower,
            offset_us,
            rate_ppm,
            ..
        } => {
            let leader = leader_of(t, coordinators)?;
            let at = coordinators.iter().position(|c| *c == leader).unwrap_or(0);
            let node = coordinators[(at + follower.max(&1)) % coordinators.len()].clone();
            note = format!("follower {node} skewed, then leader {leader} paused");
            skew(t, &node, *offset_us, *rate_ppm)?
        }
        Fault::EdgeClock {
            edge,
            offset_us,
            rate_ppm,
        } => skew(t, edge, *offset_us, *rate_ppm)?,
    };
    Ok((active, note))
}

/// Offsets `node`'s clock by `offset_us` and makes it run at `rate_ppm`.
fn skew(t: &mut Topology, node: &str, offset_us: i64, rate_ppm: i64) -> Result<Active> {
    let base = t.base_offset_us;
    let n = t.node_mut(node)?;
    let before = read_clock(&n.metrics)
        .map(|(theirs, b, a)| (theirs - a - base, theirs - b - base))
        .unwrap_or((0, 0));
    write_skew(&n.clock_file, base.saturating_add(offset_us), rate_ppm)?;
    Ok(Active::Clock(node.to_string(), before))
}

/// The clock offset a fault applies, if it is a clock fault.
fn clock_offset(fault: &Fault) -> Option<i64> {
    match fault {
        Fault::Clock { offset_us, .. }
        | Fault::ClockElection { offset_us, .. }
        | Fault::EdgeClock { offset_us, .. } => Some(*offset_us),
        _ => None,
    }
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
            let Some(offset_us) = clock_offset(fault) else {
                bail!("a clock window without a clock fault")
            };
            let offset_us = &offset_us;
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
        Active::Replaced(n, old, new) => {
            let node = t.node_mut(n)?;
            let s = node.proc.state();
            (
                s == State::Live && node.node_id == *new,
                format!("{n}: node {old} removed and wiped, node {new} added on its host: {s:?}"),
            )
        }
        Active::Damaged(n, refused, said, old, new) => {
            let node = t.node_mut(n)?;
            let s = node.proc.state();
            (
                *refused && s == State::Live && node.node_id == *new,
                format!(
                    "{n} on its damaged database: {said}; node {old} removed and wiped, node \
                     {new} added on its host: {s:?}"
                ),
            )
        }
        Active::Net(_)
        | Active::Delay(_)
        | Active::Full(..)
        | Active::SyncFailing(..)
        | Active::Rotted(..) => (true, String::new()),
    })
}

/// How long a full or failing disk stays so past its window for a node that has not yet
/// stopped on it.
const FULL_GRACE: Duration = Duration::from_secs(30);

/// What went wrong with a coordinator's disk.
#[derive(Clone, Copy)]
enum Storage {
    /// It filled up.
    Full,
    /// Its syncs fail (EIO).
    SyncFails,
}

/// The end of a storage fault on `n` (`file` fills its disk or makes its syncs fail): it must
/// have stopped, saying why, with the storage exit status (74); then the disk is good again and
/// the node is started and must catch up. A node on a full disk may instead have lived through
/// it, if it said so and seals what it could not once space is freed ([`seals_again`]); a
/// node whose syncs failed may not. A quiet follower finds the disk full only at a write
/// that needs new space (RocksDB writes into log file space it reserved ahead): the fault stays
/// past its window until the node stops, or `FULL_GRACE` passes. (Freeing it at the window's
/// end while a write was already failing left a node that stopped a moment later with nobody
/// to start it again: seed 1 of a long `--nemesis all` run.)
fn stopped_on_storage(
    t: &mut Topology,
    n: &str,
    file: &std::path::Path,
    what: Storage,
) -> Result<(bool, String)> {
    let (needle, fault, healed) = match what {
        Storage::Full => ("No space left on device", "a full disk", "space freed"),
        Storage::SyncFails => ("Input/output error", "failing syncs", "syncs good again"),
    };
    let node = t.node_mut(n)?;
    let grace = Instant::now() + FULL_GRACE;
    while node.proc.state() != State::Gone && Instant::now() < grace {
        // A node frees space of its own as it runs (RocksDB deletes files it compacted, old
        // snapshots go): the disk is filled again, so that its next write that needs space
        // finds none (long seed 7: a follower sealed segments through a "full" disk).
        if let Storage::Full = what {
            let _ = fill_up(file);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = node.proc.state();
    let stopped = match (state, node.proc.exit_status()) {
        (State::Gone, Some(s)) => Some(s),
        _ => None,
    };
    std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
    let said = std::fs::read(node.proc.log_path()).unwrap_or_default();
    let said = String::from_utf8_lossy(&said);
    let line = said
        .lines()
        .rev()
        .find(|l| l.contains(needle))
        .map(|l| around(l, needle, 300));
    let Some(status) = stopped else {
        // A node may live through a full disk: RocksDB writes into log space it reserved ahead,
        // and a segment seal that fails for space is retried, not fatal (long seed 6: a leader
        // sealed nothing for 57 s and lost nothing). That is right only if it felt the full
        // disk, said so, and seals again once space is freed.
        if let (Storage::Full, State::Live, Some(line)) = (what, state, &line) {
            let (sealed, how) = seals_again(t, n)?;
            return Ok((
                sealed,
                format!(
                    "{n} lived through {fault} (still {state:?} {} s after the window), saying {line}; {healed}: {how}",
                    FULL_GRACE.as_secs()
                ),
            ));
        }
        return Ok((
            false,
            format!(
                "{n} still {state:?} on {fault} {} s after the window, saying {}",
                FULL_GRACE.as_secs(),
                line.unwrap_or_else(|| format!("nothing of {fault}"))
            ),
        ));
    };
    node.proc.restart()?;
    let (back, how) = replaced_caught_up(t, n)?;
    Ok((
        status.code() == Some(74) && line.is_some() && back,
        format!(
            "{n} stopped ({status}) saying {}; {healed}, started again: {how}",
            line.unwrap_or_else(|| format!("nothing of {fault}"))
        ),
    ))
}

/// At most `max` characters of `line` around the first `needle` in it: a long line (openraft's
/// errors quote whole messages) is cut so that the quote still shows what was looked for.
fn around(line: &str, needle: &str, max: usize) -> String {
    let at = line.find(needle).unwrap_or(0);
    let before = line[..at].chars().count();
    let skip = before.saturating_sub(max / 2);
    let cut: String = line.chars().skip(skip).take(max).collect();
    if skip > 0 { format!("…{cut}") } else { cut }
}

/// How long a node that lived through a full disk may take, once space is freed, to seal a
/// segment and be a healthy voter with its archive whole.
const SEAL_AGAIN: Duration = Duration::from_secs(60);

/// After a full disk that `n` lived through, freed now: it must seal every segment that was
/// full at this moment (a segment holds `SEGMENT_ENTRIES` records at most, so what stays open is
/// fewer), then be a healthy voter with its archive whole.
fn seals_again(t: &mut Topology, n: &str) -> Result<(bool, String)> {
    let began = Instant::now();
    let metrics = t.node_mut(n)?.metrics.clone();
    let (Some(head), Some(before)) = (
        metric(&metrics, "budget_log_head_seq"),
        metric(&metrics, "budget_log_sealed_next_seq"),
    ) else {
        return Ok((false, "its metrics do not answer".into()));
    };
    let target = head + 1 - i64::try_from(super::topology::SEGMENT_ENTRIES).unwrap_or(0);
    loop {
        let sealed = metric(&metrics, "budget_log_sealed_next_seq").unwrap_or(before);
        if sealed > target {
            let at = began.elapsed();
            let (whole, how) = replaced_caught_up(t, n)?;
            return Ok((
                whole,
                format!(
                    "log head at seq {head}, sealed to {before}: sealed to {sealed} {} ms after; {how}",
                    at.as_millis()
                ),
            ));
        }
        if began.elapsed() >= SEAL_AGAIN {
            return Ok((
                false,
                format!(
                    "log head at seq {head}: still sealed only to {sealed} {} s after",
                    SEAL_AGAIN.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// How long a segment-corrupt fault waits for the node's first sealed segment.
const SEGMENT_WAIT: Duration = Duration::from_secs(10);

/// How long a node may take to find a damaged segment and fetch it again, after its window.
const SEGMENT_REPAIR: Duration = Duration::from_secs(30);

/// The coordinators' count of segments repaired from a peer's copy.
const REPAIRED: &str = "budget_log_segments_repaired_total";

/// The sealed segment file of `dir` with the highest first seq.
fn newest_segment(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
}

/// The leader of `coordinators` if `leader`, or else its first follower.
fn leader_or_follower(t: &mut Topology, coordinators: &[String], leader: bool) -> Result<String> {
    let (l, follower) = leader_and_follower(t, coordinators)?;
    Ok(if leader { l } else { follower })
}

/// The leader of `coordinators` and the first follower.
fn leader_and_follower(t: &mut Topology, coordinators: &[String]) -> Result<(String, String)> {
    let leader = leader_of(t, coordinators)?;
    let follower = coordinators
        .iter()
        .find(|c| **c != leader)
        .context("no follower")?
        .clone();
    Ok((leader, follower))
}

/// Replaces `follower` as an operator replaces a failed replica (through `leader`): removed,
/// wiped, started under a new node id and added back. Returns the old and the new id.
fn replace(t: &mut Topology, follower: &str, leader: &str) -> Result<(u64, u64)> {
    let old = t.retire_coordinator(follower, leader)?;
    // A snapshot built now carries only the records the leader has not sealed yet: the new
    // node must fetch the sealed history from its peers.
    let metrics = t.node_mut(leader)?.metrics.clone();
    let applied = metric(&metrics, "budget_raft_applied_index").unwrap_or(0);
    let via = t.node_mut(leader)?.addr();
    t.budgetctl_at(&via, &["cluster", "snapshot"], Duration::from_secs(10))?;
    let asked = Instant::now();
    while metric(&metrics, "budget_snapshot_last_index").unwrap_or(0) < applied
        && asked.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let new = t.rejoin_coordinator(follower, leader)?;
    Ok((old, new))
}

/// Flips one byte, early in the file (in a table's first data block, in a log's first
/// record), of every write-ahead log and table file of the database in `db`: rot that
/// RocksDB's checksums must find. Returns how many files.
fn damage_db(db: &std::path::Path) -> Result<usize> {
    let mut files = 0;
    for e in std::fs::read_dir(db).with_context(|| format!("reading {}", db.display()))? {
        let path = e?.path();
        let ext = path.extension().map(|x| x.to_string_lossy().into_owned());
        if !matches!(ext.as_deref(), Some("log" | "sst")) {
            continue;
        }
        let mut bytes = std::fs::read(&path)?;
        if bytes.len() <= 64 {
            continue;
        }
        bytes[20] ^= 0xff;
        std::fs::write(&path, bytes)?;
        files += 1;
    }
    if files == 0 {
        bail!("{}: no database file to damage", db.display());
    }
    Ok(files)
}

/// How long a coordinator may take to refuse: to open its database and give up.
const REFUSAL: Duration = Duration::from_secs(30);

/// Waits until `node` exits by itself; true if it did with `code` and wrote `words` to its
/// log past `from` (its length before this start), and what it said.
fn refusal(
    node: &mut super::topology::Node,
    log: &std::path::Path,
    from: u64,
    words: &str,
    code: i32,
) -> Result<(bool, String)> {
    let until = Instant::now() + REFUSAL;
    let status = loop {
        if node.proc.state() == State::Gone
            && let Some(s) = node.proc.exit_status()
        {
            break Some(s);
        }
        if Instant::now() >= until {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let Some(status) = status else {
        return Ok((false, format!("still running after {REFUSAL:?}")));
    };
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
    let line = text
        .lines()
        .find(|l| l.contains(words))
        .map(|l| l.chars().take(300).collect::<String>());
    let ok = status.code() == Some(code) && line.is_some();
    Ok((
        ok,
        format!(
            "exited ({status}) saying {}",
            line.unwrap_or_else(|| format!("nothing with '{words}'"))
        ),
    ))
}

/// Fills the file system of `dir` with a file of zeros until a write fails for lack of space
/// (a tmpfs mounted for the run, never the machine's disk: the topology refuses otherwise).
/// Returns the file and how many bytes it took.
fn fill_disk(dir: &std::path::Path) -> Result<(std::path::PathBuf, u64)> {
    let path = dir.join("jepsen-disk-full.fill");
    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let written = fill_up(&path)?;
    Ok((path, written))
}

/// Appends zeros to `path` until its file system is full; returns how many bytes it took.
fn fill_up(path: &std::path::Path) -> Result<u64> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    // Bounded: the disk is 1 GiB (`SMALL_DISK_BYTES`); a limit far past it stops a mistake.
    while written < 64 << 30 {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
        }
    }
    // What a partial chunk left.
    loop {
        match f.write(&chunk[..4096]) {
            Ok(n) if n > 0 => written += n as u64,
            _ => break,
        }
    }
    Ok(written)
}

/// How long a replacement may take to become a healthy voter with its archive whole, after
/// its window.
const REPLACED_CATCH_UP: Duration = Duration::from_secs(60);

/// Waits until the replacement `n` is a healthy voter (caught up with the leader) whose archive
/// has no gap; what it saw.
fn replaced_caught_up(t: &mut Topology, n: &str) -> Result<(bool, String)> {
    let began = Instant::now();
    let node = t.node_mut(n)?;
    let (addr, metrics) = (node.addr(), node.metrics.clone());
    let secs = REPLACED_CATCH_UP.as_secs().to_string();
    if let Err(e) = t.budgetctl_at(
        &addr,
        &["cluster", "health", "--wait", &secs],
        REPLACED_CATCH_UP + Duration::from_secs(5),
    ) {
        return Ok((false, format!("not healthy: {e:#}")));
    }
    let healthy = began.elapsed();
    loop {
        let gap = metric(&metrics, "budget_log_archive_gap_records");
        let sealed = metric(&metrics, "budget_log_sealed_next_seq");
        if gap == Some(0) {
            return Ok((
                true,
                format!(
                    "a healthy voter after {} ms, its archive whole (sealed to seq {}) after {} ms",
                    healthy.as_millis(),
                    sealed.unwrap_or(-1),
                    began.elapsed().as_millis()
                ),
            ));
        }
        if began.elapsed() >= REPLACED_CATCH_UP {
            return Ok((
                false,
                format!("its archive still lacks {gap:?} sealed records"),
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
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
        Active::Replaced(n, _, _) | Active::Damaged(n, _, _, _, _) => replaced_caught_up(t, &n)?,
        Active::Rotted(n, file, good, before) => {
            let metrics = t.node_mut(&n)?.metrics.clone();
            let began = Instant::now();
            loop {
                let now = metric(&metrics, REPAIRED).unwrap_or(0);
                let whole = std::fs::read(&file).is_ok_and(|b| b == good);
                if whole && now > before {
                    break (
                        true,
                        format!(
                            "{n} found it and put back a peer's copy, byte for byte, {} ms after the window ({REPAIRED} {before} -> {now})",
                            began.elapsed().as_millis()
                        ),
                    );
                }
                if began.elapsed() >= SEGMENT_REPAIR {
                    break (
                        false,
                        format!(
                            "{n} did not repair {} within {SEGMENT_REPAIR:?} (whole: {whole}; {REPAIRED} {before} -> {now})",
                            file.display()
                        ),
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Active::Full(n, fill) => stopped_on_storage(t, &n, &fill, Storage::Full)?,
        Active::SyncFailing(n, trigger) => stopped_on_storage(t, &n, &trigger, Storage::SyncFails)?,
    })
}

#[cfg(test)]
mod around_tests {
    #[test]
    fn a_long_line_is_cut_around_what_was_looked_for() {
        let line = format!(
            "{} No space left on device (os error 28){}",
            "x".repeat(500),
            "y".repeat(500)
        );
        let quoted = super::around(&line, "No space left on device", 300);
        assert!(quoted.contains("No space left on device"), "{quoted}");
        assert!(quoted.chars().count() <= 301);
        assert_eq!(
            super::around("short No space", "No space", 300),
            "short No space"
        );
    }
}
