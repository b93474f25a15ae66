//! Two real regions on loopback, one node each, syncing through the region-sync API: rights
//! flow to where the bids are, and states that show data loss raise an alarm.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use coordinator::node::{Node, NodeConfig};
use coordinator::region::{Settings, Sync};
use shared::bucket::Bucket;
use shared::proto::v1 as pb;
use shared::{Money, RegionId};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::Channel;

struct RegionNode {
    node: Arc<Node>,
    sync: Arc<Sync>,
    addr: String,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn rid(s: &str) -> RegionId {
    s.parse().unwrap()
}

async fn start(
    region: &str,
    dir: &Path,
    listener: TcpListener,
    peers: BTreeMap<RegionId, Vec<String>>,
) -> RegionNode {
    let addr = listener.local_addr().unwrap().to_string();
    let mut cfg = NodeConfig::new(rid(region), 1, dir.to_path_buf());
    cfg.init_params.lease_min = Money::from_micros(2_000);
    let node = Arc::new(Node::start(&cfg).await.unwrap());
    let sync = Arc::new(Sync::new(
        rid(region),
        Settings {
            peers,
            push_interval: Duration::from_millis(200),
            witness_refresh: Duration::from_secs(1),
            horizon: Duration::from_secs(2),
            ask_interval: Duration::from_millis(200),
            ..Settings::default()
        },
    ));
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let serving = node.clone();
    let serving_sync = sync.clone();
    let mut s = stop_rx.clone();
    let server = tokio::spawn(async move {
        coordinator::api::serve(&serving, &serving_sync, listener, async move {
            let _ = s.changed().await;
        })
        .await
        .unwrap();
    });
    let syncing = tokio::spawn(coordinator::region::sync_loop(
        node.clone(),
        sync.clone(),
        stop_rx,
    ));
    // Fails harmlessly on a restart: the region is initialized already.
    let _ = node.initialize(BTreeMap::from([(1, addr.clone())])).await;
    node.raft
        .wait(Some(Duration::from_secs(20)))
        .metrics(|m| m.current_leader == Some(1), "leader")
        .await
        .unwrap();
    RegionNode {
        node,
        sync,
        addr,
        stop,
        tasks: vec![server, syncing],
    }
}

impl RegionNode {
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.node.shutdown().await;
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Two regions, `eu-1` and `us-1`, that know each other.
async fn pair(dir: &Path) -> (RegionNode, RegionNode) {
    let (le, lu) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    let (ae, au) = (
        le.local_addr().unwrap().to_string(),
        lu.local_addr().unwrap().to_string(),
    );
    let eu = start(
        "eu-1",
        &dir.join("eu"),
        le,
        BTreeMap::from([(rid("us-1"), vec![au])]),
    )
    .await;
    let us = start(
        "us-1",
        &dir.join("us"),
        lu,
        BTreeMap::from([(rid("eu-1"), vec![ae])]),
    )
    .await;
    (eu, us)
}

fn key(n: u64) -> Option<pb::IdempotencyKey> {
    let mut k = n.to_be_bytes().to_vec();
    k.extend_from_slice(&[7; 8]);
    Some(pb::IdempotencyKey { key: k })
}

fn lifetime() -> Option<pb::BucketKey> {
    Some(pb::BucketKey {
        campaign: "c1".into(),
        bucket: Some(pb::Bucket::from(&Bucket::Lifetime)),
    })
}

/// Creates campaign `c1` (2.00 CPM: 2,000 a bid) with a lifetime `budget` at the region at
/// `addr`, its home. Returns an admin client of that region.
async fn campaign_at(
    addr: &str,
    budget: i64,
    daily: Option<i64>,
) -> pb::admin_client::AdminClient<Channel> {
    let mut admin = pb::admin_client::AdminClient::new(channel(addr).await);
    admin
        .upsert_campaign(pb::UpsertCampaignRequest {
            idempotency_key: key(1),
            config: Some(pb::CampaignConfig {
                campaign: "c1".into(),
                time_zone: "UTC".into(),
                bid_cpm_micros: 2_000_000,
                daily_budget_micros: daily,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    admin
        .set_budget(pb::SetBudgetRequest {
            idempotency_key: key(2),
            bucket: lifetime(),
            budget_micros: budget,
        })
        .await
        .unwrap();
    admin
}

/// Spends every whole bid (2,000) of `lease` in one report, and releases it (keys `n − 1`,
/// `n`). Returns what it spent.
async fn spend_whole(
    leases: &mut pb::lease_api_client::LeaseApiClient<Channel>,
    lease: &pb::Lease,
    n: u64,
) -> i64 {
    let bids = lease.amount_micros / 2_000;
    let events: Vec<pb::SpendEvent> = (0..bids)
        .map(|i| pb::SpendEvent {
            key: Some(pb::EventKey {
                exchange: "adx".into(),
                auction_id: format!("n{n}-l{}-{i}", lease.lease_id),
                imp_id: "1".into(),
            }),
            amount_micros: 2_000,
            bid: u64::try_from(i).unwrap() + 1,
        })
        .collect();
    if !events.is_empty() {
        leases
            .report_spend(pb::ReportSpendRequest {
                batch_id: key(n - 1).unwrap().key,
                edge: "e1".into(),
                lease_id: lease.lease_id,
                events,
                losses: vec![],
                held: vec![],
            })
            .await
            .unwrap();
    }
    leases
        .release_lease(pb::ReleaseLeaseRequest {
            batch_id: key(n).unwrap().key,
            edge: "e1".into(),
            lease_id: lease.lease_id,
            unreserved_micros: lease.amount_micros - bids * 2_000,
            bids: u64::try_from(bids).unwrap(),
            in_doubt: vec![],
        })
        .await
        .unwrap();
    bids * 2_000
}

/// Bids until no lease has been granted for `patience`: returns what was spent.
async fn spend_until_refused(
    leases: &mut pb::lease_api_client::LeaseApiClient<Channel>,
    n: &mut u64,
    patience: Duration,
) -> i64 {
    let mut spent = 0;
    let mut last_grant = Instant::now();
    while last_grant.elapsed() < patience {
        *n += 1;
        match ask(leases, *n).await {
            Some(pb::grant_lease_reply::Result::Lease(l)) => {
                *n += 2;
                spent += spend_whole(leases, &l, *n).await;
                last_grant = Instant::now();
            }
            Some(pb::grant_lease_reply::Result::Refused(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    spent
}

/// Edge `e1` asks for a lease of 0.1 of `c1`, with key `n`.
async fn ask(
    leases: &mut pb::lease_api_client::LeaseApiClient<Channel>,
    n: u64,
) -> Option<pb::grant_lease_reply::Result> {
    leases
        .grant_lease(pb::GrantLeaseRequest {
            idempotency_key: key(n),
            edge: "e1".into(),
            campaign: "c1".into(),
            want_micros: 100_000,
        })
        .await
        .unwrap()
        .into_inner()
        .result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rights_flow_to_the_region_that_bids_until_the_whole_budget_is_spent_and_no_more() {
    let tmp = tempfile::tempdir().unwrap();
    let (eu, us) = pair(tmp.path()).await;
    let budget = 1_000_000;
    let mut admin = campaign_at(&eu.addr, budget, None).await;

    // us-1 bids: it asks for leases, spends each whole (2,000 a bid) and releases it. It has
    // no rights of its own; all it spends came from eu-1.
    let mut leases = pb::lease_api_client::LeaseApiClient::new(channel(&us.addr).await);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut spent, mut n, mut refusals) = (0i64, 10u64, 0u32);
    while spent < budget {
        assert!(
            Instant::now() < deadline,
            "us-1 spent only {spent} of {budget} in 60 s"
        );
        n += 1;
        let lease = match ask(&mut leases, n).await {
            Some(pb::grant_lease_reply::Result::Lease(l)) => l,
            // Unknown until eu-1's settings arrive; no rights until its transfers do.
            Some(pb::grant_lease_reply::Result::Refused(_)) => {
                refusals += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            other => panic!("{other:?}"),
        };
        n += 2;
        spent += spend_whole(&mut leases, &lease, n).await;
    }
    assert!(refusals > 0, "us-1 had rights before any transfer");
    assert_eq!(spent, budget, "the whole budget, and not a micro more");
    // No more: every further ask is refused.
    let r = ask(&mut leases, n + 1).await;
    assert!(
        matches!(r, Some(pb::grant_lease_reply::Result::Refused(_))),
        "{r:?}"
    );

    // eu-1 learns of the spend; both see the same counter, and eu-1 witnessed us-1's head.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = admin
            .region_status(pb::RegionStatusRequest {
                campaign: "c1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let us_row = status
            .buckets
            .iter()
            .flat_map(|b| &b.regions)
            .find(|r| r.region == "us-1")
            .cloned();
        if let Some(r) = us_row
            && r.settled_micros == budget
        {
            assert_eq!(r.transferred_in_micros, budget);
            let eu_row = status.buckets[0]
                .regions
                .iter()
                .find(|r| r.region == "eu-1")
                .unwrap();
            assert_eq!(
                (
                    eu_row.created_micros,
                    eu_row.transferred_out_micros,
                    eu_row.available_micros
                ),
                (budget, budget, 0)
            );
            assert_eq!(status.buckets[0].home, "eu-1");
            assert!(status.alarms.is_empty(), "{:?}", status.alarms);
            let peer = &status.peers[0];
            assert!(
                peer.witnessed_seq > 0 && peer.witnessed_head.len() == 32,
                "{peer:?}"
            );
            assert!(
                peer.last_push_ok_age_ms >= 0 && peer.pushes_ok > 0,
                "{peer:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "eu-1 never saw us-1's spend: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What an operator sees: every region's figures for the bucket, the peer, no alarm.
    let budgetctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_budgetctl"))
            .args(["--insecure-plaintext", "--endpoint", eu.addr.as_str()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = tokio::task::block_in_place(|| budgetctl(&["regions", "--campaign", "c1"]));
    assert_eq!(code, Some(0), "{text}");
    for want in [
        "c1/lifetime (home eu-1)",
        "us-1",
        "alarms: none",
        "1.000000",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    let (code, json) = tokio::task::block_in_place(|| budgetctl(&["status", "--json"]));
    assert_eq!(code, Some(0), "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["regions"]["peers"][0]["region"], "us-1", "{json}");
    let metrics = eu.sync.render_metrics(&eu.node);
    assert!(
        metrics.contains("budget_region_transferred_micros_total{direction=\"out\"} 1000000"),
        "{metrics}"
    );
    us.shutdown().await;
    eu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_that_shows_our_own_rows_ahead_is_refused_with_an_alarm() {
    let tmp = tempfile::tempdir().unwrap();
    // us-1 is a peer that never runs, so that only the forged states speak for it (a real
    // us-1, even stopped at once, could have pushed its own head first, and a head witnessed
    // less than `witness_refresh` ago is not written again).
    let nobody = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = nobody.local_addr().unwrap().to_string();
    drop(nobody);
    let eu = start(
        "eu-1",
        &tmp.path().join("eu"),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        BTreeMap::from([(rid("us-1"), vec![gone])]),
    )
    .await;
    let mut admin = campaign_at(&eu.addr, 5_000, None).await;
    let before = eu.node.state.read(|m| m.ledger().all_rows());
    let mut sync = pb::region_sync_client::RegionSyncClient::new(channel(&eu.addr).await);
    let forged = |from: &str, created: u64| pb::RegionState {
        from_region: from.into(),
        log_seq: 1,
        log_head: vec![0; 32],
        buckets: vec![pb::BucketCounter {
            bucket: lifetime(),
            created: vec![pb::RegionRow {
                region: "eu-1".into(),
                micros: created,
            }],
            ..Default::default()
        }],
        campaigns: Vec::new(),
        complete: true,
    };
    // eu-1 created 5,000; a peer claiming eu-1 created 9,000 shows that eu-1 lost data.
    let ack = sync
        .push_state(forged("us-1", 9_000))
        .await
        .unwrap()
        .into_inner();
    match ack.result {
        Some(pb::push_ack::Result::Refused(why)) => assert!(why.contains("created[eu-1]"), "{why}"),
        other => panic!("not refused: {other:?}"),
    }
    // A region that is not a peer is not listened to at all; bad input is named.
    let e = sync.push_state(forged("ap-1", 1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    let mut bad = forged("us-1", 1);
    bad.log_head = vec![1; 3];
    let e = sync.push_state(bad).await.unwrap_err();
    assert!(
        e.code() == tonic::Code::InvalidArgument && e.message().contains("log_head"),
        "{e:?}"
    );
    assert_eq!(
        eu.node.state.read(|m| m.ledger().all_rows()),
        before,
        "nothing changed"
    );

    // A peer whose states keep going back behind the log head it showed before lost data (or
    // runs from an old copy): an alarm after a few in a row, and nothing merged meanwhile.
    let honest = |seq: u64| pb::RegionState {
        from_region: "us-1".into(),
        log_seq: seq,
        log_head: vec![seq as u8; 32],
        buckets: Vec::new(),
        campaigns: Vec::new(),
        complete: false,
    };
    let ack = sync.push_state(honest(10)).await.unwrap().into_inner();
    assert!(
        matches!(ack.result, Some(pb::push_ack::Result::MergedAtIndex(_))),
        "{ack:?}"
    );
    let witnessed = eu
        .node
        .state
        .read(|m| m.ledger().witnessed()[&rid("us-1")].clone());
    assert_eq!((witnessed.seq, witnessed.head), (10, [10; 32]));
    for _ in 0..coordinator::region::STALE_ALARM_AFTER {
        sync.push_state(honest(3)).await.unwrap();
    }
    assert_eq!(
        eu.node
            .state
            .read(|m| m.ledger().witnessed()[&rid("us-1")].seq),
        10
    );
    let status = admin
        .region_status(pb::RegionStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.alarms.len(), 2, "{:?}", status.alarms);
    assert!(
        status.alarms[0].contains("us-1") && status.alarms[0].contains("refused"),
        "{:?}",
        status.alarms
    );
    assert!(
        status.alarms[1].contains("behind the seq 10"),
        "{:?}",
        status.alarms
    );
    let metrics = eu.sync.render_metrics(&eu.node);
    assert!(
        metrics.contains("budget_region_alarms_total{peer=\"us-1\",result=\"data_loss\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("budget_region_alarms_total{peer=\"us-1\",result=\"went_back\"} 1"),
        "{metrics}"
    );
    // The data-loss refusal is an answer, not a transfer: a forged state cannot make money.
    let rights = eu.node.state.read(|m| {
        let l = m.ledger();
        l.buckets()
            .map(|(_, b)| b.counter.state().total_created())
            .sum::<u128>()
    });
    assert_eq!(rights, 5_000);
    eu.shutdown().await;
}

/// eu-1 transfers `micros` of c1's lifetime rights to us-1 by hand.
async fn give_us(eu: &RegionNode, micros: i64) {
    let split = coordinator::ledger::Command::TransferRights {
        key: coordinator::ledger::RequestKey([9; 16]),
        campaign: "c1".parse().unwrap(),
        bucket: Bucket::Lifetime,
        to: rid("us-1"),
        amount: Money::from_micros(micros),
    };
    let (reply, _) = eu.node.propose(split).await.unwrap();
    assert!(
        matches!(reply, coordinator::ledger::Reply::Transferred { .. }),
        "{reply:?}"
    );
}

/// Edges of every region in `bidding` ask for leases of c1 in turn until one is granted
/// (within 20 s): which region (its index) and the lease.
async fn first_lease(bidding: &[&RegionNode]) -> (usize, pb::Lease) {
    let mut clients = Vec::new();
    for r in bidding {
        clients.push(pb::lease_api_client::LeaseApiClient::new(
            channel(&r.addr).await,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 100;
    loop {
        for (i, leases) in clients.iter_mut().enumerate() {
            n += 1;
            match ask(leases, n).await {
                Some(pb::grant_lease_reply::Result::Lease(l)) => return (i, l),
                Some(pb::grant_lease_reply::Result::Refused(_)) => {}
                other => panic!("{other:?}"),
            }
        }
        assert!(Instant::now() < deadline, "the crumbs never came together");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rights of c1's lifetime bucket that `node`'s region holds.
fn held(node: &RegionNode) -> Money {
    node.node.state.read(|m| {
        let key = shared::bucket::BucketKey {
            campaign: "c1".parse().unwrap(),
            bucket: Bucket::Lifetime,
        };
        m.ledger().bucket(&key).unwrap().counter.available()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crumbs_below_one_bid_in_two_regions_add_up_to_a_bid_in_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (eu, us) = pair(tmp.path()).await;
    // 3,000 in all, a bid costs 2,000: split 1,500 / 1,500, neither region can fund a bid.
    let _admin = campaign_at(&eu.addr, 3_000, None).await;
    give_us(&eu, 1_500).await;
    let (_, lease) = first_lease(&[&us]).await;
    assert!(lease.amount_micros >= 2_000, "{lease:?}");
    assert_eq!(held(&us), Money::from_micros(3_000), "all of it, in us-1");
    us.shutdown().await;
    eu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crumbs_in_two_regions_that_both_bid_come_together_instead_of_swapping() {
    let tmp = tempfile::tempdir().unwrap();
    let (eu, us) = pair(tmp.path()).await;
    // 3,149 in all, a bid costs 2,000: split 1,412 (eu-1) / 1,737 (us-1), as a two-region
    // jepsen run left them. Both regions bid, so both ask the other for its crumbs; when each
    // gave all it had, they swapped places on every tick and no bid was ever funded.
    let _admin = campaign_at(&eu.addr, 3_149, None).await;
    give_us(&eu, 1_737).await;
    let (winner, lease) = first_lease(&[&eu, &us]).await;
    assert!(lease.amount_micros >= 2_000, "{lease:?}");
    // The larger holder (us-1) gathers them: eu-1 gives, us-1 never gives back.
    assert_eq!(winner, 1, "{lease:?}");
    assert_eq!(held(&us), Money::from_micros(3_149), "all of it, in us-1");
    assert_eq!(held(&eu), Money::ZERO);
    us.shutdown().await;
    eu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_of_more_buckets_than_one_merge_holds_arrives_whole() {
    use coordinator::ledger::{CampaignConfig, Command, RequestKey};
    let tmp = tempfile::tempdir().unwrap();
    let (eu, us) = pair(tmp.path()).await;
    let n = shared::log::entry::BUCKETS_MAX + 10;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let node = eu.node.clone();
        tasks.spawn(async move {
            for i in (worker..n).step_by(16) {
                let campaign: shared::CampaignId = format!("c{i}").parse().unwrap();
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&(i as u64).to_be_bytes());
                let config = CampaignConfig {
                    zone: "UTC".into(),
                    bid_cpm: Money::from_micros(1_000_000),
                    daily_budget: None,
                    targeting: Default::default(),
                };
                node.propose(Command::UpsertCampaign {
                    key: RequestKey(key),
                    campaign: campaign.clone(),
                    config,
                })
                .await
                .unwrap();
                key[15] = 1;
                node.propose(Command::SetBudget {
                    key: RequestKey(key),
                    campaign,
                    bucket: Bucket::Lifetime,
                    budget: Money::from_micros(1_000),
                })
                .await
                .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (campaigns, buckets) = us
            .node
            .state
            .read(|m| (m.ledger().campaigns().count(), m.ledger().buckets().count()));
        if campaigns == n && buckets == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "us-1 holds {campaigns} campaigns and {buckets} buckets of {n}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = pb::admin_client::AdminClient::new(channel(&us.addr).await)
        .region_status(pb::RegionStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(status.alarms.is_empty(), "{:?}", status.alarms);
    // Idle, eu-1's pushes carry what changed (nothing but its log head), not its whole state:
    // over ten push intervals, less than a tenth of one complete state. (Its first push was
    // complete, of the few campaigns it had then; deltas brought the rest.)
    let complete = push_bytes(&eu, "complete");
    let before = push_bytes(&eu, "delta");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = push_bytes(&eu, "delta") - before;
    let whole = prost::Message::encoded_len(
        &eu.node
            .state
            .read(|m| coordinator::region::state_of(m.ledger())),
    );
    assert!(
        complete > 0 && idle > 0 && idle * 10 < whole as u64,
        "complete pushes {complete} bytes, a whole state {whole}, idle deltas {idle} in 2 s"
    );
    us.shutdown().await;
    eu.shutdown().await;
}

/// Bytes of `kind` (complete or delta) `node` pushed to its peer, from its metrics page.
fn push_bytes(node: &RegionNode, kind: &str) -> u64 {
    let page = node.sync.render_metrics(&node.node);
    page.lines()
        .find(|l| l.contains("region_push_bytes_total{") && l.contains(&format!("kind=\"{kind}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_region_that_is_down_keeps_its_rights_and_spends_them_when_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (eu, us) = pair(tmp.path()).await;
    let (eu_addr, us_addr) = (eu.addr.clone(), us.addr.clone());
    let budget = 400_000;
    let mut admin = campaign_at(&eu.addr, budget, None).await;
    // us-1 bids for a while and so holds some of the rights.
    let mut at_us = pb::lease_api_client::LeaseApiClient::new(channel(&us.addr).await);
    let mut n = 1_000;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut spent_us = 0;
    while spent_us < 100_000 {
        assert!(Instant::now() < deadline, "us-1 got no rights");
        n += 1;
        match ask(&mut at_us, n).await {
            Some(pb::grant_lease_reply::Result::Lease(l)) => {
                n += 2;
                spent_us += spend_whole(&mut at_us, &l, n).await;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Keep a lease open (as an edge that is mid-spend would) and go down.
    n += 1;
    let open = loop {
        if let Some(pb::grant_lease_reply::Result::Lease(l)) = ask(&mut at_us, n).await {
            break l;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let held_by_us = us.node.state.read(|m| {
        let key = shared::bucket::BucketKey {
            campaign: "c1".parse().unwrap(),
            bucket: Bucket::Lifetime,
        };
        m.ledger()
            .bucket(&key)
            .unwrap()
            .counter
            .available()
            .micros()
    });
    assert!(held_by_us >= open.amount_micros && held_by_us > 0);
    let us_dir = tmp.path().join("us");
    us.shutdown().await;
    // (us-1 may have pulled every right there was.) The home raises the budget: these rights
    // are eu-1's alone.
    let budget = budget + 100_000;
    admin
        .set_budget(pb::SetBudgetRequest {
            idempotency_key: key(3),
            bucket: lifetime(),
            budget_micros: budget,
        })
        .await
        .unwrap();

    // eu-1 spends all it can: never what us-1 holds.
    let mut at_eu = pb::lease_api_client::LeaseApiClient::new(channel(&eu_addr).await);
    let spent_eu = spend_until_refused(&mut at_eu, &mut n, Duration::from_secs(3)).await;
    assert!(
        spent_eu >= 100_000,
        "eu-1 spent {spent_eu} of its own 100,000"
    );
    assert!(
        spent_us + spent_eu + held_by_us <= budget,
        "eu-1 spent {spent_eu} while us-1, down, held {held_by_us} (us-1 spent {spent_us}; budget {budget})"
    );
    let status = admin
        .region_status(pb::RegionStatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!status.peers[0].last_error.is_empty(), "{status:?}");

    // Back, on its old data: its lease and rights are where it left them, and sync resumes.
    let listener = TcpListener::bind(&us_addr).await.unwrap();
    let us = start(
        "us-1",
        &us_dir,
        listener,
        BTreeMap::from([(rid("eu-1"), vec![eu_addr.clone()])]),
    )
    .await;
    let mut at_us = pb::lease_api_client::LeaseApiClient::new(channel(&us.addr).await);
    n += 2;
    let more = spend_whole(&mut at_us, &open, n).await;
    // eu-1 keeps what its recent spending rate says it needs, and gives the rest once that rate
    // has aged out of its 10 s window: be patient for longer than that.
    let rest = spend_until_refused(&mut at_us, &mut n, Duration::from_secs(12)).await;
    let total = spent_us + spent_eu + more + rest;
    assert!(total <= budget, "{total} spent of {budget}");
    assert!(
        total >= budget - 4_000,
        "only {total} of {budget} spent after us-1 came back"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = admin
            .region_status(pb::RegionStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        if s.peers[0].last_error.is_empty() && s.peers[0].last_received_age_ms >= 0 {
            break;
        }
        assert!(Instant::now() < deadline, "sync never resumed: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    us.shutdown().await;
    eu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_region_paces_a_day_against_the_spend_of_all_regions() {
    let tmp = tempfile::tempdir().unwrap();
    let (eu, us) = pair(tmp.path()).await;
    let _admin = campaign_at(&eu.addr, 1_000_000, Some(50_000)).await;
    // us-1 spends from the day's rights, which only the home can open.
    let mut at_us = pb::lease_api_client::LeaseApiClient::new(channel(&us.addr).await);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 500;
    let spent = loop {
        n += 1;
        if let Some(pb::grant_lease_reply::Result::Lease(l)) = ask(&mut at_us, n).await {
            n += 2;
            break spend_whole(&mut at_us, &l, n).await;
        }
        assert!(Instant::now() < deadline, "us-1 never got the day's rights");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(spent > 0);
    // Both regions tell their edges the same day: us-1's spend, against the home's budget.
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in [&us.addr, &eu.addr] {
        let mut leases = pb::lease_api_client::LeaseApiClient::new(channel(addr).await);
        loop {
            let r = leases
                .list_active_campaigns(pb::ListActiveCampaignsRequest::default())
                .await
                .unwrap()
                .into_inner();
            let d = r.day_spend.first().cloned().unwrap_or_default();
            if d.settled_micros == spent {
                assert_eq!(d.budget_micros, 50_000, "{addr}: {d:?}");
                assert!(
                    r.spend_complete,
                    "a poll that knows nothing gets every campaign"
                );
                // The next poll names the version it holds: only what changed since comes.
                let again = leases
                    .list_active_campaigns(pb::ListActiveCampaignsRequest {
                        known_version: r.version,
                        known_spend_version: r.spend_version,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(
                    again.unchanged
                        && !again.spend_complete
                        && again.spend_version >= r.spend_version,
                    "{addr}: {again:?}"
                );
                assert!(
                    again.day_spend.iter().all(|d| d.settled_micros >= spent),
                    "{addr}: {again:?}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "{addr}: {d:?}, spent {spent}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    us.shutdown().await;
    eu.shutdown().await;
}
