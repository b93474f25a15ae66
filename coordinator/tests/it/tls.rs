//! Mutual TLS: a real three-node region whose every link is TLS with client certificates, and
//! each role refused where it has no business, with nothing changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use coordinator::node::{Node, NodeConfig};
use shared::proto::v1 as pb;
use shared::tls::{Authority, Role, Transport, Validity};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A CA and the certificates it signed, as files (the binaries read files).
struct Pki {
    dir: tempfile::TempDir,
    ca: Authority,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::create("test CA", Validity::days(2).unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate (a coordinator's or an edge's for region eu-1); returns its
    /// (certificate, key) files.
    fn issue(&self, role: Role, name: &str) -> (PathBuf, PathBuf) {
        self.issue_in(role, name, role.has_region().then_some("eu-1"))
    }

    fn issue_in(&self, role: Role, name: &str, region: Option<&str>) -> (PathBuf, PathBuf) {
        self.ca
            .issue(
                role,
                name,
                region,
                &["127.0.0.1".into()],
                Validity::days(2).unwrap(),
            )
            .unwrap()
            .write_to(self.dir.path(), name)
            .unwrap()
    }

    fn transport(&self, role: Role, name: &str) -> Transport {
        let (cert, key) = self.issue(role, name);
        self.transport_of(role, &cert, &key)
    }

    fn transport_of(&self, role: Role, cert: &Path, key: &Path) -> Transport {
        Transport::from_pem(
            self.ca.cert_pem().as_bytes(),
            &std::fs::read(cert).unwrap(),
            &std::fs::read(key).unwrap(),
            &[role],
        )
        .unwrap()
    }
}

struct Region {
    _tmp: tempfile::TempDir,
    nodes: Vec<Arc<Node>>,
    addrs: Vec<String>,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

/// Three nodes whose Raft, and every API, are mutual TLS.
async fn region(pki: &Pki) -> Region {
    let tmp = tempfile::tempdir().unwrap();
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let (mut nodes, mut stops) = (Vec::new(), Vec::new());
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let mut cfg = NodeConfig::new(
            "eu-1".parse().unwrap(),
            id,
            tmp.path().join(format!("n{id}")),
        );
        cfg.heartbeat = Duration::from_millis(150);
        cfg.election_timeout = (Duration::from_millis(1_500), Duration::from_millis(3_000));
        let name = format!("eu-1-node-{id}");
        let (cert, key) = pki.issue(Role::Coordinator, &name);
        cfg.transport = pki.transport_of(Role::Coordinator, &cert, &key);
        // As `server::run` does: the TLS key signs the log's heads.
        cfg.head_signer = Some(Arc::new(
            shared::log::signed::HeadSigner::from_pem(
                &std::fs::read_to_string(&cert).unwrap(),
                &std::fs::read_to_string(&key).unwrap(),
                &"eu-1".parse().unwrap(),
            )
            .unwrap(),
        ));
        let node = Arc::new(Node::start(&cfg).await.unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = node.clone();
        tokio::spawn(async move {
            coordinator::api::serve_alone(&serving, l, async move { rx.await.unwrap_or(()) })
                .await
                .unwrap();
        });
        nodes.push(node);
        stops.push(tx);
    }
    let members: BTreeMap<u64, String> = (1..=3).zip(addrs.iter().cloned()).collect();
    nodes[0].initialize(members).await.unwrap();
    Region {
        _tmp: tmp,
        nodes,
        addrs,
        stops,
    }
}

impl Region {
    /// Waits for a leader: Raft's votes and heartbeats went over mutual TLS.
    async fn leader_addr(&self) -> String {
        let m = self.nodes[0]
            .raft
            .wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .unwrap();
        let id = m.current_leader.unwrap();
        // The first leader records the region's rules as entry 0: wait for it, so that a
        // test's "nothing changed" does not see it land (it did on a loaded machine).
        let node = &self.nodes[(id - 1) as usize];
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while node.state.read(|m| m.ledger().chain().next_seq()) == 0 {
            assert!(
                std::time::Instant::now() < until,
                "the leader never recorded the rules"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.addrs[(id - 1) as usize].clone()
    }

    async fn stop(self) {
        for n in &self.nodes {
            n.shutdown().await;
        }
        for s in self.stops {
            let _ = s.send(());
        }
    }
}

fn budgetctl(pki: &Pki, who: Option<&str>, endpoint: &str, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_budgetctl"));
    c.env_remove("BUDGETCTL_CA")
        .env_remove("BUDGETCTL_CERT")
        .env_remove("BUDGETCTL_KEY")
        .env_remove("BUDGETCTL_INSECURE_PLAINTEXT")
        .args(["--endpoint", endpoint]);
    if let Some(name) = who {
        let dir = pki.dir.path();
        c.arg("--ca")
            .arg(pki.ca_file())
            .arg("--cert")
            .arg(dir.join(format!("{name}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{name}.key")));
    }
    c.args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// What a refused caller must not have changed: the financial log's head and the campaigns.
async fn state(operator: &Transport, addr: &str) -> (u64, Vec<u8>, Vec<String>) {
    let ch = operator.endpoint(addr).unwrap().connect().await.unwrap();
    let head = pb::audit_client::AuditClient::new(ch.clone())
        .head(pb::HeadRequest {})
        .await
        .unwrap()
        .into_inner();
    let campaigns = pb::lease_api_client::LeaseApiClient::new(ch)
        .list_active_campaigns(pb::ListActiveCampaignsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .campaigns
        .into_iter()
        .map(|c| c.campaign)
        .collect();
    (head.seq, head.hash, campaigns)
}

fn denied<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) {
    match r {
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    }
}

fn evil_campaign() -> pb::UpsertCampaignRequest {
    pb::UpsertCampaignRequest {
        idempotency_key: Some(pb::IdempotencyKey { key: vec![7; 16] }),
        config: Some(pb::CampaignConfig {
            campaign: "evil".into(),
            time_zone: "UTC".into(),
            bid_cpm_micros: 1_000_000,
            ..Default::default()
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_role_calls_only_its_own_apis_and_a_refusal_changes_nothing() {
    let pki = Pki::new();
    let r = region(&pki).await;
    let leader = r.leader_addr().await;
    pki.issue(Role::Operator, "operator");
    pki.issue(Role::Auditor, "auditor");

    // The operator, through the real CLI over mutual TLS.
    for args in [
        &["campaign", "create", "spring", "--bid-cpm", "2.00"][..],
        &["campaign", "set-budget", "spring", "5.00"],
    ] {
        let out = budgetctl(&pki, Some("operator"), &leader, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    // Every node is healthy (a voter, caught up with the leader): what a rolling restart
    // waits for.
    for addr in &r.addrs {
        let out = budgetctl(
            &pki,
            Some("operator"),
            addr,
            &["cluster", "health", "--wait", "20"],
        );
        assert!(out.status.success(), "{addr}: {}", text(&out));
        assert!(text(&out).contains("healthy"), "{}", text(&out));
    }
    let operator = pki.transport(Role::Operator, "operator-2");
    let before = state(&operator, &leader).await;
    assert_eq!(before.2, vec!["spring".to_string()]);

    // An edge: leases yes, admin, Raft and region sync no.
    let edge = pki.transport(Role::Edge, "edge-1");
    let ch = edge.endpoint(&leader).unwrap().connect().await.unwrap();
    let mut admin = pb::admin_client::AdminClient::new(ch.clone());
    denied(
        admin.upsert_campaign(evil_campaign()).await,
        "edge upserts a campaign",
    );
    denied(
        admin
            .cluster_status(pb::ClusterStatusRequest::default())
            .await,
        "edge reads the cluster status",
    );
    denied(
        pb::raft_transport_client::RaftTransportClient::new(ch.clone())
            .vote(pb::RaftMessage {
                region: "eu-1".into(),
                from_node: 9,
                payload: vec![],
            })
            .await,
        "edge sends a Raft vote",
    );
    denied(
        pb::region_sync_client::RegionSyncClient::new(ch.clone())
            .push_state(pb::RegionState {
                from_region: "us-1".into(),
                ..Default::default()
            })
            .await,
        "edge pushes a region state",
    );
    denied(
        pb::audit_client::AuditClient::new(ch.clone())
            .head(pb::HeadRequest {})
            .await,
        "edge reads the log head",
    );
    let listed = pb::lease_api_client::LeaseApiClient::new(ch)
        .list_active_campaigns(pb::ListActiveCampaignsRequest::default())
        .await
        .expect("an edge lists campaigns");
    assert_eq!(listed.into_inner().campaigns.len(), 1);
    // An edge of another region: no leases here, not even the campaign list.
    let (cert, key) = pki.issue_in(Role::Edge, "us-1-edge-1", Some("us-1"));
    let foreign_edge = pki.transport_of(Role::Edge, &cert, &key);
    let ch = foreign_edge
        .endpoint(&leader)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut leases = pb::lease_api_client::LeaseApiClient::new(ch);
    let got = leases
        .list_active_campaigns(pb::ListActiveCampaignsRequest::default())
        .await;
    assert!(
        matches!(&got, Err(s) if s.code() == tonic::Code::PermissionDenied
            && s.message().contains("serves region eu-1 only")),
        "us-1's edge listed eu-1's campaigns: {got:?}"
    );
    let got = leases
        .grant_lease(pb::GrantLeaseRequest {
            idempotency_key: Some(pb::IdempotencyKey { key: vec![9; 16] }),
            edge: "us-1-edge-1".into(),
            campaign: "spring".into(),
            want_micros: 1_000_000,
        })
        .await;
    denied(got, "us-1's edge asks eu-1 for a lease");

    // An auditor: the log yes, anything else no.
    let auditor = pki.transport(Role::Auditor, "auditor-2");
    let ch = auditor.endpoint(&leader).unwrap().connect().await.unwrap();
    pb::audit_client::AuditClient::new(ch.clone())
        .head(pb::HeadRequest {})
        .await
        .expect("an auditor reads the log head");
    denied(
        pb::admin_client::AdminClient::new(ch.clone())
            .upsert_campaign(evil_campaign())
            .await,
        "auditor upserts a campaign",
    );
    denied(
        pb::lease_api_client::LeaseApiClient::new(ch)
            .grant_lease(pb::GrantLeaseRequest {
                idempotency_key: Some(pb::IdempotencyKey { key: vec![8; 16] }),
                edge: "edge-1".into(),
                campaign: "spring".into(),
                want_micros: 1_000_000,
            })
            .await,
        "auditor asks for a lease",
    );
    let out = budgetctl(&pki, Some("auditor"), &leader, &["audit", "head"]);
    assert!(out.status.success(), "auditor audit head: {}", text(&out));
    let out = budgetctl(
        &pki,
        Some("auditor"),
        &leader,
        &["campaign", "set-budget", "spring", "50.00"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("auditor"), "{}", text(&out));

    // A coordinator's certificate is for Raft and region sync, not for the admin API.
    let node_cert = pki.transport(Role::Coordinator, "eu-1-node-9");
    let ch = node_cert
        .endpoint(&leader)
        .unwrap()
        .connect()
        .await
        .unwrap();
    denied(
        pb::admin_client::AdminClient::new(ch.clone())
            .upsert_campaign(evil_campaign())
            .await,
        "coordinator upserts a campaign",
    );
    // Our own region's coordinator passes the guard of Raft: its empty vote is refused for
    // what it is, not for who sent it.
    let vote = || pb::RaftMessage {
        region: "eu-1".into(),
        from_node: 9,
        payload: vec![],
    };
    let ours = pb::raft_transport_client::RaftTransportClient::new(ch.clone())
        .vote(vote())
        .await;
    assert!(
        !matches!(&ours, Err(s) if s.code() == tonic::Code::PermissionDenied),
        "eu-1's own coordinator was refused Raft: {ours:?}"
    );
    // A coordinator of another region: no Raft here, and in region sync it speaks for its own
    // region only.
    let (cert, key) = pki.issue_in(Role::Coordinator, "us-1-node-1", Some("us-1"));
    let foreign = pki.transport_of(Role::Coordinator, &cert, &key);
    let ch = foreign.endpoint(&leader).unwrap().connect().await.unwrap();
    let got = pb::raft_transport_client::RaftTransportClient::new(ch.clone())
        .vote(vote())
        .await;
    assert!(
        matches!(&got, Err(s) if s.code() == tonic::Code::PermissionDenied
            && s.message().contains("serves region eu-1 only")),
        "us-1's coordinator sent eu-1 a Raft vote: {got:?}"
    );
    let mut sync = pb::region_sync_client::RegionSyncClient::new(ch);
    for claimed in ["eu-1", "ap-1"] {
        let got = sync
            .push_state(pb::RegionState {
                from_region: claimed.into(),
                ..Default::default()
            })
            .await;
        assert!(
            matches!(&got, Err(s) if s.code() == tonic::Code::PermissionDenied
                && s.message().contains(&format!("may not speak for region {claimed}"))),
            "us-1's coordinator pushed a state as {claimed}: {got:?}"
        );
        let got = sync
            .request_rights(pb::RightsRequest {
                from_region: claimed.into(),
                ..Default::default()
            })
            .await;
        assert!(
            matches!(&got, Err(s) if s.code() == tonic::Code::PermissionDenied
                && s.message().contains(&format!("may not speak for region {claimed}"))),
            "us-1's coordinator asked for rights as {claimed}: {got:?}"
        );
    }
    // Speaking for itself it passes the certificate check, and is refused as a region that is
    // not a peer of this one.
    let got = sync
        .push_state(pb::RegionState {
            from_region: "us-1".into(),
            ..Default::default()
        })
        .await;
    assert!(
        matches!(&got, Err(s) if s.message().contains("not a configured peer")),
        "us-1 as itself: {got:?}"
    );

    assert_eq!(
        state(&operator, &leader).await,
        before,
        "a refusal changed something"
    );
    r.stop().await;
}

/// Calls the audit head at `addr` through `endpoint`; Ok if it answered.
async fn try_head(endpoint: Result<Endpoint, String>) -> Result<(), String> {
    let ch = endpoint?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    pb::audit_client::AuditClient::new(ch)
        .head(pb::HeadRequest {})
        .await
        .map(|_| ())
        .map_err(|s| format!("call: {s}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_without_a_certificate_of_this_ca_is_refused() {
    let pki = Pki::new();
    let r = region(&pki).await;
    let leader = r.leader_addr().await;
    let operator = pki.transport(Role::Operator, "operator");
    try_head(operator.endpoint(&leader).map_err(|e| e.0))
        .await
        .expect("the operator is served");
    let before = state(&operator, &leader).await;

    // Plaintext to a TLS server.
    let e = try_head(Transport::Plaintext.endpoint(&leader).map_err(|e| e.0)).await;
    assert!(e.is_err(), "plaintext was served");
    // TLS that trusts the CA but shows no certificate.
    let ca = Certificate::from_pem(pki.ca.cert_pem());
    let no_cert = Endpoint::from_shared(format!("https://{leader}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(ca))
        .map_err(|e| e.to_string());
    assert!(
        try_head(no_cert).await.is_err(),
        "a client without a certificate was served"
    );
    // A certificate of another CA, with the very same role and name.
    let other = Pki::new();
    let stranger = Transport::from_pem(
        pki.ca.cert_pem().as_bytes(),
        &std::fs::read(other.issue(Role::Operator, "operator").0).unwrap(),
        &std::fs::read(other.dir.path().join("operator.key")).unwrap(),
        &[],
    )
    .unwrap();
    let e = try_head(stranger.endpoint(&leader).map_err(|e| e.0)).await;
    assert!(e.is_err(), "another CA's certificate was served");
    // A client of another deployment does not trust this one's servers either.
    let outsider = other.transport(Role::Operator, "outsider");
    let e = try_head(outsider.endpoint(&leader).map_err(|e| e.0)).await;
    assert!(e.is_err(), "a server of another CA was trusted");

    // The CLI says what is missing.
    let out = budgetctl(&pki, None, &leader, &["status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--insecure-plaintext"),
        "{}",
        text(&out)
    );

    assert_eq!(
        state(&operator, &leader).await,
        before,
        "a refusal changed something"
    );
    r.stop().await;
}

/// Only a coordinator's certificate carries the server-authentication key usage: a client
/// refuses a server that shows any other certificate of the deployment's CA, even one issued for
/// the very address it dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_showing_a_certificate_other_than_a_coordinators_is_not_trusted() {
    let pki = Pki::new();
    let operator = pki.transport(Role::Operator, "operator");
    for (role, name) in [
        (Role::Coordinator, "eu-1-node-1"),
        (Role::Edge, "edge-1"),
        (Role::Operator, "server-operator"),
        (Role::Auditor, "server-auditor"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = NodeConfig::new("eu-1".parse().unwrap(), 1, tmp.path().join("n1"));
        cfg.transport = pki.transport(role, name);
        let node = Arc::new(Node::start(&cfg).await.unwrap());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = node.clone();
        let server = tokio::spawn(async move {
            coordinator::api::serve_alone(&serving, l, async move { rx.await.unwrap_or(()) })
                .await
                .unwrap();
        });
        let got = try_head(operator.endpoint(&addr).map_err(|e| e.0)).await;
        if role == Role::Coordinator {
            got.unwrap_or_else(|e| panic!("a coordinator's certificate was not trusted: {e}"));
        } else {
            assert!(
                got.is_err(),
                "a server showing a {role}'s certificate was trusted"
            );
        }
        node.shutdown().await;
        let _ = tx.send(());
        server.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_a_member_of_a_region_is_not_healthy() {
    let pki = Pki::new();
    pki.issue(Role::Operator, "operator");
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = NodeConfig::new("eu-1".parse().unwrap(), 1, tmp.path().join("n1"));
    cfg.transport = pki.transport(Role::Coordinator, "eu-1-node-1");
    let node = Arc::new(Node::start(&cfg).await.unwrap());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = node.clone();
    let server = tokio::spawn(async move {
        coordinator::api::serve_alone(&serving, l, async move { rx.await.unwrap_or(()) })
            .await
            .unwrap();
    });
    let out = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            budgetctl(
                &pki,
                Some("operator"),
                &addr,
                &["cluster", "health", "--wait", "1"],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("not a member"), "{}", text(&out));
    node.shutdown().await;
    let _ = tx.send(());
    server.await.unwrap();
}

fn coordinator_with(args: &[&str], tls: Option<(&Path, &Path, &Path)>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_listen = \"\"\ndata_dir = \"{}\"\n",
        dir.path().join("data").display()
    );
    if let Some((ca, cert, key)) = tls {
        text.push_str(&format!(
            "[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            ca.display(),
            cert.display(),
            key.display()
        ));
    }
    std::fs::write(&config, text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("--config")
        .arg(&config)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_coordinator_will_not_start_without_tls_unless_told_and_not_with_another_roles_certificate() {
    let out = coordinator_with(&[], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--insecure-plaintext"),
        "{}",
        text(&out)
    );

    let pki = Pki::new();
    let (cert, key) = pki.issue(Role::Edge, "edge-1");
    let out = coordinator_with(&[], Some((&pki.ca_file(), &cert, &key)));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("grants the role edge"),
        "{}",
        text(&out)
    );

    let out = coordinator_with(
        &["--insecure-plaintext"],
        Some((&pki.ca_file(), &cert, &key)),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("choose one"), "{}", text(&out));

    // A coordinator's certificate of another region.
    let (cert, key) = pki.issue_in(Role::Coordinator, "us-1-node-1", Some("us-1"));
    let out = coordinator_with(&["--region", "eu-1"], Some((&pki.ca_file(), &cert, &key)));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("the certificate is for region us-1; this node serves region eu-1"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_key_of_another_certificate_or_a_leaf_as_the_ca_stops_the_coordinator_at_start() {
    let pki = Pki::new();
    let (cert, _) = pki.issue_in(Role::Coordinator, "eu-1-node-1", Some("eu-1"));
    let (_, other_key) = pki.issue_in(Role::Coordinator, "eu-1-node-2", Some("eu-1"));
    let out = coordinator_with(
        &["--region", "eu-1"],
        Some((&pki.ca_file(), &cert, &other_key)),
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("key_file {}", other_key.display()))
            && text(&out).contains("does not match the certificate"),
        "{}",
        text(&out)
    );
    // The CA file holds a leaf: the node's own certificate.
    let (cert, key) = pki.issue_in(Role::Coordinator, "eu-1-node-3", Some("eu-1"));
    let out = coordinator_with(&["--region", "eu-1"], Some((&cert, &cert, &key)));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("ca_file {}", cert.display()))
            && text(&out).contains("not a CA"),
        "{}",
        text(&out)
    );
    // The same files, right: it starts (and is stopped here).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "region = \"eu-1\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"\"\ndata_dir = \"{}\"\n\
             [tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.path().join("data").display(),
            pki.ca_file().display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It says it listens (its log is on standard output): the files were accepted.
    let log = std::io::BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let said = std::io::BufRead::lines(log)
            .map_while(Result::ok)
            .any(|l| l.contains("coordinator listening"));
        let _ = tx.send(said);
    });
    let listening = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or(false);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(listening, "it did not start with matching files");
}

/// LOG_FORMAT.md §9 on a live region: an auditor gets a head signed by a coordinator, checks it
/// offline against the CA, and a sealed archive carries each segment's signed head, which
/// `audit verify --ca` checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_signs_its_heads_and_its_sealed_segments() {
    let pki = Pki::new();
    let r = region(&pki).await;
    let leader = r.leader_addr().await;
    pki.issue(Role::Operator, "operator");
    pki.issue(Role::Auditor, "auditor");
    for args in [
        &["campaign", "create", "spring", "--bid-cpm", "2.00"][..],
        &["campaign", "set-budget", "spring", "5.00"],
    ] {
        let out = budgetctl(&pki, Some("operator"), &leader, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let file = pki.dir.path().join("head.json");
    let out = budgetctl(
        &pki,
        Some("auditor"),
        &leader,
        &["audit", "head", "--signed", "-o", file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", text(&out));
    // Checked against the connection's CA before it is kept.
    assert!(
        text(&out).contains("region eu-1 seq") && text(&out).contains(": checked, written to"),
        "{}",
        text(&out)
    );
    let ca = pki.ca_file();
    let out = budgetctl(
        &pki,
        None,
        &leader,
        &[
            "audit",
            "check-head",
            file.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["checked"][0]["region"], "eu-1", "{v}");
    assert!(
        v["checked"][0]["signer"]
            .as_str()
            .unwrap()
            .starts_with("eu-1-node-"),
        "{v}"
    );
    let seq = v["checked"][0]["seq"].as_u64().unwrap();
    assert!(seq >= 1, "{v}");

    // Seal what the leader has applied, one entry a segment: each gets its signed head.
    let i = r.addrs.iter().position(|a| *a == leader).unwrap();
    let node = r.nodes[i].clone();
    let sealed = tokio::task::spawn_blocking(move || node.archive(1))
        .await
        .unwrap()
        .unwrap();
    assert!(!sealed.is_empty());
    for f in &sealed {
        assert!(f.with_extension("head").is_file(), "{}", f.display());
    }
    let dir = sealed[0].parent().unwrap().to_path_buf();
    let out = budgetctl(
        &pki,
        None,
        &leader,
        &[
            "audit",
            "verify",
            dir.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{} signed heads check", sealed.len())),
        "{}",
        text(&out)
    );
    // A head file edited after the fact no longer checks.
    let h = sealed[0].with_extension("head");
    let edited = std::fs::read_to_string(&h)
        .unwrap()
        .replace("\"seq\": 0", "\"seq\": 1");
    std::fs::write(&h, edited).unwrap();
    let out = budgetctl(
        &pki,
        None,
        &leader,
        &[
            "audit",
            "verify",
            dir.to_str().unwrap(),
            "--ca",
            ca.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    r.stop().await;
}
