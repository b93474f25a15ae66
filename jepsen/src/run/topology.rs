//! The topology of a run: coordinators and edges as real processes, each on its own loopback
//! address inside the run's private network namespace, each with a clock the harness can skew.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chaos::process::{Proc, Spec, State};
use shared::clock::Skew;

/// Lease timing every node of the run shares (short, so that a run of minutes sees hundreds of
/// leases granted, released and reclaimed).
pub const LEASE_DURATION_MS: u64 = 5_000;
/// The smallest lease worth granting while more is available (a few bids). The region's
/// default, 0.10, is 6 % of a budget here: with less than that left, one edge's lease took a
/// region's whole remainder and held it for its duration, and the region kept it as its own
/// need instead of giving it to a region with demand (a fault-free run left 1 % of a budget
/// unspent after a 90 s drain).
pub const LEASE_MIN_MICROS: i64 = 10_000;
/// `W`.
pub const SETTLEMENT_WINDOW_MS: u64 = 2_000;
/// At least the lease duration × the largest clock rate error the nemesis injects (10 %).
pub const MARGIN_MS: u64 = 1_000;
/// How long past a bid's deadline the region still accepts its notice, and the exchange still
/// retries one no edge acknowledged. Longer than a region kill (10 s at most) with a restart,
/// so that a notice sent in time to a region whose every process died is delivered within the
/// window the region promises to settle in (a bid of the shortest `exp`, 1 s, included).
pub const LATE_ACCEPTANCE_MS: u64 = 15_000;
/// How often each region's leader looks for day buckets to retire: the day that ends during the
/// load is retired (over by lease duration + settlement + margin + late acceptance, 23 s) while
/// the run goes on, so that I5 and I9 see retirement.
pub const RETIRE_INTERVAL_MS: u64 = 2_000;
/// Financial-log records per sealed segment file.
pub const SEGMENT_ENTRIES: u64 = 200;
/// The `exp` of an impression that has none, seconds (the stand-in, in a run of minutes, for
/// the 300 s a region defaults to).
pub const DEFAULT_EXP_S: u64 = 5;
/// The longest `exp` bid on, seconds (the stand-in for the default 3600 s).
pub const MAX_EXP_S: u64 = 15;
/// The clock rate error the region's rules allow for: the nemesis skews rates by up to 10 %.
pub const CLOCK_RATE_ERROR_PPM: u32 = 100_000;
/// The region's name in a run of one region.
pub const REGION: &str = "jepsen";
/// The regions' names in a run of several.
pub const REGIONS: [&str; 3] = ["eu-1", "us-1", "ap-1"];
/// How often a region's leader pushes its state to its peers in a run of several.
pub const PUSH_INTERVAL_MS: u64 = 500;
/// Raft snapshots every this many entries (a run of minutes writes tens of thousands): often
/// enough that a node down for a fault, or a replacement, catches up by snapshot, and that
/// snapshots are built while sealed records leave RocksDB.
pub const SNAPSHOT_EVERY: u64 = 300;
/// Entries kept behind a snapshot.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 50;
/// The longest one step of a replacement (removing the node, adding the new one) may take.
const REPLACE_STEP: Duration = Duration::from_secs(60);

/// Tries of a membership change (`cluster add`, `cluster remove`).
const MEMBERSHIP_TRIES: u32 = 3;

/// The names of the regions of a run of `n`.
pub fn region_names(n: usize) -> Vec<String> {
    if n <= 1 {
        vec![REGION.to_string()]
    } else {
        REGIONS.iter().take(n).map(|r| (*r).to_string()).collect()
    }
}

/// What a node is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A coordinator: Raft, ledger, leases.
    Coordinator,
    /// An edge bidder.
    Edge,
}

/// One process of the topology.
pub struct Node {
    /// `coordinator-1`, `edge-2` (in a run of several regions: `eu-1-coordinator-1`).
    pub name: String,
    /// Its region.
    pub region: String,
    /// Its role.
    pub role: Role,
    /// Its own address: it listens there and its outgoing connections leave from it.
    pub ip: Ipv4Addr,
    /// gRPC (coordinator) or HTTP (edge) port.
    pub port: u16,
    /// Where its `/metrics` is served (`ip:port`).
    pub metrics: String,
    /// The skew file its clock follows.
    pub clock_file: PathBuf,
    /// Its data directory (coordinators).
    pub data_dir: PathBuf,
    /// Its Raft node id (coordinators; a replaced one gets a new id, 0 for edges).
    pub node_id: u64,
    /// Its configuration file.
    pub config: PathBuf,
    /// The process.
    pub proc: Proc,
}

impl Node {
    /// `ip:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// Every process of the run.
pub struct Topology {
    /// Coordinators first, then edges.
    pub nodes: Vec<Node>,
    /// The directory with the binaries.
    pub bin_dir: PathBuf,
    /// The wall-clock offset every process starts with (µs), so that a campaign's day ends
    /// during the run.
    pub base_offset_us: i64,
    /// The run's CA and certificates: every gRPC link is mutual TLS, as deployed.
    pub pki: PathBuf,
    /// The harness's own certificate (role operator), for its calls to the coordinators.
    pub operator: shared::tls::Transport,
    /// The highest node id a replacement took.
    pub replacements: u64,
}

/// What to start.
pub struct Plan<'a> {
    /// The run's folder.
    pub dir: &'a Path,
    /// The binaries.
    pub bin_dir: &'a Path,
    /// Regions (at most [`REGIONS`]`.len()`).
    pub regions: usize,
    /// Coordinators per region.
    pub coordinators: usize,
    /// Edges per region.
    pub edges: usize,
    /// Wall-clock offset of every process, µs.
    pub base_offset_us: i64,
    /// The planted bug to run with, if any.
    pub planted_bug: Option<&'a str>,
    /// Every coordinator's data directory is a tmpfs of this many bytes (runs with the
    /// disk-full fault), instead of a directory of the run's folder.
    pub small_disks: Option<u64>,
    /// Every coordinator loads `libchaos_failsync.so` (runs with the sync-fail fault): its
    /// syncs fail while `nodes/<name>.failsync` exists.
    pub fail_sync: bool,
}

fn coordinator_ip(region: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, region as u8, 10 + i as u8)
}

fn edge_ip(region: usize, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, region as u8, 20 + i as u8)
}

/// A node's name in a run of `regions`: `coordinator-1`, or with several regions
/// `eu-1-coordinator-1`.
pub fn node_name(regions: usize, region: &str, what: &str, i: usize) -> String {
    if regions <= 1 {
        format!("{what}-{i}")
    } else {
        format!("{region}-{what}-{i}")
    }
}

/// Writes a skew file: the base offset plus `offset_us`, running at `rate_ppm`.
pub fn write_skew(file: &Path, offset_us: i64, rate_ppm: i64) -> Result<()> {
    let text = Skew {
        offset_us,
        rate_ppm,
    }
    .to_file_text();
    // Write then rename, so that a reader never sees half a file.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}

impl Topology {
    /// Starts the coordinators, initializes the region and waits for a leader, then starts the
    /// edges and waits until they answer.
    pub fn start(plan: &Plan) -> Result<Topology> {
        for bin in ["coordinator", "edge", "budgetctl", "chaos"] {
            let p = plan.bin_dir.join(bin);
            if !p.is_file() {
                bail!(
                    "{} is missing: build the binaries first (cargo build -p coordinator -p edge -p chaos --bins), or say where they are with --bin-dir",
                    p.display()
                );
            }
        }
        let nodes_dir = plan.dir.join("nodes");
        std::fs::create_dir_all(&nodes_dir)?;
        let pki = Pki::new(plan.dir.join("pki"))?;
        let mut t = Topology {
            nodes: Vec::new(),
            bin_dir: plan.bin_dir.to_path_buf(),
            base_offset_us: plan.base_offset_us,
            operator: pki.transport(shared::tls::Role::Operator, "jepsen", &[])?,
            pki: pki.dir.clone(),
            replacements: 0,
        };
        let regions = region_names(plan.regions);
        if plan.regions > REGIONS.len() {
            bail!("at most {} regions", REGIONS.len());
        }
        let peers_of = |k: usize| -> String {
            let mut out = String::new();
            for (p, name) in regions.iter().enumerate() {
                if p == k {
                    continue;
                }
                let addrs: Vec<String> = (1..=plan.coordinators)
                    .map(|i| format!("\"{}:7001\"", coordinator_ip(p, i)))
                    .collect();
                out.push_str(&format!("{name} = [{}]\n", addrs.join(", ")));
            }
            out
        };
        for (k, region) in regions.iter().enumerate() {
            let members: Vec<String> = (1..=plan.coordinators)
                .map(|i| format!("\"{i}\" = \"{}:7001\"", coordinator_ip(k, i)))
                .collect();
            let sync = if regions.len() > 1 {
                format!(
                    "[regions]\npush_interval_ms = {PUSH_INTERVAL_MS}\nhorizon_ms = 5000\n\
                     ask_interval_ms = 250\n\n[regions.peers]\n{}\n",
                    peers_of(k)
                )
            } else {
                String::new()
            };
            for i in 1..=plan.coordinators {
                let name = node_name(regions.len(), region, "coordinator", i);
                let ip = coordinator_ip(k, i);
                let data_dir = nodes_dir.join(&name);
                if let Some(bytes) = plan.small_disks {
                    chaos::netns::mount_small_disk(&data_dir, bytes)
                        .with_context(|| format!("a small disk for {name}"))?;
                }
                let config = nodes_dir.join(format!("{name}.toml"));
                let init = if i == 1 {
                    format!("[init_members]\n{}\n", members.join("\n"))
                } else {
                    String::new()
                };
                std::fs::write(
                    &config,
                    format!(
                        "region = \"{region}\"\nnode_id = {i}\nlisten = \"{ip}:7001\"\n\
                         metrics_listen = \"{ip}:9101\"\noutgoing_address = \"{ip}\"\n\
                         data_dir = \"{}\"\nsegment_entries = {SEGMENT_ENTRIES}\n\
                         retire_interval_ms = {RETIRE_INTERVAL_MS}\n\n\
                         [raft]\nsnapshot_every = {SNAPSHOT_EVERY}\n\
                         logs_kept_after_snapshot = {LOGS_KEPT_AFTER_SNAPSHOT}\n\n\
                         [leases]\nduration_ms = {LEASE_DURATION_MS}\nmin_micros = {LEASE_MIN_MICROS}\n\
                         settlement_window_ms = {SETTLEMENT_WINDOW_MS}\nmargin_ms = {MARGIN_MS}\n\
                         late_acceptance_ms = {LATE_ACCEPTANCE_MS}\n\
                         default_exp_ms = {}\nmax_exp_ms = {}\n\
                         clock_rate_error_ppm = {CLOCK_RATE_ERROR_PPM}\n\n{sync}{init}{}",
                        data_dir.display(),
                        DEFAULT_EXP_S * 1_000,
                        MAX_EXP_S * 1_000,
                        pki.issue(
                            shared::tls::Role::Coordinator,
                            &name,
                            Some(region.as_str()),
                            &[ip.to_string()]
                        )?,
                    ),
                )?;
                let (clock_file, proc) =
                    launch(plan, &name, "coordinator", config.clone(), COORDINATOR_LOG)?;
                t.nodes.push(Node {
                    name,
                    region: region.clone(),
                    role: Role::Coordinator,
                    ip,
                    port: 7001,
                    metrics: format!("{ip}:9101"),
                    clock_file,
                    data_dir,
                    node_id: i as u64,
                    config,
                    proc,
                });
            }
        }
        for region in &regions {
            t.wait_for_leader(region, Duration::from_secs(30))?;
        }
        for (k, region) in regions.iter().enumerate() {
            let coordinators: Vec<String> = t
                .coordinators_of(region)
                .map(|n| format!("\"{}\"", n.addr()))
                .collect();
            // Each region signs its notices with its own key.
            let key: String = format!("jepsen-notice-key-{region}")
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect();
            for e in 1..=plan.edges {
                let name = node_name(regions.len(), region, "edge", e);
                let ip = edge_ip(k, e);
                let config = nodes_dir.join(format!("{name}.toml"));
                std::fs::write(
                    &config,
                    format!(
                        "edge_id = \"{name}\"\nregion = \"{region}\"\nlisten = \"{ip}:8080\"\n\
                         outgoing_address = \"{ip}\"\n\
                         coordinators = [{}]\n\
                         lease_want_micros = 400000\npoll_interval_ms = 500\n\
                         batch_max_delay_ms = 50\nnotice_key_hex = \"{key}\"\n\
                         notice_base_url = \"http://{ip}:8080\"\n{}{}",
                        coordinators.join(", "),
                        super::exchange::edge_exchanges_toml(),
                        pki.issue(shared::tls::Role::Edge, &name, Some(region.as_str()), &[])?,
                    ),
                )?;
                let (clock_file, proc) = launch(plan, &name, "edge", config.clone(), "info")?;
                t.nodes.push(Node {
                    name,
                    region: region.clone(),
                    role: Role::Edge,
                    ip,
                    port: 8080,
                    metrics: format!("{ip}:8080"),
                    clock_file,
                    data_dir: PathBuf::new(),
                    node_id: 0,
                    config,
                    proc,
                });
            }
        }
        Ok(t)
    }

    /// The coordinators.
    pub fn coordinators(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Coordinator)
    }

    /// The edges.
    pub fn edges(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::Edge)
    }

    /// The coordinators of `region`.
    pub fn coordinators_of<'a>(&'a self, region: &'a str) -> impl Iterator<Item = &'a Node> {
        self.coordinators().filter(move |n| n.region == region)
    }

    /// The edges of `region`.
    pub fn edges_of<'a>(&'a self, region: &'a str) -> impl Iterator<Item = &'a Node> {
        self.edges().filter(move |n| n.region == region)
    }

    /// The regions, home first.
    pub fn regions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for n in self.coordinators() {
            if !out.contains(&n.region) {
                out.push(n.region.clone());
            }
        }
        out
    }

    /// The node called `name`.
    pub fn node_mut(&mut self, name: &str) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name}"))
    }

    /// The addresses of the nodes named.
    pub fn ips(&self, names: &[String]) -> Result<Vec<Ipv4Addr>> {
        names
            .iter()
            .map(|n| {
                self.nodes
                    .iter()
                    .find(|x| &x.name == n)
                    .map(|x| x.ip)
                    .with_context(|| format!("no node {n}"))
            })
            .collect()
    }

    /// Every address but `name`'s.
    pub fn others(&self, name: &str) -> Vec<Ipv4Addr> {
        self.nodes
            .iter()
            .filter(|n| n.name != name)
            .map(|n| n.ip)
            .collect()
    }

    /// Runs `budgetctl` against the first coordinator (of the home region); its stdout, or an
    /// error quoting stderr.
    pub fn budgetctl(&self, args: &[&str]) -> Result<String> {
        let home = self.regions().first().cloned().context("no coordinator")?;
        self.budgetctl_in(&home, args)
    }

    /// The first half of replacing coordinator `name` as an operator replaces a failed
    /// replica: SIGKILL, removed from the group (through `leader`), its data directory wiped.
    /// Returns its old node id.
    pub fn retire_coordinator(&mut self, name: &str, leader: &str) -> Result<u64> {
        let via = self.node_mut(leader)?.addr();
        let node = self.node_mut(name)?;
        node.proc.kill()?;
        let (old, dir) = (node.node_id, node.data_dir.clone());
        self.membership(&via, &["cluster", "remove", &old.to_string()])?;
        wipe(&dir).with_context(|| format!("wiping {}", dir.display()))?;
        Ok(old)
    }

    /// The second half: `name` starts again on the same host under a new node id, and is added
    /// back (through `leader`) as a voter, which it becomes once it has caught up (by snapshot,
    /// and the sealed segments it then fetches from its peers). Returns the new id.
    pub fn rejoin_coordinator(&mut self, name: &str, leader: &str) -> Result<u64> {
        let via = self.node_mut(leader)?.addr();
        let region = self.node_mut(name)?.region.clone();
        let new = self
            .coordinators_of(&region)
            .map(|n| n.node_id)
            .max()
            .unwrap_or(0)
            .max(self.replacements)
            + 1;
        self.replacements = new;
        let node = self.node_mut(name)?;
        let (old, config, addr) = (node.node_id, node.config.clone(), node.addr());
        let text = std::fs::read_to_string(&config)
            .with_context(|| format!("reading {}", config.display()))?;
        std::fs::write(&config, replaced_config(&text, old, new)?)
            .with_context(|| format!("writing {}", config.display()))?;
        node.node_id = new;
        node.proc.restart()?;
        // `cluster add` waits for the learner to catch up before it makes it a voter, and
        // budgetctl gives up after 30 s; the learner stays, and the operator runs it again
        // (long seed 15: one add timed out on a loaded machine, and the region was left with
        // two voters, one of which a disk-full then stopped).
        self.membership(&via, &["cluster", "add", &new.to_string(), &addr])?;
        Ok(new)
    }

    /// A membership change through `budgetctl` at `via`, tried up to [`MEMBERSHIP_TRIES`]
    /// times as an operator would: an election in the middle (long seed 16: the leader changed
    /// three times in 30 s on a loaded machine) leaves the change undone, and both `add` and
    /// `remove` may be run again.
    fn membership(&self, via: &str, args: &[&str]) -> Result<String> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.budgetctl_at(via, args, REPLACE_STEP) {
                Ok(out) => return Ok(out),
                // The try before took effect after budgetctl stopped waiting for it.
                Err(e) if tries > 1 && format!("{e:#}").contains("is not a member") => {
                    return Ok(String::new());
                }
                Err(e) if tries < MEMBERSHIP_TRIES => eprintln!(
                    "jepsen: budgetctl {} failed ({tries} of {MEMBERSHIP_TRIES}): {e:#}; again",
                    args.join(" ")
                ),
                Err(e) => return Err(e.context(format!("{tries} tries"))),
            }
        }
    }

    /// Runs `budgetctl` against `endpoint`, for at most `limit`.
    pub fn budgetctl_at(&self, endpoint: &str, args: &[&str], limit: Duration) -> Result<String> {
        let mut child = Command::new(self.bin_dir.join("budgetctl"))
            .arg("--ca")
            .arg(self.pki.join("ca.pem"))
            .arg("--cert")
            .arg(self.pki.join("jepsen.pem"))
            .arg("--key")
            .arg(self.pki.join("jepsen.key"))
            .arg("--endpoint")
            .arg(endpoint)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running budgetctl")?;
        let deadline = Instant::now() + limit;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("budgetctl {} took more than {limit:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "budgetctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `budgetctl` against the first coordinator of `region` (for at most two minutes).
    pub fn budgetctl_in(&self, region: &str, args: &[&str]) -> Result<String> {
        let endpoint = self
            .coordinators_of(region)
            .next()
            .map(Node::addr)
            .context("no coordinator")?;
        self.budgetctl_at(&endpoint, args, Duration::from_secs(120))
    }

    fn wait_for_leader(&self, region: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let last = match self.budgetctl_in(region, &["status", "--json"]) {
                Ok(out) => {
                    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
                    if v["leader"].as_u64().unwrap_or(0) > 0 {
                        return Ok(());
                    }
                    out
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!("{region}: no leader within {limit:?}: {}", last.trim());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// True while every process that should run does (none exited by itself).
    pub fn crashed(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .filter_map(|n| (n.proc.state() == State::Gone).then(|| n.name.clone()))
            .collect()
    }

    /// Stops every process (SIGTERM, then SIGKILL after a grace period); resumes paused ones
    /// first so that they can stop cleanly.
    pub fn stop(&mut self) {
        for n in &mut self.nodes {
            if n.proc.state() == State::Stopped {
                let _ = n.proc.resume();
            }
            if let Err(e) = n.proc.stop(Duration::from_secs(10)) {
                eprintln!("jepsen: stopping {}: {e}", n.name);
            }
        }
    }
}

/// A coordinator's configuration `text` with node id `new` instead of `old`, and without
/// `[init_members]` (a replacement joins the existing group; it must not start a new one).
fn replaced_config(text: &str, old: u64, new: u64) -> Result<String> {
    let mut out = String::new();
    let mut in_init = false;
    let mut found = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_init = line.trim() == "[init_members]";
        }
        if in_init {
            continue;
        }
        if line.trim() == format!("node_id = {old}") {
            out.push_str(&format!("node_id = {new}\n"));
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !found {
        bail!("the configuration names no node_id = {old}");
    }
    Ok(out)
}

/// Starts `program --config CONFIG` as node `name`, with its own skew file (at the run's base
/// offset) and its log in the run's `nodes/` folder.
/// The run's certificate authority and the certificates it signed, as files in `dir`.
struct Pki {
    dir: PathBuf,
    ca: shared::tls::Authority,
}

impl Pki {
    fn new(dir: PathBuf) -> Result<Pki> {
        std::fs::create_dir_all(&dir)?;
        // Valid from 1975 to 4096: the run moves clocks, and certificate expiry is not what it
        // tests.
        let ca =
            shared::tls::Authority::create("jepsen run CA", shared::tls::Validity::unbounded())?;
        std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
        Ok(Pki { dir, ca })
    }

    /// Writes `name`'s certificate and key (a coordinator's names its `region`); returns the
    /// `[tls]` section that uses them.
    fn issue(
        &self,
        role: shared::tls::Role,
        name: &str,
        region: Option<&str>,
        hosts: &[String],
    ) -> Result<String> {
        let (cert, key) = self
            .ca
            .issue(
                role,
                name,
                region,
                hosts,
                shared::tls::Validity::unbounded(),
            )?
            .write_to(&self.dir, name)?;
        Ok(format!(
            "\n[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            self.dir.join("ca.pem").display(),
            cert.display(),
            key.display()
        ))
    }

    fn transport(
        &self,
        role: shared::tls::Role,
        name: &str,
        hosts: &[String],
    ) -> Result<shared::tls::Transport> {
        self.issue(role, name, None, hosts)?;
        Ok(shared::tls::Transport::from_pem(
            self.ca.cert_pem().as_bytes(),
            &std::fs::read(self.dir.join(format!("{name}.pem")))?,
            &std::fs::read(self.dir.join(format!("{name}.key")))?,
            &[role],
        )?)
    }
}

/// The coordinators' log filter: the usual, plus the lease timeline (grants on the leader's
/// monotonic clock) that the reclaim-rule check reads.
pub const COORDINATOR_LOG: &str = "info,openraft=warn,budget::timeline=debug";

fn launch(
    plan: &Plan,
    name: &str,
    program: &str,
    config: PathBuf,
    log_filter: &str,
) -> Result<(PathBuf, Proc)> {
    let nodes_dir = plan.dir.join("nodes");
    let clock_file = nodes_dir.join(format!("{name}.clock"));
    write_skew(&clock_file, plan.base_offset_us, 0)?;
    let proc = Proc::start(Spec {
        name: name.to_string(),
        program: plan.bin_dir.join(program),
        args: vec!["--config".into(), config.into()],
        env: {
            let mut env = env(&clock_file, plan.planted_bug, log_filter);
            if plan.fail_sync && program == "coordinator" {
                let lib = plan.bin_dir.join(FAIL_SYNC_LIB);
                anyhow::ensure!(
                    lib.is_file(),
                    "{} is missing: build it with `cargo build -p chaos-failsync` (the sync-fail fault loads it into every coordinator)",
                    lib.display()
                );
                env.push(("LD_PRELOAD".into(), lib.into()));
                env.push((
                    FAIL_SYNC_ENV.into(),
                    nodes_dir.join(format!("{name}.failsync")).into(),
                ));
            }
            env
        },
        log: nodes_dir.join(format!("{name}.log")),
    })?;
    Ok((clock_file, proc))
}

/// The library that makes a process's syncs fail, and the variable naming its trigger file
/// (`chaos/failsync`).
const FAIL_SYNC_LIB: &str = "libchaos_failsync.so";
const FAIL_SYNC_ENV: &str = "CHAOS_FAIL_SYNC_FILE";

fn env(
    clock_file: &Path,
    planted_bug: Option<&str>,
    log: &str,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env = vec![
        (
            shared::clock::CLOCK_FILE_ENV.into(),
            clock_file.as_os_str().to_owned(),
        ),
        ("RUST_LOG".into(), log.into()),
    ];
    if let Some(bug) = planted_bug {
        env.push((shared::planted::ENV.into(), bug.into()));
    }
    env
}

/// Removes what `dir` holds, leaving the directory (which may be a mount point).
fn wipe(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let path = e?.path();
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}
