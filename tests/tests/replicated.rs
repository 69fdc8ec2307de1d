//! The replicated coordinator as separate processes: a 3-node group
//! (`coordinator serve --peers`) and host agents that know every address.
//! Leaders are killed, paused and the whole group restarted while data
//! flows; tids never repeat or go backwards and every host's sink has every
//! committed tid exactly once.

use std::time::Duration;

use lockstep_proto::v1 as pb;
use lockstep_tests::{
    alert_rule_metrics, assert_epochs_in_order, free_port, nodes_at, scrape_metrics, series_names, sink_tids, wait_for_nodes, ClusterOpts, Group,
};

const NODES: usize = 3;

fn opts() -> ClusterOpts {
    ClusterOpts { hosts: 2, commit_interval_ms: 30, checkpoint_every_txns: 10, ..Default::default() }
}

/// Every host's sink: strictly increasing tids (exactly once), and the
/// epoch never decreases along the file (no commit from a deposed leader
/// lands after one from its successor).
fn check_sinks(g: &Group) -> Vec<Vec<u64>> {
    (0..g.opts.hosts)
        .map(|i| {
            let batches = g.sink(i);
            assert_epochs_in_order(i, &batches);
            sink_tids(&batches)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_20_times_never_repeats_a_tid() {
    kill_the_leader(opts(), 20, Stop::Kill).await;
}

/// A rolling restart: each leader in turn gets SIGTERM with its hosts
/// connected (as a StatefulSet update does it), exits 0 on its own, and
/// the next leader continues from the hosts' kept state.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_stops_each_leader_cleanly_and_the_next_continues() {
    kill_the_leader(opts(), 3, Stop::Term).await;
}

/// How the leader is taken down.
#[derive(Clone, Copy)]
enum Stop {
    Kill,
    /// SIGTERM, then a clean exit (status 0) within a liveness bound.
    Term,
}

/// The same through a commit pipeline with batched ledger writes: each kill
/// finds tids prepared and awaiting their commit, ledger entries in flight
/// (batches included), and hosts at different tids; the new leader still
/// continues from the hosts' kept state.
#[tokio::test(flavor = "multi_thread")]
async fn killing_a_pipelined_leader_never_repeats_a_tid_and_continues_without_replay() {
    kill_the_leader(ClusterOpts { commit_interval_ms: 2, step_interval_ms: 1, pipeline_depth: 6, ..opts() }, 6, Stop::Kill).await;
}

async fn kill_the_leader(opts: ClusterOpts, kills: usize, stop: Stop) {
    let mut g = Group::start(NODES, opts);
    let long = Duration::from_secs(60);
    let (mut leader, s) = g.wait_leader("a leader running the pipeline", long, |s| {
        s.pipeline_state == "Running" && s.last_committed_tid >= 3
    })
    .await;
    let mut committed = s.last_committed_tid;
    let mut epoch = s.epoch;
    for kill in 0..kills {
        match stop {
            Stop::Kill => g.nodes[leader].kill(),
            Stop::Term => {
                g.nodes[leader].sigterm();
                let exit = g.nodes[leader].exited(Duration::from_secs(25)).await;
                let exit = exit.unwrap_or_else(|| panic!("stop {kill}: the leader still runs 25 s after SIGTERM\n{}", g.logs()));
                assert_eq!(exit.code(), Some(0), "stop {kill}: the leader exits cleanly on SIGTERM\n{}", g.logs());
            }
        }
        let killed = leader;
        let (next, s) = g
            .wait_leader(&format!("kill {kill}: a new leader committing past tid {committed}"), long, |s| {
                s.pipeline_state == "Running" && s.last_committed_tid > committed
            })
            .await;
        assert_ne!(next, killed, "kill {kill}: the killed node cannot lead");
        assert_eq!(s.coordinator_id, format!("node-{}@{}", next + 1, g.addrs[next]), "kill {kill}: the leader names itself");
        // The hosts kept their state across the leader's death and agree
        // with the ledger, so the new leader continues without a replay.
        let r = s.last_recovery.clone().unwrap_or_default();
        assert_eq!(r.path, "continue", "kill {kill}: the new leader replayed instead of continuing: {}", r.why);
        assert_eq!(s.last_replay.map(|r| r.tids).unwrap_or(0), 0, "kill {kill}: no tid may be replayed");
        assert!(s.epoch > epoch, "kill {kill}: a new leader fences with a new epoch ({} after {epoch})", s.epoch);
        committed = s.last_committed_tid;
        epoch = s.epoch;
        // Back to three nodes, so the next kill leaves a quorum.
        g.nodes[killed].start();
        leader = next;
    }
    // Let the hosts catch up on the last commit, then check every sink.
    g.wait_leader("commits after the last kill", long, |s| s.last_committed_tid > committed + 3).await;
    let sinks = check_sinks(&g);
    // Read after the sinks: hosts go on committing, and a tid reaches a sink
    // only after the ledger holds it, so this bounds every tid read above.
    let (_, s) = g.wait_leader("the ledger's last commit after reading the sinks", long, |_| true).await;
    for (i, tids) in sinks.iter().enumerate() {
        assert!(tids.len() as u64 >= committed, "host {i} emitted {} tids, the ledger committed {committed}", tids.len());
        assert!(tids.iter().all(|t| *t <= s.last_committed_tid), "host {i} emitted a tid the ledger never committed");
    }
}

/// Every member serves metrics (`--metrics-listen`): exactly one says it
/// leads and shows the pipeline Running with both hosts connected; the
/// followers show no pipeline state at all (a pipeline series that is
/// absent or 0). After the leader is killed, the new leader's endpoint
/// says so, and the surviving follower's still does not. The leader's
/// `lockstep_raft_term` is the term GetStatus reports, and the election
/// after the kill raised it.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_name_the_one_leader_before_and_after_it_is_killed() {
    let ports: Vec<String> = (0..NODES).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let flags = ports.clone();
    let mut g = Group::start_nodes_with(NODES, opts(), move |i, args| args.extend(["--metrics-listen".into(), flags[i].clone()]), |_, _| {});
    let long = Duration::from_secs(60);
    let (leader, s) = g.wait_leader("a leader running the pipeline", long, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 3).await;
    let check = |alive: Vec<usize>, leader: usize, epoch: u64, term: u64| {
        let ports = ports.clone();
        async move {
            for i in alive {
                let addr = ports[i].clone();
                let m = tokio::task::spawn_blocking(move || scrape_metrics(&addr)).await.expect("scrape");
                let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
                let running = get(r#"lockstep_pipeline_state{state="Running"}"#);
                if i == leader {
                    assert_eq!((get("lockstep_leader"), running), (1.0, 1.0), "node {}: the leader: {m:#?}", i + 1);
                    assert_eq!(get("lockstep_hosts_connected"), 2.0, "node {}: {m:#?}", i + 1);
                    assert_eq!(get("lockstep_epoch"), epoch as f64, "node {}", i + 1);
                    assert_eq!(get("lockstep_raft_term"), term as f64, "node {}: {m:#?}", i + 1);
                } else {
                    assert!(m.contains_key("lockstep_leader"), "node {}: a follower says it does not lead: {m:#?}", i + 1);
                    assert_eq!((get("lockstep_leader"), running), (0.0, 0.0), "node {}: a follower: {m:#?}", i + 1);
                }
            }
        }
    };
    assert!(s.raft_term >= 1, "{s:#?}");
    let term = s.raft_term;
    check((0..NODES).collect(), leader, s.epoch, term).await;
    g.nodes[leader].kill();
    let committed = s.last_committed_tid;
    let (next, s) = g
        .wait_leader("a new leader committing", long, |s| s.pipeline_state == "Running" && s.last_committed_tid > committed)
        .await;
    assert!(s.raft_term > term, "the election after the kill did not raise the term: {s:#?}");
    check((0..NODES).filter(|i| *i != leader).collect(), next, s.epoch, s.raft_term).await;
}

/// The leader's `ListNodes` shows every member's copy of the log (the
/// matched index, the entries it lacks, how long since it last answered),
/// and its metrics the same per member; a follower's shows none, since it
/// does not know. A follower frozen with SIGSTOP is seen falling behind and
/// going silent while the pipeline commits on, and catching up once it runs
/// again. The alerting rules name only metrics the daemons export.
#[tokio::test(flavor = "multi_thread")]
async fn the_leader_shows_how_far_each_member_is_and_a_frozen_one_falls_behind() {
    let ports: Vec<String> = (0..NODES).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let flags = ports.clone();
    let host_metrics = format!("127.0.0.1:{}", free_port());
    let host_flag = host_metrics.clone();
    let g = Group::start_nodes_with(
        NODES,
        opts(),
        move |i, args| args.extend(["--metrics-listen".into(), flags[i].clone()]),
        move |i, args| {
            if i == 0 {
                args.extend(["--metrics-listen".into(), host_flag.clone()]);
            }
        },
    );
    let long = Duration::from_secs(60);
    let (leader, _) = g.wait_leader("a leader running the pipeline", long, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 3).await;
    let id = |i: usize| i as u64 + 1;
    let frozen = (leader + 1) % NODES;
    let other = (leader + 2) % NODES;

    let progress = |nodes: &[pb::Node], i: usize| nodes.iter().find(|n| n.node_id == id(i)).and_then(|n| n.progress.clone());

    // Every member has a progress on the leader: the leader holds its whole
    // log, each follower has answered and holds some of it.
    let nodes = await_nodes(&g, leader, "both followers answering", |nodes| {
        [frozen, other].iter().all(|&f| progress(nodes, f).is_some_and(|p| p.matched_index > 0 && p.last_answer_ms_ago.is_some()))
    })
    .await;
    assert_eq!(nodes.len(), NODES, "{nodes:#?}");
    let own = progress(&nodes, leader).expect("the leader's own progress");
    assert_eq!((own.behind, own.last_answer_ms_ago), (0, None), "{nodes:#?}");
    assert!(own.matched_index > 0, "{nodes:#?}");
    for f in [frozen, other] {
        let at_follower = nodes_at(&g.addrs[f]).await.expect("a follower's ListNodes");
        assert_eq!(at_follower.len(), NODES, "{at_follower:#?}");
        assert!(at_follower.iter().all(|n| n.progress.is_none()), "a follower does not know the others' progress: {at_follower:#?}");
    }

    // Frozen: it answers nothing and lacks every entry committed since.
    g.nodes[frozen].pause(true);
    let nodes = await_nodes(&g, leader, "the frozen follower silent for 1.5 s and behind", |nodes| {
        progress(nodes, frozen).is_some_and(|p| p.last_answer_ms_ago.unwrap_or(u64::MAX) >= 1500 && p.behind > 0)
    })
    .await;
    let lacked = progress(&nodes, leader).expect("the leader's own progress").matched_index;
    let metrics_addr = ports[leader].clone();
    let node_label = id(frozen);
    let deadline = std::time::Instant::now() + long;
    loop {
        let addr = metrics_addr.clone();
        let m = tokio::task::spawn_blocking(move || scrape_metrics(&addr)).await.expect("scrape");
        let get = |k: &str| m.get(&format!("{k}{{node=\"{node_label}\"}}")).copied();
        if get("lockstep_raft_member_last_answer_age_seconds").is_some_and(|s| s >= 1.0) && get("lockstep_raft_member_behind_entries").is_some_and(|b| b > 0.0) {
            assert!(m.keys().all(|k| !k.starts_with("lockstep_raft_member_") || !k.contains(&format!("node=\"{}\"", id(leader)))), "the leader has no series of its own: {m:#?}");
            // Every metric the alerting rules name (but the TLS ones, see
            // tls.rs) is one the leader or a host exports.
            let addr = host_metrics.clone();
            let h = tokio::task::spawn_blocking(move || scrape_metrics(&addr)).await.expect("scrape");
            let exported: std::collections::BTreeSet<String> = series_names(&m).union(&series_names(&h)).cloned().collect();
            let missing: Vec<String> =
                alert_rule_metrics().into_iter().filter(|n| !n.starts_with("lockstep_tls_") && !exported.contains(n)).collect();
            assert!(missing.is_empty(), "deploy/prometheus/lockstep.rules.yml names metrics nobody exports: {missing:?}; exported: {exported:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the leader's gauges never showed node {node_label} silent and behind: {m:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Running again: it answers and holds what it lacked.
    g.nodes[frozen].pause(false);
    await_nodes(&g, leader, "the follower answering again and caught up", |nodes| {
        progress(nodes, frozen).is_some_and(|p| p.last_answer_ms_ago.is_some_and(|ms| ms < 1000) && p.matched_index >= lacked)
    })
    .await;
}

/// Polls node `at`'s ListNodes until `pred` holds for its answer.
async fn await_nodes(g: &Group, at: usize, what: &str, pred: impl Fn(&[pb::Node]) -> bool) -> Vec<pb::Node> {
    wait_for_nodes(&g.addrs[at], what, Duration::from_secs(60), pred, || g.logs()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_leader_gets_no_host_to_accept_it() {
    let mut g = Group::start(NODES, opts());
    let long = Duration::from_secs(60);
    let (old, s) = g.wait_leader("a leader running the pipeline", long, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 3).await;
    let old_epoch = s.epoch;

    // Freeze the leader: the others elect a new one, which fences the hosts
    // with a newer epoch and carries on.
    g.nodes[old].pause(true);
    let (_, s) = g
        .wait_leader("a new leader after the pause", long, |s| s.pipeline_state == "Running" && s.epoch > old_epoch)
        .await;
    let fenced_epoch = s.epoch;
    let committed = s.last_committed_tid;
    g.wait_leader("commits under the new leader", long, |s| s.last_committed_tid > committed + 2).await;

    // Take the rest of the group away, then wake the stale leader: nobody
    // can tell it that it was deposed, so it still believes it leads, with
    // its old epoch. The hosts, looking for a coordinator, find only it.
    for i in (0..NODES).filter(|i| *i != old) {
        g.nodes[i].kill();
    }
    let sinks_before: Vec<usize> = (0..g.opts.hosts).map(|i| g.sink(i).len()).collect();
    let logs_before: Vec<usize> = g.hosts.iter().map(|h| h.log().len()).collect();
    g.nodes[old].pause(false);
    // Wait until every host has tried the stale leader since it woke up
    // (its log names the address once an attempt ended), then check that
    // none was welcomed: it is turned away by the epoch check on either
    // side, or because the stale leader cannot confirm it still leads.
    let deadline = std::time::Instant::now() + long;
    let since = |h: &lockstep_tests::Proc, from: usize| -> Vec<String> {
        let log = h.log();
        log.get(from..)
            .unwrap_or("")
            .lines()
            // Outcomes of an attempt, not its start ("Hello sent").
            .filter(|l| l.contains(&g.addrs[old]) && !l.contains("Hello sent"))
            .map(str::to_owned)
            .collect()
    };
    while !g.hosts.iter().zip(&logs_before).all(|(h, from)| !since(h, *from).is_empty()) {
        assert!(std::time::Instant::now() < deadline, "the hosts never tried the stale leader{}", g.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (h, from) in g.hosts.iter().zip(&logs_before) {
        let lines = since(h, *from);
        assert!(!lines.iter().any(|l| l.contains("welcomed")), "{} was welcomed by the stale leader: {lines:#?}", h.name);
    }
    let stale = lockstep_tests::status_at(&g.addrs[old]).await.expect("stale leader answers");
    assert!(stale.epoch < fenced_epoch, "the stale leader's ledger is behind: epoch {}", stale.epoch);
    // Either it stopped driving (it answers as a follower, no hosts of its
    // own), or it drives with no host connected.
    assert!(stale.stale || stale.hosts.iter().all(|h| !h.connected), "no host may join a stale leader: {stale:#?}");
    for (i, n) in sinks_before.iter().enumerate() {
        assert_eq!(g.sink(i).len(), *n, "host {i} committed something while only the stale leader was up");
    }

    // The group comes back: the pipeline continues past everything the
    // stale leader could have done, exactly once.
    for i in (0..NODES).filter(|i| *i != old) {
        g.nodes[i].start();
    }
    let (_, s) = g
        .wait_leader("the group back after the stale leader", long, |s| {
            s.pipeline_state == "Running" && s.epoch > fenced_epoch && s.last_committed_tid > committed + 5
        })
        .await;
    check_sinks(&g);
    assert!(s.last_committed_tid > committed);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whole_group_restarts_from_disk_with_the_ledger_intact() {
    let mut g = Group::start(NODES, opts());
    let long = Duration::from_secs(60);
    let (_, before) =
        g.wait_leader("a leader running the pipeline", long, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 10).await;
    for n in &mut g.nodes {
        n.kill();
    }
    for n in &mut g.nodes {
        n.start();
    }
    let (_, after) = g
        .wait_leader("the restarted group running", long, |s| {
            s.pipeline_state == "Running" && s.last_committed_tid > before.last_committed_tid
        })
        .await;
    assert!(after.epoch > before.epoch);
    // Every tid the ledger committed before the restart is still there.
    let mut admin = lockstep_proto::v1::admin_client::AdminClient::connect(format!(
        "http://{}",
        g.addrs[g.nodes.iter().position(|n| n.is_running()).expect("a node runs")]
    ))
    .await
    .expect("admin");
    let kept = admin
        .list_transactions(lockstep_proto::v1::ListTransactionsRequest { from_tid: 0, limit: 10_000 })
        .await
        .expect("list")
        .into_inner()
        .transactions;
    let committed: Vec<u64> = kept.iter().filter(|t| t.state == "Committed").map(|t| t.tid).collect();
    assert!(committed.windows(2).all(|w| w[0] < w[1]));
    assert!(committed.contains(&before.last_committed_tid), "tid {} lost across the restart", before.last_committed_tid);
    check_sinks(&g);
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_are_added_and_removed_through_the_admin_api() {
    use lockstep_proto::v1::{self as pb, admin_client::AdminClient};
    let g = Group::start(NODES, opts());
    let long = Duration::from_secs(60);
    let (first, _) = g.wait_leader("a leader that committed a tid", long, |s| s.pipeline_state == "Running" && s.last_committed_tid >= 1).await;
    let follower = (first + 1) % NODES;

    // A fourth node started with --join waits to be added.
    let addr = format!("127.0.0.1:{}", lockstep_tests::free_port());
    let dir = g.dir.path().join("coordinator-4");
    let args: Vec<String> = [
        "serve", "--node-id", "4", "--join", "--listen", &addr, "--data-dir", &dir.display().to_string(), "--cluster-id",
        &g.opts.cluster_id, "--hosts", "host-0,host-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _fourth = lockstep_tests::Proc::spawn(
        "coordinator-4",
        lockstep_tests::bin_dir().join("coordinator"),
        args,
        g.dir.path().join("coordinator-4.log"),
    );

    // A follower refuses, naming a leader (the one it knows).
    // (It names only a leader it heard from within an election timeout; on
    // a busy machine a heartbeat can be late, so ask again until it does.)
    let mut at_follower = AdminClient::connect(format!("http://{}", g.addrs[follower])).await.expect("admin");
    let deadline = std::time::Instant::now() + long;
    loop {
        let refused = at_follower
            .add_node(pb::AddNodeRequest { node_id: 4, addr: addr.clone() })
            .await
            .expect_err("a follower must not change membership");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        let named = refused.metadata().get(lockstep_proto::LEADER_METADATA_KEY).and_then(|v| v.to_str().ok()).map(str::to_owned);
        if let Some(a) = named {
            assert!(g.addrs.contains(&a) && a != g.addrs[follower], "{refused:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the follower never named the leader: {refused:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reads a follower answers from its copy of the ledger say so, found
    // or not: a tid the leader just began may not have reached it yet.
    let stale = |m: &tonic::metadata::MetadataMap| m.get(lockstep_proto::STALE_METADATA_KEY).is_some();
    // The leader committed tid 1; the follower's copy has it once the
    // follower applied that far (on a busy machine it may not have yet).
    let deadline = std::time::Instant::now() + long;
    let found = loop {
        match at_follower.get_transaction(pb::GetTransactionRequest { tid: 1 }).await {
            Ok(found) => break found,
            Err(lagging) => {
                assert_eq!(lagging.code(), tonic::Code::NotFound, "{lagging:?}");
                assert!(stale(lagging.metadata()) && lagging.message().contains("answered by a follower"), "{lagging:?}");
                assert!(std::time::Instant::now() < deadline, "the follower never applied tid 1: {lagging:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert!(stale(found.metadata()) && found.get_ref().tid == 1, "{found:?}");
    let missing = at_follower.get_transaction(pb::GetTransactionRequest { tid: 1 << 40 }).await.expect_err("not begun");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert!(stale(missing.metadata()) && missing.message().contains("answered by a follower"), "{missing:?}");

    // The leader adds it. Leadership may move on a busy machine between
    // finding the leader and asking it: then ask the new one.
    let deadline = std::time::Instant::now() + long;
    let (mut at_leader, added, leader) = loop {
        let (leader, _) = g.wait_leader("a leader", long, |_| true).await;
        let mut admin = AdminClient::connect(format!("http://{}", g.addrs[leader])).await.expect("admin");
        match admin.add_node(pb::AddNodeRequest { node_id: 4, addr: addr.clone() }).await {
            Ok(r) => break (admin, r.into_inner(), leader),
            Err(e) if e.code() == tonic::Code::Unavailable && std::time::Instant::now() < deadline => continue,
            Err(e) => panic!("AddNode: {e:?}{}", g.logs()),
        }
    };
    let voters: Vec<u64> = added.nodes.iter().filter(|n| n.voter).map(|n| n.node_id).collect();
    assert_eq!(voters, vec![1, 2, 3, 4], "{added:?}");
    // The new node has the ledger: its stale read names the same cluster.
    let fourth = lockstep_tests::status_at(&addr).await.expect("status of node 4");
    assert_eq!(fourth.cluster_id, g.opts.cluster_id);
    assert_ne!(fourth.leader_id, 0);

    // A second id at a member's address is refused: one process would
    // answer for both.
    let twice = at_leader
        .add_node(pb::AddNodeRequest { node_id: 5, addr: g.addrs[0].clone() })
        .await
        .expect_err("an address already in the group");
    assert_eq!(twice.code(), tonic::Code::AlreadyExists, "{twice:?}");
    assert!(twice.message().contains("node 1 is already a voter"), "{twice:?}");

    let removed = at_leader.remove_node(pb::RemoveNodeRequest { node_id: 4 }).await.expect("RemoveNode").into_inner();
    let ids: Vec<u64> = removed.nodes.iter().map(|n| n.node_id).collect();
    assert_eq!(ids, vec![1, 2, 3], "{removed:?}");
    let unknown = at_leader.remove_node(pb::RemoveNodeRequest { node_id: 9 }).await.expect_err("not a member");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    // The pipeline kept committing throughout.
    let committed = lockstep_tests::status_at(&g.addrs[leader]).await.expect("status").last_committed_tid;
    g.wait_leader("commits after the membership changes", long, |s| s.last_committed_tid > committed).await;
}
