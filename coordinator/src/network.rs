//! The Raft transport between the coordinators of a region, over gRPC (`RaftTransport` in
//! `proto/budget/v1/raft.proto`). openraft's requests and responses travel serialized (postcard, a
//! compact binary serde format) in the `RaftMessage` envelope, which also names the region and the sender: a message meant for
//! another region is refused, so a misrouted node cannot join the wrong group.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shared::RegionId;
use shared::proto::v1::raft_transport_client::RaftTransportClient;
use shared::proto::v1::raft_transport_server::RaftTransport;
use shared::proto::v1::{FetchSegmentRequest, RaftMessage, SegmentChunk};
use shared::tls::{TlsError, Transport};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::archive::Archive;
use crate::raft::TypeConfig;

/// How long a connection attempt to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Makes connections to the other nodes of the region.
pub struct Network {
    region: RegionId,
    me: u64,
    outgoing: Option<IpAddr>,
    transport: Transport,
}

impl Network {
    /// The network of node `me` of `region`, its connections from `outgoing` when set, over
    /// `transport`.
    pub fn new(
        region: RegionId,
        me: u64,
        outgoing: Option<IpAddr>,
        transport: Transport,
    ) -> Network {
        Network {
            region,
            me,
            outgoing,
            transport,
        }
    }
}

/// A connection to one peer, opened on first use and reopened after failures by tonic.
pub struct Conn {
    region: RegionId,
    me: u64,
    target: u64,
    addr: String,
    outgoing: Option<IpAddr>,
    transport: Transport,
    client: Option<RaftTransportClient<Channel>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Conn {
        Conn {
            region: self.region.clone(),
            me: self.me,
            target,
            addr: node.addr.clone(),
            outgoing: self.outgoing,
            transport: self.transport.clone(),
            client: None,
        }
    }
}

/// A client of a peer's `RaftTransport` at `addr`, connected on first use from `outgoing`.
pub fn peer_client(
    transport: &Transport,
    addr: &str,
    outgoing: Option<IpAddr>,
) -> Result<RaftTransportClient<Channel>, TlsError> {
    // HTTP/2 pings replace a connection a partition killed within seconds of the heal, rather
    // than after TCP's retransmission backoff (as the edges' and region sync's).
    let channel = transport
        .endpoint(addr)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .local_address(outgoing)
        .connect_lazy();
    Ok(RaftTransportClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Bytes of one streamed piece of a segment.
const SEGMENT_CHUNK: usize = 1 << 20;
/// The largest segment a node takes from a peer: segments end at `segment_bytes_max` (64 MiB
/// by default) unless one record alone is larger (records are ≤ 16 MiB); this leaves room for
/// a region configured with larger segments.
const SEGMENT_MAX: usize = 1 << 30;
/// How long fetching one segment may take.
const SEGMENT_FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Fetches the sealed segment that starts at `first_seq` from the peer behind `client`.
pub async fn fetch_segment(
    client: &mut RaftTransportClient<Channel>,
    region: &RegionId,
    me: u64,
    first_seq: u64,
) -> Result<Vec<u8>, Status> {
    let mut request = Request::new(shared::proto::v1::FetchSegmentRequest {
        region: region.to_string(),
        from_node: me,
        first_seq,
    });
    request.set_timeout(SEGMENT_FETCH_TIMEOUT);
    let mut stream = client.fetch_segment(request).await?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if bytes.len() + chunk.data.len() > SEGMENT_MAX {
            return Err(Status::resource_exhausted(format!(
                "segment {first_seq} is over {SEGMENT_MAX} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

type NetErr<E> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl Conn {
    fn client(&mut self) -> Result<RaftTransportClient<Channel>, TlsError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let client = peer_client(&self.transport, &self.addr, self.outgoing)?;
        self.client = Some(client.clone());
        Ok(client)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, NetErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload =
            postcard::to_stdvec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = Request::new(RaftMessage {
            region: self.region.to_string(),
            from_node: self.me,
            payload,
        });
        request.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&status)),
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<u64, E>> =
            postcard::from_bytes(&reply.into_inner().payload)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Conn {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, NetErr<openraft::error::Infallible>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, NetErr<InstallSnapshotError>> {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, NetErr<openraft::error::Infallible>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// The server side: hands incoming Raft messages to the local `Raft`, and serves sealed
/// segments to peers that lack them.
pub struct RaftService {
    region: RegionId,
    me: u64,
    raft: Raft<TypeConfig>,
    archive: Arc<Archive>,
}

impl RaftService {
    /// The service of node `me`.
    pub fn new(
        region: RegionId,
        me: u64,
        raft: Raft<TypeConfig>,
        archive: Arc<Archive>,
    ) -> RaftService {
        RaftService {
            region,
            me,
            raft,
            archive,
        }
    }

    fn check_region(&self, region: &str, from: u64) -> Result<(), Status> {
        if region != self.region.as_str() {
            return Err(Status::failed_precondition(format!(
                "node {} is in region {}, not {region} (message from node {from})",
                self.me, self.region
            )));
        }
        Ok(())
    }

    fn open<T: DeserializeOwned>(&self, request: Request<RaftMessage>) -> Result<T, Status> {
        let msg = request.into_inner();
        self.check_region(&msg.region, msg.from_node)?;
        postcard::from_bytes(&msg.payload)
            .map_err(|e| Status::invalid_argument(format!("raft payload: {e}")))
    }

    fn reply<T: Serialize>(&self, result: &T) -> Result<Response<RaftMessage>, Status> {
        let payload = postcard::to_stdvec(result)
            .map_err(|e| Status::internal(format!("encoding a raft reply: {e}")))?;
        Ok(Response::new(RaftMessage {
            region: self.region.to_string(),
            from_node: self.me,
            payload,
        }))
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = self.open(request)?;
        self.reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<u64> = self.open(request)?;
        self.reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = self.open(request)?;
        // Served to its end even when the caller gives up (its deadline passed, the request is
        // dropped): openraft keeps the stream's state across chunks, and a chunk stopped half
        // way (a file taken for installing, a seek) is not something it expects.
        let raft = self.raft.clone();
        let result = tokio::spawn(async move { raft.install_snapshot(rpc).await })
            .await
            .map_err(|e| Status::internal(format!("receiving a snapshot chunk: {e}")))?;
        self.reply(&result)
    }

    type FetchSegmentStream = std::pin::Pin<
        Box<
            dyn tonic::codegen::tokio_stream::Stream<Item = Result<SegmentChunk, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn fetch_segment(
        &self,
        request: Request<FetchSegmentRequest>,
    ) -> Result<Response<Self::FetchSegmentStream>, Status> {
        let r = request.into_inner();
        self.check_region(&r.region, r.from_node)?;
        let archive = self.archive.clone();
        let first = r.first_seq;
        let bytes = tokio::task::spawn_blocking(move || archive.segment_bytes(first))
            .await
            .map_err(|e| Status::internal(format!("reading segment {first}: {e}")))?
            .map_err(|e| match e {
                crate::archive::SegmentError::Damaged { .. } => {
                    Status::unavailable(format!("node {}: {e}", self.me))
                }
                crate::archive::SegmentError::Io(e) => {
                    Status::internal(format!("reading segment {first}: {e}"))
                }
            })?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {} holds no sealed segment starting at seq {first}",
                    self.me
                ))
            })?;
        let chunks: Vec<Result<SegmentChunk, Status>> = bytes
            .chunks(SEGMENT_CHUNK)
            .map(|c| Ok(SegmentChunk { data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::iter(
            chunks,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node told to call from 127.0.0.3 does: the peer sees that source address. (The whole
    /// of 127.0.0.0/8 is this machine's loopback.)
    #[tokio::test]
    async fn peers_are_called_from_the_outgoing_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let region: RegionId = "r".parse().unwrap();
        let mut net = Network::new(
            region,
            1,
            Some("127.0.0.3".parse().unwrap()),
            Transport::Plaintext,
        );
        let mut conn = net.new_client(2, &BasicNode { addr }).await;
        let call = tokio::spawn(async move {
            let vote = VoteRequest::new(openraft::Vote::new(1, 1), None);
            let option = RPCOption::new(Duration::from_secs(2));
            let _ = conn.vote(vote, option).await;
        });
        let (_stream, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.3");
        call.abort();
    }
}
