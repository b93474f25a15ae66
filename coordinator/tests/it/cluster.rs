//! Real regions: three nodes with their own RocksDB, talking gRPC over loopback sockets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use coordinator::ledger::{CampaignConfig, Command, Params, Reply, RequestKey};
use coordinator::node::{Node, NodeConfig, ProposeError};
use shared::bucket::{Bucket, BucketKey};
use shared::log::SpendEvent;
use shared::{BatchId, LeaseId, Money};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const WAIT: Option<Duration> = Some(Duration::from_secs(20));

struct Running {
    node: Arc<Node>,
    addr: String,
    dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

async fn run(id: u64, dir: &Path, listener: TcpListener) -> Running {
    run_with(id, dir, listener, Params::default()).await
}

/// A node whose file's `[leases]` are `file`.
async fn run_with(id: u64, dir: &Path, listener: TcpListener, file: Params) -> Running {
    let addr = listener.local_addr().unwrap().to_string();
    let mut cfg = NodeConfig::new("eu-1".parse().unwrap(), id, dir.to_path_buf());
    cfg.init_params = file;
    // Snapshots every 20 entries, keeping no log behind them: a node that falls behind can
    // only catch up by installing a snapshot.
    cfg.snapshot_every = 20;
    cfg.logs_kept_after_snapshot = 0;
    // Generous election timeouts: a CI machine running several regions at once on 2 cores must
    // not see elections that no fault caused.
    cfg.heartbeat = Duration::from_millis(150);
    cfg.election_timeout = (Duration::from_millis(1_500), Duration::from_millis(3_000));
    let node = Arc::new(Node::start(&cfg).await.unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    let serving = node.clone();
    let server = tokio::spawn(async move {
        coordinator::api::serve_alone(&serving, listener, async move { rx.await.unwrap_or(()) })
            .await
            .unwrap();
    });
    Running {
        node,
        addr,
        dir: dir.to_path_buf(),
        stop: Some(tx),
        server,
    }
}

async fn stop(r: &mut Running) {
    r.node.shutdown().await;
    if let Some(tx) = r.stop.take() {
        let _ = tx.send(());
    }
    (&mut r.server).await.unwrap();
}

struct Region {
    _tmp: tempfile::TempDir,
    nodes: Vec<Running>,
}

async fn region() -> Region {
    region_with(|_| Params::default()).await
}

/// A region whose node `id` has the file `file(id)`.
async fn region_with(file: impl Fn(u64) -> Params) -> Region {
    let tmp = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let mut nodes = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let dir = tmp.path().join(format!("n{}", i + 1));
        let id = i as u64 + 1;
        nodes.push(run_with(id, &dir, l, file(id)).await);
    }
    let members: BTreeMap<u64, String> =
        nodes.iter().map(|r| (r.node.id, r.addr.clone())).collect();
    nodes[0].node.initialize(members).await.unwrap();
    Region { _tmp: tmp, nodes }
}

impl Region {
    /// The index of the running node that is leader, once one is.
    async fn leader(&self) -> usize {
        let live: Vec<&Running> = self.nodes.iter().filter(|r| r.stop.is_some()).collect();
        let id = live[0]
            .node
            .raft
            .wait(WAIT)
            .metrics(
                |m| {
                    m.current_leader.is_some_and(|l| {
                        self.nodes
                            .iter()
                            .any(|r| r.stop.is_some() && r.node.id == l)
                    })
                },
                "a live leader",
            )
            .await
            .unwrap()
            .current_leader
            .unwrap();
        self.nodes.iter().position(|r| r.node.id == id).unwrap()
    }

    /// Proposes at the leader, following a leader change as a client would (the command's key
    /// makes a retry safe); at most 10 tries.
    async fn propose(&self, command: Command) -> Reply {
        for _ in 0..10 {
            let i = self.leader().await;
            match self.nodes[i].node.propose(command.clone()).await {
                Ok((reply, _)) => return reply,
                Err(ProposeError::NotLeader { .. }) => continue,
                Err(e) => panic!("proposal failed: {e}"),
            }
        }
        panic!("no stable leader after 10 tries");
    }

    /// Waits until node `i` purged its Raft log past `index`: a node behind it can only catch
    /// up by installing a snapshot.
    async fn purged_past(&self, i: usize, index: u64) {
        self.nodes[i]
            .node
            .raft
            .wait(WAIT)
            .metrics(
                |m| m.purged.is_some_and(|p| p.index > index),
                "log purged past the stopped node",
            )
            .await
            .unwrap();
    }

    /// Waits until every running node has applied `index`; returns their chain heads.
    async fn heads_at(&self, index: u64) -> Vec<[u8; 32]> {
        let mut heads = Vec::new();
        for r in self.nodes.iter().filter(|r| r.stop.is_some()) {
            r.node
                .raft
                .wait(WAIT)
                .applied_index_at_least(Some(index), "applied")
                .await
                .unwrap();
            heads.push(r.node.state.read(|m| {
                m.ledger().validate().unwrap();
                m.ledger().chain().head()
            }));
        }
        heads
    }
}

fn key(n: u64) -> RequestKey {
    RequestKey(u128::from(n).to_be_bytes())
}

fn setup_commands() -> Vec<Command> {
    let config = CampaignConfig {
        zone: "UTC".into(),
        bid_cpm: Money::from_micros(1_000_000),
        daily_budget: None,
        targeting: Default::default(),
    };
    vec![
        Command::UpsertCampaign {
            key: key(1),
            campaign: "c1".parse().unwrap(),
            config,
        },
        Command::SetBudget {
            key: key(2),
            campaign: "c1".parse().unwrap(),
            bucket: Bucket::Lifetime,
            budget: Money::from_micros(10_000_000),
        },
        Command::GrantLease {
            key: key(3),
            edge: "e1".parse().unwrap(),
            campaign: "c1".parse().unwrap(),
            want: Money::from_micros(2_000_000),
        },
    ]
}

fn report(n: u64) -> Command {
    Command::ReportSpend {
        batch: BatchId(u128::from(n).to_be_bytes()),
        edge: "e1".parse().unwrap(),
        lease: LeaseId(1),
        events: vec![SpendEvent {
            bid: n,
            key: format!("adx/auction-{n}/1").parse().unwrap(),
            amount: Money::from_micros(1_000),
        }],
        losses: vec![],
        held: vec![],
    }
}

fn settled(r: &Running) -> Money {
    let key = BucketKey {
        campaign: "c1".parse().unwrap(),
        bucket: Bucket::Lifetime,
    };
    r.node
        .state
        .read(|m| m.ledger().bucket(&key).map_or(Money::ZERO, |b| b.settled()))
}

/// Every node's file gives a new region different lease rules; the region follows one set,
/// recorded in its log, so that its replicas grant alike and write the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_of_a_region_holds_the_same_chain() {
    let file = |id: u64| Params {
        lease_duration_ms: 20_000 + 5_000 * id,
        late_acceptance_ms: 30_000 + id,
        ..Params::default()
    };
    let mut region = region_with(file).await;
    let mut granted = None;
    for c in setup_commands() {
        if let Reply::LeaseGranted { terms, .. } = region.propose(c).await {
            granted = Some(terms);
        }
    }
    let terms = granted.expect("the lease was granted");
    for n in 100..110 {
        assert!(matches!(
            region.propose(report(n)).await,
            Reply::SpendSettled { settled: 1, .. }
        ));
    }
    let leader = region.leader().await;
    let index = region.nodes[leader].node.state.applied_index();
    let heads = region.heads_at(index).await;
    let detail: Vec<(u64, u64, u64)> = region
        .nodes
        .iter()
        .map(|r| {
            let (applied, next) = r
                .node
                .state
                .read_applied(|m, applied| (applied, m.ledger().chain().next_seq()));
            (r.node.id, applied, next)
        })
        .collect();
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: (node, applied, chain length) {detail:?}, wanted index {index}"
    );
    // One node's file is the region's rules, on every replica, and the lease's terms.
    let rules: Vec<Params> = region
        .nodes
        .iter()
        .map(|r| r.node.state.read(|m| m.ledger().params().clone()))
        .collect();
    assert!(rules.windows(2).all(|w| w[0] == w[1]), "{rules:?}");
    assert!((1..=3).any(|id| rules[0] == file(id)), "{:?}", rules[0]);
    assert_eq!(terms.duration_ms, rules[0].lease_duration_ms);
    // A follower does not apply a proposal; it names the leader.
    let follower = (leader + 1) % 3;
    match region.nodes[follower].node.propose(report(999)).await {
        Err(ProposeError::NotLeader {
            leader: Some((id, addr)),
        }) => {
            assert_eq!(id, region.nodes[leader].node.id);
            assert_eq!(addr, region.nodes[leader].addr);
        }
        other => panic!("a follower applied a proposal: {other:?}"),
    }
    for r in &mut region.nodes {
        stop(r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_loses_nothing_acknowledged_and_a_follower_catches_up_from_disk() {
    let mut region = region().await;
    for c in setup_commands() {
        region.propose(c).await;
    }
    let mut acknowledged = 0i64;
    for n in 0..30 {
        if let Reply::SpendSettled { settled: 1, .. } = region.propose(report(n)).await {
            acknowledged += 1;
        }
    }
    // Stop the leader: a new one is elected among the other two and spending goes on.
    let old = region.leader().await;
    let behind = region.nodes[old].node.state.applied_index();
    let mut stopped = region.nodes.remove(old);
    stop(&mut stopped).await;
    let (old_id, old_addr, old_dir) = (stopped.node.id, stopped.addr.clone(), stopped.dir.clone());
    // Drop it all: the database closes (its lock is released) as after a crash.
    drop(stopped);
    for n in 30..60 {
        if let Reply::SpendSettled { settled: 1, .. } = region.propose(report(n)).await {
            acknowledged += 1;
        }
    }
    // A retried report (same batch id) changes nothing.
    let again = region.propose(report(5)).await;
    assert!(
        matches!(again, Reply::SpendSettled { settled: 1, .. }),
        "a replay returns the first reply: {again:?}"
    );
    let leader = region.leader().await;
    assert_ne!(region.nodes[leader].node.id, old_id);
    let index = region.nodes[leader].node.state.applied_index();
    let heads = region.heads_at(index).await;
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "survivors differ");
    assert_eq!(
        settled(&region.nodes[leader]),
        Money::from_micros(acknowledged * 1_000),
        "every acknowledged report settled exactly once"
    );

    // The old leader restarts from its disk, on its old address, and catches up (by log or by
    // snapshot: snapshots are taken every 20 entries here).
    // The leader purged its log past the stopped node's position: only a snapshot can bring it
    // up to date.
    region.purged_past(leader, behind).await;
    let listener = TcpListener::bind(&old_addr).await.unwrap();
    region.nodes.push(run(old_id, &old_dir, listener).await);
    let heads = region.heads_at(index).await;
    assert_eq!(heads.len(), 3);
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "the restarted node differs"
    );
    assert_eq!(
        settled(region.nodes.last().unwrap()),
        Money::from_micros(acknowledged * 1_000)
    );
    // Its financial log came with the snapshot: every record, none missing.
    let restarted = &region.nodes.last().unwrap().node;
    let next_seq = restarted.state.read(|m| m.ledger().chain().next_seq());
    let records = restarted.state.log_records(0, usize::MAX).unwrap();
    assert_eq!(records.len() as u64, next_seq);
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(i, (seq, _))| *seq == i as u64)
    );

    // Every replica, the restored one included, seals the same segment files byte for byte;
    // they verify, and budgetctl verifies a data directory.
    let mut archives = Vec::new();
    for r in &region.nodes {
        let files = r.node.archive(10).unwrap();
        assert!(files.len() >= 5, "{} segments", files.len());
        assert!(
            r.node.archive(10).unwrap().is_empty(),
            "sealing again writes nothing"
        );
        let contents: Vec<(std::ffi::OsString, Vec<u8>)> = files
            .iter()
            .map(|f| (f.file_name().unwrap().to_owned(), std::fs::read(f).unwrap()))
            .collect();
        archives.push(contents);
        let summary = shared::log::verify_path(&coordinator::archive::segments_dir(&r.dir), None)
            .unwrap()
            .unwrap();
        assert_eq!(summary.entries, files.len() as u64 * 10);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_budgetctl"))
            .arg("audit")
            .arg("verify")
            .arg(&r.dir)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(
        archives.windows(2).all(|w| w[0] == w[1]),
        "replicas sealed different segments"
    );
    for r in &mut region.nodes {
        if r.stop.is_some() {
            stop(r).await;
        }
    }
}

/// Every record of `node`'s financial log read through `Node::read_log` (from RocksDB or from
/// sealed segments), checked as one chain from genesis.
fn whole_log(node: &Node) -> Vec<(u64, Vec<u8>)> {
    let next = node.state.read(|m| m.ledger().chain().next_seq());
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    while (out.len() as u64) < next {
        let got = node.read_log(out.len() as u64, 1_000).unwrap();
        assert!(!got.is_empty(), "read_log({}) returned nothing", out.len());
        out.extend(got);
    }
    let mut v = shared::log::Verifier::new();
    for (i, (seq, r)) in out.iter().enumerate() {
        assert_eq!(*seq, i as u64);
        v.live_record("node", &node.region, r).unwrap();
    }
    assert_eq!(v.head(), node.state.read(|m| m.ledger().chain().head()));
    out
}

/// RocksDB keeps only what is not sealed; a snapshot carries only that. A follower that was
/// down while the others sealed and forgot the log joins by snapshot, fetches the sealed
/// segments it lacks from a peer, verifies them against its own records, and then serves and
/// archives the whole log like the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_joins_by_snapshot_after_the_log_was_sealed_fetches_the_sealed_history() {
    let mut region = region().await;
    for c in setup_commands() {
        region.propose(c).await;
    }
    for n in 0..40 {
        region.propose(report(n)).await;
    }
    let leader = region.leader().await;
    let index = region.nodes[leader].node.state.applied_index();
    region.heads_at(index).await;
    for r in &region.nodes {
        let files = r.node.archive(10).unwrap();
        assert!(files.len() >= 3, "{} segments", files.len());
        // Sealed records left RocksDB: it holds fewer than a segment's worth.
        let stored = r.node.state.log_records(0, usize::MAX).unwrap();
        let (sealed, _) = r.node.archive.sealed();
        assert!(stored.iter().all(|(seq, _)| *seq >= sealed), "{sealed}");
        assert!(stored.len() < 10, "{} records still stored", stored.len());
        // Reads below that come from the segments, and the log is whole.
        whole_log(&r.node);
    }

    // A follower goes down; the others go on, seal, forget, and snapshot past it.
    let follower = (leader + 1) % 3;
    let behind = region.nodes[follower].node.state.applied_index();
    let its_sealed = region.nodes[follower].node.archive.sealed().0;
    let mut stopped = region.nodes.remove(follower);
    stop(&mut stopped).await;
    let (id, addr, dir) = (stopped.node.id, stopped.addr.clone(), stopped.dir.clone());
    drop(stopped);
    for n in 40..80 {
        region.propose(report(n)).await;
    }
    let leader = region.leader().await;
    let index = region.nodes[leader].node.state.applied_index();
    region.heads_at(index).await;
    for r in &region.nodes {
        r.node.archive(10).unwrap();
    }
    // Snapshots are built every 20 entries: the next ones carry only the unsealed tail.
    for n in 80..110 {
        region.propose(report(n)).await;
    }
    region.purged_past(leader, behind).await;
    let listener = TcpListener::bind(&addr).await.unwrap();
    region.nodes.push(run(id, &dir, listener).await);
    let index = region.nodes[region.leader().await]
        .node
        .state
        .applied_index();
    let heads = region.heads_at(index).await;
    assert!(
        heads.windows(2).all(|w| w[0] == w[1]),
        "the rejoined node differs"
    );

    // It installed a snapshot whose records start past its own archive: a gap, which reads
    // refuse rather than answer wrongly, and which sealing does not paper over.
    let joined = region.nodes.last().unwrap().node.clone();
    let (from, until) = joined
        .archive_gap()
        .unwrap()
        .expect("a gap between its archive and the snapshot's records");
    assert_eq!(from, its_sealed);
    assert!(until > from, "{from}..{until}");
    let err = joined.read_log(from, 10).unwrap_err();
    assert!(
        matches!(err, coordinator::node::ReadLogError::NotYetFetched { .. }),
        "{err}"
    );
    assert!(joined.archive(10).unwrap().is_empty());

    // It fetches the missing segments from a peer; then its log is whole and its archive is
    // the others' byte for byte.
    let fetched = joined.fetch_archive_gap().await.unwrap();
    assert_eq!(fetched as u64, (until - from).div_ceil(10));
    assert!(joined.archive_gap().unwrap().is_none());
    let index = region.nodes[region.leader().await]
        .node
        .state
        .applied_index();
    region.heads_at(index).await;
    let mut archives = Vec::new();
    for r in &region.nodes {
        r.node.archive(10).unwrap();
        let logs = whole_log(&r.node);
        assert_eq!(
            logs.len() as u64,
            r.node.state.read(|m| m.ledger().chain().next_seq())
        );
        let dir = coordinator::archive::segments_dir(&r.dir);
        let summary = shared::log::verify_path(&dir, None).unwrap().unwrap();
        assert!(summary.from_genesis);
        assert_eq!(summary.entries, r.node.archive.sealed().0);
        let mut files: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        archives.push(files);
    }
    let shortest = archives.iter().map(Vec::len).min().unwrap();
    assert!(shortest >= 8, "{shortest} segments");
    assert!(
        archives
            .iter()
            .all(|a| a[..shortest] == archives[0][..shortest]),
        "replicas hold different segments"
    );
    for r in &mut region.nodes {
        if r.stop.is_some() {
            stop(r).await;
        }
    }
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn pkey(n: u8) -> Option<pb::IdempotencyKey> {
    Some(pb::IdempotencyKey { key: vec![n; 16] })
}

use shared::proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_grpc_api_round_trips_and_refuses_bad_input_without_changing_anything() {
    let mut region = region().await;
    let leader = region.leader().await;
    let follower = (leader + 1) % 3;
    let addr = region.nodes[leader].addr.clone();
    let mut admin = pb::admin_client::AdminClient::new(channel(&addr).await);
    let mut leases = pb::lease_api_client::LeaseApiClient::new(channel(&addr).await);
    let config = pb::CampaignConfig {
        campaign: "c1".into(),
        time_zone: "UTC".into(),
        bid_cpm_micros: 2_000_000,
        ..Default::default()
    };
    let r = admin
        .upsert_campaign(pb::UpsertCampaignRequest {
            idempotency_key: pkey(1),
            config: Some(config),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        r.result,
        Some(pb::admin_reply::Result::AppliedAtIndex(_))
    ));

    // Edges poll campaigns by version: the full list once, then "unchanged" until a change.
    let listed = leases
        .list_active_campaigns(pb::ListActiveCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!listed.unchanged && listed.version > 0);
    assert_eq!(listed.campaigns.len(), 1);
    assert_eq!(listed.campaigns[0].pacing, "asap");
    let again = leases
        .list_active_campaigns(pb::ListActiveCampaignsRequest {
            known_version: listed.version,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.unchanged && again.campaigns.is_empty());
    assert_eq!(again.version, listed.version);
    // Bad targeting is refused by field name, and nothing changes.
    let bad = pb::CampaignConfig {
        campaign: "c1".into(),
        time_zone: "UTC".into(),
        bid_cpm_micros: 2_000_000,
        formats: vec!["popup".into()],
        ..Default::default()
    };
    let e = admin
        .upsert_campaign(pb::UpsertCampaignRequest {
            idempotency_key: pkey(40),
            config: Some(bad),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("config.formats"), "{}", e.message());
    let unchanged = leases
        .list_active_campaigns(pb::ListActiveCampaignsRequest {
            known_version: listed.version,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(unchanged.unchanged);
    // A change: an edge that says what it holds gets only the campaign that changed; one that
    // does not (no spend version) gets them all.
    admin
        .upsert_campaign(pb::UpsertCampaignRequest {
            idempotency_key: pkey(41),
            config: Some(pb::CampaignConfig {
                campaign: "c2".into(),
                time_zone: "UTC".into(),
                bid_cpm_micros: 1_000_000,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let delta = leases
        .list_active_campaigns(pb::ListActiveCampaignsRequest {
            known_version: listed.version,
            known_spend_version: listed.spend_version,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!delta.unchanged && delta.campaigns_delta, "{delta:?}");
    assert!(delta.version > listed.version);
    let names: Vec<&str> = delta
        .campaigns
        .iter()
        .map(|c| c.campaign.as_str())
        .collect();
    assert_eq!(names, ["c2"]);
    let whole = leases
        .list_active_campaigns(pb::ListActiveCampaignsRequest {
            known_version: listed.version,
            known_spend_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !whole.campaigns_delta && whole.campaigns.len() == 2,
        "{whole:?}"
    );

    let lifetime = pb::BucketKey {
        campaign: "c1".into(),
        bucket: Some(pb::Bucket::from(&Bucket::Lifetime)),
    };
    admin
        .set_budget(pb::SetBudgetRequest {
            idempotency_key: pkey(2),
            bucket: Some(lifetime.clone()),
            budget_micros: 1_000_000,
        })
        .await
        .unwrap();

    // A follower answers with the leader's address.
    let mut at_follower =
        pb::lease_api_client::LeaseApiClient::new(channel(&region.nodes[follower].addr).await);
    let grant = |n: u8, campaign: &str, want: i64| pb::GrantLeaseRequest {
        idempotency_key: pkey(n),
        edge: "e1".into(),
        campaign: campaign.into(),
        want_micros: want,
    };
    let r = at_follower
        .grant_lease(grant(3, "c1", 1_000))
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(r.result, Some(pb::grant_lease_reply::Result::NotLeader(ref l)) if l.leader_addr == addr),
        "{r:?}"
    );

    // Bad input: a clear status, and nothing changes.
    let head_before = region.nodes[leader]
        .node
        .state
        .read(|m| m.ledger().chain().clone());
    let code =
        |r: Result<tonic::Response<pb::GrantLeaseReply>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(leases.grant_lease(grant(4, "c1", -5)).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(leases.grant_lease(grant(4, "c/1", 5)).await),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        code(
            leases
                .grant_lease(pb::GrantLeaseRequest {
                    idempotency_key: Some(pb::IdempotencyKey { key: vec![1; 3] }),
                    ..grant(4, "c1", 5)
                })
                .await
        ),
        tonic::Code::InvalidArgument
    );
    let r = leases
        .grant_lease(grant(5, "nope", 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.result,
        Some(pb::grant_lease_reply::Result::Refused(
            pb::Refusal::UnknownCampaign as i32
        ))
    );

    // A lease, spend under it, release.
    let r = leases
        .grant_lease(grant(6, "c1", 10_000))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::grant_lease_reply::Result::Lease(lease)) = r.result else {
        panic!("no lease: {r:?}")
    };
    assert_eq!(lease.amount_micros, 10_000);
    // Bid `n`'s charge; the exchange's ids are the same for bids 1 and 4 (it reused them).
    let event = |bid: u64, amount: i64| pb::SpendEvent {
        key: Some(pb::EventKey {
            exchange: "adx".into(),
            auction_id: format!("a{}", if bid == 4 { 1 } else { bid }),
            imp_id: "1".into(),
        }),
        amount_micros: amount,
        bid,
    };
    let report = |batch: u8, events: Vec<pb::SpendEvent>| pb::ReportSpendRequest {
        batch_id: vec![batch; 16],
        edge: "e2".into(),
        lease_id: lease.lease_id,
        events,
        losses: vec![],
        held: vec![],
    };
    let bad = leases
        .report_spend(report(20, vec![event(1, -1)]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let bad = leases
        .report_spend(report(20, vec![event(0, 1)]))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("bid"), "{bad:?}");
    let bad = leases
        .report_spend(pb::ReportSpendRequest {
            held: vec![pb::LostBid {
                bid: 1,
                amount_micros: -5,
            }],
            ..report(20, vec![event(1, 1)])
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("held[0]"), "{bad:?}");
    let bad = leases
        .report_spend(pb::ReportSpendRequest {
            lease_id: 999,
            ..report(21, vec![event(1, 1)])
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound);
    assert_eq!(
        region.nodes[leader]
            .node
            .state
            .read(|m| m.ledger().chain().clone())
            .next_seq(),
        head_before.next_seq() + 1,
        "only the lease was logged"
    );
    let r = leases
        .report_spend(report(
            22,
            vec![
                event(1, 3_000),
                event(2, 2_000),
                event(1, 3_000),
                event(3, 6_000),
            ],
        ))
        .await
        .unwrap()
        .into_inner();
    let Some(pb::report_spend_reply::Result::Settled(s)) = r.result else {
        panic!("{r:?}")
    };
    assert_eq!(
        (s.settled_events, s.duplicate_events, s.anomalies),
        (2, 1, 1)
    );
    let r = leases
        .release_lease(pb::ReleaseLeaseRequest {
            batch_id: vec![23; 16],
            edge: "e1".into(),
            lease_id: lease.lease_id,
            unreserved_micros: 5_000,
            bids: 3,
            in_doubt: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.result,
        Some(pb::release_lease_reply::Result::Closed(pb::LeaseClosed {
            spent_micros: 5_000,
            returned_micros: 5_000
        }))
    );
    let b = admin
        .get_balance(pb::GetBalanceRequest {
            bucket: Some(lifetime),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (b.settled_micros, b.leased_micros, b.available_micros),
        (5_000, 0, 995_000)
    );

    // The audit API streams the log, which verifies.
    let mut audit = pb::audit_client::AuditClient::new(channel(&addr).await);
    let head = audit.head(pb::HeadRequest {}).await.unwrap().into_inner();
    let mut stream = audit
        .read_log(pb::ReadLogRequest {
            from_seq: 0,
            max_records: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut w =
        shared::log::SegmentWriter::new(&"eu-1".parse().unwrap(), 0, shared::log::genesis());
    let mut n = 0;
    while let Some(rec) = stream.message().await.unwrap() {
        w.push_record(&rec.record).unwrap();
        n += 1;
    }
    assert_eq!(n, head.seq + 1);
    let mut v = shared::log::Verifier::new();
    v.segment("eu-1-00000000000000000000.seg", &w.seal().unwrap())
        .unwrap();
    let head_hash: [u8; 32] = head.hash.try_into().unwrap();
    v.finish(Some(&head_hash)).unwrap();
    // The leader's metrics show what it did.
    let text = region.nodes[leader].node.render_metrics();
    for want in [
        "budget_commands_total{kind=\"grant_lease\",result=\"applied\"}",
        "budget_commands_total{kind=\"report_spend\",result=\"applied\"} 1",
        "budget_lease_grants_total",
        "budget_settled_micros 5000",
        "budget_storage_sync_seconds_count{store=\"log\"}",
        "budget_raft_term",
        "budget_log_head_seq",
    ] {
        assert!(text.contains(want), "metrics lack {want}:\n{text}");
    }
    // budgetctl verifies the same live log, on every replica (once each has applied it all),
    // to the same head.
    let applied = region.nodes[leader].node.state.applied_index();
    region.heads_at(applied).await;
    for r in &region.nodes {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_budgetctl"))
            .args(["--insecure-plaintext", "--endpoint", &r.addr])
            .args(["audit", "verify-live", "--json"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["summary"]["head_hash"], hex::encode(head_hash));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_budgetctl"))
            .args(["--insecure-plaintext", "--endpoint", &r.addr])
            .args(["audit", "head", "--json"])
            .output()
            .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(j["hash"], hex::encode(head_hash));
    }
    for r in &mut region.nodes {
        stop(r).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_reclaims_an_unreleased_lease_only_after_its_full_wait() {
    use coordinator::ledger::LeaseState;
    use coordinator::reclaim::{Mono, Timers};
    use coordinator::server::reclaim_step;
    let mut region = region().await;
    for c in setup_commands() {
        region.propose(c).await;
    }
    let leader = region.leader().await;
    let node = region.nodes[leader].node.clone();
    // The region's rules (the defaults): 30 s leases, W 10 s, margin 2 s, late acceptance
    // 60 s, exp up to an hour, tmax up to 5 s, clock rate error 1,000 ppm.
    let terms = node
        .state
        .read(|m| m.ledger().lease(LeaseId(1)).unwrap().terms);
    assert_eq!(terms.reclaim_wait_ms(), 42_000);
    // A reclaimed lease's rest waits for the longest hold of its bids (an hour and 5 s),
    // stretched for rate error, then the late-acceptance window.
    let held_secs = terms.doubt_wait_ms(terms.max_hold_ms()).div_ceil(1_000);
    let at = |secs: u64| Mono(Duration::from_secs(1_000 + secs));
    let lease_state = |n: &Node| {
        n.state
            .read(|m| m.ledger().lease(LeaseId(1)).map(|l| l.state.clone()))
    };
    let mut timers = Timers::new();
    // The leader's first tick sees the open lease: its wait starts now.
    assert_eq!(
        reclaim_step(&*node, &mut timers, at(0)).await,
        (vec![], vec![])
    );
    // 30 s lease + 10 s W + 2 s margin = 42 s: not at 41 s.
    assert_eq!(
        reclaim_step(&*node, &mut timers, at(41)).await,
        (vec![], vec![])
    );
    assert_eq!(lease_state(&node), Some(LeaseState::Open));
    // At 42 s it is reclaimed, through the log: every replica holds it in doubt.
    assert_eq!(
        reclaim_step(&*node, &mut timers, at(42)).await,
        (vec![LeaseId(1)], vec![])
    );
    let index = node.state.applied_index();
    region.heads_at(index).await;
    for r in &region.nodes {
        assert!(
            matches!(lease_state(&r.node), Some(LeaseState::InDoubt { .. })),
            "node {}",
            r.node.id
        );
    }
    // Its wait (from the reclaim at 42 s) ends `held_secs` later, not a second before.
    assert_eq!(
        reclaim_step(&*node, &mut timers, at(42 + held_secs - 1)).await,
        (vec![], vec![])
    );
    assert_eq!(
        reclaim_step(&*node, &mut timers, at(42 + held_secs)).await,
        (vec![], vec![(LeaseId(1), terms.max_hold_ms())])
    );
    assert_eq!(lease_state(&node), Some(LeaseState::Closed));
    // A follower's step does nothing, whatever its clock says.
    let follower = &region.nodes[(leader + 1) % 3].node;
    assert_eq!(
        reclaim_step(&**follower, &mut Timers::new(), at(100_000)).await,
        (vec![], vec![])
    );
    // A new leader restarts every wait: a fresh lease granted now is not reclaimed by the new
    // timers until 42 s after they first see it, whatever the old leader's timers said.
    region
        .propose(Command::GrantLease {
            key: key(9),
            edge: "e1".parse().unwrap(),
            campaign: "c1".parse().unwrap(),
            want: Money::from_micros(1_000),
        })
        .await;
    let mut fresh = Timers::new();
    assert_eq!(
        reclaim_step(&*node, &mut fresh, at(50_000)).await,
        (vec![], vec![])
    );
    assert_eq!(
        reclaim_step(&*node, &mut fresh, at(50_041)).await,
        (vec![], vec![])
    );
    assert_eq!(
        reclaim_step(&*node, &mut fresh, at(50_042)).await.0,
        vec![LeaseId(2)]
    );
    for r in &mut region.nodes {
        stop(r).await;
    }
}

fn budgetctl(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_budgetctl"))
        .arg("--insecure-plaintext")
        .arg("--endpoint")
        .arg(addr)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_run_a_region_with_budgetctl() {
    let mut region = region().await;
    let leader = region.leader().await;
    // Sent to a follower: budgetctl follows the redirect to the leader.
    let at = region.nodes[(leader + 1) % 3].addr.clone();
    let run = |args: &[&str]| budgetctl(&at, args);
    let (code, out, err) = run(&[
        "campaign",
        "create",
        "spring",
        "--zone",
        "America/New_York",
        "--bid-cpm",
        "2.50",
        "--daily-budget",
        "20",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(run(&["campaign", "set-budget", "spring", "100"]).0, 0);
    let (code, out, _) = run(&["campaign", "show", "spring", "--json"]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (j["budget_micros"].as_i64(), j["available_micros"].as_i64()),
        (Some(100_000_000), Some(100_000_000))
    );
    let (code, out, _) = run(&["status", "--json"]);
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["members"].as_array().unwrap().len(), 3);
    let (_, out, _) = run(&["campaign", "list"]);
    assert!(
        out.contains("spring") && out.contains("America/New_York"),
        "{out}"
    );
    assert!(out.contains("active"), "{out}");
    // `create` never replaces; `update` changes only what it names.
    let (code, _, err) = run(&["campaign", "create", "spring", "--bid-cpm", "1.00"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("campaign spring exists; use `budgetctl campaign update spring`"),
        "{err}"
    );
    let spring = || -> serde_json::Value {
        let (_, out, _) = budgetctl(&at, &["campaign", "list", "--json"]);
        let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        all.into_iter().find(|c| c["campaign"] == "spring").unwrap()
    };
    let (code, out, err) = run(&[
        "campaign",
        "update",
        "spring",
        "--bid-cpm",
        "3.00",
        "--country",
        "FRA",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let s = spring();
    assert_eq!(s["bid_cpm_micros"], 3_000_000, "{s}");
    assert_eq!(s["countries"], serde_json::json!(["FRA"]), "{s}");
    assert_eq!(s["zone"], "America/New_York", "{s}");
    assert_eq!(s["daily_budget_micros"], 20_000_000, "{s}");
    assert_eq!(
        run(&["campaign", "update", "spring", "--clear", "country"]).0,
        0
    );
    let s = spring();
    assert_eq!(s["countries"], serde_json::json!([]), "{s}");
    assert_eq!(s["bid_cpm_micros"], 3_000_000, "{s}");
    let (code, _, err) = run(&["campaign", "update", "spring", "--clear", "colour"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--clear colour"), "{err}");
    let (code, _, err) = run(&["campaign", "update", "winter", "--bid-cpm", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown campaign winter"), "{err}");
    // A negative price is a value the service refuses, not a flag (exit 1, not 2).
    let (code, _, err) = run(&["campaign", "create", "neg", "--bid-cpm", "-1"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("bid") && !err.contains("unexpected argument"),
        "{err}"
    );
    // A campaign with no budget yet shows its bucket, all zeros, and whose figures they are.
    assert_eq!(run(&["campaign", "create", "zero", "--bid-cpm", "1"]).0, 0);
    let (code, out, err) = run(&["campaign", "show", "zero"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("in region eu-1") && out.contains("budget     0.000000"),
        "{out}"
    );
    let (code, out, err) = run(&["campaign", "show", "spring", "--all-regions"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("spring/lifetime") && out.contains("eu-1"),
        "{out}"
    );
    // The region's rules: recorded (the campaign commands above waited for them), shown on
    // any node, changed only where a flag says so, refused when they break a rule.
    let (code, out, err) = run(&["cluster", "params", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let before: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(before["recorded"], true, "{before}");
    assert_eq!(before["max_exp_ms"], 3_600_000);
    let (code, out, err) = run(&["cluster", "params", "set", "--late-acceptance-ms", "45000"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("late_acceptance_ms") && out.contains("45000"),
        "{out}"
    );
    let (_, out, _) = run(&["cluster", "params", "--json"]);
    let after: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(after["late_acceptance_ms"], 45_000);
    for k in [
        "lease_duration_ms",
        "margin_ms",
        "max_exp_ms",
        "lease_min_micros",
    ] {
        assert_eq!(after[k], before[k], "{k} changed");
    }
    let (code, _, err) = run(&["cluster", "params", "set"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least one flag"), "{err}");
    let (code, _, err) = run(&["cluster", "params", "set", "--margin-ms", "1"]);
    assert_eq!(
        code, 1,
        "a margin below duration × rate error is refused: {err}"
    );
    assert!(err.contains("margin"), "{err}");
    let (_, out, _) = run(&["cluster", "params", "--json"]);
    let kept: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(kept["margin_ms"], before["margin_ms"]);
    assert_eq!(run(&["campaign", "pause", "spring"]).0, 0);
    assert!(run(&["campaign", "list"]).1.contains("paused"));
    assert_eq!(run(&["campaign", "resume", "spring"]).0, 0);
    assert!(run(&["campaign", "list"]).1.contains("active"));
    // Refused: exit 1 and the reason.
    let (code, _, err) = run(&["campaign", "set-budget", "autumn", "5"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown campaign autumn"), "{err}");
    let (code, _, err) = run(&[
        "campaign",
        "set-budget",
        "spring",
        "200",
        "--day",
        "2026-02-30",
    ]);
    assert_eq!(code, 2, "a bad date is a usage error");
    assert!(err.contains("--day"), "{err}");
    let (code, _, err) = run(&[
        "campaign",
        "create",
        "x",
        "--zone",
        "Mars/Base",
        "--bid-cpm",
        "1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("Mars/Base"), "{err}");
    assert!(!err.contains("Client specified"), "{err}");
    let (code, _, err) = run(&["campaign", "set-budget", "spring", "-5"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("negative"), "{err}");
    // A day that is over, in the campaign's zone.
    let (code, _, err) = run(&[
        "campaign",
        "set-budget",
        "spring",
        "5",
        "--day",
        "2020-01-01",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("2020-01-01 is over in America/New_York"),
        "{err}"
    );
    // Lowering a budget below what a lease holds: the smallest budget accepted now.
    region
        .propose(Command::GrantLease {
            key: key(77),
            edge: "e1".parse().unwrap(),
            campaign: "spring".parse().unwrap(),
            want: Money::from_micros(10_000_000),
        })
        .await;
    let (code, _, err) = run(&["campaign", "set-budget", "spring", "0.01"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("the budget can go down to") && err.contains("leased or held"),
        "{err}"
    );
    // Nothing of the refused commands reached the budget.
    let (_, out, _) = run(&["campaign", "show", "spring", "--json"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["budget_micros"].as_i64(), Some(100_000_000));
    // Edges: none yet; one registers and checks in; the operator retires it, once.
    let (code, out, err) = run(&["edges", "list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("no edge has registered"), "{out}");
    region
        .propose(Command::CheckIn {
            edge: "edge-9".parse().unwrap(),
            incarnation: 4,
            covers: 0,
        })
        .await;
    let (code, out, err) = run(&["edges", "list", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["edges"][0]["edge"], "edge-9", "{j}");
    assert_eq!(j["edges"][0]["incarnation"], 4, "{j}");
    assert_eq!(j["parts_waiting"], 0, "{j}");
    let (code, out, err) = run(&["edges", "retire", "edge-9"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("edge-9 retired"), "{out}");
    let (code, _, err) = run(&["edges", "retire", "edge-9"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no registered edge edge-9"), "{err}");
    // No server there: a usage error naming the address, each cause once.
    let (code, _, err) = budgetctl("127.0.0.1:1", &["status"]);
    assert_eq!(code, 2);
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.matches("tcp connect error").count() <= 1, "{err}");
    // The help says what budgetctl is and its exit codes; offline commands list no endpoint.
    let (_, out, _) = budgetctl(&at, &["--help"]);
    assert!(
        out.contains("operates and audits the budget service"),
        "{out}"
    );
    assert!(out.contains("Exit codes: 0 done; 1 refused"), "{out}");
    for args in [
        &["certs", "--help"][..],
        &["certs", "issue", "--help"],
        &["audit", "check-proof", "--help"],
        &["audit", "verify", "--help"],
    ] {
        let (_, out, _) = budgetctl(&at, args);
        assert!(!out.contains("--endpoint"), "{args:?}: {out}");
    }
    let (_, out, _) = budgetctl(&at, &["campaign", "show", "--help"]);
    assert!(out.contains("--endpoint"), "{out}");
    for r in &mut region.nodes {
        stop(r).await;
    }
}

/// A quiet region's log is sealed all the same: a segment left open for the seal interval is
/// ended by a replicated `SealSegment`, and the archive verifies offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_segment_is_sealed_after_its_interval_however_few_its_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut r = run(1, tmp.path(), listener).await;
    r.node
        .initialize(BTreeMap::from([(1, r.addr.clone())]))
        .await
        .unwrap();
    let mut n = 0;
    for c in setup_commands() {
        // Bounded: a single node elects itself at once.
        for _ in 0..100 {
            match r.node.propose(c.clone()).await {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        n += 1;
    }
    assert_eq!(n, 3);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let archiver = tokio::spawn(coordinator::server::archive_loop(
        r.node.clone(),
        10_000,
        Duration::from_secs(1),
        coordinator::server::Config::default().scrub_bytes_per_second,
        stop_rx,
    ));
    let segments = tmp.path().join("segments");
    let mut sealed = None;
    for _ in 0..100 {
        if let Ok(Ok(summary)) = shared::log::verify_path(&segments, None)
            && summary.entries > 0
        {
            sealed = Some(summary);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    archiver.await.unwrap();
    let summary = sealed.expect("a segment sealed within 10 s of a 1 s interval");
    // Far fewer than segment_entries: the time, not the count, ended it.
    assert!(
        (1..10_000).contains(&summary.entries),
        "{} entries",
        summary.entries
    );
    let points = r.node.state.read(|m| m.ledger().seal_points().clone());
    assert_eq!(points.iter().next().copied(), Some(summary.entries));
    stop(&mut r).await;
}

/// A proposal of the reclaim loop that is never answered (here: the leader lost both followers,
/// so nothing it proposes commits) ends the step after `LOOP_PROPOSE_TIMEOUT`; the loop goes on,
/// and reclaims once the region has its majority again. (A long `jepsen run` found a leader whose
/// loop awaited such a proposal for ever and never reclaimed a lease again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reclaim_whose_proposal_is_never_answered_does_not_stop_the_loop() {
    use coordinator::ledger::LeaseState;
    use coordinator::reclaim::{Mono, Timers};
    use coordinator::server::{LOOP_PROPOSE_TIMEOUT, reclaim_step};
    let mut region = region().await;
    for c in setup_commands() {
        region.propose(c).await;
    }
    let leader = region.leader().await;
    let node = region.nodes[leader].node.clone();
    let at = |secs: u64| Mono(Duration::from_secs(1_000 + secs));
    let lease_state = |n: &Node| {
        n.state
            .read(|m| m.ledger().lease(LeaseId(1)).map(|l| l.state.clone()))
    };
    let mut timers = Timers::new();
    assert_eq!(
        reclaim_step(&*node, &mut timers, at(0)).await,
        (vec![], vec![])
    );
    // Both followers stop: the leader still leads (nobody can elect another), but nothing it
    // proposes commits.
    let mut gone = Vec::new();
    for i in (0..3).filter(|&i| i != leader).rev() {
        let mut r = region.nodes.remove(i);
        stop(&mut r).await;
        gone.push((r.node.id, r.addr.clone(), r.dir.clone()));
        drop(r);
    }
    let leader = region.leader().await;
    assert_eq!(region.nodes[leader].node.id, node.id);
    // The reclaim falls due; its proposal is never answered, and the step ends anyway.
    let step = tokio::time::timeout(
        LOOP_PROPOSE_TIMEOUT + Duration::from_secs(20),
        reclaim_step(&*node, &mut timers, at(42)),
    )
    .await
    .expect("a reclaim step waited for ever on a proposal nobody answers");
    assert_eq!(step, (vec![LeaseId(1)], vec![]));
    assert_eq!(lease_state(&node), Some(LeaseState::Open));
    // The followers come back: what the leader proposed commits, or the next steps propose it
    // again; either way the lease is reclaimed on every replica.
    for (id, addr, dir) in gone {
        let listener = TcpListener::bind(&addr).await.unwrap();
        region.nodes.push(run(id, &dir, listener).await);
    }
    let mut secs = 43;
    while !matches!(lease_state(&node), Some(LeaseState::InDoubt { .. })) {
        assert!(
            secs < 43 + 60,
            "the lease was never reclaimed after the majority returned"
        );
        let _ = tokio::time::timeout(
            LOOP_PROPOSE_TIMEOUT + Duration::from_secs(20),
            reclaim_step(&*node, &mut timers, at(secs)),
        )
        .await
        .expect("a reclaim step waited for ever");
        node.raft
            .wait(Some(Duration::from_secs(1)))
            .applied_index_at_least(
                Some(node.raft.metrics().borrow().last_log_index.unwrap_or(0)),
                "applied",
            )
            .await
            .ok();
        secs += 1;
    }
    let index = node.state.applied_index();
    region.heads_at(index).await;
    for r in &region.nodes {
        assert!(
            matches!(lease_state(&r.node), Some(LeaseState::InDoubt { .. })),
            "node {}",
            r.node.id
        );
    }
    for r in &mut region.nodes {
        stop(r).await;
    }
}

/// Spend reports take turns for `spend_in_flight` (2 here) places in the log: a grant proposed
/// while many wait at the leader enters the log ahead of those still waiting, not behind all
/// of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_enters_the_log_ahead_of_spend_reports_waiting_their_turn() {
    let mut region = region().await;
    for c in setup_commands() {
        region.propose(c).await;
    }
    let leader = region.nodes[region.leader().await].node.clone();
    let reports: Vec<_> = (1_001..=1_030)
        .map(|n| {
            let node = leader.clone();
            tokio::spawn(async move { node.propose(report(n)).await })
        })
        .collect();
    // Wait (bounded) until most of them wait at the leader for their turn.
    let began = std::time::Instant::now();
    while leader.spend_waiting() < 20 {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "only {} reports ever waited for their turn",
            leader.spend_waiting()
        );
        tokio::task::yield_now().await;
    }
    let (reply, grant_index) = leader
        .propose(Command::GrantLease {
            key: key(100),
            edge: "e1".parse().unwrap(),
            campaign: "c1".parse().unwrap(),
            want: Money::from_micros(1_000),
        })
        .await
        .unwrap();
    assert!(matches!(reply, Reply::LeaseGranted { .. }), "{reply:?}");
    let mut after = 0;
    for r in reports {
        let (reply, index) = r.await.unwrap().unwrap();
        assert!(
            matches!(reply, Reply::SpendSettled { settled: 1, .. }),
            "{reply:?}"
        );
        if index > grant_index {
            after += 1;
        }
    }
    assert!(
        after >= 15,
        "the grant (index {grant_index}) went in behind all but {after} of 30 waiting reports"
    );
    for r in &mut region.nodes {
        stop(r).await;
    }
}
