//! The raft layer of the coordinator: the ledger ([`crate::ledger`]) as the
//! state machine of an openraft group.
//!
//! [`Ledger`] is what the service codes against: [`Ledger::propose`] sends a
//! [`LedgerEntry`] through raft and returns the ledger's verdict once the
//! entry is committed and applied; [`Ledger::state`] reads the applied state.
//!
//! # Shape
//!
//! openraft `=0.10.0-alpha.37` (pinned exactly: the API moves between
//! alphas), with Pre-Vote on (below).
//!
//! - [`TypeConfig`]: `NodeId = u64`, `Node = BasicNode` whose `addr` is the
//!   member's gRPC address, `D = LedgerEntry`, `R = Verdict`; term, leader
//!   id, vote and entry are openraft's defaults, which serialize as 0.9's
//!   did, so data directories of the 0.9 build open unchanged. The state
//!   machine's snapshot data ([`SnapshotData`]) is a file ([`snapshot`]:
//!   written, read and sent to followers as a stream, never whole in memory).
//! - [`store`]: durable storage (see "Storage" below): the log in
//!   [`log`]'s segment files, the snapshot in [`snapshot`]'s directory, vote
//!   and snapshot meta in `<data dir>/ledger.redb`; the state machine lives
//!   in memory and is rebuilt on start from the current snapshot plus the
//!   committed entries after it. Storage calls fail with `std::io::Error`
//!   carrying the whole context chain.
//! - [`network`]: openraft's peer RPCs (`RaftNetworkV2`) over tonic
//!   (`lockstep.v1.RaftPeer`, `proto/lockstep/v1/raft.proto`): a client per
//!   peer dialing `BasicNode::addr`, which also sends snapshots in chunks
//!   (openraft 0.10 leaves the transfer to the network), and
//!   [`peer_service`], which the coordinator serves on its own gRPC port.
//! - Pre-Vote (`Config::enable_pre_vote`): a follower whose election timer
//!   fires asks the voters whether they would elect it before it raises its
//!   term. Without it a follower cut off from the group raised its term at
//!   every election timeout, and on reconnecting that higher term deposed
//!   the healthy leader: every host reconnected and the pipeline started a
//!   new epoch for nothing. It relies on the real `PreVote` RPC in
//!   [`network`] (openraft's default grants without asking).
//!
//! # Group life cycle
//!
//! - [`Ledger::open_single`]: a one-node group (`coordinator dev`, and
//!   `serve` without peers); returns once this node leads and has applied
//!   everything on disk.
//! - [`Ledger::open`]: one member of a multi-node group. A new group is
//!   initialised by its smallest node id with every listed node as voter;
//!   the call returns as soon as the node runs. Leadership comes and goes:
//!   [`Ledger::subscribe_leadership`] reports it, and a new leader calls
//!   [`Ledger::wait_applied_leader`] before it trusts [`Ledger::state`].
//!   [`Ledger::propose`] on a follower fails with `NotLeader` naming the
//!   leader's address.
//! - Membership: a new node starts with [`Ledger::join`]; the leader's
//!   [`Ledger::add_learner`] then [`Ledger::change_membership`] make it a
//!   voter; [`Ledger::remove_node`] (or `change_membership`) to
//!   remove one.
//!
//! # Storage: what lives where, and why
//!
//! - The raft **log** is in append-only segment files of its own
//!   ([`log`], `<data dir>/raft-log/`): CRC32C-framed records, one `pwrite`
//!   and one `fdatasync` per append batch openraft hands us, the committed
//!   id riding in the same write as a hint, an in-memory index from log
//!   index to file offset, a torn tail cut on open, suffix truncation by
//!   `ftruncate`, prefix purge by deleting whole segments behind an
//!   atomically replaced purge marker file. Appends are the hot path (one
//!   per proposal, a few hundred bytes); in redb each was a write
//!   transaction of ~8 page writes (~29 KB) before its fsync, which the
//!   live latency goal could not afford (`raft::bench`: ~1.7x the floor,
//!   where the log file append is the floor).
//! - The **vote** and the current **snapshot's meta** (plus a format
//!   marker) stay in `<data dir>/ledger.redb` ([`store`]): rare writes
//!   (elections, one snapshot per ~1000 entries) that must be replaced
//!   atomically, which a redb transaction gives, and redb's exclusive file
//!   lock keeps a second coordinator off the whole data directory (the log
//!   and snapshot files have no lock of their own; redb is opened first and
//!   closed last).
//! - The **snapshot** is a file in `<data dir>/snapshots/` ([`snapshot`]),
//!   named by its meta: it grows with the tids the ledger keeps, and redb
//!   holds a value whole in memory (plus a cached copy) to write or read
//!   it, where a file streams.
//!
//! Not the journal crate for the log: it is built for a host's step journal
//! (only a torn tail is ever cut, only whole segments before a complete
//! checkpoint are deleted, read sequentially for replay), while a raft log
//! also needs suffix truncation at any entry, purge at any index and random
//! reads by index; bending the journal to that would tie the hosts' on-disk
//! format to the ledger's needs. The framing ideas are the same (CRC32C via
//! crc-fast, torn-tail rules), the code is separate.

#[cfg(test)]
mod bench;
pub mod log;
pub mod network;
pub mod progress;
pub mod snapshot;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use openraft::async_runtime::WatchReceiver as _;
use openraft::errors::{ClientWriteError, Fatal, LinearizableReadError, RaftError};
use openraft::metrics::RaftServerMetrics;
use openraft::raft::responder::ProgressResponder;
use openraft::type_config::alias;
use openraft::{BasicNode, ChangeMembers, Config, Raft, RaftMetrics, ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ledger::{LedgerEntry, LedgerError, LedgerState};
pub use lockstep_proto::v1::raft_peer_server::RaftPeerServer;
pub use network::PeerService;
use network::TonicNetwork;
use store::{LogStore, SmData, StateMachine};

pub type NodeId = u64;

/// The ledger's answer to one applied raft entry, one per ledger entry it
/// carries (several for a `LedgerEntry::Batch`): `Ok(())`, or the error that
/// left the state unchanged (see `LedgerState::apply`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict(pub Vec<Result<(), LedgerError>>);

openraft::declare_raft_types!(
    /// openraft type configuration of the ledger group. The types left to
    /// openraft's defaults (term `u64`, the leader id of a term and node,
    /// `Vote`, `Entry`, tokio) serialize exactly as openraft 0.9's did, which
    /// the stored log, vote and snapshot meta rely on (see `store`).
    pub TypeConfig:
        D = LedgerEntry,
        R = Verdict,
        NodeId = NodeId,
        Node = BasicNode,
);

/// The snapshot data: a file, written, read and sent as a stream ([`snapshot`]).
pub type SnapshotData = tokio::fs::File;
pub type LedgerRaft = Raft<TypeConfig, StateMachine>;
pub type LogId = alias::LogIdOf<TypeConfig>;
pub type Vote = alias::VoteOf<TypeConfig>;
pub type Entry = alias::EntryOf<TypeConfig>;
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = alias::SnapshotOf<TypeConfig, SnapshotData>;
type Metrics = RaftMetrics<TypeConfig>;
type MetricsRx = alias::WatchReceiverOf<TypeConfig, Metrics>;

/// Timing and log-size knobs of the raft node.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot once this many entries were applied since the last.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind the snapshot (for lagging followers);
    /// older ones are purged.
    pub logs_kept_after_snapshot: u64,
    /// How long `open_single` waits for this node to lead and catch up, and
    /// [`Ledger::add_learner`] for the learner to catch up.
    pub open_timeout: Duration,
    /// Bound on sending one snapshot chunk and, for the last one, the
    /// receiver installing it (fsync included).
    pub install_snapshot_timeout_ms: u64,
    /// A snapshot goes to a follower in chunks of at most this many bytes
    /// (each one RPC bounded by `install_snapshot_timeout_ms`).
    pub snapshot_chunk_bytes: u64,
    /// Test-only fault: every raft log append after the first N fails with
    /// ENOSPC, as on a full disk (`--fault-fail-log-appends-after`).
    pub fault_fail_log_appends_after: Option<u64>,
    /// Mutual TLS towards the other members (`--tls-*`): peers are dialed
    /// at `https://` their address, must present a certificate the CA
    /// signed, and are shown this node's. `None` dials `http://`.
    pub peer_tls: Option<lockstep_host_agent::tls::Tls>,
    /// The cluster this group serves (`--cluster-id`): sent with every raft
    /// RPC, and an RPC naming another cluster is refused (two groups that
    /// reach each other's addresses must not vote in or append to each
    /// other). Empty: neither sent nor checked.
    pub cluster_id: String,
}

impl Default for RaftTuning {
    /// Loopback-friendly defaults: heartbeat 100 ms, election 300-600 ms
    /// (DESIGN: a new leader within a second of the old one dying); the log
    /// stays below about 2000 entries.
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_after_logs: 1000,
            logs_kept_after_snapshot: 1000,
            open_timeout: Duration::from_secs(30),
            install_snapshot_timeout_ms: 2000,
            snapshot_chunk_bytes: 3 << 20,
            fault_fail_log_appends_after: None,
            peer_tls: None,
            cluster_id: String::new(),
        }
    }
}

impl RaftTuning {
    fn config(&self) -> anyhow::Result<Config> {
        let c = Config {
            cluster_name: "lockstep-ledger".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            purge_batch_size: 1,
            // A node that cannot win an election (partitioned, or behind)
            // asks first whether a quorum would vote for it, and only then
            // raises its term. Without it an isolated follower's term climbs
            // with every election timeout, and when the partition heals that
            // higher term deposes the healthy leader: every host reconnects
            // and the pipeline starts a new epoch for nothing. Needs the
            // `PreVote` peer RPC (`network`).
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        c.validate()
            .map_err(|e| anyhow!("invalid raft configuration: {e}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is the leader's gRPC address if known.
    #[error("this coordinator is not the ledger leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    /// A membership change was refused (e.g. another change is in progress,
    /// a voter id that is not a learner yet, a learner that did not catch up).
    #[error("ledger membership change refused: {0}")]
    Membership(String),
    #[error("ledger storage failed: {0}")]
    Storage(String),
    /// This node believes it leads but a quorum did not confirm it in time
    /// (partitioned from the other coordinators, or they are down).
    #[error("this coordinator cannot reach a quorum of the ledger group: {0}")]
    NoQuorum(String),
    #[error("the ledger is shut down")]
    Shutdown,
}

impl From<Fatal<TypeConfig>> for ProposeError {
    fn from(f: Fatal<TypeConfig>) -> Self {
        match f {
            Fatal::Stopped => ProposeError::Shutdown,
            Fatal::StorageError(e) => ProposeError::Storage(e.to_string()),
            Fatal::Panicked => ProposeError::Storage("the raft core task panicked".into()),
        }
    }
}

impl From<ClientWriteError<TypeConfig>> for ProposeError {
    fn from(e: ClientWriteError<TypeConfig>) -> Self {
        match e {
            // Discarded: this node appended the entry as leader, then lost
            // leadership and took the new leader's log instead (whether the
            // entry commits there is unknown). For the caller it is the same
            // as a proposal to a follower: the ledger's state says what
            // committed, and the new leader carries on from it.
            ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f) => {
                ProposeError::NotLeader { leader: f.leader_node.map(|n| n.addr) }
            }
            ClientWriteError::ChangeMembershipError(e) => ProposeError::Membership(e.to_string()),
            // Never attached by this crate.
            ClientWriteError::PreconditionFailed(e) => {
                ProposeError::Storage(format!("unexpected precondition failure on a ledger write: {e}"))
            }
        }
    }
}

impl From<RaftError<TypeConfig, ClientWriteError<TypeConfig>>> for ProposeError {
    fn from(e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Self {
        match e {
            RaftError::APIError(e) => e.into(),
            RaftError::Fatal(f) => f.into(),
        }
    }
}

/// Who leads the ledger group, as this node last saw it. Every election
/// (even a failed one) moves `term`, so a node that loses and regains
/// leadership is seen as a change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    pub term: u64,
    pub leader: Option<NodeId>,
}

/// The group's membership as this node last applied it: node id -> gRPC
/// address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    pub voters: BTreeMap<NodeId, String>,
    pub learners: BTreeMap<NodeId, String>,
    /// A joint configuration (a membership change half-way) is in effect.
    pub joint: bool,
}

/// The coordinator's replicated ledger. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

/// How often the smallest member on an empty directory asks its peers
/// again before it initialises a group (`initialise_when_peers_agree`),
/// and how often it says it waits.
const PROBE_AGAIN: Duration = Duration::from_millis(250);
const PROBE_TELL_EVERY: Duration = Duration::from_secs(10);

/// Where a node stands on initialising a new group ([`Ledger::bootstrap_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// Not its question: it holds a log, is not the smallest member, or
    /// was opened to join.
    NotAsked,
    /// The smallest member on an empty directory: asked its peers `rounds`
    /// times, and too few said they hold nothing.
    Waiting { rounds: u64 },
    /// A peer holds a group: this node lost its data (or was removed) and
    /// waits to be added.
    GroupExists { peer: NodeId },
    /// A leader sent it a group's log before it decided.
    Joined,
    /// It initialised a new group.
    Initialised,
}

struct Inner {
    raft: LedgerRaft,
    node_id: NodeId,
    addr: String,
    sm: Arc<RwLock<SmData>>,
    metrics: MetricsRx,
    leadership: watch::Receiver<Leadership>,
    tuning: RaftTuning,
    contact: Arc<network::LeaderContact>,
    /// Test-only fault switch of the peer network ([`Ledger::isolation`]).
    isolation: Arc<network::Isolation>,
    /// What this node, leading, knows of the members' logs.
    peer_logs: Arc<network::PeerLogs>,
    /// Reports (by closing) when the database, held by the raft tasks, has
    /// been dropped and its file lock released.
    db_closed: watch::Receiver<()>,
    path: PathBuf,
    bootstrap: watch::Sender<Bootstrap>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("node_id", &self.inner.node_id)
            .field("addr", &self.inner.addr)
            .field("path", &self.inner.path)
            .finish()
    }
}

/// The `RaftPeer` gRPC service of this ledger node, to add to the
/// coordinator's tonic server (same port as HostSession and Admin).
/// `members_only` (mutual TLS on): see `PeerService::authorize`.
pub fn peer_service(ledger: &Ledger, members_only: bool) -> RaftPeerServer<PeerService> {
    let i = &ledger.inner;
    network::server(i.raft.clone(), i.contact.clone(), i.isolation.clone(), members_only, i.tuning.cluster_id.clone())
}

impl Ledger {
    /// Opens (creating if new) the durable raft storage in `dir`, starts the
    /// raft node, and for a brand-new single-node group initialises
    /// membership `{node_id: addr}`. Returns once this node is leader and
    /// every committed entry on disk has been applied.
    pub async fn open_single(dir: &Path, node_id: u64, addr: String) -> anyhow::Result<Ledger> {
        Self::open_single_with(dir, node_id, addr, RaftTuning::default()).await
    }

    /// [`Ledger::open_single`] with explicit tuning (tests use small
    /// snapshot thresholds).
    pub async fn open_single_with(
        dir: &Path,
        node_id: u64,
        addr: String,
        tuning: RaftTuning,
    ) -> anyhow::Result<Ledger> {
        let ledger = Self::launch(dir, node_id, addr, tuning).await?;
        let res = async {
            if ledger.inner.raft.is_initialized().await? {
                let voters: Vec<NodeId> = ledger.members().voters.into_keys().collect();
                if voters != [node_id] {
                    bail!(
                        "this ledger belongs to a raft group with voters {voters:?}, but this is node {node_id} \
                         started as a single-node group; start it with the node id its data directory was created \
                         with, or use another data directory"
                    );
                }
            }
            ledger.bootstrap(&BTreeMap::new()).await?;
            ledger.wait_leader_caught_up().await
        }
        .await;
        ledger.or_close(res).await
    }

    /// Opens (creating if new) the durable raft storage in `dir` and starts
    /// this node of a multi-node ledger group; `addr` is this node's gRPC
    /// address as its peers dial it, `peers` the other members (this node
    /// may be included; its address must then be `addr`).
    ///
    /// A brand-new group is initialised by exactly one node: the one with
    /// the smallest id among `peers` and itself, with all of them as voters,
    /// once a majority of them (itself included) answered that they hold
    /// nothing and none holds a log (in the background; see
    /// [`Ledger::bootstrap_state`]); the others wait until that node's
    /// leader contacts them. A node whose
    /// group already exists ignores `peers` (membership lives in the ledger
    /// and changes only through [`Ledger::change_membership`]). A node added
    /// later as a learner is opened with no peers and waits to be contacted.
    ///
    /// Returns as soon as the node runs: it need not be leader, nor have
    /// applied the committed history yet; see [`Ledger::wait_applied_leader`].
    ///
    /// With no peers, a new node initialises a single-node group (as
    /// `open_single` does, without waiting to lead). A node meant to join an
    /// existing group is opened with [`Ledger::join`] instead: listing the
    /// group's members as peers works too, but only if one of them has a
    /// smaller id than the joining node, or it would initialise a group of
    /// its own.
    pub async fn open(
        dir: &Path,
        node_id: NodeId,
        addr: String,
        peers: BTreeMap<NodeId, String>,
        tuning: RaftTuning,
    ) -> anyhow::Result<Ledger> {
        if let Some(a) = peers.get(&node_id) {
            if *a != addr {
                bail!("node {node_id} is listed among the peers with address {a:?}, but its own address is {addr:?}");
            }
        }
        let ledger = Self::launch(dir, node_id, addr, tuning).await?;
        let res = ledger.bootstrap(&peers).await;
        ledger.or_close(res).await
    }

    /// Opens (creating if new) the durable raft storage in `dir` and starts
    /// a node that never initialises a group: it waits until a leader adds
    /// it ([`Ledger::add_learner`] on the leader), or, if its directory
    /// already belongs to a group, rejoins it. Use it for a node joining an
    /// existing group: `open` with no peers would make it a single-node
    /// group of its own. Returns as soon as the node runs.
    pub async fn join(dir: &Path, node_id: NodeId, addr: String, tuning: RaftTuning) -> anyhow::Result<Ledger> {
        let ledger = Self::launch(dir, node_id, addr, tuning).await?;
        let res = async {
            if ledger.inner.raft.is_initialized().await? {
                ledger.bootstrap(&BTreeMap::new()).await?;
            } else {
                tracing::info!(node_id, addr = %ledger.inner.addr,
                    "new ledger node: waiting to be added to a group by its leader");
            }
            Ok(())
        }
        .await;
        ledger.or_close(res).await
    }

    /// Shuts the node down (releasing the file lock) if `res` failed.
    async fn or_close(self, res: anyhow::Result<()>) -> anyhow::Result<Ledger> {
        match res {
            Ok(()) => Ok(self),
            Err(e) => {
                let _ = self.shutdown().await;
                Err(e.context(format!("opening the ledger {}", self.inner.path.display())))
            }
        }
    }

    /// Opens the storage and starts the raft node (uninitialised or not).
    async fn launch(dir: &Path, node_id: NodeId, addr: String, tuning: RaftTuning) -> anyhow::Result<Ledger> {
        let config = Arc::new(tuning.config()?);
        let owned_dir = dir.to_path_buf();
        let (db, db_closed, path, sm) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let (db, closed, path) = store::open(&owned_dir)?;
            let db = Arc::new(db);
            let sm = StateMachine::load(db.clone()).with_context(|| {
                format!(
                    "{}: the stored ledger snapshot is damaged; restore the file from a backup",
                    path.display()
                )
            })?;
            Ok((db, closed, path, sm))
        })
        .await
        .context("ledger open task failed")??;
        let shown = path.display().to_string();

        let shared = sm.shared();
        let log_store = LogStore::new(db.clone()).failing_appends_after(tuning.fault_fail_log_appends_after);
        let isolation = Arc::new(network::Isolation::default());
        let (answers_again, mut answered_again) = tokio::sync::mpsc::unbounded_channel();
        let peer_logs = Arc::new(network::PeerLogs::default());
        let net = TonicNetwork::new(tuning.peer_tls.clone())
            .with_cluster_id(&tuning.cluster_id)
            .with_isolation(isolation.clone())
            .with_peer_logs(peer_logs.clone())
            .with_stalled_for(Duration::from_millis(tuning.election_timeout_min_ms))
            .on_answer_again(answers_again);
        let raft = Raft::new(node_id, config, net, log_store, sm)
            .await
            .with_context(|| format!("starting the raft node on {shown}"))?;
        drop(db);
        // A peer that answers again (a heartbeat got through after a cut or
        // a restart) is sent its missing entries now, not when replication's
        // backoff after the failures ends (up to a second): until it has
        // them it cannot stand in for the other follower in the leader's
        // quorum. The task ends with the network, which the raft core owns.
        let resetter = raft.clone();
        tokio::spawn(async move {
            while let Some(peer) = answered_again.recv().await {
                if resetter.trigger().reset_backoff([peer]).await.is_err() {
                    break;
                }
            }
        });

        // Leadership as a watch of its own, derived from openraft's server
        // metrics, which change only with the vote, the server state, the
        // leader or the membership (the full metrics change with every
        // append and apply, and a forwarder woken by those ran on every
        // commit's path). The forwarder ends when the raft core stops (it
        // owns the metrics senders).
        let metrics = raft.metrics();
        let leadership_of = |m: &RaftServerMetrics<TypeConfig>| Leadership {
            term: m.vote.leader_id.term,
            leader: m.current_leader,
        };
        let server = raft.server_metrics();
        let (lead_tx, lead_rx) = watch::channel(leadership_of(&server.borrow_watched()));
        let mut m_rx = server.clone();
        crate::metrics::set_raft_term(lead_rx.borrow().term);
        tokio::spawn(async move {
            while m_rx.changed().await.is_ok() {
                let now = leadership_of(&m_rx.borrow_and_update());
                // Every change of the term passes here, whoever watches.
                crate::metrics::set_raft_term(now.term);
                lead_tx.send_if_modified(|l| std::mem::replace(l, now) != now);
            }
        });

        let ledger = Ledger {
            inner: Arc::new(Inner {
                metrics,
                leadership: lead_rx,
                raft,
                node_id,
                addr,
                sm: shared,
                tuning,
                contact: Arc::new(network::LeaderContact::new()),
                isolation,
                peer_logs,
                db_closed,
                path,
                bootstrap: watch::Sender::new(Bootstrap::NotAsked),
            }),
        };
        ledger.spawn_member_gauges();
        Ok(ledger)
    }

    /// Keeps the per-member gauges (`crate::metrics::MemberGauges`) current,
    /// once a second: how far behind each member is and how long since it
    /// answered change with every heartbeat, too often to follow change by
    /// change. The task holds the ledger weakly and ends with it.
    fn spawn_member_gauges(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut gauges = crate::metrics::MemberGauges::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let ledger = Ledger { inner };
                if ledger.core_failure().is_some() {
                    // The raft core stopped: nobody leads from here.
                    gauges.update(ledger.inner.node_id, None);
                    break;
                }
                gauges.update(ledger.inner.node_id, ledger.progress().as_deref());
            }
        });
    }

    /// Initialises a brand-new group (if this node is the one to), or, for
    /// an existing single-voter group, starts a new term.
    async fn bootstrap(&self, peers: &BTreeMap<NodeId, String>) -> anyhow::Result<()> {
        let raft = &self.inner.raft;
        let (node_id, addr) = (self.inner.node_id, self.inner.addr.clone());
        if !raft.is_initialized().await? {
            let mut members: BTreeMap<NodeId, BasicNode> =
                peers.iter().map(|(id, a)| (*id, BasicNode::new(a.clone()))).collect();
            members.insert(node_id, BasicNode::new(addr.clone()));
            let smallest = *members.keys().next().expect("contains this node");
            if smallest != node_id {
                tracing::info!(node_id, %addr, initialiser = smallest,
                    "new ledger node: waiting for the group's leader to contact it");
                return Ok(());
            }
            if members.len() == 1 {
                tracing::info!(node_id, %addr, "initialising a new single-node ledger group");
                raft.initialize(members).await.map_err(|e| anyhow!("initialising raft membership: {e}"))?;
                self.inner.bootstrap.send_replace(Bootstrap::Initialised);
                return Ok(());
            }
            // Waits for the peers in the background: the node serves (and
            // can be added to a group) meanwhile. Holds the node weakly and
            // ends with it.
            self.inner.bootstrap.send_replace(Bootstrap::Waiting { rounds: 0 });
            tokio::spawn(Self::initialise_when_peers_agree(Arc::downgrade(&self.inner), members, peers.clone()));
            return Ok(());
        }
        let members = self.members();
        if !peers.is_empty() {
            let listed: BTreeSet<NodeId> = peers.keys().copied().chain([node_id]).collect();
            let stored: BTreeSet<NodeId> =
                members.voters.keys().chain(members.learners.keys()).copied().collect();
            if listed != stored {
                tracing::warn!(node_id, ?listed, ?stored,
                    "the peers given differ from the ledger group's stored membership; the stored one is used \
                     (change it with a membership change)");
            }
        }
        if let Some(stored) = members.voters.get(&node_id).or(members.learners.get(&node_id)) {
            if *stored != addr {
                tracing::warn!(node_id, stored = %stored, now = %addr,
                    "this node's address differs from the one in the ledger membership; peers dial the stored one \
                     (change it with a membership change)");
            }
        }
        if members.voters.keys().eq([&node_id]) {
            // Entries that were durable but not yet known committed when a
            // single node died (the committed id is a hint, see store.rs)
            // must commit before the coordinator reads the ledger, or it
            // starts from a ledger missing its newest commits. A node that
            // stopped as leader comes back as leader of its old term
            // (openraft's leader restore), which appends a blank entry if
            // its log holds none of that term; either way entries of its
            // own term commit at once (a quorum of one), and with them
            // everything before (`wait_leader_caught_up` waits for that).
            // A node whose vote was not yet committed comes back as a
            // follower: this makes it elect itself now rather than after
            // an election timeout (openraft ignores it on a leader). (In a
            // multi-node group the same happens by itself: whoever wins the
            // next election appends its blank.)
            raft.trigger()
                .elect(false)
                .await
                .map_err(|e| anyhow!("starting a new ledger term: {e}"))?;
        }
        Ok(())
    }

    /// The smallest member on an empty data directory initialises a new
    /// group only once a majority of the members (itself included) said
    /// they hold nothing, and none holds anything. Alone it cannot tell a
    /// new group from one whose other members are down while its own data
    /// is lost; a group started then would be a second group of the same
    /// members. A majority of empty members means any group they had lost
    /// a quorum's data anyway. Asks again every `PROBE_AGAIN` until then,
    /// and stops if a leader adds this node or the node shuts down.
    async fn initialise_when_peers_agree(
        node: std::sync::Weak<Inner>,
        members: BTreeMap<NodeId, BasicNode>,
        peers: BTreeMap<NodeId, String>,
    ) {
        let majority = members.len() / 2 + 1;
        let mut told: Option<tokio::time::Instant> = None;
        let mut net = match node.upgrade() {
            Some(inner) => network::TonicNetwork::new(inner.tuning.peer_tls.clone()).with_cluster_id(&inner.tuning.cluster_id),
            None => return,
        };
        for rounds in 1.. {
            let Some(inner) = node.upgrade() else { return };
            let (node_id, addr, raft) = (inner.node_id, inner.addr.clone(), &inner.raft);
            match raft.is_initialized().await {
                Ok(false) => {}
                Ok(true) => {
                    inner.bootstrap.send_replace(Bootstrap::Joined);
                    return;
                }
                // Shut down.
                Err(_) => return,
            }
            let answers = network::probe_peers(&mut net, node_id, &peers).await;
            if let Some((peer, at, term, last)) = answers.iter().find_map(|(id, at, p)| match p {
                network::Probed::Holds { term, last } => Some((id, at, term, last)),
                _ => None,
            }) {
                tracing::error!(
                    node_id, %addr, peer, peer_addr = %at, term, ?last,
                    "this node's data directory is empty, but node {peer} at {at} already belongs to a ledger group (term \
                     {term}, log up to index {last:?}): this node lost its data, or was removed from the group. It starts \
                     no new group and waits to be added: on the leader, RemoveNode {{\"node_id\": {node_id}}} if it is \
                     still listed, then AddNode {{\"node_id\": {node_id}, \"addr\": \"{addr}\"}} (docs/OPERATIONS.md, \
                     \"A coordinator member that cannot rejoin\")"
                );
                inner.bootstrap.send_replace(Bootstrap::GroupExists { peer: *peer });
                return;
            }
            let empty: Vec<NodeId> = answers.iter().filter(|(_, _, p)| *p == network::Probed::Empty).map(|(id, _, _)| *id).collect();
            if empty.len() + 1 >= majority {
                tracing::info!(node_id, %addr, voters = ?members.keys().collect::<Vec<_>>(), empty_peers = ?empty,
                    "initialising a new ledger group");
                match raft.initialize(members.clone()).await {
                    Ok(()) => {
                        inner.bootstrap.send_replace(Bootstrap::Initialised);
                        return;
                    }
                    // Not a dead end: the next round finds the node added
                    // to a group meanwhile, or asks and tries again.
                    Err(e) => tracing::error!(node_id, "initialising the new ledger group failed (trying again): {e}"),
                }
            } else {
                inner.bootstrap.send_replace(Bootstrap::Waiting { rounds });
                if told.is_none_or(|t| t.elapsed() >= PROBE_TELL_EVERY) {
                    told = Some(tokio::time::Instant::now());
                    let silent: Vec<String> = answers
                        .iter()
                        .filter_map(|(id, at, p)| match p {
                            network::Probed::Silent(why) => Some(format!("node {id} at {at}: {why}")),
                            _ => None,
                        })
                        .collect();
                    tracing::warn!(node_id, %addr, empty_peers = ?empty, ?silent,
                        "not initialising a new ledger group yet: {majority} of its {} members (this node included) must \
                         answer that they hold nothing, and too few answer. Start the other members; if they hold a group, \
                         this node lost its data and waits to be added instead", members.len());
                }
            }
            drop(inner);
            tokio::time::sleep(PROBE_AGAIN).await;
        }
    }

    /// `open_single`'s wait: leader of the current term with its own first
    /// entry applied (which commits everything before it) and nothing
    /// unapplied, so the state reflects history. Bounded by `open_timeout`.
    async fn wait_leader_caught_up(&self) -> anyhow::Result<()> {
        let node_id = self.inner.node_id;
        let timeout = self.inner.tuning.open_timeout;
        let mut rx = self.inner.metrics.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let m = rx.borrow_and_update();
                if let Err(e) = &m.running_state {
                    bail!("the raft node stopped while starting: {e}");
                }
                let applied_own_term = m
                    .last_applied
                    .is_some_and(|l| l.leader_id.term == m.current_term);
                let applied_all = m.last_applied.map(|l| l.index) >= m.last_log_index;
                if m.state == ServerState::Leader
                    && m.current_leader == Some(node_id)
                    && applied_own_term
                    && applied_all
                {
                    break;
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("the raft node stopped while starting"),
                Err(_) => bail!("this node did not become ledger leader within {timeout:?}"),
            }
        }
        let m = self.inner.metrics.borrow_watched().clone();
        tracing::info!(
            node_id,
            term = m.current_term,
            last_applied = ?m.last_applied,
            snapshot = ?m.snapshot,
            "ledger open: leader, history applied"
        );
        Ok(())
    }

    /// Proposes one entry through raft; resolves once it is committed AND
    /// applied, with the ledger's verdict. On a follower (or a deposed
    /// leader) it fails with `NotLeader`, naming the leader's address if
    /// this node knows it.
    pub async fn propose(
        &self,
        entry: LedgerEntry,
    ) -> Result<Result<(), LedgerError>, ProposeError> {
        match self.inner.raft.client_write(entry).await {
            // One ledger entry, one verdict; none would be a bug, never a pass.
            Ok(resp) => resp.data.0.into_iter().next().ok_or_else(|| ProposeError::Storage("the ledger returned no verdict".into())),
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                Err(ProposeError::Storage(format!(
                    "unexpected membership error on a ledger write: {e}"
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Hands `entry` to raft and returns once it is queued, with a future
    /// that resolves with one verdict per ledger entry it carries (one, or a
    /// batch's). Entries queued one after
    /// another are appended in that order, so a caller can keep several in
    /// flight (the commit pipeline) and still see results in log order.
    pub async fn propose_queued(
        &self,
        entry: LedgerEntry,
    ) -> Result<impl std::future::Future<Output = Result<Vec<Result<(), LedgerError>>, ProposeError>> + Send + 'static, ProposeError>
    {
        let (responder, rx) = ProgressResponder::complete_only();
        self.inner.raft.client_write_ff(entry, Some(responder)).await?;
        Ok(async move {
            match rx.await {
                Ok(Ok(resp)) => Ok(resp.data.0),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(ProposeError::Shutdown),
            }
        })
    }

    /// Clone of the applied state machine. On a follower it may lag the
    /// leader; on a new leader it is complete only after
    /// [`Ledger::wait_applied_leader`]. The clone shares every transaction
    /// record with the state machine (`ledger`'s module doc, "Memory"), so
    /// it costs a map node per tid, not a record; to read a few fields, use
    /// [`Ledger::with_state`].
    pub async fn state(&self) -> LedgerState {
        store::read_shared(&self.inner.sm).state.clone()
    }

    /// `f` of the applied state machine (see [`Ledger::state`]), under its
    /// read lock: keep `f` short, raft applies entries only after it.
    pub fn with_state<T>(&self, f: impl FnOnce(&LedgerState) -> T) -> T {
        f(&store::read_shared(&self.inner.sm).state)
    }

    /// Whether this node currently leads (from the latest raft metrics).
    pub fn is_leader(&self) -> bool {
        let m = self.inner.metrics.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.node_id)
    }

    /// The leader this node knows of, with its gRPC address (from the
    /// membership), if any.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.inner.metrics.borrow_watched();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// The leader, if this node leads or has heard from it within an
    /// election timeout. A follower's metrics keep naming a dead leader until
    /// the next election; sending clients there only makes them wait.
    pub fn live_leader(&self) -> Option<(NodeId, String)> {
        let (id, addr) = self.leader()?;
        let window = Duration::from_millis(self.inner.tuning.election_timeout_min_ms);
        (id == self.inner.node_id || self.inner.contact.within(window)).then_some((id, addr))
    }

    /// Leader only: every member's replication as this leader sees it (the
    /// matched log index, the entries it lacks, how long since it last
    /// answered); `None` on a follower or candidate, which does not know.
    pub fn progress(&self) -> Option<Vec<progress::MemberProgress>> {
        use openraft::Instant as _;
        let m = self.inner.metrics.borrow_watched();
        if m.state != ServerState::Leader || m.current_leader != Some(self.inner.node_id) {
            return None;
        }
        let membership = m.membership_config.membership();
        let members: Vec<NodeId> = membership.voter_ids().chain(membership.learner_ids()).collect();
        let view = progress::LeaderView {
            leader: self.inner.node_id,
            last_log_index: m.last_log_index,
            matched: m.replication.as_ref()?.iter().map(|(id, l)| (*id, l.as_ref().map(|l| l.index))).collect(),
            answered_ago: m.heartbeat.as_ref()?.iter().map(|(id, at)| (*id, at.as_ref().map(|at| at.elapsed()))).collect(),
            problems: members.iter().filter_map(|id| Some((*id, self.inner.peer_logs.problem(*id)?))).collect(),
        };
        Some(progress::of(&view, members))
    }

    /// The address of `id` in the current membership.
    fn addr_of(&self, id: Option<NodeId>) -> Option<String> {
        let m = self.inner.metrics.borrow_watched();
        Some(m.membership_config.membership().get_node(&id?)?.addr.clone())
    }

    /// Resolves if the raft core stops on its own (a storage error, or a
    /// panic inside openraft), with the reason; never while it runs. A node
    /// whose core stopped can neither lead nor follow, so the daemon exits
    /// on it rather than linger as a member that answers every RPC with an
    /// error.
    pub async fn core_stopped(&self) -> String {
        // Woken by the server metrics (which change rarely, see `launch`),
        // not by the full metrics, which change with every commit. The
        // core records a fatal error in the full metrics and then ends,
        // dropping both senders, so the wait below ends after it.
        let mut rx = self.inner.raft.server_metrics();
        loop {
            if let Some(why) = self.core_failure() {
                return why;
            }
            if rx.changed().await.is_err() {
                // The core ended; the full metrics say why (or, once their
                // sender is gone too, that it ended).
                return self.core_failure().unwrap_or_else(|| "the raft core task ended".into());
            }
        }
    }

    /// Why the raft core stopped, if it has (see [`Ledger::core_stopped`]).
    pub fn core_failure(&self) -> Option<String> {
        if let Err(fatal) = &self.inner.metrics.borrow_watched().running_state {
            return Some(fatal.to_string());
        }
        // The core drops its metrics sender when it ends: a clone's
        // `changed` then fails at once, after any change it had not seen.
        use futures::FutureExt as _;
        let mut rx = self.inner.metrics.clone();
        loop {
            match rx.changed().now_or_never() {
                Some(Ok(())) => continue,
                Some(Err(_)) => return Some("the raft core task ended".into()),
                None => return None,
            }
        }
    }

    /// Where this node stands on initialising a new group (a watch: the
    /// smallest member on an empty directory decides in the background).
    pub fn bootstrap_state(&self) -> watch::Receiver<Bootstrap> {
        self.inner.bootstrap.subscribe()
    }

    /// A watch of [`Leadership`]: changes whenever the term or the known
    /// leader changes. When it names this node, call
    /// [`Ledger::wait_applied_leader`] before acting on [`Ledger::state`].
    pub fn subscribe_leadership(&self) -> watch::Receiver<Leadership> {
        self.inner.leadership.clone()
    }

    /// If this node leads, waits until it has applied the first entry of
    /// its own term (the blank entry openraft appends on election): that
    /// entry commits every entry of earlier terms, so from then on
    /// [`Ledger::state`] holds every committed entry, and no tid issued by
    /// an earlier leader is missing from `tid_high_water`. Returns the term.
    ///
    /// Fails with `NotLeader` as soon as this node is not (or no longer)
    /// leader, with `Shutdown` if the node stops. Not bounded in time: a
    /// leader cut off from its quorum never commits its blank entry, so
    /// callers wrap it in a timeout.
    pub async fn wait_applied_leader(&self) -> Result<u64, ProposeError> {
        let me = self.inner.node_id;
        let mut rx = self.inner.metrics.clone();
        loop {
            let leader = {
                let m = rx.borrow_and_update();
                if m.running_state.is_err() {
                    return Err(ProposeError::Shutdown);
                }
                if m.state == ServerState::Leader && m.current_leader == Some(me) {
                    // A restarted node may resume as leader of its old term
                    // without appending a blank entry; entries beyond its
                    // committed hint are then unapplied until they commit.
                    // Everything in the log must be applied, not just one
                    // entry of this term.
                    let own_term = m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term);
                    let applied_all = m.last_applied.map(|l| l.index) >= m.last_log_index;
                    if own_term && applied_all {
                        return Ok(m.current_term);
                    }
                    None
                } else {
                    Some(m.current_leader.filter(|l| *l != me))
                }
            };
            if let Some(leader) = leader {
                return Err(ProposeError::NotLeader { leader: self.addr_of(leader) });
            }
            rx.changed().await.map_err(|_| ProposeError::Shutdown)?;
        }
    }

    /// Confirms with a quorum that this node still leads (a round of
    /// heartbeats, openraft's read-index check), bounded by `timeout`. A
    /// leader cut off from its quorum keeps believing it leads until it hears
    /// a higher term; this is how it finds out it cannot act.
    pub async fn confirm_leader(&self, timeout: Duration) -> Result<(), ProposeError> {
        match tokio::time::timeout(timeout, self.inner.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader { leader: f.leader_node.map(|n| n.addr) })
            }
            Ok(Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)))) => {
                Err(ProposeError::NoQuorum(q.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(f.into()),
            Err(_) => Err(ProposeError::NoQuorum(format!("no quorum confirmed this leader within {timeout:?}"))),
        }
    }

    /// The membership this node has applied (or, on a leader, appended).
    pub fn members(&self) -> Members {
        let m = self.inner.metrics.borrow_watched();
        let membership = m.membership_config.membership();
        let voters: BTreeMap<NodeId, String> = membership
            .voter_ids()
            .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
            .collect();
        let learners = membership
            .learner_ids()
            .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
            .collect();
        Members {
            voters,
            learners,
            joint: membership.get_joint_config().len() > 1,
        }
    }

    /// Leader only: adds node `id` at `addr` as a learner (it receives the
    /// log but does not vote) and waits, bounded by `open_timeout`, until it
    /// has caught up with the membership entry that added it. The new node
    /// must already run (`Ledger::open` with no peers) and serve
    /// [`peer_service`]. Adding an existing member changes nothing.
    pub async fn add_learner(&self, id: NodeId, addr: String) -> Result<(), ProposeError> {
        let resp = self
            .inner
            .raft
            .add_learner(id, BasicNode::new(addr.clone()), false)
            .await?;
        let target = resp.log_id;
        let timeout = self.inner.tuning.open_timeout;
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten())
                        .is_some_and(|matched| matched.index >= target.index)
                },
                format!("learner {id} at {addr} catches up"),
            )
            .await
            .map_err(|e| match e {
                openraft::metrics::WaitError::ShuttingDown => ProposeError::Shutdown,
                // openraft's timeout text carries the whole metrics dump;
                // the operator needs the node, the bound and what to do.
                openraft::metrics::WaitError::Timeout(..) => ProposeError::Membership(format!(
                    "node {id} at {addr:?} was added as a learner but did not catch up with the log within {timeout:?}; \
                     is it running (`coordinator serve --join`) and reachable at that address from this node? \
                     It stays in the group as a learner (no vote) and is caught up once it is reachable: \
                     call AddNode again to wait for it, or RemoveNode {{\"node_id\": {id}}} if the address was wrong"
                )),
            })?;
        Ok(())
    }

    /// Leader only: makes `voters` the group's voters (each must already be
    /// a member, i.e. added by [`Ledger::add_learner`] first, or a voter).
    /// Goes through a joint configuration and returns once the final one is
    /// committed. A removed voter stays a learner if `retain`, otherwise it
    /// leaves the group (stop it and discard its data directory). Removing
    /// the leader itself is allowed: it steps down once the change commits.
    pub async fn change_membership(
        &self,
        voters: BTreeSet<NodeId>,
        retain: bool,
    ) -> Result<(), ProposeError> {
        if voters.is_empty() {
            return Err(ProposeError::Membership("a ledger group needs at least one voter".into()));
        }
        let before = self.members();
        let resp = self.inner.raft.change_membership(voters, retain).await?;
        self.membership_shown(resp.log_id).await?;
        // What the peer network knew of a node that left no longer counts:
        // added back, it starts from an empty log, which is not a log that
        // went back.
        let after = self.members();
        for id in before.voters.keys().chain(before.learners.keys()) {
            if !after.voters.contains_key(id) && !after.learners.contains_key(id) {
                self.inner.peer_logs.forget(*id);
            }
        }
        Ok(())
    }

    /// Waits, bounded by `open_timeout`, until this node's metrics (which
    /// [`Ledger::members`] reads) show the membership written at `log_id`
    /// or a later one. openraft answers a membership change once its entry
    /// is applied and updates the metrics a moment later; without the wait,
    /// a RemoveNode's answer could still list the node it removed.
    async fn membership_shown(&self, log_id: LogId) -> Result<(), ProposeError> {
        let timeout = self.inner.tuning.open_timeout;
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.membership_config.log_id().as_ref().is_some_and(|l| *l >= log_id), "the membership change shows")
            .await
            .map(drop)
            .map_err(|e| match e {
                openraft::metrics::WaitError::ShuttingDown => ProposeError::Shutdown,
                openraft::metrics::WaitError::Timeout(..) => ProposeError::Membership(format!(
                    "the membership change committed at log index {} but this node's view did not show it within {timeout:?}; \
                     ListNodes again shortly",
                    log_id.index
                )),
            })
    }

    /// Leader only: removes `id` from the group entirely (voter or learner).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ProposeError> {
        let members = self.members();
        if members.voters.contains_key(&id) {
            let voters = members.voters.keys().copied().filter(|v| *v != id).collect();
            self.change_membership(voters, false).await
        } else if members.learners.contains_key(&id) {
            let resp = self.inner.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await?;
            self.membership_shown(resp.log_id).await?;
            self.inner.peer_logs.forget(id);
            Ok(())
        } else {
            Ok(())
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// This node's gRPC address, as given to `open`.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Test-only fault: cuts this node off from the other members and back
    /// (see [`network::Isolation`]).
    pub fn isolation(&self) -> &network::Isolation {
        &self.inner.isolation
    }

    /// The underlying raft handle (metrics, `wait`, triggers).
    pub fn raft(&self) -> &LedgerRaft {
        &self.inner.raft
    }

    /// Stops the raft node and waits until its storage is closed (the
    /// ledger file lock is released). Idempotent.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| anyhow!("raft core task failed: {e}"))?;
        // The state-machine worker (and any storage call still on the
        // blocking pool) may drop its handle a moment after the core.
        let mut closed = self.inner.db_closed.clone();
        match tokio::time::timeout(Duration::from_secs(10), closed.changed()).await {
            // The sender never sends: `changed` only ends when it is dropped.
            Ok(_) => Ok(()),
            Err(_) => bail!(
                "the ledger {} is still held open 10 s after raft shutdown",
                self.inner.path.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use redb::Database;

    use super::*;
    use crate::ledger::{HostTxnRecord, TxnHosts, TxnStatus};

    fn hosts() -> BTreeMap<String, HostTxnRecord> {
        ["h0", "h1"]
            .iter()
            .map(|h| {
                (
                    h.to_string(),
                    HostTxnRecord {
                        steps: 3,
                        aggregate: Default::default(),
                        output_digest: 7,
                    },
                )
            })
            .collect()
    }

    fn init() -> LedgerEntry {
        LedgerEntry::Init {
            cluster_id: "c1".into(),
            hosts: vec!["h0".into(), "h1".into()],
        }
    }

    /// Opening a single-node ledger in `dir` as `node` fails: the whole
    /// error chain, as an operator reads it.
    async fn refused(dir: &Path, node: u64) -> String {
        match Ledger::open_single_with(dir, node, "a".into(), fast()).await {
            Ok(_) => panic!("opening {} as node {node} must fail", dir.display()),
            Err(e) => format!("{e:#}"),
        }
    }

    fn fast() -> RaftTuning {
        RaftTuning {
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            ..Default::default()
        }
    }

    async fn ok(l: &Ledger, e: LedgerEntry) {
        assert_eq!(
            l.propose(e.clone()).await.expect("proposal committed"),
            Ok(()),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn proposals_apply_and_rejections_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_single_with(dir.path(), 1, "127.0.0.1:50051".into(), fast())
            .await
            .unwrap();
        assert!(l.is_leader());
        assert_eq!(l.state().await, LedgerState::default());

        // Before Init the ledger rejects everything else.
        assert_eq!(
            l.propose(LedgerEntry::Begin { tid: 1 }).await.unwrap(),
            Err(LedgerError::NotInitialised)
        );

        ok(&l, init()).await;
        ok(&l, LedgerEntry::NewEpoch { epoch: 1 }).await;
        ok(&l, LedgerEntry::Begin { tid: 1 }).await;
        ok(
            &l,
            LedgerEntry::Commit {
                tid: 1,
                hosts: hosts(),
                begin_next: Some(2),
            },
        )
        .await;

        let s = l.state().await;
        assert_eq!(s.cluster_id, "c1");
        assert_eq!(s.epoch, 1);
        assert_eq!(s.last_committed, 1);
        assert_eq!(s.tid_high_water, 2);
        assert_eq!(s.txn(1).unwrap().status, TxnStatus::Committed);
        assert_eq!(s.txn(1).unwrap().hosts, TxnHosts::from(&hosts()));
        assert_eq!(s.open_txn().map(|t| t.tid), Some(2));

        // Rejected entries: the verdict is the ledger's error, the state is unchanged.
        assert_eq!(
            l.propose(LedgerEntry::Begin { tid: 2 }).await.unwrap(),
            Err(LedgerError::TidReused {
                proposed: 2,
                high_water: 2
            })
        );
        assert_eq!(
            l.propose(LedgerEntry::NewEpoch { epoch: 1 }).await.unwrap(),
            Err(LedgerError::StaleEpoch {
                proposed: 1,
                current: 1
            })
        );
        let mut partial = hosts();
        partial.remove("h1");
        assert!(matches!(
            l.propose(LedgerEntry::Commit {
                tid: 2,
                hosts: partial,
                begin_next: Some(3)
            })
            .await
            .unwrap(),
            Err(LedgerError::MissingHosts { .. })
        ));
        assert_eq!(l.state().await, s);
        l.shutdown().await.unwrap();
        assert!(matches!(
            l.propose(LedgerEntry::Begin { tid: 9 }).await,
            Err(ProposeError::Shutdown)
        ));
    }

    #[tokio::test]
    async fn restart_keeps_state_across_snapshots_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = RaftTuning {
            snapshot_after_logs: 10,
            logs_kept_after_snapshot: 2,
            ..fast()
        };

        let l = Ledger::open_single_with(dir.path(), 7, "127.0.0.1:1".into(), tuning.clone())
            .await
            .unwrap();
        ok(&l, init()).await;
        ok(&l, LedgerEntry::NewEpoch { epoch: 1 }).await;
        ok(&l, LedgerEntry::Begin { tid: 1 }).await;
        for t in 1..=30 {
            // Checkpoint 20 is taken between transactions, as the core does.
            let begin_next = (t != 20).then_some(t + 1);
            ok(&l, LedgerEntry::Commit { tid: t, hosts: hosts(), begin_next }).await;
            if t == 20 {
                ok(&l, LedgerEntry::CheckpointComplete { tid: 20 }).await;
                ok(&l, LedgerEntry::Begin { tid: 21 }).await;
            }
        }
        // Snapshots were built and the log purged past the first one.
        let m = purged_past(&l, 10).await;
        let purged = m.purged.unwrap().index;
        let before = l.state().await;
        l.shutdown().await.unwrap();
        drop(l);

        // Restart: snapshot + committed entries after it.
        let l = Ledger::open_single_with(dir.path(), 7, "127.0.0.1:1".into(), tuning.clone())
            .await
            .unwrap();
        assert_eq!(l.state().await, before);
        assert!(l
            .raft()
            .metrics()
            .borrow_watched()
            .purged
            .is_some_and(|p| p.index >= purged));
        // It keeps working and still refuses reused tids.
        assert_eq!(
            l.propose(LedgerEntry::Begin { tid: 5 }).await.unwrap(),
            Err(LedgerError::TidReused {
                proposed: 5,
                high_water: 31
            })
        );
        ok(
            &l,
            LedgerEntry::Commit {
                tid: 31,
                hosts: hosts(),
                begin_next: Some(32),
            },
        )
        .await;
        let after = l.state().await;
        assert_eq!(after.last_committed, 31);
        l.shutdown().await.unwrap();
        drop(l);

        // And once more, with no new snapshot in between.
        let l = Ledger::open_single_with(dir.path(), 7, "127.0.0.1:1".into(), tuning)
            .await
            .unwrap();
        assert_eq!(l.state().await, after);
        l.shutdown().await.unwrap();
    }

    /// Waits until `l` has a snapshot and has purged its log past `index`.
    ///
    /// openraft checks its snapshot policy only when entries commit, and
    /// skips the check while a snapshot is being built. Proposals made
    /// during the first build therefore need not start a second one once
    /// the proposing stops, so this asks for a build itself, a bounded
    /// number of times, rather than waiting on the policy alone.
    async fn purged_past(l: &Ledger, index: u64) -> Metrics {
        let reached = |m: &Metrics| {
            m.snapshot.is_some() && m.purged.is_some_and(|p| p.index > index)
        };
        for _ in 0..20 {
            let got = l
                .raft()
                .wait(Some(Duration::from_secs(1)))
                .metrics(reached, "a snapshot and the log purged behind it")
                .await;
            if let Ok(m) = got {
                return m;
            }
            // A no-op while a build is running; the next round asks again.
            l.raft().trigger().snapshot().await.unwrap();
        }
        panic!(
            "no snapshot purged the log past index {index}: {:?}",
            l.raft().metrics().borrow_watched()
        );
    }

    /// The files in the snapshot directory of the data directory `dir`.
    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join(snapshot::SNAPSHOT_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A ledger with a snapshot (and entries after it) in `dir`, closed;
    /// returns its state.
    async fn ledger_with_snapshot(dir: &Path) -> LedgerState {
        let tuning = RaftTuning { snapshot_after_logs: 5, logs_kept_after_snapshot: 2, ..fast() };
        let l = Ledger::open_single_with(dir, 1, "a".into(), tuning).await.unwrap();
        ok(&l, init()).await;
        ok(&l, LedgerEntry::Begin { tid: 1 }).await;
        for t in 1..=12 {
            ok(&l, LedgerEntry::Commit { tid: t, hosts: hosts(), begin_next: Some(t + 1) }).await;
        }
        l.raft().wait(Some(Duration::from_secs(5))).metrics(|m| m.snapshot.is_some(), "snapshot").await.unwrap();
        let state = l.state().await;
        l.shutdown().await.unwrap();
        state
    }

    #[tokio::test]
    async fn snapshots_are_files_and_superseded_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let want = ledger_with_snapshot(dir.path()).await;
        // Several snapshots were built; one file is left, no temporary ones.
        let files = snapshot_files(dir.path());
        assert!(files.len() == 1 && files[0].ends_with(".json"), "{files:?}");
        assert_eq!(store::redb_snapshot_and_format(dir.path()).unwrap(), (false, store::FORMAT.to_string()));

        // Leftovers of an interrupted write are deleted on open.
        let snaps = dir.path().join(snapshot::SNAPSHOT_DIR);
        std::fs::write(snaps.join("1-9.tmp"), b"half").unwrap();
        std::fs::write(snaps.join("00000000000000000001-1-1.json"), b"superseded").unwrap();
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast()).await.unwrap();
        assert_eq!(l.state().await, want);
        l.shutdown().await.unwrap();
        assert_eq!(snapshot_files(dir.path()), files);

        // The current snapshot's file missing: a clear error, not an empty ledger.
        std::fs::remove_file(snaps.join(&files[0])).unwrap();
        let msg = refused(dir.path(), 1).await;
        assert!(msg.contains("current snapshot") && msg.contains("is missing"), "{msg}");
    }

    #[tokio::test]
    async fn a_format_3_directory_is_restamped_on_open_and_takes_batches() {
        let dir = tempfile::tempdir().unwrap();
        let want = ledger_with_snapshot(dir.path()).await;
        store::stamp_v3(dir.path()).unwrap();
        assert_eq!(store::redb_snapshot_and_format(dir.path()).unwrap(), (false, "lockstep-ledger/3".to_string()));
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast()).await.unwrap();
        assert_eq!(l.state().await, want);
        let batch = LedgerEntry::Batch(vec![
            LedgerEntry::Commit { tid: 13, hosts: hosts(), begin_next: Some(14) },
            LedgerEntry::Commit { tid: 14, hosts: hosts(), begin_next: Some(15) },
        ]);
        let verdicts = l.propose_queued(batch).await.unwrap().await.unwrap();
        assert_eq!(verdicts, vec![Ok(()), Ok(())]);
        let after = l.state().await;
        assert_eq!(after.last_committed, 14);
        l.shutdown().await.unwrap();
        assert_eq!(store::redb_snapshot_and_format(dir.path()).unwrap(), (false, store::FORMAT.to_string()));
        // The batch entry is read back from the log on the next open.
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast()).await.unwrap();
        assert_eq!(l.state().await, after);
        l.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_format_2_directory_is_upgraded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let want = ledger_with_snapshot(dir.path()).await;
        store::downgrade_to_v2(dir.path()).unwrap();
        assert_eq!(store::redb_snapshot_and_format(dir.path()).unwrap(), (true, "lockstep-ledger/2".to_string()));

        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast()).await.unwrap();
        assert_eq!(l.state().await, want);
        ok(&l, LedgerEntry::Commit { tid: 13, hosts: hosts(), begin_next: None }).await;
        let after = l.state().await;
        l.shutdown().await.unwrap();
        assert_eq!(store::redb_snapshot_and_format(dir.path()).unwrap(), (false, store::FORMAT.to_string()));
        assert_eq!(snapshot_files(dir.path()).len(), 1);

        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast()).await.unwrap();
        assert_eq!(l.state().await, after);
        l.shutdown().await.unwrap();
    }

    /// What openraft 0.9.25 wrote (a data directory of the previous build:
    /// a log entry, the purge marker and committed hint, the vote and the
    /// snapshot meta in `ledger.redb`; the blank and membership entries as
    /// its serde derive spells them) reads back as 0.10's types and is
    /// written again byte for byte, except that 0.10 keeps the snapshot
    /// meta's `snapshot_id` slot empty (and ignores it on read).
    #[test]
    fn openraft_0_9_json_reads_back_unchanged() {
        fn same<T: serde::de::DeserializeOwned + Serialize>(json: &str) {
            let t: T = serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(serde_json::to_string(&t).unwrap(), json);
        }
        same::<Entry>(
            r#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":6717},"payload":{"Normal":{"Commit":{"tid":6455,"hosts":{"host-0":{"steps":1,"aggregate":{"generator":[3,5613745874732962985],"push":[0,0]},"output_digest":14680482848210146127}},"begin_next":6456}}}}"#,
        );
        same::<Entry>(r#"{"log_id":{"leader_id":{"term":3,"node_id":2},"index":40},"payload":"Blank"}"#);
        same::<Entry>(
            r#"{"log_id":{"leader_id":{"term":0,"node_id":0},"index":0},"payload":{"Membership":{"configs":[[1,2,3],[1,2,3,4]],"nodes":{"1":{"addr":"10.0.0.1:50051"},"2":{"addr":"10.0.0.2:50051"},"3":{"addr":"10.0.0.3:50051"},"4":{"addr":"10.0.0.4:50051"}}}}}"#,
        );
        same::<LogId>(r#"{"leader_id":{"term":1,"node_id":1},"index":7999}"#);
        same::<Option<LogId>>(r#"{"leader_id":{"term":1,"node_id":1},"index":9003}"#);
        same::<Option<LogId>>("null");
        same::<Vote>(r#"{"leader_id":{"term":1,"node_id":1},"committed":true}"#);
        same::<Vote>(r#"{"leader_id":{"term":7,"node_id":3},"committed":false}"#);
        let meta_09 = r#"{"last_log_id":{"leader_id":{"term":1,"node_id":1},"index":7999},"last_membership":{"log_id":{"leader_id":{"term":0,"node_id":0},"index":0},"membership":{"configs":[[1]],"nodes":{"1":{"addr":"127.0.0.1:56051"}}}},"snapshot_id":"T1-N1-7999-1796596299606625"}"#;
        let meta: SnapshotMeta = serde_json::from_str(meta_09).unwrap();
        assert_eq!(meta.last_log_id.map(|l| l.index), Some(7999));
        assert_eq!(serde_json::to_string(&meta).unwrap(), meta_09.replace("T1-N1-7999-1796596299606625", ""));
        same::<SnapshotMeta>(&meta_09.replace("T1-N1-7999-1796596299606625", ""));
    }

    #[tokio::test]
    async fn restart_without_snapshot_reapplies_log() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast())
            .await
            .unwrap();
        ok(&l, init()).await;
        ok(&l, LedgerEntry::Begin { tid: 4 }).await;
        let before = l.state().await;
        l.shutdown().await.unwrap();
        drop(l);
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast())
            .await
            .unwrap();
        assert_eq!(l.state().await, before);
        assert!(l.raft().metrics().borrow_watched().snapshot.is_none());
        l.shutdown().await.unwrap();
    }

    /// Regression: a restarted single node resumed as leader of its old
    /// term and left durable entries beyond the committed hint unapplied, so
    /// the coordinator started without its newest commit (found by the e2e
    /// crash-cycle test: "journal names tid 11 which the ledger never began").
    #[tokio::test]
    async fn restart_applies_durable_entries_beyond_a_stale_committed_hint() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast()).await.unwrap();
        ok(&l, init()).await;
        let hint = l.raft().metrics().borrow_watched().last_applied;
        ok(&l, LedgerEntry::Begin { tid: 4 }).await;
        ok(&l, LedgerEntry::NewEpoch { epoch: 3 }).await;
        let before = l.state().await;
        assert_eq!((before.tid_high_water, before.epoch), (4, 3));
        l.shutdown().await.unwrap();
        drop(l);
        store::rewind_committed_hint(dir.path(), hint).unwrap();
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast()).await.unwrap();
        assert_eq!(l.state().await, before, "every durable entry is applied on open");
        l.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_dir_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast())
            .await
            .unwrap();
        let err = Ledger::open_single_with(dir.path(), 1, "a".into(), fast())
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("ledger.redb") && msg.contains("another coordinator"),
            "{msg}"
        );
        // The first one is unaffected.
        ok(&l, init()).await;
        l.shutdown().await.unwrap();
        // Once shut down, the directory can be opened again.
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast())
            .await
            .unwrap();
        assert_eq!(l.state().await.cluster_id, "c1");
        l.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn foreign_or_damaged_files_are_refused_with_the_file_named() {
        // Not a redb file at all.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(store::LEDGER_FILE),
            b"definitely not a database, just some text",
        )
        .unwrap();
        let msg = refused(dir.path(), 1).await;
        assert!(
            msg.contains("ledger.redb") && msg.contains("not a Lockstep ledger"),
            "{msg}"
        );

        // A redb database of something else.
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(store::LEDGER_FILE)).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(redb::TableDefinition::<u64, u64>::new("other"))
                .unwrap()
                .insert(1, 2)
                .unwrap();
            w.commit().unwrap();
        }
        let msg = refused(dir.path(), 1).await;
        assert!(
            msg.contains("ledger.redb") && msg.contains("not a Lockstep ledger"),
            "{msg}"
        );

        // A real ledger with a damaged body.
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast())
            .await
            .unwrap();
        ok(&l, init()).await;
        l.shutdown().await.unwrap();
        drop(l);
        let path = dir.path().join(store::LEDGER_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        for b in bytes.iter_mut().skip(9) {
            *b = 0xA5;
        }
        std::fs::write(&path, bytes).unwrap();
        let msg = refused(dir.path(), 1).await;
        assert!(msg.contains("ledger.redb"), "{msg}");

        // The data directory is a file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        let msg = refused(&file, 1).await;
        assert!(msg.contains("not a directory"), "{msg}");
    }

    /// The log files and `ledger.redb` belong together: one without the
    /// other, or a format-1 `ledger.redb` (log inside redb), is refused.
    #[tokio::test]
    async fn mixed_or_old_ledger_directories_are_refused() {
        async fn open(d: &Path) -> anyhow::Result<Ledger> {
            Ledger::open_single_with(d, 1, "a".into(), fast()).await
        }
        let used = || async {
            let dir = tempfile::tempdir().unwrap();
            let l = open(dir.path()).await.unwrap();
            ok(&l, init()).await;
            l.shutdown().await.unwrap();
            dir
        };

        let dir = used().await;
        std::fs::remove_file(dir.path().join(store::LEDGER_FILE)).unwrap();
        let msg = refused(dir.path(), 1).await;
        assert!(msg.contains(store::LOG_DIR) && msg.contains("was just created"), "{msg}");

        let dir = used().await;
        std::fs::remove_dir_all(dir.path().join(store::LOG_DIR)).unwrap();
        let msg = refused(dir.path(), 1).await;
        assert!(msg.contains(store::LOG_DIR) && msg.contains("is missing"), "{msg}");

        // Snapshot files left without their ledger are not silently dropped.
        let dir = tempfile::tempdir().unwrap();
        ledger_with_snapshot(dir.path()).await;
        std::fs::remove_file(dir.path().join(store::LEDGER_FILE)).unwrap();
        std::fs::remove_dir_all(dir.path().join(store::LOG_DIR)).unwrap();
        let msg = refused(dir.path(), 1).await;
        assert!(msg.contains(snapshot::SNAPSHOT_DIR) && msg.contains("was just created"), "{msg}");

        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(store::LEDGER_FILE)).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(redb::TableDefinition::<&str, &[u8]>::new("raft_meta"))
                .unwrap()
                .insert("format", b"lockstep-ledger/1".as_slice())
                .unwrap();
            w.commit().unwrap();
        }
        let msg = refused(dir.path(), 1).await;
        assert!(msg.contains("lockstep-ledger/1") && msg.contains(store::FORMAT), "{msg}");
    }

    #[tokio::test]
    async fn another_node_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast())
            .await
            .unwrap();
        l.shutdown().await.unwrap();
        drop(l);
        let msg = refused(dir.path(), 2).await;
        assert!(
            msg.contains("voters [1]") && msg.contains("node 2"),
            "{msg}"
        );
        // The failed open released the lock.
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast())
            .await
            .unwrap();
        l.shutdown().await.unwrap();
    }

    /// openraft's own storage conformance suite against our store, case by
    /// case (its `test_all` stops at the first failure).
    #[test]
    fn openraft_storage_suite() {
        use openraft::testing::log::{StoreBuilder, Suite};
        struct Builder;
        impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
            async fn build(
                &self,
            ) -> Result<(tempfile::TempDir, LogStore, StateMachine), openraft::StorageError<TypeConfig>>
            {
                let dir = tempfile::tempdir().unwrap();
                let db = Arc::new(store::open(dir.path()).unwrap().0);
                Ok((
                    dir,
                    LogStore::new(db.clone()),
                    StateMachine::load(db).unwrap(),
                ))
            }
        }
        type S = Suite<TypeConfig, LogStore, StateMachine, Builder, tempfile::TempDir>;
        let mut failed = Vec::new();
        macro_rules! cases {
            ($($case:ident),* $(,)?) => {$(
                let rt = tokio::runtime::Runtime::new().unwrap();
                let res = rt.block_on(async {
                    let (_dir, log, sm) = Builder.build().await.map_err(std::io::Error::other)?;
                    S::$case(log, sm).await
                });
                if let Err(e) = res {
                    failed.push(format!("{}: {e}", stringify!($case)));
                }
            )*};
        }
        // Every case of openraft's `Suite::test_store`, in its order.
        cases!(
            last_membership_in_log_initial,
            last_membership_in_log,
            last_membership_in_log_multi_step,
            get_membership_initial,
            get_membership_from_log_and_empty_sm,
            get_membership_from_empty_log_and_sm,
            get_membership_from_log_le_sm_last_applied,
            get_membership_from_log_gt_sm_last_applied_1,
            get_membership_from_log_gt_sm_last_applied_2,
            get_initial_state_without_init,
            get_initial_state_membership_from_empty_log_and_sm,
            get_initial_state_membership_from_sm_inlog_is_smaller,
            get_initial_state_membership_from_log_insm_is_smaller,
            get_initial_state_with_state,
            get_initial_state_last_log_gt_sm,
            get_initial_state_last_log_lt_sm,
            get_initial_state_inverted_log_order,
            get_initial_state_conflict_at_same_index,
            get_initial_state_log_ids,
            get_initial_state_re_apply_committed,
            save_vote,
            get_log_entries,
            limited_get_log_entries,
            leader_bounded_stream,
            entries_stream,
            try_get_log_entry,
            log_reader_reads_new_entries,
            initial_logs,
            get_log_state,
            get_log_id,
            last_id_in_log,
            last_applied_state,
            purge_logs_upto_0,
            purge_logs_upto_5,
            purge_logs_upto_20,
            delete_logs_after_11,
            delete_logs_after_5,
            delete_logs_after_0,
            delete_logs_after_none,
            append_to_log,
            snapshot_meta,
            snapshot_meta_optional,
            apply_single,
            apply_multiple,
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        if let Err(e) = rt.block_on(S::transfer_snapshot(&Builder)) {
            failed.push(format!("transfer_snapshot: {e}"));
        }
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[tokio::test]
    async fn snapshots_build_install_and_read_back() {
        use openraft::storage::RaftStateMachine as _;
        use openraft::RaftSnapshotBuilder as _;

        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open_single_with(dir.path(), 1, "a".into(), fast())
            .await
            .unwrap();
        ok(&l, init()).await;
        ok(&l, LedgerEntry::Begin { tid: 3 }).await;
        let want = l.state().await;
        l.raft().trigger().snapshot().await.unwrap();
        l.raft()
            .wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.snapshot.is_some(), "snapshot")
            .await
            .unwrap();
        let snap = l
            .raft()
            .get_snapshot()
            .await
            .unwrap()
            .expect("current snapshot");
        l.shutdown().await.unwrap();

        // Install it into a fresh state machine elsewhere.
        let other = tempfile::tempdir().unwrap();
        let db = Arc::new(store::open(other.path()).unwrap().0);
        let mut sm = StateMachine::load(db.clone()).unwrap();
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(store::read_shared(&sm.shared()).state, want);
        assert_eq!(sm.applied_state().await.unwrap().0, snap.meta.last_log_id);
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta, snap.meta);
        // A rebuilt snapshot has the same content, and a reload starts from it.
        let rebuilt = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert_eq!(rebuilt.meta.last_log_id, snap.meta.last_log_id);
        drop(sm);
        let sm = StateMachine::load(db).unwrap();
        assert_eq!(store::read_shared(&sm.shared()).state, want);
    }
}
