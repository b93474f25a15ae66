//! The region's coordinators as the edge sees them: writes go to the leader, found by following
//! `NotLeader` answers; any node answers the campaign poll. Nothing here runs on the bid path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::proto::v1 as pb;
use shared::proto::v1::lease_api_client::LeaseApiClient;
use tonic::codegen::{StdError, http};
use tower::ServiceExt;

/// How calls reach one coordinator: any gRPC service. Over the network it is tonic's channel;
/// a simulation gives its in-process nodes' services instead, so that the edge's own retry,
/// redirect and batching code runs there unchanged.
pub type Link = tower::util::BoxCloneService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    LinkError,
>;

/// A link's failure (no answer): the transport's error, kept as the source, where tonic looks
/// for what it means (a timeout, a reset connection).
#[derive(Debug)]
pub struct LinkError(pub StdError);

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for LinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Makes the link to the coordinator at an address.
pub type Dial = Arc<dyn Fn(&str) -> Result<Link, String> + Send + Sync>;

/// A call that did not get an answer from a leader.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No node answered, or none knew a leader, within the tries allowed. Indefinite: the
    /// command may have been applied (its key makes a retry safe).
    #[error("no leader answered after {tries} tries: {last}")]
    Unavailable {
        /// Tries made.
        tries: u32,
        /// The last error seen.
        last: String,
    },
    /// The leader refused the call for good (a bad argument, an unknown lease): sending it
    /// again will not help. Definite: nothing was applied.
    #[error("refused: {0}")]
    Refused(String),
}

/// Tries of one call before giving up (each try moves to another node or to the leader named).
const TRIES: u32 = 8;

/// The coordinators of the edge's region.
pub struct Coordinators {
    endpoints: Vec<String>,
    channels: Mutex<HashMap<String, Link>>,
    /// The node believed to lead.
    leader: Mutex<Option<String>>,
    next: std::sync::atomic::AtomicUsize,
    dial: Dial,
}

/// The three shapes a write reply takes.
pub enum Answer<T> {
    /// The leader answered.
    Done(T),
    /// A follower answered with the leader's address, if it knows it.
    NotLeader(Option<String>),
}

impl Coordinators {
    /// Coordinators at `endpoints` (`host:port`), each call bounded by `timeout`, called from
    /// `outgoing` when set, over `transport`.
    pub fn new(
        endpoints: Vec<String>,
        timeout: Duration,
        outgoing: Option<std::net::IpAddr>,
        transport: shared::tls::Transport,
    ) -> Coordinators {
        Coordinators::dialing(
            endpoints,
            Arc::new(move |addr: &str| {
                network_link(addr, timeout, outgoing, &transport)
                    .map(|c| Link::new(c.map_err(|e| LinkError(e.into()))))
            }),
        )
    }

    /// Coordinators at `endpoints`, each reached through the link `dial` makes for its address.
    pub fn dialing(endpoints: Vec<String>, dial: Dial) -> Coordinators {
        Coordinators {
            endpoints,
            channels: Mutex::new(HashMap::new()),
            leader: Mutex::new(None),
            next: std::sync::atomic::AtomicUsize::new(0),
            dial,
        }
    }

    fn channel(&self, addr: &str) -> Result<Link, String> {
        let mut ch = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = ch.get(addr) {
            return Ok(c.clone());
        }
        let c = (self.dial)(addr)?;
        ch.insert(addr.to_owned(), c.clone());
        Ok(c)
    }

    fn pick(&self) -> String {
        if let Some(l) = self
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return l;
        }
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.endpoints[i % self.endpoints.len()].clone()
    }

    fn set_leader(&self, l: Option<String>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = l;
    }

    /// Calls the leader with `f`, following redirects and moving on from dead nodes.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: Fn(LeaseApiClient<Link>) -> Fut,
        Fut: std::future::Future<Output = Result<Answer<T>, tonic::Status>>,
    {
        let mut last = String::new();
        for attempt in 0..TRIES {
            let addr = self.pick();
            let client = match self.channel(&addr) {
                Ok(c) => LeaseApiClient::new(c),
                Err(e) => {
                    last = e;
                    self.set_leader(None);
                    continue;
                }
            };
            match f(client).await {
                Ok(Answer::Done(t)) => {
                    self.set_leader(Some(addr));
                    return Ok(t);
                }
                Ok(Answer::NotLeader(hint)) => {
                    last = format!("{addr} is not the leader");
                    self.set_leader(hint.filter(|h| !h.is_empty() && *h != addr));
                    if self
                        .leader
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .is_none()
                    {
                        // No leader known (an election): wait a little before asking again.
                        tokio::time::sleep(backoff(attempt)).await;
                    }
                }
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::InvalidArgument | tonic::Code::NotFound
                    ) =>
                {
                    // A definite refusal: retrying will not help.
                    return Err(CallError::Refused(s.message().to_owned()));
                }
                Err(s) => {
                    last = format!("{addr}: {}", s.message());
                    self.set_leader(None);
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        Err(CallError::Unavailable { tries: TRIES, last })
    }

    /// The campaigns, from any node that answers.
    pub async fn campaigns(
        &self,
        known_version: u64,
        known_spend_version: u64,
    ) -> Result<pb::ListActiveCampaignsReply, CallError> {
        let mut last = String::new();
        for _ in 0..self.endpoints.len().max(1) {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let addr = self.endpoints[i % self.endpoints.len()].clone();
            let Ok(ch) = self.channel(&addr) else {
                continue;
            };
            match LeaseApiClient::new(ch)
                .list_active_campaigns(pb::ListActiveCampaignsRequest {
                    known_version,
                    known_spend_version,
                })
                .await
            {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => last = format!("{addr}: {}", s.message()),
            }
        }
        Err(CallError::Unavailable {
            tries: u32::try_from(self.endpoints.len()).unwrap_or(u32::MAX),
            last,
        })
    }
}

/// tonic's channel to the coordinator at `addr`, each call bounded by `timeout`, from
/// `outgoing` when set, over `transport` (connected at its first call).
fn network_link(
    addr: &str,
    timeout: Duration,
    outgoing: Option<std::net::IpAddr>,
    transport: &shared::tls::Transport,
) -> Result<tonic::transport::Channel, String> {
    // HTTP/2 pings find a connection a partition killed within seconds. Without them the
    // channel kept it after the heal, and every call timed out until TCP's retransmission
    // backoff ran out: an edge cut off from its coordinators for 33 s reached them again
    // only 27 s after the heal (jepsen seed 19), its batches, releases and check-ins waiting.
    Ok(transport
        .endpoint(addr)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .local_address(outgoing)
        .connect_lazy())
}

/// A grant's reply as [`Coordinators::call`] takes it: the lease, or the refusal's code, from
/// the leader; a redirect from a follower.
pub fn granted(reply: pb::GrantLeaseReply) -> Answer<Result<pb::Lease, i32>> {
    match reply.result {
        Some(pb::grant_lease_reply::Result::Lease(l)) => Answer::Done(Ok(l)),
        Some(pb::grant_lease_reply::Result::Refused(r)) => Answer::Done(Err(r)),
        Some(pb::grant_lease_reply::Result::NotLeader(n)) => Answer::NotLeader(hint(&n)),
        None => Answer::NotLeader(None),
    }
}

/// 20 ms, doubling, at most 500 ms.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((20u64 << attempt.min(5)).min(500))
}

/// The leader address carried by a `NotLeader`.
pub fn hint(n: &pb::NotLeader) -> Option<String> {
    (!n.leader_addr.is_empty()).then(|| n.leader_addr.clone())
}

#[cfg(test)]
mod link_tests {
    use super::*;
    use pb::lease_api_server::{LeaseApi, LeaseApiServer};
    use tonic::{Request, Response, Status};

    /// A node in this process: a follower that names the leader, or the leader, which grants.
    struct Node {
        leads: bool,
    }

    #[tonic::async_trait]
    impl LeaseApi for Node {
        async fn grant_lease(
            &self,
            r: Request<pb::GrantLeaseRequest>,
        ) -> Result<Response<pb::GrantLeaseReply>, Status> {
            use pb::grant_lease_reply::Result as R;
            let result = if self.leads {
                R::Lease(pb::Lease {
                    lease_id: 7,
                    amount_micros: r.into_inner().want_micros,
                    ..Default::default()
                })
            } else {
                R::NotLeader(pb::NotLeader {
                    leader_node: 2,
                    leader_addr: "n2".into(),
                })
            };
            Ok(Response::new(pb::GrantLeaseReply {
                result: Some(result),
            }))
        }
        async fn report_spend(
            &self,
            _: Request<pb::ReportSpendRequest>,
        ) -> Result<Response<pb::ReportSpendReply>, Status> {
            Err(Status::unimplemented("not here"))
        }
        async fn release_lease(
            &self,
            _: Request<pb::ReleaseLeaseRequest>,
        ) -> Result<Response<pb::ReleaseLeaseReply>, Status> {
            Err(Status::unimplemented("not here"))
        }
        async fn list_active_campaigns(
            &self,
            _: Request<pb::ListActiveCampaignsRequest>,
        ) -> Result<Response<pb::ListActiveCampaignsReply>, Status> {
            Err(Status::unimplemented("not here"))
        }
        async fn check_in(
            &self,
            _: Request<pb::CheckInRequest>,
        ) -> Result<Response<pb::CheckInReply>, Status> {
            Err(Status::invalid_argument("no check-ins here"))
        }
    }

    /// Calls go through whatever service the dial gives (here, servers in this process), and
    /// follow a follower's redirect to the leader as over the network; a definite refusal
    /// comes back as one.
    #[tokio::test]
    async fn calls_reach_in_process_nodes_through_the_dial_and_follow_redirects() {
        let dial: Dial = Arc::new(|addr: &str| {
            let leads = match addr {
                "n1" => false,
                "n2" => true,
                _ => return Err(format!("no node {addr}")),
            };
            let server = LeaseApiServer::new(Node { leads });
            Ok(Link::new(tower::ServiceExt::<
                http::Request<tonic::body::Body>,
            >::map_err(server, |e| {
                LinkError(e.into())
            })))
        });
        let c = Coordinators::dialing(vec!["n1".into()], dial);
        let want = 1_234;
        let lease = c
            .call(|mut c| async move {
                let reply = c
                    .grant_lease(pb::GrantLeaseRequest {
                        want_micros: want,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok(granted(reply))
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((lease.lease_id, lease.amount_micros), (7, want));
        let refused = c
            .call(|mut c| async move {
                c.check_in(pb::CheckInRequest::default()).await?;
                Ok(Answer::Done(()))
            })
            .await;
        assert!(
            matches!(&refused, Err(CallError::Refused(m)) if m == "no check-ins here"),
            "{refused:?}"
        );
    }
}

#[cfg(test)]
mod outgoing_tests {
    use super::*;

    /// Calls leave from the outgoing address when one is set: the coordinator sees it.
    #[tokio::test]
    async fn calls_leave_from_the_outgoing_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let c = Coordinators::new(
            vec![addr],
            Duration::from_secs(2),
            Some("127.0.0.4".parse().unwrap()),
            shared::tls::Transport::Plaintext,
        );
        let call = tokio::spawn(async move {
            let _ = c.campaigns(0, 0).await;
        });
        let (_stream, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.4");
        call.abort();
    }
}
