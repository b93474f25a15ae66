//! The region's coordinators as the edge sees them: writes go to the leader, found by following
//! `NotLeader` answers; any node answers the campaign poll. Nothing here runs on the bid path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use shared::proto::v1 as pb;
use shared::proto::v1::lease_api_client::LeaseApiClient;
use tonic::transport::Channel;

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
    channels: Mutex<HashMap<String, Channel>>,
    /// The node believed to lead.
    leader: Mutex<Option<String>>,
    next: std::sync::atomic::AtomicUsize,
    timeout: Duration,
    outgoing: Option<std::net::IpAddr>,
    transport: shared::tls::Transport,
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
        Coordinators {
            endpoints,
            channels: Mutex::new(HashMap::new()),
            leader: Mutex::new(None),
            next: std::sync::atomic::AtomicUsize::new(0),
            timeout,
            outgoing,
            transport,
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut ch = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = ch.get(addr) {
            return Ok(c.clone());
        }
        // HTTP/2 pings find a connection a partition killed within seconds. Without them the
        // channel kept it after the heal, and every call timed out until TCP's retransmission
        // backoff ran out: an edge cut off from its coordinators for 33 s reached them again
        // only 27 s after the heal (jepsen seed 19), its batches, releases and check-ins waiting.
        let c = self
            .transport
            .endpoint(addr)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .timeout(self.timeout)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .local_address(self.outgoing)
            .connect_lazy();
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
        F: Fn(LeaseApiClient<Channel>) -> Fut,
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

/// 20 ms, doubling, at most 500 ms.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((20u64 << attempt.min(5)).min(500))
}

/// The leader address carried by a `NotLeader`.
pub fn hint(n: &pb::NotLeader) -> Option<String> {
    (!n.leader_addr.is_empty()).then(|| n.leader_addr.clone())
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
