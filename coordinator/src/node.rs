//! One coordinator node: openraft over the RocksDB stores, the ledger machine, the Raft
//! transport; proposing commands; serving on a listener.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, SnapshotPolicy};
use raft_store::{LogStore, StateStore, open_db};
use shared::RegionId;
use shared::clock::Clock;
use shared::proto::v1::raft_transport_server::RaftTransportServer;
use shared::tls::Transport;

use crate::archive::Archive;
use crate::ledger::{Command, Params, Reply, RequestKey};
use crate::network::{Network, RaftService};
use crate::raft::{LedgerMachine, Proposal, TypeConfig};

/// The default of [`NodeConfig::spend_in_flight`].
pub const SPEND_IN_FLIGHT: usize = 2;

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Its region.
    pub region: RegionId,
    /// Its number in the region's Raft group.
    pub id: u64,
    /// Where its RocksDB lives.
    pub data_dir: PathBuf,
    /// The rules this node records for a new region when it first leads it (`[leases]`). A
    /// region's rules are replicated state: every replica starts from the same defaults and
    /// applies the `SetParams` entries of the log, whatever its own file says.
    pub init_params: Params,
    /// Raft heartbeat interval.
    pub heartbeat: Duration,
    /// Raft election timeout range.
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot after this many log entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, for followers that are only a little behind (the
    /// others get the snapshot).
    pub logs_kept_after_snapshot: u64,
    /// How long one snapshot chunk may take to be sent (and the last, to be installed).
    pub snapshot_chunk_timeout: Duration,
    /// Bytes of a snapshot per chunk.
    pub snapshot_chunk_bytes: u64,
    /// Spend reports this node has in Raft at once while it leads (0: no limit). Reports past
    /// it wait at the node, outside the log, so that a lease grant, release or check-in
    /// proposed meanwhile enters the log behind at most this many reports, not behind all
    /// that are queued ([`Node::propose`]).
    pub spend_in_flight: usize,
    /// Its clock: proposals' wall-clock stamps and the reclaim timers read it.
    pub clock: Clock,
    /// Source IP of its connections to peers; `None`: the system chooses.
    pub outgoing: Option<std::net::IpAddr>,
    /// How its gRPC links are carried: mutual TLS, or plaintext for local development.
    pub transport: Transport,
    /// Signs log heads with its TLS key (LOG_FORMAT.md §9); none in plaintext.
    pub head_signer: Option<Arc<shared::log::signed::HeadSigner>>,
}

impl NodeConfig {
    /// Defaults for a node on a LAN or loopback.
    pub fn new(region: RegionId, id: u64, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            region,
            id,
            data_dir,
            init_params: Params::default(),
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            snapshot_every: 10_000,
            logs_kept_after_snapshot: 1_000,
            snapshot_chunk_timeout: Duration::from_secs(10),
            snapshot_chunk_bytes: 1 << 20,
            spend_in_flight: SPEND_IN_FLIGHT,
            clock: Clock::system(),
            outgoing: None,
            transport: Transport::Plaintext,
            head_signer: None,
        }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database did not open.
    #[error("opening the database in {path}: {source}")]
    Db {
        /// Its directory.
        path: PathBuf,
        /// Why.
        source: rocksdb::Error,
    },
    /// The database is damaged (a checksum that does not match): this replica cannot be
    /// trusted and must be replaced, not repaired in place.
    #[error(
        "the database in {path} is damaged: {found}. This replica's state cannot be trusted: \
         replace it (budgetctl cluster remove <id>, wipe its data directory, start it under a \
         new node id, budgetctl cluster add)"
    )]
    Damaged {
        /// Its directory.
        path: PathBuf,
        /// What RocksDB found (not a `source`: the message says it once).
        found: rocksdb::Error,
    },
    /// The stored state did not load.
    #[error("loading the stored state: {0}")]
    Storage(#[from] openraft::StorageError<u64>),
    /// openraft refused the configuration or failed to start.
    #[error("starting raft: {0}")]
    Raft(String),
    /// The segments directory could not be opened.
    #[error("opening the archive in {path}: {source}")]
    Archive {
        /// Its directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Why a proposal was not applied. `NotLeader` is definite (nothing happened here); `Fatal`
/// is indefinite (the outcome is unknown).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; the leader, if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// `(node id, address)` of the leader, if known.
        leader: Option<(u64, String)>,
    },
    /// Raft stopped or failed; the command may or may not have been applied.
    #[error("raft failed: {0}")]
    Fatal(String),
}

/// The idempotency key of the first leader's `SetParams`: the same on every node, so that two
/// nodes leading one after the other record the rules once.
const INIT_PARAMS_KEY: RequestKey = RequestKey(*b"params-at-init\0\0");

/// How often a node looks whether its region's rules are recorded.
const PARAMS_TICK: Duration = Duration::from_millis(200);

/// The region's rules (DESIGN §4, replicated): the first leader of a new region records `init`
/// (its `[leases]`) with `SetParams`; until then the ledger grants no lease. Every node, once
/// it has applied the rules, says once if its own file differs, and stops. Ends when Raft
/// stops.
async fn record_params(
    raft: Raft<TypeConfig>,
    state: StateStore<TypeConfig, LedgerMachine>,
    clock: Clock,
    id: u64,
    region: RegionId,
    init: Params,
) {
    let mut tick = tokio::time::interval(PARAMS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if raft.metrics().borrow().running_state.is_err() {
            return;
        }
        let (recorded, current) = state.read(|m| {
            let l = m.ledger();
            (l.params_recorded(), l.params().clone())
        });
        if recorded {
            if current != init {
                tracing::warn!(
                    %region,
                    node = id,
                    file = ?init,
                    region_rules = ?current,
                    "this node's [leases] differ from the region's replicated rules, which it \
                     follows (`budgetctl cluster params` shows them, `budgetctl cluster params \
                     set` changes them)"
                );
            }
            return;
        }
        if raft.metrics().borrow().current_leader != Some(id) {
            continue;
        }
        let command = Command::SetParams {
            key: INIT_PARAMS_KEY,
            params: init.clone(),
        };
        let proposal = Proposal {
            time_us: clock.wall_us(),
            command,
        };
        match raft.client_write(proposal).await {
            Ok(_) => {
                tracing::info!(%region, node = id, params = ?init, "recorded the new region's rules")
            }
            Err(e) => {
                tracing::warn!(%region, node = id, error = %e, "recording the region's rules failed; trying again")
            }
        }
    }
}

/// A running node.
pub struct Node {
    /// Its number.
    pub id: u64,
    /// Its region.
    pub region: RegionId,
    /// Its Raft.
    pub raft: Raft<TypeConfig>,
    /// Its state machine store (the ledger and the financial-log records).
    pub state: StateStore<TypeConfig, LedgerMachine>,
    /// Its metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its clock (skewable by a test harness: `shared::clock`).
    pub clock: Clock,
    /// How its gRPC links are carried.
    pub transport: Transport,
    /// Signs log heads (with TLS only).
    pub head_signer: Option<Arc<shared::log::signed::HeadSigner>>,
    /// Its sealed segments (`<data_dir>/segments/`).
    pub archive: Arc<Archive>,
    /// The rules its file gives a new region (recorded by the first leader).
    init_params: Params,
    /// Source IP of its connections to peers.
    outgoing: Option<std::net::IpAddr>,
    /// Records below this seq are forgotten by the state store (they are sealed).
    forgotten: AtomicU64,
    /// Permits for spend reports in Raft at once (`None`: no limit).
    spend_lane: Option<tokio::sync::Semaphore>,
    /// Spend reports waiting for a place in the log now.
    spend_waiting: std::sync::atomic::AtomicUsize,
}

/// Why [`Node::read_log`] did not answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadLogError {
    /// The records from `from` are sealed on the peers but not here yet: this node installed a
    /// snapshot, which carries only unsealed records, and is fetching the segments below it.
    #[error(
        "records {from}..{until} are not on this replica yet: it joined by snapshot and is \
         fetching those sealed segments from its peers; ask another replica or try again"
    )]
    NotYetFetched {
        /// The first record asked for.
        from: u64,
        /// Where this node's own records start.
        until: u64,
    },
    /// The segment that holds the records is damaged here and is being fetched again.
    #[error("{0}; ask another replica or try again")]
    Damaged(String),
    /// Reading the store or a segment failed.
    #[error("reading the log: {0}")]
    Io(#[from] std::io::Error),
}

impl From<crate::archive::SegmentError> for ReadLogError {
    fn from(e: crate::archive::SegmentError) -> ReadLogError {
        match e {
            crate::archive::SegmentError::Damaged { .. } => ReadLogError::Damaged(e.to_string()),
            crate::archive::SegmentError::Io(e) => ReadLogError::Io(e),
        }
    }
}

impl Node {
    /// Opens the node's storage and starts Raft. The node does nothing until it is part of an
    /// initialized group ([`Node::initialize`] on one node of a new region).
    pub async fn start(cfg: &NodeConfig) -> Result<Node, StartError> {
        let path = cfg.data_dir.join("db");
        let damaged_or_db = |source: rocksdb::Error| {
            if raft_store::is_corruption(&source) {
                StartError::Damaged {
                    path: path.clone(),
                    found: source,
                }
            } else {
                StartError::Db {
                    path: path.clone(),
                    source,
                }
            }
        };
        let db = open_db(&path).map_err(damaged_or_db)?;
        // Every table block is read once with its checksum checked before this replica votes
        // or serves: a damaged one is found now, not by the read that needs it.
        let began = std::time::Instant::now();
        let seen = raft_store::verify_db(&db).map_err(damaged_or_db)?;
        tracing::info!(
            keys = seen.keys,
            bytes = seen.bytes,
            ms = began.elapsed().as_millis() as u64,
            "the database verified"
        );
        let segments = crate::archive::segments_dir(&cfg.data_dir);
        let archive =
            Archive::open(&segments, &cfg.region).map_err(|source| StartError::Archive {
                path: segments.clone(),
                source,
            })?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let m = metrics.clone();
        let observer: raft_store::SyncObserver = Arc::new(move |store, took| m.synced(store, took));
        let mut log = LogStore::<TypeConfig>::new(db.clone()).with_sync_observer(observer.clone());
        if shared::planted::active("ack-before-sync") {
            log = log.planted_ack_before_sync();
        }
        let state = StateStore::open(
            db,
            &cfg.data_dir.join("snapshots"),
            // The same defaults on every replica: the region's rules come from its log.
            LedgerMachine::new(cfg.region.clone(), Params::default()),
        )?
        .with_sync_observer(observer);
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = openraft::Config {
            cluster_name: cfg.region.to_string(),
            heartbeat_interval: millis(cfg.heartbeat),
            election_timeout_min: millis(cfg.election_timeout.0),
            election_timeout_max: millis(cfg.election_timeout.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_every),
            max_in_snapshot_log_to_keep: cfg.logs_kept_after_snapshot,
            install_snapshot_timeout: millis(cfg.snapshot_chunk_timeout),
            snapshot_max_chunk_size: cfg.snapshot_chunk_bytes,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let archive = Arc::new(archive);
        let raft = Raft::new(
            cfg.id,
            Arc::new(config),
            Network::new(
                cfg.region.clone(),
                cfg.id,
                cfg.outgoing,
                cfg.transport.clone(),
            ),
            log,
            state.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        tokio::spawn(record_params(
            raft.clone(),
            state.clone(),
            cfg.clock.clone(),
            cfg.id,
            cfg.region.clone(),
            cfg.init_params.clone(),
        ));
        Ok(Node {
            id: cfg.id,
            region: cfg.region.clone(),
            raft,
            state,
            metrics,
            data_dir: cfg.data_dir.clone(),
            clock: cfg.clock.clone(),
            transport: cfg.transport.clone(),
            head_signer: cfg.head_signer.clone(),
            archive,
            init_params: cfg.init_params.clone(),
            outgoing: cfg.outgoing,
            forgotten: AtomicU64::new(0),
            spend_lane: (cfg.spend_in_flight > 0)
                .then(|| tokio::sync::Semaphore::new(cfg.spend_in_flight)),
            spend_waiting: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Makes a new region's group of `members` (`id → address`). Call on one node, once.
    pub async fn initialize(&self, members: BTreeMap<u64, String>) -> Result<(), String> {
        let nodes: BTreeMap<u64, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        self.raft.initialize(nodes).await.map_err(|e| e.to_string())
    }

    /// Proposes `command`, stamped with this node's wall-clock time, and waits until it is
    /// applied. Returns the reply and the Raft index it was applied at.
    ///
    /// In a new region whose rules are not recorded yet, the leader first records its own
    /// (the same `SetParams` as the background task, so it is applied once), so that the
    /// first grant does not race the rules.
    pub async fn propose(&self, command: Command) -> Result<(Reply, u64), ProposeError> {
        let recorded = self.state.read(|m| m.ledger().params_recorded());
        if !recorded && !matches!(command, Command::SetParams { .. }) {
            self.write(Command::SetParams {
                key: INIT_PARAMS_KEY,
                params: self.init_params.clone(),
            })
            .await?;
        }
        self.write(command).await
    }

    /// Spend reports waiting at this node for a place in the log (`spend_in_flight`).
    pub fn spend_waiting(&self) -> usize {
        self.spend_waiting.load(Ordering::Relaxed)
    }

    async fn write(&self, command: Command) -> Result<(Reply, u64), ProposeError> {
        // Spend reports take turns for a few places in the log; everything else (grants,
        // releases, check-ins: small entries that edges wait on to bid) goes straight in, so
        // it commits behind at most those few reports. A report's wait here is outside Raft:
        // nothing is proposed, or acknowledged, before its permit.
        let _turn = match (&self.spend_lane, &command) {
            (Some(lane), Command::ReportSpend { .. }) => {
                let began = std::time::Instant::now();
                self.spend_waiting.fetch_add(1, Ordering::Relaxed);
                let permit = lane.acquire().await.ok();
                self.spend_waiting.fetch_sub(1, Ordering::Relaxed);
                self.metrics.spend_lane_waited(began.elapsed());
                permit
            }
            _ => None,
        };
        let time_us = self.clock.wall_us();
        let kind = crate::metrics::command_kind(&command);
        let result = self.raft.client_write(Proposal { time_us, command }).await;
        match &result {
            Ok(r) => self.metrics.command(kind, Ok(&r.data)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                self.metrics.command(kind, Err("not_leader"))
            }
            Err(_) => self.metrics.command(kind, Err("failed")),
        }
        match result {
            Ok(r) => Ok((r.data, r.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                })
            }
            Err(e) => Err(ProposeError::Fatal(e.to_string())),
        }
    }

    /// The node's metrics as Prometheus text, with every gauge read now: Raft's figures, the
    /// ledger's, the clock and the certificate's expiry (region sync adds its ages first:
    /// `region::Sync::render_metrics`).
    pub fn render_metrics(&self) -> String {
        let m = self.raft.metrics().borrow().clone();
        self.metrics.observe_raft(
            m.current_term,
            m.current_leader,
            m.last_log_index,
            m.last_applied.map(|l| l.index),
        );
        let wall_us = self.clock.wall_us();
        self.state
            .read(|machine| self.metrics.observe_ledger(machine.ledger(), wall_us));
        self.metrics
            .observe_clock(wall_us, self.transport.certificate_expiry());
        let snap = self.state.last_snapshot_build().unwrap_or_default();
        let gap = match self.archive_gap() {
            Ok(Some((from, until))) => until - from,
            // Unreadable: shown as a gap of one, so that it is not taken for a whole archive.
            Ok(None) => 0,
            Err(_) => 1,
        };
        self.metrics.observe_damaged(self.archive.damaged().len());
        self.metrics.observe_storage(
            self.archive.sealed().0,
            self.archive.segments(),
            gap,
            [
                snap.bytes,
                snap.rows,
                snap.records,
                snap.build_us,
                snap.index,
            ],
        );
        self.metrics.encode()
    }

    /// Whether this node leads its region now (as far as it knows).
    pub fn leads(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// The leader as this node knows it: `(id, address)`.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// The index of the last entry applied here.
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// The gRPC service that peers send Raft messages to.
    pub fn raft_service(&self) -> RaftTransportServer<RaftService> {
        RaftTransportServer::new(RaftService::new(
            self.region.clone(),
            self.id,
            self.raft.clone(),
            self.archive.clone(),
        ))
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
    }

    /// Seals every full segment of financial-log records not yet sealed into
    /// `<data_dir>/segments/` (a segment ends by `rule`'s count or byte cap, or at a seal
    /// point), reads each back, and then forgets the sealed records in RocksDB: the segments
    /// are the archive, the store keeps only what is not sealed. Seals nothing while the
    /// archive has a gap ([`Node::archive_gap`]). Blocking file I/O: call from a blocking
    /// context.
    pub fn archive(
        &self,
        rule: impl Into<crate::archive::SegmentRule>,
    ) -> std::io::Result<Vec<PathBuf>> {
        if self.archive_gap()?.is_some() {
            return Ok(Vec::new());
        }
        // Applies are written unsynced: the records sealed below must be durable in the store
        // first, or a crash could leave segments ahead of the state they came from.
        if self.state.read(|m| m.ledger().chain().next_seq()) > self.archive.sealed().0 {
            // Not on a node whose Raft stopped on a storage failure: it writes nothing more.
            if self.raft.metrics().borrow().running_state.is_err() {
                return Err(std::io::Error::other("raft stopped: nothing is sealed"));
            }
            self.state.sync()?;
        }
        let (until, points) = self.state.read(|m| {
            (
                m.ledger().chain().next_seq(),
                m.ledger().seal_points().clone(),
            )
        });
        let files = self
            .archive
            .seal(rule.into(), &points, until, |from, max| {
                self.state
                    .log_records(from, max)
                    .map_err(std::io::Error::other)
            })?;
        self.sign_heads(&files)?;
        self.forget_sealed()?;
        Ok(files)
    }

    /// Each sealed segment gets its signed head beside it (LOG_FORMAT.md §9).
    fn sign_heads(&self, files: &[PathBuf]) -> std::io::Result<()> {
        if let Some(signer) = &self.head_signer {
            for f in files {
                crate::archive::write_signed_head(signer, f, self.clock.wall_us())?;
            }
        }
        Ok(())
    }

    /// Forgets, in the state store, the records the archive holds.
    fn forget_sealed(&self) -> std::io::Result<()> {
        let sealed = self.archive.sealed().0;
        if sealed > self.forgotten.load(Ordering::Relaxed) {
            self.state
                .forget_log_before(sealed)
                .map_err(std::io::Error::other)?;
            self.forgotten.store(sealed, Ordering::Relaxed);
            // Once per segment: the forgotten records' space (and the Raft log's purged behind
            // the last snapshot) comes back now.
            self.state
                .compact_deleted()
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    /// The sealed records this node holds nowhere, `from..until`: after it installed a
    /// snapshot whose records (the unsealed ones of the node that built it) start past its
    /// own archive. [`Node::fetch_archive_gap`] closes it.
    pub fn archive_gap(&self) -> std::io::Result<Option<(u64, u64)>> {
        // The chain's end first: a record appended after this read cannot look like a gap.
        let next = self.state.read(|m| m.ledger().chain().next_seq());
        let first = self.state.first_log_seq().map_err(std::io::Error::other)?;
        let sealed = self.archive.sealed().0;
        let own = first.unwrap_or(next).min(next);
        Ok((own > sealed).then_some((sealed, own)))
    }

    /// Fetches the sealed segments of [`Node::archive_gap`] from the region's other nodes, one
    /// after another, each verified against the chain before it is kept, and checks that the
    /// last one leads to this node's own first record. Returns the segments adopted.
    pub async fn fetch_archive_gap(&self) -> Result<usize, String> {
        let Some((_, until)) = self.archive_gap().map_err(|e| e.to_string())? else {
            return Ok(0);
        };
        let peers = self.peers();
        let mut adopted = 0;
        let mut last_error = String::from("no peer to fetch from");
        'peers: for (peer, addr) in peers {
            let mut client =
                match crate::network::peer_client(&self.transport, &addr, self.outgoing) {
                    Ok(c) => c,
                    Err(e) => {
                        last_error = format!("node {peer} at {addr}: {e}");
                        continue;
                    }
                };
            while self.archive.sealed().0 < until {
                let first_seq = self.archive.sealed().0;
                let bytes = match crate::network::fetch_segment(
                    &mut client,
                    &self.region,
                    self.id,
                    first_seq,
                )
                .await
                {
                    Ok(b) => b,
                    Err(e) => {
                        last_error = format!("node {peer} at {addr}, segment {first_seq}: {e}");
                        continue 'peers;
                    }
                };
                let archive = self.archive.clone();
                let path = match tokio::task::spawn_blocking(move || archive.adopt(&bytes)).await {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        last_error = format!("node {peer}'s segment {first_seq}: {e}");
                        continue 'peers;
                    }
                    Err(e) => return Err(format!("the adopting task failed: {e}")),
                };
                self.sign_heads(std::slice::from_ref(&path))
                    .map_err(|e| e.to_string())?;
                tracing::info!(node = self.id, from = peer, file = %path.display(), "fetched a sealed segment this node lacked");
                adopted += 1;
            }
            break;
        }
        if self.archive.sealed().0 < until {
            return Err(format!(
                "sealed records {}..{until} are still missing here: {last_error}",
                self.archive.sealed().0
            ));
        }
        self.check_archive_joins()?;
        Ok(adopted)
    }

    /// Fetches every segment found damaged here ([`crate::archive::Archive::damaged`]) from
    /// the region's other nodes and puts it back once it verifies and joins its neighbours.
    /// Returns the segments repaired.
    pub async fn repair_damaged(&self) -> Result<usize, String> {
        let mut repaired = 0;
        let mut last_error = String::from("no peer to fetch from");
        for first in self.archive.damaged() {
            let mut done = false;
            for (peer, addr) in self.peers() {
                let mut client =
                    match crate::network::peer_client(&self.transport, &addr, self.outgoing) {
                        Ok(c) => c,
                        Err(e) => {
                            last_error = format!("node {peer} at {addr}: {e}");
                            continue;
                        }
                    };
                let bytes =
                    match crate::network::fetch_segment(&mut client, &self.region, self.id, first)
                        .await
                    {
                        Ok(b) => b,
                        Err(e) => {
                            last_error = format!("node {peer} at {addr}, segment {first}: {e}");
                            continue;
                        }
                    };
                let archive = self.archive.clone();
                match tokio::task::spawn_blocking(move || archive.repair(first, &bytes)).await {
                    Ok(Ok(path)) => {
                        self.sign_heads(std::slice::from_ref(&path))
                            .map_err(|e| e.to_string())?;
                        self.metrics.segment_repaired();
                        tracing::info!(node = self.id, from = peer, file = %path.display(), "repaired a damaged segment with a peer's copy");
                        repaired += 1;
                        done = true;
                        break;
                    }
                    Ok(Err(e)) => last_error = format!("node {peer}'s segment {first}: {e}"),
                    Err(e) => return Err(format!("the repairing task failed: {e}")),
                }
            }
            if !done {
                return Err(format!("segment {first} is still damaged: {last_error}"));
            }
        }
        Ok(repaired)
    }

    /// The region's other voters and learners, `(node id, address)`.
    fn peers(&self) -> Vec<(u64, String)> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// The archive's head must be the `prev_hash` of the first record this node stores (or the
    /// chain's head when it stores none): the fetched history and the node's own records are
    /// one chain.
    fn check_archive_joins(&self) -> Result<(), String> {
        let (sealed, head) = self.archive.sealed();
        let stored = self
            .state
            .log_records(sealed, 1)
            .map_err(|e| e.to_string())?;
        let expected = match stored.first() {
            Some((seq, record)) if *seq == sealed => {
                match shared::log::segment::read_item(record, 0) {
                    Ok(shared::log::segment::Item::Record(r)) => r.prev_hash.to_vec(),
                    _ => return Err(format!("stored record {seq} is malformed")),
                }
            }
            _ => self
                .state
                .read(|m| {
                    let c = m.ledger().chain();
                    (c.next_seq() == sealed).then(|| c.head().to_vec())
                })
                .ok_or_else(|| format!("no stored record follows the archive's end at {sealed}"))?,
        };
        if expected != head {
            return Err(format!(
                "the archive fetched from peers ends at {sealed} with head {}, but this node's \
                 record {sealed} follows {}: the replicas' logs differ",
                hex::encode(head),
                hex::encode(&expected)
            ));
        }
        Ok(())
    }

    /// The financial-log records from `from` on, at most `max`: from the state store, or from
    /// the sealed segments once they are forgotten there. Blocking file I/O.
    pub fn read_log(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, ReadLogError> {
        let stored = self
            .state
            .log_records(from, max)
            .map_err(std::io::Error::other)?;
        if stored.first().is_some_and(|(seq, _)| *seq == from) {
            return Ok(stored);
        }
        let next = self.state.read(|m| m.ledger().chain().next_seq());
        if from >= next {
            return Ok(Vec::new());
        }
        match self.archive.read(from, max)? {
            Some(records) => Ok(records),
            None => Err(ReadLogError::NotYetFetched {
                from,
                until: stored.first().map_or(next, |(seq, _)| *seq),
            }),
        }
    }

    /// Stops Raft (the storage stays as it is, for a restart).
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(node = self.id, error = %e, "raft shutdown");
        }
    }
}
