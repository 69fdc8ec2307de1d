//! The ledger as a real multi-node openraft group: real tonic servers on
//! 127.0.0.1 ports from binding :0, real redb files in temp dirs. No sleeps
//! as synchronisation: every wait is on raft metrics (openraft's `Wait`)
//! or the leadership watch, with an overall bound.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_coordinator::ledger::{HostTxnRecord, LedgerEntry, LedgerError, LedgerState, Sums, TxnStatus};
use lockstep_coordinator::raft::network::TonicNetwork;
use lockstep_coordinator::raft::{peer_service, Bootstrap, Ledger, NodeId, ProposeError, RaftTuning};
use openraft::errors::RPCError;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::vote::RaftVote as _;
use openraft::async_runtime::WatchReceiver as _;
use openraft::{BasicNode, RaftNetworkFactory as _, RaftNetworkV2 as _, ServerState};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Overall bound of every wait.
const BOUND: Duration = Duration::from_secs(20);

fn tuning() -> RaftTuning {
    // The production timings (heartbeat 100 ms, election 300-600 ms), and
    // a cluster of this test's own: tests run in parallel in one process,
    // and a port a test's stopped member freed may be bound by another
    // test's node while the first test's leader still sends to it. libtest
    // names the thread that runs a test's body (where every group here is
    // started) after the test.
    let cluster_id = std::thread::current().name().unwrap_or("raft-group").to_string();
    RaftTuning { cluster_id, ..RaftTuning::default() }
}

struct Node {
    id: NodeId,
    addr: String,
    dir: PathBuf,
    ledger: Ledger,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Node {
    /// Starts node `id` on `listener` (bound beforehand, so `addr` is known
    /// to every peer before any node starts).
    async fn start(
        id: NodeId,
        dir: &Path,
        listener: TcpListener,
        peers: Option<BTreeMap<NodeId, String>>,
        tuning: RaftTuning,
    ) -> Node {
        let addr = listener.local_addr().unwrap().to_string();
        let ledger = match peers {
            Some(peers) => Ledger::open(dir, id, addr.clone(), peers, tuning).await,
            None => Ledger::join(dir, id, addr.clone(), tuning).await,
        }
        .unwrap_or_else(|e| panic!("opening node {id}: {e:#}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = peer_service(&ledger, false);
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        Node {
            id,
            addr,
            dir: dir.to_path_buf(),
            ledger,
            stop: Some(stop),
            server,
        }
    }

    /// Stops serving (closing its peer connections) and shuts the raft node
    /// down; returns what a restart needs.
    async fn stop(mut self) -> (NodeId, String, PathBuf) {
        let _ = self.stop.take().unwrap().send(());
        if tokio::time::timeout(BOUND, &mut self.server).await.is_err() {
            self.server.abort();
        }
        self.ledger.shutdown().await.unwrap();
        (self.id, self.addr, self.dir)
    }
}

async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Starts node `id` again on its old address and directory with `peers`;
/// with `wipe`, on the directory emptied first (it lost its data).
async fn restart(id: NodeId, addr: &str, dir: &Path, peers: &BTreeMap<NodeId, String>, wipe: bool) -> Node {
    if wipe {
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::create_dir_all(dir).unwrap();
    }
    Node::start(id, dir, TcpListener::bind(addr).await.unwrap(), Some(peers.clone()), tuning()).await
}

/// A group of `n` nodes with ids 1..=n, each in its own temp dir.
async fn group(n: u64, tuning: RaftTuning) -> (Vec<tempfile::TempDir>, Vec<Node>) {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(bind().await);
    }
    let peers: BTreeMap<NodeId, String> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string()))
        .collect();
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    // Start the non-initialising nodes first: they wait to be contacted.
    for (i, l) in listeners.into_iter().enumerate().rev() {
        let dir = tempfile::tempdir().unwrap();
        nodes.push(Node::start(i as u64 + 1, dir.path(), l, Some(peers.clone()), tuning.clone()).await);
        dirs.push(dir);
    }
    nodes.reverse();
    (dirs, nodes)
}

/// Waits until one node leads, has applied its term's first entry, and
/// every other node follows it; returns its index in `nodes`.
async fn leader_of(nodes: &[Node]) -> usize {
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no leader within {BOUND:?}");
        // Any node reaching Leader state.
        let waits = nodes.iter().map(|n| {
            let w = n.ledger.raft().wait(Some(deadline - tokio::time::Instant::now()));
            let msg = format!("node {} leads", n.id);
            Box::pin(async move { w.state(ServerState::Leader, msg).await })
        });
        let (res, i, _) = futures::future::select_all(waits).await;
        res.unwrap_or_else(|e| panic!("no leader: {e}"));
        let l = &nodes[i].ledger;
        match tokio::time::timeout_at(deadline, l.wait_applied_leader()).await {
            Ok(Ok(term)) => {
                for n in nodes {
                    n.ledger
                        .raft()
                        .wait(Some(deadline - tokio::time::Instant::now()))
                        .metrics(
                            |m| m.current_leader == Some(nodes[i].id) && m.current_term == term,
                            format!("node {} follows {} in term {term}", n.id, nodes[i].id),
                        )
                        .await
                        .unwrap();
                }
                return i;
            }
            // Deposed at once (a competing candidate): look again.
            Ok(Err(ProposeError::NotLeader { .. })) => continue,
            Ok(Err(e)) => panic!("waiting for leader {}: {e}", nodes[i].id),
            Err(_) => panic!("leader {} did not apply its first entry within {BOUND:?}", nodes[i].id),
        }
    }
}

/// Waits until every node has applied everything the leader has applied,
/// then checks that their states are equal; returns that state.
async fn converged(nodes: &[Node], leader: usize) -> LedgerState {
    // The metrics follow the state machine a moment later.
    let m = nodes[leader]
        .ledger
        .raft()
        .wait(Some(BOUND))
        .metrics(
            |m| m.last_applied.map(|l| l.index) >= m.last_log_index,
            "the leader's metrics show everything applied",
        )
        .await
        .unwrap();
    let idx = m.last_applied.map(|l| l.index);
    let want = nodes[leader].ledger.state().await;
    for n in nodes {
        n.ledger
            .raft()
            .wait(Some(BOUND))
            .applied_index_at_least(idx, format!("node {} applies up to {idx:?}", n.id))
            .await
            .unwrap();
        assert_eq!(n.ledger.state().await, want, "node {} has the leader's state", n.id);
    }
    want
}

fn hosts() -> BTreeMap<String, HostTxnRecord> {
    ["h0", "h1"]
        .iter()
        .map(|h| {
            (
                h.to_string(),
                HostTxnRecord {
                    steps: 2,
                    aggregate: Sums::build([("in", 3, 99)], None).unwrap(),
                    output_digest: 5,
                },
            )
        })
        .collect()
}

async fn ok(l: &Ledger, e: LedgerEntry) {
    assert_eq!(l.propose(e.clone()).await.unwrap_or_else(|err| panic!("{e:?}: {err}")), Ok(()), "{e:?}");
}

fn commit(tid: u64) -> LedgerEntry {
    LedgerEntry::Commit {
        tid,
        hosts: hosts(),
        begin_next: Some(tid + 1),
    }
}

/// Init, epoch 1, Begin(1), then commits 1..=n (each beginning the next).
async fn history(l: &Ledger, n: u64) {
    ok(
        l,
        LedgerEntry::Init {
            cluster_id: "c1".into(),
            hosts: vec!["h0".into(), "h1".into()],
        },
    )
    .await;
    ok(l, LedgerEntry::NewEpoch { epoch: 1 }).await;
    ok(l, LedgerEntry::Begin { tid: 1 }).await;
    for t in 1..=n {
        ok(l, commit(t)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_one_leader_replicate_and_redirect() {
    let (_dirs, nodes) = group(3, tuning()).await;
    let li = leader_of(&nodes).await;
    let leader = &nodes[li].ledger;
    assert!(leader.is_leader());
    assert_eq!(leader.leader(), Some((nodes[li].id, nodes[li].addr.clone())));
    let leaders: Vec<usize> = (0..3).filter(|i| nodes[*i].ledger.is_leader()).collect();
    assert_eq!(leaders, [li], "exactly one leader");
    let voters: BTreeSet<NodeId> = leader.members().voters.into_keys().collect();
    assert_eq!(voters, BTreeSet::from([1, 2, 3]));

    history(leader, 3).await;
    let s = converged(&nodes, li).await;
    assert_eq!((s.last_committed, s.tid_high_water, s.epoch), (3, 4, 1));
    assert_eq!(s.txn(2).unwrap().status, TxnStatus::Committed);

    // Followers know the leader and redirect writes to its address.
    for (i, n) in nodes.iter().enumerate().filter(|(i, _)| *i != li) {
        assert!(!n.ledger.is_leader());
        assert_eq!(n.ledger.leader(), Some((nodes[li].id, nodes[li].addr.clone())), "node {i}");
        assert_eq!(n.ledger.subscribe_leadership().borrow().leader, Some(nodes[li].id));
        match n.ledger.propose(LedgerEntry::Begin { tid: 100 }).await {
            Err(ProposeError::NotLeader { leader }) => assert_eq!(leader, Some(nodes[li].addr.clone())),
            other => panic!("a follower's proposal: {other:?}"),
        }
        match n.ledger.wait_applied_leader().await {
            Err(ProposeError::NotLeader { leader }) => assert_eq!(leader, Some(nodes[li].addr.clone())),
            other => panic!("wait_applied_leader on a follower: {other:?}"),
        }
    }
    // The refused proposal changed nothing anywhere.
    assert_eq!(converged(&nodes, li).await, s);

    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_committed_entries_and_tids_increasing() {
    let (_dirs, mut nodes) = group(3, tuning()).await;
    let li = leader_of(&nodes).await;
    history(&nodes[li].ledger, 5).await;
    let before = converged(&nodes, li).await;
    assert_eq!((before.last_committed, before.tid_high_water), (5, 6));
    let old_term = nodes[li].ledger.raft().metrics().borrow_watched().current_term;
    let mut watch = nodes[(li + 1) % 3].ledger.subscribe_leadership();

    // The leader dies.
    let old = nodes.remove(li);
    let old_id = old.id;
    old.stop().await;

    // A survivor sees a new leadership (a new term without the old leader).
    tokio::time::timeout(BOUND, watch.wait_for(|l| l.term > old_term && l.leader.is_some_and(|id| id != old_id)))
        .await
        .expect("new leader within the bound")
        .unwrap();
    let ni = leader_of(&nodes).await;
    let new = &nodes[ni].ledger;
    assert_ne!(nodes[ni].id, old_id);
    let term = new.wait_applied_leader().await.unwrap();
    assert!(term > old_term);
    // Every committed entry is there.
    assert_eq!(new.state().await, before);

    // tids stay strictly increasing: the new leader's ledger refuses every
    // tid the old one issued, and takes the next.
    for reused in [1, 5, 6] {
        assert_eq!(
            new.propose(LedgerEntry::Begin { tid: reused }).await.unwrap(),
            Err(LedgerError::TidReused {
                proposed: reused,
                high_water: 6
            })
        );
    }
    assert_eq!(
        new.propose(LedgerEntry::Commit {
            tid: 6,
            hosts: hosts(),
            begin_next: Some(6)
        })
        .await
        .unwrap(),
        Err(LedgerError::TidReused {
            proposed: 6,
            high_water: 6
        })
    );
    ok(new, commit(6)).await;
    ok(new, commit(7)).await;
    let after = converged(&nodes, ni).await;
    assert_eq!((after.last_committed, after.tid_high_water), (7, 8));
    let tids: Vec<u64> = after.txns.keys().copied().collect();
    assert_eq!(tids, (1..=8).collect::<Vec<_>>());

    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_group_restarts_from_disk() {
    let (_dirs, nodes) = group(3, tuning()).await;
    let li = leader_of(&nodes).await;
    history(&nodes[li].ledger, 4).await;
    // A checkpoint between transactions, as the core takes them.
    ok(&nodes[li].ledger, LedgerEntry::Commit { tid: 5, hosts: hosts(), begin_next: None }).await;
    ok(&nodes[li].ledger, LedgerEntry::CheckpointComplete { tid: 5 }).await;
    let before = converged(&nodes, li).await;

    let mut stopped = Vec::new();
    for n in nodes {
        stopped.push(n.stop().await);
    }
    // Restart every node on its old address and directory: two with the
    // peers they started with (ignored once the group exists), one with
    // `join`.
    let mut nodes = Vec::new();
    let peers: BTreeMap<NodeId, String> = stopped.iter().map(|(id, a, _)| (*id, a.clone())).collect();
    for (id, addr, dir) in stopped {
        let listener = TcpListener::bind(&addr).await.unwrap();
        let peers = (id != 2).then(|| peers.clone());
        nodes.push(Node::start(id, &dir, listener, peers, tuning()).await);
    }
    let li = leader_of(&nodes).await;
    assert_eq!(nodes[li].ledger.state().await, before);
    assert_eq!(converged(&nodes, li).await, before);
    // And it carries on from where it was.
    assert_eq!(
        nodes[li].ledger.propose(LedgerEntry::Begin { tid: 5 }).await.unwrap(),
        Err(LedgerError::TidReused {
            proposed: 5,
            high_water: 5
        })
    );
    ok(&nodes[li].ledger, LedgerEntry::Begin { tid: 6 }).await;
    ok(&nodes[li].ledger, commit(6)).await;
    assert_eq!(converged(&nodes, li).await.last_committed, 6);
    for n in nodes {
        n.stop().await;
    }
}

/// The runbook's rebuild of member `id` (at `addr`, on an empty data
/// directory) through `leader`: removed, added back as a learner that
/// catches up, and a voter again among `peers`.
async fn rebuild(leader: &Ledger, id: NodeId, addr: &str, peers: &BTreeMap<NodeId, String>) {
    leader.remove_node(id).await.unwrap();
    leader.add_learner(id, addr.to_string()).await.unwrap();
    leader.change_membership(peers.keys().copied().collect(), false).await.unwrap();
}

/// A follower restarted on an empty data directory lacks entries it had
/// confirmed to the leader: it lost its data. The leader names it in its
/// progress and sends it nothing (openraft alone would wait forever for it
/// to catch up from the index it confirmed, or assert in a debug build),
/// keeps committing with the other follower, and once the member is
/// removed and added back it is caught up from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_lost_its_data_is_named_and_rebuilt_by_remove_and_add() {
    let (_dirs, mut nodes) = group(3, tuning()).await;
    let li = leader_of(&nodes).await;
    history(&nodes[li].ledger, 4).await;
    converged(&nodes, li).await;
    let leader_id = nodes[li].id;
    // Not node 1: with --peers, node 1 initialises a group on an empty
    // directory (docs/OPERATIONS.md has the procedure for it).
    let fi = (0..nodes.len()).filter(|i| *i != li).max_by_key(|i| nodes[*i].id).unwrap();
    let peers: BTreeMap<NodeId, String> = nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    let (id, addr, dir) = nodes.remove(fi).stop().await;
    nodes.push(restart(id, &addr, &dir, &peers, true).await);
    let leader = nodes.iter().find(|n| n.id == leader_id).unwrap().ledger.clone();

    let deadline = tokio::time::Instant::now() + BOUND;
    let problem = loop {
        let p = leader.progress().expect("still the leader");
        if let Some(why) = p.iter().find(|m| m.node_id == id).and_then(|m| m.problem.clone()) {
            break why;
        }
        assert!(tokio::time::Instant::now() < deadline, "the leader never found node {id}'s lost data: {p:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(problem.contains("lost its data") && problem.contains(&format!("RemoveNode {{\"node_id\": {id}}}")), "{problem}");
    ok(&leader, LedgerEntry::Commit { tid: 5, hosts: hosts(), begin_next: Some(6) }).await;

    rebuild(&leader, id, &addr, &peers).await;
    let last = leader.raft().metrics().borrow_watched().last_log_index;
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let p = leader.progress().expect("still the leader");
        let m = p.iter().find(|m| m.node_id == id).expect("a member again").clone();
        if m.matched >= last && m.problem.is_none() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "node {id} was not rebuilt: {m:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let li = nodes.iter().position(|n| n.id == leader_id).unwrap();
    assert_eq!(converged(&nodes, li).await.last_committed, 5);
    for n in nodes {
        n.stop().await;
    }
}

/// A member back on an empty data directory withholds its vote from a
/// candidate that holds entries: it may have helped commit entries the
/// candidate lacks. Here B helped A commit tids 5 and 6 while C was down,
/// then B lost its data and A went down. C, back with its stale log, asks
/// B for its vote: granted, C would lead without tids 5 and 6, and the
/// ledger would forget two commits. B says no, to the pre-vote and to the
/// vote; once A is back, A leads, and every node holds tid 6 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_back_on_an_empty_directory_votes_for_no_stale_candidate() {
    let (_dirs, mut nodes) = group(3, tuning()).await;
    let li = leader_of(&nodes).await;
    history(&nodes[li].ledger, 4).await;
    converged(&nodes, li).await;
    let peers: BTreeMap<NodeId, String> = nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    let leader_id = nodes[li].id;
    let followers: Vec<NodeId> = nodes.iter().map(|n| n.id).filter(|id| *id != leader_id).collect();
    let (b_id, c_id) = (followers[0], followers[1]);
    let at = |nodes: &[Node], id: NodeId| nodes.iter().position(|n| n.id == id).unwrap();

    // C goes down with tids up to 4; A and B commit 5 and 6.
    let c_metrics = nodes[at(&nodes, c_id)].ledger.raft().metrics().borrow_watched().clone();
    let c_last = c_metrics.last_applied;
    let c = nodes.remove(at(&nodes, c_id)).stop().await;
    let li = at(&nodes, leader_id);
    ok(&nodes[li].ledger, commit(5)).await;
    ok(&nodes[li].ledger, commit(6)).await;
    converged(&nodes, li).await;

    // B loses its data; A goes down.
    let (_, b_addr, b_dir) = nodes.remove(at(&nodes, b_id)).stop().await;
    let a = nodes.remove(at(&nodes, leader_id)).stop().await;
    nodes.push(restart(b_id, &b_addr, &b_dir, &peers, true).await);

    // C's election, asked of B as C would ask it.
    let mut net = TonicNetwork::new(None);
    let mut client = net.new_client(b_id, &BasicNode::new(b_addr.clone())).await;
    let term = c_metrics.current_term + 1;
    let ask = openraft::raft::VoteRequest::new(
        openraft::Vote::from_leader_id(LeaderId { term, node_id: c_id }, false),
        c_last,
    );
    let opt = || openraft::network::RPCOption::new(Duration::from_secs(5));
    let pre = client.pre_vote(ask.clone(), opt()).await.expect("B answers the pre-vote");
    assert!(!pre.vote_granted, "B granted a pre-vote to a candidate with log {c_last:?}: {pre:?}");
    let vote = client.vote(ask, opt()).await.expect("B answers the vote");
    assert!(!vote.vote_granted, "B granted its vote to a candidate with log {c_last:?}: {vote:?}");
    assert!(vote.vote.leader_id().term < term, "B did not take the candidate's term either: {vote:?}");

    // A and C back: A, with tids 5 and 6, leads; B is sent the log.
    for (id, addr, dir) in [a, c] {
        nodes.push(restart(id, &addr, &dir, &peers, false).await);
    }
    let li = leader_of(&nodes).await;
    assert_ne!(nodes[li].id, c_id, "the stale member leads");
    assert_eq!(converged(&nodes, li).await.last_committed, 6);
    for n in nodes {
        n.stop().await;
    }
}

/// Waits until `l`'s stand on initialising a new group satisfies `pred`.
async fn bootstrap_reaches(l: &Ledger, what: &str, pred: impl FnMut(&Bootstrap) -> bool) -> Bootstrap {
    let mut rx = l.bootstrap_state();
    let state = tokio::time::timeout(BOUND, rx.wait_for(pred)).await.unwrap_or_else(|_| panic!("{what}")).expect("the node runs");
    state.clone()
}

/// Node 1 back on an empty data directory while both its peers are down
/// cannot tell a lost volume from a new group: it waits, asking them
/// again, instead of initialising a group of its own. When they come back
/// with the group's log it finds the group and starts none; the group's
/// leader then sends it the log (this leader never saw it confirm any).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_1_back_on_an_empty_directory_with_its_peers_down_waits_for_them() {
    let (_dirs, mut nodes) = group(3, tuning()).await;
    let li = leader_of(&nodes).await;
    history(&nodes[li].ledger, 3).await;
    converged(&nodes, li).await;
    let peers: BTreeMap<NodeId, String> = nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    let mut down = Vec::new();
    for n in nodes.drain(..) {
        down.push(n.stop().await);
    }
    let first = down.iter().position(|(id, _, _)| *id == 1).unwrap();
    let (id, addr, dir) = down.remove(first);
    nodes.push(restart(id, &addr, &dir, &peers, true).await);
    bootstrap_reaches(&nodes[0].ledger, "node 1 asks its peers again and again", |b| matches!(b, Bootstrap::Waiting { rounds } if *rounds >= 3))
        .await;
    assert!(!nodes[0].ledger.raft().is_initialized().await.unwrap(), "node 1 started a group with its peers down");

    for (id, addr, dir) in down {
        nodes.push(restart(id, &addr, &dir, &peers, false).await);
    }
    let li = leader_of(&nodes).await;
    assert_ne!(nodes[li].id, 1);
    ok(&nodes[li].ledger, commit(4)).await;
    assert_eq!(converged(&nodes, li).await.last_committed, 4);
    assert_ne!(*nodes[0].ledger.bootstrap_state().borrow(), Bootstrap::Initialised);
    for n in nodes {
        n.stop().await;
    }
}

/// Node 1, which initialises a new group on an empty data directory, comes
/// back on an empty one while the group runs on: it finds the group among
/// its peers, starts no second group, and waits; removed and added back,
/// it holds the log again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_1_back_on_an_empty_directory_starts_no_second_group() {
    let (_dirs, mut nodes) = group(3, tuning()).await;
    let li = leader_of(&nodes).await;
    history(&nodes[li].ledger, 3).await;
    converged(&nodes, li).await;
    let peers: BTreeMap<NodeId, String> = nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    let first = nodes.iter().position(|n| n.id == 1).unwrap();
    let (id, addr, dir) = nodes.remove(first).stop().await;
    // The other two elect a leader between them if node 1 led.
    let li = leader_of(&nodes).await;
    ok(&nodes[li].ledger, commit(4)).await;
    nodes.push(restart(id, &addr, &dir, &peers, true).await);
    let back = nodes.last().unwrap();
    // It finds the group, unless the group's leader (if it never saw node
    // 1 confirm anything) sent it the log first.
    let decided = bootstrap_reaches(&back.ledger, "decided within the bound", |b| !matches!(b, Bootstrap::Waiting { .. })).await;
    assert!(matches!(decided, Bootstrap::GroupExists { .. } | Bootstrap::Joined), "node 1 on an empty directory: {decided:?}");
    let leader = nodes[li].ledger.clone();
    ok(&leader, commit(5)).await;

    rebuild(&leader, id, &addr, &peers).await;
    let li = nodes.iter().position(|n| n.ledger.is_leader()).unwrap();
    assert_eq!(converged(&nodes, li).await.last_committed, 5);
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_and_leave_through_membership_changes() {
    // Small snapshots, so the joining node's history was purged from the
    // log and it must be caught up by InstallSnapshot, sent in many chunks.
    let t = RaftTuning {
        snapshot_after_logs: 5,
        logs_kept_after_snapshot: 0,
        snapshot_chunk_bytes: 100,
        ..tuning()
    };
    let (_dirs, mut nodes) = group(3, t.clone()).await;
    let li = leader_of(&nodes).await;
    history(&nodes[li].ledger, 12).await;
    purged_past(&nodes[li].ledger, 5).await;

    // Node 4 starts empty and joins: it waits to be contacted.
    let dir4 = tempfile::tempdir().unwrap();
    let l4 = bind().await;
    nodes.push(Node::start(4, dir4.path(), l4, None, t.clone()).await);
    assert!(!nodes[3].ledger.raft().is_initialized().await.unwrap());
    let addr4 = nodes[3].addr.clone();

    let leader = nodes[li].ledger.clone();
    leader.add_learner(4, addr4.clone()).await.unwrap();
    let m = leader.members();
    assert_eq!(m.learners, BTreeMap::from([(4, addr4.clone())]));
    // Caught up through the snapshot.
    assert!(nodes[3].ledger.raft().metrics().borrow_watched().snapshot.is_some());
    leader.change_membership(BTreeSet::from([1, 2, 3, 4]), false).await.unwrap();
    let m = leader.members();
    assert_eq!(m.voters.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(m.learners.is_empty() && !m.joint);
    ok(&leader, commit(13)).await;
    let s = converged(&nodes, li).await;
    assert_eq!(s.last_committed, 13);
    assert_eq!(nodes[3].ledger.members().voters.len(), 4, "the new node applied the membership");

    // A voter that is not a learner first is refused, naming the problem.
    match leader.change_membership(BTreeSet::from([1, 2, 3, 4, 9]), false).await {
        Err(ProposeError::Membership(msg)) => assert!(msg.contains('9'), "{msg}"),
        other => panic!("adding an unknown voter: {other:?}"),
    }
    // Membership changes on a follower are redirected.
    let fi = (0..4).find(|i| *i != li).unwrap();
    assert!(matches!(
        nodes[fi].ledger.change_membership(BTreeSet::from([1, 2, 3]), false).await,
        Err(ProposeError::NotLeader { leader: Some(a) }) if a == nodes[li].addr
    ));

    // Remove a follower that is not node 4.
    let gone = (0..3).find(|i| *i != li).unwrap();
    let gone_id = nodes[gone].id;
    leader.remove_node(gone_id).await.unwrap();
    let m = leader.members();
    let want: Vec<NodeId> = [1, 2, 3, 4].into_iter().filter(|id| *id != gone_id).collect();
    assert_eq!(m.voters.keys().copied().collect::<Vec<_>>(), want);
    assert!(!m.learners.contains_key(&gone_id));
    nodes.remove(gone).stop().await;
    let li = nodes.iter().position(|n| n.ledger.is_leader()).expect("the leader stayed");

    // The shrunk group keeps committing, and the removed node is not needed.
    ok(&nodes[li].ledger, commit(14)).await;
    let s = converged(&nodes, li).await;
    assert_eq!((s.last_committed, s.tid_high_water), (14, 15));
    // Removing a node that is not a member changes nothing.
    nodes[li].ledger.remove_node(gone_id).await.unwrap();
    for n in nodes {
        n.stop().await;
    }
}

/// Pre-Vote: a follower cut off from the group long enough to have
/// campaigned several times (openraft 0.9 raised its term at every election
/// timeout, and the higher term deposed the healthy leader when the
/// partition healed) only asks whether it would be elected: its term stays,
/// and once reconnected it follows the same leader in the same term and
/// catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_rejoins_without_deposing_the_leader() {
    let t = tuning();
    let (_dirs, nodes) = group(3, t.clone()).await;
    let li = leader_of(&nodes).await;
    let leader = &nodes[li].ledger;
    history(leader, 2).await;
    converged(&nodes, li).await;
    let leader_id = nodes[li].id;
    let term = leader.raft().metrics().borrow_watched().current_term;
    let mut leadership = leader.subscribe_leadership();
    leadership.borrow_and_update();
    let fi = (li + 1) % 3;
    let follower = &nodes[fi].ledger;
    let mut tried = follower.isolation().campaigns();

    follower.isolation().set(true);
    let cut_at = tokio::time::Instant::now();
    // It campaigns (one RPC per peer per round) at least this many times...
    const ROUNDS: u64 = 5;
    tokio::time::timeout(BOUND, tried.wait_for(|c| c.pre_votes + c.votes >= 2 * ROUNDS))
        .await
        .expect("the isolated follower campaigns within the bound")
        .unwrap();
    // ...and stays cut off for at least that many maximal election timeouts
    // (a bounded wait: the time cut off is what this test is about).
    tokio::time::sleep_until(cut_at + Duration::from_millis(ROUNDS * t.election_timeout_max_ms)).await;
    // Meanwhile the others go on.
    ok(leader, commit(3)).await;
    let campaigns = *tried.borrow();
    let cut_off_term = follower.raft().metrics().borrow_watched().current_term;
    follower.isolation().set(false);

    // Reconnected, it follows the same leader and catches up.
    let s = converged(&nodes, li).await;
    assert_eq!(s.last_committed, 3);
    follower
        .raft()
        .wait(Some(BOUND))
        .metrics(|m| m.current_leader == Some(leader_id), "the follower follows the leader again")
        .await
        .unwrap();
    // One more write round: the leader has heard the follower's answers.
    ok(leader, commit(4)).await;
    converged(&nodes, li).await;

    assert!(leader.is_leader(), "the leader was deposed: {:?}", *leadership.borrow());
    assert!(!leadership.has_changed().unwrap(), "leadership changed: {:?}", *leadership.borrow());
    for n in &nodes {
        let m = n.ledger.raft().metrics().borrow_watched().clone();
        assert_eq!((m.current_term, m.current_leader), (term, Some(leader_id)), "node {}", n.id);
    }
    assert_eq!(cut_off_term, term, "the isolated follower's term moved (campaigns: {campaigns:?})");
    assert_eq!(campaigns.votes, 0, "it started real elections: {campaigns:?}");
    assert!(campaigns.pre_votes >= 2 * ROUNDS, "{campaigns:?}");

    for n in nodes {
        n.stop().await;
    }
}

/// A learner added at an address where nothing answers: the refusal says
/// what happened and what to do, without openraft's metrics dump; the node
/// stays a learner, the group keeps committing, and RemoveNode takes it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_that_never_answers_is_named_and_can_be_removed() {
    let t = RaftTuning { open_timeout: Duration::from_secs(2), ..tuning() };
    let (_dirs, nodes) = group(1, t).await;
    let leader = &nodes[leader_of(&nodes).await].ledger;
    history(leader, 2).await;
    let nowhere = bind().await.local_addr().unwrap().to_string();
    let msg = match leader.add_learner(5, nowhere.clone()).await {
        Err(ProposeError::Membership(m)) => m,
        other => panic!("a learner nobody runs was accepted: {other:?}"),
    };
    assert!(msg.contains(&format!("node 5 at \"{nowhere}\" was added as a learner but did not catch up")), "{msg}");
    assert!(msg.contains(r#"RemoveNode {"node_id": 5}"#) && !msg.contains("Metrics{"), "{msg}");
    assert_eq!(leader.members().learners, BTreeMap::from([(5, nowhere)]));
    ok(leader, commit(3)).await;
    leader.remove_node(5).await.unwrap();
    assert!(leader.members().learners.is_empty());
    ok(leader, commit(4)).await;
    for n in nodes {
        n.stop().await;
    }
}

/// Transport failures are `Unreachable` (openraft backs off) and the reason
/// names the peer.
#[tokio::test]
async fn an_unreachable_peer_is_reported_as_unreachable() {
    // A port that was just free: nothing listens there.
    let addr = bind().await.local_addr().unwrap().to_string();
    let mut net = TonicNetwork::new(None);
    let mut client = net.new_client(9, &BasicNode::new(addr.clone())).await;
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::from_leader_id(LeaderId { term: 1, node_id: 1 }, false), None);
    match client.vote(vote.clone(), openraft::network::RPCOption::new(Duration::from_secs(5))).await {
        Err(RPCError::Unreachable(u)) => assert!(u.to_string().contains(&addr), "{u}"),
        other => panic!("vote to a closed port: {other:?}"),
    }
    let mut client = net.new_client(9, &BasicNode::new("not an address")).await;
    assert!(matches!(
        client.vote(vote, openraft::network::RPCOption::new(Duration::from_secs(5))).await,
        Err(RPCError::Unreachable(_))
    ));
}

/// Waits until `l` has purged its log past `index`.
///
/// openraft checks its snapshot policy only when entries commit, and skips
/// the check while a snapshot is being built, so entries committed during
/// a build need not start another once the proposing stops. This asks for
/// a build itself, a bounded number of times, instead of waiting on the
/// policy alone.
async fn purged_past(l: &Ledger, index: u64) {
    for _ in 0..20 {
        let got = l
            .raft()
            .wait(Some(Duration::from_secs(1)))
            .metrics(|m| m.purged.is_some_and(|p| p.index > index), "the log purged")
            .await;
        if got.is_ok() {
            return;
        }
        // A no-op while a build is running; the next round asks again.
        l.raft().trigger().snapshot().await.unwrap();
    }
    panic!("the log was never purged past index {index}: {:?}", l.raft().metrics().borrow_watched());
}

/// A raft RPC from a node of another cluster is refused, whatever it
/// carries: here an AppendEntries with the leader's own committed vote, as
/// when two groups reach each other's addresses (seen in this file: a
/// test's stopped member freed a port that another test's node took while
/// the first test's leader still sent to it, and the receiving leader's
/// raft core panicked in openraft's debug assertions). The refusal names
/// both clusters; the group commits on; a request of its own cluster is
/// answered as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_rpc_from_another_cluster_is_refused() {
    let t = tuning();
    let (_dirs, nodes) = group(3, t.clone()).await;
    let li = leader_of(&nodes).await;
    let leader = &nodes[li].ledger;
    history(leader, 2).await;
    let term = leader.raft().metrics().borrow_watched().current_term;
    let vote = leader.raft().metrics().borrow_watched().vote;
    let target = BasicNode::new(nodes[li].addr.clone());
    let option = || openraft::network::RPCOption::new(Duration::from_secs(5));

    let mut foreign = TonicNetwork::new(None).with_cluster_id("another-cluster");
    let mut client = foreign.new_client(nodes[li].id, &target).await;
    let append = openraft::raft::AppendEntriesRequest { vote, prev_log_id: None, entries: Vec::new(), leader_commit: None };
    let refused = client.append_entries(append, option()).await.expect_err("an AppendEntries from another cluster is refused").to_string();
    assert!(
        refused.contains(&format!("this node serves cluster {:?}", t.cluster_id)) && refused.contains(r#"comes from cluster "another-cluster""#),
        "{refused}"
    );

    let mut own = TonicNetwork::new(None).with_cluster_id(&t.cluster_id);
    let mut client = own.new_client(nodes[li].id, &target).await;
    let stale = openraft::raft::VoteRequest::new(openraft::Vote::from_leader_id(LeaderId { term: 1, node_id: 9 }, false), None);
    let answer = client.vote(stale, option()).await.expect("a vote request of the node's own cluster is answered");
    assert!(!answer.vote_granted, "{answer:?}");

    ok(leader, commit(3)).await;
    converged(&nodes, li).await;
    assert!(leader.is_leader());
    assert_eq!(leader.raft().metrics().borrow_watched().current_term, term);
    for n in nodes {
        n.stop().await;
    }
}
