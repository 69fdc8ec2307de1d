//! Coordinator loss while the hosts keep running: a restarted coordinator
//! (one node) continues from the state the hosts kept, without restoring a
//! checkpoint or replaying, and no committed tid is lost or emitted twice.

use std::time::Duration;

use lockstep_proto::v1::Status;
use lockstep_tests::*;

const LONG: Duration = Duration::from_secs(60);

fn running(s: &Status) -> bool {
    s.pipeline_state == "Running"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_run_continues_without_replay_and_outputs_exactly_once() {
    killed_coordinator_continues(ClusterOpts { commit_interval_ms: 20, checkpoint_every_txns: 4, ..ClusterOpts::default() }).await;
}

/// The same with a commit pipeline: the kill finds tids prepared and
/// awaiting their commit on some hosts and not yet prepared on others; the
/// new coordinator commits them from the kept reports and catches the hosts
/// up, still without a restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_coordinator_killed_mid_run_continues_without_replay_and_outputs_exactly_once() {
    killed_coordinator_continues(ClusterOpts {
        commit_interval_ms: 3,
        step_interval_ms: 1,
        checkpoint_every_txns: 10,
        pipeline_depth: 4,
        ..ClusterOpts::default()
    })
    .await;
}

async fn killed_coordinator_continues(opts: ClusterOpts) {
    let mut c = Cluster::start(opts);
    let mut s = c.wait_for("first commits", LONG, |s| running(s) && s.last_committed_tid >= 3).await;
    let first_epoch = s.epoch;
    for cycle in 0..5 {
        let (epoch, committed) = (s.epoch, s.last_committed_tid);
        // SIGKILL: whatever the coordinator was doing (a live tid open,
        // preparing, committing, checkpointing) is cut off mid-way.
        c.coordinator.kill();
        c.coordinator.start();
        s = c
            .wait_for(&format!("cycle {cycle}: a new epoch running and committing past tid {committed}"), LONG, |s| {
                s.pipeline_state == "Failed" || (running(s) && s.epoch > epoch && s.last_committed_tid > committed)
            })
            .await;
        assert!(running(&s), "cycle {cycle}: {s:#?}\n{}", c.logs());
        let r = s.last_recovery.clone().unwrap_or_default();
        assert_eq!(r.path, "continue", "cycle {cycle}: the hosts' kept state fits the ledger: {r:?}\n{}", c.logs());
        assert_eq!((r.epoch, s.epoch), (epoch + 1, epoch + 1), "cycle {cycle}: exactly one new epoch, no second recovery");
        assert!(r.why.contains("every host kept a state that fits the ledger"), "{r:?}");
        assert_eq!(s.last_replay.unwrap_or_default().tids, 0, "cycle {cycle}: nothing replayed");
    }
    assert_eq!(s.epoch, first_epoch + 5);
    // Once every host has reported the latest commit, its outputs are at
    // least queued to the sink; a host that exits cleanly (SIGTERM) first
    // drains that queue, so every sink then holds it.
    let last = s.last_committed_tid;
    c.wait_for(&format!("every host to report tid {last} committed"), LONG, |s| {
        s.hosts.iter().all(|h| h.last_committed_tid >= last)
    })
    .await;
    for h in &mut c.hosts {
        assert_eq!(h.terminate(), Some(0), "host agent exits cleanly");
    }
    c.coordinator.terminate();
    for h in &c.hosts {
        // The one restore is the first start's (empty state); every
        // coordinator restart after it was continued without one.
        assert_eq!(h.log().matches("engine restored").count(), 1, "{}: {}", h.name, tail(&h.log(), 40));
    }
    check_sinks(&c, last);
    for i in 0..c.opts.hosts {
        assert!(sink_tids(&c.sink(i)).last().is_some_and(|t| *t >= last), "host {i} holds every tid through {last}");
    }
}
