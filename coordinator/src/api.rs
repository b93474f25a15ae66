//! The gRPC services of a coordinator node: the lease API (edges), the admin API (operators and
//! `budgetctl`) and the audit API. Requests are validated into domain types at this boundary; a
//! bad request gets `INVALID_ARGUMENT` naming the field and changes nothing. Writes sent to a
//! follower are answered with `not_leader` and the leader's address, for the client to retry
//! there. Balance reads are linearizable (`ensure_linearizable` before reading).

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use openraft::BasicNode;
use shared::log::SpendEvent;
use shared::proto::nonneg_micros;
use shared::proto::v1 as pb;
use shared::tls::Role;
use shared::{CampaignId, EdgeId, LeaseId, Money};
use tokio::net::TcpListener;
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::{Request, Response, Status};

use crate::ledger::{Command, Refusal, Reply, RequestKey};
use crate::node::{Node, ProposeError};
use crate::wire;

/// Most log records one `ReadLog` call streams.
pub const READ_LOG_MAX: usize = 100_000;

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn not_leader(leader: Option<(u64, String)>) -> pb::NotLeader {
    let (leader_node, leader_addr) = leader.unwrap_or_default();
    pb::NotLeader {
        leader_node,
        leader_addr,
    }
}

fn indefinite(e: ProposeError) -> Status {
    // The outcome is unknown: UNAVAILABLE tells the client to retry with the same key, which
    // is safe because every command is idempotent.
    Status::unavailable(e.to_string())
}

/// A proposal's outcome as the services answer it: applied, refused by a follower (with the
/// leader it knows), or indefinite (an error status: the client retries with the same key).
type Proposed = Result<Result<(Reply, u64), Option<(u64, String)>>, Status>;

fn proposed(r: Result<(Reply, u64), ProposeError>) -> Proposed {
    match r {
        Ok(r) => Ok(Ok(r)),
        Err(ProposeError::NotLeader { leader }) => Ok(Err(leader)),
        Err(e) => Err(indefinite(e)),
    }
}

/// The services of one node.
#[derive(Clone)]
pub struct Api {
    node: Arc<Node>,
    sync: Arc<crate::region::Sync>,
}

impl Api {
    /// Confirms leadership with a quorum and waits until everything committed before now is
    /// applied here: what is read next is linearizable. Returns the read index.
    async fn linearizable(&self) -> Result<u64, Status> {
        crate::raft::read_index(&self.node.raft)
            .await
            .map_err(|e| Status::unavailable(format!("not a linearizable reader here: {e}")))
    }

    /// The services of `node`, whose side of region sync is `sync`.
    pub fn new(node: Arc<Node>, sync: Arc<crate::region::Sync>) -> Api {
        Api { node, sync }
    }

    async fn propose(&self, command: Command) -> Proposed {
        proposed(self.node.propose(command).await)
    }

    /// An admin command that names one campaign (pause, resume).
    async fn campaign_command(
        &self,
        request: Request<pb::CampaignRequest>,
        make: fn(RequestKey, CampaignId) -> Command,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let r = request.into_inner();
        let key = wire::request_key(r.idempotency_key.as_ref())?;
        let campaign = r
            .campaign
            .parse()
            .map_err(crate::wire::id_err("campaign"))?;
        self.admin(make(key, campaign)).await
    }

    async fn admin(&self, command: Command) -> Result<Response<pb::AdminReply>, Status> {
        let result = match self.propose(command).await? {
            Err(leader) => pb::admin_reply::Result::NotLeader(not_leader(leader)),
            Ok((Reply::Refused(Refusal::Invalid { field, problem }), _)) => {
                return Err(bad(format!("{field}: {problem}")));
            }
            Ok((Reply::Refused(why), _)) => pb::admin_reply::Result::Refused(why.to_string()),
            Ok((_, index)) => pb::admin_reply::Result::AppliedAtIndex(index),
        };
        Ok(Response::new(pb::AdminReply {
            result: Some(result),
        }))
    }
}

/// What the lease API needs of the node it runs on. [`Node`] is one; the simulation's nodes
/// (crate `sim`) are others, so that simulated edges talk to the API real edges talk to.
pub trait LeaseHost: Send + Sync + 'static {
    /// Proposes `command` through this node ([`Node::propose`]): the reply and the entry's
    /// index, once applied here.
    fn write(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = Result<(Reply, u64), ProposeError>> + Send;
    /// Reads the ledger as this node has applied it.
    fn ledger<T>(&self, f: impl FnOnce(&crate::ledger::Ledger) -> T) -> T;
    /// This node's monotonic clock.
    fn mono(&self) -> std::time::Duration;
    /// Counts what a spend report found that contradicts the ledger (the node's metrics).
    fn report_findings(&self, anomalies: u32, conflicts: u32, unknown_bids: u32);
}

impl LeaseHost for Node {
    fn write(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = Result<(Reply, u64), ProposeError>> + Send {
        self.propose(command)
    }

    fn ledger<T>(&self, f: impl FnOnce(&crate::ledger::Ledger) -> T) -> T {
        self.state.read(|m| f(m.ledger()))
    }

    fn mono(&self) -> std::time::Duration {
        self.clock.mono()
    }

    fn report_findings(&self, anomalies: u32, conflicts: u32, unknown_bids: u32) {
        self.metrics
            .report_findings(anomalies, conflicts, unknown_bids);
    }
}

/// The lease API (edges: grants, spend reports, releases, check-ins, the campaign list) of one
/// node.
pub struct LeaseService<H> {
    host: Arc<H>,
    sync: Arc<crate::region::Sync>,
}

impl<H> Clone for LeaseService<H> {
    fn clone(&self) -> Self {
        LeaseService {
            host: self.host.clone(),
            sync: self.sync.clone(),
        }
    }
}

impl<H: LeaseHost> LeaseService<H> {
    /// The lease API of `host`, whose side of region sync is `sync` (it learns where edges
    /// want leases).
    pub fn new(host: Arc<H>, sync: Arc<crate::region::Sync>) -> LeaseService<H> {
        LeaseService { host, sync }
    }

    async fn propose(&self, command: Command) -> Proposed {
        proposed(self.host.write(command).await)
    }
}

#[tonic::async_trait]
impl<H: LeaseHost> pb::lease_api_server::LeaseApi for LeaseService<H> {
    async fn grant_lease(
        &self,
        request: Request<pb::GrantLeaseRequest>,
    ) -> Result<Response<pb::GrantLeaseReply>, Status> {
        let r = request.into_inner();
        let campaign: CampaignId = r
            .campaign
            .parse()
            .map_err(crate::wire::id_err("campaign"))?;
        // Where edges want leases is where rights are wanted (region sync's rebalancing).
        self.sync.asked(&campaign, self.host.mono());
        let command = Command::GrantLease {
            key: wire::request_key(r.idempotency_key.as_ref())?,
            edge: r
                .edge
                .parse::<EdgeId>()
                .map_err(crate::wire::id_err("edge"))?,
            campaign,
            want: nonneg_micros("want_micros", r.want_micros).map_err(bad)?,
        };
        use pb::grant_lease_reply::Result as R;
        let result = match self.propose(command).await? {
            Err(leader) => R::NotLeader(not_leader(leader)),
            Ok((
                Reply::LeaseGranted {
                    lease,
                    amount,
                    buckets,
                    terms,
                },
                index,
            )) => {
                // When this node saw the grant applied, on its monotonic clock: the start of
                // the lease's reclaim wait, for the harness's check of the rule. A retried
                // request answered from memory was applied before (maybe under another
                // leader): not logged, its time would be later than the grant's.
                let fresh = self
                    .host
                    .ledger(|l| l.lease(lease).is_some_and(|l| l.granted_at_index == index));
                if fresh {
                    tracing::debug!(
                        target: "budget::timeline",
                        lease = lease.0,
                        mono_ms = u64::try_from(self.host.mono().as_millis())
                            .unwrap_or(u64::MAX),
                        "lease granted"
                    );
                }
                R::Lease(pb::Lease {
                    lease_id: lease.0,
                    amount_micros: amount.micros(),
                    duration_ms: terms.duration_ms,
                    buckets: buckets.iter().map(pb::Bucket::from).collect(),
                    terms: Some(crate::wire::terms_to_wire(&terms)),
                })
            }
            Ok((Reply::Refused(Refusal::NoRights { .. }), _)) => {
                R::Refused(pb::Refusal::NoRights as i32)
            }
            Ok((Reply::Refused(Refusal::RulesNotRecorded), _)) => {
                // Retriable: the region's first leader records its rules at once.
                return Err(Status::failed_precondition(
                    Refusal::RulesNotRecorded.to_string(),
                ));
            }
            Ok((Reply::Refused(Refusal::Paused { .. }), _)) => {
                R::Refused(pb::Refusal::Paused as i32)
            }
            Ok((Reply::Refused(Refusal::UnknownCampaign { .. }), _)) => {
                R::Refused(pb::Refusal::UnknownCampaign as i32)
            }
            Ok((Reply::Refused(why), _)) => return Err(bad(why)),
            Ok((other, _)) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
        };
        Ok(Response::new(pb::GrantLeaseReply {
            result: Some(result),
        }))
    }

    async fn report_spend(
        &self,
        request: Request<pb::ReportSpendRequest>,
    ) -> Result<Response<pb::ReportSpendReply>, Status> {
        let r = request.into_inner();
        let events = r
            .events
            .iter()
            .map(|e| SpendEvent::try_from(e).map_err(bad))
            .collect::<Result<Vec<_>, _>>()?;
        let command = Command::ReportSpend {
            batch: wire::batch_id(&r.batch_id)?,
            edge: r.edge.parse().map_err(crate::wire::id_err("edge"))?,
            lease: LeaseId(r.lease_id),
            events,
            losses: crate::wire::bid_prices_from_wire("losses", &r.losses)?,
            held: crate::wire::bid_prices_from_wire("held", &r.held)?,
        };
        use pb::report_spend_reply::Result as R;
        let result = match self.propose(command).await? {
            Err(leader) => R::NotLeader(not_leader(leader)),
            Ok((
                Reply::SpendSettled {
                    settled,
                    duplicates,
                    anomalies,
                    log_seq,
                    conflicts,
                    lost,
                    unknown_bids,
                },
                index,
            )) => {
                self.host
                    .report_findings(anomalies, conflicts, unknown_bids);
                if conflicts > 0 || unknown_bids > 0 {
                    tracing::warn!(
                        lease = r.lease_id,
                        edge = %r.edge,
                        conflicts,
                        unknown_bids,
                        "a spend report contradicts what the ledger knew of its bids"
                    );
                }
                R::Settled(pb::SpendSettled {
                    settled_events: settled,
                    duplicate_events: duplicates,
                    anomalies,
                    log_seq: log_seq.unwrap_or(0),
                    raft_index: index,
                    conflicts,
                    lost,
                    unknown_bids,
                })
            }
            Ok((Reply::Refused(Refusal::UnknownLease { lease }), _)) => {
                return Err(Status::not_found(format!("unknown lease {lease}")));
            }
            Ok((Reply::Refused(why), _)) => return Err(bad(why)),
            Ok((other, _)) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
        };
        Ok(Response::new(pb::ReportSpendReply {
            result: Some(result),
        }))
    }

    async fn release_lease(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseReply>, Status> {
        let r = request.into_inner();
        let command = Command::ReleaseLease {
            batch: wire::batch_id(&r.batch_id)?,
            edge: r.edge.parse().map_err(crate::wire::id_err("edge"))?,
            lease: LeaseId(r.lease_id),
            unreserved: Money::from_micros(r.unreserved_micros),
            bids: r.bids,
            in_doubt: crate::wire::parts_from_wire(&r.in_doubt)?,
        };
        use pb::release_lease_reply::Result as R;
        let result = match self.propose(command).await? {
            Err(leader) => R::NotLeader(not_leader(leader)),
            Ok((Reply::LeaseClosed { spent, returned }, _)) => R::Closed(pb::LeaseClosed {
                spent_micros: spent.micros(),
                returned_micros: returned.micros(),
            }),
            Ok((Reply::Refused(Refusal::UnknownLease { lease }), _)) => {
                return Err(Status::not_found(format!("unknown lease {lease}")));
            }
            Ok((Reply::Refused(why), _)) => return Err(bad(why)),
            Ok((other, _)) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
        };
        Ok(Response::new(pb::ReleaseLeaseReply {
            result: Some(result),
        }))
    }

    async fn check_in(
        &self,
        request: Request<pb::CheckInRequest>,
    ) -> Result<Response<pb::CheckInReply>, Status> {
        let r = request.into_inner();
        let command = Command::CheckIn {
            edge: r.edge.parse().map_err(crate::wire::id_err("edge"))?,
            incarnation: r.incarnation,
            covers: r.covers_index,
        };
        use pb::check_in_reply::Result as R;
        let result = match self.propose(command).await? {
            Err(leader) => R::NotLeader(not_leader(leader)),
            Ok((
                Reply::CheckedIn {
                    incarnation,
                    accepted,
                },
                index,
            )) => {
                if !accepted {
                    tracing::info!(edge = %r.edge, sent = r.incarnation, registered = incarnation,
                        "a check-in of an edge process older than the registered one changed nothing");
                }
                R::CheckedIn(pb::CheckedIn {
                    raft_index: index,
                    incarnation,
                    accepted,
                })
            }
            Ok((Reply::Refused(why), _)) => return Err(bad(why)),
            Ok((other, _)) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
        };
        Ok(Response::new(pb::CheckInReply {
            result: Some(result),
        }))
    }

    async fn list_active_campaigns(
        &self,
        request: Request<pb::ListActiveCampaignsRequest>,
    ) -> Result<Response<pb::ListActiveCampaignsReply>, Status> {
        let request = request.into_inner();
        let known = request.known_version;
        let known_spend = Some(request.known_spend_version).filter(|v| *v > 0);
        let reply = self.host.ledger(|ledger| {
            let version = ledger.campaigns_version();
            let unchanged = known != 0 && known == version;
            // The newest day bucket of each campaign whose day spend (or daily budget) changed
            // since the edge last asked: the cost is what changed, not every bucket.
            let changed = ledger.changed_since(known_spend);
            // The edge's campaigns are those of the state at its `known_spend_version` (both
            // came in one reply). Only a node at or past that state, which tracks changes from
            // before it, can send just the campaigns changed since; any other sends them all.
            let delta = !unchanged
                && known != 0
                && !changed.everything
                && known_spend.is_some_and(|s| s <= changed.version);
            let campaigns = if unchanged {
                Vec::new()
            } else if delta {
                changed
                    .campaigns
                    .iter()
                    .filter(|(_, c)| c.version > known)
                    .map(|(id, c)| wire::campaign_to_wire(id, c))
                    .collect()
            } else {
                ledger
                    .campaigns()
                    .map(|(id, c)| wire::campaign_to_wire(id, c))
                    .collect()
            };
            let mut names: BTreeSet<&CampaignId> = changed
                .buckets
                .iter()
                .filter(|(k, _)| matches!(k.bucket, shared::Bucket::Day(_)))
                .map(|(k, _)| &k.campaign)
                .collect();
            names.extend(
                changed
                    .campaigns
                    .iter()
                    .filter(|(_, c)| c.config.daily_budget.is_some())
                    .map(|(id, _)| *id),
            );
            let day_spend = names
                .into_iter()
                .filter_map(|c| ledger.newest_day(c))
                .map(|(key, state)| day_spend_row(ledger, key, state))
                .collect();
            pb::ListActiveCampaignsReply {
                version,
                unchanged,
                campaigns,
                day_spend,
                spend_version: changed.version,
                spend_complete: changed.everything,
                campaigns_delta: delta,
            }
        });
        Ok(Response::new(reply))
    }
}

/// A day bucket's spend for the edges' pacing: settled in every region as this one knows it (a
/// push interval behind, at most), so that the edges of all regions pace the campaign together
/// rather than each to the whole day's budget; and the day's budget as its home set it (a
/// region that only received rights set none: the campaign's daily budget then).
fn day_spend_row(
    ledger: &crate::ledger::Ledger,
    key: &shared::bucket::BucketKey,
    state: &crate::ledger::BucketState,
) -> pb::DaySpend {
    let day = match &key.bucket {
        shared::Bucket::Day(d) => d.to_string(),
        shared::Bucket::Lifetime => String::new(),
    };
    let daily = ledger
        .campaign(&key.campaign)
        .and_then(|c| c.config.daily_budget);
    pb::DaySpend {
        campaign: key.campaign.to_string(),
        day,
        settled_micros: i64::try_from(state.counter.state().total_settled()).unwrap_or(i64::MAX),
        budget_micros: if state.budget.micros() > 0 {
            state.budget.micros()
        } else {
            daily.map_or(0, Money::micros)
        },
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Api {
    async fn upsert_campaign(
        &self,
        request: Request<pb::UpsertCampaignRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let r = request.into_inner();
        let key = wire::request_key(r.idempotency_key.as_ref())?;
        let (campaign, config) =
            wire::campaign_config(r.config.as_ref().ok_or_else(|| bad("config: missing"))?)?;
        self.admin(Command::UpsertCampaign {
            key,
            campaign,
            config,
        })
        .await
    }

    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let r = request.into_inner();
        let key = wire::request_key(r.idempotency_key.as_ref())?;
        let b = wire::bucket_key(r.bucket.as_ref())?;
        let budget = nonneg_micros("budget_micros", r.budget_micros).map_err(bad)?;
        self.admin(Command::SetBudget {
            key,
            campaign: b.campaign,
            bucket: b.bucket,
            budget,
        })
        .await
    }

    async fn pause_campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        self.campaign_command(request, |key, campaign| Command::Pause { key, campaign })
            .await
    }

    async fn resume_campaign(
        &self,
        request: Request<pb::CampaignRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        self.campaign_command(request, |key, campaign| Command::Resume { key, campaign })
            .await
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let key = wire::bucket_key(request.into_inner().bucket.as_ref())?;
        let read_at = self.linearizable().await?;
        let balance = self.node.state.read(|m| {
            let l = m.ledger();
            match l.bucket(&key) {
                Some(b) => Ok(wire::balance(l.region(), &key, b, read_at)),
                // A campaign's bucket that holds nothing yet (no budget set, a day not yet
                // opened) is all zeros.
                None if l.campaign(&key.campaign).is_some() => Ok(wire::balance(
                    l.region(),
                    &key,
                    &crate::ledger::BucketState::new(l.region()),
                    read_at,
                )),
                None => Err(Status::not_found(format!(
                    "unknown campaign {}",
                    key.campaign
                ))),
            }
        });
        balance.map(Response::new)
    }

    async fn list_buckets(
        &self,
        request: Request<pb::ListBucketsRequest>,
    ) -> Result<Response<pb::ListBucketsReply>, Status> {
        let campaign = request.into_inner().campaign;
        let read_at = self.linearizable().await?;
        let balances = self.node.state.read(|m| {
            m.ledger()
                .buckets()
                .filter(|(k, _)| campaign.is_empty() || k.campaign.as_str() == campaign)
                .map(|(k, b)| wire::balance(m.ledger().region(), k, b, read_at))
                .collect()
        });
        Ok(Response::new(pb::ListBucketsReply { balances }))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesReply>, Status> {
        let r = request.into_inner();
        let leases = self.node.state.read(|m| {
            m.ledger()
                .leases()
                .filter(|(_, l)| r.campaign.is_empty() || l.campaign.as_str() == r.campaign)
                .filter(|(_, l)| r.include_closed || l.state != crate::ledger::LeaseState::Closed)
                .map(|(id, l)| {
                    let parts = match &l.state {
                        crate::ledger::LeaseState::InDoubt { parts } => {
                            crate::wire::parts_to_wire(parts)
                        }
                        _ => Vec::new(),
                    };
                    pb::LeaseInfo {
                        lease_id: id.0,
                        edge: l.edge.to_string(),
                        campaign: l.campaign.to_string(),
                        amount_micros: l.amount.micros(),
                        spent_micros: l.spent.micros(),
                        state: l.state.name().into(),
                        in_doubt_micros: l.state.in_doubt().micros(),
                        duration_ms: l.terms.duration_ms,
                        granted_at_index: l.granted_at_index,
                        in_doubt_parts: parts,
                        lost_micros: l.lost.micros(),
                        bids: l.bids.unwrap_or(0),
                    }
                })
                .collect()
        });
        Ok(Response::new(pb::ListLeasesReply { leases }))
    }

    async fn initialize(
        &self,
        request: Request<pb::InitializeRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let members: std::collections::BTreeMap<u64, String> = request
            .into_inner()
            .members
            .into_iter()
            .map(|m| (m.node, m.addr))
            .collect();
        if members.is_empty() || members.values().any(String::is_empty) {
            return Err(bad("members: at least one, each with an address"));
        }
        if !members.contains_key(&self.node.id) {
            return Err(bad(format!(
                "members: must include this node ({})",
                self.node.id
            )));
        }
        self.node
            .initialize(members)
            .await
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(pb::AdminReply {
            result: Some(pb::admin_reply::Result::AppliedAtIndex(0)),
        }))
    }

    async fn trigger_snapshot(
        &self,
        _: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let index = self.node.state.applied_index();
        self.node
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::unavailable(format!("raft is not running: {e}")))?;
        Ok(Response::new(pb::AdminReply {
            result: Some(pb::admin_reply::Result::AppliedAtIndex(index)),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let node = request.into_inner().node;
        let membership = self
            .node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if !membership.nodes().any(|(id, _)| *id == node) {
            return Err(Status::not_found(format!("node {node} is not a member")));
        }
        let voters: std::collections::BTreeSet<u64> =
            membership.voter_ids().filter(|v| *v != node).collect();
        if voters.is_empty() {
            return Err(bad("cannot remove the last voter"));
        }
        match self.node.raft.change_membership(voters, false).await {
            Ok(resp) => Ok(Response::new(pb::AdminReply {
                result: Some(pb::admin_reply::Result::AppliedAtIndex(resp.log_id.index)),
            })),
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            )) => {
                let leader = f.leader_id.zip(f.leader_node.map(|n| n.addr));
                Ok(Response::new(pb::AdminReply {
                    result: Some(pb::admin_reply::Result::NotLeader(not_leader(leader))),
                }))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn get_params(
        &self,
        _: Request<pb::GetParamsRequest>,
    ) -> Result<Response<pb::RegionParams>, Status> {
        let read_at = self.linearizable().await?;
        let reply = self.node.state.read(|m| {
            let l = m.ledger();
            crate::wire::params_to_wire(l.params(), l.params_recorded(), read_at)
        });
        Ok(Response::new(reply))
    }

    async fn set_params(
        &self,
        request: Request<pb::SetParamsRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let r = request.into_inner();
        let key = wire::request_key(r.idempotency_key.as_ref())?;
        let params = r.params.as_ref().ok_or_else(|| bad("params: missing"))?;
        let params = crate::wire::params_from_wire(params)?;
        self.admin(Command::SetParams { key, params }).await
    }

    async fn list_edges(
        &self,
        _: Request<pb::ListEdgesRequest>,
    ) -> Result<Response<pb::ListEdgesReply>, Status> {
        let read_at = self.linearizable().await?;
        let reply = self.node.state.read(|m| {
            let ledger = m.ledger();
            let waiting = ledger.waiting_for_check_ins();
            pb::ListEdgesReply {
                edges: ledger
                    .edges()
                    .iter()
                    .map(|(edge, c)| pb::EdgeInfo {
                        edge: edge.to_string(),
                        incarnation: c.incarnation,
                        covers_index: c.covers,
                    })
                    .collect(),
                covered_index: match ledger.edges_covered() {
                    u64::MAX => 0,
                    i => i,
                },
                parts_waiting: waiting.parts,
                waiting_micros: waiting.money.micros(),
                lowest_due_index: waiting.lowest_due.unwrap_or(0),
                read_at_index: read_at,
            }
        });
        Ok(Response::new(reply))
    }

    async fn retire_edge(
        &self,
        request: Request<pb::RetireEdgeRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let r = request.into_inner();
        let key = wire::request_key(r.idempotency_key.as_ref())?;
        let edge = r.edge.parse().map_err(crate::wire::id_err("edge"))?;
        self.admin(Command::RetireEdge { key, edge }).await
    }

    async fn cluster_status(
        &self,
        _: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        let m = self.node.raft.metrics().borrow().clone();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n): (&u64, &BasicNode)| pb::Member {
                node: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        Ok(Response::new(pb::ClusterStatusReply {
            region: self.node.region.to_string(),
            node: self.node.id,
            leader_node: m.current_leader.unwrap_or(0),
            term: m.current_term,
            last_applied_index: m.last_applied.map_or(0, |l| l.index),
            members,
        }))
    }

    async fn region_status(
        &self,
        request: Request<pb::RegionStatusRequest>,
    ) -> Result<Response<pb::RegionStatusReply>, Status> {
        let r = request.into_inner();
        let campaign: Option<CampaignId> = if r.campaign.is_empty() {
            None
        } else {
            Some(
                r.campaign
                    .parse()
                    .map_err(crate::wire::id_err("campaign"))?,
            )
        };
        if self.node.raft.metrics().borrow().current_leader != Some(self.node.id) {
            return Ok(Response::new(pb::RegionStatusReply {
                region: self.node.region.to_string(),
                not_leader: Some(not_leader(self.node.leader())),
                ..Default::default()
            }));
        }
        Ok(Response::new(
            self.sync.status(&self.node, campaign.as_ref()),
        ))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AdminReply>, Status> {
        let r = request.into_inner();
        if r.addr.is_empty() {
            return Err(bad("addr: missing"));
        }
        let result = self
            .node
            .raft
            .add_learner(r.node, BasicNode { addr: r.addr }, true)
            .await;
        let index = match result {
            Ok(resp) => resp.log_id.index,
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            )) => {
                let leader = f.leader_id.zip(f.leader_node.map(|n| n.addr));
                return Ok(Response::new(pb::AdminReply {
                    result: Some(pb::admin_reply::Result::NotLeader(not_leader(leader))),
                }));
            }
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        if r.voter {
            let mut voters: std::collections::BTreeSet<u64> = self
                .node
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            voters.insert(r.node);
            if let Err(e) = self.node.raft.change_membership(voters, false).await {
                return Err(Status::unavailable(e.to_string()));
            }
        }
        Ok(Response::new(pb::AdminReply {
            result: Some(pb::admin_reply::Result::AppliedAtIndex(index)),
        }))
    }
}

type RecordStream = Pin<Box<dyn Stream<Item = Result<pb::LogRecord, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_server::Audit for Api {
    async fn head(&self, _: Request<pb::HeadRequest>) -> Result<Response<pb::LogHead>, Status> {
        // The head and the index it was applied at, from one moment.
        let (next, head, raft_index) = self.node.state.read_applied(|m, applied| {
            (
                m.ledger().chain().next_seq(),
                m.ledger().chain().head(),
                applied,
            )
        });
        Ok(Response::new(pb::LogHead {
            region: self.node.region.to_string(),
            seq: next.saturating_sub(1),
            hash: if next == 0 { Vec::new() } else { head.to_vec() },
            raft_index,
        }))
    }

    async fn signed_head(
        &self,
        _: Request<pb::HeadRequest>,
    ) -> Result<Response<pb::SignedHeadReply>, Status> {
        let Some(signer) = &self.node.head_signer else {
            return Err(Status::failed_precondition(
                "this coordinator runs without TLS (--insecure-plaintext): it has no key to \
                 sign heads with",
            ));
        };
        let (next, head) = self
            .node
            .state
            .read(|m| (m.ledger().chain().next_seq(), m.ledger().chain().head()));
        if next == 0 {
            return Err(Status::failed_precondition(
                "the region's log is empty: no head to sign yet",
            ));
        }
        let signed = signer
            .sign(next - 1, &head, self.node.clock.wall_us())
            .map_err(|e| Status::internal(e.to_string()))?;
        let json =
            serde_json::to_string_pretty(&signed).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::SignedHeadReply { json }))
    }

    type ReadLogStream = RecordStream;

    async fn read_log(
        &self,
        request: Request<pb::ReadLogRequest>,
    ) -> Result<Response<RecordStream>, Status> {
        let r = request.into_inner();
        let max = match usize::try_from(r.max_records) {
            Ok(0) | Err(_) => READ_LOG_MAX,
            Ok(n) => n.min(READ_LOG_MAX),
        };
        let node = self.node.clone();
        let from = r.from_seq;
        let records = tokio::task::spawn_blocking(move || node.read_log(from, max))
            .await
            .map_err(|e| Status::internal(format!("reading the log: {e}")))?
            .map_err(|e| match e {
                crate::node::ReadLogError::NotYetFetched { .. }
                | crate::node::ReadLogError::Damaged(_) => Status::unavailable(e.to_string()),
                crate::node::ReadLogError::Io(_) => Status::internal(e.to_string()),
            })?;
        let items: Vec<Result<pb::LogRecord, Status>> = records
            .into_iter()
            .map(|(seq, record)| Ok(pb::LogRecord { seq, record }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn list_segments(
        &self,
        _: Request<pb::ListSegmentsRequest>,
    ) -> Result<Response<pb::ListSegmentsReply>, Status> {
        let dir = crate::archive::segments_dir(&self.node.data_dir);
        let files = if dir.exists() {
            match shared::log::verify::segment_files(&dir) {
                Ok(f) => f,
                Err(shared::log::verify::ArchiveError::NoSegments(_)) => Vec::new(),
                Err(e) => return Err(Status::internal(e.to_string())),
            }
        } else {
            Vec::new()
        };
        let mut segments = Vec::new();
        for f in files {
            let bytes =
                std::fs::read(&f).map_err(|e| Status::internal(format!("{}: {e}", f.display())))?;
            let at = bytes
                .len()
                .saturating_sub(shared::log::segment::TRAILER_LEN);
            if let Ok(shared::log::segment::Item::Trailer(t, _)) =
                shared::log::segment::read_item(&bytes, at)
            {
                segments.push(pb::SegmentInfo {
                    name: f
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    first_seq: t.first_seq,
                    last_seq: t.last_seq,
                    head_hash: t.head_hash.to_vec(),
                    bytes: bytes.len() as u64,
                });
            }
        }
        Ok(Response::new(pb::ListSegmentsReply { segments }))
    }
}

impl Api {
    /// With TLS, a region's counters and requests come only from that region's coordinators:
    /// the caller's certificate must name the region the message speaks for.
    fn check_sender<T>(request: &Request<T>, from_region: &str) -> Result<(), Status> {
        match request.extensions().get::<shared::tls::Peer>() {
            // Plaintext: nothing to check (local development only).
            None => Ok(()),
            Some(peer) if peer.region.as_deref() == Some(from_region) => Ok(()),
            Some(peer) => Err(Status::permission_denied(format!(
                "{:?} is a coordinator of region {}; it may not speak for region {from_region}",
                peer.name,
                peer.region.as_deref().unwrap_or("(none)")
            ))),
        }
    }

    fn unknown_peer(&self, r: &shared::RegionId) -> Status {
        Status::permission_denied(format!(
            "region {r} is not a configured peer of region {}",
            self.node.region
        ))
    }
}

#[tonic::async_trait]
impl pb::region_sync_server::RegionSync for Api {
    async fn push_state(
        &self,
        request: Request<pb::RegionState>,
    ) -> Result<Response<pb::PushAck>, Status> {
        use crate::region::ReceiveError as E;
        use pb::push_ack::Result as R;
        Self::check_sender(&request, &request.get_ref().from_region)?;
        let result = match self.sync.receive(&self.node, request.into_inner()).await {
            Ok(index) => R::MergedAtIndex(index),
            Err(E::NotLeader(leader)) => R::NotLeader(not_leader(leader)),
            Err(E::Refused(why)) => R::Refused(why),
            Err(E::Invalid(why)) => return Err(bad(why)),
            Err(E::UnknownPeer(r)) => return Err(self.unknown_peer(&r)),
            Err(E::Unavailable(why)) => return Err(Status::unavailable(why)),
        };
        Ok(Response::new(pb::PushAck {
            result: Some(result),
        }))
    }

    async fn request_rights(
        &self,
        request: Request<pb::RightsRequest>,
    ) -> Result<Response<pb::RightsReply>, Status> {
        use crate::region::DonateError as E;
        use pb::rights_reply::Result as R;
        Self::check_sender(&request, &request.get_ref().from_region)?;
        let (result, seq) = match self.sync.donate(&self.node, request.into_inner()).await {
            Ok((amount, seq)) => (R::GrantedMicros(amount.micros()), seq),
            Err(E::NotLeader(leader)) => (R::NotLeader(not_leader(leader)), 0),
            Err(E::Invalid(why)) => return Err(bad(why)),
            Err(E::UnknownPeer(r)) => return Err(self.unknown_peer(&r)),
            Err(E::Unavailable(why)) => return Err(Status::unavailable(why)),
        };
        Ok(Response::new(pb::RightsReply {
            result: Some(result),
            transfer_log_seq: seq,
        }))
    }
}

/// [`serve`] for a region on its own: no peer regions to sync with (tests, benchmarks).
pub async fn serve_alone(
    node: &Arc<Node>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let sync = Arc::new(crate::region::Sync::alone(node.region.clone()));
    serve(node, &sync, listener, shutdown).await
}

/// Which roles each gRPC service admits (with TLS; DESIGN §10).
pub struct Access {
    /// Raft between the nodes of a region.
    pub raft: &'static [Role],
    /// Leases, spend reports and the campaign list: edges; operators list campaigns.
    pub lease: &'static [Role],
    /// Campaigns, budgets, balances, membership.
    pub admin: &'static [Role],
    /// The financial log, read only.
    pub audit: &'static [Role],
    /// Pushes and rights transfers between regions.
    pub region_sync: &'static [Role],
}

/// The coordinator's access rules.
pub const ACCESS: Access = Access {
    raft: &[Role::Coordinator],
    lease: &[Role::Edge, Role::Operator],
    admin: &[Role::Operator],
    audit: &[Role::Auditor, Role::Operator],
    region_sync: &[Role::Coordinator],
};

/// Serves the node's gRPC services (Raft transport, lease, admin, audit, region sync through
/// `sync`) on `listener` until `shutdown` resolves. With TLS, each service admits only the
/// roles in [`ACCESS`].
pub async fn serve(
    node: &Arc<Node>,
    sync: &Arc<crate::region::Sync>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use shared::proto::v1::{
        admin_server::AdminServer, audit_server::AuditServer, lease_api_server::LeaseApiServer,
        region_sync_server::RegionSyncServer,
    };
    use tonic::service::interceptor::InterceptedService as Guarded;
    let api = Api::new(node.clone(), sync.clone());
    let t = &node.transport;
    t.server(tonic::transport::Server::builder())?
        .add_service(Guarded::new(
            node.raft_service(),
            // Raft only from this region's own coordinators.
            t.guard_in_region(ACCESS.raft, node.region.as_str()),
        ))
        .add_service(Guarded::new(
            LeaseApiServer::new(LeaseService::new(node.clone(), sync.clone())),
            // Leases only to this region's edges (operators name no region).
            t.guard_in_region(ACCESS.lease, node.region.as_str()),
        ))
        .add_service(Guarded::new(
            AdminServer::new(api.clone()),
            t.guard(ACCESS.admin),
        ))
        .add_service(Guarded::new(
            AuditServer::new(api.clone()),
            t.guard(ACCESS.audit),
        ))
        .add_service(Guarded::new(
            RegionSyncServer::new(api)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            t.guard(ACCESS.region_sync),
        ))
        .serve_with_incoming_shutdown(
            // No Nagle: a small reply must not wait for the client's delayed ACK (40 ms).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
