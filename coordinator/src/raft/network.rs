//! Peer network of the ledger group: openraft's RPCs over tonic.
//!
//! - Client side: [`TonicNetwork`] is the `RaftNetworkFactory`. It keeps one
//!   lazily connected tonic [`Channel`] per peer address (a channel
//!   reconnects by itself after the peer comes back, and is made anew when
//!   the TLS files change, so that renewed certificates reach the peers),
//!   and hands openraft a [`PeerClient`] per replication stream or vote,
//!   which takes the address's channel at each RPC. Transport failures map
//!   to openraft errors: a peer that cannot be reached (connection refused,
//!   reset, DNS, a stopped raft node behind a live server) is `Unreachable`,
//!   so openraft's replication backs off ([`RaftNetwork::backoff`]) instead
//!   of spinning; anything else that went wrong on the way (an RPC timeout,
//!   an undecodable reply) is a `NetworkError`, retried at once. An error
//!   the remote raft node itself returned travels back as a `RemoteError`.
//! - Server side: [`PeerService`] (see [`crate::raft::peer_service`]) feeds
//!   the requests into the local `Raft::{append_entries, vote,
//!   install_snapshot}`. It runs on the coordinator's own gRPC port.
//! - Snapshots go as openraft 0.9 sends them without `generic-snapshot-data`:
//!   whole, in chunks of `snapshot_max_chunk_size` through `InstallSnapshot`
//!   (openraft's `Chunked` transport on both ends).
//!
//! Bodies are serde_json of openraft's types; why, see `proto/lockstep/v1/raft.proto`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_proto::v1 as pb;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RaftNetwork, RaftNetworkFactory};
use pb::raft_peer_client::RaftPeerClient;
use pb::raft_peer_server::{RaftPeer, RaftPeerServer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::{LedgerRaft, NodeId, TypeConfig};

/// Largest peer message accepted, both ways. An AppendEntries batch is at
/// most `max_payload_entries` (300) ledger entries and a snapshot chunk at
/// most `snapshot_max_chunk_size` (3 MiB), both far below this; tonic's
/// default of 4 MiB would be too close to the chunk size.
pub const MAX_PEER_MESSAGE: usize = 64 << 20;
/// Connecting to a peer gives up after this long (the RPC itself is bounded
/// by openraft's own timeouts around every call).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 pings detect a peer that vanished without closing its
/// connection (power loss, SIGSTOP) so the channel reconnects.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// The `RaftNetworkFactory` of the ledger group: tonic clients dialing each
/// member's `BasicNode::addr` (its coordinator gRPC address).
#[derive(Clone, Default)]
pub struct TonicNetwork {
    /// One channel per peer address, shared by every client for that peer,
    /// with the TLS generation it was made with (0 for plaintext).
    channels: Arc<Mutex<HashMap<String, (u64, Channel)>>>,
    /// Mutual TLS towards every peer, or plaintext.
    tls: Option<lockstep_host_agent::tls::Tls>,
}

impl TonicNetwork {
    pub fn new(tls: Option<lockstep_host_agent::tls::Tls>) -> Self {
        TonicNetwork { channels: Arc::default(), tls }
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let generation = self.tls.as_ref().map_or(0, |t| t.generation());
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, c)) = channels.get(addr) {
            if *g == generation {
                return Ok(c.clone());
            }
        }
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("{}://{addr}", lockstep_host_agent::tls::scheme(self.tls.is_some()))
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|e| format!("peer address {addr:?} is not a valid URI: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.client())
                .map_err(|e| format!("TLS towards peer {addr} ({}): {}", tls.describe(), lockstep_host_agent::runtime::error_chain(&e)))?;
        }
        // Lazy: nothing is dialed until the first RPC, and a failed dial is
        // retried on the next one. A channel replaced here closes once the
        // RPCs still using it finish.
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), (generation, channel.clone()));
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for TonicNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        PeerClient { target, node: node.clone(), network: self.clone() }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    target: NodeId,
    node: BasicNode,
    network: TonicNetwork,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

fn io_err(kind: std::io::ErrorKind, msg: String) -> std::io::Error {
    std::io::Error::new(kind, msg)
}

impl PeerClient {
    fn what(&self, rpc: &str) -> String {
        format!("raft {rpc} to peer {} at {:?}", self.target, self.node.addr)
    }

    fn unreachable<E: std::error::Error>(&self, rpc: &str, why: &str) -> RpcErr<E> {
        let e = io_err(std::io::ErrorKind::NotConnected, format!("{}: {why}", self.what(rpc)));
        RPCError::Unreachable(Unreachable::new(&e))
    }

    fn network<E: std::error::Error>(&self, rpc: &str, why: &str) -> RpcErr<E> {
        let e = AnyError::error(format!("{}: {why}", self.what(rpc)));
        RPCError::Network(NetworkError::new(&e))
    }

    /// Maps a gRPC failure: transport-level failures (tonic reports them
    /// as `Unavailable`, and the peer service answers `Unavailable` when its
    /// raft node has stopped) are `Unreachable`; the rest are network errors.
    fn status<E: std::error::Error>(&self, rpc: &str, s: Status) -> RpcErr<E> {
        let why = format!("{:?}: {}{}", s.code(), s.message(), lockstep_host_agent::tls::transport_detail(&s));
        match s.code() {
            Code::Unavailable => self.unreachable(rpc, &why),
            // tonic reports some connection-level failures (a reset stream,
            // a refused HTTP/2 handshake) as Unknown with a transport source.
            Code::Unknown if std::error::Error::source(&s).is_some() => self.unreachable(rpc, &why),
            _ => self.network(rpc, &why),
        }
    }

    /// Sends one request and decodes the reply: the response, or the
    /// remote raft node's error.
    async fn call<Req, Resp, E>(
        &mut self,
        kind: Rpc,
        req: &Req,
        data: Vec<u8>,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let rpc = kind.name();
        // Every call asks for the channel: an address that cannot even be
        // parsed is `Unreachable` with that reason.
        let mut client = match self.network.channel(&self.node.addr) {
            Ok(c) => RaftPeerClient::new(c)
                .max_decoding_message_size(MAX_PEER_MESSAGE)
                .max_encoding_message_size(MAX_PEER_MESSAGE),
            Err(why) => return Err(self.unreachable(rpc, &why)),
        };
        let body = serde_json::to_vec(req)
            .map_err(|e| self.network(rpc, &format!("encoding the request: {e}")))?;
        let mut request = Request::new(pb::RaftRequest { body, data });
        // Tells the peer how long the caller waits (openraft bounds the
        // whole call with the same TTL).
        request.set_timeout(option.hard_ttl());
        let reply = match kind {
            Rpc::AppendEntries => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::InstallSnapshot => client.install_snapshot(request).await,
        };
        let reply = reply.map_err(|s| self.status(rpc, s))?.into_inner();
        match reply.result {
            Some(pb::raft_reply::Result::Ok(b)) => serde_json::from_slice(&b)
                .map_err(|e| self.network(rpc, &format!("undecodable reply: {e}"))),
            Some(pb::raft_reply::Result::Error(b)) => {
                let err: RaftError<NodeId, E> = serde_json::from_slice(&b)
                    .map_err(|e| self.network(rpc, &format!("undecodable error reply: {e}")))?;
                Err(RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.node.clone(),
                    err,
                )))
            }
            None => Err(self.network(rpc, "empty reply")),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        self.call(Rpc::AppendEntries, &rpc, Vec::new(), &option).await
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let data = std::mem::take(&mut rpc.data);
        self.call(Rpc::InstallSnapshot, &rpc, data, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        self.call(Rpc::Vote, &rpc, Vec::new(), &option).await
    }

    /// After `Unreachable`, replication to that peer pauses 100 ms, then
    /// doubling up to 1 s: a restarted peer is caught up within about a
    /// second, a dead one costs a few RPCs per second.
    fn backoff(&self) -> Backoff {
        let steps = [100u64, 200, 400, 800].into_iter().map(Duration::from_millis);
        Backoff::new(steps.chain(std::iter::repeat(Duration::from_secs(1))))
    }
}

// ---- server side ----------------------------------------------------------------

/// The `RaftPeer` gRPC service of one node: hands peer RPCs to its raft.
#[derive(Clone)]
pub struct PeerService {
    raft: LedgerRaft,
    contact: Arc<LeaderContact>,
    /// With mutual TLS: a caller must hold a certificate valid for a
    /// member's address ([`PeerService::authorize`]).
    members_only: bool,
    /// Refusals are logged at most every [`REFUSAL_LOG_EVERY`]: a member
    /// whose certificate lacks its own address would otherwise log one per
    /// heartbeat.
    refusals: Arc<Mutex<lockstep_host_agent::tls::RateLimit>>,
}

/// See [`PeerService::refusals`].
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl PeerService {
    /// With mutual TLS, a raft RPC is taken only from a certificate valid
    /// for the host of some member's address (voter or learner): every
    /// member presents the certificate it serves its own address with, so
    /// this costs a correct group nothing, and a host agent's or an
    /// operator's certificate cannot vote or append. A node that knows no
    /// membership yet (a new group before its first entry, a node started
    /// with --join) takes any certificate of the CA, or it could never be
    /// given one.
    fn authorize<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        if !self.members_only {
            return Ok(());
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        if membership.nodes().next().is_none() {
            return Ok(());
        }
        let hosts = || membership.nodes().map(|(_, n)| host_of(&n.addr));
        let certs = req.peer_certs();
        lockstep_host_agent::tls::check_any_name("the caller", hosts(), certs.as_deref().map(|c| c.as_slice())).map_err(|why| {
            let logged = self.refusals.lock().unwrap_or_else(|p| p.into_inner()).allow(REFUSAL_LOG_EVERY);
            if let Some(more) = logged {
                tracing::warn!(peer = ?req.remote_addr(), "raft {what} refused: the caller's certificate names no member of the group ({why}){more}");
            }
            Status::permission_denied(format!(
                "raft {what} is taken only from a member of the coordinator group, whose certificate is valid for its \
                 address ({}); {why}",
                hosts().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// The host of a member's `host:port` address (`[v6]:port` too).
fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']')
}

/// When this node last accepted AppendEntries (heartbeats included) from a
/// leader. A follower's metrics keep naming a leader that died until the
/// next election; this says whether that leader is still heard from.
#[derive(Debug)]
pub struct LeaderContact {
    since: std::time::Instant,
    /// Milliseconds after `since` of the last accepted AppendEntries; 0 = never.
    last_ms: std::sync::atomic::AtomicU64,
}

impl LeaderContact {
    pub fn new() -> Self {
        LeaderContact { since: std::time::Instant::now(), last_ms: std::sync::atomic::AtomicU64::new(0) }
    }

    fn record(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.last_ms.store(ms.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a leader's AppendEntries was accepted within `window`.
    pub fn within(&self, window: std::time::Duration) -> bool {
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        last != 0 && self.since.elapsed().as_millis() as u64 <= last + window.as_millis() as u64
    }
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self::new()
    }
}

/// The tonic server for [`PeerService`], with the peer message limit.
pub fn server(raft: LedgerRaft, contact: Arc<LeaderContact>, members_only: bool) -> RaftPeerServer<PeerService> {
    RaftPeerServer::new(PeerService { raft, contact, members_only, refusals: Arc::default() })
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE)
}

/// The peer RPCs a client sends (names as in the proto service).
#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "AppendEntries",
            Rpc::Vote => "Vote",
            Rpc::InstallSnapshot => "InstallSnapshot",
        }
    }
}

fn decode<T: DeserializeOwned>(rpc: &str, body: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "raft {rpc}: undecodable request (is the peer running another Lockstep version?): {e}"
        ))
    })
}

/// Encodes the local raft's answer. A fatal error (the node is shut down
/// or its storage failed) answers `Unavailable`, so the caller treats this
/// node as unreachable and backs off, as if it were down.
fn reply<T: Serialize, E: Serialize + std::error::Error>(
    rpc: &str,
    res: Result<T, RaftError<NodeId, E>>,
) -> Result<Response<pb::RaftReply>, Status> {
    let result = match res {
        Ok(t) => pb::raft_reply::Result::Ok(
            serde_json::to_vec(&t).map_err(|e| Status::internal(format!("raft {rpc}: encoding the reply: {e}")))?,
        ),
        Err(RaftError::Fatal(f)) => {
            return Err(Status::unavailable(format!("raft {rpc}: this ledger node is not running: {f}")))
        }
        Err(e) => pb::raft_reply::Result::Error(
            serde_json::to_vec(&e).map_err(|e| Status::internal(format!("raft {rpc}: encoding the error: {e}")))?,
        ),
    };
    Ok(Response::new(pb::RaftReply { result: Some(result) }))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.authorize(&req, "AppendEntries")?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode("AppendEntries", &req.get_ref().body)?;
        let result = self.raft.append_entries(rpc).await;
        if matches!(&result, Ok(r) if r.is_success()) {
            self.contact.record();
        }
        reply("AppendEntries", result)
    }

    async fn vote(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.authorize(&req, "Vote")?;
        let rpc: VoteRequest<NodeId> = decode("Vote", &req.get_ref().body)?;
        reply("Vote", self.raft.vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.authorize(&req, "InstallSnapshot")?;
        let req = req.into_inner();
        let mut rpc: InstallSnapshotRequest<TypeConfig> = decode("InstallSnapshot", &req.body)?;
        rpc.data = req.data;
        reply("InstallSnapshot", self.raft.install_snapshot(rpc).await)
    }
}
