//! The nemesis schedule: which fault hits which node, when, and for how long. A seed fixes it
//! completely, so a run that found a violation can be replayed fault for fault.
//!
//! A schedule alternates quiet gaps and fault windows, one fault at a time, and ends with a
//! quiet tail in which everything is healed and the system is left to settle before checking.
//! Every fault kind asked for is scheduled at least once when the run is long enough for it
//! (the kinds are first dealt in a seeded order, then drawn at random), so a short run with
//! `partition,kill,pause,clock` injects all four.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Two sides of the topology cannot reach each other.
    Partition,
    /// One side's packets to the other are dropped; the other way works.
    OneWay,
    /// A node's incoming packets are dropped at random.
    Loss,
    /// A node's outgoing packets are sent twice.
    Duplicate,
    /// A node's incoming packets are delayed (and so reordered).
    Delay,
    /// A node is SIGKILLed, and restarted when the window ends.
    Kill,
    /// A node is SIGSTOPped, and SIGCONTed when the window ends.
    Pause,
    /// A node's clock jumps by an offset and runs fast or slow.
    Clock,
    /// Two regions cannot reach each other (runs of several regions).
    RegionPartition,
    /// One region cannot reach any other, for long.
    RegionIsolate,
    /// Every process of one region is SIGKILLed, and all restarted when the window ends.
    RegionKill,
    /// Faults aimed at the moments money moves (below): an edge cut off from its region's
    /// coordinators for longer than its bids' deadlines, while the exchange still reaches it.
    EdgeIsolate,
    /// The leader is paused just after it grants a lease, for longer than the lease.
    LeaderPause,
    /// The coordinators' answers to an edge are dropped (TCP's own acknowledgements pass): its
    /// batches, grants and check-ins arrive and are applied, their answers do not.
    AckDrop,
    /// The edge of a region holding the most unanswered notices is killed.
    EdgeKill,
    /// The exchange cannot reach an edge: its requests and notices go elsewhere or wait.
    ExchangeCut,
    /// The coordinators' packets to an edge wait seconds (grants and acknowledgements late).
    SlowEdge,
    /// An edge is cut off (its lease cannot be released), and the leader is paused just before
    /// the lease's reclaim is due: a new leader must start the wait again.
    ReclaimElection,
    /// A follower's clock jumps and runs off-rate, then the leader is paused so that a new one
    /// (perhaps the skewed one) is elected.
    ClockElection,
    /// An edge's clock jumps and runs fast or slow, within the bound.
    EdgeClock,
    /// A follower is replaced as an operator replaces a failed replica: killed, removed from
    /// the group, its data wiped, started again under a new node id and added back; it catches
    /// up by snapshot and fetches the sealed segments the snapshot does not carry.
    Replace,
    /// A follower's disk rots: killed, bytes flipped in its RocksDB files (write-ahead log and
    /// tables), started again. It must refuse to start (exit 65, "damaged") rather than serve
    /// from what it cannot trust; then it is replaced as in `replace`.
    DiskCorrupt,
    /// A coordinator's disk fills up (every coordinator's data directory is a small tmpfs in
    /// runs with this fault; the harness fills it). The coordinator must refuse what it cannot
    /// write, with a clear error (it stops, exit 74), and lose nothing: freed and started
    /// again, it catches up.
    DiskFull,
    /// A coordinator's disk fails its syncs: `fsync` and `fdatasync` return `EIO` (every
    /// coordinator of runs with this fault loads `libchaos_failsync.so`). What was written since
    /// the last good sync may be lost, so the coordinator must stop rather than go on as if it
    /// were durable (exit 74), and lose nothing it acknowledged: on a good disk again and
    /// started, it catches up.
    SyncFail,
    /// A byte flips in a sealed segment file of a running coordinator. Its scrub (or a read)
    /// must find it against the segment's hashes, set the file aside and fetch the segment
    /// again from a peer: the file is whole again, byte for byte.
    SegmentCorrupt,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Partition,
        Kind::OneWay,
        Kind::Loss,
        Kind::Duplicate,
        Kind::Delay,
        Kind::Kill,
        Kind::Pause,
        Kind::Clock,
    ];

    /// The kinds of runs of several regions.
    pub const REGION: [Kind; 3] = [Kind::RegionPartition, Kind::RegionIsolate, Kind::RegionKill];

    /// The faults aimed at the money path (`--nemesis money`; all are in `all`).
    pub const MONEY: [Kind; 9] = [
        Kind::EdgeIsolate,
        Kind::LeaderPause,
        Kind::AckDrop,
        Kind::EdgeKill,
        Kind::ExchangeCut,
        Kind::SlowEdge,
        Kind::ReclaimElection,
        Kind::ClockElection,
        Kind::EdgeClock,
    ];

    /// The faults of a replica's storage (`--nemesis storage`; all are in `all`).
    pub const STORAGE: [Kind; 5] = [
        Kind::Replace,
        Kind::DiskCorrupt,
        Kind::DiskFull,
        Kind::SyncFail,
        Kind::SegmentCorrupt,
    ];

    /// Every kind `all` names: the node faults, the money-path faults and the storage faults
    /// (region faults are added by runs of several regions).
    pub fn all() -> Vec<Kind> {
        Kind::ALL
            .iter()
            .chain(&Kind::MONEY)
            .chain(&Kind::STORAGE)
            .copied()
            .collect()
    }

    /// Its name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Partition => "partition",
            Kind::OneWay => "one-way",
            Kind::Loss => "loss",
            Kind::Duplicate => "duplicate",
            Kind::Delay => "delay",
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Clock => "clock",
            Kind::RegionPartition => "region-partition",
            Kind::RegionIsolate => "region-isolate",
            Kind::RegionKill => "region-kill",
            Kind::EdgeIsolate => "edge-isolate",
            Kind::LeaderPause => "leader-pause",
            Kind::AckDrop => "ack-drop",
            Kind::EdgeKill => "edge-kill",
            Kind::ExchangeCut => "exchange-cut",
            Kind::SlowEdge => "slow-edge",
            Kind::ReclaimElection => "reclaim-election",
            Kind::ClockElection => "clock-election",
            Kind::EdgeClock => "edge-clock",
            Kind::Replace => "replace",
            Kind::DiskCorrupt => "disk-corrupt",
            Kind::DiskFull => "disk-full",
            Kind::SyncFail => "sync-fail",
            Kind::SegmentCorrupt => "segment-corrupt",
        }
    }

    /// Parses a comma-separated list (`partition,kill`), `all`, or `money` (the money-path
    /// kinds), which may stand in a list.
    pub fn parse_list(text: &str) -> Result<Vec<Kind>, String> {
        if text.trim() == "all" {
            return Ok(Kind::all());
        }
        // A baseline run: no faults at all (a measurement, never a chaos pass).
        if text.trim() == "none" {
            return Ok(Vec::new());
        }
        let mut kinds = Vec::new();
        let every = || {
            Kind::ALL
                .into_iter()
                .chain(Kind::MONEY)
                .chain(Kind::STORAGE)
                .chain(Kind::REGION)
        };
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let named: Vec<Kind> = if word == "money" {
                Kind::MONEY.to_vec()
            } else if word == "storage" {
                Kind::STORAGE.to_vec()
            } else {
                vec![every().find(|k| k.as_str() == word).ok_or_else(|| {
                    let names: Vec<_> = every().map(|k| k.as_str()).collect();
                    format!(
                        "no fault kind '{word}': say all, none, money, storage, or some of {}",
                        names.join(", ")
                    )
                })?]
            };
            for kind in named {
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
        }
        if kinds.is_empty() {
            return Err("no fault kind given".into());
        }
        Ok(kinds)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fault, with its targets named as the topology names its nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    /// `a` and `b` cannot reach each other.
    Partition {
        /// One side.
        a: Vec<String>,
        /// The other side.
        b: Vec<String>,
    },
    /// Packets from `from` to `to` are dropped.
    OneWay {
        /// Senders whose packets vanish.
        from: Vec<String>,
        /// Their destinations.
        to: Vec<String>,
    },
    /// `node` loses this share of its incoming packets.
    Loss {
        /// The node.
        node: String,
        /// Percent of packets dropped.
        percent: u8,
    },
    /// `node`'s outgoing packets are duplicated.
    Duplicate {
        /// The node.
        node: String,
    },
    /// `node`'s incoming packets wait `delay_ms` ± `jitter_ms`.
    Delay {
        /// The node.
        node: String,
        /// Mean delay.
        delay_ms: u32,
        /// Spread, which reorders packets.
        jitter_ms: u32,
    },
    /// `node` is killed, and restarted at the end of the window.
    Kill {
        /// The node.
        node: String,
    },
    /// `node` is paused, and resumed at the end of the window.
    Pause {
        /// The node.
        node: String,
    },
    /// `node`'s clock is offset and runs at a different rate until the end of the window.
    Clock {
        /// The node.
        node: String,
        /// Wall-clock offset, µs.
        offset_us: i64,
        /// Rate error, parts per million.
        rate_ppm: i64,
    },
    /// Regions `a` and `b` cannot reach each other.
    RegionPartition {
        /// One region.
        a: String,
        /// The other.
        b: String,
        /// `a`'s nodes.
        a_nodes: Vec<String>,
        /// `b`'s nodes.
        b_nodes: Vec<String>,
    },
    /// `region` cannot reach any other region.
    RegionIsolate {
        /// The region.
        region: String,
        /// Its nodes.
        nodes: Vec<String>,
        /// Every other region's nodes.
        others: Vec<String>,
    },
    /// Every process of `region` is killed, and restarted at the end of the window.
    RegionKill {
        /// The region.
        region: String,
        /// Its nodes, coordinators first.
        nodes: Vec<String>,
    },
    /// `edge` and its region's `coordinators` cannot reach each other; the exchange still
    /// reaches the edge.
    EdgeIsolate {
        /// The edge.
        edge: String,
        /// Its region's coordinators.
        coordinators: Vec<String>,
    },
    /// The leader among `coordinators` is paused right after it logs a grant, until the end of
    /// the window.
    LeaderPause {
        /// The region's coordinators.
        coordinators: Vec<String>,
    },
    /// Data packets from `coordinators` to `edge` are dropped (answers lost, requests not).
    AckDrop {
        /// The edge.
        edge: String,
        /// Its region's coordinators.
        coordinators: Vec<String>,
    },
    /// Of `edges`, the one with the most notices waiting for their batches is cut from
    /// `coordinators` until a notice waits there (at most [`EDGE_KILL_HOLD_MS`]), then killed,
    /// and restarted at the end of the window.
    EdgeKill {
        /// One region's edges.
        edges: Vec<String>,
        /// Their coordinators.
        coordinators: Vec<String>,
    },
    /// The exchange's packets to `edge` are dropped.
    ExchangeCut {
        /// The edge.
        edge: String,
    },
    /// Packets from `coordinators` to `edge` wait `delay_ms` ± `jitter_ms`.
    SlowEdge {
        /// The edge.
        edge: String,
        /// Its region's coordinators.
        coordinators: Vec<String>,
        /// Mean delay.
        delay_ms: u32,
        /// Spread.
        jitter_ms: u32,
    },
    /// `edge` is cut off from `coordinators` for the window; `pause_at_ms` into it, the leader
    /// is paused for `pause_ms` (just before the edge's last lease falls due for reclaim).
    ReclaimElection {
        /// The edge.
        edge: String,
        /// Its region's coordinators.
        coordinators: Vec<String>,
        /// When the leader is paused, from the window's start.
        pause_at_ms: u64,
        /// For how long.
        pause_ms: u64,
    },
    /// A follower among `coordinators` (the `follower`-th, counting from the leader) gets a
    /// clock offset and rate for the window; then the leader is paused for `pause_ms`.
    ClockElection {
        /// The region's coordinators.
        coordinators: Vec<String>,
        /// Which follower, counting from the leader (1 or more).
        follower: usize,
        /// Wall-clock offset, µs.
        offset_us: i64,
        /// Rate error, ppm.
        rate_ppm: i64,
        /// How long the leader is paused.
        pause_ms: u64,
    },
    /// A follower among `coordinators` (the first that is not the leader at injection) is
    /// killed, removed from the group, wiped, and added back under a new node id.
    Replace {
        /// The region's coordinators.
        coordinators: Vec<String>,
    },
    /// A follower among `coordinators` (the first that is not the leader at injection) is
    /// killed, its database damaged, and started again; once it has refused, it is replaced.
    DiskCorrupt {
        /// The region's coordinators.
        coordinators: Vec<String>,
    },
    /// The disk of the leader of `coordinators` (or of a follower) fills up until the window
    /// ends; then space is freed and the node started again if it stopped.
    DiskFull {
        /// The region's coordinators.
        coordinators: Vec<String>,
        /// The leader at injection, or else a follower.
        leader: bool,
    },
    /// The syncs of the leader of `coordinators` (or of a follower) fail until it stops, or
    /// the window ends; then its disk is good again and the node started again.
    SyncFail {
        /// The region's coordinators.
        coordinators: Vec<String>,
        /// The leader at injection, or else a follower.
        leader: bool,
    },
    /// A byte of the newest sealed segment of `node` (a coordinator) flips while it runs.
    SegmentCorrupt {
        /// The coordinator.
        node: String,
    },
    /// `edge`'s clock is offset and runs at a different rate until the end of the window.
    EdgeClock {
        /// The edge.
        edge: String,
        /// Wall-clock offset, µs.
        offset_us: i64,
        /// Rate error, ppm.
        rate_ppm: i64,
    },
}

impl Fault {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Fault::Partition { .. } => Kind::Partition,
            Fault::OneWay { .. } => Kind::OneWay,
            Fault::Loss { .. } => Kind::Loss,
            Fault::Duplicate { .. } => Kind::Duplicate,
            Fault::Delay { .. } => Kind::Delay,
            Fault::Kill { .. } => Kind::Kill,
            Fault::Pause { .. } => Kind::Pause,
            Fault::Clock { .. } => Kind::Clock,
            Fault::RegionPartition { .. } => Kind::RegionPartition,
            Fault::RegionIsolate { .. } => Kind::RegionIsolate,
            Fault::RegionKill { .. } => Kind::RegionKill,
            Fault::EdgeIsolate { .. } => Kind::EdgeIsolate,
            Fault::LeaderPause { .. } => Kind::LeaderPause,
            Fault::AckDrop { .. } => Kind::AckDrop,
            Fault::EdgeKill { .. } => Kind::EdgeKill,
            Fault::ExchangeCut { .. } => Kind::ExchangeCut,
            Fault::SlowEdge { .. } => Kind::SlowEdge,
            Fault::ReclaimElection { .. } => Kind::ReclaimElection,
            Fault::ClockElection { .. } => Kind::ClockElection,
            Fault::EdgeClock { .. } => Kind::EdgeClock,
            Fault::Replace { .. } => Kind::Replace,
            Fault::DiskCorrupt { .. } => Kind::DiskCorrupt,
            Fault::DiskFull { .. } => Kind::DiskFull,
            Fault::SyncFail { .. } => Kind::SyncFail,
            Fault::SegmentCorrupt { .. } => Kind::SegmentCorrupt,
        }
    }

    /// What it hits, for the history and the report (`coordinator-1|edge-2`).
    pub fn target(&self) -> String {
        match self {
            Fault::Partition { a, b } => format!("{}|{}", a.join(","), b.join(",")),
            Fault::OneWay { from, to } => format!("{}>{}", from.join(","), to.join(",")),
            Fault::Loss { node, .. }
            | Fault::Duplicate { node }
            | Fault::Delay { node, .. }
            | Fault::Kill { node }
            | Fault::Pause { node }
            | Fault::Clock { node, .. }
            | Fault::SegmentCorrupt { node } => node.clone(),
            Fault::RegionPartition { a, b, .. } => format!("{a}|{b}"),
            Fault::RegionIsolate { region, .. } => format!("{region}|*"),
            Fault::RegionKill { region, .. } => region.clone(),
            Fault::EdgeIsolate { edge, .. }
            | Fault::AckDrop { edge, .. }
            | Fault::SlowEdge { edge, .. }
            | Fault::ReclaimElection { edge, .. } => format!("{edge}|coordinators"),
            Fault::LeaderPause { coordinators } | Fault::ClockElection { coordinators, .. } => {
                format!("leader of {}", coordinators.join(","))
            }
            Fault::EdgeKill { edges, .. } => format!("busiest of {}", edges.join(",")),
            Fault::ExchangeCut { edge } => format!("exchange|{edge}"),
            Fault::EdgeClock { edge, .. } => edge.clone(),
            Fault::Replace { coordinators }
            | Fault::DiskCorrupt { coordinators }
            | Fault::DiskFull {
                coordinators,
                leader: false,
            }
            | Fault::SyncFail {
                coordinators,
                leader: false,
            } => {
                format!("a follower of {}", coordinators.join(","))
            }
            Fault::DiskFull {
                coordinators,
                leader: true,
            }
            | Fault::SyncFail {
                coordinators,
                leader: true,
            } => format!("leader of {}", coordinators.join(",")),
        }
    }
}

/// A fault and when it is injected and healed, in ms since the run started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Injection.
    pub start_ms: u64,
    /// Heal.
    pub end_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// What a schedule is drawn from.
#[derive(Clone, Debug)]
pub struct Params {
    /// Fixes the schedule.
    pub seed: u64,
    /// The whole run, tail included.
    pub duration: Duration,
    /// The kinds to draw from.
    pub kinds: Vec<Kind>,
    /// Coordinator names.
    pub coordinators: Vec<String>,
    /// Edge names.
    pub edges: Vec<String>,
    /// Regions and their nodes (coordinators first), in runs of several regions.
    pub regions: Vec<(String, Vec<String>)>,
    /// Length of a region's isolation, drawn from this range (ms): long, so that it runs out
    /// of rights and its peers get on without it.
    pub isolate_ms: (u64, u64),
    /// Quiet time between faults, drawn from this range (ms).
    pub gap_ms: (u64, u64),
    /// Length of a fault, drawn from this range (ms).
    pub fault_ms: (u64, u64),
    /// Quiet time at the end: everything healed, the system settles.
    pub tail: Duration,
    /// The largest clock rate error, ppm.
    pub max_rate_ppm: i64,
}

impl Params {
    /// The defaults for a run of `duration` over `kinds`.
    pub fn new(
        seed: u64,
        duration: Duration,
        kinds: Vec<Kind>,
        coordinators: Vec<String>,
        edges: Vec<String>,
    ) -> Params {
        Params {
            seed,
            duration,
            kinds,
            coordinators,
            edges,
            regions: Vec::new(),
            isolate_ms: (20_000, 40_000),
            gap_ms: (1_000, 4_000),
            fault_ms: (3_000, 10_000),
            tail: Duration::from_secs(15),
            max_rate_ppm: 100_000,
        }
    }
}

/// The earliest a segment-corrupt window starts, ms into the run: it needs a sealed segment.
pub const SEGMENT_CORRUPT_FROM_MS: u64 = 30_000;

/// A whole schedule: windows in time order, never overlapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// The seed it came from.
    pub seed: u64,
    /// Its windows.
    pub windows: Vec<Window>,
}

impl Schedule {
    /// Draws the schedule `params` fix.
    pub fn generate(params: &Params) -> Schedule {
        let mut rng = fastrand::Rng::with_seed(params.seed);
        let end = u64::try_from(params.duration.saturating_sub(params.tail).as_millis())
            .unwrap_or(u64::MAX);
        let mut deck = params.kinds.clone();
        rng.shuffle(&mut deck);
        let mut windows = Vec::new();
        let mut t = 0u64;
        loop {
            let gap = rng.u64(params.gap_ms.0..=params.gap_ms.1.max(params.gap_ms.0));
            let mut len = rng.u64(params.fault_ms.0..=params.fault_ms.1.max(params.fault_ms.0));
            let start = t + gap;
            if params.kinds.is_empty() || start + len > end {
                break;
            }
            let kind = match deck.pop() {
                Some(k) => k,
                None => params.kinds[rng.usize(..params.kinds.len())],
            };
            // (Drawn after the kind, so that schedules without it are what they always were.)
            if kind == Kind::RegionIsolate || kind == Kind::EdgeIsolate {
                len = rng.u64(params.isolate_ms.0..=params.isolate_ms.1.max(params.isolate_ms.0));
                if start + len > end {
                    // Too long for what is left: perhaps a shorter fault fits after the gap.
                    t = start;
                    continue;
                }
            }
            if kind == Kind::SegmentCorrupt && start < SEGMENT_CORRUPT_FROM_MS {
                // No segment is sealed this early (long seed 12: the first, 200 records, came
                // 14 s into the run, after the fault had waited 10 s for one). The kind goes to
                // the bottom of the deck, and this slot stays quiet.
                deck.insert(0, kind);
                t = start;
                continue;
            }
            if let Some((lo, hi)) = money_len_ms(kind) {
                len = rng.u64(lo..=hi);
                if start + len > end {
                    t = start;
                    continue;
                }
            }
            let Some(fault) = draw(&mut rng, kind, params) else {
                // The topology cannot have this fault; its slot stays quiet.
                t = start;
                continue;
            };
            windows.push(Window {
                start_ms: start,
                end_ms: start + len,
                fault,
            });
            t = start + len;
        }
        Schedule {
            seed: params.seed,
            windows,
        }
    }

    /// The kinds it injects.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut k: Vec<Kind> = Vec::new();
        for w in &self.windows {
            if !k.contains(&w.fault.kind()) {
                k.push(w.fault.kind());
            }
        }
        k
    }
}

/// The length of the faults whose length is their point (ms), drawn after the kind.
fn money_len_ms(kind: Kind) -> Option<(u64, u64)> {
    match kind {
        // Longer than a lease (5 s in a run).
        Kind::LeaderPause => Some((6_000, 9_000)),
        // The lease's reclaim falls due 8 s after its grant: the pause lands before it.
        Kind::ReclaimElection => Some((14_000, 18_000)),
        Kind::ClockElection => Some((8_000, 12_000)),
        // Long enough that an answer lost at the start is asked for again and again, and that
        // notices wait for their acknowledgements through several check-ins.
        Kind::AckDrop => Some((8_000, 16_000)),
        // Long enough for the new node to catch up and fetch its archive under load.
        Kind::Replace | Kind::DiskCorrupt => Some((20_000, 30_000)),
        // Long enough that a full disk is met (a snapshot, a table flush or a log file must
        // be written under load) and the node stops.
        Kind::DiskFull => Some((8_000, 14_000)),
        // A follower syncs each append it takes: the first fails within a heartbeat.
        Kind::SyncFail => Some((5_000, 8_000)),
        _ => None,
    }
}

/// One fault of `kind` over the topology; `None` when the topology cannot have it (a partition
/// needs two nodes).
fn draw(rng: &mut fastrand::Rng, kind: Kind, p: &Params) -> Option<Fault> {
    let all: Vec<String> = p.coordinators.iter().chain(&p.edges).cloned().collect();
    if all.is_empty() {
        return None;
    }
    if Kind::REGION.contains(&kind) {
        return draw_region(rng, kind, p);
    }
    if Kind::MONEY.contains(&kind) {
        return draw_money(rng, kind, p);
    }
    if matches!(
        kind,
        Kind::Replace | Kind::DiskCorrupt | Kind::DiskFull | Kind::SyncFail
    ) {
        // Removing one of three leaves a majority; a group of fewer cannot lose one.
        if p.coordinators.is_empty() {
            return None;
        }
        let one = &p.coordinators[rng.usize(..p.coordinators.len())];
        let (coords, _) = region_of(p, one);
        if coords.len() < 3 {
            return None;
        }
        let coordinators = coords.into_iter().cloned().collect();
        return Some(match kind {
            Kind::Replace => Fault::Replace { coordinators },
            Kind::DiskCorrupt => Fault::DiskCorrupt { coordinators },
            Kind::SyncFail => Fault::SyncFail {
                coordinators,
                leader: rng.bool(),
            },
            _ => Fault::DiskFull {
                coordinators,
                leader: rng.bool(),
            },
        });
    }
    let any = |rng: &mut fastrand::Rng| all[rng.usize(..all.len())].clone();
    // Process and clock faults hit coordinators more often: they hold the state.
    let node = |rng: &mut fastrand::Rng| {
        if !p.coordinators.is_empty() && rng.u8(..4) != 0 {
            p.coordinators[rng.usize(..p.coordinators.len())].clone()
        } else {
            any(rng)
        }
    };
    Some(match kind {
        Kind::Partition | Kind::OneWay => {
            if all.len() < 2 {
                return None;
            }
            let (a, b) = split(rng, p);
            if kind == Kind::Partition {
                Fault::Partition { a, b }
            } else {
                Fault::OneWay { from: a, to: b }
            }
        }
        Kind::Loss => Fault::Loss {
            node: node(rng),
            percent: rng.u8(10..=60),
        },
        Kind::Duplicate => Fault::Duplicate { node: node(rng) },
        Kind::Delay => Fault::Delay {
            node: node(rng),
            delay_ms: rng.u32(5..=200),
            jitter_ms: rng.u32(0..=50),
        },
        Kind::Kill => Fault::Kill { node: node(rng) },
        Kind::RegionPartition | Kind::RegionIsolate | Kind::RegionKill => return None,
        Kind::EdgeIsolate
        | Kind::LeaderPause
        | Kind::AckDrop
        | Kind::EdgeKill
        | Kind::ExchangeCut
        | Kind::SlowEdge
        | Kind::ReclaimElection
        | Kind::ClockElection
        | Kind::EdgeClock
        | Kind::Replace
        | Kind::DiskCorrupt
        | Kind::DiskFull
        | Kind::SyncFail => return None,
        Kind::SegmentCorrupt => {
            if p.coordinators.is_empty() {
                return None;
            }
            Fault::SegmentCorrupt {
                node: p.coordinators[rng.usize(..p.coordinators.len())].clone(),
            }
        }
        Kind::Pause => Fault::Pause { node: node(rng) },
        Kind::Clock => {
            // Offsets of any size: up to a day either way, some tiny.
            let scale = [
                1_000i64,
                1_000_000,
                60_000_000,
                3_600_000_000,
                86_400_000_000,
            ][rng.usize(..5)];
            let offset_us = rng.i64(-scale..=scale);
            let bound = p.max_rate_ppm.max(0);
            Fault::Clock {
                node: node(rng),
                offset_us,
                rate_ppm: rng.i64(-bound..=bound),
            }
        }
    })
}

/// The coordinators and edges of the region `node` belongs to (all of them in a run of one
/// region).
fn region_of<'a>(p: &'a Params, node: &str) -> (Vec<&'a String>, Vec<&'a String>) {
    let in_region = |n: &&String| {
        p.regions.is_empty()
            || p.regions
                .iter()
                .any(|(_, nodes)| nodes.contains(n) && nodes.iter().any(|m| m == node))
    };
    (
        p.coordinators.iter().filter(in_region).collect(),
        p.edges.iter().filter(in_region).collect(),
    )
}

/// How long `edge-kill` holds the edge cut from its coordinators, at most, waiting for a
/// notice that cannot reach its batch: the edge must die with charges it has not settled.
pub const EDGE_KILL_HOLD_MS: u64 = 2_000;

/// A money-path fault; `None` when the topology has no edge or no coordinator.
fn draw_money(rng: &mut fastrand::Rng, kind: Kind, p: &Params) -> Option<Fault> {
    if p.edges.is_empty() || p.coordinators.is_empty() {
        return None;
    }
    let edge = p.edges[rng.usize(..p.edges.len())].clone();
    let (coords, edges) = region_of(p, &edge);
    let coordinators: Vec<String> = coords.into_iter().cloned().collect();
    if coordinators.is_empty() {
        return None;
    }
    let clock = |rng: &mut fastrand::Rng| {
        let scale = [1_000_000i64, 60_000_000, 3_600_000_000][rng.usize(..3)];
        let bound = p.max_rate_ppm.max(0);
        (rng.i64(-scale..=scale), rng.i64(-bound..=bound))
    };
    Some(match kind {
        Kind::EdgeIsolate => Fault::EdgeIsolate { edge, coordinators },
        Kind::LeaderPause => Fault::LeaderPause { coordinators },
        Kind::AckDrop => Fault::AckDrop { edge, coordinators },
        Kind::EdgeKill => Fault::EdgeKill {
            edges: edges.into_iter().cloned().collect(),
            coordinators,
        },
        Kind::ExchangeCut => Fault::ExchangeCut { edge },
        Kind::SlowEdge => Fault::SlowEdge {
            edge,
            coordinators,
            delay_ms: rng.u32(500..=2_500),
            jitter_ms: rng.u32(0..=300),
        },
        Kind::ReclaimElection => Fault::ReclaimElection {
            edge,
            coordinators,
            pause_at_ms: rng.u64(6_000..=7_500),
            pause_ms: rng.u64(2_000..=3_000),
        },
        Kind::ClockElection => {
            let (offset_us, rate_ppm) = clock(rng);
            Fault::ClockElection {
                follower: rng.usize(1..coordinators.len().max(2)),
                coordinators,
                offset_us,
                rate_ppm,
                pause_ms: 3_000,
            }
        }
        Kind::EdgeClock => {
            let (offset_us, rate_ppm) = clock(rng);
            Fault::EdgeClock {
                edge,
                offset_us,
                rate_ppm,
            }
        }
        _ => return None,
    })
}

/// A fault between regions; `None` with fewer than two.
fn draw_region(rng: &mut fastrand::Rng, kind: Kind, p: &Params) -> Option<Fault> {
    if p.regions.len() < 2 {
        return None;
    }
    let i = rng.usize(..p.regions.len());
    let (region, nodes) = p.regions[i].clone();
    Some(match kind {
        Kind::RegionPartition => {
            let mut j = rng.usize(..p.regions.len() - 1);
            if j >= i {
                j += 1;
            }
            let (b, b_nodes) = p.regions[j].clone();
            Fault::RegionPartition {
                a: region,
                b,
                a_nodes: nodes,
                b_nodes,
            }
        }
        Kind::RegionIsolate => Fault::RegionIsolate {
            region,
            nodes,
            others: p
                .regions
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != i)
                .flat_map(|(_, (_, n))| n.iter().cloned())
                .collect(),
        },
        _ => Fault::RegionKill { region, nodes },
    })
}

/// Two non-empty sides. Usually one coordinator, or a minority of them, with or without
/// edges, against the rest; sometimes the edges against every coordinator.
fn split(rng: &mut fastrand::Rng, p: &Params) -> (Vec<String>, Vec<String>) {
    let all: Vec<String> = p.coordinators.iter().chain(&p.edges).cloned().collect();
    loop {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let edges_alone = !p.edges.is_empty() && !p.coordinators.is_empty() && rng.u8(..4) == 0;
        if edges_alone {
            a.extend(p.edges.iter().cloned());
            b.extend(p.coordinators.iter().cloned());
        } else {
            let mut coords = p.coordinators.clone();
            rng.shuffle(&mut coords);
            let minority = (coords.len().saturating_sub(1) / 2)
                .max(1)
                .min(coords.len());
            let take = rng.usize(1..=minority.max(1));
            for (i, c) in coords.into_iter().enumerate() {
                if i < take { a.push(c) } else { b.push(c) }
            }
            for e in &p.edges {
                if rng.bool() {
                    a.push(e.clone())
                } else {
                    b.push(e.clone())
                }
            }
        }
        if !a.is_empty() && !b.is_empty() {
            return (a, b);
        }
        if all.len() < 2 {
            return (a, b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64, secs: u64, kinds: Vec<Kind>) -> Params {
        Params::new(
            seed,
            Duration::from_secs(secs),
            kinds,
            vec!["c1".into(), "c2".into(), "c3".into()],
            vec!["e1".into(), "e2".into()],
        )
    }

    #[test]
    fn money_faults_aim_at_an_edge_and_its_own_regions_coordinators() {
        let mut p = Params::new(
            9,
            Duration::from_secs(3_600),
            Kind::MONEY.to_vec(),
            vec!["a-c1".into(), "a-c2".into(), "b-c1".into(), "b-c2".into()],
            vec!["a-e1".into(), "a-e2".into(), "b-e1".into()],
        );
        p.regions = vec![
            (
                "a".into(),
                vec!["a-c1".into(), "a-c2".into(), "a-e1".into(), "a-e2".into()],
            ),
            (
                "b".into(),
                vec!["b-c1".into(), "b-c2".into(), "b-e1".into()],
            ),
        ];
        let s = Schedule::generate(&p);
        assert_eq!(s.kinds().len(), Kind::MONEY.len(), "{s:#?}");
        let region = |n: &str| n.split('-').next().unwrap().to_string();
        for w in &s.windows {
            let len = w.end_ms - w.start_ms;
            match &w.fault {
                Fault::EdgeIsolate { edge, coordinators }
                | Fault::AckDrop { edge, coordinators }
                | Fault::SlowEdge {
                    edge, coordinators, ..
                } => {
                    assert!(edge.contains("-e"), "{w:?}");
                    assert!(
                        coordinators.iter().all(|c| region(c) == region(edge)),
                        "{w:?}"
                    );
                    assert_eq!(coordinators.len(), 2, "{w:?}");
                    if matches!(w.fault, Fault::EdgeIsolate { .. }) {
                        assert!(len >= p.isolate_ms.0, "{w:?}");
                    }
                }
                Fault::ReclaimElection {
                    edge,
                    coordinators,
                    pause_at_ms,
                    pause_ms,
                } => {
                    assert!(coordinators.iter().all(|c| region(c) == region(edge)));
                    assert!(pause_at_ms + pause_ms < len, "{w:?}");
                }
                Fault::LeaderPause { coordinators } => {
                    assert!(len > 5_000, "longer than a lease: {w:?}");
                    let r = region(&coordinators[0]);
                    assert!(coordinators.iter().all(|c| region(c) == r));
                }
                Fault::ClockElection {
                    rate_ppm,
                    follower,
                    coordinators,
                    ..
                } => {
                    assert!(rate_ppm.abs() <= p.max_rate_ppm, "{w:?}");
                    assert!((1..coordinators.len()).contains(follower), "{w:?}");
                }
                Fault::EdgeClock { rate_ppm, edge, .. } => {
                    assert!(rate_ppm.abs() <= p.max_rate_ppm, "{w:?}");
                    assert!(edge.contains("-e"), "{w:?}");
                }
                Fault::EdgeKill {
                    edges,
                    coordinators,
                } => {
                    let r = region(&edges[0]);
                    assert!(edges.iter().all(|e| region(e) == r && e.contains("-e")));
                    assert!(
                        coordinators
                            .iter()
                            .all(|c| region(c) == r && c.contains("-c"))
                    );
                }
                _ => {}
            }
        }
    }

    #[test]
    fn a_seed_fixes_the_schedule_and_another_seed_changes_it() {
        let p = params(7, 600, Kind::ALL.to_vec());
        assert_eq!(Schedule::generate(&p), Schedule::generate(&p));
        let q = params(8, 600, Kind::ALL.to_vec());
        assert_ne!(
            Schedule::generate(&p).windows,
            Schedule::generate(&q).windows
        );
    }

    #[test]
    fn windows_are_ordered_apart_and_end_before_the_tail() {
        for seed in 0..200 {
            let p = params(seed, 120, Kind::ALL.to_vec());
            let s = Schedule::generate(&p);
            let end = 120_000 - p.tail.as_millis() as u64;
            let mut last = 0;
            for w in &s.windows {
                assert!(
                    w.start_ms > last && w.end_ms > w.start_ms,
                    "seed {seed}: {w:?}"
                );
                assert!(w.end_ms <= end, "seed {seed}: {w:?} ends in the tail");
                last = w.end_ms;
            }
        }
    }

    #[test]
    fn a_short_run_injects_every_kind_it_asks_for() {
        let kinds = vec![Kind::Partition, Kind::Kill, Kind::Pause, Kind::Clock];
        for seed in 0..200 {
            let s = Schedule::generate(&params(seed, 110, kinds.clone()));
            let mut got = s.kinds();
            got.sort_by_key(|k| k.as_str());
            let mut want = kinds.clone();
            want.sort_by_key(|k| k.as_str());
            assert_eq!(got, want, "seed {seed}: {:#?}", s.windows);
        }
    }

    #[test]
    fn targets_are_nodes_of_the_topology_and_partitions_have_two_sides() {
        let p = params(3, 3_600, Kind::ALL.to_vec());
        let names: Vec<String> = p.coordinators.iter().chain(&p.edges).cloned().collect();
        let s = Schedule::generate(&p);
        assert!(s.windows.len() > 100);
        for w in &s.windows {
            match &w.fault {
                Fault::Partition { a, b } | Fault::OneWay { from: a, to: b } => {
                    assert!(!a.is_empty() && !b.is_empty(), "{w:?}");
                    assert!(a.iter().all(|n| !b.contains(n)), "{w:?}");
                    assert!(a.iter().chain(b).all(|n| names.contains(n)), "{w:?}");
                }
                Fault::Clock { rate_ppm, .. } => assert!(rate_ppm.abs() <= p.max_rate_ppm),
                Fault::Loss { percent, .. } => assert!((1..=100).contains(percent)),
                _ => {}
            }
            if let Fault::Loss { node, .. }
            | Fault::Duplicate { node }
            | Fault::Delay { node, .. }
            | Fault::Kill { node }
            | Fault::Pause { node }
            | Fault::Clock { node, .. } = &w.fault
            {
                assert!(names.contains(node), "{w:?}");
            }
        }
        assert_eq!(s.kinds().len(), Kind::ALL.len());
    }

    #[test]
    fn kinds_parse_from_the_command_line() {
        assert_eq!(Kind::parse_list("all").unwrap(), Kind::all());
        assert!(Kind::all().contains(&Kind::EdgeIsolate));
        let money = Kind::parse_list("kill,money").unwrap();
        assert_eq!(money.len(), 1 + Kind::MONEY.len());
        assert_eq!(money[0], Kind::Kill);
        assert_eq!(
            Kind::parse_list("kill, clock,kill").unwrap(),
            vec![Kind::Kill, Kind::Clock]
        );
        let e = Kind::parse_list("kill,flood").unwrap_err();
        assert!(e.contains("flood") && e.contains("partition"), "{e}");
        assert!(Kind::parse_list("").is_err());
        assert_eq!(Kind::parse_list(" none ").unwrap(), Vec::new());
        assert!(Kind::parse_list("none,kill").is_err());
        // The disk faults are storage faults, and so in `all`.
        assert_eq!(
            Kind::parse_list("storage").unwrap(),
            vec![
                Kind::Replace,
                Kind::DiskCorrupt,
                Kind::DiskFull,
                Kind::SyncFail,
                Kind::SegmentCorrupt
            ]
        );
        for k in [
            Kind::DiskCorrupt,
            Kind::DiskFull,
            Kind::SyncFail,
            Kind::SegmentCorrupt,
        ] {
            assert!(Kind::all().contains(&k), "{k}");
            assert_eq!(Kind::parse_list(k.as_str()).unwrap(), vec![k]);
        }
    }

    #[test]
    fn disk_faults_hit_a_region_of_three_and_a_full_disk_hits_leaders_and_followers() {
        let (mut leader, mut follower) = (0, 0);
        for seed in 0..100 {
            let p = params(
                seed,
                300,
                vec![Kind::DiskCorrupt, Kind::DiskFull, Kind::SyncFail],
            );
            for w in Schedule::generate(&p).windows {
                match w.fault {
                    Fault::DiskCorrupt { coordinators } => assert_eq!(coordinators.len(), 3),
                    Fault::DiskFull {
                        coordinators,
                        leader: l,
                    }
                    | Fault::SyncFail {
                        coordinators,
                        leader: l,
                    } => {
                        assert_eq!(coordinators.len(), 3);
                        if l {
                            leader += 1;
                        } else {
                            follower += 1;
                        }
                    }
                    f => panic!("{f:?}"),
                }
            }
        }
        assert!(leader > 20 && follower > 20, "{leader} {follower}");
        // A region of one has no majority to keep: no disk fault is drawn for it.
        let mut one = params(1, 300, vec![Kind::DiskCorrupt, Kind::DiskFull]);
        one.coordinators.truncate(1);
        assert!(Schedule::generate(&one).windows.is_empty());
    }

    #[test]
    fn a_segment_is_corrupted_only_once_one_can_be_sealed() {
        let mut seen = 0;
        for seed in 0..200 {
            let p = params(seed, 600, Kind::all());
            for w in Schedule::generate(&p).windows {
                if w.fault.kind() == Kind::SegmentCorrupt {
                    seen += 1;
                    assert!(w.start_ms >= SEGMENT_CORRUPT_FROM_MS, "seed {seed}: {w:?}");
                }
            }
        }
        assert!(
            seen >= 200,
            "segment-corrupt drawn {seen} times in 200 schedules"
        );
        // Alone, it still comes, once the time has come.
        let alone = Schedule::generate(&params(12, 120, vec![Kind::SegmentCorrupt]));
        assert!(!alone.windows.is_empty());
    }

    #[test]
    fn a_schedule_round_trips_through_json() {
        let s = Schedule::generate(&params(11, 300, Kind::ALL.to_vec()));
        let text = serde_json::to_string_pretty(&s).unwrap();
        let back: Schedule = serde_json::from_str(&text).unwrap();
        assert_eq!(back, s);
        assert!(text.contains("\"kind\": \""), "{text}");
    }
}

#[cfg(test)]
mod region_tests {
    use super::*;

    #[test]
    fn region_faults_name_whole_regions_and_isolation_is_long() {
        let mut p = Params::new(
            4,
            Duration::from_secs(600),
            vec![Kind::RegionPartition, Kind::RegionIsolate, Kind::RegionKill],
            vec!["a-c1".into(), "b-c1".into(), "c-c1".into()],
            vec!["a-e1".into(), "b-e1".into(), "c-e1".into()],
        );
        // Without regions, there is nothing to draw.
        assert!(Schedule::generate(&p).windows.is_empty());
        p.regions = ["a", "b", "c"]
            .iter()
            .map(|r| (r.to_string(), vec![format!("{r}-c1"), format!("{r}-e1")]))
            .collect();
        let s = Schedule::generate(&p);
        assert_eq!(s.kinds().len(), 3, "{s:?}");
        for w in &s.windows {
            match &w.fault {
                Fault::RegionPartition {
                    a,
                    b,
                    a_nodes,
                    b_nodes,
                } => {
                    assert_ne!(a, b);
                    assert!(a_nodes.iter().all(|n| n.starts_with(a.as_str())));
                    assert!(b_nodes.iter().all(|n| n.starts_with(b.as_str())));
                }
                Fault::RegionIsolate {
                    region,
                    nodes,
                    others,
                } => {
                    assert!(w.end_ms - w.start_ms >= p.isolate_ms.0);
                    assert_eq!((nodes.len(), others.len()), (2, 4));
                    assert!(others.iter().all(|n| !n.starts_with(region.as_str())));
                }
                Fault::RegionKill { region, nodes } => {
                    assert_eq!(nodes, &vec![format!("{region}-c1"), format!("{region}-e1")]);
                }
                other => panic!("not a region fault: {other:?}"),
            }
        }
    }
}
