//! Delay and reordering: packets queued to userspace (iptables' `NFQUEUE` target, which works
//! here where `tc netem` and nftables' `queue` do not), held for a delay with random jitter, and
//! released. Jitter larger than the gap between packets reorders them.
//!
//! [`run`] is the helper's loop (the `chaos delay-helper` command runs it); [`Delay`] starts a
//! helper process, waits until it holds the queue, and only then sends packets to it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::{ensure_private, output, run as run_cmd};
use crate::process::{Proc, Spec};

/// What the helper prints once it holds its queue.
pub const READY: &str = "holding queue";

/// Holds every packet of queue `queue` for `delay` ± `jitter` (uniform), then accepts it, until
/// `until`; then accepts whatever it still holds and returns how many packets it delayed.
pub fn run(queue: u16, delay: Duration, jitter: Duration, until: Instant) -> io::Result<u64> {
    let mut q = nfq::Queue::open()?;
    q.bind(queue)?;
    q.set_queue_max_len(queue, 65_536)?;
    q.set_nonblocking(true);
    println!("{READY} {queue}");
    let mut held: HashMap<u64, nfq::Message> = HashMap::new();
    let mut due: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let (mut next, mut count) = (0u64, 0u64);
    let lo = delay.saturating_sub(jitter);
    let span = (delay + jitter).saturating_sub(lo).as_micros() as u64;
    loop {
        let now = Instant::now();
        while let Some(Reverse((at, k))) = due.peek().copied() {
            if at > now && now < until {
                break;
            }
            due.pop();
            if let Some(mut m) = held.remove(&k) {
                m.set_verdict(nfq::Verdict::Accept);
                q.verdict(m)?;
            }
        }
        if now >= until && held.is_empty() {
            return Ok(count);
        }
        match q.recv() {
            Ok(m) => {
                let hold = lo + Duration::from_micros(fastrand::u64(0..=span));
                held.insert(next, m);
                due.push(Reverse((now + hold, next)));
                next += 1;
                count += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let wake = due.peek().map_or(until, |Reverse((at, _))| *at).min(until);
                let nap = wake
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(1));
                std::thread::sleep(nap.max(Duration::from_micros(50)));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A delay in force: the iptables rule that queues the packets, and the helper holding them.
pub struct Delay {
    rule: Vec<String>,
    helper: Proc,
    max_hold: Duration,
}

impl Delay {
    /// Delays packets from any of `from` to any of `to` by `delay` ± `jitter`, for at most
    /// `limit` (the helper stops by itself then). `helper` is the `chaos` binary; its output goes
    /// to `log`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        helper: &Path,
        queue: u16,
        from: &[Ipv4Addr],
        to: &[Ipv4Addr],
        delay: Duration,
        jitter: Duration,
        limit: Duration,
        log: PathBuf,
    ) -> io::Result<Delay> {
        ensure_private()?;
        if from.is_empty() || to.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a delay needs at least one source and one destination",
            ));
        }
        let _ = std::fs::remove_file(&log);
        let helper = Proc::start(Spec {
            name: format!("delay-helper-{queue}"),
            program: helper.to_path_buf(),
            args: vec![
                "delay-helper".into(),
                "--queue".into(),
                queue.to_string().into(),
                "--delay-ms".into(),
                delay.as_millis().to_string().into(),
                "--jitter-ms".into(),
                jitter.as_millis().to_string().into(),
                "--for-secs".into(),
                limit.as_secs().max(1).to_string().into(),
            ],
            env: vec![],
            log: log.clone(),
        })?;
        // Packets go to the queue only once the helper holds it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(READY)
        {
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "the delay helper did not take queue {queue}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default().trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let list = |a: &[Ipv4Addr]| {
            a.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let rule: Vec<String> = [
            "INPUT",
            "-s",
            &list(from),
            "-d",
            &list(to),
            "-j",
            "NFQUEUE",
            "--queue-num",
            &queue.to_string(),
            "--queue-bypass",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        run_cmd(Command::new("iptables").arg("-A").args(&rule))?;
        Ok(Delay {
            rule,
            helper,
            max_hold: delay + jitter,
        })
    }

    /// How many packets the rule has queued so far.
    pub fn packets(&self) -> io::Result<u64> {
        let out = output(Command::new("iptables").args(["-L", "INPUT", "-v", "-x", "-n"]))?;
        let queue = self.rule[self.rule.len() - 2].as_str();
        Ok(out
            .lines()
            .filter(|l| l.contains("NFQUEUE") && l.contains(&format!("num {queue}")))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// Stops queueing, lets the helper release what it holds, and stops it.
    pub fn heal(mut self) -> io::Result<()> {
        run_cmd(Command::new("iptables").arg("-D").args(&self.rule))?;
        std::thread::sleep(self.max_hold + Duration::from_millis(20));
        self.helper.stop(Duration::from_secs(2))
    }
}
