//! What the coordinator's benchmarks share: a 3-node region on loopback, in this process, with
//! one campaign whose lifetime budget no run can spend.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coordinator::node::{Node, NodeConfig};
use shared::bucket::Bucket;
use shared::proto::v1 as pb;

/// A running region.
pub struct Region {
    /// Its nodes.
    pub nodes: Vec<Arc<Node>>,
    /// The leader's address.
    pub leader: String,
    /// Every node's address, by node id.
    pub addrs: BTreeMap<u64, String>,
}

impl Region {
    /// A lease client of the node the nodes now agree leads (waits up to 10 s for one), and its
    /// id: how a bench follows a leader change.
    pub async fn leader_client(
        &self,
    ) -> (
        u64,
        pb::lease_api_client::LeaseApiClient<tonic::transport::Channel>,
    ) {
        let leader = wait_leader(&self.nodes[0]).await;
        let client = pb::lease_api_client::LeaseApiClient::new(channel(&self.addrs[&leader]).await);
        (leader, client)
    }
}

/// The leader `node` knows of, once it knows one (at most 10 s).
async fn wait_leader(node: &Node) -> u64 {
    node.raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "leader")
        .await
        .expect("a leader within 10 s")
        .current_leader
        .expect("leader")
}

pub async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("address")
        .connect()
        .await
        .expect("connect")
}

/// Starts 3 nodes in `dir` (each configured by `configure`), serves them on loopback, elects a
/// leader, and creates campaign `c1` with a lifetime budget of `i64::MAX / 2` micros.
pub async fn start_region(dir: &Path, configure: impl Fn(&mut NodeConfig)) -> Region {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    let mut nodes = Vec::new();
    let mut addrs = BTreeMap::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        addrs.insert(id, l.local_addr().expect("addr").to_string());
        let mut cfg = NodeConfig::new(
            "eu-1".parse().expect("region"),
            id,
            dir.join(format!("n{id}")),
        );
        configure(&mut cfg);
        let node = Arc::new(Node::start(&cfg).await.expect("node"));
        let serving = node.clone();
        tokio::spawn(async move {
            coordinator::api::serve_alone(&serving, l, std::future::pending()).await
        });
        nodes.push(node);
    }
    nodes[0].initialize(addrs.clone()).await.expect("init");
    let leader = wait_leader(&nodes[0]).await;
    let addr = addrs[&leader].clone();
    let mut admin = pb::admin_client::AdminClient::new(channel(&addr).await);
    let config = pb::CampaignConfig {
        campaign: "c1".into(),
        time_zone: "UTC".into(),
        bid_cpm_micros: 1_000_000,
        ..Default::default()
    };
    admin
        .upsert_campaign(pb::UpsertCampaignRequest {
            idempotency_key: Some(pb::IdempotencyKey { key: vec![1; 16] }),
            config: Some(config),
        })
        .await
        .expect("campaign");
    let lifetime = pb::BucketKey {
        campaign: "c1".into(),
        bucket: Some(pb::Bucket::from(&Bucket::Lifetime)),
    };
    admin
        .set_budget(pb::SetBudgetRequest {
            idempotency_key: Some(pb::IdempotencyKey { key: vec![2; 16] }),
            bucket: Some(lifetime),
            budget_micros: i64::MAX / 2,
        })
        .await
        .expect("budget");
    Region {
        nodes,
        leader: addr,
        addrs,
    }
}

/// `n` spend events of 1,000 micros each, numbered from `first_bid`, with auction ids unique to
/// `tag`.
pub fn events(tag: &str, first_bid: u64, n: usize) -> Vec<pb::SpendEvent> {
    (0..n)
        .map(|i| pb::SpendEvent {
            bid: first_bid + i as u64,
            key: Some(pb::EventKey {
                exchange: "adx".into(),
                auction_id: format!("{tag}-{i:04}"),
                imp_id: "1".into(),
            }),
            amount_micros: 1_000,
        })
        .collect()
}

/// An environment variable's number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Takes a lease of `c1` for `edge`; panics with the reply if it is not a lease (a refusal, or
/// another leader: the benchmarks do not follow a leader change).
pub async fn grant(
    leases: &mut pb::lease_api_client::LeaseApiClient<tonic::transport::Channel>,
    key: Vec<u8>,
    edge: &str,
    want_micros: i64,
) -> pb::Lease {
    try_grant(leases, key, edge, want_micros)
        .await
        .unwrap_or_else(|e| panic!("no lease: {e}"))
}

/// [`grant`], with what came instead of a lease as the error.
pub async fn try_grant(
    leases: &mut pb::lease_api_client::LeaseApiClient<tonic::transport::Channel>,
    key: Vec<u8>,
    edge: &str,
    want_micros: i64,
) -> Result<pb::Lease, String> {
    let reply = leases
        .grant_lease(pb::GrantLeaseRequest {
            idempotency_key: Some(pb::IdempotencyKey { key }),
            edge: edge.into(),
            campaign: "c1".into(),
            want_micros,
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner()
        .result;
    match reply {
        Some(pb::grant_lease_reply::Result::Lease(lease)) => Ok(lease),
        other => Err(format!("{other:?}")),
    }
}

/// This process's resident memory, bytes.
pub fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
