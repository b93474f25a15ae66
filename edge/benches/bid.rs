//! Bid throughput and latency of the edge, side by side in one run with a bare hyper server
//! that answers 204 to the same requests: the HTTP stack's own limit on this machine.
//!
//! ```sh
//! cargo bench -p edge --bench bid          # or ./dev bench edge
//! ```
//!
//! Both servers run in this process on one tokio runtime of two workers; the load generator
//! runs on its own single-threaded runtime, so all three share the machine's cores the same way
//! for both servers. The edge holds one campaign that bids on any impression and a lease far
//! bigger than the run can spend, so every request exercises the whole bid path: parse, match,
//! price, one atomic reservation, a signed notice URL per bid, the JSON answer.
//!
//! 1. **Throughput**: `BENCH_CONNS` keep-alive connections each send a request, wait for its
//!    answer and send the next, for `BENCH_SECS`; rounds alternate bare and edge so that drift
//!    in the machine's speed touches both.
//! 2. **Latency** at half the edge's measured maximum: an open-loop generator. A pacer thread
//!    releases requests on a fixed schedule whether or not earlier ones were answered, and each
//!    latency is measured from the request's scheduled time, not from when a connection got
//!    free to send it. A stalled server therefore shows up in the histogram instead of slowing
//!    the generator down (no coordinated omission). Latencies go into an HDR histogram.
//! 3. **Workers**: the closed loop against the edge and the bare server each on a runtime of
//!    one tokio worker and of two, nothing pinned, the load generator sharing the two cores
//!    with them: how the bid path scales across cores on one machine (the generator's thread
//!    takes most of a core of its own).
//!
//! Environment: `BENCH_SECS` (default 5) per round, `BENCH_ROUNDS` (3), `BENCH_CONNS` (32);
//! `BENCH_PROFILE=edge` (or `bare`) loads that one server for `BENCH_SECS` and stops, for
//! `perf record -C 0`.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge::bidder::Edge;
use edge::config::Config;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use shared::LeaseId;
use tokio::net::{TcpListener, TcpStream};

const PATH: &str = "/openrtb2/bid";

fn env(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a whole number")),
        Err(_) => default,
    }
}

/// One sample request: its body and the OpenRTB version to announce.
#[derive(Clone)]
struct Sample {
    body: Bytes,
    version: &'static str,
}

/// The valid requests of `../shared/openrtb-samples/` (IAB examples and Prebid fixtures).
fn samples() -> Vec<Sample> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/openrtb-samples");
    let mut out = Vec::new();
    for (dir, keep) in [("iab", "-req-"), ("prebid", ".json")] {
        let dir = root.join(dir);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_str().unwrap();
                n.contains(keep) && n.ends_with(".json") && n != "manifest.json"
            })
            .collect();
        files.sort();
        for f in files {
            let version = if f.to_str().unwrap().contains("2.5-") {
                "2.5"
            } else {
                "2.6"
            };
            out.push(Sample {
                body: std::fs::read(&f).unwrap().into(),
                version,
            });
        }
    }
    out
}

/// An edge with one campaign that bids on anything at 1.00 CPM, and a lease that the run cannot
/// exhaust. Its coordinator address answers nothing: the bid path needs no network.
async fn start_edge() -> (Arc<Edge>, String) {
    let config = Config {
        edge_id: "bench".into(),
        coordinators: vec!["127.0.0.1:1".into()],
        ..Config::default()
    };
    let (edge, addr) = edge::fixture::serve_in_process(config).await;
    edge::fixture::bid_on_anything(
        &edge,
        LeaseId(1),
        1_000_000_000_000_000,
        Duration::from_secs(24 * 3600),
    );
    (edge, addr.to_string())
}

/// The bare server: reads the whole request body, answers 204. No routing, no parsing.
async fn start_bare() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                        let _ = req.into_body().collect().await;
                        let mut r = Response::new(Full::new(Bytes::new()));
                        *r.status_mut() = StatusCode::NO_CONTENT;
                        Ok::<_, Infallible>(r)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr.to_string()
}

/// One keep-alive client connection.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: &str) -> Conn {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { send }
    }

    /// Sends one request and reads its whole answer; returns the status.
    async fn call(&mut self, addr: &str, s: &Sample) -> u16 {
        let req = Request::post(PATH)
            .header("host", addr)
            .header("content-type", "application/json")
            .header("x-openrtb-version", s.version)
            .body(Full::new(s.body.clone()))
            .unwrap();
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        status
    }
}

/// Answers counted by status.
#[derive(Default, Debug, Clone, Copy)]
struct Statuses {
    ok: u64,
    no_content: u64,
    other: u64,
}

impl Statuses {
    fn add(&mut self, status: u16) {
        match status {
            200 => self.ok += 1,
            204 => self.no_content += 1,
            _ => self.other += 1,
        }
    }
    fn merge(&mut self, o: Statuses) {
        self.ok += o.ok;
        self.no_content += o.no_content;
        self.other += o.other;
    }
    fn total(&self) -> u64 {
        self.ok + self.no_content + self.other
    }
}

/// Closed loop: `conns` connections send back to back for `secs`; returns answers per second.
async fn closed_loop(
    addr: &str,
    samples: &Arc<Vec<Sample>>,
    conns: usize,
    secs: u64,
) -> (f64, Statuses) {
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for k in 0..conns {
        let addr = addr.to_string();
        let samples = samples.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await;
            let mut st = Statuses::default();
            let mut i = k;
            while Instant::now() < end {
                st.add(c.call(&addr, &samples[i % samples.len()]).await);
                i += conns;
            }
            st
        }));
    }
    let mut st = Statuses::default();
    for t in tasks {
        st.merge(t.await.unwrap());
    }
    let took = start.elapsed().as_secs_f64();
    (st.total() as f64 / took, st)
}

/// Open loop at `rate` requests per second for `secs`: latencies measured from each request's
/// scheduled time, in microseconds. Returns them, the answers, and the pacer's worst lateness.
async fn open_loop(
    addr: &str,
    samples: &Arc<Vec<Sample>>,
    conns: usize,
    rate: u64,
    secs: u64,
) -> (Histogram<u64>, Statuses, u64) {
    let count = rate * secs;
    let (tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(u64, Instant)>>();
    // The pacer: a thread of its own, because tokio's timer has millisecond granularity. It
    // releases request n at start + n / rate. It wakes at most every QUANTUM and then releases
    // every request already due, each stamped with its own scheduled time: a request released
    // late is measured from when it should have gone, so the generator's own lateness counts
    // against the server, never in its favour.
    const QUANTUM: Duration = Duration::from_micros(100);
    let start = Instant::now() + Duration::from_millis(20);
    let pacer = std::thread::spawn(move || {
        // Real-time priority where allowed, so that it wakes on time although it shares its core
        // with the busy generator. It sleeps between releases and cannot starve it.
        // SAFETY: a plain struct passed by reference; pid 0 is this thread.
        unsafe {
            let p = libc::sched_param { sched_priority: 1 };
            libc::sched_setscheduler(0, libc::SCHED_FIFO, &p);
        }
        let due = |n: u64| start + Duration::from_nanos(n * 1_000_000_000 / rate);
        let mut late_max = Duration::ZERO;
        let mut n = 0;
        while n < count {
            let now = Instant::now();
            let next = due(n);
            if next > now {
                std::thread::sleep((next - now).max(QUANTUM));
                continue;
            }
            late_max = late_max.max(now - next);
            let mut batch = Vec::new();
            while n < count && due(n) <= now {
                batch.push((n, due(n)));
                n += 1;
            }
            if tx.send(batch).is_err() {
                break;
            }
        }
        late_max
    });
    // Each connection takes one request at a time from the dispatcher, which hands every due
    // request to a free connection (or to the first one to become free).
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut to_conn = Vec::new();
    let mut tasks = Vec::new();
    for k in 0..conns {
        let (ctx, mut crx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
        to_conn.push(ctx);
        let addr = addr.to_string();
        let samples = samples.clone();
        let done = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(&addr).await;
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut st = Statuses::default();
            while let Some((n, due)) = crx.recv().await {
                st.add(c.call(&addr, &samples[n as usize % samples.len()]).await);
                h.saturating_record(due.elapsed().as_micros() as u64);
                let _ = done.send(k);
            }
            (h, st)
        }));
    }
    drop(done_tx);
    let mut free: std::collections::VecDeque<usize> = (0..conns).collect();
    while let Some(batch) = due_rx.recv().await {
        for job in batch {
            while let Ok(k) = done_rx.try_recv() {
                free.push_back(k);
            }
            let k = match free.pop_front() {
                Some(k) => k,
                None => done_rx
                    .recv()
                    .await
                    .expect("connections outlive the dispatcher"),
            };
            to_conn[k].send(job).expect("connection task alive");
        }
    }
    drop(to_conn);
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut st = Statuses::default();
    for t in tasks {
        let (th, ts) = t.await.unwrap();
        h.add(th).unwrap();
        st.merge(ts);
    }
    let late = tokio::task::spawn_blocking(move || pacer.join().unwrap())
        .await
        .unwrap();
    (h, st, late.as_micros() as u64)
}

/// Keeps the calling thread on `cpu`. Returns false where that is not possible.
fn pin(cpu: usize) -> bool {
    // SAFETY: `set` is a plain bit set owned by this frame; pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Lets the calling thread run on any of the first `cores` CPUs again (a new thread inherits
/// the mask of the thread that made it).
fn unpin(cores: usize) -> bool {
    // SAFETY: as in `pin`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..cores {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The HTTP edge on one tokio worker and on two, and the bare server likewise, under the
/// closed loop, every thread free to run on either core: the load generator's own thread
/// included, which is what a single machine allows (it takes most of a core at these rates).
/// Rounds alternate the four servers. Each runs in its own runtime and has its own edge (the
/// same campaign and lease terms), so nothing but the worker count differs.
fn workers(
    load: &tokio::runtime::Runtime,
    cores: usize,
    samples: &Arc<Vec<Sample>>,
    conns: usize,
    secs: u64,
    rounds: usize,
) {
    unpin(cores);
    let runtime = |n: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .on_thread_start(move || {
                unpin(cores);
            })
            .enable_all()
            .build()
            .unwrap()
    };
    let (one, two) = (runtime(1), runtime(2));
    let (edge1, edge1_addr) = one.block_on(start_edge());
    let (edge2, edge2_addr) = two.block_on(start_edge());
    let bare1 = one.block_on(start_bare());
    let bare2 = two.block_on(start_bare());
    load.block_on(closed_loop(&edge1_addr, samples, conns, 1));
    load.block_on(closed_loop(&edge2_addr, samples, conns, 1));
    println!(
        "workers: the same closed loop, no thread pinned (servers and the load generator share both cores); per round bids or answers/s and CPU busy core 0 / core 1"
    );
    let mut rates = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for round in 1..=rounds {
        let mut line = format!("  round {round}:");
        for (k, (name, addr)) in [
            ("bare 1 worker", &bare1),
            ("edge 1 worker", &edge1_addr),
            ("bare 2 workers", &bare2),
            ("edge 2 workers", &edge2_addr),
        ]
        .into_iter()
        .enumerate()
        {
            let before = cpu_times();
            let (rate, st) = load.block_on(closed_loop(addr, samples, conns, secs));
            let after = cpu_times();
            if name.starts_with("edge") {
                assert_eq!(
                    st.ok,
                    st.total(),
                    "{name} did not bid on every request: {st:?}"
                );
            } else {
                assert_eq!(st.no_content, st.total(), "{name}: {st:?}");
            }
            line += &format!(
                "  {name} {rate:>7.0} ({:>3} %/{:>3} %)",
                busy(&before, &after, 0),
                busy(&before, &after, 1)
            );
            rates[k].push(rate);
        }
        println!("{line}");
    }
    let m: Vec<f64> = rates.iter().map(|r| median(r)).collect();
    println!(
        "  median: bare {:.0} -> {:.0} req/s ({:.2}x), edge {:.0} -> {:.0} bids/s ({:.2}x) from 1 to 2 workers; edge/bare {:.1} % on 1, {:.1} % on 2",
        m[0],
        m[2],
        m[2] / m[0],
        m[1],
        m[3],
        m[3] / m[1],
        m[1] / m[0] * 100.0,
        m[3] / m[2] * 100.0
    );
    drop((edge1, edge2));
    one.shutdown_timeout(Duration::from_secs(1));
    two.shutdown_timeout(Duration::from_secs(1));
}

/// Busy and total jiffies of each CPU, from `/proc/stat`.
fn cpu_times() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// Percent busy of `cpu` between two `cpu_times` readings.
fn busy(before: &[(u64, u64)], after: &[(u64, u64)], cpu: usize) -> u64 {
    match (before.get(cpu), after.get(cpu)) {
        (Some(b), Some(a)) if a.1 > b.1 => (a.0 - b.0) * 100 / (a.1 - b.1),
        _ => 0,
    }
}

/// The edge's `/metrics` page.
async fn metrics_page(addr: &str) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header("host", addr)
        .body(Full::<Bytes>::new(Bytes::new()))
        .unwrap();
    let body = send.send_request(req).await.unwrap().into_body();
    String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned()
}

/// The bound of the `edge_bid_seconds` bucket that holds the 99th percentile of the bids
/// handled between two readings of the page: the time inside the edge's handler.
fn bucket_p99(before: &str, after: &str) -> String {
    let buckets = |page: &str| -> Vec<(String, u64)> {
        page.lines()
            .filter_map(|l| l.strip_prefix("edge_bid_seconds_bucket{le=\""))
            .filter_map(|l| {
                let (le, rest) = l.split_once("\"}")?;
                Some((le.to_string(), rest.trim().parse().ok()?))
            })
            .collect()
    };
    let (b, a) = (buckets(before), buckets(after));
    let total = a.last().map_or(0, |x| x.1) - b.last().map_or(0, |x| x.1);
    for ((le, n_after), (_, n_before)) in a.iter().zip(&b) {
        if (n_after - n_before) * 100 >= total * 99 {
            return match le.parse::<f64>() {
                Ok(secs) => format!("<= {} us", (secs * 1e6).round()),
                Err(_) => format!("<= {le}"),
            };
        }
    }
    "?".to_string()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `n` bids on the samples in turn from `first`, each asserted to be a bid.
fn bid_loop(edge: &Edge, samples: &[Sample], n: usize, first: usize) {
    for i in 0..n {
        let s = &samples[(i + first) % samples.len()];
        let version = if s.version == "2.5" {
            edge::openrtb::Version::V25
        } else {
            edge::openrtb::Version::V26
        };
        let out = edge.bid(0, &s.body, version, Instant::now());
        assert!(matches!(out, edge::bidder::BidOutcome::Bid(_)));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without it: then only a
    // short smoke run, so that the code stays working.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let secs = if smoke { 1 } else { env("BENCH_SECS", 5) };
    let rounds = if smoke { 1 } else { env("BENCH_ROUNDS", 3) } as usize;
    let conns = env("BENCH_CONNS", 32) as usize;
    assert!(
        conns > 0 && rounds > 0 && secs > 0,
        "BENCH_* must be above 0"
    );

    // The servers get CPU 0, the load generator CPU 1: each server is measured on one core of
    // its own, and the generator's cost never comes out of the server's share.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cores >= 2,
        "this benchmark needs 2 cores: one for the server, one for the load"
    );
    let pinned = pin(1);
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(|| {
            pin(0);
        })
        .enable_all()
        .build()
        .unwrap();
    let load = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let all = samples();
    let ((edge, edge_addr), bare_addr) =
        servers.block_on(async { (start_edge().await, start_bare().await) });

    // Keep the requests the edge bids on: the whole bid path, every time.
    let all = Arc::new(all);
    let bidding: Vec<Sample> = load.block_on(async {
        let mut c = Conn::open(&edge_addr).await;
        let mut keep = Vec::new();
        for s in all.iter() {
            if c.call(&edge_addr, s).await == 200 {
                keep.push(s.clone());
            }
        }
        keep
    });
    let bytes: usize = bidding.iter().map(|s| s.body.len()).sum();
    println!(
        "{} of {} valid sample requests get a bid; they are the load (mean body {} bytes)",
        bidding.len(),
        all.len(),
        bytes / bidding.len().max(1)
    );
    assert!(
        bidding.len() * 10 >= all.len() * 8,
        "too few bids: the edge is not set up"
    );
    let samples = Arc::new(bidding);

    // The bid path alone, without HTTP, on the load generator's core.
    let n = if smoke { 10_000 } else { 400_000 };
    let t = Instant::now();
    bid_loop(&edge, &samples, n, 0);
    let alone = t.elapsed().as_secs_f64() / n as f64;
    println!(
        "the bid path alone (parse, match, reserve, sign, encode; no HTTP): {:.2} us per request",
        alone * 1e6
    );
    // The same on both cores at once, one thread pinned to each, the same edge and lease:
    // what the bid path shares between workers (the reservation's atomic, the metrics'
    // counters, the catalog's pointer) shows as a slower bid on each.
    let both = std::thread::scope(|scope| {
        let start = Instant::now();
        let workers: Vec<_> = (0..2)
            .map(|cpu| {
                let (edge, samples) = (&edge, &samples);
                scope.spawn(move || {
                    pin(cpu);
                    bid_loop(edge, samples, n, cpu * 7);
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a bid thread");
        }
        start.elapsed().as_secs_f64()
    });
    println!(
        "the bid path alone on 2 threads (one per core, same edge and lease): {:.2} us per \
         request per thread; {:.0} bids/s against {:.0} on 1 thread ({:.2}x)",
        both * 1e6 / n as f64,
        2.0 * n as f64 / both,
        1.0 / alone,
        (2.0 * n as f64 / both) * alone
    );
    pin(1);

    // Warm both up (connections, allocator, caches).
    load.block_on(closed_loop(&bare_addr, &samples, conns, 1));
    load.block_on(closed_loop(&edge_addr, &samples, conns, 1));

    if let Ok(only) = std::env::var("BENCH_PROFILE") {
        // For `perf record -C 0`: one server under the closed-loop load, nothing else.
        let addr = if only == "bare" {
            &bare_addr
        } else {
            &edge_addr
        };
        let (rate, st) = load.block_on(closed_loop(addr, &samples, conns, secs));
        println!("{only}: {rate:.0} answers/s {st:?}");
        return;
    }
    if !pinned {
        println!("could not pin threads to CPUs: the figures below share the cores freely");
    }
    println!(
        "throughput: {conns} connections, closed loop, {secs} s per round; CPU busy: server core / load core"
    );
    let (mut bare_rates, mut edge_rates) = (Vec::new(), Vec::new());
    let closed = |addr: &str| {
        let before = cpu_times();
        let (rate, st) = load.block_on(closed_loop(addr, &samples, conns, secs));
        let after = cpu_times();
        (rate, st, busy(&before, &after, 0), busy(&before, &after, 1))
    };
    for round in 1..=rounds {
        let (b, bst, bs, bl) = closed(&bare_addr);
        let (e, est, es, el) = closed(&edge_addr);
        assert_eq!(bst.no_content, bst.total(), "bare server: {bst:?}");
        assert_eq!(
            est.ok,
            est.total(),
            "the edge answered something other than a bid: {est:?}"
        );
        println!(
            "  round {round}: bare {b:>7.0} req/s ({bs:>3} %/{bl:>3} %)   edge {e:>7.0} bids/s ({es:>3} %/{el:>3} %)   edge/bare {:.1} %",
            e / b * 100.0
        );
        bare_rates.push(b);
        edge_rates.push(e);
    }
    let (b, e) = (median(&bare_rates), median(&edge_rates));
    println!(
        "  median:  bare {b:>7.0} req/s               edge {e:>7.0} bids/s               edge/bare {:.1} % (target >= 60 %)",
        e / b * 100.0
    );

    let rate = (e / 2.0) as u64;
    println!(
        "latency: open loop at {rate} req/s (half the edge's median maximum), {conns} connections, {secs} s, from the scheduled send time"
    );
    println!(
        "  round server   p50 us   p90 us   p99 us  p99.9 us   max us   answers  pacer late max us  CPU busy  in-server p99"
    );
    for round in 1..=rounds {
        for (name, addr) in [("bare", &bare_addr), ("edge", &edge_addr)] {
            let page_before = load.block_on(metrics_page(&edge_addr));
            let before = cpu_times();
            let (h, st, late) = load.block_on(open_loop(addr, &samples, conns, rate, secs));
            let after = cpu_times();
            let page_after = load.block_on(metrics_page(&edge_addr));
            assert_eq!(st.other, 0, "{name}: {st:?}");
            let in_server = if name == "edge" {
                assert_eq!(
                    st.ok,
                    st.total(),
                    "the edge did not bid on every request: {st:?}"
                );
                bucket_p99(&page_before, &page_after)
            } else {
                "-".to_string()
            };
            println!(
                "  {round:>5} {name:<6} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>18}  {:>3} %/{:>3} %  {in_server:>13}",
                h.value_at_quantile(0.50),
                h.value_at_quantile(0.90),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max(),
                h.len(),
                late,
                busy(&before, &after, 0),
                busy(&before, &after, 1)
            );
        }
    }
    workers(&load, cores, &samples, conns, secs, rounds);
    let m = &edge.metrics;
    println!(
        "edge counters: {} reservations taken, {} refused for no lease, {} for too little left",
        m.reservation_taken.get(),
        m.reservation_no_lease.get(),
        m.reservation_exhausted.get()
    );
    drop(load);
    servers.shutdown_timeout(Duration::from_secs(1));
}
