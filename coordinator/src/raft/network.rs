//! Peer network of the ledger group: openraft's RPCs over tonic.
//!
//! - Client side: [`TonicNetwork`] is the `RaftNetworkFactory`. It keeps one
//!   lazily connected tonic [`Channel`] per peer address (a channel
//!   reconnects by itself after the peer comes back, and is made anew when
//!   the TLS files change, so that renewed certificates reach the peers),
//!   and hands openraft a [`PeerClient`] (`RaftNetworkV2`) per replication
//!   stream or election, which takes the address's channel at each RPC.
//!   Transport failures map to openraft errors: a peer that cannot be
//!   reached (connection refused, reset, DNS, a stopped raft node behind a
//!   live server) is `Unreachable`, so openraft's replication backs off
//!   ([`RaftNetworkV2::backoff`]) instead of spinning; anything else that
//!   went wrong on the way (an RPC timeout, an undecodable reply, a refusal)
//!   is a `NetworkError`, retried at once.
//! - Server side: [`PeerService`] (see [`crate::raft::peer_service`]) feeds
//!   the requests into the local `Raft::{append_entries, vote, pre_vote,
//!   install_full_snapshot}`. It runs on the coordinator's own gRPC port.
//! - Pre-Vote: `PreVote` is its own RPC, answered by `Raft::pre_vote`, which
//!   changes nothing on the receiver. It must be: openraft's default
//!   `RaftNetworkV2::pre_vote` grants without asking, which would make
//!   `Config::enable_pre_vote` a no-op.
//! - Snapshots: openraft hands the sender the whole snapshot (its file) and
//!   leaves the transfer to the network. [`PeerClient`] sends it as a series
//!   of `InstallSnapshot` chunks of `snapshot_max_chunk_size`, read from the
//!   file one at a time, each bounded by `install_snapshot_timeout`; the
//!   receiver writes them into a nameless file in its snapshot directory and,
//!   after the last, hands the file to `Raft::install_full_snapshot` (which
//!   copies it into place, `store`). Never the whole snapshot in memory.
//!
//! Bodies are serde_json of openraft's types; why, see `proto/lockstep/v1/raft.proto`.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_proto::v1 as pb;
use openraft::async_runtime::WatchReceiver as _;
use openraft::errors::{NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::{AnyError, BasicNode, OptionalSend, RaftNetworkFactory, RaftNetworkV2, StorageError};
use pb::raft_peer_client::RaftPeerClient;
use pb::raft_peer_server::{RaftPeer, RaftPeerServer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use super::{LedgerRaft, NodeId, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote};

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
/// Snapshot chunk size if openraft names none (it always does).
const DEFAULT_CHUNK: usize = 3 << 20;

/// Test-only fault: cuts one node off from its peers, both ways (its
/// outgoing peer RPCs fail as unreachable, its `RaftPeer` service answers
/// `Unavailable`), as a network partition would, and counts the election
/// RPCs it tried to send meanwhile. Off unless a test turns it on
/// ([`crate::raft::Ledger::isolation`]).
#[derive(Debug)]
pub struct Isolation {
    on: AtomicBool,
    tried: watch::Sender<Campaigns>,
}

/// Election RPCs a node tried to send while it was cut off ([`Isolation`]),
/// one per peer per round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Campaigns {
    pub pre_votes: u64,
    pub votes: u64,
}

impl Default for Isolation {
    fn default() -> Self {
        Isolation { on: AtomicBool::new(false), tried: watch::channel(Campaigns::default()).0 }
    }
}

impl Isolation {
    /// Cuts the node off (`true`) or reconnects it (`false`).
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }

    /// The election RPCs tried while cut off, so far.
    pub fn campaigns(&self) -> watch::Receiver<Campaigns> {
        self.tried.subscribe()
    }

    fn tried(&self, rpc: Rpc) {
        self.tried.send_modify(|c| match rpc {
            Rpc::PreVote => c.pre_votes += 1,
            Rpc::Vote => c.votes += 1,
            Rpc::AppendEntries | Rpc::InstallSnapshot => {}
        });
    }
}

/// The channel to one peer address.
struct PeerChannel {
    /// The TLS generation it was made with (0 for plaintext).
    generation: u64,
    channel: Channel,
    /// When the first of the RPCs on it that got no answer in time, with
    /// none answered since, gave up; see [`TonicNetwork::stalled_for`].
    silent_since: Option<Instant>,
}

/// Whether a peer answers, for the log: one line when it stops (after
/// [`QUIET_FOR`]) and one when it is back, instead of openraft's line per
/// failed RPC (every heartbeat, 50 a second with `serve`'s defaults).
#[derive(Default)]
struct Reach {
    /// The first failed RPC since the last answer.
    failing_since: Option<Instant>,
    failed: u64,
    /// Whether "does not answer" was logged for this run of failures.
    told: bool,
}

/// A peer that has not answered for this long is logged as lost.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// `stalled_for` unless the node's tuning says otherwise.
const STALLED_FOR: Duration = Duration::from_millis(250);

/// What a peer said when asked whether it belongs to a ledger group
/// ([`probe_peers`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    /// No answer within a second (why).
    Silent(String),
    /// It holds no log and has voted in no term: a new member.
    Empty,
    /// It holds a log, or has voted, in `term`; its log ends at `last`.
    Holds { term: u64, last: Option<u64> },
}

/// Asks every one of `peers` but `me` at once, by a pre-vote (which changes
/// nothing on the peer and which every member answers, in a group or
/// not), whether it already belongs to a ledger group: it holds a log or
/// has voted in a term. Asked by the node that would initialise a new
/// group, on an empty data directory: a group that already exists means
/// this node lost its data (or was removed), and a second group of the
/// same members must not start. `net` is kept across rounds of asking, so
/// that each round reuses the peers' channels instead of dialing anew.
pub async fn probe_peers(
    net: &mut TonicNetwork,
    me: NodeId,
    peers: &std::collections::BTreeMap<NodeId, String>,
) -> Vec<(NodeId, String, Probed)> {
    let mut asks = Vec::new();
    for (id, addr) in peers.iter().filter(|(id, _)| **id != me) {
        let mut client = net.new_client(*id, &BasicNode::new(addr.clone())).await;
        asks.push(async move {
            let probe = VoteRequest::new(Vote::new(0, me), None);
            let said = match client.pre_vote(probe, RPCOption::new(Duration::from_secs(1))).await {
                Err(e) => Probed::Silent(e.to_string()),
                Ok(r) if r.last_log_id.is_none() && r.vote.leader_id.term == 0 => Probed::Empty,
                Ok(r) => Probed::Holds { term: r.vote.leader_id.term, last: r.last_log_id.map(|l| l.index) },
            };
            (*id, addr.clone(), said)
        });
    }
    futures::future::join_all(asks).await
}

/// What the leader knows of each peer's log, shared by every client of
/// this node and by the ledger (`Ledger::progress`, membership changes).
#[derive(Default)]
pub struct PeerLogs {
    /// Per peer, the newest log index it confirmed holding, and the term of
    /// the leader it confirmed it to: a healthy follower never drops an
    /// entry it confirmed to its current leader (it would answer a deposed
    /// leader with its higher vote, not a conflict). Kept here, not per
    /// client: openraft makes a new client when it restarts replication to
    /// a peer that was unreachable, which is just when a peer that lost its
    /// data comes back.
    /// One lock for both parts: every AppendEntries answer takes it.
    peers: Mutex<HashMap<NodeId, PeerLog>>,
}

#[derive(Default)]
struct PeerLog {
    /// `(term, index)`.
    acked: Option<(u64, u64)>,
    /// Set when its log went back behind what it had confirmed (it lost its
    /// data), with what to do; shown in `Admin/ListNodes`.
    lost: Option<String>,
}

impl PeerLogs {
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, PeerLog>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why `peer` is sent nothing, if it lost its data.
    pub fn problem(&self, peer: NodeId) -> Option<String> {
        self.peers().get(&peer).and_then(|p| p.lost.clone())
    }

    /// `peer` left the group: what it confirmed no longer counts (added
    /// back, it starts from an empty log).
    pub fn forget(&self, peer: NodeId) {
        self.peers().remove(&peer);
    }

    /// `peer` confirmed holding the log up to `index` to the leader of
    /// `term`; true if it had been found to have lost its data (it holds
    /// the log again).
    fn holds(&self, peer: NodeId, term: u64, index: u64) -> bool {
        let mut peers = self.peers();
        let p = peers.entry(peer).or_default();
        p.acked = match p.acked {
            Some((t, held)) if t == term => Some((t, held.max(index))),
            _ => Some((term, index)),
        };
        p.lost.take().is_some()
    }

    /// `peer` answered the leader of `term` that it lacks index `lacks`:
    /// the index it had confirmed holding, if that is `lacks` or later (it
    /// lost its data).
    fn went_back(&self, peer: NodeId, term: u64, lacks: u64) -> Option<u64> {
        match self.peers().get(&peer)?.acked {
            Some((t, held)) if t == term && lacks <= held => Some(held),
            _ => None,
        }
    }

    /// Records why `peer` is sent nothing; true the first time.
    fn lost(&self, peer: NodeId, why: String) -> bool {
        self.peers().entry(peer).or_default().lost.replace(why).is_none()
    }
}

/// The `RaftNetworkFactory` of the ledger group: tonic clients dialing each
/// member's `BasicNode::addr` (its coordinator gRPC address).
#[derive(Clone)]
pub struct TonicNetwork {
    /// One channel per peer address, shared by every client for that peer.
    channels: Arc<Mutex<HashMap<String, PeerChannel>>>,
    /// Per peer address, whether it answers (kept across new channels).
    reach: Arc<Mutex<HashMap<String, Reach>>>,
    /// Mutual TLS towards every peer, or plaintext.
    tls: Option<lockstep_host_agent::tls::Tls>,
    /// Sent with every request (`RaftRequest.cluster_id`).
    cluster_id: Arc<str>,
    isolation: Arc<Isolation>,
    /// Told the id of a peer that answers again after failed RPCs.
    answers_again: Option<tokio::sync::mpsc::UnboundedSender<NodeId>>,
    peer_logs: Arc<PeerLogs>,
    /// A peer's channel is dropped, and the next RPC dials anew, once RPCs
    /// on it have got no answer in time for this long, none answered in
    /// between. A partition that healed can leave the channel on a
    /// connection whose packets were lost (the peer's address changed when
    /// it rejoined, or TCP's retransmission backed off to seconds): nothing
    /// tells the client (no FIN or RST ever comes), and HTTP/2 keepalive
    /// takes up to two seconds to notice, while the leader may need that
    /// follower for its quorum, and the follower starts an election once
    /// the leader's lease and its election timeout have passed. So the
    /// node sets it to its election timeout's minimum: a fresh connection
    /// over a healed link then reaches the follower in time. A peer that
    /// was only slow costs one reconnect.
    stalled_for: Duration,
}

impl TonicNetwork {
    pub fn new(tls: Option<lockstep_host_agent::tls::Tls>) -> Self {
        TonicNetwork {
            channels: Arc::default(),
            reach: Arc::default(),
            tls,
            cluster_id: Arc::from(""),
            isolation: Arc::default(),
            answers_again: None,
            peer_logs: Arc::default(),
            stalled_for: STALLED_FOR,
        }
    }

    /// Names `cluster_id` in every request, for the peer to check.
    pub fn with_cluster_id(mut self, cluster_id: &str) -> Self {
        self.cluster_id = Arc::from(cluster_id);
        self
    }

    /// Shares what it learns of the peers' logs through `logs`.
    pub fn with_peer_logs(mut self, logs: Arc<PeerLogs>) -> Self {
        self.peer_logs = logs;
        self
    }

    /// Sends `tx` the id of every peer that answers again after failed
    /// RPCs (the node resets replication's backoff towards it).
    pub fn on_answer_again(mut self, tx: tokio::sync::mpsc::UnboundedSender<NodeId>) -> Self {
        self.answers_again = Some(tx);
        self
    }

    /// See [`TonicNetwork::stalled_for`].
    pub fn with_stalled_for(mut self, stalled_for: Duration) -> Self {
        self.stalled_for = stalled_for;
        self
    }

    /// Notes whether an RPC to peer `target` at `addr` got an answer, and
    /// logs the changes (see [`Reach`]).
    fn reached(&self, target: NodeId, addr: &str, failure: Option<&str>, now: Instant) {
        let mut reach = self.reach.lock().unwrap_or_else(|p| p.into_inner());
        let r = reach.entry(addr.to_string()).or_default();
        match failure {
            None => {
                if r.failing_since.is_some() {
                    if let Some(tx) = &self.answers_again {
                        let _ = tx.send(target);
                    }
                }
                if r.told {
                    let down = r.failing_since.map(|t| now.saturating_duration_since(t)).unwrap_or_default();
                    tracing::info!(peer = target, %addr, "raft peer answers again after {down:.1?} ({} RPCs failed meanwhile)", r.failed);
                }
                *r = Reach::default();
            }
            Some(why) => {
                let since = *r.failing_since.get_or_insert(now);
                r.failed += 1;
                let quiet = now.saturating_duration_since(since);
                if !r.told && quiet >= QUIET_FOR {
                    r.told = true;
                    tracing::warn!(
                        peer = target,
                        %addr,
                        "raft peer has not answered for {quiet:.1?} ({} RPCs failed; the last: {why}); this node keeps trying, \
                         and logs when it answers again",
                        r.failed
                    );
                }
            }
        }
    }

    /// With the test-only fault switch `isolation` (shared with the node's
    /// [`PeerService`]).
    pub fn with_isolation(mut self, isolation: Arc<Isolation>) -> Self {
        self.isolation = isolation;
        self
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let generation = self.tls.as_ref().map_or(0, |t| t.generation());
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(addr) {
            if c.generation == generation {
                return Ok(c.channel.clone());
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
        channels.insert(addr.to_string(), PeerChannel { generation, channel: channel.clone(), silent_since: None });
        Ok(channel)
    }

    /// An RPC to `addr` got an answer (any: a reply, a refusal, an error
    /// status): its connection carries packets.
    fn answered(&self, addr: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get_mut(addr) {
            c.silent_since = None;
        }
    }

    /// An RPC to `addr` got no answer in time, seen at `now`. Returns true
    /// when its channel had been silent for `stalled_for` and was dropped.
    fn no_answer(&self, addr: &str, now: Instant) -> bool {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = channels.get_mut(addr) else { return false };
        let since = *c.silent_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.stalled_for {
            return false;
        }
        channels.remove(addr);
        true
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

type RpcErr = RPCError<TypeConfig>;

fn io_err(kind: std::io::ErrorKind, msg: String) -> std::io::Error {
    std::io::Error::new(kind, msg)
}

/// The JSON header of one `InstallSnapshot` chunk (its bytes travel beside
/// it in `RaftRequest.data`).
#[derive(Serialize, Deserialize)]
struct SnapshotChunk {
    /// The sending leader's vote.
    vote: Vote,
    meta: SnapshotMeta,
    /// Names one transfer: chunks of another, or out of order, are refused
    /// and the sender starts over.
    transfer: String,
    offset: u64,
    /// The last chunk: the receiver installs the snapshot.
    done: bool,
}

impl PeerClient {
    /// The peer confirmed holding the log up to `index` to the leader of
    /// `term`.
    fn holds(&self, term: u64, index: Option<u64>) {
        let Some(index) = index else { return };
        if self.network.peer_logs.holds(self.target, term, index) {
            tracing::info!(peer = self.target, addr = %self.node.addr, "raft peer holds the log again (rebuilt)");
        }
    }

    /// The peer answered that it lacks index `lacks`, which it had
    /// confirmed holding (up to `held`): it lost its data (restarted on an
    /// empty or restored data directory). openraft's leader cannot go on
    /// from there (it would wait forever for the peer to catch up from the
    /// index it confirmed, or, in a debug build, assert), and a member
    /// without its log must not count towards elections, so the answer is
    /// turned into an unreachable peer: it is sent nothing, shows as not
    /// answering (`ListNodes`, the `lockstep_raft_member_*` gauges), and
    /// this says once what to do.
    fn lost_data(&self, lacks: u64, held: u64) -> RpcErr {
        let why = format!(
            "it lacks log index {lacks} but had confirmed holding the log up to index {held} to this leader: it lost its data \
             (restarted on an empty or restored data directory?). It is sent nothing more; rebuild it: RemoveNode \
             {{\"node_id\": {n}}} on the leader, start it on an empty data directory with --join instead of --peers, \
             then AddNode it (docs/OPERATIONS.md, \"A coordinator member that cannot rejoin\")",
            n = self.target
        );
        if self.network.peer_logs.lost(self.target, why.clone()) {
            tracing::error!(peer = self.target, addr = %self.node.addr, "raft peer lost its data: {why}");
        }
        self.unreachable("AppendEntries", &why)
    }

    fn what(&self, rpc: &str) -> String {
        format!("raft {rpc} to peer {} at {:?}", self.target, self.node.addr)
    }

    fn unreachable(&self, rpc: &str, why: &str) -> RpcErr {
        let e = io_err(std::io::ErrorKind::NotConnected, format!("{}: {why}", self.what(rpc)));
        RPCError::Unreachable(Unreachable::new(&e))
    }

    fn network(&self, rpc: &str, why: &str) -> RpcErr {
        let e = AnyError::error(format!("{}: {why}", self.what(rpc)));
        RPCError::Network(NetworkError::new(&e))
    }

    /// Maps a gRPC failure: transport-level failures (tonic reports them
    /// as `Unavailable`, and the peer service answers `Unavailable` when its
    /// raft node has stopped) are `Unreachable`; the rest are network errors.
    fn status(&self, rpc: &str, s: Status) -> RpcErr {
        let why = format!("{:?}: {}{}", s.code(), s.message(), lockstep_host_agent::tls::transport_detail(&s));
        match s.code() {
            Code::Unavailable => self.unreachable(rpc, &why),
            // tonic reports some connection-level failures (a reset stream,
            // a refused HTTP/2 handshake) as Unknown with a transport source.
            Code::Unknown if std::error::Error::source(&s).is_some() => self.unreachable(rpc, &why),
            Code::Unimplemented => {
                self.network(rpc, &format!("{why} (the peer does not serve this RPC: is it running an older Lockstep version?)"))
            }
            _ => self.network(rpc, &why),
        }
    }

    /// Sends one request and decodes the reply: the response, or the
    /// remote node's refusal (as a network error).
    async fn call<Req, Resp>(&mut self, kind: Rpc, req: &Req, data: Vec<u8>, option: &RPCOption) -> Result<Resp, RpcErr>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let rpc = kind.name();
        if self.network.isolation.is_on() {
            self.network.isolation.tried(kind);
            return Err(self.unreachable(rpc, "this node is cut off from its peers (test fault)"));
        }
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
        let mut request = Request::new(pb::RaftRequest { body, data, cluster_id: self.network.cluster_id.to_string() });
        // Tells the peer how long the caller waits (openraft bounds the
        // whole call with the same TTL).
        request.set_timeout(option.hard_ttl());
        // Bounded here, a bit inside openraft's own bound (which drops the
        // call without telling us), so that a call with no answer is seen:
        // see `TonicNetwork::stalled_for`. A snapshot chunk keeps its whole
        // time.
        let budget = match kind {
            Rpc::InstallSnapshot => option.hard_ttl(),
            _ => option.soft_ttl(),
        };
        let sent = async {
            match kind {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::PreVote => client.pre_vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        let Ok(reply) = tokio::time::timeout(budget, sent).await else {
            let why = if self.network.no_answer(&self.node.addr, Instant::now()) {
                format!(
                    "no answer within {budget:?}, and none for {:?}: its connection is dropped and dialed anew",
                    self.network.stalled_for
                )
            } else {
                format!("no answer within {budget:?}")
            };
            self.network.reached(self.target, &self.node.addr, Some(&why), Instant::now());
            return Err(self.network(rpc, &why));
        };
        self.network.answered(&self.node.addr);
        let reply = match reply {
            Ok(r) => {
                self.network.reached(self.target, &self.node.addr, None, Instant::now());
                r.into_inner()
            }
            Err(s) => {
                let e = self.status(rpc, s);
                // Unreachable: the peer's server did not answer (refused,
                // reset, no route); any other status came from it.
                let failure = matches!(e, RPCError::Unreachable(_)).then(|| e.to_string());
                self.network.reached(self.target, &self.node.addr, failure.as_deref(), Instant::now());
                return Err(e);
            }
        };
        match reply.result {
            Some(pb::raft_reply::Result::Ok(b)) => serde_json::from_slice(&b)
                .map_err(|e| self.network(rpc, &format!("undecodable reply (is the peer running another Lockstep version?): {e}"))),
            Some(pb::raft_reply::Result::Error(b)) => {
                let why: String = serde_json::from_slice(&b)
                    .unwrap_or_else(|e| format!("undecodable refusal (is the peer running another Lockstep version?): {e}"));
                Err(self.network(rpc, &format!("refused: {why}")))
            }
            None => Err(self.network(rpc, "empty reply")),
        }
    }

    /// Sends `snapshot` chunk by chunk (see the module doc); the receiver's
    /// answer to the last chunk, or to an earlier one if it holds a higher
    /// vote (the leader then steps down).
    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let Snapshot { meta, snapshot: mut file } = snapshot;
        let read_err = |e: std::io::Error| {
            let e = AnyError::error(format!("reading the snapshot file to send it: {e}"));
            StreamingError::StorageError(StorageError::read_snapshot(Some(meta.signature()), <openraft::impls::BoxedErrorSource as openraft::errors::ErrorSource>::from_error(&e)))
        };
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let transfer = format!("{}-{}-{stamp}", self.target, std::process::id());
        let chunk = option.snapshot_chunk_size().unwrap_or(DEFAULT_CHUNK).max(1);
        let end = file.seek(SeekFrom::End(0)).await.map_err(read_err)?;
        file.seek(SeekFrom::Start(0)).await.map_err(read_err)?;
        let mut offset = 0u64;
        loop {
            let want = chunk.min((end - offset) as usize);
            let mut data = Vec::with_capacity(want);
            (&mut file).take(want as u64).read_to_end(&mut data).await.map_err(read_err)?;
            if data.len() != want {
                return Err(read_err(io_err(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the file ended at byte {} of {end}", offset + data.len() as u64),
                )));
            }
            let done = offset + want as u64 == end;
            let header = SnapshotChunk { vote, meta: meta.clone(), transfer: transfer.clone(), offset, done };
            // `call` bounds each chunk by the whole `hard_ttl`, and counts
            // a chunk with no answer towards the channel's silence.
            let resp: SnapshotResponse<TypeConfig> = self.call(Rpc::InstallSnapshot, &header, data, option).await?;
            if done || resp.vote > vote {
                return Ok(resp);
            }
            offset += want as u64;
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let term = rpc.vote.leader_id.term;
        let prev = rpc.prev_log_id.as_ref().map(|l| l.index);
        // Accepted, the request confirms the peer holds up to its last entry.
        let last = rpc.entries.last().map(|e| e.log_id.index).or(prev);
        let resp: AppendEntriesResponse<TypeConfig> = self.call(Rpc::AppendEntries, &rpc, Vec::new(), &option).await?;
        match &resp {
            AppendEntriesResponse::Success => self.holds(term, last),
            AppendEntriesResponse::PartialSuccess(upto) => self.holds(term, upto.as_ref().map(|l| l.index)),
            AppendEntriesResponse::Conflict => {
                if let Some((lacks, held)) = prev.and_then(|lacks| Some((lacks, self.network.peer_logs.went_back(self.target, term, lacks)?))) {
                    return Err(self.lost_data(lacks, held));
                }
            }
            AppendEntriesResponse::HigherVote(_) => {}
        }
        Ok(resp)
    }

    async fn vote(&mut self, rpc: VoteRequest<TypeConfig>, option: RPCOption) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.call(Rpc::Vote, &rpc, Vec::new(), &option).await
    }

    /// Asked for real (openraft's default grants without asking).
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.call(Rpc::PreVote, &rpc, Vec::new(), &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let cancel = std::pin::pin!(cancel);
        tokio::select! {
            closed = cancel => Err(closed.into()),
            res = self.send_snapshot(vote, snapshot, &option) => res,
        }
    }

    /// After `Unreachable`, replication to that peer pauses 100 ms, then
    /// doubling up to 1 s: a dead one costs a few RPCs per second. The
    /// heartbeats go on meanwhile, and the first one it answers ends the
    /// pause (`TonicNetwork::on_answer_again`), so a restarted or healed
    /// peer is caught up at once.
    fn backoff(&self) -> Option<Backoff> {
        let steps = [100u64, 200, 400, 800].into_iter().map(Duration::from_millis);
        Some(Backoff::new(steps.chain(std::iter::repeat(Duration::from_secs(1)))))
    }
}

// ---- server side ----------------------------------------------------------------

/// The `RaftPeer` gRPC service of one node: hands peer RPCs to its raft.
#[derive(Clone)]
pub struct PeerService {
    raft: LedgerRaft,
    contact: Arc<LeaderContact>,
    /// The snapshot transfer under way, if any (one at a time: only the
    /// leader sends, and a new transfer replaces an abandoned one).
    receiving: Arc<tokio::sync::Mutex<Option<Receiving>>>,
    isolation: Arc<Isolation>,
    /// With mutual TLS: a caller must hold a certificate valid for a
    /// member's address ([`PeerService::authorize`]).
    members_only: bool,
    /// This group's cluster: a request naming another is refused
    /// ([`PeerService::authorize`]); empty: not checked.
    cluster_id: String,
    /// Requests from another cluster are logged at most every
    /// [`REFUSAL_LOG_EVERY`] (its leader sends a heartbeat every few ms).
    foreign: Arc<Mutex<lockstep_host_agent::tls::RateLimit>>,
    /// Refusals are logged at most every [`REFUSAL_LOG_EVERY`]: a member
    /// whose certificate lacks its own address would otherwise log one per
    /// heartbeat.
    refusals: Arc<Mutex<lockstep_host_agent::tls::RateLimit>>,
    /// Withheld votes are logged at most every [`REFUSAL_LOG_EVERY`] too
    /// ([`PeerService::withheld`]): a candidate asks at every election
    /// timeout.
    withheld: Arc<Mutex<lockstep_host_agent::tls::RateLimit>>,
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
    ///
    /// Whatever the transport, a request that names another cluster than
    /// this node's is refused: a node of another group reached this one's
    /// address (a member address reused by another cluster, or a stale
    /// address in a group's membership). Taken, its vote or entries would
    /// mix two ledgers.
    fn authorize(&self, req: &Request<pb::RaftRequest>, what: &str) -> Result<(), Status> {
        if self.isolation.is_on() {
            return Err(Status::unavailable(format!("raft {what}: this node is cut off from its peers (test fault)")));
        }
        let theirs = &req.get_ref().cluster_id;
        if !theirs.is_empty() && !self.cluster_id.is_empty() && *theirs != self.cluster_id {
            let logged = self.foreign.lock().unwrap_or_else(|p| p.into_inner()).allow(REFUSAL_LOG_EVERY);
            if let Some(more) = logged {
                tracing::warn!(
                    peer = ?req.remote_addr(), cluster = %self.cluster_id, theirs = %theirs,
                    "raft {what} refused: it comes from a node of cluster {theirs:?}, this node serves cluster {:?}; \
                     a member of another coordinator group has this node's address in its --peers (an address reused \
                     by another cluster?){more}",
                    self.cluster_id
                );
            }
            return Err(Status::failed_precondition(format!(
                "raft {what} refused: this node serves cluster {:?}, the request comes from cluster {theirs:?}; \
                 check that the --peers of cluster {theirs:?} name only its own members",
                self.cluster_id
            )));
        }
        if !self.members_only {
            return Ok(());
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
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

/// A snapshot being received: chunks are written into `file` in order.
struct Receiving {
    transfer: String,
    next: u64,
    file: SnapshotData,
}

/// The tonic server for [`PeerService`], with the peer message limit.
pub fn server(
    raft: LedgerRaft,
    contact: Arc<LeaderContact>,
    isolation: Arc<Isolation>,
    members_only: bool,
    cluster_id: String,
) -> RaftPeerServer<PeerService> {
    let receiving = Arc::default();
    let (refusals, withheld, foreign) = (Arc::default(), Arc::default(), Arc::default());
    RaftPeerServer::new(PeerService { raft, contact, receiving, isolation, members_only, cluster_id, foreign, refusals, withheld })
        .max_decoding_message_size(MAX_PEER_MESSAGE)
        .max_encoding_message_size(MAX_PEER_MESSAGE)
}

/// The peer RPCs a client sends (names as in the proto service).
#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    PreVote,
    InstallSnapshot,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "AppendEntries",
            Rpc::Vote => "Vote",
            Rpc::PreVote => "PreVote",
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
fn reply<T: Serialize>(rpc: &str, res: Result<T, RaftError<TypeConfig>>) -> Result<Response<pb::RaftReply>, Status> {
    match res {
        Ok(t) => ok_reply(rpc, &t),
        Err(RaftError::Fatal(f)) => Err(not_running(rpc, f)),
        Err(RaftError::APIError(never)) => match never {},
    }
}

fn not_running(rpc: &str, f: openraft::errors::Fatal<TypeConfig>) -> Status {
    Status::unavailable(format!("raft {rpc}: this ledger node is not running: {f}"))
}

fn ok_reply<T: Serialize>(rpc: &str, t: &T) -> Result<Response<pb::RaftReply>, Status> {
    let b = serde_json::to_vec(t).map_err(|e| Status::internal(format!("raft {rpc}: encoding the reply: {e}")))?;
    Ok(Response::new(pb::RaftReply { result: Some(pb::raft_reply::Result::Ok(b)) }))
}

/// A refusal the caller should act on (start the snapshot over).
fn refusal(why: String) -> Result<Response<pb::RaftReply>, Status> {
    let b = serde_json::to_vec(&why).map_err(|e| Status::internal(format!("encoding a refusal: {e}")))?;
    Ok(Response::new(pb::RaftReply { result: Some(pb::raft_reply::Result::Error(b)) }))
}

impl PeerService {
    /// One chunk of a snapshot transfer (see the module doc).
    async fn snapshot_chunk(&self, header: SnapshotChunk, data: Vec<u8>) -> Result<Response<pb::RaftReply>, Status> {
        const RPC: &str = "InstallSnapshot";
        let io = |what: &str, e: std::io::Error| Status::internal(format!("raft {RPC}: {what} the received snapshot: {e}"));
        let mut receiving = self.receiving.lock().await;
        if header.offset == 0 {
            // A new transfer (or the same one started over).
            let file = self
                .raft
                .with_state_machine(|sm| Box::pin(async move { sm.receiving_file().await }))
                .await
                .map_err(|f| not_running(RPC, f))?
                .map_err(|e| io("creating a file for", e))?;
            *receiving = Some(Receiving { transfer: header.transfer.clone(), next: 0, file });
        }
        let Some(r) = receiving.as_mut().filter(|r| r.transfer == header.transfer && r.next == header.offset) else {
            let expected = receiving.as_ref().map(|r| format!("byte {} of transfer {}", r.next, r.transfer));
            return refusal(format!(
                "snapshot chunk at byte {} of transfer {} does not follow what was received ({}); start over",
                header.offset,
                header.transfer,
                expected.as_deref().unwrap_or("nothing")
            ));
        };
        r.file.write_all(&data).await.map_err(|e| io("writing", e))?;
        r.next += data.len() as u64;
        if !header.done {
            let vote = self.raft.metrics().borrow_watched().vote;
            return ok_reply(RPC, &SnapshotResponse::<TypeConfig>::new(vote));
        }
        let Some(Receiving { mut file, .. }) = receiving.take() else {
            unreachable!("checked above");
        };
        drop(receiving);
        file.flush().await.map_err(|e| io("writing", e))?;
        if let Err(why) = super::store::StateMachine::check_received(&file).await {
            tracing::warn!(transfer = %header.transfer, "refused a snapshot from the leader: it does not decode: {why}");
            return refusal(format!("the snapshot of transfer {} does not decode ({why}); start over", header.transfer));
        }
        let snapshot = Snapshot { meta: header.meta, snapshot: file };
        match self.raft.install_full_snapshot(header.vote, snapshot).await {
            Ok(resp) => ok_reply(RPC, &resp),
            Err(f) => Err(not_running(RPC, f)),
        }
    }
}

impl PeerService {
    /// The answer to a vote this node must not give: it holds no log entry
    /// beyond a group's first one (a new member, or one that lost its data
    /// directory), and the candidate holds more. Raft's safety rests on
    /// every voter remembering what it accepted; a member back on an empty
    /// directory remembers nothing, so its vote could elect a candidate
    /// that lacks entries this member helped commit, and those entries
    /// would be lost. It votes again once a leader has sent it the log
    /// (`withholds_vote`). A new group's first election is unaffected: its
    /// candidate holds only the first entry.
    fn withheld(&self, rpc: &str, req: &VoteRequest<TypeConfig>) -> Option<VoteResponse<TypeConfig>> {
        let theirs = req.last_log_id.as_ref().map(|l| l.index);
        let vote = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            if !withholds_vote(m.last_log_index, theirs) {
                return None;
            }
            m.vote
        };
        if let Some(more) = self.withheld.lock().unwrap_or_else(|p| p.into_inner()).allow(REFUSAL_LOG_EVERY) {
            tracing::warn!(
                candidate = %req.vote.leader_id.node_id, candidate_last_index = ?theirs, rpc,
                "withholding my vote: this node holds no ledger log yet (it is new, or its data directory was lost) \
                 and the candidate holds entries, some of which this node may once have helped commit; it votes once \
                 a leader has sent it the log. If this node lost its data, remove it and add it back \
                 (docs/OPERATIONS.md, \"A coordinator member that cannot rejoin\"){more}"
            );
        }
        Some(VoteResponse::new(vote, None, false))
    }
}

/// Whether a node whose log ends at `mine` must refuse its vote to a
/// candidate whose log ends at `theirs` (indexes; a new group's first
/// entry, its membership, is index 0): when the node holds nothing past
/// that first entry and the candidate does. See [`PeerService::withheld`].
fn withholds_vote(mine: Option<u64>, theirs: Option<u64>) -> bool {
    mine.unwrap_or(0) == 0 && theirs.is_some_and(|t| t > 0)
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
        let rpc: VoteRequest<TypeConfig> = decode("Vote", &req.get_ref().body)?;
        if let Some(no) = self.withheld("Vote", &rpc) {
            return ok_reply("Vote", &no);
        }
        reply("Vote", self.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.authorize(&req, "PreVote")?;
        let rpc: VoteRequest<TypeConfig> = decode("PreVote", &req.get_ref().body)?;
        if let Some(no) = self.withheld("PreVote", &rpc) {
            return ok_reply("PreVote", &no);
        }
        reply("PreVote", self.raft.pre_vote(rpc).await)
    }

    async fn install_snapshot(&self, req: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.authorize(&req, "InstallSnapshot")?;
        let req = req.into_inner();
        let header: SnapshotChunk = decode("InstallSnapshot", &req.body)?;
        self.snapshot_chunk(header, req.data).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silent_since(n: &TonicNetwork, addr: &str) -> Option<Option<Instant>> {
        n.channels.lock().unwrap().get(addr).map(|c| c.silent_since)
    }

    #[test]
    fn a_node_without_a_log_votes_only_in_a_new_groups_first_election() {
        // A new group: the candidate holds only the membership entry.
        assert!(!withholds_vote(None, Some(0)));
        assert!(!withholds_vote(Some(0), Some(0)));
        // The probe of an empty node 1 (`probe_peers`) holds nothing.
        assert!(!withholds_vote(None, None));
        // An empty node, and the candidate holds more: no.
        assert!(withholds_vote(None, Some(1)));
        assert!(withholds_vote(Some(0), Some(40)));
        // A node with a log decides as raft does.
        assert!(!withholds_vote(Some(3), Some(40)));
        assert!(!withholds_vote(Some(40), Some(3)));
    }

    #[test]
    fn a_peer_is_logged_lost_once_after_a_quiet_second_and_back_once() {
        let (tx, mut again) = tokio::sync::mpsc::unbounded_channel();
        let n = TonicNetwork::new(None).on_answer_again(tx);
        let addr = "coordinator-2:50051";
        let t0 = Instant::now();
        let state = || {
            let r = n.reach.lock().unwrap();
            r.get(addr).map(|r| (r.failed, r.told))
        };
        n.reached(2, addr, Some("no answer within 15ms"), t0);
        n.reached(2, addr, Some("no answer within 15ms"), t0 + QUIET_FOR / 2);
        assert_eq!(state(), Some((2, false)), "quiet for less than QUIET_FOR: nothing told yet");
        n.reached(2, addr, Some("no answer within 15ms"), t0 + QUIET_FOR);
        assert_eq!(state(), Some((3, true)));
        n.reached(2, addr, Some("Unavailable: connection refused"), t0 + QUIET_FOR * 2);
        assert_eq!(state(), Some((4, true)), "told once per run of failures");
        assert!(again.try_recv().is_err(), "not back yet");
        n.reached(2, addr, None, t0 + QUIET_FOR * 3);
        assert_eq!(state(), Some((0, false)), "an answer ends the run");
        assert_eq!(again.try_recv().ok(), Some(2), "the node is told it answers again");
        n.reached(2, addr, None, t0 + QUIET_FOR * 3);
        assert!(again.try_recv().is_err(), "told once, not at every answer");
        // A short blip is never logged, but still ends replication's pause.
        n.reached(2, addr, Some("no answer within 15ms"), t0 + QUIET_FOR * 4);
        n.reached(2, addr, None, t0 + QUIET_FOR * 4 + Duration::from_millis(20));
        assert_eq!(state(), Some((0, false)));
        assert_eq!(again.try_recv().ok(), Some(2));
    }

    #[tokio::test]
    async fn a_channel_silent_long_enough_is_dialed_anew() {
        let n = TonicNetwork::new(None);
        let addr = "127.0.0.1:9";
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        n.channel(addr).expect("a lazy channel");
        assert!(!n.no_answer(addr, at(0)));
        assert!(!n.no_answer(addr, at(100)));
        // An answer in between starts the silence again.
        n.answered(addr);
        assert_eq!(silent_since(&n, addr), Some(None));
        assert!(!n.no_answer(addr, at(200)));
        assert!(!n.no_answer(addr, at(200) + STALLED_FOR - Duration::from_millis(1)));
        assert!(n.no_answer(addr, at(200) + STALLED_FOR), "silent for stalled_for: the channel goes");
        assert_eq!(silent_since(&n, addr), None);
        // The next call dials a new one; a late answer or timeout for an
        // address with no channel changes nothing.
        assert!(!n.no_answer(addr, at(1000)));
        n.answered(addr);
        n.channel(addr).expect("a new lazy channel");
        assert_eq!(silent_since(&n, addr), Some(None));
    }
}
