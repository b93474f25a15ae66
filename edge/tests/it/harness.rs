//! A region of three in-process coordinators on loopback, and edges: in-process, or as the real
//! `edge` binary (to be killed).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coordinator::ledger::{CampaignConfig, Command, LeaseState, Reply, RequestKey};
use coordinator::node::{Node, NodeConfig, ProposeError};
use coordinator::server::reclaim_loop;
use edge::bidder::Edge;
use edge::config::Config;
use shared::bucket::{Bucket, BucketKey};
use shared::{CampaignId, Money};
use tokio::net::TcpListener;

pub struct Region {
    _tmp: tempfile::TempDir,
    pub nodes: Vec<Arc<Node>>,
    pub addrs: Vec<String>,
    next_key: u64,
}

impl Region {
    pub async fn start() -> Region {
        Region::start_with(30_000).await
    }

    /// A region granting leases of `lease_ms`.
    pub async fn start_with(lease_ms: u64) -> Region {
        let tmp = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for i in 1..=3u64 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(l.local_addr().unwrap().to_string());
            nodes.push(serve(i, &tmp.path().join(format!("n{i}")), l, lease_ms).await);
        }
        let members: BTreeMap<u64, String> = (1..=3u64).zip(addrs.iter().cloned()).collect();
        nodes[0].initialize(members).await.unwrap();
        Region {
            _tmp: tmp,
            nodes,
            addrs,
            next_key: 1,
        }
    }

    /// Proposes at whichever node leads, following elections; at most 50 tries.
    pub async fn propose(&mut self, make: impl Fn(RequestKey) -> Command) -> Reply {
        self.next_key += 1;
        let command = make(RequestKey(u128::from(self.next_key).to_be_bytes()));
        for _ in 0..50 {
            for n in &self.nodes {
                match n.propose(command.clone()).await {
                    Ok((reply, _)) => return reply,
                    Err(ProposeError::NotLeader { .. }) => continue,
                    Err(e) => panic!("proposal failed: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no leader in 5 s");
    }

    /// A campaign bidding `cpm_micros` with a lifetime budget.
    pub async fn campaign(&mut self, name: &str, cpm_micros: i64, budget_micros: i64) {
        let id: CampaignId = name.parse().unwrap();
        let config = CampaignConfig {
            zone: "UTC".into(),
            bid_cpm: Money::from_micros(cpm_micros),
            daily_budget: None,
            targeting: Default::default(),
        };
        let r = self
            .propose(|key| Command::UpsertCampaign {
                key,
                campaign: id.clone(),
                config: config.clone(),
            })
            .await;
        assert!(matches!(r, Reply::CampaignSaved { .. }), "{r:?}");
        let r = self
            .propose(|key| Command::SetBudget {
                key,
                campaign: id.clone(),
                bucket: Bucket::Lifetime,
                budget: Money::from_micros(budget_micros),
            })
            .await;
        assert!(matches!(r, Reply::BudgetSet { .. }), "{r:?}");
    }

    /// Settled spend of a campaign's lifetime bucket, as node 1 has applied it.
    pub fn settled(&self, name: &str) -> i64 {
        let key = BucketKey {
            campaign: name.parse().unwrap(),
            bucket: Bucket::Lifetime,
        };
        self.nodes[0]
            .state
            .read(|m| m.ledger().bucket(&key).map_or(0, |b| b.settled().micros()))
    }

    /// A lease's state as node 1 has applied it.
    pub fn lease_state(&self, id: u64) -> Option<LeaseState> {
        self.nodes[0].state.read(|m| {
            m.ledger()
                .lease(shared::LeaseId(id))
                .map(|l| l.state.clone())
        })
    }
}

async fn serve(id: u64, dir: &Path, listener: TcpListener, lease_ms: u64) -> Arc<Node> {
    let mut cfg = NodeConfig::new("eu-1".parse().unwrap(), id, dir.to_path_buf());
    // Short windows (W = 1 s, and impressions' exp 2 s when absent, at most 10 s), so that money
    // a released lease holds in doubt comes back within the test.
    cfg.init_params = rules(lease_ms);
    cfg.heartbeat = Duration::from_millis(150);
    cfg.election_timeout = (Duration::from_millis(1_500), Duration::from_millis(3_000));
    let node = Arc::new(Node::start(&cfg).await.unwrap());
    let serving = node.clone();
    tokio::spawn(async move {
        coordinator::api::serve_alone(&serving, listener, std::future::pending())
            .await
            .unwrap();
    });
    // The leader's reclaim and in-doubt expiry.
    let (keep, stop) = tokio::sync::watch::channel(false);
    let timed = node.clone();
    tokio::spawn(async move {
        let _keep = keep;
        let clock = Arc::new(timed.clock.clone());
        reclaim_loop(timed, clock, stop).await;
    });
    node
}

/// The test region's rules: leases of `lease_ms`, W 1 s, late acceptance 1 s, `exp` 2 s when an
/// impression has none and at most 10 s, `tmax` at most 1 s.
pub fn rules(lease_ms: u64) -> coordinator::ledger::Params {
    coordinator::ledger::Params {
        lease_duration_ms: lease_ms,
        settlement_window_ms: 1_000,
        margin_ms: 200,
        late_acceptance_ms: 1_000,
        default_exp_ms: 2_000,
        max_exp_ms: 10_000,
        max_tmax_ms: 1_000,
        ..Default::default()
    }
}

/// An edge's configuration for a test: fast polls, the region's coordinators.
pub fn edge_config(name: &str, coordinators: &[String]) -> Config {
    Config {
        edge_id: name.into(),
        listen: "127.0.0.1:0".into(),
        coordinators: coordinators.to_vec(),
        poll_interval_ms: 100,
        ..Config::default()
    }
}

/// An edge served in this process; returns it and its base URL.
pub async fn edge_in_process(config: Config) -> (Arc<Edge>, String) {
    let (edge, addr) = edge::fixture::serve_in_process(config).await;
    (edge, format!("http://{addr}"))
}

/// [`edge_in_process`], once it is registered with its region (it accepts notices from then).
pub async fn registered_edge(config: Config) -> (Arc<Edge>, String) {
    let (edge, base) = edge_in_process(config).await;
    let registered = async {
        while !edge.settler.registered() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), registered)
        .await
        .expect("the edge registers with its region within 20 s");
    (edge, base)
}

/// A free loopback port (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `edge` binary with `config`; killed when dropped.
pub struct EdgeProcess {
    pub child: std::process::Child,
    pub base: String,
    _dir: tempfile::TempDir,
}

impl EdgeProcess {
    pub fn start(mut config: Config) -> EdgeProcess {
        let port = free_port();
        config.listen = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edge.toml");
        let coords: Vec<String> = config
            .coordinators
            .iter()
            .map(|c| format!("{c:?}"))
            .collect();
        let text = format!(
            "edge_id = {:?}\nlisten = {:?}\ncoordinators = [{}]\npoll_interval_ms = {}\nbatch_max_events = {}\nbatch_max_delay_ms = {}\nnotice_timeout_ms = {}\n",
            config.edge_id,
            config.listen,
            coords.join(", "),
            config.poll_interval_ms,
            config.batch_max_events,
            config.batch_max_delay_ms,
            config.notice_timeout_ms,
        );
        std::fs::write(&path, text).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_edge"))
            .arg("--config")
            .arg(&path)
            .arg("--insecure-plaintext")
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        EdgeProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for EdgeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A metric's value in a Prometheus text page (sum over label sets).
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
